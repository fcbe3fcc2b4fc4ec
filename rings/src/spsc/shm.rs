//! The shared-memory variant: fixed-size `Copy` records in a caller-provided byte region.
//!
//! Same index protocol as the heap queue ([`super::channel`]), but the control words and the
//! slots live inside a [`Region`] (in practice a memory-mapped file or memfd shared by two
//! processes), behind a layout header that attaching validates before touching anything else.
//!
//! Region layout, version 2 (offsets in bytes; one definition, tested below):
//!
//! | offset | size | what | written by |
//! |---|---|---|---|
//! | 0 | 64 | [`RingHeader`]: magic, version, record size, alignment and stride, capacity, generation | creator, once |
//! | 128 | 8 | `tail`: producer position | producer |
//! | 136 | 8 | producer role word (see below) | producer, or whoever reclaims the role |
//! | 256 | 8 | `head`: consumer position | consumer |
//! | 264 | 8 | consumer role word | consumer, or whoever reclaims the role |
//! | 384 | 8 | wait word: the consumer parks on its low half, a futex ([`crate::wait`]) | consumer parks, producer wakes |
//! | 512 | capacity × stride | slots; stride = record size rounded up to 8 | producer |
//!
//! The control lines are 128 bytes apart for the same reason as [`crate::CachePadded`]; the
//! wait word has a line of its own, so the producer's check "is the consumer parked?" reads a
//! line nobody writes in steady state. All words are little-endian and accessed only
//! atomically, as `AtomicU64` (one size for every byte of the region: Rust forbids racing
//! atomic accesses of different sizes): positions, role words, the wait word, and records,
//! copied word by word to and from the caller's private memory (never a
//! plain `ptr::read` of shared memory, which would race with a hostile or buggy peer's
//! stores: undefined behaviour). A record is decoded from that private copy, so it is fetched
//! once.
//!
//! # A peer is never trusted
//!
//! Any bit pattern is a valid [`Record`], so a peer that writes garbage into slots only gives
//! this end garbage records. A position no honest peer can write (a `tail` more than a lap
//! ahead of this consumer's `head` or moving backwards; a `head` ahead of this producer's
//! `tail` or moving backwards) is a [`Corruption`] verdict: that end is poisoned, stops
//! touching the slots and its own position, and reports the verdict on every call; loops like
//! `while rx.pop().is_ok()` end. [`ShmConsumer::drain`] bounds the work of one call for an
//! ingest lane that polls many rings per pass.
//!
//! # Roles, crashes and re-layout
//!
//! Each end takes its role by a compare-and-swap on its role word: bits 0-1 the state
//! ([`ROLE_FREE`], [`ROLE_ATTACHED`], [`ROLE_DETACHED`]), bits 2-31 a count of attachments,
//! bits 32-63 the owner's pid. A role held by a process that died (SIGKILL: no `Drop` ran)
//! stays attached; a survivor that knows the holder is dead (a pidfd, a reaped child) takes
//! the role over with [`ShmProducer::reclaim`] / [`ShmConsumer::reclaim`], which succeed only
//! from the exact attached word of that pid. The positions survive: a new producer continues
//! at the last published `tail`, and a record half-written by the dead one is overwritten.
//! Either end can lay the ring out: [`ShmProducer::create`], or [`ShmConsumer::create`] for
//! a daemon that owns the memory and leaves the producer role free for a client. Both refuse
//! a region whose ring has a role attached, and bump the header's `generation`, so an end
//! that outlived a re-layout sees it in [`ShmConsumer::relaid`] (and, if its position no
//! longer fits, as a corruption). Pids are those of the process's own pid namespace: a
//! survivor in another namespace (a container) learns the holder's pid there, not from
//! `SO_PEERCRED`, before it reclaims.
//!
//! # Waiting
//!
//! A consumer that found the ring empty either parks on the ring's futex
//! ([`ShmConsumer::wait`], woken by [`ShmProducer::notify`]), or, when it sleeps somewhere
//! else (a lane in its io_uring), arms a doorbell ([`ShmConsumer::arm_doorbell`]): the
//! producer's [`ShmProducer::take_doorbell`] then says when to ring it out of band, with no
//! syscall on the ring's side. Both are [`crate::wait`]'s protocol on the one wait word.
//!
//! ```
//! use corelane_rings::spsc::shm::{region_len, HeapRegion, ShmConsumer, ShmProducer};
//! use std::sync::Arc;
//!
//! let region = Arc::new(HeapRegion::new(region_len::<u64>(8).unwrap()));
//! let mut tx = ShmProducer::<u64, _>::create(region.clone(), 8).unwrap();
//! let mut rx = ShmConsumer::<u64, _>::attach(region).unwrap();
//! tx.push(7).unwrap();
//! tx.push_slice(&[8, 9]);
//! assert_eq!(rx.pop(), Ok(7));
//! let mut seen = Vec::new();
//! assert_eq!(rx.drain(16, |v| seen.push(v)), Ok(2));
//! assert_eq!(seen, [8, 9]);
//! ```
#![allow(unsafe_code)]

use core::fmt;
use core::marker::PhantomData;
use std::time::Duration;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::{ConsumerCore, Corruption, ProducerCore, Storage};
use crate::region::LayoutClaim;
pub use crate::region::{HeapRegion, LayoutKind, Region, REGION_ALIGN};
use crate::sync::{load_bytes, store_bytes, AtomicU64, Ordering};
pub use crate::wait::Parked;

/// `b"CLSPSC01"` as a little-endian u64.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"CLSPSC01");
/// Layout version written by this code; attach refuses any other.
pub const RING_LAYOUT_VERSION: u32 = 2;
/// Offset of `tail`, the producer's position.
pub const TAIL_OFFSET: usize = 128;
/// Offset of the producer's role word.
pub const PRODUCER_ROLE_OFFSET: usize = 136;
/// Offset of `head`, the consumer's position.
pub const HEAD_OFFSET: usize = 256;
/// Offset of the consumer's role word.
pub const CONSUMER_ROLE_OFFSET: usize = 264;
/// Offset of the wait word (a `u64`; the futex is its low half).
pub const WAIT_OFFSET: usize = 384;
/// Offset of slot 0.
pub const SLOTS_OFFSET: usize = 512;

/// Role word state: never taken, or the region was just laid out.
pub const ROLE_FREE: u64 = 0;
/// Role word state: held by the pid in bits 32-63.
pub const ROLE_ATTACHED: u64 = 1;
/// Role word state: given back by the pid in bits 32-63.
pub const ROLE_DETACHED: u64 = 2;
/// Role word state: the pid in bits 32-63 is laying the ring out ([`ShmProducer::create`],
/// [`ShmConsumer::create`]);
/// nobody can attach until it is done.
pub const ROLE_LAYING_OUT: u64 = 3;

/// Records that may cross a process boundary: plain bytes, no padding, no pointers, and every
/// bit pattern valid.
pub trait Record: Copy + FromBytes + IntoBytes + Immutable {}

impl<T: Copy + FromBytes + IntoBytes + Immutable> Record for T {}

/// Bytes between two slots for records of `T`: `size_of::<T>()` rounded up to 8, so that
/// every slot is copied as whole aligned words.
pub const fn record_stride<T>() -> usize {
    core::mem::size_of::<T>().next_multiple_of(8)
}

/// Bytes needed for a ring of `capacity` records of `T`, or `None` on overflow.
pub fn region_len<T>(capacity: usize) -> Option<usize> {
    capacity.checked_mul(record_stride::<T>())?.checked_add(SLOTS_OFFSET)
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
    /// `align_of` one record (checked on attach: it tells record types of one size apart).
    pub record_align: U32,
    /// Bytes between slots: `record_size` rounded up to 8.
    pub record_stride: U32,
    /// How many times a ring was laid out in this region (1 for the first).
    pub generation: U64,
    /// Zero.
    pub reserved: [u8; 24],
}

const _: () = assert!(core::mem::size_of::<RingHeader>() == 64);

/// Why a region could not be used as a ring, or a role not taken.
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
    /// The ring was created for records of another size, alignment or stride.
    RecordMismatch {
        /// `(size, align, stride)` of the record type of this end.
        expected: (u32, u32, u32),
        /// `(size, align, stride)` written in the region.
        found: (u32, u32, u32),
    },
    /// The role is held (or its word is garbage): attach, create and reclaim refuse.
    RoleTaken {
        /// Which end.
        role: Role,
        /// Who holds it, as the role word says.
        holder: Holder,
    },
    /// A process cannot reclaim a role from itself: it is not dead.
    ReclaimSelf,
    /// The region holds another structure in this process (one layout per region).
    OtherLayout(LayoutKind),
    /// Both ends write the ring; this region is read-only ([`Region::read_only`]).
    ReadOnly,
}

