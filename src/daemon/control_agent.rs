//! The control socket as a lane agent: accepts connections on the lane's reactor and runs one
//! sans-IO [`Session`] per connection.

use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::proto::{LaneStatus, ServiceStatus, Status};
use crate::control::{Handler, Session, SessionConfig, Verdict, MSG_CONFIG, MSG_PING, MSG_STATUS};
use crate::metrics::Counter;
use crate::runtime::{Agent, Board, Completion, Ctx};

/// How often idle and slow connections are checked.
const TICK: Duration = Duration::from_millis(10);

/// Counters the control agent writes.
#[derive(Clone, Debug)]
pub struct ControlCounters {
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections refused at `max_connections`.
    pub refused: Counter,
    /// Connections closed by the daemon (protocol errors, timeouts, slow readers).
    pub closed_by_daemon: Counter,
    /// Open connections (gauge).
    pub open: Counter,
    /// Accepts of the control socket that failed (EMFILE and the like); the listener goes on.
    pub accept_errors: Counter,
    /// Requests answered, by type: ping, status, config (indexed 0, 1, 2).
    pub requests: [Counter; 3],
    /// Errors answered, by wire error kind (same order as [`ERROR_KINDS`]).
    pub errors: Vec<Counter>,
}

/// Error kinds counted, in the order of [`ControlCounters::errors`].
pub const ERROR_KINDS: &[&str] = &[
    "bad_magic",
    "version_mismatch",
    "crc",
    "too_large",
    "unknown_msg_type",
    "unsupported_flags",
    "too_many_crc_errors",
    crate::control::session::KIND_BAD_REQUEST_BODY,
];

/// The control agent.
pub struct ControlAgent {
    path: PathBuf,
    listener: Option<UnixListener>,
    session_config: SessionConfig,
    max_connections: usize,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    next_tick: Instant,
    handler: StatusHandler,
}

struct Conn {
    session: Session,
    /// Set when the session is done: the connection closes once its last reply is written,
    /// or at this deadline if the peer does not read it.
    closing: Option<Instant>,
}

impl std::fmt::Debug for ControlAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlAgent")
            .field("path", &self.path)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl ControlAgent {
    /// An agent serving `listener` (already bound at `path`; the daemon removes the file).
    pub fn new(
        path: PathBuf,
        listener: UnixListener,
        session_config: SessionConfig,
        max_connections: usize,
        handler: StatusHandler,
    ) -> Self {
        Self {
            path,
            listener: Some(listener),
            session_config,
            max_connections,
            conns: HashMap::new(),
            next_id: 1,
            next_tick: Instant::now(),
            handler,
        }
    }

    /// Queues the session's output and closes the connection if the session is done with it or
    /// its peer stopped reading.
    fn flush(&mut self, ctx: &mut Ctx<'_>, id: u64, verdict: Verdict) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let out = conn.session.output();
        if !out.is_empty() {
            let n = out.len();
            if ctx.send(id, out).is_err() {
                self.drop_conn(ctx, id);
                return;
            }
            conn.session.consume_output(n);
        }
        let backlog = ctx.pending(id);
        if verdict == Verdict::Close || backlog > self.session_config.max_pending_output {
            conn.closing = Some(ctx.now + self.session_config.header_timeout);
            if backlog == 0 || verdict != Verdict::Close {
                // Nothing left to say, or a peer that does not read: close now.
                self.handler.counters.closed_by_daemon.inc();
                self.drop_conn(ctx, id);
            }
            // Otherwise close once the error reply is written (Completion::Sent).
        }
    }

    fn drop_conn(&mut self, ctx: &mut Ctx<'_>, id: u64) {
        if self.conns.remove(&id).is_some() {
            ctx.close(id);
            self.handler.counters.open.set(self.conns.len() as u64);
        }
    }
}

impl Agent for ControlAgent {
    fn name(&self) -> &str {
        "control"
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
        let listener = self.listener.take().expect("on_start runs once");
        ctx.listen(0, listener)?;
        tracing::info!(socket = %self.path.display(), "control socket listening");
        Ok(())
    }

