//! Suite `control`: a ping over corelane's control socket, client and daemon lane pinned to
//! the two cpus, next to a plain blocking Unix-socket echo server in the same run; and the
//! daemon's resident memory at idle.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use corelane::config::{Config, IdleStrategy, LaneConfig, ReactorKind};
use corelane::control::{Client, Transport};
use corelane::daemon::Daemon;
use corelane::runtime::Shutdown;
use corelane::wire::{self, Flags, ProtocolVersion};
use serde_json::json;

use super::{Plan, Suite};
use crate::daemon_bin::{self, daemon_binary};
use crate::floor::{self, Ratios};
use crate::pair;
use crate::pin::{pin_current, Pair};
use crate::report::{Baseline, Measure, Report, Row};
use crate::summary::{accumulate, histogram, histogram_of, Rounds, Summary};

pub const SUITE: Suite = Suite {
    name: "control",
    summary: "ping over the daemon's control socket (io_uring and poll) vs a blocking Unix echo; idle RSS",
    help: HELP,
    run,
    child: None,
};

const HELP: &str = "\
    Implementations:
      corelane           the daemon's control agent on a lane pinned to cpu B, io_uring reactor,
                         idle strategy spin; corelane::control::Client pinned to cpu A
      corelane-poll      the same with the poll (epoll) reactor
      corelane-busy-poll the io_uring daemon with a client that spins on its non-blocking
                         socket instead of sleeping in read (ClientBuilder::busy_poll)
      corelane-defer     `corelane-busy-poll` with runtime.uring_defer_taskrun = true
                         (IORING_SETUP_DEFER_TASKRUN): the other side of that A/B switch
                         (busy-polling client, so the daemon's cost is what differs)
      corelane-skip-cqe  `corelane-busy-poll` with runtime.uring_skip_send_cqe = true
                         (IOSQE_CQE_SKIP_SUCCESS on chained sends)
      corelane-shm-busy  the io_uring daemon's lane spinning, and a client on a shared-memory
                         channel (Transport::SharedMemory, busy_poll): both sides spin on the
                         rings, no syscall per round trip
      corelane-shm-futex the same channel with the daemon lane idle = backoff (it parks in its
                         reactor between requests: each request rings the doorbell byte on the
                         socket) and the client sleeping on the response ring's futex
      unix-echo          a std UnixStream server thread pinned to cpu B that reads the same
                         request bytes and writes the same number of response bytes back with
                         blocking read/write: what a plain socket server costs
      unix-echo-busy-poll the same with both sides spinning on non-blocking sockets: the least
                         any Unix-socket request/response can cost (no wake-ups at all)

    Cases:
      rtt-ping           Round trip of one control ping (canonical header + protobuf Ping,
                         answered with a Pong; the echo baseline moves the same byte counts).
                         One request in flight, one Instant::now() per round trip, as in spsc.
                         Ratios are to the cache-line floor of the same round.
      rss-idle           VmRSS of the real `corelane run` process (release build, default
                         config with the frame worker off and /metrics on 127.0.0.1:0) half a
                         second after it answered its first ping; rss-idle-anon its RssAnon
                         (heap, stacks, data: what is its own, not code). The idle-rust-process
                         rows are a floor: this (40 MB) binary started with __rss-floor, which
                         sleeps before it does anything, measured the same way. The binary: `corelane` next to this one, built
                         first if missing or older than its sources; its environment is
                         cleared but for PATH, HOME, USER, LANG, LC_ALL, TMPDIR and
                         RUST_BACKTRACE, so no CORELANE_* variable of the caller reaches it.
      idle-cpu           CPU time of the real `corelane run` process (release, default config:
                         one backoff lane) over 5 s at idle, in % of one core: with no client
                         (`corelane`), and with 100 idle shared-memory clients connected
                         (`corelane-shm-futex`, Transport::SharedMemory, each after one ping).
                         The daemon's lane drains, then arms, every channel on each wake-up.
      idle-cpu-park-100ms the same with the lane's idle_max_park_us = 100000 (the default,
                         1000, wakes the lane 1000 times a second whether or not it has work)
    Per round: every rtt case 2,000 [200] warm-up + 20,000 [2,000] timed round trips.
";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Impl {
    Corelane,
    CorelanePoll,
    CorelaneBusyPoll,
    CorelaneDeferTaskrun,
    CorelaneSkipSendCqe,
    CorelaneShmBusy,
    CorelaneShmFutex,
    UnixEcho,
    UnixEchoBusyPoll,
}

