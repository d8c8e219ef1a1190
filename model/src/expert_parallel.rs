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
//! Combined with data parallelism, ranks form a 2-D grid (`parallel::Grid`): expert groups of
//! consecutive ranks, data groups of the ranks holding the same experts (`Communicator::split`).
//! The ranks of one expert group run the same slice of the batch; the gradients of the split
//! matrices are this rank's experts' alone and are summed over the data group like every other.
//!
//! In a model (`Model::split_experts`) each MoE MLP keeps only its rows of the stacked expert
//! matrices, so parameters, gradients and AdamW's moments of the experts shrink by the group
//! size. What needs the whole of them gathers rows in rank order (`all_gather` along dim 0 is
//! exactly the stacked matrix, rank r holding experts `[r·E/n, (r+1)·E/n)`): the checkpoint
//! (one file set, as one process writes it) and the gradient norm (the split matrices' squares
//! are summed over the group). A model is split after its weights are built or loaded whole,
//! so a split run draws the same initial weights as one process and resumes from any checkpoint.

use std::sync::Arc;

use autograd::Var;
use engine::comm::Communicator;
use engine::{ops, Tensor};

use crate::config::ModelConfig;
use crate::parallel::group_sum;
use crate::{Error, Result};

/// Which parameters of a model are split over which expert group.
#[derive(Clone)]
pub struct ExpertSplit {
    pub group: Arc<dyn Communicator>,
    /// Indices of the split matrices in the model's parameter order.
    pub params: Vec<usize>,
}

impl ExpertSplit {
    pub fn holds(&self, index: usize) -> bool {
        self.params.contains(&index)
    }

    /// The whole of parameter `index`'s tensor `t` (this rank's rows when split), gathered from
    /// the group; every rank of the group must call it at once.
    pub fn gather(&self, index: usize, t: &Tensor) -> Result<Tensor> {
        Ok(if self.holds(index) { self.group.all_gather(t)? } else { t.clone() })
    }
}

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

/// This rank's rows of a stacked expert matrix `[E·f, ...]` of `n_experts` experts.
pub fn local_rows(t: &Tensor, n_experts: usize, group: &dyn Communicator) -> Result<Tensor> {
    let (first, count) = local_experts(n_experts, group.rank(), group.size())?;
    let per_expert = t.dims()[0] / n_experts;
    Ok(ops::narrow(t, 0, first * per_expert, count * per_expert)?)
}

/// Fails unless `ranks` expert-parallel ranks can split `config`'s experts: it needs MoE layers
/// and experts divisible by the rank count.
pub fn check_splittable(config: &ModelConfig, ranks: usize) -> Result<()> {
    if ranks <= 1 {
        return Ok(());
    }
    let bad = |msg: String| Err(Error::Invalid { what: "expert parallelism", value: ranks.to_string(), msg });
    let moe_layers = (0..config.n_layers).filter(|&i| config.is_moe_layer(i)).count();
    if moe_layers == 0 {
        return bad(format!("config {} has no MoE layer, so there are no experts to split over {ranks} ranks (use data parallelism alone)", config.name));
    }
    let e = config.mlp.n_experts;
    if e % ranks != 0 {
        return bad(format!("config {} has {e} experts per MoE layer, which do not split evenly over {ranks} expert-parallel ranks ({e} is not a multiple of {ranks})", config.name));
    }
    Ok(())
}

/// The dense MoE MLP of all experts, computed by `group`'s ranks on their experts: `partial`
/// gives this rank's share from the replicated input `x` `[T, d]` and its experts' columns of the
/// router probabilities `probs` `[T, E]`, and the shares are summed over the group.
pub fn dense_moe(group: &Arc<dyn Communicator>, x: &Var, probs: &Var, partial: impl FnOnce(&Var, &Var) -> Result<Var>) -> Result<Var> {
    let n_experts = probs.dims()[1];
    let (first, count) = local_experts(n_experts, group.rank(), group.size())?;
    let x = replicated_input(group, x)?;
    let probs = replicated_input(group, probs)?;
    let mine = if count == n_experts { probs } else { probs.narrow(1, first, count)? };
    group_sum(group.as_ref(), &partial(&x, &mine)?)
}
