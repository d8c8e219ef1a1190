//! Model and training configs: JSON files (serde), checked on load so a wrong size is reported with
//! the field that is wrong rather than discovered as a shape error mid-run.
//!
//! Three families share one transformer skeleton (pre-norm residual blocks, rotary positions,
//! RMSNorm, GQA-style shared keys and values):
//! - `dense`: one attention "expert" and one MLP of width `mlp.expert_width`, no routers.
//! - `ds-moe`: a router over attention experts (MoA) and over MLP experts in every layer; trained
//!   densely (every expert on every token), inferred sparsely.
//! - `smoe`: dense attention; MLP experts routed top-k in training and inference, with the Switch
//!   load-balancing loss and an optional capacity factor, in every `moe_every`-th layer.
//!
//! Any MLP is GeLU (two matrices) or SwiGLU (three, `mlp.activation`); an MoE layer may add
//! always-on shared experts (`mlp.shared_experts`, DeepSeekMoE-style) and the first layers may be
//! dense (`mlp.first_dense_layers`), which together give the peers' exact shapes.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Dense,
    DsMoe,
    Smoe,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionConfig {
    /// Attention experts (N_att); 1 means plain attention with no router.
    pub n_experts: usize,
    /// Query heads owned by each expert (N_head).
    pub heads_per_expert: usize,
    pub head_dim: usize,
    /// Key/value heads shared by every expert.
    pub kv_heads: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// MLP experts (N_ffd); 1 means a plain MLP.
    pub n_experts: usize,
    /// Hidden width of each expert (D_ffd).
    pub expert_width: usize,
    /// Experts per token in training and inference (the `smoe` family only).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Expert capacity `k·ceil(capacity_factor·T/N)` slots (fairseq's Top2Gate's `2·ceil(S/E)`
    /// at factor 1, top-2); overflow pairs skip the expert (a token with both dropped keeps its
    /// residual only), second choices before first choices (GShard / fairseq's Top2Gate), the
    /// gates renormalised over the kept pairs. `smoe` only; none means unlimited.
    #[serde(default)]
    pub capacity_factor: Option<f64>,
    /// An MoE MLP in every `moe_every`-th layer (fairseq's `--moe-freq`); others are dense MLPs
    /// of width `dense_width`.
    #[serde(default = "one")]
    pub moe_every: usize,
    #[serde(default)]
    pub dense_width: Option<usize>,
    /// The first `first_dense_layers` layers have a dense MLP of `dense_width` (DeepSeekMoE's
    /// dense first layer).
    #[serde(default)]
    pub first_dense_layers: usize,
    /// Experts of `expert_width` every token uses in each MoE layer besides the routed ones, not
    /// gated (DeepSeekMoE's shared experts); computed as one MLP of `shared_experts·expert_width`.
    #[serde(default)]
    pub shared_experts: usize,
    #[serde(default)]
    pub activation: Activation,
}

/// The MLP's nonlinearity, for every MLP of a model (experts, shared experts, dense layers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// `gelu(x·W1ᵀ)·W2` (GPT-2, the paper's models).
    #[default]
    Gelu,
    /// `(silu(x·W1ᵀ) ⊙ x·W3ᵀ)·W2`, W1 the gate and W3 the up projection (Llama, Mistral,
    /// DeepSeekMoE, Qwen-MoE).
    Swiglu,
}

impl Activation {
    /// Matrices of one MLP of this kind.
    pub fn matrices(self) -> usize {
        match self {
            Activation::Gelu => 2,
            Activation::Swiglu => 3,
        }
    }
}

/// How the load-balancing losses of the MoE layers combine into one term (fairseq's
/// `--moe-gate-loss-combine-method`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossCombine {
    /// The mean over the MoE layers (fairseq's default).
    #[default]
    Average,
    /// The sum over the MoE layers (fairseq's MoE LM recipe, Artetxe et al.: `--moe-gate-loss-wt
    /// 0.01 --moe-gate-loss-combine-method sum`).
    Sum,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RouterKind {
    /// logits = x·W
    Linear,
    /// logits = gelu(x·W1)·W2, as ModuleFormer's gate.
    Mlp { hidden: usize },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub family: Family,
    #[serde(default)]
    pub description: String,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub max_seq_len: usize,
    pub attention: AttentionConfig,
    pub mlp: MlpConfig,
    #[serde(default = "linear_router")]
    pub router: RouterKind,
    /// Weights of the mutual-information loss on the attention and MLP routers (`ds-moe`), each
    /// layer's term weighted in full: the loss is summed over layers, as ModuleFormer sums it, so
    /// the paper's α (Table 2) mean what the paper meant.
    #[serde(default)]
    pub mi_alpha_att: f64,
    #[serde(default)]
    pub mi_alpha_mlp: f64,
    /// Weight of the Switch load-balancing loss (`smoe`).
    #[serde(default)]
    pub load_balance_alpha: f64,
    /// How the MoE layers' load-balancing losses combine before the weight (`smoe`).
    #[serde(default)]
    pub load_balance_combine: LossCombine,
    #[serde(default = "rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "yes")]
    pub tie_embeddings: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub seq_len: usize,
    pub steps: u64,
    pub lr: f64,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "one_f")]
    pub grad_clip: f64,
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default = "beta1")]
    pub beta1: f64,
    #[serde(default = "beta2")]
    pub beta2: f64,
    #[serde(default = "eval_interval")]
    pub eval_interval: u64,
    /// Validation windows per periodic evaluation (the final evaluation uses `final_eval_windows`).
    #[serde(default = "eval_windows")]
    pub eval_windows: usize,
    #[serde(default = "final_eval_windows")]
    pub final_eval_windows: usize,
    #[serde(default)]
    pub checkpoint_interval: u64,
    #[serde(default)]
    pub seed: u64,
}

