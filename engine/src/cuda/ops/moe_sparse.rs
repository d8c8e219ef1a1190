//! Sparse MoE on CUDA: routing and permutation (moe_route.cu), the grouped gather-GEMM-scatter
//! forward and its training backward (moe_sparse.cu), the decode GEMVs (moe_decode.cu), for GeLU
//! experts and gated (SwiGLU) ones (a third matrix w3: one more product, the activation in its
//! epilogue). Nothing
//! here reads device memory back: every size a kernel needs from the routing (expert offsets,
//! list length) it reads on the device, and grids are sized from host-known bounds, so a layer can
//! be captured in a CUDA graph.

use kernels_cuda::{MOE_DECODE, MOE_ROUTE, MOE_SPARSE};

use super::gemm::{self, GemmGroup, GemmProblem, TileShape, SM80};
use super::{float_suffix, nbytes};
use crate::cuda::launch::{kernel_args, launch, launch_with_smem, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::backend::{RouteMode, SparseDims, DECODE_MAX_TOKENS};
use crate::CpuStorage;
use crate::{DType, Error, Result};

/// Slots per chunk of the counting sort (CHUNK in moe_route.cu).
const CHUNK: usize = 256;
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
    let (rank, hist, base, bad) = (u32s(slots)?, u32s(chunks * n)?, u32s(chunks * n)?, CudaStorage::zeros(dev, DType::U32, 1)?);
    // Past the kept entries sorted_slots reads DROPPED, as on the CPU (0xff bytes make 0xffffffff).
    sorted.fill_bytes(0xff)?;
    let (ep, cp, rp, hp, bp, tp, op, dp, sp, pp, xp) = (experts.ptr(), counts.ptr(), rank.ptr(), hist.ptr(), base.ptr(), totals.ptr(), offsets.ptr(), dropped.ptr(), sorted.ptr(), slot_pos.ptr(), bad.ptr());
    let (t, km, nn, nch) = (tokens as u64, k_max as u32, n as u32, chunks as u32);
    let slot_bytes = 4 * slots as u64;
    if chunks > 0 {
        // SAFETY: moe_chunk_rank(const u32* experts, const u32* counts, u32* rank_in_chunk, u32* chunk_hist,
        // u32* bad_expert, u64 tokens, u32 k_max, u32 n); one 32-thread block per chunk; n <= 2048 (its
        // shared histogram); experts and rank hold slots, chunk_hist chunks·n words, bad_expert one
        // zeroed word. A used slot's expert >= n is reported in bad_expert and treated as unused, so
        // no later kernel indexes with it.
        unsafe { launch(dev, &MOE_ROUTE, "moe_chunk_rank", fixed((grid_dim(OP, chunks)?, 1, 1), 32), &mut kernel_args![&ep, &cp, &rp, &hp, &xp, &t, &km, &nn], Cost { bytes: 2 * slot_bytes, flops: 0 })? };
        // The routes are user data (the CPU path checks them the same way): an expert out of range
        // is an error, which costs this one-word read (and the wait for the kernel before it).
        if let CpuStorage::U32(bad) = bad.to_host()? {
            if bad[0] != 0 {
                return Err(Error::IndexOutOfRange { op: OP, index: bad[0] as usize, size: n });
            }
        }
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

/// The kept-slot mask `[slots]` in `dtype` from a permutation's slot positions, see `ops::moe_kept`.
pub(crate) fn kept(slot_pos: &CudaStorage, slots: usize, dtype: DType) -> Result<CudaStorage> {
    let sfx = float_suffix("moe_kept", dtype)?;
    let dev = slot_pos.dev();
    let kept = CudaStorage::uninit(dev, dtype, slots)?;
    if slots > 0 {
        let (sp, kp, n) = (slot_pos.ptr(), kept.ptr(), slots as u64);
        // SAFETY: moe_kept_<T>(const u32* slot_pos, T* kept, u64 slots); both hold `slots` elements
        // (the op layer checked slot_pos's length).
        unsafe { launch(dev, &MOE_ROUTE, &format!("moe_kept_{sfx}"), Grid::linear(dev, n), &mut kernel_args![&sp, &kp, &n], Cost { bytes: 4 * n + nbytes(slots, dtype), flops: 0 })? };
    }
    Ok(kept)
}

/// Mirrors `SparseEpilogue` in moe_sparse.cu (repr(C), 64 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SparseEpilogue {
    out: u64,
    pre: u64,
    scale: u64,
    slots: u64,
    slab: u64,
    gate: u64,
    ldc: u32,
    act: u32,
    accumulate: u32,
    pad: u32,
}

/// RowStore's activations (ACT_* in moe_sparse.cu).
const ACT_GELU: u32 = 1;
const ACT_SWIGLU: u32 = 2;

/// The three grouped products of moe_sparse.cu (its entry-point families), each with its operand
/// layout and the group table it walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// NT: A = x or dy gathered by token, B = W_e read as [f, d] rows; K = d, rows grouped.
    Rows,
    /// NN: A = H or dU in list order, B = W_e read as [f, d] = [K, N]; K = f, rows grouped.
    Scatter,
    /// TN: A = x or dy gathered along K, B = dU or wH in list order; M = d, K grouped by expert.
    Dw,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Rows => "rows",
            Role::Scatter => "scatter",
            Role::Dw => "dw",
        }
    }

    /// (m, n, k, lda, ldb, index of the group table, whether A is gathered by token).
    fn shape(self, dims: &SparseDims) -> (usize, usize, usize, usize, usize, usize, bool) {
        let (d, f, slots) = (dims.d, dims.f, dims.slots());
        match self {
            Role::Rows => (slots, f, d, d, d, 0, true),
            Role::Scatter => (slots, d, f, f, d, 1, false),
            Role::Dw => (d, f, slots, d, f, 2, true),
        }
    }
}

