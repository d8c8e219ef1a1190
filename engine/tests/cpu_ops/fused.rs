//! The fused row ops of the model (RMSNorm with the residual add, softmax cross-entropy), forward
//! and backward, against plain f64 loops of the unfused formulas; and their sums over rows are the
//! same bits at every thread count.

use engine::{ops, DType, Rng, Tensor};

use super::support::{check, indices, on_threads, randn, random_indices, FLOATS};

/// Ragged shapes; the last takes the multi-threaded path (and several row blocks).
const SHAPES: [&[usize]; 3] = [&[7, 3, 5], &[3, 9], &[301, 131]];

/// y = h / √(mean(h²) + eps) · w for each row of h.
fn rms_norm_ref(h: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let n = w.len();
    h.chunks(n)
        .flat_map(|row| {
            let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / n as f64 + eps).sqrt();
            row.iter().zip(w).map(move |(v, g)| v * inv * g).collect::<Vec<_>>()
        })
        .collect()
}

/// (dh, dw) of the same, from the chain rule written out.
fn rms_norm_backward_ref(dy: &[f64], h: &[f64], w: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let n = w.len();
    let (mut dh, mut dw) = (Vec::with_capacity(h.len()), vec![0.0; n]);
    for (row, dyr) in h.chunks(n).zip(dy.chunks(n)) {
        let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / n as f64 + eps).sqrt();
        let gh: f64 = (0..n).map(|j| dyr[j] * w[j] * row[j]).sum();
        for j in 0..n {
            dh.push(inv * dyr[j] * w[j] - row[j] * inv.powi(3) * gh / n as f64);
            dw[j] += dyr[j] * row[j] * inv;
        }
    }
    (dh, dw)
}

#[test]
fn rms_norm_with_and_without_residual_matches_reference() {
    let mut rng = Rng::new(70);
    for dims in SHAPES {
        let cols = *dims.last().unwrap();
        for dtype in FLOATS {
            let (x, xv) = randn(&mut rng, dims, 2.0, dtype);
            let (r, _) = randn(&mut rng, dims, 1.0, dtype);
            let (w, wv) = randn(&mut rng, &[cols], 1.0, dtype);
            let plain = ops::rms_norm(&x, None, &w, 1e-5).unwrap();
            assert!(plain.sum.is_none(), "no residual, no sum");
            check(&format!("rms_norm {dims:?}"), &plain.y, dims, &rms_norm_ref(&xv, &wv, 1e-5), dtype);
            let fused = ops::rms_norm(&x, Some(&r), &w, 1e-5).unwrap();
            let sum = fused.sum.expect("the sum of x and the residual");
            // The sum must be the plain add's, bit for bit, and the norm computed from it.
            assert_eq!(sum.to_f64_vec().unwrap(), ops::add(&x, &r).unwrap().to_f64_vec().unwrap(), "{dtype} {dims:?}: sum");
            check(&format!("add + rms_norm {dims:?}"), &fused.y, dims, &rms_norm_ref(&sum.to_f64_vec().unwrap(), &wv, 1e-5), dtype);
        }
    }
}

#[test]
fn rms_norm_backward_matches_reference() {
    let mut rng = Rng::new(71);
    for dims in SHAPES {
        let cols = *dims.last().unwrap();
        for dtype in FLOATS {
            let (h, hv) = randn(&mut rng, dims, 2.0, dtype);
            let (dy, dyv) = randn(&mut rng, dims, 1.0, dtype);
            let (w, wv) = randn(&mut rng, &[cols], 1.0, dtype);
            let (dh, dw) = ops::rms_norm_backward(&dy, &h, &w, 1e-3).unwrap();
            let (dh_ref, dw_ref) = rms_norm_backward_ref(&dyv, &hv, &wv, 1e-3);
            check(&format!("rms_norm dh {dims:?}"), &dh, dims, &dh_ref, dtype);
            check(&format!("rms_norm dw {dims:?}"), &dw, &[cols], &dw_ref, dtype);
        }
    }
}

fn cross_entropy_ref(x: &[f64], targets: &[u32], g: &[f64], vocab: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut loss, mut d) = (Vec::new(), Vec::new());
    for ((row, &t), &gr) in x.chunks(vocab).zip(targets).zip(g) {
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        loss.push(max + sum.ln() - row[t as usize]);
        d.extend(row.iter().enumerate().map(|(j, v)| ((v - max).exp() / sum - (j == t as usize) as u8 as f64) * gr));
    }
    (loss, d)
}

#[test]
fn cross_entropy_and_its_gradient_match_reference() {
    let mut rng = Rng::new(72);
    for dims in SHAPES {
        let (lead, vocab) = (&dims[..dims.len() - 1], *dims.last().unwrap());
        let rows: usize = lead.iter().product();
        for dtype in FLOATS {
            let (x, xv) = randn(&mut rng, dims, 3.0, dtype);
            let tv = random_indices(&mut rng, rows, vocab);
            let t = indices(&tv, lead);
            let (g, gv) = randn(&mut rng, lead, 1.0, dtype);
            let (loss_ref, d_ref) = cross_entropy_ref(&xv, &tv, &gv, vocab);
            check(&format!("cross_entropy {dims:?}"), &ops::cross_entropy(&x, &t).unwrap(), lead, &loss_ref, dtype);
            check(&format!("cross_entropy backward {dims:?}"), &ops::cross_entropy_backward(&x, &t, &g).unwrap(), dims, &d_ref, dtype);
        }
    }
    // Logits in the thousands would overflow exp without the max subtraction.
    let (x, _) = randn(&mut rng, &[5, 11], 3.0, DType::F32);
    let big = ops::add_scalar(&x, 3000.0).unwrap();
    let tv = random_indices(&mut rng, 5, 11);
    let (loss_ref, _) = cross_entropy_ref(&big.to_f64_vec().unwrap(), &tv, &[1.0; 5], 11);
    check("cross_entropy +3000", &ops::cross_entropy(&big, &indices(&tv, &[5])).unwrap(), &[5], &loss_ref, DType::F32);
}

#[test]
fn fused_ops_give_the_same_bits_on_any_thread_count() {
    let mut rng = Rng::new(73);
    let dims = [1031, 67];
    let (h, _) = randn(&mut rng, &dims, 2.0, DType::F32);
    let (dy, _) = randn(&mut rng, &dims, 1.0, DType::F32);
    let (w, _) = randn(&mut rng, &[67], 1.0, DType::F32);
    let t = indices(&random_indices(&mut rng, 1031, 67), &[1031]);
    let run = || {
        let (dh, dw) = ops::rms_norm_backward(&dy, &h, &w, 1e-5).unwrap();
        let y = ops::rms_norm(&h, Some(&dy), &w, 1e-5).unwrap().y;
        let d = ops::cross_entropy_backward(&h, &t, &ops::cross_entropy(&h, &t).unwrap()).unwrap();
        [dh, dw, y, d].map(|t: Tensor| t.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>())
    };
    let one = on_threads(1, run);
    for threads in [2, 3] {
        assert!(on_threads(threads, run) == one, "{threads} threads differ from one");
    }
}
