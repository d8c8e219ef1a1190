//! Training data: the bundled corpus and its checksum, the 90/10 split, training batches, validation
//! windows, token files (round trips and every way a file can be wrong), and the baselines.

mod common;

use std::fs;

use engine::Rng;
use model::data::{
    default_corpus_path, write_token_file, Corpus, Split, TokenFile, DEFAULT_CORPUS_BYTES, DEFAULT_CORPUS_SHA256, HEADER_LEN, MAGIC, VERSION,
};

use common::{err_naming, Scratch};

/// A token file whose id at position i is i: every window says where it was read from.
fn positional_corpus(dir: &Scratch, n: u32) -> Corpus {
    let path = dir.path("positions.tok");
    assert_eq!(write_token_file(&path, n, None, 0..n).unwrap(), n as u64);
    Corpus::open(&path).unwrap()
}

fn train_len(n: usize) -> usize {
    n * 9 / 10
}

#[test]
fn bundled_corpus_opens_and_matches_its_published_checksum() {
    let corpus = Corpus::open_default().unwrap();
    assert_eq!(corpus.len() as u64, DEFAULT_CORPUS_BYTES);
    assert_eq!(corpus.vocab_size(), 256);
    assert_eq!(corpus.bytes_per_token(), Some(1.0));
    // data/README.md: the last 505,720 bytes validate.
    assert_eq!(corpus.range(Split::Train), 0..4_551_478);
    assert_eq!(corpus.range(Split::Validation), 4_551_478..5_057_198);
    assert_eq!(corpus.path(), default_corpus_path());
}

#[test]
fn a_damaged_copy_of_the_corpus_is_reported_with_its_path() {
    let dir = Scratch::new("data-damaged");
    let mut bytes = fs::read(default_corpus_path()).unwrap();
    let copy = dir.path("shakespeare.txt");

    fs::write(&copy, &bytes).unwrap();
    let intact = Corpus::open_verified(&copy, DEFAULT_CORPUS_BYTES, DEFAULT_CORPUS_SHA256).unwrap();
    assert_eq!(intact.len() as u64, DEFAULT_CORPUS_BYTES);

    // One byte changed, same size: only the hash can tell.
    bytes[1_234_567] ^= 0x20;
    fs::write(&copy, &bytes).unwrap();
    let msg = err_naming(Corpus::open_verified(&copy, DEFAULT_CORPUS_BYTES, DEFAULT_CORPUS_SHA256), &copy);
    assert!(msg.contains("damaged") && msg.contains(DEFAULT_CORPUS_SHA256), "{msg}");

    // A line-ending conversion changes the size.
    bytes[1_234_567] ^= 0x20;
    bytes.insert(100, b'\r');
    fs::write(&copy, &bytes).unwrap();
    let msg = err_naming(Corpus::open_verified(&copy, DEFAULT_CORPUS_BYTES, DEFAULT_CORPUS_SHA256), &copy);
    assert!(msg.contains("damaged") && msg.contains(&format!("{} bytes", DEFAULT_CORPUS_BYTES + 1)), "{msg}");
}

#[test]
fn the_split_is_contiguous_90_10() {
    let dir = Scratch::new("data-split");
    for n in [11usize, 12, 19, 20, 29, 101, 1000, 1009] {
        let path = dir.path(&format!("text-{n}.txt"));
        fs::write(&path, vec![b'a'; n]).unwrap();
        let c = Corpus::open(&path).unwrap();
        let t = train_len(n);
        assert_eq!(c.len(), n);
        assert_eq!(c.range(Split::Train), 0..t, "n = {n}");
        assert_eq!(c.range(Split::Validation), t..n, "n = {n}");
        assert_eq!(c.split_len(Split::Train) + c.split_len(Split::Validation), n);
    }
}

