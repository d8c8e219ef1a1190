//! A training run: a `Trainer`, its data, and its run directory (checkpoints, metrics log, loss plot).
//!
//! Everything a resumed run needs to continue exactly is in the checkpoint: the weights, AdamW's
//! moments and step, the config (with the step count it was started for), the data RNG's state and
//! the data file. Because batches are drawn from that RNG alone and every CPU op is deterministic, a
//! run stopped at step s and resumed produces the same losses, bit for bit, as one that never
//! stopped (`model/tests/resume.rs` checks it).
//!
//! A run never overwrites another run's checkpoints: starting in a directory that already holds one
//! is an error unless the caller asks to resume. A run holds its directory's lock (`run_lock`) for
//! its whole life, so two processes never write one run; the holder removes the temporary files a
//! killed writer left. The data is checked whole before step 1, and a checkpoint is written only of
//! finite weights and moments.
//!
//! Runs of several ranks (`start_in` / `resume_in` with a `Grid`): rank 0 alone owns the run
//! directory (lock, metrics, evaluation, checkpoints). Under data parallelism every rank holds the
//! whole model and optimizer state, so a checkpoint is rank 0's, written atomically as always.
//! Under expert parallelism the ranks of rank 0's expert group evaluate with it, and a checkpoint
//! gathers their experts' rows onto it first, so the file set is the one a single process writes.
//! Either way a run resumes at any world size and grid (the data RNG draws global batches,
//! whatever their split, and a checkpoint is always whole). Every rank reads the
//! checkpoint to resume, so the run directory must be visible to all of them (one machine, or a
//! shared filesystem). Start-up is agreed: a rank that fails to start makes every rank fail, and the
//! ranks' configs, data RNG and step are checked to be the same before step 1.

use std::path::{Path, PathBuf};

use engine::comm::Communicator;
use engine::{ops, DType, Device, Tensor};
use serde_json::{json, Value};

use crate::checkpoint::{self, remove_stale_temps, rng_from_hex, rng_to_hex, Checkpoint, Snapshot};
use crate::data::{default_corpus_path, Corpus};
use crate::eval::{evaluate, EvalReport};
use crate::metrics::{write_loss_plot, MetricsLog, TRAIN_LOSS, VAL_LOSS};
use crate::parallel::{check_same_everywhere, fingerprint, Grid};
use crate::params::all_finite;
use crate::run_lock::RunLock;
use crate::train::{StepReport, Trainer};
use crate::transformer::InferenceMode;
use crate::{Config, Error, Result};

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const PLOT_FILE: &str = "loss.svg";
/// Step directories kept on disk: the newest and one before it.
const KEEP_CHECKPOINTS: usize = 2;

pub struct TrainingRun {
    pub trainer: Trainer,
    pub corpus: Corpus,
    out: PathBuf,
    grid: Grid,
    /// Rank 0's (the writer's); None on the other ranks of a data-parallel run.
    metrics: Option<MetricsLog>,
    /// Held for the run's life by the writer: one writer per run directory.
    _lock: Option<RunLock>,
    warnings: Vec<String>,
}

/// What one `TrainingRun::step` did besides the update.
pub struct StepOutcome {
    pub report: StepReport,
    /// Validation loss (nats per token), when this step was an evaluation step.
    pub val_loss: Option<f64>,
    /// The checkpoint directory, when this step wrote one.
    pub checkpoint: Option<PathBuf>,
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::U32 => "u32",
    }
}

/// Parses a compute dtype name: f32, f64, bf16 or f16.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "f64" => Ok(DType::F64),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        _ => Err(Error::Invalid { what: "dtype", value: s.into(), msg: "expected f32, f64, bf16 or f16".into() }),
    }
}

/// Opens a data path, or the bundled corpus (checked against its checksum) when none is given.
pub fn open_corpus(path: Option<&Path>) -> Result<Corpus> {
    match path {
        None => Corpus::open_default(),
        Some(p) if p == default_corpus_path() => Corpus::open_default(),
        Some(p) => Corpus::open(p),
    }
}

/// The validation windows of an evaluation: `limit` windows (0 = all) of the model's training length.
pub fn validation_windows(corpus: &Corpus, seq: usize, limit: usize) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
    corpus.val_windows(seq, (limit > 0).then_some(limit))?.collect()
}

impl TrainingRun {
    /// Starts a fresh run of `config` on `corpus`, writing into `out`.
    pub fn start(config: Config, corpus: Corpus, out: &Path, device: &Device, dtype: DType) -> Result<TrainingRun> {
        TrainingRun::start_in(Grid::single(), config, corpus, out, device, dtype)
    }

