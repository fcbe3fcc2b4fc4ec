//! The core driven with a fake clock: native and legacy connections, ordering, process exit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::*;
use crate::alloc::devices::DeviceTable;
use crate::alloc::wire::{V4Record, V5Record};
use crate::wire::{Decoder, DecoderConfig, Event as WireEvent};

#[derive(Default)]
struct FakeIo {
    sent: HashMap<u64, Vec<u8>>,
    closed: Vec<u64>,
    rings: Vec<(u64, u64)>,
}

impl Io for FakeIo {
    fn send(&mut self, client: u64, bytes: &[u8]) {
        self.sent.entry(client).or_default().extend_from_slice(bytes);
    }
    fn close(&mut self, client: u64) {
        self.closed.push(client);
    }
    fn register_ring(&mut self, client: u64, msg_id: u64) {
        self.rings.push((client, msg_id));
    }
}

impl FakeIo {
    /// The frames sent to `client` so far (taken).
    fn frames(&mut self, client: u64) -> Vec<(u16, u64, Flags, Vec<u8>)> {
        let bytes = self.sent.remove(&client).unwrap_or_default();
        let mut d = Decoder::new(DecoderConfig::default());
        let mut out = Vec::new();
        d.feed(&bytes, |e| {
            if let WireEvent::Frame(f) = e {
                out.push((f.header.msg_type, f.header.msg_id, f.header.flags, f.body.to_vec()));
            }
        })
        .unwrap();
        out
    }
}

fn core() -> Ingest {
    Ingest::new(IngestConfig::default(), DeviceTable::default_table())
}

fn ev(kind: MsgType, device: u8, id: u64, size: u64, t: u8) -> Event {
    Event { kind, device, buffer_type: t, buffer_id: id, size }
}

fn frame(kind: MsgType, seq: u64, e: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    encode(ProtocolVersion::V2, kind.code(), Flags::EMPTY, seq, e.body(0).as_bytes(), &mut out);
    out
}

fn request(kind: MsgType, id: u64, body: &impl Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(ProtocolVersion::V2, kind.code(), Flags::EMPTY, id, &body.encode_to_vec(), &mut out);
    out
}

fn v4(kind: MsgType, device: i32, id: u64, size: u64, t: u8) -> Vec<u8> {
    let mut r = V4Record::new_zeroed();
    r.head.msg_type = kind.code() as u8;
    r.head.device_id.set(device);
    r.head.buffer_id.set(id);
    r.head.size.set(size);
    r.head.buffer_type = t;
    r.head.process_id.set(999_999); // never trusted
    r.as_bytes().to_vec()
}

fn dram(core: &Ingest, device: u8) -> u64 {
    core.ledger().usage(device).totals.bytes(BufferType::Dram)
}

#[test]
fn native_events_apply_and_a_query_answers_with_capacities() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 4242, ListenerKind::Native, t0);
    let mut bytes = frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 0, 0x1000, 4096, 0));
    bytes.extend(frame(MsgType::Alloc, 1, &ev(MsgType::Alloc, 1, 0x1000, 8192, 0)));
    bytes.extend(request(MsgType::Query, 77, &proto::UsageRequest { device: Some(0) }));
    // Split at every byte boundary of the first frame: one message in pieces is one message.
    c.bytes(1, &bytes[..5], t0, &mut io);
    c.bytes(1, &bytes[5..], t0, &mut io);
    assert_eq!(dram(&c, 0), 4096);
    assert_eq!(dram(&c, 1), 8192);
    let frames = io.frames(1);
    assert_eq!(frames.len(), 1);
    let (t, id, flags, body) = &frames[0];
    assert_eq!((*t, *id), (MsgType::Query.code(), 77));
    assert!(flags.contains(Flags::RESPONSE));
    let reply = proto::UsageReply::decode(body.as_slice()).unwrap();
    assert_eq!(reply.devices.len(), 1);
    assert_eq!(reply.devices[0].dram, 4096);
    assert_eq!(reply.devices[0].dram_capacity, 12 << 30);
    assert_eq!(reply.devices[0].arch, "Wormhole_B0");
    assert_eq!(reply.counters.unwrap().events, 2);
}

