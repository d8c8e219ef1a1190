//! The interpreter.
use crate::{DeviceConfig, Error, GlobalMemory, Kernel, LaunchConfig, LaunchStats};

pub(crate) fn run_grid(_dev: &DeviceConfig, _mem: &GlobalMemory, kernel: &Kernel, _cfg: &LaunchConfig, _args: &[&[u8]]) -> Result<LaunchStats, Error> {
    Err(Error::Unsupported { line: 0, form: format!("executing `{}`: interpreter not built yet", kernel.name) })
}
