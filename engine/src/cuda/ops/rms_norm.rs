//! RMSNorm with a fused residual add, and its backward (rms_norm.cu).

use kernels_cuda::RMS_NORM;

use super::{float_suffix, nbytes};
use crate::cuda::launch::{kernel_args, launch, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::{DType, Result};

pub(crate) fn rms_norm(x: &CudaStorage, residual: Option<&CudaStorage>, w: &CudaStorage, rows: usize, cols: usize, eps: f64) -> Result<(CudaStorage, Option<CudaStorage>)> {
    let sfx = float_suffix("rms_norm", x.dtype())?;
    let dev = x.dev();
    let y = CudaStorage::uninit(dev, x.dtype(), rows * cols)?;
    let h = residual.map(|_| CudaStorage::uninit(dev, x.dtype(), rows * cols)).transpose()?;
    if rows * cols == 0 {
        return Ok((y, h));
    }
    // A null residual and h when there is no residual: the kernel reads neither (has_res = 0).
    let (xp, rp, wp, yp, hp) = (x.ptr(), residual.map_or(0, |r| r.ptr()), w.ptr(), y.ptr(), h.as_ref().map_or(0, |h| h.ptr()));
    let (r, c, e, has_res) = (rows as u64, cols as u64, eps as f32, residual.is_some() as i32);
    let streams = 1 + residual.is_some() as usize;
    let cost = Cost { bytes: 2 * streams as u64 * nbytes(rows * cols, x.dtype()), flops: 5 * (rows * cols) as u64 };
    // SAFETY: rms_norm_<T>(const T* x, const T* res, const T* w, T* y, T* h, u64 rows, u64 cols,
    // float eps, int has_res); x, y (and res, h when has_res) hold rows·cols elements, w cols (op layer).
    unsafe { launch(dev, &RMS_NORM, &format!("rms_norm_{sfx}"), Grid::row_groups("rms_norm", r, c)?, &mut kernel_args![&xp, &rp, &wp, &yp, &hp, &r, &c, &e, &has_res], cost)? };
    Ok((y, h))
}

pub(crate) fn rms_norm_backward(dy: &CudaStorage, h: &CudaStorage, w: &CudaStorage, rows: usize, cols: usize, eps: f64) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "rms_norm_backward";
    let sfx = float_suffix(OP, dy.dtype())?;
    let dev = dy.dev();
    let dh = CudaStorage::uninit(dev, dy.dtype(), rows * cols)?;
    let dw = CudaStorage::zeros(dev, dy.dtype(), cols)?;
    if rows * cols == 0 {
        return Ok((dh, dw));
    }
    let inv = CudaStorage::uninit(dev, DType::F32, rows)?;
    let (dyp, hp, wp, dhp, ip, dwp) = (dy.ptr(), h.ptr(), w.ptr(), dh.ptr(), inv.ptr(), dw.ptr());
    let (r, c, e) = (rows as u64, cols as u64, eps as f32);
    let matrix = nbytes(rows * cols, dy.dtype());
    let cost = Cost { bytes: 3 * matrix, flops: 8 * (rows * cols) as u64 };
    // SAFETY: rms_norm_backward_rows_<T>(const T* dy, const T* h, const T* w, T* dh, float* inv,
    // u64 rows, u64 cols, float eps); dy, h and dh hold rows·cols elements, w cols, inv rows.
    unsafe { launch(dev, &RMS_NORM, &format!("rms_norm_backward_rows_{sfx}"), Grid::row_groups(OP, r, c)?, &mut kernel_args![&dyp, &hp, &wp, &dhp, &ip, &r, &c, &e], cost)? };
    let grid = Grid { grid: (cols.div_ceil(32) as u32, 1, 1), block: (32, 8, 1) };
    let cost = Cost { bytes: 2 * matrix, flops: 3 * (rows * cols) as u64 };
    // SAFETY: rms_norm_backward_weight_<T>(const T* dy, const T* h, const float* inv, T* dw, u64 rows,
    // u64 cols); dy and h hold rows·cols elements, inv rows (written above), dw cols.
    unsafe { launch(dev, &RMS_NORM, &format!("rms_norm_backward_weight_{sfx}"), grid, &mut kernel_args![&dyp, &hp, &ip, &dwp, &r, &c], cost)? };
    Ok((dh, dw))
}
