//! The `corelane` command line: one function per subcommand.

pub mod agent;
pub mod alloc;
pub mod bench;
pub mod pool;
pub mod top;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{self, Config};
use crate::control::proto::{LaneReport, LaneStatus};
use crate::control::{Client, ClientError, ConnectionPool, PoolError};
use crate::daemon::services::SERVICES;
use crate::daemon::CliContext;
use crate::wire::WireError;

/// corelane: a synchronous thread-per-core runtime for accelerator hosts.
///
/// `corelane run` starts the daemon: pinned lanes, the control socket, the counters file and
/// the Prometheus endpoint. `config show` prints the effective configuration. The other
/// subcommands come from the daemon's services and talk to a running daemon (each takes
/// --config, --socket and --timeout-ms to find it).
#[derive(Debug, Parser)]
#[command(name = "corelane", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground until SIGINT or SIGTERM.
    ///
    /// With no arguments it runs the embedded default configuration (config/corelane.toml in
    /// the source tree, which documents every key). A file given with --config overrides any
    /// of its keys; CORELANE_<SECTION>_<KEY> environment variables override both.
    #[command(after_long_help = env_help())]
    Run {
        /// TOML file with keys to override (unknown keys are an error).
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// A tp_driver-style tensor pool config (the C driver's TOML, `aeron:` channels
        /// accepted) used instead of the [pool.*] tables: sets pool.config_file.
        #[arg(long, value_name = "PATH")]
        pool_config: Option<PathBuf>,
        /// A YOLO-style ONNX model for the frame worker's detector: sets frames.detector =
        /// "onnx" and frames.model (a build with `--features onnx`). Without it the worker
        /// runs the built-in motion detector.
        #[arg(long, value_name = "PATH.onnx")]
        model: Option<PathBuf>,
    },
    /// Stream frames to an inference worker (frame protocol v1) and report the results.
    ///
    /// The edge agent: connects to the worker at --worker, sends Init with its capabilities,
    /// adopts the worker's InitOk (window of credits, max frame bytes, raw or JPEG), then
    /// captures frames from --source at --fps and sends each as a credit frees. With no
    /// credit, --policy decides: latest-wins replaces the one pending frame (a drop), fifo
    /// queues and pauses capture. Frames over the worker's max frame bytes, or all frames
    /// when the worker chose JPEG, go out as JPEG (quality 85). Heartbeats every 2 s; 10 s
    /// of silence from the worker, or a dropped connection, reconnects with backoff (0.5 s
    /// doubling to 30 s, jittered) and a new Init. At the end (--frames, or SIGINT/SIGTERM)
    /// it sends End, waits up to 2 s for the frames in flight and prints a summary: frames
    /// sent, results, drops, errors by code, RTT p50/p99, detections, track ids,
    /// reconnects, JPEG switches and ratio.
    #[command(after_long_help = agent::EXAMPLES)]
    Agent(agent::AgentArgs),
    /// A terminal monitor of the running daemon: devices, usage charts, pool streams, lanes,
    /// the frame worker.
    ///
    /// Keys 1 to 5 switch views, q quits. It refreshes every -r MS (500), reconnecting each
    /// time, so a daemon restart shows "not running" and then recovers. --once prints every
    /// view once as plain text (exit 0; exit 1 if the daemon is not running), --json the
    /// same snapshot as JSON.
    #[command(after_long_help = top::HELP)]
    Top(top::TopArgs),
    /// Benchmark corelane on this machine: one suite of the perf/ harness, corelane's rows only.
    ///
    /// Runs corelane-perf (beside this binary, else on PATH) with the suite and the flags
    /// given, plus --no-peers: pinned to two cpus, after an idle check, in interleaved rounds
    /// that each re-measure the cross-core floor; HDR percentiles with the machine facts,
    /// optionally as JSON (--json) and as a percentile plot (--plot). The side-by-side runs
    /// against peer crates are `cargo run --release -p corelane-perf -- SUITE`.
    #[command(after_long_help = bench::after_help())]
    Bench(bench::BenchArgs),
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print the effective configuration (defaults, file and environment merged) as TOML.
    Show {
        /// TOML file with keys to override.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

/// The whole command line: the built-in subcommands and every service's.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command().mut_subcommand("top", with_daemon_args);
    for service in SERVICES {
        for sub in service.commands() {
            cmd = cmd.subcommand(with_daemon_args(sub));
        }
    }
    cmd
}

