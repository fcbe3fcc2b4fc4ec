//! Suite `spsc`: corelane's SPSC ring against rtrb, crossbeam-queue and crossbeam-channel.
//!
//! Every implementation gets the same capacity, the same items, the same two pinned cpus, the
//! same wait loop ([`relax`]) and the same order check; only the queue calls differ, and each
//! result row names them (`api`). The generic drivers ([`rtt`], [`stream`], [`stream_batch`])
//! see a queue only through the small traits [`Tx`], [`Rx`], [`BatchTx`], [`BatchRx`], which
//! are implemented once per crate at the bottom of the file.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corelane_rings::spsc;
use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;
use serde_json::json;

use super::{Plan, Suite};
use crate::floor::{self, Ratios};
use crate::pair::{self, out_of_order, relax};
use crate::pin::Pair;
use crate::report::{Measure, Report, Row};
use crate::summary::{accumulate, histogram, histogram_of, median, Summary};

pub const SUITE: Suite = Suite {
    name: "spsc",
    summary: "corelane's SPSC ring vs rtrb, crossbeam-queue ArrayQueue, crossbeam-channel bounded",
    help: HELP,
    run,
};

const HELP: &str = "    Implementations, all with capacity 1024:
      corelane           corelane_rings::spsc::channel
      rtrb               rtrb::RingBuffer (0.3)
      crossbeam-queue    crossbeam_queue::ArrayQueue in an Arc, push/pop (an MPMC queue)
      crossbeam-channel  crossbeam_channel::bounded, try_send/try_recv spinning (MPMC)
    Items: 8B = a u64; 64B = a Copy struct of [u64; 8]. Item n carries n in every word and
    the consumer checks every word.

    Cases:
      rtt-8B, rtt-64B    Round-trip latency. Thread A pushes item n into queue 1; thread B pops
                         it and pushes it into queue 2; A pops it. One item in flight. A takes
                         one Instant::now() per round trip and each sample is the gap to the
                         previous one, so the timer's cost (on the facts line) is inside every
                         sample, equally for all. Warm-up round trips first. Columns: p50, p90,
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
      throughput-8B-slice, throughput-64B-slice
                         As batch, through the copy-a-slice API: corelane push_slice/pop_slice,
                         rtrb push_partial_slice/pop_partial_slice; 32 items per call.
    Per round (default sizes; --quick in brackets): floor and every rtt case 2,000 [500]
    warm-up + 20,000 [3,000] timed round trips; every throughput case 200,000 [10,000] warm-up
    + 2,000,000 [100,000] timed items.
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
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                rtt_warmup: 500,
                rtt_samples: 3_000,
                stream_warmup: 10_000,
                stream_items: 100_000,
            }
        } else {
            Self {
                rtt_warmup: 2_000,
                rtt_samples: 20_000,
                stream_warmup: 200_000,
                stream_items: 2_000_000,
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Corelane,
    Rtrb,
    CrossbeamQueue,
    CrossbeamChannel,
}

/// Table order; each round starts one further along this list.
const IMPLS: [Impl; 4] = [Impl::Corelane, Impl::Rtrb, Impl::CrossbeamQueue, Impl::CrossbeamChannel];

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Corelane => "corelane",
            Impl::Rtrb => "rtrb",
            Impl::CrossbeamQueue => "crossbeam-queue",
            Impl::CrossbeamChannel => "crossbeam-channel",
        }
    }

    fn runs(self, kind: Kind) -> bool {
        match kind {
            Kind::Rtt | Kind::Stream => true,
            Kind::Batch(_) => matches!(self, Impl::Corelane | Impl::Rtrb),
        }
    }

    fn api(self, kind: Kind) -> &'static str {
        match (self, kind) {
            (Impl::Corelane | Impl::Rtrb, Kind::Rtt | Kind::Stream) => "push/pop",
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

const CASES: [Case; 8] = [
    Case { name: "rtt-8B", size: Size::B8, kind: Kind::Rtt },
    Case { name: "rtt-64B", size: Size::B64, kind: Kind::Rtt },
    Case { name: "throughput-8B", size: Size::B8, kind: Kind::Stream },
    Case { name: "throughput-64B", size: Size::B64, kind: Kind::Stream },
    Case { name: "throughput-8B-batch", size: Size::B8, kind: Kind::Batch(Batch::Chunk) },
    Case { name: "throughput-64B-batch", size: Size::B64, kind: Kind::Batch(Batch::Chunk) },
    Case { name: "throughput-8B-slice", size: Size::B8, kind: Kind::Batch(Batch::Slice) },
    Case { name: "throughput-64B-slice", size: Size::B64, kind: Kind::Batch(Batch::Slice) },
];

/// One (implementation, case) accumulated over rounds.
struct Cell {
    imp: Impl,
    case: Case,
    acc: Acc,
}

enum Acc {
    Latency { all: Histogram<u64>, ratios: Ratios },
    Rate(Vec<f64>),
}

/// What one measurement returns.
enum Measured {
    /// Round-trip samples, ns.
    Latency(Vec<u64>),
    /// Items per second.
    Rate(f64),
}

fn run(plan: &Plan) -> Report {
    let sizes = Sizes::new(plan.quick);
    let mut cells: Vec<Cell> = CASES
        .iter()
        .flat_map(|&case| IMPLS.iter().map(move |&imp| (imp, case)))
        .filter(|(imp, case)| imp.runs(case.kind) && plan.wants(case.name))
        .map(|(imp, case)| Cell {
            imp,
            case,
            acc: match case.kind {
                Kind::Rtt => Acc::Latency { all: histogram(), ratios: Ratios::default() },
                Kind::Stream | Kind::Batch(_) => Acc::Rate(Vec::new()),
            },
        })
        .collect();

    let mut floor_all = histogram();
    for round in 0..plan.rounds as usize {
        eprint!("\rspsc: round {}/{} ", round + 1, plan.rounds);
        let floor_round =
            histogram_of(&floor::measure(&plan.pair, sizes.rtt_warmup, sizes.rtt_samples));
        accumulate(&mut floor_all, &floor_round);
        let floor_round = Summary::of(&floor_round);
        for case in CASES {
            for k in 0..IMPLS.len() {
                let imp = IMPLS[(k + round) % IMPLS.len()];
                let Some(cell) =
                    cells.iter_mut().find(|c| c.imp == imp && c.case.name == case.name)
                else {
                    continue; // this implementation has no such case
                };
                match (measure(imp, case, &plan.pair, sizes), &mut cell.acc) {
                    (Measured::Latency(samples), Acc::Latency { all, ratios }) => {
                        let this_round = histogram_of(&samples);
                        ratios.push(&Summary::of(&this_round), &floor_round);
                        accumulate(all, &this_round);
                    }
                    (Measured::Rate(rate), Acc::Rate(rates)) => rates.push(rate),
                    _ => unreachable!("measure returns the kind of result its case's Acc holds"),
                }
            }
        }
    }
    eprintln!();

    let rows = cells
        .into_iter()
        .map(|cell| Row {
            imp: cell.imp.name(),
            case: cell.case.name,
            api: cell.imp.api(cell.case.kind),
            measure: match cell.acc {
                Acc::Latency { all, ratios } => Measure::Latency {
                    summary: Summary::of(&all),
                    ratio_p50: ratios.p50(),
                    ratio_p99: ratios.p99(),
                },
                Acc::Rate(rates) => Measure::Rate {
                    median: median(&rates).unwrap_or(0.0),
                    min: rates.iter().copied().fold(f64::INFINITY, f64::min),
                    max: rates.iter().copied().fold(0.0, f64::max),
                    rounds: rates.len(),
                },
            },
        })
        .collect();

    Report {
        suite: SUITE.name,
        floor: Some(Summary::of(&floor_all)),
        rows,
        settings: json!({
            "rounds": plan.rounds,
            "quick": plan.quick,
            "capacity": CAPACITY,
            "batch": BATCH,
            "rtt_warmup": sizes.rtt_warmup,
            "rtt_samples_per_round": sizes.rtt_samples,
            "stream_warmup": sizes.stream_warmup,
            "stream_items_per_round": sizes.stream_items,
            "wait": "busy spin",
        }),
    }
}

/// One measurement of `imp` on `case`, with fresh queues and fresh pinned threads.
fn measure(imp: Impl, case: Case, pair: &Pair, sizes: Sizes) -> Measured {
    let label = Label { imp: imp.name(), case: case.name };
    match case.size {
        Size::B8 => measure_items::<u64>(imp, case.kind, label, pair, sizes),
        Size::B64 => measure_items::<Msg64>(imp, case.kind, label, pair, sizes),
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
        }),
        Kind::Stream => Measured::Rate(match imp {
            Impl::Corelane => stream::<T, _, _>(pair, label, sizes, spsc::channel(cap)),
            Impl::Rtrb => stream::<T, _, _>(pair, label, sizes, rtrb::RingBuffer::new(cap)),
            Impl::CrossbeamQueue => stream::<T, _, _>(pair, label, sizes, array_queue(cap)),
            Impl::CrossbeamChannel => {
                stream::<T, _, _>(pair, label, sizes, crossbeam_channel::bounded(cap))
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
        }),
    }
}

