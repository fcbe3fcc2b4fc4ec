//! A connection table for agents that serve many sockets: a slab of connections with
//! generations, an accept limit, a reassembly ring per connection, deadlines on the lane's
//! timers, output accounting, and the standard counters.
//!
//! An agent keeps one [`ConnTable<S>`], `S` being its per-connection state (a protocol session,
//! say), and routes its reactor completions through it:
//!
//! ```no_run
//! use corelane::runtime::{Agent, CloseReason, Completion, ConnConfig, ConnEvent, ConnTable, Ctx};
//!
//! struct Echo {
//!     listener: Option<std::os::unix::net::UnixListener>,
//!     conns: ConnTable<u64>, // bytes echoed per connection
//! }
//! impl Agent for Echo {
//!     fn name(&self) -> &str { "echo" }
//!     fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
//!         ctx.listen(0, self.listener.take().unwrap())
//!     }
//!     fn on_completion(&mut self, ctx: &mut Ctx<'_>, completion: Completion) {
//!         match self.conns.event(ctx, completion) {
//!             ConnEvent::Other(Completion::Accepted { fd, .. }) => {
//!                 let _ = self.conns.accept(ctx, fd, |_id| 0);
//!             }
//!             ConnEvent::Received { id, buf } => {
//!                 let data = ctx.reactor().data(&buf).to_vec();
//!                 if let Some(echoed) = self.conns.get_mut(id) { *echoed += data.len() as u64 }
//!                 let _ = self.conns.send(ctx, id, &data);
//!             }
//!             ConnEvent::PeerClosed { id } => self.conns.close(ctx, id, CloseReason::Peer),
//!             _ => {}
//!         }
//!     }
//!     fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize { 0 }
//! }
//! # let _ = Echo { listener: None, conns: ConnTable::new(ConnConfig::default()) };
//! ```
//!
//! What the table does for the agent:
//!
//! - **Ids.** A connection's [`ConnId`] is its slot index plus the slot's generation, encoded in
//!   the agent-local id the connection is registered under (and its timer's id): bit
//!   [`CONN_BIT`] set, 31 bits of generation, 24 bits of index. A slot's generation moves on
//!   each time it is freed, and freed slots are reused first-in first-out, so a stale id (a
//!   completion or a call for a connection closed since) never reaches the connection that
//!   reuses the slot: it is [`ConnEvent::Stale`] or `None`. The agent's own ids (its listener,
//!   its timers) must stay below [`CONN_BIT`].
//! - **Accept limit.** [`accept`](ConnTable::accept) refuses a connection once
//!   [`ConnConfig::max_connections`] are open (dropping it: the peer reads end of stream) and
//!   counts the refusal.
//! - **Reassembly.** Each connection has a [`RecvRing`] for agents whose records must be
//!   contiguous ([`receive`](ConnTable::receive)): a ring, so consuming a record moves no
//!   bytes; it grows with what arrived up to [`ConnConfig::max_recv_buffer`] (past it the
//!   connection is closed for [`CloseReason::Budget`]), and shrinks back after a large record.
//!   It allocates nothing until used.
//! - **Deadlines.** One lane timer per connection ([`super::Ctx::timer`], under the
//!   connection's local id), armed for the earlier of the agent's deadline
//!   ([`set_deadline`](ConnTable::set_deadline), typically a protocol core's `poll_timeout()`)
//!   and the write deadline below. No pass scans the connections. A deadline that moves later
//!   (an idle timeout pushed back by every request) does not re-arm the timer: the timer fires
//!   at the old deadline, finds nothing due and re-arms for the new one, so a busy connection
//!   costs one timer operation per deadline, not per message.
//! - **Output.** [`send`](ConnTable::send), [`send_from`](ConnTable::send_from) (bytes the
//!   state holds) and [`send_owned`](ConnTable::send_owned) queue output and account for it
//!   (output must go through them, not straight to the reactor, for the accounting and the
//!   write clock to be right). Output pending with no progress (no byte written) for
//!   [`ConnConfig::write_timeout`] closes the connection ([`CloseReason::WriteTimeout`]): a
//!   peer that does not read its replies is dropped, and its descriptor released. The clock
//!   starts when output becomes pending and restarts with each write that makes progress.
//!   Pending output over [`ConnConfig::max_pending_output`] closes it at once
//!   ([`CloseReason::Budget`]). Both are checked whenever the table sees the connection: when
//!   output is queued, when bytes arrive, when sends complete, and on its timer.
//! - **Closing.** [`close`](ConnTable::close) is graceful: receiving stops, output already
//!   queued is written, then the connection closes (or at the write deadline if the peer does
//!   not read it). [`abort`](ConnTable::abort) closes at once, dropping queued output.
//! - **Budget.** [`buffered`](ConnTable::buffered) is the bytes all connections hold: pending
//!   output, reassembly rings, and what the agent reports its states hold
//!   ([`set_held`](ConnTable::set_held)), for a budget shared by all connections of the agent.
//! - **Counters.** [`ConnStats`] (always) and, if given, [`ConnCounters`] in the counters file:
//!   accepted, refused, open, closed by [`CloseReason`].
//!
//! The table takes `now` from the [`Ctx`] of each call (the pass's time), so its logic runs
//! under a fake clock in tests.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use super::agent::{Ctx, LOCAL_LIMIT};
use super::reactor::{Completion, Incoming, RecvBuf, Token};
use crate::metrics::Counter;

