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
//!
//! Requests: ping is the session's own; every other `msg_type` is looked up in the agent's
//! [`Routes`] (the table the daemon builds from its services): status and config are local
//! routes, answered at once; a forwarded route hands the request to its service's agent over
//! a link and the reply (or a subscription's pushes) comes back over another, drained every
//! pass and delivered to the connection if it is still open. A connection that closes is
//! announced to every service it sent requests to, so their subscriptions end with it.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::channel::duplex::{ServerDuplex, SEGMENT_VERSION};
use crate::control::proto::{
    ChannelGranted, ConfigReply, ConfigRequest, LaneStatus, OpenChannel, PoolReport, PoolReportAck,
    ServiceStatus, Status, StatusRequest,
};
use crate::control::route::{
    self, ConnRef, LocalRoute, ReplyKind, Request, Route, RouteEntry, RouteError, Routes, ToService,
};
use crate::control::{
    Answer, CloseCause, Handler, OverBudget, RequestRef, Session, SessionConfig, Verdict,
    CODE_BUSY, CODE_LIMIT, CODE_UNAVAILABLE, MSG_CONFIG, MSG_OPEN_CHANNEL, MSG_POOL_REPORT,
    MSG_STATUS,
};
use crate::metrics::Counter;
use crate::runtime::{
    Agent, Board, CloseReason, Completion, ConnConfig, ConnCounters, ConnEvent, ConnId, ConnTable,
    Ctx, LaneStatsSnapshot, RecvRing,
};
use crate::wire::{DecoderConfig, Flags, ProtocolVersion};

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
    /// Requests answered, by `msg_type` (ping, status, config, and every service's routes).
    pub requests: Vec<(u16, Counter)>,
    /// Errors answered, by wire error kind (same order as [`ERROR_KINDS`]).
    pub errors: Vec<Counter>,
    /// Shared-memory channels open now (gauge).
    pub shm_open: Counter,
    /// Shared-memory channels granted.
    pub shm_opened: Counter,
    /// Shared-memory channel requests refused (off, too many, wrong version, no memory).
    pub shm_refused: Counter,
    /// Shared-memory channels closed because the client corrupted them.
    pub shm_faulted: Counter,
    /// Connection pools' checkouts served by an idle connection (from their reports).
    pub pool_reused: Counter,
    /// Connection pools' checkouts that connected a new one.
    pub pool_connected: Counter,
    /// `pool_reused` as a percentage of all checkouts reported (gauge).
    pub pool_reuse_percent: Counter,
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
    /// Shared-memory channels: offered at all, how many at once, ring sizes.
    pub shm: ShmSettings,
}

/// `[control]`'s shared-memory channel keys.
#[derive(Clone, Copy, Debug)]
pub struct ShmSettings {
    /// `shm_channels`.
    pub enabled: bool,
    /// `max_shm_channels`.
    pub max_channels: usize,
    /// `shm_request_records`, a power of two.
    pub request_records: usize,
    /// `shm_response_records`, a power of two.
    pub response_records: usize,
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
            shm: ShmSettings {
                enabled: c.shm_channels,
                max_channels: c.max_shm_channels as usize,
                request_records: (c.shm_request_records as usize).next_power_of_two(),
                response_records: (c.shm_response_records as usize).next_power_of_two(),
            },
        }
    }
}

/// Routes the daemon fills once every service is built; the control agent takes them when
/// its lane starts.
pub type RouteSlot = Arc<Mutex<Option<Routes>>>;

/// One control connection: its session, and which forwarded routes it has used (bit i: route
/// i of the table), to tell those services when it closes.
#[derive(Debug)]
struct Conn {
    session: Session,
    routes: u64,
    /// Received bytes not yet fed to the session: the pass's budget was spent. Past
    /// `BACKLOG_PAUSE` the connection is paused until its backlog is fed. A ring: feeding
    /// from its front moves no bytes.
    backlog: RecvRing,
    /// Paused for its backlog.
    backlog_paused: bool,
    /// The peer ended its input while a backlog waited: closed once the backlog is fed.
    eof: bool,
    /// Paused for the buffered-bytes budget (see `hold_back`).
    held_back: bool,
    /// The shared-memory channel this connection was upgraded to: its requests come from
    /// the request ring and its answers go to the response ring; bytes on its socket are
    /// doorbells.
    shm: Option<ShmChannel>,
}

/// The daemon's end of a connection's shared-memory channel.
#[derive(Debug)]
struct ShmChannel {
    duplex: ServerDuplex,
    /// The client's pid (`SO_PEERCRED`), for logs.
    pid: u32,
    /// Since when answers wait for room in the response ring (the client does not read).
    blocked_since: Option<Instant>,
    /// How soon a blocked channel is looked at again: from `SHM_REFILL_EVERY`, doubling up
    /// to `SHM_REFILL_MAX` while the client takes nothing.
    refill_every: Duration,
}

