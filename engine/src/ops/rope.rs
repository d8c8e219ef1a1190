//! Rotary position embedding (the "rotate half" form used by GPT-NeoX and Llama).

use super::{check_same_device, check_same_dtype};
use crate::backend::BackendStorage;
use crate::{Error, Result, Storage, Tensor};

/// Rotates `x` of shape `[b, t, h, d]`: each pair (j, j + d/2) of a head at position `p` turns by
/// the angle whose cos / sin are `cos[p, j]` / `sin[p, j]` (both `[t, d/2]`, same dtype as x).
/// `inverse` turns the other way, which is also the backward of the forward rotation.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, inverse: bool) -> Result<Tensor> {
    const OP: &str = "rope";
    check_same_device(OP, x, cos)?;
    check_same_device(OP, x, sin)?;
    check_same_dtype(OP, x, cos)?;
    check_same_dtype(OP, x, sin)?;
    let dims = x.dims();
    if dims.len() != 4 || dims[3] % 2 != 0 {
        return Err(Error::shape(OP, format!("x must be [b, t, h, d] with even d, got {:?}", x.shape())));
    }
    let (b, t, h, d) = (dims[0], dims[1], dims[2], dims[3]);
    if cos.dims() != [t, d / 2] || sin.dims() != [t, d / 2] {
        return Err(Error::shape(OP, format!("cos {:?} and sin {:?} must be [{t}, {}]", cos.shape(), sin.shape(), d / 2)));
    }
    let s = match (x.storage(), cos.storage(), sin.storage()) {
        (Storage::Cpu(x), Storage::Cpu(c), Storage::Cpu(s)) => Storage::Cpu(x.rope(c, s, b, t, h, d, inverse)?),
        (Storage::Cuda(x), Storage::Cuda(c), Storage::Cuda(s)) => Storage::Cuda(x.rope(c, s, b, t, h, d, inverse)?),
        _ => unreachable!("devices checked"),
    };
    Ok(Tensor::from_storage(s, x.shape().clone(), x.dtype()))
}
