// moe_decode.cu: the sparse MoE MLP for a handful of tokens (decode, T <= DECODE_ROWS = 16), where
// the layer is a stream of the selected experts' weights and nothing else matters.
//
// With T <= 16 an expert usually serves at most 16 list entries (a token normally picks an expert
// once), so each kernel keeps every entry's partial sums in registers and reads each weight element
// exactly once. Hand-built routes may name an expert twice for one token; then an expert can have
// more than 16 entries, and the kernels walk them in passes of 16 (re-reading the weights once per
// extra pass) rather than dropping the rest:
// - moe_decode_up_<T>: grid (E, ceil(f / 8)), 8 warps; warp w owns W1 row c = 8·blockIdx.y + w of
//   expert blockIdx.x and streams its d elements with 16-byte loads (4 in flight per lane by
//   unrolling), dotting each with the expert's gathered x rows (L1/L2 resident: T·d·2 bytes), then
//   reduces across the warp: U[i, c] and H[i, c] = gelu(U) for the expert's list entries i.
// - moe_decode_down_<T>: grid (E, ceil(d / 1024), S) with S = ceil(f / DOWN_SPLIT) splits of the
//   reduction over f; 256 threads, 4 output columns each (8- or 16-byte loads of W2 rows), partial
//   sums w[slot] · Σ_{c in split} H[i, c] · W2_e[c, col] written as f32 to partial[split, slot, :].
//   moe_combine_splits (moe_sparse.cu) then sums a token's (slot, split) partials in a fixed order,
//   so there are no atomics and the result is bit-reproducible.
// - moe_decode_up_swiglu_<T> (gated experts, a third matrix w3 stacked like w1): the same walk over
//   W1 row c and W3 row c together (both streamed, one pass over the gathered x rows), G[i, c] kept
//   in `u`, V[i, c] in `v`, and H[i, c] = silu(G)·V with G rounded to T first (as the grouped
//   path's epilogue reads the stored G); moe_decode_down is the same for both activations.
// Blocks of experts nobody chose exit after reading two offsets; the grid is sized from E alone, so
// no host sync is needed. Parallelism: 8 selected experts x (512/8) = 512 blocks for W1 and
// 8 x 4 x 16 = 512 blocks for W2 at d = 4096, f = 512: several waves of 132 SMs with 16 warps of
// independent 16-byte loads each, which is what it takes to keep HBM busy.
// Bytes: 2·k_sel·f·d·sizeof(T) weights (the floor), plus T·d reads of x per W1 row pass (cached),
// plus S·T·k·d·4 partials (small next to the weights for T <= 16). FLOPs: 4·T·k·f·d.
// Alignment: d a multiple of 8 and 16-byte aligned bases (checked by the caller, which otherwise
// uses the grouped path).

#include "common.cuh"

#define DECODE_ROWS 16
#define UP_WARPS 8
#define DOWN_THREADS 256
#define DOWN_COLS 4
#define DOWN_SPLIT 32

__device__ __forceinline__ float gelu_f(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + expf(-x)); }

template <typename T, int N> struct __align__(N * sizeof(T)) Vec { T v[N]; };

