//! How evaluation results are shown: one table row (or JSON object) per inference mode, with the
//! active parameters counted from the routing that actually happened.

use model::eval::EvalReport;
use serde_json::{json, Value};

use super::info::millions;

/// Mean over layers of the MLP experts each token used.
fn mlp_experts_per_token(r: &EvalReport) -> f64 {
    let moe: Vec<f64> = r.layers.iter().map(|l| l.mlp_experts_per_token).filter(|&k| k > 0.0).collect();
    if moe.is_empty() {
        0.0
    } else {
        moe.iter().sum::<f64>() / moe.len() as f64
    }
}

fn describe_mode(r: &EvalReport) -> String {
    let (mlp, att) = (r.mode.mlp.describe(), r.mode.attention.describe());
    if att == "dense" {
        mlp
    } else {
        format!("{mlp}, attention {att}")
    }
}

pub fn header() -> String {
    format!(
        "{:<34} {:>10} {:>10} {:>9} {:>13} {:>13} {:>15}",
        "mode", "val loss", "bits/byte", "vs dense", "MLP experts", "MLP expert", "active params"
    ) + &format!("\n{:<34} {:>10} {:>10} {:>9} {:>13} {:>13} {:>15}", "", "(nats/tok)", "", "", "per token", "params used", "(non-embedding)")
}

/// One row; `dense_loss` is the dense mode's loss on the same windows, for the relative change.
pub fn row(r: &EvalReport, dense_loss: Option<f64>) -> String {
    let vs = dense_loss.map_or("".into(), |d| format!("{:+.2}%", 100.0 * (r.loss / d - 1.0)));
    let bpb = r.bits_per_byte.map_or("-".into(), |b| format!("{b:.4}"));
    format!(
        "{:<34} {:>10.4} {:>10} {:>9} {:>13.2} {:>12.1}% {:>8} ({:.0}%)",
        describe_mode(r),
        r.loss,
        bpb,
        vs,
        mlp_experts_per_token(r),
        100.0 * r.counts.mlp_expert_fraction(),
        millions(r.counts.active),
        100.0 * r.counts.active_fraction()
    )
}

pub fn json(r: &EvalReport) -> Value {
    json!({
        "mode": r.mode.mlp.describe(),
        "att_mode": r.mode.attention.describe(),
        "loss_nats_per_token": r.loss,
        "bits_per_byte": r.bits_per_byte,
        "tokens": r.tokens,
        "mlp_experts_per_token": mlp_experts_per_token(r),
        "att_experts_per_token": r.layers.iter().map(|l| l.att_experts_per_token).collect::<Vec<_>>(),
        "mlp_expert_fraction": r.counts.mlp_expert_fraction(),
        "active_params": r.counts.active,
        "total_params": r.counts.total,
        "active_fraction": r.counts.active_fraction(),
        "embedding_params": r.counts.embedding,
    })
}
