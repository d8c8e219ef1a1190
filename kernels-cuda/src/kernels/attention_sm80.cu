// attention_sm80.cu: the tensor-core forward and backward of fused causal attention
// (FlashAttention-2) for bf16 and f16 with head dims 64, 96 and 128, on sm_80 and up (mma.sync;
// Hopper runs it too).
//
// Layout as attention.cu (engine::backend::AttentionDims): q, out [N, Hq, D]; k, v [N, Hkv, D]; lse
// [N, Hq] f32; packed sequences cut by u32 `offsets`; query head h reads key/value head h / G.
//
// Algorithm. One block (4 warps) per (query tile, key/value head, sequence). The tile's BR = 64
// rows are `ppb` = floor(64 / G) positions times the G query heads of the key/value head (row r:
// position p0 + r / G, head kvh·G + r % G), so every key/value tile is staged in shared memory
// ONCE for all the query heads that read it (GQA / MoA); rows past ppb·G are idle. Warp w owns
// rows 16w .. 16w + 15: its Q fragments (ldmatrix) stay in registers for the whole loop. Key/value
// tiles of BC = 64 rows stream through a two-stage cp.async ring (tile i+1 copied while tile i is
// multiplied). Per tile, each warp computes S = Q·Kᵀ (16 x 64, m16n8k16, f32 accumulators; K is
// [key, D] row-major, which is already the "col" B operand, so plain ldmatrix), masks keys past
// the sequence or past the row's position (causal), updates the online softmax in the exp2 domain
// (row max over the quad of threads sharing a row, one rescale of the output accumulator per tile),
// turns P into the A operand of the next product straight from the S accumulator registers (the
// m16n8 C layout of two adjacent n-blocks is the m16k16 A layout), and accumulates O += P·V (V
// [key, D] is the transpose of the B operand: ldmatrix.trans). At the end O / l goes to `out` and
// m + ln l to `lse`, as the CUDA-core forward and the CPU op.
//
// Shared memory (forward): Q, two K and two V tiles of 64 rows, rows of D/8 16-byte chunks, XOR-swizzled
// (gemm_sm80.cuh `swz`; D = 96 uses the 128-wide layout, 12 of 16 chunks used) so that ldmatrix
// is conflict-free: 40 KiB at D = 64, 80 KiB at D = 96 and 128. Registers per thread at D = 128: 32
// for Q fragments, 32 for S, 64 for O.
//
// FLOPs and bytes: 4·D per (query row, visible key), about half of T² per sequence and head
// (causal); Q and O once, K and V once per query tile, mostly from L2. Ragged tails: copies past
// the sequence are zero-filled (cp.async with 0 source bytes), masked scores are −inf, and only
// valid rows are stored. What it leaves out (FlashAttention-2 does the same, -3 goes further):
// warp-level skipping of tiles above the diagonal for the block's early rows, a deeper ring, and
// Hopper's wgmma/TMA (attention_sm90.cu has those for the forward on compute capability 9.0).
//
// Backward (deterministic, no atomics; P recomputed from the saved lse, no [T, T] tensor), two
// kernels in stream order, each output element written by one thread in a fixed order:
// attention_dq_tc in the forward's geometry (also storing D = dO·out per row), and
// attention_dkdv_tc with one block per 64 keys, walking every packed query row that sees them (all
// G heads: the GQA sum of dK, dV is a sum over rows). Each computes its products with keys or
// queries as the 16-row A operand so that no fragment needs a transpose in registers (headers of
// the two kernels below). Registers at D = 128 (sm_80): forward 168, dq 238, dk/dv 246, no spills;
// dk/dv takes its 64 staged query rows in two halves of 32 to stay there.

#include "gemm_sm80.cuh"
#include "attention_rows.cuh"

using namespace sm80;

#define BR 64
#define BC 64
#define FWD_THREADS 128