const IMPLS: [Impl; 9] = [
    Impl::Corelane,
    Impl::CorelanePoll,
    Impl::CorelaneBusyPoll,
    Impl::CorelaneDeferTaskrun,
    Impl::CorelaneSkipSendCqe,
    Impl::CorelaneShmBusy,
    Impl::CorelaneShmFutex,
    Impl::UnixEcho,
    Impl::UnixEchoBusyPoll,
];

impl Impl {
    /// The hand-written echo servers corelane is compared with (left out by `--no-peers`).
    fn peer(self) -> bool {
        matches!(self, Impl::UnixEcho | Impl::UnixEchoBusyPoll)
    }

    fn name(self) -> &'static str {
        match self {
            Impl::Corelane => "corelane",
            Impl::CorelanePoll => "corelane-poll",
            Impl::CorelaneBusyPoll => "corelane-busy-poll",
            Impl::CorelaneDeferTaskrun => "corelane-defer",
            Impl::CorelaneSkipSendCqe => "corelane-skip-cqe",
            Impl::CorelaneShmBusy => "corelane-shm-busy",
            Impl::CorelaneShmFutex => "corelane-shm-futex",
            Impl::UnixEcho => "unix-echo",
            Impl::UnixEchoBusyPoll => "unix-echo-busy-poll",
        }
    }
}