#[test]
fn a_corpus_too_short_to_split_is_an_error() {
    let dir = Scratch::new("data-short");
    for n in [0usize, 1, 5, 10] {
        let path = dir.path(&format!("short-{n}.txt"));
        fs::write(&path, vec![b'x'; n]).unwrap();
        let msg = err_naming(Corpus::open(&path), &path);
        assert!(msg.contains("too few"), "{msg}");
    }
    // The same for a token file.
    let path = dir.path("short.tok");
    write_token_file(&path, 50, None, 0..10).unwrap();
    assert!(err_naming(Corpus::open(&path), &path).contains("too few"));

    let missing = dir.path("absent.txt");
    assert!(err_naming(Corpus::open(&missing), &missing).contains("cannot open"));
}

#[test]
fn batch_targets_are_the_inputs_shifted_by_one() {
    let dir = Scratch::new("data-batch");
    let n = 1000u32;
    let corpus = positional_corpus(&dir, n);
    let train = train_len(n as usize) as u32;
    let (batch, seq) = (16, 7);
    let (inputs, targets) = corpus.sample_batch(&mut Rng::new(5), batch, seq).unwrap();
    assert_eq!((inputs.len(), targets.len()), (batch * seq, batch * seq));
    for (row_in, row_tg) in inputs.chunks(seq).zip(targets.chunks(seq)) {
        let start = row_in[0];
        let expected: Vec<u32> = (start..start + seq as u32).collect();
        assert_eq!(row_in, &expected[..]);
        let shifted: Vec<u32> = (start + 1..=start + seq as u32).collect();
        assert_eq!(row_tg, &shifted[..]);
        assert!(start + seq as u32 + 1 <= train, "a window reaches validation: start {start}");
    }
}

#[test]
fn batches_depend_only_on_the_rng_state() {
    let corpus = Corpus::open_default().unwrap();
    let mut rng = Rng::new(42);
    rng.next_u64();
    let mut copy = Rng::from_state(&rng.state());
    let a = corpus.sample_batch(&mut rng, 8, 64).unwrap();
    let b = corpus.sample_batch(&mut copy, 8, 64).unwrap();
    assert_eq!(a, b);
    // The state moved on, so the next batch differs.
    let c = corpus.sample_batch(&mut rng, 8, 64).unwrap();
    assert_ne!(a.0, c.0);
    // The bytes are the corpus's: targets are the inputs shifted by one within each row.
    let text = fs::read(default_corpus_path()).unwrap();
    for (row_in, row_tg) in a.0.chunks(64).zip(a.1.chunks(64)) {
        assert_eq!(row_in[1..], row_tg[..63]);
        let window: Vec<u32> = row_in.iter().chain(&row_tg[63..]).copied().collect();
        let found = text.windows(65).take(train_len(text.len()) - 64).any(|w| w.iter().map(|&b| b as u32).eq(window.iter().copied()));
        assert!(found, "a batch row is not a window of the training split");
    }
}

#[test]
fn every_training_window_can_be_drawn_and_none_outside() {
    let dir = Scratch::new("data-starts");
    let corpus = positional_corpus(&dir, 30);
    let (train, seq) = (train_len(30), 4);
    let mut seen = vec![false; train];
    let mut rng = Rng::new(9);
    for _ in 0..200 {
        let (inputs, _) = corpus.sample_batch(&mut rng, 4, seq).unwrap();
        for row in inputs.chunks(seq) {
            seen[row[0] as usize] = true;
        }
    }
    // Starts 0..=train - seq - 1: the last window's target is the last training token.
    let drawable = train - seq;
    assert!(seen[..drawable].iter().all(|&s| s), "{seen:?}");
    assert!(seen[drawable..].iter().all(|&s| !s), "{seen:?}");
}

#[test]
fn batch_shapes_are_checked() {
    let dir = Scratch::new("data-shapes");
    let corpus = positional_corpus(&dir, 30);
    let mut rng = Rng::new(1);
    assert!(corpus.sample_batch(&mut rng, 0, 4).is_err());
    assert!(corpus.sample_batch(&mut rng, 4, 0).is_err());
    // 27 training tokens hold one window of 26 + 1 and none of 27 + 1.
    assert!(corpus.sample_batch(&mut rng, 2, 26).is_ok());
    let msg = err_naming(corpus.sample_batch(&mut rng, 2, 27), corpus.path());
    assert!(msg.contains("Train"), "{msg}");
}

