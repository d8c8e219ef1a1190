//! The CPU backend: the reference every CUDA kernel is tested against, and fast enough for
//! CPU-only training of small models. This file only routes each `BackendStorage` method to the
//! file of its op family, through the profiler's bracket (`profile::timed`, which declares each
//! call's bytes and FLOPs); the dtype plumbing is in `elem`, the threading policy in `par`, the
//! caching host allocator in `pool`.

mod adamw;
mod attention;
mod attention_rows;
#[cfg(target_arch = "x86_64")]
mod attention_rows_avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_math;
pub mod bandwidth;
mod cross_entropy;
mod elem;
mod elementwise;
mod gemm;
pub mod huge_pages;
mod index;
mod layout;
mod matmul;
mod moe_dense;
mod paged_attention;
pub(crate) mod moe_sparse;
mod moe_sparse_decode;
#[cfg(target_arch = "x86_64")]
mod moe_sparse_fused;
pub(crate) mod moe_sparse_gated;
mod par;
pub mod pool;
pub mod profile;
mod reduce;
mod rms_norm;
mod rope;
mod simd;
mod skinny;
#[cfg(target_arch = "x86_64")]
mod skinny_bf16;
mod softmax;
mod strided;
mod topk;

use crate::backend::*;
use crate::{CpuStorage, DType, Result};
use profile::{timed, Cost};

pub use par::on_pool_kept_awake;

impl CpuStorage {
    /// Bytes per element.
    fn elem_bytes(&self) -> usize {
        self.dtype().size_in_bytes()
    }
    /// A pass reading `read` and writing `written` elements of this storage's dtype.
    fn pass(&self, read: usize, written: usize, flops_per_out: usize) -> Cost {
        Cost::streaming(read, written, self.elem_bytes(), flops_per_out)
    }
}

/// The cost of `products` matrix products of m x n x k with `operands` elements read and written.
fn products_cost(products: usize, m: usize, n: usize, k: usize, operands: usize, elem: usize) -> Cost {
    Cost { bytes: (operands * elem) as u64, flops: (2 * products * m * n * k) as u64 }
}

