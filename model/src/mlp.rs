//! The MLP block in its three forms.
//!
//! Expert weights are stacked: `w1` is `[E·f, d]` and `w2` is `[E·f, d]`, expert e owning rows
//! `e·f .. (e+1)·f` of both, so that
//! - dense training (DS-MoE) is one GEMM of width E·f, a router-gated GeLU, and one GEMM reducing
//!   over E·f: `y = Σ_e p_e · gelu(x·W1_eᵀ)·W2_e` without a per-expert output ever existing;
//! - sparse compute (inference, and top-k training of the SMoE baseline) takes each expert's rows
//!   as a contiguous slice, gathers its tokens, and scatter-adds the gated results back.
//! A plain MLP is the one-expert case without a router.

use autograd::Var;
use engine::{Device, Rng, Tensor};

use crate::config::RouterKind;
use crate::params::{Init, ParamId, Params};
use crate::router::{Router, RouterOut, Selection};
use crate::{Ctx, Result};

pub struct Mlp {
    w1: ParamId,
    w2: ParamId,
    pub n_experts: usize,
    pub width: usize,
    pub router: Option<Router>,
}

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
    #[allow(clippy::too_many_arguments)]
    pub fn new(params: &mut Params, prefix: &str, d: usize, n_experts: usize, width: usize, router: Option<RouterKind>, n_layers: usize, device: &Device, rng: &mut Rng) -> Result<Mlp> {
        let w1 = params.add(format!("{prefix}.w1"), &[n_experts * width, d], Init::Normal(0.02), device, rng)?;
        // GPT-2's scaling of residual-branch outputs by 1/√(2L) keeps the residual stream's scale flat in depth.
        let w2 = params.add(format!("{prefix}.w2"), &[n_experts * width, d], Init::Normal(0.02 / (2.0 * n_layers as f64).sqrt()), device, rng)?;
        let router = router.map(|kind| Router::new(params, prefix, kind, d, n_experts, device, rng)).transpose()?;
        Ok(Mlp { w1, w2, n_experts, width, router })
    }

    pub fn forward(&self, ctx: &Ctx, params: &Params, x: &Var, routing: Routing) -> Result<MlpOut> {
        let (w1, w2) = (ctx.p(params.get(self.w1))?, ctx.p(params.get(self.w2))?);
        let Some(router) = &self.router else {
            let y = x.matmul_t(&w1, false, true)?.gelu()?.matmul(&w2)?;
            return Ok(MlpOut { y, router: None, experts_per_token: 1.0, dropped_tokens: 0 });
        };
        let r = router.forward(ctx, params, x)?;
        let tokens = x.dims()[0];
        let (y, experts_per_token, dropped_tokens) = match routing {
            Routing::Dense => {
                let (e, f) = (self.n_experts, self.width);
                let h = x.matmul_t(&w1, false, true)?.gelu()?.reshape([tokens, e, f])?;
                let gated = h.mul(&r.probs.reshape([tokens, e, 1])?)?.reshape([tokens, e * f])?;
                (gated.matmul(&w2)?, e as f64, 0)
            }
            Routing::Sparse(sel) => match sel.mask(r.probs.value())? {
                None => return self.forward(ctx, params, x, Routing::Dense),
                Some(mask) => {
                    let weights = r.probs.mul(&Var::constant(mask.clone()))?;
                    let (y, used, dropped) = self.sparse(x, &w1, &w2, &weights, &mask, None)?;
                    (y, used as f64 / tokens as f64, dropped)
                }
            },
            Routing::TopKRenormalised { k, capacity_factor } => {
                let mask = Selection::TopK(k).mask(r.probs.value())?.expect("top-k always selects");
                let kept = r.probs.mul(&Var::constant(mask.clone()))?;
                let weights = kept.div(&kept.sum(-1, true)?)?;
                let capacity = capacity_factor.map(|cf| ((cf * (tokens * k) as f64 / self.n_experts as f64).ceil() as usize).max(1));
                let (y, used, dropped) = self.sparse(x, &w1, &w2, &weights, &mask, capacity)?;
                (y, used as f64 / tokens as f64, dropped)
            }
        };
        Ok(MlpOut { y, router: Some(r), experts_per_token, dropped_tokens })
    }

    /// Runs each expert on the tokens `mask` gives it (at most `capacity`, in token order), gated
    /// by `weights`, and sums each token's results. Returns (output, token-expert pairs computed,
    /// pairs dropped by the capacity limit).
    fn sparse(&self, x: &Var, w1: &Var, w2: &Var, weights: &Var, mask: &Tensor, capacity: Option<usize>) -> Result<(Var, usize, usize)> {
        let (tokens, n, f) = (x.dims()[0], self.n_experts, self.width);
        let mask_host = mask.to_f64_vec()?;
        let mut per_expert: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut dropped = 0;
        for t in 0..tokens {
            for (e, list) in per_expert.iter_mut().enumerate() {
                if mask_host[t * n + e] > 0.5 {
                    if capacity.is_some_and(|c| list.len() >= c) {
                        dropped += 1;
                    } else {
                        list.push(t as u32);
                    }
                }
            }
        }
        let device = x.device();
        let mut outputs = Vec::new();
        let (mut all_tokens, mut all_slots) = (Vec::new(), Vec::new());
        for (e, list) in per_expert.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
            let idx = Tensor::from_slice(list, [list.len()], &device)?;
            let rows = [e * f, f];
            let h = x.index_select(&idx)?.matmul_t(&w1.narrow(0, rows[0], rows[1])?, false, true)?.gelu()?;
            outputs.push(h.matmul(&w2.narrow(0, rows[0], rows[1])?)?);
            all_tokens.extend_from_slice(list);
            all_slots.extend(list.iter().map(|&t| t * n as u32 + e as u32));
        }
        let used = all_tokens.len();
        if used == 0 {
            let zeros = Tensor::zeros([tokens, x.dims()[1]], x.dtype(), &device)?;
            return Ok((Var::constant(zeros), 0, dropped));
        }
        let refs: Vec<&Var> = outputs.iter().collect();
        let stacked = Var::concat(&refs, 0)?;
        let slots = Tensor::from_slice(&all_slots, [used], &device)?;
        let gates = weights.reshape([tokens * n, 1])?.index_select(&slots)?;
        let token_idx = Tensor::from_slice(&all_tokens, [used], &device)?;
        let y = stacked.mul(&gates)?.scatter_add_rows(&token_idx, tokens)?;
        Ok((y, used, dropped))
    }

    /// Parameters of one expert (both matrices).
    pub fn expert_param_count(&self, d: usize) -> usize {
        2 * self.width * d
    }
}

