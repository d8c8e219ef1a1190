//! Floating-point semantics: directed rounding, the approximate instructions, conversions.
//!
//! Round-to-nearest arithmetic uses the host's IEEE operations, which are correctly rounded
//! (`f32::mul_add` is a true fused multiply-add). Directed rounding (`.rz .rm .rp`) is built from
//! an exact representation of the result: the f32 operands' product is exact in f64, and the f64
//! sum's rounding error is recovered exactly by TwoSum, so the true result is `s + e` with both
//! doubles known; the f32 nearest to `s` is then moved one ulp in the rounding direction when
//! the remaining residual points that way.
//!
//! Approximate instructions (documented model vs the PTX ISA's bounds):
//! - `ex2.approx.ftz.f32`: modelled as 2^x computed in f64 and rounded to nearest f32 (error
//!   <= 0.5 ulp + 2^-29 relative); the ISA bounds the hardware at 2 ulp over the full range, so
//!   the model is within the ISA's contract but not the SFU's bits: results may differ from a
//!   GPU in the last bit or two.
//! - `rcp.approx.ftz.f32`: modelled as the correctly rounded 1/x (<= 0.5 ulp); the ISA bounds
//!   the hardware at 1 ulp.
//! - `lg2.approx`, `rsqrt.approx`, `tanh.approx`: f64 evaluation rounded to f32 (ISA bounds:
//!   2^-22.6 absolute for lg2, 2^-22.9 relative for rsqrt, 2^-10.987 for tanh).
//!
//! `.ftz` flushes subnormal inputs and results to sign-preserving zero.

use crate::ir::{Rnd, Ty};

#[inline]
pub fn f32_of(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

#[inline]
pub fn bits32(f: f32) -> u64 {
    f.to_bits() as u64
}

#[inline]
pub fn f64_of(v: u64) -> f64 {
    f64::from_bits(v)
}

pub fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let b = x.to_bits();
    f32::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

fn next_down(x: f32) -> f32 {
    -next_up(-x)
}

/// Rounds the exact value `s + e` (doubles, |e| tiny relative to s) to f32 in direction `rnd`.
pub fn round_f32(s: f64, e: f64, rnd: Rnd) -> f32 {
    let r = s as f32;
    if !r.is_finite() && s.is_finite() {
        // Overflow: directed modes stop at the largest finite value on their side.
        return match (rnd, s > 0.0) {
            (Rnd::Rn, _) => r,
            (Rnd::Rz, true) | (Rnd::Rm, true) => f32::MAX,
            (Rnd::Rz, false) | (Rnd::Rp, false) => f32::MIN,
            _ => r,
        };
    }
    if !r.is_finite() {
        return r;
    }
    let residual = (s - r as f64) + e;
    match rnd {
        Rnd::Rn => {
            // `s as f32` double-rounds only when `s` is exactly halfway between two f32s and the
            // exact value is not: the sign of `e` then picks the side.
            let toward = if s > r as f64 { next_up(r) } else { next_down(r) };
            if e != 0.0 && s != r as f64 && s - r as f64 == toward as f64 - s {
                if (e > 0.0) == (toward > r) { toward } else { r }
            } else {
                r
            }
        }
        Rnd::Rp => if residual > 0.0 { next_up(r) } else { r },
        Rnd::Rm => if residual < 0.0 { next_down(r) } else { r },
        Rnd::Rz => {
            if r > 0.0 && residual < 0.0 || (r == 0.0 && s > 0.0 && residual < 0.0) {
                next_down(r)
            } else if r < 0.0 && residual > 0.0 {
                next_up(r)
            } else {
                r
            }
        }
    }
}

/// Exact `a + b` as `(s, e)` (TwoSum).
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let e = (a - (s - bb)) + (b - bb);
    (s, e)
}

pub fn add_f32(a: f32, b: f32, rnd: Rnd) -> f32 {
    if rnd == Rnd::Rn {
        return a + b;
    }
    let (s, e) = two_sum(a as f64, b as f64);
    round_f32(s, e, rnd)
}

pub fn mul_f32(a: f32, b: f32, rnd: Rnd) -> f32 {
    if rnd == Rnd::Rn {
        return a * b;
    }
    round_f32(a as f64 * b as f64, 0.0, rnd)
}

pub fn fma_f32(a: f32, b: f32, c: f32, rnd: Rnd) -> f32 {
    if rnd == Rnd::Rn {
        return a.mul_add(b, c);
    }
    let (s, e) = two_sum(a as f64 * b as f64, c as f64);
    round_f32(s, e, rnd)
}

pub fn ex2_approx(x: f32) -> f32 {
    ftz((ftz(x) as f64).exp2() as f32)
}

pub fn rcp_approx(x: f32) -> f32 {
    ftz(1.0 / ftz(x))
}

/// f32 -> bf16 bits, round to nearest even (NaN stays NaN).
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

pub fn bf16_to_f32(b: u16) -> f32 {
    half::bf16::from_bits(b).to_f32()
}

pub fn f16_to_f32(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

/// Rounds to an integral value (`.rni .rzi .rmi .rpi`).
pub fn round_int(x: f64, rnd: Rnd) -> f64 {
    match rnd {
        Rnd::Rn => x.round_ties_even(),
        Rnd::Rz => x.trunc(),
        Rnd::Rm => x.floor(),
        Rnd::Rp => x.ceil(),
    }
}

/// A float value of type `ty` from register bits, widened to f64 (exact).
pub fn to_f64(v: u64, ty: Ty) -> f64 {
    match ty {
        Ty::F64 => f64_of(v),
        Ty::F32 => f32_of(v) as f64,
        Ty::F16 => f16_to_f32(v as u16) as f64,
        Ty::Bf16 => bf16_to_f32(v as u16) as f64,
        _ => unreachable!("to_f64 on a non-float type"),
    }
}

/// f64 -> register bits of float type `ty`, rounding per `rnd` (f32 directed modes exact; f16/bf16
/// round to nearest even from the f32 value, which is exact when the source is f32).
pub fn from_f64(x: f64, ty: Ty, rnd: Rnd) -> u64 {
    match ty {
        Ty::F64 => x.to_bits(),
        Ty::F32 => bits32(round_f32(x, 0.0, rnd)),
        Ty::F16 => f32_to_f16(x as f32) as u64,
        Ty::Bf16 => f32_to_bf16(x as f32) as u64,
        _ => unreachable!("from_f64 on a non-float type"),
    }
}

/// Float -> integer with PTX's saturation (NaN -> 0, out of range -> the nearest bound).
pub fn float_to_int(x: f64, dst: Ty) -> u64 {
    if x.is_nan() {
        return 0;
    }
    let v = match (dst.is_signed(), dst.bits()) {
        (true, 8) => x.clamp(i8::MIN as f64, i8::MAX as f64) as i64 as u64,
        (true, 16) => x.clamp(i16::MIN as f64, i16::MAX as f64) as i64 as u64,
        (true, 32) => x.clamp(i32::MIN as f64, i32::MAX as f64) as i64 as u64,
        (true, _) => x as i64 as u64,
        (false, 8) => x.clamp(0.0, u8::MAX as f64) as u64,
        (false, 16) => x.clamp(0.0, u16::MAX as f64) as u64,
        (false, 32) => x.clamp(0.0, u32::MAX as f64) as u64,
        (false, _) => x as u64,
    };
    v & dst.mask()
}
