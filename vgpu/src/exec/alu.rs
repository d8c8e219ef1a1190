//! Lane-wise instructions: integer, float and logic arithmetic, comparisons, moves, conversions.
//!
//! Each op reads its source operands as 32-lane arrays, computes all 32 lanes (pure functions:
//! no lane can fault, division by zero gives the hardware's all-ones), and writes the active lanes
//! back, so the compiler can vectorise the inner loops.

use super::float::*;
use super::warp::{SregCtx, Warp};
use crate::ir::{BoolOp, Cmp, MulMode, Op, Operand, Rnd, Ty};

/// Outcome of trying an op here.
pub enum Alu {
    Done,
    /// Not a lane-wise op: the caller dispatches it.
    Other,
    /// A lane-wise op with a type/modifier combination not implemented.
    Unsupported,
}

#[inline]
pub fn sext(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        ((v << (64 - bits)) as i64) >> (64 - bits)
    }
}

#[inline(always)]
fn un(w: &mut Warp, a: &[Operand], m: u32, c: &SregCtx, f: impl Fn(u64) -> u64) {
    let mut t = [0; 32];
    let x = w.src(&a[1], c, &mut t);
    let mut d = [0u64; 32];
    for l in 0..32 {
        d[l] = f(x[l]);
    }
    w.store(&a[0], &d, m);
}

#[inline(always)]
fn bin(w: &mut Warp, a: &[Operand], m: u32, c: &SregCtx, f: impl Fn(u64, u64) -> u64) {
    let (mut t1, mut t2) = ([0; 32], [0; 32]);
    let x = w.src(&a[1], c, &mut t1);
    let y = w.src(&a[2], c, &mut t2);
    let mut d = [0u64; 32];
    for l in 0..32 {
        d[l] = f(x[l], y[l]);
    }
    w.store(&a[0], &d, m);
}

#[inline(always)]
fn tern(w: &mut Warp, a: &[Operand], m: u32, c: &SregCtx, f: impl Fn(u64, u64, u64) -> u64) {
    let (mut t1, mut t2, mut t3) = ([0; 32], [0; 32], [0; 32]);
    let x = w.src(&a[1], c, &mut t1);
    let y = w.src(&a[2], c, &mut t2);
    let z = w.src(&a[3], c, &mut t3);
    let mut d = [0u64; 32];
    for l in 0..32 {
        d[l] = f(x[l], y[l], z[l]);
    }
    w.store(&a[0], &d, m);
}

fn f32op1(f: impl Fn(f32) -> f32) -> impl Fn(u64) -> u64 {
    move |a| bits32(f(f32_of(a)))
}

fn f32op2(f: impl Fn(f32, f32) -> f32) -> impl Fn(u64, u64) -> u64 {
    move |a, b| bits32(f(f32_of(a), f32_of(b)))
}

fn f64op2(f: impl Fn(f64, f64) -> f64) -> impl Fn(u64, u64) -> u64 {
    move |a, b| f(f64_of(a), f64_of(b)).to_bits()
}

fn mul_int(a: u64, b: u64, ty: Ty, mode: MulMode) -> u64 {
    let bits = ty.bits();
    let (x, y) = if ty.is_signed() { (sext(a, bits) as i128, sext(b, bits) as i128) } else { ((a & ty.mask()) as i128, (b & ty.mask()) as i128) };
    let p = x.wrapping_mul(y);
    match mode {
        MulMode::Lo => p as u64 & ty.mask(),
        MulMode::Hi => (p >> bits) as u64 & ty.mask(),
        MulMode::Wide => {
            if bits >= 64 {
                p as u64
            } else {
                p as u64 & ((1u128 << (2 * bits)) - 1) as u64
            }
        }
    }
}

