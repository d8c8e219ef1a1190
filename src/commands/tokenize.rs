//! `dsmoe tokenize`: a byte-level BPE trained on the training split of a text file, and the file
//! encoded with it as a token file (see `model::data::bpe`).

use anyhow::Result;
use model::data::bpe::{sidecar_path, tokenize_file};

use crate::cli::TokenizeArgs;

pub fn run(a: TokenizeArgs) -> Result<()> {
    let summary = tokenize_file(&a.data, a.vocab, &a.out)?;
    println!("vocabulary: {} tokens", summary.vocab);
    println!("tokens:     {} ({} bytes of text)", summary.tokens, summary.text_bytes);
    println!("bytes/token: {:.3}", summary.bytes_per_token());
    println!("wrote {} and {}", a.out.display(), sidecar_path(&a.out).display());
    Ok(())
}
