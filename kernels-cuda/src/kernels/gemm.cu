// gemm.cu: the reference batched GEMM, C[b] = op(A[b]) · op(B[b]), op = optional transpose.
//
// Layout (row-major, as MatmulLayout in engine/src/backend.rs): A[b] is m x k (k x m when trans_a),
// B[b] is k x n (n x k when trans_b), C[b] is m x n and contiguous. Batch strides are in elements;
// 0 reuses one matrix for every batch entry (a shared weight).
//
// Tiling: a 256-thread block computes a 64 x 64 tile of C, each thread a 4 x 4 micro-tile held in
// registers, stepping through k in slices of 16. Each step stages a 64 x 16 slice of A and a 16 x 64
// slice of B in shared memory as f32 (widened on load), k-major, so the inner loop reads
// A[kk][4 rows] and B[kk][4 cols] as broadcasts / float4 and does 16 FMAs per 8 shared loads.
// Global loads are coalesced in every transpose case: the thread-to-element map follows whichever
// axis of the stored matrix is contiguous. Edges (m, n, k not multiples of the tile) are masked with
// zeros, so any shape is correct. Grid: x over n-tiles, y over m-tiles, z over batch (y and z
// strided, so sizes past 65535 tiles or batches work).
//
// Accumulation is f32 for every input type; C is rounded once. No tensor cores: this is the
// correct-first reference every faster GEMM is checked against, and the fallback for shapes they do
// not cover. Expected speed on an H100: tens of percent of f32 FMA peak (a few TFLOP/s), far below
// the 990 TFLOP/s of bf16 tensor cores.
//
// Roofline: 2·batch·m·n·k FLOPs; bytes ≥ (|A| + |B| + |C|)·sizeof(T), re-read from L2 once per tile
// row / column (A is read n/64 times, B m/64 times).

#include "common.cuh"

#define BM 64
#define BN 64
#define BK 16
#define THREADS 256

template <typename T>
__device__ void gemm(const T* A, const T* B, T* C, u64 batch, u64 m, u64 n, u64 k, int trans_a, int trans_b,
                     u64 a_batch_stride, u64 b_batch_stride) {
    // +4 keeps float4 alignment of rows while spreading the transposed stores across banks.
    __shared__ __align__(16) float As[BK][BM + 4];
    __shared__ __align__(16) float Bs[BK][BN + 4];
    const u32 tid = threadIdx.x;
    const u32 tx = tid % 16, ty = tid / 16;
    const u64 m_tiles = (m + BM - 1) / BM;
    const u64 n0 = (u64)blockIdx.x * BN;

    for (u64 bi = blockIdx.z; bi < batch; bi += gridDim.z) {
        const T* a = A + bi * a_batch_stride;
        const T* bm = B + bi * b_batch_stride;
        T* c = C + bi * m * n;
        for (u64 mt = blockIdx.y; mt < m_tiles; mt += gridDim.y) {
            const u64 m0 = mt * BM;
            float acc[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

            for (u64 k0 = 0; k0 < k; k0 += BK) {
#pragma unroll
                for (int r = 0; r < (BM * BK) / THREADS; ++r) {
                    const u32 e = tid + r * THREADS;
                    // The contiguous axis of the stored matrix varies fastest across threads.
                    const u32 mm = trans_a ? e % BM : e / BK;
                    const u32 kk = trans_a ? e / BM : e % BK;
                    const u64 gm = m0 + mm, gk = k0 + kk;
                    float v = 0.0f;
                    if (gm < m && gk < k) v = to_float(trans_a ? a[gk * m + gm] : a[gm * k + gk]);
                    As[kk][mm] = v;
                }
#pragma unroll
                for (int r = 0; r < (BN * BK) / THREADS; ++r) {
                    const u32 e = tid + r * THREADS;
                    const u32 nn = trans_b ? e / BK : e % BN;
                    const u32 kk = trans_b ? e % BK : e / BN;
                    const u64 gn = n0 + nn, gk = k0 + kk;
                    float v = 0.0f;
                    if (gn < n && gk < k) v = to_float(trans_b ? bm[gn * k + gk] : bm[gk * n + gn]);
                    Bs[kk][nn] = v;
                }
                __syncthreads();
#pragma unroll
                for (int kk = 0; kk < BK; ++kk) {
                    const float4 av = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
                    const float4 bv = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
                    const float ar[4] = {av.x, av.y, av.z, av.w};
                    const float br[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
                    for (int i = 0; i < 4; ++i)
#pragma unroll
                        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
                }
                __syncthreads();
            }

#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const u64 gm = m0 + ty * 4 + i;
                if (gm >= m) continue;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const u64 gn = n0 + tx * 4 + j;
                    if (gn < n) c[gm * n + gn] = from_float<T>(acc[i][j]);
                }
            }
        }
    }
}

#define ENTRIES(NAME, T)                                                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                       \
        gemm_##NAME(const T* a, const T* b, T* c, u64 batch, u64 m, u64 n, u64 k, int trans_a, int trans_b,     \
                    u64 a_batch_stride, u64 b_batch_stride) {                                                   \
        gemm<T>(a, b, c, batch, m, n, k, trans_a, trans_b, a_batch_stride, b_batch_stride);                     \
    }

ENTRIES(f32, float)
ENTRIES(bf16, bf16)
ENTRIES(f16, f16)
