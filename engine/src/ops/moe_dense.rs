//! The dense-training MoE MLP (DS-MoE: every expert on every token, weighted by its router
//! probability) as one op, so a backend can fuse the router gating and GeLU into its products:
//!
//! `y[t] = Σ_e p[t, e] · gelu(x[t]·W1_eᵀ)·W2_e`
//!
//! with x `[T, d]`, the stacked expert weights w1 and w2 `[E·f, d]` (expert e owns rows
//! `e·f .. (e+1)·f` of both), and p `[T, E]`. E is read from p and f = rows(w1) / E.
//!
//! The forward returns y and what the backward reads (`MoeDenseSaved`: the pre-activation
//! `u = x·W1ᵀ` and the gated activation `g = p·gelu(u)`, both `[T, E·f]`). The backward returns
//! the gradients of all four inputs.

use super::{check_float, check_same_device, check_same_dtype};
use crate::backend::{BackendStorage, MoeDenseDims};
use crate::{Error, Result, Storage, Tensor};

const OP: &str = "moe_dense_mlp";

/// What the forward keeps for the backward, `[T, E·f]` each.
#[derive(Debug, Clone)]
pub struct MoeDenseSaved {
    /// The pre-activation `x·W1ᵀ`.
    pub u: Tensor,
    /// The gated activation `p[t, j / f]·gelu(u[t, j])`, the input of the second product.
    pub g: Tensor,
}

#[derive(Debug, Clone)]
pub struct MoeDenseOut {
    pub y: Tensor,
    pub saved: MoeDenseSaved,
}

#[derive(Debug, Clone)]
pub struct MoeDenseGrads {
    pub dx: Tensor,
    pub dw1: Tensor,
    pub dw2: Tensor,
    pub dp: Tensor,
}

/// The forward: `y = Σ_e p_e · gelu(x·W1_eᵀ)·W2_e`.
pub fn moe_dense_mlp(x: &Tensor, w1: &Tensor, w2: &Tensor, p: &Tensor) -> Result<MoeDenseOut> {
    let dims = check(x, w1, w2, p)?;
    let (y, u, g) = match (x.storage(), w1.storage(), w2.storage(), p.storage()) {
        (Storage::Cpu(x), Storage::Cpu(w1), Storage::Cpu(w2), Storage::Cpu(p)) => {
            let (y, u, g) = x.moe_dense_forward(w1, w2, p, &dims)?;
            (Storage::Cpu(y), Storage::Cpu(u), Storage::Cpu(g))
        }
        (Storage::Cuda(x), Storage::Cuda(w1), Storage::Cuda(w2), Storage::Cuda(p)) => {
            let (y, u, g) = x.moe_dense_forward(w1, w2, p, &dims)?;
            (Storage::Cuda(y), Storage::Cuda(u), Storage::Cuda(g))
        }
        _ => unreachable!("devices were checked to match"),
    };
    let dtype = x.dtype();
    let hidden = [dims.tokens, dims.hidden()];
    Ok(MoeDenseOut {
        y: Tensor::from_storage(y, [dims.tokens, dims.d], dtype),
        saved: MoeDenseSaved { u: Tensor::from_storage(u, hidden, dtype), g: Tensor::from_storage(g, hidden, dtype) },
    })
}

/// The backward from `dy` (`[T, d]`), given the forward's inputs and what it saved.
pub fn moe_dense_mlp_backward(dy: &Tensor, x: &Tensor, w1: &Tensor, w2: &Tensor, p: &Tensor, saved: &MoeDenseSaved) -> Result<MoeDenseGrads> {
    let dims = check(x, w1, w2, p)?;
    let hidden = [dims.tokens, dims.hidden()];
    for (name, t, want) in [("dy", dy, &[dims.tokens, dims.d][..]), ("u", &saved.u, &hidden[..]), ("g", &saved.g, &hidden[..])] {
        check_same_device(OP, x, t)?;
        check_same_dtype(OP, x, t)?;
        if t.dims() != want {
            return Err(Error::shape(OP, format!("{name} is {:?}, expected {want:?} for x {:?}, w1 {:?}, p {:?}", t.shape(), x.shape(), w1.shape(), p.shape())));
        }
    }
    let (dx, dw1, dw2, dp) = match (dy.storage(), x.storage(), w1.storage(), w2.storage(), p.storage(), saved.u.storage(), saved.g.storage()) {
        (Storage::Cpu(dy), Storage::Cpu(x), Storage::Cpu(w1), Storage::Cpu(w2), Storage::Cpu(p), Storage::Cpu(u), Storage::Cpu(g)) => {
            let (a, b, c, d) = dy.moe_dense_backward(x, w1, w2, p, u, g, &dims)?;
            (Storage::Cpu(a), Storage::Cpu(b), Storage::Cpu(c), Storage::Cpu(d))
        }
        (Storage::Cuda(dy), Storage::Cuda(x), Storage::Cuda(w1), Storage::Cuda(w2), Storage::Cuda(p), Storage::Cuda(u), Storage::Cuda(g)) => {
            let (a, b, c, d) = dy.moe_dense_backward(x, w1, w2, p, u, g, &dims)?;
            (Storage::Cuda(a), Storage::Cuda(b), Storage::Cuda(c), Storage::Cuda(d))
        }
        _ => unreachable!("devices were checked to match"),
    };
    let dtype = x.dtype();
    Ok(MoeDenseGrads {
        dx: Tensor::from_storage(dx, x.shape().clone(), dtype),
        dw1: Tensor::from_storage(dw1, w1.shape().clone(), dtype),
        dw2: Tensor::from_storage(dw2, w2.shape().clone(), dtype),
        dp: Tensor::from_storage(dp, p.shape().clone(), dtype),
    })
}

/// Checks devices, dtypes and shapes of the forward's inputs and derives the sizes.
fn check(x: &Tensor, w1: &Tensor, w2: &Tensor, p: &Tensor) -> Result<MoeDenseDims> {
    check_float(OP, x)?;
    for t in [w1, w2, p] {
        check_same_device(OP, x, t)?;
        check_same_dtype(OP, x, t)?;
    }
    let shapes = || format!("x {:?}, w1 {:?}, w2 {:?}, p {:?}", x.shape(), w1.shape(), w2.shape(), p.shape());
    let (xd, w1d, pd) = (x.dims(), w1.dims(), p.dims());
    if xd.len() != 2 || w1d.len() != 2 || pd.len() != 2 || w2.dims() != w1d {
        return Err(Error::shape(OP, format!("expected x [T, d], w1 and w2 [E·f, d], p [T, E]; got {}", shapes())));
    }
    let (tokens, d, experts) = (xd[0], xd[1], pd[1]);
    if w1d[1] != d || pd[0] != tokens {
        return Err(Error::shape(OP, format!("x, w1, w2 must share d and x, p must share T; got {}", shapes())));
    }
    if experts == 0 || w1d[0] == 0 || w1d[0] % experts != 0 {
        return Err(Error::shape(OP, format!("rows of w1 must be a non-zero multiple of the {experts} experts (columns of p); got {}", shapes())));
    }
    Ok(MoeDenseDims { tokens, d, experts, width: w1d[0] / experts })
}
