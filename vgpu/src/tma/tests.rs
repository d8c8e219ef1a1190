//! Known-answer tests of tensor maps and TMA tile loads, written from the CUDA driver documentation
//! (cuTensorMapEncodeTiled's rules) and the swizzle description of the CUDA programming guide / PTX
//! ISA: chunk c of a swizzled 128-byte line moves to chunk c XOR (line index bits), where the line
//! index is the shared address / 128.

use super::*;
use crate::matrix::Swizzle;

/// A fake device memory: `bytes` at address `base`.
pub(super) struct Global {
    pub base: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug, PartialEq)]
pub(super) enum TestErr {
    Tma(TmaError),
    Global(u64),
}

impl From<TmaError> for TestErr {
    fn from(e: TmaError) -> Self {
        TestErr::Tma(e)
    }
}

impl Global {
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), TestErr> {
        let off = addr.checked_sub(self.base).ok_or(TestErr::Global(addr))? as usize;
        let src = self.bytes.get(off..off + buf.len()).ok_or(TestErr::Global(addr))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

const BASE: u64 = 0x10_0000;

/// A u16 tensor whose element at (x, y, z) holds 1 + x + 100 y + 1000 z (0 marks the fill).
fn indexed_u16(dims: [u64; 3], pitch: u64) -> Global {
    let plane = pitch * dims[1];
    let mut bytes = vec![0u8; (plane * dims[2]) as usize];
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                let at = (z * plane + y * pitch + 2 * x) as usize;
                bytes[at..at + 2].copy_from_slice(&((1 + x + 100 * y + 1000 * z) as u16).to_le_bytes());
            }
        }
    }
    Global { base: BASE, bytes }
}

fn value(x: i64, y: i64, z: i64, dims: [u64; 3]) -> u16 {
    let inside = |c: i64, d: u64| c >= 0 && (c as u64) < d;
    if inside(x, dims[0]) && inside(y, dims[1]) && inside(z, dims[2]) {
        (1 + x + 100 * y + 1000 * z) as u16
    } else {
        0
    }
}

fn args<'a>(rank: u32, dims: &'a [u64], strides: &'a [u64], boxes: &'a [u32], es: &'a [u32], swizzle: Swizzle) -> EncodeTiled<'a> {
    EncodeTiled {
        data_type: DataType::U16 as u32,
        rank,
        global_address: BASE,
        global_dims: dims,
        global_strides: strides,
        box_dims: boxes,
        element_strides: es,
        interleave: 0,
        swizzle: swizzle.tensor_map_value(),
        l2_promotion: 3,
        oob_fill: 0,
    }
}

fn u16_at(smem: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([smem[at], smem[at + 1]])
}

/// Loads a 2-D u16 box with a swizzle and checks every element: box row r, element e is chunk
/// c = e / 8 of the row at logical address dst + r·row_bytes, stored in its 128-byte line at chunk
/// c XOR ((line index) mod span/16).
fn check_swizzled_2d(swizzle: Swizzle, box_x: u32, dst: u32, coords: [i32; 2]) {
    let dims = [70u64, 20, 1];
    let pitch = 160u64;
    let g = indexed_u16(dims, pitch);
    let map = TensorMap::from_encode_tiled(&args(2, &dims[..2], &[pitch], &[box_x, 16], &[1, 1], swizzle)).unwrap();
    let mut smem = vec![0xAAu8; 16384];
    let bytes = load_tile(&map, &coords, |a, b| g.read(a, b), &mut smem, dst).unwrap();
    let row_bytes = 2 * box_x;
    assert_eq!(bytes, row_bytes * 16, "the full box is counted");
    let chunks_per_line = swizzle.span_bytes() / 16;
    for r in 0..16u32 {
        for e in 0..box_x {
            let logical = dst + r * row_bytes + 2 * e;
            let (line, chunk, within) = (logical / 128, (logical % 128) / 16, logical % 16);
            let stored = line * 128 + (chunk ^ (line % chunks_per_line)) * 16 + within;
            let want = value(coords[0] as i64 + e as i64, coords[1] as i64 + r as i64, 0, dims);
            assert_eq!(u16_at(&smem, stored as usize), want, "{swizzle:?} dst {dst:#x} row {r} element {e}");
        }
    }
    // Nothing outside the box's lines was touched.
    assert!(smem[..dst as usize].iter().all(|&b| b == 0xAA));
    assert!(smem[(dst + bytes) as usize..].iter().all(|&b| b == 0xAA));
}

