//! Streams: one header ring and its payload pools as a process maps them, and the writer and
//! readers of their slots.
//!
//! A [`Stream`] holds its regions (`R`: borrowed `&HeapRegion`, or owned such as
//! `Arc<Mapping>`, so a consumer can drop one epoch's mappings and map the next), and knows the
//! layout it checked in their superblocks, read atomically because the owner keeps writing
//! `activity_timestamp_ns` in place. [`Publisher`] writes frames into it, at most one per ring
//! in a process; [`Subscriber`] reads them:
//!
//! ```
//! use corelane_rings::region::HeapRegion;
//! use corelane_rings::seqlock::{Poll, PoolSpec, Publisher, Stream, StreamSpec, Subscriber};
//! use corelane_rings::shm::{self, Dtype, MajorOrder, ProgressUnit, TensorHeader};
//!
//! let spec = StreamSpec { epoch: 1, stream_id: 10_000, nslots: 8, pools: vec![PoolSpec { pool_id: 1, stride_bytes: 64 }] };
//! let header = HeapRegion::new(shm::header_ring_len(8) as usize);
//! let pool = HeapRegion::new(shm::payload_pool_len(8, 64) as usize);
//! // The driver lays the files out; producer and consumers open and check them.
//! Stream::create(&spec, &header, vec![&pool], 4242, 0).unwrap();
//! let mut publisher = Publisher::new(Stream::open(&spec, &header, vec![&pool]).unwrap()).unwrap();
//! let mut subscriber = Subscriber::new(Stream::open(&spec, &header, vec![&pool]).unwrap());
//!
//! let tensor = TensorHeader::new(Dtype::Uint8, MajorOrder::Row, &[5], &[], ProgressUnit::None, 0).unwrap();
//! let mut claim = publisher.claim(5).unwrap();
//! claim.write_payload(b"hello");
//! claim.finish(tensor, 1, 0).commit();
//!
//! let mut out = [0u8; 64];
//! let Poll::Frame(frame) = subscriber.poll(&mut out) else { panic!("a frame") };
//! assert_eq!(&out[..frame.payload_len], b"hello");
//! ```
//!
//! # Large frames without copies
//!
//! [`Subscriber::read_with`] hands the payload to a closure as a [`PayloadView`] of the pool
//! slot (byte ranges copied out on demand, never `&[u8]` into memory the writer may be
//! changing) and returns the closure's result only if the slot was still the same frame
//! afterwards: a frame overwritten during use comes back as [`Late::Torn`], with the closure's
//! result dropped, so "the validation failed after use" cannot be missed through the return
//! value. (What the closure did meanwhile through its captures, such as bytes copied into a
//! buffer it borrowed, is not undone: treat anything it produced as unvalidated until
//! `read_with` returns `Ok`.) The writer fills the slot in place with [`SlotClaim::write_at`].
//! Payload bytes are copied at `memcpy` speed, and only ever byte-wise (see the crate's
//! atomics door), which is why neither side hands a payload out as words.

use core::fmt;
use std::sync::Mutex;

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::{HeaderRing, Late, LayoutError, PayloadPool};
use crate::region::{LayoutClaim, LayoutKind, Region};
use crate::shm::{
    self, ExpectedRegion, InvalidHeader, SlotHeader, Superblock, SuperblockError, Tensor,
    TensorHeader, ACTIVITY_TIMESTAMP_OFFSET, SLOT_BYTES, SUPERBLOCK_BYTES,
};
use crate::sync::{load_bytes, load_payload, store_bytes, store_payload, AtomicU64, Ordering};

/// The spec's recommended `max_outstanding_seq_gap`: the most a polling reader skips in one
/// resync when it finds itself lapped.
pub const MAX_OUTSTANDING_SEQ_GAP: u64 = 256;

/// What the announce (or attach response) says a stream is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    /// The epoch the files belong to.
    pub epoch: u64,
    /// The stream.
    pub stream_id: u32,
    /// Header ring slots (a power of two); every pool has as many.
    pub nslots: u32,
    /// The payload pools, in any order.
    pub pools: Vec<PoolSpec>,
}

/// One payload pool of a [`StreamSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    /// Its id, unique in the stream.
    pub pool_id: u16,
    /// Bytes per slot, a non-zero multiple of 64.
    pub stride_bytes: u32,
}

/// Which file of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionName {
    /// The header ring.
    HeaderRing,
    /// A payload pool, by id.
    Pool(u16),
    /// The `corelane.wake` sidecar.
    Wake,
}

impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionName::HeaderRing => f.write_str("header ring"),
            RegionName::Pool(id) => write!(f, "pool {id}"),
            RegionName::Wake => f.write_str("wake sidecar"),
        }
    }
}

