//! Vector forms of simd.rs's scalar functions for hand-written AVX-512 loops (the attention rows,
//! the fused sparse MoE layer), sixteen f32 lanes per call, and the loads and stores of a vector
//! from and to a slice. Each is the scalar function's
//! operations in the same order, so the same bits lane by lane (tested below), or, where no scalar
//! twin exists, as accurate as the scalar form.

use std::arch::x86_64::*;

use super::elementwise::{GELU_A, GELU_C};
use super::simd::LANES;

/// `simd::exp_fused` sixteen lanes at a time: the same operations, each multiply-add fused where
/// it fuses them, so the same bits in every lane, the special cases included.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn exp(x: __m512) -> __m512 {
    use super::simd::exp_consts::*;
    let set = _mm512_set1_ps;
    let (mul, add, fma) = (_mm512_mul_ps, _mm512_add_ps, _mm512_fmadd_ps);
    // A NaN lane clamps to MIN here (the scalar clamp keeps it); it is replaced by x below.
    let xc = _mm512_min_ps(_mm512_max_ps(x, set(MIN)), set(MAX));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(fma(xc, set(LOG2E), set(0.5)));
    let r = fma(n, set(-LN2_LO), fma(n, set(-LN2_HI), xc));
    let mut p = set(POLY[0]);
    for c in &POLY[1..] {
        p = fma(p, r, set(*c));
    }
    let er = add(fma(mul(p, r), r, r), set(1.0));
    let k = _mm512_sub_epi32(_mm512_castps_si512(add(_mm512_min_ps(n, set(127.0)), set(127.0 + ROUNDER))), _mm512_set1_epi32(ROUNDER.to_bits() as i32));
    let y = mul(er, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(k)));
    let y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, set(MIN)), y, _mm512_setzero_ps());
    let y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, set(MAX)), y, set(f32::INFINITY));
    _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), y, x)
}

/// The σ form of the tanh GeLU, `v · σ(2u)` with 2u = 2c·(v + a·v³) (as `simd::gated_gelu` with
/// a gate of 1), through this file's `exp`: within a few ulp of the tanh form. σ = 1 / (1 + e⁻²ᵘ)
/// is a 14-bit reciprocal estimate and one Newton step (about 28 bits before rounding), where a
/// division took 16 lanes every 10 or so cycles and was a sixth of the fused MoE tile's time;
/// 1 / ∞ (v far below zero) is set to 0 as the division gives it.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn gelu(v: __m512) -> __m512 {
    let set = _mm512_set1_ps;
    let cube = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(set(GELU_A as f32), v), v), v);
    let e = exp(_mm512_mul_ps(set(-2.0 * GELU_C as f32), _mm512_add_ps(v, cube)));
    let a = _mm512_add_ps(set(1.0), e);
    let y0 = _mm512_rcp14_ps(a);
    let s = _mm512_fmadd_ps(y0, _mm512_fnmadd_ps(a, y0, set(1.0)), y0);
    let s = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, set(f32::INFINITY)), s, _mm512_setzero_ps());
    _mm512_mul_ps(v, s)
}

/// The first 16 elements of `x` as a vector.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn load(x: &[f32]) -> __m512 {
    assert!(x.len() >= LANES, "a vector's 16 elements");
    // SAFETY: x holds at least 16 f32 (asserted); unaligned load.
    unsafe { _mm512_loadu_ps(x.as_ptr()) }
}

/// `v` into the first 16 elements of `x`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn store(x: &mut [f32], v: __m512) {
    assert!(x.len() >= LANES, "a vector's 16 elements");
    // SAFETY: x holds at least 16 f32 (asserted); unaligned store.
    unsafe { _mm512_storeu_ps(x.as_mut_ptr(), v) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// The lanes of `v`.
    #[target_feature(enable = "avx512f")]
    fn to_array(v: __m512) -> [f32; LANES] {
        let mut a = [0f32; LANES];
        store(&mut a, v);
        a
    }

    /// Every lane of the vector `exp` is `simd::exp_fused`'s bits, across the range, the clamps
    /// and the special values.
    #[test]
    fn vector_exp_is_the_scalar_exp_bit_for_bit() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.0625).collect();
        xs.extend([0.0, -0.0, f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 88.722_83, 88.73, -87.336_54, -87.34, f32::MIN_POSITIVE, -1e-30]);
        let mut rng = Rng::new(3);
        xs.extend((0..4096).map(|_| (rng.uniform() * 200.0 - 100.0) as f32));
        xs.resize(xs.len().div_ceil(LANES) * LANES, 1.0);
        for chunk in xs.chunks_exact(LANES) {
            // SAFETY: AVX-512F checked above; chunk holds 16 f32.
            let got = unsafe { to_array(exp(load(chunk))) };
            for (&x, g) in chunk.iter().zip(got) {
                let want = crate::cpu::simd::exp_fused(x);
                assert!(g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()), "exp({x:e}): {g:e} against {want:e}");
            }
        }
    }

    /// The vector GeLU against the tanh form in f64, across the range and at the special values.
    #[test]
    fn vector_gelu_is_the_tanh_form_to_rounding() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut xs: Vec<f32> = (-1600..1600).map(|i| i as f32 * 0.01).collect();
        xs.extend([0.0, -0.0, 50.0, -50.0, -500.0, 1e-30, -1e-30]);
        xs.resize(xs.len().div_ceil(LANES) * LANES, 1.0);
        for chunk in xs.chunks_exact(LANES) {
            // SAFETY: AVX-512F checked above.
            let got = unsafe { to_array(gelu(load(chunk))) };
            for (&x, g) in chunk.iter().zip(got) {
                // Beside a few ulp of its own, σ(2u) carries the rounding of its argument 2u
                // multiplied by |2u| (the condition number of exp).
                let want = super::super::elementwise::gelu(x as f64);
                let two_u = 2.0 * GELU_C * (x as f64 + GELU_A * (x as f64).powi(3));
                let bound = (4.0 + two_u.abs()) * f32::EPSILON as f64 * want.abs().max(1e-3);
                assert!((g as f64 - want).abs() <= bound, "gelu({x:e}): {g:e} against {want:e}");
            }
        }
        // SAFETY: AVX-512F checked above.
        let specials = unsafe { to_array(gelu(load(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))) };
        assert!(specials[0].is_nan() && specials[1] == f32::INFINITY, "{specials:?}");
    }
}
