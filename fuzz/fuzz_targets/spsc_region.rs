//! Arbitrary bytes as a shared-memory SPSC region written by a hostile peer: attaching must
//! fail with an error or succeed, and then every operation must stay inside the region (the
//! region is exactly as long as the bytes, so an overrun is a crash under the sanitizer).
#![no_main]

use std::sync::Arc;

use corelane_rings::region::{HeapRegion, Region};
use corelane_rings::spsc::shm::{ShmConsumer, ShmProducer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let region = Arc::new(HeapRegion::new(data.len()));
    // SAFETY: the region was just allocated with data.len() bytes and nobody else uses it yet.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), region.as_ptr(), data.len()) };
    let mut out = [[0u8; 24]; 7];
    if let Ok(mut rx) = ShmConsumer::<[u8; 24], _>::attach(region.clone()) {
        let _ = rx.pop();
        let _ = rx.pop_slice(&mut out);
        let _ = rx.len();
        let _ = rx.is_abandoned();
    }
    if let Ok(mut tx) = ShmProducer::<[u8; 24], _>::attach(region.clone()) {
        let _ = tx.push([1; 24]);
        let _ = tx.push_slice(&out);
        let _ = tx.slots();
    }
});
