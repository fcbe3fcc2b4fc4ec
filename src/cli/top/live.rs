//! The live [`Source`]: the running daemon's control socket (status, pool status), its alloc
//! server's native socket (usage, processes) and its counters file (lanes, frame worker).
//! Every gather connects anew, so a daemon restart shows as not running, then recovers; the
//! counters file is reopened when the daemon renamed a new one over it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::snapshot::{
    Daemon, Device, Frames, Lane, Lanes, Process, Rates, Section, Session, Snapshot, Source,
    Stream, Streams,
};
use crate::alloc::query::QueryClient;
use crate::control::proto::Status;
use crate::control::Client;
use crate::metrics::{CountersReader, Sample};
use crate::pool::proto::{PoolStatus, PoolStatusRequest};
use crate::pool::MSG_POOL_STATUS;

/// Where the daemon's parts are.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// The control socket.
    pub control: PathBuf,
    /// The alloc server's native socket (`None`: no listener configured).
    pub alloc: Option<PathBuf>,
    /// The counters file.
    pub counters: PathBuf,
    /// How long to wait for each answer.
    pub timeout: Duration,
    /// `frames.window` of the config (the window each session is granted).
    pub frames_window: u32,
    /// How control requests travel (`--transport`; `auto` means the socket here: a
    /// shared-memory channel per refresh would cost more than it saves).
    pub transport: crate::control::Transport,
}

/// The running daemon as a [`Source`]. See the [module docs](self).
#[derive(Debug)]
pub struct DaemonSource {
    at: Endpoints,
    counters: Option<CountersReader>,
    rates: Rates,
}

impl DaemonSource {
    /// A source reading the daemon at `at`.
    pub fn new(at: Endpoints) -> Self {
        Self { at, counters: None, rates: Rates::default() }
    }

    /// The counters file's samples, (re)opening it when it is new, replaced or closed.
    /// Also says how the file looks: live, stale (no heartbeat) or not readable.
    fn samples(&mut self) -> FileRead {
        let keep = match &self.counters {
            Some(r) => !r.is_replaced() && r.state() == crate::metrics::FileState::Live,
            None => false,
        };
        if !keep {
            match CountersReader::open(&self.at.counters) {
                Ok(r) => self.counters = Some(r),
                Err(e) => {
                    self.counters = None;
                    return FileRead::unreadable(format!("not readable: {e}"));
                }
            }
        }
        match &self.counters {
            Some(r) => {
                let liveness = r.liveness(crate::metrics::monotonic_ns()).to_string();
                // The metrics agent stores the heartbeat, then the values of that publish,
                // with no ordering between them (relaxed words of another process): a publish
                // between the two heartbeat reads shows as the heartbeat moving, and the
                // values are read again, a few times at most (a publish takes microseconds).
                let mut samples = Vec::new();
                let mut heartbeat_ns = r.heartbeat().0;
                for _ in 0..3 {
                    samples.clear();
                    r.snapshot_into(&mut samples);
                    let after = r.heartbeat().0;
                    if after == heartbeat_ns {
                        break;
                    }
                    heartbeat_ns = after;
                }
                FileRead { pid: r.info().pid, samples, heartbeat_ns, liveness }
            }
            None => FileRead::unreadable("not readable".into()),
        }
    }
}

/// One read of the counters file.
struct FileRead {
    pid: u64,
    samples: Vec<Sample>,
    /// `CLOCK_MONOTONIC` ns of the publish the samples are from: the clock of their rates.
    heartbeat_ns: u64,
    liveness: String,
}

impl FileRead {
    fn unreadable(why: String) -> Self {
        Self { pid: 0, samples: Vec::new(), heartbeat_ns: 0, liveness: why }
    }
}