// Copies 64 rows of D elements into a swizzled tile at shared address `dst`; `row_ptr(r)` is the
// row's source or null (zero-fill).
template <int D, int CHP, typename RowPtr> __device__ __forceinline__ void stage_rows(u32 dst, RowPtr row_ptr, const void* any) {
    constexpr int CH = D / 8;
    for (int e = threadIdx.x; e < 64 * CH; e += FWD_THREADS) {
        const int r = e / CH, c = e % CH;
        const auto* src = row_ptr(r);
        cp_async16(dst + swz<CHP>(r, c), src ? (const void*)(src + c * 8) : any, src ? 16u : 0u);
    }
}

// acc[16 x N] += A · Bᵀ: A the 16 rows a_row0.. of tile `a_tile`, B the N rows b_row0.. of `b_tile`,
// both [row, D] (B's rows are the n index, which is the "col" operand already: plain ldmatrix).
template <typename T, int D, int CHP, int N = BC>
__device__ __forceinline__ void mma_abt(float (&acc)[N / 8][4], u32 a_tile, int a_row0, u32 b_tile, int b_row0 = 0) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        u32 a[4];
        ldmatrix_x4(a, a_tile + swz<CHP>(a_row0 + lane % 16, 2 * kk + lane / 16));
#pragma unroll
        for (int n2 = 0; n2 < N / 16; ++n2) {
            u32 b[4];
            ldmatrix_x4(b, b_tile + swz<CHP>(b_row0 + 16 * n2 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)));
            mma_16816<T>(acc[2 * n2], a, b[0], b[1]);
            mma_16816<T>(acc[2 * n2 + 1], a, b[2], b[3]);
        }
    }
}

// acc[16 x D] += P · B: P [16 x N] in accumulator layout (its k16 step kk is n-blocks 2kk and
// 2kk + 1, which is the A layout), B the N rows b_row0.. of `b_tile` [k, D] (ldmatrix.trans).
template <typename T, int D, int CHP, int N = BC>
__device__ __forceinline__ void mma_pb(float (&acc)[D / 8][4], const float (&p)[N / 8][4], u32 b_tile, int b_row0 = 0) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int kk = 0; kk < N / 16; ++kk) {
        const u32 a[4] = {pack2<T>(p[2 * kk][0], p[2 * kk][1]), pack2<T>(p[2 * kk][2], p[2 * kk][3]), pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                          pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
        for (int d2 = 0; d2 < D / 16; ++d2) {
            u32 b[4];
            ldmatrix_x4_trans(b, b_tile + swz<CHP>(b_row0 + 16 * kk + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * d2 + (lane >> 4)));
            mma_16816<T>(acc[2 * d2], a, b[0], b[1]);
            mma_16816<T>(acc[2 * d2 + 1], a, b[2], b[3]);
        }
    }
}

template <int N> __device__ __forceinline__ void zero(float (&x)[N][4]) {
#pragma unroll
    for (int n = 0; n < N; ++n) x[n][0] = x[n][1] = x[n][2] = x[n][3] = 0.0f;
}

// The staging source of key / value rows j0 .. j0 + 63 of head kvh of a [N, Hkv, D] tensor.
template <typename T, int D> __device__ __forceinline__ auto kv_source(const T* base, u32 start, u32 len, u32 j0, u32 hkv, u32 kvh) {
    return [=](int r) -> const T* { return j0 + r < len ? base + ((u64)(start + j0 + r) * hkv + kvh) * D : nullptr; };
}

// Copies key / value tile `tile` of the rows' head into the tiles at shared addresses kt and vt.
template <typename T, int D, int CHP> __device__ __forceinline__ void stage_kv(const T* k, const T* v, u32 kt, u32 vt, const PackedRows& r, u32 hkv, u32 tile) {
    stage_rows<D, CHP>(kt, kv_source<T, D>(k, r.start, r.len, tile * BC, hkv, r.kvh), k);
    stage_rows<D, CHP>(vt, kv_source<T, D>(v, r.start, r.len, tile * BC, hkv, r.kvh), v);
}

