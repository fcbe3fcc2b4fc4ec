//! The reactor with real sockets and real lanes, on every backend this kernel offers and every
//! io_uring option: its operations (timers of the lane, connect, pause and resume, watches,
//! owned sends, peer credentials, receive buffer sizes), and its defects, each with the test
//! that found it.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corelane::runtime::{
    Agent, Completion, ConnectAddr, Ctx, IdleStrategy, LaneSpec, Reactor, ReactorChoice,
    ReactorConfig, Runtime, SocketOptions, Token, UringOptions,
};

/// Every backend that can run here, io_uring once with each option on; a missing one is said
/// out loud, not silently skipped.
fn backends() -> Vec<ReactorConfig> {
    let mut out = vec![ReactorConfig::from(ReactorChoice::Poll)];
    match Reactor::probe(ReactorChoice::IoUring) {
        Ok(_) => {
            let uring = |uring| ReactorConfig { choice: ReactorChoice::IoUring, uring };
            out.push(uring(UringOptions::default()));
            out.push(uring(UringOptions { defer_taskrun: true, ..UringOptions::default() }));
            out.push(uring(UringOptions { skip_send_cqe: true, ..UringOptions::default() }));
        }
        Err(e) => eprintln!("SKIPPING the io_uring backend in this test: {e}"),
    }
    out
}

