// moe_route.cu: sparse-MoE routing and token permutation, entirely on the device (no host sync, so
// a whole sparse MoE layer can be captured in a CUDA graph).
//
// Routing (router probabilities p [T, N] in T = f32 / bf16 / f16):
// - moe_route_<T>: one warp per token picks up to k_max (<= 32) experts by repeated warp argmax in
//   "descending probability, then ascending expert index" order (`ahead` in common.cuh: NaN first,
//   ties to the lower index), so the choice is deterministic and identical to the CPU reference.
//   How many of the k_max picks count: top-K: k_max, or *k_device when given (threshold-then-K);
//   threshold: the number of experts with N·p_e > ε (computed in f32 as the CPU does), at least
//   one, at most k_max. Outputs per token, slot j < k_max: experts [T, k_max] u32 (an unused slot
//   repeats slot 0's expert, so every index is valid), weights [T, k_max] in T (p of the expert,
//   optionally divided by the sum over the used slots, summed in slot order; 0 in unused slots),
//   mask [T, k_max] in T (1 used, 0 unused), counts [T] u32.
//   Cost: T·N·k_max/32 warp steps; p is read k_max times from L1. N <= 2048 (a 64-bit taken-mask
//   per lane covers 64 experts per lane).
// - moe_threshold_count_<T> + moe_batch_k: the threshold-then-K mode's batch-average count
//   round(Σ_t max(1, #{e: N·p_e > ε}) / T) clamped to [1, k_max], written to device memory and read
//   by moe_route's k_device, so this mode needs no host round trip either.
//
// Permutation (the expert-sorted list): the flat slot index s = t·k_max + j of every used slot is
// placed in a stable counting sort by expert over the slots in priority order i = j·T + t (every
// token's first choice in token order, then every second choice, ...). Within an expert, slots
// keep that order, which makes capacity dropping deterministic and gives first choices priority:
// a token's second choice is dropped before another token's first choice, as in GShard's and
// fairseq's Top2Gate (second-choice positions start after all first choices).
// 1. moe_chunk_rank: one warp per chunk of CHUNK priority positions; 32 at a time, __match_any_sync
//    groups the lanes holding one expert, so each slot gets its rank among the chunk's earlier
//    slots of its expert (a per-warp shared-memory histogram, updated by each group's leader).
//    Writes rank_in_chunk [T·k_max] (by priority position) and chunk_hist [chunks, N].
// 2. moe_expert_scan: one warp per expert scans its column of chunk_hist: chunk_base (exclusive)
//    and the expert's total.
// 3. moe_offsets: one warp: kept_e = min(total_e, capacity), offsets [N+1] = exclusive scan of
//    kept, dropped [1] = Σ (total − kept).
// 4. moe_scatter_slots: per priority position i and its slot s, rank = chunk_base +
//    rank_in_chunk; kept when rank < capacity:
//    pos = offsets[e] + rank, sorted_slots[pos] = s, slot_pos[s] = pos; otherwise slot_pos[s] =
//    DROPPED (also for unused slots). The host fills sorted_slots with DROPPED first, so its tail
//    past offsets[N] reads DROPPED, as on the CPU.
// Everything is integer work over T·k_max slots (a few MB at T = 16384, k_max = 8): microseconds.
// No step depends on the order atomics land in, so the permutation is bit-reproducible.
//
// Kept slots: moe_kept_<T> writes kept [T·k_max] in T, 1 where slot_pos != DROPPED (used and
// within capacity), else 0. The top-k baseline renormalises its gate values over the kept slots,
// as fairseq's Top2Gate does after capacity dropping (normalize_gate_prob_before_dropping=False).
// Grid-stride, one element per thread.

#include "common.cuh"

#define DROPPED 0xffffffffu
#define NO_EXPERT 0xffffffffu
#define CHUNK 256
#define MAX_EXPERTS 2048

enum RouteCode { R_TOPK = 0, R_THRESHOLD = 1 };

