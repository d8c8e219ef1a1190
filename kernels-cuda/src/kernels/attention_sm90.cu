// attention_sm90.cu: the Hopper (sm_90a) query-row kernels of fused causal attention for bf16 and
// f16 with head dims 64, 96 and 128, the forward and the backward's dq: wgmma for the products,
// TMA for the key / value tiles, an mbarrier ring between a producer and two consumer warpgroups.
// Same contract, row geometry and results as attention_fwd_tc and attention_dq_tc
// (attention_sm80.cu), which other GPUs keep using; dK / dV is attention_bwd_sm90.cu.
//
// Layout (engine::backend::AttentionDims): q, out [N, Hq, D]; k, v [N, Hkv, D]; lse [N, Hq] f32;
// packed sequences cut by u32 `offsets`; query head h reads key/value head h / G.
//
// Forward block: 288 threads = consumer warpgroups 0 and 1 (warps 0-7) and a producer warp (warp 8). One
// block per (query tile, key/value head, sequence); the tile's ROWS = 128 rows are floor(128 / G)
// positions x the G query heads of the key/value head (attention_rows.cuh), so every key / value
// tile is loaded once for all the query heads that read it (GQA / MoA). Consumer c owns rows
// 64c .. 64c + 63: one wgmma M = 64 slab.
// - Q: the consumers copy the tile's rows (16-byte loads, zeros for idle rows) into shared memory
//   in the 128-byte-swizzled K-major layout wgmma reads: per 64-column chunk, [128 rows][128 B]
//   with 16-byte chunk x of row r at x ^ (r % 8). Then fence.proxy.async (wgmma reads through the
//   async proxy) and a named barrier over the 256 consumer threads.
// - K, V: the producer's lane 0 walks the block's key tiles (KEYS = 64 keys), per tile waiting for
//   a free stage (`empty`, 8 arrivals: lane 0 of each consumer warp), announcing the bytes on
//   `full` and issuing one TMA box {64 columns, 1 head, 64 keys} per 64-column chunk of K and of V
//   (3-D tensor maps over [N, Hkv, D], 128-byte swizzle, out-of-range reads as zero). Keys past the
//   sequence (the next sequence's rows, or TMA's zeros past N) are masked like future keys.
// - Per tile, each consumer: S = Q·Kᵀ as D/16 wgmma.m64n64k16 with both operands in shared memory
//   (K-major, descriptors advancing 32 bytes per k16 inside the swizzled row, 8 KiB per chunk);
//   then, in registers, the mask and the online softmax in the exp2 domain (the m64nN accumulator
//   layout is mma.sync's m16n8 C layout per warp, so rows reduce over a quad of lanes, as in the
//   sm_80 kernel); P converted to 16-bit A fragments in registers (two adjacent n8 blocks of S are
//   one k16 A fragment); O += P·V as 4 wgmma.m64nDk16 with A from registers and V's tile as the
//   MN-major B operand (8-key groups 1 KiB apart, 64-column blocks 8 KiB apart, 2 KiB per k16).
//   A warp releases the stage after its wgmmas retire. Tiles wholly above a warpgroup's last
//   row are not computed (still waited for and released).
// - At the end O / l goes to `out` and m·ln 2 + ln l to `lse`, for valid rows only.
//
// Shared memory: Q 16 KiB per 64 columns, each stage 16 KiB per 64 columns (K and V): 49 KiB at
// D = 64, 97 KiB at D = 96 and 128 (96 reads zeros in its second chunk's last 32 columns).
// Registers at D = 128: 64 for O, 32 for S, 16 for P fragments: 140 per thread, inside the 168
// that ptxas budgets for 288 threads (it counts whole warpgroups), so no setmaxnreg split.
//
// dq (dq_rows below) walks the same key tiles with the same ring; Q and dO are both staged (the
// consumers also compute D = dO·out per row, store it for the dK / dV kernel, and keep it in
// shared memory), and per tile S = Q·Kᵀ and dP = dO·Vᵀ (m64n64, shared-memory operands), P =
// exp2(S·scale·log2 e − lse·log2 e) masked to 0, dS = P (dP − D) in place of S, dq += dS·K with K's
// tile as the MN-major B operand (as V in the forward). dq, S and dP need more than 168
// registers at D = 128, so dq takes a full producer warpgroup (384 threads) and the GEMM's
// setmaxnreg split: 40 for the producer, 232 for the consumers (168 allocated per thread at
// launch; kernels_compile checks it). Shared memory: 64 KiB more than the forward at D = 128.
//
// What it leaves out (FlashAttention-3 has them): overlapping one warpgroup's softmax with the
// other's products (ping-pong) and the next tile's S with this tile's softmax (intra-warpgroup
// pipelining); each consumer here waits for its own wgmmas before the softmax. The two consumers
// and the producer still overlap with each other. dq likewise.
//
// The module is compiled for every architecture the engine builds, but wgmma, TMA and mbarrier
// transaction counts exist only on sm_90a: elsewhere the entry points trap (the host launches them
// only on compute capability 9.0).

