// moe_sparse.cu: the sparse MoE MLP over an expert-sorted list (built by moe_route.cu): grouped
// gather-GEMM-scatter forward, its training backward, and the deterministic combine.
//
// Shapes: x [T, d]; w1, w2 [E·f, d] (expert e owns rows e·f .. (e+1)·f); router weights [T·k_max]
// indexed by slot s = t·k_max + j; offsets [E+1] and sorted_slots [P] (P = kept pairs) from the
// permutation; slot_pos [T·k_max] (DROPPED for unused / dropped slots). The expert-sorted list is
// the "grouped" layout: entry i of expert e lies in offsets[e] .. offsets[e+1], and tok(i) =
// sorted_slots[i] / k_max is its token.
//
// Forward (grouped path):
//   U[i] = x[tok(i)] · W1_eᵀ                  NT, A rows gathered by token in the loads (no permuted
//   H[i] = gelu(U[i])                           copy of x), GeLU in the epilogue (RowStore), U kept
//                                               for training
//   Yrow[slot(i)] = w[slot(i)] · H[i] · W2_e   NN, router weight in the epilogue, each row written
//                                               to its (token, slot) row (ScatterRows)
//   y[t] = Σ_j Yrow[t·k_max + j]               moe_combine: fixed slot order, no atomics
// Backward (the top-2 SMoE baseline trains through this):
//   dG[i] = dy[tok(i)] · W2_eᵀ                 NT, same grouping, A gathered by token (RowStore)
//   dw[slot] = Σ_c dG[i,c]·H[i,c];  dU[i] = w·dG[i]·gelu'(U[i]);  wH[i] = w·H[i]   moe_grad_act
//   dXrow[slot(i)] = dU[i] · W1_e               NN (ScatterRows, no scale), then moe_combine
//   dW1_eᵀ = x[tok(e)]ᵀ · dU_e                 TN, K-grouped: the reduction runs over expert e's
//   dW2_eᵀ = dy[tok(e)]ᵀ · wH_e                  list entries, gathered along K by token; every
//                                               expert writes its whole [f, d] slab (TransposedSlab)
// Gated (SwiGLU) experts, with a third matrix w3 stacked like w1 (moe_sparse_swiglu):
//   G[i] = x[tok(i)] · W1_eᵀ                   RowStore, stored as is
//   H[i] = silu(G[i]) ⊙ x[tok(i)] · W3_eᵀ       RowStore in SwiGLU mode: the epilogue reads the stored
//                                               G (in place when G is not kept: out = gate = H's buffer)
//                                               and keeps V = x·W3ᵀ for training in `pre`
//   then the same down product and combine. Backward:
//   dH[i] = dy[tok(i)] · W2_eᵀ;  dw[slot] = Σ_c dH·H;  dGate = w·dH·V·silu'(G);  dV = w·dH·silu(G);
//   wH = w·H                                   moe_grad_swiglu
//   dXrow[slot(i)] = dGate[i] · W1_e, then += dV[i] · W3_e   (ScatterRows, the second accumulating)
//   dW1ᵀ, dW3ᵀ, dW2ᵀ: the dW product with dGate, dV and wH.
// dW is computed transposed ([d, f] per expert) because the mainloop gathers only A's rows: x and
// dy are the gathered operands, so they must be A, and A's columns (d) become the output's rows.
// The epilogue transposes back through shared memory so the slabs land in w1's [f, d] layout with
// coalesced 16-byte stores. The router weight of dW2 rides on wH (written by moe_grad_act, which
// reads H anyway) because the mainloop cannot scale rows while loading them.
//
// The GEMMs: gemm_sm80.cuh's mainloop (mma.sync.m16n8k16, cp.async ring of 4 stages, ldmatrix on
// XOR-swizzled tiles), tile 128 x 128 x 32, 2 x 2 warps of 64 x 64, 128 threads, 64 KiB of
// dynamic shared memory, bf16 / f16 in, f32 accumulate, with this file's epilogue functors. The
// group table (moe_list_tables, from the offsets, on the device: no host sync) makes expert e
// group e: rows offsets[e] .. offsets[e+1] of the list and B = expert e's weights. When the list
// averages fewer than 128 rows per expert (T·K < 128·E: T <= 512 at DS-MoE-6B with K = 4), the
// host picks a 64 x 64 tile (2 x 2 warps of 32 x 32, 32 KiB) for the two list-row products.
//
// How tiles map to experts. The mainloop's tile walker numbers tiles expert by expert: expert e
// owns ceil(rows_e / BM) x ceil(N / BN) tiles, so the only padding is the remainder of its last
// row tile (zero-filled rows that are multiplied but never stored), at most BM - 1 rows per expert,
// and an expert with no tokens owns no tile at all (it costs one read of its table entry). No
// expert is padded to a capacity or to the batch's largest expert: at high sparsity (few rows
// per expert) the work is Σ_e ceil(rows_e / BM) row tiles, not E · max_e rows. The persistent
// grid is sized from the host-known bound (ceil(P_max / BM) + E - 1) · ceil(N / BN), capped at
// the resident blocks; blocks walk tile ids upward and stop at the first id past the table, so
// nothing on the host waits for the routing. Within an expert, tiles go in bands of 8 tile rows so
// that blocks running together share the expert's weight tiles in L2: the weights of an expert
// are read from HBM about once per band, and the gathered x rows once per column tile (from L2).
// The K-grouped dW has d / 128 x f / 128 tiles per expert, each reducing over the expert's
// entries (empty experts run their tiles over an empty K range and write zeros: the right dW).
//
// Why sm_90a runs mma.sync here too. Hopper's fast path (gemm_sm90: TMA + wgmma) loads operand
// tiles with the tensor-memory accelerator, which copies a box of a tensor described by a tensor
// map (base, extents, strides): it cannot gather rows through an index list. The forward's and
// the dX/dW products' A operands are x or dy rows picked by tok(i), so on Hopper they would need
// either a permuted copy of the activations (T·K·d extra writes and reads, which the gather exists
// to avoid) or per-row copies issued by threads (cp.async), which is exactly the sm_80 mainloop.
// So every product here uses the sm_80 mainloop on both architectures: about half of Hopper's
// wgmma rate for the compute-bound prefill, no loss for the memory-bound small-T cases.
//
// Exact path. f32 tensors, rows that are not 16-byte vectors (d or f not a multiple of 8), and
// GPUs without mma.sync (before sm_80) run moe_gemm_exact_*: the same problem description (group
// table, gather, epilogue functors) with one thread per output pair summing in f32 FMAs: a path
// for exactness and coverage, not speed. Both paths store column pairs, so d and f must be even
// (the host says so with an error otherwise).
//
// Roofline per expert and product: 2·rows_e·N·K FLOPs; bytes ≥ weights (N·K·2) + rows_e·(K + N)·2.
// At DS-MoE-6B (d = 4096, f = 512, E = 32) the two forward products move 256 MiB of weights for
// all experts; with T·K = P list rows they do 4·P·f·d FLOPs, so they are compute-bound from about
// P ≈ E·300 rows on (T·K ≥ 10k) and weight-bandwidth-bound below. What limits it: mma.sync's rate
// on Hopper (above), the gather's per-row address (one index read per tile row, 16-byte copies
// per row: no TMA), the remainder tile of each expert at small P, and the epilogue's 4-byte
// scattered stores of the forward's second product (one (token, slot) row per list entry).

