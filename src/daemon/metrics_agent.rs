//! The metrics service: the counters file, lane gauges and the Prometheus endpoint; its agent
//! publishes lane statistics into the counters file at the configured interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::service::{Build, Prepare, Prepared, Service};
use super::DaemonError;
use crate::config::{Config, ConfigError, SectionSpec, METRICS_SECTION};
use crate::metrics::{Counter, CounterId, CounterSpec, MetricsError};
use crate::runtime::{Agent, Board, Ctx, ReactorKind};

/// The metrics service, as named in the table.
pub static METRICS: MetricsService = MetricsService;

/// See the module docs of `corelane::daemon`. (The `/metrics` HTTP endpoint runs on a thread of its own,
/// started by the daemon once the lanes run.)
#[derive(Debug)]
pub struct MetricsService;

impl Service for MetricsService {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn section(&self) -> &SectionSpec {
        &METRICS_SECTION
    }

    fn agents(&self) -> &'static [&'static str] {
        &["metrics"]
    }

    fn enabled(&self, config: &Config) -> bool {
        config.metrics.enabled
    }

    fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        if config.metrics.counters_file == config.control.socket {
            return Err(ConfigError::Invalid {
                at: "metrics.counters_file".to_owned(),
                reason: format!(
                    "'{}' is also control.socket; the files share runtime.dir and need \
                     different names",
                    config.metrics.counters_file
                ),
            });
        }
        Ok(())
    }

    fn prepare(&self, cx: &mut Prepare<'_>) -> Result<Box<dyn Prepared>, DaemonError> {
        Ok(Box::new(MetricIds::register(cx)?))
    }
}

/// The series the metrics agent writes, registered in phase 1.
struct MetricIds {
    lanes: Vec<[CounterId; 7]>,
    uptime: CounterId,
    reactor: [CounterId; 2],
}

impl MetricIds {
    fn register(cx: &mut Prepare<'_>) -> Result<Self, MetricsError> {
        let mut lanes = Vec::new();
        for lane in &cx.config.lanes {
            let l = lane.name.as_str();
            const PASS: &str = "Duration of a lane pass, ns.";
            let pass = |cx: &mut Prepare<'_>, q| {
                cx.register(CounterSpec::gauge(
                    "corelane_lane_pass_ns",
                    &[("lane", l), ("quantile", q)],
                    PASS,
                ))
            };
            lanes.push([
                cx.register(CounterSpec::counter(
                    "corelane_lane_passes_total",
                    &[("lane", l)],
                    "Loop passes of the lane.",
                ))?,
                cx.register(CounterSpec::counter(
                    "corelane_lane_work_total",
                    &[("lane", l)],
                    "Work items done by the lane's agents.",
                ))?,
                cx.register(CounterSpec::gauge(
                    "corelane_lane_idle_ns",
                    &[("lane", l)],
                    "Time the lane spent idling, ns.",
                ))?,
                pass(cx, "0.5")?,
                pass(cx, "0.99")?,
                pass(cx, "0.999")?,
                pass(cx, "1")?,
            ]);
        }
        let uptime = cx.register(CounterSpec::gauge(
            "corelane_uptime_seconds",
            &[],
            "Seconds since the daemon started.",
        ))?;
        const REACTOR: &str = "Reactor backend the lanes run (1 = this one).";
        let reactor = [
            cx.register(CounterSpec::gauge("corelane_reactor", &[("kind", "io_uring")], REACTOR))?,
            cx.register(CounterSpec::gauge("corelane_reactor", &[("kind", "poll")], REACTOR))?,
        ];
        Ok(Self { lanes, uptime, reactor })
    }
}

impl Prepared for MetricIds {
    fn build(self: Box<Self>, cx: &mut Build<'_>) -> Result<super::service::Agents, DaemonError> {
        let lanes = self
            .lanes
            .iter()
            .map(|ids| LaneGauges {
                passes: cx.counter(ids[0]),
                work: cx.counter(ids[1]),
                idle_ns: cx.counter(ids[2]),
                pass_ns: [
                    cx.counter(ids[3]),
                    cx.counter(ids[4]),
                    cx.counter(ids[5]),
                    cx.counter(ids[6]),
                ],
            })
            .collect();
        let mut agent = MetricsAgent::new(
            cx.board.clone(),
            lanes,
            cx.counter(self.uptime),
            Duration::from_millis(cx.config.metrics.publish_interval_ms.max(1)),
        );
        agent.reactor = Some(self.reactor.map(|id| cx.counter(id)));
        Ok(vec![("metrics", Box::new(agent) as Box<dyn Agent>)])
    }
}

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
    /// `corelane_reactor{kind="io_uring"|"poll"}`, set once the lanes report their backend.
    reactor: Option<[Counter; 2]>,
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
        Self { board, lanes, uptime, reactor: None, started: now, interval, next: now }
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
        if let (Some(gauges), Some(kind)) = (&self.reactor, self.board.reactor()) {
            gauges[usize::from(kind == ReactorKind::Poll)].set(1);
        }
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
