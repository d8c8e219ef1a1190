//! Causal attention on the CPU with an online softmax (FlashAttention-2, Dao 2023): the reference
//! for the CUDA kernels and the path CPU training takes. No `[T, T]` score matrix exists at any
//! size; the extra memory is O(T·d) (tile buffers, the output and one log-sum-exp per row).
//!
//! Layout (see `AttentionDims`): q and out `[tokens, q_heads, d]`, k and v `[tokens, kv_heads, d]`,
//! lse `[tokens, q_heads]`, packed sequences cut by `seq_offsets`. The work unit is a *tile*: up to
//! `TILE` consecutive positions of one sequence for one key/value head together with the `G` query
//! heads that read it (GQA / MoA), so each key/value tile is gathered once for all of them. A
//! tile's query rows are stacked position-major (row `i·G + h`), which makes the gather of a
//! position's G heads one contiguous copy and every tile product one `gemm` call of G·TILE rows.
//!
//! Forward, per query tile: walk the key tiles up to the diagonal; `S = (scale·Q)·Kᵀ`, mask keys
//! after the query, keep a running row max m and sum l, rescale the accumulator by `exp(m_old −
//! m_new)`, add `P·V`; finish with `out = acc / l` and `lse = m + ln l`.
//!
//! Backward, deterministic and without atomics, in two passes that both recompute
//! `P = exp(S − lse)` from the saved lse: per key tile, walk the query tiles from the diagonal on
//! and accumulate `dV += Pᵀ·dO` and `dK += dSᵀ·(scale·Q)` with `dS = P ⊙ (dO·Vᵀ − D)`,
//! `D = rowsum(dO ⊙ out)`; per query tile, walk the key tiles and accumulate `dQ += dS·K`, then
//! scale. The second pass recomputes `S` and `dO·Vᵀ` once more: that is the price of writing every
//! gradient row from one task instead of summing partial dQ from every key tile.
//!
//! Tiles run in parallel (rayon) and return their rows; a serial pass scatters them into the
//! outputs (O(T·d) copying against O(T²·d) arithmetic). Arithmetic runs in the storage type's
//! arithmetic type (f32 for bf16 / f16, with f32 statistics, as the CUDA kernels do).

use std::ops::Range;

use rayon::prelude::*;

use super::elem::prelude::*;
use super::elem::{max_nan, with_float, Acc, Elem, Float};
use super::matmul::product_serial;
use super::par::worth_it;
use crate::backend::AttentionDims;
use crate::{CpuStorage, Error, Result};

const OP: &str = "causal_attention";

/// Positions per tile, for queries and keys alike.
const TILE: usize = 64;

