//! The dtype plumbing of the CPU backend, written once so that every op is a single generic function.
//!
//! - `Elem` is any type a `CpuStorage` can hold (the floats and u32): it gets its typed slice out of
//!   a storage and wraps a vector back into one. Ops that only move data (gather, concat, permute)
//!   are generic over it.
//! - `Float` is a storable float with an arithmetic type `Acc`: f64 computes in f64, f32 in f32, and
//!   bf16 / f16 widen to f32 on load and narrow on store. That is what a CUDA kernel does, so the CPU
//!   result is the reference for every dtype.
//! - `with_float!` / `with_any!` turn a `CpuStorage` into a typed slice and run a generic body on it;
//!   a second operand is fetched with `Elem::view`, which reports a dtype mismatch instead of panicking.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::ops::{AddAssign, MulAssign};

use half::{bf16, f16, slice::HalfFloatSliceExt};

use super::attention_rows::RowTile;
use crate::{CpuStorage, Error, Result, WithDType};

/// A type a `CpuStorage` can hold.
pub(crate) trait Elem: WithDType {
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    fn wrap(v: Vec<Self>) -> CpuStorage;

    /// `s` as a slice of this type, or a dtype-mismatch error naming `op`.
    fn view<'a>(op: &'static str, s: &'a CpuStorage) -> Result<&'a [Self]> {
        Self::slice(s).ok_or(Error::DTypeMismatch { op, lhs: Self::DTYPE, rhs: s.dtype() })
    }
}

/// The type arithmetic runs in: f32 or f64 (both have a `gemm` kernel).
pub(crate) trait Acc: num_traits::Float + AddAssign + MulAssign + Send + Sync + std::fmt::Debug + 'static {
    /// A constant or hyper-parameter given in f64, rounded to this type.
    fn of(x: f64) -> Self;
    /// `x[i] = e^(x[i] − shift)` in place; returns the sum. f32 runs the run-time-dispatched SIMD
    /// loop (simd.rs), f64 libm.
    fn exp_shifted_sum(x: &mut [Self], shift: Self) -> Self;
    /// `out[i] = gate · gelu(u[i])`, the σ form of the tanh GeLU (SIMD for f32, as above), into
    /// `out` that may be uninitialised: it is only written.
    fn gated_gelu_into(u: &[Self], gate: Self, out: &mut [MaybeUninit<Self>]);
    /// `gated_gelu_into` over initialised elements.
    fn gated_gelu(u: &[Self], gate: Self, out: &mut [Self]) {
        // SAFETY: MaybeUninit<Self> has Self's layout, and gated_gelu_into stores only initialised
        // values, so `out` holds valid values of Self again when the borrow ends.
        let out = unsafe { &mut *(out as *mut [Self] as *mut [MaybeUninit<Self>]) };
        Self::gated_gelu_into(u, gate, out)
    }
    /// The backward of `gated_gelu` in place: `dg[i] ← dg[i] · gate · gelu'(u[i])`; returns
    /// `Σ dg[i] · gelu(u[i])` of the incoming dg, the gate's gradient (SIMD for f32, as above).
    fn gelu_backward(dg: &mut [Self], u: &[Self], gate: Self) -> Self;
    /// Σ a[i]·b[i] in a fixed order (SIMD lanes for f32, sequential for f64).
    fn dot(a: &[Self], b: &[Self]) -> Self;
    /// The largest of `init` and the elements of `x`, NaN if any is NaN (`max_nan`; SIMD for f32).
    fn row_max(x: &[Self], init: Self) -> Self;
    /// The causal attention rows of one query tile (attention_rows.rs; SIMD for f32).
    fn attention_rows(t: &RowTile<Self>, out: &mut [Self], lse: &mut [Self]);
}

