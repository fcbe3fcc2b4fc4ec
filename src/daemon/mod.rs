//! `corelane run`: builds the lanes and agents from the config, starts them, serves
//! `/metrics`, and shuts everything down cleanly on SIGINT/SIGTERM.
//!
//! Start-up order: runtime directory (0700, preferably on a tmpfs), the instance lock
//! (`corelane.lock`: one daemon per directory, held for the daemon's life), a sweep of
//! temporary files a crashed daemon left, then everything that can fail without side effects
//! (counter names, the `/metrics` address), and only then the sockets and files: control
//! socket, counters file, lanes (each pinned, each with its reactor), `/metrics`. A start
//! that fails removes what it created. Shutdown reverses it; the control socket and the
//! counters file are removed only if they are still the files this daemon created.

mod control_agent;
mod metrics_agent;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use control_agent::{
    ControlAgent, ControlCounters, ControlSettings, StatusHandler, ERROR_KINDS,
};
pub use metrics_agent::{LaneGauges, MetricsAgent};

use crate::config::{self, Config};
use crate::files::{InstanceLock, LockError, OwnedFile};
use crate::metrics::{
    CounterKind, CounterSpec, CountersFile, MetricsError, MetricsServer, Registry,
};
use crate::runtime::{
    Agent, Board, IdleStrategy, LaneSpec, ReactorChoice, ReactorConfig, ReactorKind, Runtime,
    RuntimeError, Shutdown, UringOptions,
};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The runtime directory could not be created or secured.
    #[error("runtime directory {path}: {source}")]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another daemon holds the runtime directory's lock.
    #[error("another corelane daemon is already running in {dir} (pid {pid}); stop it, or set runtime.dir to run a second one")]
    AlreadyRunning {
        /// The runtime directory.
        dir: PathBuf,
        /// The holder's pid, as its lock file says (0 if unreadable).
        pid: u32,
    },
    /// The lock file could not be used.
    #[error("cannot lock the runtime directory {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The control socket could not be bound.
    #[error("cannot bind the control socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `metrics.listen` is not an address.
    #[error("bad value for 'metrics.listen': expected an address like 127.0.0.1:9090, got {0:?}")]
    MetricsListen(String),
    /// The counters file or the metrics endpoint failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The lanes did not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    runtime: Runtime,
    metrics_server: Option<MetricsServer>,
    counters: Option<CountersFile>,
    socket: OwnedFile,
    shutdown: Shutdown,
    /// Held until the daemon is dropped, after everything else is removed.
    _lock: InstanceLock,
}