#[test]
fn swizzle_128b_box_crossing_both_edges() {
    // x 32..96 over a 70-wide tensor, y 8..24 over 20 rows.
    check_swizzled_2d(Swizzle::B128, 64, 1024, [32, 8]);
    // Negative coordinates: the fill comes first.
    check_swizzled_2d(Swizzle::B128, 64, 2048, [-8, -3]);
}

#[test]
fn swizzle_is_applied_to_absolute_shared_addresses() {
    // A destination that is 128- but not 1024-aligned starts the pattern at line phase 4.
    check_swizzled_2d(Swizzle::B128, 64, 512, [0, 0]);
    let mut smem = vec![0u8; 4096];
    let g = indexed_u16([70, 20, 1], 160);
    let map = TensorMap::from_encode_tiled(&args(2, &[70, 20], &[160], &[64, 16], &[1, 1], Swizzle::B128)).unwrap();
    load_tile(&map, &[0, 0], |a, b| g.read(a, b), &mut smem, 512).unwrap();
    // Row 0 (line 4): its chunk 0 (x 0..8) sits at chunk 4.
    assert_eq!(u16_at(&smem, 512 + 4 * 16), 1);
}

#[test]
fn swizzle_64b_and_32b_boxes() {
    check_swizzled_2d(Swizzle::B64, 32, 1024, [50, 10]);
    check_swizzled_2d(Swizzle::B64, 16, 512, [60, -2]);
    check_swizzled_2d(Swizzle::B32, 16, 256, [64, 12]);
    check_swizzled_2d(Swizzle::None, 48, 128, [40, 6]);
}

#[test]
fn three_d_box_over_the_edges_of_two_dimensions() {
    let dims = [16u64, 5, 3];
    let g = indexed_u16(dims, 32);
    let map = TensorMap::from_encode_tiled(&args(3, &dims, &[32, 160], &[16, 4, 2], &[1, 1, 1], Swizzle::None)).unwrap();
    let mut smem = vec![0xFFu8; 1024];
    let bytes = load_tile(&map, &[-4, 3, 2], |a, b| g.read(a, b), &mut smem, 128).unwrap();
    assert_eq!(bytes, 16 * 4 * 2 * 2);
    for z in 0..2 {
        for y in 0..4 {
            for x in 0..16 {
                let at = 128 + 2 * (x + 16 * (y + 4 * z));
                let want = value(x as i64 - 4, y as i64 + 3, z as i64 + 2, dims);
                assert_eq!(u16_at(&smem, at), want, "({x},{y},{z})");
            }
        }
    }
    // The box entirely outside the tensor: all fill, still the full byte count.
    assert_eq!(load_tile(&map, &[0, 7, 0], |a, b| g.read(a, b), &mut smem, 0).unwrap(), 256);
    assert!(smem[..256].iter().all(|&b| b == 0));
}

#[test]
fn element_strides_skip_elements_and_shrink_the_box() {
    let dims = [64u64, 10, 1];
    let g = indexed_u16(dims, 128);
    // Every second row, every second element: 16 elements (32 bytes) x 3 rows.
    let map = TensorMap::from_encode_tiled(&args(2, &dims[..2], &[128], &[32, 6], &[2, 2], Swizzle::None)).unwrap();
    let mut smem = vec![0u8; 512];
    let bytes = load_tile(&map, &[40, 5], |a, b| g.read(a, b), &mut smem, 0).unwrap();
    assert_eq!(bytes, 32 * 3);
    for r in 0..3 {
        for e in 0..16 {
            let want = value(40 + 2 * e, 5 + 2 * r, 0, dims);
            assert_eq!(u16_at(&smem, (32 * r + 2 * e) as usize), want, "row {r} element {e}");
        }
    }
}

