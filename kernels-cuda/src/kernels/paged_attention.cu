// paged_attention.cu: decode attention over the paged KV cache, and the cache's row write.
//
// Layout (engine::backend::PagedAttentionDims): q and out [B, Hq, d]; the k and v pools
// [num_blocks, block_size, Hkv, d]; block_table u32 [B, max_blocks] (position p of row b lives in
// block table[b, p / block_size], slot p % block_size); context_lens u32 [B]. Query head h reads
// key/value head h / G, G = Hq / Hkv. Inputs f32, bf16 or f16; every product, the softmax statistics
// and the accumulators are f32. Everything the kernels need (lengths, block numbers) is read on the
// device, so a decode step never waits for the host.
//
// Algorithm (FlashDecoding: split along the sequence, then a log-sum-exp merge).
// - paged_decode: one block per (split s, key/value head, row b), `split` positions per split. The
//   block stages the scaled query rows of (up to GMAX) query heads of its key/value head in shared
//   memory, then
//   1. scores: a key row is read in chunks of VEC elements (16 bytes: 8 bf16 / f16 or 4 f32 per
//      load, or single elements when the head dim is not a multiple of that) by lp lanes, lp the
//      row's chunk count rounded up to a power of two (at most a warp), so one warp reads 32 / lp
//      rows at once (d = 128 bf16: 16 lanes per row, two rows per warp). Each lane accumulates the
//      dot products of its chunks with ALL the block's query heads at once (with 16-byte chunks it
//      holds its chunk of the query rows in registers), then the row's lanes reduce them by
//      shuffles; the split's scores [GMAX, split] stay in shared memory;
//   2. statistics: per head, the split's max m and the sum l of exp(s − m), the scores replaced by
//      those exponentials;
//   3. values: thread (chunk, slice) accumulates, for every query head, Σ_p exp(s_p − m) v[p, chunk]
//      over the positions p ≡ slice (mod slices), one 16-byte read of each value chunk serving all
//      heads; the slices' sums then overwrite the scores in shared memory and each output element
//      is summed over the slices in a fixed order.
//   It writes the unnormalised partial output and (m, l) per (row, head, split).
// - paged_combine: one block per (query head, row): M = max_s m_s, L = Σ_s l_s e^(m_s − M),
//   out = Σ_s acc_s e^(m_s − M) / L, over the row's ceil(len / split) splits in order.
// Nothing is atomic and every sum has a fixed order: results are bit-reproducible run to run.
//
// Bytes and FLOPs. Each cached key and value row of a row's context is read from DRAM once per
// (row, key/value head, head chunk), i.e. once when G <= GMAX (MoA's 8:1 and every usual GQA
// grouping); for G > GMAX, ceil(G / GMAX) times. Per position and key/value head: 2·d elements read,
// 4·G·d FLOPs; at G = 8 that is ~8 FLOP/byte in bf16, far below any GPU's ridge point, so the
// kernel is memory bound and the design goal is one pass over the cache with enough blocks in
// flight. The partials add B·Hq·splits·(d + 2) f32 writes and reads, small next to the cache when
// a split holds 64+ positions (the host picks split = a power of two in 64..=1024 so that there
// are about 1024 (row, kv head, split) blocks over the whole capacity).
//
// Tradeoffs. CUDA cores, not tensor cores: with one query row per sequence the products are
// matrix-vector (G rows at most), so mma tiles would be mostly padding. 16-byte loads need the head
// dim to be a multiple of 8 (16-bit) or 4 (f32) elements, at most 32 chunks (so a lane owns one
// chunk) and 16-byte-aligned pools; otherwise the element-wise variant (same code, VEC = 1, query
// rows from shared memory) runs. The host does not know the lengths (no sync), so the grid covers
// every row's capacity and blocks past a row's length exit at once; the partial buffers are sized
// for the capacity too. A row whose length is 0 or above the capacity, or whose table names a
// block >= num_blocks, gets NaN output (the CPU backend reports those as errors; here reporting
// would cost a host sync) and reads nothing out of range.
//
// paged_write_rows_w{2,4,8,16}: cache[slots[i], :] = src[i, :], a byte move by the widest word
// dividing the row (as index_select); a slot past the cache is skipped, never written.

