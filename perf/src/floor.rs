//! The floor: the hardware's cross-core round trip, measured every round.
//!
//! Two threads on the benchmark's two cpus, each storing to its own 128-byte-aligned cache
//! line and spinning on the other's. A round trip moves one line to the other cpu and one line
//! back and does nothing else, so no queue between those cpus can be faster. Latencies are
//! reported as ratios to the floor of the same round, which cancels most of the drift in
//! cross-core cost between runs (2-3x on shared and virtual machines).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::pair::{self, relax};
use crate::pin::Pair;
use crate::summary::{median, Summary};

/// One cache line's worth of a single counter, alone on its 128-byte pair of lines (x86
/// prefetches lines in adjacent pairs, so 64-byte alignment could still share traffic).
#[repr(align(128))]
struct Line(AtomicU64);

struct Lines {
    ping: Line,
    pong: Line,
}

/// `warmup` unrecorded round trips, then `samples` timed ones; one sample (ns) per round trip,
/// taken as the gap between consecutive `Instant::now()` calls like every queue round trip.
pub fn measure(pair: &Pair, warmup: u64, samples: u64) -> Vec<u64> {
    let lines = Lines { ping: Line(AtomicU64::new(0)), pong: Line(AtomicU64::new(0)) };
    let total = warmup + samples;
    let lines = &lines;
    let (samples, ()) = pair::run(
        pair,
        move || {
            // Sequence numbers start at 1: the lines start at 0.
            pair::time_round_trips(warmup, samples, |i| {
                let seq = i + 1;
                // SYNC: the Release store of `ping` pairs with B's Acquire load; the Acquire
                // load of `pong` with B's Release store: the orderings of a queue's hand-off.
                lines.ping.0.store(seq, Ordering::Release);
                while lines.pong.0.load(Ordering::Acquire) != seq {
                    relax();
                }
            })
        },
        move || {
            for seq in 1..=total {
                // SYNC: Acquire pairs with A's Release store of `ping`; our Release store of
                // `pong` pairs with A's Acquire load.
                while lines.ping.0.load(Ordering::Acquire) != seq {
                    relax();
                }
                lines.pong.0.store(seq, Ordering::Release);
            }
        },
    );
    samples
}

/// Per-round ratios of one latency result to the floor, and their medians.
#[derive(Clone, Debug, Default)]
pub struct Ratios {
    p50: Vec<f64>,
    p99: Vec<f64>,
}

impl Ratios {
    /// Adds one round: the result's and the floor's summaries from the same round. A floor of
    /// 0 ns (a broken clock) adds nothing rather than an infinity.
    pub fn push(&mut self, round: &Summary, floor: &Summary) {
        if floor.p50 > 0 {
            self.p50.push(round.p50 as f64 / floor.p50 as f64);
        }
        if floor.p99 > 0 {
            self.p99.push(round.p99 as f64 / floor.p99 as f64);
        }
    }

    /// Median over rounds of (result p50 / floor p50).
    pub fn p50(&self) -> Option<f64> {
        median(&self.p50)
    }

    /// Median over rounds of (result p99 / floor p99).
    pub fn p99(&self) -> Option<f64> {
        median(&self.p99)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p50: u64, p99: u64) -> Summary {
        Summary { p50, p99, ..Summary::default() }
    }

    #[test]
    fn ratio_is_the_median_of_same_round_ratios() {
        let mut r = Ratios::default();
        // Drift: the floor doubles between rounds and the result with it; the ratio holds.
        r.push(&summary(200, 400), &summary(100, 100));
        r.push(&summary(400, 900), &summary(200, 300));
        r.push(&summary(900, 300), &summary(100, 100)); // one disturbed round
        assert_eq!(r.p50(), Some(2.0));
        assert_eq!(r.p99(), Some(3.0));
    }

    #[test]
    fn zero_floor_and_no_rounds() {
        let mut r = Ratios::default();
        assert_eq!(r.p50(), None);
        r.push(&summary(100, 100), &summary(0, 0));
        assert_eq!((r.p50(), r.p99()), (None, None));
    }

    #[test]
    fn lines_are_apart() {
        assert_eq!(std::mem::align_of::<Line>(), 128);
        assert_eq!(std::mem::size_of::<Lines>(), 256);
    }
}
