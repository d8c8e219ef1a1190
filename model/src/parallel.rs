//! Data parallelism: each rank of a data-parallel group runs the same model on its slice of the
//! global batch, and the gradients are summed across the group before every update, so every rank
//! applies the same update to the same weights.
//!
//! The result equals one process training on the whole global batch, up to the order of the sums.
//! For that, every loss term is computed over the global batch, not the rank's slice:
//!
//! - A mean over tokens (the cross-entropy, the MI loss's per-token entropy) is the group's sum of
//!   the ranks' local sums over the global count (`global_mean_all`).
//! - The MI loss's marginal term `−H(mean_x p(e|x))` is non-linear in the batch-average router
//!   distribution, so that average is all-reduced inside the forward (`batch_mean`) before the
//!   entropy is taken; the same holds for the load-balancing loss's mean probabilities and top-1
//!   fractions.
//!
//! `group_sum` makes these values global. Its backward passes the gradient through unchanged: every
//! rank holds the same loss `L(S)` of the global sum `S = Σ_r s_r`, and rank r's backward gives
//! `dL/dS · ds_r/dθ`; the gradient all-reduce then sums those to `dL/dθ`, exactly the single-process
//! gradient. So the loss value every rank reports is the global one, and nothing is scaled by the
//! group size by hand.
//!
//! Gradients are all-reduced in buckets of about `BUCKET_BYTES` by default (concatenated per dtype, one
//! collective per bucket, so small tensors do not each pay a collective's latency). By default the
//! buckets overlap the backward pass (`grad_buckets.rs`): the tape reports each parameter's
//! gradient as soon as it is final, and a bucket's non-blocking all-reduce starts as soon as it is
//! complete. `all_reduce_gradients` here is the other way, after the backward pass, one blocking
//! collective per bucket (`dsmoe train --reduce-after-backward`); on two ranks both give the same
//! bits.
//!
//! What does not carry over: the SMoE baseline's capacity is per rank (each rank drops tokens of
//! its own slice, as fairseq and DeepSpeed do), so SMoE data-parallel training matches a single
//! process only when no token is dropped.

use std::sync::Arc;

use autograd::{Gradients, Var};
use engine::comm::{Communicator, LocalComm};
use engine::{ops, Device, Shape, Tensor};

use crate::params::Params;
use crate::{Ctx, Error, Result};

/// Default gradient bucket size (`Trainer::grad_bucket_bytes`).
pub const BUCKET_BYTES: usize = 16 << 20;

/// The group of one, for single-process runs.
pub static SINGLE: LocalComm = LocalComm;

/// The sum of `x` over the group's ranks; the backward passes the gradient through (see above).
pub fn group_sum(group: &dyn Communicator, x: &Var) -> Result<Var> {
    if group.size() == 1 {
        return Ok(x.clone());
    }
    let value = group.all_reduce_sum(x.value())?;
    Ok(Var::custom("group_sum", value, &[x], 0, |g, _| Ok(vec![Some(g.clone())]))?)
}

/// The mean over rows (dim 0) of `x` ([rows, n]) across the whole global batch: the data group's
/// ranks each hold `rows` of them (equal slices; the trainer shards so).
pub fn batch_mean(ctx: &Ctx, x: &Var) -> Result<Var> {
    let group = ctx.data_group;
    if group.size() == 1 {
        return Ok(x.mean(0, false)?);
    }
    let rows = x.dims()[0] * group.size();
    Ok(group_sum(group, &x.sum(0, false)?)?.mul_scalar(1.0 / rows as f64)?)
}

/// The mean of every element of `x` across the global batch (equal slices per rank).
pub fn global_mean_all(ctx: &Ctx, x: &Var) -> Result<Var> {
    let group = ctx.data_group;
    if group.size() == 1 {
        return Ok(x.mean_all()?);
    }
    let n = x.value().elem_count() * group.size();
    Ok(group_sum(group, &x.sum_all()?)?.mul_scalar(1.0 / n as f64)?)
}

