//! Wall times of a reproduction, kept in `OUT/timings.json` across invocations: the training
//! seconds of each run, and for each experiment the runs it needs and the seconds it spent beyond
//! training (evaluation, benchmarks, plots). Runs are shared, so an experiment's wall time in one
//! invocation depends on what ran before it; its time *alone* is estimated as the training of
//! every run it needs plus its own seconds, which is what a fresh `dsmoe reproduce EXPERIMENT`
//! would take on the same machine. Evaluations cached by an earlier invocation cost nothing the
//! second time, so an experiment keeps the largest own-seconds seen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use model::checkpoint::write_atomic;
use serde::{Deserialize, Serialize};

use super::output::markdown_table;

pub const TIMINGS_FILE: &str = "timings.json";

/// The per-experiment budget of the issue (15 minutes), and the whole tiny reproduction's (60).
pub const EXPERIMENT_BUDGET_S: f64 = 15.0 * 60.0;
pub const TOTAL_BUDGET_S: f64 = 60.0 * 60.0;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExperimentTime {
    /// Runs the experiment needs.
    pub runs: Vec<String>,
    /// Seconds beyond training: evaluation, benchmarks, writing.
    pub own_s: f64,
    /// Its longest wall time in one invocation (training of runs it was first to need included).
    pub wall_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    /// Training seconds of each run (summed over resumptions).
    pub runs: BTreeMap<String, f64>,
    pub experiments: BTreeMap<String, ExperimentTime>,
    /// Every invocation into this directory, in order.
    pub invocations: Vec<Invocation>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Invocation {
    pub experiments: Vec<String>,
    pub seconds: f64,
    pub steps_trained: u64,
}

impl Timings {
    fn path(out: &Path) -> PathBuf {
        out.join(TIMINGS_FILE)
    }

    /// The timings in `out`, or none yet.
    pub fn load(out: &Path) -> Timings {
        std::fs::read_to_string(Self::path(out)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
    }

    pub fn save(&self, out: &Path) -> Result<()> {
        let path = Self::path(out);
        write_atomic(&path, serde_json::to_string_pretty(self)?.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }

    /// `seconds` more training of `run`; `from_start` when it began at step 0 (earlier time is stale).
    pub fn trained(&mut self, run: &str, seconds: f64, from_start: bool) {
        let t = self.runs.entry(run.to_string()).or_default();
        *t = if from_start { seconds } else { *t + seconds };
    }

    pub fn experiment(&mut self, name: &str, runs: Vec<String>, wall_s: f64, training_s: f64) {
        let e = self.experiments.entry(name.to_string()).or_default();
        e.runs = runs;
        e.own_s = e.own_s.max(wall_s - training_s);
        e.wall_s = e.wall_s.max(wall_s);
    }

    /// The estimated seconds of `name` run alone (see the module comment).
    pub fn alone_s(&self, name: &str) -> Option<f64> {
        let e = self.experiments.get(name)?;
        Some(e.own_s + e.runs.iter().map(|r| self.runs.get(r).copied().unwrap_or(0.0)).sum::<f64>())
    }

    /// The report's section: one row per experiment, and the last invocation's total.
    pub fn markdown(&self, order: &[&str]) -> String {
        let rows: Vec<Vec<String>> = order
            .iter()
            .filter_map(|&name| {
                let e = self.experiments.get(name)?;
                let alone = self.alone_s(name)?;
                let training = alone - e.own_s;
                let verdict = if alone <= EXPERIMENT_BUDGET_S { "yes" } else { "**no**" };
                Some(vec![name.to_string(), e.runs.join(", "), format!("{training:.0}"), format!("{:.0}", e.own_s), format!("{alone:.0} ({:.1} min)", alone / 60.0), verdict.into(), format!("{:.0}", e.wall_s)])
            })
            .collect();
        if rows.is_empty() {
            return String::new();
        }
        let mut total = String::new();
        for (i, inv) in self.invocations.iter().enumerate() {
            let within = if inv.seconds <= TOTAL_BUDGET_S { "within" } else { "over" };
            total.push_str(&format!("\nInvocation {} ({}): {:.0} s ({:.1} min, {within} the 60-minute budget of the whole tiny reproduction), {} training steps.\n", i + 1, inv.experiments.join(", "), inv.seconds, inv.seconds / 60.0, inv.steps_trained));
        }
        format!(
            "Seconds on this machine. Runs are shared, so an experiment's time alone is the training of every run it needs plus its own evaluation and benchmarks; \"in order\" is its longest wall time in one invocation, where earlier experiments had trained some of its runs.\n\n{}{total}",
            markdown_table(&["experiment", "runs", "training (s)", "evaluation (s)", "alone", "within 15 min", "in order (s)"], &rows)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_experiment_alone_is_its_runs_training_plus_its_own_time() {
        let mut t = Timings::default();
        t.trained("a", 100.0, true);
        t.trained("a", 50.0, false);
        t.trained("b", 300.0, true);
        // The first experiment trains both runs; the second reuses "b" and spends 20 s evaluating.
        t.experiment("first", vec!["a".into(), "b".into()], 480.0, 450.0);
        t.experiment("second", vec!["b".into()], 20.0, 0.0);
        assert_eq!(t.alone_s("first"), Some(480.0));
        assert_eq!(t.alone_s("second"), Some(320.0));
        // A rerun served from the evaluation cache keeps the time the evaluation took.
        t.experiment("second", vec!["b".into()], 1.0, 0.0);
        assert_eq!(t.alone_s("second"), Some(320.0));
        assert_eq!(t.experiments["second"].wall_s, 20.0);
        t.trained("b", 900.0, true);
        assert_eq!(t.alone_s("second"), Some(920.0), "retrained from the start: the old time is stale");
        let md = t.markdown(&["first", "second", "third"]);
        assert!(md.contains("| second | b | 900 | 20 | 920 (15.3 min) | **no** | 20 |"), "{md}");
        t.invocations.push(Invocation { experiments: vec!["first".into()], seconds: 3700.0, steps_trained: 600 });
        assert!(t.markdown(&["first"]).contains("Invocation 1 (first): 3700 s (61.7 min, over the 60-minute budget of the whole tiny reproduction), 600 training steps."));
        assert!(md.contains("| first | a, b | 1050 | 30 |"), "{md}");
    }
}
