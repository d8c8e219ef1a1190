//! The contract between the op layer (`ops`, which checks arguments) and a backend (which computes).
//! Both `CpuStorage` and `CudaStorage` implement it; the op layer has already validated shapes,
//! dtypes and devices, so a backend may assume them and only reports its own failures (a dtype it
//! has no kernel for, a launch or allocation error).
//!
//! All storages are contiguous row-major. Sizes are passed already flattened to the view the op
//! walks, e.g. a last-dim op sees `(rows, cols)` and a per-dim reduction sees `(outer, size, inner)`.

use crate::{DType, Result};

// Sparse MoE: the routing rule and the sizes both the op layer and the backends see.

/// How experts are chosen per token from router probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouteMode {
    /// The k most probable experts.
    TopK(usize),
    /// Experts with N·p > eps (computed in f32 for f32 / bf16 / f16 probabilities), at least the
    /// most probable one, at most `k_max`.
    Threshold { eps: f64, k_max: usize },
    /// The threshold rule's batch-average count, rounded and clamped to 1..=k_max, as a fixed K.
    ThresholdK { eps: f64, k_max: usize },
}

impl RouteMode {
    /// The number of slots per token.
    pub fn k_max(&self) -> usize {
        match *self {
            RouteMode::TopK(k) => k,
            RouteMode::Threshold { k_max, .. } | RouteMode::ThresholdK { k_max, .. } => k_max,
        }
    }
}

/// `slot_pos` of a slot that is not in the list.
pub const DROPPED: u32 = u32::MAX;

/// Token counts up to this run the sparse MLP's decode kernels (one pass over each chosen expert's
/// weights) instead of the grouped GEMM, unless a caller forces a path.
pub const DECODE_MAX_TOKENS: usize = 16;

/// Rows up to which the CPU's products read the weights in place (one pass over them, no packing),
/// and up to which each busy expert's tokens let the CPU's sparse GeLU MLP run as one parallel loop
/// over slices of the hidden units (its decode path). A dense GeLU MLP of so few tokens is worth
/// running as a one-expert sparse MLP on the CPU for that loop.
pub const CPU_DECODE_MAX_ROWS: usize = 4;

/// Sizes of one sparse MLP call, for the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseDims {
    pub tokens: usize,
    pub d: usize,
    pub f: usize,
    pub n_experts: usize,
    pub k_max: usize,
}

impl SparseDims {
    /// Slots, and so the capacity of the sorted list.
    pub fn slots(&self) -> usize {
        self.tokens * self.k_max
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Recip,
    Sqr,
    Abs,
    Tanh,
    Relu,
    /// GeLU, tanh approximation (GPT-2 / fairseq).
    Gelu,
    Silu,
    Sigmoid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
    /// `rhs * gelu'(lhs)`: the GeLU backward, with lhs = the forward input and rhs = the upstream gradient.
    GeluGrad,
    /// `rhs * silu'(lhs)`.
    SiluGrad,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarOp {
    /// x + s
    Add,
    /// x * s
    Mul,
    /// x ^ s
    Pow,
    /// max(x, s)
    Max,
    /// 1 where x > s, else 0 (a mask in the input's dtype; not differentiable)
    Gt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
}

/// A (possibly batched) matrix product `C[b] = op(A[b]) · op(B[b])`, where op transposes when the
/// flag is set. `A[b]` is stored `m x k` (`k x m` when `trans_a`), `B[b]` is `k x n` (`n x k` when
/// `trans_b`), `C[b]` is `m x n`. A batch stride of 0 reuses one matrix for every batch entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulLayout {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub a_batch_stride: usize,
    pub b_batch_stride: usize,
}

/// Sizes of the dense-training MoE MLP (every expert on every token): `x` is `[tokens, d]`, the
/// stacked expert weights `w1` and `w2` are `[experts·width, d]` (expert e owns rows
/// `e·width .. (e+1)·width`), the router probabilities `p` are `[tokens, experts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeDenseDims {
    pub tokens: usize,
    pub d: usize,
    pub experts: usize,
    pub width: usize,
}

impl MoeDenseDims {
    /// Columns of the stacked hidden activations, `experts·width`.
    pub fn hidden(&self) -> usize {
        self.experts * self.width
    }
}

/// AdamW hyper-parameters for one step (`step` counts from 1; bias correction uses it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
}

/// Which operand of a GEMM is stored transposed (row-major storage): NN: a [m, k], b [k, n];
/// NT: a [m, k], b [n, k] (x·Wᵀ, dY·W); TN: a [k, m], b [k, n] (the weight gradient Xᵀ·dY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmForm {
    NN,
    NT,
    TN,
}

