//! Suite `spsc`: corelane's SPSC ring against rtrb, crossbeam-queue and crossbeam-channel,
//! and corelane's shared-memory ring between two processes next to them.
//!
//! Every implementation gets the same capacity, the same items, the same two pinned cpus, the
//! same wait loop ([`pair::relax`]) and the same order check; only the queue calls differ,
//! and each result row names them (`api`). Each side of a measurement is one driver function
//! ([`rtt_lead`] and [`rtt_echo`], [`stream_push`] and [`stream_pop`], [`push_batches`] and
//! [`pop_batches`]), written once over a [`Waiter`] and over the small traits [`Tx`], [`Rx`],
//! [`ChunkTx`], [`SliceTx`], [`BatchRx`], which are implemented once per crate at the bottom
//! of the file. A thread case runs the two sides on two threads ([`pair::run`], waiter
//! [`Threads`]); `corelane-shm` runs the same functions in two processes ([`fork::run`],
//! waiter [`fork::Watch`]), so the only differences are the ring and the process boundary.
//!
//! Case `wake-parked` is the other kind of hand-off: into a consumer that sleeps in the
//! kernel, through a corelane link into a parked lane next to a bare futex and eventfd wake
//! ([`wake`]). Its ratios are to the futex row of the same round.

use std::hint::black_box;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use corelane::mapping::Mapping;
use corelane_rings::region::Region;
use corelane_rings::spsc;
use corelane_rings::spsc::shm::{
    region_len, Record, ShmConsumer, ShmPopError, ShmProducer, ShmPushError,
};
use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;
use serde_json::json;
use zerocopy::{FromBytes, Immutable, IntoBytes};

mod wake;

use super::{Plan, Suite};
use crate::floor::{self, Ratios};
use crate::fork::{self, Cpus, Failure};
use crate::pair::{self, Threads, Waiter};
use crate::pin::Pair;
use crate::report::{Baseline, Measure, Report, Row};
use crate::summary::{accumulate, histogram, histogram_of, median, Rounds, Summary};

pub const SUITE: Suite = Suite {
    name: "spsc",
    summary:
        "corelane's SPSC ring vs rtrb, crossbeam-queue ArrayQueue, crossbeam-channel bounded; \
              waking a parked lane vs futex and eventfd",
    help: HELP,
    run,
    child: None,
};

const HELP: &str = "    Implementations, all with capacity 1024:
      corelane           corelane_rings::spsc::channel (two threads, as all but the next)
      corelane-shm       corelane_rings::spsc::shm between two processes, 64B cases only: the
                         harness forks; the parent (a thread pinned to one cpu) and the child
                         (pinned to the other) each attach their own ends of rings laid out in
                         sealed memfds (corelane::mapping::Mapping::sealed_memfd), made before
                         the fork and inherited by the child, one memfd per ring
      rtrb               rtrb::RingBuffer (0.3)
      crossbeam-queue    crossbeam_queue::ArrayQueue in an Arc, push/pop (an MPMC queue)
      crossbeam-channel  crossbeam_channel::bounded, try_send/try_recv spinning (MPMC)
    and, in case wake-parked only (below), three ways to wake a consumer asleep on cpu B:
      corelane-link      a real corelane Runtime with one lane pinned to cpu B, idle strategy
                         Sleep(100 ms) (it parks in its reactor, reactor auto, after every pass
                         without work), its LaneWaker given in the LaneSpec; its one agent pops
                         a corelane::runtime::link (LinkRx::pop in do_work). Thread A calls
                         LinkTx::push, which finds the lane parked and writes its eventfd
      futex              a thread on cpu B in futex_wait (rustix, FUTEX_PRIVATE) on a u32
                         word; A stores the next value and calls futex_wake
      eventfd            a thread on cpu B blocked in read on a blocking eventfd; A writes 1
    Items: 8B = a u64; 64B = a Copy struct of [u64; 8] (plain bytes, so also a shm record,
    copied through the ring's atomic words). Item n carries n in every word and the consumer
    checks every word.

    Cases:
      rtt-8B, rtt-64B    Round-trip latency. Thread A pushes item n into queue 1; thread B pops
                         it and pushes it into queue 2; A pops it. One item in flight. A takes
                         one Instant::now() per round trip and each sample is the gap to the
                         previous one, less the timer's cost (on the facts line, measured at
                         start), equally for all. Warm-up round trips first. Columns: p50, p90,
                         p99, p99.9, max in ns over all rounds, samples, and the ratios to the
                         floor (below).
      throughput-8B, throughput-64B
                         Streaming rate: A pushes items 0..N one at a time (spinning while
                         full), B pops them one at a time (spinning while empty). B times from
                         the end of a warm-up prefix to the last item. Mitems/s, the median
                         round; slowest and fastest round alongside.
      throughput-8B-batch, throughput-64B-batch
                         As above, moving up to 32 items per call through each crate's chunk
                         API (contiguous claim, fill in place, one publish):
                         corelane: write_chunk + fill_from + commit / read_chunk, iterated;
                         rtrb: write_chunk_uninit + fill_from_iter / read_chunk, iterated
                         (both free the read slots with one store when the chunk ends).
                         crossbeam has no batch API, so it has no batch rows.
                         corelane-shm has no in-place claim: push_slice from a buffer filled
                         once per batch / drain(32, f), which hands each record to f and frees
                         the slots with one store.
      throughput-8B-slice, throughput-64B-slice
                         As batch, through the copy-a-slice API: corelane and corelane-shm
                         push_slice/pop_slice, rtrb push_partial_slice/pop_partial_slice; 32
                         items per call.
      fixed-rate-1M      Open loop (corelane and rtrb, 8B): A pushes item n at its scheduled
                         time start + n x 1 us (1M items/s, spinning on the clock until then,
                         never waiting for B to answer), B pops each and records its lateness:
                         Instant::now() when it has the item minus the item's INTENDED send
                         time, less the timer's cost. A stall anywhere (B descheduled, the
                         ring full, A late) makes every item scheduled during it late, so it
                         shows in p99/p99.9/max, where a closed-loop rtt counts it once (the
                         coordinated omission of the rtt cases). One way, so its ratios to the
                         floor (a round trip) say little; compare the two rows and the tail.
      wake-parked        Wake-up latency into a consumer that sleeps in the kernel (the one
                         case where the consumer does not spin). One way: A takes
                         Instant::now() just before the push/wake call; B takes one as soon as
                         it has the item (corelane-link: right after pop returned it in
                         do_work; futex: the first load that sees the new value after
                         futex_wait returned; eventfd: right after read returned) and hands
                         it back through a cache line A spins on (after its reading, so not
                         in the sample). Instant is CLOCK_MONOTONIC, one clock for all cpus.
                         Before each wake A waits 1 ms after the previous answer and then
                         until /proc/self/task/<tid>/stat shows B's thread sleeping (state
                         S). After it, A checks the wake was paid: corelane-link:
                         LaneWaker::wakes() grew by one (the lane was parked, its eventfd was
                         written); futex: futex_wake woke one waiter; eventfd: no check is
                         possible, the /proc one applies. Failed checks are dropped and
                         counted in the row wake-parked-skipped. Ratios are to the futex row
                         of the same round (p50/futex), not to the floor: a wake-up through
                         the kernel costs thousands of cache-line round trips.

    corelane-shm runs the same driver code as the thread cases, in two processes: in rtt the
    parent is A (it times) and the child B; in the throughput cases the child pushes (on cpu
    A) and the parent pops and times (on cpu B). The child allocates and prints nothing and
    leaves with _exit; it dies with the parent (PR_SET_PDEATHSIG) and is always reaped. Its
    wait loops are the same busy spin plus a turn counter: after 65,536 turns without
    progress a side looks at the other process (the parent: the child's state and exit; both:
    a 60 s deadline), and a failure or hang stops the run with exit status 4 (3 for an item
    out of order), never a hang.
    Per round (default sizes; --quick in brackets): floor and every rtt case 2,000 [500]
    warm-up + 20,000 [3,000] timed round trips; every throughput case 200,000 [10,000] warm-up
    + 2,000,000 [100,000] timed items; fixed-rate-1M 20,000 [5,000] warm-up + 500,000
    [50,000] timed items (0.5 s [0.05 s]); wake-parked 50 [10] warm-up + 1,000 [100] timed
    wake-ups per implementation (each at least 1 ms after the last: ~3.5 s per round).
";

