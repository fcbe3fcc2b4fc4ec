//! The connection table with real sockets on real lanes, on every backend this kernel offers:
//! records reassembled in its rings, the accept limit, the write timeout, deadlines on the
//! lane's timers, half-closed peers; and the control agent's memory after a large reply.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corelane::runtime::{
    Agent, Board, CloseReason, Completion, ConnConfig, ConnEvent, ConnStats, ConnTable, Ctx,
    IdleStrategy, LaneSpec, Reactor, ReactorChoice, ReactorConfig, RecvRing, Runtime, Shutdown,
    UringOptions,
};

/// Every backend that can run here, io_uring once with each option on; a missing one is said
/// out loud, not silently skipped.
fn backends() -> Vec<(String, ReactorConfig)> {
    let mut out = vec![("poll".to_owned(), ReactorConfig::from(ReactorChoice::Poll))];
    match Reactor::probe(ReactorChoice::IoUring) {
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

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("corelane-conns-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("conns.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `cond` until it holds or `within` passes; says what it waited for.
fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether any descriptor of this process is the socket with inode `ino`.
fn socket_open(ino: u64) -> bool {
    let want = format!("socket:[{ino}]");
    std::fs::read_dir("/proc/self/fd").unwrap().flatten().any(|e| {
        std::fs::read_link(e.path()).is_ok_and(|target| target.as_os_str() == want.as_str())
    })
}

/// What the agent lets the test see.
#[derive(Default)]
struct Seen {
    stats: Mutex<ConnStats>,
    /// Ring capacity after each receive's records were taken out, and the largest seen.
    ring_capacity: AtomicUsize,
    ring_peak: AtomicUsize,
    passes: AtomicUsize,
    /// Inodes of the sockets accepted, in order.
    inodes: Mutex<Vec<u64>>,
    /// When each close happened, and why.
    closes: Mutex<Vec<(CloseReason, Instant)>>,
}

/// Records of a u32 little-endian length and a payload, reassembled in the table's rings. Each
/// record is answered with its length (u32); a record whose payload starts with `B` also gets
/// 256 KiB (to fill a peer that does not read). With `idle`, a connection silent that long is
/// closed (the deadline is pushed back by every receive).
struct Records {
    listener: Option<UnixListener>,
    conns: ConnTable<()>,
    idle: Option<Duration>,
    seen: Arc<Seen>,
}

impl Records {
    fn new(
        path: &std::path::Path,
        config: ConnConfig,
        idle: Option<Duration>,
    ) -> (Self, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let agent = Records {
            listener: Some(UnixListener::bind(path).unwrap()),
            conns: ConnTable::new(config),
            idle,
            seen: seen.clone(),
        };
        (agent, seen)
    }
}

impl Agent for Records {
    fn name(&self) -> &str {
        "records"
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
        ctx.listen(0, self.listener.take().unwrap())
    }

    fn on_completion(&mut self, ctx: &mut Ctx<'_>, completion: Completion) {
        let now = ctx.now;
        match self.conns.event(ctx, completion) {
            ConnEvent::Other(Completion::Accepted { fd, .. }) => {
                let ino = rustix::fs::fstat(fd.as_fd()).unwrap().st_ino;
                if let Ok(id) = self.conns.accept(ctx, fd, |_| ()) {
                    self.seen.inodes.lock().unwrap().push(ino);
                    let deadline = self.idle.map(|d| now + d);
                    self.conns.set_deadline(ctx, id, deadline);
                }
            }
            ConnEvent::Received { id, buf } => {
                let mut answers = Vec::new();
                let Ok((_, ring)) = self.conns.receive(ctx, id, buf) else { return };
                while let Some(head) = ring.peek(4) {
                    let n = u32::from_le_bytes(head.try_into().unwrap()) as usize;
                    let Some(record) = ring.peek(4 + n) else { break };
                    answers.push((n as u32, record.get(4) == Some(&b'B')));
                    ring.consume(4 + n);
                }
                let capacity = ring.capacity();
                self.seen.ring_capacity.store(capacity, Ordering::Relaxed);
                self.seen.ring_peak.fetch_max(capacity, Ordering::Relaxed);
                for (n, big) in answers {
                    if self.conns.send(ctx, id, &n.to_le_bytes()).is_err() {
                        break;
                    }
                    if big && self.conns.send_owned(ctx, id, vec![7u8; 256 * 1024]).is_err() {
                        break;
                    }
                }
                let deadline = self.idle.map(|d| now + d);
                self.conns.set_deadline(ctx, id, deadline);
            }
            ConnEvent::Deadline { id } => {
                self.conns.close(ctx, id, CloseReason::IdleTimeout);
                if !self.conns.contains(id) {
                    self.seen.closes.lock().unwrap().push((CloseReason::IdleTimeout, now));
                }
            }
            ConnEvent::PeerClosed { id } => {
                self.conns.close(ctx, id, CloseReason::Peer);
                if !self.conns.contains(id) {
                    self.seen.closes.lock().unwrap().push((CloseReason::Peer, now));
                }
            }
            ConnEvent::Closed { reason, .. } => {
                self.seen.closes.lock().unwrap().push((reason, now));
            }
            _ => {}
        }
        *self.seen.stats.lock().unwrap() = *self.conns.stats();
    }

    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        self.seen.passes.fetch_add(1, Ordering::Relaxed);
        0
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>) {
        self.conns.close_all(ctx);
    }
}

fn lane(agent: Box<dyn Agent>, idle: IdleStrategy) -> LaneSpec {
    LaneSpec { name: "conns".into(), core: None, idle, agents: vec![agent], waker: None }
}

fn backoff() -> IdleStrategy {
    IdleStrategy::Backoff { spins: 10, yields: 10, max_park: Duration::from_millis(2) }
}

fn record(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn read_u32(s: &mut UnixStream) -> u32 {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    u32::from_le_bytes(b)
}

#[test]
fn records_in_any_pieces_are_reassembled_and_a_large_one_leaves_no_large_ring() {
    for (name, config) in backends() {
        let dir = TempDir::new(&format!("records-{name}"));
        let conns = ConnConfig { max_recv_buffer: 1 << 20, ..ConnConfig::default() };
        let (agent, seen) = Records::new(&dir.socket(), conns, None);
        let runtime = Runtime::start(vec![lane(Box::new(agent), backoff())], config).unwrap();
        let mut peer = UnixStream::connect(dir.socket()).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Small records cut at odd places, a 300 KiB one (many receives), small ones again.
        let mut stream = Vec::new();
        let sizes = [1usize, 7, 100, 3, 300 * 1024, 5, 0, 64];
        for &n in &sizes {
            stream.extend(record(&vec![b'x'; n]));
        }
        for piece in stream.chunks(1000) {
            peer.write_all(piece).unwrap();
        }
        for &n in &sizes {
            assert_eq!(read_u32(&mut peer) as usize, n, "{name}");
        }
        let peak = seen.ring_peak.load(Ordering::Relaxed);
        assert!(peak >= 300 * 1024, "{name}: the ring held the large record whole ({peak})");
        let after = seen.ring_capacity.load(Ordering::Relaxed);
        assert!(after <= RecvRing::RETAIN_BYTES, "{name}: {after} bytes kept after it");
        runtime.shutdown();
        runtime.join();
    }
}

#[test]
fn connections_past_the_limit_are_refused_and_counted() {
    for (name, config) in backends() {
        let dir = TempDir::new(&format!("limit-{name}"));
        let conns = ConnConfig { max_connections: 2, ..ConnConfig::default() };
        let (agent, seen) = Records::new(&dir.socket(), conns, None);
        let runtime = Runtime::start(vec![lane(Box::new(agent), backoff())], config).unwrap();
        let a = UnixStream::connect(dir.socket()).unwrap();
        let _b = UnixStream::connect(dir.socket()).unwrap();
        wait_for(&format!("{name}: two accepted"), Duration::from_secs(10), || {
            seen.stats.lock().unwrap().accepted == 2
        });
        let mut c = UnixStream::connect(dir.socket()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(c.read(&mut byte).unwrap(), 0, "{name}: the third reads end of stream");
        wait_for(&format!("{name}: the refusal counted"), Duration::from_secs(10), || {
            seen.stats.lock().unwrap().refused == 1
        });
        // One goes; a new one is accepted and answered.
        a.shutdown(std::net::Shutdown::Both).unwrap();
        wait_for(&format!("{name}: one closed"), Duration::from_secs(10), || {
            seen.stats.lock().unwrap().open == 1
        });
        let mut d = UnixStream::connect(dir.socket()).unwrap();
        d.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        d.write_all(&record(b"hi")).unwrap();
        assert_eq!(read_u32(&mut d), 2, "{name}");
        wait_for(
            &format!("{name}: 3 accepted, 1 refused, 2 open"),
            Duration::from_secs(10),
            || {
                let stats = *seen.stats.lock().unwrap();
                (stats.accepted, stats.refused, stats.open) == (3, 1, 2)
            },
        );
        runtime.shutdown();
        runtime.join();
    }
}

#[test]
fn a_peer_that_does_not_read_is_dropped_at_the_write_timeout_and_its_socket_released() {
    const TIMEOUT: Duration = Duration::from_millis(200);
    for (name, config) in backends() {
        let dir = TempDir::new(&format!("write-{name}"));
        let conns = ConnConfig { write_timeout: TIMEOUT, ..ConnConfig::default() };
        let (agent, seen) = Records::new(&dir.socket(), conns, None);
        let runtime = Runtime::start(vec![lane(Box::new(agent), backoff())], config).unwrap();
        let mut peer = UnixStream::connect(dir.socket()).unwrap();
        let asked = Instant::now();
        // 1 MiB of answers, never read.
        for _ in 0..4 {
            peer.write_all(&record(b"B")).unwrap();
        }
        wait_for(&format!("{name}: the write timeout"), Duration::from_secs(10), || {
            seen.stats.lock().unwrap().closed(CloseReason::WriteTimeout) == 1
        });
        let (reason, at) = seen.closes.lock().unwrap()[0];
        assert_eq!(reason, CloseReason::WriteTimeout, "{name}");
        assert!(at - asked >= TIMEOUT, "{name}: dropped after {:?}", at - asked);
        let ino = seen.inodes.lock().unwrap()[0];
        wait_for(&format!("{name}: the socket released"), Duration::from_secs(10), || {
            !socket_open(ino)
        });
        assert_eq!(seen.stats.lock().unwrap().open, 0, "{name}");
        runtime.shutdown();
        runtime.join();
    }
}

#[test]
fn an_idle_deadline_closes_a_silent_connection_and_spares_a_talkative_one() {
    const IDLE: Duration = Duration::from_millis(250);
    for (name, config) in backends() {
        let dir = TempDir::new(&format!("idle-{name}"));
        let (agent, seen) = Records::new(&dir.socket(), ConnConfig::default(), Some(IDLE));
        let runtime = Runtime::start(vec![lane(Box::new(agent), backoff())], config).unwrap();
        // Talkative: a record every 30 ms for three idle timeouts, all answered.
        let mut talker = UnixStream::connect(dir.socket()).unwrap();
        talker.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let silent_since = Instant::now();
        let mut silent = UnixStream::connect(dir.socket()).unwrap();
        silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        while started.elapsed() < 3 * IDLE {
            talker.write_all(&record(b"tick")).unwrap();
            assert_eq!(read_u32(&mut talker), 4, "{name}: the talker is answered");
            std::thread::sleep(Duration::from_millis(30));
        }
        // The silent one was closed, not before its deadline.
        let mut byte = [0u8; 1];
        assert_eq!(silent.read(&mut byte).unwrap(), 0, "{name}: end of stream");
        wait_for(&format!("{name}: the close recorded"), Duration::from_secs(10), || {
            !seen.closes.lock().unwrap().is_empty()
        });
        let closes = seen.closes.lock().unwrap().clone();
        assert_eq!(closes.len(), 1, "{name}: only the silent one: {closes:?}");
        assert_eq!(closes[0].0, CloseReason::IdleTimeout);
        // The deadline counts from the lane's clock at accept (the start of that pass), which
        // may be read a little before the test's own `silent_since`: a few ms of slack (CI saw
        // 249.99 ms for a 250 ms deadline).
        let slack = Duration::from_millis(5);
        let idle_for = closes[0].1 - silent_since;
        assert!(idle_for + slack >= IDLE, "{name}: {idle_for:?}");
        runtime.shutdown();
        runtime.join();
    }
}

#[test]
fn a_half_closed_peer_gets_its_answer_and_the_lane_stays_quiet() {
    for (name, config) in backends() {
        let dir = TempDir::new(&format!("half-{name}"));
        let (agent, seen) = Records::new(&dir.socket(), ConnConfig::default(), None);
        // Idle passes sleep 200 ms: a lane kept busy by the peer would show many passes.
        let idle = IdleStrategy::Sleep(Duration::from_millis(200));
        let runtime = Runtime::start(vec![lane(Box::new(agent), idle)], config).unwrap();
        let mut peer = UnixStream::connect(dir.socket()).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        peer.write_all(&record(b"B")).unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        // The whole answer (its 256 KiB outlast the end of input), then end of stream.
        assert_eq!(read_u32(&mut peer), 1, "{name}");
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).unwrap();
        assert_eq!(rest.len(), 256 * 1024, "{name}: the answer written before the close");
        let before = seen.passes.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1000));
        let passes = seen.passes.load(Ordering::Relaxed) - before;
        assert!(passes <= 15, "{name}: {passes} passes in 1 s of quiet");
        assert_eq!(seen.stats.lock().unwrap().closed(CloseReason::Peer), 1, "{name}");
        runtime.shutdown();
        runtime.join();
    }
}

/// Defect: output was held in copies that kept their largest size (the session's buffer, the
/// reactor's queue). After a 2 MiB reply, the reactor's output memory is back to its spares.
#[test]
fn the_control_agent_keeps_no_large_buffer_after_a_large_reply() {
    use corelane::config::Config;
    use corelane::control::Client;
    use corelane::daemon::{
        ControlAgent, ControlCounters, ControlHandler, ControlSettings, Service, CONTROL,
    };

    /// Reports the reactor's output memory every pass.
    struct Probe(Arc<AtomicUsize>);
    impl Agent for Probe {
        fn name(&self) -> &str {
            "probe"
        }
        fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
            self.0.store(ctx.reactor().output_memory(), Ordering::Relaxed);
            0
        }
    }

    for (name, config) in backends() {
        let dir = TempDir::new(&format!("control-{name}"));
        let counters = ControlCounters::in_memory(CONTROL.requests()).unwrap();
        let mut control = Config::default().control;
        control.max_pending_output_bytes = 16 << 20;
        let board = Board::new();
        let toml = "#".repeat(2 << 20);
        let handler =
            ControlHandler::new(board.clone(), toml.clone(), Default::default(), counters);
        let listener = UnixListener::bind(dir.socket()).unwrap();
        let agent = ControlAgent::new(
            dir.socket(),
            listener,
            ControlSettings::from_config(&control),
            handler,
        );
        let memory = Arc::new(AtomicUsize::new(usize::MAX));
        let spec = LaneSpec {
            name: "control".into(),
            core: None,
            idle: backoff(),
            agents: vec![Box::new(agent), Box::new(Probe(memory.clone()))],
            waker: None,
        };
        let runtime = Runtime::start_with(vec![spec], config, Shutdown::new(), board).unwrap();
        let mut client = Client::builder()
            .max_body_bytes(8 << 20)
            .timeout(Duration::from_secs(10))
            .connect(dir.socket())
            .unwrap();
        assert_eq!(client.config_toml().unwrap().len(), toml.len(), "{name}");
        // What is left once it is written: at most the lane's spare buffers (256 KiB).
        wait_for(&format!("{name}: output memory back down"), Duration::from_secs(10), || {
            memory.load(Ordering::Relaxed) <= 256 * 1024
        });
        client.ping().unwrap();
        runtime.shutdown();
        runtime.join();
    }
}