#include "common.cuh"
#include "gemm_sm80.cuh"
#include "gemm_sm90.cuh"
#include "attention_rows.cuh"
#include "attention_wgmma.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
namespace attn90 {
using namespace attn_wgmma;

constexpr int ROWS = 128, KEYS = 64, STAGES = 2;

// Shared-memory plan for head dim D and ROW_TILES 128-row tiles (forward: Q; dq: Q and dO):
// 64-column (128-byte) chunks, the row tiles, the K/V stages, the barriers, then (dq only) D for
// each row; +1024 to align everything to the 128-byte swizzle's 1024-byte atom.
template <int D, int ROW_TILES> struct Plan {
    static constexpr int CHUNKS = (D + 63) / 64;
    static constexpr int Q_BYTES = CHUNKS * ROWS * 128;
    static constexpr int KV_TILE = CHUNKS * KEYS * 128;
    static constexpr int STAGE = 2 * KV_TILE;
    static constexpr int BARS = 2 * STAGES * 8;
    static constexpr int SMEM = ROW_TILES * Q_BYTES + STAGES * STAGE + BARS + (ROW_TILES - 1) * ROWS * 4 + 1024;
};

// The ring's barriers: `full` (1 arrival + the TMA bytes) and `empty` (lane 0 of each of the 8
// consumer warps) per stage; thread 0 initialises them, then the whole block syncs.
struct Ring {
    u32 base, bars;
    __device__ __forceinline__ u32 full(u32 s) const { return bars + 8u * s; }
    __device__ __forceinline__ u32 empty(u32 s) const { return bars + 8u * (STAGES + s); }
    __device__ __forceinline__ void init() const {
        if (threadIdx.x == 0) {
            for (int s = 0; s < STAGES; ++s) {
                sm90::mbar_init(full(s), 1);
                sm90::mbar_init(empty(s), 8);
            }
            asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        }
        __syncthreads();
    }
};

// The producer (one thread): key / value tiles 0 .. tiles - 1 of the rows' head through the ring,
// one TMA box {64 columns, 1 head, 64 keys} per 64-column chunk of K and of V.
template <int D>
__device__ __forceinline__ void produce_kv(const Ring& ring, const PackedRows& rows, u32 tiles, const sm90::TensorMap* map_k, const sm90::TensorMap* map_v) {
    using P = Plan<D, 1>;  // the ring's geometry does not depend on the row tiles
    for (u32 it = 0; it < tiles; ++it) {
        const u32 s = it % STAGES, round = it / STAGES;
        if (round > 0) sm90::mbar_wait(ring.empty(s), (round - 1) & 1);
        sm90::mbar_expect_tx(ring.full(s), P::STAGE);
        const int key = (int)(rows.start + it * KEYS);
#pragma unroll
        for (int c = 0; c < P::CHUNKS; ++c) {
            sm90::tma_load_3d(ring.base + s * P::STAGE + c * KEYS * 128, map_k, ring.full(s), 64 * c, (int)rows.kvh, key);
            sm90::tma_load_3d(ring.base + s * P::STAGE + P::KV_TILE + c * KEYS * 128, map_v, ring.full(s), 64 * c, (int)rows.kvh, key);
        }
    }
}

// The tile's rows of a [N, Hq, D] tensor into the swizzled K-major tile at `dst` (zeros for idle
// rows), by the 256 consumer threads.
template <typename T, int D> __device__ __forceinline__ void stage_rows(u32 dst, const T* src, const PackedRows& rows) {
    for (int e = threadIdx.x; e < ROWS * (D / 8); e += 256) {
        const int r = e / (D / 8), x = e % (D / 8);
        W16 val = {{0, 0, 0, 0}};
        if (rows.valid(r)) val = *reinterpret_cast<const W16*>(src + rows.row(r) * D + x * 8);
        const u32 at = dst + (x / 8) * (ROWS * 128) + r * 128 + (((x % 8) ^ (r % 8)) * 16);
        asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(at), "r"(val.w[0]), "r"(val.w[1]), "r"(val.w[2]), "r"(val.w[3]) : "memory");
    }
}