template <typename T, int D>
__device__ void attention_fwd_tc(const T* q, const T* k, const T* v, T* out, float* lse, const u32* offsets, u32 hq, u32 hkv, float scale) {
    constexpr int CHP = (D / 8 + 7) / 8 * 8;  // chunks per stored row (a multiple of 8 for swz)
    constexpr int TILE = 64 * CHP * 16;        // bytes of one staged tile
    constexpr int NB = D / 8;                  // n8 blocks of O
    extern __shared__ __align__(128) char smem_tc[];
    const u32 sq = smem_addr(smem_tc), sk = sq + TILE, sv = sk + 2 * TILE;
    const QueryBlock qb = query_block<BR, BC>(offsets, hq, hkv);
    if (qb.empty) return;  // uniform, before any barrier
    const PackedRows& rows = qb.rows;
    const u32 tiles = qb.tiles, len = rows.len;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gid = lane / 4;
    stage_rows<D, CHP>(sq, rows.source<T, D>(q), q);
    stage_kv<T, D, CHP>(k, v, sk, sv, rows, hkv, 0);
    cp_async_commit();
    const int r0 = warp * 16 + gid;  // this thread's rows: r0 and r0 + 8
    const float scale2 = scale * 1.4426950408889634f;  // scores in the exp2 domain
    float o[NB][4];
    zero(o);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    for (u32 it = 0; it < tiles; ++it) {
        if (it + 1 < tiles) stage_kv<T, D, CHP>(k, v, sk + ((it + 1) & 1) * TILE, sv + ((it + 1) & 1) * TILE, rows, hkv, it + 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const u32 kt = sk + (it & 1) * TILE, vt = sv + (it & 1) * TILE, j0 = it * BC;
        float s[BC / 8][4];  // S = Q Kᵀ for this warp's 16 rows and the tile's 64 keys
        zero(s);
        mma_abt<T, D, CHP>(s, sq, warp * 16, kt);

        // Mask, online softmax (per row: max over the quad, rescale), P in place of S.
#pragma unroll
        for (int i = 0; i < 2; ++i) online_softmax_tile(s, o, m[i], l[i], i, j0, len, rows.pos(r0 + 8 * i), scale2);

        mma_pb<T, D, CHP>(o, s, vt);  // O += P V
        __syncthreads();  // this stage is refilled by the next iteration's copy
    }

    store_forward_rows<T, D>(out, lse, o, m, l, rows, r0);
}

// Backward, dq (and D = dO·out per row, stored for attention_dkdv_tc): the forward's geometry.
// Per key tile: S = Q Kᵀ, P = exp(S − lse) (masked to 0), dP = dO Vᵀ, dS = P (dP − D),
// dq += dS K; finally dq ·= scale. Q, dO and a two-stage K / V ring in shared memory.
template <typename T, int D>
__device__ void attention_dq_tc(const T* q, const T* k, const T* v, const T* out, const T* dout, const float* lse, float* delta, T* dq, const u32* offsets, u32 hq, u32 hkv,
                                float scale) {
    constexpr int CHP = (D / 8 + 7) / 8 * 8, TILE = 64 * CHP * 16;
    extern __shared__ __align__(128) char smem_tc[];
    float* delta_s = reinterpret_cast<float*>(smem_tc + 6 * TILE);  // [BR] after the six tiles
    const u32 sq = smem_addr(smem_tc), sdo = sq + TILE, sk = sdo + TILE, sv = sk + 2 * TILE;
    const QueryBlock qb = query_block<BR, BC>(offsets, hq, hkv);
    if (qb.empty) return;  // uniform, before any barrier
    const PackedRows& rows = qb.rows;
    const u32 tiles = qb.tiles, len = rows.len;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gid = lane / 4, tid4 = lane % 4;
    stage_rows<D, CHP>(sq, rows.source<T, D>(q), q);
    stage_rows<D, CHP>(sdo, rows.source<T, D>(dout), dout);
    stage_kv<T, D, CHP>(k, v, sk, sv, rows, hkv, 0);
    cp_async_commit();
    if (threadIdx.x < BR) delta_s[threadIdx.x] = row_delta<T, D>(out, dout, delta, rows, threadIdx.x);
    const int r0 = warp * 16 + gid;
    const float scale2 = scale * 1.4426950408889634f;
    float lse2[2], dl[2];
    float acc[D / 8][4];
    zero(acc);
    for (u32 it = 0; it < tiles; ++it) {
        if (it + 1 < tiles) stage_kv<T, D, CHP>(k, v, sk + ((it + 1) & 1) * TILE, sv + ((it + 1) & 1) * TILE, rows, hkv, it + 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        if (it == 0) {
            for (int i = 0; i < 2; ++i) {
                lse2[i] = rows.valid(r0 + 8 * i) ? lse[rows.row(r0 + 8 * i)] * 1.4426950408889634f : 0.0f;
                dl[i] = delta_s[r0 + 8 * i];
            }
        }
        const u32 kt = sk + (it & 1) * TILE, vt = sv + (it & 1) * TILE, j0 = it * BC;
        float p[BC / 8][4], dp[BC / 8][4];
        zero(p);
        zero(dp);
        mma_abt<T, D, CHP>(p, sq, warp * 16, kt);
        mma_abt<T, D, CHP>(dp, sdo, warp * 16, vt);
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e / 2, r = r0 + 8 * i;
                const u32 key = j0 + 8 * n + 2 * tid4 + (e & 1);
                const float pr = rows.valid(r) && key < len && key <= rows.pos(r) ? exp2_approx(p[n][e] * scale2 - lse2[i]) : 0.0f;
                p[n][e] = pr * (dp[n][e] - dl[i]);  // dS
            }
        }
        mma_pb<T, D, CHP>(acc, p, kt);  // dq += dS K
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
        if (rows.valid(r0 + 8 * i)) store_row<T, D>(dq + rows.row(r0 + 8 * i) * D, acc, i, scale);
}

// Backward, dk and dv: one block per (key tile of 64, key/value head, sequence), warp w owning keys
// 16w .. 16w + 15. It walks the packed query rows (position x G heads) from the first that sees
// its keys to the end, 64 at a time, staging Q, dO and their lse and D, and computes the
// transposed products so that every result has keys as rows: Sᵀ = K Qᵀ, Pᵀ = exp(Sᵀ − lse),
// dV += Pᵀ dO, dPᵀ = V dOᵀ, dSᵀ = Pᵀ (dPᵀ − D), dK += dSᵀ Q; finally dk ·= scale. Summing over the
// G heads is summing over the packed rows. Two stages of Q, dO, lse and D: the next 64 rows are
// copied (cp.async) while these are multiplied.
template <typename T, int D>
__device__ void attention_dkdv_tc(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk, T* dv, const u32* offsets, u32 hq,
                                  u32 hkv, float scale) {
    constexpr int CHP = (D / 8 + 7) / 8 * 8, TILE = 64 * CHP * 16;
    extern __shared__ __align__(128) char smem_tc[];
    float* stats = reinterpret_cast<float*>(smem_tc + 6 * TILE);  // per stage: lse [BR], then D [BR]
    const u32 sk = smem_addr(smem_tc), sv = sk + TILE;
    const u32 g_all = hq / hkv, kvh = blockIdx.y, k0 = blockIdx.x * BC;
    const u32 start = offsets[blockIdx.z], len = offsets[blockIdx.z + 1] - start;
    if (k0 >= len) return;  // uniform, before any barrier
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gid = lane / 4, tid4 = lane % 4;
    // Stage b: the Q tile at sk + (2 + 2b)·TILE, then dO's, and 2·BR floats of stats.
    auto stage_queries = [&](u32 first, u32 b) {
        const PackedRows rows{g_all, hq, kvh, start, len, first, BR};
        const u32 sq = sk + (2 + 2 * b) * TILE;
        stage_rows<D, CHP>(sq, rows.source<T, D>(q), q);
        stage_rows<D, CHP>(sq + TILE, rows.source<T, D>(dout), dout);
        if (threadIdx.x < BR) {
            const int r = threadIdx.x;
            const bool ok = rows.valid(r);
            stats[2 * BR * b + r] = ok ? lse[rows.row(r)] * 1.4426950408889634f : 0.0f;
            stats[2 * BR * b + BR + r] = ok ? delta[rows.row(r)] : 0.0f;
        }
    };
    const u32 first0 = k0 * g_all / BR * BR, end = len * g_all;
    stage_rows<D, CHP>(sk, kv_source<T, D>(k, start, len, k0, hkv, kvh), k);
    stage_rows<D, CHP>(sv, kv_source<T, D>(v, start, len, k0, hkv, kvh), v);
    stage_queries(first0, 0);
    cp_async_commit();
    const float scale2 = scale * 1.4426950408889634f;
    float dka[D / 8][4], dva[D / 8][4];
    zero(dka);
    zero(dva);
    u32 b = 0;
    for (u32 first = first0; first < end; first += BR, b ^= 1) {
        if (first + BR < end) stage_queries(first + BR, b ^ 1);  // the next rows, during this step
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();  // stage b (and K, V) landed for every thread
        const PackedRows rows{g_all, hq, kvh, start, len, first, BR};
        const u32 sq = sk + (2 + 2 * b) * TILE, sdo = sq + TILE;
        const float* lse_s = stats + 2 * BR * b;
        const float* delta_s = lse_s + BR;
        // Two halves of 32 query rows: fewer live scores next to the dK and dV accumulators.
        for (int half = 0; half < 2; ++half) {
            const int c0 = 32 * half;
            float p[4][4], dp[4][4];
            zero(p);
            zero(dp);
            mma_abt<T, D, CHP, 32>(p, sk, warp * 16, sq, c0);    // Sᵀ
            mma_abt<T, D, CHP, 32>(dp, sv, warp * 16, sdo, c0);  // dPᵀ
#pragma unroll
            for (int n = 0; n < 4; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const u32 key = k0 + warp * 16 + gid + 8 * (e / 2);
                    const int c = c0 + 8 * n + 2 * tid4 + (e & 1);
                    const float pr = rows.valid(c) && key < len && key <= rows.pos(c) ? exp2_approx(p[n][e] * scale2 - lse_s[c]) : 0.0f;
                    p[n][e] = pr;
                    dp[n][e] = pr * (dp[n][e] - delta_s[c]);  // dSᵀ
                }
            }
            mma_pb<T, D, CHP, 32>(dva, p, sdo, c0);  // dV += Pᵀ dO
            mma_pb<T, D, CHP, 32>(dka, dp, sq, c0);  // dK += dSᵀ Q
        }
        __syncthreads();  // stage b is refilled by the next step's copy
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const u32 key = k0 + warp * 16 + gid + 8 * i;
        if (key >= len) continue;
        const u64 row = (u64)(start + key) * hkv + kvh;
        store_row<T, D>(dk + row * D, dka, i, scale);
        store_row<T, D>(dv + row * D, dva, i, 1.0f);
    }
}

