//! Element-wise ops: unary maps, ops with a scalar, and binary ops with strided broadcasting.
//!
//! Each op is matched to a closure *outside* the loop, so every (op, dtype) pair gets its own
//! monomorphised loop that the compiler can vectorise, instead of a `match` per element. Binary ops
//! collapse the broadcast layout first (`Strided`) and then run one of four slice loops per row:
//! both operands contiguous, either one a broadcast scalar along the row, or the general strided
//! walk. Same-shape operands collapse to a single run; `[T,D] + [D]` to rows of `D` against one
//! row of `b`.

use super::elem::prelude::*;
use super::elem::{max_nan, min_nan, with_float, Acc, Elem, Float};
use std::mem::MaybeUninit;

use super::par::{chunks, filled, worth_it, FLAT_CHUNK};
use super::strided::Strided;
use crate::backend::{BinaryOp, ScalarOp, UnaryOp};
use crate::{CpuStorage, Error, Result};

/// √(2/π), the GeLU tanh-approximation constant.
pub(super) const GELU_C: f64 = 0.797_884_560_802_865_4;
pub(super) const GELU_A: f64 = 0.044_715;

pub(super) fn unary(x: &CpuStorage, op: UnaryOp) -> Result<CpuStorage> {
    with_float!("unary", x, |x| Ok(Elem::wrap(unary_typed(x, op))))
}

pub(super) fn scalar(x: &CpuStorage, op: ScalarOp, s: f64) -> Result<CpuStorage> {
    with_float!("scalar", x, |x| Ok(Elem::wrap(scalar_typed(x, op, s))))
}

pub(super) fn binary(
    a: &CpuStorage,
    a_strides: &[usize],
    b: &CpuStorage,
    b_strides: &[usize],
    out_dims: &[usize],
    op: BinaryOp,
) -> Result<CpuStorage> {
    with_float!("binary", a, |a| {
        let b = Elem::view("binary", b)?;
        check_reach(a.len(), a_strides, out_dims)?;
        check_reach(b.len(), b_strides, out_dims)?;
        Ok(Elem::wrap(binary_typed(a, a_strides, b, b_strides, out_dims, op)))
    })
}

/// An operand of `len` elements read through `strides` over `dims` stays inside itself. The op
/// layer derives the strides from the shapes, but the backend is public and must not panic.
fn check_reach(len: usize, strides: &[usize], dims: &[usize]) -> Result<()> {
    let empty = dims.contains(&0);
    let last = dims.iter().zip(strides).map(|(d, s)| d.saturating_sub(1) * s).sum::<usize>();
    if strides.len() != dims.len() || (!empty && last >= len) {
        return Err(Error::shape("binary", format!("strides {strides:?} over {dims:?} leave an operand of {len} elements")));
    }
    Ok(())
}

fn unary_typed<T: Float>(x: &[T], op: UnaryOp) -> Vec<T> {
    let zero = T::Acc::zero();
    let one = T::Acc::one();
    match op {
        UnaryOp::Neg => map(x, |v| -v),
        UnaryOp::Exp => map(x, |v| v.exp()),
        UnaryOp::Log => map(x, |v| v.ln()),
        UnaryOp::Sqrt => map(x, |v| v.sqrt()),
        UnaryOp::Recip => map(x, |v| v.recip()),
        UnaryOp::Sqr => map(x, |v| v * v),
        UnaryOp::Abs => map(x, |v| v.abs()),
        UnaryOp::Tanh => map(x, |v| v.tanh()),
        // `v < 0` rather than `max`, so a NaN stays NaN.
        UnaryOp::Relu => map(x, move |v| if v < zero { zero } else { v }),
        UnaryOp::Gelu => map(x, gelu),
        UnaryOp::Silu => map(x, move |v| v * sigmoid(v, one)),
        UnaryOp::Sigmoid => map(x, move |v| sigmoid(v, one)),
    }
}

fn scalar_typed<T: Float>(x: &[T], op: ScalarOp, s: f64) -> Vec<T> {
    let s = T::Acc::of(s);
    let (zero, one) = (T::Acc::zero(), T::Acc::one());
    match op {
        ScalarOp::Add => map(x, move |v| v + s),
        ScalarOp::Mul => map(x, move |v| v * s),
        ScalarOp::Pow => map(x, move |v| v.powf(s)),
        ScalarOp::Max => map(x, move |v| max_nan(v, s)),
        ScalarOp::Gt => map(x, move |v| if v > s { one } else { zero }),
    }
}

fn binary_typed<T: Float>(a: &[T], sa: &[usize], b: &[T], sb: &[usize], dims: &[usize], op: BinaryOp) -> Vec<T> {
    match op {
        BinaryOp::Add => zip_map(a, sa, b, sb, dims, |x, y| x + y),
        BinaryOp::Sub => zip_map(a, sa, b, sb, dims, |x, y| x - y),
        BinaryOp::Mul => zip_map(a, sa, b, sb, dims, |x, y| x * y),
        BinaryOp::Div => zip_map(a, sa, b, sb, dims, |x, y| x / y),
        BinaryOp::Maximum => zip_map(a, sa, b, sb, dims, max_nan),
        BinaryOp::Minimum => zip_map(a, sa, b, sb, dims, min_nan),
        BinaryOp::GeluGrad => zip_map(a, sa, b, sb, dims, |x, g| g * gelu_grad(x)),
        BinaryOp::SiluGrad => zip_map(a, sa, b, sb, dims, |x, g| g * silu_grad(x)),
    }
}

#[inline(always)]
fn sigmoid<A: Acc>(v: A, one: A) -> A {
    one / (one + (-v).exp())
}

