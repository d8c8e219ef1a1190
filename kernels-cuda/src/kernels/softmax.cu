// softmax.cu: softmax or log-softmax of each row of a rows x cols matrix (contiguous), and the
// fused softmax cross-entropy of each row against a target index (forward and backward).
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
// Cross-entropy: the forward is pass 1 only, then loss = (m − x[target]) + log(s) (one read of the
// logits, nothing kept; m − x[target] first, as it is exact for nearby values). The backward
// recomputes (m, s) and writes d = (exp(x − m) / s − [c == target]) · g[row]: one kernel where the
// unfused form launched five and kept the log-probabilities alive between forward and backward.
// Targets are < cols (the op layer checks).
//
// Accurate expf/logf (no fast math): router probabilities and the loss feed training directly.
//
// Roofline: softmax reads 2·rows·cols (the second pass mostly from cache) and writes rows·cols
// elements; about 5 FLOPs and one exp per element. Memory bound for bf16/f16 on H100. The
// cross-entropy forward reads rows·cols and writes rows; its backward is a softmax's traffic.

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

// This thread's row of x, whether it exists, and pass 1 over it: the group's (max, Σ exp(x − max)).
// Every thread of the block calls it; rows past the end pass the identity.
template <typename T> struct RowStats {
    u64 row;
    bool active;
    const T* xr;
    MaxSum ms;
};

template <typename T> __device__ RowStats<T> row_stats(const T* x, u64 rows, u64 cols) {
    __shared__ MaxSum smem[32];
    RowStats<T> r;
    r.row = (u64)blockIdx.x * blockDim.y + threadIdx.y;
    r.active = r.row < rows;
    r.xr = x + r.row * cols;
    MaxSum ms = MaxSum{-INFINITY, 0.0f};
    if (r.active) {
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
            float v = to_float(r.xr[c]);
            if (v > ms.m) {
                ms.s = ms.s * expf(ms.m - v) + 1.0f;
                ms.m = v;
            } else if (v != -INFINITY) {
                ms.s += expf(v - ms.m);
            }
        }
    }
    r.ms = group_reduce(ms, MaxSumOp(), smem);
    return r;
}

template <typename T> __device__ void softmax_rows(const T* x, T* y, u64 rows, u64 cols, int log) {
    const RowStats<T> r = row_stats(x, rows, cols);
    if (!r.active) return;
    T* yr = y + r.row * cols;
    if (log) {
        const float shift = r.ms.m + logf(r.ms.s);
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = from_float<T>(to_float(r.xr[c]) - shift);
    } else {
        const float inv = 1.0f / r.ms.s;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = from_float<T>(expf(to_float(r.xr[c]) - r.ms.m) * inv);
    }
}

template <typename T> __device__ void cross_entropy_rows(const T* x, const u32* targets, T* loss, u64 rows, u64 cols) {
    const RowStats<T> r = row_stats(x, rows, cols);
    if (r.active && threadIdx.x == 0) loss[r.row] = from_float<T>((r.ms.m - to_float(r.xr[targets[r.row]])) + logf(r.ms.s));
}

template <typename T>
__device__ void cross_entropy_backward_rows(const T* x, const u32* targets, const T* g, T* d, u64 rows, u64 cols) {
    const RowStats<T> r = row_stats(x, rows, cols);
    if (!r.active) return;
    const float gr = to_float(g[r.row]);
    const float scale = gr / r.ms.s;
    const u64 target = targets[r.row];
    T* dr = d + r.row * cols;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const float p = expf(to_float(r.xr[c]) - r.ms.m) * scale;
        dr[c] = from_float<T>(c == target ? p - gr : p);
    }
}

#define ENTRIES(NAME, T)                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) softmax_##NAME(const T* x, T* y, u64 rows, u64 cols, int log) {  \
        softmax_rows<T>(x, y, rows, cols, log);                                                                       \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                                                 \
        cross_entropy_##NAME(const T* x, const u32* targets, T* loss, u64 rows, u64 cols) {                           \
        cross_entropy_rows<T>(x, targets, loss, rows, cols);                                                          \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                                                 \
        cross_entropy_backward_##NAME(const T* x, const u32* targets, const T* g, T* d, u64 rows, u64 cols) {         \
        cross_entropy_backward_rows<T>(x, targets, g, d, rows, cols);                                                 \
    }

ENTRIES(f32, float)
ENTRIES(bf16, bf16)
ENTRIES(f16, f16)
