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
//! m_new)`, add `P·V`; finish with `out = acc / l` and `lse = m + ln l`. At small head dims
//! (up to `attention_rows::MAX_HEAD_DIM`) and tiles that see at most `attention_rows::MAX_KEYS`
//! keys, where these products are too thin for `gemm`, a tile runs attention_rows.rs's whole-row
//! kernel instead: the same values up to the order of the floating-point operations.
//!
//! Backward, deterministic and without atomics, recomputing `P = exp(S − lse)` from the saved
//! lse. A task is one key/value head of one sequence (FlashAttention-2's key-outer loop): per key
//! tile, walk the query tiles from the diagonal on; each score tile's P and
//! `dS = P ⊙ (dO·Vᵀ − D)`, `D = rowsum(dO ⊙ out)`, are computed once and feed all three
//! gradients: `dV += Pᵀ·dO`, `dK += dSᵀ·(scale·Q)` into the key tile's rows and `dQ += dS·K` into
//! the task's own dQ rows, so each dQ row sums its key tiles in ascending order. When sequences
//! times heads give fewer than `TASKS_WANTED` tasks, a head's key tiles are dealt round-robin to
//! several parts, each with its own partial dQ; partials are added in part order. The split
//! depends on the shape only, so results are bit-identical on any thread count.
//!
//! Work items run in parallel (rayon) and return their rows; the outputs are then written in
//! parallel one token row at a time (O(T·d) copying against O(T²·d) arithmetic). Arithmetic runs
//! in the storage type's arithmetic type (f32 for bf16 / f16, with f32 statistics, as the CUDA kernels do).

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::elem::prelude::*;
use super::attention_rows;
use super::elem::{with_float, Acc, Elem, Float};
use super::matmul::product_serial;
use super::par::{chunks, filled, worth_it, FLAT_CHUNK};
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

/// Where the per-(sequence, key/value head) results of a parallel pass live: sequence `s` has
/// `count[s]` results per key/value head, the first at `base[s]`, in (sequence, head, index) order.
struct Grid<'a> {
    offsets: &'a [usize],
    kv_heads: usize,
    base: Vec<usize>,
    count: Vec<usize>,
}

impl<'a> Grid<'a> {
    fn new(offsets: &'a [usize], kv_heads: usize, count: impl Fn(usize) -> usize) -> Grid<'a> {
        let count: Vec<usize> = offsets.windows(2).map(|w| count(w[1] - w[0])).collect();
        let base = count
            .iter()
            .scan(0, |next, &c| {
                let at = *next;
                *next += kv_heads * c;
                Some(at)
            })
            .collect();
        Grid {
            offsets,
            kv_heads,
            base,
            count,
        }
    }

    /// The index of result `i` of key/value head `kv_head` of sequence `s`.
    fn index(&self, s: usize, kv_head: usize, i: usize) -> usize {
        self.base[s] + kv_head * self.count[s] + i
    }

    /// Every (sequence start, length, key/value head, index, results per head) in result order.
    fn cells(&self) -> impl Iterator<Item = (usize, usize, usize, usize, usize)> + '_ {
        self.offsets.windows(2).zip(&self.count).flat_map(move |(w, &c)| {
            (0..self.kv_heads).flat_map(move |kv| (0..c).map(move |i| (w[0], w[1] - w[0], kv, i, c)))
        })
    }

    /// A `[tokens, width]` output written in parallel one token row at a time:
    /// `row(s, pos, dst)` must write every element of the row of position `pos` of sequence `s`.
    fn by_token<T: Send>(
        &self,
        width: usize,
        row: impl Fn(usize, usize, &mut [MaybeUninit<T>]) + Sync + Send,
    ) -> Vec<T> {
        let tokens = self.offsets.last().copied().unwrap_or(0);
        let fill = |out: &mut [MaybeUninit<T>]| {
            chunks(out, width, worth_it(tokens * width), |t, dst| {
                let s = self.offsets.partition_point(|&o| o <= t) - 1;
                row(s, t - self.offsets[s], dst)
            })
        };
        // SAFETY: the chunks are the token rows, which cover the output, and `row` writes every
        // element of its row (the callers' contract).
        unsafe { filled(tokens * width, fill) }
    }
}

