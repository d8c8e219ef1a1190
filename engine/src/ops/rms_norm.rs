//! RMSNorm over the last axis, with the residual add of a pre-norm block optionally fused in
//! front, and its backward.

use super::{check_float, check_same_device, check_same_dtype};
use crate::backend::BackendStorage;
use crate::{Error, Result, Storage, Tensor};

/// What `rms_norm` returns.
#[derive(Debug)]
pub struct RmsNorm {
    /// `h / √(mean(h²) + eps) · weight`, shaped like x.
    pub y: Tensor,
    /// `h = x + residual`, when a residual was given (without one, h is x itself).
    pub sum: Option<Tensor>,
}

/// RMSNorm of `h` over its last axis, where h = `x` or, with a residual, `x + residual` (same
/// shape as x); `weight` is `[last]`. One pass: the sum, when formed, is returned beside y.
pub fn rms_norm(x: &Tensor, residual: Option<&Tensor>, weight: &Tensor, eps: f64) -> Result<RmsNorm> {
    const OP: &str = "rms_norm";
    check_float(OP, x)?;
    let (rows, cols) = check_rows(OP, x, weight, eps)?;
    if let Some(r) = residual {
        check_same_device(OP, x, r)?;
        check_same_dtype(OP, x, r)?;
        if r.shape() != x.shape() {
            return Err(Error::shape(OP, format!("residual {:?} must have the shape of x {:?}", r.shape(), x.shape())));
        }
    }
    let residual = residual.map(Tensor::storage);
    let (y, sum) = match (x.storage(), weight.storage(), residual) {
        (Storage::Cpu(x), Storage::Cpu(w), None) => (Storage::Cpu(x.rms_norm(None, w, rows, cols, eps)?.0), None),
        (Storage::Cpu(x), Storage::Cpu(w), Some(Storage::Cpu(r))) => {
            let (y, h) = x.rms_norm(Some(r), w, rows, cols, eps)?;
            (Storage::Cpu(y), h.map(Storage::Cpu))
        }
        (Storage::Cuda(x), Storage::Cuda(w), None) => (Storage::Cuda(x.rms_norm(None, w, rows, cols, eps)?.0), None),
        (Storage::Cuda(x), Storage::Cuda(w), Some(Storage::Cuda(r))) => {
            let (y, h) = x.rms_norm(Some(r), w, rows, cols, eps)?;
            (Storage::Cuda(y), h.map(Storage::Cuda))
        }
        _ => unreachable!("devices checked"),
    };
    let wrap = |s| Tensor::from_storage(s, x.shape().clone(), x.dtype());
    Ok(RmsNorm { y: wrap(y), sum: sum.map(wrap) })
}

/// The backward of `rms_norm` given the gradient `dy` of y and the forward's h (x, or the sum):
/// returns `(dh, dweight)`. The normalisation is recomputed from h.
pub fn rms_norm_backward(dy: &Tensor, h: &Tensor, weight: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rms_norm_backward";
    check_float(OP, dy)?;
    let (rows, cols) = check_rows(OP, h, weight, eps)?;
    check_same_device(OP, dy, h)?;
    check_same_dtype(OP, dy, h)?;
    if dy.shape() != h.shape() {
        return Err(Error::shape(OP, format!("dy {:?} must have the shape of h {:?}", dy.shape(), h.shape())));
    }
    let (dh, dw) = match (dy.storage(), h.storage(), weight.storage()) {
        (Storage::Cpu(g), Storage::Cpu(h), Storage::Cpu(w)) => {
            let (dh, dw) = g.rms_norm_backward(h, w, rows, cols, eps)?;
            (Storage::Cpu(dh), Storage::Cpu(dw))
        }
        (Storage::Cuda(g), Storage::Cuda(h), Storage::Cuda(w)) => {
            let (dh, dw) = g.rms_norm_backward(h, w, rows, cols, eps)?;
            (Storage::Cuda(dh), Storage::Cuda(dw))
        }
        _ => unreachable!("devices checked"),
    };
    Ok((Tensor::from_storage(dh, h.shape().clone(), h.dtype()), Tensor::from_storage(dw, weight.shape().clone(), h.dtype())))
}

/// Checks x against its weight and eps; returns (rows, cols) of x's last-axis view.
fn check_rows(op: &'static str, x: &Tensor, weight: &Tensor, eps: f64) -> Result<(usize, usize)> {
    check_same_device(op, x, weight)?;
    check_same_dtype(op, x, weight)?;
    if x.rank() == 0 || x.shape().last() == 0 {
        return Err(Error::shape(op, format!("needs a non-empty last axis, got {:?}", x.shape())));
    }
    let cols = x.shape().last();
    if weight.dims() != [cols] {
        return Err(Error::shape(op, format!("weight {:?} must be [{cols}] for x {:?}", weight.shape(), x.shape())));
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::invalid(op, format!("eps {eps} must be a finite number ≥ 0")));
    }
    Ok((x.shape().rows(), cols))
}
