//! Arbitrary bytes as a header ring and payload pool written by a hostile producer: opening
//! the stream checks the superblocks; every read (copy, in place, descriptor, poll, join) must
//! drop or accept each slot without panicking, never report a payload longer than the buffer
//! it was given, and polling must end.
#![no_main]

use corelane_rings::region::{HeapRegion, Region};
use corelane_rings::seqlock::{Poll, PoolSpec, Stream, StreamSpec, Subscriber};
use corelane_rings::shm;
use libfuzzer_sys::fuzz_target;

const NSLOTS: u32 = 4;
const STRIDE: u32 = 128;

fuzz_target!(|data: &[u8]| {
    let spec = StreamSpec {
        epoch: 1,
        stream_id: 7,
        nslots: NSLOTS,
        pools: vec![PoolSpec { pool_id: 1, stride_bytes: STRIDE }],
    };
    let header = HeapRegion::new(shm::header_ring_len(NSLOTS) as usize);
    let pool = HeapRegion::new(shm::payload_pool_len(NSLOTS, STRIDE) as usize);
    // Valid superblocks first (the fuzzer rarely finds them), then the input over the slots;
    // input bit 0 of the first byte keeps its own superblocks instead.
    Stream::create(&spec, &header, vec![&pool], 1, 0).expect("sized for the spec");
    let keep_input_superblocks = data.first().is_some_and(|b| b & 1 == 1);
    let skip = if keep_input_superblocks { 0 } else { shm::SUPERBLOCK_BYTES };
    let n = data.len().min(header.len() - skip);
    // SAFETY: both regions are fresh allocations of the lengths copied, used by this thread only.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), header.as_ptr().add(skip), n);
        let rest = &data[n..];
        let m = rest.len().min(pool.len() - skip);
        std::ptr::copy_nonoverlapping(rest.as_ptr(), pool.as_ptr().add(skip), m);
    }
    let Ok(stream) = Stream::open(&spec, &header, vec![&pool]) else { return };
    // Descriptor seqs also come from outside: take them from the input, extremes included.
    let word = |i: usize| {
        let mut b = [0u8; 8];
        for (j, byte) in b.iter_mut().enumerate() {
            *byte = data.get(i * 8 + j).copied().unwrap_or(0);
        }
        u64::from_le_bytes(b)
    };
    let mut sub = Subscriber::new(stream).with_max_gap(1 + word(9) % 300);
    let _ = sub.join_newest();
    let mut out = [0u8; 100];
    for i in 0..8 {
        let seq = if i % 2 == 0 { word(i + 1) } else { u64::MAX - word(i + 1) % 3 };
        if let Ok(frame) = sub.read(seq, &mut out) {
            assert!(frame.payload_len <= out.len());
        }
        let _ = sub.read_descriptor(word(0), seq, &mut out);
        if let Ok((frame, n)) = sub.read_with(seq, |_, view| view.copy_to(0, &mut [0u8; 64])) {
            assert!(n <= frame.payload_len);
        }
        if let Poll::Frame(frame) = sub.poll(&mut out) {
            assert!(frame.payload_len <= out.len());
        }
    }
    let _ = sub.stream().liveness(word(10), word(11));
    let _ = sub.stream().superblock();
});
