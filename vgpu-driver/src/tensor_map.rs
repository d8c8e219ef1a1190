//! `cuTensorMapEncodeTiled`: the arguments are validated as the real driver documents them and
//! stored in the emulator's own encoding of the 128 opaque bytes (`vgpu::tma::TensorMap`: a magic
//! word and a checksum, so a kernel handed a garbage or hand-modified map gets an error, not a
//! silent wrong tile). A refused map is `CUDA_ERROR_INVALID_VALUE` with the rule it broke.

use std::ffi::c_void;

use crate::state::{self, code};
use crate::status::{self, CuResult};

/// Reads `n` entries of a C array argument (an empty slice for n = 0).
///
/// # Safety
/// A non-null `ptr` must be readable for `n` values.
unsafe fn slice<'a, T>(ptr: *const T, n: usize) -> Result<&'a [T], CuResult> {
    if n == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(status::INVALID_VALUE);
    }
    // SAFETY: non-null and, by the caller's promise, readable for n values.
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

/// `cuTensorMapEncodeTiled`.
///
/// # Safety
/// `map` must be writable for 128 bytes; the arrays must hold `rank` (`rank - 1` for the strides)
/// entries.
#[no_mangle]
pub unsafe extern "C" fn cuTensorMapEncodeTiled(
    map: *mut [u8; 128],
    data_type: u32,
    rank: u32,
    global_address: *mut c_void,
    global_dims: *const u64,
    global_strides: *const u64,
    box_dims: *const u32,
    element_strides: *const u32,
    interleave: u32,
    swizzle: u32,
    l2_promotion: u32,
    oob_fill: u32,
) -> CuResult {
    code(state::device().and_then(|_| {
        if map.is_null() {
            return Err(status::INVALID_VALUE);
        }
        let r = (rank as usize).min(vgpu::tma::MAX_RANK);
        // SAFETY: the caller's promise on each array's length (the rank is capped so a bad rank
        // reads no further than the largest legal one; it is then refused below).
        let (global_dims, global_strides, box_dims, element_strides) = unsafe {
            (slice(global_dims, r)?, slice(global_strides, r.saturating_sub(1))?, slice(box_dims, r)?, slice(element_strides, r)?)
        };
        let args = vgpu::tma::EncodeTiled {
            data_type,
            rank,
            global_address: global_address as u64,
            global_dims,
            global_strides,
            box_dims,
            element_strides,
            interleave,
            swizzle,
            l2_promotion,
            oob_fill,
        };
        let encoded = vgpu::tma::TensorMap::from_encode_tiled(&args).map_err(|e| status::fail(status::INVALID_VALUE, &format!("cuTensorMapEncodeTiled: {e}")))?;
        // SAFETY: non-null and writable for 128 bytes (the caller's promise); CUtensorMap has no
        // alignment requirement for a byte copy.
        unsafe { (map as *mut u8).copy_from_nonoverlapping(encoded.encode().as_ptr(), 128) };
        Ok(())
    }))
}