/// One GEMM with a fused epilogue: `out = residual + gelu?(alpha · op(a)·op(b) + bias)`, out of
/// shape [m, n] and dtype `out_dtype`; bias [n] and residual [m, n] have the output's dtype.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmLayout {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub form: GemmForm,
    pub alpha: f32,
    pub gelu: bool,
    pub out_dtype: DType,
}

/// A grouped GEMM over `groups` groups whose sizes are u32 `counts` (on the tensors' device).
/// - NN / NT (row-grouped, MoE forward and dX): a [m, k] holds every group's rows back to back,
///   b [groups, k, n] (NN) or [groups, n, k] (NT); out [m, n], rows of group g times b[g].
/// - TN (reduction-grouped, MoE weight gradient): a [k, m], b [k, n], the counts split k;
///   out [groups, m, n], out[g] = a[rows of g]ᵀ · b[rows of g] (zero for an empty group).
///
/// Counts must sum to the grouped extent (m, or k for TN): the CPU checks; CUDA, which never
/// reads device counts on the host, clamps and leaves rows past the sum zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupedLayout {
    pub groups: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub form: GemmForm,
}

/// Sizes of causal self-attention over packed sequences (FlashAttention's varlen form): q and the
/// output are `[tokens, q_heads, head_dim]`, k and v `[tokens, kv_heads, head_dim]`, the saved
/// log-sum-exp `[tokens, q_heads]` in the arithmetic type (f64 for f64, else f32). Sequence s
/// holds the rows `seq_offsets[s] .. seq_offsets[s + 1]` (the offsets start at 0, never decrease
/// and end at `tokens`); a query attends to the keys of its own sequence at its position or
/// before. Query head h reads key/value head `h / (q_heads / kv_heads)` (GQA; MoA's experts share
/// their key/value heads this way). Scores are `scale · q·k`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionDims {
    pub tokens: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f64,
}

impl AttentionDims {
    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }

    /// Checks the sequence offsets cut the tokens: they start at 0, never decrease and end at
    /// `tokens` (the op layer and every backend, which is public, check the same rule).
    pub fn check_offsets(&self, op: &'static str, seq_offsets: &[usize]) -> Result<()> {
        let ordered = seq_offsets.windows(2).all(|w| w[0] <= w[1]);
        if seq_offsets.first() != Some(&0) || seq_offsets.last() != Some(&self.tokens) || !ordered {
            return Err(crate::Error::shape(op, format!("sequence offsets {seq_offsets:?} must rise from 0 to the {} tokens", self.tokens)));
        }
        Ok(())
    }
}

/// Sizes of one paged decode-attention call (the inference KV cache; see `paged_attention`).
///
/// The contract every backend implements, and a fused CUDA kernel must keep:
/// - `q` `[batch, q_heads, head_dim]`: one query row per sequence (a prefill chunk passes one row
///   per new token, each with its own context length, so the same op is causal attention).
/// - `k`, `v` pools `[num_blocks, block_size, kv_heads, head_dim]`, q's dtype.
/// - `block_table` u32 `[batch, max_blocks]`: row b lists the pool blocks holding sequence b's
///   positions in order (position p lives in block `table[b, p / block_size]`, slot
///   `p % block_size`); entries past the context are ignored.
/// - `context_lens` u32 `[batch]`: row b attends to positions `0 .. context_lens[b]`, each in
///   `1 ..= max_blocks·block_size`, with every block it touches `< num_blocks`. The CPU backend
///   reports a length or block out of range as an error; CUDA, which never reads the lengths or
///   tables back to the host (that would stall a decode step), writes NaN for such a row and
///   reads nothing out of range.
/// - GQA: query head h reads kv head `h / (q_heads / kv_heads)`.
/// - `out[b, h] = Σ_p softmax_p(scale · q[b, h]·k[p, kv]) · v[p, kv]`, q's shape and dtype, with
///   the softmax and the weighted sum accumulated in f32 (f64 for f64).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PagedAttentionDims {
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub max_blocks: usize,
    pub scale: f64,
}

