//! The causal attention forward for small head dims: one whole score row at a time, a two-pass
//! softmax, no GEMM calls.
//!
//! At a head dim of 16 or 32 a score tile's products are too thin for `gemm` (attention.rs's
//! tiles): each is a handful of multiply-adds per output, and the online softmax adds a rescale
//! of the accumulator and a scalar `exp` per row and key tile. When the keys a query sees fit in
//! L1 / L2 (short sequences), a row is cheaper whole. Query rows go in blocks of eight (`BLOCK`):
//! 1. scores `s_j = (scale·q)·k_j` for the keys the block's last row sees, 16 keys per vector:
//!    `Kᵀ` is stored `[d, keys]`, so 16 scores are d multiply-adds of a broadcast query element,
//!    and each load of `Kᵀ` serves the block's eight rows;
//! 2. per row, the max over 16 lanes, then `p_j = e^(s_j − max)` and their sum, the keys after
//!    the query (the ragged end of its last vector) masked to −∞ so that they add exact zeros;
//!    weights of keys a row does not see are 0, as in a masked tile;
//! 3. `out = Σ_j p_j v_j / Σ_j p_j` over V stored `[keys, d rounded up to 16]` (zero padded), one
//!    chain of multiply-adds per row (eight independent chains per block) over each V row loaded
//!    once; `lse = max + ln Σ p`.
//!
//! The same value as the online softmax up to the order of the floating-point operations: no
//! rescaling, and each exponential once. Every sum runs in an order fixed by the shape, so results
//! are the same on every run and thread count. f32 runs compiled for the widest SIMD the CPU has
//! (simd.rs's `multiversion`, every multiply-add fused, the exponentials' too: `simd::exp_fused`; a
//! fused multiply-add is exact everywhere); f64 runs the same loops with libm's `exp`. Measured at
//! ds-moe-tiny's shape (16 x 128 tokens, 8 query and 2 key/value heads of 16): 4.1 ms of CPU time
//! per forward against the tiles' 5.7 ms (busy machine, one core's share). On AVX-512 machines f32
//! at head dims 16 and 32 runs these loops written with intrinsics instead
//! (attention_rows_avx512.rs: the same bits, a third less time).

use super::elem::prelude::*;
use super::elem::{Acc, Float};
use super::simd::{exp_fused, exp_shifted_lanes, lane_max, lane_sum, max_lanes, multiversion, LANES};

/// The largest head dim that takes this path (attention.rs decides per tile).
pub(super) const MAX_HEAD_DIM: usize = 32;
/// The most keys a row of this path reads: `Kᵀ` and V of 1,024 keys at head dim 32 are 256 KiB.
pub(super) const MAX_KEYS: usize = 1024;

/// One query tile's operands, gathered by attention.rs: positions `lo .. lo + rows / g` of one
/// sequence, the `g` query heads of one key/value head, and that head's keys `0 .. keys`.
pub(crate) struct RowTile<'a, A> {
    /// scale·q, `d` wide, stacked position-major: row `i·g + h` is position `lo + i`, head `h`.
    pub q: &'a [A],
    /// Kᵀ: `d` rows of `ldk` (the keys rounded up to 16, zero padded).
    pub kt: &'a [A],
    pub ldk: usize,
    /// V: `keys` rows of `dp` (d rounded up to 16, zero padded).
    pub v: &'a [A],
    pub dp: usize,
    pub d: usize,
    pub g: usize,
    pub lo: usize,
}

/// Query rows handled together: their scores share each `Kᵀ` load, and their weighted sums are
/// independent chains of multiply-adds over the same V rows. With eight, each load of `Kᵀ` and of
/// a V row serves eight multiply-adds instead of four, and the eight 16-lane accumulators still
/// fit AVX-512's registers (on the busy 2-core machine four and eight measured the same, within
/// its noise). Rows of a block that see fewer keys than its last row weigh the extra keys by
/// exact zeros, so the grouping does not change any row's value.
pub(super) const BLOCK: usize = 8;

/// `out` (rows x d) and `lse` (rows) of every query row of `t`. `exp` and `madd(a, b, c) = a·b + c`
/// are the arithmetic type's.
#[inline(always)]
pub(super) fn rows_body<A: Acc>(
    t: &RowTile<A>,
    out: &mut [A],
    lse: &mut [A],
    exp: impl Fn(A) -> A + Copy,
    madd: impl Fn(A, A, A) -> A + Copy,
) {
    let rows = lse.len();
    let mut s = vec![A::zero(); BLOCK * t.ldk];
    let full = rows / BLOCK * BLOCK;
    for r0 in (0..full).step_by(BLOCK) {
        block::<A, BLOCK>(t, r0, &mut s, out, lse, exp, madd);
    }
    for r0 in full..rows {
        block::<A, 1>(t, r0, &mut s, out, lse, exp, madd);
    }
}