/// moe_sparse.cu's NarrowTile (64 x 64 x 32, 4 stages, 2 x 2 warps); SM80 is its SparseTile.
const NARROW: TileShape = TileShape { bm: 64, bn: 64, threads: 128, smem: 4 * (64 * 32 + 32 * 64) * 2, blocks_per_sm: 4 };

/// The tile of a tensor-core product and its entry-name suffix: the narrow tile when the list
/// averages fewer rows per expert than a wide tile holds (less remainder padding, more blocks).
fn tile_for(role: Role, dims: &SparseDims) -> (TileShape, &'static str) {
    if role != Role::Dw && dims.slots() < SM80.bm as usize * dims.n_experts {
        (NARROW, "_narrow")
    } else {
        (SM80, "")
    }
}

/// Whether the grouped products run on the tensor cores (gemm_sm80.cuh's mainloop) rather than
/// the exact path: bf16 / f16 tensors, a GPU with mma.sync, and rows of whole 16-byte vectors.
fn uses_tensor_cores(has_mma: bool, dtype: DType, d: usize, f: usize) -> bool {
    has_mma && matches!(dtype, DType::BF16 | DType::F16) && d % 8 == 0 && f % 8 == 0
}

/// The list's group tables and per-entry tokens (moe_list_tables), and how to run products over it.
struct Grouped<'a> {
    dims: SparseDims,
    dtype: DType,
    sfx: &'static str,
    tensor_cores: bool,
    sorted: &'a CudaStorage,
    tables: CudaStorage,
    tok: CudaStorage,
}

