//! The tensor map: what `cuTensorMapEncodeTiled` takes, checked as the CUDA driver documents, and
//! the emulator's own encoding of the 128 opaque bytes.
//!
//! Driver rules enforced (CUDA driver API, cuTensorMapEncodeTiled): rank 1..=5 (3..=5 when
//! interleaved); known enum values; global address 16-byte aligned (32 with 32-byte interleave);
//! globalDim in 1..=2^32; globalStrides (rank-1 of them, bytes, for dims 1..) multiples of 16 (32
//! with 32-byte interleave) below 2^40, and non-zero; boxDim in 1..=256 with boxDim[0]·elementSize a
//! multiple of 16 bytes when not interleaved; with a swizzle and no interleave, boxDim[0]·elementSize
//! at most the swizzle span (32, 64, 128); elementStrides in 1..=8; the NaN out-of-bounds fill only
//! for floating-point types.
//!
//! Encoding (little-endian): bytes 0-3 magic "vgTM", 4 version, 5 rank, 6 data type, 7 interleave,
//! 8 swizzle, 9 L2 promotion, 10 OOB fill (all as the CUtensorMap* enum values), 16-23 global
//! address, 24-63 five globalDim (u64), 64-95 four globalStrides (u64), 96-105 five boxDim (u16),
//! 106-110 five elementStrides (u8), 112-115 an FNV-1a checksum of bytes 0-111; the rest zero.

use super::TmaError;
use crate::matrix::Swizzle;

pub const MAX_RANK: usize = 5;
const MAGIC: u32 = u32::from_le_bytes(*b"vgTM");
const VERSION: u8 = 1;

/// Declares a C enum of the driver API by its values, with `from_raw` refusing unknown values.
macro_rules! driver_enum {
    ($(#[$doc:meta])* $name:ident ($c_name:literal) { $($variant:ident = $value:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($variant = $value),+
        }

        impl $name {
            /// The variant with this C value.
            pub fn from_raw(value: u32) -> Result<Self, TmaError> {
                match value {
                    $($value => Ok($name::$variant),)+
                    _ => Err(TmaError::Enum { what: $c_name, value }),
                }
            }
        }
    };
}

driver_enum! {
    /// `CUtensorMapDataType`.
    DataType("DataType") {
        U8 = 0, U16 = 1, U32 = 2, I32 = 3, U64 = 4, I64 = 5, F16 = 6, F32 = 7, F64 = 8, Bf16 = 9,
        F32Ftz = 10, Tf32 = 11, Tf32Ftz = 12,
    }
}

driver_enum! {
    /// `CUtensorMapInterleave`.
    Interleave("Interleave") { None = 0, B16 = 1, B32 = 2 }
}

driver_enum! {
    /// `CUtensorMapL2promotion` (a cache hint: stored, no effect here).
    L2Promotion("L2promotion") { None = 0, B64 = 1, B128 = 2, B256 = 3 }
}

driver_enum! {
    /// `CUtensorMapFloatOOBfill`: NONE reads out-of-bounds elements as zero.
    OobFill("FloatOOBfill") { Zero = 0, NanRequestZeroFma = 1 }
}

impl DataType {
    pub fn size_bytes(self) -> u64 {
        match self {
            DataType::U8 => 1,
            DataType::U16 | DataType::F16 | DataType::Bf16 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
            _ => 4,
        }
    }

    /// The bytes of the canonical NaN an out-of-bounds element reads as under the NaN fill; `None`
    /// for integer types.
    pub fn nan_bytes(self) -> Option<Vec<u8>> {
        match self {
            DataType::F16 | DataType::Bf16 => Some(0x7fffu16.to_le_bytes().to_vec()),
            DataType::F32 | DataType::F32Ftz | DataType::Tf32 | DataType::Tf32Ftz => Some(0x7fff_ffffu32.to_le_bytes().to_vec()),
            DataType::F64 => Some(0x7fff_ffff_ffff_ffffu64.to_le_bytes().to_vec()),
            _ => None,
        }
    }
}

