//! The `alloc` service: its config, its listeners, and the agent that runs the [`Ingest`]
//! core on a lane.
//!
//! The agent owns every client connection (one [`ConnTable`] over all listeners), the
//! shared-memory rings clients register ([`crate::channel`]), and one pidfd per client
//! process. Each pass it drains the rings round-robin, at most `drain_batch` records per ring
//! (one busy client cannot stretch the pass), and in the lane's last look before a park it
//! arms every ring's doorbell: a client that pushes into an armed ring sends one doorbell
//! frame on its socket, which ends the park; otherwise clients never make a syscall to report.
//!
//! When a client process's pidfd becomes readable, its rings are drained to the end (a dead
//! producer cannot refill them) before the core is told, so nothing it pushed is lost and
//! nothing is applied after its release.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::devices::DeviceTable;
use super::ingest::{Ingest, IngestConfig, IngestCounters, Io, ListenerKind};
use super::rings::ClientRings;
use super::wire::{MsgType, RingRecord, MAX_DEVICES};
use crate::channel::ServerRx;
use crate::config::{AllocConfig, Config, ConfigError, SectionSpec, ALLOC_SECTION};
use crate::daemon::service::Agents;
use crate::daemon::{Build, DaemonError, Prepare, Prepared, Service, StatusCell};
use crate::files::OwnedFile;
use crate::metrics::{Counter, CounterId, CounterSpec};
use crate::runtime::{
    Agent, CloseReason, Completion, ConnConfig, ConnEvent, ConnId, ConnTable, Ctx,
};
use zerocopy::FromZeros;

/// The alloc service, as the daemon's table names it.
pub static ALLOC: AllocService = AllocService;

/// The alloc server. See the [module docs](self).
#[derive(Debug)]
pub struct AllocService;

/// The ingest agent, then the agents that own one device's ledger each (a lane that lists
/// `alloc-device-<N>` owns device N's ledger; otherwise it lives in the ingest agent).
pub const AGENTS: [&str; 1 + MAX_DEVICES] = [
    "alloc",
    "alloc-device-0",
    "alloc-device-1",
    "alloc-device-2",
    "alloc-device-3",
    "alloc-device-4",
    "alloc-device-5",
    "alloc-device-6",
    "alloc-device-7",
];

/// Capacity of the link to a device's lane, in events.
const DEVICE_LINK: usize = 1 << 16;

/// A listener from `[alloc] listeners`: where, and what it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSpec {
    /// The socket path (a relative path in the config is made absolute in the runtime dir).
    pub path: PathBuf,
    /// What it accepts.
    pub kind: ListenerKind,
    /// The layout name as configured.
    pub layout: String,
    /// Whether the path is in the runtime dir (configured relative): a failure to listen
    /// there fails the start; a path elsewhere (a shared `/tmp`) is skipped with a warning.
    pub in_runtime_dir: bool,
}

/// Parses `"<layout>:<path>"`.
pub fn parse_listener(entry: &str, dir: &Path) -> Result<ListenerSpec, String> {
    let Some((layout, path)) = entry.split_once(':') else {
        return Err(format!(
            "listener {entry:?}: expected \"<layout>:<path>\", e.g. \"native:alloc.sock\""
        ));
    };
    let kind = ListenerKind::parse(layout).ok_or_else(|| {
        format!(
            "listener {entry:?}: unknown layout {layout:?}; expected one of: native, tt-metal, \
             tt-metal-v4, tt-metal-v5, compact-v2"
        )
    })?;
    if path.is_empty() {
        return Err(format!("listener {entry:?}: empty path"));
    }
    let path = Path::new(path);
    let in_runtime_dir = !path.is_absolute();
    let path = if path.is_absolute() { path.to_owned() } else { dir.join(path) };
    Ok(ListenerSpec { path, kind, layout: layout.to_owned(), in_runtime_dir })
}

fn devices_of(config: &AllocConfig) -> Result<DeviceTable, String> {
    let boards: Vec<&str> = config.devices.iter().map(String::as_str).collect();
    DeviceTable::from_boards(&boards).map_err(|e| e.to_string())
}

