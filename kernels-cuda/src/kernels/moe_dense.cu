// moe_dense.cu: the dense-training MoE MLP (DS-MoE: every expert on every token), its router gating
// and GeLU fused into the epilogues of the products that produce the hidden activations.
//
// The op (CPU reference: engine/src/cpu/moe_dense.rs). x [T, d], stacked expert weights w1, w2
// [E·f, d] (expert e owns rows e·f .. (e+1)·f), router probabilities p [T, E]; h = E·f.
//   forward   u = x·W1ᵀ [T, h]          g[t, j] = p[t, j/f]·gelu(u[t, j])          y = g·W2 [T, d]
//   backward  dG = dy·W2ᵀ [T, h]        dU = dG·p·gelu'(u)   dp[t, e] = Σ_{j ∈ e} dG·gelu(u)
//             dW2 = gᵀ·dy   dW1 = dUᵀ·x   dx = dU·W1
// All row-major. The two products of width h are "NT" (both operands K-contiguous: x and w1 rows,
// dy and w2 rows), so the fused products need no transposed operand; the other four products
// (y, dW2, dW1, dx) are plain GEMMs and go through the engine's matmul.
//
// What the forward saves: u and g (both [T, h], tensor dtype). g must be written anyway (it is the
// second product's operand), so keeping it for dW2 costs memory, not traffic; u is one extra write
// and lets the backward get gelu'(u) and gelu(u) exactly (g cannot give them back: p may be 0 and
// GeLU is not invertible). Recomputing g in the backward instead would save T·h elements of memory
// per layer at the price of one more [T, h] write there. Against the unfused sequence the autograd
// tape builds (matmul, gelu, mul by p, matmul), which saves u, gelu(u) and g:
//   passes over [T, h] (each a full read or write)      unfused   fused
//   forward: write u; gelu r/w; ·p r/w; read g            6        3  (write u, write g, read g)
//   backward: write dG; read g (dW2); dh = dG·p r/w;     13        5  (read u, write dU, read g,
//     dp: dG·h r r w + sum r; gelu' r r w; dU read ×2              read dU twice)
//   saved for backward                                    3        2
// so 11 of 19 passes go, and a third of the activation memory. dp costs T·(h/128 + E) f32 partials.
//
// Fused products: gemm_sm80.cuh's mma.sync + cp.async mainloop, form NT (A [M, K], B [N, K], both
// K-contiguous: M = T, N = h, K = d), bf16 / f16 in, f32 accumulate, with this file's epilogue
// functors. sm_90a runs the same mma.sync code, at about half of Hopper's wgmma rate: gemm_sm90.cuh
// takes the same functors but refuses tile hooks (which the backward's dp sums need), and its host
// side (tensor maps, launch) is private to engine/src/cuda/ops/gemm.rs. The forward product can move
// to it once that host side launches other modules' entry points.
//   - Tile 128 x 128 x 32, 2 x 2 warps of 64 x 64, 3 stages: 48 KiB of *static* shared memory, so
//     the launch needs no raised dynamic-shared-memory limit; 128 threads, 128 f32 accumulators
//     each; one tile per block (the mainloop's tile walker with gridDim.x = number of tiles).
//   - GateForward, called with (row, col, v0, v1) for each accumulator pair, stores u and g.
//   - GateBackward stores dU and leaves each pair's dG·gelu(u) in the pipeline's shared memory
//     (tile hooks), one float per pair at [row][pair] with rows padded to 68 floats (a warp's 32
//     stores hit 32 banks); after the tile, one thread per row adds its pairs in column order per
//     expert and writes partial[t, tile + e] (tile = the 128-column tile index; tile + e is distinct
//     for every overlapping (tile, expert) pair), and moe_dp_reduce sums a row's pairs in tile
//     order. No atomics: bit-reproducible run to run.
//   - Requirements (else the engine runs the fallback below): sm_80 or newer, d % 8 == 0 (16-byte
//     rows for cp.async), h % 8 == 0 (the mainloop's N), f even (both columns of a pair are one
//     expert's). T, d, h need not be multiples of the tile.
// Cost per fused product: 2·T·h·d FLOPs; bytes ≥ (T·d + h·d)·2 in, T·h·2·2 out (u and g; or dU and
// the read of u), T·(h/128 + E)·4 of partials. At DS-MoE-6B (T = 16384, d = 4096, h = 16384): 2.2
// TFLOP against ~1.3 GB, compute-bound; what limits it is mma.sync's rate (about half of wgmma's on
// H100) and the epilogue's 4-byte stores (a warp writes 8 rows x 16 bytes per store instruction).
//
// Fallback (f32, or shapes the fused kernels do not take): the engine's matmul writes u or dG, then
// moe_gate_fwd / moe_gate_bwd apply the same GeLU and gating as separate passes; moe_gate_bwd sums
// dp over the same 128-column tiles, one thread per (row, tile), so moe_dp_reduce serves both paths.
// For bf16 the fallback gates the rounded u (the fused path gates the f32 accumulator).

