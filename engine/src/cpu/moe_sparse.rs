//! Sparse MoE on the CPU: the reference for moe_route.cu, moe_sparse.cu and moe_decode.cu, and the
//! path CPU training of the top-k baseline runs on.
//!
//! It follows the kernels' arithmetic where that decides the answer: routing compares N·p > ε in
//! the probabilities' arithmetic type (f32 for f32 / bf16 / f16, as the kernel does) and orders by
//! (probability descending, NaN first, expert ascending); the renormalising sum runs in slot order;
//! intermediates the GPU stores (U, H, the expert outputs, dG, dU) are rounded to the storage type
//! here too; sums over a token's slots run in slot order. Each expert's products go through the CPU
//! GEMM (`matmul`, the `gemm` crate) on its gathered rows, so this is fast enough to train on.

use std::cmp::Ordering;

use super::elem::prelude::*;
use super::elem::{indices, with_float, Acc, Elem, Float};
use super::elementwise::{gelu_grad, gelu_tanh};
use super::matmul::matmul;
use super::skinny;
use crate::backend::MatmulLayout;
use crate::ops::moe_sparse::{RouteMode, SparseDims, DROPPED};
use crate::{CpuStorage, Error, Result};

/// "a ahead of b": larger first, NaN before everything, ties to the lower index (as `ahead` in common.cuh).
fn order<A: Acc>(a: (A, usize), b: (A, usize)) -> Ordering {
    match (a.0.is_nan(), b.0.is_nan()) {
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) if a.0 != b.0 => b.0.partial_cmp(&a.0).expect("neither is NaN"),
        _ => a.1.cmp(&b.1),
    }
}

pub(crate) fn route(probs: &CpuStorage, tokens: usize, n: usize, mode: RouteMode, renormalise: bool) -> Result<[CpuStorage; 4]> {
    with_float!("moe_route", probs, |p| Ok(route_typed(p, tokens, n, mode, renormalise)))
}

fn route_typed<T: Float>(p: &[T], tokens: usize, n: usize, mode: RouteMode, renormalise: bool) -> [CpuStorage; 4] {
    let k_max = mode.k_max();
    let above = |row: &[T], eps: f64| -> usize {
        let nf = <T::Acc as Acc>::of(n as f64);
        // Same operation order as the kernel: (N as float) · p > (eps as float).
        row.iter().filter(|v| nf * v.widen() > <T::Acc as Acc>::of(eps)).count().max(1)
    };
    let batch_k = match mode {
        RouteMode::ThresholdK { eps, .. } if tokens > 0 => {
            let total: usize = p.chunks(n).map(|row| above(row, eps)).sum();
            ((total as f64 / tokens as f64).round() as usize).clamp(1, k_max)
        }
        _ => k_max,
    };
    let (mut experts, mut weights, mut mask, mut counts) = (vec![0u32; tokens * k_max], vec![T::narrow(<T::Acc>::zero()); tokens * k_max], vec![T::narrow(<T::Acc>::zero()); tokens * k_max], vec![0u32; tokens]);
    let mut order_buf: Vec<usize> = Vec::with_capacity(n);
    for t in 0..tokens {
        let row = &p[t * n..(t + 1) * n];
        let count = match mode {
            RouteMode::Threshold { eps, .. } => above(row, eps).min(k_max),
            _ => batch_k,
        };
        order_buf.clear();
        order_buf.extend(0..n);
        order_buf.sort_by(|&a, &b| order((row[a].widen(), a), (row[b].widen(), b)));
        let sum = order_buf[..count].iter().fold(<T::Acc>::zero(), |s, &e| s + row[e].widen());
        for j in 0..k_max {
            let o = t * k_max + j;
            let used = j < count;
            let e = if used { order_buf[j] } else { order_buf[0] };
            experts[o] = e as u32;
            let v = row[e].widen();
            weights[o] = T::narrow(if !used { <T::Acc>::zero() } else if renormalise { v / sum } else { v });
            mask[o] = T::narrow(if used { <T::Acc>::one() } else { <T::Acc>::zero() });
        }
        counts[t] = count as u32;
    }
    [CpuStorage::U32(experts), T::wrap(weights), T::wrap(mask), CpuStorage::U32(counts)]
}

