//! The metrics service: the counters file, lane gauges and the Prometheus endpoint; its agent
//! publishes lane statistics into the counters file at the configured interval, and pushes
//! them to the control connections that watch the lanes ([`MSG_WATCH_LANES`], `corelane
//! watch`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;

use super::control_agent::lane_statuses;
use super::service::{Build, CliContext, Prepare, Prepared, RequestSpec, Service, StatusCell};
use super::DaemonError;
use crate::config::{Config, ConfigError, SectionSpec, METRICS_SECTION};
use crate::control::proto::{LaneReport, WatchLanes};
use crate::control::{
    ConnRef, ControlPort, ToService, CODE_BAD_REQUEST_BODY, CODE_LIMIT, MSG_WATCH_LANES,
};
use crate::metrics::{Counter, CounterId, CounterSpec, MetricsError, Summary, SummaryIds};
use crate::runtime::{Agent, Board, Ctx, LaneStatsSnapshot, ReactorKind};

/// Most subscriptions to [`MSG_WATCH_LANES`] served at once; more are refused with
/// [`CODE_LIMIT`] (`too many watchers: ...`).
pub const MAX_WATCHERS: usize = 64;

/// Most requests the metrics agent takes from its control port per pass.
const REQUESTS_PER_PASS: usize = 64;

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

    fn requests(&self) -> &'static [RequestSpec] {
        &[RequestSpec { msg_type: MSG_WATCH_LANES, name: "watch_lanes" }]
    }

    fn enabled(&self, config: &Config) -> bool {
        config.metrics.enabled
    }

    fn commands(&self) -> Vec<clap::Command> {
        vec![clap::Command::new("watch")
            .about("Watch the running daemon's lanes: one report per publish interval.")
            .long_about(
                "Subscribe to the running daemon's lane statistics and print one report per \
                 metrics.publish_interval_ms: for every lane its passes and work per second \
                 since the last report, the share of time idle, and the p99 and longest pass. \
                 Runs until --count reports were printed or the daemon stops (exit 0 after \
                 --count reports, 1 if the daemon does not answer or goes away). Needs the \
                 metrics service (metrics.enabled = true).",
            )
            .arg(
                clap::Arg::new("count")
                    .long("count")
                    .short('n')
                    .value_name("N")
                    .value_parser(clap::value_parser!(u32).range(1..))
                    .help("Stop after N reports (default: until interrupted)."),
            )]
    }

    fn run_command(&self, name: &str, matches: &clap::ArgMatches, cli: &CliContext) -> ExitCode {
        match name {
            "watch" => crate::cli::watch(cli, matches.get_one::<u32>("count").copied()),
            _ => ExitCode::FAILURE,
        }
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
    lanes: Vec<LaneIds>,
    uptime: CounterId,
    reactor: [CounterId; 2],
}

/// One lane's series.
struct LaneIds {
    passes: CounterId,
    work: CounterId,
    idle: CounterId,
    pass: SummaryIds,
}

impl MetricIds {
    fn register(cx: &mut Prepare<'_>) -> Result<Self, MetricsError> {
        let mut lanes = Vec::new();
        for lane in &cx.config.lanes {
            let labels = [("lane", lane.name.as_str())];
            lanes.push(LaneIds {
                passes: cx.register(CounterSpec::counter(
                    "corelane_lane_passes_total",
                    &labels,
                    "Loop passes of the lane.",
                ))?,
                work: cx.register(CounterSpec::counter(
                    "corelane_lane_work_total",
                    &labels,
                    "Work items done by the lane's agents.",
                ))?,
                idle: cx.register(
                    CounterSpec::counter(
                        "corelane_lane_idle_seconds_total",
                        &labels,
                        "Time the lane spent idling, seconds.",
                    )
                    .in_nanoseconds(),
                )?,
                pass: cx.register_summary(
                    "corelane_lane_pass_seconds",
                    &labels,
                    "Duration of a lane pass, seconds (quantiles since the lane started; \
                     _sum is the time in passes, _count the passes).",
                )?,
            });
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
                passes: cx.counter(ids.passes),
                work: cx.counter(ids.work),
                idle: cx.counter(ids.idle),
                pass: cx.summary(ids.pass),
            })
            .collect();
        let mut agent = MetricsAgent::new(
            cx.board.clone(),
            lanes,
            cx.counter(self.uptime),
            Duration::from_millis(cx.config.metrics.publish_interval_ms.max(1)),
        );
        agent.reactor = Some(self.reactor.map(|id| cx.counter(id)));
        agent.heartbeat = Some(cx.counters.heartbeat());
        let port = cx.serve(MSG_WATCH_LANES, "watch_lanes", "metrics");
        agent.watch = port.map(|port| Watchers::new(port, cx.status("metrics")));
        Ok(vec![("metrics", Box::new(agent) as Box<dyn Agent>)])
    }
}

/// The series of one lane, in board order.
#[derive(Clone, Debug)]
pub struct LaneGauges {
    /// `corelane_lane_passes_total`: loop passes.
    pub passes: Counter,
    /// `corelane_lane_work_total`: work items done.
    pub work: Counter,
    /// `corelane_lane_idle_seconds_total`: time idle, kept in ns.
    pub idle: Counter,
    /// `corelane_lane_pass_seconds`: pass duration p50, p99, p99.9, max (ns, since the lane
    /// started), time in passes and passes, as one window.
    pub pass: Summary,
}

