//! Parking on a word in shared memory until a peer wakes it, without lost wake-ups.
//!
//! A consumer that found its queue empty can sleep in the kernel instead of spinning, and the
//! producer pays for a wake-up (one `futex` syscall) only when the consumer is actually asleep.
//! The word is a *shared* futex (no `FUTEX_PRIVATE_FLAG`), so the two sides may be different
//! processes that map the same memory at different addresses. This is the only syscall the
//! crate makes: it is the kernel half of an atomic wait, as C++20's `atomic::wait` is.
//!
//! # The protocol, and why no wake-up is lost
//!
//! The word is an `AtomicU64` holding [`IDLE`] (0) or [`PARKED`] (1), one waiter per word.
//! Rust code only ever accesses it as 64 bits (memory around it is 64-bit words too, and
//! Rust forbids racing atomic accesses of different sizes); the futex, a 32-bit kernel
//! object, is its low half (this crate is little-endian only), which the kernel reads.
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
//! the wait return at once instead of being lost. A return without `ready()` (a signal, a
//! stale wake from an earlier `wake`, any process that maps the word) starts the protocol
//! over until the deadline: `park` returns `TimedOut` only when the time is up.
//!
//! Modelled with loom in `tests/loom.rs`, where the futex is a mutex and condition variable
//! (the kernel's bucket lock and wait queue) and a lost wake-up shows as a deadlock.
//!
//! Under Miri the futex is not called: Miri emulates `futex(2)` as a 32-bit atomic load
//! *inside* the Rust memory model, where it would race with the 64-bit accesses to the same
//! word (a mixed-size race that the real kernel access, outside the model, is not; Miri
//! nightly 2026-05 even crashes reporting it). There a wait is a `yield_now` and a wake does
//! nothing, so Miri checks the Rust half of the protocol (every access to the word and the
//! re-check loop) and loom checks that no wake-up is lost.
//!
//! # Out-of-band wake-ups (a doorbell rung by the caller)
//!
//! The waiter sleeps somewhere else (a lane parks in its io_uring or epoll, not on this
//! word), and the waker, instead of a `futex` call, is told to ring a doorbell of the
//! waiter's choosing: a byte on a socket the waiter's reactor watches, say. (One waiter per
//! word, as for [`park`]; not to be confused with [`Doorbell`], many waiters on a futex.)
//!
//! Same word, same Dekker pair as [`park`] and [`wake`], with the kernel's futex replaced by
//! the caller's doorbell:
//!
//! ```text
//! waiter (arm, then sleep elsewhere)               waker (after publishing)
//! store word = PARKED        (Relaxed)             publish (Release)
//! fence(SeqCst)                        (E)         fence(SeqCst)                        (F)
//! if ready() { word = IDLE; return false }         if load word (Relaxed) == PARKED
//! sleep until the doorbell rings (or anything)       && swap word = IDLE (Relaxed) == PARKED
//! disarm: word = IDLE (if it is not)                   ring the doorbell
//! ```
//!
//! Either the waiter's re-check sees the publication (it does not sleep), or the waker's
//! load sees `PARKED` (it rings), or both. The swap hands the ring to exactly one waker per
//! arming, so a burst of publications costs one doorbell. A doorbell rung for a sleep that
//! already ended (the waiter woke for another reason and disarmed after the waker's swap)
//! costs the waiter one spurious wake-up, never a lost one: the doorbell stays rung (the byte
//! stays readable) until the waiter consumes it.
//!
//! The word may be one a peer can write (a ring's wait word in shared memory): a peer that
//! stores `IDLE` over an armed word only stops its own doorbells (its records wait until the
//! waiter wakes for another reason); one that stores `PARKED` only makes itself ring for
//! nothing. `ready()` is the truth either way.
//!
//! A word is used with [`park`]/[`wake`] or with [`arm`]/[`take`], not both: a [`wake`]
//! that finds the word armed takes it (and wakes nobody on the futex), so the doorbell is not
//! rung.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use crate::sync::{fence, AtomicU64, Ordering};

/// No waiter is parked on the word.
pub const IDLE: u64 = 0;
/// A waiter is parked on the word, or about to be.
pub const PARKED: u64 = 1;

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
/// Acquire ordering.
pub fn park(
    word: &AtomicU64,
    mut ready: impl FnMut() -> bool,
    timeout: Option<Duration>,
) -> Parked {
    if ready() {
        return Parked::Ready;
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        word.store(PARKED, Ordering::Relaxed);
        // SYNC: (A) orders the PARKED store before the re-check of `ready()`; pairs with the
        // waker's fence (B) in `wake` (Dekker, see the module doc).
        fence(Ordering::SeqCst);
        if ready() {
            word.store(IDLE, Ordering::Relaxed);
            return Parked::Ready;
        }
        let left = match deadline {
            None => None,
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => {
                    word.store(IDLE, Ordering::Relaxed);
                    return Parked::TimedOut;
                }
            },
        };
        futex_wait(word, PARKED, left);
        word.store(IDLE, Ordering::Relaxed);
        if ready() {
            return Parked::Ready;
        }
    }
}