/// Why a stream could not be opened or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// The spec or a region's size breaks the layout rules.
    Layout(LayoutError),
    /// A region's superblock does not match the spec (conformance 1-5, 8).
    Superblock {
        /// Which region.
        region: RegionName,
        /// What was wrong.
        error: SuperblockError,
    },
    /// The spec names no pool.
    NoPools,
    /// The number of pool regions given differs from the spec's.
    PoolCount {
        /// Pools in the spec.
        expected: usize,
        /// Regions given.
        given: usize,
    },
    /// Another [`Publisher`] of this process writes the ring at this address.
    WriterTaken {
        /// The stream.
        stream_id: u32,
    },
    /// The region holds another structure in this process (one layout per region).
    OtherLayout {
        /// Which region.
        region: RegionName,
        /// What it holds.
        found: LayoutKind,
    },
    /// Writing needs a writable region; this one is read-only ([`Region::read_only`]).
    ReadOnly {
        /// Which region.
        region: RegionName,
    },
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Layout(e) => e.fmt(f),
            Self::Superblock { region, error } => write!(f, "{region}: {error}"),
            Self::NoPools => f.write_str("a stream needs at least one payload pool"),
            Self::PoolCount { expected, given } => {
                write!(f, "the stream has {expected} pools but {given} pool regions were given")
            }
            Self::WriterTaken { stream_id } => {
                write!(f, "stream {stream_id}: another publisher in this process writes its ring")
            }
            Self::OtherLayout { region, found } => {
                write!(f, "{region}: the region already holds a {found:?} in this process")
            }
            Self::ReadOnly { region } => {
                write!(f, "{region}: writing needs a writable mapping, this one is read-only")
            }
        }
    }
}

impl std::error::Error for StreamError {}

impl From<LayoutError> for StreamError {
    fn from(e: LayoutError) -> Self {
        StreamError::Layout(e)
    }
}

/// Whether a mapped stream is still the one to read (spec §5.6 liveness rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Same file, same owner, heartbeat fresh.
    Live,
    /// `activity_timestamp_ns` is older than allowed: unmap and wait for a new epoch.
    Stale {
        /// How old, ns.
        age_ns: u64,
    },
    /// The superblock's pid changed: another process took the file over; unmap.
    PidChanged {
        /// Pid at open.
        was: u64,
        /// Pid now.
        now: u64,
    },
    /// The superblock no longer matches what was opened (re-laid out): unmap.
    Replaced(SuperblockError),
}

/// A header ring and its payload pools, checked against a [`StreamSpec`].
#[derive(Debug)]
pub struct Stream<R: Region> {
    header: R,
    /// Sorted by stride, smallest first, so the first that fits is the smallest.
    pools: Vec<Pool<R>>,
    epoch: u64,
    stream_id: u32,
    nslots: u32,
    pid: u64,
    _layout: LayoutClaim,
}

#[derive(Debug)]
struct Pool<R> {
    region: R,
    pool_id: u16,
    stride_bytes: u32,
    _layout: LayoutClaim,
}

impl<R: Region> Stream<R> {
    /// Lays out a new stream (what the driver does once per epoch), then opens it.
    /// `pools[i]` is the region of `spec.pools[i]`; `pid` and `now_ns` go into the
    /// superblocks. Every header slot's `seq_commit` is reset to "seq 0 in progress", so
    /// frames of an earlier epoch laid out in the same files are never served as this one's.
    pub fn create(
        spec: &StreamSpec,
        header: R,
        pools: Vec<R>,
        pid: u64,
        now_ns: u64,
    ) -> Result<Self, StreamError> {
        check_spec(spec, pools.len())?;
        writable(&header, RegionName::HeaderRing)?;
        for (p, region) in spec.pools.iter().zip(&pools) {
            writable(region, RegionName::Pool(p.pool_id))?;
        }
        let layout = claim(&header, LayoutKind::HeaderRing, RegionName::HeaderRing)?;
        let ring = Superblock::header_ring(spec.epoch, spec.stream_id, spec.nslots, pid, now_ns);
        write_superblock(&header, &ring, RegionName::HeaderRing)?;
        let slots = HeaderRing::from_region(&header, spec.nslots)?;
        for index in 0..spec.nslots {
            slots.slot(u64::from(index)).reset();
        }
        drop(layout);
        for (p, region) in spec.pools.iter().zip(&pools) {
            let sb = Superblock::payload_pool(
                spec.epoch,
                spec.stream_id,
                p.pool_id,
                spec.nslots,
                p.stride_bytes,
                pid,
                now_ns,
            );
            write_superblock(region, &sb, RegionName::Pool(p.pool_id))?;
        }
        Self::open(spec, header, pools)
    }

