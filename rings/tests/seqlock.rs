//! The slot commit protocol on real tensor-pool layouts: conformance items 9-27 of
//! specs/tensor-pool.md §8, the reader's drop accounting, and a writer-lapping stress test.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use corelane_rings::region::{HeapRegion, Region};
use corelane_rings::seqlock::{
    DropReason, HeaderRing, Late, PayloadPool, Poll, Publisher, SeqSlot, Subscriber, TooLarge,
};
use corelane_rings::shm::{
    self, Dtype, InvalidHeader, MajorOrder, ProgressUnit, SlotHeader, TensorHeader,
};
use zerocopy::IntoBytes;

const STRIDE: u32 = 128;

struct Stream {
    header: HeapRegion,
    pools: Vec<(u16, u32, HeapRegion)>,
    nslots: u32,
}

impl Stream {
    /// A header ring of `nslots` and pools `(pool_id, stride)`.
    fn new(nslots: u32, pools: &[(u16, u32)]) -> Self {
        let header = HeapRegion::new(shm::header_ring_len(nslots) as usize);
        let pools = pools
            .iter()
            .map(|&(id, stride)| {
                (id, stride, HeapRegion::new(shm::payload_pool_len(nslots, stride) as usize))
            })
            .collect();
        Self { header, pools, nslots }
    }

    fn ring(&self) -> HeaderRing<'_> {
        HeaderRing::from_region(&self.header, self.nslots).unwrap()
    }

    fn pool_views(&self) -> Vec<PayloadPool<'_>> {
        self.pools
            .iter()
            .map(|(id, stride, r)| PayloadPool::from_region(r, *id, self.nslots, *stride).unwrap())
            .collect()
    }

    fn publisher(&self) -> Publisher<'_> {
        Publisher::new(self.ring(), self.pool_views()).unwrap()
    }

    fn subscriber(&self) -> Subscriber<'_> {
        Subscriber::new(self.ring(), self.pool_views(), 0)
    }

    fn header_bytes(&self) -> &[u8] {
        // SAFETY: tests read the region only while no thread writes it.
        unsafe { std::slice::from_raw_parts(self.header.as_ptr(), self.header.len()) }
    }

    fn pool_bytes(&self, i: usize) -> &[u8] {
        let r = &self.pools[i].2;
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(r.as_ptr(), r.len()) }
    }
}

fn bytes_tensor(len: i32) -> TensorHeader {
    TensorHeader::new(Dtype::Uint8, MajorOrder::Row, &[len.max(1)], &[], ProgressUnit::None, 0)
        .unwrap()
}

/// Publishes one frame whose payload bytes all equal `seq % 256`; returns its seq.
fn publish(publisher: &mut Publisher<'_>, len: u32) -> u64 {
    let mut claim = publisher.claim(len).unwrap();
    let seq = claim.seq();
    claim.write_payload(&vec![seq as u8; len as usize]);
    claim.finish(bytes_tensor(len as i32), seq, 7).commit()
}

/// Writes a raw 256-byte slot image for `seq` under the seqlock, as a hostile or buggy
/// producer could.
fn commit_raw(ring: &HeaderRing<'_>, seq: u64, image: &SlotHeader) {
    let claimed = ring.slot(seq).claim(seq);
    for (word, bytes) in claimed.words().iter().zip(image.as_bytes()[8..].chunks_exact(8)) {
        word.store(u64::from_le_bytes(bytes.try_into().unwrap()), Ordering::Relaxed);
    }
    claimed.commit();
}

#[test]
fn a_committed_frame_reads_back_exactly() {
    let stream = Stream::new(8, &[(1, STRIDE)]);
    let mut publisher = stream.publisher();
    let mut sub = stream.subscriber();
    let mut claim = publisher.claim(5).unwrap();
    claim.write_payload(b"hello");
    let tensor =
        TensorHeader::new(Dtype::Uint8, MajorOrder::Row, &[5], &[1], ProgressUnit::None, 0)
            .unwrap();
    assert_eq!(claim.finish(tensor, 1234, 9).commit(), 0);

    let mut out = [0u8; STRIDE as usize];
    let frame = sub.read(0, &mut out).unwrap();
    assert_eq!(&out[..frame.payload_len], b"hello");
    assert_eq!(frame.seq, 0);
    assert_eq!(frame.tensor.timestamp_ns, 1234);
    assert_eq!(frame.tensor.meta_version, 9);
    assert_eq!(frame.tensor.pool_id, 1);
    assert_eq!(frame.tensor.shape.dims[0], 5);
    assert_eq!(sub.stats().accepted, 1);
}

