//! Half-precision arithmetic: `add sub mul fma min max neg abs` on `.f16`, `.bf16` and the packed
//! `.f16x2` / `.bf16x2` (PTX ISA "Half Precision Floating-Point Instructions").
//!
//! A packed register holds two independent values, element 0 in bits 0-15 and element 1 in bits
//! 16-31; every operation applies to each half on its own. Arithmetic rounds to nearest even once:
//! each value is widened to f64 (exact), the sum or product is exact in f64 (a product of two 11-bit
//! significands fits in 53 bits, as does any sum whose addends' exponents are within 42 of each
//! other, and otherwise the smaller addend is below half an ulp of the 16-bit result), and the fma
//! is one f64 `mul_add` whose own rounding cannot move a 16-bit tie for the same reason, so the
//! 16-bit result is the correctly rounded one the ISA specifies. Modifiers:
//! - `.sat`: clamp to [0, 1], a NaN result becomes +0;
//! - `.relu` (fma): a negative result becomes +0, a NaN result the canonical NaN (0x7fff);
//! - min / max: a NaN operand yields the other operand, two NaNs the canonical NaN, and -0 < +0;
//!   with `.NaN` any NaN operand yields the canonical NaN.
//!
//! NaN results of arithmetic are the canonical NaN. `.ftz` is accepted and ignored, as for f32.

use super::alu::Alu;
use super::warp::{SregCtx, Warp};
use crate::ir::{HalfOp, Op, Operand, Ty};

const CANONICAL_NAN: u16 = 0x7fff;

fn widen(h: u16, bf: bool) -> f64 {
    if bf {
        half::bf16::from_bits(h).to_f64()
    } else {
        half::f16::from_bits(h).to_f64()
    }
}

fn narrow(x: f64, bf: bool) -> u16 {
    if x.is_nan() {
        CANONICAL_NAN
    } else if bf {
        half::bf16::from_f64(x).to_bits()
    } else {
        half::f16::from_f64(x).to_bits()
    }
}

/// The flags of one half-precision instruction.
#[derive(Clone, Copy)]
struct Form {
    op: HalfOp,
    bf: bool,
    sat: bool,
    relu: bool,
    nan: bool,
}

fn is_nan(h: u16, bf: bool) -> bool {
    let (exp, man) = if bf { (0x7f80, 0x007f) } else { (0x7c00, 0x03ff) };
    h & exp == exp && h & man != 0
}

/// min / max on one half: NaN rules, then -0 < +0.
fn select(x: u16, y: u16, f: Form) -> u16 {
    match (is_nan(x, f.bf), is_nan(y, f.bf)) {
        (true, true) => return CANONICAL_NAN,
        (true, false) | (false, true) if f.nan => return CANONICAL_NAN,
        (true, false) => return y,
        (false, true) => return x,
        _ => {}
    }
    let (a, b) = (widen(x, f.bf), widen(y, f.bf));
    let x_first = if a == b { (x & 0x8000 != 0) == (f.op == HalfOp::Min) } else { (a < b) == (f.op == HalfOp::Min) };
    if x_first {
        x
    } else {
        y
    }
}

/// One half of the result from the halves of the sources.
fn lane(f: Form, x: u16, y: u16, z: u16) -> u16 {
    let r = match f.op {
        HalfOp::Neg => return x ^ 0x8000,
        HalfOp::Abs => return x & 0x7fff,
        HalfOp::Min | HalfOp::Max => return select(x, y, f),
        HalfOp::Add => widen(x, f.bf) + widen(y, f.bf),
        HalfOp::Sub => widen(x, f.bf) - widen(y, f.bf),
        HalfOp::Mul => widen(x, f.bf) * widen(y, f.bf),
        HalfOp::Fma => widen(x, f.bf).mul_add(widen(y, f.bf), widen(z, f.bf)),
    };
    let r = narrow(r, f.bf);
    if f.sat {
        if is_nan(r, f.bf) {
            return 0;
        }
        return narrow(widen(r, f.bf).clamp(0.0, 1.0), f.bf);
    }
    if f.relu && !is_nan(r, f.bf) && r & 0x8000 != 0 {
        return 0;
    }
    r
}

