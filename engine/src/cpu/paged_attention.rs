//! Paged decode attention and the KV-cache row write on the CPU (the contract is
//! `PagedAttentionDims` in backend.rs).
//!
//! Attention: one task per (sequence, kv head) computes the `group` query heads that share that
//! kv head together, so each cached key and value row is read once for all of them. It walks the
//! sequence's positions block by block through its block table with an online softmax (running
//! max and sum, rescaled when the max grows), so there is no score buffer the length of the
//! context and one pass over the cache. Sums run in the arithmetic type (f32 for bf16 / f16).
//!
//! The write copies each new row to its slot in place; the pool is never reallocated.

use super::elem::prelude::*;
use super::elem::{check_bounds, indices, with_float, Elem, Float};
use super::par::{chunks, worth_it};
use crate::backend::PagedAttentionDims;
use crate::{CpuStorage, Error, Result};

pub(super) fn paged_attention(
    q: &CpuStorage,
    k: &CpuStorage,
    v: &CpuStorage,
    table: &CpuStorage,
    lens: &CpuStorage,
    d: &PagedAttentionDims,
) -> Result<CpuStorage> {
    const OP: &str = "paged_attention";
    let (table, lens) = (indices(OP, table)?, indices(OP, lens)?);
    d.sequence_blocks(table, lens)?;
    if q.len() != d.batch * d.q_heads * d.head_dim {
        return Err(Error::shape(OP, format!("q of {} elements for {d:?}", q.len())));
    }
    with_float!(OP, q, |q| {
        let (k, v) = (Elem::view(OP, k)?, Elem::view(OP, v)?);
        if k.len() != d.num_blocks * d.block_size * d.row_len() || v.len() != k.len() {
            return Err(Error::shape(
                OP,
                format!(
                    "cache pools of {} and {} elements for {d:?}",
                    k.len(),
                    v.len()
                ),
            ));
        }
        Ok(Elem::wrap(attend(q, k, v, table, lens, d)))
    })
}

fn attend<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    table: &[u32],
    lens: &[u32],
    d: &PagedAttentionDims,
) -> Vec<T> {
    let (dh, group, row) = (d.head_dim, d.group(), d.row_len());
    let scale = <T::Acc as super::elem::Acc>::of(d.scale);
    let mut out = vec![T::narrow(T::Acc::zero()); q.len()];
    let work: usize = lens.iter().map(|&l| l as usize).sum::<usize>() * d.q_heads * dh;
    // Chunk i = the `group` query heads of (sequence i / kv_heads, kv head i % kv_heads), which are
    // contiguous in q and out.
    chunks(&mut out, group * dh, worth_it(work), |i, o| {
        let (b, kv) = (i / d.kv_heads, i % d.kv_heads);
        let qs: Vec<T::Acc> = q[i * group * dh..][..group * dh]
            .iter()
            .map(|x| x.widen())
            .collect();
        let mut acc = vec![T::Acc::zero(); group * dh];
        let mut max = vec![T::Acc::neg_infinity(); group];
        let mut sum = vec![T::Acc::zero(); group];
        for p in 0..lens[b] as usize {
            let block = table[b * d.max_blocks + p / d.block_size] as usize;
            let at = (block * d.block_size + p % d.block_size) * row + kv * dh;
            let (kr, vr) = (&k[at..at + dh], &v[at..at + dh]);
            for g in 0..group {
                let s = qs[g * dh..][..dh]
                    .iter()
                    .zip(kr)
                    .fold(T::Acc::zero(), |s, (a, b)| s + *a * b.widen())
                    * scale;
                let a = &mut acc[g * dh..][..dh];
                if s > max[g] {
                    // The running max grows: earlier terms shrink by exp(old - new).
                    let r = (max[g] - s).exp();
                    sum[g] = sum[g] * r;
                    a.iter_mut().for_each(|x| *x = *x * r);
                    max[g] = s;
                }
                let w = (s - max[g]).exp();
                sum[g] += w;
                a.iter_mut().zip(vr).for_each(|(x, y)| *x += w * y.widen());
            }
        }
        for g in 0..group {
            for (o, a) in o[g * dh..][..dh].iter_mut().zip(&acc[g * dh..][..dh]) {
                *o = T::narrow(*a / sum[g]);
            }
        }
    });
    out
}

pub(super) fn write_rows(
    cache: &mut CpuStorage,
    src: &CpuStorage,
    slots: &CpuStorage,
    n: usize,
    row_len: usize,
) -> Result<()> {
    const OP: &str = "write_rows";
    let slots = indices(OP, slots)?;
    if slots.len() != n || src.len() != n * row_len || row_len == 0 {
        return Err(Error::shape(
            OP,
            format!(
                "{} slots and {} source elements for {n} rows of {row_len}",
                slots.len(),
                src.len()
            ),
        ));
    }
    check_bounds(OP, slots, cache.len() / row_len)?;
    macro_rules! copy {
        ($($variant:ident),*) => {
            match (cache, src) {
                $((CpuStorage::$variant(c), CpuStorage::$variant(s)) => {
                    for (&slot, r) in slots.iter().zip(s.chunks_exact(row_len)) {
                        c[slot as usize * row_len..][..row_len].copy_from_slice(r);
                    }
                    Ok(())
                })*
                (c, s) => Err(Error::DTypeMismatch { op: OP, lhs: c.dtype(), rhs: s.dtype() }),
            }
        };
    }
    copy!(F32, F64, BF16, F16, U32)
}
