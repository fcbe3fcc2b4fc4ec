//! The alloc server's hot path allocates nothing in steady state: native framed events, ring
//! records and legacy records, each ALLOC/FREE over a fixed working set of addresses, through
//! the sans-IO core (`Ingest`) and its ledger and reorder windows. A counting global allocator
//! counts the allocations of this thread while a flag is up (its own test binary, so no other
//! test's allocator is replaced).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use corelane::alloc::devices::DeviceTable;
use corelane::alloc::ingest::{Ingest, IngestConfig, Io, ListenerKind};
use corelane::alloc::legacy::LayoutChoice;
use corelane::alloc::wire::{Event, Layout as RecordLayout, MsgType, RingRecord, V4Record};
use corelane::wire::{encode, Flags, ProtocolVersion};
use zerocopy::{FromZeros, IntoBytes};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting touches only an
// atomic and a const-initialised thread local (neither allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's obligations are the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct NullIo;

impl Io for NullIo {
    fn send(&mut self, _: u64, _: &[u8]) {}
    fn close(&mut self, _: u64) {}
    fn register_ring(&mut self, _: u64, _: u64) {}
}

/// Allocations made by `f` on this thread.
fn allocations_of(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

const ADDRESSES: u64 = 64;

fn event(kind: MsgType, addr: u64) -> Event {
    Event { kind, device: (addr % 2) as u8, buffer_type: 0, buffer_id: 0x1000 * addr, size: 4096 }
}

/// Round `round` of the workload: every address allocated, then freed (128 events).
fn native_round(round: u64, out: &mut Vec<u8>) {
    out.clear();
    for (i, kind) in [MsgType::Alloc, MsgType::Free].into_iter().enumerate() {
        for a in 0..ADDRESSES {
            let seq = round * 2 * ADDRESSES + i as u64 * ADDRESSES + a;
            let body = event(kind, a).body(0);
            encode(ProtocolVersion::V2, kind.code(), Flags::EMPTY, seq, body.as_bytes(), out);
        }
    }
}

#[test]
fn native_ring_and_legacy_ingest_allocate_nothing_in_steady_state() {
    let mut core = Ingest::new(IngestConfig::default(), DeviceTable::default_table());
    let t0 = Instant::now();
    core.connect(1, 100, ListenerKind::Native, t0);
    core.connect(2, 101, ListenerKind::Native, t0);
    core.connect(3, 102, ListenerKind::Legacy(LayoutChoice::Pinned(RecordLayout::TtMetalV4)), t0);
    // A ring client said hello over its socket first (as it must, to register a ring).
    let mut hello = Vec::new();
    let body = corelane::alloc::proto::Hello { name: String::new(), first_seq: 0 };
    encode(
        ProtocolVersion::V2,
        MsgType::Hello.code(),
        Flags::EMPTY,
        1,
        &prost::Message::encode_to_vec(&body),
        &mut hello,
    );
    core.bytes(2, &hello, t0, &mut NullIo);
    let mut frames = Vec::with_capacity(1 << 16);
    let mut records = Vec::with_capacity(2 * ADDRESSES as usize);
    let mut legacy = Vec::with_capacity(1 << 16);
    let mut run = |core: &mut Ingest, round: u64| {
        native_round(round, &mut frames);
        core.bytes(1, &frames, t0, &mut NullIo);
        records.clear();
        for (i, kind) in [MsgType::Alloc, MsgType::Free].into_iter().enumerate() {
            for a in 0..ADDRESSES {
                let seq = round * 2 * ADDRESSES + i as u64 * ADDRESSES + a;
                // Neighbouring pairs swapped: the window holds one and applies both.
                let seq = seq ^ 1;
                records.push(RingRecord::new(seq, &event(kind, a + ADDRESSES), 0));
            }
        }
        core.records(2, &records, t0);
        legacy.clear();
        for kind in [MsgType::Alloc, MsgType::Free] {
            for a in 0..ADDRESSES {
                let mut r = V4Record::new_zeroed();
                let e = event(kind, a + 2 * ADDRESSES);
                r.head.msg_type = kind.code() as u8;
                r.head.device_id.set(i32::from(e.device));
                r.head.buffer_id.set(e.buffer_id);
                r.head.size.set(e.size);
                legacy.extend_from_slice(r.as_bytes());
            }
        }
        // In two pieces, the cut inside a record: the partial record waits.
        core.bytes(3, &legacy[..1000], t0, &mut NullIo);
        core.bytes(3, &legacy[1000..], t0, &mut NullIo);
    };
    for round in 0..50 {
        run(&mut core, round);
    }
    let events_before = core.counters().events;
    let allocated = allocations_of(|| {
        for round in 50..150 {
            run(&mut core, round);
        }
    });
    let applied = core.counters().events - events_before;
    assert_eq!(applied, 100 * 3 * 2 * ADDRESSES, "every event applied");
    assert_eq!(core.counters().unknown_frees, 0);
    assert!(core.ledger().is_empty());
    assert_eq!(allocated, 0, "{allocated} allocations for {applied} events");
}
