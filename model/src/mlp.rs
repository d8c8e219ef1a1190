//! The MLP block in its three forms.
//!
//! Expert weights are stacked: `w1` is `[E·f, d]` and `w2` is `[E·f, d]`, expert e owning rows
//! `e·f .. (e+1)·f` of both, so that
//! - dense training (DS-MoE) is one GEMM of width E·f, a router-gated GeLU, and one GEMM reducing
//!   over E·f: `y = Σ_e p_e · gelu(x·W1_eᵀ)·W2_e` without a per-expert output ever existing;
//! - sparse compute (inference, and top-k training of the SMoE baseline) takes each expert's rows
//!   as a contiguous slice, gathers its tokens, and scatter-adds the gated results back.
//!
//! A plain MLP is the one-expert case without a router.
//!
//! SwiGLU experts (a third matrix `w3`, the up projection, stacked the same way) have no fused
//! op: they run as the composition of the engine's GEMM and element-wise ops (silu among them),
//! one expert at a time (`dense_by_expert`, `sparse_by_expert`), on every backend and under
//! autograd. That costs what fusion saves: training copies each used expert's rows out of the
//! stacked weights every step, and the sparse form reads the expert-sorted lists to the host to
//! size each expert's product (a sync per layer, which the GeLU path makes too in training for its
//! statistics, but not at inference). Shared experts are a plain MLP beside the routed ones, added
//! ungated.

use std::sync::Arc;

use autograd::Var;
use engine::comm::Communicator;
use engine::ops::{self, Permutation, RouteMode, Routes};
use engine::{Device, Rng, Tensor};

use crate::config::{Activation, RouterKind};
use crate::expert_dispatch::sparse_moe;
use crate::expert_parallel::{dense_moe, local_rows};
use crate::params::{Init, ParamId, Params};
use crate::router::{Router, RouterOut, Selection};
use crate::{Ctx, Result};

pub struct Mlp {
    w1: ParamId,
    w2: ParamId,
    /// The up projection of a SwiGLU MLP.
    w3: Option<ParamId>,
    pub n_experts: usize,
    pub width: usize,
    pub router: Option<Router>,
    /// Always-on shared experts: a plain MLP whose output is added to the routed one.
    shared: Option<Box<Mlp>>,
    /// The expert-parallel group holding the other experts, when this MLP keeps only its rank's
    /// rows of the stacked matrices (`split_experts`).
    expert_group: Option<Arc<dyn Communicator>>,
}

/// The sizes of one MLP block.
#[derive(Debug, Clone, Copy)]
pub struct MlpShape {
    pub d: usize,
    pub n_experts: usize,
    pub width: usize,
    pub activation: Activation,
    /// Width of the shared experts together (0: none).
    pub shared_width: usize,
}

/// One expert's matrices `[f, d]`: w1 (input, or SwiGLU's gate), w3 (SwiGLU's up) and w2 (output).
pub(crate) type ExpertMatrices = (Var, Option<Var>, Var);

/// How the experts of one MoE MLP are chosen for a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Routing {
    /// Every expert on every token, weighted by router probabilities (DS-MoE training).
    Dense,
    /// A subset per token, weighted by router probabilities (DS-MoE inference).
    Sparse(Selection),
    /// Top-k with the gate values renormalised over the k, and an optional capacity factor
    /// (the SMoE baseline, in training and inference).
    TopKRenormalised { k: usize, capacity_factor: Option<f64> },
}

/// What an MLP forward returns besides its output.
pub struct MlpOut {
    pub y: Var,
    pub router: Option<RouterOut>,
    /// Mean experts per token that did work (counted from the routing), and tokens dropped by
    /// the capacity limit.
    pub experts_per_token: f64,
    pub dropped_tokens: usize,
}

impl Mlp {
    pub fn new(params: &mut Params, prefix: &str, shape: MlpShape, router: Option<RouterKind>, n_layers: usize, device: &Device, rng: &mut Rng) -> Result<Mlp> {
        let MlpShape { d, n_experts, width, activation, shared_width } = shape;
        let w1 = params.add(format!("{prefix}.w1"), &[n_experts * width, d], Init::Normal(0.02), device, rng)?;
        // GPT-2's scaling of residual-branch outputs by 1/√(2L) keeps the residual stream's scale flat in depth.
        let w2 = params.add(format!("{prefix}.w2"), &[n_experts * width, d], Init::Normal(0.02 / (2.0 * n_layers as f64).sqrt()), device, rng)?;
        let w3 = (activation == Activation::Swiglu).then(|| params.add(format!("{prefix}.w3"), &[n_experts * width, d], Init::Normal(0.02), device, rng)).transpose()?;
        let router = router.map(|kind| Router::new(params, prefix, kind, d, n_experts, device, rng)).transpose()?;
        let shared = if shared_width > 0 {
            let plain = MlpShape { n_experts: 1, width: shared_width, shared_width: 0, ..shape };
            Some(Box::new(Mlp::new(params, &format!("{prefix}.shared"), plain, None, n_layers, device, rng)?))
        } else {
            None
        };
        Ok(Mlp { w1, w2, w3, n_experts, width, router, shared, expert_group: None })
    }

