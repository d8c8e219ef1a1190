//! Collectives between processes: the contract every communicator implements, and the process
//! group a launcher set up.
//!
//! A `Communicator` is one rank's handle on a group of `size` processes, each holding tensors of
//! one device. The collectives are the ones data and expert parallelism need, with MPI's meaning:
//!
//! - `all_reduce_sum`: every rank gets the element-wise sum of every rank's tensor.
//! - `reduce_scatter_sum`: the sum, cut along dim 0 into `size` equal blocks; rank r gets block r.
//! - `all_gather`: every rank's tensor, concatenated along dim 0 in rank order.
//! - `all_to_all`: rank r sends rows `[o_q, o_q + send_rows[q])` of its tensor (dim 0, in order) to
//!   rank q, and gets back what every rank sent it, concatenated in source-rank order, with the
//!   per-source row counts. The counts are exchanged inside the call, so callers need not know them.
//! - `start_all_reduce_sum`: `all_reduce_sum` without waiting for it: a `PendingSum` whose `wait`
//!   gives the sum (`pending.rs`). MPI starts MPI_Iallreduce; NCCL queues the reduction on a
//!   communication stream of its own, after the compute stream's work so far, so the compute stream
//!   keeps going; the group of one (and any transport without its own) has it done at once.
//! - `broadcast`: every rank gets root's tensor (the others' shapes and dtypes must match it).
//! - `barrier`: returns when every rank has entered it.
//! - `split`: sub-communicators by colour, ordered by key (MPI_Comm_split), for a 2-D grid of
//!   data- and expert-parallel groups.
//!
//! Implementations, one per file: `LocalComm` (one process; every collective is the identity, so
//! code written for N ranks runs unchanged in one), `mpi` (CPU tensors over MPI; cargo feature
//! `mpi`) and `nccl` (CUDA tensors over NCCL, loaded at run time, so building needs no CUDA).
//! Reductions run in the tensor's dtype, except that bf16 and f16 are summed in f32 on MPI (MPI has
//! no 16-bit float sum). A collective is a blocking call for MPI (but for
//! `start_all_reduce_sum`); for NCCL it is queued on the device's stream like a kernel, so it is
//! ordered with the surrounding ops and a later copy to the host waits for it.
//!
//! Failure: a rank that returns an error from a collective has left the group unusable; the caller
//! must end the job (`abort` for MPI, whose `mpirun` then stops every rank; the NCCL path aborts the
//! communicator and exits). A rank that dies is MPI's to handle (its default error handler is fatal
//! and `mpirun` kills the job when one rank exits non-zero); NCCL's own timeout-free waits are why
//! its rendezvous has a timeout and the launcher is expected to stop the job.

#[cfg(feature = "mpi")]
pub mod mpi;
pub mod nccl;
mod nccl_lib;
pub mod pending;
pub mod rendezvous;

use std::sync::Arc;

use crate::{Error, Result, Tensor};
pub use pending::{InFlight, PendingSum};

pub trait Communicator: Send + Sync {
    /// This process's index in the group, 0-based.
    fn rank(&self) -> usize;
    /// Processes in the group.
    fn size(&self) -> usize;
    /// What carries the collectives, for messages: "local", "MPI", "NCCL".
    fn transport(&self) -> &'static str;
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor>;
    /// Starts `all_reduce_sum` of `x` and returns before it finishes. Every rank must start its
    /// reductions in the same order, as with any collective. The same sum, bit for bit, as
    /// `all_reduce_sum` on a group of two (one addition per element); on larger groups the
    /// transport may order the additions differently.
    fn start_all_reduce_sum(&self, x: &Tensor) -> Result<PendingSum> {
        Ok(PendingSum::Done(self.all_reduce_sum(x)?))
    }
    fn reduce_scatter_sum(&self, x: &Tensor) -> Result<Tensor>;
    fn all_gather(&self, x: &Tensor) -> Result<Tensor>;
    fn all_to_all(&self, x: &Tensor, send_rows: &[usize]) -> Result<(Tensor, Vec<usize>)>;
    fn broadcast(&self, x: &Tensor, root: usize) -> Result<Tensor>;
    fn barrier(&self) -> Result<()>;
    fn split(&self, color: usize, key: usize) -> Result<Arc<dyn Communicator>>;
}