/// The cost of causal attention with `flops_per_pair` flops per (query, key) pair, head and head
/// element, and `operands` elements read and written.
fn attention_cost(operands: usize, seq_offsets: &[usize], dims: &AttentionDims, flops_per_pair: usize, elem: usize) -> Cost {
    let pairs: usize = seq_offsets.windows(2).map(|w| (w[1] - w[0]) * (w[1] - w[0] + 1) / 2).sum();
    Cost { bytes: (operands * elem) as u64, flops: (flops_per_pair * pairs * dims.q_heads * dims.head_dim) as u64 }
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        CpuStorage::dtype(self)
    }
    fn unary(&self, op: UnaryOp) -> Result<Self> {
        timed(|| format!("unary {op:?}"), || self.pass(self.len(), self.len(), 1), || elementwise::unary(self, op))
    }
    fn scalar(&self, op: ScalarOp, s: f64) -> Result<Self> {
        timed(|| format!("scalar {op:?}"), || self.pass(self.len(), self.len(), 1), || elementwise::scalar(self, op, s))
    }
    fn binary(&self, a_strides: &[usize], rhs: &Self, b_strides: &[usize], out_dims: &[usize], op: BinaryOp) -> Result<Self> {
        let out = out_dims.iter().product::<usize>();
        timed(|| format!("binary {op:?}"), || self.pass(self.len() + rhs.len(), out, 1), || elementwise::binary(self, a_strides, rhs, b_strides, out_dims, op))
    }
    fn matmul(&self, rhs: &Self, layout: &MatmulLayout) -> Result<Self> {
        let l = layout;
        let cost = || products_cost(l.batch, l.m, l.n, l.k, self.len() + rhs.len() + l.batch * l.m * l.n, self.elem_bytes());
        timed(|| "matmul".into(), cost, || matmul::matmul(self, rhs, layout))
    }
    fn reduce(&self, outer: usize, size: usize, inner: usize, op: ReduceOp) -> Result<Self> {
        timed(|| format!("reduce {op:?}"), || self.pass(outer * size * inner, outer * inner, size), || reduce::reduce(self, outer, size, inner, op))
    }
    fn argmax(&self, outer: usize, size: usize, inner: usize) -> Result<Self> {
        timed(|| "argmax".into(), || self.pass(outer * size * inner, outer * inner, size), || reduce::argmax(self, outer, size, inner))
    }
    fn softmax(&self, rows: usize, cols: usize, log: bool) -> Result<Self> {
        let name = if log { "log_softmax" } else { "softmax" };
        timed(|| name.into(), || self.pass(rows * cols, rows * cols, 4), || softmax::softmax(self, rows, cols, log))
    }
    fn rms_norm(&self, residual: Option<&Self>, weight: &Self, rows: usize, cols: usize, eps: f64) -> Result<(Self, Option<Self>)> {
        // Reads x (and the residual), writes y (and h); about 5 FLOPs per element.
        let streams = 1 + residual.is_some() as usize;
        timed(|| "rms_norm".into(), || self.pass(streams * rows * cols, streams * rows * cols, 5), || rms_norm::rms_norm(self, residual, weight, rows, cols, eps))
    }
    fn rms_norm_backward(&self, h: &Self, weight: &Self, rows: usize, cols: usize, eps: f64) -> Result<(Self, Self)> {
        // Reads dy and h, writes dh; about 10 FLOPs per element.
        timed(|| "rms_norm backward".into(), || self.pass(2 * rows * cols, rows * cols, 10), || rms_norm::rms_norm_backward(self, h, weight, rows, cols, eps))
    }
    fn cross_entropy(&self, targets: &Self, rows: usize, vocab: usize) -> Result<Self> {
        // One read of the logits; an exp and about 3 FLOPs per logit.
        timed(|| "cross_entropy".into(), || Cost { bytes: (rows * vocab * self.elem_bytes()) as u64, flops: (4 * rows * vocab) as u64 }, || cross_entropy::cross_entropy(self, targets, rows, vocab))
    }
    fn cross_entropy_backward(&self, targets: &Self, g: &Self, rows: usize, vocab: usize) -> Result<Self> {
        timed(|| "cross_entropy backward".into(), || self.pass(rows * vocab, rows * vocab, 5), || cross_entropy::cross_entropy_backward(self, targets, g, rows, vocab))
    }
    fn index_select(&self, idx: &Self, n_idx: usize, row_len: usize) -> Result<Self> {
        timed(|| "index_select".into(), || self.pass(n_idx * row_len, n_idx * row_len, 0), || index::index_select(self, idx, n_idx, row_len))
    }
    fn scatter_add_rows(&self, idx: &Self, n_idx: usize, row_len: usize, out_rows: usize) -> Result<Self> {
        timed(|| "scatter_add_rows".into(), || self.pass(n_idx * row_len, out_rows * row_len, 1), || index::scatter_add_rows(self, idx, n_idx, row_len, out_rows))
    }
    fn gather_last(&self, idx: &Self, rows: usize, n: usize, k: usize) -> Result<Self> {
        timed(|| "gather_last".into(), || self.pass(2 * rows * k, rows * k, 0), || index::gather_last(self, idx, rows, n, k))
    }
    fn scatter_add_last(&self, idx: &Self, rows: usize, k: usize, n: usize) -> Result<Self> {
        timed(|| "scatter_add_last".into(), || self.pass(2 * rows * k, rows * n, 1), || index::scatter_add_last(self, idx, rows, k, n))
    }
    fn topk(&self, rows: usize, n: usize, k: usize) -> Result<(Self, Self)> {
        timed(|| "topk".into(), || self.pass(rows * n, 2 * rows * k, 0), || topk::topk(self, rows, n, k))
    }
    fn cast(&self, dtype: DType) -> Result<Self> {
        let cost = || Cost { bytes: (self.len() * (self.elem_bytes() + dtype.size_in_bytes())) as u64, flops: 0 };
        timed(|| format!("cast to {}", dtype.name()), cost, || layout::cast(self, dtype))
    }
    fn concat(parts: &[&Self], outer: usize, block_lens: &[usize]) -> Result<Self> {
        let cost = || {
            let total: usize = parts.iter().map(|p| p.len()).sum();
            parts.first().map_or(Cost::default(), |p| p.pass(total, total, 0))
        };
        timed(|| "concat".into(), cost, || layout::concat(parts, outer, block_lens))
    }
    fn narrow(&self, outer: usize, block: usize, start: usize, len: usize) -> Result<Self> {
        timed(|| "narrow".into(), || self.pass(outer * len, outer * len, 0), || layout::narrow(self, outer, block, start, len))
    }
    fn permute(&self, dims: &[usize], perm: &[usize]) -> Result<Self> {
        timed(|| "permute".into(), || self.pass(self.len(), self.len(), 0), || layout::permute(self, dims, perm))
    }
    fn rope(&self, cos: &Self, sin: &Self, b: usize, t: usize, h: usize, d: usize, inverse: bool) -> Result<Self> {
        timed(|| "rope".into(), || self.pass(b * t * h * d + cos.len() + sin.len(), b * t * h * d, 3), || rope::rope(self, cos, sin, (b, t, h, d), inverse))
    }
    fn moe_dense_forward(&self, w1: &Self, w2: &Self, p: &Self, dims: &MoeDenseDims) -> Result<(Self, Self, Self)> {
        let (t, d, h) = (dims.tokens, dims.d, dims.hidden());
        let cost = || products_cost(2, t, h, d, 2 * t * d + 2 * h * d + p.len() + 2 * t * h, self.elem_bytes());
        timed(|| "moe_dense_forward".into(), cost, || moe_dense::forward(self, w1, w2, p, dims))
    }
    fn moe_dense_backward(&self, x: &Self, w1: &Self, w2: &Self, p: &Self, u: &Self, g: &Self, dims: &MoeDenseDims) -> Result<(Self, Self, Self, Self)> {
        let (t, d, h) = (dims.tokens, dims.d, dims.hidden());
        let cost = || products_cost(4, t, h, d, 3 * t * d + 4 * h * d + 2 * p.len() + 2 * t * h, self.elem_bytes());
        timed(|| "moe_dense_backward".into(), cost, || moe_dense::backward(self, x, w1, w2, p, u, g, dims))
    }
    fn gemm(&self, b: &Self, bias: Option<&Self>, residual: Option<&Self>, l: &GemmLayout) -> Result<Self> {
        let cost = || products_cost(1, l.m, l.n, l.k, self.len() + b.len() + l.m * l.n, self.elem_bytes());
        timed(|| "gemm (f64 reference)".into(), cost, || gemm::gemm(self, b, bias, residual, l))
    }
    fn grouped_matmul(&self, b: &Self, counts: &Self, l: &GroupedLayout) -> Result<Self> {
        let cost = || products_cost(1, l.m, l.n, l.k, self.len() + b.len() + l.m * l.n, self.elem_bytes());
        timed(|| "grouped_matmul (f64 reference)".into(), cost, || gemm::grouped_matmul(self, b, counts, l))
    }
    fn paged_attention(&self, k: &Self, v: &Self, table: &Self, lens: &Self, dims: &PagedAttentionDims) -> Result<Self> {
        // Each query row reads its context's keys and values once: two products over the context.
        let cost = || {
            let positions: usize = match lens {
                CpuStorage::U32(l) => l.iter().map(|&n| n as usize).sum(),
                _ => 0,
            };
            let (row, q) = (dims.row_len(), self.len());
            Cost { bytes: ((2 * q + 2 * positions * row) * self.elem_bytes()) as u64, flops: (4 * positions * dims.q_heads * dims.head_dim) as u64 }
        };
        timed(|| "paged_attention".into(), cost, || paged_attention::paged_attention(self, k, v, table, lens, dims))
    }
    fn write_rows(&mut self, src: &Self, slots: &Self, n: usize, row_len: usize) -> Result<()> {
        let cost = src.pass(n * row_len, n * row_len, 0);
        timed(|| "write_rows".into(), || cost, || paged_attention::write_rows(self, src, slots, n, row_len))
    }
    fn adamw(&mut self, grad: &Self, m: &mut Self, v: &mut Self, hp: &AdamW) -> Result<()> {
        let cost = self.pass(4 * self.len(), 3 * self.len(), 12);
        timed(|| "adamw".into(), || cost, || adamw::adamw(self, grad, m, v, hp))
    }
    fn attention_forward(&self, k: &Self, v: &Self, seq_offsets: &[usize], dims: &AttentionDims) -> Result<(Self, Self)> {
        // Two products (scores, then probabilities times values) over the causal pairs.
        let cost = || attention_cost(self.len() + k.len() + v.len() + self.len(), seq_offsets, dims, 4, self.elem_bytes());
        timed(|| "attention forward".into(), cost, || attention::forward(self, k, v, seq_offsets, dims))
    }
    fn attention_backward(&self, q: &Self, k: &Self, v: &Self, out: &Self, lse: &Self, seq_offsets: &[usize], dims: &AttentionDims) -> Result<(Self, Self, Self)> {
        // Five products over the causal pairs: the recomputed scores, dP, dV, dQ and dK.
        let cost = || attention_cost(2 * (q.len() + k.len() + v.len()) + out.len() + self.len(), seq_offsets, dims, 10, self.elem_bytes());
        timed(|| "attention backward".into(), cost, || attention::backward(self, q, k, v, out, lse, seq_offsets, dims))
    }
}