#[test]
fn the_race_of_seed_001_is_exact_with_sequence_numbers() {
    // A allocates X (seq 0) and is preempted; B frees X (seq 1) and allocates X again (seq 2);
    // A's report arrives last.
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 10, ListenerKind::Native, t0);
    let first = request(MsgType::Hello, 1, &proto::Hello { name: "race".into(), first_seq: 0 });
    c.bytes(1, &first, t0, &mut io);
    let x = 0x2000;
    c.bytes(1, &frame(MsgType::Free, 1, &ev(MsgType::Free, 0, x, 0, 0)), t0, &mut io);
    c.bytes(1, &frame(MsgType::Alloc, 2, &ev(MsgType::Alloc, 0, x, 64, 0)), t0, &mut io);
    assert_eq!(dram(&c, 0), 0, "held: seq 0 has not come");
    c.bytes(1, &frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 0, x, 64, 0)), t0, &mut io);
    // Applied 0 (alloc), 1 (free), 2 (alloc): one live entry, no unknown free.
    assert_eq!(dram(&c, 0), 64);
    let k = c.counters();
    assert_eq!(k.unknown_frees, 0);
    assert_eq!(k.duplicate_allocs, 0);
    assert_eq!(k.reordered, 2);
    assert_eq!(c.ledger().remaining().count(), 1);
}

#[test]
fn a_hello_in_the_same_read_as_the_events_after_it_starts_their_window() {
    // Hello (first_seq 0), then FREE seq 1 before ALLOC seq 0, all in one read.
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 11, ListenerKind::Native, t0);
    let mut bytes = request(MsgType::Hello, 1, &proto::Hello { name: String::new(), first_seq: 0 });
    bytes.extend(frame(MsgType::Free, 1, &ev(MsgType::Free, 0, 0x77, 0, 0)));
    bytes.extend(frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 0, 0x77, 64, 0)));
    c.bytes(1, &bytes, t0, &mut io);
    assert_eq!(c.counters().unknown_frees, 0);
    assert_eq!(dram(&c, 0), 0);
    assert_eq!(io.frames(1).len(), 1, "the hello reply");
}

#[test]
fn the_race_in_arrival_order_shows_the_seeds_errors() {
    // The legacy path applies in arrival order: FREE(X) unknown, then a duplicate ALLOC.
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 10, ListenerKind::Legacy(LayoutChoice::Pinned(Layout::TtMetalV4)), t0);
    let x = 0x2000;
    let mut bytes = v4(MsgType::Free, 0, x, 0, 0);
    bytes.extend(v4(MsgType::Alloc, 0, x, 64, 0));
    bytes.extend(v4(MsgType::Alloc, 0, x, 64, 0));
    c.bytes(1, &bytes, t0, &mut io);
    let k = c.counters();
    assert_eq!(k.unknown_frees, 1);
    assert_eq!(k.duplicate_allocs, 1);
}

#[test]
fn a_gap_that_does_not_fill_is_skipped_on_the_tick() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 10, ListenerKind::Native, t0);
    c.bytes(
        1,
        &request(MsgType::Hello, 1, &proto::Hello { name: String::new(), first_seq: 5 }),
        t0,
        &mut io,
    );
    c.bytes(1, &frame(MsgType::Alloc, 7, &ev(MsgType::Alloc, 0, 1, 10, 0)), t0, &mut io);
    assert_eq!(dram(&c, 0), 0);
    let due = c.next_tick(t0).expect("a gap waits on time");
    assert!(due <= t0 + Duration::from_millis(100));
    let mut released = Vec::new();
    c.tick(t0 + Duration::from_millis(50), &mut io, &mut released);
    assert_eq!(dram(&c, 0), 0, "not yet");
    c.tick(t0 + Duration::from_millis(101), &mut io, &mut released);
    assert_eq!(dram(&c, 0), 10);
    assert_eq!(c.counters().gaps_skipped, 1);
    assert_eq!(c.counters().seqs_skipped, 2);
    // A late arrival of a skipped seq applies in arrival order, counted.
    c.bytes(1, &frame(MsgType::Alloc, 5, &ev(MsgType::Alloc, 0, 2, 1, 0)), t0, &mut io);
    assert_eq!(dram(&c, 0), 11);
    assert_eq!(c.counters().late, 1);
}

