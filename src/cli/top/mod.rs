//! `corelane top`: a terminal monitor of the running daemon (devices, usage charts, tensor
//! pool streams, lanes, frame worker), or one plain-text / JSON snapshot of it (`--once`,
//! `--json`).
//!
//! Data: a [`Source`] gathers a [`Snapshot`] each refresh ([`live::DaemonSource`]: the
//! control socket, the alloc server's socket and the counters file); [`render`] draws it into
//! a ratatui buffer. The terminal is a ratatui `Terminal`, which sends only the cells that
//! changed since the last frame (no clear per frame, so no flicker), and re-lays out on resize.

pub mod live;
pub mod render;
pub mod snapshot;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::Rect;

use crate::daemon::CliContext;
use render::View;
use snapshot::{Daemon, History, Snapshot, Source};

/// `corelane top`'s own arguments (the daemon's, --config, --socket, --timeout-ms, are
/// added as for every daemon command).
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Refresh interval in milliseconds.
    #[arg(short = 'r', long = "refresh", value_name = "MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    pub refresh_ms: u64,
    /// Print one plain-text snapshot of every view (no escape codes) and exit: 0 if the
    /// daemon answered, 1 if it is not running.
    #[arg(long)]
    pub once: bool,
    /// Print one snapshot as JSON and exit (exit codes as --once).
    #[arg(long, conflicts_with = "once")]
    pub json: bool,
    /// The counters file (default: `metrics.counters_file` next to the control socket).
    #[arg(long, value_name = "PATH")]
    pub counters: Option<PathBuf>,
    /// The alloc server's native socket (default: the first native listener of `[alloc]`
    /// listeners).
    #[arg(long, value_name = "PATH")]
    pub alloc_socket: Option<PathBuf>,
    /// The view to start in, 1 to 5.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub view: u8,
}

