//! Known-answer tests, from the PTX ISA, of the synchronisation forms beyond `bar.sync` and the
//! parity waits: `bar.arrive` (named barriers for producer/consumer hand-offs: the arriving
//! threads do not wait; the barrier completes when the count has arrived, releasing the threads
//! in `bar.sync`) and mbarrier waits on the state token of an arrive (`try_wait` / `test_wait`
//! complete once the phase the token was taken in has completed).

mod common;
use common::{arg, out_kernel, store_at_tid, Dev, LANE_WORD_OF_DATA};

/// Warp 0 consumes what warp 1 produces, `rounds` times, through one shared buffer guarded by
/// named barrier 1 ("full": producer arrives, consumer syncs) and 2 ("empty": consumer arrives,
/// producer syncs before overwriting). `wait_empty = false` drops the producer's wait.
fn producer_consumer(wait_empty: bool) -> String {
    let wait = if wait_empty { "@%p4 bar.sync 2, 64;" } else { "" };
    let store = store_at_tid("%r10");
    out_kernel(&format!(
        ".shared .align 16 .b8 data[128];
            {LANE_WORD_OF_DATA}
            setp.ge.u32 %p1, %r1, 32;
        ROUND:
            setp.ne.u32 %p4, %r9, 0;
            setp.lt.u32 %p5, %r9, 2;
            @%p1 bra PRODUCER;
            bar.sync 1, 64;
            ld.shared.u32 %r5, [%r4];
            add.u32 %r10, %r10, %r5;
            @%p5 bar.arrive 2, 64;
            bra.uni NEXT;
        PRODUCER:
            {wait}
            mad.lo.u32 %r6, %r9, 100, %r2;
            st.shared.u32 [%r4], %r6;
            bar.arrive 1, 64;
        NEXT:
            add.u32 %r9, %r9, 1;
            setp.lt.u32 %p3, %r9, 3;
            @%p3 bra ROUND;
            {store}"
    ))
}

fn run(ptx: &str, threads: u32) -> Result<Vec<u32>, String> {
    let dev = Dev::new();
    let out = dev.upload(&vec![0u32; threads as usize]);
    dev.run(ptx, "k", [1, 1, 1], [threads, 1, 1], 0, &[arg(out)]).map_err(|e| e.to_string())?;
    Ok(dev.download(out, threads as usize))
}

#[test]
fn bar_arrive_hands_each_round_to_the_threads_in_bar_sync() {
    let out = run(&producer_consumer(true), 64).unwrap();
    for lane in 0..32u32 {
        // Rounds 0, 1, 2 wrote lane, 100 + lane, 200 + lane.
        assert_eq!(out[lane as usize], 300 + 3 * lane, "consumer lane {lane}");
    }
}

#[test]
fn a_producer_that_does_not_wait_for_the_empty_barrier_races_with_the_consumer() {
    let err = run(&producer_consumer(false), 64).unwrap_err();
    assert!(err.contains("race"), "{err}");
}

#[test]
fn bar_arrive_needs_a_thread_count() {
    let err = run(&out_kernel("bar.arrive 1;\nret;"), 32).unwrap_err();
    assert!(err.contains("bar.arrive"), "{err}");
}

/// Every thread stores its word, arrives on an mbarrier expecting all 64 threads and keeps the
/// state token, waits on that token (`try_wait` or a `test_wait` loop), then reads the word of the
/// thread 32 places on (the other warp). `arrivals` is the count the barrier is initialised with.
fn token_kernel(test_wait: bool, arrivals: u32) -> String {
    let store = store_at_tid("%r9");
    let wait = if test_wait { "mbarrier.test_wait.shared::cta.b64 %p2, [bar], %rd5;" } else { "mbarrier.try_wait.shared::cta.b64 %p2, [bar], %rd5;" };
    out_kernel(&format!(
        ".shared .align 8 .b8 bar[8];
            .shared .align 16 .b8 data[256];
            setp.eq.u32 %p1, %r1, 0;
            @%p1 mbarrier.init.shared::cta.b64 [bar], {arrivals};
            bar.sync 0;
            shl.b32 %r3, %r1, 2;
            mov.u32 %r4, data;
            add.u32 %r5, %r4, %r3;
            mul.lo.u32 %r6, %r1, 7;
            st.shared.u32 [%r5], %r6;
            mbarrier.arrive.shared::cta.b64 %rd5, [bar];
        WAIT:
            {wait}
            @!%p2 bra WAIT;
            add.u32 %r7, %r1, 32;
            and.b32 %r7, %r7, 63;
            shl.b32 %r7, %r7, 2;
            add.u32 %r8, %r4, %r7;
            ld.shared.u32 %r9, [%r8];
            {store}"
    ))
}

#[test]
fn waits_on_a_state_token_complete_with_the_phase_of_the_arrive() {
    for test_wait in [false, true] {
        let out = run(&token_kernel(test_wait, 64), 64).unwrap();
        for t in 0..64u32 {
            assert_eq!(out[t as usize], ((t + 32) % 64) * 7, "thread {t} (test_wait {test_wait})");
        }
    }
}

#[test]
fn a_token_whose_phase_never_completes_is_a_deadlock_naming_the_token() {
    // 65 arrivals expected, 64 threads: the phase of every token stays open.
    let err = run(&token_kernel(false, 65), 64).unwrap_err();
    assert!(err.contains("deadlock") && err.contains("state token"), "{err}");
}
