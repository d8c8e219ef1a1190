// layout.cu: kernels that move elements without arithmetic: dtype casts, 2-D block copies
// (concat and narrow), and strided copies (permute).
//
// - cast_<src>_<dst>: every pair of f32, f64, bf16, f16, u32. Float sources widen to f32, f64 and
//   u32 sources to f64 (so u32 <-> f64 is exact); the value is then rounded once to the target,
//   except f64 / large u32 -> bf16 / f16, which round through f32 (a double rounding that can move a
//   tie by one unit in the last place; only test data takes this path). Float -> u32 truncates
//   toward zero and saturates, NaN -> 0 (Rust's `as`).
// - copy2d_w{2,4,8,16}: rows x cols words from a source with row stride `src_stride` to a
//   destination with row stride `dst_stride`. Concat launches one per part (into its column range
//   of the output), narrow one in total. The Rust side picks the widest word (up to 16 bytes) that
//   divides every byte length, stride and offset, so rows move as 16-byte vectors whenever the
//   shapes allow. Grid: x over cols, y over rows (strided; y is capped at 65535). Coalesced.
// - copy_strided_w{2,4,8} (32-bit index math) and copy_strided64_*: out[i] = src[offset(i)], the
//   output contiguous, the source read through a StridedLayout. Permute is this with the source's
//   strides permuted; the Rust side merges axes that stay together. Writes are coalesced; reads are
//   coalesced only when the innermost axis stays innermost. A shared-memory tiled transpose would
//   make both sides coalesced for the [.., a, b] -> [.., b, a] case; this is the correct-first
//   version.
//
// Roofline: read once, write once: 2·n·width bytes (cast: n·(sizeof S + sizeof D)).

#include "common.cuh"

// ---- casts ---------------------------------------------------------------------------------------

// The widest type each source converts through without loss.
__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen(bf16 x) { return to_float(x); }
__device__ __forceinline__ float widen(f16 x) { return to_float(x); }
__device__ __forceinline__ double widen(double x) { return x; }
__device__ __forceinline__ double widen(u32 x) { return (double)x; }

__device__ __forceinline__ u32 saturate_u32(double x) {
    if (!(x > 0.0)) return 0u;  // also NaN
    if (x >= 4294967295.0) return 0xffffffffu;
    return (u32)x;
}

template <typename D> __device__ __forceinline__ D narrow_to(float x) { return from_float<D>(x); }
template <> __device__ __forceinline__ u32 narrow_to<u32>(float x) { return saturate_u32((double)x); }
template <typename D> __device__ __forceinline__ D narrow_to(double x) { return from_float<D>((float)x); }
template <> __device__ __forceinline__ double narrow_to<double>(double x) { return x; }
template <> __device__ __forceinline__ u32 narrow_to<u32>(double x) { return saturate_u32(x); }

template <typename S, typename D> __device__ void cast(const S* x, D* y, u64 n) {
    for (u64 i = global_thread(); i < n; i += global_threads()) y[i] = narrow_to<D>(widen(x[i]));
}

// ---- copies --------------------------------------------------------------------------------------

template <typename W>
__device__ void copy2d(const W* src, W* dst, u64 rows, u64 cols, u64 src_stride, u64 dst_stride) {
    for (u64 r = blockIdx.y; r < rows; r += gridDim.y) {
        const W* s = src + r * src_stride;
        W* d = dst + r * dst_stride;
        for (u64 c = (u64)blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += (u64)gridDim.x * blockDim.x) d[c] = s[c];
    }
}

template <typename W, typename I> __device__ void copy_strided(const W* src, W* dst, I n, StridedLayout l) {
    for (I i = (I)global_thread(); i < n; i += (I)global_threads()) {
        I oa, ob;
        strided_offsets<I>(l, i, oa, ob);
        dst[i] = src[oa];
    }
}

// ---- entry points --------------------------------------------------------------------------------

#define CAST(SN, S, DN, D) \
    extern "C" __global__ void __launch_bounds__(256) cast_##SN##_##DN(const S* x, D* y, u64 n) { cast<S, D>(x, y, n); }
// Every ordered pair of distinct dtypes.
CAST(f32, float, f64, double) CAST(f32, float, bf16, bf16) CAST(f32, float, f16, f16) CAST(f32, float, u32, u32)
CAST(f64, double, f32, float) CAST(f64, double, bf16, bf16) CAST(f64, double, f16, f16) CAST(f64, double, u32, u32)
CAST(bf16, bf16, f32, float) CAST(bf16, bf16, f64, double) CAST(bf16, bf16, f16, f16) CAST(bf16, bf16, u32, u32)
CAST(f16, f16, f32, float) CAST(f16, f16, f64, double) CAST(f16, f16, bf16, bf16) CAST(f16, f16, u32, u32)
CAST(u32, u32, f32, float) CAST(u32, u32, f64, double) CAST(u32, u32, bf16, bf16) CAST(u32, u32, f16, f16)

#define COPY2D(NAME, W)                                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                                           \
        copy2d_##NAME(const W* src, W* dst, u64 rows, u64 cols, u64 src_stride, u64 dst_stride) {               \
        copy2d<W>(src, dst, rows, cols, src_stride, dst_stride);                                                \
    }
#define STRIDED(NAME, W)                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) copy_strided_##NAME(const W* src, W* dst, u32 n, StridedLayout l) { \
        copy_strided<W, u32>(src, dst, n, l);                                                                   \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) copy_strided64_##NAME(const W* src, W* dst, u64 n, StridedLayout l) { \
        copy_strided<W, u64>(src, dst, n, l);                                                                   \
    }

COPY2D(w2, u16)
COPY2D(w4, u32)
COPY2D(w8, u64)
COPY2D(w16, W16)
STRIDED(w2, u16)
STRIDED(w4, u32)
STRIDED(w8, u64)