#include "common.cuh"
#include "gemm_sm80.cuh"
#include "gemm_epilogue.cuh"

#define DROPPED 0xffffffffu

typedef sm80::Tile<128, 128, 32, 2, 2, 4> SparseTile;
// For lists whose experts hold fewer rows than a 128-row tile (small T or high sparsity): half the
// remainder padding per expert and twice the column tiles (more blocks in flight to stream the
// weights). 32 KiB of shared memory, 64 f32 accumulators per thread.
typedef sm80::Tile<64, 64, 32, 2, 2, 4> NarrowTile;
// Elements per shared-memory row of the transposed dW tile: BM plus 8, so rows stay 16-byte
// aligned and the fragment stores of a warp fall in 16 different banks.
#define SLAB_LD (SparseTile::BM + 8)
static_assert(SparseTile::BN * SLAB_LD * 2 <= SparseTile::SMEM_BYTES, "the transposed tile fits in the pipeline's shared memory");

// RowStore's activations (SparseEpilogue::act).
#define ACT_NONE 0u
#define ACT_GELU 1u
#define ACT_SWIGLU 2u

// Mirrors `SparseEpilogue` in engine/src/cuda/ops/moe_sparse.rs (repr(C), 64 bytes): keep in step.
struct SparseEpilogue {
    u64 out;         // T*
    u64 pre;         // RowStore with an activation: T* for the pre-activation (V for SwiGLU), or 0
    u64 scale;       // ScatterRows: const T* router weight per slot, or 0
    u64 slots;       // ScatterRows: const u32* sorted_slots
    u64 slab;        // TransposedSlab: elements between consecutive experts' outputs
    u64 gate;        // RowStore with ACT_SWIGLU: const T* G, laid out like out (may equal out)
    u32 ldc;         // elements between output rows
    u32 act;         // RowStore: ACT_NONE, ACT_GELU or ACT_SWIGLU
    u32 accumulate;  // ScatterRows: add the product to what out holds (1) or overwrite it (0)
    u32 pad;
};

