//! Sparse MoE on the CPU: the reference for moe_route.cu, moe_sparse.cu and moe_decode.cu, and the
//! path CPU training of the top-k baseline runs on.
//!
//! It follows the kernels' arithmetic where that decides the answer: routing compares N·p > ε in
//! the probabilities' arithmetic type (f32 for f32 / bf16 / f16, as the kernel does) and orders by
//! (probability descending, NaN first, expert ascending); the renormalising sum runs in slot order;
//! intermediates the GPU stores (U, H, the expert outputs, dG, dU) are rounded to the storage type
//! here too; sums over a token's slots run in slot order. GeLU is the tanh form evaluated through
//! one `exp` (the SIMD `gated_gelu` of the dense CPU path): the same function as the kernels'
//! `tanh`, equal to rounding, and many times cheaper than libm's scalar `tanh`.
//!
//! Speed: decode-sized batches without saved activations take moe_sparse_decode.rs (one parallel
//! loop over slices of the experts' hidden units; moe_sparse_gated.rs's SwiGLU experts too); larger
//! f32 batches without saved activations take moe_sparse_fused.rs on AVX-512 machines when d and f
//! are multiples of 64 (the same blocks and ranks, with both products, the GeLU and the weighted
//! add in one register-tiled loop). Otherwise the forward runs blocks of at most `ROW_BLOCK` list
//! entries of one expert and one slot rank (a token's first choice, its second, ...): each task
//! gathers its tokens' rows, runs both products on them single-threaded through the `gemm` crate,
//! and adds its weighted rows into its tokens' rows of an accumulator in the arithmetic type
//! (`add_by_rank`). A token has one slot of each rank, so the blocks of one rank add into distinct
//! rows and run as one parallel loop; the ranks run one after another, so every token sums its
//! slots in slot order, as the CUDA kernel does. No list-ordered copy of the expert outputs is
//! written and read back (at ds-moe-tiny's shape that buffer was twice the size of y, and the pass
//! that summed it a tenth of the layer's time). The backward runs one task per busy expert, as the
//! weight gradients reduce over the expert's whole list. All writes of a task are to its own slices
//! or rows, so the result is the same for any number of threads.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::elem::prelude::*;
use super::elem::{indices, with_float, Acc, Elem, Float};
use super::matmul::{product_serial, product_serial_vec};
use super::moe_sparse_decode;
#[cfg(target_arch = "x86_64")]
use super::moe_sparse_fused;
use super::skinny;
use super::par::{filled, for_each_chunk, worth_it};
use super::simd::multiversion;
use super::profile::{timed, Cost};
use crate::backend::{RouteMode, SparseDims, DROPPED};
use crate::{CpuStorage, DType, Error, Result};

/// The routing order as one integer, larger ahead: larger probability first, NaN before
/// everything, ties (NaNs among themselves, and -0 with +0) to the lower expert index (as `ahead`
/// in common.cuh). The value's rank is its f64 bit pattern mapped to an order-preserving unsigned
/// integer (exact for f32 and f64); the expert's index, inverted, breaks ties in the low half.
fn ahead_key<A: Acc>(v: A, e: usize) -> u128 {
    let v = v.to_f64().unwrap_or(f64::NAN) + 0.0;
    let bits = v.to_bits();
    let rank = if v.is_nan() {
        u64::MAX
    } else if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    };
    (rank as u128) << 64 | (u64::MAX - e as u64) as u128
}

/// `best` = the indices of `row`'s `k` elements ahead of the rest (`ahead_key`), in that order:
/// the first `k` of a full sort, found by insertion into a list of at most `k` keys. Keys are
/// distinct, so the result is exactly the sort's prefix; most elements lose to the list's last
/// key in one integer comparison.
fn ahead_k<T: Float>(row: &[T], k: usize, keys: &mut Vec<u128>, best: &mut Vec<usize>) {
    keys.resize(k, 0);
    let mut len = 0;
    for (e, v) in row.iter().enumerate() {
        let key = ahead_key(v.widen(), e);
        if len == k {
            match keys.last() {
                Some(&last) if key > last => len -= 1,
                _ => continue,
            }
        }
        let mut at = len;
        while at > 0 && keys[at - 1] < key {
            keys[at] = keys[at - 1];
            at -= 1;
        }
        keys[at] = key;
        len += 1;
    }
    best.clear();
    best.extend(keys[..len].iter().map(|&key| (u64::MAX - key as u64) as usize));
}

