//! DS-MoE, dense and sparse-MoE transformers on the dsmoe engine.

pub mod checkpoint;
pub mod data;
mod error;
pub mod metrics;

pub use error::{Error, Result};
