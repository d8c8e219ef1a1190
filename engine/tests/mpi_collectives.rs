//! The MPI communicator against locally computed results, at whatever size `mpirun` starts
//! (`scripts/mpi-tests.sh` runs it on 2 ranks). Built only with `--features mpi`; its own `main`
//! (no test harness), because MPI is started once per process.

mod comm_support;

use engine::comm::{mpi, Communicator};
use engine::Device;

fn main() {
    let world = mpi::init().expect("MPI starts");
    comm_support::check_collectives(world.as_ref(), &Device::Cpu);
    println!("mpi_collectives: rank {} of {}: every collective matches the local result", world.rank(), world.size());
    drop(world);
    mpi::finalize();
}