#include "common.cuh"
#include "gemm_sm80.cuh"
#include "gemm_epilogue.cuh"

typedef sm80::Tile<128, 128, 32, 2, 2, 3> MoeTile;
// Columns per dp partial: the fused tile's width; kept equal to DP_TILE in engine/src/cuda/ops/moe_dense.rs.
#define DP_TILE 128
// Floats per row of the dp scratch: one per column pair, padded so a warp's stores miss each other.
#define SCRATCH_LD (DP_TILE / 2 + 4)
static_assert(MoeTile::BN == DP_TILE, "dp partials are per fused tile");
static_assert(MoeTile::BM * SCRATCH_LD * 4 <= MoeTile::SMEM_BYTES, "dp scratch fits in the pipeline's shared memory");

// ---- GeLU (tanh approximation, as engine/src/cpu/elementwise.rs: x·σ(2u), u = c(x + a·x³)) --------

__device__ __forceinline__ void gelu_and_grad(float x, float& gelu, float& grad) {
    const float c = 0.7978845608028654f, a = 0.044715f;
    const float s = 1.0f / (1.0f + expf(-2.0f * c * (x + a * x * x * x)));
    gelu = x * s;
    grad = s + 2.0f * x * s * (1.0f - s) * c * (1.0f + 3.0f * a * x * x);
}

// ---- epilogue functors ------------------------------------------------------------------------------

// Forward: (v0, v1) = u[row, col..col+1], one expert's columns; stores u and g = p·gelu(u).
template <typename T> struct GateForward : sm80::EpilogueNoHooks {
    const T* p;
    T* u;
    T* g;
    u32 hidden, width, experts;
    __device__ __forceinline__ void operator()(u32, u32 row, u32 col, float v0, float v1) const {
        const float pe = to_float(p[(u64)row * experts + col / width]);
        float g0, g1, d0, d1;
        gelu_and_grad(v0, g0, d0);
        gelu_and_grad(v1, g1, d1);
        const u64 at = (u64)row * hidden + col;
        gemm_ep::store_pair(u + at, v0, v1);
        gemm_ep::store_pair(g + at, pe * g0, pe * g1);
    }
};

// Backward: (v0, v1) = dG[row, col..col+1]; reads u, stores dU = dG·p·gelu'(u), and sums
// dG·gelu(u) per (row, expert) of the tile into partial (see the header).
template <typename T> struct GateBackward : gemm_ep::TileScratch<float> {
    const T* p;
    const T* u;
    T* du;
    float* partial;
    u32 hidden, width, experts, slots;

    __device__ __forceinline__ void operator()(u32, u32 row, u32 col, float v0, float v1) {
        const float pe = to_float(p[(u64)row * experts + col / width]);
        const u64 at = (u64)row * hidden + col;
        float u0, u1, g0, g1, d0, d1;
        gemm_ep::load_pair(u + at, u0, u1);
        gelu_and_grad(u0, g0, d0);
        gelu_and_grad(u1, g1, d1);
        gemm_ep::store_pair(du + at, v0 * pe * d0, v1 * pe * d1);
        scratch[(row - row0) * SCRATCH_LD + (col - col0) / 2] = v0 * g0 + v1 * g1;
    }
    __device__ __forceinline__ void tile_end(const sm80::TileInfo& t) {
        const u32 tile = t.col0 / DP_TILE, pairs = t.cols / 2;
        for (u32 r = threadIdx.x; r < t.rows; r += blockDim.x) {
            const float* sr = scratch + r * SCRATCH_LD;
            float* out = partial + (u64)(t.row0 + r) * slots + tile;
            float sum = 0.0f;
            for (u32 q = 0; q < pairs; ++q) {
                sum += sr[q];
                const u32 e = (t.col0 + 2 * q) / width;
                if (q + 1 == pairs || (t.col0 + 2 * q + 2) / width != e) {
                    out[e] = sum;
                    sum = 0.0f;
                }
            }
        }
    }
};

// ---- fused entry points --------------------------------------------------------------------------------

// mma.sync.m16n8k16, ldmatrix and cp.async need sm_80: below it the fused entry points trap (the host
// never launches them there), so the fallback kernels of this module still build and run.
#if __CUDA_ARCH__ >= 800
#define ON_SM80(...) __VA_ARGS__
#else
#define ON_SM80(...) __trap();
#endif

