//! The sparse expert MLP (engine::ops::moe_sparse_mlp, and its gated form moe_sparse_swiglu) as one
//! differentiable op in x, the expert matrices and the router weights. The forward saves U = x·W1ᵀ
//! and the activation H in list order (2·slots·f elements; gated experts also V = x·W3ᵀ) so the
//! backward recomputes nothing; the permutation is a constant of the op (routing is a discrete
//! choice: the router learns through the weights, which are gathered probabilities).

use engine::ops::{self, MoePath, Permutation};

use super::bytes;
use crate::{Result, Var};

impl Var {
    /// y = Σ over each token's kept slots of weight · W2_eᵀ·gelu(W1_e·x), `self` = x `[T, d]`,
    /// `w1`, `w2` `[E·f, d]`, `weights` `[T, k_max]`, over the expert-sorted list `perm`.
    pub fn moe_sparse_mlp(&self, w1: &Var, w2: &Var, weights: &Var, perm: &Permutation) -> Result<Var> {
        self.sparse_experts(w1, None, w2, weights, perm)
    }

    /// The SwiGLU form: y = Σ weight · W2_eᵀ·(silu(W1_e·x) ⊙ W3_e·x), `w3` `[E·f, d]` like `w1`.
    pub fn moe_sparse_swiglu(&self, w1: &Var, w3: &Var, w2: &Var, weights: &Var, perm: &Permutation) -> Result<Var> {
        self.sparse_experts(w1, Some(w3), w2, weights, perm)
    }

    fn sparse_experts(&self, w1: &Var, w3: Option<&Var>, w2: &Var, weights: &Var, perm: &Permutation) -> Result<Var> {
        let inputs: Vec<&Var> = [self, w1, w2, weights].into_iter().chain(w3).collect();
        let save = inputs.iter().any(|v| v.is_tracked());
        let (x, w1v, w2v, wv) = (self.value(), w1.value(), w2.value(), weights.value());
        let w3v = w3.map(|w| w.value().clone());
        let (y, saved) = match &w3v {
            None => ops::moe_sparse_mlp(x, w1v, w2v, wv, perm, MoePath::Auto, save)?,
            Some(w3v) => ops::moe_sparse_swiglu(x, w1v, w3v, w2v, wv, perm, MoePath::Auto, save)?,
        };
        let Some(saved) = saved else { return Ok(Var::constant(y)) };
        let (x, w1v, w2v, wv, perm) = (x.clone(), w1v.clone(), w2v.clone(), wv.clone(), perm.clone());
        let held = bytes(&[&x, &w1v, &w2v, &wv, &saved.u, &saved.h].into_iter().chain(&w3v).chain(&saved.v).collect::<Vec<_>>());
        let name = if w3v.is_some() { "moe_sparse_swiglu" } else { "moe_sparse_mlp" };
        Var::custom(name, y, &inputs, held, move |g, needs| {
            let gr = match &w3v {
                None => ops::moe_sparse_mlp_backward(g, &x, &w1v, &w2v, &wv, &perm, &saved)?,
                Some(w3v) => ops::moe_sparse_swiglu_backward(g, &x, &w1v, w3v, &w2v, &wv, &perm, &saved)?,
            };
            let mut grads = vec![needs[0].then_some(gr.dx), needs[1].then_some(gr.dw1), needs[2].then_some(gr.dw2), needs[3].then_some(gr.dweights)];
            if let Some(dw3) = gr.dw3 {
                grads.push(needs[4].then_some(dw3));
            }
            Ok(grads)
        })
    }
}
