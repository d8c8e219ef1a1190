//! Sparse MoE: routing, the expert-sorted permutation, and the sparse expert MLP (forward and the
//! training backward) over stacked expert weights `w1`, `w2` of shape `[E·f, d]` (expert e owns
//! rows `e·f .. (e+1)·f`).
//!
//! The pipeline, every step on the device that holds the data (no host sync on CUDA):
//! 1. `moe_route(probs [T, N], mode, renormalise)`: up to `k_max` experts per token (top-K,
//!    threshold on N·p, or threshold-then-batch-average-K), as `[T, k_max]` slots: expert index,
//!    router weight, a 0/1 mask of used slots, and a count per token. Ties go to the lower expert.
//! 2. `moe_permute(routes, N, capacity)`: the expert-sorted list of used slots (slot = t·k_max + j),
//!    within an expert in priority order: every token's first choice in token order, then every
//!    second choice, and so on; with a capacity, each expert keeps its first `capacity` slots and
//!    the rest are dropped (they contribute nothing: the token keeps its residual). So a token's
//!    second choice is dropped before another token's first choice, as in GShard's top-2 gating
//!    and fairseq's Top2Gate (whose second-choice positions start after all first choices).
//!    `moe_kept(perm)` is the 0/1 mask of the slots kept, over which the top-k baseline
//!    renormalises its gate values (fairseq renormalises after dropping).
//! 3. `moe_sparse_mlp(x, w1, w2, weights [T, k_max], perm)`: y[t] = Σ_j w[t,j]·W2_eᵀ·gelu(W1_e·x[t])
//!    over the token's kept slots, summed in slot order (deterministic). On CUDA a grouped
//!    gather-GEMM-scatter, or per-expert GEMVs for a few tokens (`MoePath`).
//! 4. `moe_sparse_mlp_backward`: dx, dw1, dw2 and the router-weight gradient dweights [T, k_max].
//!
//! `moe_sparse_swiglu` / `moe_sparse_swiglu_backward` are the gated form of 3. and 4.: a third
//! stacked matrix w3 (the up projection) and y[t] = Σ_j w[t,j]·W2_eᵀ·(silu(W1_e·x[t]) ⊙ W3_e·x[t]),
//! on the same routing, lists and kernels' structure (the activation rides in the epilogues).

use super::{check_float, check_index, check_same_device, check_same_dtype};
pub use crate::backend::{RouteMode, SparseDims, CPU_DECODE_MAX_ROWS, DECODE_MAX_TOKENS, DROPPED};
use crate::{cpu, cuda, DType, Error, Result, Shape, Storage, Tensor};

/// Most experts a routing kernel handles (a 64-bit per-lane mask over a warp).
pub const MAX_EXPERTS: usize = 2048;
/// Most experts one token may use (one per lane of a warp).
pub const MAX_SLOTS: usize = 32;

/// Routing of T tokens, `[T, k_max]` slots each: slot j of token t is used when j < counts[t].
#[derive(Debug, Clone)]
pub struct Routes {
    /// u32 expert of each slot; an unused slot repeats the token's first expert (always valid).
    pub experts: Tensor,
    /// Router probability of the slot's expert (renormalised over the used slots on request), 0
    /// in unused slots; the probabilities' dtype.
    pub weights: Tensor,
    /// 1 for used slots, 0 for unused ones; the probabilities' dtype.
    pub mask: Tensor,
    /// u32 `[T]`: used slots per token.
    pub counts: Tensor,
}

/// The expert-sorted list of kept (token, slot) pairs.
#[derive(Debug, Clone)]
pub struct Permutation {
    /// u32 `[N + 1]`: expert e's entries are `offsets[e] .. offsets[e+1]` of `sorted_slots`.
    pub offsets: Tensor,
    /// u32 `[T·k_max]`: slot index of each list entry; entries past `offsets[N]` are unspecified.
    pub sorted_slots: Tensor,
    /// u32 `[T·k_max]`: list position of each slot, `DROPPED` for unused and dropped slots.
    pub slot_pos: Tensor,
    /// u32 `[N]`: slots routed to each expert before the capacity limit.
    pub expert_counts: Tensor,
    /// u32 `[1]`: used slots dropped by the capacity limit.
    pub dropped: Tensor,
    pub tokens: usize,
    pub k_max: usize,
    pub n_experts: usize,
}

