//! The slot commit protocol of the tensor pool (spec §2.2): a seqlock per header-ring slot.
//!
//! One writer per ring, any number of readers in any process, no waiting on either side: the
//! writer overwrites the oldest slot whether or not anyone read it (lossy by design), and a
//! reader that loses a race drops the frame and counts why.
//!
//! ```text
//! writer                                    reader
//! store seq_commit = seq<<1   (Relaxed)     a = load seq_commit        (Acquire)
//! fence(Release)                            a == seq<<1|1 ?  else drop (late / not yet)
//! store payload + header words (Relaxed)    copy header (+ payload) words (Relaxed)
//! store seq_commit = seq<<1|1 (Release)     fence(Acquire)
//!                                           b = load seq_commit        (Relaxed)
//!                                           b == a ?  else drop (torn)
//! ```
//!
//! Why this is enough: if any word the reader copied was written by a later claim, that store
//! comes after the writer's `fence(Release)`, so the fence synchronises with the reader's
//! `fence(Acquire)` and the later claim's `seq_commit` store (which precedes the writer's fence)
//! is visible to the reader's second load: `b != a`, and the copy is thrown away. If every word
//! came from the claim the reader acquired in `a` (or earlier), the copy is that frame's. The
//! spec's plain release-store recipe lacks the writer's fence and is not enough on weak
//! memory models (trap T5).
//!
//! Why words and not `memcpy`: readers copy while the writer may be writing, so every shared
//! byte is read and written as a relaxed `AtomicU64`. On x86_64 and aarch64 those are plain
//! loads and stores; what they buy is that the race is defined behaviour, and the torn copy
//! is simply discarded. `read_volatile` would still be a data race under Rust's memory model.
//! Nothing a reader returns points into shared memory: headers and payloads are copied out
//! between the two checks (trap T4).
//!
//! Layers: [`SeqSlot`] is the protocol on any run of words (model-checked with loom);
//! [`HeaderRing`], [`PayloadPool`], [`Publisher`] and [`Subscriber`] apply it to the tensor-pool
//! layouts of [`crate::shm`].

use core::fmt;

use zerocopy::{FromBytes, IntoBytes};

use crate::shm::{self, InvalidHeader, SlotHeader, Tensor, TensorHeader, SLOT_BYTES};
use crate::sync::{fence, load_bytes, store_bytes, AtomicU64, Ordering};

/// One seqlock-protected slot: word 0 is `seq_commit` (`seq << 1 | committed`), the others data.
#[derive(Clone, Copy, Debug)]
pub struct SeqSlot<'a> {
    words: &'a [AtomicU64],
}

impl<'a> SeqSlot<'a> {
    /// A slot over `words`; word 0 is its `seq_commit`.
    ///
    /// # Panics
    /// If `words` is empty.
    pub fn new(words: &'a [AtomicU64]) -> Self {
        assert!(!words.is_empty(), "a seqlock slot needs its seq_commit word");
        Self { words }
    }

    /// Writer, step 1: marks the slot in progress for `seq`. Readers drop it from now until
    /// [`Claimed::commit`].
    #[must_use = "a claimed slot stays in progress (unreadable) until committed"]
    pub fn claim(self, seq: u64) -> Claimed<'a> {
        self.words[0].store(shm::seq_commit(seq, false), Ordering::Relaxed);
        // SYNC: orders the in-progress mark before every data store of this claim -> the
        // reader's fence(Acquire) in `read`, which then sees the mark in its second load.
        fence(Ordering::Release);
        Claimed { slot: self, seq }
    }

    /// Reader: runs `copy` on the data words, and returns its result only if the slot held the
    /// committed `seq` before and after, unchanged. `copy` may see torn values (it runs
    /// while the writer may be writing): it must only load words and keep them, never trust
    /// them for anything that could fail.
    #[inline]
    pub fn read<R>(&self, seq: u64, copy: impl FnOnce(&[AtomicU64]) -> R) -> Result<R, Late> {
        // SYNC: pairs with the Release store in `Claimed::commit`: the committed claim's data
        // stores are visible to `copy`.
        let a = self.words[0].load(Ordering::Acquire);
        if a != shm::seq_commit(seq, true) {
            return Err(Late::classify(a, seq));
        }
        let value = copy(&self.words[1..]);
        // SYNC: pairs with the writer's fence(Release) in `claim` (see the module doc).
        fence(Ordering::Acquire);
        if self.words[0].load(Ordering::Relaxed) != a {
            return Err(Late::Torn);
        }
        Ok(value)
    }

    /// The current `seq_commit` word.
    pub fn seq_commit(&self) -> u64 {
        // SYNC: Acquire, like the first load of `read`; callers only compare it.
        self.words[0].load(Ordering::Acquire)
    }
}

