//! Per-row top-k by repeated selection (topk.cu).

use kernels_cuda::TOPK;

use super::{float_suffix, nbytes};
use crate::cuda::launch::{kernel_args, launch, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::{DType, Result};

/// (values, u32 indices), each `rows x k`, descending, ties to the lower index.
pub(crate) fn topk(x: &CudaStorage, rows: usize, n: usize, k: usize) -> Result<(CudaStorage, CudaStorage)> {
    let sfx = float_suffix("topk", x.dtype())?;
    let dev = x.dev();
    let values = CudaStorage::uninit(dev, x.dtype(), rows * k)?;
    let indices = CudaStorage::uninit(dev, DType::U32, rows * k)?;
    if rows * k == 0 {
        return Ok((values, indices));
    }
    let (xp, vp, ip, r, nn, kk) = (x.ptr(), values.ptr(), indices.ptr(), rows as u64, n as u64, k as u64);
    let grid = Grid::row_groups("topk", r, nn)?;
    // One pass over the row per selected element (all but the first mostly from cache).
    let cost = Cost { bytes: nbytes(rows * n, x.dtype()) + nbytes(rows * k, x.dtype()) + nbytes(rows * k, DType::U32), flops: 0 };
    // SAFETY: topk_<T>(const T* x, T* values, u32* indices, u64 rows, u64 n, u64 k); x holds
    // rows·n elements, values and indices rows·k, and k <= n (op layer).
    unsafe { launch(dev, &TOPK, &format!("topk_{sfx}"), grid, &mut kernel_args![&xp, &vp, &ip, &r, &nn, &kk], cost)? };
    Ok((values, indices))
}
