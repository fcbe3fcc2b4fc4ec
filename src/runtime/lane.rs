//! Lanes: pinned threads that loop over their agents.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::agent::{Agent, Ctx};
use super::idle::{IdleStrategy, Idler, Step, NAMES};
use super::link::LaneWaker;
use super::reactor::{Completion, Reactor, ReactorChoice, ReactorConfig, ReactorKind, Token};
use super::shutdown::Shutdown;
use super::timer::Timers;

/// Agent index the lane keeps for itself (its waker's watch): agents are 0..=254.
const LANE_AGENT: u8 = u8::MAX;
/// The token of the lane's own waker watch.
const WAKER_TOKEN: Token = Token((LANE_AGENT as u64) << 56);

/// How often a lane publishes its pass-duration quantiles to its [`LaneStats`].
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// How long a stopping lane keeps passing after its agents' `on_stopping`, so their last
/// messages go out (see `Lane::drain`). Every lane drains at once, so a stop takes this long
/// more, not this long per lane.
pub const STOP_DRAIN: Duration = Duration::from_millis(10);

/// What to run on one lane.
pub struct LaneSpec {
    /// Name for logs, status and metrics.
    pub name: String,
    /// The core to pin the lane's thread to (`None`: not pinned).
    pub core: Option<usize>,
    /// What the lane does after a pass with no work.
    pub idle: IdleStrategy,
    /// The agents, run in this order every pass. At most 254.
    pub agents: Vec<Box<dyn Agent>>,
    /// How other lanes wake this one when it parks (the consumer end of its
    /// [`link`](super::link)s). `None`: nothing wakes a park but I/O and timers, so items a
    /// link brings wait for the park to end (at most the idle strategy's longest park).
    pub waker: Option<LaneWaker>,
}

impl std::fmt::Debug for LaneSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let agents: Vec<&str> = self.agents.iter().map(|a| a.name()).collect();
        f.debug_struct("LaneSpec")
            .field("name", &self.name)
            .field("core", &self.core)
            .field("idle", &self.idle)
            .field("agents", &agents)
            .field("waker", &self.waker.is_some())
            .finish()
    }
}

/// Why the runtime did not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A lane names a core this machine (or this process's affinity mask) does not have.
    #[error("lane '{lane}': core {core} is not available; available cores: {available:?}")]
    NoSuchCore {
        /// The lane.
        lane: String,
        /// The core asked for.
        core: usize,
        /// The cores the process may run on.
        available: Vec<usize>,
    },
    /// Pinning failed.
    #[error("lane '{lane}': cannot pin to core {core}")]
    Pin {
        /// The lane.
        lane: String,
        /// The core.
        core: usize,
    },
    /// The reactor could not be set up.
    #[error("lane '{lane}': cannot set up the {choice:?} reactor: {source}")]
    Reactor {
        /// The lane.
        lane: String,
        /// What was asked for.
        choice: ReactorChoice,
        /// Why it failed.
        source: std::io::Error,
    },
    /// An agent failed to start.
    #[error("lane '{lane}': agent '{agent}' failed to start: {source}")]
    AgentStart {
        /// The lane.
        lane: String,
        /// The agent.
        agent: String,
        /// Why.
        source: std::io::Error,
    },
    /// Too many agents on one lane.
    #[error("lane '{lane}': {count} agents, at most 254")]
    TooManyAgents {
        /// The lane.
        lane: String,
        /// How many were given.
        count: usize,
    },
    /// The lane's thread could not be spawned or died before it started.
    #[error("lane '{lane}': thread failed to start: {reason}")]
    Thread {
        /// The lane.
        lane: String,
        /// Why.
        reason: String,
    },
}

/// A lane's counters, written by the lane (single writer) and read by anyone. Every publish is
/// one window under the sequence lock `seq` (odd while the lane writes), so a reader sees the
/// pass quantiles, sum and count of one publish.
#[derive(Debug, Default)]
pub struct LaneStats {
    seq: AtomicU64,
    passes: AtomicU64,
    pass_sum_ns: AtomicU64,
    work: AtomicU64,
    idle_ns: AtomicU64,
    max_pass_ns: AtomicU64,
    p50_pass_ns: AtomicU64,
    p99_pass_ns: AtomicU64,
    p999_pass_ns: AtomicU64,
}