    /// Checks every region's superblock (loaded atomically) against `spec` and the region's
    /// length: magic, version, type, epoch, stream, pool id, nslots, stride, size. Refuses
    /// duplicate pool ids and pools whose nslots differ from the ring's.
    pub fn open(spec: &StreamSpec, header: R, pools: Vec<R>) -> Result<Self, StreamError> {
        check_spec(spec, pools.len())?;
        let layout = claim(&header, LayoutKind::HeaderRing, RegionName::HeaderRing)?;
        let len = header.len() as u64;
        let expected = ExpectedRegion::header_ring(spec.epoch, spec.stream_id, spec.nslots, len);
        let sb = load_superblock(&header, RegionName::HeaderRing)?;
        sb.validate(&expected)
            .map_err(|error| StreamError::Superblock { region: RegionName::HeaderRing, error })?;
        // The views must be constructible from now on (the invariant `ring()` relies on).
        HeaderRing::from_region(&header, spec.nslots)?;
        let mut list = Vec::with_capacity(pools.len());
        for (p, region) in spec.pools.iter().zip(pools) {
            let name = RegionName::Pool(p.pool_id);
            let pool_layout = claim(&region, LayoutKind::PayloadPool, name)?;
            let expected = ExpectedRegion::payload_pool(
                spec.epoch,
                spec.stream_id,
                p.pool_id,
                spec.nslots,
                p.stride_bytes,
                region.len() as u64,
            );
            load_superblock(&region, name)?
                .validate(&expected)
                .map_err(|error| StreamError::Superblock { region: name, error })?;
            PayloadPool::from_region(&region, p.pool_id, spec.nslots, p.stride_bytes)?;
            list.push(Pool {
                region,
                pool_id: p.pool_id,
                stride_bytes: p.stride_bytes,
                _layout: pool_layout,
            });
        }
        list.sort_by_key(|p| p.stride_bytes);
        Ok(Self {
            header,
            pools: list,
            epoch: spec.epoch,
            stream_id: spec.stream_id,
            nslots: spec.nslots,
            pid: sb.pid.get(),
            _layout: layout,
        })
    }

    /// The epoch checked at open.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The stream id.
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    /// Header ring slots.
    pub fn nslots(&self) -> u32 {
        self.nslots
    }

    /// The header ring's superblock as it is now (each word loaded atomically once; the
    /// owner may be refreshing `activity_timestamp_ns`).
    pub fn superblock(&self) -> Superblock {
        // Open checked the region holds a superblock.
        load_superblock(&self.header, RegionName::HeaderRing)
            .unwrap_or_else(|_| Superblock::new_zeroed())
    }

    /// The owner's heartbeat: `activity_timestamp_ns` of the header ring, `CLOCK_MONOTONIC`.
    pub fn activity_timestamp_ns(&self) -> u64 {
        self.activity_word().load(Ordering::Relaxed)
    }

    /// Refreshes the heartbeat (the superblock owner, once per announce period).
    ///
    /// Returns `false`, writing nothing, on a read-only mapping (a consumer's).
    pub fn touch(&self, now_ns: u64) -> bool {
        if self.header.read_only() {
            return false;
        }
        self.activity_word().store(now_ns, Ordering::Relaxed);
        true
    }

    /// Whether this mapping is still the stream to read at `now_ns`: the superblock still
    /// matches, its pid is the one seen at open, and the heartbeat is at most `max_age_ns`
    /// old (the spec: 3 announce periods).
    pub fn liveness(&self, now_ns: u64, max_age_ns: u64) -> Liveness {
        let sb = self.superblock();
        let expected = ExpectedRegion::header_ring(
            self.epoch,
            self.stream_id,
            self.nslots,
            self.header.len() as u64,
        );
        if let Err(e) = sb.validate(&expected) {
            return Liveness::Replaced(e);
        }
        if sb.pid.get() != self.pid {
            return Liveness::PidChanged { was: self.pid, now: sb.pid.get() };
        }
        let age_ns = now_ns.saturating_sub(sb.activity_timestamp_ns.get());
        if age_ns > max_age_ns {
            return Liveness::Stale { age_ns };
        }
        Liveness::Live
    }

    /// Gives the regions back (header, pools in stride order).
    pub fn into_regions(self) -> (R, Vec<R>) {
        (self.header, self.pools.into_iter().map(|p| p.region).collect())
    }

    fn activity_word(&self) -> &AtomicU64 {
        // Open checked the superblock fits; ACTIVITY_TIMESTAMP_OFFSET is 8-aligned.
        &crate::region::region_words(&self.header, ACTIVITY_TIMESTAMP_OFFSET, 8)
            .expect("open checked the superblock fits")[0]
    }

    fn ring(&self) -> HeaderRing<'_> {
        HeaderRing::trusted(&self.header, self.nslots)
    }

    fn pool(&self, i: usize) -> PayloadPool<'_> {
        let p = &self.pools[i];
        PayloadPool::trusted(&p.region, p.pool_id, self.nslots, p.stride_bytes)
    }

    fn pool_by_id(&self, pool_id: u16) -> Option<PayloadPool<'_>> {
        self.pools.iter().position(|p| p.pool_id == pool_id).map(|i| self.pool(i))
    }

    fn stride_of(&self, pool_id: u16) -> Option<u32> {
        self.pools.iter().find(|p| p.pool_id == pool_id).map(|p| p.stride_bytes)
    }
}

