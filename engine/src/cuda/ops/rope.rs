//! Rotary position embedding (rope.cu).

use kernels_cuda::ROPE;

use super::{float_suffix, nbytes};
use crate::cuda::launch::{kernel_args, launch, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::Result;

#[allow(clippy::too_many_arguments)] // mirrors BackendStorage::rope
pub(crate) fn rope(x: &CudaStorage, cos: &CudaStorage, sin: &CudaStorage, b: usize, t: usize, h: usize, d: usize, inverse: bool) -> Result<CudaStorage> {
    let sfx = float_suffix("rope", x.dtype())?;
    let dev = x.dev();
    let out = CudaStorage::uninit(dev, x.dtype(), x.len())?;
    let pairs = (b * t * h * (d / 2)) as u64;
    if pairs == 0 {
        return Ok(out);
    }
    let (xp, cp, sp, yp) = (x.ptr(), cos.ptr(), sin.ptr(), out.ptr());
    let (bb, tt, hh, dd, inv) = (b as u64, t as u64, h as u64, d as u64, inverse as i32);
    let grid = Grid::linear(dev, pairs);
    let cost = Cost { bytes: 2 * nbytes(x.len(), x.dtype()) + 2 * nbytes(t * (d / 2), x.dtype()), flops: 6 * pairs };
    // SAFETY: rope_<T>(const T* x, const T* cos, const T* sin, T* y, u64 b, u64 t, u64 h, u64 d,
    // int inverse); x and y hold b·t·h·d elements, cos and sin t·(d/2) (op layer).
    unsafe { launch(dev, &ROPE, &format!("rope_{sfx}"), grid, &mut kernel_args![&xp, &cp, &sp, &yp, &bb, &tt, &hh, &dd, &inv], cost)? };
    Ok(out)
}