/// A copy of a lane's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaneStatsSnapshot {
    /// Lane name.
    pub name: String,
    /// Pinned core, if any.
    pub core: Option<usize>,
    /// Idle strategy name.
    pub idle: &'static str,
    /// Agent names.
    pub agents: Vec<String>,
    /// Loop passes (also the number of pass durations in the quantiles).
    pub passes: u64,
    /// Sum of the pass durations, ns (the time the lane spent in passes, not idling).
    pub pass_sum_ns: u64,
    /// Work items reported by agents plus completions handled.
    pub work: u64,
    /// Time spent idling, ns.
    pub idle_ns: u64,
    /// Longest pass, ns.
    pub max_pass_ns: u64,
    /// Pass duration quantiles, ns (published every 100 ms).
    pub p50_pass_ns: u64,
    /// 99th percentile pass duration, ns.
    pub p99_pass_ns: u64,
    /// 99.9th percentile pass duration, ns.
    pub p999_pass_ns: u64,
}

/// What agents may read about their runtime (status requests, metrics): every lane's static
/// facts and live counters, and the reactor backend. Create it before the agents, hand it to
/// the ones that report status, and pass it to [`Runtime::start_with`], which fills it before
/// any lane thread starts.
#[derive(Debug, Default)]
pub struct Board {
    lanes: std::sync::OnceLock<Vec<LaneView>>,
    reactor: std::sync::OnceLock<ReactorKind>,
}

#[derive(Debug)]
struct LaneView {
    name: String,
    core: Option<usize>,
    /// The idle strategy in force ([`IdleStrategy::index`]); a lane command may change it.
    idle_now: AtomicU64,
    agents: Vec<String>,
    stats: Arc<LaneStats>,
}

impl Board {
    /// An empty board.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Every lane's counters (empty before the runtime started): `None` for a lane whose
    /// counters could not be read consistently this time (it was descheduled, or died, in the
    /// middle of a publish). Readers that report the counters keep their last consistent copy
    /// instead, with [`refresh`](Self::refresh).
    pub fn lanes(&self) -> Vec<Option<LaneStatsSnapshot>> {
        self.lanes
            .get()
            .map_or_else(Vec::new, |lanes| lanes.iter().map(LaneView::snapshot).collect())
    }

    /// Brings `last` (one entry per lane, board order; sized here) up to date: each lane
    /// read consistently replaces its entry, any other keeps its last consistent copy
    /// (`None` until it had one), so a counter never goes back to zero and a summary never
    /// mixes two publishes. Returns how many lanes kept an older copy.
    pub fn refresh(&self, last: &mut Vec<Option<LaneStatsSnapshot>>) -> usize {
        let Some(lanes) = self.lanes.get() else {
            last.clear();
            return 0;
        };
        last.resize(lanes.len(), None);
        let mut stale = 0;
        for (view, kept) in lanes.iter().zip(last.iter_mut()) {
            match view.snapshot() {
                Some(fresh) => *kept = Some(fresh),
                None => stale += 1,
            }
        }
        stale
    }

    /// The reactor backend the lanes run (`None` while starting).
    pub fn reactor(&self) -> Option<ReactorKind> {
        self.reactor.get().copied()
    }
}

/// Running lanes.
#[derive(Debug)]
pub struct Runtime {
    lanes: Vec<LaneHandle>,
    shutdown: Shutdown,
    board: Arc<Board>,
    failure: Arc<Mutex<Option<LaneFailure>>>,
    /// Each lane sends its index here as its thread ends.
    done: crossbeam_channel::Receiver<usize>,
    /// The last consistent copy of every lane's counters, for [`stats`](Self::stats).
    last: Mutex<Vec<Option<LaneStatsSnapshot>>>,
}

#[derive(Debug)]
struct LaneHandle {
    name: String,
    commands: crossbeam_channel::Sender<LaneCommand>,
    thread: JoinHandle<()>,
    /// To end the lane's park at shutdown.
    waker: Option<LaneWaker>,
}

/// A lane that stopped on its own: an agent panicked or its reactor failed. The first one
/// stops every lane (the daemon exits non-zero with it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("lane '{lane}' died: {cause}")]
pub struct LaneFailure {
    /// The lane.
    pub lane: String,
    /// What happened, e.g. `agent 'control' panicked: ...` or `reactor error: ...`.
    pub cause: String,
}

/// How [`Runtime::join_timeout`] ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Joined {
    /// The first lane that died, if one did.
    pub failure: Option<LaneFailure>,
    /// Lanes still running at the deadline (their threads are left to the process exit).
    pub stuck: Vec<String>,
}

/// A cold command for one lane, delivered through a crossbeam channel that the lane checks
/// (without blocking) once per pass. Shutdown is not one: it is a flag, so that a signal
/// handler can set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaneCommand {
    /// Switch the lane's idle strategy from its next idle pass on.
    SetIdle(IdleStrategy),
}

