//! Finite-difference gradient checks (central differences, f64, CPU) for every differentiable op.

mod common;

use autograd::{check_gradients, Var};
use common::randn;
use engine::{DType, Rng};

const EPS: f64 = 1e-5;
const TOL: f64 = 1e-6;

#[test]
fn every_op_matches_finite_differences() {
    let mut failures = Vec::new();
    for case in common::all_cases() {
        match check_gradients(&case.f, &case.inputs, EPS) {
            Ok(report) if report.max_error() < TOL => {}
            Ok(report) => failures.push(format!("{}: relative errors {:?}", case.name, report.per_input)),
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(failures.is_empty(), "gradient checks failed:\n{}", failures.join("\n"));
}

#[test]
fn cast_through_f32() {
    let x = randn(&mut Rng::new(11), &[2, 3]);
    // The rule is exact but the numbers pass through f32: a looser step and tolerance.
    let report = check_gradients(|v| v[0].cast(DType::F32)?.sqr()?.cast(DType::F64), &[x], 1e-2).unwrap();
    assert!(report.max_error() < 1e-4, "cast: {:?}", report.per_input);
}

#[test]
fn a_wrong_rule_fails_the_check() {
    let mut r = Rng::new(10);
    // y = x², with the factor 2 forgotten in the backward rule.
    let wrong_square = |v: &[Var]| {
        let x = v[0].value().clone();
        let y = engine::ops::mul(&x, &x)?;
        Var::custom("wrong_square", y, &[&v[0]], 0, move |g, _| Ok(vec![Some(engine::ops::mul(g, &x)?)]))
    };
    let report = check_gradients(wrong_square, &[randn(&mut r, &[5])], EPS).unwrap();
    assert!(report.max_error() > 0.1, "a wrong rule passed: {:?}", report.per_input);
}
