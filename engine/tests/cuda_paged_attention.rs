//! Paged decode attention and the KV-cache row write on CUDA (paged_attention.cu) against the CPU
//! ops in f64, for f32, f16 and bf16.
//!
//! Shapes are small enough for an emulated GPU but cover every form: ragged context lengths (1, a
//! block and a bit, many blocks) over block tables that are a random permutation of a pool with
//! spare blocks, with garbage in every table entry past a row's context; contexts spanning many
//! splits (the split length is 64 at these sizes); GQA groupings 1:1, 3:1, MoA's 8:1 and 12:1
//! (more heads than one decode block serves, so two blocks read each kv head); head dims 10 and 12
//! (not whole 16-byte packs in 16-bit dtypes, and 10 not in f32 either: the element-wise kernel),
//! 64, 96, 128 (16-byte loads) and 256 (f32: 64 packs, more than a warp's lanes, so element-wise;
//! 16-bit: 32 packs, one per lane). Every device allocation is poisoned with NaN bytes, so a partial
//! or output row a kernel forgot fails. Relative error by norm below the dtype's tolerance. Without
//! a GPU each test prints one `skipped:` line.

mod gpu_support;

use engine::ops;
use engine::{DType, Device, Rng, Tensor};
use gpu_support::{assert_close, assert_close_in_dtype, gpu, normal};

/// Query heads, kv heads, head dim, block size, context lengths (one query row each).
struct Case {
    q_heads: usize,
    kv_heads: usize,
    d: usize,
    block_size: usize,
    lens: &'static [usize],
}

const CASES: [Case; 6] = [
    Case { q_heads: 8, kv_heads: 1, d: 64, block_size: 16, lens: &[700, 1, 33, 250] },
    Case { q_heads: 6, kv_heads: 2, d: 12, block_size: 5, lens: &[17, 1, 20, 130] },
    Case { q_heads: 12, kv_heads: 1, d: 128, block_size: 8, lens: &[65, 300] },
    Case { q_heads: 4, kv_heads: 4, d: 96, block_size: 32, lens: &[96, 200, 3] },
    Case { q_heads: 3, kv_heads: 1, d: 10, block_size: 7, lens: &[90, 2] },
    Case { q_heads: 2, kv_heads: 2, d: 256, block_size: 4, lens: &[70, 9] },
];

/// A paged layout of `c`: the pools (with two spare blocks), the block table (a permutation of the
/// pool; entries past a row's blocks hold out-of-range garbage) and the context lengths.
struct Paged {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    table: Tensor,
    lens: Tensor,
}

fn paged(c: &Case, dtype: DType, rng: &mut Rng) -> Paged {
    let per_row: Vec<usize> = c.lens.iter().map(|l| l.div_ceil(c.block_size)).collect();
    let max_blocks = *per_row.iter().max().unwrap();
    let num_blocks = per_row.iter().sum::<usize>() + 2;
    let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..pool.len()).rev() {
        pool.swap(i, rng.below(i + 1));
    }
    let mut table = vec![u32::MAX - 7; c.lens.len() * max_blocks];
    let mut next = pool.iter();
    for (b, &n) in per_row.iter().enumerate() {
        for slot in &mut table[b * max_blocks..][..n] {
            *slot = *next.next().unwrap();
        }
    }
    let lens: Vec<u32> = c.lens.iter().map(|&l| l as u32).collect();
    Paged {
        q: normal(&[c.lens.len(), c.q_heads, c.d], dtype, rng),
        k: normal(&[num_blocks, c.block_size, c.kv_heads, c.d], dtype, rng),
        v: normal(&[num_blocks, c.block_size, c.kv_heads, c.d], dtype, rng),
        table: Tensor::from_slice(&table, [c.lens.len(), max_blocks], &Device::Cpu).unwrap(),
        lens: Tensor::from_slice(&lens, [c.lens.len()], &Device::Cpu).unwrap(),
    }
}

fn attend(p: &Paged, dev: &Device, scale: f64) -> engine::Result<Tensor> {
    let on = |t: &Tensor| t.to_device(dev).unwrap();
    let wide = |t: &Tensor| if *dev == Device::Cpu && t.dtype() != DType::U32 { ops::cast(t, DType::F64).unwrap() } else { on(t) };
    ops::paged_attention(&wide(&p.q), &wide(&p.k), &wide(&p.v), &on(&p.table), &on(&p.lens), scale)
}

