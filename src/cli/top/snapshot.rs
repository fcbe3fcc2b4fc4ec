//! What `corelane top` shows, as data: a [`Snapshot`] of every view, gathered by a [`Source`]
//! (the live daemon's in [`super::live`], a fixed one in the tests), and the usage
//! [`History`] the charts view draws.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use serde::Serialize;

/// Gathers one [`Snapshot`] per refresh. The live source reconnects every call, so a daemon
/// that went away shows as not running and comes back when it does.
pub trait Source {
    /// Everything the views show, now.
    fn gather(&mut self) -> Snapshot;
}

/// One refresh's worth of data, for every view.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// The daemon: running (with its facts) or not.
    pub daemon: Daemon,
    /// The alloc server's devices (view 1 and 2).
    pub devices: Section<Vec<Device>>,
    /// The processes holding device memory (view 1); empty when the devices section is not
    /// [`Section::Ok`].
    pub processes: Vec<Process>,
    /// The tensor pool's streams (view 3).
    pub streams: Section<Streams>,
    /// The lanes (view 4).
    pub lanes: Section<Lanes>,
    /// The frame worker (view 5).
    pub frames: Section<Frames>,
    /// The counters file: "live", "stale: no heartbeat for 4.0 s", "not readable: ...";
    /// empty when the daemon is not running.
    pub counters_file: String,
}

/// Whether the daemon answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Daemon {
    /// The control socket answered a status request.
    Running {
        /// Daemon pid (from the counters file; 0 if unknown).
        pid: u64,
        /// Its version.
        version: String,
        /// ms since it started.
        uptime_ms: u64,
        /// Reactor backend of the lanes.
        reactor: String,
    },
    /// Nothing answers at the control socket.
    #[default]
    NotRunning,
}

/// One view's data, or why there is none.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(tag = "state", content = "data", rename_all = "snake_case")]
pub enum Section<T> {
    /// The service answered.
    Ok(T),
    /// The service is disabled or absent, or did not answer: the line the view shows.
    Off(String),
    /// The daemon is not running.
    #[default]
    NotRunning,
}

impl<T> Section<T> {
    /// The data, if the service answered.
    pub fn ok(&self) -> Option<&T> {
        match self {
            Section::Ok(t) => Some(t),
            _ => None,
        }
    }
}

/// One device's usage against its capacity (bytes).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Device {
    /// Device id.
    pub device: i32,
    /// Architecture (empty if the device is not in the device table).
    pub arch: String,
    /// Board name.
    pub board: String,
    /// DRAM buffers.
    pub dram: u64,
    /// DRAM capacity.
    pub dram_capacity: u64,
    /// L1 buffers.
    pub l1: u64,
    /// L1 capacity.
    pub l1_capacity: u64,
    /// L1_SMALL buffers.
    pub l1_small: u64,
    /// TRACE buffers (held in DRAM).
    pub trace: u64,
    /// SYSTEM_MEMORY buffers (host memory: no device capacity).
    pub system_memory: u64,
    /// Circular buffers (in L1).
    pub cb: u64,
    /// Kernel binaries (in L1).
    pub kernel: u64,
}

impl Device {
    /// L1 in use: L1 buffers plus circular buffers, as tt-smi counts it. Saturating: the
    /// ledger saturates a hostile client's sizes at `u64::MAX`.
    pub fn l1_used(&self) -> u64 {
        self.l1.saturating_add(self.cb)
    }
}

/// What one process holds on one device (bytes).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Process {
    /// Pid.
    pub pid: u32,
    /// Name (from /proc, as the alloc server saw it).
    pub name: String,
    /// Device id.
    pub device: i32,
    /// DRAM buffers.
    pub dram: u64,
    /// L1 buffers.
    pub l1: u64,
    /// L1_SMALL buffers.
    pub l1_small: u64,
    /// TRACE buffers.
    pub trace: u64,
    /// SYSTEM_MEMORY buffers.
    pub system_memory: u64,
    /// Circular buffers.
    pub cb: u64,
    /// Kernels.
    pub kernel: u64,
}

/// The tensor pool's streams.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Streams {
    /// One per stream the driver knows.
    pub streams: Vec<Stream>,
    /// Leases held.
    pub leases: u32,
    /// Consumers the supervisor knows.
    pub registered_consumers: u32,
}

