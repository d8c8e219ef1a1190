// rope.cu: rotary position embedding, "rotate half" form (GPT-NeoX, Llama).
//
// x is [b, t, h, d] contiguous; cos and sin are [t, d/2]. For each head vector at position p, the
// pair (x_j, x_{j+d/2}) turns by the angle θ_{p,j}:
//   y_j       = x_j·cos − x_{j+d/2}·sin
//   y_{j+d/2} = x_j·sin + x_{j+d/2}·cos
// `inverse` turns by −θ (sin negated): the backward of the forward rotation, since a rotation's
// transpose is its inverse.
//
// One thread per pair, in a grid-stride loop over b·t·h·(d/2) pairs: consecutive threads take
// consecutive j, so the two half-rows and the cos / sin rows are read coalesced. The cos / sin
// tables are shared by every batch entry and head, so they stay in L2.
//
// Roofline: reads and writes b·t·h·d elements (plus the small tables): memory bound; 6 FLOPs per pair.

#include "common.cuh"

template <typename T>
__device__ void rope(const T* x, const T* cos_t, const T* sin_t, T* y, u64 b, u64 t, u64 h, u64 d, int inverse) {
    const u64 half = d / 2;
    const u64 pairs = b * t * h * half;
    const float sign = inverse ? -1.0f : 1.0f;
    for (u64 i = global_thread(); i < pairs; i += global_threads()) {
        const u64 j = i % half;
        const u64 head = i / half;        // index over (b, t, h)
        const u64 pos = (head / h) % t;   // position of this head vector
        const u64 base = head * d;
        const float c = to_float(cos_t[pos * half + j]);
        const float s = sign * to_float(sin_t[pos * half + j]);
        const float x1 = to_float(x[base + j]);
        const float x2 = to_float(x[base + j + half]);
        y[base + j] = from_float<T>(x1 * c - x2 * s);
        y[base + j + half] = from_float<T>(x1 * s + x2 * c);
    }
}

#define ENTRIES(NAME, T)                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) rope_##NAME(const T* x, const T* cos_t, const T* sin_t,  \
                                                                  T* y, u64 b, u64 t, u64 h, u64 d, int inverse) { \
        rope<T>(x, cos_t, sin_t, y, b, t, h, d, inverse);                                                       \
    }

ENTRIES(f32, float)
ENTRIES(bf16, bf16)
ENTRIES(f16, f16)