/// The group's sum of a tensor that carries no gradient (counts).
pub fn sum_constant(ctx: &Ctx, x: Tensor) -> Result<Tensor> {
    Ok(if ctx.data_group.size() == 1 { x } else { ctx.data_group.all_reduce_sum(&x)? })
}

/// Rank `rank`'s slice of a global batch of `rows` sequences: rows `[rank·rows/size, (rank+1)·rows/size)`.
pub fn shard_rows<T: Copy>(data: &[T], rows: usize, rank: usize, size: usize) -> Result<Vec<T>> {
    if rows % size != 0 {
        return Err(Error::Invalid {
            what: "batch_size",
            value: rows.to_string(),
            msg: format!("the global batch must split evenly over the {size} data-parallel ranks"),
        });
    }
    let per = data.len() / size;
    Ok(data[rank * per..(rank + 1) * per].to_vec())
}

/// Sums `grads` over the group, in buckets, so every rank ends with the global gradient. A
/// parameter that has a gradient on some rank and none on another (no token reached it there)
/// counts as zeros where missing, so every rank reduces the same buckets.
pub fn all_reduce_gradients(group: &dyn Communicator, params: &Params, grads: Gradients, bucket_bytes: usize) -> Result<Gradients> {
    if group.size() == 1 {
        return Ok(grads);
    }
    let present: Vec<u32> = params.iter().map(|p| grads.get(p.id()).is_some() as u32).collect();
    let device = params.iter().next().map(|p| p.value.device()).unwrap_or(Device::Cpu);
    let anywhere = group.all_reduce_sum(&Tensor::from_slice(&present, [present.len()], &device)?)?.to_vec::<u32>()?;
    let mut grads = grads;
    let mut out = Gradients::default();
    // Buckets: consecutive parameters of one dtype, up to `bucket_bytes` each.
    let mut bucket: Vec<(autograd::LeafId, Tensor)> = Vec::new();
    let mut bytes = 0;
    for (p, &count) in params.iter().zip(&anywhere) {
        if count == 0 {
            continue;
        }
        let g = match grads.remove(p.id()) {
            Some(g) => g,
            None => Tensor::zeros(p.value.shape().clone(), p.value.dtype(), &device)?,
        };
        if bucket.first().is_some_and(|(_, b)| b.dtype() != g.dtype()) || bytes + g.size_in_bytes() > bucket_bytes && !bucket.is_empty() {
            reduce_bucket(group, std::mem::take(&mut bucket), &mut out)?;
            bytes = 0;
        }
        bytes += g.size_in_bytes();
        bucket.push((p.id(), g));
    }
    reduce_bucket(group, bucket, &mut out)?;
    Ok(out)
}

fn reduce_bucket(group: &dyn Communicator, bucket: Vec<(autograd::LeafId, Tensor)>, out: &mut Gradients) -> Result<()> {
    if bucket.is_empty() {
        return Ok(());
    }
    let (ids, grads): (Vec<_>, Vec<_>) = bucket.into_iter().unzip();
    let shapes: Vec<Shape> = grads.iter().map(|g| g.shape().clone()).collect();
    let summed = group.all_reduce_sum(&flatten(&grads)?)?;
    for (id, g) in ids.into_iter().zip(unflatten(&summed, &shapes)?) {
        out.accumulate(id, g)?;
    }
    Ok(())
}

/// A bucket's tensors (one dtype) as one vector, in order: what one collective carries.
pub(crate) fn flatten(grads: &[Tensor]) -> engine::Result<Tensor> {
    let flat: Vec<Tensor> = grads.iter().map(|g| g.reshape([g.elem_count()])).collect::<engine::Result<_>>()?;
    let refs: Vec<&Tensor> = flat.iter().collect();
    ops::concat(&refs, 0)
}