/// Runs a half-precision instruction over the active lanes.
pub fn exec(op: &Op, a: &[Operand], w: &mut Warp, m: u32, c: &SregCtx) -> Alu {
    let Op::Half { op, ty, sat, relu, nan } = *op else { return Alu::Other };
    let (bf, packed) = match ty {
        Ty::F16 => (false, false),
        Ty::Bf16 => (true, false),
        Ty::F16x2 => (false, true),
        Ty::Bf16x2 => (true, true),
        _ => return Alu::Unsupported,
    };
    let f = Form { op, bf, sat, relu, nan };
    let mut tmp = [[0u64; 32]; 3];
    let mut srcs = [[0u64; 32]; 3];
    for (k, o) in a[1..].iter().enumerate() {
        srcs[k] = *w.src(o, c, &mut tmp[k]);
    }
    let halves = if packed { 2 } else { 1 };
    let mut d = [0u64; 32];
    for l in 0..32 {
        for h in 0..halves {
            let part = |v: u64| (v >> (16 * h)) as u16;
            let r = lane(f, part(srcs[0][l]), part(srcs[1][l]), part(srcs[2][l]));
            d[l] |= (r as u64) << (16 * h);
        }
    }
    w.store(&a[0], &d, m);
    Alu::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16(x: f32) -> u16 {
        half::f16::from_f32(x).to_bits()
    }

    fn form(op: HalfOp, bf: bool) -> Form {
        Form { op, bf, sat: false, relu: false, nan: false }
    }

    #[test]
    fn arithmetic_rounds_once_to_nearest_even() {
        // 1 + 2^-11 is a tie between 1 and 1 + 2^-10 in f16: to even (1).
        assert_eq!(lane(form(HalfOp::Add, false), f16(1.0), f16(2f32.powi(-11)), 0), f16(1.0));
        // 1 + 3·2^-11 ties between 1 + 2^-10 and 1 + 2^-9: to even (1 + 2^-9).
        assert_eq!(lane(form(HalfOp::Add, false), f16(1.0 + 2f32.powi(-10)), f16(2f32.powi(-11)), 0), f16(1.0 + 2f32.powi(-9)));
        // fma is fused: (1 + 2^-10)^2 - 1 = 2^-9 + 2^-20 exactly, rounded once.
        let x = f16(1.0 + 2f32.powi(-10));
        assert_eq!(lane(form(HalfOp::Fma, false), x, x, f16(-1.0)), f16(2f32.powi(-9) + 2f32.powi(-20)));
        // bf16 product: 3 * 3 = 9 exactly; 1.0078125 (1 + 2^-7) squared rounds to 1 + 2^-6.
        let b = |x: f32| half::bf16::from_f32(x).to_bits();
        assert_eq!(lane(form(HalfOp::Mul, true), b(3.0), b(3.0), 0), b(9.0));
        assert_eq!(lane(form(HalfOp::Mul, true), b(1.0078125), b(1.0078125), 0), b(1.015625));
        // Overflow to infinity: 65504 + 65504 in f16.
        assert_eq!(lane(form(HalfOp::Add, false), f16(65504.0), f16(65504.0), 0), 0x7c00);
    }

    #[test]
    fn sat_relu_and_nan_rules() {
        let sat = Form { sat: true, ..form(HalfOp::Add, false) };
        assert_eq!(lane(sat, f16(0.75), f16(0.5), 0), f16(1.0));
        assert_eq!(lane(sat, f16(-0.75), f16(0.5), 0), 0);
        assert_eq!(lane(sat, 0x7e00, f16(0.5), 0), 0, "a NaN result saturates to +0");
        let relu = Form { relu: true, ..form(HalfOp::Fma, true) };
        let b = |x: f32| half::bf16::from_f32(x).to_bits();
        assert_eq!(lane(relu, b(2.0), b(-3.0), b(1.0)), 0);
        assert_eq!(lane(relu, b(2.0), b(3.0), b(1.0)), b(7.0));
        assert_eq!(lane(relu, 0x7fc1, b(3.0), b(1.0)), CANONICAL_NAN);
        let min = form(HalfOp::Min, false);
        assert_eq!(lane(min, 0x7e00, f16(2.0), 0), f16(2.0), "min with one NaN is the other operand");
        assert_eq!(lane(min, 0x7e00, 0x7e01, 0), CANONICAL_NAN);
        assert_eq!(lane(Form { nan: true, ..min }, 0x7e00, f16(2.0), 0), CANONICAL_NAN);
        assert_eq!(lane(min, 0x0000, 0x8000, 0), 0x8000, "-0 < +0");
        assert_eq!(lane(form(HalfOp::Max, false), 0x8000, 0x0000, 0), 0x0000);
        assert_eq!(lane(form(HalfOp::Max, false), f16(-1.0), f16(-3.0), 0), f16(-1.0));
        assert_eq!(lane(form(HalfOp::Neg, false), f16(1.5), 0, 0), f16(-1.5));
        assert_eq!(lane(form(HalfOp::Abs, true), 0xbf80, 0, 0), 0x3f80);
    }
}