impl Runtime {
    /// Starts every lane, each on its own (pinned) thread with its own reactor, and returns
    /// once all agents have started; if any lane fails to start, the others are stopped and
    /// the first error is returned. No lane runs a pass before every lane has started, so no
    /// agent serves clients from a runtime that may still fail to start.
    ///
    /// `reactor` is a [`ReactorChoice`], or a [`ReactorConfig`] with io_uring options.
    pub fn start(
        specs: Vec<LaneSpec>,
        reactor: impl Into<ReactorConfig>,
    ) -> Result<Self, RuntimeError> {
        Self::start_with(specs, reactor, Shutdown::new(), Board::new())
    }

    /// [`start`](Self::start) with a caller's shutdown flag (e.g. one wired to signals) and
    /// the [`Board`] its agents read status from (filled here; must be fresh).
    pub fn start_with(
        specs: Vec<LaneSpec>,
        reactor: impl Into<ReactorConfig>,
        shutdown: Shutdown,
        board: Arc<Board>,
    ) -> Result<Self, RuntimeError> {
        let reactor = reactor.into();
        // Read the core list before pinning anything: once this thread is pinned it would
        // report only its own core.
        let available: Vec<usize> =
            core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
        for spec in &specs {
            check_spec(spec, &available)?;
        }
        let views: Vec<LaneView> = specs
            .iter()
            .map(|spec| LaneView {
                name: spec.name.clone(),
                core: spec.core,
                idle_now: AtomicU64::new(spec.idle.index() as u64),
                agents: spec.agents.iter().map(|a| a.name().to_owned()).collect(),
                stats: Arc::new(LaneStats::default()),
            })
            .collect();
        let stats: Vec<Arc<LaneStats>> = views.iter().map(|v| v.stats.clone()).collect();
        if board.lanes.set(views).is_err() {
            tracing::warn!("runtime board reused: status shows the first runtime's lanes");
        }
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        let (go_tx, go) = crossbeam_channel::unbounded::<()>();
        let (done_tx, done) = crossbeam_channel::unbounded();
        let died = Arc::new(Mutex::new(None));
        let mut lanes = Vec::with_capacity(specs.len());
        let mut failure = None;
        for (index, (spec, stats)) in specs.into_iter().zip(stats).enumerate() {
            let name = spec.name.clone();
            let waker = spec.waker.clone();
            let (commands, inbox) = crossbeam_channel::unbounded();
            let lane = Lane {
                spec,
                stats,
                shutdown: shutdown.clone(),
                reactor,
                board: board.clone(),
                inbox,
                failure: died.clone(),
                go: go.clone(),
                current: None,
                #[cfg(debug_assertions)]
                fault: None,
            };
            let ready = ready_tx.clone();
            let done_tx = done_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("lane-{name}"))
                .spawn(move || {
                    lane.run(ready);
                    let _ = done_tx.send(index);
                })
                .map_err(|e| RuntimeError::Thread { lane: name.clone(), reason: e.to_string() });
            match thread {
                Ok(thread) => lanes.push(LaneHandle { name, commands, thread, waker }),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(ready_tx);
        for lane in &lanes {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert(RuntimeError::Thread {
                        lane: lane.name.clone(),
                        reason: "exited before reporting".into(),
                    });
                }
            }
        }
        let runtime =
            Runtime { lanes, shutdown, board, failure: died, done, last: Mutex::default() };
        // Every lane has set up (or one failed): open the gate with the verdict. On a failure
        // the lanes close their agents without a pass (no drain, no on_stopping: no client was
        // served); a shutdown asked for after a good start still drains.
        match failure {
            None => {
                for _ in &runtime.lanes {
                    let _ = go_tx.send(());
                }
                Ok(runtime)
            }
            Some(e) => {
                runtime.shutdown();
                drop(go_tx); // the gate opens empty: the lanes close
                runtime.join();
                Err(e)
            }
        }
    }

    /// Which reactor backend the lanes run (as the first lane to start set it on the
    /// [`Board`]; `Poll` for a runtime without lanes).
    pub fn reactor(&self) -> ReactorKind {
        self.board.reactor().unwrap_or(ReactorKind::Poll)
    }

    /// The shutdown flag the lanes watch.
    pub fn shutdown_flag(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Sends `command` to the lane named `lane`; false if there is no such lane (or it has
    /// stopped).
    pub fn command(&self, lane: &str, command: LaneCommand) -> bool {
        self.lanes.iter().find(|l| l.name == lane).is_some_and(|l| l.commands.send(command).is_ok())
    }

    /// Asks every lane to stop after its current pass, and wakes the lanes that are parked
    /// (those with a waker; the others see the request when their park ends).
    pub fn shutdown(&self) {
        self.shutdown.request();
        for lane in &self.lanes {
            if let Some(waker) = &lane.waker {
                waker.wake();
            }
        }
    }

    /// A copy of every lane's counters: the last consistent copy of a lane caught in the
    /// middle of a publish (a lane never read consistently yet is left out).
    pub fn stats(&self) -> Vec<LaneStatsSnapshot> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        self.board.refresh(&mut last);
        last.iter().flatten().cloned().collect()
    }

    /// The first lane that died (an agent panicked, its reactor failed), if one has. A death
    /// also requests shutdown of every lane.
    pub fn failure(&self) -> Option<LaneFailure> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for every lane to finish (after [`shutdown`](Self::shutdown)); returns the lane
    /// that died, if one did.
    pub fn join(self) -> Option<LaneFailure> {
        for lane in self.lanes {
            if lane.thread.join().is_err() {
                tracing::error!(lane = %lane.name, "lane thread panicked outside its agents");
            }
        }
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Like [`join`](Self::join), but gives up at `timeout` (the daemon's
    /// `runtime.shutdown_timeout_ms`): lanes still running then are named in
    /// [`Joined::stuck`] and their threads left to end with the process.
    pub fn join_timeout(self, timeout: Duration) -> Joined {
        let deadline = Instant::now() + timeout;
        let mut finished = vec![false; self.lanes.len()];
        let mut left = self.lanes.len();
        while left > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(wait) {
                Ok(index) => {
                    if !std::mem::replace(&mut finished[index], true) {
                        left -= 1;
                    }
                }
                Err(_) => break, // deadline (or every sender gone: all reported)
            }
        }
        let mut stuck = Vec::new();
        for (lane, done) in self.lanes.into_iter().zip(finished) {
            if done {
                if lane.thread.join().is_err() {
                    tracing::error!(lane = %lane.name, "lane thread panicked outside its agents");
                }
            } else {
                stuck.push(lane.name);
            }
        }
        let failure = self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Joined { failure, stuck }
    }
}

impl LaneView {
    /// The lane's counters, or `None` if no try within the budget saw one whole publish.
    fn snapshot(&self) -> Option<LaneStatsSnapshot> {
        // A publish is a few stores (the quantiles are computed before the odd `seq`), so a
        // reader meets a half-written one rarely and briefly: spin a little, then give the
        // cpu away (the lane may share this core and have been descheduled mid-publish).
        const TRIES: usize = 64;
        const SPINS: usize = 8;
        let s = &self.stats;
        let mut snapshot = LaneStatsSnapshot {
            name: self.name.clone(),
            core: self.core,
            idle: NAMES[self.idle_now.load(Ordering::Relaxed) as usize],
            agents: self.agents.clone(),
            ..LaneStatsSnapshot::default()
        };
        for attempt in 0..TRIES {
            // SYNC: pairs with the Release store of the even `seq` in `Lane::publish`: the
            // values read below are of that publish or a later one.
            let before = s.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                if attempt < SPINS {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            snapshot.passes = s.passes.load(Ordering::Relaxed);
            snapshot.pass_sum_ns = s.pass_sum_ns.load(Ordering::Relaxed);
            snapshot.work = s.work.load(Ordering::Relaxed);
            snapshot.idle_ns = s.idle_ns.load(Ordering::Relaxed);
            snapshot.max_pass_ns = s.max_pass_ns.load(Ordering::Relaxed);
            snapshot.p50_pass_ns = s.p50_pass_ns.load(Ordering::Relaxed);
            snapshot.p99_pass_ns = s.p99_pass_ns.load(Ordering::Relaxed);
            snapshot.p999_pass_ns = s.p999_pass_ns.load(Ordering::Relaxed);
            // SYNC: pairs with the Release fence after the odd `seq` in `Lane::publish`:
            // a value of a later publish read above shows as a changed `seq` below.
            fence(Ordering::Acquire);
            if s.seq.load(Ordering::Relaxed) == before {
                return Some(snapshot);
            }
        }
        None
    }
}

fn check_spec(spec: &LaneSpec, available: &[usize]) -> Result<(), RuntimeError> {
    if spec.agents.len() > usize::from(LANE_AGENT) {
        return Err(RuntimeError::TooManyAgents {
            lane: spec.name.clone(),
            count: spec.agents.len(),
        });
    }
    match spec.core {
        Some(core) if !available.contains(&core) => Err(RuntimeError::NoSuchCore {
            lane: spec.name.clone(),
            core,
            available: available.to_vec(),
        }),
        _ => Ok(()),
    }
}

struct Lane {
    spec: LaneSpec,
    stats: Arc<LaneStats>,
    shutdown: Shutdown,
    reactor: ReactorConfig,
    board: Arc<Board>,
    inbox: crossbeam_channel::Receiver<LaneCommand>,
    failure: Arc<Mutex<Option<LaneFailure>>>,
    /// The start gate: once every lane has reported its start, one `()` per lane when all
    /// started (run), none when one failed (close without a pass); see
    /// [`Runtime::start_with`].
    go: crossbeam_channel::Receiver<()>,
    /// The agent being called, to name it if it panics.
    current: Option<usize>,
    /// Debug builds: the agent to fail on purpose, and when (see `fault_injection`).
    #[cfg(debug_assertions)]
    fault: Option<(usize, Instant)>,
}

/// Test hook of debug builds only: `CL_FAULT_PANIC_AGENT=<agent>` makes that agent's
/// `do_work` panic 300 ms after its lane started, so tests can watch a real daemon handle a
/// dying lane. Release builds ignore the variable.
#[cfg(debug_assertions)]
fn fault_injection(agents: &[Box<dyn Agent>]) -> Option<(usize, Instant)> {
    let name = std::env::var("CL_FAULT_PANIC_AGENT").ok()?;
    let index = agents.iter().position(|a| a.name() == name)?;
    Some((index, Instant::now() + Duration::from_millis(300)))
}

type Ready = crossbeam_channel::Sender<Result<(), RuntimeError>>;

impl Lane {
    fn run(mut self, ready: Ready) {
        let name = self.spec.name.clone();
        if let Some(core) = self.spec.core {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                let _ = ready.send(Err(RuntimeError::Pin { lane: name, core }));
                return;
            }
        }
        let mut reactor = match Reactor::new(self.reactor) {
            Ok(r) => r,
            Err(source) => {
                let _ = ready.send(Err(RuntimeError::Reactor {
                    lane: name,
                    choice: self.reactor.choice,
                    source,
                }));
                return;
            }
        };
        // Before any agent can answer a status request.
        let _ = self.board.reactor.set(reactor.kind());
        let mut timers = Timers::default();
        for (index, agent) in self.spec.agents.iter_mut().enumerate() {
            let mut ctx = Ctx {
                now: Instant::now(),
                reactor: &mut reactor,
                timers: &mut timers,
                agent: index as u8,
                last_look: false,
            };
            // A panic fails the start like an error, named (the lane's report must be sent:
            // an unwound thread would be blamed on whichever lane reports last).
            let started = catch_unwind(AssertUnwindSafe(|| agent.on_start(&mut ctx)))
                .unwrap_or_else(|payload| {
                    Err(std::io::Error::other(format!("panicked: {}", panic_message(&*payload))))
                });
            if let Err(source) = started {
                let agent = agent.name().to_owned();
                let _ = ready.send(Err(RuntimeError::AgentStart { lane: name, agent, source }));
                return;
            }
        }
        if let Some(waker) = &self.spec.waker {
            let registered = waker.watch_fd().and_then(|fd| reactor.watch(fd, WAKER_TOKEN));
            if let Err(source) = registered {
                let _ = ready.send(Err(RuntimeError::Reactor {
                    lane: name,
                    choice: self.reactor.choice,
                    source,
                }));
                return;
            }
        }
        let _ = ready.send(Ok(()));
        drop(ready);
        // No pass before every lane has started: an agent that answers clients (the control
        // socket) must not look ready while another lane can still fail to set up, and its
        // clients must not take the descriptors that lane is about to need.
        let started = self.go.recv().is_ok();
        if started {
            tracing::info!(lane = %name, core = ?self.spec.core, reactor = reactor.kind().name(), idle = self.spec.idle.name(), "lane started");
            #[cfg(debug_assertions)]
            {
                self.fault = fault_injection(&self.spec.agents);
            }
        }

        let outcome = if !started {
            // Another lane failed to start: close without a pass.
            Ok(Ok(()))
        } else {
            catch_unwind(AssertUnwindSafe(|| self.run_loop(&mut reactor, &mut timers)))
        };
        let panicked = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => {
                self.die(format!("reactor error: {e}"));
                None
            }
            Err(payload) => {
                let agent = self.current.map_or("the lane", |i| self.spec.agents[i].name());
                let cause = format!("agent '{agent}' panicked: {}", panic_message(&*payload));
                self.die(cause);
                self.current
            }
        };
        for (index, agent) in self.spec.agents.iter_mut().enumerate() {
            if Some(index) == panicked {
                continue; // its state is whatever the panic left: do not run it again
            }
            let mut ctx = Ctx {
                now: Instant::now(),
                reactor: &mut reactor,
                timers: &mut timers,
                agent: index as u8,
                last_look: false,
            };
            if catch_unwind(AssertUnwindSafe(|| agent.on_close(&mut ctx))).is_err() {
                tracing::error!(lane = %name, agent = agent.name(), "agent panicked while closing");
            }
        }
        // What on_close queued (last messages) goes to the kernel before the reactor drops.
        let _ = reactor.flush();
        tracing::info!(lane = %name, "lane stopped");
    }

    /// Records the lane's death (the first of the runtime wins), logs it, and stops every lane.
    #[cold]
    fn die(&self, cause: String) {
        let failure = LaneFailure { lane: self.spec.name.clone(), cause };
        tracing::error!("{failure}; stopping every lane");
        let mut slot = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(failure);
        self.shutdown.request();
    }

    /// The pass: poll the reactor; hand out its completions, then the timers that are due;
    /// run every agent; hand the pass's output to the kernel (one submission); idle if nothing
    /// was done, parking no longer than until the next timer.
    fn run_loop(&mut self, reactor: &mut Reactor, timers: &mut Timers) -> std::io::Result<()> {
        let mut idler = Idler::new(self.spec.idle);
        let mut passes = pass_histogram();
        let mut next_publish = Instant::now() + PUBLISH_EVERY;
        let mut max_pass = 0u64;
        let mut totals = Totals::default();
        let mut now = Instant::now();
        while !self.shutdown.is_requested() {
            let start = now;
            if let Ok(command) = self.inbox.try_recv() {
                self.apply(command, &mut idler);
            }
            reactor.poll()?;
            let mut work = 0usize;
            while let Some(completion) = reactor.next_completion() {
                work += 1;
                self.dispatch(reactor, timers, start, completion);
            }
            // Bounded by the timers armed now: a handler that re-arms for a past deadline
            // fires again next pass, not in an endless loop.
            for _ in 0..timers.len() {
                let Some(token) = timers.pop_expired(start) else { break };
                work += 1;
                self.dispatch(reactor, timers, start, Completion::Timer { token });
            }
            work += self.work(reactor, timers, start);
            reactor.flush()?;
            now = Instant::now();
            let pass_ns = (now - start).as_nanos() as u64;
            passes.saturating_record(pass_ns.max(1));
            max_pass = max_pass.max(pass_ns);
            totals.passes += 1;
            totals.pass_ns = totals.pass_ns.wrapping_add(pass_ns);
            totals.work += work as u64;
            if work == 0 {
                let found = self.idle(&mut idler, reactor, timers, now)?;
                let after = Instant::now();
                totals.idle_ns += (after - now).as_nanos() as u64;
                now = after;
                if found > 0 {
                    // The last look before a park found work: that was a pass with work.
                    totals.work += found as u64;
                    idler.reset();
                }
            } else {
                idler.reset();
            }
            if now >= next_publish {
                self.publish(&passes, totals, max_pass);
                next_publish = now + PUBLISH_EVERY;
            }
        }
        self.drain(reactor, timers)?;
        self.publish(&passes, totals, max_pass);
        Ok(())
    }

    /// After the stop was asked for: every agent's `on_stopping` (last messages, such as a
    /// driver's shutdown notice), then passes for [`STOP_DRAIN`] so those messages cross the
    /// links to the agents that send them (on this lane or on another lane, which drains at
    /// the same time) and reach the kernel before `on_close`.
    fn drain(&mut self, reactor: &mut Reactor, timers: &mut Timers) -> std::io::Result<()> {
        let start = Instant::now();
        for (index, agent) in self.spec.agents.iter_mut().enumerate() {
            self.current = Some(index);
            let mut ctx = Ctx { now: start, reactor, timers, agent: index as u8, last_look: false };
            agent.on_stopping(&mut ctx);
        }
        self.current = None;
        while start.elapsed() < STOP_DRAIN {
            let now = Instant::now();
            reactor.poll()?;
            while let Some(completion) = reactor.next_completion() {
                self.dispatch(reactor, timers, now, completion);
            }
            self.work(reactor, timers, now);
            reactor.flush()?;
            std::thread::yield_now();
        }
        Ok(())
    }

    /// Every agent's `do_work`; returns the work they did.
    fn work(&mut self, reactor: &mut Reactor, timers: &mut Timers, now: Instant) -> usize {
        self.work_with(reactor, timers, now, false)
    }

    /// Every agent's `do_work`; `last_look`: this is the pass before a park
    /// ([`Ctx::is_last_look`]).
    fn work_with(
        &mut self,
        reactor: &mut Reactor,
        timers: &mut Timers,
        now: Instant,
        last_look: bool,
    ) -> usize {
        #[cfg(debug_assertions)]
        if let Some((agent, at)) = self.fault {
            if now >= at {
                self.current = Some(agent);
                panic!("fault injected by CL_FAULT_PANIC_AGENT");
            }
        }
        let mut work = 0;
        for (index, agent) in self.spec.agents.iter_mut().enumerate() {
            self.current = Some(index);
            let mut ctx = Ctx { now, reactor, timers, agent: index as u8, last_look };
            work += agent.do_work(&mut ctx);
        }
        self.current = None;
        work
    }

    /// One idle step. A park lasts no longer than until the next timer, and with a waker it
    /// is announced first and preceded by a last look at the agents (the link protocol, see
    /// [`super::link`]); returns the work that last look found (then there was no park).
    fn idle(
        &mut self,
        idler: &mut Idler,
        reactor: &mut Reactor,
        timers: &mut Timers,
        now: Instant,
    ) -> std::io::Result<usize> {
        match idler.step() {
            Step::Spin => std::hint::spin_loop(),
            Step::Yield => std::thread::yield_now(),
            Step::Park(park) => {
                let timeout = timers.until_next(now).map_or(park, |until| park.min(until));
                if timeout.is_zero() {
                    reactor.poll()?;
                    return Ok(0);
                }
                let waker = self.spec.waker.clone();
                if let Some(waker) = &waker {
                    waker.arm();
                }
                // The last look: the agents (links, and rings whose doorbells they arm: see
                // `Ctx::is_last_look`), and the shutdown flag, which `Runtime::shutdown` sets
                // before waking us.
                let found = self.work_with(reactor, timers, now, true);
                if found > 0 || self.shutdown.is_requested() {
                    if let Some(waker) = &waker {
                        waker.disarm();
                    }
                    reactor.flush()?;
                    return Ok(found);
                }
                // What the last look queued (a doorbell armed needs nothing, but replies may
                // have been) goes out before the park.
                reactor.flush()?;
                let parked = reactor.park(timeout);
                if let Some(waker) = &waker {
                    waker.disarm();
                }
                parked?;
            }
        }
        Ok(0)
    }

    #[cold]
    fn apply(&mut self, command: LaneCommand, idler: &mut Idler) {
        match command {
            LaneCommand::SetIdle(strategy) => {
                tracing::info!(lane = %self.spec.name, idle = strategy.name(), "idle strategy changed");
                self.spec.idle = strategy;
                *idler = Idler::new(strategy);
                if let Some(view) =
                    self.board.lanes.get().and_then(|l| l.iter().find(|v| v.name == self.spec.name))
                {
                    view.idle_now.store(strategy.index() as u64, Ordering::Relaxed);
                }
            }
        }
    }

    fn dispatch(
        &mut self,
        reactor: &mut Reactor,
        timers: &mut Timers,
        now: Instant,
        completion: Completion,
    ) {
        let owner = Ctx::owner(completion.token());
        if owner == usize::from(LANE_AGENT) {
            return self.own(reactor, completion);
        }
        let buf = match &completion {
            Completion::Received { buf, .. } => Some(*buf),
            _ => None,
        };
        match self.spec.agents.get_mut(owner) {
            Some(agent) => {
                self.current = Some(owner);
                let mut ctx = Ctx { now, reactor, timers, agent: owner as u8, last_look: false };
                agent.on_completion(&mut ctx, completion);
                self.current = None;
            }
            None => tracing::warn!(token = ?completion.token(), "completion for no agent"),
        }
        if let Some(buf) = buf {
            reactor.recycle(buf);
        }
    }

    /// A completion of the lane's own: its waker's eventfd became readable.
    #[cold]
    fn own(&mut self, reactor: &mut Reactor, completion: Completion) {
        if let (Completion::Readable { .. }, Some(waker)) = (&completion, &self.spec.waker) {
            waker.drain();
            if let Err(e) = reactor.rearm_watch(WAKER_TOKEN) {
                tracing::error!(lane = %self.spec.name, "cannot re-arm the lane's waker: {e}");
            }
        }
    }

    fn publish(&self, h: &Histogram<u64>, totals: Totals, max_pass: u64) {
        let s = &self.stats;
        let Totals { passes, pass_ns: pass_sum, work, idle_ns } = totals;
        // The histogram answers the top of a bucket, which can pass the exact maximum: capped,
        // the quantiles never decrease towards the max. Computed before the odd `seq`: each is
        // a walk of the histogram, and the odd window must stay a handful of stores.
        let quantile = |q| h.value_at_quantile(q).min(max_pass);
        let (p50, p99, p999) = (quantile(0.5), quantile(0.99), quantile(0.999));
        // One writer (this lane): odd while writing, the next even value after.
        let odd = s.seq.load(Ordering::Relaxed) | 1;
        s.seq.store(odd, Ordering::Relaxed);
        // SYNC: orders the odd `seq` above before the values below -> the Acquire fence before
        // the reader's second `seq` load in `LaneView::snapshot`.
        fence(Ordering::Release);
        s.passes.store(passes, Ordering::Relaxed);
        s.pass_sum_ns.store(pass_sum, Ordering::Relaxed);
        s.work.store(work, Ordering::Relaxed);
        s.idle_ns.store(idle_ns, Ordering::Relaxed);
        s.max_pass_ns.store(max_pass, Ordering::Relaxed);
        s.p50_pass_ns.store(p50, Ordering::Relaxed);
        s.p99_pass_ns.store(p99, Ordering::Relaxed);
        s.p999_pass_ns.store(p999, Ordering::Relaxed);
        // SYNC: publishes the values above -> the Acquire load of `seq` in `LaneView::snapshot`.
        s.seq.store(odd.wrapping_add(1), Ordering::Release);
    }
}

