//! The Tensor Memory Accelerator: tensor maps (`cuTensorMapEncodeTiled`) and tile loads
//! (`cp.async.bulk.tensor.{1..5}d.shared::cluster.global.tile.mbarrier::complete_tx::bytes`).
//!
//! A kernel receives a tensor map as 128 opaque bytes. The driver fills a [`TensorMap`] from the
//! arguments of `cuTensorMapEncodeTiled` ([`TensorMap::from_encode_tiled`], which validates them as
//! the real driver documents) and stores [`TensorMap::encode`]'s bytes; the interpreter turns the
//! bytes a TMA instruction names back into a map with [`TensorMap::decode`] (a magic word and a
//! checksum make a garbage or zeroed map an error) and runs [`load_tile`]. Completion (the mbarrier's
//! complete_tx with the returned byte count) is the interpreter's: see [`crate::mbarrier`].
//! [`Tile::chunk_addrs`] names the shared chunks a load writes, for the interpreter's shadow memory.
//!
//! Not modelled: interleaved maps in loads (an error); im2col mode, multicast and tensor stores or
//! reductions have no function here (our kernels use none); L2 promotion is stored, with no effect.

mod load;
mod map;

#[cfg(test)]
mod gemm_tests;
#[cfg(test)]
mod tests;

pub use load::{load_tile, Tile};
pub use map::{DataType, EncodeTiled, Interleave, L2Promotion, OobFill, TensorMap, MAX_RANK};

/// A tensor map the driver must refuse, or a TMA load that cannot run. Converts into
/// [`crate::Error`], which the interpreter locates with [`crate::Error::at`]; the driver maps a
/// refused map to CUDA_ERROR_INVALID_VALUE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TmaError {
    #[error("tensor map: rank {rank} is outside 1..={MAX_RANK}")]
    Rank { rank: u32 },
    #[error("tensor map: {what} has {got} entries, rank {rank} needs {want}")]
    ArgLen { what: &'static str, got: usize, want: usize, rank: u32 },
    #[error("tensor map: {what} value {value} is not a known CUtensorMap{what} value")]
    Enum { what: &'static str, value: u32 },
    #[error("tensor map: an interleaved layout needs rank 3 or more (rank {rank})")]
    InterleaveRank { rank: u32 },
    #[error("tensor map: global address {addr:#x} is not {align}-byte aligned")]
    Address { addr: u64, align: u64 },
    #[error("tensor map: globalDim[{i}] = {dim} is outside 1..=2^32")]
    Dim { i: usize, dim: u64 },
    #[error("tensor map: globalStrides[{i}] = {stride} bytes must be a non-zero multiple of {align} below 2^40")]
    Stride { i: usize, stride: u64, align: u64 },
    #[error("tensor map: boxDim[{i}] = {dim} is outside 1..=256")]
    BoxDim { i: usize, dim: u32 },
    #[error("tensor map: the inner box dimension is {bytes} bytes, not a multiple of 16")]
    BoxInnerBytes { bytes: u64 },
    #[error("tensor map: the inner box dimension is {bytes} bytes, more than the {span}-byte swizzle span")]
    BoxSwizzle { bytes: u64, span: u32 },
    #[error("tensor map: elementStrides[{i}] = {stride} is outside 1..=8")]
    ElementStride { i: usize, stride: u32 },
    #[error("tensor map: NaN out-of-bounds fill needs a floating-point data type, not {data_type:?}")]
    NanFillType { data_type: DataType },
    #[error("tensor map: the 128 bytes are not a tensor map made by cuTensorMapEncodeTiled (magic word {found:#010x})")]
    Magic { found: u32 },
    #[error("tensor map: the 128 bytes were modified after cuTensorMapEncodeTiled wrote them (checksum mismatch)")]
    Checksum,
    #[error("cp.async.bulk.tensor.{got}d used with a rank-{rank} tensor map")]
    Coords { got: usize, rank: u32 },
    #[error("cp.async.bulk.tensor: interleaved tensor maps ({interleave:?}) are not supported")]
    InterleaveLoad { interleave: Interleave },
    #[error("cp.async.bulk.tensor: shared destination {dst:#x} is not 128-byte aligned")]
    DstAlign { dst: u32 },
    #[error("cp.async.bulk.tensor: the {bytes}-byte box at shared {dst:#x} does not fit in the CTA's {smem_bytes} bytes of shared memory")]
    SharedOutOfRange { dst: u32, bytes: u32, smem_bytes: usize },
}
