//! Backward rules, one file per op family. Each file adds the differentiable methods of its family
//! to `Var`; each method computes the value with the engine op and records a closure that maps the
//! output gradient to the input gradients, capturing only what that formula needs.

mod arith;
mod attention;
mod index;
mod layout;
mod matmul;
mod moe_dense;
mod moe_sparse;
mod norm;
mod reduce;
mod softmax;

use engine::{ops, Shape, Tensor};

use crate::Result;

/// Sums a gradient computed at a broadcast shape back to the input's shape.
pub(crate) fn unbroadcast(g: Tensor, shape: &Shape) -> Result<Tensor> {
    ops::sum_to(&g, shape)
}

/// Expands `g` (of a shape that broadcasts to `shape`) to `shape`.
pub(crate) fn broadcast_to(g: &Tensor, shape: &Shape) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    ops::add(&Tensor::zeros(shape.clone(), g.dtype(), &g.device())?, g)
}

/// Bytes held by tensors a rule saves.
pub(crate) fn bytes(saved: &[&Tensor]) -> usize {
    saved.iter().map(|t| t.size_in_bytes()).sum()
}
