//! RMSNorm as one fused op, alone or with the residual add in front of it.

use engine::{ops, Tensor};

use super::bytes;
use crate::{Result, Var};

impl Var {
    /// RMSNorm over the last axis: `x / √(mean(x²) + eps) · weight`.
    pub fn rms_norm(&self, weight: &Var, eps: f64) -> Result<Var> {
        let out = ops::rms_norm(self.value(), None, weight.value(), eps)?;
        norm_node(self, weight, out.y, eps)
    }

    /// The residual add of a pre-norm block fused with the next norm: `h = self + residual` and
    /// `rms_norm(h, weight)` from one pass; returns `(h, normed)`.
    pub fn add_rms_norm(&self, residual: &Var, weight: &Var, eps: f64) -> Result<(Var, Var)> {
        let out = ops::rms_norm(self.value(), Some(residual.value()), weight.value(), eps)?;
        let sum = out.sum.ok_or_else(|| engine::Error::invalid("add_rms_norm", "the fused op returned no sum for a residual"))?;
        let h = Var::custom("add (fused into rms_norm)", sum, &[self, residual], 0, |g, needs| Ok(needs.iter().map(|&n| n.then(|| g.clone())).collect()))?;
        let y = norm_node(&h, weight, out.y, eps)?;
        Ok((h, y))
    }
}

/// Records `y = rms_norm(h, weight)`; the rule keeps h and recomputes the normalisation from it.
fn norm_node(h: &Var, weight: &Var, y: Tensor, eps: f64) -> Result<Var> {
    let (hv, wv) = (h.value().clone(), weight.value().clone());
    Var::custom("rms_norm", y, &[h, weight], bytes(&[&hv]), move |g, needs| {
        let (dh, dw) = ops::rms_norm_backward(g, &hv, &wv, eps)?;
        Ok(vec![needs[0].then_some(dh), needs[1].then_some(dw)])
    })
}