fn check_spec(spec: &StreamSpec, given: usize) -> Result<(), StreamError> {
    if !spec.nslots.is_power_of_two() {
        return Err(LayoutError::Nslots(spec.nslots).into());
    }
    if spec.pools.is_empty() {
        return Err(StreamError::NoPools);
    }
    if spec.pools.len() != given {
        return Err(StreamError::PoolCount { expected: spec.pools.len(), given });
    }
    for (i, p) in spec.pools.iter().enumerate() {
        if spec.pools[..i].iter().any(|q| q.pool_id == p.pool_id) {
            return Err(LayoutError::DuplicatePool(p.pool_id).into());
        }
        if p.stride_bytes == 0 || !p.stride_bytes.is_multiple_of(shm::POOL_STRIDE_ALIGN) {
            return Err(LayoutError::Stride(p.stride_bytes).into());
        }
    }
    Ok(())
}

/// Claims `region` for `layout` (one layout per region in a process).
fn writable<R: Region + ?Sized>(region: &R, name: RegionName) -> Result<(), StreamError> {
    if region.read_only() {
        return Err(StreamError::ReadOnly { region: name });
    }
    Ok(())
}

fn claim<R: Region>(
    region: &R,
    layout: LayoutKind,
    name: RegionName,
) -> Result<LayoutClaim, StreamError> {
    LayoutClaim::take(region, layout)
        .map_err(|found| StreamError::OtherLayout { region: name, found })
}

fn superblock_words<R: Region>(region: &R, name: RegionName) -> Result<&[AtomicU64], StreamError> {
    crate::region::region_words(region, 0, SUPERBLOCK_BYTES).ok_or(StreamError::Superblock {
        region: name,
        error: SuperblockError::FileTooShort {
            expected: SUPERBLOCK_BYTES as u64,
            seen: region.len() as u64,
        },
    })
}

fn load_superblock<R: Region>(region: &R, name: RegionName) -> Result<Superblock, StreamError> {
    let mut sb = Superblock::new_zeroed();
    load_bytes(superblock_words(region, name)?, sb.as_mut_bytes());
    Ok(sb)
}

fn write_superblock<R: Region>(
    region: &R,
    sb: &Superblock,
    name: RegionName,
) -> Result<(), StreamError> {
    store_bytes(superblock_words(region, name)?, sb.as_bytes());
    Ok(())
}

/// Header-ring base addresses that a [`Publisher`] of this process writes: one writer per ring.
static WRITERS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// The writing side of one stream: owns its sequence counter. At most one per ring in a
/// process ([`StreamError::WriterTaken`], by the ring's address: a file mapped twice in one
/// process is two rings to this check, and a leaked publisher keeps its address taken);
/// across processes the driver's exclusive producer lease is what keeps a second writer out.
#[derive(Debug)]
pub struct Publisher<R: Region> {
    stream: Stream<R>,
    next_seq: u64,
    _writer: WriterGuard,
}

/// This process's claim to write one ring; released on drop.
#[derive(Debug)]
struct WriterGuard(usize);

impl WriterGuard {
    fn take(key: usize, stream_id: u32) -> Result<Self, StreamError> {
        let mut writers = WRITERS.lock().unwrap_or_else(|e| e.into_inner());
        if writers.contains(&key) {
            return Err(StreamError::WriterTaken { stream_id });
        }
        writers.push(key);
        Ok(Self(key))
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        let mut writers = WRITERS.lock().unwrap_or_else(|e| e.into_inner());
        writers.retain(|&k| k != self.0);
    }
}

impl<R: Region> Publisher<R> {
    /// A publisher starting at seq 0 (a new epoch).
    pub fn new(stream: Stream<R>) -> Result<Self, StreamError> {
        writable(&stream.header, RegionName::HeaderRing)?;
        for p in &stream.pools {
            writable(&p.region, RegionName::Pool(p.pool_id))?;
        }
        let writer = WriterGuard::take(stream.header.as_ptr() as usize, stream.stream_id)?;
        Ok(Self { stream, next_seq: 0, _writer: writer })
    }

    /// The stream written.
    pub fn stream(&self) -> &Stream<R> {
        &self.stream
    }

    /// The seq the next claim will write.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Claims the slot for the next seq and the smallest pool whose stride holds
    /// `values_len` bytes; the slot reads as in progress until committed. No pool fits: the
    /// frame is dropped and nothing is claimed (spec §2.2).
    pub fn claim(&mut self, values_len: u32) -> Result<SlotClaim<'_>, TooLarge> {
        let Self { stream, next_seq, .. } = self;
        let pool_index = stream
            .pools
            .iter()
            .position(|p| p.stride_bytes >= values_len)
            .ok_or(TooLarge { values_len })?;
        let seq = *next_seq;
        let index = shm::header_index(seq, stream.nslots);
        let claimed = stream.ring().slot(seq).claim_owned(seq);
        Ok(SlotClaim { claimed, pool: stream.pool(pool_index), next_seq, index, values_len })
    }

    /// Stops writing; the stream can be given to a new publisher.
    pub fn into_stream(self) -> Stream<R> {
        self.stream
    }
}