#[test]
fn validation_windows_tile_the_split() {
    let dir = Scratch::new("data-val");
    let n = 1000u32;
    let corpus = positional_corpus(&dir, n);
    let val = corpus.range(Split::Validation);
    for seq in [1usize, 7, 33, 99] {
        let windows: Vec<_> = corpus.val_windows(seq, None).unwrap().collect::<model::Result<_>>().unwrap();
        let available = (val.len() - 1) / seq;
        assert_eq!(windows.len(), available, "seq {seq}");
        for (k, (inputs, targets)) in windows.iter().enumerate() {
            let start = (val.start + k * seq) as u32;
            assert_eq!(inputs, &(start..start + seq as u32).collect::<Vec<_>>());
            assert_eq!(targets, &(start + 1..start + 1 + seq as u32).collect::<Vec<_>>());
        }
        // Every validation token but the first is predicted exactly once, up to less than a window.
        let predicted: Vec<u32> = windows.iter().flat_map(|w| w.1.iter().copied()).collect();
        assert_eq!(predicted, (val.start as u32 + 1..val.start as u32 + 1 + (available * seq) as u32).collect::<Vec<_>>());
        assert!(val.len() - 1 - predicted.len() < seq);
    }
}

#[test]
fn limited_validation_windows_are_spread_evenly() {
    let dir = Scratch::new("data-val-limit");
    let corpus = positional_corpus(&dir, 1000);
    let val = corpus.range(Split::Validation);
    let seq = 3;
    let available = (val.len() - 1) / seq; // 33
    for limit in [1usize, 2, 5, 10, 32, 33, 50] {
        let iter = corpus.val_windows(seq, Some(limit)).unwrap();
        let count = limit.min(available);
        assert_eq!(iter.len(), count);
        let starts: Vec<usize> = iter.map(|w| w.unwrap().0[0] as usize).collect();
        assert_eq!(starts.len(), count);
        assert_eq!(starts[0], val.start, "limit {limit}");
        let indices: Vec<usize> = starts
            .iter()
            .map(|&s| {
                assert_eq!((s - val.start) % seq, 0, "a window off the grid");
                (s - val.start) / seq
            })
            .collect();
        // Strictly increasing (so non-overlapping), inside the split, with gaps differing by at most one.
        let gaps: Vec<usize> = indices.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g >= 1), "limit {limit}: {indices:?}");
        assert!(*indices.last().unwrap() < available);
        if let (Some(lo), Some(hi)) = (gaps.iter().min(), gaps.iter().max()) {
            assert!(hi - lo <= 1, "limit {limit}: uneven {gaps:?}");
        }
        // Cut the window grid into `count` strata of (to rounding) equal size: each holds exactly
        // one window, so the windows reach the end of the split, not just its start.
        for (i, &index) in indices.iter().enumerate() {
            let stratum = i * available / count..(i + 1) * available / count;
            assert!(stratum.contains(&index), "limit {limit}: window {i} at {index}, outside {stratum:?}");
        }
    }
}

#[test]
fn validation_window_arguments_are_checked() {
    let dir = Scratch::new("data-val-args");
    let corpus = positional_corpus(&dir, 100); // 10 validation tokens: one window of 9 + 1
    assert!(corpus.val_windows(0, None).is_err());
    assert!(corpus.val_windows(3, Some(0)).is_err());
    assert_eq!(corpus.val_windows(9, None).unwrap().len(), 1);
    let msg = err_naming(corpus.val_windows(10, None), corpus.path());
    assert!(msg.contains("Validation"), "{msg}");
}

/// Reads every token of `corpus` back: the training split as one batch row, then the validation
/// split as windows of one token.
fn read_all(corpus: &Corpus) -> Vec<u32> {
    let train = corpus.split_len(Split::Train);
    let (inputs, targets) = corpus.sample_batch(&mut Rng::new(0), 1, train - 1).unwrap();
    let mut all = inputs;
    all.push(*targets.last().unwrap());
    for w in corpus.val_windows(1, None).unwrap() {
        all.push(w.unwrap().0[0]);
    }
    all.push(*corpus.val_windows(1, None).unwrap().last().unwrap().unwrap().1.last().unwrap());
    all
}