/// `f` on every work item, on the rayon pool when the attention is big enough (`scores` query-key
/// pairs), the items with the largest `size` first so the pool's last tasks are small ones;
/// the results come back in the items' order.
fn map_items<I: Sync, R: Send>(
    items: &[I],
    dims: &AttentionDims,
    scores: usize,
    size: impl Fn(&I) -> usize,
    f: impl Fn(&I) -> R + Sync + Send,
) -> Vec<R> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(size(&items[i])));
    let run = |&i: &usize| (i, f(&items[i]));
    let mut done: Vec<(usize, R)> = if worth_it(scores * dims.group() * dims.head_dim) {
        order.par_iter().map(run).collect()
    } else {
        order.iter().map(run).collect()
    };
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Query-key pairs of causal attention over the sequences (each position sees itself and before).
fn causal_pairs(offsets: &[usize]) -> usize {
    offsets.windows(2).map(|w| (w[1] - w[0]) * (w[1] - w[0] + 1) / 2).sum()
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
    let (dims, d, g) = (x.dims, x.dims.head_dim, x.dims.group());
    let grid = Grid::new(x.offsets, dims.kv_heads, |len| len.div_ceil(TILE));
    let tiles: Vec<Tile> = grid
        .cells()
        .map(|(start, len, kv_head, i, _)| Tile {
            start,
            kv_head,
            lo: i * TILE,
            hi: ((i + 1) * TILE).min(len),
        })
        .collect();
    let rows = map_items(&tiles, dims, causal_pairs(x.offsets), |t| t.lo, |t| forward_tile(x, t));
    // Token row `pos` of a tile's results, for the G heads of its key/value head.
    let tile_rows = |s: usize, pos: usize, kv: usize| (grid.index(s, kv, pos / TILE), pos % TILE * g);
    let out = grid.by_token(dims.q_heads * d, |s, pos, dst| {
        for (kv, dst) in dst.chunks_exact_mut(g * d).enumerate() {
            let (tile, r) = tile_rows(s, pos, kv);
            narrow_into(dst, &rows[tile].0[r * d..][..g * d]);
        }
    });
    let lse = grid.by_token(dims.q_heads, |s, pos, dst| {
        for (kv, dst) in dst.chunks_exact_mut(g).enumerate() {
            let (tile, r) = tile_rows(s, pos, kv);
            narrow_into(dst, &rows[tile].1[r..][..g]);
        }
    });
    (out, lse)
}

/// Writes `src` narrowed to the storage type into `dst` (every element).
fn narrow_into<T: Float>(dst: &mut [MaybeUninit<T>], src: &[T::Acc]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| {
        d.write(T::narrow(s));
    });
}

/// One query tile of the forward: its output rows and their log-sum-exp (see the module comment
/// for which tiles take the whole-row path).
fn forward_tile<T: Float>(x: &Inputs<T>, t: &Tile) -> (Vec<T::Acc>, Vec<T::Acc>) {
    let (dims, d, g) = (x.dims, x.dims.head_dim, x.dims.group());
    let scale = T::Acc::of(dims.scale);
    let heads = group_heads(dims, t.kv_head);
    let mut q = gather(x.q, dims.q_heads, d, heads, t.tokens(t.lo, t.hi));
    q.iter_mut().for_each(|v| *v *= scale);
    if d <= attention_rows::MAX_HEAD_DIM && t.hi <= attention_rows::MAX_KEYS {
        let at = (t.start * dims.kv_heads + t.kv_head) * d;
        let kv = attention_rows::KeyRows { k: &x.k[at..], v: &x.v[at..], stride: dims.kv_heads * d, keys: t.hi };
        return attention_rows::forward(&q, &kv, d, g, t.lo);
    }
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
            let m_new = T::Acc::row_max(&p[..seen], m[r]);
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

/// Query rows' stacked operands in the backward: `rows` of them from position `i0` on.
struct QueryRows<'a, A> {
    /// scale · q
    q: &'a [A],
    d_out: &'a [A],
    lse: &'a [A],
    delta: &'a [A],
}

/// The stacked operands of a task's query positions, gathered once.
struct QueryBlock<A> {
    q: Vec<A>,
    d_out: Vec<A>,
    lse: Vec<A>,
    delta: Vec<A>,
}

