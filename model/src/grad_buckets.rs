//! The data-parallel gradient all-reduce overlapped with the backward pass: each bucket of
//! gradients starts its all-reduce the moment its last gradient is final, while the tape's walk
//! goes on computing the rest (`Tape::backward_with_hook` reports each parameter's gradient when
//! the walk has passed its last use).
//!
//! Buckets: the parameters in reverse creation order (the model creates them in forward order,
//! so this is about the order the backward pass finishes them: the output head and last layer
//! first, the embedding last), cut into runs of one dtype of at most `bucket_bytes` (or one
//! parameter, if larger). The plan is
//! fixed before the walk and is the same on every rank, and buckets start strictly in plan order:
//! every rank must start its collectives in the same order, and a readiness order taken from the
//! walk could differ between ranks whose graphs differ (a data-dependent op). A bucket that is
//! complete waits for the ones before it; with the plan in about the walk's order that wait is
//! short.
//!
//! Launch: the bucket's gradients are flattened into one tensor and handed to
//! `start_all_reduce_sum` (MPI_Iallreduce on MPI; on NCCL a reduction queued on the communication
//! stream after the compute stream's work so far, so the compute stream runs on). `finish`
//! treats every parameter the walk did not report as gradient-free, starts what is left, sums the
//! presence flags (a parameter with a gradient on no rank gets none, as in one process), waits
//! for every bucket in order and splits the sums back into per-parameter gradients.
//!
//! Equality with the reduction after backward (`parallel::all_reduce_gradients`): the sum of
//! each element is the same set of rank values; bucket boundaries only decide which elements
//! travel together. On two ranks each element is one addition, which commutes, so the result is
//! bit-identical (checked in `scripts/mpi-tests.sh`). On more ranks the transport's algorithm
//! (ring or tree, chosen by message size, and libnbc's schedules for the non-blocking form) may
//! add the ranks' values in another order for some elements, so the two agree to rounding only.
//!
//! Gradient accumulation: the micro-batches before the last run a plain backward; their summed
//! gradients (`earlier`) are added to the last micro-batch's as each is reported, in the same order
//! as `Gradients::merge` (earlier + latest), so accumulation gives the same bits either way.
//!
//! Progress: OpenMPI's non-blocking collectives advance only inside MPI calls, so each report polls
//! the buckets in flight (MPI_Test); on NCCL a poll is an event query and costs nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use autograd::{Gradients, LeafId};
use engine::comm::{Communicator, PendingSum};
use engine::{ops, DType, Device, Shape, Tensor};

use crate::params::Params;
use crate::parallel::{flatten, unflatten};
use crate::Result;

struct Member {
    id: LeafId,
    name: String,
    shape: Shape,
    dtype: DType,
}

/// Which parameters travel together, in which order. It depends only on the parameters and the
/// bucket size, so a trainer builds it once and reuses it every step (`fits` says when it must
/// be rebuilt).
pub struct BucketPlan {
    bucket_bytes: usize,
    device: Device,
    buckets: Vec<Vec<Member>>,
    /// Bucket and position in it of every parameter.
    slot: HashMap<LeafId, (usize, usize)>,
}

impl BucketPlan {
    pub fn new(params: &Params, bucket_bytes: usize) -> BucketPlan {
        let device = params.iter().next().map(|p| p.value.device()).unwrap_or(Device::Cpu);
        let mut buckets: Vec<Vec<Member>> = Vec::new();
        let mut bytes = 0;
        for p in params.iter().collect::<Vec<_>>().into_iter().rev() {
            let size = p.value.size_in_bytes();
            let fits = buckets.last().is_some_and(|b| b[0].dtype == p.value.dtype() && bytes + size <= bucket_bytes);
            if !fits {
                buckets.push(Vec::new());
                bytes = 0;
            }
            buckets.last_mut().expect("pushed above").push(Member { id: p.id(), name: p.name.clone(), shape: p.value.shape().clone(), dtype: p.value.dtype() });
            bytes += size;
        }
        let slot = buckets.iter().enumerate().flat_map(|(b, bucket)| bucket.iter().enumerate().map(move |(i, m)| (m.id, (b, i)))).collect();
        BucketPlan { bucket_bytes, device, buckets, slot }
    }