/// Names the run in an out-of-order report.
#[derive(Clone, Copy, Debug)]
struct Label {
    imp: &'static str,
    case: &'static str,
}

// ---------------------------------------------------------------------------------------------
// Drivers

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
    let Sizes { rtt_warmup: warmup, rtt_samples: samples, .. } = sizes;
    let total = warmup + samples;
    let (samples, ()) = pair::run(
        pair,
        move || {
            pair::time_round_trips(warmup, samples, |seq| {
                push_spin(&mut there_tx, T::from_seq(seq));
                check(pop_spin(&mut back_rx), seq, label);
            })
        },
        move || {
            for seq in 0..total {
                let item = pop_spin(&mut there_rx);
                check(item, seq, label);
                push_spin(&mut back_tx, item);
            }
        },
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
    let Sizes { stream_warmup: warmup, stream_items: items, .. } = sizes;
    let total = warmup + items;
    let ((), elapsed) = pair::run(
        pair,
        move || {
            for seq in 0..total {
                push_spin(&mut tx, T::from_seq(seq));
            }
        },
        move || {
            for seq in 0..warmup {
                check(pop_spin(&mut rx), seq, label);
            }
            let start = Instant::now();
            for seq in warmup..total {
                check(pop_spin(&mut rx), seq, label);
            }
            start.elapsed()
        },
    );
    rate(items, elapsed)
}

