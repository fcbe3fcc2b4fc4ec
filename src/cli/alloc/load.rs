//! `corelane alloc load`: a load generator that checks the daemon's ledger against its own
//! ground truth.
//!
//! # Design
//!
//! - **Clients** are `--clients N` clients in this one process, each with its own connection
//!   (an [`AllocTracker`] for `shm`/`socket`, a raw socket for `legacy-v4`), its own toy
//!   allocator and its own address range (client `k`: addresses from `(k + 1) << 36`, on device
//!   `k % devices`). They all have this process's pid, so the daemon's ledger of that pid is
//!   the union of the clients' ground truths, compared key by key. (Child processes would add
//!   nothing the per-key comparison does not already check, and in-process clients keep the
//!   ground truth in one place.)
//! - **Threads**: `--threads T` per client share its allocator, as TT-Metal's threads share
//!   one: a mutex-protected free list with immediate reuse (LIFO) and one shared set of live
//!   buffers, so any thread may free a buffer another thread allocated. The address, and the
//!   sequence number ([`AllocTracker::seq`]), are decided inside the lock; for a free the number
//!   is taken before the address goes back to the free list. `--delay-us D` sleeps between
//!   leaving the lock and reporting (the preemption of seed 001).
//! - **Sequencing**: by default [`Sequence::AtEvent`]; `--no-seq` makes the trackers number at
//!   send time ([`Sequence::AtSend`]: arrival order, as the original server), and
//!   `legacy-v4` has no numbers at all (128-byte records, blocking writes under a per-client
//!   write mutex, as the original client). Both can show the seed's errors under contention.
//! - **Pacing** (credits): a monitor thread polls the daemon's `counters.events` every few ms,
//!   and a thread waits before reporting while more than 1024 reports per client are made and
//!   not yet applied. The load runs at the daemon's pace, and the throughput printed is the
//!   end-to-end rate it sustained. `--unpaced` lets the clients run ahead: the trackers' rings
//!   and buffers then hold backlogs far larger than a reorder window (and the buffers drop the
//!   newest reports when full, as the library is meant to), which this build's daemon turns
//!   into skipped gaps and a wrong ledger (see the report of `tests/alloc_race.rs`).
//! - **The check**: after `--duration`, every tracker is flushed, then the daemon's
//!   `counters.events` is polled (with a deadline) until it applied every report made
//!   (minus those a tracker dropped); then the dump of this pid is compared with what is live
//!   in the allocators: a key missing, extra, with another size or a ref_count other than 1
//!   is one mismatch.
//! - **Exit code**: 0 iff `mismatches: 0`, in every mode. With `--no-seq` or `legacy-v4` and
//!   more than one thread mismatches are expected (that is what those modes demonstrate), and
//!   the exit code says they happened.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{value_parser, Arg, ArgAction, ArgMatches, Command};
use zerocopy::{FromZeros, IntoBytes};

use crate::alloc::query::QueryClient;
use crate::alloc::tracker::{AllocTracker, Sequence, Transport};
use crate::alloc::wire::{MsgType, V4Record};
use crate::alloc::BufferType;

/// Live buffers per client at most: a thread frees when the client holds this many.
const LIVE_CAP: usize = 64;
/// Bytes between two addresses of one client.
const STRIDE: u64 = 1 << 20;
/// Reports in flight (made, not yet applied by the daemon) per client at most, when paced.
const CREDIT_PER_CLIENT: u64 = 1024;
/// How long the daemon may take to apply what was reported.
const APPLY_DEADLINE: Duration = Duration::from_secs(30);