/// One tensor pool stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stream {
    /// Stream id.
    pub stream_id: u32,
    /// Profile name.
    pub profile: String,
    /// Epoch (0 = never attached).
    pub epoch: u64,
    /// The producer's client id, if a producer holds the lease.
    pub producer: Option<u32>,
    /// Consumers attached.
    pub consumers: u32,
    /// Frames published in this epoch.
    pub frames: u64,
    /// Frames per second since the previous refresh (`None` on the first).
    pub frames_per_s: Option<f64>,
    /// Drops the consumers reported.
    pub drops: u64,
    /// Producer-to-consumer handoff p99, ns, if the daemon knows it (today consumers measure
    /// it and do not report it: always `None`).
    pub handoff_p99_ns: Option<u64>,
}

/// The lanes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Lanes {
    /// Reactor backend (`io_uring` or `poll`).
    pub reactor: String,
    /// Where the figures came from: "counters file" or "control socket".
    pub from: String,
    /// One per lane.
    pub lanes: Vec<Lane>,
}

/// One lane.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Lane {
    /// Name.
    pub name: String,
    /// Pinned core (`None` = not pinned).
    pub core: Option<i32>,
    /// Idle strategy.
    pub idle: String,
    /// Agents it hosts.
    pub agents: Vec<String>,
    /// Work items per second over the counters file's last publish interval (over the last
    /// refresh when the figures come from the control socket).
    pub work_per_s: Option<f64>,
    /// Passes per second, over the same interval.
    pub passes_per_s: Option<f64>,
    /// Share of that interval spent idle, 0..=100.
    pub idle_pct: Option<f64>,
    /// Pass time p99, ns.
    pub p99_pass_ns: u64,
}

/// The frame worker, from its counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Frames {
    /// Agent sessions open now.
    pub sessions: u64,
    /// Sessions accepted since start.
    pub sessions_total: u64,
    /// The window granted to each session (`frames.window` of the config).
    pub window: u32,
    /// Frames handed to the detector and not answered yet (all sessions).
    pub in_flight: u64,
    /// Frames accepted per second over the counters file's last publish interval.
    pub frames_per_s: Option<f64>,
    /// Results sent per second over the counters file's last publish interval.
    pub results_per_s: Option<f64>,
    /// Decode time p99 of the last publish interval, ns.
    pub decode_p99_ns: u64,
    /// Detector time p99 of the last publish interval, ns.
    pub infer_p99_ns: u64,
    /// The open sessions (from the frames service's `sessions` status detail).
    pub session_list: Vec<Session>,
    /// Open sessions the detail does not list (its `+N more` tail: it lists 64 at most).
    pub sessions_unlisted: u64,
    /// Error messages sent, by code (every code, zero or not).
    pub errors: Vec<(String, u64)>,
    /// Connections closed, by cause.
    pub closes: Vec<(String, u64)>,
}

/// One agent session of the frame worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Session {
    /// Its number among the connections accepted (1 = the first).
    pub id: u64,
    /// The window of credits.
    pub window: u32,
    /// Frames accepted and not yet answered.
    pub in_flight: u32,
    /// Frames accepted.
    pub frames: u64,
    /// Frames per second since the previous refresh.
    pub frames_per_s: Option<f64>,
    /// Results sent.
    pub results: u64,
    /// Error messages sent (all codes).
    pub errors: u64,
}

impl Session {
    /// Parses the frames service's `sessions` status detail:
    /// `#N window W inflight I frames F results R errors E`, entries joined by "; ", maybe
    /// ending in `+N more` (see [`unlisted`](Self::unlisted)). Entries that do not read so
    /// are skipped (the text comes from another process).
    pub fn parse_list(text: &str) -> Vec<Session> {
        text.split("; ").filter_map(Self::parse).collect()
    }

    /// The `+N more` tail of the `sessions` detail: the open sessions it does not list (0
    /// when it has no such tail).
    pub fn unlisted(text: &str) -> u64 {
        text.rsplit("; ")
            .next()
            .and_then(|last| last.strip_prefix('+')?.strip_suffix(" more")?.parse().ok())
            .unwrap_or(0)
    }

