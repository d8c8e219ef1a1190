//! Row gather / scatter-add (embeddings, token permutation) and last-axis gather / scatter-add
//! (picking targets, routing weights), with u32 indices.
//!
//! Gathers only copy, so they take any dtype. Scatter-adds are deterministic: every output sum is
//! taken in index order, the order a serial loop would use, whatever the thread count. For rows
//! that means bucketing the sources by destination first (a stable counting sort), after which each
//! output row is owned by one task and needs no atomics. Accumulation runs in the arithmetic type
//! and is narrowed once per output element, so bf16 sums do not round at every step.
//!
//! Indices are bounds-checked here as well as in the op layer: the `_unchecked` op variants skip
//! the op-layer check, and a bad index must come back as an error, not a panic in a worker thread.


use super::elem::prelude::*;
use super::elem::{check_bounds, indices, with_any, with_float, Elem, Float};
use std::mem::MaybeUninit;

use super::par::{chunks, copy_into, filled, for_each_chunk, worth_it};
use crate::{CpuStorage, Error, Result};

pub(super) fn index_select(src: &CpuStorage, idx: &CpuStorage, n_idx: usize, row_len: usize) -> Result<CpuStorage> {
    const OP: &str = "index_select";
    let idx = indices_of_len(OP, idx, n_idx)?;
    with_any!(src, |s| {
        // With empty rows there is nothing to read, so no index can be out of range.
        if let Some(src_rows) = s.len().checked_div(row_len) {
            check_bounds(OP, idx, src_rows)?;
        }
        Ok(Elem::wrap(gather_rows(s, idx, row_len)))
    })
}

pub(super) fn scatter_add_rows(src: &CpuStorage, idx: &CpuStorage, n_idx: usize, row_len: usize, out_rows: usize) -> Result<CpuStorage> {
    const OP: &str = "scatter_add_rows";
    let idx = indices_of_len(OP, idx, n_idx)?;
    check_bounds(OP, idx, out_rows)?;
    with_float!(OP, src, |s| {
        expect_len(OP, s.len(), n_idx * row_len)?;
        Ok(Elem::wrap(scatter_rows(s, idx, row_len, out_rows)))
    })
}

pub(super) fn gather_last(src: &CpuStorage, idx: &CpuStorage, rows: usize, n: usize, k: usize) -> Result<CpuStorage> {
    const OP: &str = "gather_last";
    let idx = indices_of_len(OP, idx, rows * k)?;
    check_bounds(OP, idx, n)?;
    with_any!(src, |s| {
        expect_len(OP, s.len(), rows * n)?;
        Ok(Elem::wrap(gather_last_typed(s, idx, n, k)))
    })
}

pub(super) fn scatter_add_last(src: &CpuStorage, idx: &CpuStorage, rows: usize, k: usize, n: usize) -> Result<CpuStorage> {
    const OP: &str = "scatter_add_last";
    let idx = indices_of_len(OP, idx, rows * k)?;
    check_bounds(OP, idx, n)?;
    with_float!(OP, src, |s| {
        expect_len(OP, s.len(), rows * k)?;
        Ok(Elem::wrap(scatter_last_typed(s, idx, rows, k, n)))
    })
}

fn indices_of_len<'a>(op: &'static str, idx: &'a CpuStorage, len: usize) -> Result<&'a [u32]> {
    let idx = indices(op, idx)?;
    expect_len(op, idx.len(), len)?;
    Ok(idx)
}

fn expect_len(op: &'static str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::shape(op, format!("an operand holds {got} elements where {want} were expected")));
    }
    Ok(())
}

fn gather_rows<T: Elem>(src: &[T], idx: &[u32], row_len: usize) -> Vec<T> {
    let fill = |out: &mut [MaybeUninit<T>]| {
        chunks(out, row_len, worth_it(idx.len() * row_len), |i, o| {
            copy_into(o, &src[idx[i] as usize * row_len..][..row_len]);
        })
    };
    // SAFETY: the chunks are the output's rows, each copied whole.
    unsafe { filled(idx.len() * row_len, fill) }
}

fn scatter_rows<T: Float>(src: &[T], idx: &[u32], row_len: usize, out_rows: usize) -> Vec<T> {
    // sources[starts[r]..starts[r + 1]] are the source rows landing on output row r, in index order.
    let mut starts = vec![0usize; out_rows + 1];
    for &i in idx {
        starts[i as usize + 1] += 1;
    }
    for r in 0..out_rows {
        starts[r + 1] += starts[r];
    }
    let mut fill = starts.clone();
    let mut sources = vec![0usize; idx.len()];
    for (i, &r) in idx.iter().enumerate() {
        sources[fill[r as usize]] = i;
        fill[r as usize] += 1;
    }
    let work = (idx.len() + out_rows) * row_len;
    let fill = |out: &mut [MaybeUninit<T>]| {
        for_each_chunk(out, row_len, worth_it(work), Vec::new, |acc: &mut Vec<T::Acc>, r, o| {
            acc.clear();
            acc.resize(row_len, T::Acc::zero());
            for &i in &sources[starts[r]..starts[r + 1]] {
                for (a, v) in acc.iter_mut().zip(&src[i * row_len..][..row_len]) {
                    *a += v.widen();
                }
            }
            for (o, &a) in o.iter_mut().zip(acc.iter()) {
                o.write(T::narrow(a));
            }
        })
    };
    // SAFETY: the chunks are the output's rows, and each row is written whole from its sum
    // (zero where no source lands).
    unsafe { filled(out_rows * row_len, fill) }
}

fn gather_last_typed<T: Elem>(src: &[T], idx: &[u32], n: usize, k: usize) -> Vec<T> {
    let fill = |out: &mut [MaybeUninit<T>]| {
        chunks(out, k, worth_it(idx.len()), |r, o| {
            let row = &src[r * n..][..n];
            for (o, &i) in o.iter_mut().zip(&idx[r * k..][..k]) {
                o.write(row[i as usize]);
            }
        })
    };
    // SAFETY: the chunks are the output's rows of k, and each has its k indices.
    unsafe { filled(idx.len(), fill) }
}

fn scatter_last_typed<T: Float>(src: &[T], idx: &[u32], rows: usize, k: usize, n: usize) -> Vec<T> {
    let fill = |out: &mut [MaybeUninit<T>]| {
        for_each_chunk(out, n, worth_it(rows * (n + k)), Vec::new, |acc: &mut Vec<T::Acc>, r, o| {
            acc.clear();
            acc.resize(n, T::Acc::zero());
            for (&i, v) in idx[r * k..][..k].iter().zip(&src[r * k..][..k]) {
                acc[i as usize] += v.widen();
            }
            for (o, &a) in o.iter_mut().zip(acc.iter()) {
                o.write(T::narrow(a));
            }
        })
    };
    // SAFETY: the chunks are the output's rows of n, each written whole from its sums.
    unsafe { filled(rows * n, fill) }
}