/// A short name of a backend for messages and paths.
fn name(config: &ReactorConfig) -> String {
    match (config.choice, config.uring) {
        (ReactorChoice::Poll, _) => "poll".into(),
        (_, UringOptions { defer_taskrun: false, skip_send_cqe: false }) => "io_uring".into(),
        (_, o) => format!(
            "io_uring{}{}",
            if o.defer_taskrun { "+defer" } else { "" },
            if o.skip_send_cqe { "+skip" } else { "" }
        ),
    }
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("corelane-reactor-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn lane(agent: Box<dyn Agent>) -> LaneSpec {
    LaneSpec {
        name: "io".into(),
        core: None,
        idle: IdleStrategy::Backoff { spins: 10, yields: 10, max_park: Duration::from_millis(2) },
        agents: vec![agent],
        waker: None,
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

/// The inode of a socket, to find it in `/proc/self/fd` later.
fn inode(fd: impl AsFd) -> u64 {
    rustix::fs::fstat(fd).unwrap().st_ino
}

/// Whether any descriptor of this process is the socket with inode `ino`.
fn socket_open(ino: u64) -> bool {
    let want = format!("socket:[{ino}]");
    std::fs::read_dir("/proc/self/fd").unwrap().flatten().any(|e| {
        std::fs::read_link(e.path()).is_ok_and(|target| target.as_os_str() == want.as_str())
    })
}

/// Runs `agent` on a lane of its own with `idle` until `done` holds (or 10 s pass), then stops
/// the lane; `wake` is called after the shutdown request, for a lane parked on something only
/// the test can make happen.
fn run_until(
    config: ReactorConfig,
    idle: IdleStrategy,
    agent: Box<dyn Agent>,
    what: &str,
    mut done: impl FnMut() -> bool,
    wake: impl FnOnce(),
) {
    let lane = LaneSpec { name: "io".into(), core: None, idle, agents: vec![agent], waker: None };
    let runtime = Runtime::start(vec![lane], config).unwrap();
    wait_for(what, Duration::from_secs(10), &mut done);
    runtime.shutdown();
    wake();
    runtime.join();
}

// ---------------------------------------------------------------------------------------------
// Timers of the lane.
// ---------------------------------------------------------------------------------------------

#[test]
fn timers_fire_in_order_on_a_real_lane() {
    /// Arms five timers out of order, moves one, cancels one; records what fires, and when.
    struct Clock {
        t0: Option<Instant>,
        fired: Arc<Mutex<Vec<(u64, Duration)>>>,
    }
    impl Agent for Clock {
        fn name(&self) -> &str {
            "clock"
        }
        fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            let t0 = ctx.now;
            self.t0 = Some(t0);
            let ms = Duration::from_millis;
            ctx.timer(t0 + ms(60), 3)?;
            ctx.timer(t0 + ms(20), 1)?;
            ctx.timer(t0 + ms(40), 2)?;
            ctx.timer(t0 + ms(10), 4)?;
            ctx.timer(t0 + ms(80), 4)?; // moved: replaces the 10 ms deadline
            ctx.timer(t0 + ms(30), 5)?;
            assert!(ctx.cancel_timer(5));
            assert_eq!(ctx.timer_deadline(4), Some(t0 + ms(80)));
            Ok(())
        }
        fn on_completion(&mut self, ctx: &mut Ctx<'_>, c: Completion) {
            if let Completion::Timer { token } = c {
                let local = Ctx::local(token);
                let at = Instant::now() - self.t0.unwrap();
                self.fired.lock().unwrap().push((local, at));
                if local == 4 || local == 9 {
                    // A heartbeat keeps the lane, parked on a one-hour sleep, seeing shutdown.
                    ctx.timer(ctx.now + Duration::from_millis(5), 9).unwrap();
                }
            }
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    for config in backends() {
        let choice = name(&config);
        let fired = Arc::new(Mutex::new(Vec::new()));
        let agent = Clock { t0: None, fired: fired.clone() };
        // The lane would sleep an hour between passes: only the timers' deadlines wake it.
        let idle = IdleStrategy::Sleep(Duration::from_secs(3600));
        let seen = || fired.lock().unwrap().iter().filter(|(l, _)| *l != 9).count() == 4;
        run_until(config, idle, Box::new(agent), &format!("{choice}: four timers"), seen, || {});
        let fired = fired.lock().unwrap();
        let order: Vec<u64> = fired.iter().map(|&(l, _)| l).filter(|&l| l != 9).collect();
        assert_eq!(order, [1, 2, 3, 4], "{choice}: deadline order; 5 was cancelled");
        for &(local, at) in fired.iter().filter(|(l, _)| *l != 9) {
            let due = Duration::from_millis([0, 20, 40, 60, 80][local as usize]);
            assert!(at >= due, "{choice}: timer {local} fired at {at:?}, before {due:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Outbound connect.
// ---------------------------------------------------------------------------------------------

/// Connects to `addr` at start and says hello (queued before the connection is up); records
/// what it is told and what comes back.
struct Dialer {
    addr: ConnectAddr,
    events: Arc<Mutex<Vec<String>>>,
    got: Arc<Mutex<Vec<u8>>>,
}

impl Agent for Dialer {
    fn name(&self) -> &str {
        "dialer"
    }
    fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
        ctx.connect(1, &self.addr)?;
        ctx.send(1, b"hello")
    }
    fn on_completion(&mut self, ctx: &mut Ctx<'_>, c: Completion) {
        let mut events = self.events.lock().unwrap();
        match c {
            Completion::Connected { .. } => events.push("connected".into()),
            Completion::Received { buf, .. } => {
                self.got.lock().unwrap().extend_from_slice(ctx.reactor().data(&buf));
            }
            Completion::Failed { error, .. } => {
                events.push(format!("failed: {:?}", error.kind()));
                ctx.close(1);
            }
            Completion::Closed { .. } => events.push("closed".into()),
            _ => {}
        }
    }
    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        0
    }
}

#[test]
fn connect_to_tcp_and_unix_peers_then_talk() {
    for config in backends() {
        let choice = name(&config);
        let dir = TempDir::new(&format!("connect-{choice}"));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let unix_path = dir.0.join("peer.sock");
        let unix = UnixListener::bind(&unix_path).unwrap();
        let targets: Vec<(ConnectAddr, Accept)> = vec![
            (
                ConnectAddr::Tcp(tcp.local_addr().unwrap()),
                Box::new(move || Box::new(tcp.accept().unwrap().0) as Box<dyn ReadWrite>),
            ),
            (
                ConnectAddr::Unix(unix_path.clone()),
                Box::new(move || Box::new(unix.accept().unwrap().0) as Box<dyn ReadWrite>),
            ),
        ];
        for (addr, accept) in targets {
            let events = Arc::new(Mutex::new(Vec::new()));
            let got = Arc::new(Mutex::new(Vec::new()));
            let agent = Dialer { addr: addr.clone(), events: events.clone(), got: got.clone() };
            let lane = lane(Box::new(agent));
            let runtime = Runtime::start(vec![lane], config).unwrap();
            let mut peer = accept();
            let mut hello = [0u8; 5];
            peer.read_exact(&mut hello).unwrap();
            assert_eq!(&hello, b"hello", "{choice} {addr:?}: queued before Connected, sent after");
            peer.write_all(b"world").unwrap();
            wait_for(&format!("{choice} {addr:?}: the answer"), Duration::from_secs(10), || {
                got.lock().unwrap().len() == 5
            });
            assert_eq!(&got.lock().unwrap()[..], b"world", "{choice} {addr:?}");
            drop(peer);
            wait_for(&format!("{choice} {addr:?}: end of stream"), Duration::from_secs(10), || {
                events.lock().unwrap().last().is_some_and(|e| e == "closed")
            });
            assert_eq!(*events.lock().unwrap(), ["connected", "closed"], "{choice} {addr:?}");
            runtime.shutdown();
            runtime.join();
        }
    }
}

/// `Read + Write` in one object, for a peer that is TCP or Unix.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Accepts the one connection of a test listener.
type Accept = Box<dyn FnOnce() -> Box<dyn ReadWrite>>;

#[test]
fn a_refused_connect_is_a_failed_completion() {
    for config in backends() {
        let choice = name(&config);
        let dir = TempDir::new(&format!("refused-{choice}"));
        // A port nobody listens on (bound, then freed), and a path where nothing is.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let cases = [
            (ConnectAddr::Tcp(port), "failed: ConnectionRefused"),
            (ConnectAddr::Unix(dir.0.join("nobody.sock")), "failed: NotFound"),
        ];
        for (addr, want) in cases {
            let events = Arc::new(Mutex::new(Vec::new()));
            let agent =
                Dialer { addr: addr.clone(), events: events.clone(), got: Default::default() };
            let what = format!("{choice} {addr:?}: the failure");
            let failed = || !events.lock().unwrap().is_empty();
            run_until(config, IdleStrategy::backoff(), Box::new(agent), &what, failed, || {});
            assert_eq!(*events.lock().unwrap(), [want], "{choice} {addr:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pause and resume.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_paused_connection_receives_nothing_until_resumed_then_everything_in_order() {
    /// Pauses its connection at the first receive; resumes when told; checks that the bytes
    /// are the peer's counter sequence, in order.
    struct Credit {
        listener: Option<UnixListener>,
        paused: bool,
        resume: Arc<AtomicBool>,
        received: Arc<AtomicUsize>,
        while_paused: Arc<AtomicUsize>,
        bytes: Vec<u8>,
        in_order: Arc<AtomicBool>,
        /// Anything else that happened to the connection, for the failure message.
        other: Arc<Mutex<Vec<String>>>,
    }
    impl Agent for Credit {
        fn name(&self) -> &str {
            "credit"
        }
        fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            ctx.listen(0, self.listener.take().unwrap())
        }
        fn on_completion(&mut self, ctx: &mut Ctx<'_>, c: Completion) {
            match c {
                Completion::Accepted { fd, .. } => ctx.open(1, fd).unwrap(),
                Completion::Received { buf, .. } => {
                    if self.paused {
                        self.while_paused.fetch_add(buf.len(), Ordering::Relaxed);
                    }
                    self.bytes.extend_from_slice(ctx.reactor().data(&buf));
                    let whole = self.bytes.len() / 4 * 4;
                    let base = (self.received.load(Ordering::Relaxed) / 4) as u32;
                    for (i, word) in self.bytes[..whole].chunks_exact(4).enumerate() {
                        if u32::from_le_bytes(word.try_into().unwrap()) != base + i as u32 {
                            self.in_order.store(false, Ordering::Relaxed);
                        }
                    }
                    self.received.fetch_add(whole, Ordering::Relaxed);
                    self.bytes.drain(..whole);
                    if !self.resume.load(Ordering::Relaxed) && !self.paused {
                        ctx.pause(1).unwrap();
                        ctx.pause(1).unwrap(); // pausing twice is harmless
                        self.paused = true;
                    }
                }
                other => self.other.lock().unwrap().push(format!("{other:?}")),
            }
        }
        fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
            if self.paused && self.resume.load(Ordering::Relaxed) {
                self.paused = false;
                ctx.resume(1).unwrap();
                return 1;
            }
            0
        }
    }
    const TOTAL: usize = 8 << 20;
    for config in backends() {
        let choice = name(&config);
        let dir = TempDir::new(&format!("pause-{choice}"));
        let path = dir.0.join("credit.sock");
        let resume = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let while_paused = Arc::new(AtomicUsize::new(0));
        let in_order = Arc::new(AtomicBool::new(true));
        let other = Arc::new(Mutex::new(Vec::new()));
        let agent = Credit {
            listener: Some(UnixListener::bind(&path).unwrap()),
            paused: false,
            resume: resume.clone(),
            received: received.clone(),
            while_paused: while_paused.clone(),
            bytes: Vec::new(),
            in_order: in_order.clone(),
            other: other.clone(),
        };
        let runtime = Runtime::start(vec![lane(Box::new(agent))], config).unwrap();
        let data: Vec<u8> = (0..(TOTAL / 4) as u32).flat_map(u32::to_le_bytes).collect();
        let mut peer = UnixStream::connect(&path).unwrap();
        // The peer keeps sending until the kernel buffers are full: the agent is not reading.
        peer.set_nonblocking(true).unwrap();
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match peer.write(&data[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Full, and stays full: give the lane a moment to (wrongly) read more.
                    std::thread::sleep(Duration::from_millis(50));
                    match peer.write(&data[sent..]) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{choice}: {e}"),
                    }
                }
                Err(e) => panic!("{choice}: {e}"),
            }
            assert!(Instant::now() < deadline, "{choice}: the paused peer was never held up");
        }
        assert!(sent < TOTAL, "{choice}: flow control held the peer up");
        assert_eq!(while_paused.load(Ordering::Relaxed), 0, "{choice}: received while paused");
        let before = received.load(Ordering::Relaxed);
        resume.store(true, Ordering::Relaxed);
        peer.set_nonblocking(false).unwrap();
        peer.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        peer.write_all(&data[sent..]).unwrap_or_else(|e| {
            panic!(
                "{choice}: not read after resume ({e}): {} of {sent} bytes received; {:?}",
                received.load(Ordering::Relaxed),
                other.lock().unwrap()
            )
        });
        wait_for(&format!("{choice}: everything after resume"), Duration::from_secs(10), || {
            received.load(Ordering::Relaxed) == TOTAL
        });
        assert!(in_order.load(Ordering::Relaxed), "{choice}: bytes in order, none lost");
        eprintln!("{choice}: {before} bytes delivered before the pause, {sent} sent by then");
        runtime.shutdown();
        runtime.join();
    }
}

// ---------------------------------------------------------------------------------------------
// Watches.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_watched_eventfd_wakes_a_parked_lane() {
    /// Watches an eventfd; reads it at each readiness and watches again.
    struct Bell {
        fd: Option<OwnedFd>,
        rung: Arc<Mutex<Vec<u64>>>,
    }
    impl Agent for Bell {
        fn name(&self) -> &str {
            "bell"
        }
        fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            ctx.watch(1, self.fd.take().unwrap())
        }
        fn on_completion(&mut self, ctx: &mut Ctx<'_>, c: Completion) {
            if let Completion::Readable { .. } = c {
                let mut value = [0u8; 8];
                rustix::io::read(ctx.fd(1).unwrap(), &mut value).unwrap();
                self.rung.lock().unwrap().push(u64::from_ne_bytes(value));
                ctx.rearm_watch(1).unwrap();
            }
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    for config in backends() {
        let choice = name(&config);
        let flags = rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK;
        let fd = rustix::event::eventfd(0, flags).unwrap();
        let writer = fd.try_clone().unwrap();
        let ring = |n: u64| rustix::io::write(&writer, &n.to_ne_bytes()).unwrap();
        let rung = Arc::new(Mutex::new(Vec::new()));
        let agent = Bell { fd: Some(fd), rung: rung.clone() };
        // Parked for an hour at a time: only the eventfd can wake it.
        let lane = LaneSpec {
            name: "bell".into(),
            core: None,
            idle: IdleStrategy::Sleep(Duration::from_secs(3600)),
            agents: vec![Box::new(agent)],
            waker: None,
        };
        let runtime = Runtime::start(vec![lane], config).unwrap();
        for (i, n) in [1u64, 41].into_iter().enumerate() {
            std::thread::sleep(Duration::from_millis(20)); // let the lane park
            ring(n);
            wait_for(&format!("{choice}: ring {n}"), Duration::from_secs(10), || {
                rung.lock().unwrap().len() == i + 1
            });
        }
        assert_eq!(*rung.lock().unwrap(), [1, 41], "{choice}");
        runtime.shutdown();
        ring(1); // wakes the lane to see the shutdown request
        runtime.join();
    }
}

#[test]
fn a_watched_pidfd_fires_once_per_arming_when_the_child_exits() {
    /// Watches a pidfd; counts readiness and passes; re-arms once when told.
    struct Reaper {
        fd: Option<OwnedFd>,
        fired: Arc<AtomicUsize>,
        passes: Arc<AtomicUsize>,
        rearm: Arc<AtomicBool>,
    }
    impl Agent for Reaper {
        fn name(&self) -> &str {
            "reaper"
        }
        fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            ctx.watch(1, self.fd.take().unwrap())
        }
        fn on_completion(&mut self, _ctx: &mut Ctx<'_>, c: Completion) {
            if let Completion::Readable { .. } = c {
                self.fired.fetch_add(1, Ordering::Relaxed);
            }
        }
        fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
            self.passes.fetch_add(1, Ordering::Relaxed);
            if self.rearm.swap(false, Ordering::Relaxed) {
                ctx.rearm_watch(1).unwrap();
            }
            0
        }
    }
    for config in backends() {
        let choice = name(&config);
        let mut child = std::process::Command::new("sleep").arg("0.05").spawn().unwrap();
        let pid = rustix::process::Pid::from_child(&child);
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
        let fired = Arc::new(AtomicUsize::new(0));
        let passes = Arc::new(AtomicUsize::new(0));
        let rearm = Arc::new(AtomicBool::new(false));
        let agent = Reaper {
            fd: Some(fd),
            fired: fired.clone(),
            passes: passes.clone(),
            rearm: rearm.clone(),
        };
        let lane = LaneSpec {
            name: "reaper".into(),
            core: None,
            idle: IdleStrategy::Sleep(Duration::from_millis(1)),
            agents: vec![Box::new(agent)],
            waker: None,
        };
        let runtime = Runtime::start(vec![lane], config).unwrap();
        for round in 1..=2 {
            wait_for(&format!("{choice}: exit seen ({round})"), Duration::from_secs(10), || {
                fired.load(Ordering::Relaxed) == round
            });
            // An exited child's pidfd stays readable: the watch rests until re-armed.
            let at = passes.load(Ordering::Relaxed);
            wait_for(&format!("{choice}: 50 more passes"), Duration::from_secs(10), || {
                passes.load(Ordering::Relaxed) >= at + 50
            });
            assert_eq!(fired.load(Ordering::Relaxed), round, "{choice}: once per arming");
            rearm.store(true, Ordering::Relaxed);
        }
        runtime.shutdown();
        runtime.join();
        assert!(child.wait().unwrap().success());
    }
}

// ---------------------------------------------------------------------------------------------
// Owned sends, peer credentials, receive buffer sizes.
// ---------------------------------------------------------------------------------------------

#[test]
fn owned_and_copied_sends_arrive_in_order() {
    /// Answers the first connection with copies and owned buffers, interleaved.
    struct Mixed {
        listener: Option<UnixListener>,
        sent: Arc<AtomicBool>,
    }
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }
    impl Agent for Mixed {
        fn name(&self) -> &str {
            "mixed"
        }
        fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            ctx.listen(0, self.listener.take().unwrap())
        }
        fn on_completion(&mut self, ctx: &mut Ctx<'_>, c: Completion) {
            match c {
                Completion::Accepted { fd, .. } => {
                    ctx.open(1, fd).unwrap();
                    ctx.send(1, b"a").unwrap();
                    ctx.send_owned(1, pattern(3 << 20, 1)).unwrap();
                    ctx.send(1, b"z").unwrap();
                    ctx.send_owned(1, Vec::new()).unwrap();
                    ctx.send(1, &pattern(64 * 1024 + 1, 2)).unwrap();
                    for i in 0..40u8 {
                        ctx.send_owned(1, vec![i; 100]).unwrap();
                    }
                }
                Completion::Sent { .. } if ctx.pending(1) == 0 => {
                    self.sent.store(true, Ordering::Relaxed)
                }
                _ => {}
            }
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    for config in backends() {
        let choice = name(&config);
        let dir = TempDir::new(&format!("owned-{choice}"));
        let path = dir.0.join("mixed.sock");
        let sent = Arc::new(AtomicBool::new(false));
        let agent =
            Mixed { listener: Some(UnixListener::bind(&path).unwrap()), sent: sent.clone() };
        let runtime = Runtime::start(vec![lane(Box::new(agent))], config).unwrap();
        let mut want = b"a".to_vec();
        want.extend(pattern(3 << 20, 1));
        want.push(b'z');
        want.extend(pattern(64 * 1024 + 1, 2));
        for i in 0..40u8 {
            want.extend([i; 100]);
        }
        let mut peer = UnixStream::connect(&path).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = vec![0u8; want.len()];
        peer.read_exact(&mut got).unwrap();
        assert!(got == want, "{choice}: every byte, in the order queued");
        wait_for(&format!("{choice}: Sent with nothing pending"), Duration::from_secs(10), || {
            sent.load(Ordering::Relaxed)
        });
        runtime.shutdown();
        runtime.join();
    }
}

#[test]
fn peer_credentials_name_the_connecting_process() {
    struct Who {
        listener: Option<UnixListener>,
        cred: Arc<Mutex<Option<String>>>,
    }
    impl Agent for Who {
        fn name(&self) -> &str {
            "who"
        }
        fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            ctx.listen(0, self.listener.take().unwrap())
        }
        fn on_completion(&mut self, ctx: &mut Ctx<'_>, c: Completion) {
            if let Completion::Accepted { fd, .. } = c {
                ctx.open(1, fd).unwrap();
                let cred = ctx.peer_credentials(1).unwrap();
                assert!(ctx.peer_credentials(2).is_err(), "nothing registered under 2");
                *self.cred.lock().unwrap() = Some(format!("{cred:?}"));
            }
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    for config in backends() {
        let choice = name(&config);
        let dir = TempDir::new(&format!("cred-{choice}"));
        let path = dir.0.join("who.sock");
        let cred = Arc::new(Mutex::new(None));
        let agent = Who { listener: Some(UnixListener::bind(&path).unwrap()), cred: cred.clone() };
        let lane = lane(Box::new(agent));
        let runtime = Runtime::start(vec![lane], config).unwrap();
        let _peer = UnixStream::connect(&path).unwrap();
        wait_for(&format!("{choice}: credentials"), Duration::from_secs(10), || {
            cred.lock().unwrap().is_some()
        });
        let want = corelane::runtime::PeerCred {
            pid: std::process::id(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        };
        assert_eq!(cred.lock().unwrap().as_deref(), Some(format!("{want:?}").as_str()), "{choice}");
        runtime.shutdown();
        runtime.join();
    }
}

/// By connection: (where it came from, largest chunk, total bytes).
type Seen = std::collections::HashMap<u64, (u64, usize, usize)>;

#[test]
fn receive_buffer_sizes_are_chosen_per_listener() {
    /// Two listeners (default and 2 KiB receives) and one socket opened with 4 KiB receives;
    /// records the largest chunk and the total per registration.
    struct Sizes {
        listeners: Vec<UnixListener>,
        pair: Option<UnixStream>,
        next: u64,
        /// By connection: (listener, largest chunk, total).
        seen: Arc<Mutex<Seen>>,
        origin: std::collections::HashMap<u64, u64>,
    }
    impl Agent for Sizes {
        fn name(&self) -> &str {
            "sizes"
        }
        fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            let bad = SocketOptions { recv_buf_bytes: 100 };
            let (a, _b) = UnixStream::pair()?;
            let err = ctx.open_with(99, a, bad).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
            let mut listeners = std::mem::take(&mut self.listeners).into_iter();
            ctx.listen(1000, listeners.next().unwrap())?;
            let small = SocketOptions { recv_buf_bytes: 1500 }; // rounded up to 2 KiB
            ctx.listen_with(1001, listeners.next().unwrap(), small)?;
            let four = SocketOptions { recv_buf_bytes: 4096 };
            ctx.open_with(1, self.pair.take().unwrap(), four)?;
            self.origin.insert(1, 0);
            Ok(())
        }
        fn on_completion(&mut self, ctx: &mut Ctx<'_>, c: Completion) {
            match c {
                Completion::Accepted { listener, fd } => {
                    self.next += 1;
                    let local = 1 + self.next;
                    self.origin.insert(local, Ctx::local(listener));
                    // The listener's options travel with the accepted socket.
                    ctx.open(local, fd).unwrap();
                }
                Completion::Received { token, buf } => {
                    let local = Ctx::local(token);
                    let mut seen = self.seen.lock().unwrap();
                    let e = seen.entry(local).or_insert((self.origin[&local], 0, 0));
                    e.1 = e.1.max(buf.len());
                    e.2 += buf.len();
                }
                _ => {}
            }
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    for config in backends() {
        let choice = name(&config);
        let dir = TempDir::new(&format!("sizes-{choice}"));
        let paths = [dir.0.join("default.sock"), dir.0.join("small.sock")];
        let (pair, mut pair_peer) = UnixStream::pair().unwrap();
        let seen = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let agent = Sizes {
            listeners: paths.iter().map(|p| UnixListener::bind(p).unwrap()).collect(),
            pair: Some(pair),
            next: 0,
            seen: seen.clone(),
            origin: Default::default(),
        };
        let runtime = Runtime::start(vec![lane(Box::new(agent))], config).unwrap();
        let mut peers: Vec<UnixStream> =
            paths.iter().map(|p| UnixStream::connect(p).unwrap()).collect();
        let burst = vec![7u8; 64 * 1024];
        for peer in &mut peers {
            peer.write_all(&burst).unwrap();
        }
        pair_peer.write_all(&burst).unwrap();
        wait_for(&format!("{choice}: every burst"), Duration::from_secs(10), || {
            let seen = seen.lock().unwrap();
            seen.len() == 3 && seen.values().all(|&(_, _, total)| total == burst.len())
        });
        let seen = seen.lock().unwrap();
        for &(origin, largest, _) in seen.values() {
            let limit = match origin {
                0 => 4096,     // opened with 4 KiB
                1000 => 16384, // the default listener
                _ => 2048,     // the 2 KiB listener
            };
            assert!(largest <= limit, "{choice}: chunks of {largest} bytes from {origin}");
        }
        runtime.shutdown();
        runtime.join();
    }
}

// ---------------------------------------------------------------------------------------------
// A half-closed peer.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_half_closed_peer_costs_no_cpu() {
    /// Keeps a half-closed connection open (to answer it later); counts `Closed` and passes.
    struct Patient {
        listener: Option<UnixListener>,
        closed: Arc<AtomicUsize>,
        passes: Arc<AtomicUsize>,
        answer: Arc<AtomicBool>,
    }
    impl Agent for Patient {
        fn name(&self) -> &str {
            "patient"
        }
        fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            ctx.listen(0, self.listener.take().unwrap())
        }
        fn on_completion(&mut self, ctx: &mut Ctx<'_>, c: Completion) {
            match c {
                Completion::Accepted { fd, .. } => ctx.open(1, fd).unwrap(),
                Completion::Closed { .. } => {
                    self.closed.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
            self.passes.fetch_add(1, Ordering::Relaxed);
            if self.answer.swap(false, Ordering::Relaxed) {
                ctx.send(1, b"late answer").unwrap();
            }
            0
        }
    }
    for config in backends() {
        let choice = name(&config);
        let dir = TempDir::new(&format!("half-{choice}"));
        let path = dir.0.join("patient.sock");
        let closed = Arc::new(AtomicUsize::new(0));
        let passes = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(AtomicBool::new(false));
        let agent = Patient {
            listener: Some(UnixListener::bind(&path).unwrap()),
            closed: closed.clone(),
            passes: passes.clone(),
            answer: answer.clone(),
        };
        let lane = LaneSpec {
            name: "io".into(),
            core: None,
            idle: IdleStrategy::Sleep(Duration::from_millis(1)),
            agents: vec![Box::new(agent)],
            waker: None,
        };
        let runtime = Runtime::start(vec![lane], config).unwrap();
        let mut peer = UnixStream::connect(&path).unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        wait_for(&format!("{choice}: end of input"), Duration::from_secs(10), || {
            closed.load(Ordering::Relaxed) == 1
        });
        // Passes go on (1 ms sleeps); end of input is reported once, not every pass.
        let at = passes.load(Ordering::Relaxed);
        wait_for(&format!("{choice}: 50 more passes"), Duration::from_secs(10), || {
            passes.load(Ordering::Relaxed) >= at + 50
        });
        assert_eq!(closed.load(Ordering::Relaxed), 1, "{choice}: Closed once");
        // The half-closed peer still gets what it is owed.
        answer.store(true, Ordering::Relaxed);
        peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < 11 {
            let n = peer.read(&mut buf).unwrap();
            assert!(n > 0, "{choice}: closed before the answer");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"late answer", "{choice}");
        runtime.shutdown();
        runtime.join();
    }
}

// ---------------------------------------------------------------------------------------------
// Defect: stuck sends keep closed connections alive (io_uring).
// ---------------------------------------------------------------------------------------------

/// Answers every receive with 256 KiB while less than 1 MiB is queued; drops a peer whose queue
/// has stayed at 1 MiB or more for 50 ms (a peer that does not read its replies), by then with a
/// send stuck in the kernel.
struct Stuck {
    listener: Option<UnixListener>,
    next: u64,
    stuck_since: Option<Instant>,
    inodes: Arc<Mutex<Vec<u64>>>,
    closed: Arc<AtomicBool>,
    registered: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
}

impl Agent for Stuck {
    fn name(&self) -> &str {
        "stuck"
    }
    fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
        ctx.listen(0, self.listener.take().unwrap())
    }
    fn on_completion(&mut self, ctx: &mut Ctx<'_>, c: Completion) {
        match c {
            Completion::Accepted { fd, .. } => {
                self.inodes.lock().unwrap().push(inode(&fd));
                self.next += 1;
                ctx.open(self.next, fd).unwrap();
            }
            Completion::Received { token, .. } => {
                let local = Ctx::local(token);
                if ctx.pending(local) < 1 << 20 {
                    ctx.send(local, &[5u8; 256 * 1024]).unwrap();
                }
            }
            Completion::Closed { token } | Completion::Failed { token, .. } => {
                ctx.close(Ctx::local(token));
            }
            _ => {}
        }
    }
    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
        self.registered.store(ctx.reactor().registered(), Ordering::Relaxed);
        self.in_flight.store(ctx.reactor().operations_in_flight(), Ordering::Relaxed);
        if self.next == 0 || self.closed.load(Ordering::Relaxed) {
            return 0;
        }
        if ctx.pending(1) < 1 << 20 {
            self.stuck_since = None;
            return 0;
        }
        let since = *self.stuck_since.get_or_insert(ctx.now);
        if ctx.now >= since + Duration::from_millis(50) {
            // Before closing: the peer checks it once its writes fail.
            self.closed.store(true, Ordering::Relaxed);
            ctx.close(1);
            return 1;
        }
        0
    }
}

#[test]
fn stuck_sends_do_not_keep_closed_connections_alive() {
    for config in backends() {
        let choice = name(&config);
        let dir = TempDir::new(&format!("stuck-{choice}"));
        let path = dir.0.join("stuck.sock");
        let inodes = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let registered = Arc::new(AtomicUsize::new(usize::MAX));
        let in_flight = Arc::new(AtomicUsize::new(usize::MAX));
        let agent = Stuck {
            listener: Some(UnixListener::bind(&path).unwrap()),
            next: 0,
            stuck_since: None,
            inodes: inodes.clone(),
            closed: closed.clone(),
            registered: registered.clone(),
            in_flight: in_flight.clone(),
        };
        let runtime = Runtime::start(vec![lane(Box::new(agent))], config).unwrap();

        // The peer floods and never reads. Once the agent closes it, its writes must fail
        // (EPIPE or ECONNRESET): a write that blocks for 10 s means the socket is still open.
        let mut peer = UnixStream::connect(&path).unwrap();
        peer.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let outcome = loop {
            match peer.write(&[1u8; 4096]) {
                Ok(_written) => continue,
                Err(e) => break e,
            }
        };
        assert!(
            closed.load(Ordering::Relaxed),
            "{choice}: the agent closed the peer ({outcome:?})"
        );
        assert!(
            matches!(
                outcome.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{choice}: the closed peer's writes should fail, got {outcome:?}"
        );
        let ino = inodes.lock().unwrap()[0];
        wait_for(
            &format!("{choice}: the closed socket's descriptor to go"),
            Duration::from_secs(10),
            || !socket_open(ino),
        );
        wait_for(
            &format!("{choice}: only the listener registered"),
            Duration::from_secs(10),
            || registered.load(Ordering::Relaxed) == 1,
        );
        // Every operation of the closed socket (the chain of sends included, whichever way
        // its completions come) is accounted for: only the listener's accept is left.
        let accept = usize::from(config.choice == ReactorChoice::IoUring);
        wait_for(&format!("{choice}: only the accept in flight"), Duration::from_secs(10), || {
            in_flight.load(Ordering::Relaxed) == accept
        });
        runtime.shutdown();
        runtime.join();
    }
}

// ---------------------------------------------------------------------------------------------
// Defect: receive buffers lost on close.
// ---------------------------------------------------------------------------------------------

/// Closes every connection on its first receive unless it starts with `G`; echoes good ones.
struct Picky {
    listener: Option<UnixListener>,
    next: u64,
    good: std::collections::HashSet<u64>,
    garbage_closed: Arc<AtomicU64>,
    scratch: Vec<u8>,
}

impl Agent for Picky {
    fn name(&self) -> &str {
        "picky"
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
                let local = Ctx::local(token);
                self.scratch.clear();
                self.scratch.extend_from_slice(ctx.reactor().data(&buf));
                if self.good.contains(&local) || self.scratch[0] == b'G' {
                    self.good.insert(local);
                    ctx.send(local, &self.scratch).unwrap();
                } else {
                    ctx.close(local);
                    self.garbage_closed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Completion::Closed { token } | Completion::Failed { token, .. } => {
                self.good.remove(&Ctx::local(token));
                ctx.close(Ctx::local(token));
            }
            _ => {}
        }
    }
    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        0
    }
}

#[test]
fn garbage_peers_closed_mid_stream_leave_the_lane_reading() {
    for config in backends() {
        let choice = name(&config);
        let dir = TempDir::new(&format!("garbage-{choice}"));
        let path = dir.0.join("garbage.sock");
        let garbage_closed = Arc::new(AtomicU64::new(0));
        let agent = Picky {
            listener: Some(UnixListener::bind(&path).unwrap()),
            next: 0,
            good: Default::default(),
            garbage_closed: garbage_closed.clone(),
            scratch: Vec::new(),
        };
        let runtime = Runtime::start(vec![lane(Box::new(agent))], config).unwrap();
        // Each garbage peer's 64 KiB is written before the connection is accepted, so several
        // chunks of it arrive together and the agent closes with the rest still queued.
        for _ in 0..300 {
            let mut garbage = UnixStream::connect(&path).unwrap();
            let _ = garbage.write_all(&[b'x'; 64 * 1024]);
        }
        wait_for(&format!("{choice}: 300 garbage peers closed"), Duration::from_secs(20), || {
            garbage_closed.load(Ordering::Relaxed) == 300
        });
        // The lane still reads.
        let mut good = UnixStream::connect(&path).unwrap();
        good.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for round in 0..10u8 {
            let message = [b'G', round, 1, 2, 3];
            good.write_all(&message).unwrap();
            let mut echo = [0u8; 5];
            good.read_exact(&mut echo).unwrap_or_else(|e| {
                panic!("{choice}: round {round}: no echo after the garbage peers: {e}")
            });
            assert_eq!(echo, message, "{choice}");
        }
        runtime.shutdown();
        runtime.join();
    }
}

/// The lane's view of the same defect, driven by hand so the test can see what a lane cannot:
/// after 300 connections closed with chunks still queued, one connection can again hold every
/// buffer of the default group (128 of 16 KiB, see `SocketOptions`) at once.
#[test]
fn closing_mid_stream_recycles_receive_buffers() {
    for config in backends() {
        std::thread::spawn(move || closing_mid_stream(config)).join().unwrap();
    }
}

fn closing_mid_stream(config: ReactorConfig) {
    let choice = name(&config);
    let mut reactor = Reactor::new(config).unwrap();
    for i in 0..300u64 {
        let (a, mut peer) = UnixStream::pair().unwrap();
        peer.write_all(&[b'x'; 64 * 1024]).unwrap();
        drop(peer);
        let token = Token(100 + i);
        reactor.open(OwnedFd::from(a), token).unwrap();
        // Like a lane: handle the first chunk (a protocol error: close), hand its buffer back.
        let deadline = Instant::now() + Duration::from_secs(10);
        'first: loop {
            assert!(Instant::now() < deadline, "{choice}: connection {i} received nothing");
            reactor.park(Duration::from_millis(1)).unwrap();
            while let Some(c) = reactor.next_completion() {
                if let Completion::Received { token: t, buf } = c {
                    assert_eq!(t, token, "{choice}");
                    reactor.recycle(buf);
                    reactor.close(token);
                    break 'first;
                }
            }
        }
        if let Some(c) = reactor.next_completion() {
            panic!("{choice}: a completion after close: {c:?}");
        }
    }
    let (b, mut peer) = UnixStream::pair().unwrap();
    reactor.open(OwnedFd::from(b), Token(1)).unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = [0u8; 64 * 1024];
        while peer.write_all(&chunk).is_ok() {}
    });
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 128 {
        assert!(
            Instant::now() < deadline,
            "{choice}: only {} buffers came back of the 128",
            held.len()
        );
        reactor.park(Duration::from_millis(1)).unwrap();
        while let Some(c) = reactor.next_completion() {
            if let Completion::Received { buf, .. } = c {
                held.push(buf);
            }
        }
    }
    for buf in held {
        reactor.recycle(buf);
    }
    reactor.close(Token(1));
    writer.join().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Defect: a reused slot can get two multishot receives.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_reused_slot_gets_one_multishot_receive() {
    for config in backends() {
        // A reactor of its own thread: see `Reactor::probe` on why not the test's thread.
        std::thread::spawn(move || reused_slot(config)).join().unwrap();
    }
}

fn reused_slot(config: ReactorConfig) {
    let choice = name(&config);
    let mut reactor = Reactor::new(config).unwrap();
    let (a, mut a_peer) = UnixStream::pair().unwrap();
    reactor.open(OwnedFd::from(a), Token(1)).unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = [0u8; 64 * 1024];
        while a_peer.write_all(&chunk).is_ok() {}
    });
    // Hold every receive buffer (none handed back), so the receive of `a` runs out of buffers.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 128 && Instant::now() < deadline {
        reactor.park(Duration::from_millis(1)).unwrap();
        while let Some(c) = reactor.next_completion() {
            if let Completion::Received { buf, .. } = c {
                held.push(buf);
            }
        }
    }
    assert!(held.len() >= 128, "{choice}: {} receives", held.len());
    for _ in 0..5 {
        reactor.park(Duration::from_millis(2)).unwrap();
        while let Some(c) = reactor.next_completion() {
            if let Completion::Received { buf, .. } = c {
                held.push(buf);
            }
        }
    }
    for buf in held {
        reactor.recycle(buf);
    }
    // Close `a` and open `b` in the same pass: `b` may take `a`'s slot.
    reactor.close(Token(1));
    let (b, mut b_peer) = UnixStream::pair().unwrap();
    reactor.open(OwnedFd::from(b), Token(2)).unwrap();
    b_peer.write_all(b"0123456789").unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 10 && Instant::now() < deadline {
        reactor.park(Duration::from_millis(1)).unwrap();
        while let Some(c) = reactor.next_completion() {
            match c {
                Completion::Received { token, buf } => {
                    assert_eq!(token, Token(2), "{choice}");
                    got.extend_from_slice(reactor.data(&buf));
                    reactor.recycle(buf);
                }
                other => panic!("{choice}: unexpected {other:?}"),
            }
        }
    }
    assert_eq!(got, b"0123456789", "{choice}");
    if config.choice == ReactorChoice::IoUring {
        assert_eq!(reactor.operations_in_flight(), 1, "one multishot receive for `b`");
    }
    // Closing `b` must release it: its peer reads end of stream.
    reactor.close(Token(2));
    for _ in 0..10 {
        reactor.park(Duration::from_millis(1)).unwrap();
        while reactor.next_completion().is_some() {}
    }
    b_peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = [0u8; 16];
    match b_peer.read(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{choice}: closed socket still open: {other:?}"),
    }
    writer.join().unwrap();
    assert_eq!(reactor.operations_in_flight(), 0, "{choice}: nothing left in the kernel");
    assert_eq!(reactor.registered(), 0);
}