    /// `start` as one rank of `grid` (rank 0 writes the run directory).
    pub fn start_in(grid: Grid, config: Config, corpus: Corpus, out: &Path, device: &Device, dtype: DType) -> Result<TrainingRun> {
        let writer = grid.world.rank() == 0;
        let local = (|| {
            if writer {
                refuse_existing_run(out)?;
            }
            check_data(&config, &corpus)?;
            let trainer = Trainer::new(config, device, dtype)?.with_data_group(grid.data.clone())?.with_expert_group(grid.expert.clone())?;
            if !writer {
                return Ok((trainer, None, None, Vec::new()));
            }
            std::fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
            let lock = RunLock::acquire(out)?;
            // Checked again under the lock: another process may have checkpointed here meanwhile.
            refuse_existing_run(out)?;
            let removed = remove_stale_temps(out)?;
            // A fresh run in a directory with a stale log (from a run that never checkpointed) starts it over.
            let metrics = MetricsLog::open_resumed(&out.join(METRICS_FILE), 0)?;
            let warnings = run_dir_warnings(out, removed, &metrics);
            Ok((trainer, Some(metrics), Some(lock), warnings))
        })();
        let (trainer, metrics, lock, warnings) = agree(grid.world.as_ref(), device, "starting the run", local)?;
        let run = TrainingRun { trainer, corpus, out: out.to_path_buf(), grid, metrics, _lock: lock, warnings };
        run.check_ranks_agree(device)?;
        Ok(run)
    }

    /// Resumes the run in `out` from its latest checkpoint, with the run's own settings. `steps`
    /// extends (or shortens) the schedule's length; the data is the run's own unless `corpus` is
    /// given; `dtype`, when given, must be the run's.
    pub fn resume(out: &Path, corpus: Option<Corpus>, steps: Option<u64>, device: &Device, dtype: Option<DType>) -> Result<TrainingRun> {
        TrainingRun::resume_in(Grid::single(), out, corpus, steps, device, dtype)
    }

    /// `resume` as one rank of `grid`, at any size and shape: every rank reads the checkpoint
    /// (whole) and keeps its experts, rank 0 alone takes the run directory's lock and writes.
    pub fn resume_in(grid: Grid, out: &Path, corpus: Option<Corpus>, steps: Option<u64>, device: &Device, dtype: Option<DType>) -> Result<TrainingRun> {
        let world = grid.world.clone();
        let local = TrainingRun::resume_local(grid, out, corpus, steps, device, dtype);
        let run = agree(world.as_ref(), device, "resuming the run", local)?;
        run.check_ranks_agree(device)?;
        Ok(run)
    }

    fn resume_local(grid: Grid, out: &Path, corpus: Option<Corpus>, steps: Option<u64>, device: &Device, dtype: Option<DType>) -> Result<TrainingRun> {
        let writer = grid.world.rank() == 0;
        if !out.join(checkpoint::LATEST_FILE).exists() {
            let msg = match out.parent().filter(|_| out.join(checkpoint::STATE_FILE).exists()) {
                Some(run) => format!("is one checkpoint of a run, not a run directory; resume the run: --out {}", run.display()),
                None => format!("has no `{}`: there is no run to resume here", checkpoint::LATEST_FILE),
            };
            return Err(Error::checkpoint(out.display().to_string(), msg));
        }
        let lock = writer.then(|| RunLock::acquire(out)).transpose()?;
        let removed = if writer { remove_stale_temps(out)? } else { 0 };
        let ckpt = Checkpoint::open(out)?;
        let origin = ckpt.dir().join(checkpoint::STATE_FILE).display().to_string();
        let mut config = checkpoint_config(&ckpt)?;
        if let Some(s) = steps {
            config.train.steps = s;
        }
        let state = ckpt.state();
        let field = |name: &str| state.get(name).and_then(Value::as_str).ok_or_else(|| Error::checkpoint(&origin, format!("state has no `{name}` string")));
        let saved = parse_dtype(field("dtype")?).map_err(|e| Error::checkpoint(&origin, e.to_string()))?;
        if let Some(d) = dtype.filter(|&d| d != saved) {
            return Err(Error::checkpoint(&origin, format!("the run trains in {saved}; --dtype {d} conflicts with it (a resumed run keeps its own settings)")));
        }
        let data_rng = rng_from_hex(field("data_rng")?).map_err(|e| Error::checkpoint(&origin, e.to_string()))?;
        let corpus = match corpus {
            Some(c) => c,
            None => open_corpus(Some(Path::new(field("data")?)))?,
        };
        check_data(&config, &corpus)?;
        let mut trainer = Trainer::new(config, device, saved)?.with_data_group(grid.data.clone())?;
        load_weights(&ckpt, &mut trainer.model, device)?;
        load_moments(&ckpt, &mut trainer)?;
        trainer.optimizer.step = ckpt.step();
        trainer.data_rng = data_rng;
        let trainer = trainer.with_expert_group(grid.expert.clone())?;
        let (metrics, warnings) = if writer {
            let metrics = MetricsLog::open_resumed(&out.join(METRICS_FILE), ckpt.step())?;
            let warnings = run_dir_warnings(out, removed, &metrics);
            (Some(metrics), warnings)
        } else {
            (None, Vec::new())
        };
        Ok(TrainingRun { trainer, corpus, out: out.to_path_buf(), grid, metrics, _lock: lock, warnings })
    }

