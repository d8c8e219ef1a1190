//! Known-answer tests of ldmatrix, the m16n8k16 fragments and mma.sync, written from the PTX ISA's
//! figures (the literal tables below), not from any kernel. Values are index encodings (small
//! integers, exact in f16/bf16), so a misplaced element shows up as a wrong index.

use super::fragment::{a_m16k16, a_m64k16, b_k16n8, c_m16n8, d_m64};
use super::{ldmatrix, mma_m16n8k16, AbType, MatrixError};

pub(super) fn f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

pub(super) fn bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

pub(super) fn pack(lo: u16, hi: u16) -> u32 {
    lo as u32 | (hi as u32) << 16
}

/// A small deterministic generator (xorshift) for value tests.
pub(crate) struct Rng(pub u64);
impl Rng {
    /// A value in [-2, 2) with 7 fractional bits, exact in bf16 and f16.
    pub(crate) fn small(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) % 512) as f32 / 128.0 - 2.0
    }
}

// The ISA's figures, as (row offset, column offset) added to (g, 2t) per element:
// A: a0 (g,2t) a1 (g,2t+1) a2 (g+8,2t) a3 (g+8,2t+1) a4 (g,2t+8) a5 (g,2t+9) a6 (g+8,2t+8) a7 (g+8,2t+9).
const A_FIG: [(usize, usize); 8] = [(0, 0), (0, 1), (8, 0), (8, 1), (0, 8), (0, 9), (8, 8), (8, 9)];
// B (k, n) added to (2t, g): b0 (2t,g) b1 (2t+1,g) b2 (2t+8,g) b3 (2t+9,g).
const B_FIG: [(usize, usize); 4] = [(0, 0), (1, 0), (8, 0), (9, 0)];
// C/D (row, n) added to (g, 2t): c0 (g,2t) c1 (g,2t+1) c2 (g+8,2t) c3 (g+8,2t+1).
const C_FIG: [(usize, usize); 4] = [(0, 0), (0, 1), (8, 0), (8, 1)];

#[test]
fn fragment_maps_match_the_isa_figures() {
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        for (i, (dr, dc)) in A_FIG.iter().enumerate() {
            assert_eq!(a_m16k16(lane, i), (g + dr, 2 * t + dc), "A lane {lane} element {i}");
        }
        for (i, (dk, dn)) in B_FIG.iter().enumerate() {
            assert_eq!(b_k16n8(lane, i), (2 * t + dk, g + dn), "B lane {lane} element {i}");
        }
        for (i, (dr, dc)) in C_FIG.iter().enumerate() {
            assert_eq!(c_m16n8(lane, i), (g + dr, 2 * t + dc), "C lane {lane} register {i}");
        }
    }
    // Spot values straight from the figures: lane 13 (g 3, t 1).
    assert_eq!(a_m16k16(13, 7), (11, 11));
    assert_eq!(b_k16n8(13, 2), (10, 3));
    assert_eq!(c_m16n8(13, 3), (11, 3));
    // wgmma: thread 77 is warp 2, lane 13: rows 32.., d[4j+{0,1}] at (16w+g, 8j+2t+{0,1}).
    assert_eq!(d_m64(77, 0), (35, 2));
    assert_eq!(d_m64(77, 4 * 31 + 3), (43, 8 * 31 + 3));
    assert_eq!(a_m64k16(77, 4), (35, 10));
}

/// Matrix i, row r, column c of the ldmatrix test input holds 64i + 8r + c.
fn indexed_rows(num: usize) -> Vec<[u16; 8]> {
    (0..8 * num).map(|row| std::array::from_fn(|c| (8 * row + c) as u16)).collect()
}

#[test]
fn ldmatrix_distributes_rows_as_the_isa_figure() {
    for num in [1, 2, 4] {
        let out = ldmatrix(&indexed_rows(num), num, false).unwrap();
        for (lane, regs) in out.iter().enumerate() {
            for (i, &reg) in regs.iter().enumerate() {
                // Lane l receives row l/4, columns 2(l%4), 2(l%4)+1 of matrix i.
                let want = if i < num {
                    let first = (64 * i + 8 * (lane / 4) + 2 * (lane % 4)) as u16;
                    pack(first, first + 1)
                } else {
                    0
                };
                assert_eq!(reg, want, ".x{num} lane {lane} register {i}");
            }
        }
    }
    let out = ldmatrix(&indexed_rows(4), 4, false).unwrap();
    assert_eq!(out[5][0], pack(10, 11));
    assert_eq!(out[31][3], pack(192 + 62, 192 + 63));
}

