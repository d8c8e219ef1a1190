//! The widest SIMD the CPU has, chosen at run time, for the f32 loops that are not GEMMs: the
//! exponentials of softmax and cross-entropy rows and of attention's score tiles, the GeLU gating
//! of the dense MoE layer and its backward, and the row dot products of RMSNorm.
//!
//! One binary serves AVX2 and AVX-512 machines: each loop is written once, as plain Rust over
//! fixed 16-element chunks with a branch-free `exp`, and compiled three times, inside functions
//! with `#[target_feature(enable = "avx512f")]`, `"avx2,fma"` and none; the first call of each
//! entry point asks the CPU (`is_x86_feature_detected!`, cached by std) which to run. LLVM turns
//! the chunk loops into 16-lane (AVX-512), 8-lane (AVX2) or 4-lane (SSE2) vector code.
//!
//! `exp` is Cephes' `expf`: x = n·ln 2 + r with |r| ≤ ½ ln 2 (ln 2 split in two constants so that
//! n·ln 2 is exact), a degree-6 polynomial for eʳ, and 2ⁿ put into the exponent bits. Its error is
//! within 2 ulp of libm's, across the range a softmax or a sigmoid meets; results below e⁻⁸⁷·³
//! (under f32's smallest normal) are 0 and above e⁸⁸·⁷ are +∞, and a NaN stays NaN. libm's scalar
//! `expf` cannot vectorise, which made it most of a softmax's time.
//!
//! Sums run over 16 lane accumulators added pairwise at the end: a fixed order, so results are
//! the same on every run of one machine (the lane count does not depend on the SIMD width).

use std::mem::MaybeUninit;

use super::elem::{max_nan, Acc};

pub(super) const LANES: usize = 16;

/// eˣ for f32, branch-free (see the module comment).
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    exp_by(x, |a, b, c| a * b + c)
}

/// `exp` with each multiply-add fused (one rounding instead of two, so not `exp`'s bits, and as
/// accurate): nine of the 34 vector operations fewer. Attention's score rows take it (both their
/// loops, attention_rows.rs and attention_rows_avx512.rs, so that those agree bit for bit); on a
/// CPU without FMA `f32::mul_add` is libm's `fmaf`, exact and slow.
#[inline(always)]
pub(super) fn exp_fused(x: f32) -> f32 {
    exp_by(x, f32::mul_add)
}

/// `exp`'s steps with `madd(a, b, c) = a·b + c` for each multiply-add.
#[inline(always)]
fn exp_by(x: f32, madd: impl Fn(f32, f32, f32) -> f32) -> f32 {
    use exp_consts::*;
    let xc = x.clamp(MIN, MAX);
    let n = madd(xc, LOG2E, 0.5).floor();
    // xc − n·ln 2 in two steps; n·(−c) is −(n·c) exactly, so unfused this is (xc − n·c₁) − n·c₂.
    let r = madd(n, -LN2_LO, madd(n, -LN2_HI, xc));
    let mut p = POLY[0];
    for c in &POLY[1..] {
        p = madd(p, r, *c);
    }
    let er = madd(p * r, r, r) + 1.0;
    // n ∈ [-126, 128]: 2ⁿ via the exponent field (n = 128 only at MAX, handled below). The
    // biased exponent k = n + 127 ∈ [1, 254] is read from the low mantissa bits of k + 1.5·2²³,
    // where the float's spacing is 1: integer bit operations that vectorise, where the cast
    // `n as i32` (saturating, NaN to 0) compiles to one scalar conversion per lane. A NaN n
    // becomes 127 through `min`; its lane is replaced by x below.
    let k = (n.min(127.0) + (127.0 + ROUNDER)).to_bits() - ROUNDER.to_bits();
    let scale = f32::from_bits(k << 23);
    let y = er * scale;
    if x < MIN {
        0.0
    } else if x > MAX {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// `exp`'s constants, shared with its vector form (avx512_math.rs), which must give its bits.
pub(super) mod exp_consts {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// ln 2 in two parts: n·LN2_HI is exact for the n that occur.
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// The clamp of x: e^MAX is about f32's largest value, e^MIN its smallest normal.
    pub const MAX: f32 = 88.722_83;
    pub const MIN: f32 = -87.336_54;
    /// Cephes' polynomial for (eʳ − 1 − r) / r², highest degree first.
    pub const POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];
    /// 1.5·2²³, where the float's spacing is 1 (see `exp_by`).
    pub const ROUNDER: f32 = 12_582_912.0;
}

/// The 16 lane accumulators combined pairwise, halving the width at each step (lane j with lane
/// j + width): four vector steps where a left-to-right fold is a chain of sixteen scalar ones, and
/// an order fixed by the lane count alone.
#[inline(always)]
fn lane_tree<A: Copy>(acc: [A; LANES], combine: impl Fn(A, A) -> A) -> A {
    let mut a = acc;
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            a[j] = combine(a[j], a[j + width]);
        }
        width /= 2;
    }
    a[0]
}