template <typename T, int D>
__device__ __forceinline__ void forward(const T* q, T* out, float* lse, const u32* offsets, u32 hq, u32 hkv, float scale, const sm90::TensorMap* map_k,
                                        const sm90::TensorMap* map_v, char* smem_raw) {
    using P = Plan<D, 1>;
    const u32 sq = (sm80::smem_addr(smem_raw) + 1023u) & ~1023u;
    const Ring ring{sq + P::Q_BYTES, sq + P::Q_BYTES + STAGES * P::STAGE};
    const QueryBlock qb = query_block<ROWS, KEYS>(offsets, hq, hkv);
    if (qb.empty) return;  // uniform, before any barrier
    const PackedRows& rows = qb.rows;
    const u32 tiles = qb.tiles;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    ring.init();

    if (warp == 8) {  // the producer
        if (lane == 0) produce_kv<D>(ring, rows, tiles, map_k, map_v);
        return;
    }

    stage_rows<T, D>(sq, q, rows);
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    asm volatile("bar.sync 1, 256;\n" ::: "memory");

    const int c = warp / 4, gid = lane / 4;
    const int r0 = c * 64 + (warp % 4) * 16 + gid;  // this thread's rows: r0 and r0 + 8
    const u32 last = rows.pos(min(c * 64 + 63, (int)rows.limit - 1));  // the warpgroup's last position
    const float scale2 = scale * 1.4426950408889634f;  // scores in the exp2 domain
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    for (u32 it = 0; it < tiles; ++it) {
        const u32 s = it % STAGES, j0 = it * KEYS;
        const u32 kt = ring.base + s * P::STAGE, vt = kt + P::KV_TILE;
        sm90::mbar_wait(ring.full(s), (it / STAGES) & 1);
        if (j0 <= last) {
            float sc[KEYS / 8][4];  // S for this warp's 16 rows x 64 keys (m64n64 accumulators)
#pragma unroll
            for (int n = 0; n < KEYS / 8; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
            sm90::wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const u64 da = sm90::make_desc(sq + (kk / 4) * (ROWS * 128) + c * (64 * 128) + (kk % 4) * 32, 16, 1024);
                const u64 db = sm90::make_desc(kt + (kk / 4) * (KEYS * 128) + (kk % 4) * 32, 16, 1024);
                wgmma_ss<T, 64>(flat(sc), da, db);
            }
            sm90::wgmma_commit();
            sm90::wgmma_wait<0>();

            // Mask, online softmax (per row: max over the quad, rescale), P in place of S.
#pragma unroll
            for (int i = 0; i < 2; ++i) online_softmax_tile(sc, o, m[i], l[i], i, j0, rows.len, rows.pos(r0 + 8 * i), scale2);

            // O += P·V: k16 step kk of P is S's n8 blocks 2kk and 2kk + 1.
            u32 a[KEYS / 16][4];
            a_fragments<T>(a, sc);
            sm90::wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < KEYS / 16; ++kk) wgmma_rs<T, D>(flat(o), a[kk], sm90::make_desc(vt + kk * 2048, 8192, 1024));
            sm90::wgmma_commit();
            sm90::wgmma_wait<0>();
        }
        if (lane == 0) sm90::mbar_arrive(ring.empty(s));  // this warp is done with the stage
    }

    store_forward_rows<T, D>(out, lse, o, m, l, rows, r0);
}

