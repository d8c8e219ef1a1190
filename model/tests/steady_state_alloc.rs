//! With the host pool as the process allocator, a CPU training step in steady state (after the
//! first steps have sized every buffer) takes every large block from the pool: no allocation
//! reaches the OS. Its own test binary, so no other test's allocations run alongside.
//!
//! "Steady state" needs many steps, not one: which rayon worker runs which product varies from
//! step to step, so the per-thread buffers (the `gemm` crate's workspaces, the ops' scratch rows)
//! and the number of blocks of one size alive at once reach their peaks over the first steps. On a
//! loaded machine a rare interleaving (a worker stealing a second task while its first one's
//! blocks are alive) raised one size class's peak by three blocks after 8 warm-up steps, in about
//! one run in ten; 150 warm-up steps (a few seconds at this size) give that interleaving time to
//! happen before the measured steps.

mod common;

use engine::cpu::pool::{self, HostPool};
use engine::{DType, Device};
use model::config::presets;
use model::run::{open_corpus, TrainingRun};

use common::Scratch;

#[global_allocator]
static ALLOC: HostPool = HostPool;

/// Steps before the measured ones (see the module comment for why so many).
const WARM_UP_STEPS: usize = 150;

#[test]
fn steady_state_training_steps_allocate_nothing_from_the_os() {
    let mut c = presets::load("ds-moe-tiny").unwrap();
    c.model.d_model = 64;
    c.model.n_layers = 2;
    c.model.mlp.expert_width = 32;
    c.train.batch_size = 4;
    c.train.seq_len = 64;
    c.model.max_seq_len = 64;
    // Far from the last step, which evaluates and writes a checkpoint.
    c.train.steps = 1000;
    c.train.warmup_steps = 2;
    // No evaluation or checkpoint inside the measured steps.
    c.train.eval_interval = 1000;
    c.train.checkpoint_interval = 1000;
    let scratch = Scratch::new("steady-alloc");
    let mut run = TrainingRun::start(c, open_corpus(None).unwrap(), &scratch.0, &Device::Cpu, DType::F32).unwrap();
    for _ in 0..WARM_UP_STEPS {
        run.step().unwrap();
    }
    let before = pool::stats();
    for _ in 0..4 {
        run.step().unwrap();
    }
    let after = pool::stats();
    assert!(before.os_allocations > 0, "the pool is not the process allocator: {before:?}");
    assert!(after.pool_hits > before.pool_hits + 100, "steady-state steps made few pooled allocations: {before:?} -> {after:?}");
    assert_eq!(after.os_allocations, before.os_allocations, "steady-state steps went to the OS: {before:?} -> {after:?}");
}
