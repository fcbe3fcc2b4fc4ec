//! The shared-memory variant: fixed-size `Copy` records in a caller-provided byte region.
//!
//! Same index protocol as the heap queue ([`super::channel`]), but the control words and the
//! slots live inside a [`Region`] (in practice a file mapped by two processes), behind a
//! layout header that [`ShmConsumer::attach`] validates before touching anything else.
//!
//! Region layout (offsets in bytes; one definition, tested below):
//!
//! | offset | size | what | written by |
//! |---|---|---|---|
//! | 0 | 64 | [`RingHeader`]: magic, version, record size and alignment, capacity | creator, once |
//! | 128 | 8 | `tail`: producer position | producer |
//! | 136 | 8 | producer state (0 free, 1 attached, 2 detached) | producer |
//! | 256 | 8 | `head`: consumer position | consumer |
//! | 264 | 8 | consumer state | consumer |
//! | 384 | capacity × record size | slots | producer |
//!
//! The two control lines are 128 bytes apart for the same reason as [`crate::CachePadded`].
//! All words are little-endian `u64`, accessed only atomically.
//!
//! A peer that corrupts the region can make this end see garbage records (any bit pattern is
//! a valid [`Record`]) or a full/empty queue, never an access outside the region.
//!
//! ```
//! use corelane_rings::spsc::shm::{region_len, HeapRegion, ShmConsumer, ShmProducer};
//! use std::sync::Arc;
//!
//! let region = Arc::new(HeapRegion::new(region_len::<u64>(8).unwrap()));
//! let mut tx = ShmProducer::<u64, _>::create(region.clone(), 8).unwrap();
//! let mut rx = ShmConsumer::<u64, _>::attach(region).unwrap();
//! tx.push(7).unwrap();
//! assert_eq!(rx.pop(), Ok(7));
//! ```
#![allow(unsafe_code)]

use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{ConsumerCore, PopError, ProducerCore, PushError, Storage};
pub use crate::region::{HeapRegion, Region, REGION_ALIGN};
use crate::sync::{atomic_words, load_bytes, store_bytes, AtomicU64, Ordering};

/// `b"CLSPSC01"` as a little-endian u64.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"CLSPSC01");
/// Layout version written by this code; attach refuses any other.
pub const RING_LAYOUT_VERSION: u32 = 1;
/// Offset of the producer's control line.
pub const TAIL_OFFSET: usize = 128;
/// Offset of the consumer's control line.
pub const HEAD_OFFSET: usize = 256;
/// Offset of slot 0.
pub const SLOTS_OFFSET: usize = 384;

/// Records that may cross a process boundary: plain bytes, no padding, no pointers.
pub trait Record: Copy + FromBytes + IntoBytes + Immutable {}

impl<T: Copy + FromBytes + IntoBytes + Immutable> Record for T {}

/// Bytes needed for a ring of `capacity` records of `T`, or `None` on overflow.
pub fn region_len<T>(capacity: usize) -> Option<usize> {
    capacity.checked_mul(core::mem::size_of::<T>())?.checked_add(SLOTS_OFFSET)
}

/// The layout header at offset 0 of a ring region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RingHeader {
    /// [`RING_MAGIC`]; written last by the creator, so a reader that sees it sees the rest.
    pub magic: U64,
    /// [`RING_LAYOUT_VERSION`].
    pub version: U32,
    /// `size_of` one record.
    pub record_size: U32,
    /// Number of slots, a power of two.
    pub capacity: U64,
    /// `align_of` one record.
    pub record_align: U32,
    /// Zero.
    pub reserved: [u8; 36],
}

const _: () = assert!(core::mem::size_of::<RingHeader>() == 64);

/// Why a region could not be used as a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionError {
    /// The capacity is zero or not a power of two.
    Capacity(u64),
    /// The record type is zero-sized or aligned to more than [`REGION_ALIGN`].
    RecordType {
        /// `size_of` the record.
        size: usize,
        /// `align_of` the record.
        align: usize,
    },
    /// The region is shorter than the layout needs.
    TooSmall {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        len: usize,
    },
    /// The region does not start on a [`REGION_ALIGN`] boundary.
    Misaligned(usize),
    /// No ring was created in the region yet (magic is zero).
    Uninitialised,
    /// The magic is not [`RING_MAGIC`].
    Magic(u64),
    /// The layout version is not [`RING_LAYOUT_VERSION`].
    Version(u32),
    /// The ring was created for records of another size or alignment.
    RecordMismatch {
        /// `(size, align)` of the record type of this end.
        expected: (u32, u32),
        /// `(size, align)` written in the region.
        found: (u32, u32),
    },
    /// Another producer or consumer is attached.
    RoleTaken(Role),
}

