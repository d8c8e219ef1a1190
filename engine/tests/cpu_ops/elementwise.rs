//! Unary, scalar and broadcast binary ops against f64 formulas.

use engine::{ops, BinaryOp, Rng, ScalarOp, UnaryOp};

use super::support::{broadcast_flat, check, randn, rel_err, uniform, unravel, FLOATS};

const GELU_C: f64 = 0.797_884_560_802_865_4; // √(2/π)

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + (GELU_C * (x + 0.044715 * x * x * x)).tanh())
}

fn gelu_grad(x: f64) -> f64 {
    let t = (GELU_C * (x + 0.044715 * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044715 * x * x)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn silu_grad(x: f64) -> f64 {
    let s = sigmoid(x);
    s + x * s * (1.0 - s)
}

/// The analytic derivatives used as references agree with central differences of the functions.
#[test]
fn reference_derivatives_match_finite_differences() {
    let h = 1e-5;
    for i in 0..41 {
        let x = -5.0 + 0.25 * i as f64;
        let silu = |x: f64| x * sigmoid(x);
        assert!((gelu_grad(x) - (gelu(x + h) - gelu(x - h)) / (2.0 * h)).abs() < 1e-8, "gelu' at {x}");
        assert!((silu_grad(x) - (silu(x + h) - silu(x - h)) / (2.0 * h)).abs() < 1e-8, "silu' at {x}");
    }
}

fn unary_ref(op: UnaryOp) -> fn(f64) -> f64 {
    match op {
        UnaryOp::Neg => |x| -x,
        UnaryOp::Exp => f64::exp,
        UnaryOp::Log => f64::ln,
        UnaryOp::Sqrt => f64::sqrt,
        UnaryOp::Recip => f64::recip,
        UnaryOp::Sqr => |x| x * x,
        UnaryOp::Abs => f64::abs,
        UnaryOp::Tanh => f64::tanh,
        UnaryOp::Relu => |x| x.max(0.0),
        UnaryOp::Gelu => gelu,
        UnaryOp::Silu => |x| x * sigmoid(x),
        UnaryOp::Sigmoid => sigmoid,
    }
}

const UNARY: [UnaryOp; 12] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Recip,
    UnaryOp::Sqr,
    UnaryOp::Abs,
    UnaryOp::Tanh,
    UnaryOp::Relu,
    UnaryOp::Gelu,
    UnaryOp::Silu,
    UnaryOp::Sigmoid,
];

#[test]
fn unary_ops_match_reference() {
    let mut rng = Rng::new(1);
    // The second shape is large enough to run on several threads.
    for dims in [&[7, 13, 5][..], &[300, 129]] {
        for dtype in FLOATS {
            for op in UNARY {
                let (x, xv) = match op {
                    UnaryOp::Log | UnaryOp::Sqrt => uniform(&mut rng, dims, 0.1, 4.0, dtype),
                    UnaryOp::Recip => uniform(&mut rng, dims, 0.5, 2.0, dtype),
                    _ => randn(&mut rng, dims, 2.0, dtype),
                };
                let f = unary_ref(op);
                let reference: Vec<f64> = xv.iter().map(|&v| f(v)).collect();
                check(&format!("{op:?} {dims:?}"), &ops::unary(&x, op).unwrap(), dims, &reference, dtype);
            }
        }
    }
}

#[test]
fn scalar_ops_match_reference() {
    let mut rng = Rng::new(2);
    let dims = [7, 13, 5];
    for dtype in FLOATS {
        let (x, xv) = randn(&mut rng, &dims, 1.5, dtype);
        let (pos, pv) = uniform(&mut rng, &dims, 0.1, 3.0, dtype);
        type Case<'a> = (ScalarOp, f64, &'a engine::Tensor, &'a [f64], fn(f64, f64) -> f64);
        let cases: [Case; 6] = [
            (ScalarOp::Add, 0.75, &x, &xv, |v, s| v + s),
            (ScalarOp::Mul, -1.5, &x, &xv, |v, s| v * s),
            (ScalarOp::Pow, 1.7, &pos, &pv, f64::powf),
            (ScalarOp::Pow, 2.0, &x, &xv, f64::powf),
            (ScalarOp::Max, 0.25, &x, &xv, f64::max),
            (ScalarOp::Gt, 0.25, &x, &xv, |v, s| if v > s { 1.0 } else { 0.0 }),
        ];
        for (op, s, t, tv, f) in cases {
            let reference: Vec<f64> = tv.iter().map(|&v| f(v, s)).collect();
            check(&format!("{op:?} {s}"), &ops::scalar(t, op, s).unwrap(), &dims, &reference, dtype);
        }
    }
}

fn binary_ref(op: BinaryOp) -> fn(f64, f64) -> f64 {
    match op {
        BinaryOp::Add => |a, b| a + b,
        BinaryOp::Sub => |a, b| a - b,
        BinaryOp::Mul => |a, b| a * b,
        BinaryOp::Div => |a, b| a / b,
        BinaryOp::Maximum => f64::max,
        BinaryOp::Minimum => f64::min,
        BinaryOp::GeluGrad => |x, g| g * gelu_grad(x),
        BinaryOp::SiluGrad => |x, g| g * silu_grad(x),
    }
}

const BINARY: [BinaryOp; 8] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Maximum,
    BinaryOp::Minimum,
    BinaryOp::GeluGrad,
    BinaryOp::SiluGrad,
];