#[test]
fn conformance_9_seq_5_in_a_4_slot_ring_lands_in_slot_1() {
    let stream = Stream::new(4, &[(1, STRIDE)]);
    let mut publisher = stream.publisher();
    for _ in 0..6 {
        publish(&mut publisher, 16);
    }
    let slot1 = 64 + 256;
    let bytes = stream.header_bytes();
    assert_eq!(u64::from_le_bytes(bytes[slot1..slot1 + 8].try_into().unwrap()), 11);
    assert_eq!(u32::from_le_bytes(bytes[slot1 + 12..slot1 + 16].try_into().unwrap()), 1);
    let payload = 64 + STRIDE as usize;
    assert_eq!(&stream.pool_bytes(0)[payload..payload + 16], &[5u8; 16]);
}

#[test]
fn conformance_10_12_uncommitted_or_other_seq_is_late() {
    let stream = Stream::new(4, &[(1, STRIDE)]);
    let ring = stream.ring();
    let mut sub = stream.subscriber();
    let mut out = [0u8; STRIDE as usize];

    let claimed = ring.slot(0).claim(0);
    assert_eq!(sub.read(0, &mut out).unwrap_err(), DropReason::Late(Late::InProgress { found: 0 }));
    drop(claimed); // never committed: the slot stays unreadable

    let mut publisher = stream.publisher();
    assert_eq!(publish(&mut publisher, 8), 0, "an abandoned claim does not consume a seq");
    assert_eq!(sub.read(4, &mut out).unwrap_err(), DropReason::Late(Late::Stale { found: 0 }));
    for _ in 0..8 {
        publish(&mut publisher, 8);
    }
    assert_eq!(
        sub.read(1, &mut out).unwrap_err(),
        DropReason::Late(Late::Overwritten { found: 5 })
    );
    assert_eq!(sub.stats().late, 3);
}

#[test]
fn conformance_11_a_slot_changed_during_the_copy_is_torn() {
    let stream = Stream::new(1, &[(1, STRIDE)]);
    let mut publisher = stream.publisher();
    publish(&mut publisher, 8);
    let ring = stream.ring();
    let result = ring.slot(0).read(0, |_words| {
        // The writer laps us in the middle of the copy.
        ring.slot(1).claim(1).commit();
    });
    assert_eq!(result, Err(Late::Torn));
}

#[test]
fn conformance_13_to_19_invalid_headers_are_dropped_and_counted_by_reason() {
    let stream = Stream::new(4, &[(1, STRIDE)]);
    let ring = stream.ring();
    let mut sub = stream.subscriber();
    let mut out = [0u8; STRIDE as usize];
    let good = SlotHeader::new(8, 0, 1, 0, 0, bytes_tensor(8));

    type Case = (SlotHeader, fn(&InvalidHeader) -> bool);
    let mut cases: Vec<Case> = Vec::new();
    let mut h = good;
    h.payload_offset.set(64);
    cases.push((h, |r| matches!(r, InvalidHeader::PayloadOffset { seen: 64 })));
    let mut h = good;
    h.payload_slot.set(3);
    cases.push((h, |r| matches!(r, InvalidHeader::PayloadSlot { seen: 3, .. })));
    let mut h = good;
    h.pool_id.set(9);
    cases.push((h, |r| matches!(r, InvalidHeader::UnknownPool { seen: 9 })));
    let mut h = good;
    h.values_len_bytes.set(STRIDE + 1);
    cases.push((h, |r| matches!(r, InvalidHeader::ValuesLenTooLarge { .. })));
    let mut h = good;
    h.header_bytes_len.set(191);
    cases.push((h, |r| matches!(r, InvalidHeader::HeaderBytesLen { seen: 191 })));
    let mut h = good;
    h.tensor.message_header.schema_id.set(901);
    cases.push((h, |r| matches!(r, InvalidHeader::SchemaId { seen: 901 })));
    let mut h = good;
    h.tensor.ndims = 9;
    cases.push((h, |r| matches!(r, InvalidHeader::Ndims { seen: 9 })));
    let mut h = good;
    h.tensor.dtype.set(12);
    cases.push((h, |r| matches!(r, InvalidHeader::Dtype { seen: 12 })));

    for (i, (image, is_expected)) in cases.iter().enumerate() {
        let seq = i as u64;
        let mut image = *image;
        if !matches!(image.payload_slot.get(), 3) {
            image.payload_slot.set(shm::header_index(seq, 4));
        }
        commit_raw(&ring, seq, &image);
        match sub.read(seq, &mut out) {
            Err(DropReason::Invalid(reason)) => {
                assert!(is_expected(&reason), "case {i}: unexpected reason {reason:?}");
                assert_eq!(sub.stats().invalid(reason), 1, "case {i}: counted under its reason");
            }
            other => panic!("case {i}: expected an invalid-header drop, got {other:?}"),
        }
    }
    assert_eq!(sub.stats().invalid_total(), cases.len() as u64);
    assert_eq!(sub.stats().accepted + sub.stats().late, 0);
}