/// Slots in every queue.
const CAPACITY: usize = 1024;
/// Items per call in the batch and slice cases.
const BATCH: usize = 32;

/// How much each measurement does per round.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    rtt_warmup: u64,
    rtt_samples: u64,
    stream_warmup: u64,
    stream_items: u64,
    fixed_warmup: u64,
    fixed_samples: u64,
    wake: wake::Sizes,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                rtt_warmup: 500,
                rtt_samples: 3_000,
                stream_warmup: 10_000,
                stream_items: 100_000,
                fixed_warmup: 5_000,
                fixed_samples: 50_000,
                wake: wake::Sizes { warmup: 10, samples: 100 },
            }
        } else {
            Self {
                rtt_warmup: 2_000,
                rtt_samples: 20_000,
                stream_warmup: 200_000,
                stream_items: 2_000_000,
                fixed_warmup: 20_000,
                fixed_samples: 500_000,
                wake: wake::Sizes { warmup: 50, samples: 1_000 },
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Corelane,
    CorelaneShm,
    Rtrb,
    CrossbeamQueue,
    CrossbeamChannel,
    /// A link into a parked lane (wake-parked only).
    CorelaneLink,
    /// futex_wait / futex_wake (wake-parked only).
    Futex,
    /// Blocking eventfd read / write (wake-parked only).
    Eventfd,
}

/// Table order; each round, the implementations of a case start one further along their part
/// of this list.
const IMPLS: [Impl; 8] = [
    Impl::Corelane,
    Impl::CorelaneShm,
    Impl::Rtrb,
    Impl::CrossbeamQueue,
    Impl::CrossbeamChannel,
    Impl::CorelaneLink,
    Impl::Futex,
    Impl::Eventfd,
];

/// The row the wake-parked ratios divide by.
const WAKE_BASELINE: Impl = Impl::Futex;

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Corelane => "corelane",
            Impl::CorelaneShm => "corelane-shm",
            Impl::Rtrb => "rtrb",
            Impl::CrossbeamQueue => "crossbeam-queue",
            Impl::CrossbeamChannel => "crossbeam-channel",
            Impl::CorelaneLink => "corelane-link",
            Impl::Futex => "futex",
            Impl::Eventfd => "eventfd",
        }
    }

    /// Whether this is a peer (another crate, or a wake-up corelane's ratios do not divide
    /// by), left out with `--no-peers`.
    fn peer(self) -> bool {
        matches!(self, Impl::Rtrb | Impl::CrossbeamQueue | Impl::CrossbeamChannel | Impl::Eventfd)
    }

    /// Whether this is one of the wake-ups rather than a queue.
    fn wakes(self) -> bool {
        matches!(self, Impl::CorelaneLink | Impl::Futex | Impl::Eventfd)
    }

    fn runs(self, case: Case) -> bool {
        if case.kind == Kind::Wake || self.wakes() {
            return case.kind == Kind::Wake && self.wakes();
        }
        if case.kind == Kind::FixedRate {
            return matches!(self, Impl::Corelane | Impl::Rtrb);
        }
        match self {
            Impl::Corelane | Impl::Rtrb => true,
            // The cross-process case is about 64-byte records (issue 6).
            Impl::CorelaneShm => case.size == Size::B64,
            Impl::CrossbeamQueue | Impl::CrossbeamChannel => !matches!(case.kind, Kind::Batch(_)),
            Impl::CorelaneLink | Impl::Futex | Impl::Eventfd => unreachable!("returned above"),
        }
    }

    fn api(self, kind: Kind) -> &'static str {
        match (self, kind) {
            (Impl::CorelaneLink, _) => {
                "LinkTx::push -> eventfd -> lane's reactor park ends -> LinkRx::pop in do_work"
            }
            (Impl::Futex, _) => "store + futex_wake / futex_wait",
            (Impl::Eventfd, _) => "write / blocking read",
            (Impl::Corelane | Impl::CorelaneShm | Impl::Rtrb, Kind::Wake) => {
                unreachable!("Impl::runs keeps the queues out of wake-parked")
            }
            (Impl::Corelane | Impl::Rtrb, Kind::Rtt | Kind::Stream) => "push/pop",
            (Impl::Corelane | Impl::Rtrb, Kind::FixedRate) => {
                "push on a fixed schedule (1M/s) / pop; lateness from the intended send time"
            }
            (Impl::CorelaneShm, Kind::FixedRate) => {
                unreachable!("Impl::runs keeps corelane-shm out of fixed-rate")
            }
            (Impl::CorelaneShm, Kind::Rtt | Kind::Stream) => {
                "push/pop, 2 processes, sealed memfd rings"
            }
            (Impl::CorelaneShm, Kind::Batch(Batch::Chunk)) => {
                "push_slice (buffer filled once per batch) / drain(32, f), 2 processes"
            }
            (Impl::CorelaneShm, Kind::Batch(Batch::Slice)) => {
                "push_slice/pop_slice, 32 per call, 2 processes"
            }
            (Impl::CrossbeamQueue, _) => "Arc<ArrayQueue> push/pop",
            (Impl::CrossbeamChannel, _) => "bounded try_send/try_recv",
            (Impl::Corelane, Kind::Batch(Batch::Chunk)) => {
                "write_chunk+fill_from+commit / read_chunk iterated, 32 per call"
            }
            (Impl::Rtrb, Kind::Batch(Batch::Chunk)) => {
                "write_chunk_uninit+fill_from_iter / read_chunk iterated, 32 per call"
            }
            (Impl::Corelane, Kind::Batch(Batch::Slice)) => "push_slice/pop_slice, 32 per call",
            (Impl::Rtrb, Kind::Batch(Batch::Slice)) => {
                "push_partial_slice/pop_partial_slice, 32 per call"
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rtt,
    Stream,
    Batch(Batch),
    /// Wake a sleeping consumer (one way).
    Wake,
    /// Open loop: items sent on a fixed schedule, latency from the intended send time.
    FixedRate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Batch {
    Chunk,
    Slice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Size {
    B8,
    B64,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    size: Size,
    kind: Kind,
}

const CASES: [Case; 10] = [
    Case { name: "rtt-8B", size: Size::B8, kind: Kind::Rtt },
    Case { name: "rtt-64B", size: Size::B64, kind: Kind::Rtt },
    Case { name: "throughput-8B", size: Size::B8, kind: Kind::Stream },
    Case { name: "throughput-64B", size: Size::B64, kind: Kind::Stream },
    Case { name: "throughput-8B-batch", size: Size::B8, kind: Kind::Batch(Batch::Chunk) },
    Case { name: "throughput-64B-batch", size: Size::B64, kind: Kind::Batch(Batch::Chunk) },
    Case { name: "throughput-8B-slice", size: Size::B8, kind: Kind::Batch(Batch::Slice) },
    Case { name: "throughput-64B-slice", size: Size::B64, kind: Kind::Batch(Batch::Slice) },
    Case { name: "fixed-rate-1M", size: Size::B8, kind: Kind::FixedRate },
    Case { name: "wake-parked", size: Size::B8, kind: Kind::Wake },
];

/// Items per second the fixed-rate case offers: one every [`FIXED_PERIOD_NS`].
const FIXED_RATE_PER_S: u64 = 1_000_000;
const FIXED_PERIOD_NS: u64 = 1_000_000_000 / FIXED_RATE_PER_S;

/// One (implementation, case) accumulated over rounds.
struct Cell {
    imp: Impl,
    case: Case,
    acc: Acc,
}

enum Acc {
    /// All rounds' samples, each round's summary (for the per-round ratios), and the wake-ups
    /// dropped because the consumer was not asleep (wake-parked only).
    Latency {
        all: Histogram<u64>,
        rounds: Vec<Summary>,
        skipped: u64,
    },
    Rate(Vec<f64>),
}

/// What one measurement returns.
enum Measured {
    /// Round-trip samples, ns.
    Latency(Vec<u64>),
    /// Items per second.
    Rate(f64),
    /// One-way wake-up samples and the wake-ups dropped.
    Wake(wake::Woken),
}

fn run(plan: &Plan) -> Report {
    let sizes = Sizes::new(plan.quick);
    let mut cells: Vec<Cell> = CASES
        .iter()
        .flat_map(|&case| IMPLS.iter().map(move |&imp| (imp, case)))
        .filter(|(imp, case)| imp.runs(*case) && plan.wants(case.name))
        .filter(|(imp, _)| plan.peers || !imp.peer())
        .map(|(imp, case)| Cell {
            imp,
            case,
            acc: match case.kind {
                Kind::Rtt | Kind::Wake | Kind::FixedRate => {
                    Acc::Latency { all: histogram(), rounds: Vec::new(), skipped: 0 }
                }
                Kind::Stream | Kind::Batch(_) => Acc::Rate(Vec::new()),
            },
        })
        .collect();

    let mut floor_all = histogram();
    let mut floor_rounds = Vec::new();
    let mut lane_reactor = None;
    for round in 0..plan.rounds as usize {
        plan.before_round(round);
        crate::progress::round(SUITE.name, round, plan.rounds);
        let floor_round =
            histogram_of(&floor::measure(&plan.pair, sizes.rtt_warmup, sizes.rtt_samples));
        accumulate(&mut floor_all, &floor_round);
        floor_rounds.push(Summary::of(&floor_round));
        for case in CASES {
            // The implementations of this case, started one further along each round, so
            // none always goes first or last.
            let imps: Vec<Impl> =
                cells.iter().filter(|c| c.case.name == case.name).map(|c| c.imp).collect();
            for k in 0..imps.len() {
                let imp = imps[(k + round) % imps.len()];
                let cell = cells
                    .iter_mut()
                    .find(|c| c.imp == imp && c.case.name == case.name)
                    .expect("imps lists this case's cells");
                match (measure(imp, case, &plan.pair, sizes), &mut cell.acc) {
                    (Measured::Latency(samples), Acc::Latency { all, rounds, .. }) => {
                        let this_round = histogram_of(&samples);
                        rounds.push(Summary::of(&this_round));
                        accumulate(all, &this_round);
                    }
                    (Measured::Wake(woken), Acc::Latency { all, rounds, skipped }) => {
                        let this_round = histogram_of(&woken.samples);
                        rounds.push(Summary::of(&this_round));
                        accumulate(all, &this_round);
                        *skipped += woken.skipped;
                        lane_reactor = lane_reactor.or(woken.reactor);
                    }
                    (Measured::Rate(rate), Acc::Rate(rates)) => rates.push(rate),
                    _ => unreachable!("measure returns the kind of result its case's Acc holds"),
                }
            }
        }
    }
    crate::progress::done();

    // Each latency cell's rounds divided by its baseline's same rounds: the floor, or for
    // wake-parked the futex row (measured in the same rounds, in the rotated order).
    let wake_baseline: Vec<Summary> = cells
        .iter()
        .find(|c| c.imp == WAKE_BASELINE && c.case.kind == Kind::Wake)
        .and_then(|c| match &c.acc {
            Acc::Latency { rounds, .. } => Some(rounds.clone()),
            Acc::Rate(_) => None,
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    let mut skipped_rows = Vec::new();
    for cell in cells {
        let api = cell.imp.api(cell.case.kind);
        let measure = match cell.acc {
            Acc::Latency { all, rounds, skipped } => {
                let (baseline, by) = if cell.case.kind == Kind::Wake {
                    (Baseline::Impl(WAKE_BASELINE.name()), &wake_baseline)
                } else {
                    (Baseline::Floor, &floor_rounds)
                };
                let mut ratios = Ratios::default();
                for (round, base) in rounds.iter().zip(by) {
                    ratios.push(round, base);
                }
                if cell.case.kind == Kind::Wake {
                    skipped_rows.push(Row {
                        imp: cell.imp.name(),
                        case: "wake-parked-skipped",
                        api: skipped_what(cell.imp),
                        measure: Measure::Value { value: skipped, unit: "wakes" },
                    });
                }
                Measure::Latency {
                    summary: Summary::of(&all),
                    rounds: Rounds::new(all, rounds),
                    ratio_p50: ratios.p50(),
                    ratio_p99: ratios.p99(),
                    baseline,
                    peers: Vec::new(),
                }
            }
            Acc::Rate(rates) => Measure::Rate {
                median: median(&rates).unwrap_or(0.0),
                min: rates.iter().copied().fold(f64::INFINITY, f64::min),
                max: rates.iter().copied().fold(0.0, f64::max),
                rounds: rates.len(),
                bytes_per_item: None,
            },
        };
        rows.push(Row { imp: cell.imp.name(), case: cell.case.name, api, measure });
    }
    rows.extend(skipped_rows);

    Report {
        suite: SUITE.name,
        floor: Some(Summary::of(&floor_all)),
        rows,
        goals: Vec::new(),
        settings: json!({
            "rounds": plan.rounds,
            "quick": plan.quick,
            "capacity": CAPACITY,
            "batch": BATCH,
            "rtt_warmup": sizes.rtt_warmup,
            "rtt_samples_per_round": sizes.rtt_samples,
            "stream_warmup": sizes.stream_warmup,
            "stream_items_per_round": sizes.stream_items,
            "fixed_rate_per_s": FIXED_RATE_PER_S,
            "fixed_warmup": sizes.fixed_warmup,
            "fixed_samples_per_round": sizes.fixed_samples,
            "wait": "busy spin",
            "shm": "corelane-shm: fork; parent thread and child process pinned to the two cpus; \
                     one sealed memfd per ring",
            "shm_check_every_turns": fork::CHECK_EVERY,
            "shm_limit_s": fork::LIMIT.as_secs(),
            "wake_warmup": sizes.wake.warmup,
            "wake_samples_per_round": sizes.wake.samples,
            "wake_gap_us": wake::GAP.as_micros() as u64,
            "wake_lane_idle": format!("sleep({} ms)", wake::PARK.as_millis()),
            "wake_lane_reactor": lane_reactor,
        }),
    }
}

/// What a wake-parked-skipped row counts, per implementation.
fn skipped_what(imp: Impl) -> &'static str {
    match imp {
        Impl::CorelaneLink => {
            "timed wakes dropped: LaneWaker::wakes() did not grow (lane not parked)"
        }
        Impl::Futex => "timed wakes dropped: futex_wake woke no waiter",
        Impl::Eventfd => "none can be: a write cannot say whether the reader slept (/proc said so)",
        _ => unreachable!("only wake-parked rows count skipped wakes"),
    }
}

/// One measurement of `imp` on `case`, with fresh queues and fresh pinned threads (or, for
/// corelane-shm, a fresh pinned thread and a fresh pinned child process).
fn measure(imp: Impl, case: Case, pair: &Pair, sizes: Sizes) -> Measured {
    let label = Label { imp: imp.name(), case: case.name };
    if case.kind == Kind::Wake {
        return Measured::Wake(match imp {
            Impl::CorelaneLink => wake::link(pair, label, sizes.wake),
            Impl::Futex => wake::futex(pair, label, sizes.wake),
            Impl::Eventfd => wake::eventfd(pair, label, sizes.wake),
            _ => unreachable!("Impl::runs keeps the queues out of wake-parked"),
        });
    }
    match (imp, case.size) {
        (Impl::CorelaneShm, _) => measure_shm(case.kind, label, pair, sizes),
        (_, Size::B8) => measure_items::<u64>(imp, case.kind, label, pair, sizes),
        (_, Size::B64) => measure_items::<Msg64>(imp, case.kind, label, pair, sizes),
    }
}

fn measure_items<T: Item>(
    imp: Impl,
    kind: Kind,
    label: Label,
    pair: &Pair,
    sizes: Sizes,
) -> Measured {
    let cap = CAPACITY;
    match kind {
        Kind::Rtt => Measured::Latency(match imp {
            Impl::Corelane => {
                rtt::<T, _, _>(pair, label, sizes, spsc::channel(cap), spsc::channel(cap))
            }
            Impl::Rtrb => rtt::<T, _, _>(
                pair,
                label,
                sizes,
                rtrb::RingBuffer::new(cap),
                rtrb::RingBuffer::new(cap),
            ),
            Impl::CrossbeamQueue => {
                rtt::<T, _, _>(pair, label, sizes, array_queue(cap), array_queue(cap))
            }
            Impl::CrossbeamChannel => rtt::<T, _, _>(
                pair,
                label,
                sizes,
                crossbeam_channel::bounded(cap),
                crossbeam_channel::bounded(cap),
            ),
            Impl::CorelaneShm => unreachable!("measure sends corelane-shm to measure_shm"),
            Impl::CorelaneLink | Impl::Futex | Impl::Eventfd => {
                unreachable!("measure sends the wake-ups to wake")
            }
        }),
        Kind::Stream => Measured::Rate(match imp {
            Impl::Corelane => stream::<T, _, _>(pair, label, sizes, spsc::channel(cap)),
            Impl::Rtrb => stream::<T, _, _>(pair, label, sizes, rtrb::RingBuffer::new(cap)),
            Impl::CrossbeamQueue => stream::<T, _, _>(pair, label, sizes, array_queue(cap)),
            Impl::CrossbeamChannel => {
                stream::<T, _, _>(pair, label, sizes, crossbeam_channel::bounded(cap))
            }
            Impl::CorelaneShm => unreachable!("measure sends corelane-shm to measure_shm"),
            Impl::CorelaneLink | Impl::Futex | Impl::Eventfd => {
                unreachable!("measure sends the wake-ups to wake")
            }
        }),
        Kind::Batch(batch) => Measured::Rate(match imp {
            Impl::Corelane => {
                stream_batch::<T, _, _>(pair, label, sizes, batch, spsc::channel(cap))
            }
            Impl::Rtrb => {
                stream_batch::<T, _, _>(pair, label, sizes, batch, rtrb::RingBuffer::new(cap))
            }
            Impl::CrossbeamQueue | Impl::CrossbeamChannel => {
                unreachable!("Impl::runs keeps crossbeam out of the batch cases")
            }
            Impl::CorelaneShm => unreachable!("measure sends corelane-shm to measure_shm"),
            Impl::CorelaneLink | Impl::Futex | Impl::Eventfd => {
                unreachable!("measure sends the wake-ups to wake")
            }
        }),
        Kind::FixedRate => Measured::Latency(match imp {
            Impl::Corelane => fixed_rate::<T, _, _>(pair, label, sizes, spsc::channel(cap)),
            Impl::Rtrb => fixed_rate::<T, _, _>(pair, label, sizes, rtrb::RingBuffer::new(cap)),
            _ => unreachable!("Impl::runs keeps fixed-rate to corelane and rtrb"),
        }),
        Kind::Wake => unreachable!("measure sends wake-parked to wake"),
    }
}

/// Names the run in an out-of-order report.
#[derive(Clone, Copy, Debug)]
struct Label {
    imp: &'static str,
    case: &'static str,
}

// ---------------------------------------------------------------------------------------------
// Thread pairs: the two sides of each measurement on two pinned threads.

/// Round trips through `there` (A -> B) and `back` (B -> A), one item in flight. Returns one
/// sample (ns) per timed round trip.
fn rtt<T: Item, P: Tx<T>, C: Rx<T>>(
    pair: &Pair,
    label: Label,
    sizes: Sizes,
    there: (P, C),
    back: (P, C),
) -> Vec<u64> {
    let (mut there_tx, mut there_rx) = there;
    let (mut back_tx, mut back_rx) = back;
    let (samples, ()) = pair::run(
        pair,
        move || rtt_lead(&Threads, label, sizes, &mut there_tx, &mut back_rx),
        move || rtt_echo::<T, _>(&Threads, label, sizes, &mut there_rx, &mut back_tx),
    );
    samples
}

/// Streams `warmup + items` single items A -> B; returns B's rate over the last `items`.
fn stream<T: Item, P: Tx<T>, C: Rx<T>>(
    pair: &Pair,
    label: Label,
    sizes: Sizes,
    (mut tx, mut rx): (P, C),
) -> f64 {
    let ((), elapsed) = pair::run(
        pair,
        move || stream_push::<T, _>(&Threads, sizes, &mut tx),
        move || stream_pop::<T, _>(&Threads, label, sizes, &mut rx),
    );
    rate(sizes.stream_items, elapsed)
}

/// Open loop through `(tx, rx)`: A sends on a fixed schedule, B records each item's lateness
/// against its intended send time. One sample (ns) per timed item.
fn fixed_rate<T: Item, P: Tx<T>, C: Rx<T>>(
    pair: &Pair,
    label: Label,
    sizes: Sizes,
    (mut tx, mut rx): (P, C),
) -> Vec<u64> {
    let start = OnceLock::new();
    let start = &start;
    let ((), samples) = pair::run(
        pair,
        move || fixed_rate_send::<T, _>(&Threads, sizes, &mut tx, start),
        move || fixed_rate_recv::<T, _>(&Threads, label, sizes, &mut rx, start),
    );
    samples
}

/// As [`stream`], up to [`BATCH`] items per call through the chunk or slice API.
fn stream_batch<T: Item, P: ChunkTx<T> + SliceTx<T>, C: BatchRx<T>>(
    pair: &Pair,
    label: Label,
    sizes: Sizes,
    batch: Batch,
    (mut tx, mut rx): (P, C),
) -> f64 {
    let ((), elapsed) = pair::run(
        pair,
        move || match batch {
            Batch::Chunk => push_batches(&Threads, sizes, |seq, max| tx.push_chunk(seq, max)),
            Batch::Slice => {
                push_batches(&Threads, sizes, from_buffer::<T>(|items| tx.push_copied(items)))
            }
        },
        move || match batch {
            Batch::Chunk => pop_batches(&Threads, sizes, |next, max| {
                pop_each_checked(&Threads, label, &mut rx, next, max)
            }),
            Batch::Slice => pop_batches(
                &Threads,
                sizes,
                into_buffer::<T, _>(&Threads, label, |out| rx.pop_copied(out)),
            ),
        },
    );
    rate(sizes.stream_items, elapsed)
}

// ---------------------------------------------------------------------------------------------
// Process pairs: corelane-shm, the same sides in a parent and a forked child.

/// One measurement of the shared-memory ring between two processes (64-byte records). A
/// failure before or after the timed work ends the run here; one during it ends the run
/// from inside the watch ([`fork`]).
fn measure_shm(kind: Kind, label: Label, pair: &Pair, sizes: Sizes) -> Measured {
    let what = format!("{} {}", label.imp, label.case);
    let measured = match kind {
        Kind::Rtt => shm_rtt(&what, label, pair, sizes).map(Measured::Latency),
        Kind::Stream => shm_stream(&what, label, pair, sizes, None),
        Kind::Batch(batch) => shm_stream(&what, label, pair, sizes, Some(batch)),
        Kind::Wake => unreachable!("Impl::runs keeps corelane-shm out of wake-parked"),
        Kind::FixedRate => unreachable!("Impl::runs keeps corelane-shm out of fixed-rate"),
    };
    measured.unwrap_or_else(|e| {
        eprintln!("error: {what}: {e}; aborting the run");
        std::process::exit(e.exit_code())
    })
}

/// Round trips as in [`rtt`]: the parent is A (pinned to `pair.a`, it times), the child B
/// (pinned to `pair.b`). Ring `there` is the parent's to push into, `back` the child's.
fn shm_rtt(what: &str, label: Label, pair: &Pair, sizes: Sizes) -> Result<Vec<u64>, fork::Error> {
    let (there, back) = (shm_region("corelane-perf-there")?, shm_region("corelane-perf-back")?);
    let there_tx = ShmProducer::<Msg64, _>::create(&there, CAPACITY as u64).map_err(setup)?;
    lay_out(&back)?;
    let back_rx = ShmConsumer::<Msg64, _>::attach(&back).map_err(setup)?;
    fork::run(
        what,
        Cpus { parent: pair.a, child: pair.b },
        fork::LIMIT,
        |w| {
            let rx = ShmConsumer::<Msg64, _>::attach(&there).map_err(|_| Failure::Attach)?;
            let tx = ShmProducer::<Msg64, _>::attach(&back).map_err(|_| Failure::Attach)?;
            let (mut rx, mut tx) = (Watched::new(rx, w, label), Watched::new(tx, w, label));
            w.start();
            rtt_echo::<Msg64, _>(w, label, sizes, &mut rx, &mut tx);
            Ok(())
        },
        move |w| {
            let mut tx = Watched::new(there_tx, w, label);
            let mut rx = Watched::new(back_rx, w, label);
            rtt_lead(w, label, sizes, &mut tx, &mut rx)
        },
    )
}

/// A stream as in [`stream`] (`batch` None) or [`stream_batch`]: the child pushes (pinned to
/// `pair.a`, like thread A), the parent pops and times (pinned to `pair.b`).
fn shm_stream(
    what: &str,
    label: Label,
    pair: &Pair,
    sizes: Sizes,
    batch: Option<Batch>,
) -> Result<Measured, fork::Error> {
    let ring = shm_region("corelane-perf-stream")?;
    lay_out(&ring)?;
    let rx = ShmConsumer::<Msg64, _>::attach(&ring).map_err(setup)?;
    let elapsed = fork::run(
        what,
        Cpus { parent: pair.b, child: pair.a },
        fork::LIMIT,
        |w| {
            let tx = ShmProducer::<Msg64, _>::attach(&ring).map_err(|_| Failure::Attach)?;
            let mut tx = Watched::new(tx, w, label);
            w.start();
            match batch {
                None => stream_push::<Msg64, _>(w, sizes, &mut tx),
                // No in-place claim in the shm API: both batch cases copy a prepared buffer.
                Some(Batch::Chunk | Batch::Slice) => {
                    push_batches(w, sizes, from_buffer::<Msg64>(|items| tx.push_copied(items)))
                }
            }
            Ok(())
        },
        move |w| {
            let mut rx = Watched::new(rx, w, label);
            match batch {
                None => stream_pop::<Msg64, _>(w, label, sizes, &mut rx),
                Some(Batch::Chunk) => pop_batches(w, sizes, |next, max| {
                    pop_each_checked(w, label, &mut rx, next, max)
                }),
                Some(Batch::Slice) => pop_batches(
                    w,
                    sizes,
                    into_buffer::<Msg64, _>(w, label, |out| rx.pop_copied(out)),
                ),
            }
        },
    )?;
    Ok(Measured::Rate(rate(sizes.stream_items, elapsed)))
}

/// A sealed memfd, mapped, sized for one ring of [`CAPACITY`] 64-byte records: what the
/// daemon will hand its clients. The descriptor is closed at once: the child inherits the
/// mapping itself.
fn shm_region(name: &str) -> Result<Mapping, fork::Error> {
    let len = region_len::<Msg64>(CAPACITY).expect("1024 records of 64 bytes fit in a usize");
    Mapping::sealed_memfd(name, len).map(|(map, _fd)| map).map_err(setup)
}

/// Lays out a ring whose producer will be the child: created, then the role given back.
fn lay_out(map: &Mapping) -> Result<(), fork::Error> {
    ShmProducer::<Msg64, _>::create(map, CAPACITY as u64).map(drop).map_err(setup)
}

fn setup(e: impl std::fmt::Display) -> fork::Error {
    fork::Error::Setup(format!("cannot set up a shared-memory ring: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The sides: each one loop, the same for threads and processes.

/// A's side of a round trip: push item n into `tx`, wait for it in `rx`. `warmup` untimed
/// trips, then `samples` timed ones; one sample (ns) per timed trip.
fn rtt_lead<T: Item, W: Waiter>(
    w: &W,
    label: Label,
    sizes: Sizes,
    tx: &mut impl Tx<T>,
    rx: &mut impl Rx<T>,
) -> Vec<u64> {
    pair::time_round_trips(sizes.rtt_warmup, sizes.rtt_samples, |seq| {
        push_spin(w, tx, T::from_seq(seq));
        check(w, pop_spin(w, rx), seq, label);
    })
}

/// B's side of a round trip: take item n from `rx`, check it, push it into `tx`.
fn rtt_echo<T: Item, W: Waiter>(
    w: &W,
    label: Label,
    sizes: Sizes,
    rx: &mut impl Rx<T>,
    tx: &mut impl Tx<T>,
) {
    for seq in 0..sizes.rtt_warmup + sizes.rtt_samples {
        let item = pop_spin(w, rx);
        check(w, item, seq, label);
        push_spin(w, tx, item);
    }
}

/// The producer of a stream: items `0..warmup + items`, one at a time.
fn stream_push<T: Item, W: Waiter>(w: &W, sizes: Sizes, tx: &mut impl Tx<T>) {
    for seq in 0..sizes.stream_warmup + sizes.stream_items {
        push_spin(w, tx, T::from_seq(seq));
    }
}

/// The consumer of a stream: checks every item, and times the last `items` of them.
fn stream_pop<T: Item, W: Waiter>(
    w: &W,
    label: Label,
    sizes: Sizes,
    rx: &mut impl Rx<T>,
) -> Duration {
    let Sizes { stream_warmup: warmup, stream_items: items, .. } = sizes;
    let total = warmup + items;
    for seq in 0..warmup {
        check(w, pop_spin(w, rx), seq, label);
    }
    let start = Instant::now();
    for seq in warmup..total {
        check(w, pop_spin(w, rx), seq, label);
    }
    start.elapsed()
}

/// The sender of the fixed-rate case: item n is due at `start + n x period`; it spins on the
/// clock until then and pushes (spinning while full: a full ring delays the items, and their
/// lateness shows it). It never waits for the receiver otherwise: the load is offered, not
/// paced by the answers. `start` is set once, just before the first push.
fn fixed_rate_send<T: Item, W: Waiter>(
    w: &W,
    sizes: Sizes,
    tx: &mut impl Tx<T>,
    start: &OnceLock<Instant>,
) {
    let t0 = *start.get_or_init(Instant::now);
    let total = sizes.fixed_warmup + sizes.fixed_samples;
    for seq in 0..total {
        let due = t0 + Duration::from_nanos(seq * FIXED_PERIOD_NS);
        let mut turns = 0;
        while Instant::now() < due {
            w.turn(&mut turns);
        }
        push_spin(w, tx, T::from_seq(seq));
    }
    // A sender that could not keep the schedule (a slow clock, a ring full for long) makes
    // every later item late: the tail then shows that, not the queue. Say so.
    let last_due = Duration::from_nanos(total.saturating_sub(1) * FIXED_PERIOD_NS);
    let behind = t0.elapsed().saturating_sub(last_due);
    if behind > last_due / 10 {
        eprintln!(
            "\nspsc: fixed-rate-1M: the sender ended {:.1} ms behind its {:.1} ms schedule \
             (offered {:.2} M items/s, not 1): its tail measures that",
            behind.as_secs_f64() * 1e3,
            last_due.as_secs_f64() * 1e3,
            total as f64 / t0.elapsed().as_secs_f64() / 1e6,
        );
    }
}

/// The receiver of the fixed-rate case: checks every item and, past the warm-up, records
/// `now - due(n)` less the timer's cost, one sample per item.
fn fixed_rate_recv<T: Item, W: Waiter>(
    w: &W,
    label: Label,
    sizes: Sizes,
    rx: &mut impl Rx<T>,
    start: &OnceLock<Instant>,
) -> Vec<u64> {
    let Sizes { fixed_warmup: warmup, fixed_samples: n, .. } = sizes;
    // Non-zero, so every page is written (faulted in) before timing; zeroed memory is not.
    let mut samples = vec![1u64; n as usize];
    let cost = crate::timer::cost_ns();
    let mut t0 = None;
    for seq in 0..warmup + n {
        let item = pop_spin(w, rx);
        let now = Instant::now();
        check(w, item, seq, label);
        // The sender sets `start` before its first push, and this thread has popped that
        // push (the ring's acquire), so it is set.
        let t0 = *t0.get_or_insert_with(|| *start.get().expect("set before the first push"));
        if seq >= warmup {
            samples[(seq - warmup) as usize] = lateness_ns(t0, seq, now, cost);
        }
    }
    samples
}

/// How late item `seq` arrived at `now` against its intended send time `t0 + seq x period`,
/// less the timer's cost (saturating at 0).
#[inline(always)]
fn lateness_ns(t0: Instant, seq: u64, now: Instant, cost_ns: u64) -> u64 {
    let due = t0 + Duration::from_nanos(seq * FIXED_PERIOD_NS);
    crate::timer::net_ns(now.saturating_duration_since(due).as_nanos() as u64, cost_ns)
}

/// The producer of a batch stream: `push(seq, max)` hands over up to `max` items from item
/// `seq` on and returns how many went in (0 if full).
fn push_batches<W: Waiter>(w: &W, sizes: Sizes, mut push: impl FnMut(u64, usize) -> usize) {
    let total = sizes.stream_warmup + sizes.stream_items;
    let (mut seq, mut turns) = (0, 0);
    while seq < total {
        let max = BATCH.min((total - seq) as usize);
        let pushed = push(seq, max);
        if pushed == 0 {
            w.turn(&mut turns);
        } else {
            turns = 0;
        }
        seq += pushed as u64;
    }
}

/// The consumer of a batch stream: `pop(next, max)` takes up to `max` items, checks each
/// against `*next` and advances it, and returns how many (0 if empty). Times the last
/// `items`.
fn pop_batches<W: Waiter>(
    w: &W,
    sizes: Sizes,
    mut pop: impl FnMut(&mut u64, usize) -> usize,
) -> Duration {
    let Sizes { stream_warmup: warmup, stream_items: items, .. } = sizes;
    let total = warmup + items;
    let (mut next, mut turns) = (0, 0);
    let mut pop_until = |end: u64, next: &mut u64| {
        while *next < end {
            let max = BATCH.min((end - *next) as usize);
            if pop(next, max) == 0 {
                w.turn(&mut turns);
            } else {
                turns = 0;
            }
        }
    };
    pop_until(warmup, &mut next);
    let start = Instant::now();
    pop_until(total, &mut next);
    start.elapsed()
}

/// A batch producer over `push(items)` that copies a prepared buffer: the buffer is refilled
/// only when the stream moved on, so a retry after "full" copies the same items again
/// without rebuilding them.
fn from_buffer<'a, T: Item>(
    mut push: impl FnMut(&[T]) -> usize + 'a,
) -> impl FnMut(u64, usize) -> usize + 'a {
    let mut buf = [T::from_seq(0); BATCH];
    let mut filled_from = u64::MAX;
    move |seq, max| {
        if filled_from != seq {
            for (i, slot) in buf[..max].iter_mut().enumerate() {
                *slot = T::from_seq(seq + i as u64);
            }
            filled_from = seq;
        }
        push(&buf[..max])
    }
}

/// A batch consumer over `pop(out)` that copies items into a buffer, then checks them.
fn into_buffer<'a, T: Item, W: Waiter>(
    w: &'a W,
    label: Label,
    mut pop: impl FnMut(&mut [T]) -> usize + 'a,
) -> impl FnMut(&mut u64, usize) -> usize + 'a {
    let mut buf = [T::from_seq(0); BATCH];
    move |next, max| {
        let popped = pop(&mut buf[..max]);
        for &item in &buf[..popped] {
            check(w, item, *next, label);
            *next += 1;
        }
        popped
    }
}

/// One batch taken in place: each item checked as `rx` hands it over.
#[inline(always)]
fn pop_each_checked<T: Item, W: Waiter>(
    w: &W,
    label: Label,
    rx: &mut impl BatchRx<T>,
    next: &mut u64,
    max: usize,
) -> usize {
    rx.pop_each(max, |item| {
        check(w, item, *next, label);
        *next += 1;
    })
}

fn rate(items: u64, elapsed: Duration) -> f64 {
    items as f64 / elapsed.as_secs_f64().max(1e-9)
}

#[inline(always)]
fn push_spin<T, P: Tx<T>, W: Waiter>(w: &W, tx: &mut P, mut item: T) {
    let mut turns = 0;
    loop {
        match tx.try_push(item) {
            Ok(()) => return,
            Err(back) => item = back,
        }
        w.turn(&mut turns);
    }
}

#[inline(always)]
fn pop_spin<T, C: Rx<T>, W: Waiter>(w: &W, rx: &mut C) -> T {
    let mut turns = 0;
    loop {
        if let Some(item) = rx.try_pop() {
            return item;
        }
        w.turn(&mut turns);
    }
}

/// Ends the run unless `item` is item number `expected`. `black_box` keeps the compiler from
/// reasoning about the item's contents, so every word really is loaded and compared.
#[inline(always)]
fn check<T: Item, W: Waiter>(w: &W, item: T, expected: u64, label: Label) {
    let item = black_box(item);
    if !item.carries(expected) {
        w.out_of_order(label.imp, label.case, expected, item.seq());
    }
}

// ---------------------------------------------------------------------------------------------
// Items

/// A benchmark item: item number `n` carries `n` in every word.
trait Item: Copy + Send + 'static {
    fn from_seq(seq: u64) -> Self;
    /// Whether every word of the item is `seq`.
    fn carries(&self, seq: u64) -> bool;
    /// The first word, for error messages.
    fn seq(&self) -> u64;
}

impl Item for u64 {
    #[inline(always)]
    fn from_seq(seq: u64) -> Self {
        seq
    }

    #[inline(always)]
    fn carries(&self, seq: u64) -> bool {
        *self == seq
    }

    fn seq(&self) -> u64 {
        *self
    }
}

/// The 64-byte item: a plain `Copy` struct, alignment 8 like most real messages; plain bytes
/// (zerocopy), so it is also a record of the shared-memory ring.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable)]
#[repr(C)]
struct Msg64([u64; 8]);

impl Item for Msg64 {
    #[inline(always)]
    fn from_seq(seq: u64) -> Self {
        Msg64([seq; 8])
    }

    #[inline(always)]
    fn carries(&self, seq: u64) -> bool {
        self.0.iter().all(|&word| word == seq)
    }

    fn seq(&self) -> u64 {
        self.0[0]
    }
}

// ---------------------------------------------------------------------------------------------
// The queues, seen through five small traits.

/// A queue's sending end: one item, or the item back if full.
trait Tx<T>: Send {
    fn try_push(&mut self, item: T) -> Result<(), T>;
}

/// A queue's receiving end: one item, or `None` if empty.
trait Rx<T>: Send {
    fn try_pop(&mut self) -> Option<T>;
}

/// Batch sending in place: writes items `seq..seq + n` (n <= max) straight into the slots
/// and publishes them once; returns n (0 if full).
trait ChunkTx<T>: Send {
    fn push_chunk(&mut self, seq: u64, max: usize) -> usize;
}

/// Batch sending by copy: copies as many of `items` as fit and publishes them once; returns
/// how many (0 if full).
trait SliceTx<T>: Send {
    fn push_copied(&mut self, items: &[T]) -> usize;
}

/// Batch receiving: `pop_each` hands up to `max` items to `f` in order, in place, and frees
/// their slots once; `pop_copied` copies up to `out.len()` items out. Both return how many
/// (0 if empty).
trait BatchRx<T>: Send {
    fn pop_each(&mut self, max: usize, f: impl FnMut(T)) -> usize;
    fn pop_copied(&mut self, out: &mut [T]) -> usize;
}

impl<T: Send> Tx<T> for spsc::Producer<T> {
    #[inline(always)]
    fn try_push(&mut self, item: T) -> Result<(), T> {
        self.push(item).map_err(spsc::PushError::into_inner)
    }
}

impl<T: Send> Rx<T> for spsc::Consumer<T> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<T> {
        self.pop().ok()
    }
}

impl<T: Item> ChunkTx<T> for spsc::Producer<T> {
    #[inline(always)]
    fn push_chunk(&mut self, seq: u64, max: usize) -> usize {
        let mut chunk = self.write_chunk(max);
        if chunk.is_empty() {
            return 0; // full: nothing to publish
        }
        chunk.fill_from((seq..).map(T::from_seq));
        chunk.commit()
    }
}

impl<T: Item> SliceTx<T> for spsc::Producer<T> {
    #[inline(always)]
    fn push_copied(&mut self, items: &[T]) -> usize {
        self.push_slice(items)
    }
}

impl<T: Item> BatchRx<T> for spsc::Consumer<T> {
    #[inline(always)]
    fn pop_each(&mut self, max: usize, f: impl FnMut(T)) -> usize {
        let chunk = self.read_chunk(max);
        let taken = chunk.len();
        chunk.for_each(f);
        taken
    }

    #[inline(always)]
    fn pop_copied(&mut self, out: &mut [T]) -> usize {
        self.pop_slice(out)
    }
}

/// A shared-memory ring end with the waiter that reports its verdicts. Between two honest
/// processes a `Corrupt` verdict is a bug (in the ring or in the harness): it ends the run
/// instead of looking like a full or empty ring forever.
struct Watched<'w, E, W> {
    end: E,
    w: &'w W,
    label: Label,
}