#[test]
fn a_dead_process_is_released_once_its_connections_end_and_nothing_applies_after() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    assert!(c.connect(1, 50, ListenerKind::Native, t0).new_process);
    assert!(!c.connect(2, 50, ListenerKind::Native, t0).new_process);
    let mut bytes = Vec::new();
    for i in 0..3 {
        bytes.extend(frame(MsgType::Alloc, i, &ev(MsgType::Alloc, 0, 0x100 * (i + 1), 1000, 0)));
    }
    bytes.extend(frame(MsgType::CbAlloc, 3, &ev(MsgType::CbAlloc, 0, 1, 500, 0)));
    bytes.extend(frame(MsgType::CbAlloc, 4, &ev(MsgType::CbAlloc, 0, 2, 500, 0)));
    bytes.extend(frame(MsgType::KernelLoad, 5, &ev(MsgType::KernelLoad, 0, 9, 56_000, 1)));
    c.bytes(1, &bytes, t0, &mut io);
    assert_eq!(dram(&c, 0), 3000);
    // The pidfd fires while both sockets are open: nothing is released yet.
    assert!(!c.process_exited(50, t0));
    assert_eq!(dram(&c, 0), 3000);
    // What the dead process sent before dying still arrives, then its sockets end.
    c.bytes(2, &frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 1, 0x500, 7, 0)), t0, &mut io);
    assert!(!c.disconnect(1, t0));
    assert!(c.disconnect(2, t0), "the last connection ended: released, pidfd may close");
    for d in 0..2 {
        let u = c.ledger().usage(d);
        assert!(u.totals.is_zero(), "device {d}");
    }
    assert_eq!(c.counters().processes_released, 1);
    assert_eq!(c.counters().entries_released, 7);
}

#[test]
fn a_process_that_only_disconnects_keeps_its_entries() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 60, ListenerKind::Native, t0);
    c.bytes(1, &frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 0, 1, 100, 0)), t0, &mut io);
    assert!(!c.disconnect(1, t0));
    assert_eq!(dram(&c, 0), 100);
    // It exits later: released then.
    assert!(c.process_exited(60, t0));
    assert_eq!(dram(&c, 0), 0);
}

#[test]
fn release_on_disconnect_releases_at_the_last_close() {
    let config = IngestConfig { release_on_disconnect: true, ..IngestConfig::default() };
    let (mut c, mut io, t0) =
        (Ingest::new(config, DeviceTable::default_table()), FakeIo::default(), Instant::now());
    c.connect(1, 61, ListenerKind::Native, t0);
    c.bytes(1, &frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 0, 1, 100, 0)), t0, &mut io);
    assert!(c.disconnect(1, t0));
    assert_eq!(dram(&c, 0), 0);
}

#[test]
fn a_socket_kept_open_by_a_child_is_released_after_the_grace_and_then_dropped() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 70, ListenerKind::Native, t0);
    c.bytes(1, &frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 0, 1, 100, 0)), t0, &mut io);
    assert!(!c.process_exited(70, t0));
    let mut released = Vec::new();
    let grace = IngestConfig::default().exit_grace;
    assert!(c.next_tick(t0).unwrap() <= t0 + grace);
    c.tick(t0 + grace, &mut io, &mut released);
    assert_eq!(released, [70]);
    assert_eq!(dram(&c, 0), 0);
    // The inherited socket keeps talking: nothing of the dead process applies any more.
    c.bytes(1, &frame(MsgType::Alloc, 1, &ev(MsgType::Alloc, 0, 2, 100, 0)), t0, &mut io);
    assert_eq!(dram(&c, 0), 0);
    assert_eq!(c.counters().after_release, 1);
    // A new process that reuses the pid is a new owner.
    c.disconnect(1, t0);
    assert!(c.connect(3, 70, ListenerKind::Native, t0).new_process);
    c.bytes(3, &frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 0, 3, 5, 0)), t0, &mut io);
    assert_eq!(dram(&c, 0), 5);
}

