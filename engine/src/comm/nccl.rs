//! Collectives over NCCL, for CUDA tensors: one communicator per process and device.
//!
//! Every call is queued on the device's one stream (the engine's), so it runs after the kernels
//! that produced its input and before the ones that read its output, with no host wait; results
//! are fresh device buffers. NCCL is loaded at run time (`nccl_lib.rs`), so building needs no CUDA
//! and a machine without NCCL fails here with a message, not at start.
//!
//! Start-up: NCCL's ranks meet through a unique id that rank 0 creates and every other rank must
//! receive. `NcclComm::connect` takes it over an existing group (MPI's broadcast under `mpirun`, as
//! NCCL's own examples do) or, without one, over the TCP rendezvous at MASTER_ADDR:MASTER_PORT
//! (`rendezvous.rs`, torchrun-style), which gives up after its timeout instead of waiting forever
//! for a rank that never comes.
//!
//! `start_all_reduce_sum` is the one collective that leaves the engine's stream: it is queued on a
//! communication stream of the communicator's own (made on first use), after an event recorded on
//! the compute stream (so it reads its input only once the kernels that wrote it are done), and
//! an event recorded after it marks its end. The compute stream keeps running the backward pass
//! meanwhile; `wait` makes the compute stream wait for the end event (the host does not wait).
//! `NcclPending` keeps the input tensor alive until then: the allocator's cache hands a freed block
//! to the next kernel of the compute stream, which must not overwrite what NCCL is still reading.
//! NCCL runs the operations of one communicator in the order they were issued, on whichever stream,
//! so nothing else may be issued on this communicator while a started reduction waits on compute
//! work that itself waits on another collective of the same communicator (data parallelism issues
//! no other collective of its group during the backward pass).
//!
//! all_to_all is NCCL's grouped send/recv: the row counts are first all-gathered (one small
//! collective and a host copy, as every rank must know what it receives), then each peer's block
//! goes as bytes. Failure: an NCCL error aborts the communicator (ncclCommAbort), so its other
//! calls fail fast rather than hang; the caller then ends the job.

use std::ffi::{c_int, CStr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclResult_t, ncclUniqueId};

use super::nccl_lib::{nccl, Nccl};
use super::rendezvous;
use super::{check_root, check_rows_divisible, check_send_rows, rows_and_width, Communicator, InFlight, Launch, PendingSum};
use crate::cuda::{CudaStorage, Event};
use crate::{cuda, DType, Device, Error, Result, Storage, Tensor};

/// Bytes of NCCL's unique id.
pub const UNIQUE_ID_BYTES: usize = 128;

pub struct NcclComm {
    comm: ncclComm_t,
    rank: usize,
    size: usize,
    ordinal: usize,
    /// The stream `start_all_reduce_sum` queues on, made on first use.
    comm_stream: OnceLock<CommStream>,
}

/// A CUDA stream handle of the communicator's device.
struct CommStream(cudaStream_t);

// SAFETY: a stream handle may be used from any thread with its context current (every use binds).
unsafe impl Send for CommStream {}
// SAFETY: as above; the handle is only read.
unsafe impl Sync for CommStream {}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not
// concurrent; each call here runs to completion (it only queues work) before returning, and the
// training loop that owns the handle calls from one thread at a time.
unsafe impl Send for NcclComm {}
// SAFETY: as above.
unsafe impl Sync for NcclComm {}

fn lib() -> Result<&'static Nccl> {
    nccl().map_err(|e| Error::invalid("nccl", e))
}

fn check(op: &str, r: ncclResult_t) -> Result<()> {
    if r == ncclResult_t::ncclSuccess {
        return Ok(());
    }
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any result code.
    let msg = lib().ok().map(|l| unsafe { CStr::from_ptr((l.get_error_string)(r)) }.to_string_lossy().into_owned()).unwrap_or_default();
    Err(Error::Cuda { op: format!("NCCL {op}"), msg: format!("{r:?}: {msg}") })
}

fn nccl_dtype(d: DType) -> ncclDataType_t {
    match d {
        DType::F32 => ncclDataType_t::ncclFloat32,
        DType::F64 => ncclDataType_t::ncclFloat64,
        DType::BF16 => ncclDataType_t::ncclBfloat16,
        DType::F16 => ncclDataType_t::ncclFloat16,
        DType::U32 => ncclDataType_t::ncclUint32,
    }
}

/// A new NCCL unique id (call on rank 0 only).
pub fn unique_id() -> Result<[u8; UNIQUE_ID_BYTES]> {
    let l = lib()?;
    let mut id = ncclUniqueId { internal: [0; UNIQUE_ID_BYTES] };
    // SAFETY: `id` is a valid out-pointer.
    check("ncclGetUniqueId", unsafe { (l.get_unique_id)(&mut id) })?;
    Ok(id.internal.map(|c| c as u8))
}

