//! Bounded lock-free single-producer single-consumer queues.
//!
//! Two variants share one index protocol ([`core`](self) below):
//! - [`channel`]: items of any `T` in a heap buffer, ends [`Producer`] and [`Consumer`];
//! - [`shm`]: fixed-size `Copy` records whose control words and slots live in a
//!   caller-provided byte region (a mapped file), for use between processes.
//!
//! The protocol is the classic Lamport ring with cached indices (as in rtrb): the producer owns
//! `tail`, the consumer owns `head`, both count up forever (`u64`, never wraps in practice) and
//! a slot's index is `position & (capacity - 1)`. Each end keeps a private copy of the other end's
//! position and reads the shared one only when its copy says the ring is full (producer) or
//! empty (consumer), so in steady state each end touches the other's cache line once per
//! refill, not once per item. `head` and `tail` sit on separate 128-byte lines.
//!
//! ```
//! let (mut tx, mut rx) = corelane_rings::spsc::channel::<u64>(4);
//! tx.push(1).unwrap();
//! tx.push_slice(&[2, 3, 4]);
//! assert!(tx.push(5).is_err()); // full: the value comes back
//! assert_eq!(rx.pop(), Ok(1));
//! let mut out = [0; 4];
//! assert_eq!(rx.pop_slice(&mut out), 3);
//! assert_eq!(&out[..3], &[2, 3, 4]);
//! ```
#![allow(unsafe_code)]

use core::fmt;

use crate::sync::{AtomicU64, Ordering};

mod heap;
#[cfg(not(loom))]
pub mod shm;

pub use heap::{channel, Consumer, Producer, ReadChunk, WriteChunk};

/// The queue was full; the value is handed back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PushError<T> {
    /// No free slot: the consumer has not caught up.
    Full(T),
}

impl<T> PushError<T> {
    /// Returns the value that could not be pushed.
    pub fn into_inner(self) -> T {
        match self {
            PushError::Full(value) => value,
        }
    }
}

impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Full(..)")
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("spsc queue is full")
    }
}

impl<T> std::error::Error for PushError<T> {}

/// The queue was empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PopError {
    /// No item has been published since the last pop.
    Empty,
}

impl fmt::Display for PopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("spsc queue is empty")
    }
}

impl std::error::Error for PopError {}

/// Where a ring's two positions and its slots live.
///
/// # Safety
/// An implementor guarantees that `capacity()` is a non-zero power of two that never changes,
/// that `head()` and `tail()` return the same two distinct atomics on every call, and that
/// `slot_ptr(i)` for every `i < capacity()` points to memory valid and aligned for one `T`,
/// distinct from every other slot, and contiguous (`slot_ptr(i) == slot_ptr(0).add(i)`).
pub(crate) unsafe trait Storage<T> {
    /// The consumer's position: slots before it are free for the producer.
    fn head(&self) -> &AtomicU64;
    /// The producer's position: slots before it hold published items.
    fn tail(&self) -> &AtomicU64;
    fn capacity(&self) -> u64;

    /// Moves `value` into slot `index`.
    ///
    /// # Safety
    /// `index < capacity()`, the caller is the producer, and the slot is free (before `tail`
    /// and released by the consumer).
    unsafe fn write(&self, index: usize, value: T);

    /// Moves the item out of slot `index`.
    ///
    /// # Safety
    /// `index < capacity()`, the caller is the consumer, and the slot holds an item that the
    /// producer published and nobody has moved out yet.
    unsafe fn read(&self, index: usize) -> T;

    /// Address of slot `index`, for contiguous copies (not under loom, whose cells give no
    /// raw pointers that outlive a closure).
    #[cfg(not(loom))]
    fn slot_ptr(&self, index: usize) -> *mut T;
}

/// The producer's private half of the index protocol.
#[derive(Debug)]
pub(crate) struct ProducerCore {
    /// Next position to write; equal to the shared `tail` between operations.
    tail: u64,
    /// Last `head` seen; the real one is never behind it.
    cached_head: u64,
}

impl ProducerCore {
    pub(crate) fn new(tail: u64, head: u64) -> Self {
        Self { tail, cached_head: head }
    }

