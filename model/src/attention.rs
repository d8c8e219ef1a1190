//! Causal self-attention, plain or as a mixture of attention heads (MoA, Zhang et al. 2022).
//!
//! Query heads are grouped by expert: expert k owns heads `k·H .. (k+1)·H` (H = heads per expert)
//! and the matching rows of the output projection. Keys and values are shared by every expert,
//! GQA-style: query head h reads key/value head `h / (Hq / Hkv)`. With a router, each expert's
//! heads are scaled by its router weight before the output projection, which is
//! `O = Σ_k S_k Σ_j O_kj W_o,kj` (Pan et al. eq. 7-8). At inference an expert whose weight is
//! zeroed by the selection contributes nothing; like the paper, the heads are still computed
//! densely (at the >60 % utilisation attention sees, sparse attention does not pay).
//!
//! The heads themselves run as one fused op (`Var::causal_attention`: online softmax, no `[T, T]`
//! tensor, O(T·d) saved for the backward). The composite path it replaced (scores, additive mask,
//! softmax, weighted values, with keys and values repeated to every query head) stays available
//! through `Ctx::attention` as the reference the fused path is tested and benchmarked against.

use autograd::Var;
use engine::ops::Sequences;
use engine::{DType, Device, Rng, Tensor};

use crate::config::{ModelConfig, RouterKind};
use crate::params::{Init, ParamId, Params};
use crate::router::{Router, RouterOut, Selection};
use crate::{Ctx, Result};

pub struct Attention {
    wq: ParamId,
    wk: ParamId,
    wv: ParamId,
    wo: ParamId,
    pub router: Option<Router>,
    n_experts: usize,
    heads_per_expert: usize,
    head_dim: usize,
    kv_heads: usize,
}

/// Per-sequence tensors every attention layer shares: the rotary tables.
pub struct Positions {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// How the attention heads are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    /// The fused causal attention op (the default).
    Fused,
    /// Generic ops materialising the `[B·Hq, T, T]` scores: the reference.
    Composite,
}

impl Positions {
    pub fn new(seq: usize, head_dim: usize, theta: f64, dtype: DType, device: &Device) -> Result<Positions> {
        let (cos, sin) = rotary_tables(seq, head_dim, theta, dtype, device)?;
        Ok(Positions { cos, sin })
    }
}