/// No pool's stride holds the frame: the frame is dropped, nothing was claimed (spec §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge {
    /// The payload length asked for.
    pub values_len: u32,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "payload of {} bytes fits no pool stride", self.values_len)
    }
}

impl std::error::Error for TooLarge {}

/// A claimed header slot and its payload slot. Write the payload, then
/// [`finish`](Self::finish) with the header, then [`FilledSlot::commit`]. Every borrow of the
/// slot's memory ends before the commit.
#[must_use = "a claimed slot stays in progress (unreadable) until finished and committed"]
#[derive(Debug)]
pub struct SlotClaim<'p> {
    claimed: super::Claimed<'p>,
    pool: PayloadPool<'p>,
    next_seq: &'p mut u64,
    index: u32,
    values_len: u32,
}

impl<'p> SlotClaim<'p> {
    /// The seq being written.
    pub fn seq(&self) -> u64 {
        self.claimed.seq()
    }

    /// The pool chosen for the payload.
    pub fn pool_id(&self) -> u16 {
        self.pool.pool_id()
    }

    /// The payload length claimed.
    pub fn values_len(&self) -> u32 {
        self.values_len
    }

    /// Copies `bytes` to the start of the payload slot.
    ///
    /// # Panics
    /// If `bytes` is longer than the `values_len` claimed.
    pub fn write_payload(&mut self, bytes: &[u8]) {
        self.write_at(0, bytes);
    }

    /// Copies `bytes` into the payload slot at `offset`: a decoder writing row by row, in
    /// place, with no staging buffer for the whole frame.
    ///
    /// # Panics
    /// If the range ends past the `values_len` claimed.
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset.saturating_add(bytes.len());
        assert!(
            end <= self.values_len as usize,
            "payload write of {} bytes at {offset} exceeds the {} claimed",
            bytes.len(),
            self.values_len
        );
        store_payload(self.pool.slot_words(self.index), offset, bytes);
    }

    /// Writes the whole slot header (every byte rewritten, spec §2.2 step 4).
    ///
    /// Every access to the slot's memory goes through the claim, which this consumes: nothing
    /// can write the frame after its commit.
    ///
    /// ```compile_fail,E0505
    /// # use corelane_rings::region::HeapRegion;
    /// # use corelane_rings::seqlock::{PoolSpec, Publisher, Stream, StreamSpec};
    /// # use corelane_rings::shm::{self, Dtype, MajorOrder, ProgressUnit, TensorHeader};
    /// # let spec = StreamSpec { epoch: 1, stream_id: 1, nslots: 2, pools: vec![PoolSpec { pool_id: 1, stride_bytes: 64 }] };
    /// # let (h, p) = (HeapRegion::new(shm::header_ring_len(2) as usize), HeapRegion::new(shm::payload_pool_len(2, 64) as usize));
    /// # let mut publisher = Publisher::new(Stream::create(&spec, &h, vec![&p], 1, 0).unwrap()).unwrap();
    /// # let tensor = TensorHeader::new(Dtype::Uint8, MajorOrder::Row, &[8], &[], ProgressUnit::None, 0).unwrap();
    /// let mut claim = publisher.claim(8).unwrap();
    /// let writer = &mut claim;
    /// claim.finish(tensor, 0, 0).commit(); // error: `claim` is borrowed
    /// writer.write_at(0, &[7; 8]);
    /// ```
    pub fn finish(
        self,
        tensor: TensorHeader,
        timestamp_ns: u64,
        meta_version: u32,
    ) -> FilledSlot<'p> {
        let header = SlotHeader::new(
            self.values_len,
            self.index,
            self.pool.pool_id(),
            timestamp_ns,
            meta_version,
            tensor,
        );
        // Word 0 of the image is seq_commit, owned by the claim: store words 1.. only.
        store_bytes(self.claimed.words(), &header.as_bytes()[8..]);
        FilledSlot { claimed: self.claimed, next_seq: self.next_seq }
    }
}

/// A slot with payload and header written, ready to commit.
#[must_use = "a filled slot stays in progress (unreadable) until committed"]
#[derive(Debug)]
pub struct FilledSlot<'p> {
    claimed: super::Claimed<'p>,
    next_seq: &'p mut u64,
}

impl FilledSlot<'_> {
    /// Publishes the slot; returns its seq. The next claim takes the next seq.
    pub fn commit(self) -> u64 {
        let seq = self.claimed.commit();
        *self.next_seq = seq + 1;
        seq
    }
}

/// A frame that passed both seqlock checks and the header validation.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    /// Its sequence number.
    pub seq: u64,
    /// The validated tensor description (strides inferred).
    pub tensor: Tensor,
    /// Payload bytes (`values_len_bytes`).
    pub payload_len: usize,
}

/// A payload slot being read in place: valid only inside [`Subscriber::read_with`]'s closure,
/// and whatever the closure computes from it counts only if the frame is still there after.
#[derive(Clone, Copy, Debug)]
pub struct PayloadView<'a> {
    words: &'a [AtomicU64],
    len: usize,
}