/// One end of a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The writing end.
    Producer,
    /// The reading end.
    Consumer,
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Capacity(c) => write!(f, "ring capacity must be a non-zero power of two, got {c}"),
            Self::RecordType { size, align } => write!(
                f,
                "ring records must be non-empty and aligned to at most {REGION_ALIGN}, got size {size} align {align}"
            ),
            Self::TooSmall { needed, len } => {
                write!(f, "ring region too small: needs {needed} bytes, has {len}")
            }
            Self::Misaligned(addr) => {
                write!(f, "ring region must start {REGION_ALIGN}-byte aligned, starts at {addr:#x}")
            }
            Self::Uninitialised => f.write_str("no ring in region: magic is zero"),
            Self::Magic(m) => write!(f, "bad ring magic: expected {RING_MAGIC:#018x}, found {m:#018x}"),
            Self::Version(v) => {
                write!(f, "unsupported ring layout version: expected {RING_LAYOUT_VERSION}, found {v}")
            }
            Self::RecordMismatch { expected, found } => write!(
                f,
                "ring record mismatch: expected size {} align {}, found size {} align {}",
                expected.0, expected.1, found.0, found.1
            ),
            Self::RoleTaken(role) => write!(f, "ring {role:?} end is already attached"),
        }
    }
}

impl std::error::Error for RegionError {}

/// The writing end of a shared-memory ring. `Send`, not `Sync`, not `Clone`.
pub struct ShmProducer<T: Record, R: Region> {
    ring: RegionRing<T>,
    core: ProducerCore,
    _region: R,
}

/// The reading end of a shared-memory ring. `Send`, not `Sync`, not `Clone`.
pub struct ShmConsumer<T: Record, R: Region> {
    ring: RegionRing<T>,
    core: ConsumerCore,
    _region: R,
}

impl<T: Record, R: Region> ShmProducer<T, R> {
    /// Lays out a new ring of `capacity` slots in `region` and attaches as its producer.
    ///
    /// Whatever the region held is overwritten: no consumer may be attached to it.
    pub fn create(region: R, capacity: u64) -> Result<Self, RegionError> {
        if !capacity.is_power_of_two() {
            return Err(RegionError::Capacity(capacity));
        }
        let ring = RegionRing::<T>::check(&region, capacity)?;
        let header = RingHeader {
            magic: U64::new(0),
            version: U32::new(RING_LAYOUT_VERSION),
            record_size: U32::new(core::mem::size_of::<T>() as u32),
            capacity: U64::new(capacity),
            record_align: U32::new(core::mem::align_of::<T>() as u32),
            reserved: [0; 36],
        };
        let words = ring.header_words();
        words[0].store(0, Ordering::Relaxed);
        store_bytes(&words[1..], &header.as_bytes()[8..]);
        for word in
            [ring.tail(), ring.head(), ring.state(Role::Producer), ring.state(Role::Consumer)]
        {
            word.store(0, Ordering::Relaxed);
        }
        // SYNC: publishes the header, positions and states above -> Acquire load of the magic
        // in `RegionRing::attach`.
        words[0].store(RING_MAGIC, Ordering::Release);
        Self::attach(region)
    }

    /// Attaches as the producer of a ring already laid out in `region`.
    pub fn attach(region: R) -> Result<Self, RegionError> {
        let ring = RegionRing::<T>::attach(&region, Role::Producer)?;
        // SYNC: both Acquire: pair with the previous producer's and the consumer's Release
        // stores of their positions.
        let core = ProducerCore::new(
            ring.tail().load(Ordering::Acquire),
            ring.head().load(Ordering::Acquire),
        );
        Ok(Self { ring, core, _region: region })
    }

