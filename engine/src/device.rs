//! Where a tensor lives. The CPU always exists; a CUDA device exists when the driver library loads
//! and reports a GPU. Asking never panics on a machine without CUDA: it answers "none".

use crate::{cuda, Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl Device {
    /// The first CUDA device if one is usable, else the CPU.
    pub fn cuda_if_available() -> Device {
        if cuda::device_count() > 0 {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }
    }

    /// Parses `auto`, `cpu`, `cuda`, `cuda:N` or `emu`; `cuda` on a machine without a GPU is an
    /// error that says why CUDA is unavailable. `emu` selects the emulated GPU (the `vgpu` crate,
    /// behind the CUDA driver API; see cuda/driver_lib.rs) and is then `cuda:0`; it must come
    /// before any other CUDA use in the process.
    pub fn parse(s: &str) -> Result<Device> {
        match s {
            "auto" => Ok(Device::cuda_if_available()),
            "cpu" => Ok(Device::Cpu),
            "emu" => {
                cuda::select_emulator().map_err(Error::NoCuda)?;
                Device::parse("cuda:0")
            }
            _ => {
                let ordinal = match s.strip_prefix("cuda") {
                    Some("") => 0,
                    Some(rest) => rest
                        .strip_prefix(':')
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| Error::invalid("device", format!("cannot parse device {s:?}: expected auto, cpu, cuda, cuda:N or emu")))?,
                    None => return Err(Error::invalid("device", format!("unknown device {s:?}: expected auto, cpu, cuda, cuda:N or emu"))),
                };
                let count = cuda::device_count();
                if ordinal >= count {
                    return Err(Error::NoCuda(match cuda::unavailable_reason() {
                        Some(why) => why,
                        None => format!("asked for cuda:{ordinal} but {count} CUDA device(s) are present"),
                    }));
                }
                Ok(Device::Cuda(ordinal))
            }
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