/// The control agent.
pub struct ControlAgent {
    path: PathBuf,
    listener: Option<UnixListener>,
    settings: ControlSettings,
    conns: ConnTable<Conn>,
    handler: ControlHandler,
    slot: Option<RouteSlot>,
    /// Connections not read while the budget is spent (they had output waiting): resumed
    /// once all connections together are back under it.
    budget_paused: Vec<ConnId>,
    /// Connections with a backlog, oldest first.
    backlogged: VecDeque<ConnId>,
    /// Request bytes the agent may still feed to sessions before its next `do_work`.
    pass_bytes: usize,
    /// Connections with a shared-memory channel, drained in turn.
    channels: Vec<ConnId>,
    /// Where the next pass starts in `channels`.
    next_channel: usize,
    /// The channels' doorbells are armed (the lane's last look found them empty).
    armed: bool,
    /// Scratch: request bytes drained from a channel.
    drained: Vec<u8>,
    /// Scratch: a grant frame.
    grant: Vec<u8>,
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
        handler: ControlHandler,
    ) -> Self {
        let conns = ConnTable::new(settings.conns)
            .with_counters(handler.counters.conns.clone())
            .keep_closed();
        Self {
            path,
            listener: Some(listener),
            settings,
            conns,
            handler,
            slot: None,
            budget_paused: Vec::new(),
            backlogged: VecDeque::new(),
            pass_bytes: PASS_BYTES,
            channels: Vec::new(),
            next_channel: 0,
            armed: false,
            drained: Vec::new(),
            grant: Vec::new(),
        }
    }

    /// Adds, when the lane starts, the routes the daemon puts in `slot` once every service is
    /// built (services forward their requests to agents on any lane).
    pub fn with_routes(mut self, slot: RouteSlot) -> Self {
        self.slot = Some(slot);
        self
    }

    fn accept(&mut self, ctx: &mut Ctx<'_>, fd: crate::runtime::Incoming) {
        let (config, now) = (&self.settings.session, ctx.now);
        let new = |_| Conn {
            session: Session::new(config.clone(), now),
            routes: 0,
            backlog: RecvRing::new(BACKLOG_LIMIT),
            backlog_paused: false,
            eof: false,
            held_back: false,
            shm: None,
        };
        match self.conns.accept(ctx, fd, new) {
            Ok(id) => {
                let deadline = self.conns.get(id).and_then(|c| c.session.poll_timeout());
                self.conns.set_deadline(ctx, id, deadline);
            }
            Err(e) => tracing::debug!("control connection refused: {e}"),
        }
    }

    /// Hands the replies and pushes services sent back to their connections; returns how many.
    fn deliver_replies(&mut self, ctx: &mut Ctx<'_>) -> usize {
        let mut done = 0;
        for link in 0..self.handler.routes.replies.len() {
            // Bounded per pass: a service that floods pushes cannot hold the lane.
            for _ in 0..REPLIES_PER_PASS {
                let Ok(reply) = self.handler.routes.replies[link].pop() else { break };
                done += 1;
                if reply.kind != ReplyKind::Push {
                    self.handler.answered(link, reply.conn, reply.msg_id);
                }
                let id = ConnId::from_local(reply.conn.0);
                let alive = id.filter(|&id| self.conns.contains(id) && !self.conns.is_closing(id));
                let Some(id) = alive else {
                    // Gone: tell the service, which stops pushing to it.
                    if reply.kind == ReplyKind::Push {
                        self.handler.notify_closed(link, reply.conn);
                    }
                    continue;
                };
                let Some(conn) = self.conns.get_mut(id) else { continue };
                let verdict = conn.session.deliver(
                    reply.msg_type,
                    reply.msg_id,
                    reply.kind,
                    &reply.body,
                    &mut self.handler,
                );
                self.after(ctx, id, verdict);
            }
        }
        done
    }

    /// Answers `service unavailable` to every request still pending on a route whose service
    /// has dropped its port (once the replies it sent before are delivered); returns how many.
    fn fail_stopped(&mut self, ctx: &mut Ctx<'_>) -> usize {
        let mut done = 0;
        for link in 0..self.handler.pending.len() {
            if self.handler.pending[link].is_empty() {
                continue;
            }
            // `is_abandoned` fences with the port's drop: every reply it pushed is visible,
            // so an empty link means the service answered no more of these.
            let replies = &mut self.handler.routes.replies[link];
            if !replies.is_abandoned() || !replies.is_empty() {
                continue;
            }
            let name = self.handler.route_name(link);
            let text = format!("service unavailable: '{name}' has stopped");
            for p in std::mem::take(&mut self.handler.pending[link]) {
                done += 1;
                let Some(id) = ConnId::from_local(p.conn.0) else { continue };
                if !self.conns.contains(id) || self.conns.is_closing(id) {
                    continue;
                }
                let Some(conn) = self.conns.get_mut(id) else { continue };
                let kind = ReplyKind::Error(CODE_UNAVAILABLE);
                let verdict = conn.session.deliver(
                    p.msg_type,
                    p.msg_id,
                    kind,
                    text.as_bytes(),
                    &mut self.handler,
                );
                self.after(ctx, id, verdict);
            }
        }
        done
    }

    /// Over budget, a connection whose answers wait to be written is not read until they are
    /// (or until all connections are back under the budget): its requests stay in the kernel
    /// (flow control slows its peer) instead of each getting a busy error that would sit in
    /// its output too. So what a peer that never reads costs is bounded by the budget plus one
    /// chunk's answers, while a peer that reads its answers goes on getting them (busy errors
    /// while the budget is spent).
    fn hold_back(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        if self.handler.busy.is_none() || self.conns.pending(id) == 0 || self.conns.is_closing(id) {
            return;
        }
        let Some(conn) = self.conns.get_mut(id) else { return };
        if conn.held_back {
            return;
        }
        conn.held_back = true;
        let _ = ctx.pause(id.local());
        self.budget_paused.push(id);
    }

    /// Feeds the connections' backlogs, oldest first, within a fresh pass budget (what is
    /// left of it goes to the next pass's receives); resumes those it emptied. Returns how
    /// many it fed.
    fn feed_backlogs(&mut self, ctx: &mut Ctx<'_>) -> usize {
        self.pass_bytes = PASS_BYTES;
        if self.backlogged.is_empty() {
            return 0;
        }
        // Each gets a share, so one connection's flood does not keep the others waiting; with
        // more than PASS_BYTES / MIN_SHARE of them, those not fed this pass are first next
        // pass (the queue turns), and the pass stays within PASS_BYTES.
        let share = (PASS_BYTES / self.backlogged.len()).max(MIN_SHARE);
        let mut fed = 0;
        for _ in 0..self.backlogged.len() {
            if self.pass_bytes == 0 {
                break;
            }
            let Some(id) = self.backlogged.pop_front() else { break };
            if self.conns.is_closing(id) {
                continue; // its input is discarded; the backlog goes with its state
            }
            if self.conns.get(id).is_some_and(|c| c.held_back) {
                // Its answers wait to be read: its requests wait too (see `hold_back`).
                self.backlogged.push_back(id);
                continue;
            }
            self.check_budget();
            let now = ctx.now;
            let Some(conn) = self.conns.get_mut(id) else { continue };
            // From the part before the ring wraps (the rest next time: sessions take frames
            // in pieces).
            let front = conn.backlog.as_slices().0;
            let take = front.len().min(share).min(self.pass_bytes);
            self.pass_bytes -= take;
            self.handler.current = ConnRef(id.local());
            let verdict = conn.session.on_bytes(&front[..take], now, &mut self.handler);
            conn.backlog.consume(take);
            let done = conn.backlog.is_empty();
            if done {
                if std::mem::take(&mut conn.backlog_paused) && !conn.held_back {
                    let _ = ctx.resume(id.local());
                }
            } else {
                self.backlogged.push_back(id);
            }
            fed += 1;
            let eof = done && conn.eof;
            self.after(ctx, id, verdict);
            if eof {
                self.conns.close(ctx, id, CloseReason::Peer);
            }
            self.hold_back(ctx, id);
        }
        fed
    }

    /// Reads again the connections held back whose answers are written, or all of them once
    /// the budget allows; returns how many.
    fn release_held_back(&mut self, ctx: &mut Ctx<'_>) -> usize {
        if self.budget_paused.is_empty() {
            return 0;
        }
        let under = self.conns.buffered() as u64 <= self.settings.max_buffered_bytes;
        let mut n = 0;
        let mut i = 0;
        while i < self.budget_paused.len() {
            let id = self.budget_paused[i];
            let gone = !self.conns.contains(id) || self.conns.is_closing(id);
            if gone || under || self.conns.pending(id) == 0 {
                self.budget_paused.swap_remove(i);
                if let Some(conn) = self.conns.get_mut(id).filter(|_| !gone) {
                    conn.held_back = false;
                    if !conn.backlog_paused {
                        let _ = ctx.resume(id.local());
                    }
                    n += 1;
                }
            } else {
                i += 1;
            }
        }
        n
    }

    /// Closes a connection whose client corrupted its shared-memory channel: counted and
    /// logged with its pid; nobody else is affected.
    fn fault(&mut self, ctx: &mut Ctx<'_>, id: ConnId, pid: u32, why: &str) {
        tracing::warn!(
            pid,
            "control: pid {pid} corrupted its shared-memory channel ({why}); closing it"
        );
        self.handler.counters.shm_faulted.inc();
        self.conns.close(ctx, id, CloseReason::Protocol);
    }

    /// Answers the channel requests whose connection has nothing queued before them (the
    /// grant goes out with `sendmsg`, beside the reactor's queue); returns how many.
    fn open_channels(&mut self, ctx: &mut Ctx<'_>) -> usize {
        let mut done = 0;
        let mut i = 0;
        while i < self.handler.opens.len() {
            let open = self.handler.opens[i];
            let Some(id) = ConnId::from_local(open.conn.0)
                .filter(|&id| self.conns.contains(id) && !self.conns.is_closing(id))
            else {
                self.handler.opens.swap_remove(i);
                continue;
            };
            let queued = self.conns.pending(id) > 0
                || self.conns.get(id).is_some_and(|c| !c.session.output().is_empty());
            if queued {
                i += 1;
                continue;
            }
            match self.open_channel(ctx, id, open) {
                Some(()) => {
                    self.handler.opens.swap_remove(i);
                    done += 1;
                }
                None => i += 1, // the socket's buffer is full: again next pass
            }
        }
        done
    }

    /// Grants or refuses one channel request. `None`: the socket took nothing (`WouldBlock`),
    /// try again later.
    fn open_channel(&mut self, ctx: &mut Ctx<'_>, id: ConnId, open: Open) -> Option<()> {
        let shm = self.settings.shm;
        let conn = self.conns.get(id)?;
        let refusal = if conn.session.version() == ProtocolVersion::V1 {
            Some((WIRE_VERSION_MISMATCH, "protocol version mismatch: expected 2, got 1".to_owned()))
        } else if open.segment_version != SEGMENT_VERSION {
            Some((
                WIRE_VERSION_MISMATCH,
                format!(
                    "protocol version mismatch: expected {SEGMENT_VERSION}, got {}",
                    open.segment_version
                ),
            ))
        } else if !shm.enabled {
            Some((
                CODE_UNAVAILABLE,
                "shared-memory channels are off (control.shm_channels = false)".to_owned(),
            ))
        } else if conn.shm.is_some() {
            Some((CODE_LIMIT, "this connection has a shared-memory channel already".to_owned()))
        } else if self.channels.len() >= shm.max_channels {
            Some((
                CODE_LIMIT,
                format!(
                    "too many shared-memory channels: {} open, control.max_shm_channels = {}",
                    self.channels.len(),
                    shm.max_channels
                ),
            ))
        } else {
            None
        };
        let refuse = |agent: &mut Self, ctx: &mut Ctx<'_>, code: u16, text: &str| {
            agent.handler.counters.shm_refused.inc();
            let Some(conn) = agent.conns.get_mut(id) else { return };
            let kind = ReplyKind::Error(code);
            let verdict = conn.session.deliver(
                MSG_OPEN_CHANNEL,
                open.msg_id,
                kind,
                text.as_bytes(),
                &mut agent.handler,
            );
            agent.after(ctx, id, verdict);
        };
        if let Some((code, text)) = refusal {
            refuse(self, ctx, code, &text);
            return Some(());
        }
        let pid = ctx
            .fd(id.local())
            .and_then(|fd| rustix::net::sockopt::socket_peercred(fd).ok())
            .map_or(0, |cred| cred.pid.as_raw_nonzero().get() as u32);
        let name = format!("corelane_ipc_v2_{pid}");
        let (duplex, fd) =
            match ServerDuplex::create(&name, shm.request_records, shm.response_records) {
                Ok(made) => made,
                Err(e) => {
                    tracing::warn!(
                        pid,
                        "control: cannot create a shared-memory channel for pid {pid}: {e}"
                    );
                    refuse(
                        self,
                        ctx,
                        CODE_UNAVAILABLE,
                        &format!("failed to create shared memory: {name}: {e}"),
                    );
                    return Some(());
                }
            };
        let segment_bytes =
            crate::channel::duplex::segment_layout(shm.request_records, shm.response_records)
                .map_or(0, |(_, total)| total as u64);
        let granted = ChannelGranted {
            segment_version: SEGMENT_VERSION,
            name,
            request_records: shm.request_records as u32,
            response_records: shm.response_records as u32,
            segment_bytes,
        };
        let mut body = Vec::new();
        crate::control::session::encode_body(&granted, &mut body);
        self.grant.clear();
        crate::wire::encode(
            ProtocolVersion::V2,
            MSG_OPEN_CHANNEL,
            Flags::RESPONSE,
            open.msg_id,
            &body,
            &mut self.grant,
        );
        let sent = match ctx.fd(id.local()) {
            Some(socket) => crate::channel::send_with_fd(socket, &self.grant, fd.as_fd()),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotConnected)),
        };
        match sent {
            Ok(_) => {
                self.handler.on_answered(MSG_OPEN_CHANNEL);
                self.handler.counters.shm_opened.inc();
                let conn = self.conns.get_mut(id)?;
                conn.shm = Some(ShmChannel {
                    duplex,
                    pid,
                    blocked_since: None,
                    refill_every: SHM_REFILL_EVERY,
                });
                self.channels.push(id);
                self.handler.counters.shm_open.set(self.channels.len() as u64);
                Some(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => {
                tracing::debug!(pid, "control: cannot pass the channel to pid {pid}: {e}");
                self.conns.close(ctx, id, CloseReason::Peer);
                Some(())
            }
        }
    }

    /// Feeds the requests waiting in the channels to their sessions, in turn, within the
    /// pass's byte budget; returns how many records it took.
    fn drain_channels(&mut self, ctx: &mut Ctx<'_>) -> usize {
        self.channels.retain(|&id| self.conns.contains(id) && !self.conns.is_closing(id));
        self.handler.counters.shm_open.set(self.channels.len() as u64);
        let count = self.channels.len();
        let mut work = 0;
        let write_timeout = self.settings.conns.write_timeout;
        for k in 0..count {
            let id = self.channels[(self.next_channel + k) % count];
            let now = ctx.now;
            let Some(conn) = self.conns.get_mut(id) else { continue };
            let Some(channel) = &mut conn.shm else { continue };
            if let Some(since) = channel.blocked_since {
                // Answers wait for room: retry them; the requests wait behind them.
                if now.duration_since(since) >= write_timeout {
                    tracing::debug!(pid = channel.pid, "control: channel answers unread; closing");
                    self.conns.close(ctx, id, CloseReason::WriteTimeout);
                    continue;
                }
                // Retried from its deadline (`after` arms it), not every pass: a client
                // that stops reading must not keep the lane from parking.
                continue;
            }
            if self.pass_bytes == 0 {
                break;
            }
            let max = self.pass_bytes.div_ceil(crate::channel::duplex::RECORD_DATA).min(64);
            self.drained.clear();
            let pid = channel.pid;
            match channel.duplex.drain(max, &mut self.drained) {
                Ok(0) => continue,
                Ok(n) => work += n,
                Err(e) => {
                    self.fault(ctx, id, pid, &e.to_string());
                    continue;
                }
            }
            self.pass_bytes = self.pass_bytes.saturating_sub(self.drained.len());
            self.check_budget();
            self.handler.current = ConnRef(id.local());
            let Some(conn) = self.conns.get_mut(id) else { continue };
            let verdict = conn.session.on_bytes(&self.drained, now, &mut self.handler);
            self.after(ctx, id, verdict);
        }
        if count > 0 {
            self.next_channel = (self.next_channel + 1) % count;
        }
        work
    }

    /// The lane's last look before it parks: arms every channel's doorbell; returns how many
    /// have requests after all (then the lane does not park).
    fn arm_channels(&mut self, ctx: &mut Ctx<'_>) -> usize {
        self.armed = true;
        let mut ready = 0;
        for i in 0..self.channels.len() {
            let id = self.channels[i];
            let Some(channel) = self.conns.get_mut(id).and_then(|c| c.shm.as_mut()) else {
                continue;
            };
            if channel.blocked_since.is_some() {
                continue; // its requests wait behind its answers: not ready
            }
            match channel.duplex.arm_doorbell() {
                Ok(true) => {}
                Ok(false) => ready += 1,
                Err(e) => {
                    let pid = channel.pid;
                    self.fault(ctx, id, pid, &format!("ring corrupt: {e}"));
                }
            }
        }
        ready
    }

    fn disarm_channels(&mut self) {
        self.armed = false;
        for &id in &self.channels {
            if let Some(channel) = self.conns.get(id).and_then(|c| c.shm.as_ref()) {
                channel.duplex.disarm_doorbell();
            }
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
        let Some(conn) = self.conns.get_mut(id) else { return };
        conn.routes |= std::mem::take(&mut self.handler.used);
        let out = conn.session.output().len();
        if let Some(channel) = &mut conn.shm {
            if out > 0 {
                match channel.duplex.push(conn.session.output()) {
                    Ok(n) => {
                        conn.session.consume_output(n);
                        if n > 0 {
                            channel.duplex.notify();
                        }
                        // The write timeout restarts whenever the client takes some (as
                        // on the socket); the refill look backs off while it takes none.
                        channel.blocked_since = if n == out {
                            None
                        } else if n > 0 {
                            channel.refill_every = SHM_REFILL_EVERY;
                            Some(ctx.now)
                        } else {
                            channel.refill_every = (channel.refill_every * 2).min(SHM_REFILL_MAX);
                            Some(channel.blocked_since.unwrap_or(ctx.now))
                        };
                    }
                    Err(e) => {
                        let pid = channel.pid;
                        self.fault(ctx, id, pid, &format!("ring corrupt: {e}"));
                        return;
                    }
                }
            }
        } else if out >= OWNED_OUTPUT_BYTES {
            let output = conn.session.take_output();
            if self.conns.send_owned(ctx, id, output).is_err() {
                return; // closed: over its limit, or the reactor refused
            }
        } else if out > 0 {
            match self.conns.send_from(ctx, id, |c| c.session.output()) {
                Ok(n) => {
                    if let Some(conn) = self.conns.get_mut(id) {
                        conn.session.consume_output(n);
                    }
                }
                Err(_) => return,
            }
        }
        let Some(conn) = self.conns.get(id) else { return };
        let session = &conn.session;
        let mut deadline = session.poll_timeout();
        if conn.shm.as_ref().is_some_and(|c| c.blocked_since.is_some()) {
            // Answers wait for room in the response ring, and the client rings no doorbell
            // when it reads: look again soon, whatever the lane's idle strategy (until the
            // client reads or the write timeout closes it).
            let every = conn.shm.as_ref().map_or(SHM_REFILL_EVERY, |c| c.refill_every);
            let soon = ctx.now + every;
            deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
        }
        let (held, cause) = (session.buffered() + conn.backlog.capacity(), session.close_cause());
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
        if let Some(slot) = self.slot.take() {
            let routes = slot.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
            self.handler.add_routes(routes).map_err(std::io::Error::other)?;
        }
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
                let Some(conn) = self.conns.get_mut(id) else { return };
                if conn.shm.is_some() {
                    // A doorbell: the requests are in the ring (drained from `do_work`).
                    return;
                }
                let data = ctx.reactor().data(&buf);
                // What this pass may not take waits in the connection's backlog, behind what
                // waits there already, fed from the next `do_work`: a few clients that keep
                // their sockets full cannot stretch the lane's pass. A backlog past
                // BACKLOG_PAUSE pauses the connection (nothing more arrives) until it is fed.
                let was_behind = !conn.backlog.is_empty();
                let take = if was_behind { 0 } else { data.len().min(self.pass_bytes) };
                self.pass_bytes -= take;
                let behind = take < data.len();
                // Cannot fail: a backlog past BACKLOG_PAUSE stops the connection's receives,
                // so it ends at most one chunk past it (BACKLOG_LIMIT has room for the largest).
                if behind && conn.backlog.push(&data[take..]).is_err() {
                    tracing::error!("control backlog over its limit; closing the connection");
                    self.conns.close(ctx, id, CloseReason::Budget);
                    return;
                }
                let pause = conn.backlog.len() > BACKLOG_PAUSE && !conn.backlog_paused;
                conn.backlog_paused |= pause;
                self.handler.current = ConnRef(id.local());
                let verdict = if take > 0 {
                    conn.session.on_bytes(&data[..take], now, &mut self.handler)
                } else {
                    Verdict::Continue
                };
                if pause {
                    let _ = ctx.pause(id.local());
                }
                if behind && !was_behind {
                    self.backlogged.push_back(id);
                }
                self.after(ctx, id, verdict);
                self.hold_back(ctx, id);
            }
            ConnEvent::Deadline { id } => {
                let now = ctx.now;
                let Some(conn) = self.conns.get_mut(id) else { return };
                let verdict = conn.session.on_tick(now);
                self.after(ctx, id, verdict);
            }
            // End of input: what the peer asked for is answered (sessions answer as bytes
            // arrive), so the connection closes once the answers are written.
            // (After the backlog, if one waits: what the peer sent is answered first.)
            ConnEvent::PeerClosed { id } => match self.conns.get_mut(id) {
                Some(conn) if !conn.backlog.is_empty() => conn.eof = true,
                Some(conn) if conn.shm.is_some() => {
                    // What the client wrote before it went is answered first (one ring's
                    // worth at most: the client is gone and cannot add more).
                    self.drained.clear();
                    let channel = conn.shm.as_mut().expect("checked");
                    if channel.duplex.drain(usize::MAX, &mut self.drained).is_ok()
                        && !self.drained.is_empty()
                    {
                        self.handler.current = ConnRef(id.local());
                        let now = ctx.now;
                        let verdict = conn.session.on_bytes(&self.drained, now, &mut self.handler);
                        self.after(ctx, id, verdict);
                    }
                    self.conns.close(ctx, id, CloseReason::Peer);
                }
                _ => self.conns.close(ctx, id, CloseReason::Peer),
            },
            ConnEvent::Other(Completion::Accepted { fd, .. }) => self.accept(ctx, fd),
            // The listener never closes on an error: its accept errors are the reactor's to
            // count and retry (see `do_work`); one error must not end the control socket.
            // Closes are announced to the services from `take_closed`, whatever closed them.
            ConnEvent::Other(_)
            | ConnEvent::Closed { .. }
            | ConnEvent::Sent { .. }
            | ConnEvent::Handled
            | ConnEvent::Stale => {}
        }
    }

    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
        if self.armed && !ctx.is_last_look() {
            self.disarm_channels();
        }
        // Two relaxed stores and a token lookup: bookkeeping, not work.
        if let Ok(listener) = ctx.token(LISTENER) {
            self.handler.counters.accept_errors.set(ctx.reactor().accept_errors(listener));
        }
        self.handler.counters.buffered.set(self.conns.buffered() as u64);
        // Tell the services of every connection gone that used their routes (a close notice
        // is not work: the lane may go on idling).
        while let Some((id, conn)) = self.conns.take_closed() {
            if conn.routes != 0 {
                let gone = ConnRef(id.local());
                self.handler.announce_closed(conn.routes, gone);
                for pending in &mut self.handler.pending {
                    pending.retain(|p| p.conn != gone);
                }
            }
        }
        let mut work = self.release_held_back(ctx)
            + self.feed_backlogs(ctx)
            + self.drain_channels(ctx)
            + self.deliver_replies(ctx)
            + self.fail_stopped(ctx)
            + self.open_channels(ctx);
        if work == 0 && ctx.is_last_look() && !self.channels.is_empty() {
            work += self.arm_channels(ctx);
        }
        work
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>) {
        self.conns.close_all(ctx);
        // The daemon removes the socket file once every lane has stopped.
        ctx.close(LISTENER);
    }
}

