// attention_sm80.cu: the tensor-core forward of fused causal attention (FlashAttention-2) for bf16
// and f16 with head dims 64, 96 and 128, on sm_80 and up (mma.sync; Hopper runs it too).
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
// Shared memory: Q, two K and two V tiles of 64 rows, rows of D/8 16-byte chunks, XOR-swizzled
// (gemm_sm80.cuh `swz`; D = 96 uses the 128-wide layout, 12 of 16 chunks used) so that ldmatrix
// is conflict-free: 40 KiB at D = 64, 80 KiB at D = 96 and 128. Registers per thread at D = 128: 32
// for Q fragments, 32 for S, 64 for O.
//
// FLOPs and bytes: 4·D per (query row, visible key), about half of T² per sequence and head
// (causal); Q and O once, K and V once per query tile, mostly from L2. Ragged tails: copies past
// the sequence are zero-filled (cp.async with 0 source bytes), masked scores are −inf, and only
// valid rows are stored. What it leaves out (FlashAttention-2 does the same, -3 goes further):
// warp-level skipping of tiles above the diagonal for the block's early rows, a deeper ring, and
// Hopper's wgmma/TMA. The backward stays on the CUDA-core kernels of attention.cu.

#include "gemm_sm80.cuh"

using namespace sm80;

#define BR 64
#define BC 64
#define FWD_THREADS 128

__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Two floats as one register of two 16-bit values, `lo` in the low half (the lower column).
template <typename T> __device__ __forceinline__ u32 pack2(float lo, float hi) {
    return (u32)from_float<T>(lo).bits | ((u32)from_float<T>(hi).bits << 16);
}

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

template <typename T, int D>
__device__ void attention_fwd_tc(const T* q, const T* k, const T* v, T* out, float* lse, const u32* offsets, u32 hq, u32 hkv, float scale) {
    constexpr int CHP = (D / 8 + 7) / 8 * 8;  // chunks per stored row (a multiple of 8 for swz)
    constexpr int TILE = 64 * CHP * 16;        // bytes of one staged tile
    constexpr int KD = D / 16, NB = D / 8;     // k16 steps over D; n8 blocks of O
    extern __shared__ __align__(128) char smem_tc[];
    const u32 sq = smem_addr(smem_tc), sk = sq + TILE, sv = sk + 2 * TILE;
    const u32 g_all = hq / hkv, ppb = BR / g_all, kvh = blockIdx.y;
    const u32 start = offsets[blockIdx.z], len = offsets[blockIdx.z + 1] - start, p0 = blockIdx.x * ppb;
    if (p0 >= len) return;  // uniform, before any barrier
    const u32 keys = min(len, p0 + ppb);  // keys any row of this block sees
    const u32 tiles = (keys + BC - 1) / BC;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gid = lane / 4, tid4 = lane % 4;

    auto q_row = [&](int r) -> const T* {
        const u32 pos = p0 + r / g_all;
        return (u32)r < ppb * g_all && pos < len ? q + ((u64)(start + pos) * hq + kvh * g_all + r % g_all) * D : nullptr;
    };
    auto stage_kv = [&](u32 tile, u32 stage) {
        const u32 j0 = tile * BC;
        auto row = [&](const T* base) {
            return [=](int r) -> const T* { return j0 + r < len ? base + ((u64)(start + j0 + r) * hkv + kvh) * D : nullptr; };
        };
        stage_rows<D, CHP>(sk + stage * TILE, row(k), k);
        stage_rows<D, CHP>(sv + stage * TILE, row(v), v);
    };
    stage_rows<D, CHP>(sq, q_row, q);
    stage_kv(0, 0);
    cp_async_commit();

    // This thread's two rows (gid, gid + 8 of the warp's 16) and their positions.
    u32 pos[2];
    bool valid[2];
    for (int i = 0; i < 2; ++i) {
        const u32 r = warp * 16 + gid + 8 * i;
        pos[i] = p0 + r / g_all;
        valid[i] = r < ppb * g_all && pos[i] < len;
    }
    const float scale2 = scale * 1.4426950408889634f;  // scores in the exp2 domain
    u32 qf[KD][4];
    float o[NB][4];
#pragma unroll
    for (int n = 0; n < NB; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    for (u32 it = 0; it < tiles; ++it) {
        if (it + 1 < tiles) stage_kv(it + 1, (it + 1) & 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        if (it == 0) {
#pragma unroll
            for (int kk = 0; kk < KD; ++kk) ldmatrix_x4(qf[kk], sq + swz<CHP>(warp * 16 + lane % 16, 2 * kk + lane / 16));
        }
        const u32 kt = sk + (it & 1) * TILE, vt = sv + (it & 1) * TILE, j0 = it * BC;

        // S = Q Kᵀ for this warp's 16 rows and the tile's 64 keys.
        float s[BC / 8][4];
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
            for (int n2 = 0; n2 < BC / 16; ++n2) {
                u32 b[4];
                ldmatrix_x4(b, kt + swz<CHP>(16 * n2 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)));
                mma_16816<T>(s[2 * n2], qf[kk], b[0], b[1]);
                mma_16816<T>(s[2 * n2 + 1], qf[kk], b[2], b[3]);
            }
        }

        // Mask, online softmax (per row: max over the quad, rescale), P in place of S.
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float mx = -INFINITY;
#pragma unroll
            for (int n = 0; n < BC / 8; ++n) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const u32 key = j0 + 8 * n + 2 * tid4 + e;
                    float& x = s[n][2 * i + e];
                    x = key < len && key <= pos[i] ? x * scale2 : -INFINITY;
                    mx = fmaxf(mx, x);
                }
            }
            mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 2));
            const float m_new = fmaxf(m[i], mx);
            const float base = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet
            const float corr = exp2_approx(m[i] - base);
            m[i] = m_new;
            float sum = 0.0f;