pub(crate) fn route(probs: &CpuStorage, tokens: usize, n: usize, mode: RouteMode, renormalise: bool) -> Result<[CpuStorage; 4]> {
    let cost = || Cost::streaming(tokens * n, 3 * tokens * mode.k_max(), probs.dtype().size_in_bytes(), 0);
    timed(|| "moe_route".into(), cost, || with_float!("moe_route", probs, |p| Ok(route_typed(p, tokens, n, mode, renormalise))))
}

fn route_typed<T: Float>(p: &[T], tokens: usize, n: usize, mode: RouteMode, renormalise: bool) -> [CpuStorage; 4] {
    let k_max = mode.k_max();
    let above = |row: &[T], eps: f64| -> usize {
        let nf = <T::Acc as Acc>::of(n as f64);
        // Same operation order as the kernel: (N as float) · p > (eps as float).
        row.iter().filter(|v| nf * v.widen() > <T::Acc as Acc>::of(eps)).count().max(1)
    };
    let batch_k = match mode {
        RouteMode::ThresholdK { eps, .. } if tokens > 0 => {
            let total: usize = p.chunks(n).map(|row| above(row, eps)).sum();
            ((total as f64 / tokens as f64).round() as usize).clamp(1, k_max)
        }
        _ => k_max,
    };
    let (mut experts, mut weights, mut mask, mut counts) = (vec![0u32; tokens * k_max], vec![T::narrow(<T::Acc>::zero()); tokens * k_max], vec![T::narrow(<T::Acc>::zero()); tokens * k_max], vec![0u32; tokens]);
    // One token: its experts in order, their weights and mask over the k_max slots, its count.
    let token = |(keys, order_buf): &mut (Vec<u128>, Vec<usize>), t: usize, (experts, weights, mask, count): (&mut [u32], &mut [T], &mut [T], &mut u32)| {
        let row = &p[t * n..(t + 1) * n];
        let used_count = match mode {
            RouteMode::Threshold { eps, .. } => above(row, eps).min(k_max),
            _ => batch_k,
        };
        ahead_k(row, k_max, keys, order_buf);
        let sum = order_buf[..used_count].iter().fold(<T::Acc>::zero(), |s, &e| s + row[e].widen());
        for j in 0..k_max {
            let used = j < used_count;
            let e = if used { order_buf[j] } else { order_buf[0] };
            experts[j] = e as u32;
            let v = row[e].widen();
            weights[j] = T::narrow(if !used { <T::Acc>::zero() } else if renormalise { v / sum } else { v });
            mask[j] = T::narrow(if used { <T::Acc>::one() } else { <T::Acc>::zero() });
        }
        *count = used_count as u32;
    };
    // Tokens are independent (batch_k is fixed above), so they run in parallel.
    let (slots, scratch) = (k_max.max(1), || (Vec::with_capacity(k_max), Vec::with_capacity(k_max)));
    // A token's work: a key per expert, and a few insertions into its list of k_max.
    if worth_it(tokens * n * (1 + k_max)) {
        let per_token = experts.par_chunks_mut(slots).zip(weights.par_chunks_mut(slots)).zip(mask.par_chunks_mut(slots)).zip(counts.par_iter_mut());
        per_token.enumerate().for_each_init(scratch, |buf, (t, (((e, w), m), c))| token(buf, t, (e, w, m, c)));
    } else {
        let mut buf = scratch();
        let per_token = experts.chunks_mut(slots).zip(weights.chunks_mut(slots)).zip(mask.chunks_mut(slots)).zip(counts.iter_mut());
        for (t, (((e, w), m), c)) in per_token.enumerate() {
            token(&mut buf, t, (e, w, m, c));
        }
    }
    [CpuStorage::U32(experts), T::wrap(weights), T::wrap(mask), CpuStorage::U32(counts)]
}

/// Stable counting sort of the used slots by expert, with the capacity limit, over the slots in
/// priority order (every token's first choice in token order, then every second choice, ...: the
/// order of GShard's and fairseq's Top2Gate). Returns (offsets, sorted_slots, slot_pos,
/// expert_counts, dropped).
pub(crate) fn permute(experts: &CpuStorage, counts: &CpuStorage, tokens: usize, k_max: usize, n: usize, capacity: u32) -> Result<[CpuStorage; 5]> {
    timed(|| "moe_permute".into(), || Cost::streaming(tokens * (k_max + 1), 3 * tokens * k_max, 4, 0), || permute_lists(experts, counts, tokens, k_max, n, capacity))
}

