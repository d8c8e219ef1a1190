// rms_norm.cu: RMSNorm of each row of a rows x cols matrix (contiguous), with the residual add of a
// pre-norm block fused in front, and its backward.
//
// - rms_norm_<T>: one row group per row (common.cuh: a warp for cols <= 1024, a 256-thread block
//   above). Pass 1: h = x + residual, rounded to T and stored (the block's new residual stream;
//   skipped without a residual, where h = x), and Σ h² in f32 over the rounded values; the group
//   reduces in a fixed order. Pass 2: y = (h · inv) · w with inv = 1 / √(Σh²/n + eps), re-reading
//   h (the thread's own writes, or x; mostly cache hits).
// - rms_norm_backward_rows_<T>: one row group per row; with g = dy · w, reduces the pair
//   (Σ h², Σ g·h), then dh = inv · g − h · inv³ · (Σ g·h) / n, and stores inv (f32) for the next
//   kernel. inv is recomputed from h, so the forward saves nothing but h.
// - rms_norm_backward_weight_<T>: dw[c] = Σ_rows dy[r, c] · h[r, c] · inv[r]. A 32 x 8 block per
//   32 columns: the 8 thread rows stride over the rows (coalesced 32-wide reads), then add their
//   8 partials in order. Deterministic; one pass over dy and h. Few blocks when cols is small, but
//   the sum over rows is a small share of a norm's backward next to the row kernel.
//
// Arithmetic in f32 with accurate sqrtf; bf16/f16 widen on load and narrow on store, as the CPU
// reference (cpu/rms_norm.rs) does.
//
// Roofline: forward reads x (and the residual) and writes y (and h); backward reads dy and h twice
// (rows, then weight) and writes dh. Memory bound.

#include "common.cuh"

struct SumOp {
    __device__ float operator()(float a, float b) const { return a + b; }
};

struct Pair {
    float hh;
    float gh;
};

struct PairSumOp {
    __device__ Pair operator()(Pair a, Pair b) const { return Pair{a.hh + b.hh, a.gh + b.gh}; }
};

template <typename T>
__device__ void rms_norm_rows(const T* x, const T* res, const T* w, T* y, T* h, u64 rows, u64 cols, float eps, int has_res) {
    __shared__ float smem[32];
    const u64 row = (u64)blockIdx.x * blockDim.y + threadIdx.y;
    const bool active = row < rows;
    const u64 off = row * cols;
    float ss = 0.0f;
    if (active) {
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
            float v = to_float(x[off + c]);
            if (has_res) {
                const T hv = from_float<T>(v + to_float(res[off + c]));
                h[off + c] = hv;
                v = to_float(hv);
            }
            ss += v * v;
        }
    }
    ss = group_reduce(ss, SumOp(), smem);
    if (!active) return;
    const float inv = 1.0f / sqrtf(ss / (float)cols + eps);
    const T* hr = (has_res ? h : x) + off;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) y[off + c] = from_float<T>(to_float(hr[c]) * inv * to_float(w[c]));
}

template <typename T>
__device__ void rms_norm_backward_rows(const T* dy, const T* h, const T* w, T* dh, float* inv_out, u64 rows, u64 cols, float eps) {
    __shared__ Pair smem[32];
    const u64 row = (u64)blockIdx.x * blockDim.y + threadIdx.y;
    const bool active = row < rows;
    const u64 off = row * cols;
    Pair p = Pair{0.0f, 0.0f};
    if (active) {
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
            const float hv = to_float(h[off + c]);
            p.hh += hv * hv;
            p.gh += to_float(dy[off + c]) * to_float(w[c]) * hv;
        }
    }
    p = group_reduce(p, PairSumOp(), smem);
    if (!active) return;
    const float inv = 1.0f / sqrtf(p.hh / (float)cols + eps);
    const float k = inv * inv * inv * p.gh / (float)cols;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const float g = to_float(dy[off + c]) * to_float(w[c]);
        dh[off + c] = from_float<T>(inv * g - k * to_float(h[off + c]));
    }
    if (threadIdx.x == 0) inv_out[row] = inv;
}

template <typename T> __device__ void rms_norm_backward_weight(const T* dy, const T* h, const float* inv, T* dw, u64 rows, u64 cols) {
    __shared__ float part[8][33];
    const u64 c = (u64)blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (c < cols) {
        for (u64 r = threadIdx.y; r < rows; r += 8) acc += to_float(dy[r * cols + c]) * to_float(h[r * cols + c]) * inv[r];
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y != 0 || c >= cols) return;
    float s = part[0][threadIdx.x];
    for (int i = 1; i < 8; ++i) s += part[i][threadIdx.x];
    dw[c] = from_float<T>(s);
}

#define ENTRIES(NAME, T)                                                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        rms_norm_##NAME(const T* x, const T* res, const T* w, T* y, T* h, u64 rows, u64 cols, float eps, int has_res) {    \
        rms_norm_rows<T>(x, res, w, y, h, rows, cols, eps, has_res);                                                       \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) rms_norm_backward_rows_##NAME(                                        \
        const T* dy, const T* h, const T* w, T* dh, float* inv, u64 rows, u64 cols, float eps) {                           \
        rms_norm_backward_rows<T>(dy, h, w, dh, inv, rows, cols, eps);                                                     \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        rms_norm_backward_weight_##NAME(const T* dy, const T* h, const float* inv, T* dw, u64 rows, u64 cols) {            \
        rms_norm_backward_weight<T>(dy, h, inv, dw, rows, cols);                                                           \
    }

ENTRIES(f32, float)
ENTRIES(bf16, bf16)
ENTRIES(f16, f16)