#[test]
fn ring_records_share_the_connections_sequence() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 80, ListenerKind::Native, t0);
    c.bytes(
        1,
        &request(MsgType::Hello, 1, &proto::Hello { name: String::new(), first_seq: 0 }),
        t0,
        &mut io,
    );
    // Seq 1 over the socket, seq 0 and 2 from a ring: applied 0, 1, 2.
    c.bytes(1, &frame(MsgType::Free, 1, &ev(MsgType::Free, 0, 9, 0, 0)), t0, &mut io);
    let recs = [
        RingRecord::new(0, &ev(MsgType::Alloc, 0, 9, 10, 0), 0),
        RingRecord::new(2, &ev(MsgType::Alloc, 0, 9, 20, 0), 0),
    ];
    c.records(1, &recs, t0);
    assert_eq!(dram(&c, 0), 20);
    assert_eq!(c.counters().unknown_frees, 0);
    // A corrupt record is invalid, counted, not applied.
    let mut bad = RingRecord::new(3, &ev(MsgType::Alloc, 0, 10, 10, 0), 0);
    bad.body.device_id.set(2_657_333);
    c.records(1, &[bad], t0);
    assert_eq!(c.counters().invalid, 1);
}

#[test]
fn hello_and_register_ring() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 81, ListenerKind::Native, t0);
    c.bytes(
        1,
        &request(MsgType::Hello, 3, &proto::Hello { name: "x".into(), first_seq: 0 }),
        t0,
        &mut io,
    );
    let frames = io.frames(1);
    let hello = proto::HelloReply::decode(frames[0].3.as_slice()).unwrap();
    assert_eq!(hello.pid, 81);
    assert_eq!(hello.max_rings, 64);
    c.bytes(1, &request(MsgType::RegisterRing, 4, &proto::RegisterRing {}), t0, &mut io);
    assert_eq!(io.rings, [(1, 4)]);
    assert!(c.may_register(1));
}

#[test]
fn unknown_native_requests_get_the_specs_error_text() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 82, ListenerKind::Native, t0);
    let mut out = Vec::new();
    encode(ProtocolVersion::V2, 999, Flags::EMPTY, 5, &[], &mut out);
    c.bytes(1, &out, t0, &mut io);
    let frames = io.frames(1);
    assert!(frames[0].2.contains(Flags::ERROR));
    let (_, text) = crate::wire::decode_error_body(&frames[0].3).unwrap();
    assert_eq!(text, "unknown message type 999");
    assert!(io.closed.is_empty());
}

#[test]
fn a_native_only_listener_closes_a_legacy_client() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 83, ListenerKind::Native, t0);
    c.bytes(1, &v4(MsgType::Alloc, 0, 1, 1, 0), t0, &mut io);
    assert_eq!(io.closed, [1]);
    assert_eq!(dram(&c, 0), 0);
}

#[test]
fn legacy_query_gets_a_same_size_reply_and_device_info_counts_devices() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 84, ListenerKind::Legacy(LayoutChoice::Auto), t0);
    // v5 client: 144-byte records.
    let mut alloc = V5Record::new_zeroed();
    alloc.v4.head.msg_type = 1;
    alloc.v4.head.size.set(4096);
    alloc.v4.head.buffer_id.set(0x10);
    let mut query = V5Record::new_zeroed();
    query.v4.head.msg_type = 3;
    let mut info = V5Record::new_zeroed();
    info.v4.head.msg_type = 6;
    info.v4.head.device_id.set(-1);
    let mut bytes = alloc.as_bytes().to_vec();
    bytes.extend_from_slice(query.as_bytes());
    bytes.extend_from_slice(info.as_bytes());
    c.bytes(1, &bytes, t0, &mut io);
    let sent = io.sent.remove(&1).unwrap();
    assert_eq!(sent.len(), 288, "two 144-byte replies");
    let reply = V5Record::read_from_bytes(&sent[..144]).unwrap();
    assert_eq!(reply.v4.head.msg_type, 4);
    assert_eq!(reply.v4.dram_allocated.get(), 4096);
    let reply = V5Record::read_from_bytes(&sent[144..]).unwrap();
    assert_eq!(reply.v4.head.msg_type, 7);
    assert_eq!(reply.v4.num_devices.get(), 2);
    assert_eq!(reply.v4.is_available.get(), 1);
}

