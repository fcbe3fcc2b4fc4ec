//! Hostile alloc clients, through the alloc server's sans-IO core (`Ingest`) with a fake clock:
//! native frames (events, queries, hellos), legacy records of every listener kind and ring
//! records, interleaved over several connections and processes with closes, process exits and
//! ticks. Nothing may panic, and the core's invariants must hold after every step: the held
//! events within the budget, the counters never wrapping, and after every connection and
//! process has ended no event held anywhere.
//!
//! Input: records of `[op, client, dt, len, bytes[len]]`; `op` picks bytes / ring records /
//! connect (with a listener kind) / disconnect / process exit / tick; `dt` advances the clock
//! (in ms).
#![no_main]

use std::time::{Duration, Instant};

use corelane::alloc::devices::DeviceTable;
use corelane::alloc::ingest::{Ingest, IngestConfig, Io, ListenerKind};
use corelane::alloc::legacy::LayoutChoice;
use corelane::alloc::wire::{Layout, RingRecord, RING_RECORD_LEN};
use libfuzzer_sys::fuzz_target;
use zerocopy::FromBytes;

struct NullIo {
    sent: usize,
}

impl Io for NullIo {
    fn send(&mut self, _client: u64, bytes: &[u8]) {
        self.sent += bytes.len();
    }
    fn close(&mut self, _client: u64) {}
    fn register_ring(&mut self, _client: u64, _msg_id: u64) {}
}

const KINDS: [ListenerKind; 5] = [
    ListenerKind::Native,
    ListenerKind::Legacy(LayoutChoice::Auto),
    ListenerKind::Legacy(LayoutChoice::Pinned(Layout::TtMetalV4)),
    ListenerKind::Legacy(LayoutChoice::Pinned(Layout::TtMetalV5)),
    ListenerKind::Legacy(LayoutChoice::Pinned(Layout::CompactV2)),
];

fuzz_target!(|data: &[u8]| {
    let config = IngestConfig {
        reorder_window: 16,
        held_budget: 32,
        gap_timeout: Duration::from_millis(5),
        exit_grace: Duration::from_millis(20),
        ..IngestConfig::default()
    };
    let mut core = Ingest::new(config, DeviceTable::default_table());
    let mut io = NullIo { sent: 0 };
    let t0 = Instant::now();
    let mut now = t0;
    let mut open = [false; 8];
    let mut released = Vec::new();
    let mut rest = data;
    while let [op, client, dt, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        rest = next;
        now += Duration::from_millis(u64::from(*dt % 16));
        let slot = (*client % 8) as usize;
        let id = slot as u64 + 1;
        let pid = 1000 + u32::from(*client % 3);
        match op % 8 {
            0 | 1 | 2 if open[slot] => core.bytes(id, bytes, now, &mut io),
            3 if open[slot] => {
                let records: Vec<RingRecord> = bytes
                    .chunks_exact(RING_RECORD_LEN)
                    .filter_map(|c| RingRecord::read_from_bytes(c).ok())
                    .collect();
                core.records(id, &records, now);
            }
            4 if !open[slot] => {
                let kind = KINDS[bytes.first().map_or(0, |b| *b as usize % KINDS.len())];
                core.connect(id, pid, kind, now);
                open[slot] = true;
            }
            5 if open[slot] => {
                core.disconnect(id, now);
                open[slot] = false;
            }
            6 => {
                core.process_exited(pid, now);
            }
            _ => core.tick(now, &mut io, &mut released),
        }
        let c = core.counters();
        assert!(c.held <= 32 + 8, "held {} over the budget", c.held);
        assert!(c.events < u64::MAX / 2);
    }
    for slot in 0..8 {
        if open[slot] {
            core.disconnect(slot as u64 + 1, now);
        }
    }
    assert_eq!(core.counters().held, 0, "every window flushed at disconnect");
    assert_eq!(core.counters().connections, 0);
    for pid in 1000..1003 {
        core.process_exited(pid, now);
    }
    // Every process ended and was released: the ledger is empty.
    assert!(core.ledger().is_empty(), "entries left after every process was released");
});
