//! Table 7: serving throughput against other models. The paper serves each model with vLLM
//! (1,000 input + 1,000 output tokens per request, 90 % of the GPU's memory) and reports
//! requests and tokens per second; DS-MoE-6B runs top-K in the MLP. Here the same protocol is
//! `dsmoe bench inference --protocols serving` (the inference engine's continuous batching under
//! a KV-cache memory budget), with every model in one bench so their runs alternate:
//! - at paper scale, random weights of the paper's lineup (Dense-6B, Mistral-7B, DeepSeekMoE-16B,
//!   Qwen1.5-MoE-A2.7B, DS-MoE-6B at K = 4 of 32), 1,000 + 1,000 tokens per request;
//! - at the small scales, random weights of Table 3's three models (the dense model, the SMoE of
//!   equal total size, and DS-MoE at top-K of a quarter of its experts), with requests of equal
//!   input and output lengths filling the tiny context.
//!
//! The work per token does not depend on what the weights learned for the dense model, the SMoE
//! at its top-2, and DS-MoE at a fixed K, so random weights measure what trained ones would, up
//! to how evenly the routers spread tokens over the experts.
//! Requests per second are tokens per second over the tokens of one request (every request
//! generates its full output: no stop tokens).

use anyhow::{anyhow, Result};
use model::checkpoint::write_atomic;
use serde_json::{json, Value};

use super::lab::Lab;
use super::output::{markdown_table, params, ExperimentDir};
use super::speed::bench;
use super::table3;
use crate::cli::Scale;

/// The paper's Table 7 (A100, vLLM): model, requests/s, tokens/s.
pub const PAPER: [(&str, f64, f64); 5] = [("Dense-6B", 1.04, 2079.8), ("Mistral-7B", 1.07, 2140.8), ("DeepSeekMoE-16B", 1.17, 2330.1), ("Qwen1.5-MoE-A2.7B", 1.33, 2665.7), ("DS-MoE-6B", 2.00, 3992.8)];

/// The serving shape at `scale`: requests, input and output tokens each, KV budget (MiB), most
/// sequences decoded together.
fn shape(scale: Scale) -> (usize, usize, usize, usize, usize) {
    match scale {
        Scale::Toy => (4, 4, 4, 16, 4),
        Scale::Tiny | Scale::Small => (64, 48, 48, 64, 32),
        // vLLM's default of 256 sequences; 40 GiB is what 90 % of an A100-80GB leaves after the
        // largest lineup model's weights (DeepSeekMoE-16B, 30.5 GiB), the same budget for all.
        Scale::Paper => (256, 1000, 1000, 40 << 10, 256),
    }
}

