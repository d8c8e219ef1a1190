//! The tensor-core GEMM family on CUDA (gemm_sm80 on compute capability 8.x, gemm_sm90 on 9.0)
//! against the CPU f64 reference: every form (NN, NT, TN) x input dtype (bf16, f16) x output dtype
//! (input, f32), ragged sizes, each fused epilogue, the grouped GEMM with unequal, empty and
//! one-row groups (row-grouped and reduction-grouped), the engine's matmul routed through it, and
//! the alignment errors. The persistent kernels run a grid of at most 2 blocks per SM, so one test
//! sizes its problems from the device's SM count to give every block several tiles (the ring and
//! mbarrier phases carried across tiles, scratch reuse, the producer running ahead into the next
//! tile, the tile walker's group cursor), on a GPU and on the emulated one alike.
//!
//! Method: fresh seeded random inputs (never zeros) in the dtype under test; the CPU computes on
//! the same rounded values in f64; every device allocation is poisoned (NaN) so an element a kernel
//! forgot fails. Pass: ‖gpu − ref‖ / ‖ref‖ < 1e-2 for bf16 inputs, 2e-3 for f16 (one rounding of
//! the output dominates: f32 accumulation over k ≤ 1000 adds far less); NaN never passes.
//! Setting DSMOE_GEMM_PATH=sm80 runs the sm_80 kernels on a Hopper GPU too.
//!
//! Without a GPU every test prints `skipped: no CUDA device (<reason>)` and passes.

mod gpu_support;

use engine::ops::{self, GemmEpilogue};
use engine::{DType, Device, Error, GemmForm, Rng, Tensor};
use gpu_support::{assert_close, gpu, normal};

const FORMS: [GemmForm; 3] = [GemmForm::NN, GemmForm::NT, GemmForm::TN];
const INPUTS: [DType; 2] = [DType::BF16, DType::F16];

fn f64s(t: &Tensor) -> Vec<f64> {
    ops::cast(&t.to_device(&Device::Cpu).unwrap(), DType::F64).unwrap().to_vec::<f64>().unwrap()
}

/// Stored operand shapes of an m x n x k product in `form`.
fn operand_shapes(form: GemmForm, m: usize, n: usize, k: usize) -> ([usize; 2], [usize; 2]) {
    let a = if form == GemmForm::TN { [k, m] } else { [m, k] };
    let b = if form == GemmForm::NT { [n, k] } else { [k, n] };
    (a, b)
}

/// Ragged sizes each form accepts: n and the leading dimensions must be multiples of 8, so in TN
/// (a stored [k, m]) m is a multiple of 8 and k is free.
fn sizes(form: GemmForm) -> Vec<(usize, usize, usize)> {
    match form {
        GemmForm::TN => vec![(8, 8, 1), (24, 136, 17), (136, 264, 255), (256, 128, 1000), (1000, 24, 129)],
        _ => vec![(1, 8, 8), (17, 136, 24), (129, 264, 136), (255, 128, 1000), (1000, 24, 256)],
    }
}

#[test]
fn every_form_and_dtype_matches_the_cpu_at_ragged_sizes() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(0x6e11);
    for form in FORMS {
        for input in INPUTS {
            for out_dtype in [input, DType::F32] {
                for (m, n, k) in sizes(form) {
                    let (sa, sb) = operand_shapes(form, m, n, k);
                    let (a, b) = (normal(&sa, input, &mut rng), normal(&sb, input, &mut rng));
                    let ep = GemmEpilogue { out_dtype: Some(out_dtype), ..Default::default() };
                    let cpu = ops::gemm(&a, &b, form, &ep).unwrap();
                    let gpu = ops::gemm(&a.to_device(&dev).unwrap(), &b.to_device(&dev).unwrap(), form, &ep).unwrap();
                    assert_close(&format!("{form:?} {input} -> {out_dtype} at {m}x{n}x{k}"), input, &gpu, &cpu);
                }
            }
        }
    }
}

