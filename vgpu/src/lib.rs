//! vgpu: a functional emulator of the NVIDIA PTX virtual machine (sm_80 and sm_90a), with
//! compute-sanitizer-style checks, so every dsmoe CUDA kernel runs on the CPU.
//!
//! Pipeline: [`Module::parse`] reads the PTX NVRTC emits into pre-decoded instructions (no string
//! matching at run time; `ptx/`), [`launch`] runs a grid to completion (`exec/`): each CTA's warps
//! are scheduled cooperatively on one host thread, CTAs run in parallel under rayon. Each warp
//! executes one decoded instruction for all its converged lanes at once; threads keep independent
//! program counters (the Volta+ model) and the scheduler runs the lowest-PC group of a warp, so
//! diverged lanes reconverge where their paths meet and warp collectives find their member lanes.
//! Memory lives in [`GlobalMemory`] (device address = host address) and in per-CTA shared memory,
//! with bounds, alignment, initialisation, race and async-proxy checks on by default.
//!
//! The tensor-core and async-copy data movement (ldmatrix, mma.sync, wgmma, TMA tiles, mbarrier
//! state) are plain functions in `matrix/`, `tma/` and `mbarrier.rs`, called from the dispatch.
//!
//! Settings ([`DeviceConfig::from_env`]): `DSMOE_EMU_ARCH` (sm_90a | sm_80), `DSMOE_EMU_SMS`,
//! `DSMOE_EMU_CHECKS=0` (bounds checks stay on; shadow checks off).
//!
//! Modelling choices a kernel author should know:
//! - Asynchronous operations complete when issued: a TMA box lands (and completes its bytes on the
//!   mbarrier) at `cp.async.bulk.tensor`, a cp.async copy at issue, a wgmma when the fourth warp of
//!   its warpgroup reaches it. Their destinations stay *pending* for the checks until the wait that
//!   covers them (`cp.async.wait_group`, the mbarrier wait), so reading early is still reported,
//!   and so is touching a wgmma accumulator or A-fragment register before the `wgmma.wait_group`
//!   that retires its group; a wgmma's shared operands count as read again at that wait, so
//!   handing their buffer to a producer before it is a race (`exec/accum.rs`).
//! - The race checker orders warps (vector clocks over bar.sync, bar.arrive, mbarrier
//!   arrive/wait) and the lanes of one warp (independent thread scheduling: ordered by
//!   `bar.warp.sync`, a warp collective or a barrier, never by running converged; the lanes of
//!   one instruction do not race with each other, nor atomics with anything). Each byte keeps one
//!   last reader, so it can miss a race but does not invent one.
//! - CTAs run to completion independently: a kernel whose CTAs wait on each other deadlocks.
//! - Registers start with whatever the reused register file holds (as on a GPU), not zero.
//! - Half-precision arithmetic (f16, bf16 and the packed x2 forms) rounds once, to nearest even
//!   (`exec/half.rs`).
//! - Not implemented (an `Unsupported` error naming the form and line): `call` (non-inlined device
//!   functions), `min`/`max` `.xorsign.abs`, clusters beyond one CTA.

mod device;
mod error;
mod exec;
mod ir;
mod launch;
pub mod matrix;
pub mod mbarrier;
mod memory;
mod module;
mod ptx;
pub mod tma;

pub use device::{Arch, DeviceConfig, Limits};
pub use error::{Error, Site};
pub use launch::{launch, LaunchConfig, LaunchStats};
pub use memory::{Allocations, GlobalMemory};
pub use module::{Kernel, Module, ParamInfo};
