//! Suite `ingest`: allocation reports into the alloc server's ledger. corelane's real daemon
//! (a `corelane run` child, its alloc lane pinned to cpu B) fed over shared-memory rings and
//! over its native socket, next to a baseline built the way the original server is (one
//! blocking thread per client, one mutex around a HashMap, one blocking `send` per report),
//! in the same run. Clients are threads of this process pinned to cpu A.
//!
//! What each case measures, how "applied" is seen and how the sender is paced: `HELP` below
//! and `perf/README.md`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use corelane::alloc::latency::monotonic_ns;
use corelane::alloc::proto;
use corelane::alloc::query::QueryClient;
use corelane::alloc::wire::{Event, RingRecord, V4Record};
use corelane::alloc::MsgType;
use corelane::channel::{recv_with_fd, ClientTx};
use corelane::wire::{self, Decoder, DecoderConfig, Flags, ProtocolVersion};
use hdrhistogram::Histogram;
use prost::Message;
use serde_json::json;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::{Plan, Suite};
use crate::floor::Ratios;
use crate::pin::{pin_current, Pair};
use crate::report::{Baseline, Goal, Measure, Report, Row};
use crate::summary::{accumulate, histogram, median, Rounds, Summary};

/// Two latencies of one case and implementation, round by round (see where they are filled).
type Histograms = (Rounds, Rounds);

pub const SUITE: Suite = Suite {
    name: "ingest",
    summary: "alloc reports into the daemon's ledger (shm rings, native socket) vs a thread-per-client mutex server",
    help: HELP,
    run,
    child: None,
};

const HELP: &str = "\
    Implementations:
      baseline         built the way the original server is, in this process: a Unix socket,
                       one blocking server thread per client (pinned to cpu B) reading 128-byte
                       TT-Metal v4 records with read_exact, applied under one
                       Mutex<HashMap<(device, addr), entry>> with the reference semantics
                       (ref_count on duplicate ALLOCs, unknown FREEs ignored), an AtomicU64
                       applied counter; each client does one blocking write_all per send
      corelane-shm     a real `corelane run` child (alloc lane pinned to cpu B, idle spin,
                       listeners = [\"native:alloc.sock\"] only); each client: Hello,
                       RegisterRing, the memfd (recv_with_fd), ClientTx::attach, then
                       push_slice of its batch (RingRecord) and a Doorbell frame when
                       take_doorbell() says so. The raw ring push: AllocTracker is not merged
      corelane-socket  the same daemon; each client writes its batch of native frames
                       (canonical header + 32-byte EventBody, msg_id = seq) in one write_all
    Reports: client k alternates ALLOC and FREE of its own addresses (4 KiB, DRAM, device
    k % 2), so the ledger stays small and every FREE finds its ALLOC.
    Cases:
      throughput-<C>c-<B>b  C = 1, 4, 64 clients (threads on cpu A; 64 threads share it),
                       sender batch B = 1, 16, 256 reports per send (B records per write_all
                       for the baseline and the socket, one push_slice for shm). Messages/s
                       from the first send until the ledger counted them all: the daemon's
                       counters.events (QueryClient::usage, polled every 1 ms by a thread on
                       cpu A), the baseline's AtomicU64 (polled the same way). Median over
                       rounds; each measurement sized to last ~0.25 s [0.05 s].
      latency-<C>c-1b  report -> applied at 100k messages/s offered in total (C = 1, 4), batch
                       1: each client spins on CLOCK_MONOTONIC until its next send time (the
                       clients staggered evenly; with several, sched_yield in the spin so they
                       share cpu A), stamps the report with CLOCK_MONOTONIC and sends it. The
                       daemon runs with [alloc] latency_probe = true and records apply time
                       minus stamp; read with the LatencyReport query (its histograms merged
                       over rounds). The baseline's server threads record the same after the
                       mutex. 1,000 [200] warm-up + 20,000 [2,000] timed reports per round.
      client-cost-<C>c-1b  the same runs, seen from the client: CLOCK_MONOTONIC after the send
                       minus before it, per report (includes one clock read, see the facts
                       line's Instant::now()): what reporting adds inside the allocator's lock.
    Ratios (p50/baseline, p99/baseline) are medians over rounds of corelane's percentile over
    the baseline's in the same round. A fresh daemon (or baseline server) per measurement.
";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Impl {
    Baseline,
    Shm,
    Socket,
}

const IMPLS: [Impl; 3] = [Impl::Baseline, Impl::Shm, Impl::Socket];

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Baseline => "baseline",
            Impl::Shm => "corelane-shm",
            Impl::Socket => "corelane-socket",
        }
    }

    fn api(self) -> &'static str {
        match self {
            Impl::Baseline => {
                "v4 record(s), one blocking write_all per send; read_exact + Mutex<HashMap>"
            }
            Impl::Shm => "ClientTx::push_slice + take_doorbell (raw ring); daemon lane drains",
            Impl::Socket => "native frames, one blocking write_all per send; daemon lane decodes",
        }
    }

    /// A first guess of the rate (messages/s) to size the first round's measurements.
    fn guess(self) -> f64 {
        match self {
            Impl::Baseline => 300e3,
            Impl::Shm => 5e6,
            Impl::Socket => 1e6,
        }
    }
}

