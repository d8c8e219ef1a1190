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
// - K, V: the producer's lane 0 walks the block's key tiles (KEYS = 64 keys) through a ring of
//   STAGES = 3 stages, per tile waiting for a free stage (`empty`, 8 arrivals: lane 0 of each
//   consumer warp), announcing the bytes on `full` and issuing one TMA box {64 columns, 1 head,
//   64 keys} per 64-column chunk of K and of V (3-D tensor maps over [N, Hkv, D], 128-byte
//   swizzle, out-of-range reads as zero). Keys past the sequence (the next sequence's rows, or
//   TMA's zeros past N) are masked like future keys.
// - Per tile j, each consumer: S_j = Q·K_jᵀ as D/16 wgmma.m64n64k16 with both operands in shared
//   memory (K-major, descriptors advancing 32 bytes per k16 inside the swizzled row, 8 KiB per
//   chunk); in registers, the mask and the online softmax in the exp2 domain (the m64nN
//   accumulator layout is mma.sync's m16n8 C layout per warp, so rows reduce over a quad of
//   lanes, as in the sm_80 kernel); P_j converted to 16-bit A fragments in registers (two
//   adjacent n8 blocks of S are one k16 A fragment); O += P_j·V_j as 4 wgmma.m64nDk16 with A from
//   registers and V's tile as the MN-major B operand (8-key groups 1 KiB apart, 64-column blocks
//   8 KiB apart, 2 KiB per k16).
// - Intra-warpgroup pipelining (FlashAttention-3, Shah et al. 2024, section 3.2): the consumer
//   issues S_j and then P_{j−1}·V_{j−1} as two wgmma groups, waits for the first only
//   (wait_group 1) and runs the softmax of S_j while the tensor cores still do P_{j−1}·V_{j−1};
//   after wait_group 0 it rescales O by the change of max, releases stage j − 1 and makes P_j's
//   fragments, which the next tile's P·V reads. The arithmetic is the unpipelined order's: each
//   O += P·V lands before the rescale that follows it. A consumer holds two stages at once (V of
//   j − 1, K of j), so the ring has three, letting the producer load j + 1 meanwhile. Registers
//   that a wgmma in flight reads or writes (S, O, P's fragments) are pinned after each wait
//   (fence_regs), and the emulator fails a kernel that touches them, or frees their stage,
//   before the wait that retires them. Tiles wholly above a warpgroup's last row are not computed
//   (still waited for and released).
// - Ping-pong between the consumers (FlashAttention-3, section 3.1; Turns below): they take turns
//   issuing their wgmmas, ordered by two named barriers (bar.sync by the one whose turn it is,
//   bar.arrive by the other after its own issue), so one's softmax tends to run while the other's
//   products hold the tensor cores rather than both softmaxes at once.
// - At the end O / l goes to `out` and m·ln 2 + ln l to `lse`, for valid rows only.
//
// Shared memory: Q 16 KiB per 64 columns, each stage 16 KiB per 64 columns (K and V): 65 KiB at
// D = 64, 129 KiB at D = 96 and 128 (96 reads zeros in its second chunk's last 32 columns), so one
// block per SM (as the registers already decide). Registers at D = 128: 64 for O, 32 for S, 16
// for the P fragments in flight: 112 live across the loop plus addresses and row statistics;
// ptxas gives 167 (155 at D = 96, 127 at D = 64) without spills, inside the 168 it budgets for 288
// threads (it counts whole warpgroups), so no setmaxnreg split; kernels_compile checks that
// bound, that nothing spills and that ptxas keeps the wgmmas asynchronous.
//
// dq (dq_rows below) walks the same key tiles with the same ring; Q and dO are both staged (the
// consumers also compute D = dO·out per row, store it for the dK / dV kernel, and keep it in
// shared memory), and per tile S = Q·Kᵀ and dP = dO·Vᵀ (m64n64, shared-memory operands), P =
// exp2(S·scale·log2 e − lse·log2 e) masked to 0, dS = P (dP − D) in place of S, dq += dS·K with K's
// tile as the MN-major B operand (as V in the forward). dq, S and dP need more than 168
// registers at D = 128, so dq takes a full producer warpgroup (384 threads) and the GEMM's
// setmaxnreg split: 40 for the producer, 232 for the consumers (168 allocated per thread at
// launch; kernels_compile checks it). Shared memory: the dO tile and D per row more than the
// forward, 161.5 KiB at D = 128.
//
// What it leaves out of FlashAttention-3: its larger key tiles, which take the registers its
// consumers get from a producer warpgroup through setmaxnreg (here 64 keys fit the 168 registers
// of a split-less 288-thread block), and its FP8 path. dq is not pipelined: each consumer
// waits for its own wgmmas before the elementwise step, and for its dq += dS·K before the next
// tile's products. All of it unmeasured: no Hopper has run these kernels.
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

constexpr int ROWS = 128, KEYS = 64, STAGES = 3;

