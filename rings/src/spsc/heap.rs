//! The heap variant: any `T`, ends that move between threads.

use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;
use core::mem::MaybeUninit;

use super::{ConsumerCore, PopError, ProducerCore, PushError, Storage};
use crate::sync::{fence, Arc, AtomicU64, Ordering, UnsafeCell};
use crate::CachePadded;

/// Creates a queue of `capacity` slots and returns its two ends.
///
/// # Panics
/// If `capacity` is zero or not a power of two (the slot index is a mask of the position).
pub fn channel<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    assert!(capacity.is_power_of_two(), "spsc capacity must be a power of two, got {capacity}");
    let ring = Arc::new(HeapRing {
        head: CachePadded::new(AtomicU64::new(0)),
        tail: CachePadded::new(AtomicU64::new(0)),
        buffer: Slots::new(capacity),
    });
    let producer =
        Producer { ring: ring.clone(), core: ProducerCore::new(0, 0), _not_sync: PhantomData };
    let consumer = Consumer { ring, core: ConsumerCore::new(0, 0), _not_sync: PhantomData };
    (producer, consumer)
}

/// The writing end of a [`channel`]. `Send` (if `T` is), not `Sync`, not `Clone`.
pub struct Producer<T> {
    ring: Arc<HeapRing<T>>,
    core: ProducerCore,
    _not_sync: PhantomData<Cell<()>>,
}

/// The reading end of a [`channel`]. `Send` (if `T` is), not `Sync`, not `Clone`.
pub struct Consumer<T> {
    ring: Arc<HeapRing<T>>,
    core: ConsumerCore,
    _not_sync: PhantomData<Cell<()>>,
}

impl<T> Producer<T> {
    /// Pushes one item, or hands it back if the queue is full.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), PushError<T>> {
        self.core.push(&*self.ring, value).map_err(PushError::Full)
    }

    /// Copies as many of `items` as fit and publishes them at once; returns how many.
    #[inline]
    pub fn push_slice(&mut self, items: &[T]) -> usize
    where
        T: Copy,
    {
        self.core.push_slice(&*self.ring, items)
    }

    /// Claims up to `max` free slots that are contiguous in the ring (fewer if the queue is
    /// nearly full or the run reaches the end of the buffer). Fill it with
    /// [`WriteChunk::push`], then [`WriteChunk::commit`] publishes all of it with one store.
    #[inline]
    pub fn write_chunk(&mut self, max: usize) -> WriteChunk<'_, T> {
        let (start, len) = self.core.claim(&*self.ring, max);
        WriteChunk { producer: self, start, len, written: 0 }
    }

    /// Free slots right now (reads the consumer's position).
    pub fn slots(&mut self) -> usize {
        self.core.free(&*self.ring, u64::MAX) as usize
    }

    /// Whether no slot is free right now.
    pub fn is_full(&mut self) -> bool {
        self.core.free(&*self.ring, 1) == 0
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.ring.buffer.len()
    }

    /// Whether the [`Consumer`] has been dropped: nothing pushed from now on will be read.
    pub fn is_abandoned(&self) -> bool {
        abandoned(&self.ring)
    }
}

impl<T> Consumer<T> {
    /// Pops the oldest item.
    #[inline]
    pub fn pop(&mut self) -> Result<T, PopError> {
        self.core.pop(&*self.ring).ok_or(PopError::Empty)
    }

    /// Copies up to `out.len()` items out and frees their slots at once; returns how many.
    #[inline]
    pub fn pop_slice(&mut self, out: &mut [T]) -> usize
    where
        T: Copy,
    {
        self.core.pop_slice(&*self.ring, out)
    }

