//! DS-MoE, dense and sparse-MoE transformers on the dsmoe engine: configs, layers, losses,
//! training, sparse inference, checkpoints and data.

mod attention;
pub mod checkpoint;
pub mod comm_model;
pub mod config;
pub mod count;
mod ctx;
pub mod data;
mod error;
pub mod expert_dispatch;
pub mod expert_parallel;
pub mod files;
pub mod eval;
pub mod generate;
pub mod grad_buckets;
pub mod infer;
mod losses;
pub mod memory;
pub mod optim;
pub mod parallel;
pub mod train;
pub mod metrics;
mod mlp;
mod params;
pub mod router;
pub mod run;
pub mod run_lock;
pub mod top2gate;
mod transformer;

pub use attention::{causal_heads, AttentionPath};
pub use config::{Config, Family, ModelConfig, TrainConfig};
pub use ctx::Ctx;
pub use error::{Error, Result};
pub use mlp::Routing;
pub use params::{ParamId, Params};
pub use router::Selection;
pub use transformer::{Forward, InferenceMode, LayerStats, Model, ParamCounts};