/// Long help: keys, views, data sources, examples.
pub const HELP: &str = "\
KEYS
    1  devices   one block per device: DRAM, L1, L1_SMALL, TRACE, SYSTEM, CB and KERNEL used
                 against capacity (L1 counts L1 buffers plus CBs, as tt-smi; L1_SMALL, CB and
                 KERNEL against L1, TRACE against DRAM, SYSTEM is host memory), bars green,
                 yellow from 75 %, red from 90 %; then the processes holding memory (pid,
                 name, device, bytes by type)
    2  charts    DRAM and L1 percent per device, the last 120 refreshes
    3  streams   tensor pool streams: epoch, producer, consumers, frames, frames/s, drops,
                 handoff p99 (consumers measure it; the daemon does not report it: -)
    4  lanes     per lane: core, idle strategy, work/s, passes/s, idle %, pass p99, reactor
    5  frames    the frame worker: sessions, window, in flight, frames/s, results/s, decode
                 and infer p99, errors by code, closes by cause (RTT is the agent's figure)
    q, Ctrl-C    quit (also Esc); the terminal is restored, also after an error, a panic,
                 SIGTERM or SIGHUP (exit status 128 + the signal's number)

DATA
    The control socket (status: daemon, lanes, which services run; pool status: streams),
    the alloc server's native socket (usage per device, processes), and the counters file
    (lane passes, work, idle time and pass quantiles; the frame worker's counters; the
    heartbeat). Every refresh connects anew: a stopped daemon shows \"not running\" and the
    views come back when it does. A service that is disabled or absent shows one line saying
    so. Rates (per second) of the counters file's figures are over the daemon's last publish
    interval (metrics.publish_interval_ms; the last rate stays until the next publish), the
    others over the last refresh interval. Control requests go over the socket
    (--transport shared-memory opens a channel per refresh instead; auto means the socket
    here).

EXIT STATUS (--once, --json)
    0 when the daemon answered; 1 when it is not running (the output says so); 2 on a usage
    or config error, or when the monitor's stdout is not a terminal. --once and --json sample
    twice, one refresh interval apart, and on until the counters file published twice (3 s at
    most), so rates are filled.

EXAMPLES
    corelane top                       the monitor, refreshing every 500 ms
    corelane top -r 250 --view 4       4 refreshes a second, starting on the lanes view
    corelane top --once                every view as plain text, for scripts and logs
    corelane top --json | jq '.devices.data[0].dram'
    corelane top --socket /run/corelane/control.sock";

/// Runs `corelane top`.
pub fn run(args: &TopArgs, cx: &CliContext) -> ExitCode {
    let dir = cx.socket.parent().map(PathBuf::from).unwrap_or_default();
    let endpoints = live::Endpoints {
        control: cx.socket.clone(),
        alloc: args.alloc_socket.clone().or_else(|| crate::cli::alloc::native_socket(cx)),
        counters: args
            .counters
            .clone()
            .unwrap_or_else(|| dir.join(&cx.config.metrics.counters_file)),
        timeout: cx.timeout,
        frames_window: cx.config.frames.window,
        transport: cx.transport,
    };
    let mut source = live::DaemonSource::new(endpoints);
    let socket = cx.socket.display().to_string();
    if args.once || args.json {
        return once(&mut source, &socket, args);
    }
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        eprintln!("corelane top: stdout is not a terminal; use --once or --json for a snapshot");
        return ExitCode::from(2);
    }
    let view = View::ALL[usize::from(args.view.clamp(1, 5)) - 1];
    match watch(&mut source, &socket, args.refresh_ms, view) {
        Ok(Quit::Key) => ExitCode::SUCCESS,
        // The shell's convention for a process ended by a signal.
        Ok(Quit::Signal(n)) => ExitCode::from(128u8.saturating_add(n)),
        Err(e) => {
            eprintln!("corelane top: terminal: {e}");
            ExitCode::from(1)
        }
    }
}

fn once(source: &mut dyn Source, socket: &str, args: &TopArgs) -> ExitCode {
    let refresh = Duration::from_millis(args.refresh_ms);
    let (text, running) = once_output(source, socket, args.json, refresh);
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) is not an error of ours.
    let _ = writeln!(out, "{text}");
    match running {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    }
}

/// How long `--once` samples, at most, for the rates of the counters file to fill: they need
/// two of its publishes after the first gather (`metrics.publish_interval_ms`, 1 s by default).
const FILL_WITHIN: Duration = Duration::from_secs(3);

/// What `--once` (or `--json`) prints, and whether the daemon is running: gathers `refresh`
/// apart until the rates are filled (two at least; at most `FILL_WITHIN`), or one when
/// nothing answers.
pub fn once_output(
    source: &mut dyn Source,
    socket: &str,
    json: bool,
    refresh: Duration,
) -> (String, bool) {
    let started = Instant::now();
    let mut snap = source.gather();
    if snap.daemon != Daemon::NotRunning {
        std::thread::sleep(refresh);
        snap = source.gather();
        while rates_pending(&snap) && started.elapsed() < FILL_WITHIN {
            std::thread::sleep(refresh.max(Duration::from_millis(10)));
            snap = source.gather();
        }
    }
    let mut history = History::default();
    history.push(&snap);
    let text = if json {
        serde_json::to_string_pretty(&snap).unwrap_or_default()
    } else {
        once_text(&snap, &history, socket)
    };
    (text, snap.daemon != Daemon::NotRunning)
}

/// Whether a rate from the counters file is still unknown: the file has not published twice
/// since the first gather.
fn rates_pending(snap: &Snapshot) -> bool {
    let lanes = snap.lanes.ok().is_some_and(|l| {
        l.from == "counters file" && l.lanes.iter().any(|x| x.passes_per_s.is_none())
    });
    let frames = snap.frames.ok().is_some_and(|f| f.frames_per_s.is_none());
    snap.daemon != Daemon::NotRunning && (lanes || frames)
}

