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
//! SwiGLU experts (a third matrix `w3`, the up projection, stacked the same way) take the gated
//! form of the sparse op (`moe_sparse_swiglu`: the same routing lists and kernels, the activation
//! in the epilogues). Their dense all-experts form has no fused op yet; it is composed of full-width
//! products over the stacked matrices (`dense_swiglu`: every expert in one GEMM of width E·f, as
//! the GeLU op does, with the gating and SiLU as element-wise ops between them), under autograd
//! and in the inference path alike. Shared experts are a plain MLP beside the routed ones, added
//! ungated.

use std::sync::Arc;

use autograd::Var;
use engine::comm::Communicator;
use engine::ops::{self, Permutation, RouteMode};
use engine::{Device, Rng, Tensor};

use crate::config::{Activation, RouterKind};
use crate::expert_dispatch::sparse_moe;
use crate::expert_parallel::{dense_moe, local_rows};
use crate::params::{Init, ParamId, Params};
use crate::router::{Router, RouterOut, Selection};
use crate::top2gate;
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
    /// Top-k with an optional capacity factor, the gate values renormalised over the slots kept
    /// after capacity dropping (the SMoE baseline, in training and evaluation: fairseq's Top2Gate).
    TopKRenormalised { k: usize, capacity_factor: Option<f64> },
}

/// What an MLP forward returns besides its output.
pub struct MlpOut {
    pub y: Var,
    pub router: Option<RouterOut>,
    pub used: ExpertUse,
}

/// How many experts did work in one MLP forward.
pub enum ExpertUse {
    /// A fixed number per token (every expert, or a plain MLP's one).
    PerToken(f64),
    /// Counted by the sparse routing on the device: token-expert pairs computed and pairs dropped
    /// by the capacity limit (u32 `[1]` each) over `tokens`, read only when the caller asks, so
    /// a forward queues its layers without waiting on them.
    Counted { pairs: Tensor, dropped: Tensor, tokens: usize },
    /// Counted on the host by the expert-parallel exchange, over the whole expert group.
    Exchanged { pairs: usize, dropped: usize, tokens: usize },
}

impl ExpertUse {
    /// (mean experts per token, pairs dropped by the capacity limit).
    pub fn read(&self) -> Result<(f64, usize)> {
        match self {
            ExpertUse::PerToken(k) => Ok((*k, 0)),
            ExpertUse::Counted { pairs, dropped, tokens } => {
                let pairs = pairs.to_vec::<u32>()?[0] as f64;
                Ok((pairs / (*tokens).max(1) as f64, dropped.to_vec::<u32>()?[0] as usize))
            }
            ExpertUse::Exchanged { pairs, dropped, tokens } => Ok((*pairs as f64 / (*tokens).max(1) as f64, *dropped)),
        }
    }
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
            return Ok(MlpOut { y, router: None, used: ExpertUse::PerToken(1.0) });
        };
        let r = router.forward(ctx, params, x)?;
        let tokens = x.dims()[0];
        let (y, used) = match routing {
            // One fused op: the gating and GeLU ride in the products' epilogues on CUDA.
            Routing::Dense => {
                // The experts this rank holds (all of them unless split) on the probabilities' columns of those experts.
                let experts = |x: &Var, p: &Var| match &w3 {
                    None => Ok(x.moe_dense_mlp(&w1, &w2, p)?),
                    Some(w3) => dense_swiglu(x, (&w1, w3, &w2), p),
                };
                let y = match &self.expert_group {
                    None => experts(x, &r.probs)?,
                    Some(group) => dense_moe(group, x, &r.probs, experts)?,
                };
                (y, ExpertUse::PerToken(self.n_experts as f64))
            }
            Routing::Sparse(sel) => match sel.route_mode(self.n_experts)? {
                None => return self.routed(ctx, params, x, Routing::Dense),
                Some(mode) => {
                    let routes = ops::moe_route(r.probs.value(), mode, false)?;
                    let weights = r.probs.gather_last(&routes.experts)?.mul(&Var::constant(routes.mask.clone()))?;
                    let perm = ops::moe_permute(&routes, self.n_experts, None)?;
                    self.sparse(x, (&w1, w3.as_ref(), &w2), &weights, &perm)?
                }
            },
            Routing::TopKRenormalised { k, capacity_factor } => {
                let routes = ops::moe_route(r.probs.value(), RouteMode::TopK(k), false)?;
                let capacity = capacity_factor.map(|cf| top2gate::capacity(cf, tokens, k, self.n_experts));
                let perm = ops::moe_permute(&routes, self.n_experts, capacity)?;
                let weights = top2gate::gate_weights(&r.probs, &routes, &perm)?;
                self.sparse(x, (&w1, w3.as_ref(), &w2), &weights, &perm)?
            }
        };
        Ok(MlpOut { y, router: Some(r), used })
    }

    /// Runs each expert on the tokens `perm` keeps of its routes (within the capacity, first
    /// choices before second choices, each in token order), gated by `weights` `[T, k_max]`, and
    /// sums each token's results, all in the engine's sparse MoE ops (device-side routing lists;
    /// no per-expert host loop and no read back). Returns the output and the counts of the
    /// routing, still on the device. With the experts split over ranks, the pairs go to the ranks
    /// of their experts and back (`expert_dispatch.rs`, which reads its lists to size the
    /// exchange, so its counts are known).
    fn sparse(&self, x: &Var, (w1, w3, w2): (&Var, Option<&Var>, &Var), weights: &Var, perm: &Permutation) -> Result<(Var, ExpertUse)> {
        let experts = |x: &Var, weights: &Var, perm: &Permutation| match w3 {
            None => Ok(x.moe_sparse_mlp(w1, w2, weights, perm)?),
            Some(w3) => Ok(x.moe_sparse_swiglu(w1, w3, w2, weights, perm)?),
        };
        let tokens = x.dims()[0];
        if let Some(group) = &self.expert_group {
            let out = sparse_moe(group, x, weights, perm, experts)?;
            return Ok((out.y, ExpertUse::Exchanged { pairs: out.computed, dropped: out.dropped, tokens }));
        }
        let y = experts(x, weights, perm)?;
        let pairs = ops::narrow(&perm.offsets, 0, self.n_experts, 1)?;
        Ok((y, ExpertUse::Counted { pairs, dropped: perm.dropped.clone(), tokens }))
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

/// `Σ_e p[:, e]·(silu(x·W1_eᵀ) ⊙ x·W3_eᵀ)·W2_e` over every expert of `p` `[T, E]`, from the
/// stacked `[E·f, d]` matrices: two products of width E·f, the gating on the `[T, E, f]` view, and
/// one product reducing over E·f (no per-expert output or weight copy exists).
pub(crate) fn dense_swiglu(x: &Var, (w1, w3, w2): (&Var, &Var, &Var), p: &Var) -> Result<Var> {
    let (tokens, experts) = (p.dims()[0], p.dims()[1]);
    let h = x.matmul_t(w1, false, true)?.silu()?.mul(&x.matmul_t(w3, false, true)?)?;
    let width = h.dims()[1];
    let gated = h.reshape([tokens, experts, width / experts])?.mul(&p.reshape([tokens, experts, 1])?)?;
    Ok(gated.reshape([tokens, width])?.matmul(w2)?)
}