// Up-projection of list entries [first, first + rows) of expert e (rows <= DECODE_ROWS) for W1 row c
// (and W3 row c when GATED; w3 and v are unused otherwise).
template <bool GATED, typename T>
__device__ void decode_up_rows(const T* x, const T* w1, const T* w3, const u32* sorted_slots, u32 k_max, T* h, T* u, T* v_out, u64 d,
                               u64 f, u32 e, u64 c, u32 first, u32 rows) {
    const u32 lane = threadIdx.x & (WARP - 1);
    const T* x_rows[DECODE_ROWS];
#pragma unroll
    for (int r = 0; r < DECODE_ROWS; ++r) x_rows[r] = x + (u64)(r < (int)rows ? sorted_slots[first + r] / k_max : 0) * d;
    const Vec<T, 8>* wrow = reinterpret_cast<const Vec<T, 8>*>(w1 + ((u64)e * f + c) * d);
    const Vec<T, 8>* w3row = reinterpret_cast<const Vec<T, 8>*>(GATED ? w3 + ((u64)e * f + c) * d : nullptr);
    float acc[DECODE_ROWS], acc3[GATED ? DECODE_ROWS : 1];
#pragma unroll
    for (int r = 0; r < DECODE_ROWS; ++r) acc[r] = 0.0f;
#pragma unroll
    for (int r = 0; r < (GATED ? DECODE_ROWS : 1); ++r) acc3[r] = 0.0f;
#pragma unroll 4
    for (u64 v = lane; v < d / 8; v += WARP) {
        const Vec<T, 8> wv = wrow[v];
        Vec<T, 8> w3v;
        if (GATED) w3v = w3row[v];
#pragma unroll
        for (int r = 0; r < DECODE_ROWS; ++r) {
            if (r < (int)rows) {
                const Vec<T, 8> xv = reinterpret_cast<const Vec<T, 8>*>(x_rows[r])[v];
#pragma unroll
                for (int q = 0; q < 8; ++q) {
                    acc[r] = fmaf(to_float(wv.v[q]), to_float(xv.v[q]), acc[r]);
                    if (GATED) acc3[r] = fmaf(to_float(w3v.v[q]), to_float(xv.v[q]), acc3[r]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < DECODE_ROWS; ++r) {
        if (r < (int)rows) {
            const float v = warp_reduce(acc[r], [](float a, float b) { return a + b; });
            const float up = GATED ? warp_reduce(acc3[GATED ? r : 0], [](float a, float b) { return a + b; }) : 0.0f;
            if (lane == 0) {
                const u64 o = (u64)(first + r) * f + c;
                const T g = from_float<T>(v);
                if (u != nullptr) u[o] = g;
                if (GATED && v_out != nullptr) v_out[o] = from_float<T>(up);
                h[o] = from_float<T>(GATED ? silu_f(to_float(g)) * up : gelu_f(v));
            }
        }
    }
}

template <bool GATED, typename T>
__device__ void decode_up(const T* x, const T* w1, const T* w3, const u32* offsets, const u32* sorted_slots, u32 k_max, T* h, T* u,
                          T* v, u64 d, u64 f) {
    const u32 e = blockIdx.x;
    const u64 c = (u64)blockIdx.y * UP_WARPS + threadIdx.x / WARP;
    if (c >= f) return;
    const u32 end = offsets[e + 1];
    for (u32 first = offsets[e]; first < end; first += DECODE_ROWS)
        decode_up_rows<GATED>(x, w1, w3, sorted_slots, k_max, h, u, v, d, f, e, c, first, min(end - first, (u32)DECODE_ROWS));
}

// Down-projection partials of list entries [first, first + rows) of expert e for this thread's
// columns and this block's split of f.
template <typename T>
__device__ void decode_down_rows(const T* h, const T* w2, const T* weights, const u32* sorted_slots, float* partial, u64 slots,
                                 u64 d, u64 f, u32 e, u64 col, u32 first, u32 rows) {
    const u32 split = blockIdx.z;
    const u64 c_begin = (u64)split * DOWN_SPLIT, c_end = min(c_begin + DOWN_SPLIT, f);
    float acc[DECODE_ROWS][DOWN_COLS];
#pragma unroll
    for (int r = 0; r < DECODE_ROWS; ++r)
#pragma unroll
        for (int q = 0; q < DOWN_COLS; ++q) acc[r][q] = 0.0f;
    const T* wbase = w2 + (u64)e * f * d + col;
#pragma unroll 1
    for (u64 c = c_begin; c < c_end; ++c) {
        const Vec<T, DOWN_COLS> wv = *reinterpret_cast<const Vec<T, DOWN_COLS>*>(wbase + c * d);
#pragma unroll
        for (int r = 0; r < DECODE_ROWS; ++r) {
            if (r < (int)rows) {
                const float hv = to_float(h[(u64)(first + r) * f + c]);
#pragma unroll
                for (int q = 0; q < DOWN_COLS; ++q) acc[r][q] = fmaf(hv, to_float(wv.v[q]), acc[r][q]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < DECODE_ROWS; ++r) {
        if (r < (int)rows) {
            const u32 slot = sorted_slots[first + r];
            const float w = to_float(weights[slot]);
            Vec<float, DOWN_COLS> out;
#pragma unroll
            for (int q = 0; q < DOWN_COLS; ++q) out.v[q] = acc[r][q] * w;
            *reinterpret_cast<Vec<float, DOWN_COLS>*>(partial + ((u64)split * slots + slot) * d + col) = out;
        }
    }
}

template <typename T>
__device__ void decode_down(const T* h, const T* w2, const T* weights, const u32* offsets, const u32* sorted_slots, float* partial,
                            u64 slots, u64 d, u64 f) {
    const u32 e = blockIdx.x;
    const u64 col = ((u64)blockIdx.y * DOWN_THREADS + threadIdx.x) * DOWN_COLS;
    if (col >= d) return;
    const u32 end = offsets[e + 1];
    for (u32 first = offsets[e]; first < end; first += DECODE_ROWS)
        decode_down_rows(h, w2, weights, sorted_slots, partial, slots, d, f, e, col, first, min(end - first, (u32)DECODE_ROWS));
}

#define DECODE_KERNELS(T, SFX)                                                                                          \
    extern "C" __global__ void __launch_bounds__(UP_WARPS * WARP) moe_decode_up_##SFX(                                  \
        const T* x, const T* w1, const u32* offsets, const u32* sorted_slots, u32 k_max, T* h, T* u, u64 d, u64 f) {    \
        decode_up<false, T>(x, w1, nullptr, offsets, sorted_slots, k_max, h, u, nullptr, d, f);                          \
    }                                                                                                                    \
    extern "C" __global__ void __launch_bounds__(UP_WARPS * WARP) moe_decode_up_swiglu_##SFX(                           \
        const T* x, const T* w1, const T* w3, const u32* offsets, const u32* sorted_slots, u32 k_max, T* h, T* u, T* v,  \
        u64 d, u64 f) {                                                                                                  \
        decode_up<true, T>(x, w1, w3, offsets, sorted_slots, k_max, h, u, v, d, f);                                      \
    }                                                                                                                    \
    extern "C" __global__ void __launch_bounds__(DOWN_THREADS) moe_decode_down_##SFX(                                   \
        const T* h, const T* w2, const T* weights, const u32* offsets, const u32* sorted_slots, float* partial,          \
        u64 slots, u64 d, u64 f) {                                                                                       \
        decode_down<T>(h, w2, weights, offsets, sorted_slots, partial, slots, d, f);                                     \
    }

DECODE_KERNELS(float, f32)
DECODE_KERNELS(bf16, bf16)
DECODE_KERNELS(f16, f16)
