//! CUDA events: markers in a device's stream, for timing GPU work and for waiting on a point in it
//! without draining the whole stream. Benchmarks record one before and one after the region and read
//! `elapsed_ms`; the profiler (profile.rs) brackets every launch with a pair. Between two streams of
//! one device (NCCL's communication stream and the engine's), an event recorded on one and waited
//! for by the other orders them with no host wait (`record_on`, `order_after`).
//!
//! The elapsed-time call is resolved by hand: CUDA 12.8 renamed it `cuEventElapsedTime_v2`, and
//! cudarc's 13.0 bindings know only the new name, which a 12.x driver before 12.8 lacks (cudarc
//! would panic on the missing symbol). Looking up either name avoids that.

use std::sync::OnceLock;

use cudarc::driver::{result, sys};

use super::device::{device, CudaDevice};
use super::error::DriverContext;
use crate::{Error, Result};

pub struct Event {
    dev: &'static CudaDevice,
    event: sys::CUevent,
}

// SAFETY: an event handle may be used from any thread with its context current (every method binds).
unsafe impl Send for Event {}
// SAFETY: as above; the methods take &self and the driver synchronises event state.
unsafe impl Sync for Event {}

impl Event {
    /// A timing-capable event on device `ordinal`.
    pub fn new(ordinal: usize) -> Result<Event> {
        Event::on(device(ordinal)?)
    }

    pub(crate) fn on(dev: &'static CudaDevice) -> Result<Event> {
        dev.bind()?;
        let event = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).ctx("cuEventCreate")?;
        Ok(Event { dev, event })
    }

    pub(crate) fn device_ordinal(&self) -> usize {
        self.dev.ordinal()
    }

    /// Records the event at the current end of the device's stream.
    pub fn record(&self) -> Result<()> {
        self.dev.bind()?;
        // SAFETY: the event and stream belong to this device's context and are alive.
        unsafe { result::event::record(self.event, self.dev.stream()) }.ctx("cuEventRecord")
    }

    /// Records the event at the current end of `stream`, another stream of this device.
    pub(crate) fn record_on(&self, stream: sys::CUstream) -> Result<()> {
        self.dev.bind()?;
        // SAFETY: the event is alive and `stream` belongs to this device's context (caller's word).
        unsafe { result::event::record(self.event, stream) }.ctx("cuEventRecord")
    }

    /// Makes `stream` (of this device; `None`: the engine's) wait for the recorded point before it
    /// runs anything queued on it later. The host does not wait.
    pub(crate) fn order_after(&self, stream: Option<sys::CUstream>) -> Result<()> {
        self.dev.bind()?;
        let stream = stream.unwrap_or_else(|| self.dev.stream());
        // SAFETY: the event is alive and `stream` belongs to this device's context.
        unsafe { result::stream::wait_event(stream, self.event, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT) }.ctx("cuStreamWaitEvent")
    }

    /// Whether the work before the recorded point has finished. Never blocks.
    pub(crate) fn is_done(&self) -> Result<bool> {
        self.dev.bind()?;
        // SAFETY: the event is alive.
        match unsafe { result::event::query(self.event) } {
            Ok(()) => Ok(true),
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            Err(e) => Err(super::error::driver("cuEventQuery", e)),
        }
    }

    /// Blocks until the work before the recorded point has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.dev.bind()?;
        // SAFETY: the event is alive.
        unsafe { result::event::synchronize(self.event) }.ctx("cuEventSynchronize")
    }

    /// Milliseconds between this event and `end` (both recorded, `end` completed).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        let elapsed = elapsed_fn().ok_or_else(|| Error::Cuda {
            op: "cuEventElapsedTime".into(),
            msg: "the driver library exports neither cuEventElapsedTime_v2 nor cuEventElapsedTime".into(),
        })?;
        self.dev.bind()?;
        let mut ms = 0f32;
        // SAFETY: both events are alive and belong to the current context; the function pointer has
        // the driver's declared signature.
        unsafe { elapsed(&mut ms, self.event, end.event) }.result().ctx("cuEventElapsedTime")?;
        Ok(ms)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if self.dev.bind().is_ok() {
            // SAFETY: the event is destroyed once; the driver defers the release if it is pending.
            // A failure here cannot be reported from drop and leaks nothing worth a panic.
            let _ = unsafe { result::event::destroy(self.event) };
        }
    }
}

type ElapsedFn = unsafe extern "C" fn(*mut f32, sys::CUevent, sys::CUevent) -> sys::CUresult;

fn elapsed_fn() -> Option<ElapsedFn> {
    static F: OnceLock<Option<ElapsedFn>> = OnceLock::new();
    *F.get_or_init(|| {
        // SAFETY: the driver library is loaded (an event exists, so discovery succeeded), and both
        // names have the signature `CUresult (float*, CUevent, CUevent)`.
        unsafe {
            let lib = sys::culib();
            lib.get::<ElapsedFn>(b"cuEventElapsedTime_v2\0")
                .or_else(|_| lib.get::<ElapsedFn>(b"cuEventElapsedTime\0"))
                .ok()
                .map(|f| *f)
        }
    })
}
