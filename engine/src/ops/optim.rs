//! The optimizer update, in place: AdamW on f32 master weights.

use crate::backend::{AdamW, BackendStorage};
use crate::{DType, Error, Result, Storage, Tensor};

/// One AdamW step: `m`, `v` and `param` are updated in place from `grad` (all f32, one shape,
/// one device). Decoupled weight decay: `param -= lr * (m̂ / (√v̂ + eps) + weight_decay * param)`.
pub fn adamw_step(param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, hp: &AdamW) -> Result<()> {
    const OP: &str = "adamw_step";
    for t in [&*param, grad, &*m, &*v] {
        if t.dtype() != DType::F32 {
            return Err(Error::DType { op: OP, dtype: t.dtype(), detail: ": AdamW keeps f32 weights, gradients and moments".into() });
        }
        if t.shape() != param.shape() {
            return Err(Error::shape(OP, format!("{:?} vs parameter {:?}", t.shape(), param.shape())));
        }
        super::check_same_device(OP, param, t)?;
    }
    if hp.step == 0 {
        return Err(Error::invalid(OP, "step counts from 1"));
    }
    let (m_s, v_s) = (m.storage_mut()?, v.storage_mut()?);
    match (param.storage_mut()?, grad.storage(), m_s, v_s) {
        (Storage::Cpu(p), Storage::Cpu(g), Storage::Cpu(m), Storage::Cpu(v)) => p.adamw(g, m, v, hp),
        (Storage::Cuda(p), Storage::Cuda(g), Storage::Cuda(m), Storage::Cuda(v)) => p.adamw(g, m, v, hp),
        _ => unreachable!("devices checked"),
    }
}