#[test]
fn conformance_22_zero_length_frames_are_accepted() {
    let stream = Stream::new(4, &[(1, STRIDE)]);
    let mut publisher = stream.publisher();
    let mut sub = stream.subscriber();
    publish(&mut publisher, 0);
    let frame = sub.read(0, &mut []).unwrap();
    assert_eq!(frame.payload_len, 0);
}

#[test]
fn conformance_23_smallest_pool_that_fits_and_no_commit_when_none_does() {
    let stream = Stream::new(4, &[(2, 256), (1, 64), (3, 1024)]);
    let mut publisher = stream.publisher();
    let pool_of = |publisher: &mut Publisher<'_>, len| {
        let claim = publisher.claim(len).unwrap();
        let id = claim.pool_id();
        claim.finish(bytes_tensor(len as i32), 0, 0).commit();
        id
    };
    assert_eq!(pool_of(&mut publisher, 64), 1);
    assert_eq!(pool_of(&mut publisher, 65), 2);
    assert_eq!(pool_of(&mut publisher, 1024), 3);
    let before = stream.ring().slot(3).seq_commit();
    assert_eq!(publisher.claim(1025).unwrap_err(), TooLarge { values_len: 1025 });
    assert_eq!(publisher.next_seq(), 3);
    assert_eq!(stream.ring().slot(3).seq_commit(), before, "nothing claimed");
}

#[test]
fn conformance_24_every_header_byte_is_rewritten() {
    let stream = Stream::new(1, &[(1, STRIDE)]);
    let ring = stream.ring();
    let mut garbage = SlotHeader::new(8, 0, 1, 0, 0, bytes_tensor(8));
    garbage.pad = [0xAB; 26];
    garbage.tensor.dims = [zerocopy::little_endian::I32::new(-1); 8];
    garbage.tensor.pad = [0xCD; 109];
    commit_raw(&ring, 0, &garbage);
    let mut publisher = stream.publisher();
    publish(&mut publisher, 8);
    let slot = &stream.header_bytes()[64..64 + 256];
    assert_eq!(&slot[34..60], &[0u8; 26], "slot pad zeroed");
    assert_eq!(&slot[83 + 4..115], &[0u8; 28], "dims past ndims zeroed");
    assert_eq!(&slot[147..256], &[0u8; 109], "tensor pad zeroed");
}

#[test]
fn conformance_26_descriptor_jumps_count_gaps() {
    let stream = Stream::new(8, &[(1, STRIDE)]);
    let mut publisher = stream.publisher();
    for _ in 0..6 {
        publish(&mut publisher, 8);
    }
    let mut sub = stream.subscriber();
    let mut out = [0u8; STRIDE as usize];
    sub.read(0, &mut out).unwrap();
    sub.read(3, &mut out).unwrap();
    assert_eq!(sub.stats().gap, 2);
    sub.read(2, &mut out).unwrap(); // a late descriptor: no new gap
    sub.read(5, &mut out).unwrap();
    assert_eq!(sub.stats().gap, 3);
    assert_eq!(sub.stats().accepted, 4);
}

#[test]
fn a_small_buffer_is_reported_not_overrun() {
    let stream = Stream::new(4, &[(1, STRIDE)]);
    let mut publisher = stream.publisher();
    let mut sub = stream.subscriber();
    publish(&mut publisher, 100);
    let mut out = [0u8; 99];
    assert_eq!(sub.read(0, &mut out).unwrap_err(), DropReason::BufferTooSmall { needed: 100 });
    assert_eq!(sub.stats().buffer_too_small, 1);
}