impl<'a> Grouped<'a> {
    fn new(op: &'static str, offsets: &CudaStorage, sorted: &'a CudaStorage, dims: &SparseDims, dtype: DType) -> Result<Self> {
        let dev = offsets.dev();
        let sfx = float_suffix(op, dtype)?;
        let SparseDims { d, f, n_experts, k_max, .. } = *dims;
        if d % 2 != 0 || f % 2 != 0 {
            return Err(Error::invalid(op, format!("d = {d} and f = {f} must be even on CUDA (the products store column pairs)")));
        }
        if [d, f, dims.slots()].iter().any(|&v| v > u32::MAX as usize / 2) {
            return Err(Error::invalid(op, format!("d = {d}, f = {f}, {} slots exceed the kernels' 32-bit indices", dims.slots())));
        }
        let tensor_cores = uses_tensor_cores(gemm::path(dev).is_some(), dtype, d, f);
        let words = std::mem::size_of::<GemmGroup>() / 4;
        let tables = CudaStorage::uninit(dev, DType::U32, 3 * n_experts * words)?;
        let tok = CudaStorage::uninit(dev, DType::U32, dims.slots())?;
        let (op_, sp, tp, kp) = (offsets.ptr(), sorted.ptr(), tables.ptr(), tok.ptr());
        let (ne, km, dd, ff, sl) = (n_experts as u32, k_max as u32, d as u32, f as u32, dims.slots() as u64);
        let cost = Cost { bytes: 8 * sl + (3 * n_experts * std::mem::size_of::<GemmGroup>()) as u64, flops: 0 };
        // SAFETY: moe_list_tables(const u32* offsets, const u32* sorted_slots, u32 groups, u32 k_max,
        // u32 d, u32 f, u64 slots, GemmGroup* tables, u32* tok): offsets holds n_experts + 1 words
        // (offsets[n_experts] <= slots), sorted_slots and tok `slots` words, tables 3·n_experts entries.
        unsafe { launch(dev, &MOE_SPARSE, "moe_list_tables", Grid::linear(dev, sl.max(n_experts as u64)), &mut kernel_args![&op_, &sp, &ne, &km, &dd, &ff, &sl, &tp, &kp], cost)? };
        Ok(Grouped { dims: *dims, dtype, sfx, tensor_cores, sorted, tables, tok })
    }

    /// One grouped product in `role` with A at `a`, B at `b`; `ep` says where and how it is stored.
    fn gemm(&self, role: Role, a: u64, b: u64, ep: SparseEpilogue) -> Result<()> {
        let dev = self.tables.dev();
        let ne = self.dims.n_experts;
        let (m, n, k, lda, ldb, table, gathered) = role.shape(&self.dims);
        let problem = GemmProblem {
            a,
            b,
            a_rows: if gathered { self.tok.ptr() } else { 0 },
            groups: self.tables.ptr() + (table * ne * std::mem::size_of::<GemmGroup>()) as u64,
            num_groups: ne as u32,
            m: m as u32,
            n: n as u32,
            k: k as u32,
            lda: lda as u32,
            ldb: ldb as u32,
        };
        let (slots, d, f) = (self.dims.slots(), self.dims.d, self.dims.f);
        // The list holds at most `slots` entries: FLOPs and bytes are bounds (weights once, list rows once).
        let cost = Cost { flops: 2 * (slots * f * d) as u64, bytes: nbytes(ne * f * d + slots * (d + f), self.dtype) };
        let rows_grouped = role != Role::Dw;
        if self.tensor_cores {
            let (tile, suffix) = tile_for(role, &self.dims);
            let name = format!("moe_gemm_{}{suffix}_{}", role.name(), self.sfx);
            let tiles = gemm::tile_bound(tile, m as u64, n as u64, ne as u64, rows_grouped);
            let grid = fixed((gemm::grid_blocks(tile, dev.info.sm_count as u64, tiles), 1, 1), tile.threads);
            // SAFETY: moe_gemm_<role>_<T>(GemmProblem<T> p, SparseEpilogue e), both mirrored repr(C);
            // the group table and tok were built from this permutation by moe_list_tables, A and B hold
            // the rows `role.shape` describes, and the epilogue's buffers hold the list rows (or
            // (token, slot) rows, or n_experts slabs) it writes. d % 8 == 0 and f % 8 == 0 (checked by
            // uses_tensor_cores) with 16-byte aligned allocator buffers give the 16-byte copies and
            // stores their alignment. Shared memory: tile.smem bytes, the tile of that entry point.
            unsafe { launch_with_smem(dev, &MOE_SPARSE, &name, grid, tile.smem, &mut kernel_args![&problem, &ep], cost) }
        } else {
            let name = format!("moe_gemm_exact_{}_{}", role.name(), self.sfx);
            let rows = if rows_grouped { slots } else { d };
            let grid = (grid_dim("moe_sparse_mlp", n.div_ceil(2 * 128))?, rows.clamp(1, 128) as u32, ne.min(65535) as u32);
            // SAFETY: moe_gemm_exact_<role>_<T>(GemmProblem<T> p, SparseEpilogue e): as above, with
            // element-wise loads and stores (no alignment beyond even d and f, checked in `new`).
            unsafe { launch(dev, &MOE_SPARSE, &name, fixed(grid, 128), &mut kernel_args![&problem, &ep], cost) }
        }
    }
}

