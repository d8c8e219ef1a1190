//! The differentiable graphs every backward test runs: one case per op, with broadcasting cases
//! and values used more than once in one graph. The gradient check runs them in f64 on the CPU;
//! the parity test runs them on the CPU and on CUDA and compares the gradients.

use autograd::{Result, Var};
use engine::{DType, Device, Rng, Tensor};

pub fn randn(rng: &mut Rng, dims: &[usize]) -> Tensor {
    Tensor::randn(dims.to_vec(), 0.0, 1.0, DType::F64, &Device::Cpu, rng).unwrap()
}

/// Values bounded away from 0 (for log, sqrt, division, kinks of abs and relu): ±[0.5, 1.5).
fn away_from_zero(rng: &mut Rng, dims: &[usize], positive: bool) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            let m = 0.5 + rng.uniform();
            if positive || rng.uniform() < 0.5 { m } else { -m }
        })
        .collect();
    Tensor::from_f64s(&v, dims.to_vec(), DType::F64, &Device::Cpu).unwrap()
}

fn idx(v: &[u32], dims: &[usize]) -> Tensor {
    Tensor::from_slice(v, dims.to_vec(), &Device::Cpu).unwrap()
}

/// A constant of a case (indices, rope tables; built on the CPU) on the device of the input `like`,
/// float constants in its dtype: the cases also run on CUDA and in f32 (backward_parity.rs).
fn beside(t: &Tensor, like: &Var) -> Result<Tensor> {
    let t = if t.dtype() == DType::U32 { t.clone() } else { engine::ops::cast(t, like.value().dtype())? };
    Ok(t.to_device(&like.device())?)
}

/// One differentiable graph and the f64 inputs to check it at.
pub struct Case {
    pub name: String,
    pub f: Box<dyn Fn(&[Var]) -> Result<Var>>,
    pub inputs: Vec<Tensor>,
}

/// Collects cases; `check` keeps the call sites short.
#[derive(Default)]
pub struct Cases(pub Vec<Case>);

impl Cases {
    fn check(&mut self, name: &str, f: impl Fn(&[Var]) -> Result<Var> + 'static, inputs: &[Tensor]) {
        self.0.push(Case { name: name.to_string(), f: Box::new(f), inputs: inputs.to_vec() });
    }
}

/// Every case.
pub fn all_cases() -> Vec<Case> {
    let mut c = Cases::default();
    binary_ops_with_broadcasting(&mut c);
    unary_ops(&mut c);
    matmul_every_layout(&mut c);
    reductions(&mut c);
    softmax_family(&mut c);
    indexing(&mut c);
    layout_ops(&mut c);
    norms_and_linear(&mut c);
    values_used_twice_accumulate(&mut c);
    c.0
}

fn binary_ops_with_broadcasting(c: &mut Cases) {
    let mut r = Rng::new(1);
    let cases: [(&[usize], &[usize]); 4] = [(&[3, 4], &[3, 4]), (&[3, 4], &[4]), (&[2, 1, 4], &[3, 1]), (&[5, 1], &[1, 6])];
    for (sa, sb) in cases {
        let (a, b) = (randn(&mut r, sa), randn(&mut r, sb));
        c.check("add", move |x| x[0].add(&x[1]), &[a.clone(), b.clone()]);
        c.check("sub", move |x| x[0].sub(&x[1]), &[a.clone(), b.clone()]);
        c.check("mul", move |x| x[0].mul(&x[1]), &[a.clone(), b.clone()]);
        c.check("div", move |x| x[0].div(&x[1]), &[a.clone(), away_from_zero(&mut r, sb, false)]);
        c.check("maximum", move |x| x[0].maximum(&x[1]), &[a.clone(), b.clone()]);
    }
}

