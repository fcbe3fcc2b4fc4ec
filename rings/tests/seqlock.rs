//! The slot commit protocol on real tensor-pool layouts: conformance items 9-27 of
//! specs/tensor-pool.md §8, the reader's drop accounting, and a writer-lapping stress test.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use corelane_rings::region::{HeapRegion, Region};
use corelane_rings::seqlock::{
    DropReason, Late, Liveness, Poll, Polled, PoolSpec, Publisher, SeqSlot, Stream, StreamError,
    StreamSpec, Subscriber, TooLarge,
};
use corelane_rings::shm::{
    self, Dtype, InvalidHeader, MajorOrder, ProgressUnit, SlotHeader, SuperblockError,
    SuperblockField, TensorHeader,
};
use zerocopy::IntoBytes;

const STRIDE: u32 = 128;
const EPOCH: u64 = 3;

/// The files of one stream, laid out as the driver would.
struct Files {
    header: HeapRegion,
    pools: Vec<HeapRegion>,
    spec: StreamSpec,
}

impl Files {
    /// A new publisher once `old` is gone (one writer per ring).
    fn publisher_after_drop(&self, old: Publisher<&HeapRegion>) -> Publisher<&HeapRegion> {
        let next = old.next_seq();
        drop(old);
        let mut p = self.publisher();
        for _ in 0..next {
            let claim = p.claim(0).unwrap();
            claim.finish(bytes_tensor(1), 0, 0).commit();
        }
        p
    }

    /// A header ring of `nslots` and pools `(pool_id, stride)`.
    fn new(nslots: u32, pools: &[(u16, u32)]) -> Self {
        let header = HeapRegion::new(shm::header_ring_len(nslots) as usize);
        let spec = StreamSpec {
            epoch: EPOCH,
            stream_id: 10_000,
            nslots,
            pools: pools
                .iter()
                .map(|&(pool_id, stride_bytes)| PoolSpec { pool_id, stride_bytes })
                .collect(),
        };
        let pools: Vec<HeapRegion> = pools
            .iter()
            .map(|&(_, stride)| HeapRegion::new(shm::payload_pool_len(nslots, stride) as usize))
            .collect();
        Stream::create(&spec, &header, pools.iter().collect(), 4242, 1_000).unwrap();
        Self { header, pools, spec }
    }

    fn stream(&self) -> Stream<&HeapRegion> {
        Stream::open(&self.spec, &self.header, self.pools.iter().collect()).unwrap()
    }

    /// The header slot that carries `seq`, as a hostile or buggy process sees it: the test
    /// writes through it on purpose, bypassing the one `Publisher` a ring may have.
    fn raw_slot(&self, seq: u64) -> SeqSlot<'_> {
        let index = (seq & u64::from(self.spec.nslots - 1)) as usize;
        let offset = shm::SUPERBLOCK_BYTES + index * shm::SLOT_BYTES;
        // SAFETY: the slot lies inside the header region (64 + nslots * 256 bytes), 8-aligned,
        // and every access to it, here and in the crate, is a relaxed or stronger AtomicU64.
        let words = unsafe {
            std::slice::from_raw_parts(
                self.header.as_ptr().add(offset).cast::<std::sync::atomic::AtomicU64>(),
                shm::SLOT_BYTES / 8,
            )
        };
        SeqSlot::new(words)
    }

    fn publisher(&self) -> Publisher<&HeapRegion> {
        Publisher::new(self.stream()).unwrap()
    }

    fn subscriber(&self) -> Subscriber<&HeapRegion> {
        Subscriber::new(self.stream())
    }

    fn header_bytes(&self) -> &[u8] {
        // SAFETY: tests read the region only while no thread writes it.
        unsafe { std::slice::from_raw_parts(self.header.as_ptr(), self.header.len()) }
    }

    fn pool_bytes(&self, i: usize) -> &[u8] {
        let r = &self.pools[i];
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(r.as_ptr(), r.len()) }
    }
}

