//! Softmax, log-softmax and the fused softmax cross-entropy, all along the last axis.

use engine::{ops, Tensor};

use super::bytes;
use crate::{Result, Var};

impl Var {
    pub fn softmax(&self) -> Result<Var> {
        let y = ops::softmax(self.value())?;
        let out = y.clone();
        Var::custom("softmax", y, &[self], bytes(&[&out]), move |g, _| {
            // dx = y ⊙ (g − Σ_j g_j y_j)
            let dot = ops::sum(&ops::mul(g, &out)?, -1, true)?;
            Ok(vec![Some(ops::mul(&out, &ops::sub(g, &dot)?)?)])
        })
    }

    pub fn log_softmax(&self) -> Result<Var> {
        let y = ops::log_softmax(self.value())?;
        let out = y.clone();
        Var::custom("log_softmax", y, &[self], bytes(&[&out]), move |g, _| {
            // dx = g − softmax(x) · Σ_j g_j
            let total = ops::sum(g, -1, true)?;
            Ok(vec![Some(ops::sub(g, &ops::mul(&ops::exp(&out)?, &total)?)?)])
        })
    }

    /// Per-row cross-entropy `−log softmax(self)[target]` for logits `[..., V]` and u32 targets
    /// `[...]`; returns `[...]`. One fused op each way: the rule keeps the logits (held anyway) and
    /// the targets, and its backward recomputes the softmax, d logits = (softmax − onehot) · g.
    pub fn cross_entropy(&self, targets: &Tensor) -> Result<Var> {
        let loss = ops::cross_entropy(self.value(), targets)?;
        let (x, t) = (self.value().clone(), targets.clone());
        let saved = bytes(&[&x, &t]);
        Var::custom("cross_entropy", loss, &[self], saved, move |g, _| Ok(vec![Some(ops::cross_entropy_backward(&x, &t, g)?)]))
    }
}
