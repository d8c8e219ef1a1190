//! Known-answer tests of wgmma: operands placed in shared memory by the PTX ISA's canonical-layout
//! table (transcribed below as CuTe shapes and strides, evaluated by a small CuTe-style evaluator
//! with CuTe's `Swizzle<B, M, S>`), read back through descriptors, for every swizzle mode and both
//! major-nesses; accumulators checked against the D fragment figure. Unplaced shared memory holds
//! NaN, so a read from a wrong place cannot go unnoticed.

use super::tests::{f16, pack, Rng};
use super::{wgmma, wgmma_read_chunks, AbType, Major, MatrixDesc, MatrixError, Operand, Swizzle, WgmmaA, WgmmaOp};

/// A CuTe layout mode list: (shape, stride) in elements, colexicographic; the last shape may be
/// `u32::MAX` (the table's m / k: as many repeats as the operand needs).
type Modes = Vec<(u32, u32)>;

/// The PTX ISA "Canonical Layouts" table for 16-bit elements (T = 8), LBO and SBO in elements.
fn canonical(major: Major, swizzle: Swizzle, lbo: u32, sbo: u32) -> (Modes, Modes) {
    const T: u32 = 8;
    const REST: u32 = u32::MAX;
    match (major, swizzle) {
        // ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))
        (Major::Mn, Swizzle::None) => (vec![(T, 1), (1, T), (REST, sbo)], vec![(8, T), (REST, lbo)]),
        // ((T,2,m),(8,k)):((1,T,LBO),(2T,SBO)) and the 4 / 8 analogues
        (Major::Mn, Swizzle::B32) => (vec![(T, 1), (2, T), (REST, lbo)], vec![(8, 2 * T), (REST, sbo)]),
        (Major::Mn, Swizzle::B64) => (vec![(T, 1), (4, T), (REST, lbo)], vec![(8, 4 * T), (REST, sbo)]),
        (Major::Mn, Swizzle::B128) => (vec![(T, 1), (8, T), (REST, lbo)], vec![(8, 8 * T), (REST, sbo)]),
        // ((8,m),(T,2k)):((1T,SBO),(1,LBO))
        (Major::K, Swizzle::None) => (vec![(8, T), (REST, sbo)], vec![(T, 1), (REST, lbo)]),
        // ((8,m),(T,2k)):((2T,SBO),(1,T)) and the 4T / 8T analogues
        (Major::K, Swizzle::B32) => (vec![(8, 2 * T), (REST, sbo)], vec![(T, 1), (REST, T)]),
        (Major::K, Swizzle::B64) => (vec![(8, 4 * T), (REST, sbo)], vec![(T, 1), (REST, T)]),
        (Major::K, Swizzle::B128) => (vec![(8, 8 * T), (REST, sbo)], vec![(T, 1), (REST, T)]),
    }
}

fn eval(modes: &Modes, mut coord: u32) -> u32 {
    let mut off = 0;
    for &(shape, stride) in modes {
        off += (coord % shape) * stride;
        coord /= shape;
    }
    off
}

/// CuTe's `Swizzle<B, M, S>`: XOR bits [M, M+B) with bits [M+S, M+S+B).
fn cute_swizzle(b: u32, m: u32, s: u32, offset: u32) -> u32 {
    let yyy = ((1u32 << b) - 1) << (m + s);
    offset ^ ((offset & yyy) >> s)
}

fn swizzle_bits(s: Swizzle) -> u32 {
    match s {
        Swizzle::None => 0,
        Swizzle::B32 => 1,
        Swizzle::B64 => 2,
        Swizzle::B128 => 3,
    }
}

/// A tile in shared memory as the table lays it out.
struct Placed {
    major: Major,
    swizzle: Swizzle,
    start: u32,
    lbo_bytes: u32,
    sbo_bytes: u32,
}

impl Placed {
    fn addr(&self, mn: u32, k: u32) -> usize {
        let (mn_modes, k_modes) = canonical(self.major, self.swizzle, self.lbo_bytes / 2, self.sbo_bytes / 2);
        let byte = self.start + 2 * (eval(&mn_modes, mn) + eval(&k_modes, k));
        cute_swizzle(swizzle_bits(self.swizzle), 4, 3, byte) as usize
    }

    fn put(&self, smem: &mut [u8], rows: u32, ks: u32, value: impl Fn(u32, u32) -> u16) {
        for mn in 0..rows {
            for k in 0..ks {
                let at = self.addr(mn, k);
                assert_eq!(u16::from_le_bytes([smem[at], smem[at + 1]]), NAN, "layout places two elements at {at:#x}");
                smem[at..at + 2].copy_from_slice(&value(mn, k).to_le_bytes());
            }
        }
    }

