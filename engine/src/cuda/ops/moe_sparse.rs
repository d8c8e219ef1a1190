//! Sparse MoE on CUDA: routing and permutation (moe_route.cu), the grouped gather-GEMM-scatter
//! forward and its training backward (moe_sparse.cu), the decode GEMVs (moe_decode.cu). Nothing
//! here reads device memory back: every size a kernel needs from the routing (expert offsets,
//! list length) it reads on the device, and grids are sized from host-known bounds, so a layer can
//! be captured in a CUDA graph.

use kernels_cuda::{MOE_DECODE, MOE_ROUTE, MOE_SPARSE};

use super::{float_suffix, nbytes};
use crate::cuda::launch::{kernel_args, launch, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::ops::moe_sparse::{RouteMode, SparseDims};
use crate::{DType, Error, Result};

/// Slots per chunk of the counting sort (CHUNK in moe_route.cu).
const CHUNK: usize = 256;
/// Tile of the grouped GEMM (BM = BN in moe_sparse.cu).
const TILE: usize = 64;
const GEMM_THREADS: u32 = 128;
/// W1 rows per block and W2 columns per block / reduction split of the decode kernels (moe_decode.cu).
const UP_WARPS: usize = 8;
const DOWN_COLS_PER_BLOCK: usize = 256 * 4;
const DOWN_SPLIT: usize = 32;

fn fixed(grid: (u32, u32, u32), threads: u32) -> Grid {
    Grid { grid, block: (threads, 1, 1) }
}

fn grid_dim(op: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n.max(1)).ok().filter(|&v| v <= i32::MAX as u32).ok_or_else(|| Error::invalid(op, format!("{n} blocks exceed the CUDA grid limit")))
}

/// (experts, weights, mask, counts), see `ops::moe_route`.
pub(crate) fn route(probs: &CudaStorage, tokens: usize, n: usize, mode: RouteMode, renormalise: bool) -> Result<[CudaStorage; 4]> {
    let sfx = float_suffix("moe_route", probs.dtype())?;
    let dev = probs.dev();
    let k_max = mode.k_max();
    let experts = CudaStorage::uninit(dev, DType::U32, tokens * k_max)?;
    let weights = CudaStorage::uninit(dev, probs.dtype(), tokens * k_max)?;
    let mask = CudaStorage::uninit(dev, probs.dtype(), tokens * k_max)?;
    let counts = CudaStorage::uninit(dev, DType::U32, tokens)?;
    if tokens == 0 {
        return Ok([experts, weights, mask, counts]);
    }
    let (pp, t, nn, km) = (probs.ptr(), tokens as u64, n as u32, k_max as u32);
    let warps = Grid::linear(dev, t * 32);
    let read = nbytes(tokens * n, probs.dtype());
    // Threshold-then-K: the batch-average count goes to a device word the routing kernel reads.
    let batch_k = match mode {
        RouteMode::ThresholdK { eps, .. } => {
            let above = CudaStorage::uninit(dev, DType::U32, tokens)?;
            let k = CudaStorage::uninit(dev, DType::U32, 1)?;
            let (ap, kp, e) = (above.ptr(), k.ptr(), eps as f32);
            // SAFETY: moe_threshold_count_<T>(const T* probs, u32* above, u64 tokens, u32 n, float eps);
            // probs holds tokens·n elements, above tokens.
            unsafe { launch(dev, &MOE_ROUTE, &format!("moe_threshold_count_{sfx}"), warps, &mut kernel_args![&pp, &ap, &t, &nn, &e], Cost { bytes: read, flops: 0 })? };
            // SAFETY: moe_batch_k(const u32* above, u64 tokens, u32 k_max, u32* k_out); one 256-thread block.
            unsafe { launch(dev, &MOE_ROUTE, "moe_batch_k", fixed((1, 1, 1), 256), &mut kernel_args![&ap, &t, &km, &kp], Cost { bytes: 4 * t, flops: 0 })? };
            Some((above, k))
        }
        _ => None,
    };
    let (code, eps) = match mode {
        RouteMode::Threshold { eps, .. } => (1i32, eps as f32),
        _ => (0i32, 0.0f32),
    };
    let (ep, wp, mp, cp, renorm) = (experts.ptr(), weights.ptr(), mask.ptr(), counts.ptr(), renormalise as i32);
    let kdev: u64 = batch_k.as_ref().map_or(0, |(_, k)| k.ptr());
    let cost = Cost { bytes: read + nbytes(3 * tokens * k_max, probs.dtype()) + 4 * t, flops: 0 };
    // SAFETY: moe_route_<T>(const T* probs, u32* experts, T* weights, T* mask, u32* counts, u64 tokens,
    // u32 n, u32 k_max, int mode, float eps, int renormalise, const u32* k_device); probs holds
    // tokens·n elements, the outputs tokens·k_max (counts tokens); k_max <= min(n, 32), n <= 2048
    // (op layer); k_device is null or a live device word.
    unsafe {
        launch(dev, &MOE_ROUTE, &format!("moe_route_{sfx}"), warps, &mut kernel_args![&pp, &ep, &wp, &mp, &cp, &t, &nn, &km, &code, &eps, &renorm, &kdev], cost)?
    };
    drop(batch_k); // the allocator reuses it only for work queued after this launch
    Ok([experts, weights, mask, counts])
}

