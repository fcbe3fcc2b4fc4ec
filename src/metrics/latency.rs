//! Latency histograms a lane owns, published as summaries.

use core::fmt;

use hdrhistogram::Histogram;

use super::file::Summary;

/// The quantiles [`LatencyRecorder::publish`] writes, with their `quantile` label values (give
/// them to [`Registry::register_summary`](super::Registry::register_summary)). Max is published
/// as quantile `1`.
pub const QUANTILES: [(f64, &str); 4] =
    [(0.5, "0.5"), (0.99, "0.99"), (0.999, "0.999"), (1.0, "1")];

/// An HDR histogram of latencies in nanoseconds (1 ns to 60 s, 2 significant figures: within
/// 1%) that a lane owns and records into without allocating, publishing quantiles every
/// interval, with the cumulative sum and count of everything recorded.
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
    /// Nanoseconds recorded since creation (wrapping; as recorded, before saturation).
    sum_ns: u64,
    /// Latencies recorded since creation.
    count: u64,
}

impl LatencyRecorder {
    /// Lowest value told apart, ns.
    pub const LOWEST_NS: u64 = 1;
    /// Highest value tracked, ns (60 s); larger values are recorded as this.
    pub const HIGHEST_NS: u64 = 60_000_000_000;
    /// Significant figures kept: 2, every quantile within 1%. Its counts take 30 KiB; with 3
    /// figures they took 216 KiB, zeroed at start-up, per recorder (the frame worker has two),
    /// which was most of the daemon's private memory at idle.
    pub const SIGNIFICANT_FIGURES: u8 = 2;

    /// An empty recorder (allocates its buckets, about 30 KiB, once).
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(
            Self::LOWEST_NS,
            Self::HIGHEST_NS,
            Self::SIGNIFICANT_FIGURES,
        )
        // The bounds are constants that satisfy 1 <= low, 2 * low <= high, sigfig <= 5.
        .expect("constant histogram bounds are valid");
        Self { histogram, sum_ns: 0, count: 0 }
    }

    /// Records one latency; values above [`HIGHEST_NS`](Self::HIGHEST_NS) count as that. Never
    /// allocates.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.histogram.saturating_record(ns);
        self.sum_ns = self.sum_ns.wrapping_add(ns.min(Self::HIGHEST_NS));
        self.count += 1;
    }

    /// Number of latencies recorded since the last publish.
    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    /// Whether nothing was recorded since the last publish.
    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    /// The histogram of the current interval.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.histogram
    }

    /// Publishes the interval's p50, p99, p99.9 and max, with the cumulative sum and count, as
    /// one window of `summary` (registered with [`QUANTILES`]), and starts a new interval (the
    /// quantiles show the latest interval, sum and count the whole run). An empty interval
    /// leaves the summary as it was and returns `false`. Clearing costs one pass over the
    /// buckets: call it every publish interval (say once a second), not per event.
    pub fn publish(&mut self, summary: &Summary) -> bool {
        if self.histogram.is_empty() {
            return false;
        }
        let h = &self.histogram;
        let quantiles = [
            h.value_at_quantile(QUANTILES[0].0),
            h.value_at_quantile(QUANTILES[1].0),
            h.value_at_quantile(QUANTILES[2].0),
            h.max(),
        ];
        summary.publish(&quantiles, self.sum_ns, self.count);
        self.histogram.reset();
        true
    }

    /// Nanoseconds recorded since creation (each value capped at
    /// [`HIGHEST_NS`](Self::HIGHEST_NS)).
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    /// Latencies recorded since creation.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LatencyRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyRecorder")
            .field("len", &self.histogram.len())
            .field("max", &self.histogram.max())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{MetricsError, Registry, Unit};

    #[test]
    fn quantiles_sum_and_count_land_in_the_summary() {
        let mut registry = Registry::new();
        let ids = registry
            .register_summary(
                "corelane_test_pass_seconds",
                &[("lane", "main")],
                "Lane pass time.",
                &QUANTILES,
            )
            .unwrap();
        let file = registry.create_in_memory().unwrap();
        let summary = file.summary(ids);

        let mut recorder = LatencyRecorder::new();
        assert!(!recorder.publish(&summary), "empty interval publishes nothing");
        for ns in 1..=10_000u64 {
            recorder.record(ns);
        }
        recorder.record(0);
        recorder.record(u64::MAX); // saturates at 60 s
        assert!(recorder.publish(&summary));
        assert!(recorder.is_empty(), "publish starts a new interval");

        // Two significant figures: within 1%, in 30 KiB of counts (3 figures took 216 KiB).
        assert!(recorder.histogram().distinct_values() * 8 <= 32 * 1024);
        let (q, sum, count) = summary.get();
        let near = |value: u64, want: u64| value.abs_diff(want) <= want / 100 + 1;
        assert!(near(q[0], 5_000), "p50 {}", q[0]);
        assert!(near(q[1], 9_900), "p99 {}", q[1]);
        assert!(near(q[2], 9_990), "p99.9 {}", q[2]);
        assert!(near(q[3], LatencyRecorder::HIGHEST_NS), "max {}", q[3]);
        assert_eq!(count, 10_002);
        assert_eq!(sum, 10_000 * 10_001 / 2 + LatencyRecorder::HIGHEST_NS);

        let samples = file.reader().snapshot();
        let names: Vec<&str> = samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                r#"corelane_test_pass_seconds{lane="main",quantile="0.5"}"#,
                r#"corelane_test_pass_seconds{lane="main",quantile="0.99"}"#,
                r#"corelane_test_pass_seconds{lane="main",quantile="0.999"}"#,
                r#"corelane_test_pass_seconds{lane="main",quantile="1"}"#,
                r#"corelane_test_pass_seconds_sum{lane="main"}"#,
                r#"corelane_test_pass_seconds_count{lane="main"}"#,
            ],
            "the window word is not a sample"
        );
        assert!(samples[..5].iter().all(|s| s.unit == Unit::Nanoseconds));
        assert_eq!(samples[5].unit, Unit::None);

        // The next interval replaces the quantiles; sum and count go on.
        recorder.record(42);
        assert!(recorder.publish(&summary));
        let (q, sum, count) = summary.get();
        assert_eq!((q[0], q[3]), (42, 42));
        assert_eq!(count, 10_003);
        assert_eq!(sum, 10_000 * 10_001 / 2 + LatencyRecorder::HIGHEST_NS + 42);
    }

    #[test]
    fn quantile_label_cannot_be_given_twice() {
        let mut registry = Registry::new();
        let err = registry
            .register_summary("x_seconds", &[("quantile", "a")], "", &QUANTILES)
            .unwrap_err();
        assert!(matches!(err, MetricsError::DuplicateLabel { .. }), "{err}");
        assert_eq!(registry.len(), 0, "nothing of a refused summary is registered");
    }
}
