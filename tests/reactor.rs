//! The reactor's defects, each with the test that found it, on every backend this kernel offers
//! (real sockets, real lanes).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corelane::runtime::{
    Agent, Completion, Ctx, IdleStrategy, LaneSpec, Reactor, ReactorChoice, Runtime, Token,
};

/// Every backend that can run here; a missing one is said out loud, not silently skipped.
fn backends() -> Vec<ReactorChoice> {
    let mut out = vec![ReactorChoice::Poll];
    match Reactor::probe(ReactorChoice::IoUring) {
        Ok(_) => out.push(ReactorChoice::IoUring),
        Err(e) => eprintln!("SKIPPING the io_uring backend in this test: {e}"),
    }
    out
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
    for choice in backends() {
        let dir = TempDir::new(&format!("stuck-{choice:?}"));
        let path = dir.0.join("stuck.sock");
        let inodes = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let registered = Arc::new(AtomicUsize::new(usize::MAX));
        let agent = Stuck {
            listener: Some(UnixListener::bind(&path).unwrap()),
            next: 0,
            stuck_since: None,
            inodes: inodes.clone(),
            closed: closed.clone(),
            registered: registered.clone(),
        };
        let runtime = Runtime::start(vec![lane(Box::new(agent))], choice).unwrap();

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
            "{choice:?}: the agent closed the peer ({outcome:?})"
        );
        assert!(
            matches!(
                outcome.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{choice:?}: the closed peer's writes should fail, got {outcome:?}"
        );
        let ino = inodes.lock().unwrap()[0];
        wait_for(
            &format!("{choice:?}: the closed socket's descriptor to go"),
            Duration::from_secs(10),
            || !socket_open(ino),
        );
        wait_for(
            &format!("{choice:?}: only the listener registered"),
            Duration::from_secs(10),
            || registered.load(Ordering::Relaxed) == 1,
        );
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
    for choice in backends() {
        let dir = TempDir::new(&format!("garbage-{choice:?}"));
        let path = dir.0.join("garbage.sock");
        let garbage_closed = Arc::new(AtomicU64::new(0));
        let agent = Picky {
            listener: Some(UnixListener::bind(&path).unwrap()),
            next: 0,
            good: Default::default(),
            garbage_closed: garbage_closed.clone(),
            scratch: Vec::new(),
        };
        let runtime = Runtime::start(vec![lane(Box::new(agent))], choice).unwrap();
        // Each garbage peer's 64 KiB is written before the connection is accepted, so several
        // chunks of it arrive together and the agent closes with the rest still queued.
        for _ in 0..300 {
            let mut garbage = UnixStream::connect(&path).unwrap();
            let _ = garbage.write_all(&[b'x'; 64 * 1024]);
        }
        wait_for(&format!("{choice:?}: 300 garbage peers closed"), Duration::from_secs(20), || {
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
                panic!("{choice:?}: round {round}: no echo after the garbage peers: {e}")
            });
            assert_eq!(echo, message, "{choice:?}");
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
    for choice in backends() {
        std::thread::spawn(move || closing_mid_stream(choice)).join().unwrap();
    }
}

fn closing_mid_stream(choice: ReactorChoice) {
    let mut reactor = Reactor::new(choice).unwrap();
    for i in 0..300u64 {
        let (a, mut peer) = UnixStream::pair().unwrap();
        peer.write_all(&[b'x'; 64 * 1024]).unwrap();
        drop(peer);
        let token = Token(100 + i);
        reactor.open(OwnedFd::from(a), token).unwrap();
        // Like a lane: handle the first chunk (a protocol error: close), hand its buffer back.
        let deadline = Instant::now() + Duration::from_secs(10);
        'first: loop {
            assert!(Instant::now() < deadline, "{choice:?}: connection {i} received nothing");
            reactor.park(Duration::from_millis(1)).unwrap();
            while let Some(c) = reactor.next_completion() {
                if let Completion::Received { token: t, buf } = c {
                    assert_eq!(t, token, "{choice:?}");
                    reactor.recycle(buf);
                    reactor.close(token);
                    break 'first;
                }
            }
        }
        if let Some(c) = reactor.next_completion() {
            panic!("{choice:?}: a completion after close: {c:?}");
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
            "{choice:?}: only {} buffers came back of the 128",
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
    for choice in backends() {
        // A reactor of its own thread: see `Reactor::probe` on why not the test's thread.
        std::thread::spawn(move || reused_slot(choice)).join().unwrap();
    }
}

fn reused_slot(choice: ReactorChoice) {
    let mut reactor = Reactor::new(choice).unwrap();
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
    assert!(held.len() >= 128, "{choice:?}: {} receives", held.len());
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
                    assert_eq!(token, Token(2), "{choice:?}");
                    got.extend_from_slice(reactor.data(&buf));
                    reactor.recycle(buf);
                }
                other => panic!("{choice:?}: unexpected {other:?}"),
            }
        }
    }
    assert_eq!(got, b"0123456789", "{choice:?}");
    if choice == ReactorChoice::IoUring {
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
        other => panic!("{choice:?}: closed socket still open: {other:?}"),
    }
    writer.join().unwrap();
    assert_eq!(reactor.operations_in_flight(), 0, "{choice:?}: nothing left in the kernel");
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
    for choice in backends() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let runtime = Runtime::start(vec![lane(Box::new(Big(seen.clone())))], choice).unwrap();
        runtime.shutdown();
        runtime.join();
        let seen = seen.lock().unwrap();
        assert_eq!(*seen, ["Ok(Err(InvalidInput))", "Ok(Err(InvalidInput))"], "{choice:?}");
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
    for choice in backends() {
        emfile_then_recovery(choice);
    }
}