__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + expf(-x)); }

// out[row] = act(acc), with the pre-activation kept when `pre` is set: rows in list order. SwiGLU
// reads the pair of G at the same place (each pair is read and written by one thread only, so out
// may alias gate).
template <typename T> struct RowStore : sm80::EpilogueNoHooks {
    SparseEpilogue e;
    __device__ __forceinline__ void operator()(u32, u32 row, u32 col, float v0, float v1) const {
        const u64 at = (u64)row * e.ldc + col;
        if (e.act != ACT_NONE && e.pre != 0) gemm_ep::store_pair(reinterpret_cast<T*>(e.pre) + at, v0, v1);
        if (e.act == ACT_GELU) {
            v0 = gemm_ep::gelu_tanh(v0);
            v1 = gemm_ep::gelu_tanh(v1);
        } else if (e.act == ACT_SWIGLU) {
            const T* g = reinterpret_cast<const T*>(e.gate) + at;
            v0 *= silu_f(to_float(g[0]));
            v1 *= silu_f(to_float(g[1]));
        }
        gemm_ep::store_pair(reinterpret_cast<T*>(e.out) + at, v0, v1);
    }
};

// out[slot(row)] = w[slot]·acc (w = 1 without `scale`), plus out's old value with `accumulate`:
// list rows land on their (token, slot) rows. A slot has one list row, so one thread owns each pair.
template <typename T> struct ScatterRows : sm80::EpilogueNoHooks {
    SparseEpilogue e;
    __device__ __forceinline__ void operator()(u32, u32 row, u32 col, float v0, float v1) const {
        const u32 slot = reinterpret_cast<const u32*>(e.slots)[row];
        const float s = e.scale != 0 ? to_float(reinterpret_cast<const T*>(e.scale)[slot]) : 1.0f;
        T* o = reinterpret_cast<T*>(e.out) + (u64)slot * e.ldc + col;
        const float b0 = e.accumulate ? to_float(o[0]) : 0.0f, b1 = e.accumulate ? to_float(o[1]) : 0.0f;
        gemm_ep::store_pair(o, b0 + v0 * s, b1 + v1 * s);
    }
};

// The exact path's dW store: acc[row = i of d, col = j of f] goes to slab[group][j][i] directly.
template <typename T> struct TransposedSlab : sm80::EpilogueNoHooks {
    SparseEpilogue e;
    __device__ __forceinline__ void operator()(u32 group, u32 row, u32 col, float v0, float v1) const {
        T* o = reinterpret_cast<T*>(e.out) + group * e.slab + (u64)col * e.ldc + row;
        o[0] = from_float<T>(v0);
        o[e.ldc] = from_float<T>(v1);
    }
};

// The tensor-core dW store: the tile goes transposed into shared memory ([col][row], SLAB_LD
// apart), then every thread writes 16-byte runs of output rows (d contiguous; needs d % 8 == 0,
// which the tensor-core path requires anyway, so each tile's rows come in whole runs of 8).
template <typename T> struct TransposedSlabStaged : gemm_ep::TileScratch<T> {
    SparseEpilogue e;

    __device__ __forceinline__ void operator()(u32, u32 row, u32 col, float v0, float v1) {
        T* s = this->scratch + (col - this->col0) * SLAB_LD + (row - this->row0);
        s[0] = from_float<T>(v0);
        s[SLAB_LD] = from_float<T>(v1);
    }
    __device__ __forceinline__ void tile_end(const sm80::TileInfo& t) {
        const u32 runs = t.rows / 8;
        T* out = reinterpret_cast<T*>(e.out) + t.group * e.slab + (u64)t.col0 * e.ldc + t.row0;
        for (u32 q = threadIdx.x; q < t.cols * runs; q += SparseTile::THREADS) {
            const u32 j = q / runs, i = (q % runs) * 8;
            *reinterpret_cast<W16*>(out + (u64)j * e.ldc + i) = *reinterpret_cast<const W16*>(this->scratch + j * SLAB_LD + i);
        }
    }
};