/// A slot between claim and commit. Commit consumes it, so it cannot happen twice; dropping it
/// uncommitted leaves the slot in progress, which readers drop (never torn data).
#[must_use = "a claimed slot stays in progress (unreadable) until committed"]
#[derive(Debug)]
pub struct Claimed<'a> {
    slot: SeqSlot<'a>,
    seq: u64,
}

impl<'a> Claimed<'a> {
    /// The data words (every word but `seq_commit`).
    pub fn words(&self) -> &'a [AtomicU64] {
        &self.slot.words[1..]
    }

    /// The sequence number being written.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Writer, last step: publishes the slot as committed `seq`.
    pub fn commit(self) -> u64 {
        // SYNC: publishes every data store of this claim -> Acquire load in `SeqSlot::read`.
        self.slot.words[0].store(shm::seq_commit(self.seq, true), Ordering::Release);
        self.seq
    }
}

/// Why a slot was not returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Late {
    /// The slot is being written (`found` is the seq in progress).
    InProgress {
        /// Seq of the claim in progress.
        found: u64,
    },
    /// The slot still holds an older frame: the wanted one is not written yet.
    Stale {
        /// Seq committed in the slot.
        found: u64,
    },
    /// The slot already holds a newer frame: the wanted one was overwritten.
    Overwritten {
        /// Seq committed in the slot.
        found: u64,
    },
    /// The slot changed while it was being copied.
    Torn,
}

impl Late {
    fn classify(word: u64, seq: u64) -> Self {
        let found = shm::seq_of(word);
        if !shm::is_committed(word) {
            Late::InProgress { found }
        } else if found < seq {
            Late::Stale { found }
        } else {
            Late::Overwritten { found }
        }
    }
}

/// Words per header-ring slot.
pub const SLOT_WORDS: usize = SLOT_BYTES / 8;

/// The slots of a header ring (everything after its 64-byte superblock), as atomic words.
#[derive(Clone, Copy, Debug)]
pub struct HeaderRing<'a> {
    words: &'a [AtomicU64],
    nslots: u32,
}

impl<'a> HeaderRing<'a> {
    /// A ring of `nslots` 256-byte slots over `words`.
    pub fn new(words: &'a [AtomicU64], nslots: u32) -> Result<Self, LayoutError> {
        if !nslots.is_power_of_two() {
            return Err(LayoutError::Nslots(nslots));
        }
        let needed = nslots as u64 * SLOT_BYTES as u64;
        if (words.len() as u64) * 8 < needed {
            return Err(LayoutError::TooShort { needed, len: words.len() as u64 * 8 });
        }
        Ok(Self { words: &words[..nslots as usize * SLOT_WORDS], nslots })
    }

    /// The ring inside a header-ring file mapping (superblock first).
    #[cfg(not(loom))]
    pub fn from_region<R: crate::region::Region + ?Sized>(
        region: &'a R,
        nslots: u32,
    ) -> Result<Self, LayoutError> {
        let needed = shm::header_ring_len(nslots);
        let len = (needed as usize).saturating_sub(shm::SUPERBLOCK_BYTES);
        let words = crate::region::region_words(region, shm::SUPERBLOCK_BYTES, len)
            .ok_or(LayoutError::TooShort { needed, len: region.len() as u64 })?;
        Self::new(words, nslots)
    }

    /// Number of slots.
    pub fn nslots(&self) -> u32 {
        self.nslots
    }

    /// The slot that carries `seq`.
    pub fn slot(&self, seq: u64) -> SeqSlot<'a> {
        let index = shm::header_index(seq, self.nslots) as usize;
        SeqSlot { words: &self.words[index * SLOT_WORDS..(index + 1) * SLOT_WORDS] }
    }
}

/// The slots of one payload pool (everything after its superblock), as atomic words.
#[derive(Clone, Copy, Debug)]
pub struct PayloadPool<'a> {
    words: &'a [AtomicU64],
    pool_id: u16,
    nslots: u32,
    stride_bytes: u32,
}

