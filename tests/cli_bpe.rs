//! `dsmoe tokenize`, then training on the token file and generating through its tokenizer, end to
//! end on a micro config; and the errors when a BPE model's tokenizer is missing.

mod common;

use std::path::Path;

use common::{dsmoe, micro_config, scratch, text};

const VOCAB: usize = 320;

#[test]
fn tokenize_train_generate() {
    let dir = scratch("bpe-round-trip");
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
    let config = micro_config(&dir, VOCAB);
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
