// common.cuh: what every dsmoe kernel shares.
//
// The kernels are compiled at run time by NVRTC and include NO CUDA toolkit header: NVRTC then needs
// nothing but libnvrtc and its builtins, which ship as one PyPI wheel, so a machine with a driver and
// that wheel can build every kernel. What the toolkit headers would give us is small and defined here:
//
// - bf16 / f16 are 16-bit storage types (a wrapper around the bits). Arithmetic never happens in
//   them: a kernel widens to f32 on load (`to_float`), computes and accumulates in f32, and narrows
//   on store (`from_float<T>`, round to nearest even, NaN stays NaN). Conversions use inline PTX:
//   `cvt.rn.bf16.f32` (sm_80 and up; a bit-exact integer rounding below that), `cvt.rn.f16.f32`, and
//   a shift / `cvt.f32.f16` to widen.
// - Pack<T>: 16 bytes of T, so element-wise kernels move 16 bytes per thread per access. Device
//   buffers come from the caching allocator (at least 512-byte aligned) and kernels index from the
//   buffer start, so a pack-aligned index is a 16-byte-aligned address.
// - warp and "row group" reductions. A row group is the blockDim.x threads of one threadIdx.y: a
//   block holds blockDim.y rows. Small rows use a warp per row (blockDim = 32 x 8), long rows a whole
//   block (blockDim = 256 x 1); the same kernel serves both. The cross-warp step combines warps in a
//   fixed order, so results do not depend on scheduling.
// - StridedLayout: dims and element strides (up to MAX_DIMS axes) to map a linear output index to
//   input offsets, for broadcasting binary ops and permutes. The Rust side merges axes first, so
//   most launches see rank 1 to 3.
// - NaN ordering for max / argmax / top-k: NaN counts as the largest value, so it propagates.

#pragma once

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define MAX_DIMS 6
#define WARP 32
#define FULL_MASK 0xffffffffu
// <math.h> is not included; these are the IEEE bit patterns.
#define INFINITY __int_as_float(0x7f800000)
#define NAN_F __int_as_float(0x7fffffff)

struct __align__(2) bf16 { u16 bits; };
struct __align__(2) f16 { u16 bits; };

// ---- conversions --------------------------------------------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(double x) { return (float)x; }
__device__ __forceinline__ float to_float(u32 x) { return (float)x; }
__device__ __forceinline__ float to_float(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }
__device__ __forceinline__ float to_float(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_float<double>(float x) { return (double)x; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) {
    bf16 r;
#if __CUDA_ARCH__ >= 800
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
#else
    u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (u16)((u >> 16) | 0x40u);  // keep NaN a (quiet) NaN
    } else {
        r.bits = (u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
#endif
    return r;
}
template <> __device__ __forceinline__ f16 from_float<f16>(float x) {
    f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
    return r;
}

// ---- 16-byte packs --------------------------------------------------------------------------------

template <typename T> struct __align__(16) Pack {
    static const int N = 16 / sizeof(T);
    T v[N];
};

// A 16-byte word, for byte moves that are indifferent to the element type.
struct __align__(16) W16 { u32 w[4]; };

// ---- ordering with NaN as the largest value ------------------------------------------------------

// Is (a, ia) ahead of (b, ib) in "descending value, then ascending index" order? NaN comes first.
__device__ __forceinline__ bool ahead(float a, u32 ia, float b, u32 ib) {
    bool na = isnan(a), nb = isnan(b);
    if (na != nb) return na;
    if (!na && a != b) return a > b;
    return ia < ib;
}

__device__ __forceinline__ float max_nan(float a, float b) { return (a > b || isnan(a)) ? a : b; }
__device__ __forceinline__ float min_nan(float a, float b) { return (a < b || isnan(a)) ? a : b; }

// ---- reductions ----------------------------------------------------------------------------------

// Shuffles any 4-byte-multiple POD value across the warp.
template <typename V> __device__ __forceinline__ V shfl_xor(V v, int lane_mask) {
    static_assert(sizeof(V) % 4 == 0, "shuffled values are whole 32-bit words");
    union { V v; u32 w[sizeof(V) / 4]; } u;
    u.v = v;
#pragma unroll
    for (int i = 0; i < (int)(sizeof(V) / 4); ++i) u.w[i] = __shfl_xor_sync(FULL_MASK, u.w[i], lane_mask);
    return u.v;
}

template <typename V, typename Op> __device__ __forceinline__ V warp_reduce(V v, Op op) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = op(v, shfl_xor(v, o));
    return v;
}

// Reduces over the blockDim.x threads of this row group; every thread of the group gets the result.
// `smem` holds one V per warp of the block. Every thread of the block must call this (it may contain
// __syncthreads): threads without a row pass the identity.
template <typename V, typename Op> __device__ __forceinline__ V group_reduce(V v, Op op, V* smem) {
    v = warp_reduce(v, op);
    if (blockDim.x == WARP) return v;
    const u32 warps = blockDim.x / WARP;
    V* mine = smem + threadIdx.y * warps;
    __syncthreads();  // earlier readers of smem are done
    if ((threadIdx.x & (WARP - 1)) == 0) mine[threadIdx.x / WARP] = v;
    __syncthreads();
    V r = mine[0];
    for (u32 w = 1; w < warps; ++w) r = op(r, mine[w]);
    return r;
}

// ---- strided layouts -----------------------------------------------------------------------------

// Mirrors `StridedLayout` in engine/src/cuda/ops/strided.rs (repr(C)): keep the two in step.
struct StridedLayout {
    u32 rank;
    u32 _pad;
    u64 dims[MAX_DIMS];
    u64 sa[MAX_DIMS];  // strides of the first operand, 0 where broadcast
    u64 sb[MAX_DIMS];  // strides of the second operand (unused by single-operand kernels)
};

// Offsets of linear (row-major) output index i in both operands. I is u32 when every index and
// offset fits, which makes the divisions several times cheaper than 64-bit ones.
template <typename I> __device__ __forceinline__ void strided_offsets(const StridedLayout& l, I i, I& oa, I& ob) {
    oa = 0;
    ob = 0;
#pragma unroll
    for (int d = MAX_DIMS - 1; d >= 0; --d) {
        if (d < (int)l.rank) {
            I dim = (I)l.dims[d];
            I c = i % dim;
            i /= dim;
            oa += c * (I)l.sa[d];
            ob += c * (I)l.sb[d];
        }
    }
}

// ---- grid helpers --------------------------------------------------------------------------------

__device__ __forceinline__ u64 global_thread() { return (u64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ u64 global_threads() { return (u64)gridDim.x * blockDim.x; }
