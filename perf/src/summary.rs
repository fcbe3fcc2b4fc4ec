//! HDR histograms of nanosecond samples, and their percentile summary.
//!
//! Percentiles, never means: a mean hides the tail, and the tail is what a latency budget
//! is spent on.

use hdrhistogram::Histogram;

/// Highest value a histogram tracks (60 s); larger samples are clamped to it, which only
/// happens if a thread was descheduled for that long.
const HIGHEST_NS: u64 = 60_000_000_000;

/// An empty histogram for ns samples: 1 ns to 60 s, 3 significant digits (every value is
/// reported within 0.1%).
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy new_with_bounds' rules (low >= 1, high >= 2 * low,
    // sigfig <= 5), so it cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("constant histogram bounds are valid")
}

/// A histogram of `samples`.
pub fn histogram_of(samples: &[u64]) -> Histogram<u64> {
    let mut h = histogram();
    for &s in samples {
        h.saturating_record(s);
    }
    h
}

/// Adds `from` into `into`; both come from [`histogram`], so their bounds match.
pub fn accumulate(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    into.add(from).expect("histograms made by summary::histogram share their bounds");
}

/// Percentiles of a latency histogram, in ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub samples: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            samples: h.len(),
        }
    }
}

/// A latency result round by round: the histogram of all rounds' samples together (what the
/// percentiles and the plot are of) and each round's own percentiles, whose disagreement is
/// the spread reported next to each figure.
#[derive(Clone, Debug)]
pub struct Rounds {
    all: Histogram<u64>,
    each: Vec<Summary>,
}

impl Default for Rounds {
    fn default() -> Self {
        Self { all: histogram(), each: Vec::new() }
    }
}

impl Rounds {
    /// From a histogram of every round's samples and each round's summary, as the suites
    /// accumulate them (`each` may be empty where a suite keeps no per-round figures).
    pub fn new(all: Histogram<u64>, each: Vec<Summary>) -> Self {
        Self { all, each }
    }

    /// Adds one round's samples.
    pub fn push(&mut self, round: &Histogram<u64>) {
        accumulate(&mut self.all, round);
        self.each.push(Summary::of(round));
    }

    /// Every round's samples together.
    pub fn all(&self) -> &Histogram<u64> {
        &self.all
    }

    /// Each round's percentiles, in the order measured.
    pub fn each(&self) -> &[Summary] {
        &self.each
    }

    /// The spread of the per-round p50s: (largest - smallest) / their median.
    pub fn spread_p50(&self) -> Option<f64> {
        spread(self.each.iter().map(|s| s.p50))
    }

    /// The spread of the per-round p99s, as [`Rounds::spread_p50`].
    pub fn spread_p99(&self) -> Option<f64> {
        spread(self.each.iter().map(|s| s.p99))
    }
}

/// (max - min) / median of `values`; `None` for fewer than two values or a median of 0.
fn spread(values: impl Iterator<Item = u64>) -> Option<f64> {
    let v: Vec<f64> = values.map(|x| x as f64).collect();
    if v.len() < 2 {
        return None;
    }
    let mid = median(&v)?;
    let (lo, hi) = v.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    (mid > 0.0).then(|| (hi - lo) / mid)
}

/// Median of `values` (the mean of the middle two for an even count); `None` if empty.
/// NaNs sort last.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_spread() {
        // 1..=1000 ns, one sample each: p50 = 500, p90 = 900, p99 = 990, p99.9 = 999.
        let samples: Vec<u64> = (1..=1000).collect();
        let s = Summary::of(&histogram_of(&samples));
        assert_eq!(
            s,
            Summary { p50: 500, p90: 900, p99: 990, p999: 999, max: 1000, samples: 1000 }
        );
    }

    #[test]
    fn within_a_tenth_of_a_percent_for_large_values() {
        let s = Summary::of(&histogram_of(&[1_234_567; 10]));
        assert!(s.p50.abs_diff(1_234_567) <= 1_235, "p50 {}", s.p50);
        assert_eq!(s.samples, 10);
    }

    #[test]
    fn empty_and_clamped() {
        assert_eq!(Summary::of(&histogram()), Summary::default());
        let s = Summary::of(&histogram_of(&[u64::MAX]));
        assert!(s.max >= HIGHEST_NS && s.max <= HIGHEST_NS + HIGHEST_NS / 1000);
    }

    #[test]
    fn accumulate_adds_counts() {
        let mut acc = histogram_of(&[10, 20]);
        accumulate(&mut acc, &histogram_of(&[30]));
        assert_eq!(Summary::of(&acc).samples, 3);
        assert_eq!(Summary::of(&acc).max, 30);
    }

    #[test]
    fn rounds_spread_is_range_over_median() {
        let mut r = Rounds::default();
        assert_eq!(r.spread_p50(), None, "no rounds, no spread");
        r.push(&histogram_of(&[100; 10]));
        assert_eq!(r.spread_p50(), None, "one round, no spread");
        r.push(&histogram_of(&[110; 10]));
        r.push(&histogram_of(&[90, 90, 90, 90, 90, 90, 90, 90, 90, 400]));
        // p50s 100, 110, 90: (110 - 90) / 100. p99s 100, 110, 400: (400 - 100) / 110.
        assert_eq!(r.each().len(), 3);
        assert!((r.spread_p50().unwrap() - 0.2).abs() < 1e-9, "{:?}", r.spread_p50());
        assert!((r.spread_p99().unwrap() - 300.0 / 110.0).abs() < 1e-3, "{:?}", r.spread_p99());
        assert_eq!(Summary::of(r.all()).samples, 30);
        assert_eq!(Summary::of(r.all()).max, 400);
        let zero = Rounds::new(histogram(), vec![Summary::default(); 2]);
        assert_eq!(zero.spread_p50(), None, "a median of 0 has no spread");
    }

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
