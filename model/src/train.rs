//! One training step and the loop around it. A step draws `grad_accum` micro-batches, runs each
//! forward and backward on its own tape (so activations of one micro-batch are freed before the
//! next), averages the gradients, and applies one AdamW update. A non-finite loss stops training
//! with an error before any update is applied, so no checkpoint is ever written from a diverged
//! model.
//!
//! Under data parallelism (`with_data_group`) every rank draws the same global batch from the same
//! data RNG and runs its own slice of it; losses are global means and the gradients are summed over
//! the group before the update (`parallel.rs`), so every rank applies the single-process update.
//! Under expert parallelism as well (`with_expert_group`), the ranks of one expert group run the
//! same slice, each with its share of the experts (`expert_parallel.rs`). The gradient all-reduce
//! overlaps the last micro-batch's backward pass (`grad_buckets.rs`) unless `overlap_reduce` is
//! off, when it runs after it (`parallel::all_reduce_gradients`); both give the same update.

use std::sync::Arc;
use std::time::Instant;

use autograd::{Gradients, Tape};
use engine::comm::Communicator;
use engine::{DType, Device, Rng, Tensor};

use crate::config::Config;
use crate::grad_buckets::{BucketPlan, OverlappedReduce};
use crate::optim::{learning_rate, Optimizer};
use crate::parallel::{all_reduce_gradients, global_mean_all, shard_rows};
use crate::transformer::{InferenceMode, Model};
use crate::{Ctx, Error, Result};

/// Where training batches come from.
pub trait BatchSource {
    /// `batch` random windows of `seq` tokens and their next-token targets, drawn with `rng`.
    fn sample_batch(&self, rng: &mut Rng, batch: usize, seq: usize) -> Result<(Vec<u32>, Vec<u32>)>;
}

pub struct Trainer {
    pub config: Config,
    pub model: Model,
    pub optimizer: Optimizer,
    /// Draws the training batches; saved in checkpoints so a resumed run sees the same data.
    pub data_rng: Rng,
    pub dtype: DType,
    /// The data-parallel group this trainer is one rank of (the group of one by default).
    pub data_group: Arc<dyn Communicator>,
    /// Start each gradient bucket's all-reduce during the backward pass, as soon as it is complete
    /// (the default), rather than all of them after it.
    pub overlap_reduce: bool,
    /// The most gradient bytes one all-reduce carries (`parallel::BUCKET_BYTES` by default).
    pub grad_bucket_bytes: usize,
    /// The overlapped reduction's bucket plan, made at the first step that needs it.
    bucket_plan: Option<BucketPlan>,
}

/// What one step measured.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub step: u64,
    /// Cross-entropy, nats per token, averaged over the micro-batches.
    pub loss: f64,
    /// The weighted auxiliary router loss.
    pub aux_loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    /// Seconds the step blocked on the data-parallel gradient all-reduce after the backward pass:
    /// the final wait when overlapped, the whole reduction otherwise (0 in one process).
    pub grad_reduce_wait_s: f64,
}

impl Trainer {
    pub fn new(config: Config, device: &engine::Device, dtype: DType) -> Result<Trainer> {
        config.validate(&config.model.name)?;
        crate::memory::check_fits(device, crate::memory::training_bytes(&config)?, &format!("training {}", config.model.name))?;
        let model = Model::new(&config.model, device, config.train.seed)?;
        let optimizer = Optimizer::new(&model.params)?;
        let data_rng = Rng::new(config.train.seed ^ 0x5eed_da7a);
        Ok(Trainer { config, model, optimizer, data_rng, dtype, data_group: crate::parallel::single(), overlap_reduce: true, grad_bucket_bytes: crate::parallel::BUCKET_BYTES, bucket_plan: None })
    }

    /// Makes this trainer one rank of a data-parallel group: each rank runs an equal slice of every
    /// global batch of `batch_size` sequences.
    pub fn with_data_group(mut self, group: Arc<dyn Communicator>) -> Result<Trainer> {
        let (b, n) = (self.config.train.batch_size, group.size());
        if b % n != 0 {
            return Err(Error::Invalid {
                what: "batch_size",
                value: b.to_string(),
                msg: format!("{} splits the global batch over {n} data-parallel ranks, and {b} sequences do not split evenly", group.transport()),
            });
        }
        self.data_group = group;
        Ok(self)
    }

    /// Splits the experts over `group` (expert parallelism): the model and AdamW's moments keep
    /// this rank's experts. Call it on the whole state, fresh or loaded from a checkpoint.
    pub fn with_expert_group(mut self, group: Arc<dyn Communicator>) -> Result<Trainer> {
        self.model.split_experts(group)?;
        if let Some(split) = &self.model.expert_split {
            self.optimizer.split_experts(split, self.config.model.mlp.n_experts)?;
        }
        Ok(self)
    }