    /// Fails on every rank unless all ranks run the same config, dtype, step, data stream and grid.
    fn check_ranks_agree(&self, device: &Device) -> Result<()> {
        let t = &self.trainer;
        let config = serde_json::to_string(&t.config).map_err(|e| Error::checkpoint(self.out.display().to_string(), e.to_string()))?;
        let grid = self.grid.describe();
        let state = format!("{config}\n{}\n{}\n{}\n{}\n{grid}", dtype_name(t.dtype), t.optimizer.step, rng_to_hex(&t.data_rng), self.corpus.path().display());
        check_same_everywhere(self.grid.world.as_ref(), device, "config, dtype, step, data or expert-parallel size", fingerprint(state.as_bytes()))
    }

    /// The ranks of the job as data x expert groups.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// Whether this process writes the run directory (rank 0 of a data-parallel run).
    pub fn is_writer(&self) -> bool {
        self.metrics.is_some()
    }

    /// What opening the run directory found and repaired, for the user: temporary files a killed
    /// writer left (removed), damaged metrics lines (left in place, skipped).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn out(&self) -> &Path {
        &self.out
    }

    pub fn step_count(&self) -> u64 {
        self.trainer.optimizer.step
    }

    pub fn is_done(&self) -> bool {
        self.step_count() >= self.trainer.config.train.steps
    }

    /// One optimizer step, logged; evaluates and checkpoints on their intervals and at the last step.
    pub fn step(&mut self) -> Result<StepOutcome> {
        let report = self.trainer.step(&self.corpus)?;
        let t = &self.trainer.config.train;
        let last = report.step >= t.steps;
        let mut record = json!({
            "step": report.step,
            TRAIN_LOSS: report.loss,
            "aux_loss": report.aux_loss,
            "lr": report.lr,
            "grad_norm": report.grad_norm,
            "tokens": report.tokens,
            "grad_reduce_wait_s": report.grad_reduce_wait_s,
        });
        let due_eval = (t.eval_interval > 0 && report.step % t.eval_interval == 0) || last;
        let due_checkpoint = (t.checkpoint_interval > 0 && report.step % t.checkpoint_interval == 0) || last;
        let mut val_loss = None;
        // Rank 0 evaluates, logs and checkpoints; with the experts split, the rest of its expert
        // group computes with it (the evaluation's expert shares, the checkpoint's rows).
        let helper = !self.is_writer() && self.trainer.model.expert_split.is_some() && self.trainer.data_group.rank() == 0;
        if !self.is_writer() && !helper {
            return Ok(StepOutcome { report, val_loss, checkpoint: None });
        }
        if due_eval {
            let r = self.evaluate(InferenceMode::DENSE, self.trainer.config.train.eval_windows)?;
            record[VAL_LOSS] = json!(r.loss);
            val_loss = Some(r.loss);
        }
        if helper {
            if due_checkpoint {
                self.whole_state()?;
            }
            return Ok(StepOutcome { report, val_loss, checkpoint: None });
        }
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.append(&record)?;
        }
        let checkpoint = if due_checkpoint { Some(self.save()?) } else { None };
        Ok(StepOutcome { report, val_loss, checkpoint })
    }

    /// Validation loss under `mode` over `windows` windows (0 = the whole split).
    pub fn evaluate(&self, mode: InferenceMode, windows: usize) -> Result<EvalReport> {
        let t = &self.trainer.config.train;
        let data = validation_windows(&self.corpus, t.seq_len, windows)?;
        evaluate(&self.trainer.model, &data, t.batch_size, mode, self.trainer.dtype, self.corpus.bytes_per_token())
    }

    /// The weights and AdamW's moments, whole: with the experts split, every rank of the expert
    /// group must call it at once (it gathers their rows).
    fn whole_state(&self) -> Result<(Vec<(String, Tensor)>, Vec<(String, Tensor)>)> {
        let tr = &self.trainer;
        let whole = |i: usize, t: &Tensor| match &tr.model.expert_split {
            Some(split) => split.gather(i, t),
            None => Ok(t.clone()),
        };
        let mut model = Vec::with_capacity(tr.model.params.len());
        let mut optimizer = Vec::with_capacity(2 * model.len());
        for (i, p) in tr.model.params.iter().enumerate() {
            model.push((p.name.clone(), whole(i, &p.value)?));
            optimizer.push((format!("m.{}", p.name), whole(i, &tr.optimizer.m[i])?));
            optimizer.push((format!("v.{}", p.name), whole(i, &tr.optimizer.v[i])?));
        }
        Ok((model, optimizer))
    }

    /// Writes a checkpoint of the current step and refreshes the loss plot; returns its directory.
    /// Only the writer (rank 0) may; with the experts split, the other ranks of its expert group
    /// lend their rows at the same time (`step` does both).
    pub fn save(&self) -> Result<PathBuf> {
        if !self.is_writer() {
            return Err(Error::checkpoint(self.out.display().to_string(), format!("rank {} of a parallel run does not write checkpoints; rank 0 does", self.grid.world.rank())));
        }
        let tr = &self.trainer;
        let (model, optimizer) = self.whole_state()?;
        let config = serde_json::to_value(&tr.config).map_err(|e| Error::checkpoint(self.out.display().to_string(), e.to_string()))?;
        let state = json!({
            "data": self.corpus.path().display().to_string(),
            "data_rng": rng_to_hex(&tr.data_rng),
            "dtype": dtype_name(tr.dtype),
        });
        for (name, t) in model.iter().chain(&optimizer) {
            if !all_finite(t)? {
                return Err(Error::checkpoint(
                    self.out.display().to_string(),
                    format!("refusing to write the checkpoint of step {}: {name} holds NaN or infinite values; the last checkpoint is untouched", tr.optimizer.step),
                ));
            }
        }
        let snap = Snapshot { step: tr.optimizer.step, model: &model, optimizer: &optimizer, config: &config, state: &state };
        let dir = checkpoint::save(&self.out, &snap, KEEP_CHECKPOINTS)?;
        write_loss_plot(&self.out.join(METRICS_FILE), &self.out.join(PLOT_FILE), &format!("{}: loss per token", tr.config.model.name))?;
        Ok(dir)
    }
}