// ---- the exact path ---------------------------------------------------------------------------------

// A[row, k] of the problem (logical row, absolute k), through the gather when there is one.
template <bool TRANS_A, typename T> __device__ __forceinline__ float a_at(const sm80::GemmProblem<T>& p, u32 row, u32 k) {
    if (TRANS_A) return to_float(p.a[(u64)(p.a_rows != nullptr ? p.a_rows[k] : k) * p.lda + row]);
    return to_float(p.a[(u64)(p.a_rows != nullptr ? p.a_rows[row] : row) * p.lda + k]);
}

// One thread per output pair (row, col..col+1) of each group: grid x over column pairs, y strided
// over the group's rows, z strided over groups. Sums in f32, k in increasing order.
template <bool TRANS_A, bool TRANS_B, typename T, class Epilogue>
__device__ void gemm_exact(const sm80::GemmProblem<T>& p, Epilogue& ep) {
    for (u32 g = blockIdx.z; g < p.num_groups; g += gridDim.z) {
        const sm80::GemmGroup gr = p.groups[g];
        const T* b = p.b + gr.b_offset;
        for (u32 r = blockIdx.y; r < gr.rows; r += gridDim.y) {
            const u32 row = gr.row_begin + r;
            for (u32 col = 2 * (blockIdx.x * blockDim.x + threadIdx.x); col < p.n; col += 2 * gridDim.x * blockDim.x) {
                float v0 = 0.0f, v1 = 0.0f;
                for (u32 k = gr.k_begin; k < gr.k_end; ++k) {
                    const float a = a_at<TRANS_A>(p, row, k);
                    const T* b0 = TRANS_B ? b + (u64)col * p.ldb + k : b + (u64)k * p.ldb + col;
                    v0 = fmaf(a, to_float(b0[0]), v0);
                    v1 = fmaf(a, to_float(TRANS_B ? b0[p.ldb] : b0[1]), v1);
                }
                ep(g, row, col, v0, v1);
            }
        }
    }
}

// ---- list tables --------------------------------------------------------------------------------

// From the permutation, on the device: tok[i] for every list entry (0 past the kept ones) and three
// group tables of E entries each (mirrored by `Tables` in engine/src/cuda/ops/moe_sparse.rs):
//   [0, E):   rows of expert e, B = expert e's slab, K = d   (x·W1ᵀ, dy·W2ᵀ)
//   [E, 2E):  rows of expert e, B = expert e's slab, K = f   (H·W2, dU·W1)
//   [2E, 3E): all d rows, K = expert e's entries             (dW1ᵀ, dW2ᵀ)
extern "C" __global__ void moe_list_tables(const u32* offsets, const u32* sorted_slots, u32 groups, u32 k_max, u32 d, u32 f,
                                           u64 slots, sm80::GemmGroup* tables, u32* tok) {
    const u64 kept = offsets[groups];
    const u64 items = slots > groups ? slots : groups;
    for (u64 i = global_thread(); i < items; i += global_threads()) {
        if (i < slots) tok[i] = i < kept ? sorted_slots[i] / k_max : 0u;
        if (i < groups) {
            const u32 begin = offsets[i], rows = offsets[i + 1] - begin;
            const u64 slab = i * (u64)f * d;
            tables[i] = sm80::GemmGroup{slab, begin, rows, 0u, d};
            tables[groups + i] = sm80::GemmGroup{slab, begin, rows, 0u, f};
            tables[2 * groups + i] = sm80::GemmGroup{0ull, 0u, d, begin, begin + rows};
        }
    }
}

// ---- combine and the activation backward -----------------------------------------------------------

