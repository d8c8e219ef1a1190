//! Table 5 and Fig. 6: inference speed of DS-MoE, dense against sparse (Table 7's lineup of
//! models is `table7`). The shared DS-MoE checkpoint through `dsmoe bench inference`
//! (the same binary, as a child process, so the protocols are exactly the bench's): latency, input
//! throughput, output throughput and serving, dense and at top-K of a quarter of the MLP experts
//! and the threshold rule, at shapes fitting the scale's context (the paper's Table 5 / 7 shapes
//! at paper scale). The bench's table is kept as it printed it, and its records (one JSON line per
//! row and protocol, with the speedup's baseline, the DS-MoE's own dense evaluation) are the
//! results. Timings on a shared CPU are noisy; the bench measures rows in alternation so load
//! slows all alike.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::ds_moe;
use super::lab::Lab;
use super::output::ExperimentDir;
use crate::cli::Scale;

/// The bench's size flags at `scale`.
fn shapes(scale: Scale) -> &'static [&'static str] {
    match scale {
        Scale::Toy => &["--latency-batch", "2", "--latency-prompt", "8", "--latency-tokens", "2", "--input-batch", "2", "--input-prompt", "8", "--output-tokens", "8", "--serving-requests", "4", "--serving-input", "4", "--serving-output", "4", "--repeats", "1"],
        Scale::Tiny | Scale::Small => &["--repeats", "3"],
        Scale::Paper => &["--latency-batch", "64", "--latency-prompt", "2000", "--latency-tokens", "20", "--input-batch", "64", "--input-prompt", "256", "--output-tokens", "512", "--serving-requests", "64", "--serving-input", "1000", "--serving-output", "1000", "--repeats", "3"],
    }
}

pub fn run(lab: &mut Lab, scale: Scale) -> Result<()> {
    let t = lab.trained(&ds_moe(scale)?)?;
    let n = t.config.model.mlp.n_experts;
    let dir = ExperimentDir::new(&lab.out, "speed")?;
    lab.say("speed: running `dsmoe bench inference` on the DS-MoE checkpoint");
    let modes = format!("top-k:{},threshold:1", (n / 4).max(1));
    let mut args: Vec<String> = ["bench", "inference", "--checkpoint"].map(String::from).to_vec();
    args.push(t.dir.display().to_string());
    args.extend(["--modes".to_string(), modes.clone()]);
    args.extend(shapes(scale).iter().map(|s| s.to_string()));
    let (table, lines) = bench(&dir, &args, None)?;
    dir.write_table(&format!("`dsmoe {}`\n\n```\n{table}```\n", args.join(" ")))?;
    dir.write_results(&json!({ "experiment": "speed", "scale": scale.name(), "modes": modes, "records": lines }))?;
    Ok(())
}

/// Runs `dsmoe ARGS` (a `bench inference` command) in `cwd` (default: this process's), with its
/// records going to `DIR/records.jsonl` (an earlier measurement's are replaced, not mixed in);
/// returns the table it printed and its records.
pub fn bench(dir: &ExperimentDir, args: &[String], cwd: Option<&Path>) -> Result<(String, Vec<Value>)> {
    // Absolute: the bench may run in another directory.
    let records = std::path::absolute(dir.dir.join("records.jsonl")).context("locating the records file")?;
    let _ = std::fs::remove_file(&records);
    let exe = std::env::current_exe().context("locating the dsmoe binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(args).env("DSMOE_RESULTS", &records);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let out = cmd.output().context("running dsmoe bench inference")?;
    if !out.status.success() {
        bail!("dsmoe bench inference failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let lines = std::fs::read_to_string(&records).with_context(|| format!("reading {}", records.display()))?.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), lines))
}
