//! What `generate` and `bench inference` share: the inference dtype and a scheduler over a KV
//! cache sized by the `--kv-budget-mib` budget.

use anyhow::{bail, Result};
use engine::{DType, Device};
use model::infer::{InferWeights, KvCache, Scheduler, SchedulerConfig};
use model::InferenceMode;

use crate::cli::EngineArgs;

/// `--dtype`, or f32 on the CPU and bf16 on CUDA.
pub fn infer_dtype(a: &EngineArgs, device: &Device) -> Result<DType> {
    let dtype = super::compute_dtype(a.dtype.as_deref(), device)?;
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        bail!("--dtype {dtype}: inference runs in f32, bf16 or f16");
    }
    Ok(dtype)
}

/// A scheduler running layer i in `modes[i]`.
pub fn scheduler<'a>(weights: &'a InferWeights, a: &EngineArgs, modes: Vec<InferenceMode>) -> Result<Scheduler<'a>> {
    let cache = KvCache::with_budget(&weights.config, weights.dtype, &weights.device(), a.kv_budget_mib << 20, a.block_size)?;
    Ok(Scheduler::with_layer_modes(weights, cache, modes, SchedulerConfig { max_batch: a.max_batch, prefill_chunk: a.prefill_chunk })?)
}
