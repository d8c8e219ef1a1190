//! The top-k baseline's gating rules, as fairseq's Top2Gate (`fairseq/modules/moe/top2gate.py`,
//! the `moe` branch at 26d62ae8, which Artetxe et al.'s MoE LMs were trained with) computes them,
//! for the SMoE baselines' training and evaluation:
//!
//! - Choices: the top-1 expert, then the argmax of the rest (`--moe-second-expert-policy all`, the
//!   MoE LM recipe's; the code's default "sampling" adds Gumbel noise to pick the second, l. 96-104).
//!   `ops::moe_route` in top-K mode, ties to the lower expert as torch's argmax.
//! - Capacity (`capacity`): `2 * math.ceil(num_tokens / num_experts)` slots per expert in training
//!   (l. 91), and in evaluation too under the recipe's `--moe-eval-capacity-token-fraction -1.0`
//!   (l. 82: a fraction only applies when positive). Slots go to every token's first choice in
//!   token order, then to the second choices (`locations2 += torch.sum(mask1, ...)`, l. 177);
//!   pairs past the capacity are dropped (l. 195-196). `ops::moe_permute` keeps that order.
//! - Gate values (`gate_weights`): renormalised over the pairs kept after dropping
//!   (`normalize_gate_prob_before_dropping=False`, the default, l. 63, which the recipe keeps:
//!   l. 232-240), so a token whose second choice was dropped gives its first choice the whole
//!   weight. Renormalising before dropping (l. 110-116) would leave it p1/(p1+p2).
//! - The load-balancing loss, `E² · mean_e(mean_gate_e · fraction_top1_e)` over the choices before
//!   dropping (l. 180-183), is `losses::load_balance`; its combination over the MoE layers
//!   (`--moe-gate-loss-combine-method`) is the config's `load_balance_combine`.

use autograd::Var;
use engine::ops::{self, Permutation, Routes};
use engine::ScalarOp;

use crate::Result;

/// Slots per expert for `tokens` tokens routed to `k` of `n` experts at capacity factor `cf`:
/// `k·ceil(cf·T/N)`, which at cf = 1 and k = 2 is Top2Gate's `2·ceil(S/E)`.
pub fn capacity(cf: f64, tokens: usize, k: usize, n: usize) -> usize {
    (k * (cf * tokens as f64 / n as f64).ceil() as usize).max(1)
}

/// The gate values `[T, k]`: each slot's router probability over the sum of the probabilities of
/// the token's slots that `perm` kept, `gates_s / clamp(Σ kept gates_s, min = finfo.eps)` with
/// the eps of Top2Gate's fp32 gating (`--moe-gating-use-fp32`); dropped slots weigh 0, and a
/// token with every slot dropped gets zeros (its residual only). Differentiable in `probs`.
pub fn gate_weights(probs: &Var, routes: &Routes, perm: &Permutation) -> Result<Var> {
    let kept = probs.gather_last(&routes.experts)?.mul(&Var::constant(ops::moe_kept(perm, probs.dtype())?))?;
    Ok(kept.div(&kept.sum(-1, true)?.scalar(ScalarOp::Max, f32::EPSILON as f64)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::ops::RouteMode;
    use engine::{DType, Device, Tensor};

    #[test]
    fn capacity_is_top2gates() {
        // 2·ceil(S/E): 2·ceil(10/4) = 6, where ceil(2·10/4) would be 5.
        assert_eq!(capacity(1.0, 10, 2, 4), 6);
        assert_eq!(capacity(1.0, 2048, 2, 8), 512);
        assert_eq!(capacity(1.0, 0, 2, 8), 1);
    }

    /// Four tokens, two experts, capacity 2 (first choices first): tokens 0-2 pick expert 0 first
    /// (token 2's is dropped, the third first choice), token 3 expert 1; the second choices are
    /// expert 1 for tokens 0-2 (token 0's kept, beside token 3's first choice; 1 and 2 dropped)
    /// and expert 0 for token 3 (dropped: expert 0 is full).
    #[test]
    fn gates_renormalise_over_the_kept_pairs() {
        let p = [0.7, 0.3, 0.6, 0.4, 0.8, 0.2, 0.1, 0.9];
        let probs = Var::constant(Tensor::from_f64s(&p, [4, 2], DType::F32, &Device::Cpu).unwrap());
        let routes = ops::moe_route(probs.value(), RouteMode::TopK(2), false).unwrap();
        let perm = ops::moe_permute(&routes, 2, Some(2)).unwrap();
        let got = gate_weights(&probs, &routes, &perm).unwrap().value().to_vec::<f32>().unwrap();
        // token 0 keeps both (0.7, 0.3); token 1 keeps its first only (1, 0); token 2 neither;
        // token 3 its first only.
        let want = [0.7, 0.3, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6), "{got:?} vs {want:?}");
    }
}
