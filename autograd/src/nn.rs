//! Layers built from differentiable primitives: their gradients follow from the primitives' rules,
//! and the gradient checks cover them like any other op. (RMSNorm is a fused op: rules/norm.rs.)

use crate::{Result, Var};

impl Var {
    /// `self · w (+ b)` for `self` `[..., in]`, `w` `[in, out]`, `b` `[out]`.
    pub fn linear(&self, w: &Var, b: Option<&Var>) -> Result<Var> {
        let y = self.matmul(w)?;
        match b {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }

    /// LayerNorm over the last axis: `(x − mean) / √(var + eps) · weight + bias`.
    pub fn layer_norm(&self, weight: &Var, bias: &Var, eps: f64) -> Result<Var> {
        let centered = self.sub(&self.mean(-1, true)?)?;
        let inv_std = centered.sqr()?.mean(-1, true)?.add_scalar(eps)?.powf(-0.5)?;
        centered.mul(&inv_std)?.mul(weight)?.add(bias)
    }
}
