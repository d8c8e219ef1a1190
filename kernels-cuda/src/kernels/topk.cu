// topk.cu: the k largest entries of each row (rows x n, contiguous), in descending order with their
// u32 indices; ties go to the lower index, NaN counts as the largest value.
//
// Selection by repeated arg-max: one row group per row (a warp for n <= 1024, a 256-thread block
// above; see common.cuh). Round t finds the best element strictly behind the round t-1 winner in
// the total order "value descending, index ascending". Because that order is strict, nothing needs
// marking as taken, no shared-memory copy of the row is needed (so n is not limited by shared
// memory), and the result is deterministic. Each round re-reads the row, usually from L1/L2.
//
// Cost: k·n reads per row, so this is for router-sized problems (n = experts, up to a few thousand;
// k small). Sampling top-k over a large vocabulary wants a radix select instead.
//
// Roofline: reads k·rows·n elements (mostly cached after the first round), writes 2·rows·k.

#include "common.cuh"

struct Cand {
    float v;
    u32 i;
};

struct CandOp {
    __device__ Cand operator()(Cand a, Cand b) const { return ahead(a.v, a.i, b.v, b.i) ? a : b; }
};

template <typename T> __device__ void topk_rows(const T* x, T* values, u32* indices, u64 rows, u64 n, u64 k) {
    __shared__ Cand smem[32];
    const u64 row = (u64)blockIdx.x * blockDim.y + threadIdx.y;
    const bool active = row < rows;
    const T* xr = x + row * n;
    Cand prev = Cand{0.0f, 0u};
    for (u64 t = 0; t < k; ++t) {
        Cand best = Cand{-INFINITY, 0xffffffffu};
        if (active) {
            for (u64 c = threadIdx.x; c < n; c += blockDim.x) {
                float v = to_float(xr[c]);
                bool behind_prev = t == 0 || ahead(prev.v, prev.i, v, (u32)c);
                if (behind_prev && ahead(v, (u32)c, best.v, best.i)) best = Cand{v, (u32)c};
            }
        }
        best = group_reduce(best, CandOp(), smem);
        if (active && threadIdx.x == 0) {
            values[row * k + t] = from_float<T>(best.v);
            indices[row * k + t] = best.i;
        }
        prev = best;
    }
}

#define ENTRIES(NAME, T)                                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                                      \
        topk_##NAME(const T* x, T* values, u32* indices, u64 rows, u64 n, u64 k) {                         \
        topk_rows<T>(x, values, indices, rows, n, k);                                                      \
    }

ENTRIES(f32, float)
ENTRIES(bf16, bf16)
ENTRIES(f16, f16)
