//! `Tensor`: a shape, a dtype and shared storage on one device. Tensors are immutable values; cloning
//! one is cheap (the storage is reference counted) and `reshape` shares storage. The few in-place
//! updates (the optimizer) go through `storage_mut`, which copies first if the storage is shared.

use std::sync::Arc;

use crate::{cuda, CpuStorage, DType, Device, Error, Result, Rng, Shape, Storage, WithDType};

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Shape,
    dtype: DType,
}

impl Tensor {
    /// Wraps storage produced by a backend. The element count must match the shape.
    pub fn from_storage(storage: Storage, shape: impl Into<Shape>, dtype: DType) -> Tensor {
        Tensor { storage: Arc::new(storage), shape: shape.into(), dtype }
    }

    pub fn from_cpu(storage: CpuStorage, shape: impl Into<Shape>) -> Tensor {
        let dtype = storage.dtype();
        Tensor::from_storage(Storage::Cpu(storage), shape, dtype)
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> Device {
        self.storage.device()
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    pub fn size_in_bytes(&self) -> usize {
        self.elem_count() * self.dtype.size_in_bytes()
    }

    /// Mutable access for in-place ops; copies the storage first if another tensor shares it.
    pub fn storage_mut(&mut self) -> Result<&mut Storage> {
        if Arc::get_mut(&mut self.storage).is_none() {
            self.storage = Arc::new(self.storage.try_clone()?);
        }
        Ok(Arc::get_mut(&mut self.storage).expect("storage was just made unique"))
    }

    /// True when both tensors share the same storage (a reshape of the other, or a clone).
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    // ---- construction -------------------------------------------------------------------------

    pub fn from_slice<T: WithDType>(data: &[T], shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::shape(
                "from_slice",
                format!("{} elements given for shape {shape:?} ({} elements)", data.len(), shape.elem_count()),
            ));
        }
        let cpu = CpuStorage::from_bytes(T::DTYPE, bytemuck::cast_slice(data));
        Tensor::from_cpu(cpu, shape).to_device(device)
    }

    /// Builds a tensor of `dtype` from f64 values (converted element by element).
    pub fn from_f64s(data: &[f64], shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::shape(
                "from_f64s",
                format!("{} elements given for shape {shape:?} ({} elements)", data.len(), shape.elem_count()),
            ));
        }
        let cpu = match dtype {
            DType::F32 => CpuStorage::F32(host_vec(data.len(), |i| data[i] as f32)?),
            DType::F64 => CpuStorage::F64(host_vec(data.len(), |i| data[i])?),
            DType::BF16 => CpuStorage::BF16(host_vec(data.len(), |i| half::bf16::from_f64(data[i]))?),
            DType::F16 => CpuStorage::F16(host_vec(data.len(), |i| half::f16::from_f64(data[i]))?),
            DType::U32 => CpuStorage::U32(host_vec(data.len(), |i| data[i] as u32)?),
        };
        Tensor::from_cpu(cpu, shape).to_device(device)
    }

    pub fn full(value: f64, shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_f64s(&host_vec(shape.elem_count(), |_| value)?, shape, dtype, device)
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(0.0, shape, dtype, device)
    }

    pub fn ones(shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, device)
    }

    /// 0, 1, ..., n-1.
    pub fn arange(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        Tensor::from_f64s(&v, [n], dtype, device)
    }

    /// Normal(mean, std), drawn on the host so a seed gives the same values on every device.
    pub fn randn(shape: impl Into<Shape>, mean: f64, std: f64, dtype: DType, device: &Device, rng: &mut Rng) -> Result<Tensor> {
        let shape = shape.into();
        let v = host_vec(shape.elem_count(), |_| mean + std * rng.normal())?;
        Tensor::from_f64s(&v, shape, dtype, device)
    }

    /// Uniform in [lo, hi), drawn on the host.
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f64, hi: f64, dtype: DType, device: &Device, rng: &mut Rng) -> Result<Tensor> {
        let shape = shape.into();
        let v = host_vec(shape.elem_count(), |_| lo + (hi - lo) * rng.uniform())?;
        Tensor::from_f64s(&v, shape, dtype, device)
    }

    // ---- movement and views -------------------------------------------------------------------

    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device() == *device {
            return Ok(self.clone());
        }
        let storage = match (&*self.storage, device) {
            (Storage::Cpu(cpu), Device::Cuda(ordinal)) => Storage::Cuda(cuda::CudaStorage::from_host(*ordinal, cpu)?),
            (Storage::Cuda(dev), Device::Cpu) => Storage::Cpu(dev.to_host()?),
            (Storage::Cuda(dev), Device::Cuda(ordinal)) => {
                Storage::Cuda(cuda::CudaStorage::from_host(*ordinal, &dev.to_host()?)?)
            }
            (Storage::Cpu(_), Device::Cpu) => unreachable!("same device handled above"),
        };
        Ok(Tensor { storage: Arc::new(storage), shape: self.shape.clone(), dtype: self.dtype })
    }

    /// A host copy of the storage (shares nothing with the tensor).
    pub fn to_cpu_storage(&self) -> Result<CpuStorage> {
        match &*self.storage {
            Storage::Cpu(s) => Ok(s.clone()),
            Storage::Cuda(s) => s.to_host(),
        }
    }

    /// The elements as `T`; the tensor's dtype must be `T`'s.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        if self.dtype != T::DTYPE {
            return Err(Error::DTypeMismatch { op: "to_vec", lhs: self.dtype, rhs: T::DTYPE });
        }
        Ok(bytemuck::pod_collect_to_vec(self.to_cpu_storage()?.as_bytes()))
    }

    /// The elements widened to f64, whatever the dtype.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        Ok(match self.to_cpu_storage()? {
            CpuStorage::F32(v) => v.iter().map(|&x| x as f64).collect(),
            CpuStorage::F64(v) => v,
            CpuStorage::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            CpuStorage::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            CpuStorage::U32(v) => v.iter().map(|&x| x as f64).collect(),
        })
    }

    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(self.to_f64_vec()?.into_iter().map(|x| x as f32).collect())
    }

    /// The single element of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.elem_count() != 1 {
            return Err(Error::shape("to_scalar", format!("expected one element, got shape {:?}", self.shape)));
        }
        Ok(self.to_f64_vec()?[0])
    }

    /// Same storage, new shape with the same element count.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::shape("reshape", format!("cannot reshape {:?} to {shape:?}", self.shape)));
        }
        Ok(Tensor { storage: self.storage.clone(), shape, dtype: self.dtype })
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{:?}, {}, {}]", self.shape, self.dtype, self.device())
    }
}

/// `n` values `f(0), f(1), ...` in a vector whose allocation may fail: a tensor too large for the
/// host is an error, not an abort of the process.
pub(crate) fn host_vec<T>(n: usize, f: impl FnMut(usize) -> T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::HostOutOfMemory { what: "a tensor", bytes: n as u128 * std::mem::size_of::<T>() as u128 })?;
    v.extend((0..n).map(f));
    Ok(v)
}
