//! Expert (tensor) parallelism of DS-MoE's dense MLP: the experts split across the ranks of an
//! expert group, every rank computing its experts' share for every token.
//!
//! Dense training computes `y = Σ_e p_e · gelu(x·W1_eᵀ)·W2_e` as one GEMM of width E·f and one
//! reducing over E·f (`mlp.rs`). Splitting E·f across ranks is Megatron's MLP split: rank r holds
//! the rows of its E/n experts in `w1` and `w2`, takes its experts' columns of the router
//! probabilities, computes its partial sum with the same fused op, and one all-reduce of the
//! output per layer finishes the forward. No token moves between ranks.
//!
//! The backward needs the mirror image: the input `x` and the router probabilities are replicated,
//! but each rank's backward only reaches them through its own experts, so their gradients are
//! all-reduced (`replicated_input`: identity forward, all-reduce backward), after which routers,
//! attention and norms see the full gradient on every rank and stay identical without any further
//! reduction. The output's all-reduce has an identity backward (`parallel::group_sum`). So per
//! layer: one all-reduce of `[tokens, d]` forward, and in backward one of `[tokens, d]` plus one of
//! `[tokens, E]` (the probabilities' gradient).
//!
//! Combined with data parallelism, ranks form a 2-D grid: expert groups of consecutive ranks, data
//! groups of the ranks holding the same experts (`Comm::split`).

use std::sync::Arc;

use autograd::Var;
use engine::comm::Communicator;

use crate::parallel::group_sum;
use crate::{Error, Result};

/// Identity forward; the backward sums the gradient over the group (every rank's partial gradient
/// of a replicated input).
pub fn replicated_input(group: &Arc<dyn Communicator>, x: &Var) -> Result<Var> {
    if group.size() == 1 {
        return Ok(x.clone());
    }
    let g = group.clone();
    Ok(Var::custom("replicated_input", x.value().clone(), &[x], 0, move |grad, _| Ok(vec![Some(g.all_reduce_sum(grad)?)]))?)
}

/// The experts `[first, first + count)` rank `rank` of `ranks` holds of `n_experts`.
pub fn local_experts(n_experts: usize, rank: usize, ranks: usize) -> Result<(usize, usize)> {
    if ranks == 0 || n_experts % ranks != 0 {
        return Err(Error::Invalid {
            what: "expert parallelism",
            value: ranks.to_string(),
            msg: format!("{n_experts} experts do not split evenly over {ranks} expert-parallel ranks"),
        });
    }
    let count = n_experts / ranks;
    Ok((rank * count, count))
}

/// The dense MoE MLP of all experts, computed by `group`'s ranks on their experts' rows of `w1`
/// and `w2` (`[local experts · f, d]`, this rank's share), from the replicated input `x` `[T, d]`
/// and router probabilities `probs` `[T, E]` of all experts.
pub fn dense_moe(group: &Arc<dyn Communicator>, x: &Var, w1_local: &Var, w2_local: &Var, probs: &Var) -> Result<Var> {
    let n_experts = probs.dims()[1];
    let (first, count) = local_experts(n_experts, group.rank(), group.size())?;
    let x = replicated_input(group, x)?;
    let probs = replicated_input(group, probs)?;
    let mine = if count == n_experts { probs } else { probs.narrow(1, first, count)? };
    let partial = x.moe_dense_mlp(w1_local, w2_local, &mine)?;
    group_sum(group.as_ref(), &partial)
}
