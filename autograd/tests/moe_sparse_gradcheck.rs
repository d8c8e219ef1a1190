//! Finite-difference gradient checks (f64, CPU) of the sparse expert MLP in x, w1, w2 (w3 for
//! SwiGLU experts) and the router weights, for top-k routing, threshold routing (a variable number
//! of experts per token) and a capacity limit that drops pairs.

use autograd::{check_gradients, Var};
use engine::ops::{self, RouteMode};
use engine::{DType, Device, Rng, Tensor};

fn randn(rng: &mut Rng, dims: &[usize]) -> Tensor {
    Tensor::randn(dims.to_vec(), 0.0, 1.0, DType::F64, &Device::Cpu, rng).unwrap()
}

/// GeLU experts (inputs x, w1, w2, weights) or, `gated`, SwiGLU ones (x, w1, w3, w2, weights).
fn check(mode: RouteMode, capacity: Option<usize>, seed: u64, gated: bool) {
    let (t, d, e, f) = (7, 5, 4, 3);
    let mut rng = Rng::new(seed);
    let probs = ops::softmax(&randn(&mut rng, &[t, e])).unwrap();
    let routes = ops::moe_route(&probs, mode, false).unwrap();
    let perm = ops::moe_permute(&routes, e, capacity).unwrap();
    if capacity.is_some() {
        assert!(perm.dropped.to_vec::<u32>().unwrap()[0] > 0, "the capacity case must drop pairs");
    }
    let mut inputs: Vec<Tensor> = (0..if gated { 3 } else { 2 }).map(|_| randn(&mut rng, &[e * f, d])).collect();
    inputs.insert(0, randn(&mut rng, &[t, d]));
    inputs.push(ops::mul(&routes.weights, &routes.mask).unwrap());
    let report = match gated {
        false => check_gradients(|v: &[Var]| v[0].moe_sparse_mlp(&v[1], &v[2], &v[3], &perm), &inputs, 1e-5),
        true => check_gradients(|v: &[Var]| v[0].moe_sparse_swiglu(&v[1], &v[2], &v[3], &v[4], &perm), &inputs, 1e-5),
    }
    .unwrap();
    assert!(report.max_error() < 1e-6, "{mode:?}, capacity {capacity:?}, gated {gated}: relative errors {:?}", report.per_input);
}

#[test]
fn top_k_matches_finite_differences() {
    check(RouteMode::TopK(2), None, 1, false);
}

#[test]
fn threshold_matches_finite_differences() {
    check(RouteMode::Threshold { eps: 1.0, k_max: 3 }, None, 2, false);
}

#[test]
fn capacity_dropping_matches_finite_differences() {
    check(RouteMode::TopK(3), Some(3), 3, false);
}

#[test]
fn a_wrong_gradient_fails_the_check() {
    // The same check on a function whose gradient the rule does not describe: scaling the
    // output after the op is fine, but feeding a detached weight must lose that input's gradient.
    let (t, d, e, f) = (4, 3, 3, 2);
    let mut rng = Rng::new(9);
    let probs = ops::softmax(&randn(&mut rng, &[t, e])).unwrap();
    let routes = ops::moe_route(&probs, RouteMode::TopK(2), false).unwrap();
    let perm = ops::moe_permute(&routes, e, None).unwrap();
    let inputs = [randn(&mut rng, &[t, d]), randn(&mut rng, &[e * f, d]), randn(&mut rng, &[e * f, d]), routes.weights.clone()];
    let report = check_gradients(|v: &[Var]| v[0].moe_sparse_mlp(&v[1], &v[2], &v[3].detach(), &perm), &inputs, 1e-5).unwrap();
    assert!(report.per_input[3] > 0.1, "a missing weight gradient passed: {:?}", report.per_input);
}

#[test]
fn swiglu_matches_finite_differences() {
    check(RouteMode::TopK(2), None, 4, true);
    check(RouteMode::Threshold { eps: 1.0, k_max: 3 }, None, 5, true);
    check(RouteMode::TopK(3), Some(3), 6, true);
}
