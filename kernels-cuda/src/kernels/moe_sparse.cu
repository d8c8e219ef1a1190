// moe_sparse.cu: the sparse MoE MLP over an expert-sorted list (built by moe_route.cu): grouped
// gather-GEMM-scatter forward, its training backward, and the deterministic combine.
//
// Shapes: x [T, d]; w1, w2 [E·f, d] (expert e owns rows e·f .. (e+1)·f); router weights [T·k_max]
// indexed by slot s = t·k_max + j; offsets [E+1] and sorted_slots [P] (P = kept pairs) from the
// permutation; slot_pos [T·k_max] (DROPPED for unused / dropped slots). The expert-sorted list is
// the "grouped" layout: entry i of expert e lies in offsets[e] .. offsets[e+1].
//
// Forward (grouped path):
//   U[i] = x[tok(i)] · W1_eᵀ                 FWD1: A gathered by token in its loads (no permuted
//   H[i] = gelu(U[i])                          copy of x), GeLU in the epilogue, U kept for training
//   Yrow[slot(i)] = w[slot(i)] · H[i] · W2_e  FWD2: router weight in the epilogue, rows scattered
//   y[t] = Σ_j Yrow[t·k_max + j]              moe_combine: fixed slot order, no atomics
// Backward (the top-2 SMoE baseline trains through this):
//   dG[i] = dy[tok(i)] · W2_e                 DGRAD_H: same grouping, A gathered by token
//   dw[slot] = Σ_c dG[i,c]·H[i,c];  dU[i] = w·dG[i]·gelu'(U[i])     moe_grad_act (one warp a row)
//   dXrow[slot(i)] = dU[i] · W1_e              DGRAD_X, then moe_combine sums a token's rows
//   dW1_e = dU_eᵀ · x[tok(e)]                  K-grouped: the reduction runs over the expert's
//   dW2_e = H_eᵀ · (w ⊙ dy[tok(e)])            list entries; every expert writes its full slab
//
// The grouped GEMM (moe_gemm_*): one 128-thread block per 64 x 64 output tile, K in slices of 32.
// M-grouped problems number their tiles expert by expert (ceil(rows_e / 64) row tiles each, so no
// expert is padded beyond its last partial tile and an empty expert owns no tile); a block finds
// its expert with a warp scan over the offsets (O(E/32) shuffles), and the grid is the bound
// ceil(P_max / 64) + E row tiles (blocks past the real count exit at once). K-grouped problems
// (dW) take blockIdx.z as the expert and reduce over its list range. Operands are read in one of
// two ways: "k-contiguous" (a tile row is a memory row, k along it: x, dy, U/H/dU as A; W as the
// NT operand) with 16-byte vector loads, or "k-major" (a memory row per k, the tile's rows along
// it: W as the NN operand, dU / H as the transposed A of dW, gathered x / scaled dy as B of dW),
// also 16-byte loads, transposed into shared memory. Gather indices and router scales are applied
// per memory row in the loader. The next slice is loaded into registers while the current one is
// multiplied (one shared buffer, register prefetch). Inner product: mma.sync.m16n8k16 (bf16 /
// f16 in, f32 accumulate), 4 warps of 32 x 32; f32 operands use the same fragment map with FMAs
// (the exact reference path, not a fast one).
//
// Roofline per expert: 2·rows·f·d FLOPs per GEMM; bytes ≥ weights (2·f·d·sizeof) + rows·(d+f).
// What limits it: single-buffered shared memory (a barrier pair per 32-wide K slice, no cp.async
// ring), 64 x 64 tiles (A re-read d/64 times from L2), shared-memory bank conflicts on the
// transposing k-major stores, and mma.sync (half of Hopper's wgmma rate). It is the correct,
// sync-free baseline; the tuned mainloops (gemm_sm80.cuh / gemm_sm90) replace the tile loop while
// the loaders, the tile scheduler and the epilogues stay.

#include "common.cuh"

#define DROPPED 0xffffffffu
#define BM 64
#define BN 64
#define BK 32
#define SPAD 8
#define GEMM_THREADS 128

