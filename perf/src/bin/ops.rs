//! `ops OP N`: runs N iterations of one hot-path operation, for exact instruction counts under
//! callgrind (`perf/callgrind.sh` runs it with N and 2N and reports the difference per op).
//! Ops: `spsc-push-pop`, `shm-push-pop`, `seqlock-write-256B`, `seqlock-read-256B`,
//! `alloc-apply-pair` (one ALLOC and its FREE applied to the ledger), `frame-decode-64B` (one
//! canonical-header frame with a 64-byte body through the wire decoder: header checks and crc32).

use std::hint::black_box;
use std::sync::Arc;

use corelane::alloc::devices::DeviceTable;
use corelane::alloc::ledger::Ledger;
use corelane::alloc::wire::{Event, MsgType};
use corelane::wire::{self, Decoder, DecoderConfig, Flags, ProtocolVersion};
use corelane_rings::region::HeapRegion;
use corelane_rings::seqlock::{PoolSpec, Publisher, Stream, StreamSpec, Subscriber};
use corelane_rings::shm::{self, Dtype, MajorOrder, ProgressUnit, TensorHeader};
use corelane_rings::spsc;
use corelane_rings::spsc::shm::{region_len, ShmConsumer, ShmProducer};

/// Every op, in the order `perf/callgrind.sh` reports them.
const OPS: [&str; 6] = [
    "spsc-push-pop",
    "shm-push-pop",
    "seqlock-write-256B",
    "seqlock-read-256B",
    "alloc-apply-pair",
    "frame-decode-64B",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (op, n) = match args.as_slice() {
        [_, op, n] => (op.as_str(), n.parse::<u64>().expect("N: an integer")),
        _ => {
            eprintln!("usage: ops OP N  (OP: {})", OPS.join(" "));
            std::process::exit(2);
        }
    };
    match op {
        "spsc-push-pop" => {
            let (mut tx, mut rx) = spsc::channel::<u64>(1024);
            for _ in 0..n {
                tx.push(black_box(7)).unwrap();
                black_box(rx.pop().unwrap());
            }
        }
        "shm-push-pop" => {
            let region = Arc::new(HeapRegion::new(region_len::<[u64; 8]>(1024).unwrap()));
            let mut tx = ShmProducer::<[u64; 8], _>::create(region.clone(), 1024).unwrap();
            let mut rx = ShmConsumer::<[u64; 8], _>::attach(region).unwrap();
            for _ in 0..n {
                tx.push(black_box([7; 8])).unwrap();
                black_box(rx.pop().unwrap());
            }
        }
        "seqlock-write-256B" | "seqlock-read-256B" => {
            let spec = StreamSpec {
                epoch: 1,
                stream_id: 1,
                nslots: 1024,
                pools: vec![PoolSpec { pool_id: 1, stride_bytes: 4096 }],
            };
            let header = HeapRegion::new(shm::header_ring_len(1024) as usize);
            let pool = HeapRegion::new(shm::payload_pool_len(1024, 4096) as usize);
            Stream::create(&spec, &header, vec![&pool], 1, 0).unwrap();
            let tensor = TensorHeader::new(
                Dtype::Float32,
                MajorOrder::Row,
                &[8, 8],
                &[],
                ProgressUnit::None,
                0,
            )
            .unwrap();
            let payload = [0x5au8; 256];
            let mut publisher =
                Publisher::new(Stream::open(&spec, &header, vec![&pool]).unwrap()).unwrap();
            if op == "seqlock-write-256B" {
                for _ in 0..n {
                    let mut claim = publisher.claim(256).unwrap();
                    claim.write_payload(black_box(&payload));
                    black_box(claim.finish(tensor, 1, 0).commit());
                }
            } else {
                let mut claim = publisher.claim(256).unwrap();
                claim.write_payload(&payload);
                let seq = claim.finish(tensor, 1, 0).commit();
                let mut sub = Subscriber::new(Stream::open(&spec, &header, vec![&pool]).unwrap());
                let mut out = [0u8; 256];
                for _ in 0..n {
                    black_box(sub.read(black_box(seq), &mut out).unwrap());
                }
            }
        }
        "alloc-apply-pair" => {
            let mut ledger = Ledger::new(DeviceTable::default_table());
            let alloc = |id| Event {
                kind: MsgType::Alloc,
                device: 0,
                buffer_type: 0,
                buffer_id: id,
                size: 4096,
            };
            let free = |id| Event {
                kind: MsgType::Free,
                device: 0,
                buffer_type: 0,
                buffer_id: id,
                size: 0,
            };
            // A ledger that holds some live buffers, as a running server's does.
            for id in 0..1024u64 {
                ledger.apply(1, &alloc(1 << 20 | id));
            }
            for i in 0..n {
                let id = black_box(i & 1023);
                black_box(ledger.apply(1, &alloc(id)));
                black_box(ledger.apply(1, &free(id)));
            }
            assert_eq!(ledger.len(), 1024, "every ALLOC of the loop was freed");
        }
        "frame-decode-64B" => {
            let mut frame = Vec::new();
            wire::encode(ProtocolVersion::V2, 1, Flags(0), 7, &[0x5a; 64], &mut frame);
            let mut decoder = Decoder::new(DecoderConfig::default());
            let mut frames = 0u64;
            for _ in 0..n {
                decoder
                    .feed(black_box(&frame), |event| {
                        if let wire::Event::Frame(f) = event {
                            frames += 1;
                            black_box(f);
                        }
                    })
                    .unwrap();
            }
            assert_eq!(frames, n, "every frame decoded");
        }
        other => {
            eprintln!("ops: unknown op {other}");
            std::process::exit(2);
        }
    }
}