    /// Pushes one record, or hands it back if the ring is full.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), PushError<T>> {
        self.core.push(&self.ring, value).map_err(PushError::Full)
    }

    /// Copies as many of `items` as fit and publishes them at once; returns how many.
    #[inline]
    pub fn push_slice(&mut self, items: &[T]) -> usize {
        self.core.push_slice(&self.ring, items)
    }

    /// Free slots right now.
    pub fn slots(&mut self) -> usize {
        self.core.free(&self.ring, u64::MAX) as usize
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.ring.capacity as usize
    }

    /// Whether a consumer attached and then detached.
    pub fn is_abandoned(&self) -> bool {
        self.ring.is_detached(Role::Consumer)
    }
}

impl<T: Record, R: Region> ShmConsumer<T, R> {
    /// Validates the ring layout in `region` and attaches as its consumer.
    pub fn attach(region: R) -> Result<Self, RegionError> {
        let ring = RegionRing::<T>::attach(&region, Role::Consumer)?;
        // SYNC: both Acquire: pair with the previous consumer's and the producer's Release
        // stores of their positions.
        let core = ConsumerCore::new(
            ring.head().load(Ordering::Acquire),
            ring.tail().load(Ordering::Acquire),
        );
        Ok(Self { ring, core, _region: region })
    }

    /// Pops the oldest record.
    #[inline]
    pub fn pop(&mut self) -> Result<T, PopError> {
        self.core.pop(&self.ring).ok_or(PopError::Empty)
    }

    /// Copies up to `out.len()` records out and frees their slots at once; returns how many.
    #[inline]
    pub fn pop_slice(&mut self, out: &mut [T]) -> usize {
        self.core.pop_slice(&self.ring, out)
    }

    /// Records ready right now.
    pub fn len(&mut self) -> usize {
        self.core.available(&self.ring, u64::MAX) as usize
    }

    /// Whether no record is ready right now.
    pub fn is_empty(&mut self) -> bool {
        self.core.available(&self.ring, 1) == 0
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.ring.capacity as usize
    }

    /// Whether the producer detached: once the ring is empty, it stays empty.
    pub fn is_abandoned(&self) -> bool {
        self.ring.is_detached(Role::Producer)
    }
}

impl<T: Record, R: Region> Drop for ShmProducer<T, R> {
    fn drop(&mut self) {
        self.ring.detach(Role::Producer);
    }
}

impl<T: Record, R: Region> Drop for ShmConsumer<T, R> {
    fn drop(&mut self) {
        self.ring.detach(Role::Consumer);
    }
}

impl<T: Record, R: Region> fmt::Debug for ShmProducer<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmProducer").field("capacity", &self.ring.capacity).finish_non_exhaustive()
    }
}

impl<T: Record, R: Region> fmt::Debug for ShmConsumer<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmConsumer").field("capacity", &self.ring.capacity).finish_non_exhaustive()
    }
}

const ROLE_FREE: u64 = 0;
const ROLE_ATTACHED: u64 = 1;
const ROLE_DETACHED: u64 = 2;

/// A validated view of a ring laid out in a region. Does not own the region.
struct RegionRing<T> {
    base: NonNull<u8>,
    capacity: u64,
    _records: PhantomData<T>,
}

// SAFETY: the view is a pointer into a Region whose owner (stored beside it in the handle) is
// Send; records are Copy plain bytes, sent between threads by value.
unsafe impl<T: Record + Send> Send for RegionRing<T> {}

impl<T: Record> RegionRing<T> {
    /// Checks size and alignment for a ring of `capacity` records of `T`.
    fn check(region: &impl Region, capacity: u64) -> Result<Self, RegionError> {
        let (size, align) = (core::mem::size_of::<T>(), core::mem::align_of::<T>());
        if size == 0 || align > REGION_ALIGN {
            return Err(RegionError::RecordType { size, align });
        }
        let needed =
            (size as u64).checked_mul(capacity).and_then(|b| b.checked_add(SLOTS_OFFSET as u64));
        match needed {
            Some(needed) if needed <= region.len() as u64 => {}
            _ => {
                return Err(RegionError::TooSmall {
                    needed: needed.unwrap_or(u64::MAX),
                    len: region.len(),
                })
            }
        }
        let base = NonNull::new(region.as_ptr()).ok_or(RegionError::Misaligned(0))?;
        if !(base.as_ptr() as usize).is_multiple_of(REGION_ALIGN) {
            return Err(RegionError::Misaligned(base.as_ptr() as usize));
        }
        Ok(Self { base, capacity, _records: PhantomData })
    }