// Backward, dq (and D = dO·out per row, stored for attention_bwd_sm90.cu): the forward's geometry,
// with Q and dO staged, 384 threads and the setmaxnreg 40/232 split (dq, S and dP together do not
// fit in 168 registers at D = 128). Per key tile: S = Q·Kᵀ and dP = dO·Vᵀ (m64n64, shared-memory
// operands), P = exp2(S·scale·log2 e − lse·log2 e) masked to 0, dS = P (dP − D), dq += dS·K (A from
// registers, K's tile as the MN-major B operand, as V in the forward); finally dq ·= scale.
template <typename T, int D>
__device__ __forceinline__ void dq_rows(const T* q, const T* dout, const T* out, const float* lse, float* delta, T* dq, const u32* offsets, u32 hq, u32 hkv, float scale,
                                        const sm90::TensorMap* map_k, const sm90::TensorMap* map_v, char* smem_raw) {
    using P = Plan<D, 2>;
    const u32 sq = (sm80::smem_addr(smem_raw) + 1023u) & ~1023u, sdo = sq + P::Q_BYTES;
    const Ring ring{sdo + P::Q_BYTES, sdo + P::Q_BYTES + STAGES * P::STAGE};
    float* delta_s = reinterpret_cast<float*>(smem_raw + (ring.bars + P::BARS - sm80::smem_addr(smem_raw)));  // [ROWS]
    const QueryBlock qb = query_block<ROWS, KEYS>(offsets, hq, hkv);
    if (qb.empty) return;  // uniform, before any barrier
    const PackedRows& rows = qb.rows;
    const u32 tiles = qb.tiles;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    ring.init();

    if (warp >= 8) {  // the producer warpgroup: one thread works, the rest give up their registers
        sm90::setmaxnreg_dec<40>();
        if (threadIdx.x == 256) produce_kv<D>(ring, rows, tiles, map_k, map_v);
        return;
    }
    sm90::setmaxnreg_inc<232>();

    stage_rows<T, D>(sq, q, rows);
    stage_rows<T, D>(sdo, dout, rows);
    if (threadIdx.x < ROWS) delta_s[threadIdx.x] = row_delta<T, D>(out, dout, delta, rows, threadIdx.x);
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    asm volatile("bar.sync 1, 256;\n" ::: "memory");

    const int c = warp / 4, gid = lane / 4, tid4 = lane % 4;
    const int r0 = c * 64 + (warp % 4) * 16 + gid;  // this thread's rows: r0 and r0 + 8
    const u32 last = rows.pos(min(c * 64 + 63, (int)rows.limit - 1));  // the warpgroup's last position
    const float scale2 = scale * 1.4426950408889634f;  // scores in the exp2 domain
    float lse2[2], dl[2];
    u32 pos[2];
    bool valid[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        valid[i] = rows.valid(r0 + 8 * i);
        pos[i] = rows.pos(r0 + 8 * i);
        lse2[i] = valid[i] ? lse[rows.row(r0 + 8 * i)] * 1.4426950408889634f : 0.0f;
        dl[i] = delta_s[r0 + 8 * i];
    }
    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

    for (u32 it = 0; it < tiles; ++it) {
        const u32 s = it % STAGES, j0 = it * KEYS;
        const u32 kt = ring.base + s * P::STAGE, vt = kt + P::KV_TILE;
        sm90::mbar_wait(ring.full(s), (it / STAGES) & 1);
        if (j0 <= last) {
            float sc[KEYS / 8][4], dp[KEYS / 8][4];  // S and dP for this warp's 16 rows x 64 keys
#pragma unroll
            for (int n = 0; n < KEYS / 8; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
            sm90::wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const u32 a_off = (kk / 4) * (ROWS * 128) + c * (64 * 128) + (kk % 4) * 32, b_off = (kk / 4) * (KEYS * 128) + (kk % 4) * 32;
                wgmma_ss<T, 64>(flat(sc), sm90::make_desc(sq + a_off, 16, 1024), sm90::make_desc(kt + b_off, 16, 1024));
                wgmma_ss<T, 64>(flat(dp), sm90::make_desc(sdo + a_off, 16, 1024), sm90::make_desc(vt + b_off, 16, 1024));
            }
            sm90::wgmma_commit();
            sm90::wgmma_wait<0>();

            // P from the saved lse (masked to 0), dS = P (dP − D) in place of S.
#pragma unroll
            for (int n = 0; n < KEYS / 8; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = e / 2;
                    const u32 key = j0 + 8 * n + 2 * tid4 + (e & 1);
                    const bool seen = valid[i] & (key < rows.len) & (key <= pos[i]);
                    const float pr = seen ? exp2_approx(sc[n][e] * scale2 - lse2[i]) : 0.0f;
                    sc[n][e] = pr * (dp[n][e] - dl[i]);
                }
            }
            u32 a[KEYS / 16][4];
            a_fragments<T>(a, sc);
            sm90::wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < KEYS / 16; ++kk) wgmma_rs<T, D>(flat(acc), a[kk], sm90::make_desc(kt + kk * 2048, 8192, 1024));  // dq += dS K
            sm90::wgmma_commit();
            sm90::wgmma_wait<0>();
        }
        if (lane == 0) sm90::mbar_arrive(ring.empty(s));  // this warp is done with the stage
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
        if (valid[i]) store_row<T, D>(dq + rows.row(r0 + 8 * i) * D, acc, i, scale);
}

}  // namespace attn90
#define FWD90_BODY(T, D)                                   \
    extern __shared__ __align__(1024) char smem[];         \
    attn90::forward<T, D>(q, out, lse, offsets, hq, hkv, scale, &map_k, &map_v, smem);