impl<'a> PayloadPool<'a> {
    /// Pool `pool_id` of `nslots` slots of `stride_bytes` (a non-zero multiple of 64) over
    /// `words`.
    pub fn new(
        words: &'a [AtomicU64],
        pool_id: u16,
        nslots: u32,
        stride_bytes: u32,
    ) -> Result<Self, LayoutError> {
        if stride_bytes == 0 || !stride_bytes.is_multiple_of(shm::POOL_STRIDE_ALIGN) {
            return Err(LayoutError::Stride(stride_bytes));
        }
        if !nslots.is_power_of_two() {
            return Err(LayoutError::Nslots(nslots));
        }
        let needed = nslots as u64 * stride_bytes as u64;
        if (words.len() as u64) * 8 < needed {
            return Err(LayoutError::TooShort { needed, len: words.len() as u64 * 8 });
        }
        Ok(Self { words: &words[..(needed / 8) as usize], pool_id, nslots, stride_bytes })
    }

    /// The pool inside a payload-pool file mapping (superblock first).
    #[cfg(not(loom))]
    pub fn from_region<R: crate::region::Region + ?Sized>(
        region: &'a R,
        pool_id: u16,
        nslots: u32,
        stride_bytes: u32,
    ) -> Result<Self, LayoutError> {
        let needed = shm::payload_pool_len(nslots, stride_bytes);
        let len =
            usize::try_from(needed).unwrap_or(usize::MAX).saturating_sub(shm::SUPERBLOCK_BYTES);
        let words = crate::region::region_words(region, shm::SUPERBLOCK_BYTES, len)
            .ok_or(LayoutError::TooShort { needed, len: region.len() as u64 })?;
        Self::new(words, pool_id, nslots, stride_bytes)
    }

    /// The pool id announced for this pool.
    pub fn pool_id(&self) -> u16 {
        self.pool_id
    }

    /// Bytes per slot.
    pub fn stride_bytes(&self) -> u32 {
        self.stride_bytes
    }

    /// The words of slot `index` (`index < nslots`).
    fn slot_words(&self, index: u32) -> &'a [AtomicU64] {
        let words_per_slot = self.stride_bytes as usize / 8;
        let start = index as usize * words_per_slot;
        &self.words[start..start + words_per_slot]
    }
}

/// A region too small or shaped against the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// nslots is zero or not a power of two.
    Nslots(u32),
    /// stride is zero or not a multiple of 64.
    Stride(u32),
    /// The region is shorter than the layout (or misaligned).
    TooShort {
        /// Bytes the layout needs (superblock included for `from_region`).
        needed: u64,
        /// Bytes available.
        len: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Nslots(n) => write!(f, "nslots must be a non-zero power of two, got {n}"),
            Self::Stride(s) => write!(f, "stride_bytes must be a non-zero multiple of 64, got {s}"),
            Self::TooShort { needed, len } => {
                write!(f, "region too short or misaligned: needs {needed} bytes, has {len}")
            }
        }
    }
}

impl std::error::Error for LayoutError {}

/// The writing side of one stream: owns the sequence counter of a header ring and its pools.
#[derive(Debug)]
pub struct Publisher<'a> {
    ring: HeaderRing<'a>,
    /// Sorted by stride, smallest first, so the first that fits is the smallest.
    pools: Vec<PayloadPool<'a>>,
    next_seq: u64,
}

impl<'a> Publisher<'a> {
    /// A publisher starting at seq 0 (a new epoch).
    pub fn new(ring: HeaderRing<'a>, mut pools: Vec<PayloadPool<'a>>) -> Result<Self, LayoutError> {
        if let Some(pool) = pools.iter().find(|p| p.nslots != ring.nslots) {
            return Err(LayoutError::Nslots(pool.nslots));
        }
        pools.sort_by_key(|p| p.stride_bytes);
        Ok(Self { ring, pools, next_seq: 0 })
    }