    /// Claims up to `max` published items that are contiguous in the ring. Take them with the
    /// chunk's iterator (or look at them with [`ReadChunk::as_slice`]); the slots of the
    /// items taken are freed with one store when the chunk is dropped. An item taken is gone
    /// from the queue at once: if the chunk is leaked (`mem::forget`), its slots are freed by
    /// the consumer's next release instead, and no item is ever read twice.
    #[inline]
    pub fn read_chunk(&mut self, max: usize) -> ReadChunk<'_, T> {
        let (start, len) = self.core.claim(&*self.ring, max);
        ReadChunk { consumer: self, start, len, taken: 0 }
    }

    /// Items ready to pop right now (reads the producer's position).
    pub fn len(&mut self) -> usize {
        self.core.available(&*self.ring, u64::MAX) as usize
    }

    /// Whether no item is ready right now.
    pub fn is_empty(&mut self) -> bool {
        self.core.available(&*self.ring, 1) == 0
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.ring.buffer.len()
    }

    /// Whether the [`Producer`] has been dropped: once the queue is empty, it stays empty.
    /// Every item it pushed is visible to the next `pop` after this returns true.
    pub fn is_abandoned(&self) -> bool {
        abandoned(&self.ring)
    }
}

/// Free slots claimed by [`Producer::write_chunk`]; published by [`commit`](Self::commit).
///
/// Dropping a chunk without committing drops the values written into it, unpublished.
#[must_use = "a write chunk publishes nothing until it is committed"]
pub struct WriteChunk<'a, T> {
    producer: &'a mut Producer<T>,
    start: usize,
    len: usize,
    written: usize,
}

impl<T> WriteChunk<'_, T> {
    /// Claimed slots not yet written.
    pub fn len(&self) -> usize {
        self.len - self.written
    }

    /// Whether every claimed slot is written (or none was claimed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the next slot of the chunk, or hands the value back if the chunk is full.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), T> {
        if self.written == self.len {
            return Err(value);
        }
        // SAFETY: start + written < start + len <= capacity, and the claim made these slots
        // free and ours until commit.
        unsafe { self.producer.ring.write(self.start + self.written, value) };
        self.written += 1;
        Ok(())
    }

    /// Writes items from `iter` until it ends or the chunk is full; returns how many.
    pub fn fill_from(&mut self, iter: impl IntoIterator<Item = T>) -> usize {
        let before = self.written;
        for value in iter.into_iter().take(self.len()) {
            // The take() above keeps this within the chunk.
            let _ = self.push(value);
        }
        self.written - before
    }

    /// Publishes the written slots with one store; returns how many.
    pub fn commit(mut self) -> usize {
        let n = self.written;
        if n > 0 {
            // Nothing written, nothing to publish: leave the consumer's cache line alone.
            self.producer.core.publish(&*self.producer.ring, n as u64);
        }
        self.written = 0; // now owned by the consumer: Drop must not touch them
        n
    }
}

impl<T> Drop for WriteChunk<'_, T> {
    fn drop(&mut self) {
        for i in 0..self.written {
            // SAFETY: slot start+i was written by push and never published, so we own the
            // value in it.
            drop(unsafe { self.producer.ring.read(self.start + i) });
        }
    }
}

/// Published items claimed by [`Consumer::read_chunk`]. Iterating moves them out; dropping the
/// chunk frees the slots of the items taken, with one store.
pub struct ReadChunk<'a, T> {
    consumer: &'a mut Consumer<T>,
    start: usize,
    len: usize,
    taken: usize,
}

impl<T> ReadChunk<'_, T> {
    /// Items of the chunk not yet taken.
    pub fn len(&self) -> usize {
        self.len - self.taken
    }

    /// Whether every item has been taken (or none was claimed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items not yet taken, in order, without moving them out.
    #[cfg(not(loom))]
    pub fn as_slice(&self) -> &[T] {
        let first = self.consumer.ring.slot_ptr(self.start + self.taken);
        // SAFETY: the slots [start+taken, start+len) are contiguous, hold published items, and
        // stay untouched by the producer until this chunk releases them.
        unsafe { core::slice::from_raw_parts(first, self.len()) }
    }

    /// Drops every item not yet taken and frees all the chunk's slots.
    pub fn commit_all(mut self) {
        while self.next().is_some() {}
    }
}

impl<T> Iterator for ReadChunk<'_, T> {
    type Item = T;

    #[inline]
    fn next(&mut self) -> Option<T> {
        if self.taken == self.len {
            return None;
        }
        // SAFETY: the slot is in the claimed run of published items and not yet taken.
        let value = unsafe { self.consumer.ring.read(self.start + self.taken) };
        self.taken += 1;
        // Gone from the queue now, not when the chunk drops: a leaked chunk must not let the
        // next pop move the same value out again.
        self.consumer.core.take(1);
        Some(value)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len(), Some(self.len()))
    }
}

