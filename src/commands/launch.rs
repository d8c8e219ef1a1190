//! Joining the job a launcher started: `mpirun -np N dsmoe train ...` (MPI's rank and size), or the
//! torchrun-style variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
//!
//! The transport follows the device: CPU ranks talk over MPI (a binary built with `--features
//! mpi`); CUDA ranks over NCCL, each on `cuda:LOCAL_RANK`, with NCCL's unique id broadcast over MPI
//! under mpirun or handed out by the TCP rendezvous at MASTER_ADDR:MASTER_PORT otherwise. Started
//! alone, the group is the process itself and nothing else changes.
//!
//! Failure: under MPI a rank that fails prints its error and calls MPI_Abort, which makes `mpirun`
//! end every rank at once (as it does when a rank dies), so no rank waits in a collective for one
//! that is gone. Under the torchrun-style launch the failed rank exits non-zero; NCCL has no
//! timeout of its own, so ending the others is the launcher's part (torchrun stops the group when
//! one worker fails).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use engine::comm::{nccl::NcclComm, Communicator, Launch};
use engine::Device;

/// How long the NCCL rendezvous waits for every rank.
const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Job {
    /// The data-parallel group: every rank of the job.
    pub group: Arc<dyn Communicator>,
    /// MPI was started (and must be finalised, or aborted on failure).
    mpi: bool,
}

impl Job {
    /// Joins the launcher's job, if any. `device` is the parsed `--device`; under a launcher, a CUDA
    /// device means `cuda:LOCAL_RANK`, which is returned.
    pub fn join(device: Device) -> Result<(Job, Device)> {
        let Some(launch) = Launch::from_env()? else {
            return Ok((Job { group: model::parallel::single(), mpi: false }, device));
        };
        let device = match device {
            Device::Cuda(_) => Device::Cuda(launch.local_rank),
            d => d,
        };
        let mpi = if launch.mpi { Some(start_mpi()?) } else { None };
        let group: Arc<dyn Communicator> = match (device, &mpi) {
            (Device::Cuda(ordinal), _) => Arc::new(
                NcclComm::connect(&launch, ordinal, mpi.as_deref(), RENDEZVOUS_TIMEOUT)
                    .with_context(|| format!("rank {} of {}: setting up NCCL on cuda:{ordinal}", launch.rank, launch.size))?,
            ),
            (Device::Cpu, Some(world)) => world.clone(),
            (Device::Cpu, None) => bail!(
                "rank {} of {}: CPU ranks talk over MPI: start the job with mpirun (the RANK/WORLD_SIZE launch needs CUDA devices, for NCCL)",
                launch.rank,
                launch.size
            ),
        };
        Ok((Job { group, mpi: mpi.is_some() }, device))
    }

    /// Ends the job's part in this process: under MPI, a failure aborts every rank (after printing
    /// this rank's error) and success finalises MPI.
    pub fn finish(self, result: Result<()>) -> Result<()> {
        if !self.mpi {
            return result;
        }
        let (rank, size) = (self.group.rank(), self.group.size());
        drop(self.group);
        match result {
            Err(e) if size > 1 => {
                eprintln!("error: rank {rank} of {size}: {e:#}");
                eprintln!("error: rank {rank} is ending the job (MPI_Abort)");
                abort_mpi()
            }
            r => {
                finalize_mpi();
                r
            }
        }
    }
}

#[cfg(feature = "mpi")]
fn start_mpi() -> Result<Arc<dyn Communicator>> {
    Ok(engine::comm::mpi::init()?)
}

#[cfg(not(feature = "mpi"))]
fn start_mpi() -> Result<Arc<dyn Communicator>> {
    bail!("started by an MPI launcher, but this dsmoe was built without MPI: rebuild with `cargo build --release --features mpi`")
}

#[cfg(feature = "mpi")]
fn abort_mpi() -> ! {
    engine::comm::mpi::abort(1)
}

#[cfg(not(feature = "mpi"))]
fn abort_mpi() -> ! {
    unreachable!("MPI is never started without the mpi feature")
}

#[cfg(feature = "mpi")]
fn finalize_mpi() {
    engine::comm::mpi::finalize()
}

#[cfg(not(feature = "mpi"))]
fn finalize_mpi() {}
