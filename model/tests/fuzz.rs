//! Mutation fuzzing of the two readers that take files from anywhere: the checkpoint loader (run
//! directory, `latest`, `state.json`, `config.json`, both safetensors files) and the token-file
//! reader. A valid file is damaged in seeded random ways (bit flips, extreme integers over header
//! fields, truncation, appended garbage, deleted ranges, grown numbers), then loaded: every outcome
//! must be a value or an error; a panic fails the test, an abort or an endless read kills it. The
//! seeds are fixed (ChaCha8 through `engine::Rng`), so a failure replays exactly, and the iteration
//! counts keep the whole run to a few seconds.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use engine::{DType, Device, Rng};
use model::checkpoint::{CONFIG_FILE, LATEST_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE};
use model::data::{write_token_file, Corpus, Split};
use model::run::{load_model, open_corpus, TrainingRun};

use common::{tiny_config, Scratch};

/// A damaged copy of `bytes`; `hot` bytes at the start (a header) take half of the point edits.
fn mutate(bytes: &[u8], hot: usize, rng: &mut Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let edits = 1 + rng.below(3);
    for _ in 0..edits {
        let len = b.len().max(1);
        let pos = if hot > 0 && rng.below(2) == 0 { rng.below(hot.min(len)) } else { rng.below(len) };
        match rng.below(6) {
            0 if !b.is_empty() => {
                let at = pos.min(b.len() - 1);
                b[at] ^= 1 << rng.below(8);
            }
            1 => {
                let extreme = [u64::MAX, 0, 1 << 62, u32::MAX as u64, rng.next_u64()][rng.below(5)];
                for (i, byte) in extreme.to_le_bytes().iter().enumerate() {
                    if let Some(slot) = b.get_mut(pos + i) {
                        *slot = *byte;
                    }
                }
            }
            2 => b.truncate(rng.below(len)),
            3 => b.extend((0..1 + rng.below(64)).map(|_| rng.next_u64() as u8)),
            4 => {
                let end = (pos + 1 + rng.below(16)).min(b.len());
                b.drain(pos.min(end)..end);
            }
            _ => {
                // Grow a number: digits inserted after a digit (JSON sizes, steps, the header length).
                if let Some(at) = (pos..b.len()).find(|&i| b[i].is_ascii_digit()) {
                    let digits: Vec<u8> = (0..1 + rng.below(3)).map(|_| b'0' + rng.below(10) as u8).collect();
                    b.splice(at + 1..at + 1, digits);
                }
            }
        }
    }
    b
}

/// Length of a safetensors file's header region (length prefix and JSON), or the whole file.
fn safetensors_header(bytes: &[u8]) -> usize {
    bytes.get(..8).map_or(bytes.len(), |n| 8 + u64::from_le_bytes(n.try_into().unwrap()) as usize)
}

#[test]
fn damaged_checkpoints_load_or_fail_cleanly() {
    let scratch = Scratch::new("fuzz-checkpoint");
    let dir = &scratch.0;
    let mut run = TrainingRun::start(tiny_config(1), open_corpus(None).unwrap(), dir, &Device::Cpu, DType::F32).unwrap();
    run.step().unwrap();
    drop(run);
    let step = dir.join("step-00000001");
    let files: Vec<(PathBuf, Vec<u8>)> = [dir.join(LATEST_FILE), step.join(STATE_FILE), step.join(CONFIG_FILE), step.join(MODEL_FILE), step.join(OPTIMIZER_FILE)]
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    let restore = || {
        for (p, bytes) in &files {
            fs::write(p, bytes).unwrap();
        }
    };
    let mut rng = Rng::new(0xf022);
    let (mut loaded, mut refused) = (0, 0);
    for _ in 0..150 {
        restore();
        let (path, bytes) = &files[rng.below(files.len())];
        let hot = if path.extension().is_some_and(|e| e == "safetensors") { safetensors_header(bytes) } else { bytes.len() };
        fs::write(path, mutate(bytes, hot, &mut rng)).unwrap();
        match load_model(dir, &Device::Cpu) {
            Ok(_) => loaded += 1,
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty());
            }
        }
        // Resuming reads the optimizer state and `state.json`'s fields too.
        let _ = TrainingRun::resume(dir, None, None, &Device::Cpu, None).map(|r| r.step_count());
        let _ = fs::remove_file(dir.join("metrics.jsonl"));
    }
    assert!(refused > 0 && loaded > 0, "the mutations neither all pass nor all fail ({loaded} loaded, {refused} refused)");
}

/// Opens a token file and reads everything a run would: every id, batches and validation windows.
fn read_everything(path: &Path, rng: &mut Rng) -> model::Result<usize> {
    let corpus = Corpus::open(path)?;
    corpus.check_ids()?;
    let seq = 1 + rng.below(16);
    let mut read = 0;
    if corpus.split_len(Split::Train) > seq {
        read += corpus.sample_batch(rng, 2, seq)?.0.len();
    }
    if let Ok(windows) = corpus.val_windows(seq, Some(8)) {
        for w in windows {
            read += w?.0.len();
        }
    }
    Ok(read)
}

#[test]
fn damaged_token_files_read_or_fail_cleanly() {
    let scratch = Scratch::new("fuzz-tokens");
    let path = scratch.path("tokens.bin");
    let mut rng = Rng::new(0x70c5);
    let (mut read, mut refused) = (0, 0);
    for (vocab, count) in [(300u32, 3000u32), (70_000, 1500)] {
        write_token_file(&path, vocab, Some(4 * count as u64), (0..count).map(|i| i * 7 % vocab)).unwrap();
        let good = fs::read(&path).unwrap();
        for _ in 0..400 {
            fs::write(&path, mutate(&good, model::data::HEADER_LEN, &mut rng)).unwrap();
            match read_everything(&path, &mut rng) {
                Ok(_) => read += 1,
                Err(e) => {
                    refused += 1;
                    assert!(e.to_string().contains("tokens.bin"), "{e}");
                }
            }
        }
    }
    assert!(refused > 0 && read > 0, "the mutations neither all pass nor all fail ({read} read, {refused} refused)");
}