fn permute_lists(experts: &CpuStorage, counts: &CpuStorage, tokens: usize, k_max: usize, n: usize, capacity: u32) -> Result<[CpuStorage; 5]> {
    let (experts, counts) = (indices("moe_permute", experts)?, indices("moe_permute", counts)?);
    let slots = tokens * k_max;
    if experts.len() < slots || counts.len() < tokens {
        return Err(Error::shape("moe_permute", format!("{tokens} tokens x {k_max} slots, got {} experts and {} counts", experts.len(), counts.len())));
    }
    let used = |s: usize| (s % k_max) < counts[s / k_max] as usize;
    let by_priority = || (0..k_max).flat_map(move |j| (0..tokens).map(move |t| t * k_max + j)).filter(move |&s| used(s));
    let mut total = vec![0u32; n];
    for s in by_priority() {
        let e = experts[s] as usize;
        if e >= n {
            return Err(Error::IndexOutOfRange { op: "moe_permute", index: e, size: n });
        }
        total[e] += 1;
    }
    let mut offsets = vec![0u32; n + 1];
    let mut dropped = 0u32;
    for e in 0..n {
        let kept = total[e].min(capacity);
        offsets[e + 1] = offsets[e] + kept;
        dropped += total[e] - kept;
    }
    let (mut sorted, mut slot_pos, mut rank) = (vec![DROPPED; slots], vec![DROPPED; slots], vec![0u32; n]);
    for s in by_priority() {
        let e = experts[s] as usize;
        if rank[e] < capacity {
            let pos = offsets[e] + rank[e];
            sorted[pos as usize] = s as u32;
            slot_pos[s] = pos;
        }
        rank[e] += 1;
    }
    Ok([CpuStorage::U32(offsets), CpuStorage::U32(sorted), CpuStorage::U32(slot_pos), CpuStorage::U32(total), CpuStorage::U32(vec![dropped])])
}

/// The reference for `moe_kept_<T>` (moe_route.cu): 1 where the slot is kept (its list position
/// is not `DROPPED`), else 0, in `dtype`.
pub(crate) fn kept(slot_pos: &CpuStorage, dtype: DType) -> Result<CpuStorage> {
    let pos = indices("moe_kept", slot_pos)?;
    let one = |s: usize| if pos[s] != DROPPED { 1.0 } else { 0.0 };
    Ok(match dtype {
        DType::F32 => CpuStorage::F32((0..pos.len()).map(|s| one(s) as f32).collect()),
        DType::F64 => CpuStorage::F64((0..pos.len()).map(one).collect()),
        DType::BF16 => CpuStorage::BF16((0..pos.len()).map(|s| half::bf16::from_f64(one(s))).collect()),
        DType::F16 => CpuStorage::F16((0..pos.len()).map(|s| half::f16::from_f64(one(s))).collect()),
        DType::U32 => return Err(Error::DType { op: "moe_kept", dtype, detail: ": the mask is a float tensor".into() }),
    })
}

/// Rows per task of the parallel loops: an expert's list entries are cut into blocks of this
/// many, so one busy expert spreads over the cores while each task's products stay large enough
/// for the SIMD kernels. The split depends on the routing only, never on the thread count. At
/// small model widths (d 128, experts of 64) a block's two products are a few hundred kFLOP, so
/// blocks of 64 rows spent a large share in each `gemm` call's fixed cost and in packing the
/// expert's weights again per block; 256 rows still leave several blocks per core.
pub(super) const ROW_BLOCK: usize = 256;

/// The list geometry shared by forward and backward.
pub(super) struct Lists<'a> {
    offsets: &'a [u32],
    sorted: &'a [u32],
    slot_pos: &'a [u32],
    pub(super) dims: SparseDims,
}

/// One task: `rows` list entries of `expert` starting at entry `first`.
#[derive(Clone, Copy)]
pub(super) struct Block {
    pub(super) expert: usize,
    pub(super) first: usize,
    pub(super) rows: usize,
}