fn unary_ops(c: &mut Cases) {
    let mut r = Rng::new(2);
    let dims = [4, 7];
    let any = randn(&mut r, &dims);
    let pos = away_from_zero(&mut r, &dims, true);
    let nonzero = away_from_zero(&mut r, &dims, false);
    c.check("neg", move |x| x[0].neg(), &[any.clone()]);
    c.check("exp", move |x| x[0].exp(), &[any.clone()]);
    c.check("log", move |x| x[0].log(), &[pos.clone()]);
    c.check("sqrt", move |x| x[0].sqrt(), &[pos.clone()]);
    c.check("recip", move |x| x[0].recip(), &[nonzero.clone()]);
    c.check("sqr", move |x| x[0].sqr(), &[any.clone()]);
    c.check("abs", move |x| x[0].abs(), &[nonzero.clone()]);
    c.check("tanh", move |x| x[0].tanh(), &[any.clone()]);
    c.check("relu", move |x| x[0].relu(), &[nonzero.clone()]);
    c.check("gelu", move |x| x[0].gelu(), &[any.clone()]);
    c.check("silu", move |x| x[0].silu(), &[any.clone()]);
    c.check("sigmoid", move |x| x[0].sigmoid(), &[any.clone()]);
    c.check("add_scalar", move |x| x[0].add_scalar(0.7), &[any.clone()]);
    c.check("mul_scalar", move |x| x[0].mul_scalar(-1.3), &[any.clone()]);
    c.check("powf", move |x| x[0].powf(-0.5), &[pos.clone()]);
    c.check("scalar max", move |x| x[0].scalar(engine::ScalarOp::Max, 0.0), &[nonzero]);
}

fn matmul_every_layout(c: &mut Cases) {
    let mut r = Rng::new(3);
    let (m, k, n, b) = (3, 5, 4, 2);
    for ta in [false, true] {
        for tb in [false, true] {
            let a = randn(&mut r, &if ta { [k, m] } else { [m, k] });
            let w = randn(&mut r, &if tb { [n, k] } else { [k, n] });
            c.check("matmul 2d", move |x| x[0].matmul_t(&x[1], ta, tb), &[a, w.clone()]);
            let ab = randn(&mut r, &if ta { [b, k, m] } else { [b, m, k] });
            let wb = randn(&mut r, &if tb { [b, n, k] } else { [b, k, n] });
            c.check("matmul batched", move |x| x[0].matmul_t(&x[1], ta, tb), &[ab, wb.clone()]);
            let shared = randn(&mut r, &if ta { [k, m] } else { [m, k] });
            c.check("matmul shared a", move |x| x[0].matmul_t(&x[1], ta, tb), &[shared, wb]);
            if !ta {
                let stacked = randn(&mut r, &[2, 3, k]);
                c.check("matmul flattened rows", move |x| x[0].matmul_t(&x[1], false, tb), &[stacked, w]);
            }
        }
    }
}

fn reductions(c: &mut Cases) {
    let mut r = Rng::new(4);
    let x = randn(&mut r, &[3, 4, 5]);
    for dim in [0, 1, 2, -1] {
        for keep in [false, true] {
            c.check("sum", move |v| v[0].sum(dim, keep), &[x.clone()]);
            c.check("mean", move |v| v[0].mean(dim, keep), &[x.clone()]);
            c.check("max", move |v| v[0].max(dim, keep), &[x.clone()]);
        }
    }
    c.check("sum_all", move |v| v[0].sum_all(), &[x.clone()]);
    c.check("mean_all", move |v| v[0].mean_all(), &[x]);
}

fn softmax_family(c: &mut Cases) {
    let mut r = Rng::new(5);
    let x = randn(&mut r, &[2, 3, 7]);
    c.check("softmax", move |v| v[0].softmax(), &[x.clone()]);
    c.check("log_softmax", move |v| v[0].log_softmax(), &[x.clone()]);
    let targets = idx(&[0, 6, 3, 3, 1, 5], &[2, 3]);
    c.check("cross_entropy", move |v| v[0].cross_entropy(&beside(&targets, &v[0])?), &[x]);
}