/// Integer `setp`, with the comparison chosen once per instruction rather than per lane.
fn setp_int(w: &Warp, a: &[Operand], c: &SregCtx, ty: Ty, cmp: Cmp) -> Option<[u64; 32]> {
    let (mut t1, mut t2) = ([0; 32], [0; 32]);
    let (x, y) = (w.src(&a[1], c, &mut t1), w.src(&a[2], c, &mut t2));
    let (bits, mk) = (ty.bits(), ty.mask());
    let signed = ty.is_signed();
    #[inline(always)]
    fn lanes(x: &[u64; 32], y: &[u64; 32], f: impl Fn(u64, u64) -> bool) -> [u64; 32] {
        let mut d = [0u64; 32];
        for l in 0..32 {
            d[l] = f(x[l], y[l]) as u64;
        }
        d
    }
    let s = move |v: u64| sext(v, bits);
    Some(match (cmp, signed) {
        (Cmp::Eq, _) => lanes(x, y, |p, q| p & mk == q & mk),
        (Cmp::Ne, _) => lanes(x, y, |p, q| p & mk != q & mk),
        (Cmp::Lt, true) => lanes(x, y, |p, q| s(p) < s(q)),
        (Cmp::Le, true) => lanes(x, y, |p, q| s(p) <= s(q)),
        (Cmp::Gt, true) => lanes(x, y, |p, q| s(p) > s(q)),
        (Cmp::Ge, true) => lanes(x, y, |p, q| s(p) >= s(q)),
        (Cmp::Lt | Cmp::Lo, false) => lanes(x, y, |p, q| p & mk < q & mk),
        (Cmp::Le | Cmp::Ls, false) => lanes(x, y, |p, q| p & mk <= q & mk),
        (Cmp::Gt | Cmp::Hi, false) => lanes(x, y, |p, q| p & mk > q & mk),
        (Cmp::Ge | Cmp::Hs, false) => lanes(x, y, |p, q| p & mk >= q & mk),
        (Cmp::Lo, true) => lanes(x, y, |p, q| p & mk < q & mk),
        (Cmp::Ls, true) => lanes(x, y, |p, q| p & mk <= q & mk),
        (Cmp::Hi, true) => lanes(x, y, |p, q| p & mk > q & mk),
        (Cmp::Hs, true) => lanes(x, y, |p, q| p & mk >= q & mk),
        _ => return None,
    })
}

fn setp_float(w: &Warp, a: &[Operand], c: &SregCtx, ty: Ty, cmp: Cmp) -> [u64; 32] {
    let (mut t1, mut t2) = ([0; 32], [0; 32]);
    let (x, y) = (w.src(&a[1], c, &mut t1), w.src(&a[2], c, &mut t2));
    if ty == Ty::F32 {
        return std::array::from_fn(|l| cmp_float(f32_of(x[l]) as f64, f32_of(y[l]) as f64, cmp) as u64);
    }
    std::array::from_fn(|l| cmp_float(float_of(x[l], ty), float_of(y[l], ty), cmp) as u64)
}

/// Integer `mul`/`mad` (`add`: the mad form), the type's width and signedness fixed per instruction.
fn mul_lanes(w: &mut Warp, a: &[Operand], m: u32, c: &SregCtx, ty: Ty, mode: MulMode, add: bool) {
    let out_mask = if mode == MulMode::Wide && ty.bits() < 64 { (1u64 << (2 * ty.bits())) - 1 } else { ty.mask() };
    let (mut t1, mut t2, mut t3) = ([0; 32], [0; 32], [0; 32]);
    let (x, y) = (w.src(&a[1], c, &mut t1), w.src(&a[2], c, &mut t2));
    let z = if add { w.src(&a[3], c, &mut t3) } else { &t3 };
    let d: [u64; 32] = match (ty.bits(), ty.is_signed(), mode) {
        (32, false, MulMode::Lo) => std::array::from_fn(|l| ((x[l] as u32).wrapping_mul(y[l] as u32) as u64 + z[l]) & out_mask),
        (32, true, MulMode::Lo) => std::array::from_fn(|l| ((x[l] as i32).wrapping_mul(y[l] as i32) as u32 as u64 + z[l]) & out_mask),
        (32, false, MulMode::Wide) => std::array::from_fn(|l| (x[l] as u32 as u64 * y[l] as u32 as u64).wrapping_add(z[l])),
        (32, true, MulMode::Wide) => std::array::from_fn(|l| ((x[l] as i32 as i64 * y[l] as i32 as i64) as u64).wrapping_add(z[l])),
        (64, _, MulMode::Lo) => std::array::from_fn(|l| x[l].wrapping_mul(y[l]).wrapping_add(z[l])),
        _ => std::array::from_fn(|l| mul_int(x[l], y[l], ty, mode).wrapping_add(z[l]) & out_mask),
    };
    w.store(&a[0], &d, m);
}

