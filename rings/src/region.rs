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

/// The structure a region holds. A region holds one at a time: each layout accesses every
/// byte at one size (see the atomics door), and two layouts over one region would race
/// accesses of different sizes, which Rust forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutKind {
    /// A shared-memory SPSC ring ([`crate::spsc::shm`]).
    SpscRing,
    /// A tensor-pool header ring ([`crate::seqlock`]).
    HeaderRing,
    /// A tensor-pool payload pool ([`crate::seqlock`]).
    PayloadPool,
}

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
    /// `as_ptr()` must return the same pointer for as long as the value lives, valid for reads
    /// of `len()` bytes, and for writes too unless [`read_only`](Self::read_only) says `true`;
    /// that memory must be accessed only through the protocol of the structure laid out in it
    /// ([`crate::spsc::shm`], [`crate::seqlock`]), in this or other processes. Values that
    /// share memory must either start at the same address (the crate then keeps them to one
    /// layout) or never be given different layouts.
    pub unsafe trait Region {
        /// First byte of the region.
        fn as_ptr(&self) -> *mut u8;
        /// Size of the region in bytes.
        fn len(&self) -> usize;
        /// Whether the memory may only be read (a `PROT_READ` mapping, as tensor-pool
        /// consumers map the driver's files). On such a region the crate only ever makes
        /// `Relaxed` atomic loads of 8-byte words and byte copies out (the accesses Rust
        /// documents as sound on read-only memory), ordering them with fences; everything
        /// that would write ([`crate::seqlock::Stream::create`],
        /// [`Stream::touch`](crate::seqlock::Stream::touch),
        /// [`Publisher`](crate::seqlock::Publisher), either end of a [`crate::spsc::shm`]
        /// ring) refuses it. Default `false`.
        fn read_only(&self) -> bool {
            false
        }
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
        fn read_only(&self) -> bool {
            (**self).read_only()
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

    /// Regions of this process with a layout, by first-byte address: the layout and how many
    /// handles hold it.
    static LAYOUTS: std::sync::Mutex<Vec<(usize, super::LayoutKind, usize)>> =
        std::sync::Mutex::new(Vec::new());

    /// A handle's hold on the layout of its region; released on drop. A region whose first
    /// byte another layout holds is refused, so this crate never lays two structures over one
    /// region (an implementor of [`Region`] that hands out overlapping ranges of one memory as
    /// distinct regions must keep them to one layout itself). A handle that is leaked
    /// (`mem::forget`) keeps its region's layout for the life of the process.
    #[derive(Debug)]
    pub(crate) struct LayoutClaim {
        base: usize,
    }

    impl LayoutClaim {
        /// Claims `region` for `layout`, or says which layout holds it.
        pub(crate) fn take<R: Region + ?Sized>(
            region: &R,
            layout: super::LayoutKind,
        ) -> Result<Self, super::LayoutKind> {
            let base = region.as_ptr() as usize;
            let mut held = LAYOUTS.lock().unwrap_or_else(|e| e.into_inner());
            match held.iter_mut().find(|(b, _, _)| *b == base) {
                Some((_, other, _)) if *other != layout => return Err(*other),
                Some((_, _, count)) => *count += 1,
                None => held.push((base, layout, 1)),
            }
            Ok(Self { base })
        }
    }

    impl Drop for LayoutClaim {
        fn drop(&mut self) {
            let mut held = LAYOUTS.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = held.iter().position(|(b, _, _)| *b == self.base) {
                held[i].2 -= 1;
                if held[i].2 == 0 {
                    held.swap_remove(i);
                }
            }
        }
    }

    // SAFETY: a shared borrow keeps the region alive and unmoved for as long as it lives.
    unsafe impl<R: Region + ?Sized> Region for &R {
        fn as_ptr(&self) -> *mut u8 {
            (**self).as_ptr()
        }
        fn len(&self) -> usize {
            (**self).len()
        }
        fn read_only(&self) -> bool {
            (**self).read_only()
        }
    }
}

#[cfg(not(loom))]
pub use std_region::*;

#[cfg(loom)]
mod loom_region {
    use crate::sync::{Arc, AtomicU64};

    /// Under loom, a region is a vector of model atomics (loom cannot model raw memory): one
    /// word per 8 bytes.
    pub trait Region {
        /// The region's words.
        fn words(&self) -> Arc<Vec<AtomicU64>>;
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
        len: usize,
    }

    impl HeapRegion {
        /// Allocates `len` zeroed bytes (a multiple of 8).
        pub fn new(len: usize) -> Self {
            let words = (0..len / 8).map(|_| AtomicU64::new(0)).collect();
            Self { words: Arc::new(words), len }
        }
    }

    impl Region for HeapRegion {
        fn words(&self) -> Arc<Vec<AtomicU64>> {
            self.words.clone()
        }
        fn len(&self) -> usize {
            self.len
        }
    }

    /// Alignment of a region's first byte (always met under loom).
    pub const REGION_ALIGN: usize = 64;

    /// Under loom every model builds its own regions: no registry to keep.
    #[derive(Debug)]
    pub(crate) struct LayoutClaim;

    impl LayoutClaim {
        pub(crate) fn take<R: Region + ?Sized>(
            _region: &R,
            _layout: super::LayoutKind,
        ) -> Result<Self, super::LayoutKind> {
            Ok(Self)
        }
    }
}

#[cfg(loom)]
pub use loom_region::*;