/// Runs the command line; the binary's `main`.
pub fn main() -> ExitCode {
    let matches = command().get_matches();
    if let Some((name, sub)) = matches.subcommand() {
        let owner = SERVICES.iter().find(|s| s.commands().iter().any(|c| c.get_name() == name));
        if let Some(service) = owner {
            let cx = match cli_context(sub) {
                Ok(cx) => cx,
                Err(code) => return code,
            };
            return service.run_command(name, sub, &cx);
        }
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Run { config, pool_config, model } => {
            run(config.as_deref(), pool_config.as_deref(), model.as_deref())
        }
        Command::Config { action: ConfigAction::Show { config } } => config_show(config.as_deref()),
        Command::Agent(args) => agent::run(&args),
        Command::Top(args) => {
            let sub = matches.subcommand_matches("top").unwrap_or(&matches);
            match cli_context(sub) {
                Ok(cx) => top::run(&args, &cx),
                Err(code) => code,
            }
        }
        Command::Bench(args) => bench::run(&args),
    }
}

/// The arguments every service subcommand takes to find the daemon.
fn with_daemon_args(cmd: clap::Command) -> clap::Command {
    use clap::{value_parser, Arg};
    cmd.arg(
        Arg::new("config")
            .long("config")
            .short('c')
            .value_name("PATH")
            .value_parser(value_parser!(PathBuf))
            .global(true)
            .help("Config file of the daemon, to find its control socket."),
    )
    .arg(
        Arg::new("socket")
            .long("socket")
            .value_name("PATH")
            .value_parser(value_parser!(PathBuf))
            .global(true)
            .help("The control socket, instead of the one the config names."),
    )
    .arg(
        Arg::new("timeout_ms")
            .long("timeout-ms")
            .value_name("MS")
            .value_parser(value_parser!(u64))
            .default_value("1000")
            .global(true)
            .help("How long to wait for each answer."),
    )
    .arg(
        Arg::new("transport")
            .long("transport")
            .value_name("HOW")
            .value_parser(["auto", "socket", "shared-memory"])
            .default_value("auto")
            .global(true)
            .help(
                "How requests reach the daemon: over the control socket, over a \
                 shared-memory channel (corelane_ipc_v2_<pid>; fails if the daemon offers \
                 none), or auto (shared memory when offered, else the socket).",
            ),
    )
}

fn cli_context(matches: &clap::ArgMatches) -> Result<CliContext, ExitCode> {
    let config = load(matches.get_one::<PathBuf>("config").map(PathBuf::as_path))?;
    let socket = match matches.get_one::<PathBuf>("socket") {
        Some(s) => s.clone(),
        None => config.control_socket_path(&|k| std::env::var(k).ok()),
    };
    let timeout = Duration::from_millis(*matches.get_one::<u64>("timeout_ms").unwrap_or(&1000));
    let transport = matches
        .get_one::<String>("transport")
        .and_then(|t| t.parse().ok())
        .unwrap_or(crate::control::Transport::Auto);
    Ok(CliContext { config, socket, timeout, transport })
}

/// A pool of one connection to the daemon (the CLI's way in; a long-running tool would keep
/// the pool and reuse its connections).
fn pool(cx: &CliContext) -> Result<ConnectionPool, PoolError> {
    ConnectionPool::builder()
        .max_connections(1)
        .client(Client::builder().timeout(cx.timeout).transport(cx.transport))
        .build(&cx.socket)
}

