//! The `dsmoe` binary end to end: a short train / eval / generate round trip on a micro config, and
//! every kind of bad input a user can give ending in a clear message and a non-zero exit, not a panic.

mod common;

use common::{dsmoe, fails_with, micro_config, scratch, text};

#[test]
fn train_eval_generate_round_trip() {
    let dir = scratch("round-trip");
    let config = micro_config(&dir, 256);
    let out = dir.join("run");
    let o = dsmoe(&["train", "--config", config.to_str().unwrap(), "--steps", "4", "--device", "cpu", "--out", out.to_str().unwrap()]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    for needle in ["top-k:4", "threshold:1", "MLP expert", "sample (", "checkpoint:"] {
        assert!(stdout.contains(needle), "train output lacks {needle:?}:\n{stdout}");
    }

    let o = dsmoe(&["eval", "--checkpoint", out.to_str().unwrap(), "--mode", "top-k:2", "--windows", "3", "--device", "cpu", "--json"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["step"], 4);
    assert_eq!(v["mode"], "top-k:2");
    assert!((v["mlp_expert_fraction"].as_f64().unwrap() - 0.25).abs() < 1e-12, "{v}");
    assert!(v["loss_nats_per_token"].as_f64().unwrap().is_finite());

    let o = dsmoe(&["generate", "--checkpoint", out.to_str().unwrap(), "--prompt", "KING:", "--tokens", "12", "--mode", "threshold:1", "--device", "cpu"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.starts_with("KING:") && stdout.trim_end().len() >= 5, "{stdout}");

    // A file of prompts, generated in one continuous batch, printed in file order.
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "KING:\nQUEEN:\n\nFOOL:\n").unwrap();
    let o = dsmoe(&["generate", "--checkpoint", out.to_str().unwrap(), "--prompts", prompts.to_str().unwrap(), "--tokens", "6", "--top-k", "5", "--top-p", "0.9", "--max-batch", "2", "--prefill-chunk", "2", "--device", "cpu"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let (k, q, f) = (stdout.find("KING:").unwrap(), stdout.find("QUEEN:").unwrap(), stdout.find("FOOL:").unwrap());
    assert!(k < q && q < f, "{stdout}");

    // Inference inputs that cannot work: clear errors, non-zero exit.
    let ckpt = out.to_str().unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    fails_with(&["generate", "--checkpoint", ckpt, "--prompts", empty.to_str().unwrap(), "--device", "cpu"], &["empty.txt", "no prompts"]);
    let long = "x".repeat(40);
    fails_with(&["generate", "--checkpoint", ckpt, "--prompt", &long, "--device", "cpu"], &["40 prompt tokens", "context of 32"]);
    fails_with(&["generate", "--checkpoint", ckpt, "--prompt", "x", "--kv-budget-mib", "0", "--device", "cpu"], &["KV-cache budget", "too small"]);
    fails_with(&["generate", "--checkpoint", ckpt, "--prompt", "x", "--mode", "sometimes", "--device", "cpu"], &["sometimes", "expected dense, top-k:K"]);
    fails_with(&["generate", "--checkpoint", ckpt, "--prompt", "x", "--top-p", "0", "--device", "cpu"], &["top-p"]);

    // Resuming a finished run with more steps continues it.
    let o = dsmoe(&["train", "--resume", "--out", out.to_str().unwrap(), "--steps", "6", "--device", "cpu", "--no-final-eval"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("from step 4"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_command_has_help() {
    for cmd in ["train", "eval", "generate", "info", "tokenize"] {
        let o = dsmoe(&[cmd, "--help"]);
        assert!(o.status.success() && text(&o).0.contains("Usage"), "{cmd} --help");
    }
}

#[test]
fn info_lists_presets_and_counts_one() {
    let o = dsmoe(&["info"]);
    assert!(o.status.success() && text(&o).0.contains("ds-moe-6b"));
    let o = dsmoe(&["info", "--config", "ds-moe-6b"]);
    let (stdout, _) = text(&o);
    assert!(o.status.success() && stdout.contains("top-k:16") && stdout.contains("MLP experts"), "{stdout}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = scratch("bad");
    // An inconsistent config: attention heads do not fit d_model.
    let mut c: serde_json::Value = serde_json::from_str(include_str!("../configs/ds-moe-tiny.json")).unwrap();
    c["model"]["attention"]["kv_heads"] = 3.into();
    let bad_config = dir.join("bad.json");
    std::fs::write(&bad_config, c.to_string()).unwrap();
    fails_with(&["train", "--config", bad_config.to_str().unwrap(), "--out", dir.join("r").to_str().unwrap()], &["bad.json", "kv_heads"]);
    fails_with(&["train", "--config", "no-such-preset"], &["no-such-preset", "not a preset"]);

    // A missing checkpoint, and a corrupt one.
    fails_with(&["eval", "--checkpoint", dir.join("nowhere").to_str().unwrap()], &["nowhere", "no complete checkpoint"]);
    let corrupt = dir.join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("state.json"), "{ not json").unwrap();
    fails_with(&["eval", "--checkpoint", corrupt.to_str().unwrap()], &["state.json", "invalid JSON"]);

    // Unknown mode strings.
    fails_with(&["eval", "--checkpoint", corrupt.to_str().unwrap(), "--mode", "top-3"], &["top-3", "expected dense, top-k:K"]);
    fails_with(&["generate", "--checkpoint", corrupt.to_str().unwrap(), "--prompt", "x", "--mode", "top-k:0"], &["top-k:0"]);

    // A token file of 2-byte ids whose header claims 4-byte ids (written with the wrong width).
    let tokens = dir.join("tokens.bin");
    model::data::write_token_file(&tokens, 256, None, (0..1000u32).map(|i| i % 256)).unwrap();
    let mut bytes = std::fs::read(&tokens).unwrap();
    bytes[12..16].copy_from_slice(&4u32.to_le_bytes());
    std::fs::write(&tokens, &bytes).unwrap();
    fails_with(&["train", "--data", tokens.to_str().unwrap(), "--out", dir.join("r2").to_str().unwrap(), "--steps", "1"], &["tokens.bin", "another id width"]);

    // CUDA asked for where there is none.
    if engine::cuda::device_count() == 0 {
        fails_with(&["train", "--device", "cuda", "--steps", "1", "--out", dir.join("r3").to_str().unwrap()], &["--device cuda"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_inference_prints_the_table_and_appends_records() {
    let dir = scratch("bench");
    let config = micro_config(&dir, 256);
    let results = dir.join("results.jsonl");
    let args = [
        "bench", "inference", "--random-weights", &format!("dense-tiny,{}", config.display()), "--modes", "top-k:2", "--repeats", "1",
        "--latency-batch", "2", "--latency-prompt", "6", "--latency-tokens", "2", "--input-batch", "2", "--input-prompt", "8", "--output-tokens", "4",
        "--serving-requests", "3", "--serving-input", "5", "--serving-output", "3", "--kv-budget-mib", "4",
    ];
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dsmoe")).args(args).env("DSMOE_RESULTS", &results).output().unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    for needle in ["dense-tiny", "micro.json", "top-k:2", "latency s", "input tok/s", "output tok/s", "serving", "copy bandwidth", "1.00x"] {
        assert!(stdout.contains(needle), "bench output lacks {needle:?}:\n{stdout}");
    }
    // 3 rows (dense-tiny dense; the micro DS-MoE dense and top-k:2) x 4 protocols.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&results).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 12);
    for key in ["bench", "case", "device", "commit", "date", "unit", "ours", "baseline_name", "baseline"] {
        assert!(lines.iter().all(|l| l.get(key).is_some()), "records lack {key}");
    }
    fails_with(&["bench", "inference", "--random-weights", "dense-tiny", "--protocols", "speed"], &["speed", "unknown protocol"]);
    fails_with(&["bench", "inference", "--random-weights", "dense-tiny", "--latency-prompt", "200"], &["context of 128"]);
    let _ = std::fs::remove_dir_all(&dir);
}
