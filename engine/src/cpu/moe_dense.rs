//! The dense-training MoE MLP on the CPU: the reference for kernels-cuda's moe_dense.cu, and the path
//! CPU training takes.
//!
//! Forward: `u = x·W1ᵀ` (one product of width E·f; for a few tokens, as in decode, the skinny
//! products that read the weights in place instead of widening them), then one pass per row writes
//! `g[t, j] = p[t, e]·gelu(u[t, j])` for the columns j of each expert e, then `y = g·W2` (one
//! product reducing over E·f). Backward from dy: `dG = dy·W2ᵀ`, then one pass per row turns dG in
//! place into `dU = dG·p·gelu'(u)` while summing `dp[t, e] = Σ_{j ∈ e} dG·gelu(u)`, then three
//! products: `dW2 = gᵀ·dy`, `dW1 = dUᵀ·x`, `dx = dU·W1`.
//!
//! Rounding follows the CUDA kernels: products accumulate in the arithmetic type (f32 for bf16 /
//! f16), g and dU are computed from the unrounded accumulator, then stored in the tensor dtype, and
//! the products that read them read the stored values. u is stored rounded too, and the backward
//! reads that stored u. For f32 / f64 every rounding step is the identity.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::elem::prelude::*;
use super::elem::{with_float, Acc, Elem, Float};
use super::matmul::product_vec;
use super::par::{filled, worth_it};
use super::skinny;
use crate::backend::MoeDenseDims;
use crate::{CpuStorage, Error, Result};

const OP: &str = "moe_dense_mlp";

