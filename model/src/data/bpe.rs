//! The optional subword vocabulary: a byte-level BPE (GPT-2's scheme) trained with the `tokenizers`
//! crate on the training split of a text file, and the token file it encodes that text to.
//!
//! Byte-level means the base alphabet is the 256 byte values, so any UTF-8 text encodes without an
//! unknown token and decodes back to exactly the same bytes; merges are learned on pre-tokens (runs
//! of letters, digits, punctuation or whitespace, a word keeping one leading space) and never cross
//! them. There are no special tokens: a corpus is one long stream, as with byte tokens.
//!
//! Only the training split is seen in training, so the vocabulary carries nothing from the
//! validation text: the split is `data::train_len` of the text's bytes (moved back to a character
//! boundary), the same first 90 % `Corpus` uses. `Corpus` then splits the *token* file 90/10 by
//! token count; BPE compresses the two parts slightly differently, so the token-level boundary is
//! close to, but not exactly at, the byte-level one the tokenizer was trained on (a few lines of
//! training text may land in validation or the reverse).
//!
//! `tokenize_file` writes the ids as a token file recording the text's byte count (so losses convert
//! to bits per byte) and the tokenizer beside it as `<token file>.tokenizer.json`, the sidecar
//! `dsmoe generate` reads to encode prompts and decode samples.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

use super::{train_len, write_token_file};
use crate::checkpoint::write_atomic;
use crate::files::{open_regular, read_text_limited, same_file, TOKENIZER_LIMIT};
use crate::{Error, Result};

/// The smallest vocabulary: the 256 byte tokens, no merges.
pub const MIN_VOCAB: usize = 256;

/// Text is encoded in pieces of about this size, in parallel and without holding a whole corpus's
/// per-token bookkeeping at once. Pieces end where encoding them apart changes nothing (see `pieces`).
const PIECE_BYTES: usize = 1 << 20;

/// A trained byte-level BPE.
pub struct BpeTokenizer {
    inner: Tokenizer,
}

/// What `tokenize_file` wrote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenizeSummary {
    /// Vocabulary size: the requested one, or less when the training text offers fewer merges.
    pub vocab: usize,
    pub tokens: u64,
    pub text_bytes: u64,
}

impl TokenizeSummary {
    pub fn bytes_per_token(&self) -> f64 {
        self.text_bytes as f64 / self.tokens.max(1) as f64
    }
}

/// The tokenizer file that belongs to a token file: `<tokens>.tokenizer.json`.
pub fn sidecar_path(tokens: &Path) -> PathBuf {
    let mut name = tokens.as_os_str().to_owned();
    name.push(".tokenizer.json");
    PathBuf::from(name)
}

/// The training part of `text`: its first `train_len` bytes, moved back to a character boundary.
pub fn training_text(text: &str) -> &str {
    let mut end = train_len(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn bpe_error(origin: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::data(origin, format!("{what}: {e}"))
}

impl BpeTokenizer {
    /// Learns merges on `text` until the vocabulary has `vocab` tokens (or no pair is left to merge).
    pub fn train(text: &str, vocab: usize) -> Result<BpeTokenizer> {
        if vocab < MIN_VOCAB || vocab > u32::MAX as usize {
            return Err(Error::Invalid {
                what: "BPE vocabulary size",
                value: vocab.to_string(),
                msg: format!("must be at least {MIN_VOCAB} (the byte tokens) and fit in 32 bits"),
            });
        }
        let byte_level = ByteLevel::new(false, true, true);
        let mut inner = Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(byte_level)).with_decoder(Some(byte_level));
        let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        let mut trainer: TrainerWrapper =
            BpeTrainerBuilder::new().show_progress(false).vocab_size(vocab).min_frequency(0).initial_alphabet(alphabet).build().into();
        inner.train(&mut trainer, pieces(text, PIECE_BYTES)).map_err(|e| bpe_error("(training text)", "BPE training failed", e))?;
        Ok(BpeTokenizer { inner })
    }

    /// Reads a tokenizer written by `save` (any `tokenizers` JSON file works).
    pub fn load(path: &Path) -> Result<BpeTokenizer> {
        let origin = path.display().to_string();
        let json = read_text_limited(path, TOKENIZER_LIMIT, "tokenizer file")?;
        let inner: Tokenizer = json.parse().map_err(|e| bpe_error(&origin, "not a tokenizer file", e))?;
        Ok(BpeTokenizer { inner })
    }

    /// Writes the tokenizer as JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.inner.to_string(false).map_err(|e| bpe_error(&path.display().to_string(), "serialising the tokenizer", e))?;
        write_atomic(path, json.as_bytes())
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of `text`, encoded piecewise (the same ids as encoding it whole).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_in_pieces(text, PIECE_BYTES)
    }

    fn encode_in_pieces(&self, text: &str, piece_bytes: usize) -> Result<Vec<u32>> {
        let pieces: Vec<&str> = pieces(text, piece_bytes).collect();
        let encodings = self.inner.encode_batch_fast(pieces, false).map_err(|e| bpe_error("(text)", "BPE encoding failed", e))?;
        Ok(encodings.iter().flat_map(|e| e.get_ids().iter().copied()).collect())
    }

    /// Text of `ids`; an incomplete UTF-8 sequence (possible in sampled ids) shows as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| bpe_error("(ids)", "BPE decoding failed", e))
    }
}