// Epilogue codes (mirror `Epi` in engine/src/cuda/ops/moe_sparse.rs).
enum EpiCode { EPI_GELU = 0, EPI_STORE = 1, EPI_SCATTER_SCALE = 2, EPI_SCATTER = 3, EPI_SLAB = 4 };
// Where a memory row of an operand comes from (mirror `RowSource`).
enum RowCode { ROW_SORTED = 0, ROW_TOKEN = 1, ROW_FIXED = 2 };

// Mirrors `GroupedGemm` in engine/src/cuda/ops/moe_sparse.rs (repr(C)): keep the two in step.
struct GroupedGemm {
    const void* a;
    const void* b;
    void* c;
    void* c_pre;           // EPI_GELU: pre-activation output (may be null)
    const void* scale;     // router weights per slot (EPI_SCATTER_SCALE, and B of dW2)
    const u32* offsets;    // [groups + 1]
    const u32* sorted_slots;
    u64 n, k;              // M-grouped: GEMM N and K; K-grouped: M = f is `k`'s twin `m`
    u64 m;                 // K-grouped only: rows of each slab
    u64 lda, ldb, ldc;
    u64 b_group_stride;    // elements between consecutive experts' B (M-grouped)
    u64 p_max;             // capacity of the sorted list (bound for the tile grid)
    u32 groups, k_max;
    int a_rows, b_rows;    // RowCode of A's and B's memory rows
    int epi;
    int scale_b;           // K-grouped: scale B's rows by the router weight of their slot
};

template <typename T> struct Tiles {
    T a[BM][BK + SPAD];  // [tile row][k]
    T b[BN][BK + SPAD];  // [tile col][k]
};

template <typename T> __device__ __forceinline__ T zero_of() { return from_float<T>(0.0f); }

// 8 consecutive elements from p[col..], zero past lim; 16-byte (or 2 x 16-byte) loads when `vec`
// (the caller has checked the base and leading dimension keep every 8-element group aligned).
template <typename T> __device__ __forceinline__ void load8(const T* p, u64 col, u64 lim, bool vec, T (&out)[8]) {
    if (vec && col + 8 <= lim) {
        union { W16 w[sizeof(T) / 2]; T v[8]; } u;
        const W16* q = reinterpret_cast<const W16*>(p + col);
#pragma unroll
        for (int i = 0; i < (int)(sizeof(T) / 2); ++i) u.w[i] = q[i];
#pragma unroll
        for (int i = 0; i < 8; ++i) out[i] = u.v[i];
    } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) out[i] = col + i < lim ? p[col + i] : zero_of<T>();
    }
}

// The memory row behind list entry `i` (sorted index) for a row code.
__device__ __forceinline__ u64 memory_row(int code, const u32* sorted_slots, u32 k_max, u64 i) {
    if (code == ROW_SORTED) return i;
    return sorted_slots[i] / k_max;  // ROW_TOKEN
}

// The group whose tiles hold flat row-tile `tile` (tiles numbered expert by expert); false when
// `tile` is past the last one. Every thread runs it (warp-uniform).
__device__ bool find_group(const u32* offsets, u32 groups, u64 tile, u32& group, u64& row0) {
    const u32 lane = threadIdx.x & (WARP - 1);
    u64 base = 0;
    for (u32 g0 = 0; g0 < groups; g0 += WARP) {
        const u32 g = g0 + lane;
        const u32 tiles = g < groups ? (offsets[g + 1] - offsets[g] + BM - 1) / BM : 0;
        u32 incl = tiles;
#pragma unroll
        for (int o = 1; o < WARP; o <<= 1) {
            const u32 up = __shfl_up_sync(FULL_MASK, incl, o);
            if ((int)lane >= o) incl += up;
        }
        const u32 total = __shfl_sync(FULL_MASK, incl, WARP - 1);
        if (tile < base + total) {
            const u32 hit = __ballot_sync(FULL_MASK, g < groups && base + incl > tile);
            const int first = __ffs(hit) - 1;
            const u32 excl = __shfl_sync(FULL_MASK, incl - tiles, first);
            group = g0 + first;
            row0 = (tile - base - excl) * BM;
            return true;
        }
        base += total;
    }
    return false;
}

