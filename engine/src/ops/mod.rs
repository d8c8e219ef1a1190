//! The op set. Each op is a plain function that checks its arguments (shapes, dtypes, devices) and
//! dispatches to the backend that holds the data (`BackendStorage`). Errors name the op and the
//! offending arguments. The model and autograd use nothing but these functions.

mod attention;
mod elementwise;
mod gemm;
mod index;
mod layout;
mod matmul;
mod moe_dense;
pub mod moe_sparse;
mod optim;
mod paged_attention;
mod reduce;
mod rms_norm;
mod rope;
mod softmax;

pub use attention::*;
pub use elementwise::*;
pub use gemm::*;
pub use index::*;
pub use layout::*;
pub use matmul::*;
pub use moe_dense::*;
pub use moe_sparse::{moe_kept, moe_permute, CPU_DECODE_MAX_ROWS, moe_route, moe_sparse_mlp, moe_sparse_mlp_backward, moe_sparse_swiglu, moe_sparse_swiglu_backward, MoePath, Permutation, RouteMode, Routes, SparseGrads, SparseSaved};
pub use optim::*;
pub use paged_attention::*;
pub use reduce::*;
pub use rms_norm::*;
pub use rope::*;
pub use softmax::*;

use crate::{DType, Error, Result, Tensor};

/// Runs `$body` with `$s` bound to the backend storage of `$x`, and wraps the result back into a
/// `Storage` of the same device.
macro_rules! dispatch {
    ($x:expr, |$s:ident| $body:expr) => {
        match $x.storage() {
            $crate::Storage::Cpu($s) => $crate::Storage::Cpu($body?),
            $crate::Storage::Cuda($s) => $crate::Storage::Cuda($body?),
        }
    };
}

/// Like `dispatch!` for two tensors already checked to be on one device.
macro_rules! dispatch2 {
    ($x:expr, $y:expr, |$s:ident, $t:ident| $body:expr) => {
        match ($x.storage(), $y.storage()) {
            ($crate::Storage::Cpu($s), $crate::Storage::Cpu($t)) => $crate::Storage::Cpu($body?),
            ($crate::Storage::Cuda($s), $crate::Storage::Cuda($t)) => $crate::Storage::Cuda($body?),
            _ => unreachable!("devices were checked to match"),
        }
    };
}
pub(crate) use dispatch;
pub(crate) use dispatch2;

pub(crate) fn check_same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch { op, lhs: a.device(), rhs: b.device() });
    }
    Ok(())
}

pub(crate) fn check_same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch { op, lhs: a.dtype(), rhs: b.dtype() });
    }
    Ok(())
}

pub(crate) fn check_float(op: &'static str, x: &Tensor) -> Result<()> {
    if !x.dtype().is_float() {
        return Err(Error::DType { op, dtype: x.dtype(), detail: ": expected a floating-point tensor".into() });
    }
    Ok(())
}

pub(crate) fn check_index(op: &'static str, idx: &Tensor) -> Result<()> {
    if idx.dtype() != DType::U32 {
        return Err(Error::DType { op, dtype: idx.dtype(), detail: ": indices must be u32".into() });
    }
    Ok(())
}

/// Checks every index is below `bound`. Indices live on the host for CPU tensors; for device
/// tensors this copies them back, which syncs: the hot paths on CUDA build indices on the device
/// with kernels that cannot produce out-of-range values, and call the `_unchecked` variants.
pub(crate) fn check_index_bounds(op: &'static str, idx: &Tensor, bound: usize) -> Result<()> {
    let values: Vec<u32> = idx.to_vec()?;
    if let Some(&bad) = values.iter().find(|&&i| i as usize >= bound) {
        return Err(Error::IndexOutOfRange { op, index: bad as usize, size: bound });
    }
    Ok(())
}

/// Resolves a possibly negative dim (-1 = last) against a rank.
pub fn resolve_dim(op: &'static str, dim: isize, rank: usize) -> Result<usize> {
    let d = if dim < 0 { dim + rank as isize } else { dim };
    if d < 0 || d as usize >= rank {
        return Err(Error::shape(op, format!("dim {dim} out of range for rank {rank}")));
    }
    Ok(d as usize)
}