fn indexing(c: &mut Cases) {
    let mut r = Rng::new(6);
    let table = randn(&mut r, &[5, 3]);
    let rows = idx(&[4, 0, 4, 2], &[4]);
    let rows2 = rows.clone();
    c.check("index_select", move |v| v[0].index_select(&beside(&rows2, &v[0])?), &[table.clone()]);
    c.check("scatter_add_rows", move |v| v[0].scatter_add_rows(&beside(&rows, &v[0])?, 6), &[randn(&mut r, &[4, 3])]);
    let x = randn(&mut r, &[3, 6]);
    let cols = idx(&[5, 0, 5, 1, 1, 2, 0, 3, 4], &[3, 3]);
    let cols2 = cols.clone();
    c.check("gather_last", move |v| v[0].gather_last(&beside(&cols2, &v[0])?), &[x.clone()]);
    c.check("scatter_add_last", move |v| v[0].scatter_add_last(&beside(&cols, &v[0])?, 7), &[randn(&mut r, &[3, 3])]);
    c.check("topk", move |v| Ok(v[0].topk(2)?.0), &[x]);
}

fn layout_ops(c: &mut Cases) {
    let mut r = Rng::new(7);
    let x = randn(&mut r, &[2, 3, 4]);
    c.check("reshape", move |v| v[0].reshape([4, 6]), &[x.clone()]);
    c.check("permute", move |v| v[0].permute(&[2, 0, 1]), &[x.clone()]);
    c.check("transpose", move |v| v[0].transpose(0, -1), &[x.clone()]);
    c.check("narrow", move |v| v[0].narrow(1, 1, 2), &[x.clone()]);
    c.check("split", move |v| {
        let parts = v[0].split(&[1, 3], -1)?;
        parts[0].mul(&parts[1].sum(-1, true)?)
    }, &[x.clone()]);
    c.check("concat", move |v| Var::concat(&[&v[0], &v[1]], 1), &[x.clone(), randn(&mut r, &[2, 2, 4])]);
    let (t, d) = (3, 4);
    let angles: Vec<f64> = (0..t * d / 2).map(|i| 0.3 * i as f64).collect();
    let cos = Tensor::from_f64s(&angles.iter().map(|a| a.cos()).collect::<Vec<_>>(), [t, d / 2], DType::F64, &Device::Cpu).unwrap();
    let sin = Tensor::from_f64s(&angles.iter().map(|a| a.sin()).collect::<Vec<_>>(), [t, d / 2], DType::F64, &Device::Cpu).unwrap();
    c.check("rope", move |v| v[0].rope(&beside(&cos, &v[0])?, &beside(&sin, &v[0])?), &[randn(&mut r, &[2, t, 2, d])]);
}

fn norms_and_linear(c: &mut Cases) {
    let mut r = Rng::new(8);
    let x = randn(&mut r, &[4, 6]);
    let w = randn(&mut r, &[6]);
    let b = randn(&mut r, &[6]);
    c.check("rms_norm", move |v| v[0].rms_norm(&v[1], 1e-5), &[x.clone(), w.clone()]);
    // Both outputs of the fused add + norm in the loss, so h's gradient has two paths.
    c.check("add_rms_norm", move |v| {
        let (h, y) = v[0].add_rms_norm(&v[1], &v[2], 1e-5)?;
        h.tanh()?.add(&y)
    }, &[x.clone(), randn(&mut r, &[4, 6]), w.clone()]);
    c.check("layer_norm", move |v| v[0].layer_norm(&v[1], &v[2], 1e-5), &[x.clone(), w, b]);
    c.check("linear", move |v| v[0].linear(&v[1], Some(&v[2])), &[x, randn(&mut r, &[6, 3]), randn(&mut r, &[3])]);
}

fn values_used_twice_accumulate(c: &mut Cases) {
    let mut r = Rng::new(9);
    let x = randn(&mut r, &[3, 4]);
    c.check("x*x + x", move |v| v[0].mul(&v[0])?.add(&v[0]), &[x.clone()]);
    // A weight used in two layers of one graph, and an input reaching the output by two paths.
    c.check("shared weight", move |v| v[0].matmul(&v[1])?.tanh()?.matmul(&v[1]), &[x, randn(&mut r, &[4, 4])]);
}

