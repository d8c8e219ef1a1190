// gemm_sm90.cuh: the Hopper (sm_90a) GEMM: TMA loads into a shared-memory ring guarded by
// mbarriers, wgmma on two consumer warpgroups, a producer warp, a persistent tile walk. Same
// problem description (sm80::GemmProblem, sm80::GemmGroup) and the same epilogue functors as
// gemm_sm80.cuh, so callers switch paths by compute capability only.
//
// Block: 3 warpgroups (384 threads). Warpgroup 0 is the producer: after `setmaxnreg.dec` to 40
// registers, one thread walks the block's tiles and, per K-slice, waits for a free stage (its
// `empty` mbarrier), announces the bytes on the stage's `full` mbarrier and issues the TMA copies.
// Warpgroups 1 and 2 are consumers (`setmaxnreg.inc` to 232): each owns 64 rows of the 128-row
// tile and all BN = 256 columns, i.e. one wgmma.m64n256k16 per 16 of K (128 f32 accumulators per
// thread); it waits on `full`, issues BK/16 wgmmas, keeps one slice's wgmmas in flight
// (wait_group 1) and then releases the previous stage on `empty`. The producer runs ahead by up to
// STAGES slices, across tile boundaries, so the next tile's loads overlap this tile's epilogue.
//
// Tile walk: grid = number of SMs; each block walks tile ids blockIdx.x, + gridDim.x, ... with the
// same banded order and device-side group table as gemm_sm80.cuh (sm80::TileWalker). Producer and
// consumers walk the same sequence independently: the ring is their only link.
//
// Layouts and tensor maps (built host-side with cuTensorMapEncodeTiled, passed as
// __grid_constant__ parameters; 128-byte swizzle, out-of-bounds elements read as zero):
//   A, TRANS_A = false (NN, NT; stored [M, K]): 2-D map {K, M}, box {64, 128}: the stage holds
//     128 rows of 64 k (128 bytes each), K-major; consumer c's operand starts at row 64c.
//   A, TRANS_A = true (TN; stored [K, M]): 2-D map {M, K}, box {64, 64}, two boxes per stage
//     (m0, m0 + 64), each [64 k][64 m], MN-major (wgmma's transpose bit set).
//   B, TRANS_B = true (NT; stored [N, K]): 3-D map {K, N, batches}, box {64, 256, 1}: K-major.
//   B, TRANS_B = false (NN, TN; stored [K, N]): 3-D map {N, K, batches}, box {64, 64, 1}, four boxes
//     per stage (n0 + 64j), each [64 k][64 n], MN-major.
//   The third coordinate of B is b_offset / b_batch_stride: on this path every group's B is one
//   matrix of a stack of equally sized ones (what grouped expert weights are).
// wgmma descriptors: K-major swizzled tiles have 8-row groups 1024 bytes apart (SBO) and advance
// 32 bytes per k16 inside the 128-byte swizzled row; MN-major tiles have 8-k groups 1024 bytes apart
// (SBO), 64-wide MN blocks 8 KiB apart (LBO), and advance 2 KiB (16 k rows) per k16.
//
// Ragged sizes: TMA zero-fills everything outside the tensor, so partial M, N and K tiles multiply
// zeros; the epilogue sees only rows < rows_g and columns < N. A k range that ends inside the
// tensor (k-grouped dW, TN form) would pull the next group's rows into the last slice: there the
// consumers zero those k rows of both operands in shared memory (then fence.proxy.async, since
// wgmma reads through the async proxy) before multiplying. K ranges other than [0, K) are for the
// TN form only on this path; A-row gather (a_rows) is not supported here (TMA cannot gather rows):
// the sparse kernels use gemm_sm80.cuh's cp.async loads for that.
//
// Alignment: as gemm_sm80.cuh (16-byte bases, leading dims multiples of 8 elements: TMA's rule
// too), N % 8 == 0.
//
// Shared memory: STAGES x (128·64 + 64·256)·2 bytes = 4 x 48 KiB = 192 KiB, plus the barriers.
// Roofline: as gemm_sm80.cuh; wgmma's dense bf16 peak is ~989 TFLOP/s on H100 SXM. What limits it
// here: the epilogue runs on both consumers at once (no ping-pong), stores straight from registers
// (4-byte pairs, no TMA store), and the single-CTA tile (no cluster multicast of A/B).

