//! The dense-training MoE MLP as one differentiable op (`engine::ops::moe_dense_mlp`): the forward
//! keeps u and g (the op's `MoeDenseSaved`), and the backward is the op's own fused backward,
//! which gives the gradients of x, w1, w2 and the router probabilities p in one call.

use engine::ops::{self, MoeDenseSaved};

use super::bytes;
use crate::{Result, Var};

impl Var {
    /// `y = Σ_e p[:, e] · gelu(self·W1_eᵀ)·W2_e` with `self` = x `[T, d]`, stacked expert weights
    /// `w1`, `w2` `[E·f, d]` and router probabilities `p` `[T, E]`.
    pub fn moe_dense_mlp(&self, w1: &Var, w2: &Var, p: &Var) -> Result<Var> {
        let out = ops::moe_dense_mlp(self.value(), w1.value(), w2.value(), p.value())?;
        let (x, w1v, w2v, pv) = (self.value().clone(), w1.value().clone(), w2.value().clone(), p.value().clone());
        let saved: MoeDenseSaved = out.saved;
        let saved_bytes = bytes(&[&x, &w1v, &w2v, &pv, &saved.u, &saved.g]);
        Var::custom("moe_dense_mlp", out.y, &[self, w1, w2, p], saved_bytes, move |dy, needs| {
            let grads = ops::moe_dense_mlp_backward(dy, &x, &w1v, &w2v, &pv, &saved)?;
            let keep = |i: usize, t| needs[i].then_some(t);
            Ok(vec![keep(0, grads.dx), keep(1, grads.dw1), keep(2, grads.dw2), keep(3, grads.dp)])
        })
    }
}
