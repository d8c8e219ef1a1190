//! Products with a few rows (decode: one to a few tokens per step) read straight from the stored
//! matrix, in its own dtype, converting each element to the arithmetic type as it is loaded. A
//! blocked GEMM would first pack (and for bf16 / f16 widen) the whole right-hand matrix, which for
//! one row costs more memory traffic than the product itself; here every weight byte is read
//! once per call and nothing the size of the weights is written.
//!
//! - `b` stored `[n, k]` (x·Wᵀ): output j is a dot product of a's rows with row j of b; eight
//!   independent partial sums per dot let the compiler vectorise without reassociating.
//! - `b` stored `[k, n]` (x·W): a block of output columns accumulates `a[i, p]·b[p, block]` row by
//!   row of b (an axpy over contiguous memory).
//! Both split the output columns over threads when the product is large enough.

use super::elem::prelude::*;
use super::elem::Float;
use super::par::{chunks, worth_it};

/// Rows up to which products take this path.
pub(super) const MAX_ROWS: usize = 4;

/// Output columns per task: a block of accumulators stays in L1 for every row.
const COLS: usize = 256;

/// `a (m x k, arithmetic type) · op(b)` where b is `[n, k]` when `b_transposed`, else `[k, n]`;
/// returns the m x n result in the arithmetic type, row-major.
pub(super) fn product<T: Float>(a: &[T::Acc], b: &[T], m: usize, n: usize, k: usize, b_transposed: bool) -> Vec<T::Acc> {
    // Computed column-block-major ([block][row][col]) so each task owns one contiguous chunk.
    let mut blocked = vec![T::Acc::zero(); m * n];
    let parallel = worth_it(m * n * k / 8);
    chunks(&mut blocked, m * COLS, parallel, |blk, out| {
        let (j0, width) = (blk * COLS, out.len() / m);
        if b_transposed {
            for (jj, j) in (j0..j0 + width).enumerate() {
                let row = &b[j * k..(j + 1) * k];
                for i in 0..m {
                    out[i * width + jj] = dot::<T>(&a[i * k..(i + 1) * k], row);
                }
            }
        } else {
            for p in 0..k {
                let row = &b[p * n + j0..p * n + j0 + width];
                for i in 0..m {
                    let ai = a[i * k + p];
                    for (o, v) in out[i * width..(i + 1) * width].iter_mut().zip(row) {
                        *o += ai * v.widen();
                    }
                }
            }
        }
    });
    if m == 1 {
        return blocked;
    }
    let mut out = vec![T::Acc::zero(); m * n];
    for (blk, chunk) in blocked.chunks(m * COLS).enumerate() {
        let width = chunk.len() / m;
        for i in 0..m {
            out[i * n + blk * COLS..][..width].copy_from_slice(&chunk[i * width..(i + 1) * width]);
        }
    }
    out
}

fn dot<T: Float>(a: &[T::Acc], b: &[T]) -> T::Acc {
    let mut lanes = [T::Acc::zero(); 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (at, bt) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l].widen();
        }
    }
    let mut s = lanes.iter().fold(T::Acc::zero(), |s, &v| s + v);
    for (x, y) in at.iter().zip(bt) {
        s += *x * y.widen();
    }
    s
}