#pragma once

#include "common.cuh"
#include "gemm_sm80.cuh"

namespace sm90 {

// An opaque CUtensorMap (128 bytes, 64-byte aligned), filled by cuTensorMapEncodeTiled on the host.
struct __align__(64) TensorMap {
    u64 opaque[16];
};

// Extra facts the Hopper path needs beyond sm80::GemmProblem. Mirrors `Sm90Extra` in
// engine/src/cuda/ops/gemm.rs (repr(C)).
struct Sm90Extra {
    u64 b_batch_stride;  // elements between stacked B matrices (group g uses b_offset / this)
};

struct Tile {
    static constexpr int BM = 128, BN = 256, BK = 64, STAGES = 4, GROUP_M = 8;
    static constexpr int THREADS = 384;
    static constexpr int A_BYTES = BM * BK * 2, B_BYTES = BK * BN * 2;
    static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
    // Ring, then one full and one empty barrier per stage; +1024 to align the ring to the
    // 128-byte swizzle's 1024-byte atom.
    static constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + STAGES * 16 + 1024;
    // sm80::TileWalker needs these names.
    static constexpr int WARPS_M = 2, WARPS_N = 1;
};

// ---- PTX wrappers ---------------------------------------------------------------------------------

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "WAIT_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT_%=;\n"
        "}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}

__device__ __forceinline__ void tma_load_2d(u32 dst, const TensorMap* map, u32 bar, int c0, int c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(dst),
        "l"(map), "r"(bar), "r"(c0), "r"(c1)
        : "memory");
}
__device__ __forceinline__ void tma_load_3d(u32 dst, const TensorMap* map, u32 bar, int c0, int c1, int c2) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(dst),
        "l"(map), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
        : "memory");
}

__device__ __forceinline__ void tma_load_4d(u32 dst, const TensorMap* map, u32 bar, int c0, int c1, int c2, int c3) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(dst),
        "l"(map), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
        : "memory");
}

// wgmma shared-memory descriptor, 128-byte swizzle.
__device__ __forceinline__ u64 make_desc(u32 smem_addr, u32 lbo_bytes, u32 sbo_bytes) {
    u64 d = 0;
    d |= (u64)((smem_addr & 0x3FFFF) >> 4);
    d |= (u64)((lbo_bytes & 0x3FFFF) >> 4) << 16;
    d |= (u64)((sbo_bytes & 0x3FFFF) >> 4) << 32;
    d |= (u64)1 << 62;  // SWIZZLE_128B
    return d;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

template <int REGS> __device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS)); }
template <int REGS> __device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS)); }

// D[64 x 256] += A[64 x 16] · B[16 x 256]; TA / TB: operand stored MN-major (transposed).
#define WGMMA_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define WGMMA_D32(i) WGMMA_D8(i), WGMMA_D8(i + 8), WGMMA_D8(i + 16), WGMMA_D8(i + 24)