    fn parse(entry: &str) -> Option<Session> {
        let mut words = entry.split_whitespace();
        let mut s =
            Session { id: words.next()?.strip_prefix('#')?.parse().ok()?, ..Default::default() };
        while let (Some(key), Some(value)) = (words.next(), words.next()) {
            match key {
                "window" => s.window = value.parse().ok()?,
                "inflight" => s.in_flight = value.parse().ok()?,
                "frames" => s.frames = value.parse().ok()?,
                "results" => s.results = value.parse().ok()?,
                "errors" => s.errors = value.parse().ok()?,
                _ => {}
            }
        }
        Some(s)
    }
}

/// How many samples per device the charts keep.
pub const HISTORY: usize = 120;

/// Usage history per device: DRAM and L1 percent of each refresh, the newest last, at most
/// [`HISTORY`] samples (the oldest dropped first).
#[derive(Clone, Debug, Default)]
pub struct History {
    devices: BTreeMap<i32, VecDeque<(f64, f64)>>,
}

impl History {
    /// Appends the devices of `snapshot` and forgets the devices it does not list (nothing
    /// when it has no devices section: the alloc server did not answer this time).
    pub fn push(&mut self, snapshot: &Snapshot) {
        let Some(devices) = snapshot.devices.ok() else { return };
        self.devices.retain(|id, _| devices.iter().any(|d| d.device == *id));
        for d in devices {
            let samples = self.devices.entry(d.device).or_default();
            if samples.len() == HISTORY {
                samples.pop_front();
            }
            samples.push_back((pct(d.dram, d.dram_capacity), pct(d.l1_used(), d.l1_capacity)));
        }
    }

    /// The samples of `device`, oldest first.
    pub fn samples(&self, device: i32) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.devices.get(&device).into_iter().flat_map(|s| s.iter().copied())
    }

    /// Number of samples of `device`.
    pub fn len(&self, device: i32) -> usize {
        self.devices.get(&device).map_or(0, VecDeque::len)
    }
}

/// `used` as a percentage of `capacity`; 0 when the capacity is 0.
pub fn pct(used: u64, capacity: u64) -> f64 {
    if capacity == 0 {
        0.0
    } else {
        used as f64 * 100.0 / capacity as f64
    }
}

/// Per-second rates of counters, keyed by name. Each key keeps its last value, the clock it
/// was read at, and its last rate.
///
/// A counter is read at a clock: [`rate`](Self::rate) uses the refresh clock (for values the
/// daemon reads live when asked: pool status, the frames service's session list), and
/// [`rate_at`](Self::rate_at) the clock of the counters file's last publish (its heartbeat),
/// since the file is rewritten every `metrics.publish_interval_ms` whatever top's refresh
/// interval: a rate over top's own interval would read 0, 2x, 0, 2x when top samples twice
/// per publish. A key read again at the same clock keeps its last rate.
///
/// Keys not read in the previous refresh are dropped at [`begin`](Self::begin), so streams,
/// sessions and lanes that went away do not accumulate.
#[derive(Debug, Default)]
pub struct Rates {
    base: Option<Instant>,
    now_ns: u64,
    refresh: u64,
    keys: HashMap<String, Counter>,
}

#[derive(Debug)]
struct Counter {
    value: u64,
    at_ns: u64,
    rate: Option<f64>,
    seen: u64,
}

impl Rates {
    /// Starts a refresh at `now` (the clock of [`rate`](Self::rate)); forgets the keys the
    /// previous refresh did not read.
    pub fn begin(&mut self, now: Instant) {
        let base = *self.base.get_or_insert(now);
        self.now_ns =
            u64::try_from(now.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX);
        let last = self.refresh;
        self.keys.retain(|_, c| c.seen == last);
        self.refresh = self.refresh.wrapping_add(1);
    }

    /// Records `value` of `key`, read now (this refresh's clock), and returns its rate per
    /// second since the previous refresh; see [`rate_at`](Self::rate_at).
    pub fn rate(&mut self, key: &str, value: u64) -> Option<f64> {
        self.rate_at(key, value, self.now_ns)
    }

