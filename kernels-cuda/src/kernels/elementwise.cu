// elementwise.cu: maps of one contiguous tensor, y[i] = f(x[i]): the unary functions (exp, GeLU,
// ...) and the ops with a scalar (x + s, x * s, x ^ s, max(x, s), x > s).
//
// Layout: x and y are contiguous, n elements. Each thread handles whole 16-byte packs (4 f32 or 8
// bf16/f16) in a grid-stride loop, then the last n % pack elements one by one, so every load and
// store is a full 16-byte transaction and consecutive threads touch consecutive packs (coalesced).
// The op is a uniform kernel argument: the switch costs a few instructions per element, nothing next
// to the memory traffic, and one entry point per dtype keeps module count and compile time small.
//
// Math is f32 with the accurate library functions (no --use_fast_math): these kernels are the
// reference-grade ones, and at memory-bound speed the accurate expf/tanhf cost nothing measurable.
//
// Roofline: reads n and writes n elements: 2·n·sizeof(T) bytes; a few FLOPs per element. Memory
// bound: on an H100 (3.35 TB/s) 64 Mi bf16 elements should take about 80 µs.

#include "common.cuh"

// Mirrors `UnaryOp` codes in engine/src/cuda/ops/elementwise.rs.
enum UnaryCode { U_NEG, U_EXP, U_LOG, U_SQRT, U_RECIP, U_SQR, U_ABS, U_TANH, U_RELU, U_GELU, U_SILU, U_SIGMOID };
// Mirrors `ScalarOp` codes.
enum ScalarCode { S_ADD, S_MUL, S_POW, S_MAX, S_GT };

#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_C 0.044715f

__device__ __forceinline__ float gelu(float x) {
    return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * (x + GELU_C * x * x * x)));
}
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float unary_op(int op, float x) {
    switch (op) {
        case U_NEG: return -x;
        case U_EXP: return expf(x);
        case U_LOG: return logf(x);
        case U_SQRT: return sqrtf(x);
        case U_RECIP: return 1.0f / x;
        case U_SQR: return x * x;
        case U_ABS: return fabsf(x);
        case U_TANH: return tanhf(x);
        case U_RELU: return x < 0.0f ? 0.0f : x;  // NaN stays NaN
        case U_GELU: return gelu(x);
        case U_SILU: return x * sigmoid(x);
        case U_SIGMOID: return sigmoid(x);
        default: return NAN_F;  // unknown code: NaN, so a test catches it
    }
}

__device__ __forceinline__ float scalar_op(int op, float x, float s) {
    switch (op) {
        case S_ADD: return x + s;
        case S_MUL: return x * s;
        case S_POW: return powf(x, s);
        case S_MAX: return max_nan(x, s);
        case S_GT: return x > s ? 1.0f : 0.0f;
        default: return NAN_F;
    }
}

// y[i] = f(x[i]) over n contiguous elements, 16 bytes per thread per step.
template <typename T, typename F> __device__ __forceinline__ void map_packed(const T* x, T* y, u64 n, F f) {
    typedef Pack<T> P;
    const u64 packs = n / P::N;
    const P* xp = reinterpret_cast<const P*>(x);
    P* yp = reinterpret_cast<P*>(y);
    for (u64 i = global_thread(); i < packs; i += global_threads()) {
        P p = xp[i];
#pragma unroll
        for (int j = 0; j < P::N; ++j) p.v[j] = from_float<T>(f(to_float(p.v[j])));
        yp[i] = p;
    }
    for (u64 i = packs * P::N + global_thread(); i < n; i += global_threads()) y[i] = from_float<T>(f(to_float(x[i])));
}

template <typename T> __device__ void unary(const T* x, T* y, u64 n, int op) {
    map_packed(x, y, n, [op](float v) { return unary_op(op, v); });
}

template <typename T> __device__ void scalar(const T* x, T* y, u64 n, int op, float s) {
    map_packed(x, y, n, [op, s](float v) { return scalar_op(op, v, s); });
}

#define ENTRIES(NAME, T)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256) unary_##NAME(const T* x, T* y, u64 n, int op) {      \
        unary<T>(x, y, n, op);                                                                               \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) scalar_##NAME(const T* x, T* y, u64 n, int op, float s) { \
        scalar<T>(x, y, n, op, s);                                                                           \
    }

ENTRIES(f32, float)
ENTRIES(bf16, bf16)
ENTRIES(f16, f16)