/// One end of a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The writing end.
    Producer,
    /// The reading end.
    Consumer,
}

/// What a role word says about the end that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Never taken since the ring was laid out.
    Free,
    /// Held by the process `pid`.
    Attached {
        /// The holder's pid.
        pid: u32,
    },
    /// Given back (dropped) by the process `pid`.
    Detached {
        /// The last holder's pid.
        pid: u32,
    },
    /// The process `pid` is laying the ring out.
    LayingOut {
        /// The creator's pid.
        pid: u32,
    },
    /// A state no end writes: the word was corrupted.
    Invalid(u64),
}

impl Holder {
    fn of(word: u64) -> Self {
        let pid = (word >> 32) as u32;
        match word & 0b11 {
            ROLE_FREE if word == 0 => Holder::Free,
            ROLE_ATTACHED if pid != 0 => Holder::Attached { pid },
            ROLE_DETACHED => Holder::Detached { pid },
            ROLE_LAYING_OUT if pid != 0 => Holder::LayingOut { pid },
            _ => Holder::Invalid(word),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        })
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Holder::Free => f.write_str("nobody"),
            Holder::Attached { pid } => write!(f, "pid {pid}"),
            Holder::Detached { pid } => write!(f, "nobody (pid {pid} detached)"),
            Holder::LayingOut { pid } => write!(f, "pid {pid}, laying the ring out"),
            Holder::Invalid(word) => write!(f, "a corrupt role word {word:#018x}"),
        }
    }
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
                "ring record mismatch: expected size {} align {} stride {}, found size {} align {} stride {}",
                expected.0, expected.1, expected.2, found.0, found.1, found.2
            ),
            Self::RoleTaken { role, holder } => {
                write!(f, "ring {role} role is not available: held by {holder}")
            }
            Self::ReclaimSelf => f.write_str("cannot reclaim a ring role from this process itself"),
            Self::ReadOnly => write!(f, "a ring needs a writable mapping, this one is read-only"),
            Self::OtherLayout(kind) => {
                write!(f, "the region already holds a {kind:?} in this process")
            }
        }
    }
}

impl std::error::Error for RegionError {}

/// Why a push did not happen; the record is handed back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ShmPushError<T> {
    /// No free slot: the consumer has not caught up.
    Full(T),
    /// The consumer's position is impossible; this producer is poisoned.
    Corrupt(T, Corruption),
}

impl<T> ShmPushError<T> {
    /// The record that was not pushed.
    pub fn into_inner(self) -> T {
        match self {
            ShmPushError::Full(value) | ShmPushError::Corrupt(value, _) => value,
        }
    }
}

impl<T> fmt::Debug for ShmPushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShmPushError::Full(_) => f.write_str("Full(..)"),
            ShmPushError::Corrupt(_, c) => f.debug_tuple("Corrupt").field(&"..").field(c).finish(),
        }
    }
}

impl<T> fmt::Display for ShmPushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShmPushError::Full(_) => f.write_str("shared-memory ring is full"),
            ShmPushError::Corrupt(_, c) => c.fmt(f),
        }
    }
}

impl<T> std::error::Error for ShmPushError<T> {}

/// Why a pop returned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShmPopError {
    /// No record has been published since the last pop.
    Empty,
    /// The producer's position is impossible; this consumer is poisoned.
    Corrupt(Corruption),
}

impl fmt::Display for ShmPopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShmPopError::Empty => f.write_str("shared-memory ring is empty"),
            ShmPopError::Corrupt(c) => c.fmt(f),
        }
    }
}

impl std::error::Error for ShmPopError {}

/// Counts kept by a [`ShmConsumer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Records taken (pop, pop_slice and drain).
    pub records: u64,
    /// Calls to [`ShmConsumer::drain`].
    pub drains: u64,
    /// Drains that stopped at their `max` (more may be waiting).
    pub drains_at_max: u64,
    /// Times [`ShmConsumer::wait`] slept in the kernel.
    pub parks: u64,
}

/// The writing end of a shared-memory ring. `Send`, not `Sync`, not `Clone`.
pub struct ShmProducer<T: Record, R: Region> {
    ring: RegionRing<T>,
    core: ProducerCore,
    generation: u64,
    /// The role word this end wrote; detach changes exactly that word.
    role_word: u64,
    _layout: LayoutClaim,
    _region: R,
}

/// The reading end of a shared-memory ring. `Send`, not `Sync`, not `Clone`.
pub struct ShmConsumer<T: Record, R: Region> {
    ring: RegionRing<T>,
    core: ConsumerCore,
    generation: u64,
    /// The role word this end wrote; detach changes exactly that word.
    role_word: u64,
    stats: ConsumerStats,
    _layout: LayoutClaim,
    _region: R,
}

impl<T: Record, R: Region> ShmProducer<T, R> {
    /// Lays out a new ring of `capacity` slots in `region` and attaches as its producer.
    ///
    /// Refuses ([`RegionError::RoleTaken`]) if the region holds a ring with either role
    /// attached (or being laid out by another creator); otherwise whatever it held is
    /// overwritten and the generation goes up by one. Both role words are taken first, by
    /// compare-and-swap from the values checked, so an attach or another `create` that comes
    /// in between is refused rather than wiped.
    pub fn create(region: R, capacity: u64) -> Result<Self, RegionError> {
        if !capacity.is_power_of_two() {
            return Err(RegionError::Capacity(capacity));
        }
        let ring = RegionRing::<T>::check(&region, capacity)?;
        let layout =
            LayoutClaim::take(&region, LayoutKind::SpscRing).map_err(RegionError::OtherLayout)?;
        let (generation, role_word) = ring.lay_out(Role::Producer)?;
        let core = ProducerCore::new(0, 0u64.wrapping_sub(capacity));
        Ok(Self { ring, core, generation, role_word, _layout: layout, _region: region })
    }

    /// Attaches as the producer of a ring already laid out in `region`.
    pub fn attach(region: R) -> Result<Self, RegionError> {
        Self::take(region, None)
    }

    /// Takes the producer role from `dead_pid`, a process the caller knows has died while
    /// holding it (a pidfd that became readable, a child it reaped). Fails with
    /// [`RegionError::RoleTaken`] unless the role word still says "attached by `dead_pid`".
    /// The new producer continues at the last published position.
    pub fn reclaim(region: R, dead_pid: u32) -> Result<Self, RegionError> {
        Self::take(region, Some(dead_pid))
    }

    fn take(region: R, from: Option<u32>) -> Result<Self, RegionError> {
        let layout =
            LayoutClaim::take(&region, LayoutKind::SpscRing).map_err(RegionError::OtherLayout)?;
        let (ring, generation, role_word) = RegionRing::<T>::open(&region, Role::Producer, from)?;
        // SYNC: Acquire pairs with the previous producer's Release store of `tail`.
        let tail = ring.tail().load(Ordering::Acquire);
        // The cache says "full": the first refresh reads `head` and checks it against `tail`,
        // which is never trusted before that either.
        let core = ProducerCore::new(tail, tail.wrapping_sub(ring.capacity));
        Ok(Self { ring, core, generation, role_word, _layout: layout, _region: region })
    }

    /// Pushes one record, or hands it back if the ring is full or corrupt.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), ShmPushError<T>> {
        self.core.push(&self.ring, value).map_err(|value| match self.core.corruption() {
            None => ShmPushError::Full(value),
            Some(c) => ShmPushError::Corrupt(value, c),
        })
    }

    /// Copies as many of `items` as fit and publishes them at once; returns how many (0 when
    /// full, and always 0 once [`corruption`](Self::corruption) is set).
    #[inline]
    pub fn push_slice(&mut self, items: &[T]) -> usize {
        self.core.push_slice(&self.ring, items)
    }

    /// Wakes the consumer if it is parked in [`ShmConsumer::wait`]: call after a push or a
    /// batch of them. Costs a fence, plus a `futex` syscall only when the consumer sleeps;
    /// returns whether it did.
    #[inline]
    pub fn notify(&self) -> bool {
        crate::wait::wake(self.ring.wait_word())
    }

    /// For a consumer that sleeps somewhere else ([`ShmConsumer::arm_doorbell`]): call after
    /// a push or a batch of them. Returns `true` when the consumer armed its doorbell and may
    /// be asleep: the caller must then ring it out of band (a byte on a socket the consumer
    /// watches). At most one call per arming returns `true`. No syscall: a fence and a load
    /// of a line nobody writes in steady state. A ring's consumer uses the doorbell or
    /// [`wait`](ShmConsumer::wait), not both; so does its producer ([`notify`](Self::notify)
    /// would take an armed doorbell without ringing it).
    #[inline]
    pub fn take_doorbell(&self) -> bool {
        crate::wait::take(self.ring.wait_word())
    }

    /// Free slots right now.
    pub fn slots(&mut self) -> usize {
        self.core.free(&self.ring, u64::MAX) as usize
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.ring.capacity as usize
    }

    /// The verdict, once the consumer's position was impossible.
    pub fn corruption(&self) -> Option<Corruption> {
        self.core.corruption()
    }

    /// Who holds the consumer role now.
    pub fn peer(&self) -> Holder {
        self.ring.holder(Role::Consumer)
    }

    /// Whether a consumer attached and then detached.
    pub fn is_abandoned(&self) -> bool {
        matches!(self.peer(), Holder::Detached { .. })
    }

    /// Whether the region no longer holds the ring this end attached to (re-created or
    /// overwritten since).
    pub fn relaid(&self) -> bool {
        self.ring.relaid(self.generation)
    }
}

