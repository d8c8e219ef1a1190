//! What every GPU bench shares: CUDA-event timing for criterion's `iter_custom`, the one-line skip
//! without a GPU, a cuBLAS handle for baselines, device facts, the device's measured ceilings, and
//! `record`, which appends one JSON object per measurement to the results file.
//!
//! Include it with `mod support;` (benches/<name>.rs) or `#[path = "support/mod.rs"] mod support;`.
//!
//! Results go to `$DSMOE_RESULTS` when set (scripts/gpu-run.sh points it under the run's output
//! folder), else to perf/results.jsonl in the repository. Each line has the keys bench, case,
//! device, driver, commit, date, unit, ours, baseline_name, baseline; `commit` is `$DSMOE_COMMIT`
//! when set (the GPU machine has no git checkout), else `git rev-parse --short HEAD`.
//! scripts/perf-table.py turns the file into perf/README.md.
#![allow(dead_code)] // each bench uses the part it needs

use std::ffi::c_void;
use std::sync::OnceLock;
use std::time::Duration;

use cudarc::cublas::{result as blas, sys as blas_sys};
use engine::cuda::{self, Event};
use engine::{DType, Device, Rng, Storage, Tensor};

/// The GPU to bench on, or `None` after printing one `skipped:` line.
pub fn gpu() -> Option<Device> {
    cuda::test_device()
}

/// Milliseconds of GPU time for `iters` back-to-back calls of `f`, by events on the engine's stream.
pub fn gpu_ms(iters: u64, f: &mut dyn FnMut()) -> f64 {
    let (start, end) = (Event::new(0).expect("event"), Event::new(0).expect("event"));
    start.record().expect("record start");
    for _ in 0..iters {
        f();
    }
    end.record().expect("record end");
    end.synchronize().expect("synchronize");
    start.elapsed_ms(&end).expect("elapsed") as f64
}

/// For `Bencher::iter_custom`: the GPU time of `iters` calls as a Duration.
pub fn timed(iters: u64, f: &mut dyn FnMut()) -> Duration {
    Duration::from_secs_f64(gpu_ms(iters, f) * 1e-3)
}

