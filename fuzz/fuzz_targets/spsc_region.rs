//! A shared-memory SPSC ring that a hostile peer scribbled on: the target lays out a real
//! ring (so the fuzzer gets past `attach`), pushes some records, then overwrites the words
//! the input names with the values it gives (positions, role words, header fields, slots, the
//! wait word), or, for inputs that start with 0xFF, the raw bytes of the whole region. Then:
//! attaching fails with an error or succeeds, every operation stays inside the region (exactly
//! as long as it must be, so an overrun is a crash under the sanitizer), and draining to
//! empty ends within one lap of records or at a corruption verdict.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use corelane_rings::region::{HeapRegion, Region};
use corelane_rings::spsc::shm::{region_len, ShmConsumer, ShmPopError, ShmProducer};
use libfuzzer_sys::fuzz_target;

type Rec = [u8; 24];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let capacity = 1usize << (mode & 3); // 1..=8 slots
    let len = region_len::<Rec>(capacity).expect("small");
    let region = Arc::new(HeapRegion::new(len));
    let words = || {
        // SAFETY: the region is `len` bytes (a multiple of 8), 64-aligned, and everything that
        // touches it (the ring, and these stores standing in for the peer) is AtomicU64.
        unsafe { std::slice::from_raw_parts(region.as_ptr().cast::<AtomicU64>(), len / 8) }
    };
    if mode == 0xFF {
        for (i, chunk) in rest.chunks(8).take(len / 8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            words()[i].store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
    } else {
        let mut tx = ShmProducer::<Rec, _>::create(region.clone(), capacity as u64).unwrap();
        for i in 0..(mode >> 2) % 9 {
            let _ = tx.push([i; 24]);
        }
        drop(tx); // detached: the fuzzer may attach as either end
                  // (word index, value) pairs: 1 byte of index, 8 of value.
        for pair in rest.chunks_exact(9) {
            let index = usize::from(pair[0]) % (len / 8);
            let value = u64::from_le_bytes(pair[1..].try_into().unwrap());
            words()[index].store(value, Ordering::Relaxed);
        }
    }
    let mut out = [[0u8; 24]; 7];
    if let Ok(mut rx) = ShmConsumer::<Rec, _>::attach(region.clone()) {
        let capacity = rx.capacity();
        assert!(capacity <= 8, "attach trusted a capacity the region cannot hold");
        let _ = rx.pop();
        let _ = rx.pop_slice(&mut out);
        let _ = (rx.len(), rx.is_abandoned(), rx.peer(), rx.relaid());
        let _ = rx.wait(Some(std::time::Duration::ZERO));
        // Drain to empty: nobody writes concurrently, so at most one lap of records.
        let mut taken = 0usize;
        loop {
            match rx.drain(3, |_| taken += 1) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    assert!(taken <= capacity, "drained {taken} records from {capacity} slots")
                }
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
    if let Ok(mut tx) = ShmProducer::<Rec, _>::attach(region.clone()) {
        let mut pushed = 0usize;
        while tx.push([1; 24]).is_ok() {
            pushed += 1;
            assert!(pushed <= tx.capacity(), "pushed {pushed} into {} slots", tx.capacity());
        }
        let _ = tx.push_slice(&out);
        let _ = tx.slots();
        let _ = tx.notify();
    }
});
