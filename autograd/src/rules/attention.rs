//! Fused causal attention as one differentiable op (`engine::ops::causal_attention`): the rule
//! keeps q, k, v, the output and the per-row log-sum-exp, O(T·d) in all, and its backward is the
//! op's own, which recomputes the probabilities from the lse tile by tile.

use engine::ops::{self, Sequences};

use super::bytes;
use crate::{Result, Var};

impl Var {
    /// `softmax(scale·q·kᵀ + causal mask)·v` per query head with `self` = q; shapes and the
    /// head grouping as `engine::ops::causal_attention`.
    pub fn causal_attention(&self, k: &Var, v: &Var, seqs: Sequences, scale: f64) -> Result<Var> {
        let fwd = ops::causal_attention(self.value(), k.value(), v.value(), seqs, scale)?;
        let (q, kv, vv) = (self.value().clone(), k.value().clone(), v.value().clone());
        let saved_bytes = bytes(&[&q, &kv, &vv, &fwd.out, &fwd.lse]);
        let offsets: Option<Vec<usize>> = match seqs {
            Sequences::Batched => None,
            Sequences::Packed(o) => Some(o.to_vec()),
        };
        let out = fwd.out.clone();
        Var::custom(
            "causal_attention",
            out,
            &[self, k, v],
            saved_bytes,
            move |d_out, needs| {
                let seqs = offsets
                    .as_deref()
                    .map_or(Sequences::Batched, Sequences::Packed);
                let g = ops::causal_attention_backward(d_out, &q, &kv, &vv, &fwd, seqs, scale)?;
                let keep = |i: usize, t| needs[i].then_some(t);
                Ok(vec![keep(0, g.dq), keep(1, g.dk), keep(2, g.dv)])
            },
        )
    }
}
