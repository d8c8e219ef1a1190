//! Row and last-axis gather / scatter-add with repeated indices, and top-k with ties.

use engine::{ops, Rng, Tensor};

use super::support::{check, indices, random_indices, randn, tensor, FLOATS};

#[test]
fn index_select_picks_rows_including_repeats() {
    let mut rng = Rng::new(30);
    // Small with repeats; large enough for threads.
    for (src_dims, idx) in [(vec![6, 7, 3], vec![5u32, 0, 5, 2, 5, 1, 0, 3, 5]), (vec![500, 129], random_indices(&mut rng, 301, 500))] {
        let row: usize = src_dims[1..].iter().product();
        for dtype in FLOATS {
            let (src, sv) = randn(&mut rng, &src_dims, 1.0, dtype);
            let out = ops::index_select(&src, &indices(&idx, &[idx.len()])).unwrap();
            let reference: Vec<f64> = idx.iter().flat_map(|&i| sv[i as usize * row..][..row].to_vec()).collect();
            let mut dims = src_dims.clone();
            dims[0] = idx.len();
            check(&format!("index_select {src_dims:?}"), &out, &dims, &reference, dtype);
        }
    }
}

#[test]
fn index_select_copies_u32_rows() {
    let src = indices(&[10, 11, 20, 21, 30, 31], &[3, 2]);
    let out = ops::index_select(&src, &indices(&[2, 0, 2], &[3])).unwrap();
    assert_eq!(out.to_vec::<u32>().unwrap(), [30, 31, 10, 11, 30, 31]);
}

#[test]
fn scatter_add_rows_sums_repeated_indices() {
    let mut rng = Rng::new(31);
    // Row 4 of the small case receives nothing and must stay zero.
    for (src_rows, row, out_rows, idx) in [
        (9, vec![7, 3], 6, vec![5u32, 0, 5, 2, 5, 1, 0, 3, 5]),
        (700, vec![67], 50, random_indices(&mut rng, 700, 50)),
    ] {
        let row_len: usize = row.iter().product();
        let mut src_dims = vec![src_rows];
        src_dims.extend(&row);
        for dtype in FLOATS {
            let (src, sv) = randn(&mut rng, &src_dims, 1.0, dtype);
            let idx_t = indices(&idx, &[idx.len()]);
            let out = ops::scatter_add_rows(&src, &idx_t, out_rows).unwrap();
            let mut reference = vec![0.0; out_rows * row_len];
            for (i, &r) in idx.iter().enumerate() {
                for j in 0..row_len {
                    reference[r as usize * row_len + j] += sv[i * row_len + j];
                }
            }
            let mut dims = vec![out_rows];
            dims.extend(&row);
            check(&format!("scatter_add_rows {src_dims:?}"), &out, &dims, &reference, dtype);
            let again = ops::scatter_add_rows(&src, &idx_t, out_rows).unwrap();
            assert_eq!(bits(&out), bits(&again), "scatter_add_rows must be deterministic");
        }
    }
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_f64_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn gather_and_scatter_along_the_last_axis() {
    let mut rng = Rng::new(32);
    for (lead, n, k) in [(vec![4, 3], 11, 6), (vec![37], 5, 9), (vec![601], 97, 61)] {
        let rows: usize = lead.iter().product();
        let dims = |last: usize| lead.iter().copied().chain([last]).collect::<Vec<_>>();
        // More picks than columns in the second case, so indices repeat for sure.
        let idx = random_indices(&mut rng, rows * k, n);
        let idx_t = indices(&idx, &dims(k));
        for dtype in FLOATS {
            let (src, sv) = randn(&mut rng, &dims(n), 1.0, dtype);
            let gathered = ops::gather_last(&src, &idx_t).unwrap();
            let reference: Vec<f64> = (0..rows * k).map(|p| sv[p / k * n + idx[p] as usize]).collect();
            check(&format!("gather_last {lead:?} n={n} k={k}"), &gathered, &dims(k), &reference, dtype);

            let (vals, vv) = randn(&mut rng, &dims(k), 1.0, dtype);
            let scattered = ops::scatter_add_last(&vals, &idx_t, n).unwrap();
            let mut reference = vec![0.0; rows * n];
            for p in 0..rows * k {
                reference[p / k * n + idx[p] as usize] += vv[p];
            }
            check(&format!("scatter_add_last {lead:?} n={n} k={k}"), &scattered, &dims(n), &reference, dtype);
        }
    }
}

#[test]
fn topk_orders_ties_by_lower_index() {
    for dtype in FLOATS {
        let (x, _) = tensor(&[1.0, 3.0, 3.0, 2.0, 3.0, -1.0, -1.0, -1.0, -1.0, -1.0], &[2, 5], dtype);
        for (k, want_idx, want_vals) in [
            (3, vec![1u32, 2, 4, 0, 1, 2], vec![3.0, 3.0, 3.0, -1.0, -1.0, -1.0]),
            (5, vec![1, 2, 4, 3, 0, 0, 1, 2, 3, 4], vec![3.0, 3.0, 3.0, 2.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0]),
            (1, vec![1, 0], vec![3.0, -1.0]),
        ] {
            let (v, i) = ops::topk(&x, k).unwrap();
            assert_eq!(i.to_vec::<u32>().unwrap(), want_idx, "{dtype} k={k}");
            assert_eq!(v.to_f64_vec().unwrap(), want_vals, "{dtype} k={k}");
            assert_eq!(v.dims(), [2, k]);
        }
    }
}

#[test]
fn topk_matches_a_full_sort() {
    let mut rng = Rng::new(33);
    for (dims, ks) in [(vec![7, 13, 29], vec![1, 4, 29]), (vec![401, 100], vec![8])] {
        let n = *dims.last().unwrap();
        for dtype in FLOATS {
            // bf16 / f16 rounding of N(0, 1) values produces ties, which the sort must break by index.
            let (x, xv) = randn(&mut rng, &dims, 1.0, dtype);
            for &k in &ks {
                let (v, i) = ops::topk(&x, k).unwrap();
                let (mut want_i, mut want_v) = (Vec::new(), Vec::new());
                for row in xv.chunks(n) {
                    let mut order: Vec<usize> = (0..n).collect();
                    order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
                    want_i.extend(order[..k].iter().map(|&j| j as u32));
                    want_v.extend(order[..k].iter().map(|&j| row[j]));
                }
                assert_eq!(i.to_vec::<u32>().unwrap(), want_i, "{dtype} {dims:?} k={k}");
                assert_eq!(v.to_f64_vec().unwrap(), want_v, "{dtype} {dims:?} k={k}");
            }
        }
    }
}