/// Waker side: call after publishing what the waiter's `ready()` reads. Wakes the waiter if
/// it is parked; returns whether it was (and a syscall was made).
#[inline]
pub fn wake(word: &AtomicU64) -> bool {
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
fn wake_parked(word: &AtomicU64) -> bool {
    if word.swap(IDLE, Ordering::Relaxed) != PARKED {
        return false;
    }
    futex_wake(word);
    true
}

/// Waiter side: announces that the caller is about to sleep elsewhere, then checks `ready()`
/// once more. Returns `true` if the caller may sleep (a waker that publishes from now on is
/// told to ring), `false` (and the word back to [`IDLE`]) if `ready()` already holds. `ready`
/// must read what the waker publishes with at least Acquire ordering.
#[inline]
pub fn arm(word: &AtomicU64, ready: impl FnOnce() -> bool) -> bool {
    word.store(PARKED, Ordering::Relaxed);
    // SYNC: (E) orders the PARKED store before the re-check of `ready()`; pairs with the
    // waker's fence (F) in `take`.
    fence(Ordering::SeqCst);
    if ready() {
        word.store(IDLE, Ordering::Relaxed);
        return false;
    }
    true
}

/// Waiter side, after waking (or instead of sleeping): no doorbell wanted any more. A load
/// first: when a waker already took the word, nothing is stored (the line stays shared).
#[inline]
pub fn disarm(word: &AtomicU64) {
    if word.load(Ordering::Relaxed) != IDLE {
        word.store(IDLE, Ordering::Relaxed);
    }
}

/// Waker side: call after publishing what the waiter's `ready()` reads. Returns `true` if
/// the waiter armed and sleeps elsewhere: the caller must now ring its doorbell. At most one
/// caller per arming gets `true`. No syscall: a fence and a load when nobody is armed.
#[inline]
pub fn take(word: &AtomicU64) -> bool {
    // SYNC: (F) orders the caller's publication before the load of the word; pairs with the
    // waiter's fence (E) in `arm`.
    fence(Ordering::SeqCst);
    if word.load(Ordering::Relaxed) != PARKED {
        return false;
    }
    take_armed(word)
}

#[cold]
#[inline(never)]
fn take_armed(word: &AtomicU64) -> bool {
    word.swap(IDLE, Ordering::Relaxed) == PARKED
}

/// Many waiters on one word: a consumer of a tensor-pool stream parks until the next commit,
/// however many consumers (in any processes) wait on the same stream.
///
/// [`park`]'s word holds one waiter. A [`Doorbell`] is two words: `waiters`, how many are
/// parked or about to be, and `bell`, a counter whose low half is the futex. A waker that
/// sees no waiter pays a fence and a load, nothing more; one that sees any bumps the bell
/// and wakes everyone parked on it (`FUTEX_WAKE` of all).
///
/// ```text
/// waiter (park)                                   waker (after publishing)
/// if ready() { return }                           publish (Release)
/// waiters += 1               (Relaxed)            fence(SeqCst)                        (D)
/// fence(SeqCst)                         (C)       if waiters (Relaxed) > 0
/// v = bell                   (Acquire)              bell += 1 (Release)
/// if ready() { waiters -= 1; return }               futex_wake_all(bell)
/// futex_wait(bell, v, timeout)
/// waiters -= 1               (Relaxed)
/// ```
///
/// Either the waiter's re-check sees the publication, or the waker's load sees the waiter
/// (the fences C and D order each side's store before its load, as in [`park`]). In the second
/// case the bell moves after the publication: if the waiter read `v` after the bump, that
/// Acquire read synchronises with the bump's Release and its re-check sees the publication;
/// if it read `v` before, `futex_wait(bell, v)` finds the bell changed and returns, or is
/// asleep and woken. (The futex compares 32 bits: 2^32 bumps between the waiter's read and
/// its sleep would be needed to lose a wake.)
///
/// The words may live in memory any peer maps, and a peer can write anything into them:
/// - make wakers wake for nothing (a non-zero `waiters`; a crashed waiter leaves itself
///   counted for good, so every later publication pays a `futex` call);
/// - make waiters wake early (they re-check and sleep again);
/// - make a waker skip the wake (a zero stored into `waiters`), so a parked waiter sleeps
///   until its timeout although the publication happened.
///
/// `ready()` is the truth, so a publication is never invented, and never lost for good: it
/// is seen at the latest when the park times out. A waiter that shares the words with peers
/// it does not trust parks with a bounded timeout and re-checks (the tensor pool's consumer
/// parks in slices of at most 10 ms), which bounds what a hostile peer can add to its
/// latency.
#[derive(Debug)]
pub struct Doorbell<'a> {
    waiters: &'a AtomicU64,
    bell: &'a AtomicU64,
}