impl Daemon {
    /// Starts everything `config` describes. `env` resolves the runtime directory
    /// (`XDG_RUNTIME_DIR`, `USER`).
    pub fn start(
        config: &Config,
        env: &impl Fn(&str) -> Option<String>,
        shutdown: Shutdown,
    ) -> Result<Daemon, DaemonError> {
        let dir = config.runtime.runtime_dir(env);
        secure_dir(&dir)?;
        warn_if_not_tmpfs(&dir);
        let lock = InstanceLock::acquire(&dir).map_err(|e| match e {
            LockError::Held { pid } => DaemonError::AlreadyRunning { dir: dir.clone(), pid },
            LockError::Io(source) => {
                DaemonError::Lock { path: dir.join(crate::files::LOCK_FILE), source }
            }
        })?;
        // Under the lock no other daemon writes here: temporaries are a crashed one's.
        match crate::files::sweep_temporaries(&dir, &config.metrics.counters_file) {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed temporary files a previous daemon left"),
            Err(e) => tracing::warn!("cannot sweep the runtime directory: {e}"),
        }

        // Everything that can fail without side effects, before any socket or file exists.
        let board = Board::new();
        let mut registry = Registry::new();
        let ids = Ids::register(&mut registry, config)?;
        let metrics_addr = match (config.metrics.enabled, config.metrics.listen.as_str()) {
            (true, listen) if !listen.is_empty() => Some(
                listen
                    .parse::<SocketAddr>()
                    .map_err(|_| DaemonError::MetricsListen(listen.to_owned()))?,
            ),
            _ => None,
        };

        let socket = config.control_socket_path(env);
        let (listener, socket) = bind_control(&socket)?;
        let made = if config.metrics.enabled {
            registry.create(&config.counters_path(env))
        } else {
            registry.create_in_memory()
        };
        let counters = match made {
            Ok(c) => c,
            Err(e) => {
                let _ = socket.remove();
                return Err(e.into());
            }
        };
        let control_counters = ids.control(&counters);
        let lane_gauges = ids.lanes(&counters);

        let config_toml =
            config.to_toml_string().unwrap_or_else(|e| format!("# cannot render: {e}"));
        // The services of later builds: reported in status as absent.
        let services: Vec<(String, String)> = config::RESERVED_AGENTS
            .iter()
            .map(|s| (s.to_string(), "not in this build".to_string()))
            .collect();
        let control_settings = ControlSettings::from_config(&config.control);

        let mut listener = Some(listener);
        let mut specs = Vec::new();
        for lane in &config.lanes {
            let mut agents: Vec<Box<dyn Agent>> = Vec::new();
            for agent in &lane.agents {
                match agent.as_str() {
                    "control" => agents.push(Box::new(ControlAgent::new(
                        socket.path().to_owned(),
                        listener.take().expect("config validation: one control agent"),
                        control_settings.clone(),
                        StatusHandler::new(
                            board.clone(),
                            config_toml.clone(),
                            services.clone(),
                            control_counters.clone(),
                        ),
                    ))),
                    // Without metrics there is nothing to publish: no agent at all.
                    "metrics" if !config.metrics.enabled => {}
                    "metrics" => agents.push(Box::new(MetricsAgent::new(
                        board.clone(),
                        lane_gauges.clone(),
                        counters.counter(ids.uptime),
                        Duration::from_millis(config.metrics.publish_interval_ms.max(1)),
                    ))),
                    other => {
                        unreachable!("config validation admits only known agents, got {other}")
                    }
                }
            }
            specs.push(LaneSpec {
                name: lane.name.clone(),
                core: lane.core,
                idle: idle(&lane.idle),
                agents,
            });
        }
        if listener.is_some() {
            tracing::warn!("no lane hosts the control agent: the control socket is not served");
            let _ = socket.remove();
        }
        let choice = match config.runtime.reactor {
            config::ReactorKind::Auto => ReactorChoice::Auto,
            config::ReactorKind::IoUring => ReactorChoice::IoUring,
            config::ReactorKind::Poll => ReactorChoice::Poll,
        };
        let reactor = ReactorConfig {
            choice,
            uring: UringOptions {
                defer_taskrun: config.runtime.uring_defer_taskrun,
                skip_send_cqe: config.runtime.uring_skip_send_cqe,
            },
        };
        let runtime = match Runtime::start_with(specs, reactor, shutdown.clone(), board) {
            Ok(r) => r,
            Err(e) => {
                let _ = socket.remove();
                let _ = counters.remove();
                return Err(e.into());
            }
        };
        counters.counter(ids.reactor[usize::from(runtime.reactor() == ReactorKind::Poll)]).set(1);

        let metrics_server = match metrics_addr {
            Some(addr) => match MetricsServer::start(addr, counters.reader()) {
                Ok(server) => {
                    tracing::info!(addr = %server.local_addr(), "metrics endpoint serving /metrics");
                    Some(server)
                }
                Err(e) => {
                    // Undo the start: lanes stop, then their socket and file go.
                    runtime.shutdown();
                    runtime.join();
                    let _ = socket.remove();
                    let _ = counters.remove();
                    return Err(e.into());
                }
            },
            None => None,
        };
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            reactor = runtime.reactor().name(),
            lanes = config.lanes.len(),
            "corelane running"
        );
        Ok(Daemon {
            runtime,
            metrics_server,
            counters: Some(counters),
            socket,
            shutdown,
            _lock: lock,
        })
    }

    /// The control socket path.
    pub fn socket(&self) -> &Path {
        self.socket.path()
    }

    /// The `/metrics` address, if served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(MetricsServer::local_addr)
    }

    /// The reactor backend the lanes run.
    pub fn reactor(&self) -> ReactorKind {
        self.runtime.reactor()
    }

    /// Blocks until the shutdown flag is set (a signal, or [`Shutdown::request`]), then stops.
    pub fn wait(self) {
        while !self.shutdown.is_requested() {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.stop();
    }

    /// Stops every lane, the metrics endpoint, and removes the counters file.
    pub fn stop(mut self) {
        let started = Instant::now();
        self.runtime.shutdown();
        self.runtime.join();
        if let Some(server) = self.metrics_server.take() {
            server.stop();
        }
        let socket = self.socket.path().display();
        match self.socket.remove() {
            Ok(true) => tracing::info!(%socket, "control socket removed"),
            Ok(false) => tracing::warn!(%socket, "control socket gone or replaced; left alone"),
            Err(e) => tracing::warn!(%socket, "cannot remove the control socket: {e}"),
        }
        if let Some(counters) = self.counters.take() {
            if let Err(e) = counters.remove() {
                tracing::warn!("cannot remove the counters file: {e}");
            }
        }
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, "corelane stopped");
    }
}

