//! The reproduction's workshop: trains the runs experiments ask for (or reuses them), evaluates
//! them under inference modes (with a per-run cache of results), and shows progress.
//!
//! Runs live in `OUT/runs/NAME/`, ordinary run directories of `dsmoe train`. A run whose latest
//! checkpoint reached its step count is reused as it is; one with an earlier checkpoint (a
//! reproduction interrupted mid-run) resumes from it through `TrainingRun::resume`, exactly as
//! `dsmoe train --resume` would; one without a checkpoint starts over. A run directory holding a
//! different model is an error, never overwritten. Evaluations are cached in `RUN/evals.json`,
//! keyed by the mode, the evaluated windows and the checkpoint's step, so a rerun of an
//! interrupted reproduction repeats no work.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use engine::{DType, Device};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use model::checkpoint::{write_atomic, Checkpoint, LATEST_FILE};
use model::data::Corpus;
use model::metrics::{read_metrics, series, VAL_LOSS};
use model::eval::{evaluate_layers, resolve_threshold_k, EvalReport, KRounding};
use model::run::{load_model, open_corpus, validation_windows, TrainingRun, METRICS_FILE};
use model::{Config, InferenceMode, Model};
use serde::{Deserialize, Serialize};

use super::timing::Timings;

/// A run an experiment needs: a name (its directory under `OUT/runs/`) and its config.
#[derive(Clone)]
pub struct RunSpec {
    pub name: String,
    pub config: Config,
}

/// A trained model ready to evaluate.
pub struct Trained {
    pub name: String,
    pub config: Config,
    pub model: Model,
    pub dir: PathBuf,
    step: u64,
    corpus: Corpus,
    windows: Vec<(Vec<u32>, Vec<u32>)>,
}

/// One evaluation, as results.json records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRow {
    pub run: String,
    pub mode: String,
    /// Nats per token on the validation windows.
    pub loss: f64,
    pub bits_per_byte: Option<f64>,
    pub tokens: usize,
    /// Non-embedding parameters per token, from the routing that happened.
    pub active_params: f64,
    pub total_params: usize,
    pub active_fraction: f64,
    /// Share of the MLP experts' parameters a token used.
    pub mlp_expert_fraction: f64,
    /// Experts a token used, per layer (attention and MLP).
    pub att_per_layer: Vec<f64>,
    pub mlp_per_layer: Vec<f64>,
}

/// How an experiment names an inference mode in tables: the MLP rule, and the attention rule when
/// it is not dense.
pub fn describe(mode: InferenceMode) -> String {
    let (mlp, att) = (mode.mlp.describe(), mode.attention.describe());
    if att == "dense" {
        mlp
    } else if att == mlp {
        format!("{mlp} (both routers)")
    } else {
        format!("{mlp}, attention {att}")
    }
}

impl EvalRow {
    fn new(run: &str, label: String, r: &EvalReport) -> EvalRow {
        EvalRow {
            run: run.into(),
            mode: label,
            loss: r.loss,
            bits_per_byte: r.bits_per_byte,
            tokens: r.tokens,
            active_params: r.counts.active,
            total_params: r.counts.total,
            active_fraction: r.counts.active_fraction(),
            mlp_expert_fraction: r.counts.mlp_expert_fraction(),
            att_per_layer: r.layers.iter().map(|l| l.att_experts_per_token).collect(),
            mlp_per_layer: r.layers.iter().map(|l| l.mlp_experts_per_token).collect(),
        }
    }
}

