//! The asynchrony of wgmma as a pipelined kernel sees it (PTX ISA, "asynchronous warpgroup level
//! matrix multiply"): until the `wgmma.wait_group` that retires its group, a wgmma may still read
//! its A fragment registers and its shared-memory operands, so a kernel that refills a fragment, or
//! hands an operand's buffer back to a producer (here through a named barrier, `bar.arrive` /
//! `bar.sync` with a thread count), before that wait is wrong on a GPU and must fail here, although
//! the emulator multiplies at issue. (Touching an accumulator early: tensor_core_ptx.rs.)

mod common;
use common::{arg, module, Dev};

/// 160 threads: a consumer warpgroup (warps 0-3) and a producer warp (warp 4). The warpgroup zeroes
/// a 2 KiB shared tile, then runs one register-A wgmma.m64n8k16 (A = 1.0 everywhere, B = the
/// tile's first 256 bytes, K-major without swizzle) and stores its accumulators; the producer
/// waits on named barrier 1 (all 160 threads: the warpgroup's 128 arrive) and then overwrites the
/// tile's first 512 bytes with ones, its "next stage". `before_wait` and `after_wait` are placed
/// around the warpgroup's `wgmma.wait_group 0`; the release (`bar.arrive 1, 160`) belongs after it.
fn kernel(before_wait: &str, after_wait: &str) -> String {
    let body = format!(
        ".reg .pred %p<4>;
    .reg .pred %ps;
    .reg .b32 %r<40>;
    .reg .f32 %f<4>;
    .reg .b64 %rd<12>;
    .shared .align 1024 .b8 tile[2048];
    ld.param.u64 %rd1, [out];
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, tile;
    setp.lt.u32 %p1, %r1, 128;
    mov.u32 %r5, 0;
    shl.b32 %r3, %r1, 4;
    add.u32 %r4, %r2, %r3;
    @%p1 st.shared.v4.u32 [%r4], {{%r5, %r5, %r5, %r5}};
    fence.proxy.async.shared::cta;
    bar.sync 0;
    @!%p1 bra PRODUCER;
    mov.b32 %r20, 0x3f803f80;
    mov.b32 %r21, 0x3f803f80;
    mov.b32 %r22, 0x3f803f80;
    mov.b32 %r23, 0x3f803f80;
    mov.f32 %f0, 0f00000000;
    mov.f32 %f1, 0f00000000;
    mov.f32 %f2, 0f00000000;
    mov.f32 %f3, 0f00000000;
    shr.u32 %r6, %r2, 4;
    and.b32 %r6, %r6, 16383;
    cvt.u64.u32 %rd5, %r6;
    or.b64 %rd5, %rd5, {high};
    mov.u32 %r7, 1;
    setp.ne.u32 %ps, %r7, 0;
    wgmma.fence.sync.aligned;
    wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {{%f0, %f1, %f2, %f3}}, {{%r20, %r21, %r22, %r23}}, %rd5, %ps, 1, 1, 0;
    wgmma.commit_group.sync.aligned;
    {before_wait}
    wgmma.wait_group.sync.aligned 0;
    {after_wait}
    mul.wide.u32 %rd2, %r1, 16;
    add.s64 %rd3, %rd1, %rd2;
    st.global.v4.f32 [%rd3], {{%f0, %f1, %f2, %f3}};
    ret;
PRODUCER:
    bar.sync 1, 160;
    and.b32 %r8, %r1, 31;
    shl.b32 %r8, %r8, 4;
    add.u32 %r9, %r2, %r8;
    mov.u32 %r10, 0x3f803f80;
    st.shared.v4.u32 [%r9], {{%r10, %r10, %r10, %r10}};
    ret;",
        // No swizzle: the two k8 core matrices 128 bytes apart (LBO), 8-row groups 256 (SBO).
        high = (128u64 >> 4) << 16 | (256u64 >> 4) << 32,
    );
    module(".param .u64 out", &body)
}

fn run(ptx: &str) -> Result<Vec<f32>, String> {
    let dev = Dev::new();
    let out = dev.upload(&[f32::NAN; 128 * 4]);
    dev.run(ptx, "k", [1, 1, 1], [160, 1, 1], 0, &[arg(out)]).map_err(|e| e.to_string())?;
    Ok(dev.download(out, 128 * 4))
}

#[test]
fn releasing_after_the_wait_is_clean_and_computes_on_the_operands_of_issue() {
    let out = run(&kernel("", "bar.arrive 1, 160;")).unwrap();
    assert!(out.iter().all(|&x| x == 0.0), "A·B with B = 0 before the refill: {:?}", &out[..8]);
}

#[test]
fn handing_a_shared_operand_back_before_the_wait_group_is_a_race() {
    let err = run(&kernel("bar.arrive 1, 160;", "")).unwrap_err();
    assert!(err.contains("race"), "{err}");
}

#[test]
fn overwriting_an_a_fragment_before_the_wait_group_is_an_async_hazard() {
    let err = run(&kernel("mov.b32 %r21, 0;", "bar.arrive 1, 160;")).unwrap_err();
    assert!(err.contains("async hazard") && err.contains("A fragment") && err.contains("wgmma.wait_group"), "{err}");
    // Reading one early is the same undefined behaviour.
    let err = run(&kernel("mov.b32 %r30, %r22;", "bar.arrive 1, 160;")).unwrap_err();
    assert!(err.contains("async hazard"), "{err}");
}

#[test]
fn waiting_with_the_group_still_allowed_in_flight_does_not_retire_it() {
    // `wait_group 1` with only this group committed leaves it in flight: the release after it is
    // still too early, and reading the accumulators after it is an async hazard.
    let err = run(&kernel("", "").replace("wgmma.wait_group.sync.aligned 0;", "wgmma.wait_group.sync.aligned 1;\n    bar.arrive 1, 160;")).unwrap_err();
    assert!(err.contains("race") || err.contains("async hazard"), "{err}");
}
