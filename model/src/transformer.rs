//! The transformer: token embedding, pre-norm residual blocks (attention then MLP, each behind an
//! RMSNorm), a final norm and the language-model head (tied to the embedding by default).

use autograd::Var;
use engine::{Device, Rng, Tensor};

use crate::attention::{Attention, Positions};
use crate::config::{Family, ModelConfig};
use crate::losses;
use crate::mlp::{Mlp, Routing};
use crate::params::{Init, ParamId, Params};
use crate::router::Selection;
use crate::{Ctx, Error, Result};

struct Block {
    attn_norm: ParamId,
    attn: Attention,
    mlp_norm: ParamId,
    mlp: Mlp,
}

pub struct Model {
    pub config: ModelConfig,
    pub params: Params,
    embed: ParamId,
    blocks: Vec<Block>,
    final_norm: ParamId,
    lm_head: Option<ParamId>,
}

/// Expert selection at inference, for the MLP and attention routers separately.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InferenceMode {
    pub mlp: Selection,
    pub attention: Selection,
}

impl InferenceMode {
    pub const DENSE: InferenceMode = InferenceMode { mlp: Selection::Dense, attention: Selection::Dense };
}

/// Per-layer routing statistics of one forward pass.
#[derive(Debug, Clone, Default)]
pub struct LayerStats {
    pub att_experts_per_token: f64,
    pub mlp_experts_per_token: f64,
    pub dropped_tokens: usize,
}

pub struct Forward {
    /// `[B·T, V]`
    pub logits: Var,
    /// The weighted auxiliary loss (MI for DS-MoE, load balancing for SMoE), if any.
    pub aux_loss: Option<Var>,
    pub layers: Vec<LayerStats>,
}

