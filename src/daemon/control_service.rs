//! The control service: the control socket, its counters, and the `status` and `ping`
//! subcommands. Always enabled.

use std::process::ExitCode;

use super::control_agent::{
    ControlAgent, ControlCounters, ControlHandler, ControlSettings, ERROR_KINDS,
};
use super::service::{Build, CliContext, Prepare, Prepared, RequestSpec, Service};
use super::DaemonError;
use crate::config::{Config, SectionSpec, CONTROL_SECTION};
use crate::control::route::DuplicateRoute;
use crate::metrics::{CounterId, CounterSpec, CountersFile, MetricsError, Registry};
use crate::runtime::{Agent, CloseReason, ConnCounters};

/// The control service, as named in the table.
pub static CONTROL: ControlService = ControlService;

/// See the module docs of `corelane::daemon`.
#[derive(Debug)]
pub struct ControlService;

impl Service for ControlService {
    fn name(&self) -> &'static str {
        "control"
    }

    fn section(&self) -> &SectionSpec {
        &CONTROL_SECTION
    }

    fn agents(&self) -> &'static [&'static str] {
        &["control"]
    }

    fn requests(&self) -> &'static [RequestSpec] {
        use crate::control::{MSG_CONFIG, MSG_OPEN_CHANNEL, MSG_PING, MSG_POOL_REPORT, MSG_STATUS};
        &[
            RequestSpec { msg_type: MSG_PING, name: "ping" },
            RequestSpec { msg_type: MSG_STATUS, name: "status" },
            RequestSpec { msg_type: MSG_CONFIG, name: "config" },
            RequestSpec { msg_type: MSG_OPEN_CHANNEL, name: "open_channel" },
            RequestSpec { msg_type: MSG_POOL_REPORT, name: "pool_report" },
        ]
    }

    fn enabled(&self, _config: &Config) -> bool {
        true
    }

    fn prepare(&self, cx: &mut Prepare<'_>) -> Result<Box<dyn Prepared>, DaemonError> {
        Ok(Box::new(Ids::register(cx)?))
    }

    fn commands(&self) -> Vec<clap::Command> {
        vec![
            clap::Command::new("status")
                .about("Ask the running daemon for its status. Exit 0 if it answered, 1 if not.")
                .long_about(
                    "Ask the running daemon for its status: version, uptime, reactor, every \
                     lane's counters and every service's state. Exit 0 if it answered, 1 if not.",
                ),
            clap::Command::new("ping")
                .about("Round-trip pings to the running daemon and print the times.")
                .arg(
                    clap::Arg::new("count")
                        .long("count")
                        .short('n')
                        .value_name("N")
                        .value_parser(clap::value_parser!(u32).range(1..))
                        .default_value("5")
                        .help("How many pings."),
                ),
        ]
    }

    fn run_command(&self, name: &str, matches: &clap::ArgMatches, cli: &CliContext) -> ExitCode {
        match name {
            "status" => crate::cli::status(cli),
            "ping" => crate::cli::ping(cli, *matches.get_one::<u32>("count").unwrap_or(&5)),
            _ => ExitCode::FAILURE,
        }
    }
}

/// The control counters, registered in phase 1.
struct Ids {
    accepted: CounterId,
    refused: CounterId,
    closed: [CounterId; 5],
    open: CounterId,
    buffered: CounterId,
    accept_errors: CounterId,
    requests: Vec<(u16, CounterId)>,
    errors: Vec<CounterId>,
    shm_open: CounterId,
    shm: [CounterId; 3],
    pool: [CounterId; 3],
}

impl Ids {
    /// Registers the control counters, with one request counter per request of every enabled
    /// service (a `msg_type` two of them claim fails the start).
    fn register(cx: &mut Prepare<'_>) -> Result<Self, DaemonError> {
        let mut requests: Vec<RequestSpec> = Vec::new();
        for service in super::services::SERVICES.iter().filter(|s| s.enabled(cx.config)) {
            for spec in service.requests() {
                if let Some(first) = requests.iter().find(|r| r.msg_type == spec.msg_type) {
                    return Err(DaemonError::DuplicateRoute(DuplicateRoute {
                        msg_type: spec.msg_type,
                        first: first.name,
                        second: spec.name,
                    }));
                }
                requests.push(*spec);
            }
        }
        Ok(Self::register_in(cx.registry(), &requests)?)
    }