#define TC_ENTRY(NAME, T, D)                                                                                                         \
    extern "C" __global__ void __launch_bounds__(FWD_THREADS) attention_fwd_tc_##NAME##_d##D(                                       \
        const T* q, const T* k, const T* v, T* out, float* lse, const u32* offsets, u32 hq, u32 hkv, float scale) {                  \
        attention_fwd_tc<T, D>(q, k, v, out, lse, offsets, hq, hkv, scale);                                                         \
    }                                                                                                                               \
    extern "C" __global__ void __launch_bounds__(FWD_THREADS) attention_dq_tc_##NAME##_d##D(                                        \
        const T* q, const T* k, const T* v, const T* out, const T* dout, const float* lse, float* delta, T* dq, const u32* offsets,  \
        u32 hq, u32 hkv, float scale) {                                                                                             \
        attention_dq_tc<T, D>(q, k, v, out, dout, lse, delta, dq, offsets, hq, hkv, scale);                                         \
    }                                                                                                                               \
    extern "C" __global__ void __launch_bounds__(FWD_THREADS) attention_dkdv_tc_##NAME##_d##D(                                      \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk, T* dv, const u32* offsets,  \
        u32 hq, u32 hkv, float scale) {                                                                                             \
        attention_dkdv_tc<T, D>(q, k, v, dout, lse, delta, dk, dv, offsets, hq, hkv, scale);                                        \
    }

TC_ENTRY(bf16, bf16, 64)
TC_ENTRY(bf16, bf16, 96)
TC_ENTRY(bf16, bf16, 128)
TC_ENTRY(f16, f16, 64)
TC_ENTRY(f16, f16, 96)
TC_ENTRY(f16, f16, 128)
