//! Fused causal attention: on tensor cores (attention_sm80.cu) for bf16 / f16 at head dims 64, 96
//! and 128, else on CUDA cores (attention.cu). Either way the forward, then for the backward a dq
//! kernel (which also stores D = dO·out per row) followed by a dk/dv kernel, in stream order. The kernel files' headers have the algorithms; here: the kernel variant for the dtype and
//! head dim, the grids, the sequence offsets copied to the device.
//!
//! On compute capability 9.0 the tensor-core forward and dq are attention_sm90.cu and the dk/dv
//! kernel attention_bwd_sm90.cu (wgmma + TMA, built for sm_90a).
//! `DSMOE_ATTENTION_PATH=sm80` forces the sm_80 kernels there too: to compare the two, or to rule
//! one out when a result looks wrong.

use kernels_cuda::{ATTENTION, ATTENTION_BWD_SM90, ATTENTION_SM80, ATTENTION_SM90};

use super::gemm::{tensor_map, TensorMap};
use super::{float_suffix, nbytes};
use crate::backend::AttentionDims;
use crate::cuda::launch::{kernel_args, launch_with_smem, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::device::CudaDevice;
use crate::cuda::CudaStorage;
use crate::{CpuStorage, DType, Error, Result};

const OP: &str = "causal_attention";

/// Threads per block (the kernels' __launch_bounds__).
const THREADS: usize = 128;
/// Keys per block of attention_dkdv (one thread each).
const DKDV_KEYS: u32 = 64;
/// Query rows (positions x heads) attention_dkdv stages per step, at least one position.
const DKDV_ROWS: usize = 32;
/// attention.cu's KEY_TILE: keys staged per step by the forward and dq kernels.
const KEY_TILE: usize = 32;

/// Query rows (positions x heads) and threads of a block of the tensor-core forward
/// (attention_sm80.cu's BR and FWD_THREADS).
const TC_ROWS: usize = 64;
const TC_THREADS: u32 = 128;

/// The tensor-core kernels' name suffix (`bf16_d64`) where they apply: bf16 / f16, head dim 64, 96
/// or 128, at most 64 query heads per key/value head, compute capability 8.0 or above. Everything
/// else (f32, other head dims) takes the CUDA-core kernels.
fn tensor_core_variant(dev: &CudaDevice, dtype: DType, dims: &AttentionDims) -> Option<String> {
    let sfx = match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => return None,
    };
    let fits = matches!(dims.head_dim, 64 | 96 | 128) && dims.group() <= TC_ROWS && dev.info.compute_capability.0 >= 8;
    fits.then(|| format!("{sfx}_d{}", dims.head_dim))
}

/// Query rows and threads of a block of the Hopper forward (attention_sm90.cu's ROWS; two
/// consumer warpgroups and a producer warp).
const SM90_ROWS: usize = 128;
const SM90_THREADS: u32 = 288;
/// Keys per tile of the Hopper forward (its KEYS).
const SM90_KEYS: usize = 64;
/// Stages of its K / V ring (its STAGES): a pipelined consumer holds two tiles (P·V of one, S of
/// the next) while the producer loads a third.
const SM90_STAGES: usize = 3;

/// Whether the tensor-core kernels run as attention_sm90.cu and attention_bwd_sm90.cu:
/// on compute capability 9.0 unless `DSMOE_ATTENTION_PATH=sm80`.
fn hopper_path(dev: &CudaDevice) -> bool {
    dev.info.compute_capability == (9, 0) && !std::env::var("DSMOE_ATTENTION_PATH").is_ok_and(|p| p == "sm80")
}

