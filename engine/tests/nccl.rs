//! The NCCL communicator at world size 1 on the first GPU: the communicator is set up from a fresh
//! unique id and every collective is checked against the local result. Multi-GPU runs are untested
//! until a machine with several GPUs is available. Not run on the emulated GPU (scripts/emu-tests.sh
//! leaves it out): NCCL drives real GPUs through the CUDA runtime, which the emulator does not
//! provide.

mod comm_support;

use engine::comm::nccl::{unique_id, NcclComm};

#[test]
fn nccl_world_of_one_matches_local_results() {
    let Some(device) = engine::cuda::test_device() else { return };
    let engine::Device::Cuda(ordinal) = device else { unreachable!("test_device is a CUDA device") };
    let comm = NcclComm::new(ordinal, 0, 1, unique_id().expect("libnccl loads (LD_LIBRARY_PATH or DSMOE_NCCL_LIB)")).expect("NCCL communicator");
    comm_support::check_collectives(&comm, &device);
}