// ---------------------------------------------------------------------------------------------
// Defect: local ids over 56 bits were checked only in debug builds.
// ---------------------------------------------------------------------------------------------

#[test]
fn local_ids_over_56_bits_are_refused() {
    struct Big(Arc<Mutex<Vec<String>>>);
    impl Agent for Big {
        fn name(&self) -> &str {
            "big"
        }
        fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            let (a, _b) = UnixStream::pair()?;
            let mut seen = self.0.lock().unwrap();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ctx.open(1 << 56, OwnedFd::from(a)).map_err(|e| e.kind())
            }));
            seen.push(format!("{r:?}"));
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ctx.send(u64::MAX, b"x").map_err(|e| e.kind())
            }));
            seen.push(format!("{r:?}"));
            Ok(())
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    for config in backends() {
        let choice = name(&config);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let runtime = Runtime::start(vec![lane(Box::new(Big(seen.clone())))], config).unwrap();
        runtime.shutdown();
        runtime.join();
        let seen = seen.lock().unwrap();
        assert_eq!(*seen, ["Ok(Err(InvalidInput))", "Ok(Err(InvalidInput))"], "{choice}");
    }
}

// ---------------------------------------------------------------------------------------------
// Defect: one accept error stopped a listener for good.
// ---------------------------------------------------------------------------------------------