/// With `keep_closed`, the table hands back the state of every connection it closes, on every
/// path: abort, a graceful close, the peer's end of input, a limit, and `close_all`.
#[test]
fn every_close_path_hands_back_the_state() {
    /// State: the socket's inode. `A` aborts, `C` closes, `B` answers 256 KiB to a peer that
    /// does not read (over the 64 KiB pending limit).
    struct Keeper {
        listener: Option<UnixListener>,
        conns: ConnTable<u64>,
        kept: Arc<Mutex<Vec<u64>>>,
    }
    impl Keeper {
        fn drain(&mut self) {
            while let Some((_, ino)) = self.conns.take_closed() {
                self.kept.lock().unwrap().push(ino);
            }
        }
    }
    impl Agent for Keeper {
        fn name(&self) -> &str {
            "keeper"
        }
        fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            ctx.listen(0, self.listener.take().unwrap())
        }
        fn on_completion(&mut self, ctx: &mut Ctx<'_>, completion: Completion) {
            match self.conns.event(ctx, completion) {
                ConnEvent::Other(Completion::Accepted { fd, .. }) => {
                    let ino = rustix::fs::fstat(fd.as_fd()).unwrap().st_ino;
                    let _ = self.conns.accept(ctx, fd, |_| ino);
                }
                ConnEvent::Received { id, buf } => match ctx.reactor().data(&buf).first() {
                    Some(b'A') => self.conns.abort(ctx, id, CloseReason::Protocol),
                    Some(b'C') => self.conns.close(ctx, id, CloseReason::Protocol),
                    Some(b'B') => {
                        let _ = self.conns.send_owned(ctx, id, vec![7u8; 256 * 1024]);
                    }
                    _ => {}
                },
                ConnEvent::PeerClosed { id } => self.conns.close(ctx, id, CloseReason::Peer),
                _ => {}
            }
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            self.drain();
            0
        }
        fn on_close(&mut self, ctx: &mut Ctx<'_>) {
            self.conns.close_all(ctx);
            self.drain();
        }
    }

    for (name, config) in backends() {
        let dir = TempDir::new(&format!("kept-{name}"));
        let kept = Arc::new(Mutex::new(Vec::new()));
        let table = ConnConfig { max_pending_output: 64 * 1024, ..ConnConfig::default() };
        let agent = Keeper {
            listener: Some(UnixListener::bind(dir.socket()).unwrap()),
            conns: ConnTable::new(table).keep_closed(),
            kept: kept.clone(),
        };
        let runtime = Runtime::start(vec![lane(Box::new(agent), backoff())], config).unwrap();
        let connect = || {
            let s = UnixStream::connect(dir.socket()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        };
        // Each state is the server side's inode: counted per path, and all distinct at the end.
        let mut expect = 0;
        let waited = |n: usize, what: &str| {
            wait_for(&format!("{name}: {what}"), Duration::from_secs(10), || {
                kept.lock().unwrap().len() >= n
            })
        };
        for (what, payload) in [("abort", b'A'), ("close", b'C')] {
            let mut s = connect();
            s.write_all(&[payload]).unwrap();
            expect += 1;
            waited(expect, what);
            let mut byte = [0u8; 1];
            assert_eq!(s.read(&mut byte).unwrap(), 0, "{name}: {what} closes the socket");
        }
        let s = connect();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        expect += 1;
        waited(expect, "end of input");
        let mut s = connect();
        s.write_all(b"B").unwrap();
        expect += 1;
        waited(expect, "over the pending limit");
        let _open = connect();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(kept.lock().unwrap().len(), expect, "{name}: the open one is not closed");
        runtime.shutdown();
        runtime.join();
        let kept = kept.lock().unwrap().clone();
        assert_eq!(kept.len(), expect + 1, "{name}: close_all hands back the last one");
        let mut unique = kept.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), kept.len(), "{name}: each state once: {kept:?}");
    }
}
