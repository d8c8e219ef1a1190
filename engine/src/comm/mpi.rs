//! Collectives over MPI (the `mpi` crate, i.e. rsmpi, on the system's OpenMPI), for CPU tensors.
//!
//! Launch with `mpirun -np N <program>`; `init` starts MPI once per process and returns the world
//! group, and `finalize` ends it (MPI must be finalised before a successful exit, or `mpirun`
//! reports the job as failed). Reductions go through MPI's sum on f32, f64 and u32; bf16 and f16 are
//! summed in f32 (MPI has no 16-bit float type) and cast back. The other collectives move bytes.
//!
//! Errors: MPI's default error handler (MPI_ERRORS_ARE_FATAL) aborts the whole job on a failed call,
//! and `mpirun` ends every rank when one exits non-zero or dies, so a dead rank never leaves the
//! others waiting. A rank that fails on its own (a bad file, a non-finite loss) calls `abort` after
//! printing its error, which ends the others at once instead of leaving them in their next
//! collective.
//!
//! Threads: MPI is started at `MPI_THREAD_SERIALIZED`, and every MPI call of the process is made
//! under one lock, so handles may be shared between threads.
//!
//! `start_all_reduce_sum` is MPI_Iallreduce (`MpiPending` keeps its buffers and request until it
//! completes). OpenMPI runs non-blocking collectives in its libnbc schedules, which progress only
//! inside MPI calls (there is no progress thread by default), so `poll` (MPI_Test) is what moves
//! one forward while the caller computes; on a group of two, its sum equals MPI_Allreduce's bit for
//! bit (one addition per element, and IEEE addition commutes).

use std::sync::{Arc, Mutex, MutexGuard};

use std::ffi::c_void;

use mpi::collective::SystemOperation;
use mpi::datatype::{Equivalence, Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::{Color, Communicator as _, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};
use mpi::ffi::{MPI_Datatype, MPI_Request};
use mpi::raw::AsRaw;
use mpi::Count;

use super::{check_root, check_rows_divisible, check_send_rows, rows_and_width, Communicator, InFlight, PendingSum};
use crate::{ops, CpuStorage, DType, Error, Result, Tensor};

static UNIVERSE: Mutex<Option<Universe>> = Mutex::new(None);

/// Held across every MPI call: MPI_THREAD_SERIALIZED allows one thread in MPI at a time per process.
static CALLS: Mutex<()> = Mutex::new(());

fn guard() -> MutexGuard<'static, ()> {
    CALLS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts MPI and returns this process's handle on the world group.
pub fn init() -> Result<Arc<MpiComm>> {
    let mut universe = UNIVERSE.lock().unwrap_or_else(|e| e.into_inner());
    if universe.is_some() {
        return Err(Error::invalid("mpi init", "MPI is already started in this process"));
    }
    let (u, _level) = mpi::initialize_with_threading(mpi::Threading::Serialized)
        .ok_or_else(|| Error::invalid("mpi init", "MPI was already initialised (and perhaps finalised) in this process"))?;
    let world = u.world();
    *universe = Some(u);
    Ok(Arc::new(MpiComm::new(world)))
}

/// Ends MPI (MPI_Finalize). Every communicator but the world's must be dropped before.
pub fn finalize() {
    drop(UNIVERSE.lock().unwrap_or_else(|e| e.into_inner()).take());
}

/// Ends every rank of the job (MPI_Abort on the world group) with `code`.
pub fn abort(code: i32) -> ! {
    SimpleCommunicator::world().abort(code)
}

pub struct MpiComm {
    comm: SimpleCommunicator,
}

// SAFETY: the communicator is a plain MPI handle; MPI runs at MPI_THREAD_SERIALIZED and every call
// on the handle is made under `CALLS`, so no two threads call MPI at once through it.
unsafe impl Send for MpiComm {}
// SAFETY: as above: shared access only reaches MPI under `CALLS`.
unsafe impl Sync for MpiComm {}

enum Reduction {
    All,
    Scatter,
}

impl MpiComm {
    fn new(comm: SimpleCommunicator) -> MpiComm {
        MpiComm { comm }
    }

    fn guard(&self) -> MutexGuard<'static, ()> {
        guard()
    }

    fn sum<T: Equivalence + Copy + Default>(&self, send: &[T], out_len: usize, how: &Reduction) -> Result<Vec<T>> {
        count("sum", send.len())?;
        let mut recv = vec![T::default(); out_len];
        let _g = self.guard();
        match how {
            Reduction::All => self.comm.all_reduce_into(send, &mut recv[..], SystemOperation::sum()),
            Reduction::Scatter => self.comm.reduce_scatter_block_into(send, &mut recv[..], SystemOperation::sum()),
        }
        Ok(recv)
    }

    fn reduce(&self, x: &Tensor, how: Reduction) -> Result<Tensor> {
        let src = summable(x)?;
        let n = x.elem_count();
        let (out_len, dims) = match how {
            Reduction::All => (n, x.dims().to_vec()),
            Reduction::Scatter => {
                let mut d = x.dims().to_vec();
                d[0] /= self.size();
                (n / self.size(), d)
            }
        };
        let out = match cpu(&src, "MPI reduction")? {
            CpuStorage::F32(v) => CpuStorage::F32(self.sum(&v, out_len, &how)?),
            CpuStorage::F64(v) => CpuStorage::F64(self.sum(&v, out_len, &how)?),
            CpuStorage::U32(v) => CpuStorage::U32(self.sum(&v, out_len, &how)?),
            CpuStorage::BF16(_) | CpuStorage::F16(_) => unreachable!("16-bit floats were cast to f32 above"),
        };
        restore_dtype(Tensor::from_cpu(out, dims), x.dtype())
    }
}

