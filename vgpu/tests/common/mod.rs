//! Helpers for running hand-written PTX through `vgpu::launch`.
#![allow(dead_code)]

use vgpu::{launch, Arch, DeviceConfig, Error, GlobalMemory, LaunchConfig, LaunchStats, Module};

pub struct Dev {
    pub mem: GlobalMemory,
    pub cfg: DeviceConfig,
}

impl Dev {
    pub fn new() -> Dev {
        Dev { mem: GlobalMemory::new(1 << 30), cfg: DeviceConfig { arch: Arch::Sm90a, sm_count: 4, checks: true } }
    }

    pub fn upload<T: bytemuck::Pod>(&self, data: &[T]) -> u64 {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let a = self.mem.alloc(bytes.len() as u64).unwrap();
        self.mem.write(a, bytes).unwrap();
        a
    }

    pub fn download<T: bytemuck::Pod + Default + Clone>(&self, addr: u64, n: usize) -> Vec<T> {
        let mut out = vec![T::default(); n];
        self.mem.read(addr, bytemuck::cast_slice_mut(&mut out)).unwrap();
        out
    }

    /// Parses `ptx`, launches `kernel` with `args` (each an argument's bytes).
    pub fn run(&self, ptx: &str, kernel: &str, grid: [u32; 3], block: [u32; 3], dynamic_smem: u32, args: &[Vec<u8>]) -> Result<LaunchStats, Error> {
        let m = Module::parse(ptx)?;
        let k = m.kernel(kernel).expect("kernel in module");
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        launch(&self.cfg, &self.mem, k, &LaunchConfig { grid, block, dynamic_smem }, &refs)
    }
}

pub fn arg<T: bytemuck::Pod>(v: T) -> Vec<u8> {
    bytemuck::bytes_of(&v).to_vec()
}

/// Wraps a kernel body in a module header and an entry with the given parameter list.
pub fn module(params: &str, body: &str) -> String {
    format!(".version 8.0\n.target sm_90a\n.address_size 64\n\n.visible .entry k({params})\n{{\n{body}\n}}\n")
}
