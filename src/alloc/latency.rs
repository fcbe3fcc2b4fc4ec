//! The latency probe of the alloc server (`[alloc] latency_probe`, off by default): for every
//! event applied to the ledger on arrival, `CLOCK_MONOTONIC` now minus the event's
//! `timestamp_ns` (the client stamps the same clock; both processes share it), in an HDR
//! histogram the lane owns. A `LatencyReport` query (msg_type 20) reads it and starts afresh.
//!
//! Off, the core holds `None` and pays one predictable branch per batch of records or frames,
//! never a clock read. On, one `clock_gettime` (vDSO) and one histogram record per event.
//! Only events applied when they arrive are sampled (in order, or late after their gap was
//! skipped); an event held in the reorder window waits for an earlier one, and its wait is
//! the gap's, not the path's.

use hdrhistogram::Histogram;

use super::proto;

/// Highest latency told apart (60 s); larger ones count as this.
const HIGHEST_NS: u64 = 60_000_000_000;

/// See the [module docs](self).
pub struct LatencyProbe {
    histogram: Histogram<u64>,
}

impl LatencyProbe {
    /// An empty probe (1 ns to 60 s, 3 significant figures: about 200 KiB, allocated once).
    pub fn new() -> Box<Self> {
        // The bounds are constants that satisfy 1 <= low, 2 * low <= high, sigfig <= 5.
        let histogram = Histogram::new_with_bounds(1, HIGHEST_NS, 3)
            .expect("constant histogram bounds are valid");
        Box::new(LatencyProbe { histogram })
    }

    /// An event stamped `stamp_ns` (`CLOCK_MONOTONIC`, the client's) was applied just now.
    #[inline]
    pub fn applied(&mut self, stamp_ns: u64) {
        self.histogram.saturating_record(monotonic_ns().saturating_sub(stamp_ns));
    }

    /// The reply to a `LatencyReport` query: the percentiles since the previous one, and the
    /// histogram itself (so that a reader can merge several); then starts afresh.
    pub fn take(&mut self) -> proto::LatencyReply {
        let h = &self.histogram;
        let mut buckets = Vec::new();
        for v in h.iter_recorded() {
            buckets.push(v.value_iterated_to());
            buckets.push(v.count_at_value());
        }
        let reply = proto::LatencyReply {
            count: h.len(),
            p50_ns: h.value_at_quantile(0.50),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
            buckets,
        };
        self.histogram.reset();
        reply
    }
}

impl std::fmt::Debug for LatencyProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyProbe").field("len", &self.histogram.len()).finish()
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock clients stamp `timestamp_ns` with for the probe.
#[inline]
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_reads_and_resets() {
        let mut p = LatencyProbe::new();
        let now = monotonic_ns();
        p.applied(now);
        p.applied(now.saturating_sub(1_000_000)); // 1 ms ago
        let r = p.take();
        assert_eq!(r.count, 2);
        assert!(r.max_ns >= 1_000_000, "max {}", r.max_ns);
        assert!(r.p50_ns <= r.max_ns);
        assert_eq!(r.buckets.len(), 4, "two (value, count) pairs");
        assert_eq!(r.buckets[1] + r.buckets[3], 2);
        assert_eq!(p.take().count, 0, "a report starts afresh");
        // A stamp from the future (another clock) counts as 0, never wraps.
        p.applied(u64::MAX);
        assert_eq!(p.take().max_ns, 0);
    }
}
