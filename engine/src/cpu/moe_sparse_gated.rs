//! The gated (SwiGLU) sparse MoE MLP on the CPU: the reference for the gated entries of
//! moe_sparse.cu and moe_decode.cu, and the path CPU inference and SMoE training of SwiGLU models
//! run on. Expert e has three `[f, d]` matrices stacked like the GeLU ones: W1 (the gate), W3 (the
//! up projection) and W2 (the down projection), and computes `(silu(x·W1ᵀ) ⊙ x·W3ᵀ)·W2`.
//!
//! Layout and schedule are the GeLU path's (`moe_sparse.rs`: its list geometry, blocks and
//! weighted sums; decode-sized batches take moe_sparse_decode.rs, gate and up slices of the same
//! hidden units in one task): the forward runs one task per block of at most `ROW_BLOCK` list
//! entries of one slot rank, the ranks one after another (`add_by_rank`), the backward one task
//! per busy expert. Rounding follows the kernels: G = x·W1ᵀ is stored in the
//! tensor dtype before SiLU reads it (the up product's epilogue reads the stored G), V = x·W3ᵀ
//! stays in the arithmetic type until H = silu(G)·V is rounded; in the backward dX is the dGate·W1
//! product rounded, plus dV·W3, rounded again (the second product's epilogue adds onto the first's
//! stored rows), and dW2 reduces dy against wH = w·H rounded (what the kernel's dW2 product reads).
//! SiLU is x·σ(x) through one `exp`.

use super::elem::prelude::*;
use super::elem::{with_float, Elem, Float};
use super::elementwise::silu_and_grad;
use super::matmul::product_serial;
use super::moe_sparse_decode;
use super::moe_sparse::{add_by_rank, expert_product, lists, sparse_cost, run_tasks, split_blocks, Block, Lists, SumRows, ROW_BLOCK};
use super::par::worth_it;
use super::profile::timed;
use crate::backend::SparseDims;
use crate::{CpuStorage, Result};

const OP: &str = "moe_sparse_swiglu";

/// y `[T, d]` and, with `save`, (G, V, H) in list order `[T·k_max, f]` each.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(x: &CpuStorage, [w1, w3, w2]: [&CpuStorage; 3], weights: &CpuStorage, offsets: &CpuStorage, sorted: &CpuStorage, slot_pos: &CpuStorage, dims: &SparseDims, save: bool) -> Result<(CpuStorage, Option<[CpuStorage; 3]>)> {
    let l = lists(offsets, sorted, slot_pos, dims)?;
    timed(|| "moe_sparse_swiglu_forward".into(), || sparse_cost(&l, 3, x.dtype().size_in_bytes()), || {
        with_float!(OP, x, |x| {
            let v = |s| Elem::view(OP, s);
            Ok(forward_typed(x, [v(w1)?, v(w3)?, v(w2)?], v(weights)?, &l, save))
        })
    })
}

fn forward_typed<T: Float>(x: &[T], [w1, w3, w2]: [&[T]; 3], w: &[T], l: &Lists, save: bool) -> (CpuStorage, Option<[CpuStorage; 3]>) {
    if !save && moe_sparse_decode::applies(l) {
        return (T::wrap(l.combine(&moe_sparse_decode::expert_rows(x, w1, Some(w3), w2, w, l))), None);
    }
    let SparseDims { d, f, .. } = l.dims;
    let slots = l.dims.slots();
    let zero = T::narrow(<T::Acc>::zero());
    let saved_len = if save { slots * f } else { 0 };
    let (mut gs, mut vs, mut hs) = (vec![zero; saved_len], vec![zero; saved_len], vec![zero; saved_len]);
    let blocks = l.ranked_blocks(ROW_BLOCK);
    let saved = split_blocks(&mut gs, &blocks, f).into_iter().zip(split_blocks(&mut vs, &blocks, f)).zip(split_blocks(&mut hs, &blocks, f));
    let tasks: Vec<_> = blocks.iter().copied().zip(saved).collect();
    // The scratch kept per worker is the gathered X rows (see moe_sparse.rs's forward).
    let run = |xg: &mut Vec<T::Acc>, b: Block, ((g, v), h): ((&mut [T], &mut [T]), &mut [T]), out: &mut SumRows<T::Acc>| {
        l.gather(xg, x, b, d);
        let mut ge = expert_product::<T>(xg, w1, l, b, true);
        let ve = expert_product::<T>(xg, w3, l, b, true);
        // H overwrites G in place: silu of the stored (rounded) gate times the unrounded up value.
        for j in 0..b.rows * f {
            let gate = T::narrow(ge[j]);
            let hv = T::narrow(silu_and_grad(gate.widen()).0 * ve[j]);
            if save {
                (g[j], v[j], h[j]) = (gate, T::narrow(ve[j]), hv);
            }
            ge[j] = hv.widen();
        }
        let ye = expert_product::<T>(&ge, w2, l, b, false);
        l.add_weighted(out, &ye, w, b);
    };
    let y = T::narrow_vec(add_by_rank(l, tasks, worth_it(l.total() * d * f), Vec::new, run));
    (T::wrap(y), save.then(|| [T::wrap(gs), T::wrap(vs), T::wrap(hs)]))
}

