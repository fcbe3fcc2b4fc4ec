//! The `corelane` command line: one function per subcommand.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::control::Client;

/// corelane: a synchronous thread-per-core runtime for accelerator hosts.
///
/// `corelane run` starts the daemon: pinned lanes, the control socket, the counters file and
/// the Prometheus endpoint. The other subcommands talk to a running daemon or show its config.
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
    },
    /// Ask the running daemon for its status. Exit 0 if it answered, 1 if not.
    Status {
        /// Config file of the daemon, to find its control socket.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The control socket, instead of the one the config names.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// How long to wait for the answer.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        timeout_ms: u64,
    },
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

/// Runs the command line; the binary's `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config.as_deref()),
        Command::Status { config, socket, timeout_ms } => {
            status(config.as_deref(), socket, Duration::from_millis(timeout_ms))
        }
        Command::Config { action: ConfigAction::Show { config } } => config_show(config.as_deref()),
    }
}

fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load_from_process(path).map_err(|e| {
        eprintln!("corelane: config error: {e}");
        ExitCode::from(2)
    })
}

fn run(path: Option<&Path>) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
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

fn status(path: Option<&Path>, socket: Option<PathBuf>, timeout: Duration) -> ExitCode {
    let socket = match socket {
        Some(s) => s,
        None => match load(path) {
            Ok(c) => c.control_socket_path(&|k| std::env::var(k).ok()),
            Err(code) => return code,
        },
    };
    let status = Client::builder().timeout(timeout).connect(&socket).and_then(|mut c| c.status());
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
                println!("service {:<8} {}", svc.name, svc.state);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corelane status: no answer from the daemon at {}: {e}", socket.display());
            eprintln!("hint: start it with `corelane run`, or point at its socket with --socket / --config");
            ExitCode::from(1)
        }
    }
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