/// The arguments of `cuTensorMapEncodeTiled` after the output pointer, as the C API passes them
/// (the slices hold `rank`, `rank - 1`, `rank` and `rank` entries).
#[derive(Clone, Copy, Debug)]
pub struct EncodeTiled<'a> {
    pub data_type: u32,
    pub rank: u32,
    pub global_address: u64,
    pub global_dims: &'a [u64],
    pub global_strides: &'a [u64],
    pub box_dims: &'a [u32],
    pub element_strides: &'a [u32],
    pub interleave: u32,
    pub swizzle: u32,
    pub l2_promotion: u32,
    pub oob_fill: u32,
}

/// A validated tiled tensor map. Entries past `rank` are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorMap {
    pub data_type: DataType,
    pub rank: u32,
    pub global_address: u64,
    pub global_dims: [u64; MAX_RANK],
    /// Byte strides of dimensions 1..rank (`global_strides[i]` is dimension i+1's); dimension 0's
    /// stride is the element size.
    pub global_strides: [u64; MAX_RANK - 1],
    pub box_dims: [u32; MAX_RANK],
    pub element_strides: [u32; MAX_RANK],
    pub interleave: Interleave,
    pub swizzle: Swizzle,
    pub l2_promotion: L2Promotion,
    pub oob_fill: OobFill,
}

fn copy_in<T: Copy + Default, const N: usize>(src: &[T], want: usize, what: &'static str, rank: u32) -> Result<[T; N], TmaError> {
    if src.len() != want {
        return Err(TmaError::ArgLen { what, got: src.len(), want, rank });
    }
    let mut out = [T::default(); N];
    out[..want].copy_from_slice(src);
    Ok(out)
}

impl TensorMap {
    /// What `cuTensorMapEncodeTiled` does before writing the bytes: decode and check every argument.
    pub fn from_encode_tiled(args: &EncodeTiled<'_>) -> Result<TensorMap, TmaError> {
        let rank = args.rank;
        if rank == 0 || rank as usize > MAX_RANK {
            return Err(TmaError::Rank { rank });
        }
        let r = rank as usize;
        let map = TensorMap {
            data_type: DataType::from_raw(args.data_type)?,
            rank,
            global_address: args.global_address,
            global_dims: copy_in(args.global_dims, r, "globalDim", rank)?,
            global_strides: copy_in(args.global_strides, r - 1, "globalStrides", rank)?,
            box_dims: copy_in(args.box_dims, r, "boxDim", rank)?,
            element_strides: copy_in(args.element_strides, r, "elementStrides", rank)?,
            interleave: Interleave::from_raw(args.interleave)?,
            swizzle: Swizzle::from_tensor_map(args.swizzle).ok_or(TmaError::Enum { what: "Swizzle", value: args.swizzle })?,
            l2_promotion: L2Promotion::from_raw(args.l2_promotion)?,
            oob_fill: OobFill::from_raw(args.oob_fill)?,
        };
        map.validate()?;
        Ok(map)
    }

