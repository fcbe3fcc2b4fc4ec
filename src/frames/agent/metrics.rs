//! The agent's metrics under seed 004's names, in a counters file (`--counters-file`) and on
//! a Prometheus endpoint (`--metrics-listen`), refreshed from the core's summary at most
//! every [`REFRESH`].
//!
//! Times are in seconds, as Prometheus wants: `ai_rtt_ms` and `ai_encode_ms` of the seed are
//! the summaries `ai_rtt_seconds` and `ai_encode_seconds` (quantiles `0.5`, `0.99` and `1` for
//! the maximum, over the whole run, with `_sum` and `_count`; kept in ns in the counters file).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::core::AgentCore;
use crate::metrics::{
    Counter, CounterSpec, CountersFile, MetricsError, MetricsServer, Registry, Summary,
};

/// The quantiles of the agent's summaries (the core keeps p50, p99 and the maximum).
const QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.99, "0.99"), (1.0, "1")];

/// How often the counters are refreshed.
pub const REFRESH: Duration = Duration::from_millis(100);

/// (name, labels, help, gauge)
type Def = (&'static str, &'static [(&'static str, &'static str)], &'static str, bool);

const DEFS: &[Def] = &[
    ("ai_window_size", &[], "Agent: the window (frames the worker allows in flight).", true),
    ("ai_inflight", &[], "Agent: frames in flight now.", true),
    (
        "ai_drops_latestwins_total",
        &[],
        "Agent: frames replaced by a newer one (LATEST_WINS).",
        false,
    ),
    ("ai_frames_sent_total", &[], "Agent: frames sent.", false),
    (
        "frames_out_of_order_total",
        &[],
        "Agent: results that were not for the oldest frame in flight.",
        false,
    ),
    ("frame_bytes_max_hit_total", &[], "Agent: frames over max_frame_bytes (sent as JPEG).", false),
    ("ai_degrade_jpeg_switch_total", &[], "Agent: switches from raw to JPEG transport.", false),
    ("ai_results_total", &[], "Agent: results received.", false),
    ("ai_errors_total", &[], "Agent: Error messages received.", false),
    ("ai_reconnects_total", &[], "Agent: reconnections to the worker.", false),
    ("ai_detections_total", &[], "Agent: detections in the results.", false),
];

/// The agent's counters and their endpoint.
#[derive(Debug)]
pub struct AgentMetrics {
    file: CountersFile,
    counters: Vec<Counter>,
    /// `ai_rtt_seconds`, `ai_encode_seconds`.
    summaries: [Summary; 2],
    server: Option<MetricsServer>,
    refreshed: Option<Instant>,
}

impl AgentMetrics {
    /// The counters in a file at `path` (or in memory), served on `listen` if given.
    pub fn start(path: Option<&Path>, listen: Option<SocketAddr>) -> Result<Self, MetricsError> {
        let mut registry = Registry::new();
        let mut ids = Vec::with_capacity(DEFS.len());
        for &(name, labels, help, gauge) in DEFS {
            let spec = match gauge {
                true => CounterSpec::gauge(name, labels, help),
                false => CounterSpec::counter(name, labels, help),
            };
            ids.push(registry.register(spec)?);
        }
        let rtt = registry.register_summary(
            "ai_rtt_seconds",
            &[],
            "Agent: round trip per frame (seed 004's ai_rtt_ms), seconds.",
            &QUANTILES,
        )?;
        let encode = registry.register_summary(
            "ai_encode_seconds",
            &[],
            "Agent: encode time per frame, protobuf and JPEG (seed 004's ai_encode_ms), seconds.",
            &QUANTILES,
        )?;
        let file = match path {
            Some(path) => registry.create(path)?,
            None => registry.create_in_memory()?,
        };
        let counters = ids.into_iter().map(|id| file.counter(id)).collect();
        let summaries = [file.summary(rtt), file.summary(encode)];
        let server = match listen {
            Some(addr) => Some(MetricsServer::start(addr, file.reader())?),
            None => None,
        };
        Ok(Self { file, counters, summaries, server, refreshed: None })
    }

    /// Where the endpoint listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(MetricsServer::local_addr)
    }

    /// Refreshes the counters from `core` if [`REFRESH`] has passed (or `force`).
    pub fn refresh(&mut self, core: &AgentCore, now: Instant, force: bool) {
        if !force && self.refreshed.is_some_and(|at| now < at + REFRESH) {
            return;
        }
        self.refreshed = Some(now);
        let s = core.summary();
        let values = [
            u64::from(s.ai_window_size),
            u64::from(s.ai_inflight),
            s.ai_drops_latestwins_total,
            s.ai_frames_sent_total,
            s.frames_out_of_order_total,
            s.frame_bytes_max_hit_total,
            s.ai_degrade_jpeg_switch_total,
            s.results_total,
            s.errors_total,
            s.reconnects_total,
            s.detections_total,
        ];
        for (counter, value) in self.counters.iter().zip(values) {
            counter.set(value);
        }
        let ns = |ms: f64| (ms * 1e6).max(0.0) as u64;
        for (summary, p) in self.summaries.iter().zip([&s.ai_rtt_ms, &s.ai_encode_ms]) {
            summary.publish(&[ns(p.p50), ns(p.p99), ns(p.max)], ns(p.sum), p.count);
        }
    }

    /// The counters file (for tests and the final refresh).
    pub fn file(&self) -> &CountersFile {
        &self.file
    }
}