#[test]
fn subscribers_get_a_push_when_usage_changes() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 85, ListenerKind::Native, t0);
    c.connect(2, 86, ListenerKind::Native, t0);
    c.bytes(
        1,
        &request(MsgType::Subscribe, 1, &proto::SubscribeRequest { min_interval_ms: 10 }),
        t0,
        &mut io,
    );
    assert_eq!(io.frames(1).len(), 1, "the subscribe reply");
    let mut released = Vec::new();
    c.tick(t0 + Duration::from_millis(20), &mut io, &mut released);
    assert!(io.frames(1).is_empty(), "nothing changed: no push");
    c.bytes(2, &frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 0, 1, 100, 0)), t0, &mut io);
    c.tick(t0 + Duration::from_millis(40), &mut io, &mut released);
    let frames = io.frames(1);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, MsgType::UsagePush.code());
    let push = proto::UsagePush::decode(frames[0].3.as_slice()).unwrap();
    assert_eq!(push.usage.unwrap().devices[0].dram, 100);
}

#[test]
fn held_events_of_all_clients_stay_within_the_budget() {
    let config = IngestConfig { held_budget: 8, ..IngestConfig::default() };
    let (mut c, mut io, t0) =
        (Ingest::new(config, DeviceTable::default_table()), FakeIo::default(), Instant::now());
    for client in 1..=4u64 {
        c.connect(client, 100 + client as u32, ListenerKind::Native, t0);
        let hello = proto::Hello { name: String::new(), first_seq: 0 };
        c.bytes(client, &request(MsgType::Hello, 1, &hello), t0, &mut io);
    }
    // Every client skips seq 0 and sends 1..=10: everything is held until the budget bites.
    for client in 1..=4u64 {
        for seq in 1..=10 {
            let e = ev(MsgType::Alloc, 0, client * 1000 + seq, 1, 0);
            c.bytes(client, &frame(MsgType::Alloc, seq, &e), t0, &mut io);
            assert!(c.counters().held <= 8 + 1, "held {}", c.counters().held);
        }
    }
    let k = c.counters();
    assert!(k.budget_flushes > 0);
    // Nothing was lost: held, or applied (gaps skipped) in order.
    assert_eq!(dram(&c, 0) + k.held, 40);
    for client in 1..=4u64 {
        c.disconnect(client, t0);
    }
    assert_eq!(c.counters().held, 0);
    assert_eq!(dram(&c, 0), 40);
}

#[test]
fn invalid_native_events_are_counted_and_hold_their_place_in_the_sequence() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 90, ListenerKind::Native, t0);
    let bad = ev(MsgType::Alloc, 0, 1, 0, 0); // size 0
    for seq in 0..5 {
        c.bytes(1, &frame(MsgType::Alloc, seq, &bad), t0, &mut io);
    }
    assert_eq!(c.counters().invalid, 5);
    assert_eq!(dram(&c, 0), 0);
    // A body of the wrong size is invalid too, and the connection stays.
    let mut out = Vec::new();
    encode(ProtocolVersion::V2, MsgType::Alloc.code(), Flags::EMPTY, 5, &[0u8; 7], &mut out);
    c.bytes(1, &out, t0, &mut io);
    assert_eq!(c.counters().invalid, 6);
    assert!(io.closed.is_empty());
    // Seq 6 applies at once: 0..=5 were invalid, not missing.
    c.bytes(1, &frame(MsgType::Alloc, 6, &ev(MsgType::Alloc, 0, 1, 10, 0)), t0, &mut io);
    assert_eq!(dram(&c, 0), 10);
    assert_eq!(c.counters().held, 0);
    assert_eq!(c.counters().gaps_skipped, 0);
}

#[test]
fn a_reused_pid_while_the_dead_process_socket_is_open_is_a_new_owner() {
    // Found by the alloc_ingest fuzzer: the old generation's open socket kept the count of
    // connections up forever, so the new process was never released.
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 70, ListenerKind::Native, t0);
    c.bytes(1, &frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 0, 1, 100, 0)), t0, &mut io);
    assert!(!c.process_exited(70, t0), "its socket is open (a child kept it)");
    // A new process gets pid 70 before the grace ends: the dead one's entries go now.
    assert!(c.connect(2, 70, ListenerKind::Native, t0).new_process);
    assert_eq!(dram(&c, 0), 0);
    c.bytes(2, &frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 0, 2, 5, 0)), t0, &mut io);
    // The old socket's events are the dead process's: dropped, not the new owner's.
    c.bytes(1, &frame(MsgType::Alloc, 1, &ev(MsgType::Alloc, 0, 3, 7, 0)), t0, &mut io);
    assert_eq!(dram(&c, 0), 5);
    assert_eq!(c.counters().after_release, 1);
    assert!(!c.disconnect(1, t0));
    assert!(!c.disconnect(2, t0), "the new process only disconnected");
    assert!(c.process_exited(70, t0));
    assert!(c.ledger().is_empty());
}

