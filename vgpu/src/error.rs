//! The emulator's one error type.
//!
//! Run-time faults carry a [`Site`] (kernel, block, thread, PTX line) and print like a
//! compute-sanitizer report, so a failing GPU test names the exact access that went wrong.
//! Plain functions that know no site (the matrix, TMA and mbarrier helpers) return
//! [`Error::Invalid`]; the interpreter wraps those into [`Error::Fault`] with the site it knows.

use std::fmt;

/// Where in a launch something happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub kernel: String,
    pub block: [u32; 3],
    pub thread: [u32; 3],
    /// 1-based line of the instruction in the module's PTX text.
    pub line: u32,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [bx, by, bz] = self.block;
        let [tx, ty, tz] = self.thread;
        write!(f, "kernel `{}`, block ({bx},{by},{bz}), thread ({tx},{ty},{tz}), PTX line {}", self.kernel, self.line)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("PTX parse error at line {line}: {msg}")]
    Parse { line: u32, msg: String },
    #[error("unsupported PTX form `{form}` at line {line}")]
    Unsupported { line: u32, form: String },
    /// An access outside every live allocation, outside shared memory, or misaligned.
    #[error("invalid {space} access: {site}: {msg}")]
    Memory { site: Site, space: &'static str, msg: String },
    /// Two threads touched the same shared bytes, at least one writing, with nothing ordering them.
    #[error("shared-memory race: {site}: {msg}")]
    Race { site: Site, msg: String },
    /// Every live thread of a CTA is blocked.
    #[error("deadlock in kernel `{kernel}`, block ({},{},{}): every live thread is blocked:\n{waits}", block[0], block[1], block[2])]
    Deadlock { kernel: String, block: [u32; 3], waits: String },
    /// A launch configuration the device would refuse.
    #[error("launch of `{kernel}` refused: {msg}")]
    Launch { kernel: String, msg: String },
    /// Barrier misuse: bar.sync counts, mbarrier misuse, warp-collective mask mismatch.
    #[error("barrier misuse: {site}: {msg}")]
    Barrier { site: Site, msg: String },
    /// Other run-time checks: uninitialised shared reads, async-proxy hazards, setmaxnreg, trap.
    #[error("{check}: {site}: {msg}")]
    Fault { site: Site, check: &'static str, msg: String },
    /// Device-memory management (allocation, free, host copies).
    #[error("device memory: {msg}")]
    Alloc { msg: String },
    /// A plain helper got arguments it cannot honour (no site known yet).
    #[error("{what}: {msg}")]
    Invalid { what: &'static str, msg: String },
    /// Settings from the environment.
    #[error("emulator configuration: {msg}")]
    Config { msg: String },
}

impl Error {
    /// Attaches a site to a location-less error from a plain helper.
    pub fn at(self, site: &Site) -> Error {
        match self {
            Error::Invalid { what, msg } => Error::Fault { site: site.clone(), check: what, msg },
            Error::Barrier { site: s, msg } if s.kernel.is_empty() => Error::Barrier { site: site.clone(), msg },
            other => other,
        }
    }
}

impl From<crate::matrix::MatrixError> for Error {
    fn from(e: crate::matrix::MatrixError) -> Error {
        Error::Invalid { what: "tensor-core instruction", msg: e.to_string() }
    }
}

impl From<crate::tma::TmaError> for Error {
    fn from(e: crate::tma::TmaError) -> Error {
        Error::Invalid { what: "TMA", msg: e.to_string() }
    }
}

impl From<crate::mbarrier::MbarrierError> for Error {
    fn from(e: crate::mbarrier::MbarrierError) -> Error {
        Error::Barrier { site: Site { kernel: String::new(), block: [0; 3], thread: [0; 3], line: 0 }, msg: e.to_string() }
    }
}
