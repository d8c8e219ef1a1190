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
    /// `[...]`; returns `[...]`. The rule saves only the log-probabilities and uses the fused form
    /// d logits = (softmax − onehot(target)) · g.
    pub fn cross_entropy(&self, targets: &Tensor) -> Result<Var> {
        let dims = self.dims();
        if dims.is_empty() || targets.dims() != &dims[..dims.len() - 1] {
            return Err(engine::Error::shape("cross_entropy", format!("logits {:?} need targets of shape {:?}, got {:?}", self.shape(), &dims[..dims.len().saturating_sub(1)], targets.shape())));
        }
        let vocab = self.shape().last();
        let mut col = targets.dims().to_vec();
        col.push(1);
        let t = targets.reshape(col)?;
        let logp = ops::log_softmax(self.value())?;
        let loss = ops::neg(&ops::gather_last(&logp, &t)?)?.reshape(targets.shape().clone())?;
        let saved = bytes(&[&logp, &t]);
        Var::custom("cross_entropy", loss, &[self], saved, move |g, _| {
            let ones = Tensor::ones(t.shape().clone(), logp.dtype(), &logp.device())?;
            let onehot = ops::scatter_add_last(&ones, &t, vocab)?;
            let mut gcol = g.dims().to_vec();
            gcol.push(1);
            let d = ops::mul(&ops::sub(&ops::exp(&logp)?, &onehot)?, &g.reshape(gcol)?)?;
            Ok(vec![Some(d)])
        })
    }
}

