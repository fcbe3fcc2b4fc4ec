//! The control socket as a lane agent: accepts connections into a [`ConnTable`] and runs one
//! sans-IO [`Session`] per connection.
//!
//! Time: each connection's lane timer is armed from its session's
//! [`poll_timeout`](Session::poll_timeout) (header and idle timeouts) and the table's write
//! deadline; nothing scans the connections. Memory: a session's output goes to the reactor in
//! one copy, or handed over without one when it is large ([`Session::take_output`]); the table
//! closes a peer that leaves its replies unread for `control.write_timeout_ms` or lets more
//! than `control.max_pending_output_bytes` pile up; and while all connections together buffer
//! more than `control.max_buffered_bytes`, requests are refused with
//! [`OverBudget`](crate::control::OverBudget)'s error instead of being answered.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::proto::{LaneStatus, ServiceStatus, Status};
use crate::control::{
    CloseCause, Handler, OverBudget, Session, SessionConfig, Verdict, MSG_CONFIG, MSG_PING,
    MSG_STATUS,
};
use crate::metrics::Counter;
use crate::runtime::{
    Agent, Board, CloseReason, Completion, ConnConfig, ConnCounters, ConnEvent, ConnId, ConnTable,
    Ctx,
};
use crate::wire::DecoderConfig;

/// The listener's agent-local id.
const LISTENER: u64 = 0;

/// Output at least this large is handed to the reactor as it is (no copy); smaller output is
/// copied into the reactor's buffers, so the session keeps reusing its own.
const OWNED_OUTPUT_BYTES: usize = 16 * 1024;

/// Counters the control agent writes.
#[derive(Clone, Debug)]
pub struct ControlCounters {
    /// Connections accepted, refused, open, and closed by reason (written by the table).
    pub conns: ConnCounters,
    /// Accepts of the control socket that failed (EMFILE and the like); the listener goes on.
    pub accept_errors: Counter,
    /// Bytes all connections buffer now (gauge): unsent replies and partial requests.
    pub buffered: Counter,
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
    crate::control::session::KIND_OVER_BUDGET,
];

/// The control agent's limits, from `[control]`.
#[derive(Clone, Debug)]
pub struct ControlSettings {
    /// Per session: decoder, header and idle timeouts, pending output.
    pub session: SessionConfig,
    /// The connection table: connections, pending output, write timeout.
    pub conns: ConnConfig,
    /// Bytes all connections may buffer before requests are refused.
    pub max_buffered_bytes: u64,
}

impl ControlSettings {
    /// The settings `[control]` describes.
    pub fn from_config(c: &crate::config::ControlConfig) -> Self {
        let max_pending_output = c.max_pending_output_bytes as usize;
        ControlSettings {
            session: SessionConfig {
                decoder: DecoderConfig {
                    max_body_bytes: c.max_body_bytes,
                    enable_legacy_support: c.enable_legacy_support,
                    crc_error_limit: c.crc_error_limit,
                },
                header_timeout: Duration::from_millis(c.header_timeout_ms),
                idle_timeout: (c.idle_timeout_ms > 0)
                    .then(|| Duration::from_millis(c.idle_timeout_ms)),
                max_pending_output,
            },
            conns: ConnConfig {
                max_connections: c.max_connections as usize,
                max_pending_output,
                write_timeout: Duration::from_millis(c.write_timeout_ms),
                // Sessions reassemble in their decoders; the table's rings stay unused.
                max_recv_buffer: 0,
            },
            max_buffered_bytes: c.max_buffered_bytes,
        }
    }
}

/// The control agent.
pub struct ControlAgent {
    path: PathBuf,
    listener: Option<UnixListener>,
    settings: ControlSettings,
    conns: ConnTable<Session>,
    handler: StatusHandler,
}

impl std::fmt::Debug for ControlAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlAgent")
            .field("path", &self.path)
            .field("conns", &self.conns)
            .finish_non_exhaustive()
    }
}

impl ControlAgent {
    /// An agent serving `listener` (already bound at `path`; the daemon removes the file).
    pub fn new(
        path: PathBuf,
        listener: UnixListener,
        settings: ControlSettings,
        handler: StatusHandler,
    ) -> Self {
        let conns = ConnTable::new(settings.conns).with_counters(handler.counters.conns.clone());
        Self { path, listener: Some(listener), settings, conns, handler }
    }

    fn accept(&mut self, ctx: &mut Ctx<'_>, fd: crate::runtime::Incoming) {
        let (config, now) = (&self.settings.session, ctx.now);
        match self.conns.accept(ctx, fd, |_| Session::new(config.clone(), now)) {
            Ok(id) => {
                let deadline = self.conns.get(id).and_then(Session::poll_timeout);
                self.conns.set_deadline(ctx, id, deadline);
            }
            Err(e) => tracing::debug!("control connection refused: {e}"),
        }
    }