#[test]
fn the_latency_probe_samples_events_applied_on_arrival_and_is_refused_when_off() {
    use crate::alloc::latency::monotonic_ns;
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 81, ListenerKind::Native, t0);
    // Off (the default): refused with an error reply.
    c.bytes(1, &request(MsgType::LatencyReport, 5, &proto::LatencyRequest {}), t0, &mut io);
    let frames = io.frames(1);
    assert!(frames[0].2.contains(Flags::ERROR), "refused while off");

    let config = IngestConfig { latency_probe: true, ..IngestConfig::default() };
    let mut c = Ingest::new(config, DeviceTable::default_table());
    c.connect(1, 82, ListenerKind::Native, t0);
    let stamp = monotonic_ns();
    // Seq 0 over the socket, seq 2 from a ring (held: not sampled), seq 1 from a ring.
    let e = ev(MsgType::Alloc, 0, 0x40, 64, 0);
    let mut f = Vec::new();
    encode(
        ProtocolVersion::V2,
        MsgType::Alloc.code(),
        Flags::EMPTY,
        0,
        e.body(stamp).as_bytes(),
        &mut f,
    );
    c.bytes(1, &f, t0, &mut io);
    c.records(1, &[RingRecord::new(2, &ev(MsgType::Alloc, 0, 0x80, 64, 0), stamp)], t0);
    c.records(1, &[RingRecord::new(1, &ev(MsgType::Free, 0, 0x40, 0, 0), stamp)], t0);
    assert_eq!(c.counters().events, 3);
    c.bytes(1, &request(MsgType::LatencyReport, 6, &proto::LatencyRequest {}), t0, &mut io);
    let frames = io.frames(1);
    let (t, id, flags, body) = &frames[0];
    assert_eq!((*t, *id), (MsgType::LatencyReport.code(), 6));
    assert!(!flags.contains(Flags::ERROR));
    let r = proto::LatencyReply::decode(body.as_slice()).unwrap();
    assert_eq!(r.count, 2, "the held event is not sampled");
    assert!(r.p50_ns <= r.max_ns && r.max_ns < 60_000_000_000);
    // Read and reset.
    c.bytes(1, &request(MsgType::LatencyReport, 7, &proto::LatencyRequest {}), t0, &mut io);
    let r = proto::LatencyReply::decode(io.frames(1)[0].3.as_slice()).unwrap();
    assert_eq!(r.count, 0);
}

/// Defect (found by `tests/alloc.rs` s4/s5 native): an event refused by validation did not
/// take its sequence number's turn, so every later event of that client waited behind a gap
/// that could never fill (until the gap timeout skipped it, counted as a lost event).
#[test]
fn an_invalid_event_takes_its_turn_and_holds_nothing_back() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 81, ListenerKind::Native, t0);
    c.bytes(
        1,
        &request(MsgType::Hello, 1, &proto::Hello { name: String::new(), first_seq: 0 }),
        t0,
        &mut io,
    );
    let mut bytes = frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 9, 0x1, 4096, 0)); // device 9
    bytes.extend(frame(MsgType::Alloc, 1, &ev(MsgType::Alloc, 0, 0x2, 0, 0))); // size 0
    bytes.extend(frame(MsgType::Alloc, 2, &ev(MsgType::Alloc, 0, 0x3, 512, 0)));
    c.bytes(1, &bytes, t0, &mut io);
    assert_eq!(dram(&c, 0), 512, "applied at once, not held");
    // The same through a ring.
    let mut bad = RingRecord::new(3, &ev(MsgType::Alloc, 0, 0x4, 10, 0), 0);
    bad.body.device_id.set(2_657_333);
    let good = RingRecord::new(4, &ev(MsgType::Alloc, 0, 0x5, 100, 0), 0);
    c.records(1, &[bad, good], t0);
    assert_eq!(dram(&c, 0), 612);
    let k = c.counters();
    assert_eq!((k.invalid, k.events, k.reordered, k.gaps_skipped), (3, 2, 0, 0));
    assert_eq!(c.next_tick(t0), None, "no gap waits for the tick");
}