/// Every rank's `local` outcome of a start-up phase, agreed: Ok everywhere only if it is Ok on every
/// rank; a rank that failed keeps its own error, the others fail naming the failed ranks.
fn agree<T>(group: &dyn Communicator, device: &Device, what: &str, local: Result<T>) -> Result<T> {
    if group.size() == 1 {
        return local;
    }
    let flag = Tensor::from_slice(&[local.is_err() as u32], [1, 1], device)?;
    let failed = group.all_gather(&flag)?.to_vec::<u32>()?;
    let bad: Vec<String> = failed.iter().enumerate().filter(|(_, &f)| f != 0).map(|(r, _)| r.to_string()).collect();
    match local {
        Err(e) => Err(e),
        Ok(_) if !bad.is_empty() => Err(Error::Invalid { what: "parallel setup", value: what.into(), msg: format!("failed on rank(s) {} (their own messages say why)", bad.join(", ")) }),
        Ok(v) => Ok(v),
    }
}

fn run_dir_warnings(out: &Path, removed_temps: usize, metrics: &MetricsLog) -> Vec<String> {
    let removed = (removed_temps > 0).then(|| format!("{}: removed {removed_temps} temporary files an interrupted write left behind", out.display()));
    let skipped = metrics.skipped_lines().iter().map(|n| format!("{} line {n} is not a JSON record; it is left in place and skipped", metrics.path().display()));
    removed.into_iter().chain(skipped).collect()
}

/// Fails when `out` already holds a run's checkpoints.
fn refuse_existing_run(out: &Path) -> Result<()> {
    if out.join(checkpoint::LATEST_FILE).exists() {
        return Err(Error::checkpoint(out.display().to_string(), "already holds a run's checkpoints; resume it (--resume) or choose another output directory"));
    }
    Ok(())
}

