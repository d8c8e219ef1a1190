//! dsmoe's tensor engine: `Tensor` values on the CPU or a CUDA device, the op set the models need
//! (`ops`), a CPU reference backend that runs anywhere, and a CUDA backend over the driver API with
//! kernels compiled at run time by NVRTC. See `../shared/docs/design.md` for the architecture.

pub mod backend;
pub mod comm;
mod compare;
pub mod cpu;
pub mod cuda;
mod device;
mod dtype;
mod error;
pub mod ops;
mod rng;
mod shape;
mod storage;
mod tensor;

pub use backend::{AdamW, AttentionDims, BinaryOp, GemmForm, GemmLayout, GroupedLayout, MatmulLayout, MoeDenseDims, ReduceOp, ScalarOp, UnaryOp};
pub use compare::relative_error;
pub use device::Device;
pub use dtype::{DType, WithDType};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use rng::Rng;
pub use shape::Shape;
pub use storage::{CpuStorage, Storage};
pub use tensor::Tensor;
