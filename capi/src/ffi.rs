//! The exported functions (declared in `include/corelane_alloc.h`).
//!
//! A `cl_alloc_tracker *` is a pointer to an [`AllocTracker`]: the process-wide one
//! ([`cl_alloc_tracker_global`], never freed) or one made by [`cl_alloc_tracker_new`] (freed
//! by [`cl_alloc_tracker_free`]). The caller's obligation, for every function taking one: the
//! pointer is null or came from those two functions and, if from `new`, was not freed yet,
//! and no call on it runs concurrently with its `free`.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use corelane::alloc::tracker::AllocTracker;
use corelane::alloc::{BufferType, KernelKind};

/// The opaque tracker type of the header.
pub type ClAllocTracker = AllocTracker;

/// Returned by the reporting functions: the report was queued.
pub const CL_ALLOC_OK: c_int = 0;
/// Returned by the reporting functions: a null tracker, or an argument out of range (device
/// not in 0..=255, unknown buffer type or kernel kind); nothing was reported.
pub const CL_ALLOC_EINVAL: c_int = -1;

/// Runs `f`, turning a panic into `fallback` (no unwinding crosses the C boundary).
fn guard<R>(fallback: R, f: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// The tracker behind `t`, if not null.
///
/// # Safety
///
/// `t` is null or a live tracker pointer (see the module docs).
unsafe fn tracker<'a>(t: *const ClAllocTracker) -> Option<&'a AllocTracker> {
    // SAFETY: the caller promises `t` is null or points to a live AllocTracker (from
    // `cl_alloc_tracker_global`, 'static, or `cl_alloc_tracker_new`, not freed yet).
    unsafe { t.as_ref() }
}

/// The process-wide tracker, or NULL when `TT_ALLOC_TRACKING_ENABLED` is not exactly "1"
/// (then no connection is ever attempted). Never free it.
#[no_mangle]
pub extern "C" fn cl_alloc_tracker_global() -> *const ClAllocTracker {
    guard(std::ptr::null(), || {
        AllocTracker::global().map_or(std::ptr::null(), |t| t as *const AllocTracker)
    })
}

/// A new tracker reporting to the daemon's native socket at `socket_path` (a NUL-terminated
/// path; NULL: the daemon's default socket). It connects lazily, from a background thread.
/// NULL only if `socket_path` is not valid UTF-8.
///
/// # Safety
///
/// `socket_path` is NULL or a NUL-terminated string readable for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn cl_alloc_tracker_new(socket_path: *const c_char) -> *mut ClAllocTracker {
    let path = if socket_path.is_null() {
        None
    } else {
        // SAFETY: not null, and the caller promises a NUL-terminated string that stays
        // readable during this call (it is copied before returning).
        let s = unsafe { CStr::from_ptr(socket_path) };
        match s.to_str() {
            Ok(s) => Some(s.to_owned()),
            Err(_) => return std::ptr::null_mut(),
        }
    };
    guard(std::ptr::null_mut(), || {
        let builder = AllocTracker::builder();
        let builder = match path {
            Some(p) => builder.socket(p),
            None => builder,
        };
        Box::into_raw(Box::new(builder.build()))
    })
}

/// Frees a tracker made by `cl_alloc_tracker_new`, after writing what it holds (at most about
/// a second when the daemon is connected). NULL and the global tracker are ignored.
///
/// # Safety
///
/// `t` is NULL, the global tracker, or from `cl_alloc_tracker_new` and not freed yet; no
/// other call on it runs concurrently or afterwards.
#[no_mangle]
pub unsafe extern "C" fn cl_alloc_tracker_free(t: *mut ClAllocTracker) {
    if t.is_null() {
        return;
    }
    // Without creating the global tracker: only one that exists can be `t`.
    let global =
        AllocTracker::global_if_made().map_or(std::ptr::null(), |g| g as *const AllocTracker);
    if std::ptr::eq(t, global) {
        return;
    }
    // SAFETY: `t` came from Box::into_raw in cl_alloc_tracker_new and is freed once (the
    // caller's obligation); nothing uses it afterwards.
    let boxed = unsafe { Box::from_raw(t) };
    guard((), move || drop(boxed));
}

/// The next sequence number: call it inside your allocator's lock, where the address is
/// decided (one atomic increment). 0 for a NULL tracker.
///
/// # Safety
///
/// `t` is NULL or a live tracker (see the module docs).
#[no_mangle]
pub unsafe extern "C" fn cl_alloc_seq(t: *const ClAllocTracker) -> u64 {
    // SAFETY: forwarded obligation on `t`.
    match unsafe { tracker(t) } {
        Some(t) => guard(0, || t.seq()),
        None => 0,
    }
}

/// Reports an allocation of `size` bytes at `addr` on `device` (`buffer_type`: 0 DRAM, 1 L1,
/// 2 SYSTEM_MEMORY, 3 L1_SMALL, 4 TRACE). Non-blocking. `CL_ALLOC_OK` or `CL_ALLOC_EINVAL`.
///
/// # Safety
///
/// `t` is NULL or a live tracker (see the module docs).
#[no_mangle]
pub unsafe extern "C" fn cl_alloc_alloc(
    t: *const ClAllocTracker,
    seq: u64,
    device: c_int,
    buffer_type: u8,
    addr: u64,
    size: u64,
) -> c_int {
    // SAFETY: forwarded obligation on `t`.
    let (Some(t), Ok(device), Some(kind)) =
        (unsafe { tracker(t) }, u8::try_from(device), BufferType::from_code(buffer_type))
    else {
        return CL_ALLOC_EINVAL;
    };
    guard(CL_ALLOC_EINVAL, || {
        t.alloc(seq, device, kind, addr, size);
        CL_ALLOC_OK
    })
}