/// y[t] = Σ over kept slots (and `splits` partial sums each) of `rows`, in a fixed order.
fn combine(rows: &CudaStorage, slot_pos: &CudaStorage, dims: &SparseDims, splits: usize, dtype: DType) -> Result<CudaStorage> {
    let sfx = float_suffix("moe_sparse_mlp", dtype)?;
    let dev = rows.dev();
    let SparseDims { tokens, d, k_max, .. } = *dims;
    let y = CudaStorage::uninit(dev, dtype, tokens * d)?;
    if tokens * d == 0 {
        return Ok(y);
    }
    let (rp, sp, yp, t, km, dd, sl) = (rows.ptr(), slot_pos.ptr(), y.ptr(), tokens as u64, k_max as u32, d as u64, splits as u32);
    let grid = Grid::rows_by_cols(dev, t, dd);
    let cost = Cost { bytes: nbytes(tokens * k_max * d * splits, rows.dtype()) + nbytes(tokens * d, dtype), flops: (tokens * k_max * d * splits) as u64 };
    // The decode path's partial sums are f32 whatever T is: they need the f32-rows kernel even as
    // one split (moe_combine_<bf16> would read them as bf16).
    if splits == 1 && rows.dtype() == dtype {
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

/// What the forward keeps for the backward: (U, H, V), V for gated experts only.
type Saved = (CudaStorage, CudaStorage, Option<CudaStorage>);

/// y, and with `save` what the backward reads; gated experts when `w3` is given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(x: &CudaStorage, [w1, w2]: [&CudaStorage; 2], w3: Option<&CudaStorage>, weights: &CudaStorage, offsets: &CudaStorage, sorted: &CudaStorage, slot_pos: &CudaStorage, dims: &SparseDims, decode: bool, save: bool) -> Result<(CudaStorage, Option<Saved>)> {
    let dtype = x.dtype();
    let sfx = float_suffix("moe_sparse_mlp", dtype)?;
    let dev = x.dev();
    let SparseDims { d, f, n_experts, k_max, tokens } = *dims;
    let slots = dims.slots();
    let h = CudaStorage::uninit(dev, dtype, slots * f)?;
    let u = if save { Some(CudaStorage::uninit(dev, dtype, slots * f)?) } else { None };
    let v = if save && w3.is_some() { Some(CudaStorage::uninit(dev, dtype, slots * f)?) } else { None };
    let up = u.as_ref().map_or(0, |u| u.ptr());
    let vp = v.as_ref().map_or(0, |v| v.ptr());
    let saved = |u: Option<CudaStorage>, h: CudaStorage| u.map(|u| (u, h, v));
    if decode && decode_fits(d, dtype) && tokens <= DECODE_MAX_TOKENS {
        let splits = f.div_ceil(DOWN_SPLIT);
        let partial = CudaStorage::uninit(dev, DType::F32, splits * slots * d)?;
        if slots > 0 {
            let (xp, w1p, w2p, wp, op, sp, hp, pp) = (x.ptr(), w1.ptr(), w2.ptr(), weights.ptr(), offsets.ptr(), sorted.ptr(), h.ptr(), partial.ptr());
            let (km, dd, ff, sl) = (k_max as u32, d as u64, f as u64, slots as u64);
            let ne = grid_dim("moe_sparse_mlp", n_experts)?;
            let weight_bytes = nbytes(tokens.min(n_experts) * k_max * f * d, dtype);
            let flops = 2 * (slots * f * d) as u64;
            let up_grid = fixed((ne, grid_dim("moe_sparse_mlp", f.div_ceil(UP_WARPS))?, 1), 256);
            match w3 {
                // SAFETY: moe_decode_up_<T>(const T* x, const T* w1, const u32* offsets, const u32* sorted_slots,
                // u32 k_max, T* h, T* u, u64 d, u64 f); an expert's entries are walked 16 at a time; d % 8 == 0
                // and buffers from the allocator are 16-byte aligned (checked above); u may be null.
                None => unsafe { launch(dev, &MOE_DECODE, &format!("moe_decode_up_{sfx}"), up_grid, &mut kernel_args![&xp, &w1p, &op, &sp, &km, &hp, &up, &dd, &ff], Cost { bytes: weight_bytes, flops })? },
                Some(w3) => {
                    let w3p = w3.ptr();
                    // SAFETY: moe_decode_up_swiglu_<T>(const T* x, const T* w1, const T* w3, const u32* offsets,
                    // const u32* sorted_slots, u32 k_max, T* h, T* u, T* v, u64 d, u64 f): as moe_decode_up, w3
                    // shaped like w1 (op layer); u and v may be null (set together).
                    unsafe {
                        launch(dev, &MOE_DECODE, &format!("moe_decode_up_swiglu_{sfx}"), up_grid, &mut kernel_args![&xp, &w1p, &w3p, &op, &sp, &km, &hp, &up, &vp, &dd, &ff], Cost { bytes: 2 * weight_bytes, flops: 2 * flops })?
                    }
                }
            }
            let grid = (ne, grid_dim("moe_sparse_mlp", d.div_ceil(DOWN_COLS_PER_BLOCK))?, grid_dim("moe_sparse_mlp", splits)?);
            // SAFETY: moe_decode_down_<T>(const T* h, const T* w2, const T* weights, const u32* offsets,
            // const u32* sorted_slots, float* partial, u64 slots, u64 d, u64 f); partial holds splits x slots
            // rows of d f32, one z-block per split.
            unsafe { launch(dev, &MOE_DECODE, &format!("moe_decode_down_{sfx}"), fixed(grid, 256), &mut kernel_args![&hp, &w2p, &wp, &op, &sp, &pp, &sl, &dd, &ff], Cost { bytes: weight_bytes, flops })? };
        }
        let y = combine(&partial, slot_pos, dims, splits, dtype)?;
        return Ok((y, saved(u, h)));
    }
    let rows = CudaStorage::uninit(dev, dtype, slots * d)?;
    if slots > 0 {
        let g = Grouped::new("moe_sparse_mlp", offsets, sorted, dims, dtype)?;
        let ldc = f as u32;
        match w3 {
            None => g.gemm(Role::Rows, x.ptr(), w1.ptr(), SparseEpilogue { out: h.ptr(), pre: up, ldc, act: ACT_GELU, ..Default::default() })?,
            Some(w3) => {
                // G into U when kept, else into H's buffer, which the up product's epilogue then
                // overwrites pair by pair with silu(G)·V.
                let gate = if save { up } else { h.ptr() };
                g.gemm(Role::Rows, x.ptr(), w1.ptr(), SparseEpilogue { out: gate, ldc, ..Default::default() })?;
                g.gemm(Role::Rows, x.ptr(), w3.ptr(), SparseEpilogue { out: h.ptr(), pre: vp, gate, ldc, act: ACT_SWIGLU, ..Default::default() })?;
            }
        }
        let scatter = SparseEpilogue { out: rows.ptr(), scale: weights.ptr(), slots: g.sorted.ptr(), ldc: d as u32, ..Default::default() };
        g.gemm(Role::Scatter, h.ptr(), w2.ptr(), scatter)?;
    }
    let y = combine(&rows, slot_pos, dims, 1, dtype)?;
    Ok((y, saved(u, h)))
}

/// (dx, dw1, dw2, dw3, dweights); `gated` holds w3 and the saved V for gated experts.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(dy: &CudaStorage, x: &CudaStorage, [w1, w2]: [&CudaStorage; 2], gated: Option<(&CudaStorage, &CudaStorage)>, weights: &CudaStorage, offsets: &CudaStorage, sorted: &CudaStorage, slot_pos: &CudaStorage, [u, h]: [&CudaStorage; 2], dims: &SparseDims) -> Result<(CudaStorage, CudaStorage, CudaStorage, Option<CudaStorage>, CudaStorage)> {
    const OP: &str = "moe_sparse_mlp_backward";
    let dtype = x.dtype();
    let sfx = float_suffix(OP, dtype)?;
    let dev = x.dev();
    let SparseDims { d, f, n_experts, .. } = *dims;
    let slots = dims.slots();
    let dweights = CudaStorage::zeros(dev, dtype, slots)?;
    let dx_rows = CudaStorage::uninit(dev, dtype, slots * d)?;
    let slab_grad = || CudaStorage::zeros(dev, dtype, n_experts * f * d);
    if slots == 0 {
        let dx = combine(&dx_rows, slot_pos, dims, 1, dtype)?;
        let dw3 = gated.map(|_| slab_grad()).transpose()?;
        return Ok((dx, slab_grad()?, slab_grad()?, dw3, dweights));
    }
    let slab_out = || CudaStorage::uninit(dev, dtype, n_experts * f * d);
    let (dg, wh) = (CudaStorage::uninit(dev, dtype, slots * f)?, CudaStorage::uninit(dev, dtype, slots * f)?);
    let (dw1, dw2) = (slab_out()?, slab_out()?);
    let g = Grouped::new(OP, offsets, sorted, dims, dtype)?;
    // dG (dH for gated experts) = dy[tok]·W2ᵀ.
    g.gemm(Role::Rows, dy.ptr(), w2.ptr(), SparseEpilogue { out: dg.ptr(), ldc: f as u32, ..Default::default() })?;
    let (gp, hp, upp, wp, op, sp, dwp, whp, ff, ne) = (dg.ptr(), h.ptr(), u.ptr(), weights.ptr(), offsets.ptr(), sorted.ptr(), dweights.ptr(), wh.ptr(), f as u64, n_experts as u32);
    let grid = Grid::linear(dev, slots as u64 * 32);
    let scatter_dx = |a: &CudaStorage, w: &CudaStorage, accumulate: u32| g.gemm(Role::Scatter, a.ptr(), w.ptr(), SparseEpilogue { out: dx_rows.ptr(), slots: sorted.ptr(), ldc: d as u32, accumulate, ..Default::default() });
    let slabs = |a: &CudaStorage, b: &CudaStorage, out: &CudaStorage| g.gemm(Role::Dw, a.ptr(), b.ptr(), SparseEpilogue { out: out.ptr(), slab: (f * d) as u64, ldc: d as u32, ..Default::default() });
    let dw3 = match gated {
        None => {
            let cost = Cost { bytes: nbytes(5 * slots * f, dtype), flops: 14 * (slots * f) as u64 };
            // SAFETY: moe_grad_act_<T>(T* dg, const T* h, const T* u, const T* w, const u32* sorted_slots,
            // const u32* offsets, u32 groups, T* dweights, T* wh, u64 f); dg, h, u, wh hold slots rows of f,
            // w and dweights slots elements; rows past offsets[groups] are not touched.
            unsafe { launch(dev, &MOE_SPARSE, &format!("moe_grad_act_{sfx}"), grid, &mut kernel_args![&gp, &hp, &upp, &wp, &sp, &op, &ne, &dwp, &whp, &ff], cost)? };
            // dX rows = dU·W1_e, scattered to their slots.
            scatter_dx(&dg, w1, 0)?;
            None
        }
        Some((w3, v)) => {
            let dv = CudaStorage::uninit(dev, dtype, slots * f)?;
            let (dvp, vp) = (dv.ptr(), v.ptr());
            let cost = Cost { bytes: nbytes(7 * slots * f, dtype), flops: 12 * (slots * f) as u64 };
            // SAFETY: moe_grad_swiglu_<T>(T* dh, T* dv, const T* h, const T* g, const T* v, const T* w,
            // const u32* sorted_slots, const u32* offsets, u32 groups, T* dweights, T* wh, u64 f); dh, dv, h,
            // g (= U), v, wh hold slots rows of f, w and dweights slots elements; rows past offsets[groups]
            // are not touched.
            unsafe { launch(dev, &MOE_SPARSE, &format!("moe_grad_swiglu_{sfx}"), grid, &mut kernel_args![&gp, &dvp, &hp, &upp, &vp, &wp, &sp, &op, &ne, &dwp, &whp, &ff], cost)? };
            // dX rows = dGate·W1_e, then += dV·W3_e (the second product adds onto the first's rows).
            scatter_dx(&dg, w1, 0)?;
            scatter_dx(&dv, w3, 1)?;
            let dw3 = slab_out()?;
            slabs(x, &dv, &dw3)?;
            Some(dw3)
        }
    };
    // dW1_eᵀ = x[tok]ᵀ·dU_e (dGate_e), dW2_eᵀ = dy[tok]ᵀ·wH_e, stored back as [f, d] slabs.
    slabs(x, &dg, &dw1)?;
    slabs(dy, &wh, &dw2)?;
    let dx = combine(&dx_rows, slot_pos, dims, 1, dtype)?;
    Ok((dx, dw1, dw2, dw3, dweights))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epilogue_struct_matches_the_cuda_layout() {
        assert_eq!(std::mem::size_of::<SparseEpilogue>(), 64);
    }

    #[test]
    fn tensor_cores_take_half_precision_rows_of_whole_vectors() {
        assert!(uses_tensor_cores(true, DType::BF16, 4096, 512));
        assert!(uses_tensor_cores(true, DType::F16, 72, 40));
        assert!(!uses_tensor_cores(true, DType::F32, 4096, 512));
        assert!(!uses_tensor_cores(false, DType::BF16, 4096, 512));
        assert!(!uses_tensor_cores(true, DType::BF16, 4100, 512));
        assert!(!uses_tensor_cores(true, DType::BF16, 4096, 36));
    }

    /// Mirror of moe_list_tables: the three tables for an offsets vector.
    fn tables(offsets: &[u32], d: u32, f: u32) -> Vec<GemmGroup> {
        let e = offsets.len() - 1;
        let slab = |i: usize| i as u64 * f as u64 * d as u64;
        let rows = |i: usize, k: u32| GemmGroup { b_offset: slab(i), row_begin: offsets[i], rows: offsets[i + 1] - offsets[i], k_begin: 0, k_end: k };
        let by_d = (0..e).map(|i| rows(i, d));
        let by_f = (0..e).map(|i| rows(i, f));
        let by_entries = (0..e).map(|i| GemmGroup { b_offset: 0, row_begin: 0, rows: d, k_begin: offsets[i], k_end: offsets[i + 1] });
        by_d.chain(by_f).chain(by_entries).collect()
    }

    #[test]
    fn list_tables_cover_every_entry_once_and_pad_only_the_remainder() {
        // Experts with 0, 1, 127, 128, 129 and 300 entries.
        let counts = [0u32, 1, 127, 128, 129, 0, 300];
        let mut offsets = vec![0u32];
        for c in counts {
            offsets.push(offsets.last().unwrap() + c);
        }
        let (d, f) = (4096, 512);
        let t = tables(&offsets, d, f);
        let e = counts.len();
        let p = *offsets.last().unwrap();
        for table in [&t[..e], &t[e..2 * e]] {
            // Row groups partition the list in order, each on its own expert's slab.
            let mut next = 0;
            for (i, g) in table.iter().enumerate() {
                assert_eq!((g.row_begin, g.b_offset), (next, i as u64 * (f * d) as u64));
                next += g.rows;
            }
            assert_eq!(next, p);
            // Row tiles: the entries' own, plus at most one partial tile per expert; empty experts none.
            let row_tiles: u32 = table.iter().map(|g| g.rows.div_ceil(SM80.bm as u32)).sum();
            assert!(row_tiles < p.div_ceil(SM80.bm as u32) + e as u32);
            assert_eq!(row_tiles, counts.iter().map(|c| c.div_ceil(128)).sum::<u32>());
        }
        assert_eq!((t[0].k_end, t[e].k_end), (d, f));
        // K groups: expert i reduces over exactly its entries, with all d rows.
        for (i, g) in t[2 * e..].iter().enumerate() {
            assert_eq!((g.rows, g.k_begin, g.k_end, g.b_offset), (d, offsets[i], offsets[i + 1], 0));
        }
        // The grid bound of each role covers its tiles.
        let dims = SparseDims { tokens: p as usize, d: d as usize, f: f as usize, n_experts: e, k_max: 1 };
        for role in [Role::Rows, Role::Scatter] {
            let (m, n, ..) = role.shape(&dims);
            let needed = counts.iter().map(|c| c.div_ceil(128) as u64).sum::<u64>() * (n as u64).div_ceil(SM80.bn);
            assert!(gemm::tile_bound(SM80, m as u64, n as u64, e as u64, true) >= needed, "{role:?}");
        }
    }

    #[test]
    fn lists_under_one_wide_tile_per_expert_take_the_narrow_tile() {
        let dims = |tokens, k_max| SparseDims { tokens, d: 4096, f: 512, n_experts: 32, k_max };
        assert_eq!(tile_for(Role::Rows, &dims(512, 4)).1, "_narrow");
        assert_eq!(tile_for(Role::Scatter, &dims(1023, 4)).1, "_narrow");
        assert_eq!(tile_for(Role::Rows, &dims(1024, 4)).1, "");
        assert_eq!(tile_for(Role::Scatter, &dims(16384, 8)).1, "");
        assert_eq!(tile_for(Role::Dw, &dims(64, 1)).1, "", "dW tiles cover d rows, not the list");
        // The narrow tile's shared memory is what 4 stages of 64 x 32 and 32 x 64 bf16 slices take.
        assert_eq!(NARROW.smem, 32 * 1024);
    }

    #[test]
    fn roles_describe_the_products_of_the_kernel_header() {
        let dims = SparseDims { tokens: 10, d: 4096, f: 512, n_experts: 32, k_max: 4 };
        // x·W1ᵀ: [P, d]·[f, d]ᵀ; H·W2: [P, f]·[f, d]; dW: gather(x)ᵀ [d, P]·dU [P, f].
        assert_eq!(Role::Rows.shape(&dims), (40, 512, 4096, 4096, 4096, 0, true));
        assert_eq!(Role::Scatter.shape(&dims), (40, 4096, 512, 512, 4096, 1, false));
        assert_eq!(Role::Dw.shape(&dims), (4096, 512, 40, 4096, 512, 2, true));
    }
}
