//! `dsmoe train`: train a model, then evaluate it densely and in sparse modes and print a sample.
//! With no arguments this is the README's main job: the tiny DS-MoE on the bundled corpus.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use model::config::presets;
use model::parallel::Grid;
use model::run::{load_model, open_corpus, TrainingRun};
use model::{Family, InferenceMode, Selection};

use super::generate::bytes_to_text;
use super::launch::Job;
use super::{check_dtype, compute_dtype, device, report};
use crate::cli::TrainArgs;

/// Sample printed after training, and the prompt it continues.
const SAMPLE_PROMPT: &str = "ROMEO:\n";
const SAMPLE_TOKENS: usize = 240;

pub fn run(a: TrainArgs) -> Result<()> {
    let (job, device) = Job::join(device(&a.device)?)?;
    let result = Grid::new(job.group.clone(), a.expert_parallel).map_err(anyhow::Error::from).and_then(|grid| train_job(a, grid, device));
    job.finish(result)
}

/// The whole command as one rank of `grid` (alone: the grid of one). Rank 0 prints and writes.
fn train_job(a: TrainArgs, grid: Grid, device: engine::Device) -> Result<()> {
    let lead = grid.world.rank() == 0;
    let mut run = if a.resume {
        let out = a.out.clone().unwrap_or_else(|| Path::new("runs").join(&a.config));
        let corpus = a.data.as_deref().map(|p| open_corpus(Some(p))).transpose()?;
        // The run's own dtype unless one is given (which must then be the run's).
        let dtype = a.dtype.as_deref().map(|d| compute_dtype(Some(d), &device)).transpose()?;
        let run = TrainingRun::resume_in(grid, &out, corpus, a.steps, &device, dtype).with_context(|| format!("resuming {}", out.display()))?;
        check_dtype(run.trainer.dtype, &device)?;
        let seed = run.trainer.config.train.seed;
        if let Some(s) = a.seed.filter(|&s| s != seed) {
            bail!("resuming {}: --seed {s} conflicts with the run's seed {seed} (a resumed run keeps its own settings)", out.display());
        }
        run
    } else {
        let dtype = compute_dtype(a.dtype.as_deref(), &device)?;
        let mut config = presets::load(&a.config)?;
        if let Some(s) = a.steps {
            config.train.steps = s;
        }
        if let Some(s) = a.seed {
            config.train.seed = s;
        }
        let out = a.out.clone().unwrap_or_else(|| fresh_run_dir(&config.model.name));
        let corpus = open_corpus(a.data.as_deref())?;
        TrainingRun::start_in(grid, config, corpus, &out, &device, dtype)?
    };
    run.trainer.overlap_reduce = !a.reduce_after_backward;
    if !(a.grad_bucket_mb.is_finite() && a.grad_bucket_mb > 0.0) {
        bail!("--grad-bucket-mb {} must be a positive number of MiB", a.grad_bucket_mb);
    }
    run.trainer.grad_bucket_bytes = (a.grad_bucket_mb * (1 << 20) as f64).ceil() as usize;
    for w in run.warnings() {
        eprintln!("warning: {w}");
    }
    if lead {
        describe(&run, &device, run.trainer.dtype);
    }
    train(&mut run, lead)?;
    if !lead {
        return Ok(());
    }
    if !a.no_final_eval {
        final_evaluation(&run, &device)?;
    }
    if run.out().join(model::checkpoint::LATEST_FILE).exists() {
        println!("checkpoint: {}", run.out().display());
    } else {
        println!("checkpoint: none written (no step was trained)");
    }
    println!("metrics:    {}  (loss curve: {})", run.out().join(model::run::METRICS_FILE).display(), run.out().join(model::run::PLOT_FILE).display());
    Ok(())
}

/// `runs/NAME`, or the first of `runs/NAME.2`, `.3`, ... that does not exist yet.
fn fresh_run_dir(name: &str) -> PathBuf {
    let base = Path::new("runs").join(name);
    (1..).map(|i| if i == 1 { base.clone() } else { base.with_extension(i.to_string()) }).find(|p| !p.exists()).expect("an unused name exists")
}

fn describe(run: &TrainingRun, device: &engine::Device, dtype: engine::DType) {
    let c = &run.trainer.config;
    let counts = run.trainer.model.param_counts(None);
    println!(
        "{}: {} non-embedding parameters ({} embedding), {} layers x d {}, {} MLP experts of width {}",
        c.model.name,
        super::info::millions(counts.total as f64),
        super::info::millions(counts.embedding as f64),
        c.model.n_layers,
        c.model.d_model,
        c.model.mlp.n_experts,
        c.model.mlp.expert_width
    );
    println!("data: {}", run.corpus);
    println!(
        "training on {device} in {dtype}: {} steps of {} x {} tokens (x{} accumulation), from step {}, into {}",
        c.train.steps,
        c.train.batch_size,
        c.train.seq_len,
        c.train.grad_accum,
        run.step_count(),
        run.out().display()
    );
    let grid = run.grid();
    if grid.world.size() > 1 {
        println!("parallel: {}, {} sequences each per micro-batch", grid.describe(), c.train.batch_size / grid.data.size());
    }
}

