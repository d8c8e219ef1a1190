//! Named tensors in safetensors files, the format the rest of the ecosystem (Python's `safetensors`,
//! PyTorch, candle) reads.
//!
//! Saving copies device tensors to the host (CPU tensors are borrowed as they are), serializes with
//! the `safetensors` crate into one buffer, and writes it atomically: peak host memory is about one
//! file's worth. Loading memory-maps the file and parses the header in place, so the only copy of a
//! tensor's bytes is the one into its own storage (and from there to a device, if asked). The bytes
//! are little-endian in the file and in `CpuStorage`, so this module, like the engine, assumes a
//! little-endian host.
//!
//! Everything a file can get wrong (missing, truncated, a corrupt header, a dtype dsmoe does not use,
//! a missing tensor, a wrong shape) is an error naming the file and the tensor, never a panic.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use engine::{CpuStorage, DType, Device, Storage, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, View};
use safetensors::SafeTensors;

use super::atomic::write_atomic;
use crate::files::open_regular;
use crate::{Error, Result};

/// A tensor's bytes on the host, in the form the safetensors serializer wants.
struct HostView<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    bytes: Cow<'a, [u8]>,
}

impl View for &HostView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn to_safetensors(dtype: DType) -> Dtype {
    match dtype {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::U32 => Dtype::U32,
    }
}

fn from_safetensors(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::U32 => DType::U32,
        _ => return None,
    })
}

/// Writes `tensors` (on any device) and the string `metadata` to `path`, atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)], metadata: &HashMap<String, String>) -> Result<()> {
    let origin = path.display().to_string();
    let mut seen = std::collections::HashSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::checkpoint(&origin, format!("tensor {name} is given twice")));
        }
        let bytes = match t.storage() {
            Storage::Cpu(s) => Cow::Borrowed(s.as_bytes()),
            Storage::Cuda(_) => Cow::Owned(
                t.to_cpu_storage()
                    .map_err(|e| Error::checkpoint(&origin, format!("copying tensor {name} to the host: {e}")))?
                    .as_bytes()
                    .to_vec(),
            ),
        };
        if bytes.len() != t.size_in_bytes() {
            return Err(Error::checkpoint(&origin, format!("tensor {name}: storage holds {} bytes, shape {:?} of {} needs {}", bytes.len(), t.shape(), t.dtype(), t.size_in_bytes())));
        }
        views.push((name.as_str(), HostView { dtype: to_safetensors(t.dtype()), shape: t.dims(), bytes }));
    }
    let info = (!metadata.is_empty()).then(|| metadata.clone());
    let buffer = safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), info)
        .map_err(|e| Error::checkpoint(&origin, format!("serializing: {e}")))?;
    write_atomic(path, &buffer)
}

/// An open safetensors file: mapped, header parsed and checked against the file's length.
pub struct TensorFile {
    path: PathBuf,
    map: Mmap,
    /// Offset of the data section (8-byte length prefix + JSON header).
    data_start: usize,
    header: Metadata,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<TensorFile> {
        let origin = path.display().to_string();
        let file = open_regular(path, "tensor file")?;
        // SAFETY: the map is read-only and private to this process. Checkpoint files are replaced by
        // rename, never rewritten in place, so a concurrent save does not change the mapped bytes;
        // truncating the file from outside while it is mapped is outside what we can defend against
        // (as for any mmap reader).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::checkpoint(&origin, format!("cannot map: {e}")))?;
        let (header_len, header) = SafeTensors::read_metadata(&map)
            .map_err(|e| Error::checkpoint(&origin, format!("not a valid safetensors file ({} bytes): {e}", map.len())))?;
        Ok(TensorFile { path: path.to_path_buf(), map, data_start: 8 + header_len, header })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The string metadata stored beside the tensors (`__metadata__`).
    pub fn metadata(&self) -> HashMap<String, String> {
        self.header.metadata().clone().unwrap_or_default()
    }

    /// The names of the tensors in the file, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.header.tensors().into_keys().collect();
        names.sort();
        names
    }

    /// One tensor, built on `device`.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.tensor_checked(name, None, device)
    }

    /// Every tensor in the file, on `device`.
    pub fn load_all(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        self.names().into_iter().map(|n| Ok((n.clone(), self.tensor(&n, device)?))).collect()
    }

    /// Exactly the `expected` tensors, each checked to exist with its shape; tensors in the file that
    /// are not expected are ignored.
    pub fn load_expected(&self, expected: &[(&str, &[usize])], device: &Device) -> Result<HashMap<String, Tensor>> {
        expected.iter().map(|&(n, shape)| Ok((n.to_string(), self.tensor_checked(n, Some(shape), device)?))).collect()
    }

    fn tensor_checked(&self, name: &str, expected: Option<&[usize]>, device: &Device) -> Result<Tensor> {
        let err = |msg: String| Error::checkpoint(self.path.display().to_string(), format!("tensor {name}: {msg}"));
        let info = self.header.info(name).ok_or_else(|| err(format!("missing (the file holds {} tensors)", self.header.tensors().len())))?;
        if let Some(shape) = expected {
            if info.shape != shape {
                return Err(err(format!("has shape {:?}, expected {:?}", info.shape, shape)));
            }
        }
        let dtype = from_safetensors(info.dtype).ok_or_else(|| err(format!("has dtype {}, which dsmoe does not use (f32, f64, bf16, f16, u32)", info.dtype)))?;
        // read_metadata checked that the offsets match shape x dtype and lie inside the file.
        let (start, end) = info.data_offsets;
        let bytes = &self.map[self.data_start + start..self.data_start + end];
        let host = Tensor::from_cpu(CpuStorage::from_bytes(dtype, bytes), info.shape.clone());
        host.to_device(device).map_err(|e| err(format!("moving to {device}: {e}")))
    }
}
