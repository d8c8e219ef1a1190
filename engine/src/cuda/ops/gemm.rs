//! The host side of the tensor-core GEMM family (gemm_sm80.cu, gemm_sm90.cu): pick the path for
//! the device, check alignment, build the group table and (Hopper) the TMA tensor maps, size the
//! persistent grid, declare FLOPs and bytes to the profiler, launch.
//!
//! Paths: compute capability 9.0 runs gemm_sm90 (wgmma + TMA, built for sm_90a); 8.x and other
//! 9.x / newer run gemm_sm80 (mma.sync + cp.async); older GPUs have no tensor-core path and the
//! callers fall back to the tiled reference GEMM (matmul.rs). `DSMOE_GEMM_PATH=sm80` forces the
//! sm_80 kernels on Hopper too, and `DSMOE_GEMM_PATH=tiled` turns the tensor-core path off (matmul
//! then uses the tiled GEMM everywhere; the gemm and grouped_matmul ops return an error): to
//! compare paths, or to rule one out when a result looks wrong.
//!
//! Alignment (both paths): a and b 16-byte aligned (device buffers are), every leading dimension a
//! multiple of 8 elements, n a multiple of 8; violations are an `Error::Invalid` naming the operand.

use cudarc::driver::sys;
use kernels_cuda::{GEMM_SM80, GEMM_SM90};

use super::nbytes;
use crate::backend::{GemmForm, GemmLayout, GroupedLayout, MatmulLayout};
use crate::cuda::device::CudaDevice;
use crate::cuda::error::DriverContext;
use crate::cuda::launch::{kernel_args, launch_with_smem, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::{CpuStorage, DType, Error, Result};

/// Mirrors `sm80::GemmGroup` (gemm_sm80.cuh).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GemmGroup {
    pub b_offset: u64,
    pub row_begin: u32,
    pub rows: u32,
    pub k_begin: u32,
    pub k_end: u32,
}

/// Mirrors `sm80::GemmProblem<T>` (gemm_sm80.cuh).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct GemmProblem {
    pub a: u64,
    pub b: u64,
    pub a_rows: u64,
    pub groups: u64,
    pub num_groups: u32,
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub lda: u32,
    pub ldb: u32,
}

/// Mirrors `gemm_ep::EpilogueParams` (gemm_epilogue.cuh).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct EpilogueParams {
    out: u64,
    bias: u64,
    residual: u64,
    group_stride: u64,
    ldc: u32,
    alpha: f32,
    flags: u32,
    pad: u32,
}

/// Mirrors `sm90::Sm90Extra` (gemm_sm90.cuh).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Sm90Extra {
    b_batch_stride: u64,
}

const EP_GELU: u32 = 1;

/// Tile shapes of the two kernels (gemm_sm80.cu's Sm80Tile, gemm_sm90.cuh's Tile).
pub(crate) const SM80: TileShape = TileShape { bm: 128, bn: 128, threads: 128, smem: 4 * (128 * 32 + 32 * 128) * 2, blocks_per_sm: 2 };
const SM90: TileShape = TileShape { bm: 128, bn: 256, threads: 384, smem: 4 * (128 * 64 + 64 * 256) * 2 + 4 * 16 + 1024, blocks_per_sm: 1 };

#[derive(Debug, Clone, Copy)]
pub(crate) struct TileShape {
    pub bm: u64,
    pub bn: u64,
    pub threads: u32,
    pub smem: u32,
    pub blocks_per_sm: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    Sm80,
    Sm90,
}

/// The tensor-core path for a device, if it has one.
pub(crate) fn path(dev: &CudaDevice) -> Option<Path> {
    let forced = std::env::var("DSMOE_GEMM_PATH").unwrap_or_default();
    match dev.info.compute_capability {
        _ if forced == "tiled" => None,
        (9, 0) if forced != "sm80" => Some(Path::Sm90),
        (major, _) if major >= 8 => Some(Path::Sm80),
        _ => None,
    }
}

/// The operand layout of one launch: dims, leading dims, and where the rows come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Operands {
    pub form: GemmForm,
    /// Logical rows of A and C over all groups, columns of C, reduction length over all groups.
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub lda: u64,
    pub ldb: u64,
    /// Stacked B matrices (1 when every group shares B) and the elements between them.
    pub b_batches: u64,
    pub b_batch_stride: u64,
}

