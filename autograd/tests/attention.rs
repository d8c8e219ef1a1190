//! Fused causal attention (`Var::causal_attention`): its value against the composed ops the model
//! used before (scores, additive causal mask, softmax, weighted values, keys and values repeated
//! to the query heads), finite-difference gradients of q, k and v in f64 on the CPU (ragged and
//! packed lengths across a tile edge, GQA groupings), and a check that a wrong rule fails.

use autograd::{check_gradients, relative_error, Result, Var};
use engine::ops::{self, Sequences};
use engine::{DType, Device, Rng, Tensor};

const EPS: f64 = 1e-5;
const TOL: f64 = 1e-6;

fn randn(rng: &mut Rng, dims: &[usize]) -> Tensor {
    Tensor::randn(dims.to_vec(), 0.0, 1.0, DType::F64, &Device::Cpu, rng).unwrap()
}

/// q [B, T, Hq, d], k and v [B, T, Hkv, d].
fn inputs(rng: &mut Rng, (b, t, hq, hkv, d): (usize, usize, usize, usize, usize)) -> Vec<Tensor> {
    vec![
        randn(rng, &[b, t, hq, d]),
        randn(rng, &[b, t, hkv, d]),
        randn(rng, &[b, t, hkv, d]),
    ]
}

/// The same function from generic ops, with a `[T, T]` mask.
fn composed(v: &[Var], scale: f64) -> Result<Var> {
    let (qd, kd) = (v[0].dims().to_vec(), v[1].dims().to_vec());
    let (b, t, hq, d, hkv) = (qd[0], qd[1], qd[2], qd[3], kd[2]);
    let q = v[0].permute(&[0, 2, 1, 3])?.reshape([b * hq, t, d])?;
    let rows: Vec<u32> = (0..b * hq)
        .map(|r| ((r / hq) * hkv + (r % hq) / (hq / hkv)) as u32)
        .collect();
    let rows = Tensor::from_slice(&rows, [rows.len()], &Device::Cpu)?;
    let spread = |x: &Var| -> Result<Var> {
        x.permute(&[0, 2, 1, 3])?
            .reshape([b * hkv, t * d])?
            .index_select(&rows)?
            .reshape([b * hq, t, d])
    };
    let (k, vv) = (spread(&v[1])?, spread(&v[2])?);
    let mask: Vec<f64> = (0..t * t)
        .map(|i| {
            if i % t > i / t {
                f64::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = Var::constant(Tensor::from_f64s(&mask, [t, t], DType::F64, &Device::Cpu)?);
    let probs = q
        .matmul_t(&k, false, true)?
        .mul_scalar(scale)?
        .add(&mask)?
        .softmax()?;
    probs
        .matmul(&vv)?
        .reshape([b, hq, t, d])?
        .permute(&[0, 2, 1, 3])
}

const SHAPES: [(usize, usize, usize, usize, usize); 4] = [
    (2, 5, 2, 2, 3),
    (1, 7, 4, 1, 4),
    (2, 3, 4, 2, 2),
    (1, 66, 2, 1, 2),
];

#[test]
fn value_matches_the_composed_ops() {
    let mut rng = Rng::new(61);
    for s in SHAPES {
        let xs: Vec<Var> = inputs(&mut rng, s).into_iter().map(Var::constant).collect();
        let fused = xs[0]
            .causal_attention(&xs[1], &xs[2], Sequences::Batched, 0.7)
            .unwrap();
        let comp = composed(&xs, 0.7).unwrap();
        let err = relative_error(
            &fused.value().to_f64_vec().unwrap(),
            &comp.value().to_f64_vec().unwrap(),
        );
        assert!(err < 1e-12, "{s:?}: relative error {err:e}");
    }
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = Rng::new(62);
    // The 66-long shape crosses the 64-position tile edge; keep its other sizes tiny.
    for s in SHAPES {
        let check = check_gradients(
            |v| v[0].causal_attention(&v[1], &v[2], Sequences::Batched, 0.7),
            &inputs(&mut rng, s),
            EPS,
        )
        .unwrap();
        assert!(check.max_error() < TOL, "{s:?}: {:?}", check.per_input);
    }
}

#[test]
fn packed_gradients_match_finite_differences() {
    let mut rng = Rng::new(63);
    let offsets = [0, 3, 3, 9, 10];
    let xs = vec![
        randn(&mut rng, &[10, 4, 3]),
        randn(&mut rng, &[10, 2, 3]),
        randn(&mut rng, &[10, 2, 3]),
    ];
    let check = check_gradients(
        |v| v[0].causal_attention(&v[1], &v[2], Sequences::Packed(&offsets), 0.5),
        &xs,
        EPS,
    )
    .unwrap();
    assert!(check.max_error() < TOL, "{:?}", check.per_input);
}

/// The op's forward with its real backward, except that gradient `wrong` is doubled.
fn with_wrong_gradient(v: &[Var], wrong: usize) -> Result<Var> {
    let (q, k, vv) = (
        v[0].value().clone(),
        v[1].value().clone(),
        v[2].value().clone(),
    );
    let fwd = ops::causal_attention(&q, &k, &vv, Sequences::Batched, 0.7)?;
    let out = fwd.out.clone();
    Var::custom(
        "causal_attention_wrong",
        out,
        &[&v[0], &v[1], &v[2]],
        0,
        move |g, _| {
            let gr = ops::causal_attention_backward(g, &q, &k, &vv, &fwd, Sequences::Batched, 0.7)?;
            let mut all = vec![gr.dq, gr.dk, gr.dv];
            all[wrong] = ops::mul_scalar(&all[wrong], 2.0)?;
            Ok(all.into_iter().map(Some).collect())
        },
    )
}

#[test]
fn a_wrong_rule_fails_the_check() {
    let mut rng = Rng::new(64);
    let xs = inputs(&mut rng, (1, 4, 2, 1, 3));
    for wrong in 0..3 {
        let check = check_gradients(|v| with_wrong_gradient(v, wrong), &xs, EPS).unwrap();
        assert!(
            check.per_input[wrong] > 0.1,
            "gradient {wrong}: {:?}",
            check.per_input
        );
    }
}
