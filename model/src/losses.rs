//! Auxiliary router losses.

use autograd::Var;
use engine::ops;

use crate::parallel::{batch_mean, global_mean_all, sum_constant};
use crate::router::RouterOut;
use crate::{Ctx, Result};

/// The mutual-information loss of ModuleFormer / DS-MoE (Pan et al. eq. 4-6):
/// `L_MI = −H(e) + mean_x H(e|x)`. Maximising the entropy of the batch-mean router distribution
/// balances load; minimising each token's router entropy concentrates it on few experts, which
/// is what lets a densely trained model run sparsely.
///
/// Both means are over the global batch: under data parallelism the batch-mean distribution is
/// all-reduced before its entropy is taken (`parallel::batch_mean`).
pub fn mutual_information(ctx: &Ctx, r: &RouterOut) -> Result<Var> {
    let mean = batch_mean(ctx, &r.probs)?;
    let neg_marginal_entropy = mean.mul(&mean.log()?)?.sum_all()?;
    let token_entropy = global_mean_all(ctx, &r.probs.mul(&r.logits.log_softmax()?)?.sum(-1, false)?)?.neg()?;
    Ok(neg_marginal_entropy.add(&token_entropy)?)
}

/// The Switch / GShard load-balancing loss as fairseq computes it:
/// `E · Σ_e mean_prob_e · fraction_top1_e`. The fractions are counts (no gradient); the gradient
/// reaches the router through the mean probabilities.
/// Under data parallelism both the fractions and the mean probabilities are the global batch's.
pub fn load_balance(ctx: &Ctx, r: &RouterOut) -> Result<Var> {
    let probs = r.probs.value();
    let (tokens, n) = (probs.shape().rows(), probs.shape().last());
    let top1 = ops::argmax(probs, -1, false)?.to_vec::<u32>()?;
    let mut counts = vec![0u32; n];
    for e in top1 {
        counts[e as usize] += 1;
    }
    let counts = sum_constant(ctx, engine::Tensor::from_slice(&counts, [n], &probs.device())?)?.to_vec::<u32>()?;
    let global = (tokens * ctx.data_group.size()) as f64;
    let fraction: Vec<f64> = counts.iter().map(|&c| c as f64 / global).collect();
    let fraction = engine::Tensor::from_f64s(&fraction, [n], probs.dtype(), &probs.device())?;
    Ok(batch_mean(ctx, &r.probs)?.mul(&Var::constant(fraction))?.sum_all()?.mul_scalar(n as f64)?)
}
