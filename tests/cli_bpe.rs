//! `dsmoe tokenize`, then training on the token file and generating through its tokenizer, end to
//! end on a micro config; and the errors when a BPE model's tokenizer is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VOCAB: usize = 320;

fn dsmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dsmoe")).args(args).env_remove("DSMOE_PROFILE").output().expect("the dsmoe binary runs")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsmoe-cli-bpe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// tests/cli.rs's micro config with a BPE vocabulary.
fn micro_config(dir: &Path) -> PathBuf {
    let mut c: serde_json::Value = serde_json::from_str(include_str!("../configs/ds-moe-tiny.json")).unwrap();
    c["model"]["vocab_size"] = VOCAB.into();
    c["model"]["d_model"] = 32.into();
    c["model"]["n_layers"] = 1.into();
    c["model"]["max_seq_len"] = 32.into();
    c["model"]["attention"]["head_dim"] = 8.into();
    c["model"]["mlp"]["expert_width"] = 16.into();
    c["train"]["batch_size"] = 4.into();
    c["train"]["seq_len"] = 32.into();
    c["train"]["eval_interval"] = 2.into();
    c["train"]["eval_windows"] = 2.into();
    c["train"]["final_eval_windows"] = 4.into();
    let path = dir.join("micro.json");
    std::fs::write(&path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    path
}

#[test]
fn tokenize_train_generate() {
    let dir = scratch("round-trip");
    let corpus = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/shakespeare.txt")).unwrap();
    let slice = &corpus[..corpus.char_indices().nth(40_000).unwrap().0];
    let text_path = dir.join("slice.txt");
    std::fs::write(&text_path, slice).unwrap();
    let tokens = dir.join("slice.tok");
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let o = dsmoe(&["tokenize", "--data", &s(&text_path), "--vocab", &VOCAB.to_string(), "--out", &s(&tokens)]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("vocabulary: {VOCAB} tokens")) && stdout.contains("bytes/token"), "{stdout}");
    assert!(dir.join("slice.tok.tokenizer.json").is_file());

    let out = dir.join("run");
    let config = micro_config(&dir);
    let o = dsmoe(&["train", "--config", &s(&config), "--data", &s(&tokens), "--steps", "2", "--device", "cpu", "--out", &s(&out), "--no-final-eval"]);
    assert!(o.status.success(), "{}\n{}", text(&o).0, text(&o).1);

    let o = dsmoe(&["generate", "--checkpoint", &s(&out), "--prompt", "KING RICHARD:", "--tokens", "8", "--device", "cpu"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    // The prompt comes back through the tokenizer intact, then new text.
    assert!(stdout.starts_with("KING RICHARD:") && stdout.trim_end().len() > "KING RICHARD:".len(), "{stdout}");

    // Without its tokenizer the model's ids mean nothing: a clear error naming the missing file.
    std::fs::remove_file(dir.join("slice.tok.tokenizer.json")).unwrap();
    let o = dsmoe(&["generate", "--checkpoint", &s(&out), "--prompt", "KING", "--device", "cpu"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked") && stderr.contains("slice.tok.tokenizer.json") && stderr.contains(&VOCAB.to_string()), "{stderr}");

    let o = dsmoe(&["tokenize", "--data", &s(&text_path), "--vocab", "100", "--out", &s(&tokens)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("at least 256"), "{}", text(&o).1);
    let _ = std::fs::remove_dir_all(&dir);
}