/// (case, clients, batch).
const THROUGHPUT: [(&str, usize, usize); 9] = [
    ("throughput-1c-1b", 1, 1),
    ("throughput-1c-16b", 1, 16),
    ("throughput-1c-256b", 1, 256),
    ("throughput-4c-1b", 4, 1),
    ("throughput-4c-16b", 4, 16),
    ("throughput-4c-256b", 4, 256),
    ("throughput-64c-1b", 64, 1),
    ("throughput-64c-16b", 64, 16),
    ("throughput-64c-256b", 64, 256),
];

/// (latency case, client-cost case, clients).
const LATENCY: [(&str, &str, usize); 2] =
    [("latency-1c-1b", "client-cost-1c-1b", 1), ("latency-4c-1b", "client-cost-4c-1b", 4)];

/// Messages per second offered in the latency cases, all clients together.
const OFFERED_PER_S: u64 = 100_000;
/// How often the harness asks how many events were applied.
const POLL: Duration = Duration::from_millis(1);
/// The longest any wait of a measurement may take.
const HANG: Duration = Duration::from_secs(60);

fn run(plan: &Plan) -> Report {
    let quick = plan.quick;
    let target_s = if quick { 0.05 } else { 0.25 };
    let (warmup, timed) = if quick { (200u64, 2_000u64) } else { (1_000, 20_000) };
    let dir = std::env::temp_dir().join(format!("corelane-perf-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| fail(&format!("cannot make {}: {e}", dir.display())));
    let bin = crate::daemon_bin::daemon_binary().unwrap_or_else(|e| fail(&e));
    let env = Env { pair: plan.pair, dir: dir.clone(), bin, measurement: AtomicU64::new(0) };

    let tp_cases: Vec<_> = THROUGHPUT.iter().filter(|c| plan.wants(c.0)).collect();
    let lat_cases: Vec<_> = LATENCY.iter().filter(|c| plan.wants(c.0) || plan.wants(c.1)).collect();
    // rates[case][impl]: one per round.
    let mut rates: HashMap<(&str, Impl), Vec<f64>> = HashMap::new();
    let mut lat: HashMap<(&str, Impl), Histograms> = HashMap::new();
    let mut lat_ratios: HashMap<(&str, Impl), (Ratios, Ratios)> = HashMap::new();
    let mut poll_rtt = histogram();
    let mut samples_seen: HashMap<(&str, Impl), u64> = HashMap::new();
    for round in 0..plan.rounds as usize {
        plan.before_round(round);
        crate::progress::round(SUITE.name, round, plan.rounds);
        for &&(case, clients, batch) in &tp_cases {
            for k in 0..IMPLS.len() {
                let imp = IMPLS[(k + round) % IMPLS.len()];
                let last = rates.get(&(case, imp)).and_then(|r| r.last().copied());
                let count =
                    ((last.unwrap_or(imp.guess()) * target_s) as u64).clamp(20_000, 200_000_000);
                let rate = throughput(&env, imp, clients, batch, count, &mut poll_rtt);
                rates.entry((case, imp)).or_default().push(rate);
            }
        }
        for &&(case, cost_case, clients) in &lat_cases {
            let mut round_summaries = HashMap::new();
            for k in 0..IMPLS.len() {
                let imp = IMPLS[(k + round) % IMPLS.len()];
                let (l, c, sampled) = latency(&env, imp, clients, warmup, timed);
                round_summaries.insert(imp, (Summary::of(&l), Summary::of(&c)));
                *samples_seen.entry((case, imp)).or_default() += sampled;
                let e = lat.entry((case, imp)).or_default();
                e.0.push(&l);
                e.1.push(&c);
            }
            let base = round_summaries[&Impl::Baseline];
            for (&imp, s) in &round_summaries {
                let r = lat_ratios.entry((case, imp)).or_default();
                r.0.push(&s.0, &base.0);
                r.1.push(&s.1, &base.1);
            }
            let _ = cost_case;
        }
    }
    crate::progress::done();

    let mut rows = Vec::new();
    let mut goals = Vec::new();
    let med = |case: &str, imp: Impl| rates.get(&(case, imp)).and_then(|r| median(r));
    for &&(case, _, _) in &tp_cases {
        for imp in IMPLS {
            let Some(r) = rates.get(&(case, imp)) else { continue };
            let min = r.iter().copied().fold(f64::INFINITY, f64::min);
            let max = r.iter().copied().fold(0.0, f64::max);
            rows.push(Row {
                imp: imp.name(),
                case,
                api: imp.api(),
                measure: Measure::Rate {
                    median: median(r).unwrap_or(0.0),
                    min,
                    max,
                    rounds: r.len(),
                    bytes_per_item: None,
                },
            });
        }
    }
    for &&(case, cost_case, _) in &lat_cases {
        for (name, pick) in [(case, 0usize), (cost_case, 1)] {
            for imp in IMPLS {
                let Some(h) = lat.get(&(case, imp)) else { continue };
                let h = if pick == 0 { &h.0 } else { &h.1 };
                let ratios = &lat_ratios[&(case, imp)];
                let ratios = if pick == 0 { &ratios.0 } else { &ratios.1 };
                let is_base = imp == Impl::Baseline;
                rows.push(Row {
                    imp: imp.name(),
                    case: name,
                    api: if pick == 0 {
                        "CLOCK_MONOTONIC at apply - stamp, 100k msg/s offered"
                    } else {
                        "CLOCK_MONOTONIC after - before one report's send"
                    },
                    measure: Measure::Latency {
                        summary: Summary::of(h.all()),
                        rounds: h.clone(),
                        ratio_p50: if is_base { None } else { ratios.p50() },
                        ratio_p99: if is_base { None } else { ratios.p99() },
                        baseline: Baseline::Impl("baseline"),
                        peers: Vec::new(),
                    },
                });
            }
        }
    }

    // Goals.
    for &&(case, _, _) in &tp_cases {
        for imp in [Impl::Shm, Impl::Socket] {
            let ratio = match (med(case, imp), med(case, Impl::Baseline)) {
                (Some(c), Some(b)) if b > 0.0 => Some(c / b),
                _ => None,
            };
            goals.push(Goal::at_least(
                &format!("{} {case}: at least 5x the baseline's messages/s", imp.name()),
                ratio,
                5.0,
                "x",
            ));
        }
    }
    for &&(case, _, _) in &lat_cases {
        for imp in [Impl::Shm, Impl::Socket] {
            let p99 = lat.get(&(case, imp)).map(|h| Summary::of(h.0.all()).p99 as f64);
            goals.push(Goal::at_most(
                &format!("{} {case}: p99 report -> applied under 10 us at 100k/s", imp.name()),
                p99,
                10_000.0,
                " ns",
            ));
        }
    }
    if !tp_cases.is_empty() {
        for imp in [Impl::Shm, Impl::Socket] {
            let best = tp_cases
                .iter()
                .filter_map(|c| med(c.0, imp).map(|r| (r, c.0)))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            goals.push(Goal::at_least(
                &format!(
                    "{} above 10 M messages/s into one ingest lane (best case: {})",
                    imp.name(),
                    best.map_or("-", |b| b.1)
                ),
                best.map(|b| b.0 / 1e6),
                10.0,
                " M/s",
            ));
        }
    }
    for &&(case, cost_case, _) in &lat_cases {
        let p50 = lat.get(&(case, Impl::Shm)).map(|h| Summary::of(h.1.all()).p50 as f64);
        goals.push(Goal::at_most(
            &format!("corelane-shm {cost_case}: client cost per report p50 under 100 ns"),
            p50,
            100.0,
            " ns",
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let poll = Summary::of(&poll_rtt);
    let sampled: serde_json::Map<String, serde_json::Value> = samples_seen
        .iter()
        .map(|((case, imp), n)| (format!("{}/{}", imp.name(), case), json!(n)))
        .collect();
    Report {
        suite: SUITE.name,
        floor: None,
        rows,
        goals,
        settings: json!({
            "rounds": plan.rounds, "quick": quick,
            "throughput_target_s": target_s,
            "latency_offered_per_s": OFFERED_PER_S,
            "latency_warmup": warmup, "latency_timed_per_round": timed,
            "daemon": "corelane run child, one lane (control + alloc) on cpu B, idle spin, latency_probe on for latency cases only",
            "baseline_server": "threads pinned to cpu B",
            "clients": "threads pinned to cpu A",
            "applied_poll": "QueryClient::usage every 1 ms (baseline: an atomic load every 1 ms)",
            "poll_rtt_ns_p50": poll.p50, "poll_rtt_ns_p99": poll.p99, "polls": poll.samples,
            "latency_samples_probed": sampled,
        }),
    }
}

/// Stops the run: setup failed, a peer died or hung (exit status 4, as the other suites).
fn fail(why: &str) -> ! {
    eprintln!("\nerror: ingest: {why}");
    std::process::exit(4)
}

struct Env {
    pair: Pair,
    dir: PathBuf,
    bin: PathBuf,
    measurement: AtomicU64,
}

impl Env {
    fn fresh_dir(&self) -> PathBuf {
        let n = self.measurement.fetch_add(1, Ordering::Relaxed);
        let d = self.dir.join(format!("m{n}"));
        std::fs::create_dir_all(&d)
            .unwrap_or_else(|e| fail(&format!("mkdir {}: {e}", d.display())));
        d
    }
}

// ---------------------------------------------------------------------------------------------
// Reports.

/// Report `i` of client `k`: ALLOC of address `i / 2`, then its FREE.
#[inline]
fn event(k: usize, i: u64) -> Event {
    Event {
        kind: if i.is_multiple_of(2) { MsgType::Alloc } else { MsgType::Free },
        device: (k % 2) as u8,
        buffer_type: 0,
        buffer_id: ((k as u64) << 40) | ((i / 2) << 6),
        size: 4096,
    }
}

/// One client's sending end.
enum Sender {
    Baseline { s: UnixStream, buf: Vec<u8> },
    Socket { s: UnixStream, buf: Vec<u8> },
    Shm { s: UnixStream, tx: ClientTx<RingRecord>, recs: Vec<RingRecord>, doorbell: Vec<u8> },
}

impl Sender {
    fn connect(imp: Impl, path: &Path, batch: usize) -> Sender {
        let s = UnixStream::connect(path)
            .unwrap_or_else(|e| fail(&format!("connect {}: {e}", path.display())));
        match imp {
            Impl::Baseline => Sender::Baseline { s, buf: Vec::with_capacity(batch * 128) },
            Impl::Socket => {
                hello(&s);
                Sender::Socket { s, buf: Vec::with_capacity(batch * 56) }
            }
            Impl::Shm => {
                hello(&s);
                let fd = register_ring(&s);
                let tx = ClientTx::<RingRecord>::attach(fd)
                    .unwrap_or_else(|e| fail(&format!("ClientTx::attach: {e}")));
                let mut doorbell = Vec::new();
                wire::encode(
                    ProtocolVersion::V2,
                    MsgType::Doorbell.code(),
                    Flags::EMPTY,
                    0,
                    &[],
                    &mut doorbell,
                );
                Sender::Shm { s, tx, recs: Vec::with_capacity(batch), doorbell }
            }
        }
    }

    /// Sends reports `first..first + n` of client `k`, stamped `stamp` (CLOCK_MONOTONIC ns).
    #[inline]
    fn send(&mut self, k: usize, first: u64, n: usize, stamp: u64) {
        match self {
            Sender::Baseline { s, buf } => {
                buf.clear();
                for i in first..first + n as u64 {
                    let e = event(k, i);
                    let mut r = V4Record::new_zeroed();
                    r.head.msg_type = e.kind.code() as u8;
                    r.head.device_id.set(i32::from(e.device));
                    r.head.size.set(e.size);
                    r.head.buffer_type = e.buffer_type;
                    r.head.process_id.set(std::process::id() as i32);
                    r.head.buffer_id.set(e.buffer_id);
                    r.head.timestamp.set(stamp);
                    buf.extend_from_slice(r.as_bytes());
                }
                s.write_all(buf).unwrap_or_else(|e| fail(&format!("baseline send: {e}")));
            }
            Sender::Socket { s, buf } => {
                buf.clear();
                for i in first..first + n as u64 {
                    let body = event(k, i).body(stamp);
                    wire::encode(
                        ProtocolVersion::V2,
                        event(k, i).kind.code(),
                        Flags::EMPTY,
                        i,
                        body.as_bytes(),
                        buf,
                    );
                }
                s.write_all(buf).unwrap_or_else(|e| fail(&format!("socket send: {e}")));
            }
            Sender::Shm { s, tx, recs, doorbell } => {
                recs.clear();
                for i in first..first + n as u64 {
                    recs.push(RingRecord::new(i, &event(k, i), stamp));
                }
                let mut done = 0;
                let mut spins = 0u64;
                loop {
                    done += tx.push_slice(&recs[done..]);
                    if tx.take_doorbell() {
                        s.write_all(doorbell).unwrap_or_else(|e| fail(&format!("doorbell: {e}")));
                    }
                    if done == recs.len() {
                        break;
                    }
                    // The ring is full: the daemon is behind. Wait for room.
                    spins += 1;
                    if spins.is_multiple_of(1024) {
                        std::thread::yield_now();
                    }
                    if let Some(c) = tx.corruption() {
                        fail(&format!("the ring reports its daemon side corrupt: {c:?}"));
                    }
                }
            }
        }
    }
}

/// A native request frame of `kind` with `body`, and its reply's body (blocking).
fn call(s: &UnixStream, kind: MsgType, id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(ProtocolVersion::V2, kind.code(), Flags::EMPTY, id, body, &mut out);
    (&*s).write_all(&out).unwrap_or_else(|e| fail(&format!("{}: {e}", kind.name())));
    read_reply(s, kind, id, |buf| (&*s).read(buf).map(|n| (n, None))).0
}

/// Reads frames with `read` until the reply to `kind`/`id`; returns its body and any
/// descriptor that came with the bytes.
fn read_reply(
    _s: &UnixStream,
    kind: MsgType,
    id: u64,
    mut read: impl FnMut(&mut [u8]) -> std::io::Result<(usize, Option<OwnedFd>)>,
) -> (Vec<u8>, Option<OwnedFd>) {
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut buf = vec![0u8; 4096];
    let mut fd = None;
    let mut reply = None;
    let deadline = Instant::now() + HANG;
    while reply.is_none() {
        let (n, got) = read(&mut buf).unwrap_or_else(|e| fail(&format!("{}: {e}", kind.name())));
        if n == 0 {
            fail(&format!("the daemon closed the connection before replying to {}", kind.name()));
        }
        if got.is_some() {
            fd = got;
        }
        let _ = decoder.feed(&buf[..n], |e| {
            if let wire::Event::Frame(f) = e {
                if f.header.msg_type == kind.code() && f.header.msg_id == id {
                    if f.header.flags.contains(Flags::ERROR) {
                        fail(&format!("the daemon refused {}", kind.name()));
                    }
                    reply = Some(f.body.to_vec());
                }
            }
        });
        if Instant::now() > deadline {
            fail(&format!("no reply to {}", kind.name()));
        }
    }
    (reply.unwrap_or_default(), fd)
}

fn hello(s: &UnixStream) {
    let body = proto::Hello { name: "corelane-perf".into(), first_seq: 0 }.encode_to_vec();
    let reply = call(s, MsgType::Hello, 1, &body);
    let reply = proto::HelloReply::decode(reply.as_slice())
        .unwrap_or_else(|e| fail(&format!("bad HelloReply: {e}")));
    let _ = reply;
}

fn register_ring(s: &UnixStream) -> OwnedFd {
    let mut out = Vec::new();
    let kind = MsgType::RegisterRing;
    wire::encode(ProtocolVersion::V2, kind.code(), Flags::EMPTY, 2, &[], &mut out);
    (&*s).write_all(&out).unwrap_or_else(|e| fail(&format!("register_ring: {e}")));
    let (body, fd) = read_reply(s, kind, 2, |buf| recv_with_fd(s.as_fd(), buf));
    let grant = proto::RingGrant::decode(body.as_slice())
        .unwrap_or_else(|e| fail(&format!("bad RingGrant: {e}")));
    let _ = grant;
    fd.unwrap_or_else(|| fail("the ring grant came without its memfd"))
}

// ---------------------------------------------------------------------------------------------
// The corelane daemon, a `corelane run` child.

struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Daemon {
    fn start(env: &Env, latency_probe: bool) -> Daemon {
        let dir = env.fresh_dir();
        let rt = dir.join("rt");
        let config = format!(
            "[runtime]\ndir = {rt:?}\n\n[metrics]\nenabled = false\nlisten = \"\"\n\n\
             [pool]\nenabled = false\n\n[alloc]\nlisteners = [\"native:alloc.sock\"]\n\
             latency_probe = {latency_probe}\n\n[[lanes]]\nname = \"alloc\"\ncore = {}\n\
             idle = \"spin\"\nagents = [\"control\", \"alloc\"]\n",
            env.pair.b
        );
        let file = dir.join("corelane.toml");
        std::fs::write(&file, config).unwrap_or_else(|e| fail(&format!("write config: {e}")));
        let log = std::fs::File::create(dir.join("daemon.log"))
            .unwrap_or_else(|e| fail(&format!("daemon log: {e}")));
        let child = crate::daemon_bin::command(&env.bin)
            .arg("run")
            .env("CORELANE_FRAMES_ENABLED", "false")
            .arg("--config")
            .arg(&file)
            .env("CORELANE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| fail(&format!("cannot start {}: {e}", env.bin.display())));
        let socket = rt.join("alloc.sock");
        let mut d = Daemon { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut q) = QueryClient::connect(&d.socket, Duration::from_secs(5)) {
                if q.usage(None).is_ok() {
                    break;
                }
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                fail(&format!("the daemon exited at start ({status}); {}", d.log_tail()));
            }
            if Instant::now() > deadline {
                fail(&format!("the daemon did not answer within 10 s; {}", d.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        d
    }

    fn query(&self) -> QueryClient {
        QueryClient::connect(&self.socket, Duration::from_secs(10))
            .unwrap_or_else(|e| fail(&format!("query connection: {e}")))
    }

    fn log_tail(&self) -> String {
        super::log_tail(&self.dir.join("daemon.log"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        super::stop_daemon(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// The baseline server: one blocking thread per client, one mutex around a HashMap.

struct Entry {
    size: u64,
    buffer_type: u8,
    pid: i32,
    ref_count: u32,
}

#[derive(Default)]
struct BaseLedger {
    entries: HashMap<(i32, u64), Entry>,
    /// Bytes per device and buffer type.
    allocated: [[u64; 5]; 8],
    num_buffers: [u64; 8],
    unknown_frees: u64,
}

impl BaseLedger {
    /// ALLOC and FREE as the reference describes (specs/alloc-server-reference.md 2.2).
    fn apply(&mut self, r: &V4Record) {
        let device = r.head.device_id.get();
        if !(0..8).contains(&device) {
            return;
        }
        let d = device as usize;
        let key = (device, r.head.buffer_id.get());
        match r.head.msg_type {
            1 => {
                let t = r.head.buffer_type;
                if t > 4 {
                    return;
                }
                match self.entries.get_mut(&key) {
                    Some(e) => e.ref_count += 1,
                    None => {
                        let size = r.head.size.get();
                        self.entries.insert(
                            key,
                            Entry {
                                size,
                                buffer_type: t,
                                pid: r.head.process_id.get(),
                                ref_count: 1,
                            },
                        );
                        self.allocated[d][t as usize] += size;
                        self.num_buffers[d] += 1;
                    }
                }
            }
            2 => match self.entries.get_mut(&key) {
                Some(e) if e.ref_count > 1 => e.ref_count -= 1,
                Some(_) => {
                    let e = self.entries.remove(&key).expect("just found");
                    self.allocated[d][e.buffer_type as usize] -= e.size;
                    self.num_buffers[d] -= 1;
                    let _ = e.pid;
                }
                None => self.unknown_frees += 1,
            },
            _ => {}
        }
    }
}

struct BaselineServer {
    path: PathBuf,
    applied: Arc<AtomicU64>,
    acceptor: Option<std::thread::JoinHandle<Vec<Histogram<u64>>>>,
    ledger: Arc<Mutex<BaseLedger>>,
}

impl BaselineServer {
    /// Listens; accepts `clients` connections, one thread pinned to cpu `cpu` each. With
    /// `skip` = Some(n), each thread records apply time minus the record's stamp for every
    /// record after its first n.
    fn start(env: &Env, cpu: usize, clients: usize, skip: Option<u64>) -> BaselineServer {
        let path = env.fresh_dir().join("baseline.sock");
        let listener = UnixListener::bind(&path)
            .unwrap_or_else(|e| fail(&format!("bind {}: {e}", path.display())));
        let applied = Arc::new(AtomicU64::new(0));
        let ledger = Arc::new(Mutex::new(BaseLedger::default()));
        let (a, l) = (applied.clone(), ledger.clone());
        let acceptor = std::thread::spawn(move || {
            let mut threads = Vec::new();
            for _ in 0..clients {
                let (mut s, _) =
                    listener.accept().unwrap_or_else(|e| fail(&format!("accept: {e}")));
                let (a, l) = (a.clone(), l.clone());
                threads.push(std::thread::spawn(move || {
                    pin_current(cpu);
                    let mut h = histogram();
                    let mut buf = [0u8; 128];
                    let mut n = 0u64;
                    loop {
                        match s.read_exact(&mut buf) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                            Err(e) => fail(&format!("baseline read: {e}")),
                        }
                        let r = V4Record::read_from_bytes(&buf).expect("128 bytes");
                        l.lock().expect("no panics under the lock").apply(&r);
                        // SYNC: Release pairs with the harness's Acquire poll; only a count.
                        a.fetch_add(1, Ordering::Release);
                        if let Some(skip) = skip {
                            if n >= skip {
                                h.saturating_record(
                                    monotonic_ns().saturating_sub(r.head.timestamp.get()),
                                );
                            }
                        }
                        n += 1;
                    }
                    h
                }));
            }
            threads.into_iter().map(|t| t.join().expect("baseline thread")).collect()
        });
        BaselineServer { path, applied, acceptor: Some(acceptor), ledger }
    }

    /// Waits for every connection to end; the latency histograms of its threads.
    fn join(mut self) -> Vec<Histogram<u64>> {
        let h = self.acceptor.take().map(|t| t.join().expect("acceptor")).unwrap_or_default();
        let l = self.ledger.lock().expect("no panics under the lock");
        if !l.entries.is_empty() || l.unknown_frees > 0 {
            eprintln!(
                "\ningest: baseline ledger left {} entries, {} unknown frees (expected 0, 0)",
                l.entries.len(),
                l.unknown_frees
            );
            std::process::exit(3);
        }
        h
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// Messages/s of `count` reports from `clients` clients in batches of `batch`.
fn throughput(
    env: &Env,
    imp: Impl,
    clients: usize,
    batch: usize,
    count: u64,
    poll_rtt: &mut Histogram<u64>,
) -> f64 {
    // Whole batches, and an even count so that every ALLOC has its FREE.
    let unit = batch.max(2) as u64;
    let per_client = (count / clients as u64).div_ceil(unit).max(1) * unit;
    let total = per_client * clients as u64;
    let (daemon, server) = match imp {
        Impl::Baseline => (None, Some(BaselineServer::start(env, env.pair.b, clients, None))),
        _ => (Some(Daemon::start(env, false)), None),
    };
    let path = match (&daemon, &server) {
        (Some(d), _) => d.socket.clone(),
        (_, Some(s)) => s.path.clone(),
        _ => unreachable!("one of the two is started"),
    };
    let go = Arc::new(Barrier::new(clients + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let a = env.pair.a;
    let threads: Vec<_> = (0..clients)
        .map(|k| {
            let (go, stop, path) = (go.clone(), stop.clone(), path.clone());
            std::thread::spawn(move || {
                pin_current(a);
                let mut tx = Sender::connect(imp, &path, batch);
                go.wait();
                let mut i = 0;
                while i < per_client {
                    tx.send(k, i, batch, 0);
                    i += batch as u64;
                }
                // Keep the connection (and ring) open until everything was counted, so
                // that no hang-up path is measured.
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                drop(tx);
            })
        })
        .collect();
    // The poller: pinned to cpu A with the clients, so that it never takes the lane's cpu.
    let applied = server.as_ref().map(|s| s.applied.clone());
    let query_socket = daemon.as_ref().map(|d| d.socket.clone());
    let (elapsed, rtts) = std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            pin_current(a);
            let mut q = query_socket.map(|p| {
                QueryClient::connect(&p, Duration::from_secs(10))
                    .unwrap_or_else(|e| fail(&format!("query connection: {e}")))
            });
            let mut rtts = Vec::new();
            go.wait();
            let t0 = Instant::now();
            loop {
                std::thread::sleep(POLL);
                let seen = match (&mut q, &applied) {
                    (Some(q), _) => {
                        let t = Instant::now();
                        let u = q.usage(None).unwrap_or_else(|e| fail(&format!("usage: {e}")));
                        rtts.push(t.elapsed().as_nanos() as u64);
                        let c = u.counters.unwrap_or_default();
                        if c.invalid > 0 || c.gaps_skipped > 0 {
                            eprintln!(
                                "\ningest: {} throughput: the daemon counted {} invalid \
                                 events and {} skipped gaps (expected 0)",
                                imp.name(),
                                c.invalid,
                                c.gaps_skipped
                            );
                            std::process::exit(3);
                        }
                        c.events
                    }
                    // SYNC: Acquire pairs with the server threads' Release increments.
                    (None, Some(a)) => a.load(Ordering::Acquire),
                    _ => unreachable!("one of the two is started"),
                };
                if seen >= total {
                    return (t0.elapsed(), rtts);
                }
                if t0.elapsed() > HANG {
                    fail(&format!(
                        "{} {clients}c-{batch}b: {seen} of {total} applied after {} s",
                        imp.name(),
                        HANG.as_secs()
                    ));
                }
            }
        });
        poller.join().expect("poller")
    });
    for r in rtts {
        poll_rtt.saturating_record(r);
    }
    stop.store(true, Ordering::Release);
    for t in threads {
        t.join().expect("client thread");
    }
    if let Some(s) = server {
        s.join();
    }
    drop(daemon);
    total as f64 / elapsed.as_secs_f64()
}

/// The latency case: report -> applied, and the client's cost per report, at 100k/s offered.
/// Returns both histograms and how many latencies the server sampled.
fn latency(
    env: &Env,
    imp: Impl,
    clients: usize,
    warmup: u64,
    timed: u64,
) -> (Histogram<u64>, Histogram<u64>, u64) {
    // Even counts: every ALLOC has its FREE.
    let per_warm = warmup.div_ceil(2 * clients as u64) * 2;
    let per_timed = timed.div_ceil(2 * clients as u64) * 2;
    let total_warm = per_warm * clients as u64;
    let total = total_warm + per_timed * clients as u64;
    let (daemon, server) = match imp {
        Impl::Baseline => {
            (None, Some(BaselineServer::start(env, env.pair.b, clients, Some(per_warm))))
        }
        _ => (Some(Daemon::start(env, true)), None),
    };
    let path = match (&daemon, &server) {
        (Some(d), _) => d.socket.clone(),
        (_, Some(s)) => s.path.clone(),
        _ => unreachable!("one of the two is started"),
    };
    let interval = 1_000_000_000 * clients as u64 / OFFERED_PER_S;
    let stagger = 1_000_000_000 / OFFERED_PER_S;
    let warm_done = Arc::new(Barrier::new(clients + 1));
    let go = Arc::new(Barrier::new(clients + 1));
    let start_at = Arc::new(AtomicU64::new(0));
    let a = env.pair.a;
    let threads: Vec<_> = (0..clients)
        .map(|k| {
            let (warm_done, go, start_at, path) =
                (warm_done.clone(), go.clone(), start_at.clone(), path.clone());
            std::thread::spawn(move || {
                pin_current(a);
                let mut tx = Sender::connect(imp, &path, 1);
                let mut cost = histogram();
                let paced = |tx: &mut Sender,
                             cost: Option<&mut Histogram<u64>>,
                             first: u64,
                             n: u64,
                             t0: u64| {
                    let mut cost = cost;
                    for j in 0..n {
                        let at = t0 + k as u64 * stagger + j * interval;
                        while monotonic_ns() < at {
                            if clients > 1 {
                                std::thread::yield_now();
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                        let before = monotonic_ns();
                        tx.send(k, first + j, 1, before);
                        let after = monotonic_ns();
                        if let Some(c) = cost.as_deref_mut() {
                            c.saturating_record(after - before);
                        }
                    }
                };
                paced(&mut tx, None, 0, per_warm, monotonic_ns());
                warm_done.wait();
                go.wait();
                // SYNC: the barrier orders the store before this load.
                let t0 = start_at.load(Ordering::Acquire);
                paced(&mut tx, Some(&mut cost), per_warm, per_timed, t0);
                drop(tx);
                cost
            })
        })
        .collect();
    let mut q = daemon.as_ref().map(Daemon::query);
    let applied = server.as_ref().map(|s| s.applied.clone());
    warm_done.wait();
    wait_applied(imp, q.as_mut(), applied.as_deref(), total_warm);
    if let Some(q) = q.as_mut() {
        // Read and reset: the timed reports start from an empty probe.
        q.latency().unwrap_or_else(|e| fail(&format!("LatencyReport: {e}")));
    }
    start_at.store(monotonic_ns() + 1_000_000, Ordering::Release);
    go.wait();
    let mut cost = histogram();
    for t in threads {
        accumulate(&mut cost, &t.join().expect("client thread"));
    }
    wait_applied(imp, q.as_mut(), applied.as_deref(), total);
    let mut lat = histogram();
    match (q.as_mut(), server) {
        (Some(q), _) => {
            let r = q.latency().unwrap_or_else(|e| fail(&format!("LatencyReport: {e}")));
            for pair in r.buckets.chunks_exact(2) {
                let _ = lat.record_n(pair[0].max(1), pair[1]);
            }
        }
        (None, Some(s)) => {
            for h in s.join() {
                accumulate(&mut lat, &h);
            }
        }
        _ => unreachable!("one of the two is started"),
    }
    let sampled = lat.len();
    drop(daemon);
    (lat, cost, sampled)
}

/// Waits until `n` events were applied: the daemon's counter (`q`) or the baseline's.
fn wait_applied(imp: Impl, mut q: Option<&mut QueryClient>, applied: Option<&AtomicU64>, n: u64) {
    let t0 = Instant::now();
    loop {
        let seen = match (q.as_deref_mut(), applied) {
            (Some(q), _) => {
                let u = q.usage(None).unwrap_or_else(|e| fail(&format!("usage: {e}")));
                u.counters.unwrap_or_default().events
            }
            // SYNC: Acquire pairs with the server threads' Release increments.
            (None, Some(a)) => a.load(Ordering::Acquire),
            _ => unreachable!("one of the two is started"),
        };
        if seen >= n {
            return;
        }
        if t0.elapsed() > HANG {
            fail(&format!("{} latency: {seen} of {n} applied", imp.name()));
        }
        std::thread::sleep(POLL);
    }
}
