//! Suite `handoff`: a payload handed from one process to another through corelane's tensor
//! slots (header ring + payload pool in shared-memory files), next to iceoryx2's
//! publish-subscribe and a Unix socket, in the same run.
//!
//! Each measurement starts a fresh child process ([`crate::spawn`]: this binary again, so it
//! can map files, connect sockets and start iceoryx2 as any client would) pinned to one cpu,
//! while a fresh thread of this process pinned to the other runs the other side. The sides
//! are one driver function each ([`rtt_lead`] / [`rtt_echo`], [`oneway_send`] /
//! [`oneway_recv`], [`wake_send`] / [`wake_recv`], [`stream_send`] / [`stream_recv`]), written once over the small traits
//! [`Tx`] and [`Rx`], which each transport implements at the bottom of this file from its
//! module: [`corelane`] (whose `CorelaneTx`/`CorelaneRx` are all a later swap to the tensor
//! pool's client libraries touches), [`iceoryx`], [`unix`].
//!
//! Everything a measurement makes lives in one directory under /dev/shm named after this
//! process (`corelane-perf-handoff-<pid>/`), and iceoryx2's shared-memory files carry the
//! prefix `corelane-perf-handoff-<pid>-m<n>-`; both are removed after each measurement, on
//! a failure before the run exits, and, for runs that crashed, by the sweep at the start of
//! the next run (entries whose pid is no longer a corelane-perf process).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use super::{Plan, Suite};
use crate::floor::{self, Ratios};
use crate::pair::Waiter;
use crate::pin::{pin_current, Pair};
use crate::report::{Baseline, Goal, Measure, Peer, Report, Row};
use crate::spawn::{self, Link, Watch, EXIT_FAILED, EXIT_WRONG};
use crate::summary::{accumulate, histogram, histogram_of, median, Rounds, Summary};

mod corelane;
mod iceoryx;
mod unix;

use corelane::{CorelaneRx, CorelaneTx};
use iceoryx::{IceoryxRx, IceoryxTx};
use unix::{UnixRx, UnixTx};

pub const SUITE: Suite = Suite {
    name: "handoff",
    summary: "tensor-slot handoff between two processes: corelane vs iceoryx2 vs a Unix socket",
    help: HELP,
    run,
    child: Some(child),
};

