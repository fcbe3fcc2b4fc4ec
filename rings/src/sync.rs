//! The one door for atomics and cells.
//!
//! Every atomic, fence and shared cell used by the ring protocols comes from here, so that
//! `RUSTFLAGS="--cfg loom"` swaps them all for loom's model-checked versions at once
//! (crossbeam's `primitive` module does the same). Code outside this module never names
//! `std::sync::atomic` directly.
//!
//! # Copying bytes in and out of shared memory
//!
//! Memory another process (or thread) may write at the same time is read and written only
//! atomically: a plain `memcpy` that races with a store is a data race, undefined behaviour
//! under Rust's memory model even if the torn copy is then thrown away. [`store_bytes`] and
//! [`load_bytes`] are the only two ways bytes cross that boundary. They copy as relaxed
//! `AtomicU64` word accesses, which compile to plain loads and stores on x86_64 and aarch64.
//!
//! Copies of [`BULK_COPY_MIN`] bytes or more on x86_64 use one `rep movsb` in inline assembly
//! instead, which runs at `memcpy` speed (a word loop cannot be vectorised: LLVM never merges
//! atomic accesses). This is sound for the same reason the word loop is: the Rust memory model
//! treats an `asm!` block as an operation whose effect must be expressible as Rust code, and
//! what `rep movsb` does is expressible as a sequence of relaxed byte-wise atomic loads and
//! stores (each byte it reads is a value some store wrote: x86 byte accesses are single-copy
//! atomic), the "byte-wise atomic memcpy" of C++ proposal P1478. Callers never rely on any
//! atomicity wider than a byte: a torn copy is detected by the protocol around it (seqlock
//! re-check) or is simply the peer's garbage, decoded from our private copy. Miri and loom,
//! which cannot run inline assembly, always take the word loop.
#![allow(unsafe_code)]

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::Arc;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
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
/// any other process, must be atomic (or one of the byte-wise atomic copies of this module).
#[cfg(not(loom))]
#[inline]
pub(crate) unsafe fn atomic_words<'a>(ptr: *mut u8, len: usize) -> &'a [AtomicU64] {
    debug_assert!((ptr as usize).is_multiple_of(8) && len.is_multiple_of(8));
    // SAFETY: AtomicU64 has the size and (on every target this crate builds for: 64-bit
    // atomics are required in lib.rs) the alignment of u64; the caller guarantees alignment,
    // validity for 'a and atomic-only access by everyone else.
    unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU64>(), len / 8) }
}

/// Copies of at least this many bytes take the `rep movsb` path on x86_64 (see the module doc).
/// Below it the word loop is as fast and has no start-up cost.
#[cfg_attr(any(loom, miri, not(target_arch = "x86_64")), allow(dead_code))]
pub const BULK_COPY_MIN: usize = 512;

/// Stores `bytes` into `words` (little-endian), zero-filling the last partial word: how every
/// byte of shared memory is written.
///
/// # Panics
/// If `words` holds fewer than `bytes.len()` bytes.
#[inline]
pub(crate) fn store_bytes(words: &[AtomicU64], bytes: &[u8]) {
    assert!(
        bytes.len() <= words.len() * 8,
        "store_bytes: {} bytes into {} words",
        bytes.len(),
        words.len()
    );
    let full = bytes.len() / 8 * 8;
    let (head, rest) = bytes.split_at(full);
    if !bulk_store(words, head) {
        for (word, chunk) in words.iter().zip(head.chunks_exact(8)) {
            word.store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
        }
    }
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        words[full / 8].store(u64::from_le_bytes(last), Ordering::Relaxed);
    }
}

/// Loads `out.len()` bytes from `words` (little-endian) into private memory.
///
/// # Panics
/// If `words` holds fewer than `out.len()` bytes.
#[inline]
pub(crate) fn load_bytes(words: &[AtomicU64], out: &mut [u8]) {
    load_range(words, 0, out);
}

