// reduce.cu: sum / mean / max / min and argmax over the middle axis of an (outer, size, inner) view.
//
// Two layouts, two kernels each:
// - rows (inner == 1): the reduced axis is contiguous. One row group per output (see common.cuh):
//   a warp per row when size <= 1024 (blockDim 32 x 8: 8 rows per block), a 256-thread block per
//   row above that. Threads stride through the row so each warp load is 128 contiguous bytes; the
//   group combines with shuffles and, for a block, one shared-memory step.
// - cols (inner > 1): the reduced axis has stride `inner`. A block is 32 x 8 threads; x runs along
//   inner (so loads are coalesced along the contiguous axis) and the 8 y-threads split the reduced
//   axis, combining through shared memory in a fixed order. Grid: (inner / 32, outer).
//
// Accumulation is always f32 (sum of bf16 in bf16 would lose everything after ~256 terms); the
// result is rounded once to the output type. A thread's own run of a sum (size / 256 terms for a
// long row: 4096 for 2^20 elements) is compensated (Kahan): plain f32 accumulation of n similar
// terms drifts by about n·eps/2 relative (4e-5 for 4096 equal terms), the compensation keeps it
// near one rounding, like the CPU reference; the tree steps after it add only log2(threads). Max / min propagate NaN; argmax counts NaN as the
// largest value and takes the first index on ties, like the CPU reference.
//
// Roofline: reads outer·size·inner elements once, writes outer·inner: memory bound.

#include "common.cuh"

// Mirrors `ReduceOp` codes in engine/src/cuda/ops/reduce.rs.
enum ReduceCode { R_SUM, R_MEAN, R_MAX, R_MIN };

__device__ __forceinline__ float reduce_identity(int op) {
    return op == R_MAX ? -INFINITY : (op == R_MIN ? INFINITY : 0.0f);
}

__device__ __forceinline__ float reduce_combine(int op, float a, float b) {
    return op == R_MAX ? max_nan(a, b) : (op == R_MIN ? min_nan(a, b) : a + b);
}

__device__ __forceinline__ float reduce_finish(int op, float acc, u64 size) {
    return op == R_MEAN ? acc / (float)size : acc;
}

struct ArgBest {
    float v;
    u32 i;
};

struct ArgBestOp {
    __device__ ArgBest operator()(ArgBest a, ArgBest b) const { return ahead(a.v, a.i, b.v, b.i) ? a : b; }
};

// Before any element: loses against every real (value, index) pair.
__device__ __forceinline__ ArgBest arg_none() { return ArgBest{-INFINITY, 0xffffffffu}; }

// Compensated sum of a sequence of floats. Once the sum is not finite the compensation is
// dropped, so infinities and NaN propagate as in a plain sum.
struct KahanSum {
    float sum = 0.0f, carry = 0.0f;
    __device__ __forceinline__ void add(float v) {
        const float y = v - carry;
        const float t = sum + y;
        carry = isfinite(t) ? (t - sum) - y : 0.0f;
        sum = t;
    }
};

// acc combined with x[0], x[stride], ... below n, in order (compensated for sums).
template <typename T> __device__ __forceinline__ float reduce_run(int op, float acc, const T* x, u64 begin, u64 n, u64 stride, u64 step) {
    if (op == R_SUM || op == R_MEAN) {
        KahanSum k;
        k.sum = acc;
        for (u64 i = begin; i < n; i += step) k.add(to_float(x[i * stride]));
        return k.sum;
    }
    for (u64 i = begin; i < n; i += step) acc = reduce_combine(op, acc, to_float(x[i * stride]));
    return acc;
}

template <typename T> __device__ void reduce_rows(const T* x, T* y, u64 rows, u64 size, int op) {
    __shared__ float smem[32];
    const u64 row = (u64)blockIdx.x * blockDim.y + threadIdx.y;
    float acc = reduce_identity(op);
    if (row < rows) acc = reduce_run(op, acc, x + row * size, threadIdx.x, size, 1, blockDim.x);
    acc = group_reduce(acc, [op](float a, float b) { return reduce_combine(op, a, b); }, smem);
    if (row < rows && threadIdx.x == 0) y[row] = from_float<T>(reduce_finish(op, acc, size));
}

