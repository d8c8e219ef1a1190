//! Element-wise ops: unary maps, ops with a scalar, and binary ops with NumPy broadcasting.

use super::{check_float, check_same_device, check_same_dtype, dispatch, dispatch2};
use crate::backend::{BackendStorage, BinaryOp, ScalarOp, UnaryOp};
use crate::{Result, Shape, Tensor};

pub fn unary(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    check_float("unary", x)?;
    let s = dispatch!(x, |s| s.unary(op));
    Ok(Tensor::from_storage(s, x.shape().clone(), x.dtype()))
}

pub fn scalar(x: &Tensor, op: ScalarOp, value: f64) -> Result<Tensor> {
    check_float("scalar", x)?;
    let s = dispatch!(x, |s| s.scalar(op, value));
    Ok(Tensor::from_storage(s, x.shape().clone(), x.dtype()))
}

/// `op(a, b)` with NumPy broadcasting; both operands share dtype and device.
pub fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    check_same_device("binary", a, b)?;
    check_same_dtype("binary", a, b)?;
    check_float("binary", a)?;
    let out = Shape::broadcast("binary", a.shape(), b.shape())?;
    let sa = a.shape().broadcast_strides(&out);
    let sb = b.shape().broadcast_strides(&out);
    let s = dispatch2!(a, b, |x, y| x.binary(&sa, y, &sb, out.dims(), op));
    Ok(Tensor::from_storage(s, out, a.dtype()))
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Add)
}
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Sub)
}
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Mul)
}
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Div)
}
pub fn maximum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Maximum)
}
pub fn neg(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Neg)
}
pub fn exp(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Exp)
}
pub fn log(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Log)
}
pub fn sqrt(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Sqrt)
}
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Gelu)
}
pub fn silu(x: &Tensor) -> Result<Tensor> {
    unary(x, UnaryOp::Silu)
}
pub fn add_scalar(x: &Tensor, s: f64) -> Result<Tensor> {
    scalar(x, ScalarOp::Add, s)
}
pub fn mul_scalar(x: &Tensor, s: f64) -> Result<Tensor> {
    scalar(x, ScalarOp::Mul, s)
}
/// `x * mul + add`.
pub fn affine(x: &Tensor, mul: f64, add: f64) -> Result<Tensor> {
    add_scalar(&mul_scalar(x, mul)?, add)
}
