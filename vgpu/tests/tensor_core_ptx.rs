//! Tensor-core and TMA instructions end to end through `vgpu::launch`: hand-written PTX in the forms
//! NVRTC emits for our kernels (ldmatrix + mma.sync; mbarrier + cp.async.bulk.tensor + wgmma through
//! SW128 descriptors), checked against plain matrix products computed here. The semantics tables
//! are tested in the crate's unit tests; these check that the interpreter feeds them the right
//! registers, addresses, tensor maps and barrier words.

mod common;
use common::{arg, Dev};
use vgpu::tma::{DataType, EncodeTiled, TensorMap};

/// xorshift values with 7 fractional bits in [-2, 2): exact in bf16 and f16.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) % 512) as f32 / 128.0 - 2.0
        })
        .collect()
}

fn header() -> &'static str {
    ".version 8.0\n.target sm_90a\n.address_size 64\n"
}

/// One warp: A (16x16 f16, row-major) by ldmatrix.x4, B (stored [k][n], 16x8) by ldmatrix.x2.trans,
/// mma.sync.m16n8k16, each lane's four f32 stored at out[4·lane + i].
#[test]
fn ldmatrix_and_mma_sync_through_the_interpreter() {
    let ptx = format!(
        "{}
.visible .entry k(.param .u64 pa, .param .u64 pb, .param .u64 pout)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<40>;
    .reg .f32 %f<8>;
    .reg .b64 %rd<16>;
    .shared .align 16 .b8 sa[512];
    .shared .align 16 .b8 sb[256];
    ld.param.u64 %rd1, [pa];
    ld.param.u64 %rd2, [pb];
    ld.param.u64 %rd3, [pout];
    mov.u32 %r1, %tid.x;
    mul.wide.u32 %rd4, %r1, 16;
    add.s64 %rd5, %rd1, %rd4;
    ld.global.v4.u32 {{%r2, %r3, %r4, %r5}}, [%rd5];
    mov.u32 %r6, sa;
    shl.b32 %r7, %r1, 4;
    add.s32 %r8, %r6, %r7;
    st.shared.v4.u32 [%r8], {{%r2, %r3, %r4, %r5}};
    setp.ge.u32 %p1, %r1, 16;
    @%p1 bra COPIED;
    add.s64 %rd6, %rd2, %rd4;
    ld.global.v4.u32 {{%r2, %r3, %r4, %r5}}, [%rd6];
    mov.u32 %r9, sb;
    add.s32 %r10, %r9, %r7;
    st.shared.v4.u32 [%r10], {{%r2, %r3, %r4, %r5}};
COPIED:
    bar.sync 0;
    // A: lane l addresses row (l % 8) + 8 ((l / 8) % 2), k half l / 16 (32-byte rows).
    and.b32 %r11, %r1, 7;
    shr.u32 %r12, %r1, 3;
    and.b32 %r13, %r12, 1;
    shl.b32 %r14, %r13, 3;
    add.s32 %r15, %r11, %r14;
    shl.b32 %r16, %r15, 5;
    shr.u32 %r17, %r1, 4;
    shl.b32 %r18, %r17, 4;
    add.s32 %r19, %r16, %r18;
    add.s32 %r20, %r6, %r19;
    ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{%r21, %r22, %r23, %r24}}, [%r20];
    // B: lane l (< 16) addresses k row l (16-byte rows); lanes 16..31 repeat them (ignored).
    and.b32 %r25, %r1, 15;
    shl.b32 %r26, %r25, 4;
    add.s32 %r27, %r9, %r26;
    ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {{%r28, %r29}}, [%r27];
    mov.f32 %f1, 0f3F800000;
    mov.f32 %f2, 0f40000000;
    mov.f32 %f3, 0f00000000;
    mov.f32 %f4, 0fBF800000;
    mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{%f5, %f6, %f7, %f0}}, {{%r21, %r22, %r23, %r24}}, {{%r28, %r29}}, {{%f1, %f2, %f3, %f4}};
    mul.wide.u32 %rd7, %r1, 16;
    add.s64 %rd8, %rd3, %rd7;
    st.global.v4.f32 [%rd8], {{%f5, %f6, %f7, %f0}};
    ret;
}}
",
        header()
    );
    let a = values(11, 256);
    let b = values(12, 128);
    let bits = |v: &[f32]| -> Vec<u16> { v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect() };
    let dev = Dev::new();
    let (da, db, dout) = (dev.upload(&bits(&a)), dev.upload(&bits(&b)), dev.upload(&[0f32; 128]));
    dev.run(&ptx, "k", [1, 1, 1], [32, 1, 1], 0, &[arg(da), arg(db), arg(dout)]).unwrap();
    let out: Vec<f32> = dev.download(dout, 128);
    let c = [1.0f32, 2.0, 0.0, -1.0];
    for lane in 0..32 {
        for i in 0..4 {
            // The C/D figure: c{0,1} = (g, 2t+{0,1}), c{2,3} = (g+8, 2t+{0,1}).
            let (row, col) = (lane / 4 + 8 * (i / 2), 2 * (lane % 4) + i % 2);
            let want = c[i] + (0..16).map(|k| a[16 * row + k] * b[8 * k + col]).sum::<f32>();
            assert_eq!(out[4 * lane + i], want, "lane {lane} d{i} = D({row},{col})");
        }
    }
}

