//! The race of seed 001, replayed deterministically against the real daemon.
//!
//! Threads A and B share one allocator (a mutex-protected free list with immediate address
//! reuse) and one client connection. The schedule is scripted with channels, not timing:
//!
//! 1. A allocates X (the address, and with sequencing its sequence number, decided inside the
//!    allocator's lock) and is "preempted": it hands over to B before it reports;
//! 2. B frees X (the allocator takes it back), allocates X again (reuse), and reports FREE X
//!    and ALLOC X;
//! 3. only then does A report its ALLOC X;
//! 4. B frees X for good and reports it. Ground truth: nothing is live.
//!
//! With the number taken at the event (inside the lock) the daemon applies the events in the
//! order they happened: the ledger is exact, no unknown FREE, no duplicate ALLOC. With the
//! number taken at send time (arrival order, as the original server) it sees the seed's
//! errors: FREE of an unknown X, then a duplicate ALLOC X, and X stays live for ever (a false
//! leak).
//!
//! Replayed with raw native frames (the protocol alone), and with `AllocTracker` over its
//! socket and its shared-memory rings.

mod support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;

use corelane::alloc::proto;
use corelane::alloc::tracker::{AllocTracker, Sequence, Transport};
use corelane::alloc::wire::MsgType;
use corelane::alloc::BufferType;
use support::*;

const X: u64 = 0x8000_0000;
const SIZE: u64 = 1 << 20;

/// When a report's sequence number is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Numbering {
    /// Inside the allocator's lock, where the address is decided.
    AtEvent,
    /// When the report is written (arrival order).
    AtSend,
}

/// The toy allocator: a free list with immediate reuse.
struct Heap {
    free: Vec<u64>,
}

/// One client connection shared by the threads, numbering its events as `numbering` says.
struct RawClient {
    numbering: Numbering,
    seq: AtomicU64,
    socket: Mutex<UnixStream>,
}

impl RawClient {
    /// A number taken inside the allocator's lock (AtEvent), else nothing yet.
    fn at_event(&self) -> Option<u64> {
        (self.numbering == Numbering::AtEvent).then(|| self.seq.fetch_add(1, Ordering::Relaxed))
    }

    fn report(&self, seq: Option<u64>, kind: MsgType, id: u64, size: u64) {
        let mut socket = self.socket.lock().unwrap();
        let seq = seq.unwrap_or_else(|| self.seq.fetch_add(1, Ordering::Relaxed));
        socket.write_all(&event_frame(seq, kind, 0, 0, id, size)).unwrap();
    }
}

/// What the daemon made of one replay.
struct Outcome {
    counters: proto::IngestCounters,
    /// This process's live entries after the replay (ground truth: none).
    live: Vec<(u32, i32, u64, u64, u32)>,
}

/// Runs the scripted schedule with `alloc`/`free`/`report` hooks of one client flavour.
/// `take(heap)` is called inside the allocator's lock and returns the number (if any) of the
/// event it decided; `report(number, kind, id, size)` reports it after the lock is released.
fn replay<S: Copy + Send>(
    take: &(dyn Fn() -> S + Sync),
    report: &(dyn Fn(S, MsgType, u64, u64) + Sync),
) {
    let heap = Mutex::new(Heap { free: vec![X] });
    let (to_b, at_b) = mpsc::channel::<()>();
    let (to_a, at_a) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let heap = &heap;
        // A: allocates X, is preempted before its report, reports after B.
        s.spawn(move || {
            let (addr, n) = {
                let mut h = heap.lock().unwrap();
                (h.free.pop().expect("X is free"), take())
            };
            assert_eq!(addr, X);
            to_b.send(()).unwrap();
            at_a.recv().unwrap(); // B ran in between
            report(n, MsgType::Alloc, addr, SIZE);
        });
        // B: frees X (A's buffer), allocates X again, reports both; later frees it for good.
        s.spawn(move || {
            at_b.recv().unwrap();
            let n = {
                let mut h = heap.lock().unwrap();
                let n = take();
                h.free.push(X);
                n
            };
            report(n, MsgType::Free, X, 0);
            let (addr, n) = {
                let mut h = heap.lock().unwrap();
                (h.free.pop().expect("X was just freed"), take())
            };
            assert_eq!(addr, X, "the allocator reuses the address at once");
            report(n, MsgType::Alloc, addr, SIZE);
            to_a.send(()).unwrap();
        });
    });
    // Then X is freed for good.
    let n = {
        let mut h = heap.lock().unwrap();
        let n = take();
        h.free.push(X);
        n
    };
    report(n, MsgType::Free, X, 0);
    assert_eq!(heap.lock().unwrap().free, [X], "ground truth: nothing live");
}

