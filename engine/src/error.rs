//! The engine's error type. Every failure names the op and what was wrong with its arguments, so a
//! message read in a log without the code beside it still says where to look.

use crate::{DType, Device};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {msg}")]
    Shape { op: &'static str, msg: String },

    #[error("{op}: unsupported dtype {dtype:?}{detail}")]
    DType { op: &'static str, dtype: DType, detail: String },

    #[error("{op}: dtype mismatch: {lhs:?} vs {rhs:?}")]
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },

    #[error("{op}: device mismatch: {lhs} vs {rhs}")]
    DeviceMismatch { op: &'static str, lhs: Device, rhs: Device },

    #[error("{op}: invalid argument: {msg}")]
    Invalid { op: &'static str, msg: String },

    #[error("{op}: index {index} out of range for a dimension of size {size}")]
    IndexOutOfRange { op: &'static str, index: usize, size: usize },

    #[error("CUDA is not available: {0}")]
    NoCuda(String),

    #[error("CUDA out of memory on {device}: asked for {requested} bytes with {in_use} in use and {reserved} reserved")]
    OutOfMemory { device: Device, requested: usize, in_use: usize, reserved: usize },

    #[error("CUDA driver error in {op}: {msg}")]
    Cuda { op: String, msg: String },

    #[error("NVRTC failed to compile {kernel} for {arch}:\n{log}")]
    Compile { kernel: String, arch: String, log: String },

    #[error("{op} is not implemented on {device}")]
    NotImplemented { op: &'static str, device: Device },

    #[error("{context}: {source}")]
    Io { context: String, #[source] source: std::io::Error },

    #[error("out of host memory: cannot allocate {bytes} bytes for {what}")]
    HostOutOfMemory { what: &'static str, bytes: u128 },
}

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid { op, msg: msg.into() }
    }
    pub fn dtype(op: &'static str, dtype: DType) -> Self {
        Error::DType { op, dtype, detail: String::new() }
    }
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}