impl Operands {
    /// Contiguous operands of one product in `form`.
    pub(crate) fn dense(form: GemmForm, m: u64, n: u64, k: u64) -> Operands {
        let lda = if form == GemmForm::TN { m } else { k };
        let ldb = if form == GemmForm::NT { k } else { n };
        Operands { form, m, n, k, lda, ldb, b_batches: 1, b_batch_stride: k * n }
    }

    /// Checks what both kernels assume (see the module doc).
    pub(crate) fn check(&self, op: &'static str) -> Result<()> {
        let bad = |what: String| Err(Error::invalid(op, format!("{what} (the tensor-core GEMM needs leading dimensions and n to be multiples of 8 elements)")));
        if self.lda % 8 != 0 {
            return bad(format!("a's leading dimension {} is not a multiple of 8", self.lda));
        }
        if self.ldb % 8 != 0 {
            return bad(format!("b's leading dimension {} is not a multiple of 8", self.ldb));
        }
        if self.n % 8 != 0 {
            return bad(format!("n = {} is not a multiple of 8", self.n));
        }
        // Every stacked B matrix starts 16-byte aligned too (cp.async sources, the TMA batch stride).
        if self.b_batches > 1 && self.b_batch_stride % 8 != 0 {
            return bad(format!("b's batch stride {} is not a multiple of 8", self.b_batch_stride));
        }
        if [self.m, self.n, self.k, self.lda, self.ldb].iter().any(|&d| d > u32::MAX as u64 / 2) {
            return Err(Error::invalid(op, format!("dims {}x{}x{} exceed the kernels' 32-bit indices", self.m, self.n, self.k)));
        }
        Ok(())
    }
}

/// Upper bound on tiles (no table read): row-grouped tables can split at most one extra tile row
/// per group; reduction-grouped ones repeat the whole m x n tile grid per group.
pub(crate) fn tile_bound(t: TileShape, m: u64, n: u64, groups: u64, rows_grouped: bool) -> u64 {
    let n_tiles = n.div_ceil(t.bn);
    if rows_grouped {
        (m.div_ceil(t.bm) + groups.saturating_sub(1)) * n_tiles
    } else {
        m.div_ceil(t.bm) * n_tiles * groups.max(1)
    }
}

/// Persistent grid: never more blocks than tiles, nor more than fit on the GPU at once.
pub(crate) fn grid_blocks(t: TileShape, sm_count: u64, tiles: u64) -> u32 {
    tiles.clamp(1, (sm_count.max(1) * t.blocks_per_sm).min(i32::MAX as u64)) as u32
}

/// What the epilogue does; all output buffers have the output dtype.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epilogue {
    pub out: u64,
    pub out_dtype: DType,
    pub bias: Option<u64>,
    pub residual: Option<u64>,
    pub group_stride: u64,
    pub alpha: f32,
    pub gelu: bool,
}

/// The device-side group table: `groups` entries and where they are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Groups {
    pub table: u64,
    pub count: u32,
    /// Whether groups split the rows (NN / NT) rather than the reduction (TN).
    pub by_rows: bool,
}

fn suffix(op: &'static str, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        DType::F32 => Ok("f32"),
        _ => Err(Error::DType { op, dtype, detail: " for the tensor-core GEMM (bf16 or f16 inputs; bf16, f16 or f32 output)".into() }),
    }
}

fn entry(path: Path, form: GemmForm, input: DType, out: DType, op: &'static str) -> Result<String> {
    let (i, o) = (suffix(op, input)?, suffix(op, out)?);
    if input == DType::F32 || (out != input && out != DType::F32) {
        return Err(Error::DType { op, dtype: out, detail: format!(" output for {input} inputs (the GEMM writes the input dtype or f32)") });
    }
    let f = match form {
        GemmForm::NN => "nn",
        GemmForm::NT => "nt",
        GemmForm::TN => "tn",
    };
    Ok(format!("{}_{f}_{i}_{o}", if path == Path::Sm90 { "gemm90" } else { "gemm80" }))
}

