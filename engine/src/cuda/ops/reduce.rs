//! Reductions over the middle axis of (outer, size, inner), and argmax (reduce.cu).

use kernels_cuda::REDUCE;

use super::{float_suffix, nbytes};
use crate::backend::ReduceOp;
use crate::cuda::device::CudaDevice;
use crate::cuda::launch::{kernel_args, launch, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::{DType, Result};

/// Mirrors `ReduceCode` in reduce.cu.
fn reduce_code(op: ReduceOp) -> i32 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Mean => 1,
        ReduceOp::Max => 2,
        ReduceOp::Min => 3,
    }
}

/// The (32 x 8)-thread grid of the `*_cols` kernels: x over inner, y over outer (strided).
fn cols_grid(outer: u64, inner: u64) -> Grid {
    Grid { grid: (inner.div_ceil(32) as u32, outer.clamp(1, 65535) as u32, 1), block: (32, 8, 1) }
}

pub(crate) fn reduce(x: &CudaStorage, outer: usize, size: usize, inner: usize, op: ReduceOp) -> Result<CudaStorage> {
    let sfx = float_suffix("reduce", x.dtype())?;
    launch_reduce(x, x.dtype(), outer, size, inner, |dev, grid, (xp, yp), (outer, size, inner), cost| {
        let code = reduce_code(op);
        if inner == 1 {
            // SAFETY: reduce_rows_<T>(const T* x, T* y, u64 rows, u64 size, int op); x holds
            // rows·size elements, y holds rows.
            unsafe { launch(dev, &REDUCE, &format!("reduce_rows_{sfx}"), grid, &mut kernel_args![&xp, &yp, &outer, &size, &code], cost) }
        } else {
            // SAFETY: reduce_cols_<T>(const T* x, T* y, u64 outer, u64 size, u64 inner, int op); x
            // holds outer·size·inner elements, y holds outer·inner.
            unsafe { launch(dev, &REDUCE, &format!("reduce_cols_{sfx}"), grid, &mut kernel_args![&xp, &yp, &outer, &size, &inner, &code], cost) }
        }
    })
}

pub(crate) fn argmax(x: &CudaStorage, outer: usize, size: usize, inner: usize) -> Result<CudaStorage> {
    let sfx = float_suffix("argmax", x.dtype())?;
    launch_reduce(x, DType::U32, outer, size, inner, |dev, grid, (xp, yp), (outer, size, inner), cost| {
        if inner == 1 {
            // SAFETY: argmax_rows_<T>(const T* x, u32* y, u64 rows, u64 size); x holds rows·size
            // elements, y holds rows u32.
            unsafe { launch(dev, &REDUCE, &format!("argmax_rows_{sfx}"), grid, &mut kernel_args![&xp, &yp, &outer, &size], cost) }
        } else {
            // SAFETY: argmax_cols_<T>(const T* x, u32* y, u64 outer, u64 size, u64 inner); x holds
            // outer·size·inner elements, y holds outer·inner u32.
            unsafe { launch(dev, &REDUCE, &format!("argmax_cols_{sfx}"), grid, &mut kernel_args![&xp, &yp, &outer, &size, &inner], cost) }
        }
    })
}

type Dims = (u64, u64, u64);

/// Allocates the (outer, inner) output, picks the grid for the layout, and hands both to `run`.
fn launch_reduce(
    x: &CudaStorage,
    out_dtype: DType,
    outer: usize,
    size: usize,
    inner: usize,
    run: impl FnOnce(&'static CudaDevice, Grid, (u64, u64), Dims, Cost) -> Result<()>,
) -> Result<CudaStorage> {
    let dev = x.dev();
    let out = CudaStorage::uninit(dev, out_dtype, outer * inner)?;
    if outer * inner == 0 {
        return Ok(out);
    }
    let (o, s, i) = (outer as u64, size as u64, inner as u64);
    let grid = if inner == 1 { Grid::row_groups("reduce", o, s)? } else { cols_grid(o, i) };
    let cost = Cost { bytes: nbytes(x.len(), x.dtype()) + nbytes(outer * inner, out_dtype), flops: x.len() as u64 };
    run(dev, grid, (x.ptr(), out.ptr()), (o, s, i), cost)?;
    Ok(out)
}
