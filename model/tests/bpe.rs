//! The byte-level BPE: a token file it writes decodes back to the exact text, its ids fit the
//! vocabulary, it compresses, and its merges come from the training split only.

use std::path::PathBuf;

use model::data::bpe::{sidecar_path, tokenize_file, training_text};
use model::data::{default_corpus_path, BpeTokenizer, Corpus, TokenFile, HEADER_LEN};

const VOCAB: usize = 512;
/// A word that is nowhere in Shakespeare, repeated through the validation tail of the test text.
const VALIDATION_WORD: &str = " Zorblaxian";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsmoe-bpe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 200 kB of Shakespeare, then a tail (under 10 % of the whole, so all validation) that repeats a
/// word the training part never contains.
fn test_text() -> String {
    let corpus = std::fs::read_to_string(default_corpus_path()).unwrap();
    let mut end = 200_000;
    while !corpus.is_char_boundary(end) {
        end -= 1;
    }
    let mut text = corpus[..end].to_string();
    assert!(!text.contains(VALIDATION_WORD.trim()));
    for i in 0..1200 {
        text.push_str(if i % 8 == 7 { "\nAll:" } else { VALIDATION_WORD });
    }
    text.push('\n');
    text
}

/// Ids of a 2-byte token file, read by its documented layout.
fn read_u16_ids(path: &std::path::Path) -> Vec<u32> {
    let bytes = std::fs::read(path).unwrap();
    bytes[HEADER_LEN..].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect()
}

#[test]
fn token_file_round_trips_and_the_vocabulary_comes_from_training_text_only() {
    let dir = scratch("round-trip");
    let text = test_text();
    let text_path = dir.join("text.txt");
    std::fs::write(&text_path, &text).unwrap();
    let tokens_path = dir.join("text.tok");
    let training = training_text(&text);
    assert!(!training.contains(VALIDATION_WORD), "the test word must be in the validation part only");

    let summary = tokenize_file(&text_path, VOCAB, &tokens_path).unwrap();
    assert_eq!(summary.vocab, VOCAB);
    assert_eq!(summary.text_bytes, text.len() as u64);
    assert!(summary.bytes_per_token() > 1.5, "{summary:?}");

    let file = TokenFile::open(&tokens_path).unwrap();
    assert_eq!((file.vocab() as usize, file.width(), file.len() as u64), (VOCAB, 2, summary.tokens));
    assert!((file.bytes_per_token().unwrap() - summary.bytes_per_token()).abs() < 1e-12);
    let corpus = Corpus::open(&tokens_path).unwrap();
    assert_eq!(corpus.vocab_size(), VOCAB);

    let ids = read_u16_ids(&tokens_path);
    assert_eq!(ids.len() as u64, summary.tokens);
    assert!(ids.iter().all(|&id| (id as usize) < VOCAB));
    let tokenizer = BpeTokenizer::load(&sidecar_path(&tokens_path)).unwrap();
    assert_eq!(tokenizer.vocab_size(), VOCAB);
    assert_eq!(tokenizer.decode(&ids).unwrap(), text);

    // Frequent in the validation tail, absent from training: never merged into one token. The
    // control shows the check can fail: a tokenizer that also saw the tail learns the word whole.
    let word_tokens = |t: &BpeTokenizer| t.encode(VALIDATION_WORD).unwrap().len();
    assert!(word_tokens(&tokenizer) > 2, "{VALIDATION_WORD:?} became {} tokens", word_tokens(&tokenizer));
    let leaky = BpeTokenizer::train(&text, VOCAB).unwrap();
    assert_eq!(word_tokens(&leaky), 1, "control: trained on all the text, the word should be one token");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_inputs_are_errors() {
    let dir = scratch("bad");
    let binary = dir.join("binary.bin");
    std::fs::write(&binary, [0x66, 0x6f, 0xff, 0xfe, 0x00, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46]).unwrap();
    let err = tokenize_file(&binary, VOCAB, &dir.join("b.tok")).unwrap_err().to_string();
    assert!(err.contains("binary.bin") && err.contains("UTF-8"), "{err}");

    let text = dir.join("text.txt");
    std::fs::write(&text, "to be or not to be, that is the question\n").unwrap();
    let err = tokenize_file(&text, 100, &dir.join("t.tok")).unwrap_err().to_string();
    assert!(err.contains("256"), "{err}");

    let missing = BpeTokenizer::load(&dir.join("nowhere.json")).err().unwrap().to_string();
    assert!(missing.contains("nowhere.json"), "{missing}");
    let _ = std::fs::remove_dir_all(&dir);
}