/// Builds a 2-D to 5-D row-major tensor map: `dims` innermost first, `strides_bytes` for dims 1..,
/// `box_dims` innermost first; 128-byte swizzle, out-of-bounds reads as zero. The driver wants
/// every stride a multiple of 16 bytes and every extent non-zero.
pub(crate) fn tensor_map(ptr: u64, dtype: DType, dims: &[u64], strides_bytes: &[u64], box_dims: &[u32]) -> Result<[u64; 16]> {
    let data_type = if dtype == DType::BF16 {
        sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
    } else {
        sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16
    };
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    let element_strides = [1u32; 5];
    debug_assert!((2..=5).contains(&dims.len()) && strides_bytes.len() + 1 == dims.len() && box_dims.len() == dims.len());
    // SAFETY: every array holds `dims.len()` (or dims.len() - 1 for strides) entries, as the rank
    // says; the driver only encodes the description (it reads no device memory here).
    unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            data_type,
            dims.len() as u32,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides_bytes.as_ptr(),
            box_dims.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .ctx("cuTensorMapEncodeTiled")?;
    Ok(map.opaque)
}

/// A 64-byte-aligned tensor map, as the kernel parameter wants it.
#[repr(C, align(64))]
pub(crate) struct TensorMap(pub(crate) [u64; 16]);

/// Launches one (possibly grouped) GEMM. `a`, `b` are device addresses of `input` dtype laid out
/// as `ops` says; `groups` None is one group over all of m and k.
pub(crate) fn launch_gemm(
    dev: &'static CudaDevice,
    op: &'static str,
    input: DType,
    a: u64,
    b: u64,
    ops: &Operands,
    groups: Option<Groups>,
    ep: &Epilogue,
) -> Result<()> {
    ops.check(op)?;
    let path = path(dev).ok_or_else(|| Error::invalid(op, format!("compute capability {:?} has no tensor-core GEMM path", dev.info.compute_capability)))?;
    let name = entry(path, ops.form, input, ep.out_dtype, op)?;
    // The Hopper kernel zeroes a partial k tile only where k is the rows of both operands' tiles.
    if path == Path::Sm90 && groups.is_some_and(|g| !g.by_rows) && ops.form != GemmForm::TN {
        return Err(Error::invalid(op, format!("the sm_90a GEMM splits k between groups only in the TN form, not {:?}", ops.form)));
    }
    if ops.m == 0 || ops.n == 0 {
        return Ok(());
    }
    let problem = GemmProblem {
        a,
        b,
        a_rows: 0,
        groups: groups.map_or(0, |g| g.table),
        num_groups: groups.map_or(1, |g| g.count),
        m: ops.m as u32,
        n: ops.n as u32,
        k: ops.k as u32,
        lda: ops.lda as u32,
        ldb: ops.ldb as u32,
    };
    let params = EpilogueParams {
        out: ep.out,
        bias: ep.bias.unwrap_or(0),
        residual: ep.residual.unwrap_or(0),
        group_stride: ep.group_stride,
        ldc: ops.n as u32,
        alpha: ep.alpha,
        flags: if ep.gelu { EP_GELU } else { 0 },
        pad: 0,
    };
    let group_count = groups.map_or(1, |g| g.count as u64);
    let rows_grouped = groups.is_none_or(|g| g.by_rows);
    let out_elems = if rows_grouped { ops.m * ops.n } else { group_count * ops.m * ops.n };
    let cost = Cost {
        // Every k row of a reduction-grouped product belongs to one group: the same count.
        flops: 2 * ops.m * ops.n * ops.k,
        bytes: nbytes((ops.m * ops.k + ops.b_batches * ops.k * ops.n) as usize, input) + nbytes(out_elems as usize, ep.out_dtype),
    };
    let sm = dev.info.sm_count as u64;
    match path {
        Path::Sm80 => {
            let blocks = grid_blocks(SM80, sm, tile_bound(SM80, ops.m, ops.n, group_count, rows_grouped));
            let grid = Grid { grid: (blocks, 1, 1), block: (SM80.threads, 1, 1) };
            // SAFETY: gemm80_<form>_<in>_<out>(GemmProblem<T> p, EpilogueParams e), both structs
            // mirrored repr(C) above; the caller guarantees a, b, the group table and the output
            // buffers hold what `ops` / `groups` / `ep` describe, and `check` has verified the
            // alignment the 16-byte copies need.
            unsafe { launch_with_smem(dev, &GEMM_SM80, &name, grid, SM80.smem, &mut kernel_args![&problem, &params], cost) }
        }
        Path::Sm90 => {
            let (map_a, map_b) = if ops.k == 0 {
                // No tile has a k slice, so no copy is issued and the maps are never read (and
                // lda / ldb may be 0, which the driver would refuse).
                (TensorMap([0; 16]), TensorMap([0; 16]))
            } else {
                let elem = 2u64;
                let map_a = match ops.form {
                    GemmForm::TN => tensor_map(a, input, &[ops.m, ops.k], &[ops.lda * elem], &[64, 64])?,
                    _ => tensor_map(a, input, &[ops.k, ops.m], &[ops.lda * elem], &[64, 128])?,
                };
                // A single B (b_batches 1: shared, or broadcast with stride 0) only ever reads batch
                // 0; its batch stride is then one matrix's extent, a multiple of 16 bytes.
                let b_rows = if ops.form == GemmForm::NT { ops.n } else { ops.k };
                let batch_bytes = if ops.b_batches > 1 { ops.b_batch_stride } else { ops.ldb * b_rows } * elem;
                let map_b = match ops.form {
                    GemmForm::NT => tensor_map(b, input, &[ops.k, ops.n, ops.b_batches], &[ops.ldb * elem, batch_bytes], &[64, 256, 1])?,
                    _ => tensor_map(b, input, &[ops.n, ops.k, ops.b_batches], &[ops.ldb * elem, batch_bytes], &[64, 64, 1])?,
                };
                (TensorMap(map_a), TensorMap(map_b))
            };
            let extra = Sm90Extra { b_batch_stride: ops.b_batch_stride.max(1) };
            let blocks = grid_blocks(SM90, sm, tile_bound(SM90, ops.m, ops.n, group_count, rows_grouped));
            let grid = Grid { grid: (blocks, 1, 1), block: (SM90.threads, 1, 1) };
            // SAFETY: gemm90_<form>_<in>_<out>(GemmProblem<T> p, Sm90Extra x, TensorMap map_a,
            // TensorMap map_b, EpilogueParams e), all mirrored repr(C) above (maps 64-byte aligned,
            // 128 bytes); the maps describe a and b as `ops` says, which the caller guarantees.
            unsafe { launch_with_smem(dev, &GEMM_SM90, &name, grid, SM90.smem, &mut kernel_args![&problem, &extra, &map_a, &map_b, &params], cost) }
        }
    }
}