impl Model {
    pub fn new(config: &ModelConfig, device: &Device, seed: u64) -> Result<Model> {
        config.validate(&config.name)?;
        let mut rng = Rng::new(seed);
        let mut params = Params::default();
        let (d, v) = (config.d_model, config.vocab_size);
        let embed = params.add("embed.weight".into(), &[v, d], Init::Normal(0.02), device, &mut rng)?;
        let mut blocks = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let prefix = format!("layers.{i}");
            let attn_norm = params.add(format!("{prefix}.attn_norm.weight"), &[d], Init::Ones, device, &mut rng)?;
            let attn = Attention::new(&mut params, &format!("{prefix}.attn"), config, device, &mut rng)?;
            let mlp_norm = params.add(format!("{prefix}.mlp_norm.weight"), &[d], Init::Ones, device, &mut rng)?;
            let m = &config.mlp;
            let mlp = if config.is_moe_layer(i) {
                Mlp::new(&mut params, &format!("{prefix}.mlp"), d, m.n_experts, m.expert_width, Some(config.router), config.n_layers, device, &mut rng)?
            } else {
                let width = if m.n_experts > 1 { m.dense_width.unwrap_or(m.expert_width) } else { m.expert_width };
                Mlp::new(&mut params, &format!("{prefix}.mlp"), d, 1, width, None, config.n_layers, device, &mut rng)?
            };
            blocks.push(Block { attn_norm, attn, mlp_norm, mlp });
        }
        let final_norm = params.add("final_norm.weight".into(), &[d], Init::Ones, device, &mut rng)?;
        let lm_head = (!config.tie_embeddings).then(|| params.add("lm_head.weight".into(), &[d, v], Init::Normal(0.02), device, &mut rng)).transpose()?;
        Ok(Model { config: config.clone(), params, embed, blocks, final_norm, lm_head })
    }

    pub fn device(&self) -> Device {
        self.params.get(self.embed).value.device()
    }

    /// Runs `tokens` (u32 `[B·T]`, B sequences of T) through the model. Training (`mode` =
    /// `DENSE` for DS-MoE) computes every expert; the SMoE family always routes top-k.
    pub fn forward(&self, ctx: &Ctx, tokens: &Tensor, batch: usize, seq: usize, mode: InferenceMode) -> Result<Forward> {
        let cfg = &self.config;
        if tokens.elem_count() != batch * seq || seq == 0 || seq > cfg.max_seq_len {
            return Err(Error::Invalid { what: "batch", value: format!("{:?}", tokens.shape()), msg: format!("expected {batch} x {seq} tokens with 0 < {seq} <= max_seq_len {}", cfg.max_seq_len) });
        }
        let pos = Positions::new(seq, cfg.attention.head_dim, cfg.rope_theta, ctx.dtype, &self.device())?;
        let embed = ctx.p(self.params.get(self.embed))?;
        let mut h = embed.index_select(tokens)?;
        let mut aux: Option<Var> = None;
        let mut add_aux = |term: Var, alpha: f64| -> Result<()> {
            if alpha > 0.0 {
                let term = term.mul_scalar(alpha / cfg.n_layers as f64)?;
                aux = Some(match aux.take() {
                    Some(a) => a.add(&term)?,
                    None => term,
                });
            }
            Ok(())
        };
        let mut layers = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let x = h.rms_norm(&ctx.p(self.params.get(block.attn_norm))?, cfg.norm_eps)?;
            let a = block.attn.forward(ctx, &self.params, &x, batch, seq, &pos, mode.attention)?;
            if let Some(r) = &a.router {
                add_aux(losses::mutual_information(ctx, r)?, cfg.mi_alpha_att)?;
            }
            h = h.add(&a.y)?;
            let x = h.rms_norm(&ctx.p(self.params.get(block.mlp_norm))?, cfg.norm_eps)?;
            let routing = match cfg.family {
                Family::Smoe => Routing::TopKRenormalised { k: cfg.mlp.top_k.unwrap_or(1), capacity_factor: cfg.mlp.capacity_factor },
                _ if mode.mlp == Selection::Dense => Routing::Dense,
                _ => Routing::Sparse(mode.mlp),
            };
            let m = block.mlp.forward(ctx, &self.params, &x, routing)?;
            if let Some(r) = &m.router {
                match cfg.family {
                    Family::Smoe => add_aux(losses::load_balance(ctx, r)?, cfg.load_balance_alpha)?,
                    _ => add_aux(losses::mutual_information(ctx, r)?, cfg.mi_alpha_mlp)?,
                }
            }
            h = h.add(&m.y)?;
            layers.push(LayerStats { att_experts_per_token: a.experts_per_token, mlp_experts_per_token: m.experts_per_token, dropped_tokens: m.dropped_tokens });
        }
        let h = h.rms_norm(&ctx.p(self.params.get(self.final_norm))?, cfg.norm_eps)?;
        let logits = match self.lm_head {
            Some(w) => h.matmul(&ctx.p(self.params.get(w))?)?,
            None => h.matmul_t(&embed, false, true)?,
        };
        Ok(Forward { logits, aux_loss: aux, layers })
    }

    /// Parameter counts, excluding the embedding and LM head as the paper's Table 1 does.
    pub fn param_counts(&self, stats: Option<&[LayerStats]>) -> ParamCounts {
        let d = self.config.d_model;
        let embedding: usize = self.params.iter().filter(|p| p.name.starts_with("embed.") || p.name.starts_with("lm_head.")).map(|p| p.value.elem_count()).sum();
        let total = self.params.count() - embedding;
        let (mut idle_total, mut mlp_expert_total, mut mlp_expert_active) = (0.0, 0usize, 0.0);
        for (i, b) in self.blocks.iter().enumerate() {
            let s = stats.and_then(|s| s.get(i));
            let att_experts = b.attn.router.as_ref().map_or(0, |r| r.n_experts);
            let mlp_experts = b.mlp.router.as_ref().map_or(0, |r| r.n_experts);
            let att_used = s.map_or(att_experts as f64, |s| s.att_experts_per_token);
            let mlp_used = s.map_or(mlp_experts as f64, |s| s.mlp_experts_per_token);
            // A block without a router has no experts to leave idle.
            let idle = |experts: usize, used: f64, per_expert: usize| if experts > 0 { (experts as f64 - used) * per_expert as f64 } else { 0.0 };
            idle_total += idle(att_experts, att_used, b.attn.expert_param_count(d)) + idle(mlp_experts, mlp_used, b.mlp.expert_param_count(d));
            if mlp_experts > 0 {
                mlp_expert_total += mlp_experts * b.mlp.expert_param_count(d);
                mlp_expert_active += mlp_used * b.mlp.expert_param_count(d) as f64;
            }
        }
        ParamCounts { total, embedding, active: total as f64 - idle_total, mlp_expert_total, mlp_expert_active }
    }
}

/// Parameter counts of a model; `active` is per token, from routing statistics when given.
#[derive(Debug, Clone, Copy)]
pub struct ParamCounts {
    pub total: usize,
    pub embedding: usize,
    pub active: f64,
    pub mlp_expert_total: usize,
    pub mlp_expert_active: f64,
}

impl ParamCounts {
    pub fn active_fraction(&self) -> f64 {
        self.active / self.total as f64
    }
    pub fn mlp_expert_fraction(&self) -> f64 {
        if self.mlp_expert_total == 0 {
            1.0
        } else {
            self.mlp_expert_active / self.mlp_expert_total as f64
        }
    }
}