    /// Whether this plan was made for these parameters (the same leaves, shapes and dtypes) and
    /// this bucket size.
    pub fn fits(&self, params: &Params, bucket_bytes: usize) -> bool {
        let mut planned = self.buckets.iter().flatten().rev();
        bucket_bytes == self.bucket_bytes
            && params.iter().all(|p| planned.next().is_some_and(|m| m.id == p.id() && m.shape == *p.value.shape() && m.dtype == p.value.dtype()))
            && planned.next().is_none()
    }
}

/// One step's overlapped gradient all-reduce over `group`, following `plan`.
pub struct OverlappedReduce<'g> {
    group: &'g dyn Communicator,
    plan: &'g BucketPlan,
    /// The reported gradients, by bucket then position; taken when the bucket starts.
    grads: Vec<Vec<Option<Tensor>>>,
    /// Members of each bucket not reported yet.
    missing: Vec<usize>,
    /// Whether the parameter had a gradient on this rank, by bucket then position.
    present: Vec<Vec<bool>>,
    in_flight: Vec<PendingSum>,
    earlier: Gradients,
}

/// What `finish` measured: how long it blocked on the reductions after the walk ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReduceWait {
    pub blocked: Duration,
}

impl<'g> OverlappedReduce<'g> {
    /// A step's reduction; `earlier` holds the summed gradients of the step's earlier
    /// micro-batches (empty with one).
    pub fn new(group: &'g dyn Communicator, plan: &'g BucketPlan, earlier: Gradients) -> OverlappedReduce<'g> {
        let grads = plan.buckets.iter().map(|b| vec![None; b.len()]).collect();
        let missing = plan.buckets.iter().map(Vec::len).collect();
        let present = plan.buckets.iter().map(|b| vec![false; b.len()]).collect();
        OverlappedReduce { group, plan, grads, missing, present, in_flight: Vec::new(), earlier }
    }

    /// The walk's report for leaf `id`: its final gradient on this micro-batch, or `None`. Leaves
    /// that are not parameters (watched inputs) are ignored.
    pub fn ready(&mut self, id: LeafId, grad: Option<&Tensor>) -> engine::Result<()> {
        let Some(&(b, i)) = self.plan.slot.get(&id) else { return Ok(()) };
        let m = &self.plan.buckets[b][i];
        // A started bucket had every member reported.
        if b < self.in_flight.len() || self.grads[b][i].is_some() {
            return Err(engine::Error::invalid("gradient all-reduce", format!("{}: the parameter's gradient was reported twice in one backward pass", m.name)));
        }
        let total = match (self.earlier.remove(id), grad) {
            (Some(e), Some(g)) => Some(ops::add(&e, g)?),
            (e, g) => e.or_else(|| g.cloned()),
        };
        if let Some(g) = &total {
            if g.dtype() != m.dtype || g.shape() != &m.shape {
                return Err(engine::Error::invalid("gradient all-reduce", format!("{}: the gradient is {:?} {}, the parameter {:?} {}", m.name, g.dims(), g.dtype(), m.shape.dims(), m.dtype)));
            }
        }
        self.present[b][i] = total.is_some();
        self.grads[b][i] = Some(match total {
            Some(g) => g,
            None => Tensor::zeros(m.shape.clone(), m.dtype, &self.plan.device)?,
        });
        self.missing[b] -= 1;
        self.launch_complete()?;
        for p in &mut self.in_flight {
            p.poll()?;
        }
        Ok(())
    }

    /// Starts every complete bucket whose predecessors have all started.
    fn launch_complete(&mut self) -> engine::Result<()> {
        while self.missing.get(self.in_flight.len()) == Some(&0) {
            let bucket = &mut self.grads[self.in_flight.len()];
            let grads: Vec<Tensor> = bucket.iter_mut().map(|g| g.take().expect("a complete bucket has every gradient")).collect();
            let pending = self.group.start_all_reduce_sum(&flatten(&grads)?)?;
            self.in_flight.push(pending);
        }
        Ok(())
    }

    /// Ends the step's reduction: parameters the walk never reached count as gradient-free, the
    /// remaining buckets start, and every rank gets the group's summed gradients.
    pub fn finish(mut self) -> Result<(Gradients, ReduceWait)> {
        // In the buckets not started yet, a member without a gradient is one not reported.
        let started = self.in_flight.len();
        let unreported: Vec<LeafId> = self.plan.buckets[started..].iter().zip(&self.grads[started..]).flat_map(|(b, grads)| b.iter().zip(grads).filter(|(_, g)| g.is_none()).map(|(m, _)| m.id)).collect();
        for id in unreported {
            self.ready(id, None)?;
        }
        let start = Instant::now();
        let flags: Vec<u32> = self.present.iter().flatten().map(|&p| p as u32).collect();
        let anywhere = self.group.all_reduce_sum(&Tensor::from_slice(&flags, [flags.len()], &self.plan.device)?)?.to_vec::<u32>()?;
        let mut out = Gradients::default();
        let mut flag = anywhere.iter();
        for (bucket, pending) in self.plan.buckets.iter().zip(std::mem::take(&mut self.in_flight)) {
            let shapes: Vec<Shape> = bucket.iter().map(|m| m.shape.clone()).collect();
            for (m, g) in bucket.iter().zip(unflatten(&pending.wait()?, &shapes)?) {
                if *flag.next().expect("one flag per parameter") > 0 {
                    out.accumulate(m.id, g)?;
                }
            }
        }
        Ok((out, ReduceWait { blocked: start.elapsed() }))
    }
}

