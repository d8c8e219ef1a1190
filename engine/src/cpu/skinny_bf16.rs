//! The inner loops of the decode products (skinny.rs) for bf16 weights on AVX-512, written with
//! intrinsics. The generic loops widen each bf16 to f32 one element at a time, and the compiler
//! vectorises them two lanes wide at best, which left batch-1 decode compute-bound at about a fifth
//! of the copy bandwidth. Here sixteen weights are widened at once (zero-extend to 32 bits, shift
//! into the high half: a bf16 is the top half of an f32) and multiplied and added sixteen wide.
//!
//! Bits: the operations per output are exactly the generic loops' (a multiply then an add per
//! element, not a fused multiply-add; the dot's sixteen lane sums reduced pairwise in the same
//! order), so a product gives the same bits on either path and with any number of threads.

use std::any::TypeId;
use std::arch::x86_64::*;

use half::bf16;

use super::elem::Float;
use super::skinny::{finish_dot, LANES};


/// How far ahead the loops ask for weights (software prefetch): a batch-1 product does two flops
/// per two bytes loaded, so without it each load waits on memory. `dot` reads one long run;
/// `axpys` reads pieces of rows n apart, where the hardware prefetcher restarts at each piece.
const DOT_AHEAD: usize = 1024;
const ROWS_AHEAD: usize = 4;

/// The operands as bf16 weights and f32 activations when `T` is bf16.
pub(super) fn operands<'a, T: Float + 'static>(a: &'a [T::Acc], b: &'a [T], out: &'a mut [T::Acc]) -> Option<(&'a [f32], &'a [bf16], &'a mut [f32])> {
    if TypeId::of::<T>() != TypeId::of::<bf16>() || TypeId::of::<T::Acc>() != TypeId::of::<f32>() {
        return None;
    }
    // SAFETY: T is bf16 and T::Acc is f32 (checked just above), so these are the same slices
    // with their own types' layouts; lengths and lifetimes carry over unchanged.
    unsafe {
        Some((
            std::slice::from_raw_parts(a.as_ptr().cast::<f32>(), a.len()),
            std::slice::from_raw_parts(b.as_ptr().cast::<bf16>(), b.len()),
            std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), out.len()),
        ))
    }
}

/// Sixteen bf16 at `p` as f32.
///
/// # Safety
/// The CPU has AVX-512F and `p` points at 16 readable bf16.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn widen16(p: *const bf16) -> __m512 {
    // SAFETY: the caller guarantees 32 readable bytes at p; the load is unaligned.
    let h = unsafe { _mm256_loadu_si256(p.cast::<__m256i>()) };
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

/// `out[i·w + jj] = a_i · rows[jj]` (skinny.rs's `dots`).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dots(a: &[f32], rows: &[bf16], m: usize, k: usize, out: &mut [f32]) {
    let width = out.len() / m;
    for (jj, row) in rows.chunks_exact(k).enumerate() {
        for i in 0..m {
            // SAFETY: AVX-512F is the caller's guarantee.
            out[i * width + jj] = unsafe { dot(&a[i * k..(i + 1) * k], row) };
        }
    }
}

/// Σ a[p]·b[p] in `LANES` lane sums, finished as skinny.rs's `dot` (`finish_dot`).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn dot(a: &[f32], b: &[bf16]) -> f32 {
    let whole = a.len() / LANES * LANES;
    let mut acc = _mm512_setzero_ps();
    for p in (0..whole).step_by(LANES) {
        // A prefetch never faults, so the address may run past the slice (wrapping_add: no
        // out-of-bounds pointer arithmetic is claimed).
        _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add(p + DOT_AHEAD).cast::<i8>());
        // SAFETY: p + 16 <= whole <= a.len() == b.len(); unaligned loads.
        let (x, y) = unsafe { (_mm512_loadu_ps(a.as_ptr().add(p)), widen16(b.as_ptr().add(p))) };
        acc = _mm512_add_ps(acc, _mm512_mul_ps(x, y));
    }
    let mut lanes = [0f32; LANES];
    // SAFETY: lanes holds 16 f32; unaligned store.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
    finish_dot::<bf16>(lanes, &a[whole..], &b[whole..])
}

/// `out[i·width + jj] += Σ_{p ∈ rows} a[i, p]·b[p, j0 + jj]` (skinny.rs's `axpys`).
///
/// # Safety
/// The CPU has AVX-512F.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn axpys(a: &[f32], b: &[bf16], m: usize, n: usize, k: usize, rows: std::ops::Range<usize>, j0: usize, width: usize, out: &mut [f32]) {
    let whole = width / LANES * LANES;
    for p in rows {
        let row = &b[p * n + j0..p * n + j0 + width];
        for i in 0..m {
            let ai = a[i * k + p];
            let o = &mut out[i * width..(i + 1) * width];
            let av = _mm512_set1_ps(ai);
            let ahead = b.as_ptr().wrapping_add((p + ROWS_AHEAD) * n + j0);
            for j in (0..whole).step_by(LANES) {
                if i == 0 {
                    // As in `dot`: a prefetch of a row a few ahead, which may lie past b.
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(j).cast::<i8>());
                }
                // SAFETY: j + 16 <= whole <= width == row.len() == o.len(); unaligned loads and store.
                unsafe {
                    let sum = _mm512_add_ps(_mm512_loadu_ps(o.as_ptr().add(j)), _mm512_mul_ps(av, widen16(row.as_ptr().add(j))));
                    _mm512_storeu_ps(o.as_mut_ptr().add(j), sum);
                }
            }
            for (o, v) in o[whole..].iter_mut().zip(&row[whole..]) {
                *o += ai * v.widen();
            }
        }
    }
}