impl Service for AllocService {
    fn name(&self) -> &'static str {
        "alloc"
    }

    fn section(&self) -> &SectionSpec {
        &ALLOC_SECTION
    }

    fn agents(&self) -> &'static [&'static str] {
        &AGENTS
    }

    fn optional_agents(&self) -> &'static [&'static str] {
        &AGENTS[1..]
    }

    fn enabled(&self, config: &Config) -> bool {
        config.alloc.enabled
    }

    fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        let alloc = &config.alloc;
        if !alloc.enabled {
            return Ok(());
        }
        let invalid = |at: &str, reason: String| ConfigError::Invalid { at: at.into(), reason };
        if alloc.listeners.is_empty() {
            return Err(invalid("alloc.listeners", "expected at least one listener".into()));
        }
        let mut seen = Vec::new();
        for entry in &alloc.listeners {
            let spec = parse_listener(entry, Path::new("/"))
                .map_err(|reason| invalid("alloc.listeners", reason))?;
            if seen.contains(&spec.path) {
                return Err(invalid(
                    "alloc.listeners",
                    format!("listener {entry:?}: the path is listed twice"),
                ));
            }
            seen.push(spec.path);
        }
        devices_of(alloc).map_err(|reason| invalid("alloc.devices", reason))?;
        if !alloc.ring_capacity.is_power_of_two() {
            return Err(invalid(
                "alloc.ring_capacity",
                format!("expected a power of two, got {}", alloc.ring_capacity),
            ));
        }
        Ok(())
    }

    fn prepare(&self, cx: &mut Prepare<'_>) -> Result<Box<dyn Prepared>, DaemonError> {
        let alloc = cx.config.alloc.clone();
        let fail = |message: String| DaemonError::Service { service: "alloc", message };
        let listeners = alloc
            .listeners
            .iter()
            .map(|l| parse_listener(l, cx.dir))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        let devices = devices_of(&alloc).map_err(fail)?;
        let mut counters = Vec::with_capacity(COUNTERS.len());
        for c in COUNTERS {
            let spec = match c.gauge {
                true => CounterSpec::gauge(c.name, c.labels, c.help),
                false => CounterSpec::counter(c.name, c.labels, c.help),
            };
            counters.push(cx.register(spec)?);
        }
        Ok(Box::new(AllocPrepared { alloc, listeners, devices, counters }))
    }

    fn commands(&self) -> Vec<clap::Command> {
        crate::cli::alloc::commands()
    }

    fn run_command(
        &self,
        name: &str,
        matches: &clap::ArgMatches,
        cli: &crate::daemon::CliContext,
    ) -> std::process::ExitCode {
        crate::cli::alloc::run(name, matches, cli)
    }
}

/// One mirrored counter: its metric and how to read it from the core's counters.
struct CounterDef {
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
    help: &'static str,
    gauge: bool,
    read: fn(&IngestCounters) -> u64,
}