/// Set in the child process that [`an_accept_error_does_not_stop_the_listener`] starts: it lowers
/// its descriptor limit, which would disturb the other tests of this binary.
const EMFILE_CHILD: &str = "COREL_TEST_EMFILE_CHILD";

/// Greets every connection with `hi`; publishes its listener's accept errors.
struct Greeter {
    listener: Option<UnixListener>,
    next: u64,
    errors: Arc<AtomicU64>,
}

impl Agent for Greeter {
    fn name(&self) -> &str {
        "greeter"
    }
    fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
        ctx.listen(0, self.listener.take().unwrap())
    }
    fn on_completion(&mut self, ctx: &mut Ctx<'_>, c: Completion) {
        match c {
            Completion::Accepted { fd, .. } => {
                self.next += 1;
                ctx.open(self.next, fd).unwrap();
                ctx.send(self.next, b"hi").unwrap();
            }
            Completion::Failed { token, error } if Ctx::local(token) == 0 => {
                panic!("a listener never fails: {error}")
            }
            Completion::Closed { token } | Completion::Failed { token, .. } => {
                ctx.close(Ctx::local(token));
            }
            _ => {}
        }
    }
    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
        let listener = ctx.token(0).unwrap();
        self.errors.store(ctx.reactor().accept_errors(listener), Ordering::Relaxed);
        0
    }
}