/// Everything about the data a run will find wrong later, found before step 1: a vocabulary the
/// model cannot embed, an id outside the file's vocabulary anywhere in it, a split shorter than
/// one window.
fn check_data(config: &Config, corpus: &Corpus) -> Result<()> {
    check_vocab(config, corpus)?;
    corpus.check_ids()?;
    let seq = config.train.seq_len;
    corpus.val_windows(seq, Some(1))?;
    let train = corpus.split_len(crate::data::Split::Train);
    if train < seq + 1 {
        return Err(Error::data(corpus.path().display().to_string(), format!("the training split has {train} tokens, fewer than one window of {seq} + 1")));
    }
    Ok(())
}

/// Restores AdamW's moments, checking each: present, of the parameter's shape, f32, finite and,
/// for the second moments, not negative.
fn load_moments(ckpt: &Checkpoint, trainer: &mut Trainer) -> Result<()> {
    let file = ckpt.optimizer()?;
    let origin = file.path().display().to_string();
    let mut moments = file.load_all(&trainer.model.device())?;
    let optimizer = &mut trainer.optimizer;
    for (p, (m, v)) in trainer.model.params.iter().zip(optimizer.m.iter_mut().zip(optimizer.v.iter_mut())) {
        for (key, slot) in [(format!("m.{}", p.name), m), (format!("v.{}", p.name), v)] {
            let t = moments.remove(&key).ok_or_else(|| Error::checkpoint(&origin, format!("optimizer state lacks {key}")))?;
            if t.shape() != p.value.shape() || t.dtype() != DType::F32 {
                return Err(Error::checkpoint(&origin, format!("optimizer tensor {key} is {:?} {}, expected {:?} f32", t.shape(), t.dtype(), p.value.shape())));
            }
            if !all_finite(&t)? {
                return Err(Error::checkpoint(&origin, format!("optimizer tensor {key} holds NaN or infinite values: the optimizer state is damaged")));
            }
            // sqrt is NaN exactly where a value is negative, and AdamW divides by sqrt(v).
            if key.starts_with("v.") && ops::sum_all(&ops::sqrt(&t)?)?.to_scalar()?.is_nan() {
                return Err(Error::checkpoint(&origin, format!("optimizer tensor {key} holds negative second moments: the optimizer state is damaged")));
            }
            *slot = t;
        }
    }
    if let Some(extra) = moments.keys().next() {
        return Err(Error::checkpoint(&origin, format!("unexpected optimizer tensor {extra}")));
    }
    Ok(())
}

/// Fails when `corpus` has ids the model cannot embed.
pub fn check_vocab(config: &Config, corpus: &Corpus) -> Result<()> {
    if corpus.vocab_size() > config.model.vocab_size {
        return Err(Error::data(
            corpus.path().display().to_string(),
            format!("has a vocabulary of {} tokens, but config {} embeds only {}", corpus.vocab_size(), config.model.name, config.model.vocab_size),
        ));
    }
    Ok(())
}

/// A trained model loaded from a checkpoint (a run directory or one step directory) for evaluation
/// or sampling, with its config and the data it was trained on.
pub struct LoadedModel {
    pub config: Config,
    pub model: crate::Model,
    pub step: u64,
    pub data: Option<PathBuf>,
}

pub fn load_model(path: &Path, device: &Device) -> Result<LoadedModel> {
    let ckpt = Checkpoint::open(path)?;
    let config = checkpoint_config(&ckpt)?;
    config.validate(&ckpt.dir().display().to_string())?;
    let tokens = config.train.batch_size.saturating_mul(config.train.seq_len);
    crate::memory::check_fits(device, crate::memory::inference_bytes(&config.model, tokens)?, &format!("loading {}", ckpt.dir().display()))?;
    let mut model = crate::Model::new(&config.model, device, 0)?;
    load_weights(&ckpt, &mut model, device)?;
    let data = ckpt.state().get("data").and_then(Value::as_str).map(PathBuf::from);
    Ok(LoadedModel { config, model, step: ckpt.step(), data })
}

/// The config a checkpoint was trained with.
fn checkpoint_config(ckpt: &Checkpoint) -> Result<Config> {
    serde_json::from_value(ckpt.config()?).map_err(|e| Error::checkpoint(ckpt.dir().display().to_string(), format!("config.json: {e}")))
}

/// Replaces `model`'s weights with the checkpoint's, checking names and shapes.
fn load_weights(ckpt: &Checkpoint, model: &mut crate::Model, device: &Device) -> Result<()> {
    let file = ckpt.model()?;
    model.params.load(&mut file.load_all(device)?, &file.path().display().to_string())
}
