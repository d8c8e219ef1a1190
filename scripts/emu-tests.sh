#!/usr/bin/env bash
# Runs every GPU test on the emulated GPU: the `vgpu` crate's PTX emulator behind the CUDA driver
# API (vgpu-driver/), selected with DSMOE_DEVICE=emu, once per architecture.
#
#   scripts/emu-tests.sh                 # emulated sm_90a, then sm_80
#   scripts/emu-tests.sh sm_80           # one architecture
#   scripts/emu-tests.sh sm_90a -- cuda_gemm   # extra arguments go to the test binaries
#
# - DSMOE_REQUIRE_GPU=1: a GPU test that would print `skipped:` fails instead, so nothing passes by
#   not running.
# - DSMOE_EMU_SMS (default 2): few SMs, so the persistent GEMM kernels walk several tiles per block
#   at test sizes (ring and mbarrier phases across tiles, scratch reuse).
# - NVRTC must be loadable (LD_LIBRARY_PATH), as for a real GPU: the kernels are compiled at run
#   time and the emulator executes their PTX.
# Prints the wall time of each architecture's run.
set -euo pipefail
cd "$(dirname "$0")/.."

ARCHS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    ARCHS+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
[ ${#ARCHS[@]} -eq 0 ] && ARCHS=(sm_90a sm_80)

# Every test file that takes a device from engine::cuda::test_device(), but `nccl`: NCCL drives
# real GPUs through the CUDA runtime and its own transports, which the emulated driver does not
# provide, so on the emulated device it could only fail.
GPU_TESTS=(--test cuda_ops --test cuda_gemm --test cuda_moe_dense --test cuda_moe_sparse --test cuda_attention --test devices --test backward_parity --test gpu_step --test emulated_train)

export DSMOE_DEVICE=emu DSMOE_REQUIRE_GPU=1
export DSMOE_EMU_SMS="${DSMOE_EMU_SMS:-2}"
cargo build --release -p vgpu-driver
for arch in "${ARCHS[@]}"; do
    echo "== GPU tests on the emulated $arch ($DSMOE_EMU_SMS SMs)"
    start=$(date +%s)
    DSMOE_EMU_ARCH="$arch" cargo test --workspace --release --no-fail-fast "${GPU_TESTS[@]}" -- "$@"
    echo "== emulated $arch: $(( $(date +%s) - start )) s"
done
