//! The `dsmoe` command line: train a model, evaluate it densely and sparsely, sample from it, and
//! inspect configs. `dsmoe train` with no arguments is the README's main job: the tiny DS-MoE on
//! the bundled Shakespeare corpus, on a GPU when one is present.

mod cli;
mod commands;

use clap::Parser;

/// CPU tensors recycle their buffers through the engine's host pool, so steady-state training makes
/// no allocation from the OS (engine/src/cpu/pool.rs; counters in `--profile`).
#[global_allocator]
static ALLOC: engine::cpu::pool::HostPool = engine::cpu::pool::HostPool;

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    if args.profile {
        // Read once, on the first kernel launch, which has not happened yet: nothing else runs.
        std::env::set_var("DSMOE_PROFILE", "1");
    }
    // With DSMOE_PROFILE=1 the engine prints its per-kernel (CUDA) and per-op (CPU) tables when the
    // process exits.
    match commands::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