/// Reports the free of the buffer at `addr` on `device`.
///
/// # Safety
///
/// `t` is NULL or a live tracker (see the module docs).
#[no_mangle]
pub unsafe extern "C" fn cl_alloc_free(
    t: *const ClAllocTracker,
    seq: u64,
    device: c_int,
    addr: u64,
) -> c_int {
    // SAFETY: forwarded obligation on `t`.
    let (Some(t), Ok(device)) = (unsafe { tracker(t) }, u8::try_from(device)) else {
        return CL_ALLOC_EINVAL;
    };
    guard(CL_ALLOC_EINVAL, || {
        t.free(seq, device, addr);
        CL_ALLOC_OK
    })
}

/// Reports circular buffer `cb_id` of `size` bytes on `device`.
///
/// # Safety
///
/// `t` is NULL or a live tracker (see the module docs).
#[no_mangle]
pub unsafe extern "C" fn cl_alloc_cb_alloc(
    t: *const ClAllocTracker,
    seq: u64,
    device: c_int,
    cb_id: u64,
    size: u64,
) -> c_int {
    // SAFETY: forwarded obligation on `t`.
    let (Some(t), Ok(device)) = (unsafe { tracker(t) }, u8::try_from(device)) else {
        return CL_ALLOC_EINVAL;
    };
    guard(CL_ALLOC_EINVAL, || {
        t.cb_alloc(seq, device, cb_id, size);
        CL_ALLOC_OK
    })
}

/// Reports the free of circular buffer `cb_id` on `device`.
///
/// # Safety
///
/// `t` is NULL or a live tracker (see the module docs).
#[no_mangle]
pub unsafe extern "C" fn cl_alloc_cb_free(
    t: *const ClAllocTracker,
    seq: u64,
    device: c_int,
    cb_id: u64,
) -> c_int {
    // SAFETY: forwarded obligation on `t`.
    let (Some(t), Ok(device)) = (unsafe { tracker(t) }, u8::try_from(device)) else {
        return CL_ALLOC_EINVAL;
    };
    guard(CL_ALLOC_EINVAL, || {
        t.cb_free(seq, device, cb_id);
        CL_ALLOC_OK
    })
}

/// Reports kernel `kernel_id` of `size` bytes loaded on `device` (`kind`: 0 application,
/// 1 fabric, 2 dispatch).
///
/// # Safety
///
/// `t` is NULL or a live tracker (see the module docs).
#[no_mangle]
pub unsafe extern "C" fn cl_alloc_kernel_load(
    t: *const ClAllocTracker,
    seq: u64,
    device: c_int,
    kind: u8,
    kernel_id: u64,
    size: u64,
) -> c_int {
    // SAFETY: forwarded obligation on `t`.
    let (Some(t), Ok(device), Some(kind)) =
        (unsafe { tracker(t) }, u8::try_from(device), KernelKind::from_code(kind))
    else {
        return CL_ALLOC_EINVAL;
    };
    guard(CL_ALLOC_EINVAL, || {
        t.kernel_load(seq, device, kind, kernel_id, size);
        CL_ALLOC_OK
    })
}

/// Reports kernel `kernel_id` unloaded from `device`.
///
/// # Safety
///
/// `t` is NULL or a live tracker (see the module docs).
#[no_mangle]
pub unsafe extern "C" fn cl_alloc_kernel_unload(
    t: *const ClAllocTracker,
    seq: u64,
    device: c_int,
    kernel_id: u64,
) -> c_int {
    // SAFETY: forwarded obligation on `t`.
    let (Some(t), Ok(device)) = (unsafe { tracker(t) }, u8::try_from(device)) else {
        return CL_ALLOC_EINVAL;
    };
    guard(CL_ALLOC_EINVAL, || {
        t.kernel_unload(seq, device, kernel_id);
        CL_ALLOC_OK
    })
}

/// Waits up to `timeout_ms` until everything reported so far is pushed or written. 1: done;
/// 0: timed out (no daemon, say); -1: NULL tracker.
///
/// # Safety
///
/// `t` is NULL or a live tracker (see the module docs).
#[no_mangle]
pub unsafe extern "C" fn cl_alloc_flush(t: *const ClAllocTracker, timeout_ms: u32) -> c_int {
    // SAFETY: forwarded obligation on `t`.
    let Some(t) = (unsafe { tracker(t) }) else { return -1 };
    guard(0, || c_int::from(t.flush(Duration::from_millis(u64::from(timeout_ms)))))
}

/// Reports dropped so far (the socket buffer was full). 0 for a NULL tracker.
///
/// # Safety
///
/// `t` is NULL or a live tracker (see the module docs).
#[no_mangle]
pub unsafe extern "C" fn cl_alloc_dropped(t: *const ClAllocTracker) -> u64 {
    // SAFETY: forwarded obligation on `t`.
    match unsafe { tracker(t) } {
        Some(t) => guard(0, || t.stats().dropped),
        None => 0,
    }
}