/// Splits `text` into pieces of about `target` bytes that encode, one by one, to the same ids as
/// `text` whole. A piece ends just after a newline that stands between two non-whitespace
/// characters: the pre-tokenizer's patterns have no look-behind, no pattern that ends in a letter,
/// digit or punctuation can continue past a newline, and a lone newline followed by a non-space is
/// its own pre-token either way, so the pre-tokens, and with them the merges, are unchanged.
fn pieces(text: &str, target: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let bytes = rest.as_bytes();
        let mut end = target.min(bytes.len());
        let cut = loop {
            if end >= bytes.len() {
                break bytes.len();
            }
            // A newline byte is never inside a multi-byte character. Requiring ASCII graphic
            // neighbours (rather than any non-whitespace) keeps the test byte-local; Unicode spaces
            // and letters next to the newline merely defer the cut to a later line.
            if bytes[end] == b'\n' && end > 0 && bytes[end - 1].is_ascii_graphic() && bytes.get(end + 1).is_some_and(u8::is_ascii_graphic) {
                break end + 1;
            }
            end += 1;
        };
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

/// Trains a `vocab`-token BPE on the training split of the UTF-8 text file `text_path`, encodes the
/// whole file to the token file `out` and saves the tokenizer as its sidecar (`sidecar_path`).
pub fn tokenize_file(text_path: &Path, vocab: usize, out: &Path) -> Result<TokenizeSummary> {
    let origin = text_path.display().to_string();
    for (written, what) in [(out.to_path_buf(), "token file"), (sidecar_path(out), "tokenizer file")] {
        if written == text_path || same_file(&written, text_path) {
            return Err(Error::data(&origin, format!("is also the output {what} {}: an input is never overwritten; choose another --out", written.display())));
        }
    }
    let mut bytes = Vec::new();
    open_regular(text_path, "text file")?.read_to_end(&mut bytes).map_err(|e| Error::io(format!("reading {origin}"), e))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| Error::data(&origin, format!("not UTF-8 text (invalid byte at offset {}); BPE needs text", e.valid_up_to())))?;
    let training = training_text(text);
    if training.is_empty() {
        return Err(Error::data(&origin, "no training text: the file is too short to split 90/10"));
    }
    let tokenizer = BpeTokenizer::train(training, vocab)?;
    let vocab = tokenizer.vocab_size();
    let ids = tokenizer.encode(text)?;
    let tokens = write_token_file(out, vocab as u32, Some(text.len() as u64), ids)?;
    tokenizer.save(&sidecar_path(out))?;
    Ok(TokenizeSummary { vocab, tokens, text_bytes: text.len() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_text_and_encode_like_the_whole() {
        let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.  \n \nYou are all resolved rather to die than to famish?\n\tAll:\nResolved. resolved.\n";
        let small: Vec<&str> = pieces(text, 8).collect();
        assert!(small.len() > 3, "{small:?}");
        assert_eq!(small.concat(), text);
        let tokenizer = BpeTokenizer::train(text, 300).unwrap();
        let whole = tokenizer.inner.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tokenizer.encode_in_pieces(text, 8).unwrap(), whole);
        assert_eq!(tokenizer.decode(&whole).unwrap(), text);
    }

    #[test]
    fn training_text_ends_on_a_character_boundary() {
        // 10 bytes: train_len is 9, which falls inside the final 2-byte "é".
        let text = "abcdefgh\u{e9}";
        assert_eq!(text.len(), 10);
        assert_eq!(training_text(text), "abcdefgh");
        assert_eq!(training_text("abcdefghij"), "abcdefghi");
    }

    #[test]
    fn vocabulary_below_the_byte_alphabet_is_refused() {
        assert!(matches!(BpeTokenizer::train("some text", 255), Err(Error::Invalid { .. })));
    }
}