impl Trained {
    /// How much this run trained and whether it had converged, for judging a claim that did not
    /// reproduce: tokens seen, tokens per (non-embedding) parameter, and the validation loss's
    /// last two logged points (a loss still falling at the end is a model short of tokens).
    pub fn training_summary(&self) -> Result<serde_json::Value> {
        let tc = &self.config.train;
        let tokens = self.step * (tc.batch_size * tc.seq_len * tc.grad_accum) as u64;
        let params = self.config.model.counts(None, None)?.total;
        let log = read_metrics(&self.dir.join(METRICS_FILE))?;
        let curve = series(&log, VAL_LOSS);
        let tail = &curve[curve.len().saturating_sub(2)..];
        Ok(serde_json::json!({
            "run": self.name, "model": self.config.model.name, "steps": self.step, "tokens": tokens,
            "params": params, "tokens_per_param": tokens as f64 / params as f64, "val_loss_tail": tail,
        }))
    }
}

pub struct Lab {
    pub out: PathBuf,
    /// Validation windows per evaluation.
    pub eval_windows: usize,
    device: Device,
    dtype: DType,
    data: Option<PathBuf>,
    multi: MultiProgress,
    overall: ProgressBar,
    started: Instant,
    /// Steps trained so far in this process, and steps left to train in the plan.
    trained_steps: u64,
    planned_steps: u64,
    /// Wall times, kept in `OUT/timings.json`; and the training seconds of this process so far.
    pub timings: Timings,
    pub training_s: f64,
}

const EVALS_FILE: &str = "evals.json";