    /// The driver's rules on the decoded fields (module docs).
    pub fn validate(&self) -> Result<(), TmaError> {
        let r = self.rank as usize;
        if r == 0 || r > MAX_RANK {
            return Err(TmaError::Rank { rank: self.rank });
        }
        if self.interleave != Interleave::None && r < 3 {
            return Err(TmaError::InterleaveRank { rank: self.rank });
        }
        let align = if self.interleave == Interleave::B32 { 32 } else { 16 };
        if !self.global_address.is_multiple_of(align) {
            return Err(TmaError::Address { addr: self.global_address, align });
        }
        for (i, &dim) in self.global_dims[..r].iter().enumerate() {
            if dim == 0 || dim > 1 << 32 {
                return Err(TmaError::Dim { i, dim });
            }
        }
        for (i, &stride) in self.global_strides[..r - 1].iter().enumerate() {
            if stride == 0 || !stride.is_multiple_of(align) || stride >= 1 << 40 {
                return Err(TmaError::Stride { i, stride, align });
            }
        }
        for (i, &dim) in self.box_dims[..r].iter().enumerate() {
            if dim == 0 || dim > 256 {
                return Err(TmaError::BoxDim { i, dim });
            }
        }
        for (i, &stride) in self.element_strides[..r].iter().enumerate() {
            if stride == 0 || stride > 8 {
                return Err(TmaError::ElementStride { i, stride });
            }
        }
        let inner = self.box_dims[0] as u64 * self.data_type.size_bytes();
        if self.interleave == Interleave::None {
            if !inner.is_multiple_of(16) {
                return Err(TmaError::BoxInnerBytes { bytes: inner });
            }
            let span = self.swizzle.span_bytes();
            if self.swizzle != Swizzle::None && inner > span as u64 {
                return Err(TmaError::BoxSwizzle { bytes: inner, span });
            }
        }
        if self.oob_fill == OobFill::NanRequestZeroFma && self.data_type.nan_bytes().is_none() {
            return Err(TmaError::NanFillType { data_type: self.data_type });
        }
        Ok(())
    }

    /// The 128 bytes `cuTensorMapEncodeTiled` writes for this map.
    pub fn encode(&self) -> [u8; 128] {
        let mut b = [0u8; 128];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = VERSION;
        b[5] = self.rank as u8;
        b[6] = self.data_type as u8;
        b[7] = self.interleave as u8;
        b[8] = self.swizzle.tensor_map_value() as u8;
        b[9] = self.l2_promotion as u8;
        b[10] = self.oob_fill as u8;
        b[16..24].copy_from_slice(&self.global_address.to_le_bytes());
        for i in 0..MAX_RANK {
            b[24 + 8 * i..32 + 8 * i].copy_from_slice(&self.global_dims[i].to_le_bytes());
            b[96 + 2 * i..98 + 2 * i].copy_from_slice(&(self.box_dims[i] as u16).to_le_bytes());
            b[106 + i] = self.element_strides[i] as u8;
        }
        for i in 0..MAX_RANK - 1 {
            b[64 + 8 * i..72 + 8 * i].copy_from_slice(&self.global_strides[i].to_le_bytes());
        }
        let sum = checksum(&b[..112]);
        b[112..116].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// The map behind 128 bytes [`TensorMap::encode`] wrote; anything else is an error.
    pub fn decode(b: &[u8; 128]) -> Result<TensorMap, TmaError> {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let found = u32_at(0);
        if found != MAGIC || b[4] != VERSION {
            return Err(TmaError::Magic { found });
        }
        if u32_at(112) != checksum(&b[..112]) {
            return Err(TmaError::Checksum);
        }
        let rank = b[5] as u32;
        let r = (rank as usize).min(MAX_RANK);
        let dims: Vec<u64> = (0..r).map(|i| u64_at(24 + 8 * i)).collect();
        let strides: Vec<u64> = (0..r.saturating_sub(1)).map(|i| u64_at(64 + 8 * i)).collect();
        let boxes: Vec<u32> = (0..r).map(|i| u16::from_le_bytes([b[96 + 2 * i], b[97 + 2 * i]]) as u32).collect();
        let estrides: Vec<u32> = (0..r).map(|i| b[106 + i] as u32).collect();
        TensorMap::from_encode_tiled(&EncodeTiled {
            data_type: b[6] as u32,
            rank,
            global_address: u64_at(16),
            global_dims: &dims,
            global_strides: &strides,
            box_dims: &boxes,
            element_strides: &estrides,
            interleave: b[7] as u32,
            swizzle: b[8] as u32,
            l2_promotion: b[9] as u32,
            oob_fill: b[10] as u32,
        })
    }
}

/// FNV-1a, 32-bit.
fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &x| (h ^ x as u32).wrapping_mul(0x0100_0193))
}