    /// Free slots, reading the shared `head` only if the cache shows fewer than `wanted`.
    #[inline]
    pub(crate) fn free<T>(&mut self, s: &impl Storage<T>, wanted: u64) -> u64 {
        let free = free_slots(s.capacity(), self.tail, self.cached_head);
        if free >= wanted {
            return free;
        }
        // SYNC: pairs with the Release store of `head` in `ConsumerCore::release`: every read
        // of the slots before the new head happened before we overwrite them.
        self.cached_head = s.head().load(Ordering::Acquire);
        free_slots(s.capacity(), self.tail, self.cached_head)
    }

    #[inline]
    pub(crate) fn push<T>(&mut self, s: &impl Storage<T>, value: T) -> Result<(), T> {
        if self.free(s, 1) == 0 {
            return Err(value);
        }
        let index = self.index(s, 0);
        // SAFETY: free() >= 1, so slot `tail` lies in the free region the consumer released,
        // and index < capacity by masking.
        unsafe { s.write(index, value) };
        self.publish(s, 1);
        Ok(())
    }

    /// Copies as many of `items` as fit, publishing them with one store.
    #[inline]
    pub(crate) fn push_slice<T: Copy>(&mut self, s: &impl Storage<T>, items: &[T]) -> usize {
        let n = self.free(s, items.len() as u64).min(items.len() as u64) as usize;
        if n == 0 {
            return 0;
        }
        #[cfg(not(loom))]
        {
            let start = self.index(s, 0);
            let first = n.min(s.capacity() as usize - start);
            // SAFETY: the n slots from `start` (wrapping once to 0) are free (n <= free()), the
            // ranges [start, start+first) and [0, n-first) are within the contiguous slot array
            // (first <= capacity - start, n - first <= start), and `items` cannot overlap the
            // ring's memory because the producer holds no reference into it.
            unsafe {
                core::ptr::copy_nonoverlapping(items.as_ptr(), s.slot_ptr(start), first);
                core::ptr::copy_nonoverlapping(items[first..].as_ptr(), s.slot_ptr(0), n - first);
            }
        }
        #[cfg(loom)]
        for (i, item) in items[..n].iter().enumerate() {
            // SAFETY: as above, slot by slot.
            unsafe { s.write(self.index(s, i as u64), *item) };
        }
        self.publish(s, n as u64);
        n
    }

    /// The longest run of free slots starting at `tail` that does not wrap, at most `max`.
    /// Returns (first slot index, length).
    #[inline]
    pub(crate) fn claim<T>(&mut self, s: &impl Storage<T>, max: usize) -> (usize, usize) {
        let start = self.index(s, 0);
        let until_wrap = s.capacity() as usize - start;
        let wanted = max.min(until_wrap);
        let free = self.free(s, wanted as u64) as usize;
        (start, wanted.min(free))
    }

    /// Makes the next `n` written slots visible to the consumer.
    #[inline]
    pub(crate) fn publish<T>(&mut self, s: &impl Storage<T>, n: u64) {
        self.tail = self.tail.wrapping_add(n);
        // SYNC: publishes the slot writes before it -> Acquire load of `tail` in
        // `ConsumerCore::available`.
        s.tail().store(self.tail, Ordering::Release);
    }

    #[inline]
    pub(crate) fn index<T>(&self, s: &impl Storage<T>, offset: u64) -> usize {
        (self.tail.wrapping_add(offset) & (s.capacity() - 1)) as usize
    }
}

/// The consumer's private half of the index protocol.
#[derive(Debug)]
pub(crate) struct ConsumerCore {
    /// Next position to read; equal to the shared `head` between operations.
    head: u64,
    /// Last `tail` seen; the real one is never behind it.
    cached_tail: u64,
}

impl ConsumerCore {
    pub(crate) fn new(head: u64, tail: u64) -> Self {
        Self { head, cached_tail: tail }
    }

    /// Published items, reading the shared `tail` only if the cache shows fewer than `wanted`.
    #[inline]
    pub(crate) fn available<T>(&mut self, s: &impl Storage<T>, wanted: u64) -> u64 {
        let available = used_slots(s.capacity(), self.cached_tail, self.head);
        if available >= wanted {
            return available;
        }
        // SYNC: pairs with the Release store of `tail` in `ProducerCore::publish`: the slot
        // writes before the new tail are visible to our reads.
        self.cached_tail = s.tail().load(Ordering::Acquire);
        used_slots(s.capacity(), self.cached_tail, self.head)
    }