#[cfg(test)]
mod tests {
    use engine::comm::LocalComm;
    use engine::Rng;

    use super::*;
    use crate::params::Init;

    fn values(t: &Tensor) -> Vec<f64> {
        t.to_f64_vec().unwrap()
    }

    /// On the group of one the reduction returns each parameter's gradient (plus the earlier
    /// micro-batches'), whatever order they are reported in; buckets start only in plan order;
    /// a parameter with no gradient anywhere gets none, and a second report is an error.
    #[test]
    fn buckets_start_in_plan_order_and_return_every_gradient() {
        let (dev, mut rng) = (Device::Cpu, Rng::new(7));
        let mut params = Params::default();
        let ids: Vec<_> = [("a", 6), ("b", 4), ("c", 3), ("d", 5)].iter().map(|&(n, len)| params.add(n.into(), &[len], Init::Ones, &dev, &mut rng).unwrap()).collect();
        let id = |i: usize| params.get(ids[i]).id();
        let t = |v: f64, len: usize| Tensor::from_f64s(&vec![v; len], [len], DType::F32, &dev).unwrap();
        let mut earlier = Gradients::default();
        earlier.accumulate(id(0), t(1.0, 6)).unwrap();
        earlier.accumulate(id(3), t(2.0, 5)).unwrap();
        // 16 bytes a bucket: d | c | b | a (reverse creation order, one each).
        let plan = BucketPlan::new(&params, 16);
        assert_eq!(plan.buckets.len(), 4);
        assert!(plan.fits(&params, 16) && !plan.fits(&params, 32));
        let mut reduce = OverlappedReduce::new(&LocalComm, &plan, earlier);
        reduce.ready(id(1), Some(&t(3.0, 4))).unwrap();
        assert_eq!(reduce.in_flight.len(), 0, "b is complete but d and c are not");
        reduce.ready(id(3), None).unwrap();
        assert_eq!(reduce.in_flight.len(), 1, "d starts (its earlier gradient alone)");
        reduce.ready(id(0), Some(&t(0.5, 6))).unwrap();
        assert_eq!(reduce.in_flight.len(), 1, "c still holds back b and a");
        for again in [0, 3] {
            let err = reduce.ready(id(again), None).unwrap_err();
            assert!(err.to_string().contains("reported twice"), "{err}");
        }
        let (grads, _) = reduce.finish().unwrap();
        assert_eq!(values(grads.get(id(0)).unwrap()), vec![1.5; 6]);
        assert_eq!(values(grads.get(id(1)).unwrap()), vec![3.0; 4]);
        assert!(grads.get(id(2)).is_none(), "c had a gradient nowhere");
        assert_eq!(values(grads.get(id(3)).unwrap()), vec![2.0; 5]);
    }
}
