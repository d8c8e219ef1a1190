// attention.cu: fused causal attention, forward and backward (FlashAttention-2 semantics).
//
// Layout (engine::backend::AttentionDims): q, out, dO [N, Hq, d]; k, v, dk, dv [N, Hkv, d]; lse and
// delta [N, Hq] f32; packed sequences cut by u32 `offsets` (sequence s = rows offsets[s] ..
// offsets[s+1]); query head h reads key/value head h / G with G = Hq / Hkv. Inputs are f32, bf16 or
// f16; every product, the softmax statistics and the accumulators are f32.
//
// Algorithm. Forward, one block per (query tile, key/value head, sequence): the tile's rows are
// `ppb` positions times the G query heads of that key/value head, one thread per row, so each
// key/value tile is staged in shared memory ONCE for all the query heads that read it (GQA / MoA).
// Each thread keeps its scaled query row and its output accumulator in registers and walks the key
// tiles up to the diagonal with an online softmax: the tile's scores, their max, one rescale of the
// accumulator by exp(m_old − m_new), then the weighted values. It writes out = acc / l and
// lse = m + ln l. Backward, deterministic and without atomics, in two kernels that recompute
// P = exp(s − lse) from the saved lse: `attention_dq` (the forward's geometry) accumulates
// dq = scale · Σ_j dS_j k_j with dS = P ⊙ (dO·v − D), D = dO·out, and stores D per row;
// `attention_dkdv` (one block per key tile and key/value head, one thread per key) stages query
// rows, dO, lse and D in shared memory and accumulates dv = Σ_i P dO_i and dk = Σ_i dS (scale·q_i)
// over every query at or after its key, for all G heads. Every output element is written by one
// thread, in a fixed order, so results are bit-reproducible.
//
// Tradeoffs. This is the CUDA-core (FFMA) version: a thread owns a whole row, so a row of up to
// MAXD = 32, 64 or 128 floats lives in registers (the host picks the smallest MAXD ≥ d) and the
// score and value products are serial dot products over shared memory (broadcast reads: every
// thread of a warp reads the same key row). It is correct for every head dim up to 128, any
// length and any grouping. bf16 / f16 at head dims 64, 96 and 128 run on tensor cores instead
// (attention_sm80.cu, forward and backward); these kernels serve f32 and the other head dims. Ragged tails: a thread past the end of its sequence computes nothing but
// still joins every barrier; key rows past the end are never read (loops stop at the diagonal).

#include "common.cuh"

#define KEY_TILE 32

template <typename T> __device__ __forceinline__ void load_row(float* dst, const T* src, u32 d, float scale) {
    for (u32 x = 0; x < d; ++x) dst[x] = scale * to_float(src[x]);
}

// Stages rows `first .. first + count` of key/value head `kvh` of k and v into shared memory (row-
// major, d floats per row), all threads of the block cooperating.
template <typename T>
__device__ __forceinline__ void stage_kv(float* ks, float* vs, const T* k, const T* v, u64 first, u32 count, u32 hkv, u32 kvh, u32 d) {
    for (u32 e = threadIdx.x; e < count * d; e += blockDim.x) {
        const u32 j = e / d, x = e % d;
        const u64 at = ((first + j) * hkv + kvh) * d + x;
        ks[e] = to_float(k[at]);
        vs[e] = to_float(v[at]);
    }
}

// The row a forward / dq thread owns: position `pos` of its sequence and query head `head`.
struct RowOfThread {
    u32 start, len, pos, head;
    bool active;
};

__device__ __forceinline__ RowOfThread row_of_thread(const u32* offsets, u32 hq, u32 hkv, u32 ppb) {
    const u32 g = hq / hkv;
    RowOfThread r;
    r.start = offsets[blockIdx.z];
    r.len = offsets[blockIdx.z + 1] - r.start;
    r.pos = blockIdx.x * ppb + threadIdx.x / g;
    r.head = blockIdx.y * g + threadIdx.x % g;
    r.active = threadIdx.x < ppb * g && r.pos < r.len;
    return r;
}