/// (offsets, sorted_slots, slot_pos, expert_counts, dropped), see `ops::moe_permute`.
pub(crate) fn permute(experts: &CudaStorage, counts: &CudaStorage, tokens: usize, k_max: usize, n: usize, capacity: u32) -> Result<[CudaStorage; 5]> {
    const OP: &str = "moe_permute";
    let dev = experts.dev();
    let slots = tokens * k_max;
    let chunks = slots.div_ceil(CHUNK);
    let u32s = |len: usize| CudaStorage::uninit(dev, DType::U32, len);
    let (offsets, sorted, slot_pos, totals, dropped) = (u32s(n + 1)?, u32s(slots)?, u32s(slots)?, u32s(n)?, u32s(1)?);
    let (rank, hist, base) = (u32s(slots)?, u32s(chunks * n)?, u32s(chunks * n)?);
    let (ep, cp, rp, hp, bp, tp, op, dp, sp, pp) = (experts.ptr(), counts.ptr(), rank.ptr(), hist.ptr(), base.ptr(), totals.ptr(), offsets.ptr(), dropped.ptr(), sorted.ptr(), slot_pos.ptr());
    let (t, km, nn, nch) = (tokens as u64, k_max as u32, n as u32, chunks as u32);
    let slot_bytes = 4 * slots as u64;
    if chunks > 0 {
        // SAFETY: moe_chunk_rank(const u32* experts, const u32* counts, u32* rank_in_chunk, u32* chunk_hist,
        // u64 tokens, u32 k_max, u32 n); one 32-thread block per chunk; n <= 2048 (its shared histogram);
        // experts and rank hold slots, chunk_hist chunks·n words; experts < n (routing or op layer).
        unsafe { launch(dev, &MOE_ROUTE, "moe_chunk_rank", fixed((grid_dim(OP, chunks)?, 1, 1), 32), &mut kernel_args![&ep, &cp, &rp, &hp, &t, &km, &nn], Cost { bytes: 2 * slot_bytes, flops: 0 })? };
    }
    // SAFETY: moe_expert_scan(const u32* chunk_hist, u32* chunk_base, u32* expert_total, u32 chunks, u32 n);
    // one 32-thread block per expert; hist and base hold chunks·n words, totals n.
    unsafe { launch(dev, &MOE_ROUTE, "moe_expert_scan", fixed((nn, 1, 1), 32), &mut kernel_args![&hp, &bp, &tp, &nch, &nn], Cost { bytes: 8 * (chunks * n) as u64, flops: 0 })? };
    // SAFETY: moe_offsets(const u32* expert_total, u32* offsets, u32* dropped, u32 n, u32 capacity);
    // one 32-thread block; offsets holds n + 1 words.
    unsafe { launch(dev, &MOE_ROUTE, "moe_offsets", fixed((1, 1, 1), 32), &mut kernel_args![&tp, &op, &dp, &nn, &capacity], Cost { bytes: 8 * n as u64, flops: 0 })? };
    if slots > 0 {
        // SAFETY: moe_scatter_slots(const u32* experts, const u32* rank_in_chunk, const u32* chunk_base,
        // const u32* offsets, u32* sorted_slots, u32* slot_pos, u64 tokens, u32 k_max, u32 n, u32 capacity);
        // every position written is < offsets[n] <= slots.
        unsafe {
            launch(dev, &MOE_ROUTE, "moe_scatter_slots", Grid::linear(dev, slots as u64), &mut kernel_args![&ep, &rp, &bp, &op, &sp, &pp, &t, &km, &nn, &capacity], Cost { bytes: 5 * slot_bytes, flops: 0 })?
        };
    }
    Ok([offsets, sorted, slot_pos, totals, dropped])
}

