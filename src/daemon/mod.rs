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
mod control_service;
mod metrics_agent;
pub mod service;
pub mod services;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use control_agent::{
    ControlAgent, ControlCounters, ControlHandler, ControlSettings, RouteSlot, ERROR_KINDS,
    MAX_PENDING_PER_ROUTE,
};
pub use control_service::{ControlService, CONTROL};
pub use metrics_agent::{LaneGauges, MetricsAgent, MetricsService, MAX_WATCHERS, METRICS};
pub use service::{
    Build, CliContext, Prepare, Prepared, RequestSpec, Service, StatusBoard, StatusCell,
};

use crate::config::{self, Config};
use crate::files::{InstanceLock, LockError, OwnedFile};
use crate::metrics::{CountersFile, MetricsError, MetricsServer, Registry};
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
    /// Two services claim one control `msg_type`.
    #[error(transparent)]
    DuplicateRoute(#[from] crate::control::route::DuplicateRoute),
    /// A service declared a control request and built no route for it.
    #[error("service '{service}' declares control request {msg_type} ('{name}') but serves it on no lane (is its agent in a [[lanes]] entry?)")]
    Unserved {
        /// The service.
        service: &'static str,
        /// The request's msg_type.
        msg_type: u16,
        /// Its name.
        name: &'static str,
    },
    /// A lane's waker (its eventfd) could not be made.
    #[error("lane '{lane}': cannot create its waker (eventfd): {source}")]
    Waker {
        /// The lane.
        lane: String,
        /// Why.
        source: std::io::Error,
    },
    /// A lane died while the daemon ran (an agent panicked, a reactor failed): the daemon
    /// stopped every lane and exits non-zero.
    #[error(transparent)]
    LaneDied(#[from] crate::runtime::LaneFailure),
    /// A service could not start (its own checks: config it validates itself, files).
    #[error("service '{service}': {message}")]
    Service {
        /// The service.
        service: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    runtime: Runtime,
    /// `runtime.shutdown_timeout_ms`: how long `stop` waits for the lanes.
    shutdown_timeout: Duration,
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

        // Everything that can fail without side effects, before any socket or file exists:
        // every enabled service's checks and counter registrations, the /metrics address.
        let board = Board::new();
        let mut registry = Registry::new();
        let statuses = Arc::new(StatusBoard::default());
        let mut prepared = Vec::new();
        for service in services::SERVICES {
            let state = if !service.in_build() {
                "not in this build"
            } else if service.enabled(config) {
                "running"
            } else {
                "disabled"
            };
            statuses.declare(service.name(), state);
            if service.enabled(config) {
                prepared.push(service.prepare(&mut Prepare::new(config, &dir, &mut registry))?);
            }
        }
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
        let counters = match create_counters(registry, config, &config.counters_path(env)) {
            Ok(c) => c,
            Err(e) => {
                let _ = socket.remove();
                return Err(e.into());
            }
        };
        // A failed start removes what it made (each use is followed by a return).
        macro_rules! undo {
            () => {{
                let _ = socket.remove();
                let _ = counters.remove();
            }};
        }

        // Phase 2: every lane's waker, then every service's agents, placed on their lanes.
        let mut wakers = HashMap::new();
        let mut lane_wakers = Vec::new();
        for lane in &config.lanes {
            let waker = match crate::runtime::LaneWaker::new() {
                Ok(w) => w,
                Err(source) => {
                    undo!();
                    return Err(DaemonError::Waker { lane: lane.name.clone(), source });
                }
            };
            for agent in &lane.agents {
                wakers.insert(agent.clone(), waker.clone());
            }
            lane_wakers.push(waker);
        }
        let config_toml =
            config.to_toml_string().unwrap_or_else(|e| format!("# cannot render: {e}"));
        let mut built: HashMap<&'static str, Box<dyn Agent>> = HashMap::new();
        let route_slot = RouteSlot::default();
        {
            let mut cx = Build {
                config,
                board: &board,
                counters: &counters,
                config_toml: &config_toml,
                control_listener: Some(listener),
                control_socket: socket.path(),
                wakers: &wakers,
                statuses: &statuses,
                routes: crate::control::Routes::new(),
                route_slot: &route_slot,
            };
            for service in prepared {
                match service.build(&mut cx) {
                    Ok(agents) => built.extend(agents),
                    Err(e) => {
                        undo!();
                        return Err(e);
                    }
                }
            }
            if cx.control_listener.is_some() {
                tracing::warn!("no control agent was built: the control socket is not served");
            }
            // Every request a service declared must have a route (the control service's own
            // ping, status and config are built in).
            let served = cx.routes.names();
            for service in services::SERVICES.iter().filter(|s| s.enabled(config)) {
                for spec in service.requests() {
                    let builtin = service.name() == "control";
                    if !builtin && !served.iter().any(|(t, _)| *t == spec.msg_type) {
                        undo!();
                        return Err(DaemonError::Unserved {
                            service: service.name(),
                            msg_type: spec.msg_type,
                            name: spec.name,
                        });
                    }
                }
            }
            *route_slot.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(std::mem::take(&mut cx.routes));
        }
        let mut specs = Vec::new();
        for (lane, waker) in config.lanes.iter().zip(lane_wakers) {
            // Config validation placed every agent of an enabled service on exactly one lane;
            // agents of disabled services are skipped.
            let agents: Vec<Box<dyn Agent>> =
                lane.agents.iter().filter_map(|a| built.remove(a.as_str())).collect();
            specs.push(LaneSpec {
                name: lane.name.clone(),
                core: lane.core,
                idle: idle(&lane.idle),
                agents,
                waker: Some(waker),
            });
        }
        for name in built.keys() {
            tracing::warn!(agent = name, "no lane hosts this agent; it does not run");
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
                undo!();
                return Err(e.into());
            }
        };

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
            shutdown_timeout: Duration::from_millis(config.runtime.shutdown_timeout_ms),
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
    ///
    /// A lane that dies sets the flag too (after logging its cause): then this returns
    /// [`DaemonError::LaneDied`].
    pub fn wait(self) -> Result<(), DaemonError> {
        while !self.shutdown.is_requested() {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.stop()
    }

    /// Stops every lane (waiting at most `runtime.shutdown_timeout_ms` for them), the metrics
    /// endpoint, and removes the control socket and the counters file. Returns the lane that
    /// died, if one did.
    pub fn stop(mut self) -> Result<(), DaemonError> {
        let started = Instant::now();
        self.runtime.shutdown();
        let joined = self.runtime.join_timeout(self.shutdown_timeout);
        if !joined.stuck.is_empty() {
            tracing::error!(
                lanes = ?joined.stuck,
                timeout_ms = self.shutdown_timeout.as_millis() as u64,
                "lanes did not stop within runtime.shutdown_timeout_ms; exiting without them"
            );
        }
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
        match joined.failure {
            Some(failure) => Err(failure.into()),
            None => Ok(()),
        }
    }
}

/// The daemon's counters file (in memory when metrics are off), beaten once at creation: not
/// at the metrics agent's first publish, so that a daemon that dies or hangs while its services
/// start leaves a file that goes stale (a file never beaten reads as having no publisher, which
/// a reader cannot tell from a live daemon).
fn create_counters(
    registry: Registry,
    config: &Config,
    path: &std::path::Path,
) -> Result<CountersFile, MetricsError> {
    let counters = if config.metrics.enabled {
        registry.create(path)?
    } else {
        registry.create_in_memory()?
    };
    counters.heartbeat().beat(Duration::from_millis(config.metrics.publish_interval_ms.max(1)));
    Ok(counters)
}

/// `corelane run`: start, wait for SIGINT/SIGTERM, stop.
pub fn run(config: &Config) -> Result<(), DaemonError> {
    let shutdown = Shutdown::new();
    shutdown.on_signals().map_err(DaemonError::Signals)?;
    let daemon = Daemon::start(config, &|k| std::env::var(k).ok(), shutdown)?;
    daemon.wait()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{CountersReader, Liveness};

    #[test]
    fn a_daemon_that_dies_before_its_first_publish_leaves_a_stale_file() {
        let dir = std::env::temp_dir().join(format!("corelane-never-beat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("counters");
        let mut config = Config::default();
        config.metrics.enabled = true;
        config.metrics.publish_interval_ms = 100;
        let _file = create_counters(Registry::new(), &config, &path).unwrap();
        // Nothing publishes (the metrics agent never ran): an hour later the file is stale.
        let reader = CountersReader::open(&path).unwrap();
        let later = reader.info().start_monotonic_ns + 3_600_000_000_000;
        let verdict = reader.liveness(later);
        assert!(matches!(verdict, Liveness::Stale { .. }), "an hour without a beat: {verdict}");
        assert_eq!(reader.liveness(crate::metrics::monotonic_ns()), Liveness::Live);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
