// attention_rows.cuh: what the tensor-core attention kernels (attention_sm80.cu, attention_sm90.cu)
// share: the packed GQA row geometry of a query tile (row = position x query head of one key/value
// head, so one key/value tile serves every query head that reads it), the block's place in the
// grid, two register helpers, the forward's online-softmax step and row stores, and the
// backward's D per row.

#pragma once

#include "common.cuh"

__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Two floats as one register of two 16-bit values, `lo` in the low half (the lower column).
template <typename T> __device__ __forceinline__ u32 pack2(float lo, float hi) {
    return (u32)from_float<T>(lo).bits | ((u32)from_float<T>(hi).bits << 16);
}

// Rows of a query tile: packed row `first + r` is position (first + r) / G, head kvh·G + (first + r) % G;
// row r takes part when r < limit and its position is inside the sequence.
struct PackedRows {
    u32 g, hq, kvh, start, len, first, limit;
    __device__ __forceinline__ u32 pos(int r) const { return (first + r) / g; }
    __device__ __forceinline__ bool valid(int r) const { return (u32)r < limit && pos(r) < len; }
    // Index of the row in a [N, Hq] tensor (times D for [N, Hq, D]).
    __device__ __forceinline__ u64 row(int r) const { return (u64)(start + pos(r)) * hq + kvh * g + (first + r) % g; }
    // The staging source of row r of a [N, Hq, D] tensor, or null.
    template <typename T, int D> __device__ __forceinline__ auto source(const T* base) const {
        return [=](int r) -> const T* { return valid(r) ? base + row(r) * D : nullptr; };
    }
};

// A forward / dq block of ROWS packed query rows (ROWS / G positions x G heads of key/value head
// blockIdx.y in sequence blockIdx.z) and the KEYS-key tiles they see; `empty` past the sequence.
struct QueryBlock {
    PackedRows rows;
    u32 tiles;
    bool empty;
};

template <int ROWS, int KEYS> __device__ __forceinline__ QueryBlock query_block(const u32* offsets, u32 hq, u32 hkv) {
    const u32 g = hq / hkv, ppb = ROWS / g, start = offsets[blockIdx.z], len = offsets[blockIdx.z + 1] - start, p0 = blockIdx.x * ppb;
    return QueryBlock{PackedRows{g, hq, blockIdx.y, start, len, p0 * g, ppb * g}, (min(len, p0 + ppb) + KEYS - 1) / KEYS, p0 >= len};
}

// The backward's D = dO·out of packed row r, summed in a fixed order; stored to `delta` ([N, Hq])
// for a valid row, 0 for an idle one.
template <typename T, int D> __device__ __forceinline__ float row_delta(const T* out, const T* dout, float* delta, const PackedRows& rows, int r) {
    float dd = 0.0f;
    if (rows.valid(r)) {
        const u64 row = rows.row(r);
        for (int x = 0; x < D; ++x) dd += to_float(out[row * D + x]) * to_float(dout[row * D + x]);
        delta[row] = dd;
    }
    return dd;
}

// One key tile of the forward's online softmax, for this thread's row i (0: row gid, 1: gid + 8) of
// a 16-row slab in the m16n8 accumulator layout (mma.sync C, and each warp's share of a wgmma
// m64nN D): s [keys / 8][4] holds the tile's raw scores Q·Kᵀ. Masks keys at or past `len` and
// after the row's position `pos`, works in the exp2 domain (`scale2` = scale·log2 e), takes the
// row max over the quad of lanes sharing the row, rescales l by the change of max, leaves
// P = exp2(s − max) in s and returns the factor the row's output sums must be rescaled by
// (rescale_row), which a pipelined caller applies once the product still adding into them is done.
template <int NS>
__device__ __forceinline__ float softmax_tile_row(float (&s)[NS][4], float& m, float& l, int i, u32 j0, u32 len, u32 pos, float scale2) {
    const u32 tid4 = threadIdx.x % 4;
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < NS; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const u32 key = j0 + 8 * n + 2 * tid4 + e;
            float& x = s[n][2 * i + e];
            x = key < len && key <= pos ? x * scale2 : -INFINITY;
            mx = fmaxf(mx, x);
        }
    }
    mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 2));
    const float m_new = fmaxf(m, mx);
    const float base = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet
    const float corr = exp2_approx(m - base);
    m = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int n = 0; n < NS; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            float& x = s[n][2 * i + e];
            x = exp2_approx(x - base);
            sum += x;
        }
    }
    l = l * corr + sum;
    return corr;
}

// Row i of a 16-row slab of output sums o [D / 8][4] times `corr`.
template <int NO> __device__ __forceinline__ void rescale_row(float (&o)[NO][4], int i, float corr) {
#pragma unroll
    for (int n = 0; n < NO; ++n) {
        o[n][2 * i] *= corr;
        o[n][2 * i + 1] *= corr;
    }
}

// softmax_tile_row with the output sums o rescaled at once (for a caller whose P·V for the tile
// before has completed).
template <int NS, int NO>
__device__ __forceinline__ void online_softmax_tile(float (&s)[NS][4], float (&o)[NO][4], float& m, float& l, int i, u32 j0, u32 len, u32 pos, float scale2) {
    rescale_row(o, i, softmax_tile_row(s, m, l, i, j0, len, pos, scale2));
}

// Stores this thread's share of a 16 x D accumulator row `i` (0: row gid, 1: gid + 8) times `mul`
// into the D-element row at `dst`.
template <typename T, int D> __device__ __forceinline__ void store_row(T* dst, const float (&acc)[D / 8][4], int i, float mul) {
    u32* d32 = reinterpret_cast<u32*>(dst);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) d32[4 * n + threadIdx.x % 4] = pack2<T>(acc[n][2 * i] * mul, acc[n][2 * i + 1] * mul);
}

// The forward's end for this thread's rows r0 and r0 + 8 of the tile: l summed over the row's quad,
// out = O / l and lse = m·ln 2 + ln l (m in the exp2 domain), for valid rows only.
template <typename T, int D>
__device__ __forceinline__ void store_forward_rows(T* out, float* lse, const float (&o)[D / 8][4], const float (&m)[2], const float (&l)[2], const PackedRows& rows, int r0) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        float lt = l[i];
        lt += __shfl_xor_sync(FULL_MASK, lt, 1);
        lt += __shfl_xor_sync(FULL_MASK, lt, 2);
        if (!rows.valid(r0 + 8 * i)) continue;
        const u64 row = rows.row(r0 + 8 * i);
        store_row<T, D>(out + row * D, o, i, 1.0f / lt);
        if (threadIdx.x % 4 == 0) lse[row] = m[i] * 0.6931471805599453f + __logf(lt);
    }
}
