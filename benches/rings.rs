//! Single-thread costs of the ring primitives (criterion). Cross-core latency and throughput
//! are measured side by side with the peers by `cargo run --release -p corelane-perf -- spsc`.
//!
//! Run: `cargo bench --bench rings`

use std::hint::black_box;

use corelane_rings::region::HeapRegion;
use corelane_rings::seqlock::{HeaderRing, PayloadPool, Publisher, Subscriber};
use corelane_rings::shm::{self, Dtype, MajorOrder, ProgressUnit, TensorHeader};
use corelane_rings::spsc;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn spsc_push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc/push+pop");
    group.throughput(Throughput::Elements(1));
    let (mut tx, mut rx) = spsc::channel::<u64>(1024);
    group.bench_function("corelane", |b| {
        b.iter(|| {
            tx.push(black_box(7)).unwrap();
            black_box(rx.pop().unwrap())
        })
    });
    let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(1024);
    group.bench_function("rtrb", |b| {
        b.iter(|| {
            tx.push(black_box(7)).unwrap();
            black_box(rx.pop().unwrap())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("spsc/batch-32");
    group.throughput(Throughput::Elements(32));
    let items = [7u64; 32];
    let mut out = [0u64; 32];
    let (mut tx, mut rx) = spsc::channel::<u64>(1024);
    group.bench_function("corelane", |b| {
        b.iter(|| {
            assert_eq!(tx.push_slice(black_box(&items)), 32);
            assert_eq!(rx.pop_slice(&mut out), 32);
            black_box(&out);
        })
    });
    let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(1024);
    group.bench_function("rtrb", |b| {
        b.iter(|| {
            let chunk = tx.write_chunk_uninit(32).unwrap();
            assert_eq!(chunk.fill_from_iter(black_box(items).into_iter()), 32);
            let chunk = rx.read_chunk(32).unwrap();
            let (first, second) = chunk.as_slices();
            out[..first.len()].copy_from_slice(first);
            out[first.len()..].copy_from_slice(second);
            chunk.commit_all();
            black_box(&out);
        })
    });
    group.finish();
}

fn seqlock(c: &mut Criterion) {
    const NSLOTS: u32 = 1024;
    const STRIDE: u32 = 4096;
    let header = HeapRegion::new(shm::header_ring_len(NSLOTS) as usize);
    let pool = HeapRegion::new(shm::payload_pool_len(NSLOTS, STRIDE) as usize);
    let ring = || HeaderRing::from_region(&header, NSLOTS).unwrap();
    let pools = || vec![PayloadPool::from_region(&pool, 1, NSLOTS, STRIDE).unwrap()];
    let tensor =
        TensorHeader::new(Dtype::Float32, MajorOrder::Row, &[8, 8], &[], ProgressUnit::None, 0)
            .unwrap();
    let payload = [0x5au8; 256];

    let mut group = c.benchmark_group("seqlock");
    let mut publisher = Publisher::new(ring(), pools()).unwrap();
    group.bench_function("write-256B", |b| {
        b.iter(|| {
            let mut claim = publisher.claim(256).unwrap();
            claim.write_payload(black_box(&payload));
            black_box(claim.finish(tensor, 1, 0).commit())
        })
    });

    for (name, len) in [("read-header-only", 0u32), ("read-256B", 256)] {
        let mut publisher = Publisher::new(ring(), pools()).unwrap();
        let mut claim = publisher.claim(len).unwrap();
        claim.write_payload(&payload[..len as usize]);
        let seq = claim.finish(tensor, 1, 0).commit();
        let mut out = [0u8; 256];
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || Subscriber::new(ring(), pools(), seq),
                |sub| black_box(sub.read(black_box(seq), &mut out).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, spsc_push_pop, seqlock);
criterion_main!(benches);