impl<T: Record, R: Region> ShmConsumer<T, R> {
    /// Lays out a new ring of `capacity` slots in `region` and attaches as its consumer,
    /// leaving the producer role free for a peer to [`attach`](ShmProducer::attach): what a
    /// daemon does that owns the memory and reads what a client writes. Refuses and re-lays
    /// out exactly as [`ShmProducer::create`] does. Until a producer attaches, the ring is
    /// empty and not [abandoned](Self::is_abandoned): its [`peer`](Self::peer) is
    /// [`Holder::Free`].
    pub fn create(region: R, capacity: u64) -> Result<Self, RegionError> {
        if !capacity.is_power_of_two() {
            return Err(RegionError::Capacity(capacity));
        }
        let ring = RegionRing::<T>::check(&region, capacity)?;
        let layout =
            LayoutClaim::take(&region, LayoutKind::SpscRing).map_err(RegionError::OtherLayout)?;
        let (generation, role_word) = ring.lay_out(Role::Consumer)?;
        Ok(Self {
            ring,
            core: ConsumerCore::new(0, 0),
            generation,
            role_word,
            stats: ConsumerStats::default(),
            _layout: layout,
            _region: region,
        })
    }

    /// Validates the ring layout in `region` and attaches as its consumer.
    pub fn attach(region: R) -> Result<Self, RegionError> {
        Self::take(region, None)
    }

    /// Takes the consumer role from `dead_pid` (see [`ShmProducer::reclaim`]); the new
    /// consumer continues at the last released position.
    pub fn reclaim(region: R, dead_pid: u32) -> Result<Self, RegionError> {
        Self::take(region, Some(dead_pid))
    }

    fn take(region: R, from: Option<u32>) -> Result<Self, RegionError> {
        let layout =
            LayoutClaim::take(&region, LayoutKind::SpscRing).map_err(RegionError::OtherLayout)?;
        let (ring, generation, role_word) = RegionRing::<T>::open(&region, Role::Consumer, from)?;
        // SYNC: Acquire pairs with the previous consumer's Release store of `head`.
        let head = ring.head().load(Ordering::Acquire);
        // The cache says "empty": the first refresh reads `tail` and checks it.
        let core = ConsumerCore::new(head, head);
        Ok(Self {
            ring,
            core,
            generation,
            role_word,
            stats: ConsumerStats::default(),
            _layout: layout,
            _region: region,
        })
    }

    /// Pops the oldest record (a private copy, decoded from memory read once).
    #[inline]
    pub fn pop(&mut self) -> Result<T, ShmPopError> {
        match self.core.pop(&self.ring) {
            Some(value) => {
                self.stats.records += 1;
                Ok(value)
            }
            None => Err(self.empty_or_corrupt()),
        }
    }

    /// Copies up to `out.len()` records out and frees their slots at once; returns how many
    /// (0 when empty, and always 0 once [`corruption`](Self::corruption) is set).
    #[inline]
    pub fn pop_slice(&mut self, out: &mut [T]) -> usize {
        let n = self.core.pop_slice(&self.ring, out);
        self.stats.records += n as u64;
        n
    }

    /// Hands at most `max` records, oldest first, to `f`, then frees their slots with one
    /// store; returns how many, or the verdict once the producer's position is impossible.
    /// The bound is what lets one lane poll many rings per pass: a producer that keeps
    /// pushing cannot keep one call going. Each record counts as taken before `f` sees it: if
    /// `f` panics, the records it was given (the one it panicked on included) are not handed
    /// out again, and their slots are freed by this end's next release.
    #[inline]
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(T)) -> Result<usize, Corruption> {
        self.stats.drains += 1;
        let n = self.core.available(&self.ring, max as u64).min(max as u64);
        if n == 0 {
            return match self.core.corruption() {
                None => Ok(0),
                Some(c) => Err(c),
            };
        }
        for _ in 0..n {
            let index = self.core.index(&self.ring, 0);
            // SAFETY: fewer than n <= available() records were taken, so the slot holds a
            // published record; index < capacity by masking.
            let record = unsafe { self.ring.read(index) };
            self.core.take(1);
            f(record);
        }
        self.core.publish(&self.ring);
        self.stats.records += n;
        if n == max as u64 {
            self.stats.drains_at_max += 1;
        }
        Ok(n as usize)
    }

    /// Sleeps until a record is ready, the producer detaches, or `timeout` passes (`None`:
    /// no limit), without spinning: parks on the ring's wait word, and the producer's
    /// [`notify`](ShmProducer::notify) wakes it. Returns at once if a record is ready.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Parked, Corruption> {
        let Self { ring, core, stats, .. } = self;
        let mut not_ready = 0;
        let parked = crate::wait::park(
            ring.wait_word(),
            || {
                let ready = core.available(ring, 1) > 0
                    || core.corruption().is_some()
                    || matches!(ring.holder(Role::Producer), Holder::Detached { .. });
                not_ready += u32::from(!ready);
                ready
            },
            timeout,
        );
        // `park` sleeps only after two "not ready" answers (before and after announcing).
        if not_ready >= 2 {
            stats.parks += 1;
        }
        match core.corruption() {
            Some(c) => Err(c),
            None => Ok(parked),
        }
    }

    /// Before sleeping somewhere else (a lane parking in its reactor, not on this ring's
    /// futex): asks the producer to ring a doorbell ([`ShmProducer::take_doorbell`]) once it
    /// publishes, then looks at the ring once more. `Ok(true)`: armed and still empty, the
    /// caller may sleep until the doorbell rings; `Ok(false)`: records are ready (the word
    /// is reset: no doorbell will ring for them), drain instead of sleeping. Call
    /// [`disarm_doorbell`](Self::disarm_doorbell) after waking. The protocol is
    /// [`crate::wait::arm`]'s (no lost wake-up: either this look sees a record, or the
    /// producer's `take_doorbell` after it sees the arming).
    pub fn arm_doorbell(&mut self) -> Result<bool, Corruption> {
        let Self { ring, core, .. } = self;
        let armed = crate::wait::arm(ring.wait_word(), || {
            core.available(ring, 1) > 0 || core.corruption().is_some()
        });
        match core.corruption() {
            Some(c) => Err(c),
            None => Ok(armed),
        }
    }

    /// After waking (or deciding not to sleep): no doorbell wanted. Costs a load when the
    /// producer already took it.
    #[inline]
    pub fn disarm_doorbell(&self) {
        crate::wait::disarm(self.ring.wait_word());
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

    /// The verdict, once the producer's position was impossible.
    pub fn corruption(&self) -> Option<Corruption> {
        self.core.corruption()
    }

    /// The counts so far.
    pub fn stats(&self) -> ConsumerStats {
        self.stats
    }

    /// Who holds the producer role now.
    pub fn peer(&self) -> Holder {
        self.ring.holder(Role::Producer)
    }

    /// Whether the producer detached: once the ring is empty, it stays empty.
    pub fn is_abandoned(&self) -> bool {
        matches!(self.peer(), Holder::Detached { .. })
    }

    /// Whether the region no longer holds the ring this end attached to (re-created or
    /// overwritten since).
    pub fn relaid(&self) -> bool {
        self.ring.relaid(self.generation)
    }

    #[cold]
    fn empty_or_corrupt(&self) -> ShmPopError {
        match self.core.corruption() {
            None => ShmPopError::Empty,
            Some(c) => ShmPopError::Corrupt(c),
        }
    }
}

impl<T: Record, R: Region> Drop for ShmProducer<T, R> {
    fn drop(&mut self) {
        self.ring.detach(Role::Producer, self.role_word);
        // A consumer parked in `wait` must see the abandonment.
        self.notify();
    }
}

impl<T: Record, R: Region> Drop for ShmConsumer<T, R> {
    fn drop(&mut self) {
        // A drain's records taken but not yet released (its callback panicked) go back.
        self.core.publish(&self.ring);
        self.ring.detach(Role::Consumer, self.role_word);
    }
}

