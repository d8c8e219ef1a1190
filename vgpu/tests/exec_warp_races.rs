//! Races between the lanes of one warp (independent thread scheduling, Volta+): two lanes of a
//! warp touching the same shared bytes in different instructions, at least one writing, race
//! unless `__syncwarp` (bar.warp.sync), a warp collective or a barrier orders them. Each case runs
//! a kernel with the bug and the same kernel with its fix, so the check is seen both firing and
//! staying quiet; the idioms that are not races (lanes of one instruction, atomics, shfl-based
//! hand-offs) stay quiet.

mod common;
use common::{arg, out_kernel, store_at_tid, Dev};

fn run(body: &str) -> Result<Vec<u32>, String> {
    let store = store_at_tid("%r20");
    let ptx = out_kernel(&format!(
        ".shared .align 16 .b8 sm[256];
        mov.u32 %r2, sm;
        shl.b32 %r3, %r1, 2;
        add.u32 %r4, %r2, %r3;
        {body}
        {store}"
    ));
    let dev = Dev::new();
    let out = dev.upload(&[0u32; 32]);
    dev.run(&ptx, "k", [1, 1, 1], [32, 1, 1], 0, &[arg(out)]).map_err(|e| e.to_string())?;
    Ok(dev.download(out, 32))
}

/// Lane 0 publishes a word; every lane then reads it, with `sync` in between.
fn broadcast(sync: &str) -> String {
    format!(
        "setp.eq.u32 %p1, %r1, 0;
        @!%p1 bra SKIP;
        st.shared.u32 [%r2], 77;
    SKIP:
        {sync}
        ld.shared.u32 %r20, [%r2];"
    )
}

#[test]
fn a_broadcast_through_shared_memory_needs_a_syncwarp() {
    let err = run(&broadcast("")).unwrap_err();
    assert!(err.contains("race") && err.contains("same warp") && err.contains("lane 0"), "{err}");
    assert_eq!(run(&broadcast("bar.warp.sync -1;")).unwrap(), vec![77; 32]);
    // A warp collective meets the lanes too (the shfl-based hand-off idiom).
    assert_eq!(run(&broadcast("shfl.sync.idx.b32 %r9, %r1, 0, 31, -1;")).unwrap(), vec![77; 32]);
    // So does a CTA barrier.
    assert_eq!(run(&broadcast("bar.sync 0;")).unwrap(), vec![77; 32]);
}

/// A tree reduction of 32 words in shared memory: at each step the lower half adds the word
/// `offset` above it, which the upper lanes wrote in the step before; `sync` between steps.
fn tree_sum(sync: &str) -> String {
    format!(
        "st.shared.u32 [%r4], %r1;
        {sync}
        mov.u32 %r10, 16;
    STEP:
        setp.ge.u32 %p2, %r1, %r10;
        @%p2 bra DONE_STEP;
        shl.b32 %r11, %r10, 2;
        add.u32 %r12, %r4, %r11;
        ld.shared.u32 %r13, [%r12];
        ld.shared.u32 %r14, [%r4];
        add.u32 %r14, %r14, %r13;
        st.shared.u32 [%r4], %r14;
    DONE_STEP:
        {sync}
        shr.u32 %r10, %r10, 1;
        setp.ne.u32 %p3, %r10, 0;
        @%p3 bra STEP;
        ld.shared.u32 %r20, [%r2];"
    )
}

#[test]
fn a_warp_reduction_in_shared_memory_without_syncwarp_races() {
    let err = run(&tree_sum("")).unwrap_err();
    assert!(err.contains("race") && err.contains("same warp"), "{err}");
    assert_eq!(run(&tree_sum("bar.warp.sync -1;")).unwrap(), vec![(0..32).sum::<u32>(); 32]);
}

#[test]
fn lanes_of_one_instruction_and_atomics_do_not_race() {
    // Every lane stores to the same word in one instruction (one store wins), then lane-by-lane
    // atomics on another word from diverged lanes, then a synchronised read.
    let out = run(
        "st.shared.u32 [%r2], %r1;
        and.b32 %r5, %r1, 1;
        setp.eq.u32 %p1, %r5, 0;
        add.u32 %r6, %r2, 4;
        st.shared.u32 [%r6], 0;
        bar.warp.sync -1;
        @%p1 bra EVEN;
        atom.shared.add.u32 %r7, [%r6], 1;
        bra.uni JOIN;
    EVEN:
        atom.shared.add.u32 %r7, [%r6], 1;
    JOIN:
        bar.warp.sync -1;
        ld.shared.u32 %r20, [%r6];",
    )
    .unwrap();
    assert_eq!(out, vec![32; 32]);
}

#[test]
fn each_lane_reusing_its_own_word_is_not_a_race() {
    // Per-lane scratch: a lane's own accesses are in program order.
    let out = run(
        "st.shared.u32 [%r4], %r1;
        ld.shared.u32 %r5, [%r4];
        add.u32 %r5, %r5, 1;
        st.shared.u32 [%r4], %r5;
        ld.shared.u32 %r20, [%r4];",
    )
    .unwrap();
    assert_eq!(out, (1..=32).collect::<Vec<u32>>());
}
