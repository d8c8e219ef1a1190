//! Small hand-written kernels run through `vgpu::launch`: indexing, control flow, barriers,
//! shuffles (semantics from the PTX ISA).

mod common;
use common::{arg, module, Dev};

const REGS: &str = ".reg .pred %p<8>; .reg .b32 %r<32>; .reg .f32 %f<16>; .reg .b64 %rd<16>;";

#[test]
fn axpy_over_a_ragged_grid() {
    let ptx = module(
        ".param .u64 x, .param .u64 y, .param .f32 a, .param .u32 n",
        &format!(
            "{REGS}
            ld.param.u64 %rd1, [x];
            ld.param.u64 %rd2, [y];
            ld.param.f32 %f1, [a];
            ld.param.u32 %r1, [n];
            mov.u32 %r2, %ctaid.x;
            mov.u32 %r3, %ntid.x;
            mov.u32 %r4, %tid.x;
            mad.lo.s32 %r5, %r2, %r3, %r4;
            setp.ge.u32 %p1, %r5, %r1;
            @%p1 bra DONE;
            mul.wide.u32 %rd3, %r5, 4;
            add.s64 %rd4, %rd1, %rd3;
            add.s64 %rd5, %rd2, %rd3;
            ld.global.f32 %f2, [%rd4];
            ld.global.f32 %f3, [%rd5];
            fma.rn.f32 %f3, %f1, %f2, %f3;
            st.global.f32 [%rd5], %f3;
        DONE:
            ret;"
        ),
    );
    let dev = Dev::new();
    let n = 1000usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let y: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
    let (dx, dy) = (dev.upload(&x), dev.upload(&y));
    let stats = dev.run(&ptx, "k", [8, 1, 1], [128, 1, 1], 0, &[arg(dx), arg(dy), arg(3.0f32), arg(n as u32)]).unwrap();
    let out: Vec<f32> = dev.download(dy, n);
    for i in 0..n {
        assert_eq!(out[i], 3.0f32.mul_add(x[i], y[i]), "element {i}");
    }
    assert_eq!(stats.ctas, 8);
    assert!(stats.instructions > 0);
}

#[test]
fn out_of_bounds_global_store_is_reported_with_the_nearest_allocation() {
    let ptx = module(
        ".param .u64 y",
        &format!(
            "{REGS}
            ld.param.u64 %rd1, [y];
            mov.u32 %r1, %tid.x;
            mul.wide.u32 %rd2, %r1, 4;
            add.s64 %rd3, %rd1, %rd2;
            st.global.u32 [%rd3], %r1;
            ret;"
        ),
    );
    let dev = Dev::new();
    let y = dev.upload(&[0u32; 31]);
    let err = dev.run(&ptx, "k", [1, 1, 1], [32, 1, 1], 0, &[arg(y)]).unwrap_err().to_string();
    assert!(err.contains("thread (31,0,0)") && err.contains("PTX line 12") && err.contains("past the end"), "{err}");
}

#[test]
fn local_frames_are_per_thread_through_local_and_generic_addresses() {
    // NVRTC's spill pattern: a `.local` depot, its generic address through `cvta.local`, stores by
    // `st.local` and loads through the generic window; every thread must see only its own frame.
    let ptx = module(
        ".param .u64 y",
        &format!(
            "{REGS}
            .local .align 16 .b8 depot[64];
            .reg .b64 %SP;
            .reg .b64 %SPL;
            mov.u64 %SPL, depot;
            cvta.local.u64 %SP, %SPL;
            ld.param.u64 %rd1, [y];
            mov.u32 %r1, %tid.x;
            st.local.u32 [%SPL+60], %r1;
            add.s64 %rd2, %SP, 60;
            bar.sync 0;
            ld.u32 %r2, [%rd2];
            mul.wide.u32 %rd3, %r1, 4;
            add.s64 %rd4, %rd1, %rd3;
            st.global.u32 [%rd4], %r2;
            bar.sync 0;
            ld.local.u32 %r3, [%SPL+64];
            ret;"
        ),
    );
    let dev = Dev::new();
    let y = dev.upload(&[0u32; 64]);
    let err = dev.run(&ptx, "k", [1, 1, 1], [64, 1, 1], 0, &[arg(y)]).unwrap_err().to_string();
    let out: Vec<u32> = dev.download(y, 64);
    assert_eq!(out, (0..64).collect::<Vec<u32>>());
    assert!(err.contains("local frame"), "an access past the frame is reported: {err}");
}