#define DQ90_BODY(T, D)                                    \
    extern __shared__ __align__(1024) char smem[];         \
    attn90::dq_rows<T, D>(q, dout, out, lse, delta, dq, offsets, hq, hkv, scale, &map_k, &map_v, smem);
#else
#define FWD90_BODY(T, D) __trap();
#define DQ90_BODY(T, D) __trap();
#endif

#define FWD90_ENTRY(NAME, T, D)                                                                                                         \
    extern "C" __global__ void __launch_bounds__(288, 1)                                                                               \
        attention_fwd90_##NAME##_d##D(const T* q, T* out, float* lse, const u32* offsets, u32 hq, u32 hkv, float scale,                \
                                      const __grid_constant__ sm90::TensorMap map_k, const __grid_constant__ sm90::TensorMap map_v) { \
        FWD90_BODY(T, D)                                                                                                               \
    }

#define DQ90_ENTRY(NAME, T, D)                                                                                                                     \
    extern "C" __global__ void __launch_bounds__(384, 1) attention_dq90_##NAME##_d##D(                                                           \
        const T* q, const T* dout, const T* out, const float* lse, float* delta, T* dq, const u32* offsets, u32 hq, u32 hkv, float scale,          \
        const __grid_constant__ sm90::TensorMap map_k, const __grid_constant__ sm90::TensorMap map_v) {                                           \
        DQ90_BODY(T, D)                                                                                                                           \
    }

FWD90_ENTRY(bf16, bf16, 64)
FWD90_ENTRY(bf16, bf16, 96)
FWD90_ENTRY(bf16, bf16, 128)
FWD90_ENTRY(f16, f16, 64)
FWD90_ENTRY(f16, f16, 96)
FWD90_ENTRY(f16, f16, 128)
DQ90_ENTRY(bf16, bf16, 64)
DQ90_ENTRY(bf16, bf16, 96)
DQ90_ENTRY(bf16, bf16, 128)
DQ90_ENTRY(f16, f16, 64)
DQ90_ENTRY(f16, f16, 96)
DQ90_ENTRY(f16, f16, 128)