/// (dx, dw1, dw3, dw2, dweights) for the output gradient `dy`, from the forward's (G, V, H).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(dy: &CpuStorage, x: &CpuStorage, [w1, w3, w2]: [&CpuStorage; 3], weights: &CpuStorage, offsets: &CpuStorage, sorted: &CpuStorage, slot_pos: &CpuStorage, [g, v, h]: [&CpuStorage; 3], dims: &SparseDims) -> Result<[CpuStorage; 5]> {
    const OP: &str = "moe_sparse_swiglu_backward";
    let l = lists(offsets, sorted, slot_pos, dims)?;
    timed(|| "moe_sparse_swiglu_backward".into(), || sparse_cost(&l, 6, x.dtype().size_in_bytes()), || {
        with_float!(OP, dy, |dy| {
            let e = |s| Elem::view(OP, s);
            Ok(backward_typed(dy, e(x)?, [e(w1)?, e(w3)?, e(w2)?], e(weights)?, [e(g)?, e(v)?, e(h)?], &l))
        })
    })
}

/// One task per busy expert (the weight gradients reduce over its whole list): `dH = dY·W2ᵀ`,
/// the slot weight's gradient `Σ dH·H`, `dGate = w·dH·V·silu'(G)`, `dV = w·dH·silu(G)`,
/// `dX = dGate·W1 + dV·W3`, `dW1 = dGateᵀ·X`, `dW3 = dVᵀ·X`, `dW2 = (w·H)ᵀ·dY`.
fn backward_typed<T: Float>(dy: &[T], x: &[T], [w1, w3, w2]: [&[T]; 3], w: &[T], [g, v, h]: [&[T]; 3], l: &Lists) -> [CpuStorage; 5] {
    let SparseDims { d, f, .. } = l.dims;
    let (slots, total) = (l.dims.slots(), l.total());
    let zero = T::narrow(<T::Acc>::zero());
    let (mut dw1, mut dw3, mut dw2) = (vec![zero; w1.len()], vec![zero; w3.len()], vec![zero; w2.len()]);
    let (mut dw_list, mut dx_list) = (vec![zero; total], vec![zero; total * d]);
    let experts = l.blocks(usize::MAX);
    let (mut s1, mut s3, mut s2) = (slabs(&mut dw1, f * d), slabs(&mut dw3, f * d), slabs(&mut dw2, f * d));
    let tasks: Vec<_> = experts
        .iter()
        .zip(split_blocks(&mut dw_list, &experts, 1))
        .zip(split_blocks(&mut dx_list, &experts, d))
        .map(|((b, dwl), dxl)| {
            let e = b.expert;
            (*b, dwl, dxl, [s1[e].take(), s3[e].take(), s2[e].take()].map(|s| s.expect("one block per expert")))
        })
        .collect();
    let run = |(b, dwl, dxl, [g1, g3, g2]): (Block, &mut [T], &mut [T], [&mut [T]; 3])| {
        let (mut dy_rows, mut x_rows) = (Vec::new(), Vec::new());
        l.gather(&mut dy_rows, dy, b, d);
        let mut dh = vec![<T::Acc>::zero(); b.rows * f];
        product_serial(&mut dh, &dy_rows, &l.slab(w2, b.expert), b.rows, f, d, false, true);
        let n = b.rows * f;
        let (mut dgate, mut dv, mut wh) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for r in 0..b.rows {
            let ws = w[l.slot(b.first + r)].widen();
            let mut dot = <T::Acc>::zero();
            for c in 0..f {
                let o = (b.first + r) * f + c;
                let dhv = T::narrow(dh[r * f + c]).widen();
                dot += dhv * h[o].widen();
                let (silu, silu_grad) = silu_and_grad(g[o].widen());
                dgate.push(T::narrow(ws * dhv * v[o].widen() * silu_grad).widen());
                dv.push(T::narrow(ws * dhv * silu).widen());
                wh.push(T::narrow(ws * h[o].widen()).widen());
            }
            dwl[r] = T::narrow(dot);
        }
        let (mut dx_gate, mut dx_up) = (vec![<T::Acc>::zero(); b.rows * d], vec![<T::Acc>::zero(); b.rows * d]);
        product_serial(&mut dx_gate, &dgate, &l.slab(w1, b.expert), b.rows, d, f, false, false);
        product_serial(&mut dx_up, &dv, &l.slab(w3, b.expert), b.rows, d, f, false, false);
        for ((o, a), u) in dxl.iter_mut().zip(&dx_gate).zip(&dx_up) {
            *o = T::narrow(T::narrow(*a).widen() + *u);
        }
        l.gather(&mut x_rows, x, b, d);
        let mut acc = vec![<T::Acc>::zero(); f * d];
        for (grad, lhs, rhs) in [(g1, &dgate, &x_rows), (g3, &dv, &x_rows), (g2, &wh, &dy_rows)] {
            product_serial(&mut acc, lhs, rhs, f, d, b.rows, true, false);
            grad.iter_mut().zip(&acc).for_each(|(o, v)| *o = T::narrow(*v));
        }
    };
    run_tasks(tasks, worth_it(total * d * f), run);
    let dweights = l.in_slot_order(&dw_list, slots, zero);
    [T::wrap(l.combine(&dx_list)), T::wrap(dw1), T::wrap(dw3), T::wrap(dw2), T::wrap(dweights)]
}

/// `buf` cut into per-expert slabs of `len`, each to be taken by its expert's task.
fn slabs<T>(buf: &mut [T], len: usize) -> Vec<Option<&mut [T]>> {
    buf.chunks_mut(len).map(Some).collect()
}
