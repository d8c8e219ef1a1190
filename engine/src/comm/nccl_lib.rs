//! Loading NCCL at run time: the functions `nccl.rs` calls, with cudarc's NCCL types.
//!
//! cudarc's own NCCL loader looks for `libnccl.so` and CUDA-versioned names, and panics when none
//! loads; NCCL installs itself as `libnccl.so.2` (its SONAME: the `nvidia-nccl-cu13` wheel and the
//! `libnccl2` package ship only that name). So the library is opened here: `$DSMOE_NCCL_LIB` when
//! set (a path), else `libnccl.so.2`, else `libnccl.so`, through the loader's search path
//! (`LD_LIBRARY_PATH`). A missing library or symbol is an error naming what was tried, never a panic.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclConfig_t, ncclDataType_t, ncclRedOp_t, ncclResult_t, ncclUniqueId};

type Stream = cudaStream_t;

pub(crate) struct Nccl {
    pub get_unique_id: unsafe extern "C" fn(*mut ncclUniqueId) -> ncclResult_t,
    pub comm_init_rank: unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> ncclResult_t,
    pub comm_destroy: unsafe extern "C" fn(ncclComm_t) -> ncclResult_t,
    pub comm_abort: unsafe extern "C" fn(ncclComm_t) -> ncclResult_t,
    pub comm_user_rank: unsafe extern "C" fn(ncclComm_t, *mut c_int) -> ncclResult_t,
    pub comm_count: unsafe extern "C" fn(ncclComm_t, *mut c_int) -> ncclResult_t,
    pub comm_split: unsafe extern "C" fn(ncclComm_t, c_int, c_int, *mut ncclComm_t, *mut ncclConfig_t) -> ncclResult_t,
    pub all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclRedOp_t, ncclComm_t, Stream) -> ncclResult_t,
    pub reduce_scatter: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclRedOp_t, ncclComm_t, Stream) -> ncclResult_t,
    pub all_gather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclComm_t, Stream) -> ncclResult_t,
    pub broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, c_int, ncclComm_t, Stream) -> ncclResult_t,
    pub send: unsafe extern "C" fn(*const c_void, usize, ncclDataType_t, c_int, ncclComm_t, Stream) -> ncclResult_t,
    pub recv: unsafe extern "C" fn(*mut c_void, usize, ncclDataType_t, c_int, ncclComm_t, Stream) -> ncclResult_t,
    pub group_start: unsafe extern "C" fn() -> ncclResult_t,
    pub group_end: unsafe extern "C" fn() -> ncclResult_t,
    pub get_error_string: unsafe extern "C" fn(ncclResult_t) -> *const c_char,
    /// Kept open for the life of the process: the function pointers above point into it.
    _lib: libloading::Library,
}

/// The loaded library, or why it could not be loaded (the same answer on every call).
pub(crate) fn nccl() -> Result<&'static Nccl, String> {
    static LIB: OnceLock<Result<Nccl, String>> = OnceLock::new();
    LIB.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> Result<Nccl, String> {
    let names: Vec<String> = match std::env::var("DSMOE_NCCL_LIB") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["libnccl.so.2".into(), "libnccl.so".into()],
    };
    let mut tried = Vec::new();
    let lib = names
        .iter()
        .find_map(|n| {
            // SAFETY: loading NCCL runs its initialisers, which have no preconditions on us.
            unsafe { libloading::Library::new(n) }.map_err(|e| tried.push(format!("{n}: {e}"))).ok()
        })
        .ok_or_else(|| format!("cannot load NCCL (install the nvidia-nccl-cu13 wheel or libnccl2 and put its lib directory on LD_LIBRARY_PATH, or set DSMOE_NCCL_LIB): {}", tried.join("; ")))?;
    // SAFETY: each symbol is NCCL's public C function of that name, and the pointer type is its
    // prototype from nccl.h (as cudarc's generated bindings spell it); `lib` stays loaded with them.
    unsafe {
        Ok(Nccl {
            get_unique_id: sym(&lib, b"ncclGetUniqueId")?,
            comm_init_rank: sym(&lib, b"ncclCommInitRank")?,
            comm_destroy: sym(&lib, b"ncclCommDestroy")?,
            comm_abort: sym(&lib, b"ncclCommAbort")?,
            comm_user_rank: sym(&lib, b"ncclCommUserRank")?,
            comm_count: sym(&lib, b"ncclCommCount")?,
            comm_split: sym(&lib, b"ncclCommSplit")?,
            all_reduce: sym(&lib, b"ncclAllReduce")?,
            reduce_scatter: sym(&lib, b"ncclReduceScatter")?,
            all_gather: sym(&lib, b"ncclAllGather")?,
            broadcast: sym(&lib, b"ncclBroadcast")?,
            send: sym(&lib, b"ncclSend")?,
            recv: sym(&lib, b"ncclRecv")?,
            group_start: sym(&lib, b"ncclGroupStart")?,
            group_end: sym(&lib, b"ncclGroupEnd")?,
            get_error_string: sym(&lib, b"ncclGetErrorString")?,
            _lib: lib,
        })
    }
}

/// # Safety
/// `T` must be the function pointer type of the symbol `name`.
unsafe fn sym<T: Copy>(lib: &libloading::Library, name: &[u8]) -> Result<T, String> {
    // SAFETY: the caller guarantees the type.
    unsafe { lib.get::<T>(name) }.map(|s| *s).map_err(|e| format!("NCCL lacks {}: {e} (NCCL 2.18 or newer is needed)", String::from_utf8_lossy(name)))
}
