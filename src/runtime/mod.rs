//! The runtime: lanes (pinned threads that loop over their agents), idle strategies, the
//! reactor each lane polls, and shutdown.
//!
//! A lane never blocks on one socket or one queue: each pass it polls its reactor (non-blocking),
//! hands completions to the agents that own them, fires the timers that are due, calls every
//! agent's [`Agent::do_work`], and hands the output of the pass to the kernel in one
//! submission. A pass that did no work idles with the lane's [`IdleStrategy`], whose parking
//! step waits on the reactor with a bounded timeout (never past the lane's next timer), so I/O
//! wakes the lane at once, timers fire on time, and a shutdown request is seen within that
//! bound.
//!
//! Agents name what they register and the timers they arm with ids of their own (see [`Ctx`]);
//! the reactor ([`reactor`]) and the timers ([`Ctx::timer`]) report back as [`Completion`]s.
//! An agent that serves many sockets keeps them in a [`ConnTable`] ([`conns`]): ids with
//! generations, an accept limit, reassembly rings, deadlines on the lane's timers, write
//! timeouts, output accounting and the standard counters.
//!
//! ```no_run
//! use corelane::runtime::{Agent, Ctx, IdleStrategy, LaneSpec, Runtime};
//!
//! struct Counter(u64);
//! impl Agent for Counter {
//!     fn name(&self) -> &str { "counter" }
//!     fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize { self.0 += 1; 0 }
//! }
//! let runtime = Runtime::start(vec![LaneSpec {
//!     name: "main".into(),
//!     core: None,
//!     idle: IdleStrategy::backoff(),
//!     agents: vec![Box::new(Counter(0))],
//!     waker: None,
//! }], corelane::runtime::ReactorChoice::Auto).unwrap();
//! runtime.shutdown();
//! runtime.join();
//! ```

mod agent;
pub mod conns;
mod idle;
mod lane;
mod link;
pub mod reactor;
mod shutdown;
mod timer;

pub use agent::{Agent, Ctx, LOCAL_LIMIT};
pub use conns::{
    CloseReason, ConnConfig, ConnCounters, ConnEvent, ConnId, ConnStats, ConnTable, RecvRing,
    Refused, RingFull, SendError, CONN_BIT, MAX_CONNECTIONS,
};
pub use idle::{IdleStrategy, FIRST_PARK};
pub use lane::{
    Board, Joined, LaneCommand, LaneFailure, LaneSpec, LaneStats, LaneStatsSnapshot, Runtime,
    RuntimeError,
};
pub use link::{link, LaneWaker, LinkRx, LinkTx};
pub use reactor::{
    Completion, ConnectAddr, Incoming, PeerCred, Reactor, ReactorChoice, ReactorConfig,
    ReactorKind, RecvBuf, SocketOptions, Token, UringOptions,
};
pub use shutdown::Shutdown;
