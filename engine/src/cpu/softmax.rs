//! Softmax and log-softmax of each row, numerically stable: the row max is subtracted before `exp`,
//! so no term overflows and the largest term is exactly 1. Computed in the arithmetic type; a
//! per-thread scratch row keeps each `exp` from being evaluated twice. For f32 the exponentials
//! and their sum run in one SIMD pass at the CPU's widest vector width (simd.rs).
//!
//! Rows narrower than one vector (the routers' 4- or 8-wide rows over experts) would spend most of
//! their time in per-row calls and a mostly masked vector step each. They go a block of rows at a
//! time instead: scalar maxima per row, one SIMD `exp` pass over the whole shifted block, then
//! scalar per-row sums. The sum adds the row as the SIMD path's 16 lanes would (a pairwise tree
//! over the row padded with zeros), so both paths give the same bits.

use std::mem::MaybeUninit;

use super::elem::prelude::*;
use super::elem::{max_nan, with_float, Acc, Elem, Float};
use super::par::{filled, for_each_chunk, worth_it};
use super::simd::{lane_sum, LANES};
use crate::{CpuStorage, Result};

/// Rows narrower than this take the block path: the SIMD code's lane count.
const NARROW: usize = LANES;
/// Rows per block on the narrow path: a few KiB of scratch, in L1.
const BLOCK_ROWS: usize = 256;

pub(super) fn softmax(x: &CpuStorage, rows: usize, cols: usize, log: bool) -> Result<CpuStorage> {
    let op = if log { "log_softmax" } else { "softmax" };
    with_float!(op, x, |x| Ok(Elem::wrap(if cols < NARROW {
        narrow_softmax_typed(x, rows, cols, log)
    } else {
        softmax_typed(x, rows, cols, log)
    })))
}

fn softmax_typed<T: Float>(x: &[T], rows: usize, cols: usize, log: bool) -> Vec<T> {
    let fill = |out: &mut [MaybeUninit<T>]| for_each_chunk(out, cols, worth_it(rows * cols), Vec::new, |exps: &mut Vec<T::Acc>, r, out| {
        let row = T::widen_slice(&x[r * cols..][..cols]);
        let max = T::Acc::row_max(&row, T::Acc::neg_infinity());
        exps.clear();
        exps.extend_from_slice(&row);
        let sum = T::Acc::exp_shifted_sum(exps, max);
        if log {
            let log_sum = sum.ln();
            for (o, &v) in out.iter_mut().zip(row.iter()) {
                o.write(T::narrow(v - max - log_sum));
            }
        } else {
            let inv = sum.recip();
            for (o, &e) in out.iter_mut().zip(exps.iter()) {
                o.write(T::narrow(e * inv));
            }
        }
    });
    // SAFETY: the chunks are the output's rows, each written whole.
    unsafe { filled(rows * cols, fill) }
}

/// `softmax_typed` for rows of fewer than `NARROW` columns, `BLOCK_ROWS` rows per task.
fn narrow_softmax_typed<T: Float>(x: &[T], rows: usize, cols: usize, log: bool) -> Vec<T> {
    let block = BLOCK_ROWS * cols;
    let scratch = || (Vec::<T::Acc>::new(), Vec::<T::Acc>::new());
    let fill = |out: &mut [MaybeUninit<T>]| for_each_chunk(out, block, worth_it(rows * cols), scratch, |(shifted, exps), b, out| {
        let src = T::widen_slice(&x[b * block..][..out.len()]);
        shifted.clear();
        shifted.extend_from_slice(&src);
        for row in shifted.chunks_exact_mut(cols) {
            let max = row.iter().fold(T::Acc::neg_infinity(), |m, &v| max_nan(m, v));
            row.iter_mut().for_each(|v| *v = *v - max);
        }
        exps.clear();
        exps.extend_from_slice(shifted);
        // Shifting by zero is exact: the values are those the per-row path exponentiates.
        T::Acc::exp_shifted_sum(exps, T::Acc::zero());
        let rows = out.chunks_exact_mut(cols).zip(shifted.chunks_exact(cols).zip(exps.chunks_exact(cols)));
        for (out, (shifted, exps)) in rows {
            let sum = lane_tree_sum(exps);
            if log {
                let log_sum = sum.ln();
                for (o, &v) in out.iter_mut().zip(shifted) {
                    o.write(T::narrow(v - log_sum));
                }
            } else {
                let inv = sum.recip();
                for (o, &e) in out.iter_mut().zip(exps) {
                    o.write(T::narrow(e * inv));
                }
            }
        }
    });
    // SAFETY: the chunks are whole blocks of the output's rows, each element written.
    unsafe { filled(rows * cols, fill) }
}

/// The sum of a row of fewer than `NARROW` terms in the order of simd.rs's lane sum: the row
/// padded with zeros to `NARROW` lanes, then halves added pairwise.
fn lane_tree_sum<A: Acc>(row: &[A]) -> A {
    let mut lanes = [A::zero(); NARROW];
    lanes[..row.len()].copy_from_slice(row);
    lane_sum(lanes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block path gives the per-row path's bits for f32 (the same `exp` of the same shifted
    /// values, summed in the same order), for every narrow width, a ragged last block included.
    #[test]
    fn narrow_rows_match_the_per_row_path() {
        for cols in 1..NARROW {
            let rows = BLOCK_ROWS + 37;
            let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.031).collect();
            for log in [false, true] {
                assert_eq!(narrow_softmax_typed(&x, rows, cols, log), softmax_typed(&x, rows, cols, log), "{cols} columns, log {log}");
            }
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let (block, per_row) = (narrow_softmax_typed(&x64, rows, cols, false), softmax_typed(&x64, rows, cols, false));
            assert!(block.iter().zip(&per_row).all(|(a, b)| (a - b).abs() <= 1e-15), "{cols} columns in f64");
        }
        let mut with_nan = vec![0.5f32; 3 * 8];
        with_nan[11] = f32::NAN;
        let y = narrow_softmax_typed(&with_nan, 3, 8, false);
        assert!(y[8..16].iter().all(|v| v.is_nan()) && y[..8].iter().chain(&y[16..]).all(|&v| v == 0.125));
    }
}