/// Sum of 16 lane accumulators in a fixed pairwise order (generic so that scalar code can add in
/// the same order: softmax.rs's narrow rows).
#[inline(always)]
pub(super) fn lane_sum<A: std::ops::Add<Output = A> + Copy>(acc: [A; LANES]) -> A {
    lane_tree(acc, |a, b| a + b)
}

/// The largest of 16 lane maxima (`elem::max_nan`: NaN if any is NaN), pairwise as `lane_sum`.
/// A max is exact, so any order gives a left-to-right fold's value, up to the sign of a zero
/// maximum (-0 and +0 compare equal), which no caller can see: they subtract it or add it to a
/// logarithm of a sum of at least one.
#[inline(always)]
pub(super) fn lane_max<A: Acc>(acc: [A; LANES]) -> A {
    lane_tree(acc, max_nan)
}

/// `x[i] = e^(x[i] − shift)` over the whole vectors of `x` (a remainder is the caller's), each
/// lane's values added to `acc`: the vector step of `exp_shifted_sum` here and of
/// attention_rows.rs's score rows (whole vectors there, in the arithmetic type).
#[inline(always)]
pub(super) fn exp_shifted_lanes<A: Acc>(x: &mut [A], shift: A, exp: impl Fn(A) -> A, acc: &mut [A; LANES]) {
    for xc in x.chunks_exact_mut(LANES) {
        for j in 0..LANES {
            let e = exp(xc[j] - shift);
            xc[j] = e;
            acc[j] += e;
        }
    }
}

/// Lane maxima (`elem::max_nan`) of the whole vectors of `x` into `acc`: the vector step of
/// `row_max` here and of attention_rows.rs's score rows.
#[inline(always)]
pub(super) fn max_lanes<A: Acc>(x: &[A], acc: &mut [A; LANES]) {
    for xc in x.chunks_exact(LANES) {
        for j in 0..LANES {
            acc[j] = max_nan(acc[j], xc[j]);
        }
    }
}

/// `x[i] = e^(x[i] − shift)` in place; returns Σ x.
#[inline(always)]
fn exp_shifted_sum_body(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (xs, xt) = x.split_at_mut(x.len() / LANES * LANES);
    exp_shifted_lanes(xs, shift, exp, &mut acc);
    // The tail as one more (masked) vector step rather than a scalar loop: attention's rows end
    // at the causal diagonal, so most are ragged. Masked lanes add +0, which leaves a lane sum
    // unchanged (the sums start at +0 and only add non-negative terms).
    let mut tail = [0.0f32; LANES];
    tail[..xt.len()].copy_from_slice(xt);
    for j in 0..LANES {
        let e = if j < xt.len() { exp(tail[j] - shift) } else { 0.0 };
        tail[j] = e;
        acc[j] += e;
    }
    xt.copy_from_slice(&tail[..xt.len()]);
    lane_sum(acc)
}

/// The largest of `init` and the elements of `x`, NaN if any is NaN (`elem::max_nan`), over 16
/// lane maxima: a max is exact, so the lanes give the serial fold's value.
#[inline(always)]
fn row_max_body(x: &[f32], init: f32) -> f32 {
    let mut acc = [init; LANES];
    let split = x.len() / LANES * LANES;
    max_lanes(&x[..split], &mut acc);
    // The tail as one more vector step over a copy padded with `init`, which changes no lane.
    let mut tail = [init; LANES];
    tail[..x.len() - split].copy_from_slice(&x[split..]);
    max_lanes(&tail, &mut acc);
    max_nan(init, lane_max(acc))
}

/// Σ a[i]·b[i] over 16 lane accumulators. Each step is written as whole 16-element arrays, the
/// tail as one more step over zero-padded copies (adding +0 products leaves a lane unchanged, as
/// every lane starts at +0): indexed lane by lane over slices, LLVM vectorised the loop into
/// shuffled 4-lane pieces and the dot was three times slower.
#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    let split = a.len() / LANES * LANES;
    let mut acc = [0.0f32; LANES];
    let step = |acc: [f32; LANES], ac: &[f32; LANES], bc: &[f32; LANES]| std::array::from_fn(|j| acc[j] + ac[j] * bc[j]);
    for (ac, bc) in a[..split].chunks_exact(LANES).zip(b[..split].chunks_exact(LANES)) {
        acc = step(acc, ac.try_into().expect("16 lanes"), bc.try_into().expect("16 lanes"));
    }
    let (mut at, mut bt) = ([0.0f32; LANES], [0.0f32; LANES]);
    at[..a.len() - split].copy_from_slice(&a[split..]);
    bt[..a.len() - split].copy_from_slice(&b[split..]);
    lane_sum(step(acc, &at, &bt))
}

