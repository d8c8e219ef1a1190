//! Element-wise ops: binary with broadcasting (the gradient is summed back to each input's shape),
//! unary maps, and ops with a scalar.

use engine::{ops, BinaryOp, ScalarOp, UnaryOp};

use super::{bytes, unbroadcast};
use crate::{Result, Var};

impl Var {
    pub fn add(&self, rhs: &Var) -> Result<Var> {
        let value = ops::add(self.value(), rhs.value())?;
        let (sa, sb) = (self.shape().clone(), rhs.shape().clone());
        Var::custom("add", value, &[self, rhs], 0, move |g, needs| {
            Ok(vec![
                needs[0].then(|| unbroadcast(g.clone(), &sa)).transpose()?,
                needs[1].then(|| unbroadcast(g.clone(), &sb)).transpose()?,
            ])
        })
    }

    pub fn sub(&self, rhs: &Var) -> Result<Var> {
        let value = ops::sub(self.value(), rhs.value())?;
        let (sa, sb) = (self.shape().clone(), rhs.shape().clone());
        Var::custom("sub", value, &[self, rhs], 0, move |g, needs| {
            Ok(vec![
                needs[0].then(|| unbroadcast(g.clone(), &sa)).transpose()?,
                needs[1].then(|| unbroadcast(ops::neg(g)?, &sb)).transpose()?,
            ])
        })
    }

    pub fn mul(&self, rhs: &Var) -> Result<Var> {
        let value = ops::mul(self.value(), rhs.value())?;
        let (a, b) = (self.value().clone(), rhs.value().clone());
        Var::custom("mul", value, &[self, rhs], bytes(&[&a, &b]), move |g, needs| {
            Ok(vec![
                needs[0].then(|| unbroadcast(ops::mul(g, &b)?, a.shape())).transpose()?,
                needs[1].then(|| unbroadcast(ops::mul(g, &a)?, b.shape())).transpose()?,
            ])
        })
    }

    pub fn div(&self, rhs: &Var) -> Result<Var> {
        let value = ops::div(self.value(), rhs.value())?;
        let (b, out) = (rhs.value().clone(), value.clone());
        let sa = self.shape().clone();
        Var::custom("div", value, &[self, rhs], bytes(&[&b, &out]), move |g, needs| {
            // d(a/b)/da = 1/b; d(a/b)/db = -(a/b)/b.
            let g_over_b = ops::div(g, &b)?;
            Ok(vec![
                needs[0].then(|| unbroadcast(g_over_b.clone(), &sa)).transpose()?,
                needs[1].then(|| unbroadcast(ops::neg(&ops::mul(&g_over_b, &out)?)?, b.shape())).transpose()?,
            ])
        })
    }

    /// Element-wise maximum; on ties the gradient goes to `rhs`.
    pub fn maximum(&self, rhs: &Var) -> Result<Var> {
        let value = ops::maximum(self.value(), rhs.value())?;
        let (a, b) = (self.value().clone(), rhs.value().clone());
        Var::custom("maximum", value, &[self, rhs], bytes(&[&a, &b]), move |g, needs| {
            let a_wins = ops::scalar(&ops::sub(&a, &b)?, ScalarOp::Gt, 0.0)?;
            let ga = ops::mul(g, &a_wins)?;
            let gb = ops::sub(g, &ga)?;
            Ok(vec![
                needs[0].then(|| unbroadcast(ga, a.shape())).transpose()?,
                needs[1].then(|| unbroadcast(gb, b.shape())).transpose()?,
            ])
        })
    }