#[test]
fn ldmatrix_trans_gives_the_transposed_positions() {
    for num in [1, 2, 4] {
        let out = ldmatrix(&indexed_rows(num), num, true).unwrap();
        for (lane, regs) in out.iter().enumerate() {
            for (i, &reg) in regs.iter().enumerate().take(num) {
                // Lane l receives column l/4, rows 2(l%4) and 2(l%4)+1 of matrix i.
                let (col, row) = (lane / 4, 2 * (lane % 4));
                let want = pack((64 * i + 8 * row + col) as u16, (64 * i + 8 * (row + 1) + col) as u16);
                assert_eq!(reg, want, ".x{num}.trans lane {lane} register {i}");
            }
        }
    }
    let out = ldmatrix(&indexed_rows(1), 1, true).unwrap();
    assert_eq!(out[5][0], pack(17, 25));
}

#[test]
fn ldmatrix_rejects_wrong_shapes() {
    assert_eq!(ldmatrix(&indexed_rows(1), 3, false), Err(MatrixError::LdmatrixCount { num: 3 }));
    assert_eq!(ldmatrix(&indexed_rows(2), 4, false), Err(MatrixError::LdmatrixRows { num: 4, got: 16 }));
}

/// The 32 lanes' A, B and C fragments of one m16n8k16.
type Fragments = ([[u32; 4]; 32], [[u32; 2]; 32], [[f32; 4]; 32]);

/// Builds the 32 lanes' fragments of a 16x16 A, a 16x8 B and a 16x8 C from the figure tables.
fn fragments(a: impl Fn(usize, usize) -> u16, b: impl Fn(usize, usize) -> u16, c: impl Fn(usize, usize) -> f32) -> Fragments {
    let (mut fa, mut fb, mut fc) = ([[0u32; 4]; 32], [[0u32; 2]; 32], [[0f32; 4]; 32]);
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        let av: Vec<u16> = A_FIG.iter().map(|(dr, dc)| a(g + dr, 2 * t + dc)).collect();
        fa[lane] = std::array::from_fn(|r| pack(av[2 * r], av[2 * r + 1]));
        let bv: Vec<u16> = B_FIG.iter().map(|(dk, dn)| b(2 * t + dk, g + dn)).collect();
        fb[lane] = std::array::from_fn(|r| pack(bv[2 * r], bv[2 * r + 1]));
        fc[lane] = std::array::from_fn(|r| c(g + C_FIG[r].0, 2 * t + C_FIG[r].1));
    }
    (fa, fb, fc)
}

/// The D value each lane holds at register r, by the figure table.
fn d_at(d: &[[f32; 4]; 32], row: usize, col: usize) -> f32 {
    let lane = 4 * (row % 8) + col / 2;
    d[lane][2 * (row / 8) + col % 2]
}

#[test]
fn mma_identity_times_indexed_b_returns_b_in_the_c_layout() {
    for (ty, cvt) in [(AbType::F16, f16 as fn(f32) -> u16), (AbType::Bf16, bf16)] {
        let one = cvt(1.0);
        let (a, b, c) = fragments(|r, k| if r == k { one } else { 0 }, |k, n| cvt((8 * k + n) as f32), |_, _| 0.0);
        let d = mma_m16n8k16(ty, &a, &b, &c);
        for row in 0..16 {
            for col in 0..8 {
                assert_eq!(d_at(&d, row, col), (8 * row + col) as f32, "{ty:?} D({row},{col})");
            }
        }
    }
}

#[test]
fn mma_indexed_a_times_selectors_returns_each_a_element() {
    // B selects column `shift + n` of A into column n: both halves of A's k range.
    for shift in [0, 8] {
        let (a, b, c) =
            fragments(|r, k| f16((16 * r + k) as f32), |k, n| if k == n + shift { f16(1.0) } else { 0 }, |r, n| (1000 * r + n) as f32);
        let d = mma_m16n8k16(AbType::F16, &a, &b, &c);
        for row in 0..16 {
            for col in 0..8 {
                let want = (16 * row + col + shift) as f32 + (1000 * row + col) as f32;
                assert_eq!(d_at(&d, row, col), want, "shift {shift} D({row},{col})");
            }
        }
    }
}

#[test]
fn mma_random_values_match_a_reference_product() {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let av: Vec<f32> = (0..256).map(|_| rng.small()).collect();
    let bv: Vec<f32> = (0..128).map(|_| rng.small()).collect();
    let cv: Vec<f32> = (0..128).map(|_| rng.small()).collect();
    for (ty, cvt) in [(AbType::F16, f16 as fn(f32) -> u16), (AbType::Bf16, bf16)] {
        let (a, b, c) = fragments(|r, k| cvt(av[16 * r + k]), |k, n| cvt(bv[8 * k + n]), |r, n| cv[8 * r + n]);
        let d = mma_m16n8k16(ty, &a, &b, &c);
        for row in 0..16 {
            for col in 0..8 {
                // Inputs have 7 fractional bits: every partial sum is exact in f32.
                let want: f32 = cv[8 * row + col] + (0..16).map(|k| av[16 * row + k] * bv[8 * k + col]).sum::<f32>();
                assert_eq!(d_at(&d, row, col), want, "{ty:?} D({row},{col})");
            }
        }
    }
}