impl Lists<'_> {
    /// List entries in use (the experts' entries back to back from 0).
    pub(super) fn total(&self) -> usize {
        *self.offsets.last().unwrap_or(&0) as usize
    }
    /// The busy experts' entries cut into blocks of at most `max_rows`, in list order.
    pub(super) fn blocks(&self, max_rows: usize) -> Vec<Block> {
        self.cut(max_rows, false)
    }
    /// `blocks`, also cut where the slot rank changes, so that each block holds one rank.
    /// moe_permute lists an expert's first choices before its second choices (and so on), so an
    /// expert's entries make one run per rank.
    pub(super) fn ranked_blocks(&self, max_rows: usize) -> Vec<Block> {
        self.cut(max_rows, true)
    }
    fn cut(&self, max_rows: usize, by_rank: bool) -> Vec<Block> {
        let mut out = Vec::new();
        for e in 0..self.dims.n_experts {
            let (mut first, end) = (self.offsets[e] as usize, self.offsets[e + 1] as usize);
            while first < end {
                let rank = self.rank(first);
                let rows = (first..end).take(max_rows.max(1)).take_while(|&i| !by_rank || self.rank(i) == rank).count();
                out.push(Block { expert: e, first, rows });
                first += rows;
            }
        }
        out
    }
    /// The slot rank of list entry `i`: 0 for a token's first choice, 1 for its second, ...
    fn rank(&self, i: usize) -> usize {
        self.slot(i) % self.dims.k_max
    }
    /// Expert e's `[f, d]` rows of the stacked weights `w`, in the arithmetic type (borrowed for
    /// f32 / f64).
    pub(super) fn slab<'w, T: Float>(&self, w: &'w [T], e: usize) -> Cow<'w, [T::Acc]> {
        let len = self.dims.f * self.dims.d;
        T::widen_slice(&w[e * len..(e + 1) * len])
    }
    pub(super) fn slot(&self, i: usize) -> usize {
        self.sorted[i] as usize
    }
    /// Per-entry values (list order) put back in slot order, `slots` long, `zero` where no entry
    /// names a slot.
    pub(super) fn in_slot_order<T: Copy>(&self, list: &[T], slots: usize, zero: T) -> Vec<T> {
        let mut out = vec![zero; slots];
        for (i, &v) in list.iter().enumerate() {
            out[self.slot(i)] = v;
        }
        out
    }
    pub(super) fn token(&self, i: usize) -> usize {
        self.slot(i) / self.dims.k_max
    }
    /// `dst` = rows `src[token(i)]` (row length `len`) for the entries of `b`, widened.
    pub(super) fn gather<T: Float>(&self, dst: &mut Vec<T::Acc>, src: &[T], b: Block, len: usize) {
        gather_rows(self, dst, src, b, len)
    }
    /// Adds block `b`'s expert rows `ye` (row length d), each scaled by its slot's weight and
    /// rounded to the storage type (as the CUDA kernel stores it), into the token rows `out`.
    pub(super) fn add_weighted<T: Float>(&self, out: &mut SumRows<T::Acc>, ye: &[T::Acc], w: &[T], b: Block) {
        add_weighted_rows(self, out, ye, w, b)
    }
    /// y[t] = Σ_j rows[slot_pos[t·k_max + j]] over the token's kept slots, in slot order (`rows`
    /// in list order, row length d), in parallel over tokens.
    pub(super) fn combine<T: Float>(&self, rows: &[T]) -> Vec<T> {
        let SparseDims { tokens, d, k_max, .. } = self.dims;
        let fill = |y: &mut [MaybeUninit<T>]| {
            for_each_chunk(y, d, worth_it(tokens * d * k_max), || vec![<T::Acc>::zero(); d], |acc, t, out| {
                acc.iter_mut().for_each(|a| *a = <T::Acc>::zero());
                for &pos in self.slot_pos[t * k_max..(t + 1) * k_max].iter().filter(|&&p| p != DROPPED) {
                    let pos = pos as usize;
                    acc.iter_mut().zip(&rows[pos * d..(pos + 1) * d]).for_each(|(a, v)| *a += v.widen());
                }
                out.iter_mut().zip(acc.iter()).for_each(|(o, a)| {
                    o.write(T::narrow(*a));
                });
            })
        };
        // SAFETY: the chunks are the tokens' rows of d, each written whole from its sum.
        unsafe { filled(tokens * d, fill) }
    }
}

#[inline(always)]
fn gather_rows_body<T: Float>(l: &Lists, dst: &mut Vec<T::Acc>, src: &[T], b: Block, len: usize) {
    dst.clear();
    for i in b.first..b.first + b.rows {
        dst.extend(src[l.token(i) * len..][..len].iter().map(|v| v.widen()));
    }
}

