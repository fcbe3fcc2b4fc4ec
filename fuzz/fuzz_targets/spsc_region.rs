//! Arbitrary bytes as a shared-memory SPSC region written by a hostile peer: attaching must
//! fail with an error or succeed, and then every operation must stay inside the region (the
//! region is exactly as long as the bytes, so an overrun is a crash under the sanitizer), and
//! draining to empty must end: within one lap of records, or at a corruption verdict.
#![no_main]

use std::sync::Arc;

use corelane_rings::region::{HeapRegion, Region};
use corelane_rings::spsc::shm::{ShmConsumer, ShmPopError, ShmProducer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // Regions are 64-aligned and a whole number of words, like a mapping.
    let region = Arc::new(HeapRegion::new(data.len().next_multiple_of(8)));
    // SAFETY: the region was just allocated with at least data.len() bytes and nobody else
    // uses it yet.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), region.as_ptr(), data.len()) };
    let mut out = [[0u8; 24]; 7];
    if let Ok(mut rx) = ShmConsumer::<[u8; 24], _>::attach(region.clone()) {
        let capacity = rx.capacity();
        let _ = rx.pop();
        let _ = rx.pop_slice(&mut out);
        let _ = rx.len();
        let _ = (rx.is_abandoned(), rx.peer(), rx.relaid());
        // Drain to empty: nobody writes concurrently, so at most one lap of records.
        let mut taken = 0usize;
        loop {
            match rx.drain(5, |_| taken += 1) {
                Ok(0) | Err(_) => break,
                Ok(_) => assert!(taken <= capacity, "drained {taken} records from {capacity} slots"),
            }
        }
        loop {
            match rx.pop() {
                Ok(_) => {
                    taken += 1;
                    assert!(taken <= capacity, "popped {taken} records from {capacity} slots");
                }
                Err(ShmPopError::Empty | ShmPopError::Corrupt(_)) => break,
            }
        }
    }
    if let Ok(mut tx) = ShmProducer::<[u8; 24], _>::attach(region.clone()) {
        let _ = tx.push([1; 24]);
        let _ = tx.push_slice(&out);
        let _ = tx.slots();
        let _ = tx.notify();
    }
});