impl<A: Acc> QueryBlock<A> {
    /// Positions `i0 .. i1` of task `t`'s sequence, for the query heads of its key/value head.
    fn load<T: Float<Acc = A>>(x: &Inputs<T>, up: &Upstream<T>, t: &Task, (i0, i1): (usize, usize)) -> QueryBlock<A>
    where
        A: Float<Acc = A>,
    {
        let (dims, d) = (x.dims, x.dims.head_dim);
        let (heads, tokens) = (group_heads(dims, t.kv_head), t.start + i0..t.start + i1);
        let mut q = gather(x.q, dims.q_heads, d, heads.clone(), tokens.clone());
        let scale = A::of(dims.scale);
        q.iter_mut().for_each(|v| *v *= scale);
        QueryBlock {
            q,
            d_out: gather(up.d_out, dims.q_heads, d, heads.clone(), tokens.clone()),
            lse: gather(up.lse, dims.q_heads, 1, heads.clone(), tokens.clone()),
            delta: gather(&up.delta, dims.q_heads, 1, heads, tokens),
        }
    }

    /// Stacked rows `r0 .. r0 + rows`.
    fn rows(&self, r0: usize, rows: usize, d: usize) -> QueryRows<'_, A> {
        QueryRows {
            q: &self.q[r0 * d..][..rows * d],
            d_out: &self.d_out[r0 * d..][..rows * d],
            lse: &self.lse[r0..][..rows],
            delta: &self.delta[r0..][..rows],
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
    product_serial(p, qr.q, k, rows, cols, d, false, true);
    product_serial(ds, qr.d_out, v, rows, cols, d, false, true);
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

/// Backward tasks wanted at least, so that a batch of few sequences and heads still spreads over
/// the cores. A shape constant, not the thread count: the split, and so the rounding of dQ, is the
/// same on every machine.
const TASKS_WANTED: usize = 32;

/// One backward task: key/value head `kv_head` of the sequence at token `start` (`len` positions),
/// and of its key tiles those numbered `part`, `part + parts`, `part + 2·parts`, ...
#[derive(Debug, Clone, Copy)]
struct Task {
    start: usize,
    len: usize,
    kv_head: usize,
    part: usize,
    parts: usize,
}

/// One task's gradients, all unscaled sums in the arithmetic type: dQ of the query rows from its
/// first key tile on (stacked position-major from position `part·TILE`), and dK, dV of its key
/// tiles, stacked in tile order.
struct TaskGrads<A> {
    dq: Vec<A>,
    dk: Vec<A>,
    dv: Vec<A>,
}

fn backward_typed<T: Float>(x: &Inputs<T>, d_out: &[T], out: &[T], lse: &[T::Acc]) -> (Vec<T>, Vec<T>, Vec<T>)
where
    T::Acc: Float<Acc = T::Acc>,
{
    let (dims, d, g) = (x.dims, x.dims.head_dim, x.dims.group());
    let rows = dims.tokens * dims.q_heads;
    let fill = |delta: &mut [MaybeUninit<T::Acc>]| {
        chunks(delta, FLAT_CHUNK, worth_it(rows * d), |c, dst| {
            let at = c * FLAT_CHUNK * d;
            let pairs = d_out[at..].chunks_exact(d).zip(out[at..].chunks_exact(d));
            for (dst, (a, b)) in dst.iter_mut().zip(pairs) {
                dst.write(a.iter().zip(b).fold(T::Acc::zero(), |s, (a, b)| s + a.widen() * b.widen()));
            }
        })
    };
    // SAFETY: the flat chunks cover `delta` and each element gets its row's sum.
    let delta = unsafe { filled(rows, fill) };
    let up = Upstream { d_out, lse, delta };
    let units = x.offsets.windows(2).filter(|w| w[1] > w[0]).count() * dims.kv_heads;
    let parts_wanted = TASKS_WANTED.div_ceil(units.max(1));
    let grid = Grid::new(x.offsets, dims.kv_heads, |len| parts_wanted.min(len.div_ceil(TILE)));
    let tasks: Vec<Task> = grid
        .cells()
        .map(|(start, len, kv_head, part, parts)| Task {
            start,
            len,
            kv_head,
            part,
            parts,
        })
        .collect();
    let grads = map_items(&tasks, dims, causal_pairs(x.offsets), |t| t.len - t.part * TILE, |t| task_grads(x, &up, t));
    let scale = T::Acc::of(dims.scale);
    let dq = grid.by_token(dims.q_heads * d, |s, pos, dst| {
        for (kv, dst) in dst.chunks_exact_mut(g * d).enumerate() {
            // The parts whose first key tile is at or before this position, added in part order.
            let parts = (pos / TILE + 1).min(grid.count[s]);
            let part = |c: usize| &grads[grid.index(s, kv, c)].dq[(pos - c * TILE) * g * d..][..g * d];
            let first = part(0);
            for (e, o) in dst.iter_mut().enumerate() {
                let sum = (1..parts).fold(first[e], |a, c| a + part(c)[e]);
                o.write(T::narrow(sum * scale));
            }
        }
    });
    // Position `pos` sits in key tile `pos / TILE`, held by part `tile % parts` as its
    // `tile / parts`-th tile.
    let key_row = |s: usize, pos: usize, kv: usize| {
        let (tile, parts) = (pos / TILE, grid.count[s]);
        (grid.index(s, kv, tile % parts), (tile / parts * TILE + pos % TILE) * d)
    };
    let dk = grid.by_token(dims.kv_heads * d, |s, pos, dst| {
        for (kv, dst) in dst.chunks_exact_mut(d).enumerate() {
            let (task, r) = key_row(s, pos, kv);
            narrow_into(dst, &grads[task].dk[r..][..d]);
        }
    });
    let dv = grid.by_token(dims.kv_heads * d, |s, pos, dst| {
        for (kv, dst) in dst.chunks_exact_mut(d).enumerate() {
            let (task, r) = key_row(s, pos, kv);
            narrow_into(dst, &grads[task].dv[r..][..d]);
        }
    });
    (dq, dk, dv)
}

/// One task's dQ, dK and dV. Per key tile, the query tiles from the diagonal on: each pair's P and
/// dS are computed once and feed `dV += Pᵀ·dO`, `dK += dSᵀ·(scale·Q)` and `dQ += dS·K`. Key tiles
/// ascend, so every dQ row sums its key tiles in ascending order.
fn task_grads<T: Float>(x: &Inputs<T>, up: &Upstream<T>, t: &Task) -> TaskGrads<T::Acc>
where
    T::Acc: Float<Acc = T::Acc>,
{
    let (dims, d, g) = (x.dims, x.dims.head_dim, x.dims.group());
    let zero = T::Acc::zero();
    let first = t.part * TILE;
    let block = QueryBlock::load(x, up, t, (first, t.len));
    let mut dq = vec![zero; (t.len - first) * g * d];
    let (mut dk, mut dv) = (Vec::new(), Vec::new());
    let (mut p, mut ds) = (Vec::new(), Vec::new());
    let (mut part_kv, mut part_q) = (vec![zero; TILE * d], vec![zero; TILE * g * d]);
    let kv = t.kv_head..t.kv_head + 1;
    for j0 in (first..t.len).step_by(t.parts * TILE) {
        let cols = (j0 + TILE).min(t.len) - j0;
        let tokens = t.start + j0..t.start + j0 + cols;
        let k = gather(x.k, dims.kv_heads, d, kv.clone(), tokens.clone());
        let v = gather(x.v, dims.kv_heads, d, kv.clone(), tokens);
        let at = dk.len();
        dk.resize(at + cols * d, zero);
        dv.resize(at + cols * d, zero);
        let part_kv = &mut part_kv[..cols * d];
        for i0 in (j0..t.len).step_by(TILE) {
            let (r0, rows) = ((i0 - first) * g, ((i0 + TILE).min(t.len) - i0) * g);
            let qr = block.rows(r0, rows, d);
            probs_and_dscores(&qr, &k, &v, (i0, j0, cols, d, g), &mut p, &mut ds);
            product_serial(part_kv, &p, qr.d_out, cols, d, rows, true, false);
            add_into(&mut dv[at..], part_kv);
            product_serial(part_kv, &ds, qr.q, cols, d, rows, true, false);
            add_into(&mut dk[at..], part_kv);
            let part_q = &mut part_q[..rows * d];
            product_serial(part_q, &ds, &k, rows, d, cols, false, false);
            add_into(&mut dq[r0 * d..][..rows * d], part_q);
        }
    }
    TaskGrads { dq, dk, dv }
}

fn add_into<A: Acc>(acc: &mut [A], part: &[A]) {
    acc.iter_mut().zip(part).for_each(|(a, &b)| *a += b);
}