/// Request bytes the control agent feeds its sessions per pass, all connections together
/// (about 170 header-only requests); the rest waits in per-connection backlogs.
const PASS_BYTES: usize = 4 * 1024;

/// Backlog bytes past which a connection is paused until its backlog is fed (four receive
/// buffers: a burst is absorbed without pausing, a flood is stopped in the kernel).
const BACKLOG_PAUSE: usize = 64 * 1024;

/// The most a backlog holds: `BACKLOG_PAUSE` and one more received chunk of the largest size
/// a reactor delivers (1 MiB: the epoll backend's read budget).
const BACKLOG_LIMIT: usize = BACKLOG_PAUSE + (1 << 20);

/// The least a backlogged connection is fed per pass, however many there are.
const MIN_SHARE: usize = 256;

/// How often a channel whose answers wait for room in its response ring is looked at.
const SHM_REFILL_EVERY: Duration = Duration::from_micros(100);
/// The longest wait between looks at a blocked channel whose client takes nothing.
const SHM_REFILL_MAX: Duration = Duration::from_millis(10);

/// Most replies taken from one service's link per pass.
const REPLIES_PER_PASS: usize = 256;

/// What the control agent's sessions answer with: its table of routes (status and config
/// built in, the services' added when the lane starts), the clock, counters, the budget.
pub struct ControlHandler {
    routes: Routes,
    counters: ControlCounters,
    /// Set by the agent before each call into a session: refuse requests.
    busy: Option<OverBudget>,
    /// The connection of the call in progress (forwarded requests carry it).
    current: ConnRef,
    /// Forwarded routes the call in progress used (bit i: route i).
    used: u64,
    /// Per reply link: the forwarded requests not yet answered. Each gets exactly one answer:
    /// the service's, or `service unavailable` once the service has dropped its port (a
    /// request it took, or one still in the link, would otherwise wait for the client's
    /// timeout).
    pending: Vec<Vec<Pending>>,
    /// Channel requests (msg_type 4) to answer from `do_work`, where the socket is at hand.
    opens: Vec<Open>,
}