    fn desc(&self) -> u64 {
        MatrixDesc { start: self.start, lbo: self.lbo_bytes, sbo: self.sbo_bytes, base_offset: 0, swizzle: self.swizzle }.encode()
    }
}

const NAN: u16 = 0xFFFF;

fn op(n: u32, trans_a: bool, trans_b: bool) -> WgmmaOp {
    WgmmaOp { n, ty: AbType::F16, trans_a, trans_b, scale_d: false, negate_a: false, negate_b: false }
}

/// D(row, col) read from the accumulators by the figure: thread 32w + 4g + t holds
/// (16w+g, 8j+2t+c) in d[4j+c] and (16w+g+8, 8j+2t+c) in d[4j+2+c].
fn d_at(acc: &[f32], n: u32, row: u32, col: u32) -> f32 {
    let (w, g, half) = (row / 16, row % 8, (row % 16) / 8);
    let (j, t, c) = (col / 8, (col % 8) / 2, col % 2);
    acc[((32 * w + 4 * g + t) * (n / 2) + 4 * j + 2 * half + c) as usize]
}

/// Runs one wgmma from poisoned accumulators (scale-d false) and checks every D(row, col).
fn check_product(o: &WgmmaOp, a: WgmmaA<'_>, b_desc: u64, smem: &[u8], want: impl Fn(u32, u32) -> f32, what: &str) {
    let mut acc = vec![f32::NAN; 32 * o.n as usize * 2];
    wgmma(o, a, b_desc, smem, &mut acc).unwrap();
    for row in 0..64 {
        for col in 0..o.n {
            assert_eq!(d_at(&acc, o.n, row, col), want(row, col), "{what}: D({row},{col})");
        }
    }
}

/// Layout parameters per (major, swizzle): (LBO, SBO) in bytes, LBO != SBO so a swap shows.
fn offsets(major: Major, swizzle: Swizzle) -> (u32, u32) {
    match (major, swizzle) {
        (Major::K, Swizzle::None) => (128, 256),
        (Major::K, s) => (16, 8 * s.span_bytes()),
        // A 8-element MN group is one 128-byte core matrix (8 k rows); 8-k groups 2 KiB apart.
        (Major::Mn, Swizzle::None) => (2048, 128),
        // 8 k rows of one swizzle run form an atom of 8·span bytes; MN blocks LBO apart, placed after
        // both 8-k groups.
        (Major::Mn, s) => (16 * s.span_bytes(), 8 * s.span_bytes()),
    }
}

const MODES: [Swizzle; 4] = [Swizzle::None, Swizzle::B32, Swizzle::B64, Swizzle::B128];

/// The operand under test holds index values (16·mn + k) in the layout of (major, swizzle); the other
/// one, K-major SW128, selects: B(k, n) = [k == n % 16] gives D(m, n) = A(m, n % 16), and
/// A(m, k) = [k == m % 16] gives D(m, n) = B(m % 16, n) = 16n + m % 16 (exact in f16 up to N = 128).
fn check_placement(tested: Operand, major: Major, swizzle: Swizzle) {
    let (lbo, sbo) = offsets(major, swizzle);
    let under_test = Placed { major, swizzle, start: 0, lbo_bytes: lbo, sbo_bytes: sbo };
    let selector = Placed { major: Major::K, swizzle: Swizzle::B128, start: 32768, lbo_bytes: 16, sbo_bytes: 1024 };
    let n = if tested == Operand::A { 32 } else { 128 };
    let (tested_rows, selector_rows) = if tested == Operand::A { (64, n) } else { (n, 64) };
    let mut smem = vec![0xFFu8; 65536];
    under_test.put(&mut smem, tested_rows, 16, |mn, k| f16((16 * mn + k) as f32));
    selector.put(&mut smem, selector_rows, 16, |mn, k| if k == mn % 16 { f16(1.0) } else { 0 });
    let mn_major = major == Major::Mn;
    let (a, b, o, want): (&Placed, &Placed, _, fn(u32, u32) -> f32) = match tested {
        Operand::A => (&under_test, &selector, op(n, mn_major, false), |row, col| (16 * row + col % 16) as f32),
        Operand::B => (&selector, &under_test, op(n, false, mn_major), |row, col| (16 * col + row % 16) as f32),
    };
    check_product(&o, WgmmaA::Desc(a.desc()), b.desc(), &smem, want, &format!("{tested} {major:?} {swizzle:?}"));
}

#[test]
fn every_element_lands_where_the_layout_table_puts_it() {
    for tested in [Operand::A, Operand::B] {
        for major in [Major::K, Major::Mn] {
            for swizzle in MODES {
                check_placement(tested, major, swizzle);
            }
        }
    }
}