/// attention_sm90.cu's shared memory (its Plan::SMEM): the Q tile of 128 rows and SM90_STAGES
/// stages of a K and a V tile of 64 rows, each row the head dim in 64-element (128-byte) chunks,
/// two barriers per stage, 1 KiB of alignment slack.
fn sm90_smem(dims: &AttentionDims) -> u32 {
    let chunk_rows = dims.head_dim.div_ceil(64) * 128;
    (chunk_rows * (SM90_ROWS + SM90_STAGES * 2 * SM90_KEYS) + SM90_STAGES * 2 * 8 + 1024) as u32
}

/// The Hopper forward: tensor maps over k and v ([N, Hkv, D] as a 3-D tensor, boxes of 64 columns
/// x 1 head x 64 keys), one block per (query tile of 128 / G positions x G heads, key/value head,
/// sequence).
#[allow(clippy::too_many_arguments)]
fn forward_sm90(q: &CudaStorage, k: &CudaStorage, v: &CudaStorage, out: &CudaStorage, lse: &CudaStorage, p: &Plan, dims: &AttentionDims, variant: &str, cost: Cost) -> Result<()> {
    let dev = q.dev();
    let hkv = dims.kv_heads as u64;
    let (map_k, map_v) = (kv_tensor_map(k, dims)?, kv_tensor_map(v, dims)?);
    let grid = Grid { grid: (p.max_len.div_ceil(SM90_ROWS / dims.group()) as u32, hkv as u32, p.seqs), block: (SM90_THREADS, 1, 1) };
    let (qp, op, lp, offp) = (q.ptr(), out.ptr(), lse.ptr(), p.offsets.ptr());
    let (hq, hkv, scale) = (dims.q_heads as u32, hkv as u32, dims.scale as f32);
    // SAFETY: attention_fwd90_<T>_d<D>(const T* q, T* out, float* lse, const u32* offsets, u32 hq,
    // u32 hkv, float scale, TensorMap map_k, TensorMap map_v) (maps 64-byte aligned, by value);
    // shapes as for the sm_80 forward (d = D exactly, G ≤ 64, so ppb = 128 / G ≥ 2); the maps
    // describe k and v, [N, hkv, D] of q's dtype, whose row strides (2·D bytes) are multiples of
    // 16; smem as sm90_smem, which the kernel's plan matches.
    unsafe {
        launch_with_smem(dev, &ATTENTION_SM90, &format!("attention_fwd90_{variant}"), grid, sm90_smem(dims), &mut kernel_args![&qp, &op, &lp, &offp, &hq, &hkv, &scale, &map_k, &map_v], cost)
    }
}

/// attention_sm90.cu's dq shared memory (Plan<D, 2>::SMEM): the Q and dO tiles, the forward's ring
/// and barriers, and D for each of the 128 rows; 384 threads (a producer warpgroup).
fn sm90_dq_smem(dims: &AttentionDims) -> u32 {
    let chunk_rows = dims.head_dim.div_ceil(64) * 128;
    (chunk_rows * (2 * SM90_ROWS + SM90_STAGES * 2 * SM90_KEYS) + SM90_STAGES * 2 * 8 + SM90_ROWS * 4 + 1024) as u32
}
const SM90_DQ_THREADS: u32 = 384;

