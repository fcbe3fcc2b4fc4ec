//! One place to add a service: the [`Service`] trait, and what the daemon hands a service
//! while it starts.
//!
//! A service is its own folder plus one line in [`services`](super::services)' table. From
//! the trait the daemon derives:
//!
//! - its **config section** `[<name>]`: the key table ([`Service::section`]) checked on every
//!   layer with `CORELANE_<NAME>_<KEY>` overrides, the typed struct in
//!   [`Config`] (named in the table), the documentation in
//!   `config/corelane.toml`, and any cross-key rule ([`Service::validate`]); errors fail fast;
//! - its **agents** ([`Service::agents`]): names a `[[lanes]]` entry may list; the config
//!   places each on one lane, and the daemon builds them only if the service is enabled;
//! - its **counters** and `/metrics` series, registered in [`Prepare`] before anything is
//!   bound, so a bad name fails the start with nothing left behind;
//! - **links** between its agents (and to other lanes), made in [`Build`] with the consumer
//!   lane's waker;
//! - its **control requests** (`msg_type`s) and **status** section;
//! - its **CLI subcommands** ([`Service::commands`]).
//!
//! Start-up runs in two phases: [`Service::prepare`] for every enabled service (checks and
//! registrations, no side effects), then, once the control socket and the counters file
//! exist, [`Prepared::build`] (agents, links, handlers).

use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use crate::config::{Config, ConfigError, SectionSpec};
use crate::control::{ControlPort, LocalRoute, Routes};
use crate::metrics::{
    CounterId, CounterSpec, CountersFile, MetricsError, Registry, Summary, SummaryIds, QUANTILES,
};
use crate::runtime::{link, Agent, Board, LaneWaker, LinkRx, LinkTx};

use super::control_agent::RouteSlot;
use super::DaemonError;

/// A service the daemon can host. Implemented by a unit struct in the service's folder and
/// named once in the table of [`services`](super::services).
pub trait Service: Sync {
    /// Its name: the config section `[<name>]`, status and log fields.
    fn name(&self) -> &'static str;

    /// The keys of its config section (every one documented in `config/corelane.toml`).
    fn section(&self) -> &SectionSpec;

    /// Whether this build has it (false for the placeholders of later builds, whose agents
    /// are refused by name).
    fn in_build(&self) -> bool {
        true
    }

    /// The agents it provides, by the names `[[lanes]] agents` uses (unique across services).
    fn agents(&self) -> &'static [&'static str];

    /// Those of its [`agents`](Self::agents) that no lane needs to host: placing one moves
    /// work to that lane (the alloc server's `alloc-device-<N>`), leaving it out keeps the
    /// work where it is. Every other agent of an enabled service must be hosted.
    fn optional_agents(&self) -> &'static [&'static str] {
        &[]
    }

    /// The control requests it answers: `msg_type`s (unique across services, checked at
    /// start) and names (for `corelane_control_requests_total{type}`). Each must be served in
    /// [`Prepared::build`] with [`Build::serve`] or [`Build::serve_local`].
    fn requests(&self) -> &'static [RequestSpec] {
        &[]
    }

    /// Whether `config` turns it on. A disabled service builds nothing; its agents may still
    /// be listed in lanes, and are skipped.
    fn enabled(&self, config: &Config) -> bool;

    /// Rules across keys that the key table cannot say (fail fast at load).
    fn validate(&self, _config: &Config) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Phase 1: register counters, check what can be checked without side effects; returns
    /// what phase 2 builds from.
    fn prepare(&self, cx: &mut Prepare<'_>) -> Result<Box<dyn Prepared>, DaemonError>;

    /// Subcommands it adds to the `corelane` CLI.
    fn commands(&self) -> Vec<clap::Command> {
        Vec::new()
    }

    /// Runs the subcommand `name` (one of [`commands`](Self::commands)).
    fn run_command(&self, _name: &str, _matches: &clap::ArgMatches, _cli: &CliContext) -> ExitCode {
        ExitCode::FAILURE
    }
}

/// The agents a service builds, each with the name a lane lists it by.
pub type Agents = Vec<(&'static str, Box<dyn Agent>)>;

/// A control request a service answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestSpec {
    /// Its `msg_type`.
    pub msg_type: u16,
    /// Its name in metrics and logs.
    pub name: &'static str,
}

/// A service after phase 1: builds its agents in phase 2.
pub trait Prepared {
    /// The agents, by the names of [`Service::agents`] (each placed on the lane the config
    /// names; an agent no lane hosts is dropped with a warning).
    fn build(self: Box<Self>, cx: &mut Build<'_>) -> Result<Agents, DaemonError>;
}

/// What a service sees in phase 1.
#[derive(Debug)]
pub struct Prepare<'a> {
    /// The effective configuration.
    pub config: &'a Config,
    /// The runtime directory.
    pub dir: &'a Path,
    registry: &'a mut Registry,
}