impl<'a> PayloadView<'a> {
    /// Payload bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame has no payload.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies payload bytes from `offset` into `out` (as many as both have, 0 for an offset
    /// at or past the end); returns how many.
    pub fn copy_to(&self, offset: usize, out: &mut [u8]) -> usize {
        let n = self.len.saturating_sub(offset).min(out.len());
        if n > 0 {
            load_payload(self.words, offset, &mut out[..n]);
        }
        n
    }
}

/// Why a read returned no frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The slot was in progress, held another seq, or changed while read (`drops_late`).
    Late(Late),
    /// The slot was stable but its header breaks the spec (counted per reason).
    Invalid(InvalidHeader),
    /// The caller's payload buffer is shorter than the frame's `values_len_bytes`.
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: u32,
    },
    /// A descriptor seq of 2^63 or more: `seq_commit` holds 63 bits of seq, so no slot can
    /// carry it (it comes from another process: refused, not followed).
    SeqOutOfRange {
        /// The seq asked for.
        seq: u64,
    },
    /// A descriptor for another epoch than the mapped one (spec §2.2 consumer step 1).
    Epoch {
        /// The mapped epoch.
        mapped: u64,
        /// The descriptor's.
        seen: u64,
    },
}

/// Per-reason counts of a [`Subscriber`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Frames returned.
    pub accepted: u64,
    /// Frames dropped as late, torn or overwritten while read (`drops_late`).
    pub late: u64,
    /// Frames skipped because the reader was lapped or a descriptor jumped (`drops_gap`).
    pub gap: u64,
    /// Frames dropped because the caller's buffer was too small.
    pub buffer_too_small: u64,
    /// Descriptors dropped for another epoch.
    pub epoch_mismatch: u64,
    /// Times a lapped polling reader skipped ahead (each at most `max_outstanding_seq_gap`).
    pub resyncs: u64,
    /// Descriptors refused for a seq no slot can carry (2^63 or more).
    pub seq_out_of_range: u64,
    invalid: [u64; InvalidHeader::COUNT],
}

impl ReadStats {
    /// Frames dropped for `reason`.
    pub fn invalid(&self, reason: InvalidHeader) -> u64 {
        self.invalid[reason.index()]
    }

    /// Frames dropped for any invalid header.
    pub fn invalid_total(&self) -> u64 {
        self.invalid.iter().sum()
    }
}

/// Result of [`Subscriber::poll`].
#[derive(Clone, Copy, Debug)]
pub enum Poll {
    /// The next frame, payload in the caller's buffer.
    Frame(Frame),
    /// The next frame is not committed yet.
    Empty,
    /// A frame was dropped (already counted); poll again.
    Dropped(DropReason),
}

/// Result of [`Subscriber::poll_with`].
#[derive(Debug)]
pub enum Polled<T> {
    /// The next frame, and what the closure made of it (the frame was intact throughout).
    Frame(Frame, T),
    /// The next frame is not committed yet.
    Empty,
    /// A frame was dropped (already counted); poll again.
    Dropped(DropReason),
}

/// The reading side of one stream: frames out of a header ring and its pools, copied into a
/// buffer or read in place.
#[derive(Debug)]
pub struct Subscriber<R: Region> {
    stream: Stream<R>,
    next_seq: u64,
    max_gap: u64,
    stats: ReadStats,
}

impl<R: Region> Subscriber<R> {
    /// A subscriber that expects seq 0 first (the start of an epoch); see
    /// [`join_newest`](Self::join_newest) to join a running stream.
    pub fn new(stream: Stream<R>) -> Self {
        Self { stream, next_seq: 0, max_gap: MAX_OUTSTANDING_SEQ_GAP, stats: ReadStats::default() }
    }

    /// Sets `max_outstanding_seq_gap` (default [`MAX_OUTSTANDING_SEQ_GAP`], at least 1).
    pub fn with_max_gap(mut self, max_gap: u64) -> Self {
        self.max_gap = max_gap.max(1);
        self
    }

    /// The stream read.
    pub fn stream(&self) -> &Stream<R> {
        &self.stream
    }

    /// Gives the stream back (to drop its mappings, for example).
    pub fn into_stream(self) -> Stream<R> {
        self.stream
    }

    /// The counts so far.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    /// The seq [`poll`](Self::poll) looks for next.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Makes [`poll`](Self::poll) continue at `seq`, counting nothing.
    pub fn seek(&mut self, seq: u64) {
        self.next_seq = seq;
    }

    /// Whether [`poll`](Self::poll) has something other than `Empty` to say: the slot of the
    /// next seq holds that seq committed, or a later seq (the writer lapped us). One Acquire
    /// load: the `ready()` test of a consumer that parks on a
    /// [`Doorbell`](crate::wait::Doorbell) until the next commit.
    pub fn ready(&self) -> bool {
        let seq = self.next_seq;
        if seq > MAX_SEQ {
            return false;
        }
        let word = self.stream.ring().slot(seq).seq_commit();
        let found = word >> 1;
        found > seq || (found == seq && word & 1 == 1)
    }

