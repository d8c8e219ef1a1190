//! Ops that move elements: reshape, permute / transpose, narrow / split, concat, cast, and the
//! rotary embedding (a rotation, whose gradient is the inverse rotation).

use engine::{ops, DType, Shape, Tensor};

use super::bytes;
use crate::{Result, Var};

impl Var {
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Var> {
        let value = self.value().reshape(shape)?;
        let in_shape = self.shape().clone();
        Var::custom("reshape", value, &[self], 0, move |g, _| Ok(vec![Some(g.reshape(in_shape.clone())?)]))
    }

    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let value = ops::permute(self.value(), perm)?;
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Var::custom("permute", value, &[self], 0, move |g, _| Ok(vec![Some(ops::permute(g, &inverse)?)]))
    }

    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Var> {
        let a = ops::resolve_dim("transpose", d0, self.rank())?;
        let b = ops::resolve_dim("transpose", d1, self.rank())?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// `len` entries of axis `dim` from `start`; the gradient is zero elsewhere.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Var> {
        let value = ops::narrow(self.value(), dim, start, len)?;
        let d = ops::resolve_dim("narrow", dim, self.rank())?;
        let in_shape = self.shape().clone();
        Var::custom("narrow", value, &[self], 0, move |g, _| {
            let size = in_shape.dims()[d];
            let zeros = |n: usize| -> Result<Tensor> {
                let mut dims = in_shape.dims().to_vec();
                dims[d] = n;
                Tensor::zeros(dims, g.dtype(), &g.device())
            };
            let mut parts = Vec::new();
            if start > 0 {
                parts.push(zeros(start)?);
            }
            parts.push(g.clone());
            if start + len < size {
                parts.push(zeros(size - start - len)?);
            }
            let refs: Vec<&Tensor> = parts.iter().collect();
            Ok(vec![Some(ops::concat(&refs, d as isize)?)])
        })
    }

    /// Pieces of axis `dim` with the given sizes.
    pub fn split(&self, sizes: &[usize], dim: isize) -> Result<Vec<Var>> {
        let d = ops::resolve_dim("split", dim, self.rank())?;
        if sizes.iter().sum::<usize>() != self.dims()[d] {
            return Err(engine::Error::shape("split", format!("sizes {sizes:?} do not add up to dim {d} of {:?}", self.shape())));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let piece = self.narrow(dim, start, len);
                start += len;
                piece
            })
            .collect()
    }

    pub fn concat(parts: &[&Var], dim: isize) -> Result<Var> {
        let values: Vec<&Tensor> = parts.iter().map(|v| v.value()).collect();
        let value = ops::concat(&values, dim)?;
        let d = ops::resolve_dim("concat", dim, value.rank())?;
        let sizes: Vec<usize> = parts.iter().map(|v| v.dims()[d]).collect();
        Var::custom("concat", value, parts, 0, move |g, needs| {
            let pieces = ops::split(g, &sizes, d as isize)?;
            Ok(pieces.into_iter().zip(needs).map(|(p, &n)| n.then_some(p)).collect())
        })
    }

    pub fn cast(&self, dtype: DType) -> Result<Var> {
        let value = ops::cast(self.value(), dtype)?;
        let from = self.dtype();
        Var::custom("cast", value, &[self], 0, move |g, _| Ok(vec![Some(ops::cast(g, from)?)]))
    }

    /// Rotary embedding of `self` `[b, t, h, d]` with tables `cos`, `sin` `[t, d/2]`.
    pub fn rope(&self, cos: &Tensor, sin: &Tensor) -> Result<Var> {
        let value = ops::rope(self.value(), cos, sin, false)?;
        let (cos, sin) = (cos.clone(), sin.clone());
        Var::custom("rope", value, &[self], bytes(&[&cos, &sin]), move |g, _| Ok(vec![Some(ops::rope(g, &cos, &sin, true)?)]))
    }
}
