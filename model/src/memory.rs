//! The memory a run needs, estimated from its config before anything is allocated, against what
//! the device has: a model that cannot fit is an error saying both numbers, not an allocation
//! failure (an abort on the host) half-way through building it.
//!
//! The estimates are lower bounds, so they never refuse a run that would fit: training holds f32
//! weights, their gradients and AdamW's two moments (16 bytes a parameter) plus one micro-batch's
//! logits and their gradient; inference holds the f32 weights and one batch's logits. Activations
//! inside the blocks come on top. On the CPU the bound is the kernel's `MemAvailable`; on CUDA the
//! device's total memory. Where neither is known the check passes.

use engine::Device;

use crate::config::{Config, ModelConfig};
use crate::{Error, Result};

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes of f32 weights, gradients and AdamW moments, and one micro-batch's logits and gradient.
pub fn training_bytes(config: &Config) -> Result<u128> {
    let t = &config.train;
    Ok(16 * parameters(&config.model)? + 8 * logits(&config.model, t.batch_size as u128 * t.seq_len as u128))
}

/// Bytes of f32 weights and the logits of `tokens` tokens.
pub fn inference_bytes(model: &ModelConfig, tokens: usize) -> Result<u128> {
    Ok(4 * parameters(model)? + 4 * logits(model, tokens as u128))
}

/// Fails when `need` bytes exceed what `device` has, naming both; `what` says what needs them.
pub fn check_fits(device: &Device, need: u128, what: &str) -> Result<()> {
    let Some(have) = available(device) else { return Ok(()) };
    if need > have as u128 {
        return Err(Error::Invalid {
            what: "model size",
            value: what.to_string(),
            msg: format!("needs at least {:.2} GiB of memory, but {device} has {:.2} GiB available", need as f64 / GIB, have as f64 / GIB),
        });
    }
    Ok(())
}

fn parameters(model: &ModelConfig) -> Result<u128> {
    let c = model.counts(None, None)?;
    Ok(c.total as u128 + c.embedding as u128)
}

fn logits(model: &ModelConfig, tokens: u128) -> u128 {
    tokens * model.vocab_size as u128
}

/// Bytes `device` can hold: free host memory, or a GPU's total memory.
pub fn available(device: &Device) -> Option<u64> {
    match device {
        Device::Cpu => host_available(),
        Device::Cuda(ordinal) => engine::cuda::device_info(*ordinal).ok().map(|i| i.total_memory as u64),
    }
}

/// `MemAvailable` from `/proc/meminfo` (Linux), in bytes.
fn host_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