/// The Hopper dq (and D = dO·out per row into `delta`): the forward's grid and K/V tensor maps.
#[allow(clippy::too_many_arguments)]
fn dq_sm90(q: &CudaStorage, k: &CudaStorage, v: &CudaStorage, out: &CudaStorage, d_out: &CudaStorage, lse: &CudaStorage, delta: &CudaStorage, dq: &CudaStorage, p: &Plan, dims: &AttentionDims, variant: &str, cost: Cost) -> Result<()> {
    let dev = q.dev();
    let (map_k, map_v) = (kv_tensor_map(k, dims)?, kv_tensor_map(v, dims)?);
    let grid = Grid { grid: (p.max_len.div_ceil(SM90_ROWS / dims.group()) as u32, dims.kv_heads as u32, p.seqs), block: (SM90_DQ_THREADS, 1, 1) };
    let (qp, gp, op, lp, dp, dqp, offp) = (q.ptr(), d_out.ptr(), out.ptr(), lse.ptr(), delta.ptr(), dq.ptr(), p.offsets.ptr());
    let (hq, hkv, scale) = (dims.q_heads as u32, dims.kv_heads as u32, dims.scale as f32);
    // SAFETY: attention_dq90_<T>_d<D>(const T* q, const T* dout, const T* out, const float* lse,
    // float* delta, T* dq, const u32* offsets, u32 hq, u32 hkv, float scale, TensorMap map_k,
    // TensorMap map_v); shapes and maps as for the Hopper forward (d = D, G ≤ 64); out and dout
    // [N, hq, D], lse and delta N·hq f32, dq N·hq·D; smem as sm90_dq_smem, which the kernel's plan
    // matches.
    unsafe {
        launch_with_smem(dev, &ATTENTION_SM90, &format!("attention_dq90_{variant}"), grid, sm90_dq_smem(dims), &mut kernel_args![&qp, &gp, &op, &lp, &dp, &dqp, &offp, &hq, &hkv, &scale, &map_k, &map_v], cost)
    }
}

/// A tensor map over k or v ([N, Hkv, D] as a 3-D tensor, boxes of 64 columns x 1 head x 64 keys).
fn kv_tensor_map(x: &CudaStorage, dims: &AttentionDims) -> Result<TensorMap> {
    let (d, hkv, tokens) = (dims.head_dim as u64, dims.kv_heads as u64, dims.tokens as u64);
    let elem = x.dtype().size_in_bytes() as u64;
    tensor_map(x.ptr(), x.dtype(), &[d, hkv, tokens], &[d * elem, hkv * d * elem], &[64, 1, 64]).map(TensorMap)
}

/// Keys per block and threads of the Hopper dk/dv kernel (attention_bwd_sm90.cu's KEYS: two
/// consumer warpgroups of 64 keys and a producer warpgroup) and its query rows per tile (QROWS).
const SM90_DKDV_KEYS: usize = 128;
const SM90_DKDV_THREADS: u32 = 384;
const SM90_DKDV_QROWS: usize = 64;

/// attention_bwd_sm90.cu's shared memory (its Plan::SMEM): the K and V tiles of 128 keys, two
/// stages of a Q and a dO tile of 64 rows (each row the head dim in 64-element, 128-byte chunks)
/// with their 64 lse and D values, five barriers, 1 KiB of alignment slack.
fn sm90_dkdv_smem(dims: &AttentionDims) -> u32 {
    let chunk_rows = dims.head_dim.div_ceil(64) * 128;
    (chunk_rows * (2 * SM90_DKDV_KEYS + 2 * 2 * SM90_DKDV_QROWS) + 2 * 2 * SM90_DKDV_QROWS * 4 + 5 * 8 + 1024) as u32
}

