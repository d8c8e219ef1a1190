//! Reductions on every axis, `sum_to`, argmax and (log-)softmax against plain loops.

use engine::{ops, DType, Rng, ReduceOp, Shape};

use super::support::{broadcast_flat, check, randn, tensor, unravel, FLOATS};

/// Reduces axis `d` of `dims` with plain loops.
fn reduce_ref(x: &[f64], dims: &[usize], d: usize, op: ReduceOp) -> Vec<f64> {
    let outer: usize = dims[..d].iter().product();
    let inner: usize = dims[d + 1..].iter().product();
    let size = dims[d];
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for j in 0..inner {
            let vals = (0..size).map(|s| x[(o * size + s) * inner + j]);
            out.push(match op {
                ReduceOp::Sum => vals.sum(),
                ReduceOp::Mean => vals.sum::<f64>() / size as f64,
                ReduceOp::Max => vals.fold(f64::NEG_INFINITY, f64::max),
                ReduceOp::Min => vals.fold(f64::INFINITY, f64::min),
            });
        }
    }
    out
}

fn without(dims: &[usize], d: usize, keepdim: bool) -> Vec<usize> {
    let mut out = dims.to_vec();
    if keepdim {
        out[d] = 1;
    } else {
        out.remove(d);
    }
    out
}

#[test]
fn every_reduction_on_every_axis_matches_reference() {
    let mut rng = Rng::new(20);
    // Ragged small; long rows (lane remainder, threads); a tall first axis (columns split over
    // threads); a wide middle axis.
    for dims in [&[7, 13, 5][..], &[9, 4099], &[1031, 37], &[3, 2053, 7]] {
        for dtype in FLOATS {
            // A mean offset keeps the sums away from zero, so the relative error is meaningful.
            let (x, _) = randn(&mut rng, dims, 1.0, dtype);
            let x = ops::add_scalar(&x, 0.5).unwrap();
            let xv = x.to_f64_vec().unwrap();
            for d in 0..dims.len() {
                for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
                    for keepdim in [false, true] {
                        let out = ops::reduce(&x, d as isize, op, keepdim).unwrap();
                        let what = format!("{op:?} dim {d} of {dims:?} keepdim={keepdim}");
                        check(&what, &out, &without(dims, d, keepdim), &reduce_ref(&xv, dims, d, op), dtype);
                    }
                }
            }
        }
    }
}

#[test]
fn negative_dims_count_from_the_end() {
    let mut rng = Rng::new(21);
    let (x, xv) = randn(&mut rng, &[4, 6, 3], 1.0, DType::F64);
    let out = ops::sum(&x, -2, false).unwrap();
    check("sum dim -2", &out, &[4, 3], &reduce_ref(&xv, &[4, 6, 3], 1, ReduceOp::Sum), DType::F64);
}

#[test]
fn sum_to_undoes_broadcasting() {
    let mut rng = Rng::new(22);
    let dims = [7, 13, 5];
    for dtype in FLOATS {
        let (x, xv) = randn(&mut rng, &dims, 1.0, dtype);
        for target in [&[13, 1][..], &[1, 5], &[5], &[7, 1, 1], &[13, 5], &[7, 13, 5], &[1]] {
            let out = ops::sum_to(&x, &Shape::new(target)).unwrap();
            let mut reference = vec![0.0; target.iter().product()];
            for (i, v) in xv.iter().enumerate() {
                reference[broadcast_flat(&unravel(i, &dims), target)] += v;
            }
            check(&format!("sum_to {target:?}"), &out, target, &reference, dtype);
        }
    }
}

#[test]
fn argmax_takes_the_first_of_equal_maxima() {
    for dtype in FLOATS {
        let (x, _) = tensor(&[1.0, 3.0, 3.0, 2.0, 5.0, 5.0, 5.0, 5.0, -1.0, -2.0, -1.0, -3.0], &[3, 4], dtype);
        assert_eq!(ops::argmax(&x, -1, false).unwrap().to_vec::<u32>().unwrap(), [1, 0, 0], "{dtype} last axis");
        // Along the first axis: columns (1, 5, -1), (3, 5, -2), (3, 5, -1), (2, 5, -3).
        assert_eq!(ops::argmax(&x, 0, false).unwrap().to_vec::<u32>().unwrap(), [1, 1, 1, 1], "{dtype} first axis");
        let (y, _) = tensor(&[2.0, 7.0, 7.0, 2.0, 0.0, 7.0], &[3, 2], dtype);
        assert_eq!(ops::argmax(&y, 0, true).unwrap().to_vec::<u32>().unwrap(), [1, 0], "{dtype} ties down a column");
    }
}

#[test]
fn argmax_matches_reference_on_every_axis() {
    let mut rng = Rng::new(23);
    let dims = [7, 13, 5];
    for dtype in FLOATS {
        let (x, xv) = randn(&mut rng, &dims, 1.0, dtype);
        for d in 0..3 {
            let (outer, size, inner) = (dims[..d].iter().product::<usize>(), dims[d], dims[d + 1..].iter().product::<usize>());
            let mut reference = Vec::new();
            for o in 0..outer {
                for j in 0..inner {
                    let at = |s: usize| xv[(o * size + s) * inner + j];
                    // Strictly greater keeps the first of equal values (bf16 rounding makes ties).
                    let best = (1..size).fold(0, |b, s| if at(s) > at(b) { s } else { b });
                    reference.push(best as u32);
                }
            }
            assert_eq!(ops::argmax(&x, d as isize, false).unwrap().to_vec::<u32>().unwrap(), reference, "{dtype} dim {d}");
        }
    }
}

fn softmax_ref(x: &[f64], cols: usize, log: bool) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            row.iter().map(move |v| if log { v - max - sum.ln() } else { (v - max).exp() / sum }).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn softmax_and_log_softmax_match_reference() {
    let mut rng = Rng::new(24);
    for dims in [&[7, 13, 5][..], &[3, 1], &[301, 131]] {
        for dtype in FLOATS {
            let (x, xv) = randn(&mut rng, dims, 3.0, dtype);
            let cols = *dims.last().unwrap();
            check(&format!("softmax {dims:?}"), &ops::softmax(&x).unwrap(), dims, &softmax_ref(&xv, cols, false), dtype);
            check(&format!("log_softmax {dims:?}"), &ops::log_softmax(&x).unwrap(), dims, &softmax_ref(&xv, cols, true), dtype);
        }
    }
}

/// Logits in the thousands would overflow `exp` without the max subtraction.
#[test]
fn softmax_is_stable_for_large_logits() {
    let mut rng = Rng::new(25);
    for dtype in [DType::F64, DType::F32] {
        let (x, _) = randn(&mut rng, &[5, 11], 3.0, dtype);
        let big = ops::add_scalar(&x, 3000.0).unwrap();
        let bv = big.to_f64_vec().unwrap();
        check("softmax +3000", &ops::softmax(&big).unwrap(), &[5, 11], &softmax_ref(&bv, 11, false), dtype);
        check("log_softmax +3000", &ops::log_softmax(&big).unwrap(), &[5, 11], &softmax_ref(&bv, 11, true), dtype);
    }
}
