//! The slot commit protocol of the tensor pool (spec §2.2): a seqlock per header-ring slot.
//!
//! One writer per ring, any number of readers in any process, no waiting on either side: the
//! writer overwrites the oldest slot whether or not anyone read it (lossy by design), and a
//! reader that loses a race drops the frame and counts why.
//!
//! ```text
//! writer                                    reader
//! store seq_commit = seq<<1   (Relaxed)     a = load seq_commit        (Relaxed)
//! fence(Release)                            a == seq<<1|1 ?  else drop (late / not yet)
//!                                           fence(Acquire)    (with the load: an Acquire read)
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
//! memory models (trap T5). The reader's first load is Relaxed and followed by a fence
//! rather than an Acquire load, the same ordering, so that a reader on a read-only mapping
//! makes only Relaxed loads (`Region::read_only`).
//!
//! Why words and not `memcpy`: readers copy while the writer may be writing, so every shared
//! byte is read and written as a relaxed `AtomicU64`. On x86_64 and aarch64 those are plain
//! loads and stores; what they buy is that the race is defined behaviour, and the torn copy
//! is simply discarded. `read_volatile` would still be a data race under Rust's memory model.
//! Nothing a reader returns points into shared memory: headers and payloads are copied out
//! between the two checks (trap T4).
//!
//! Layers: [`SeqSlot`] is the protocol on any run of words (model-checked with loom);
//! `HeaderRing` and `PayloadPool` are the crate's own views of the tensor-pool layouts of
//! [`crate::shm`] as words; [`Stream`], [`Publisher`] and [`Subscriber`] (module `stream`) apply the protocol
//! to mapped regions, owned or borrowed.

use core::fmt;

use crate::shm::{self, SLOT_BYTES};
use crate::sync::{fence, AtomicU64, Ordering};

#[cfg(not(loom))]
mod stream;
#[cfg(not(loom))]
mod wake;
#[cfg(not(loom))]
pub use stream::*;
#[cfg(not(loom))]
pub use wake::*;

/// One seqlock-protected slot: word 0 is `seq_commit` (`seq << 1 | committed`), the others data.
///
/// Not `Copy`: a claim borrows the slot mutably, so one `SeqSlot` value cannot be claimed
/// twice at once. One writer per slot is otherwise the caller's to keep at this level; the
/// tensor-pool layer above ([`Publisher`]) is the only writer of its rings.
#[derive(Debug)]
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
    pub fn claim(&mut self, seq: u64) -> Claimed<'_> {
        Self::mark(self.words, seq)
    }

    /// [`claim`](Self::claim) for the crate's single writer, which holds the slot's words for
    /// `'a` itself (the publisher's ring).
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn claim_owned(self, seq: u64) -> Claimed<'a> {
        Self::mark(self.words, seq)
    }

    fn mark(words: &[AtomicU64], seq: u64) -> Claimed<'_> {
        words[0].store(shm::seq_commit(seq, false), Ordering::Relaxed);
        // SYNC: orders the in-progress mark before every data store of this claim -> the
        // reader's fence(Acquire) in `read`, which then sees the mark in its second load.
        fence(Ordering::Release);
        Claimed { words, seq }
    }

    /// Reader: runs `copy` on the data words, and returns its result only if the slot held the
    /// committed `seq` before and after, unchanged. `copy` may see torn values (it runs
    /// while the writer may be writing): it must only load words and keep them, never trust
    /// them for anything that could fail.
    #[inline]
    pub fn read<R>(&self, seq: u64, copy: impl FnOnce(&[AtomicU64]) -> R) -> Result<R, Late> {
        // A Relaxed load and an Acquire fence rather than an Acquire load: the same ordering,
        // and sound on a read-only mapping (Region::read_only).
        let a = self.words[0].load(Ordering::Relaxed);
        if a != shm::seq_commit(seq, true) {
            return Err(Late::classify(a, seq));
        }
        // SYNC: with the load above, pairs with the Release store in `Claimed::commit`: the
        // committed claim's data stores are visible to `copy`.
        fence(Ordering::Acquire);
        let value = copy(&self.words[1..]);
        // SYNC: pairs with the writer's fence(Release) in `claim` (see the module doc).
        fence(Ordering::Acquire);
        if self.words[0].load(Ordering::Relaxed) != a {
            return Err(Late::Torn);
        }
        Ok(value)
    }

    /// Resets `seq_commit` to "seq 0 in progress" (a new epoch's layout).
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn reset(&self) {
        self.words[0].store(shm::seq_commit(0, false), Ordering::Relaxed);
    }

    /// The current `seq_commit` word.
    pub fn seq_commit(&self) -> u64 {
        let word = self.words[0].load(Ordering::Relaxed);
        // SYNC: with the load above, an Acquire read, like the first load of `read` (a fence,
        // so that read-only mappings need only Relaxed loads); pairs with the Release store
        // in `Claimed::commit`.
        fence(Ordering::Acquire);
        word
    }
}