/// As [`stream`], up to [`BATCH`] items per call through the chunk or slice API.
fn stream_batch<T: Item, P: BatchTx<T>, C: BatchRx<T>>(
    pair: &Pair,
    label: Label,
    sizes: Sizes,
    batch: Batch,
    (mut tx, mut rx): (P, C),
) -> f64 {
    let Sizes { stream_warmup: warmup, stream_items: items, .. } = sizes;
    let total = warmup + items;
    let ((), elapsed) = pair::run(
        pair,
        move || {
            let mut buf = [T::from_seq(0); BATCH];
            let mut filled_from = u64::MAX;
            let mut seq = 0;
            while seq < total {
                let max = BATCH.min((total - seq) as usize);
                let pushed = match batch {
                    Batch::Chunk => tx.push_chunk(seq, max),
                    Batch::Slice => {
                        if filled_from != seq {
                            for (i, slot) in buf[..max].iter_mut().enumerate() {
                                *slot = T::from_seq(seq + i as u64);
                            }
                            filled_from = seq;
                        }
                        tx.push_copied(&buf[..max])
                    }
                };
                if pushed == 0 {
                    relax();
                }
                seq += pushed as u64;
            }
        },
        move || {
            let mut buf = [T::from_seq(0); BATCH];
            let mut next = 0;
            let mut pop_until = |end: u64, next: &mut u64| {
                while *next < end {
                    let max = BATCH.min((end - *next) as usize);
                    let popped = match batch {
                        Batch::Chunk => rx.pop_chunk(next, max, label),
                        Batch::Slice => {
                            let popped = rx.pop_copied(&mut buf[..max]);
                            for &item in &buf[..popped] {
                                check(item, *next, label);
                                *next += 1;
                            }
                            popped
                        }
                    };
                    if popped == 0 {
                        relax();
                    }
                }
            };
            pop_until(warmup, &mut next);
            let start = Instant::now();
            pop_until(total, &mut next);
            start.elapsed()
        },
    );
    rate(items, elapsed)
}

fn rate(items: u64, elapsed: Duration) -> f64 {
    items as f64 / elapsed.as_secs_f64().max(1e-9)
}

#[inline(always)]
fn push_spin<T, P: Tx<T>>(tx: &mut P, mut item: T) {
    loop {
        match tx.try_push(item) {
            Ok(()) => return,
            Err(back) => item = back,
        }
        relax();
    }
}

#[inline(always)]
fn pop_spin<T, C: Rx<T>>(rx: &mut C) -> T {
    loop {
        if let Some(item) = rx.try_pop() {
            return item;
        }
        relax();
    }
}

