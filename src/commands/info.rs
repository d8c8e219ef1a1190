//! `dsmoe info`: parameter counts of a config, total and active per inference mode.

use anyhow::Result;
use model::config::presets;
use model::{Config, Family};

use crate::cli::InfoArgs;

pub fn run(args: InfoArgs) -> Result<()> {
    match args.config {
        None => {
            println!("{:<20} {:<7} {:>10} {:>10} {:>12}  active per token (non-embedding)", "config", "family", "total", "embedding", "layers x d");
            for name in presets::NAMES {
                let c = presets::load(name)?;
                let m = &c.model;
                let counts = m.counts(None, None)?;
                println!("{:<20} {:<7} {:>10} {:>10} {:>12}  {}", name, family(m.family), millions(counts.total as f64), millions(counts.embedding as f64), format!("{} x {}", m.n_layers, m.d_model), summary(&c)?);
            }
            Ok(())
        }
        Some(name) => {
            let c = presets::load(&name)?;
            let m = &c.model;
            let counts = m.counts(None, None)?;
            println!("{} ({}): {}", m.name, family(m.family), m.description);
            println!("  total {} non-embedding parameters, embedding {} ({} with the embedding)", millions(counts.total as f64), millions(counts.embedding as f64), millions((counts.total + counts.embedding) as f64));
            println!("  {} layers, d_model {}, {} query heads of {} ({} attention experts x {}), {} kv heads", m.n_layers, m.d_model, m.q_heads(), m.attention.head_dim, m.attention.n_experts, m.attention.heads_per_expert, m.attention.kv_heads);
            let shared = if m.mlp.shared_experts > 0 { format!(" and {} shared", m.mlp.shared_experts) } else { String::new() };
            let first_dense = if m.mlp.first_dense_layers > 0 { format!(", the first {} layers dense of width {}", m.mlp.first_dense_layers, m.dense_width()) } else { String::new() };
            println!("  MLP ({}): {} experts{shared} of width {}{first_dense}", format!("{:?}", m.mlp.activation).to_lowercase(), m.mlp.n_experts, m.mlp.expert_width);
            println!("  {:<24} {:>12} {:>10} {:>14}", "mode", "active", "fraction", "MLP experts");
            for (mode, att, mlp) in modes(&c) {
                let k = m.counts(att, mlp)?;
                println!("  {:<24} {:>12} {:>9.1}% {:>13.1}%", mode, millions(k.active), 100.0 * k.active / k.total as f64, 100.0 * k.mlp_expert_fraction);
            }
            if m.family == Family::DsMoe {
                println!("  threshold modes activate a data-dependent number of experts: `dsmoe eval --mode threshold:EPS` measures it");
            }
            Ok(())
        }
    }
}

/// The inference modes worth listing for a config: (label, attention experts, MLP experts).
fn modes(c: &Config) -> Vec<(String, Option<f64>, Option<f64>)> {
    let n = c.model.mlp.n_experts;
    match c.model.family {
        Family::Dense => vec![("dense".into(), None, None)],
        Family::Smoe => vec![(format!("top-k:{} (trained)", c.model.mlp.top_k.unwrap_or(1)), None, None)],
        Family::DsMoe => {
            let mut v = vec![("dense (training)".to_string(), None, None)];
            for k in [n / 2, n / 4, n / 8].into_iter().filter(|&k| k >= 1) {
                v.push((format!("top-k:{k}"), None, Some(k as f64)));
            }
            v
        }
    }
}

fn summary(c: &Config) -> Result<String> {
    let parts = modes(c)
        .into_iter()
        .map(|(label, a, m)| {
            let k = c.model.counts(a, m)?;
            Ok(format!("{}: {}", label.split(' ').next().unwrap_or(""), millions(k.active)))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(parts.join(", "))
}

fn family(f: Family) -> &'static str {
    match f {
        Family::Dense => "dense",
        Family::DsMoe => "ds-moe",
        Family::Smoe => "smoe",
    }
}

pub fn millions(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else {
        format!("{:.1}K", n / 1e3)
    }
}
