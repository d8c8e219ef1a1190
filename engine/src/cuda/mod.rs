//! The CUDA backend: `CudaStorage` and its `BackendStorage` implementation over the CUDA driver API,
//! with kernels compiled at run time by NVRTC.
//!
//! The driver and NVRTC are loaded dynamically (through cudarc's `sys` / `result` layers), so the
//! same binary builds and runs on machines without CUDA: there `device_count()` is 0 and
//! `unavailable_reason()` says why. The pieces, one per file:
//!
//! - driver_lib.rs: the system's libcuda, or the emulated GPU (`DSMOE_DEVICE=emu`).
//! - device.rs: discovery; per device the primary context, one stream, its facts (`DeviceInfo`).
//! - alloc.rs: the caching allocator and its counters (`memory_stats`, `empty_cache`).
//! - nvrtc.rs / kernel_cache.rs / module.rs: compile to CUBIN for the device's architecture, cache
//!   on disk, load lazily per device, look each function up once.
//! - launch.rs: grids, argument passing, the launch itself.
//! - event.rs, profile.rs, nvtx.rs: timing (`DSMOE_PROFILE=1`) and Nsight ranges.
//! - storage.rs: `CudaStorage` and host transfers; ops/: one file per kernel family.
//!
//! Everything runs on one stream per device and nothing waits for the GPU except copies to the host
//! and explicit synchronisation, so a training step queues its kernels back to back.

mod alloc;
mod device;
mod driver_lib;
mod error;
mod event;
pub mod kernel_cache;
mod launch;
mod module;
pub mod nvrtc;
mod nvtx;
mod ops;
pub mod profile;
mod storage;

pub use alloc::{empty_cache, memory_stats, reset_peak, set_poison, MemoryStats};
pub use device::{device_count, device_info, stream_handle, synchronize, unavailable_reason, DeviceInfo};
pub(crate) use device::device;
pub use driver_lib::{emulator_requested, select_emulator, EMULATOR_LIB};
pub use event::Event;
pub use module::{kernel_logs, warm_up};
pub use storage::CudaStorage;
pub(crate) use ops::moe_sparse;
pub use ops::strided::force_wide_indices;

use crate::backend::*;
use crate::{DType, Device, Result};

/// For GPU tests: the first CUDA device (the emulated one under `DSMOE_DEVICE=emu`), or `None`
/// after printing the single line `skipped: no CUDA device (<reason>)`, so a test without a GPU
/// reports why it did nothing. With `DSMOE_REQUIRE_GPU=1`, or under `DSMOE_DEVICE=emu` (where a
/// device must exist), a missing device fails the test instead.
pub fn test_device() -> Option<Device> {
    if device_count() > 0 {
        return Some(Device::Cuda(0));
    }
    let why = format!("no CUDA device ({})", unavailable_reason().unwrap_or_else(|| "unknown reason".into()));
    let required = std::env::var("DSMOE_REQUIRE_GPU").is_ok_and(|v| v == "1") || emulator_requested().unwrap_or(true);
    assert!(!required, "a GPU test cannot skip here (DSMOE_REQUIRE_GPU=1 or DSMOE_DEVICE set): {why}");
    report_skip(&why);
    None
}

/// Prints `skipped: <why>` for a test that cannot run here. It writes to the process's stderr
/// directly, past the test harness's output capture, so a skipped test is visible in a plain
/// `cargo test` run instead of passing silently.
pub fn report_skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "skipped: {why}");
}

