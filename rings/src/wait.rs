//! Parking on a 32-bit word in shared memory until a peer wakes it, without lost wake-ups.
//!
//! A consumer that found its queue empty can sleep in the kernel instead of spinning, and the
//! producer pays for a wake-up (one `futex` syscall) only when the consumer is actually asleep.
//! The word is a *shared* futex (no `FUTEX_PRIVATE_FLAG`), so the two sides may be different
//! processes that map the same memory at different addresses. This is the only syscall the
//! crate makes: it is the kernel half of an atomic wait, as C++20's `atomic::wait` is.
//!
//! # The protocol, and why no wake-up is lost
//!
//! The word is [`IDLE`] (0) or [`PARKED`] (1). One waiter per word.
//!
//! ```text
//! waiter (park)                                 waker (after publishing, e.g. a tail store)
//! if ready() { return }                         publish (Release)
//! store word = PARKED        (Relaxed)          fence(SeqCst)                         (B)
//! fence(SeqCst)                       (A)       if load word (Relaxed) == PARKED
//! if ready() { word = IDLE; return }              && swap word = IDLE (Relaxed) == PARKED
//! futex_wait(word, PARKED, timeout)                  futex_wake(word, 1)
//! store word = IDLE          (Relaxed)
//! ```
//!
//! The two fences order the store-then-load on each side (Dekker): either the waiter's second
//! `ready()` sees the publication (it does not sleep), or the waker's load sees `PARKED` (it
//! wakes), or both. The waker sets the word to `IDLE` *before* `futex_wake`, and
//! `futex_wait(word, PARKED)` sleeps only if the word still holds `PARKED` when the kernel
//! checks it under its hash-bucket lock: a wake that comes before the waiter is asleep makes
//! the wait return at once instead of being lost. Spurious returns (signals, a stale wake)
//! are fine: the caller re-checks `ready()`.
//!
//! Modelled with loom in `tests/loom.rs`, where the futex is a mutex and condition variable
//! (the kernel's bucket lock and wait queue) and a lost wake-up shows as a deadlock.
#![allow(unsafe_code)]

use std::time::Duration;

use crate::sync::{fence, AtomicU32, Ordering};

/// No waiter is parked on the word.
pub const IDLE: u32 = 0;
/// A waiter is parked on the word, or about to be.
pub const PARKED: u32 = 1;

/// How [`park`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parked {
    /// `ready()` held, before or after sleeping.
    Ready,
    /// The timeout passed (or the sleep was interrupted) and `ready()` still does not hold.
    TimedOut,
}

/// Waiter side: returns once `ready()` holds, sleeping on `word` (at most `timeout`, `None`
/// for no limit) while it does not. `ready` must read what the waker publishes with at least
/// Acquire ordering; it is called at most three times.
pub fn park(
    word: &AtomicU32,
    mut ready: impl FnMut() -> bool,
    timeout: Option<Duration>,
) -> Parked {
    if ready() {
        return Parked::Ready;
    }
    word.store(PARKED, Ordering::Relaxed);
    // SYNC: (A) orders the PARKED store before the re-check of `ready()`; pairs with the
    // waker's fence (B) in `wake` (Dekker, see the module doc).
    fence(Ordering::SeqCst);
    if ready() {
        word.store(IDLE, Ordering::Relaxed);
        return Parked::Ready;
    }
    futex_wait(word, PARKED, timeout);
    word.store(IDLE, Ordering::Relaxed);
    if ready() {
        Parked::Ready
    } else {
        Parked::TimedOut
    }
}

/// Waker side: call after publishing what the waiter's `ready()` reads. Wakes the waiter if
/// it is parked; returns whether it was (and a syscall was made).
#[inline]
pub fn wake(word: &AtomicU32) -> bool {
    // SYNC: (B) orders the caller's publication before the load of the word; pairs with the
    // waiter's fence (A) in `park`.
    fence(Ordering::SeqCst);
    if word.load(Ordering::Relaxed) != PARKED {
        return false;
    }
    wake_parked(word)
}

#[cold]
#[inline(never)]
fn wake_parked(word: &AtomicU32) -> bool {
    if word.swap(IDLE, Ordering::Relaxed) != PARKED {
        return false;
    }
    futex_wake(word);
    true
}

#[cfg(not(loom))]
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    use rustix::thread::futex;
    let timespec = timeout.map(|t| futex::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    // Shared futex: the word may be mapped by another process. Every outcome is fine for the
    // caller, who re-checks: woken, EAGAIN (the word changed first), ETIMEDOUT, EINTR.
    let _ = futex::wait(word, futex::Flags::empty(), expected, timespec.as_ref());
}

#[cfg(not(loom))]
fn futex_wake(word: &AtomicU32) {
    // Fails only for a bad address, which a `&AtomicU32` is not.
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), 1);
}

// The loom model of the kernel's futex: its hash-bucket lock is a mutex, its wait queue a
// condition variable. Timeouts are not modelled (a wait lasts until woken), so a lost
// wake-up is a deadlock that loom reports.
#[cfg(loom)]
loom::lazy_static! {
    static ref BUCKET: (loom::sync::Mutex<()>, loom::sync::Condvar) =
        (loom::sync::Mutex::new(()), loom::sync::Condvar::new());
}

#[cfg(loom)]
fn futex_wait(word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
    let (lock, queue) = &*BUCKET;
    let guard = lock.lock().unwrap();
    // SYNC: the kernel reads the word under the bucket lock, after a full barrier.
    if word.load(Ordering::SeqCst) == expected {
        drop(queue.wait(guard).unwrap());
    }
}

#[cfg(loom)]
fn futex_wake(_word: &AtomicU32) {
    let (lock, queue) = &*BUCKET;
    let _guard = lock.lock().unwrap();
    queue.notify_all();
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn park_returns_at_once_when_ready_and_never_touches_the_word() {
        let word = AtomicU32::new(IDLE);
        assert_eq!(park(&word, || true, None), Parked::Ready);
        assert_eq!(word.load(Ordering::Relaxed), IDLE);
        assert!(!wake(&word), "nobody parked: no syscall");
    }

    #[test]
    fn park_times_out_and_leaves_the_word_idle() {
        let word = AtomicU32::new(IDLE);
        let start = Instant::now();
        assert_eq!(park(&word, || false, Some(Duration::from_millis(20))), Parked::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(15), "it slept, it did not spin out");
        assert_eq!(word.load(Ordering::Relaxed), IDLE);
    }

    #[test]
    fn a_wake_from_another_thread_ends_the_park() {
        let word = Arc::new(AtomicU32::new(IDLE));
        let flag = Arc::new(AtomicBool::new(false));
        let (w, f) = (word.clone(), flag.clone());
        let waker = std::thread::spawn(move || {
            while w.load(Ordering::Relaxed) != PARKED {
                std::thread::yield_now();
            }
            // SYNC: test publication, read by the Acquire in `ready` below.
            f.store(true, Ordering::Release);
            wake(&w)
        });
        // SYNC: pairs with the test's Release store above.
        let got = park(&word, || flag.load(Ordering::Acquire), Some(Duration::from_secs(10)));
        assert_eq!(got, Parked::Ready);
        let _ = waker.join().unwrap();
    }
}