/// `x` in a dtype MPI can sum: bf16 and f16 widened to f32.
fn summable(x: &Tensor) -> Result<Tensor> {
    if matches!(x.dtype(), DType::BF16 | DType::F16) {
        ops::cast(x, DType::F32)
    } else {
        Ok(x.clone())
    }
}

/// A sum computed by `summable`'s dtype, back in the caller's `dtype`.
fn restore_dtype(t: Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        Ok(t)
    } else {
        ops::cast(&t, dtype)
    }
}

/// The address of a host buffer and its MPI element type.
fn raw_buffer(s: &mut CpuStorage) -> (*mut c_void, MPI_Datatype) {
    match s {
        CpuStorage::F32(v) => (v.as_mut_ptr().cast(), f32::equivalent_datatype().as_raw()),
        CpuStorage::F64(v) => (v.as_mut_ptr().cast(), f64::equivalent_datatype().as_raw()),
        CpuStorage::U32(v) => (v.as_mut_ptr().cast(), u32::equivalent_datatype().as_raw()),
        CpuStorage::BF16(_) | CpuStorage::F16(_) => unreachable!("16-bit floats are widened to f32 before MPI sees them"),
    }
}

/// An MPI_Iallreduce in flight. Its buffers live on the heap, so moving the handle moves no
/// memory MPI is using; they are freed only after the request completed (`wait`, or `drop`).
struct MpiPending {
    /// Read by MPI until the request completes; kept alive for that only.
    _send: CpuStorage,
    recv: CpuStorage,
    request: MPI_Request,
    done: bool,
    dims: Vec<usize>,
    dtype: DType,
}

// SAFETY: the request is an MPI handle touched only under `CALLS`; the buffers are owned vectors.
unsafe impl Send for MpiPending {}

impl MpiPending {
    fn finish(&mut self) {
        if !self.done {
            let _g = guard();
            // SAFETY: the request is live (started, not completed); MPI_Wait completes and frees it.
            unsafe { mpi::ffi::MPI_Wait(&mut self.request, mpi::ffi::RSMPI_STATUS_IGNORE) };
            self.done = true;
        }
    }
}