    /// Keeps only `group`'s rank's experts of the routed matrices (`expert_parallel.rs`); returns
    /// the parameters it cut. An MLP without a router has nothing to split.
    pub(crate) fn split_experts(&mut self, params: &mut Params, group: &Arc<dyn Communicator>) -> Result<Vec<ParamId>> {
        if self.router.is_none() || group.size() == 1 {
            return Ok(Vec::new());
        }
        let ids: Vec<ParamId> = [Some(self.w1), Some(self.w2), self.w3].into_iter().flatten().collect();
        for &id in &ids {
            let p = params.get_mut(id);
            p.value = local_rows(&p.value, self.n_experts, group.as_ref())?;
        }
        self.expert_group = Some(group.clone());
        Ok(ids)
    }

    pub fn forward(&self, ctx: &Ctx, params: &Params, x: &Var, routing: Routing) -> Result<MlpOut> {
        let mut out = self.routed(ctx, params, x, routing)?;
        if let Some(shared) = &self.shared {
            out.y = out.y.add(&shared.routed(ctx, params, x, Routing::Dense)?.y)?;
        }
        Ok(out)
    }

    /// The experts without the shared ones.
    fn routed(&self, ctx: &Ctx, params: &Params, x: &Var, routing: Routing) -> Result<MlpOut> {
        let (w1, w2) = (ctx.p(params.get(self.w1))?, ctx.p(params.get(self.w2))?);
        let w3 = self.w3.map(|id| ctx.p(params.get(id))).transpose()?;
        let Some(router) = &self.router else {
            let y = body(x, &(w1, w3, w2))?;
            return Ok(MlpOut { y, router: None, experts_per_token: 1.0, dropped_tokens: 0 });
        };
        let r = router.forward(ctx, params, x)?;
        let tokens = x.dims()[0];
        let (y, experts_per_token, dropped_tokens) = match routing {
            // One fused op: the gating and GeLU ride in the products' epilogues on CUDA.
            Routing::Dense => {
                // The experts this rank holds (all of them unless split) on the probabilities' columns of those experts.
                let experts = |x: &Var, p: &Var| match &w3 {
                    None => Ok(x.moe_dense_mlp(&w1, &w2, p)?),
                    Some(w3) => dense_by_expert(x, p, |e| self.expert(e, &w1, w3, &w2)),
                };
                let y = match &self.expert_group {
                    None => experts(x, &r.probs)?,
                    Some(group) => dense_moe(group, x, &r.probs, experts)?,
                };
                (y, self.n_experts as f64, 0)
            }
            Routing::Sparse(sel) => match sel.route_mode(self.n_experts)? {
                None => return self.routed(ctx, params, x, Routing::Dense),
                Some(mode) => {
                    let routes = ops::moe_route(r.probs.value(), mode, false)?;
                    let weights = r.probs.gather_last(&routes.experts)?.mul(&Var::constant(routes.mask.clone()))?;
                    let (y, used, dropped) = self.sparse(x, (&w1, w3.as_ref(), &w2), &weights, &routes, None)?;
                    (y, used as f64 / tokens as f64, dropped)
                }
            },
            Routing::TopKRenormalised { k, capacity_factor } => {
                let routes = ops::moe_route(r.probs.value(), RouteMode::TopK(k), false)?;
                let kept = r.probs.gather_last(&routes.experts)?;
                let weights = kept.div(&kept.sum(-1, true)?)?;
                let capacity = capacity_factor.map(|cf| ((cf * (tokens * k) as f64 / self.n_experts as f64).ceil() as usize).max(1));
                let (y, used, dropped) = self.sparse(x, (&w1, w3.as_ref(), &w2), &weights, &routes, capacity)?;
                (y, used as f64 / tokens as f64, dropped)
            }
        };
        Ok(MlpOut { y, router: Some(r), experts_per_token, dropped_tokens })
    }

