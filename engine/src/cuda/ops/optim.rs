//! The fused AdamW step (adamw.cu).

use kernels_cuda::ADAMW;

use super::nbytes;
use crate::backend::AdamW;
use crate::cuda::launch::{kernel_args, launch, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::{DType, Error, Result};

/// Mirrors `struct AdamParams` in adamw.cu.
#[repr(C)]
struct AdamParams {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_c1: f32,
    bias_c2: f32,
}

pub(crate) fn adamw(p: &mut CudaStorage, g: &CudaStorage, m: &mut CudaStorage, v: &mut CudaStorage, hp: &AdamW) -> Result<()> {
    for s in [&*p, g, &*m, &*v] {
        if s.dtype() != DType::F32 {
            return Err(Error::DType { op: "adamw", dtype: s.dtype(), detail: ": AdamW keeps f32 weights, gradients and moments".into() });
        }
    }
    let n = p.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let step = hp.step as i32;
    let a = AdamParams {
        lr: hp.lr as f32,
        beta1: hp.beta1 as f32,
        beta2: hp.beta2 as f32,
        eps: hp.eps as f32,
        weight_decay: hp.weight_decay as f32,
        bias_c1: (1.0 / (1.0 - hp.beta1.powi(step))) as f32,
        bias_c2: (1.0 / (1.0 - hp.beta2.powi(step))) as f32,
    };
    let dev = p.dev();
    let (pp, gp, mp, vp) = (p.ptr(), g.ptr(), m.ptr(), v.ptr());
    let grid = Grid::linear(dev, n.div_ceil(4));
    let cost = Cost { bytes: 7 * nbytes(p.len(), DType::F32), flops: 12 * n };
    // SAFETY: adamw_f32(float* p, const float* g, float* m, float* v, u64 n, AdamParams a); all four
    // hold n f32 (op layer checked the shapes); p, m, v are exclusively borrowed for the update.
    unsafe { launch(dev, &ADAMW, "adamw_f32", grid, &mut kernel_args![&pp, &gp, &mp, &vp, &n, &a], cost) }
}
