//! The weights of the inference path: every tensor of a model once, in the inference dtype (f32,
//! or bf16 / f16 with f32 accumulation in the products), with nothing for gradients or optimizer
//! state. They come from a trained `Model` or are drawn at random for a config of any size
//! (`--random-weights`), straight into the target dtype, so a 1B-parameter config never exists in
//! f32 or f64 on the host.
//!
//! Layout is the training model's, with two exceptions. An attention layer's query, key and value
//! projections are held side by side in one `[d, (hq + 2·hkv)·dh]` matrix, so a decode step reads
//! them in one product (one pass of the threads over the weights instead of three; each output
//! column is the same dot product as in its own matrix). And with per-expert attention on
//! (attention experts computing only their own query heads and output rows), the query and output
//! projections are held as one `[heads_per_expert·head_dim, d]` matrix per expert, so an expert's
//! rows are a tensor of their own and an unselected expert's weights are never read; the joined
//! matrix then holds the keys and values only. SwiGLU MLP
//! experts are held split the same way, one `[f, d]` triple per expert, for the composed
//! per-expert path (the fused MoE ops take GeLU experts, stacked).

use engine::{ops, CpuStorage, DType, Device, Rng, Tensor};

use engine::cpu::huge_pages::on_huge_pages;
use crate::config::{Activation, ModelConfig, RouterKind};
use crate::{Error, Model, Result};

/// A router: logits = x·W (or gelu(x·W1)·W2), softmax over experts.
pub(crate) struct RouterWeights {
    pub layers: Vec<Tensor>,
}

/// Query and output projections of an attention layer.
pub(crate) enum HeadProjections {
    /// `wo` `[hq·dh, d]`, the queries in `AttentionWeights::wqkv`: every head computed (the paper's
    /// dense attention).
    Whole { wo: Tensor },
    /// One `[H·dh, d]` pair per expert (query rows transposed): only selected experts' heads.
    PerExpert { wq: Vec<Tensor>, wo: Vec<Tensor> },
}

pub(crate) struct AttentionWeights {
    pub heads: HeadProjections,
    /// `[d, q + 2·hkv·dh]`: the query projection (`q = hq·dh` columns with `Whole` heads, none with
    /// `PerExpert`), then the key and the value projections.
    pub wqkv: Tensor,
    pub router: Option<RouterWeights>,
}

/// The stacked matrices of an MLP's experts (one expert for a plain MLP): `[E·f, d]` each, expert
/// e owning rows `e·f .. (e+1)·f`.
pub(crate) struct ExpertWeights {
    /// The input projection (SwiGLU's gate).
    pub w1: Tensor,
    /// SwiGLU's up projection.
    pub w3: Option<Tensor>,
    pub w2: Tensor,
}

pub(crate) struct MlpWeights {
    pub experts: ExpertWeights,
    pub router: Option<RouterWeights>,
    /// Always-on shared experts, a plain MLP added to the routed output.
    pub shared: Option<Box<MlpWeights>>,
}

impl MlpWeights {
    fn bytes(&self) -> usize {
        let ExpertWeights { w1, w3, w2 } = &self.experts;
        let experts: usize = [w1, w2].into_iter().chain(w3).map(Tensor::size_in_bytes).sum();
        experts + self.router.as_ref().map_or(0, RouterWeights::bytes) + self.shared.as_ref().map_or(0, |s| s.bytes())
    }
}

impl RouterWeights {
    fn bytes(&self) -> usize {
        self.layers.iter().map(Tensor::size_in_bytes).sum()
    }
}

pub(crate) struct LayerWeights {
    pub attn_norm: Tensor,
    pub attn: AttentionWeights,
    pub mlp_norm: Tensor,
    pub mlp: MlpWeights,
}

pub struct InferWeights {
    pub config: ModelConfig,
    pub dtype: DType,
    pub(crate) embed: Tensor,
    /// `[d, V]`, or None when tied to the embedding.
    pub(crate) lm_head: Option<Tensor>,
    pub(crate) final_norm: Tensor,
    pub(crate) layers: Vec<LayerWeights>,
    /// Rotary tables `[max_seq_len, head_dim / 2]`, rows picked by position.
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
}