/// The bit of the agent-local ids that belong to a connection table (see [`ConnId`]).
pub const CONN_BIT: u64 = 1 << 55;
/// The most connections one table holds (24 bits of slot index).
pub const MAX_CONNECTIONS: usize = 1 << INDEX_BITS;

const INDEX_BITS: u32 = 24;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
/// Generations wrap at 31 bits (the rest of the 56-bit local id).
const GENERATION_MASK: u32 = (1 << 31) - 1;

/// One connection of a [`ConnTable`]: its slot and the slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    /// The agent-local id the connection is registered under (socket and timer).
    pub fn local(self) -> u64 {
        CONN_BIT | (u64::from(self.generation) << INDEX_BITS) | u64::from(self.index)
    }

    /// The connection a local id names, if it is a connection table's id.
    pub fn from_local(local: u64) -> Option<Self> {
        if local & CONN_BIT == 0 || local >= LOCAL_LIMIT {
            return None;
        }
        Some(ConnId {
            index: (local & INDEX_MASK) as u32,
            generation: ((local >> INDEX_BITS) as u32) & GENERATION_MASK,
        })
    }

    /// The connection a token of this agent names, if any.
    pub fn of(token: Token) -> Option<Self> {
        Self::from_local(Ctx::local(token))
    }

    /// The slot index (dense: below the most connections ever open at once).
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// Why a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed (end of input, a reset, a failed send).
    Peer,
    /// The peer broke the protocol.
    Protocol,
    /// The peer was silent too long (no request, or a request left unfinished).
    IdleTimeout,
    /// Output stayed pending without progress for [`ConnConfig::write_timeout`].
    WriteTimeout,
    /// The connection went over a memory limit: pending output over
    /// [`ConnConfig::max_pending_output`], or its reassembly ring over
    /// [`ConnConfig::max_recv_buffer`].
    Budget,
}

impl CloseReason {
    /// Every reason, in the order of [`ConnStats::closed`] and [`ConnCounters::closed`].
    pub const ALL: [CloseReason; 5] = [
        CloseReason::Peer,
        CloseReason::Protocol,
        CloseReason::IdleTimeout,
        CloseReason::WriteTimeout,
        CloseReason::Budget,
    ];

    /// The metric label: `peer`, `protocol`, `idle_timeout`, `write_timeout`, `budget`.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::Protocol => "protocol",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::Budget => "budget",
        }
    }

    /// The position in [`ALL`](Self::ALL).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Limits of a [`ConnTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnConfig {
    /// Most connections open at once; more are refused. At most [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Most output bytes pending for one connection; more closes it ([`CloseReason::Budget`]).
    pub max_pending_output: usize,
    /// How long output may stay pending without a byte written before the connection is
    /// closed ([`CloseReason::WriteTimeout`]); also bounds how long a graceful close waits.
    pub write_timeout: Duration,
    /// Most bytes one connection's [`RecvRing`] holds; more closes it ([`CloseReason::Budget`]).
    pub max_recv_buffer: usize,
}

impl Default for ConnConfig {
    /// 1024 connections, 4 MiB of pending output, 5 s write timeout, 1 MiB of reassembly.
    fn default() -> Self {
        ConnConfig {
            max_connections: 1024,
            max_pending_output: 4 << 20,
            write_timeout: Duration::from_secs(5),
            max_recv_buffer: 1 << 20,
        }
    }
}

/// What a connection table counted since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused: at `max_connections`, or the reactor could not register them.
    pub refused: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections closed, by [`CloseReason::index`] (closes at shutdown are not counted).
    pub closed: [u64; 5],
}

impl ConnStats {
    /// Connections closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }
}