/// `fma.rn.f32` / `mad.rn.f32` on 32 lanes, with the host's fused multiply-add instruction when it
/// has one (the portable `f32::mul_add` falls back to a slow software fmaf on baseline x86-64).
fn fma_rn_lanes(w: &mut Warp, a: &[Operand], m: u32, c: &SregCtx) {
    let (mut t1, mut t2, mut t3) = ([0; 32], [0; 32], [0; 32]);
    let x = w.src(&a[1], c, &mut t1);
    let y = w.src(&a[2], c, &mut t2);
    let z = w.src(&a[3], c, &mut t3);
    let d = fma_rn_32(x, y, z);
    w.store(&a[0], &d, m);
}

#[inline(always)]
fn fma_rn_portable(x: &[u64; 32], y: &[u64; 32], z: &[u64; 32]) -> [u64; 32] {
    let mut d = [0u64; 32];
    for l in 0..32 {
        d[l] = (f32::from_bits(x[l] as u32).mul_add(f32::from_bits(y[l] as u32), f32::from_bits(z[l] as u32))).to_bits() as u64;
    }
    d
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn fma_rn_x86(x: &[u64; 32], y: &[u64; 32], z: &[u64; 32]) -> [u64; 32] {
    fma_rn_portable(x, y, z)
}

fn fma_rn_32(x: &[u64; 32], y: &[u64; 32], z: &[u64; 32]) -> [u64; 32] {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA (checked just above).
        return unsafe { fma_rn_x86(x, y, z) };
    }
    fma_rn_portable(x, y, z)
}

fn cmp_float(a: f64, b: f64, c: Cmp) -> bool {
    let nan = a.is_nan() || b.is_nan();
    match c {
        Cmp::Eq => a == b,
        Cmp::Ne => !nan && a != b,
        Cmp::Lt => a < b,
        Cmp::Le => a <= b,
        Cmp::Gt => a > b,
        Cmp::Ge => a >= b,
        Cmp::Equ => nan || a == b,
        Cmp::Neu => nan || a != b,
        Cmp::Ltu => nan || a < b,
        Cmp::Leu => nan || a <= b,
        Cmp::Gtu => nan || a > b,
        Cmp::Geu => nan || a >= b,
        Cmp::Num => !nan,
        Cmp::Nan => nan,
        Cmp::Lo | Cmp::Ls | Cmp::Hi | Cmp::Hs => false,
    }
}

fn float_of(v: u64, ty: Ty) -> f64 {
    to_f64(v, ty)
}

/// PTX min/max on floats: a NaN operand yields the other operand.
fn fmin(a: f64, b: f64) -> f64 {
    if a.is_nan() { b } else if b.is_nan() { a } else if a == b && a == 0.0 { if a.is_sign_negative() { a } else { b } } else { a.min(b) }
}

fn fmax(a: f64, b: f64) -> f64 {
    if a.is_nan() { b } else if b.is_nan() { a } else if a == b && a == 0.0 { if a.is_sign_positive() { a } else { b } } else { a.max(b) }
}

/// `cvt`, with the common forms (integer widening/narrowing, 32-bit integer <-> f32, bf16/f16 <->
/// f32) on direct paths and everything else through [`cvt`].
#[allow(clippy::too_many_arguments)]
fn cvt_lanes(w: &mut Warp, a: &[Operand], m: u32, c: &SregCtx, dst: Ty, src: Ty, rnd: Option<Rnd>, int_rnd: Option<Rnd>, sat: bool) {
    let rn = rnd.unwrap_or(Rnd::Rn) == Rnd::Rn && int_rnd.is_none() && !sat;
    match (dst, src) {
        (d, s) if !d.is_float() && !s.is_float() && !sat => {
            let (sb, dm, sm) = (s.bits(), d.mask(), s.mask());
            if s.is_signed() {
                un(w, a, m, c, move |x| sext(x, sb) as u64 & dm)
            } else {
                un(w, a, m, c, move |x| x & sm & dm)
            }
        }
        (Ty::F32, Ty::U32) if rn => un(w, a, m, c, |x| bits32(x as u32 as f32)),
        (Ty::F32, Ty::S32) if rn => un(w, a, m, c, |x| bits32(x as u32 as i32 as f32)),
        (Ty::F32, Ty::Bf16) => un(w, a, m, c, |x| (x & 0xffff) << 16),
        (Ty::F32, Ty::F16) => un(w, a, m, c, |x| bits32(f16_to_f32(x as u16))),
        (Ty::Bf16, Ty::F32) if rn => un(w, a, m, c, |x| f32_to_bf16(f32_of(x)) as u64),
        (Ty::F16, Ty::F32) if rn => un(w, a, m, c, |x| f32_to_f16(f32_of(x)) as u64),
        _ => un(w, a, m, c, move |x| cvt(x, dst, src, rnd, int_rnd, sat)),
    }
}

