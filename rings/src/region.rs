//! Byte regions that hold shared structures: the [`Region`] contract and a heap-backed one.
#![allow(unsafe_code)]

use core::fmt;
use core::ptr::NonNull;
use std::alloc::Layout;
use std::sync::Arc;

/// Required alignment of a region's first byte (file mappings are page-aligned).
pub const REGION_ALIGN: usize = 64;

/// A byte region shared with another thread or process: typically a shared file mapping.
///
/// # Safety
/// `as_ptr()` must return the same pointer for as long as the value lives, valid for reads and
/// writes of `len()` bytes, and that memory must be accessed only through the protocol of
/// the structure laid out in it ([`crate::spsc::shm`], [`crate::seqlock`]), in this or other
/// processes.
pub unsafe trait Region {
    /// First byte of the region.
    fn as_ptr(&self) -> *mut u8;
    /// Size of the region in bytes.
    fn len(&self) -> usize;
    /// Whether the region has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// SAFETY: an Arc keeps its value, and therefore the value's stable region, alive and unmoved.
unsafe impl<R: Region> Region for Arc<R> {
    fn as_ptr(&self) -> *mut u8 {
        (**self).as_ptr()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
}

/// A heap allocation usable as a [`Region`]: zeroed, [`REGION_ALIGN`]-aligned, fixed size.
/// For rings between threads of one process, and for tests.
pub struct HeapRegion {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl HeapRegion {
    /// Allocates `len` zeroed bytes.
    ///
    /// # Panics
    /// If `len` is zero or too large for an allocation.
    pub fn new(len: usize) -> Self {
        assert!(len > 0, "heap region must not be empty");
        let layout = Layout::from_size_align(len, REGION_ALIGN).expect("region size overflows");
        // SAFETY: layout has a non-zero size (asserted above).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else { std::alloc::handle_alloc_error(layout) };
        Self { ptr, layout }
    }
}

// SAFETY: the allocation lives, unmoved, until drop, and is only handed out as a raw pointer.
unsafe impl Region for HeapRegion {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

// SAFETY: HeapRegion is plain memory; concurrent access is governed by the ring protocol.
unsafe impl Send for HeapRegion {}
// SAFETY: as above: `&HeapRegion` only gives out a raw pointer.
unsafe impl Sync for HeapRegion {}

impl fmt::Debug for HeapRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapRegion").field("len", &self.layout.size()).finish()
    }
}

/// Bytes `[offset, offset + len)` of `region` as atomic words, or `None` if that range is out
/// of bounds or not 8-byte aligned (in address and length).
pub(crate) fn region_words<R: Region + ?Sized>(
    region: &R,
    offset: usize,
    len: usize,
) -> Option<&[crate::sync::AtomicU64]> {
    let end = offset.checked_add(len)?;
    let start = region.as_ptr().wrapping_add(offset);
    if end > region.len() || !(start as usize).is_multiple_of(8) || !len.is_multiple_of(8) {
        return None;
    }
    // SAFETY: the range is inside the region and 8-aligned (checked above); the Region contract
    // keeps it valid while `region` is borrowed and makes every access to it protocol access,
    // which in this crate is always atomic.
    Some(unsafe { crate::sync::atomic_words(start, len) })
}
