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
//! Tensor payloads are different: frames of MiB, where a word loop costs 2-3x `memcpy` (LLVM
//! never merges or vectorises atomic accesses). [`store_payload`] and [`load_payload`] copy
//! them with one `rep movsb` in inline assembly on x86_64, which runs at `memcpy` speed. The
//! Rust memory model treats an `asm!` block as an operation whose effect must be expressible
//! as Rust code, and what `rep movsb` does is expressible as relaxed *byte-wise* atomic loads
//! and stores (each byte it reads is a value some store wrote: x86 byte accesses are
//! single-copy atomic), the "byte-wise atomic memcpy" of C++ proposal P1478.
//!
//! That argument holds only if the bytes it races with are accessed at the same granularity:
//! Rust forbids racing atomic accesses of different sizes. So each kind of memory has one
//! granularity, and nothing hands out another:
//!
//! | memory | accessed as |
//! |---|---|
//! | ring positions, role words, wait word, ring slots, ring header | `AtomicU64` |
//! | superblocks, header-ring slots (`seq_commit`, slot header) | `AtomicU64` |
//! | payload-pool slots | bytes (`rep movsb`) on x86_64; `AtomicU64` words elsewhere and under Miri |
//!
//! Payload bytes never meet a word access because a region holds one layout at a time (the
//! layout claim of [`crate::region`]), the pool's superblock and slots are disjoint bytes, and
//! no API hands out a payload slot as words. Readers only ever see a torn copy as the
//! protocol around it decides (the seqlock re-check); nothing relies on atomicity wider than
//! one access. Miri and loom, which cannot run inline assembly, take the word path on both
//! sides.
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

/// Stores `bytes` into `words` (little-endian), zero-filling the last partial word: how every
/// byte of word-granular shared memory is written, one relaxed atomic word at a time.
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