/// A device-side group table from u32 `counts` (on the device) with no host sync (see
/// gemm_group_table in gemm_sm80.cu). Row-grouped: group g covers the next counts[g] rows and uses
/// B matrix g (`b_stride` elements apart); reduction-grouped: the next counts[g] rows of k.
pub(crate) fn device_groups(dev: &'static CudaDevice, counts: &CudaStorage, by_rows: bool, m: u64, k: u64, b_stride: u64) -> Result<(CudaStorage, Groups)> {
    let count = counts.len() as u32;
    let words = std::mem::size_of::<GemmGroup>() / 4;
    let table = CudaStorage::uninit(dev, DType::U32, counts.len().max(1) * words)?;
    let groups = Groups { table: table.ptr(), count, by_rows };
    if count == 0 {
        return Ok((table, groups));
    }
    let (cp, tp) = (counts.ptr(), table.ptr());
    let total = (if by_rows { m } else { k }) as u32;
    let (by_rows_i, m32, k32) = (by_rows as i32, m as u32, k as u32);
    let grid = Grid { grid: (count.div_ceil(256), 1, 1), block: (256, 1, 1) };
    // SAFETY: gemm_group_table(const u32* counts, u32 num_groups, u32 total, int by_rows, u32 m,
    // u32 k, u64 b_stride, GemmGroup* out): counts holds `count` u32, the table count entries.
    unsafe {
        launch_with_smem(
            dev,
            &GEMM_SM80,
            "gemm_group_table",
            grid,
            0,
            &mut kernel_args![&cp, &count, &total, &by_rows_i, &m32, &k32, &b_stride, &tp],
            Cost::default(),
        )?
    };
    Ok((table, groups))
}