/// The single-process group: rank 0 of 1. Every collective returns its input, which is exactly what
/// N ranks compute when N is 1.
pub struct LocalComm;

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn transport(&self) -> &'static str {
        "local"
    }
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn reduce_scatter_sum(&self, x: &Tensor) -> Result<Tensor> {
        check_rows_divisible("reduce_scatter_sum", x, 1)?;
        Ok(x.clone())
    }
    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        check_has_rows("all_gather", x)?;
        Ok(x.clone())
    }
    fn all_to_all(&self, x: &Tensor, send_rows: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        check_send_rows(x, send_rows, 1)?;
        Ok((x.clone(), send_rows.to_vec()))
    }
    fn broadcast(&self, x: &Tensor, root: usize) -> Result<Tensor> {
        check_root(root, 1)?;
        Ok(x.clone())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn split(&self, _color: usize, _key: usize) -> Result<Arc<dyn Communicator>> {
        Ok(Arc::new(LocalComm))
    }
}

/// Rows (dim 0) and the elements of one row.
pub(crate) fn rows_and_width(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    check_has_rows(op, x)?;
    let rows = x.dims()[0];
    Ok((rows, if rows == 0 { x.dims()[1..].iter().product() } else { x.elem_count() / rows }))
}

pub(crate) fn check_has_rows(op: &'static str, x: &Tensor) -> Result<()> {
    if x.rank() == 0 {
        return Err(Error::invalid(op, "needs a tensor with a leading (row) dimension, got a scalar"));
    }
    Ok(())
}

pub(crate) fn check_rows_divisible(op: &'static str, x: &Tensor, size: usize) -> Result<()> {
    check_has_rows(op, x)?;
    if x.dims()[0] % size != 0 {
        return Err(Error::invalid(op, format!("dim 0 of {:?} does not split into {size} equal blocks, one per rank", x.dims())));
    }
    Ok(())
}

pub(crate) fn check_send_rows(x: &Tensor, send_rows: &[usize], size: usize) -> Result<()> {
    check_has_rows("all_to_all", x)?;
    if send_rows.len() != size {
        return Err(Error::invalid("all_to_all", format!("{} send counts for a group of {size} ranks", send_rows.len())));
    }
    let total: usize = send_rows.iter().sum();
    if total != x.dims()[0] {
        return Err(Error::invalid("all_to_all", format!("send counts {send_rows:?} add up to {total} rows, the tensor has {}", x.dims()[0])));
    }
    Ok(())
}

pub(crate) fn check_root(root: usize, size: usize) -> Result<()> {
    if root >= size {
        return Err(Error::invalid("broadcast", format!("root rank {root} is not in a group of {size}")));
    }
    Ok(())
}

/// Where a launcher put this process: rank, size and local rank, from `mpirun` (OpenMPI's
/// `OMPI_COMM_WORLD_*`, or PMI's `PMI_RANK` / `PMI_SIZE`) or torchrun-style `RANK`, `WORLD_SIZE`,
/// `LOCAL_RANK`. `None` when the process was started alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    /// Started by an MPI launcher (so MPI is the way to reach the others).
    pub mpi: bool,
}

impl Launch {
    pub fn from_env() -> Result<Option<Launch>> {
        let var = |name: &str| -> Result<Option<usize>> {
            match std::env::var(name) {
                Err(_) => Ok(None),
                Ok(v) => v.trim().parse().map(Some).map_err(|_| Error::invalid("launch", format!("{name}={v:?} is not a non-negative integer"))),
            }
        };
        let (rank, size, local, mpi) = if let (Some(r), Some(s)) = (var("OMPI_COMM_WORLD_RANK")?, var("OMPI_COMM_WORLD_SIZE")?) {
            (r, s, var("OMPI_COMM_WORLD_LOCAL_RANK")?, true)
        } else if let (Some(r), Some(s)) = (var("PMI_RANK")?, var("PMI_SIZE")?) {
            (r, s, var("MPI_LOCALRANKID")?, true)
        } else if let (Some(r), Some(s)) = (var("RANK")?, var("WORLD_SIZE")?) {
            (r, s, var("LOCAL_RANK")?, false)
        } else {
            return Ok(None);
        };
        if size == 0 || rank >= size {
            return Err(Error::invalid("launch", format!("rank {rank} is not in a world of {size} processes")));
        }
        Ok(Some(Launch { rank, size, local_rank: local.unwrap_or(0), mpi }))
    }
}
