//! Cross-check of TMA, mbarrier and wgmma together, the way our Hopper GEMM uses them
//! (kernels-cuda/src/kernels/gemm_sm90.cuh, boxes from engine/src/cuda/ops/gemm.rs): SW128 boxes
//! loaded by TMA, counted on an mbarrier, read by m64n256k16 wgmmas through SW128 descriptors
//! (K-major: LBO 16, SBO 1024, +32 bytes per k16; MN-major: LBO 8192, SBO 1024, +2048 bytes per k16),
//! accumulators mapped back by the D fragment layout. The result must be the plain matrix product,
//! for the NN, NT and TN forms, on ragged sizes whose boxes hang over the tensor's edges.

use super::tests::Global;
use super::{load_tile, DataType, EncodeTiled, TensorMap};
use crate::matrix::tests::Rng;
use crate::matrix::{wgmma, AbType, WgmmaA, WgmmaOp};
use crate::mbarrier;

const BM: usize = 128;
const BN: usize = 256;
const BK: usize = 64;
const STAGE_A: u32 = 1024;
const STAGE_B: u32 = STAGE_A + (BM * BK * 2) as u32;
const SMEM: usize = STAGE_B as usize + BK * BN * 2;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    /// A [M, K], B [K, N].
    Nn,
    /// A [M, K], B [N, K].
    Nt,
    /// A [K, M], B [K, N].
    Tn,
}

/// The kernel's make_desc: start, LBO, SBO in 16-byte units, SWIZZLE_128B.
fn make_desc(addr: u32, lbo: u32, sbo: u32) -> u64 {
    ((addr & 0x3FFFF) >> 4) as u64 | (((lbo & 0x3FFFF) >> 4) as u64) << 16 | (((sbo & 0x3FFFF) >> 4) as u64) << 32 | 1 << 62
}

fn map(addr: u64, dims: &[u64], strides: &[u64], boxes: &[u32]) -> TensorMap {
    let ones = [1u32; 3];
    TensorMap::from_encode_tiled(&EncodeTiled {
        data_type: DataType::Bf16 as u32,
        rank: dims.len() as u32,
        global_address: addr,
        global_dims: dims,
        global_strides: strides,
        box_dims: boxes,
        element_strides: &ones[..dims.len()],
        interleave: 0,
        swizzle: 3,
        l2_promotion: 3,
        oob_fill: 0,
    })
    .unwrap()
}