/// Mirrors `GroupedGemm` in moe_sparse.cu (repr(C), 144 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct GroupedGemm {
    a: u64,
    b: u64,
    c: u64,
    c_pre: u64,
    scale: u64,
    offsets: u64,
    sorted_slots: u64,
    n: u64,
    k: u64,
    m: u64,
    lda: u64,
    ldb: u64,
    ldc: u64,
    b_group_stride: u64,
    p_max: u64,
    groups: u32,
    k_max: u32,
    a_rows: i32,
    b_rows: i32,
    epi: i32,
    scale_b: i32,
}

/// Epilogue and row-source codes (EpiCode, RowCode in moe_sparse.cu).
const EPI_GELU: i32 = 0;
const EPI_STORE: i32 = 1;
const EPI_SCATTER_SCALE: i32 = 2;
const EPI_SCATTER: i32 = 3;
const ROW_SORTED: i32 = 0;
const ROW_TOKEN: i32 = 1;

/// The list geometry every sparse kernel takes.
struct List<'a> {
    offsets: &'a CudaStorage,
    sorted: &'a CudaStorage,
    slot_pos: &'a CudaStorage,
    dims: SparseDims,
}

impl List<'_> {
    fn problem(&self, a: u64, b: u64, c: u64, n: usize, k: usize, epi: i32, a_rows: i32) -> GroupedGemm {
        let SparseDims { d, f, n_experts, k_max, .. } = self.dims;
        GroupedGemm {
            a,
            b,
            c,
            c_pre: 0,
            scale: 0,
            offsets: self.offsets.ptr(),
            sorted_slots: self.sorted.ptr(),
            n: n as u64,
            k: k as u64,
            m: 0,
            lda: k as u64,
            ldb: d as u64,
            ldc: n as u64,
            b_group_stride: (f * d) as u64,
            p_max: self.dims.slots() as u64,
            groups: n_experts as u32,
            k_max: k_max as u32,
            a_rows,
            b_rows: ROW_SORTED,
            epi,
            scale_b: 0,
        }
    }

    /// An M-grouped GEMM over the list: `nt` reads W as [N, K] rows (x·W1ᵀ, dy·W2ᵀ), else as [K, N].
    fn gemm_m(&self, sfx: &str, nt: bool, p: GroupedGemm, dtype: DType) -> Result<()> {
        let dev = self.offsets.dev();
        let row_tiles = self.dims.slots().div_ceil(TILE) + self.dims.n_experts;
        let blocks = row_tiles * (p.n as usize).div_ceil(TILE);
        let (rows, n, k) = (self.dims.slots(), p.n as usize, p.k as usize);
        let cost = Cost { flops: 2 * (rows * n * k) as u64, bytes: nbytes(self.dims.n_experts * n * k + rows * (n + k), dtype) };
        let entry = format!("moe_gemm_{}_{sfx}", if nt { "nt" } else { "nn" });
        // SAFETY: moe_gemm_{nt,nn}_<T>(GroupedGemm p) with the struct mirrored above; A holds the
        // gathered (tokens x k) or list (slots x k) rows, B n_experts slabs of n x k, C (and c_pre)
        // slots rows of n; every row index comes from offsets / sorted_slots built by moe_permute.
        unsafe { launch(dev, &MOE_SPARSE, &entry, fixed((grid_dim("moe_sparse_mlp", blocks)?, 1, 1), GEMM_THREADS), &mut kernel_args![&p], cost) }
    }
}

