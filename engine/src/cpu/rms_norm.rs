//! RMSNorm over the rows of a `rows x cols` matrix, with the residual add of a pre-norm block fused
//! in front, and its backward.
//!
//! Forward, per row: h = x + residual (rounded to the storage type and written out: it is the
//! block's new residual stream; without a residual h = x and nothing is written), inv = 1 /
//! √(Σh²/n + eps), y = (h · inv) · w. One read of the inputs and one write per output, where the
//! unfused form (add, square, mean, add eps, power, two products) walked memory seven times and
//! allocated a buffer for each.
//!
//! Backward, with g = dy ⊙ w: dh = inv · g − h · inv³ · (g · h) / n, and dw = Σ_rows dy ⊙ h · inv.
//! inv is recomputed from h (one more row dot product) instead of being saved, so the forward keeps
//! nothing for the backward beyond h itself.
//!
//! Rows go in blocks of `ROW_BLOCK`, in parallel when the matrix is large enough. dw is a sum over
//! rows: each block sums its rows in order into a partial, and the partials are added in block
//! order; the block size is fixed, not per thread, so the bits do not depend on the thread count.
//! Arithmetic runs in the arithmetic type (f32 for f32 / bf16 / f16, f64 for f64), the row dot
//! products 16 lanes wide in a fixed order (simd.rs), as the CUDA kernel's f32 accumulation does.

use std::mem::MaybeUninit;

use super::elem::prelude::*;
use super::elem::{with_float, Acc, Elem, Float};
use super::par::{filled, for_each_chunk, for_each_chunk2, worth_it};
use super::simd::multiversion;
use crate::{CpuStorage, Error, Result};

/// Rows per task, and per partial sum of dw.
const ROW_BLOCK: usize = 32;

/// A forward's sizes and epsilon.
#[derive(Clone, Copy)]
struct Rows {
    rows: usize,
    cols: usize,
    eps: f64,
}

impl Rows {
    fn check(&self, op: &'static str, lens: &[(&str, usize, usize)]) -> Result<()> {
        for &(what, got, want) in lens {
            if got != want {
                return Err(Error::shape(op, format!("{what} holds {got} elements where {want} were expected for {} x {}", self.rows, self.cols)));
            }
        }
        Ok(())
    }

    /// 1 / √(Σh²/n + eps) of one widened row.
    fn inv_rms<A: Acc>(&self, h: &[A]) -> A {
        (A::dot(h, h) / A::of(self.cols as f64) + A::of(self.eps)).sqrt().recip()
    }
}

pub(super) fn rms_norm(x: &CpuStorage, residual: Option<&CpuStorage>, weight: &CpuStorage, rows: usize, cols: usize, eps: f64) -> Result<(CpuStorage, Option<CpuStorage>)> {
    const OP: &str = "rms_norm";
    let dims = Rows { rows, cols, eps };
    with_float!(OP, x, |x| {
        let w = Elem::view(OP, weight)?;
        let r = residual.map(|r| Elem::view(OP, r)).transpose()?;
        dims.check(OP, &[("x", x.len(), rows * cols), ("weight", w.len(), cols), ("residual", r.map_or(rows * cols, <[_]>::len), rows * cols)])?;
        let (y, h) = forward_typed(x, r, w, dims);
        Ok((Elem::wrap(y), h.map(Elem::wrap)))
    })
}

pub(super) fn rms_norm_backward(dy: &CpuStorage, h: &CpuStorage, weight: &CpuStorage, rows: usize, cols: usize, eps: f64) -> Result<(CpuStorage, CpuStorage)> {
    const OP: &str = "rms_norm_backward";
    let dims = Rows { rows, cols, eps };
    with_float!(OP, dy, |dy| {
        let (h, w) = (Elem::view(OP, h)?, Elem::view(OP, weight)?);
        dims.check(OP, &[("dy", dy.len(), rows * cols), ("h", h.len(), rows * cols), ("weight", w.len(), cols)])?;
        let (dh, dw) = backward_typed(dy, h, w, dims);
        Ok((Elem::wrap(dh), Elem::wrap(dw)))
    })
}

fn forward_typed<T: Float>(x: &[T], residual: Option<&[T]>, w: &[T], dims: Rows) -> (Vec<T>, Option<Vec<T>>) {
    let (rows, cols) = (dims.rows, dims.cols);
    let w = T::widen_slice(w);
    let parallel = worth_it(rows * cols);
    let block_len = ROW_BLOCK * cols;
    let len = rows * cols;
    let mut h = None;
    let fill_y = |y: &mut [MaybeUninit<T>]| match residual {
        Some(res) => {
            let fill_h = |hs: &mut [MaybeUninit<T>]| {
                for_each_chunk2(y, block_len, hs, block_len, parallel, Vec::new, |s, b, ys, hs| {
                    let at = b * block_len..b * block_len + ys.len();
                    norm_rows(&x[at.clone()], Some(&res[at]), &w, dims, s, ys, Some(hs))
                })
            };
            // SAFETY: the row blocks cover h, and `norm_rows` writes every element of its rows of h.
            h = Some(unsafe { filled(len, fill_h) });
        }
        None => for_each_chunk(y, block_len, parallel, Vec::new, |s, b, ys| norm_rows(&x[b * block_len..][..ys.len()], None, &w, dims, s, ys, None)),
    };
    // SAFETY: the row blocks cover y, and `norm_rows` writes every element of its rows of y.
    let y = unsafe { filled(len, fill_y) };
    (y, h)
}