impl<'w, E, W> Watched<'w, E, W> {
    fn new(end: E, w: &'w W, label: Label) -> Self {
        Self { end, w, label }
    }
}

impl<T: Item + Record, R: Region + Send, W: Waiter + Sync> Tx<T>
    for Watched<'_, ShmProducer<T, R>, W>
{
    #[inline(always)]
    fn try_push(&mut self, item: T) -> Result<(), T> {
        match self.end.push(item) {
            Ok(()) => Ok(()),
            Err(ShmPushError::Full(item)) => Err(item),
            Err(ShmPushError::Corrupt(_, c)) => self.w.corrupt(self.label.imp, self.label.case, c),
        }
    }
}

impl<T: Item + Record, R: Region + Send, W: Waiter + Sync> SliceTx<T>
    for Watched<'_, ShmProducer<T, R>, W>
{
    #[inline(always)]
    fn push_copied(&mut self, items: &[T]) -> usize {
        let pushed = self.end.push_slice(items);
        if pushed == 0 {
            if let Some(c) = self.end.corruption() {
                self.w.corrupt(self.label.imp, self.label.case, c);
            }
        }
        pushed
    }
}

impl<T: Item + Record, R: Region + Send, W: Waiter + Sync> Rx<T>
    for Watched<'_, ShmConsumer<T, R>, W>
{
    #[inline(always)]
    fn try_pop(&mut self) -> Option<T> {
        match self.end.pop() {
            Ok(item) => Some(item),
            Err(ShmPopError::Empty) => None,
            Err(ShmPopError::Corrupt(c)) => self.w.corrupt(self.label.imp, self.label.case, c),
        }
    }
}