const EV: &str = "Alloc server: events applied to the ledger.";
const COUNTERS: &[CounterDef] = &[
    CounterDef {
        name: "corelane_alloc_events_total",
        labels: &[],
        help: EV,
        gauge: false,
        read: |c| c.events,
    },
    CounterDef {
        name: "corelane_alloc_invalid_total",
        labels: &[],
        help: "Alloc server: records refused by validation.",
        gauge: false,
        read: |c| c.invalid,
    },
    CounterDef {
        name: "corelane_alloc_unknown_frees_total",
        labels: &[],
        help: "Alloc server: frees of keys the ledger does not hold.",
        gauge: false,
        read: |c| c.unknown_frees,
    },
    CounterDef {
        name: "corelane_alloc_duplicate_allocs_total",
        labels: &[],
        help: "Alloc server: allocations of live keys (ref_count bumped).",
        gauge: false,
        read: |c| c.duplicate_allocs,
    },
    CounterDef {
        name: "corelane_alloc_gaps_skipped_total",
        labels: &[],
        help: "Alloc server: sequence gaps skipped (timeout or full window).",
        gauge: false,
        read: |c| c.gaps_skipped,
    },
    CounterDef {
        name: "corelane_alloc_late_total",
        labels: &[],
        help: "Alloc server: events that arrived after their gap was skipped.",
        gauge: false,
        read: |c| c.late,
    },
    CounterDef {
        name: "corelane_alloc_reordered_total",
        labels: &[],
        help: "Alloc server: events held until their turn.",
        gauge: false,
        read: |c| c.reordered,
    },
    CounterDef {
        name: "corelane_alloc_client_dropped_total",
        labels: &[],
        help: "Alloc server: reports clients dropped on their side.",
        gauge: false,
        read: |c| c.client_dropped,
    },
    CounterDef {
        name: "corelane_alloc_processes_released_total",
        labels: &[],
        help: "Alloc server: client processes whose entries were released.",
        gauge: false,
        read: |c| c.processes_released,
    },
    CounterDef {
        name: "corelane_alloc_after_release_total",
        labels: &[],
        help: "Alloc server: events of released processes, dropped.",
        gauge: false,
        read: |c| c.after_release,
    },
    CounterDef {
        name: "corelane_alloc_resync_bytes_total",
        labels: &[],
        help: "Alloc server: legacy bytes discarded by resync.",
        gauge: false,
        read: |c| c.resync_bytes,
    },
    CounterDef {
        name: "corelane_alloc_error_closes_total",
        labels: &[],
        help: "Alloc server: connections closed for protocol errors.",
        gauge: false,
        read: |c| c.error_closes,
    },
    CounterDef {
        name: "corelane_alloc_ring_corruptions_total",
        labels: &[],
        help: "Alloc server: shared-memory rings closed as corrupt.",
        gauge: false,
        read: |c| c.ring_corruptions,
    },
    CounterDef {
        name: "corelane_alloc_ledger_full_total",
        labels: &[],
        help: "Alloc server: allocations refused because the ledger held max_entries.",
        gauge: false,
        read: |c| c.ledger_full,
    },
    CounterDef {
        name: "corelane_alloc_rings",
        labels: &[],
        help: "Alloc server: shared-memory rings open now.",
        gauge: true,
        read: |c| c.rings,
    },
    CounterDef {
        name: "corelane_alloc_connections",
        labels: &[],
        help: "Alloc server: client connections open now.",
        gauge: true,
        read: |c| c.connections,
    },
];

struct AllocPrepared {
    alloc: AllocConfig,
    listeners: Vec<ListenerSpec>,
    devices: DeviceTable,
    counters: Vec<CounterId>,
}