pub(super) fn forward(
    q: &CpuStorage,
    k: &CpuStorage,
    v: &CpuStorage,
    seq_offsets: &[usize],
    dims: &AttentionDims,
) -> Result<(CpuStorage, CpuStorage)> {
    with_float!(OP, q, |q| {
        let (k, v) = (Elem::view(OP, k)?, Elem::view(OP, v)?);
        check(
            dims,
            seq_offsets,
            &[
                ("q", q.len(), q_len(dims)),
                ("k", k.len(), kv_len(dims)),
                ("v", v.len(), kv_len(dims)),
            ],
        )?;
        let (out, lse) = forward_typed(&Inputs {
            q,
            k,
            v,
            offsets: seq_offsets,
            dims,
        });
        Ok((Elem::wrap(out), Elem::wrap(lse)))
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    d_out: &CpuStorage,
    q: &CpuStorage,
    k: &CpuStorage,
    v: &CpuStorage,
    out: &CpuStorage,
    lse: &CpuStorage,
    seq_offsets: &[usize],
    dims: &AttentionDims,
) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
    with_float!(OP, d_out, |d_out| {
        let (q, k, v, out) = (
            Elem::view(OP, q)?,
            Elem::view(OP, k)?,
            Elem::view(OP, v)?,
            Elem::view(OP, out)?,
        );
        let lse = Elem::view(OP, lse)?;
        let (ql, kl) = (q_len(dims), kv_len(dims));
        check(
            dims,
            seq_offsets,
            &[
                ("d_out", d_out.len(), ql),
                ("q", q.len(), ql),
                ("k", k.len(), kl),
                ("v", v.len(), kl),
                ("out", out.len(), ql),
                ("lse", lse.len(), dims.tokens * dims.q_heads),
            ],
        )?;
        let (dq, dk, dv) = backward_typed(
            &Inputs {
                q,
                k,
                v,
                offsets: seq_offsets,
                dims,
            },
            d_out,
            out,
            lse,
        );
        Ok((Elem::wrap(dq), Elem::wrap(dk), Elem::wrap(dv)))
    })
}

fn q_len(dims: &AttentionDims) -> usize {
    dims.tokens * dims.q_heads * dims.head_dim
}

fn kv_len(dims: &AttentionDims) -> usize {
    dims.tokens * dims.kv_heads * dims.head_dim
}

/// The backend is public: sizes and offsets are checked here, not trusted, so no tile reads out
/// of bounds and no worker thread panics.
fn check(dims: &AttentionDims, offsets: &[usize], operands: &[(&str, usize, usize)]) -> Result<()> {
    if let Some((name, have, want)) = operands.iter().find(|(_, have, want)| have != want) {
        return Err(Error::shape(
            OP,
            format!("{name} holds {have} elements, {dims:?} needs {want}"),
        ));
    }
    if dims.kv_heads == 0 || dims.head_dim == 0 || dims.q_heads % dims.kv_heads != 0 {
        return Err(Error::shape(OP, format!("{dims:?}: needs a non-zero head dim and query heads a multiple of the key/value heads")));
    }
    dims.check_offsets(OP, offsets)
}

/// The forward's operands and where each sequence lives.
struct Inputs<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    offsets: &'a [usize],
    dims: &'a AttentionDims,
}

/// Up to `TILE` positions `lo .. hi` (within the sequence) of the sequence starting at token
/// `start`, for key/value head `kv_head` and its query heads.
#[derive(Debug, Clone, Copy)]
struct Tile {
    start: usize,
    len: usize,
    kv_head: usize,
    lo: usize,
    hi: usize,
}

impl Tile {
    /// Token rows of positions `a .. b` of this tile's sequence.
    fn tokens(&self, a: usize, b: usize) -> Range<usize> {
        self.start + a..self.start + b
    }
}

/// Every tile of every sequence and key/value head; the biggest (last, by causality) first, so the
/// pool's last tasks are small ones.
fn tiles(offsets: &[usize], kv_heads: usize) -> Vec<Tile> {
    let mut all: Vec<Tile> = offsets
        .windows(2)
        .flat_map(|w| {
            let (start, len) = (w[0], w[1] - w[0]);
            (0..kv_heads).flat_map(move |kv_head| {
                (0..len).step_by(TILE).map(move |lo| Tile {
                    start,
                    len,
                    kv_head,
                    lo,
                    hi: (lo + TILE).min(len),
                })
            })
        })
        .collect();
    all.sort_by_key(|t| std::cmp::Reverse(t.lo));
    all
}

/// `f` on every tile, on the rayon pool when the attention is big enough.
fn map_tiles<R: Send>(
    tiles: &[Tile],
    dims: &AttentionDims,
    f: impl Fn(&Tile) -> R + Sync + Send,
) -> Vec<R> {
    let scores: usize = tiles.iter().map(|t| t.hi * (t.hi - t.lo)).sum();
    if worth_it(scores * dims.group() * dims.head_dim) {
        tiles.par_iter().map(f).collect()
    } else {
        tiles.iter().map(f).collect()
    }
}

/// Rows `tokens` of heads `heads` of a `[tokens, n_heads, width]` array, widened, stacked
/// position-major (row `i·|heads| + h`).
fn gather<T: Float>(
    x: &[T],
    n_heads: usize,
    width: usize,
    heads: Range<usize>,
    tokens: Range<usize>,
) -> Vec<T::Acc> {
    let run = heads.len() * width;
    let mut out = Vec::with_capacity(tokens.len() * run);
    for t in tokens {
        out.extend(
            x[(t * n_heads + heads.start) * width..][..run]
                .iter()
                .map(|v| v.widen()),
        );
    }
    out
}

