//! The transformer: token embedding, pre-norm residual blocks (attention then MLP, each behind an
//! RMSNorm), a final norm and the language-model head (tied to the embedding by default).

use std::sync::Arc;

use autograd::Var;
use engine::comm::Communicator;
use engine::{Device, Rng, Tensor};

use crate::attention::{Attention, Positions};
use crate::config::{Family, LossCombine, ModelConfig};
use crate::expert_parallel::{check_splittable, ExpertSplit};
use crate::losses;
use crate::mlp::{Mlp, MlpShape, Routing};
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
    /// Set when the MoE MLPs hold only one expert-parallel rank's experts (`split_experts`).
    pub expert_split: Option<ExpertSplit>,
}

/// Expert selection at inference, for the MLP and attention routers separately.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InferenceMode {
    pub mlp: Selection,
    pub attention: Selection,
}

impl InferenceMode {
    pub const DENSE: InferenceMode = InferenceMode { mlp: Selection::Dense, attention: Selection::Dense };

    /// One rule for both routers: the paper's Threshold strategy (Table 3) selects attention and
    /// MLP experts alike.
    pub fn both(selection: Selection) -> InferenceMode {
        InferenceMode { mlp: selection, attention: selection }
    }

    /// The MLP and attention rules (`Selection::parse` forms); an attention rule of `same` is the
    /// MLP's, so `threshold:0.48` with `same` is one mode setting for both routers.
    pub fn parse(mlp: &str, attention: &str) -> Result<InferenceMode> {
        let mlp = Selection::parse(mlp)?;
        let attention = if attention == "same" { mlp } else { Selection::parse(attention)? };
        Ok(InferenceMode { mlp, attention })
    }
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
    /// The weighted auxiliary loss (MI for DS-MoE, load balancing for SMoE), if any; None when the
    /// context leaves the auxiliary losses out (`Ctx::without_aux_losses`).
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
                let shape = MlpShape { d, n_experts: m.n_experts, width: m.expert_width, activation: m.activation, shared_width: m.shared_experts * m.expert_width };
                Mlp::new(&mut params, &format!("{prefix}.mlp"), shape, Some(config.router), config.n_layers, device, &mut rng)?
            } else {
                let shape = MlpShape { d, n_experts: 1, width: config.dense_width(), activation: m.activation, shared_width: 0 };
                Mlp::new(&mut params, &format!("{prefix}.mlp"), shape, None, config.n_layers, device, &mut rng)?
            };
            blocks.push(Block { attn_norm, attn, mlp_norm, mlp });
        }
        let final_norm = params.add("final_norm.weight".into(), &[d], Init::Ones, device, &mut rng)?;
        let lm_head = (!config.tie_embeddings).then(|| params.add("lm_head.weight".into(), &[d, v], Init::Normal(0.02), device, &mut rng)).transpose()?;
        Ok(Model { config: config.clone(), params, embed, blocks, final_norm, lm_head, expert_split: None })
    }

    /// Keeps only `group`'s rank's experts in every MoE MLP (expert parallelism,
    /// `expert_parallel.rs`). Done once, on the whole model (fresh or loaded).
    pub fn split_experts(&mut self, group: Arc<dyn Communicator>) -> Result<()> {
        check_splittable(&self.config, group.size())?;
        if group.size() == 1 {
            return Ok(());
        }
        if self.expert_split.is_some() {
            return Err(Error::Invalid { what: "expert parallelism", value: group.size().to_string(), msg: "the model's experts are already split".into() });
        }
        let mut params = Vec::new();
        for b in &mut self.blocks {
            params.extend(b.mlp.split_experts(&mut self.params, &group)?.into_iter().map(ParamId::index));
        }
        self.expert_split = Some(ExpertSplit { group, params });
        Ok(())
    }

    pub fn device(&self) -> Device {
        self.params.get(self.embed).value.device()
    }

    /// Runs `tokens` (u32 `[B·T]`, B sequences of T) through the model. Training (`mode` =
    /// `DENSE` for DS-MoE) computes every expert; the SMoE family always routes top-k.
    pub fn forward(&self, ctx: &Ctx, tokens: &Tensor, batch: usize, seq: usize, mode: InferenceMode) -> Result<Forward> {
        self.forward_layers(ctx, tokens, batch, seq, &vec![mode; self.blocks.len()])
    }

    /// `forward` with a mode per layer (`modes[i]` for layer i): how threshold-K runs once its
    /// per-layer K is known (`eval::resolve_threshold_k`).
    pub fn forward_layers(&self, ctx: &Ctx, tokens: &Tensor, batch: usize, seq: usize, modes: &[InferenceMode]) -> Result<Forward> {
        let cfg = &self.config;
        if modes.len() != self.blocks.len() {
            return Err(Error::Invalid { what: "modes", value: modes.len().to_string(), msg: format!("one inference mode per layer is needed ({} layers)", self.blocks.len()) });
        }
        if tokens.elem_count() != batch * seq || seq == 0 || seq > cfg.max_seq_len {
            return Err(Error::Invalid { what: "batch", value: format!("{:?}", tokens.shape()), msg: format!("expected {batch} x {seq} tokens with 0 < {seq} <= max_seq_len {}", cfg.max_seq_len) });
        }
        let pos = Positions::new(seq, cfg.attention.head_dim, cfg.rope_theta, ctx.dtype, &self.device())?;
        let embed = ctx.p(self.params.get(self.embed))?;
        let mut h = embed.index_select(tokens)?;
        let mut aux: Option<Var> = None;
        // `per_layer` is the weight of one layer's term: ModuleFormer (whose MI loss DS-MoE uses)
        // sums its MI loss over layers, so the configs' MI α weighs every layer in full; the
        // Switch loss of the SMoE baselines is averaged over the MoE layers or summed over them
        // (fairseq's `--moe-gate-loss-combine-method`: `gate_loss / gate_count` for average).
        let load_balance_weight = match cfg.load_balance_combine {
            LossCombine::Average => cfg.load_balance_alpha / self.blocks.iter().filter(|b| b.mlp.router.is_some()).count().max(1) as f64,
            LossCombine::Sum => cfg.load_balance_alpha,
        };
        let mut add_aux = |term: &dyn Fn() -> Result<Var>, per_layer: f64| -> Result<()> {
            if per_layer > 0.0 && ctx.aux_losses {
                let term = term()?.mul_scalar(per_layer)?;
                aux = Some(match aux.take() {
                    Some(a) => a.add(&term)?,
                    None => term,
                });
            }
            Ok(())
        };
        let mut uses = Vec::with_capacity(self.blocks.len());
        // Each residual add is fused with the norm that follows it (the next block's attention
        // norm, or the final norm after the last block): one pass gives the stream and its norm.
        let norm_weight = |id: ParamId| ctx.p(self.params.get(id));
        let next_norm = |i: usize| self.blocks.get(i + 1).map_or(self.final_norm, |b| b.attn_norm);
        let mut x = h.rms_norm(&norm_weight(self.blocks.first().map_or(self.final_norm, |b| b.attn_norm))?, cfg.norm_eps)?;
        for (i, (block, mode)) in self.blocks.iter().zip(modes).enumerate() {
            let a = block.attn.forward(ctx, &self.params, &x, batch, seq, &pos, mode.attention)?;
            if let Some(r) = &a.router {
                add_aux(&|| losses::mutual_information(ctx, r), cfg.mi_alpha_att)?;
            }
            (h, x) = h.add_rms_norm(&a.y, &norm_weight(block.mlp_norm)?, cfg.norm_eps)?;
            let routing = match cfg.family {
                Family::Smoe => Routing::TopKRenormalised { k: cfg.mlp.top_k.unwrap_or(1), capacity_factor: cfg.mlp.capacity_factor },
                _ if mode.mlp == Selection::Dense => Routing::Dense,
                _ => Routing::Sparse(mode.mlp),
            };
            let m = block.mlp.forward(ctx, &self.params, &x, routing)?;
            if let Some(r) = &m.router {
                match cfg.family {
                    Family::Smoe => add_aux(&|| losses::load_balance(ctx, r), load_balance_weight)?,
                    _ => add_aux(&|| losses::mutual_information(ctx, r), cfg.mi_alpha_mlp)?,
                }
            }
            (h, x) = h.add_rms_norm(&m.y, &norm_weight(next_norm(i))?, cfg.norm_eps)?;
            uses.push((a.experts_per_token, m.used));
        }
        // The MLP counts are read after every layer is queued (the first read waits for them all).
        let layers = uses.into_iter().map(|(att, mlp)| {
            let (mlp_experts_per_token, dropped_tokens) = mlp.read()?;
            Ok(LayerStats { att_experts_per_token: att, mlp_experts_per_token, dropped_tokens })
        }).collect::<Result<Vec<_>>>()?;
        let h = x;
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
        // Split expert matrices count for the whole expert group.
        let split = |i: usize| self.expert_split.as_ref().filter(|s| s.holds(i)).map_or(1, |s| s.group.size());
        let total = self.params.iter().enumerate().map(|(i, p)| p.value.elem_count() * split(i)).sum::<usize>() - embedding;
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