fn replay_raw(name: &str, numbering: Numbering) -> Outcome {
    let rig = Rig::start(name);
    let native = Native::connect(&rig.path(Listener::Native));
    let client = RawClient { numbering, seq: AtomicU64::new(0), socket: Mutex::new(native.stream) };
    replay(&|| client.at_event(), &|n, kind, id, size| client.report(n, kind, id, size));
    let u = rig.wait_events(4);
    Outcome { counters: u.counters.unwrap(), live: entries_of(&rig.dump(), std::process::id()) }
}

#[test]
fn the_seed_001_race_with_the_number_taken_at_the_event_gives_an_exact_ledger() {
    let o = replay_raw("race-raw-event", Numbering::AtEvent);
    let k = o.counters;
    assert_eq!((k.unknown_frees, k.duplicate_allocs), (0, 0), "{k:?}");
    assert_eq!(k.reordered, 2, "B's two reports waited for A's");
    assert_eq!(k.gaps_skipped, 0);
    assert!(o.live.is_empty(), "nothing live: {:?}", o.live);
}

#[test]
fn the_seed_001_race_with_the_number_taken_at_send_shows_the_seeds_errors() {
    let o = replay_raw("race-raw-send", Numbering::AtSend);
    let k = o.counters;
    assert_eq!((k.unknown_frees, k.duplicate_allocs), (1, 1), "{k:?}");
    assert_eq!(k.reordered, 0, "arrival order");
    assert_eq!(o.live, vec![(1, 0, X, SIZE, 1)], "a false leak: X stays live");
}

// ---------------------------------------------------------------------------------------------
// The same schedule through AllocTracker, over its socket and its shared-memory rings.
// ---------------------------------------------------------------------------------------------

fn replay_tracker(name: &str, transport: Transport, sequence: Sequence) -> Outcome {
    let rig = Rig::start(name);
    let t = AllocTracker::builder()
        .socket(rig.path(Listener::Native))
        .transport(transport)
        .sequence(sequence)
        .name(name)
        .build();
    wait_for("the tracker to connect", || t.stats().connected);
    // At send, the tracker numbers the report itself: a number taken here too would leave
    // a gap per report in the daemon's window.
    let numbered = sequence == Sequence::AtEvent;
    replay(&|| if numbered { t.seq() } else { 0 }, &|n, kind, id, size| match kind {
        MsgType::Alloc => t.alloc(n, 0, BufferType::Dram, id, size),
        _ => t.free(n, 0, id),
    });
    assert!(t.flush(DEADLINE), "the tracker flushed");
    let st = t.stats();
    assert_eq!((st.reported, st.dropped), (4, 0), "{st:?}");
    if transport == Transport::Socket {
        assert_eq!(st.via_socket, 4);
    }
    let u = rig.wait_events(4);
    let o = Outcome {
        counters: u.counters.unwrap(),
        live: entries_of(&rig.dump(), std::process::id()),
    };
    drop(t);
    o
}

fn exact(o: &Outcome) {
    let k = o.counters;
    assert_eq!((k.unknown_frees, k.duplicate_allocs, k.gaps_skipped), (0, 0, 0), "{k:?}");
    assert!(o.live.is_empty(), "nothing live: {:?}", o.live);
}