impl NcclComm {
    /// Joins rank `rank` of `size` on CUDA device `ordinal`, given the group's unique id.
    pub fn new(ordinal: usize, rank: usize, size: usize, id: [u8; UNIQUE_ID_BYTES]) -> Result<NcclComm> {
        let l = lib()?;
        cuda::device(ordinal)?.bind()?;
        let id = ncclUniqueId { internal: id.map(|b| b as _) };
        let mut comm: ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; the device's context is current, which is how NCCL
        // learns the device.
        check("ncclCommInitRank", unsafe { (l.comm_init_rank)(&mut comm, size as c_int, id, rank as c_int) })?;
        Ok(NcclComm { comm, rank, size, ordinal, comm_stream: OnceLock::new() })
    }

    /// Joins the group a launcher started, on device `ordinal`: the unique id comes over `group`
    /// (MPI, same ranks) when given, else over the TCP rendezvous at MASTER_ADDR:MASTER_PORT.
    pub fn connect(launch: &Launch, ordinal: usize, group: Option<&dyn Communicator>, timeout: Duration) -> Result<NcclComm> {
        let root_id = if launch.rank == 0 { Some(unique_id()?) } else { None };
        let id: [u8; UNIQUE_ID_BYTES] = match group {
            Some(g) => {
                let words: Vec<u32> = root_id.unwrap_or([0; UNIQUE_ID_BYTES]).chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                let t = g.broadcast(&Tensor::from_slice(&words, [words.len()], &Device::Cpu)?, 0)?;
                let bytes: Vec<u8> = t.to_vec::<u32>()?.iter().flat_map(|w| w.to_le_bytes()).collect();
                bytes.try_into().expect("32 words are 128 bytes")
            }
            None => {
                let addr = rendezvous::master_from_env()?;
                let bytes = rendezvous::share_from_root(&addr, launch.rank, launch.size, root_id.as_ref().map(|b| &b[..]), timeout)?;
                bytes.try_into().map_err(|b: Vec<u8>| Error::invalid("rendezvous", format!("rank 0 sent {} bytes, not an NCCL id of {UNIQUE_ID_BYTES}", b.len())))?
            }
        };
        NcclComm::new(ordinal, launch.rank, launch.size, id)
    }

    fn stream(&self) -> Result<cudaStream_t> {
        let dev = cuda::device(self.ordinal)?;
        dev.bind()?;
        Ok(dev.stream() as cudaStream_t)
    }

    /// The communication stream, made on first use.
    fn comm_stream(&self) -> Result<cudaStream_t> {
        if let Some(s) = self.comm_stream.get() {
            return Ok(s.0);
        }
        cuda::device(self.ordinal)?.bind()?;
        let stream = cudarc::driver::result::stream::create(cudarc::driver::result::stream::StreamKind::NonBlocking)
            .map_err(|e| Error::Cuda { op: "cuStreamCreate".into(), msg: format!("the NCCL communication stream on cuda:{}: {e:?}", self.ordinal) })?;
        // One thread calls at a time (see the Send impl), so the cell is still empty here.
        Ok(self.comm_stream.get_or_init(|| CommStream(stream as cudaStream_t)).0)
    }

    fn storage<'a>(&self, x: &'a Tensor, op: &'static str) -> Result<&'a CudaStorage> {
        match x.storage() {
            Storage::Cuda(s) if s.device() == Device::Cuda(self.ordinal) => Ok(s),
            _ => Err(Error::invalid(op, format!("the NCCL group of cuda:{} takes tensors on that device, got one on {}", self.ordinal, x.device()))),
        }
    }

    fn output(&self, dtype: DType, len: usize) -> Result<CudaStorage> {
        CudaStorage::uninit(cuda::device(self.ordinal)?, dtype, len)
    }

    /// Runs one NCCL call on the engine's stream; on failure aborts the communicator so no later
    /// call waits on it.
    fn call(&self, op: &str, f: impl FnOnce(&Nccl, cudaStream_t) -> ncclResult_t) -> Result<()> {
        self.call_on(self.stream()?, op, f)
    }

    fn call_on(&self, stream: cudaStream_t, op: &str, f: impl FnOnce(&Nccl, cudaStream_t) -> ncclResult_t) -> Result<()> {
        let l = lib()?;
        let r = check(op, f(l, stream));
        if r.is_err() {
            // SAFETY: the communicator is live; aborting it makes its pending and later calls fail.
            unsafe { (l.comm_abort)(self.comm) };
        }
        r
    }

