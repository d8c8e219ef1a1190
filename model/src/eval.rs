//! Evaluation: validation loss of a model under an inference mode, with the active parameters
//! counted from the routing that actually happened. Threshold-K is resolved here, over the whole
//! evaluated set, into a top-K per layer (`resolve_threshold_k`).

use engine::{ops, DType, Device, Tensor};

use crate::router::Selection;
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

/// How threshold-K turns the threshold rule's mean expert count in a layer into that layer's K.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KRounding {
    /// The smallest integer at least the mean (the default, 1.17 -> 2): top-K then never runs
    /// fewer experts per token than the threshold rule did on average, and the loss stays near
    /// the threshold rule's instead of paying for a dropped expert on most tokens.
    Up,
    /// The nearest integer, halves up (1.17 -> 1): fewer active parameters, more loss.
    Nearest,
}

impl KRounding {
    fn apply(self, mean: f64) -> usize {
        // Counts are means over tokens of integers, so a whole number can carry rounding dust.
        let mean = (mean * 1e9).round() / 1e9;
        match self {
            KRounding::Up => mean.ceil() as usize,
            KRounding::Nearest => mean.round() as usize,
        }
    }
}

/// Threshold-K's mode for every layer: for each router whose rule in `mode` is `threshold-k:EPS`,
/// a first pass runs the threshold rule with that ε over all of `windows`, and the layer's K is the
/// mean number of experts a token used there, rounded by `rounding` (at least 1). So K depends on
/// the evaluated set alone, never on how its windows are batched. Other rules pass through.
pub fn resolve_threshold_k(model: &Model, windows: &[(Vec<u32>, Vec<u32>)], batch: usize, mode: InferenceMode, dtype: DType, rounding: KRounding) -> Result<Vec<InferenceMode>> {
    let layers = model.config.n_layers;
    let as_threshold = |s: Selection| match s {
        Selection::ThresholdK(eps) => Selection::Threshold(eps),
        other => other,
    };
    if as_threshold(mode.mlp) == mode.mlp && as_threshold(mode.attention) == mode.attention {
        return Ok(vec![mode; layers]);
    }
    let first = InferenceMode { mlp: as_threshold(mode.mlp), attention: as_threshold(mode.attention) };
    let stats = evaluate_layers(model, windows, batch, first, &vec![first; layers], dtype, None)?.layers;
    let k = |s: Selection, mean: f64| match s {
        Selection::ThresholdK(_) => Selection::TopK(rounding.apply(mean).max(1)),
        other => other,
    };
    Ok(stats.iter().map(|l| InferenceMode { mlp: k(mode.mlp, l.mlp_experts_per_token), attention: k(mode.attention, l.att_experts_per_token) }).collect())
}

/// Evaluates `windows` (input, target) pairs of one length, `batch` at a time; threshold-K rounds
/// its per-layer K up (`KRounding::Up`).
pub fn evaluate(model: &Model, windows: &[(Vec<u32>, Vec<u32>)], batch: usize, mode: InferenceMode, dtype: DType, bytes_per_token: Option<f64>) -> Result<EvalReport> {
    let modes = resolve_threshold_k(model, windows, batch, mode, dtype, KRounding::Up)?;
    evaluate_layers(model, windows, batch, mode, &modes, dtype, bytes_per_token)
}

/// `evaluate` with a mode per layer (`modes`), reported as `mode`.
pub fn evaluate_layers(model: &Model, windows: &[(Vec<u32>, Vec<u32>)], batch: usize, mode: InferenceMode, modes: &[InferenceMode], dtype: DType, bytes_per_token: Option<f64>) -> Result<EvalReport> {
    let run = || evaluate_here(model, windows, batch, mode, modes, dtype, bytes_per_token);
    match model.device() {
        // On a pool worker, so that the forward's parallel ops do not each wake the calling
        // thread, with the other workers polling between ops (see `on_pool_kept_awake`).
        Device::Cpu => engine::cpu::on_pool_kept_awake(run),
        _ => run(),
    }
}

fn evaluate_here(model: &Model, windows: &[(Vec<u32>, Vec<u32>)], batch: usize, mode: InferenceMode, modes: &[InferenceMode], dtype: DType, bytes_per_token: Option<f64>) -> Result<EvalReport> {
    let device = model.device();
    let ctx = Ctx::eval(dtype).without_aux_losses();
    let (mut nll, mut tokens) = (0.0, 0usize);
    let mut sums: Vec<LayerStats> = Vec::new();
    for chunk in windows.chunks(batch.max(1)) {
        let seq = chunk[0].0.len();
        let inputs: Vec<u32> = chunk.iter().flat_map(|w| w.0.iter().copied()).collect();
        let targets: Vec<u32> = chunk.iter().flat_map(|w| w.1.iter().copied()).collect();
        let n = inputs.len();
        let input = Tensor::from_slice(&inputs, [n], &device)?;
        let target = Tensor::from_slice(&targets, [n], &device)?;
        let out = model.forward_layers(&ctx, &input, chunk.len(), seq, modes)?;
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