impl<T: Record, R: Region> fmt::Debug for ShmProducer<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmProducer")
            .field("capacity", &self.ring.capacity)
            .field("corruption", &self.core.corruption())
            .finish_non_exhaustive()
    }
}

impl<T: Record, R: Region> fmt::Debug for ShmConsumer<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmConsumer")
            .field("capacity", &self.ring.capacity)
            .field("corruption", &self.core.corruption())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The role word an attaching process writes.
fn attached_word(previous: u64, pid: u32) -> u64 {
    let count = ((previous >> 2) + 1) & 0x3FFF_FFFF;
    (u64::from(pid) << 32) | (count << 2) | ROLE_ATTACHED
}

/// A validated view of a ring laid out in a region. Does not own the region: the handle that
/// holds it keeps the region alive beside it.
struct RegionRing<T> {
    mem: Mem,
    capacity: u64,
    _records: PhantomData<T>,
}

/// Where the words of a ring live: raw shared memory (std), or loom's model atomics.
#[cfg(not(loom))]
struct Mem {
    base: core::ptr::NonNull<u8>,
    len: usize,
}

#[cfg(loom)]
struct Mem {
    words: crate::sync::Arc<Vec<AtomicU64>>,
}

#[cfg(not(loom))]
impl Mem {
    fn of(region: &impl Region) -> Result<Self, RegionError> {
        if region.read_only() {
            return Err(RegionError::ReadOnly);
        }
        let base = core::ptr::NonNull::new(region.as_ptr()).ok_or(RegionError::Misaligned(0))?;
        if !(base.as_ptr() as usize).is_multiple_of(REGION_ALIGN) {
            return Err(RegionError::Misaligned(base.as_ptr() as usize));
        }
        Ok(Self { base, len: region.len() })
    }

    /// Bytes `[offset, offset + len)` as words.
    ///
    /// # Panics
    /// If the range is outside the region or not 8-aligned: the index protocol's checks keep
    /// it in, and a bug there must be a panic, never an access out of bounds.
    #[inline(always)]
    fn words(&self, offset: usize, len: usize) -> &[AtomicU64] {
        let inside = offset.checked_add(len).is_some_and(|end| end <= self.len);
        assert!(
            inside && offset.is_multiple_of(8) && len.is_multiple_of(8),
            "ring words {offset}+{len} outside the region of {} bytes",
            self.len
        );
        // SAFETY: in bounds and 8-aligned (checked above, from a 64-aligned base), and the
        // Region contract makes every access to the region protocol access, atomic in this
        // module and of one size (AtomicU64) for every byte.
        unsafe { crate::sync::atomic_words(self.base.as_ptr().add(offset), len) }
    }
}

#[cfg(loom)]
impl Mem {
    fn of(region: &impl Region) -> Result<Self, RegionError> {
        Ok(Self { words: region.words() })
    }

    fn words(&self, offset: usize, len: usize) -> &[AtomicU64] {
        &self.words[offset / 8..(offset + len) / 8]
    }
}

// SAFETY: the view is a pointer into a Region whose owner (stored beside it in the handle) is
// Send; records are Copy plain bytes, sent between threads by value.
unsafe impl<T: Record + Send> Send for RegionRing<T> {}

impl<T: Record> RegionRing<T> {
    /// Checks the record type, size and alignment for a ring of `capacity` records of `T`.
    fn check(region: &impl Region, capacity: u64) -> Result<Self, RegionError> {
        let (size, align) = (core::mem::size_of::<T>(), core::mem::align_of::<T>());
        if size == 0 || align > REGION_ALIGN || size > u32::MAX as usize {
            return Err(RegionError::RecordType { size, align });
        }
        let needed = (record_stride::<T>() as u64)
            .checked_mul(capacity)
            .and_then(|b| b.checked_add(SLOTS_OFFSET as u64));
        match needed {
            Some(needed) if needed <= region.len() as u64 => {}
            _ => {
                return Err(RegionError::TooSmall {
                    needed: needed.unwrap_or(u64::MAX),
                    len: region.len(),
                })
            }
        }
        Ok(Self { mem: Mem::of(region)?, capacity, _records: PhantomData })
    }

    /// Lays a new ring out in the region this view was [checked](Self::check) against, and
    /// attaches as `mine`, leaving the other role free. Refuses ([`RegionError::RoleTaken`]) if the region holds a ring
    /// with either role attached (or being laid out by another creator); otherwise whatever
    /// it held is overwritten and the generation goes up by one. Both role words are taken
    /// first, by compare-and-swap from the values checked, so an attach or another create
    /// that comes in between is refused rather than wiped. Returns the generation and the
    /// role word written.
    fn lay_out(&self, mine: Role) -> Result<(u64, u64), RegionError> {
        debug_assert!(self.capacity.is_power_of_two());
        let capacity = self.capacity;
        let words = self.header_words();
        // SYNC: pairs with the Release store of the magic below in a previous `lay_out`.
        let live = words[0].load(Ordering::Acquire) == RING_MAGIC;
        let previous = if live { self.header().generation.get() } else { 0 };
        let laying = (u64::from(std::process::id()) << 32) | ROLE_LAYING_OUT;
        let other = match mine {
            Role::Producer => Role::Consumer,
            Role::Consumer => Role::Producer,
        };
        let mine_was = self.lock_role(mine, laying)?;
        if let Err(e) = self.lock_role(other, laying) {
            self.unlock_role(mine, laying, mine_was);
            return Err(e);
        }
        let header = RingHeader {
            magic: U64::new(0),
            version: U32::new(RING_LAYOUT_VERSION),
            record_size: U32::new(core::mem::size_of::<T>() as u32),
            capacity: U64::new(capacity),
            record_align: U32::new(core::mem::align_of::<T>() as u32),
            record_stride: U32::new(record_stride::<T>() as u32),
            generation: U64::new(previous.wrapping_add(1)),
            reserved: [0; 24],
        };
        words[0].store(0, Ordering::Relaxed);
        store_bytes(&words[1..], &header.as_bytes()[8..]);
        self.tail().store(0, Ordering::Relaxed);
        self.head().store(0, Ordering::Relaxed);
        self.wait_word().store(crate::wait::IDLE, Ordering::Relaxed);
        self.role(other).store(ROLE_FREE, Ordering::Relaxed);
        let role_word = attached_word(mine_was, std::process::id());
        self.role(mine).store(role_word, Ordering::Relaxed);
        // SYNC: publishes the header, positions and roles above -> Acquire load of the magic
        // in `RegionRing::open`.
        words[0].store(RING_MAGIC, Ordering::Release);
        Ok((header.generation.get(), role_word))
    }

    /// Validates the header and takes `role`: if it is free or detached (`from` None), or
    /// from the dead process `from`.
    /// Returns the ring, its generation, and the role word written.
    fn open(
        region: &impl Region,
        role: Role,
        from: Option<u32>,
    ) -> Result<(Self, u64, u64), RegionError> {
        // The header alone must fit before we read it.
        let probe = Self::check(region, 0)?;
        // SYNC: pairs with the Release store of the magic in `lay_out`.
        let magic = probe.header_words()[0].load(Ordering::Acquire);
        if magic == 0 {
            return Err(RegionError::Uninitialised);
        }
        if magic != RING_MAGIC {
            return Err(RegionError::Magic(magic));
        }
        let header = probe.header();
        if header.version.get() != RING_LAYOUT_VERSION {
            return Err(RegionError::Version(header.version.get()));
        }
        let expected = (
            core::mem::size_of::<T>() as u32,
            core::mem::align_of::<T>() as u32,
            record_stride::<T>() as u32,
        );
        let found =
            (header.record_size.get(), header.record_align.get(), header.record_stride.get());
        if expected != found {
            return Err(RegionError::RecordMismatch { expected, found });
        }
        let capacity = header.capacity.get();
        if !capacity.is_power_of_two() {
            return Err(RegionError::Capacity(capacity));
        }
        let ring = Self::check(region, capacity)?;
        let role_word = ring.take_role(role, from)?;
        Ok((ring, header.generation.get(), role_word))
    }