impl InferWeights {
    /// The weights of a trained (or freshly initialised) model, cast to `dtype`.
    pub fn from_model(model: &Model, dtype: DType, per_expert_attention: bool) -> Result<InferWeights> {
        let by_name: std::collections::HashMap<&str, &Tensor> = model.params.iter().map(|p| (p.name.as_str(), &p.value)).collect();
        build(&model.config, dtype, &model.device(), per_expert_attention, |name, dims| {
            let t = by_name.get(name).ok_or_else(|| Error::Invalid { what: "weights", value: name.into(), msg: "the model has no such tensor".into() })?;
            if t.dims() != dims {
                return Err(Error::Invalid { what: "weights", value: name.into(), msg: format!("shape {:?}, expected {dims:?}", t.dims()) });
            }
            Ok(ops::cast(t, dtype)?)
        })
    }

    /// Random weights of `config` (normal, std 0.02; norms 1) drawn directly in `dtype`.
    pub fn random(config: &ModelConfig, dtype: DType, device: &Device, seed: u64, per_expert_attention: bool) -> Result<InferWeights> {
        config.validate(&config.name)?;
        let mut rng = Rng::new(seed);
        build(config, dtype, device, per_expert_attention, |name, dims| {
            let n: usize = dims.iter().product();
            let values: Vec<f32> = if name.ends_with("norm.weight") { vec![1.0; n] } else { normal_f32(&mut rng, n, 0.02) };
            let cpu = match dtype {
                DType::F32 => CpuStorage::F32(values),
                DType::BF16 => CpuStorage::BF16(values.iter().map(|&v| engine::bf16::from_f32(v)).collect()),
                DType::F16 => CpuStorage::F16(values.iter().map(|&v| engine::f16::from_f32(v)).collect()),
                other => return Err(Error::Invalid { what: "dtype", value: other.name().into(), msg: "inference runs in f32, bf16 or f16".into() }),
            };
            Ok(Tensor::from_cpu(cpu, dims.to_vec()).to_device(device)?)
        })
    }

    /// Bytes of every weight (embedding included).
    pub fn bytes(&self) -> usize {
        let mut total = self.embed.size_in_bytes() + self.final_norm.size_in_bytes() + self.lm_head.as_ref().map_or(0, Tensor::size_in_bytes);
        for l in &self.layers {
            total += l.attn_norm.size_in_bytes() + l.mlp_norm.size_in_bytes() + l.attn.wqkv.size_in_bytes();
            total += match &l.attn.heads {
                HeadProjections::Whole { wo } => wo.size_in_bytes(),
                HeadProjections::PerExpert { wq, wo } => wq.iter().chain(wo).map(Tensor::size_in_bytes).sum(),
            };
            total += l.mlp.bytes() + l.attn.router.as_ref().map_or(0, RouterWeights::bytes);
        }
        total
    }

    pub fn device(&self) -> Device {
        self.embed.device()
    }
}

/// A fast normal draw for large random weights: Box-Muller on 32-bit halves of one u64, two
/// values per draw (the seeded `Rng::normal` spends a draw per value in f64).
fn normal_f32(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let r = rng.next_u64();
        let u1 = 1.0 - (r >> 40) as f32 / (1u64 << 24) as f32;
        let u2 = ((r >> 8) & 0xff_ffff) as f32 / (1u64 << 24) as f32;
        let radius = std * (-2.0 * u1.ln()).sqrt();
        let angle = 2.0 * std::f32::consts::PI * u2;
        out.push(radius * angle.cos());
        out.push(radius * angle.sin());
    }
    out.truncate(n);
    out
}

