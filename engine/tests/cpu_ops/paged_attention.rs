//! Paged decode attention against plain softmax attention over each sequence's positions gathered
//! by hand, and the KV-cache row write against a copy loop.

use engine::{ops, DType, Rng};

use super::support::{check, indices, randn, FLOATS};

struct Case {
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    num_blocks: usize,
    lens: Vec<usize>,
}

/// A block table whose blocks are a shuffled selection of the pool (so sequences' blocks are not
/// contiguous nor in order), padded with out-of-range entries past each context that the op must
/// not read.
fn tables(c: &Case, rng: &mut Rng) -> (Vec<u32>, usize) {
    let max_blocks = c
        .lens
        .iter()
        .map(|l| l.div_ceil(c.block_size))
        .max()
        .unwrap()
        + 1;
    let mut free: Vec<u32> = (0..c.num_blocks as u32).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, rng.below(i + 1));
    }
    let mut table = vec![u32::MAX; c.lens.len() * max_blocks];
    for (b, &len) in c.lens.iter().enumerate() {
        for j in 0..len.div_ceil(c.block_size) {
            table[b * max_blocks + j] = free.pop().expect("pool large enough");
        }
    }
    (table, max_blocks)
}

fn reference(
    c: &Case,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    table: &[u32],
    max_blocks: usize,
    scale: f64,
) -> Vec<f64> {
    let (dh, row, group) = (c.head_dim, c.kv_heads * c.head_dim, c.q_heads / c.kv_heads);
    let mut out = vec![0.0; q.len()];
    for (b, &len) in c.lens.iter().enumerate() {
        for h in 0..c.q_heads {
            let kv = h / group;
            let at = |p: usize| {
                (table[b * max_blocks + p / c.block_size] as usize * c.block_size
                    + p % c.block_size)
                    * row
                    + kv * dh
            };
            let qh = &q[(b * c.q_heads + h) * dh..][..dh];
            let scores: Vec<f64> = (0..len)
                .map(|p| scale * (0..dh).map(|j| qh[j] * k[at(p) + j]).sum::<f64>())
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = w.iter().sum();
            for j in 0..dh {
                out[(b * c.q_heads + h) * dh + j] =
                    (0..len).map(|p| w[p] * v[at(p) + j]).sum::<f64>() / total;
            }
        }
    }
    out
}

#[test]
fn paged_attention_matches_gathered_softmax_attention() {
    let mut rng = Rng::new(31);
    let cases = [
        Case {
            q_heads: 8,
            kv_heads: 2,
            head_dim: 16,
            block_size: 4,
            num_blocks: 40,
            lens: vec![1, 7, 13, 4, 30],
        },
        Case {
            q_heads: 3,
            kv_heads: 3,
            head_dim: 6,
            block_size: 5,
            num_blocks: 9,
            lens: vec![11, 2],
        },
        Case {
            q_heads: 12,
            kv_heads: 1,
            head_dim: 10,
            block_size: 16,
            num_blocks: 70,
            lens: vec![300, 17, 1, 600],
        },
    ];
    for c in &cases {
        for dtype in FLOATS {
            let (table, max_blocks) = tables(c, &mut rng);
            let batch = c.lens.len();
            let (q, qv) = randn(&mut rng, &[batch, c.q_heads, c.head_dim], 1.0, dtype);
            let pool = [c.num_blocks, c.block_size, c.kv_heads, c.head_dim];
            let (k, kv) = randn(&mut rng, &pool, 1.0, dtype);
            let (v, vv) = randn(&mut rng, &pool, 1.0, dtype);
            let lens: Vec<u32> = c.lens.iter().map(|&l| l as u32).collect();
            let scale = 1.0 / (c.head_dim as f64).sqrt();
            let out = ops::paged_attention(
                &q,
                &k,
                &v,
                &indices(&table, &[batch, max_blocks]),
                &indices(&lens, &[batch]),
                scale,
            )
            .unwrap();
            let want = reference(c, &qv, &kv, &vv, &table, max_blocks, scale);
            check(
                &format!("paged_attention lens {:?}", c.lens),
                &out,
                &[batch, c.q_heads, c.head_dim],
                &want,
                dtype,
            );
        }
    }
}

#[test]
fn paged_attention_refuses_bad_lengths_and_blocks() {
    let mut rng = Rng::new(5);
    let (q, _) = randn(&mut rng, &[2, 4, 8], 1.0, DType::F32);
    let (k, _) = randn(&mut rng, &[3, 4, 2, 8], 1.0, DType::F32);
    let table = indices(&[0, 1, 2, 0], &[2, 2]);
    let run = |lens: &[u32], table: &engine::Tensor| {
        ops::paged_attention(&q, &k, &k, table, &indices(lens, &[2]), 0.5)
    };
    assert!(run(&[3, 8], &table).is_ok());
    for lens in [[0, 3], [3, 9]] {
        let err = run(&lens, &table).unwrap_err().to_string();
        assert!(err.contains("context length"), "{err}");
    }
    let err = run(&[3, 8], &indices(&[0, 1, 7, 0], &[2, 2]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("paged_attention"), "{err}");
    let (q5, _) = randn(&mut rng, &[2, 5, 8], 1.0, DType::F32);
    assert!(
        ops::paged_attention(&q5, &k, &k, &table, &indices(&[1, 1], &[2]), 0.5).is_err(),
        "5 query heads over 2 kv heads"
    );
}

#[test]
fn write_rows_copies_each_row_to_its_slot() {
    let mut rng = Rng::new(8);
    for dtype in FLOATS {
        let (mut cache, mut want) = randn(&mut rng, &[5, 3, 2, 4], 1.0, dtype);
        let (rows, rv) = randn(&mut rng, &[4, 2, 4], 1.0, dtype);
        let shared = cache.clone();
        let slots = [14u32, 0, 7, 8];
        ops::write_rows(&mut cache, &rows, &indices(&slots, &[4])).unwrap();
        for (i, &s) in slots.iter().enumerate() {
            want[s as usize * 8..][..8].copy_from_slice(&rv[i * 8..][..8]);
        }
        check("write_rows", &cache, &[5, 3, 2, 4], &want, dtype);
        assert_ne!(
            shared.to_f64_vec().unwrap(),
            want,
            "a tensor sharing the old storage keeps its values"
        );
        assert!(
            ops::write_rows(&mut cache, &rows, &indices(&[15, 0, 1, 2], &[4])).is_err(),
            "slot past the pool"
        );
    }
}