#define WGMMA_DEF(T, PTXT)                                                                                            \
    template <int TA, int TB> struct Wgmma_##T {                                                                      \
        static __device__ __forceinline__ void run(float (&d)[128], u64 da, u64 db) {                                 \
            asm volatile(                                                                                             \
                "{\n"                                                                                                 \
                ".reg .pred p;\n"                                                                                     \
                "setp.ne.b32 p, %130, 0;\n"                                                                           \
                "wgmma.mma_async.sync.aligned.m64n256k16.f32." PTXT "." PTXT " "                                      \
                "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                              \
                "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                     \
                "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                     \
                "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "                     \
                "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "                     \
                "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "                     \
                "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "         \
                "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "    \
                "%128, %129, p, 1, 1, %131, %132;\n"                                                                  \
                "}\n"                                                                                                 \
                : WGMMA_D32(0), WGMMA_D32(32), WGMMA_D32(64), WGMMA_D32(96)                                           \
                : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));                                                                \
        }                                                                                                             \
    };
WGMMA_DEF(bf16, "bf16")
WGMMA_DEF(f16, "f16")
#undef WGMMA_DEF

template <int TA, int TB> __device__ __forceinline__ void wgmma_tile(bf16*, float (&d)[128], u64 da, u64 db) { Wgmma_bf16<TA, TB>::run(d, da, db); }
template <int TA, int TB> __device__ __forceinline__ void wgmma_tile(f16*, float (&d)[128], u64 da, u64 db) { Wgmma_f16<TA, TB>::run(d, da, db); }

// ---- the kernel body ------------------------------------------------------------------------------

// The whole GEMM. `smem_raw` is the dynamic shared memory (>= Tile::SMEM_BYTES). Launch with
// Tile::THREADS threads, __launch_bounds__(Tile::THREADS, 1), a grid of (at most) the SM count.
template <bool TRANS_A, bool TRANS_B, typename T, class Epilogue>
__device__ __forceinline__ void gemm(const sm80::GemmProblem<T>& p, const Sm90Extra& x, const TensorMap* map_a, const TensorMap* map_b,
                                     Epilogue& ep, char* smem_raw) {
    static_assert(!(TRANS_A && TRANS_B), "the TT form is not provided");
    static_assert(!Epilogue::kTileHooks, "tile hooks need block-wide scratch, which the ring never frees here: use gemm_sm80.cuh");
    // The swizzle atom is 1024 bytes: align the ring to it.
    const u32 raw = sm80::smem_addr(smem_raw);
    const u32 ring = (raw + 1023u) & ~1023u;
    const u32 bars = ring + Tile::STAGES * Tile::STAGE_BYTES;
    auto full = [&](int s) { return bars + 8u * s; };
    auto empty = [&](int s) { return bars + 8u * (Tile::STAGES + s); };
    auto stage_a = [&](int s) { return ring + (u32)s * Tile::STAGE_BYTES; };
    auto stage_b = [&](int s) { return ring + (u32)s * Tile::STAGE_BYTES + Tile::A_BYTES; };

    const int wg = threadIdx.x / 128;
    if (threadIdx.x == 0) {
        for (int s = 0; s < Tile::STAGES; ++s) {
            mbar_init(full(s), 1);
            mbar_init(empty(s), 8);  // lane 0 of each consumer warp
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    sm80::TileWalker<Tile, T> walker(p);
    sm80::TileCoord tc;
    if (wg == 0) {
        setmaxnreg_dec<40>();
        if (threadIdx.x != 0) return;
        u32 it = 0;
        for (u64 t = blockIdx.x; walker.find(t, tc); t += gridDim.x) {
            const u32 k_len = tc.k_end > tc.k_begin ? tc.k_end - tc.k_begin : 0u;
            const int k_tiles = (int)((k_len + Tile::BK - 1) / Tile::BK);
            const int bz = (int)(tc.b_offset / x.b_batch_stride);
            const int row0 = (int)(tc.row_begin + tc.m_local);
            for (int kt = 0; kt < k_tiles; ++kt, ++it) {
                const int s = it % Tile::STAGES;
                const u32 round = it / Tile::STAGES;
                if (round > 0) mbar_wait(empty(s), (round - 1) & 1);
                mbar_expect_tx(full(s), Tile::STAGE_BYTES);
                const int k0 = (int)(tc.k_begin + kt * Tile::BK);
                if (!TRANS_A) {
                    tma_load_2d(stage_a(s), map_a, full(s), k0, row0);
                } else {
                    tma_load_2d(stage_a(s), map_a, full(s), row0, k0);
                    tma_load_2d(stage_a(s) + Tile::A_BYTES / 2, map_a, full(s), row0 + 64, k0);
                }
                if (TRANS_B) {
                    tma_load_3d(stage_b(s), map_b, full(s), k0, (int)tc.n0, bz);
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j) tma_load_3d(stage_b(s) + j * (Tile::B_BYTES / 4), map_b, full(s), (int)tc.n0 + 64 * j, k0, bz);
                }
            }
        }
        return;
    }

    setmaxnreg_inc<232>();
    const int c = wg - 1;  // consumer index: rows 64c .. 64c + 63 of the tile
    const int tid = threadIdx.x - 128;
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x & 31;
    u32 it = 0;
    float d[128];
    for (u64 t = blockIdx.x; walker.find(t, tc); t += gridDim.x) {
        const u32 k_len = tc.k_end > tc.k_begin ? tc.k_end - tc.k_begin : 0u;
        const int k_tiles = (int)((k_len + Tile::BK - 1) / Tile::BK);
#pragma unroll
        for (int i = 0; i < 128; ++i) d[i] = 0.0f;
        for (int kt = 0; kt < k_tiles; ++kt, ++it) {
            const int s = it % Tile::STAGES;
            mbar_wait(full(s), (it / Tile::STAGES) & 1);
            const u32 k_valid = min((u32)Tile::BK, k_len - kt * Tile::BK);
            if (TRANS_A && k_valid < (u32)Tile::BK) {
                // Zero k rows [k_valid, 64) of every [64 k][64] box of the stage (A: 2, B: 4), so the
                // next group's rows do not enter this group's sums. A 128-byte row stays one row
                // under the swizzle, so whole rows can be cleared without knowing it.
                const u32 rows = Tile::BK - k_valid;
                for (u32 i = tid; i < 6 * rows * 8; i += 256) {
                    const u32 box = i / (rows * 8), rest = i % (rows * 8);
                    const u32 row = k_valid + rest / 8, chunk = rest % 8;
                    const u32 off = box * (Tile::BK * 128) + row * 128 + chunk * 16;
                    asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(stage_a(s) + off), "r"(0u) : "memory");
                }
                asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
                asm volatile("bar.sync 1, 256;\n" ::: "memory");
            }
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < Tile::BK / 16; ++kk) {
                u64 da, db;
                if (!TRANS_A) da = make_desc(stage_a(s) + c * (64 * 128) + kk * 32, 16, 1024);
                else da = make_desc(stage_a(s) + c * (Tile::A_BYTES / 2) + kk * 2048, 8192, 1024);
                if (TRANS_B) db = make_desc(stage_b(s) + kk * 32, 16, 1024);
                else db = make_desc(stage_b(s) + kk * 2048, 8192, 1024);
                wgmma_tile<TRANS_A ? 1 : 0, TRANS_B ? 0 : 1>((T*)nullptr, d, da, db);
            }
            wgmma_commit();
            // Keep this slice's wgmmas in flight; the previous slice's are done: release its stage.
            wgmma_wait<1>();
            if (kt > 0 && lane == 0) mbar_arrive(empty((it - 1) % Tile::STAGES));
        }
        wgmma_wait<0>();
        if (k_tiles > 0 && lane == 0) mbar_arrive(empty((it - 1) % Tile::STAGES));

        // Epilogue straight from the accumulators: n8 block j holds (row g, col 8j + 2q) in
        // d[4j..4j+1] and row g + 8 in d[4j+2..4j+3], g = lane / 4, q = lane % 4.
        const u32 rows_left = tc.rows - tc.m_local;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const u32 lm = c * 64 + warp * 16 + (lane >> 2) + half * 8;
            if (lm >= rows_left) continue;
            const u32 row = tc.row_begin + tc.m_local + lm;
#pragma unroll
            for (int j = 0; j < 32; ++j) {
                const u32 col = tc.n0 + 8 * j + 2 * (lane & 3);
                if (col < p.n) ep(tc.group, row, col, d[4 * j + 2 * half], d[4 * j + 2 * half + 1]);
            }
        }
    }
}

}  // namespace sm90