fn emfile_then_recovery(choice: ReactorChoice) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let dir = TempDir::new(&format!("emfile-{choice:?}"));
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
    let runtime = Runtime::start(vec![lane(Box::new(agent))], choice).unwrap();
    // Fill the descriptor table, then spend the last free descriptor on a client: the lane's
    // accept of it fails with EMFILE.
    let mut fillers = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fillers.push(f);
    }
    fillers.pop();
    let mut client = UnixStream::connect(&path).unwrap();
    wait_for(&format!("{choice:?}: an accept error"), Duration::from_secs(10), || {
        errors.load(Ordering::Relaxed) > 0
    });
    // While the table stays full, the listener retries after a back-off, not in a busy loop.
    let (before, since) = (errors.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_millis(100));
    let during = errors.load(Ordering::Relaxed) - before;
    let bound = since.elapsed().as_millis() as u64 / 2 + 2;
    assert!(during <= bound, "{choice:?}: {during} accept errors in {:?}", since.elapsed());
    // Free descriptors: the pending connection is accepted and greeted.
    fillers.truncate(fillers.len() - 16);
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hi = [0u8; 2];
    client.read_exact(&mut hi).unwrap_or_else(|e| panic!("{choice:?}: never accepted: {e}"));
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
    for choice in backends() {
        let dir = TempDir::new(&format!("big-{choice:?}"));
        let path = dir.0.join("big.sock");
        let memory = Arc::new(AtomicUsize::new(usize::MAX));
        let agent =
            Big { listener: Some(UnixListener::bind(&path).unwrap()), memory: memory.clone() };
        let runtime = Runtime::start(vec![lane(Box::new(agent))], choice).unwrap();
        let mut peer = UnixStream::connect(&path).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = vec![0u8; 4 << 20];
        peer.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&b| b == 9), "{choice:?}");
        wait_for(&format!("{choice:?}: the message written"), Duration::from_secs(10), || {
            memory.load(Ordering::Relaxed) != usize::MAX
        });
        // What is left: at most the lane's spare buffers (256 KiB, see the reactor's docs), and
        // nothing of the connection's own.
        let held = memory.load(Ordering::Relaxed);
        assert!(held <= 256 * 1024, "{choice:?}: {held} bytes of output memory kept after 4 MiB");
        runtime.shutdown();
        runtime.join();
    }
}
