//! Fused causal attention on CUDA (attention.cu).

use crate::backend::AttentionDims;
use crate::cuda::CudaStorage;
use crate::{Error, Result};

pub(crate) fn forward(
    _q: &CudaStorage,
    _k: &CudaStorage,
    _v: &CudaStorage,
    _seq_offsets: &[usize],
    _dims: &AttentionDims,
) -> Result<(CudaStorage, CudaStorage)> {
    Err(Error::invalid("causal_attention", "no CUDA kernel yet"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    _d_out: &CudaStorage,
    _q: &CudaStorage,
    _k: &CudaStorage,
    _v: &CudaStorage,
    _out: &CudaStorage,
    _lse: &CudaStorage,
    _seq_offsets: &[usize],
    _dims: &AttentionDims,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    Err(Error::invalid("causal_attention", "no CUDA kernel yet"))
}