impl Source for DaemonSource {
    fn gather(&mut self) -> Snapshot {
        self.rates.begin(Instant::now());
        let transport = match self.at.transport {
            crate::control::Transport::Auto => crate::control::Transport::Socket,
            t => t,
        };
        let status = Client::builder()
            .timeout(self.at.timeout)
            .transport(transport)
            .connect(&self.at.control)
            .and_then(|mut c| c.status().map(|s| (c, s)));
        let Ok((mut control, status)) = status else {
            self.counters = None;
            return Snapshot::default();
        };
        let FileRead { pid, samples, heartbeat_ns, liveness: counters_file } = self.samples();
        let mut snap = Snapshot {
            daemon: Daemon::Running {
                pid,
                version: status.version.clone(),
                uptime_ms: status.uptime_ms,
                reactor: status.reactor.clone(),
            },
            counters_file,
            ..Snapshot::default()
        };
        match service(&status, "alloc") {
            Err(why) => snap.devices = Section::Off(why),
            Ok(()) => match &self.at.alloc {
                None => snap.devices = Section::Off("no listener in [alloc] listeners".into()),
                Some(path) => match alloc(path, self.at.timeout) {
                    Ok((devices, processes)) => {
                        snap.devices = Section::Ok(devices);
                        snap.processes = processes;
                    }
                    Err(e) => snap.devices = Section::Off(format!("no answer: {e}")),
                },
            },
        }
        snap.streams = match service(&status, "pool") {
            Err(why) => Section::Off(why),
            Ok(()) => match control.call::<PoolStatus>(MSG_POOL_STATUS, &PoolStatusRequest {}) {
                Ok(p) => Section::Ok(self.streams(&p)),
                Err(e) => Section::Off(format!("no answer to pool status: {e}")),
            },
        };
        snap.lanes = Section::Ok(self.lanes(&status, &samples, heartbeat_ns));
        snap.frames = match service(&status, "frames") {
            Err(why) => Section::Off(why),
            Ok(()) if samples.is_empty() => Section::Off(
                "its counters are in the counters file, which is not readable (metrics.enabled = \
                 false?)"
                    .into(),
            ),
            Ok(()) => Section::Ok(self.frames(&status, &samples, heartbeat_ns)),
        };
        snap
    }
}

impl DaemonSource {
    fn streams(&mut self, p: &PoolStatus) -> Streams {
        let streams = p
            .streams
            .iter()
            .map(|s| Stream {
                stream_id: s.stream_id,
                profile: s.profile.clone(),
                epoch: s.epoch,
                producer: s.producer_client_id,
                consumers: s.consumers,
                frames: s.frames,
                frames_per_s: self
                    .rates
                    .rate(&format!("pool/{}/{}/frames", s.stream_id, s.epoch), s.frames),
                drops: s.drops,
                handoff_p99_ns: None,
            })
            .collect();
        Streams { streams, leases: p.leases, registered_consumers: p.registered_consumers }
    }

    /// Lanes: core, idle strategy and agents from status; the figures from the counters file
    /// when it is readable (their rates over its publishes, `heartbeat_ns`), else from status
    /// (their rates over the refreshes).
    fn lanes(&mut self, status: &Status, samples: &[Sample], heartbeat_ns: u64) -> Lanes {
        let from_file = !samples.is_empty();
        let lanes = status
            .lanes
            .iter()
            .map(|l| {
                let series = |family: &str, extra: Option<(&str, &str)>| {
                    find(samples, family, &[("lane", l.name.as_str())], extra)
                };
                let (passes, work, idle_ns, p99) = match from_file {
                    true => (
                        series("corelane_lane_passes_total", None).unwrap_or(l.passes),
                        series("corelane_lane_work_total", None).unwrap_or(l.work),
                        // Exposed in seconds, kept in ns in the counters file.
                        series("corelane_lane_idle_seconds_total", None).unwrap_or(l.idle_ns),
                        series("corelane_lane_pass_seconds", Some(("quantile", "0.99")))
                            .unwrap_or(l.p99_pass_ns),
                    ),
                    false => (l.passes, l.work, l.idle_ns, l.p99_pass_ns),
                };
                let key = |what: &str| format!("lane/{}/{}/{what}", l.name, from_file);
                let rates = &mut self.rates;
                let mut rate = |what: &str, value: u64| match from_file {
                    true => rates.rate_at(&key(what), value, heartbeat_ns),
                    false => rates.rate(&key(what), value),
                };
                // ns idle per second, as a share of the second.
                let idle_pct = rate("idle_ns", idle_ns).map(|ns| (ns / 1e7).clamp(0.0, 100.0));
                let work_per_s = rate("work", work);
                let passes_per_s = rate("passes", passes);
                Lane {
                    name: l.name.clone(),
                    core: (l.core >= 0).then_some(l.core),
                    idle: l.idle.clone(),
                    agents: l.agents.clone(),
                    work_per_s,
                    passes_per_s,
                    idle_pct,
                    p99_pass_ns: p99,
                }
            })
            .collect();
        let reactor = ["io_uring", "poll"]
            .into_iter()
            .find(|k| find(samples, "corelane_reactor", &[("kind", k)], None) == Some(1))
            .map_or(status.reactor.clone(), str::to_owned);
        let from = if from_file { "counters file" } else { "control socket" };
        Lanes { reactor, from: from.into(), lanes }
    }