// u = x·W1ᵀ with g = p·gelu(u) in the epilogue; and dG = dy·W2ᵀ with dU and the dp partials in the
// epilogue. Grid: one block per 128 x 128 tile (ceil(T / 128)·ceil(h / 128) blocks), 128 threads.
#define FUSED(NAME, T)                                                                                             \
    extern "C" __global__ void __launch_bounds__(MoeTile::THREADS)                                                 \
        moe_up_gate_##NAME(const T* x, const T* w1, const T* p, T* u, T* g, u32 tokens, u32 hidden, u32 d,        \
                           u32 width, u32 experts) {                                                               \
        ON_SM80(__shared__ __align__(128) char smem[MoeTile::SMEM_BYTES];                                          \
                const sm80::GemmProblem<T> prob{x, w1, nullptr, nullptr, 0, tokens, hidden, d, d, d};              \
                GateForward<T> ep{{}, p, u, g, hidden, width, experts};                                            \
                sm80::gemm<MoeTile, false, true, T>(prob, ep, smem);)                                              \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(MoeTile::THREADS)                                                 \
        moe_down_grad_##NAME(const T* dy, const T* w2, const T* u, const T* p, T* du, float* partial, u32 tokens, \
                             u32 hidden, u32 d, u32 width, u32 experts) {                                          \
        ON_SM80(__shared__ __align__(128) char smem[MoeTile::SMEM_BYTES];                                          \
                const sm80::GemmProblem<T> prob{dy, w2, nullptr, nullptr, 0, tokens, hidden, d, d, d};            \
                const u32 slots = (hidden + DP_TILE - 1) / DP_TILE + experts;                                      \
                GateBackward<T> ep{{nullptr, 0, 0}, p, u, du, partial, hidden, width, experts, slots};             \
                sm80::gemm<MoeTile, false, true, T>(prob, ep, smem);)                                              \
    }

FUSED(bf16, bf16)
FUSED(f16, f16)

// ---- fallback passes and the dp reduction -------------------------------------------------------------

// g = p·gelu(u) over [tokens, hidden], one element per thread (grid-stride).
template <typename T>
__device__ void gate_fwd(const T* u, const T* p, T* g, u64 tokens, u64 hidden, u64 width, u64 experts) {
    for (u64 i = global_thread(); i < tokens * hidden; i += global_threads()) {
        const u64 t = i / hidden, j = i % hidden;
        float gl, gr;
        gelu_and_grad(to_float(u[i]), gl, gr);
        g[i] = from_float<T>(to_float(p[t * experts + j / width]) * gl);
    }
}

// dU = dG·p·gelu'(u), and dp partials over 128-column tiles: one thread per (tile, row), rows
// fastest, walking its tile's columns in order.
template <typename T>
__device__ void gate_bwd(const T* dg, const T* u, const T* p, T* du, float* partial, u64 tokens, u64 hidden, u64 width, u64 experts) {
    const u64 tiles = (hidden + DP_TILE - 1) / DP_TILE, slots = tiles + experts;
    for (u64 i = global_thread(); i < tokens * tiles; i += global_threads()) {
        const u64 t = i % tokens, tile = i / tokens;
        const u64 end = tile * DP_TILE + DP_TILE < hidden ? tile * DP_TILE + DP_TILE : hidden;
        float sum = 0.0f;
        for (u64 j = tile * DP_TILE; j < end; ++j) {
            const u64 e = j / width, at = t * hidden + j;
            const float dgj = to_float(dg[at]), pe = to_float(p[t * experts + e]);
            float gl, gr;
            gelu_and_grad(to_float(u[at]), gl, gr);
            du[at] = from_float<T>(dgj * pe * gr);
            sum += dgj * gl;
            if (j + 1 == end || (j + 1) / width != e) {
                partial[t * slots + tile + e] = sum;
                sum = 0.0f;
            }
        }
    }
}

// dp[t, e] = Σ over the tiles overlapping expert e, in tile order, of partial[t, tile + e].
template <typename T>
__device__ void dp_reduce(const float* partial, T* dp, u64 tokens, u64 hidden, u64 width, u64 experts) {
    const u64 slots = (hidden + DP_TILE - 1) / DP_TILE + experts;
    for (u64 i = global_thread(); i < tokens * experts; i += global_threads()) {
        const u64 t = i / experts, e = i % experts;
        const u64 first = e * width / DP_TILE, last = ((e + 1) * width - 1) / DP_TILE;
        float sum = 0.0f;
        for (u64 tile = first; tile <= last; ++tile) sum += partial[t * slots + tile + e];
        dp[i] = from_float<T>(sum);
    }
}

#define PASSES(NAME, T)                                                                                              \
    extern "C" __global__ void moe_gate_fwd_##NAME(const T* u, const T* p, T* g, u64 tokens, u64 hidden, u64 width, \
                                                   u64 experts) {                                                    \
        gate_fwd<T>(u, p, g, tokens, hidden, width, experts);                                                        \
    }                                                                                                                \
    extern "C" __global__ void moe_gate_bwd_##NAME(const T* dg, const T* u, const T* p, T* du, float* partial,       \
                                                   u64 tokens, u64 hidden, u64 width, u64 experts) {                 \
        gate_bwd<T>(dg, u, p, du, partial, tokens, hidden, width, experts);                                          \
    }                                                                                                                \
    extern "C" __global__ void moe_dp_reduce_##NAME(const float* partial, T* dp, u64 tokens, u64 hidden, u64 width, \
                                                    u64 experts) {                                                   \
        dp_reduce<T>(partial, dp, tokens, hidden, width, experts);                                                   \
    }

PASSES(f32, float)
PASSES(bf16, bf16)
PASSES(f16, f16)