template <typename T, int MAXD>
__device__ void attention_fwd(const T* q, const T* k, const T* v, T* out, float* lse, const u32* offsets, u32 hq, u32 hkv, u32 d, u32 ppb, float scale) {
    extern __shared__ float smem[];
    float* ks = smem;
    float* vs = smem + KEY_TILE * d;
    const RowOfThread r = row_of_thread(offsets, hq, hkv, ppb);
    const u32 p0 = blockIdx.x * ppb;
    if (p0 >= r.len) return;  // the whole block: uniform, before any barrier
    const u64 row = (u64)(r.start + r.pos) * hq + r.head;
    float qr[MAXD], acc[MAXD];
    if (r.active) load_row(qr, q + row * d, d, scale);
    for (u32 x = 0; x < d; ++x) acc[x] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    const u32 keys = min(r.len, p0 + ppb);  // keys any row of this block sees
    for (u32 j0 = 0; j0 < keys; j0 += KEY_TILE) {
        const u32 count = min((u32)KEY_TILE, keys - j0);
        __syncthreads();  // the previous tile's readers are done
        stage_kv(ks, vs, k, v, r.start + j0, count, hkv, blockIdx.y, d);
        __syncthreads();
        if (!r.active || j0 > r.pos) continue;
        const u32 seen = min(count, r.pos + 1 - j0);
        float s[KEY_TILE];
        float tile_max = -INFINITY;
        for (u32 j = 0; j < seen; ++j) {
            float dot = 0.0f;
            for (u32 x = 0; x < d; ++x) dot += qr[x] * ks[j * d + x];
            s[j] = dot;
            tile_max = max_nan(tile_max, dot);
        }
        const float m_new = max_nan(m, tile_max);
        const float correction = __expf(m - m_new);  // 0 on the first tile (m = −inf)
        l *= correction;
        for (u32 x = 0; x < d; ++x) acc[x] *= correction;
        for (u32 j = 0; j < seen; ++j) {
            const float p = __expf(s[j] - m_new);
            l += p;
            for (u32 x = 0; x < d; ++x) acc[x] += p * vs[j * d + x];
        }
        m = m_new;
    }
    if (!r.active) return;
    const float inv = 1.0f / l;
    for (u32 x = 0; x < d; ++x) out[row * d + x] = from_float<T>(acc[x] * inv);
    lse[row] = m + __logf(l);
}

template <typename T, int MAXD>
__device__ void attention_dq(const T* q, const T* k, const T* v, const T* out, const T* dout, const float* lse, float* delta, T* dq,
                             const u32* offsets, u32 hq, u32 hkv, u32 d, u32 ppb, float scale) {
    extern __shared__ float smem[];
    float* ks = smem;
    float* vs = smem + KEY_TILE * d;
    const RowOfThread r = row_of_thread(offsets, hq, hkv, ppb);
    const u32 p0 = blockIdx.x * ppb;
    if (p0 >= r.len) return;
    const u64 row = (u64)(r.start + r.pos) * hq + r.head;
    float qr[MAXD], dor[MAXD], acc[MAXD];
    float dd = 0.0f, l = 0.0f;
    if (r.active) {
        load_row(qr, q + row * d, d, scale);
        load_row(dor, dout + row * d, d, 1.0f);
        for (u32 x = 0; x < d; ++x) dd += dor[x] * to_float(out[row * d + x]);
        l = lse[row];
        delta[row] = dd;
    }
    for (u32 x = 0; x < d; ++x) acc[x] = 0.0f;
    const u32 keys = min(r.len, p0 + ppb);
    for (u32 j0 = 0; j0 < keys; j0 += KEY_TILE) {
        const u32 count = min((u32)KEY_TILE, keys - j0);
        __syncthreads();
        stage_kv(ks, vs, k, v, r.start + j0, count, hkv, blockIdx.y, d);
        __syncthreads();
        if (!r.active || j0 > r.pos) continue;
        const u32 seen = min(count, r.pos + 1 - j0);
        for (u32 j = 0; j < seen; ++j) {
            float s = 0.0f, dp = 0.0f;
            for (u32 x = 0; x < d; ++x) {
                s += qr[x] * ks[j * d + x];
                dp += dor[x] * vs[j * d + x];
            }
            const float ds = __expf(s - l) * (dp - dd);
            for (u32 x = 0; x < d; ++x) acc[x] += ds * ks[j * d + x];
        }
    }
    if (!r.active) return;
    for (u32 x = 0; x < d; ++x) dq[row * d + x] = from_float<T>(scale * acc[x]);
}