/// A request for a shared-memory channel.
#[derive(Clone, Copy, Debug)]
struct Open {
    conn: ConnRef,
    msg_id: u64,
    segment_version: u32,
}

/// The wire code of a version mismatch (`WireError::VersionMismatch`).
const WIRE_VERSION_MISMATCH: u16 = 2;

/// Most channel requests waiting to be answered; past it they are refused as busy.
const MAX_OPENS: usize = 1024;

/// A forwarded request waiting for its answer.
#[derive(Clone, Copy, Debug)]
struct Pending {
    conn: ConnRef,
    msg_id: u64,
    msg_type: u16,
}

/// Most forwarded requests of one route waiting for their answers: past it, requests are
/// refused as busy (a service that takes requests and never answers cannot grow the table
/// without bound).
pub const MAX_PENDING_PER_ROUTE: usize = 4096;

impl std::fmt::Debug for ControlHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlHandler")
            .field("routes", &self.routes)
            .field("connections", &self.counters.conns.open.get())
            .finish_non_exhaustive()
    }
}

impl ControlHandler {
    /// A handler with the built-in routes: status (from `board` and `services`) and config
    /// (`config_toml`).
    pub fn new(
        board: Arc<Board>,
        config_toml: String,
        services: Arc<super::service::StatusBoard>,
        counters: ControlCounters,
    ) -> Self {
        let mut routes = Routes::new();
        let status = StatusRoute {
            board,
            last: Vec::new(),
            started: Instant::now(),
            services,
            open: counters.conns.open.clone(),
        };
        // Fresh table: these two cannot collide.
        let _ = routes.local(MSG_STATUS, "status", Box::new(status));
        let _ = routes.local(MSG_CONFIG, "config", Box::new(ConfigRoute { toml: config_toml }));
        let pools = PoolReportRoute {
            reused: counters.pool_reused.clone(),
            connected: counters.pool_connected.clone(),
            percent: counters.pool_reuse_percent.clone(),
        };
        let _ = routes.local(MSG_POOL_REPORT, "pool_report", Box::new(pools));
        Self {
            routes,
            counters,
            busy: None,
            current: ConnRef(0),
            used: 0,
            pending: Vec::new(),
            opens: Vec::new(),
        }
    }