#[test]
fn paged_attention_matches_the_cpu_for_every_form_and_dtype() {
    let Some((dev, _gpu)) = gpu() else { return };
    let mut rng = Rng::new(140);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for c in &CASES {
            let what = format!("paged_attention: heads {}/{}, d {}, block {}, lens {:?}", c.q_heads, c.kv_heads, c.d, c.block_size, c.lens);
            let p = paged(c, dtype, &mut rng);
            let scale = 1.0 / (c.d as f64).sqrt();
            let out = attend(&p, &dev, scale).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(out.device(), dev, "{what}: output left the device");
            let reference = attend(&p, &Device::Cpu, scale).unwrap();
            assert_close_in_dtype(&what, dtype, &out, &reference);
        }
    }
}

#[test]
fn paged_attention_is_deterministic() {
    let Some((dev, _gpu)) = gpu() else { return };
    let p = paged(&CASES[0], DType::BF16, &mut Rng::new(141));
    let bits = |x: Tensor| x.to_f64_vec().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(attend(&p, &dev, 0.125).unwrap()), bits(attend(&p, &dev, 0.125).unwrap()), "two runs differ");
}

/// A row whose length is 0 or past the capacity, or whose table names a block outside the pool, is
/// an error on the CPU; on CUDA (which never reads the lengths back) its output is NaN, and the
/// other rows are still right.
#[test]
fn paged_attention_marks_invalid_rows_nan() {
    let Some((dev, _gpu)) = gpu() else { return };
    let mut rng = Rng::new(142);
    let c = &CASES[1];
    let p = paged(c, DType::F32, &mut rng);
    let (batch, max_blocks) = (c.lens.len(), p.table.dims()[1]);
    let mut table: Vec<u32> = p.table.to_f64_vec().unwrap().iter().map(|&x| x as u32).collect();
    table[max_blocks] = 1000; // row 1 (length 1) reads a block outside the pool
    let mut lens: Vec<u32> = c.lens.iter().map(|&l| l as u32).collect();
    lens[0] = 0;
    lens[2] = (max_blocks * c.block_size + 1) as u32;
    let bad = Paged {
        table: Tensor::from_slice(&table, [batch, max_blocks], &Device::Cpu).unwrap(),
        lens: Tensor::from_slice(&lens, [batch], &Device::Cpu).unwrap(),
        ..p
    };
    assert!(attend(&bad, &Device::Cpu, 0.3).is_err(), "the CPU reports invalid rows");
    let out = attend(&bad, &dev, 0.3).unwrap().to_f64_vec().unwrap();
    let row = c.q_heads * c.d;
    for b in 0..3 {
        assert!(out[b * row..][..row].iter().all(|x| x.is_nan()), "invalid row {b} is not NaN");
    }
    let good = |t: &Tensor| ops::narrow(t, 0, 3, 1).unwrap();
    let only_last = Paged { q: good(&bad.q), table: good(&bad.table), lens: good(&bad.lens), ..bad };
    let reference = attend(&only_last, &Device::Cpu, 0.3).unwrap();
    let last = Tensor::from_f64s(&out[3 * row..], [1, c.q_heads, c.d], DType::F64, &Device::Cpu).unwrap();
    assert_close("paged_attention: the valid row among invalid ones", DType::F32, &last, &reference);
}

#[test]
fn cache_write_matches_the_cpu() {
    let Some((dev, _gpu)) = gpu() else { return };
    let mut rng = Rng::new(143);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // Rows of 3 elements (2- or 4-byte words), of 6 (8-byte words for f32) and of 2 x 64
        // (16-byte words); 37 of 48 slots.
        for (kv_heads, d) in [(1, 3), (1, 6), (2, 64)] {
            let cache = normal(&[6, 8, kv_heads, d], dtype, &mut rng);
            let rows = normal(&[37, kv_heads, d], dtype, &mut rng);
            let mut order: Vec<u32> = (0..48).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let slots = Tensor::from_slice(&order[..37], [37], &Device::Cpu).unwrap();
            let write = |dev: &Device| {
                let mut c = cache.to_device(dev).unwrap();
                ops::write_rows(&mut c, &rows.to_device(dev).unwrap(), &slots.to_device(dev).unwrap()).unwrap();
                c
            };
            let (gpu_cache, cpu_cache) = (write(&dev), write(&Device::Cpu));
            assert_eq!(gpu_cache.to_f64_vec().unwrap(), cpu_cache.to_f64_vec().unwrap(), "write_rows ({dtype}, rows of {kv_heads} x {d})");
        }
    }
}