// y[t, :] = Σ_j Σ_split rows[(split·slots + t·k_max + j), :] over the token's kept slots, summed in
// f32 in (j, split) order: bit-reproducible. Grid: x over columns, y over tokens (strided).
template <typename S, typename T>
__device__ void combine(const S* rows, const u32* slot_pos, T* y, u64 tokens, u32 k_max, u64 d, u32 splits) {
    const u64 slots = tokens * k_max;
    for (u64 t = blockIdx.y; t < tokens; t += gridDim.y) {
        for (u64 col = (u64)blockIdx.x * blockDim.x + threadIdx.x; col < d; col += (u64)gridDim.x * blockDim.x) {
            float sum = 0.0f;
            for (u32 j = 0; j < k_max; ++j) {
                const u64 slot = t * k_max + j;
                if (slot_pos[slot] == DROPPED) continue;
                for (u32 sp = 0; sp < splits; ++sp) sum += to_float(rows[(sp * slots + slot) * d + col]);
            }
            y[t * d + col] = from_float<T>(sum);
        }
    }
}

// One warp per list entry i < offsets[groups]: dw[slot] = Σ_c grad(i·f + c, w[slot]) (each call
// returns its term of dH·H and writes that element's gradients; warp tree, fixed order).
template <typename T, class Grad>
__device__ void grad_rows(const T* w, const u32* sorted_slots, const u32* offsets, u32 groups, T* dweights, u64 f, Grad grad) {
    const u32 lane = threadIdx.x & (WARP - 1);
    const u64 total = offsets[groups];
    const u64 warps = (u64)gridDim.x * blockDim.x / WARP;
    for (u64 i = global_thread() / WARP; i < total; i += warps) {
        const u32 slot = sorted_slots[i];
        const float ws = to_float(w[slot]);
        float dot = 0.0f;
        for (u64 c = lane; c < f; c += WARP) dot += grad(i * f + c, ws);
        dot = warp_reduce(dot, [](float a, float b) { return a + b; });
        if (lane == 0) dweights[slot] = from_float<T>(dot);
    }
}

// GeLU experts: dU = w·dG·gelu'(U) written over dG, and wH = w·H (the B operand of dW2ᵀ).
template <typename T>
__device__ void grad_act(T* dg, const T* h, const T* u, const T* w, const u32* sorted_slots, const u32* offsets, u32 groups,
                         T* dweights, T* wh, u64 f) {
    grad_rows(w, sorted_slots, offsets, groups, dweights, f, [&](u64 o, float ws) {
        const float g = to_float(dg[o]), x = to_float(u[o]), hv = to_float(h[o]);
        const float sg = 1.0f / (1.0f + expf(-2.0f * 0.7978845608028654f * (x + 0.044715f * x * x * x)));
        const float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * x * x);
        dg[o] = from_float<T>(ws * g * (sg + 2.0f * x * sg * (1.0f - sg) * du));
        wh[o] = from_float<T>(ws * hv);
        return g * hv;
    });
}

// Gated experts: dGate = w·dH·V·silu'(G) written over dH, dV = w·dH·silu(G), and wH = w·H.
template <typename T>
__device__ void grad_swiglu(T* dh, T* dv, const T* h, const T* g, const T* v, const T* w, const u32* sorted_slots, const u32* offsets,
                            u32 groups, T* dweights, T* wh, u64 f) {
    grad_rows(w, sorted_slots, offsets, groups, dweights, f, [&](u64 o, float ws) {
        const float d = to_float(dh[o]), x = to_float(g[o]), hv = to_float(h[o]);
        const float sg = 1.0f / (1.0f + expf(-x));
        dh[o] = from_float<T>(ws * d * to_float(v[o]) * sg * (1.0f + x * (1.0f - sg)));
        dv[o] = from_float<T>(ws * d * x * sg);
        wh[o] = from_float<T>(ws * hv);
        return d * hv;
    });
}

// ---- entry points -----------------------------------------------------------------------------------

// mma.sync.m16n8k16, ldmatrix and cp.async need sm_80: below it the tensor-core entry points trap
// (the host never launches them there), so the exact path of this module still builds and runs.
#if __CUDA_ARCH__ >= 800
#define SM80_ONLY(...) __VA_ARGS__
#else
#define SM80_ONLY(...) __trap();
#endif

