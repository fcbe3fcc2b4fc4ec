//! The runtime with real sockets and real threads: lanes, agents, the reactor (every backend
//! this kernel offers), SPSC links between lanes, shutdown.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corelane::rings::spsc;
use corelane::runtime::{
    Agent, Completion, Ctx, IdleStrategy, LaneSpec, ReactorChoice, ReactorConfig, ReactorKind,
    Runtime, RuntimeError, UringOptions,
};

/// Every backend that can run here, io_uring once with each option on, with a short name; a
/// missing one is said out loud, not silently skipped.
fn backends() -> Vec<(String, ReactorConfig)> {
    let mut out = vec![("poll".to_owned(), ReactorConfig::from(ReactorChoice::Poll))];
    match corelane::runtime::Reactor::probe(ReactorChoice::IoUring) {
        Ok(_) => {
            let uring = |uring| ReactorConfig { choice: ReactorChoice::IoUring, uring };
            let defer = UringOptions { defer_taskrun: true, ..UringOptions::default() };
            let skip = UringOptions { skip_send_cqe: true, ..UringOptions::default() };
            out.push(("io_uring".to_owned(), uring(UringOptions::default())));
            out.push(("io_uring+defer".to_owned(), uring(defer)));
            out.push(("io_uring+skip".to_owned(), uring(skip)));
        }
        Err(e) => eprintln!("SKIPPING the io_uring backend in this test: {e}"),
    }
    out
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corelane-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The alloc-ingest shape: accepts many connections, parses 8-byte little-endian records out of
/// whatever each receive brings (records split across receives included), forwards every
/// record to another lane through an SPSC link, and acks each receive's record count.
struct Ingest {
    path: PathBuf,
    listener: Option<UnixListener>,
    next: u64,
    partial: std::collections::HashMap<u64, Vec<u8>>,
    forward: spsc::Producer<u64>,
}

impl Agent for Ingest {
    fn name(&self) -> &str {
        "ingest"
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
        ctx.listen(0, self.listener.take().expect("started once"))
    }

    fn on_completion(&mut self, ctx: &mut Ctx<'_>, completion: Completion) {
        match completion {
            Completion::Accepted { fd, .. } => {
                self.next += 1;
                ctx.open(self.next, fd).unwrap();
                self.partial.insert(self.next, Vec::new());
            }
            Completion::Received { token, buf } => {
                let pending = self.partial.get_mut(&Ctx::local(token)).unwrap();
                pending.extend_from_slice(ctx.reactor().data(&buf));
                let whole = pending.len() / 8 * 8;
                let mut records = 0u32;
                for chunk in pending[..whole].chunks_exact(8) {
                    let value = u64::from_le_bytes(chunk.try_into().unwrap());
                    while self.forward.push(value).is_err() {} // the other lane drains it
                    records += 1;
                }
                pending.drain(..whole);
                ctx.reactor().send(token, &records.to_le_bytes()).unwrap();
            }
            Completion::Closed { token } | Completion::Failed { token, .. } => {
                self.partial.remove(&Ctx::local(token));
                ctx.reactor().close(token);
            }
            _ => {}
        }
    }

    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        0
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_>) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The ledger-lane shape: drains the SPSC link and sums what it got.
struct Ledger {
    from: spsc::Consumer<u64>,
    total: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Agent for Ledger {
    fn name(&self) -> &str {
        "ledger"
    }

    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        let mut n = 0;
        while let Ok(v) = self.from.pop() {
            self.total.fetch_add(v, std::sync::atomic::Ordering::Relaxed);
            n += 1;
        }
        n
    }
}

fn ingest_runtime(
    dir: &Path,
    config: ReactorConfig,
) -> (Runtime, PathBuf, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let path = dir.join("ingest.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = spsc::channel(1024);
    let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let lanes = vec![
        LaneSpec {
            name: "io".into(),
            core: None,
            idle: IdleStrategy::backoff(),
            agents: vec![Box::new(Ingest {
                path: path.clone(),
                listener: Some(listener),
                next: 0,
                partial: Default::default(),
                forward: tx,
            })],
            waker: None,
        },
        LaneSpec {
            name: "ledger".into(),
            core: None,
            idle: IdleStrategy::backoff(),
            agents: vec![Box::new(Ledger { from: rx, total: total.clone() })],
            waker: None,
        },
    ];
    (Runtime::start(lanes, config).unwrap(), path, total)
}

#[test]
fn many_clients_many_records_per_receive_forwarded_across_lanes() {
    for (choice, config) in backends() {
        let dir = temp_dir(&format!("ingest-{choice}"));
        let (runtime, path, total) = ingest_runtime(&dir, config);
        let expected_kind = if config.choice == ReactorChoice::IoUring {
            ReactorKind::IoUring
        } else {
            ReactorKind::Poll
        };
        assert_eq!(runtime.reactor(), expected_kind);

        let clients: Vec<_> = (0..8u64)
            .map(|c| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut s = UnixStream::connect(&path).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut acked = 0u32;
                    let mut sent = 0u32;
                    for round in 0..50u64 {
                        // 7 records, written in two pieces that split a record.
                        let bytes: Vec<u8> =
                            (0..7).flat_map(|i| (c * 1000 + round * 7 + i).to_le_bytes()).collect();
                        s.write_all(&bytes[..13]).unwrap();
                        s.write_all(&bytes[13..]).unwrap();
                        sent += 7;
                        while acked < sent {
                            let mut ack = [0u8; 4];
                            s.read_exact(&mut ack).unwrap();
                            acked += u32::from_le_bytes(ack);
                        }
                    }
                    acked
                })
            })
            .collect();
        let acked: u32 = clients.into_iter().map(|c| c.join().unwrap()).sum();
        assert_eq!(acked, 8 * 50 * 7);
        let want: u64 = (0..8u64).flat_map(|c| (0..350u64).map(move |i| c * 1000 + i)).sum();
        let deadline = Instant::now() + Duration::from_secs(10);
        while total.load(std::sync::atomic::Ordering::Relaxed) != want && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(total.load(std::sync::atomic::Ordering::Relaxed), want, "{choice}");

        let stats = runtime.stats();
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[0].agents, ["ingest"]);
        runtime.shutdown();
        runtime.join();
        assert!(!path.exists(), "on_close unlinked the socket");
    }
}

