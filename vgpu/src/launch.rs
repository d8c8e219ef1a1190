//! The launch API: validate a configuration against the device limits, then run the grid.

use crate::{DeviceConfig, Error, GlobalMemory, Kernel};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_smem: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaunchStats {
    /// Warp-instructions executed (one per decoded instruction per converged lane group).
    pub instructions: u64,
    pub ctas: u64,
}

/// Runs the whole grid to completion. `args[i]` holds exactly `kernel.params()[i].size` bytes.
pub fn launch(dev: &DeviceConfig, mem: &GlobalMemory, kernel: &Kernel, cfg: &LaunchConfig, args: &[&[u8]]) -> Result<LaunchStats, Error> {
    crate::exec::run_grid(dev, mem, kernel, cfg, args)
}