impl<T: Item + Record, R: Region + Send, W: Waiter + Sync> BatchRx<T>
    for Watched<'_, ShmConsumer<T, R>, W>
{
    #[inline(always)]
    fn pop_each(&mut self, max: usize, f: impl FnMut(T)) -> usize {
        match self.end.drain(max, f) {
            Ok(taken) => taken,
            Err(c) => self.w.corrupt(self.label.imp, self.label.case, c),
        }
    }

    #[inline(always)]
    fn pop_copied(&mut self, out: &mut [T]) -> usize {
        let popped = self.end.pop_slice(out);
        if popped == 0 {
            if let Some(c) = self.end.corruption() {
                self.w.corrupt(self.label.imp, self.label.case, c);
            }
        }
        popped
    }
}

impl<T: Send> Tx<T> for rtrb::Producer<T> {
    #[inline(always)]
    fn try_push(&mut self, item: T) -> Result<(), T> {
        self.push(item).map_err(|rtrb::PushError::Full(item)| item)
    }
}

impl<T: Send> Rx<T> for rtrb::Consumer<T> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<T> {
        self.pop().ok()
    }
}

/// rtrb's chunk calls ask for exactly `n` slots and fail with the number available if fewer
/// are; the cheap idiom is to ask for `max` (answered from the cached index when possible) and
/// on failure ask again for what is there (answered from the index just refreshed).
impl<T: Item> ChunkTx<T> for rtrb::Producer<T> {
    #[inline(always)]
    fn push_chunk(&mut self, seq: u64, max: usize) -> usize {
        let chunk = match self.write_chunk_uninit(max) {
            Ok(chunk) => chunk,
            Err(rtrb::chunks::ChunkError::TooFewSlots(0)) => return 0,
            Err(rtrb::chunks::ChunkError::TooFewSlots(n)) => match self.write_chunk_uninit(n) {
                Ok(chunk) => chunk,
                Err(_) => return 0,
            },
        };
        chunk.fill_from_iter((seq..).map(T::from_seq))
    }
}

