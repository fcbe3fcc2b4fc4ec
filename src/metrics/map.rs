//! The counters file's mapping: the only place in [`crate::metrics`] that turns raw pointers into
//! accesses. Everything else names byte offsets.
#![allow(unsafe_code)]

use core::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapRaw;

/// A page-aligned shared mapping of a counters file (or of anonymous memory).
///
/// memmap2's [`MmapRaw`] never hands out references, only pointers; this type hands out exactly
/// three kinds of access, each bounds-checked: atomic 8-byte words (values and the state word),
/// plain copies out of metadata bytes that are immutable once published, and plain copies in
/// while the mapping is still exclusively owned (`&mut self`, before publication).
pub(super) struct Mapping {
    raw: MmapRaw,
    writable: bool,
}

impl Mapping {
    /// Wraps a read-write shared mapping.
    pub(super) fn writable(raw: MmapRaw) -> Self {
        Self { raw, writable: true }
    }

    /// Wraps a read-only mapping: only loads and copies out are allowed.
    pub(super) fn read_only(raw: MmapRaw) -> Self {
        Self { raw, writable: false }
    }

    /// Length of the mapping in bytes.
    pub(super) fn len(&self) -> usize {
        self.raw.len()
    }

    /// The 8-byte word at `offset`, for atomic writes.
    ///
    /// # Panics
    /// If the mapping is read-only, or the word is out of bounds or misaligned (offsets are
    /// computed from a validated record index, so this is a bug).
    #[inline]
    pub(super) fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(
            self.writable
                && offset.is_multiple_of(8)
                && offset.checked_add(8).is_some_and(|end| end <= self.len()),
            "counters mapping: word at {offset} is not writable in {} bytes",
            self.len()
        );
        // SAFETY: [offset, offset + 8) is inside the mapping and 8-aligned (checked above; the
        // mapping is page-aligned), the mapping is writable and lives as long as `&self`, and
        // every access to this word, in any process, is atomic (the layout reserves it for that).
        unsafe { AtomicU64::from_ptr(self.raw.as_mut_ptr().add(offset).cast::<u64>()) }
    }

    /// Loads the 8-byte word at `offset` with Relaxed ordering, also on a read-only mapping.
    ///
    /// # Panics
    /// If the word is out of bounds or misaligned.
    #[inline]
    pub(super) fn load_relaxed(&self, offset: usize) -> u64 {
        self.load_word(offset).load(Ordering::Relaxed)
    }

    /// The word at `offset` for loading (Relaxed only).
    #[inline]
    fn load_word(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset.checked_add(8).is_some_and(|end| end <= self.len()),
            "counters mapping: word at {offset} is outside {} bytes",
            self.len()
        );
        // SAFETY: in bounds and 8-aligned (checked above), live for `&self`, and only ever
        // accessed atomically. On a read-only mapping the one caller only loads, with Relaxed, a
        // pointer-sized atomic (64-bit targets, asserted in the module root): the kind
        // of load std documents as allowed on read-only memory.
        unsafe { AtomicU64::from_ptr(self.raw.as_mut_ptr().add(offset).cast::<u64>()) }
    }

    /// Copies `dst.len()` bytes starting at `offset` out of the mapping.
    ///
    /// Callers copy only metadata, which nobody writes once the file is published; the words
    /// stored after publication (the header's state, heartbeat and interval, every record's
    /// value) are read with [`load_relaxed`](Self::load_relaxed). Debug builds check that a
    /// copy overlaps none of them ([`overlaps_live_word`]).
    ///
    /// # Panics
    /// If the range is out of bounds.
    pub(super) fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        debug_assert!(
            !overlaps_live_word(offset, dst.len()),
            "counters mapping: a plain copy of {} bytes at {offset} overlaps a word the daemon \
             stores after publication",
            dst.len()
        );
        assert!(
            offset.checked_add(dst.len()).is_some_and(|end| end <= self.len()),
            "counters mapping: {} bytes at {offset} are outside {} bytes",
            dst.len(),
            self.len()
        );
        // SAFETY: the source range is inside the live mapping (checked above), `dst` is a distinct
        // local buffer, and the bytes are metadata that nobody writes once the file is published
        // (no word stored after publication is in the range: checked in debug builds above;
        // in this process writes need `&mut self`).
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.raw.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
    }

    /// Copies `src` into the mapping at `offset`, before publication.
    ///
    /// # Panics
    /// If the mapping is read-only or the range is out of bounds.
    pub(super) fn write_bytes(&mut self, offset: usize, src: &[u8]) {
        assert!(
            self.writable && offset.checked_add(src.len()).is_some_and(|end| end <= self.len()),
            "counters mapping: {} bytes at {offset} are not writable in {} bytes",
            src.len(),
            self.len()
        );
        // SAFETY: the range is inside the live, writable mapping (checked above), `src` is a
        // distinct buffer, and `&mut self` means no other access from this process is in flight;
        // other processes ignore the bytes until the state word is published.
        unsafe {
            core::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.raw.as_mut_ptr().add(offset),
                src.len(),
            )
        };
    }
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("len", &self.len())
            .field("writable", &self.writable)
            .finish()
    }
}

/// Whether the bytes `offset..offset + len` of a counters file overlap a word that its
/// writer stores after publication: the header's state, heartbeat and interval words, or a
/// record's value. Those are read atomically; a plain copy of them races with the stores.
pub(super) fn overlaps_live_word(offset: usize, len: usize) -> bool {
    use super::layout::{
        HEADER_BYTES, HEARTBEAT_OFFSET, INTERVAL_OFFSET, RECORD_BYTES, STATE_OFFSET, VALUE_OFFSET,
    };
    let end = offset.saturating_add(len);
    let hits = |word: usize| len > 0 && offset < word + 8 && word < end;
    if [STATE_OFFSET, HEARTBEAT_OFFSET, INTERVAL_OFFSET].into_iter().any(hits) {
        return true;
    }
    if len == 0 || end <= HEADER_BYTES {
        return false;
    }
    // The value word of every record the range touches.
    let first = offset.saturating_sub(HEADER_BYTES) / RECORD_BYTES;
    let last = (end - 1 - HEADER_BYTES) / RECORD_BYTES;
    (first..=last).any(|i| hits(HEADER_BYTES + i * RECORD_BYTES + VALUE_OFFSET))
}