fn bytes_tensor(len: i32) -> TensorHeader {
    TensorHeader::new(Dtype::Uint8, MajorOrder::Row, &[len.max(1)], &[], ProgressUnit::None, 0)
        .unwrap()
}

/// Publishes one frame whose payload bytes all equal `seq % 256`; returns its seq.
fn publish(publisher: &mut Publisher<&HeapRegion>, len: u32) -> u64 {
    let mut claim = publisher.claim(len).unwrap();
    let seq = claim.seq();
    claim.write_payload(&vec![seq as u8; len as usize]);
    claim.finish(bytes_tensor(len as i32), seq, 7).commit()
}

/// Writes a raw 256-byte slot image for `seq` under the seqlock, as a hostile or buggy
/// producer could.
fn commit_raw(files: &Files, seq: u64, image: &SlotHeader) {
    let mut slot = files.raw_slot(seq);
    let claimed = slot.claim(seq);
    for (word, bytes) in claimed.words().iter().zip(image.as_bytes()[8..].chunks_exact(8)) {
        word.store(u64::from_le_bytes(bytes.try_into().unwrap()), Ordering::Relaxed);
    }
    claimed.commit();
}

#[test]
fn a_committed_frame_reads_back_exactly() {
    let stream = Files::new(8, &[(1, STRIDE)]);
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
    let stream = Files::new(4, &[(1, STRIDE)]);
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
    let stream = Files::new(4, &[(1, STRIDE)]);
    let mut sub = stream.subscriber();
    let mut out = [0u8; STRIDE as usize];

    let mut slot = stream.raw_slot(0);
    let claimed = slot.claim(0);
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
    let stream = Files::new(1, &[(1, STRIDE)]);
    let mut publisher = stream.publisher();
    publish(&mut publisher, 8);
    let result = stream.raw_slot(0).read(0, |_words| {
        // The writer laps us in the middle of the copy.
        stream.raw_slot(1).claim(1).commit();
    });
    assert_eq!(result, Err(Late::Torn));
}

#[test]
fn conformance_13_to_19_invalid_headers_are_dropped_and_counted_by_reason() {
    let stream = Files::new(4, &[(1, STRIDE)]);
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
        commit_raw(&stream, seq, &image);
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
    let stream = Files::new(4, &[(1, STRIDE)]);
    let mut publisher = stream.publisher();
    let mut sub = stream.subscriber();
    publish(&mut publisher, 0);
    let frame = sub.read(0, &mut []).unwrap();
    assert_eq!(frame.payload_len, 0);
}

#[test]
fn conformance_23_smallest_pool_that_fits_and_no_commit_when_none_does() {
    let stream = Files::new(4, &[(2, 256), (1, 64), (3, 1024)]);
    let mut publisher = stream.publisher();
    let pool_of = |publisher: &mut Publisher<&HeapRegion>, len| {
        let claim = publisher.claim(len).unwrap();
        let id = claim.pool_id();
        claim.finish(bytes_tensor(len as i32), 0, 0).commit();
        id
    };
    assert_eq!(pool_of(&mut publisher, 64), 1);
    assert_eq!(pool_of(&mut publisher, 65), 2);
    assert_eq!(pool_of(&mut publisher, 1024), 3);
    let before = stream.raw_slot(3).seq_commit();
    assert_eq!(publisher.claim(1025).unwrap_err(), TooLarge { values_len: 1025 });
    assert_eq!(publisher.next_seq(), 3);
    assert_eq!(stream.raw_slot(3).seq_commit(), before, "nothing claimed");
}

