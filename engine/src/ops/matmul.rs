//! Matrix products. `matmul_t(a, b, ta, tb)` computes `op(a) · op(b)` where op transposes the last
//! two axes when its flag is set:
//! - `b` of rank 2: `a` is `[..., m, k]` (leading axes are flattened into rows; with `ta`, `a` must be
//!   rank 2, stored `[k, m]`), the output is `[..., m, n]`.
//! - `b` of rank 3 `[batch, k, n]`: `a` is `[batch, m, k]` or rank 2 (shared by every batch entry);
//!   the output is `[batch, m, n]`.

use super::{check_float, check_same_device, check_same_dtype, dispatch2};
use crate::backend::{BackendStorage, MatmulLayout};
use crate::{Error, Result, Shape, Tensor};

pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_t(a, b, false, false)
}

pub fn matmul_t(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    const OP: &str = "matmul";
    check_same_device(OP, a, b)?;
    check_same_dtype(OP, a, b)?;
    check_float(OP, a)?;
    let (ad, bd) = (a.dims(), b.dims());
    if ad.len() < 2 || !(2..=3).contains(&bd.len()) {
        return Err(Error::shape(OP, format!("expected a of rank >= 2 and b of rank 2 or 3, got {:?} and {:?}", a.shape(), b.shape())));
    }
    let (bk, n) = if trans_b { (bd[bd.len() - 1], bd[bd.len() - 2]) } else { (bd[bd.len() - 2], bd[bd.len() - 1]) };
    let (layout, out): (MatmulLayout, Vec<usize>) = if bd.len() == 2 {
        if trans_a && ad.len() != 2 {
            return Err(Error::shape(OP, format!("a transposed must be rank 2, got {:?}", a.shape())));
        }
        let (m, k) = if trans_a { (ad[1], ad[0]) } else { (ad[..ad.len() - 1].iter().product(), ad[ad.len() - 1]) };
        if k != bk {
            return Err(Error::shape(OP, format!("inner sizes differ: {:?}{} · {:?}{}", a.shape(), if trans_a { "ᵀ" } else { "" }, b.shape(), if trans_b { "ᵀ" } else { "" })));
        }
        let mut out = if trans_a { vec![m] } else { ad[..ad.len() - 1].to_vec() };
        out.push(n);
        (MatmulLayout { batch: 1, m, n, k, trans_a, trans_b, a_batch_stride: 0, b_batch_stride: 0 }, out)
    } else {
        let batch = bd[0];
        let (a_batch, m, k) = match ad.len() {
            2 => (None, if trans_a { ad[1] } else { ad[0] }, if trans_a { ad[0] } else { ad[1] }),
            3 => (Some(ad[0]), if trans_a { ad[2] } else { ad[1] }, if trans_a { ad[1] } else { ad[2] }),
            _ => return Err(Error::shape(OP, format!("batched product needs a of rank 2 or 3, got {:?}", a.shape()))),
        };
        if a_batch.is_some_and(|ab| ab != batch) || k != bk {
            return Err(Error::shape(OP, format!("batched shapes do not match: {:?} · {:?} (trans_a={trans_a}, trans_b={trans_b})", a.shape(), b.shape())));
        }
        let layout = MatmulLayout {
            batch,
            m,
            n,
            k,
            trans_a,
            trans_b,
            a_batch_stride: if a_batch.is_some() { m * k } else { 0 },
            b_batch_stride: k * n,
        };
        (layout, vec![batch, m, n])
    };
    let s = dispatch2!(a, b, |x, y| x.matmul(y, &layout));
    Ok(Tensor::from_storage(s, Shape::new(out), a.dtype()))
}
