// gemm_epilogue.cuh: epilogue functors for the GEMM mainloops (gemm_sm80.cuh, gemm_sm90.cuh).
//
// A mainloop calls `ep(group, row, col, v0, v1)` with two adjacent f32 results C[row, col] and
// C[row, col + 1] (col even, both < N). The functors here cover the dense-layer cases:
//   - StoreEpilogue<TOut>: out[row, col..col+1] = (v0, v1), rounded once to TOut.
//   - LinearEpilogue<TOut>: out = residual + gelu?(alpha · acc + bias[col]), every step optional at
//     run time (null pointer / flag; the branches are uniform across the block, so they cost a
//     predicate, not divergence). Bias and residual have the output's dtype.
// Both write group g's output at out + g·group_stride (0 for m-grouped problems, whose rows are
// already global; M·N for k-grouped dW, one matrix per group). The pair is stored as one 4-byte
// (bf16 / f16) or 8-byte (f32) word; the row-major layout with N % 8 == 0 keeps it aligned.
//
// GeLU is the tanh approximation, as the engine's CPU reference (engine/src/cpu/elementwise.rs)
// and elementwise.cu compute it.
//
// Epilogues with more state (router gating by column block, per-row partial sums through the tile
// hooks, scatter by row index) are written next to the kernels that need them, from the same pieces;
// TileScratch<S> is the tile-hook state those with staged shared-memory work share.
//
// GEMM_LINEAR_ENTRIES(ENTRY) expands ENTRY(FORM, TRANS_A, TRANS_B, TIN, NIN, TOUT, NOUT) for every
// form and (input, output) dtype pair the LinearEpilogue GEMMs are built for. gemm_sm80.cu and
// gemm_sm90.cu both expand it, so the two paths export the same name suffixes, which the host picks
// between by compute capability (kernels-cuda/src/lib.rs lists them).

#pragma once

#include "common.cuh"
#include "gemm_sm80.cuh"

#define GEMM_LINEAR_FORMS(ENTRY, TIN, NIN, TOUT, NOUT) \
    ENTRY(nn, false, false, TIN, NIN, TOUT, NOUT)      \
    ENTRY(nt, false, true, TIN, NIN, TOUT, NOUT)       \
    ENTRY(tn, true, false, TIN, NIN, TOUT, NOUT)
#define GEMM_LINEAR_ENTRIES(ENTRY)                        \
    GEMM_LINEAR_FORMS(ENTRY, bf16, bf16, bf16, bf16)      \
    GEMM_LINEAR_FORMS(ENTRY, bf16, bf16, float, f32)      \
    GEMM_LINEAR_FORMS(ENTRY, f16, f16, f16, f16)          \
    GEMM_LINEAR_FORMS(ENTRY, f16, f16, float, f32)

namespace gemm_ep {

__device__ __forceinline__ float gelu_tanh(float x) {
    const float inner = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(inner));
}

// Two adjacent elements as one aligned word.
template <typename T> __device__ __forceinline__ void store_pair(T* p, float v0, float v1);
template <> __device__ __forceinline__ void store_pair<float>(float* p, float v0, float v1) {
    *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
}
template <> __device__ __forceinline__ void store_pair<bf16>(bf16* p, float v0, float v1) {
    *reinterpret_cast<u32*>(p) = (u32)from_float<bf16>(v0).bits | ((u32)from_float<bf16>(v1).bits << 16);
}
template <> __device__ __forceinline__ void store_pair<f16>(f16* p, float v0, float v1) {
    *reinterpret_cast<u32*>(p) = (u32)from_float<f16>(v0).bits | ((u32)from_float<f16>(v1).bits << 16);
}

template <typename T> __device__ __forceinline__ void load_pair(const T* p, float& v0, float& v1) {
    v0 = to_float(p[0]);
    v1 = to_float(p[1]);
}

enum EpilogueFlags : u32 { EP_GELU = 1u };

// Mirrors `EpilogueParams` in engine/src/cuda/ops/gemm.rs (repr(C), 48 bytes): keep the two in step.
struct EpilogueParams {
    u64 out;           // TOut*
    u64 bias;          // const TOut* of N, or 0
    u64 residual;      // const TOut* laid out as out (same ldc, group_stride), or 0
    u64 group_stride;  // elements between consecutive groups' outputs
    u32 ldc;           // elements between output rows
    float alpha;       // scale of the product
    u32 flags;         // EpilogueFlags
    u32 pad;
};

template <typename TOut> struct StoreEpilogue : sm80::EpilogueNoHooks {
    TOut* out;
    u64 group_stride;
    u32 ldc;
    __device__ __forceinline__ void operator()(u32 group, u32 row, u32 col, float v0, float v1) const {
        store_pair(out + group * group_stride + (u64)row * ldc + col, v0, v1);
    }
};

template <typename TOut> struct LinearEpilogue : sm80::EpilogueNoHooks {
    EpilogueParams p;
    __device__ __forceinline__ void operator()(u32 group, u32 row, u32 col, float v0, float v1) const {
        v0 *= p.alpha;
        v1 *= p.alpha;
        if (p.bias != 0) {
            float b0, b1;
            load_pair(reinterpret_cast<const TOut*>(p.bias) + col, b0, b1);
            v0 += b0;
            v1 += b1;
        }
        if (p.flags & EP_GELU) {
            v0 = gelu_tanh(v0);
            v1 = gelu_tanh(v1);
        }
        const u64 at = group * p.group_stride + (u64)row * p.ldc + col;
        if (p.residual != 0) {
            float r0, r1;
            load_pair(reinterpret_cast<const TOut*>(p.residual) + at, r0, r1);
            v0 += r0;
            v1 += r1;
        }
        store_pair(reinterpret_cast<TOut*>(p.out) + at, v0, v1);
    }
};

// Base of an epilogue with tile hooks (gemm_sm80.cuh): tile_begin keeps the tile's origin and its
// shared-memory scratch, seen as S, for operator() to stage into and tile_end to finish from.
template <typename S> struct TileScratch {
    static constexpr bool kTileHooks = true;
    S* scratch;
    u32 row0, col0;

    __device__ __forceinline__ void tile_begin(const sm80::TileInfo& t) {
        scratch = reinterpret_cast<S*>(t.scratch);
        row0 = t.row0;
        col0 = t.col0;
    }
};

}  // namespace gemm_ep
