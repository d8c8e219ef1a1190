//! Where each element of a tensor-core fragment lives: the PTX ISA's fragment figures as functions.
//!
//! Notation of the figures: `g = lane / 4` (the "groupID"), `t = lane % 4` (the "threadID in group").
//! A 32-bit register holds two 16-bit elements, the lower-indexed one in the low half; "element i"
//! below is half `i % 2` of register `i / 2` for 16-bit fragments, and register `i` for f32 ones.

/// m16n8k16 A (`.row`, 16 x 16, 4 registers = 8 elements): `(row, k)` of element `i` (0..8) of `lane`.
/// a0,a1 = (g, 2t+{0,1}); a2,a3 = (g+8, 2t+{0,1}); a4,a5 = (g, 2t+8+{0,1}); a6,a7 = (g+8, 2t+8+{0,1}).
pub fn a_m16k16(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    (g + 8 * ((i / 2) % 2), 2 * t + i % 2 + 8 * (i / 4))
}

/// m16n8k16 B (`.col`, 16 x 8, 2 registers = 4 elements): `(k, n)` of element `i` (0..4) of `lane`.
/// b0,b1 = (2t+{0,1}, g); b2,b3 = (2t+8+{0,1}, g).
pub fn b_k16n8(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    (2 * t + i % 2 + 8 * (i / 2), g)
}

/// m16n8 C and D (f32, 4 registers): `(row, n)` of register `i` (0..4) of `lane`.
/// c0,c1 = (g, 2t+{0,1}); c2,c3 = (g+8, 2t+{0,1}).
pub fn c_m16n8(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    (g + 8 * (i / 2), 2 * t + i % 2)
}

/// wgmma m64nNk16 D (f32, N/2 registers per thread): `(row, n)` of register `i` of warpgroup thread
/// `thread` (0..128). Warp w = thread / 32 owns rows 16w..16w+15; d[4j+{0,1}] = (16w+g, 8j+2t+{0,1}),
/// d[4j+{2,3}] = (16w+g+8, 8j+2t+{0,1}): the m16n8 C layout repeated over the N/8 column blocks.
pub fn d_m64(thread: usize, i: usize) -> (usize, usize) {
    let (row, n) = c_m16n8(thread % 32, i % 4);
    (16 * (thread / 32) + row, 8 * (i / 4) + n)
}

/// wgmma m64nNk16 A from registers (16-bit, 4 registers = 8 elements per thread): `(row, k)` of
/// element `i` of warpgroup thread `thread`. Warp w holds rows 16w..16w+15 in the m16n8k16 A layout.
pub fn a_m64k16(thread: usize, i: usize) -> (usize, usize) {
    let (row, k) = a_m16k16(thread % 32, i);
    (16 * (thread / 32) + row, k)
}

/// Element `i` of a fragment of 16-bit elements packed two per register.
pub(crate) fn half_at(regs: &[u32], i: usize) -> u16 {
    (regs[i / 2] >> (16 * (i % 2))) as u16
}