impl Lab {
    pub fn new(out: &Path, eval_windows: usize, device: Device, dtype: DType, data: Option<PathBuf>) -> Result<Lab> {
        std::fs::create_dir_all(out.join("runs")).with_context(|| format!("creating {}", out.display()))?;
        let multi = MultiProgress::new();
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(ProgressStyle::with_template("overall {bar:30} {pos}/{len} steps [{elapsed_precise}, ETA {eta_precise}] {msg}").expect("a valid template"));
        Ok(Lab { out: out.to_path_buf(), eval_windows, device, dtype, data, multi, overall, started: Instant::now(), trained_steps: 0, planned_steps: 0, timings: Timings::load(out), training_s: 0.0 })
    }

    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.out.join("runs").join(name)
    }

    /// Steps `spec` still needs: all of them, fewer after a checkpoint, none when finished.
    fn remaining_steps(&self, spec: &RunSpec) -> u64 {
        let dir = self.run_dir(&spec.name);
        let done = if dir.join(LATEST_FILE).exists() { Checkpoint::open(&dir).map(|c| c.step()).unwrap_or(0) } else { 0 };
        spec.config.train.steps.saturating_sub(done)
    }

    /// Sizes the overall bar (and its ETA) to the steps `plan` still needs.
    pub fn plan(&mut self, plan: &[RunSpec]) {
        self.planned_steps = plan.iter().map(|s| self.remaining_steps(s)).sum();
        self.overall.set_length(self.planned_steps);
        self.say(&format!("{} runs planned, {} training steps to go", plan.len(), self.planned_steps));
    }

    /// A line above the bars (or on stdout when there are none, as in a log file).
    pub fn say(&self, line: &str) {
        if self.multi.is_hidden() {
            println!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// The run `spec`, trained: reused when finished, resumed when interrupted, else trained anew.
    pub fn trained(&mut self, spec: &RunSpec) -> Result<Trained> {
        let dir = self.run_dir(&spec.name);
        let steps = spec.config.train.steps;
        let from_start = !dir.join(LATEST_FILE).exists();
        let mut run = if !from_start {
            let saved = Checkpoint::open(&dir).with_context(|| format!("reading run {}", dir.display()))?;
            let config: Config = serde_json::from_value(saved.config()?).with_context(|| format!("the config of {}", dir.display()))?;
            if config.model != spec.config.model {
                bail!("{} holds a run of a different model than this reproduction's {}: remove it, or reproduce into another --out", dir.display(), spec.name);
            }
            if saved.step() >= steps {
                self.say(&format!("{}: reusing the finished run ({} steps) in {}", spec.name, saved.step(), dir.display()));
                return self.load(spec, &dir);
            }
            self.say(&format!("{}: resuming at step {} of {}", spec.name, saved.step(), steps));
            TrainingRun::resume(&dir, None, Some(steps), &self.device, Some(self.dtype))?
        } else {
            TrainingRun::start(spec.config.clone(), open_corpus(self.data.as_deref())?, &dir, &self.device, self.dtype)?
        };
        for w in run.warnings() {
            self.say(&format!("warning: {w}"));
        }
        self.train(&spec.name, &mut run, from_start)?;
        drop(run);
        self.load(spec, &dir)
    }

    fn train(&mut self, name: &str, run: &mut TrainingRun, from_start: bool) -> Result<()> {
        let steps = run.trainer.config.train.steps;
        let bar = self.multi.insert_before(&self.overall, ProgressBar::new(steps).with_position(run.step_count()));
        bar.set_style(ProgressStyle::with_template("{prefix:>16} {bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}").expect("a valid template"));
        bar.set_prefix(name.to_string());
        let began = Instant::now();
        while !run.is_done() {
            let out = run.step()?;
            bar.set_position(out.report.step);
            bar.set_message(format!("loss {:.3}", out.report.loss));
            self.overall.inc(1);
            self.trained_steps += 1;
        }
        bar.finish_and_clear();
        let seconds = began.elapsed().as_secs_f64();
        self.training_s += seconds;
        self.timings.trained(name, seconds, from_start);
        self.timings.save(&self.out)?;
        let left = self.planned_steps.saturating_sub(self.trained_steps);
        let per_step = self.started.elapsed().as_secs_f64() / self.trained_steps.max(1) as f64;
        self.say(&format!("{name}: trained to step {steps} in {:.0} s; {left} steps left in the plan, about {:.0} s more", began.elapsed().as_secs_f64(), left as f64 * per_step));
        Ok(())
    }

    fn load(&self, spec: &RunSpec, dir: &Path) -> Result<Trained> {
        let loaded = load_model(dir, &self.device)?;
        let corpus = open_corpus(self.data.as_deref().or(loaded.data.as_deref()))?;
        let windows = validation_windows(&corpus, loaded.config.train.seq_len, self.eval_windows)?;
        Ok(Trained { name: spec.name.clone(), config: loaded.config, model: loaded.model, dir: dir.to_path_buf(), step: loaded.step, corpus, windows })
    }

    /// `trained` evaluated under `mode` (threshold-K rounded up), from the cache when it was done before.
    pub fn eval(&self, trained: &Trained, mode: InferenceMode) -> Result<EvalRow> {
        self.eval_rounded(trained, mode, KRounding::Up)
    }

    /// `eval` with threshold-K's rounding chosen.
    pub fn eval_rounded(&self, t: &Trained, mode: InferenceMode, rounding: KRounding) -> Result<EvalRow> {
        let mut label = describe(mode);
        if rounding == KRounding::Nearest && label.contains("threshold-k") {
            label.push_str(" (K rounded to nearest)");
        }
        let key = format!("{label} | {} windows | step {}", t.windows.len(), t.step);
        let path = t.dir.join(EVALS_FILE);
        let mut cache: BTreeMap<String, EvalRow> = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        if let Some(row) = cache.get(&key) {
            return Ok(row.clone());
        }
        let batch = t.config.train.batch_size;
        let modes = resolve_threshold_k(&t.model, &t.windows, batch, mode, self.dtype, rounding)?;
        let report = evaluate_layers(&t.model, &t.windows, batch, mode, &modes, self.dtype, t.corpus.bytes_per_token())?;
        let row = EvalRow::new(&t.name, label, &report);
        cache.insert(key, row.clone());
        write_atomic(&path, serde_json::to_string_pretty(&cache)?.as_bytes())?;
        Ok(row)
    }

    /// Training steps taken by this process.
    pub fn trained_steps(&self) -> u64 {
        self.trained_steps
    }

    /// Seconds since this reproduction began.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn finish(&self) {
        self.overall.finish_and_clear();
        self.say(&format!("reproduction done in {:.0} s ({} steps trained here)", self.elapsed_s(), self.trained_steps));
    }
}
