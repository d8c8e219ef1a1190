//! Reductions over the middle axis of an `(outer, size, inner)` view, and argmax.
//!
//! Two shapes of loop, because the memory access differs:
//! - `inner == 1` (the last axis): each output is a fold over one contiguous row. The fold keeps
//!   `LANES` independent accumulators, which lets the compiler vectorise a float sum it could not
//!   reorder otherwise, and which also lowers the rounding error of long f32 sums.
//! - `inner > 1`: each output row of `inner` values accumulates `size` contiguous source rows, in
//!   column blocks small enough to stay in L1. This is already vectorised across columns.
//!
//! Sums accumulate in the arithmetic type (f32 for f32 / bf16 / f16), Mean divides by `size`, and
//! Max / Min let a NaN through so that a NaN anywhere is seen, not silently dropped.

use super::elem::prelude::*;
use super::elem::{max_nan, min_nan, with_float, Acc, Elem, Float};
use super::par::{chunks, for_each_chunk, worth_it};
use crate::backend::ReduceOp;
use crate::{CpuStorage, Error, Result};

const LANES: usize = 8;
/// Columns accumulated together when reducing a non-last axis.
const COL_BLOCK: usize = 256;
/// Source elements per task when reducing rows, so that short rows are batched into one task.
const ROW_CHUNK: usize = 1 << 12;

pub(super) fn reduce(x: &CpuStorage, outer: usize, size: usize, inner: usize, op: ReduceOp) -> Result<CpuStorage> {
    with_float!("reduce", x, |x| Ok(Elem::wrap(reduce_typed(x, outer, size, inner, op))))
}

pub(super) fn argmax(x: &CpuStorage, outer: usize, size: usize, inner: usize) -> Result<CpuStorage> {
    if size == 0 {
        return Err(Error::shape("argmax", format!("empty axis in a ({outer}, 0, {inner}) view")));
    }
    with_float!("argmax", x, |x| Ok(CpuStorage::U32(argmax_typed(x, outer, size, inner))))
}

fn reduce_typed<T: Float>(x: &[T], outer: usize, size: usize, inner: usize, op: ReduceOp) -> Vec<T> {
    let v = (x, outer, size, inner);
    let inf = T::Acc::infinity();
    match op {
        ReduceOp::Sum => fold(v, T::Acc::zero(), |a, b| a + b, |a| a),
        ReduceOp::Mean => {
            let n = T::Acc::of(size as f64);
            fold(v, T::Acc::zero(), |a, b| a + b, move |a| a / n)
        }
        ReduceOp::Max => fold(v, -inf, max_nan, |a| a),
        ReduceOp::Min => fold(v, inf, min_nan, |a| a),
    }
}

/// Folds the middle axis of `(x, outer, size, inner)` with `combine` starting from `init`, then
/// applies `finish`. `combine` must be associative: partial folds are combined with it too.
fn fold<T: Float, C, Fin>((x, outer, size, inner): (&[T], usize, usize, usize), init: T::Acc, combine: C, finish: Fin) -> Vec<T>
where
    C: Fn(T::Acc, T::Acc) -> T::Acc + Sync + Send,
    Fin: Fn(T::Acc) -> T::Acc + Sync + Send,
{
    let mut out = vec![T::narrow(init); outer * inner];
    let parallel = worth_it(outer * size * inner);
    if inner == 1 {
        let rows_per_task = (ROW_CHUNK / size.max(1)).max(1);
        chunks(&mut out, rows_per_task, parallel, |task, o| {
            for (r, o) in o.iter_mut().enumerate() {
                let row = task * rows_per_task + r;
                *o = T::narrow(finish(fold_row(&x[row * size..][..size], init, &combine)));
            }
        });
        return out;
    }
    // With fewer outer rows than threads, split each row's columns across threads instead.
    let split_columns = parallel && outer < rayon::current_num_threads();
    chunks(&mut out, inner, parallel && !split_columns, |o, out_row| {
        let src = &x[o * size * inner..][..size * inner];
        for_each_chunk(out_row, COL_BLOCK, split_columns, || (), |_, block, cols| {
            let j0 = block * COL_BLOCK;
            let mut acc = [init; COL_BLOCK];
            let acc = &mut acc[..cols.len()];
            for s in 0..size {
                for (a, v) in acc.iter_mut().zip(&src[s * inner + j0..][..cols.len()]) {
                    *a = combine(*a, v.widen());
                }
            }
            for (c, a) in cols.iter_mut().zip(acc.iter()) {
                *c = T::narrow(finish(*a));
            }
        });
    });
    out
}

/// `combine` over a contiguous row, with `LANES` interleaved accumulators.
#[inline(always)]
fn fold_row<T: Float, C: Fn(T::Acc, T::Acc) -> T::Acc>(row: &[T], init: T::Acc, combine: &C) -> T::Acc {
    let mut lanes = [init; LANES];
    let mut it = row.chunks_exact(LANES);
    for c in &mut it {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = combine(*l, v.widen());
        }
    }
    let mut acc = lanes.into_iter().fold(init, combine);
    for v in it.remainder() {
        acc = combine(acc, v.widen());
    }
    acc
}

/// The index of the largest value along the middle axis, the first on ties; a NaN counts as the
/// largest, so an argmax over corrupted logits points at the NaN instead of hiding it.
fn argmax_typed<T: Float>(x: &[T], outer: usize, size: usize, inner: usize) -> Vec<u32> {
    let mut out = vec![0u32; outer * inner];
    chunks(&mut out, inner, worth_it(outer * size * inner), |o, idx| {
        let src = &x[o * size * inner..][..size * inner];
        for (j, slot) in idx.iter_mut().enumerate() {
            let (mut best, mut best_i) = (src[j].widen(), 0);
            for s in 1..size {
                let v = src[s * inner + j].widen();
                if v > best || (v.is_nan() && !best.is_nan()) {
                    (best, best_i) = (v, s);
                }
            }
            *slot = best_i as u32;
        }
    });
    out
}