fn cvt(v: u64, dst: Ty, src: Ty, rnd: Option<Rnd>, int_rnd: Option<Rnd>, sat: bool) -> u64 {
    match (dst.is_float(), src.is_float()) {
        (true, true) => {
            let x = float_of(v, src);
            let x = match int_rnd {
                Some(r) => round_int(x, r),
                None => x,
            };
            let mut out = from_f64(x, dst, rnd.unwrap_or(Rnd::Rn));
            if sat {
                let y = float_of(out, dst);
                let y = if y.is_nan() { 0.0 } else { y.clamp(0.0, 1.0) };
                out = from_f64(y, dst, Rnd::Rn);
            }
            out
        }
        (false, true) => float_to_int(round_int(float_of(v, src), int_rnd.unwrap_or(Rnd::Rz)), dst),
        (true, false) => {
            let x = if src.is_signed() { sext(v, src.bits()) as f64 } else { (v & src.mask()) as f64 };
            // i64/u64 -> f64 can round; every narrower integer is exact in f64.
            let x = if src.bits() == 64 && dst == Ty::F64 && rnd.is_none() {
                if src.is_signed() { v as i64 as f64 } else { v as f64 }
            } else {
                x
            };
            let mut out = from_f64(x, dst, rnd.unwrap_or(Rnd::Rn));
            if sat {
                out = from_f64(float_of(out, dst).clamp(0.0, 1.0), dst, Rnd::Rn);
            }
            out
        }
        (false, false) => {
            let x = if src.is_signed() { sext(v, src.bits()) } else { (v & src.mask()) as i64 };
            if sat {
                let (lo, hi) = if dst.is_signed() {
                    (-(1i128 << (dst.bits() - 1)), (1i128 << (dst.bits() - 1)) - 1)
                } else {
                    (0, (1i128 << dst.bits()) - 1)
                };
                let xv = if src.is_signed() { x as i128 } else { (v & src.mask()) as i128 };
                return xv.clamp(lo, hi) as u64 & dst.mask();
            }
            x as u64 & dst.mask()
        }
    }
}