/// σ-form GeLU, x·σ(2u) with 2u = 2c·(x + a·x³) (as `elementwise::gelu`), scaled by `gate`:
/// `out[i] = gate · gelu(u[i])`.
/// `out` may be uninitialised: it is only written.
#[inline(always)]
fn gated_gelu_body(u: &[f32], gate: f32, out: &mut [MaybeUninit<f32>]) {
    const C2: f32 = (2.0 * super::elementwise::GELU_C) as f32;
    const A: f32 = super::elementwise::GELU_A as f32;
    for (o, &v) in out.iter_mut().zip(u) {
        let s = 1.0 / (1.0 + exp(-(C2 * (v + A * v * v * v))));
        o.write(gate * (v * s));
    }
}

/// The dense MoE layer's backward through `g = gate · gelu(u)`, in place over one expert's columns
/// of a row: `dg[i]` becomes `dg[i] · gate · gelu'(u[i])`, and the return value is
/// `Σ dg[i] · gelu(u[i])` (the gradient of `gate`), over 16 lane accumulators. GeLU and its
/// derivative share one σ(2u), as `elementwise::gelu_and_grad`.
#[inline(always)]
fn gelu_backward_body(dg: &mut [f32], u: &[f32], gate: f32) -> f32 {
    const C: f32 = super::elementwise::GELU_C as f32;
    const C2: f32 = (2.0 * super::elementwise::GELU_C) as f32;
    const A: f32 = super::elementwise::GELU_A as f32;
    const A3: f32 = (3.0 * super::elementwise::GELU_A) as f32;
    #[inline(always)]
    fn step(d: &mut f32, v: f32, gate: f32) -> f32 {
        let s = 1.0 / (1.0 + exp(-(C2 * (v + A * v * v * v))));
        let du = C * (1.0 + A3 * v * v);
        let (gl, gr) = (v * s, s + 2.0 * v * s * (1.0 - s) * du);
        let part = *d * gl;
        *d = *d * gate * gr;
        part
    }
    let mut acc = [0.0f32; LANES];
    let split = dg.len() / LANES * LANES;
    let (ds, dt) = dg.split_at_mut(split);
    for (dc, uc) in ds.chunks_exact_mut(LANES).zip(u[..split].chunks_exact(LANES)) {
        for j in 0..LANES {
            acc[j] += step(&mut dc[j], uc[j], gate);
        }
    }
    for (j, (d, &v)) in dt.iter_mut().zip(&u[split..]).enumerate() {
        acc[j] += step(d, v, gate);
    }
    lane_sum(acc)
}

