//! attention_rows.rs's whole-row kernel for f32 at head dims 16 and 32 on AVX-512, written with
//! intrinsics: the same loops, the same operations in the same order, so the same bits.
//!
//! Why a second copy of the loops: compiled from the generic body, the score loop kept the
//! block's eight query-row pointers on the stack and bounds-checked each of them at every step
//! over d, the weighted sum bounds-checked every row's weight at every key, and each row's lane
//! maximum and sum were reduced through memory, one scalar at a time. Here the query rows and
//! weights are read at fixed offsets from one pointer (each element one broadcast operand of its
//! fused multiply-add), the loop over d unrolls with d a constant, and the lane reductions stay
//! in the register, pair by pair as `simd::lane_tree` pairs them. The exponentials are
//! `simd::exp_fused`'s operations, vector for vector (avx512_math.rs).
//!
//! Measured at ds-moe-tiny's shape (16 x 128 tokens, 8 query and 2 key/value heads of 16; 2
//! threads, the best of 15 runs of 20 forwards, alternated): 2.08-2.20 ms per forward on the
//! generic loops, 1.53-1.56 ms here; at head dim 32, 2.74-3.29 ms against 1.99-2.02 ms. The
//! exponentials are now about two fifths of the time, the scores and weighted sums a third.
//!
//! Per block of R query rows (stacked position-major, see `RowTile`):
//! 1. scores: for each 16 keys the last row sees, each of the d vectors of `Kᵀ` is loaded once
//!    and each row's 16 scores are d fused multiply-adds of its query elements, from zero, in
//!    order of d;
//! 2. per row: the ragged end of its last vector set to −∞, lane maxima (`max_nan`) reduced as
//!    `simd::lane_max` reduces them, `p = exp(s − max)` stored over the scores and summed in 16
//!    lanes reduced as `simd::lane_sum`, the weights past the row's own keys up to the block's
//!    last set to 0;
//! 3. per 16 output columns: for each key, one load of its V row and a fused multiply-add per
//!    row, then the scaling by 1 / Σ p. `lse = max + ln Σ p`.

use std::arch::x86_64::*;

use super::attention_rows::{RowTile, BLOCK};
use super::avx512_math::{exp, load, store};
use super::simd::LANES;

/// Runs `t`'s rows into `out` and `lse` on this path and returns true, or returns false (and
/// touches nothing) when it does not apply: a head dim other than 16 or 32, or no AVX-512F.
pub(super) fn rows(t: &RowTile<f32>, out: &mut [f32], lse: &mut [f32]) -> bool {
    if !is_x86_feature_detected!("avx512f") || !matches!(t.d, 16 | 32) {
        return false;
    }
    let rows = lse.len();
    if rows == 0 {
        return true;
    }
    // The tile's shape, as attention_rows.rs's `forward` builds it; the loops read and write
    // through raw pointers inside these bounds.
    let keys = t.lo + (rows - 1) / t.g + 1;
    assert!(t.g > 0 && t.dp == t.d && t.ldk >= keys.div_ceil(LANES) * LANES, "row tile layout");
    assert!(t.q.len() >= rows * t.d && out.len() >= rows * t.d, "row tile query and output rows");
    assert!(t.kt.len() >= t.d * t.ldk && t.v.len() >= keys * t.dp, "row tile keys and values");
    // SAFETY: AVX-512F is present (checked above) and the slices hold what the asserts say.
    unsafe {
        match t.d {
            16 => rows_of::<16>(t, out, lse),
            _ => rows_of::<32>(t, out, lse),
        }
    }
    true
}

/// # Safety
/// The CPU has AVX-512F; `t.d == D` and the slices are as `rows` asserts.
#[target_feature(enable = "avx512f")]
unsafe fn rows_of<const D: usize>(t: &RowTile<f32>, out: &mut [f32], lse: &mut [f32]) {
    let rows = lse.len();
    let mut s = vec![0f32; BLOCK * t.ldk];
    let full = rows / BLOCK * BLOCK;
    for r0 in (0..full).step_by(BLOCK) {
        // SAFETY: the caller's guarantees; rows r0 .. r0 + BLOCK exist.
        unsafe { block::<D, BLOCK>(t, r0, &mut s, out, lse) };
    }
    for r0 in full..rows {
        // SAFETY: as above, for the one row r0.
        unsafe { block::<D, 1>(t, r0, &mut s, out, lse) };
    }
}

