//! Rotary embedding against the pairwise rotation written out, and the inverse undoing it.

use engine::{ops, DType, Rng};

use super::support::{check, randn, tensor, FLOATS};

/// cos / sin tables `[t, d/2]` of the usual frequencies, in `dtype`, with their stored values.
fn tables(t: usize, d: usize, dtype: DType) -> ((engine::Tensor, Vec<f64>), (engine::Tensor, Vec<f64>)) {
    let half = d / 2;
    let angle = |i: usize| (i / half) as f64 * 10000f64.powf(-2.0 * (i % half) as f64 / d as f64);
    let cos: Vec<f64> = (0..t * half).map(|i| angle(i).cos()).collect();
    let sin: Vec<f64> = (0..t * half).map(|i| angle(i).sin()).collect();
    (tensor(&cos, &[t, half], dtype), tensor(&sin, &[t, half], dtype))
}

fn rope_ref(x: &[f64], cos: &[f64], sin: &[f64], [b, t, h, d]: [usize; 4], inverse: bool) -> Vec<f64> {
    let half = d / 2;
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for p in 0..t {
            for hi in 0..h {
                let base = ((bi * t + p) * h + hi) * d;
                for j in 0..half {
                    let (c, s) = (cos[p * half + j], if inverse { -sin[p * half + j] } else { sin[p * half + j] });
                    let (x1, x2) = (x[base + j], x[base + j + half]);
                    out[base + j] = x1 * c - x2 * s;
                    out[base + j + half] = x2 * c + x1 * s;
                }
            }
        }
    }
    out
}

#[test]
fn rope_matches_reference_and_inverse_undoes_it() {
    let mut rng = Rng::new(50);
    // Ragged; large enough for threads.
    for dims in [[2, 7, 3, 10], [2, 67, 4, 64]] {
        for dtype in FLOATS {
            let (x, xv) = randn(&mut rng, &dims, 1.0, dtype);
            let ((cos, cv), (sin, sv)) = tables(dims[1], dims[3], dtype);
            for inverse in [false, true] {
                let out = ops::rope(&x, &cos, &sin, inverse).unwrap();
                check(&format!("rope {dims:?} inverse={inverse}"), &out, &dims, &rope_ref(&xv, &cv, &sv, dims, inverse), dtype);
            }
            let there = ops::rope(&x, &cos, &sin, false).unwrap();
            let back = ops::rope(&there, &cos, &sin, true).unwrap();
            // Exact only up to the table's rounding (cos² + sin² = 1 to the dtype's precision) and
            // the intermediate store, hence twice the tolerance.
            super::support::check_tol("rope round trip", &back, &dims, &xv, dtype, 2.0 * dtype.tolerance());
        }
    }
}