/// The histogram of a lane's pass times: 1 ns to 60 s with 2 significant figures (every
/// value within 1%, which is what a pass-time percentile is read for), so its counts take
/// 30 KiB. With 3 figures they took 216 KiB per lane, zeroed when the lane starts: most of
/// the daemon's private memory at idle (`perf record -e page-faults` pointed at this memset).
fn pass_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy 1 <= low, 2 * low <= high, sigfig <= 5.
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("constant histogram bounds are valid")
}

/// A lane's running totals since it started.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    /// Loop passes.
    passes: u64,
    /// Time in passes, ns.
    pass_ns: u64,
    /// Work items.
    work: u64,
    /// Time idling, ns.
    idle_ns: u64,
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_histogram_is_small_and_within_one_percent() {
        let mut h = pass_histogram();
        // Counts are u64: under 32 KiB of them (3 figures had 27,648 counts, 216 KiB).
        assert!(h.distinct_values() * 8 <= 32 * 1024, "{} counts", h.distinct_values());
        for v in [1u64, 999, 12_345, 1_000_000, 59_000_000_000] {
            h.reset();
            h.record(v).unwrap();
            let p = h.value_at_quantile(0.99);
            assert!(p.abs_diff(v) * 100 <= v.max(100), "{v} read back as {p}");
        }
    }
}

