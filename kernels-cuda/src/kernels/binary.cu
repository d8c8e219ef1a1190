// binary.cu: out = op(a, b) element-wise, with NumPy broadcasting.
//
// Two paths:
// - binary_*: both operands contiguous with the output's shape (the common case for residual adds
//   and gradients). 16-byte packs per thread, as in elementwise.cu.
// - binary_bcast_* / binary_bcast64_*: the general case. The output is contiguous; each operand is
//   read through per-axis strides (0 on broadcast axes) from a StridedLayout. The Rust side merges
//   axes that are contiguous in all three tensors, so a bias add [rows, cols] + [cols] arrives as
//   rank 2. One thread per output element in a grid-stride loop: writes are coalesced, and reads are
//   coalesced along the innermost axis or broadcast (served from L1/L2). The 32-bit variant is used
//   whenever every index and offset fits in 32 bits, because 64-bit division is several times
//   slower and the index arithmetic is the cost of this kernel once the operands are cached.
//
// The ops are the arithmetic ones plus the two activation backward products the autograd needs
// (GeLU'(a)·b, SiLU'(a)·b), so a backward pass is one kernel instead of three.
//
// Roofline: reads up to 2n and writes n elements: 3·n·sizeof(T) bytes; memory bound.

#include "common.cuh"

// Mirrors `BinaryOp` codes in engine/src/cuda/ops/elementwise.rs.
enum BinaryCode { B_ADD, B_SUB, B_MUL, B_DIV, B_MAX, B_MIN, B_GELU_GRAD, B_SILU_GRAD };

#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_C 0.044715f

// d/dx of the tanh-approximated GeLU.
__device__ __forceinline__ float gelu_grad(float x) {
    float inner = SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
    float t = tanhf(inner);
    float dinner = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_C * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * dinner;
}

__device__ __forceinline__ float silu_grad(float x) {
    float s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
}

__device__ __forceinline__ float binary_op(int op, float a, float b) {
    switch (op) {
        case B_ADD: return a + b;
        case B_SUB: return a - b;
        case B_MUL: return a * b;
        case B_DIV: return a / b;
        case B_MAX: return max_nan(a, b);
        case B_MIN: return min_nan(a, b);
        case B_GELU_GRAD: return b * gelu_grad(a);
        case B_SILU_GRAD: return b * silu_grad(a);
        default: return NAN_F;
    }
}

template <typename T> __device__ void binary_contiguous(const T* a, const T* b, T* y, u64 n, int op) {
    typedef Pack<T> P;
    const u64 packs = n / P::N;
    const P* ap = reinterpret_cast<const P*>(a);
    const P* bp = reinterpret_cast<const P*>(b);
    P* yp = reinterpret_cast<P*>(y);
    for (u64 i = global_thread(); i < packs; i += global_threads()) {
        P pa = ap[i], pb = bp[i], py;
#pragma unroll
        for (int j = 0; j < P::N; ++j) py.v[j] = from_float<T>(binary_op(op, to_float(pa.v[j]), to_float(pb.v[j])));
        yp[i] = py;
    }
    for (u64 i = packs * P::N + global_thread(); i < n; i += global_threads())
        y[i] = from_float<T>(binary_op(op, to_float(a[i]), to_float(b[i])));
}

template <typename T, typename I>
__device__ void binary_strided(const T* a, const T* b, T* y, I n, StridedLayout l, int op) {
    for (I i = (I)global_thread(); i < n; i += (I)global_threads()) {
        I oa, ob;
        strided_offsets<I>(l, i, oa, ob);
        y[i] = from_float<T>(binary_op(op, to_float(a[oa]), to_float(b[ob])));
    }
}

#define ENTRIES(NAME, T)                                                                                       \
    extern "C" __global__ void __launch_bounds__(256) binary_##NAME(const T* a, const T* b, T* y, u64 n, int op) { \
        binary_contiguous<T>(a, b, y, n, op);                                                                  \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                          \
        binary_bcast_##NAME(const T* a, const T* b, T* y, u32 n, StridedLayout l, int op) {                   \
        binary_strided<T, u32>(a, b, y, n, l, op);                                                             \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                          \
        binary_bcast64_##NAME(const T* a, const T* b, T* y, u64 n, StridedLayout l, int op) {                 \
        binary_strided<T, u64>(a, b, y, n, l, op);                                                             \
    }

ENTRIES(f32, float)
ENTRIES(bf16, bf16)
ENTRIES(f16, f16)