pub fn run(lab: &mut Lab, scale: Scale) -> Result<()> {
    let dir = ExperimentDir::new(&lab.out, "table7")?;
    // (bench subject, what the report calls it); the dense model first: speedups are over it.
    let (subjects, k): (Vec<(String, String)>, usize) = if scale == Scale::Paper {
        let lineup = [("dense-6b", "Dense-6B"), ("mistral-7b", "Mistral-7B"), ("deepseekmoe-16b", "DeepSeekMoE-16B"), ("qwen1.5-moe-a2.7b", "Qwen1.5-MoE-A2.7B"), ("ds-moe-6b", "DS-MoE-6B")];
        (lineup.iter().map(|(p, n)| (p.to_string(), n.to_string())).collect(), 4)
    } else {
        // Table 3's models (not its control run), as config files named after their runs (the
        // bench names rows by them).
        let configs = dir.dir.join("configs");
        std::fs::create_dir_all(&configs)?;
        let mut specs = table3::runs(scale)?;
        specs.retain(|s| s.name != table3::SMOE_EVERY_EXPERT);
        specs.sort_by_key(|s| ["dense", "smoe", "ds-moe"].iter().position(|n| *n == s.name));
        let k = specs.iter().find(|s| s.name == "ds-moe").map_or(1, |s| (s.config.model.mlp.n_experts / 4).max(1));
        for s in &specs {
            write_atomic(&configs.join(&s.name), serde_json::to_string_pretty(&s.config)?.as_bytes())?;
        }
        (specs.iter().map(|s| (s.name.clone(), s.config.model.name.clone())).collect(), k)
    };
    let (requests, input, output, budget, max_batch) = shape(scale);
    let mut args: Vec<String> = ["bench", "inference", "--protocols", "serving", "--random-weights"].map(String::from).to_vec();
    args.push(subjects.iter().map(|s| s.0.as_str()).collect::<Vec<_>>().join(","));
    for (flag, value) in [("--modes", format!("top-k:{k}")), ("--serving-requests", requests.to_string()), ("--serving-input", input.to_string()), ("--serving-output", output.to_string()), ("--kv-budget-mib", budget.to_string()), ("--max-batch", max_batch.to_string()), ("--repeats", "3".into())] {
        args.extend([flag.to_string(), value]);
    }
    lab.say("table7: serving throughput (`dsmoe bench inference --protocols serving`)");
    let cwd = (scale != Scale::Paper).then(|| dir.dir.join("configs"));
    let (printed, records) = bench(&dir, &args, cwd.as_deref())?;
    let mut rows = Vec::new();
    for (subject, name) in &subjects {
        let config = if scale == Scale::Paper { model::config::presets::load(subject)? } else { model::config::presets::load(&dir.dir.join("configs").join(subject).display().to_string())? };
        let counts = config.model.counts(None, None)?;
        let ds_moe = config.model.family == model::Family::DsMoe;
        for mode in if ds_moe { vec!["dense".to_string(), format!("top-k:{k}")] } else { vec!["dense".to_string()] } {
            let prefix = format!("{subject} {mode} serving ");
            let rec = records.iter().find(|r| r["case"].as_str().is_some_and(|c| c.starts_with(&prefix))).ok_or_else(|| anyhow!("the bench recorded no serving row for {subject} {mode}"))?;
            let tokens_per_s = rec["ours"].as_f64().unwrap_or(f64::NAN);
            rows.push(json!({
                "model": name, "subject": subject, "family": config.model.family, "mode": mode,
                "total_params": counts.total, "embedding_params": counts.embedding,
                "active_params": rec["active_params"], "requests_per_s": tokens_per_s / (input + output) as f64,
                "tokens_per_s": tokens_per_s, "speedup_over_dense": tokens_per_s / rec["baseline"].as_f64().unwrap_or(f64::NAN),
            }));
        }
    }
    let table: Vec<Vec<String>> = rows.iter().map(row_cells).collect();
    let headers = ["model", "routing", "total params", "active params", "req/s", "tokens/s", "speedup over dense"];
    let paper: Vec<Vec<String>> = PAPER.iter().map(|(m, r, t)| vec![m.to_string(), format!("{r:.2}"), format!("{t:.1}"), format!("{:.2}x", t / PAPER[0].2)]).collect();
    let md = format!(
        "{requests} requests of {input} input + {output} output tokens, KV budget {budget} MiB, at most {max_batch} sequences per step; median of 3 alternating runs.\n\n{}\n{}\n\nThe paper (vLLM, A100-80GB, 1,000 + 1,000 tokens per request):\n\n{}\n`dsmoe {}`\n\n```\n{printed}```\n",
        markdown_table(&headers, &table),
        verdict_sentence(scale, &rows),
        markdown_table(&["model", "req/s", "tokens/s", "speedup over Dense-6B"], &paper),
        args.join(" "),
    );
    dir.write_table(&md)?;
    dir.write_results(&json!({ "experiment": "table7", "scale": scale.name(), "requests": requests, "input_tokens": input, "output_tokens": output, "kv_budget_mib": budget, "rows": rows, "records": records }))?;
    Ok(())
}

fn row_cells(r: &Value) -> Vec<String> {
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let routing = match (r["family"].as_str(), r["mode"].as_str()) {
        (Some("smoe"), _) => "top-2 (as trained)".to_string(),
        (Some("ds-moe"), Some("dense")) => "every expert".to_string(),
        (_, Some(m)) => m.to_string(),
        _ => "-".into(),
    };
    vec![r["model"].as_str().unwrap_or("-").to_string(), routing, params(f("total_params")), params(f("active_params")), format!("{:.2}", f("requests_per_s")), format!("{:.1}", f("tokens_per_s")), format!("{:.2}x", f("speedup_over_dense"))]
}

/// Whether this table can be set beside the paper's, and why.
fn verdict_sentence(scale: Scale, rows: &[Value]) -> String {
    let sparse = rows.iter().find(|r| r["family"] == "ds-moe" && r["mode"] != "dense");
    let fastest_other = rows.iter().filter(|r| r["family"] != "ds-moe").max_by(|a, b| a["tokens_per_s"].as_f64().unwrap_or(0.0).total_cmp(&b["tokens_per_s"].as_f64().unwrap_or(0.0)));
    let ratio = match (sparse, fastest_other) {
        (Some(s), Some(o)) => format!(" DS-MoE at {} serves {:.2}x the tokens/s of the fastest other model ({}).", s["mode"].as_str().unwrap_or("-"), s["tokens_per_s"].as_f64().unwrap_or(f64::NAN) / o["tokens_per_s"].as_f64().unwrap_or(f64::NAN), o["model"].as_str().unwrap_or("-")),
        _ => String::new(),
    };
    let why = if scale == Scale::Paper {
        "Comparable in protocol (the paper's lineup, request shape and memory share), not in engine: the paper serves with vLLM (paged attention, CUDA graphs), this is dsmoe's engine, so compare the ratios, not the absolute rates."
    } else {
        "Not comparable in absolute terms: these are models of under a million parameters on a CPU, where a step's cost is dominated by per-token overheads (embedding, LM head, attention over the cache, routing) that the paper's 6B models amortise, and the MoE models of the paper's lineup (DeepSeekMoE, Qwen1.5-MoE) have no tiny counterparts besides the SMoE of equal total size. Only the direction of the ratios is comparable."
    };
    format!("{why}{ratio}")
}
