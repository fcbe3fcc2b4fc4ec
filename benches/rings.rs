//! Single-thread costs of the ring primitives (criterion). Cross-core latency and throughput
//! are measured side by side with the peers by `cargo run --release -p corelane-perf -- spsc`.
//!
//! Run: `cargo bench --bench rings`

use std::hint::black_box;

use std::sync::Arc;

use corelane_rings::region::HeapRegion;
use corelane_rings::seqlock::{PoolSpec, Publisher, Stream, StreamSpec, Subscriber};
use corelane_rings::shm::{self, Dtype, MajorOrder, ProgressUnit, TensorHeader};
use corelane_rings::spsc;
use corelane_rings::spsc::shm::{region_len, ShmConsumer, ShmProducer};
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

/// One stream's files on the heap: a header ring and one pool.
struct Files {
    header: HeapRegion,
    pool: HeapRegion,
    spec: StreamSpec,
}

impl Files {
    fn new(nslots: u32, stride: u32) -> Self {
        let spec = StreamSpec {
            epoch: 1,
            stream_id: 1,
            nslots,
            pools: vec![PoolSpec { pool_id: 1, stride_bytes: stride }],
        };
        let header = HeapRegion::new(shm::header_ring_len(nslots) as usize);
        let pool = HeapRegion::new(shm::payload_pool_len(nslots, stride) as usize);
        Stream::create(&spec, &header, vec![&pool], 1, 0).unwrap();
        Self { header, pool, spec }
    }

    fn stream(&self) -> Stream<&HeapRegion> {
        Stream::open(&self.spec, &self.header, vec![&self.pool]).unwrap()
    }
}

fn shm_push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc-shm/push+pop");
    group.throughput(Throughput::Elements(1));
    let region = Arc::new(HeapRegion::new(region_len::<[u64; 8]>(1024).unwrap()));
    let mut tx = ShmProducer::<[u64; 8], _>::create(region.clone(), 1024).unwrap();
    let mut rx = ShmConsumer::<[u64; 8], _>::attach(region).unwrap();
    group.bench_function("64B", |b| {
        b.iter(|| {
            tx.push(black_box([7; 8])).unwrap();
            black_box(rx.pop().unwrap())
        })
    });
    let items = [[7u64; 8]; 32];
    group.bench_function("64B-drain-32", |b| {
        b.iter(|| {
            assert_eq!(tx.push_slice(black_box(&items)), 32);
            let mut sum = 0u64;
            assert_eq!(rx.drain(32, |r| sum += r[0]), Ok(32));
            black_box(sum)
        })
    });
    group.finish();
}

fn seqlock(c: &mut Criterion) {
    const NSLOTS: u32 = 1024;
    const STRIDE: u32 = 4096;
    let files = Files::new(NSLOTS, STRIDE);
    let tensor =
        TensorHeader::new(Dtype::Float32, MajorOrder::Row, &[8, 8], &[], ProgressUnit::None, 0)
            .unwrap();
    let payload = [0x5au8; 256];

    let mut group = c.benchmark_group("seqlock");
    let mut publisher = Publisher::new(files.stream()).unwrap();
    group.bench_function("write-256B", |b| {
        b.iter(|| {
            let mut claim = publisher.claim(256).unwrap();
            claim.write_payload(black_box(&payload));
            black_box(claim.finish(tensor, 1, 0).commit())
        })
    });
    drop(publisher);

    for (name, len) in [("read-header-only", 0u32), ("read-256B", 256)] {
        let mut publisher = Publisher::new(files.stream()).unwrap();
        let mut claim = publisher.claim(len).unwrap();
        claim.write_payload(&payload[..len as usize]);
        let seq = claim.finish(tensor, 1, 0).commit();
        drop(publisher);
        let mut out = [0u8; 256];
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || Subscriber::new(files.stream()),
                |sub| black_box(sub.read(black_box(seq), &mut out).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// Copy-out of a large frame against a plain `copy_from_slice` of private memory: the price of
/// reading shared memory atomically (the goal is within 1.5x at 1 MiB).
fn copy_out(c: &mut Criterion) {
    const MIB: u32 = 1 << 20;
    let files = Files::new(2, MIB);
    let tensor =
        TensorHeader::new(Dtype::Uint8, MajorOrder::Row, &[MIB as i32], &[], ProgressUnit::None, 0)
            .unwrap();
    let source = vec![0x5au8; MIB as usize];
    let mut publisher = Publisher::new(files.stream()).unwrap();
    let mut claim = publisher.claim(MIB).unwrap();
    claim.write_payload(&source);
    let seq = claim.finish(tensor, 1, 0).commit();
    let mut out = vec![0u8; MIB as usize];

    let mut group = c.benchmark_group("copy-1MiB");
    group.throughput(Throughput::Bytes(u64::from(MIB)));
    group.bench_function("copy_from_slice", |b| {
        b.iter(|| {
            out.copy_from_slice(black_box(&source));
            black_box(&out);
        })
    });
    let mut sub = Subscriber::new(files.stream());
    group.bench_function("seqlock-read", |b| {
        b.iter(|| black_box(sub.read(black_box(seq), &mut out).unwrap()))
    });
    group.bench_function("seqlock-write", |b| {
        b.iter(|| {
            let mut claim = publisher.claim(MIB).unwrap();
            claim.write_payload(black_box(&source));
            black_box(claim.finish(tensor, 1, 0).commit())
        })
    });
    group.finish();
}

criterion_group!(benches, spsc_push_pop, shm_push_pop, seqlock, copy_out);
criterion_main!(benches);