/// A slot between claim and commit. Commit consumes it, so it cannot happen twice; dropping it
/// uncommitted leaves the slot in progress, which readers drop (never torn data).
///
/// The data words are borrowed from the claim, so no write can follow the commit (readers
/// would accept a frame changed after it):
///
/// ```compile_fail,E0505
/// use corelane_rings::seqlock::SeqSlot;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let words: [AtomicU64; 2] = Default::default();
/// let mut slot = SeqSlot::new(&words);
/// let claimed = slot.claim(1);
/// let data = claimed.words();
/// claimed.commit(); // error: cannot move out of `claimed` because it is borrowed
/// data[0].store(7, Ordering::Relaxed);
/// ```
#[must_use = "a claimed slot stays in progress (unreadable) until committed"]
#[derive(Debug)]
pub struct Claimed<'a> {
    words: &'a [AtomicU64],
    seq: u64,
}

impl<'a> Claimed<'a> {
    /// The data words (every word but `seq_commit`). The borrow ends before
    /// [`commit`](Self::commit) can be called: no write can follow the commit.
    pub fn words(&self) -> &[AtomicU64] {
        &self.words[1..]
    }

    /// The sequence number being written.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Writer, last step: publishes the slot as committed `seq`.
    pub fn commit(self) -> u64 {
        // SYNC: publishes every data store of this claim -> Acquire load in `SeqSlot::read`.
        self.words[0].store(shm::seq_commit(self.seq, true), Ordering::Release);
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

/// The slots of a header ring (everything after its 64-byte superblock), as atomic words. The
/// crate's own view: public code reaches rings only through [`Stream`], so that
/// [`Publisher`] is their only writer.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct HeaderRing<'a> {
    words: &'a [AtomicU64],
    nslots: u32,
}

#[cfg_attr(loom, allow(dead_code))]
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

    /// A view of a region [`Stream::open`] already checked (no re-validation per frame).
    #[cfg(not(loom))]
    pub(crate) fn trusted<R: crate::region::Region + ?Sized>(region: &'a R, nslots: u32) -> Self {
        let len = (shm::header_ring_len(nslots) as usize).saturating_sub(shm::SUPERBLOCK_BYTES);
        let words = crate::region::region_words(region, shm::SUPERBLOCK_BYTES, len)
            .expect("Stream::open checked the ring fits");
        Self { words, nslots }
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

/// The slots of one payload pool (everything after its superblock), as atomic words. The
/// crate's own view, like [`HeaderRing`].
#[derive(Clone, Copy, Debug)]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct PayloadPool<'a> {
    words: &'a [AtomicU64],
    pool_id: u16,
    stride_bytes: u32,
}

#[cfg_attr(loom, allow(dead_code))]
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
        Ok(Self { words: &words[..(needed / 8) as usize], pool_id, stride_bytes })
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

    /// A view of a pool [`Stream::open`] already checked (no re-validation per frame).
    #[cfg(not(loom))]
    pub(crate) fn trusted<R: crate::region::Region + ?Sized>(
        region: &'a R,
        pool_id: u16,
        nslots: u32,
        stride_bytes: u32,
    ) -> Self {
        let len = (shm::payload_pool_len(nslots, stride_bytes) as usize)
            .saturating_sub(shm::SUPERBLOCK_BYTES);
        let words = crate::region::region_words(region, shm::SUPERBLOCK_BYTES, len)
            .expect("Stream::open checked the pool fits");
        Self { words, pool_id, stride_bytes }
    }

    /// The pool id announced for this pool.
    pub fn pool_id(&self) -> u16 {
        self.pool_id
    }

    /// The words of slot `index` (`index < nslots`).
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn slot_words(&self, index: u32) -> &'a [AtomicU64] {
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
    /// A pool's nslots differs from the header ring's (v1.2: they must be equal).
    PoolNslots {
        /// The pool.
        pool_id: u16,
        /// The pool's nslots.
        nslots: u32,
        /// The header ring's.
        ring: u32,
    },
    /// Two pools of one stream have the same id.
    DuplicatePool(u16),
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
            Self::PoolNslots { pool_id, nslots, ring } => write!(
                f,
                "pool {pool_id} has {nslots} slots, the header ring {ring}: they must be equal"
            ),
            Self::DuplicatePool(id) => write!(f, "pool id {id} appears twice in one stream"),
            Self::Stride(s) => write!(f, "stride_bytes must be a non-zero multiple of 64, got {s}"),
            Self::TooShort { needed, len } => {
                write!(f, "region too short or misaligned: needs {needed} bytes, has {len}")
            }
        }
    }
}

impl std::error::Error for LayoutError {}