fn list<'a>(offsets: &'a CudaStorage, sorted: &'a CudaStorage, slot_pos: &'a CudaStorage, dims: &SparseDims) -> List<'a> {
    List { offsets, sorted, slot_pos, dims: *dims }
}

/// y[t] = Σ over kept slots (and `splits` partial sums each) of `rows`, in a fixed order.
fn combine(rows: &CudaStorage, l: &List, splits: usize, dtype: DType) -> Result<CudaStorage> {
    let sfx = float_suffix("moe_sparse_mlp", dtype)?;
    let dev = rows.dev();
    let SparseDims { tokens, d, k_max, .. } = l.dims;
    let y = CudaStorage::uninit(dev, dtype, tokens * d)?;
    if tokens * d == 0 {
        return Ok(y);
    }
    let (rp, sp, yp, t, km, dd, sl) = (rows.ptr(), l.slot_pos.ptr(), y.ptr(), tokens as u64, k_max as u32, d as u64, splits as u32);
    let grid = Grid::rows_by_cols(dev, t, dd);
    let cost = Cost { bytes: nbytes(tokens * k_max * d * splits, rows.dtype()) + nbytes(tokens * d, dtype), flops: (tokens * k_max * d * splits) as u64 };
    if splits == 1 {
        // SAFETY: moe_combine_<T>(const T* rows, const u32* slot_pos, T* y, u64 tokens, u32 k_max, u64 d);
        // rows holds tokens·k_max rows of d, written for every slot whose slot_pos is not DROPPED.
        unsafe { launch(dev, &MOE_SPARSE, &format!("moe_combine_{sfx}"), grid, &mut kernel_args![&rp, &sp, &yp, &t, &km, &dd], cost)? };
    } else {
        // SAFETY: moe_combine_splits_<T>(const float* rows, const u32* slot_pos, T* y, u64 tokens, u32 k_max,
        // u64 d, u32 splits); rows holds splits x tokens·k_max rows of d f32.
        unsafe { launch(dev, &MOE_SPARSE, &format!("moe_combine_splits_{sfx}"), grid, &mut kernel_args![&rp, &sp, &yp, &t, &km, &dd, &sl], cost)? };
    }
    Ok(y)
}