__device__ __forceinline__ u32 warp_sum_u32(u32 v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// max(1, #{e : N·p_e > eps}) for the token whose row is p (every lane gets it).
template <typename T> __device__ __forceinline__ u32 count_above(const T* p, u32 n, float eps) {
    const u32 lane = threadIdx.x & (WARP - 1);
    const float nf = (float)n;
    u32 above = 0;
    for (u32 e = lane; e < n; e += WARP) above += (nf * to_float(p[e]) > eps) ? 1u : 0u;
    above = warp_sum_u32(above);
    return above > 0 ? above : 1u;
}

template <typename T>
__device__ void route(const T* probs, u32* experts, T* weights, T* mask, u32* counts, u64 tokens, u32 n, u32 k_max, int mode,
                      float eps, int renormalise, const u32* k_device) {
    const u32 lane = threadIdx.x & (WARP - 1);
    const u64 warps = (u64)gridDim.x * blockDim.x / WARP;
    for (u64 t = global_thread() / WARP; t < tokens; t += warps) {
        const T* p = probs + t * n;
        u32 count;
        if (mode == R_THRESHOLD) {
            count = min(count_above(p, n, eps), k_max);
        } else {
            count = k_device != nullptr ? min(max(*k_device, 1u), k_max) : k_max;
        }
        u64 taken = 0;  // bit i: expert lane + 32·i is already chosen
        u32 my_expert = 0, first = 0;
        float my_p = 0.0f, sum = 0.0f;
        for (u32 j = 0; j < k_max; ++j) {
            float bv = 0.0f;
            u32 bi = NO_EXPERT;
            for (u32 i = 0, e = lane; e < n; ++i, e += WARP) {
                if ((taken >> i) & 1ull) continue;
                const float v = to_float(p[e]);
                if (bi == NO_EXPERT || ahead(v, e, bv, bi)) {
                    bv = v;
                    bi = e;
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const float ov = __shfl_xor_sync(FULL_MASK, bv, o);
                const u32 oi = __shfl_xor_sync(FULL_MASK, bi, o);
                if (oi != NO_EXPERT && (bi == NO_EXPERT || ahead(ov, oi, bv, bi))) {
                    bv = ov;
                    bi = oi;
                }
            }
            if (lane == bi % WARP) taken |= 1ull << (bi / WARP);
            if (j == 0) first = bi;
            const bool used = j < count;
            if (used) sum += bv;
            if (lane == j) {
                my_expert = used ? bi : first;
                my_p = used ? bv : 0.0f;
            }
        }
        if (lane < k_max) {
            const u64 o = t * k_max + lane;
            const bool used = lane < count;
            experts[o] = my_expert;
            weights[o] = from_float<T>(renormalise && used ? my_p / sum : my_p);
            mask[o] = from_float<T>(used ? 1.0f : 0.0f);
        }
        if (lane == 0) counts[t] = count;
    }
}

template <typename T> __device__ void threshold_count(const T* probs, u32* above, u64 tokens, u32 n, float eps) {
    const u64 warps = (u64)gridDim.x * blockDim.x / WARP;
    for (u64 t = global_thread() / WARP; t < tokens; t += warps) {
        const u32 c = count_above(probs + t * n, n, eps);
        if ((threadIdx.x & (WARP - 1)) == 0) above[t] = c;
    }
}

#define ROUTE_KERNELS(T, SFX)                                                                                          \
    extern "C" __global__ void moe_route_##SFX(const T* probs, u32* experts, T* weights, T* mask, u32* counts,          \
                                               u64 tokens, u32 n, u32 k_max, int mode, float eps, int renormalise,       \
                                               const u32* k_device) {                                                    \
        route<T>(probs, experts, weights, mask, counts, tokens, n, k_max, mode, eps, renormalise, k_device);             \
    }                                                                                                                    \
    extern "C" __global__ void moe_threshold_count_##SFX(const T* probs, u32* above, u64 tokens, u32 n, float eps) {   \
        threshold_count<T>(probs, above, tokens, n, eps);                                                                \
    }

ROUTE_KERNELS(float, f32)
ROUTE_KERNELS(bf16, bf16)
ROUTE_KERNELS(f16, f16)

// One block of 256 threads: k = clamp(round(Σ above / tokens), 1, k_max). The sum is exact (u64)
// and the mean is rounded half away from zero like Rust's f64::round.
extern "C" __global__ void moe_batch_k(const u32* above, u64 tokens, u32 k_max, u32* k_out) {
    __shared__ u64 partial[256 / WARP];
    u64 s = 0;
    for (u64 t = threadIdx.x; t < tokens; t += blockDim.x) s += above[t];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(FULL_MASK, s, o);
    if ((threadIdx.x & (WARP - 1)) == 0) partial[threadIdx.x / WARP] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        u64 total = 0;
        for (u32 w = 0; w < blockDim.x / WARP; ++w) total += partial[w];
        const double mean = tokens > 0 ? (double)total / (double)tokens : 1.0;
        const double k = round(mean);
        *k_out = k < 1.0 ? 1u : (k > (double)k_max ? k_max : (u32)k);
    }
}

// ---- permutation ---------------------------------------------------------------------------------

// The slot at priority position i = j·T + t: slot j of token t, flat index t·k_max + j.
__device__ __forceinline__ u64 priority_slot(u64 i, u64 tokens, u32 k_max) { return (i % tokens) * k_max + i / tokens; }