#[inline(always)]
fn add_weighted_body<T: Float>(l: &Lists, out: &mut SumRows<T::Acc>, ye: &[T::Acc], w: &[T], b: Block) {
    let rows = ye.chunks_exact(l.dims.d).enumerate();
    match out {
        // `0 + term`: the value a sum started at zero holds after its first term (a -0 term
        // gives +0), without zeroing the rows first and reading them back.
        SumRows::First(out) => rows.zip(out.iter_mut()).for_each(|((r, row), o)| {
            let ws = w[l.slot(b.first + r)].widen();
            o.iter_mut().zip(row).for_each(|(a, v)| {
                a.write(<T::Acc>::zero() + T::narrow(*v * ws).widen());
            });
        }),
        SumRows::Later(out) => rows.zip(out.iter_mut()).for_each(|((r, row), o)| {
            let ws = w[l.slot(b.first + r)].widen();
            o.iter_mut().zip(row).for_each(|(a, v)| *a += T::narrow(*v * ws).widen());
        }),
    }
}

// The per-row loops of a block at the CPU's widest SIMD width: compiled for the baseline they
// ran four lanes wide, and the gather and weighted add were a sixth of the layer's time.
multiversion! {
    /// `Lists::gather`'s loop.
    gather_rows<T: Float>(l: &Lists<'_>, dst: &mut Vec<T::Acc>, src: &[T], b: Block, len: usize) -> () = gather_rows_body
}
multiversion! {
    /// `Lists::add_weighted`'s loops.
    add_weighted_rows<T: Float>(l: &Lists<'_>, out: &mut SumRows<'_, T::Acc>, ye: &[T::Acc], w: &[T], b: Block) -> () = add_weighted_body
}

/// The token rows of one block's list entries in `add_by_rank`'s sum, in entry order: not yet
/// written for the first slot rank, whose terms are written rather than added; holding the earlier
/// ranks' sum for the later ones.
pub(super) enum SumRows<'a, A> {
    First(Vec<&'a mut [MaybeUninit<A>]>),
    Later(Vec<&'a mut [A]>),
}

/// The forward's per-block tasks, rank by rank (see the module comment): `run(scratch, block,
/// data, out)` computes the block's expert rows and adds them into `out`, its tokens' rows of the
/// `[tokens, d]` sum (`Lists::add_weighted`), which is returned. `blocks` come from
/// `ranked_blocks`; the blocks of one rank run in parallel when `parallel`. The sum is not zeroed
/// first: the first rank writes its tokens' rows, then the rows of tokens without a first-rank
/// entry (dropped by a capacity) are set to zero, before the later ranks add to them; so `run`
/// must write every element of the `SumRows::First` rows it is given, as `add_weighted` does. (At
/// ds-moe-tiny's shape, 2,048 tokens of d 128, the zeroing and the first rank's reads of the
/// zeros were about 5 % of the layer.)
pub(super) fn add_by_rank<A: Acc, S, X: Send>(
    l: &Lists,
    tasks: Vec<(Block, X)>,
    parallel: bool,
    scratch: impl Fn() -> S + Sync + Send,
    run: impl Fn(&mut S, Block, X, &mut SumRows<A>) + Sync + Send,
) -> Vec<A> {
    let SparseDims { tokens, d, k_max, .. } = l.dims;
    if d == 0 {
        return Vec::new();
    }
    let mut by_rank: Vec<Vec<(Block, X)>> = (0..k_max.max(1)).map(|_| Vec::new()).collect();
    for (b, x) in tasks {
        by_rank[l.rank(b.first)].push((b, x));
    }
    let fill = |acc: &mut [MaybeUninit<A>]| {
        for (rank, phase) in by_rank.into_iter().enumerate() {
            let mut rows: Vec<Option<&mut [MaybeUninit<A>]>> = acc.chunks_mut(d).map(Some).collect();
            let phase: Vec<_> = phase
                .into_iter()
                .map(|(b, x)| {
                    // `lists` checked that entries and slots correspond one to one, so a token has
                    // at most one entry of each rank.
                    let out: Vec<&mut [MaybeUninit<A>]> = (b.first..b.first + b.rows).map(|i| rows[l.token(i)].take().expect("one entry per token and rank")).collect();
                    let out = if rank == 0 {
                        SumRows::First(out)
                    } else {
                        // SAFETY: the first phase wrote every row (below), and MaybeUninit<A>
                        // has A's layout.
                        SumRows::Later(out.into_iter().map(|o| unsafe { &mut *(o as *mut [MaybeUninit<A>] as *mut [A]) }).collect())
                    };
                    (b, x, out)
                })
                .collect();
            let task = |s: &mut S, (b, x, mut out): (Block, X, SumRows<A>)| run(s, b, x, &mut out);
            if parallel {
                phase.into_par_iter().for_each_init(&scratch, task);
            } else {
                let mut s = scratch();
                phase.into_iter().for_each(|t| task(&mut s, t));
            }
            if rank == 0 {
                // The rows no first-rank entry wrote: tokens whose first choice a capacity dropped.
                rows.into_iter().flatten().for_each(|row| row.fill(MaybeUninit::new(A::zero())));
            }
        }
    };
    // SAFETY: the first phase writes every row, through its blocks or with zeros.
    unsafe { filled(tokens * d, fill) }
}

/// `buf` (rows of `width`, list order) cut into one slice per block; empty slices when `buf` is.
pub(super) fn split_blocks<'b, X>(mut buf: &'b mut [X], blocks: &[Block], width: usize) -> Vec<&'b mut [X]> {
    let mut out = Vec::with_capacity(blocks.len());
    for b in blocks {
        let take = if buf.is_empty() { 0 } else { b.rows * width };
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(take);
        out.push(head);
        buf = tail;
    }
    out
}