    /// Adds the services' routes.
    pub fn add_routes(
        &mut self,
        more: Routes,
    ) -> Result<(), crate::control::route::DuplicateRoute> {
        let base = self.routes.replies.len();
        let Routes { entries, replies } = more;
        self.routes.replies.extend(replies);
        self.pending.resize_with(self.routes.replies.len(), Vec::new);
        for mut entry in entries {
            if let Route::Forward { replies, .. } = &mut entry.route {
                *replies += base;
            }
            match entry.route {
                Route::Local(r) => self.routes.local(entry.msg_type, entry.name, r)?,
                Route::Forward { requests, replies } => {
                    self.routes.forward_to(entry.msg_type, entry.name, requests, replies)?
                }
            }
        }
        if self.routes.entries.len() > 64 {
            tracing::warn!("more than 64 routes: close notices go only to the first 64");
        }
        Ok(())
    }

    /// Tells every forwarded route in `mask` that `conn` closed (best effort: a full link
    /// drops the notice, and the service learns it from its next push, see
    /// `deliver_replies`).
    fn announce_closed(&mut self, mask: u64, conn: ConnRef) {
        for (i, entry) in self.routes.entries.iter_mut().enumerate().take(64) {
            if mask & (1 << i) != 0 {
                if let Route::Forward { requests, .. } = &mut entry.route {
                    let _ = requests.push(ToService::Closed(conn));
                }
            }
        }
    }