/// One block of rows: widen (and add the residual, storing the rounded sum in `h_out`), then
/// normalise into `ys`, every element of which (and of `h_out`) is written. `x` and `residual`
/// are the block's rows, `hs` scratch for one widened row.
#[inline(always)]
fn norm_rows_body<T: Float>(x: &[T], residual: Option<&[T]>, w: &[T::Acc], dims: Rows, hs: &mut Vec<T::Acc>, ys: &mut [MaybeUninit<T>], mut h_out: Option<&mut [MaybeUninit<T>]>) {
    let cols = dims.cols;
    hs.resize(cols, T::Acc::zero());
    for (i, yr) in ys.chunks_exact_mut(cols).enumerate() {
        let xr = &x[i * cols..][..cols];
        match (residual, h_out.as_deref_mut()) {
            (Some(res), Some(h_out)) => {
                let (rr, hr) = (&res[i * cols..][..cols], &mut h_out[i * cols..][..cols]);
                // Zipped, not indexed: with an index the bounds of `hs` kept this loop scalar.
                for ((a, o), (&v, &r)) in hs.iter_mut().zip(hr.iter_mut()).zip(xr.iter().zip(rr)) {
                    let sum = T::narrow(v.widen() + r.widen());
                    o.write(sum);
                    *a = sum.widen();
                }
            }
            _ => hs.iter_mut().zip(xr).for_each(|(a, v)| *a = v.widen()),
        }
        let inv = dims.inv_rms(hs);
        for ((o, &v), &g) in yr.iter_mut().zip(hs.iter()).zip(w.iter()) {
            o.write(T::narrow(v * inv * g));
        }
    }
}

multiversion! {
    /// `norm_rows_body` at the CPU's widest SIMD width: compiled for the baseline, the widening,
    /// residual and scaling loops ran four lanes wide and were most of the op's time.
    norm_rows<T: Float>(x: &[T], residual: Option<&[T]>, w: &[T::Acc], dims: Rows, hs: &mut Vec<T::Acc>, ys: &mut [MaybeUninit<T>], h_out: Option<&mut [MaybeUninit<T>]>) -> () = norm_rows_body
}

fn backward_typed<T: Float>(dy: &[T], h: &[T], w: &[T], dims: Rows) -> (Vec<T>, Vec<T>) {
    let (rows, cols) = (dims.rows, dims.cols);
    let w = T::widen_slice(w);
    let blocks = rows.div_ceil(ROW_BLOCK);
    let mut partials = vec![T::Acc::zero(); blocks * cols];
    // Scratch: the widened row of h and g = dy ⊙ w.
    let init = || (Vec::new(), Vec::new());
    let block_len = ROW_BLOCK * cols;
    let fill = |dh: &mut [MaybeUninit<T>]| {
        for_each_chunk2(dh, block_len, &mut partials, cols, worth_it(rows * cols), init, |s: &mut (Vec<T::Acc>, Vec<T::Acc>), b, dhs, dw| {
            let at = b * block_len..b * block_len + dhs.len();
            grad_rows(&dy[at.clone()], &h[at], &w, dims, s, dhs, dw)
        })
    };
    // SAFETY: the row blocks cover dh, and each of their rows is written whole.
    let dh = unsafe { filled(rows * cols, fill) };
    let mut dw = vec![T::Acc::zero(); cols];
    for p in partials.chunks_exact(cols) {
        dw.iter_mut().zip(p).for_each(|(s, &v)| *s += v);
    }
    (dh, T::narrow_vec(dw))
}

/// One block of rows of the backward: `dhs` (every element written) and the block's partial of
/// dw, summed in row order. `dy` and `h` are the block's rows; `scratch` holds the widened row of
/// h and g = dy ⊙ w.
#[inline(always)]
fn grad_rows_body<T: Float>(dy: &[T], h: &[T], w: &[T::Acc], dims: Rows, scratch: &mut (Vec<T::Acc>, Vec<T::Acc>), dhs: &mut [MaybeUninit<T>], dw: &mut [T::Acc]) {
    let cols = dims.cols;
    let n = T::Acc::of(cols as f64);
    let (hs, gs) = scratch;
    hs.resize(cols, T::Acc::zero());
    gs.resize(cols, T::Acc::zero());
    for (i, dhr) in dhs.chunks_exact_mut(cols).enumerate() {
        let (hr, dyr) = (&h[i * cols..][..cols], &dy[i * cols..][..cols]);
        for ((a, g), ((&v, &d), &wj)) in hs.iter_mut().zip(gs.iter_mut()).zip(hr.iter().zip(dyr).zip(w)) {
            *a = v.widen();
            *g = d.widen() * wj;
        }
        let inv = dims.inv_rms(hs);
        let c = inv * inv * inv * T::Acc::dot(gs, hs) / n;
        for ((o, dwj), ((&g, &v), &d)) in dhr.iter_mut().zip(dw.iter_mut()).zip(gs.iter().zip(hs.iter()).zip(dyr)) {
            o.write(T::narrow(inv * g - c * v));
            *dwj += d.widen() * v * inv;
        }
    }
}

multiversion! {
    /// `grad_rows_body` at the CPU's widest SIMD width (as `norm_rows`).
    grad_rows<T: Float>(dy: &[T], h: &[T], w: &[T::Acc], dims: Rows, scratch: &mut (Vec<T::Acc>, Vec<T::Acc>), dhs: &mut [MaybeUninit<T>], dw: &mut [T::Acc]) -> () = grad_rows_body
}