// Shared-memory plan for head dim D and ROW_TILES 128-row tiles (forward: Q; dq: Q and dO):
// 64-column (128-byte) chunks, the row tiles, the K/V stages, the barriers, then (dq only) D for
// each row; +1024 to align everything to the 128-byte swizzle's 1024-byte atom.
template <int D, int ROW_TILES> struct Plan {
    static constexpr int CHUNKS = (D + 63) / 64;
    static constexpr int Q_BYTES = CHUNKS * ROWS * 128;
    static constexpr int KV_TILE = CHUNKS * KEYS * 128;
    static constexpr int STAGE = 2 * KV_TILE;
    static constexpr int BARS = 2 * STAGES * 8;
    static constexpr int RING = ROW_TILES * Q_BYTES, RING_BARS = RING + STAGES * STAGE;
    static constexpr int SMEM = RING_BARS + BARS + (ROW_TILES - 1) * ROWS * 4 + 1024;
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

// After the consumers' shared-memory stores of the row tiles: makes them visible to wgmma (which
// reads through the async proxy) and waits for all 256 consumer threads.
__device__ __forceinline__ void publish_rows() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
}

// A consumer thread's share of the tile: warpgroup c owns rows 64c .. 64c + 63, the thread rows
// r0 and r0 + 8 of them (the m64 accumulator layout); `last` is the warpgroup's last position.
struct ConsumerRows {
    int c, r0;
    u32 last;
};
__device__ __forceinline__ ConsumerRows consumer_rows(const PackedRows& rows, int warp, int lane) {
    const int c = warp / 4;
    return {c, c * 64 + (warp % 4) * 16 + lane / 4, rows.pos(min(c * 64 + 63, (int)rows.limit - 1))};
}

// Ping-pong (FlashAttention-3, section 3.1): the two consumers take turns issuing their wgmmas,
// so one's softmax runs while the other's products hold the tensor cores. A consumer's turn k
// issues tile k's S and tile k − 1's P·V (turn 0: S only; the last turn: the last P·V only), so it
// has one turn more than it has tiles to compute. Named barrier 2 + c opens consumer c's turns:
// its 128 threads bar.sync there while the other consumer's 128 bar.arrive after their turn.
// Consumer 0 goes first. Consumer 1's rows are later, so it has at least as many turns as
// consumer 0 (`turns0`), and once consumer 0 has had its last turn it neither waits nor signals.
struct Turns {
    int c;
    u32 turns0;
    __device__ __forceinline__ void begin(u32 k) const {
        if (c == 0 ? k >= 1 : k < turns0) asm volatile("bar.sync %0, 256;\n" ::"r"(2 + c) : "memory");
    }
    __device__ __forceinline__ void end(u32 k) const {
        if (c == 0 || k + 1 < turns0) asm volatile("bar.arrive %0, 256;\n" ::"r"(3 - c) : "memory");
    }
};

// Issues (and commits as one group) S = Q·Kᵀ for one warpgroup: D/16 wgmma.m64n64k16 over its 64
// rows of the Q tile at `q_rows` and the key tile at `k_tile`, both K-major in shared memory
// (descriptors advancing 32 bytes per k16 inside the swizzled row, a tile per 64-column chunk).
template <typename T, int D> __device__ __forceinline__ void issue_scores(float (&sc)[KEYS / 8][4], u32 q_rows, u32 k_tile) {
#pragma unroll
    for (int n = 0; n < KEYS / 8; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const u64 da = sm90::make_desc(q_rows + (kk / 4) * (ROWS * 128) + (kk % 4) * 32, 16, 1024);
        const u64 db = sm90::make_desc(k_tile + (kk / 4) * (KEYS * 128) + (kk % 4) * 32, 16, 1024);
        wgmma_ss<T, 64>(flat(sc), da, db);
    }
    sm90::wgmma_commit();
}

// Issues (and commits as one group) O += P·V: 4 wgmma.m64nDk16, A = P's fragments from registers,
// V's tile at `v_tile` as the MN-major B operand (8-key groups 1 KiB apart, 64-column blocks
// 8 KiB apart, 2 KiB per k16).
template <typename T, int D> __device__ __forceinline__ void issue_pv(float (&o)[D / 8][4], const u32 (&a)[KEYS / 16][4], u32 v_tile) {
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < KEYS / 16; ++kk) wgmma_rs<T, D>(flat(o), a[kk], sm90::make_desc(v_tile + kk * 2048, 8192, 1024));
    sm90::wgmma_commit();
}