#[test]
fn an_accept_error_does_not_stop_the_listener() {
    if std::env::var_os(EMFILE_CHILD).is_none() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["an_accept_error_does_not_stop_the_listener", "--exact", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(EMFILE_CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the child failed:\n{text}");
        assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
        return;
    }
    for config in backends() {
        emfile_then_recovery(config);
    }
}

fn emfile_then_recovery(config: ReactorConfig) {
    let choice = name(&config);
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let dir = TempDir::new(&format!("emfile-{choice}"));
    let path = dir.0.join("greeter.sock");
    let errors = Arc::new(AtomicU64::new(0));
    let agent = Greeter {
        listener: Some(UnixListener::bind(&path).unwrap()),
        next: 0,
        errors: errors.clone(),
    };
    // Lowered before the lane starts: io_uring reads the limit when the accept is submitted.
    let limit = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: Some(256), maximum: limit.maximum }).unwrap();
    let runtime = Runtime::start(vec![lane(Box::new(agent))], config).unwrap();
    // Fill the descriptor table, then spend the last free descriptor on a client: the lane's
    // accept of it fails with EMFILE.
    let mut fillers = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fillers.push(f);
    }
    fillers.pop();
    let mut client = UnixStream::connect(&path).unwrap();
    wait_for(&format!("{choice}: an accept error"), Duration::from_secs(10), || {
        errors.load(Ordering::Relaxed) > 0
    });
    // While the table stays full, the listener retries after a back-off, not in a busy loop.
    let (before, since) = (errors.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_millis(100));
    let during = errors.load(Ordering::Relaxed) - before;
    let bound = since.elapsed().as_millis() as u64 / 2 + 2;
    assert!(during <= bound, "{choice}: {during} accept errors in {:?}", since.elapsed());
    // Free descriptors: the pending connection is accepted and greeted.
    fillers.truncate(fillers.len() - 16);
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hi = [0u8; 2];
    client.read_exact(&mut hi).unwrap_or_else(|e| panic!("{choice}: never accepted: {e}"));
    assert_eq!(&hi, b"hi");
    drop(fillers);
    setrlimit(Resource::Nofile, limit).unwrap();
    runtime.shutdown();
    runtime.join();
}