pub(super) fn forward(x: &CpuStorage, w1: &CpuStorage, w2: &CpuStorage, p: &CpuStorage, dims: &MoeDenseDims) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
    with_float!(OP, x, |x| {
        let (w1, w2, p) = (Elem::view(OP, w1)?, Elem::view(OP, w2)?, Elem::view(OP, p)?);
        check_lengths(dims, &[("x", x.len(), dims.tokens * dims.d), ("w1", w1.len(), dims.hidden() * dims.d), ("w2", w2.len(), dims.hidden() * dims.d), ("p", p.len(), dims.tokens * dims.experts)])?;
        let (y, u, g) = forward_typed(x, w1, w2, p, dims);
        Ok((Elem::wrap(y), Elem::wrap(u), Elem::wrap(g)))
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    dy: &CpuStorage,
    x: &CpuStorage,
    w1: &CpuStorage,
    w2: &CpuStorage,
    p: &CpuStorage,
    u: &CpuStorage,
    g: &CpuStorage,
    dims: &MoeDenseDims,
) -> Result<(CpuStorage, CpuStorage, CpuStorage, CpuStorage)> {
    with_float!(OP, dy, |dy| {
        let (x, w1, w2, p) = (Elem::view(OP, x)?, Elem::view(OP, w1)?, Elem::view(OP, w2)?, Elem::view(OP, p)?);
        let (u, g) = (Elem::view(OP, u)?, Elem::view(OP, g)?);
        let (td, hd, th) = (dims.tokens * dims.d, dims.hidden() * dims.d, dims.tokens * dims.hidden());
        check_lengths(
            dims,
            &[("dy", dy.len(), td), ("x", x.len(), td), ("w1", w1.len(), hd), ("w2", w2.len(), hd), ("p", p.len(), dims.tokens * dims.experts), ("u", u.len(), th), ("g", g.len(), th)],
        )?;
        let (dx, dw1, dw2, dp) = backward_typed(dy, x, w1, w2, p, u, g, dims);
        Ok((Elem::wrap(dx), Elem::wrap(dw1), Elem::wrap(dw2), Elem::wrap(dp)))
    })
}

/// The backend is public: operand sizes are checked here, not trusted, so the products cannot
/// read out of bounds.
fn check_lengths(dims: &MoeDenseDims, operands: &[(&str, usize, usize)]) -> Result<()> {
    match operands.iter().find(|(_, have, want)| have != want) {
        Some((name, have, want)) => Err(Error::shape(OP, format!("{name} holds {have} elements, {dims:?} needs {want}"))),
        None => Ok(()),
    }
}

fn forward_typed<T: Float>(x: &[T], w1: &[T], w2: &[T], p: &[T], dims: &MoeDenseDims) -> (Vec<T>, Vec<T>, Vec<T>) {
    let &MoeDenseDims { tokens, d, experts, width } = dims;
    let h = dims.hidden();
    let (x, p) = (T::widen_slice(x), T::widen_slice(p));
    // A few tokens (decode) read the weights in place; more widen them once for the blocked GEMM.
    let few = tokens <= skinny::MAX_ROWS;
    let u = if few {
        skinny::product(&x, w1, tokens, h, d, true)
    } else {
        product_vec(&x, &T::widen_slice(w1), (tokens, h, d), (false, true))
    };
    let fill = |g: &mut [MaybeUninit<T::Acc>]| {
        for_each_row(g, &mut [] as &mut [T::Acc], h, 0, |t, g_row, _| {
            let u_row = &u[t * h..(t + 1) * h];
            for e in 0..experts {
                let cols = e * width..(e + 1) * width;
                T::Acc::gated_gelu_into(&u_row[cols.clone()], p[t * experts + e], &mut g_row[cols]);
            }
        })
    };
    // SAFETY: the rows of h cover the output, and gated_gelu_into writes every element of each
    // expert's columns, which cover the row (h = experts·width).
    let g = unsafe { filled(tokens * h, fill) };
    let g = T::narrow_vec(g);
    let y = if few {
        skinny::product(&T::widen_slice(&g), w2, tokens, d, h, false)
    } else {
        product_vec(&T::widen_slice(&g), &T::widen_slice(w2), (tokens, d, h), (false, false))
    };
    (T::narrow_vec(y), T::narrow_vec(u), g)
}

#[allow(clippy::too_many_arguments)]
fn backward_typed<T: Float>(dy: &[T], x: &[T], w1: &[T], w2: &[T], p: &[T], u: &[T], g: &[T], dims: &MoeDenseDims) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
    let &MoeDenseDims { tokens, d, experts, width } = dims;
    let h = dims.hidden();
    let (dy, x, w1, w2, p, u) = (T::widen_slice(dy), T::widen_slice(x), T::widen_slice(w1), T::widen_slice(w2), T::widen_slice(p), T::widen_slice(u));
    // dG, turned in place into dU row by row.
    let mut du = product_vec(&dy, &w2, (tokens, h, d), (false, true));
    let mut dp = vec![T::Acc::zero(); tokens * experts];
    for_each_row(&mut du, &mut dp, h, experts, |t, du_row, dp_row| {
        let u_row = &u[t * h..(t + 1) * h];
        for e in 0..experts {
            let cols = e * width..(e + 1) * width;
            dp_row[e] = T::Acc::gelu_backward(&mut du_row[cols.clone()], &u_row[cols], p[t * experts + e]);
        }
    });
    let du = T::narrow_vec(du);
    let du_wide = T::widen_slice(&du);
    let dw2 = product_vec(&T::widen_slice(g), &dy, (h, d, tokens), (true, false));
    let dw1 = product_vec(&du_wide, &x, (h, d, tokens), (true, false));
    let dx = product_vec(&du_wide, &w1, (tokens, d, h), (false, false));
    (T::narrow_vec(dx), T::narrow_vec(dw1), T::narrow_vec(dw2), T::narrow_vec(dp))
}

/// Calls `f(t, a_row, b_row)` for row t of `a` (rows of `a_len`) and of `b` (rows of `b_len`; `b`
/// may be empty with `b_len` 0), on the rayon pool when the rows are worth it.
fn for_each_row<A: Send, B: Send>(a: &mut [A], b: &mut [B], a_len: usize, b_len: usize, f: impl Fn(usize, &mut [A], &mut [B]) + Sync + Send) {
    if a_len == 0 {
        return;
    }
    let rows = a.len() / a_len;
    let b_rows: Vec<&mut [B]> = if b_len == 0 { (0..rows).map(|_| <&mut [B]>::default()).collect() } else { b.chunks_mut(b_len).collect() };
    if worth_it(a.len()) {
        a.par_chunks_mut(a_len).zip(b_rows).enumerate().for_each(|(t, (ar, br))| f(t, ar, br));
    } else {
        a.chunks_mut(a_len).zip(b_rows).enumerate().for_each(|(t, (ar, br))| f(t, ar, br));
    }
}