#[cfg(test)]
mod review2_tests {
    use super::*;

    /// Review2: a lane descheduled (or dead) between its odd and even `seq` store makes a
    /// reader give up after 1024 spins; the comment says "then the values are its last", but
    /// the snapshot comes back zeroed, so the metrics agent publishes passes_total = 0 (a
    /// counter reset in Prometheus) and a zero pass summary.
    #[test]
    fn snapshot_of_a_lane_mid_publish_keeps_the_last_values() {
        let stats = Arc::new(LaneStats::default());
        stats.passes.store(1000, Ordering::Relaxed);
        stats.work.store(77, Ordering::Relaxed);
        stats.seq.store(2, Ordering::Relaxed);
        let view = LaneView {
            name: "main".into(),
            core: None,
            idle_now: AtomicU64::new(0),
            agents: Vec::new(),
            stats: Arc::clone(&stats),
        };
        let board = Board::default();
        board.lanes.set(vec![view]).unwrap();
        let mut last = Vec::new();
        assert_eq!(board.refresh(&mut last), 0);
        assert_eq!(last[0].as_ref().map(|l| l.passes), Some(1000));
        // The lane is preempted just after `s.seq.store(odd)` in `Lane::publish`.
        stats.seq.store(3, Ordering::Relaxed);
        assert_eq!(board.lanes()[0], None, "no consistent read mid-publish");
        assert_eq!(board.refresh(&mut last), 1, "the lane keeps its last copy");
        let snap = last[0].as_ref().expect("the last consistent copy");
        assert_eq!((snap.passes, snap.work), (1000, 77), "a counter went back to zero");
        // The publish ends: the next refresh reads the new values.
        stats.passes.store(1001, Ordering::Relaxed);
        stats.seq.store(4, Ordering::Relaxed);
        assert_eq!(board.refresh(&mut last), 0);
        assert_eq!(last[0].as_ref().map(|l| l.passes), Some(1001));
    }
}