/// Defect (found by `tests/alloc.rs` a_subscriber_gets_a_usage_push_after_a_change, which
/// failed intermittently): the push deadline was `now + 10 ms` on every call, so a lane that
/// passes more often than every 10 ms moved its timer forward for ever and never pushed.
#[test]
fn the_push_deadline_is_fixed_by_the_last_push_and_only_after_a_change() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 87, ListenerKind::Native, t0);
    c.bytes(
        1,
        &request(MsgType::Subscribe, 1, &proto::SubscribeRequest { min_interval_ms: 10 }),
        t0,
        &mut io,
    );
    assert_eq!(c.next_tick(t0 + Duration::from_millis(1)), None, "no change, no deadline");
    c.bytes(1, &frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 0, 1, 100, 0)), t0, &mut io);
    let due = t0 + Duration::from_millis(10);
    for later in [1, 3, 7, 9] {
        assert_eq!(c.next_tick(t0 + Duration::from_millis(later)), Some(due), "a fixed deadline");
    }
}

/// Defect (review): a client could queue any number of RegisterRing requests; the agent kept
/// each and scanned them all every pass. Now at most `max_rings_per_client` wait (with the
/// rings held); the rest are refused at once.
#[test]
fn a_flood_of_ring_requests_is_refused_beyond_the_rings_a_connection_may_hold() {
    let config = IngestConfig { max_rings_per_client: 3, ..IngestConfig::default() };
    let (mut c, mut io, t0) =
        (Ingest::new(config, DeviceTable::default_table()), FakeIo::default(), Instant::now());
    c.connect(1, 91, ListenerKind::Native, t0);
    let mut bytes = Vec::new();
    for id in 0..100 {
        bytes.extend(request(MsgType::RegisterRing, id, &proto::RegisterRing {}));
    }
    c.bytes(1, &bytes, t0, &mut io);
    assert_eq!(io.rings.len(), 3, "handed to the agent");
    let refusals = io.frames(1);
    assert_eq!(refusals.len(), 97);
    assert!(refusals.iter().all(|f| f.2.contains(Flags::ERROR)));
    // One answered (granted): one more may wait.
    c.ring_added(1);
    c.ring_request_done(1);
    c.bytes(1, &request(MsgType::RegisterRing, 200, &proto::RegisterRing {}), t0, &mut io);
    assert_eq!(io.rings.len(), 3, "3 rings + requests already: refused");
    c.ring_request_done(1);
    c.bytes(1, &request(MsgType::RegisterRing, 201, &proto::RegisterRing {}), t0, &mut io);
    assert_eq!(io.rings.len(), 4);
}

// ---------------------------------------------------------------------------------------------
// Adversarial review (h-review2): each test below fails on the code under review.
// ---------------------------------------------------------------------------------------------

fn v5(kind: MsgType, device: i32, id: u64, size: u64) -> Vec<u8> {
    let mut r = V5Record::new_zeroed();
    r.v4.head.msg_type = kind.code() as u8;
    r.v4.head.device_id.set(device);
    r.v4.head.buffer_id.set(id);
    r.v4.head.size.set(size);
    r.as_bytes().to_vec()
}

/// `Legacy::since` is set when the connection's first bytes arrive and never again, so the
/// 5 ms wait of `settle` is measured from then, not from the bytes that left 128..=131
/// buffered: on a listener pinned to v5, a v5 client whose record arrives in two pieces
/// (128 + 16; a stream splits wherever the sender's buffer was full) more than 5 ms after its
/// first bytes is closed as "a v4 client" by the very next tick (`next_tick` is already past).
#[test]
fn review_pinned_v5_does_not_close_a_v5_client_whose_record_is_split_at_128() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 4301, ListenerKind::Legacy(LayoutChoice::Pinned(Layout::TtMetalV5)), t0);
    c.bytes(1, &v5(MsgType::Alloc, 0, 0x40, 64), t0, &mut io);
    let rec = v5(MsgType::Alloc, 0, 0x80, 64);
    let t1 = t0 + Duration::from_secs(1);
    c.bytes(1, &rec[..128], t1, &mut io);
    let mut released = Vec::new();
    c.tick(t1, &mut io, &mut released);
    c.bytes(1, &rec[128..], t1 + Duration::from_millis(1), &mut io);
    assert!(io.closed.is_empty(), "a v5 client closed as wrong-layout");
    assert_eq!(dram(&c, 0), 128);
}