impl<'a> Doorbell<'a> {
    /// The doorbell over two words (typically adjacent in shared memory, zero-initialised).
    pub fn new(waiters: &'a AtomicU64, bell: &'a AtomicU64) -> Self {
        Self { waiters, bell }
    }

    /// Waiter side: returns once `ready()` holds, sleeping while it does not (at most
    /// `timeout`, `None` for no limit). `ready` must read what the waker publishes with at
    /// least Acquire ordering.
    pub fn park(&self, mut ready: impl FnMut() -> bool, timeout: Option<Duration>) -> Parked {
        if ready() {
            return Parked::Ready;
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            self.waiters.fetch_add(1, Ordering::Relaxed);
            // SYNC: (C) orders the waiters increment before the bell read and the re-check;
            // pairs with the waker's fence (D) in `ring`.
            fence(Ordering::SeqCst);
            // SYNC: Acquire pairs with the Release bump in `ring_waiters`: a bell read after
            // the bump sees the publication that came before it.
            let seen = self.bell.load(Ordering::Acquire);
            if ready() {
                self.waiters.fetch_sub(1, Ordering::Relaxed);
                return Parked::Ready;
            }
            let left = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => {
                        self.waiters.fetch_sub(1, Ordering::Relaxed);
                        return Parked::TimedOut;
                    }
                },
            };
            futex_wait(self.bell, seen, left);
            self.waiters.fetch_sub(1, Ordering::Relaxed);
            if ready() {
                return Parked::Ready;
            }
        }
    }

    /// Waker side: call after publishing what the waiters' `ready()` reads. Wakes every
    /// parked waiter; returns whether any was counted (and a syscall was made).
    #[inline]
    pub fn ring(&self) -> bool {
        // SYNC: (D) orders the caller's publication before the load of `waiters`; pairs with
        // the waiter's fence (C) in `park`.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.ring_waiters();
        true
    }

    #[cold]
    #[inline(never)]
    fn ring_waiters(&self) {
        // SYNC: Release pairs with the waiter's Acquire bell read in `park`.
        self.bell.fetch_add(1, Ordering::Release);
        futex_wake_all(self.bell);
    }
}

/// The futex of `word`: its low 32 bits, as the kernel sees them. Only ever handed to the
/// futex syscall, which reads it; Rust code never loads or stores through it.
#[cfg(all(not(loom), not(miri)))]
fn futex_of(word: &AtomicU64) -> &std::sync::atomic::AtomicU32 {
    // SAFETY: `word` is 8-aligned and valid for `'_`, so its first 4 bytes are an aligned,
    // valid `AtomicU32`; little-endian (guarded in lib.rs) makes them the low half, where
    // IDLE and PARKED differ. The reference goes only to `futex(2)`, a kernel access outside
    // Rust's memory model; no Rust access of mixed size is ever made through it.
    unsafe { std::sync::atomic::AtomicU32::from_ptr(word.as_ptr().cast::<u32>()) }
}

