// attention_sm90.cu: the Hopper (sm_90a) forward of fused causal attention for bf16 and f16 with
// head dims 64, 96 and 128: wgmma for both products, TMA for the key / value tiles, an mbarrier
// ring between a producer warp and two consumer warpgroups. Same contract, row geometry and
// results as attention_fwd_tc (attention_sm80.cu), which the backward and other GPUs keep using.
//
// Layout (engine::backend::AttentionDims): q, out [N, Hq, D]; k, v [N, Hkv, D]; lse [N, Hq] f32;
// packed sequences cut by u32 `offsets`; query head h reads key/value head h / G.
//
// Block: 288 threads = consumer warpgroups 0 and 1 (warps 0-7) and a producer warp (warp 8). One
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
// Registers at D = 128: 64 for O, 32 for S, 16 for P fragments; the launch bound (288, 1) leaves
// 224 per thread, so no setmaxnreg split is needed.
//
// What it leaves out (FlashAttention-3 has them): overlapping one warpgroup's softmax with the
// other's products (ping-pong) and the next tile's S with this tile's softmax (intra-warpgroup
// pipelining); each consumer here waits for its own wgmmas before the softmax. The two consumers
// and the producer still overlap with each other. The backward's dK / dV kernel is
// attention_bwd_sm90.cu; dQ stays on attention_sm80.cu.
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

// Shared-memory plan for head dim D: 64-column (128-byte) chunks, the Q tile, the K/V stages, the
// barriers; +1024 to align everything to the 128-byte swizzle's 1024-byte atom.
template <int D> struct Plan {
    static constexpr int CHUNKS = (D + 63) / 64;
    static constexpr int Q_BYTES = CHUNKS * ROWS * 128;
    static constexpr int KV_TILE = CHUNKS * KEYS * 128;
    static constexpr int STAGE = 2 * KV_TILE;
    static constexpr int SMEM = Q_BYTES + STAGES * STAGE + 2 * STAGES * 8 + 1024;
};

template <typename T, int D>
__device__ __forceinline__ void forward(const T* q, T* out, float* lse, const u32* offsets, u32 hq, u32 hkv, float scale, const sm90::TensorMap* map_k,
                                        const sm90::TensorMap* map_v, char* smem_raw) {
    using P = Plan<D>;
    const u32 sq = (sm80::smem_addr(smem_raw) + 1023u) & ~1023u, ring = sq + P::Q_BYTES, bars = ring + STAGES * P::STAGE;
    auto full = [&](u32 s) { return bars + 8u * s; };
    auto empty = [&](u32 s) { return bars + 8u * (STAGES + s); };
    const QueryBlock qb = query_block<ROWS, KEYS>(offsets, hq, hkv);
    if (qb.empty) return;  // uniform, before any barrier
    const PackedRows& rows = qb.rows;
    const u32 tiles = qb.tiles;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) {
            sm90::mbar_init(full(s), 1);
            sm90::mbar_init(empty(s), 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (warp == 8) {  // the producer
        if (lane != 0) return;
        for (u32 it = 0; it < tiles; ++it) {
            const u32 s = it % STAGES, round = it / STAGES;
            if (round > 0) sm90::mbar_wait(empty(s), (round - 1) & 1);
            sm90::mbar_expect_tx(full(s), P::STAGE);
            const int key = (int)(rows.start + it * KEYS);
#pragma unroll
            for (int c = 0; c < P::CHUNKS; ++c) {
                sm90::tma_load_3d(ring + s * P::STAGE + c * KEYS * 128, map_k, full(s), 64 * c, (int)rows.kvh, key);
                sm90::tma_load_3d(ring + s * P::STAGE + P::KV_TILE + c * KEYS * 128, map_v, full(s), 64 * c, (int)rows.kvh, key);
            }
        }
        return;
    }

    // Q rows into the swizzled K-major tile (zeros for idle rows).
    for (int e = threadIdx.x; e < ROWS * (D / 8); e += 256) {
        const int r = e / (D / 8), x = e % (D / 8);
        W16 val = {{0, 0, 0, 0}};
        if (rows.valid(r)) val = *reinterpret_cast<const W16*>(q + rows.row(r) * D + x * 8);
        const u32 dst = sq + (x / 8) * (ROWS * 128) + r * 128 + (((x % 8) ^ (r % 8)) * 16);
        asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(val.w[0]), "r"(val.w[1]), "r"(val.w[2]), "r"(val.w[3]) : "memory");
    }
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
        const u32 kt = ring + s * P::STAGE, vt = kt + P::KV_TILE;
        sm90::mbar_wait(full(s), (it / STAGES) & 1);
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
        if (lane == 0) sm90::mbar_arrive(empty(s));  // this warp is done with the stage
    }

    store_forward_rows<T, D>(out, lse, o, m, l, rows, r0);
}

}  // namespace attn90
#define FWD90_BODY(T, D)                                   \
    extern __shared__ __align__(1024) char smem[];         \
    attn90::forward<T, D>(q, out, lse, offsets, hq, hkv, scale, &map_k, &map_v, smem);
#else
#define FWD90_BODY(T, D) __trap();
#endif

#define FWD90_ENTRY(NAME, T, D)                                                                                                         \
    extern "C" __global__ void __launch_bounds__(288, 1)                                                                               \
        attention_fwd90_##NAME##_d##D(const T* q, T* out, float* lse, const u32* offsets, u32 hq, u32 hkv, float scale,                \
                                      const __grid_constant__ sm90::TensorMap map_k, const __grid_constant__ sm90::TensorMap map_v) { \
        FWD90_BODY(T, D)                                                                                                               \
    }

FWD90_ENTRY(bf16, bf16, 64)
FWD90_ENTRY(bf16, bf16, 96)
FWD90_ENTRY(bf16, bf16, 128)
FWD90_ENTRY(f16, f16, 64)
FWD90_ENTRY(f16, f16, 96)
FWD90_ENTRY(f16, f16, 128)