    /// Validates the header and takes `role`.
    fn attach(region: &impl Region, role: Role) -> Result<Self, RegionError> {
        // The header alone must fit before we read it.
        let probe = Self::check(region, 0)?;
        let words = probe.header_words();
        // SYNC: pairs with the Release store of the magic in `ShmProducer::create`.
        let magic = words[0].load(Ordering::Acquire);
        if magic == 0 {
            return Err(RegionError::Uninitialised);
        }
        if magic != RING_MAGIC {
            return Err(RegionError::Magic(magic));
        }
        let mut bytes = [0u8; 64];
        load_bytes(words, &mut bytes);
        let header = RingHeader::read_from_bytes(&bytes).expect("64 bytes make a header");
        if header.version.get() != RING_LAYOUT_VERSION {
            return Err(RegionError::Version(header.version.get()));
        }
        let expected = (core::mem::size_of::<T>() as u32, core::mem::align_of::<T>() as u32);
        let found = (header.record_size.get(), header.record_align.get());
        if expected != found {
            return Err(RegionError::RecordMismatch { expected, found });
        }
        let capacity = header.capacity.get();
        if !capacity.is_power_of_two() {
            return Err(RegionError::Capacity(capacity));
        }
        let ring = Self::check(region, capacity)?;
        // A role is free if never taken or taken and given back; attached means taken.
        for from in [ROLE_FREE, ROLE_DETACHED] {
            // SYNC: AcqRel: Acquire pairs with the previous holder's Release in `detach`, so
            // its last position store is visible; Release orders nothing of ours.
            let state = ring.state(role);
            if state
                .compare_exchange(from, ROLE_ATTACHED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(ring);
            }
        }
        Err(RegionError::RoleTaken(role))
    }

    fn detach(&self, role: Role) {
        // SYNC: publishes our last position store -> Acquire in `is_detached` and `attach`.
        self.state(role).store(ROLE_DETACHED, Ordering::Release);
    }

    fn is_detached(&self, role: Role) -> bool {
        // SYNC: pairs with the Release in `detach`: the peer's final position is visible after.
        self.state(role).load(Ordering::Acquire) == ROLE_DETACHED
    }

    fn header_words(&self) -> &[AtomicU64] {
        // SAFETY: `check` verified the region holds at least SLOTS_OFFSET bytes from a
        // 64-aligned base; the Region contract makes every access to it atomic protocol access.
        unsafe { atomic_words(self.base.as_ptr(), 64) }
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset < SLOTS_OFFSET);
        // SAFETY: offset < SLOTS_OFFSET <= region len, 8-aligned from a 64-aligned base; the
        // control words are only ever accessed atomically.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn state(&self, role: Role) -> &AtomicU64 {
        match role {
            Role::Producer => self.word(TAIL_OFFSET + 8),
            Role::Consumer => self.word(HEAD_OFFSET + 8),
        }
    }
}

// SAFETY: capacity is a power of two (checked at attach/create) and fixed; head and tail are
// two distinct words; slots are a contiguous array of `capacity` T at SLOTS_OFFSET, inside the
// region (checked) and aligned (base 64-aligned, SLOTS_OFFSET a multiple of 64, align_of T
// <= 64 and size_of T a multiple of it).
unsafe impl<T: Record> Storage<T> for RegionRing<T> {
    #[inline(always)]
    fn head(&self) -> &AtomicU64 {
        self.word(HEAD_OFFSET)
    }

    #[inline(always)]
    fn tail(&self) -> &AtomicU64 {
        self.word(TAIL_OFFSET)
    }

    #[inline(always)]
    fn capacity(&self) -> u64 {
        self.capacity
    }

    #[inline(always)]
    unsafe fn write(&self, index: usize, value: T) {
        // SAFETY: index < capacity (caller), so the slot lies inside the region; the protocol
        // gives the producer this slot exclusively.
        unsafe { self.slot_ptr(index).write(value) }
    }