/// The Hopper dk/dv kernel: tensor maps over k and v as in the forward, and over q and dO as
/// [N, Hkv, G, D] (boxes of 64 columns x G heads x 1 x 64 / G positions: one query tile's packed
/// rows), one block per (128 keys, key/value head, sequence). `delta` must hold D = dO·out (the
/// dq kernel writes it, earlier on the same stream).
#[allow(clippy::too_many_arguments)]
fn dkdv_sm90(q: &CudaStorage, k: &CudaStorage, v: &CudaStorage, d_out: &CudaStorage, lse: &CudaStorage, delta: &CudaStorage, dk: &CudaStorage, dv: &CudaStorage, p: &Plan, dims: &AttentionDims, variant: &str, cost: Cost) -> Result<()> {
    let dev = q.dev();
    let (d, hkv, g, tokens) = (dims.head_dim as u64, dims.kv_heads as u64, dims.group() as u64, dims.tokens as u64);
    let elem = q.dtype().size_in_bytes() as u64;
    let positions = (SM90_DKDV_QROWS as u64 / g) as u32;
    let q_map = |x: &CudaStorage| tensor_map(x.ptr(), q.dtype(), &[d, g, hkv, tokens], &[d * elem, g * d * elem, hkv * g * d * elem], &[64, g as u32, 1, positions]).map(TensorMap);
    let (map_q, map_do, map_k, map_v) = (q_map(q)?, q_map(d_out)?, kv_tensor_map(k, dims)?, kv_tensor_map(v, dims)?);
    let grid = Grid { grid: (p.max_len.div_ceil(SM90_DKDV_KEYS) as u32, hkv as u32, p.seqs), block: (SM90_DKDV_THREADS, 1, 1) };
    let (lp, dp, dkp, dvp, offp) = (lse.ptr(), delta.ptr(), dk.ptr(), dv.ptr(), p.offsets.ptr());
    let (hq, hkv, scale) = (dims.q_heads as u32, hkv as u32, dims.scale as f32);
    // SAFETY: attention_dkdv90_<T>_d<D>(const float* lse, const float* delta, T* dk, T* dv,
    // const u32* offsets, u32 hq, u32 hkv, float scale, TensorMap map_q, map_do, map_k, map_v)
    // (maps 64-byte aligned, by value); d = D exactly and G ≤ 64 (tensor_core_variant), so a query
    // tile has 64 / G ≥ 1 positions and every box dimension is at most 256; the maps describe q,
    // dO [N, hq, D] and k, v [N, hkv, D] of q's dtype with strides that are multiples of 16 bytes;
    // lse and delta hold N·hq f32, dk and dv N·hkv·D; smem as sm90_dkdv_smem, which the kernel's
    // plan matches.
    unsafe {
        launch_with_smem(dev, &ATTENTION_BWD_SM90, &format!("attention_dkdv90_{variant}"), grid, sm90_dkdv_smem(dims), &mut kernel_args![&lp, &dp, &dkp, &dvp, &offp, &hq, &hkv, &scale, &map_q, &map_do, &map_k, &map_v], cost)
    }
}

/// One tensor-core block per (query tile of 64 / G positions x G heads, key/value head, sequence).
fn tc_query_grid(p: &Plan, dims: &AttentionDims) -> Grid {
    let ppb = TC_ROWS / dims.group();
    Grid { grid: (p.max_len.div_ceil(ppb) as u32, dims.kv_heads as u32, p.seqs), block: (TC_THREADS, 1, 1) }
}

/// Dynamic shared memory of `tiles` staged tiles of 64 rows of the head dim rounded up to 64 (the
/// kernels' swizzled rows) in 16-bit elements, then `row_stats` f32 arrays of 64 (lse, D).
fn tc_smem(tiles: usize, row_stats: usize, dims: &AttentionDims) -> u32 {
    ((tiles * dims.head_dim.next_multiple_of(64) * 2 + row_stats * 4) * TC_ROWS) as u32
}

/// The launch geometry shared by the three CUDA-core kernels.
struct Plan {
    /// Kernel-name suffix: dtype and register row width (`f32_d64`).
    variant: String,
    /// Device copy of the sequence offsets (u32).
    offsets: CudaStorage,
    seqs: u32,
    max_len: usize,
    /// Query positions per forward / dq block (times G heads = that block's rows).
    ppb: usize,
}

