// index.cu: moving rows and elements by u32 index: the embedding lookup and its gradient, token
// permutations for expert routing, picking targets and routing weights along the last axis.
//
// - index_select_w{2,4,8,16}: out[i, :] = src[idx[i], :]. A pure byte move, so kernels are by
//   element *width*, not dtype: the Rust side picks the widest width (up to 16 bytes) that divides
//   the row's byte length, so a bf16 row of 4096 moves as 512 16-byte words. Grid: x over the row's
//   words, y over output rows (strided; the y extent is capped at 65535). Reads and writes are
//   contiguous within a row, so fully coalesced; idx[i] is one broadcast load per block row.
// - scatter_add_rows_*: acc[idx[i], :] += src[i, :] with f32 atomicAdd into an f32 accumulator
//   (zeroed first). For f32 the accumulator is the output; for bf16/f16 the Rust side casts it to
//   the output dtype afterwards, so rows hit by many indices are summed in f32, not rounded to bf16
//   after every add. The summation order of colliding rows is not fixed: results can differ in the
//   last f32 bits between runs (the backend contract in backend.rs allows this). A deterministic version needs
//   the indices sorted; the expert-routing kernels build such sorted lists and do not use this.
// - gather_last_w{2,4,8}: out[r, j] = src[r, idx[r, j]]. One thread per output element.
// - scatter_add_last_*: out[r, idx[r, j]] += src[r, j], deterministic: the thread of the first j
//   holding a given index sums, in j order and in f32, every src[r, j'] with that index, and writes
//   once; the others write nothing. O(k) per thread, fine for k up to a few thousand. The output is
//   zeroed first (entries no index hits stay 0).
//
// Roofline: each moves its output once and its inputs once (scatter: plus the f32 accumulator);
// memory bound, with random row access only at row granularity.

#include "common.cuh"

template <typename W> __device__ void index_select(const W* src, const u32* idx, W* out, u64 n_idx, u64 row_words) {
    for (u64 r = blockIdx.y; r < n_idx; r += gridDim.y) {
        const W* s = src + (u64)idx[r] * row_words;
        W* o = out + r * row_words;
        for (u64 c = (u64)blockIdx.x * blockDim.x + threadIdx.x; c < row_words; c += (u64)gridDim.x * blockDim.x) o[c] = s[c];
    }
}

template <typename T> __device__ void scatter_add_rows(const T* src, const u32* idx, float* acc, u64 n_idx, u64 row_len) {
    for (u64 r = blockIdx.y; r < n_idx; r += gridDim.y) {
        const T* s = src + r * row_len;
        float* a = acc + (u64)idx[r] * row_len;
        for (u64 c = (u64)blockIdx.x * blockDim.x + threadIdx.x; c < row_len; c += (u64)gridDim.x * blockDim.x)
            atomicAdd(a + c, to_float(s[c]));
    }
}

template <typename E> __device__ void gather_last(const E* src, const u32* idx, E* out, u64 rows, u64 n, u64 k) {
    const u64 total = rows * k;
    for (u64 t = global_thread(); t < total; t += global_threads()) {
        const u64 r = t / k;
        out[t] = src[r * n + idx[t]];
    }
}

template <typename T> __device__ void scatter_add_last(const T* src, const u32* idx, T* out, u64 rows, u64 k, u64 n) {
    const u64 total = rows * k;
    for (u64 t = global_thread(); t < total; t += global_threads()) {
        const u64 r = t / k, j = t - r * k;
        const u32* ir = idx + r * k;
        const T* sr = src + r * k;
        const u32 target = ir[j];
        bool first = true;
        for (u64 q = 0; q < j && first; ++q) first = ir[q] != target;
        if (!first) continue;
        float sum = 0.0f;
        for (u64 q = j; q < k; ++q)
            if (ir[q] == target) sum += to_float(sr[q]);
        out[r * n + target] = from_float<T>(sum);
    }
}

#define WIDTH_ENTRIES(NAME, W)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256)                                                              \
        index_select_##NAME(const W* src, const u32* idx, W* out, u64 n_idx, u64 row_words) {                     \
        index_select<W>(src, idx, out, n_idx, row_words);                                                          \
    }
#define GATHER_ENTRIES(NAME, E)                                                                                    \
    extern "C" __global__ void __launch_bounds__(256)                                                              \
        gather_last_##NAME(const E* src, const u32* idx, E* out, u64 rows, u64 n, u64 k) {                         \
        gather_last<E>(src, idx, out, rows, n, k);                                                                 \
    }
#define FLOAT_ENTRIES(NAME, T)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256)                                                              \
        scatter_add_rows_##NAME(const T* src, const u32* idx, float* acc, u64 n_idx, u64 row_len) {                \
        scatter_add_rows<T>(src, idx, acc, n_idx, row_len);                                                        \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                                              \
        scatter_add_last_##NAME(const T* src, const u32* idx, T* out, u64 rows, u64 k, u64 n) {                    \
        scatter_add_last<T>(src, idx, out, rows, k, n);                                                            \
    }

WIDTH_ENTRIES(w2, u16)
WIDTH_ENTRIES(w4, u32)
WIDTH_ENTRIES(w8, u64)
WIDTH_ENTRIES(w16, W16)
GATHER_ENTRIES(w2, u16)
GATHER_ENTRIES(w4, u32)
GATHER_ENTRIES(w8, u64)
FLOAT_ENTRIES(f32, float)
FLOAT_ENTRIES(bf16, bf16)
FLOAT_ENTRIES(f16, f16)
