//! Concat / split / narrow, transpose / permute and cast: exact against naive index arithmetic and
//! exact round trips (moving elements must not change a single bit).

use engine::{bf16, f16, ops, DType, Device, Rng, Tensor};

use super::support::{randn, strides, unravel, FLOATS};

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_f64_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// Entries `start..start + len` of axis `d`, with plain loops.
fn narrow_ref(x: &[f64], dims: &[usize], d: usize, start: usize, len: usize) -> Vec<f64> {
    (0..x.len())
        .filter_map(|i| {
            let idx = unravel(i, dims);
            (idx[d] >= start && idx[d] < start + len).then_some(x[i])
        })
        .collect()
}

#[test]
fn split_then_concat_round_trips_on_every_axis() {
    let mut rng = Rng::new(40);
    let dims = [7, 13, 5];
    let sizes: [&[usize]; 3] = [&[2, 4, 1], &[6, 1, 6], &[3, 2]];
    for dtype in FLOATS.into_iter().chain([DType::U32]) {
        let (x, xv) = if dtype == DType::U32 {
            let v: Vec<u32> = (0..7 * 13 * 5).map(|_| rng.below(1000) as u32).collect();
            (Tensor::from_slice(&v, dims, &Device::Cpu).unwrap(), v.iter().map(|&u| u as f64).collect())
        } else {
            randn(&mut rng, &dims, 1.0, dtype)
        };
        for d in 0..3 {
            let pieces = ops::split(&x, sizes[d], d as isize).unwrap();
            let mut start = 0;
            for (p, &len) in pieces.iter().zip(sizes[d]) {
                let mut pd = dims.to_vec();
                pd[d] = len;
                assert_eq!(p.dims(), pd);
                assert_eq!(p.to_f64_vec().unwrap(), narrow_ref(&xv, &dims, d, start, len), "{dtype} split dim {d}");
                start += len;
            }
            let refs: Vec<&Tensor> = pieces.iter().collect();
            let back = ops::concat(&refs, d as isize).unwrap();
            assert_eq!(back.dims(), dims);
            assert_eq!(bits(&back), bits(&x), "{dtype} concat dim {d}");
        }
    }
}

#[test]
fn narrow_matches_reference_and_large_concat_is_exact() {
    let mut rng = Rng::new(41);
    for dtype in FLOATS {
        let (x, xv) = randn(&mut rng, &[7, 13, 5], 1.0, dtype);
        let n = ops::narrow(&x, 1, 3, 8).unwrap();
        assert_eq!(n.dims(), [7, 8, 5]);
        assert_eq!(n.to_f64_vec().unwrap(), narrow_ref(&xv, &[7, 13, 5], 1, 3, 8), "{dtype}");
        // Large enough for threads.
        let (a, _) = randn(&mut rng, &[257, 100], 1.0, dtype);
        let (b, _) = randn(&mut rng, &[257, 31], 1.0, dtype);
        let ab = ops::concat(&[&a, &b], 1).unwrap();
        assert_eq!(bits(&ops::narrow(&ab, 1, 0, 100).unwrap()), bits(&a));
        assert_eq!(bits(&ops::narrow(&ab, 1, 100, 31).unwrap()), bits(&b));
    }
}

/// Output axis i is input axis perm[i], with plain loops.
fn permute_ref(x: &[f64], dims: &[usize], perm: &[usize]) -> Vec<f64> {
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let s = strides(dims);
    (0..x.len())
        .map(|i| {
            let idx = unravel(i, &out_dims);
            x[perm.iter().zip(&idx).map(|(&p, &v)| v * s[p]).sum::<usize>()]
        })
        .collect()
}

fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

#[test]
fn permutations_match_reference_and_invert() {
    let mut rng = Rng::new(42);
    let cases: [(&[usize], Vec<Vec<usize>>); 3] = [
        (&[7, 13, 5], vec![vec![0, 1, 2], vec![0, 2, 1], vec![1, 0, 2], vec![1, 2, 0], vec![2, 0, 1], vec![2, 1, 0]]),
        (&[2, 3, 5, 7], vec![vec![0, 2, 1, 3], vec![3, 1, 0, 2]]),
        // A large plain transpose: tiles and threads.
        (&[301, 211], vec![vec![1, 0]]),
    ];
    for (dims, perms) in cases {
        for dtype in FLOATS {
            let (x, xv) = randn(&mut rng, dims, 1.0, dtype);
            for perm in perms.iter() {
                let y = ops::permute(&x, perm).unwrap();
                let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
                assert_eq!(y.dims(), out_dims);
                assert_eq!(y.to_f64_vec().unwrap(), permute_ref(&xv, dims, perm), "{dtype} {dims:?} {perm:?}");
                assert_eq!(bits(&ops::permute(&y, &inverse(perm)).unwrap()), bits(&x), "{dtype} {perm:?} round trip");
            }
        }
    }
    let (x, _) = randn(&mut rng, &[4, 6, 3], 1.0, DType::F32);
    let t = ops::transpose(&x, 0, -1).unwrap();
    assert_eq!(t.dims(), [3, 6, 4]);
    assert_eq!(bits(&ops::transpose(&t, -1, 0).unwrap()), bits(&x));
}

#[test]
fn casts_round_once_and_round_trip() {
    let mut rng = Rng::new(43);
    let (x32, _) = randn(&mut rng, &[9, 7], 3.0, DType::F32);
    let v32: Vec<f32> = x32.to_vec().unwrap();

    let back = ops::cast(&ops::cast(&x32, DType::F64).unwrap(), DType::F32).unwrap();
    assert_eq!(back.to_vec::<f32>().unwrap(), v32, "f32 -> f64 -> f32");

    let b = ops::cast(&x32, DType::BF16).unwrap();
    let want: Vec<bf16> = v32.iter().map(|&v| bf16::from_f32(v)).collect();
    assert_eq!(b.to_vec::<bf16>().unwrap(), want, "f32 -> bf16 rounds to nearest even");
    let b_back = ops::cast(&ops::cast(&b, DType::F32).unwrap(), DType::BF16).unwrap();
    assert_eq!(b_back.to_vec::<bf16>().unwrap(), want, "bf16 -> f32 -> bf16");

    let (x64, v64) = randn(&mut rng, &[9, 7], 3.0, DType::F64);
    let h = ops::cast(&x64, DType::F16).unwrap();
    let want: Vec<f16> = v64.iter().map(|&v| f16::from_f64(v)).collect();
    assert_eq!(h.to_vec::<f16>().unwrap(), want, "f64 -> f16 rounds once");
    let h_back = ops::cast(&ops::cast(&h, DType::F32).unwrap(), DType::F16).unwrap();
    assert_eq!(h_back.to_vec::<f16>().unwrap(), want, "f16 -> f32 -> f16");

    let u: Vec<u32> = (0..63).map(|_| rng.below(1 << 24) as u32).collect();
    let ut = Tensor::from_slice(&u, [63], &Device::Cpu).unwrap();
    let u_back = ops::cast(&ops::cast(&ut, DType::F32).unwrap(), DType::U32).unwrap();
    assert_eq!(u_back.to_vec::<u32>().unwrap(), u, "u32 -> f32 -> u32 below 2^24");

    let f = Tensor::from_slice(&[2.7f32, -1.5, 0.0, 7.0], [4], &Device::Cpu).unwrap();
    assert_eq!(ops::cast(&f, DType::U32).unwrap().to_vec::<u32>().unwrap(), [2, 0, 0, 7], "floats truncate and saturate");
}
