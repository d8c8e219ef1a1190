//! AdamW over a model's parameters: f32 moments beside f32 master weights, global-norm gradient
//! clipping, and the learning-rate schedule (linear warmup, cosine decay to a floor).

use autograd::Gradients;
use engine::{ops, AdamW, DType, Tensor};

use crate::config::TrainConfig;
use crate::expert_parallel::{local_rows, ExpertSplit};
use crate::params::Params;
use crate::{Error, Result};

pub struct Optimizer {
    /// First and second moments, in parameter order.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Updates applied so far (AdamW's bias correction counts from 1).
    pub step: u64,
}

/// What one update did.
pub struct UpdateStats {
    pub grad_norm: f64,
    pub clipped: bool,
}

impl Optimizer {
    /// Keeps only this rank's rows of the split expert matrices' moments (after loading them whole).
    pub fn split_experts(&mut self, split: &ExpertSplit, n_experts: usize) -> Result<()> {
        for &i in &split.params {
            self.m[i] = local_rows(&self.m[i], n_experts, split.group.as_ref())?;
            self.v[i] = local_rows(&self.v[i], n_experts, split.group.as_ref())?;
        }
        Ok(())
    }

    pub fn new(params: &Params) -> Result<Optimizer> {
        let zeros = |p: &autograd::Param| Tensor::zeros(p.value.shape().clone(), DType::F32, &p.value.device());
        Ok(Optimizer {
            m: params.iter().map(zeros).collect::<engine::Result<_>>()?,
            v: params.iter().map(zeros).collect::<engine::Result<_>>()?,
            step: 0,
        })
    }

    /// Applies one AdamW update from `grads` (already averaged over micro-batches). Parameters
    /// without a gradient (unused by the loss) are left alone. Weight decay applies to matrices
    /// only: decaying norm gains towards zero would fight the normalisation they exist for.
    /// With the experts split over ranks (`split`), the norm is the whole model's: the split
    /// matrices' squares are summed over the expert group.
    pub fn update(&mut self, params: &mut Params, grads: &Gradients, cfg: &TrainConfig, lr: f64, split: Option<&ExpertSplit>) -> Result<UpdateStats> {
        let (mut sq, mut split_sq) = (0.0, 0.0);
        let mut present = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            let g = grads.get(p.id()).map(|g| ops::cast(g, DType::F32)).transpose()?;
            if let Some(g) = &g {
                let s = ops::sum_all(&ops::mul(g, g)?)?.to_scalar()?;
                if split.is_some_and(|split| split.holds(i)) {
                    split_sq += s;
                } else {
                    sq += s;
                }
            }
            present.push(g);
        }
        if let Some(split) = split {
            let device = params.iter().next().map_or(engine::Device::Cpu, |p| p.value.device());
            sq += split.group.all_reduce_sum(&Tensor::from_slice(&[split_sq], [1], &device)?)?.to_vec::<f64>()?[0];
        }
        let grad_norm = sq.sqrt();
        if !grad_norm.is_finite() {
            return Err(Error::NonFiniteLoss { step: self.step + 1, loss: grad_norm });
        }
        let clipped = grad_norm > cfg.grad_clip;
        let scale = if clipped { cfg.grad_clip / grad_norm } else { 1.0 };
        self.step += 1;
        for (i, (p, g)) in params.iter_mut().zip(present).enumerate() {
            let Some(g) = g else { continue };
            let g = if clipped { ops::mul_scalar(&g, scale)? } else { g };
            let hp = AdamW {
                lr,
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: 1e-8,
                weight_decay: if p.value.rank() >= 2 { cfg.weight_decay } else { 0.0 },
                step: self.step,
            };
            ops::adamw_step(&mut p.value, &g, &mut self.m[i], &mut self.v[i], &hp)?;
        }
        Ok(UpdateStats { grad_norm, clipped })
    }
}

/// Learning rate at update `step` (from 1): linear warmup to `lr`, then cosine decay to `min_lr`
/// at `steps`.
pub fn learning_rate(cfg: &TrainConfig, step: u64) -> f64 {
    if cfg.warmup_steps > 0 && step <= cfg.warmup_steps {
        return cfg.lr * step as f64 / cfg.warmup_steps as f64;
    }
    let span = cfg.steps.saturating_sub(cfg.warmup_steps).max(1) as f64;
    let progress = ((step.saturating_sub(cfg.warmup_steps)) as f64 / span).min(1.0);
    cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}
