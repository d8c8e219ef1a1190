//! The bytes behind a tensor: a typed host vector, or a device buffer.

use half::{bf16, f16};

use crate::{cuda::CudaStorage, DType, Device, Result};

#[derive(Clone, Debug)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    U32(Vec<u32>),
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::U32(_) => DType::U32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::U32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            CpuStorage::F32(v) => bytemuck::cast_slice(v),
            CpuStorage::F64(v) => bytemuck::cast_slice(v),
            CpuStorage::BF16(v) => bytemuck::cast_slice(v),
            CpuStorage::F16(v) => bytemuck::cast_slice(v),
            CpuStorage::U32(v) => bytemuck::cast_slice(v),
        }
    }

    /// Builds storage of `dtype` from little-endian bytes (the layout of device memory and safetensors).
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> CpuStorage {
        fn collect<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
            // pod_collect_to_vec copies, so unaligned input (an mmapped file) is fine.
            bytemuck::pod_collect_to_vec(bytes)
        }
        match dtype {
            DType::F32 => CpuStorage::F32(collect(bytes)),
            DType::F64 => CpuStorage::F64(collect(bytes)),
            DType::BF16 => CpuStorage::BF16(collect(bytes)),
            DType::F16 => CpuStorage::F16(collect(bytes)),
            DType::U32 => CpuStorage::U32(collect(bytes)),
        }
    }
}

#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => s.device(),
        }
    }

    /// A deep copy (used when an in-place op finds its storage shared).
    pub fn try_clone(&self) -> Result<Storage> {
        Ok(match self {
            Storage::Cpu(s) => Storage::Cpu(s.clone()),
            Storage::Cuda(s) => Storage::Cuda(s.try_clone()?),
        })
    }
}