/// Stable counting sort of the used slots by expert, with the capacity limit. Returns (offsets,
/// sorted_slots, slot_pos, expert_counts, dropped).
pub(crate) fn permute(experts: &CpuStorage, counts: &CpuStorage, tokens: usize, k_max: usize, n: usize, capacity: u32) -> Result<[CpuStorage; 5]> {
    let (experts, counts) = (indices("moe_permute", experts)?, indices("moe_permute", counts)?);
    let slots = tokens * k_max;
    if experts.len() < slots || counts.len() < tokens {
        return Err(Error::shape("moe_permute", format!("{tokens} tokens x {k_max} slots, got {} experts and {} counts", experts.len(), counts.len())));
    }
    let used = |s: usize| (s % k_max) < counts[s / k_max] as usize;
    let mut total = vec![0u32; n];
    for s in (0..slots).filter(|&s| used(s)) {
        let e = experts[s] as usize;
        if e >= n {
            return Err(Error::IndexOutOfRange { op: "moe_permute", index: e, size: n });
        }
        total[e] += 1;
    }
    let mut offsets = vec![0u32; n + 1];
    let mut dropped = 0u32;
    for e in 0..n {
        let kept = total[e].min(capacity);
        offsets[e + 1] = offsets[e] + kept;
        dropped += total[e] - kept;
    }
    let (mut sorted, mut slot_pos, mut rank) = (vec![DROPPED; slots], vec![DROPPED; slots], vec![0u32; n]);
    for s in (0..slots).filter(|&s| used(s)) {
        let e = experts[s] as usize;
        if rank[e] < capacity {
            let pos = offsets[e] + rank[e];
            sorted[pos as usize] = s as u32;
            slot_pos[s] = pos;
        }
        rank[e] += 1;
    }
    Ok([CpuStorage::U32(offsets), CpuStorage::U32(sorted), CpuStorage::U32(slot_pos), CpuStorage::U32(total), CpuStorage::U32(vec![dropped])])
}

/// `op(A)·op(B)` (m x n) in the arithmetic type, unrounded.
fn gemm<A: Acc + Elem>(a: Vec<A>, b: Vec<A>, m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Result<Vec<A>> {
    let l = MatmulLayout { batch: 1, m, n, k, trans_a, trans_b, a_batch_stride: 0, b_batch_stride: 0 };
    let c = matmul(&A::wrap(a), &A::wrap(b), &l)?;
    Ok(A::view("moe_sparse", &c)?.to_vec())
}

/// The list geometry shared by forward and backward.
struct Lists<'a> {
    offsets: &'a [u32],
    sorted: &'a [u32],
    slot_pos: &'a [u32],
    dims: SparseDims,
}

impl Lists<'_> {
    /// (expert, first list entry, entries) of every expert that has entries.
    fn busy_experts(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let range = |e: usize| (e, self.offsets[e] as usize, (self.offsets[e + 1] - self.offsets[e]) as usize);
        (0..self.dims.n_experts).map(range).filter(|&(_, _, rows)| rows > 0)
    }
    /// Expert e's `[f, d]` rows of the stacked weights `w`, widened.
    fn slab<T: Float>(&self, w: &[T], e: usize) -> Vec<T::Acc> {
        let len = self.dims.f * self.dims.d;
        w[e * len..(e + 1) * len].iter().map(|v| v.widen()).collect()
    }
    fn slot(&self, i: usize) -> usize {
        self.sorted[i] as usize
    }
    fn token(&self, i: usize) -> usize {
        self.slot(i) / self.dims.k_max
    }
    /// Rows `src[token(i)]` (row length `len`) for entries first..first+rows, widened.
    fn gather<T: Float>(&self, src: &[T], first: usize, rows: usize, len: usize) -> Vec<T::Acc> {
        (first..first + rows).flat_map(|i| src[self.token(i) * len..(self.token(i) + 1) * len].iter().map(|v| v.widen())).collect()
    }
    /// y[t] = Σ_j rows[t·k_max + j] over the token's kept slots, in slot order.
    fn combine<T: Float>(&self, rows: &[T]) -> Vec<T> {
        let SparseDims { tokens, d, k_max, .. } = self.dims;
        let mut y = Vec::with_capacity(tokens * d);
        for t in 0..tokens {
            let mut acc = vec![<T::Acc>::zero(); d];
            for s in (t * k_max..(t + 1) * k_max).filter(|&s| self.slot_pos[s] != DROPPED) {
                acc.iter_mut().zip(&rows[s * d..(s + 1) * d]).for_each(|(a, v)| *a += v.widen());
            }
            y.extend(acc.into_iter().map(T::narrow));
        }
        y
    }
}