// ---- loaders: global -> registers -> shared -------------------------------------------------------

// Tile rows are memory rows with k contiguous. Each thread owns 2 (row, 8-wide k chunk) pieces of
// the 64 x 32 slice; the row addresses are fixed for the whole tile, only k moves.
template <typename T> struct KContig {
    const T* row_ptr[2];
    bool valid[2];
    u32 row[2], kc[2];
    u64 k_end;
    bool vec;
    T regs[2][8];

    __device__ void init(const T* base, u64 ld, int row_code, const u32* sorted_slots, u32 k_max, u64 first, u64 rows,
                         u64 k_end_, bool vec_) {
        k_end = k_end_;
        vec = vec_;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const u32 v = threadIdx.x + r * GEMM_THREADS;
            row[r] = v / (BK / 8);
            kc[r] = (v % (BK / 8)) * 8;
            valid[r] = row[r] < rows;
            const u64 mem = row_code == ROW_FIXED ? first + row[r]
                                                  : (valid[r] ? memory_row(row_code, sorted_slots, k_max, first + row[r]) : 0);
            row_ptr[r] = base + mem * ld;
        }
    }
    __device__ void fetch(u64 k0) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            if (valid[r]) {
                load8(row_ptr[r], k0 + kc[r], k_end, vec, regs[r]);
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) regs[r][i] = zero_of<T>();
            }
        }
    }
    __device__ void store(T (*s)[BK + SPAD]) const {
#pragma unroll
        for (int r = 0; r < 2; ++r)
#pragma unroll
            for (int i = 0; i < 8; ++i) s[row[r]][kc[r] + i] = regs[r][i];
    }
};

// One memory row per k (list entries k_begin.. of a K-grouped problem, or W's rows for the NN
// operand), the tile's rows contiguous along it. Each thread owns 2 (k, 8-wide column chunk)
// pieces; rows may be gathered by token and scaled by the router weight of their slot.
template <typename T> struct KMajor {
    const T* base;
    u64 ld, col0, cols, k_begin, k_end;
    int row_code;
    const u32* sorted_slots;
    const T* scale;
    u32 k_max;
    bool vec;
    T regs[2][8];

    __device__ void fetch(u64 k0) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const u32 v = threadIdx.x + r * GEMM_THREADS;
            const u32 kk = v / (BN / 8), cc = (v % (BN / 8)) * 8;
            const u64 k = k_begin + k0 + kk;
            if (k < k_end) {
                const u64 mem = row_code == ROW_FIXED ? k : memory_row(row_code, sorted_slots, k_max, k);
                load8(base + mem * ld, col0 + cc, col0 + cols, vec, regs[r]);
                if (scale != nullptr) {
                    const float s = to_float(scale[sorted_slots[k]]);
#pragma unroll
                    for (int i = 0; i < 8; ++i) regs[r][i] = from_float<T>(to_float(regs[r][i]) * s);
                }
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) regs[r][i] = zero_of<T>();
            }
        }
    }
    __device__ void store(T (*s)[BK + SPAD]) const {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const u32 v = threadIdx.x + r * GEMM_THREADS;
            const u32 kk = v / (BN / 8), cc = (v % (BN / 8)) * 8;
#pragma unroll
            for (int i = 0; i < 8; ++i) s[cc + i][kk] = regs[r][i];
        }
    }
};

// ---- the inner product over one shared slice ------------------------------------------------------

// acc[mi][ni][q]: warp sub-tile (mi: 2 x m16, ni: 4 x n8), fragment element q of m16n8 (rows g,
// g+8; columns 2·tq, 2·tq+1), the mma.sync C layout.
template <typename T> struct Mma;

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

template <typename T> __device__ __forceinline__ u32 pair_at(const T* p) { return *reinterpret_cast<const u32*>(p); }