impl Prepared for AllocPrepared {
    fn build(self: Box<Self>, cx: &mut Build<'_>) -> Result<Agents, DaemonError> {
        let mut bound = Vec::new();
        for spec in &self.listeners {
            match bind_listener(&spec.path) {
                Ok(Some((listener, owned))) => {
                    tracing::info!(path = %spec.path.display(), layout = %spec.layout, "alloc: listening");
                    bound.push((listener, owned, spec.clone()));
                }
                Ok(None) => tracing::warn!(
                    path = %spec.path.display(),
                    "alloc: another server is live on this socket; this listener is skipped"
                ),
                Err(e) if spec.in_runtime_dir => {
                    return Err(DaemonError::Service {
                        service: "alloc",
                        message: format!("cannot listen on {}: {e}", spec.path.display()),
                    })
                }
                // A path outside the runtime dir is anyone's (a file someone left in /tmp,
                // another user's server): that listener is skipped, the daemon runs.
                Err(e) => tracing::warn!(
                    path = %spec.path.display(),
                    "alloc: cannot listen on {}: {e}; this listener is skipped",
                    spec.path.display()
                ),
            }
        }
        let counters = self.counters.iter().map(|&id| cx.counter(id)).collect();
        let a = &self.alloc;
        let config = IngestConfig {
            reorder_window: a.reorder_window as usize,
            gap_timeout: Duration::from_millis(a.gap_timeout_ms),
            release_on_disconnect: a.release_on_disconnect,
            exit_grace: Duration::from_millis(a.exit_grace_ms),
            max_rings_per_client: a.max_rings_per_client,
            ring_capacity: a.ring_capacity,
            legacy_detect_timeout: Duration::from_millis(a.legacy_detect_timeout_ms),
            latency_probe: a.latency_probe,
            max_entries: usize::try_from(a.max_entries).unwrap_or(usize::MAX),
            ..IngestConfig::default()
        };
        let status = cx.status("alloc");
        status.set("devices", self.devices.len());
        status.set(
            "listeners",
            bound
                .iter()
                .map(|(_, _, s)| format!("{}:{}", s.layout, s.path.display()))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let mut core = Ingest::new(config, self.devices);
        let mut agents: Agents = Vec::new();
        for (device, name) in AGENTS[1..].iter().enumerate() {
            if let Some((tx, rx)) = cx.link(DEVICE_LINK, name) {
                tracing::info!(
                    device,
                    agent = name,
                    "alloc: device {device}'s ledger is on the lane of {name}"
                );
                agents.push((name, Box::new(core.place_device(device as u8, tx, rx))));
            }
        }
        let agent = AllocAgent {
            core,
            listeners: bound,
            conns: ConnTable::new(ConnConfig {
                max_connections: a.max_connections as usize,
                ..ConnConfig::default()
            })
            .keep_closed(),
            rings: Vec::new(),
            grants: Vec::new(),
            pidfds: HashMap::new(),
            max_rings: a.max_rings as usize,
            armed: false,
            next_client: 0,
            ring_count: 0,
            drain_batch: a.drain_batch as usize,
            timer_at: None,
            counters,
            published: None,
            status,
            scratch: Vec::with_capacity(256),
            records: vec![RingRecord::new_zeroed(); a.drain_batch as usize],
            rx: Vec::with_capacity(64 * 1024),
            released: Vec::new(),
        };
        agents.insert(0, ("alloc", Box::new(agent) as Box<dyn Agent>));
        Ok(agents)
    }
}

/// Binds a listener's socket: a socket file already there is removed if nobody answers on it
/// (a crashed server's), kept if a live server does (`Ok(None)`: skip this listener).
fn bind_listener(path: &Path) -> io::Result<Option<(UnixListener, OwnedFile)>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Ok(None),
                // Nobody listens: a crashed server's socket file, replaced.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)?;
                }
                // EACCES (another user's server), or anything else: not ours to remove.
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("a socket is there that this daemon cannot judge ({e})"),
                    ))
                }
            }
        }
        Ok(_) => return Err(io::Error::other("the path exists and is not a socket")),
        Err(_) => {}
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            return Err(io::Error::other(format!("no directory {}", parent.display())));
        }
    }
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    let owned = OwnedFile::of(path)?;
    Ok(Some((listener, owned)))
}

/// Agent-local ids: listeners, pidfd watches (pid in the low bits) and the one timer.
const LISTENER_ID: u64 = 1 << 40;
const PIDFD_ID: u64 = 1 << 41;
const TICK_TIMER: u64 = 1;
/// How often the counters file mirror is refreshed.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// The agent: see the [module docs](self).
pub struct AllocAgent {
    core: Ingest,
    listeners: Vec<(UnixListener, OwnedFile, ListenerSpec)>,
    conns: ConnTable<u64>,
    /// Every client with rings (drained merged in sequence order, see [`super::rings`]).
    rings: Vec<ClientRings>,
    /// Rings of all clients.
    ring_count: usize,
    /// Records one ring may hand on per pass.
    drain_batch: usize,
    /// Ring requests waiting for their connection's output queue to empty (client, msg_id).
    grants: Vec<(u64, u64)>,
    /// pid -> whether its pidfd is watched.
    pidfds: HashMap<u32, ()>,
    max_rings: usize,
    /// Whether the rings' doorbells were armed in a last look.
    armed: bool,
    next_client: usize,
    timer_at: Option<Instant>,
    counters: Vec<Counter>,
    published: Option<Instant>,
    status: StatusCell,
    scratch: Vec<u8>,
    /// Records of one drain (`drain_batch` of them: the bound of one ring's drain per pass).
    records: Vec<RingRecord>,
    released: Vec<u32>,
    /// A received chunk, copied so the core may queue replies while it reads it.
    rx: Vec<u8>,
}

impl std::fmt::Debug for AllocAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocAgent")
            .field("core", &self.core)
            .field("rings", &self.ring_count)
            .finish_non_exhaustive()
    }
}

/// The core's [`Io`] over the connection table.
struct Shim<'a, 'b> {
    conns: &'a mut ConnTable<u64>,
    ctx: &'a mut Ctx<'b>,
    grants: &'a mut Vec<(u64, u64)>,
}