fn plan(q: &CudaStorage, seq_offsets: &[usize], dims: &AttentionDims) -> Result<Plan> {
    let sfx = float_suffix(OP, q.dtype())?;
    let width = match dims.head_dim {
        0..=32 => 32,
        33..=64 => 64,
        65..=128 => 128,
        d => return Err(Error::invalid(OP, format!("head dim {d} on CUDA (the kernels take head dims up to 128)"))),
    };
    let g = dims.group();
    if g > THREADS {
        return Err(Error::invalid(OP, format!("{g} query heads per key/value head on CUDA (at most {THREADS})")));
    }
    let max_len = seq_offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let seqs = seq_offsets.len().saturating_sub(1);
    if dims.tokens > u32::MAX as usize || dims.kv_heads > 65535 || seqs > 65535 {
        return Err(Error::invalid(OP, format!("{dims:?} over {seqs} sequences exceeds the kernels' u32 indices or the CUDA grid")));
    }
    let host: Vec<u32> = seq_offsets.iter().map(|&o| o as u32).collect();
    let offsets = CudaStorage::from_host(ordinal(q), &CpuStorage::U32(host))?;
    Ok(Plan { variant: format!("{sfx}_d{width}"), offsets, seqs: seqs as u32, max_len, ppb: (THREADS / g).max(1) })
}

fn ordinal(x: &CudaStorage) -> usize {
    match x.device() {
        crate::Device::Cuda(i) => i,
        crate::Device::Cpu => unreachable!("a CUDA storage lives on a CUDA device"),
    }
}

impl Plan {
    /// One block per (query tile of `ppb` positions, key/value head, sequence).
    fn row_grid(&self, dims: &AttentionDims) -> Grid {
        let threads = (self.ppb * dims.group()).div_ceil(32) * 32;
        Grid { grid: (self.max_len.div_ceil(self.ppb) as u32, dims.kv_heads as u32, self.seqs), block: (threads as u32, 1, 1) }
    }

    /// Shared memory of the forward and dq kernels: one key and one value tile in f32.
    fn kv_smem(dims: &AttentionDims) -> u32 {
        (2 * KEY_TILE * dims.head_dim * 4) as u32
    }

    /// FLOPs of the two products over the causal half of every sequence's scores.
    fn flops(&self, seq_offsets: &[usize], dims: &AttentionDims) -> u64 {
        let pairs: usize = seq_offsets.windows(2).map(|w| (w[1] - w[0]) * (w[1] - w[0] + 1) / 2).sum();
        (4 * pairs * dims.q_heads * dims.head_dim) as u64
    }
}

pub(crate) fn forward(q: &CudaStorage, k: &CudaStorage, v: &CudaStorage, seq_offsets: &[usize], dims: &AttentionDims) -> Result<(CudaStorage, CudaStorage)> {
    let dev = q.dev();
    let out = CudaStorage::uninit(dev, q.dtype(), q.len())?;
    let lse = CudaStorage::uninit(dev, DType::F32, dims.tokens * dims.q_heads)?;
    if out.is_empty() {
        return Ok((out, lse));
    }
    let p = plan(q, seq_offsets, dims)?;
    let (qp, kp, vp, op, lp, offp) = (q.ptr(), k.ptr(), v.ptr(), out.ptr(), lse.ptr(), p.offsets.ptr());
    let (hq, hkv, d, ppb, scale) = (dims.q_heads as u32, dims.kv_heads as u32, dims.head_dim as u32, p.ppb as u32, dims.scale as f32);
    let cost = Cost { bytes: nbytes(2 * q.len() + 2 * k.len(), q.dtype()) + 4 * lse.len() as u64, flops: p.flops(seq_offsets, dims) };
    if let Some(variant) = tensor_core_variant(dev, q.dtype(), dims) {
        if hopper_path(dev) {
            forward_sm90(q, k, v, &out, &lse, &p, dims, &variant, cost)?;
            return Ok((out, lse));
        }
        let (grid, smem) = (tc_query_grid(&p, dims), tc_smem(5, 0, dims));
        // SAFETY: attention_fwd_tc_<T>_d<D>(const T* q, const T* k, const T* v, T* out, float* lse,
        // const u32* offsets, u32 hq, u32 hkv, float scale); shapes as below with d = D exactly and
        // G ≤ 64 (tensor_core_forward), so every block has ppb = 64 / G ≥ 1 positions; smem holds
        // the Q tile and two stages of K and V tiles of 64 rows of D rounded up to 64 elements.
        unsafe { launch_with_smem(dev, &ATTENTION_SM80, &format!("attention_fwd_tc_{variant}"), grid, smem, &mut kernel_args![&qp, &kp, &vp, &op, &lp, &offp, &hq, &hkv, &scale], cost)? };
        return Ok((out, lse));
    }
    let entry = format!("attention_fwd_{}", p.variant);
    // SAFETY: attention_fwd_<T>_d<W>(const T* q, const T* k, const T* v, T* out, float* lse,
    // const u32* offsets, u32 hq, u32 hkv, u32 d, u32 ppb, float scale); the op layer checked q
    // [N, hq, d] and k, v [N, hkv, d], and that the offsets rise from 0 to N; out holds N·hq·d, lse
    // N·hq, the offsets seqs + 1 entries; d ≤ W (plan); the grid covers every sequence's positions.
    unsafe {
        launch_with_smem(dev, &ATTENTION, &entry, p.row_grid(dims), Plan::kv_smem(dims), &mut kernel_args![&qp, &kp, &vp, &op, &lp, &offp, &hq, &hkv, &d, &ppb, &scale], cost)?
    };
    Ok((out, lse))
}