/// The inverse of `gather`: writes stacked rows back into a `[tokens, n_heads, width]` array.
fn scatter<T: Float>(
    dst: &mut [T],
    n_heads: usize,
    width: usize,
    heads: Range<usize>,
    tokens: Range<usize>,
    rows: &[T::Acc],
) {
    let run = heads.len() * width;
    for (t, src) in tokens.zip(rows.chunks_exact(run)) {
        dst[(t * n_heads + heads.start) * width..][..run]
            .iter_mut()
            .zip(src)
            .for_each(|(d, &s)| *d = T::narrow(s));
    }
}

/// The query heads of key/value head `kv`.
fn group_heads(dims: &AttentionDims, kv: usize) -> Range<usize> {
    kv * dims.group()..(kv + 1) * dims.group()
}

/// Keys `j0 ..` visible to the query at position `i`, capped at `cols`.
fn visible(i: usize, j0: usize, cols: usize) -> usize {
    (i + 1).saturating_sub(j0).min(cols)
}

fn forward_typed<T: Float>(x: &Inputs<T>) -> (Vec<T>, Vec<T::Acc>)
where
    T::Acc: Float<Acc = T::Acc>,
{
    let dims = x.dims;
    let tiles = tiles(x.offsets, dims.kv_heads);
    let rows = map_tiles(&tiles, dims, |t| forward_tile(x, t));
    let mut out = vec![T::narrow(T::Acc::zero()); q_len(dims)];
    let mut lse = vec![T::Acc::zero(); dims.tokens * dims.q_heads];
    for (t, (o, l)) in tiles.iter().zip(rows) {
        let heads = group_heads(dims, t.kv_head);
        scatter(
            &mut out,
            dims.q_heads,
            dims.head_dim,
            heads.clone(),
            t.tokens(t.lo, t.hi),
            &o,
        );
        scatter(&mut lse, dims.q_heads, 1, heads, t.tokens(t.lo, t.hi), &l);
    }
    (out, lse)
}

/// One query tile of the forward: its output rows and their log-sum-exp.
fn forward_tile<T: Float>(x: &Inputs<T>, t: &Tile) -> (Vec<T::Acc>, Vec<T::Acc>) {
    let (dims, d, g) = (x.dims, x.dims.head_dim, x.dims.group());
    let scale = T::Acc::of(dims.scale);
    let heads = group_heads(dims, t.kv_head);
    let mut q = gather(x.q, dims.q_heads, d, heads, t.tokens(t.lo, t.hi));
    q.iter_mut().for_each(|v| *v *= scale);
    let rows = (t.hi - t.lo) * g;
    let (mut m, mut l) = (
        vec![T::Acc::neg_infinity(); rows],
        vec![T::Acc::zero(); rows],
    );
    let mut acc = vec![T::Acc::zero(); rows * d];
    let mut pv = vec![T::Acc::zero(); rows * d];
    let mut s = Vec::new();
    for j0 in (0..t.hi).step_by(TILE) {
        let cols = (j0 + TILE).min(t.hi) - j0;
        let kv = t.kv_head..t.kv_head + 1;
        let k = gather(x.k, dims.kv_heads, d, kv.clone(), t.tokens(j0, j0 + cols));
        let v = gather(x.v, dims.kv_heads, d, kv, t.tokens(j0, j0 + cols));
        s.resize(rows * cols, T::Acc::zero());
        product_serial(&mut s, &q, &k, rows, cols, d, false, true);
        for (r, p) in s.chunks_exact_mut(cols).enumerate() {
            let seen = visible(t.lo + r / g, j0, cols);
            let m_new = p[..seen].iter().fold(m[r], |a, &b| max_nan(a, b));
            let (shown, masked) = p.split_at_mut(seen);
            let sum = T::Acc::exp_shifted_sum(shown, m_new);
            masked.fill(T::Acc::zero());
            // The first key tile always holds key 0, so m is finite from then on.
            let correction = (m[r] - m_new).exp();
            l[r] = l[r] * correction + sum;
            m[r] = m_new;
            acc[r * d..][..d].iter_mut().for_each(|a| *a *= correction);
        }
        product_serial(&mut pv, &s, &v, rows, d, cols, false, false);
        acc.iter_mut().zip(&pv).for_each(|(a, &b)| *a += b);
    }
    for (r, a) in acc.chunks_exact_mut(d).enumerate() {
        let inv = l[r].recip();
        a.iter_mut().for_each(|v| *v *= inv);
        m[r] = m[r] + l[r].ln();
    }
    (acc, m)
}

