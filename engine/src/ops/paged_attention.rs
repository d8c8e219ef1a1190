//! The paged KV cache's two ops: writing new positions' keys / values into pool slots, and decode
//! attention of a batch of query rows over the blocks their block tables name (the contract is
//! `PagedAttentionDims` in backend.rs).
//!
//! Block tables and context lengths are u32 tensors on the compute device, so a decode step does
//! not need the host; the op layer checks shapes and dtypes only. A length or block index out of
//! range is an error on the CPU and a NaN output row on CUDA (see `PagedAttentionDims`).

use super::{check_float, check_index, check_same_device, check_same_dtype};
use crate::backend::{BackendStorage, PagedAttentionDims};
use crate::{Error, Result, Storage, Tensor};

/// Attention of `q` `[batch, q_heads, head_dim]` over the cache pools `k`, `v`
/// `[num_blocks, block_size, kv_heads, head_dim]` through `block_table` u32 `[batch, max_blocks]`
/// and `context_lens` u32 `[batch]`, with scores scaled by `scale`. Output like q.
pub fn paged_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    block_table: &Tensor,
    context_lens: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    const OP: &str = "paged_attention";
    for t in [k, v, block_table, context_lens] {
        check_same_device(OP, q, t)?;
    }
    check_float(OP, q)?;
    check_same_dtype(OP, q, k)?;
    check_same_dtype(OP, q, v)?;
    check_index(OP, block_table)?;
    check_index(OP, context_lens)?;
    if q.rank() != 3 || k.rank() != 4 || k.shape() != v.shape() {
        return Err(Error::shape(OP, format!("q must be [batch, q_heads, head_dim] and k, v equal [num_blocks, block_size, kv_heads, head_dim], got {:?}, {:?}, {:?}", q.shape(), k.shape(), v.shape())));
    }
    let (batch, q_heads, head_dim) = (q.dims()[0], q.dims()[1], q.dims()[2]);
    let (num_blocks, block_size, kv_heads) = (k.dims()[0], k.dims()[1], k.dims()[2]);
    if k.dims()[3] != head_dim || kv_heads == 0 || q_heads % kv_heads != 0 || block_size == 0 {
        return Err(Error::shape(OP, format!("q {:?} and cache {:?}: head_dim must match, block_size > 0 and q_heads a multiple of kv_heads", q.shape(), k.shape())));
    }
    if block_table.rank() != 2 || block_table.dims()[0] != batch || context_lens.dims() != [batch] {
        return Err(Error::shape(OP, format!("block_table must be [{batch}, max_blocks] and context_lens [{batch}], got {:?} and {:?}", block_table.shape(), context_lens.shape())));
    }
    if !scale.is_finite() {
        return Err(Error::invalid(OP, format!("scale {scale} is not finite")));
    }
    let dims = PagedAttentionDims {
        batch,
        q_heads,
        kv_heads,
        head_dim,
        num_blocks,
        block_size,
        max_blocks: block_table.dims()[1],
        scale,
    };
    let s = match (
        q.storage(),
        k.storage(),
        v.storage(),
        block_table.storage(),
        context_lens.storage(),
    ) {
        (Storage::Cpu(q), Storage::Cpu(k), Storage::Cpu(v), Storage::Cpu(t), Storage::Cpu(l)) => {
            Storage::Cpu(q.paged_attention(k, v, t, l, &dims)?)
        }
        (
            Storage::Cuda(q),
            Storage::Cuda(k),
            Storage::Cuda(v),
            Storage::Cuda(t),
            Storage::Cuda(l),
        ) => Storage::Cuda(q.paged_attention(k, v, t, l, &dims)?),
        _ => unreachable!("devices checked"),
    };
    Ok(Tensor::from_storage(s, q.shape().clone(), q.dtype()))
}

/// In place: `cache[slots[i]] = rows[i]`, where `cache` `[num_blocks, block_size, ...]` is viewed
/// as `num_blocks·block_size` rows (one per cached position) and `rows` `[n, ...]` has the same
/// trailing shape. Slot s is position `s % block_size` of block `s / block_size`.
pub fn write_rows(cache: &mut Tensor, rows: &Tensor, slots: &Tensor) -> Result<()> {
    const OP: &str = "write_rows";
    check_same_device(OP, cache, rows)?;
    check_same_device(OP, cache, slots)?;
    check_same_dtype(OP, cache, rows)?;
    check_index(OP, slots)?;
    if cache.rank() < 2
        || rows.rank() + 1 != cache.rank()
        || rows.dims()[1..] != cache.dims()[2..]
        || slots.dims() != [rows.dims()[0]]
    {
        return Err(Error::shape(OP, format!("cache [blocks, block_size, ...] {:?}, rows [n, ...] {:?} and slots [n] {:?} do not fit", cache.shape(), rows.shape(), slots.shape())));
    }
    let n = rows.dims()[0];
    let row_len: usize = rows.dims()[1..].iter().product();
    let slot_count = cache.dims()[0] * cache.dims()[1];
    if let Storage::Cpu(_) = slots.storage() {
        // Host indices are free to check; on CUDA the caller's block tables are the guarantee.
        super::check_index_bounds(OP, slots, slot_count)?;
    }
    let (rows, slots) = (rows.clone(), slots.clone());
    match (cache.storage_mut()?, rows.storage(), slots.storage()) {
        (Storage::Cpu(c), Storage::Cpu(r), Storage::Cpu(s)) => c.write_rows(r, s, n, row_len),
        (Storage::Cuda(c), Storage::Cuda(r), Storage::Cuda(s)) => c.write_rows(r, s, n, row_len),
        _ => unreachable!("devices checked"),
    }
}
