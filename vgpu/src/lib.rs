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