fn gemm_through_tma_and_wgmma(form: Form, m: usize, n: usize, k: usize) {
    let (a_rows, a_cols) = if form == Form::Tn { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if form == Form::Nt { (n, k) } else { (k, n) };
    // Leading dimensions padded past the logical width (a multiple of 8 elements, as TMA needs).
    let (lda, ldb) = (a_cols.next_multiple_of(8) + 8, b_cols.next_multiple_of(8) + 8);
    let mut rng = Rng(0x5eed ^ (m * n * k) as u64);
    let a: Vec<f32> = (0..a_rows * lda).map(|_| rng.small()).collect();
    let b: Vec<f32> = (0..b_rows * ldb).map(|_| rng.small()).collect();
    let b_offset = (a.len() * 2).next_multiple_of(256) as u64;
    let mut bytes = vec![0u8; b_offset as usize + b.len() * 2];
    for (i, x) in a.iter().enumerate() {
        bytes[2 * i..2 * i + 2].copy_from_slice(&half::bf16::from_f32(*x).to_bits().to_le_bytes());
    }
    for (i, x) in b.iter().enumerate() {
        let at = b_offset as usize + 2 * i;
        bytes[at..at + 2].copy_from_slice(&half::bf16::from_f32(*x).to_bits().to_le_bytes());
    }
    let g = Global { base: 0x20_0000, bytes };
    let (a_addr, b_addr) = (g.base, g.base + b_offset);
    let a_val = |row: usize, kk: usize| if form == Form::Tn { a[kk * lda + row] } else { a[row * lda + kk] };
    let b_val = |kk: usize, col: usize| if form == Form::Nt { b[col * ldb + kk] } else { b[kk * ldb + col] };

    // The maps of gemm.rs (A 2-D, B 3-D with one batch).
    let map_a = match form {
        Form::Tn => map(a_addr, &[m as u64, k as u64], &[lda as u64 * 2], &[64, 64]),
        _ => map(a_addr, &[k as u64, m as u64], &[lda as u64 * 2], &[64, 128]),
    };
    let batch = (ldb * b_rows * 2) as u64;
    let map_b = match form {
        Form::Nt => map(b_addr, &[k as u64, n as u64, 1], &[ldb as u64 * 2, batch], &[64, 256, 1]),
        _ => map(b_addr, &[n as u64, k as u64, 1], &[ldb as u64 * 2, batch], &[64, 64, 1]),
    };
    let (trans_a, trans_b) = (form == Form::Tn, form != Form::Nt);
    let op = WgmmaOp { n: BN as u32, ty: AbType::Bf16, trans_a, trans_b, scale_d: true, negate_a: false, negate_b: false };
    let read = |addr: u64, buf: &mut [u8]| g.read(addr, buf);

    for m0 in (0..m).step_by(BM) {
        for n0 in (0..n).step_by(BN) {
            let mut acc = vec![vec![0f32; 128 * BN / 2]; 2];
            let mut full = 0u64;
            mbarrier::init(&mut full, 1).unwrap();
            for (slice, k0) in (0..k).step_by(BK).enumerate() {
                let mut smem = vec![0xFFu8; SMEM];
                mbarrier::arrive_expect_tx(&mut full, (SMEM - STAGE_A as usize) as u32).unwrap();
                let mut loads = |map: &TensorMap, coords: &[i32], dst: u32, smem: &mut Vec<u8>| {
                    let got = load_tile(map, coords, read, smem, dst).unwrap();
                    mbarrier::complete_tx(&mut full, got).unwrap();
                };
                let (k0, m0i, n0i) = (k0 as i32, m0 as i32, n0 as i32);
                match form {
                    Form::Tn => {
                        loads(&map_a, &[m0i, k0], STAGE_A, &mut smem);
                        loads(&map_a, &[m0i + 64, k0], STAGE_A + 8192, &mut smem);
                    }
                    _ => loads(&map_a, &[k0, m0i], STAGE_A, &mut smem),
                }
                match form {
                    Form::Nt => loads(&map_b, &[k0, n0i, 0], STAGE_B, &mut smem),
                    _ => (0..4).for_each(|j| loads(&map_b, &[n0i + 64 * j, k0, 0], STAGE_B + 8192 * j as u32, &mut smem)),
                }
                // The boxes' bytes exactly complete the phase the producer announced.
                assert!(mbarrier::test_wait_parity(full, (slice & 1) as u32).unwrap(), "{form:?} slice {slice}");
                for (c, acc) in acc.iter_mut().enumerate() {
                    for kk in 0..4u32 {
                        let da = if trans_a {
                            make_desc(STAGE_A + c as u32 * 8192 + kk * 2048, 8192, 1024)
                        } else {
                            make_desc(STAGE_A + c as u32 * (64 * 128) + kk * 32, 16, 1024)
                        };
                        let db = if trans_b { make_desc(STAGE_B + kk * 2048, 8192, 1024) } else { make_desc(STAGE_B + kk * 32, 16, 1024) };
                        wgmma(&op, WgmmaA::Desc(da), db, &smem, acc).unwrap();
                    }
                }
            }
            // The kernel's epilogue map: lm = 64c + 16·warp + lane/4 + 8·half, col = n0 + 8j + 2(lane&3).
            for (c, acc) in acc.iter().enumerate() {
                for thread in 0..128 {
                    let (warp, lane) = (thread / 32, thread % 32);
                    for hi in 0..2 {
                        let row = m0 + 64 * c + 16 * warp + lane / 4 + 8 * hi;
                        for j in 0..BN / 8 {
                            for e in 0..2 {
                                let col = n0 + 8 * j + 2 * (lane & 3) + e;
                                if row >= m || col >= n {
                                    continue;
                                }
                                let got = acc[thread * BN / 2 + 4 * j + 2 * hi + e];
                                let bf = |x: f32| half::bf16::from_f32(x).to_f32() as f64;
                                let want: f64 = (0..k).map(|kk| bf(a_val(row, kk)) * bf(b_val(kk, col))).sum();
                                // f32 sums of at most a few hundred products of magnitude < 4.
                                assert!((got as f64 - want).abs() < 1e-4, "{form:?} C({row},{col}) = {got}, want {want}");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn nt_form_k_major_operands() {
    gemm_through_tma_and_wgmma(Form::Nt, 150, 200, 100);
}

#[test]
fn nn_form_mn_major_b() {
    gemm_through_tma_and_wgmma(Form::Nn, 100, 300, 72);
}

#[test]
fn tn_form_mn_major_a_and_b() {
    gemm_through_tma_and_wgmma(Form::Tn, 136, 120, 130);
}