impl InFlight for MpiPending {
    fn poll(&mut self) -> Result<bool> {
        if !self.done {
            let mut flag = 0;
            let _g = guard();
            // SAFETY: the request is live; MPI_Test writes one int and frees the request once done.
            unsafe { mpi::ffi::MPI_Test(&mut self.request, &mut flag, mpi::ffi::RSMPI_STATUS_IGNORE) };
            self.done = flag != 0;
        }
        Ok(self.done)
    }

    fn wait(mut self: Box<Self>) -> Result<Tensor> {
        self.finish();
        let recv = std::mem::replace(&mut self.recv, CpuStorage::U32(Vec::new()));
        restore_dtype(Tensor::from_cpu(recv, std::mem::take(&mut self.dims)), self.dtype)
    }
}

impl Drop for MpiPending {
    fn drop(&mut self) {
        // Dropped unfinished: an error path, after which the job ends. Waiting could hang on a
        // peer that never starts this reduction, and freeing would hand MPI's buffers back while
        // it may still write them, so they are leaked instead.
        if !matches!(self.poll(), Ok(true)) {
            std::mem::forget(std::mem::replace(&mut self._send, CpuStorage::U32(Vec::new())));
            std::mem::forget(std::mem::replace(&mut self.recv, CpuStorage::U32(Vec::new())));
        }
    }
}

/// The tensor's host storage; MPI here moves host memory only.
fn cpu(x: &Tensor, op: &'static str) -> Result<CpuStorage> {
    if x.device().is_cuda() {
        return Err(Error::invalid(op, format!("MPI collectives take CPU tensors, got one on {} (CUDA tensors go through NCCL)", x.device())));
    }
    x.to_cpu_storage()
}

/// An MPI count (a C int) for `n` elements, or an error naming the limit.
fn count(op: &'static str, n: usize) -> Result<Count> {
    Count::try_from(n).map_err(|_| Error::invalid(op, format!("{n} elements exceed MPI's count limit of {}", Count::MAX)))
}