// One block per (key tile of blockDim.x keys, key/value head, sequence); `qpb` query positions
// (times G heads) are staged per step.
template <typename T, int MAXD>
__device__ void attention_dkdv(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk, T* dv,
                               const u32* offsets, u32 hq, u32 hkv, u32 d, u32 qpb, float scale) {
    extern __shared__ float smem[];
    const u32 g = hq / hkv;
    const u32 rows = qpb * g;
    float* qs = smem;
    float* dos = qs + rows * d;
    float* ls = dos + rows * d;
    float* ds_ = ls + rows;
    const u32 start = offsets[blockIdx.z], len = offsets[blockIdx.z + 1] - start;
    const u32 j0 = blockIdx.x * blockDim.x;
    if (j0 >= len) return;
    const u32 j = j0 + threadIdx.x;
    const bool active = j < len;
    const u64 krow = (u64)(start + j) * hkv + blockIdx.y;
    float kr[MAXD], vr[MAXD], dka[MAXD], dva[MAXD];
    if (active) {
        load_row(kr, k + krow * d, d, 1.0f);
        load_row(vr, v + krow * d, d, 1.0f);
    }
    for (u32 x = 0; x < d; ++x) dka[x] = dva[x] = 0.0f;
    for (u32 i0 = j0; i0 < len; i0 += qpb) {
        const u32 count = min(qpb, len - i0);
        __syncthreads();
        for (u32 e = threadIdx.x; e < count * g * d; e += blockDim.x) {
            const u32 rr = e / d, x = e % d;
            const u64 at = ((u64)(start + i0 + rr / g) * hq + blockIdx.y * g + rr % g) * d + x;
            qs[e] = scale * to_float(q[at]);
            dos[e] = to_float(dout[at]);
        }
        for (u32 rr = threadIdx.x; rr < count * g; rr += blockDim.x) {
            const u64 at = (u64)(start + i0 + rr / g) * hq + blockIdx.y * g + rr % g;
            ls[rr] = lse[at];
            ds_[rr] = delta[at];
        }
        __syncthreads();
        if (!active) continue;
        for (u32 rr = 0; rr < count * g; ++rr) {
            if (i0 + rr / g < j) continue;  // this query precedes the key
            float s = 0.0f, dp = 0.0f;
            for (u32 x = 0; x < d; ++x) {
                s += qs[rr * d + x] * kr[x];
                dp += dos[rr * d + x] * vr[x];
            }
            const float p = __expf(s - ls[rr]);
            const float dsc = p * (dp - ds_[rr]);
            for (u32 x = 0; x < d; ++x) {
                dva[x] += p * dos[rr * d + x];
                dka[x] += dsc * qs[rr * d + x];
            }
        }
    }
    if (!active) return;
    for (u32 x = 0; x < d; ++x) {
        dk[krow * d + x] = from_float<T>(dka[x]);
        dv[krow * d + x] = from_float<T>(dva[x]);
    }
}

#define ENTRIES_D(NAME, T, MAXD)                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) attention_fwd_##NAME##_d##MAXD(                                         \
        const T* q, const T* k, const T* v, T* out, float* lse, const u32* offsets, u32 hq, u32 hkv, u32 d, u32 ppb, float scale) { \
        attention_fwd<T, MAXD>(q, k, v, out, lse, offsets, hq, hkv, d, ppb, scale);                                           \
    }                                                                                                                         \
    extern "C" __global__ void __launch_bounds__(128) attention_dq_##NAME##_d##MAXD(                                          \
        const T* q, const T* k, const T* v, const T* out, const T* dout, const float* lse, float* delta, T* dq,               \
        const u32* offsets, u32 hq, u32 hkv, u32 d, u32 ppb, float scale) {                                                   \
        attention_dq<T, MAXD>(q, k, v, out, dout, lse, delta, dq, offsets, hq, hkv, d, ppb, scale);                          \
    }                                                                                                                         \
    extern "C" __global__ void __launch_bounds__(128) attention_dkdv_##NAME##_d##MAXD(                                        \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk, T* dv,               \
        const u32* offsets, u32 hq, u32 hkv, u32 d, u32 qpb, float scale) {                                                   \
        attention_dkdv<T, MAXD>(q, k, v, dout, lse, delta, dk, dv, offsets, hq, hkv, d, qpb, scale);                         \
    }

#define ENTRIES(NAME, T)      \
    ENTRIES_D(NAME, T, 32)    \
    ENTRIES_D(NAME, T, 64)    \
    ENTRIES_D(NAME, T, 128)

ENTRIES(f32, float)
ENTRIES(bf16, bf16)
ENTRIES(f16, f16)
