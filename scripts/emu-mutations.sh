#!/usr/bin/env bash
# Mutation check of the emulated GPU: plants one deliberate bug at a time in a CUDA kernel, rebuilds,
# runs the GPU test that should notice under emulation (DSMOE_DEVICE=emu), and requires it to FAIL.
# The kernel file is restored after each mutation (and on exit or Ctrl-C), so the tree is left as it
# was. A mutation whose test still passes is reported and makes the script exit non-zero.
#
#   scripts/emu-mutations.sh            # all mutations
#   scripts/emu-mutations.sh 2 5        # only mutations 2 and 5
#
# Each mutation rebuilds the kernels crate and its dependents (the kernels are embedded in the
# binary), so a full run takes a while on a small machine. Needs NVRTC on LD_LIBRARY_PATH.
#
# The mutations (file, what changes, arch, test):
#   1 swapped ldmatrix order: the x4 fragment registers r1 and r2 exchanged (gemm_sm80.cuh), sm_80,
#     cuda_gemm.
#   2 wrong wgmma LBO/SBO: the MN-major descriptors' leading and stride byte offsets swapped
#     (gemm_sm90.cuh), sm_90a, cuda_gemm.
#   3 wrong swizzle: the wgmma descriptors claim the 64-byte swizzle while TMA writes 128-byte
#     swizzled tiles (gemm_sm90.cuh), sm_90a, cuda_gemm.
#   4 missing barrier before shared-memory reuse: the tiled reference GEMM's barrier between the
#     last read of a k-tile and the next tile's stores removed (gemm.cu), sm_90a, cuda_ops matmul.
#   5 wrong mbarrier parity: consumers wait for the opposite phase of the `full` barrier
#     (gemm_sm90.cuh), sm_90a, cuda_gemm.
#   6 off-by-one ragged bound: the unary kernels' tail loop stops one element short (elementwise.cu),
#     sm_90a, cuda_ops unary (the poisoned last element). Running one element past the end instead
#     survives: the caching allocator rounds blocks up, so the extra element lies inside a live
#     allocation, where no memory checker (compute-sanitizer's included) sees it.
set -euo pipefail
cd "$(dirname "$0")/.."
K=kernels-cuda/src/kernels

# name|file|perl substitution (literal old => new, applied once)|arch|test target|test filter
MUTATIONS=(
    "swapped ldmatrix order|$K/gemm_sm80.cuh|s/\Q: \"=r\"(r[0]), \"=r\"(r[1]), \"=r\"(r[2]), \"=r\"(r[3])\E/: \"=r\"(r[0]), \"=r\"(r[2]), \"=r\"(r[1]), \"=r\"(r[3])/|sm_80|cuda_gemm|every_form"
    "wrong wgmma LBO/SBO|$K/gemm_sm90.cuh|s/\Q, 8192, 1024)\E/, 1024, 8192)/g|sm_90a|cuda_gemm|every_form"
    "wrong swizzle|$K/gemm_sm90.cuh|s/\Q(u64)1 << 62;\E/(u64)2 << 62;/|sm_90a|cuda_gemm|every_form"
    "missing barrier before shared-memory reuse|$K/gemm.cu|s/\Q                __syncthreads();\E\n(\Q            }\E\n\n#pragma unroll\n)/\$1/|sm_90a|cuda_ops|matmul_matches_cpu"
    "wrong mbarrier parity|$K/gemm_sm90.cuh|s/\Qmbar_wait(full(s), (it \/ Tile::STAGES) & 1)\E/mbar_wait(full(s), ((it \/ Tile::STAGES) + 1) & 1)/|sm_90a|cuda_gemm|every_form"
    "off-by-one ragged bound|$K/elementwise.cu|s/\Qi < n; i += global_threads()) y[i] = from_float<T>(f(to_float(x[i])));\E/i + 1 < n; i += global_threads()) y[i] = from_float<T>(f(to_float(x[i])));/|sm_90a|cuda_ops|unary_ops"
)

SELECTED=("$@")
[ ${#SELECTED[@]} -eq 0 ] && SELECTED=($(seq 1 ${#MUTATIONS[@]}))

RESTORE=""
restore() {
    if [ -n "$RESTORE" ]; then
        git checkout -- "$RESTORE"
        RESTORE=""
    fi
}
trap restore EXIT INT TERM

export DSMOE_DEVICE=emu DSMOE_REQUIRE_GPU=1 DSMOE_EMU_SMS="${DSMOE_EMU_SMS:-2}"
cargo build --release -p vgpu-driver
survivors=0
for i in "${SELECTED[@]}"; do
    IFS='|' read -r name file subst arch test filter <<<"${MUTATIONS[$((i - 1))]}"
    if ! git diff --quiet -- "$file"; then
        echo "emu-mutations: $file has uncommitted changes; commit or stash them first" >&2
        exit 2
    fi
    RESTORE="$file"
    perl -0pi -e "$subst" "$file"
    if git diff --quiet -- "$file"; then
        echo "emu-mutations: mutation $i ($name) no longer applies to $file: update the script" >&2
        exit 2
    fi
    echo "== mutation $i: $name ($file, emulated $arch, $test $filter)"
    log=$(mktemp)
    if DSMOE_EMU_ARCH="$arch" cargo test --release -p engine --test "$test" -- "$filter" >"$log" 2>&1; then
        echo "   SURVIVED: the test passed with the bug in place"
        survivors=$((survivors + 1))
    else
        echo "   caught: $(grep -m1 -E "vgpu: CUDA_ERROR|panicked at|assertion|error:" "$log" || echo "test failed")"
        grep -m3 -E "^vgpu: |differs|relative|race|deadlock|invalid" "$log" | sed 's/^/     /' || true
    fi
    rm -f "$log"
    restore
done
# Rebuild the restored sources, so the next test run does not start from mutated binaries.
cargo test --release -p engine --test cuda_gemm --test cuda_ops --no-run >/dev/null 2>&1 || true
echo "== $survivors of ${#SELECTED[@]} mutations survived"
[ "$survivors" -eq 0 ]