/// The rotary cos / sin tables `[seq, head_dim / 2]` of positions `0 .. seq`.
pub(crate) fn rotary_tables(seq: usize, head_dim: usize, theta: f64, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(seq * half);
    let mut sin = Vec::with_capacity(seq * half);
    for p in 0..seq {
        for j in 0..half {
            let angle = p as f64 * theta.powf(-2.0 * j as f64 / head_dim as f64);
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((Tensor::from_f64s(&cos, [seq, half], dtype, device)?, Tensor::from_f64s(&sin, [seq, half], dtype, device)?))
}

pub struct AttentionOut {
    pub y: Var,
    pub router: Option<RouterOut>,
    /// Mean attention experts per token with a non-zero weight.
    pub experts_per_token: f64,
}

impl Attention {
    pub fn new(params: &mut Params, prefix: &str, cfg: &ModelConfig, device: &Device, rng: &mut Rng) -> Result<Attention> {
        let a = &cfg.attention;
        let (d, hq) = (cfg.d_model, cfg.q_heads());
        let std = 0.02;
        let out_std = std / (2.0 * cfg.n_layers as f64).sqrt();
        let router: Option<RouterKind> = (a.n_experts > 1).then_some(cfg.router);
        Ok(Attention {
            wq: params.add(format!("{prefix}.wq"), &[d, hq * a.head_dim], Init::Normal(std), device, rng)?,
            wk: params.add(format!("{prefix}.wk"), &[d, a.kv_heads * a.head_dim], Init::Normal(std), device, rng)?,
            wv: params.add(format!("{prefix}.wv"), &[d, a.kv_heads * a.head_dim], Init::Normal(std), device, rng)?,
            wo: params.add(format!("{prefix}.wo"), &[hq * a.head_dim, d], Init::Normal(out_std), device, rng)?,
            router: router.map(|kind| Router::new(params, prefix, kind, d, a.n_experts, device, rng)).transpose()?,
            n_experts: a.n_experts,
            heads_per_expert: a.heads_per_expert,
            head_dim: a.head_dim,
            kv_heads: a.kv_heads,
        })
    }

    /// `x` is `[B·T, d]` (normalised); returns `[B·T, d]`.
    pub fn forward(&self, ctx: &Ctx, params: &Params, x: &Var, batch: usize, seq: usize, pos: &Positions, selection: Selection) -> Result<AttentionOut> {
        let (hq, hkv, dh) = (self.n_experts * self.heads_per_expert, self.kv_heads, self.head_dim);
        let q = x.matmul(&ctx.p(params.get(self.wq))?)?.reshape([batch, seq, hq, dh])?.rope(&pos.cos, &pos.sin)?;
        let k = x.matmul(&ctx.p(params.get(self.wk))?)?.reshape([batch, seq, hkv, dh])?.rope(&pos.cos, &pos.sin)?;
        let v = x.matmul(&ctx.p(params.get(self.wv))?)?.reshape([batch, seq, hkv, dh])?;
        let heads = causal_heads(&q, &k, &v, ctx.attention)?;
        let tokens = batch * seq;
        let (heads, router, experts_per_token) = match &self.router {
            None => (heads.reshape([tokens, hq * dh])?, None, 1.0),
            Some(router) => {
                let r = router.forward(ctx, params, x)?;
                let (gate, used) = match selection.mask(r.probs.value())? {
                    None => (r.probs.clone(), self.n_experts as f64),
                    Some(mask) => {
                        let used = engine::ops::sum_all(&mask)?.to_scalar()? / tokens as f64;
                        (r.probs.mul(&Var::constant(mask))?, used)
                    }
                };
                let per_expert = heads.reshape([tokens, self.n_experts, self.heads_per_expert * dh])?;
                let gated = per_expert.mul(&gate.reshape([tokens, self.n_experts, 1])?)?.reshape([tokens, hq * dh])?;
                (gated, Some(r), used)
            }
        };
        let y = heads.matmul(&ctx.p(params.get(self.wo))?)?;
        Ok(AttentionOut { y, router, experts_per_token })
    }

    /// Parameters one attention expert owns (its query heads and output rows).
    pub fn expert_param_count(&self, d: usize) -> usize {
        2 * self.heads_per_expert * self.head_dim * d
    }
}

/// Causal attention of q `[B, T, Hq, dh]` over k, v `[B, T, Hkv, dh]` (query head h reads key/value
/// head `h / (Hq / Hkv)`), scores scaled by `1/√dh`; returns `[B, T, Hq, dh]`.
pub fn causal_heads(q: &Var, k: &Var, v: &Var, path: AttentionPath) -> Result<Var> {
    let dims = q.dims().to_vec();
    let (batch, seq, hq, dh, hkv) = (dims[0], dims[1], dims[2], dims[3], k.dims()[2]);
    let scale = 1.0 / (dh as f64).sqrt();
    if path == AttentionPath::Fused {
        return Ok(q.causal_attention(k, v, Sequences::Batched, scale)?);
    }
    // [B, T, H, dh] -> [B·H, T, dh]; keys and values repeated to the query heads that share them.
    let q = q.permute(&[0, 2, 1, 3])?.reshape([batch * hq, seq, dh])?;
    let device = q.device();
    let rows: Vec<u32> = (0..batch * hq).map(|r| ((r / hq) * hkv + (r % hq) / (hq / hkv)) as u32).collect();
    let kv_rows = Tensor::from_slice(&rows, [rows.len()], &device)?;
    let spread = |t: &Var| -> Result<Var> { Ok(t.permute(&[0, 2, 1, 3])?.reshape([batch * hkv, seq * dh])?.index_select(&kv_rows)?.reshape([batch * hq, seq, dh])?) };
    let (k, v) = (spread(k)?, spread(v)?);
    let mask: Vec<f64> = (0..seq * seq).map(|i| if i % seq > i / seq { f64::NEG_INFINITY } else { 0.0 }).collect();
    let mask = Tensor::from_f64s(&mask, [seq, seq], q.dtype(), &device)?;
    let probs = q.matmul_t(&k, false, true)?.mul_scalar(scale)?.add(&Var::constant(mask))?.softmax()?;
    Ok(probs.matmul(&v)?.reshape([batch, hq, seq, dh])?.permute(&[0, 2, 1, 3])?)
}