    #[inline(always)]
    unsafe fn read(&self, index: usize) -> T {
        // SAFETY: index < capacity (caller); the slot holds bytes the producer published, and
        // any bytes are a valid T (FromBytes).
        unsafe { self.slot_ptr(index).read() }
    }

    #[inline(always)]
    fn slot_ptr(&self, index: usize) -> *mut T {
        self.base.as_ptr().wrapping_add(SLOTS_OFFSET).cast::<T>().wrapping_add(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use std::sync::Arc;

    fn region(capacity: usize) -> Arc<HeapRegion> {
        Arc::new(HeapRegion::new(region_len::<u64>(capacity).unwrap()))
    }

    #[test]
    fn header_layout_is_fixed() {
        assert_eq!(core::mem::size_of::<RingHeader>(), 64);
        assert_eq!(offset_of!(RingHeader, magic), 0);
        assert_eq!(offset_of!(RingHeader, version), 8);
        assert_eq!(offset_of!(RingHeader, record_size), 12);
        assert_eq!(offset_of!(RingHeader, capacity), 16);
        assert_eq!(offset_of!(RingHeader, record_align), 24);
        assert_eq!(offset_of!(RingHeader, reserved), 28);
        assert_eq!(&RING_MAGIC.to_le_bytes(), b"CLSPSC01");
        assert_eq!(region_len::<u64>(8), Some(384 + 64));
        assert_eq!(region_len::<[u8; 3]>(usize::MAX), None);
    }

    #[test]
    fn created_region_has_the_documented_bytes() {
        let r = region(4);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 4).unwrap();
        tx.push(0x1122_3344_5566_7788).unwrap();
        // SAFETY: test reads bytes of a region no other thread touches now.
        let bytes = unsafe { core::slice::from_raw_parts(r.as_ptr(), r.len()) };
        assert_eq!(&bytes[0..8], b"CLSPSC01");
        assert_eq!(&bytes[8..12], &1u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &8u32.to_le_bytes());
        assert_eq!(&bytes[16..24], &4u64.to_le_bytes());
        assert_eq!(&bytes[24..28], &8u32.to_le_bytes());
        assert_eq!(
            &bytes[TAIL_OFFSET..TAIL_OFFSET + 8],
            &1u64.to_le_bytes(),
            "tail after one push"
        );
        assert_eq!(
            &bytes[TAIL_OFFSET + 8..TAIL_OFFSET + 16],
            &1u64.to_le_bytes(),
            "producer attached"
        );
        assert_eq!(&bytes[HEAD_OFFSET..HEAD_OFFSET + 8], &0u64.to_le_bytes());
        assert_eq!(&bytes[SLOTS_OFFSET..SLOTS_OFFSET + 8], &0x1122_3344_5566_7788u64.to_le_bytes());
    }

    #[test]
    fn attach_rejects_bad_regions() {
        let r = region(4);
        assert_eq!(
            ShmConsumer::<u64, _>::attach(r.clone()).unwrap_err(),
            RegionError::Uninitialised
        );
        assert_eq!(
            ShmProducer::<u64, _>::create(r.clone(), 3).unwrap_err(),
            RegionError::Capacity(3)
        );
        assert_eq!(
            ShmProducer::<u64, _>::create(r.clone(), 8).unwrap_err(),
            RegionError::TooSmall { needed: 384 + 64, len: 384 + 32 }
        );
        let tx = ShmProducer::<u64, _>::create(r.clone(), 4).unwrap();
        assert_eq!(
            ShmConsumer::<u32, _>::attach(r.clone()).unwrap_err(),
            RegionError::RecordMismatch { expected: (4, 4), found: (8, 8) }
        );
        assert_eq!(
            ShmProducer::<u64, _>::attach(r.clone()).unwrap_err(),
            RegionError::RoleTaken(Role::Producer)
        );
        let rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        assert_eq!(
            ShmConsumer::<u64, _>::attach(r.clone()).unwrap_err(),
            RegionError::RoleTaken(Role::Consumer)
        );
        drop((tx, rx));
        // Corrupt the version, then the magic.
        let words = {
            // SAFETY: region is 64-aligned and larger than 64 bytes; only atomics touch it.
            unsafe { atomic_words(r.as_ptr(), 64) }
        };
        words[1].store(u64::from(2u32) | (8u64 << 32), Ordering::Relaxed);
        assert_eq!(ShmConsumer::<u64, _>::attach(r.clone()).unwrap_err(), RegionError::Version(2));
        words[0].store(0xdead, Ordering::Relaxed);
        let err = ShmConsumer::<u64, _>::attach(r.clone()).unwrap_err();
        assert_eq!(err, RegionError::Magic(0xdead));
        assert_eq!(
            err.to_string(),
            "bad ring magic: expected 0x3130435350534c43, found 0x000000000000dead"
        );
    }

    #[test]
    fn corrupt_capacity_in_header_is_rejected_not_trusted() {
        let r = region(4);
        drop(ShmProducer::<u64, _>::create(r.clone(), 4).unwrap());
        // SAFETY: as above.
        let words = unsafe { atomic_words(r.as_ptr(), 64) };
        words[2].store(1 << 20, Ordering::Relaxed); // capacity far beyond the region
        assert!(matches!(
            ShmConsumer::<u64, _>::attach(r.clone()).unwrap_err(),
            RegionError::TooSmall { .. }
        ));
        words[2].store(6, Ordering::Relaxed);
        assert_eq!(ShmConsumer::<u64, _>::attach(r).unwrap_err(), RegionError::Capacity(6));
    }

    #[test]
    fn corrupt_positions_never_overrun_the_slots() {
        let r = region(4);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 4).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        // A hostile consumer claims to be far ahead of the producer.
        rx.ring.head().store(1000, Ordering::Relaxed);
        // tail (0) - head (1000) wraps: the producer reads that as full, never as room for more
        // than a lap.
        assert_eq!(tx.push_slice(&[1; 16]), 0);
        assert_eq!(tx.slots(), 0);
        assert!(tx.push(1).is_err());
        // A hostile producer claims a huge tail: the consumer reads at most one lap.
        tx.ring.tail().store(1 << 40, Ordering::Relaxed);
        let mut out = [0u64; 16];
        assert!(rx.len() <= 4);
        assert!(rx.pop_slice(&mut out) <= 4);
    }