// ---------------------------------------------------------------------------------------------
// Defect: output buffers kept their largest size forever.
// ---------------------------------------------------------------------------------------------

#[test]
fn output_buffers_shrink_after_a_large_message() {
    /// Sends one 4 MiB message to the first connection; once it is written, reports the
    /// output memory the reactor still holds.
    struct Big {
        listener: Option<UnixListener>,
        memory: Arc<AtomicUsize>,
    }
    impl Agent for Big {
        fn name(&self) -> &str {
            "big"
        }
        fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
            ctx.listen(0, self.listener.take().unwrap())
        }
        fn on_completion(&mut self, ctx: &mut Ctx<'_>, c: Completion) {
            match c {
                Completion::Accepted { fd, .. } => {
                    ctx.open(1, fd).unwrap();
                    ctx.send(1, &vec![9u8; 4 << 20]).unwrap();
                }
                Completion::Sent { .. } if ctx.pending(1) == 0 => {
                    self.memory.store(ctx.reactor().output_memory(), Ordering::Relaxed);
                }
                _ => {}
            }
        }
        fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
            0
        }
    }
    for config in backends() {
        let choice = name(&config);
        let dir = TempDir::new(&format!("big-{choice}"));
        let path = dir.0.join("big.sock");
        let memory = Arc::new(AtomicUsize::new(usize::MAX));
        let agent =
            Big { listener: Some(UnixListener::bind(&path).unwrap()), memory: memory.clone() };
        let runtime = Runtime::start(vec![lane(Box::new(agent))], config).unwrap();
        let mut peer = UnixStream::connect(&path).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = vec![0u8; 4 << 20];
        peer.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&b| b == 9), "{choice}");
        wait_for(&format!("{choice}: the message written"), Duration::from_secs(10), || {
            memory.load(Ordering::Relaxed) != usize::MAX
        });
        // What is left: at most the lane's spare buffers (256 KiB, see the reactor's docs), and
        // nothing of the connection's own.
        let held = memory.load(Ordering::Relaxed);
        assert!(held <= 256 * 1024, "{choice}: {held} bytes of output memory kept after 4 MiB");
        runtime.shutdown();
        runtime.join();
    }
}