/// ½·x·(1 + tanh u) with u = c·(x + a·x³), evaluated as x·σ(2u): the same function (½(1 + tanh u)
/// = σ(2u)), but one `exp` instead of a `tanh`, which is several times slower in libm.
#[inline(always)]
pub(super) fn gelu<A: Acc>(v: A) -> A {
    v * sigmoid(gelu_2u(v), A::one())
}

/// ½·x·(1 + tanh u) evaluated with `tanh` itself, as the GEMM epilogues do (`gelu_tanh` in
/// gemm_epilogue.cuh): the references for those kernels follow their arithmetic.
#[inline(always)]
pub(super) fn gelu_tanh<A: Acc>(v: A) -> A {
    A::of(0.5) * v * (A::one() + (A::of(GELU_C) * (v + A::of(GELU_A) * v * v * v)).tanh())
}

/// d/dx of the tanh-approximated GeLU: ½(1 + tanh u) + ½·x·(1 − tanh² u)·u′ with u′ = c(1 + 3a·x²);
/// with s = σ(2u) that is s + 2·x·s·(1 − s)·u′.
#[inline(always)]
pub(super) fn gelu_grad<A: Acc>(v: A) -> A {
    gelu_and_grad(v).1
}

/// GeLU and its derivative from one σ(2u): for a backward that needs both (the fused MoE MLP).
#[inline(always)]
pub(super) fn gelu_and_grad<A: Acc>(v: A) -> (A, A) {
    let one = A::one();
    let s = sigmoid(gelu_2u(v), one);
    let du = A::of(GELU_C) * (one + A::of(3.0 * GELU_A) * v * v);
    (v * s, s + A::of(2.0) * v * s * (one - s) * du)
}

/// 2u = 2c·(x + a·x³), the argument of σ in both GeLU forms.
#[inline(always)]
fn gelu_2u<A: Acc>(v: A) -> A {
    A::of(2.0 * GELU_C) * (v + A::of(GELU_A) * v * v * v)
}

/// d/dx of x·σ(x): σ(x)·(1 + x·(1 − σ(x))).
#[inline(always)]
fn silu_grad<A: Acc>(v: A) -> A {
    silu_and_grad(v).1
}

/// SiLU x·σ(x) and its derivative from one σ: for a backward that needs both (the gated MoE MLP).
#[inline(always)]
pub(super) fn silu_and_grad<A: Acc>(v: A) -> (A, A) {
    let one = A::one();
    let s = sigmoid(v, one);
    (v * s, s * (one + v * (one - s)))
}

/// `f` applied to every element, computed in the arithmetic type.
fn map<T: Float, F>(x: &[T], f: F) -> Vec<T>
where
    F: Fn(T::Acc) -> T::Acc + Sync + Send,
{
    let fill = |out: &mut [MaybeUninit<T>]| {
        chunks(out, FLAT_CHUNK, worth_it(x.len()), |i, o| {
            let src = &x[i * FLAT_CHUNK..][..o.len()];
            for (o, &v) in o.iter_mut().zip(src) {
                o.write(T::narrow(f(v.widen())));
            }
        })
    };
    // SAFETY: the chunks cover the output and each element of a chunk is written.
    unsafe { filled(x.len(), fill) }
}

/// `f(a, b)` over `dims`, each operand read through its strides (0 where broadcast).
fn zip_map<T: Float, F>(a: &[T], sa: &[usize], b: &[T], sb: &[usize], dims: &[usize], f: F) -> Vec<T>
where
    F: Fn(T::Acc, T::Acc) -> T::Acc + Sync + Send,
{
    let len: usize = dims.iter().product();
    if len == 0 {
        return Vec::new();
    }
    let layout = Strided::new(dims, [sa, sb]);
    let parallel = worth_it(len);
    let [ia, ib] = layout.inner_strides;
    let fill = |out: &mut [MaybeUninit<T>]| {
        if layout.rows() == 1 && ia == 1 && ib == 1 {
            // Same-shape operands: one run, split into flat chunks so it still spreads over threads.
            chunks(out, FLAT_CHUNK, parallel, |i, o| {
                let start = i * FLAT_CHUNK;
                run(o, &a[start..], 1, &b[start..], 1, &f);
            });
        } else {
            chunks(out, layout.inner, parallel, |row, o| {
                let [oa, ob] = layout.offsets(row);
                run(o, &a[oa..], ia, &b[ob..], ib, &f);
            });
        }
    };
    // SAFETY: the chunks (flat ones, or rows of `layout.inner`) cover the output, and `run` writes
    // every element of its chunk.
    unsafe { filled(len, fill) }
}

/// One run of `out.len()` elements, each written once; `a` and `b` start at the run and step by
/// `sa` / `sb`.
#[inline(always)]
fn run<T: Float, F: Fn(T::Acc, T::Acc) -> T::Acc>(out: &mut [MaybeUninit<T>], a: &[T], sa: usize, b: &[T], sb: usize, f: &F) {
    let n = out.len();
    match (sa, sb) {
        (1, 1) => {
            for ((o, x), y) in out.iter_mut().zip(&a[..n]).zip(&b[..n]) {
                o.write(T::narrow(f(x.widen(), y.widen())));
            }
        }
        (1, 0) => {
            let y = b[0].widen();
            for (o, x) in out.iter_mut().zip(&a[..n]) {
                o.write(T::narrow(f(x.widen(), y)));
            }
        }
        (0, 1) => {
            let x = a[0].widen();
            for (o, y) in out.iter_mut().zip(&b[..n]) {
                o.write(T::narrow(f(x, y.widen())));
            }
        }
        _ => {
            for (j, o) in out.iter_mut().enumerate() {
                o.write(T::narrow(f(a[j * sa].widen(), b[j * sb].widen())));
            }
        }
    }
}