#[test]
fn each_epilogue_matches_the_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(0xe9);
    let (m, n, k) = (129, 264, 136);
    for form in FORMS {
        for input in INPUTS {
            for out_dtype in [input, DType::F32] {
                let m = if form == GemmForm::TN { 136 } else { m };
                let (sa, sb) = operand_shapes(form, m, n, k);
                let (a, b) = (normal(&sa, input, &mut rng), normal(&sb, input, &mut rng));
                let bias = normal(&[n], out_dtype, &mut rng);
                let residual = normal(&[m, n], out_dtype, &mut rng);
                let (dbias, dres) = (bias.to_device(&dev).unwrap(), residual.to_device(&dev).unwrap());
                let cases: [(&str, GemmEpilogue, GemmEpilogue); 4] = [
                    ("scale", GemmEpilogue { alpha: 0.37, ..Default::default() }, GemmEpilogue { alpha: 0.37, ..Default::default() }),
                    ("bias", GemmEpilogue { bias: Some(&bias), ..Default::default() }, GemmEpilogue { bias: Some(&dbias), ..Default::default() }),
                    ("gelu", GemmEpilogue { gelu: true, ..Default::default() }, GemmEpilogue { gelu: true, ..Default::default() }),
                    (
                        "all",
                        GemmEpilogue { alpha: 0.1, bias: Some(&bias), gelu: true, residual: Some(&residual), out_dtype: None },
                        GemmEpilogue { alpha: 0.1, bias: Some(&dbias), gelu: true, residual: Some(&dres), out_dtype: None },
                    ),
                ];
                for (what, cpu_ep, gpu_ep) in cases {
                    let (cpu_ep, gpu_ep) = (GemmEpilogue { out_dtype: Some(out_dtype), ..cpu_ep }, GemmEpilogue { out_dtype: Some(out_dtype), ..gpu_ep });
                    let cpu = ops::gemm(&a, &b, form, &cpu_ep).unwrap();
                    let gpu = ops::gemm(&a.to_device(&dev).unwrap(), &b.to_device(&dev).unwrap(), form, &gpu_ep).unwrap();
                    assert_close(&format!("{what} epilogue, {form:?} {input} -> {out_dtype}"), input, &gpu, &cpu);
                }
            }
        }
    }
}

/// Rows giving at least `tiles_per_block` 128-row tiles per block of the largest persistent grid
/// (2 blocks per SM on sm_80, 1 on sm_90) when each row band holds `col_tiles` tiles, less a few
/// rows so the last band is ragged.
fn multi_tile_rows(dev: &Device, col_tiles: usize, tiles_per_block: usize) -> usize {
    (tiles_per_block * persistent_blocks(dev)).div_ceil(col_tiles) * 128 - 5
}

/// The largest persistent grid: 2 blocks per SM.
fn persistent_blocks(dev: &Device) -> usize {
    let Device::Cuda(ordinal) = dev else { unreachable!("a CUDA test device") };
    2 * engine::cuda::device_info(*ordinal).unwrap().sm_count as usize
}

#[test]
fn persistent_blocks_walk_several_tiles() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(0x7113);
    // n = 1000: 4 column tiles of 256 (sm_90), 8 of 128 (sm_80); k = 200 is not a multiple of 64.
    let (n, k) = (1000, 200);
    let m = multi_tile_rows(&dev, 4, 3);
    for form in FORMS {
        let m = if form == GemmForm::TN { m + 5 } else { m };
        let (sa, sb) = operand_shapes(form, m, n, k);
        let (a, b) = (normal(&sa, DType::BF16, &mut rng), normal(&sb, DType::BF16, &mut rng));
        let ep = GemmEpilogue { out_dtype: Some(DType::F32), gelu: true, ..Default::default() };
        let cpu = ops::gemm(&a, &b, form, &ep).unwrap();
        let gpu = ops::gemm(&a.to_device(&dev).unwrap(), &b.to_device(&dev).unwrap(), form, &ep).unwrap();
        assert_close(&format!("multi-tile {form:?} bf16 -> f32 at {m}x{n}x{k}"), DType::BF16, &gpu, &cpu);
    }
    // Row-grouped NN over many small groups (empty, 1, ragged, several tiles) and reduction-grouped
    // TN with a 256 x 264 output per group (4 tiles or more each): both walk groups and tiles
    // across blocks.
    let (n, k) = (264, 136);
    let mut groups: Vec<u32> = [0u32, 1, 63, 64, 65, 300].iter().copied().cycle().take(persistent_blocks(&dev).max(12)).collect();
    groups.push(multi_tile_rows(&dev, 2, 2) as u32);
    let total = groups.iter().sum::<u32>() as usize;
    let a = normal(&[total, k], DType::BF16, &mut rng);
    let b = normal(&[groups.len(), k, n], DType::BF16, &mut rng);
    let cpu = ops::grouped_matmul(&a, &b, &counts(&groups), GemmForm::NN).unwrap();
    let gpu = ops::grouped_matmul(&a.to_device(&dev).unwrap(), &b.to_device(&dev).unwrap(), &counts(&groups).to_device(&dev).unwrap(), GemmForm::NN).unwrap();
    assert_close("multi-tile row-grouped NN", DType::BF16, &gpu, &cpu);
    let m = 256;
    let a = normal(&[total, m], DType::BF16, &mut rng);
    let b = normal(&[total, n], DType::BF16, &mut rng);
    let cpu = ops::grouped_matmul(&a, &b, &counts(&groups), GemmForm::TN).unwrap();
    let gpu = ops::grouped_matmul(&a.to_device(&dev).unwrap(), &b.to_device(&dev).unwrap(), &counts(&groups).to_device(&dev).unwrap(), GemmForm::TN).unwrap();
    assert_close("multi-tile reduction-grouped TN", DType::BF16, &gpu, &cpu);
}