/// The `load` subcommand's arguments.
pub fn command() -> Command {
    Command::new("load")
        .about("Load the alloc server from N clients x T threads and check its ledger.")
        .long_about(
            "Run --clients N clients in this process (each its own connection, its own toy \
             allocator: a free list with immediate address reuse shared by --threads T \
             threads, and its own address range) allocating and freeing for --duration \
             seconds, then wait until the daemon applied every report and compare the \
             daemon's ledger of this pid with what is live in the allocators. Prints \
             `mismatches: N`, the daemon's unknown frees and duplicate allocs, and the \
             throughput; exits 0 iff there are no mismatches. --transport shm|socket use \
             AllocTracker (sequence numbers taken inside the allocator's lock, unless \
             --no-seq: at send time); legacy-v4 sends raw 128-byte TT-Metal records with \
             blocking writes (no sequence: arrival order). --delay-us D sleeps between \
             allocating and reporting (the preemption of seed 001); with --no-seq or \
             legacy-v4 and T > 1 mismatches are then expected.",
        )
        .arg(
            Arg::new("clients")
                .long("clients")
                .value_name("N")
                .value_parser(value_parser!(u32).range(1..=1024))
                .default_value("4")
                .help("Clients (connections), each with its own allocator."),
        )
        .arg(
            Arg::new("threads")
                .long("threads")
                .value_name("T")
                .value_parser(value_parser!(u32).range(1..=256))
                .default_value("2")
                .help("Threads per client, sharing its allocator."),
        )
        .arg(
            Arg::new("duration")
                .long("duration")
                .value_name("S")
                .value_parser(value_parser!(f64))
                .default_value("2")
                .help("Seconds of load."),
        )
        .arg(
            Arg::new("transport")
                .long("transport")
                .value_parser(["shm", "socket", "legacy-v4"])
                .default_value("shm")
                .help("shm and socket: AllocTracker; legacy-v4: raw 128-byte records."),
        )
        .arg(
            Arg::new("no-seq")
                .long("no-seq")
                .action(ArgAction::SetTrue)
                .help("Number reports at send time (arrival order), not inside the lock."),
        )
        .arg(
            Arg::new("delay-us")
                .long("delay-us")
                .value_name("D")
                .value_parser(value_parser!(u64))
                .default_value("0")
                .help("Microseconds between allocating (or freeing) and reporting."),
        )
        .arg(
            Arg::new("unpaced")
                .long("unpaced")
                .action(ArgAction::SetTrue)
                .help("Do not wait for the daemon: let the clients run ahead of it."),
        )
        .arg(
            Arg::new("legacy-socket")
                .long("legacy-socket")
                .value_name("PATH")
                .value_parser(value_parser!(PathBuf))
                .help("The tt-metal listener for legacy-v4 (default: the first tt-metal or tt-metal-v4 listener)."),
        )
}

/// What `load` needs besides its arguments.
pub struct LoadTarget<'a> {
    /// The native socket (trackers and queries).
    pub native: &'a Path,
    /// The legacy listener, if the config has one.
    pub legacy: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Shm,
    Socket,
    LegacyV4,
}

/// One client's toy allocator, shared by its threads.
struct Heap {
    next: u64,
    free: Vec<u64>,
    /// Live buffers (address, size): the ground truth.
    live: Vec<(u64, u64)>,
}

enum Reporter {
    Tracker(AllocTracker),
    /// A raw TT-Metal v4 connection (the original client's per-client write mutex).
    Legacy(Mutex<UnixStream>),
}

struct LoadClient {
    device: u8,
    /// Numbers taken inside the lock (not with --no-seq: the tracker numbers at send, and a
    /// number taken here too would leave a gap per report).
    numbered: bool,
    heap: Mutex<Heap>,
    reporter: Reporter,
    reports: AtomicU64,
    allocs: AtomicU64,
}

impl LoadClient {
    /// The sequence number of an event, taken inside the allocator's lock (trackers only).
    fn seq(&self) -> u64 {
        match &self.reporter {
            Reporter::Tracker(t) if self.numbered => t.seq(),
            _ => 0,
        }
    }

    fn report(&self, kind: MsgType, seq: u64, addr: u64, size: u64) -> Result<(), String> {
        match &self.reporter {
            Reporter::Tracker(t) => match kind {
                MsgType::Alloc => t.alloc(seq, self.device, BufferType::Dram, addr, size),
                _ => t.free(seq, self.device, addr),
            },
            Reporter::Legacy(stream) => {
                let mut r = V4Record::new_zeroed();
                r.head.msg_type = kind.code() as u8;
                r.head.device_id.set(i32::from(self.device));
                r.head.size.set(size);
                r.head.buffer_type = BufferType::Dram as u8;
                r.head.process_id.set(std::process::id() as i32);
                r.head.buffer_id.set(addr);
                let mut s = stream.lock().unwrap_or_else(|e| e.into_inner());
                s.write_all(r.as_bytes()).map_err(|e| format!("legacy write: {e}"))?;
            }
        }
        self.reports.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Runs `alloc load`; the exit is success iff no mismatch.
pub fn run(
    query: &mut QueryClient,
    target: &LoadTarget<'_>,
    m: &ArgMatches,
) -> Result<bool, String> {
    let clients = *m.get_one::<u32>("clients").unwrap_or(&4);
    let threads = *m.get_one::<u32>("threads").unwrap_or(&2);
    let secs = *m.get_one::<f64>("duration").unwrap_or(&2.0);
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("--duration: expected a positive number of seconds, got {secs}"));
    }
    let duration = Duration::from_secs_f64(secs);
    let via = match m.get_one::<String>("transport").map(String::as_str) {
        Some("socket") => Via::Socket,
        Some("legacy-v4") => Via::LegacyV4,
        _ => Via::Shm,
    };
    let seq = !m.get_flag("no-seq");
    let delay = Duration::from_micros(*m.get_one::<u64>("delay-us").unwrap_or(&0));
    let paced = !m.get_flag("unpaced");