/// What the backward reads besides the forward's inputs: dO, and per row the lse and
/// `D = rowsum(dO ⊙ out)`, both `[tokens, q_heads]` in the arithmetic type.
struct Upstream<'a, T: Float> {
    d_out: &'a [T],
    lse: &'a [T::Acc],
    delta: Vec<T::Acc>,
}

/// One query tile's stacked operands in the backward.
struct QueryRows<A> {
    /// scale · q
    q: Vec<A>,
    d_out: Vec<A>,
    lse: Vec<A>,
    delta: Vec<A>,
}

impl<A: Acc> QueryRows<A> {
    fn load<T: Float<Acc = A>>(
        x: &Inputs<T>,
        up: &Upstream<T>,
        t: &Tile,
        (i0, i1): (usize, usize),
    ) -> QueryRows<A>
    where
        A: Float<Acc = A>,
    {
        let dims = x.dims;
        let (heads, tokens) = (group_heads(dims, t.kv_head), t.tokens(i0, i1));
        let mut q = gather(
            x.q,
            dims.q_heads,
            dims.head_dim,
            heads.clone(),
            tokens.clone(),
        );
        let scale = A::of(dims.scale);
        q.iter_mut().for_each(|v| *v *= scale);
        QueryRows {
            q,
            d_out: gather(
                up.d_out,
                dims.q_heads,
                dims.head_dim,
                heads.clone(),
                tokens.clone(),
            ),
            lse: gather(up.lse, dims.q_heads, 1, heads.clone(), tokens.clone()),
            delta: gather(&up.delta, dims.q_heads, 1, heads, tokens),
        }
    }
}

/// For query rows at positions `i0 ..` (G rows each) against keys `j0 .. j0 + cols` (k and v
/// stacked rows of one head): P into `p` and dS into `ds`, both rows x cols.
#[allow(clippy::too_many_arguments)]
fn probs_and_dscores<A: Acc>(
    qr: &QueryRows<A>,
    k: &[A],
    v: &[A],
    (i0, j0, cols, d, g): (usize, usize, usize, usize, usize),
    p: &mut Vec<A>,
    ds: &mut Vec<A>,
) {
    let rows = qr.lse.len();
    p.resize(rows * cols, A::zero());
    ds.resize(rows * cols, A::zero());
    product_serial(p, &qr.q, k, rows, cols, d, false, true);
    product_serial(ds, &qr.d_out, v, rows, cols, d, false, true);
    for (r, (pr, dr)) in p
        .chunks_exact_mut(cols)
        .zip(ds.chunks_exact_mut(cols))
        .enumerate()
    {
        let (seen, delta) = (visible(i0 + r / g, j0, cols), qr.delta[r]);
        let (shown, masked) = pr.split_at_mut(seen);
        A::exp_shifted_sum(shown, qr.lse[r]);
        masked.fill(A::zero());
        for (&pc, dc) in pr.iter().zip(dr.iter_mut()) {
            *dc = pc * (*dc - delta);
        }
    }
}