/// Discards what it is given (a connection the table already closed for its output budget
/// still costs the core everything it computes for it).
struct NullIo;

impl Io for NullIo {
    fn send(&mut self, _: u64, _: &[u8]) {}
    fn close(&mut self, _: u64) {}
    fn register_ring(&mut self, _: u64, _: u64) {}
}

/// One read of 24-byte DUMP_REMAINING frames (1 MiB, the receive buffer, holds ~43,000) makes
/// the core build, sort and encode a dump of the whole ledger for each, all within one
/// `bytes` call on the lane: a hostile client stalls every other client for as long as it
/// likes (here 200 dumps of a 10,000-entry ledger, 4.8 KB of input: ~6 s in a debug build). The reply queue's
/// budget closes the connection after a few replies, but the core answers them all.
#[test]
fn review_a_flood_of_dump_requests_in_one_read_is_bounded_work() {
    let (mut c, t0) = (core(), Instant::now());
    let mut io = NullIo;
    c.connect(1, 4400, ListenerKind::Native, t0);
    let mut bytes = Vec::new();
    for i in 0..10_000u64 {
        bytes.extend(frame(MsgType::Alloc, i, &ev(MsgType::Alloc, 0, 0x1000 + i * 64, 64, 0)));
    }
    c.bytes(1, &bytes, t0, &mut io);
    assert_eq!(c.ledger().remaining().count(), 10_000);
    c.connect(2, 4401, ListenerKind::Native, t0);
    let mut flood = Vec::new();
    for i in 0..200u64 {
        encode(
            ProtocolVersion::V2,
            MsgType::DumpRemaining.code(),
            Flags::EMPTY,
            i,
            &[],
            &mut flood,
        );
    }
    let started = std::time::Instant::now();
    c.bytes(2, &flood, t0, &mut io);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "one read of {} bytes took {took:?}", flood.len());
}

/// Defect (review): the ledger had no bound; a client inventing addresses grew it without
/// limit. Past `max_entries`, allocations are refused and counted; frees still apply.
#[test]
fn allocations_past_max_entries_are_refused_and_counted() {
    let config = IngestConfig { max_entries: 3, ..IngestConfig::default() };
    let (mut c, mut io, t0) =
        (Ingest::new(config, DeviceTable::default_table()), FakeIo::default(), Instant::now());
    c.connect(1, 92, ListenerKind::Native, t0);
    let mut bytes = Vec::new();
    for i in 0..5 {
        bytes.extend(frame(MsgType::Alloc, i, &ev(MsgType::Alloc, 0, 0x100 + i, 10, 0)));
    }
    bytes.extend(frame(MsgType::Free, 5, &ev(MsgType::Free, 0, 0x100, 0, 0)));
    bytes.extend(frame(MsgType::Alloc, 6, &ev(MsgType::Alloc, 0, 0x900, 10, 0)));
    c.bytes(1, &bytes, t0, &mut io);
    assert_eq!(c.counters().ledger_full, 2);
    assert_eq!(c.ledger().remaining().count(), 3);
    assert_eq!(dram(&c, 0), 30);
}

#[test]
fn per_process_usage_carries_the_uid_of_the_socket_credentials() {
    let (mut c, mut io, t0) = (core(), FakeIo::default(), Instant::now());
    c.connect(1, 93, ListenerKind::Native, t0);
    c.set_uid(1, 1234);
    c.bytes(1, &frame(MsgType::Alloc, 0, &ev(MsgType::Alloc, 1, 0x10, 64, 0)), t0, &mut io);
    c.bytes(1, &request(MsgType::ProcessQuery, 9, &proto::ProcessUsageRequest {}), t0, &mut io);
    let frames = io.frames(1);
    let reply = proto::ProcessUsageReply::decode(frames[0].3.as_slice()).unwrap();
    let p = reply.processes.iter().find(|p| p.pid == 93).expect("pid 93");
    assert_eq!((p.device, p.dram, p.uid), (1, 64, Some(1234)));
}
