//! What a lane runs.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Instant;

use super::reactor::{Completion, ConnectAddr, Incoming, PeerCred, Reactor, SocketOptions, Token};
use super::timer::Timers;

/// A unit of work a lane owns: a socket server, a ring poller, a device.
///
/// A lane calls [`on_start`](Agent::on_start) once on its own thread (pinned), then in every
/// pass hands the agent its reactor completions and expired timers
/// ([`on_completion`](Agent::on_completion)) and calls [`do_work`](Agent::do_work), and finally
/// [`on_stopping`](Agent::on_stopping) and [`on_close`](Agent::on_close) at shutdown. None of these may block: an agent that waits on
/// anything stalls every agent of its lane.
pub trait Agent: Send {
    /// Short name, for logs, status and metrics.
    fn name(&self) -> &str;

    /// Called once on the lane's thread before the first pass: open sockets, register them,
    /// arm timers. No lane runs a pass before every agent of every lane has started, so this
    /// must not wait on another lane's passes. An error (or a panic) fails the runtime's start;
    /// the agents that had started then get `on_close` without `on_stopping`.
    fn on_start(&mut self, _ctx: &mut Ctx<'_>) -> io::Result<()> {
        Ok(())
    }

    /// A completion for one of this agent's tokens (reactor operations and timers).
    fn on_completion(&mut self, _ctx: &mut Ctx<'_>, _completion: Completion) {}

    /// One pass of work; returns how much was done (0 = nothing, which lets the lane idle).
    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize;

    /// Called once when the lane stops after a successful start, before a short drain (a few passes over every agent
    /// of every lane, `STOP_DRAIN`) and then `on_close`: queue last messages here (a
    /// driver's shutdown notice), so they cross links and reach the kernel.
    fn on_stopping(&mut self, _ctx: &mut Ctx<'_>) {}

    /// Called once at shutdown on the lane's thread: flush, close, unlink.
    fn on_close(&mut self, _ctx: &mut Ctx<'_>) {}
}

/// The most agent-local ids: they have 56 bits (the lane adds the agent's index above them).
pub const LOCAL_LIMIT: u64 = 1 << 56;

/// What an agent sees of its lane during a call: the time of the pass, the lane's reactor and
/// its timers.
///
/// Everything an agent registers is named by an agent-local id of its choice (below
/// [`LOCAL_LIMIT`]): the lane makes a [`Token`] of it by adding the agent's index, so
/// completions come back to the right agent, and [`Ctx::local`] gives the id back. Every method
/// that takes a local id refuses one of 56 bits or more with [`io::ErrorKind::InvalidInput`]
/// (in release builds too: such an id would otherwise name another agent's token); the
/// methods that cannot fail treat it as the id of nothing (`pending` is 0, `close` and
/// `cancel_timer` do nothing). Timers have ids of their own: timer 5 and socket 5 are
/// different things.
pub struct Ctx<'a> {
    /// Time of the current pass (one clock read per pass, taken before the reactor is polled:
    /// a completion handled in this pass may be for an event slightly after `now`).
    pub now: Instant,
    pub(super) reactor: &'a mut Reactor,
    pub(super) timers: &'a mut Timers,
    pub(super) agent: u8,
    /// This `do_work` is the lane's last look before it parks.
    pub(super) last_look: bool,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("now", &self.now).field("agent", &self.agent).finish()
    }
}

impl<'a> Ctx<'a> {
    /// Whether this `do_work` is the lane's last look before it parks (in the reactor, until
    /// I/O, a timer or a link's wake-up): an agent that polls memory no reactor watches (a
    /// shared-memory ring) arms that memory's doorbell here, and returns non-zero if it found
    /// work after arming (then the lane does not park). Every other pass says `false`.
    pub fn is_last_look(&self) -> bool {
        self.last_look
    }

    /// The lane's reactor.
    pub fn reactor(&mut self) -> &mut Reactor {
        self.reactor
    }