template <typename T> __device__ __forceinline__ void slice_product(const Tiles<T>& s, float (&acc)[2][4][4]) {
    const u32 lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP;
    const u32 g = lane >> 2, tq = lane & 3;
    const u32 wm = (warp / 2) * 32, wn = (warp % 2) * 32;
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
        u32 a[2][4], b[4][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
            const u32 r = wm + mi * 16 + g;
            a[mi][0] = pair_at(&s.a[r][ks + 2 * tq]);
            a[mi][1] = pair_at(&s.a[r + 8][ks + 2 * tq]);
            a[mi][2] = pair_at(&s.a[r][ks + 8 + 2 * tq]);
            a[mi][3] = pair_at(&s.a[r + 8][ks + 8 + 2 * tq]);
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
            const u32 c = wn + ni * 8 + g;
            b[ni][0] = pair_at(&s.b[c][ks + 2 * tq]);
            b[ni][1] = pair_at(&s.b[c][ks + 8 + 2 * tq]);
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) mma_16816<T>(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
    }
}

template <> __device__ __forceinline__ void slice_product<float>(const Tiles<float>& s, float (&acc)[2][4][4]) {
    const u32 lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP;
    const u32 g = lane >> 2, tq = lane & 3;
    const u32 wm = (warp / 2) * 32, wn = (warp % 2) * 32;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const u32 r = wm + mi * 16 + g + 8 * (q >> 1), c = wn + ni * 8 + 2 * tq + (q & 1);
                float v = acc[mi][ni][q];
                for (int kk = 0; kk < BK; ++kk) v = fmaf(s.a[r][kk], s.b[c][kk], v);
                acc[mi][ni][q] = v;
            }
}

__device__ __forceinline__ float gelu_f(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

// The K loop: A and B loaders fill the tiles slice by slice, the next slice's loads in flight
// while the current one is multiplied.
template <typename T, class LA, class LB>
__device__ __forceinline__ void tile_loop(LA& la, LB& lb, u64 k_len, Tiles<T>& s, float (&acc)[2][4][4]) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.0f;
    if (k_len == 0) return;
    la.fetch(0);
    lb.fetch(0);
    for (u64 k0 = 0; k0 < k_len; k0 += BK) {
        __syncthreads();  // the previous slice's readers are done
        la.store(s.a);
        lb.store(s.b);
        __syncthreads();
        if (k0 + BK < k_len) {
            la.fetch(k0 + BK);
            lb.fetch(k0 + BK);
        }
        slice_product<T>(s, acc);
    }
}

// Calls f(tile_row, col, value) for every accumulator inside rows x cols.
template <class F> __device__ __forceinline__ void for_each_output(const float (&acc)[2][4][4], u64 rows, u64 cols, F f) {
    const u32 lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP;
    const u32 g = lane >> 2, tq = lane & 3;
    const u32 wm = (warp / 2) * 32, wn = (warp % 2) * 32;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const u32 r = wm + mi * 16 + g + 8 * (q >> 1), c = wn + ni * 8 + 2 * tq + (q & 1);
                if (r < rows && c < cols) f(r, c, acc[mi][ni][q]);
            }
}

// Whether 8-element groups of rows with leading dimension `ld` starting at `p` are 16-byte aligned.
template <typename T> __device__ __forceinline__ bool vec_ok(const void* p, u64 ld) {
    return ((u64)p % 16 == 0) && (ld % 8 == 0);
}

