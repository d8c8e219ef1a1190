//! Reductions along one axis, argmax, and `sum_to` (the reduction that undoes broadcasting).

use super::{check_float, dispatch, resolve_dim};
use crate::backend::{BackendStorage, ReduceOp};
use crate::{DType, Error, Result, Shape, Tensor};

/// Reduces axis `dim` (negative counts from the end). With `keepdim` the axis stays with size 1.
pub fn reduce(x: &Tensor, dim: isize, op: ReduceOp, keepdim: bool) -> Result<Tensor> {
    check_float("reduce", x)?;
    let d = resolve_dim("reduce", dim, x.rank())?;
    let (outer, size, inner) = x.shape().split_at_dim(d);
    if size == 0 && matches!(op, ReduceOp::Max | ReduceOp::Min | ReduceOp::Mean) {
        return Err(Error::shape("reduce", format!("{op:?} over an empty axis of {:?}", x.shape())));
    }
    let s = dispatch!(x, |s| s.reduce(outer, size, inner, op));
    Ok(Tensor::from_storage(s, reduced_shape(x.shape(), d, keepdim), x.dtype()))
}

pub fn sum(x: &Tensor, dim: isize, keepdim: bool) -> Result<Tensor> {
    reduce(x, dim, ReduceOp::Sum, keepdim)
}
pub fn mean(x: &Tensor, dim: isize, keepdim: bool) -> Result<Tensor> {
    reduce(x, dim, ReduceOp::Mean, keepdim)
}
pub fn max(x: &Tensor, dim: isize, keepdim: bool) -> Result<Tensor> {
    reduce(x, dim, ReduceOp::Max, keepdim)
}

/// Sum of every element, as a one-element tensor of shape [1].
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    sum(&x.reshape([x.elem_count()])?, 0, false)?.reshape([1])
}

/// u32 index of the largest element along `dim` (the first on ties).
pub fn argmax(x: &Tensor, dim: isize, keepdim: bool) -> Result<Tensor> {
    check_float("argmax", x)?;
    let d = resolve_dim("argmax", dim, x.rank())?;
    let (outer, size, inner) = x.shape().split_at_dim(d);
    if size == 0 {
        return Err(Error::shape("argmax", format!("empty axis in {:?}", x.shape())));
    }
    let s = dispatch!(x, |s| s.argmax(outer, size, inner));
    Ok(Tensor::from_storage(s, reduced_shape(x.shape(), d, keepdim), DType::U32))
}

/// Sums `x` down to `target`, a shape `x`'s shape was broadcast from: the gradient of broadcasting.
pub fn sum_to(x: &Tensor, target: &Shape) -> Result<Tensor> {
    if x.shape() == target {
        return Ok(x.clone());
    }
    let broadcast = Shape::broadcast("sum_to", target, x.shape())?;
    if &broadcast != x.shape() {
        return Err(Error::shape("sum_to", format!("{:?} was not broadcast from {target:?}", x.shape())));
    }
    let pad = x.rank() - target.rank();
    let mut out = x.clone();
    for d in (0..x.rank()).rev() {
        let keep_size = if d < pad { None } else { Some(target.dims()[d - pad]) };
        if keep_size != Some(out.dims()[d]) {
            out = sum(&out, d as isize, keep_size.is_some())?;
        }
    }
    out.reshape(target.clone())
}

fn reduced_shape(shape: &Shape, d: usize, keepdim: bool) -> Shape {
    let mut dims = shape.dims().to_vec();
    if keepdim {
        dims[d] = 1;
    } else {
        dims.remove(d);
    }
    Shape::new(dims)
}
