//! The sparse MoE forward for decode-sized batches (every busy expert has at most
//! `skinny::MAX_ROWS` tokens), as one parallel loop, for GeLU and for SwiGLU experts.
//!
//! The general forward (moe_sparse.rs) runs one task per block of an expert's tokens, and inside
//! it two skinny products that each split again over the threads: at batch 1 with two experts that
//! is a fork-join per expert and product, each waking the pool and waiting for its slowest task, for
//! about a megabyte of weights. Here the work is cut along the experts' hidden units instead: a
//! task owns a slice of hidden units (`hidden_slice`) of one expert and computes, for that expert's tokens,
//! `U = X·W1[slice]ᵀ`, `H = gelu(U)` and the partial output `H·W2[slice]` (`[rows, d]`). The tasks
//! need nothing from each other, so every selected expert's up and down products run in one
//! parallel loop, spread evenly over the cores whatever the number of experts. The partials of an
//! expert are then added in slice order, scaled by the slot's weight and combined per token
//! (`Lists::combine`) on the calling thread (a few rows of d).
//!
//! SwiGLU experts (W1 the gate, W3 the up projection): a task computes its slice's gate
//! `G = X·W1[slice]ᵀ` and up `V = X·W3[slice]ᵀ` back to back, so the gate and up rows of the same
//! hidden units stream through one task in one pass with no hand-off between them, then
//! `H = silu(G)·V` and the partial down product. Rounding is moe_sparse_gated.rs's: G is rounded to
//! the storage type before SiLU reads it, V is not, H is.
//!
//! Bits: the slices depend only on the expert width, never on the thread count, so the result is
//! the same with any number of threads; but the down product sums over the hidden units in slices
//! rather than in one run, so it differs from the general path by rounding (tests compare the two
//! by relative error, and the inference tests compare greedy decoding against full recompute).

use rayon::prelude::*;

use super::elem::prelude::*;
use super::elem::{Acc, Float};
use super::elementwise::silu_and_grad;
use super::moe_sparse::{Block, Lists, ROW_BLOCK};
use super::par::worth_it;
use super::skinny;
use crate::backend::SparseDims;

/// Hidden units per task for experts of width `f`: a 32nd of the width, within 64 ..= 256. Two
/// experts of width 256 make eight tasks of 512 KiB (bf16, d = 2048) for two cores; a dense MLP of
/// width 8192 run as one expert makes 32 tasks of 2 MiB, whose 32 partial rows the calling thread
/// adds up (a 64th of the weights' traffic at one token).
fn hidden_slice(f: usize) -> usize {
    (f / 32).clamp(64, 256)
}

/// True when every busy expert's block is small enough for this path.
pub(super) fn applies(l: &Lists) -> bool {
    l.blocks(ROW_BLOCK).iter().all(|b| b.rows <= skinny::MAX_ROWS)
}

/// One task: hidden units `cols` of the expert of `block`, its partial output `out` (`[rows, d]`).
struct Task<'a, A> {
    block: Block,
    cols: std::ops::Range<usize>,
    out: &'a mut [A],
}

/// A task's buffers: gathered X rows, U (GeLU's input or SwiGLU's gate), SwiGLU's V, and H (kept
/// per worker).
type Scratch<A> = (Vec<A>, Vec<A>, Vec<A>, Vec<A>);

/// The list-ordered expert outputs `[total, d]`, each scaled by its slot's weight and rounded to
/// the storage type (what the sparse forwards hand to `combine`): GeLU experts `(w1, w2)`, or
/// SwiGLU experts with `w3`, the up projection.
pub(super) fn expert_rows<T: Float>(x: &[T], w1: &[T], w3: Option<&[T]>, w2: &[T], w: &[T], l: &Lists) -> Vec<T> {
    let SparseDims { d, f, .. } = l.dims;
    let blocks = l.blocks(ROW_BLOCK);
    let slice = hidden_slice(f);
    let slices = f.div_ceil(slice);
    // [block][slice][row][col]: every task's partial is one contiguous chunk.
    let mut partial = vec![<T::Acc>::zero(); l.total() * slices * d];
    let mut tasks = Vec::with_capacity(blocks.len() * slices);
    let mut rest = partial.as_mut_slice();
    for &block in &blocks {
        for s in 0..slices {
            let (out, tail) = std::mem::take(&mut rest).split_at_mut(block.rows * d);
            tasks.push(Task { block, cols: s * slice..((s + 1) * slice).min(f), out });
            rest = tail;
        }
    }
    let run = |(xg, u, v, h): &mut Scratch<T::Acc>, t: Task<T::Acc>| {
        let (rows, width) = (t.block.rows, t.cols.len());
        l.gather(xg, x, t.block, d);
        let hidden = (t.block.expert * f + t.cols.start) * d..(t.block.expert * f + t.cols.end) * d;
        let product = |out: &mut Vec<T::Acc>, w: &[T]| {
            out.clear();
            out.resize(rows * width, <T::Acc>::zero());
            skinny::dots_here::<T>(xg, &w[hidden.clone()], rows, d, out);
        };
        product(u, w1);
        h.clear();
        h.resize(rows * width, <T::Acc>::zero());
        match w3 {
            None => <T::Acc>::gated_gelu(u, <T::Acc>::one(), h),
            Some(w3) => {
                product(v, w3);
                h.iter_mut().zip(u.iter().zip(v.iter())).for_each(|(h, (&g, &v))| *h = silu_and_grad(T::narrow(g).widen()).0 * v);
            }
        }
        // H is stored in the tensor dtype in the general path (and by the GPU kernels) before W2 reads it.
        h.iter_mut().for_each(|v| *v = T::narrow(*v).widen());
        skinny::axpys_here::<T>(h, &w2[hidden], rows, d, width, t.out);
    };
    let scratch = || (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    if worth_it(l.total() * d * f) {
        tasks.into_par_iter().for_each_init(scratch, run);
    } else {
        let mut s = scratch();
        tasks.into_iter().for_each(|t| run(&mut s, t));
    }
    // Each entry's partials added in slice order, then scaled by the slot's weight.
    let mut rows = Vec::with_capacity(l.total() * d);
    let mut sum = vec![<T::Acc>::zero(); d];
    let mut at = 0;
    for b in &blocks {
        let parts = &partial[at..at + slices * b.rows * d];
        for r in 0..b.rows {
            sum.copy_from_slice(&parts[r * d..(r + 1) * d]);
            for s in 1..slices {
                sum.iter_mut().zip(&parts[(s * b.rows + r) * d..][..d]).for_each(|(a, &p)| *a += p);
            }
            let ws = w[l.slot(b.first + r)].widen();
            rows.extend(sum.iter().map(|&v| T::narrow(v * ws)));
        }
        at += slices * b.rows * d;
    }
    rows
}