#include "common.cuh"

// Query heads one decode block serves (register accumulators per thread).
#define GMAX 8

// Loads elements x .. x + VEC - 1 of row `r` as floats: one 16-byte load when VEC is a Pack<T>,
// else one element.
template <typename T, int VEC> __device__ __forceinline__ void load_chunk(const T* r, u32 x, float (&out)[VEC]) {
    if constexpr (VEC == 1) {
        out[0] = to_float(r[x]);
    } else {
        static_assert(VEC == Pack<T>::N, "a chunk is one element or one 16-byte pack");
        const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(r + x);
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] = to_float(pk.v[i]);
    }
}

// VEC: elements per load (module header: 16-byte packs, or 1 when the head dim is not a multiple
// of a pack). LP: lanes per key row in the score pass (a power of two, <= WARP).
template <typename T, int VEC>
__device__ void paged_decode(const T* q, const T* k, const T* v, const u32* table, const u32* lens, float* part_acc, float* part_stat, u32 hq, u32 hkv, u32 d, u32 num_blocks,
                             u32 block_size, u32 max_blocks, u32 split, u32 splits, float scale) {
    extern __shared__ float smem[];
    __shared__ u32 bad_block;
    const u32 g_all = hq / hkv, chunks = (g_all + GMAX - 1) / GMAX;
    const u32 kvh = blockIdx.y / chunks, chunk = blockIdx.y % chunks, b = blockIdx.z, s = blockIdx.x;
    const u32 h0 = kvh * g_all + chunk * GMAX, gn = min(GMAX, g_all - chunk * GMAX);
    const u32 len = lens[b], s0 = s * split;
    // Uniform over the block, before any barrier: invalid rows are paged_combine's to report.
    if (len == 0 || len > max_blocks * block_size || s0 >= len) return;
    const u32 n = min(len - s0, split);
    const u32 t = threadIdx.x, lane = t % WARP, warp = t / WARP, warps = blockDim.x / WARP;
    const u32 ch = d / VEC;                                   // chunks of a row
    const u32 lp = min((u32)WARP, 1u << (32 - __clz(ch - 1)));  // lanes per key row: ch rounded up to a power of two
    float* qs = smem;                   // [GMAX, d] scaled query rows
    float* sc = qs + GMAX * d;          // [GMAX, split] scores, then exp(s - m); then the value slices' sums
    const u32* row_table = table + (u64)b * max_blocks;
    const u64 row_len = (u64)hkv * d;
    if (t == 0) bad_block = 0;
    for (u32 e = t; e < gn * d; e += blockDim.x) qs[e] = scale * to_float(q[((u64)b * hq + h0) * d + e]);
    __syncthreads();

    // 1. Scores: each warp takes WARP / lp positions at a time, lp lanes per key row striding over
    //    its chunks; all heads per key read, then a reduction over the row's lanes.
    const u32 rows_per_pass = WARP / lp, sub = lane % lp;
    // With 16-byte chunks a lane owns one chunk of every key row (ch <= WARP, checked by the
    // host), so it keeps that chunk of the query rows in registers: shared memory could not feed
    // the products as fast as DRAM feeds the keys.
    float qr[GMAX][VEC];
    if constexpr (VEC > 1) {
#pragma unroll
        for (u32 g = 0; g < GMAX; ++g)
#pragma unroll
            for (int i = 0; i < VEC; ++i) qr[g][i] = g < gn && sub < ch ? qs[g * d + sub * VEC + i] : 0.0f;
    }
    for (u32 j0 = warp * rows_per_pass; j0 < n; j0 += warps * rows_per_pass) {  // uniform over the warp
        const u32 j = j0 + lane / lp;
        float dot[GMAX];
#pragma unroll
        for (u32 g = 0; g < GMAX; ++g) dot[g] = 0.0f;
        if (j < n) {
            const u32 p = s0 + j, blk = row_table[p / block_size];
            if (blk < num_blocks) {
                const T* kr = k + ((u64)blk * block_size + p % block_size) * row_len + (u64)kvh * d;
                for (u32 c = sub; c < ch; c += lp) {
                    float kx[VEC];
                    load_chunk<T, VEC>(kr, c * VEC, kx);
#pragma unroll
                    for (u32 g = 0; g < GMAX; ++g)
                        if (g < gn) {
#pragma unroll
                            for (int i = 0; i < VEC; ++i) dot[g] += (VEC > 1 ? qr[g][i] : qs[g * d + c * VEC + i]) * kx[i];
                        }
                }
            } else if (sub == 0) {
                bad_block = 1;
            }
        }
#pragma unroll
        for (u32 g = 0; g < GMAX; ++g) {
            for (u32 o = lp / 2; o > 0; o >>= 1) dot[g] += __shfl_xor_sync(FULL_MASK, dot[g], o);
            if (g < gn && j < n && sub == 0) sc[g * split + j] = dot[g];
        }
    }
    __syncthreads();
    float* stat = part_stat + (((u64)b * hq + h0) * splits + s) * 2;
    if (bad_block) {  // uniform: read after the barrier
        if (t < gn) stat[(u64)t * splits * 2] = NAN_F;
        return;
    }

    // 2. Per head: the split's max, the exponentials and their sum.
    for (u32 g = warp; g < gn; g += warps) {
        float m = -INFINITY;
        for (u32 j = lane; j < n; j += WARP) m = fmaxf(m, sc[g * split + j]);
        m = warp_reduce(m, [](float a, float c) { return fmaxf(a, c); });
        float l = 0.0f;
        for (u32 j = lane; j < n; j += WARP) {
            const float e = __expf(sc[g * split + j] - m);
            sc[g * split + j] = e;
            l += e;
        }
        l = warp_reduce(l, [](float a, float c) { return a + c; });
        if (lane == 0) {
            stat[(u64)g * splits * 2] = m;
            stat[(u64)g * splits * 2 + 1] = l;
        }
    }
    __syncthreads();

    // 3. Values: thread (chunk c, slice) over positions slice, slice + slices, ...; all heads per
    //    read. The slices' sums then replace the scores in shared memory ([slices, GMAX, d]) and
    //    each output element is summed over the slices in order.
    const u32 slices = blockDim.x / ch, c = t % ch, slice = t / ch;
    float acc[GMAX][VEC];
#pragma unroll
    for (u32 g = 0; g < GMAX; ++g)
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[g][i] = 0.0f;
    if (slice < slices) {
        for (u32 j = slice; j < n; j += slices) {
            const u32 p = s0 + j, blk = row_table[p / block_size];
            float vx[VEC];
            load_chunk<T, VEC>(v + ((u64)blk * block_size + p % block_size) * row_len + (u64)kvh * d, c * VEC, vx);
#pragma unroll
            for (u32 g = 0; g < GMAX; ++g)
                if (g < gn) {
                    const float e = sc[g * split + j];
#pragma unroll
                    for (int i = 0; i < VEC; ++i) acc[g][i] += e * vx[i];
                }
        }
    }
    __syncthreads();  // every score read: the sums may overwrite them
    float* red = sc;
    if (slice < slices) {
#pragma unroll
        for (u32 g = 0; g < GMAX; ++g)
#pragma unroll
            for (int i = 0; i < VEC; ++i) red[(slice * GMAX + g) * d + c * VEC + i] = acc[g][i];
    }
    __syncthreads();
    for (u32 e = t; e < gn * d; e += blockDim.x) {
        float sum = 0.0f;
        for (u32 sl = 0; sl < slices; ++sl) sum += red[sl * GMAX * d + e];
        part_acc[(((u64)b * hq + h0 + e / d) * splits + s) * d + e % d] = sum;
    }
}

