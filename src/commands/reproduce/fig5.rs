//! Fig. 5: the share of experts each layer uses under the threshold rule at ε = 0.48 in both
//! routers, attention and MLP, on the shared DS-MoE. The paper (3B): MLP layers much sparser than
//! attention, attention above 60 % in every layer.

use anyhow::Result;
use model::metrics::{Chart, Curve};
use model::{InferenceMode, Selection};
use serde_json::json;

use super::lab::Lab;
use super::output::{markdown_table, pct, ExperimentDir, COLORS};
use super::ds_moe;
use crate::cli::Scale;

pub const EPSILON: f64 = 0.48;

pub fn run(lab: &mut Lab, scale: Scale) -> Result<()> {
    let t = lab.trained(&ds_moe(scale)?)?;
    let m = &t.config.model;
    let r = lab.eval(&t, InferenceMode::both(Selection::Threshold(EPSILON)))?;
    let att: Vec<f64> = r.att_per_layer.iter().map(|k| k / m.attention.n_experts as f64).collect();
    let mlp: Vec<f64> = r.mlp_per_layer.iter().map(|k| k / m.mlp.n_experts as f64).collect();
    let table: Vec<Vec<String>> = (0..att.len()).map(|i| vec![i.to_string(), pct(att[i]), pct(mlp[i])]).collect();
    let dir = ExperimentDir::new(&lab.out, "fig5")?;
    dir.write_table(&format!("{} at threshold ε = {EPSILON} (both routers), loss {:.4}\n\n{}", m.name, r.loss, markdown_table(&["layer", "attention experts used", "MLP experts used"], &table)))?;
    let curve = |label: &str, color, shares: &[f64]| Curve { label: label.into(), color, points: shares.iter().enumerate().map(|(i, s)| (i as f64, 100.0 * s)).collect() };
    let curves = [curve("attention", COLORS[0], &att), curve("MLP", COLORS[1], &mlp)];
    let title = format!("{}: experts used per layer, threshold ε = {EPSILON}", m.name);
    dir.write_plot("utilisation.svg", &Chart { title: &title, x_label: "layer", y_label: "experts used (%)", markers: true }, &curves)?;
    dir.write_results(&json!({
        "experiment": "fig5",
        "scale": scale.name(),
        "epsilon": EPSILON,
        "eval": r,
        "attention_share": att,
        "mlp_share": mlp,
        "mi_alpha_att": m.mi_alpha_att,
        "mi_alpha_mlp": m.mi_alpha_mlp,
        "attention_experts": m.attention.n_experts,
        "training": [t.training_summary()?],
    }))?;
    Ok(())
}
