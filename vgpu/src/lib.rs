//! vgpu: a functional emulator of the PTX our CUDA kernels compile to.
//!
//! The tensor-core, TMA and mbarrier semantics live in [`matrix`], [`tma`] and [`mbarrier`] as plain
//! functions over plain data; the interpreter calls them from instruction dispatch.

pub mod matrix;
pub mod mbarrier;
pub mod tma;
