//! Arbitrary bytes as a header ring and payload pool written by a hostile producer: the
//! subscriber must drop or accept every slot without panicking, and never report a payload
//! longer than the buffer it was given.
#![no_main]

use corelane_rings::region::{HeapRegion, Region};
use corelane_rings::seqlock::{HeaderRing, PayloadPool, Poll, Subscriber};
use corelane_rings::shm;
use libfuzzer_sys::fuzz_target;

const NSLOTS: u32 = 4;
const STRIDE: u32 = 128;

fuzz_target!(|data: &[u8]| {
    let header = HeapRegion::new(shm::header_ring_len(NSLOTS) as usize);
    let pool = HeapRegion::new(shm::payload_pool_len(NSLOTS, STRIDE) as usize);
    let n = data.len().min(header.len());
    // SAFETY: both regions are fresh allocations of the lengths copied, used by this thread only.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), header.as_ptr(), n);
        let rest = &data[n..];
        std::ptr::copy_nonoverlapping(rest.as_ptr(), pool.as_ptr(), rest.len().min(pool.len()));
    }
    let ring = HeaderRing::from_region(&header, NSLOTS).expect("sized for NSLOTS");
    let pools = vec![PayloadPool::from_region(&pool, 1, NSLOTS, STRIDE).expect("sized")];
    // Descriptor seqs also come from outside: take them from the input, extremes included.
    let word = |i: usize| {
        let mut b = [0u8; 8];
        for (j, byte) in b.iter_mut().enumerate() {
            *byte = data.get(i * 8 + j).copied().unwrap_or(0);
        }
        u64::from_le_bytes(b)
    };
    let mut sub = Subscriber::new(ring, pools, word(0));
    let mut out = [0u8; 100];
    for i in 0..8 {
        let seq = if i % 2 == 0 { word(i + 1) } else { u64::MAX - word(i + 1) % 3 };
        if let Ok(frame) = sub.read(seq, &mut out) {
            assert!(frame.payload_len <= out.len());
        }
        if let Poll::Frame(frame) = sub.poll(&mut out) {
            assert!(frame.payload_len <= out.len());
        }
    }
});