    /// The reply to `msg_id` of `conn` came back on `link`: no longer pending.
    fn answered(&mut self, link: usize, conn: ConnRef, msg_id: u64) {
        let pending = &mut self.pending[link];
        if let Some(i) = pending.iter().position(|p| p.conn == conn && p.msg_id == msg_id) {
            pending.swap_remove(i);
        }
    }

    /// The name of the route whose replies come on `link`.
    fn route_name(&self, link: usize) -> &'static str {
        let forwarded =
            |e: &&RouteEntry| matches!(e.route, Route::Forward { replies, .. } if replies == link);
        self.routes.entries.iter().find(forwarded).map_or("?", |e| e.name)
    }

    /// Tells the route whose replies come on link `link` that `conn` is gone.
    fn notify_closed(&mut self, link: usize, conn: ConnRef) {
        for entry in &mut self.routes.entries {
            if let Route::Forward { requests, replies } = &mut entry.route {
                if *replies == link {
                    let _ = requests.push(ToService::Closed(conn));
                    return;
                }
            }
        }
    }
}

impl Handler for ControlHandler {
    fn now_ns(&self) -> u64 {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    fn request(&mut self, request: RequestRef<'_>, reply: &mut Vec<u8>) -> Answer {
        if request.msg_type == MSG_OPEN_CHANNEL {
            let open = match <OpenChannel as prost::Message>::decode(request.body) {
                Ok(open) => open,
                Err(e) => return Answer::Error(RouteError::BadBody(e)),
            };
            if self.opens.iter().any(|o| o.conn == self.current) {
                // One at a time per connection: a few connections cannot fill the queue.
                let text = "a shared-memory channel request of this connection is waiting \
                            already"
                    .to_owned();
                return Answer::Error(RouteError::Other { code: CODE_LIMIT, text });
            }
            if self.opens.len() >= MAX_OPENS {
                let text = "daemon busy: too many channel requests waiting".to_owned();
                return Answer::Error(RouteError::Other { code: CODE_BUSY, text });
            }
            self.opens.push(Open {
                conn: self.current,
                msg_id: request.msg_id,
                segment_version: open.segment_version,
            });
            return Answer::Later;
        }
        let Some((index, entry)) = self.routes.find(request.msg_type) else {
            return Answer::Unknown;
        };
        match &mut entry.route {
            Route::Local(route) => match route.answer(request.body, reply) {
                Ok(()) => Answer::Respond,
                Err(e) => Answer::Error(e),
            },
            Route::Forward { requests, replies } => {
                if requests.is_abandoned() {
                    let text = format!("service unavailable: '{}' has stopped", entry.name);
                    return Answer::Error(RouteError::Other { code: CODE_UNAVAILABLE, text });
                }
                let pending = &mut self.pending[*replies];
                if pending.len() >= MAX_PENDING_PER_ROUTE {
                    let text = format!(
                        "service busy: '{}' has {} requests unanswered",
                        entry.name,
                        pending.len()
                    );
                    return Answer::Error(RouteError::Other { code: CODE_BUSY, text });
                }
                let forwarded = ToService::Request(Request {
                    conn: self.current,
                    msg_id: request.msg_id,
                    msg_type: request.msg_type,
                    body: request.body.to_vec(),
                });
                match requests.push(forwarded) {
                    Ok(()) => {
                        if index < 64 {
                            self.used |= 1 << index;
                        }
                        pending.push(Pending {
                            conn: self.current,
                            msg_id: request.msg_id,
                            msg_type: request.msg_type,
                        });
                        Answer::Later
                    }
                    Err(_) => {
                        let text =
                            format!("service busy: '{}' has too many requests queued", entry.name);
                        Answer::Error(RouteError::Other { code: CODE_BUSY, text })
                    }
                }
            }
        }
    }

    fn on_answered(&mut self, msg_type: u16) {
        if let Some((_, counter)) = self.counters.requests.iter().find(|(t, _)| *t == msg_type) {
            counter.inc();
        }
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

/// `status`: lanes from the [`Board`], services from their status cells.
struct StatusRoute {
    board: Arc<Board>,
    /// Every lane's last consistent counters ([`Board::refresh`]).
    last: Vec<Option<LaneStatsSnapshot>>,
    started: Instant,
    services: Arc<super::service::StatusBoard>,
    open: Counter,
}

impl LocalRoute for StatusRoute {
    fn answer(&mut self, body: &[u8], reply: &mut Vec<u8>) -> Result<(), RouteError> {
        route::answer(body, reply, |_: StatusRequest| self.status())
    }
}

impl StatusRoute {
    fn status(&mut self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            reactor: self.board.reactor().map_or("starting", |r| r.name()).to_owned(),
            lanes: lane_statuses(&self.board, &mut self.last),
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
            connections: self.open.get() as u32,
        }
    }
}

/// Every lane's facts and counters, as status and lane reports show them: `last` is
/// brought up to date from `board` ([`Board::refresh`]), so a lane caught mid-publish shows
/// its last consistent counters (and a lane never read consistently yet is left out).
pub(super) fn lane_statuses(
    board: &Board,
    last: &mut Vec<Option<LaneStatsSnapshot>>,
) -> Vec<LaneStatus> {
    board.refresh(last);
    last.iter()
        .flatten()
        .map(|l| LaneStatus {
            name: l.name.clone(),
            core: l.core.map_or(-1, |c| c as i32),
            idle: l.idle.to_owned(),
            agents: l.agents.clone(),
            passes: l.passes,
            work: l.work,
            idle_ns: l.idle_ns,
            max_pass_ns: l.max_pass_ns,
            p99_pass_ns: l.p99_pass_ns,
        })
        .collect()
}

/// `pool_report`: adds a connection pool's counts to the pool counters.
struct PoolReportRoute {
    reused: Counter,
    connected: Counter,
    percent: Counter,
}

impl LocalRoute for PoolReportRoute {
    fn answer(&mut self, body: &[u8], reply: &mut Vec<u8>) -> Result<(), RouteError> {
        route::answer(body, reply, |report: PoolReport| {
            // Saturating: a client's counts are not trusted to be small.
            self.reused.set(self.reused.get().saturating_add(report.reused));
            self.connected.set(self.connected.get().saturating_add(report.connected));
            let (reused, all) =
                (self.reused.get(), self.reused.get() as u128 + self.connected.get() as u128);
            if let Some(percent) = (reused as u128 * 100).checked_div(all) {
                self.percent.set(percent as u64);
            }
            PoolReportAck {}
        })
    }
}

/// `config`: the effective configuration, rendered once at start.
struct ConfigRoute {
    toml: String,
}

impl LocalRoute for ConfigRoute {
    fn answer(&mut self, body: &[u8], reply: &mut Vec<u8>) -> Result<(), RouteError> {
        route::answer(body, reply, |_: ConfigRequest| ConfigReply { toml: self.toml.clone() })
    }
}
