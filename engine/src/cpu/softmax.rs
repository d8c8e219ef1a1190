//! Softmax and log-softmax of each row, numerically stable: the row max is subtracted before `exp`,
//! so no term overflows and the largest term is exactly 1. Computed in the arithmetic type; a
//! per-thread scratch row keeps each `exp` from being evaluated twice. For f32 the exponentials
//! and their sum run in one SIMD pass at the CPU's widest vector width (simd.rs).

use std::mem::MaybeUninit;

use super::elem::prelude::*;
use super::elem::{with_float, Acc, Elem, Float};
use super::par::{filled, for_each_chunk, worth_it};
use crate::{CpuStorage, Result};

pub(super) fn softmax(x: &CpuStorage, rows: usize, cols: usize, log: bool) -> Result<CpuStorage> {
    let op = if log { "log_softmax" } else { "softmax" };
    with_float!(op, x, |x| Ok(Elem::wrap(softmax_typed(x, rows, cols, log))))
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