fn no_answer(command: &str, cx: &CliContext, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("corelane {command}: no answer from the daemon at {}: {error}", cx.socket.display());
    eprintln!(
        "hint: start it with `corelane run`, or point at its socket with --socket / --config"
    );
    ExitCode::from(1)
}

fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load_from_process(path).map_err(|e| {
        eprintln!("corelane: config error: {e}");
        ExitCode::from(2)
    })
}

fn run(path: Option<&Path>, pool_config: Option<&Path>, model: Option<&Path>) -> ExitCode {
    let mut config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(file) = model {
        let file = match std::fs::canonicalize(file) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("corelane: --model {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        config.frames.detector = "onnx".into();
        config.frames.model = file.display().to_string();
        if let Err(e) = config.validate() {
            eprintln!("corelane: config error: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(file) = pool_config {
        let file = match std::fs::canonicalize(file) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("corelane: --pool-config {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        config.pool.config_file = file.display().to_string();
        if let Err(e) = config.validate() {
            eprintln!("corelane: config error: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = crate::metrics::init_logging(&config.log.filter) {
        eprintln!("corelane: {e}");
        return ExitCode::from(2);
    }
    match crate::daemon::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("corelane: {e}");
            ExitCode::from(1)
        }
    }
}

/// `corelane status`.
pub fn status(cx: &CliContext) -> ExitCode {
    let status = pool(cx).map_err(|e| e.to_string()).and_then(|pool| {
        let mut client = pool.get().map_err(|e| e.to_string())?;
        client.status().map_err(|e| e.to_string())
    });
    match status {
        Ok(s) => {
            println!(
                "corelane {} running: up {}, reactor {}, {} control connection(s)",
                s.version,
                uptime(s.uptime_ms),
                s.reactor,
                s.connections
            );
            println!(
                "{:<12} {:>5} {:<8} {:>12} {:>12} {:>10} {:>10}  agents",
                "lane", "core", "idle", "passes", "work", "p99 pass", "max pass"
            );
            for l in &s.lanes {
                let core = if l.core < 0 { "-".to_string() } else { l.core.to_string() };
                println!(
                    "{:<12} {:>5} {:<8} {:>12} {:>12} {:>8}ns {:>8}ns  {}",
                    l.name,
                    core,
                    l.idle,
                    l.passes,
                    l.work,
                    l.p99_pass_ns,
                    l.max_pass_ns,
                    l.agents.join(",")
                );
            }
            for svc in &s.services {
                let details: Vec<String> =
                    svc.details.iter().map(|d| format!("{}={}", d.key, d.value)).collect();
                println!("service {:<8} {:<18} {}", svc.name, svc.state, details.join(" "));
            }
            ExitCode::SUCCESS
        }
        Err(e) => no_answer("status", cx, &e),
    }
}

/// `corelane ping`: `count` round trips, one line each, then the minimum and maximum.
pub fn ping(cx: &CliContext, count: u32) -> ExitCode {
    let pool = match pool(cx) {
        Ok(p) => p,
        Err(e) => return no_answer("ping", cx, &e),
    };
    let mut times = Vec::with_capacity(count as usize);
    let mut via = String::from("the control socket");
    for seq in 0..count {
        let rtt = pool.get().map_err(|e| e.to_string()).and_then(|mut c| {
            if let Some(name) = c.channel_name() {
                via = format!("shared memory ({name})");
            }
            c.ping().map_err(|e| e.to_string())
        });
        match rtt {
            Ok(rtt) => {
                println!("ping {seq}: {:.1} us", rtt.as_secs_f64() * 1e6);
                times.push(rtt);
            }
            Err(e) => return no_answer("ping", cx, &e),
        }
    }
    let (min, max) = (times.iter().min(), times.iter().max());
    if let (Some(min), Some(max)) = (min, max) {
        println!(
            "{count} pings over {via}: min {:.1} us, max {:.1} us, connection reused {} of {} \
             times",
            min.as_secs_f64() * 1e6,
            max.as_secs_f64() * 1e6,
            pool.stats().reused,
            count
        );
    }
    ExitCode::SUCCESS
}

fn config_show(path: Option<&Path>) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match config.to_toml_string() {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corelane: {e}");
            ExitCode::from(2)
        }
    }
}

/// `corelane watch`: prints a report per push of the lanes' statistics, `count` of them (or
/// until the daemon goes away).
pub fn watch(cx: &CliContext, count: Option<u32>) -> ExitCode {
    let connected = Client::builder().timeout(cx.timeout).connect(&cx.socket);
    let subscribed = connected.and_then(|mut client| {
        let (_, first) = client.watch_lanes()?;
        Ok((client, first))
    });
    let (mut client, mut last) = match subscribed {
        Ok(s) => s,
        Err(ClientError::Remote { code, .. }) if code == WireError::UnknownMsgType(0).code() => {
            eprintln!(
                "corelane watch: the daemon at {} does not report lanes: its metrics service \
                 is off (metrics.enabled = false in its config)",
                cx.socket.display()
            );
            return ExitCode::from(1);
        }
        Err(e) => return no_answer("watch", cx, &e),
    };
    // Pushes come every publish interval (the daemon's; ours is the best guess): allow three
    // of them, and at least the request timeout, before calling the daemon gone.
    let interval = Duration::from_millis(cx.config.metrics.publish_interval_ms.max(1));
    let patience = (interval * 3).max(cx.timeout);
    println!(
        "{:>10} {:<12} {:>12} {:>12} {:>6} {:>10} {:>10}",
        "uptime", "lane", "passes/s", "work/s", "idle", "p99 pass", "max pass"
    );
    let mut printed = 0u32;
    while count.is_none_or(|n| printed < n) {
        let report = match client.next_push(patience) {
            Ok(push) => match push.decode::<LaneReport>() {
                Ok(r) => r,
                Err(e) => return no_answer("watch", cx, &e),
            },
            Err(e) => {
                eprintln!("corelane watch: the daemon stopped reporting: {e}");
                return ExitCode::from(1);
            }
        };
        print_lane_report(&last, &report);
        last = report;
        printed += 1;
    }
    ExitCode::SUCCESS
}

/// One line per lane: rates since `before`, and the pass quantiles of `now`.
fn print_lane_report(before: &LaneReport, now: &LaneReport) {
    let secs = now.uptime_ms.saturating_sub(before.uptime_ms).max(1) as f64 / 1e3;
    for lane in &now.lanes {
        let prev = before.lanes.iter().find(|l| l.name == lane.name);
        let delta = |f: fn(&LaneStatus) -> u64| prev.map_or(0, |p| f(lane).saturating_sub(f(p)));
        let idle = delta(|l| l.idle_ns) as f64 / (secs * 1e9) * 100.0;
        println!(
            "{:>10} {:<12} {:>12.0} {:>12.0} {:>5.1}% {:>8}ns {:>8}ns",
            uptime(now.uptime_ms),
            lane.name,
            delta(|l| l.passes) as f64 / secs,
            delta(|l| l.work) as f64 / secs,
            idle.min(100.0),
            lane.p99_pass_ns,
            lane.max_pass_ns,
        );
    }
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}

/// The environment overrides `run` understands, for its long help.
fn env_help() -> String {
    let mut text = String::from(
        "ENVIRONMENT\n    CORELANE_LOG                       log filter (tracing syntax), overrides log.filter\n",
    );
    for o in config::env_overrides() {
        text.push_str(&format!("    {:<34} overrides {}\n", o.var, o.key));
    }
    text.push_str("\nFILES\n    <runtime dir>/control.sock   control socket (runtime.dir; default $XDG_RUNTIME_DIR/corelane, else /dev/shm/corelane-$USER or /tmp/corelane-$USER)\n    <runtime dir>/counters       counters file, readable without talking to the daemon\n");
    text
}