/// Walks the model's tensors in order, asking `get(name, dims)` for each.
/// Every tensor `get_any` gives goes on huge pages when large enough (the engine's `cpu::huge_pages`).
fn build(cfg: &ModelConfig, dtype: DType, device: &Device, per_expert_attention: bool, mut get_any: impl FnMut(&str, &[usize]) -> Result<Tensor>) -> Result<InferWeights> {
    let mut get = |name: &str, dims: &[usize]| -> Result<Tensor> { Ok(on_huge_pages(get_any(name, dims)?)) };
    let (d, v, a, m) = (cfg.d_model, cfg.vocab_size, &cfg.attention, &cfg.mlp);
    let (hq, dh, hkv) = (cfg.q_heads(), a.head_dim, a.kv_heads);
    let router = |get: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>, prefix: &str, n: usize| -> Result<RouterWeights> {
        Ok(RouterWeights {
            layers: match cfg.router {
                RouterKind::Linear => vec![get(&format!("{prefix}.router.w"), &[d, n])?],
                RouterKind::Mlp { hidden } => vec![get(&format!("{prefix}.router.w1"), &[d, hidden])?, get(&format!("{prefix}.router.w2"), &[hidden, n])?],
            },
        })
    };
    let embed = get("embed.weight", &[v, d])?;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = format!("layers.{i}");
        let attn_norm = get(&format!("{p}.attn_norm.weight"), &[d])?;
        let wq = get(&format!("{p}.attn.wq"), &[d, hq * dh])?;
        let wk = get(&format!("{p}.attn.wk"), &[d, hkv * dh])?;
        let wv = get(&format!("{p}.attn.wv"), &[d, hkv * dh])?;
        let wo = get(&format!("{p}.attn.wo"), &[hq * dh, d])?;
        let attn_router = (a.n_experts > 1).then(|| router(&mut get, &format!("{p}.attn"), a.n_experts)).transpose()?;
        let (heads, wqkv) = if per_expert_attention && a.n_experts > 1 {
            let rows = a.heads_per_expert * dh;
            let wq_t = ops::transpose(&wq, 0, 1)?;
            let heads = HeadProjections::PerExpert { wq: ops::split(&wq_t, &vec![rows; a.n_experts], 0)?, wo: ops::split(&wo, &vec![rows; a.n_experts], 0)? };
            (heads, ops::concat(&[&wk, &wv], 1)?)
        } else {
            (HeadProjections::Whole { wo }, ops::concat(&[&wq, &wk, &wv], 1)?)
        };
        let wqkv = on_huge_pages(wqkv);
        let mlp_norm = get(&format!("{p}.mlp_norm.weight"), &[d])?;
        let moe = cfg.is_moe_layer(i);
        let (experts, width) = if moe { (m.n_experts, m.expert_width) } else { (1, cfg.dense_width()) };
        let mut mlp = mlp_weights(&mut get, cfg, &format!("{p}.mlp"), experts, width)?;
        if moe {
            mlp.router = Some(router(&mut get, &format!("{p}.mlp"), m.n_experts)?);
            if m.shared_experts > 0 {
                mlp.shared = Some(Box::new(mlp_weights(&mut get, cfg, &format!("{p}.mlp.shared"), 1, m.shared_experts * m.expert_width)?));
            }
        }
        layers.push(LayerWeights { attn_norm, attn: AttentionWeights { heads, wqkv, router: attn_router }, mlp_norm, mlp });
    }
    let final_norm = get("final_norm.weight", &[d])?;
    let lm_head = (!cfg.tie_embeddings).then(|| get("lm_head.weight", &[d, v])).transpose()?;
    let (cos, sin) = crate::attention::rotary_tables(cfg.max_seq_len, dh, cfg.rope_theta, dtype, device)?;
    Ok(InferWeights { config: cfg.clone(), dtype, embed, lm_head, final_norm, layers, cos, sin })
}

/// An MLP's expert matrices, without router or shared experts (the caller adds those).
fn mlp_weights(get: &mut impl FnMut(&str, &[usize]) -> Result<Tensor>, cfg: &ModelConfig, prefix: &str, experts: usize, width: usize) -> Result<MlpWeights> {
    let dims = [experts * width, cfg.d_model];
    let w1 = get(&format!("{prefix}.w1"), &dims)?;
    let w2 = get(&format!("{prefix}.w2"), &dims)?;
    let w3 = (cfg.mlp.activation == Activation::Swiglu).then(|| get(&format!("{prefix}.w3"), &dims)).transpose()?;
    Ok(MlpWeights { experts: ExpertWeights { w1, w3, w2 }, router: None, shared: None })
}
