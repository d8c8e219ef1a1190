//! `CudaStorage`: a tensor's elements in device memory: a buffer from the caching allocator, a
//! dtype and an element count, contiguous row-major like every storage in the engine. Copies to and
//! from the host go through the device's stream, so they are ordered with the kernels around them;
//! `to_host` waits for the stream (it must, to hand back the data).

use cudarc::driver::result;

use super::alloc::{alloc, DeviceBuffer};
use super::device::{device, CudaDevice};
use super::error::DriverContext;
use crate::{CpuStorage, DType, Device, Result};

pub struct CudaStorage {
    buf: DeviceBuffer,
    dtype: DType,
    len: usize,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({} x {} on {})", self.len, self.dtype, self.device())
    }
}

impl CudaStorage {
    pub fn device(&self) -> Device {
        Device::Cuda(self.buf.device().ordinal())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn size_in_bytes(&self) -> usize {
        self.len * self.dtype.size_in_bytes()
    }

    /// Copies host data to device `ordinal`.
    pub fn from_host(ordinal: usize, cpu: &CpuStorage) -> Result<Self> {
        let dev = device(ordinal)?;
        let out = CudaStorage::uninit(dev, cpu.dtype(), cpu.len())?;
        let bytes = cpu.as_bytes();
        if !bytes.is_empty() {
            dev.bind()?;
            // SAFETY: the buffer holds `bytes.len()` bytes; for pageable host memory the driver
            // has staged the source by the time the call returns, so `cpu` may be dropped after.
            unsafe { result::memcpy_htod_async(out.ptr(), bytes, dev.stream()) }.ctx("cuMemcpyHtoDAsync")?;
        }
        Ok(out)
    }

    /// Copies the elements to the host (waits for all queued work on the device).
    pub fn to_host(&self) -> Result<CpuStorage> {
        // Fallible: a device buffer larger than free host memory is an error, not an abort.
        let mut bytes = crate::tensor::host_vec(self.size_in_bytes(), |_| 0u8)?;
        if !bytes.is_empty() {
            let dev = self.buf.device();
            dev.bind()?;
            // SAFETY: the destination holds exactly the buffer's byte size; the stream is
            // synchronised before `bytes` is read.
            unsafe { result::memcpy_dtoh_async(&mut bytes, self.ptr(), dev.stream()) }.ctx("cuMemcpyDtoHAsync")?;
            dev.synchronize()?;
        }
        Ok(CpuStorage::from_bytes(self.dtype, &bytes))
    }

    /// `len` zeros of `dtype` on device `ordinal`, made on the device (no host buffer).
    pub fn zeros_on(ordinal: usize, dtype: DType, len: usize) -> Result<Self> {
        CudaStorage::zeros(device(ordinal)?, dtype, len)
    }

    /// A device-side copy.
    pub fn try_clone(&self) -> Result<Self> {
        let dev = self.buf.device();
        let out = CudaStorage::uninit(dev, self.dtype, self.len)?;
        out.copy_from(self)?;
        Ok(out)
    }

    /// The buffer's device address, for handing the tensor to another CUDA library (cuBLAS in the
    /// benches). Such work must be queued on `stream_handle` to stay ordered with the engine's, and
    /// the address is valid only while this storage lives.
    pub fn device_ptr(&self) -> u64 {
        self.ptr()
    }

    pub(crate) fn ptr(&self) -> u64 {
        self.buf.ptr()
    }

    pub(crate) fn dev(&self) -> &'static CudaDevice {
        self.buf.device()
    }

    /// Storage for `len` elements whose contents the caller will write (poisoned under
    /// `set_poison(true)`).
    pub(crate) fn uninit(dev: &'static CudaDevice, dtype: DType, len: usize) -> Result<Self> {
        Ok(CudaStorage { buf: alloc(dev, len * dtype.size_in_bytes())?, dtype, len })
    }

    /// Storage for `len` zeros.
    pub(crate) fn zeros(dev: &'static CudaDevice, dtype: DType, len: usize) -> Result<Self> {
        let out = CudaStorage::uninit(dev, dtype, len)?;
        out.fill_bytes(0)?;
        Ok(out)
    }

    /// Queues a fill of every byte with `value`.
    pub(crate) fn fill_bytes(&self, value: u8) -> Result<()> {
        self.buf.fill_bytes(value, self.size_in_bytes())
    }

    /// Queues a device-to-device copy of all of `src` (same byte size) into `self`.
    pub(crate) fn copy_from(&self, src: &CudaStorage) -> Result<()> {
        let bytes = src.size_in_bytes();
        debug_assert_eq!(bytes, self.size_in_bytes());
        if bytes == 0 {
            return Ok(());
        }
        let dev = self.dev();
        dev.bind()?;
        // SAFETY: both buffers are live and hold `bytes` bytes; the copy is stream-ordered.
        unsafe { result::memcpy_dtod_async(self.ptr(), src.ptr(), bytes, dev.stream()) }.ctx("cuMemcpyDtoDAsync")
    }

    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }
}
