//! The timer's own cost, measured once at start and taken out of every latency sample.
//!
//! A latency sample is the gap between two `Instant::now()` calls, so it holds the time the
//! measured code took plus the cost of one clock read (the tail of the first call and the
//! head of the second). On a `tsc` clock source that is ~20 ns, a tenth of a cross-core
//! round trip; on a VM without a usable TSC it can be a microsecond. [`calibrate`] measures
//! the median gap between back-to-back `Instant::now()` calls; [`net_ns`] subtracts it from a
//! sample (saturating at 0), so the percentiles show the code, not the clock. The cost is the
//! same for every implementation, so differences and the ranking do not change; ratios to
//! the floor grow a little, since the floor loses the same nanoseconds from a smaller number.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The measured cost of one clock read, in ns (0 until [`calibrate`] runs: tests and
/// children that never calibrate subtract nothing).
static COST_NS: AtomicU64 = AtomicU64::new(0);

/// Back-to-back clock reads per calibration.
const READS: usize = 1001;

/// Measures the cost of one `Instant::now()` (median of [`READS`] - 1 back-to-back gaps),
/// keeps it for [`cost_ns`], and returns it. Call once, before any thread is started.
pub fn calibrate() -> u64 {
    let cost = measure();
    COST_NS.store(cost, Ordering::Relaxed);
    cost
}

/// The cost [`calibrate`] measured (0 if it never ran).
pub fn cost_ns() -> u64 {
    COST_NS.load(Ordering::Relaxed)
}

/// Median gap between consecutive `Instant::now()` calls, in ns.
pub fn measure() -> u64 {
    let mut stamps = Vec::with_capacity(READS);
    for _ in 0..READS {
        stamps.push(Instant::now());
    }
    let mut gaps = raw_gaps_ns(&stamps);
    gaps.sort_unstable();
    gaps[gaps.len() / 2]
}

/// A raw sample with the timer's cost taken out, never below 0.
#[inline(always)]
pub fn net_ns(raw_ns: u64, cost_ns: u64) -> u64 {
    raw_ns.saturating_sub(cost_ns)
}

/// Gaps between consecutive timestamps, each less `cost_ns` (saturating): one sample each.
pub fn net_gaps_ns(stamps: &[Instant], cost_ns: u64) -> Vec<u64> {
    stamps.windows(2).map(|w| net_ns((w[1] - w[0]).as_nanos() as u64, cost_ns)).collect()
}

fn raw_gaps_ns(stamps: &[Instant]) -> Vec<u64> {
    net_gaps_ns(stamps, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn subtracts_the_cost_and_saturates() {
        assert_eq!(net_ns(100, 20), 80);
        assert_eq!(net_ns(20, 20), 0);
        assert_eq!(net_ns(7, 20), 0, "a sample faster than the clock is 0, not a wrap");
        let t0 = Instant::now();
        let stamps = [
            t0,
            t0 + Duration::from_nanos(100),
            t0 + Duration::from_nanos(250),
            t0 + Duration::from_nanos(260),
        ];
        assert_eq!(net_gaps_ns(&stamps, 20), vec![80, 130, 0]);
        assert_eq!(net_gaps_ns(&stamps, 0), vec![100, 150, 10]);
        assert!(net_gaps_ns(&stamps[..1], 20).is_empty());
    }

    #[test]
    fn measured_cost_is_plausible() {
        // A clock read costs something and far less than a millisecond on any machine that
        // can run the benchmarks (a lower bound and a generous upper one, no speed claim).
        let cost = measure();
        assert!(cost < 1_000_000, "one Instant::now() took {cost} ns");
    }
}