/// The counters-file mirror of [`ConnStats`] (one relaxed store or add per event).
#[derive(Clone, Debug)]
pub struct ConnCounters {
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections refused.
    pub refused: Counter,
    /// Connections open now (a gauge).
    pub open: Counter,
    /// Connections closed, by [`CloseReason::index`].
    pub closed: [Counter; 5],
}

/// Why [`ConnTable::accept`] refused a connection (it is dropped; the peer reads end of stream).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// `max_connections` are open.
    #[error("connection refused: {open} connections open, the limit")]
    Full {
        /// Connections open.
        open: usize,
    },
    /// The reactor could not register it.
    #[error("connection refused: cannot register it: {0}")]
    Open(io::Error),
}

/// Why [`ConnTable::send`] did not queue output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such connection (closed, or a stale id).
    #[error("no such connection")]
    NotOpen,
    /// The send closed the connection: its pending output went over the limit
    /// ([`CloseReason::Budget`]), or the reactor refused it ([`CloseReason::Peer`]).
    #[error("connection closed: {}", .0.name())]
    Closed(CloseReason),
}

/// What a completion meant for the table, from [`ConnTable::event`].
#[derive(Debug)]
pub enum ConnEvent {
    /// Bytes arrived on an open connection (the chunk is the lane's until the handler returns;
    /// copy it into the connection's ring with [`ConnTable::receive`] if records must be
    /// contiguous).
    Received {
        /// The connection.
        id: ConnId,
        /// The bytes ([`super::Reactor::data`]).
        buf: RecvBuf,
    },
    /// The agent's deadline ([`ConnTable::set_deadline`]) has come; it is cleared: set the next.
    Deadline {
        /// The connection.
        id: ConnId,
    },
    /// Output was written (accounted already): room for more, if the agent holds some back.
    Sent {
        /// The connection.
        id: ConnId,
    },
    /// End of input: the peer closed or shut down its sending side. The connection stays open
    /// (a half-closed peer may still read what it is owed) until the agent closes it, usually
    /// with [`ConnTable::close`] and [`CloseReason::Peer`], which writes what is queued first.
    PeerClosed {
        /// The connection.
        id: ConnId,
    },
    /// The table closed the connection: a graceful close finished, the write timeout or a
    /// limit struck, or an operation failed. Its state is dropped.
    Closed {
        /// The connection (stale from now on).
        id: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A completion the table handled for a connection and that needs nothing from the agent
    /// (bytes arriving while it closes, a timer that fired before a deadline that moved).
    Handled,
    /// A completion for a connection closed since (a stale id).
    Stale,
    /// Not a connection's: the agent's own tokens (its listener's `Accepted`, its timers).
    Other(Completion),
}

/// A table of connections with per-connection state `S`. See the [module docs](self).
pub struct ConnTable<S> {
    config: ConnConfig,
    slots: Vec<Slot<S>>,
    /// Free slots, oldest first.
    free: VecDeque<u32>,
    open: usize,
    /// Sum of every open connection's `counted`.
    buffered: usize,
    stats: ConnStats,
    counters: Option<ConnCounters>,
    /// With [`keep_closed`](ConnTable::keep_closed): the states of closed connections, until
    /// taken.
    closed: Option<Vec<(ConnId, S)>>,
}

struct Slot<S> {
    generation: u32,
    conn: Option<Conn<S>>,
}

struct Conn<S> {
    state: S,
    ring: RecvRing,
    /// Output the reactor holds for it, as of the table's last look.
    pending: usize,
    /// Bytes the agent says its state holds ([`ConnTable::set_held`]).
    held: usize,
    /// `pending + held + ring.len()` as counted in the table's `buffered`.
    counted: usize,
    /// Since when output has been pending without a byte written.
    stalled_since: Option<Instant>,
    /// The agent's deadline.
    deadline: Option<Instant>,
    /// What the connection's lane timer is armed for.
    armed: Option<Instant>,
    /// Set by a graceful close: closes once the output is written.
    closing: Option<CloseReason>,
}

impl<S> std::fmt::Debug for ConnTable<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTable")
            .field("config", &self.config)
            .field("open", &self.open)
            .field("buffered", &self.buffered)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<S> ConnTable<S> {
    /// An empty table (allocates nothing until the first connection).
    ///
    /// # Panics
    /// If `config.max_connections` is over [`MAX_CONNECTIONS`].
    pub fn new(config: ConnConfig) -> Self {
        assert!(
            config.max_connections <= MAX_CONNECTIONS,
            "max_connections: expected at most {MAX_CONNECTIONS}, got {}",
            config.max_connections
        );
        ConnTable {
            config,
            slots: Vec::new(),
            free: VecDeque::new(),
            open: 0,
            buffered: 0,
            stats: ConnStats::default(),
            closed: None,
            counters: None,
        }
    }

    /// The table, mirroring its counts into `counters`.
    pub fn with_counters(mut self, counters: ConnCounters) -> Self {
        counters.open.set(self.open as u64);
        self.counters = Some(counters);
        self
    }

    /// Keeps the state of every connection the table closes, whatever closed it (a limit, a
    /// failed operation, [`close`](Self::close), [`abort`](Self::abort),
    /// [`close_all`](Self::close_all)), for [`take_closed`](Self::take_closed): for agents
    /// that must release something per connection (subscriptions, credits) on every path.
    /// Take them each pass; they are held until taken.
    pub fn keep_closed(mut self) -> Self {
        self.closed = Some(Vec::new());
        self
    }

    /// A closed connection's state, kept by [`keep_closed`](Self::keep_closed) (`None` when
    /// none is left, or without it).
    pub fn take_closed(&mut self) -> Option<(ConnId, S)> {
        self.closed.as_mut()?.pop()
    }

    /// Registers an accepted connection with the state `make` builds for it, or refuses it
    /// (counted; the socket is dropped, so the peer reads end of stream).
    pub fn accept(
        &mut self,
        ctx: &mut Ctx<'_>,
        socket: impl Into<Incoming>,
        make: impl FnOnce(ConnId) -> S,
    ) -> Result<ConnId, Refused> {
        let socket = socket.into();
        if self.open >= self.config.max_connections {
            self.refused();
            return Err(Refused::Full { open: self.open });
        }
        let index = match self.free.pop_front() {
            Some(index) => index,
            None => {
                // Below max_connections <= MAX_CONNECTIONS: every slot is open, so the index fits.
                self.slots.push(Slot { generation: 0, conn: None });
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self.slots[index as usize].generation;
        let id = ConnId { index, generation };
        if let Err(e) = ctx.open(id.local(), socket) {
            // The slot was never used: it goes back first, with its generation.
            self.free.push_front(index);
            self.refused();
            return Err(Refused::Open(e));
        }
        self.slots[index as usize].conn = Some(Conn {
            state: make(id),
            ring: RecvRing::new(self.config.max_recv_buffer),
            pending: 0,
            held: 0,
            counted: 0,
            stalled_since: None,
            deadline: None,
            armed: None,
            closing: None,
        });
        self.open += 1;
        self.stats.accepted += 1;
        self.stats.open = self.open as u64;
        if let Some(c) = &self.counters {
            c.accepted.inc();
            c.open.set(self.open as u64);
        }
        Ok(id)
    }

    /// Routes a completion of the agent: a connection's is handled here (accounting, timers,
    /// write timeout, graceful closes) and reported as what it means for the agent; any other
    /// comes back as [`ConnEvent::Other`].
    pub fn event(&mut self, ctx: &mut Ctx<'_>, completion: Completion) -> ConnEvent {
        let Some(id) = ConnId::of(completion.token()) else {
            return ConnEvent::Other(completion);
        };
        if matches!(completion, Completion::Accepted { .. } | Completion::Readable { .. }) {
            // Not something a connection produces: an agent id that looks like one.
            return ConnEvent::Other(completion);
        }
        let Some(conn) = self.conn(id) else { return ConnEvent::Stale };
        let closing = conn.closing;
        match completion {
            Completion::Received { buf, .. } => {
                if closing.is_some() {
                    return ConnEvent::Handled; // closing: what it says goes unread
                }
                match self.sync(ctx, id, false) {
                    Some(reason) => ConnEvent::Closed { id, reason },
                    None => ConnEvent::Received { id, buf },
                }
            }
            Completion::Sent { .. } => {
                if let Some(reason) = self.sync(ctx, id, true) {
                    return ConnEvent::Closed { id, reason };
                }
                match closing {
                    Some(reason) if self.conn(id).is_some_and(|c| c.pending == 0) => {
                        self.finish(ctx, id, Some(reason));
                        ConnEvent::Closed { id, reason }
                    }
                    Some(_) => ConnEvent::Handled,
                    None => ConnEvent::Sent { id },
                }
            }
            Completion::Closed { .. } => match closing {
                Some(_) => ConnEvent::Handled,
                None => ConnEvent::PeerClosed { id },
            },
            Completion::Failed { error, .. } => {
                tracing::debug!(%error, "connection failed, closing it");
                // A send to a peer that is gone; a graceful close counts as what it was for.
                let reason = closing.unwrap_or(CloseReason::Peer);
                self.finish(ctx, id, Some(reason));
                ConnEvent::Closed { id, reason }
            }
            Completion::Timer { .. } => self.on_timer(ctx, id),
            other @ (Completion::Connected { .. }
            | Completion::Accepted { .. }
            | Completion::Readable { .. }) => ConnEvent::Other(other),
        }
    }

    /// The state of an open connection.
    pub fn get(&self, id: ConnId) -> Option<&S> {
        self.conn(id).map(|c| &c.state)
    }

    /// Mutable [`get`](Self::get).
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut S> {
        self.conn_mut(id).map(|c| &mut c.state)
    }

    /// The reassembly ring of an open connection.
    pub fn ring(&self, id: ConnId) -> Option<&RecvRing> {
        self.conn(id).map(|c| &c.ring)
    }

    /// Lends an open connection's state and reassembly ring without a new chunk: to take
    /// records a paused connection's ring still holds. What the ring holds counts in
    /// [`buffered`](Self::buffered) as of the next table call for the connection.
    pub fn parts_mut(&mut self, id: ConnId) -> Option<(&mut S, &mut RecvRing)> {
        self.conn_mut(id).map(|c| (&mut c.state, &mut c.ring))
    }

    /// Copies a received chunk into the connection's ring and lends the state and the ring, to
    /// take whole records out ([`RecvRing::peek`], [`RecvRing::consume`]). A ring over
    /// [`ConnConfig::max_recv_buffer`] closes the connection ([`CloseReason::Budget`]). What
    /// the ring holds counts in [`buffered`](Self::buffered) as of the next table call for the
    /// connection.
    pub fn receive(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: ConnId,
        buf: RecvBuf,
    ) -> Result<(&mut S, &mut RecvRing), SendError> {
        let pushed = {
            let slot = self.slots.get_mut(id.index()).filter(|s| s.generation == id.generation);
            let Some(conn) = slot.and_then(|s| s.conn.as_mut()) else {
                return Err(SendError::NotOpen);
            };
            conn.ring.push(ctx.reactor().data(&buf))
        };
        if let Err(full) = pushed {
            tracing::debug!(%full, "connection over its receive buffer limit, closing it");
            self.finish(ctx, id, Some(CloseReason::Budget));
            return Err(SendError::Closed(CloseReason::Budget));
        }
        self.recount(id);
        let conn = self.conn_mut(id).ok_or(SendError::NotOpen)?;
        Ok((&mut conn.state, &mut conn.ring))
    }

    /// Queues a copy of `data` for the connection (see [`super::Ctx::send`]) and checks its
    /// output limits.
    pub fn send(&mut self, ctx: &mut Ctx<'_>, id: ConnId, data: &[u8]) -> Result<(), SendError> {
        if self.conn(id).is_none() {
            return Err(SendError::NotOpen);
        }
        if ctx.send(id.local(), data).is_err() {
            self.finish(ctx, id, Some(CloseReason::Peer));
            return Err(SendError::Closed(CloseReason::Peer));
        }
        self.sync(ctx, id, false).map_or(Ok(()), |reason| Err(SendError::Closed(reason)))
    }

    /// Queues a copy of output the connection's state holds (a protocol core's output buffer,
    /// lent by `output`, e.g. `Session::output`), and checks the output limits; returns how
    /// many bytes were queued, for the state to mark them written.
    pub fn send_from(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: ConnId,
        output: impl FnOnce(&S) -> &[u8],
    ) -> Result<usize, SendError> {
        let queued = {
            let Some(conn) = self.conn(id) else { return Err(SendError::NotOpen) };
            let data = output(&conn.state);
            ctx.send(id.local(), data).map(|()| data.len())
        };
        let Ok(n) = queued else {
            self.finish(ctx, id, Some(CloseReason::Peer));
            return Err(SendError::Closed(CloseReason::Peer));
        };
        self.sync(ctx, id, false).map_or(Ok(n), |reason| Err(SendError::Closed(reason)))
    }

    /// Queues `data` itself for the connection, without a copy (see
    /// [`super::Ctx::send_owned`]), and checks its output limits.
    pub fn send_owned(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: ConnId,
        data: Vec<u8>,
    ) -> Result<(), SendError> {
        if self.conn(id).is_none() {
            return Err(SendError::NotOpen);
        }
        if ctx.send_owned(id.local(), data).is_err() {
            self.finish(ctx, id, Some(CloseReason::Peer));
            return Err(SendError::Closed(CloseReason::Peer));
        }
        self.sync(ctx, id, false).map_or(Ok(()), |reason| Err(SendError::Closed(reason)))
    }

    /// Sets the agent's deadline for the connection (`None`: none): [`ConnEvent::Deadline`]
    /// comes in the first pass at or after it. Typically a protocol core's `poll_timeout()`,
    /// set after every call into the core; moving it later costs nothing (see the module
    /// docs).
    pub fn set_deadline(&mut self, ctx: &mut Ctx<'_>, id: ConnId, deadline: Option<Instant>) {
        if let Some(conn) = self.conn_mut(id) {
            conn.deadline = deadline;
            self.rearm(ctx, id);
        }
    }

    /// Tells the table how many bytes the connection's state buffers (a protocol core's partial
    /// input and unsent output), for [`buffered`](Self::buffered).
    pub fn set_held(&mut self, id: ConnId, bytes: usize) {
        if let Some(conn) = self.conn_mut(id) {
            conn.held = bytes;
            self.recount(id);
        }
    }

    /// Closes the connection once its queued output is written: receiving stops now, and the
    /// connection closes at once if nothing is pending, else when its output is written
    /// ([`ConnEvent::Closed`] with `reason`) or when the write timeout strikes (still counted
    /// as `reason`). Closing a closing connection does nothing.
    pub fn close(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: CloseReason) {
        let Some(conn) = self.conn(id) else { return };
        if conn.closing.is_some() {
            return;
        }
        if self.sync(ctx, id, false).is_some() {
            return; // closed by the check
        }
        if self.conn(id).is_some_and(|c| c.pending == 0) {
            self.finish(ctx, id, Some(reason));
            return;
        }
        if let Some(conn) = self.conn_mut(id) {
            conn.closing = Some(reason);
        }
        // A peer that keeps sending is not read (and not woken for) while its replies drain,
        // and what it sent after the close costs no receive buffer.
        let _ = ctx.discard_input(id.local());
        self.rearm(ctx, id);
    }

    /// Closes the connection now, dropping queued output; counted as `reason`.
    pub fn abort(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: CloseReason) {
        if self.conn(id).is_some() {
            self.finish(ctx, id, Some(reason));
        }
    }

    /// Closes every connection now (agent shutdown); not counted as closes.
    pub fn close_all(&mut self, ctx: &mut Ctx<'_>) {
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.conn.is_some() {
                let id = ConnId { index: index as u32, generation: slot.generation };
                self.finish(ctx, id, None);
            }
        }
    }

    /// Whether `id` is open (a closing connection is open until it closes).
    pub fn contains(&self, id: ConnId) -> bool {
        self.conn(id).is_some()
    }

    /// Output of `id` queued and not yet written (0 for an unknown connection).
    pub fn pending(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.pending)
    }

    /// Whether `id` is closing gracefully ([`close`](Self::close)).
    pub fn is_closing(&self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| c.closing.is_some())
    }

