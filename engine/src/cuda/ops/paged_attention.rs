//! Paged decode attention and the KV-cache row write on CUDA, as composites of existing kernels
//! until a fused paged-attention kernel lands (the contract is `PagedAttentionDims` in backend.rs).
//!
//! Both read the small index tensors (block tables, context lengths, slots) back to the host, so
//! they synchronise once per call; that is the price of having no kernel yet, not of the design.
//! Attention gathers each sequence's blocks (`index_select`), puts kv heads first (`permute`),
//! multiplies its `group` query rows per kv head by the keys, softmaxes and multiplies by the
//! values (batched `matmul` over kv heads), then concatenates the sequences' outputs. The write
//! copies each row device-to-device into its slot.

use cudarc::driver::result;

use crate::backend::{BackendStorage, MatmulLayout, PagedAttentionDims, ScalarOp};
use crate::cuda::error::DriverContext;
use crate::cuda::CudaStorage;
use crate::{CpuStorage, Error, Result};

fn host_indices(op: &'static str, s: &CudaStorage) -> Result<Vec<u32>> {
    match s.to_host()? {
        CpuStorage::U32(v) => Ok(v),
        other => Err(Error::DType {
            op,
            dtype: other.dtype(),
            detail: ": indices must be u32".into(),
        }),
    }
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
    let (table, lens) = (host_indices(OP, table)?, host_indices(OP, lens)?);
    let (dh, group, row) = (d.head_dim, d.group(), d.row_len());
    let crate::Device::Cuda(ordinal) = q.device() else {
        unreachable!("a CUDA storage is on a CUDA device")
    };
    let block_elems = d.block_size * row;
    let mut outs = Vec::with_capacity(d.batch);
    for (b, (blocks, &len)) in d.sequence_blocks(&table, &lens)?.into_iter().zip(&lens).enumerate() {
        let len = len as usize;
        let idx = CudaStorage::from_host(ordinal, &CpuStorage::U32(blocks.to_vec()))?;
        // [len, kv_heads, dh] -> [kv_heads, len, dh]
        let gather = |pool: &CudaStorage| -> Result<CudaStorage> {
            let rows = pool.index_select(&idx, blocks.len(), block_elems)?;
            rows.narrow(1, blocks.len() * block_elems, 0, len * row)?
                .permute(&[len, d.kv_heads, dh], &[1, 0, 2])
        };
        let (kb, vb) = (gather(k)?, gather(v)?);
        let qb = q.narrow(1, q.len(), b * d.q_heads * dh, d.q_heads * dh)?;
        let scores = qb.matmul(
            &kb,
            &MatmulLayout {
                batch: d.kv_heads,
                m: group,
                n: len,
                k: dh,
                trans_a: false,
                trans_b: true,
                a_batch_stride: group * dh,
                b_batch_stride: len * dh,
            },
        )?;
        let probs =
            scores
                .scalar(ScalarOp::Mul, d.scale)?
                .softmax(d.kv_heads * group, len, false)?;
        outs.push(probs.matmul(
            &vb,
            &MatmulLayout {
                batch: d.kv_heads,
                m: group,
                n: dh,
                k: len,
                trans_a: false,
                trans_b: false,
                a_batch_stride: group * len,
                b_batch_stride: len * dh,
            },
        )?);
    }
    let parts: Vec<&CudaStorage> = outs.iter().collect();
    CudaStorage::concat(&parts, 1, &vec![d.q_heads * dh; d.batch])
}

pub(crate) fn write_rows(
    cache: &mut CudaStorage,
    src: &CudaStorage,
    slots: &CudaStorage,
    n: usize,
    row_len: usize,
) -> Result<()> {
    const OP: &str = "write_rows";
    let slots = host_indices(OP, slots)?;
    let (rows, esize) = (cache.len() / row_len.max(1), cache.dtype().size_in_bytes());
    if slots.len() != n || src.len() != n * row_len || src.dtype() != cache.dtype() {
        return Err(Error::shape(
            OP,
            format!(
                "{} slots and {} source elements for {n} rows of {row_len}",
                slots.len(),
                src.len()
            ),
        ));
    }
    let dev = cache.dev();
    dev.bind()?;
    let bytes = row_len * esize;
    for (i, &slot) in slots.iter().enumerate() {
        if slot as usize >= rows {
            return Err(Error::IndexOutOfRange {
                op: OP,
                index: slot as usize,
                size: rows,
            });
        }
        // SAFETY: slot < rows, so bytes [slot·bytes, (slot+1)·bytes) lie inside the cache buffer,
        // and row i < n lies inside src; both buffers are live and the copy is stream-ordered.
        unsafe {
            result::memcpy_dtod_async(
                cache.ptr() + (slot as usize * bytes) as u64,
                src.ptr() + (i * bytes) as u64,
                bytes,
                dev.stream(),
            )
        }
        .ctx("cuMemcpyDtoDAsync")?;
    }
    Ok(())
}