    fn on_completion(&mut self, ctx: &mut Ctx<'_>, completion: Completion) {
        match completion {
            Completion::Accepted { fd, .. } => {
                if self.conns.len() >= self.max_connections {
                    self.handler.counters.refused.inc();
                    return; // dropping fd refuses the connection
                }
                let id = self.next_id;
                self.next_id += 1;
                if ctx.open(id, fd).is_ok() {
                    let session = Session::new(self.session_config.clone(), ctx.now);
                    self.conns.insert(id, Conn { session, closing: None });
                    self.handler.counters.accepted.inc();
                    self.handler.counters.open.set(self.conns.len() as u64);
                }
            }
            Completion::Received { token, buf } => {
                let id = Ctx::local(token);
                let Some(conn) = self.conns.get_mut(&id) else { return };
                if conn.closing.is_some() {
                    return;
                }
                let now = ctx.now;
                let data = ctx.reactor().data(&buf);
                let verdict = conn.session.on_bytes(data, now, &mut self.handler);
                self.flush(ctx, id, verdict);
            }
            Completion::Sent { token, .. } => {
                let id = Ctx::local(token);
                let done = self
                    .conns
                    .get(&id)
                    .is_some_and(|c| c.closing.is_some() && ctx.pending(id) == 0);
                if done {
                    self.handler.counters.closed_by_daemon.inc();
                    self.drop_conn(ctx, id);
                }
            }
            Completion::Closed { token } | Completion::Failed { token, .. } => {
                let id = Ctx::local(token);
                // The listener is never closed here: its accept errors are the reactor's to
                // count and retry (see `do_work`); one error must not end the control socket.
                if id != 0 {
                    self.drop_conn(ctx, id);
                }
            }
            Completion::Connected { .. }
            | Completion::Readable { .. }
            | Completion::Timer { .. } => {}
        }
    }

    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
        if ctx.now < self.next_tick {
            return 0;
        }
        self.next_tick = ctx.now + TICK;
        if let Ok(listener) = ctx.token(0) {
            self.handler.counters.accept_errors.set(ctx.reactor().accept_errors(listener));
        }
        let now = ctx.now;
        let mut expired = Vec::new();
        let mut lingering = Vec::new();
        for (&id, conn) in &mut self.conns {
            match conn.closing {
                // A peer that does not read its last reply: give up on the reply.
                Some(deadline) if now >= deadline => lingering.push(id),
                Some(_) => {}
                None if conn.session.on_tick(now) == Verdict::Close => expired.push(id),
                None => {}
            }
        }
        let n = expired.len() + lingering.len();
        for id in expired {
            self.flush(ctx, id, Verdict::Close);
        }
        for id in lingering {
            self.handler.counters.closed_by_daemon.inc();
            self.drop_conn(ctx, id);
        }
        n
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.drop_conn(ctx, id);
        }
        // The daemon removes the socket file once every lane has stopped.
        ctx.close(0);
    }
}

/// Answers status and config requests from the runtime's [`Board`].
pub struct StatusHandler {
    board: Arc<Board>,
    started: Instant,
    config_toml: String,
    services: Arc<super::service::StatusBoard>,
    counters: ControlCounters,
}

impl std::fmt::Debug for StatusHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusHandler")
            .field("connections", &self.counters.open.get())
            .finish_non_exhaustive()
    }
}

impl StatusHandler {
    /// A handler reporting `board`, the effective config text, and `services` (name, state).
    pub fn new(
        board: Arc<Board>,
        config_toml: String,
        services: Arc<super::service::StatusBoard>,
        counters: ControlCounters,
    ) -> Self {
        Self { board, started: Instant::now(), config_toml, services, counters }
    }
}

impl Handler for StatusHandler {
    fn now_ns(&self) -> u64 {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    fn status(&mut self) -> Status {
        let lanes = self
            .board
            .lanes()
            .into_iter()
            .map(|l| LaneStatus {
                name: l.name,
                core: l.core.map_or(-1, |c| c as i32),
                idle: l.idle.to_owned(),
                agents: l.agents,
                passes: l.passes,
                work: l.work,
                idle_ns: l.idle_ns,
                max_pass_ns: l.max_pass_ns,
                p99_pass_ns: l.p99_pass_ns,
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            reactor: self.board.reactor().map_or("starting", |r| r.name()).to_owned(),
            lanes,
            services: self
                .services
                .snapshot()
                .into_iter()
                .map(|(name, state, details)| ServiceStatus {
                    name,
                    state,
                    details: details
                        .into_iter()
                        .map(|(key, value)| crate::control::proto::Detail { key, value })
                        .collect(),
                })
                .collect(),
            connections: self.counters.open.get() as u32,
        }
    }

    fn config_toml(&mut self) -> String {
        self.config_toml.clone()
    }

    fn on_answered(&mut self, msg_type: u16) {
        let index = match msg_type {
            MSG_PING => 0,
            MSG_STATUS => 1,
            MSG_CONFIG => 2,
            _ => return,
        };
        self.counters.requests[index].inc();
    }

    fn on_error(&mut self, kind: &'static str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.counters.errors[i].inc();
        }
    }
}
