//! A thread-safe pool of control [`Client`]s.
//!
//! ```no_run
//! use std::time::Duration;
//! use corelane::control::{Client, ConnectionPool};
//!
//! let pool = ConnectionPool::builder()
//!     .max_connections(8)
//!     .health_check_interval(Duration::from_secs(30))
//!     .reuse_threshold(0.95)
//!     .client(Client::builder().timeout(Duration::from_secs(1)))
//!     .build("/run/corelane/control.sock")?;
//! let mut client = pool.get()?;
//! client.ping()?;
//! drop(client); // back to the pool
//! assert!(pool.stats().reuse_ratio() <= 1.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`ConnectionPool::get`] hands out the most recently returned idle connection (the one most
//! likely alive), or connects a new one while fewer than `max_connections` exist, or fails with
//! [`PoolError::Exhausted`]. A connection that sat idle for `health_check_interval` or longer is
//! pinged first and replaced if the ping fails. A [`PooledClient`] goes back to the pool when
//! dropped, unless it broke (closed by the daemon, framing error).
//!
//! This is the client side: a `Mutex` guards the pool's state, held only to take or put back a
//! connection, never across a socket call.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::client::{Client, ClientBuilder, ClientError};
use super::proto::PoolReport;
use super::MSG_POOL_REPORT;

/// Errors of [`ConnectionPool`] operations.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every one of the `max_connections` connections is checked out.
    #[error("pool exhausted: expected a free connection, got all {max_connections} in use")]
    Exhausted {
        /// The pool's limit.
        max_connections: usize,
    },
    /// A builder setting is out of range.
    #[error("invalid pool setting {setting}: expected {expected}, got {got}")]
    InvalidSetting {
        /// Builder method name.
        setting: &'static str,
        /// What is accepted.
        expected: &'static str,
        /// The value given.
        got: String,
    },
    /// Connecting a new client failed.
    #[error("pool connect: {0}")]
    Connect(#[from] ClientError),
}

/// Settings for a [`ConnectionPool`].
#[derive(Debug, Clone)]
pub struct ConnectionPoolBuilder {
    max_connections: usize,
    health_check_interval: Duration,
    reuse_threshold: f64,
    client: ClientBuilder,
}

impl Default for ConnectionPoolBuilder {
    /// 8 connections, 30 s health check interval, 0.95 reuse threshold, default clients.
    fn default() -> Self {
        Self {
            max_connections: 8,
            health_check_interval: Duration::from_secs(30),
            reuse_threshold: 0.95,
            client: ClientBuilder::default(),
        }
    }
}

impl ConnectionPoolBuilder {
    /// Most connections open at once, idle or checked out (at least 1; default 8).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// A connection idle this long or longer is pinged before reuse (default 30 s; zero pings
    /// on every reuse).
    pub fn health_check_interval(mut self, interval: Duration) -> Self {
        self.health_check_interval = interval;
        self
    }

    /// The reuse ratio the pool is expected to reach, in `0.0..=1.0` (default 0.95, the seed's
    /// target). It does not change behaviour: [`PoolStats::meets_reuse_threshold`] compares the
    /// measured ratio with it, for metrics and alerts.
    pub fn reuse_threshold(mut self, ratio: f64) -> Self {
        self.reuse_threshold = ratio;
        self
    }

    /// Template for every connection the pool opens (protocol version, timeout, body limit).
    pub fn client(mut self, template: ClientBuilder) -> Self {
        self.client = template;
        self
    }

    /// Checks the settings and opens one connection to `path`, so a wrong path or a daemon that
    /// is down fails here rather than at the first [`ConnectionPool::get`].
    pub fn build(self, path: impl AsRef<Path>) -> Result<ConnectionPool, PoolError> {
        if self.max_connections == 0 {
            return Err(PoolError::InvalidSetting {
                setting: "max_connections",
                expected: "at least 1",
                got: "0".to_owned(),
            });
        }
        if !(0.0..=1.0).contains(&self.reuse_threshold) {
            return Err(PoolError::InvalidSetting {
                setting: "reuse_threshold",
                expected: "a ratio in 0.0..=1.0",
                got: self.reuse_threshold.to_string(),
            });
        }
        let path = path.as_ref().to_owned();
        let first = self.client.connect(&path)?;
        let state = State {
            idle: vec![Idle { client: first, since: Instant::now() }],
            created: 1,
            ..State::default()
        };
        Ok(ConnectionPool {
            shared: Arc::new(Shared { path, settings: self, state: Mutex::new(state) }),
        })
    }
}

