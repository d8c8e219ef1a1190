//! mbarrier through `launch`: a producer warp hands shared data to a consumer warp over two
//! phases (the phase parity flips), the wait orders the accesses for the race checker, and a wait
//! nobody completes is reported as a deadlock naming the barrier.

mod common;
use common::{arg, module, store_at_tid, Dev, LANE_WORD_OF_DATA};

fn kernel(consumer_waits: bool, arrive: bool) -> String {
    let wait = if consumer_waits {
        "WAIT:
        mbarrier.try_wait.parity.shared::cta.b64 %p2, [bar], %r9;
        @!%p2 bra WAIT;"
    } else {
        ""
    };
    let arrive = if arrive { "mbarrier.arrive.shared::cta.b64 _, [bar];" } else { "" };
    let store = store_at_tid("%r10");
    module(
        ".param .u64 out",
        &format!(
            ".reg .pred %p<4>; .reg .b32 %r<16>; .reg .b64 %rd<8>;
            .shared .align 8 .b8 bar[8];
            .shared .align 16 .b8 data[128];
            ld.param.u64 %rd1, [out];
            mov.u32 %r1, %tid.x;
            setp.eq.u32 %p1, %r1, 0;
            @%p1 mbarrier.init.shared::cta.b64 [bar], 32;
            bar.sync 0;
            {LANE_WORD_OF_DATA}
        ROUND:
            setp.ge.u32 %p3, %r1, 32;
            @%p3 bra PRODUCER;
            {wait}
            ld.shared.u32 %r5, [%r4];
            add.u32 %r10, %r10, %r5;
            bra.uni NEXT;
        PRODUCER:
            mad.lo.u32 %r6, %r9, 100, %r1;
            st.shared.u32 [%r4], %r6;
            {arrive}
        NEXT:
            bar.sync 0;
            add.u32 %r9, %r9, 1;
            setp.lt.u32 %p3, %r9, 2;
            @%p3 bra ROUND;
            {store}"
        ),
    )
}

fn run(ptx: &str) -> Result<Vec<u32>, String> {
    let dev = Dev::new();
    let out = dev.upload(&[0u32; 64]);
    dev.run(ptx, "k", [1, 1, 1], [64, 1, 1], 0, &[arg(out)]).map_err(|e| e.to_string())?;
    Ok(dev.download(out, 64))
}

#[test]
fn a_consumer_waiting_on_the_mbarrier_sees_each_phase_of_producer_data() {
    let out = run(&kernel(true, true)).unwrap();
    // Consumer lane t read t + 32 (round 0) and 100 + t + 32 (round 1).
    for t in 0..32 {
        assert_eq!(out[t], 2 * (t as u32 + 32) + 100, "lane {t}");
    }
}

#[test]
fn reading_without_the_mbarrier_wait_is_caught() {
    let err = run(&kernel(false, true)).unwrap_err();
    assert!(err.contains("uninitialised shared-memory read") || err.contains("race"), "{err}");
}

#[test]
fn a_wait_no_arrival_completes_is_a_deadlock_naming_the_barrier() {
    let err = run(&kernel(true, false)).unwrap_err();
    assert!(err.contains("deadlock") && err.contains("mbarrier.try_wait.parity") && err.contains("parity 0"), "{err}");
}
