//! Batched matrix products: bf16 / f16 through the tensor-core GEMM (gemm.rs) when the device and
//! the layout allow it, everything else (f32, both operands transposed, unaligned leading
//! dimensions, pre-Ampere GPUs) through the reference tiled GEMM (gemm.cu), which also serves the
//! tests as a GPU reference.

use kernels_cuda::GEMM;

use super::{float_suffix, nbytes};
use crate::backend::MatmulLayout;
use crate::cuda::launch::{kernel_args, launch, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::Result;

/// Tile edge of gemm.cu's output tiles.
const TILE: u64 = 64;

pub(crate) fn matmul(a: &CudaStorage, b: &CudaStorage, l: &MatmulLayout) -> Result<CudaStorage> {
    if let Some(out) = super::gemm::matmul(a, b, l)? {
        return Ok(out);
    }
    let sfx = float_suffix("matmul", a.dtype())?;
    let dev = a.dev();
    let out = CudaStorage::uninit(dev, a.dtype(), l.batch * l.m * l.n)?;
    if out.is_empty() {
        return Ok(out);
    }
    let (ap, bp, cp) = (a.ptr(), b.ptr(), out.ptr());
    let (batch, m, n, k) = (l.batch as u64, l.m as u64, l.n as u64, l.k as u64);
    let (ta, tb, sa, sb) = (l.trans_a as i32, l.trans_b as i32, l.a_batch_stride as u64, l.b_batch_stride as u64);
    let grid = Grid { grid: (n.div_ceil(TILE) as u32, m.div_ceil(TILE).min(65535) as u32, batch.min(65535) as u32), block: (256, 1, 1) };
    let cost = Cost {
        bytes: nbytes(a.len() + b.len() + out.len(), a.dtype()),
        flops: 2 * batch * m * n * k,
    };
    // SAFETY: gemm_<T>(const T* a, const T* b, T* c, u64 batch, u64 m, u64 n, u64 k, int trans_a,
    // int trans_b, u64 a_batch_stride, u64 b_batch_stride); the op layer built the layout from the
    // operands' shapes, so every batch entry's matrices lie inside a and b; c holds batch·m·n.
    unsafe {
        launch(dev, &GEMM, &format!("gemm_{sfx}"), grid, &mut kernel_args![&ap, &bp, &cp, &batch, &m, &n, &k, &ta, &tb, &sa, &sb], cost)?
    };
    Ok(out)
}