#[test]
fn conformance_24_every_header_byte_is_rewritten() {
    let stream = Files::new(1, &[(1, STRIDE)]);
    let mut garbage = SlotHeader::new(8, 0, 1, 0, 0, bytes_tensor(8));
    garbage.pad = [0xAB; 26];
    garbage.tensor.dims = [zerocopy::little_endian::I32::new(-1); 8];
    garbage.tensor.pad = [0xCD; 109];
    commit_raw(&stream, 0, &garbage);
    let mut publisher = stream.publisher();
    publish(&mut publisher, 8);
    let slot = &stream.header_bytes()[64..64 + 256];
    assert_eq!(&slot[34..60], &[0u8; 26], "slot pad zeroed");
    assert_eq!(&slot[83 + 4..115], &[0u8; 28], "dims past ndims zeroed");
    assert_eq!(&slot[147..256], &[0u8; 109], "tensor pad zeroed");
}

#[test]
fn conformance_26_descriptor_jumps_count_gaps() {
    let stream = Files::new(8, &[(1, STRIDE)]);
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
    let stream = Files::new(4, &[(1, STRIDE)]);
    let mut publisher = stream.publisher();
    let mut sub = stream.subscriber();
    publish(&mut publisher, 100);
    let mut out = [0u8; 99];
    assert_eq!(sub.read(0, &mut out).unwrap_err(), DropReason::BufferTooSmall { needed: 100 });
    assert_eq!(sub.stats().buffer_too_small, 1);
}