#[test]
fn nan_fill_for_float_maps() {
    let g = Global { base: BASE, bytes: 1.5f32.to_le_bytes().repeat(16) };
    let map = TensorMap::from_encode_tiled(&EncodeTiled {
        data_type: DataType::F32 as u32,
        oob_fill: OobFill::NanRequestZeroFma as u32,
        ..args(2, &[4, 4], &[16], &[8, 1], &[1, 1], Swizzle::None)
    })
    .unwrap();
    let mut smem = vec![0u8; 128];
    load_tile(&map, &[0, 3], |a, b| g.read(a, b), &mut smem, 0).unwrap();
    let vals: Vec<u32> = smem[..32].chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(vals[..4], [1.5f32.to_bits(); 4]);
    assert_eq!(vals[4..], [0x7fff_ffff; 4]);
}

#[test]
fn reads_are_one_per_in_bounds_run_and_their_errors_pass_through() {
    let g = indexed_u16([70, 20, 1], 160);
    let map = TensorMap::from_encode_tiled(&args(2, &[70, 20], &[160], &[64, 4], &[1, 1], Swizzle::B128)).unwrap();
    let mut calls = Vec::new();
    let mut smem = vec![0u8; 1024];
    load_tile(
        &map,
        &[32, 18],
        |a, b: &mut [u8]| {
            calls.push((a, b.len()));
            g.read(a, b)
        },
        &mut smem,
        0,
    )
    .unwrap();
    // Rows 18 and 19 are inside: x 32..70 is one 76-byte run each; rows 20, 21 are read from nowhere.
    assert_eq!(calls, vec![(BASE + 18 * 160 + 64, 76), (BASE + 19 * 160 + 64, 76)]);
    let err = load_tile(&map, &[0, 0], |a, _b: &mut [u8]| Err::<(), _>(TestErr::Global(a)), &mut smem, 0);
    assert_eq!(err, Err(TestErr::Global(BASE)));
}

#[test]
fn load_requirements() {
    let g = indexed_u16([70, 20, 1], 160);
    let map = TensorMap::from_encode_tiled(&args(2, &[70, 20], &[160], &[64, 16], &[1, 1], Swizzle::B128)).unwrap();
    let mut smem = vec![0u8; 4096];
    let run = |coords: &[i32], dst: u32, smem: &mut [u8]| load_tile(&map, coords, |a, b| g.read(a, b), smem, dst);
    assert_eq!(run(&[0, 0, 0], 0, &mut smem), Err(TestErr::Tma(TmaError::Coords { got: 3, rank: 2 })));
    assert_eq!(run(&[0, 0], 64, &mut smem), Err(TestErr::Tma(TmaError::DstAlign { dst: 64 })));
    assert_eq!(
        run(&[0, 0], 2048 + 128, &mut smem),
        Err(TestErr::Tma(TmaError::SharedOutOfRange { dst: 2176, bytes: 2048, smem_bytes: 4096 }))
    );
}

#[test]
fn encode_decode_round_trip_and_garbage() {
    let map = TensorMap::from_encode_tiled(&args(3, &[64, 300, 7], &[4096, 4096 * 300], &[64, 256, 1], &[1, 1, 1], Swizzle::B128)).unwrap();
    let bytes = map.encode();
    assert_eq!(TensorMap::decode(&bytes), Ok(map));
    assert_eq!(TensorMap::decode(&[0; 128]), Err(TmaError::Magic { found: 0 }));
    let mut flipped = bytes;
    flipped[30] ^= 1;
    assert_eq!(TensorMap::decode(&flipped), Err(TmaError::Checksum));
}