impl<'a> Prepare<'a> {
    pub(super) fn new(config: &'a Config, dir: &'a Path, registry: &'a mut Registry) -> Self {
        Self { config, dir, registry }
    }

    /// Registers a counter (or gauge); its id is resolved to a handle in phase 2
    /// ([`Build::counter`]).
    pub fn register(&mut self, spec: CounterSpec<'_>) -> Result<CounterId, MetricsError> {
        self.registry.register(spec)
    }

    /// The registry itself, for code that registers without a `Prepare` too.
    pub(super) fn registry(&mut self) -> &mut Registry {
        self.registry
    }

    /// Registers a summary of latencies `name{quantile="0.5"|"0.99"|"0.999"|"1"}`,
    /// `name_sum`, `name_count`, kept in ns and exposed in seconds (see
    /// [`Registry::register_summary`]); publish it with a
    /// [`LatencyRecorder`](crate::metrics::LatencyRecorder) through [`Build::summary`].
    pub fn register_summary(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        help: &str,
    ) -> Result<SummaryIds, MetricsError> {
        self.registry.register_summary(name, labels, help, &QUANTILES)
    }
}

/// What a service sees in phase 2.
#[derive(Debug)]
pub struct Build<'a> {
    /// The effective configuration.
    pub config: &'a Config,
    /// Lane facts and counters, for status.
    pub board: &'a Arc<Board>,
    /// The counters file (resolve ids registered in phase 1).
    pub counters: &'a CountersFile,
    /// The rendered effective configuration (for `config` requests).
    pub config_toml: &'a str,
    pub(super) control_listener: Option<UnixListener>,
    pub(super) control_socket: &'a Path,
    /// Agent name -> the waker of the lane that hosts it.
    pub(super) wakers: &'a HashMap<String, LaneWaker>,
    pub(super) statuses: &'a Arc<StatusBoard>,
    /// The services' routes, handed to the control agent once every service is built.
    pub(super) routes: Routes,
    pub(super) route_slot: &'a RouteSlot,
}

impl Build<'_> {
    /// The handle of a counter registered in phase 1.
    pub fn counter(&self, id: CounterId) -> crate::metrics::Counter {
        self.counters.counter(id)
    }

    /// The handle of a summary registered in phase 1.
    pub fn summary(&self, ids: SummaryIds) -> Summary {
        self.counters.summary(ids)
    }

    /// A link whose consumer is the agent `consumer` (of any service): the waker of that
    /// agent's lane is attached. `None` if no lane hosts `consumer`.
    pub fn link<T>(&self, capacity: usize, consumer: &str) -> Option<(LinkTx<T>, LinkRx<T>)> {
        self.wakers.get(consumer).map(|waker| link(capacity, waker))
    }

    /// The daemon's control socket (for in-daemon clients of other services, such as the
    /// frame worker's pool bridge, which attach from a thread of their own, never a lane).
    pub fn control_socket(&self) -> &Path {
        self.control_socket
    }

    /// The status section of service `name`, for its agents to fill (shown by `status`).
    pub fn status(&self, name: &'static str) -> StatusCell {
        self.statuses.cell(name)
    }

    /// Every service's status section (the control service answers status from it).
    pub fn status_board(&self) -> Arc<StatusBoard> {
        self.statuses.clone()
    }

    /// Serves the control request `msg_type` (one of the service's
    /// [`requests`](Service::requests)) with the agent `agent`: requests reach it over a link
    /// to its lane, and it answers (and pushes) through the returned port. `None` if no lane
    /// hosts `agent` or no lane hosts the control agent.
    pub fn serve(&mut self, msg_type: u16, name: &'static str, agent: &str) -> Option<ControlPort> {
        const CAPACITY: usize = 1024;
        let (to_service, from_control) = self.link(CAPACITY, agent)?;
        let (to_control, from_service) = self.link(CAPACITY, "control")?;
        if let Err(e) = self.routes.forward(msg_type, name, to_service, from_service) {
            tracing::error!("{e}");
            return None;
        }
        Some(ControlPort::new(from_control, to_control))
    }

    /// Serves several control requests with the agent `agent` through one port whose answers
    /// and pushes share one link back, so they reach the control agent in the order the
    /// agent made them. `None` as for [`serve`](Self::serve).
    pub fn serve_all(
        &mut self,
        requests: &[(u16, &'static str)],
        agent: &str,
    ) -> Option<ControlPort> {
        const CAPACITY: usize = 1024;
        let (to_control, from_service) = self.link(CAPACITY, "control")?;
        let mut ends = Vec::with_capacity(requests.len());
        let mut senders = Vec::with_capacity(requests.len());
        for _ in requests {
            let (to_service, from_control) = self.link(CAPACITY, agent)?;
            senders.push(to_service);
            ends.push(from_control);
        }
        let replies = self.routes.add_replies(from_service);
        for (&(msg_type, name), to_service) in requests.iter().zip(senders) {
            if let Err(e) = self.routes.forward_to(msg_type, name, to_service, replies) {
                tracing::error!("{e}");
                return None;
            }
        }
        Some(ControlPort::serving(ends, to_control))
    }

    /// Serves the control request `msg_type` on the control lane itself, at once.
    pub fn serve_local(&mut self, msg_type: u16, name: &'static str, route: Box<dyn LocalRoute>) {
        if let Err(e) = self.routes.local(msg_type, name, route) {
            tracing::error!("{e}");
        }
    }

    /// Where the control agent finds the services' routes when its lane starts.
    pub fn route_slot(&self) -> RouteSlot {
        self.route_slot.clone()
    }

    /// The control socket's listener (the control service takes it).
    pub fn take_control_listener(&mut self) -> Option<(UnixListener, &Path)> {
        self.control_listener.take().map(|l| (l, self.control_socket))
    }
}

/// A service's status section: a state and key-value details, written rarely by its agents
/// (a lock, off the hot path) and read by the status request.
#[derive(Clone, Debug)]
pub struct StatusCell {
    inner: Arc<Mutex<ServiceState>>,
}

type SharedState = Arc<Mutex<ServiceState>>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ServiceState {
    pub(super) state: String,
    pub(super) details: Vec<(String, String)>,
}

impl StatusCell {
    /// Sets the state word (`running`, `degraded`, ...).
    pub fn set_state(&self, state: &str) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.state.clear();
        s.state.push_str(state);
    }

    /// Sets one detail (replacing the value of `key`).
    pub fn set(&self, key: &str, value: impl ToString) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let value = value.to_string();
        match s.details.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => s.details.push((key.to_owned(), value)),
        }
    }
}

