//! Each sanitizer check fires on a kernel that breaks its rule (and stays quiet on the corrected
//! kernel), and barriers behave as the PTX ISA says: counts, named barriers, deadlocks.

mod common;
use common::{arg, module, Dev};

const REGS: &str = ".reg .pred %p<8>; .reg .b32 %r<32>; .reg .f32 %f<16>; .reg .b64 %rd<16>;";

/// A kernel over `block` threads with a 1 KiB static shared array `sm` and one u64 parameter.
fn run(body: &str, block: u32) -> Result<(), String> {
    let ptx = module(".param .u64 out", &format!("{REGS}\n.shared .align 16 .b8 sm[1024];\n{body}\nret;"));
    let dev = Dev::new();
    let out = dev.upload(&[0u32; 64]);
    dev.run(&ptx, "k", [1, 1, 1], [block, 1, 1], 0, &[arg(out)]).map(|_| ()).map_err(|e| e.to_string())
}

const TID4: &str = "mov.u32 %r1, %tid.x; shl.b32 %r2, %r1, 2; mov.u32 %r3, sm; add.u32 %r4, %r3, %r2;";

#[test]
fn shared_write_then_read_by_another_warp_needs_a_barrier() {
    // Thread t writes sm[t]; threads of warp 1 then read sm[t - 32], written by warp 0. (Warp 0
    // runs first, so without the barrier warp 1 finds the data written but unordered.)
    let body = |sync: &str| {
        format!(
            "{TID4}
            st.shared.u32 [%r4], %r1;
            {sync}
            setp.ge.u32 %p1, %r1, 32;
            @%p1 ld.shared.u32 %r6, [%r4+-128];"
        )
    };
    let err = run(&body(""), 64).unwrap_err();
    assert!(err.contains("shared-memory race") && err.contains("races with a write by warp 0") && err.contains("thread (32,0,0)"), "{err}");
    run(&body("bar.sync 0;"), 64).unwrap();
}

#[test]
fn overwriting_shared_data_another_warp_still_reads_is_a_race() {
    // Warp 1 reads sm[0] after the barrier, warp 0 overwrites it with no second barrier.
    let body = |sync: &str| {
        format!(
            "{TID4}
            st.shared.u32 [%r4], %r1;
            bar.sync 0;
            setp.ge.u32 %p1, %r1, 32;
            @%p1 ld.shared.u32 %r6, [%r3];
            {sync}
            setp.eq.u32 %p2, %r1, 0;
            @%p2 st.shared.u32 [%r3], %r1;"
        )
    };
    let err = run(&body(""), 64).unwrap_err();
    assert!(err.contains("races with a read"), "{err}");
    run(&body("bar.sync 0;"), 64).unwrap();
}

#[test]
fn reading_never_written_shared_memory_is_reported() {
    let err = run(&format!("{TID4} ld.shared.u32 %r6, [%r4];"), 32).unwrap_err();
    assert!(err.contains("uninitialised shared-memory read") && err.contains("nothing has written"), "{err}");
}

#[test]
fn shared_access_past_the_static_size_is_reported() {
    let err = run(&format!("{TID4} add.u32 %r4, %r4, 1020; st.shared.u32 [%r4], %r1;"), 2).unwrap_err();
    assert!(err.contains("invalid shared access") && err.contains("outside the CTA's 1024 bytes"), "{err}");
}

#[test]
fn misaligned_vector_access_is_reported() {
    let err = run(&format!("{TID4} add.u32 %r4, %r4, 8; st.shared.v4.u32 [%r4], {{%r1, %r1, %r1, %r1}};"), 1).unwrap_err();
    assert!(err.contains("misaligned 16-byte access"), "{err}");
}

#[test]
fn reading_a_cp_async_destination_before_its_wait_is_an_async_hazard() {
    // Copy 16 bytes of `out` into sm (the second copy with src-size 0: zero fill, no read).
    let body = |wait: &str| {
        format!(
            "ld.param.u64 %rd1, [out];
            mov.u32 %r3, sm;
            cp.async.cg.shared.global [%r3], [%rd1], 16, 16;
            add.u32 %r5, %r3, 16;
            cp.async.cg.shared.global [%r5], [%rd1+4096], 16, 0;
            cp.async.commit_group;
            {wait}
            ld.shared.v4.u32 {{%r6, %r7, %r8, %r9}}, [%r5];"
        )
    };
    let err = run(&body(""), 1).unwrap_err();
    assert!(err.contains("async-proxy hazard") && err.contains("cp.async"), "{err}");
    run(&body("cp.async.wait_group 0;"), 1).unwrap();
}

