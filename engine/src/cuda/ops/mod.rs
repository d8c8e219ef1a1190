//! The Rust side of each kernel family: pick the entry point for the dtype, size the output, choose
//! a grid, declare the launch's bytes and FLOPs for the profiler, launch. Argument checking has
//! been done by the op layer (`crate::ops`); these functions only refuse dtypes that have no kernel.
//!
//! Every launch site carries a `// SAFETY:` comment giving the kernel's signature, so the argument
//! list can be checked against the .cu file at a glance.

pub(crate) mod attention;
pub(crate) mod elementwise;
pub(crate) mod gemm;
pub(crate) mod index;
pub(crate) mod layout;
pub(crate) mod matmul;
pub(crate) mod moe_dense;
pub(crate) mod moe_sparse;
pub(crate) mod optim;
pub(crate) mod paged_attention;
pub(crate) mod reduce;
pub(crate) mod rms_norm;
pub(crate) mod rope;
pub(crate) mod softmax;
pub(crate) mod strided;
pub(crate) mod topk;

use crate::{DType, Error, Result};

/// The kernel-name suffix of a float dtype; other dtypes have no arithmetic kernels on CUDA.
pub(crate) fn float_suffix(op: &'static str, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        _ => Err(Error::DType { op, dtype, detail: " on CUDA (kernels exist for f32, bf16 and f16)".into() }),
    }
}

/// The widest word (16, 8, 4 or 2 bytes, at least `elem` bytes) dividing every byte quantity
/// given: byte-moving kernels then copy 16-byte vectors whenever the layout allows.
pub(crate) fn widest_word(elem: usize, byte_quantities: &[usize], max: usize) -> usize {
    [16, 8, 4, 2]
        .into_iter()
        .find(|&w| w >= elem && w <= max && byte_quantities.iter().all(|q| q % w == 0))
        .unwrap_or(elem)
}

/// The kernel-name suffix of a word width.
pub(crate) fn word_suffix(width: usize) -> &'static str {
    match width {
        2 => "w2",
        4 => "w4",
        8 => "w8",
        16 => "w16",
        _ => unreachable!("element and word sizes are 2, 4, 8 or 16 bytes"),
    }
}

/// Bytes of `n` elements of `dtype`, for launch costs.
pub(crate) fn nbytes(n: usize, dtype: DType) -> u64 {
    (n * dtype.size_in_bytes()) as u64
}