impl<T> Drop for ReadChunk<'_, T> {
    fn drop(&mut self) {
        if self.taken == 0 {
            // A consumer polling an empty queue must not keep storing to the producer's view.
            return;
        }
        self.consumer.core.publish(&*self.consumer.ring);
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        // A leaked read chunk leaves the shared head behind the items it moved out; publish
        // ours so that `HeapRing::drop` drops only what is still in the queue.
        self.core.publish(&*self.ring);
    }
}

/// Whether the other end of `ring` has been dropped.
fn abandoned<T>(ring: &Arc<HeapRing<T>>) -> bool {
    if Arc::strong_count(ring) >= 2 {
        return false;
    }
    // SYNC: `strong_count` is a Relaxed load; this fence makes it synchronise with the
    // Release decrement in the other end's `Arc::drop`, so its last `tail` (or `head`) store
    // is visible to our next Acquire load of it.
    fence(Ordering::Acquire);
    true
}

struct HeapRing<T> {
    head: CachePadded<AtomicU64>,
    tail: CachePadded<AtomicU64>,
    buffer: Slots<T>,
}

type Slot<T> = UnsafeCell<MaybeUninit<T>>;

/// Loom's cells must be constructed one by one and need no particular alignment.
#[cfg(loom)]
type Slots<T> = Box<[Slot<T>]>;

#[cfg(loom)]
trait NewSlots: Sized {
    fn new(len: usize) -> Self;
}

#[cfg(loom)]
impl<T> NewSlots for Box<[Slot<T>]> {
    fn new(len: usize) -> Self {
        (0..len).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect()
    }
}

/// The slot array, starting on a 128-byte boundary so that a 64-byte item fills one cache
/// line instead of straddling two (a `Box<[T]>` is only aligned to `align_of::<T>()`).
#[cfg(not(loom))]
struct Slots<T> {
    ptr: core::ptr::NonNull<Slot<T>>,
    len: usize,
}

#[cfg(not(loom))]
impl<T> Slots<T> {
    const ALIGN: usize = 128;

    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::array::<Slot<T>>(len)
            .and_then(|l| l.align_to(Self::ALIGN))
            .expect("spsc capacity too large for memory")
    }

    fn new(len: usize) -> Self {
        let layout = Self::layout(len);
        if layout.size() == 0 {
            // Zero-sized items: no memory, any aligned non-null pointer will do.
            return Self { ptr: core::ptr::NonNull::dangling(), len };
        }
        // SAFETY: the layout has a non-zero size (checked above).
        let raw = unsafe { std::alloc::alloc(layout) }.cast::<Slot<T>>();
        let Some(ptr) = core::ptr::NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        // Uninitialised memory is a valid `UnsafeCell<MaybeUninit<T>>`: nothing to write.
        Self { ptr, len }
    }
}

#[cfg(not(loom))]
impl<T> core::ops::Deref for Slots<T> {
    type Target = [Slot<T>];

