//! The control service: the control socket, its counters, and the `status` and `ping`
//! subcommands. Always enabled.

use std::process::ExitCode;
use std::time::Duration;

use super::control_agent::{ControlAgent, ControlCounters, StatusHandler, ERROR_KINDS};
use super::service::{Build, CliContext, Prepare, Prepared, Service};
use super::DaemonError;
use crate::config::{Config, SectionSpec, CONTROL_SECTION};
use crate::control::SessionConfig;
use crate::metrics::{CounterId, CounterSpec, MetricsError};
use crate::runtime::Agent;
use crate::wire::DecoderConfig;

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
    closed: CounterId,
    open: CounterId,
    accept_errors: CounterId,
    requests: [CounterId; 3],
    errors: Vec<CounterId>,
}

impl Ids {
    fn register(cx: &mut Prepare<'_>) -> Result<Self, MetricsError> {
        const CONN: &str = "Control connections by event.";
        let conn = |cx: &mut Prepare<'_>, event| {
            cx.register(CounterSpec::counter(
                "corelane_control_connections_total",
                &[("event", event)],
                CONN,
            ))
        };
        let accepted = conn(cx, "accepted")?;
        let refused = conn(cx, "refused")?;
        let closed = conn(cx, "closed_by_daemon")?;
        let open = cx.register(CounterSpec::gauge(
            "corelane_control_connections_open",
            &[],
            "Control connections open now.",
        ))?;
        let accept_errors = cx.register(CounterSpec::counter(
            "corelane_control_accept_errors_total",
            &[],
            "Accepts of the control socket that failed (EMFILE, ...); accepting resumes.",
        ))?;
        const REQ: &str = "Control requests answered, by type.";
        let request = |cx: &mut Prepare<'_>, kind| {
            cx.register(CounterSpec::counter(
                "corelane_control_requests_total",
                &[("type", kind)],
                REQ,
            ))
        };
        let requests = [request(cx, "ping")?, request(cx, "status")?, request(cx, "config")?];
        let errors = ERROR_KINDS
            .iter()
            .map(|kind| {
                cx.register(CounterSpec::counter(
                    "corelane_control_errors_total",
                    &[("kind", kind)],
                    "Control protocol errors answered, by kind.",
                ))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { accepted, refused, closed, open, accept_errors, requests, errors })
    }
}

impl Prepared for Ids {
    fn build(self: Box<Self>, cx: &mut Build<'_>) -> Result<super::service::Agents, DaemonError> {
        let counters = ControlCounters {
            accepted: cx.counter(self.accepted),
            refused: cx.counter(self.refused),
            closed_by_daemon: cx.counter(self.closed),
            open: cx.counter(self.open),
            accept_errors: cx.counter(self.accept_errors),
            requests: self.requests.map(|id| cx.counter(id)),
            errors: self.errors.iter().map(|&id| cx.counter(id)).collect(),
        };
        let c = &cx.config.control;
        let session_config = SessionConfig {
            decoder: DecoderConfig {
                max_body_bytes: c.max_body_bytes,
                enable_legacy_support: c.enable_legacy_support,
                crc_error_limit: c.crc_error_limit,
            },
            header_timeout: Duration::from_millis(c.header_timeout_ms),
            idle_timeout: (c.idle_timeout_ms > 0).then(|| Duration::from_millis(c.idle_timeout_ms)),
            max_pending_output: c.max_pending_output_bytes as usize,
        };
        let max_connections = c.max_connections as usize;
        let handler = StatusHandler::new(
            cx.board.clone(),
            cx.config_toml.to_owned(),
            cx.status_board(),
            counters,
        );
        let Some((listener, path)) = cx.take_control_listener() else {
            return Ok(Vec::new());
        };
        let agent =
            ControlAgent::new(path.to_owned(), listener, session_config, max_connections, handler);
        Ok(vec![("control", Box::new(agent) as Box<dyn Agent>)])
    }
}
