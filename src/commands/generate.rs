//! `dsmoe generate`: sample text from a checkpoint, densely or with sparse expert selection, on
//! the inference engine (paged KV cache, continuous batching). One `--prompt`, or `--prompts FILE`
//! with one prompt per line, all generated in one continuous batch and printed in file order.
//! Byte-token models read and print bytes; a model trained on a BPE token file uses the tokenizer
//! `dsmoe tokenize` left beside that file (the checkpoint records the data path).

use anyhow::{bail, Context, Result};
use model::data::bpe::sidecar_path;
use model::data::BpeTokenizer;
use model::infer::{Finish, InferWeights, Request, SamplingParams};
use model::eval::{resolve_threshold_k, KRounding};
use model::run::{load_model, open_corpus, validation_windows, LoadedModel};
use model::{InferenceMode, Selection};
use engine::Device;

use super::runner::{infer_dtype, scheduler};
use super::{device, inference_mode};
use crate::cli::GenerateArgs;

pub fn run(a: GenerateArgs) -> Result<()> {
    let mode = inference_mode(&a.mode, &a.att_mode)?;
    let sampling = SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed };
    sampling.validate()?;
    let prompts: Vec<String> = match (&a.prompt, &a.prompts) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("--prompts {}", path.display()))?;
            let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
            if lines.is_empty() {
                bail!("--prompts {}: the file has no prompts (one per line expected)", path.display());
            }
            lines
        }
        (None, None) => bail!("give --prompt TEXT or --prompts FILE"),
    };
    let device = device(&a.device)?;
    let dtype = infer_dtype(&a.engine, &device)?;
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
    let encode = |text: &str| -> Result<Vec<u32>> {
        Ok(match &tokenizer {
            Some(t) => t.encode(text)?,
            None => text.bytes().map(u32::from).collect(),
        })
    };
    let decode = |tokens: &[u32]| -> String {
        match &tokenizer {
            Some(t) => t.decode(tokens).unwrap_or_else(|_| bytes_to_text(tokens)),
            None => bytes_to_text(tokens),
        }
    };
    let requests = prompts
        .iter()
        .map(|p| Ok(Request { prompt: encode(p)?, max_new_tokens: a.tokens, stop_tokens: vec![], stop_strings: a.stop.clone(), sampling }))
        .collect::<Result<Vec<_>>>()?;
    let modes = layer_modes(&loaded, mode, &device)?;
    let weights = InferWeights::from_model(&loaded.model, dtype, a.engine.per_expert_attention)?;
    drop(loaded);
    let mut engine = scheduler(&weights, &a.engine, modes)?;
    let completions = engine.run(&requests, Some(&decode), |_| {})?;
    for (i, (prompt, c)) in prompts.iter().zip(&completions).enumerate() {
        let mut text = decode(&c.generated);
        if c.finish == Finish::StopString {
            // Cut after the first stop string, as the sequence stopped there.
            if let Some((at, s)) = a.stop.iter().filter_map(|s| text.find(s.as_str()).map(|at| (at, s))).min() {
                text.truncate(at + s.len());
            }
        }
        if i > 0 {
            println!();
        }
        println!("{prompt}{text}");
        if c.finish == Finish::Context && c.generated.len() < a.tokens {
            eprintln!("note: prompt {} stopped after {} tokens, at the model's context of {} tokens", i + 1, c.generated.len(), weights.config.max_seq_len);
        }
    }
    Ok(())
}

/// Each layer's mode: `mode` everywhere, with threshold-K resolved per layer over the validation
/// windows of the checkpoint's data (its final-evaluation set), as `dsmoe eval` resolves it.
fn layer_modes(loaded: &LoadedModel, mode: InferenceMode, device: &Device) -> Result<Vec<InferenceMode>> {
    if !matches!(mode.mlp, Selection::ThresholdK(_)) && !matches!(mode.attention, Selection::ThresholdK(_)) {
        return Ok(vec![mode; loaded.config.model.n_layers]);
    }
    let corpus = open_corpus(loaded.data.as_deref())?;
    let t = &loaded.config.train;
    let windows = validation_windows(&corpus, t.seq_len, t.final_eval_windows)?;
    let dtype = super::compute_dtype(None, device)?;
    resolve_threshold_k(&loaded.model, &windows, t.batch_size, mode, dtype, KRounding::Up).context("resolving threshold-k's K per layer on the validation split")
}

/// Byte tokens as text (invalid UTF-8 shown with replacement characters).
pub fn bytes_to_text(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens.iter().map(|&t| t as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