    #[inline]
    pub(crate) fn pop<T>(&mut self, s: &impl Storage<T>) -> Option<T> {
        if self.available(s, 1) == 0 {
            return None;
        }
        let index = self.index(s, 0);
        // SAFETY: available() >= 1, so slot `head` holds a published item not yet moved out.
        let value = unsafe { s.read(index) };
        self.release(s, 1);
        Some(value)
    }

    /// Copies up to `out.len()` items out, releasing their slots with one store.
    #[inline]
    pub(crate) fn pop_slice<T: Copy>(&mut self, s: &impl Storage<T>, out: &mut [T]) -> usize {
        let n = self.available(s, out.len() as u64).min(out.len() as u64) as usize;
        if n == 0 {
            return 0;
        }
        #[cfg(not(loom))]
        {
            let start = self.index(s, 0);
            let first = n.min(s.capacity() as usize - start);
            // SAFETY: the n slots from `start` (wrapping once) hold published items (n <=
            // available()); both ranges lie within the slot array (see push_slice), and `out`
            // is a unique borrow of caller memory, so it cannot overlap the ring.
            unsafe {
                core::ptr::copy_nonoverlapping(s.slot_ptr(start), out.as_mut_ptr(), first);
                core::ptr::copy_nonoverlapping(s.slot_ptr(0), out[first..].as_mut_ptr(), n - first);
            }
        }
        #[cfg(loom)]
        for (i, slot) in out[..n].iter_mut().enumerate() {
            // SAFETY: as above, slot by slot.
            *slot = unsafe { s.read(self.index(s, i as u64)) };
        }
        self.release(s, n as u64);
        n
    }

    /// The longest run of published items starting at `head` that does not wrap, at most
    /// `max`. Returns (first slot index, length).
    #[inline]
    pub(crate) fn claim<T>(&mut self, s: &impl Storage<T>, max: usize) -> (usize, usize) {
        let start = self.index(s, 0);
        let until_wrap = s.capacity() as usize - start;
        let wanted = max.min(until_wrap);
        let available = self.available(s, wanted as u64) as usize;
        (start, wanted.min(available))
    }

    /// Hands the next `n` slots back to the producer.
    #[inline]
    pub(crate) fn release<T>(&mut self, s: &impl Storage<T>, n: u64) {
        self.head = self.head.wrapping_add(n);
        // SYNC: publishes that our reads of the released slots are done -> Acquire load of
        // `head` in `ProducerCore::free`.
        s.head().store(self.head, Ordering::Release);
    }

    #[inline]
    pub(crate) fn index<T>(&self, s: &impl Storage<T>, offset: u64) -> usize {
        (self.head.wrapping_add(offset) & (s.capacity() - 1)) as usize
    }
}

/// Free slots for a producer at `tail` that saw the consumer at `head`.
///
/// Saturates: a `head` past `tail` (possible only if a peer process corrupts shared memory)
/// reads as "full", never as a huge free count that would overrun the slots.
#[inline(always)]
fn free_slots(capacity: u64, tail: u64, head: u64) -> u64 {
    capacity.saturating_sub(tail.wrapping_sub(head))
}

/// Published items for a consumer at `head` that saw the producer at `tail`, at most
/// `capacity` (same defence as [`free_slots`]).
#[inline(always)]
fn used_slots(capacity: u64, tail: u64, head: u64) -> u64 {
    tail.wrapping_sub(head).min(capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_counts_saturate_on_corrupt_positions() {
        assert_eq!(free_slots(8, 10, 4), 2);
        assert_eq!(free_slots(8, 4, 10), 0, "head past tail reads as full");
        assert_eq!(free_slots(8, 20, 4), 0, "tail more than a lap ahead reads as full");
        assert_eq!(used_slots(8, 10, 4), 6);
        assert_eq!(used_slots(8, 4, 10), 8, "never more than capacity");
        assert_eq!(free_slots(8, 3, u64::MAX - 1), 3, "positions wrap");
    }

    #[test]
    fn errors_display_lowercase() {
        assert_eq!(PushError::Full(3).to_string(), "spsc queue is full");
        assert_eq!(PushError::Full(3).into_inner(), 3);
        assert_eq!(PopError::Empty.to_string(), "spsc queue is empty");
    }
}
