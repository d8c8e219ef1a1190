//! The CUDA driver API over the `vgpu` emulator: a stand-in for `libcuda.so` whose one device is
//! an emulated sm_90a or sm_80 GPU that executes PTX on the CPU, with compute-sanitizer-style
//! checks, so a program written against the driver API runs its kernels unchanged on any machine.
//!
//! The library is built with the SONAME `libcuda.so` (build.rs); loading it by path before the
//! program's first driver call makes it the driver of the process (dsmoe does this for
//! `DSMOE_DEVICE=emu` / `--device emu`). It exports the functions dsmoe's engine calls through
//! cudarc, with the same names, versions (`_v2`) and C signatures as the real driver:
//!
//! - device.rs: `cuInit`, `cuDriverGetVersion`, `cuDeviceGet*` (name, attributes, memory), the
//!   primary context and `cuCtx*`.
//! - memory.rs: `cuMemAlloc`/`Free`, `cuMemsetD8`/`D32`, `cuMemcpy{HtoD,DtoH,DtoD}` (+ `Async`).
//! - stream.rs: streams and events (elapsed time is host time of the emulation).
//! - module.rs: `cuModuleLoadData` (PTX), `cuModuleGetFunction`, `cuFunc{Get,Set}Attribute`,
//!   `cuLaunchKernel`.
//! - tensor_map.rs: `cuTensorMapEncodeTiled`.
//! - launch_log.rs: `DSMOE_EMU_LAUNCH_LOG`, the record of launched entries for the coverage check.
//! - status.rs: `cuGetErrorName`/`String`, and how emulator reports reach the caller.
//!
//! Settings (read by `cuInit`): `DSMOE_EMU_ARCH` = `sm_90a` (default) or `sm_80`, `DSMOE_EMU_SMS`
//! (SM count, default 4), `DSMOE_EMU_CHECKS=0` (sanitizer checks off), `DSMOE_EMU_MEM_GIB` (device
//! memory, default 16), `DSMOE_EMU_LAUNCH_LOG` (a file that collects the launched entries; see
//! launch_log.rs). Everything runs when issued: a launch returns after the whole grid ran.
//! Not provided: anything else of the driver API (a missing symbol is the caller's error at
//! lookup), so libraries such as cuBLAS, which ship their own kernels as machine code, cannot run
//! on this device.

pub mod device;
pub mod launch_log;
pub mod memory;
pub mod module;
pub mod state;
pub mod status;
pub mod stream;
pub mod tensor_map;
