//! Links between lanes: bounded SPSC queues whose consumer lane is woken when it is parked.
//!
//! A link is a [`rings::spsc`](crate::rings::spsc) queue plus the consumer lane's
//! [`LaneWaker`]. The producing agent pushes; the consuming agent pops in its `do_work`. A lane
//! that spins or yields sees the item on its next pass; a lane that parks (waits in its
//! reactor) is woken through an eventfd that its reactor watches. The producer pays for that
//! wake (one `write` syscall) only when the consumer lane is actually parked: otherwise a push
//! costs a fence and a load of a line nobody writes in steady state.
//!
//! # No lost wake-up
//!
//! ```text
//! producer (LinkTx::push)                  consumer lane (before parking)
//! push: tail store (Release)               parked = true          (Relaxed)
//! fence(SeqCst)                     (B)    fence(SeqCst)                      (A)
//! if parked && swap(parked, false):        last look: every agent's do_work once
//!     write(eventfd, 1)                    (the consumer pops: tail load, Acquire)
//!                                          nothing? park in the reactor (eventfd watched)
//!                                          parked = false
//! ```
//!
//! The fences make it a Dekker pair: either the last look sees the item (no park), or the
//! producer sees `parked` (it writes the eventfd, which is then readable and ends the park,
//! even if the write came before the park began). A spurious wake (the eventfd written for a
//! park that already ended) costs one empty pass. The same protocol is model-checked for the
//! shared-memory ring's futex in `corelane_rings::wait`.
//!
//! ```no_run
//! use corelane::runtime::{link, LaneWaker};
//!
//! let waker = LaneWaker::new().unwrap(); // the consumer lane's: put it in its LaneSpec
//! let (mut tx, mut rx) = link::<u64>(1024, &waker);
//! tx.push(7).unwrap(); // wakes the consumer lane if it is parked
//! assert_eq!(rx.pop(), Ok(7));
//! ```

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::rings::spsc::{self, PopError, PushError};

/// The wake-up handle of one lane: how producers on other lanes wake it when it parks. Give
/// it to the lane in [`LaneSpec::waker`](super::LaneSpec::waker); clone it into every link
/// that lane consumes.
#[derive(Clone, Debug)]
pub struct LaneWaker {
    inner: Arc<WakerInner>,
}

#[derive(Debug)]
struct WakerInner {
    /// The lane is parked or about to park (set by the lane, cleared by the lane or a waker).
    parked: AtomicBool,
    /// Non-blocking eventfd; the lane's reactor watches a duplicate of it.
    eventfd: OwnedFd,
    /// Wake-ups that cost a syscall.
    wakes: AtomicU64,
}

impl LaneWaker {
    /// A waker with its own eventfd.
    pub fn new() -> io::Result<Self> {
        let eventfd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(Self {
            inner: Arc::new(WakerInner {
                parked: AtomicBool::new(false),
                eventfd,
                wakes: AtomicU64::new(0),
            }),
        })
    }

    /// Wakes the lane if it is parked: call after publishing something its agents poll.
    /// Returns whether a wake-up was sent (a syscall made).
    #[inline]
    pub fn wake(&self) -> bool {
        // SYNC: (B) orders the caller's publication (a queue's Release tail store) before the
        // load of `parked`; pairs with the lane's fence (A) in `arm`.
        fence(Ordering::SeqCst);
        if !self.inner.parked.load(Ordering::Relaxed) {
            return false;
        }
        self.wake_parked()
    }

    #[cold]
    #[inline(never)]
    fn wake_parked(&self) -> bool {
        if !self.inner.parked.swap(false, Ordering::Relaxed) {
            return false; // another producer woke it already
        }
        self.inner.wakes.fetch_add(1, Ordering::Relaxed);
        // EAGAIN means the counter is saturated: the lane will wake anyway.
        let _ = rustix::io::write(&self.inner.eventfd, &1u64.to_ne_bytes());
        true
    }

    /// Wake-ups that cost a syscall so far.
    pub fn wakes(&self) -> u64 {
        self.inner.wakes.load(Ordering::Relaxed)
    }

    /// Lane side, before parking: from now on producers wake us. Call the last look (the
    /// agents' `do_work`) after this, and park only if it found nothing.
    pub(super) fn arm(&self) {
        self.inner.parked.store(true, Ordering::Relaxed);
        // SYNC: (A) orders the `parked` store before the last look's loads of the queues;
        // pairs with the producers' fence (B) in `wake`.
        fence(Ordering::SeqCst);
    }

    /// Lane side, after the park (or after a last look that found work).
    pub(super) fn disarm(&self) {
        self.inner.parked.store(false, Ordering::Relaxed);
    }

    /// A duplicate of the eventfd, for the lane's reactor to watch.
    pub(super) fn watch_fd(&self) -> io::Result<OwnedFd> {
        self.inner.eventfd.as_fd().try_clone_to_owned()
    }

    /// Resets the eventfd's counter after it woke the lane.
    pub(super) fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.inner.eventfd, &mut buf);
    }
}

/// Creates a link of `capacity` slots (a power of two) whose consumer runs on the lane that
/// owns `consumer`.
///
/// # Panics
/// If `capacity` is not a power of two.
pub fn link<T>(capacity: usize, consumer: &LaneWaker) -> (LinkTx<T>, LinkRx<T>) {
    let (tx, rx) = spsc::channel(capacity);
    (LinkTx { tx, waker: consumer.clone() }, LinkRx { rx })
}

/// The producing end of a link. `Send`, not `Sync`, not `Clone`.
#[derive(Debug)]
pub struct LinkTx<T> {
    tx: spsc::Producer<T>,
    waker: LaneWaker,
}

impl<T> LinkTx<T> {
    /// Pushes one item and wakes the consumer lane if it is parked; hands the item back if
    /// the link is full.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), PushError<T>> {
        self.tx.push(value)?;
        self.waker.wake();
        Ok(())
    }

    /// Pushes without waking: for a batch, then [`wake`](Self::wake) once.
    #[inline]
    pub fn push_quiet(&mut self, value: T) -> Result<(), PushError<T>> {
        self.tx.push(value)
    }

    /// Wakes the consumer lane if it is parked (after [`push_quiet`](Self::push_quiet)s).
    #[inline]
    pub fn wake(&self) -> bool {
        self.waker.wake()
    }

    /// Free slots right now.
    pub fn slots(&mut self) -> usize {
        self.tx.slots()
    }

    /// Whether the consuming end was dropped (its lane stopped).
    pub fn is_abandoned(&self) -> bool {
        self.tx.is_abandoned()
    }
}

/// The consuming end of a link: pop in the agent's `do_work` (the lane's last look before
/// parking runs `do_work`, which is what makes the wake-up protocol work).
#[derive(Debug)]
pub struct LinkRx<T> {
    rx: spsc::Consumer<T>,
}

impl<T> LinkRx<T> {
    /// Pops the oldest item.
    #[inline]
    pub fn pop(&mut self) -> Result<T, PopError> {
        self.rx.pop()
    }

    /// Items ready now.
    pub fn len(&mut self) -> usize {
        self.rx.len()
    }

    /// Whether nothing is ready now.
    pub fn is_empty(&mut self) -> bool {
        self.rx.is_empty()
    }

    /// Whether the producing end was dropped: once empty, the link stays empty.
    pub fn is_abandoned(&self) -> bool {
        self.rx.is_abandoned()
    }
}