/// Soundness (review): `RecvBuf` is `Copy` and `Reactor::recycle` is public and safe, so safe
/// code can hand a buffer back twice (an agent that recycles in `on_completion`, after which
/// the lane does too). The provided-buffer ring then lists it twice (and overwrites an entry
/// the kernel had not taken yet): two receives are handed the same memory, and a chunk that is
/// still held has its bytes overwritten by the kernel.
#[test]
fn a_second_recycle_cannot_alias_two_held_chunks() {
    if Reactor::probe(ReactorChoice::IoUring).is_err() {
        eprintln!("SKIPPING: no io_uring");
        return;
    }
    std::thread::spawn(|| {
        let mut reactor = Reactor::new(ReactorChoice::IoUring).unwrap();
        let (a, mut peer) = UnixStream::pair().unwrap();
        reactor.open(OwnedFd::from(a), Token(1)).unwrap();
        peer.write_all(b"x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = 'first: loop {
            assert!(Instant::now() < deadline, "nothing received");
            reactor.park(Duration::from_millis(1)).unwrap();
            while let Some(c) = reactor.next_completion() {
                if let Completion::Received { buf, .. } = c {
                    break 'first buf;
                }
            }
        };
        reactor.recycle(first);
        reactor.recycle(first); // safe code
        let writer = std::thread::spawn(move || {
            let chunk = [7u8; 64 * 1024];
            while peer.write_all(&chunk).is_ok() {}
        });
        let mut held = Vec::new();
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_millis(500) {
            reactor.park(Duration::from_millis(1)).unwrap();
            while let Some(c) = reactor.next_completion() {
                if let Completion::Received { buf, .. } = c {
                    held.push(buf); // held, never recycled
                    quiet_since = Instant::now();
                }
            }
        }
        let mut ptrs: Vec<usize> = held.iter().map(|b| reactor.data(b).as_ptr() as usize).collect();
        ptrs.sort_unstable();
        ptrs.dedup();
        eprintln!("{} chunks held, {} distinct buffers", held.len(), ptrs.len());
        let aliased = held.len() - ptrs.len();
        reactor.close(Token(1));
        for _ in 0..10 {
            reactor.park(Duration::from_millis(1)).unwrap();
            while reactor.next_completion().is_some() {}
        }
        writer.join().unwrap();
        assert_eq!(aliased, 0, "{aliased} held chunks share a buffer with another held chunk");
    })
    .join()
    .unwrap();
}
