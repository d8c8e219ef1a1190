//! An all-reduce that was started and not yet waited for: what `Communicator::start_all_reduce_sum`
//! returns, so a caller can launch a reduction and keep computing while it runs (the data-parallel
//! gradient buckets, launched during the backward pass).
//!
//! Each transport keeps what its collective needs alive inside the handle until `wait`: MPI's send
//! and receive buffers and its request (MPI_Iallreduce), NCCL's input tensor and the event that
//! marks the end of the reduction on the communication stream. `wait` hands back the sum; for
//! NCCL it blocks nothing on the host but orders the device's compute stream after the reduction,
//! so every later kernel sees the sum. A handle dropped without waiting (an error path, after which
//! the job ends) never frees memory a reduction may still use: NCCL's orders the compute stream
//! after the reduction before its input goes back to the allocator, and MPI's leaks its buffers
//! rather than block on a peer that may never start the same reduction.
//!
//! `poll` lets a transport whose collectives progress only inside library calls (OpenMPI's
//! non-blocking collectives, without an asynchronous progress thread) move one forward while the
//! caller is busy elsewhere; callers poke it now and then and otherwise ignore it.

use crate::{Result, Tensor};

/// A reduction in flight on some transport.
pub trait InFlight: Send {
    /// Lets the reduction progress; true once it has finished. Never blocks.
    fn poll(&mut self) -> Result<bool>;
    /// Blocks until the reduction is done (for NCCL: orders the compute stream after it) and
    /// returns the sum.
    fn wait(self: Box<Self>) -> Result<Tensor>;
}

/// A started all-reduce, or the result of one that finished at once (the group of one, or a
/// transport without non-blocking collectives).
pub enum PendingSum {
    Done(Tensor),
    InFlight(Box<dyn InFlight>),
}

impl PendingSum {
    /// Lets the reduction progress without blocking; true once it has finished.
    pub fn poll(&mut self) -> Result<bool> {
        match self {
            PendingSum::Done(_) => Ok(true),
            PendingSum::InFlight(f) => f.poll(),
        }
    }

    /// The sum, waiting for it if need be.
    pub fn wait(self) -> Result<Tensor> {
        match self {
            PendingSum::Done(t) => Ok(t),
            PendingSum::InFlight(f) => f.wait(),
        }
    }
}
