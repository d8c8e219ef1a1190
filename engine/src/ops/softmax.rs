//! Softmax and log-softmax along the last axis (numerically stable: the row max is subtracted), and
//! the fused softmax cross-entropy.

use super::{check_float, check_index, check_index_bounds, check_same_device, dispatch, dispatch2};
use crate::backend::BackendStorage;
use crate::{Error, Result, Storage, Tensor};

pub fn softmax(x: &Tensor) -> Result<Tensor> {
    softmax_impl(x, false)
}

pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    softmax_impl(x, true)
}

fn softmax_impl(x: &Tensor, log: bool) -> Result<Tensor> {
    let op = if log { "log_softmax" } else { "softmax" };
    check_float(op, x)?;
    if x.rank() == 0 || x.shape().last() == 0 {
        return Err(Error::shape(op, format!("needs a non-empty last axis, got {:?}", x.shape())));
    }
    let (rows, cols) = (x.shape().rows(), x.shape().last());
    let s = dispatch!(x, |s| s.softmax(rows, cols, log));
    Ok(Tensor::from_storage(s, x.shape().clone(), x.dtype()))
}

/// Per-row cross-entropy `logsumexp(row) − row[target]` of logits `[..., V]` against u32 targets
/// `[...]`; returns `[...]` in the logits' dtype. Nothing but the logits is needed for the backward.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    let (rows, vocab) = check_targets(OP, logits, targets)?;
    let s = dispatch2!(logits, targets, |x, t| x.cross_entropy(t, rows, vocab));
    Ok(Tensor::from_storage(s, targets.shape().clone(), logits.dtype()))
}

/// The gradient of `cross_entropy` with respect to the logits, for the loss gradient `g` (shaped
/// like targets): `(softmax(logits) − onehot(targets)) · g`, the softmax recomputed.
pub fn cross_entropy_backward(logits: &Tensor, targets: &Tensor, g: &Tensor) -> Result<Tensor> {
    const OP: &str = "cross_entropy_backward";
    let (rows, vocab) = check_targets(OP, logits, targets)?;
    check_same_device(OP, logits, g)?;
    super::check_same_dtype(OP, logits, g)?;
    if g.shape() != targets.shape() {
        return Err(Error::shape(OP, format!("g {:?} must have the shape of targets {:?}", g.shape(), targets.shape())));
    }
    let s = match (logits.storage(), targets.storage(), g.storage()) {
        (Storage::Cpu(x), Storage::Cpu(t), Storage::Cpu(g)) => Storage::Cpu(x.cross_entropy_backward(t, g, rows, vocab)?),
        (Storage::Cuda(x), Storage::Cuda(t), Storage::Cuda(g)) => Storage::Cuda(x.cross_entropy_backward(t, g, rows, vocab)?),
        _ => unreachable!("devices checked"),
    };
    Ok(Tensor::from_storage(s, logits.shape().clone(), logits.dtype()))
}

/// Checks logits `[..., V]` against targets `[...]` (u32, each < V); returns (rows, V).
fn check_targets(op: &'static str, logits: &Tensor, targets: &Tensor) -> Result<(usize, usize)> {
    check_float(op, logits)?;
    check_same_device(op, logits, targets)?;
    check_index(op, targets)?;
    let dims = logits.dims();
    if dims.is_empty() || logits.shape().last() == 0 || targets.dims() != &dims[..dims.len() - 1] {
        return Err(Error::shape(op, format!("logits {:?} need a non-empty last axis and targets of shape {:?}, got {:?}", logits.shape(), &dims[..dims.len().saturating_sub(1)], targets.shape())));
    }
    let vocab = logits.shape().last();
    check_index_bounds(op, targets, vocab)?;
    Ok((logits.shape().rows(), vocab))
}
