//! Paged decode attention and the KV-cache row write on CUDA (paged_attention.cu; the contract is
//! `PagedAttentionDims` in backend.rs). Neither reads anything back to the host, so a decode step
//! never waits for the GPU: block tables, context lengths and slots are used where they are, on the
//! device. The kernel file's header has the algorithm; here: the split length, the grids and the
//! partial buffers.

use kernels_cuda::PAGED_ATTENTION;

use super::{float_suffix, nbytes, widest_word, word_suffix};
use crate::backend::PagedAttentionDims;
use crate::cuda::launch::{kernel_args, launch, launch_with_smem, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::{DType, Error, Result};

/// paged_attention.cu's GMAX: query heads one decode block serves.
const GMAX: usize = 8;
/// Head dims the decode kernel takes (its launch bound: one thread per element of a row).
const MAX_HEAD_DIM: usize = 256;

/// Positions per split: a power of two in 64..=1024 giving about 1024 (row, kv head, split) blocks
/// over the whole capacity, so short batches still fill the GPU and long ones keep few partials.
/// A function of the shapes only, so results do not depend on the GPU.
fn split_len(capacity: usize, rows: usize) -> usize {
    (capacity * rows).div_ceil(1024).next_power_of_two().clamp(64, 1024)
}

pub(crate) fn paged_attention(
    q: &CudaStorage,
    k: &CudaStorage,
    v: &CudaStorage,
    table: &CudaStorage,
    lens: &CudaStorage,
    d: &PagedAttentionDims,
) -> Result<CudaStorage> {
    const OP: &str = "paged_attention";
    let sfx = float_suffix(OP, q.dtype())?;
    for (name, x) in [("block table", table), ("context lengths", lens)] {
        if x.dtype() != DType::U32 {
            return Err(Error::DType { op: OP, dtype: x.dtype(), detail: format!(": the {name} must be u32") });
        }
    }
    let (dh, group) = (d.head_dim, d.group());
    let capacity = d.max_blocks * d.block_size;
    if q.len() != d.batch * d.q_heads * dh || k.len() != d.num_blocks * d.block_size * d.row_len() || v.len() != k.len() || table.len() != d.batch * d.max_blocks || lens.len() != d.batch {
        return Err(Error::shape(OP, format!("q of {}, pools of {} and {}, table of {} and lengths of {} elements for {d:?}", q.len(), k.len(), v.len(), table.len(), lens.len())));
    }
    if dh == 0 || dh > MAX_HEAD_DIM {
        return Err(Error::invalid(OP, format!("head dim {dh} on CUDA (the decode kernel takes 1..={MAX_HEAD_DIM})")));
    }
    let dev = q.dev();
    let out = CudaStorage::uninit(dev, q.dtype(), q.len())?;
    if out.is_empty() {
        return Ok(out);
    }
    let chunks = group.div_ceil(GMAX);
    let (ys, split) = (d.kv_heads * chunks, split_len(capacity, d.batch * d.kv_heads * chunks));
    let splits = capacity.div_ceil(split);
    if ys > 65535 || d.batch > 65535 || capacity > u32::MAX as usize {
        return Err(Error::invalid(OP, format!("{d:?} exceeds the CUDA grid or the kernel's u32 positions")));
    }
    let part_acc = CudaStorage::uninit(dev, DType::F32, d.batch * d.q_heads * splits * dh)?;
    let part_stat = CudaStorage::uninit(dev, DType::F32, d.batch * d.q_heads * splits * 2)?;
    // 16-byte loads (paged_attention.cu's VEC) when the head dim is whole packs, at most 32 of
    // them (one per lane), and the pools are 16-byte aligned (so is every row then).
    let pack = 16 / q.dtype().size_in_bytes();
    let vectorised = dh % pack == 0 && dh / pack <= 32 && k.ptr() % 16 == 0 && v.ptr() % 16 == 0;
    let (entry, chunks_per_row) = if vectorised { (format!("paged_decode_{sfx}_v16"), dh / pack) } else { (format!("paged_decode_{sfx}"), dh) };
    let threads = chunks_per_row.next_multiple_of(32).max(128);
    let slices = threads / chunks_per_row;
    // Query rows, then the scores, which the value slices' sums overwrite at the end.
    let smem = (4 * GMAX * (dh + split.max(slices * dh))) as u32;
    let (qp, kp, vp, tp, lp, ap, sp, op) = (q.ptr(), k.ptr(), v.ptr(), table.ptr(), lens.ptr(), part_acc.ptr(), part_stat.ptr(), out.ptr());
    let (hq, hkv, dd, nb, bs, mb, spl, nspl, scale) = (d.q_heads as u32, d.kv_heads as u32, dh as u32, d.num_blocks as u32, d.block_size as u32, d.max_blocks as u32, split as u32, splits as u32, d.scale as f32);
    // The host does not know the lengths: the cost assumes every row uses its whole capacity.
    let cache_bytes = nbytes(2 * d.batch * capacity * d.kv_heads * chunks * dh, q.dtype());
    let partial_bytes = nbytes(part_acc.len() + part_stat.len(), DType::F32);
    let cost = Cost { bytes: cache_bytes + partial_bytes + nbytes(2 * q.len(), q.dtype()), flops: (4 * d.batch * capacity * d.q_heads * dh) as u64 };
    let grid = Grid { grid: (splits as u32, ys as u32, d.batch as u32), block: (threads as u32, 1, 1) };
    // SAFETY: paged_decode_<T>[_v16](const T* q, const T* k, const T* v, const u32* table, const u32* lens,
    // float* part_acc, float* part_stat, u32 hq, u32 hkv, u32 d, u32 num_blocks, u32 block_size,
    // u32 max_blocks, u32 split, u32 splits, float scale); sizes checked above (q B·hq·d, pools
    // num_blocks·block_size·hkv·d, table B·max_blocks, lens B; partials B·hq·splits·d and ·2 f32).
    // The kernel reads only positions below a row's length when that length is within capacity
    // and only blocks < num_blocks; the row's chunks ≤ threads ≤ 256 (its launch bound); the
    // _v16 variant only with 16-byte-aligned pools, whole packs and at most 32 of them per row;
    // smem holds GMAX query rows, then GMAX·split scores or slices·GMAX·d slice sums.
    unsafe {
        launch_with_smem(dev, &PAGED_ATTENTION, &entry, grid, smem, &mut kernel_args![&qp, &kp, &vp, &tp, &lp, &ap, &sp, &hq, &hkv, &dd, &nb, &bs, &mb, &spl, &nspl, &scale], cost)?
    };
    let cap = capacity as u32;
    let grid = Grid { grid: (hq, d.batch as u32, 1), block: (128, 1, 1) };
    let cost = Cost { bytes: partial_bytes + nbytes(q.len(), q.dtype()), flops: (3 * part_acc.len()) as u64 };
    // SAFETY: paged_combine_<T>(const float* part_acc, const float* part_stat, const u32* lens,
    // T* out, u32 hq, u32 d, u32 capacity, u32 split, u32 splits); one block per (head, row); it
    // reads the ceil(len / split) ≤ splits partials paged_decode wrote for a valid row (same
    // stream, so after it) and writes out's B·hq·d elements.
    unsafe { launch(dev, &PAGED_ATTENTION, &format!("paged_combine_{sfx}"), grid, &mut kernel_args![&ap, &sp, &lp, &op, &hq, &dd, &cap, &spl, &nspl], cost)? };
    Ok(out)
}

/// `cache[slots[i]] = src[i]` by one kernel, without reading the slots on the host; a slot past
/// the cache is skipped (the op layer checks host slots; on the device the caller's block tables
/// are the guarantee, see `ops::write_rows`).
pub(crate) fn write_rows(cache: &mut CudaStorage, src: &CudaStorage, slots: &CudaStorage, n: usize, row_len: usize) -> Result<()> {
    const OP: &str = "write_rows";
    if slots.dtype() != DType::U32 || slots.len() != n || src.len() != n * row_len || src.dtype() != cache.dtype() || row_len == 0 {
        return Err(Error::shape(OP, format!("{} slots ({:?}) and {} source elements ({:?}) for {n} rows of {row_len} into a {:?} cache", slots.len(), slots.dtype(), src.len(), src.dtype(), cache.dtype())));
    }
    if n == 0 {
        return Ok(());
    }
    let dev = cache.dev();
    let row_bytes = row_len * cache.dtype().size_in_bytes();
    let word = widest_word(cache.dtype().size_in_bytes(), &[row_bytes], 16);
    let (sp, ip, cp) = (src.ptr(), slots.ptr(), cache.ptr());
    let (rows, words, cache_rows) = (n as u64, (row_bytes / word) as u64, (cache.len() / row_len) as u64);
    let cost = Cost { bytes: 2 * nbytes(n * row_len, cache.dtype()) + nbytes(n, DType::U32), flops: 0 };
    // SAFETY: paged_write_rows_<w>(const W* src, const u32* slots, W* cache, u64 n, u64 row_words,
    // u64 cache_rows); src holds n rows and slots n entries (checked above), the cache cache_rows
    // rows of `words` words; the kernel skips any slot >= cache_rows.
    unsafe {
        launch(dev, &PAGED_ATTENTION, &format!("paged_write_rows_{}", word_suffix(word)), Grid::rows_by_cols(dev, rows, words), &mut kernel_args![&sp, &ip, &cp, &rows, &words, &cache_rows], cost)?
    };
    Ok(())
}
