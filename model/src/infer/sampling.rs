//! Choosing the next token from logits: greedy (argmax, the lowest index on ties, as the engine's
//! `argmax` op), or a draw from the softmax at a temperature, optionally restricted to the k most
//! probable tokens (top-k) and then to the smallest set whose probability reaches p (top-p,
//! nucleus). Each request draws from its own seeded generator, so a request's text depends on its
//! seed only, not on which other requests share its batch.

use engine::Rng;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl SamplingParams {
    pub const GREEDY: SamplingParams = SamplingParams { temperature: 0.0, top_k: None, top_p: None, seed: 0 };

    pub fn validate(&self) -> Result<()> {
        let bad = |what: &'static str, value: String, msg: &str| Err(Error::Invalid { what, value, msg: msg.into() });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature.to_string(), "must be a non-negative number (0 = greedy)");
        }
        if self.top_k == Some(0) {
            return bad("top-k", "0".into(), "must be at least 1");
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad("top-p", p.to_string(), "must be in (0, 1]");
            }
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler { params, rng: Rng::new(params.seed) }
    }

    /// The next token for one row of logits.
    pub fn sample(&mut self, logits: &[f64]) -> u32 {
        let argmax = || logits.iter().enumerate().fold(0, |best, (i, &v)| if v > logits[best] || (logits[best].is_nan() && !v.is_nan()) { i } else { best }) as u32;
        let p = self.params;
        if p.temperature == 0.0 {
            return argmax();
        }
        // Candidates by probability, descending (ties to the lower index).
        let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if order.is_empty() {
            return 0;
        }
        order.truncate(p.top_k.unwrap_or(order.len()).max(1));
        let top = logits[order[0]];
        let mut weights: Vec<f64> = order.iter().map(|&i| ((logits[i] - top) / p.temperature).exp()).collect();
        if let Some(top_p) = p.top_p {
            let total: f64 = weights.iter().sum();
            let mut cumulative = 0.0;
            let keep = weights.iter().position(|w| {
                cumulative += w / total;
                cumulative >= top_p
            });
            weights.truncate(keep.map_or(weights.len(), |k| k + 1));
        }
        let mut u = self.rng.uniform() * weights.iter().sum::<f64>();
        for (&i, w) in order.iter().zip(&weights) {
            u -= w;
            if u <= 0.0 {
                return i as u32;
            }
        }
        order[weights.len() - 1] as u32
    }
}
