//! Auxiliary router losses.

use autograd::Var;
use engine::ops;

use crate::router::RouterOut;
use crate::Result;

/// The mutual-information loss of ModuleFormer / DS-MoE (Pan et al. eq. 4-6):
/// `L_MI = −H(e) + mean_x H(e|x)`. Maximising the entropy of the batch-mean router distribution
/// balances load; minimising each token's router entropy concentrates it on few experts, which
/// is what lets a densely trained model run sparsely.
pub fn mutual_information(r: &RouterOut) -> Result<Var> {
    let mean = r.probs.mean(0, false)?;
    let neg_marginal_entropy = mean.mul(&mean.log()?)?.sum_all()?;
    let token_entropy = r.probs.mul(&r.logits.log_softmax()?)?.sum(-1, false)?.mean_all()?.neg()?;
    Ok(neg_marginal_entropy.add(&token_entropy)?)
}

/// The Switch / GShard load-balancing loss as fairseq computes it:
/// `E · Σ_e mean_prob_e · fraction_top1_e`. The fractions are counts (no gradient); the gradient
/// reaches the router through the mean probabilities.
pub fn load_balance(r: &RouterOut) -> Result<Var> {
    let probs = r.probs.value();
    let (tokens, n) = (probs.shape().rows(), probs.shape().last());
    let top1 = ops::argmax(probs, -1, false)?.to_vec::<u32>()?;
    let mut counts = vec![0.0; n];
    for e in top1 {
        counts[e as usize] += 1.0 / tokens as f64;
    }
    let fraction = engine::Tensor::from_f64s(&counts, [n], probs.dtype(), &probs.device())?;
    Ok(r.probs.mean(0, false)?.mul(&Var::constant(fraction))?.sum_all()?.mul_scalar(n as f64)?)
}
