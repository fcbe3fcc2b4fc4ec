//! What a lane runs.

use std::time::Instant;

use super::reactor::{Completion, Reactor, Token};

/// A unit of work a lane owns: a socket server, a ring poller, a device.
///
/// A lane calls [`on_start`](Agent::on_start) once on its own thread (pinned), then in every
/// pass hands the agent its reactor completions ([`on_completion`](Agent::on_completion)) and
/// calls [`do_work`](Agent::do_work), and finally [`on_close`](Agent::on_close) at shutdown.
/// None of these may block: an agent that waits on anything stalls every agent of its lane.
pub trait Agent: Send {
    /// Short name, for logs, status and metrics.
    fn name(&self) -> &str;

    /// Called once on the lane's thread before the first pass: open sockets, register them.
    fn on_start(&mut self, _ctx: &mut Ctx<'_>) -> std::io::Result<()> {
        Ok(())
    }

    /// A completion for one of this agent's tokens.
    fn on_completion(&mut self, _ctx: &mut Ctx<'_>, _completion: Completion) {}

    /// One pass of work; returns how much was done (0 = nothing, which lets the lane idle).
    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize;

    /// Called once at shutdown on the lane's thread: flush, close, unlink.
    fn on_close(&mut self, _ctx: &mut Ctx<'_>) {}
}

/// What an agent sees of its lane during a call: the time of the pass and the lane's reactor,
/// through which it opens, sends and closes. Tokens an agent uses are its own: the lane tags
/// them with the agent's index so completions come back to the right agent.
pub struct Ctx<'a> {
    /// Time of the current pass (one clock read per pass, taken before the reactor is polled:
    /// a completion handled in this pass may be for an event slightly after `now`).
    pub now: Instant,
    pub(super) reactor: &'a mut Reactor,
    pub(super) agent: u8,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("now", &self.now).field("agent", &self.agent).finish()
    }
}

impl<'a> Ctx<'a> {
    /// The lane's reactor.
    pub fn reactor(&mut self) -> &mut Reactor {
        self.reactor
    }

    /// The reactor token for this agent's local token `local` (below 2^56).
    pub fn token(&self, local: u64) -> Token {
        debug_assert!(local < 1 << 56, "agent-local tokens must fit in 56 bits");
        Token((u64::from(self.agent) << 56) | local)
    }

    /// Registers a listener under this agent's local id `local` (see [`Reactor::listen`]).
    pub fn listen(
        &mut self,
        local: u64,
        listener: impl Into<std::os::fd::OwnedFd>,
    ) -> std::io::Result<()> {
        let token = self.token(local);
        self.reactor.listen(listener.into(), token)
    }

    /// Registers a connected socket under `local` (see [`Reactor::open`]).
    pub fn open(&mut self, local: u64, socket: std::os::fd::OwnedFd) -> std::io::Result<()> {
        let token = self.token(local);
        self.reactor.open(socket, token)
    }

    /// Queues bytes for the socket `local` (see [`Reactor::send`]).
    pub fn send(&mut self, local: u64, data: &[u8]) -> std::io::Result<()> {
        let token = self.token(local);
        self.reactor.send(token, data)
    }

    /// Bytes queued for `local` and not yet written (see [`Reactor::pending`]).
    pub fn pending(&self, local: u64) -> usize {
        self.reactor.pending(self.token(local))
    }

    /// Closes the socket `local` (see [`Reactor::close`]).
    pub fn close(&mut self, local: u64) {
        let token = self.token(local);
        self.reactor.close(token);
    }

    /// The agent-local part of a token this agent created.
    pub fn local(token: Token) -> u64 {
        token.0 & ((1 << 56) - 1)
    }

    pub(super) fn owner(token: Token) -> usize {
        (token.0 >> 56) as usize
    }
}