template <typename T, int D>
__device__ __forceinline__ void forward(const T* q, T* out, float* lse, const u32* offsets, u32 hq, u32 hkv, float scale, const sm90::TensorMap* map_k,
                                        const sm90::TensorMap* map_v, char* smem_raw) {
    using P = Plan<D, 1>;
    const auto [rows, tiles, empty, sq, ring, warp, lane] = open_query_block<ROWS, KEYS, P, Ring>(smem_raw, offsets, hq, hkv);
    if (empty) return;

    if (warp == 8) {  // the producer
        if (lane == 0) produce_kv<D>(ring, rows, tiles, map_k, map_v);
        return;
    }

    stage_rows<T, D>(sq, q, rows);
    publish_rows();

    const auto [c, r0, last] = consumer_rows(rows, warp, lane);
    const u32 own = min(tiles, last / KEYS + 1);  // the tiles it computes (from 0; later ones are all masked)
    const Turns turns{c, min(tiles, consumer_rows(rows, 0, 0).last / KEYS + 1) + 1};
    const float scale2 = scale * 1.4426950408889634f;  // scores in the exp2 domain
    const u32 sq_c = sq + c * (64 * 128);  // this warpgroup's 64 rows of Q
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float sc[KEYS / 8][4];   // S, then P, for this warp's 16 rows x 64 keys (m64n64 accumulators)
    u32 a[KEYS / 16][4];     // P of the tile before, as the A fragments of its P·V
    const u32 ring_base = ring.base;  // (a structured binding cannot be captured in C++17)
    const auto kv_tile = [=](u32 it) { return ring_base + (it % STAGES) * P::STAGE; };  // K; V follows

    // Tile 0: S, softmax (O is still 0: nothing to rescale), P as fragments.
    sm90::mbar_wait(ring.full(0), 0);
    turns.begin(0);
    issue_scores<T, D>(sc, sq_c, kv_tile(0));
    turns.end(0);
    sm90::wgmma_wait<0>();
    fence_regs(sc);
#pragma unroll
    for (int i = 0; i < 2; ++i) softmax_tile_row(sc, m[i], l[i], i, 0, rows.len, rows.pos(r0 + 8 * i), scale2);
    a_fragments<T>(a, sc);

    // Tile it: S_it = Q·K_itᵀ and O += P_{it−1}·V_{it−1} in flight together; the softmax of S_it
    // runs while P·V still does; then O is rescaled by the change of max and stage it − 1 freed.
    for (u32 it = 1; it < own; ++it) {
        sm90::mbar_wait(ring.full(it % STAGES), (it / STAGES) & 1);
        turns.begin(it);
        issue_scores<T, D>(sc, sq_c, kv_tile(it));
        issue_pv<T, D>(o, a, kv_tile(it - 1) + P::KV_TILE);
        turns.end(it);
        sm90::wgmma_wait<1>();  // groups retire in order: S_it is done, P·V may still run
        fence_regs(sc);
        float corr[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) corr[i] = softmax_tile_row(sc, m[i], l[i], i, it * KEYS, rows.len, rows.pos(r0 + 8 * i), scale2);
        sm90::wgmma_wait<0>();
        fence_regs(o);
        fence_regs(sc);  // the next fragments overwrite those P·V read: not before it is done
#pragma unroll
        for (int i = 0; i < 2; ++i) rescale_row(o, i, corr[i]);
        if (lane == 0) sm90::mbar_arrive(ring.empty((it - 1) % STAGES));  // this warp is done with stage it − 1
        a_fragments<T>(a, sc);
    }
    turns.begin(own);
    issue_pv<T, D>(o, a, kv_tile(own - 1) + P::KV_TILE);
    turns.end(own);
    sm90::wgmma_wait<0>();
    fence_regs(o);
    if (lane == 0) sm90::mbar_arrive(ring.empty((own - 1) % STAGES));

    // Tiles wholly above the warpgroup's rows: waited for (the ring's phases) and released.
    for (u32 it = own; it < tiles; ++it) {
        sm90::mbar_wait(ring.full(it % STAGES), (it / STAGES) & 1);
        if (lane == 0) sm90::mbar_arrive(ring.empty(it % STAGES));
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
    const auto [rows, tiles, empty, sq, ring, warp, lane] = open_query_block<ROWS, KEYS, P, Ring>(smem_raw, offsets, hq, hkv);
    if (empty) return;
    const u32 sdo = sq + P::Q_BYTES;
    float* delta_s = reinterpret_cast<float*>(smem_raw + (ring.bars + P::BARS - sm80::smem_addr(smem_raw)));  // [ROWS]

    if (warp >= 8) {  // the producer warpgroup: one thread works, the rest give up their registers
        sm90::setmaxnreg_dec<40>();
        if (threadIdx.x == 256) produce_kv<D>(ring, rows, tiles, map_k, map_v);
        return;
    }
    sm90::setmaxnreg_inc<232>();

    stage_rows<T, D>(sq, q, rows);
    stage_rows<T, D>(sdo, dout, rows);
    if (threadIdx.x < ROWS) delta_s[threadIdx.x] = row_delta<T, D>(out, dout, delta, rows, threadIdx.x);
    publish_rows();

    const auto [c, r0, last] = consumer_rows(rows, warp, lane);
    const int tid4 = lane % 4;
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
