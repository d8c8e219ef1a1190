//! Artetxe et al. (2021): compute efficiency of a fairseq-style top-2 MoE LM (MoE every other
//! layer, experts as wide as the dense FFN, gating as fairseq's Top2Gate: `model::top2gate`, with
//! 2·ceil(S/E) slots per expert and the gates renormalised after dropping; gate loss 0.01 summed
//! over the MoE layers, as the fairseq MoE LM recipe) against its dense twin. Both train on the same data; the dense twin for twice the steps, so its curve reaches past
//! the MoE's training FLOPs. Validation loss against training FLOPs from each run's metrics log,
//! both curves on one plot, and the FLOP ratio at which the dense model first matches the MoE's
//! final loss (the paper's "speedup factor" c_dense(t) / c_moe(t); about 4x at modest budgets).
//!
//! Training FLOPs per token follow Kaplan et al.: 6 x (the parameters a token's training step
//! multiplies with: every non-embedding parameter of the dense model, the top-2 experts' of the
//! MoE, plus the LM head) + 6 x layers x context x attention width for the attention scores.

use anyhow::Result;
use model::metrics::{read_metrics, series, Chart, Curve, VAL_LOSS};
use model::run::METRICS_FILE;
use model::ModelConfig;
use serde_json::json;

use super::lab::{Lab, RunSpec};
use super::output::{markdown_table, ExperimentDir, COLORS};
use super::preset;
use crate::cli::Scale;

pub fn runs(scale: Scale) -> Result<Vec<RunSpec>> {
    if scale == Scale::Paper {
        anyhow::bail!("artetxe has no paper-scale configs (the fairseq 15B MoE and 125M dense use GPT-2 BPE data); run it at --scale tiny or small");
    }
    let moe = preset("fairseq-moe-tiny", scale)?;
    let mut dense = preset("fairseq-dense-tiny", scale)?;
    dense.train.steps *= 2;
    dense.train.warmup_steps = moe.train.warmup_steps;
    Ok(vec![RunSpec { name: "fairseq-moe".into(), config: moe }, RunSpec { name: "fairseq-dense".into(), config: dense }])
}

/// Training FLOPs per token (see the module comment).
pub fn train_flops_per_token(m: &ModelConfig, seq: usize) -> Result<f64> {
    let active = m.counts(None, None)?.active;
    let head = (m.d_model * m.vocab_size) as f64;
    Ok(6.0 * (active + head) + 6.0 * (m.n_layers * seq * m.q_heads() * m.attention.head_dim) as f64)
}

/// The x at which the piecewise-linear `curve` first falls to `target`, if it does.
pub fn first_reach(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    if curve.first()?.1 <= target {
        return Some(curve[0].0);
    }
    curve.windows(2).find(|w| w[1].1 <= target).map(|w| {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
    })
}

/// The curve's loss at `x`, linearly interpolated (None outside it).
pub fn loss_at(curve: &[(f64, f64)], x: f64) -> Option<f64> {
    curve.windows(2).find(|w| w[0].0 <= x && x <= w[1].0).map(|w| {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x1 == x0 { y1 } else { y0 + (y1 - y0) * (x - x0) / (x1 - x0) }
    })
}

pub fn run(lab: &mut Lab, scale: Scale) -> Result<()> {
    let mut curves = Vec::new();
    let mut training = Vec::new();
    for spec in runs(scale)? {
        let t = lab.trained(&spec)?;
        training.push(t.training_summary()?);
        let tc = &t.config.train;
        let per_step = train_flops_per_token(&t.config.model, tc.seq_len)? * (tc.batch_size * tc.seq_len * tc.grad_accum) as f64;
        let log = read_metrics(&t.dir.join(METRICS_FILE))?;
        let points: Vec<(f64, f64)> = series(&log, VAL_LOSS).into_iter().map(|(step, loss)| (step * per_step, loss)).collect();
        curves.push((spec.name.clone(), t.config.model.name.clone(), per_step, points));
    }
    let (moe, dense) = (&curves[0], &curves[1]);
    let experts = runs(scale)?[0].config.model.mlp.n_experts;
    let (moe_flops, moe_loss) = *moe.3.last().ok_or_else(|| anyhow::anyhow!("{} logged no validation loss", moe.0))?;
    let dense_at_moe_flops = loss_at(&dense.3, moe_flops);
    let dense_reach = first_reach(&dense.3, moe_loss);
    let dense_total = dense.3.last().map_or(0.0, |p| p.0);
    let table = vec![
        vec![moe.1.clone(), format!("{:.3e}", moe.2), format!("{moe_flops:.3e}"), format!("{moe_loss:.4}")],
        vec![dense.1.clone(), format!("{:.3e}", dense.2), format!("{dense_total:.3e}"), format!("{:.4}", dense.3.last().map_or(f64::NAN, |p| p.1))],
    ];
    let ratio = match dense_reach {
        Some(f) => format!("{:.2}x (the dense model reaches the MoE's final loss {moe_loss:.4} at {f:.3e} FLOPs)", f / moe_flops),
        None => format!("more than {:.2}x (the dense model never reaches {moe_loss:.4} within its {dense_total:.3e} FLOPs)", dense_total / moe_flops),
    };
    let md = format!(
        "{}\nDense loss at the MoE's training FLOPs: {}\n\nFLOP ratio at which dense matches the MoE: {ratio}\n",
        markdown_table(&["model", "training FLOPs per step", "training FLOPs", "final val loss"], &table),
        dense_at_moe_flops.map_or("-".into(), |l| format!("{l:.4}"))
    );
    let dir = ExperimentDir::new(&lab.out, "artetxe")?;
    dir.write_table(&md)?;
    let plot: Vec<Curve> = curves.iter().zip(COLORS).map(|(c, color)| Curve { label: c.1.clone(), color, points: c.3.iter().map(|&(f, l)| (f / 1e12, l)).collect() }).collect();
    dir.write_plot("loss-vs-flops.svg", &Chart { title: "Validation loss against training compute", x_label: "training FLOPs (10^12)", y_label: "validation loss (nats/token)", markers: true }, &plot)?;
    dir.write_results(&json!({
        "experiment": "artetxe",
        "scale": scale.name(),
        "moe": { "model": moe.1, "experts": experts, "flops_per_step": moe.2, "curve": moe.3, "final_flops": moe_flops, "final_loss": moe_loss },
        "dense": { "model": dense.1, "flops_per_step": dense.2, "curve": dense.3, "final_flops": dense_total },
        "dense_loss_at_moe_flops": dense_at_moe_flops,
        "dense_flops_to_match_moe": dense_reach,
        "flop_ratio": dense_reach.map(|f| f / moe_flops),
        "flop_ratio_lower_bound": dense_total / moe_flops,
        "training": training,
    }))?;
    Ok(())
}
