//! A communication model of data- and expert-parallel training: bytes each rank moves per step, the
//! time they take on a link, and the compute time beside them. It checks the design at scales no
//! machine here has (`dsmoe info --comm`).
//!
//! Assumptions (the ones NCCL's ring algorithms and this engine's training make):
//! - Ring all-reduce of `B` bytes over `n` ranks moves `2(n−1)/n · B` bytes in and out of each rank;
//!   its time is that over the link bandwidth (latency ignored: these messages are megabytes).
//! - Gradients are f32 (the master weights' dtype), all-reduced once per step over the
//!   data-parallel group. With expert parallelism of size `e`, each rank holds 1/e of the expert
//!   MLP weights and everything else whole, so its gradient bytes are `4·(P_other + P_expert/e)`.
//! - Expert (tensor) parallelism of DS-MoE's dense MLP: each MoE layer all-reduces its output
//!   `[tokens of the data-parallel rank, d]` in bf16 over the expert group in the forward, and the
//!   input gradient of the same size in the backward. These sit on the critical path; the gradient
//!   all-reduce can overlap the backward pass (two thirds of the compute) once buckets launch early.
//! - Compute: `6·P·T` FLOPs for the matrix products of every trained parameter (all experts: dense
//!   training) plus the causal attention scores, `6·L·seq·q_width` per token, at a given TFLOP/s.

use crate::config::Config;
use crate::Result;

/// One data- and expert-parallel layout of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CommEstimate {
    pub gpus: usize,
    pub expert_parallel: usize,
    pub data_parallel: usize,
    /// Gradient all-reduce bytes in and out of each rank per step.
    pub grad_bytes: f64,
    /// MoE output / input-gradient all-reduce bytes per rank per step (0 without expert parallelism).
    pub moe_bytes: f64,
    /// Seconds of compute per step at the given TFLOP/s per GPU.
    pub compute_s: f64,
}

/// Bytes over a ring all-reduce of `bytes` among `n` ranks, per rank.
fn ring(bytes: f64, n: usize) -> f64 {
    if n <= 1 {
        0.0
    } else {
        2.0 * (n - 1) as f64 / n as f64 * bytes
    }
}

/// The estimate for `gpus` GPUs with expert-parallel groups of `ep` (which must divide both the GPU
/// count and the expert count), at `tflops` per GPU.
pub fn estimate(config: &Config, gpus: usize, ep: usize, tflops: f64) -> Result<CommEstimate> {
    let m = &config.model;
    let counts = m.counts(None, None)?;
    let params = (counts.total + counts.embedding) as f64;
    let (moe_layers, expert_params) = (counts.moe_layers, counts.mlp_expert_total as f64);
    if ep == 0 || gpus % ep != 0 || (m.mlp.n_experts > 1 && m.mlp.n_experts % ep != 0) {
        return Err(crate::Error::config(&m.name, format!("expert-parallel size {ep} must divide {gpus} GPUs and {} experts", m.mlp.n_experts)));
    }
    let dp = gpus / ep;
    let tokens = (config.train.batch_size * config.train.seq_len * config.train.grad_accum) as f64;
    let grad_bytes = ring(4.0 * (params - expert_params + expert_params / ep as f64), dp);
    let moe_bytes = 2.0 * moe_layers as f64 * ring(2.0 * tokens / dp as f64 * m.d_model as f64, ep);
    let attention = 6.0 * (m.n_layers * config.train.seq_len * m.q_heads() * m.attention.head_dim) as f64;
    let flops = (6.0 * params + attention) * tokens;
    Ok(CommEstimate { gpus, expert_parallel: ep, data_parallel: dp, grad_bytes, moe_bytes, compute_s: flops / (gpus as f64 * tflops * 1e12) })
}