#[test]
fn poll_follows_the_writer_and_resyncs_when_lapped() {
    let stream = Files::new(4, &[(1, STRIDE)]);
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
    let mut slot = SeqSlot::new(&words);
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
    const FRAMES: u64 = if cfg!(miri) { 60 } else { 300_000 };
    let stream = Arc::new(Files::new(NSLOTS, &[(1, 64), (2, 512)]));
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

/// Descriptor seqs come from another process. One no `seq_commit` word can carry (2^63 or
/// more: the word holds 63 bits of seq) is refused and not followed, so it can neither alias
/// frame `seq - 2^63` nor stall polling; the largest carried seq is followed without overflow.
#[test]
fn descriptor_seqs_at_the_top_of_the_range_do_not_overflow() {
    let stream = Files::new(4, &[(1, STRIDE)]);
    let mut publisher = stream.publisher();
    publish(&mut publisher, 8);
    let mut sub = stream.subscriber();
    let mut out = [0u8; STRIDE as usize];
    for seq in [u64::MAX, 1 << 63] {
        assert_eq!(sub.read(seq, &mut out).unwrap_err(), DropReason::SeqOutOfRange { seq });
        assert_eq!(sub.read_with(seq, |_, _| ()).unwrap_err(), DropReason::SeqOutOfRange { seq });
    }
    assert_eq!(sub.stats().seq_out_of_range, 4);
    assert_eq!((sub.next_seq(), sub.stats().gap), (0, 0), "nothing followed");
    assert!(matches!(sub.poll(&mut out), Poll::Frame(f) if f.seq == 0), "polling goes on");
    let top = (1 << 63) - 1;
    assert!(sub.read(top, &mut out).is_err());
    assert_eq!(sub.next_seq(), 1 << 63);
    assert_eq!(sub.stats().gap, top - 1);
    assert!(matches!(sub.poll(&mut out), Poll::Empty), "2^63 would alias seq 0: nothing");
}

/// Defect: `Claimed::words` and `SlotClaim::payload_words` returned `&'a` borrows that outlived
/// the commit (so safe code could write after it), and two `Publisher`s could write one ring.
/// The lifetime half is a compile-fail doc test on `Claimed::words`; this is the second half.
#[test]
fn seqlock_claims_outlive_the_commit() {
    let files = Files::new(4, &[(1, STRIDE)]);
    let first = files.publisher();
    let second = Publisher::new(files.stream()).unwrap_err();
    assert_eq!(second, StreamError::WriterTaken { stream_id: 10_000 });
    assert_eq!(
        second.to_string(),
        "stream 10000: another publisher in this process writes its ring"
    );
    drop(first);
    let again = files.publisher();
    assert_eq!(again.next_seq(), 0, "a publisher can be made once the first is gone");
    let stream = again.into_stream();
    assert!(Publisher::new(stream).is_ok(), "into_stream releases the ring");
}

/// Defect: `Subscriber::new` checked neither each pool's nslots against the ring nor duplicate
/// pool ids, and a short pool indexed out of range (a panic).
#[test]
fn subscriber_panics_on_mismatched_pools() {
    let files = Files::new(8, &[(1, STRIDE)]);
    // A pool file laid out for 4 slots where the ring has 8.
    let short = HeapRegion::new(shm::payload_pool_len(4, STRIDE) as usize);
    let short_spec = StreamSpec { nslots: 4, ..files.spec.clone() };
    Stream::create(
        &short_spec,
        &HeapRegion::new(shm::header_ring_len(4) as usize),
        vec![&short],
        1,
        1,
    )
    .unwrap();
    let err = Stream::open(&files.spec, &files.header, vec![&short]).unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::Superblock {
                error: SuperblockError::Mismatch {
                    field: SuperblockField::Nslots,
                    expected: 8,
                    seen: 4
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "pool 1: superblock nslots expected 8, seen 4");
    // Duplicate pool ids.
    let mut dup = files.spec.clone();
    dup.pools.push(PoolSpec { pool_id: 1, stride_bytes: 256 });
    let err =
        Stream::open(&dup, &files.header, vec![&files.pools[0], &files.pools[0]]).unwrap_err();
    assert_eq!(err.to_string(), "pool id 1 appears twice in one stream");
    // A pool region shorter than its own superblock says.
    let truncated = HeapRegion::new(shm::payload_pool_len(8, STRIDE) as usize - 64);
    let sb = shm::Superblock::payload_pool(EPOCH, 10_000, 1, 8, STRIDE, 1, 1);
    // SAFETY: the region is fresh and used by this thread only.
    unsafe { std::ptr::copy_nonoverlapping(sb.as_bytes().as_ptr(), truncated.as_ptr(), 64) };
    let err = Stream::open(&files.spec, &files.header, vec![&truncated]).unwrap_err();
    assert!(
        matches!(err, StreamError::Superblock { error: SuperblockError::FileTooShort { .. }, .. }),
        "{err:?}"
    );
    // Wrong count of regions, no pools.
    assert!(matches!(
        Stream::open(&files.spec, &files.header, vec![]),
        Err(StreamError::PoolCount { expected: 1, given: 0 })
    ));
    let none = StreamSpec { pools: vec![], ..files.spec.clone() };
    assert_eq!(Stream::open(&none, &files.header, vec![]).unwrap_err(), StreamError::NoPools);
}

/// Defect: `resync` jumped to the largest seq in any slot (~2^62 after one bad word), then
/// reported Empty forever. Now the jump is bounded and the subscriber follows the writer again.
#[test]
fn one_garbage_seq_commit_stalls_a_subscriber() {
    let files = Files::new(8, &[(1, STRIDE)]);
    let mut publisher = files.publisher();
    let mut sub = files.subscriber();
    let mut out = [0u8; STRIDE as usize];
    for _ in 0..5 {
        publish(&mut publisher, 8);
    }
    for expected in 0..5 {
        assert!(matches!(sub.poll(&mut out), Poll::Frame(f) if f.seq == expected));
    }
    // One garbage word, committed, in the slot the reader looks at next (seq 5).
    let garbage = 1u64 << 62;
    files.raw_slot(5).claim(garbage).commit();
    assert!(matches!(
        sub.poll(&mut out),
        Poll::Dropped(DropReason::Late(Late::Overwritten { .. }))
    ));
    // Slots 0..=4 confirm seq 4 as the newest: resume at the oldest seq that can still be in
    // the 8 slots, past ours (6), not at the garbage (~2^62).
    assert_eq!(sub.next_seq(), 6, "jumped to {}", sub.next_seq());
    assert_eq!(sub.stats().resyncs, 1);
    // The writer carries on; the reader gets every frame from where it resumed.
    let resumed = sub.next_seq();
    let mut got = Vec::new();
    for _ in 5..40 {
        publish(&mut publisher, 8);
        while let Poll::Frame(f) = sub.poll(&mut out) {
            got.push(f.seq);
        }
    }
    assert_eq!(got, (resumed..40).collect::<Vec<_>>(), "the subscriber follows the writer again");
    assert_eq!(got.len(), 34);
}

/// Without any confirmed frame (a fresh ring with one garbage word in the reader's slot), a
/// resync steps over that slot only: never ahead of a writer that may be just behind.
#[test]
fn a_resync_with_nothing_confirmed_steps_over_one_slot() {
    let files = Files::new(8, &[(1, STRIDE)]);
    let mut sub = files.subscriber();
    let mut out = [0u8; STRIDE as usize];
    files.raw_slot(0).claim(1 << 40).commit(); // garbage, index-consistent, unconfirmed
    assert!(matches!(sub.poll(&mut out), Poll::Dropped(_)));
    assert_eq!(sub.next_seq(), 1);
    let mut publisher = files.publisher();
    publish(&mut publisher, 8); // seq 0, overwriting the garbage
    publish(&mut publisher, 8); // seq 1
    assert!(matches!(sub.poll(&mut out), Poll::Frame(f) if f.seq == 1));
}

/// A committed seq in a slot it does not map to is not "newest", even if the slot of the seq
/// before it confirms it.
#[test]
fn join_ignores_a_seq_in_the_wrong_slot() {
    let files = Files::new(8, &[(1, STRIDE)]);
    files.raw_slot(19).claim(19).commit(); // slot 3: right
    let mut wrong = files.raw_slot(6); // slot 6 holds 20, which maps to slot 4
    wrong.claim(20).commit();
    assert_eq!(files.subscriber().join_newest(), None);
}

/// Defect (review): `Stream::create` over files of an earlier epoch rewrote only the
/// superblocks, and the old epoch's frames were served (and joined) as the new one's.
#[test]
fn a_stream_laid_out_again_serves_nothing_of_the_previous_epoch() {
    let files = Files::new(4, &[(1, STRIDE)]);
    {
        let mut old = files.publisher();
        for _ in 0..100 {
            publish(&mut old, 8);
        }
    }
    let next = StreamSpec { epoch: EPOCH + 1, ..files.spec.clone() };
    Stream::create(&next, &files.header, files.pools.iter().collect(), 4242, 2_000).unwrap();
    let open = || Stream::open(&next, &files.header, files.pools.iter().collect()).unwrap();
    let mut sub = Subscriber::new(open());
    assert_eq!(sub.join_newest(), None, "no frame of epoch {EPOCH} is joined");
    let mut out = [0u8; STRIDE as usize];
    assert!(matches!(sub.poll(&mut out), Poll::Empty));
    let mut new = Publisher::new(open()).unwrap();
    publish(&mut new, 8);
    assert!(matches!(sub.poll(&mut out), Poll::Frame(f) if f.seq == 0));
}

#[test]
fn a_long_lap_is_caught_up_in_bounded_steps() {
    let files = Files::new(4, &[(1, STRIDE)]);
    let mut publisher = files.publisher();
    let mut sub = files.subscriber().with_max_gap(8);
    let mut out = [0u8; STRIDE as usize];
    for _ in 0..100 {
        publish(&mut publisher, 8);
    }
    let mut seen = Vec::new();
    for _ in 0..100 {
        match sub.poll(&mut out) {
            Poll::Frame(f) => seen.push(f.seq),
            Poll::Empty => break,
            Poll::Dropped(_) => {}
        }
    }
    assert_eq!(seen, [96, 97, 98, 99], "the oldest frames still in the ring, then the newest");
    assert_eq!(sub.stats().gap, 96);
    assert!(sub.stats().resyncs >= 96 / 8, "each jump at most max_gap: {}", sub.stats().resyncs);
}

#[test]
fn join_newest_starts_at_the_newest_frame_without_counting_history() {
    let files = Files::new(8, &[(1, STRIDE)]);
    let mut fresh = files.subscriber();
    assert_eq!(fresh.join_newest(), None, "nothing committed yet");
    let mut publisher = files.publisher();
    for _ in 0..20 {
        publish(&mut publisher, 8);
    }
    let mut sub = files.subscriber();
    assert_eq!(sub.join_newest(), Some(19));
    let mut out = [0u8; STRIDE as usize];
    assert!(matches!(sub.poll(&mut out), Poll::Frame(f) if f.seq == 19 && out[0] == 19));
    assert!(matches!(sub.poll(&mut out), Poll::Empty));
    publish(&mut publisher, 8);
    assert!(matches!(sub.poll(&mut out), Poll::Frame(f) if f.seq == 20));
    assert_eq!(sub.stats().gap, 0);
    // A lone garbage word in a fresh ring is not "newest": its neighbour does not confirm it.
    let other = Files::new(8, &[(1, STRIDE)]);
    other.raw_slot(5).claim(1 << 40 | 5).commit();
    assert_eq!(other.subscriber().join_newest(), None);
}

#[test]
fn descriptors_of_another_epoch_are_dropped() {
    let files = Files::new(4, &[(1, STRIDE)]);
    let mut publisher = files.publisher();
    publish(&mut publisher, 8);
    let mut sub = files.subscriber();
    let mut out = [0u8; STRIDE as usize];
    assert_eq!(
        sub.read_descriptor(EPOCH + 1, 0, &mut out).unwrap_err(),
        DropReason::Epoch { mapped: EPOCH, seen: EPOCH + 1 }
    );
    assert_eq!(sub.stats().epoch_mismatch, 1);
    assert_eq!(sub.read_descriptor(EPOCH, 0, &mut out).unwrap().seq, 0);
    assert_eq!(sub.stream().epoch(), EPOCH);
}

#[test]
fn read_in_place_returns_the_result_only_if_the_frame_survived() {
    let files = Files::new(4, &[(1, 4096)]);
    let mut publisher = files.publisher();
    let mut claim = publisher.claim(3000).unwrap();
    // A decoder writing row by row, in place.
    for row in 0..30 {
        claim.write_at(row * 100, &[row as u8; 100]);
    }
    claim.finish(bytes_tensor(3000), 0, 0).commit();
    let mut sub = files.subscriber();
    let (frame, sum) = sub
        .read_with(0, |frame, view| {
            assert_eq!(view.len(), frame.payload_len);
            let mut row = [0u8; 100];
            (0..30)
                .map(|r| {
                    assert_eq!(view.copy_to(r * 100, &mut row), 100);
                    row.iter().map(|&b| u64::from(b)).sum::<u64>()
                })
                .sum::<u64>()
        })
        .unwrap();
    assert_eq!(frame.payload_len, 3000);
    assert_eq!(sum, (0..30u64).map(|r| r * 100).sum());
    // Offsets near and past the end copy what is there, never panic.
    let counts = sub
        .read_with(0, |_, view| {
            [
                view.copy_to(2997, &mut [0; 8]),
                view.copy_to(3000, &mut [0; 8]),
                view.copy_to(9000, &mut [0; 8]),
            ]
        })
        .unwrap()
        .1;
    assert_eq!(counts, [3, 0, 0]);
    // The writer laps the slot while the reader is using it: the result is thrown away.
    let err = sub
        .read_with(0, |_, _| {
            let _ = files.raw_slot(0).claim(4);
            "inference result"
        })
        .unwrap_err();
    assert_eq!(err, DropReason::Late(Late::Torn));
    assert_eq!(sub.stats().late, 1);
    // Polling in place works the same way.
    let mut sub = files.subscriber();
    let mut publisher = files.publisher_after_drop(publisher);
    publisher
        .claim(8)
        .map(|mut c| {
            c.write_payload(&[9; 8]);
            c.finish(bytes_tensor(8), 0, 0).commit()
        })
        .unwrap();
    sub.seek(1);
    match sub.poll_with(|_, view| {
        let mut b = [0u8; 8];
        view.copy_to(0, &mut b);
        b
    }) {
        Polled::Frame(f, bytes) => assert_eq!((f.seq, bytes), (1, [9; 8])),
        other => panic!("expected frame 1, got {other:?}"),
    }
}

#[test]
fn liveness_follows_the_heartbeat_and_the_owner() {
    let files = Files::new(4, &[(1, STRIDE)]);
    let stream = files.stream();
    assert_eq!(stream.activity_timestamp_ns(), 1_000);
    assert_eq!(stream.liveness(2_000, 5_000), Liveness::Live);
    assert_eq!(stream.liveness(10_000, 5_000), Liveness::Stale { age_ns: 9_000 });
    assert!(stream.touch(9_000));
    assert_eq!(stream.superblock().activity_timestamp_ns.get(), 9_000);
    assert_eq!(stream.liveness(10_000, 5_000), Liveness::Live);
    // Another process re-creates the file for itself: pid changes.
    let spec = files.spec.clone();
    Stream::create(&spec, &files.header, files.pools.iter().collect(), 7, 9_500).unwrap();
    assert_eq!(stream.liveness(10_000, 5_000), Liveness::PidChanged { was: 4242, now: 7 });
    // Or for the next epoch, in place: the mapping no longer matches.
    let next = StreamSpec { epoch: EPOCH + 1, ..spec };
    Stream::create(&next, &files.header, files.pools.iter().collect(), 4242, 9_500).unwrap();
    assert!(matches!(
        stream.liveness(10_000, 5_000),
        Liveness::Replaced(SuperblockError::Mismatch { field: SuperblockField::Epoch, .. })
    ));
}

/// A region that says it is read-only (as a consumer's `PROT_READ` mapping does); its memory
/// here is a heap region, so a write the crate made anyway would not crash the test, but the
/// refusal is what is checked.
struct ReadOnly<'a>(&'a HeapRegion);

// SAFETY: forwards to a HeapRegion, which is valid for reads and writes of its length.
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

#[test]
fn a_read_only_mapping_reads_frames_and_refuses_every_write() {
    let files = Files::new(4, &[(1, STRIDE)]);
    let mut publisher = files.publisher();
    publish(&mut publisher, 16);
    let before = files.header_bytes().to_vec();
    let ro = || ReadOnly(&files.header);
    let stream =
        Stream::open(&files.spec, ro(), files.pools.iter().map(ReadOnly).collect()).unwrap();
    assert!(!stream.touch(99), "touch writes nothing on a read-only mapping");
    let mut subscriber = Subscriber::new(stream);
    assert!(subscriber.ready());
    let mut out = [0u8; STRIDE as usize];
    let Poll::Frame(frame) = subscriber.poll(&mut out) else { panic!("the frame") };
    assert_eq!((frame.seq, frame.payload_len), (0, 16));
    assert!(!subscriber.ready(), "nothing more committed");
    let stream =
        Stream::open(&files.spec, ro(), files.pools.iter().map(ReadOnly).collect()).unwrap();
    assert!(matches!(Publisher::new(stream), Err(StreamError::ReadOnly { .. })));
    let created =
        Stream::create(&files.spec, ro(), files.pools.iter().map(ReadOnly).collect(), 1, 1);
    assert!(matches!(created, Err(StreamError::ReadOnly { .. })));
    assert_eq!(files.header_bytes(), &before[..], "no byte of the ring changed");
    let ring = corelane_rings::spsc::shm::ShmProducer::<u64, _>::create(ro(), 4);
    assert_eq!(ring.err(), Some(corelane_rings::spsc::shm::RegionError::ReadOnly));
}
