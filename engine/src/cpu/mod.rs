#![allow(unused_variables)] // placeholder bodies until the backend lands
//! The CPU backend: the reference every CUDA kernel is tested against.

use crate::backend::*;
use crate::{CpuStorage, DType, Device, Error, Result};

fn todo_err(op: &'static str) -> Error {
    Error::NotImplemented { op, device: Device::Cpu }
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        CpuStorage::dtype(self)
    }
    fn unary(&self, op: UnaryOp) -> Result<Self> {
        Err(todo_err("unary"))
    }
    fn scalar(&self, op: ScalarOp, s: f64) -> Result<Self> {
        Err(todo_err("scalar"))
    }
    fn binary(&self, a_strides: &[usize], rhs: &Self, b_strides: &[usize], out_dims: &[usize], op: BinaryOp) -> Result<Self> {
        Err(todo_err("binary"))
    }
    fn matmul(&self, rhs: &Self, layout: &MatmulLayout) -> Result<Self> {
        Err(todo_err("matmul"))
    }
    fn reduce(&self, outer: usize, size: usize, inner: usize, op: ReduceOp) -> Result<Self> {
        Err(todo_err("reduce"))
    }
    fn argmax(&self, outer: usize, size: usize, inner: usize) -> Result<Self> {
        Err(todo_err("argmax"))
    }
    fn softmax(&self, rows: usize, cols: usize, log: bool) -> Result<Self> {
        Err(todo_err("softmax"))
    }
    fn index_select(&self, idx: &Self, n_idx: usize, row_len: usize) -> Result<Self> {
        Err(todo_err("index_select"))
    }
    fn scatter_add_rows(&self, idx: &Self, n_idx: usize, row_len: usize, out_rows: usize) -> Result<Self> {
        Err(todo_err("scatter_add_rows"))
    }
    fn gather_last(&self, idx: &Self, rows: usize, n: usize, k: usize) -> Result<Self> {
        Err(todo_err("gather_last"))
    }
    fn scatter_add_last(&self, idx: &Self, rows: usize, k: usize, n: usize) -> Result<Self> {
        Err(todo_err("scatter_add_last"))
    }
    fn topk(&self, rows: usize, n: usize, k: usize) -> Result<(Self, Self)> {
        Err(todo_err("topk"))
    }
    fn cast(&self, dtype: DType) -> Result<Self> {
        Err(todo_err("cast"))
    }
    fn concat(parts: &[&Self], outer: usize, block_lens: &[usize]) -> Result<Self> {
        Err(todo_err("concat"))
    }
    fn narrow(&self, outer: usize, block: usize, start: usize, len: usize) -> Result<Self> {
        Err(todo_err("narrow"))
    }
    fn permute(&self, dims: &[usize], perm: &[usize]) -> Result<Self> {
        Err(todo_err("permute"))
    }
    fn rope(&self, cos: &Self, sin: &Self, b: usize, t: usize, h: usize, d: usize, inverse: bool) -> Result<Self> {
        Err(todo_err("rope"))
    }
    fn adamw(&mut self, grad: &Self, m: &mut Self, v: &mut Self, hp: &AdamW) -> Result<()> {
        Err(todo_err("adamw"))
    }
}