pub(super) fn lists<'a>(offsets: &'a CpuStorage, sorted: &'a CpuStorage, slot_pos: &'a CpuStorage, dims: &SparseDims) -> Result<Lists<'a>> {
    const OP: &str = "moe_sparse_mlp";
    let l = Lists { offsets: indices(OP, offsets)?, sorted: indices(OP, sorted)?, slot_pos: indices(OP, slot_pos)?, dims: *dims };
    let total = *l.offsets.last().unwrap_or(&0) as usize;
    if l.offsets.len() != dims.n_experts + 1 || l.offsets[0] != 0 || total > dims.slots() || l.offsets.windows(2).any(|w| w[0] > w[1]) {
        return Err(Error::invalid(OP, "offsets are not a prefix sum over the experts within the slot count"));
    }
    if let Some(&bad) = l.sorted[..total].iter().find(|&&s| s as usize >= dims.slots()) {
        return Err(Error::IndexOutOfRange { op: OP, index: bad as usize, size: dims.slots() });
    }
    if l.slot_pos.len() != dims.slots() || l.slot_pos.iter().any(|&p| p != DROPPED && p as usize >= total) {
        return Err(Error::invalid(OP, "slot positions must name list entries in use (or be DROPPED)"));
    }
    if (0..total).any(|i| l.slot_pos[l.slot(i)] as usize != i) {
        return Err(Error::invalid(OP, "each list entry's slot must name that entry back (slot positions and sorted slots are inverse)"));
    }
    Ok(l)
}