#[test]
fn the_driver_rules_are_enforced() {
    let ok = |a: EncodeTiled<'_>| TensorMap::from_encode_tiled(&a);
    let base = args(2, &[64, 64], &[128], &[64, 64], &[1, 1], Swizzle::B128);
    assert!(ok(base).is_ok());
    let cases: Vec<(EncodeTiled<'_>, TmaError)> = vec![
        (EncodeTiled { rank: 0, ..base }, TmaError::Rank { rank: 0 }),
        (EncodeTiled { rank: 6, ..base }, TmaError::Rank { rank: 6 }),
        (EncodeTiled { global_dims: &[64], ..base }, TmaError::ArgLen { what: "globalDim", got: 1, want: 2, rank: 2 }),
        (EncodeTiled { data_type: 13, ..base }, TmaError::Enum { what: "DataType", value: 13 }),
        (EncodeTiled { swizzle: 4, ..base }, TmaError::Enum { what: "Swizzle", value: 4 }),
        (EncodeTiled { interleave: 1, ..base }, TmaError::InterleaveRank { rank: 2 }),
        (EncodeTiled { global_address: BASE + 8, ..base }, TmaError::Address { addr: BASE + 8, align: 16 }),
        (EncodeTiled { global_dims: &[64, 0], ..base }, TmaError::Dim { i: 1, dim: 0 }),
        (EncodeTiled { global_dims: &[(1 << 32) + 1, 4], ..base }, TmaError::Dim { i: 0, dim: (1 << 32) + 1 }),
        (EncodeTiled { global_strides: &[136], ..base }, TmaError::Stride { i: 0, stride: 136, align: 16 }),
        (EncodeTiled { global_strides: &[0], ..base }, TmaError::Stride { i: 0, stride: 0, align: 16 }),
        (EncodeTiled { global_strides: &[1 << 40], ..base }, TmaError::Stride { i: 0, stride: 1 << 40, align: 16 }),
        (EncodeTiled { box_dims: &[64, 257], ..base }, TmaError::BoxDim { i: 1, dim: 257 }),
        (EncodeTiled { box_dims: &[0, 8], ..base }, TmaError::BoxDim { i: 0, dim: 0 }),
        (EncodeTiled { box_dims: &[4, 8], ..base }, TmaError::BoxInnerBytes { bytes: 8 }),
        (EncodeTiled { box_dims: &[128, 8], ..base }, TmaError::BoxSwizzle { bytes: 256, span: 128 }),
        (
            EncodeTiled { box_dims: &[64, 8], swizzle: Swizzle::B64.tensor_map_value(), ..base },
            TmaError::BoxSwizzle { bytes: 128, span: 64 },
        ),
        (EncodeTiled { element_strides: &[1, 9], ..base }, TmaError::ElementStride { i: 1, stride: 9 }),
        (EncodeTiled { oob_fill: 1, ..base }, TmaError::NanFillType { data_type: DataType::U16 }),
    ];
    for (a, want) in cases {
        assert_eq!(ok(a), Err(want.clone()), "{want}");
    }
    // Without a swizzle the inner box may exceed 128 bytes.
    assert!(ok(EncodeTiled { box_dims: &[128, 8], swizzle: 0, ..base }).is_ok());
}