fn tensor_map(addr: u64, dims: [u64; 2], pitch_bytes: u64) -> [u8; 128] {
    TensorMap::from_encode_tiled(&EncodeTiled {
        data_type: DataType::Bf16 as u32,
        rank: 2,
        global_address: addr,
        global_dims: &dims,
        global_strides: &[pitch_bytes],
        box_dims: &[64, 64],
        element_strides: &[1, 1],
        interleave: 0,
        swizzle: 3,
        l2_promotion: 3,
        oob_fill: 0,
    })
    .unwrap()
    .encode()
}

/// The descriptor bits above the start address: LBO and SBO (bytes) and SWIZZLE_128B.
fn desc_high(lbo: u64, sbo: u64) -> u64 {
    (lbo >> 4) << 16 | (sbo >> 4) << 32 | 1 << 62
}

/// One warpgroup: thread 0 initialises an mbarrier, announces the bytes and issues two 2-D TMA
/// loads (SW128 boxes of 64 x 64 bf16); all wait on the barrier's parity 0, run four
/// m64n64k16 wgmmas (k16 slices by descriptor advance) and store their 32 accumulators at
/// out[32·thread + i]. `b_mn_major`: B stored [k][n] and read MN-major (imm-trans-b = 1);
/// `negate_a`: imm-scale-a = -1.
fn tma_and_wgmma_through_the_interpreter(b_mn_major: bool, negate_a: bool) {
    let ptx = tma_and_wgmma_kernel(b_mn_major, negate_a, "");
    // A [64 m][64 k] (K-major); B [64 n][64 k] (K-major) or [64 k][64 n] (MN-major); rows padded.
    let pitch = 72usize;
    let a = values(21, 64 * pitch);
    let b = values(22, 64 * pitch);
    let out = run_tma_and_wgmma(&ptx, &a, &b, pitch).unwrap();
    let b_at = |kk: usize, n: usize| if b_mn_major { b[kk * pitch + n] } else { b[n * pitch + kk] };
    for thread in 0..128 {
        let (w, lane) = (thread / 32, thread % 32);
        for i in 0..32 {
            // d[4j+{0,1}] = (16w+g, 8j+2t+{0,1}), d[4j+{2,3}] = (16w+g+8, ...).
            let row = 16 * w + lane / 4 + 8 * ((i % 4) / 2);
            let col = 8 * (i / 4) + 2 * (lane % 4) + i % 2;
            let sign = if negate_a { -1.0 } else { 1.0 };
            let want: f64 = sign * (0..64).map(|kk| a[row * pitch + kk] as f64 * b_at(kk, col) as f64).sum::<f64>();
            let got = out[32 * thread + i];
            assert!((got as f64 - want).abs() < 1e-4, "thread {thread} d{i} = D({row},{col}): {got}, want {want}");
        }
    }
}

fn run_tma_and_wgmma(ptx: &str, a: &[f32], b: &[f32], pitch: usize) -> Result<Vec<f32>, String> {
    let bits = |v: &[f32]| -> Vec<u16> { v.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect() };
    let dev = Dev::new();
    let (da, db, dout) = (dev.upload(&bits(a)), dev.upload(&bits(b)), dev.upload(&[0f32; 128 * 32]));
    let map_a = tensor_map(da, [64, 64], 2 * pitch as u64);
    let map_b = tensor_map(db, [64, 64], 2 * pitch as u64);
    dev.run(ptx, "k", [1, 1, 1], [128, 1, 1], 18432, &[map_a.to_vec(), map_b.to_vec(), arg(dout)]).map_err(|e| e.to_string())?;
    Ok(dev.download(dout, 128 * 32))
}