    fn deref(&self) -> &[Slot<T>] {
        // SAFETY: ptr is valid for `len` slots (allocated in `new`, or zero-sized), and every
        // bit pattern, uninitialised included, is a valid MaybeUninit.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

#[cfg(not(loom))]
impl<T> Drop for Slots<T> {
    fn drop(&mut self) {
        let layout = Self::layout(self.len);
        if layout.size() != 0 {
            // SAFETY: allocated in `new` with this same layout. The items were dropped by
            // HeapRing::drop; MaybeUninit slots need no drop of their own.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), layout) };
        }
    }
}

// SAFETY: the ring hands each slot to exactly one end at a time (the index protocol), so
// sharing it between the producer's and the consumer's threads moves `T` values between
// threads, which `T: Send` allows; no `&T` is ever shared across threads.
unsafe impl<T: Send> Sync for HeapRing<T> {}
// SAFETY: as for Sync; the ring owns `T` values, which may be dropped on any thread.
unsafe impl<T: Send> Send for HeapRing<T> {}

// SAFETY: capacity is the slot array's length, fixed and a power of two (checked in
// `channel`); head and tail are two distinct fields; slots are the elements of one array.
unsafe impl<T> Storage<T> for HeapRing<T> {
    #[inline(always)]
    fn head(&self) -> &AtomicU64 {
        &self.head
    }

    #[inline(always)]
    fn tail(&self) -> &AtomicU64 {
        &self.tail
    }

    #[inline(always)]
    fn capacity(&self) -> u64 {
        self.buffer.len() as u64
    }

    #[inline(always)]
    unsafe fn write(&self, index: usize, value: T) {
        debug_assert!(index < self.buffer.len());
        // SAFETY: the caller owns the free slot `index < capacity`; no other access to it.
        let slot = unsafe { self.buffer.get_unchecked(index) };
        slot.with_mut(|p| {
            // SAFETY: p points to the slot, which no one else accesses now (caller's
            // obligation); MaybeUninit::write never drops the old (dead) contents.
            unsafe { (*p).write(value) };
        });
    }

    #[inline(always)]
    unsafe fn read(&self, index: usize) -> T {
        debug_assert!(index < self.buffer.len());
        // SAFETY: the caller owns the published slot `index < capacity`.
        let slot = unsafe { self.buffer.get_unchecked(index) };
        // SAFETY: the slot was initialised by `write` and is moved out exactly once.
        slot.with(|p| unsafe { (*p).assume_init_read() })
    }

    #[inline(always)]
    unsafe fn write_run(&self, start: usize, items: &[T])
    where
        T: Copy,
    {
        #[cfg(not(loom))]
        {
            // SAFETY: the run lies within the slot array (caller), which is contiguous, and
            // the producer owns these free slots; `items` cannot overlap the ring's memory
            // because the producer holds no reference into it.
            unsafe {
                core::ptr::copy_nonoverlapping(items.as_ptr(), self.slot_ptr(start), items.len());
            }
        }
        #[cfg(loom)]
        for (i, item) in items.iter().enumerate() {
            // SAFETY: as above, slot by slot.
            unsafe { self.write(start + i, *item) };
        }
    }

    #[inline(always)]
    unsafe fn read_run(&self, start: usize, out: &mut [T])
    where
        T: Copy,
    {
        #[cfg(not(loom))]
        {
            // SAFETY: the run lies within the slot array (caller) and holds published items
            // the consumer owns; `out` is a unique borrow of caller memory: no overlap.
            unsafe {
                core::ptr::copy_nonoverlapping(self.slot_ptr(start), out.as_mut_ptr(), out.len());
            }
        }
        #[cfg(loom)]
        for (i, slot) in out.iter_mut().enumerate() {
            // SAFETY: as above, slot by slot.
            *slot = unsafe { self.read(start + i) };
        }
    }
}

impl<T> HeapRing<T> {
    /// Address of slot `index`, for contiguous copies (not under loom, whose cells give no
    /// raw pointers that outlive a closure).
    #[cfg(not(loom))]
    #[inline(always)]
    fn slot_ptr(&self, index: usize) -> *mut T {
        // Our UnsafeCell and MaybeUninit are both repr(transparent) over T, and the pointer
        // comes from the whole slot array, so it may address any slot.
        self.buffer.as_ptr().wrapping_add(index).cast::<T>().cast_mut()
    }
}

impl<T> Drop for HeapRing<T> {
    fn drop(&mut self) {
        if !core::mem::needs_drop::<T>() {
            return;
        }
        // SYNC: both ends are gone; Arc's own release/acquire on the count already ordered
        // their last stores before this point, the Acquire only restates it for loom.
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        let mask = self.buffer.len() as u64 - 1;
        let mut pos = head;
        while pos != tail {
            // SAFETY: positions in [head, tail) hold published, unread items; each read once.
            drop(unsafe { self.read((pos & mask) as usize) });
            pos = pos.wrapping_add(1);
        }
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer").field("capacity", &self.capacity()).finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").field("capacity", &self.capacity()).finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for WriteChunk<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteChunk")
            .field("len", &self.len)
            .field("written", &self.written)
            .finish()
    }
}

impl<T> fmt::Debug for ReadChunk<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadChunk").field("len", &self.len).field("taken", &self.taken).finish()
    }
}
