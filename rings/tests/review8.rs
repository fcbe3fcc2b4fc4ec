//! Review of issue 8 (tensor pool): failing tests that show defects in the rings changes.
//! Each test states what it expects; it fails on the reviewed HEAD.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corelane_rings::region::{HeapRegion, Region};
use corelane_rings::seqlock::{WakeRegion, WAKE_FILE_BYTES};
use corelane_rings::wait::{Doorbell, Parked};

/// A region that says it is read-only (as `ReadOnlyMapping`, a `PROT_READ` mapping, does). Its
/// memory is a heap region, so a write the crate makes anyway does not fault here: the test
/// looks at the bytes instead.
struct ReadOnly<'a>(&'a HeapRegion);

// SAFETY: forwards to a HeapRegion, valid for reads and writes of its length.
unsafe impl Region for ReadOnly<'_> {
    fn as_ptr(&self) -> *mut u8 {
        self.0.as_ptr()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn read_only(&self) -> bool {
        true
    }
}

fn bytes(region: &HeapRegion) -> Vec<u8> {
    // SAFETY: the region is `len` bytes, and no other thread touches it in this test.
    unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len()).to_vec() }
}

/// `Region::read_only` promises "everything that would write refuses it", and
/// `mapping.rs` says "a safe call cannot store into a read-only page". `WakeRegion::open`
/// takes a read-only region, and its doorbell's `park` then does `fetch_add` on it: on a
/// real `ReadOnlyMapping` that is a SIGSEGV from safe code (and an RMW on read-only memory,
/// which Rust does not allow).
#[test]
fn review8_a_wake_region_refuses_a_read_only_mapping() {
    let heap = HeapRegion::new(WAKE_FILE_BYTES);
    let before = bytes(&heap);
    match WakeRegion::open(ReadOnly(&heap)) {
        Err(_) => {} // refused: what the read-only contract asks for
        Ok(wake) => {
            let parked = wake.doorbell().park(|| false, Some(Duration::from_millis(1)));
            assert_eq!(parked, Parked::TimedOut);
            let _ = wake.doorbell().ring();
            // A timed-out park leaves the count at 0 again, but it wrote twice meanwhile; the
            // region was accepted, which is the defect.
            assert_eq!(bytes(&heap), before);
            panic!("WakeRegion::open accepted a read-only region: park() writes `waiters` with fetch_add");
        }
    }
}

/// The Doorbell doc says a peer that shares the words "can only make wakers wake for nothing
/// or make waiters wake early ... never a lost ... publication". A peer (any consumer maps
/// `corelane.wake` read-write) that stores 0 into `waiters` makes the waker skip the wake, and
/// a parked waiter sleeps until its timeout although the publication happened.
#[test]
fn review8_a_peer_zeroing_waiters_does_not_delay_a_parked_waiter() {
    let words = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let flag = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (words, flag) = (words.clone(), flag.clone());
        std::thread::spawn(move || {
            let bell = Doorbell::new(&words[0], &words[1]);
            let start = Instant::now();
            // SYNC: pairs with the Release store of the publisher below.
            let r = bell.park(|| flag.load(Ordering::Acquire), Some(Duration::from_secs(3)));
            (r, start.elapsed())
        })
    };
    while words[0].load(Ordering::Relaxed) == 0 {
        std::thread::yield_now();
    }
    std::thread::sleep(Duration::from_millis(50)); // asleep in the futex now
                                                   // The hostile peer: one store into the shared word.
    words[0].store(0, Ordering::Relaxed);
    // The producer publishes and rings, as Claim::commit does.
    // SYNC: publication read by the waiter's Acquire load.
    flag.store(true, Ordering::Release);
    let rang = Doorbell::new(&words[0], &words[1]).ring();
    let (parked, took) = waiter.join().unwrap();
    assert_eq!(parked, Parked::Ready);
    assert!(
        took < Duration::from_millis(1_000),
        "the waiter slept {took:?} after the publication (ring made a wake: {rang}): a peer \
         suppressed the wake-up"
    );
}