#[test]
fn k16_slices_of_a_wider_swizzled_tile_advance_the_start_address() {
    // A 64 x 64 tile, K-major SW128 (k in the 128-byte row: slice kk at +32 bytes) and MN-major SW128
    // (16 k rows per slice: +2048 bytes), as our Hopper GEMM walks them.
    let n = 16;
    for (major, step) in [(Major::K, 32), (Major::Mn, 2048)] {
        let a = Placed { major, swizzle: Swizzle::B128, start: 0, lbo_bytes: 8192, sbo_bytes: 1024 };
        let mut smem = vec![0xFFu8; 65536];
        // The wide tile: its k runs past 16 with the table's k mode repeating.
        a.put(&mut smem, 64, 64, |m, k| f16((64 * (m % 16) + k) as f32));
        let b = Placed { major: Major::K, swizzle: Swizzle::B32, start: 32768, lbo_bytes: 16, sbo_bytes: 256 };
        b.put(&mut smem, n, 16, |col, k| if k == col { f16(1.0) } else { 0 });
        for kk in 0..4u32 {
            let slice = Placed { start: kk * step, ..a };
            let want = |row: u32, col: u32| (64 * (row % 16) + 16 * kk + col) as f32;
            let what = format!("{major:?} slice {kk}");
            check_product(&op(n, major == Major::Mn, false), WgmmaA::Desc(slice.desc()), b.desc(), &smem, want, &what);
        }
    }
}

#[test]
fn register_a_uses_the_m16n8k16_layout_per_warp() {
    // Thread 32w + 4g + t holds a0,a1 = (16w+g, 2t+{0,1}), a2,a3 = (+8 rows), a4..a7 = (+8 k).
    let mut regs = [[0u32; 4]; 128];
    for (thread, r) in regs.iter_mut().enumerate() {
        let (w, g, t) = (thread as u32 / 32, (thread as u32 % 32) / 4, thread as u32 % 4);
        let a = |row: u32, k: u32| f16((16 * row + k) as f32);
        let (row, k) = (16 * w + g, 2 * t);
        *r = [
            pack(a(row, k), a(row, k + 1)),
            pack(a(row + 8, k), a(row + 8, k + 1)),
            pack(a(row, k + 8), a(row, k + 9)),
            pack(a(row + 8, k + 8), a(row + 8, k + 9)),
        ];
    }
    let n = 16;
    let b = Placed { major: Major::Mn, swizzle: Swizzle::None, start: 256, lbo_bytes: 2048, sbo_bytes: 128 };
    let mut smem = vec![0xFFu8; 8192];
    b.put(&mut smem, n, 16, |col, k| if k == col { f16(1.0) } else { 0 });
    check_product(&op(n, false, true), WgmmaA::Regs(&regs), b.desc(), &smem, |row, col| (16 * row + col) as f32, "register A");
    let mut acc = vec![0f32; 64 * n as usize];
    assert_eq!(wgmma(&op(n, true, true), WgmmaA::Regs(&regs), b.desc(), &smem, &mut acc), Err(MatrixError::TransposedRegisterA));
}

#[test]
fn scale_d_and_operand_negation() {
    let n = 8;
    let a = Placed { major: Major::K, swizzle: Swizzle::B128, start: 0, lbo_bytes: 16, sbo_bytes: 1024 };
    let b = Placed { major: Major::K, swizzle: Swizzle::B128, start: 8192, lbo_bytes: 16, sbo_bytes: 1024 };
    let mut rng = Rng(7);
    let av: Vec<f32> = (0..64 * 16).map(|_| rng.small()).collect();
    let bv: Vec<f32> = (0..16 * 8).map(|_| rng.small()).collect();
    let mut smem = vec![0xFFu8; 16384];
    a.put(&mut smem, 64, 16, |m, k| f16(av[(16 * m + k) as usize]));
    b.put(&mut smem, n, 16, |col, k| f16(bv[(16 * col + k) as usize]));
    let prod = |row: u32, col: u32| (0..16).map(|k| av[(16 * row + k) as usize] * bv[(16 * col + k) as usize]).sum::<f32>();
    let start: Vec<f32> = (0..64 * n).map(|i| i as f32 / 4.0).collect();
    for (scale_d, negate_a, negate_b) in
        [(false, false, false), (true, false, false), (true, true, false), (true, false, true), (false, true, true)]
    {
        let mut acc = start.clone();
        let o = WgmmaOp { scale_d, negate_a, negate_b, ..op(n, false, false) };
        wgmma(&o, WgmmaA::Desc(a.desc()), b.desc(), &smem, &mut acc).unwrap();
        let sign = if negate_a != negate_b { -1.0 } else { 1.0 };
        for row in 0..64 {
            for col in 0..n {
                let idx = ((32 * (row / 16) + 4 * (row % 8) + (col % 8) / 2) * (n / 2) + 2 * ((row % 16) / 8) + col % 2) as usize;
                let init = if scale_d { start[idx] } else { 0.0 };
                // Every partial sum is exact (7 fractional bits in, 14 out), so any order agrees.
                assert_eq!(d_at(&acc, n, row, col), init + sign * prod(row, col), "{o:?} D({row},{col})");
            }
        }
    }
}

