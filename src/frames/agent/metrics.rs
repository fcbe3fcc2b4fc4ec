//! The agent's metrics under seed 004's names, in a counters file (`--counters-file`) and on
//! a Prometheus endpoint (`--metrics-listen`), refreshed from the core's summary at most
//! every [`REFRESH`].
//!
//! Times are integers in the counters file: `ai_rtt_ms` and `ai_encode_ms` of the seed are
//! published as `ai_rtt_us{quantile}` and `ai_encode_us{quantile}` (microseconds; quantile
//! `0.5`, `0.99` and `1` for the maximum).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::core::{AgentCore, Percentiles};
use crate::metrics::{Counter, CounterSpec, CountersFile, MetricsError, MetricsServer, Registry};

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
    (
        "ai_rtt_us",
        &[("quantile", "0.5")],
        "Agent: round trip per frame (seed 004's ai_rtt_ms), microseconds.",
        true,
    ),
    (
        "ai_rtt_us",
        &[("quantile", "0.99")],
        "Agent: round trip per frame (seed 004's ai_rtt_ms), microseconds.",
        true,
    ),
    (
        "ai_rtt_us",
        &[("quantile", "1")],
        "Agent: round trip per frame (seed 004's ai_rtt_ms), microseconds.",
        true,
    ),
    (
        "ai_encode_us",
        &[("quantile", "0.5")],
        "Agent: encode time per frame, protobuf and JPEG (seed 004's ai_encode_ms), microseconds.",
        true,
    ),
    (
        "ai_encode_us",
        &[("quantile", "0.99")],
        "Agent: encode time per frame, protobuf and JPEG (seed 004's ai_encode_ms), microseconds.",
        true,
    ),
    (
        "ai_encode_us",
        &[("quantile", "1")],
        "Agent: encode time per frame, protobuf and JPEG (seed 004's ai_encode_ms), microseconds.",
        true,
    ),
];

/// The agent's counters and their endpoint.
#[derive(Debug)]
pub struct AgentMetrics {
    file: CountersFile,
    counters: Vec<Counter>,
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
        let file = match path {
            Some(path) => registry.create(path)?,
            None => registry.create_in_memory()?,
        };
        let counters = ids.into_iter().map(|id| file.counter(id)).collect();
        let server = match listen {
            Some(addr) => Some(MetricsServer::start(addr, file.reader())?),
            None => None,
        };
        Ok(Self { file, counters, server, refreshed: None })
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
        let us = |ms: f64| (ms * 1000.0).max(0.0) as u64;
        let quantiles = |p: &Percentiles| [us(p.p50), us(p.p99), us(p.max)];
        let [r50, r99, rmax] = quantiles(&s.ai_rtt_ms);
        let [e50, e99, emax] = quantiles(&s.ai_encode_ms);
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
            r50,
            r99,
            rmax,
            e50,
            e99,
            emax,
        ];
        for (counter, value) in self.counters.iter().zip(values) {
            counter.set(value);
        }
    }

    /// The counters file (for tests and the final refresh).
    pub fn file(&self) -> &CountersFile {
        &self.file
    }
}
