//! Routers: a softmax over experts of a linear (or two-layer MLP) map of the token, and the ways
//! of turning router probabilities into a selection of experts at inference.

use autograd::Var;
use engine::ops::{self, RouteMode};
use engine::{Device, Rng, Tensor};

use crate::config::RouterKind;
use crate::params::{Init, ParamId, Params};
use crate::{Ctx, Error, Result};

pub struct Router {
    layers: Vec<ParamId>,
    pub n_experts: usize,
}

/// A router's output for a batch of tokens `[T, N]`.
pub struct RouterOut {
    pub logits: Var,
    pub probs: Var,
}

impl Router {
    pub fn new(params: &mut Params, prefix: &str, kind: RouterKind, d: usize, n: usize, device: &Device, rng: &mut Rng) -> Result<Router> {
        let std = 0.02;
        let layers = match kind {
            RouterKind::Linear => vec![params.add(format!("{prefix}.router.w"), &[d, n], Init::Normal(std), device, rng)?],
            RouterKind::Mlp { hidden } => vec![
                params.add(format!("{prefix}.router.w1"), &[d, hidden], Init::Normal(std), device, rng)?,
                params.add(format!("{prefix}.router.w2"), &[hidden, n], Init::Normal(std), device, rng)?,
            ],
        };
        Ok(Router { layers, n_experts: n })
    }

    pub fn forward(&self, ctx: &Ctx, params: &Params, x: &Var) -> Result<RouterOut> {
        let mut h = x.matmul(&ctx.p(params.get(self.layers[0]))?)?;
        if let Some(&w2) = self.layers.get(1) {
            h = h.gelu()?.matmul(&ctx.p(params.get(w2))?)?;
        }
        let probs = h.softmax()?;
        Ok(RouterOut { logits: h, probs })
    }

    /// Parameters in the router.
    pub fn param_count(&self, params: &Params) -> usize {
        self.layers.iter().map(|&id| params.get(id).value.elem_count()).sum()
    }
}

/// How many experts each token uses at inference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    /// Every expert, weighted by its probability (how DS-MoE trains).
    Dense,
    /// The K most probable experts.
    TopK(usize),
    /// Experts whose normalised probability N·p exceeds ε (at least the top one).
    Threshold(f64),
    /// The threshold rule's mean expert count per layer, over the whole evaluated set, as a fixed
    /// K per layer (rounded up by default). It depends on a set of tokens, not on one batch, so it
    /// runs resolved into per-layer top-K (`eval::resolve_threshold_k`); a forward given it
    /// unresolved is an error, never a K that changes with how tokens are batched.
    ThresholdK(f64),
}

impl Selection {
    /// Parses `dense`, `top-k:K`, `threshold:EPS` or `threshold-k:EPS`.
    pub fn parse(s: &str) -> Result<Selection> {
        let bad = |msg: &str| Error::Invalid { what: "mode", value: s.to_string(), msg: msg.to_string() };
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        let num = |what: &str| arg.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| bad(what));
        match kind {
            "dense" if arg.is_empty() => Ok(Selection::Dense),
            "top-k" => {
                let k = arg.parse::<usize>().ok().filter(|&k| k > 0).ok_or_else(|| bad("top-k needs a positive integer, e.g. top-k:4"))?;
                Ok(Selection::TopK(k))
            }
            "threshold" => Ok(Selection::Threshold(num("threshold needs a non-negative number, e.g. threshold:0.5")?)),
            "threshold-k" => Ok(Selection::ThresholdK(num("threshold-k needs a non-negative number, e.g. threshold-k:0.5")?)),
            _ => Err(bad("expected dense, top-k:K, threshold:EPS or threshold-k:EPS")),
        }
    }

    /// The engine's routing mode for this selection over `n` experts (`None` for dense). Threshold
    /// modes cap a token at the routing kernel's slot limit; threshold-K must have been resolved.
    pub fn route_mode(&self, n: usize) -> Result<Option<RouteMode>> {
        let k_max = n.min(ops::moe_sparse::MAX_SLOTS);
        Ok(match *self {
            Selection::Dense => None,
            Selection::TopK(k) if k > n => return Err(Error::Invalid { what: "mode", value: format!("top-k:{k}"), msg: format!("only {n} experts") }),
            Selection::TopK(k) => Some(RouteMode::TopK(k)),
            Selection::Threshold(eps) => Some(RouteMode::Threshold { eps, k_max }),
            Selection::ThresholdK(eps) => {
                return Err(Error::Invalid {
                    what: "mode",
                    value: format!("threshold-k:{eps}"),
                    msg: "threshold-k's K per layer comes from an evaluated set; resolve it first (model::eval::resolve_threshold_k), as `dsmoe eval` and `dsmoe generate` do".into(),
                })
            }
        })
    }

    /// The 0/1 mask `[T, N]` of selected experts for router probabilities `probs`, or None for
    /// `Dense`: the engine's routing (`ops::moe_route`, the same rule the sparse MLP runs on)
    /// scattered back to one column per expert.
    pub fn mask(&self, probs: &Tensor) -> Result<Option<Tensor>> {
        let n = probs.shape().last();
        let Some(mode) = self.route_mode(n)? else { return Ok(None) };
        let routes = ops::moe_route(probs, mode, false)?;
        // Unused slots name a valid expert with a mask of 0, so they add nothing.
        Ok(Some(ops::scatter_add_last(&routes.mask, &routes.experts, n)?))
    }

    pub fn describe(&self) -> String {
        match self {
            Selection::Dense => "dense".into(),
            Selection::TopK(k) => format!("top-k:{k}"),
            Selection::Threshold(e) => format!("threshold:{e}"),
            Selection::ThresholdK(e) => format!("threshold-k:{e}"),
        }
    }
}