    /// The seq the next claim will write.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Claims the slot for the next seq and the smallest pool whose stride holds
    /// `values_len` bytes; the slot reads as in progress until committed.
    pub fn claim(&mut self, values_len: u32) -> Result<SlotClaim<'_, 'a>, TooLarge> {
        let pool = *self
            .pools
            .iter()
            .find(|p| p.stride_bytes >= values_len)
            .ok_or(TooLarge { values_len })?;
        let seq = self.next_seq;
        let index = shm::header_index(seq, self.ring.nslots);
        let claimed = self.ring.slot(seq).claim(seq);
        Ok(SlotClaim { publisher: self, claimed, pool, index, values_len })
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
/// [`finish`](Self::finish) with the header, then [`FilledSlot::commit`].
#[must_use = "a claimed slot stays in progress (unreadable) until finished and committed"]
#[derive(Debug)]
pub struct SlotClaim<'p, 'a> {
    publisher: &'p mut Publisher<'a>,
    claimed: Claimed<'a>,
    pool: PayloadPool<'a>,
    index: u32,
    values_len: u32,
}

impl<'p, 'a> SlotClaim<'p, 'a> {
    /// The seq being written.
    pub fn seq(&self) -> u64 {
        self.claimed.seq()
    }

    /// The pool chosen for the payload.
    pub fn pool_id(&self) -> u16 {
        self.pool.pool_id
    }

    /// Copies `bytes` to the start of the payload slot.
    ///
    /// # Panics
    /// If `bytes` is longer than the `values_len` claimed.
    pub fn write_payload(&mut self, bytes: &[u8]) {
        assert!(
            bytes.len() <= self.values_len as usize,
            "payload of {} bytes exceeds the {} claimed",
            bytes.len(),
            self.values_len
        );
        store_bytes(self.payload_words(), bytes);
    }

    /// The payload slot as words, for writers that fill it in place (stride / 8 words).
    pub fn payload_words(&self) -> &'a [AtomicU64] {
        self.pool.slot_words(self.index)
    }

    /// Writes the whole slot header (every byte rewritten, spec §2.2 step 4).
    pub fn finish(
        self,
        tensor: TensorHeader,
        timestamp_ns: u64,
        meta_version: u32,
    ) -> FilledSlot<'p, 'a> {
        let header = SlotHeader::new(
            self.values_len,
            self.index,
            self.pool.pool_id,
            timestamp_ns,
            meta_version,
            tensor,
        );
        // Word 0 of the image is seq_commit, owned by the claim: store words 1.. only.
        store_bytes(self.claimed.words(), &header.as_bytes()[8..]);
        FilledSlot { publisher: self.publisher, claimed: self.claimed }
    }
}

/// A slot with payload and header written, ready to commit.
#[must_use = "a filled slot stays in progress (unreadable) until committed"]
#[derive(Debug)]
pub struct FilledSlot<'p, 'a> {
    publisher: &'p mut Publisher<'a>,
    claimed: Claimed<'a>,
}

impl FilledSlot<'_, '_> {
    /// Publishes the slot; returns its seq. The next claim takes the next seq.
    pub fn commit(self) -> u64 {
        let seq = self.claimed.commit();
        self.publisher.next_seq = seq + 1;
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
    /// Payload bytes copied into the caller's buffer (`values_len_bytes`).
    pub payload_len: usize,
}

/// Why a read returned no frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The slot was in progress, held another seq, or changed while copied (`drops_late`).
    Late(Late),
    /// The slot was stable but its header breaks the spec (counted per reason).
    Invalid(InvalidHeader),
    /// The caller's payload buffer is shorter than the frame's `values_len_bytes`.
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: u32,
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

/// The reading side of one stream: copies frames out of a header ring and its pools.
#[derive(Debug)]
pub struct Subscriber<'a> {
    ring: HeaderRing<'a>,
    pools: Vec<PayloadPool<'a>>,
    next_seq: u64,
    stats: ReadStats,
}

impl<'a> Subscriber<'a> {
    /// A subscriber that expects seq `next_seq` first (0 for a new epoch).
    pub fn new(ring: HeaderRing<'a>, pools: Vec<PayloadPool<'a>>, next_seq: u64) -> Self {
        Self { ring, pools, next_seq, stats: ReadStats::default() }
    }