    pub fn step(&mut self, data: &dyn BatchSource) -> Result<StepReport> {
        let t = &self.config.train;
        let batches = (0..t.grad_accum).map(|_| data.sample_batch(&mut self.data_rng, t.batch_size, t.seq_len)).collect::<Result<Vec<_>>>()?;
        // A single-process CPU step runs on the pool with the other workers polling between ops
        // (`on_pool_kept_awake`); a step with peers may block in a collective, so it does not
        // hold the pool's workers.
        if matches!(self.model.device(), Device::Cpu) && self.data_group.size() == 1 && self.model.expert_split.is_none() {
            return engine::cpu::on_pool_kept_awake(|| self.step_on(batches));
        }
        self.step_on(batches)
    }

    /// One optimizer step over the micro-batches `batches` (inputs, targets).
    fn step_on(&mut self, batches: Vec<(Vec<u32>, Vec<u32>)>) -> Result<StepReport> {
        let t = &self.config.train;
        let (batch, seq, accum) = (t.batch_size, t.seq_len, t.grad_accum);
        let device = self.model.device();
        let group = self.data_group.clone();
        let (rank, ranks) = (group.rank(), group.size());
        let local = batch / ranks;
        let (mut loss_sum, mut aux_sum) = (0.0, 0.0);
        let mut total: Option<Gradients> = None;
        let mut reduced = None;
        let next_step = self.optimizer.step + 1;
        for (micro, (inputs, targets)) in batches.into_iter().enumerate() {
            let (inputs, targets) = (shard_rows(&inputs, batch, rank, ranks)?, shard_rows(&targets, batch, rank, ranks)?);
            let input = Tensor::from_slice(&inputs, [inputs.len()], &device)?;
            let target = Tensor::from_slice(&targets, [targets.len()], &device)?;
            let tape = Tape::new();
            let ctx = Ctx::train(&tape, self.dtype).with_data_group(group.as_ref());
            let out = self.model.forward(&ctx, &input, local, seq, InferenceMode::DENSE)?;
            let ce = global_mean_all(&ctx, &out.logits.cross_entropy(&target)?.cast(DType::F32)?)?;
            let ce_value = ce.value().to_scalar()?;
            let mut loss = ce;
            if let Some(aux) = &out.aux_loss {
                let aux = aux.cast(DType::F32)?;
                aux_sum += aux.value().to_scalar()?;
                loss = loss.add(&aux)?;
            }
            if !ce_value.is_finite() {
                return Err(Error::NonFiniteLoss { step: next_step, loss: ce_value });
            }
            loss_sum += ce_value;
            let loss = if accum > 1 { loss.mul_scalar(1.0 / accum as f64)? } else { loss };
            if self.overlap_reduce && ranks > 1 && micro + 1 == accum {
                if !self.bucket_plan.as_ref().is_some_and(|p| p.fits(&self.model.params, self.grad_bucket_bytes)) {
                    self.bucket_plan = Some(BucketPlan::new(&self.model.params, self.grad_bucket_bytes));
                }
                let plan = self.bucket_plan.as_ref().expect("made above");
                let mut reduce = OverlappedReduce::new(group.as_ref(), plan, total.take().unwrap_or_default());
                tape.backward_with_hook(&loss, &mut |id, g| reduce.ready(id, g))?;
                reduced = Some(reduce.finish()?);
                continue;
            }
            let grads = tape.backward(&loss)?;
            match total.as_mut() {
                None => total = Some(grads),
                Some(acc) => acc.merge(grads)?,
            }
        }
        let lr = learning_rate(&self.config.train, next_step);
        let (grads, wait) = match reduced {
            Some((grads, wait)) => (grads, wait.blocked),
            None => {
                let start = Instant::now();
                let grads = all_reduce_gradients(group.as_ref(), &self.model.params, total.expect("grad_accum >= 1"), self.grad_bucket_bytes)?;
                (grads, start.elapsed())
            }
        };
        let update = self.optimizer.update(&mut self.model.params, &grads, &self.config.train, lr, self.model.expert_split.as_ref())?;
        Ok(StepReport {
            step: self.optimizer.step,
            loss: loss_sum / accum as f64,
            aux_loss: aux_sum / accum as f64,
            lr,
            grad_norm: update.grad_norm,
            tokens: batch * seq * accum,
            grad_reduce_wait_s: wait.as_secs_f64(),
        })
    }
}