template <typename T>
__device__ void paged_combine(const float* part_acc, const float* part_stat, const u32* lens, T* out, u32 hq, u32 d, u32 capacity, u32 split, u32 splits) {
    const u32 h = blockIdx.x, b = blockIdx.y, len = lens[b];
    const u64 row = (u64)b * hq + h;
    T* o = out + row * d;
    if (len == 0 || len > capacity) {
        for (u32 x = threadIdx.x; x < d; x += blockDim.x) o[x] = from_float<T>(NAN_F);
        return;
    }
    const u32 used = (len + split - 1) / split;
    const float* stat = part_stat + row * splits * 2;
    float m = -INFINITY;
    bool bad = false;
    for (u32 s = 0; s < used; ++s) {
        bad |= isnan(stat[2 * s]);
        m = fmaxf(m, stat[2 * s]);
    }
    float l = 0.0f;
    for (u32 s = 0; s < used; ++s) l += stat[2 * s + 1] * __expf(stat[2 * s] - m);
    const float inv = bad ? NAN_F : 1.0f / l;
    const float* acc = part_acc + row * splits * d;
    for (u32 x = threadIdx.x; x < d; x += blockDim.x) {
        float sum = 0.0f;
        for (u32 s = 0; s < used; ++s) sum += acc[(u64)s * d + x] * __expf(stat[2 * s] - m);
        o[x] = from_float<T>(sum * inv);
    }
}