    let before = query.usage(None).map_err(|e| e.to_string())?;
    let devices = before.devices.len().clamp(1, 8) as u8;
    let base = before.counters.unwrap_or_default();

    let mut all = Vec::with_capacity(clients as usize);
    for k in 0..clients {
        let reporter = match via {
            Via::LegacyV4 => {
                let path = m
                    .get_one::<PathBuf>("legacy-socket")
                    .cloned()
                    .or_else(|| target.legacy.clone())
                    .ok_or("no tt-metal listener in [alloc] listeners; pass --legacy-socket")?;
                let s = UnixStream::connect(&path)
                    .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
                Reporter::Legacy(Mutex::new(s))
            }
            Via::Shm | Via::Socket => Reporter::Tracker(
                AllocTracker::builder()
                    .socket(target.native)
                    .transport(if via == Via::Shm { Transport::Shm } else { Transport::Socket })
                    .sequence(if seq { Sequence::AtEvent } else { Sequence::AtSend })
                    .buffer_records(1 << 16)
                    .name(format!("alloc-load-{k}"))
                    .build(),
            ),
        };
        all.push(LoadClient {
            device: (k % u32::from(devices)) as u8,
            numbered: seq,
            heap: Mutex::new(Heap {
                next: (u64::from(k) + 1) << 36,
                free: Vec::new(),
                live: Vec::new(),
            }),
            reporter,
            reports: AtomicU64::new(0),
            allocs: AtomicU64::new(0),
        });
    }
    // Trackers connect lazily: start once they are all connected.
    let connect_by = Instant::now() + Duration::from_secs(10);
    for c in &all {
        if let Reporter::Tracker(t) = &c.reporter {
            while !t.stats().connected {
                if Instant::now() > connect_by {
                    return Err(format!(
                        "a tracker did not connect to {} within 10 s",
                        target.native.display()
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    let started = Instant::now();
    let end = started + duration;
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let pace = Pace {
        paced,
        credit: CREDIT_PER_CLIENT * u64::from(clients),
        made: AtomicU64::new(0),
        applied: AtomicU64::new(0),
        end,
    };
    let mut monitor = if paced {
        Some(
            QueryClient::connect(target.native, Duration::from_secs(10))
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    std::thread::scope(|s| {
        if let Some(q) = monitor.as_mut() {
            let pace = &pace;
            s.spawn(move || {
                while Instant::now() < pace.end {
                    match q.usage(None) {
                        Ok(u) => {
                            let events = u.counters.unwrap_or_default().events;
                            // SYNC: Release pairs with the reporting threads' Acquire load of
                            // `applied` (the credit check in the report loop).
                            pace.applied
                                .store(events.saturating_sub(base.events), Ordering::Release);
                        }
                        Err(_) => break,
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
        }
        for (k, c) in all.iter().enumerate() {
            for t in 0..threads {
                let (failure, pace) = (&failure, &pace);
                s.spawn(move || {
                    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (((k as u64) << 32) | u64::from(t));
                    if let Err(e) = work(c, pace, delay, &mut rng) {
                        failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                    }
                });
            }
        }
    });
    let elapsed = started.elapsed();
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }

    // Everything reported reaches the daemon, then the daemon applies it.
    let (mut reported, mut dropped, mut via_ring, mut via_socket) = (0u64, 0u64, 0u64, 0u64);
    for c in &all {
        match &c.reporter {
            Reporter::Tracker(t) => {
                if !t.flush(Duration::from_secs(10)) {
                    eprintln!("warning: a tracker could not flush within 10 s");
                }
                let st = t.stats();
                reported += st.reported;
                dropped += st.dropped;
                via_ring += st.via_ring;
                via_socket += st.via_socket;
            }
            Reporter::Legacy(_) => reported += c.reports.load(Ordering::Relaxed),
        }
    }
    let expected = reported - dropped;
    let deadline = Instant::now() + APPLY_DEADLINE;
    let after = loop {
        let u = query.usage(None).map_err(|e| e.to_string())?;
        let k = u.counters.unwrap_or_default();
        if k.events >= base.events + expected {
            break k;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the daemon applied {} of {expected} events within {APPLY_DEADLINE:?}",
                k.events - base.events
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };

    // The check: the dump of this pid against the allocators.
    let dump = query.dump().map_err(|e| e.to_string())?;
    if dump.omitted > 0 {
        return Err(format!("the dump omitted {} entries: cannot compare", dump.omitted));
    }
    let pid = std::process::id();
    let mut truth: HashMap<(i32, u64), u64> = HashMap::new();
    for c in &all {
        let heap = c.heap.lock().unwrap_or_else(|e| e.into_inner());
        for &(addr, size) in &heap.live {
            truth.insert((i32::from(c.device), addr), size);
        }
    }
    let held: HashMap<(i32, u64), (u64, u32)> = dump
        .allocations
        .iter()
        .filter(|a| a.pid == pid && a.kind == 1)
        .map(|a| ((a.device, a.buffer_id), (a.size, a.ref_count)))
        .collect();
    let mut mismatches = held
        .iter()
        .filter(|(key, &held)| truth.get(key).map(|&size| (size, 1)) != Some(held))
        .count();
    mismatches += truth.keys().filter(|key| !held.contains_key(key)).count();

    let allocs: u64 = all.iter().map(|c| c.allocs.load(Ordering::Relaxed)).sum();
    let mode = match (via, seq) {
        (Via::LegacyV4, _) => "none (legacy: arrival order)",
        (_, true) => "at the event (inside the allocator lock)",
        (_, false) => "at send (--no-seq: arrival order)",
    };
    let name = match via {
        Via::Shm => "shm",
        Via::Socket => "socket",
        Via::LegacyV4 => "legacy-v4",
    };
    println!(
        "alloc load: {clients} clients x {threads} threads, {:.2} s, transport {name}, sequence {mode}, delay {} us",
        elapsed.as_secs_f64(),
        delay.as_micros()
    );
    println!(
        "reports: {reported} ({allocs} allocs, {} frees), {:.0}/s; via ring {via_ring}, via socket {via_socket}, dropped {dropped}",
        reported - allocs,
        reported as f64 / elapsed.as_secs_f64()
    );
    println!(
        "daemon: applied {} events; unknown frees {}, duplicate allocs {}, gaps skipped {}, reordered {}, late {}",
        after.events - base.events,
        after.unknown_frees - base.unknown_frees,
        after.duplicate_allocs - base.duplicate_allocs,
        after.gaps_skipped - base.gaps_skipped,
        after.reordered - base.reordered,
        after.late - base.late
    );
    println!(
        "ledger of pid {pid}: {} buffers live in the allocators, {} held by the daemon",
        truth.len(),
        held.len()
    );
    println!("mismatches: {mismatches}");
    Ok(mismatches == 0)
}

/// The credits of a paced load (see the module docs).
struct Pace {
    paced: bool,
    /// Reports in flight at most.
    credit: u64,
    /// Reports made by every thread.
    made: AtomicU64,
    /// Events the daemon applied since the start (the monitor's last look).
    applied: AtomicU64,
    end: Instant,
}

/// One thread's loop: allocate or free under the client's allocator lock, then report.
fn work(c: &LoadClient, pace: &Pace, delay: Duration, rng: &mut u64) -> Result<(), String> {
    loop {
        if pace.paced {
            // SYNC: Acquire pairs with the monitor's Release store (a plain counter handoff).
            while pace.made.load(Ordering::Relaxed)
                > pace.applied.load(Ordering::Acquire) + pace.credit
                && Instant::now() < pace.end
            {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        if Instant::now() >= pace.end {
            return Ok(());
        }
        pace.made.fetch_add(1, Ordering::Relaxed);
        let r = splitmix64(rng);
        let (kind, seq, addr, size) = {
            let mut h = c.heap.lock().unwrap_or_else(|e| e.into_inner());
            let free = !h.live.is_empty() && (h.live.len() >= LIVE_CAP || r & 1 == 0);
            if free {
                // Any live buffer, possibly another thread's (shared, as a program cache).
                let i = ((r >> 8) % h.live.len() as u64) as usize;
                let (addr, _) = h.live.swap_remove(i);
                // Numbered before the address can be handed out again.
                let seq = c.seq();
                h.free.push(addr);
                (MsgType::Free, seq, addr, 0)
            } else {
                let addr = match h.free.pop() {
                    Some(a) => a, // immediate reuse
                    None => {
                        let a = h.next;
                        h.next += STRIDE;
                        a
                    }
                };
                let size = 4096 * (1 + (r >> 16) % 16);
                h.live.push((addr, size));
                (MsgType::Alloc, c.seq(), addr, size)
            }
        };
        if kind == MsgType::Alloc {
            c.allocs.fetch_add(1, Ordering::Relaxed);
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        c.report(kind, seq, addr, size)?;
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
