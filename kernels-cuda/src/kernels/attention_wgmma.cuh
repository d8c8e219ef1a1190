// attention_wgmma.cuh: the wgmma forms the Hopper attention kernels (attention_sm90.cu, forward;
// attention_bwd_sm90.cu, dK / dV) issue, as typed wrappers over inline PTX: m64n64k16 with both
// operands K-major in shared memory (the score products), and m64nDk16 (D = 64, 96, 128) with A
// from registers in the m16n8k16 A layout and B MN-major in shared memory (the products whose A is
// a probability tile held in registers). Accumulators are f32; sm_90a only. Also the opening
// the query-row kernels (attention_sm90.cu: forward and dq) share.

#pragma once

#include "common.cuh"
#include "gemm_sm80.cuh"
#include "attention_rows.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
namespace attn_wgmma {

// D[64 x N] += A[64 x 16]·B[16 x N] (N = 64), A and B K-major in shared memory (descriptors).
template <typename T, int N> __device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], u64 da, u64 db);
// D[64 x N] += A[64 x 16]·B[16 x N], A from registers (the m16n8k16 A layout per warp), B
// MN-major in shared memory.
template <typename T, int N> __device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const u32 (&a)[4], u64 db);

#define WGMMA_SS_N64(T, PTXT) \
    template <> __device__ __forceinline__ void wgmma_ss<T, 64>(float (&d)[32], u64 da, u64 db) { \
        asm volatile( \
            "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n" \
            "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTXT "." PTXT " {" \
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, " \
            "%32, %33, p, 1, 1, 0, 0;\n}\n" \
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
            : "l"(da), "l"(db), "r"(1)); \
    }

#define WGMMA_RS_N64(T, PTXT) \
    template <> __device__ __forceinline__ void wgmma_rs<T, 64>(float (&d)[32], const u32 (&a)[4], u64 db) { \
        asm volatile( \
            "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n" \
            "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTXT "." PTXT " {" \
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, " \
            "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n" \
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1)); \
    }

#define WGMMA_RS_N96(T, PTXT) \
    template <> __device__ __forceinline__ void wgmma_rs<T, 96>(float (&d)[48], const u32 (&a)[4], u64 db) { \
        asm volatile( \
            "{\n.reg .pred p;\nsetp.ne.b32 p, %53, 0;\n" \
            "wgmma.mma_async.sync.aligned.m64n96k16.f32." PTXT "." PTXT " {" \
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
            "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}, " \
            "{%48, %49, %50, %51}, %52, p, 1, 1, 1;\n}\n" \
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
              "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
              "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]) \
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1)); \
    }

#define WGMMA_RS_N128(T, PTXT) \
    template <> __device__ __forceinline__ void wgmma_rs<T, 128>(float (&d)[64], const u32 (&a)[4], u64 db) { \
        asm volatile( \
            "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n" \
            "wgmma.mma_async.sync.aligned.m64n128k16.f32." PTXT "." PTXT " {" \
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
            "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
            "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, " \
            "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n" \
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
              "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
              "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
              "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
              "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1)); \
    }


#define WGMMA_FORMS(T, PTXT) WGMMA_SS_N64(T, PTXT) WGMMA_RS_N64(T, PTXT) WGMMA_RS_N96(T, PTXT) WGMMA_RS_N128(T, PTXT)
WGMMA_FORMS(bf16, "bf16")
WGMMA_FORMS(f16, "f16")

// An accumulator array [N][4] as the flat [4N] registers a wgmma operand list takes (same layout).
template <int N> __device__ __forceinline__ float (&flat(float (&x)[N][4]))[4 * N] { return reinterpret_cast<float(&)[4 * N]>(x); }

// Pins accumulators x [N][4] at this point of the program: an empty asm that reads and writes
// them, so the compiler can move none of their plain reads or writes across it. Placed right after
// a wgmma.wait_group (an asm with only a memory clobber, which does not order register code), it
// keeps the code that reads the retired accumulators after the wait.
template <int N> __device__ __forceinline__ void fence_regs(float (&x)[N][4]) {
#pragma unroll
    for (int n = 0; n < N; ++n) asm volatile("" : "+f"(x[n][0]), "+f"(x[n][1]), "+f"(x[n][2]), "+f"(x[n][3])::"memory");
}

// A 16-row slab of accumulators s [N][4] (m16n8 C layout) as the 16-bit A fragments of the next
// product: k16 step kk is s's n8 blocks 2kk and 2kk + 1.
template <typename T, int N> __device__ __forceinline__ void a_fragments(u32 (&a)[N / 2][4], const float (&s)[N][4]) {
#pragma unroll
    for (int kk = 0; kk < N / 2; ++kk) {
        a[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
        a[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
        a[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        a[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
}

// A query-row block once opened: its packed rows and key tiles (query_block), the address of its
// first 128-byte-swizzled row tile (shared memory aligned to the swizzle's 1024-byte atom), its
// K / V ring, and this thread's warp and lane.
template <typename Ring> struct QueryOpening {
    PackedRows rows;
    u32 tiles;
    bool empty;
    u32 row_tiles;
    Ring ring;
    int warp, lane;
};

// Opens a query-row block of ROWS rows and KEYS-key tiles whose shared memory follows Plan (the
// row tiles from the aligned start, then the ring at Plan::RING with its barriers at
// Plan::RING_BARS). A block past its sequence comes back `empty` and the caller returns at once
// (uniformly, before any barrier); for every other block the ring's barriers are initialised,
// which syncs the whole block.
template <int ROWS, int KEYS, typename Plan, typename Ring>
__device__ __forceinline__ QueryOpening<Ring> open_query_block(char* smem_raw, const u32* offsets, u32 hq, u32 hkv) {
    const u32 at = (sm80::smem_addr(smem_raw) + 1023u) & ~1023u;
    const QueryBlock qb = query_block<ROWS, KEYS>(offsets, hq, hkv);
    const QueryOpening<Ring> open{qb.rows, qb.tiles, qb.empty, at, Ring{at + Plan::RING, at + Plan::RING_BARS}, (int)threadIdx.x / 32, (int)threadIdx.x % 32};
    if (!open.empty) open.ring.init();
    return open;
}

}  // namespace attn_wgmma
#endif
