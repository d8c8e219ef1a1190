//! Softmax and log-softmax along the last axis (numerically stable: the row max is subtracted).

use super::{check_float, dispatch};
use crate::backend::BackendStorage;
use crate::{Error, Result, Tensor};

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