    /// Records `value` of `key`, as published at `at_ns` (any monotonic ns clock, e.g. the
    /// counters file's heartbeat), and returns its rate per second between the previous
    /// clock it was read at and `at_ns`. `None` the first time, and when the counter or the
    /// clock went backwards (a restart: the next publish gives a rate again); the last rate
    /// when `at_ns` did not advance (not republished since).
    pub fn rate_at(&mut self, key: &str, value: u64, at_ns: u64) -> Option<f64> {
        let seen = self.refresh;
        let Some(c) = self.keys.get_mut(key) else {
            self.keys.insert(key.to_owned(), Counter { value, at_ns, rate: None, seen });
            return None;
        };
        c.seen = seen;
        if at_ns == c.at_ns {
            return c.rate;
        }
        c.rate = match (value.checked_sub(c.value), at_ns.checked_sub(c.at_ns)) {
            (Some(delta), Some(ns)) => Some(delta as f64 * 1e9 / ns as f64),
            _ => None,
        };
        c.value = value;
        c.at_ns = at_ns;
        c.rate
    }

    /// Number of keys kept (for the tests).
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn history_keeps_the_newest_samples() {
        let mut h = History::default();
        for used in 0..(HISTORY as u64 + 5) {
            let d = Device { device: 3, dram: used, dram_capacity: 1000, ..Default::default() };
            h.push(&Snapshot { devices: Section::Ok(vec![d]), ..Default::default() });
        }
        assert_eq!(h.len(3), HISTORY);
        assert_eq!(h.samples(3).next().map(|s| s.0), Some(0.5), "the first 5 were dropped");
        assert_eq!(h.len(0), 0);
        h.push(&Snapshot::default());
        assert_eq!(h.len(3), HISTORY, "a snapshot without devices adds nothing");
    }

    #[test]
    fn history_forgets_devices_the_latest_snapshot_does_not_list() {
        let mut h = History::default();
        let devices = |ids: &[i32]| Snapshot {
            devices: Section::Ok(
                ids.iter().map(|&device| Device { device, ..Default::default() }).collect(),
            ),
            ..Default::default()
        };
        h.push(&devices(&[0, 1, 7]));
        h.push(&devices(&[1]));
        assert_eq!((h.len(0), h.len(1), h.len(7)), (0, 2, 0));
        h.push(&Snapshot { devices: Section::Off("no answer".into()), ..Default::default() });
        assert_eq!(h.len(1), 2, "no devices section: the history stays");
        h.push(&devices(&[]));
        assert_eq!(h.len(1), 0);
    }

    #[test]
    fn session_lists_parse_and_bad_entries_are_skipped() {
        let list = Session::parse_list(
            "#3 window 4 inflight 2 frames 100 results 98 errors 1; junk; #x window 1; \
             #7 window 8 inflight 0 frames 5 results 5 errors 0 later 9",
        );
        assert_eq!(
            list,
            [
                Session {
                    id: 3,
                    window: 4,
                    in_flight: 2,
                    frames: 100,
                    results: 98,
                    errors: 1,
                    frames_per_s: None
                },
                Session {
                    id: 7,
                    window: 8,
                    in_flight: 0,
                    frames: 5,
                    results: 5,
                    errors: 0,
                    frames_per_s: None
                },
            ]
        );
        assert!(Session::parse_list("").is_empty());
        let tail = "#1 window 4 inflight 0 frames 1 results 1 errors 0; +36 more";
        assert_eq!(Session::parse_list(tail).len(), 1);
        assert_eq!(Session::unlisted(tail), 36);
        assert_eq!(Session::unlisted("+7 more"), 7);
        assert_eq!(Session::unlisted("#1 window 4"), 0);
        assert_eq!(Session::unlisted("+x more; +-1 more"), 0);
    }

    #[test]
    fn rates_need_two_refreshes_and_survive_restarts() {
        let mut r = Rates::default();
        let t0 = Instant::now();
        r.begin(t0);
        assert_eq!(r.rate("a", 10), None);
        r.begin(t0 + Duration::from_millis(500));
        assert_eq!(r.rate("a", 60), Some(100.0));
        r.begin(t0 + Duration::from_millis(1000));
        assert_eq!(r.rate("a", 5), None, "a counter that went back is a restart, not a rate");
        assert_eq!(pct(1, 0), 0.0);
    }
}