    fn register_in(
        registry: &mut Registry,
        requests: &[RequestSpec],
    ) -> Result<Self, MetricsError> {
        const CONN: &str = "Control connections by event.";
        let conn = |registry: &mut Registry, event| {
            registry.register(CounterSpec::counter(
                "corelane_control_connections_total",
                &[("event", event)],
                CONN,
            ))
        };
        let accepted = conn(registry, "accepted")?;
        let refused = conn(registry, "refused")?;
        const CLOSED: &str = "Control connections closed, by reason.";
        let mut closed = Vec::new();
        for reason in CloseReason::ALL {
            closed.push(registry.register(CounterSpec::counter(
                "corelane_control_connections_closed_total",
                &[("reason", reason.name())],
                CLOSED,
            ))?);
        }
        let closed: [_; 5] = closed.try_into().expect("one counter per CloseReason");
        let open = registry.register(CounterSpec::gauge(
            "corelane_control_connections_open",
            &[],
            "Control connections open now.",
        ))?;
        let buffered = registry.register(CounterSpec::gauge(
            "corelane_control_buffered_bytes",
            &[],
            "Bytes the control connections buffer (unsent replies, partial requests).",
        ))?;
        let accept_errors = registry.register(CounterSpec::counter(
            "corelane_control_accept_errors_total",
            &[],
            "Accepts of the control socket that failed (EMFILE, ...); accepting resumes.",
        ))?;
        const REQ: &str = "Control requests answered, by type.";
        let requests = requests
            .iter()
            .map(|r| {
                let labels = [("type", r.name)];
                let spec = CounterSpec::counter("corelane_control_requests_total", &labels, REQ);
                Ok((r.msg_type, registry.register(spec)?))
            })
            .collect::<Result<_, MetricsError>>()?;
        let errors = ERROR_KINDS
            .iter()
            .map(|kind| {
                registry.register(CounterSpec::counter(
                    "corelane_control_errors_total",
                    &[("kind", kind)],
                    "Control protocol errors answered, by kind.",
                ))
            })
            .collect::<Result<_, _>>()?;
        let shm_open = registry.register(CounterSpec::gauge(
            "corelane_control_shm_channels_open",
            &[],
            "Shared-memory control channels open now.",
        ))?;
        const SHM: &str = "Shared-memory control channels, by event (opened, refused, faulted: \
                           closed because the client corrupted it).";
        let mut shm = Vec::new();
        for event in ["opened", "refused", "faulted"] {
            shm.push(registry.register(CounterSpec::counter(
                "corelane_control_shm_channels_total",
                &[("event", event)],
                SHM,
            ))?);
        }
        let shm: [_; 3] = shm.try_into().expect("three events");
        const POOL: &str = "Checkouts of clients' ConnectionPools, by outcome (reused an idle \
                            connection, or connected a new one), as the pools report them.";
        let acquires = |registry: &mut Registry, outcome| {
            registry.register(CounterSpec::counter(
                "corelane_control_pool_acquires_total",
                &[("outcome", outcome)],
                POOL,
            ))
        };
        let pool = [
            acquires(registry, "reused")?,
            acquires(registry, "connected")?,
            registry.register(CounterSpec::gauge(
                "corelane_control_pool_reuse_percent",
                &[],
                "Connection pools' reuse ratio in percent: reused checkouts of all reported.",
            ))?,
        ];
        Ok(Self {
            accepted,
            refused,
            closed,
            open,
            buffered,
            accept_errors,
            requests,
            errors,
            shm_open,
            shm,
            pool,
        })
    }

    fn resolve(&self, file: &CountersFile) -> ControlCounters {
        ControlCounters {
            conns: ConnCounters {
                accepted: file.counter(self.accepted),
                refused: file.counter(self.refused),
                open: file.counter(self.open),
                closed: self.closed.map(|id| file.counter(id)),
            },
            accept_errors: file.counter(self.accept_errors),
            buffered: file.counter(self.buffered),
            requests: self.requests.iter().map(|&(t, id)| (t, file.counter(id))).collect(),
            errors: self.errors.iter().map(|&id| file.counter(id)).collect(),
            shm_open: file.counter(self.shm_open),
            shm_opened: file.counter(self.shm[0]),
            shm_refused: file.counter(self.shm[1]),
            shm_faulted: file.counter(self.shm[2]),
            pool_reused: file.counter(self.pool[0]),
            pool_connected: file.counter(self.pool[1]),
            pool_reuse_percent: file.counter(self.pool[2]),
        }
    }
}

impl ControlCounters {
    /// The control counters in a counters file of their own, in memory, with a request
    /// counter for each of `requests`: for a control agent run outside the daemon (tests,
    /// embedding). Read them back with [`Counter::get`](crate::metrics::Counter::get).
    pub fn in_memory(requests: &[RequestSpec]) -> Result<Self, MetricsError> {
        let mut registry = Registry::new();
        let ids = Ids::register_in(&mut registry, requests)?;
        Ok(ids.resolve(&registry.create_in_memory()?))
    }
}

impl Prepared for Ids {
    fn build(self: Box<Self>, cx: &mut Build<'_>) -> Result<super::service::Agents, DaemonError> {
        let counters = self.resolve(cx.counters);
        let settings = ControlSettings::from_config(&cx.config.control);
        let handler = ControlHandler::new(
            cx.board.clone(),
            cx.config_toml.to_owned(),
            cx.status_board(),
            counters,
        );
        let Some((listener, path)) = cx.take_control_listener() else {
            return Ok(Vec::new());
        };
        let agent = ControlAgent::new(path.to_owned(), listener, settings, handler)
            .with_routes(cx.route_slot());
        Ok(vec![("control", Box::new(agent) as Box<dyn Agent>)])
    }
}
