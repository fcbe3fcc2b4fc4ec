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
/// slot indices `0..capacity()` name distinct slots, each able to hold one `T`.
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

    /// Copies `items` into the slots `start..start + items.len()` (no wrap).
    ///
    /// # Safety
    /// As [`write`](Self::write) for every slot of the run, and `start + items.len() <=
    /// capacity()`.
    unsafe fn write_run(&self, start: usize, items: &[T])
    where
        T: Copy;

    /// Copies the items of slots `start..start + out.len()` (no wrap) into `out`.
    ///
    /// # Safety
    /// As [`read`](Self::read) for every slot of the run, and `start + out.len() <=
    /// capacity()`.
    unsafe fn read_run(&self, start: usize, out: &mut [T])
    where
        T: Copy;
}

/// A position read from the peer that no honest peer can have written: the ring is poisoned.
///
/// A consumer sees it when `tail` is more than `capacity` slots ahead of its own `head` (or
/// behind it), or behind the last `tail` it saw; a producer, when `head` is ahead of its own
/// `tail` or behind the last `head` it saw. After one, that end reports it on every call and
/// touches neither the slots nor its own position again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// Which of the peer's positions was impossible.
    pub position: Position,
    /// The value read.
    pub seen: u64,
    /// This end's own position when it was read.
    pub own: u64,
    /// The peer's position this end had seen before.
    pub last_seen: u64,
    /// The ring's capacity.
    pub capacity: u64,
}

/// One of the two positions of a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// The consumer's `head`.
    Head,
    /// The producer's `tail`.
    Tail,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (peer, own) = match self.position {
            Position::Tail => ("tail", "head"),
            Position::Head => ("head", "tail"),
        };
        write!(
            f,
            "ring corrupt: peer's {peer} {} is impossible with our {own} {} (capacity {}, last {peer} seen {})",
            self.seen, self.own, self.capacity, self.last_seen
        )
    }
}

impl std::error::Error for Corruption {}

/// The producer's private half of the index protocol.
#[derive(Debug)]
pub(crate) struct ProducerCore {
    /// Next position to write; equal to the shared `tail` between operations.
    tail: u64,
    /// Last `head` seen; the real one is never behind it.
    cached_head: u64,
    /// Set once the consumer's `head` was impossible; the ring is then full forever.
    corrupt: Option<Corruption>,
}

impl ProducerCore {
    pub(crate) fn new(tail: u64, head: u64) -> Self {
        Self { tail, cached_head: head, corrupt: None }
    }

    /// The verdict, once the consumer's position was impossible.
    pub(crate) fn corruption(&self) -> Option<Corruption> {
        self.corrupt
    }

    /// Free slots, reading the shared `head` only if the cache shows fewer than `wanted`.
    #[inline]
    pub(crate) fn free<T>(&mut self, s: &impl Storage<T>, wanted: u64) -> u64 {
        let free = s.capacity() - self.tail.wrapping_sub(self.cached_head);
        if free >= wanted {
            return free;
        }
        self.refresh(s)
    }

    /// Reads the consumer's `head` and checks it is possible.
    #[inline]
    fn refresh<T>(&mut self, s: &impl Storage<T>) -> u64 {
        if self.corrupt.is_some() {
            return 0;
        }
        // SYNC: pairs with the Release store of `head` in `ConsumerCore::publish`: every read
        // of the slots before the new head happened before we overwrite them.
        let head = s.head().load(Ordering::Acquire);
        let cap = s.capacity();
        // An honest head lies in [cached_head, tail]: never ahead of what we published, never
        // moving back.
        if self.tail.wrapping_sub(head) > cap || head.wrapping_sub(self.cached_head) > cap {
            return self.poison(head, cap);
        }
        self.cached_head = head;
        cap - self.tail.wrapping_sub(head)
    }

