//! Launching a kernel: find the function (module.rs), pick a grid, pass the arguments, bracket with
//! profiling events when asked, check the launch's status. Launches are asynchronous and never wait
//! for the GPU; a fault inside a kernel surfaces at the next synchronising call (a copy to the host,
//! `synchronize`), as an `Error::Cuda` naming that call.
//!
//! Grid shapes used by the kernels:
//! - `linear`: 256-thread blocks over a grid-stride loop, capped at 16 blocks per SM (enough to fill
//!   every SM several times over; more blocks only add scheduling).
//! - `row_groups`: one warp per row for rows up to 1024 elements (8 rows per 256-thread block),
//!   one 256-thread block per row above; see common.cuh.
//! - `rows_by_cols`: x over a row's elements, y over rows (capped at 65535, the kernels stride).

use std::ffi::c_void;

use cudarc::driver::result;
use kernels_cuda::KernelSource;

use super::device::CudaDevice;
use super::error::DriverContext;
use super::module;
use super::profile::{self, Cost};
use crate::{Error, Result};

const THREADS: u32 = 256;
const MAX_GRID_Y: u64 = 65535;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

impl Grid {
    /// Grid-stride loop over `items` work items (threads' worth of work).
    pub(crate) fn linear(dev: &CudaDevice, items: u64) -> Grid {
        let cap = (dev.info.sm_count.max(1) as u64) * 16;
        let blocks = items.div_ceil(THREADS as u64).clamp(1, cap);
        Grid { grid: (blocks as u32, 1, 1), block: (THREADS, 1, 1) }
    }

    /// One row group per row of `row_len` elements (see common.cuh).
    pub(crate) fn row_groups(op: &'static str, rows: u64, row_len: u64) -> Result<Grid> {
        let (block, rows_per_block) = if row_len <= 1024 { ((32, 8, 1), 8) } else { ((THREADS, 1, 1), 1) };
        let blocks = rows.div_ceil(rows_per_block);
        if blocks > i32::MAX as u64 {
            return Err(Error::invalid(op, format!("{rows} rows exceed the CUDA grid limit")));
        }
        Ok(Grid { grid: (blocks.max(1) as u32, 1, 1), block })
    }

    /// x over `cols` (256 threads per block, capped at 16 blocks per SM), y over `rows`.
    pub(crate) fn rows_by_cols(dev: &CudaDevice, rows: u64, cols: u64) -> Grid {
        let cap = (dev.info.sm_count.max(1) as u64) * 16;
        let x = cols.div_ceil(THREADS as u64).clamp(1, cap);
        let y = rows.clamp(1, MAX_GRID_Y);
        Grid { grid: (x as u32, y as u32, 1), block: (THREADS, 1, 1) }
    }
}

/// Pointers to each argument, in the kernel's parameter order, for `launch`.
macro_rules! kernel_args {
    ($($arg:expr),* $(,)?) => {
        [$(($arg) as *const _ as *mut ::std::ffi::c_void),*]
    };
}
pub(crate) use kernel_args;

/// Launches `entry` of module `src` on `dev`'s stream.
///
/// # Safety
/// `args` must point at values whose types and order match the kernel's parameters exactly (device
/// pointers as `u64`, `u64`/`u32`/`int`/`float` scalars as such, structs with the same `repr(C)`
/// layout), and every device buffer the kernel touches through them must be live and large enough
/// for the indices the kernel computes from the other arguments.
pub(crate) unsafe fn launch(
    dev: &'static CudaDevice,
    src: &'static KernelSource,
    entry: &str,
    grid: Grid,
    args: &mut [*mut c_void],
    cost: Cost,
) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { launch_with_smem(dev, src, entry, grid, 0, args, cost) }
}

/// `launch` with `smem_bytes` of dynamic shared memory per block; above the default 48 KiB the
/// function's limit is raised first (the driver refuses the launch otherwise).
///
/// # Safety
/// As `launch`; the kernel must also expect at most `smem_bytes` of dynamic shared memory.
pub(crate) unsafe fn launch_with_smem(
    dev: &'static CudaDevice,
    src: &'static KernelSource,
    entry: &str,
    grid: Grid,
    smem_bytes: u32,
    args: &mut [*mut c_void],
    cost: Cost,
) -> Result<()> {
    let (f, name) = module::function(dev, src, entry)?;
    dev.bind()?;
    if smem_bytes > 48 * 1024 {
        // SAFETY: `f` is a function of this device's context, which is current; setting the
        // attribute again to the same value is harmless.
        unsafe {
            cudarc::driver::sys::cuFuncSetAttribute(
                f,
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem_bytes as i32,
            )
        }
        .result()
        .ctx(&format!("cuFuncSetAttribute({name}, {smem_bytes} bytes of shared memory)"))?;
    }
    let timing = profile::begin(dev, name)?;
    // SAFETY: the caller guarantees the arguments and the shared-memory size; the function belongs
    // to this context.
    unsafe { result::launch_kernel(f, grid.grid, grid.block, smem_bytes, dev.stream(), args) }.ctx(&format!("cuLaunchKernel({name})"))?;
    profile::end(timing, cost)
}
