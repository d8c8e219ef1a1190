//! Streams and events.
//!
//! The emulator runs each launch, copy and memset to completion when it is issued, so a stream is
//! only a handle (work on it is already ordered, and already done), synchronising is a no-op, and
//! an event records the host clock at the point in the issue order where it was recorded: the
//! elapsed time between two events is the emulation time of the work between them.

use std::ffi::{c_uint, c_void};
use std::sync::Mutex;
use std::time::Instant;

use crate::state::{self, code, write, Handles};
use crate::status::{self, CuResult};

struct Stream;

struct Event {
    recorded: Mutex<Option<Instant>>,
}

static STREAMS: Handles<Stream> = Handles::new();
static EVENTS: Handles<Event> = Handles::new();

/// A stream argument: null (the default stream) or a live stream.
pub fn check_stream(stream: *mut c_void) -> Result<(), CuResult> {
    state::device()?;
    if stream.is_null() {
        return Ok(());
    }
    STREAMS.get(stream).map(|_| ())
}

/// `cuStreamCreate` (any flags: there is nothing to block on).
///
/// # Safety
/// `stream` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut *mut c_void, _flags: c_uint) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(state::device().and_then(|_| unsafe { write(stream, STREAMS.insert(Stream)) }))
}

/// `cuStreamDestroy_v2`.
#[no_mangle]
pub extern "C" fn cuStreamDestroy_v2(stream: *mut c_void) -> CuResult {
    code(state::device().and_then(|_| STREAMS.remove(stream)))
}

/// `cuStreamSynchronize`: everything issued has already run.
#[no_mangle]
pub extern "C" fn cuStreamSynchronize(stream: *mut c_void) -> CuResult {
    code(check_stream(stream))
}

/// `cuStreamWaitEvent`: work is complete when issued, so there is nothing to wait for.
#[no_mangle]
pub extern "C" fn cuStreamWaitEvent(stream: *mut c_void, event: *mut c_void, _flags: c_uint) -> CuResult {
    code(check_stream(stream).and_then(|()| EVENTS.get(event).map(|_| ())))
}

/// `cuEventCreate`.
///
/// # Safety
/// `event` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(event: *mut *mut c_void, _flags: c_uint) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(state::device().and_then(|_| unsafe { write(event, EVENTS.insert(Event { recorded: Mutex::new(None) })) }))
}

/// `cuEventDestroy_v2`.
#[no_mangle]
pub extern "C" fn cuEventDestroy_v2(event: *mut c_void) -> CuResult {
    code(state::device().and_then(|_| EVENTS.remove(event)))
}

/// `cuEventRecord`.
#[no_mangle]
pub extern "C" fn cuEventRecord(event: *mut c_void, stream: *mut c_void) -> CuResult {
    code(check_stream(stream).and_then(|()| {
        let e = EVENTS.get(event)?;
        *e.recorded.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Ok(())
    }))
}

/// `cuEventSynchronize`.
#[no_mangle]
pub extern "C" fn cuEventSynchronize(event: *mut c_void) -> CuResult {
    code(state::device().and_then(|_| EVENTS.get(event).map(|_| ())))
}

/// `cuEventQuery`: a recorded event is complete; one never recorded is too (as in CUDA).
#[no_mangle]
pub extern "C" fn cuEventQuery(event: *mut c_void) -> CuResult {
    code(state::device().and_then(|_| EVENTS.get(event).map(|_| ())))
}

/// # Safety
/// `ms` must be writable.
unsafe fn elapsed(ms: *mut f32, start: *mut c_void, end: *mut c_void) -> Result<(), CuResult> {
    state::device()?;
    let at = |h| -> Result<Instant, CuResult> {
        let e = EVENTS.get(h)?;
        let t = *e.recorded.lock().unwrap_or_else(|p| p.into_inner());
        // CUDA: an event that was never recorded cannot be timed.
        t.ok_or(status::INVALID_HANDLE)
    };
    let (s, e) = (at(start)?, at(end)?);
    let d = e.checked_duration_since(s).unwrap_or_default();
    // SAFETY: forwarded from the caller.
    unsafe { write(ms, d.as_secs_f64() as f32 * 1e3) }
}

/// `cuEventElapsedTime` (CUDA 12 name).
///
/// # Safety
/// `ms` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, start: *mut c_void, end: *mut c_void) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(unsafe { elapsed(ms, start, end) })
}

/// `cuEventElapsedTime_v2` (CUDA 13 name).
///
/// # Safety
/// `ms` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, start: *mut c_void, end: *mut c_void) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(unsafe { elapsed(ms, start, end) })
}