fn lists<'a>(offsets: &'a CpuStorage, sorted: &'a CpuStorage, slot_pos: &'a CpuStorage, dims: &SparseDims) -> Result<Lists<'a>> {
    const OP: &str = "moe_sparse_mlp";
    let l = Lists { offsets: indices(OP, offsets)?, sorted: indices(OP, sorted)?, slot_pos: indices(OP, slot_pos)?, dims: *dims };
    let total = *l.offsets.last().unwrap_or(&0) as usize;
    if l.offsets.len() != dims.n_experts + 1 || total > dims.slots() || l.offsets.windows(2).any(|w| w[0] > w[1]) {
        return Err(Error::invalid(OP, "offsets are not a prefix sum over the experts within the slot count"));
    }
    if let Some(&bad) = l.sorted[..total].iter().find(|&&s| s as usize >= dims.slots()) {
        return Err(Error::IndexOutOfRange { op: OP, index: bad as usize, size: dims.slots() });
    }
    Ok(l)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(x: &CpuStorage, w1: &CpuStorage, w2: &CpuStorage, weights: &CpuStorage, offsets: &CpuStorage, sorted: &CpuStorage, slot_pos: &CpuStorage, dims: &SparseDims, save: bool) -> Result<(CpuStorage, Option<(CpuStorage, CpuStorage)>)> {
    let l = lists(offsets, sorted, slot_pos, dims)?;
    with_float!("moe_sparse_mlp", x, |x| {
        let (w1, w2, w) = (Elem::view("moe_sparse_mlp", w1)?, Elem::view("moe_sparse_mlp", w2)?, Elem::view("moe_sparse_mlp", weights)?);
        forward_typed(x, w1, w2, w, &l, save)
    })
}