/// Columns of `--once` output.
pub const ONCE_WIDTH: u16 = 110;

/// The `--once` text: the header, then every view under a `== N name ==` rule, as plain
/// text (the same cells the monitor draws, without styles). Only the header when the daemon
/// is not running.
pub fn once_text(snap: &Snapshot, history: &History, socket: &str) -> String {
    let header = render::header(snap, socket, None).to_string();
    let mut out = vec![header];
    if snap.daemon == Daemon::NotRunning {
        out.push(
            "hint: start it with `corelane run`, or point at its socket with --socket / --config"
                .into(),
        );
        return out.join("\n");
    }
    for (i, v) in View::ALL.iter().enumerate() {
        out.push(format!("== {} {} ==", i + 1, v.name()));
        let area = Rect::new(0, 0, ONCE_WIDTH, render::height(*v, snap, history, ONCE_WIDTH));
        let mut buf = Buffer::empty(area);
        render::view(*v, snap, history, area, &mut buf);
        out.extend(render::buffer_lines(&buf));
    }
    out.join("\n")
}

/// Leaves raw mode and the alternate screen when dropped (also on an error return; a panic
/// is covered by the hook `ratatui::try_init` installs).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Why the monitor ended.
enum Quit {
    /// `q`, Esc or Ctrl-C.
    Key,
    /// SIGTERM or SIGHUP (its number).
    Signal(u8),
}

/// The signals that end the monitor (the terminal restored) instead of killing it with the
/// terminal left in raw mode on the alternate screen. SIGINT is not here: raw mode turns
/// Ctrl-C into a key.
const QUIT_SIGNALS: [i32; 2] = [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP];

/// Longest wait for a key between two checks of the signal flag: how late the monitor may
/// notice a SIGTERM when the refresh interval is long.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

fn watch(
    source: &mut dyn Source,
    socket: &str,
    refresh_ms: u64,
    mut view: View,
) -> std::io::Result<Quit> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // Before the terminal changes: a signal from here on ends the loop below, which restores.
    let signalled = Arc::new(AtomicUsize::new(0));
    for signal in QUIT_SIGNALS {
        let number = usize::try_from(signal).unwrap_or(0);
        signal_hook::flag::register_usize(signal, Arc::clone(&signalled), number)?;
    }
    // Armed first: restores whatever `try_init` managed before failing, too.
    let _restore = Restore;
    let mut terminal = ratatui::try_init()?;
    let refresh = Duration::from_millis(refresh_ms);
    let mut history = History::default();
    let mut snap = Snapshot::default();
    let mut due = Instant::now();
    let mut redraw = true;
    loop {
        // Relaxed: the flag carries nothing but itself.
        if let n @ 1.. = signalled.load(Ordering::Relaxed) {
            return Ok(Quit::Signal(u8::try_from(n).unwrap_or(u8::MAX)));
        }
        if Instant::now() >= due {
            snap = source.gather();
            history.push(&snap);
            due = Instant::now() + refresh;
            redraw = true;
        }
        if redraw {
            terminal.draw(|f| {
                let area = f.area();
                render::screen(&snap, &history, view, socket, refresh_ms, area, f.buffer_mut());
            })?;
            redraw = false;
        }
        // Wait for a key or the next refresh; a resize redraws at once (draw re-lays out).
        let wait = due.saturating_duration_since(Instant::now()).min(SIGNAL_CHECK);
        if !event::poll(wait)? {
            continue;
        }
        redraw = true;
        match event::read()? {
            Event::Key(k) if k.kind != KeyEventKind::Release => match k.code {
                KeyCode::Char('q' | 'Q') | KeyCode::Esc => return Ok(Quit::Key),
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Ok(Quit::Key)
                }
                KeyCode::Char(c) => {
                    if let Some(v) = View::from_key(c) {
                        view = v;
                    }
                }
                _ => {}
            },
            Event::Resize(..) => terminal.autoresize()?,
            _ => {}
        }
    }
}
