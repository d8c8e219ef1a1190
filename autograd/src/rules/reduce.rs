//! Reductions. Sum and mean spread the gradient back over the reduced axis; max sends it to the
//! position of the maximum (the first, on ties), like the argmax it is computed with.

use engine::{ops, Shape};

use super::broadcast_to;
use crate::{Result, Var};

impl Var {
    pub fn sum(&self, dim: isize, keepdim: bool) -> Result<Var> {
        self.sum_or_mean(dim, keepdim, false)
    }

    pub fn mean(&self, dim: isize, keepdim: bool) -> Result<Var> {
        self.sum_or_mean(dim, keepdim, true)
    }

    /// Sum of every element, shape [1].
    pub fn sum_all(&self) -> Result<Var> {
        self.reshape([self.value().elem_count()])?.sum(0, true)
    }

    /// Mean of every element, shape [1].
    pub fn mean_all(&self) -> Result<Var> {
        self.reshape([self.value().elem_count()])?.mean(0, true)
    }

    fn sum_or_mean(&self, dim: isize, keepdim: bool, mean: bool) -> Result<Var> {
        let d = ops::resolve_dim("sum", dim, self.rank())?;
        let value = if mean { ops::mean(self.value(), dim, keepdim)? } else { ops::sum(self.value(), dim, keepdim)? };
        let in_shape = self.shape().clone();
        let scale = if mean { 1.0 / in_shape.dims()[d] as f64 } else { 1.0 };
        Var::custom(if mean { "mean" } else { "sum" }, value, &[self], 0, move |g, _| {
            let g = g.reshape(keepdim_shape(&in_shape, d))?;
            let g = if mean { ops::mul_scalar(&g, scale)? } else { g };
            Ok(vec![Some(broadcast_to(&g, &in_shape)?)])
        })
    }

    pub fn max(&self, dim: isize, keepdim: bool) -> Result<Var> {
        let d = ops::resolve_dim("max", dim, self.rank())?;
        let value = ops::max(self.value(), dim, keepdim)?;
        let arg = ops::argmax(self.value(), dim, true)?;
        let in_shape = self.shape().clone();
        let saved = arg.size_in_bytes();
        Var::custom("max", value, &[self], saved, move |g, _| {
            // Move the reduced axis last, scatter the gradient to the argmax, move it back.
            let last = in_shape.rank() - 1;
            let g = g.reshape(keepdim_shape(&in_shape, d))?;
            let (g_last, arg_last) = (ops::transpose(&g, d as isize, last as isize)?, ops::transpose(&arg, d as isize, last as isize)?);
            let scattered = ops::scatter_add_last(&g_last, &arg_last, in_shape.dims()[d])?;
            Ok(vec![Some(ops::transpose(&scattered, d as isize, last as isize)?)])
        })
    }
}

fn keepdim_shape(shape: &Shape, d: usize) -> Shape {
    let mut dims = shape.dims().to_vec();
    dims[d] = 1;
    Shape::new(dims)
}