/// Defines `$name`, which runs `$body` compiled for the widest of AVX-512F, AVX2 + FMA and the
/// baseline that the CPU supports, with the visibility given. `$name<T: Bound>(..)` defines a
/// generic one (one type parameter): each type the callers instantiate gets its three versions.
macro_rules! multiversion {
    ($(#[$doc:meta])* $vis:vis $name:ident $(<$g:ident: $bound:path>)? ($($arg:ident: $ty:ty),*) -> $ret:ty = $body:ident) => {
        $(#[$doc])*
        $vis fn $name $(<$g: $bound>)? ($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512 $(<$g: $bound>)? ($($arg: $ty),*) -> $ret {
                    $body $(::<$g>)? ($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2 $(<$g: $bound>)? ($($arg: $ty),*) -> $ret {
                    $body $(::<$g>)? ($($arg),*)
                }
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked just above.
                    return unsafe { avx512 $(::<$g>)? ($($arg),*) };
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA, checked just above.
                    return unsafe { avx2 $(::<$g>)? ($($arg),*) };
                }
            }
            $body $(::<$g>)? ($($arg),*)
        }
    };
}

pub(super) use multiversion;

multiversion! {
    /// `x[i] = e^(x[i] − shift)` in place; returns their sum.
    pub(crate) exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 = exp_shifted_sum_body
}

multiversion! {
    /// The largest of `init` and `x`'s elements, NaN if any is NaN.
    pub(crate) row_max(x: &[f32], init: f32) -> f32 = row_max_body
}

multiversion! {
    /// Σ a[i]·b[i] (a and b of one length), summed in a fixed lane order.
    pub(crate) dot(a: &[f32], b: &[f32]) -> f32 = dot_body
}

multiversion! {
    /// `out[i] = gate · gelu(u[i])` (the σ form of the tanh GeLU).
    pub(crate) gated_gelu(u: &[f32], gate: f32, out: &mut [MaybeUninit<f32>]) -> () = gated_gelu_body
}

multiversion! {
    /// `dg[i] ← dg[i] · gate · gelu'(u[i])` in place; returns `Σ dg[i] · gelu(u[i])` (old dg).
    pub(crate) gelu_backward(dg: &mut [f32], u: &[f32], gate: f32) -> f32 = gelu_backward_body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_over_the_range() {
        for (name, exp) in [("exp", exp as fn(f32) -> f32), ("exp_fused", exp_fused)] {
            let mut worst = 0.0f64;
            let mut x = -87.0f32;
            while x < 88.0 {
                let (got, want) = (exp(x) as f64, (x as f64).exp());
                worst = worst.max(((got - want) / want).abs());
                x += 0.0137;
            }
            assert!(worst < 2.5 * f32::EPSILON as f64, "{name}: relative error {worst}");
            assert_eq!(exp(f32::NEG_INFINITY), 0.0, "{name}");
            assert_eq!(exp(-200.0), 0.0, "{name}");
            assert_eq!(exp(0.0), 1.0, "{name}");
            assert_eq!(exp(100.0), f32::INFINITY, "{name}");
            assert!(exp(f32::NAN).is_nan(), "{name}");
        }
    }

    #[test]
    fn dispatched_loops_match_their_scalar_bodies() {
        // Ragged length: full 16-lane chunks and a tail.
        let x: Vec<f32> = (0..103).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.17).collect();
        let (mut a, mut b) = (x.clone(), x.clone());
        let (sa, sb) = (exp_shifted_sum(&mut a, 3.0), exp_shifted_sum_body(&mut b, 3.0));
        assert!((sa - sb).abs() <= 1e-6 * sb.abs());
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() <= 1e-6 * q.abs()));
        let reference: f64 = x.iter().map(|&v| (v as f64 - 3.0).exp()).sum();
        assert!(((sa as f64 - reference) / reference).abs() < 1e-6);
        let serial_max = x.iter().fold(-7.0f32, |m, &v| super::super::elem::max_nan(m, v));
        assert_eq!(row_max(&x, -7.0), serial_max);
        assert_eq!(row_max(&x, 1e9), 1e9);
        let mut with_nan = x.clone();
        with_nan[101] = f32::NAN;
        assert!(row_max(&with_nan, -7.0).is_nan());
        let (d, reference): (f32, f64) = (dot(&x, &a), x.iter().zip(&a).map(|(&p, &q)| p as f64 * q as f64).sum());
        assert_eq!(d, dot_body(&x, &a));
        assert!(((d as f64 - reference) / reference).abs() < 1e-6);
        let (mut a, mut b) = (vec![MaybeUninit::uninit(); 103], vec![MaybeUninit::uninit(); 103]);
        gated_gelu(&x, 0.5, &mut a);
        gated_gelu_body(&x, 0.5, &mut b);
        // SAFETY: both loops wrote all 103 elements.
        let (a, b): (Vec<f32>, Vec<f32>) = unsafe { (a.iter().map(|v| v.assume_init()).collect(), b.iter().map(|v| v.assume_init()).collect()) };
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() <= 1e-6 * q.abs().max(1e-6)));
        let gelu = |v: f64| 0.5 * v * (1.0 + (0.797_884_560_8 * (v + 0.044_715 * v * v * v)).tanh());
        assert!(x.iter().zip(&a).all(|(&v, &g)| (g as f64 - 0.5 * gelu(v as f64)).abs() < 1e-6 * (1.0 + v.abs() as f64)));
        // The backward against the scalar GeLU and derivative (gelu_and_grad), in f64.
        let dg: Vec<f32> = (0..103).map(|i| ((i * 53 % 89) as f32 - 44.0) * 0.03).collect();
        let (mut a, mut b) = (dg.clone(), dg.clone());
        let (sa, sb) = (gelu_backward(&mut a, &x, 0.7), gelu_backward_body(&mut b, &x, 0.7));
        assert_eq!(a, b);
        assert!((sa - sb).abs() <= 1e-6 * sb.abs().max(1.0));
        let mut reference = 0.0f64;
        for ((&v, &d), &got) in x.iter().zip(&dg).zip(&a) {
            let (gl, gr) = super::super::elementwise::gelu_and_grad(v as f64);
            reference += d as f64 * gl;
            assert!((got as f64 - d as f64 * 0.7 * gr).abs() < 1e-5 * (1.0 + (d as f64 * gr).abs()));
        }
        assert!((sa as f64 - reference).abs() < 1e-5 * reference.abs().max(1.0));
    }
}
