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

/// bf16 weights per 64-byte cache line: the loops take two vectors per turn and prefetch once.
const LINE: usize = 2 * LANES;

/// Rows of b that `axpys` adds into its outputs per pass over them.
const ROWS_TOGETHER: usize = 4;

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

/// `acc + a[0..16]·b[0..16]`, a multiply then an add.
///
/// # Safety
/// The CPU has AVX-512F; `a` and `b` point at 16 readable elements each.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn dot16(acc: __m512, a: *const f32, b: *const bf16) -> __m512 {
    // SAFETY: the caller's guarantees; unaligned loads.
    unsafe { _mm512_add_ps(acc, _mm512_mul_ps(_mm512_loadu_ps(a), widen16(b))) }
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
///
/// The loop takes a cache line of weights (two vectors) per turn and asks for one line ahead per
/// turn: a prefetch per half line, as one vector per turn would issue, doubles the prefetches for
/// nothing and measured slower. The two vectors still go into the one accumulator in order, so the
/// sums are the same as one vector per turn.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn dot(a: &[f32], b: &[bf16]) -> f32 {
    let whole = a.len() / LANES * LANES;
    let lines = whole / LINE * LINE;
    let mut acc = _mm512_setzero_ps();
    let (a_at, b_at) = (|p: usize| a.as_ptr().wrapping_add(p), |p: usize| b.as_ptr().wrapping_add(p));
    for p in (0..lines).step_by(LINE) {
        // A prefetch never faults, so the address may run past the slice.
        _mm_prefetch::<_MM_HINT_T0>(b_at(p + DOT_AHEAD).cast::<i8>());
        // SAFETY: p + 32 <= lines <= a.len() == b.len().
        acc = unsafe { dot16(dot16(acc, a_at(p), b_at(p)), a_at(p + LANES), b_at(p + LANES)) };
    }
    if lines < whole {
        // SAFETY: lines + 16 == whole <= a.len() == b.len().
        acc = unsafe { dot16(acc, a_at(lines), b_at(lines)) };
    }
    let mut lanes = [0f32; LANES];
    // SAFETY: lanes holds 16 f32; unaligned store.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
    finish_dot::<bf16>(lanes, &a[whole..], &b[whole..])
}

/// `out[i·width + jj] += Σ_{p ∈ rows} a[i, p]·b[p, j0 + jj]` (skinny.rs's `axpys`).
///
/// Rows of b go `ROWS_TOGETHER` at a time: the outputs are loaded once, take the rows' terms in
/// order of p, and are stored once, instead of a load and a store per row. Each output still
/// receives its terms one by one in order of p, so the sums are the same bits.
///
/// # Safety
/// The CPU has AVX-512F.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn axpys(a: &[f32], b: &[bf16], m: usize, n: usize, k: usize, rows: std::ops::Range<usize>, j0: usize, width: usize, out: &mut [f32]) {
    let mut p = rows.start;
    while p + ROWS_TOGETHER <= rows.end {
        // SAFETY: AVX-512F is the caller's guarantee.
        unsafe { axpy_rows::<ROWS_TOGETHER>(a, b, m, n, k, p, j0, width, out) };
        p += ROWS_TOGETHER;
    }
    for p in p..rows.end {
        // SAFETY: as above.
        unsafe { axpy_rows::<1>(a, b, m, n, k, p, j0, width, out) };
    }
}

/// `axpys` over the R rows `p .. p + R` of b.
///
/// # Safety
/// The CPU has AVX-512F.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn axpy_rows<const R: usize>(a: &[f32], b: &[bf16], m: usize, n: usize, k: usize, p: usize, j0: usize, width: usize, out: &mut [f32]) {
    let whole = width / LANES * LANES;
    let lines = whole / LINE * LINE;
    let mut w = [&b[..0]; R];
    for (r, w) in w.iter_mut().enumerate() {
        *w = &b[(p + r) * n + j0..(p + r) * n + j0 + width];
    }
    for i in 0..m {
        let ai = &a[i * k + p..i * k + p + R];
        let mut av = [_mm512_setzero_ps(); R];
        for (v, &x) in av.iter_mut().zip(ai) {
            *v = _mm512_set1_ps(x);
        }
        let o = &mut out[i * width..(i + 1) * width];
        for j in (0..lines).step_by(LINE) {
            if i == 0 {
                for r in 0..R {
                    // As in `dot`: one line of a row a few ahead per row and turn, which may lie past b.
                    _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add((p + r + ROWS_AHEAD) * n + j0 + j).cast::<i8>());
                }
            }
            // SAFETY: j + 32 <= lines <= width == o.len() == each w[r].len().
            unsafe {
                add_terms(o, &av, &w, j);
                add_terms(o, &av, &w, j + LANES);
            }
        }
        if lines < whole {
            // SAFETY: lines + 16 == whole <= width == o.len() == each w[r].len().
            unsafe { add_terms(o, &av, &w, lines) };
        }
        for (jj, o) in o.iter_mut().enumerate().skip(whole) {
            for r in 0..R {
                *o += ai[r] * w[r][jj].widen();
            }
        }
    }
}

/// `o[j..j + 16] += Σ_r av[r]·w[r][j..j + 16]`, the R terms added in order of r, each a multiply
/// then an add.
///
/// # Safety
/// The CPU has AVX-512F; j + 16 <= o.len() and j + 16 <= w[r].len() for every r.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn add_terms<const R: usize>(o: &mut [f32], av: &[__m512; R], w: &[&[bf16]; R], j: usize) {
    // SAFETY: the caller's bounds; unaligned loads and store.
    unsafe {
        let mut sum = _mm512_loadu_ps(o.as_ptr().add(j));
        for r in 0..R {
            sum = _mm512_add_ps(sum, _mm512_mul_ps(av[r], widen16(w[r].as_ptr().add(j))));
        }
        _mm512_storeu_ps(o.as_mut_ptr().add(j), sum);
    }
}
