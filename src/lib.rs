//! dsmoe: dense training, sparse inference for Mixture-of-Experts language models, on a
//! from-scratch tensor engine with hand-written CUDA kernels.
//!
//! The crates, bottom up: [`engine`] (tensors, ops, CPU and CUDA backends), [`autograd`] (tape-based
//! reverse mode), [`model`] (DS-MoE, dense and sparse-MoE transformers, training, inference). The
//! `dsmoe` binary is the command line over them.

pub mod perf;

pub use autograd;
pub use engine;
pub use model;
