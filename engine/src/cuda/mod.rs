#![allow(unused_variables)] // placeholder bodies until the backend lands
//! The CUDA backend.

use crate::backend::*;
use crate::{CpuStorage, DType, Device, Error, Result};

pub fn device_count() -> usize {
    0
}

pub fn unavailable_reason() -> Option<String> {
    Some("the CUDA backend is not built yet".into())
}

#[derive(Debug)]
pub struct CudaStorage {
    ordinal: usize,
    dtype: DType,
}

fn todo_err(op: &'static str) -> Error {
    Error::NotImplemented { op, device: Device::Cuda(0) }
}

impl CudaStorage {
    pub fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }
    pub fn from_host(_ordinal: usize, _cpu: &CpuStorage) -> Result<Self> {
        Err(todo_err("from_host"))
    }
    pub fn to_host(&self) -> Result<CpuStorage> {
        Err(todo_err("to_host"))
    }
    pub fn try_clone(&self) -> Result<Self> {
        Err(todo_err("clone"))
    }
}

impl BackendStorage for CudaStorage {
    fn dtype(&self) -> DType {
        self.dtype
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
