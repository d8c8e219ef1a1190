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
# - Entry coverage: the driver logs every launched kernel entry (DSMOE_EMU_LAUNCH_LOG, one file per
#   architecture under target/); after the suite, engine/tests/emu_entry_coverage.rs compiles every
#   module for the architecture and fails with the names of the `.entry`s of its PTX that no test
#   launched (entries that only trap there, the sm_90a GEMM and attention on sm_80, excepted). On
#   sm_90a the GEMM and attention tests run once more with DSMOE_GEMM_PATH=sm80 and
#   DSMOE_ATTENTION_PATH=sm80, the sm_80 kernels being real code there too. Skipped when extra arguments select a subset of the tests.
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
GPU_TESTS=(--test cuda_ops --test cuda_gemm --test cuda_moe_dense --test cuda_moe_sparse --test cuda_attention --test cuda_paged_attention --test devices --test backward_parity --test gpu_step --test emulated_train)

export DSMOE_DEVICE=emu DSMOE_REQUIRE_GPU=1
export DSMOE_EMU_SMS="${DSMOE_EMU_SMS:-2}"
cargo build --release -p vgpu-driver
for arch in "${ARCHS[@]}"; do
    echo "== GPU tests on the emulated $arch ($DSMOE_EMU_SMS SMs)"
    start=$(date +%s)
    log="$PWD/target/emu-launches-$arch.log"
    rm -f "$log"
    DSMOE_EMU_ARCH="$arch" DSMOE_EMU_LAUNCH_LOG="$log" cargo test --workspace --release --no-fail-fast "${GPU_TESTS[@]}" -- "$@"
    if [ $# -eq 0 ]; then
        if [ "$arch" = sm_90a ]; then
            # The sm_80 GEMM is real code on Hopper too (DSMOE_GEMM_PATH=sm80 selects it there).
            DSMOE_EMU_ARCH="$arch" DSMOE_EMU_LAUNCH_LOG="$log" DSMOE_GEMM_PATH=sm80 cargo test --workspace --release --test cuda_gemm -- every_form_and_dtype
            # Likewise the sm_80 attention forward and dk/dv (DSMOE_ATTENTION_PATH=sm80).
            DSMOE_EMU_ARCH="$arch" DSMOE_EMU_LAUNCH_LOG="$log" DSMOE_ATTENTION_PATH=sm80 cargo test --workspace --release --test cuda_attention -- every_form_and_dtype
        fi
        DSMOE_EMU_ARCH="$arch" DSMOE_EMU_LAUNCH_LOG="$log" cargo test --workspace --release --test emu_entry_coverage -- --ignored --nocapture
    fi
    echo "== emulated $arch: $(( $(date +%s) - start )) s"
done
