//! Publishes lane statistics into the counters file at the configured interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Counter;
use crate::runtime::{Agent, Board, Ctx};

/// Gauges of one lane, in board order.
#[derive(Clone, Debug)]
pub struct LaneGauges {
    /// Loop passes.
    pub passes: Counter,
    /// Work done.
    pub work: Counter,
    /// Time idle, ns.
    pub idle_ns: Counter,
    /// Pass duration quantiles: p50, p99, p99.9, max (ns).
    pub pass_ns: [Counter; 4],
}

/// The metrics agent.
#[derive(Debug)]
pub struct MetricsAgent {
    board: Arc<Board>,
    lanes: Vec<LaneGauges>,
    uptime: Counter,
    started: Instant,
    interval: Duration,
    next: Instant,
}

impl MetricsAgent {
    /// Publishes `board` into `lanes` (one entry per lane, board order) every `interval`.
    pub fn new(
        board: Arc<Board>,
        lanes: Vec<LaneGauges>,
        uptime: Counter,
        interval: Duration,
    ) -> Self {
        let now = Instant::now();
        Self { board, lanes, uptime, started: now, interval, next: now }
    }
}

impl Agent for MetricsAgent {
    fn name(&self) -> &str {
        "metrics"
    }

    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
        if ctx.now < self.next {
            return 0;
        }
        self.next = ctx.now + self.interval;
        self.uptime.set((ctx.now - self.started).as_secs());
        for (lane, g) in self.board.lanes().iter().zip(&self.lanes) {
            g.passes.set(lane.passes);
            g.work.set(lane.work);
            g.idle_ns.set(lane.idle_ns);
            for (gauge, value) in g.pass_ns.iter().zip([
                lane.p50_pass_ns,
                lane.p99_pass_ns,
                lane.p999_pass_ns,
                lane.max_pass_ns,
            ]) {
                gauge.set(value);
            }
        }
        // Publishing is bookkeeping, not work: let the lane keep idling.
        0
    }
}