#[test]
fn a_barrier_with_a_thread_count_completes_without_the_other_warps() {
    // Warps 0 and 1 meet at named barrier 1 (64 threads); warp 2 never does.
    run(
        "mov.u32 %r1, %tid.x;
        setp.ge.u32 %p1, %r1, 64;
        @%p1 bra SKIP;
        bar.sync 1, 64;
    SKIP:",
        96,
    )
    .unwrap();
}

#[test]
fn a_barrier_nobody_completes_is_a_deadlock_naming_where_each_warp_waits() {
    let err = run(
        "mov.u32 %r1, %tid.x;
        setp.ge.u32 %p1, %r1, 64;
        @%p1 bra SKIP;
        bar.sync 1, 96;
    SKIP:",
        96,
    )
    .unwrap_err();
    assert!(err.contains("deadlock") && err.contains("warp 0") && err.contains("bar.sync 1 (64 of 96 threads arrived)"), "{err}");
}

#[test]
fn a_warp_collective_with_missing_member_lanes_is_an_error() {
    let err = run(
        "mov.u32 %r1, %tid.x;
        setp.ge.u32 %p1, %r1, 16;
        @%p1 bra SKIP;
        shfl.sync.bfly.b32 %r2, %r1, 1, 31, -1;
    SKIP:",
        32,
    )
    .unwrap_err();
    assert!(err.contains("warp collective") && err.contains("0x0000ffff"), "{err}");
}

#[test]
fn trap_is_reported_with_its_thread() {
    let err = run("mov.u32 %r1, %tid.x; setp.eq.u32 %p1, %r1, 5; @%p1 trap;", 32).unwrap_err();
    assert!(err.contains("trap") && err.contains("thread (5,0,0)"), "{err}");
}

fn setmaxnreg_kernel(inc: u32) -> String {
    // 3 warpgroups (384 threads, .maxntid 384: 168 registers each): the first gives registers
    // back, the other two take them, as the Hopper GEMM does.
    format!(
        ".version 8.0\n.target sm_90a\n.address_size 64\n.visible .entry k() .maxntid 384, 1, 1\n{{\n.reg .pred %p<2>; .reg .b32 %r<400>;\n
        mov.u32 %r1, %tid.x;
        setp.lt.u32 %p1, %r1, 128;
        @%p1 bra PRODUCER;
        setmaxnreg.inc.sync.aligned.u32 {inc};
        bra.uni END;
    PRODUCER:
        setmaxnreg.dec.sync.aligned.u32 40;
    END:
        ret;\n}}\n"
    )
}

#[test]
fn setmaxnreg_must_fit_the_register_file_the_block_was_launched_with() {
    let dev = Dev::new();
    let k = |inc| dev.run(&setmaxnreg_kernel(inc), "k", [1, 1, 1], [384, 1, 1], 0, &[]);
    k(232).unwrap();
    let err = k(240).unwrap_err().to_string();
    assert!(err.contains("deadlock") && err.contains("setmaxnreg.inc to 240"), "{err}");
}

#[test]
fn launches_beyond_the_device_limits_are_refused() {
    let dev = Dev::new();
    let ptx = module(".param .u64 out", "ret;");
    let err = dev.run(&ptx, "k", [1, 1, 1], [2048, 1, 1], 0, &[arg(0u64)]).unwrap_err().to_string();
    assert!(err.contains("2048 threads"), "{err}");
    let err = dev.run(&ptx, "k", [1, 1, 1], [32, 1, 1], 300 * 1024, &[arg(0u64)]).unwrap_err().to_string();
    assert!(err.contains("shared memory"), "{err}");
    let err = dev.run(&setmaxnreg_kernel(232), "k", [1, 1, 1], [416, 1, 1], 0, &[]).unwrap_err().to_string();
    assert!(err.contains(".maxntid of 384"), "{err}");
}

#[test]
fn global_atomics_from_parallel_ctas_add_up() {
    let ptx = module(
        ".param .u64 out",
        &format!("{REGS} ld.param.u64 %rd1, [out]; atom.global.add.f32 %f1, [%rd1], 0f3F800000; red.global.add.u32 [%rd1+4], 2; ret;"),
    );
    let dev = Dev::new();
    let out = dev.upload(&[0u32; 2]);
    dev.run(&ptx, "k", [64, 1, 1], [128, 1, 1], 0, &[arg(out)]).unwrap();
    let v: Vec<u32> = dev.download(out, 2);
    assert_eq!((f32::from_bits(v[0]), v[1]), (8192.0, 16384));
}