    /// Joins a running stream: the next poll returns the newest committed frame, and the
    /// history before it is not counted as a gap. Returns that seq, or `None` (and changes
    /// nothing) if no slot holds a frame that its neighbour confirms, which is the case for a
    /// fresh stream, or for one garbage `seq_commit` word.
    pub fn join_newest(&mut self) -> Option<u64> {
        let newest = newest_confirmed(&self.stream.ring(), u64::MAX)?;
        self.next_seq = newest;
        Some(newest)
    }

    /// Descriptor-driven read (spec §2.2 consumer): frame `seq`, payload into `payload`.
    /// A jump past the next expected seq counts the skipped seqs as `gap`.
    pub fn read(&mut self, seq: u64, payload: &mut [u8]) -> Result<Frame, DropReason> {
        if let Err(e) = check_seq(seq) {
            self.stats.seq_out_of_range += 1;
            return Err(e);
        }
        self.follow(seq);
        let result = self.attempt(seq, CopyInto(payload)).map(|(frame, ())| frame);
        self.count(&result);
        result
    }

    /// [`read`](Self::read) for a descriptor of `epoch`: one for another epoch than the
    /// mapped one is dropped and counted, without touching the ring.
    pub fn read_descriptor(
        &mut self,
        epoch: u64,
        seq: u64,
        payload: &mut [u8],
    ) -> Result<Frame, DropReason> {
        if epoch != self.stream.epoch {
            self.stats.epoch_mismatch += 1;
            return Err(DropReason::Epoch { mapped: self.stream.epoch, seen: epoch });
        }
        self.read(seq, payload)
    }

