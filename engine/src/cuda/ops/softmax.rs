//! Softmax and log-softmax over the rows of a matrix (softmax.cu).

use kernels_cuda::SOFTMAX;

use super::{float_suffix, nbytes};
use crate::cuda::launch::{kernel_args, launch, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::Result;

pub(crate) fn softmax(x: &CudaStorage, rows: usize, cols: usize, log: bool) -> Result<CudaStorage> {
    let op = if log { "log_softmax" } else { "softmax" };
    let sfx = float_suffix(op, x.dtype())?;
    let dev = x.dev();
    let out = CudaStorage::uninit(dev, x.dtype(), rows * cols)?;
    if rows * cols == 0 {
        return Ok(out);
    }
    let (xp, yp, r, c, flag) = (x.ptr(), out.ptr(), rows as u64, cols as u64, log as i32);
    let grid = Grid::row_groups(op, r, c)?;
    // Two reads (the second mostly from cache) and one write; an exp and ~4 FLOPs per element.
    let cost = Cost { bytes: 2 * nbytes(rows * cols, x.dtype()), flops: 5 * (rows * cols) as u64 };
    // SAFETY: softmax_<T>(const T* x, T* y, u64 rows, u64 cols, int log); x and y hold rows·cols elements.
    unsafe { launch(dev, &SOFTMAX, &format!("softmax_{sfx}"), grid, &mut kernel_args![&xp, &yp, &r, &c, &flag], cost)? };
    Ok(out)
}