// M-grouped: C rows are list entries. B is W_e: NT (b_nk: stored [N, K]) or NN (stored [K, N]).
template <typename T, bool B_NK> __device__ void gemm_m_grouped(const GroupedGemm& p) {
    __shared__ __align__(16) Tiles<T> s;
    const u64 n_tiles = (p.n + BN - 1) / BN;
    const u64 row_tiles = (p.p_max + BM - 1) / BM + p.groups;
    const T* a = (const T*)p.a;
    for (u64 t = blockIdx.x; t < row_tiles * n_tiles; t += gridDim.x) {
        const u64 rt = t / n_tiles, col0 = (t % n_tiles) * BN;
        u32 e;
        u64 row0;
        if (!find_group(p.offsets, p.groups, rt, e, row0)) return;  // tiles only grow: the rest are past the end too
        const u64 first = p.offsets[e] + row0;
        const u64 rows = min((u64)BM, (u64)(p.offsets[e + 1] - p.offsets[e]) - row0);
        const T* b = (const T*)p.b + e * p.b_group_stride;
        KContig<T> la;
        la.init(a, p.lda, p.a_rows, p.sorted_slots, p.k_max, first, rows, p.k, vec_ok<T>(a, p.lda));
        float acc[2][4][4];
        if (B_NK) {
            KContig<T> lb;
            lb.init(b + col0 * p.ldb, p.ldb, ROW_FIXED, nullptr, 0, 0, min((u64)BN, p.n - col0), p.k, vec_ok<T>(b, p.ldb));
            tile_loop<T>(la, lb, p.k, s, acc);
        } else {
            KMajor<T> lb{b, p.ldb, col0, min((u64)BN, p.n - col0), 0, p.k, ROW_FIXED, nullptr, nullptr, 0, vec_ok<T>(b, p.ldb)};
            tile_loop<T>(la, lb, p.k, s, acc);
        }
        T* c = (T*)p.c;
        const T* w = (const T*)p.scale;
        for_each_output(acc, rows, p.n - col0, [&](u32 r, u32 cc, float v) {
            const u64 i = first + r, col = col0 + cc;
            switch (p.epi) {
                case EPI_GELU:
                    if (p.c_pre != nullptr) ((T*)p.c_pre)[i * p.ldc + col] = from_float<T>(v);
                    c[i * p.ldc + col] = from_float<T>(gelu_f(v));
                    break;
                case EPI_STORE: c[i * p.ldc + col] = from_float<T>(v); break;
                case EPI_SCATTER_SCALE: {
                    const u32 slot = p.sorted_slots[i];
                    c[(u64)slot * p.ldc + col] = from_float<T>(v * to_float(w[slot]));
                    break;
                }
                default: c[(u64)p.sorted_slots[i] * p.ldc + col] = from_float<T>(v); break;  // EPI_SCATTER
            }
        });
    }
}

// K-grouped (dW): slab e of C [m, n] = Aᵀ · B over expert e's list entries. A's memory rows are
// list entries (ROW_SORTED), its columns the slab rows; B's memory rows are list entries too
// (gathered by token, optionally scaled by the slot's router weight), its columns the slab columns.
template <typename T> __device__ void gemm_k_grouped(const GroupedGemm& p) {
    __shared__ __align__(16) Tiles<T> s;
    const u32 e = blockIdx.z;
    const u64 m_tiles = (p.m + BM - 1) / BM, n_tiles = (p.n + BN - 1) / BN;
    const u64 k_begin = p.offsets[e], k_end = p.offsets[e + 1];
    for (u64 t = blockIdx.x; t < m_tiles * n_tiles; t += gridDim.x) {
        const u64 row0 = (t / n_tiles) * BM, col0 = (t % n_tiles) * BN;
        KMajor<T> la{(const T*)p.a, p.lda, row0, min((u64)BM, p.m - row0), k_begin, k_end, p.a_rows, p.sorted_slots, nullptr,
                     p.k_max, vec_ok<T>(p.a, p.lda)};
        KMajor<T> lb{(const T*)p.b, p.ldb, col0, min((u64)BN, p.n - col0), k_begin, k_end, p.b_rows, p.sorted_slots,
                     p.scale_b ? (const T*)p.scale : nullptr, p.k_max, vec_ok<T>(p.b, p.ldb)};
        float acc[2][4][4];
        tile_loop<T>(la, lb, k_end - k_begin, s, acc);
        T* c = (T*)p.c + (u64)e * p.m * p.ldc;
        for_each_output(acc, min((u64)BM, p.m - row0), min((u64)BN, p.n - col0),
                        [&](u32 r, u32 cc, float v) { c[(row0 + r) * p.ldc + col0 + cc] = from_float<T>(v); });
    }
}

// ---- combine and the activation backward -----------------------------------------------------------