/// Which CUDA kernels run the sparse MLP forward (the CPU has one path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoePath {
    /// Decode kernels for up to `DECODE_MAX_TOKENS` tokens, the grouped GEMM above.
    Auto,
    Grouped,
    Decode,
}

/// What the forward keeps for the backward, in list order, `[T·k_max, f]` each: U = x·W1ᵀ and the
/// activation H (gelu(U), or silu(U) ⊙ V for gated experts), and V = x·W3ᵀ for gated experts.
#[derive(Debug, Clone)]
pub struct SparseSaved {
    pub u: Tensor,
    pub h: Tensor,
    pub v: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct SparseGrads {
    pub dx: Tensor,
    pub dw1: Tensor,
    pub dw2: Tensor,
    /// Gated experts only.
    pub dw3: Option<Tensor>,
    /// `[T, k_max]`: dy[t]·(W2_eᵀ·h(x[t])) for kept slots, 0 elsewhere.
    pub dweights: Tensor,
}

/// Routes tokens from router probabilities `probs [T, N]`.
pub fn moe_route(probs: &Tensor, mode: RouteMode, renormalise: bool) -> Result<Routes> {
    const OP: &str = "moe_route";
    check_float(OP, probs)?;
    if probs.rank() != 2 {
        return Err(Error::shape(OP, format!("probs must be [tokens, experts], got {:?}", probs.shape())));
    }
    let (tokens, n) = (probs.dims()[0], probs.dims()[1]);
    let k_max = mode.k_max();
    if n == 0 || n > MAX_EXPERTS {
        return Err(Error::invalid(OP, format!("{n} experts: must be 1..={MAX_EXPERTS}")));
    }
    if k_max == 0 || k_max > n.min(MAX_SLOTS) {
        return Err(Error::invalid(OP, format!("{mode:?} asks for {k_max} slots per token: must be 1..={} with {n} experts", n.min(MAX_SLOTS))));
    }
    if let RouteMode::Threshold { eps, .. } | RouteMode::ThresholdK { eps, .. } = mode {
        if !eps.is_finite() {
            return Err(Error::invalid(OP, format!("threshold {eps} is not finite")));
        }
    }
    check_slots(OP, tokens, k_max)?;
    let [e, w, m, c] = match probs.storage() {
        Storage::Cpu(p) => cpu::moe_sparse::route(p, tokens, n, mode, renormalise)?.map(Storage::Cpu),
        Storage::Cuda(p) => cuda::moe_sparse::route(p, tokens, n, mode, renormalise)?.map(Storage::Cuda),
    };
    let slots = Shape::new(vec![tokens, k_max]);
    Ok(Routes {
        experts: Tensor::from_storage(e, slots.clone(), DType::U32),
        weights: Tensor::from_storage(w, slots.clone(), probs.dtype()),
        mask: Tensor::from_storage(m, slots, probs.dtype()),
        counts: Tensor::from_storage(c, [tokens], DType::U32),
    })
}

/// Builds the expert-sorted list of the used slots of `routes` over `n_experts` experts, keeping at
/// most `capacity` slots per expert (first choices before second choices, each in token order)
/// when given.
pub fn moe_permute(routes: &Routes, n_experts: usize, capacity: Option<usize>) -> Result<Permutation> {
    const OP: &str = "moe_permute";
    let (experts, counts) = (&routes.experts, &routes.counts);
    check_same_device(OP, experts, counts)?;
    check_index(OP, experts)?;
    check_index(OP, counts)?;
    if experts.rank() != 2 || counts.dims() != [experts.dims()[0]] {
        return Err(Error::shape(OP, format!("experts must be [T, k_max] and counts [T], got {:?} and {:?}", experts.shape(), counts.shape())));
    }
    let (tokens, k_max) = (experts.dims()[0], experts.dims()[1]);
    if n_experts == 0 || n_experts > MAX_EXPERTS || k_max == 0 || k_max > MAX_SLOTS {
        return Err(Error::invalid(OP, format!("{n_experts} experts and {k_max} slots: need 1..={MAX_EXPERTS} and 1..={MAX_SLOTS}")));
    }
    check_slots(OP, tokens, k_max)?;
    let cap = match capacity {
        Some(0) => return Err(Error::invalid(OP, "capacity must be at least 1")),
        Some(c) => c.min(u32::MAX as usize - 1) as u32,
        None => u32::MAX,
    };
    let parts = match (experts.storage(), counts.storage()) {
        (Storage::Cpu(e), Storage::Cpu(c)) => cpu::moe_sparse::permute(e, c, tokens, k_max, n_experts, cap)?.map(Storage::Cpu),
        (Storage::Cuda(e), Storage::Cuda(c)) => cuda::moe_sparse::permute(e, c, tokens, k_max, n_experts, cap)?.map(Storage::Cuda),
        _ => unreachable!("devices were checked to match"),
    };
    let [offsets, sorted_slots, slot_pos, expert_counts, dropped] = parts;
    let u = |s: Storage, len: usize| Tensor::from_storage(s, [len], DType::U32);
    let slots = tokens * k_max;
    Ok(Permutation {
        offsets: u(offsets, n_experts + 1),
        sorted_slots: u(sorted_slots, slots),
        slot_pos: u(slot_pos, slots),
        expert_counts: u(expert_counts, n_experts),
        dropped: u(dropped, 1),
        tokens,
        k_max,
        n_experts,
    })
}

/// The 0/1 mask `[T, k_max]` in `dtype` of the slots `perm` kept: used, and within its expert's
/// capacity. Gate values renormalised over it are fairseq's Top2Gate's, which renormalises the
/// two gate values after capacity dropping (`normalize_gate_prob_before_dropping=False`), so a
/// token whose second choice was dropped gives its first choice the whole weight.
pub fn moe_kept(perm: &Permutation, dtype: DType) -> Result<Tensor> {
    const OP: &str = "moe_kept";
    let slots = perm.tokens * perm.k_max;
    check_index(OP, &perm.slot_pos)?;
    if perm.slot_pos.dims() != [slots] {
        return Err(Error::shape(OP, format!("slot_pos must be [{slots}] for {} tokens x {} slots, got {:?}", perm.tokens, perm.k_max, perm.slot_pos.shape())));
    }
    if !dtype.is_float() {
        return Err(Error::DType { op: OP, dtype, detail: ": the mask is a float tensor".into() });
    }
    let kept = match perm.slot_pos.storage() {
        Storage::Cpu(p) => Storage::Cpu(cpu::moe_sparse::kept(p, dtype)?),
        Storage::Cuda(p) => Storage::Cuda(cuda::moe_sparse::kept(p, slots, dtype)?),
    };
    Ok(Tensor::from_storage(kept, [perm.tokens, perm.k_max], dtype))
}

/// The sparse expert MLP: y `[T, d]` from x `[T, d]`, w1 / w2 `[E·f, d]` and router weights
/// `[T, k_max]` (x's dtype) over `perm`. With `save`, also what the backward needs.
pub fn moe_sparse_mlp(x: &Tensor, w1: &Tensor, w2: &Tensor, weights: &Tensor, perm: &Permutation, path: MoePath, save: bool) -> Result<(Tensor, Option<SparseSaved>)> {
    sparse_forward("moe_sparse_mlp", x, [w1, w2], None, weights, perm, path, save)
}

/// The gated sparse expert MLP: as `moe_sparse_mlp`, with SwiGLU experts (w1 the gate, w3 the up
/// projection, w2 the down projection, all `[E·f, d]`).
#[allow(clippy::too_many_arguments)]
pub fn moe_sparse_swiglu(x: &Tensor, w1: &Tensor, w3: &Tensor, w2: &Tensor, weights: &Tensor, perm: &Permutation, path: MoePath, save: bool) -> Result<(Tensor, Option<SparseSaved>)> {
    sparse_forward("moe_sparse_swiglu", x, [w1, w2], Some(w3), weights, perm, path, save)
}

#[allow(clippy::too_many_arguments)]
fn sparse_forward(op: &'static str, x: &Tensor, [w1, w2]: [&Tensor; 2], w3: Option<&Tensor>, weights: &Tensor, perm: &Permutation, path: MoePath, save: bool) -> Result<(Tensor, Option<SparseSaved>)> {
    let dims = check_mlp(op, x, w1, w2, w3, weights, perm)?;
    let decode = match path {
        MoePath::Auto => dims.tokens <= DECODE_MAX_TOKENS,
        MoePath::Grouped => false,
        MoePath::Decode => {
            if dims.tokens > DECODE_MAX_TOKENS {
                return Err(Error::invalid(op, format!("the decode path takes at most {DECODE_MAX_TOKENS} tokens, got {}", dims.tokens)));
            }
            true
        }
    };
    let (y, saved) = match (x.storage(), w1.storage(), w2.storage(), weights.storage(), w3.map(Tensor::storage)) {
        (Storage::Cpu(x), Storage::Cpu(w1), Storage::Cpu(w2), Storage::Cpu(w), None) => {
            let (o, s, p) = cpu_perm(op, perm)?;
            let (y, saved) = cpu::moe_sparse::forward(x, w1, w2, w, o, s, p, &dims, save)?;
            (Storage::Cpu(y), saved.map(|(u, h)| (Storage::Cpu(u), Storage::Cpu(h), None)))
        }
        (Storage::Cpu(x), Storage::Cpu(w1), Storage::Cpu(w2), Storage::Cpu(w), Some(Storage::Cpu(w3))) => {
            let (o, s, p) = cpu_perm(op, perm)?;
            let (y, saved) = cpu::moe_sparse_gated::forward(x, [w1, w3, w2], w, o, s, p, &dims, save)?;
            (Storage::Cpu(y), saved.map(|[u, v, h]| (Storage::Cpu(u), Storage::Cpu(h), Some(Storage::Cpu(v)))))
        }
        (Storage::Cuda(x), Storage::Cuda(w1), Storage::Cuda(w2), Storage::Cuda(w), w3) => {
            let w3 = match w3 {
                None => None,
                Some(Storage::Cuda(w3)) => Some(w3),
                Some(_) => unreachable!("devices were checked to match"),
            };
            let (o, s, p) = cuda_perm(op, perm)?;
            let (y, saved) = cuda::moe_sparse::forward(x, [w1, w2], w3, w, o, s, p, &dims, decode, save)?;
            (Storage::Cuda(y), saved.map(|(u, h, v)| (Storage::Cuda(u), Storage::Cuda(h), v.map(Storage::Cuda))))
        }
        _ => unreachable!("devices were checked to match"),
    };
    let dtype = x.dtype();
    let saved = saved.map(|(u, h, v)| {
        let list_rows = |s| Tensor::from_storage(s, [dims.slots(), dims.f], dtype);
        SparseSaved { u: list_rows(u), h: list_rows(h), v: v.map(list_rows) }
    });
    Ok((Tensor::from_storage(y, [dims.tokens, dims.d], dtype), saved))
}

/// Gradients of `moe_sparse_mlp` for the output gradient `dy [T, d]`.
pub fn moe_sparse_mlp_backward(dy: &Tensor, x: &Tensor, w1: &Tensor, w2: &Tensor, weights: &Tensor, perm: &Permutation, saved: &SparseSaved) -> Result<SparseGrads> {
    sparse_backward("moe_sparse_mlp_backward", dy, x, [w1, w2], None, weights, perm, saved)
}

/// Gradients of `moe_sparse_swiglu` for the output gradient `dy [T, d]` (`dw3` is set).
#[allow(clippy::too_many_arguments)]
pub fn moe_sparse_swiglu_backward(dy: &Tensor, x: &Tensor, w1: &Tensor, w3: &Tensor, w2: &Tensor, weights: &Tensor, perm: &Permutation, saved: &SparseSaved) -> Result<SparseGrads> {
    sparse_backward("moe_sparse_swiglu_backward", dy, x, [w1, w2], Some(w3), weights, perm, saved)
}

#[allow(clippy::too_many_arguments)]
fn sparse_backward(op: &'static str, dy: &Tensor, x: &Tensor, [w1, w2]: [&Tensor; 2], w3: Option<&Tensor>, weights: &Tensor, perm: &Permutation, saved: &SparseSaved) -> Result<SparseGrads> {
    let dims = check_mlp(op, x, w1, w2, w3, weights, perm)?;
    if w3.is_some() != saved.v.is_some() {
        return Err(Error::invalid(op, "the saved activations are of the other expert kind (V is saved for gated experts only)"));
    }
    for t in [dy, &saved.u, &saved.h].into_iter().chain(&saved.v) {
        check_same_device(op, x, t)?;
        check_same_dtype(op, x, t)?;
    }
    let saved_shape_ok = [&saved.u, &saved.h].into_iter().chain(&saved.v).all(|t| t.dims() == [dims.slots(), dims.f]);
    if dy.shape() != x.shape() || !saved_shape_ok {
        return Err(Error::shape(op, format!("dy {:?} must match x {:?}, and the saved U / H (/ V) be [{}, {}], got {:?} / {:?}", dy.shape(), x.shape(), dims.slots(), dims.f, saved.u.shape(), saved.h.shape())));
    }
    let sv = saved.v.as_ref().map(Tensor::storage);
    let (dx, dw1, dw2, dw3, dw) = match (dy.storage(), x.storage(), w1.storage(), w2.storage(), weights.storage(), saved.u.storage(), saved.h.storage()) {
        (Storage::Cpu(dy), Storage::Cpu(x), Storage::Cpu(w1), Storage::Cpu(w2), Storage::Cpu(w), Storage::Cpu(u), Storage::Cpu(h)) => {
            let (o, s, p) = cpu_perm(op, perm)?;
            match (w3.map(Tensor::storage), sv) {
                (Some(Storage::Cpu(w3)), Some(Storage::Cpu(v))) => {
                    let [dx, dw1, dw3, dw2, dw] = cpu::moe_sparse_gated::backward(dy, x, [w1, w3, w2], w, o, s, p, [u, v, h], &dims)?.map(Storage::Cpu);
                    (dx, dw1, dw2, Some(dw3), dw)
                }
                (None, None) => {
                    let [dx, dw1, dw2, dw] = cpu::moe_sparse::backward(dy, x, w1, w2, w, o, s, p, u, h, &dims)?.map(Storage::Cpu);
                    (dx, dw1, dw2, None, dw)
                }
                _ => unreachable!("devices and expert kinds were checked to match"),
            }
        }
        (Storage::Cuda(dy), Storage::Cuda(x), Storage::Cuda(w1), Storage::Cuda(w2), Storage::Cuda(w), Storage::Cuda(u), Storage::Cuda(h)) => {
            let (o, s, p) = cuda_perm(op, perm)?;
            let gated = match (w3.map(Tensor::storage), sv) {
                (Some(Storage::Cuda(w3)), Some(Storage::Cuda(v))) => Some((w3, v)),
                (None, None) => None,
                _ => unreachable!("devices and expert kinds were checked to match"),
            };
            let (dx, dw1, dw2, dw3, dw) = cuda::moe_sparse::backward(dy, x, [w1, w2], gated, w, o, s, p, [u, h], &dims)?;
            (Storage::Cuda(dx), Storage::Cuda(dw1), Storage::Cuda(dw2), dw3.map(Storage::Cuda), Storage::Cuda(dw))
        }
        _ => unreachable!("devices were checked to match"),
    };
    let dtype = x.dtype();
    Ok(SparseGrads {
        dx: Tensor::from_storage(dx, x.shape().clone(), dtype),
        dw1: Tensor::from_storage(dw1, w1.shape().clone(), dtype),
        dw2: Tensor::from_storage(dw2, w2.shape().clone(), dtype),
        dw3: dw3.map(|g| Tensor::from_storage(g, w1.shape().clone(), dtype)),
        dweights: Tensor::from_storage(dw, weights.shape().clone(), dtype),
    })
}

fn check_slots(op: &'static str, tokens: usize, k_max: usize) -> Result<()> {
    if tokens.saturating_mul(k_max) >= u32::MAX as usize {
        return Err(Error::invalid(op, format!("{tokens} tokens x {k_max} slots overflow the u32 slot index")));
    }
    Ok(())
}

fn check_mlp(op: &'static str, x: &Tensor, w1: &Tensor, w2: &Tensor, w3: Option<&Tensor>, weights: &Tensor, perm: &Permutation) -> Result<SparseDims> {
    check_float(op, x)?;
    if let Some(w3) = w3 {
        if w3.shape() != w1.shape() {
            return Err(Error::shape(op, format!("w3 {:?} must match w1 {:?}", w3.shape(), w1.shape())));
        }
    }
    for t in [w1, w2, weights].into_iter().chain(w3) {
        check_same_device(op, x, t)?;
        check_same_dtype(op, x, t)?;
    }
    for t in [&perm.offsets, &perm.sorted_slots, &perm.slot_pos] {
        check_same_device(op, x, t)?;
        check_index(op, t)?;
    }
    if x.rank() != 2 || w1.rank() != 2 || w1.shape() != w2.shape() || w1.dims()[1] != x.dims()[1] {
        return Err(Error::shape(op, format!("needs x [T, d] and w1 = w2 [E·f, d], got {:?}, {:?}, {:?}", x.shape(), w1.shape(), w2.shape())));
    }
    let (tokens, d, n) = (x.dims()[0], x.dims()[1], perm.n_experts);
    if w1.dims()[0] % n != 0 || w1.dims()[0] == 0 {
        return Err(Error::shape(op, format!("w1 {:?} does not split into {n} experts", w1.shape())));
    }
    if perm.tokens != tokens || weights.dims() != [tokens, perm.k_max] || perm.offsets.dims() != [n + 1] || perm.slot_pos.dims() != [tokens * perm.k_max] {
        return Err(Error::shape(op, format!("x has {tokens} tokens, weights {:?}; the permutation is for {} tokens x {} slots over {n} experts", weights.shape(), perm.tokens, perm.k_max)));
    }
    Ok(SparseDims { tokens, d, f: w1.dims()[0] / n, n_experts: n, k_max: perm.k_max })
}

type Perm<'a, S> = (&'a S, &'a S, &'a S);

fn cpu_perm<'a>(op: &'static str, p: &'a Permutation) -> Result<Perm<'a, crate::CpuStorage>> {
    match (p.offsets.storage(), p.sorted_slots.storage(), p.slot_pos.storage()) {
        (Storage::Cpu(o), Storage::Cpu(s), Storage::Cpu(q)) => Ok((o, s, q)),
        _ => Err(Error::invalid(op, "the permutation lives on another device than x")),
    }
}

fn cuda_perm<'a>(op: &'static str, p: &'a Permutation) -> Result<Perm<'a, cuda::CudaStorage>> {
    match (p.offsets.storage(), p.sorted_slots.storage(), p.slot_pos.storage()) {
        (Storage::Cuda(o), Storage::Cuda(s), Storage::Cuda(q)) => Ok((o, s, q)),
        _ => Err(Error::invalid(op, "the permutation lives on another device than x")),
    }
}
