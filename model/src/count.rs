//! Parameter counts from a config alone (no weights allocated, so the 6B configs count instantly).
//! Like the paper's Table 1, totals exclude the embedding and LM head, which are reported apart.

use crate::config::{ModelConfig, RouterKind};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfigCounts {
    pub total: usize,
    pub embedding: usize,
    /// Per token, with `att_experts` attention and `mlp_experts` MLP experts in use.
    pub active: f64,
    pub mlp_expert_fraction: f64,
}

impl ModelConfig {
    fn router_params(&self, n: usize) -> usize {
        match self.router {
            RouterKind::Linear => self.d_model * n,
            RouterKind::Mlp { hidden } => self.d_model * hidden + hidden * n,
        }
    }

    /// Counts with `att_experts` / `mlp_experts` experts active per token (None = all; the SMoE
    /// family always uses its top_k in the MLP).
    pub fn counts(&self, att_experts: Option<f64>, mlp_experts: Option<f64>) -> ConfigCounts {
        let (d, a, m) = (self.d_model, &self.attention, &self.mlp);
        let hq = self.q_heads();
        let att_expert = 2 * a.heads_per_expert * a.head_dim * d;
        let att_router = if a.n_experts > 1 { self.router_params(a.n_experts) } else { 0 };
        let attention = a.n_experts * att_expert + 2 * a.kv_heads * a.head_dim * d + att_router;
        debug_assert_eq!(a.n_experts * att_expert, 2 * hq * a.head_dim * d);
        let att_used = att_experts.unwrap_or(a.n_experts as f64).min(a.n_experts as f64);
        let att_idle = if a.n_experts > 1 { (a.n_experts as f64 - att_used) * att_expert as f64 } else { 0.0 };

        let mlp_expert = 2 * m.expert_width * d;
        let mlp_used = match (self.mlp.top_k, mlp_experts) {
            (Some(k), _) => k as f64,
            (None, Some(k)) => k.min(m.n_experts as f64),
            (None, None) => m.n_experts as f64,
        };
        let (mut total, mut idle, mut expert_total, mut expert_used) = (0usize, 0.0, 0usize, 0.0);
        for i in 0..self.n_layers {
            total += 2 * d + attention;
            idle += att_idle;
            if self.is_moe_layer(i) {
                total += m.n_experts * mlp_expert + self.router_params(m.n_experts);
                idle += (m.n_experts as f64 - mlp_used) * mlp_expert as f64;
                expert_total += m.n_experts * mlp_expert;
                expert_used += mlp_used * mlp_expert as f64;
            } else {
                let width = if m.n_experts > 1 { m.dense_width.unwrap_or(m.expert_width) } else { m.expert_width };
                total += 2 * width * d;
            }
        }
        total += d;
        let embedding = self.vocab_size * d * if self.tie_embeddings { 1 } else { 2 };
        ConfigCounts {
            total,
            embedding,
            active: total as f64 - idle,
            mlp_expert_fraction: if expert_total == 0 { 1.0 } else { expert_used / expert_total as f64 },
        }
    }
}