    /// Refuses requests from now on if all connections together buffer more than the budget.
    fn check_budget(&mut self) {
        let (buffered, budget) = (self.conns.buffered() as u64, self.settings.max_buffered_bytes);
        self.handler.busy = (buffered > budget).then_some(OverBudget { buffered, budget });
    }

    /// After a call into the session: queues its output, reports what it buffers, arms its
    /// deadline, and closes the connection (after its last reply) if the session is done.
    fn after(&mut self, ctx: &mut Ctx<'_>, id: ConnId, verdict: Verdict) {
        let Some(session) = self.conns.get_mut(id) else { return };
        let out = session.output().len();
        if out >= OWNED_OUTPUT_BYTES {
            let output = session.take_output();
            if self.conns.send_owned(ctx, id, output).is_err() {
                return; // closed: over its limit, or the reactor refused
            }
        } else if out > 0 {
            match self.conns.send_from(ctx, id, Session::output) {
                Ok(n) => {
                    if let Some(session) = self.conns.get_mut(id) {
                        session.consume_output(n);
                    }
                }
                Err(_) => return,
            }
        }
        let Some(session) = self.conns.get(id) else { return };
        let (held, deadline, cause) =
            (session.buffered(), session.poll_timeout(), session.close_cause());
        self.conns.set_held(id, held);
        if verdict == Verdict::Close {
            let reason = match cause {
                Some(CloseCause::Protocol) | None => CloseReason::Protocol,
                Some(CloseCause::HeaderTimeout | CloseCause::IdleTimeout) => {
                    CloseReason::IdleTimeout
                }
                Some(CloseCause::Backlog) => CloseReason::Budget,
            };
            self.conns.close(ctx, id, reason);
        } else {
            self.conns.set_deadline(ctx, id, deadline);
        }
    }
}

impl Agent for ControlAgent {
    fn name(&self) -> &str {
        "control"
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
        let listener = self.listener.take().expect("on_start runs once");
        ctx.listen(LISTENER, listener)?;
        tracing::info!(socket = %self.path.display(), "control socket listening");
        Ok(())
    }

    fn on_completion(&mut self, ctx: &mut Ctx<'_>, completion: Completion) {
        match self.conns.event(ctx, completion) {
            ConnEvent::Received { id, buf } => {
                self.check_budget();
                let now = ctx.now;
                let Some(session) = self.conns.get_mut(id) else { return };
                let data = ctx.reactor().data(&buf);
                let verdict = session.on_bytes(data, now, &mut self.handler);
                self.after(ctx, id, verdict);
            }
            ConnEvent::Deadline { id } => {
                let now = ctx.now;
                let Some(session) = self.conns.get_mut(id) else { return };
                let verdict = session.on_tick(now);
                self.after(ctx, id, verdict);
            }
            // End of input: what the peer asked for is answered (sessions answer as bytes
            // arrive), so the connection closes once the answers are written.
            ConnEvent::PeerClosed { id } => self.conns.close(ctx, id, CloseReason::Peer),
            ConnEvent::Other(Completion::Accepted { fd, .. }) => self.accept(ctx, fd),
            // The listener never closes on an error: its accept errors are the reactor's to
            // count and retry (see `do_work`); one error must not end the control socket.
            ConnEvent::Other(_)
            | ConnEvent::Sent { .. }
            | ConnEvent::Closed { .. }
            | ConnEvent::Handled
            | ConnEvent::Stale => {}
        }
    }

    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
        // Two relaxed stores and a token lookup: bookkeeping, not work.
        if let Ok(listener) = ctx.token(LISTENER) {
            self.handler.counters.accept_errors.set(ctx.reactor().accept_errors(listener));
        }
        self.handler.counters.buffered.set(self.conns.buffered() as u64);
        0
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>) {
        self.conns.close_all(ctx);
        // The daemon removes the socket file once every lane has stopped.
        ctx.close(LISTENER);
    }
}

/// Answers status and config requests from the runtime's [`Board`].
pub struct StatusHandler {
    board: Arc<Board>,
    started: Instant,
    config_toml: String,
    services: Arc<super::service::StatusBoard>,
    counters: ControlCounters,
    /// Set by the agent before each call into a session: refuse requests.
    busy: Option<OverBudget>,
}

impl std::fmt::Debug for StatusHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusHandler")
            .field("connections", &self.counters.conns.open.get())
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
        Self { board, started: Instant::now(), config_toml, services, counters, busy: None }
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
            connections: self.counters.conns.open.get() as u32,
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

    fn over_budget(&self) -> Option<OverBudget> {
        self.busy
    }
}