    /// The frame worker: its counters from the file (their rates over its publishes,
    /// `heartbeat_ns`), its sessions from the `sessions` status detail (read live: their
    /// rates over the refreshes).
    fn frames(&mut self, status: &Status, samples: &[Sample], heartbeat_ns: u64) -> Frames {
        let detail = status
            .services
            .iter()
            .find(|s| s.name == "frames")
            .and_then(|s| s.details.iter().find(|d| d.key == "sessions"))
            .map_or("", |d| d.value.as_str());
        let mut session_list = Session::parse_list(detail);
        for s in &mut session_list {
            s.frames_per_s = self.rates.rate(&format!("frames/session/{}", s.id), s.frames);
        }
        let get = |family: &str| find(samples, family, &[], None).unwrap_or(0);
        let q99 =
            |family: &str| find(samples, family, &[], Some(("quantile", "0.99"))).unwrap_or(0);
        let by = |family: &str, label: &str| -> Vec<(String, u64)> {
            samples
                .iter()
                .filter(|s| s.family() == family)
                .filter_map(|s| Some((label_value(&s.name, label)?, s.value)))
                .collect()
        };
        Frames {
            sessions: get("corelane_frames_connections"),
            sessions_total: get("corelane_frames_connections_total"),
            window: self.at.frames_window,
            in_flight: get("queue_depth"),
            frames_per_s: self.rates.rate_at(
                "frames/accepted",
                get("corelane_frames_accepted_total"),
                heartbeat_ns,
            ),
            results_per_s: self.rates.rate_at(
                "frames/results",
                get("corelane_frames_results_total"),
                heartbeat_ns,
            ),
            // Summaries exposed in seconds; the counters file keeps their values in ns.
            decode_p99_ns: q99("decode_seconds"),
            infer_p99_ns: q99("infer_seconds"),
            session_list,
            sessions_unlisted: Session::unlisted(detail),
            errors: by("corelane_frames_errors_total", "code"),
            closes: by("corelane_frames_closes_total", "cause"),
        }
    }
}

/// `Ok` if service `name` runs in the daemon, else the line to show.
fn service(status: &Status, name: &str) -> Result<(), String> {
    match status.services.iter().find(|s| s.name == name) {
        Some(s) if s.state == "running" => Ok(()),
        Some(s) if s.state == "disabled" => Err(format!("disabled ({name}.enabled = false)")),
        Some(s) => Err(s.state.clone()),
        None => Err("not in this daemon".into()),
    }
}

fn alloc(path: &std::path::Path, timeout: Duration) -> Result<(Vec<Device>, Vec<Process>), String> {
    let mut q = QueryClient::connect(path, timeout).map_err(|e| e.to_string())?;
    let usage = q.usage(None).map_err(|e| e.to_string())?;
    let procs = q.processes().map_err(|e| e.to_string())?;
    let devices = usage
        .devices
        .iter()
        .map(|d| Device {
            device: d.device,
            arch: d.arch.clone(),
            board: d.board.clone(),
            dram: d.dram,
            dram_capacity: d.dram_capacity,
            l1: d.l1,
            l1_capacity: d.l1_capacity,
            l1_small: d.l1_small,
            trace: d.trace,
            system_memory: d.system_memory,
            cb: d.cb,
            kernel: d.kernel,
        })
        .collect();
    let processes = procs
        .processes
        .iter()
        .map(|p| Process {
            pid: p.pid,
            name: p.name.clone(),
            device: p.device,
            dram: p.dram,
            l1: p.l1,
            l1_small: p.l1_small,
            trace: p.trace,
            system_memory: p.system_memory,
            cb: p.cb,
            kernel: p.kernel,
        })
        .collect();
    Ok((devices, processes))
}

/// The value of the series of `family` whose labels include every one of `labels` (and
/// `extra`), and no `quantile` label unless asked for.
fn find(
    samples: &[Sample],
    family: &str,
    labels: &[(&str, &str)],
    extra: Option<(&str, &str)>,
) -> Option<u64> {
    samples
        .iter()
        .filter(|s| s.family() == family)
        .find(|s| {
            labels
                .iter()
                .chain(extra.iter())
                .all(|(k, v)| label_value(&s.name, k).as_deref() == Some(*v))
                && (extra.is_some_and(|(k, _)| k == "quantile")
                    || label_value(&s.name, "quantile").is_none())
        })
        .map(|s| s.value)
}

/// The (unescaped) value of label `key` in a series name such as `a{lane="x",quantile="1"}`.
pub fn label_value(series: &str, key: &str) -> Option<String> {
    let (_, rest) = series.split_once('{')?;
    let mut chars = rest.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        if name.trim_start_matches(',') == key {
            return Some(value);
        }
        match chars.next() {
            Some(',') => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_found_and_unescaped() {
        let s = r#"corelane_lane_pass_seconds{lane="a\"b\\c",quantile="0.99"}"#;
        assert_eq!(label_value(s, "lane").as_deref(), Some("a\"b\\c"));
        assert_eq!(label_value(s, "quantile").as_deref(), Some("0.99"));
        assert_eq!(label_value(s, "kind"), None);
        assert_eq!(label_value("corelane_uptime_seconds", "lane"), None);
        assert_eq!(label_value("x{broken", "lane"), None);
    }
}
