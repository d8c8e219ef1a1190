//! Element types. Floating point for compute; `U32` for indices (top-k, gather, routing tables).
//! On the CPU, bf16 and f16 are stored as such but computed in f32, which is what a CUDA kernel does
//! too (load, widen, accumulate in f32, narrow on store), so the CPU result is the reference for both.

use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
    U32,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    pub fn is_float(self) -> bool {
        !matches!(self, DType::U32)
    }

    /// The name used in kernel entry points and safetensors headers.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U32 => "u32",
        }
    }

    pub fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "f32" => DType::F32,
            "f64" => DType::F64,
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            "u32" => DType::U32,
            _ => return None,
        })
    }

    /// Relative error by norm that a result in this dtype must stay under against an f64 reference.
    pub fn tolerance(self) -> f64 {
        match self {
            DType::F64 => 1e-10,
            DType::F32 => 1e-5,
            DType::BF16 => 1e-2,
            DType::F16 => 2e-3,
            DType::U32 => 0.0,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Rust element types that a tensor can hold.
pub trait WithDType: Copy + Send + Sync + bytemuck::Pod + 'static {
    const DTYPE: DType;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

macro_rules! with_dtype {
    ($t:ty, $d:expr, $from:expr, $to:expr) => {
        impl WithDType for $t {
            const DTYPE: DType = $d;
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            fn to_f64(self) -> f64 {
                $to(self)
            }
        }
    };
}
with_dtype!(f32, DType::F32, |v| v as f32, |x: f32| x as f64);
with_dtype!(f64, DType::F64, |v| v, |x: f64| x);
with_dtype!(bf16, DType::BF16, bf16::from_f64, |x: bf16| x.to_f64());
with_dtype!(f16, DType::F16, f16::from_f64, |x: f16| x.to_f64());
with_dtype!(u32, DType::U32, |v: f64| v as u32, |x: u32| x as f64);