/// `flatten`'s vector cut back into tensors of `shapes`.
pub(crate) fn unflatten(flat: &Tensor, shapes: &[Shape]) -> engine::Result<Vec<Tensor>> {
    let sizes: Vec<usize> = shapes.iter().map(Shape::elem_count).collect();
    ops::split(flat, &sizes, 0)?.into_iter().zip(shapes).map(|(part, shape)| part.reshape(shape.clone())).collect()
}

/// Fails on every rank unless every rank holds the same `fingerprint` (a hash of the config and the
/// run's state) as rank 0, naming the first rank that differs.
/// `device` is where the group's tensors live (the CPU for MPI, the GPU for NCCL).
pub fn check_same_everywhere(group: &dyn Communicator, device: &Device, what: &str, fingerprint: [u32; 8]) -> Result<()> {
    if group.size() == 1 {
        return Ok(());
    }
    let mine = Tensor::from_slice(&fingerprint, [1, 8], device)?;
    let all = group.all_gather(&mine)?.to_vec::<u32>()?;
    if let Some(bad) = all.chunks(8).position(|f| f != &all[..8]) {
        return Err(Error::Invalid {
            what: "parallel setup",
            value: what.into(),
            msg: format!("rank {bad} has a different {what} from rank 0 (every rank must start the same run with the same settings)"),
        });
    }
    Ok(())
}

/// A shared handle on the group of one, for a `Trainer` that runs alone.
pub fn single() -> Arc<dyn Communicator> {
    Arc::new(LocalComm)
}

/// The ranks of a job as a 2-D grid of `data` × `expert` ranks: expert groups of consecutive
/// world ranks (world rank = data rank · expert size + expert rank), each running one slice of
/// the batch with the experts split among its ranks, and data groups of the ranks holding the
/// same experts (`expert_parallel.rs`).
#[derive(Clone)]
pub struct Grid {
    pub world: Arc<dyn Communicator>,
    pub data: Arc<dyn Communicator>,
    pub expert: Arc<dyn Communicator>,
}

impl Grid {
    /// One process.
    pub fn single() -> Grid {
        Grid { world: single(), data: single(), expert: single() }
    }

    /// Every rank of `world` data parallel.
    pub fn data_parallel(world: Arc<dyn Communicator>) -> Grid {
        Grid { data: world.clone(), world, expert: single() }
    }

    /// `world` cut into expert groups of `expert_parallel` ranks. Every rank must call it at once
    /// with the same size (the splits are collective); a size that does not divide the world
    /// fails on every rank alike, before any collective.
    pub fn new(world: Arc<dyn Communicator>, expert_parallel: usize) -> Result<Grid> {
        let n = world.size();
        if expert_parallel == 0 || n % expert_parallel != 0 {
            let job = if n == 1 { "a single process (started without mpirun or RANK/WORLD_SIZE)".to_string() } else { format!("a job of {n} ranks") };
            return Err(Error::Invalid {
                what: "expert parallelism",
                value: expert_parallel.to_string(),
                msg: format!("{job} does not split into expert groups of {expert_parallel} (the world size must be data-parallel size x expert-parallel size)"),
            });
        }
        if expert_parallel == 1 {
            return Ok(Grid::data_parallel(world));
        }
        let (data_rank, expert_rank) = (world.rank() / expert_parallel, world.rank() % expert_parallel);
        let expert = world.split(data_rank, expert_rank)?;
        let data = world.split(expert_rank, data_rank)?;
        Ok(Grid { world, data, expert })
    }

    /// "2 data x 2 expert ranks over MPI", for messages.
    pub fn describe(&self) -> String {
        format!("{} data x {} expert-parallel ranks over {}", self.data.size(), self.expert.size(), self.world.transport())
    }
}

/// The u32 words of a SHA-256 of `bytes`, for `check_same_everywhere`.
pub fn fingerprint(bytes: &[u8]) -> [u32; 8] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    std::array::from_fn(|i| u32::from_le_bytes([d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]]))
}