/// Stacked rows `r0 .. r0 + R` of `t` into `out` and `lse`, with `s` (R rows of `ldk`) as the
/// score rows. Row r sees keys `0 ..= lo + r / g`, so the block's first row sees the fewest.
#[inline(always)]
fn block<A: Acc, const R: usize>(
    t: &RowTile<A>,
    r0: usize,
    s: &mut [A],
    out: &mut [A],
    lse: &mut [A],
    exp: impl Fn(A) -> A + Copy,
    madd: impl Fn(A, A, A) -> A + Copy,
) {
    let (d, ldk) = (t.d, t.ldk);
    let keys: [usize; R] = std::array::from_fn(|r| t.lo + (r0 + r) / t.g + 1);
    let q: [&[A]; R] = std::array::from_fn(|r| &t.q[(r0 + r) * d..][..d]);
    // Scores, 16 keys at a time: one load of Kᵀ feeds every row's multiply-add.
    for j in (0..keys[R - 1].div_ceil(LANES)).map(|j| j * LANES) {
        let mut acc = [[A::zero(); LANES]; R];
        for c in 0..d {
            let k = &t.kt[c * ldk + j..][..LANES];
            for (acc, q) in acc.iter_mut().zip(&q) {
                for l in 0..LANES {
                    acc[l] = madd(q[c], k[l], acc[l]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            s[r * ldk + j..][..LANES].copy_from_slice(acc);
        }
    }
    // Each row's softmax over its own keys, the ragged end of its last vector masked.
    let mut inv = [A::zero(); R];
    for r in 0..R {
        let row = &mut s[r * ldk..][..keys[r].div_ceil(LANES) * LANES];
        row[keys[r]..].fill(A::neg_infinity());
        let mut lanes = [A::neg_infinity(); LANES];
        max_lanes(row, &mut lanes);
        let max = lane_max(lanes);
        let mut lanes = [A::zero(); LANES];
        exp_shifted_lanes(row, max, exp, &mut lanes);
        let sum = lane_sum(lanes);
        // Zero weights up to the block's last key: the weighted sum below runs every row over
        // the keys of the block's last row, as a masked tile's product would.
        s[r * ldk..][..keys[R - 1]].iter_mut().skip(keys[r]).for_each(|p| *p = A::zero());
        inv[r] = sum.recip();
        lse[r0 + r] = max + sum.ln();
    }
    // Weighted values, 16 columns at a time: one chain of multiply-adds per row over the keys.
    let n = keys[R - 1];
    let p: [&[A]; R] = std::array::from_fn(|r| &s[r * ldk..][..n]);
    for c0 in (0..d).step_by(LANES) {
        let mut acc = [[A::zero(); LANES]; R];
        for (j, vj) in t.v.chunks_exact(t.dp).take(n).enumerate() {
            let vj = &vj[c0..][..LANES];
            for (acc, p) in acc.iter_mut().zip(&p) {
                for l in 0..LANES {
                    acc[l] = madd(p[j], vj[l], acc[l]);
                }
            }
        }
        let width = LANES.min(d - c0);
        for (r, acc) in acc.iter().enumerate() {
            let scaled: [A; LANES] = std::array::from_fn(|l| acc[l] * inv[r]);
            out[(r0 + r) * d + c0..][..width].copy_from_slice(&scaled[..width]);
        }
    }
}

#[inline(always)]
fn rows_f32_body(t: &RowTile<f32>, out: &mut [f32], lse: &mut [f32]) {
    rows_body(t, out, lse, exp_fused, f32::mul_add)
}

multiversion! {
    /// `rows_body` for f32: Cephes `exp` and multiply-adds, fused, at the CPU's widest SIMD width.
    pub(crate) rows_f32(t: &RowTile<f32>, out: &mut [f32], lse: &mut [f32]) -> () = rows_f32_body
}

/// Where one key/value head's rows lie in the `[tokens, kv_heads, d]` K and V arrays: key `j` of
/// the tile's sequence is `d` elements at `j · stride` of each slice.
pub(super) struct KeyRows<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub stride: usize,
    pub keys: usize,
}

/// One query tile on this path: `q` its scale·q rows (`rows · d`, stacked position-major, `g`
/// heads per position from position `lo`), `kv` its key/value head's keys `0 .. kv.keys`.
/// Returns the output rows and their log-sum-exp. K and V are widened straight into the
/// transposed and padded layouts the rows read: one pass over each.
pub(super) fn forward<T: Float>(q: &[T::Acc], kv: &KeyRows<T>, d: usize, g: usize, lo: usize) -> (Vec<T::Acc>, Vec<T::Acc>) {
    let keys = kv.keys;
    let (ldk, dp) = (keys.div_ceil(LANES) * LANES, d.div_ceil(LANES) * LANES);
    let zero = T::Acc::zero();
    let mut kt = vec![zero; d * ldk];
    let mut vp = vec![zero; keys * dp];
    for (j, dst) in vp.chunks_exact_mut(dp).enumerate() {
        let (kj, vj) = (&kv.k[j * kv.stride..][..d], &kv.v[j * kv.stride..][..d]);
        for (c, &x) in kj.iter().enumerate() {
            kt[c * ldk + j] = x.widen();
        }
        dst.iter_mut().zip(vj).for_each(|(o, x)| *o = x.widen());
    }
    let rows = q.len() / d;
    let (mut out, mut lse) = (vec![zero; rows * d], vec![zero; rows]);
    let tile = RowTile { q, kt: &kt, ldk, v: &vp, dp, d, g, lo };
    <T::Acc as Acc>::attention_rows(&tile, &mut out, &mut lse);
    (out, lse)
}
