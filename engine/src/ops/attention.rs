//! Fused causal self-attention (FlashAttention-2 semantics): `out = softmax(scale·Q·Kᵀ + causal
//! mask)·V` per query head, without ever forming the `[T, T]` scores. The forward also returns the
//! log-sum-exp of each query row's scaled scores, from which the backward recomputes the
//! probabilities tile by tile.
//!
//! Shapes: q `[B, T, Hq, d]` with k, v `[B, T, Hkv, d]` (B sequences of T), or the packed form q
//! `[N, Hq, d]`, k, v `[N, Hkv, d]` with sequence offsets (`cu_seqlens`: 0 = o_0 ≤ o_1 ≤ … = N,
//! sequence s is rows o_s .. o_{s+1}). Hq must be a multiple of Hkv; query head h reads key/value
//! head `h / (Hq / Hkv)` (GQA, and MoA's experts sharing key/value heads). The output has q's
//! shape, the lse q's shape without the last axis, in f64 for f64 inputs and f32 otherwise.

use super::{check_float, check_same_device, check_same_dtype};
use crate::backend::{AttentionDims, BackendStorage};
use crate::{DType, Error, Result, Storage, Tensor};

const OP: &str = "causal_attention";

/// The forward's result: the output and what the backward needs besides the inputs.
#[derive(Debug, Clone)]
pub struct AttentionOut {
    pub out: Tensor,
    /// Log-sum-exp of each query row's scaled scores (`q` shape without the head dim).
    pub lse: Tensor,
}

#[derive(Debug, Clone)]
pub struct AttentionGrads {
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
}

/// How rows split into sequences.
#[derive(Debug, Clone, Copy)]
pub enum Sequences<'a> {
    /// q, k, v are `[B, T, H, d]`: B sequences of T.
    Batched,
    /// q, k, v are `[N, H, d]`, cut at these offsets (`cu_seqlens`).
    Packed(&'a [usize]),
}

/// The causal attention forward with scores `scale · q·k`.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seqs: Sequences,
    scale: f64,
) -> Result<AttentionOut> {
    let (dims, offsets) = check(q, k, v, seqs, scale)?;
    let (out, lse) = match (q.storage(), k.storage(), v.storage()) {
        (Storage::Cpu(q), Storage::Cpu(k), Storage::Cpu(v)) => {
            let (o, l) = q.attention_forward(k, v, &offsets, &dims)?;
            (Storage::Cpu(o), Storage::Cpu(l))
        }
        (Storage::Cuda(q), Storage::Cuda(k), Storage::Cuda(v)) => {
            let (o, l) = q.attention_forward(k, v, &offsets, &dims)?;
            (Storage::Cuda(o), Storage::Cuda(l))
        }
        _ => unreachable!("devices were checked to match"),
    };
    Ok(AttentionOut {
        out: Tensor::from_storage(out, q.shape().clone(), q.dtype()),
        lse: Tensor::from_storage(lse, lse_dims(q), stats_dtype(q.dtype())),
    })
}