    /// The open connections, in slot order.
    pub fn ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(i, s)| ConnId { index: i as u32, generation: s.generation })
    }

    /// Connections open.
    pub fn len(&self) -> usize {
        self.open
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.open == 0
    }

    /// Bytes all open connections hold: pending output, reassembly rings, and what
    /// [`set_held`](Self::set_held) reported; each as of the table's last call for that
    /// connection.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The counts so far.
    pub fn stats(&self) -> &ConnStats {
        &self.stats
    }

    /// The limits.
    pub fn config(&self) -> &ConnConfig {
        &self.config
    }

    fn conn(&self, id: ConnId) -> Option<&Conn<S>> {
        let slot = self.slots.get(id.index())?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_ref()
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn<S>> {
        let slot = self.slots.get_mut(id.index())?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_mut()
    }

    /// Looks at the connection's output now: progress (`wrote`: a send completed, or fewer
    /// bytes pending than at the last look), the write deadline, the limits, the timer.
    /// Returns the reason if that closed it.
    fn sync(&mut self, ctx: &mut Ctx<'_>, id: ConnId, wrote: bool) -> Option<CloseReason> {
        let now = ctx.now;
        let pending = ctx.pending(id.local());
        let (max, timeout) = (self.config.max_pending_output, self.config.write_timeout);
        let conn = self.conn_mut(id)?;
        if pending == 0 {
            conn.stalled_since = None;
        } else if wrote || pending < conn.pending || conn.stalled_since.is_none() {
            // Bytes were written since the last look, or output just became pending.
            conn.stalled_since = Some(now);
        }
        conn.pending = pending;
        let stalled = conn.stalled_since.is_some_and(|since| now >= since + timeout);
        self.recount(id);
        let verdict = if pending > max {
            tracing::debug!(pending, max, "connection over its pending output limit, closing it");
            Some(CloseReason::Budget)
        } else if stalled {
            tracing::debug!(pending, "connection's output stalled past the write timeout");
            Some(CloseReason::WriteTimeout)
        } else {
            None
        };
        match verdict {
            Some(reason) => {
                // A graceful close that ran out of time still counts as what it was for.
                let counted = self.conn(id).and_then(|c| c.closing).unwrap_or(reason);
                self.finish(ctx, id, Some(counted));
                Some(counted)
            }
            None => {
                self.rearm(ctx, id);
                None
            }
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: ConnId) -> ConnEvent {
        let now = ctx.now;
        let Some(conn) = self.conn_mut(id) else { return ConnEvent::Stale };
        conn.armed = None;
        let due = conn.closing.is_none() && conn.deadline.is_some_and(|at| at <= now);
        if due {
            conn.deadline = None; // the agent sets the next one
        }
        // The write deadline and the limits first (re-arming for what is left).
        if let Some(reason) = self.sync(ctx, id, false) {
            return ConnEvent::Closed { id, reason };
        }
        if due {
            ConnEvent::Deadline { id }
        } else {
            ConnEvent::Handled // early: the deadline moved later; sync re-armed for it
        }
    }

    /// Arms the connection's timer for the earlier of its deadlines, unless it is armed for an
    /// earlier time already (it then re-arms when it fires).
    fn rearm(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let timeout = self.config.write_timeout;
        let Some(conn) = self.conn_mut(id) else { return };
        let write = conn.stalled_since.map(|since| since + timeout);
        let agent = if conn.closing.is_some() { None } else { conn.deadline };
        let want = match (write, agent) {
            (Some(w), Some(a)) => Some(w.min(a)),
            (w, a) => w.or(a),
        };
        match (want, conn.armed) {
            (None, Some(_)) => {
                conn.armed = None;
                ctx.cancel_timer(id.local());
            }
            (Some(at), armed) if armed.is_none_or(|armed| at < armed) => {
                conn.armed = Some(at);
                // A connection's local id is below LOCAL_LIMIT (from_local), so this succeeds.
                let armed = ctx.timer(at, id.local());
                debug_assert!(armed.is_ok());
            }
            _ => {}
        }
    }

    /// Brings the table's total up to date with the connection's bytes.
    fn recount(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else { return };
        let now = conn.pending + conn.held + conn.ring.len();
        let before = std::mem::replace(&mut conn.counted, now);
        self.buffered = self.buffered - before + now;
    }

    /// Closes the connection at once and frees its slot; counts `reason` if given.
    fn finish(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: Option<CloseReason>) {
        let Some(slot) = self.slots.get_mut(id.index()) else { return };
        if slot.generation != id.generation {
            return;
        }
        let Some(conn) = slot.conn.take() else { return };
        slot.generation = slot.generation.wrapping_add(1) & GENERATION_MASK;
        self.free.push_back(id.index);
        self.buffered -= conn.counted;
        // Counted before the socket goes, so whoever sees it gone sees it counted.
        self.open -= 1;
        self.stats.open = self.open as u64;
        if let Some(reason) = reason {
            self.stats.closed[reason.index()] += 1;
        }
        if let Some(c) = &self.counters {
            c.open.set(self.open as u64);
            if let Some(reason) = reason {
                c.closed[reason.index()].inc();
            }
        }
        ctx.close(id.local());
        if conn.armed.is_some() {
            ctx.cancel_timer(id.local());
        }
        if let Some(closed) = &mut self.closed {
            closed.push((id, conn.state));
        }
    }

    fn refused(&mut self) {
        self.stats.refused += 1;
        if let Some(c) = &self.counters {
            c.refused.inc();
        }
    }
}

/// A connection's receive reassembly buffer: a ring of bytes, for records that must be read
/// contiguous.
///
/// Bytes are appended where the last ones ended, wrapping at the end of the buffer; consuming a
/// record only moves the start, so no byte is shifted per record (as `Vec::drain` would).
/// [`peek`](Self::peek) lends the first `n` bytes as one slice: in place, unless they wrap, in
/// which case the ring is rotated once so that they start at 0 (a copy of what it holds, which
/// happens at most once per lap of the buffer). The buffer is allocated on first use, grows by
/// doubling with what is held up to its limit, and shrinks once a large record is consumed:
/// freed when empty, halved or more when at most a quarter is used, never below
/// [`RETAIN_BYTES`](Self::RETAIN_BYTES). So it never holds more than four times its bytes, or
/// `RETAIN_BYTES`.
#[derive(Debug)]
pub struct RecvRing {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
    limit: usize,
    /// The size kept when the ring empties (see [`set_retain`](Self::set_retain)).
    retain: usize,
}

/// [`RecvRing::push`] would take the ring past its limit; nothing was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("receive buffer over its limit: {need} > {limit} bytes")]
pub struct RingFull {
    /// Bytes the ring would hold.
    pub need: usize,
    /// Its limit.
    pub limit: usize,
}

impl RecvRing {
    /// The most capacity a ring keeps once what it holds is small again.
    pub const RETAIN_BYTES: usize = 16 * 1024;
    /// The smallest buffer a ring allocates.
    const MIN_BYTES: usize = 512;

    /// An empty ring that holds at most `limit` bytes (allocates nothing yet).
    pub fn new(limit: usize) -> Self {
        RecvRing { buf: Box::default(), head: 0, len: 0, limit, retain: Self::RETAIN_BYTES }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer's size (memory held).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The most bytes the ring holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Appends `data`, growing the buffer if needed; refuses (appending nothing) past the
    /// limit.
    pub fn push(&mut self, data: &[u8]) -> Result<(), RingFull> {
        if data.is_empty() {
            return Ok(());
        }
        let need = self.len + data.len();
        if need > self.limit {
            return Err(RingFull { need, limit: self.limit });
        }
        if need > self.buf.len() {
            let size = need
                .next_power_of_two()
                .max(2 * self.buf.len())
                .max(Self::MIN_BYTES)
                .min(self.limit)
                .max(need);
            self.relocate(size);
        }
        let cap = self.buf.len();
        let tail = (self.head + self.len) % cap;
        let first = data.len().min(cap - tail);
        self.buf[tail..tail + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        self.len = need;
        Ok(())
    }

    /// What the ring holds, in order: the part up to the end of the buffer, then the part that
    /// wrapped to its start.
    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        let cap = self.buf.len();
        if self.head + self.len <= cap {
            (&self.buf[self.head..self.head + self.len], &[])
        } else {
            (&self.buf[self.head..], &self.buf[..self.head + self.len - cap])
        }
    }

    /// The first `n` bytes as one slice (`None` if fewer are held). In place unless they wrap
    /// around the end of the buffer; then the ring is rotated so that they start at 0.
    pub fn peek(&mut self, n: usize) -> Option<&[u8]> {
        if n > self.len {
            return None;
        }
        if self.head + n > self.buf.len() {
            self.buf.rotate_left(self.head);
            self.head = 0;
        }
        Some(&self.buf[self.head..self.head + n])
    }

    /// Keeps a buffer of up to `bytes` (at most the limit) when the ring empties, instead of
    /// [`RETAIN_BYTES`](Self::RETAIN_BYTES): for a connection whose records are all large
    /// (the frame worker's, once a session negotiated its frame size), so every record does
    /// not grow the buffer again from nothing (reallocations, page faults).
    pub fn set_retain(&mut self, bytes: usize) {
        self.retain = bytes.clamp(Self::RETAIN_BYTES, self.limit.max(Self::RETAIN_BYTES));
    }

    /// Drops the first `n` bytes (all of them if fewer are held); shrinks the buffer if it had
    /// grown past what it retains ([`RETAIN_BYTES`](Self::RETAIN_BYTES) unless
    /// [`set_retain`](Self::set_retain) said more) and a quarter or less of it is used.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
            if self.buf.len() > self.retain {
                self.buf = Box::default();
            }
            return;
        }
        self.head = (self.head + n) % self.buf.len();
        if self.buf.len() > self.retain && self.len <= self.buf.len() / 4 {
            // At most a quarter used: half the size or less, and never under what it holds.
            self.relocate(self.retain.max((2 * self.len).next_power_of_two()));
        }
    }

    /// Drops everything held and frees a buffer over [`RETAIN_BYTES`](Self::RETAIN_BYTES).
    pub fn clear(&mut self) {
        self.consume(self.len);
    }

    /// Moves what is held to the start of a new buffer of `size` bytes (at least `len`).
    #[cold]
    fn relocate(&mut self, size: usize) {
        debug_assert!(size >= self.len);
        let mut buf = vec![0u8; size].into_boxed_slice();
        let (a, b) = self.as_slices();
        buf[..a.len()].copy_from_slice(a);
        buf[a.len()..a.len() + b.len()].copy_from_slice(b);
        self.buf = buf;
        self.head = 0;
    }
}

#[cfg(test)]
mod tests;
