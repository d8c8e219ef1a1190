//! The driver API's non-launch half, called as a C program would: device facts, memory, copies
//! and their checks, streams and events, module loading rules, tensor-map encoding, error texts.
//! (Kernel launches are tested through the engine's GPU tests under `DSMOE_DEVICE=emu`.)

use std::ffi::{c_char, c_void, CStr};
use std::ptr::null_mut;

use vgpu_driver::device::*;
use vgpu_driver::memory::*;
use vgpu_driver::module::*;
use vgpu_driver::status::{self, cuGetErrorName, cuGetErrorString};
use vgpu_driver::stream::*;
use vgpu_driver::tensor_map::cuTensorMapEncodeTiled;

fn init() {
    assert_eq!(cuInit(0), status::SUCCESS);
}

fn error_string(code: u32) -> String {
    let mut s: *const c_char = std::ptr::null();
    // SAFETY: `s` is writable; the driver returns a static string.
    assert_eq!(unsafe { cuGetErrorString(code, &mut s) }, status::SUCCESS);
    // SAFETY: a NUL-terminated string from the driver.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

#[test]
fn the_device_says_it_is_emulated_and_reports_the_settings() {
    init();
    let cfg = vgpu::DeviceConfig::from_env().unwrap();
    let (mut count, mut version) = (0, 0);
    // SAFETY: out-pointers to locals.
    unsafe {
        assert_eq!(cuDeviceGetCount(&mut count), status::SUCCESS);
        assert_eq!(cuDriverGetVersion(&mut version), status::SUCCESS);
    }
    assert_eq!((count, version), (1, 13000));
    let mut name = [0 as c_char; 64];
    // SAFETY: the buffer holds 64 bytes.
    assert_eq!(unsafe { cuDeviceGetName(name.as_mut_ptr(), 64, 0) }, status::SUCCESS);
    // SAFETY: the driver NUL-terminates within the buffer.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    assert!(name.contains("emulated") && name.contains(cfg.arch.name()), "{name}");
    let attr = |a: i32| {
        let mut v = -1;
        // SAFETY: out-pointer to a local.
        assert_eq!(unsafe { cuDeviceGetAttribute(&mut v, a, 0) }, status::SUCCESS, "attribute {a}");
        v as u32
    };
    let (major, minor) = cfg.arch.compute_capability();
    assert_eq!((attr(75), attr(76)), (major, minor));
    assert_eq!(attr(16), cfg.sm_count);
    assert_eq!(attr(97), cfg.limits().max_dyn_smem_per_block);
    assert_eq!(attr(1), 1024);
    let mut v = 0;
    // SAFETY: out-pointer to a local.
    assert_eq!(unsafe { cuDeviceGetAttribute(&mut v, 9999, 0) }, status::INVALID_VALUE);
    // SAFETY: as above.
    assert_eq!(unsafe { cuDeviceGetAttribute(&mut v, 16, 1) }, status::INVALID_DEVICE);
}

#[test]
fn copies_round_trip_and_out_of_range_copies_are_refused_with_a_report() {
    init();
    let mut d = 0u64;
    // SAFETY: out-pointer to a local.
    assert_eq!(unsafe { cuMemAlloc_v2(&mut d, 1000) }, status::SUCCESS);
    assert_eq!(d % 256, 0);
    let host: Vec<u8> = (0..1000).map(|i| i as u8).collect();
    let mut back = vec![0u8; 1000];
    let mut s: *mut c_void = null_mut();
    // SAFETY: host buffers of 1000 bytes, a device block of 1000 bytes.
    unsafe {
        assert_eq!(cuStreamCreate(&mut s, 1), status::SUCCESS);
        assert_eq!(cuMemcpyHtoDAsync_v2(d, host.as_ptr() as *const c_void, 1000, s), status::SUCCESS);
        assert_eq!(cuMemsetD8Async(d + 10, 0xab, 5, s), status::SUCCESS);
        assert_eq!(cuMemcpyDtoHAsync_v2(back.as_mut_ptr() as *mut c_void, d, 1000, s), status::SUCCESS);
    }
    let mut want = host.clone();
    want[10..15].fill(0xab);
    assert_eq!(back, want);
    // One byte past the end of the allocation.
    // SAFETY: the host buffer holds 1000 bytes; the device range is checked by the driver.
    let code = unsafe { cuMemcpyDtoHAsync_v2(back.as_mut_ptr() as *mut c_void, d + 1, 1000, s) };
    assert_eq!(code, status::INVALID_VALUE);
    assert!(error_string(code).len() > "invalid argument".len(), "the report is kept: {}", error_string(code));
    assert_eq!(cuMemFree_v2(d), status::SUCCESS);
    assert_ne!(cuMemFree_v2(d), status::SUCCESS, "a double free is an error");
    assert_eq!(cuStreamDestroy_v2(s), status::SUCCESS);
    assert_eq!(cuStreamSynchronize(s), status::INVALID_HANDLE);
}

#[test]
fn events_time_the_work_between_them() {
    init();
    let (mut a, mut b) = (null_mut(), null_mut());
    let mut ms = -1.0f32;
    // SAFETY: out-pointers to locals.
    unsafe {
        assert_eq!(cuEventCreate(&mut a, 0), status::SUCCESS);
        assert_eq!(cuEventCreate(&mut b, 0), status::SUCCESS);
        assert_eq!(cuEventElapsedTime_v2(&mut ms, a, b), status::INVALID_HANDLE, "unrecorded events cannot be timed");
        assert_eq!(cuEventRecord(a, null_mut()), status::SUCCESS);
        assert_eq!(cuEventRecord(b, null_mut()), status::SUCCESS);
        assert_eq!(cuEventSynchronize(b), status::SUCCESS);
        assert_eq!(cuEventElapsedTime_v2(&mut ms, a, b), status::SUCCESS);
    }
    assert!(ms >= 0.0);
    assert_eq!(cuEventDestroy_v2(a), status::SUCCESS);
    assert_eq!(cuEventDestroy_v2(a), status::INVALID_HANDLE);
}

#[test]
fn modules_are_ptx_for_a_target_the_device_runs() {
    init();
    let mut m = null_mut();
    let elf = b"\x7fELF\x02\x01\x01\x00rest";
    // SAFETY: the image starts with the ELF magic and has a NUL after it.
    assert_eq!(unsafe { cuModuleLoadData(&mut m, elf.as_ptr() as *const c_void) }, status::NO_BINARY_FOR_GPU);
    let other = if vgpu::DeviceConfig::from_env().unwrap().arch == vgpu::Arch::Sm80 { "sm_90a" } else { "sm_100a" };
    let ptx = format!(".version 9.0\n.target {other}\n.address_size 64\n\0");
    // SAFETY: a NUL-terminated text.
    assert_eq!(unsafe { cuModuleLoadData(&mut m, ptx.as_ptr() as *const c_void) }, status::NO_BINARY_FOR_GPU);
    let garbage = ".version 9.0\n.target sm_80\n.address_size 64\nthis is not ptx;\n\0";
    // SAFETY: a NUL-terminated text.
    assert_eq!(unsafe { cuModuleLoadData(&mut m, garbage.as_ptr() as *const c_void) }, status::INVALID_PTX);
    assert!(error_string(status::INVALID_PTX).contains("line"), "{}", error_string(status::INVALID_PTX));
}

#[test]
fn tensor_maps_are_validated_and_encoded() {
    init();
    let mut d = 0u64;
    // SAFETY: out-pointer to a local.
    assert_eq!(unsafe { cuMemAlloc_v2(&mut d, 64 * 64 * 2) }, status::SUCCESS);
    let dims = [64u64, 64];
    let strides = [128u64];
    let boxes = [64u32, 32];
    let ones = [1u32; 2];
    let encode = |addr: u64, strides: &[u64; 1]| {
        let mut map = [0u8; 128];
        // SAFETY: every array holds `rank` (strides: rank - 1) entries; the map 128 bytes.
        let code = unsafe { cuTensorMapEncodeTiled(&mut map, 9, 2, addr as *mut c_void, dims.as_ptr(), strides.as_ptr(), boxes.as_ptr(), ones.as_ptr(), 0, 3, 0, 0) };
        (code, map)
    };
    let (code, map) = encode(d, &strides);
    assert_eq!(code, status::SUCCESS);
    assert_eq!(&map[0..4], b"vgTM");
    assert_eq!(encode(d + 2, &strides).0, status::INVALID_VALUE, "a misaligned address is refused");
    assert_eq!(encode(d, &[120]).0, status::INVALID_VALUE, "a stride not a multiple of 16 is refused");
    assert_eq!(cuMemFree_v2(d), status::SUCCESS);
}

#[test]
fn error_names_and_strings_match_the_driver() {
    let mut s: *const c_char = std::ptr::null();
    // SAFETY: out-pointer to a local.
    unsafe {
        assert_eq!(cuGetErrorName(status::LAUNCH_FAILED, &mut s), status::SUCCESS);
        assert_eq!(CStr::from_ptr(s).to_str().unwrap(), "CUDA_ERROR_LAUNCH_FAILED");
        assert_eq!(cuGetErrorName(12345, &mut s), status::INVALID_VALUE);
    }
    assert_eq!(error_string(status::SUCCESS), "no error");
}
