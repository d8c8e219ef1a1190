// attention_bwd_sm90.cu: the Hopper (sm_90a) dK / dV kernel of the fused causal attention backward
// (FlashAttention-2 / -3 algorithm) for bf16 and f16 with head dims 64, 96 and 128: wgmma for all
// four products, TMA for every tile, an mbarrier ring between a producer warpgroup and two
// consumer warpgroups. Same contract and results as attention_dkdv_tc (attention_sm80.cu). dQ, and
// D = dO·out per row, which this kernel reads, come from attention_dq90 (attention_sm90.cu),
// launched before it.
//
// Layout (engine::backend::AttentionDims): q, dO [N, Hq, D]; k, v, dk, dv [N, Hkv, D]; lse, delta
// [N, Hq] f32; packed sequences cut by u32 `offsets`; query head h reads key/value head h / G.
//
// Algorithm. One block per (128 keys, key/value head, sequence); consumer warpgroup c owns keys
// 64c .. 64c + 63 of them and keeps dK and dV for them in registers (m64nD accumulators). The K
// and V tiles arrive once, by TMA. The block then walks the packed query rows that see its keys:
// tiles of QROWS = 64 rows, each P = floor(64 / G) positions x the G query heads of the key/value
// head (attention_rows.cuh's order), so every query head of the group is summed into the same
// dK / dV registers in a fixed order: GQA / MoA without float atomics, bit-reproducible. Per query
// tile, each consumer computes with its keys as the wgmma M side (so no operand is transposed):
//   Sᵀ  = K·Qᵀ                       m64n64, both from shared memory (K-major), D/16 k-steps
//   dPᵀ = V·dOᵀ                      the same with V and dO
//   Pᵀ  = exp2(Sᵀ·scale·log2 e − lse·log2 e), 0 where masked (key past the sequence or after the
//         query's position, idle rows)
//   dSᵀ = Pᵀ ⊙ (dPᵀ − D)
//   dV += Pᵀ·dO,  dK += dSᵀ·Q        m64nD with A = Pᵀ / dSᵀ from registers (the accumulator
//                                   layout of two n8 blocks is the k16 A layout) and dO / Q as the
//                                   MN-major B operand straight from the same tiles.
// At the end dK·scale and dV go to memory for the keys inside the sequence.
//
// Block: 384 threads = consumer warpgroups 0 and 1 (warps 0-7) and a producer warpgroup (warps
// 8-11) that gives its registers to the consumers (setmaxnreg: 40 for the producer, 232 for the
// consumers, as the sm_90a GEMM; the launch allocates 168 per thread, which kernels_compile checks).
// Warp 8 produces: lane 0 issues the K / V boxes on `kv_full`, then per query tile all 32 lanes
// wait for a free stage (`empty`: lane 0 of each of the 8 consumer warps), copy the tile's lse
// (times log2 e) and D into the stage and arrive on `full` (32 arrivals, which publish those
// copies); lane 0's arrival announces the bytes of the Q and dO boxes it then issues (4-D tensor
// maps over [N, Hkv, G, D]: one box {64 columns, G heads, 1, P positions} per 64-column chunk is
// exactly the tile's packed rows, in order; rows past P·G are zeroed once and never loaded, so
// idle rows give finite products; positions past N read as zero). Shared tiles use the 128-byte
// swizzle wgmma reads (64-column chunks of [rows][128 B]).
//
// Tiles and cost. Per query tile and warpgroup: 4 products of 64 x 64 x D, 2·4·64·64·D FLOPs
// (4.2 MFLOP at D = 128), on 2·64·D·2 bytes of Q and dO shared by the two warpgroups (32 KiB at
// D = 128, plus 512 B of lse and D): about 250 FLOP per byte of tile traffic, mostly from L2, so an
// H100 / H200 at ~1 PFLOP/s dense bf16 needs ~4 TB/s of tile reads from L2, which it has. K and V
// are read once per block. Shared memory: K and V 2·128·D·2 bytes, two stages of Q + dO 2·2·64·D·2
// bytes, 1 KiB of row statistics, barriers and 1 KiB of alignment slack: 66 KiB at D = 64, 130 KiB
// at D = 96 and 128 (96 reads zeros in the last 32 columns of its second chunk). Registers decide
// occupancy: 384 x 168 is the whole register file, so one block (12 warps) per SM. A consumer at
// D = 128 holds 128 registers of dK / dV, 64 of Sᵀ and dPᵀ and then 32 of their 16-bit fragments:
// it fits in 232 without spills, not in the 168 a split-less 384-thread block (or a 288-thread one:
// ptxas budgets whole warpgroups) would give. Why 128 keys and 64 query rows: two m64 warpgroups
// share every Q / dO tile, halving its traffic per FLOP against one; a 128-row query tile would
// add 64 accumulator registers per consumer, which do not fit beside dK / dV at D = 128.
//
// Expected and not done. Each consumer waits for its own wgmmas before the elementwise step and
// again before releasing the stage; the two consumers and the producer overlap with each other, but
// there is no FlashAttention-3 ping-pong between warpgroups and no intra-warpgroup pipelining of
// the next tile's Sᵀ / dPᵀ with this tile's elementwise step. A warpgroup also computes the (fully
// masked) query tiles that end before its first key, at most 64 positions' worth per block: a
// branch around them made ptxas spill at D = 128. Expect FlashAttention-2-on-Hopper territory
// (roughly 35-45 % of bf16 peak for the backward; unmeasured, no Hopper has run it), short of
// FlashAttention-3's. dQ is a second pass over the same scores (attention_dq90) instead of float
// atomics from this kernel: S and dP are computed twice, the price of determinism.
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
namespace attn90_bwd {
using namespace attn_wgmma;

constexpr int KEYS = 128, QROWS = 64, STAGES = 2;

// Shared-memory plan for head dim D (64-column chunks of 128-byte rows, 1024-byte aligned): the
// K and V tiles, the Q / dO stages, the per-stage lse and D rows, the barriers (kv_full, full[2],
// empty[2]).
template <int D> struct Plan {
    static constexpr int CHUNKS = (D + 63) / 64;
    static constexpr int KV_TILE = CHUNKS * KEYS * 128;
    static constexpr int Q_TILE = CHUNKS * QROWS * 128;
    static constexpr int STAGE = 2 * Q_TILE;
    static constexpr int STATS = 2 * QROWS * 4;
    static constexpr int SMEM = 2 * KV_TILE + STAGES * (STAGE + STATS) + (1 + 2 * STAGES) * 8 + 1024;
};

template <typename T, int D>
__device__ __forceinline__ void dkdv(const float* lse, const float* delta, T* dk, T* dv, const u32* offsets, u32 hq, u32 hkv, float scale,
                                     const sm90::TensorMap* map_q, const sm90::TensorMap* map_do, const sm90::TensorMap* map_k,
                                     const sm90::TensorMap* map_v, char* smem_raw) {
    using P = Plan<D>;
    const u32 sk = (sm80::smem_addr(smem_raw) + 1023u) & ~1023u, sv = sk + P::KV_TILE, ring = sv + P::KV_TILE;
    const u32 stats = ring + STAGES * P::STAGE, bars = stats + STAGES * P::STATS;
    float* stats_p = reinterpret_cast<float*>(smem_raw + (stats - sm80::smem_addr(smem_raw)));
    const u32 kv_full = bars;
    auto full = [&](u32 s) { return bars + 8u * (1 + s); };
    auto empty = [&](u32 s) { return bars + 8u * (1 + STAGES + s); };
    const u32 g = hq / hkv, ppt = QROWS / g, kvh = blockIdx.y, k0 = blockIdx.x * KEYS;
    const u32 start = offsets[blockIdx.z], len = offsets[blockIdx.z + 1] - start;
    if (k0 >= len) return;  // uniform, before any barrier
    const u32 t0 = k0 / ppt, tiles = (len + ppt - 1) / ppt - t0;  // query tiles that see the keys
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (threadIdx.x == 0) {
        sm90::mbar_init(kv_full, 1);
        for (int s = 0; s < STAGES; ++s) {
            sm90::mbar_init(full(s), 32);
            sm90::mbar_init(empty(s), 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    // Rows past ppt·G of every Q / dO tile are never loaded: zeros, so idle rows give finite
    // products (their P is masked to 0, and 0·NaN would not be).
    for (u32 e = threadIdx.x; e < STAGES * 2 * P::CHUNKS * (QROWS - ppt * g) * 8; e += blockDim.x) {
        const u32 x = e % 8, r = ppt * g + (e / 8) % (QROWS - ppt * g), tile = e / 8 / (QROWS - ppt * g);
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(ring + tile * (QROWS * 128) + r * 128 + x * 16), "r"(0u) : "memory");
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();

    if (warp >= 8) {  // the producer warpgroup: warp 8 works, 9-11 only give up their registers
        sm90::setmaxnreg_dec<40>();
        if (warp != 8) return;
        if (lane == 0) {
            sm90::mbar_expect_tx(kv_full, 2 * P::KV_TILE);
#pragma unroll
            for (int c = 0; c < P::CHUNKS; ++c) {
#pragma unroll
                for (int h = 0; h < KEYS / 64; ++h) {
                    sm90::tma_load_3d(sk + c * KEYS * 128 + h * 64 * 128, map_k, kv_full, 64 * c, (int)kvh, (int)(start + k0) + 64 * h);
                    sm90::tma_load_3d(sv + c * KEYS * 128 + h * 64 * 128, map_v, kv_full, 64 * c, (int)kvh, (int)(start + k0) + 64 * h);
                }
            }
        }
        for (u32 it = 0; it < tiles; ++it) {
            const u32 s = it % STAGES, round = it / STAGES;
            if (round > 0) sm90::mbar_wait(empty(s), (round - 1) & 1);
            const PackedRows rows{g, hq, kvh, start, len, (t0 + it) * ppt * g, ppt * g};
            float* st = stats_p + s * (P::STATS / 4);
            for (int r = lane; r < QROWS; r += 32) {
                const bool ok = rows.valid(r);
                st[r] = ok ? lse[rows.row(r)] * 1.4426950408889634f : 0.0f;
                st[QROWS + r] = ok ? delta[rows.row(r)] : 0.0f;
            }
            if (lane != 0) {
                sm90::mbar_arrive(full(s));
                continue;
            }
            sm90::mbar_expect_tx(full(s), 2 * P::CHUNKS * ppt * g * 128);
            const u32 sq = ring + s * P::STAGE, sdo = sq + P::Q_TILE;
            const int pos = (int)(start + (t0 + it) * ppt);
#pragma unroll
            for (int c = 0; c < P::CHUNKS; ++c) {
                sm90::tma_load_4d(sq + c * QROWS * 128, map_q, full(s), 64 * c, 0, (int)kvh, pos);
                sm90::tma_load_4d(sdo + c * QROWS * 128, map_do, full(s), 64 * c, 0, (int)kvh, pos);
            }
        }
        return;
    }

    sm90::setmaxnreg_inc<232>();
    const int wg = warp / 4, gid = lane / 4, tid4 = lane % 4;
    const u32 key0 = k0 + 64 * wg + 16 * (warp % 4) + gid;  // this thread's keys: key0 and key0 + 8
    const float scale2 = scale * 1.4426950408889634f;  // scores in the exp2 domain
    float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) dka[n][0] = dka[n][1] = dka[n][2] = dka[n][3] = dva[n][0] = dva[n][1] = dva[n][2] = dva[n][3] = 0.0f;
    sm90::mbar_wait(kv_full, 0);

    for (u32 it = 0; it < tiles; ++it) {
        const u32 s = it % STAGES, first_pos = (t0 + it) * ppt;
        const u32 sq = ring + s * P::STAGE, sdo = sq + P::Q_TILE;
        const float* st = stats_p + s * (P::STATS / 4);
        sm90::mbar_wait(full(s), (it / STAGES) & 1);
        const PackedRows rows{g, hq, kvh, start, len, first_pos * g, ppt * g};
        float sc[QROWS / 8][4], dp[QROWS / 8][4];  // Sᵀ and dPᵀ: this warp's 16 keys x QROWS rows
#pragma unroll
        for (int n = 0; n < QROWS / 8; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
        sm90::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const u32 a_off = (kk / 4) * (KEYS * 128) + wg * (64 * 128) + (kk % 4) * 32, b_off = (kk / 4) * (QROWS * 128) + (kk % 4) * 32;
            wgmma_ss<T, QROWS>(flat(sc), sm90::make_desc(sk + a_off, 16, 1024), sm90::make_desc(sq + b_off, 16, 1024));
            wgmma_ss<T, QROWS>(flat(dp), sm90::make_desc(sv + a_off, 16, 1024), sm90::make_desc(sdo + b_off, 16, 1024));
        }
        sm90::wgmma_commit();
        sm90::wgmma_wait<0>();

        // Pᵀ from the saved lse (masked to 0), dSᵀ = Pᵀ (dPᵀ − D).
#pragma unroll
        for (int n = 0; n < QROWS / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const u32 key = key0 + 8 * (e / 2);
                const int c = 8 * n + 2 * tid4 + (e & 1);
                const bool seen = rows.valid(c) & (key < len) & (key <= rows.pos(c));
                const float pr = seen ? exp2_approx(sc[n][e] * scale2 - st[c]) : 0.0f;
                sc[n][e] = pr;
                dp[n][e] = pr * (dp[n][e] - st[QROWS + c]);
            }
        }
        u32 ap[QROWS / 16][4], ads[QROWS / 16][4];
        a_fragments<T>(ap, sc);
        a_fragments<T>(ads, dp);
        sm90::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < QROWS / 16; ++kk) {
            const u32 b_off = 16 * kk * 128;  // 16 rows of the MN-major B operand
            wgmma_rs<T, D>(flat(dva), ap[kk], sm90::make_desc(sdo + b_off, QROWS * 128, 1024));   // dV += Pᵀ dO
            wgmma_rs<T, D>(flat(dka), ads[kk], sm90::make_desc(sq + b_off, QROWS * 128, 1024));  // dK += dSᵀ Q
        }
        sm90::wgmma_commit();
        sm90::wgmma_wait<0>();
        if (lane == 0) sm90::mbar_arrive(empty(s));  // this warp is done with the stage
    }

#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const u32 key = key0 + 8 * i;
        if (key >= len) continue;
        const u64 row = (u64)(start + key) * hkv + kvh;
        store_row<T, D>(dk + row * D, dka, i, scale);
        store_row<T, D>(dv + row * D, dva, i, 1.0f);
    }
}

}  // namespace attn90_bwd
#define DKDV90_BODY(T, D)                          \
    extern __shared__ __align__(1024) char smem[]; \
    attn90_bwd::dkdv<T, D>(lse, delta, dk, dv, offsets, hq, hkv, scale, &map_q, &map_do, &map_k, &map_v, smem);
#else
#define DKDV90_BODY(T, D) __trap();
#endif

#define DKDV90_ENTRY(NAME, T, D)                                                                                                           \
    extern "C" __global__ void __launch_bounds__(384, 1) attention_dkdv90_##NAME##_d##D(                                                 \
        const float* lse, const float* delta, T* dk, T* dv, const u32* offsets, u32 hq, u32 hkv, float scale,                            \
        const __grid_constant__ sm90::TensorMap map_q, const __grid_constant__ sm90::TensorMap map_do, const __grid_constant__ sm90::TensorMap map_k, \
        const __grid_constant__ sm90::TensorMap map_v) {                                                                                  \
        DKDV90_BODY(T, D)                                                                                                                 \
    }

DKDV90_ENTRY(bf16, bf16, 64)
DKDV90_ENTRY(bf16, bf16, 96)
DKDV90_ENTRY(bf16, bf16, 128)
DKDV90_ENTRY(f16, f16, 64)
DKDV90_ENTRY(f16, f16, 96)
DKDV90_ENTRY(f16, f16, 128)