impl Acc for f32 {
    fn of(x: f64) -> f32 {
        x as f32
    }
    fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
        super::simd::exp_shifted_sum(x, shift)
    }
    fn gated_gelu_into(u: &[f32], gate: f32, out: &mut [MaybeUninit<f32>]) {
        super::simd::gated_gelu(u, gate, out)
    }
    fn gelu_backward(dg: &mut [f32], u: &[f32], gate: f32) -> f32 {
        super::simd::gelu_backward(dg, u, gate)
    }
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::simd::dot(a, b)
    }
    fn row_max(x: &[f32], init: f32) -> f32 {
        super::simd::row_max(x, init)
    }
    fn attention_rows(t: &RowTile<f32>, out: &mut [f32], lse: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if super::attention_rows_avx512::rows(t, out, lse) {
            return;
        }
        super::attention_rows::rows_f32(t, out, lse)
    }
}
impl Acc for f64 {
    fn of(x: f64) -> f64 {
        x
    }
    fn exp_shifted_sum(x: &mut [f64], shift: f64) -> f64 {
        x.iter_mut().fold(0.0, |s, v| {
            *v = (*v - shift).exp();
            s + *v
        })
    }
    fn gated_gelu_into(u: &[f64], gate: f64, out: &mut [MaybeUninit<f64>]) {
        out.iter_mut().zip(u).for_each(|(o, &v)| {
            o.write(gate * super::elementwise::gelu(v));
        });
    }
    fn gelu_backward(dg: &mut [f64], u: &[f64], gate: f64) -> f64 {
        dg.iter_mut().zip(u).fold(0.0, |sum, (d, &v)| {
            let (gl, gr) = super::elementwise::gelu_and_grad(v);
            let part = *d * gl;
            *d = *d * gate * gr;
            sum + part
        })
    }
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).fold(0.0, |s, (x, y)| s + x * y)
    }
    fn row_max(x: &[f64], init: f64) -> f64 {
        x.iter().fold(init, |m, &v| max_nan(m, v))
    }
    fn attention_rows(t: &RowTile<f64>, out: &mut [f64], lse: &mut [f64]) {
        super::attention_rows::rows_body(t, out, lse, f64::exp, |a, b, c| a * b + c)
    }
}

/// A float a storage holds, with the type it computes in.
pub(crate) trait Float: Elem {
    type Acc: Acc;
    fn widen(self) -> Self::Acc;
    fn narrow(x: Self::Acc) -> Self;
    /// The whole slice in the arithmetic type: borrowed when that is the storage type already.
    fn widen_slice(x: &[Self]) -> Cow<'_, [Self::Acc]>;
    /// A vector of results in the storage type (no copy when the types agree).
    fn narrow_vec(x: Vec<Self::Acc>) -> Vec<Self>;
}

macro_rules! elem {
    ($t:ty, $variant:ident) => {
        impl Elem for $t {
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
        }
    };
}
elem!(f32, F32);
elem!(f64, F64);
elem!(bf16, BF16);
elem!(f16, F16);
elem!(u32, U32);

/// f32 and f64 compute in themselves.
macro_rules! native_float {
    ($t:ty) => {
        impl Float for $t {
            type Acc = $t;
            #[inline(always)]
            fn widen(self) -> $t {
                self
            }
            #[inline(always)]
            fn narrow(x: $t) -> $t {
                x
            }
            fn widen_slice(x: &[$t]) -> Cow<'_, [$t]> {
                Cow::Borrowed(x)
            }
            fn narrow_vec(x: Vec<$t>) -> Vec<$t> {
                x
            }
        }
    };
}
native_float!(f32);
native_float!(f64);