// Launched with 32-thread blocks, one per chunk of CHUNK priority positions.
// A used slot naming an expert >= n (hand-built routes) is stored in *bad_expert (any one of them;
// the word is zero before, and n >= 1) and then treated as unused, so no index goes out of range;
// the host turns a non-zero word into an error.
extern "C" __global__ void moe_chunk_rank(const u32* experts, const u32* counts, u32* rank_in_chunk, u32* chunk_hist,
                                          u32* bad_expert, u64 tokens, u32 k_max, u32 n) {
    __shared__ u32 hist[MAX_EXPERTS];
    const u32 lane = threadIdx.x;
    const u64 slots = tokens * k_max;
    for (u32 e = lane; e < n; e += WARP) hist[e] = 0;
    __syncwarp();
    const u64 begin = (u64)blockIdx.x * CHUNK;
    for (u64 i0 = begin; i0 < begin + CHUNK && i0 < slots; i0 += WARP) {
        const u64 i = i0 + lane;
        const u64 s = priority_slot(i, tokens, k_max);
        u32 e = NO_EXPERT;
        if (i < slots && (u32)(s % k_max) < counts[s / k_max]) {
            e = experts[s];
            if (e >= n) {
                *bad_expert = e;
                e = NO_EXPERT;
            }
        }
        const u32 peers = __match_any_sync(FULL_MASK, e);
        if (e != NO_EXPERT) {
            const u32 below = peers & ((1u << lane) - 1u);
            const u32 base = hist[e];
            rank_in_chunk[i] = base + __popc(below);
            __syncwarp(peers);
            if (below == 0) hist[e] = base + __popc(peers);
        } else if (i < slots) {
            rank_in_chunk[i] = DROPPED;
        }
        __syncwarp();
    }
    for (u32 e = lane; e < n; e += WARP) chunk_hist[(u64)blockIdx.x * n + e] = hist[e];
}

// One 32-thread block per expert.
extern "C" __global__ void moe_expert_scan(const u32* chunk_hist, u32* chunk_base, u32* expert_total, u32 chunks, u32 n) {
    const u32 lane = threadIdx.x, e = blockIdx.x;
    u32 carry = 0;
    for (u32 c0 = 0; c0 < chunks; c0 += WARP) {
        const u32 c = c0 + lane;
        const u32 v = c < chunks ? chunk_hist[(u64)c * n + e] : 0;
        u32 incl = v;
#pragma unroll
        for (int o = 1; o < WARP; o <<= 1) {
            const u32 up = __shfl_up_sync(FULL_MASK, incl, o);
            if ((int)lane >= o) incl += up;
        }
        if (c < chunks) chunk_base[(u64)c * n + e] = carry + incl - v;
        carry += __shfl_sync(FULL_MASK, incl, WARP - 1);
    }
    if (lane == 0) expert_total[e] = carry;
}

// One 32-thread block.
extern "C" __global__ void moe_offsets(const u32* expert_total, u32* offsets, u32* dropped, u32 n, u32 capacity) {
    const u32 lane = threadIdx.x;
    u32 carry = 0, lost = 0;
    for (u32 e0 = 0; e0 < n; e0 += WARP) {
        const u32 e = e0 + lane;
        const u32 total = e < n ? expert_total[e] : 0;
        const u32 kept = min(total, capacity);
        u32 incl = kept;
#pragma unroll
        for (int o = 1; o < WARP; o <<= 1) {
            const u32 up = __shfl_up_sync(FULL_MASK, incl, o);
            if ((int)lane >= o) incl += up;
        }
        if (e < n) offsets[e] = carry + incl - kept;
        carry += __shfl_sync(FULL_MASK, incl, WARP - 1);
        lost += warp_sum_u32(total - kept);
    }
    if (lane == 0) {
        offsets[n] = carry;
        *dropped = lost;
    }
}

// Grid-stride over slots.
extern "C" __global__ void moe_scatter_slots(const u32* experts, const u32* rank_in_chunk, const u32* chunk_base,
                                             const u32* offsets, u32* sorted_slots, u32* slot_pos, u64 tokens, u32 k_max,
                                             u32 n, u32 capacity) {
    const u64 slots = tokens * k_max;
    for (u64 i = global_thread(); i < slots; i += global_threads()) {
        const u64 s = priority_slot(i, tokens, k_max);
        const u32 r = rank_in_chunk[i];
        u32 pos = DROPPED;
        if (r != DROPPED) {
            const u32 e = experts[s];
            const u32 rank = chunk_base[(i / CHUNK) * n + e] + r;
            if (rank < capacity) {
                pos = offsets[e] + rank;
                sorted_slots[pos] = (u32)s;
            }
        }
        slot_pos[s] = pos;
    }
}

#define KEPT_KERNEL(T, SFX)                                                                                            \
    extern "C" __global__ void moe_kept_##SFX(const u32* slot_pos, T* kept, u64 slots) {                               \
        for (u64 s = global_thread(); s < slots; s += global_threads())                                               \
            kept[s] = from_float<T>(slot_pos[s] != DROPPED ? 1.0f : 0.0f);                                            \
    }

KEPT_KERNEL(float, f32)
KEPT_KERNEL(bf16, bf16)
KEPT_KERNEL(f16, f16)
