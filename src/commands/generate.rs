//! `dsmoe generate`: sample text from a checkpoint, densely or with sparse expert selection.

use anyhow::{bail, Result};
use engine::Rng;
use model::run::load_model;

use super::{compute_dtype, device, inference_mode};
use crate::cli::GenerateArgs;

pub fn run(a: GenerateArgs) -> Result<()> {
    let mode = inference_mode(&a.mode, &a.att_mode)?;
    let device = device(&a.device)?;
    let dtype = compute_dtype(None, &device)?;
    let loaded = load_model(&a.checkpoint, &device)?;
    if loaded.config.model.vocab_size != 256 {
        bail!("{}: generate prints byte-level text; this model has a vocabulary of {} tokens", a.checkpoint.display(), loaded.config.model.vocab_size);
    }
    let prompt: Vec<u32> = a.prompt.bytes().map(u32::from).collect();
    let mut rng = Rng::new(a.seed);
    let tokens = model::generate::generate(&loaded.model, &prompt, a.tokens, a.temperature, mode, dtype, &mut rng)?;
    println!("{}", bytes_to_text(&tokens));
    Ok(())
}

/// Byte tokens as text (invalid UTF-8 shown with replacement characters).
pub fn bytes_to_text(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens.iter().map(|&t| t as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