/// `corelane run`: start, wait for SIGINT/SIGTERM, stop.
pub fn run(config: &Config) -> Result<(), DaemonError> {
    let shutdown = Shutdown::new();
    shutdown.on_signals().map_err(DaemonError::Signals)?;
    let daemon = Daemon::start(config, &|k| std::env::var(k).ok(), shutdown)?;
    daemon.wait();
    Ok(())
}

fn idle(strategy: &config::IdleStrategy) -> IdleStrategy {
    match *strategy {
        config::IdleStrategy::Spin => IdleStrategy::Spin,
        config::IdleStrategy::Yield => IdleStrategy::Yield,
        config::IdleStrategy::Backoff { spin_iterations, yield_iterations, max_park_us } => {
            IdleStrategy::Backoff {
                spins: spin_iterations,
                yields: yield_iterations,
                max_park: Duration::from_micros(max_park_us),
            }
        }
        config::IdleStrategy::Sleep { sleep_us } => {
            IdleStrategy::Sleep(Duration::from_micros(sleep_us))
        }
    }
}

/// Creates the runtime directory with mode 0700, or tightens an existing one we own.
fn secure_dir(dir: &Path) -> Result<(), DaemonError> {
    let err = |source| DaemonError::RuntimeDir { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    // The fallback lives in a shared /tmp: refuse a directory someone else made or a link.
    let meta = std::fs::symlink_metadata(dir).map_err(err)?;
    if !meta.is_dir() {
        return Err(err(std::io::Error::other("not a directory (a symlink or a file)")));
    }
    let me = rustix::process::geteuid().as_raw();
    if std::os::unix::fs::MetadataExt::uid(&meta) != me {
        return Err(err(std::io::Error::other(format!(
            "owned by uid {}, not by this user (uid {me})",
            std::os::unix::fs::MetadataExt::uid(&meta)
        ))));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Binds the control socket. Called under the instance lock, so a socket file already there
/// is a crashed daemon's: it is removed first (anything else at that path is an error).
fn bind_control(path: &Path) -> Result<(UnixListener, OwnedFile), DaemonError> {
    let err = |source| DaemonError::Bind { path: path.to_owned(), source };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path).map_err(err)?;
        }
        Ok(_) => {
            return Err(err(std::io::Error::other("the path exists and is not a socket")));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    let owned = OwnedFile::of(path).map_err(err)?;
    Ok((listener, owned))
}

/// Says so when the runtime directory is not on a tmpfs: the counters file is written at the
/// publish interval, and on a disk that means writeback I/O under the lanes.
fn warn_if_not_tmpfs(dir: &Path) {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    match rustix::fs::statfs(dir) {
        Ok(fs) if fs.f_type == TMPFS_MAGIC => {}
        Ok(_) => tracing::warn!(
            dir = %dir.display(),
            "the runtime directory is not on a tmpfs; set XDG_RUNTIME_DIR or runtime.dir to one (e.g. /dev/shm or /run)"
        ),
        Err(e) => tracing::debug!("cannot statfs the runtime directory: {e}"),
    }
}

/// Every counter the daemon registers, by id.
struct Ids {
    accepted: crate::metrics::CounterId,
    refused: crate::metrics::CounterId,
    closed: [crate::metrics::CounterId; 5],
    open: crate::metrics::CounterId,
    accept_errors: crate::metrics::CounterId,
    buffered: crate::metrics::CounterId,
    requests: [crate::metrics::CounterId; 3],
    errors: Vec<crate::metrics::CounterId>,
    lanes: Vec<[crate::metrics::CounterId; 7]>,
    uptime: crate::metrics::CounterId,
    reactor: [crate::metrics::CounterId; 2],
}

impl Ids {
    fn register(r: &mut Registry, config: &Config) -> Result<Self, MetricsError> {
        let c = |r: &mut Registry, name: &str, labels: &[(&str, &str)], help: &str| {
            r.register(CounterSpec { name, labels, help, kind: CounterKind::Counter })
        };
        let g = |r: &mut Registry, name: &str, labels: &[(&str, &str)], help: &str| {
            r.register(CounterSpec { name, labels, help, kind: CounterKind::Gauge })
        };
        const CONN: &str = "Control connections by event.";
        let accepted = c(r, "corelane_control_connections_total", &[("event", "accepted")], CONN)?;
        let refused = c(r, "corelane_control_connections_total", &[("event", "refused")], CONN)?;
        const CLOSED: &str = "Control connections closed, by reason.";
        let mut closed = Vec::new();
        for reason in crate::runtime::CloseReason::ALL {
            let labels = [("reason", reason.name())];
            closed.push(c(r, "corelane_control_connections_closed_total", &labels, CLOSED)?);
        }
        let closed: [_; 5] = closed.try_into().expect("one counter per CloseReason");
        let open = g(r, "corelane_control_connections_open", &[], "Control connections open now.")?;
        let buffered = g(
            r,
            "corelane_control_buffered_bytes",
            &[],
            "Bytes the control connections buffer (unsent replies, partial requests).",
        )?;
        let accept_errors = c(
            r,
            "corelane_control_accept_errors_total",
            &[],
            "Accepts of the control socket that failed (EMFILE, ...); accepting resumes.",
        )?;
        const REQ: &str = "Control requests answered, by type.";
        let requests = [
            c(r, "corelane_control_requests_total", &[("type", "ping")], REQ)?,
            c(r, "corelane_control_requests_total", &[("type", "status")], REQ)?,
            c(r, "corelane_control_requests_total", &[("type", "config")], REQ)?,
        ];
        let errors = ERROR_KINDS
            .iter()
            .map(|kind| {
                c(
                    r,
                    "corelane_control_errors_total",
                    &[("kind", kind)],
                    "Control protocol errors answered, by kind.",
                )
            })
            .collect::<Result<_, _>>()?;
        let mut lanes = Vec::new();
        for lane in &config.lanes {
            let l = lane.name.as_str();
            lanes.push([
                c(r, "corelane_lane_passes_total", &[("lane", l)], "Loop passes of the lane.")?,
                c(
                    r,
                    "corelane_lane_work_total",
                    &[("lane", l)],
                    "Work items done by the lane's agents.",
                )?,
                g(r, "corelane_lane_idle_ns", &[("lane", l)], "Time the lane spent idling, ns.")?,
                g(
                    r,
                    "corelane_lane_pass_ns",
                    &[("lane", l), ("quantile", "0.5")],
                    "Duration of a lane pass, ns.",
                )?,
                g(
                    r,
                    "corelane_lane_pass_ns",
                    &[("lane", l), ("quantile", "0.99")],
                    "Duration of a lane pass, ns.",
                )?,
                g(
                    r,
                    "corelane_lane_pass_ns",
                    &[("lane", l), ("quantile", "0.999")],
                    "Duration of a lane pass, ns.",
                )?,
                g(
                    r,
                    "corelane_lane_pass_ns",
                    &[("lane", l), ("quantile", "1")],
                    "Duration of a lane pass, ns.",
                )?,
            ]);
        }
        let uptime = g(r, "corelane_uptime_seconds", &[], "Seconds since the daemon started.")?;
        const REACTOR: &str = "Reactor backend the lanes run (1 = this one).";
        let reactor = [
            g(r, "corelane_reactor", &[("kind", "io_uring")], REACTOR)?,
            g(r, "corelane_reactor", &[("kind", "poll")], REACTOR)?,
        ];
        Ok(Self {
            accepted,
            refused,
            closed,
            open,
            accept_errors,
            buffered,
            requests,
            errors,
            lanes,
            uptime,
            reactor,
        })
    }

    fn control(&self, f: &CountersFile) -> ControlCounters {
        ControlCounters {
            conns: crate::runtime::ConnCounters {
                accepted: f.counter(self.accepted),
                refused: f.counter(self.refused),
                open: f.counter(self.open),
                closed: self.closed.map(|id| f.counter(id)),
            },
            accept_errors: f.counter(self.accept_errors),
            buffered: f.counter(self.buffered),
            requests: self.requests.map(|id| f.counter(id)),
            errors: self.errors.iter().map(|&id| f.counter(id)).collect(),
        }
    }

    fn lanes(&self, f: &CountersFile) -> Vec<LaneGauges> {
        self.lanes
            .iter()
            .map(|ids| LaneGauges {
                passes: f.counter(ids[0]),
                work: f.counter(ids[1]),
                idle_ns: f.counter(ids[2]),
                pass_ns: [
                    f.counter(ids[3]),
                    f.counter(ids[4]),
                    f.counter(ids[5]),
                    f.counter(ids[6]),
                ],
            })
            .collect()
    }
}