    /// The reactor token for this agent's local id `local`, for calling the reactor directly.
    pub fn token(&self, local: u64) -> io::Result<Token> {
        if local >= LOCAL_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("agent-local id {local:#x} does not fit in 56 bits"),
            ));
        }
        Ok(Token((u64::from(self.agent) << 56) | local))
    }

    /// The agent-local id of a token this agent created.
    pub fn local(token: Token) -> u64 {
        token.0 & (LOCAL_LIMIT - 1)
    }

    /// Registers a listener under `local` (see [`Reactor::listen`]).
    pub fn listen(&mut self, local: u64, listener: impl Into<OwnedFd>) -> io::Result<()> {
        let token = self.token(local)?;
        self.reactor.listen(listener.into(), token)
    }

    /// Registers a listener whose connections use `options` (see [`Reactor::listen_with`]).
    pub fn listen_with(
        &mut self,
        local: u64,
        listener: impl Into<OwnedFd>,
        options: SocketOptions,
    ) -> io::Result<()> {
        let token = self.token(local)?;
        self.reactor.listen_with(listener.into(), token, options)
    }

    /// Registers a connected socket under `local`: an accepted [`Incoming`] (with its
    /// listener's options) or any [`OwnedFd`] (see [`Reactor::open`]).
    pub fn open(&mut self, local: u64, socket: impl Into<Incoming>) -> io::Result<()> {
        let token = self.token(local)?;
        self.reactor.open(socket, token)
    }

    /// [`open`](Self::open) with explicit options (see [`Reactor::open_with`]).
    pub fn open_with(
        &mut self,
        local: u64,
        socket: impl Into<OwnedFd>,
        options: SocketOptions,
    ) -> io::Result<()> {
        let token = self.token(local)?;
        self.reactor.open_with(socket.into(), token, options)
    }

    /// Connects to `addr` under `local`: [`Completion::Connected`] or [`Completion::Failed`]
    /// follows (see [`Reactor::connect`]).
    pub fn connect(&mut self, local: u64, addr: &ConnectAddr) -> io::Result<()> {
        let token = self.token(local)?;
        self.reactor.connect(addr, token)
    }

    /// [`connect`](Self::connect) with explicit options (see [`Reactor::connect_with`]).
    pub fn connect_with(
        &mut self,
        local: u64,
        addr: &ConnectAddr,
        options: SocketOptions,
    ) -> io::Result<()> {
        let token = self.token(local)?;
        self.reactor.connect_with(addr, token, options)
    }

    /// Watches `fd` for readability under `local`: one [`Completion::Readable`] per arming
    /// (see [`Reactor::watch`]).
    pub fn watch(&mut self, local: u64, fd: impl Into<OwnedFd>) -> io::Result<()> {
        let token = self.token(local)?;
        self.reactor.watch(fd.into(), token)
    }

    /// Arms the watch `local` again (see [`Reactor::rearm_watch`]).
    pub fn rearm_watch(&mut self, local: u64) -> io::Result<()> {
        let token = self.token(local)?;
        self.reactor.rearm_watch(token)
    }

    /// Queues a copy of `data` for the socket `local` (see [`Reactor::send`]).
    pub fn send(&mut self, local: u64, data: &[u8]) -> io::Result<()> {
        let token = self.token(local)?;
        self.reactor.send(token, data)
    }

    /// Queues `data` itself for the socket `local`, without a copy (see
    /// [`Reactor::send_owned`]).
    pub fn send_owned(&mut self, local: u64, data: Vec<u8>) -> io::Result<()> {
        let token = self.token(local)?;
        self.reactor.send_owned(token, data)
    }

    /// Bytes queued for `local` and not yet written (see [`Reactor::pending`]).
    pub fn pending(&self, local: u64) -> usize {
        self.token(local).map_or(0, |token| self.reactor.pending(token))
    }

    /// Stops receiving on the connection `local` until [`resume`](Self::resume) (see
    /// [`Reactor::pause`]).
    pub fn pause(&mut self, local: u64) -> io::Result<()> {
        let token = self.token(local)?;
        self.reactor.pause(token)
    }

    /// Stops receiving on `local` for good, dropping what was not delivered (see
    /// [`Reactor::discard_input`]).
    pub fn discard_input(&mut self, local: u64) -> io::Result<()> {
        let token = self.token(local)?;
        self.reactor.discard_input(token)
    }

    /// Receives on `local` again, held-back bytes first (see [`Reactor::resume`]).
    pub fn resume(&mut self, local: u64) -> io::Result<()> {
        let token = self.token(local)?;
        self.reactor.resume(token)
    }

    /// The credentials of the peer of the Unix socket `local` (see
    /// [`Reactor::peer_credentials`]).
    pub fn peer_credentials(&self, local: u64) -> io::Result<PeerCred> {
        let token = self.token(local)?;
        self.reactor.peer_credentials(token)
    }

    /// The descriptor registered under `local`, lent (see [`Reactor::fd`]).
    pub fn fd(&self, local: u64) -> Option<BorrowedFd<'_>> {
        self.reactor.fd(self.token(local).ok()?)
    }

    /// Closes whatever is registered under `local` (see [`Reactor::close`]).
    pub fn close(&mut self, local: u64) {
        if let Ok(token) = self.token(local) {
            self.reactor.close(token);
        }
    }

    /// Arms the timer `local` to fire at `at`: a [`Completion::Timer`] comes in the first pass
    /// that starts at or after `at` (at once, the next pass, if `at` has passed), and the lane
    /// parks no longer than until then. Arming an armed timer replaces its deadline. A timer
    /// fires once; arm it again for the next time.
    pub fn timer(&mut self, at: Instant, local: u64) -> io::Result<()> {
        let token = self.token(local)?;
        self.timers.arm(token, at);
        Ok(())
    }

    /// Disarms the timer `local`; true if it was armed (it then does not fire).
    pub fn cancel_timer(&mut self, local: u64) -> bool {
        self.token(local).is_ok_and(|token| self.timers.cancel(token))
    }

    /// When the timer `local` fires, if it is armed.
    pub fn timer_deadline(&self, local: u64) -> Option<Instant> {
        self.timers.deadline(self.token(local).ok()?)
    }

    pub(super) fn owner(token: Token) -> usize {
        (token.0 >> 56) as usize
    }
}