    #[test]
    fn roles_can_be_retaken_after_detach_and_abandonment_is_seen() {
        let r = region(8);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 8).unwrap();
        let rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        assert!(!tx.is_abandoned() && !rx.is_abandoned());
        tx.push_slice(&[1, 2, 3]);
        drop(tx);
        assert!(rx.is_abandoned());
        let mut tx = ShmProducer::<u64, _>::attach(r.clone()).unwrap();
        assert!(!rx.is_abandoned());
        tx.push(4).unwrap();
        drop(rx);
        assert!(tx.is_abandoned());
        let mut rx = ShmConsumer::<u64, _>::attach(r).unwrap();
        let mut out = [0; 8];
        assert_eq!(rx.pop_slice(&mut out), 4, "positions survive re-attachment");
        assert_eq!(&out[..4], &[1, 2, 3, 4]);
    }

    #[test]
    fn records_cross_threads_in_order() {
        #[derive(Clone, Copy, Debug, PartialEq, FromBytes, IntoBytes, Immutable)]
        #[repr(C)]
        struct Msg {
            seq: u64,
            check: u64,
        }
        let r = Arc::new(HeapRegion::new(region_len::<Msg>(64).unwrap()));
        let mut tx = ShmProducer::<Msg, _>::create(r.clone(), 64).unwrap();
        let mut rx = ShmConsumer::<Msg, _>::attach(r).unwrap();
        const N: u64 = 200_000;
        let writer = std::thread::spawn(move || {
            let mut seq = 0;
            while seq < N {
                let batch: Vec<Msg> =
                    (seq..(seq + 7).min(N)).map(|s| Msg { seq: s, check: !s }).collect();
                seq += tx.push_slice(&batch) as u64;
            }
        });
        let mut next = 0;
        let mut out = [Msg { seq: 0, check: 0 }; 5];
        while next < N {
            let n = rx.pop_slice(&mut out);
            for m in &out[..n] {
                assert_eq!(*m, Msg { seq: next, check: !next });
                next += 1;
            }
        }
        writer.join().unwrap();
        assert!(rx.is_abandoned());
    }
}
