//! The sparse expert MLP (engine::ops::moe_sparse_mlp) as one differentiable op in x, w1, w2 and
//! the router weights. The forward saves U = x·W1ᵀ and H = gelu(U) in list order (2·slots·f
//! elements) so the backward recomputes nothing; the permutation is a constant of the op (routing
//! is a discrete choice: the router learns through the weights, which are gathered probabilities).

use engine::ops::{self, MoePath, Permutation};

use super::bytes;
use crate::{Result, Var};

impl Var {
    /// y = Σ over each token's kept slots of weight · W2_eᵀ·gelu(W1_e·x), `self` = x `[T, d]`,
    /// `w1`, `w2` `[E·f, d]`, `weights` `[T, k_max]`, over the expert-sorted list `perm`.
    pub fn moe_sparse_mlp(&self, w1: &Var, w2: &Var, weights: &Var, perm: &Permutation) -> Result<Var> {
        let inputs = [self, w1, w2, weights];
        let save = inputs.iter().any(|v| v.is_tracked());
        let (y, saved) = ops::moe_sparse_mlp(self.value(), w1.value(), w2.value(), weights.value(), perm, MoePath::Auto, save)?;
        let Some(saved) = saved else { return Ok(Var::constant(y)) };
        let (x, w1v, w2v, wv, perm) = (self.value().clone(), w1.value().clone(), w2.value().clone(), weights.value().clone(), perm.clone());
        let held = bytes(&[&x, &w1v, &w2v, &wv, &saved.u, &saved.h]);
        Var::custom("moe_sparse_mlp", y, &inputs, held, move |g, needs| {
            let gr = ops::moe_sparse_mlp_backward(g, &x, &w1v, &w2v, &wv, &perm, &saved)?;
            Ok(vec![needs[0].then_some(gr.dx), needs[1].then_some(gr.dw1), needs[2].then_some(gr.dw2), needs[3].then_some(gr.dweights)])
        })
    }
}