    #[cold]
    #[inline(never)]
    fn poison(&mut self, head: u64, capacity: u64) -> u64 {
        self.corrupt = Some(Corruption {
            position: Position::Head,
            seen: head,
            own: self.tail,
            last_seen: self.cached_head,
            capacity,
        });
        // The fast path in `free` now computes 0 from the cache.
        self.cached_head = self.tail.wrapping_sub(capacity);
        0
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
        let start = self.index(s, 0);
        let first = n.min(s.capacity() as usize - start);
        // SAFETY: the n slots from `start` (wrapping once to 0) are free (n <= free()), and the
        // runs [start, start+first) and [0, n-first) lie within the slots (first <= capacity -
        // start, n - first <= start).
        unsafe {
            s.write_run(start, &items[..first]);
            s.write_run(0, &items[first..n]);
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
        // `ConsumerCore::refresh`.
        s.tail().store(self.tail, Ordering::Release);
    }

    #[inline]
    pub(crate) fn index<T>(&self, s: &impl Storage<T>, offset: u64) -> usize {
        (self.tail.wrapping_add(offset) & (s.capacity() - 1)) as usize
    }
}

/// The consumer's private half of the index protocol.
///
/// `head` here runs ahead of the shared one while a read chunk is open (items are taken one
/// by one and the shared `head` is stored once, at the end), so that an item moved out is
/// never read again, whatever the caller does with the chunk.
#[derive(Debug)]
pub(crate) struct ConsumerCore {
    /// Next position to read; the shared `head` is at most this.
    head: u64,
    /// Last `tail` seen; the real one is never behind it.
    cached_tail: u64,
    /// Set once the producer's `tail` was impossible; the ring is then empty forever.
    corrupt: Option<Corruption>,
}

impl ConsumerCore {
    pub(crate) fn new(head: u64, tail: u64) -> Self {
        Self { head, cached_tail: tail, corrupt: None }
    }

    /// The verdict, once the producer's position was impossible.
    pub(crate) fn corruption(&self) -> Option<Corruption> {
        self.corrupt
    }

    /// Published items, reading the shared `tail` only if the cache shows fewer than `wanted`.
    #[inline]
    pub(crate) fn available<T>(&mut self, s: &impl Storage<T>, wanted: u64) -> u64 {
        let available = self.cached_tail.wrapping_sub(self.head);
        if available >= wanted {
            return available;
        }
        self.refresh(s)
    }

    /// Reads the producer's `tail` and checks it is possible.
    #[inline]
    fn refresh<T>(&mut self, s: &impl Storage<T>) -> u64 {
        if self.corrupt.is_some() {
            return 0;
        }
        // SYNC: pairs with the Release store of `tail` in `ProducerCore::publish`: the slot
        // writes before the new tail are visible to our reads.
        let tail = s.tail().load(Ordering::Acquire);
        let cap = s.capacity();
        // An honest tail lies in [cached_tail, head + capacity]: never more than a lap ahead
        // of what we read, never moving back.
        if tail.wrapping_sub(self.head) > cap || tail.wrapping_sub(self.cached_tail) > cap {
            return self.poison(tail, cap);
        }
        self.cached_tail = tail;
        tail.wrapping_sub(self.head)
    }

    #[cold]
    #[inline(never)]
    fn poison(&mut self, tail: u64, capacity: u64) -> u64 {
        self.corrupt = Some(Corruption {
            position: Position::Tail,
            seen: tail,
            own: self.head,
            last_seen: self.cached_tail,
            capacity,
        });
        // The fast path in `available` now computes 0 from the cache.
        self.cached_tail = self.head;
        0
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
        let start = self.index(s, 0);
        let first = n.min(s.capacity() as usize - start);
        // SAFETY: the n slots from `start` (wrapping once) hold published items (n <=
        // available()); both runs lie within the slots (see push_slice).
        unsafe {
            s.read_run(start, &mut out[..first]);
            s.read_run(0, &mut out[first..n]);
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

    /// Counts `n` more slots as read, privately: the shared `head` moves at the next
    /// [`publish`](Self::publish).
    #[inline]
    pub(crate) fn take(&mut self, n: u64) {
        self.head = self.head.wrapping_add(n);
    }

    /// Hands the next `n` slots back to the producer.
    #[inline]
    pub(crate) fn release<T>(&mut self, s: &impl Storage<T>, n: u64) {
        self.take(n);
        self.publish(s);
    }

    /// Stores the private `head`: every slot before it is free for the producer again.
    #[inline]
    pub(crate) fn publish<T>(&self, s: &impl Storage<T>) {
        // SYNC: publishes that our reads of the released slots are done -> Acquire load of
        // `head` in `ProducerCore::refresh`.
        s.head().store(self.head, Ordering::Release);
    }

    #[inline]
    pub(crate) fn index<T>(&self, s: &impl Storage<T>, offset: u64) -> usize {
        (self.head.wrapping_add(offset) & (s.capacity() - 1)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_display_lowercase() {
        assert_eq!(PushError::Full(3).to_string(), "spsc queue is full");
        assert_eq!(PushError::Full(3).into_inner(), 3);
        assert_eq!(PopError::Empty.to_string(), "spsc queue is empty");
        let c =
            Corruption { position: Position::Tail, seen: 3, own: 10, last_seen: 10, capacity: 8 };
        assert_eq!(
            c.to_string(),
            "ring corrupt: peer's tail 3 is impossible with our head 10 (capacity 8, last tail seen 10)"
        );
    }
}