/// Loads `out.len()` bytes starting at byte `offset` of `words` into private memory.
///
/// # Panics
/// If the range is not inside `words`.
#[inline]
pub(crate) fn load_range(words: &[AtomicU64], offset: usize, out: &mut [u8]) {
    let end = offset.checked_add(out.len()).filter(|&end| end <= words.len() * 8);
    assert!(
        end.is_some(),
        "load_bytes: {} bytes at {offset} from {} words",
        out.len(),
        words.len()
    );
    if bulk_load(words, offset, out) {
        return;
    }
    if !offset.is_multiple_of(8) {
        return load_unaligned(words, offset, out);
    }
    let words = &words[offset / 8..];
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

#[cold]
fn load_unaligned(words: &[AtomicU64], offset: usize, out: &mut [u8]) {
    let mut at = offset;
    let mut done = 0;
    while done < out.len() {
        let word = words[at / 8].load(Ordering::Relaxed).to_le_bytes();
        let skip = at % 8;
        let n = (8 - skip).min(out.len() - done);
        out[done..done + n].copy_from_slice(&word[skip..skip + n]);
        done += n;
        at += n;
    }
}

#[cfg_attr(loom, allow(dead_code))]
/// Stores `bytes` at byte `offset` of `words`, leaving every other byte as it was. For the
/// single writer of the words only: partial words at either end are read, merged and stored.
///
/// # Panics
/// If the range is not inside `words`.
pub(crate) fn store_range(words: &[AtomicU64], offset: usize, bytes: &[u8]) {
    let end = offset.checked_add(bytes.len()).filter(|&end| end <= words.len() * 8);
    assert!(
        end.is_some(),
        "store_bytes: {} bytes at {offset} into {} words",
        bytes.len(),
        words.len()
    );
    let mut at = offset;
    let mut rest = bytes;
    // A partial first word.
    if !at.is_multiple_of(8) && !rest.is_empty() {
        let n = (8 - at % 8).min(rest.len());
        merge(&words[at / 8], at % 8, &rest[..n]);
        at += n;
        rest = &rest[n..];
    }
    let full = rest.len() / 8 * 8;
    let (middle, tail) = rest.split_at(full);
    let aligned = &words[at / 8..];
    if !bulk_store(aligned, middle) {
        for (word, chunk) in aligned.iter().zip(middle.chunks_exact(8)) {
            word.store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
        }
    }
    if !tail.is_empty() {
        merge(&words[(at + full) / 8], 0, tail);
    }
}

/// Replaces bytes `skip..skip + bytes.len()` of one word (single writer).
#[cfg_attr(loom, allow(dead_code))]
fn merge(word: &AtomicU64, skip: usize, bytes: &[u8]) {
    let mut image = word.load(Ordering::Relaxed).to_le_bytes();
    image[skip..skip + bytes.len()].copy_from_slice(bytes);
    word.store(u64::from_le_bytes(image), Ordering::Relaxed);
}

/// `rep movsb` from `words` into `out` if the copy is large enough to pay for it; false if
/// the caller must copy word by word.
#[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
#[inline]
fn bulk_load(words: &[AtomicU64], offset: usize, out: &mut [u8]) -> bool {
    if out.len() < BULK_COPY_MIN {
        return false;
    }
    // SAFETY: the source is `out.len()` bytes at `offset` inside `words` (asserted by the
    // caller) and the destination is `out`, a unique borrow of private memory: no overlap.
    // What the instruction does to the source is a byte-wise atomic load (module doc), and
    // `AtomicU64` permits that shared access through `&`. Direction flag: the ABI guarantees it
    // is clear on entry to the block.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            inout("rcx") out.len() => _,
            inout("rsi") words.as_ptr().cast::<u8>().wrapping_add(offset) => _,
            inout("rdi") out.as_mut_ptr() => _,
            options(nostack, preserves_flags)
        );
    }
    true
}

/// `rep movsb` from `bytes` into `words` (whole words only); false if the caller must copy
/// word by word.
#[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
#[inline]
fn bulk_store(words: &[AtomicU64], bytes: &[u8]) -> bool {
    if bytes.len() < BULK_COPY_MIN {
        return false;
    }
    debug_assert!(bytes.len().is_multiple_of(8));
    // SAFETY: the destination is `bytes.len()` bytes inside `words` (asserted by the caller),
    // interior-mutable atomic memory, written byte-wise atomically (module doc); the source is
    // a shared borrow of private memory that cannot overlap shared memory we hold as atomics.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            inout("rcx") bytes.len() => _,
            inout("rsi") bytes.as_ptr() => _,
            inout("rdi") words.as_ptr().cast::<u8>().cast_mut() => _,
            options(nostack, preserves_flags)
        );
    }
    true
}

#[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
#[inline(always)]
fn bulk_load(_words: &[AtomicU64], _offset: usize, _out: &mut [u8]) -> bool {
    false
}

#[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
#[inline(always)]
fn bulk_store(_words: &[AtomicU64], _bytes: &[u8]) -> bool {
    false
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn round_trips_every_length_across_the_bulk_threshold() {
        for len in
            [0, 1, 7, 8, 9, 63, 64, BULK_COPY_MIN - 1, BULK_COPY_MIN, BULK_COPY_MIN + 5, 4096 + 3]
        {
            let w = words(len.div_ceil(8) + 1);
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            store_bytes(&w, &bytes);
            let mut out = vec![0u8; len];
            load_bytes(&w, &mut out);
            assert_eq!(out, bytes, "len {len}");
            // The partial last word is zero-filled, and nothing past it is touched.
            if len % 8 != 0 {
                let last = w[len / 8].load(Ordering::Relaxed).to_le_bytes();
                assert!(last[len % 8..].iter().all(|&b| b == 0), "len {len}");
            }
            assert_eq!(w[len.div_ceil(8)].load(Ordering::Relaxed), 0, "len {len}: overrun");
        }
    }

    #[test]
    fn ranges_at_any_offset_touch_only_their_bytes() {
        let w = words(80);
        let all: Vec<u8> = (0..640).map(|i| (i % 251) as u8).collect();
        store_bytes(&w, &all);
        for (offset, len) in
            [(0, 0), (3, 2), (5, 3), (7, 9), (8, 8), (13, 700 - 140), (1, 600), (600, 40)]
        {
            let len = len.min(640 - offset);
            let mut out = vec![0u8; len];
            load_range(&w, offset, &mut out);
            assert_eq!(out, &all[offset..offset + len], "load {offset}+{len}");
            let fresh: Vec<u8> = (0..len).map(|i| (i as u8) ^ 0xA5).collect();
            store_range(&w, offset, &fresh);
            let mut back = vec![0u8; 640];
            load_bytes(&w, &mut back);
            assert_eq!(&back[..offset], &all[..offset], "before {offset}+{len}");
            assert_eq!(&back[offset..offset + len], &fresh[..], "range {offset}+{len}");
            assert_eq!(&back[offset + len..], &all[offset + len..], "after {offset}+{len}");
            store_bytes(&w, &all);
        }
    }

    #[test]
    fn words_are_little_endian() {
        let w = words(1);
        store_bytes(&w, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(w[0].load(Ordering::Relaxed), 0x0807_0605_0403_0201);
    }

    #[test]
    #[should_panic(expected = "store_bytes: 9 bytes into 1 words")]
    fn a_copy_larger_than_the_words_panics_instead_of_overrunning() {
        store_bytes(&words(1), &[0; 9]);
    }
}
