//! The CPU backend: the reference every CUDA kernel is tested against, and fast enough for
//! CPU-only training of small models. This file only routes each `BackendStorage` method to the
//! file of its op family; the dtype plumbing is in `elem`, the threading policy in `par`.

mod adamw;
mod elem;
mod elementwise;
mod gemm;
mod index;
mod layout;
mod matmul;
mod moe_dense;
mod paged_attention;
pub(crate) mod moe_sparse;
mod par;
mod reduce;
mod rope;
mod skinny;
mod softmax;
mod strided;
mod topk;

use crate::backend::*;
use crate::{CpuStorage, DType, Result};

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        CpuStorage::dtype(self)
    }
    fn unary(&self, op: UnaryOp) -> Result<Self> {
        elementwise::unary(self, op)
    }
    fn scalar(&self, op: ScalarOp, s: f64) -> Result<Self> {
        elementwise::scalar(self, op, s)
    }
    fn binary(&self, a_strides: &[usize], rhs: &Self, b_strides: &[usize], out_dims: &[usize], op: BinaryOp) -> Result<Self> {
        elementwise::binary(self, a_strides, rhs, b_strides, out_dims, op)
    }
    fn matmul(&self, rhs: &Self, layout: &MatmulLayout) -> Result<Self> {
        matmul::matmul(self, rhs, layout)
    }
    fn reduce(&self, outer: usize, size: usize, inner: usize, op: ReduceOp) -> Result<Self> {
        reduce::reduce(self, outer, size, inner, op)
    }
    fn argmax(&self, outer: usize, size: usize, inner: usize) -> Result<Self> {
        reduce::argmax(self, outer, size, inner)
    }
    fn softmax(&self, rows: usize, cols: usize, log: bool) -> Result<Self> {
        softmax::softmax(self, rows, cols, log)
    }
    fn index_select(&self, idx: &Self, n_idx: usize, row_len: usize) -> Result<Self> {
        index::index_select(self, idx, n_idx, row_len)
    }
    fn scatter_add_rows(&self, idx: &Self, n_idx: usize, row_len: usize, out_rows: usize) -> Result<Self> {
        index::scatter_add_rows(self, idx, n_idx, row_len, out_rows)
    }
    fn gather_last(&self, idx: &Self, rows: usize, n: usize, k: usize) -> Result<Self> {
        index::gather_last(self, idx, rows, n, k)
    }
    fn scatter_add_last(&self, idx: &Self, rows: usize, k: usize, n: usize) -> Result<Self> {
        index::scatter_add_last(self, idx, rows, k, n)
    }
    fn topk(&self, rows: usize, n: usize, k: usize) -> Result<(Self, Self)> {
        topk::topk(self, rows, n, k)
    }
    fn cast(&self, dtype: DType) -> Result<Self> {
        layout::cast(self, dtype)
    }
    fn concat(parts: &[&Self], outer: usize, block_lens: &[usize]) -> Result<Self> {
        layout::concat(parts, outer, block_lens)
    }
    fn narrow(&self, outer: usize, block: usize, start: usize, len: usize) -> Result<Self> {
        layout::narrow(self, outer, block, start, len)
    }
    fn permute(&self, dims: &[usize], perm: &[usize]) -> Result<Self> {
        layout::permute(self, dims, perm)
    }
    fn rope(&self, cos: &Self, sin: &Self, b: usize, t: usize, h: usize, d: usize, inverse: bool) -> Result<Self> {
        rope::rope(self, cos, sin, (b, t, h, d), inverse)
    }
    fn moe_dense_forward(&self, w1: &Self, w2: &Self, p: &Self, dims: &MoeDenseDims) -> Result<(Self, Self, Self)> {
        moe_dense::forward(self, w1, w2, p, dims)
    }
    fn moe_dense_backward(&self, x: &Self, w1: &Self, w2: &Self, p: &Self, u: &Self, g: &Self, dims: &MoeDenseDims) -> Result<(Self, Self, Self, Self)> {
        moe_dense::backward(self, x, w1, w2, p, u, g, dims)
    }
    fn gemm(&self, b: &Self, bias: Option<&Self>, residual: Option<&Self>, l: &GemmLayout) -> Result<Self> {
        gemm::gemm(self, b, bias, residual, l)
    }
    fn grouped_matmul(&self, b: &Self, counts: &Self, l: &GroupedLayout) -> Result<Self> {
        gemm::grouped_matmul(self, b, counts, l)
    }
    fn paged_attention(&self, k: &Self, v: &Self, table: &Self, lens: &Self, dims: &PagedAttentionDims) -> Result<Self> {
        paged_attention::paged_attention(self, k, v, table, lens, dims)
    }
    fn write_rows(&mut self, src: &Self, slots: &Self, n: usize, row_len: usize) -> Result<()> {
        paged_attention::write_rows(self, src, slots, n, row_len)
    }
    fn adamw(&mut self, grad: &Self, m: &mut Self, v: &mut Self, hp: &AdamW) -> Result<()> {
        adamw::adamw(self, grad, m, v, hp)
    }
}