#[test]
fn a_peer_that_never_reads_costs_only_its_own_queue() {
    // The frame-worker shape under backpressure: one client stops reading; the agent sees its
    // pending bytes grow and stops producing for it, while another client is still served.
    struct Flood {
        listener: Option<UnixListener>,
        next: u64,
        pending_seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }
    impl Agent for Flood {
        fn name(&self) -> &str {
            "flood"
        }
        fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            ctx.listen(0, self.listener.take().unwrap())
        }
        fn on_completion(&mut self, ctx: &mut Ctx<'_>, c: Completion) {
            match c {
                Completion::Accepted { fd, .. } => {
                    self.next += 1;
                    ctx.open(self.next, fd).unwrap();
                }
                Completion::Received { token, buf } => {
                    // Each request byte asks for 64 KiB, unless 1 MiB is already queued.
                    let n = ctx.reactor().data(&buf).len();
                    for _ in 0..n {
                        if ctx.reactor().pending(token) < 1 << 20 {
                            ctx.reactor().send(token, &[7u8; 64 * 1024]).unwrap();
                        }
                    }
                    let p = ctx.reactor().pending(token) as u64;
                    self.pending_seen.fetch_max(p, std::sync::atomic::Ordering::Relaxed);
                }
                Completion::Closed { token } | Completion::Failed { token, .. } => {
                    ctx.reactor().close(token)
                }
                _ => {}
            }
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    for (choice, config) in backends() {
        let dir = temp_dir(&format!("flood-{choice}"));
        let path = dir.join("flood.sock");
        let pending_seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let lane = LaneSpec {
            name: "io".into(),
            core: None,
            idle: IdleStrategy::Sleep(Duration::from_micros(200)),
            agents: vec![Box::new(Flood {
                listener: Some(UnixListener::bind(&path).unwrap()),
                next: 0,
                pending_seen: pending_seen.clone(),
            })],
            waker: None,
        };
        let runtime = Runtime::start(vec![lane], config).unwrap();
        let mut stuck = UnixStream::connect(&path).unwrap();
        stuck.write_all(&[1; 64]).unwrap(); // asks for 4 MiB, never reads
        let mut good = UnixStream::connect(&path).unwrap();
        good.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for _ in 0..4 {
            good.write_all(&[1]).unwrap();
            let mut got = vec![0u8; 64 * 1024];
            good.read_exact(&mut got).unwrap();
            assert!(got.iter().all(|&b| b == 7));
        }
        let seen = pending_seen.load(std::sync::atomic::Ordering::Relaxed);
        assert!(seen >= 1 << 19, "{choice}: the stuck peer's queue should have grown, saw {seen}");
        assert!(seen < (1 << 20) + 64 * 1024, "{choice}: queue bounded by the agent, saw {seen}");
        drop(stuck);
        runtime.shutdown();
        runtime.join();
    }
}

#[test]
fn idle_lanes_idle_and_stop_promptly() {
    struct Nothing;
    impl Agent for Nothing {
        fn name(&self) -> &str {
            "nothing"
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    for idle in [
        IdleStrategy::Spin,
        IdleStrategy::Yield,
        IdleStrategy::backoff(),
        IdleStrategy::Sleep(Duration::from_millis(1)),
    ] {
        let lane = LaneSpec {
            name: "idle".into(),
            core: None,
            idle,
            agents: vec![Box::new(Nothing)],
            waker: None,
        };
        let runtime = Runtime::start(vec![lane], ReactorChoice::Auto).unwrap();
        std::thread::sleep(Duration::from_millis(250));
        let stats = &runtime.stats()[0];
        assert!(stats.passes > 0, "{idle:?}");
        assert_eq!(stats.work, 0);
        assert_eq!(stats.idle, idle.name());
        if matches!(idle, IdleStrategy::Sleep(_) | IdleStrategy::Backoff { .. }) {
            assert!(stats.idle_ns >= 100_000_000, "{idle:?}: parked most of the time: {stats:?}");
        }
        runtime.shutdown();
        runtime.join();
    }
}

#[test]
fn pinned_lanes_and_bad_cores() {
    struct Where(std::sync::Arc<std::sync::Mutex<Option<usize>>>);
    impl Agent for Where {
        fn name(&self) -> &str {
            "where"
        }
        fn on_start(&mut self, _ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            let cores = core_affinity_cores();
            *self.0.lock().unwrap() = (cores.len() == 1).then(|| cores[0]);
            Ok(())
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let lane = LaneSpec {
        name: "pinned".into(),
        core: Some(0),
        idle: IdleStrategy::backoff(),
        agents: vec![Box::new(Where(seen.clone()))],
        waker: None,
    };
    let runtime = Runtime::start(vec![lane], ReactorChoice::Poll).unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(0), "the lane runs on core 0 only");
    runtime.shutdown();
    runtime.join();

    let lane = LaneSpec {
        name: "far".into(),
        core: Some(4096),
        idle: IdleStrategy::Spin,
        agents: vec![],
        waker: None,
    };
    let err = Runtime::start(vec![lane], ReactorChoice::Poll).unwrap_err();
    assert!(matches!(err, RuntimeError::NoSuchCore { core: 4096, .. }), "{err}");
    assert!(err.to_string().starts_with("lane 'far': core 4096 is not available"), "{err}");
}

#[test]
fn a_failing_agent_stops_the_start_and_says_which() {
    struct Broken;
    impl Agent for Broken {
        fn name(&self) -> &str {
            "broken"
        }
        fn on_start(&mut self, _ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            Err(std::io::Error::other("no device"))
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    let lane = LaneSpec {
        name: "dev".into(),
        core: None,
        idle: IdleStrategy::Spin,
        agents: vec![Box::new(Broken)],
        waker: None,
    };
    let err = Runtime::start(vec![lane], ReactorChoice::Poll).unwrap_err();
    assert_eq!(err.to_string(), "lane 'dev': agent 'broken' failed to start: no device");
}

/// An unpinned spinning lane of one agent.
fn spinning_lane(name: &str, agent: Box<dyn Agent>) -> LaneSpec {
    LaneSpec {
        name: name.into(),
        core: None,
        idle: IdleStrategy::Spin,
        agents: vec![agent],
        waker: None,
    }
}

/// Defect (a daemon test failed in CI): a lane ran its loop, and its control agent answered
/// clients, while another lane was still setting up; clients then took the descriptors that
/// lane's reactor needed and the daemon died after it had looked ready. Now no lane runs a
/// pass before every lane has started, and none runs one when another fails to start.
#[test]
fn no_lane_runs_before_every_lane_has_started() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    /// Counts its passes, those run before `late` had started, and its closes.
    struct Early {
        passes: Arc<AtomicU64>,
        before: Arc<AtomicU64>,
        late_done: Arc<AtomicU64>,
        closed: Arc<AtomicU64>,
    }
    impl Agent for Early {
        fn name(&self) -> &str {
            "early"
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            self.passes.fetch_add(1, Ordering::Relaxed);
            if self.late_done.load(Ordering::Relaxed) == 0 {
                self.before.fetch_add(1, Ordering::Relaxed);
            }
            0
        }
        fn on_close(&mut self, _ctx: &mut Ctx<'_>) {
            self.closed.fetch_add(1, Ordering::Relaxed);
        }
    }
    struct Late {
        fail: bool,
        done: Arc<AtomicU64>,
    }
    impl Agent for Late {
        fn name(&self) -> &str {
            "late"
        }
        fn on_start(&mut self, _ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            std::thread::sleep(Duration::from_millis(300));
            if self.fail {
                return Err(std::io::Error::other("no device"));
            }
            self.done.store(1, Ordering::Relaxed);
            Ok(())
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    for fail in [false, true] {
        let [passes, before, done, closed] = [(); 4].map(|()| Arc::new(AtomicU64::new(0)));
        let specs = vec![
            spinning_lane(
                "early",
                Box::new(Early {
                    passes: passes.clone(),
                    before: before.clone(),
                    late_done: done.clone(),
                    closed: closed.clone(),
                }),
            ),
            spinning_lane("late", Box::new(Late { fail, done: done.clone() })),
        ];
        match Runtime::start(specs, ReactorChoice::Poll) {
            Err(err) => {
                assert!(fail, "{err}");
                assert_eq!(err.to_string(), "lane 'late': agent 'late' failed to start: no device");
                let ran = passes.load(Ordering::Relaxed);
                assert_eq!(ran, 0, "the early lane ran {ran} passes beside a failed start");
                assert_eq!(before.load(Ordering::Relaxed), 0);
                assert_eq!(closed.load(Ordering::Relaxed), 1, "the started lane's agent closed");
            }
            Ok(runtime) => {
                assert!(!fail);
                assert_eq!(done.load(Ordering::Relaxed), 1, "start returned before 'late' started");
                let deadline = Instant::now() + Duration::from_secs(10);
                while passes.load(Ordering::Relaxed) == 0 {
                    assert!(Instant::now() < deadline, "the early lane never ran");
                    std::thread::sleep(Duration::from_millis(1));
                }
                runtime.shutdown();
                runtime.join();
                let ran = before.load(Ordering::Relaxed);
                assert_eq!(ran, 0, "the early lane ran {ran} passes before 'late' had started");
            }
        }
    }
}

/// The cores this thread may run on, read from /proc (so the test does not depend on the
/// runtime's own use of core_affinity).
fn core_affinity_cores() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
    line.split(':')
        .nth(1)
        .unwrap()
        .trim()
        .split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![part.parse().unwrap()],
        })
        .collect()
}

#[test]
fn a_lane_command_changes_the_idle_strategy_at_runtime() {
    struct Nothing;
    impl Agent for Nothing {
        fn name(&self) -> &str {
            "nothing"
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    let lane = LaneSpec {
        name: "busy".into(),
        core: None,
        idle: IdleStrategy::Spin,
        agents: vec![Box::new(Nothing)],
        waker: None,
    };
    let runtime = Runtime::start(vec![lane], ReactorChoice::Poll).unwrap();
    assert_eq!(runtime.stats()[0].idle, "spin");
    assert!(!runtime.command("nope", corelane::runtime::LaneCommand::SetIdle(IdleStrategy::Yield)));
    let sleep = IdleStrategy::Sleep(Duration::from_millis(1));
    assert!(runtime.command("busy", corelane::runtime::LaneCommand::SetIdle(sleep)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while runtime.stats()[0].idle != "sleep" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(runtime.stats()[0].idle, "sleep");
    let before = runtime.stats()[0].idle_ns;
    std::thread::sleep(Duration::from_millis(300));
    let after = runtime.stats()[0].idle_ns;
    assert!(after - before >= 100_000_000, "now sleeping most of the time: {before} -> {after}");
    runtime.shutdown();
    runtime.join();
}

/// A link's consumer: records when each item arrives.
struct Receiver {
    rx: corelane::runtime::LinkRx<Instant>,
    got: crossbeam_channel::Sender<(Instant, Instant)>,
}

impl Agent for Receiver {
    fn name(&self) -> &str {
        "receiver"
    }

    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        let mut n = 0;
        while let Ok(sent) = self.rx.pop() {
            let _ = self.got.send((sent, Instant::now()));
            n += 1;
        }
        n
    }
}

/// A link wakes a parked lane: the consumer lane parks 20 s at a time, yet every item pushed
/// (from a thread, while the lane sleeps) arrives at once, each wake-up paid for only because
/// the lane was parked; and shutdown wakes it too. Without the waker the items (and the
/// shutdown) would wait out the park.
#[test]
fn a_link_wakes_a_parked_lane() {
    for (backend, config) in backends() {
        let waker = corelane::runtime::LaneWaker::new().unwrap();
        let (mut tx, rx) = corelane::runtime::link::<Instant>(64, &waker);
        let (got_tx, got) = crossbeam_channel::unbounded();
        let idle = IdleStrategy::Sleep(Duration::from_secs(20));
        let runtime = Runtime::start(
            vec![LaneSpec {
                name: "parked".into(),
                core: None,
                idle,
                agents: vec![Box::new(Receiver { rx, got: got_tx })],
                waker: Some(waker.clone()),
            }],
            config,
        )
        .unwrap();
        for round in 0..5u64 {
            // Let the lane go back to its park (not needed for correctness, only for the count).
            std::thread::sleep(Duration::from_millis(30));
            tx.push(Instant::now()).unwrap();
            let (sent, arrived) = got
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{backend}: item {round} not delivered: lost wake-up"));
            assert!(arrived >= sent);
            assert_eq!(
                waker.wakes(),
                round + 1,
                "{backend}: one wake-up per push into a parked lane"
            );
        }
        std::thread::sleep(Duration::from_millis(30));
        runtime.shutdown();
        let joined = runtime.join_timeout(Duration::from_secs(10));
        assert_eq!(
            joined,
            corelane::runtime::Joined::default(),
            "{backend}: shutdown woke the lane"
        );
    }
}

struct Panicker {
    passes: u32,
}

impl Agent for Panicker {
    fn name(&self) -> &str {
        "panicker"
    }

    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        self.passes += 1;
        if self.passes == 50 {
            panic!("boom after {} passes", self.passes);
        }
        1
    }
}

struct Steady;

impl Agent for Steady {
    fn name(&self) -> &str {
        "steady"
    }

    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        0
    }
}

/// Defect: a lane that died (an agent panicked) went unnoticed and the other lanes ran on.
/// Now the death is recorded with the lane, the agent and the panic's message, and every lane
/// stops.
#[test]
fn a_panicking_agent_stops_every_lane_and_says_which() {
    let runtime = Runtime::start(
        vec![
            LaneSpec {
                name: "doomed".into(),
                core: None,
                idle: IdleStrategy::Spin,
                agents: vec![Box::new(Steady), Box::new(Panicker { passes: 0 })],
                waker: None,
            },
            LaneSpec {
                name: "other".into(),
                core: None,
                idle: IdleStrategy::backoff(),
                agents: vec![Box::new(Steady)],
                waker: None,
            },
        ],
        ReactorChoice::Poll,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while runtime.failure().is_none() {
        assert!(Instant::now() < deadline, "the death was never reported");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(runtime.shutdown_flag().is_requested(), "a death stops every lane");
    let joined = runtime.join_timeout(Duration::from_secs(10));
    assert!(joined.stuck.is_empty(), "{joined:?}");
    let failure = joined.failure.unwrap();
    assert_eq!(failure.lane, "doomed");
    assert_eq!(failure.cause, "agent 'panicker' panicked: boom after 50 passes");
    assert_eq!(
        failure.to_string(),
        "lane 'doomed' died: agent 'panicker' panicked: boom after 50 passes"
    );
}

struct SlowClose;

impl Agent for SlowClose {
    fn name(&self) -> &str {
        "slow-close"
    }

    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        0
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_>) {
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// Defect: `runtime.shutdown_timeout_ms` was never enforced. `join_timeout` gives up on a lane
/// that does not finish, names it, and returns on time.
#[test]
fn join_gives_up_on_a_stuck_lane_at_the_timeout() {
    let runtime = Runtime::start(
        vec![
            LaneSpec {
                name: "stuck".into(),
                core: None,
                idle: IdleStrategy::backoff(),
                agents: vec![Box::new(SlowClose)],
                waker: None,
            },
            LaneSpec {
                name: "quick".into(),
                core: None,
                idle: IdleStrategy::backoff(),
                agents: vec![Box::new(Steady)],
                waker: None,
            },
        ],
        ReactorChoice::Poll,
    )
    .unwrap();
    runtime.shutdown();
    let started = Instant::now();
    let joined = runtime.join_timeout(Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_secs(3), "join waited for the stuck lane");
    assert_eq!(joined, corelane::runtime::Joined { failure: None, stuck: vec!["stuck".into()] });
}

/// Found in review: a start that succeeded, then a shutdown at once (the daemon's metrics-server
/// failure path, a SIGTERM right after start): every agent's on_stopping must still run.
#[test]
fn on_stopping_runs_after_a_successful_start_and_an_immediate_shutdown() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    struct Notes {
        stopping: Arc<AtomicU64>,
        closed: Arc<AtomicU64>,
    }
    impl Agent for Notes {
        fn name(&self) -> &str {
            "notes"
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
        fn on_stopping(&mut self, _ctx: &mut Ctx<'_>) {
            self.stopping.fetch_add(1, Ordering::Relaxed);
        }
        fn on_close(&mut self, _ctx: &mut Ctx<'_>) {
            self.closed.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut missed = 0;
    const ROUNDS: usize = 200;
    for _ in 0..ROUNDS {
        let stopping = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicU64::new(0));
        let lane = |name: &str| {
            spinning_lane(
                name,
                Box::new(Notes { stopping: stopping.clone(), closed: closed.clone() }),
            )
        };
        let runtime = Runtime::start(vec![lane("a"), lane("b")], ReactorChoice::Poll).unwrap();
        runtime.shutdown();
        assert!(runtime.join().is_none());
        assert_eq!(closed.load(Ordering::Relaxed), 2);
        if stopping.load(Ordering::Relaxed) != 2 {
            missed += 1;
        }
    }
    assert_eq!(missed, 0, "on_stopping skipped in {missed} of {ROUNDS} starts that succeeded");
}

/// Found in review: an agent whose on_start panicked failed the start in the name of
/// whichever lane reported last. Now the start fails naming the lane, the agent and the panic.
#[test]
fn a_panic_in_on_start_fails_the_start_and_names_the_lane() {
    struct Boom;
    impl Agent for Boom {
        fn name(&self) -> &str {
            "boom"
        }
        fn on_start(&mut self, _ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            panic!("boom in on_start");
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    struct Fine;
    impl Agent for Fine {
        fn name(&self) -> &str {
            "fine"
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let specs = vec![
            spinning_lane("panicky", Box::new(Boom)),
            spinning_lane("healthy", Box::new(Fine)),
        ];
        let r = Runtime::start(specs, ReactorChoice::Poll).map(|_| ()).map_err(|e| e.to_string());
        let _ = tx.send(r);
    });
    let r = rx.recv_timeout(Duration::from_secs(10)).expect("start hung");
    let err = r.expect_err("a start with a panicking on_start succeeded");
    assert_eq!(
        err, "lane 'panicky': agent 'boom' failed to start: panicked: boom in on_start",
        "the error names the wrong lane"
    );
}
