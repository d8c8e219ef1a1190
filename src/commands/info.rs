//! `dsmoe info`: parameter counts of a config, total and active per inference mode.

use anyhow::Result;
use model::config::presets;
use model::{Config, Family};

use crate::cli::InfoArgs;

pub fn run(args: InfoArgs) -> Result<()> {
    if args.comm {
        return comm(args.config.as_deref().unwrap_or("ds-moe-6b"), &args.gpus, args.tflops);
    }
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

/// Link speeds per GPU of the communication model: NVLink (H100/H200 SXM) and InfiniBand (400 Gb/s).
const NVLINK_GBS: f64 = 900.0;
const IB_GBS: f64 = 50.0;
/// GPUs per node, so expert-parallel groups of this size stay on NVLink.
const NODE_GPUS: usize = 8;

/// `dsmoe info --comm`: the communication model's table (model/src/comm_model.rs).
fn comm(name: &str, gpus: &[usize], tflops: f64) -> Result<()> {
    let c = presets::load(name)?;
    let counts = c.model.counts(None, None)?;
    let tokens = c.train.batch_size * c.train.seq_len * c.train.grad_accum;
    println!(
        "{}: {} trained parameters ({} embedding), {} tokens per step; compute at {tflops} TFLOP/s per GPU; links: NVLink {NVLINK_GBS} GB/s, InfiniBand {IB_GBS} GB/s per GPU",
        c.model.name,
        millions((counts.total + counts.embedding) as f64),
        millions(counts.embedding as f64),
        millions(tokens as f64)
    );
    println!(
        "{:>5} {:<13} {:>10} {:>9} {:>9} {:>10} {:>9} {:>10}  {}",
        "GPUs", "layout", "grad GB", "NVLink s", "IB s", "MoE GB", "NVLink s", "compute s", "gradient all-reduce vs backward (2/3 of compute)"
    );
    for &g in gpus {
        for ep in [1, NODE_GPUS] {
            if g % ep != 0 || c.model.mlp.n_experts % ep != 0 || (ep > 1 && c.model.mlp.n_experts <= 1) {
                continue;
            }
            let e = model::comm_model::estimate(&c, g, ep, tflops)?;
            let layout = if ep == 1 { format!("DP {}", e.data_parallel) } else { format!("EP {ep} x DP {}", e.data_parallel) };
            // The data-parallel ring stays inside a node only when the whole job is one node with no
            // expert parallelism; otherwise it crosses InfiniBand.
            let grad_link = if g <= NODE_GPUS && ep == 1 { NVLINK_GBS } else { IB_GBS };
            let grad_s = e.grad_bytes / (grad_link * 1e9);
            let backward = 2.0 / 3.0 * e.compute_s;
            let verdict = if e.data_parallel == 1 {
                "none (one data-parallel rank)".to_string()
            } else if grad_s <= backward { format!("hidden ({:.0}% of it)", 100.0 * grad_s / backward) } else { format!("exposed: {:.2} s over", grad_s - backward) };
            println!(
                "{:>5} {:<13} {:>10.2} {:>9.3} {:>9.3} {:>10.2} {:>9.3} {:>10.3}  {verdict} {}",
                g,
                layout,
                e.grad_bytes / 1e9,
                e.grad_bytes / (NVLINK_GBS * 1e9),
                e.grad_bytes / (IB_GBS * 1e9),
                e.moe_bytes / 1e9,
                e.moe_bytes / (NVLINK_GBS * 1e9),
                e.compute_s,
                if e.data_parallel == 1 { "" } else if grad_link == NVLINK_GBS { "on NVLink" } else { "on IB" }
            );
        }
    }
    Ok(())
}
