// gemm_sm80.cu: the engine's tensor-core GEMM for compute capability 8.x (and any GPU that is not
// Hopper): plain, fused-epilogue and grouped products, bf16 / f16 in, f32 accumulate.
//
// One kernel per (form, input dtype, output dtype): the forms NN, NT and TN of gemm_sm80.cuh (its
// header documents layouts, gather, group table, alignment and the tile schedule), outputs in the
// input dtype or f32. Every kernel takes the problem (GemmProblem, grouped or not) and the
// LinearEpilogue parameters (scale, bias, GeLU, residual: gemm_epilogue.cuh), so a plain GEMM, a
// fused dense layer and a grouped expert GEMM are the same machine code with different arguments.
//
// Tile: 128 x 128 x 32, 2 x 2 warps of 64 x 64, 4 stages (64 KiB dynamic shared memory: the host
// raises the block's limit), 128 threads. Per K-slice a warp issues 4 + 4 ldmatrix.x4 for
// 4 x 8 x 2 = 64 mma.sync, and the block moves 16 KiB of operands for 2·128·128·32 FLOPs
// (64 FLOPs per byte of shared memory).
//
// Grid: a 1-D persistent grid (see gemm_sm80.cuh: tile walker); the host sizes it from the tile
// count bound and the number of resident blocks.

#include "common.cuh"
#include "gemm_sm80.cuh"
#include "gemm_epilogue.cuh"

typedef sm80::Tile<128, 128, 32, 2, 2, 4> Sm80Tile;

#define GEMM80_ENTRY(FORM, TA, TB, TIN, NIN, TOUT, NOUT)                                                      \
    extern "C" __global__ void __launch_bounds__(Sm80Tile::THREADS)                                         \
        gemm80_##FORM##_##NIN##_##NOUT(sm80::GemmProblem<TIN> p, gemm_ep::EpilogueParams e) {               \
        extern __shared__ __align__(128) char smem[];                                                       \
        gemm_ep::LinearEpilogue<TOUT> ep{{}, e};                                                            \
        sm80::gemm<Sm80Tile, TA, TB, TIN>(p, ep, smem);                                                     \
    }

GEMM_LINEAR_ENTRIES(GEMM80_ENTRY)

// Builds a device-side group table from per-group counts (u32[G], e.g. an expert histogram made
// on the device), so a grouped GEMM never waits for the host. One thread per group walks the
// prefix sum of the counts before it (G is at most a few hundred; O(G²) additions of cached words
// cost less than a launch). Counts whose running sum passes `total` are clamped, so a bad
// histogram can never make the GEMM read or write out of bounds.
//   by_rows = 1 (m-grouped): group g = rows [start, start + count) of A and C, B matrix g
//     (b_offset = g · b_stride), K range [0, k).
//   by_rows = 0 (k-grouped): group g = all `m` rows, K range [start, start + count), one B for all.
extern "C" __global__ void gemm_group_table(const u32* counts, u32 num_groups, u32 total, int by_rows, u32 m, u32 k,
                                            u64 b_stride, sm80::GemmGroup* out) {
    for (u32 g = blockIdx.x * blockDim.x + threadIdx.x; g < num_groups; g += gridDim.x * blockDim.x) {
        u64 start = 0;
        for (u32 i = 0; i < g; ++i) start += counts[i];
        const u32 begin = (u32)min(start, (u64)total);
        const u32 end = (u32)min(start + counts[g], (u64)total);
        sm80::GemmGroup e;
        if (by_rows) e = sm80::GemmGroup{(u64)g * b_stride, begin, end - begin, 0u, k};
        else e = sm80::GemmGroup{0ull, 0u, m, begin, end};
        out[g] = e;
    }
}
