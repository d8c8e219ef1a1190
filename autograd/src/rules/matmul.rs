//! Matrix products. For C = op(A)·op(B) (op transposes when its flag is set) the gradients are
//! dA = dC·op(B)ᵀ and dB = op(A)ᵀ·dC, mapped back to how A and B are stored:
//! - !ta: dA = matmul_t(dC, B, false, !tb)      ta: dA = matmul_t(B, dC, tb, true)
//! - !tb: dB = matmul_t(A, dC, !ta, false)      tb: dB = matmul_t(dC, A, true, ta)
//! Leading axes flattened into rows (B of rank 2) are flattened the same way for backward; a rank-2
//! A shared by a batched B gets its per-batch gradients summed.

use engine::{ops, Tensor};

use super::bytes;
use crate::{Result, Var};

impl Var {
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        self.matmul_t(rhs, false, false)
    }

    pub fn matmul_t(&self, rhs: &Var, ta: bool, tb: bool) -> Result<Var> {
        let value = ops::matmul_t(self.value(), rhs.value(), ta, tb)?;
        let (a, b) = (self.value().clone(), rhs.value().clone());
        Var::custom("matmul", value, &[self, rhs], bytes(&[&a, &b]), move |g, needs| {
            if b.rank() == 2 {
                grads_2d(&a, &b, g, ta, tb, needs)
            } else {
                grads_batched(&a, &b, g, ta, tb, needs)
            }
        })
    }
}

fn grads_2d(a: &Tensor, b: &Tensor, g: &Tensor, ta: bool, tb: bool, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
    // A of rank > 2 (never transposed) is a stack of rows: flatten it and dC to 2-D.
    let a2 = if a.rank() > 2 { a.reshape([a.elem_count() / a.shape().last(), a.shape().last()])? } else { a.clone() };
    let g2 = g.reshape([g.elem_count() / g.shape().last(), g.shape().last()])?;
    let da = if needs[0] {
        let da = if ta { ops::matmul_t(b, &g2, tb, true)? } else { ops::matmul_t(&g2, b, false, !tb)? };
        Some(da.reshape(a.shape().clone())?)
    } else {
        None
    };
    let db = if needs[1] {
        Some(if tb { ops::matmul_t(&g2, &a2, true, ta)? } else { ops::matmul_t(&a2, &g2, !ta, false)? })
    } else {
        None
    };
    Ok(vec![da, db])
}

fn grads_batched(a: &Tensor, b: &Tensor, g: &Tensor, ta: bool, tb: bool, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
    let da = if needs[0] {
        // d(op(A)) per batch entry = dC·op(B)ᵀ, then undo the transpose and any sharing of A.
        let d_op_a = ops::matmul_t(g, b, false, !tb)?;
        let d_op_a = if a.rank() == 2 { ops::sum(&d_op_a, 0, false)? } else { d_op_a };
        Some(if ta { ops::transpose(&d_op_a, -1, -2)? } else { d_op_a })
    } else {
        None
    };
    let db = if needs[1] {
        // d(op(B)) per batch entry = op(A)ᵀ·dC, stored transposed when tb.
        let d_op_b = ops::matmul_t(a, g, !ta, false)?;
        Some(if tb { ops::transpose(&d_op_b, -1, -2)? } else { d_op_b })
    } else {
        None
    };
    Ok(vec![da, db])
}