#[allow(clippy::too_many_arguments)] // mirrors BackendStorage::attention_backward
pub(crate) fn backward(
    d_out: &CudaStorage,
    q: &CudaStorage,
    k: &CudaStorage,
    v: &CudaStorage,
    out: &CudaStorage,
    lse: &CudaStorage,
    seq_offsets: &[usize],
    dims: &AttentionDims,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    if lse.dtype() != DType::F32 {
        return Err(Error::DType { op: OP, dtype: lse.dtype(), detail: ": the saved lse must be f32 on CUDA".into() });
    }
    let dev = q.dev();
    let dtype = q.dtype();
    let dq = CudaStorage::uninit(dev, dtype, q.len())?;
    let dk = CudaStorage::uninit(dev, dtype, k.len())?;
    let dv = CudaStorage::uninit(dev, dtype, v.len())?;
    if dq.is_empty() {
        return Ok((dq, dk, dv));
    }
    let delta = CudaStorage::uninit(dev, DType::F32, lse.len())?;
    let p = plan(q, seq_offsets, dims)?;
    let (qp, kp, vp, op, gp, lp, dp, offp) = (q.ptr(), k.ptr(), v.ptr(), out.ptr(), d_out.ptr(), lse.ptr(), delta.ptr(), p.offsets.ptr());
    let (dqp, dkp, dvp) = (dq.ptr(), dk.ptr(), dv.ptr());
    let (hq, hkv, d, ppb, scale) = (dims.q_heads as u32, dims.kv_heads as u32, dims.head_dim as u32, p.ppb as u32, dims.scale as f32);
    let flops = p.flops(seq_offsets, dims);
    let cost = Cost { bytes: nbytes(4 * q.len() + 2 * k.len(), dtype) + 8 * lse.len() as u64, flops: 3 * flops / 2 };
    if let Some(variant) = tensor_core_variant(dev, dtype, dims) {
        let hopper = hopper_path(dev);
        if hopper {
            dq_sm90(q, k, v, out, d_out, lse, &delta, &dq, &p, dims, &variant, cost)?;
        } else {
            // SAFETY: attention_dq_tc_<T>_d<D>(const T* q, const T* k, const T* v, const T* out,
            // const T* dout, const float* lse, float* delta, T* dq, const u32* offsets, u32 hq,
            // u32 hkv, float scale); shapes as for the CUDA-core kernels below with d = D and G ≤ 64
            // (tensor_core_variant); smem holds the Q and dO tiles, two stages of K and V tiles and
            // the rows' D.
            unsafe {
                launch_with_smem(dev, &ATTENTION_SM80, &format!("attention_dq_tc_{variant}"), tc_query_grid(&p, dims), tc_smem(6, 1, dims), &mut kernel_args![&qp, &kp, &vp, &op, &gp, &lp, &dp, &dqp, &offp, &hq, &hkv, &scale], cost)?
            };
        }
        let cost = Cost { bytes: nbytes(2 * q.len() + 4 * k.len(), dtype) + 8 * lse.len() as u64, flops: 2 * flops };
        if hopper {
            dkdv_sm90(q, k, v, d_out, lse, &delta, &dk, &dv, &p, dims, &variant, cost)?;
            return Ok((dq, dk, dv));
        }
        let grid = Grid { grid: (p.max_len.div_ceil(TC_ROWS) as u32, hkv, p.seqs), block: (TC_THREADS, 1, 1) };
        // SAFETY: attention_dkdv_tc_<T>_d<D>(const T* q, const T* k, const T* v, const T* dout,
        // const float* lse, const float* delta, T* dk, T* dv, const u32* offsets, u32 hq, u32 hkv,
        // float scale); one block per 64 keys of a key/value head and sequence; delta was written
        // by the dq kernel before this launch (same stream); smem holds the K and V tiles and two
        // stages of the Q and dO tiles and of the rows' lse and D.
        unsafe {
            launch_with_smem(dev, &ATTENTION_SM80, &format!("attention_dkdv_tc_{variant}"), grid, tc_smem(6, 4, dims), &mut kernel_args![&qp, &kp, &vp, &gp, &lp, &dp, &dkp, &dvp, &offp, &hq, &hkv, &scale], cost)?
        };
        return Ok((dq, dk, dv));
    }
    // SAFETY: attention_dq_<T>_d<W>(const T* q, const T* k, const T* v, const T* out, const T* dout,
    // const float* lse, float* delta, T* dq, const u32* offsets, u32 hq, u32 hkv, u32 d, u32 ppb,
    // float scale); shapes as in `forward` (op layer), out and dout [N, hq, d], lse and delta N·hq
    // f32, dq N·hq·d; d ≤ W.
    unsafe {
        launch_with_smem(
            dev,
            &ATTENTION,
            &format!("attention_dq_{}", p.variant),
            p.row_grid(dims),
            Plan::kv_smem(dims),
            &mut kernel_args![&qp, &kp, &vp, &op, &gp, &lp, &dp, &dqp, &offp, &hq, &hkv, &d, &ppb, &scale],
            cost,
        )?
    };
    let g = dims.group();
    let qpb = (DKDV_ROWS / g).max(1);
    let rows = qpb * g;
    let smem = (4 * (2 * rows * dims.head_dim + 2 * rows)) as u32;
    let grid = Grid { grid: (p.max_len.div_ceil(DKDV_KEYS as usize) as u32, hkv, p.seqs), block: (DKDV_KEYS, 1, 1) };
    let qpb = qpb as u32;
    let cost = Cost { bytes: nbytes(2 * q.len() + 4 * k.len(), dtype) + 8 * lse.len() as u64, flops: 2 * flops };
    // SAFETY: attention_dkdv_<T>_d<W>(const T* q, const T* k, const T* v, const T* dout,
    // const float* lse, const float* delta, T* dk, T* dv, const u32* offsets, u32 hq, u32 hkv,
    // u32 d, u32 qpb, float scale); shapes as above, dk and dv N·hkv·d; delta was written by the
    // dq kernel before this launch (same stream); smem holds qpb·G staged rows of q and dO plus
    // their lse and D.
    unsafe {
        launch_with_smem(
            dev,
            &ATTENTION,
            &format!("attention_dkdv_{}", p.variant),
            grid,
            smem,
            &mut kernel_args![&qp, &kp, &vp, &gp, &lp, &dp, &dkp, &dvp, &offp, &hq, &hkv, &d, &qpb, &scale],
            cost,
        )?
    };
    Ok((dq, dk, dv))
}
