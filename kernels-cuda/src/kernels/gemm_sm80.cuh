// gemm_sm80.cuh: the tensor-core GEMM mainloop for sm_80 and up (A100, and the fallback elsewhere),
// as device-function templates that kernels in other .cu files instantiate with their own tile
// shape and epilogue.
//
// What it computes. For every group g of a device-side group table (or one implicit group),
//   C_g[i, j] = Σ_{k in [k_begin_g, k_end_g)} A[i, k] · B_g[k, j],   i in [row_begin_g, row_begin_g + rows_g)
// with A, B in bf16 or f16, products exact and sums in f32 (mma.sync.m16n8k16). C is never stored by
// the mainloop: each accumulator pair goes to an epilogue functor (see below and gemm_epilogue.cuh),
// which decides what to fuse and what dtype to write.
//
// Operand layouts (row-major storage, leading dimensions lda / ldb in elements):
//   TRANS_A = false: A stored [M, K] (row i at a + phys(i)·lda)        - forward, dX
//   TRANS_A = true : A stored [K, M] (row k at a + phys(k)·lda)        - dW = Xᵀ·dY
//   TRANS_B = false: B stored [K, N] (row k at b_g + k·ldb)            - NN, TN
//   TRANS_B = true : B stored [N, K] (row j at b_g + j·ldb)            - NT (x·Wᵀ, dY·W)
// So the forms are NN (false, false), NT (false, true) and TN (true, false).
//
// Row gather. When `a_rows` is not null, A's *stored* rows are read through it: stored row r is
// physical row a_rows[r]. For TRANS_A = false that gathers the logical M rows (sparse MoE: the
// expert-sorted list of tokens, no permuted copy of X); for TRANS_A = true it gathers along K (the
// sparse dW: gather(X)ᵀ · dY_sorted). The index is read once per tile row (M gather) or once per
// K-slice row (K gather).
//
// Group table. `GemmGroup` entries live in device memory, so a grouped GEMM needs no host sync:
//   - m-grouped (MoE forward / dX): row_begin_g / rows_g partition the logical rows, b_offset_g picks
//     expert g's weight matrix, k range = [0, K) for all.
//   - k-grouped (MoE dW): every group has the same rows (row_begin 0, rows M) and its own K range
//     (its tokens); the epilogue writes group g's output at its own offset (it is given g).
// Tiles are numbered group by group (tiles of group g = ceil(rows_g / BM) · ceil(N / BN)); a block
// walks tile ids blockIdx.x, blockIdx.x + gridDim.x, ... and finds the group of each by moving a
// cursor forward over the table (ids only grow, so the walk over the table is O(G) per block), so
// a group with 0 rows owns no tile and costs one table read. The host launches
// min(upper bound on tiles, resident blocks) blocks: the bound ceil(M_total/BM)·n_tiles + G·n_tiles
// is known without reading the table. Inside a group, tiles go in bands of GROUP_M tile rows
// (column-major within a band) so that blocks running together share A and B tiles in L2.
// An empty K range (a k-grouped expert with no tokens) still runs its tiles: they write zeros
// through the epilogue, which is the correct dW.
//
// Tiling. A block of WARPS_M x WARPS_N warps computes a BM x BN tile; each warp a (BM/WARPS_M) x
// (BN/WARPS_N) sub-tile as (WM/16) x (WN/8) m16n8k16 fragments. K advances in slices of BK through
// a STAGES-deep ring of shared-memory buffers filled by cp.async (16 bytes per thread per copy, the
// copy of slice s+STAGES-1 in flight while slice s is multiplied), read by ldmatrix (.trans where
// the stored layout is the transpose of the fragment's). Shared-memory rows are XOR-swizzled in
// 16-byte chunks so that the 8 row addresses of every ldmatrix 8x8 load hit 8 different bank
// quads (no conflicts) without padding. Default tile (gemm_sm80.cu): 128 x 128 x 32, 2 x 2 warps
// of 64 x 64, 4 stages: 64 KiB of shared memory, 128 fp32 accumulators per thread.
//
// Ragged sizes. Every 16-byte copy is predicated: a chunk that is past the end of M, N or the K
// range is zero-filled (cp.async with a source size of 0..16 bytes), so partial tiles multiply
// zeros; the epilogue is called only for rows < rows_g and columns < N.
//
// Alignment requirements (checked host-side in engine/src/cuda/ops/gemm.rs, with an error naming
// the operand): a, b and every group's B base 16-byte aligned; lda, ldb multiples of 8 elements;
// N a multiple of 8 (the epilogue gets column pairs and may store vectors); where K is the
// contiguous axis of an operand (A not transposed, or B transposed) every k_begin is a multiple of
// 8; with A transposed (M contiguous) every row_begin is a multiple of 8. M and K are otherwise
// free (1, 17, 1000 are fine).
//
// Epilogue interface. `ep(group, row, col, v0, v1)`: v0 = C[row, col], v1 = C[row, col + 1], row the
// logical row within the whole problem (row_begin_g + local row), col even. For tile-level work
// (per-row partial sums, smem-staged stores) an epilogue with `kTileHooks = true` also gets
// `tile_begin(t)` / `tile_end(t)` around a tile's fragment calls, executed by every thread with a
// block barrier on each side, and may use the pipeline's shared memory (`t.scratch`,
// `t.scratch_bytes`) as scratch between them. Derive from `EpilogueNoHooks` otherwise.
//
// Roofline per group: 2·rows·N·K FLOPs; bytes ≥ (rows·K + K·N)·2 + rows·N·sizeof(out). A is
// re-read once per tile column (N/BN times) and B once per tile row, mostly from L2 thanks to the
// banded tile order. mma.sync peaks at about 312 TFLOP/s (A100) / ~660 (H100, where it is half
// the wgmma rate: Hopper uses gemm_sm90 instead). What limits it: the ldmatrix/mma issue rate
// (no fragment double-buffering across k16 steps beyond what the unrolled loop lets the compiler
// schedule), and the epilogue's direct (uncoalesced 8-byte) stores for narrow outputs.