pub fn exec(op: &Op, a: &[Operand], w: &mut Warp, m: u32, c: &SregCtx) -> Alu {
    use Alu::*;
    match *op {
        Op::Add { ty, rnd, sat } | Op::Sub { ty, rnd, sat } => {
            let sub = matches!(op, Op::Sub { .. });
            match ty {
                Ty::F32 => {
                    let r = rnd.unwrap_or(Rnd::Rn);
                    bin(w, a, m, c, f32op2(move |x, y| {
                        let s = add_f32(x, if sub { -y } else { y }, r);
                        if sat { if s.is_nan() { 0.0 } else { s.clamp(0.0, 1.0) } } else { s }
                    }))
                }
                Ty::F64 => bin(w, a, m, c, f64op2(move |x, y| if sub { x - y } else { x + y })),
                t if t.is_float() => return Unsupported,
                _ if sat => bin(w, a, m, c, move |x, y| {
                    let (p, q) = (sext(x, 32) as i32, sext(y, 32) as i32);
                    (if sub { p.saturating_sub(q) } else { p.saturating_add(q) }) as u32 as u64
                }),
                t => {
                    let mk = t.mask();
                    bin(w, a, m, c, move |x, y| (if sub { x.wrapping_sub(y) } else { x.wrapping_add(y) }) & mk)
                }
            }
        }
        Op::Mul { ty, mode, rnd } => match ty {
            Ty::F32 => {
                let r = rnd.unwrap_or(Rnd::Rn);
                bin(w, a, m, c, f32op2(move |x, y| mul_f32(x, y, r)))
            }
            Ty::F64 => bin(w, a, m, c, f64op2(|x, y| x * y)),
            t if t.is_float() => return Unsupported,
            t => mul_lanes(w, a, m, c, t, mode, false),
        },
        Op::Mad { ty, mode, rnd } => match ty {
            Ty::F32 if rnd.unwrap_or(Rnd::Rn) == Rnd::Rn => fma_rn_lanes(w, a, m, c),
            Ty::F32 => {
                let r = rnd.unwrap_or(Rnd::Rn);
                tern(w, a, m, c, move |x, y, z| bits32(fma_f32(f32_of(x), f32_of(y), f32_of(z), r)))
            }
            Ty::F64 => tern(w, a, m, c, |x, y, z| f64_of(x).mul_add(f64_of(y), f64_of(z)).to_bits()),
            t if t.is_float() => return Unsupported,
            t => mul_lanes(w, a, m, c, t, mode, true),
        },
        Op::Fma { ty, rnd } => match ty {
            Ty::F32 if rnd == Rnd::Rn => fma_rn_lanes(w, a, m, c),
            Ty::F32 => tern(w, a, m, c, move |x, y, z| bits32(fma_f32(f32_of(x), f32_of(y), f32_of(z), rnd))),
            Ty::F64 => tern(w, a, m, c, |x, y, z| f64_of(x).mul_add(f64_of(y), f64_of(z)).to_bits()),
            _ => return Unsupported,
        },
        Op::Div { ty, .. } => match ty {
            // div.rn/.full/.approx.f32 all modelled as the correctly rounded quotient.
            Ty::F32 => bin(w, a, m, c, f32op2(|x, y| x / y)),
            Ty::F64 => bin(w, a, m, c, f64op2(|x, y| x / y)),
            t if t.is_float() => return Unsupported,
            t if t.is_signed() => bin(w, a, m, c, move |x, y| {
                let (x, y) = (sext(x, t.bits()), sext(y, t.bits()));
                if y == 0 { t.mask() } else { x.wrapping_div(y) as u64 & t.mask() }
            }),
            t => bin(w, a, m, c, move |x, y| if y & t.mask() == 0 { t.mask() } else { ((x & t.mask()) / (y & t.mask())) & t.mask() }),
        },
        Op::Rem { ty } => match ty {
            t if t.is_float() => return Unsupported,
            t if t.is_signed() => bin(w, a, m, c, move |x, y| {
                let (x, y) = (sext(x, t.bits()), sext(y, t.bits()));
                if y == 0 { x as u64 & t.mask() } else { x.wrapping_rem(y) as u64 & t.mask() }
            }),
            t => bin(w, a, m, c, move |x, y| if y & t.mask() == 0 { x & t.mask() } else { (x & t.mask()) % (y & t.mask()) }),
        },
        Op::Min { ty } | Op::Max { ty } => {
            let is_min = matches!(op, Op::Min { .. });
            match ty {
                Ty::F32 | Ty::F64 => bin(w, a, m, c, move |x, y| {
                    let (p, q) = (float_of(x, ty), float_of(y, ty));
                    from_f64(if is_min { fmin(p, q) } else { fmax(p, q) }, ty, Rnd::Rn)
                }),
                t if t.is_float() => return Unsupported,
                t if t.is_signed() => bin(w, a, m, c, move |x, y| {
                    let (p, q) = (sext(x, t.bits()), sext(y, t.bits()));
                    (if is_min { p.min(q) } else { p.max(q) }) as u64 & t.mask()
                }),
                t => bin(w, a, m, c, move |x, y| {
                    let (p, q) = (x & t.mask(), y & t.mask());
                    if is_min { p.min(q) } else { p.max(q) }
                }),
            }
        }
        Op::Abs { ty } => match ty {
            Ty::F32 => un(w, a, m, c, |x| x & 0x7fff_ffff),
            Ty::F64 => un(w, a, m, c, |x| x & !(1u64 << 63)),
            t if t.is_float() => return Unsupported,
            t => un(w, a, m, c, move |x| sext(x, t.bits()).wrapping_abs() as u64 & t.mask()),
        },
        Op::Neg { ty } => match ty {
            Ty::F32 => un(w, a, m, c, |x| x ^ 0x8000_0000),
            Ty::F64 => un(w, a, m, c, |x| x ^ (1u64 << 63)),
            t if t.is_float() => return Unsupported,
            t => un(w, a, m, c, move |x| x.wrapping_neg() & t.mask()),
        },
        // copysign d, a, b: the magnitude of b with the sign of a.
        Op::Copysign { ty } => match ty {
            Ty::F32 => bin(w, a, m, c, |x, y| (y & 0x7fff_ffff) | (x & 0x8000_0000)),
            Ty::F64 => bin(w, a, m, c, |x, y| (y & !(1u64 << 63)) | (x & (1u64 << 63))),
            _ => return Unsupported,
        },
        Op::Half { .. } => return super::half::exec(op, a, w, m, c),
        Op::Ex2 { ty: Ty::F32 } => un(w, a, m, c, f32op1(ex2_approx)),
        Op::Lg2 { ty: Ty::F32 } => un(w, a, m, c, f32op1(|x| ftz((ftz(x) as f64).log2() as f32))),
        Op::Tanh { ty: Ty::F32 } => un(w, a, m, c, f32op1(|x| (x as f64).tanh() as f32)),
        Op::Rsqrt { ty: Ty::F32 } => un(w, a, m, c, f32op1(|x| ftz((1.0 / (ftz(x) as f64).sqrt()) as f32))),
        Op::Rcp { ty: Ty::F32, rnd } => match rnd {
            None => un(w, a, m, c, f32op1(rcp_approx)),
            Some(r) => un(w, a, m, c, move |x| bits32(round_f32(1.0 / f32_of(x) as f64, residual_rcp(f32_of(x)), r))),
        },
        Op::Rcp { ty: Ty::F64, .. } => un(w, a, m, c, |x| (1.0 / f64_of(x)).to_bits()),
        Op::Sqrt { ty: Ty::F32, .. } => un(w, a, m, c, f32op1(f32::sqrt)),
        Op::Sqrt { ty: Ty::F64, .. } => un(w, a, m, c, |x| f64_of(x).sqrt().to_bits()),
        Op::And { ty } => {
            let mk = ty.mask();
            bin(w, a, m, c, move |x, y| x & y & mk)
        }
        Op::Or { ty } => {
            let mk = ty.mask();
            bin(w, a, m, c, move |x, y| (x | y) & mk)
        }
        Op::Xor { ty } => {
            let mk = ty.mask();
            bin(w, a, m, c, move |x, y| (x ^ y) & mk)
        }
        Op::Not { ty } => {
            let mk = ty.mask();
            un(w, a, m, c, move |x| !x & mk)
        }
        Op::Shl { ty } => {
            let (mk, bits) = (ty.mask(), ty.bits() as u64);
            bin(w, a, m, c, move |x, y| {
                let s = y & 0xffff_ffff;
                if s >= bits { 0 } else { (x << s) & mk }
            })
        }
        Op::Shr { ty } => {
            let (mk, bits) = (ty.mask(), ty.bits());
            if ty.is_signed() {
                bin(w, a, m, c, move |x, y| (sext(x, bits) >> (y & 0xffff_ffff).min(63)) as u64 & mk)
            } else {
                bin(w, a, m, c, move |x, y| {
                    let s = y & 0xffff_ffff;
                    if s >= bits as u64 { 0 } else { (x & mk) >> s }
                })
            }
        }
        Op::Bfi { ty } => {
            let (x, y) = (w.load(&a[1], c), w.load(&a[2], c));
            let (p, n) = (w.load(&a[3], c), w.load(&a[4], c));
            let bits = ty.bits() as u64;
            let d: [u64; 32] = std::array::from_fn(|l| {
                let (pos, len) = (p[l] & 0xff, n[l] & 0xff);
                let len = len.min(bits.saturating_sub(pos));
                if len == 0 || pos >= bits {
                    return y[l] & ty.mask();
                }
                let fm = ((1u64 << len) - 1) << pos;
                ((y[l] & !fm) | ((x[l] << pos) & fm)) & ty.mask()
            });
            w.store(&a[0], &d, m);
        }
        Op::Bfe { ty } => tern(w, a, m, c, move |x, p, n| {
            let bits = ty.bits() as u64;
            let (pos, len) = (p & 0xff, n & 0xff);
            let sign_src = if ty.is_signed() { (x >> (pos + len).saturating_sub(1).min(bits - 1)) & 1 } else { 0 };
            let mut out = 0u64;
            for i in 0..bits {
                let b = if i < len && pos + i < bits { (x >> (pos + i)) & 1 } else if i < len { sign_src * ty.is_signed() as u64 } else { sign_src };
                out |= b << i;
            }
            if len == 0 { 0 } else { out & ty.mask() }
        }),
        Op::Popc { ty } => un(w, a, m, c, move |x| (x & ty.mask()).count_ones() as u64),
        Op::Clz { ty } => un(w, a, m, c, move |x| ((x & ty.mask()).leading_zeros() - (64 - ty.bits())) as u64),
        Op::Brev { ty } => un(w, a, m, c, move |x| (x.reverse_bits() >> (64 - ty.bits())) & ty.mask()),
        Op::Setp { cmp, ty, bop } => {
            let mut d = if ty.is_float() {
                setp_float(w, a, c, ty, cmp)
            } else {
                match setp_int(w, a, c, ty, cmp) {
                    Some(d) => d,
                    None => return Unsupported,
                }
            };
            if let Some(bop) = bop {
                let z = w.load(&a[3], c);
                for l in 0..32 {
                    d[l] = match bop {
                        BoolOp::And => d[l] & z[l],
                        BoolOp::Or => d[l] | z[l],
                        BoolOp::Xor => d[l] ^ z[l],
                    };
                }
            }
            w.store(&a[0], &d, m);
        }
        Op::Selp { ty } => {
            let mk = ty.mask();
            tern(w, a, m, c, move |x, y, p| if p != 0 { x & mk } else { y & mk })
        }
        Op::Mov { ty } => mov(w, a, m, c, ty),
        Op::Cvt { dst, src, rnd, int_rnd, sat } => {
            if matches!(dst, Ty::Bf16x2 | Ty::F16x2) {
                // cvt.rn.bf16x2.f32 d, hi, lo: two f32 packed, the first operand in the upper half.
                let to = if dst == Ty::Bf16x2 { f32_to_bf16 } else { f32_to_f16 };
                bin(w, a, m, c, move |hi, lo| ((to(f32_of(hi)) as u64) << 16) | to(f32_of(lo)) as u64);
            } else {
                cvt_lanes(w, a, m, c, dst, src, rnd, int_rnd, sat);
            }
        }
        _ => return Other,
    }
    Done
}