#[test]
fn one_and_five_dimensional_boxes() {
    // 1-D: 100 elements, a 64-element box from 64 runs 28 elements past the end.
    let g = indexed_u16([100, 1, 1], 200);
    let map = TensorMap::from_encode_tiled(&args(1, &[100], &[], &[64], &[1], Swizzle::None)).unwrap();
    let mut smem = vec![0xEEu8; 256];
    assert_eq!(load_tile(&map, &[64], |a, b| g.read(a, b), &mut smem, 0).unwrap(), 128);
    for e in 0..64 {
        assert_eq!(u16_at(&smem, 2 * e), value(64 + e as i64, 0, 0, [100, 1, 1]), "element {e}");
    }
    // 5-D, dense, element (x0..x4) = 1 + its linear index; the box hangs over dimensions 3 and 4.
    let dims = [8u64, 2, 2, 2, 3];
    let count: u64 = dims.iter().product();
    let bytes: Vec<u8> = (0..count).flat_map(|i| (1 + i as u16).to_le_bytes()).collect();
    let g = Global { base: BASE, bytes };
    let map = TensorMap::from_encode_tiled(&args(5, &dims, &[16, 32, 64, 128], &[8, 2, 1, 2, 2], &[1; 5], Swizzle::None)).unwrap();
    let coords = [0, 0, 1, 1, 2];
    let mut smem = vec![0xEEu8; 256];
    assert_eq!(load_tile(&map, &coords, |a, b| g.read(a, b), &mut smem, 0).unwrap(), 8 * 2 * 2 * 2 * 2);
    for i in 0..64usize {
        // Box index i = x + 8 (y + 2 (w + 2 v)) (the box's third dimension has one element).
        let (x, y, w, v) = (i % 8, (i / 8) % 2, (i / 16) % 2, i / 32);
        let c = [x, y, 1, 1 + w, 2 + v];
        let inside = c.iter().zip(dims).all(|(&c, d)| (c as u64) < d);
        let linear = c[0] + 8 * (c[1] + 2 * (c[2] + 2 * (c[3] + 2 * c[4])));
        let want = if inside { 1 + linear as u16 } else { 0 };
        assert_eq!(u16_at(&smem, 2 * i), want, "box element {i} at {c:?}");
    }
}

#[test]
fn f32_rows_of_128_bytes_swizzle_like_u16_ones() {
    // 32 f32 per 128-byte row: 16-byte chunk c of row r lands at chunk c ^ (r % 8) (dst 1024-aligned).
    let (w, h) = (40u64, 12u64);
    let bytes: Vec<u8> = (0..w * h).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let g = Global { base: BASE, bytes };
    let map = TensorMap::from_encode_tiled(&EncodeTiled {
        data_type: DataType::F32 as u32,
        ..args(2, &[w, h], &[w * 4], &[32, 8], &[1, 1], Swizzle::B128)
    })
    .unwrap();
    let mut smem = vec![0u8; 2048];
    load_tile(&map, &[16, 6], |a, b| g.read(a, b), &mut smem, 1024).unwrap();
    for r in 0..8u64 {
        for e in 0..32u64 {
            let (x, y) = (16 + e, 6 + r);
            let want = if x < w && y < h { (y * w + x) as f32 } else { 0.0 };
            let at = (1024 + 128 * r + 16 * ((e / 4) ^ (r % 8)) + 4 * (e % 4)) as usize;
            assert_eq!(f32::from_le_bytes(smem[at..at + 4].try_into().unwrap()), want, "row {r} element {e}");
        }
    }
}

#[test]
fn a_box_ending_inside_a_swizzled_line_is_bounded_by_its_chunks() {
    // 9 rows of 16 bytes under SW128 from dst 0: row 8 is chunk 0 of line 1, stored at chunk 1,
    // i.e. bytes 144..160, past dst + 144.
    let g = indexed_u16([8, 9, 1], 16);
    let map = TensorMap::from_encode_tiled(&args(2, &[8, 9], &[16], &[8, 9], &[1, 1], Swizzle::B128)).unwrap();
    let tile = Tile::of(&map);
    assert_eq!(tile.bytes, 144);
    assert_eq!(tile.chunk_addrs(0).last(), Some(144));
    let mut smem = vec![0u8; 160];
    load_tile(&map, &[0, 0], |a, b| g.read(a, b), &mut smem, 0).unwrap();
    assert_eq!(u16_at(&smem, 144), value(0, 8, 0, [8, 9, 1]));
    let mut short = vec![0u8; 150];
    assert_eq!(
        load_tile(&map, &[0, 0], |a, b| g.read(a, b), &mut short, 0),
        Err(TestErr::Tma(TmaError::SharedOutOfRange { dst: 0, bytes: 144, smem_bytes: 150 }))
    );
}