impl<T: Item> SliceTx<T> for rtrb::Producer<T> {
    #[inline(always)]
    fn push_copied(&mut self, items: &[T]) -> usize {
        self.push_partial_slice(items).0.len()
    }
}

impl<T: Item> BatchRx<T> for rtrb::Consumer<T> {
    #[inline(always)]
    fn pop_each(&mut self, max: usize, f: impl FnMut(T)) -> usize {
        let chunk = match self.read_chunk(max) {
            Ok(chunk) => chunk,
            Err(rtrb::chunks::ChunkError::TooFewSlots(0)) => return 0,
            Err(rtrb::chunks::ChunkError::TooFewSlots(n)) => match self.read_chunk(n) {
                Ok(chunk) => chunk,
                Err(_) => return 0,
            },
        };
        let taken = chunk.len();
        chunk.into_iter().for_each(f);
        taken
    }

    #[inline(always)]
    fn pop_copied(&mut self, out: &mut [T]) -> usize {
        self.pop_partial_slice(out).0.len()
    }
}

/// Both ends of an `ArrayQueue` are the same shared queue.
struct SharedQueue<T>(Arc<ArrayQueue<T>>);

fn array_queue<T>(cap: usize) -> (SharedQueue<T>, SharedQueue<T>) {
    let queue = Arc::new(ArrayQueue::new(cap));
    (SharedQueue(queue.clone()), SharedQueue(queue))
}