/// The training loop; `lead` (rank 0) shows the progress.
fn train(run: &mut TrainingRun, lead: bool) -> Result<()> {
    let steps = run.trainer.config.train.steps;
    let bar = if lead { ProgressBar::new(steps) } else { ProgressBar::hidden() }.with_position(run.step_count());
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}").expect("a valid template"));
    let started = Instant::now();
    let (mut tokens, mut val) = (0usize, None);
    while !run.is_done() {
        let out = run.step()?;
        tokens += out.report.tokens;
        val = out.val_loss.or(val);
        let rate = tokens as f64 / started.elapsed().as_secs_f64();
        let val_text = val.map_or(String::new(), |v| format!(", val {v:.3}"));
        bar.set_message(format!("loss {:.3}{val_text}, {:.0} tok/s", out.report.loss, rate));
        bar.set_position(out.report.step);
        if let Some(v) = out.val_loss {
            let line = format!("step {:>6}: train {:.4}, val {:.4} nats/token, lr {:.2e}, grad norm {:.2}", out.report.step, out.report.loss, v, out.report.lr, out.report.grad_norm);
            // A hidden bar (output not a terminal) drops its println, and logs still want the line.
            if bar.is_hidden() {
                if lead {
                    println!("{line}");
                }
            } else {
                bar.println(line);
            }
        }
    }
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    if tokens > 0 && lead {
        println!("trained {tokens} tokens in {secs:.1} s ({:.0} tokens/s)", tokens as f64 / secs);
    }
    Ok(())
}

/// The inference modes evaluated after training: dense, and for DS-MoE the sparse modes of the
/// paper (top-K at half and a quarter of the MLP experts, the threshold rule, and sparse attention).
fn final_modes(run: &TrainingRun) -> Vec<InferenceMode> {
    let m = &run.trainer.config.model;
    let mut modes = vec![InferenceMode::DENSE];
    if m.family != Family::DsMoe {
        return modes;
    }
    let (n, a) = (m.mlp.n_experts, m.attention.n_experts);
    for k in [n / 2, n / 4].into_iter().filter(|&k| k >= 1) {
        modes.push(InferenceMode { mlp: Selection::TopK(k), attention: Selection::Dense });
    }
    modes.push(InferenceMode { mlp: Selection::Threshold(1.0), attention: Selection::Dense });
    if a > 1 {
        modes.push(InferenceMode { mlp: Selection::TopK((n / 2).max(1)), attention: Selection::TopK((a / 2).max(1)) });
    }
    modes
}

/// Rank 0's evaluation after training. A model whose experts are split over ranks is evaluated
/// (and sampled) from the checkpoint the last step gathered, whole, on rank 0 alone.
fn final_evaluation(run: &TrainingRun, device: &engine::Device) -> Result<()> {
    let t = &run.trainer.config.train;
    let modes = final_modes(run);
    let gathered = match run.trainer.model.expert_split {
        Some(_) if run.out().join(model::checkpoint::LATEST_FILE).exists() => Some(load_model(run.out(), device)?.model),
        Some(_) => {
            println!("no final evaluation: no checkpoint to gather the split experts from");
            return Ok(());
        }
        None => None,
    };
    let evaluated = gathered.as_ref().unwrap_or(&run.trainer.model);
    let windows = model::run::validation_windows(&run.corpus, t.seq_len, t.final_eval_windows)?;
    let bar = ProgressBar::new(modes.len() as u64).with_message("final evaluation");
    let mut reports = Vec::new();
    for mode in &modes {
        reports.push(model::eval::evaluate(evaluated, &windows, t.batch_size, *mode, run.trainer.dtype, run.corpus.bytes_per_token())?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let tokens = reports.first().map_or(0, |r| r.tokens);
    println!("\nvalidation, {tokens} tokens of the held-out split:");
    println!("{}", report::header());
    let dense = reports.first().map(|r| r.loss);
    for r in &reports {
        println!("{}", report::row(r, dense));
    }
    if let Ok(b) = run.corpus.baselines() {
        println!("(byte baselines on the same split: unigram {:.3}, bigram {:.3} nats/token)", b.unigram, b.bigram);
    }
    let sample_mode = modes.get(1).copied().unwrap_or(InferenceMode::DENSE);
    if run.trainer.config.model.vocab_size == 256 {
        let prompt: Vec<u32> = SAMPLE_PROMPT.bytes().map(u32::from).collect();
        let mut rng = engine::Rng::new(run.trainer.config.train.seed);
        let text = model::generate::generate(evaluated, &prompt, SAMPLE_TOKENS, 0.8, sample_mode, run.trainer.dtype, &mut rng)?;
        println!("\nsample ({}, temperature 0.8):\n{}\n", sample_mode.mlp.describe(), bytes_to_text(&text));
    }
    Ok(())
}