fn backward_typed<T: Float>(
    x: &Inputs<T>,
    d_out: &[T],
    out: &[T],
    lse: &[T::Acc],
) -> (Vec<T>, Vec<T>, Vec<T>)
where
    T::Acc: Float<Acc = T::Acc>,
{
    let (dims, d) = (x.dims, x.dims.head_dim);
    let delta = d_out
        .chunks_exact(d)
        .zip(out.chunks_exact(d))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .fold(T::Acc::zero(), |s, (a, b)| s + a.widen() * b.widen())
        })
        .collect();
    let up = Upstream { d_out, lse, delta };
    let tiles = tiles(x.offsets, dims.kv_heads);
    let kv_rows = map_tiles(&tiles, dims, |t| key_tile_grads(x, &up, t));
    let q_rows = map_tiles(&tiles, dims, |t| query_tile_grad(x, &up, t));
    let zero = T::narrow(T::Acc::zero());
    let (mut dq, mut dk, mut dv) = (
        vec![zero; q_len(dims)],
        vec![zero; kv_len(dims)],
        vec![zero; kv_len(dims)],
    );
    for (t, ((dkt, dvt), dqt)) in tiles.iter().zip(kv_rows.into_iter().zip(q_rows)) {
        let tokens = t.tokens(t.lo, t.hi);
        scatter(
            &mut dk,
            dims.kv_heads,
            d,
            t.kv_head..t.kv_head + 1,
            tokens.clone(),
            &dkt,
        );
        scatter(
            &mut dv,
            dims.kv_heads,
            d,
            t.kv_head..t.kv_head + 1,
            tokens.clone(),
            &dvt,
        );
        scatter(
            &mut dq,
            dims.q_heads,
            d,
            group_heads(dims, t.kv_head),
            tokens,
            &dqt,
        );
    }
    (dq, dk, dv)
}

/// dK and dV of one key tile, from every query tile at or after it.
fn key_tile_grads<T: Float>(x: &Inputs<T>, up: &Upstream<T>, t: &Tile) -> (Vec<T::Acc>, Vec<T::Acc>)
where
    T::Acc: Float<Acc = T::Acc>,
{
    let (dims, d, g) = (x.dims, x.dims.head_dim, x.dims.group());
    let cols = t.hi - t.lo;
    let kv = t.kv_head..t.kv_head + 1;
    let k = gather(x.k, dims.kv_heads, d, kv.clone(), t.tokens(t.lo, t.hi));
    let v = gather(x.v, dims.kv_heads, d, kv, t.tokens(t.lo, t.hi));
    let (mut dk, mut dv) = (
        vec![T::Acc::zero(); cols * d],
        vec![T::Acc::zero(); cols * d],
    );
    let (mut p, mut ds, mut part) = (Vec::new(), Vec::new(), vec![T::Acc::zero(); cols * d]);
    for i0 in (t.lo..t.len).step_by(TILE) {
        let i1 = (i0 + TILE).min(t.len);
        let qr = QueryRows::load(x, up, t, (i0, i1));
        let rows = (i1 - i0) * g;
        probs_and_dscores(&qr, &k, &v, (i0, t.lo, cols, d, g), &mut p, &mut ds);
        product_serial(&mut part, &p, &qr.d_out, cols, d, rows, true, false);
        dv.iter_mut().zip(&part).for_each(|(a, &b)| *a += b);
        product_serial(&mut part, &ds, &qr.q, cols, d, rows, true, false);
        dk.iter_mut().zip(&part).for_each(|(a, &b)| *a += b);
    }
    (dk, dv)
}

/// dQ of one query tile, from every key tile up to the diagonal.
fn query_tile_grad<T: Float>(x: &Inputs<T>, up: &Upstream<T>, t: &Tile) -> Vec<T::Acc>
where
    T::Acc: Float<Acc = T::Acc>,
{
    let (dims, d, g) = (x.dims, x.dims.head_dim, x.dims.group());
    let qr = QueryRows::load(x, up, t, (t.lo, t.hi));
    let rows = (t.hi - t.lo) * g;
    let mut dq = vec![T::Acc::zero(); rows * d];
    let (mut p, mut ds, mut part) = (Vec::new(), Vec::new(), vec![T::Acc::zero(); rows * d]);
    for j0 in (0..t.hi).step_by(TILE) {
        let cols = (j0 + TILE).min(t.hi) - j0;
        let kv = t.kv_head..t.kv_head + 1;
        let k = gather(x.k, dims.kv_heads, d, kv.clone(), t.tokens(j0, j0 + cols));
        let v = gather(x.v, dims.kv_heads, d, kv, t.tokens(j0, j0 + cols));
        probs_and_dscores(&qr, &k, &v, (t.lo, j0, cols, d, g), &mut p, &mut ds);
        product_serial(&mut part, &ds, &k, rows, d, cols, false, false);
        dq.iter_mut().zip(&part).for_each(|(a, &b)| *a += b);
    }
    let scale = T::Acc::of(dims.scale);
    dq.iter_mut().for_each(|v| *v *= scale);
    dq
}
