//! The dense-training MoE MLP op (`Var::moe_dense_mlp`): its value against the composed ops it
//! replaces, finite-difference gradients of all four inputs in f64 on the CPU (ragged token counts,
//! odd widths), a check that a wrong backward rule fails, and its argument errors.

use autograd::{check_gradients, relative_error, Result, Var};
use engine::{ops, DType, Device, Rng, Tensor};

const EPS: f64 = 1e-5;
const TOL: f64 = 1e-6;

fn randn(rng: &mut Rng, dims: &[usize], std: f64) -> Tensor {
    Tensor::randn(dims.to_vec(), 0.0, std, DType::F64, &Device::Cpu, rng).unwrap()
}

/// x [T, d], w1 and w2 [E·f, d], p [T, E] (a softmax, as a router gives; the op does not require it).
fn inputs(rng: &mut Rng, tokens: usize, d: usize, experts: usize, width: usize) -> Vec<Tensor> {
    let p = ops::softmax(&randn(rng, &[tokens, experts], 1.0)).unwrap();
    vec![randn(rng, &[tokens, d], 1.0), randn(rng, &[experts * width, d], 0.5), randn(rng, &[experts * width, d], 0.5), p]
}

fn fused(v: &[Var]) -> Result<Var> {
    v[0].moe_dense_mlp(&v[1], &v[2], &v[3])
}

/// The same function from generic ops, as the model composed it before the fused op.
fn composed(v: &[Var]) -> Result<Var> {
    let (tokens, experts) = (v[3].dims()[0], v[3].dims()[1]);
    let width = v[1].dims()[0] / experts;
    let h = v[0].matmul_t(&v[1], false, true)?.gelu()?.reshape([tokens, experts, width])?;
    h.mul(&v[3].reshape([tokens, experts, 1])?)?.reshape([tokens, experts * width])?.matmul(&v[2])
}

const SHAPES: [(usize, usize, usize, usize); 5] = [(7, 4, 3, 5), (1, 3, 2, 4), (5, 6, 1, 3), (11, 5, 4, 2), (3, 8, 3, 1)];

#[test]
fn value_matches_the_composed_ops() {
    let mut rng = Rng::new(41);
    for (t, d, e, f) in SHAPES {
        let xs: Vec<Var> = inputs(&mut rng, t, d, e, f).into_iter().map(Var::constant).collect();
        let (a, b) = (fused(&xs).unwrap(), composed(&xs).unwrap());
        assert_eq!(a.dims(), b.dims());
        let err = relative_error(&a.value().to_f64_vec().unwrap(), &b.value().to_f64_vec().unwrap());
        assert!(err < 1e-12, "T={t} d={d} E={e} f={f}: relative error {err:e}");
    }
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = Rng::new(42);
    for (t, d, e, f) in SHAPES {
        let report = check_gradients(fused, &inputs(&mut rng, t, d, e, f), EPS).unwrap();
        assert!(report.max_error() < TOL, "T={t} d={d} E={e} f={f}: relative errors (x, w1, w2, p) {:?}", report.per_input);
    }
}

#[test]
fn gradients_match_the_composed_ops_when_inputs_are_reused() {
    // x feeds the op and the loss again, so the tape must add the op's dx to another gradient.
    let mut rng = Rng::new(43);
    let xs = inputs(&mut rng, 6, 4, 3, 5);
    let report = check_gradients(|v| fused(v)?.add(&v[0].sqr()?), &xs, EPS).unwrap();
    assert!(report.max_error() < TOL, "{:?}", report.per_input);
}

/// The op's forward with its real backward, except that gradient `wrong` is doubled.
fn with_wrong_gradient(v: &[Var], wrong: usize) -> Result<Var> {
    let (x, w1, w2, p) = (v[0].value().clone(), v[1].value().clone(), v[2].value().clone(), v[3].value().clone());
    let out = ops::moe_dense_mlp(&x, &w1, &w2, &p)?;
    let saved = out.saved;
    Var::custom("moe_dense_mlp_wrong", out.y, &[&v[0], &v[1], &v[2], &v[3]], 0, move |dy, _| {
        let g = ops::moe_dense_mlp_backward(dy, &x, &w1, &w2, &p, &saved)?;
        let mut all = vec![g.dx, g.dw1, g.dw2, g.dp];
        all[wrong] = ops::mul_scalar(&all[wrong], 2.0)?;
        Ok(all.into_iter().map(Some).collect())
    })
}

#[test]
fn a_wrong_gradient_of_any_input_fails_the_check() {
    let mut rng = Rng::new(44);
    let xs = inputs(&mut rng, 5, 4, 3, 5);
    for wrong in 0..4 {
        let report = check_gradients(|v| with_wrong_gradient(v, wrong), &xs, EPS).unwrap();
        assert!(report.per_input[wrong] > 0.1, "doubling gradient {wrong} passed: {:?}", report.per_input);
    }
}

#[test]
fn bad_arguments_are_errors() {
    let mut rng = Rng::new(45);
    let [x, w1, w2, p]: [Tensor; 4] = inputs(&mut rng, 4, 6, 3, 2).try_into().unwrap();
    let f32_p = ops::cast(&p, DType::F32).unwrap();
    let cases: Vec<(&str, engine::Result<ops::MoeDenseOut>)> = vec![
        ("p with 4 experts for 6 rows of w1", ops::moe_dense_mlp(&x, &w1, &w2, &randn(&mut rng, &[4, 4], 1.0))),
        ("p with another token count", ops::moe_dense_mlp(&x, &w1, &w2, &randn(&mut rng, &[5, 3], 1.0))),
        ("w1 of another d", ops::moe_dense_mlp(&x, &randn(&mut rng, &[6, 5], 1.0), &w2, &p)),
        ("w2 shaped unlike w1", ops::moe_dense_mlp(&x, &w1, &randn(&mut rng, &[6, 7], 1.0), &p)),
        ("x of rank 3", ops::moe_dense_mlp(&x.reshape([2, 2, 6]).unwrap(), &w1, &w2, &p)),
        ("p of another dtype", ops::moe_dense_mlp(&x, &w1, &w2, &f32_p)),
        ("p with no experts", ops::moe_dense_mlp(&x, &w1, &w2, &randn(&mut rng, &[4, 0], 1.0))),
    ];
    for (what, result) in cases {
        assert!(result.is_err(), "{what} was accepted");
    }
    let out = ops::moe_dense_mlp(&x, &w1, &w2, &p).unwrap();
    let bad_dy = randn(&mut rng, &[4, 5], 1.0);
    assert!(ops::moe_dense_mlp_backward(&bad_dy, &x, &w1, &w2, &p, &out.saved).is_err(), "dy of the wrong shape was accepted");
    let u32_x = Tensor::from_slice(&[0u32; 24], [4, 6], &Device::Cpu).unwrap();
    assert!(ops::moe_dense_mlp(&u32_x, &w1, &w2, &p).is_err(), "u32 inputs were accepted");
}