template <typename W> __device__ void paged_write_rows(const W* src, const u32* slots, W* cache, u64 n, u64 row_words, u64 cache_rows) {
    for (u64 r = blockIdx.y; r < n; r += gridDim.y) {
        const u64 slot = slots[r];
        if (slot >= cache_rows) continue;
        const W* s = src + r * row_words;
        W* c = cache + slot * row_words;
        for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < row_words; i += (u64)gridDim.x * blockDim.x) c[i] = s[i];
    }
}

#define DECODE_ENTRY(NAME, T, VEC)                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                                   \
        paged_decode_##NAME(const T* q, const T* k, const T* v, const u32* table, const u32* lens, float* part_acc, float* part_stat, u32 hq, \
                            u32 hkv, u32 d, u32 num_blocks, u32 block_size, u32 max_blocks, u32 split, u32 splits, float scale) {         \
        paged_decode<T, VEC>(q, k, v, table, lens, part_acc, part_stat, hq, hkv, d, num_blocks, block_size, max_blocks, split, splits, scale); \
    }
#define DECODE_ENTRIES(NAME, T)                                                                                                         \
    DECODE_ENTRY(NAME, T, 1)                                                                                                            \
    DECODE_ENTRY(NAME##_v16, T, Pack<T>::N)                                                                                             \
    extern "C" __global__ void __launch_bounds__(128) paged_combine_##NAME(const float* part_acc, const float* part_stat, const u32* lens, \
                                                                           T* out, u32 hq, u32 d, u32 capacity, u32 split, u32 splits) { \
        paged_combine<T>(part_acc, part_stat, lens, out, hq, d, capacity, split, splits);                                               \
    }

DECODE_ENTRIES(f32, float)
DECODE_ENTRIES(bf16, bf16)
DECODE_ENTRIES(f16, f16)

#define WRITE_ENTRIES(NAME, W)                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                                                          \
        paged_write_rows_##NAME(const W* src, const u32* slots, W* cache, u64 n, u64 row_words, u64 cache_rows) {              \
        paged_write_rows<W>(src, slots, cache, n, row_words, cache_rows);                                                      \
    }

WRITE_ENTRIES(w2, u16)
WRITE_ENTRIES(w4, u32)
WRITE_ENTRIES(w8, u64)
WRITE_ENTRIES(w16, W16)