    /// Compare-and-swap on the role word; a handful of tries (a hostile peer could flip the
    /// word forever, and attaching must not loop on it). Returns the word written.
    fn take_role(&self, role: Role, from: Option<u32>) -> Result<u64, RegionError> {
        let word = self.role(role);
        let pid = std::process::id();
        if from == Some(pid) {
            return Err(RegionError::ReclaimSelf);
        }
        for _ in 0..8 {
            let current = word.load(Ordering::Relaxed);
            let holder = Holder::of(current);
            let allowed = match (from, holder) {
                (None, Holder::Free | Holder::Detached { .. }) => true,
                (Some(dead), Holder::Attached { pid }) => pid == dead,
                _ => false,
            };
            if !allowed {
                return Err(RegionError::RoleTaken { role, holder });
            }
            let next = attached_word(current, pid);
            // SYNC: AcqRel: Acquire pairs with the previous holder's Release in `detach`, so its
            // last position store is visible (a dead holder never detached: its positions are
            // read with Acquire by the caller anyway); Release orders nothing of ours.
            if word.compare_exchange(current, next, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return Ok(next);
            }
        }
        Err(RegionError::RoleTaken { role, holder: Holder::of(word.load(Ordering::Relaxed)) })
    }

    /// Gives the role back if the word is still exactly `ours` (the word this end wrote):
    /// a role someone took over since (a reclaim, a re-layout) is left alone. The pid and
    /// count stay, for diagnostics; only the state changes.
    fn detach(&self, role: Role, ours: u64) {
        let detached = (ours & !0b11) | ROLE_DETACHED;
        // SYNC: publishes our last position store -> Acquire of the role word in `holder`
        // and `take_role`.
        let _ =
            self.role(role).compare_exchange(ours, detached, Ordering::Release, Ordering::Relaxed);
    }

    /// `create`'s first step: takes `role` by moving its word to `laying` (which nobody can
    /// attach from), from the value checked. A role attached or being laid out is refused,
    /// ring or no ring (memory that held a ring before, with an attached role and no magic,
    /// must be zeroed or reclaimed first): so of two creators, or a creator and an attach,
    /// exactly one wins. Returns the value the word had.
    fn lock_role(&self, role: Role, laying: u64) -> Result<u64, RegionError> {
        let word = self.role(role);
        let current = word.load(Ordering::Relaxed);
        let holder = Holder::of(current);
        if matches!(holder, Holder::Attached { .. } | Holder::LayingOut { .. }) {
            return Err(RegionError::RoleTaken { role, holder });
        }
        // SYNC: Acquire pairs with the previous holder's Release in `detach` (its last
        // position store is then visible before we reset the positions); Release orders
        // nothing of ours.
        match word.compare_exchange(current, laying, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => Ok(current),
            Err(now) => Err(RegionError::RoleTaken { role, holder: Holder::of(now) }),
        }
    }