#pragma once

#include "common.cuh"

namespace sm80 {

// Mirrors `GemmGroup` in engine/src/cuda/ops/gemm.rs (repr(C), 24 bytes): keep the two in step.
struct GemmGroup {
    u64 b_offset;   // elements from the B base to this group's B matrix
    u32 row_begin;  // first logical row of A and C
    u32 rows;       // logical rows of this group; 0 = no tiles
    u32 k_begin;    // reduction range [k_begin, k_end)
    u32 k_end;
};

// One GEMM problem (or a table of them). Host-built, passed by value.
template <typename T> struct GemmProblem {
    const T* a;
    const T* b;
    const u32* a_rows;        // optional gather of A's stored rows (see the header); null = identity
    const GemmGroup* groups;  // optional group table in device memory; null = one group {0, 0, m, 0, k}
    u32 num_groups;
    u32 m, n, k;              // logical rows (without groups) / columns / reduction length
    u32 lda, ldb;
};

// What an epilogue's tile hooks learn about the tile.
struct TileInfo {
    u32 group;
    u32 row0;   // logical row of the tile's first row
    u32 rows;   // valid rows in this tile (<= BM)
    u32 col0;
    u32 cols;   // valid columns in this tile (<= BN)
    char* scratch;
    u32 scratch_bytes;
};

struct EpilogueNoHooks {
    static constexpr bool kTileHooks = false;
    __device__ __forceinline__ void tile_begin(const TileInfo&) {}
    __device__ __forceinline__ void tile_end(const TileInfo&) {}
};

template <int BM_, int BN_, int BK_, int WARPS_M_, int WARPS_N_, int STAGES_, int GROUP_M_ = 8> struct Tile {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, STAGES = STAGES_;
    static constexpr int GROUP_M = GROUP_M_;
    static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
    static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
    static constexpr int MI = WM / 16, NI = WN / 8;
    static constexpr int A_ELEMS = BM * BK, B_ELEMS = BK * BN;
    static constexpr int SMEM_BYTES = STAGES * (A_ELEMS + B_ELEMS) * 2;
    static_assert(WM % 16 == 0 && WN % 16 == 0, "a warp tile is whole m16 x n16 pairs");
    // Shared-memory rows are 4 or a multiple of 8 chunks of 8 elements (see swz).
    static_assert(BK == 32 || BK % 64 == 0, "BK is 32 or a multiple of 64");
    static_assert((BM == 32 || BM % 64 == 0) && (BN == 32 || BN % 64 == 0), "BM, BN are 32 or multiples of 64");
    static_assert((A_ELEMS / 8) % THREADS == 0 && (B_ELEMS / 8) % THREADS == 0, "every thread copies whole chunks");
};

// ---- PTX wrappers ---------------------------------------------------------------------------------

__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// 16-byte async copy; bytes beyond src_bytes (0..16) are zero-filled and not read.
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, u32 src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

template <typename T> __device__ __forceinline__ void mma_16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1);
template <> __device__ __forceinline__ void mma_16816<bf16>(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma_16816<f16>(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- swizzled shared-memory tiles ---------------------------------------------------------------

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile whose rows hold CH chunks. ldmatrix
// reads the same chunk of 8 consecutive rows; the XOR makes those 8 addresses fall in 8 different
// 16-byte bank quads: with CH >= 8 by (row & 7); with CH = 4 (two rows per 128-byte line) by the
// row's parity (which half-line) plus ((row >> 1) & 3).
template <int CH> __device__ __forceinline__ u32 swz(int row, int chunk) {
    static_assert(CH == 4 || CH % 8 == 0, "rows of 4 or a multiple of 8 chunks");
    const int c = CH >= 8 ? (chunk ^ (row & 7)) : (chunk ^ ((row >> 1) & 3));
    return (u32)(row * CH + c) * 16u;
}

// ---- tile scheduling ------------------------------------------------------------------------------

struct TileCoord {
    u32 group, k_begin, k_end;
    u32 row_begin, rows;  // the group's logical rows
    u32 m_local, n0;      // tile origin: local row within the group, column
    u64 b_offset;
};

// Walks a block's tiles in increasing id; `cursor_group` / `tiles_before` persist across calls.
template <class Cfg, typename T> struct TileWalker {
    const GemmProblem<T>& p;
    u32 n_tiles;
    u32 group = 0;
    u64 tiles_before = 0;

    __device__ explicit TileWalker(const GemmProblem<T>& prob) : p(prob), n_tiles((prob.n + Cfg::BN - 1) / Cfg::BN) {}

    __device__ __forceinline__ GemmGroup group_at(u32 g) const {
        if (p.groups == nullptr) return GemmGroup{0, 0, p.m, 0, p.k};
        return p.groups[g];
    }
    __device__ __forceinline__ u32 num_groups() const { return p.groups == nullptr ? 1u : p.num_groups; }

    // The tile with id `t`, or false when t is past the last tile.
    __device__ bool find(u64 t, TileCoord& tc) {
        const u32 ng = num_groups();
        while (group < ng) {
            const GemmGroup g = group_at(group);
            const u32 m_tiles = (g.rows + Cfg::BM - 1) / Cfg::BM;
            const u64 tiles = (u64)m_tiles * n_tiles;
            if (t < tiles_before + tiles) {
                // Banded order: GROUP_M tile rows at a time, down the band's columns.
                const u32 local = (u32)(t - tiles_before);
                const u32 band = local / (Cfg::GROUP_M * n_tiles);
                const u32 band_m0 = band * Cfg::GROUP_M;
                const u32 band_h = min((u32)Cfg::GROUP_M, m_tiles - band_m0);
                const u32 in_band = local - band * (Cfg::GROUP_M * n_tiles);
                tc.group = group;
                tc.k_begin = g.k_begin;
                tc.k_end = g.k_end;
                tc.row_begin = g.row_begin;
                tc.rows = g.rows;
                tc.m_local = (band_m0 + in_band % band_h) * Cfg::BM;
                tc.n0 = (in_band / band_h) * Cfg::BN;
                tc.b_offset = g.b_offset;
                return true;
            }
            tiles_before += tiles;
            ++group;
        }
        return false;
    }
};

// ---- the mainloop --------------------------------------------------------------------------------

// Accumulators of one thread: [MI][NI][4] for fragments (mi, ni); element e at
// row = warp_m0 + mi·16 + lane/4 + (e >= 2 ? 8 : 0), col = warp_n0 + ni·8 + 2·(lane%4) + (e & 1).
template <class Cfg> struct Accum {
    float v[Cfg::MI][Cfg::NI][4];
};

// Copies into shared address `dst` the 16-byte chunk that starts `pos` elements into a stored row
// whose contiguous axis ends at `end`: min(8, end - pos) elements, the rest zero-filled. A row
// outside the operand (`row_in` false) or pos >= end reads nothing (`row` is then not dereferenced)
// and zero-fills the chunk; `any` is a valid address for that empty copy.
template <typename T>
__device__ __forceinline__ void copy_chunk(u32 dst, bool row_in, const T* row, u32 pos, u32 end, const T* any) {
    const bool ok = row_in && pos < end;
    cp_async16(dst, ok ? row + pos : any, ok ? min(8u, end - pos) * 2u : 0u);
}

// Copies K-slice `k0` of the tile into stage buffers sa / sb (shared addresses).
template <class Cfg, bool TRANS_A, bool TRANS_B, typename T>
__device__ __forceinline__ void load_slice(const GemmProblem<T>& p, const TileCoord& tc, const u64 (&a_row_off)[Cfg::A_ELEMS / 8 / Cfg::THREADS],
                                           u32 k0, u32 sa, u32 sb) {
    constexpr int A_CHUNKS = Cfg::A_ELEMS / 8 / Cfg::THREADS, B_CHUNKS = Cfg::B_ELEMS / 8 / Cfg::THREADS;
    const int tid = threadIdx.x;
    const T* b = p.b + tc.b_offset;
#pragma unroll
    for (int i = 0; i < A_CHUNKS; ++i) {
        const int c = tid + i * Cfg::THREADS;
        if (!TRANS_A) {
            // smem [BM][BK]: row = tile row, chunk along k. a_row_off holds phys(row)·lda (or ~0 if the row is past rows).
            constexpr int CH = Cfg::BK / 8;
            const int row = c / CH, ch = c % CH;
            copy_chunk(sa + swz<CH>(row, ch), a_row_off[i] != ~0ull, p.a + a_row_off[i], k0 + ch * 8, tc.k_end, p.a);
        } else {
            // smem [BK][BM]: row = k, chunk along m.
            constexpr int CH = Cfg::BM / 8;
            const int kr = c / CH, ch = c % CH;
            const u32 gk = k0 + kr;
            const bool k_in = gk < tc.k_end;  // the gathered row index is read only for rows inside the K range
            const T* row = k_in ? p.a + (p.a_rows != nullptr ? (u64)p.a_rows[gk] : (u64)gk) * p.lda + tc.row_begin : p.a;
            copy_chunk(sa + swz<CH>(kr, ch), k_in, row, tc.m_local + ch * 8, tc.rows, p.a);
        }
    }
#pragma unroll
    for (int i = 0; i < B_CHUNKS; ++i) {
        const int c = tid + i * Cfg::THREADS;
        if (!TRANS_B) {
            // smem [BK][BN]: row = k, chunk along n.
            constexpr int CH = Cfg::BN / 8;
            const int kr = c / CH, ch = c % CH;
            const u32 gk = k0 + kr;
            copy_chunk(sb + swz<CH>(kr, ch), gk < tc.k_end, b + (u64)gk * p.ldb, tc.n0 + ch * 8, p.n, p.b);
        } else {
            // smem [BN][BK]: row = n, chunk along k.
            constexpr int CH = Cfg::BK / 8;
            const int nr = c / CH, ch = c % CH;
            const u32 gn = tc.n0 + nr;
            copy_chunk(sb + swz<CH>(nr, ch), gn < p.n, b + (u64)gn * p.ldb, k0 + ch * 8, tc.k_end, p.b);
        }
    }
}

// Multiplies one K-slice held in stage buffers sa / sb into the accumulators.
template <class Cfg, bool TRANS_A, bool TRANS_B, typename T>
__device__ __forceinline__ void mma_slice(Accum<Cfg>& acc, u32 sa, u32 sb, int warp_m0, int warp_n0) {
    const int lane = threadIdx.x & 31;
    const int mat = lane >> 3, r8 = lane & 7;
#pragma unroll
    for (int kk = 0; kk < Cfg::BK; kk += 16) {
        u32 af[Cfg::MI][4];
        u32 bfr[Cfg::NI][2];
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi) {
            const int m0 = warp_m0 + mi * 16;
            if (!TRANS_A) {
                // matrices: (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15)
                const int row = m0 + r8 + (mat & 1) * 8, ch = (kk >> 3) + (mat >> 1);
                ldmatrix_x4(af[mi], sa + swz<Cfg::BK / 8>(row, ch));
            } else {
                // stored [k][m]; same four matrices, transposed on load
                const int kr = kk + r8 + (mat >> 1) * 8, ch = (m0 >> 3) + (mat & 1);
                ldmatrix_x4_trans(af[mi], sa + swz<Cfg::BM / 8>(kr, ch));
            }
        }
#pragma unroll
        for (int nj = 0; nj < Cfg::NI; nj += 2) {
            const int n0 = warp_n0 + nj * 8;
            u32 r[4];
            if (TRANS_B) {
                // stored [n][k]: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
                const int nr = n0 + r8 + (mat >> 1) * 8, ch = (kk >> 3) + (mat & 1);
                ldmatrix_x4(r, sb + swz<Cfg::BK / 8>(nr, ch));
            } else {
                // stored [k][n]: matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15)
                const int kr = kk + r8 + (mat & 1) * 8, ch = (n0 >> 3) + (mat >> 1);
                ldmatrix_x4_trans(r, sb + swz<Cfg::BN / 8>(kr, ch));
            }
            bfr[nj][0] = r[0];
            bfr[nj][1] = r[1];
            bfr[nj + 1][0] = r[2];
            bfr[nj + 1][1] = r[3];
        }
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < Cfg::NI; ++ni) mma_16816<T>(acc.v[mi][ni], af[mi], bfr[ni][0], bfr[ni][1]);
    }
}