impl Io for Shim<'_, '_> {
    fn send(&mut self, client: u64, bytes: &[u8]) {
        if let Some(id) = ConnId::from_local(client) {
            let _ = self.conns.send(self.ctx, id, bytes);
        }
    }

    fn close(&mut self, client: u64) {
        if let Some(id) = ConnId::from_local(client) {
            self.conns.close(self.ctx, id, CloseReason::Protocol);
        }
    }

    fn register_ring(&mut self, client: u64, msg_id: u64) {
        self.grants.push((client, msg_id));
    }
}

impl AllocAgent {
    fn accept(&mut self, ctx: &mut Ctx<'_>, listener: usize, fd: crate::runtime::Incoming) {
        let Some(kind) = self.listeners.get(listener).map(|l| l.2.kind) else { return };
        let Ok(id) = self.conns.accept(ctx, fd, |id| id.local()) else { return };
        let client = id.local();
        let (pid, uid) = match ctx.peer_credentials(client) {
            Ok(cred) => (cred.pid, cred.uid),
            Err(e) => {
                tracing::warn!("alloc: no peer credentials for a connection ({e}); refusing it");
                self.conns.abort(ctx, id, CloseReason::Protocol);
                return;
            }
        };
        let connected = self.core.connect(client, pid, kind, ctx.now);
        self.core.set_uid(client, uid);
        if connected.new_process {
            // A reused pid: the dead process's pidfd goes, the new one's is watched.
            self.unwatch(ctx, pid);
        }
        // Its exit is watched from its first bytes on (a connection that sends nothing, a
        // liveness probe of another server, owns nothing and costs no pidfd).
    }