fn counts(values: &[u32]) -> Tensor {
    Tensor::from_slice(values, vec![values.len()], &Device::Cpu).unwrap()
}

#[test]
fn grouped_gemm_with_unequal_empty_and_single_row_groups_matches_the_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(0x960);
    let groups: [u32; 6] = [300, 0, 1, 129, 0, 517];
    let total: u32 = groups.iter().sum();
    let (n, k) = (136, 264);
    for input in INPUTS {
        // Row-grouped (forward, dX): a [total, k], b [g, k, n] or [g, n, k].
        for form in [GemmForm::NN, GemmForm::NT] {
            let a = normal(&[total as usize, k], input, &mut rng);
            let b = if form == GemmForm::NN { normal(&[groups.len(), k, n], input, &mut rng) } else { normal(&[groups.len(), n, k], input, &mut rng) };
            let cpu = ops::grouped_matmul(&a, &b, &counts(&groups), form).unwrap();
            let gpu = ops::grouped_matmul(&a.to_device(&dev).unwrap(), &b.to_device(&dev).unwrap(), &counts(&groups).to_device(&dev).unwrap(), form).unwrap();
            assert_close(&format!("row-grouped {form:?} {input}"), input, &gpu, &cpu);
        }
        // Reduction-grouped (weight gradient): a [total, m], b [total, n] -> [g, m, n]; empty groups give zeros.
        let m = 136;
        let a = normal(&[total as usize, m], input, &mut rng);
        let b = normal(&[total as usize, n], input, &mut rng);
        let cpu = ops::grouped_matmul(&a, &b, &counts(&groups), GemmForm::TN).unwrap();
        let gpu = ops::grouped_matmul(&a.to_device(&dev).unwrap(), &b.to_device(&dev).unwrap(), &counts(&groups).to_device(&dev).unwrap(), GemmForm::TN).unwrap();
        assert_close(&format!("reduction-grouped TN {input}"), input, &gpu, &cpu);
        let zeros = f64s(&ops::narrow(&gpu, 0, 1, 1).unwrap());
        assert!(zeros.iter().all(|&v| v == 0.0), "an empty group's weight gradient must be exactly zero");
    }
}

#[test]
fn matmul_on_bf16_and_f16_goes_through_the_tensor_core_gemm() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(0x3a7);
    for input in INPUTS {
        // Plain, transposed and batched (a batch of 3 with its own a per entry and a stacked b).
        let cases: [(Vec<usize>, Vec<usize>, bool, bool); 4] = [
            (vec![129, 264], vec![264, 136], false, false),
            (vec![129, 264], vec![136, 264], false, true),
            (vec![264, 136], vec![264, 136], true, false),
            (vec![3, 17, 40], vec![3, 40, 24], false, false),
        ];
        for (sa, sb, ta, tb) in cases {
            let (a, b) = (normal(&sa, input, &mut rng), normal(&sb, input, &mut rng));
            let cpu = ops::matmul_t(&a, &b, ta, tb).unwrap();
            let gpu = ops::matmul_t(&a.to_device(&dev).unwrap(), &b.to_device(&dev).unwrap(), ta, tb).unwrap();
            assert_close(&format!("matmul {sa:?} x {sb:?} ({ta}, {tb}) {input}"), input, &gpu, &cpu);
        }
    }
}

#[test]
fn misaligned_operands_are_a_clear_error() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(1);
    let a = normal(&[16, 12], DType::BF16, &mut rng).to_device(&dev).unwrap();
    let b = normal(&[12, 16], DType::BF16, &mut rng).to_device(&dev).unwrap();
    match ops::gemm(&a, &b, GemmForm::NN, &GemmEpilogue::default()) {
        Err(Error::Invalid { msg, .. }) => assert!(msg.contains("leading dimension 12"), "{msg}"),
        other => panic!("expected an alignment error, got {other:?}"),
    }
    // The engine's matmul falls back to the tiled GEMM for the same operands instead.
    assert_eq!(ops::matmul(&a, &b).unwrap().dims(), &[16, 16]);
}