/// The kernel of `tma_and_wgmma_through_the_interpreter`, with `before_wait` placed between the
/// wgmmas' commit_group and their wait_group.
fn tma_and_wgmma_kernel(b_mn_major: bool, negate_a: bool, before_wait: &str) -> String {
    let (b_step, b_high) = if b_mn_major { (2048, desc_high(8192, 1024)) } else { (32, desc_high(16, 1024)) };
    let dregs: Vec<String> = (0..32).map(|i| format!("%f{i}")).collect();
    let zero: String = dregs.iter().map(|r| format!("    mov.f32 {r}, 0f00000000;\n")).collect();
    let stores: String = dregs.iter().enumerate().map(|(i, r)| format!("    st.global.f32 [%rd40+{}], {r};\n", 4 * i)).collect();
    let wgmmas: String = (0..4)
        .map(|kk| {
            format!(
                "    add.s32 %r50, %r10, {a_off};
    shr.u32 %r50, %r50, 4;
    and.b32 %r50, %r50, 16383;
    cvt.u64.u32 %rd50, %r50;
    or.b64 %rd50, %rd50, {a_high};
    add.s32 %r51, %r10, {b_off};
    shr.u32 %r51, %r51, 4;
    and.b32 %r51, %r51, 16383;
    cvt.u64.u32 %rd51, %r51;
    or.b64 %rd51, %rd51, {b_high};
    wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {{{d}}}, %rd50, %rd51, %ps, {sa}, 1, 0, {tb};
",
                a_off = 32 * kk,
                a_high = desc_high(16, 1024),
                b_off = 8192 + b_step * kk,
                d = dregs.join(", "),
                tb = b_mn_major as u32,
                sa = if negate_a { -1 } else { 1 },
            )
        })
        .collect();
    // Opens like NVRTC's modules: global constants, then the dynamic shared array.
    format!(
        "{}
.global .align 4 .u32 tile_bytes = 16384;
.extern .shared .align 1024 .b8 smem[];

.visible .entry k(.param .align 64 .b8 map_a[128], .param .align 64 .b8 map_b[128], .param .u64 pout)
{{
    .reg .pred %p<4>;
    .reg .pred %ps;
    .reg .pred %pw;
    .reg .b32 %r<60>;
    .reg .f32 %f<32>;
    .reg .b64 %rd<60>;
    mov.u32 %r1, %tid.x;
    mov.u64 %rd1, smem;
    cvt.u32.u64 %r2, %rd1;
    add.s32 %r3, %r2, 1023;
    and.b32 %r10, %r3, -1024;
    add.s32 %r12, %r10, 16384;
    setp.ne.u32 %p1, %r1, 0;
    @%p1 bra INITED;
    mov.u32 %r4, 1;
    mbarrier.init.shared::cta.b64 [%r12], %r4;
    fence.mbarrier_init.release.cluster;
INITED:
    bar.sync 0;
    @%p1 bra ISSUED;
    mov.u32 %r5, 16384;
    mbarrier.arrive.expect_tx.shared::cta.b64 _, [%r12], %r5;
    mov.b64 %rd2, map_a;
    cvta.param.u64 %rd3, %rd2;
    mov.b64 %rd4, map_b;
    cvta.param.u64 %rd5, %rd4;
    mov.u32 %r6, 0;
    cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r10], [%rd3, {{%r6, %r6}}], [%r12];
    add.s32 %r7, %r10, 8192;
    cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r7], [%rd5, {{%r6, %r6}}], [%r12];
ISSUED:
    mov.u32 %r8, 0;
WAIT:
    mbarrier.try_wait.parity.shared::cta.b64 %pw, [%r12], %r8;
    @!%pw bra WAIT;
{zero}    mov.u32 %r9, 1;
    setp.ne.u32 %ps, %r9, 0;
    wgmma.fence.sync.aligned;
{wgmmas}    wgmma.commit_group.sync.aligned;
{before_wait}
    wgmma.wait_group.sync.aligned 0;
    ld.param.u64 %rd30, [pout];
    mul.wide.u32 %rd31, %r1, 128;
    add.s64 %rd40, %rd30, %rd31;
{stores}    ret;
}}
",
        header()
    )
}

#[test]
fn reading_a_wgmma_accumulator_before_its_wait_group_is_an_async_hazard() {
    let (a, b) = (values(21, 64 * 72), values(22, 64 * 72));
    // Reading (mov) or writing an accumulator register between commit and wait.
    for early in ["mov.b32 %r55, %f3;", "mov.f32 %f7, 0f00000000;"] {
        let err = run_tma_and_wgmma(&tma_and_wgmma_kernel(false, false, early), &a, &b, 72).unwrap_err();
        assert!(err.contains("async hazard") && err.contains("wgmma.wait_group"), "{early}: {err}");
    }
    // Other registers are free to use, and fence/commit are not accesses.
    run_tma_and_wgmma(&tma_and_wgmma_kernel(false, false, "mov.u32 %r55, 7;\n    wgmma.fence.sync.aligned;"), &a, &b, 72).unwrap();
}

#[test]
fn tma_sw128_and_wgmma_k_major_through_the_interpreter() {
    tma_and_wgmma_through_the_interpreter(false, false);
}

#[test]
fn tma_sw128_and_wgmma_mn_major_b_through_the_interpreter() {
    tma_and_wgmma_through_the_interpreter(true, false);
}

#[test]
fn wgmma_imm_scale_a_minus_one_through_the_interpreter() {
    tma_and_wgmma_through_the_interpreter(false, true);
}