impl PagedAttentionDims {
    /// Query heads that share one kv head.
    pub fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }
    /// Elements of one cached position (all kv heads).
    pub fn row_len(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Checks host copies of the block table and context lengths against the contract (every
    /// backend runs this before reading the cache); returns, per sequence, the blocks it reads.
    pub fn sequence_blocks<'a>(&self, table: &'a [u32], lens: &[u32]) -> Result<Vec<&'a [u32]>> {
        const OP: &str = "paged_attention";
        if table.len() != self.batch * self.max_blocks || lens.len() != self.batch {
            return Err(crate::Error::shape(OP, format!("block table of {} and context lengths of {} entries for {self:?}", table.len(), lens.len())));
        }
        let capacity = self.max_blocks * self.block_size;
        lens.iter()
            .enumerate()
            .map(|(b, &len)| {
                let len = len as usize;
                if len == 0 || len > capacity {
                    return Err(crate::Error::invalid(OP, format!("sequence {b} has context length {len}: must be 1..={capacity} (max_blocks {} x block_size {})", self.max_blocks, self.block_size)));
                }
                let blocks = &table[b * self.max_blocks..][..len.div_ceil(self.block_size)];
                match blocks.iter().find(|&&x| x as usize >= self.num_blocks) {
                    Some(&bad) => Err(crate::Error::IndexOutOfRange { op: OP, index: bad as usize, size: self.num_blocks }),
                    None => Ok(blocks),
                }
            })
            .collect()
    }
}

pub trait BackendStorage: Sized {
    fn dtype(&self) -> DType;

    /// Element-wise `op(x)`; output has x's dtype.
    fn unary(&self, op: UnaryOp) -> Result<Self>;

    /// Element-wise `op(x, s)` with a scalar.
    fn scalar(&self, op: ScalarOp, s: f64) -> Result<Self>;

    /// Element-wise `op(a, b)` over `out_dims`. `a_strides` / `b_strides` (one per out dim, in
    /// elements, 0 where that operand is broadcast) say where each operand's element lives.
    fn binary(&self, a_strides: &[usize], rhs: &Self, b_strides: &[usize], out_dims: &[usize], op: BinaryOp) -> Result<Self>;

    fn matmul(&self, rhs: &Self, layout: &MatmulLayout) -> Result<Self>;

    /// Reduces the middle axis of an `(outer, size, inner)` view: output `(outer, inner)`.
    fn reduce(&self, outer: usize, size: usize, inner: usize, op: ReduceOp) -> Result<Self>;

    /// Index (as u32) of the largest element along the middle axis; the first one on ties.
    fn argmax(&self, outer: usize, size: usize, inner: usize) -> Result<Self>;

    /// Softmax (or log-softmax) of each row of a `rows x cols` matrix.
    fn softmax(&self, rows: usize, cols: usize, log: bool) -> Result<Self>;

    /// RMSNorm of each row of a `rows x cols` matrix, `self` = x: with a residual, h = x + residual
    /// first; `y = h / √(mean(h²) + eps) · weight` (weight `[cols]`). Returns `(y, h)`, h only when a
    /// residual was given.
    fn rms_norm(&self, residual: Option<&Self>, weight: &Self, rows: usize, cols: usize, eps: f64) -> Result<(Self, Option<Self>)>;

    /// RMSNorm backward, `self` = dy, from the forward's input h (recomputing its 1/rms) and
    /// weight. Returns `(dh, dweight)`; dweight sums over rows in a fixed order.
    fn rms_norm_backward(&self, h: &Self, weight: &Self, rows: usize, cols: usize, eps: f64) -> Result<(Self, Self)>;

    /// Cross-entropy of each row of `rows x vocab` logits (`self`) against u32 `targets` `[rows]`
    /// (each < vocab, checked by the op layer): `logsumexp(row) − row[target]`, `[rows]`.
    fn cross_entropy(&self, targets: &Self, rows: usize, vocab: usize) -> Result<Self>;

    /// Cross-entropy backward, `self` = logits: `d[r, :] = (softmax(row) − onehot(target)) · g[r]`,
    /// recomputing the softmax from the logits (no probabilities are kept from the forward).
    fn cross_entropy_backward(&self, targets: &Self, g: &Self, rows: usize, vocab: usize) -> Result<Self>;

    /// `out[i, :] = self[idx[i], :]` for a `src_rows x row_len` source; `idx` is u32 of length n_idx
    /// and every index is < src_rows (checked by the op layer).
    fn index_select(&self, idx: &Self, n_idx: usize, row_len: usize) -> Result<Self>;

    /// `out[idx[i], :] += self[i, :]` into a zeroed `out_rows x row_len` output. The CPU sums in
    /// index order; a CUDA kernel may use atomics (documented per kernel).
    fn scatter_add_rows(&self, idx: &Self, n_idx: usize, row_len: usize, out_rows: usize) -> Result<Self>;