/// The exact residual of 1/x - RN64(1/x) is below f64 precision of any f32 rounding decision
/// except at exact quotients, where it is zero; 0 is therefore exact enough for directed f32 rcp.
fn residual_rcp(_x: f32) -> f64 {
    0.0
}

/// `mov`: plain, or packing/unpacking vectors (`mov.b32 %r, {%h0, %h1}` puts element 0 in the low bits).
fn mov(w: &mut Warp, a: &[Operand], m: u32, c: &SregCtx, ty: Ty) {
    match (&a[0], &a[1]) {
        (Operand::Vec(dst), src) => {
            let x = w.load(src, c);
            let eb = ty.bits() / dst.len() as u32;
            let em = if eb == 64 { u64::MAX } else { (1u64 << eb) - 1 };
            for (i, d) in dst.iter().enumerate() {
                let v: [u64; 32] = std::array::from_fn(|l| (x[l] >> (i as u32 * eb)) & em);
                w.store(d, &v, m);
            }
        }
        (dst, Operand::Vec(src)) => {
            let eb = ty.bits() / src.len() as u32;
            let em = if eb == 64 { u64::MAX } else { (1u64 << eb) - 1 };
            let mut v = [0u64; 32];
            for (i, s) in src.iter().enumerate() {
                let x = w.load(s, c);
                for l in 0..32 {
                    v[l] |= (x[l] & em) << (i as u32 * eb);
                }
            }
            w.store(dst, &v, m);
        }
        (dst, src) => {
            let mut t = [0; 32];
            let x = w.src(src, c, &mut t);
            let mask = ty.mask();
            let v: [u64; 32] = std::array::from_fn(|l| x[l] & mask);
            w.store(dst, &v, m);
        }
    }
}