    /// Frame `seq` read in place: `f` gets the validated frame and a view of its payload,
    /// and its result is returned only if the slot still held that frame, unchanged, after
    /// `f` returned. Otherwise the result is dropped and the read is `Late` (counted).
    pub fn read_with<T>(
        &mut self,
        seq: u64,
        f: impl FnOnce(&Frame, PayloadView<'_>) -> T,
    ) -> Result<(Frame, T), DropReason> {
        if let Err(e) = check_seq(seq) {
            self.stats.seq_out_of_range += 1;
            return Err(e);
        }
        self.follow(seq);
        let result = self.attempt(seq, With(f));
        self.count(&result);
        result
    }

    /// Polling read without descriptors: the next frame if committed, payload into
    /// `payload`. When the writer has lapped the reader, skips ahead (at most
    /// `max_outstanding_seq_gap` per call) toward the oldest frame still in the ring and
    /// counts the skipped seqs as `gap`.
    pub fn poll(&mut self, payload: &mut [u8]) -> Poll {
        match self.poll_inner(CopyInto(payload)) {
            Polled::Frame(frame, ()) => Poll::Frame(frame),
            Polled::Empty => Poll::Empty,
            Polled::Dropped(reason) => Poll::Dropped(reason),
        }
    }

    /// [`poll`](Self::poll) reading the payload in place, as [`read_with`](Self::read_with).
    pub fn poll_with<T>(&mut self, f: impl FnOnce(&Frame, PayloadView<'_>) -> T) -> Polled<T> {
        self.poll_inner(With(f))
    }

    fn poll_inner<S: Sink>(&mut self, sink: S) -> Polled<S::Out> {
        let seq = self.next_seq;
        if seq > MAX_SEQ {
            return Polled::Empty; // no slot can carry it (and `seq_commit` would alias)
        }
        let result = self.attempt(seq, sink);
        match result {
            Err(DropReason::Late(Late::Stale { .. })) => return Polled::Empty,
            Err(DropReason::Late(Late::InProgress { found })) if found <= seq => {
                return Polled::Empty
            }
            Err(DropReason::Late(Late::InProgress { found } | Late::Overwritten { found })) => {
                let resume = self.resync(seq, found);
                self.stats.gap = self.stats.gap.saturating_add(resume - seq);
                self.stats.resyncs += 1;
                self.next_seq = resume;
                return Polled::Dropped(DropReason::Late(Late::Overwritten { found }));
            }
            _ => {}
        }
        self.next_seq = seq.saturating_add(1);
        self.count(&result);
        match result {
            Ok((frame, out)) => Polled::Frame(frame, out),
            Err(reason) => Polled::Dropped(reason),
        }
    }

    /// A descriptor for `seq` arrived: move the expectation, counting a jump as a gap.
    fn follow(&mut self, seq: u64) {
        // `seq` comes from another process: saturate rather than trust it not to overflow.
        if seq > self.next_seq {
            self.stats.gap = self.stats.gap.saturating_add(seq - self.next_seq);
        }
        if seq >= self.next_seq {
            self.next_seq = seq.saturating_add(1);
        }
    }

    /// The writer lapped us: our slot holds `found` > `seq`. Resume at the oldest seq that can
    /// still be in the ring, judged from the newest confirmed seq, but never more than
    /// `max_gap` ahead: one garbage `seq_commit` word (~2^62) must cost a bounded gap, not a
    /// reader that waits forever for a seq the writer will not reach.
    #[cold]
    #[inline(never)]
    fn resync(&self, seq: u64, found: u64) -> u64 {
        let _ = found; // a lone word is not trusted: only what the ring confirms
        let limit = seq.saturating_add(self.max_gap);
        let ring = self.stream.ring();
        match newest_confirmed(&ring, limit) {
            Some(newest) => newest
                .saturating_add(1)
                .saturating_sub(u64::from(ring.nslots()))
                .clamp(seq.saturating_add(1), limit),
            // Nothing confirmed (a fresh ring with garbage in our slot): step over our slot
            // only, never ahead of a writer that may be just behind us.
            None => seq.saturating_add(1),
        }
    }

    fn count<T>(&mut self, result: &Result<T, DropReason>) {
        match result {
            Ok(_) => self.stats.accepted += 1,
            Err(DropReason::Late(_)) => self.stats.late += 1,
            Err(DropReason::Invalid(reason)) => self.stats.invalid[reason.index()] += 1,
            Err(DropReason::BufferTooSmall { .. }) => self.stats.buffer_too_small += 1,
            Err(DropReason::Epoch { .. }) => self.stats.epoch_mismatch += 1,
            Err(DropReason::SeqOutOfRange { .. }) => {} // counted where refused
        }
    }

    /// One seqlock read: copy the header, validate the copy (it may be torn; validation only
    /// looks at our copy), hand the payload to the sink, then the re-check. Nothing the sink
    /// produced is returned unless the re-check passes.
    fn attempt<S: Sink>(&self, seq: u64, sink: S) -> Result<(Frame, S::Out), DropReason> {
        let stream = &self.stream;
        let index = shm::header_index(seq, stream.nslots);
        let inner = stream.ring().slot(seq).read(seq, |words| {
            let mut image = [0u8; SLOT_BYTES];
            load_bytes(words, &mut image[8..]);
            let header = SlotHeader::ref_from_bytes(&image).expect("256 bytes make a slot header");
            let tensor = header
                .validate(index, stream.nslots, |id| stream.stride_of(id))
                .map_err(DropReason::Invalid)?;
            // Validation found the pool and checked values_len <= its stride.
            let pool_id = header.pool_id.get();
            let pool = stream
                .pool_by_id(pool_id)
                .ok_or(DropReason::Invalid(InvalidHeader::UnknownPool { seen: pool_id }))?;
            let len = header.values_len_bytes.get() as usize;
            let frame = Frame { seq, tensor, payload_len: len };
            let view = PayloadView { words: pool.slot_words(index), len };
            let out = sink.take(&frame, view)?;
            Ok((frame, out))
        });
        inner.map_err(DropReason::Late)?
    }
}

/// The largest seq a `seq_commit` word can hold.
const MAX_SEQ: u64 = u64::MAX >> 1;

fn check_seq(seq: u64) -> Result<(), DropReason> {
    if seq > MAX_SEQ {
        return Err(DropReason::SeqOutOfRange { seq });
    }
    Ok(())
}

/// Where a read puts the payload.
trait Sink {
    type Out;
    fn take(self, frame: &Frame, view: PayloadView<'_>) -> Result<Self::Out, DropReason>;
}

/// Copy into the caller's buffer.
struct CopyInto<'b>(&'b mut [u8]);

impl Sink for CopyInto<'_> {
    type Out = ();
    fn take(self, _frame: &Frame, view: PayloadView<'_>) -> Result<(), DropReason> {
        if view.len > self.0.len() {
            return Err(DropReason::BufferTooSmall { needed: view.len as u32 });
        }
        load_payload(view.words, 0, &mut self.0[..view.len]);
        Ok(())
    }
}

/// Hand the view to a closure.
struct With<F>(F);

impl<T, F: FnOnce(&Frame, PayloadView<'_>) -> T> Sink for With<F> {
    type Out = T;
    fn take(self, frame: &Frame, view: PayloadView<'_>) -> Result<T, DropReason> {
        Ok((self.0)(frame, view))
    }
}

/// The newest committed seq at most `limit` that the ring itself confirms: its slot holds it
/// committed, with the right index, and so does the slot of the seq before it (or it is seq
/// 0, or the ring has one slot). One garbage word cannot pass; an honest writer's newest
/// frame always does once it has written two. Scans every slot's `seq_commit` (cold).
fn newest_confirmed(ring: &HeaderRing<'_>, limit: u64) -> Option<u64> {
    let nslots = ring.nslots();
    let holds = |seq: u64| {
        let word = ring.slot(seq).seq_commit();
        shm::is_committed(word) && shm::seq_of(word) == seq
    };
    (0..u64::from(nslots))
        .filter_map(|i| {
            let word = ring.slot(i).seq_commit();
            let seq = shm::seq_of(word);
            (shm::is_committed(word)
                && seq <= limit
                && u64::from(shm::header_index(seq, nslots)) == i)
                .then_some(seq)
        })
        .filter(|&seq| seq == 0 || nslots == 1 || holds(seq - 1))
        .max()
}