    pub fn neg(&self) -> Result<Var> {
        self.unary(UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Var> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Var> {
        self.unary(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Var> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn recip(&self) -> Result<Var> {
        self.unary(UnaryOp::Recip)
    }
    pub fn sqr(&self) -> Result<Var> {
        self.unary(UnaryOp::Sqr)
    }
    pub fn abs(&self) -> Result<Var> {
        self.unary(UnaryOp::Abs)
    }
    pub fn tanh(&self) -> Result<Var> {
        self.unary(UnaryOp::Tanh)
    }
    pub fn relu(&self) -> Result<Var> {
        self.unary(UnaryOp::Relu)
    }
    pub fn gelu(&self) -> Result<Var> {
        self.unary(UnaryOp::Gelu)
    }
    pub fn silu(&self) -> Result<Var> {
        self.unary(UnaryOp::Silu)
    }
    pub fn sigmoid(&self) -> Result<Var> {
        self.unary(UnaryOp::Sigmoid)
    }

    /// Any unary map, with its derivative expressed through the input `x` or the output `y`.
    pub fn unary(&self, op: UnaryOp) -> Result<Var> {
        let y = ops::unary(self.value(), op)?;
        let x = self.value().clone();
        let out = y.clone();
        let saved = match op {
            UnaryOp::Neg => 0,
            UnaryOp::Exp | UnaryOp::Sqrt | UnaryOp::Recip | UnaryOp::Tanh | UnaryOp::Sigmoid => bytes(&[&out]),
            _ => bytes(&[&x]),
        };
        Var::custom("unary", y, &[self], saved, move |g, _| {
            let d = match op {
                UnaryOp::Neg => ops::neg(g)?,
                UnaryOp::Exp => ops::mul(g, &out)?,
                UnaryOp::Log => ops::div(g, &x)?,
                UnaryOp::Sqrt => ops::div(&ops::mul_scalar(g, 0.5)?, &out)?,
                UnaryOp::Recip => ops::neg(&ops::mul(g, &ops::unary(&out, UnaryOp::Sqr)?)?)?,
                UnaryOp::Sqr => ops::mul(&ops::mul_scalar(g, 2.0)?, &x)?,
                UnaryOp::Abs => {
                    let sign = ops::sub(&ops::scalar(&x, ScalarOp::Gt, 0.0)?, &ops::scalar(&ops::neg(&x)?, ScalarOp::Gt, 0.0)?)?;
                    ops::mul(g, &sign)?
                }
                UnaryOp::Tanh => ops::mul(g, &ops::affine(&ops::unary(&out, UnaryOp::Sqr)?, -1.0, 1.0)?)?,
                UnaryOp::Relu => ops::mul(g, &ops::scalar(&x, ScalarOp::Gt, 0.0)?)?,
                UnaryOp::Gelu => ops::binary(&x, g, BinaryOp::GeluGrad)?,
                UnaryOp::Silu => ops::binary(&x, g, BinaryOp::SiluGrad)?,
                UnaryOp::Sigmoid => ops::mul(g, &ops::mul(&out, &ops::affine(&out, -1.0, 1.0)?)?)?,
            };
            Ok(vec![Some(d)])
        })
    }

    pub fn add_scalar(&self, s: f64) -> Result<Var> {
        self.scalar(ScalarOp::Add, s)
    }
    pub fn mul_scalar(&self, s: f64) -> Result<Var> {
        self.scalar(ScalarOp::Mul, s)
    }
    pub fn powf(&self, s: f64) -> Result<Var> {
        self.scalar(ScalarOp::Pow, s)
    }

    /// An op with a scalar. `ScalarOp::Gt` makes a mask, which has no gradient: the result is a
    /// constant.
    pub fn scalar(&self, op: ScalarOp, s: f64) -> Result<Var> {
        let y = ops::scalar(self.value(), op, s)?;
        if op == ScalarOp::Gt {
            return Ok(Var::constant(y));
        }
        let x = self.value().clone();
        let saved = if matches!(op, ScalarOp::Pow | ScalarOp::Max) { bytes(&[&x]) } else { 0 };
        Var::custom("scalar", y, &[self], saved, move |g, _| {
            let d = match op {
                ScalarOp::Add => g.clone(),
                ScalarOp::Mul => ops::mul_scalar(g, s)?,
                ScalarOp::Pow => ops::mul(&ops::mul_scalar(g, s)?, &ops::scalar(&x, ScalarOp::Pow, s - 1.0)?)?,
                ScalarOp::Max => ops::mul(g, &ops::scalar(&x, ScalarOp::Gt, s)?)?,
                ScalarOp::Gt => unreachable!("masks return before recording"),
            };
            Ok(vec![Some(d)])
        })
    }
}