    /// Runs each expert on the tokens `routes` gives it (at most `capacity` per expert, earlier
    /// tokens first), gated by `weights` `[T, k_max]`, and sums each token's results, all in the
    /// engine's sparse MoE ops (device-side routing lists; no per-expert host loop). Returns
    /// (output, token-expert pairs computed, pairs dropped by the capacity limit); the two counts
    /// are read back for the report. With the experts split over ranks, the pairs go to the
    /// ranks of their experts and back (`expert_dispatch.rs`).
    fn sparse(&self, x: &Var, (w1, w3, w2): (&Var, Option<&Var>, &Var), weights: &Var, routes: &Routes, capacity: Option<usize>) -> Result<(Var, usize, usize)> {
        let experts = |x: &Var, weights: &Var, perm: &Permutation| match w3 {
            None => Ok(x.moe_sparse_mlp(w1, w2, weights, perm)?),
            Some(w3) => sparse_by_expert(x, weights, perm, |e| self.expert(e, w1, w3, w2)),
        };
        if let Some(group) = &self.expert_group {
            let out = sparse_moe(group, x, weights, routes, self.n_experts, capacity, experts)?;
            return Ok((out.y, out.computed, out.dropped));
        }
        let perm = ops::moe_permute(routes, self.n_experts, capacity)?;
        let y = experts(x, weights, &perm)?;
        let used = perm.offsets.to_vec::<u32>()?[self.n_experts] as usize;
        let dropped = perm.dropped.to_vec::<u32>()?[0] as usize;
        Ok((y, used, dropped))
    }

    /// Expert `e`'s rows of the stacked SwiGLU matrices.
    fn expert(&self, e: usize, w1: &Var, w3: &Var, w2: &Var) -> Result<ExpertMatrices> {
        let rows = |w: &Var| w.narrow(0, e * self.width, self.width);
        Ok((rows(w1)?, Some(rows(w3)?), rows(w2)?))
    }

    /// Parameters of one routed expert (all its matrices).
    pub fn expert_param_count(&self, d: usize) -> usize {
        let matrices = if self.w3.is_some() { 3 } else { 2 };
        matrices * self.width * d
    }
}

/// One MLP on its own matrices: `gelu(x·W1ᵀ)·W2`, or `(silu(x·W1ᵀ) ⊙ x·W3ᵀ)·W2` with a W3.
pub(crate) fn body(x: &Var, (w1, w3, w2): &ExpertMatrices) -> Result<Var> {
    let u = x.matmul_t(w1, false, true)?;
    let h = match w3 {
        None => u.gelu()?,
        Some(w3) => u.silu()?.mul(&x.matmul_t(w3, false, true)?)?,
    };
    Ok(h.matmul(w2)?)
}

/// `Σ_e p[:, e]·body_e(x)` over every expert of `p` `[T, E]`, summed in expert order.
pub(crate) fn dense_by_expert(x: &Var, p: &Var, expert: impl Fn(usize) -> Result<ExpertMatrices>) -> Result<Var> {
    let mut y: Option<Var> = None;
    for e in 0..p.dims()[1] {
        let term = body(x, &expert(e)?)?.mul(&p.narrow(1, e, 1)?)?;
        y = Some(match y {
            Some(y) => y.add(&term)?,
            None => term,
        });
    }
    Ok(y.expect("a router has at least one expert"))
}

/// Each token's kept slots of `perm`, weighted by `weights` `[T, k_max]` and summed: every expert
/// runs once on the rows of its tokens (gathered), and the weighted results are scatter-added back.
pub(crate) fn sparse_by_expert(x: &Var, weights: &Var, perm: &Permutation, expert: impl Fn(usize) -> Result<ExpertMatrices>) -> Result<Var> {
    let (tokens, device) = (x.dims()[0], x.device());
    let offsets = perm.offsets.to_vec::<u32>()?;
    let sorted = perm.sorted_slots.to_vec::<u32>()?;
    let slot_weights = weights.reshape([tokens * perm.k_max, 1])?;
    let (mut parts, mut rows) = (Vec::new(), Vec::new());
    for e in 0..perm.n_experts {
        let slots = &sorted[offsets[e] as usize..offsets[e + 1] as usize];
        if slots.is_empty() {
            continue;
        }
        let toks: Vec<u32> = slots.iter().map(|s| s / perm.k_max as u32).collect();
        let xe = x.index_select(&Tensor::from_slice(&toks, [toks.len()], &device)?)?;
        let we = slot_weights.index_select(&Tensor::from_slice(slots, [slots.len()], &device)?)?;
        parts.push(body(&xe, &expert(e)?)?.mul(&we)?);
        rows.extend(toks);
    }
    if parts.is_empty() {
        return Ok(Var::constant(Tensor::zeros(x.dims().to_vec(), x.dtype(), &device)?));
    }
    let y = Var::concat(&parts.iter().collect::<Vec<_>>(), 0)?;
    Ok(y.scatter_add_rows(&Tensor::from_slice(&rows, [rows.len()], &device)?, tokens)?)
}