/// A config file: the model and how to train it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub train: TrainConfig,
}

fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn linear_router() -> RouterKind {
    RouterKind::Linear
}
fn rope_theta() -> f64 {
    10_000.0
}
fn norm_eps() -> f64 {
    1e-5
}
fn weight_decay() -> f64 {
    0.01
}
fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.95
}
fn eval_interval() -> u64 {
    100
}
fn eval_windows() -> usize {
    32
}
fn final_eval_windows() -> usize {
    256
}

impl Config {
    /// Parses and checks a config; `origin` (a path or preset name) is named in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Config> {
        let config: Config = serde_json::from_str(text).map_err(|e| Error::config(origin, e.to_string()))?;
        config.validate(origin)?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("configs serialise")
    }

    pub fn validate(&self, origin: &str) -> Result<()> {
        self.model.validate(origin)?;
        let t = &self.train;
        let bad = |msg: String| Err(Error::config(origin, msg));
        if t.batch_size == 0 || t.seq_len == 0 || t.grad_accum == 0 {
            return bad("train.batch_size, train.seq_len and train.grad_accum must be positive".into());
        }
        if t.batch_size.checked_mul(t.seq_len).and_then(|n| n.checked_mul(t.grad_accum)).is_none_or(|n| n > u32::MAX as usize) {
            return bad(format!("train.batch_size {} x seq_len {} x grad_accum {} tokens per step overflow (at most {} tokens per step)", t.batch_size, t.seq_len, t.grad_accum, u32::MAX));
        }
        if t.seq_len > self.model.max_seq_len {
            return bad(format!("train.seq_len {} exceeds model.max_seq_len {}", t.seq_len, self.model.max_seq_len));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) || t.min_lr < 0.0 || t.min_lr > t.lr {
            return bad(format!("learning rates must satisfy 0 <= min_lr <= lr, lr > 0 (lr {}, min_lr {})", t.lr, t.min_lr));
        }
        if !(0.0..1.0).contains(&t.beta1) || !(0.0..1.0).contains(&t.beta2) {
            return bad("train.beta1 and train.beta2 must be in [0, 1)".into());
        }
        if t.grad_clip <= 0.0 || t.weight_decay < 0.0 {
            return bad("train.grad_clip must be positive and train.weight_decay non-negative".into());
        }
        Ok(())
    }
}

