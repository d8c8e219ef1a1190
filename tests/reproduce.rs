//! `dsmoe reproduce` at toy scale (seconds): what an experiment writes, a report computed from it,
//! and an interrupted reproduction resumed: finished runs reused as they are, a run stopped
//! mid-way continued from its checkpoint, a run that never checkpointed trained anew.

mod common;

use std::path::Path;

use common::{dsmoe, fails_with, scratch, text};
use serde_json::Value;

fn reproduce(out: &Path, experiments: &[&str]) -> (String, String) {
    let mut args = vec!["reproduce"];
    args.extend_from_slice(experiments);
    args.extend_from_slice(&["--scale", "toy", "--device", "cpu", "--out", out.to_str().unwrap()]);
    let o = dsmoe(&args);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn an_experiment_writes_results_table_plots_and_report() {
    let out = scratch("reproduce-bookkeeping");
    reproduce(&out, &["table3", "fig5", "speed", "table7"]);
    let runs: Vec<String> = std::fs::read_dir(out.join("runs")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!({ let mut r = runs.clone(); r.sort(); r }, ["dense", "ds-moe", "smoe", "smoe-every-expert"], "fig5 and speed share table3's DS-MoE run; table7 trains nothing");

    let t3 = json(&out.join("table3/results.json"));
    let rows = t3["rows"].as_array().unwrap();
    // DS-MoE: dense, threshold at two ε in both routers and the MLP alone, top-K at N/2 and N/4;
    // one row each for the dense model, the SMoE and its control with every expert active.
    assert_eq!(rows.len(), 10, "{t3}");
    assert_eq!(rows.iter().filter(|r| r["run"] == "ds-moe").count(), 7);
    for r in rows {
        assert!(r["loss"].as_f64().unwrap().is_finite() && r["active_params"].as_f64().unwrap() > 0.0, "{r}");
    }
    let smoe = rows.iter().find(|r| r["run"] == "smoe").unwrap();
    let ds = rows.iter().find(|r| r["run"] == "ds-moe").unwrap();
    assert!(smoe["active_fraction"].as_f64().unwrap() < 1.0, "the SMoE routes top-2: {smoe}");
    assert!(smoe["total_params"].as_f64().unwrap() <= ds["total_params"].as_f64().unwrap(), "matched size: only the routers differ");
    let every = rows.iter().find(|r| r["run"] == "smoe-every-expert").unwrap();
    assert_eq!(every["mlp_expert_fraction"].as_f64(), Some(1.0), "the control runs every expert: {every}");
    assert_eq!(every["total_params"], smoe["total_params"]);
    let table = std::fs::read_to_string(out.join("table3/table.md")).unwrap();
    assert_eq!(table.lines().count(), 2 + rows.len(), "{table}");

    let fig5 = json(&out.join("fig5/results.json"));
    assert_eq!(fig5["attention_share"].as_array().unwrap().len(), 2, "one share per layer");
    let svg = std::fs::read_to_string(out.join("fig5/utilisation.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<circle").count() == 4, "two layers, two curves, a marker per point");

    // Speed: the bench's four protocols for dense, top-K and threshold rows.
    let speed = json(&out.join("speed/results.json"));
    let records = speed["records"].as_array().unwrap();
    assert_eq!(records.len(), 12, "{speed}");
    assert!(records.iter().all(|r| r["ours"].as_f64().unwrap() > 0.0 && r["case"].as_str().unwrap().starts_with("ds-moe ")));

    // Table 7: serving rows for Table 3's three models, dense first (the speedups' baseline),
    // DS-MoE dense and at top-K of a quarter of its experts.
    let t7 = json(&out.join("table7/results.json"));
    let rows = t7["rows"].as_array().unwrap();
    let names: Vec<(&str, &str)> = rows.iter().map(|r| (r["subject"].as_str().unwrap(), r["mode"].as_str().unwrap())).collect();
    assert_eq!(names, [("dense", "dense"), ("smoe", "dense"), ("ds-moe", "dense"), ("ds-moe", "top-k:2")], "{t7}");
    assert_eq!(rows[0]["speedup_over_dense"].as_f64(), Some(1.0));
    for r in rows {
        let (rps, tps) = (r["requests_per_s"].as_f64().unwrap(), r["tokens_per_s"].as_f64().unwrap());
        assert!(rps > 0.0 && (tps / rps - 8.0).abs() < 1e-9, "4 input + 4 output tokens per request: {r}");
        assert!(r["active_params"].as_f64().unwrap() <= r["total_params"].as_f64().unwrap(), "{r}");
    }
    assert!(rows[3]["active_params"].as_f64().unwrap() < rows[2]["active_params"].as_f64().unwrap(), "top-K activates fewer parameters");
    let table = std::fs::read_to_string(out.join("table7/table.md")).unwrap();
    assert!(table.contains("| DS-MoE-6B | 2.00 | 3992.8 | 1.92x |") && table.contains("Not comparable in absolute terms"), "{table}");

    // Wall times: every experiment that ran, its runs and its time alone.
    let timings = json(&out.join("timings.json"));
    assert_eq!(timings["experiments"]["table3"]["runs"], serde_json::json!(["ds-moe", "dense", "smoe", "smoe-every-expert"]));
    assert_eq!(timings["experiments"]["table7"]["runs"], serde_json::json!([]));
    for run in ["ds-moe", "dense", "smoe", "smoe-every-expert"] {
        assert!(timings["runs"][run].as_f64().unwrap() > 0.0, "{timings}");
    }
    assert_eq!(timings["invocations"][0]["experiments"], serde_json::json!(["table3", "fig5", "speed", "table7"]));
    assert_eq!(timings["invocations"][0]["steps_trained"], 16, "four runs of 4 steps");

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Wall times") && report.lines().any(|l| l.starts_with("| table7 |  | 0 |")), "{report}");
    let t7_claim = report.lines().find(|l| l.starts_with("| table7 |")).unwrap();
    assert!(t7_claim.ends_with("reproduced** |") && t7_claim.contains("req/s at"), "judged from results: {t7_claim}");
    // Claim rows end in a verdict (the wall-time table's rows start alike).
    let claim_lines: Vec<&str> = report.lines().filter(|l| (l.starts_with("| table3 |") || l.starts_with("| fig5 |")) && l.ends_with("** |")).collect();
    assert_eq!(claim_lines.len(), 5, "{report}");
    for l in &claim_lines {
        assert!(["**reproduced**", "**not reproduced**", "**not comparable**"].iter().any(|v| l.ends_with(&format!("{v} |"))), "judged from results: {l}");
    }
    assert!(report.lines().filter(|l| l.starts_with("| fig4 |")).all(|l| l.ends_with("**not run** |")), "fig4 did not run");
    assert!(report.contains("](fig5/utilisation.svg)"));
}

#[test]
fn an_interrupted_reproduction_resumes() {
    let out = scratch("reproduce-resume");
    reproduce(&out, &["table3"]);
    let runs = out.join("runs");
    let ds_weights = runs.join("ds-moe/step-00000004/model.safetensors");
    let before = std::fs::read(&ds_weights).unwrap();
    let ds_modified = std::fs::metadata(&ds_weights).unwrap().modified().unwrap();
    // A kill after the dense run's step-2 checkpoint leaves `latest` there; the SMoE's directory
    // as a kill before its first checkpoint leaves it (no checkpoint at all).
    std::fs::write(runs.join("dense/latest"), "step-00000002").unwrap();
    std::fs::remove_dir_all(runs.join("dense/step-00000004")).unwrap();
    for entry in std::fs::read_dir(runs.join("smoe")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() || path.ends_with("latest") {
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
    std::fs::remove_file(out.join("table3/results.json")).unwrap();

    let (stdout, _) = reproduce(&out, &["table3"]);
    assert!(stdout.contains("ds-moe: reusing the finished run (4 steps)"), "{stdout}");
    assert!(stdout.contains("dense: resuming at step 2 of 4"), "{stdout}");
    assert!(stdout.contains("smoe: trained to step 4"), "{stdout}");
    assert!(stdout.contains("4 runs planned, 6 training steps to go"), "2 dense + 4 SMoE steps: {stdout}");
    assert_eq!(std::fs::read(&ds_weights).unwrap(), before, "the finished run is not retrained");
    assert_eq!(std::fs::metadata(&ds_weights).unwrap().modified().unwrap(), ds_modified);
    assert!(runs.join("dense/step-00000004/model.safetensors").is_file(), "the resumed run finished");
    assert_eq!(json(&out.join("table3/results.json"))["rows"].as_array().unwrap().len(), 10);
}

#[test]
fn unknown_experiments_and_foreign_runs_are_errors() {
    let out = scratch("reproduce-errors");
    fails_with(&["reproduce", "table9", "--scale", "toy", "--out", out.to_str().unwrap()], &["unknown experiment \"table9\"", "table3, fig4"]);
    reproduce(&out, &["fig5"]);
    // A run directory holding another model is never trained over.
    let other = out.join("other");
    std::fs::create_dir_all(other.join("runs")).unwrap();
    std::fs::rename(out.join("runs/ds-moe"), other.join("runs/dense")).unwrap();
    fails_with(&["reproduce", "table3", "--scale", "toy", "--device", "cpu", "--out", other.to_str().unwrap()], &["holds a run of a different model", "dense"]);
}