// y[t, :] = Σ_j Σ_split rows[(split·slots + t·k_max + j), :] over the token's kept slots, summed in
// f32 in (j, split) order: bit-reproducible. Grid: x over columns, y over tokens (strided).
template <typename S, typename T>
__device__ void combine(const S* rows, const u32* slot_pos, T* y, u64 tokens, u32 k_max, u64 d, u32 splits) {
    const u64 slots = tokens * k_max;
    for (u64 t = blockIdx.y; t < tokens; t += gridDim.y) {
        for (u64 col = (u64)blockIdx.x * blockDim.x + threadIdx.x; col < d; col += (u64)gridDim.x * blockDim.x) {
            float sum = 0.0f;
            for (u32 j = 0; j < k_max; ++j) {
                const u64 slot = t * k_max + j;
                if (slot_pos[slot] == DROPPED) continue;
                for (u32 sp = 0; sp < splits; ++sp) sum += to_float(rows[(sp * slots + slot) * d + col]);
            }
            y[t * d + col] = from_float<T>(sum);
        }
    }
}

// One warp per list entry i < offsets[groups]: dw[slot] = Σ_c dG[i,c]·H[i,c] (warp tree, fixed
// order) and dU[i,c] = w[slot]·dG[i,c]·gelu'(U[i,c]), written over dG.
template <typename T>
__device__ void grad_act(T* dg, const T* h, const T* u, const T* w, const u32* sorted_slots, const u32* offsets, u32 groups,
                         T* dweights, u64 f) {
    const u32 lane = threadIdx.x & (WARP - 1);
    const u64 total = offsets[groups];
    const u64 warps = (u64)gridDim.x * blockDim.x / WARP;
    for (u64 i = global_thread() / WARP; i < total; i += warps) {
        const u32 slot = sorted_slots[i];
        const float ws = to_float(w[slot]);
        float dot = 0.0f;
        for (u64 c = lane; c < f; c += WARP) {
            const u64 o = i * f + c;
            const float g = to_float(dg[o]), x = to_float(u[o]);
            dot += g * to_float(h[o]);
            const float sg = 1.0f / (1.0f + expf(-2.0f * 0.7978845608028654f * (x + 0.044715f * x * x * x)));
            const float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * x * x);
            dg[o] = from_float<T>(ws * g * (sg + 2.0f * x * sg * (1.0f - sg) * du));
        }
        dot = warp_reduce(dot, [](float a, float b) { return a + b; });
        if (lane == 0) dweights[slot] = from_float<T>(dot);
    }
}

#define SPARSE_KERNELS(T, SFX)                                                                                          \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS) moe_gemm_nt_##SFX(GroupedGemm p) {                       \
        gemm_m_grouped<T, true>(p);                                                                                      \
    }                                                                                                                    \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS) moe_gemm_nn_##SFX(GroupedGemm p) {                       \
        gemm_m_grouped<T, false>(p);                                                                                     \
    }                                                                                                                    \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS) moe_gemm_dw_##SFX(GroupedGemm p) { gemm_k_grouped<T>(p); } \
    extern "C" __global__ void moe_combine_##SFX(const T* rows, const u32* slot_pos, T* y, u64 tokens, u32 k_max, u64 d) { \
        combine<T, T>(rows, slot_pos, y, tokens, k_max, d, 1);                                                           \
    }                                                                                                                    \
    extern "C" __global__ void moe_combine_splits_##SFX(const float* rows, const u32* slot_pos, T* y, u64 tokens,       \
                                                        u32 k_max, u64 d, u32 splits) {                                  \
        combine<float, T>(rows, slot_pos, y, tokens, k_max, d, splits);                                                  \
    }                                                                                                                    \
    extern "C" __global__ void moe_grad_act_##SFX(T* dg, const T* h, const T* u, const T* w, const u32* sorted_slots,   \
                                                  const u32* offsets, u32 groups, T* dweights, u64 f) {                  \
        grad_act<T>(dg, h, u, w, sorted_slots, offsets, groups, dweights, f);                                            \
    }

SPARSE_KERNELS(float, f32)
SPARSE_KERNELS(bf16, bf16)
SPARSE_KERNELS(f16, f16)