    /// Undoes [`lock_role`](Self::lock_role) after a failed `create`.
    fn unlock_role(&self, role: Role, laying: u64, was: u64) {
        let _ = self.role(role).compare_exchange(laying, was, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn holder(&self, role: Role) -> Holder {
        // SYNC: pairs with the Release in `detach`: the peer's final position is visible after.
        Holder::of(self.role(role).load(Ordering::Acquire))
    }

    fn relaid(&self, generation: u64) -> bool {
        // SYNC: pairs with the Release store of the magic in `create`.
        let magic = self.header_words()[0].load(Ordering::Acquire);
        magic != RING_MAGIC || self.header().generation.get() != generation
    }

    fn header_words(&self) -> &[AtomicU64] {
        self.mem.words(0, 64)
    }

    /// A private copy of the header (each word loaded once).
    fn header(&self) -> RingHeader {
        let mut header = RingHeader::new_zeroed();
        load_bytes(self.header_words(), header.as_mut_bytes());
        header
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset < WAIT_OFFSET);
        &self.mem.words(offset, 8)[0]
    }

    fn role(&self, role: Role) -> &AtomicU64 {
        match role {
            Role::Producer => self.word(PRODUCER_ROLE_OFFSET),
            Role::Consumer => self.word(CONSUMER_ROLE_OFFSET),
        }
    }

    fn wait_word(&self) -> &AtomicU64 {
        &self.mem.words(WAIT_OFFSET, 8)[0]
    }

    /// The words of slots `start..start + n` (`start + n <= capacity`; past it, a panic).
    #[inline(always)]
    fn slot_words(&self, start: usize, n: usize) -> &[AtomicU64] {
        assert!((start + n) as u64 <= self.capacity, "slots {start}+{n} of {}", self.capacity);
        self.mem.words(SLOTS_OFFSET + start * record_stride::<T>(), n * record_stride::<T>())
    }
}

// SAFETY: capacity is a power of two (checked at open/create) and fixed; head and tail are
// two distinct words; slots `0..capacity` are distinct runs of `stride` bytes from
// SLOTS_OFFSET, inside the region (checked in `check`).
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
        store_bytes(self.slot_words(index, 1), value.as_bytes());
    }

    #[inline(always)]
    unsafe fn read(&self, index: usize) -> T {
        let mut value = T::new_zeroed();
        load_bytes(self.slot_words(index, 1), value.as_mut_bytes());
        value
    }

    #[inline(always)]
    unsafe fn write_run(&self, start: usize, items: &[T])
    where
        T: Copy,
    {
        if record_stride::<T>() == core::mem::size_of::<T>() {
            // No gaps between slots: one copy for the whole run.
            store_bytes(self.slot_words(start, items.len()), items.as_bytes());
        } else {
            for (i, item) in items.iter().enumerate() {
                store_bytes(self.slot_words(start + i, 1), item.as_bytes());
            }
        }
    }

    #[inline(always)]
    unsafe fn read_run(&self, start: usize, out: &mut [T])
    where
        T: Copy,
    {
        if record_stride::<T>() == core::mem::size_of::<T>() {
            load_bytes(self.slot_words(start, out.len()), out.as_mut_bytes());
        } else {
            for (i, item) in out.iter_mut().enumerate() {
                load_bytes(self.slot_words(start + i, 1), item.as_mut_bytes());
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use std::sync::Arc;

    fn region(capacity: usize) -> Arc<HeapRegion> {
        Arc::new(HeapRegion::new(region_len::<u64>(capacity).unwrap()))
    }

    fn words(r: &HeapRegion) -> &[AtomicU64] {
        // SAFETY: the region is 64-aligned and a multiple of 8 long; tests only touch it
        // atomically.
        unsafe { crate::sync::atomic_words(r.as_ptr(), SLOTS_OFFSET) }
    }

    fn words_at(r: &HeapRegion, offset: usize) -> &AtomicU64 {
        &words(r)[offset / 8]
    }

    #[test]
    fn header_layout_is_fixed() {
        assert_eq!(core::mem::size_of::<RingHeader>(), 64);
        assert_eq!(offset_of!(RingHeader, magic), 0);
        assert_eq!(offset_of!(RingHeader, version), 8);
        assert_eq!(offset_of!(RingHeader, record_size), 12);
        assert_eq!(offset_of!(RingHeader, capacity), 16);
        assert_eq!(offset_of!(RingHeader, record_align), 24);
        assert_eq!(offset_of!(RingHeader, record_stride), 28);
        assert_eq!(offset_of!(RingHeader, generation), 32);
        assert_eq!(offset_of!(RingHeader, reserved), 40);
        assert_eq!(&RING_MAGIC.to_le_bytes(), b"CLSPSC01");
        assert_eq!(region_len::<u64>(8), Some(512 + 64));
        assert_eq!(region_len::<[u8; 3]>(4), Some(512 + 32), "stride rounds up to 8");
        assert_eq!(record_stride::<[u8; 24]>(), 24);
        assert_eq!(region_len::<[u8; 3]>(usize::MAX), None);
        assert_eq!(WAIT_OFFSET % 128, 0, "the wait word has a line of its own");
        const { assert!(SLOTS_OFFSET >= WAIT_OFFSET + 128) };
    }

    #[test]
    fn created_region_has_the_documented_bytes() {
        let r = region(4);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 4).unwrap();
        tx.push(0x1122_3344_5566_7788).unwrap();
        let mut bytes = vec![0u8; r.len()];
        load_bytes(
            // SAFETY: as in `words`, the whole region.
            unsafe { crate::sync::atomic_words(r.as_ptr(), r.len()) },
            &mut bytes,
        );
        assert_eq!(&bytes[0..8], b"CLSPSC01");
        assert_eq!(&bytes[8..12], &2u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &8u32.to_le_bytes());
        assert_eq!(&bytes[16..24], &4u64.to_le_bytes());
        assert_eq!(&bytes[24..28], &8u32.to_le_bytes());
        assert_eq!(&bytes[28..32], &8u32.to_le_bytes());
        assert_eq!(&bytes[32..40], &1u64.to_le_bytes(), "first generation");
        assert_eq!(
            &bytes[TAIL_OFFSET..TAIL_OFFSET + 8],
            &1u64.to_le_bytes(),
            "tail after one push"
        );
        let role = u64::from_le_bytes(bytes[PRODUCER_ROLE_OFFSET..][..8].try_into().unwrap());
        assert_eq!(role & 0b11, ROLE_ATTACHED);
        assert_eq!((role >> 32) as u32, std::process::id(), "the owner's pid");
        assert_eq!((role >> 2) & 0x3FFF_FFFF, 1, "first attachment");
        assert_eq!(&bytes[HEAD_OFFSET..HEAD_OFFSET + 8], &0u64.to_le_bytes());
        assert_eq!(&bytes[WAIT_OFFSET..WAIT_OFFSET + 4], &0u32.to_le_bytes());
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
            RegionError::TooSmall { needed: 512 + 64, len: 512 + 32 }
        );
        let tx = ShmProducer::<u64, _>::create(r.clone(), 4).unwrap();
        assert_eq!(
            ShmConsumer::<u32, _>::attach(r.clone()).unwrap_err(),
            RegionError::RecordMismatch { expected: (4, 4, 8), found: (8, 8, 8) }
        );
        let me = Holder::Attached { pid: std::process::id() };
        assert_eq!(
            ShmProducer::<u64, _>::attach(r.clone()).unwrap_err(),
            RegionError::RoleTaken { role: Role::Producer, holder: me }
        );
        let rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        let err = ShmConsumer::<u64, _>::attach(r.clone()).unwrap_err();
        assert_eq!(err, RegionError::RoleTaken { role: Role::Consumer, holder: me });
        assert_eq!(
            err.to_string(),
            format!("ring consumer role is not available: held by pid {}", std::process::id())
        );
        drop((tx, rx));
        // Corrupt the version, then the magic.
        let w = words(&r);
        w[1].store(u64::from(3u32) | (8u64 << 32), Ordering::Relaxed);
        assert_eq!(ShmConsumer::<u64, _>::attach(r.clone()).unwrap_err(), RegionError::Version(3));
        w[0].store(0xdead, Ordering::Relaxed);
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
        let w = words(&r);
        w[2].store(1 << 20, Ordering::Relaxed); // capacity far beyond the region
        assert!(matches!(
            ShmConsumer::<u64, _>::attach(r.clone()).unwrap_err(),
            RegionError::TooSmall { .. }
        ));
        w[2].store(6, Ordering::Relaxed);
        assert_eq!(ShmConsumer::<u64, _>::attach(r).unwrap_err(), RegionError::Capacity(6));
    }

    /// Defect: one write of `tail = head - 1` made `while rx.pop().is_ok()` run ~2^64 times,
    /// serving stale records without re-reading `tail`.
    #[test]
    fn endless_drain_after_one_bad_index() {
        let r = region(8);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 8).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        tx.push_slice(&[1, 2, 3]);
        assert_eq!(rx.pop(), Ok(1));
        // A hostile producer moves tail behind our head (head = 1).
        rx.ring.tail().store(0, Ordering::Relaxed);
        let mut pops = 0;
        let verdict = loop {
            match rx.pop() {
                Ok(_) => {
                    pops += 1;
                    assert!(pops <= 8, "the consumer kept serving records past a whole lap");
                }
                Err(e) => break e,
            }
        };
        let ShmPopError::Corrupt(c) = verdict else {
            panic!("expected a verdict, got {verdict:?}")
        };
        assert_eq!(pops, 2, "records 2 and 3 were published before the bad store");
        assert_eq!((c.position, c.seen, c.own), (super::super::Position::Tail, 0, 3));
        assert_eq!(rx.corruption(), Some(c));
        // Poisoned for good, even once the word looks sane again.
        rx.ring.tail().store(3, Ordering::Relaxed);
        assert_eq!(rx.pop(), Err(ShmPopError::Corrupt(c)));
        assert_eq!(rx.drain(8, |_| panic!("no record after a verdict")), Err(c));
        assert_eq!(rx.pop_slice(&mut [0; 4]), 0);
    }

    #[test]
    fn a_tail_more_than_a_lap_ahead_is_a_verdict_not_a_clamp() {
        let r = region(4);
        let tx = ShmProducer::<u64, _>::create(r.clone(), 4).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        tx.ring.tail().store(1 << 40, Ordering::Relaxed);
        let mut out = [0u64; 16];
        assert_eq!(rx.pop_slice(&mut out), 0);
        assert!(matches!(rx.pop(), Err(ShmPopError::Corrupt(_))));
        assert_eq!(rx.len(), 0);
    }

    #[test]
    fn an_impossible_head_poisons_the_producer() {
        let r = region(4);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 4).unwrap();
        let rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        tx.push_slice(&[1; 4]);
        // A hostile consumer claims to be far ahead of the producer.
        rx.ring.head().store(1000, Ordering::Relaxed);
        let err = tx.push(9).unwrap_err();
        let ShmPushError::Corrupt(9, c) = err else { panic!("expected a verdict, got {err:?}") };
        assert_eq!((c.seen, c.own), (1000, 4));
        assert_eq!(tx.push_slice(&[1; 16]), 0);
        assert_eq!(tx.slots(), 0);
        rx.ring.head().store(4, Ordering::Relaxed);
        assert!(matches!(tx.push(1), Err(ShmPushError::Corrupt(1, _))), "poisoned for good");
    }

    #[test]
    fn a_head_moving_backwards_is_a_verdict() {
        let r = region(4);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 4).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        tx.push_slice(&[1; 4]);
        assert_eq!(rx.pop_slice(&mut [0; 4]), 4);
        tx.push(2).unwrap(); // the producer saw head 4; tail is 5
                             // Still within a lap of tail, but behind the head the producer saw.
        rx.ring.head().store(2, Ordering::Relaxed);
        assert_eq!(tx.push_slice(&[3; 4]), 0);
        let c = tx.corruption().expect("a verdict");
        assert_eq!((c.seen, c.own, c.last_seen), (2, 5, 4));
    }

    /// Defect: a SIGKILLed peer stayed attached forever, and `create` silently re-laid out a
    /// ring whose other side was live. (The forked version is in tests/hostile.rs.)
    #[test]
    fn no_crash_recovery_for_roles() {
        let r = region(8);
        // Borrowing the region: forgetting this handle below leaks nothing.
        let mut tx = ShmProducer::<u64, _>::create(&*r, 8).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        tx.push_slice(&[1, 2, 3]);
        // The producer "dies": its Drop never runs, and the role word names a pid that is
        // gone (here: a made-up one).
        let dead = 0x7fff_fff0u32;
        core::mem::forget(tx);
        let word = words(&r)[PRODUCER_ROLE_OFFSET / 8].load(Ordering::Relaxed);
        words(&r)[PRODUCER_ROLE_OFFSET / 8]
            .store((u64::from(dead) << 32) | (word & 0xFFFF_FFFF), Ordering::Relaxed);
        assert_eq!(rx.peer(), Holder::Attached { pid: dead });
        assert!(!rx.is_abandoned());
        assert_eq!(
            ShmProducer::<u64, _>::attach(r.clone()).unwrap_err(),
            RegionError::RoleTaken { role: Role::Producer, holder: Holder::Attached { pid: dead } }
        );
        assert!(matches!(
            ShmProducer::<u64, _>::create(r.clone(), 8).unwrap_err(),
            RegionError::RoleTaken { role: Role::Producer, .. }
        ));
        // Reclaiming from the wrong pid fails; from the dead one it works.
        assert!(ShmProducer::<u64, _>::reclaim(r.clone(), dead + 1).is_err());
        let mut tx = ShmProducer::<u64, _>::reclaim(r.clone(), dead).unwrap();
        assert_eq!(rx.peer(), Holder::Attached { pid: std::process::id() });
        tx.push(4).unwrap();
        let mut out = [0; 8];
        assert_eq!(rx.pop_slice(&mut out), 4, "positions survive the reclaim");
        assert_eq!(&out[..4], &[1, 2, 3, 4]);
        assert!(!rx.relaid());
        // `create` refuses while the consumer is attached, and lays out generation 2 once
        // it is gone.
        drop(tx);
        assert!(rx.is_abandoned());
        let err = ShmProducer::<u64, _>::create(r.clone(), 8).unwrap_err();
        assert!(matches!(err, RegionError::RoleTaken { role: Role::Consumer, .. }), "{err}");
        drop(rx);
        let tx = ShmProducer::<u64, _>::create(r.clone(), 8).unwrap();
        assert_eq!(tx.ring.header().generation.get(), 2);
    }

    #[test]
    fn a_survivor_sees_the_ring_relaid_under_it() {
        let r = region(8);
        let tx = ShmProducer::<u64, _>::create(r.clone(), 8).unwrap();
        drop(tx);
        let rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        assert!(!rx.relaid());
        // Another process lays out a new ring after deciding our consumer is gone.
        words(&r)[CONSUMER_ROLE_OFFSET / 8].store(0, Ordering::Relaxed);
        let _tx = ShmProducer::<u64, _>::create(r.clone(), 8).unwrap();
        assert!(rx.relaid());
    }

    #[test]
    fn a_garbage_role_word_is_never_taken_over_by_attach() {
        let r = region(8);
        drop(ShmProducer::<u64, _>::create(r.clone(), 8).unwrap());
        words(&r)[CONSUMER_ROLE_OFFSET / 8].store(0x0000_0000_beef_0003, Ordering::Relaxed);
        let err = ShmConsumer::<u64, _>::attach(r.clone()).unwrap_err();
        assert_eq!(
            err,
            RegionError::RoleTaken {
                role: Role::Consumer,
                holder: Holder::Invalid(0x0000_0000_beef_0003)
            }
        );
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
        assert_eq!(rx.peer(), Holder::Detached { pid: std::process::id() });
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
    fn a_consumer_created_ring_leaves_the_producer_role_free() {
        let r = region(8);
        let mut rx = ShmConsumer::<u64, _>::create(r.clone(), 8).unwrap();
        assert_eq!(rx.peer(), Holder::Free);
        assert!(!rx.is_abandoned(), "a producer that never attached did not abandon the ring");
        assert_eq!(rx.pop(), Err(ShmPopError::Empty));
        assert_eq!(rx.ring.header().generation.get(), 1);
        let me = Holder::Attached { pid: std::process::id() };
        assert_eq!(
            ShmConsumer::<u64, _>::attach(r.clone()).unwrap_err(),
            RegionError::RoleTaken { role: Role::Consumer, holder: me }
        );
        let mut tx = ShmProducer::<u64, _>::attach(r.clone()).unwrap();
        assert_eq!(rx.peer(), me);
        assert!(!rx.is_abandoned() && !tx.is_abandoned());
        assert_eq!(tx.push_slice(&[1, 2, 3]), 3);
        let mut got = Vec::new();
        assert_eq!(rx.drain(8, |v| got.push(v)), Ok(3));
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(tx.slots(), 8);
        // Re-laid out while held: refused either way.
        assert!(matches!(
            ShmConsumer::<u64, _>::create(r.clone(), 8).unwrap_err(),
            RegionError::RoleTaken { .. }
        ));
        drop(tx);
        assert!(rx.is_abandoned(), "attached, then detached: abandoned");
        assert!(matches!(
            ShmProducer::<u64, _>::create(r.clone(), 8).unwrap_err(),
            RegionError::RoleTaken { role: Role::Consumer, .. }
        ));
        drop(rx);
        let rx = ShmConsumer::<u64, _>::create(r.clone(), 8).unwrap();
        assert_eq!(rx.ring.header().generation.get(), 2);
        assert_eq!(rx.peer(), Holder::Free, "the new layout frees the producer role");
        assert_eq!(
            ShmConsumer::<u64, _>::create(r.clone(), 6).unwrap_err(),
            RegionError::Capacity(6)
        );
    }

    #[test]
    fn a_consumer_created_ring_has_the_documented_role_words() {
        let r = region(4);
        let _rx = ShmConsumer::<u64, _>::create(r.clone(), 4).unwrap();
        let w = words(&r);
        assert_eq!(w[PRODUCER_ROLE_OFFSET / 8].load(Ordering::Relaxed), ROLE_FREE);
        let role = w[CONSUMER_ROLE_OFFSET / 8].load(Ordering::Relaxed);
        assert_eq!(role & 0b11, ROLE_ATTACHED);
        assert_eq!((role >> 32) as u32, std::process::id());
        assert_eq!(w[0].load(Ordering::Relaxed), RING_MAGIC);
        assert_eq!(w[WAIT_OFFSET / 8].load(Ordering::Relaxed), crate::wait::IDLE);
    }

    #[test]
    fn the_doorbell_rings_once_per_arming_and_only_when_armed() {
        let r = region(8);
        let mut rx = ShmConsumer::<u64, _>::create(r.clone(), 8).unwrap();
        let mut tx = ShmProducer::<u64, _>::attach(r.clone()).unwrap();
        let wait_word = || words_at(&r, WAIT_OFFSET).load(Ordering::Relaxed);
        tx.push(1).unwrap();
        assert!(!tx.take_doorbell(), "not armed: no ring");
        assert_eq!(rx.arm_doorbell(), Ok(false), "a record is ready: do not sleep");
        assert_eq!(wait_word(), crate::wait::IDLE, "and the arming is undone");
        assert_eq!(rx.pop(), Ok(1));
        assert_eq!(rx.arm_doorbell(), Ok(true), "empty: armed");
        assert_eq!(wait_word(), crate::wait::PARKED);
        tx.push(2).unwrap();
        assert!(tx.take_doorbell(), "armed: ring");
        tx.push(3).unwrap();
        assert!(!tx.take_doorbell(), "one ring per arming");
        rx.disarm_doorbell();
        assert_eq!(rx.drain(8, |_| {}), Ok(2));
        assert_eq!(rx.arm_doorbell(), Ok(true));
        rx.disarm_doorbell();
        assert_eq!(wait_word(), crate::wait::IDLE);
        tx.push(4).unwrap();
        assert!(!tx.take_doorbell(), "disarmed: no ring");
        assert!(!tx.notify(), "and no futex wake either");
    }

    #[test]
    fn arming_a_corrupt_ring_is_the_verdict() {
        let r = region(4);
        let mut rx = ShmConsumer::<u64, _>::create(r.clone(), 4).unwrap();
        words_at(&r, TAIL_OFFSET).store(1 << 40, Ordering::Relaxed);
        let c = rx.arm_doorbell().unwrap_err();
        assert_eq!(c.seen, 1 << 40);
        assert_eq!(words_at(&r, WAIT_OFFSET).load(Ordering::Relaxed), crate::wait::IDLE);
        assert_eq!(rx.arm_doorbell(), Err(c), "poisoned for good");
    }

    #[test]
    fn drain_is_bounded_and_counted() {
        let r = region(16);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 16).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(r).unwrap();
        assert_eq!(tx.push_slice(&(0..10).collect::<Vec<_>>()), 10);
        let mut got = Vec::new();
        assert_eq!(rx.drain(4, |v| got.push(v)), Ok(4));
        assert_eq!(rx.drain(4, |v| got.push(v)), Ok(4));
        assert_eq!(rx.drain(4, |v| got.push(v)), Ok(2));
        assert_eq!(rx.drain(4, |v| got.push(v)), Ok(0));
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        let stats = rx.stats();
        assert_eq!((stats.records, stats.drains, stats.drains_at_max), (10, 4, 2));
        assert_eq!(tx.slots(), 16, "a drain frees what it read");
    }

    #[test]
    fn odd_sized_records_use_word_aligned_slots() {
        type Odd = [u8; 13];
        let r = Arc::new(HeapRegion::new(region_len::<Odd>(4).unwrap()));
        let mut tx = ShmProducer::<Odd, _>::create(r.clone(), 4).unwrap();
        let mut rx = ShmConsumer::<Odd, _>::attach(r).unwrap();
        let items: Vec<Odd> = (0..6u8).map(|i| [i; 13]).collect();
        assert_eq!(tx.push_slice(&items[..3]), 3);
        let mut out = [[0u8; 13]; 2];
        assert_eq!(rx.pop_slice(&mut out), 2);
        assert_eq!(out, [[0; 13], [1; 13]]);
        assert_eq!(tx.push_slice(&items[3..]), 3, "wraps");
        let mut got = Vec::new();
        rx.drain(8, |v| got.push(v)).unwrap();
        assert_eq!(got, items[2..].to_vec());
    }

    /// Defect: slots were copied with plain `ptr::read`/`ptr::write` while the peer may be
    /// writing them: a data race (UB). Under Miri the old code is reported here; now every
    /// slot access is atomic and this is just a garbage-in, garbage-out test.
    #[test]
    fn plain_reads_and_writes_of_memory_the_peer_writes() {
        let r = region(4);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 4).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        let hostile = {
            let r = r.clone();
            std::thread::spawn(move || {
                // SAFETY: the slot words are inside the region, which outlives the thread.
                let slots = unsafe { crate::sync::atomic_words(r.as_ptr().add(SLOTS_OFFSET), 32) };
                for i in 0..if cfg!(miri) { 50 } else { 20_000 } {
                    for w in slots {
                        w.store(i, Ordering::Relaxed);
                    }
                }
            })
        };
        for i in 0..if cfg!(miri) { 50 } else { 20_000 } {
            let _ = tx.push(i);
            let _ = tx.push_slice(&[i, i]);
            let _ = rx.pop();
            let _ = rx.pop_slice(&mut [0; 3]);
        }
        hostile.join().unwrap();
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
        let n: u64 = if cfg!(miri) { 100 } else { 200_000 };
        let writer = std::thread::spawn(move || {
            let mut seq = 0;
            while seq < n {
                let batch: Vec<Msg> =
                    (seq..(seq + 7).min(n)).map(|s| Msg { seq: s, check: !s }).collect();
                let pushed = tx.push_slice(&batch) as u64;
                if pushed > 0 {
                    tx.notify();
                }
                seq += pushed;
            }
        });
        let mut next = 0;
        let mut out = [Msg { seq: 0, check: 0 }; 5];
        while next < n {
            let k = rx.pop_slice(&mut out);
            for m in &out[..k] {
                assert_eq!(*m, Msg { seq: next, check: !next });
                next += 1;
            }
            if k == 0 {
                let _ = rx.wait(Some(Duration::from_millis(10))).unwrap();
            }
        }
        writer.join().unwrap();
        assert!(rx.is_abandoned());
    }

    #[test]
    fn a_parked_consumer_is_woken_by_notify_and_by_the_producer_leaving() {
        let r = region(8);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 8).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        assert!(!tx.notify(), "nobody parked: no syscall");
        let waiter = std::thread::spawn(move || {
            // Bounded waits: a lost wake-up fails the test (TimedOut) instead of hanging it.
            let long = Some(Duration::from_secs(10));
            assert_eq!(rx.wait(long), Ok(Parked::Ready));
            assert_eq!(rx.pop(), Ok(5));
            assert_eq!(rx.wait(long), Ok(Parked::Ready), "woken by the producer's drop");
            assert!(rx.is_abandoned());
            rx.stats()
        });
        // Let the consumer go to sleep (not required for correctness: only for coverage).
        let wait = |r: &HeapRegion| {
            // SAFETY: the wait word lies inside the region and is only accessed atomically.
            let word = unsafe { &*r.as_ptr().add(WAIT_OFFSET).cast::<AtomicU64>() };
            while word.load(Ordering::Relaxed) != crate::wait::PARKED {
                std::thread::yield_now();
            }
        };
        wait(&r);
        tx.push(5).unwrap();
        tx.notify();
        wait(&r);
        drop(tx);
        let stats = waiter.join().unwrap();
        assert_eq!(stats.records, 1);
    }

    /// The memory-safety half of the consumer's check: a `tail` within a lap of the last one
    /// seen but more than a lap ahead of `head` would make a copy run past the slots.
    #[test]
    fn a_tail_more_than_a_lap_ahead_of_head_is_a_verdict() {
        let r = region(4);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 4).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        assert_eq!(tx.push_slice(&[1, 2, 3, 4]), 4);
        assert_eq!(rx.pop(), Ok(1));
        tx.push(5).unwrap();
        assert_eq!(rx.len(), 4); // cached tail 5, head 1
        rx.ring.tail().store(9, Ordering::Relaxed); // 4 past the cached tail, 8 past head
        assert_eq!(rx.pop_slice(&mut [0; 8]), 0);
        assert!(rx.corruption().is_some());
    }

    /// The memory-safety half of the producer's check: a `head` within a lap of the last
    /// one seen but ahead of `tail` would make the free count underflow.
    #[test]
    fn a_head_ahead_of_tail_is_a_verdict() {
        let r = region(4);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 4).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        assert_eq!(tx.push_slice(&[1, 2, 3, 4]), 4);
        assert_eq!(rx.pop_slice(&mut [0; 4]), 4);
        tx.push(5).unwrap(); // cached head 4, tail 5
        rx.ring.head().store(8, Ordering::Relaxed);
        assert_eq!(tx.push_slice(&[0; 8]), 0);
        assert!(tx.corruption().is_some());
    }

    #[test]
    fn a_tail_moving_backwards_is_a_verdict() {
        let r = region(8);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 8).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        tx.push_slice(&[1, 2, 3, 4]);
        assert_eq!(rx.pop(), Ok(1)); // cached tail 4, head 1
        assert_eq!(rx.pop_slice(&mut [0; 3]), 3); // head 4
        rx.ring.tail().store(3, Ordering::Relaxed); // behind the tail seen, still "near"
        assert_eq!(rx.pop(), Err(ShmPopError::Corrupt(rx.corruption().unwrap())));
    }

    /// A consumer never trusts the `tail` it finds at attach: a garbage one is checked at the
    /// first refresh, not used to index the slots.
    #[test]
    fn a_consumer_checks_the_tail_it_finds_at_attach() {
        let r = region(4);
        drop(ShmProducer::<u64, _>::create(r.clone(), 4).unwrap());
        words(&r)[TAIL_OFFSET / 8].store(7, Ordering::Relaxed); // 7 records in a 4-slot ring
        let mut rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        assert_eq!(rx.pop_slice(&mut [0; 8]), 0);
        assert!(rx.corruption().is_some());
    }

    /// Defect (review): `create` checked the role words, then reset them: two creators (or a
    /// creator and an attach) could both win. Now the role words are taken by CAS first:
    /// of several threads creating one fresh ring at once, exactly one succeeds.
    #[test]
    fn create_takes_the_roles_before_laying_out() {
        for _ in 0..if cfg!(miri) { 2 } else { 50 } {
            let r = region(8);
            let start = Arc::new(std::sync::Barrier::new(4));
            let created: Vec<bool> = (0..4)
                .map(|_| {
                    let (r, start) = (r.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        // Leak a success so the role stays held while the others try.
                        ShmProducer::<u64, _>::create(&*r, 8).map(core::mem::forget).is_ok()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect();
            assert_eq!(created.iter().filter(|&&c| c).count(), 1, "{created:?}");
            // A role being laid out refuses attach.
            let laying = (u64::from(std::process::id()) << 32) | ROLE_LAYING_OUT;
            words(&r)[CONSUMER_ROLE_OFFSET / 8].store(laying, Ordering::Relaxed);
            assert!(matches!(
                ShmConsumer::<u64, _>::attach(r.clone()).unwrap_err(),
                RegionError::RoleTaken { holder: Holder::LayingOut { .. }, .. }
            ));
        }
    }

    /// Defect (review): `detach` matched by pid only, and a process could `reclaim` from
    /// itself: a stale handle then detached the reclaimed role, and two producers ran.
    #[test]
    fn a_stale_handle_does_not_detach_a_role_taken_over() {
        let r = region(8);
        let tx = ShmProducer::<u64, _>::create(r.clone(), 8).unwrap();
        let rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        assert_eq!(
            ShmProducer::<u64, _>::reclaim(r.clone(), std::process::id()).unwrap_err(),
            RegionError::ReclaimSelf
        );
        // Another process (same pid here: a pid namespace, say) took the role over.
        let theirs = attached_word(tx.role_word, std::process::id());
        words(&r)[PRODUCER_ROLE_OFFSET / 8].store(theirs, Ordering::Relaxed);
        drop(tx);
        assert_eq!(
            words(&r)[PRODUCER_ROLE_OFFSET / 8].load(Ordering::Relaxed),
            theirs,
            "the old handle left the new holder's word alone"
        );
        assert!(!rx.is_abandoned());
    }

    /// Defect (review): a panic in `drain`'s callback left the records of that call in the
    /// ring, so they (and the record that panicked) came back on every later drain.
    #[test]
    fn a_panicking_drain_callback_does_not_redeliver() {
        let r = region(8);
        let mut tx = ShmProducer::<u64, _>::create(r.clone(), 8).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(r.clone()).unwrap();
        tx.push_slice(&[1, 2, 3, 4, 5]);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rx.drain(8, |v| assert_ne!(v, 3, "poison record"))
        }));
        assert!(panicked.is_err());
        let mut rest = Vec::new();
        assert_eq!(rx.drain(8, |v| rest.push(v)), Ok(2));
        assert_eq!(rest, [4, 5], "records 1..=3 were handed out once");
        assert_eq!(tx.slots(), 8, "and their slots were freed");
    }

    #[test]
    fn a_second_layout_over_one_region_is_refused() {
        let r = region(8);
        let _tx = ShmProducer::<u64, _>::create(r.clone(), 8).unwrap();
        let spec = crate::seqlock::StreamSpec {
            epoch: 1,
            stream_id: 1,
            nslots: 1,
            pools: vec![crate::seqlock::PoolSpec { pool_id: 1, stride_bytes: 64 }],
        };
        let pool = HeapRegion::new(crate::shm::payload_pool_len(1, 64) as usize);
        let err = crate::seqlock::Stream::create(&spec, &*r, vec![&pool], 1, 0).unwrap_err();
        assert_eq!(
            err,
            crate::seqlock::StreamError::OtherLayout {
                region: crate::seqlock::RegionName::HeaderRing,
                found: LayoutKind::SpscRing
            }
        );
    }
}
