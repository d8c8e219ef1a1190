//! One AdamW step in place on f32 parameters, first and second moments:
//! `m = β1·m + (1−β1)·g`, `v = β2·v + (1−β2)·g²`, `m̂ = m / (1−β1^t)`, `v̂ = v / (1−β2^t)`,
//! `p −= lr·(m̂ / (√v̂ + eps) + wd·p)` (decoupled weight decay). The per-step scalars are formed in
//! f64 and rounded once; the element loop runs in f32 like the CUDA kernel it is the reference for.

use rayon::prelude::*;

use super::par::{worth_it, FLAT_CHUNK};
use crate::backend::AdamW;
use crate::{CpuStorage, DType, Error, Result};

pub(super) fn adamw(param: &mut CpuStorage, grad: &CpuStorage, m: &mut CpuStorage, v: &mut CpuStorage, hp: &AdamW) -> Result<()> {
    const OP: &str = "adamw_step";
    let dtypes = [param.dtype(), grad.dtype(), m.dtype(), v.dtype()];
    let (CpuStorage::F32(p), CpuStorage::F32(g), CpuStorage::F32(m), CpuStorage::F32(v)) = (param, grad, m, v) else {
        let bad = dtypes.into_iter().find(|&d| d != DType::F32).unwrap_or(DType::F32);
        return Err(Error::DType { op: OP, dtype: bad, detail: ": AdamW keeps f32 weights, gradients and moments".into() });
    };
    if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
        return Err(Error::shape(
            OP,
            format!("parameter of {}, gradient of {}, moments of {} and {} elements", p.len(), g.len(), m.len(), v.len()),
        ));
    }
    if hp.step == 0 {
        return Err(Error::invalid(OP, "step counts from 1"));
    }
    let k = Coefficients::new(hp);
    if worth_it(p.len()) {
        p.par_chunks_mut(FLAT_CHUNK)
            .zip(g.par_chunks(FLAT_CHUNK))
            .zip(m.par_chunks_mut(FLAT_CHUNK))
            .zip(v.par_chunks_mut(FLAT_CHUNK))
            .for_each(|(((p, g), m), v)| k.apply(p, g, m, v));
    } else {
        k.apply(p, g, m, v);
    }
    Ok(())
}

/// The step's scalars, in f32.
struct Coefficients {
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    /// 1 / (1 − β1^t)
    inv_bc1: f32,
    /// 1 / √(1 − β2^t)
    inv_sqrt_bc2: f32,
    lr: f32,
    eps: f32,
    weight_decay: f32,
}

impl Coefficients {
    fn new(hp: &AdamW) -> Self {
        let t = hp.step as f64;
        Coefficients {
            beta1: hp.beta1 as f32,
            beta2: hp.beta2 as f32,
            one_minus_beta1: (1.0 - hp.beta1) as f32,
            one_minus_beta2: (1.0 - hp.beta2) as f32,
            inv_bc1: (1.0 / (1.0 - hp.beta1.powf(t))) as f32,
            inv_sqrt_bc2: (1.0 / (1.0 - hp.beta2.powf(t)).sqrt()) as f32,
            lr: hp.lr as f32,
            eps: hp.eps as f32,
            weight_decay: hp.weight_decay as f32,
        }
    }

    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = self.beta1 * *m + self.one_minus_beta1 * g;
            *v = self.beta2 * *v + self.one_minus_beta2 * g * g;
            // √v̂ = √v / √(1 − β2^t)
            let update = (*m * self.inv_bc1) / (v.sqrt() * self.inv_sqrt_bc2 + self.eps);
            *p -= self.lr * (update + self.weight_decay * *p);
        }
    }
}