/// A group table built on the host (batched products: the sizes are known there).
pub(crate) fn host_groups(dev: &'static CudaDevice, entries: &[GemmGroup], by_rows: bool) -> Result<(CudaStorage, Groups)> {
    let words: Vec<u32> = entries
        .iter()
        .flat_map(|g| [g.b_offset as u32, (g.b_offset >> 32) as u32, g.row_begin, g.rows, g.k_begin, g.k_end])
        .collect();
    let table = CudaStorage::from_host(dev.info.ordinal, &CpuStorage::U32(words))?;
    let groups = Groups { table: table.ptr(), count: entries.len() as u32, by_rows };
    Ok((table, groups))
}

/// `out = residual + gelu?(alpha · op(a)·op(b) + bias)` (the `gemm` backend op).
pub(crate) fn gemm(a: &CudaStorage, b: &CudaStorage, bias: Option<&CudaStorage>, residual: Option<&CudaStorage>, l: &GemmLayout) -> Result<CudaStorage> {
    let dev = a.dev();
    let ops = Operands::dense(l.form, l.m as u64, l.n as u64, l.k as u64);
    let out = CudaStorage::uninit(dev, l.out_dtype, l.m * l.n)?;
    let ep = Epilogue {
        out: out.ptr(),
        out_dtype: l.out_dtype,
        bias: bias.map(|s| s.ptr()),
        residual: residual.map(|s| s.ptr()),
        group_stride: 0,
        alpha: l.alpha,
        gelu: l.gelu,
    };
    launch_gemm(dev, "gemm", a.dtype(), a.ptr(), b.ptr(), &ops, None, &ep)?;
    Ok(out)
}

/// The grouped GEMM (the `grouped_matmul` backend op), its group table built on the device.
pub(crate) fn grouped_matmul(a: &CudaStorage, b: &CudaStorage, counts: &CudaStorage, l: &GroupedLayout) -> Result<CudaStorage> {
    let dev = a.dev();
    let (m, n, k, g) = (l.m as u64, l.n as u64, l.k as u64, l.groups as u64);
    let by_rows = l.form != GemmForm::TN;
    // Row-grouped: rows that no group covers (counts short of m) must read as zero, not garbage.
    let out = if by_rows { CudaStorage::zeros(dev, a.dtype(), (m * n) as usize)? } else { CudaStorage::uninit(dev, a.dtype(), (g * m * n) as usize)? };
    if g == 0 || out.is_empty() {
        return Ok(out);
    }
    let mut ops = Operands::dense(l.form, m, n, k);
    if by_rows {
        ops.b_batches = g;
    }
    let (_table, groups) = device_groups(dev, counts, by_rows, m, k, k * n)?;
    let ep = Epilogue { out: out.ptr(), out_dtype: a.dtype(), bias: None, residual: None, group_stride: if by_rows { 0 } else { m * n }, alpha: 1.0, gelu: false };
    // `_table` returns to the allocator when this returns; the single stream orders its reuse
    // after the GEMM.
    launch_gemm(dev, "grouped_matmul", a.dtype(), a.ptr(), b.ptr(), &ops, Some(groups), &ep)?;
    Ok(out)
}

