//! Latency histograms a lane owns, published as quantile gauges.

use core::fmt;

use hdrhistogram::Histogram;

use super::file::{Counter, CounterId, CounterSpec, CountersFile, Registry};
use super::MetricsError;

/// The quantiles [`LatencyRecorder::publish`] writes, with their `quantile` label values. Max is
/// published as quantile `1`.
pub const QUANTILES: [(f64, &str); 4] =
    [(0.5, "0.5"), (0.99, "0.99"), (0.999, "0.999"), (1.0, "1")];

/// The records of one set of quantile gauges, reserved in a [`Registry`] at startup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantileIds {
    ids: [CounterId; 4],
}

impl QuantileIds {
    /// Registers four gauges `name{labels...,quantile="0.5"|"0.99"|"0.999"|"1"}` sharing `help`,
    /// e.g. `corelane_lane_pass_ns{lane="main",quantile="0.99"}`.
    ///
    /// # Errors
    /// As [`Registry::register`]; a `quantile` label in `labels` is a
    /// [`MetricsError::DuplicateLabel`].
    pub fn register(
        registry: &mut Registry,
        name: &str,
        labels: &[(&str, &str)],
        help: &str,
    ) -> Result<Self, MetricsError> {
        let mut all = Vec::with_capacity(labels.len() + 1);
        all.extend_from_slice(labels);
        all.push(("quantile", ""));
        let mut ids = [CounterId::from_index(0); 4];
        for (id, (_, label)) in ids.iter_mut().zip(QUANTILES) {
            if let Some(last) = all.last_mut() {
                *last = ("quantile", label);
            }
            *id = registry.register(CounterSpec::gauge(name, &all, help))?;
        }
        Ok(Self { ids })
    }
}

/// Four gauges holding a latency distribution's p50, p99, p99.9 and max, in nanoseconds.
#[derive(Clone, Debug)]
pub struct QuantileGauges {
    /// Median.
    pub p50: Counter,
    /// 99th percentile.
    pub p99: Counter,
    /// 99.9th percentile.
    pub p999: Counter,
    /// Maximum.
    pub max: Counter,
}

impl QuantileGauges {
    /// The gauges `ids` reserved in the registry `file` was created from.
    ///
    /// # Panics
    /// If `ids` come from another registry with more records than `file`.
    pub fn new(file: &CountersFile, ids: QuantileIds) -> Self {
        let [p50, p99, p999, max] = ids.ids.map(|id| file.counter(id));
        Self { p50, p99, p999, max }
    }
}

/// An HDR histogram of latencies in nanoseconds (1 ns to 60 s, 2 significant figures: within 1%) that a lane
/// owns and records into without allocating, publishing quantiles every interval.
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
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
        Self { histogram }
    }

    /// Records one latency; values above [`HIGHEST_NS`](Self::HIGHEST_NS) count as that. Never
    /// allocates.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.histogram.saturating_record(ns);
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

    /// Writes the interval's p50, p99, p99.9 and max into `gauges` and starts a new interval
    /// (the gauges show the latest interval, not the whole run). An empty interval leaves the
    /// gauges as they were and returns `false`. Clearing costs one pass over the buckets: call it
    /// every publish interval (say once a second), not per event.
    pub fn publish(&mut self, gauges: &QuantileGauges) -> bool {
        if self.histogram.is_empty() {
            return false;
        }
        let h = &self.histogram;
        gauges.p50.set(h.value_at_quantile(QUANTILES[0].0));
        gauges.p99.set(h.value_at_quantile(QUANTILES[1].0));
        gauges.p999.set(h.value_at_quantile(QUANTILES[2].0));
        gauges.max.set(h.max());
        self.histogram.reset();
        true
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

    #[test]
    fn quantiles_land_in_the_gauges() {
        let mut registry = Registry::new();
        let ids = QuantileIds::register(
            &mut registry,
            "corelane_lane_pass_ns",
            &[("lane", "main")],
            "Lane pass time, ns.",
        )
        .unwrap();
        let file = registry.create_in_memory().unwrap();
        let gauges = QuantileGauges::new(&file, ids);

        let mut recorder = LatencyRecorder::new();
        assert!(!recorder.publish(&gauges), "empty interval publishes nothing");
        for ns in 1..=10_000u64 {
            recorder.record(ns);
        }
        recorder.record(0);
        recorder.record(u64::MAX); // saturates at 60 s
        assert!(recorder.publish(&gauges));
        assert!(recorder.is_empty(), "publish starts a new interval");

        // Two significant figures: within 1%, in 30 KiB of counts (3 figures took 216 KiB).
        assert!(recorder.histogram().distinct_values() * 8 <= 32 * 1024);
        let near = |value: u64, want: u64| value.abs_diff(want) <= want / 100 + 1;
        assert!(near(gauges.p50.get(), 5_000), "p50 {}", gauges.p50.get());
        assert!(near(gauges.p99.get(), 9_900), "p99 {}", gauges.p99.get());
        assert!(near(gauges.p999.get(), 9_990), "p99.9 {}", gauges.p999.get());
        assert!(near(gauges.max.get(), LatencyRecorder::HIGHEST_NS), "max {}", gauges.max.get());

        let names: Vec<String> = file.reader().snapshot().into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                r#"corelane_lane_pass_ns{lane="main",quantile="0.5"}"#,
                r#"corelane_lane_pass_ns{lane="main",quantile="0.99"}"#,
                r#"corelane_lane_pass_ns{lane="main",quantile="0.999"}"#,
                r#"corelane_lane_pass_ns{lane="main",quantile="1"}"#,
            ]
        );

        // The next interval replaces the values.
        recorder.record(42);
        assert!(recorder.publish(&gauges));
        assert_eq!(gauges.max.get(), 42);
        assert_eq!(gauges.p50.get(), 42);
    }

    #[test]
    fn quantile_label_cannot_be_given_twice() {
        let mut registry = Registry::new();
        let err =
            QuantileIds::register(&mut registry, "x_ns", &[("quantile", "a")], "").unwrap_err();
        assert!(matches!(err, MetricsError::DuplicateLabel { .. }), "{err}");
    }
}
