//! Parameter counts from a config alone (no weights allocated, so the 6B configs count instantly).
//! Like the paper's Table 1, totals exclude the embedding and LM head, which are reported apart.

use crate::config::{ModelConfig, RouterKind};
use crate::{Error, Result};

/// Why a config's sizes cannot be counted.
pub(crate) const COUNT_OVERFLOW: &str = "the parameter count overflows 64 bits: these sizes are far beyond what any machine holds";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfigCounts {
    pub total: usize,
    pub embedding: usize,
    /// Per token, with `att_experts` attention and `mlp_experts` MLP experts in use.
    pub active: f64,
    pub mlp_expert_fraction: f64,
    /// Layers with an MoE MLP, and the routed experts' parameters over all of them.
    pub moe_layers: usize,
    pub mlp_expert_total: usize,
}

impl ModelConfig {
    fn router_params(&self, n: usize) -> Option<usize> {
        match self.router {
            RouterKind::Linear => self.d_model.checked_mul(n),
            RouterKind::Mlp { hidden } => self.d_model.checked_mul(hidden)?.checked_add(hidden.checked_mul(n)?),
        }
    }

    /// Counts with `att_experts` / `mlp_experts` experts active per token (None = all; the SMoE
    /// family always uses its top_k in the MLP). Integer sizes are computed with overflow checks:
    /// a config too large to count is an error, not a wrapped number.
    pub fn counts(&self, att_experts: Option<f64>, mlp_experts: Option<f64>) -> Result<ConfigCounts> {
        self.checked_counts(att_experts, mlp_experts)
            .ok_or_else(|| Error::config(&self.name, COUNT_OVERFLOW))
    }

    fn checked_counts(&self, att_experts: Option<f64>, mlp_experts: Option<f64>) -> Option<ConfigCounts> {
        let (d, a, m) = (self.d_model, &self.attention, &self.mlp);
        let product = |xs: &[usize]| xs.iter().try_fold(1usize, |acc, &x| acc.checked_mul(x));
        let att_expert = product(&[2, a.heads_per_expert, a.head_dim, d])?;
        let att_router = if a.n_experts > 1 { self.router_params(a.n_experts)? } else { 0 };
        let attention = product(&[a.n_experts, att_expert])?.checked_add(product(&[2, a.kv_heads, a.head_dim, d])?)?.checked_add(att_router)?;
        let att_used = att_experts.unwrap_or(a.n_experts as f64).min(a.n_experts as f64);
        let att_idle = if a.n_experts > 1 { (a.n_experts as f64 - att_used) * att_expert as f64 } else { 0.0 };

        let matrices = m.activation.matrices();
        let mlp_expert = product(&[matrices, m.expert_width, d])?;
        let mlp_used = match (self.mlp.top_k, mlp_experts) {
            (Some(k), _) => k as f64,
            (None, Some(k)) => k.min(m.n_experts as f64),
            (None, None) => m.n_experts as f64,
        };
        // Shared experts are always on: part of the total, never idle.
        let shared = product(&[matrices, m.shared_experts, m.expert_width, d])?;
        let moe_layer = product(&[m.n_experts, mlp_expert])?.checked_add(self.router_params(m.n_experts)?)?.checked_add(shared)?;
        let dense_layer = product(&[matrices, self.dense_width(), d])?;
        // Layer i is an MoE layer when i >= first_dense_layers and (i + 1) is a multiple of
        // moe_every (`is_moe_layer`): the multiples of moe_every in (first_dense_layers, n_layers],
        // counted in closed form so a huge n_layers costs no time.
        let moe_layers = if m.n_experts > 1 { self.n_layers / m.moe_every - m.first_dense_layers / m.moe_every } else { 0 };
        let dense_layers = self.n_layers - moe_layers;
        let per_layer = d.checked_mul(2)?.checked_add(attention)?;
        let mut total = product(&[self.n_layers, per_layer])?.checked_add(product(&[moe_layers, moe_layer])?)?.checked_add(product(&[dense_layers, dense_layer])?)?;
        let idle = self.n_layers as f64 * att_idle + moe_layers as f64 * (m.n_experts as f64 - mlp_used) * mlp_expert as f64;
        let expert_total = product(&[moe_layers, m.n_experts, mlp_expert])?;
        let expert_used = moe_layers as f64 * mlp_used * mlp_expert as f64;
        total = total.checked_add(d)?;
        let embedding = product(&[self.vocab_size, d, if self.tie_embeddings { 1 } else { 2 }])?;
        total.checked_add(embedding)?;
        Some(ConfigCounts {
            total,
            embedding,
            active: total as f64 - idle,
            mlp_expert_fraction: if expert_total == 0 { 1.0 } else { expert_used / expert_total as f64 },
            moe_layers,
            mlp_expert_total: expert_total,
        })
    }
}