// Computes one tile's accumulators. Leaves every cp.async drained and the block synchronised, so
// the caller may reuse shared memory (as epilogue scratch, or for the next tile) right away.
template <class Cfg, bool TRANS_A, bool TRANS_B, typename T>
__device__ __forceinline__ void mainloop_tile(const GemmProblem<T>& p, const TileCoord& tc, char* smem, Accum<Cfg>& acc) {
    constexpr int A_CHUNKS = Cfg::A_ELEMS / 8 / Cfg::THREADS;
    const int warp = threadIdx.x >> 5;
    const int warp_m0 = (warp / Cfg::WARPS_N) * Cfg::WM, warp_n0 = (warp % Cfg::WARPS_N) * Cfg::WN;
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc.v[mi][ni][e] = 0.0f;

    // Row offsets of this thread's A chunks, gathered once per tile (M-contiguous A needs none).
    u64 a_row_off[A_CHUNKS];
#pragma unroll
    for (int i = 0; i < A_CHUNKS; ++i) {
        a_row_off[i] = ~0ull;
        if (!TRANS_A) {
            const u32 row = (threadIdx.x + i * Cfg::THREADS) / (Cfg::BK / 8);
            const u32 lm = tc.m_local + row;
            if (lm < tc.rows) {
                const u32 logical = tc.row_begin + lm;
                a_row_off[i] = (u64)(p.a_rows != nullptr ? p.a_rows[logical] : logical) * p.lda;
            }
        }
    }

    const u32 base = smem_addr(smem);
    constexpr u32 STAGE_A = Cfg::A_ELEMS * 2, STAGE_B = Cfg::B_ELEMS * 2;
    const u32 b_base = base + Cfg::STAGES * STAGE_A;
    const u32 k_len = tc.k_end > tc.k_begin ? tc.k_end - tc.k_begin : 0u;
    const int k_tiles = (int)((k_len + Cfg::BK - 1) / Cfg::BK);

#pragma unroll
    for (int s = 0; s < Cfg::STAGES - 1; ++s) {
        if (s < k_tiles) load_slice<Cfg, TRANS_A, TRANS_B>(p, tc, a_row_off, tc.k_begin + s * Cfg::BK, base + s * STAGE_A, b_base + s * STAGE_B);
        cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
        cp_async_wait<Cfg::STAGES - 2>();
        __syncthreads();  // slice kt is visible to all; every warp is done with slice kt-1's buffer
        const int next = kt + Cfg::STAGES - 1;
        if (next < k_tiles) {
            const int s = next % Cfg::STAGES;
            load_slice<Cfg, TRANS_A, TRANS_B>(p, tc, a_row_off, tc.k_begin + next * Cfg::BK, base + s * STAGE_A, b_base + s * STAGE_B);
        }
        cp_async_commit();
        const int s = kt % Cfg::STAGES;
        mma_slice<Cfg, TRANS_A, TRANS_B, T>(acc, base + s * STAGE_A, b_base + s * STAGE_B, warp_m0, warp_n0);
    }
    cp_async_wait<0>();
    __syncthreads();
}