/// Rows `r0 .. r0 + R` of `t` into `out` and `lse`, `s` (R rows of `ldk`) holding their scores
/// and then their weights.
///
/// # Safety
/// As `rows_of`, and `r0 + R <= lse.len()`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block<const D: usize, const R: usize>(t: &RowTile<f32>, r0: usize, s: &mut [f32], out: &mut [f32], lse: &mut [f32]) {
    let ldk = t.ldk;
    let keys: [usize; R] = std::array::from_fn(|r| t.lo + (r0 + r) / t.g + 1);
    let n = keys[R - 1];
    // Bounds, from the caller's: row r0 + r sees keys[r] <= n keys, and `ldk` covers n rounded
    // up to whole vectors, so the reads below stay inside q (rows · D), Kᵀ (D · ldk) and V
    // (n · D).
    let (q, kt) = (t.q.as_ptr().wrapping_add(r0 * D), t.kt.as_ptr());
    for j in (0..n.div_ceil(LANES)).map(|j| j * LANES) {
        let mut acc = [_mm512_setzero_ps(); R];
        for c in 0..D {
            // SAFETY: c·ldk + j + 16 <= D·ldk (bounds above); unaligned load.
            let k = unsafe { _mm512_loadu_ps(kt.add(c * ldk + j)) };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: element c of query row r0 + r.
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *q.add(r * D + c) }), k, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            store(&mut s[r * ldk + j..][..LANES], *acc);
        }
    }
    let mut inv = [0f32; R];
    for r in 0..R {
        let (max, sum) = softmax_row(&mut s[r * ldk..][..keys[r].div_ceil(LANES) * LANES], keys[r]);
        s[r * ldk..][keys[r]..n].fill(0.0);
        inv[r] = sum.recip();
        lse[r0 + r] = max + sum.ln();
    }
    // The weights, read at fixed offsets from one pointer (slices per row kept a bounds check
    // per row and key in the loop): row r's key j < n is at r·ldk + j < R·ldk <= s.len().
    let (p, v) = (s.as_ptr(), t.v.as_ptr());
    for c0 in (0..D).step_by(LANES) {
        let mut acc = [_mm512_setzero_ps(); R];
        for j in 0..n {
            // SAFETY: V row j < n, columns c0 .. c0 + 16 <= D (bounds above); unaligned load.
            let vj = unsafe { _mm512_loadu_ps(v.add(j * D + c0)) };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: weight j of row r (above).
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *p.add(r * ldk + j) }), vj, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            store(&mut out[(r0 + r) * D + c0..][..LANES], _mm512_mul_ps(*acc, _mm512_set1_ps(inv[r])));
        }
    }
}

/// The softmax of one score row, `row` its whole vectors through the one holding score `keys - 1`:
/// the lanes after the last score set to −∞, `row[i] = e^(row[i] − max)`. Returns the max and the
/// sum, in attention_rows.rs's order (lane accumulators, then `lane_max` / `lane_sum`).
#[inline]
#[target_feature(enable = "avx512f")]
fn softmax_row(row: &mut [f32], keys: usize) -> (f32, f32) {
    let kept: __mmask16 = u16::MAX >> (row.len() - keys);
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    let last = row.len() - LANES;
    let ragged = _mm512_mask_blend_ps(kept, neg_inf, load(&row[last..]));
    store(&mut row[last..], ragged);
    let mut lanes = neg_inf;
    for x in row.chunks_exact(LANES) {
        lanes = max_nan(lanes, load(x));
    }
    let max = tree(lanes, max_nan);
    let (shift, mut sums) = (_mm512_set1_ps(max), _mm512_setzero_ps());
    for x in row.chunks_exact_mut(LANES) {
        let e = exp(_mm512_sub_ps(load(x), shift));
        store(x, e);
        sums = _mm512_add_ps(sums, e);
    }
    (max, tree(sums, _mm512_add_ps))
}

/// `a[j] = combine(a[j], a[j + w])` for w = 8, 4, 2, 1, and lane 0: `simd::lane_tree`'s pairs in
/// its order, inside the register.
#[inline]
#[target_feature(enable = "avx512f")]
fn tree(a: __m512, combine: unsafe fn(__m512, __m512) -> __m512) -> f32 {
    // SAFETY: `combine` is one of this file's lane operations, which need AVX-512F (present).
    unsafe {
        let a = combine(a, _mm512_shuffle_f32x4::<0b11_10_11_10>(a, a));
        let a = combine(a, _mm512_shuffle_f32x4::<0b01_01_01_01>(a, a));
        let a = combine(a, _mm512_permute_ps::<0b11_10_11_10>(a));
        _mm512_cvtss_f32(combine(a, _mm512_permute_ps::<0b01_01_01_01>(a)))
    }
}

/// `elem::max_nan` lane by lane: `b` where it is larger than `a` or NaN, else `a`.
#[inline]
#[target_feature(enable = "avx512f")]
fn max_nan(a: __m512, b: __m512) -> __m512 {
    let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(b, a) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(b, b);
    _mm512_mask_blend_ps(take, a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::attention_rows::rows_f32;
    use crate::Rng;

    /// The rows of random tiles, both head dims, blocks and remainders, several group sizes and
    /// offsets, scores with a NaN and −∞ among them: the same bits as the generic loops.
    #[test]
    fn rows_are_the_generic_loops_bit_for_bit() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut rng = Rng::new(11);
        for (d, g, lo, positions) in [(16usize, 4usize, 0usize, 64usize), (16, 1, 5, 13), (32, 2, 0, 37), (32, 4, 61, 3), (16, 3, 190, 64)] {
            let keys = lo + positions;
            let (ldk, rows) = (keys.div_ceil(LANES) * LANES, positions * g);
            let mut q: Vec<f32> = (0..rows * d).map(|_| rng.uniform() as f32 * 4.0 - 2.0).collect();
            let mut kt = vec![0f32; d * ldk];
            for c in 0..d {
                kt[c * ldk..c * ldk + keys].iter_mut().for_each(|x| *x = rng.uniform() as f32 * 4.0 - 2.0);
            }
            let v: Vec<f32> = (0..keys * d).map(|_| rng.uniform() as f32 - 0.5).collect();
            if positions > 8 {
                q[3 * d] = f32::NAN;
                q[5 * d + 1] = f32::INFINITY;
            }
            let tile = RowTile { q: &q, kt: &kt, ldk, v: &v, dp: d, d, g, lo };
            let (mut out, mut lse) = (vec![f32::NAN; rows * d], vec![f32::NAN; rows]);
            assert!(super::rows(&tile, &mut out, &mut lse));
            let (mut want, mut want_lse) = (vec![0f32; rows * d], vec![0f32; rows]);
            rows_f32(&tile, &mut want, &mut want_lse);
            let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
            assert!(same(&out, &want) && same(&lse, &want_lse), "d {d}, g {g}, lo {lo}, {positions} positions");
        }
    }
}
