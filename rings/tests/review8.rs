//! Review of issue 8 (tensor pool): failing tests that show defects in the rings changes.
//! Each test states what it expects; it fails on the reviewed HEAD.
#![cfg(not(loom))]

use std::time::Duration;

use corelane_rings::region::{HeapRegion, Region};
use corelane_rings::seqlock::{WakeRegion, WAKE_FILE_BYTES};
use corelane_rings::wait::Parked;

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
