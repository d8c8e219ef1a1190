//! Softmax and log-softmax over the rows of a matrix, and the fused softmax cross-entropy (softmax.cu).

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

pub(crate) fn cross_entropy(x: &CudaStorage, targets: &CudaStorage, rows: usize, vocab: usize) -> Result<CudaStorage> {
    let sfx = float_suffix("cross_entropy", x.dtype())?;
    let dev = x.dev();
    let loss = CudaStorage::uninit(dev, x.dtype(), rows)?;
    if rows * vocab == 0 {
        return Ok(loss);
    }
    let (xp, tp, lp, r, c) = (x.ptr(), targets.ptr(), loss.ptr(), rows as u64, vocab as u64);
    let cost = Cost { bytes: nbytes(rows * vocab, x.dtype()), flops: 4 * (rows * vocab) as u64 };
    // SAFETY: cross_entropy_<T>(const T* x, const u32* targets, T* loss, u64 rows, u64 cols); x holds
    // rows·vocab elements, targets and loss rows, every target < vocab (op layer).
    unsafe { launch(dev, &SOFTMAX, &format!("cross_entropy_{sfx}"), Grid::row_groups("cross_entropy", r, c)?, &mut kernel_args![&xp, &tp, &lp, &r, &c], cost)? };
    Ok(loss)
}

pub(crate) fn cross_entropy_backward(x: &CudaStorage, targets: &CudaStorage, g: &CudaStorage, rows: usize, vocab: usize) -> Result<CudaStorage> {
    const OP: &str = "cross_entropy_backward";
    let sfx = float_suffix(OP, x.dtype())?;
    let dev = x.dev();
    let d = CudaStorage::uninit(dev, x.dtype(), rows * vocab)?;
    if rows * vocab == 0 {
        return Ok(d);
    }
    let (xp, tp, gp, dp, r, c) = (x.ptr(), targets.ptr(), g.ptr(), d.ptr(), rows as u64, vocab as u64);
    let cost = Cost { bytes: 3 * nbytes(rows * vocab, x.dtype()), flops: 6 * (rows * vocab) as u64 };
    // SAFETY: cross_entropy_backward_<T>(const T* x, const u32* targets, const T* g, T* d, u64 rows,
    // u64 cols); x and d hold rows·vocab elements, targets and g rows, every target < vocab.
    unsafe { launch(dev, &SOFTMAX, &format!("cross_entropy_backward_{sfx}"), Grid::row_groups(OP, r, c)?, &mut kernel_args![&xp, &tp, &gp, &dp, &r, &c], cost)? };
    Ok(d)
}
