//! `dsmoe generate`: sample text from a checkpoint, densely or with sparse expert selection.
//! Byte-token models read and print bytes; a model trained on a BPE token file uses the tokenizer
//! `dsmoe tokenize` left beside that file (the checkpoint records the data path).

use anyhow::{bail, Context, Result};
use engine::Rng;
use model::data::bpe::sidecar_path;
use model::data::BpeTokenizer;
use model::run::load_model;

use super::{compute_dtype, device, inference_mode};
use crate::cli::GenerateArgs;

pub fn run(a: GenerateArgs) -> Result<()> {
    let mode = inference_mode(&a.mode, &a.att_mode)?;
    let device = device(&a.device)?;
    let dtype = compute_dtype(None, &device)?;
    let loaded = load_model(&a.checkpoint, &device)?;
    let vocab = loaded.config.model.vocab_size;
    let tokenizer = match loaded.data.as_deref().map(sidecar_path).filter(|p| p.is_file()) {
        Some(path) => Some(BpeTokenizer::load(&path).with_context(|| format!("the tokenizer of {}", a.checkpoint.display()))?),
        None if vocab == 256 => None,
        None => bail!(
            "{}: this model has a vocabulary of {vocab} tokens, so it needs the BPE tokenizer of its training data, {}, and there is none (`dsmoe tokenize` writes it next to the token file)",
            a.checkpoint.display(),
            match &loaded.data {
                Some(data) => format!("{}", sidecar_path(data).display()),
                None => "which the checkpoint does not record".to_string(),
            }
        ),
    };
    let prompt: Vec<u32> = match &tokenizer {
        Some(t) => t.encode(&a.prompt)?,
        None => a.prompt.bytes().map(u32::from).collect(),
    };
    let mut rng = Rng::new(a.seed);
    let tokens = model::generate::generate(&loaded.model, &prompt, a.tokens, a.temperature, mode, dtype, &mut rng)?;
    match &tokenizer {
        Some(t) => println!("{}", t.decode(&tokens)?),
        None => println!("{}", bytes_to_text(&tokens)),
    }
    Ok(())
}

/// Byte tokens as text (invalid UTF-8 shown with replacement characters).
pub fn bytes_to_text(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens.iter().map(|&t| t as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
