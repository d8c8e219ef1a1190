//! The emulated device: architecture, SM count, checks, and the limits the real GPUs report.

use crate::Error;

/// Compute capability of the emulated GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Ampere A100: compute capability 8.0.
    Sm80,
    /// Hopper H100/H200 with the arch-specific features (wgmma, TMA, setmaxnreg): 9.0.
    Sm90a,
}

impl Arch {
    pub fn compute_capability(self) -> (u32, u32) {
        match self {
            Arch::Sm80 => (8, 0),
            Arch::Sm90a => (9, 0),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90a => "sm_90a",
        }
    }

    /// The device limits as `cuDeviceGetAttribute` reports them on an A100 / H100.
    pub fn limits(self) -> Limits {
        let (max_smem_optin, smem_per_sm) = match self {
            Arch::Sm80 => (166_912, 167_936),
            Arch::Sm90a => (232_448, 233_472),
        };
        Limits {
            max_threads_per_block: 1024,
            max_block_dim: [1024, 1024, 64],
            max_grid_dim: [i32::MAX as u32, 65_535, 65_535],
            max_static_smem_per_block: 48 * 1024,
            max_dyn_smem_per_block: max_smem_optin,
            smem_per_sm,
            regs_per_sm: 65_536,
            regs_per_block: 65_536,
            max_regs_per_thread: 255,
            max_threads_per_sm: 2048,
            warp_size: 32,
        }
    }
}

/// Per-device limits (the values of the matching `CU_DEVICE_ATTRIBUTE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_threads_per_block: u32,
    pub max_block_dim: [u32; 3],
    pub max_grid_dim: [u32; 3],
    /// Static `.shared` a kernel may declare.
    pub max_static_smem_per_block: u32,
    /// Static + dynamic shared memory per block after opting in (`..._PER_BLOCK_OPTIN`).
    pub max_dyn_smem_per_block: u32,
    pub smem_per_sm: u32,
    pub regs_per_sm: u32,
    pub regs_per_block: u32,
    pub max_regs_per_thread: u32,
    pub max_threads_per_sm: u32,
    pub warp_size: u32,
}

/// What the emulator pretends to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub arch: Arch,
    pub sm_count: u32,
    /// Sanitizer checks (memory, races, initialisation, async hazards); on by default.
    pub checks: bool,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig { arch: Arch::Sm90a, sm_count: 4, checks: true }
    }
}

impl DeviceConfig {
    /// `DSMOE_EMU_ARCH` = `sm_90a` (default) | `sm_80`, `DSMOE_EMU_SMS` (default 4),
    /// `DSMOE_EMU_CHECKS` = `0` turns the sanitizer checks off.
    pub fn from_env() -> Result<Self, Error> {
        let mut cfg = DeviceConfig::default();
        if let Ok(arch) = std::env::var("DSMOE_EMU_ARCH") {
            cfg.arch = match arch.trim() {
                "sm_90a" | "sm90a" | "sm_90" => Arch::Sm90a,
                "sm_80" | "sm80" => Arch::Sm80,
                other => return Err(Error::Config { msg: format!("DSMOE_EMU_ARCH={other:?}: expected sm_90a or sm_80") }),
            };
        }
        if let Ok(sms) = std::env::var("DSMOE_EMU_SMS") {
            cfg.sm_count = match sms.trim().parse::<u32>() {
                Ok(n) if (1..=1024).contains(&n) => n,
                _ => return Err(Error::Config { msg: format!("DSMOE_EMU_SMS={sms:?}: expected an SM count in 1..=1024") }),
            };
        }
        if let Ok(checks) = std::env::var("DSMOE_EMU_CHECKS") {
            cfg.checks = match checks.trim() {
                "1" | "on" | "true" => true,
                "0" | "off" | "false" => false,
                other => return Err(Error::Config { msg: format!("DSMOE_EMU_CHECKS={other:?}: expected 0 or 1") }),
            };
        }
        Ok(cfg)
    }

    pub fn limits(&self) -> Limits {
        self.arch.limits()
    }
}
