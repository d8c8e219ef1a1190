//! Fig. 4: loss against active parameters for the three inference strategies on one DS-MoE: top-K
//! for every K, the threshold rule over a sweep of ε, and threshold-K (the threshold rule's mean
//! expert count per layer, over the whole evaluated set, as a fixed K) with K rounded up and to
//! nearest, which shows what the rounding choice costs. All three select MLP experts with every
//! attention expert active, as the paper's TopK strategy does, so the curves compare like with like.

use anyhow::Result;
use model::eval::KRounding;
use model::metrics::{Chart, Curve};
use model::{InferenceMode, Selection};
use serde_json::json;

use super::lab::{EvalRow, Lab};
use super::output::{markdown_table, params, pct, ExperimentDir, COLORS};
use super::ds_moe;
use crate::cli::Scale;

/// The ε swept by the threshold rule (normalised probability N·p; 1 is the uniform share).
pub const EPSILONS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0];
/// The ε of the threshold-K points.
pub const THRESHOLD_K_EPSILONS: [f64; 3] = [0.5, 1.0, 2.0];

fn mlp_only(s: Selection) -> InferenceMode {
    InferenceMode { mlp: s, attention: Selection::Dense }
}

pub fn run(lab: &mut Lab, scale: Scale) -> Result<()> {
    let t = lab.trained(&ds_moe(scale)?)?;
    let n = t.config.model.mlp.n_experts;
    let dense = lab.eval(&t, InferenceMode::DENSE)?;
    let mut series: Vec<(&str, Vec<EvalRow>)> = Vec::new();
    let top_k = (1..=n).map(|k| lab.eval(&t, mlp_only(Selection::TopK(k)))).collect::<Result<Vec<_>>>()?;
    series.push(("top-K", top_k));
    let threshold = EPSILONS.iter().map(|&e| lab.eval(&t, mlp_only(Selection::Threshold(e)))).collect::<Result<Vec<_>>>()?;
    series.push(("threshold", threshold));
    for (label, rounding) in [("threshold-K (K rounded up)", KRounding::Up), ("threshold-K (K rounded to nearest)", KRounding::Nearest)] {
        let rows = THRESHOLD_K_EPSILONS.iter().map(|&e| lab.eval_rounded(&t, mlp_only(Selection::ThresholdK(e)), rounding)).collect::<Result<Vec<_>>>()?;
        series.push((label, rows));
    }
    let dir = ExperimentDir::new(&lab.out, "fig4")?;
    let mut table = Vec::new();
    for (strategy, rows) in &series {
        for r in rows {
            table.push(vec![strategy.to_string(), r.mode.clone(), format!("{:.4}", r.loss), format!("{:+.2}%", 100.0 * (r.loss / dense.loss - 1.0)), params(r.active_params), pct(r.active_fraction), pct(r.mlp_expert_fraction)]);
        }
    }
    let md = format!(
        "{} dense: loss {:.4} at {} active parameters\n\n{}",
        t.config.model.name,
        dense.loss,
        params(dense.active_params),
        markdown_table(&["strategy", "mode", "val loss", "vs dense", "active params", "active", "MLP experts active"], &table)
    );
    dir.write_table(&md)?;
    let curves: Vec<Curve> = series
        .iter()
        .zip(COLORS)
        .map(|((label, rows), color)| {
            let mut points: Vec<(f64, f64)> = rows.iter().map(|r| (r.active_params / 1e3, r.loss)).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Curve { label: label.to_string(), color, points }
        })
        .collect();
    let title = format!("{}: inference strategies (MLP experts; attention dense)", t.config.model.name);
    dir.write_plot("strategies.svg", &Chart { title: &title, x_label: "active non-embedding parameters per token (thousands)", y_label: "validation loss (nats/token)", markers: true }, &curves)?;
    dir.write_results(&json!({
        "experiment": "fig4",
        "scale": scale.name(),
        "dense": dense,
        "series": series.iter().map(|(s, rows)| json!({"strategy": s, "rows": rows})).collect::<Vec<_>>(),
    }))?;
    Ok(())
}