    /// The counts so far.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    /// The seq [`poll`](Self::poll) looks for next.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Descriptor-driven read (spec §2.2 consumer): frame `seq`, payload into `payload`.
    /// A jump past the next expected seq counts the skipped seqs as `gap`.
    pub fn read(&mut self, seq: u64, payload: &mut [u8]) -> Result<Frame, DropReason> {
        // `seq` comes from another process: saturate rather than trust it not to overflow.
        if seq > self.next_seq {
            self.stats.gap = self.stats.gap.saturating_add(seq - self.next_seq);
        }
        if seq >= self.next_seq {
            self.next_seq = seq.saturating_add(1);
        }
        let result = self.copy(seq, payload);
        self.count(&result);
        result
    }

    /// Polling read without descriptors: returns the next frame if committed. When the writer
    /// has lapped the reader, skips to the oldest frame still in the ring and counts the rest
    /// as `gap`.
    pub fn poll(&mut self, payload: &mut [u8]) -> Poll {
        let seq = self.next_seq;
        let result = self.copy(seq, payload);
        match result {
            Err(DropReason::Late(Late::Stale { .. })) => return Poll::Empty,
            Err(DropReason::Late(Late::InProgress { found })) if found <= seq => {
                return Poll::Empty
            }
            Err(DropReason::Late(Late::InProgress { found } | Late::Overwritten { found })) => {
                let resume = self.resync(seq, found);
                self.stats.gap = self.stats.gap.saturating_add(resume - seq);
                self.next_seq = resume;
                return Poll::Dropped(DropReason::Late(Late::Overwritten { found }));
            }
            _ => {}
        }
        self.next_seq = seq.saturating_add(1);
        self.count(&result);
        match result {
            Ok(frame) => Poll::Frame(frame),
            Err(reason) => Poll::Dropped(reason),
        }
    }

    /// The writer lapped us: our slot holds `found` > `seq`. Resume at the oldest seq that can
    /// still be in the ring, judged from the newest seq in any slot (one pass over the
    /// `seq_commit` words; rare, so not on the fast path).
    #[cold]
    #[inline(never)]
    fn resync(&self, seq: u64, found: u64) -> u64 {
        let newest = (0..u64::from(self.ring.nslots))
            .map(|i| shm::seq_of(self.ring.slot(i).seq_commit()))
            .fold(found, u64::max);
        newest
            .saturating_add(1)
            .saturating_sub(u64::from(self.ring.nslots))
            .max(seq.saturating_add(1))
    }

    fn count(&mut self, result: &Result<Frame, DropReason>) {
        match result {
            Ok(_) => self.stats.accepted += 1,
            Err(DropReason::Late(_)) => self.stats.late += 1,
            Err(DropReason::Invalid(reason)) => self.stats.invalid[reason.index()] += 1,
            Err(DropReason::BufferTooSmall { .. }) => self.stats.buffer_too_small += 1,
        }
    }

    /// Both seqlock checks around a copy of the header and, if it looks sane, the payload;
    /// then validation of the (now known stable) header.
    fn copy(&self, seq: u64, payload: &mut [u8]) -> Result<Frame, DropReason> {
        let index = shm::header_index(seq, self.ring.nslots);
        let pools = &self.pools;
        let (image, copied) = self
            .ring
            .slot(seq)
            .read(seq, |words| {
                let mut image = [0u8; SLOT_BYTES];
                load_bytes(words, &mut image[8..]);
                // The header may be torn here: only bounds-checked use.
                let header = SlotHeader::ref_from_bytes(&image).expect("256 bytes");
                let len = header.values_len_bytes.get() as usize;
                let pool = pools.iter().find(|p| p.pool_id == header.pool_id.get());
                let copied = match pool {
                    Some(pool)
                        if header.payload_slot.get() == index
                            && len <= pool.stride_bytes as usize
                            && len <= payload.len() =>
                    {
                        load_bytes(pool.slot_words(index), &mut payload[..len]);
                        true
                    }
                    _ => false,
                };
                (image, copied)
            })
            .map_err(DropReason::Late)?;
        let header = SlotHeader::ref_from_bytes(&image).expect("256 bytes");
        let tensor = header
            .validate(index, self.ring.nslots, |id| {
                pools.iter().find(|p| p.pool_id == id).map(|p| p.stride_bytes)
            })
            .map_err(DropReason::Invalid)?;
        let needed = header.values_len_bytes.get();
        if !copied {
            // Stable and valid, so the only reason left is the caller's buffer.
            return Err(DropReason::BufferTooSmall { needed });
        }
        Ok(Frame { seq, tensor, payload_len: needed as usize })
    }
}
