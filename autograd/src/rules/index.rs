//! Indexing ops. Each gather's gradient is the matching scatter-add and vice versa; indices are
//! plain tensors (not differentiable). Embedding lookup is `index_select` on the table.

use engine::{ops, Tensor};

use super::bytes;
use crate::{Result, Var};

impl Var {
    /// Rows of `self` picked by u32 `idx` (an embedding lookup when `self` is the table).
    pub fn index_select(&self, idx: &Tensor) -> Result<Var> {
        let value = ops::index_select(self.value(), idx)?;
        let (idx, rows) = (idx.clone(), self.dims()[0]);
        Var::custom("index_select", value, &[self], bytes(&[&idx]), move |g, _| Ok(vec![Some(ops::scatter_add_rows(g, &idx, rows)?)]))
    }

    /// `out[idx[i]] += self[i]` into `out_rows` rows.
    pub fn scatter_add_rows(&self, idx: &Tensor, out_rows: usize) -> Result<Var> {
        let value = ops::scatter_add_rows(self.value(), idx, out_rows)?;
        let idx = idx.clone();
        Var::custom("scatter_add_rows", value, &[self], bytes(&[&idx]), move |g, _| Ok(vec![Some(ops::index_select(g, &idx)?)]))
    }

    /// `out[..., j] = self[..., idx[..., j]]`.
    pub fn gather_last(&self, idx: &Tensor) -> Result<Var> {
        let value = ops::gather_last(self.value(), idx)?;
        let (idx, n) = (idx.clone(), self.shape().last());
        Var::custom("gather_last", value, &[self], bytes(&[&idx]), move |g, _| Ok(vec![Some(ops::scatter_add_last(g, &idx, n)?)]))
    }

    /// `out[..., idx[..., j]] += self[..., j]` into a last axis of size `n`.
    pub fn scatter_add_last(&self, idx: &Tensor, n: usize) -> Result<Var> {
        let value = ops::scatter_add_last(self.value(), idx, n)?;
        let idx = idx.clone();
        Var::custom("scatter_add_last", value, &[self], bytes(&[&idx]), move |g, _| Ok(vec![Some(ops::gather_last(g, &idx)?)]))
    }

    /// The k largest entries of each last-axis row and their u32 indices. The gradient flows to
    /// the selected entries only.
    pub fn topk(&self, k: usize) -> Result<(Var, Tensor)> {
        let (values, idx) = ops::topk(self.value(), k)?;
        let (saved_idx, n) = (idx.clone(), self.shape().last());
        let values = Var::custom("topk", values, &[self], bytes(&[&saved_idx]), move |g, _| {
            Ok(vec![Some(ops::scatter_add_last(g, &saved_idx, n)?)])
        })?;
        Ok((values, idx))
    }
}