fn tensor_from_bytes(bytes: &[u8], dtype: DType, dims: Vec<usize>) -> Tensor {
    Tensor::from_cpu(CpuStorage::from_bytes(dtype, bytes), dims)
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }
    fn size(&self) -> usize {
        self.comm.size() as usize
    }
    fn transport(&self) -> &'static str {
        "MPI"
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        self.reduce(x, Reduction::All)
    }

    fn start_all_reduce_sum(&self, x: &Tensor) -> Result<PendingSum> {
        let n = count("sum", x.elem_count())?;
        let mut send = cpu(&summable(x)?, "MPI reduction")?;
        let mut recv = send.clone();
        let (send_ptr, datatype) = raw_buffer(&mut send);
        let (recv_ptr, _) = raw_buffer(&mut recv);
        // SAFETY: reads a constant the MPI library exports.
        let mut request: MPI_Request = unsafe { mpi::ffi::RSMPI_REQUEST_NULL };
        let rc = {
            let _g = self.guard();
            // SAFETY: both buffers hold n elements of `datatype` and move into the handle below,
            // which keeps them (heap memory, not moved by moving the handle) until the request
            // completes; `request` is a valid out-pointer.
            unsafe { mpi::ffi::MPI_Iallreduce(send_ptr, recv_ptr, n, datatype, SystemOperation::sum().as_raw(), self.comm.as_raw(), &mut request) }
        };
        if rc != mpi::ffi::MPI_SUCCESS as i32 {
            return Err(Error::invalid("start_all_reduce_sum", format!("MPI_Iallreduce of {n} elements failed with MPI error {rc}")));
        }
        Ok(PendingSum::InFlight(Box::new(MpiPending { _send: send, recv, request, done: false, dims: x.dims().to_vec(), dtype: x.dtype() })))
    }

    fn reduce_scatter_sum(&self, x: &Tensor) -> Result<Tensor> {
        check_rows_divisible("reduce_scatter_sum", x, self.size())?;
        self.reduce(x, Reduction::Scatter)
    }

    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        rows_and_width("all_gather", x)?;
        let host = cpu(x, "all_gather")?;
        let send = host.as_bytes();
        count("all_gather", send.len() * self.size())?;
        let mut recv = vec![0u8; send.len() * self.size()];
        {
            let _g = self.guard();
            self.comm.all_gather_into(send, &mut recv[..]);
        }
        let mut dims = x.dims().to_vec();
        dims[0] *= self.size();
        Ok(tensor_from_bytes(&recv, x.dtype(), dims))
    }

    fn all_to_all(&self, x: &Tensor, send_rows: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        check_send_rows(x, send_rows, self.size())?;
        let (_, width) = rows_and_width("all_to_all", x)?;
        let row_bytes = width * x.dtype().size_in_bytes();
        let send_counts: Vec<u64> = send_rows.iter().map(|&r| r as u64).collect();
        let mut recv_counts = vec![0u64; self.size()];
        let host = cpu(x, "all_to_all")?;
        let (scounts, sdispls) = byte_partition(&send_counts, row_bytes)?;
        {
            let _g = self.guard();
            self.comm.all_to_all_into(&send_counts[..], &mut recv_counts[..]);
        }
        let (rcounts, rdispls) = byte_partition(&recv_counts, row_bytes)?;
        let recv_rows: Vec<usize> = recv_counts.iter().map(|&c| c as usize).collect();
        let total: usize = recv_rows.iter().sum();
        // One spare byte each: OpenMPI refuses the dangling pointer of an empty buffer.
        let mut recv = vec![0u8; total * row_bytes + 1];
        let mut send_bytes = Vec::with_capacity(host.as_bytes().len() + 1);
        send_bytes.extend_from_slice(host.as_bytes());
        send_bytes.push(0);
        {
            let send = Partition::new(&send_bytes[..], &scounts[..], &sdispls[..]);
            let mut into = PartitionMut::new(&mut recv[..], &rcounts[..], &rdispls[..]);
            let _g = self.guard();
            self.comm.all_to_all_varcount_into(&send, &mut into);
        }
        let mut dims = x.dims().to_vec();
        dims[0] = total;
        Ok((tensor_from_bytes(&recv[..total * row_bytes], x.dtype(), dims), recv_rows))
    }

    fn broadcast(&self, x: &Tensor, root: usize) -> Result<Tensor> {
        check_root(root, self.size())?;
        let mut bytes = cpu(x, "broadcast")?.as_bytes().to_vec();
        count("broadcast", bytes.len())?;
        {
            let _g = self.guard();
            self.comm.process_at_rank(root as i32).broadcast_into(&mut bytes[..]);
        }
        Ok(tensor_from_bytes(&bytes, x.dtype(), x.dims().to_vec()))
    }

    fn barrier(&self) -> Result<()> {
        let _g = self.guard();
        self.comm.barrier();
        Ok(())
    }

    fn split(&self, color: usize, key: usize) -> Result<Arc<dyn Communicator>> {
        let c = Color::with_value(count("split", color)?);
        let sub = {
            let _g = self.guard();
            self.comm.split_by_color_with_key(c, count("split", key)?)
        };
        let sub = sub.ok_or_else(|| Error::invalid("split", format!("MPI gave no communicator for colour {color}")))?;
        Ok(Arc::new(MpiComm::new(sub)))
    }
}

/// Byte counts and displacements of consecutive blocks of `rows[q]` rows each.
fn byte_partition(rows: &[u64], row_bytes: usize) -> Result<(Vec<Count>, Vec<Count>)> {
    let mut counts = Vec::with_capacity(rows.len());
    let mut displs = Vec::with_capacity(rows.len());
    let mut at = 0usize;
    for &r in rows {
        let bytes = r as usize * row_bytes;
        counts.push(count("all_to_all", bytes)?);
        displs.push(count("all_to_all", at)?);
        at += bytes;
    }
    Ok((counts, displs))
}