#[test]
fn token_files_round_trip_in_both_widths() {
    let dir = Scratch::new("data-roundtrip");
    for (vocab, width) in [(300u32, 2usize), (65_536, 2), (65_537, 4), (100_000, 4)] {
        let mut rng = Rng::new(vocab as u64);
        let mut ids: Vec<u32> = (0..997).map(|_| rng.below(vocab as usize) as u32).collect();
        ids[3] = vocab - 1;
        ids[4] = 0;
        let path = dir.path(&format!("v{vocab}.tok"));
        assert_eq!(write_token_file(&path, vocab, Some(4321), ids.iter().copied()).unwrap(), ids.len() as u64);

        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + ids.len() * width);
        assert_eq!(&bytes[..8], MAGIC);
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), VERSION);

        let file = TokenFile::open(&path).unwrap();
        assert_eq!((file.len(), file.vocab(), file.width()), (ids.len(), vocab, width));
        assert_eq!(file.bytes_per_token(), Some(4321.0 / ids.len() as f64));

        let corpus = Corpus::open(&path).unwrap();
        assert_eq!(corpus.vocab_size(), vocab as usize);
        assert_eq!(read_all(&corpus), ids, "vocab {vocab}");
        let no_dir_leftovers: Vec<_> = fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().ends_with(".tmp")).collect();
        assert!(no_dir_leftovers.is_empty(), "{no_dir_leftovers:?}");
    }
    // Without a text size there is no bytes-per-token figure.
    let path = dir.path("unknown.tok");
    write_token_file(&path, 10, None, [1, 2, 3]).unwrap();
    assert_eq!(TokenFile::open(&path).unwrap().bytes_per_token(), None);
}

#[test]
fn writing_an_id_outside_the_vocabulary_fails_and_leaves_nothing() {
    let dir = Scratch::new("data-write-bad");
    let path = dir.path("bad.tok");
    let msg = err_naming(write_token_file(&path, 100, None, [1, 2, 100, 3]), &path);
    assert!(msg.contains("token 2 has id 100"), "{msg}");
    assert!(err_naming(write_token_file(&path, 0, None, []), &path).contains("vocabulary size 0"));
    assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 0, "a partial or temporary file was left");
}

/// A valid 2-byte token file of 50 tokens (vocabulary 1000) as bytes, to break in one way per test.
fn good_token_file(dir: &Scratch) -> Vec<u8> {
    let path = dir.path("good.tok");
    write_token_file(&path, 1000, None, (0..50).map(|i| i * 7)).unwrap();
    fs::read(path).unwrap()
}

#[test]
fn malformed_token_files_are_errors_naming_the_file() {
    let dir = Scratch::new("data-malformed");
    let good = good_token_file(&dir);
    let cases: Vec<(&str, Box<dyn Fn(&mut Vec<u8>)>, &str)> = vec![
        ("truncated", Box::new(|b| { b.pop(); }), "truncated"),
        ("wider", Box::new(|b| b[12..16].copy_from_slice(&4u32.to_le_bytes())), "another id width"),
        ("width3", Box::new(|b| b[12..16].copy_from_slice(&3u32.to_le_bytes())), "id width 3"),
        ("version", Box::new(|b| b[8..12].copy_from_slice(&2u32.to_le_bytes())), "version 2"),
        ("magic", Box::new(|b| b[0] = b'X'), "bad magic"),
        ("vocab0", Box::new(|b| b[16..20].copy_from_slice(&0u32.to_le_bytes())), "vocabulary size 0"),
        ("vocab-too-big", Box::new(|b| b[16..20].copy_from_slice(&70_000u32.to_le_bytes())), "does not fit"),
        ("count", Box::new(|b| b[24..32].copy_from_slice(&u64::MAX.to_le_bytes())), "more than 2^64"),
        ("header", Box::new(|b| b.truncate(HEADER_LEN - 1)), "shorter than the 64-byte"),
    ];
    for (name, damage, expected) in cases {
        let mut bytes = good.clone();
        damage(&mut bytes);
        let path = dir.path(&format!("{name}.tok"));
        fs::write(&path, &bytes).unwrap();
        let msg = err_naming(TokenFile::open(&path), &path);
        assert!(msg.contains(expected), "{name}: {msg}");
        // Through Corpus::open too, except a bad magic, which makes it a text file.
        if name != "magic" {
            assert!(err_naming(Corpus::open(&path), &path).contains(expected), "{name}");
        }
    }
}