/// The engine's `matmul` on bf16 / f16 through the tensor-core kernels, when the device, the
/// layout and the alignment allow; `None` sends the caller to the tiled reference GEMM. A batch
/// with its own a per entry (not transposed) becomes a row-grouped product with a host-built table.
pub(crate) fn matmul(a: &CudaStorage, b: &CudaStorage, l: &MatmulLayout) -> Result<Option<CudaStorage>> {
    let dev = a.dev();
    if !matches!(a.dtype(), DType::BF16 | DType::F16) || path(dev).is_none() {
        return Ok(None);
    }
    let form = match (l.trans_a, l.trans_b) {
        (false, false) => GemmForm::NN,
        (false, true) => GemmForm::NT,
        (true, false) => GemmForm::TN,
        (true, true) => return Ok(None),
    };
    let (batch, m, n, k) = (l.batch as u64, l.m as u64, l.n as u64, l.k as u64);
    let batched = batch > 1;
    if batched && (form == GemmForm::TN || l.a_batch_stride as u64 != m * k) {
        return Ok(None);
    }
    let mut ops = Operands::dense(form, batch * m, n, k);
    // A broadcast B (stride 0) stays one matrix: every entry's b_offset is 0, i.e. batch 0.
    if batched && l.b_batch_stride != 0 {
        ops.b_batches = batch;
        ops.b_batch_stride = l.b_batch_stride as u64;
    }
    if ops.check("matmul").is_err() {
        return Ok(None);
    }
    let out = CudaStorage::uninit(dev, a.dtype(), (batch * m * n) as usize)?;
    let ep = Epilogue { out: out.ptr(), out_dtype: a.dtype(), bias: None, residual: None, group_stride: 0, alpha: 1.0, gelu: false };
    if !batched {
        launch_gemm(dev, "matmul", a.dtype(), a.ptr(), b.ptr(), &ops, None, &ep)?;
        return Ok(Some(out));
    }
    let entries: Vec<GemmGroup> = (0..batch)
        .map(|i| GemmGroup { b_offset: i * l.b_batch_stride as u64, row_begin: (i * m) as u32, rows: m as u32, k_begin: 0, k_end: k as u32 })
        .collect();
    let (_table, groups) = host_groups(dev, &entries, true)?;
    launch_gemm(dev, "matmul", a.dtype(), a.ptr(), b.ptr(), &ops, Some(groups), &ep)?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_match_the_cuda_layouts() {
        assert_eq!(std::mem::size_of::<GemmGroup>(), 24);
        assert_eq!(std::mem::size_of::<GemmProblem>(), 56);
        assert_eq!(std::mem::size_of::<EpilogueParams>(), 48);
        assert_eq!((std::mem::size_of::<TensorMap>(), std::mem::align_of::<TensorMap>()), (128, 64));
    }

    #[test]
    fn alignment_errors_name_the_operand() {
        assert!(Operands::dense(GemmForm::NN, 17, 8, 16).check("t").is_ok());
        let e = Operands::dense(GemmForm::NN, 16, 8, 12).check("t").unwrap_err().to_string();
        assert!(e.contains("a's leading dimension 12"), "{e}");
        let e = Operands::dense(GemmForm::NN, 16, 12, 16).check("t").unwrap_err().to_string();
        assert!(e.contains("b's leading dimension 12"), "{e}");
        let e = Operands::dense(GemmForm::NT, 16, 12, 16).check("t").unwrap_err().to_string();
        assert!(e.contains("n = 12"), "{e}");
        // TN: a is [k, m], so m is a's leading dimension; k is free.
        assert!(Operands::dense(GemmForm::TN, 16, 8, 17).check("t").is_ok());
        assert!(Operands::dense(GemmForm::TN, 17, 8, 16).check("t").is_err());
        // Stacked B matrices each start 16-byte aligned; a single B's stride is never used.
        let stacked = |b_batches, b_batch_stride| Operands { b_batches, b_batch_stride, ..Operands::dense(GemmForm::NN, 16, 8, 16) };
        assert!(stacked(3, 136).check("t").is_ok());
        let e = stacked(3, 132).check("t").unwrap_err().to_string();
        assert!(e.contains("batch stride 132"), "{e}");
        assert!(stacked(1, 1).check("t").is_ok());
    }

    #[test]
    fn tile_bound_covers_every_split_of_rows_into_groups() {
        // Groups of sizes s_g need Σ ceil(s_g / bm) tile rows <= ceil(m / bm) + groups - 1.
        let t = SM80;
        for sizes in [vec![1u64, 0, 255, 129, 1000], vec![128, 128], vec![0, 0, 1], vec![127, 2, 127]] {
            let m: u64 = sizes.iter().sum();
            let needed: u64 = sizes.iter().map(|s| s.div_ceil(t.bm)).sum::<u64>() * 3;
            assert!(tile_bound(t, m, 3 * t.bn, sizes.len() as u64, true) >= needed, "{sizes:?}");
        }
        assert_eq!(tile_bound(t, 256, 256, 4, false), 2 * 2 * 4);
        assert_eq!(grid_blocks(t, 132, 5), 5);
        assert_eq!(grid_blocks(t, 132, 100_000), 264);
        assert_eq!(grid_blocks(t, 132, 0), 1);
    }

    #[test]
    fn entry_names_follow_path_form_and_dtypes() {
        assert_eq!(entry(Path::Sm90, GemmForm::TN, DType::BF16, DType::F32, "t").unwrap(), "gemm90_tn_bf16_f32");
        assert_eq!(entry(Path::Sm80, GemmForm::NT, DType::F16, DType::F16, "t").unwrap(), "gemm80_nt_f16_f16");
        assert!(entry(Path::Sm80, GemmForm::NN, DType::BF16, DType::F16, "t").is_err());
        assert!(entry(Path::Sm80, GemmForm::NN, DType::F32, DType::F32, "t").is_err());
    }

    /// Mirror of sm80::TileWalker::find (gemm_sm80.cuh): the tile with id `t`, walking groups in
    /// order and tiles in bands of `group_m` tile rows.
    fn find_tile(groups: &[GemmGroup], bm: u32, bn: u32, n: u32, group_m: u32, t: u64) -> Option<(u32, u32, u32)> {
        let n_tiles = n.div_ceil(bn);
        let mut before = 0u64;
        for (gi, g) in groups.iter().enumerate() {
            let m_tiles = g.rows.div_ceil(bm);
            let tiles = m_tiles as u64 * n_tiles as u64;
            if t < before + tiles {
                let local = (t - before) as u32;
                let band = local / (group_m * n_tiles);
                let band_m0 = band * group_m;
                let band_h = group_m.min(m_tiles - band_m0);
                let in_band = local - band * (group_m * n_tiles);
                return Some((gi as u32, (band_m0 + in_band % band_h) * bm, (in_band / band_h) * bn));
            }
            before += tiles;
        }
        None
    }

    #[test]
    fn the_tile_walk_visits_every_tile_of_every_group_once() {
        let rows = [300u32, 0, 1, 129, 0, 517, 128, 1000];
        let mut groups = Vec::new();
        let mut begin = 0;
        for r in rows {
            groups.push(GemmGroup { b_offset: 0, row_begin: begin, rows: r, k_begin: 0, k_end: 64 });
            begin += r;
        }
        for (bm, bn, n) in [(128, 128, 136), (128, 256, 4096), (128, 128, 8)] {
            let mut seen = std::collections::HashSet::new();
            let mut t = 0;
            while let Some(tile) = find_tile(&groups, bm, bn, n, 8, t) {
                assert!(seen.insert(tile), "tile {tile:?} visited twice");
                t += 1;
            }
            let expected: u32 = rows.iter().map(|r| r.div_ceil(bm) * n.div_ceil(bn)).sum();
            assert_eq!(seen.len() as u32, expected);
            for (g, m0, n0) in seen {
                assert!(m0 < rows[g as usize] && n0 < n, "tile ({g}, {m0}, {n0}) outside its group");
            }
            let bound = tile_bound(TileShape { bm: bm as u64, bn: bn as u64, ..SM80 }, begin as u64, n as u64, rows.len() as u64, true);
            assert!(bound >= t, "the grid bound {bound} is below the {t} tiles");
        }
    }

    /// Mirror of sm80::swz (gemm_sm80.cuh): byte offset of 16-byte chunk `chunk` of row `row`.
    fn swz(ch: u32, row: u32, chunk: u32) -> u32 {
        let c = if ch >= 8 { chunk ^ (row & 7) } else { chunk ^ ((row >> 1) & 3) };
        (row * ch + c) * 16
    }

    #[test]
    fn the_shared_memory_swizzle_is_a_permutation_and_ldmatrix_is_conflict_free() {
        for (ch, rows) in [(4u32, 128u32), (16, 32), (8, 64)] {
            let all: std::collections::HashSet<u32> = (0..rows).flat_map(|r| (0..ch).map(move |c| swz(ch, r, c))).collect();
            assert_eq!(all.len() as u32, rows * ch, "swizzle with {ch} chunks per row is not a permutation");
            // ldmatrix reads one chunk of 8 consecutive rows (starting at a multiple of 8): the 8
            // addresses must fall in 8 different 16-byte bank quads.
            for r0 in (0..rows).step_by(8) {
                for c in 0..ch {
                    let quads: std::collections::HashSet<u32> = (r0..r0 + 8).map(|r| (swz(ch, r, c) / 16) % 8).collect();
                    assert_eq!(quads.len(), 8, "bank conflict: {ch} chunks per row, rows {r0}.., chunk {c}");
                }
            }
        }
    }
}