/// The metrics agent.
#[derive(Debug)]
pub struct MetricsAgent {
    board: Arc<Board>,
    /// Every lane's last consistent counters ([`Board::refresh`]): a lane caught mid-publish
    /// republishes these rather than zeros (a counter reset) or a torn summary.
    last: Vec<Option<LaneStatsSnapshot>>,
    lanes: Vec<LaneGauges>,
    uptime: Counter,
    /// `corelane_reactor{kind="io_uring"|"poll"}`, set once the lanes report their backend.
    reactor: Option<[Counter; 2]>,
    /// The counters file's heartbeat, beaten at every publish.
    heartbeat: Option<crate::metrics::Heartbeat>,
    started: Instant,
    interval: Duration,
    next: Instant,
    /// The lane watchers, if the control route is wired.
    watch: Option<Watchers>,
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
        Self {
            board,
            last: Vec::new(),
            lanes,
            uptime,
            reactor: None,
            heartbeat: None,
            started: now,
            interval,
            next: now,
            watch: None,
        }
    }
}

/// The lanes' statistics `now`, for watchers.
fn lane_report(
    board: &Board,
    last: &mut Vec<Option<LaneStatsSnapshot>>,
    started: Instant,
    now: Instant,
) -> LaneReport {
    LaneReport {
        uptime_ms: u64::try_from((now - started).as_millis()).unwrap_or(u64::MAX),
        lanes: lane_statuses(board, last),
    }
}

/// The subscriptions to [`MSG_WATCH_LANES`]: (connection, subscribing `msg_id`).
#[derive(Debug)]
struct Watchers {
    port: ControlPort,
    subscribed: Vec<(ConnRef, u64)>,
    status: StatusCell,
}

impl Watchers {
    fn new(port: ControlPort, status: StatusCell) -> Self {
        status.set("watchers", 0);
        Self { port, subscribed: Vec::with_capacity(MAX_WATCHERS), status }
    }

    /// Takes the requests and close notices waiting (a bounded number), answering each
    /// subscription with `report()`. Returns how many it took.
    fn serve(&mut self, mut report: impl FnMut() -> LaneReport) -> usize {
        let before = self.subscribed.len();
        let mut taken = 0;
        while taken < REQUESTS_PER_PASS {
            let Some(message) = self.port.poll() else { break };
            taken += 1;
            let request = match message {
                ToService::Closed(conn) => {
                    self.subscribed.retain(|(c, _)| *c != conn);
                    continue;
                }
                ToService::Request(request) => request,
            };
            if let Err(e) = WatchLanes::decode(request.body.as_slice()) {
                self.port.error(&request, CODE_BAD_REQUEST_BODY, &format!("bad request body: {e}"));
            } else if self.subscribed.len() >= MAX_WATCHERS {
                let text = format!(
                    "too many watchers: {MAX_WATCHERS} subscriptions watch the lanes already; \
                     close one and retry"
                );
                self.port.error(&request, CODE_LIMIT, &text);
            } else {
                self.port.respond(&request, &report());
                self.subscribed.push((request.conn, request.msg_id));
            }
        }
        if self.subscribed.len() != before {
            self.status.set("watchers", self.subscribed.len());
        }
        taken
    }

    /// Pushes `report` to every subscription.
    fn push(&mut self, report: &LaneReport) {
        for &(conn, msg_id) in &self.subscribed {
            // A full link drops the push (counted by the port): a watcher misses one report.
            let _ = self.port.push(conn, msg_id, MSG_WATCH_LANES, report);
        }
    }
}

impl Agent for MetricsAgent {
    fn name(&self) -> &str {
        "metrics"
    }

    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
        let now = ctx.now;
        let mut work = 0;
        if let Some(watch) = &mut self.watch {
            work += watch.serve(|| lane_report(&self.board, &mut self.last, self.started, now));
        }
        if ctx.now < self.next {
            return work;
        }
        self.next = ctx.now + self.interval;
        self.uptime.set((ctx.now - self.started).as_secs());
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.beat(self.interval);
        }
        if let (Some(gauges), Some(kind)) = (&self.reactor, self.board.reactor()) {
            gauges[usize::from(kind == ReactorKind::Poll)].set(1);
        }
        self.board.refresh(&mut self.last);
        // A lane never read consistently yet is skipped this interval.
        for (lane, g) in self.last.iter().zip(&self.lanes) {
            let Some(lane) = lane else { continue };
            // Cumulative totals the lane keeps: the counters mirror them.
            g.passes.set(lane.passes);
            g.work.set(lane.work);
            g.idle.set(lane.idle_ns);
            let quantiles =
                [lane.p50_pass_ns, lane.p99_pass_ns, lane.p999_pass_ns, lane.max_pass_ns];
            g.pass.publish(&quantiles, lane.pass_sum_ns, lane.passes);
        }
        if let Some(watch) = self.watch.as_mut().filter(|w| !w.subscribed.is_empty()) {
            watch.push(&lane_report(&self.board, &mut self.last, self.started, now));
        }
        // Publishing is bookkeeping, not work: let the lane keep idling.
        work
    }
}