fn forward_typed<T: Float>(x: &[T], w1: &[T], w2: &[T], w: &[T], l: &Lists, save: bool) -> Result<(CpuStorage, Option<(CpuStorage, CpuStorage)>)>
where
    T::Acc: Elem,
{
    let SparseDims { d, f, .. } = l.dims;
    let slots = l.dims.slots();
    let zero = T::narrow(<T::Acc>::zero());
    let (mut u, mut h, mut rows_out) = (vec![zero; slots * f], vec![zero; slots * f], vec![zero; slots * d]);
    for (e, first, rows) in l.busy_experts() {
        let slab = e * f * d..(e + 1) * f * d;
        // A few tokens (decode) read the expert's weights in place; more go through the GEMM.
        let skinny = rows <= skinny::MAX_ROWS;
        let ue = if skinny { skinny::product(&l.gather(x, first, rows, d), &w1[slab.clone()], rows, f, d, true) } else { gemm(l.gather(x, first, rows, d), l.slab(w1, e), rows, f, d, false, true)? };
        let mut he = Vec::with_capacity(rows * f);
        for (j, v) in ue.into_iter().enumerate() {
            u[first * f + j] = T::narrow(v);
            h[first * f + j] = T::narrow(gelu_tanh(v));
            he.push(h[first * f + j].widen());
        }
        let ye = if skinny { skinny::product(&he, &w2[slab.clone()], rows, d, f, false) } else { gemm(he, l.slab(w2, e), rows, d, f, false, false)? };
        for r in 0..rows {
            let s = l.slot(first + r);
            let ws = w[s].widen();
            rows_out[s * d..(s + 1) * d].iter_mut().zip(&ye[r * d..(r + 1) * d]).for_each(|(o, v)| *o = T::narrow(*v * ws));
        }
    }
    let y = T::wrap(l.combine(&rows_out));
    Ok((y, save.then(|| (T::wrap(u), T::wrap(h)))))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(dy: &CpuStorage, x: &CpuStorage, w1: &CpuStorage, w2: &CpuStorage, weights: &CpuStorage, offsets: &CpuStorage, sorted: &CpuStorage, slot_pos: &CpuStorage, u: &CpuStorage, h: &CpuStorage, dims: &SparseDims) -> Result<[CpuStorage; 4]> {
    const OP: &str = "moe_sparse_mlp_backward";
    let l = lists(offsets, sorted, slot_pos, dims)?;
    with_float!(OP, dy, |dy| {
        let v = |s| Elem::view(OP, s);
        backward_typed(dy, v(x)?, v(w1)?, v(w2)?, v(weights)?, v(u)?, v(h)?, &l)
    })
}

#[allow(clippy::too_many_arguments)]
fn backward_typed<T: Float>(dy: &[T], x: &[T], w1: &[T], w2: &[T], w: &[T], u: &[T], h: &[T], l: &Lists) -> Result<[CpuStorage; 4]>
where
    T::Acc: Elem,
{
    let SparseDims { d, f, .. } = l.dims;
    let slots = l.dims.slots();
    let zero = T::narrow(<T::Acc>::zero());
    let (mut dw1, mut dw2) = (vec![zero; w1.len()], vec![zero; w2.len()]);
    let (mut dweights, mut dx_rows) = (vec![zero; slots], vec![zero; slots * d]);
    for (e, first, rows) in l.busy_experts() {
        let dy_rows = l.gather(dy, first, rows, d);
        let dg = gemm(dy_rows.clone(), l.slab(w2, e), rows, f, d, false, true)?;
        let (mut du, mut he) = (Vec::with_capacity(rows * f), Vec::with_capacity(rows * f));
        for r in 0..rows {
            let s = l.slot(first + r);
            let ws = w[s].widen();
            let mut dot = <T::Acc>::zero();
            for c in 0..f {
                let o = (first + r) * f + c;
                let g = T::narrow(dg[r * f + c]).widen();
                dot += g * h[o].widen();
                du.push(T::narrow(ws * g * gelu_grad(u[o].widen())).widen());
                he.push(h[o].widen());
            }
            dweights[s] = T::narrow(dot);
        }
        let dxe = gemm(du.clone(), l.slab(w1, e), rows, d, f, false, false)?;
        for r in 0..rows {
            let s = l.slot(first + r);
            dx_rows[s * d..(s + 1) * d].iter_mut().zip(&dxe[r * d..(r + 1) * d]).for_each(|(o, v)| *o = T::narrow(*v));
        }
        let dw1e = gemm(du, l.gather(x, first, rows, d), f, d, rows, true, false)?;
        let mut dyw = dy_rows;
        for r in 0..rows {
            let ws = w[l.slot(first + r)].widen();
            dyw[r * d..(r + 1) * d].iter_mut().for_each(|v| *v = T::narrow(*v * ws).widen());
        }
        let dw2e = gemm(he, dyw, f, d, rows, true, false)?;
        dw1[e * f * d..(e + 1) * f * d].iter_mut().zip(dw1e).for_each(|(o, v)| *o = T::narrow(v));
        dw2[e * f * d..(e + 1) * f * d].iter_mut().zip(dw2e).for_each(|(o, v)| *o = T::narrow(v));
    }
    Ok([T::wrap(l.combine(&dx_rows)), T::wrap(dw1), T::wrap(dw2), T::wrap(dweights)])
}