fn run(plan: &Plan) -> Report {
    let (warmup, samples) = if plan.quick { (200, 2_000) } else { (2_000, 20_000) };
    let dir = std::env::temp_dir().join(format!("corelane-perf-control-{}", std::process::id()));
    let mut rows = Vec::new();
    let mut floor_all = histogram();
    if plan.wants("rtt-ping") {
        let mut all: Vec<_> =
            IMPLS.iter().map(|_| (Rounds::default(), Ratios::default())).collect();
        for round in 0..plan.rounds as usize {
            plan.before_round(round);
            crate::progress::round(SUITE.name, round, plan.rounds);
            let floor_round = histogram_of(&floor::measure(&plan.pair, warmup, samples));
            accumulate(&mut floor_all, &floor_round);
            let floor_round = Summary::of(&floor_round);
            for k in 0..IMPLS.len() {
                let i = (k + round) % IMPLS.len();
                if IMPLS[i].peer() && !plan.peers {
                    continue;
                }
                let daemon = |setup| corelane_rtt(&plan.pair, &dir, setup, warmup, samples);
                let samples_ns = match IMPLS[i] {
                    Impl::Corelane => daemon(Setup::IO_URING),
                    Impl::CorelanePoll => {
                        daemon(Setup { reactor: ReactorKind::Poll, ..Setup::IO_URING })
                    }
                    Impl::CorelaneBusyPoll => daemon(Setup::BUSY_POLL),
                    Impl::CorelaneDeferTaskrun => {
                        daemon(Setup { defer_taskrun: true, ..Setup::BUSY_POLL })
                    }
                    Impl::CorelaneSkipSendCqe => {
                        daemon(Setup { skip_send_cqe: true, ..Setup::BUSY_POLL })
                    }
                    Impl::CorelaneShmBusy => daemon(Setup { shm: true, ..Setup::BUSY_POLL }),
                    Impl::CorelaneShmFutex => {
                        daemon(Setup { shm: true, lane_parks: true, ..Setup::IO_URING })
                    }
                    Impl::UnixEcho => echo_rtt(&plan.pair, &dir, false, warmup, samples),
                    Impl::UnixEchoBusyPoll => echo_rtt(&plan.pair, &dir, true, warmup, samples),
                };
                let h = histogram_of(&samples_ns);
                all[i].1.push(&Summary::of(&h), &floor_round);
                all[i].0.push(&h);
            }
        }
        crate::progress::done();
        for (imp, (rounds, ratios)) in IMPLS.iter().zip(all) {
            if imp.peer() && !plan.peers {
                continue;
            }
            rows.push(Row {
                imp: imp.name(),
                case: "rtt-ping",
                api: "Client::ping / blocking write+read",
                measure: Measure::Latency {
                    summary: Summary::of(rounds.all()),
                    rounds,
                    ratio_p50: ratios.p50(),
                    ratio_p99: ratios.p99(),
                    baseline: Baseline::Floor,
                    peers: Vec::new(),
                },
            });
        }
    }
    if plan.wants("rss-idle") {
        let daemons =
            [(Impl::Corelane.name(), Some("io_uring")), (Impl::CorelanePoll.name(), Some("poll"))];
        // The floor: a Rust process that does nothing (this binary, stopped before it parses
        // its arguments), measured the same way.
        for (imp, reactor) in daemons.into_iter().chain([(FLOOR_IMPL, None)]) {
            let measured = match reactor {
                Some(reactor) => idle_rss(&dir, reactor),
                None => floor_rss(),
            };
            match measured {
                Ok(rss) => {
                    for (case, api, value) in [
                        ("rss-idle", "VmRSS 0.5 s after start (daemon: frames off)", rss.total_kb),
                        ("rss-idle-anon", "RssAnon: its own heap, stacks and data", rss.anon_kb),
                    ] {
                        rows.push(Row {
                            imp,
                            case,
                            api,
                            measure: Measure::Value { value, unit: "kB" },
                        });
                    }
                }
                Err(e) => eprintln!("control: rss-idle of {imp} not measured: {e}"),
            }
        }
    }
    if plan.wants("idle-cpu") {
        let cases = [
            (Impl::Corelane, "idle-cpu", 0, None),
            (Impl::CorelaneShmFutex, "idle-cpu", 100, None),
            (Impl::Corelane, "idle-cpu-park-100ms", 0, Some(100_000)),
            (Impl::CorelaneShmFutex, "idle-cpu-park-100ms", 100, Some(100_000)),
        ];
        for (imp, case, clients, max_park_us) in cases {
            match idle_cpu(&dir, clients, max_park_us) {
                Ok(percent) => rows.push(Row {
                    imp: imp.name(),
                    case,
                    api: "utime+stime of `corelane run` over 5 s, % of one core",
                    measure: Measure::Value { value: percent, unit: "0.01%" },
                }),
                Err(e) => eprintln!("control: idle-cpu with {clients} clients not measured: {e}"),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Report {
        suite: SUITE.name,
        floor: (!floor_all.is_empty()).then(|| Summary::of(&floor_all)),
        rows,
        goals: Vec::new(),
        settings: json!({
            "rounds": plan.rounds, "quick": plan.quick,
            "rtt_warmup": warmup, "rtt_samples_per_round": samples,
            "daemon_lane": "cpu B, idle spin (backoff for corelane-shm-futex)", "client": "cpu A; blocking socket, or spinning for the busy-poll, defer and skip-cqe rows",
        }),
    }
}

/// How a `corelane` implementation runs the daemon and its client.
#[derive(Clone, Copy, Debug)]
struct Setup {
    reactor: ReactorKind,
    /// The client spins on its non-blocking socket.
    busy_poll: bool,
    /// `runtime.uring_defer_taskrun`.
    defer_taskrun: bool,
    /// `runtime.uring_skip_send_cqe`.
    skip_send_cqe: bool,
    /// The client upgrades to a shared-memory channel.
    shm: bool,
    /// The lane's idle strategy is backoff (it parks), not spin.
    lane_parks: bool,
}

impl Setup {
    /// The io_uring daemon with the default options and a blocking client.
    const IO_URING: Setup = Setup {
        reactor: ReactorKind::IoUring,
        busy_poll: false,
        defer_taskrun: false,
        skip_send_cqe: false,
        shm: false,
        lane_parks: false,
    };
    /// The io_uring daemon with the default options and a busy-polling client.
    const BUSY_POLL: Setup = Setup { busy_poll: true, ..Setup::IO_URING };
}

/// A daemon with one spinning lane pinned to cpu B hosting the control agent, and a client on
/// cpu A pinging it. Fresh daemon per measurement.
fn corelane_rtt(pair: &Pair, dir: &Path, setup: Setup, warmup: u64, samples: u64) -> Vec<u64> {
    let Setup { reactor, busy_poll, defer_taskrun, skip_send_cqe, shm, lane_parks } = setup;
    let mut config = Config::default();
    config.runtime.dir = dir.join("rt").to_string_lossy().into_owned();
    config.runtime.reactor = reactor;
    config.runtime.uring_defer_taskrun = defer_taskrun;
    config.runtime.uring_skip_send_cqe = skip_send_cqe;
    config.metrics.enabled = false;
    config.metrics.listen = String::new();
    config.pool.enabled = false; // the control socket alone is measured
    config.frames.enabled = false;
    config.lanes = vec![LaneConfig {
        name: "control".into(),
        core: Some(pair.b),
        idle: if lane_parks {
            IdleStrategy::Backoff { spin_iterations: 100, yield_iterations: 10, max_park_us: 1000 }
        } else {
            IdleStrategy::Spin
        },
        agents: vec!["control".into()],
    }];
    let daemon = Daemon::start(&config, &|_| None, Shutdown::new()).unwrap_or_else(|e| {
        eprintln!("error: cannot start the daemon for the benchmark: {e}");
        std::process::exit(2)
    });
    let socket = daemon.socket().to_owned();
    let a = pair.a;
    let samples = std::thread::spawn(move || {
        pin_current(a);
        let mut client = Client::builder()
            .timeout(Duration::from_secs(5))
            .busy_poll(busy_poll)
            .transport(if shm { Transport::SharedMemory } else { Transport::Socket })
            .connect(&socket)
            .unwrap();
        assert_eq!(client.is_shared_memory(), shm, "the daemon granted the channel");
        pair::time_round_trips(warmup, samples, |_| {
            std::hint::black_box(client.ping().unwrap());
        })
    })
    .join()
    .unwrap();
    if let Err(e) = daemon.stop() {
        eprintln!("corelane-perf: the daemon under test failed: {e}");
    }
    samples
}

/// The baseline: the same byte counts through an echo server pinned to cpu B, blocking or with
/// both sides spinning on non-blocking sockets.
fn echo_rtt(pair: &Pair, dir: &Path, spin: bool, warmup: u64, samples: u64) -> Vec<u64> {
    let (request, response_len) = ping_sizes();
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("echo.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let total = warmup + samples;
    let (b, req_len) = (pair.b, request.len());
    let server = std::thread::spawn(move || {
        pin_current(b);
        let (mut s, _) = listener.accept().unwrap();
        s.set_nonblocking(spin).unwrap();
        let mut req = vec![0u8; req_len];
        let resp = vec![0x5au8; response_len];
        for _ in 0..total {
            read_full(&mut s, &mut req);
            write_full(&mut s, &resp);
        }
    });
    let a = pair.a;
    let samples = std::thread::spawn(move || {
        pin_current(a);
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_nonblocking(spin).unwrap();
        let mut resp = vec![0u8; response_len];
        pair::time_round_trips(warmup, samples, |_| {
            write_full(&mut s, &request);
            read_full(&mut s, &mut resp);
        })
    })
    .join()
    .unwrap();
    server.join().unwrap();
    samples
}

/// `read_exact` that spins on WouldBlock (non-blocking sockets) like a busy-polling client.
fn read_full(s: &mut UnixStream, buf: &mut [u8]) {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => panic!("echo peer closed"),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("echo read: {e}"),
        }
    }
}

/// `write_all` that spins on WouldBlock.
fn write_full(s: &mut UnixStream, buf: &[u8]) {
    let mut sent = 0;
    while sent < buf.len() {
        match s.write(&buf[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("echo write: {e}"),
        }
    }
}

/// A ping request frame and the length of the pong frame the daemon answers with.
fn ping_sizes() -> (Vec<u8>, usize) {
    use prost::Message;
    let ping = corelane::control::proto::Ping { client_time_ns: u64::MAX / 3 };
    let pong = corelane::control::proto::Pong {
        client_time_ns: u64::MAX / 3,
        server_time_ns: u64::MAX / 3,
    };
    let mut request = Vec::new();
    wire::encode(
        ProtocolVersion::V2,
        corelane::control::MSG_PING,
        Flags::default(),
        1,
        &ping.encode_to_vec(),
        &mut request,
    );
    (request, wire::HEADER_LEN + pong.encoded_len())
}

/// The RSS of `corelane run` half a second after it first answered.
fn idle_rss(dir: &Path, reactor: &str) -> Result<Rss, String> {
    let bin = daemon_binary()?;
    let rt = dir.join(format!("rss-{reactor}"));
    std::fs::create_dir_all(&rt).map_err(|e| e.to_string())?;
    let mut child = daemon_bin::command(&bin)
        .arg("run")
        .env("CORELANE_FRAMES_ENABLED", "false")
        .env("XDG_RUNTIME_DIR", &rt)
        .env("CORELANE_RUNTIME_REACTOR", reactor)
        .env("CORELANE_METRICS_LISTEN", "127.0.0.1:0")
        .env("CORELANE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let socket = rt.join("corelane").join("control.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    let answered = loop {
        if let Ok(mut c) = Client::builder().connect(&socket) {
            if c.ping().is_ok() {
                break true;
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(500));
    let rss = Rss::of(child.id());
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = child.wait();
    match (answered, rss) {
        (true, Some(rss)) => Ok(rss),
        (false, _) => Err("the daemon did not answer within 10 s".into()),
        (_, None) => Err("no VmRSS in /proc/<pid>/status".into()),
    }
}

/// The implementation name of the floor rows of `rss-idle`.
const FLOOR_IMPL: &str = "idle-rust-process";

/// The first argument that makes this binary sleep at once, as the floor of `rss-idle`
/// (`main` checks it before anything else).
pub const RSS_FLOOR_ARG: &str = "__rss-floor";

/// The RSS of this binary started with [`RSS_FLOOR_ARG`] (a Rust process that only sleeps),
/// 0.5 s after start, as [`idle_rss`] measures the daemon.
fn floor_rss() -> Result<Rss, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no current_exe: {e}"))?;
    let mut child = daemon_bin::command(&exe)
        .arg(RSS_FLOOR_ARG)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    std::thread::sleep(Duration::from_millis(500));
    let rss = Rss::of(child.id());
    let _ = child.kill();
    let _ = child.wait();
    rss.ok_or_else(|| "no VmRSS in /proc/<pid>/status".into())
}

/// Resident memory of a process, kB: all of it, and the anonymous part (not file-backed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rss {
    total_kb: u64,
    anon_kb: u64,
}

impl Rss {
    fn of(pid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
    }

    /// `VmRSS` and `RssAnon` of a `/proc/PID/status` text.
    fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some(Self { total_kb: field("VmRSS:")?, anon_kb: field("RssAnon:")? })
    }
}

/// CPU time of `corelane run` over 5 s at idle with `clients` idle shared-memory clients, in
/// hundredths of a percent of one core; with the default lane, or the default lane with
/// `idle_max_park_us` raised to `max_park_us`.
fn idle_cpu(dir: &Path, clients: usize, max_park_us: Option<u64>) -> Result<u64, String> {
    let bin = daemon_binary()?;
    let rt = dir.join(format!("cpu-{clients}-{}", max_park_us.unwrap_or(0)));
    std::fs::create_dir_all(&rt).map_err(|e| e.to_string())?;
    let mut cmd = daemon_bin::command(&bin);
    cmd.arg("run");
    cmd.env("CORELANE_FRAMES_ENABLED", "false"); // the frame worker's port is one per host
    if let Some(us) = max_park_us {
        let file = rt.join("lane.toml");
        let text = format!(
            "[[lanes]]\nname = \"main\"\nidle = \"backoff\"\nidle_max_park_us = {us}\n\
             agents = [\"control\", \"metrics\", \"pool\", \"alloc\"]\n"
        );
        std::fs::write(&file, text).map_err(|e| e.to_string())?;
        cmd.arg("--config").arg(file);
    }
    let mut child = cmd
        .env("XDG_RUNTIME_DIR", &rt)
        .env("CORELANE_METRICS_LISTEN", "")
        .env("CORELANE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let pid = child.id();
    let socket = rt.join("corelane").join("control.sock");
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Client::builder().connect(&socket).and_then(|mut c| c.ping()).is_err() {
            if Instant::now() > deadline {
                return Err("the daemon did not answer within 10 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut held = Vec::new();
        for _ in 0..clients {
            let mut c = Client::builder()
                .transport(Transport::SharedMemory)
                .connect(&socket)
                .map_err(|e| format!("shared-memory client: {e}"))?;
            c.ping().map_err(|e| e.to_string())?;
            held.push(c);
        }
        std::thread::sleep(Duration::from_secs(1));
        let ticks = || -> Result<u64, String> {
            let stat =
                std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
            // Fields after the command (in parentheses): utime and stime are 14 and 15.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            Ok(n(11) + n(12))
        };
        let (t0, start) = (ticks()?, Instant::now());
        std::thread::sleep(Duration::from_secs(5));
        let (t1, took) = (ticks()?, start.elapsed());
        drop(held);
        let hz = 100.0; // USER_HZ: /proc/<pid>/stat counts in 1/100 s on every Linux ABI
        let cpu = (t1 - t0) as f64 / hz / took.as_secs_f64();
        Ok((cpu * 10_000.0).round() as u64)
    })();
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = child.wait();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_reads_vmrss_and_rssanon() {
        let status =
            "Name:\tcorelane\nVmRSS:\t    6380 kB\nRssAnon:\t     672 kB\nRssFile:\t 5504 kB\n";
        assert_eq!(Rss::parse(status), Some(Rss { total_kb: 6380, anon_kb: 672 }));
        assert_eq!(Rss::parse("VmRSS:\t 10 kB\n"), None, "no RssAnon");
    }

    #[test]
    fn rss_of_a_live_process() {
        // The parsing against a live /proc (the floor itself needs the harness binary).
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let rss = Rss::of(child.id()).expect("a live process has VmRSS and RssAnon");
        let _ = child.kill();
        let _ = child.wait();
        assert!(rss.total_kb > 0 && rss.anon_kb <= rss.total_kb, "{rss:?}");
    }
}