/// The decode path applies when rows are whole 16-byte vectors.
fn decode_fits(d: usize, dtype: DType) -> bool {
    d % 8 == 0 && dtype != DType::F64
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(x: &CudaStorage, w1: &CudaStorage, w2: &CudaStorage, weights: &CudaStorage, offsets: &CudaStorage, sorted: &CudaStorage, slot_pos: &CudaStorage, dims: &SparseDims, decode: bool, save: bool) -> Result<(CudaStorage, Option<(CudaStorage, CudaStorage)>)> {
    let dtype = x.dtype();
    let sfx = float_suffix("moe_sparse_mlp", dtype)?;
    let dev = x.dev();
    let l = list(offsets, sorted, slot_pos, dims);
    let SparseDims { d, f, n_experts, k_max, tokens } = *dims;
    let slots = dims.slots();
    let h = CudaStorage::uninit(dev, dtype, slots * f)?;
    let u = if save { Some(CudaStorage::uninit(dev, dtype, slots * f)?) } else { None };
    let up = u.as_ref().map_or(0, |u| u.ptr());
    if decode && decode_fits(d, dtype) && tokens <= crate::ops::moe_sparse::DECODE_MAX_TOKENS {
        let splits = f.div_ceil(DOWN_SPLIT);
        let partial = CudaStorage::uninit(dev, DType::F32, splits * slots * d)?;
        if slots > 0 {
            let (xp, w1p, w2p, wp, op, sp, hp, pp) = (x.ptr(), w1.ptr(), w2.ptr(), weights.ptr(), offsets.ptr(), sorted.ptr(), h.ptr(), partial.ptr());
            let (km, dd, ff, sl) = (k_max as u32, d as u64, f as u64, slots as u64);
            let ne = grid_dim("moe_sparse_mlp", n_experts)?;
            let weight_bytes = nbytes(tokens.min(n_experts) * k_max * f * d, dtype);
            let flops = 2 * (slots * f * d) as u64;
            // SAFETY: moe_decode_up_<T>(const T* x, const T* w1, const u32* offsets, const u32* sorted_slots,
            // u32 k_max, T* h, T* u, u64 d, u64 f); tokens <= 16 so an expert has <= 16 entries; d % 8 == 0
            // and buffers from the allocator are 16-byte aligned (checked above); u may be null.
            unsafe {
                launch(dev, &MOE_DECODE, &format!("moe_decode_up_{sfx}"), fixed((ne, grid_dim("moe_sparse_mlp", f.div_ceil(UP_WARPS))?, 1), 256), &mut kernel_args![&xp, &w1p, &op, &sp, &km, &hp, &up, &dd, &ff], Cost { bytes: weight_bytes, flops })?
            };
            let grid = (ne, grid_dim("moe_sparse_mlp", d.div_ceil(DOWN_COLS_PER_BLOCK))?, grid_dim("moe_sparse_mlp", splits)?);
            // SAFETY: moe_decode_down_<T>(const T* h, const T* w2, const T* weights, const u32* offsets,
            // const u32* sorted_slots, float* partial, u64 slots, u64 d, u64 f); partial holds splits x slots
            // rows of d f32, one z-block per split.
            unsafe { launch(dev, &MOE_DECODE, &format!("moe_decode_down_{sfx}"), fixed(grid, 256), &mut kernel_args![&hp, &w2p, &wp, &op, &sp, &pp, &sl, &dd, &ff], Cost { bytes: weight_bytes, flops })? };
        }
        let y = combine(&partial, &l, splits, dtype)?;
        return Ok((y, u.map(|u| (u, h))));
    }
    let rows = CudaStorage::uninit(dev, dtype, slots * d)?;
    if slots > 0 {
        let mut p1 = l.problem(x.ptr(), w1.ptr(), h.ptr(), f, d, EPI_GELU, ROW_TOKEN);
        p1.c_pre = up;
        l.gemm_m(sfx, true, p1, dtype)?;
        let mut p2 = l.problem(h.ptr(), w2.ptr(), rows.ptr(), d, f, EPI_SCATTER_SCALE, ROW_SORTED);
        p2.scale = weights.ptr();
        l.gemm_m(sfx, false, p2, dtype)?;
    }
    let y = combine(&rows, &l, 1, dtype)?;
    Ok((y, u.map(|u| (u, h))))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(dy: &CudaStorage, x: &CudaStorage, w1: &CudaStorage, w2: &CudaStorage, weights: &CudaStorage, offsets: &CudaStorage, sorted: &CudaStorage, slot_pos: &CudaStorage, u: &CudaStorage, h: &CudaStorage, dims: &SparseDims) -> Result<[CudaStorage; 4]> {
    let dtype = x.dtype();
    let sfx = float_suffix("moe_sparse_mlp_backward", dtype)?;
    let dev = x.dev();
    let l = list(offsets, sorted, slot_pos, dims);
    let SparseDims { d, f, n_experts, .. } = *dims;
    let slots = dims.slots();
    let dg = CudaStorage::uninit(dev, dtype, slots * f)?;
    let dweights = CudaStorage::zeros(dev, dtype, slots)?;
    let dx_rows = CudaStorage::uninit(dev, dtype, slots * d)?;
    let dw1 = CudaStorage::uninit(dev, dtype, n_experts * f * d)?;
    let dw2 = CudaStorage::uninit(dev, dtype, n_experts * f * d)?;
    if slots > 0 {
        // dG = dy[tok]·W2_eᵀ (W2_e read as [f, d] = [N, K] rows).
        l.gemm_m(sfx, true, l.problem(dy.ptr(), w2.ptr(), dg.ptr(), f, d, EPI_STORE, ROW_TOKEN), dtype)?;
        let (gp, hp, upp, wp, op, sp, dwp, ff, ne) = (dg.ptr(), h.ptr(), u.ptr(), weights.ptr(), offsets.ptr(), sorted.ptr(), dweights.ptr(), f as u64, n_experts as u32);
        let cost = Cost { bytes: nbytes(4 * slots * f, dtype), flops: 12 * (slots * f) as u64 };
        // SAFETY: moe_grad_act_<T>(T* dg, const T* h, const T* u, const T* w, const u32* sorted_slots,
        // const u32* offsets, u32 groups, T* dweights, u64 f); dg, h, u hold slots rows of f, w and
        // dweights slots elements; rows past offsets[groups] are not touched.
        unsafe { launch(dev, &MOE_SPARSE, &format!("moe_grad_act_{sfx}"), Grid::linear(dev, slots as u64 * 32), &mut kernel_args![&gp, &hp, &upp, &wp, &sp, &op, &ne, &dwp, &ff], cost)? };
        // dX rows = dU·W1_e (W1_e read as [f, d] = [K, N]), scattered to their slots.
        l.gemm_m(sfx, false, l.problem(dg.ptr(), w1.ptr(), dx_rows.ptr(), d, f, EPI_SCATTER, ROW_SORTED), dtype)?;
    }
    // dW1_e = dU_eᵀ·x[tok], dW2_e = H_eᵀ·(w ⊙ dy[tok]): K-grouped over each expert's entries.
    for (a, b, out, scale) in [(dg.ptr(), x.ptr(), &dw1, false), (h.ptr(), dy.ptr(), &dw2, true)] {
        let p = GroupedGemm {
            m: f as u64,
            lda: f as u64,
            ldb: d as u64,
            ldc: d as u64,
            b_rows: ROW_TOKEN,
            scale: weights.ptr(),
            scale_b: scale as i32,
            ..l.problem(a, b, out.ptr(), d, 0, EPI_STORE, ROW_SORTED)
        };
        let tiles = f.div_ceil(TILE) * d.div_ceil(TILE);
        let cost = Cost { flops: 2 * (slots * f * d) as u64, bytes: nbytes(n_experts * f * d + slots * (f + d), dtype) };
        // SAFETY: moe_gemm_dw_<T>(GroupedGemm p): blockIdx.z is the expert (< n_experts); A holds slots
        // rows of f (list order), B tokens rows of d (gathered by token), scale slots weights; C holds
        // n_experts slabs of f x d, every element written (zeros for experts without entries).
        unsafe {
            launch(dev, &MOE_SPARSE, &format!("moe_gemm_dw_{sfx}"), fixed((grid_dim("moe_sparse_mlp_backward", tiles)?, 1, n_experts as u32), GEMM_THREADS), &mut kernel_args![&p], cost)?
        };
    }
    let dx = combine(&dx_rows, &l, 1, dtype)?;
    Ok([dx, dw1, dw2, dweights])
}