/// One service's section as the status request shows it: name, state, details.
pub type ServiceSnapshot = (String, String, Vec<(String, String)>);

/// Every service's status cell, in table order.
#[derive(Debug, Default)]
pub struct StatusBoard {
    cells: Mutex<Vec<(&'static str, SharedState)>>,
}

impl StatusBoard {
    /// The cell of `name`, created with `state` if new.
    pub(super) fn declare(&self, name: &'static str, state: &str) {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if !cells.iter().any(|(n, _)| *n == name) {
            let cell = ServiceState { state: state.to_owned(), details: Vec::new() };
            cells.push((name, Arc::new(Mutex::new(cell))));
        }
    }

    fn cell(&self, name: &'static str) -> StatusCell {
        self.declare(name, "running");
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        let inner = cells.iter().find(|(n, _)| *n == name).map(|(_, c)| c.clone());
        StatusCell { inner: inner.expect("declared above") }
    }

    /// A copy of every section: (name, state, details).
    pub fn snapshot(&self) -> Vec<ServiceSnapshot> {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells
            .iter()
            .map(|(name, cell)| {
                let s = cell.lock().unwrap_or_else(|e| e.into_inner());
                ((*name).to_owned(), s.state.clone(), s.details.clone())
            })
            .collect()
    }
}

/// What a service's CLI subcommand gets: how to reach the daemon. Every service subcommand
/// takes `--config`, `--socket` and `--timeout-ms`, which fill this.
#[derive(Debug)]
pub struct CliContext {
    /// The effective configuration (from `--config` and the environment).
    pub config: Config,
    /// The control socket (from the config, or `--socket`).
    pub socket: std::path::PathBuf,
    /// How long to wait for each answer.
    pub timeout: std::time::Duration,
    /// How requests reach the daemon (`--transport`).
    pub transport: crate::control::Transport,
}

/// A service of a later build: its section holds only `enabled`, which must stay false, and
/// its agent name is refused with a message that says so.
#[derive(Debug)]
pub struct Reserved {
    name: &'static str,
    agents: &'static [&'static str],
    section: SectionSpec,
    /// Reads the section's `enabled`.
    enabled: fn(&Config) -> bool,
}

impl Reserved {
    /// A placeholder for `name`, whose `enabled` key `enabled` reads.
    pub const fn new(
        name: &'static str,
        agents: &'static [&'static str],
        enabled: fn(&Config) -> bool,
    ) -> Self {
        Self { name, agents, section: crate::config::placeholder_section(name), enabled }
    }
}

impl Service for Reserved {
    fn name(&self) -> &'static str {
        self.name
    }

    fn section(&self) -> &SectionSpec {
        &self.section
    }

    fn agents(&self) -> &'static [&'static str] {
        self.agents
    }

    fn in_build(&self) -> bool {
        false
    }

    fn enabled(&self, _config: &Config) -> bool {
        false
    }

    fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        if (self.enabled)(config) {
            return Err(ConfigError::ServiceNotInBuild { service: self.name });
        }
        Ok(())
    }

    fn prepare(&self, _cx: &mut Prepare<'_>) -> Result<Box<dyn Prepared>, DaemonError> {
        unreachable!("a reserved service is never enabled")
    }
}
