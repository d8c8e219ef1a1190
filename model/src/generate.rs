//! Sampling text from a model, one token at a time over a sliding context window.

use engine::{ops, DType, Rng, Tensor};

use crate::transformer::{InferenceMode, Model};
use crate::{Ctx, Error, Result};

/// Extends `prompt` by `n_tokens` sampled at `temperature` (0 = greedy).
pub fn generate(model: &Model, prompt: &[u32], n_tokens: usize, temperature: f64, mode: InferenceMode, dtype: DType, rng: &mut Rng) -> Result<Vec<u32>> {
    generate_layers(model, prompt, n_tokens, temperature, &vec![mode; model.config.n_layers], dtype, rng)
}

/// `generate` with a mode per layer (threshold-K once resolved).
pub fn generate_layers(model: &Model, prompt: &[u32], n_tokens: usize, temperature: f64, modes: &[InferenceMode], dtype: DType, rng: &mut Rng) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Invalid { what: "prompt", value: String::new(), msg: "needs at least one token".into() });
    }
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(Error::Invalid { what: "temperature", value: temperature.to_string(), msg: "must be a non-negative number".into() });
    }
    let vocab = model.config.vocab_size as u32;
    if let Some(bad) = prompt.iter().find(|&&t| t >= vocab) {
        return Err(Error::Invalid { what: "prompt token", value: bad.to_string(), msg: format!("vocabulary has {vocab} tokens") });
    }
    let device = model.device();
    let ctx = Ctx::eval(dtype).without_aux_losses();
    let mut tokens = prompt.to_vec();
    for _ in 0..n_tokens {
        let window = &tokens[tokens.len().saturating_sub(model.config.max_seq_len)..];
        let input = Tensor::from_slice(window, [window.len()], &device)?;
        let logits = model.forward_layers(&ctx, &input, 1, window.len(), modes)?.logits;
        let last = ops::narrow(logits.value(), 0, window.len() - 1, 1)?;
        let next = if temperature == 0.0 {
            ops::argmax(&last, -1, false)?.to_vec::<u32>()?[0]
        } else {
            sample(&tempered(&last.to_f64_vec()?, temperature), rng)
        };
        tokens.push(next);
    }
    Ok(tokens)
}

/// Unnormalised probabilities of `logits / temperature`: exp((l - max) / T) in f64. Measured from
/// the largest logit, every exponent is at most 0, so no temperature overflows: as T shrinks the
/// mass goes to the argmax, and a T so small that the quotient is -inf leaves exactly the argmax
/// (greedy), where scaling the logits by 1/T first would overflow to inf and NaN.
fn tempered(logits: &[f64], temperature: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    logits.iter().map(|&l| ((l - max) / temperature).exp()).collect()
}

fn sample(probs: &[f64], rng: &mut Rng) -> u32 {
    let mut u = rng.uniform() * probs.iter().sum::<f64>();
    for (i, p) in probs.iter().enumerate() {
        u -= p;
        if u <= 0.0 {
            return i as u32;
        }
    }
    (probs.len() - 1) as u32
}
