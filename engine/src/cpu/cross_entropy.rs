//! Softmax cross-entropy of each row of logits against a target index, fused: the loss and, in
//! the backward, the logits' gradient each come from one walk over the row.
//!
//! Forward: m = max(row), s = Σ e^(row − m) (the SIMD exp-and-sum of simd.rs, into a per-thread
//! scratch row), loss = (m − row[target]) + ln s. Backward: the same m and s again, then
//! d = e^(row − m) / s · g with 1 subtracted (times g) at the target. Recomputing the softmax costs
//! one exp per logit but keeps nothing between the passes except the logits, which the model holds
//! anyway; the unfused form kept the `rows x vocab` log-probabilities and walked five temporaries
//! (exp, one-hot, difference, product) in the backward.
//!
//! Rows go in blocks of `ROW_BLOCK`, in parallel when the logits are large enough; every row is
//! computed alone, so results do not depend on the thread count. A NaN logit makes its row's loss
//! and gradient NaN.

use super::elem::prelude::*;
use super::elem::{check_bounds, indices, with_float, Acc, Elem, Float};
use super::par::{for_each_chunk, worth_it};
use crate::{CpuStorage, Error, Result};

/// Rows per task.
const ROW_BLOCK: usize = 16;

pub(super) fn cross_entropy(logits: &CpuStorage, targets: &CpuStorage, rows: usize, vocab: usize) -> Result<CpuStorage> {
    const OP: &str = "cross_entropy";
    let t = targets_of(OP, targets, rows, vocab)?;
    with_float!(OP, logits, |x| {
        expect_len(OP, "logits", x.len(), rows * vocab)?;
        Ok(Elem::wrap(forward_typed(x, t, vocab)))
    })
}

pub(super) fn cross_entropy_backward(logits: &CpuStorage, targets: &CpuStorage, g: &CpuStorage, rows: usize, vocab: usize) -> Result<CpuStorage> {
    const OP: &str = "cross_entropy_backward";
    let t = targets_of(OP, targets, rows, vocab)?;
    with_float!(OP, logits, |x| {
        let g = Elem::view(OP, g)?;
        expect_len(OP, "logits", x.len(), rows * vocab)?;
        expect_len(OP, "g", g.len(), rows)?;
        Ok(Elem::wrap(backward_typed(x, t, g, vocab)))
    })
}

fn targets_of<'a>(op: &'static str, targets: &'a CpuStorage, rows: usize, vocab: usize) -> Result<&'a [u32]> {
    let t = indices(op, targets)?;
    expect_len(op, "targets", t.len(), rows)?;
    check_bounds(op, t, vocab)?;
    Ok(t)
}

fn expect_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::shape(op, format!("{what} holds {got} elements where {want} were expected")));
    }
    Ok(())
}

/// The row widened to the arithmetic type, its max m, and the sum s = Σ e^(row − m), with the
/// exponentials left in `exps`.
fn row_stats<T: Float>(row: &[T], exps: &mut Vec<T::Acc>) -> (T::Acc, T::Acc) {
    let wide = T::widen_slice(row);
    let m = T::Acc::row_max(&wide, T::Acc::neg_infinity());
    exps.clear();
    exps.extend_from_slice(&wide);
    (m, T::Acc::exp_shifted_sum(exps, m))
}

fn forward_typed<T: Float>(x: &[T], targets: &[u32], vocab: usize) -> Vec<T> {
    let mut loss = vec![T::narrow(T::Acc::zero()); targets.len()];
    for_each_chunk(&mut loss, ROW_BLOCK, worth_it(x.len()), Vec::new, |exps: &mut Vec<T::Acc>, b, out| {
        for (i, o) in out.iter_mut().enumerate() {
            let r = b * ROW_BLOCK + i;
            let row = &x[r * vocab..][..vocab];
            let (m, s) = row_stats(row, exps);
            // m − x[target] first: exact for nearby values, where m + ln s would round at m's scale.
            *o = T::narrow((m - row[targets[r] as usize].widen()) + s.ln());
        }
    });
    loss
}

fn backward_typed<T: Float>(x: &[T], targets: &[u32], g: &[T], vocab: usize) -> Vec<T> {
    let mut d = vec![T::narrow(T::Acc::zero()); x.len()];
    for_each_chunk(&mut d, ROW_BLOCK * vocab, worth_it(x.len()), Vec::new, |exps: &mut Vec<T::Acc>, b, out| {
        for (i, dr) in out.chunks_exact_mut(vocab).enumerate() {
            let r = b * ROW_BLOCK + i;
            let (_, s) = row_stats(&x[r * vocab..][..vocab], exps);
            let (gr, t) = (g[r].widen(), targets[r] as usize);
            let scale = s.recip() * gr;
            for (o, &e) in dr.iter_mut().zip(exps.iter()) {
                *o = T::narrow(e * scale);
            }
            dr[t] = T::narrow(exps[t] * scale - gr);
        }
    });
    d
}