/// Counters of a [`ConnectionPool`], from [`ConnectionPool::stats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolStats {
    /// Connections opened (including the one `build` opens, and replacements).
    pub created: u64,
    /// Checkouts served by an already open connection.
    pub reused: u64,
    /// Pings sent to connections idle for `health_check_interval` or longer.
    pub health_checks: u64,
    /// Health checks that failed (the connection was dropped and replaced).
    pub failed_health_checks: u64,
    /// Connections waiting in the pool.
    pub idle: usize,
    /// Connections checked out.
    pub in_use: usize,
    /// The configured [`ConnectionPoolBuilder::reuse_threshold`].
    pub reuse_threshold: f64,
}

impl PoolStats {
    /// `reused / (created + reused)`: the share of connections handed out that did not need a
    /// new socket; 1.0 before any connection exists.
    pub fn reuse_ratio(&self) -> f64 {
        let total = self.created + self.reused;
        if total == 0 {
            1.0
        } else {
            // u64 -> f64 loses precision only past 2^53 checkouts, irrelevant for a ratio.
            self.reused as f64 / total as f64
        }
    }

    /// Whether [`PoolStats::reuse_ratio`] is at or above the configured threshold.
    pub fn meets_reuse_threshold(&self) -> bool {
        self.reuse_ratio() >= self.reuse_threshold
    }
}

/// A thread-safe pool of [`Client`]s to one control socket; clones share the pool.
#[derive(Debug, Clone)]
pub struct ConnectionPool {
    shared: Arc<Shared>,
}

impl ConnectionPool {
    /// Default settings, to adjust and [`ConnectionPoolBuilder::build`].
    pub fn builder() -> ConnectionPoolBuilder {
        ConnectionPoolBuilder::default()
    }

    /// Checks out a connection: an idle one (pinged first if idle for the health check interval
    /// or longer, replaced if the ping fails), or a new one while under `max_connections`.
    pub fn get(&self) -> Result<PooledClient, PoolError> {
        let shared = &self.shared;
        let interval = shared.settings.health_check_interval;
        let mut state = shared.lock();
        // Nothing idle, and every connection the limit allows is out.
        if state.idle.is_empty() && state.in_use >= shared.settings.max_connections {
            return Err(PoolError::Exhausted { max_connections: shared.settings.max_connections });
        }
        // Reserve a slot: from here this checkout counts against max_connections, whether it ends
        // with a reused connection, a new one, or an error that releases the slot.
        state.in_use += 1;
        while let Some(idle) = state.idle.pop() {
            let mut client = idle.client;
            if idle.since.elapsed() < interval {
                state.reused += 1;
                return Ok(PooledClient::new(client, shared));
            }
            state.health_checks += 1;
            drop(state);
            let alive = client.ping();
            state = shared.lock();
            match alive {
                Ok(_) => {
                    state.reused += 1;
                    return Ok(PooledClient::new(client, shared));
                }
                Err(error) => {
                    tracing::debug!(%error, "connection pool: health check failed, replacing");
                    state.failed_health_checks += 1;
                }
            }
        }
        drop(state);
        let connected = shared.settings.client.connect(&shared.path);
        let mut state = shared.lock();
        match connected {
            Ok(client) => {
                state.created += 1;
                Ok(PooledClient::new(client, shared))
            }
            Err(error) => {
                state.in_use -= 1;
                Err(error.into())
            }
        }
    }

    /// A snapshot of the pool's counters.
    pub fn stats(&self) -> PoolStats {
        let state = self.shared.lock();
        PoolStats {
            created: state.created,
            reused: state.reused,
            health_checks: state.health_checks,
            failed_health_checks: state.failed_health_checks,
            idle: state.idle.len(),
            in_use: state.in_use,
            reuse_threshold: self.shared.settings.reuse_threshold,
        }
    }