#[test]
fn malformed_instructions_are_errors() {
    let smem = vec![0u8; 4096];
    let k128 = |start: u32| MatrixDesc { start, lbo: 16, sbo: 1024, base_offset: 0, swizzle: Swizzle::B128 };
    let (a, b) = (k128(0).encode(), k128(0).encode());
    let mut acc = vec![0f32; 64 * 8];
    assert_eq!(wgmma(&op(12, false, false), WgmmaA::Desc(a), b, &smem, &mut acc), Err(MatrixError::WgmmaN { n: 12 }));
    assert_eq!(wgmma(&op(264, false, false), WgmmaA::Desc(a), b, &smem, &mut acc), Err(MatrixError::WgmmaN { n: 264 }));
    assert_eq!(wgmma(&op(16, false, false), WgmmaA::Desc(a), b, &smem, &mut acc), Err(MatrixError::Accumulators { n: 16, got: 512 }));
    let shifted = MatrixDesc { base_offset: 2, ..k128(256) }.encode();
    assert_eq!(
        wgmma(&op(8, false, false), WgmmaA::Desc(shifted), b, &smem, &mut acc),
        Err(MatrixError::BaseOffset { operand: Operand::A, base_offset: 2 })
    );
    // A 64-row K-major SW128 A needs 8 KiB; 4 KiB of shared memory ends inside row 32.
    let err = wgmma(&op(8, false, false), WgmmaA::Desc(a), b, &smem, &mut acc).unwrap_err();
    assert!(matches!(err, MatrixError::SharedOutOfRange { operand: Operand::A, addr: 4096, smem_bytes: 4096, .. }), "{err:?}");
}

#[test]
fn read_chunks_list_each_16_byte_chunk_once() {
    for major in [Major::K, Major::Mn] {
        for swizzle in MODES {
            let (lbo, sbo) = offsets(major, swizzle);
            let t = Placed { major, swizzle, start: 1024, lbo_bytes: lbo, sbo_bytes: sbo };
            let o = op(64, major == Major::Mn, major == Major::Mn);
            let mut got = wgmma_read_chunks(&o, Operand::B, t.desc(), 64).unwrap();
            let mut want: Vec<u32> =
                (0..64).flat_map(|mn| (0..16).map(move |k| (mn, k))).map(|(mn, k)| t.addr(mn, k) as u32 & !15).collect();
            want.sort();
            want.dedup();
            got.sort();
            assert_eq!(got, want, "{major:?} {swizzle:?}");
        }
    }
}

#[test]
fn accumulation_is_d_first_then_k_ascending_rounding_each_step() {
    // As mma.sync (see the module docs): D = 2^24 plus sixteen 1s stays 2^24; products 2^24,
    // fourteen 1s, -2^24 from D = 0 give 0 in ascending k order.
    let a = Placed { major: Major::K, swizzle: Swizzle::B128, start: 0, lbo_bytes: 16, sbo_bytes: 1024 };
    let b = Placed { major: Major::K, swizzle: Swizzle::B128, start: 8192, lbo_bytes: 16, sbo_bytes: 1024 };
    let edge = |k: u32, last: f32| match k {
        0 => f16(4096.0),
        15 => f16(last),
        _ => f16(1.0),
    };
    let mut smem = vec![0xFFu8; 16384];
    a.put(&mut smem, 64, 16, |m, k| if m == 0 { edge(k, -4096.0) } else { f16(1.0) });
    b.put(&mut smem, 8, 16, |n, k| if n == 0 { edge(k, 4096.0) } else { f16(1.0) });
    let mut acc = vec![16_777_216.0f32; 128 * 4];
    acc[0] = 0.0;
    wgmma(&WgmmaOp { scale_d: true, ..op(8, false, false) }, WgmmaA::Desc(a.desc()), b.desc(), &smem, &mut acc).unwrap();
    assert_eq!(d_at(&acc, 8, 0, 0), 0.0);
    assert_eq!(d_at(&acc, 8, 5, 3), 16_777_216.0);
}
