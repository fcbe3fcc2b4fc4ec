//! Byte regions that hold shared structures: the [`Region`] contract and a heap-backed one.
//!
//! # Memory a peer can resize
//!
//! A mapping whose file another process can shrink faults (`SIGBUS`) on the first access past
//! the new end: no check in this crate can prevent that, because the access is a plain load.
//! The policy of every corelane component that maps a peer's memory:
//! - memory the daemon reads on behalf of a client is a memfd the *daemon* creates, sealed
//!   with `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` before its descriptor is passed to the
//!   client (`corelane::mapping::Mapping::sealed_memfd`): the client can write the bytes but
//!   not change the size;
//! - a file or descriptor received from elsewhere is mapped only after `fstat` shows at least
//!   the length the layout needs, and only by processes that accept that the owner can still
//!   fault them (a tensor-pool consumer maps the driver's files: the driver is trusted with
//!   the files' sizes; a producer's files are the driver's to create);
//! - a region's length is fixed at construction ([`Region::len`]) and every structure checks
//!   its layout against it before the first access, so a short *file* is an error, never an
//!   access out of bounds.
#![allow(unsafe_code)]

#[cfg(not(loom))]
mod std_region {
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

    // SAFETY: a shared borrow keeps the region alive and unmoved for as long as it lives.
    unsafe impl<R: Region + ?Sized> Region for &R {
        fn as_ptr(&self) -> *mut u8 {
            (**self).as_ptr()
        }
        fn len(&self) -> usize {
            (**self).len()
        }
    }
}

#[cfg(not(loom))]
pub use std_region::*;

#[cfg(loom)]
mod loom_region {
    use crate::sync::{Arc, AtomicU32, AtomicU64};

    /// Under loom, a region is a vector of model atomics (loom cannot model raw memory): one
    /// word per 8 bytes, and the `u32` wait word of the shared-memory ring on its own.
    pub trait Region {
        /// The region's words.
        fn words(&self) -> Arc<Vec<AtomicU64>>;
        /// The wait word.
        fn wait_word(&self) -> Arc<AtomicU32>;
        /// Size in bytes.
        fn len(&self) -> usize;
        /// Whether the region has no bytes.
        fn is_empty(&self) -> bool {
            self.len() == 0
        }
    }

    /// A zeroed loom region of `len` bytes.
    #[derive(Clone, Debug)]
    pub struct HeapRegion {
        words: Arc<Vec<AtomicU64>>,
        wait: Arc<AtomicU32>,
        len: usize,
    }

    impl HeapRegion {
        /// Allocates `len` zeroed bytes (a multiple of 8).
        pub fn new(len: usize) -> Self {
            let words = (0..len / 8).map(|_| AtomicU64::new(0)).collect();
            Self { words: Arc::new(words), wait: Arc::new(AtomicU32::new(0)), len }
        }
    }

    impl Region for HeapRegion {
        fn words(&self) -> Arc<Vec<AtomicU64>> {
            self.words.clone()
        }
        fn wait_word(&self) -> Arc<AtomicU32> {
            self.wait.clone()
        }
        fn len(&self) -> usize {
            self.len
        }
    }

    /// Alignment of a region's first byte (always met under loom).
    pub const REGION_ALIGN: usize = 64;
}

#[cfg(loom)]
pub use loom_region::*;