/// Median milliseconds per call over `runs` timed calls, after two warm-up calls.
pub fn median_ms(runs: usize, f: &mut dyn FnMut()) -> f64 {
    gpu_ms(2, f);
    let mut times: Vec<f64> = (0..runs.max(1)).map(|_| gpu_ms(1, f)).collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// TFLOP/s of `flops` done in `ms`.
pub fn tflops(flops: f64, ms: f64) -> f64 {
    flops / (ms * 1e-3) / 1e12
}

/// A cuBLAS handle queued on the engine's stream (device 0).
pub struct Blas(blas_sys::cublasHandle_t);

impl Blas {
    /// None (after one `skipped:` line) when libcublas cannot be loaded.
    pub fn new() -> Option<Blas> {
        // SAFETY: only asks whether the library can be loaded.
        if !unsafe { blas_sys::is_culib_present() } {
            cuda::report_skip("libcublas not found (cuBLAS baselines need it on LD_LIBRARY_PATH)");
            return None;
        }
        let handle = blas::create_handle().ok()?;
        let stream = cuda::stream_handle(0).ok()?;
        // SAFETY: the handle was just created; the stream belongs to device 0's primary context,
        // which the engine made current on this thread.
        unsafe { blas::set_stream(handle, stream as blas_sys::cudaStream_t) }.ok()?;
        Some(Blas(handle))
    }

    /// Row-major bf16 `C = op(A)·op(B) + beta·C` (m x n, f32 accumulation), A stored m x k (k x m
    /// when `ta`), B stored k x n (n x k when `tb`), all contiguous device addresses. cuBLAS is
    /// column-major, so this computes Cᵀ = op(B)ᵀ·op(A)ᵀ.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(&self, a: u64, b: u64, c: u64, m: usize, n: usize, k: usize, ta: bool, tb: bool, beta: f32) {
        let op = |t: bool| if t { blas_sys::cublasOperation_t::CUBLAS_OP_T } else { blas_sys::cublasOperation_t::CUBLAS_OP_N };
        let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
        let (alpha, bf16) = (1.0f32, blas_sys::cudaDataType_t::CUDA_R_16BF);
        // SAFETY: callers pass live bf16 buffers holding the stated matrices; alpha and beta are
        // host f32 scalars, as CUBLAS_COMPUTE_32F expects.
        unsafe {
            blas::gemm_ex(
                self.0,
                op(tb),
                op(ta),
                n as i32,
                m as i32,
                k as i32,
                &alpha as *const f32 as *const c_void,
                b as *const c_void,
                bf16,
                ldb as i32,
                a as *const c_void,
                bf16,
                lda as i32,
                &beta as *const f32 as *const c_void,
                c as *mut c_void,
                bf16,
                n as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .expect("cublasGemmEx");
    }
}

/// Device address of a CUDA tensor, plus `offset` elements.
pub fn addr(t: &Tensor, offset: usize) -> u64 {
    match t.storage() {
        Storage::Cuda(s) => s.device_ptr() + (offset * t.dtype().size_in_bytes()) as u64,
        Storage::Cpu(_) => panic!("bench tensors live on the GPU"),
    }
}

/// Random bf16 (or other float) data on the GPU: never zeros, which run faster than real data.
pub fn randn(dims: &[usize], dtype: DType, dev: &Device, rng: &mut Rng) -> Tensor {
    Tensor::randn(dims.to_vec(), 0.0, 1.0, dtype, dev, rng).expect("randn on the GPU")
}

/// Facts about device 0 for records and headers.
pub struct Facts {
    pub name: String,
    pub driver: String,
    pub sm_count: u32,
    pub compute_capability: (u32, u32),
}

pub fn facts() -> Facts {
    let info = cuda::device_info(0).expect("device 0");
    Facts {
        name: info.name,
        driver: format!("{}.{}", info.driver_version.0, info.driver_version.1),
        sm_count: info.sm_count,
        compute_capability: info.compute_capability,
    }
}

/// The device's measured ceilings, once per process: cuBLAS bf16 8192³ TFLOP/s and a large
/// device-to-device copy's GB/s (bytes read plus bytes written).
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    pub bf16_tflops: f64,
    pub copy_gbs: f64,
}

pub fn ceiling(blas: &Blas, dev: &Device) -> Ceiling {
    static CEILING: OnceLock<Ceiling> = OnceLock::new();
    *CEILING.get_or_init(|| {
        const N: usize = 8192;
        let mut rng = Rng::new(0xce11);
        let (a, b) = (randn(&[N, N], DType::BF16, dev, &mut rng), randn(&[N, N], DType::BF16, dev, &mut rng));
        let c = Tensor::zeros([N, N], DType::BF16, dev).expect("zeros");
        let ms = median_ms(10, &mut || blas.gemm(addr(&a, 0), addr(&b, 0), addr(&c, 0), N, N, N, false, false, 0.0));
        let bf16_tflops = tflops(2.0 * (N * N * N) as f64, ms);
        let src = randn(&[1 << 28], DType::F32, dev, &mut rng); // 1 GiB
        let copy_ms = median_ms(10, &mut || {
            let Storage::Cuda(s) = src.storage() else { unreachable!() };
            drop(s.try_clone().expect("device copy"));
        });
        let copy_gbs = 2.0 * (1u64 << 30) as f64 / (copy_ms * 1e-3) / 1e9;
        let ceiling = Ceiling { bf16_tflops, copy_gbs };
        let f = facts();
        println!("device: {} (sm {}.{}, {} SMs, driver {}): cuBLAS bf16 8192³ {bf16_tflops:.1} TFLOP/s, copy {copy_gbs:.0} GB/s", f.name, f.compute_capability.0, f.compute_capability.1, f.sm_count, f.driver);
        record("device", "cuBLAS bf16 8192^3 (ceiling)", "TFLOP/s", bf16_tflops, "none", 0.0);
        record("device", "device-to-device copy (ceiling)", "GB/s", copy_gbs, "none", 0.0);
        ceiling
    })
}

/// Appends one measurement (ours and the same-run baseline, in `unit`) to the results file.
pub fn record(bench: &str, case: &str, unit: &str, ours: f64, baseline_name: &str, baseline: f64) {
    let f = facts();
    let line = serde_json::json!({
        "bench": bench, "case": case, "device": f.name, "driver": f.driver, "commit": dsmoe::perf::commit(), "date": dsmoe::perf::utc_now(),
        "unit": unit, "ours": ours, "baseline_name": baseline_name, "baseline": baseline,
    });
    dsmoe::perf::append(&[line]).expect("append a result");
}