impl BackendStorage for CudaStorage {
    fn dtype(&self) -> DType {
        CudaStorage::dtype(self)
    }
    fn unary(&self, op: UnaryOp) -> Result<Self> {
        let _r = nvtx::range(c"unary");
        ops::elementwise::unary(self, op)
    }
    fn scalar(&self, op: ScalarOp, s: f64) -> Result<Self> {
        let _r = nvtx::range(c"scalar");
        ops::elementwise::scalar(self, op, s)
    }
    fn binary(&self, a_strides: &[usize], rhs: &Self, b_strides: &[usize], out_dims: &[usize], op: BinaryOp) -> Result<Self> {
        let _r = nvtx::range(c"binary");
        ops::elementwise::binary(self, a_strides, rhs, b_strides, out_dims, op)
    }
    fn matmul(&self, rhs: &Self, layout: &MatmulLayout) -> Result<Self> {
        let _r = nvtx::range(c"matmul");
        ops::matmul::matmul(self, rhs, layout)
    }
    fn reduce(&self, outer: usize, size: usize, inner: usize, op: ReduceOp) -> Result<Self> {
        let _r = nvtx::range(c"reduce");
        ops::reduce::reduce(self, outer, size, inner, op)
    }
    fn argmax(&self, outer: usize, size: usize, inner: usize) -> Result<Self> {
        let _r = nvtx::range(c"argmax");
        ops::reduce::argmax(self, outer, size, inner)
    }
    fn softmax(&self, rows: usize, cols: usize, log: bool) -> Result<Self> {
        let _r = nvtx::range(if log { c"log_softmax" } else { c"softmax" });
        ops::softmax::softmax(self, rows, cols, log)
    }
    fn rms_norm(&self, residual: Option<&Self>, weight: &Self, rows: usize, cols: usize, eps: f64) -> Result<(Self, Option<Self>)> {
        let _r = nvtx::range(c"rms_norm");
        ops::rms_norm::rms_norm(self, residual, weight, rows, cols, eps)
    }
    fn rms_norm_backward(&self, h: &Self, weight: &Self, rows: usize, cols: usize, eps: f64) -> Result<(Self, Self)> {
        let _r = nvtx::range(c"rms_norm backward");
        ops::rms_norm::rms_norm_backward(self, h, weight, rows, cols, eps)
    }
    fn cross_entropy(&self, targets: &Self, rows: usize, vocab: usize) -> Result<Self> {
        let _r = nvtx::range(c"cross_entropy");
        ops::softmax::cross_entropy(self, targets, rows, vocab)
    }
    fn cross_entropy_backward(&self, targets: &Self, g: &Self, rows: usize, vocab: usize) -> Result<Self> {
        let _r = nvtx::range(c"cross_entropy backward");
        ops::softmax::cross_entropy_backward(self, targets, g, rows, vocab)
    }
    fn index_select(&self, idx: &Self, n_idx: usize, row_len: usize) -> Result<Self> {
        let _r = nvtx::range(c"index_select");
        ops::index::index_select(self, idx, n_idx, row_len)
    }
    fn scatter_add_rows(&self, idx: &Self, n_idx: usize, row_len: usize, out_rows: usize) -> Result<Self> {
        let _r = nvtx::range(c"scatter_add_rows");
        ops::index::scatter_add_rows(self, idx, n_idx, row_len, out_rows)
    }
    fn gather_last(&self, idx: &Self, rows: usize, n: usize, k: usize) -> Result<Self> {
        let _r = nvtx::range(c"gather_last");
        ops::index::gather_last(self, idx, rows, n, k)
    }
    fn scatter_add_last(&self, idx: &Self, rows: usize, k: usize, n: usize) -> Result<Self> {
        let _r = nvtx::range(c"scatter_add_last");
        ops::index::scatter_add_last(self, idx, rows, k, n)
    }
    fn topk(&self, rows: usize, n: usize, k: usize) -> Result<(Self, Self)> {
        let _r = nvtx::range(c"topk");
        ops::topk::topk(self, rows, n, k)
    }
    fn cast(&self, dtype: DType) -> Result<Self> {
        let _r = nvtx::range(c"cast");
        ops::layout::cast(self, dtype)
    }
    fn concat(parts: &[&Self], outer: usize, block_lens: &[usize]) -> Result<Self> {
        let _r = nvtx::range(c"concat");
        ops::layout::concat(parts, outer, block_lens)
    }
    fn narrow(&self, outer: usize, block: usize, start: usize, len: usize) -> Result<Self> {
        let _r = nvtx::range(c"narrow");
        ops::layout::narrow(self, outer, block, start, len)
    }
    fn permute(&self, dims: &[usize], perm: &[usize]) -> Result<Self> {
        let _r = nvtx::range(c"permute");
        ops::layout::permute(self, dims, perm)
    }
    fn rope(&self, cos: &Self, sin: &Self, b: usize, t: usize, h: usize, d: usize, inverse: bool) -> Result<Self> {
        let _r = nvtx::range(c"rope");
        ops::rope::rope(self, cos, sin, b, t, h, d, inverse)
    }
    fn moe_dense_forward(&self, w1: &Self, w2: &Self, p: &Self, dims: &MoeDenseDims) -> Result<(Self, Self, Self)> {
        let _r = nvtx::range(c"moe_dense_forward");
        ops::moe_dense::forward(self, w1, w2, p, dims)
    }
    fn moe_dense_backward(&self, x: &Self, w1: &Self, w2: &Self, p: &Self, u: &Self, g: &Self, dims: &MoeDenseDims) -> Result<(Self, Self, Self, Self)> {
        let _r = nvtx::range(c"moe_dense_backward");
        ops::moe_dense::backward(self, x, w1, w2, p, u, g, dims)
    }
    fn gemm(&self, b: &Self, bias: Option<&Self>, residual: Option<&Self>, l: &GemmLayout) -> Result<Self> {
        let _r = nvtx::range(c"gemm");
        ops::gemm::gemm(self, b, bias, residual, l)
    }
    fn grouped_matmul(&self, b: &Self, counts: &Self, l: &GroupedLayout) -> Result<Self> {
        let _r = nvtx::range(c"grouped_matmul");
        ops::gemm::grouped_matmul(self, b, counts, l)
    }
    fn paged_attention(&self, k: &Self, v: &Self, table: &Self, lens: &Self, dims: &PagedAttentionDims) -> Result<Self> {
        let _r = nvtx::range(c"paged_attention");
        ops::paged_attention::paged_attention(self, k, v, table, lens, dims)
    }
    fn write_rows(&mut self, src: &Self, slots: &Self, n: usize, row_len: usize) -> Result<()> {
        let _r = nvtx::range(c"write_rows");
        ops::paged_attention::write_rows(self, src, slots, n, row_len)
    }
    fn adamw(&mut self, grad: &Self, m: &mut Self, v: &mut Self, hp: &AdamW) -> Result<()> {
        let _r = nvtx::range(c"adamw");
        ops::optim::adamw(self, grad, m, v, hp)
    }
    fn attention_forward(&self, k: &Self, v: &Self, seq_offsets: &[usize], dims: &AttentionDims) -> Result<(Self, Self)> {
        let _r = nvtx::range(c"attention_forward");
        ops::attention::forward(self, k, v, seq_offsets, dims)
    }
    fn attention_backward(&self, q: &Self, k: &Self, v: &Self, out: &Self, lse: &Self, seq_offsets: &[usize], dims: &AttentionDims) -> Result<(Self, Self, Self)> {
        let _r = nvtx::range(c"attention_backward");
        ops::attention::backward(self, q, k, v, out, lse, seq_offsets, dims)
    }
}