template <typename T> __device__ void argmax_rows(const T* x, u32* y, u64 rows, u64 size) {
    __shared__ ArgBest smem[32];
    const u64 row = (u64)blockIdx.x * blockDim.y + threadIdx.y;
    ArgBest best = arg_none();
    if (row < rows) {
        const T* xr = x + row * size;
        for (u64 c = threadIdx.x; c < size; c += blockDim.x) {
            float v = to_float(xr[c]);
            if (ahead(v, (u32)c, best.v, best.i)) best = ArgBest{v, (u32)c};
        }
    }
    best = group_reduce(best, ArgBestOp(), smem);
    if (row < rows && threadIdx.x == 0) y[row] = best.i;
}

// Block (32, 8): threadIdx.x along inner, threadIdx.y splits the reduced axis; blockIdx.y strides
// over outer (the grid's y extent is capped at 65535).
template <typename T> __device__ void reduce_cols(const T* x, T* y, u64 outer, u64 size, u64 inner, int op) {
    __shared__ float part[8][33];
    const u64 i = (u64)blockIdx.x * 32 + threadIdx.x;
    for (u64 o = blockIdx.y; o < outer; o += gridDim.y) {
        float acc = reduce_identity(op);
        if (i < inner) acc = reduce_run(op, acc, x + o * size * inner + i, threadIdx.y, size, inner, 8);
        part[threadIdx.y][threadIdx.x] = acc;
        __syncthreads();
        if (threadIdx.y == 0 && i < inner) {
            for (int r = 1; r < 8; ++r) acc = reduce_combine(op, acc, part[r][threadIdx.x]);
            y[o * inner + i] = from_float<T>(reduce_finish(op, acc, size));
        }
        __syncthreads();  // part is rewritten by the next o
    }
}

template <typename T> __device__ void argmax_cols(const T* x, u32* y, u64 outer, u64 size, u64 inner) {
    __shared__ ArgBest part[8][33];
    const u64 i = (u64)blockIdx.x * 32 + threadIdx.x;
    for (u64 o = blockIdx.y; o < outer; o += gridDim.y) {
        ArgBest best = arg_none();
        if (i < inner) {
            const T* xo = x + o * size * inner + i;
            for (u64 s = threadIdx.y; s < size; s += 8) {
                float v = to_float(xo[s * inner]);
                if (ahead(v, (u32)s, best.v, best.i)) best = ArgBest{v, (u32)s};
            }
        }
        part[threadIdx.y][threadIdx.x] = best;
        __syncthreads();
        if (threadIdx.y == 0 && i < inner) {
            for (int r = 1; r < 8; ++r) best = ArgBestOp()(best, part[r][threadIdx.x]);
            y[o * inner + i] = best.i;
        }
        __syncthreads();
    }
}

#define ENTRIES(NAME, T)                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) reduce_rows_##NAME(const T* x, T* y, u64 rows, u64 size, int op) { \
        reduce_rows<T>(x, y, rows, size, op);                                                                       \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(256) argmax_rows_##NAME(const T* x, u32* y, u64 rows, u64 size) {  \
        argmax_rows<T>(x, y, rows, size);                                                                           \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(256) reduce_cols_##NAME(const T* x, T* y, u64 outer, u64 size, u64 inner, int op) { \
        reduce_cols<T>(x, y, outer, size, inner, op);                                                                      \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(256) argmax_cols_##NAME(const T* x, u32* y, u64 outer, u64 size, u64 inner) { \
        argmax_cols<T>(x, y, outer, size, inner);                                                                          \
    }

ENTRIES(f32, float)
ENTRIES(bf16, bf16)
ENTRIES(f16, f16)