impl<T: Send> Tx<T> for SharedQueue<T> {
    #[inline(always)]
    fn try_push(&mut self, item: T) -> Result<(), T> {
        self.0.push(item)
    }
}

impl<T: Send> Rx<T> for SharedQueue<T> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<T> {
        self.0.pop()
    }
}

impl<T: Send> Tx<T> for crossbeam_channel::Sender<T> {
    #[inline(always)]
    fn try_push(&mut self, item: T) -> Result<(), T> {
        self.try_send(item).map_err(crossbeam_channel::TrySendError::into_inner)
    }
}

impl<T: Send> Rx<T> for crossbeam_channel::Receiver<T> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pin::Cores;
    use corelane_rings::spsc::shm::HeapRegion;

    #[test]
    fn items_carry_their_number_in_every_word() {
        assert!(Msg64::from_seq(7).carries(7));
        let mut torn = Msg64::from_seq(7);
        torn.0[5] = 8;
        assert!(!torn.carries(7), "a torn item must fail the check");
        assert_eq!(std::mem::size_of::<Msg64>(), 64);
        assert_eq!(std::mem::align_of::<Msg64>(), 8);
        assert_eq!(Msg64::from_seq(3).as_bytes()[8..16], 3u64.to_ne_bytes());
        assert!(5u64.carries(5) && !5u64.carries(6));
    }

    #[test]
    fn every_case_has_rows_and_the_table_has_the_right_holes() {
        for case in CASES {
            assert!(IMPLS.iter().filter(|i| i.runs(case)).count() >= 2, "{}", case.name);
        }
        let case = |name: &str| CASES.into_iter().find(|c| c.name == name).unwrap();
        assert!(!Impl::CrossbeamChannel.runs(case("throughput-8B-batch")));
        assert!(Impl::Rtrb.runs(case("throughput-8B-slice")));
        let shm: Vec<&str> =
            CASES.into_iter().filter(|&c| Impl::CorelaneShm.runs(c)).map(|c| c.name).collect();
        assert_eq!(
            shm,
            ["rtt-64B", "throughput-64B", "throughput-64B-batch", "throughput-64B-slice"],
            "corelane-shm: every 64-byte case, no 8-byte one"
        );
    }

    #[test]
    fn wake_parked_has_the_three_wake_ups_and_nothing_else() {
        let wake = CASES.into_iter().find(|c| c.name == "wake-parked").unwrap();
        assert_eq!(wake.kind, Kind::Wake);
        let runs: Vec<&str> = IMPLS.into_iter().filter(|i| i.runs(wake)).map(Impl::name).collect();
        assert_eq!(runs, ["corelane-link", "futex", "eventfd"]);
        assert!(WAKE_BASELINE.runs(wake));
        for case in CASES.into_iter().filter(|c| c.kind != Kind::Wake) {
            assert!(IMPLS.iter().all(|i| !(i.wakes() && i.runs(case))), "{}", case.name);
        }
        assert!(HELP.contains("wake-parked") && HELP.contains("corelane-link"));
    }

    /// `--quick --only wake --rounds 1` through the suite's own `run`: three latency rows
    /// with plausible percentiles and ratios to the futex row, three skipped counts, and the
    /// wake settings; no other case measured.
    #[test]
    fn quick_wake_parked_reports_three_rows() {
        let Some(pair) = test_pair() else { return };
        let plan =
            Plan { rounds: 1, quick: true, pair, only: Some("wake"), peers: true, idle: None };
        let report = run(&plan);
        let per_round = Sizes::new(true).wake.samples;
        let latency: Vec<&Row> =
            report.rows.iter().filter(|r| matches!(r.measure, Measure::Latency { .. })).collect();
        let names: Vec<&str> = latency.iter().map(|r| r.imp).collect();
        assert_eq!(names, ["corelane-link", "futex", "eventfd"]);
        for row in &latency {
            assert_eq!(row.case, "wake-parked");
            let Measure::Latency { summary: s, ratio_p50, ratio_p99, baseline, .. } = &row.measure
            else {
                unreachable!("filtered above")
            };
            assert_eq!(*baseline, Baseline::Impl("futex"), "{}", row.imp);
            assert!(s.samples > 0 && s.samples <= per_round, "{}: {s:?}", row.imp);
            assert!(s.p50 > 100 && s.p50 <= s.p99 && s.p99 <= s.max, "{}: {s:?}", row.imp);
            assert!(ratio_p50.is_some_and(|r| r > 0.0) && ratio_p99.is_some(), "{}", row.imp);
            if row.imp == "futex" {
                assert_eq!((*ratio_p50, *ratio_p99), (Some(1.0), Some(1.0)));
            }
            let skipped = report.rows.iter().find_map(|r| match r.measure {
                Measure::Value { value, .. }
                    if r.imp == row.imp && r.case == "wake-parked-skipped" =>
                {
                    Some(value)
                }
                _ => None,
            });
            assert_eq!(skipped.map(|n| n + s.samples), Some(per_round), "{}", row.imp);
        }
        assert_eq!(report.rows.len(), 6, "only wake-parked was asked for");
        assert_eq!(report.settings["wake_samples_per_round"], per_round);
        assert!(report.settings["wake_lane_reactor"].is_string());
    }

    /// Alternates `push` and `pop` (the batch drivers' closures) on one thread until 1000
    /// items went through: the adapters move every item exactly once, in order.
    fn interleave(
        mut push: impl FnMut(u64, usize) -> usize,
        mut pop: impl FnMut(&mut u64, usize) -> usize,
    ) {
        let (mut seq, mut next) = (0u64, 0u64);
        while next < 1000 {
            let max = BATCH.min((1000 - seq) as usize);
            seq += push(seq, max) as u64;
            let before = next;
            let popped = pop(&mut next, 7);
            assert_eq!(next - before, popped as u64, "pop reports what it checked");
        }
        assert_eq!((seq, next), (1000, 1000));
    }

    const LABEL: Label = Label { imp: "test", case: "test" };

    fn shm_pair(
        capacity: usize,
    ) -> (ShmProducer<u64, Arc<HeapRegion>>, ShmConsumer<u64, Arc<HeapRegion>>) {
        let region = Arc::new(HeapRegion::new(region_len::<u64>(capacity).unwrap()));
        let tx = ShmProducer::<u64, _>::create(region.clone(), capacity as u64).unwrap();
        (tx, ShmConsumer::<u64, _>::attach(region).unwrap())
    }

    /// The batch adapters and fillers move every item exactly once, in order, for every crate
    /// (single thread, so this checks the adapters, not the timing).
    #[test]
    fn batch_adapters_move_items_in_order() {
        let w = &Threads;
        // In place, both ends (corelane heap, rtrb).
        let (mut tx, mut rx) = spsc::channel::<u64>(64);
        interleave(|s, m| tx.push_chunk(s, m), |n, m| pop_each_checked(w, LABEL, &mut rx, n, m));
        let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(64);
        interleave(|s, m| tx.push_chunk(s, m), |n, m| pop_each_checked(w, LABEL, &mut rx, n, m));
        // By copy, both ends.
        let (mut tx, mut rx) = spsc::channel::<u64>(64);
        interleave(from_buffer(|i| tx.push_copied(i)), into_buffer(w, LABEL, |o| rx.pop_copied(o)));
        let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(64);
        interleave(from_buffer(|i| tx.push_copied(i)), into_buffer(w, LABEL, |o| rx.pop_copied(o)));
        // The shared-memory ring: copy in, then drain or copy out.
        let (tx, rx) = shm_pair(64);
        let (mut tx, mut rx) = (Watched::new(tx, w, LABEL), Watched::new(rx, w, LABEL));
        interleave(from_buffer(|i| tx.push_copied(i)), |n, m| {
            pop_each_checked(w, LABEL, &mut rx, n, m)
        });
        let (tx, rx) = shm_pair(64);
        let (mut tx, mut rx) = (Watched::new(tx, w, LABEL), Watched::new(rx, w, LABEL));
        interleave(from_buffer(|i| tx.push_copied(i)), into_buffer(w, LABEL, |o| rx.pop_copied(o)));
    }

    #[test]
    fn single_item_adapters_of_the_shm_ring_say_full_and_empty() {
        let (tx, rx) = shm_pair(2);
        let (mut tx, mut rx) =
            (Watched::new(tx, &Threads, LABEL), Watched::new(rx, &Threads, LABEL));
        assert_eq!(rx.try_pop(), None);
        assert_eq!((tx.try_push(1), tx.try_push(2), tx.try_push(3)), (Ok(()), Ok(()), Err(3)));
        assert_eq!((rx.try_pop(), rx.try_pop(), rx.try_pop()), (Some(1), Some(2), None));
    }

    /// The pair to run cross-process tests on, or `None` (and a note) on a one-cpu machine.
    fn test_pair() -> Option<Pair> {
        let pair = Cores::discover().ok().and_then(|c| c.pick_pair(None).ok());
        if pair.is_none() {
            eprintln!("SKIPPED: fewer than two cpus, no cross-process test");
        }
        pair
    }

    const TINY: Sizes = Sizes {
        rtt_warmup: 100,
        rtt_samples: 1_000,
        stream_warmup: 2_000,
        stream_items: 20_000,
        fixed_warmup: 2_000,
        fixed_samples: 50_000,
        wake: wake::Sizes { warmup: 3, samples: 30 },
    };

    #[test]
    fn lateness_counts_from_the_intended_send_time() {
        let t0 = Instant::now();
        let at = |ns| t0 + Duration::from_nanos(ns);
        // Item 5 is due at 5 us; arriving at 5.3 us it is 300 ns late, less a 20 ns timer.
        assert_eq!(lateness_ns(t0, 5, at(5_300), 20), 280);
        // Item 7 held up behind a 2 ms stall: late by the stall, not by one round trip.
        assert_eq!(lateness_ns(t0, 7, at(2_007_000), 0), 2_000_000);
        assert_eq!(lateness_ns(t0, 9, at(8_000), 0), 0, "never negative");
        let fixed = CASES.into_iter().find(|c| c.name == "fixed-rate-1M").unwrap();
        let runs: Vec<&str> = IMPLS.into_iter().filter(|i| i.runs(fixed)).map(Impl::name).collect();
        assert_eq!(runs, ["corelane", "rtrb"]);
    }

    /// A sender that sleeps 2 ms once, inside its push of item `stall_at`.
    struct Stalling<P> {
        inner: P,
        pushed: u64,
        stall_at: u64,
    }

    impl<T, P: Tx<T>> Tx<T> for Stalling<P> {
        fn try_push(&mut self, item: T) -> Result<(), T> {
            if self.pushed == self.stall_at {
                std::thread::sleep(Duration::from_millis(2));
            }
            let r = self.inner.try_push(item);
            if r.is_ok() {
                self.pushed += 1;
            }
            r
        }
    }

    /// The point of the open loop: one 2 ms stall of the sender makes the ~2,000 items
    /// scheduled during it late, so the tail shows the stall (a closed loop would count one
    /// slow round trip). Lower bounds only.
    #[test]
    fn a_stall_shows_in_the_fixed_rate_tail() {
        let Some(pair) = test_pair() else { return };
        let (tx, rx) = spsc::channel::<u64>(CAPACITY);
        let stalling = Stalling { inner: tx, pushed: 0, stall_at: TINY.fixed_warmup + 10_000 };
        let label = Label { imp: "corelane", case: "test" };
        let samples = fixed_rate::<u64, _, _>(&pair, label, TINY, (stalling, rx));
        assert_eq!(samples.len(), TINY.fixed_samples as usize);
        let late = samples.iter().filter(|&&ns| ns >= 1_000_000).count();
        assert!(late >= 900, "{late} items over 1 ms late after a 2 ms stall");
        let s = Summary::of(&histogram_of(&samples));
        assert!(s.max >= 2_000_000 && s.p99 >= 100_000, "{s:?}");
    }

    /// The real corelane-shm measurements, forked from the test, at tiny sizes: every item
    /// arrives in order (a wrong one would end the test binary with status 3) and the child
    /// is reaped cleanly.
    #[test]
    fn shm_measurements_run_across_two_processes() {
        let Some(pair) = test_pair() else { return };
        let label = Label { imp: "corelane-shm", case: "test" };
        let samples = shm_rtt("test", label, &pair, TINY).unwrap();
        assert_eq!(samples.len(), 1_000);
        assert!(samples.iter().all(|&ns| ns > 0));
        for batch in [None, Some(Batch::Chunk), Some(Batch::Slice)] {
            match shm_stream("test", label, &pair, TINY, batch).unwrap() {
                Measured::Rate(rate) => assert!(rate > 0.0, "{batch:?}"),
                Measured::Latency(_) | Measured::Wake(_) => panic!("a stream measures a rate"),
            }
        }
    }
}
