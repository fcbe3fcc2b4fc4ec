//! `corelane top` against the real binary: `--once` and `--json` with and without a daemon
//! (the alloc harness's [`support::Rig`]: its own runtime dir, alloc listeners, pool off,
//! frames off), and the monitor itself on a pseudo-terminal: it draws, switches views, shows
//! "not running" across a daemon restart and recovers, re-lays out on resize, and `q`, SIGTERM
//! and SIGHUP leave the alternate screen and raw mode.

#[path = "frames_support/mod.rs"]
mod frames_support;
mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corelane::alloc::wire::MsgType;
use support::{wait_for, Listener, Native, Rig, Setup, BIN};

/// `corelane top ARGS` with nothing inherited that could point it elsewhere.
fn top(args: &[&str], runtime_dir: &Path) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("top").args(args).env("XDG_RUNTIME_DIR", runtime_dir);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CORELANE_")) {
        cmd.env_remove(k);
    }
    cmd.stdin(Stdio::null()).output().expect("corelane top runs")
}

#[test]
fn once_without_a_daemon_says_not_running_plainly_and_fails() {
    let dir = std::env::temp_dir().join(format!("cl-top-{}-none", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = top(&["--once"], &dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("daemon not running (nothing answers at"), "{text}");
    assert!(!out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b), "no escape codes");

    let out = top(&["--json"], &dir);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["daemon"]["state"], "not_running");

    let out = top(&[], &dir);
    assert_eq!(out.status.code(), Some(2), "the monitor needs a terminal");
    assert!(String::from_utf8_lossy(&out.stderr).contains("use --once or --json"));

    let help = top(&["--help"], &dir);
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in ["KEYS", "1  devices", "5  frames", "DATA", "EXIT STATUS", "EXAMPLES", "--once"] {
        assert!(help.contains(needle), "--help teaches {needle}: {help}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn once_and_json_show_the_running_daemon() {
    let rig = Rig::start("top-once");
    let mut client = Native::connect(&rig.path(Listener::Native));
    client.event(MsgType::Alloc, 0, 0, 0x1000, 3 << 20);
    rig.wait_events(1);
    let config = rig.config.display().to_string();
    let out = top(&["--once", "-r", "100", "-c", &config], &rig.dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.stdout.contains(&0x1b), "no escape codes: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("corelane top  daemon "), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("┌ Device 0 (")), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("│DRAM ") && l.contains("3.0MB / ")), "{text}");
    let pid = std::process::id().to_string();
    assert!(
        lines.iter().any(|l| l.trim_start_matches('│').split_whitespace().next() == Some(&pid)),
        "the process table has this test's pid {pid}: {text}"
    );
    assert!(lines.contains(&"tensor pool: disabled (pool.enabled = false)"), "{text}");
    assert!(lines.contains(&"frame worker: disabled (frames.enabled = false)"), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("│main ")), "lanes are named: {text}");
    assert!(text.contains("figures from the counters file (counters file: live)"), "{text}");

    let out = top(&["--json", "-r", "100", "-c", &config], &rig.dir);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["daemon"]["state"], "running");
    assert_eq!(v["devices"]["state"], "ok");
    assert_eq!(v["devices"]["data"][0]["dram"], 3 << 20);
    assert_eq!(v["processes"][0]["pid"], std::process::id());
    assert_eq!(v["streams"]["state"], "off");
    let lanes = v["lanes"]["data"]["lanes"].as_array().expect("lanes");
    assert!(lanes.iter().any(|l| l["name"] == "main"), "{v}");
    assert!(lanes.iter().all(|l| l["passes_per_s"].as_f64().is_some()), "rates are filled: {v}");
}

#[test]
fn once_lists_the_frame_workers_sessions() {
    use corelane::frames::proto::envelope::Payload;
    use corelane::frames::vision::synthetic::Synthetic;
    use corelane::frames::vision::yuv::RawFormat;
    let worker = frames_support::Worker::start("top-frames", "window = 3\n");
    let mut peer = frames_support::Peer::connect(worker.addr);
    peer.init(320, 240, 3);
    let mut source = Synthetic::new(320, 240, 1, 7);
    for id in 1..=2 {
        peer.send(Payload::Frame(frames_support::frame_msg(
            &mut source,
            RawFormat::Nv12,
            id,
            320,
            240,
        )));
        assert_eq!(peer.expect_result().frame_id, id);
    }
    let config = worker.config.display().to_string();
    let mut last = String::new();
    wait_for("top to list the session with its 2 frames", || {
        let out = top(&["--once", "-r", "50", "-c", &config], &worker.dir);
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        // `#N window in-flight frames`: N counts the harness's readiness probe too.
        last.lines().any(|l| {
            let w: Vec<&str> = l.trim_start_matches('│').split_whitespace().take(4).collect();
            w.len() == 4 && w[0].starts_with('#') && w[1..] == ["3", "0", "2"]
        })
    });
    let lines: Vec<&str> = last.lines().collect();
    assert!(lines.contains(&"alloc server: disabled (alloc.enabled = false)"), "{last}");
    assert!(
        lines.iter().any(|l| l.contains("sessions 1 open (") && l.contains("window 3")),
        "{last}"
    );
    assert!(lines.iter().any(|l| l.starts_with("┌ Sessions")), "{last}");
}

/// A pseudo-terminal: the master end read by a thread into `output`.
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    /// Runs `corelane top ARGS` on this terminal in a session of its own, without a
    /// controlling terminal: the pty is its only terminal (crossterm would otherwise ask
    /// /dev/tty, the caller's terminal, for the size). The caller's `CORELANE_*` variables are
    /// removed; `env` is set.
    fn spawn_top(&self, args: &[&str], env: &[(&str, &Path)]) -> std::process::Child {
        let mut cmd = Command::new("setsid");
        cmd.arg(BIN).arg("top").args(args).env("TERM", "xterm");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CORELANE_")) {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(self.slave.try_clone().unwrap())
            .stdout(self.slave.try_clone().unwrap())
            .stderr(self.slave.try_clone().unwrap())
            .spawn()
            .unwrap()
    }

    fn open(rows: u16, cols: u16) -> Pty {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave: OwnedFd =
            File::options().read(true).write(true).open(name.to_str().unwrap()).unwrap().into();
        let pty = Pty { master, slave, output: Arc::default() };
        pty.resize(rows, cols);
        let mut reader = File::from(pty.master.try_clone().unwrap());
        let output = pty.output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        pty
    }

    fn resize(&self, rows: u16, cols: u16) {
        let size =
            rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        rustix::termios::tcsetwinsize(&self.slave, size).unwrap();
    }

    fn send(&self, bytes: &[u8]) {
        File::from(self.master.try_clone().unwrap()).write_all(bytes).unwrap();
    }

    fn output(&self) -> Vec<u8> {
        self.output.lock().unwrap().clone()
    }

    /// The screen the output draws, replayed from the start.
    fn screen(&self) -> Screen {
        Screen::replay(&String::from_utf8_lossy(&self.output()))
    }

    fn wait_screen(&self, what: &str, cond: impl Fn(&Screen) -> bool) -> Screen {
        let deadline = Instant::now() + support::DEADLINE;
        loop {
            let s = self.screen();
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{}",
                s.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Just enough of a terminal to replay what ratatui's crossterm backend writes: cursor
/// moves (`CSI r;c H`), full clears (`CSI 2J`), text; other sequences ignored. The size is
/// the largest the output addressed (a resize starts over at the clear that follows it).
struct Screen {
    rows: Vec<Vec<char>>,
}

impl Screen {
    fn replay(text: &str) -> Screen {
        let mut rows: Vec<Vec<char>> = Vec::new();
        let (mut r, mut c) = (0usize, 0usize);
        let mut chars = text.chars().peekable();
        while let Some(ch) = chars.next() {
            match ch {
                '\x1b' => {
                    if chars.peek() != Some(&'[') {
                        chars.next();
                        continue;
                    }
                    chars.next();
                    let mut params = String::new();
                    let mut fin = ' ';
                    for p in chars.by_ref() {
                        if p.is_ascii_alphabetic() || p == '@' || p == '~' {
                            fin = p;
                            break;
                        }
                        params.push(p);
                    }
                    match fin {
                        'H' => {
                            let mut it = params.split(';').map(|n| n.parse::<usize>().unwrap_or(1));
                            r = it.next().unwrap_or(1).saturating_sub(1);
                            c = it.next().unwrap_or(1).saturating_sub(1);
                        }
                        'J' if params == "2" => rows.clear(),
                        _ => {}
                    }
                }
                '\r' => c = 0,
                '\n' => r += 1,
                _ => {
                    while rows.len() <= r {
                        rows.push(Vec::new());
                    }
                    let row = &mut rows[r];
                    while row.len() <= c {
                        row.push(' ');
                    }
                    row[c] = ch;
                    c += 1;
                }
            }
        }
        Screen { rows }
    }

    fn line(&self, i: usize) -> String {
        self.rows
            .get(i)
            .map(|r| r.iter().collect::<String>().trim_end().to_owned())
            .unwrap_or_default()
    }

    fn text(&self) -> String {
        (0..self.rows.len()).map(|i| self.line(i)).collect::<Vec<_>>().join("\n")
    }

    fn contains(&self, needle: &str) -> bool {
        (0..self.rows.len()).any(|i| self.line(i).contains(needle))
    }
}

#[test]
fn the_monitor_switches_views_survives_a_restart_relays_out_and_restores_the_terminal() {
    if Command::new("setsid").arg("--version").output().is_err() {
        eprintln!("skipped: no setsid(1) to run the monitor in a session of its own");
        return;
    }
    let setup = Setup::default();
    let mut rig = Rig::start("top-tty");
    let pty = Pty::open(40, 120);
    let config = rig.config.display().to_string();
    let mut child = pty.spawn_top(&["-r", "100", "-c", &config], &[]);

    let first = rig.pid().to_string();
    pty.wait_screen("the devices view", |s| {
        s.line(0).contains(&format!("pid {first}")) && s.contains("Device 0 (")
    });
    use rustix::termios::LocalModes;
    let modes = rustix::termios::tcgetattr(&pty.slave).unwrap().local_modes;
    assert!(!modes.contains(LocalModes::ICANON), "the monitor runs in raw mode: {modes:?}");
    pty.send(b"4");
    pty.wait_screen("the lanes view", |s| s.contains("┌ Lanes") && s.contains("│main "));

    rig.terminate();
    pty.wait_screen("not running", |s| s.line(0).contains("daemon not running"));
    rig.launch(&setup);
    let second = rig.pid().to_string();
    let s = pty.wait_screen("the restarted daemon", |s| {
        s.line(0).contains(&format!("pid {second}")) && s.contains("│main ")
    });
    assert!(!s.contains("daemon not running"), "{}", s.text());

    let before = pty.output().len();
    pty.resize(30, 90);
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::WINCH).unwrap();
    let s = pty.wait_screen("the lanes box re-laid out at 90 columns", |s| {
        (0..30).any(|i| {
            let l = s.line(i);
            l.starts_with("┌ Lanes") && l.chars().count() == 90 && l.ends_with('┐')
        })
    });
    assert!(
        s.rows.iter().all(|r| r.len() <= 90 || r[90..].iter().all(|&c| c == ' ')),
        "{}",
        s.text()
    );
    assert!(pty.output().len() > before);

    // Two refreshes with nothing changed: only the few cells that move (uptime, rates) are
    // written, far less than a screen.
    let quiet_from = pty.output().len();
    std::thread::sleep(Duration::from_millis(300));
    let written = pty.output().len() - quiet_from;
    assert!(written < 30 * 90, "{written} bytes for ~3 refreshes of a 30x90 screen");

    // Dozens of frames so far, and the screen was cleared only at start and on the resize.
    let out = pty.output();
    let clears = out.windows(4).filter(|w| *w == b"\x1b[2J").count();
    assert!(clears <= 2, "{clears} full clears: frames must be diffs, not redraws");

    pty.send(b"q");
    let deadline = Instant::now() + support::DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "q did not quit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    wait_for("the restore sequences", || {
        let out = pty.output();
        let tail = &out[out.len().saturating_sub(64)..];
        tail.windows(8).any(|w| w == b"\x1b[?1049l") && tail.windows(6).any(|w| w == b"\x1b[?25h")
    });
    let modes = rustix::termios::tcgetattr(&pty.slave).unwrap().local_modes;
    assert!(modes.contains(LocalModes::ICANON | LocalModes::ECHO), "raw mode left: {modes:?}");
}

/// SIGTERM and SIGHUP (a `kill`, a closed terminal window) end the monitor like `q`: it
/// leaves the alternate screen and raw mode, and exits 128 + the signal's number.
#[test]
fn sigterm_and_sighup_restore_the_terminal() {
    if Command::new("setsid").arg("--version").output().is_err() {
        eprintln!("skipped: no setsid(1) to run the monitor in a session of its own");
        return;
    }
    let dir = std::env::temp_dir().join(format!("cl-top-{}-signal", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    use rustix::process::Signal;
    use rustix::termios::LocalModes;
    for (signal, number) in [(Signal::TERM, 15), (Signal::HUP, 1)] {
        let pty = Pty::open(30, 100);
        // No daemon: the monitor shows "not running" (nothing to start for this test).
        let mut child = pty.spawn_top(&["-r", "100"], &[("XDG_RUNTIME_DIR", &dir)]);
        pty.wait_screen("the monitor", |s| s.line(0).contains("daemon not running"));
        let modes = rustix::termios::tcgetattr(&pty.slave).unwrap().local_modes;
        assert!(!modes.contains(LocalModes::ICANON), "raw mode: {modes:?}");
        rustix::process::kill_process(rustix::process::Pid::from_child(&child), signal).unwrap();
        let deadline = Instant::now() + support::DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{signal:?} did not end the monitor");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(128 + number), "{signal:?}: {status}");
        wait_for("the restore sequences", || {
            let out = pty.output();
            let tail = &out[out.len().saturating_sub(64)..];
            tail.windows(8).any(|w| w == b"\x1b[?1049l")
                && tail.windows(6).any(|w| w == b"\x1b[?25h")
        });
        let modes = rustix::termios::tcgetattr(&pty.slave).unwrap().local_modes;
        assert!(modes.contains(LocalModes::ICANON | LocalModes::ECHO), "raw mode left: {modes:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