const HELP: &str = "    Implementations (producer and consumer always in two processes):
      corelane           corelane_rings::seqlock over one header ring and one payload pool per
                         stream, in files in /dev/shm sized with ftruncate to
                         shm::header_ring_len / shm::payload_pool_len and laid out with
                         Stream::create (the driver's part, done by the harness); each side
                         maps them with Mapping::open and Stream::open. Producer:
                         Publisher::claim, write_payload, finish, commit. Consumer:
                         Subscriber::poll into its own buffer (both seqlock checks and the
                         header validation: the validated copy-out read, the default).
      iceoryx2           iceoryx2 0.10 publish-subscribe, ipc::Service, payload [u8] with
                         initial_max_slice_len = the payload size. Producer: loan_slice_uninit,
                         write_from_slice, send. Consumer: receive, busy, and the payload
                         copied out into its own buffer before the sample is released (to
                         match corelane's copy-out). Subscriber buffer = the stream depth
                         below, no history, safe overflow (lossy, like corelane).
      unix-socket        a connected AF_UNIX stream per direction, non-blocking, both sides
                         spinning on EAGAIN; u32 length + payload in one writev, read exactly
                         (length, then payload into the consumer's buffer).
    Payloads 64B, 4KiB, 1MiB. Stream depth (corelane nslots = iceoryx2 subscriber buffer):
    256, 256 and 16 messages. Every message carries its sequence number in its first and last
    8 bytes (the consumer checks both: a torn or reordered message stops the run, exit 3) and,
    in the one-way cases, the producer's clock in bytes 8-15; the rest is a fixed pattern.
    Each side copies once: the producer from its buffer into the transport, the consumer out
    of it into its buffer (the echo of a round trip sends the buffer it received into).

    Cases:
      rtt-64B, rtt-4KiB, rtt-1MiB
                         Round trip: the parent (cpu A) sends message n on stream 1, the
                         child (cpu B) receives it and sends it back on stream 2, the parent
                         receives it. One message in flight; one Instant::now() per round trip
                         (consecutive gaps, as in spsc). Ratios: to the floor of the same
                         round, and corelane's to each peer's of the same round.
      oneway-64B, oneway-4KiB, oneway-1MiB
                         One way: the child (cpu A) writes CLOCK_MONOTONIC ns into the message
                         and sends it; the parent (cpu B) takes the clock right after the copy
                         out and records the difference (one clock for all cpus). The parent
                         then acknowledges on the harness's link (a separate shared ring, not
                         timed) and the child sends the next: one message in flight.
      throughput-64B, throughput-4KiB, throughput-1MiB
                         Messages received per second by a consumer that copies each out (and
                         GB/s = that x payload): the child sends warm-up + N messages as fast as
                         the transport takes them while the consumer keeps up: at most half the
                         stream depth ahead of what the consumer acknowledged (on the link,
                         every quarter of that window; the same for every transport). The
                         parent times from the first message past the warm-up to the last one.
                         corelane and iceoryx2 never make a producer wait by themselves (an
                         overwritten slot / overflowed sample is lost), so the window is what
                         keeps them lossless; the consumer still counts every sequence number
                         it never received in the timed window, reported as rows
                         throughput-*-dropped (sum over rounds; 0 expected). The Unix socket
                         also blocks the writer when its buffer is full.
    Per round (default; --quick in brackets): rtt and one-way 64B/4KiB 2,000 [200] warm-up +
    20,000 [2,000] timed, 1MiB 100 [10] + 1,000 [100]; throughput 64B 100,000 [10,000] +
    1,000,000 [100,000], 4KiB 20,000 [2,000] + 200,000 [20,000], 1MiB 200 [20] + 2,000 [200].
      wake-64B           Wake-up: as oneway-64B, but the consumer sleeps until the message
                         arrives instead of spinning, and the producer sleeps 150 us
                         (thread::sleep) before it stamps and sends each message, after the
                         previous ack, so the consumer is parked every time. The sample is the
                         consumer's clock after it woke and copied the message out minus the
                         producer's stamp. corelane: the stream's corelane.wake sidecar (64
                         zero bytes beside the ring, mapped read-write by both sides,
                         WakeRegion::open); the producer rings Doorbell::ring after each commit
                         (as pool::Claim::commit), the consumer Doorbell::park(Subscriber::ready,
                         10 ms slices) then polls (as pool::Consumer::wait). iceoryx2: an event
                         service beside the publish-subscribe one; the producer notifies after
                         each send, the consumer receives and, finding nothing, sleeps in
                         Listener::timed_wait (10 ms slices), then receives. unix-socket: the
                         consumer's socket in blocking mode (10 ms read timeout), a blocking
                         read. Only this case rings, notifies or blocks; the others spin.
                         200 [20] warm-up + 2,000 [200] timed per round. No goal.
";

/// The implementations, in table order; each round a case starts one further along.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Corelane,
    Iceoryx2,
    UnixSocket,
}

const IMPLS: [Impl; 3] = [Impl::Corelane, Impl::Iceoryx2, Impl::UnixSocket];

/// Whose latencies the peer ratios are of, and the peers they divide by.
const SUBJECT: Impl = Impl::Corelane;

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Corelane => "corelane",
            Impl::Iceoryx2 => "iceoryx2",
            Impl::UnixSocket => "unix-socket",
        }
    }

    fn api(self, kind: Kind) -> &'static str {
        if kind == Kind::Wake {
            return match self {
                Impl::Corelane => {
                    "claim..commit+Doorbell::ring / Doorbell::park(Subscriber::ready)+poll"
                }
                Impl::Iceoryx2 => "send+Notifier::notify / receive, else Listener::timed_wait",
                Impl::UnixSocket => "writev(len+payload) / blocking read exact",
            };
        }
        match self {
            Impl::Corelane => {
                "Publisher::claim+write_payload+finish+commit / Subscriber::poll (copy out)"
            }
            Impl::Iceoryx2 => "loan_slice_uninit+write_from_slice+send / receive + copy out",
            Impl::UnixSocket => "writev(len+payload) / read exact, non-blocking, spin on EAGAIN",
        }
    }

    fn dropped_api(self) -> &'static str {
        match self {
            Impl::Corelane => "seqs never received in the timed window (Subscriber gap + late)",
            Impl::Iceoryx2 => "seqs never received in the timed window (safe overflow)",
            Impl::UnixSocket => "seqs never received in the timed window (none can be)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rtt,
    Oneway,
    /// One way to a consumer that sleeps until the message arrives.
    Wake,
    Throughput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Size {
    B64,
    K4,
    M1,
}

impl Size {
    const ALL: [Size; 3] = [Size::B64, Size::K4, Size::M1];

    fn bytes(self) -> usize {
        match self {
            Size::B64 => 64,
            Size::K4 => 4 << 10,
            Size::M1 => 1 << 20,
        }
    }

    /// Messages a stream holds: corelane's nslots, iceoryx2's subscriber buffer.
    fn depth(self) -> u32 {
        match self {
            Size::B64 | Size::K4 => 256,
            Size::M1 => 16,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Size::B64 => "64B",
            Size::K4 => "4KiB",
            Size::M1 => "1MiB",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    kind: Kind,
    size: Size,
    /// The name of the dropped-messages row of a throughput case.
    dropped: &'static str,
}

const fn case(name: &'static str, kind: Kind, size: Size) -> Case {
    Case { name, kind, size, dropped: "" }
}

const fn stream_case(name: &'static str, size: Size, dropped: &'static str) -> Case {
    Case { name, kind: Kind::Throughput, size, dropped }
}

const CASES: [Case; 10] = [
    case("rtt-64B", Kind::Rtt, Size::B64),
    case("rtt-4KiB", Kind::Rtt, Size::K4),
    case("rtt-1MiB", Kind::Rtt, Size::M1),
    case("oneway-64B", Kind::Oneway, Size::B64),
    case("oneway-4KiB", Kind::Oneway, Size::K4),
    case("oneway-1MiB", Kind::Oneway, Size::M1),
    case("wake-64B", Kind::Wake, Size::B64),
    stream_case("throughput-64B", Size::B64, "throughput-64B-dropped"),
    stream_case("throughput-4KiB", Size::K4, "throughput-4KiB-dropped"),
    stream_case("throughput-1MiB", Size::M1, "throughput-1MiB-dropped"),
];

/// Warm-up and timed messages per measurement of `case` (module HELP).
fn counts(case: Case, quick: bool) -> (u64, u64) {
    let (warmup, timed) = match (case.kind, case.size) {
        (Kind::Rtt | Kind::Oneway, Size::B64 | Size::K4) => (2_000, 20_000),
        (Kind::Rtt | Kind::Oneway, Size::M1) => (100, 1_000),
        (Kind::Wake, _) => (200, 2_000),
        (Kind::Throughput, Size::B64) => (100_000, 1_000_000),
        (Kind::Throughput, Size::K4) => (20_000, 200_000),
        (Kind::Throughput, Size::M1) => (200, 2_000),
    };
    if quick {
        (warmup / 10, timed / 10)
    } else {
        (warmup, timed)
    }
}

// ---------------------------------------------------------------------------------------------
// The run: rounds, cells, rows.

/// One (implementation, case) accumulated over rounds.
struct Cell {
    imp: Impl,
    case: Case,
    acc: Acc,
}

enum Acc {
    Latency { all: Histogram<u64>, rounds: Vec<Summary> },
    Rate { rates: Vec<f64>, dropped: u64 },
}

/// What one measurement returns.
enum Measured {
    Latency(Vec<u64>),
    Rate(Streamed),
}

/// A throughput measurement: messages received per second in the timed window, and the
/// sequence numbers it never saw there.
#[derive(Clone, Copy, Debug)]
struct Streamed {
    rate: f64,
    dropped: u64,
}

fn run(plan: &Plan) -> Report {
    let scratch = Scratch::new().unwrap_or_else(|e| {
        eprintln!("error: handoff: {e}");
        std::process::exit(EXIT_FAILED)
    });
    spawn::on_abort(remove_own);
    let mut cells: Vec<Cell> = CASES
        .iter()
        .filter(|case| plan.wants(case.name))
        .flat_map(|&case| IMPLS.iter().map(move |&imp| (imp, case)))
        .filter(|(imp, _)| plan.peers || *imp == SUBJECT)
        .map(|(imp, case)| Cell {
            imp,
            case,
            acc: match case.kind {
                Kind::Rtt | Kind::Oneway | Kind::Wake => {
                    Acc::Latency { all: histogram(), rounds: Vec::new() }
                }
                Kind::Throughput => Acc::Rate { rates: Vec::new(), dropped: 0 },
            },
        })
        .collect();

    let (floor_warmup, floor_samples) = counts(CASES[0], plan.quick);
    let mut floor_all = histogram();
    let mut floor_rounds = Vec::new();
    for round in 0..plan.rounds as usize {
        plan.before_round(round);
        crate::progress::round(SUITE.name, round, plan.rounds);
        let floor_round = histogram_of(&floor::measure(&plan.pair, floor_warmup, floor_samples));
        accumulate(&mut floor_all, &floor_round);
        floor_rounds.push(Summary::of(&floor_round));
        for case in CASES {
            let imps: Vec<Impl> =
                cells.iter().filter(|c| c.case.name == case.name).map(|c| c.imp).collect();
            for k in 0..imps.len() {
                let imp = imps[(k + round) % imps.len()];
                let cell = cells
                    .iter_mut()
                    .find(|c| c.imp == imp && c.case.name == case.name)
                    .expect("imps lists this case's cells");
                match (measure(&scratch, plan, imp, case), &mut cell.acc) {
                    (Measured::Latency(samples), Acc::Latency { all, rounds }) => {
                        let this_round = histogram_of(&samples);
                        rounds.push(Summary::of(&this_round));
                        accumulate(all, &this_round);
                    }
                    (Measured::Rate(s), Acc::Rate { rates, dropped }) => {
                        rates.push(s.rate);
                        *dropped += s.dropped;
                    }
                    _ => unreachable!("measure returns the kind of result its case's Acc holds"),
                }
            }
        }
    }
    crate::progress::done();
    drop(scratch);
    report(plan, cells, floor_all, &floor_rounds)
}

/// The rows (latencies with their floor and peer ratios, rates, dropped counts) and goals.
fn report(plan: &Plan, cells: Vec<Cell>, floor_all: Histogram<u64>, floor: &[Summary]) -> Report {
    let rounds_of = |imp: Impl, case: &str| -> Vec<Summary> {
        cells
            .iter()
            .find(|c| c.imp == imp && c.case.name == case)
            .and_then(|c| match &c.acc {
                Acc::Latency { rounds, .. } => Some(rounds.clone()),
                Acc::Rate { .. } => None,
            })
            .unwrap_or_default()
    };
    let mut rows = Vec::new();
    let mut dropped_rows = Vec::new();
    for cell in &cells {
        let measure = match &cell.acc {
            Acc::Latency { all, rounds } => {
                let mut to_floor = Ratios::default();
                for (round, base) in rounds.iter().zip(floor) {
                    to_floor.push(round, base);
                }
                let peers = if cell.imp == SUBJECT && plan.peers {
                    IMPLS
                        .into_iter()
                        .filter(|&peer| peer != SUBJECT)
                        .map(|peer| {
                            let mut ratios = Ratios::default();
                            for (round, base) in rounds.iter().zip(&rounds_of(peer, cell.case.name))
                            {
                                ratios.push(round, base);
                            }
                            Peer { imp: peer.name(), p50: ratios.p50(), p99: ratios.p99() }
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                Measure::Latency {
                    summary: Summary::of(all),
                    rounds: Rounds::new(all.clone(), rounds.clone()),
                    ratio_p50: to_floor.p50(),
                    ratio_p99: to_floor.p99(),
                    baseline: Baseline::Floor,
                    peers,
                }
            }
            Acc::Rate { rates, dropped } => {
                dropped_rows.push(Row {
                    imp: cell.imp.name(),
                    case: cell.case.dropped,
                    api: cell.imp.dropped_api(),
                    measure: Measure::Value { value: *dropped, unit: "msgs" },
                });
                Measure::Rate {
                    median: median(rates).unwrap_or(0.0),
                    min: rates.iter().copied().fold(f64::INFINITY, f64::min),
                    max: rates.iter().copied().fold(0.0, f64::max),
                    rounds: rates.len(),
                    bytes_per_item: Some(cell.case.size.bytes() as u64),
                }
            }
        };
        let api = cell.imp.api(cell.case.kind);
        rows.push(Row { imp: cell.imp.name(), case: cell.case.name, api, measure });
    }
    rows.extend(dropped_rows);
    let goals = goals(&rows);
    let sizes: serde_json::Map<String, serde_json::Value> = CASES
        .iter()
        .map(|c| {
            let (warmup, timed) = counts(*c, plan.quick);
            (c.name.to_string(), json!({"warmup": warmup, "timed": timed}))
        })
        .collect();
    let depth: serde_json::Map<String, serde_json::Value> =
        Size::ALL.iter().map(|s| (s.label().to_string(), json!(s.depth()))).collect();
    Report {
        suite: SUITE.name,
        floor: Some(Summary::of(&floor_all)),
        rows,
        goals,
        settings: json!({
            "rounds": plan.rounds,
            "quick": plan.quick,
            "messages_per_round": sizes,
            "stream_depth": depth,
            "processes": "a fresh child process (this binary, spawned) per measurement, pinned; \
                          rtt: parent cpu A leads, child cpu B echoes; oneway, wake and throughput: \
                          child cpu A produces, parent cpu B consumes and measures",
            "wait": "busy spin on every side, except the wake case's consumer, which sleeps \
                     (corelane futex doorbell, iceoryx2 listener, blocking socket read)",
            "wake_pause_us": WAKE_PAUSE.as_micros() as u64,
            "copies": "producer copies its buffer in, consumer copies out into its own buffer",
            "oneway_clock": "CLOCK_MONOTONIC ns (clock_gettime) written by the producer, read by \
                             the consumer after its copy-out; paced by an untimed ack",
            "shm_dir": "/dev/shm",
            "check_every_turns": spawn::CHECK_EVERY,
            "limit_s": spawn::LIMIT.as_secs(),
        }),
    }
}

/// The goals, judged on this run's rows: corelane's 64-byte round trip within 1.5x
/// of the floor at p50 and under 2 us at p99; corelane at least 2x faster than iceoryx2 (a
/// ratio of at most 0.5) at p50 and p99 in every latency case but the wake case (the issue
/// gives it no goal; its rows are reported only).
fn goals(rows: &[Row]) -> Vec<Goal> {
    let latency = |imp: &str, case: &str| {
        rows.iter().find_map(|r| match &r.measure {
            Measure::Latency { summary, ratio_p50, peers, .. }
                if r.imp == imp && r.case == case =>
            {
                Some((*summary, *ratio_p50, peers.clone()))
            }
            _ => None,
        })
    };
    let mut goals = Vec::new();
    let subject = SUBJECT.name();
    if let Some((summary, ratio_p50, _)) = latency(subject, "rtt-64B") {
        goals.push(Goal::at_most(
            "corelane rtt-64B p50 / floor p50 (median over rounds)",
            ratio_p50,
            1.5,
            "x",
        ));
        goals.push(Goal::at_most(
            "corelane rtt-64B p99 (ns)",
            Some(summary.p99 as f64),
            1999.0,
            " ns",
        ));
    }
    for case in CASES.iter().filter(|c| matches!(c.kind, Kind::Rtt | Kind::Oneway)) {
        if let Some((_, _, peers)) = latency(subject, case.name) {
            // Without the peer (`--no-peers`) there is nothing to judge.
            let Some(peer) = peers.iter().find(|p| p.imp == Impl::Iceoryx2.name()) else {
                continue;
            };
            for (at, ratio) in [("p50", peer.p50), ("p99", peer.p99)] {
                goals.push(Goal::at_most(
                    &format!("corelane {} {at} / iceoryx2 {at} (2x faster)", case.name),
                    ratio,
                    0.5,
                    "x",
                ));
            }
        }
    }
    goals
}

// ---------------------------------------------------------------------------------------------
// One measurement: the parent's side here, the child's in `child`.

/// What a side needs to reach one stream: its directory (with the files or sockets), which
/// stream, the payload size, the depth, and the iceoryx2 prefix of the measurement.
#[derive(Clone, Debug)]
pub struct Channel {
    pub dir: PathBuf,
    /// 1: the parent's (rtt) or the producer's stream; 2: the echo's stream back.
    pub index: u32,
    pub len: usize,
    pub depth: u32,
    pub iceoryx_prefix: String,
    /// The wake case's channel: the consumer sleeps until a message arrives, and the
    /// transport makes what that needs (corelane's wake file, iceoryx2's event service, a
    /// blocking socket).
    pub wake: bool,
}

/// One measurement as both processes see it: what the child is told on its command line.
#[derive(Clone, Debug)]
struct Job {
    imp: Impl,
    case: Case,
    dir: PathBuf,
    iceoryx_prefix: String,
    warmup: u64,
    timed: u64,
}

impl Job {
    fn channel(&self, index: u32) -> Channel {
        Channel {
            dir: self.dir.clone(),
            index,
            len: self.case.size.bytes(),
            depth: self.case.size.depth(),
            iceoryx_prefix: self.iceoryx_prefix.clone(),
            wake: self.case.kind == Kind::Wake,
        }
    }

    fn label(&self) -> (&'static str, &'static str) {
        (self.imp.name(), self.case.name)
    }

    fn args(&self) -> Vec<String> {
        vec![
            self.imp.name().into(),
            self.case.name.into(),
            self.dir.to_string_lossy().into_owned(),
            self.iceoryx_prefix.clone(),
            self.warmup.to_string(),
            self.timed.to_string(),
        ]
    }

    fn parse(args: &[String]) -> Result<Self, String> {
        let [imp, case, dir, prefix, warmup, timed] = args else {
            return Err(format!(
                "expected <impl> <case> <dir> <prefix> <warmup> <timed>, saw {args:?}"
            ));
        };
        let imp = IMPLS.into_iter().find(|i| i.name() == imp).ok_or(format!("no impl {imp:?}"))?;
        let case = CASES.into_iter().find(|c| c.name == case).ok_or(format!("no case {case:?}"))?;
        let count = |s: &str| s.parse::<u64>().map_err(|_| format!("bad count {s:?}"));
        Ok(Self {
            imp,
            case,
            dir: PathBuf::from(dir),
            iceoryx_prefix: prefix.clone(),
            warmup: count(warmup)?,
            timed: count(timed)?,
        })
    }
}

/// One measurement of `imp` on `case`: a fresh directory, streams, child and pinned thread.
/// A failure ends the run (exit status 3 for a wrong message, else 4), cleaned up.
fn measure(scratch: &Scratch, plan: &Plan, imp: Impl, case: Case) -> Measured {
    let what = format!("{} {}", imp.name(), case.name);
    let (dir, prefix) = scratch.measurement().unwrap_or_else(|e| setup_failed(&what, &e));
    let _cleanup = Cleanup { dir: dir.clone(), prefix: prefix.clone() };
    let (warmup, timed) = counts(case, plan.quick);
    let job = Job { imp, case, dir, iceoryx_prefix: prefix, warmup, timed };
    if imp == Impl::Corelane {
        let streams: &[u32] = if case.kind == Kind::Rtt { &[1, 2] } else { &[1] };
        for &index in streams {
            corelane::lay_out(&job.channel(index)).unwrap_or_else(|e| setup_failed(&what, &e));
        }
    }
    let mut link = Link::create(&job.dir).unwrap_or_else(|e| setup_failed(&what, &e));
    let Pair { a, b, .. } = plan.pair;
    let (parent_cpu, child_cpu) = if case.kind == Kind::Rtt { (a, b) } else { (b, a) };
    let mut child = spawn::spawn(SUITE.name, child_cpu, &job.args(), &what)
        .unwrap_or_else(|e| setup_failed(&what, &e));
    let watch = child.watch();
    let measured = std::thread::scope(|s| {
        let side = s.spawn(|| {
            pin_current(parent_cpu);
            match imp {
                Impl::Corelane => parent_side::<Corelane>(&watch, &mut link, &job),
                Impl::Iceoryx2 => parent_side::<Iceoryx>(&watch, &mut link, &job),
                Impl::UnixSocket => parent_side::<UnixSocket>(&watch, &mut link, &job),
            }
        });
        side.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    if let Err((code, why)) = child.reap() {
        spawn::abort(&what, code, &why);
    }
    measured
}

/// Ends the run: measurement `what` could not be set up.
fn setup_failed<T>(what: &str, why: &str) -> T {
    spawn::abort(what, EXIT_FAILED, why)
}

/// The parent's side: rtt leads (stream 1 out, stream 2 back); the others consume stream 1.
fn parent_side<T: Transport>(w: &Watch, link: &mut Link, job: &Job) -> Measured {
    let measured = match job.case.kind {
        Kind::Rtt => {
            let mut tx = T::tx(w, &job.channel(1));
            let mut rx = T::rx(w, &job.channel(2));
            link.start(w);
            Measured::Latency(rtt_lead(w, job, &mut tx, &mut rx))
        }
        Kind::Oneway => {
            let mut rx = T::rx(w, &job.channel(1));
            link.start(w);
            Measured::Latency(oneway_recv(w, job, &mut rx, link))
        }
        Kind::Wake => {
            let mut rx = T::rx(w, &job.channel(1));
            link.start(w);
            Measured::Latency(wake_recv(w, job, &mut rx, link))
        }
        Kind::Throughput => {
            let mut rx = T::rx(w, &job.channel(1));
            link.start(w);
            Measured::Rate(stream_recv(w, job, &mut rx, link))
        }
    };
    link.bye(w);
    measured
}

/// The child process's entry (`Suite::child`): the other side of the measurement in `args`.
fn child(w: &Watch, args: &[String]) -> Result<(), (i32, String)> {
    let job = Job::parse(args).map_err(|e| (2, e))?;
    let mut link = Link::open(&job.dir).map_err(|e| (EXIT_FAILED, e))?;
    match job.imp {
        Impl::Corelane => child_side::<Corelane>(w, &mut link, &job),
        Impl::Iceoryx2 => child_side::<Iceoryx>(w, &mut link, &job),
        Impl::UnixSocket => child_side::<UnixSocket>(w, &mut link, &job),
    }
    Ok(())
}

/// The child's side: rtt echoes (stream 1 in, stream 2 back); the others produce stream 1.
/// Endpoints live until the parent's bye.
fn child_side<T: Transport>(w: &Watch, link: &mut Link, job: &Job) {
    match job.case.kind {
        Kind::Rtt => {
            let mut rx = T::rx(w, &job.channel(1));
            let mut tx = T::tx(w, &job.channel(2));
            link.ready(w);
            rtt_echo(w, job, &mut rx, &mut tx);
            link.wait_bye(w);
        }
        Kind::Oneway => {
            let mut tx = T::tx(w, &job.channel(1));
            link.ready(w);
            oneway_send(w, job, &mut tx, link);
            link.wait_bye(w);
        }
        Kind::Wake => {
            let mut tx = T::tx(w, &job.channel(1));
            link.ready(w);
            wake_send(w, job, &mut tx, link);
            link.wait_bye(w);
        }
        Kind::Throughput => {
            let mut tx = T::tx(w, &job.channel(1));
            link.ready(w);
            stream_send(w, job, &mut tx, link);
            link.wait_bye(w);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sides: each one loop, the same for every transport.

/// The parent's side of a round trip: message n out on `tx`, back on `rx`, checked. One
/// sample (ns) per timed round trip.
fn rtt_lead(w: &Watch, job: &Job, tx: &mut impl Tx, rx: &mut impl Rx) -> Vec<u64> {
    let len = job.case.size.bytes();
    let (mut out, mut back) = (pattern(len), pattern(len));
    crate::pair::time_round_trips(job.warmup, job.timed, |seq| {
        stamp(&mut out, seq, 0);
        tx.put(w, &out);
        let got = take_spin(w, rx, &mut back);
        check(w, job, &back[..got], len, seq);
    })
}

/// The child's side of a round trip: receive message n, check it, send the buffer back.
fn rtt_echo(w: &Watch, job: &Job, rx: &mut impl Rx, tx: &mut impl Tx) {
    let len = job.case.size.bytes();
    let mut buf = pattern(len);
    for seq in 0..job.warmup + job.timed {
        let got = take_spin(w, rx, &mut buf);
        check(w, job, &buf[..got], len, seq);
        tx.put(w, &buf[..got]);
    }
}

/// The producer of a one-way measurement: the clock into message n, send, wait for its ack.
fn oneway_send(w: &Watch, job: &Job, tx: &mut impl Tx, link: &mut Link) {
    let mut out = pattern(job.case.size.bytes());
    for seq in 0..job.warmup + job.timed {
        stamp(&mut out, seq, now_ns());
        tx.put(w, &out);
        link.wait_ack(w, seq);
    }
}

/// The consumer of a one-way measurement: receive, clock, check, record, ack. One sample (ns)
/// per timed message: the consumer's clock after the copy-out minus the producer's in it.
fn oneway_recv(w: &Watch, job: &Job, rx: &mut impl Rx, link: &mut Link) -> Vec<u64> {
    let len = job.case.size.bytes();
    let mut buf = pattern(len);
    // Faulted in before timing (vec! writes every element).
    let mut samples = vec![0u64; job.timed as usize];
    for seq in 0..job.warmup + job.timed {
        let got = take_spin(w, rx, &mut buf);
        let now = now_ns();
        check(w, job, &buf[..got], len, seq);
        if let Some(timed) = seq.checked_sub(job.warmup) {
            samples[timed as usize] = now.saturating_sub(word(&buf, TIME_AT));
        }
        link.ack(w, seq);
    }
    samples
}

/// How long the producer of the wake case sleeps before each message: long enough that the
/// consumer, back from its ack, is parked again when the message comes.
const WAKE_PAUSE: Duration = Duration::from_micros(150);

/// The longest a sleeping consumer sleeps at a time before it looks again (and checks on the
/// other process): as the tensor pool's consumer parks in slices of 10 ms.
pub const PARK_SLICE: Duration = Duration::from_millis(10);

/// The producer of the wake case: sleeps [`WAKE_PAUSE`], the clock into message n, send and
/// wake the consumer, wait for its ack.
fn wake_send(w: &Watch, job: &Job, tx: &mut impl Tx, link: &mut Link) {
    let mut out = pattern(job.case.size.bytes());
    for seq in 0..job.warmup + job.timed {
        std::thread::sleep(WAKE_PAUSE);
        stamp(&mut out, seq, now_ns());
        tx.put_waking(w, &out);
        link.wait_ack(w, seq);
    }
}

/// The consumer of the wake case: sleep until a message is there, take it, clock, check,
/// record, ack. One sample (ns) per timed message: the consumer's clock after it woke and
/// copied the message out minus the producer's in it.
fn wake_recv(w: &Watch, job: &Job, rx: &mut impl Rx, link: &mut Link) -> Vec<u64> {
    let len = job.case.size.bytes();
    let mut buf = pattern(len);
    let mut samples = vec![0u64; job.timed as usize];
    for seq in 0..job.warmup + job.timed {
        let got = loop {
            match rx.take_parked(w, &mut buf) {
                Got::Message(n) => break n,
                Got::Empty => w.check(),
                Got::Dropped => w.fail(
                    EXIT_WRONG,
                    "the transport dropped a message while only one was in flight",
                ),
            }
        };
        let now = now_ns();
        check(w, job, &buf[..got], len, seq);
        if let Some(timed) = seq.checked_sub(job.warmup) {
            samples[timed as usize] = now.saturating_sub(word(&buf, TIME_AT));
        }
        link.ack(w, seq);
    }
    samples
}

/// The producer of a stream: messages 0..warmup + timed, as fast as `tx` takes them while
/// the consumer keeps up: never more than [`window`] messages ahead of the last one the
/// consumer acknowledged (acknowledgements come every [`ack_every`] messages on the link).
fn stream_send(w: &Watch, job: &Job, tx: &mut impl Tx, link: &mut Link) {
    let mut out = pattern(job.case.size.bytes());
    let window = window(job.case.size);
    let (mut consumed, mut turns) = (0u64, 0);
    for seq in 0..job.warmup + job.timed {
        while seq >= consumed + window {
            match link.take_ack(w) {
                Some(acked) => consumed = consumed.max(acked + 1),
                None => w.turn(&mut turns),
            }
        }
        stamp(&mut out, seq, 0);
        tx.put(w, &out);
    }
}

/// The consumer of a stream: takes messages until the last one, each checked whole and in
/// increasing order, acknowledging every [`ack_every`]; times from the first past the warm-up
/// to the last, and counts the sequence numbers skipped in between (a lossy transport that
/// lost one: none should, inside the window; a reordered one stops the run).
fn stream_recv(w: &Watch, job: &Job, rx: &mut impl Rx, link: &mut Link) -> Streamed {
    let len = job.case.size.bytes();
    let last = job.warmup + job.timed - 1;
    let every = ack_every(job.case.size);
    let mut buf = pattern(len);
    let (mut next, mut received, mut dropped, mut unacked) = (0u64, 0u64, 0u64, 0u64);
    let mut start = None;
    let mut turns = 0;
    loop {
        let got = match rx.take(w, &mut buf) {
            Got::Message(n) => n,
            Got::Empty | Got::Dropped => {
                w.turn(&mut turns);
                continue;
            }
        };
        turns = 0;
        let seq = word(&buf, SEQ_AT);
        if got != len || word(&buf, len - 8) != seq {
            wrong(w, job, &buf[..got], len, next);
        }
        if seq < next {
            let (imp, case) = job.label();
            w.out_of_order(imp, case, next, seq);
        }
        match start {
            Some(_) => {
                dropped += seq - next;
                received += 1;
            }
            // The first message past the warm-up starts the clock; it is not counted.
            None if seq >= job.warmup => start = Some(Instant::now()),
            None => {}
        }
        next = seq + 1;
        if seq == last {
            break;
        }
        unacked += 1;
        if unacked == every {
            link.ack(w, seq);
            unacked = 0;
        }
    }
    let elapsed = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    Streamed { rate: received as f64 / elapsed.max(1e-9), dropped }
}

/// How far a stream's producer may run ahead of the consumer: half the stream's depth, so it
/// never writes a slot the consumer may still be reading.
fn window(size: Size) -> u64 {
    u64::from(size.depth() / 2)
}

/// How often a stream's consumer acknowledges: four times per window.
fn ack_every(size: Size) -> u64 {
    (window(size) / 4).max(1)
}

/// Waits for the next message of a stream with one in flight: a drop there is a bug.
#[inline(always)]
fn take_spin(w: &Watch, rx: &mut impl Rx, buf: &mut [u8]) -> usize {
    let mut turns = 0;
    loop {
        match rx.take(w, buf) {
            Got::Message(n) => return n,
            Got::Empty => w.turn(&mut turns),
            Got::Dropped => {
                w.fail(EXIT_WRONG, "the transport dropped a message while only one was in flight")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

/// Where a message carries its sequence number (and again in its last 8 bytes).
const SEQ_AT: usize = 0;
/// Where a one-way message carries the producer's clock.
const TIME_AT: usize = 8;

/// A message buffer of `len` bytes (at least 64): a fixed pattern, faulted in.
fn pattern(len: usize) -> Vec<u8> {
    assert!(len >= 64, "messages are at least 64 bytes");
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[inline(always)]
fn stamp(buf: &mut [u8], seq: u64, sent_ns: u64) {
    let len = buf.len();
    buf[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_le_bytes());
    buf[TIME_AT..TIME_AT + 8].copy_from_slice(&sent_ns.to_le_bytes());
    buf[len - 8..].copy_from_slice(&seq.to_le_bytes());
}

#[inline(always)]
fn word(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Ends the run unless `msg` is message `seq` of `len` bytes, whole (head and tail agree).
#[inline(always)]
fn check(w: &Watch, job: &Job, msg: &[u8], len: usize, seq: u64) {
    if msg.len() != len || word(msg, SEQ_AT) != seq || word(msg, len - 8) != seq {
        wrong(w, job, msg, len, seq);
    }
}

/// Says what is wrong with `msg` (expected: `len` bytes, message `expected`) and ends the run.
#[cold]
#[inline(never)]
fn wrong(w: &Watch, job: &Job, msg: &[u8], len: usize, expected: u64) -> ! {
    let (imp, case) = job.label();
    if msg.len() != len {
        w.fail(
            EXIT_WRONG,
            &format!("{imp} {case}: a message of {} bytes, expected {len}", msg.len()),
        );
    }
    let (head, tail) = (word(msg, SEQ_AT), word(msg, len - 8));
    if head != tail {
        w.fail(
            EXIT_WRONG,
            &format!("{imp} {case}: a torn message: sequence number {head} at its start, {tail} at its end"),
        );
    }
    w.out_of_order(imp, case, expected, head)
}

/// `CLOCK_MONOTONIC` in ns, the clock every process and cpu shares (`Instant` reads the same
/// clock but does not show its value).
#[inline(always)]
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

// ---------------------------------------------------------------------------------------------
// The transports, seen through two small traits.

/// What `Rx::take` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    /// A message of this many bytes is in the buffer.
    Message(usize),
    /// Nothing yet.
    Empty,
    /// A message was lost (lossy transports; the sequence numbers show which).
    Dropped,
}

/// A transport's sending end: one message, copied in. Errors end the run through `w`.
trait Tx {
    fn put(&mut self, w: &Watch, payload: &[u8]);
    /// `put`, then whatever wakes a consumer sleeping in [`Rx::take_parked`] (wake case only).
    fn put_waking(&mut self, w: &Watch, payload: &[u8]);
}

/// A transport's receiving end: the next message copied into `buf`, if any.
trait Rx {
    fn take(&mut self, w: &Watch, buf: &mut [u8]) -> Got;
    /// `take`, sleeping (at most about [`PARK_SLICE`]) until a message may be there: `Empty`
    /// when none came in that time (wake case only).
    fn take_parked(&mut self, w: &Watch, buf: &mut [u8]) -> Got;
}

/// How to make a transport's ends for a channel.
trait Transport {
    type Tx: Tx;
    type Rx: Rx;
    fn tx(w: &Watch, ch: &Channel) -> Self::Tx;
    fn rx(w: &Watch, ch: &Channel) -> Self::Rx;
}

struct Corelane;
struct Iceoryx;
struct UnixSocket;

fn or_fail<T>(w: &Watch, made: Result<T, String>) -> T {
    made.unwrap_or_else(|e| w.fail(EXIT_FAILED, &e))
}

impl Transport for Corelane {
    type Tx = CorelaneTx;
    type Rx = CorelaneRx;
    fn tx(w: &Watch, ch: &Channel) -> CorelaneTx {
        or_fail(w, CorelaneTx::new(ch))
    }
    fn rx(w: &Watch, ch: &Channel) -> CorelaneRx {
        or_fail(w, CorelaneRx::new(ch))
    }
}

impl Tx for CorelaneTx {
    #[inline(always)]
    fn put(&mut self, w: &Watch, payload: &[u8]) {
        if let Err(e) = self.send(payload) {
            w.fail(EXIT_FAILED, &format!("corelane: {e}"));
        }
    }

    #[inline(always)]
    fn put_waking(&mut self, w: &Watch, payload: &[u8]) {
        if let Err(e) = self.send_ringing(payload) {
            w.fail(EXIT_FAILED, &format!("corelane: {e}"));
        }
    }
}

impl Rx for CorelaneRx {
    #[inline(always)]
    fn take(&mut self, _w: &Watch, buf: &mut [u8]) -> Got {
        got_of(self.recv(buf))
    }

    #[inline(always)]
    fn take_parked(&mut self, _w: &Watch, buf: &mut [u8]) -> Got {
        got_of(self.recv_parked(buf, PARK_SLICE))
    }
}

#[inline(always)]
fn got_of(poll: corelane_rings::seqlock::Poll) -> Got {
    use corelane_rings::seqlock::Poll;
    match poll {
        Poll::Frame(frame) => Got::Message(frame.payload_len),
        Poll::Empty => Got::Empty,
        Poll::Dropped(_) => Got::Dropped,
    }
}

impl Transport for Iceoryx {
    type Tx = IceoryxTx;
    type Rx = IceoryxRx;
    fn tx(w: &Watch, ch: &Channel) -> IceoryxTx {
        or_fail(w, IceoryxTx::new(ch))
    }
    fn rx(w: &Watch, ch: &Channel) -> IceoryxRx {
        or_fail(w, IceoryxRx::new(ch))
    }
}

impl Tx for IceoryxTx {
    #[inline(always)]
    fn put(&mut self, w: &Watch, payload: &[u8]) {
        match self.send(payload) {
            Ok(0) => w.fail(EXIT_FAILED, "iceoryx2: the sample reached no subscriber"),
            Ok(_) => {}
            Err(e) => w.fail(EXIT_FAILED, &e),
        }
    }

    #[inline(always)]
    fn put_waking(&mut self, w: &Watch, payload: &[u8]) {
        match self.send_notifying(payload) {
            Ok(0) => w.fail(EXIT_FAILED, "iceoryx2: the sample reached no subscriber"),
            Ok(_) => {}
            Err(e) => w.fail(EXIT_FAILED, &e),
        }
    }
}

impl Rx for IceoryxRx {
    #[inline(always)]
    fn take(&mut self, w: &Watch, buf: &mut [u8]) -> Got {
        match self.recv(buf) {
            Ok(Some(n)) => Got::Message(n),
            Ok(None) => Got::Empty,
            Err(e) => w.fail(EXIT_FAILED, &e),
        }
    }

    #[inline(always)]
    fn take_parked(&mut self, w: &Watch, buf: &mut [u8]) -> Got {
        match self.recv_parked(buf, PARK_SLICE) {
            Ok(Some(n)) => Got::Message(n),
            Ok(None) => Got::Empty,
            Err(e) => w.fail(EXIT_FAILED, &e),
        }
    }
}

impl Transport for UnixSocket {
    type Tx = UnixTx;
    type Rx = UnixRx;
    fn tx(w: &Watch, ch: &Channel) -> UnixTx {
        or_fail(w, UnixTx::new(w, ch))
    }
    fn rx(w: &Watch, ch: &Channel) -> UnixRx {
        or_fail(w, UnixRx::new(w, ch))
    }
}

impl Tx for UnixTx {
    #[inline(always)]
    fn put(&mut self, w: &Watch, payload: &[u8]) {
        if let Err(e) = self.send(w, payload) {
            w.fail(EXIT_FAILED, &e);
        }
    }

    /// A blocked reader wakes on the write itself.
    #[inline(always)]
    fn put_waking(&mut self, w: &Watch, payload: &[u8]) {
        self.put(w, payload);
    }
}

impl Rx for UnixRx {
    #[inline(always)]
    fn take(&mut self, w: &Watch, buf: &mut [u8]) -> Got {
        match self.recv(buf) {
            Ok(Some(n)) => Got::Message(n),
            Ok(None) => Got::Empty,
            Err(e) => w.fail(EXIT_FAILED, &e),
        }
    }

    /// The wake channel's socket blocks (with a read timeout), so `take` itself sleeps.
    #[inline(always)]
    fn take_parked(&mut self, w: &Watch, buf: &mut [u8]) -> Got {
        self.take(w, buf)
    }
}

// ---------------------------------------------------------------------------------------------
// Scratch files: one directory per run, one per measurement, and the sweep.

/// Every name this suite makes in the shared-memory directory starts with this, then the pid.
const PREFIX: &str = "corelane-perf-handoff-";

/// Where the files go: /dev/shm (tmpfs) when there is one, else the temp dir.
fn shm_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// This run's directory, made after sweeping what crashed runs left; removed on drop.
#[derive(Debug)]
struct Scratch {
    root: PathBuf,
    next: std::cell::Cell<u32>,
}

impl Scratch {
    fn new() -> Result<Self, String> {
        let swept = sweep(&shm_dir(), |pid| pid != std::process::id() && !is_perf_process(pid));
        if swept > 0 {
            eprintln!("handoff: removed {swept} files or directories left by crashed runs");
        }
        let root = shm_dir().join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        Ok(Self { root, next: std::cell::Cell::new(0) })
    }

    /// A fresh directory and iceoryx2 prefix for one measurement.
    fn measurement(&self) -> Result<(PathBuf, String), String> {
        let n = self.next.get();
        self.next.set(n + 1);
        let dir = self.root.join(format!("m{n}"));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok((dir, format!("{PREFIX}{}-m{n}-", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_own();
    }
}

/// Removes one measurement's directory and iceoryx2's files of its prefix, on drop (also when
/// a panic unwinds through the measurement).
struct Cleanup {
    dir: PathBuf,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        remove_prefixed(&shm_dir(), &self.prefix);
    }
}

/// Removes everything of this process's: its directory and every prefixed file.
fn remove_own() {
    let me = std::process::id();
    sweep(&shm_dir(), |pid| pid == me);
}

/// Removes the entries of `dir` named `PREFIX<pid>...` for which `gone(pid)`; returns how many.
fn sweep(dir: &Path, gone: impl Fn(u32) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(pid_of) else { continue };
        if gone(pid) && remove(&entry.path()) {
            removed += 1;
        }
    }
    removed
}

fn remove_prefixed(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with(prefix)) {
            remove(&entry.path());
        }
    }
}

fn remove(path: &Path) -> bool {
    if path.is_dir() {
        std::fs::remove_dir_all(path).is_ok()
    } else {
        std::fs::remove_file(path).is_ok()
    }
}

/// The pid in a name `PREFIX<pid>` or `PREFIX<pid>-...`.
fn pid_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits = rest.split('-').next()?;
    digits.parse().ok()
}

/// Whether `pid` is a live corelane-perf process (a pid reused by anything else is not).
fn is_perf_process(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end().starts_with("corelane-perf"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_sizes_and_names() {
        assert_eq!(CASES.len(), 10);
        for case in CASES {
            assert!(case.name.ends_with(case.size.label()), "{}", case.name);
            assert_eq!(case.kind == Kind::Throughput, !case.dropped.is_empty(), "{}", case.name);
            if case.kind == Kind::Throughput {
                assert_eq!(case.dropped, format!("{}-dropped", case.name));
            }
            let (warmup, timed) = counts(case, true);
            assert!(warmup > 0 && timed > 0, "{}", case.name);
        }
        let names: Vec<&str> = IMPLS.iter().map(|i| i.name()).collect();
        assert_eq!(names, ["corelane", "iceoryx2", "unix-socket"]);
        assert!(HELP.contains("rtt-64B") && HELP.contains("throughput-1MiB"));
        assert!(HELP.contains("wake-64B") && !HELP.contains("no wake-up case"));
    }

    #[test]
    fn a_job_survives_the_command_line() {
        let job = Job {
            imp: Impl::Iceoryx2,
            case: CASES[4],
            dir: PathBuf::from("/dev/shm/x/m3"),
            iceoryx_prefix: "p-".into(),
            warmup: 5,
            timed: 7,
        };
        let back = Job::parse(&job.args()).unwrap();
        assert_eq!(
            (back.imp, back.case.name, back.warmup, back.timed),
            (job.imp, job.case.name, 5, 7)
        );
        assert_eq!((back.dir, back.iceoryx_prefix), (job.dir, job.iceoryx_prefix));
        assert!(Job::parse(&["corelane".into()]).is_err());
    }

    #[test]
    fn messages_carry_their_number_at_both_ends() {
        let mut buf = pattern(64);
        stamp(&mut buf, 7, 123);
        assert_eq!((word(&buf, SEQ_AT), word(&buf, TIME_AT), word(&buf, 56)), (7, 123, 7));
        assert_eq!(buf[20], 20, "the middle keeps the pattern");
    }

    #[test]
    fn sweep_takes_only_what_it_is_told() {
        let dir = std::env::temp_dir().join(format!("corelane-perf-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(format!("{PREFIX}4242"))).unwrap();
        std::fs::write(dir.join(format!("{PREFIX}4242-m0-iox2_data")), b"x").unwrap();
        std::fs::write(dir.join(format!("{PREFIX}77-m1-x")), b"x").unwrap();
        std::fs::write(dir.join("unrelated-4242"), b"x").unwrap();
        assert_eq!(pid_of(&format!("{PREFIX}4242-m0-x")), Some(4242));
        assert_eq!(pid_of("corelane-perf-handoff-"), None);
        assert_eq!(sweep(&dir, |pid| pid == 4242), 2);
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Both sides of one measurement as two threads of this process, at tiny sizes, through
    /// the real transports, files and link: every message arrives whole and in order (a wrong
    /// one ends the test binary with status 3) and the files are gone afterwards.
    fn in_threads(imp: Impl, case: Case, test: &str) -> Measured {
        let dir = shm_dir().join(format!("{PREFIX}{}-test-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = format!("{PREFIX}{}-{test}-", std::process::id());
        let _cleanup = Cleanup { dir: dir.clone(), prefix: prefix.clone() };
        let timed = if case.kind == Kind::Throughput { 3_000 } else { 200 };
        let job = Job { imp, case, dir, iceoryx_prefix: prefix, warmup: 20, timed };
        if imp == Impl::Corelane {
            for index in [1, 2] {
                corelane::lay_out(&job.channel(index)).unwrap();
            }
        }
        let mut parent_link = Link::create(&job.dir).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let w = Watch::in_process();
                let mut link = Link::open(&job.dir).unwrap();
                match imp {
                    Impl::Corelane => child_side::<Corelane>(&w, &mut link, &job),
                    Impl::Iceoryx2 => child_side::<Iceoryx>(&w, &mut link, &job),
                    Impl::UnixSocket => child_side::<UnixSocket>(&w, &mut link, &job),
                }
            });
            let w = Watch::in_process();
            match imp {
                Impl::Corelane => parent_side::<Corelane>(&w, &mut parent_link, &job),
                Impl::Iceoryx2 => parent_side::<Iceoryx>(&w, &mut parent_link, &job),
                Impl::UnixSocket => parent_side::<UnixSocket>(&w, &mut parent_link, &job),
            }
        })
    }

    #[test]
    fn every_transport_runs_every_kind_of_case() {
        let case = |name: &str| CASES.into_iter().find(|c| c.name == name).unwrap();
        for imp in IMPLS {
            for name in ["rtt-4KiB", "oneway-64B", "wake-64B", "throughput-64B"] {
                let test = format!("{}-{name}", imp.name());
                match in_threads(imp, case(name), &test) {
                    Measured::Latency(samples) => {
                        assert_eq!(samples.len(), 200, "{test}");
                        // One-way samples subtract two cpus' clock readings: a skew of a few
                        // ns can make one 0 (saturated), never all.
                        assert!(samples.iter().any(|&ns| ns > 0), "{test}");
                    }
                    Measured::Rate(s) => {
                        assert!(s.rate > 0.0, "{test}");
                        if imp == Impl::UnixSocket {
                            assert_eq!(s.dropped, 0, "{test}: a socket drops nothing");
                        }
                    }
                }
                let leftovers = std::fs::read_dir(shm_dir())
                    .unwrap()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().contains(&test))
                    .count();
                assert_eq!(leftovers, 0, "{test}: files left in {}", shm_dir().display());
            }
        }
    }

    #[test]
    fn goals_read_the_rows() {
        let s = Summary { p50: 300, p90: 400, p99: 1500, p999: 2000, max: 9000, samples: 10 };
        let row = |peers: Vec<Peer>| Row {
            imp: "corelane",
            case: "rtt-64B",
            api: "",
            measure: Measure::Latency {
                summary: s,
                rounds: Rounds::default(),
                ratio_p50: Some(1.4),
                ratio_p99: Some(3.0),
                baseline: Baseline::Floor,
                peers,
            },
        };
        let iceoryx2 = Peer { imp: "iceoryx2", p50: Some(0.4), p99: Some(0.6) };
        let met: Vec<bool> = goals(&[row(vec![iceoryx2])]).iter().map(|g| g.met).collect();
        assert_eq!(met, [true, true, true, false]);
        // Without iceoryx2's row (`--no-peers`) its goals are left out, not missed.
        let alone = goals(&[row(Vec::new())]);
        assert_eq!(alone.len(), 2, "{alone:?}");
        assert!(alone.iter().all(|g| g.met && !g.what.contains("iceoryx2")), "{alone:?}");
    }
}