#pragma unroll
            for (int n = 0; n < BC / 8; ++n) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float& x = s[n][2 * i + e];
                    x = exp2_approx(x - base);
                    sum += x;
                }
            }
            l[i] = l[i] * corr + sum;
#pragma unroll
            for (int n = 0; n < NB; ++n) {
                o[n][2 * i] *= corr;
                o[n][2 * i + 1] *= corr;
            }
        }

        // O += P V: P's k16 step kk is S's n-blocks 2kk and 2kk + 1.
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            const u32 a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]), pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int d2 = 0; d2 < NB / 2; ++d2) {
                u32 b[4];
                ldmatrix_x4_trans(b, vt + swz<CHP>(16 * kk + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * d2 + (lane >> 4)));
                mma_16816<T>(o[2 * d2], a, b[0], b[1]);
                mma_16816<T>(o[2 * d2 + 1], a, b[2], b[3]);
            }
        }
        __syncthreads();  // this stage is refilled by the next iteration's copy
    }

#pragma unroll
    for (int i = 0; i < 2; ++i) {
        float lt = l[i];
        lt += __shfl_xor_sync(FULL_MASK, lt, 1);
        lt += __shfl_xor_sync(FULL_MASK, lt, 2);
        if (!valid[i]) continue;
        const u32 r = warp * 16 + gid + 8 * i;
        const u64 row = (u64)(start + pos[i]) * hq + kvh * g_all + r % g_all;
        const float inv = 1.0f / lt;
        u32* dst = reinterpret_cast<u32*>(out + row * D);
#pragma unroll
        for (int n = 0; n < NB; ++n) dst[4 * n + tid4] = pack2<T>(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
        if (tid4 == 0) lse[row] = m[i] * 0.6931471805599453f + __logf(lt);
    }
}

#define TC_ENTRY(NAME, T, D)                                                                                                        \
    extern "C" __global__ void __launch_bounds__(FWD_THREADS) attention_fwd_tc_##NAME##_d##D(                                      \
        const T* q, const T* k, const T* v, T* out, float* lse, const u32* offsets, u32 hq, u32 hkv, float scale) {                 \
        attention_fwd_tc<T, D>(q, k, v, out, lse, offsets, hq, hkv, scale);                                                        \
    }

TC_ENTRY(bf16, bf16, 64)
TC_ENTRY(bf16, bf16, 96)
TC_ENTRY(bf16, bf16, 128)
TC_ENTRY(f16, f16, 64)
TC_ENTRY(f16, f16, 96)
TC_ENTRY(f16, f16, 128)