// Hands a tile's accumulators to the epilogue (rows < rows_g, columns < N only).
template <class Cfg, typename T, class Epilogue>
__device__ __forceinline__ void run_epilogue(const GemmProblem<T>& p, const TileCoord& tc, const Accum<Cfg>& acc, Epilogue& ep, char* smem) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int warp_m0 = (warp / Cfg::WARPS_N) * Cfg::WM, warp_n0 = (warp % Cfg::WARPS_N) * Cfg::WN;
    const TileInfo info{tc.group, tc.row_begin + tc.m_local, min((u32)Cfg::BM, tc.rows - tc.m_local), tc.n0,
                        min((u32)Cfg::BN, p.n - tc.n0), smem, (u32)Cfg::SMEM_BYTES};
    if (Epilogue::kTileHooks) {
        ep.tile_begin(info);
        __syncthreads();
    }
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const u32 lm = tc.m_local + warp_m0 + mi * 16 + (lane >> 2) + half * 8;
            if (lm >= tc.rows) continue;
#pragma unroll
            for (int ni = 0; ni < Cfg::NI; ++ni) {
                const u32 col = tc.n0 + warp_n0 + ni * 8 + 2 * (lane & 3);
                if (col < p.n) ep(tc.group, tc.row_begin + lm, col, acc.v[mi][ni][2 * half], acc.v[mi][ni][2 * half + 1]);
            }
        }
    }
    if (Epilogue::kTileHooks) {
        __syncthreads();
        ep.tile_end(info);
        __syncthreads();  // scratch is pipeline memory: free it before the next tile's copies
    }
}

// The whole GEMM: a block walks its tiles (see the header) and runs mainloop + epilogue on each.
// `smem` is the block's dynamic shared memory, at least Cfg::SMEM_BYTES, 128-byte aligned.
// Launch with Cfg::THREADS threads.
template <class Cfg, bool TRANS_A, bool TRANS_B, typename T, class Epilogue>
__device__ __forceinline__ void gemm(const GemmProblem<T>& p, Epilogue& ep, char* smem) {
    TileWalker<Cfg, T> walker(p);
    TileCoord tc;
    for (u64 t = blockIdx.x; walker.find(t, tc); t += gridDim.x) {
        Accum<Cfg> acc;
        mainloop_tile<Cfg, TRANS_A, TRANS_B, T>(p, tc, smem, acc);
        run_epilogue<Cfg, T>(p, tc, acc, ep, smem);
    }
}

}  // namespace sm80