fn the_seeds_errors(o: &Outcome) {
    let k = o.counters;
    assert_eq!((k.unknown_frees, k.duplicate_allocs, k.gaps_skipped), (1, 1, 0), "{k:?}");
    assert_eq!(o.live, vec![(1, 0, X, SIZE, 1)], "a false leak: X stays live");
}

#[test]
fn the_seed_001_race_through_the_tracker_socket_at_event_is_exact() {
    exact(&replay_tracker("race-socket-event", Transport::Socket, Sequence::AtEvent));
}

#[test]
fn the_seed_001_race_through_the_tracker_socket_at_send_shows_the_seeds_errors() {
    the_seeds_errors(&replay_tracker("race-socket-send", Transport::Socket, Sequence::AtSend));
}

#[test]
fn the_seed_001_race_through_the_tracker_rings_at_event_is_exact() {
    exact(&replay_tracker("race-shm-event", Transport::Shm, Sequence::AtEvent));
}

#[test]
fn the_seed_001_race_through_the_tracker_rings_at_send_shows_the_seeds_errors() {
    the_seeds_errors(&replay_tracker("race-shm-send", Transport::Shm, Sequence::AtSend));
}

// ---------------------------------------------------------------------------------------------
// `corelane alloc load` itself.
// ---------------------------------------------------------------------------------------------

fn load(rig: &Rig, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(["alloc", "load", "--duration", "2"])
        .args(args)
        .arg("-c")
        .arg(&rig.config)
        .args(["--timeout-ms", "10000"])
        .env("CORELANE_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("alloc load {args:?}:\n{text}{err}");
    (out.status.success(), text)
}

/// The number after `label` in `text`.
fn number(text: &str, label: &str) -> u64 {
    let at = text.find(label).unwrap_or_else(|| panic!("no {label:?} in {text}")) + label.len();
    text[at..].trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[test]
fn alloc_load_over_shm_and_socket_reports_no_mismatch() {
    let rig = Rig::start("load");
    for transport in ["shm", "socket"] {
        let (ok, out) = load(&rig, &["--clients", "3", "--threads", "2", "--transport", transport]);
        assert!(ok, "exit code 0");
        assert_eq!(number(&out, "mismatches:"), 0);
        assert_eq!(number(&out, "unknown frees"), 0);
        assert!(number(&out, "applied") > 1000, "it did some work");
    }
    // The load's process exited: its entries were released.
    rig.wait_usage("the load's entries released", |u| u.devices.iter().all(|d| d.num_buffers == 0));
}

#[test]
fn alloc_load_over_legacy_v4_with_one_thread_per_client_reports_no_mismatch() {
    let rig = Rig::start("load-legacy");
    let (ok, out) = load(&rig, &["--clients", "2", "--threads", "1", "--transport", "legacy-v4"]);
    assert!(ok, "exit code 0");
    assert_eq!(number(&out, "mismatches:"), 0);
}

/// Defect (fixed: `alloc::rings` merges a client's rings in sequence order): clients that
/// run ahead of the daemon through their rings, with nothing dropped (rings big enough for
/// the whole run), got a wrong ledger. The agent drained a connection's rings 256 records
/// each per pass, round-robin; when one thread's ring held a backlog that another thread's
/// did not, the reorder window filled with the second ring's later numbers and skipped gaps
/// whose events were sitting in the first ring, which then applied "late", out of order.
#[test]
fn alloc_load_unpaced_over_rings_with_nothing_dropped_keeps_the_ledger_exact() {
    let setup = Setup {
        alloc: "ring_capacity = 1048576\ngap_timeout_ms = 10000\n".into(),
        ..Setup::default()
    };
    let rig = Rig::start_with("load-unpaced", &setup);
    let (ok, out) =
        load(&rig, &["--clients", "1", "--threads", "2", "--transport", "shm", "--unpaced"]);
    assert_eq!(number(&out, "dropped"), 0, "nothing dropped: the rings hold the whole run");
    assert_eq!(number(&out, "gaps skipped"), 0);
    assert_eq!(number(&out, "mismatches:"), 0);
    assert!(ok);
}