/// Broadcasting in both directions and through the middle, plus sizes that go multi-threaded.
const BROADCASTS: [(&[usize], &[usize], &[usize]); 10] = [
    (&[7, 13, 5], &[7, 13, 5], &[7, 13, 5]),
    (&[11, 13], &[13], &[11, 13]),
    (&[13], &[11, 13], &[11, 13]),
    (&[5, 3, 1], &[5, 3, 7], &[5, 3, 7]),
    (&[5, 3, 7], &[5, 3, 1], &[5, 3, 7]),
    (&[1, 9], &[6, 1], &[6, 9]),
    (&[7, 1, 5], &[1, 13, 1], &[7, 13, 5]),
    (&[3, 4, 5, 6], &[4, 1, 6], &[3, 4, 5, 6]),
    (&[261, 131], &[261, 131], &[261, 131]),
    (&[261, 131], &[131], &[261, 131]),
];

#[test]
fn binary_ops_broadcast_and_match_reference() {
    let mut rng = Rng::new(3);
    for (ad, bd, od) in BROADCASTS {
        for dtype in FLOATS {
            for op in BINARY {
                let (a, av) = randn(&mut rng, ad, 1.5, dtype);
                // Divisors stay away from zero so the reference is well conditioned.
                let (b, bv) = if op == BinaryOp::Div { uniform(&mut rng, bd, 0.5, 2.0, dtype) } else { randn(&mut rng, bd, 1.5, dtype) };
                let f = binary_ref(op);
                let n: usize = od.iter().product();
                let reference: Vec<f64> = (0..n)
                    .map(|i| {
                        let idx = unravel(i, od);
                        f(av[broadcast_flat(&idx, ad)], bv[broadcast_flat(&idx, bd)])
                    })
                    .collect();
                check(&format!("{op:?} {ad:?} {bd:?}"), &ops::binary(&a, &b, op).unwrap(), od, &reference, dtype);
            }
        }
    }
}

/// A NaN input must reach the output of max / relu rather than be dropped.
#[test]
fn nan_propagates_through_max_and_relu() {
    let nan = engine::Tensor::from_slice(&[f32::NAN, 1.0], [2], &engine::Device::Cpu).unwrap();
    let one = engine::Tensor::from_slice(&[0.0f32, f32::NAN], [2], &engine::Device::Cpu).unwrap();
    let m = ops::maximum(&nan, &one).unwrap().to_vec::<f32>().unwrap();
    assert!(m[0].is_nan() && m[1].is_nan(), "maximum dropped a NaN: {m:?}");
    let r = ops::unary(&nan, UnaryOp::Relu).unwrap().to_vec::<f32>().unwrap();
    assert!(r[0].is_nan(), "relu dropped a NaN");
    let mx = ops::max(&nan, 0, false).unwrap().to_scalar().unwrap();
    assert!(mx.is_nan(), "max reduction dropped a NaN");
    assert!(rel_err(&[f64::NAN], &[1.0]).is_infinite());
}
