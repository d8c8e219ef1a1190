// softmax.cu: softmax or log-softmax of each row of a rows x cols matrix (contiguous).
//
// One row group per row (common.cuh): a warp for cols <= 1024, a 256-thread block above. Two passes
// over the row:
//   1. online max and sum: each thread keeps (m, s) with s = Σ exp(x - m) over its elements,
//      rescaling s when m grows; the group combines pairs with
//      (m, s) ⊕ (m', s') = (M, s·e^(m-M) + s'·e^(m'-M)), M = max(m, m'), in a fixed order.
//   2. y = exp(x - m) / s, or x - m - log(s) for log-softmax.
// The second read of the row is usually an L1/L2 hit. −inf entries contribute exactly 0; a row that
// is all −inf gives NaN (0/0), and a NaN anywhere in a row makes the sum, so the row, NaN.
//
// Accurate expf/logf (no fast math): router probabilities and the loss feed training directly.
//
// Roofline: reads 2·rows·cols (the second pass mostly from cache) and writes rows·cols elements;
// about 5 FLOPs and one exp per element. Memory bound for bf16/f16 on H100.

#include "common.cuh"

struct MaxSum {
    float m;
    float s;
};

struct MaxSumOp {
    __device__ MaxSum operator()(MaxSum a, MaxSum b) const {
        float m = fmaxf(a.m, b.m);
        if (m == -INFINITY) return MaxSum{m, 0.0f};
        return MaxSum{m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
    }
};

template <typename T> __device__ void softmax_rows(const T* x, T* y, u64 rows, u64 cols, int log) {
    __shared__ MaxSum smem[32];
    const u64 row = (u64)blockIdx.x * blockDim.y + threadIdx.y;
    const bool active = row < rows;
    const T* xr = x + row * cols;
    MaxSum ms = MaxSum{-INFINITY, 0.0f};
    if (active) {
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
            float v = to_float(xr[c]);
            if (v > ms.m) {
                ms.s = ms.s * expf(ms.m - v) + 1.0f;
                ms.m = v;
            } else if (v != -INFINITY) {
                ms.s += expf(v - ms.m);
            }
        }
    }
    ms = group_reduce(ms, MaxSumOp(), smem);
    if (!active) return;
    T* yr = y + row * cols;
    if (log) {
        const float shift = ms.m + logf(ms.s);
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = from_float<T>(to_float(xr[c]) - shift);
    } else {
        const float inv = 1.0f / ms.s;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = from_float<T>(expf(to_float(xr[c]) - ms.m) * inv);
    }
}

#define ENTRIES(NAME, T)                                                                                         \
    extern "C" __global__ void __launch_bounds__(256) softmax_##NAME(const T* x, T* y, u64 rows, u64 cols, int log) { \
        softmax_rows<T>(x, y, rows, cols, log);                                                                  \
    }

ENTRIES(f32, float)
ENTRIES(bf16, bf16)
ENTRIES(f16, f16)