#[test]
fn ids_outside_the_vocabulary_are_errors_when_read() {
    let dir = Scratch::new("data-bad-ids");
    let mut bytes = good_token_file(&dir);
    let path = dir.path("ids.tok");
    // Token 48 (validation) gets id 1000 = the vocabulary size, token 10 (training) 65535.
    bytes[HEADER_LEN + 48 * 2..HEADER_LEN + 49 * 2].copy_from_slice(&1000u16.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let corpus = Corpus::open(&path).unwrap();
    let msg = err_naming(corpus.val_windows(1, None).unwrap().collect::<model::Result<Vec<_>>>(), &path);
    assert!(msg.contains("token 48 has id 1000"), "{msg}");
    assert!(err_naming(corpus.baselines(), &path).contains("token 48"));

    bytes[HEADER_LEN + 10 * 2..HEADER_LEN + 11 * 2].copy_from_slice(&u16::MAX.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let corpus = Corpus::open(&path).unwrap();
    let msg = err_naming(corpus.sample_batch(&mut Rng::new(0), 1, 44), &path);
    assert!(msg.contains("token 10 has id 65535"), "{msg}");
}

#[test]
fn baselines_of_the_bundled_corpus() {
    let b = Corpus::open_default().unwrap().baselines().unwrap();
    assert!((b.uniform - 256f64.ln()).abs() < 1e-12);
    // data/README.md: unigram 3.329, bigram 2.544 nats per byte.
    assert!((b.unigram - 3.33).abs() < 0.005, "unigram {}", b.unigram);
    assert!((b.bigram - 2.54).abs() < 0.005, "bigram {}", b.bigram);
}

#[test]
fn baselines_match_a_direct_count() {
    let dir = Scratch::new("data-baselines");
    let mut rng = Rng::new(3);
    // Skewed ids that mostly follow their predecessor, so that both frequencies and pairs carry
    // information.
    let mut ids = vec![0u32];
    while ids.len() < 3000 {
        let next = if rng.below(4) == 0 { (rng.below(6) * rng.below(6)) as u32 } else { (ids[ids.len() - 1] * 7 + 3) % 40 };
        ids.push(next);
    }
    let path = dir.path("skewed.tok");
    let vocab = 40u32;
    write_token_file(&path, vocab, None, ids.iter().copied()).unwrap();
    let b = Corpus::open(&path).unwrap().baselines().unwrap();

    let (train, val) = ids.split_at(train_len(ids.len()));
    let v = vocab as f64;
    let count = |t: u32| train.iter().filter(|&&x| x == t).count() as f64;
    let unigram = -val.iter().map(|&t| ((count(t) + 1.0) / (train.len() as f64 + v)).ln()).sum::<f64>() / val.len() as f64;
    let pair_count = |p: u32, t: u32| train.windows(2).filter(|w| w[0] == p && w[1] == t).count() as f64;
    let context = |p: u32| train.windows(2).filter(|w| w[0] == p).count() as f64;
    let bigram = -val.windows(2).map(|w| ((pair_count(w[0], w[1]) + 1.0) / (context(w[0]) + v)).ln()).sum::<f64>() / (val.len() - 1) as f64;
    assert!((b.uniform - v.ln()).abs() < 1e-12);
    assert!((b.unigram - unigram).abs() < 1e-12, "{} vs {unigram}", b.unigram);
    assert!((b.bigram - bigram).abs() < 1e-12, "{} vs {bigram}", b.bigram);
    assert!(b.bigram < b.unigram && b.unigram < b.uniform);
}