    /// The socket path the pool connects to.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

/// A checked-out [`Client`]; derefs to it and goes back to the pool when dropped (unless broken).
#[derive(Debug)]
pub struct PooledClient {
    /// Always `Some` until `drop` takes it.
    client: Option<Client>,
    shared: Arc<Shared>,
}

impl PooledClient {
    fn new(client: Client, shared: &Arc<Shared>) -> Self {
        Self { client: Some(client), shared: Arc::clone(shared) }
    }

    /// Closes this connection instead of returning it to the pool (its slot is freed).
    pub fn discard(mut self) {
        self.client = None;
    }
}

impl Deref for PooledClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        // Only Drop and discard (which consumes self) take the client out.
        self.client.as_ref().expect("a pooled client holds its client until dropped")
    }
}

impl DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut Client {
        // Only Drop and discard (which consumes self) take the client out.
        self.client.as_mut().expect("a pooled client holds its client until dropped")
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        let Some(mut client) = self.client.take().filter(|c| !c.is_broken()) else {
            self.shared.lock().in_use -= 1;
            return;
        };
        // The reuse counts go to the daemon (at most once a second), outside the lock.
        let report = self.shared.lock().report(false);
        if let Some(report) = report {
            let _ = client.notify(MSG_POOL_REPORT, &report);
        }
        let mut state = self.shared.lock();
        state.in_use -= 1;
        if !client.is_broken() {
            state.idle.push(Idle { client, since: Instant::now() });
        }
    }
}

impl Drop for Shared {
    /// The last report, on an idle connection, when the pool and all its clients are gone.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(report) = state.report(true) {
            if let Some(idle) = state.idle.last_mut() {
                let _ = idle.client.notify(MSG_POOL_REPORT, &report);
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    settings: ConnectionPoolBuilder,
    state: Mutex<State>,
}

impl Shared {
    /// The state, even after a panic elsewhere: every update to it is a single counter step or
    /// a push/pop, so it is consistent whenever the lock is free.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Default)]
struct State {
    /// Idle connections, most recently returned last.
    idle: Vec<Idle>,
    /// Checked out, or reserved by a `get` in progress.
    in_use: usize,
    created: u64,
    reused: u64,
    health_checks: u64,
    failed_health_checks: u64,
    /// The counts already reported to the daemon, and when.
    reported: Reported,
}

/// What a pool told the daemon last ([`PoolReport`]s carry the difference).
#[derive(Debug, Default, Clone, Copy)]
struct Reported {
    reused: u64,
    created: u64,
    health_checks: u64,
    failed_health_checks: u64,
    at: Option<Instant>,
}

/// Shortest time between two reports of one pool.
const REPORT_EVERY: Duration = Duration::from_secs(1);

impl State {
    /// The counts since the last report, if there are any and `force` or a report is due;
    /// marks them reported.
    fn report(&mut self, force: bool) -> Option<PoolReport> {
        let r = self.reported;
        let due = force || r.at.is_none_or(|at| at.elapsed() >= REPORT_EVERY);
        let report = PoolReport {
            reused: self.reused - r.reused,
            connected: self.created - r.created,
            health_checks: self.health_checks - r.health_checks,
            failed_health_checks: self.failed_health_checks - r.failed_health_checks,
        };
        if !due || report == PoolReport::default() {
            return None;
        }
        self.reported = Reported {
            reused: self.reused,
            created: self.created,
            health_checks: self.health_checks,
            failed_health_checks: self.failed_health_checks,
            at: Some(Instant::now()),
        };
        Some(report)
    }
}

#[derive(Debug)]
struct Idle {
    client: Client,
    since: Instant,
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;
    use crate::control::test_server::{temp_dir, TestServer};

    fn pool(server: &TestServer, max: usize, interval: Duration) -> ConnectionPool {
        ConnectionPool::builder()
            .max_connections(max)
            .health_check_interval(interval)
            .reuse_threshold(0.95)
            .client(Client::builder().timeout(Duration::from_secs(5)))
            .build(server.path())
            .unwrap()
    }

