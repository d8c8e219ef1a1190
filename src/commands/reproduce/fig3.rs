//! Fig. 3: sparsity grows with model size. Three DS-MoE sizes (at tiny and small scale: the shared
//! DS-MoE and versions of it at half and 1.5x its width, experts and heads keeping their counts;
//! at paper scale the 1B, 3B and 6B presets), trained alike, and the share of parameters the
//! threshold rule activates at the same ε in both routers. The paper: 41 %, 34 % and 29 % active
//! for 1B, 3B and 6B.

use anyhow::Result;
use model::metrics::{Chart, Curve};
use model::{Config, InferenceMode, Selection};
use serde_json::json;

use super::lab::{Lab, RunSpec};
use super::output::{markdown_table, params, pct, ExperimentDir, COLORS};
use super::{ds_moe, preset};
use crate::cli::Scale;

pub const EPSILONS: [f64; 2] = [0.48, 1.0];

/// `c` at width `d`: head size, expert widths and names scaled with it, counts unchanged.
fn resized(c: &Config, d: usize) -> Config {
    let mut c = c.clone();
    let m = &mut c.model;
    let old = m.d_model;
    m.mlp.expert_width = (m.mlp.expert_width * d / old).max(1);
    // Rotary embeddings need an even head size.
    m.attention.head_dim = (d / m.q_heads()).max(2) & !1;
    m.d_model = d;
    m.name = format!("{}-d{d}", m.name);
    c
}

pub fn runs(scale: Scale) -> Result<Vec<RunSpec>> {
    if scale == Scale::Paper {
        return ["ds-moe-1b", "ds-moe-3b", "ds-moe-6b"].iter().map(|n| Ok(RunSpec { name: n.to_string(), config: preset(n, scale)? })).collect();
    }
    let mid = ds_moe(scale)?;
    let d = mid.config.model.d_model;
    let side = |d: usize| RunSpec { name: format!("ds-moe-d{d}"), config: resized(&mid.config, d) };
    let (small, large) = (side(d / 2), side(d * 3 / 2));
    Ok(vec![small, mid, large])
}

pub fn run(lab: &mut Lab, scale: Scale) -> Result<()> {
    let mut rows = Vec::new();
    for spec in runs(scale)? {
        let t = lab.trained(&spec)?;
        for eps in EPSILONS {
            rows.push(lab.eval(&t, InferenceMode::both(Selection::Threshold(eps)))?);
        }
    }
    let table: Vec<Vec<String>> = rows.iter().map(|r| vec![r.run.clone(), params(r.total_params as f64), r.mode.clone(), format!("{:.4}", r.loss), params(r.active_params), pct(r.active_fraction), pct(r.mlp_expert_fraction)]).collect();
    let dir = ExperimentDir::new(&lab.out, "fig3")?;
    dir.write_table(&markdown_table(&["run", "total params", "mode", "val loss", "active params", "active", "MLP experts active"], &table))?;
    let curves: Vec<Curve> = EPSILONS
        .iter()
        .zip(COLORS)
        .map(|(&eps, color)| {
            let label = format!("threshold ε = {eps}, both routers");
            let rows = rows.iter().filter(|r| r.mode.starts_with(&format!("threshold:{eps} ")));
            Curve { label, color, points: rows.map(|r| (r.total_params as f64 / 1e3, 100.0 * r.active_fraction)).collect() }
        })
        .collect();
    dir.write_plot("sparsity-vs-size.svg", &Chart { title: "Active share of parameters against model size", x_label: "total non-embedding parameters (thousands)", y_label: "active parameters (%)", markers: true }, &curves)?;
    dir.write_results(&json!({ "experiment": "fig3", "scale": scale.name(), "epsilons": EPSILONS, "rows": rows }))?;
    Ok(())
}