/// The cost of `products` GEMMs over the list entries in use, for the profile.
pub(super) fn sparse_cost(l: &Lists, products: usize, elem: usize) -> Cost {
    let SparseDims { tokens, d, f, .. } = l.dims;
    let total = l.total();
    Cost { bytes: ((2 * tokens * d + 2 * l.dims.n_experts * f * d + 2 * total * f) * elem) as u64, flops: (2 * products * total * d * f) as u64 }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(x: &CpuStorage, w1: &CpuStorage, w2: &CpuStorage, weights: &CpuStorage, offsets: &CpuStorage, sorted: &CpuStorage, slot_pos: &CpuStorage, dims: &SparseDims, save: bool) -> Result<(CpuStorage, Option<(CpuStorage, CpuStorage)>)> {
    let l = lists(offsets, sorted, slot_pos, dims)?;
    timed(|| "moe_sparse_forward".into(), || sparse_cost(&l, 2, x.dtype().size_in_bytes()), || {
        #[cfg(target_arch = "x86_64")]
        if let (false, CpuStorage::F32(x), CpuStorage::F32(w1), CpuStorage::F32(w2), CpuStorage::F32(w)) = (save, x, w1, w2, weights) {
            if !moe_sparse_decode::applies(&l) && moe_sparse_fused::applies(&l) {
                return Ok((CpuStorage::F32(moe_sparse_fused::forward(x, w1, w2, w, &l)), None));
            }
        }
        with_float!("moe_sparse_mlp", x, |x| {
            let (w1, w2, w) = (Elem::view("moe_sparse_mlp", w1)?, Elem::view("moe_sparse_mlp", w2)?, Elem::view("moe_sparse_mlp", weights)?);
            Ok(forward_typed(x, w1, w2, w, &l, save))
        })
    })
}

/// Runs a backward's per-block tasks, on the pool when `parallel`.
pub(super) fn run_tasks<X: Send>(tasks: Vec<X>, parallel: bool, run: impl Fn(X) + Sync + Send) {
    if parallel {
        tasks.into_par_iter().for_each(run);
    } else {
        tasks.into_iter().for_each(run);
    }
}

/// x rows `a` of block `b` times its expert's `[f, d]` slab of `w`, transposed (`[rows, f]`), or not
/// (`[rows, d]` from `[rows, f]` rows), in a new vector: a few rows (decode) read the weights in
/// place, more widen them for the GEMM, whose output is written without zeroing it first.
pub(super) fn expert_product<T: Float>(a: &[T::Acc], w: &[T], l: &Lists, b: Block, transposed: bool) -> Vec<T::Acc> {
    let SparseDims { d, f, .. } = l.dims;
    let (n, k) = if transposed { (f, d) } else { (d, f) };
    if b.rows <= skinny::MAX_ROWS {
        skinny::product::<T>(a, &w[b.expert * f * d..(b.expert + 1) * f * d], b.rows, n, k, transposed)
    } else {
        product_serial_vec(a, &l.slab(w, b.expert), (b.rows, n, k), (false, transposed))
    }
}

/// Per block (`add_by_rank`): gather the tokens' rows, `U = X·W1ᵀ`, `H = gelu(U)`, `Y = H·W2`,
/// each row scaled by its slot's weight and added into its token's row of y.
fn forward_typed<T: Float>(x: &[T], w1: &[T], w2: &[T], w: &[T], l: &Lists, save: bool) -> (CpuStorage, Option<(CpuStorage, CpuStorage)>) {
    if !save && moe_sparse_decode::applies(l) {
        return (T::wrap(l.combine(&moe_sparse_decode::expert_rows(x, w1, None, w2, w, l))), None);
    }
    let SparseDims { d, f, .. } = l.dims;
    let slots = l.dims.slots();
    let zero = T::narrow(<T::Acc>::zero());
    let (mut u, mut h) = if save { (vec![zero; slots * f], vec![zero; slots * f]) } else { (Vec::new(), Vec::new()) };
    let blocks = l.ranked_blocks(ROW_BLOCK);
    let parallel = worth_it(l.total() * d * f);
    // The scratch kept per worker is the gathered X rows; U, H and Y come from the host pool
    // unzeroed, each written whole.
    let run = |xg: &mut Vec<T::Acc>, b: Block, (u, h): (&mut [T], &mut [T]), out: &mut SumRows<T::Acc>| {
        l.gather(xg, x, b, d);
        let ue = expert_product::<T>(xg, w1, l, b, true);
        // SAFETY: `gated_gelu_into` writes every element of its output.
        let mut he = unsafe { filled(ue.len(), |dst| <T::Acc>::gated_gelu_into(&ue, <T::Acc>::one(), dst)) };
        for (j, hv) in he.iter_mut().enumerate() {
            if save {
                u[j] = T::narrow(ue[j]);
                h[j] = T::narrow(*hv);
            }
            *hv = T::narrow(*hv).widen();
        }
        let ye = expert_product::<T>(&he, w2, l, b, false);
        l.add_weighted(out, &ye, w, b);
    };
    let tasks: Vec<_> = blocks.iter().copied().zip(split_blocks(&mut u, &blocks, f).into_iter().zip(split_blocks(&mut h, &blocks, f))).collect();
    let y = T::narrow_vec(add_by_rank(l, tasks, parallel, Vec::new, run));
    (T::wrap(y), save.then(|| (T::wrap(u), T::wrap(h))))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(dy: &CpuStorage, x: &CpuStorage, w1: &CpuStorage, w2: &CpuStorage, weights: &CpuStorage, offsets: &CpuStorage, sorted: &CpuStorage, slot_pos: &CpuStorage, u: &CpuStorage, h: &CpuStorage, dims: &SparseDims) -> Result<[CpuStorage; 4]> {
    const OP: &str = "moe_sparse_mlp_backward";
    let l = lists(offsets, sorted, slot_pos, dims)?;
    timed(|| "moe_sparse_backward".into(), || sparse_cost(&l, 4, x.dtype().size_in_bytes()), || {
        with_float!(OP, dy, |dy| {
            let v = |s| Elem::view(OP, s);
            Ok(backward_typed(dy, v(x)?, v(w1)?, v(w2)?, v(weights)?, v(u)?, v(h)?, &l))
        })
    })
}

/// The weight gradients reduce over an expert's whole list, so the parallel loop runs over experts
/// (each writes its own slabs of dW1 / dW2); per expert: `dG = dY·W2ᵀ`, `dU = w·dG·gelu'(U)` with
/// the slot weight's gradient `Σ dG·H`, `dX = dU·W1`, `dW1 = dUᵀ·X`, `dW2 = Hᵀ·(w·dY)`. dX rows
/// and weight gradients land in list order and are put in slot order afterwards.
#[allow(clippy::too_many_arguments)]
fn backward_typed<T: Float>(dy: &[T], x: &[T], w1: &[T], w2: &[T], w: &[T], u: &[T], h: &[T], l: &Lists) -> [CpuStorage; 4] {
    let SparseDims { d, f, .. } = l.dims;
    let (slots, total) = (l.dims.slots(), l.total());
    let zero = T::narrow(<T::Acc>::zero());
    let (mut dw1, mut dw2) = (vec![zero; w1.len()], vec![zero; w2.len()]);
    let (mut dw_list, mut dx_list) = (vec![zero; total], vec![zero; total * d]);
    let experts = l.blocks(usize::MAX);
    let dw1_parts: Vec<&mut [T]> = dw1.chunks_mut(f * d).collect();
    let dw2_parts: Vec<&mut [T]> = dw2.chunks_mut(f * d).collect();
    let mut by_expert: Vec<Option<(&mut [T], &mut [T])>> = dw1_parts.into_iter().zip(dw2_parts).map(Some).collect();
    let tasks: Vec<_> = experts
        .iter()
        .zip(split_blocks(&mut dw_list, &experts, 1))
        .zip(split_blocks(&mut dx_list, &experts, d))
        .map(|((b, dwl), dxl)| {
            let (g1, g2) = by_expert[b.expert].take().expect("one block per expert");
            (*b, dwl, dxl, g1, g2)
        })
        .collect();
    let run = |(b, dwl, dxl, g1, g2): (Block, &mut [T], &mut [T], &mut [T], &mut [T])| {
        let (mut dy_rows, mut x_rows) = (Vec::new(), Vec::new());
        l.gather(&mut dy_rows, dy, b, d);
        let mut dg = vec![<T::Acc>::zero(); b.rows * f];
        product_serial(&mut dg, &dy_rows, &l.slab(w2, b.expert), b.rows, f, d, false, true);
        // dG and dU are rounded to the storage type element by element, as the CUDA kernel
        // stores them; in between, the SIMD GeLU derivative runs over the whole row.
        let he: Vec<T::Acc> = h[b.first * f..(b.first + b.rows) * f].iter().map(|v| v.widen()).collect();
        let mut u_row = Vec::with_capacity(f);
        for (r, (g, h_row)) in dg.chunks_exact_mut(f).zip(he.chunks_exact(f)).enumerate() {
            g.iter_mut().for_each(|v| *v = T::narrow(*v).widen());
            dwl[r] = T::narrow(<T::Acc>::dot(g, h_row));
            u_row.clear();
            u_row.extend(u[(b.first + r) * f..][..f].iter().map(|v| v.widen()));
            <T::Acc>::gelu_backward(g, &u_row, w[l.slot(b.first + r)].widen());
            g.iter_mut().for_each(|v| *v = T::narrow(*v).widen());
        }
        let du = dg;
        let mut dxe = vec![<T::Acc>::zero(); b.rows * d];
        product_serial(&mut dxe, &du, &l.slab(w1, b.expert), b.rows, d, f, false, false);
        dxl.iter_mut().zip(&dxe).for_each(|(o, v)| *o = T::narrow(*v));
        l.gather(&mut x_rows, x, b, d);
        let mut acc = vec![<T::Acc>::zero(); f * d];
        product_serial(&mut acc, &du, &x_rows, f, d, b.rows, true, false);
        g1.iter_mut().zip(&acc).for_each(|(o, v)| *o = T::narrow(*v));
        for r in 0..b.rows {
            let ws = w[l.slot(b.first + r)].widen();
            dy_rows[r * d..(r + 1) * d].iter_mut().for_each(|v| *v = T::narrow(*v * ws).widen());
        }
        product_serial(&mut acc, &he, &dy_rows, f, d, b.rows, true, false);
        g2.iter_mut().zip(&acc).for_each(|(o, v)| *o = T::narrow(*v));
    };
    run_tasks(tasks, worth_it(total * d * f), run);
    let dweights = l.in_slot_order(&dw_list, slots, zero);
    [T::wrap(l.combine(&dx_list)), T::wrap(dw1), T::wrap(dw2), T::wrap(dweights)]
}