/// bf16 and f16 compute in f32; the slice conversions use `half`'s vectorised routines. `$widen`
/// converts one value (`|v| -> f32`).
macro_rules! half_float {
    ($t:ty, |$v:ident| $widen:expr) => {
        impl Float for $t {
            type Acc = f32;
            #[inline(always)]
            fn widen(self) -> f32 {
                let $v = self;
                $widen
            }
            #[inline(always)]
            fn narrow(x: f32) -> $t {
                <$t>::from_f32(x)
            }
            fn widen_slice(x: &[$t]) -> Cow<'_, [f32]> {
                Cow::Owned(x.to_f32_vec())
            }
            fn narrow_vec(x: Vec<f32>) -> Vec<$t> {
                let mut out = vec![<$t>::ZERO; x.len()];
                out.convert_from_f32_slice(&x);
                out
            }
        }
    };
}
// A bf16 is the high half of an f32, so widening is a shift, which vectorises in the inner loops
// of the decode products (`half`'s `to_f32` also quiets signalling NaNs, a branch per element that
// kept those loops scalar). The two differ only in a signalling NaN's quiet bit: still a NaN.
half_float!(bf16, |v| f32::from_bits((v.to_bits() as u32) << 16));
half_float!(f16, |v| v.to_f32());

/// Runs `$body` with `$v` bound to the typed slice of a float storage; u32 is an `Error::DType`
/// naming `$op`. `$body` is generic code and must evaluate to a `Result`.
macro_rules! with_float {
    ($op:expr, $s:expr, |$v:ident| $body:expr) => {
        match $s {
            $crate::CpuStorage::F32($v) => {
                let $v: &[f32] = $v;
                $body
            }
            $crate::CpuStorage::F64($v) => {
                let $v: &[f64] = $v;
                $body
            }
            $crate::CpuStorage::BF16($v) => {
                let $v: &[half::bf16] = $v;
                $body
            }
            $crate::CpuStorage::F16($v) => {
                let $v: &[half::f16] = $v;
                $body
            }
            other => Err($crate::Error::dtype($op, other.dtype())),
        }
    };
}

/// Like `with_float!` for ops that only move elements, so u32 is accepted too.
macro_rules! with_any {
    ($s:expr, |$v:ident| $body:expr) => {
        match $s {
            $crate::CpuStorage::F32($v) => {
                let $v: &[f32] = $v;
                $body
            }
            $crate::CpuStorage::F64($v) => {
                let $v: &[f64] = $v;
                $body
            }
            $crate::CpuStorage::BF16($v) => {
                let $v: &[half::bf16] = $v;
                $body
            }
            $crate::CpuStorage::F16($v) => {
                let $v: &[half::f16] = $v;
                $body
            }
            $crate::CpuStorage::U32($v) => {
                let $v: &[u32] = $v;
                $body
            }
        }
    };
}

pub(crate) use {with_any, with_float};

/// The num-traits methods that `Acc` values are used through (`exp`, `zero`, ...): an associated
/// type's bounds do not bring them into scope, so op files `use elem::prelude::*`.
pub(crate) mod prelude {
    pub(crate) use num_traits::{Float as _, One as _, Zero as _};
}

/// The u32 indices of an index operand, or an `Error::DType` naming `op`.
pub(crate) fn indices<'a>(op: &'static str, s: &'a CpuStorage) -> Result<&'a [u32]> {
    match s {
        CpuStorage::U32(v) => Ok(v),
        other => Err(Error::DType { op, dtype: other.dtype(), detail: ": indices must be u32".into() }),
    }
}

/// Checks every index is below `bound`. The op layer checks too, but `_unchecked` callers skip it,
/// and a bad index must be an error here rather than a panic inside a worker thread.
pub(crate) fn check_bounds(op: &'static str, idx: &[u32], bound: usize) -> Result<()> {
    match idx.iter().find(|&&i| i as usize >= bound) {
        Some(&bad) => Err(Error::IndexOutOfRange { op, index: bad as usize, size: bound }),
        None => Ok(()),
    }
}

/// Max that lets a NaN through (`f32::max` would drop it), so a NaN anywhere reaches the loss and
/// is reported rather than trained on.
#[inline(always)]
pub(crate) fn max_nan<A: Acc>(a: A, b: A) -> A {
    if b > a || b.is_nan() {
        b
    } else {
        a
    }
}

/// Min counterpart of `max_nan`.
#[inline(always)]
pub(crate) fn min_nan<A: Acc>(a: A, b: A) -> A {
    if b < a || b.is_nan() {
        b
    } else {
        a
    }
}
