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

/// Stores `bytes` into `words` (little-endian), zero-filling the last partial word: how every
/// byte of shared memory is written, one relaxed atomic word at a time.
pub(crate) fn store_bytes(words: &[AtomicU64], bytes: &[u8]) {
    let mut chunks = bytes.chunks_exact(8);
    for (word, chunk) in words.iter().zip(&mut chunks) {
        word.store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        words[bytes.len() / 8].store(u64::from_le_bytes(last), Ordering::Relaxed);
    }
}

/// Loads `out.len()` bytes from `words` (little-endian), one relaxed atomic word at a time.
pub(crate) fn load_bytes(words: &[AtomicU64], out: &mut [u8]) {
    let full_words = out.len() / 8;
    let mut chunks = out.chunks_exact_mut(8);
    for (word, chunk) in words.iter().zip(&mut chunks) {
        chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let last = words[full_words].load(Ordering::Relaxed).to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}