    /// `out[r, j] = self[r, idx[r, j]]` for `rows` rows of `n` source and `k` index columns.
    fn gather_last(&self, idx: &Self, rows: usize, n: usize, k: usize) -> Result<Self>;

    /// `out[r, idx[r, j]] += self[r, j]` into a zeroed `rows x n` output (deterministic: per row, in j order).
    fn scatter_add_last(&self, idx: &Self, rows: usize, k: usize, n: usize) -> Result<Self>;

    /// The k largest of each row, in descending order, with their u32 indices; ties go to the lower
    /// index. Returns (values, indices).
    fn topk(&self, rows: usize, n: usize, k: usize) -> Result<(Self, Self)>;

    fn cast(&self, dtype: DType) -> Result<Self>;

    /// Concatenates, for each of `outer` blocks, the `block_lens[i]` elements of each part in order.
    fn concat(parts: &[&Self], outer: usize, block_lens: &[usize]) -> Result<Self>;

    /// For each of `outer` blocks of `block` elements, the `len` elements starting at `start`.
    fn narrow(&self, outer: usize, block: usize, start: usize, len: usize) -> Result<Self>;

    /// Reorders the axes of a tensor of shape `dims`: output axis i is input axis `perm[i]`.
    fn permute(&self, dims: &[usize], perm: &[usize]) -> Result<Self>;

    /// Rotary embedding on `x` of shape (b, t, h, d), rotating the pairs (j, j + d/2) by the angle
    /// whose cos / sin are `cos[t, j]` / `sin[t, j]` (shape (t, d/2)); `inverse` rotates by the
    /// negative angle (the backward).
    fn rope(&self, cos: &Self, sin: &Self, b: usize, t: usize, h: usize, d: usize, inverse: bool) -> Result<Self>;

    /// Dense MoE MLP forward, `self` = x: `u = x·W1ᵀ`, `g[t, j] = p[t, j / width]·gelu(u[t, j])`,
    /// `y = g·W2`. Returns `(y, u, g)`; u and g are what the backward reads.
    fn moe_dense_forward(&self, w1: &Self, w2: &Self, p: &Self, dims: &MoeDenseDims) -> Result<(Self, Self, Self)>;

    /// Dense MoE MLP backward, `self` = dy, from the forward's inputs and its saved `u` and `g`.
    /// Returns `(dx, dw1, dw2, dp)`.
    #[allow(clippy::too_many_arguments)]
    fn moe_dense_backward(&self, x: &Self, w1: &Self, w2: &Self, p: &Self, u: &Self, g: &Self, dims: &MoeDenseDims) -> Result<(Self, Self, Self, Self)>;

    /// A GEMM with a fused epilogue (see GemmLayout); `self` is a.
    fn gemm(&self, b: &Self, bias: Option<&Self>, residual: Option<&Self>, l: &GemmLayout) -> Result<Self>;

    /// A grouped GEMM (see GroupedLayout); `self` is a, `counts` u32 [groups].
    fn grouped_matmul(&self, b: &Self, counts: &Self, l: &GroupedLayout) -> Result<Self>;

    /// Causal attention forward (see AttentionDims), `self` = q; returns `(out, lse)`, the output
    /// and the per-row log-sum-exp of the scaled scores that the backward recomputes them from.
    fn attention_forward(&self, k: &Self, v: &Self, seq_offsets: &[usize], dims: &AttentionDims) -> Result<(Self, Self)>;

    /// Causal attention backward, `self` = d_out, from the forward's inputs, output and lse;
    /// returns `(dq, dk, dv)`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(&self, q: &Self, k: &Self, v: &Self, out: &Self, lse: &Self, seq_offsets: &[usize], dims: &AttentionDims) -> Result<(Self, Self, Self)>;

    /// Paged decode attention (see `PagedAttentionDims` for the contract); `self` is q, `k` / `v`
    /// the cache pools, `table` and `lens` u32.
    fn paged_attention(&self, k: &Self, v: &Self, table: &Self, lens: &Self, dims: &PagedAttentionDims) -> Result<Self>;

    /// In place: `self[slots[i], :] = src[i, :]` for `n` rows of `row_len` (a KV-cache write of
    /// new positions into their pool slots). Slots are < `self.len() / row_len` and distinct.
    fn write_rows(&mut self, src: &Self, slots: &Self, n: usize, row_len: usize) -> Result<()>;

    /// One AdamW step in place on f32 `param`, `m`, `v` with an f32 gradient (`self` is the parameter).
    fn adamw(&mut self, grad: &Self, m: &mut Self, v: &mut Self, hp: &AdamW) -> Result<()>;
}