#[test]
fn ldmatrix_x4_and_x2_trans_feed_mma_like_the_sm80_mainloop() {
    // A stored row-major [16][16], B stored [k][n] = [16][8] (n contiguous): A by ldmatrix.x4 in the
    // matrix order (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15);
    // B by ldmatrix.x2.trans of (k 0-7) and (k 8-15). The result must be the plain product.
    let a_val = |r: usize, k: usize| (16 * r + k) as f32 / 64.0;
    let b_val = |k: usize, n: usize| (8 * k + n) as f32 / 32.0 - 2.0;
    let a_rows: Vec<[u16; 8]> = (0..32)
        .map(|lane| {
            let (mat, r) = (lane / 8, lane % 8);
            let (row, k0) = (r + 8 * (mat & 1), 8 * (mat >> 1));
            std::array::from_fn(|c| f16(a_val(row, k0 + c)))
        })
        .collect();
    let b_rows: Vec<[u16; 8]> = (0..16).map(|k| std::array::from_fn(|n| f16(b_val(k, n)))).collect();
    let a = ldmatrix(&a_rows, 4, false).unwrap();
    let b2 = ldmatrix(&b_rows, 2, true).unwrap();
    let b: [[u32; 2]; 32] = std::array::from_fn(|l| [b2[l][0], b2[l][1]]);
    let d = mma_m16n8k16(AbType::F16, &a, &b, &[[0.0; 4]; 32]);
    for row in 0..16 {
        for col in 0..8 {
            let want: f64 = (0..16).map(|k| a_val(row, k) as f64 * b_val(k, col) as f64).sum();
            assert!((d_at(&d, row, col) as f64 - want).abs() < 1e-4, "D({row},{col})");
        }
    }
}

#[test]
fn accumulation_is_c_first_then_k_ascending_rounding_each_step() {
    // The documented model. C = 2^24 plus sixteen products of 1: each f32 step 2^24 + 1 ties to
    // even and stays 2^24 (adding the products first would give 2^24 + 16, exactly).
    let (a, b, c) = fragments(|_, _| f16(1.0), |_, _| f16(1.0), |_, _| 16_777_216.0);
    assert_eq!(d_at(&mma_m16n8k16(AbType::F16, &a, &b, &c), 0, 0), 16_777_216.0);
    // Products 2^24, fourteen 1s, -2^24 in k order from C = 0: ascending k gives 0 (descending
    // would give 14).
    let a_val = |_: usize, k: usize| match k {
        0 => f16(4096.0),
        15 => f16(-4096.0),
        _ => f16(1.0),
    };
    let (a, b, c) = fragments(a_val, |k, _| if k == 0 || k == 15 { f16(4096.0) } else { f16(1.0) }, |_, _| 0.0);
    assert_eq!(d_at(&mma_m16n8k16(AbType::F16, &a, &b, &c), 0, 0), 0.0);
}

#[test]
fn special_values_propagate_like_ieee_arithmetic() {
    let inf = f16(f32::INFINITY);
    // Row 0: A(0, 0) = inf times B(0, n) = 0 for n = 0 (NaN), 1 for n = 1 (inf).
    let (a, b, c) =
        fragments(|r, k| if r == 0 && k == 0 { inf } else { 0 }, |k, n| if k == 0 && n == 1 { f16(1.0) } else { 0 }, |_, _| 0.0);
    let d = mma_m16n8k16(AbType::F16, &a, &b, &c);
    assert!(d_at(&d, 0, 0).is_nan());
    assert_eq!(d_at(&d, 0, 1), f32::INFINITY);
    assert_eq!(d_at(&d, 1, 1), 0.0);
    // bf16 keeps f32's exponent range: 2^100 · 2^100 overflows to inf; 2^-70 · 2^-70 = 2^-140 is an
    // f32 subnormal, kept (no flush to zero).
    let big = bf16(2f32.powi(100));
    let tiny = bf16(2f32.powi(-70));
    let (a, b, c) = fragments(|_, k| if k == 0 { big } else { 0 }, |k, _| if k == 0 { big } else { 0 }, |_, _| 0.0);
    assert_eq!(d_at(&mma_m16n8k16(AbType::Bf16, &a, &b, &c), 0, 0), f32::INFINITY);
    let (a, b, c) = fragments(|_, k| if k == 0 { tiny } else { 0 }, |k, _| if k == 0 { tiny } else { 0 }, |_, _| 0.0);
    assert_eq!(d_at(&mma_m16n8k16(AbType::Bf16, &a, &b, &c), 0, 0), 2f32.powi(-140));
}