/// Ends the run unless `item` is item number `expected`. `black_box` keeps the compiler from
/// reasoning about the item's contents, so every word really is loaded and compared.
#[inline(always)]
fn check<T: Item>(item: T, expected: u64, label: Label) {
    let item = black_box(item);
    if !item.carries(expected) {
        out_of_order(label.imp, label.case, expected, item.seq());
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

/// The 64-byte item: a plain `Copy` struct, alignment 8 like most real messages.
#[derive(Clone, Copy, Debug)]
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
// The queues, seen through four small traits.

/// A queue's sending end: one item, or the item back if full.
trait Tx<T>: Send {
    fn try_push(&mut self, item: T) -> Result<(), T>;
}

/// A queue's receiving end: one item, or `None` if empty.
trait Rx<T>: Send {
    fn try_pop(&mut self) -> Option<T>;
}

/// Batch sending: `push_chunk` writes items `seq..seq + n` in place, `push_copied` copies a
/// prepared slice. Both publish once and return how many went in (0 if full).
trait BatchTx<T>: Send {
    fn push_chunk(&mut self, seq: u64, max: usize) -> usize;
    fn push_copied(&mut self, items: &[T]) -> usize;
}

/// Batch receiving: `pop_chunk` takes up to `max` items in place, checking each against
/// `*next` and advancing it; `pop_copied` copies up to `out.len()` items out. Both return how
/// many (0 if empty).
trait BatchRx<T>: Send {
    fn pop_chunk(&mut self, next: &mut u64, max: usize, label: Label) -> usize;
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

impl<T: Item> BatchTx<T> for spsc::Producer<T> {
    #[inline(always)]
    fn push_chunk(&mut self, seq: u64, max: usize) -> usize {
        let mut chunk = self.write_chunk(max);
        if chunk.is_empty() {
            return 0; // full: nothing to publish
        }
        chunk.fill_from((seq..).map(T::from_seq));
        chunk.commit()
    }

    #[inline(always)]
    fn push_copied(&mut self, items: &[T]) -> usize {
        self.push_slice(items)
    }
}

impl<T: Item> BatchRx<T> for spsc::Consumer<T> {
    #[inline(always)]
    fn pop_chunk(&mut self, next: &mut u64, max: usize, label: Label) -> usize {
        let chunk = self.read_chunk(max);
        let taken = chunk.len();
        for item in chunk {
            check(item, *next, label);
            *next += 1;
        }
        taken
    }

    #[inline(always)]
    fn pop_copied(&mut self, out: &mut [T]) -> usize {
        self.pop_slice(out)
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
impl<T: Item> BatchTx<T> for rtrb::Producer<T> {
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

    #[inline(always)]
    fn push_copied(&mut self, items: &[T]) -> usize {
        self.push_partial_slice(items).0.len()
    }
}

impl<T: Item> BatchRx<T> for rtrb::Consumer<T> {
    #[inline(always)]
    fn pop_chunk(&mut self, next: &mut u64, max: usize, label: Label) -> usize {
        let chunk = match self.read_chunk(max) {
            Ok(chunk) => chunk,
            Err(rtrb::chunks::ChunkError::TooFewSlots(0)) => return 0,
            Err(rtrb::chunks::ChunkError::TooFewSlots(n)) => match self.read_chunk(n) {
                Ok(chunk) => chunk,
                Err(_) => return 0,
            },
        };
        let taken = chunk.len();
        for item in chunk {
            check(item, *next, label);
            *next += 1;
        }
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

    #[test]
    fn items_carry_their_number_in_every_word() {
        assert!(Msg64::from_seq(7).carries(7));
        let mut torn = Msg64::from_seq(7);
        torn.0[5] = 8;
        assert!(!torn.carries(7), "a torn item must fail the check");
        assert_eq!(std::mem::size_of::<Msg64>(), 64);
        assert!(5u64.carries(5) && !5u64.carries(6));
    }

    #[test]
    fn every_case_has_rows_and_crossbeam_has_no_batch() {
        for case in CASES {
            assert!(IMPLS.iter().filter(|i| i.runs(case.kind)).count() >= 2, "{}", case.name);
        }
        assert!(!Impl::CrossbeamChannel.runs(Kind::Batch(Batch::Chunk)));
        assert!(Impl::Rtrb.runs(Kind::Batch(Batch::Slice)));
    }

    /// The batch adapters move every item exactly once, in order, for every crate (single
    /// thread, so this checks the adapters, not the timing).
    #[test]
    fn batch_adapters_move_items_in_order() {
        fn drive<P: BatchTx<u64>, C: BatchRx<u64>>((mut tx, mut rx): (P, C), batch: Batch) {
            let label = Label { imp: "test", case: "test" };
            let (mut seq, mut next, mut buf) = (0u64, 0u64, [0u64; BATCH]);
            while next < 1000 {
                let max = BATCH.min((1000 - seq) as usize);
                seq += match batch {
                    Batch::Chunk => tx.push_chunk(seq, max),
                    Batch::Slice => {
                        let items: Vec<u64> = (seq..seq + max as u64).collect();
                        tx.push_copied(&items)
                    }
                } as u64;
                match batch {
                    Batch::Chunk => {
                        rx.pop_chunk(&mut next, 7, label);
                    }
                    Batch::Slice => {
                        let n = rx.pop_copied(&mut buf[..7]);
                        for &item in &buf[..n] {
                            assert_eq!(item, next);
                            next += 1;
                        }
                    }
                }
            }
            assert_eq!(next, 1000);
        }
        for batch in [Batch::Chunk, Batch::Slice] {
            drive(spsc::channel::<u64>(64), batch);
            drive(rtrb::RingBuffer::<u64>::new(64), batch);
        }
    }
}