    fn reduce(&self, x: &Tensor, out_len: usize, dims: Vec<usize>, op: &'static str) -> Result<Tensor> {
        self.reduce_on(self.stream()?, x, out_len, dims, op)
    }

    fn reduce_on(&self, stream: cudaStream_t, x: &Tensor, out_len: usize, dims: Vec<usize>, op: &'static str) -> Result<Tensor> {
        let src = self.storage(x, op)?;
        let out = self.output(x.dtype(), out_len)?;
        let (dt, comm) = (nccl_dtype(x.dtype()), self.comm);
        self.call_on(stream, op, |l, s| {
            let (i, o) = (src.ptr() as *const _, out.ptr() as *mut _);
            // SAFETY: both buffers live on this device and hold the element counts NCCL reads and
            // writes (all-reduce: n in, n out; reduce-scatter: n in, n/size out).
            unsafe {
                if op != "reduce_scatter_sum" {
                    (l.all_reduce)(i, o, out_len, dt, ncclRedOp_t::ncclSum, comm, s)
                } else {
                    (l.reduce_scatter)(i, o, out_len, dt, ncclRedOp_t::ncclSum, comm, s)
                }
            }
        })?;
        Ok(Tensor::from_storage(Storage::Cuda(out), dims, x.dtype()))
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        if let Ok(l) = lib() {
            // SAFETY: the communicator is live and dropped once; destroy waits for its queued work.
            unsafe { (l.comm_destroy)(self.comm) };
        }
        if let (Some(s), Ok(dev)) = (self.comm_stream.get(), cuda::device(self.ordinal)) {
            if dev.bind().is_ok() {
                // SAFETY: the stream was made by `comm_stream` and is destroyed once; the driver
                // lets queued work finish first. A failure cannot be reported from drop.
                let _ = unsafe { cudarc::driver::result::stream::destroy(s.0 as _) };
            }
        }
    }
}

/// An all-reduce queued on the communication stream: its input (kept from reuse until the
/// compute stream is ordered after the reduction), its output, and the event after it.
struct NcclPending {
    input: Option<Tensor>,
    output: Option<Tensor>,
    done: Event,
}

impl NcclPending {
    /// Orders the engine's stream after the reduction, once; the input may be freed after.
    fn join(&mut self) -> Result<()> {
        if self.input.is_some() {
            self.done.order_after(None)?;
            self.input = None;
        }
        Ok(())
    }
}

impl InFlight for NcclPending {
    fn poll(&mut self) -> Result<bool> {
        self.done.is_done()
    }

    fn wait(mut self: Box<Self>) -> Result<Tensor> {
        self.join()?;
        Ok(self.output.take().expect("the output is taken only here"))
    }
}

impl Drop for NcclPending {
    fn drop(&mut self) {
        if self.join().is_err() {
            // The compute stream could not be ordered after the reduction, so the input must not
            // go back to the allocator's cache while NCCL may still read it: keep it.
            std::mem::forget(self.input.take());
        }
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn transport(&self) -> &'static str {
        "NCCL"
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        self.reduce(x, x.elem_count(), x.dims().to_vec(), "all_reduce_sum")
    }

    fn start_all_reduce_sum(&self, x: &Tensor) -> Result<PendingSum> {
        let dev = cuda::device(self.ordinal)?;
        let comm_stream = self.comm_stream()?;
        let inputs_ready = Event::on(dev)?;
        inputs_ready.record()?;
        inputs_ready.order_after(Some(comm_stream as _))?;
        let output = self.reduce_on(comm_stream, x, x.elem_count(), x.dims().to_vec(), "start_all_reduce_sum")?;
        let done = Event::on(dev)?;
        done.record_on(comm_stream as _)?;
        Ok(PendingSum::InFlight(Box::new(NcclPending { input: Some(x.clone()), output: Some(output), done })))
    }