// rows: NT (x or dy gathered by token, times W_eᵀ), RowStore. scatter: NN (H or dU times W_e),
// ScatterRows. dw: TN, K-grouped (gathered x or dy, transposed, times dU or wH), the dW slabs.
// rows_narrow / scatter_narrow: the same on NarrowTile, which the host picks when the list holds
// fewer than 128 rows per expert on average (dW keeps the wide tile: its rows are d, not the list).
#define SPARSE_GEMM(ROLE, TILE, TA, TB, T, SFX, EP)                                                                      \
    extern "C" __global__ void __launch_bounds__(TILE::THREADS) moe_gemm_##ROLE##_##SFX(sm80::GemmProblem<T> p,        \
                                                                                    SparseEpilogue e) {               \
        SM80_ONLY(extern __shared__ __align__(128) char smem[];                                                         \
                  EP<T> ep{{}, e};                                                                                      \
                  sm80::gemm<TILE, TA, TB, T>(p, ep, smem);)                                                            \
    }
#define SPARSE_GEMM_EXACT(ROLE, TA, TB, T, SFX, EP)                                                                      \
    extern "C" __global__ void moe_gemm_exact_##ROLE##_##SFX(sm80::GemmProblem<T> p, SparseEpilogue e) {               \
        EP<T> ep{{}, e};                                                                                                \
        gemm_exact<TA, TB, T>(p, ep);                                                                                   \
    }

#define SPARSE_TENSOR_CORE(T, SFX)                                                                                      \
    SPARSE_GEMM(rows, SparseTile, false, true, T, SFX, RowStore)                                                         \
    SPARSE_GEMM(scatter, SparseTile, false, false, T, SFX, ScatterRows)                                                  \
    SPARSE_GEMM(rows_narrow, NarrowTile, false, true, T, SFX, RowStore)                                                  \
    SPARSE_GEMM(scatter_narrow, NarrowTile, false, false, T, SFX, ScatterRows)                                           \
    extern "C" __global__ void __launch_bounds__(SparseTile::THREADS) moe_gemm_dw_##SFX(sm80::GemmProblem<T> p,         \
                                                                                       SparseEpilogue e) {            \
        SM80_ONLY(extern __shared__ __align__(128) char smem[];                                                         \
                  TransposedSlabStaged<T> ep{{nullptr, 0u, 0u}, e};                                                     \
                  sm80::gemm<SparseTile, true, false, T>(p, ep, smem);)                                                 \
    }

#define SPARSE_KERNELS(T, SFX)                                                                                          \
    SPARSE_GEMM_EXACT(rows, false, true, T, SFX, RowStore)                                                               \
    SPARSE_GEMM_EXACT(scatter, false, false, T, SFX, ScatterRows)                                                        \
    SPARSE_GEMM_EXACT(dw, true, false, T, SFX, TransposedSlab)                                                           \
    extern "C" __global__ void moe_combine_##SFX(const T* rows, const u32* slot_pos, T* y, u64 tokens, u32 k_max, u64 d) { \
        combine<T, T>(rows, slot_pos, y, tokens, k_max, d, 1);                                                           \
    }                                                                                                                    \
    extern "C" __global__ void moe_combine_splits_##SFX(const float* rows, const u32* slot_pos, T* y, u64 tokens,       \
                                                        u32 k_max, u64 d, u32 splits) {                                  \
        combine<float, T>(rows, slot_pos, y, tokens, k_max, d, splits);                                                  \
    }                                                                                                                    \
    extern "C" __global__ void moe_grad_act_##SFX(T* dg, const T* h, const T* u, const T* w, const u32* sorted_slots,   \
                                                  const u32* offsets, u32 groups, T* dweights, T* wh, u64 f) {           \
        grad_act<T>(dg, h, u, w, sorted_slots, offsets, groups, dweights, wh, f);                                        \
    }                                                                                                                    \
    extern "C" __global__ void moe_grad_swiglu_##SFX(T* dh, T* dv, const T* h, const T* g, const T* v, const T* w,      \
                                                     const u32* sorted_slots, const u32* offsets, u32 groups,            \
                                                     T* dweights, T* wh, u64 f) {                                        \
        grad_swiglu<T>(dh, dv, h, g, v, w, sorted_slots, offsets, groups, dweights, wh, f);                              \
    }

SPARSE_TENSOR_CORE(bf16, bf16)
SPARSE_TENSOR_CORE(f16, f16)
SPARSE_KERNELS(float, f32)
SPARSE_KERNELS(bf16, bf16)
SPARSE_KERNELS(f16, f16)