    fn watch_process(&mut self, ctx: &mut Ctx<'_>, pid: u32) {
        let Some(raw) = rustix::process::Pid::from_raw(pid as i32) else { return };
        match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => match ctx.watch(PIDFD_ID | u64::from(pid), fd) {
                Ok(()) => {
                    self.pidfds.insert(pid, ());
                }
                Err(e) => tracing::warn!(pid, "alloc: cannot watch pid {pid}'s exit: {e}"),
            },
            // Gone already: its connections' end releases it.
            Err(_) => {
                self.core.process_exited(pid, ctx.now);
            }
        }
    }

    fn process_exited(&mut self, ctx: &mut Ctx<'_>, pid: u32) {
        // Everything the dead process pushed, to the end: it cannot push more.
        let mut i = 0;
        while i < self.rings.len() {
            if self.rings[i].pid == pid {
                let client = self.rings.swap_remove(i);
                self.finish_client(client, ctx.now);
                continue;
            }
            i += 1;
        }
        if self.core.process_exited(pid, ctx.now) {
            self.unwatch(ctx, pid);
        }
    }

    /// Hands what a client's rings still hold to the core, in order (at most their
    /// capacity: the producers are gone or cut off), and drops them.
    fn finish_client(&mut self, mut rings: ClientRings, now: Instant) {
        let corrupt = rings.finish(&mut self.core, &mut self.records, now).is_err();
        for _ in 0..rings.len() {
            self.core.ring_removed(rings.client, corrupt);
        }
        self.ring_count -= rings.len();
    }

    fn unwatch(&mut self, ctx: &mut Ctx<'_>, pid: u32) {
        if self.pidfds.remove(&pid).is_some() {
            ctx.close(PIDFD_ID | u64::from(pid));
        }
    }

    /// Drains every client's rings (bounded per ring, merged in sequence order per client);
    /// returns the records taken.
    fn drain_rings(&mut self, ctx: &mut Ctx<'_>) -> usize {
        let mut total = 0;
        let count = self.rings.len();
        let mut corrupt = Vec::new();
        for k in 0..count {
            let i = (self.next_client + k) % count;
            let rings = &mut self.rings[i];
            match rings.drain(&mut self.core, &mut self.records, self.drain_batch, ctx.now) {
                Ok(n) => total += n,
                Err(e) => {
                    let pid = rings.pid;
                    tracing::warn!(pid, "alloc: a shared-memory ring of pid {pid} is corrupt ({e}); closing that client");
                    corrupt.push(i);
                }
            }
        }
        if count > 0 {
            self.next_client = (self.next_client + 1) % count;
        }
        corrupt.sort_unstable();
        for &i in corrupt.iter().rev() {
            let rings = self.rings.swap_remove(i);
            for _ in 0..rings.len() {
                self.core.ring_removed(rings.client, true);
            }
            self.ring_count -= rings.len();
            if let Some(id) = ConnId::from_local(rings.client) {
                self.conns.close(ctx, id, CloseReason::Protocol);
            }
        }
        total
    }

    /// Creates the rings asked for whose connection has nothing queued (the grant must not
    /// overtake earlier replies: it goes out with `sendmsg`, beside the reactor's queue).
    fn grant_rings(&mut self, ctx: &mut Ctx<'_>) -> usize {
        let mut done = 0;
        let mut retry = Vec::new();
        let mut i = 0;
        while i < self.grants.len() {
            let (client, msg_id) = self.grants[i];
            let Some(id) = ConnId::from_local(client).filter(|&id| self.conns.contains(id)) else {
                self.grants.swap_remove(i);
                continue;
            };
            if self.conns.pending(id) > 0 {
                i += 1;
                continue;
            }
            self.grants.swap_remove(i);
            if self.grant(ctx, id, client, msg_id) {
                self.core.ring_request_done(client);
                done += 1;
            } else {
                // The socket's buffer is full: the same request again on a later pass (not
                // counted as work: the lane may park until the peer reads).
                retry.push((client, msg_id));
            }
        }
        self.grants.append(&mut retry);
        done
    }

    /// Answers one ring request: a ring granted (its memfd sent with the reply), or refused.
    /// Returns false if the socket could take nothing now (`WouldBlock`): nothing was sent,
    /// the ring is dropped, and the request is to be tried again.
    fn grant(&mut self, ctx: &mut Ctx<'_>, id: ConnId, client: u64, msg_id: u64) -> bool {
        let code = MsgType::RegisterRing.code();
        self.scratch.clear();
        let refusal = if !self.core.may_register(client) {
            Some("no more rings for this connection (max_rings_per_client)")
        } else if self.ring_count >= self.max_rings {
            Some("no more rings on this server (max_rings); report over the socket")
        } else {
            None
        };
        if let Some(text) = refusal {
            Ingest::encode_refusal(code, msg_id, text, &mut self.scratch);
            let _ = self.conns.send(ctx, id, &self.scratch);
            return true;
        }
        let Some(pid) = self.core.pid_of(client) else { return true };
        let capacity = self.core.ring_capacity();
        let index = self.core.rings_of(client);
        let made =
            ServerRx::<RingRecord>::create(&format!("corelane-alloc-{pid}"), capacity as usize);
        let (ring, fd) = match made {
            Ok(made) => made,
            Err(e) => {
                tracing::warn!(pid, "alloc: cannot create a ring for pid {pid}: {e}");
                Ingest::encode_refusal(
                    code,
                    msg_id,
                    &format!("cannot create the ring: {e}"),
                    &mut self.scratch,
                );
                let _ = self.conns.send(ctx, id, &self.scratch);
                return true;
            }
        };
        Ingest::encode_grant(
            msg_id,
            index,
            capacity,
            crate::rings::spsc::shm::region_len::<RingRecord>(capacity as usize).unwrap_or(0)
                as u64,
            &mut self.scratch,
        );
        let sent = match ctx.fd(client) {
            Some(socket) => crate::channel::send_with_fd(socket, &self.scratch, fd.as_fd()),
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        };
        match sent {
            Ok(_) => {
                self.core.ring_added(client);
                self.ring_count += 1;
                match self.rings.iter_mut().find(|r| r.client == client) {
                    Some(rings) => rings.add(ring),
                    None => {
                        let mut rings = ClientRings::new(client, pid);
                        rings.add(ring);
                        self.rings.push(rings);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                tracing::warn!(
                    pid,
                    "alloc: cannot pass the ring to pid {pid}: {e}; closing that connection"
                );
                self.conns.close(ctx, id, CloseReason::Peer);
            }
        }
        true
    }

    fn closed(&mut self, ctx: &mut Ctx<'_>) {
        while let Some((id, client)) = self.conns.take_closed() {
            let _ = id;
            let pid = self.core.pid_of(client);
            // Its rings: what was pushed before the close, then they go.
            if let Some(i) = self.rings.iter().position(|r| r.client == client) {
                let rings = self.rings.swap_remove(i);
                self.finish_client(rings, ctx.now);
            }
            if self.core.disconnect(client, ctx.now) {
                if let Some(pid) = pid {
                    self.unwatch(ctx, pid);
                }
            }
        }
    }

    fn arm_timer(&mut self, ctx: &mut Ctx<'_>) {
        let next = self.core.next_tick(ctx.now);
        if next != self.timer_at {
            match next {
                Some(at) => {
                    let _ = ctx.timer(at, TICK_TIMER);
                }
                None => {
                    ctx.cancel_timer(TICK_TIMER);
                }
            }
            self.timer_at = next;
        }
    }

    fn publish(&mut self, now: Instant) {
        if self.published.is_some_and(|t| now < t + PUBLISH_EVERY) {
            return;
        }
        self.published = Some(now);
        let c = self.core.counters();
        for (def, counter) in COUNTERS.iter().zip(&self.counters) {
            counter.set((def.read)(&c));
        }
        self.status.set("connections", c.connections);
        self.status.set("rings", c.rings);
        self.status.set("events", c.events);
    }
}

impl Agent for AllocAgent {
    fn name(&self) -> &str {
        "alloc"
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) -> io::Result<()> {
        for (i, (listener, _, _)) in self.listeners.iter().enumerate() {
            let fd = listener.as_fd().try_clone_to_owned()?;
            ctx.listen(LISTENER_ID | i as u64, fd)?;
        }
        Ok(())
    }

    fn on_completion(&mut self, ctx: &mut Ctx<'_>, completion: Completion) {
        match self.conns.event(ctx, completion) {
            ConnEvent::Received { id, buf } => {
                let client = id.local();
                let now = ctx.now;
                // The core reads the chunk; its output goes through the table afterwards.
                if let Some(pid) = self.core.pid_of(client) {
                    if !self.pidfds.contains_key(&pid) {
                        self.watch_process(ctx, pid);
                    }
                }
                self.rx.clear();
                self.rx.extend_from_slice(ctx.reactor().data(&buf));
                let mut shim = Shim { conns: &mut self.conns, ctx, grants: &mut self.grants };
                self.core.bytes(client, &self.rx, now, &mut shim);
            }
            ConnEvent::PeerClosed { id } => self.conns.close(ctx, id, CloseReason::Peer),
            ConnEvent::Other(Completion::Accepted { listener, fd }) => {
                let local = Ctx::local(listener);
                self.accept(ctx, (local & !LISTENER_ID) as usize, fd);
            }
            ConnEvent::Other(Completion::Readable { token }) => {
                let local = Ctx::local(token);
                if local & PIDFD_ID != 0 {
                    self.process_exited(ctx, (local & !PIDFD_ID) as u32);
                }
            }
            ConnEvent::Other(Completion::Timer { token }) if Ctx::local(token) == TICK_TIMER => {
                self.timer_at = None;
                let mut shim = Shim { conns: &mut self.conns, ctx, grants: &mut self.grants };
                let now = shim.ctx.now;
                self.released.clear();
                self.core.tick(now, &mut shim, &mut self.released);
                for pid in std::mem::take(&mut self.released) {
                    self.unwatch(ctx, pid);
                }
            }
            _ => {}
        }
        self.closed(ctx);
    }

    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
        if self.armed && !ctx.is_last_look() {
            for rings in &self.rings {
                rings.disarm();
            }
            self.armed = false;
        }
        let mut work = self.drain_rings(ctx);
        work += self.grant_rings(ctx);
        if self.core.flush_ledgers() {
            work += 1; // a device lane is behind: come back next pass
        }
        self.closed(ctx);
        if work == 0 && ctx.is_last_look() && !self.rings.is_empty() {
            // The lane parks unless a ring has records: from now on a push rings the bell.
            self.armed = true;
            for rings in &mut self.rings {
                if rings.arm() {
                    work += 1;
                }
            }
        }
        self.arm_timer(ctx);
        self.publish(ctx.now);
        work
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>) {
        self.conns.close_all(ctx);
        for (_, owned, spec) in &self.listeners {
            if let Err(e) = owned.remove() {
                tracing::warn!(path = %spec.path.display(), "alloc: cannot remove the socket: {e}");
            }
        }
    }
}