    fn reduce_scatter_sum(&self, x: &Tensor) -> Result<Tensor> {
        check_rows_divisible("reduce_scatter_sum", x, self.size)?;
        let mut dims = x.dims().to_vec();
        dims[0] /= self.size;
        self.reduce(x, x.elem_count() / self.size, dims, "reduce_scatter_sum")
    }

    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        rows_and_width("all_gather", x)?;
        let src = self.storage(x, "all_gather")?;
        let n = x.elem_count();
        let out = self.output(x.dtype(), n * self.size)?;
        let (dt, comm) = (nccl_dtype(x.dtype()), self.comm);
        // SAFETY: `src` holds n elements, `out` n·size, both on this device.
        self.call("all_gather", |l, s| unsafe { (l.all_gather)(src.ptr() as *const _, out.ptr() as *mut _, n, dt, comm, s) })?;
        let mut dims = x.dims().to_vec();
        dims[0] *= self.size;
        Ok(Tensor::from_storage(Storage::Cuda(out), dims, x.dtype()))
    }

    fn all_to_all(&self, x: &Tensor, send_rows: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        check_send_rows(x, send_rows, self.size)?;
        let (_, width) = rows_and_width("all_to_all", x)?;
        let row_bytes = width * x.dtype().size_in_bytes();
        // Every rank's send counts, so each learns what it receives from whom.
        let counts: Vec<u32> = send_rows.iter().map(|&r| u32::try_from(r).map_err(|_| Error::invalid("all_to_all", format!("{r} rows to one rank exceed u32")))).collect::<Result<_>>()?;
        let all = self.all_gather(&Tensor::from_slice(&counts, [1, self.size], &Device::Cuda(self.ordinal))?)?.to_vec::<u32>()?;
        let recv_rows: Vec<usize> = (0..self.size).map(|q| all[q * self.size + self.rank] as usize).collect();
        let total: usize = recv_rows.iter().sum();
        let src = self.storage(x, "all_to_all")?;
        let out = self.output(x.dtype(), total * width)?;
        let comm = self.comm;
        self.call("all_to_all", |l, s| {
            let (mut sent, mut got) = (0usize, 0usize);
            // SAFETY: every block lies inside `src` (send counts add up to its rows) or `out` (receive
            // counts add up to its rows); the group makes the sends and receives one NCCL operation.
            unsafe {
                let r = (l.group_start)();
                if r != ncclResult_t::ncclSuccess {
                    return r;
                }
                for q in 0..self.size {
                    let (sb, rb) = (send_rows[q] * row_bytes, recv_rows[q] * row_bytes);
                    let r = (l.send)((src.ptr() as usize + sent) as *const _, sb, ncclDataType_t::ncclUint8, q as c_int, comm, s);
                    let r2 = (l.recv)((out.ptr() as usize + got) as *mut _, rb, ncclDataType_t::ncclUint8, q as c_int, comm, s);
                    if r != ncclResult_t::ncclSuccess || r2 != ncclResult_t::ncclSuccess {
                        (l.group_end)();
                        return if r != ncclResult_t::ncclSuccess { r } else { r2 };
                    }
                    sent += sb;
                    got += rb;
                }
                (l.group_end)()
            }
        })?;
        let mut dims = x.dims().to_vec();
        dims[0] = total;
        Ok((Tensor::from_storage(Storage::Cuda(out), dims, x.dtype()), recv_rows))
    }

    fn broadcast(&self, x: &Tensor, root: usize) -> Result<Tensor> {
        check_root(root, self.size)?;
        let src = self.storage(x, "broadcast")?;
        let n = x.elem_count();
        let out = self.output(x.dtype(), n)?;
        let (dt, comm) = (nccl_dtype(x.dtype()), self.comm);
        // SAFETY: `src` (read on the root only) and `out` hold n elements on this device.
        self.call("broadcast", |l, s| unsafe { (l.broadcast)(src.ptr() as *const _, out.ptr() as *mut _, n, dt, root as c_int, comm, s) })?;
        Ok(Tensor::from_storage(Storage::Cuda(out), x.dims().to_vec(), x.dtype()))
    }

    fn barrier(&self) -> Result<()> {
        let one = Tensor::ones([1], DType::F32, &Device::Cuda(self.ordinal))?;
        self.all_reduce_sum(&one)?;
        cuda::synchronize(self.ordinal)
    }

    fn split(&self, color: usize, key: usize) -> Result<Arc<dyn Communicator>> {
        let mut sub: ncclComm_t = std::ptr::null_mut();
        let comm = self.comm;
        // SAFETY: `sub` is a valid out-pointer; a null config takes the parent's settings.
        self.call("ncclCommSplit", |l, _| unsafe { (l.comm_split)(comm, color as c_int, key as c_int, &mut sub, std::ptr::null_mut()) })?;
        let l = lib()?;
        let (mut rank, mut size): (c_int, c_int) = (0, 0);
        // SAFETY: `sub` is the live communicator just made; the out-pointers are valid.
        check("ncclCommUserRank", unsafe { (l.comm_user_rank)(sub, &mut rank) })?;
        // SAFETY: as above.
        check("ncclCommCount", unsafe { (l.comm_count)(sub, &mut size) })?;
        Ok(Arc::new(NcclComm { comm: sub, rank: rank as usize, size: size as usize, ordinal: self.ordinal, comm_stream: OnceLock::new() }))
    }
}