/// Loads `out.len()` bytes from word-granular shared memory into private memory, one relaxed
/// atomic word at a time.
///
/// # Panics
/// If `words` holds fewer than `out.len()` bytes.
#[inline]
pub(crate) fn load_bytes(words: &[AtomicU64], out: &mut [u8]) {
    assert!(
        out.len() <= words.len() * 8,
        "load_bytes: {} bytes from {} words",
        out.len(),
        words.len()
    );
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

#[cfg_attr(loom, allow(dead_code))]
/// Loads `out.len()` payload bytes starting at byte `offset` of `words` into private memory
/// (payload granularity: see the module doc).
///
/// # Panics
/// If the range is not inside `words`.
#[inline]
pub(crate) fn load_payload(words: &[AtomicU64], offset: usize, out: &mut [u8]) {
    check_range("load_payload", words, offset, out.len());
    if out.is_empty() {
        return;
    }
    #[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
    {
        // SAFETY: the source is `out.len()` bytes at `offset` inside `words` (checked above)
        // and the destination is `out`, a unique borrow of private memory: no overlap. What
        // the instruction does to the source is a byte-wise atomic load (module doc: payload
        // bytes are accessed at no other granularity), which `AtomicU64`'s interior
        // mutability permits through `&`. Direction flag: clear on entry (ABI).
        unsafe {
            core::arch::asm!(
                "rep movsb",
                inout("rcx") out.len() => _,
                inout("rsi") words.as_ptr().cast::<u8>().wrapping_add(offset) => _,
                inout("rdi") out.as_mut_ptr() => _,
                options(nostack, preserves_flags)
            );
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
    load_words_at(words, offset, out);
}

#[cfg_attr(loom, allow(dead_code))]
/// Stores `bytes` as payload at byte `offset` of `words`, leaving every other byte as it was.
/// For the single writer of the words only (payload granularity: see the module doc).
///
/// # Panics
/// If the range is not inside `words`.
#[inline]
pub(crate) fn store_payload(words: &[AtomicU64], offset: usize, bytes: &[u8]) {
    check_range("store_payload", words, offset, bytes.len());
    if bytes.is_empty() {
        return;
    }
    #[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
    {
        // SAFETY: the destination is `bytes.len()` bytes at `offset` inside `words` (checked
        // above), interior-mutable atomic memory written byte-wise atomically (module doc);
        // the source is a shared borrow of private memory, which cannot overlap shared memory
        // held as atomics. Direction flag: clear on entry (ABI).
        unsafe {
            core::arch::asm!(
                "rep movsb",
                inout("rcx") bytes.len() => _,
                inout("rsi") bytes.as_ptr() => _,
                inout("rdi") words.as_ptr().cast::<u8>().cast_mut().wrapping_add(offset) => _,
                options(nostack, preserves_flags)
            );
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
    store_words_at(words, offset, bytes);
}

#[cfg_attr(loom, allow(dead_code))]
fn check_range(what: &str, words: &[AtomicU64], offset: usize, len: usize) {
    let end = offset.checked_add(len).filter(|&end| end <= words.len() * 8);
    assert!(end.is_some(), "{what}: {len} bytes at {offset} in {} words", words.len());
}

/// The word path of [`load_payload`] (Miri, loom, other targets).
#[cfg_attr(all(target_arch = "x86_64", not(miri), not(loom), not(test)), allow(dead_code))]
fn load_words_at(words: &[AtomicU64], offset: usize, out: &mut [u8]) {
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

/// The word path of [`store_payload`]: partial words at either end are read, merged and
/// stored (the single writer's own words).
#[cfg_attr(all(target_arch = "x86_64", not(miri), not(loom), not(test)), allow(dead_code))]
fn store_words_at(words: &[AtomicU64], offset: usize, bytes: &[u8]) {
    let mut at = offset;
    let mut done = 0;
    while done < bytes.len() {
        let skip = at % 8;
        let n = (8 - skip).min(bytes.len() - done);
        let word = &words[at / 8];
        let value = if n == 8 {
            u64::from_le_bytes(bytes[done..done + 8].try_into().expect("8 bytes"))
        } else {
            let mut image = word.load(Ordering::Relaxed).to_le_bytes();
            image[skip..skip + n].copy_from_slice(&bytes[done..done + n]);
            u64::from_le_bytes(image)
        };
        word.store(value, Ordering::Relaxed);
        done += n;
        at += n;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn words_round_trip_every_length() {
        for len in [0usize, 1, 7, 8, 9, 63, 64, 511, 512, 517, 4096 + 3] {
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

    /// Both payload paths (the asm one where it exists, and the word one every target has)
    /// copy exactly the range, at any offset and length.
    #[test]
    fn payload_ranges_at_any_offset_touch_only_their_bytes() {
        type Store = fn(&[AtomicU64], usize, &[u8]);
        type Load = fn(&[AtomicU64], usize, &mut [u8]);
        let paths: [(&str, Store, Load); 2] =
            [("payload", store_payload, load_payload), ("words", store_words_at, load_words_at)];
        for (name, store, load) in paths {
            let w = words(80);
            let all: Vec<u8> = (0..640).map(|i| (i % 251) as u8).collect();
            store_bytes(&w, &all);
            for (offset, len) in
                [(0, 0), (3, 2), (5, 3), (7, 9), (8, 8), (13, 560), (1, 600), (600, 40), (640, 0)]
            {
                let len = len.min(640 - offset);
                let mut out = vec![0u8; len];
                load(&w, offset, &mut out);
                assert_eq!(out, &all[offset..offset + len], "{name}: load {offset}+{len}");
                let fresh: Vec<u8> = (0..len).map(|i| (i as u8) ^ 0xA5).collect();
                store(&w, offset, &fresh);
                let mut back = vec![0u8; 640];
                load_bytes(&w, &mut back);
                assert_eq!(&back[..offset], &all[..offset], "{name}: before {offset}+{len}");
                assert_eq!(&back[offset..offset + len], &fresh[..], "{name}: range {offset}+{len}");
                assert_eq!(
                    &back[offset + len..],
                    &all[offset + len..],
                    "{name}: after {offset}+{len}"
                );
                store_bytes(&w, &all);
            }
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

    #[test]
    #[should_panic(expected = "load_payload: 4 bytes at 6 in 1 words")]
    fn a_payload_range_past_the_words_panics_instead_of_overrunning() {
        load_payload(&words(1), 6, &mut [0; 4]);
    }
}
