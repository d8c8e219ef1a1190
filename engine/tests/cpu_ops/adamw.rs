//! AdamW: one step against values worked out by hand, and several steps against the f64 formula.

use engine::{ops, AdamW, DType, Device, Rng, Tensor};

use super::support::{check, randn, uniform};

fn f32_tensor(v: &[f32]) -> Tensor {
    Tensor::from_slice(v, [v.len()], &Device::Cpu).unwrap()
}

fn assert_near(got: &[f32], want: &[f64], what: &str) {
    for (g, w) in got.iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-6 * w.abs().max(1.0), "{what}: {got:?} vs {want:?}");
    }
}

#[test]
fn one_step_matches_hand_computed_values() {
    let mut p = f32_tensor(&[1.0, -2.0, 0.5]);
    let g = f32_tensor(&[0.5, 0.1, -0.2]);
    let mut m = f32_tensor(&[0.0; 3]);
    let mut v = f32_tensor(&[0.0; 3]);
    let hp = AdamW { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 1 };
    ops::adamw_step(&mut p, &g, &mut m, &mut v, &hp).unwrap();
    // m = 0.1·g; v = 0.001·g²; step 1 bias correction gives m̂ = g, √v̂ = |g|, so the update is
    // ±|g| / (|g| + 1e-8) plus 0.01·p, times lr.
    assert_near(&m.to_vec::<f32>().unwrap(), &[0.05, 0.01, -0.02], "m");
    assert_near(&v.to_vec::<f32>().unwrap(), &[0.00025, 0.00001, 0.00004], "v");
    let want = [
        1.0 - 0.1 * (0.5 / (0.5 + 1e-8) + 0.01),
        -2.0 - 0.1 * (0.1 / (0.1 + 1e-8) - 0.02),
        0.5 - 0.1 * (-0.2 / (0.2 + 1e-8) + 0.005),
    ];
    assert_near(&p.to_vec::<f32>().unwrap(), &want, "p");
    assert!((want[0] - 0.899).abs() < 1e-7 && (want[1] + 2.098).abs() < 1e-7 && (want[2] - 0.5995).abs() < 1e-7);
}

#[test]
fn later_steps_match_the_f64_formula() {
    let mut rng = Rng::new(60);
    // Ragged; large enough for threads.
    for n in [37usize, 40_009] {
        let (mut p, pv) = randn(&mut rng, &[n], 1.0, DType::F32);
        let (g, gv) = randn(&mut rng, &[n], 0.3, DType::F32);
        let (mut m, mv) = randn(&mut rng, &[n], 0.1, DType::F32);
        let (mut v, vv) = uniform(&mut rng, &[n], 0.001, 0.01, DType::F32);
        let hp = AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 7 };
        ops::adamw_step(&mut p, &g, &mut m, &mut v, &hp).unwrap();
        let (mut pr, mut mr, mut vr) = (pv.clone(), mv.clone(), vv.clone());
        for i in 0..n {
            mr[i] = hp.beta1 * mv[i] + (1.0 - hp.beta1) * gv[i];
            vr[i] = hp.beta2 * vv[i] + (1.0 - hp.beta2) * gv[i] * gv[i];
            let m_hat = mr[i] / (1.0 - hp.beta1.powi(7));
            let v_hat = vr[i] / (1.0 - hp.beta2.powi(7));
            pr[i] = pv[i] - hp.lr * (m_hat / (v_hat.sqrt() + hp.eps) + hp.weight_decay * pv[i]);
        }
        check("m", &m, &[n], &mr, DType::F32);
        check("v", &v, &[n], &vr, DType::F32);
        check("p", &p, &[n], &pr, DType::F32);
    }
}
