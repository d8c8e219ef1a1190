//! The command line against hostile input: outputs that are inputs, named pipes and endless
//! devices where files are read, sizes that overflow, flags that conflict with a resumed run's own
//! settings, damaged checkpoints, and requests that cannot be honoured. Each ends in a clear
//! message and exit code 1, never a panic, an abort, a hang or a silently wrong result.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{dsmoe, fails_with, micro_config, scratch, text};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Like `fails_with`, but the command is killed (and the test fails) if it runs past a minute:
/// for inputs that used to block forever.
fn fails_within_a_minute(args: &[&str], needles: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dsmoe")).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("{args:?} still runs after a minute: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: message lacks {n:?}:\n{err}");
    }
}

#[test]
fn tokenize_never_overwrites_its_input() {
    let dir = scratch("hard-tokenize");
    let input = dir.join("text.txt");
    let text_bytes = "To be, or not to be, that is the question.\n".repeat(50);
    std::fs::write(&input, &text_bytes).unwrap();
    let link = dir.join("link.txt");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    let hard = dir.join("hard.txt");
    std::fs::hard_link(&input, &hard).unwrap();
    for out in [&input, &link, &hard] {
        fails_with(&["tokenize", "--data", s(&input), "--vocab", "300", "--out", s(out)], &["never overwritten", s(out)]);
        assert_eq!(std::fs::read_to_string(&input).unwrap(), text_bytes, "the input changed (--out {})", out.display());
    }
    // The tokenizer written beside the output must not be the input either.
    let sidecar_input = dir.join("x.tok.tokenizer.json");
    std::fs::write(&sidecar_input, &text_bytes).unwrap();
    fails_with(&["tokenize", "--data", s(&sidecar_input), "--vocab", "300", "--out", s(&dir.join("x.tok"))], &["never overwritten"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pipes_and_devices_are_refused_where_files_are_read() {
    let dir = scratch("hard-pipes");
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let config = micro_config(&dir, 256);
    let run = dir.join("run");
    fails_within_a_minute(&["train", "--config", s(&config), "--data", s(&fifo), "--out", s(&run), "--device", "cpu"], &["regular file", "named pipe"]);
    fails_within_a_minute(&["tokenize", "--data", s(&fifo), "--vocab", "300", "--out", s(&dir.join("t.tok"))], &["regular file"]);
    fails_within_a_minute(&["info", "--config", s(&fifo)], &["regular file"]);
    fails_within_a_minute(&["info", "--config", "/dev/zero"], &["regular file", "device"]);
    fails_within_a_minute(&["train", "--config", s(&config), "--data", "/dev/zero", "--out", s(&run), "--device", "cpu"], &["regular file"]);

    // A checkpoint whose metadata files are devices or pipes.
    let o = dsmoe(&["train", "--config", s(&config), "--steps", "1", "--device", "cpu", "--out", s(&run), "--no-final-eval"]);
    assert!(o.status.success(), "{}", text(&o).1);
    fails_within_a_minute(&["eval", "--checkpoint", s(&run), "--data", s(&fifo), "--device", "cpu"], &["regular file"]);
    let step = run.join("step-00000001");
    for (file, target) in [("state.json", "/dev/zero"), ("config.json", "/dev/zero")] {
        let path = step.join(file);
        let saved = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(target, &path).unwrap();
        fails_within_a_minute(&["eval", "--checkpoint", s(&run), "--device", "cpu"], &["regular file", file]);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, saved).unwrap();
    }
    let latest = run.join("latest");
    std::fs::remove_file(&latest).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &latest).unwrap();
    fails_within_a_minute(&["eval", "--checkpoint", s(&run), "--device", "cpu"], &["regular file", "latest"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The micro config with `edit` applied, written to `dir/NAME.json`.
fn edited_config(dir: &Path, name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(micro_config(dir, 256)).unwrap()).unwrap();
    edit(&mut c);
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, c.to_string()).unwrap();
    path
}

#[test]
fn impossible_sizes_and_settings_fail_up_front() {
    let dir = scratch("hard-sizes");
    let huge = edited_config(&dir, "huge", |c| {
        c["model"]["vocab_size"] = (1u64 << 32).into();
        c["model"]["mlp"]["expert_width"] = (1u64 << 61).into();
    });
    fails_with(&["info", "--config", s(&huge)], &["huge.json", "vocab_size"]);
    let wide = edited_config(&dir, "wide", |c| c["model"]["mlp"]["expert_width"] = (1u64 << 61).into());
    fails_with(&["info", "--config", s(&wide)], &["wide.json", "overflows"]);
    let big = edited_config(&dir, "big", |c| {
        c["model"]["d_model"] = 1_000_000.into();
        c["model"]["mlp"]["expert_width"] = 1_000_000.into();
    });
    let run = dir.join("run");
    fails_with(&["train", "--config", s(&big), "--device", "cpu", "--out", s(&run)], &["needs at least", "GiB available"]);
    let batch = edited_config(&dir, "batch", |c| c["train"]["batch_size"] = (1u64 << 62).into());
    fails_with(&["train", "--config", s(&batch), "--device", "cpu", "--out", s(&run)], &["batch_size", "overflow"]);
    for (field, value) in [("norm_eps", -1e-5), ("rope_theta", 0.0)] {
        let bad = edited_config(&dir, field, |c| c["model"][field] = value.into());
        fails_with(&["train", "--config", s(&bad), "--device", "cpu", "--out", s(&run)], &[field]);
    }
    let micro = micro_config(&dir, 256);
    fails_with(&["train", "--config", s(&micro), "--device", "cpu", "--dtype", "f16", "--out", s(&run)], &["f16", "CUDA"]);
    assert!(!run.exists(), "a run that cannot start leaves nothing behind");

    // --steps 0 trains nothing and says so instead of naming a checkpoint that is not there.
    let o = dsmoe(&["train", "--config", s(&micro), "--steps", "0", "--device", "cpu", "--out", s(&run), "--no-final-eval"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("checkpoint: none written") && !run.join("latest").exists(), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoints_and_resumes_are_checked() {
    let dir = scratch("hard-resume");
    let config = micro_config(&dir, 256);
    let run = dir.join("run");
    let o = dsmoe(&["train", "--config", s(&config), "--steps", "2", "--device", "cpu", "--dtype", "f64", "--out", s(&run), "--no-final-eval"]);
    assert!(o.status.success(), "{}", text(&o).1);

    // The run's own dtype; a conflicting flag is an error; a step directory is not a run.
    let o = dsmoe(&["train", "--resume", "--out", s(&run), "--steps", "3", "--device", "cpu", "--no-final-eval"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success() && stdout.contains("in f64"), "{stdout}\n{stderr}");
    fails_with(&["train", "--resume", "--out", s(&run), "--steps", "4", "--device", "cpu", "--dtype", "f32"], &["conflicts", "f64"]);
    fails_with(&["train", "--resume", "--out", s(&run), "--steps", "4", "--device", "cpu", "--seed", "99"], &["--seed 99", "conflicts"]);
    let step = run.join("step-00000003");
    fails_with(&["train", "--resume", "--out", s(&step), "--steps", "4", "--device", "cpu"], &["not a run directory", s(&run)]);
    assert!(!step.join("latest").exists());

    // A token file with more ids than the model embeds.
    let tokens = dir.join("wide.tok");
    model::data::write_token_file(&tokens, 1000, None, (0..5000u32).map(|i| i % 1000)).unwrap();
    fails_with(&["eval", "--checkpoint", s(&run), "--data", s(&tokens), "--device", "cpu"], &["wide.tok", "vocabulary of 1000"]);

    // Tiny temperatures sample like greedy.
    let sample = |t: &str| text(&dsmoe(&["generate", "--checkpoint", s(&run), "--prompt", "KING:", "--tokens", "16", "--temperature", t, "--device", "cpu"])).0;
    assert_eq!(sample("1e-40"), sample("0"));

    // A tensor relabelled to another dtype of the same width, and a NaN weight.
    let weights = step.join("model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(good[8..8 + header_len].to_vec()).unwrap();
    // Master weights are f32 whatever the compute dtype; U32 has the same width, so only a dtype check catches it.
    let relabelled = header.replacen("\"F32\"", "\"U32\"", 1);
    assert_ne!(relabelled, header);
    let mut bad = good[..8].to_vec();
    bad.extend_from_slice(relabelled.as_bytes());
    bad.extend_from_slice(&good[8 + header_len..]);
    std::fs::write(&weights, &bad).unwrap();
    fails_with(&["eval", "--checkpoint", s(&run), "--device", "cpu"], &["model.safetensors", "dtype"]);
    let mut nan = good.clone();
    nan[8 + header_len..8 + header_len + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&weights, &nan).unwrap();
    fails_with(&["eval", "--checkpoint", s(&run), "--device", "cpu"], &["model.safetensors", "NaN or infinite"]);
    std::fs::write(&weights, &good).unwrap();

    // A checkpoint whose config claims a vocabulary no id type holds: refused before allocating.
    let config_path = step.join("config.json");
    let config_text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, config_text.replacen("\"vocab_size\": 256", "\"vocab_size\": 1000000000000", 1)).unwrap();
    fails_with(&["eval", "--checkpoint", s(&run), "--device", "cpu"], &["vocab_size 1000000000000"]);
    let _ = std::fs::remove_dir_all(&dir);
}