#[test]
fn poll_follows_the_writer_and_resyncs_when_lapped() {
    let stream = Stream::new(4, &[(1, STRIDE)]);
    let mut publisher = stream.publisher();
    let mut sub = stream.subscriber();
    let mut out = [0u8; STRIDE as usize];
    assert!(matches!(sub.poll(&mut out), Poll::Empty));
    publish(&mut publisher, 8);
    match sub.poll(&mut out) {
        Poll::Frame(f) => assert_eq!((f.seq, out[0]), (0, 0)),
        other => panic!("expected frame 0, got {other:?}"),
    }
    assert!(matches!(sub.poll(&mut out), Poll::Empty));
    // The writer publishes 1..=10 while we sleep: seqs 7..=10 survive in the 4 slots.
    for _ in 1..=10 {
        publish(&mut publisher, 8);
    }
    assert!(matches!(
        sub.poll(&mut out),
        Poll::Dropped(DropReason::Late(Late::Overwritten { .. }))
    ));
    assert_eq!(sub.stats().gap, 6, "seqs 1..=6 were overwritten");
    let mut seen = Vec::new();
    while let Poll::Frame(f) = sub.poll(&mut out) {
        assert_eq!(out[0], f.seq as u8);
        seen.push(f.seq);
    }
    assert_eq!(seen, [7, 8, 9, 10]);
    assert_eq!(sub.stats().accepted, 5);
}

#[test]
fn seq_slot_needs_its_commit_word() {
    let words: [std::sync::atomic::AtomicU64; 2] = Default::default();
    let slot = SeqSlot::new(&words);
    assert_eq!(
        slot.read(0, |_| ()),
        Err(Late::InProgress { found: 0 }),
        "zeroed: seq 0 uncommitted"
    );
    let _ = slot.claim(3).commit();
    assert_eq!(slot.seq_commit(), 7);
    assert!(std::panic::catch_unwind(|| SeqSlot::new(&[])).is_err());
}

/// Conformance 27: a writer lapping a small ring as fast as it can while readers poll. Every
/// accepted frame must be internally consistent: payload bytes all `seq % 256`, header
/// timestamp equal to seq, length as the writer chose for that seq.
#[test]
fn stress_no_torn_frame_ever_reaches_a_reader() {
    const NSLOTS: u32 = 4;
    const FRAMES: u64 = 300_000;
    let stream = Arc::new(Stream::new(NSLOTS, &[(1, 64), (2, 512)]));
    let len_of = |seq: u64| 1 + (seq * 37 % 511) as u32;
    let done = Arc::new(AtomicBool::new(false));

    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (stream, done) = (stream.clone(), done.clone());
            std::thread::spawn(move || {
                let mut sub = stream.subscriber();
                let mut out = vec![0u8; 512];
                let mut accepted = 0u64;
                while !done.load(Ordering::Acquire) {
                    if let Poll::Frame(f) = sub.poll(&mut out) {
                        let payload = &out[..f.payload_len];
                        assert_eq!(f.tensor.timestamp_ns, f.seq, "header from another frame");
                        assert_eq!(
                            f.payload_len as u32,
                            len_of(f.seq),
                            "length from another frame"
                        );
                        assert!(
                            payload.iter().all(|&b| b == f.seq as u8),
                            "torn payload for seq {}",
                            f.seq
                        );
                        accepted += 1;
                    }
                }
                (accepted, *sub.stats())
            })
        })
        .collect();

    let mut publisher = stream.publisher();
    let mut payload = vec![0u8; 512];
    for seq in 0..FRAMES {
        let len = len_of(seq);
        payload[..len as usize].fill(seq as u8);
        let mut claim = publisher.claim(len).unwrap();
        claim.write_payload(&payload[..len as usize]);
        claim.finish(bytes_tensor(len as i32), seq, 0).commit();
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        let (accepted, stats) = reader.join().unwrap();
        assert_eq!(stats.accepted, accepted);
        assert_eq!(stats.invalid_total(), 0, "a stable slot never fails validation");
        assert!(accepted > 0, "the reader saw no frame at all");
        eprintln!("reader: accepted {accepted}, late {}, gap {}", stats.late, stats.gap);
    }
}

#[test]
fn descriptor_seqs_at_the_top_of_the_range_do_not_overflow() {
    let stream = Stream::new(4, &[(1, STRIDE)]);
    let mut sub = stream.subscriber();
    let mut out = [0u8; STRIDE as usize];
    assert!(sub.read(u64::MAX, &mut out).is_err());
    assert!(sub.read(u64::MAX, &mut out).is_err());
    assert_eq!(sub.next_seq(), u64::MAX);
    assert_eq!(sub.stats().gap, u64::MAX);
    assert!(matches!(sub.poll(&mut out), Poll::Dropped(_) | Poll::Empty));
}