#[cfg(all(not(loom), not(miri)))]
fn futex_wait(word: &AtomicU64, expected: u64, timeout: Option<Duration>) {
    use rustix::thread::futex;
    let timespec = timeout.map(|t| futex::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    // Shared futex: the word may be mapped by another process. Every outcome is fine for the
    // caller, who re-checks: woken, EAGAIN (the word changed first), ETIMEDOUT, EINTR.
    let _ = futex::wait(futex_of(word), futex::Flags::empty(), expected as u32, timespec.as_ref());
}

#[cfg(all(not(loom), not(miri)))]
fn futex_wake(word: &AtomicU64) {
    // Fails only for a bad address, which a reference is not.
    let _ = rustix::thread::futex::wake(futex_of(word), rustix::thread::futex::Flags::empty(), 1);
}

#[cfg(all(not(loom), not(miri)))]
fn futex_wake_all(word: &AtomicU64) {
    // Fails only for a bad address, which a reference is not.
    let flags = rustix::thread::futex::Flags::empty();
    // The kernel reads the count as an `int`: `i32::MAX` is "all" (`u32::MAX` would be -1).
    let _ = rustix::thread::futex::wake(futex_of(word), flags, i32::MAX as u32);
}

// Under Miri: a wait is a yield (the caller re-checks, as after any early return of the real
// wait), a wake is nothing. See the module doc for why.
#[cfg(all(not(loom), miri))]
fn futex_wait(_word: &AtomicU64, _expected: u64, _timeout: Option<Duration>) {
    std::thread::yield_now();
}

#[cfg(all(not(loom), miri))]
fn futex_wake(_word: &AtomicU64) {}

#[cfg(all(not(loom), miri))]
fn futex_wake_all(_word: &AtomicU64) {}

// The loom model of the kernel's futex: its hash-bucket lock is a mutex, its wait queue a
// condition variable. Timeouts are not modelled (a wait lasts until woken), so a lost
// wake-up is a deadlock that loom reports.
#[cfg(loom)]
loom::lazy_static! {
    static ref BUCKET: (loom::sync::Mutex<()>, loom::sync::Condvar) =
        (loom::sync::Mutex::new(()), loom::sync::Condvar::new());
}

#[cfg(loom)]
fn futex_wait(word: &AtomicU64, expected: u64, _timeout: Option<Duration>) {
    let (lock, queue) = &*BUCKET;
    let guard = lock.lock().unwrap();
    // SYNC: the kernel reads the word under the bucket lock, after a full barrier.
    if word.load(Ordering::SeqCst) == expected {
        drop(queue.wait(guard).unwrap());
    }
}

#[cfg(loom)]
fn futex_wake(_word: &AtomicU64) {
    let (lock, queue) = &*BUCKET;
    let _guard = lock.lock().unwrap();
    queue.notify_all();
}

#[cfg(loom)]
fn futex_wake_all(word: &AtomicU64) {
    futex_wake(word);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn park_returns_at_once_when_ready_and_never_touches_the_word() {
        let word = AtomicU64::new(IDLE);
        assert_eq!(park(&word, || true, None), Parked::Ready);
        assert_eq!(word.load(Ordering::Relaxed), IDLE);
        assert!(!wake(&word), "nobody parked: no syscall");
    }

    #[test]
    fn park_times_out_and_leaves_the_word_idle() {
        let word = AtomicU64::new(IDLE);
        let start = Instant::now();
        assert_eq!(park(&word, || false, Some(Duration::from_millis(20))), Parked::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(15), "it slept, it did not spin out");
        assert_eq!(word.load(Ordering::Relaxed), IDLE);
    }

    #[test]
    fn a_wake_from_another_thread_ends_the_park() {
        let word = Arc::new(AtomicU64::new(IDLE));
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

    #[test]
    fn a_doorbell_with_no_waiter_makes_no_syscall_and_parks_return_when_ready() {
        let words = [AtomicU64::new(0), AtomicU64::new(0)];
        let bell = Doorbell::new(&words[0], &words[1]);
        assert!(!bell.ring(), "nobody waits: no wake");
        assert_eq!(words[1].load(Ordering::Relaxed), 0, "the bell did not move");
        assert_eq!(bell.park(|| true, None), Parked::Ready);
        let start = Instant::now();
        assert_eq!(bell.park(|| false, Some(Duration::from_millis(20))), Parked::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(15), "it slept, it did not spin out");
        assert_eq!(words[0].load(Ordering::Relaxed), 0, "a timed-out waiter is uncounted");
    }

    #[test]
    fn one_ring_wakes_every_parked_waiter() {
        let words = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let flag = Arc::new(AtomicBool::new(false));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (words, flag) = (words.clone(), flag.clone());
                std::thread::spawn(move || {
                    let bell = Doorbell::new(&words[0], &words[1]);
                    // SYNC: pairs with the test's Release store below.
                    bell.park(|| flag.load(Ordering::Acquire), Some(Duration::from_secs(10)))
                })
            })
            .collect();
        while words[0].load(Ordering::Relaxed) < 3 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(20)); // let them reach the futex
                                                       // SYNC: test publication, read by the Acquire in `ready` above.
        flag.store(true, Ordering::Release);
        let start = Instant::now();
        assert!(Doorbell::new(&words[0], &words[1]).ring(), "three waited: a wake");
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), Parked::Ready);
        }
        assert!(start.elapsed() < Duration::from_secs(5), "woken, not timed out");
        assert_eq!(words[0].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn take_is_false_unless_armed_and_true_once_per_arming() {
        let word = AtomicU64::new(IDLE);
        assert!(!take(&word), "nobody armed");
        assert!(arm(&word, || false), "nothing ready: armed");
        assert_eq!(word.load(Ordering::Relaxed), PARKED);
        assert!(take(&word), "armed: ring");
        assert!(!take(&word), "one ring per arming");
        assert_eq!(word.load(Ordering::Relaxed), IDLE);
        disarm(&word); // already IDLE: nothing to do
        assert_eq!(word.load(Ordering::Relaxed), IDLE);
    }

    #[test]
    fn arm_refuses_when_ready_and_disarm_resets() {
        let word = AtomicU64::new(IDLE);
        assert!(!arm(&word, || true), "ready: do not sleep");
        assert_eq!(word.load(Ordering::Relaxed), IDLE, "and the word is back to IDLE");
        assert!(!take(&word));
        assert!(arm(&word, || false));
        disarm(&word);
        assert_eq!(word.load(Ordering::Relaxed), IDLE);
        assert!(!take(&word), "disarmed: no ring");
    }

    /// Many rounds between two threads: every publication is seen by the waiter's re-check
    /// or rung by the waker (the "sleep" is a spin on the doorbell flag, bounded by time so
    /// a lost wake-up fails instead of hanging).
    #[test]
    fn arm_and_take_never_lose_a_wake_up_across_threads() {
        let rounds = if cfg!(miri) { 20 } else { 20_000 };
        let word = Arc::new(AtomicU64::new(IDLE));
        let published = Arc::new(AtomicU64::new(0));
        let bell = Arc::new(AtomicU64::new(0));
        let (w, p, b) = (word.clone(), published.clone(), bell.clone());
        let waker = std::thread::spawn(move || {
            let mut rings = 0u64;
            for i in 1..=rounds {
                // SYNC: test publication, read by the Acquire in the waiter's `ready`.
                p.store(i, Ordering::Release);
                if take(&w) {
                    rings += 1;
                    // SYNC: test doorbell, read by the waiter's Acquire below.
                    b.fetch_add(1, Ordering::Release);
                }
                // Wait for the waiter to consume round i before publishing i + 1.
                while p.load(Ordering::Relaxed) != 0 {
                    std::hint::spin_loop();
                }
            }
            rings
        });
        let (mut seen_bell, mut sleeps) = (0u64, 0u64);
        for i in 1..=rounds {
            // SYNC: pairs with the waker's Release store of `published`.
            let ready = || published.load(Ordering::Acquire) == i;
            // As a lane would: look, arm, look again, sleep until rung, disarm, repeat. A
            // ring meant for an earlier sleep (the waker took the word just before our
            // re-check reset it) ends a sleep early: a spurious wake-up, and we look again.
            while !ready() {
                if arm(&word, ready) {
                    sleeps += 1;
                    let deadline = Instant::now() + Duration::from_secs(10);
                    // SYNC: pairs with the waker's Release doorbell.
                    while bell.load(Ordering::Acquire) == seen_bell {
                        assert!(Instant::now() < deadline, "round {i}: lost wake-up");
                        std::hint::spin_loop();
                    }
                    seen_bell = bell.load(Ordering::Relaxed);
                }
                disarm(&word);
            }
            published.store(0, Ordering::Relaxed);
        }
        let rings = waker.join().unwrap();
        assert!(rings <= rounds && sleeps <= rings, "{sleeps} sleeps, {rings} rings");
        assert_eq!(word.load(Ordering::Relaxed), IDLE);
    }

    /// A wake-up that brings nothing (a stray futex wake) does not end a park without a
    /// deadline: it sleeps again.
    #[test]
    fn a_stray_wake_does_not_end_a_park() {
        let word = Arc::new(AtomicU64::new(IDLE));
        let flag = Arc::new(AtomicBool::new(false));
        let (w, f) = (word.clone(), flag.clone());
        let waker = std::thread::spawn(move || {
            for _ in 0..3 {
                while w.load(Ordering::Relaxed) != PARKED {
                    std::thread::yield_now();
                }
                std::thread::sleep(Duration::from_millis(5));
                futex_wake(&w); // stray: nothing published
            }
            // SYNC: test publication, read by the Acquire in `ready` below.
            f.store(true, Ordering::Release);
            wake(&w)
        });
        let mut checks = 0;
        // SYNC: pairs with the test's Release store above.
        let got = park(
            &word,
            || {
                checks += 1;
                flag.load(Ordering::Acquire)
            },
            None,
        );
        assert_eq!(got, Parked::Ready, "a park without a deadline ends only when ready");
        assert!(checks >= 3, "it went back to sleep after the stray wakes: {checks} checks");
        let _ = waker.join().unwrap();
    }
}