impl ModelConfig {
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |msg: String| Err(Error::config(origin, msg));
        let (a, m) = (&self.attention, &self.mlp);
        if self.vocab_size < 2 || self.d_model == 0 || self.n_layers == 0 || self.max_seq_len == 0 {
            return bad("vocab_size >= 2, and d_model, n_layers, max_seq_len > 0 are required".into());
        }
        if self.vocab_size > u32::MAX as usize {
            return bad(format!("vocab_size {} does not fit the 32-bit token ids (at most {})", self.vocab_size, u32::MAX));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return bad(format!("norm_eps {} must be a positive number (RMSNorm divides by sqrt(mean(x²) + norm_eps))", self.norm_eps));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return bad(format!("rope_theta {} must be a positive number (the rotary base)", self.rope_theta));
        }
        if a.n_experts == 0 || a.heads_per_expert == 0 || a.kv_heads == 0 || a.head_dim == 0 {
            return bad("attention sizes must all be positive".into());
        }
        if a.head_dim % 2 != 0 {
            return bad(format!("attention.head_dim {} must be even for rotary embeddings", a.head_dim));
        }
        let q_heads = a.n_experts * a.heads_per_expert;
        if q_heads % a.kv_heads != 0 {
            return bad(format!("query heads (n_experts {} x heads_per_expert {} = {q_heads}) must be a multiple of kv_heads {}", a.n_experts, a.heads_per_expert, a.kv_heads));
        }
        if m.n_experts == 0 || m.expert_width == 0 || m.moe_every == 0 {
            return bad("mlp.n_experts, mlp.expert_width and mlp.moe_every must be positive".into());
        }
        if m.first_dense_layers > self.n_layers || (m.first_dense_layers > 0 && m.n_experts > 1 && m.dense_width.is_none()) {
            return bad(format!("mlp.first_dense_layers {} must be at most n_layers {} and needs mlp.dense_width", m.first_dense_layers, self.n_layers));
        }
        if m.shared_experts > 0 && m.n_experts == 1 {
            return bad("mlp.shared_experts need routed experts beside them (mlp.n_experts > 1)".into());
        }
        if let RouterKind::Mlp { hidden: 0 } = self.router {
            return bad("router.hidden must be positive".into());
        }
        if let Some(cf) = m.capacity_factor {
            if !(cf > 0.0 && cf.is_finite()) {
                return bad(format!("mlp.capacity_factor {cf} must be positive"));
            }
        }
        if [self.mi_alpha_att, self.mi_alpha_mlp, self.load_balance_alpha].iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
            return bad("loss weights must be finite and non-negative".into());
        }
        if self.counts(None, None).is_err() {
            return bad(crate::count::COUNT_OVERFLOW.into());
        }
        match self.family {
            Family::Dense => {
                if a.n_experts != 1 || m.n_experts != 1 {
                    return bad("a dense model has attention.n_experts = 1 and mlp.n_experts = 1".into());
                }
            }
            Family::DsMoe => {
                if m.top_k.is_some() || m.capacity_factor.is_some() || m.moe_every != 1 {
                    return bad("ds-moe trains every expert densely: mlp.top_k, capacity_factor and moe_every do not apply".into());
                }
            }
            Family::Smoe => {
                let k = m.top_k.ok_or_else(|| Error::config(origin, "smoe needs mlp.top_k"))?;
                if k == 0 || k > m.n_experts {
                    return bad(format!("mlp.top_k {k} must be in 1..={}", m.n_experts));
                }
                if a.n_experts != 1 {
                    return bad("smoe uses dense attention: attention.n_experts = 1".into());
                }
                if m.moe_every > 1 && m.dense_width.is_none() {
                    return bad("mlp.moe_every > 1 needs mlp.dense_width for the dense layers".into());
                }
            }
        }
        Ok(())
    }

    /// Total query heads.
    pub fn q_heads(&self) -> usize {
        self.attention.n_experts * self.attention.heads_per_expert
    }

    /// True when layer `i` has an MoE MLP (with a router).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.mlp.n_experts > 1 && i >= self.mlp.first_dense_layers && (i + 1) % self.mlp.moe_every == 0
    }

    /// Width of the dense MLP of a layer without a router.
    pub fn dense_width(&self) -> usize {
        let m = &self.mlp;
        if m.n_experts > 1 { m.dense_width.unwrap_or(m.expert_width) } else { m.expert_width }
    }
}

/// Built-in configs, by name (the files in `configs/`, embedded so the binary runs anywhere).
pub mod presets {
    use super::Config;
    use crate::Result;

    macro_rules! presets {
        ($($name:literal),* $(,)?) => {
            pub const NAMES: &[&str] = &[$($name),*];
            fn text(name: &str) -> Option<&'static str> {
                match name {
                    $($name => Some(include_str!(concat!("../../configs/", $name, ".json"))),)*
                    _ => None,
                }
            }
        };
    }
    presets!(
        "ds-moe-tiny", "dense-tiny", "smoe-tiny", "fairseq-moe-tiny", "fairseq-dense-tiny", "ds-moe-100m",
        "ds-moe-1b", "ds-moe-3b", "ds-moe-6b", "dense-1b", "dense-3b", "dense-6b",
        "smoe-1b", "smoe-1.5b", "smoe-5b", "mistral-7b", "deepseekmoe-16b", "qwen1.5-moe-a2.7b",
    );

    /// A preset by name, or a config file by path.
    pub fn load(name_or_path: &str) -> Result<Config> {
        if let Some(text) = text(name_or_path) {
            return Config::from_json(text, name_or_path);
        }
        let path = std::path::Path::new(name_or_path);
        if !path.exists() {
            return Err(crate::Error::config(name_or_path, format!("not a preset ({}) and not a file", NAMES.join(", "))));
        }
        let text = crate::files::read_text_limited(path, crate::files::METADATA_LIMIT, "config file")?;
        Config::from_json(&text, name_or_path)
    }
}
