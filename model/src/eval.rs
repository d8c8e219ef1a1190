//! Evaluation: validation loss of a model under an inference mode, with the active parameters
//! counted from the routing that actually happened.

use engine::{ops, DType, Tensor};

use crate::transformer::{InferenceMode, LayerStats, Model, ParamCounts};
use crate::{Ctx, Result};

#[derive(Debug, Clone)]
pub struct EvalReport {
    pub mode: InferenceMode,
    /// Mean cross-entropy, nats per token.
    pub loss: f64,
    /// Bits per byte, when the data says how many bytes a token stands for.
    pub bits_per_byte: Option<f64>,
    pub tokens: usize,
    /// Per-layer routing, averaged over the evaluated tokens.
    pub layers: Vec<LayerStats>,
    pub counts: ParamCounts,
}

/// Evaluates `windows` (input, target) pairs of one length, `batch` at a time.
pub fn evaluate(model: &Model, windows: &[(Vec<u32>, Vec<u32>)], batch: usize, mode: InferenceMode, dtype: DType, bytes_per_token: Option<f64>) -> Result<EvalReport> {
    let device = model.device();
    let ctx = Ctx::eval(dtype);
    let (mut nll, mut tokens) = (0.0, 0usize);
    let mut sums: Vec<LayerStats> = Vec::new();
    for chunk in windows.chunks(batch.max(1)) {
        let seq = chunk[0].0.len();
        let inputs: Vec<u32> = chunk.iter().flat_map(|w| w.0.iter().copied()).collect();
        let targets: Vec<u32> = chunk.iter().flat_map(|w| w.1.iter().copied()).collect();
        let n = inputs.len();
        let input = Tensor::from_slice(&inputs, [n], &device)?;
        let target = Tensor::from_slice(&targets, [n], &device)?;
        let out = model.forward(&ctx, &input, chunk.len(), seq, mode)?;
        let losses = out.logits.cross_entropy(&target)?;
        nll += ops::sum_all(&ops::cast(losses.value(), DType::F32)?)?.to_scalar()?;
        tokens += n;
        if sums.is_empty() {
            sums = vec![LayerStats::default(); out.layers.len()];
        }
        for (s, l) in sums.iter_mut().zip(&out.layers) {
            s.att_experts_per_token += l.att_experts_per_token * n as f64;
            s.mlp_experts_per_token += l.mlp_experts_per_token * n as f64;
            s.dropped_tokens += l.dropped_tokens;
        }
    }
    for s in &mut sums {
        s.att_experts_per_token /= tokens.max(1) as f64;
        s.mlp_experts_per_token /= tokens.max(1) as f64;
    }
    let loss = nll / tokens.max(1) as f64;
    Ok(EvalReport {
        mode,
        loss,
        bits_per_byte: bytes_per_token.map(|b| loss / (std::f64::consts::LN_2 * b)),
        tokens,
        counts: model.param_counts(Some(&sums)),
        layers: sums,
    })
}