    #[test]
    fn sequential_gets_reuse_one_connection() {
        let server = TestServer::start();
        let pool = pool(&server, 4, Duration::from_secs(3600));
        for _ in 0..100 {
            let mut client = pool.get().unwrap();
            client.ping().unwrap();
        }
        let stats = pool.stats();
        assert_eq!(stats.created, 1);
        assert_eq!(stats.reused, 100);
        assert_eq!(stats.health_checks, 0);
        assert_eq!((stats.idle, stats.in_use), (1, 0));
        assert!(stats.reuse_ratio() >= 0.95, "{stats:?}");
        assert!(stats.meets_reuse_threshold());
        assert_eq!(server.accepted(), 1);
    }

    #[test]
    fn an_exhausted_pool_errors_until_a_client_comes_back() {
        let server = TestServer::start();
        let pool = pool(&server, 2, Duration::from_secs(3600));
        let a = pool.get().unwrap();
        let mut b = pool.get().unwrap();
        match pool.get() {
            Err(PoolError::Exhausted { max_connections }) => assert_eq!(max_connections, 2),
            other => panic!("expected exhausted, got {other:?}"),
        }
        assert_eq!(
            PoolError::Exhausted { max_connections: 2 }.to_string(),
            "pool exhausted: expected a free connection, got all 2 in use"
        );
        b.ping().unwrap();
        drop(a);
        let mut c = pool.get().unwrap();
        c.ping().unwrap();
        let stats = pool.stats();
        assert_eq!((stats.created, stats.reused, stats.in_use), (2, 2, 2));
    }

    #[test]
    fn a_dead_connection_is_replaced_after_a_failed_health_check() {
        let server = TestServer::start();
        // Interval zero: every reuse is health-checked.
        let pool = pool(&server, 2, Duration::ZERO);
        pool.get().unwrap().ping().unwrap();
        assert_eq!(pool.stats().health_checks, 1);

        server.kill_connections();
        let mut client = pool.get().unwrap();
        client.ping().unwrap();
        drop(client);

        let stats = pool.stats();
        assert_eq!(stats.health_checks, 2);
        assert_eq!(stats.failed_health_checks, 1);
        assert_eq!(stats.created, 2);
        assert_eq!((stats.idle, stats.in_use), (1, 0));
        assert_eq!(server.accepted(), 2);
    }

    #[test]
    fn a_connection_broken_in_use_is_not_returned() {
        let server = TestServer::start();
        let pool = pool(&server, 2, Duration::from_secs(3600));
        let mut client = pool.get().unwrap();
        client.ping().unwrap(); // the server has accepted it: there is something to kill
        server.kill_connections();
        let r = client.ping();
        assert!(matches!(r, Err(ClientError::Closed)), "{r:?}");
        drop(client);
        assert_eq!((pool.stats().idle, pool.stats().in_use), (0, 0));
        pool.get().unwrap().ping().unwrap();
        assert_eq!(pool.stats().created, 2);
    }

    #[test]
    fn discard_frees_the_slot() {
        let server = TestServer::start();
        let pool = pool(&server, 1, Duration::from_secs(3600));
        pool.get().unwrap().discard();
        assert_eq!((pool.stats().idle, pool.stats().in_use), (0, 0));
        pool.get().unwrap().ping().unwrap();
        assert_eq!(pool.stats().created, 2);
    }

    #[test]
    fn threads_share_the_pool() {
        let server = TestServer::start();
        let pool = pool(&server, 4, Duration::from_secs(3600));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let pool = pool.clone();
                thread::spawn(move || {
                    for _ in 0..50 {
                        let mut client = pool.get().unwrap();
                        client.ping().unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let stats = pool.stats();
        assert!(stats.created <= 4, "{stats:?}");
        assert_eq!(stats.created + stats.reused, 200 + 1);
        assert_eq!(stats.in_use, 0);
    }

    #[test]
    fn build_checks_settings_and_the_socket() {
        let server = TestServer::start();
        let err = ConnectionPool::builder().max_connections(0).build(server.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid pool setting max_connections: expected at least 1, got 0"
        );
        let err = ConnectionPool::builder().reuse_threshold(1.5).build(server.path()).unwrap_err();
        assert!(matches!(err, PoolError::InvalidSetting { .. }), "{err}");
        let dir = temp_dir("pool-nothing");
        let err = ConnectionPool::builder().build(dir.join("absent.sock")).unwrap_err();
        assert!(matches!(err, PoolError::Connect(ClientError::Connect { .. })), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
