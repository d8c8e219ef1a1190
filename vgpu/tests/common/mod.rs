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

/// A kernel `k(.param .u64 out)` whose body declares `%p<8>`, `%r<32>` and `%rd<8>`, loads `%rd1`
/// = out and `%r1` = %tid.x, then runs `body`.
pub fn out_kernel(body: &str) -> String {
    module(
        ".param .u64 out",
        &format!(".reg .pred %p<8>; .reg .b32 %r<32>; .reg .b64 %rd<8>;\nld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\n{body}"),
    )
}

/// PTX setting `%r4` to the shared address of the lane's word of `data` (`%r1` = %tid.x), and
/// zeroing the round counter `%r9` and the accumulator `%r10`: the start of the producer/consumer
/// kernels.
pub const LANE_WORD_OF_DATA: &str = "and.b32 %r2, %r1, 31;
    shl.b32 %r3, %r2, 2;
    mov.u32 %r4, data;
    add.u32 %r4, %r4, %r3;
    mov.u32 %r9, 0;
    mov.u32 %r10, 0;";

/// PTX storing the u32 register `reg` at out[%tid.x] (`%rd1` = out, `%r1` = %tid.x).
pub fn store_at_tid(reg: &str) -> String {
    format!("mul.wide.u32 %rd2, %r1, 4;\n    add.s64 %rd3, %rd1, %rd2;\n    st.global.u32 [%rd3], {reg};")
}

/// Wraps a kernel body in a module header and an entry with the given parameter list.
pub fn module(params: &str, body: &str) -> String {
    format!(".version 8.0\n.target sm_90a\n.address_size 64\n\n.visible .entry k({params})\n{{\n{body}\n}}\n")
}
