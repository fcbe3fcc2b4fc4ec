//! The one door for atomics and cells.
//!
//! Every atomic, fence and shared cell used by the ring protocols comes from here, so that
//! `RUSTFLAGS="--cfg loom"` swaps them all for loom's model-checked versions at once
//! (crossbeam's `primitive` module does the same). Code outside this module never names
//! `std::sync::atomic` directly.
#![allow(unsafe_code)]

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::Arc;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `std::cell::UnsafeCell` with loom's closure API, so the ring code is written once.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Views `len` bytes at `ptr` as 64-bit atomic words (std only: loom cannot model raw memory).
///
/// # Safety
/// `ptr` must be 8-byte aligned and valid for reads and writes of `len` bytes for `'a`, `len`
/// must be a multiple of 8, and every other access to that memory during `'a`, from this or
/// any other process, must be atomic.
#[cfg(not(loom))]
#[inline]
pub(crate) unsafe fn atomic_words<'a>(ptr: *mut u8, len: usize) -> &'a [AtomicU64] {
    debug_assert!((ptr as usize).is_multiple_of(8) && len.is_multiple_of(8));
    // SAFETY: AtomicU64 has the size and (on x86_64 and aarch64) the alignment of u64; the
    // caller guarantees alignment, validity for 'a and atomic-only access by everyone else.
    unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU64>(), len / 8) }
}