/// The backward from `d_out` (q's shape), given the forward's inputs and result.
pub fn causal_attention_backward(
    d_out: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    fwd: &AttentionOut,
    seqs: Sequences,
    scale: f64,
) -> Result<AttentionGrads> {
    let (dims, offsets) = check(q, k, v, seqs, scale)?;
    for (name, t) in [("d_out", d_out), ("out", &fwd.out)] {
        check_same_device(OP, q, t)?;
        check_same_dtype(OP, q, t)?;
        if t.shape() != q.shape() {
            return Err(Error::shape(
                OP,
                format!(
                    "{name} is {:?}, expected q's shape {:?}",
                    t.shape(),
                    q.shape()
                ),
            ));
        }
    }
    check_same_device(OP, q, &fwd.lse)?;
    if fwd.lse.dims() != lse_dims(q) || fwd.lse.dtype() != stats_dtype(q.dtype()) {
        return Err(Error::shape(
            OP,
            format!(
                "lse is {:?} {}, expected {:?} {}",
                fwd.lse.shape(),
                fwd.lse.dtype(),
                lse_dims(q),
                stats_dtype(q.dtype())
            ),
        ));
    }
    let (dq, dk, dv) = match (
        d_out.storage(),
        q.storage(),
        k.storage(),
        v.storage(),
        fwd.out.storage(),
        fwd.lse.storage(),
    ) {
        (
            Storage::Cpu(g),
            Storage::Cpu(q),
            Storage::Cpu(k),
            Storage::Cpu(v),
            Storage::Cpu(o),
            Storage::Cpu(l),
        ) => {
            let (a, b, c) = g.attention_backward(q, k, v, o, l, &offsets, &dims)?;
            (Storage::Cpu(a), Storage::Cpu(b), Storage::Cpu(c))
        }
        (
            Storage::Cuda(g),
            Storage::Cuda(q),
            Storage::Cuda(k),
            Storage::Cuda(v),
            Storage::Cuda(o),
            Storage::Cuda(l),
        ) => {
            let (a, b, c) = g.attention_backward(q, k, v, o, l, &offsets, &dims)?;
            (Storage::Cuda(a), Storage::Cuda(b), Storage::Cuda(c))
        }
        _ => unreachable!("devices were checked to match"),
    };
    let dtype = q.dtype();
    Ok(AttentionGrads {
        dq: Tensor::from_storage(dq, q.shape().clone(), dtype),
        dk: Tensor::from_storage(dk, k.shape().clone(), dtype),
        dv: Tensor::from_storage(dv, v.shape().clone(), dtype),
    })
}

/// The dtype of the saved softmax statistics: f64 for f64, f32 for everything narrower.
pub fn stats_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

fn lse_dims(q: &Tensor) -> Vec<usize> {
    q.dims()[..q.rank() - 1].to_vec()
}

/// Checks devices, dtypes, shapes and offsets; returns the sizes and the sequence offsets.
fn check(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seqs: Sequences,
    scale: f64,
) -> Result<(AttentionDims, Vec<usize>)> {
    check_float(OP, q)?;
    for t in [k, v] {
        check_same_device(OP, q, t)?;
        check_same_dtype(OP, q, t)?;
    }
    let shapes = || format!("q {:?}, k {:?}, v {:?}", q.shape(), k.shape(), v.shape());
    let rank = match seqs {
        Sequences::Batched => 4,
        Sequences::Packed(_) => 3,
    };
    let (qd, kd) = (q.dims(), k.dims());
    if qd.len() != rank || kd.len() != rank || v.dims() != kd {
        let form = if rank == 4 {
            "q [B, T, Hq, d], k and v [B, T, Hkv, d]"
        } else {
            "q [N, Hq, d], k and v [N, Hkv, d] (packed sequences)"
        };
        return Err(Error::shape(
            OP,
            format!("expected {form}; got {}", shapes()),
        ));
    }
    let (q_heads, kv_heads, head_dim) = (qd[rank - 2], kd[rank - 2], qd[rank - 1]);
    if qd[..rank - 2] != kd[..rank - 2] || kd[rank - 1] != head_dim {
        return Err(Error::shape(
            OP,
            format!(
                "q, k and v must share the token axes and the head dim; got {}",
                shapes()
            ),
        ));
    }
    if head_dim == 0 || kv_heads == 0 || q_heads % kv_heads != 0 {
        return Err(Error::shape(OP, format!("needs a non-zero head dim and query heads a non-zero multiple of the key/value heads; got {}", shapes())));
    }
    if !scale.is_finite() {
        return Err(Error::invalid(
            OP,
            format!("scale must be finite, got {scale}"),
        ));
    }
    let tokens = qd[..rank - 2].iter().product();
    let offsets: Vec<usize> = match seqs {
        Sequences::Batched => (0..=qd[0]).map(|b| b * qd[1]).collect(),
        Sequences::Packed(offsets) => offsets.to_vec(),
    };
    let dims = AttentionDims {
        tokens,
        q_heads,
        kv_heads,
        head_dim,
        scale,
    };
    dims.check_offsets(OP, &offsets)?;
    Ok((dims, offsets))
}
