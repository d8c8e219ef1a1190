//! Shapes of contiguous row-major tensors, and the broadcasting rule the binary ops follow.

use crate::{Error, Result};

#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }
    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.0.len()];
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.0[i + 1];
        }
        strides
    }
    /// Size of the last dimension (1 for a scalar).
    pub fn last(&self) -> usize {
        self.0.last().copied().unwrap_or(1)
    }
    /// Product of all dimensions but the last: the number of rows a last-dim op works over.
    pub fn rows(&self) -> usize {
        self.elem_count() / self.last().max(1)
    }
    /// Checks `dim` against the rank; `op` names the caller in the error.
    pub fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        if dim >= self.rank() {
            return Err(Error::shape(op, format!("dim {dim} out of range for shape {self:?}")));
        }
        Ok(())
    }
    /// (outer, size of dim, inner): the view of a contiguous tensor that a per-dim op walks.
    pub fn split_at_dim(&self, dim: usize) -> (usize, usize, usize) {
        let outer = self.0[..dim].iter().product();
        let inner = self.0[dim + 1..].iter().product();
        (outer, self.0[dim], inner)
    }

    /// NumPy broadcasting: align from the right; each pair of sizes is equal or one of them is 1.
    pub fn broadcast(op: &'static str, a: &Shape, b: &Shape) -> Result<Shape> {
        let rank = a.rank().max(b.rank());
        let mut out = vec![0; rank];
        for i in 0..rank {
            let da = if i < rank - a.rank() { 1 } else { a.0[i - (rank - a.rank())] };
            let db = if i < rank - b.rank() { 1 } else { b.0[i - (rank - b.rank())] };
            out[i] = match (da, db) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => return Err(Error::shape(op, format!("cannot broadcast {a:?} with {b:?}"))),
            };
        }
        Ok(Shape(out))
    }

    /// Strides of `self` read as a tensor of shape `out` (0 where broadcast), padded on the left.
    pub fn broadcast_strides(&self, out: &Shape) -> Vec<usize> {
        let pad = out.rank() - self.rank();
        let own = self.strides();
        (0..out.rank())
            .map(|i| if i < pad || self.0[i - pad] == 1 { 0 } else { own[i - pad] })
            .collect()
    }
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}
