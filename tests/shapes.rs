//! Service shapes the later issues build on, each a small agent run on every reactor backend
//! this kernel offers. They are meant to be read as examples of how to use the runtime:
//!
//! - the tensor-pool driver: leases and announces on lane timers (one timer per lease, re-armed
//!   by each keepalive; one for the announce period), announces to every subscriber, and
//!   revocation that closes a connection only once its last message is on the wire;
//! - the frame worker: length-prefixed frames of up to 512 KiB reassembled from many receive
//!   chunks, checked by a detector on another lane over two SPSC links, with per-connection
//!   credit as backpressure and the results routed back to the right connection in order.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown as NetShutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corelane::rings::spsc;
use corelane::runtime::{
    Agent, Completion, Ctx, IdleStrategy, LaneSpec, ReactorChoice, ReactorConfig, ReactorKind,
    Runtime, UringOptions,
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

fn expected_kind(config: ReactorConfig) -> ReactorKind {
    if config.choice == ReactorChoice::IoUring {
        ReactorKind::IoUring
    } else {
        ReactorKind::Poll
    }
}

/// A directory under the system temp dir, named with the pid, removed on drop (also when an
/// assertion fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("corelane-shapes-{}-{name}", std::process::id()));
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

/// A lane that backs off to parks of at most `max_park`: the bound on how late a deadline
/// checked in `do_work` is noticed when nothing else happens (a lane timer is on time anyway:
/// the park ends at the next deadline).
fn lane(name: &str, agent: Box<dyn Agent>) -> LaneSpec {
    LaneSpec {
        name: name.into(),
        core: None,
        idle: IdleStrategy::Backoff { spins: 100, yields: 10, max_park: Duration::from_millis(5) },
        agents: vec![agent],
        waker: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Shape 1: the tensor-pool driver.
// ---------------------------------------------------------------------------------------------

/// How long an attach or keepalive holds a lease.
const LEASE: Duration = Duration::from_millis(300);
/// How often every lease holder gets an announce.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(50);

/// Client -> driver: take a lease.
const ATTACH: u8 = b'A';
/// Client -> driver: extend the lease.
const KEEPALIVE: u8 = b'K';
/// Driver -> client: `N` then the announce counter, u64 little-endian (9 bytes).
const ANNOUNCE: u8 = b'N';
/// Driver -> client: the lease expired; the driver closes the connection after this byte.
const REVOKED: u8 = b'R';

/// What the driver knows about an attached connection.
enum Lease {
    /// Held until the connection's lease timer fires; each keepalive re-arms it.
    Held,
    /// `R` is queued; the connection is closed once its queue is empty.
    Revoking,
}

/// The timer of the announce period. A lease's timer has its connection's id: timers have ids
/// of their own, and connections start at 1.
const ANNOUNCE_TIMER: u64 = 0;

/// The driver: every deadline is a lane timer, so the lane parks until the next one and
/// `do_work` has nothing to scan.
struct PoolDriver {
    path: PathBuf,
    listener: Option<UnixListener>,
    next_conn: u64,
    /// By connection-local token; a BTreeMap so announces go out in a stable order.
    leases: BTreeMap<u64, Lease>,
    announces: u64,
}

impl PoolDriver {
    fn new(path: PathBuf) -> Self {
        let listener = UnixListener::bind(&path).unwrap();
        Self { path, listener: Some(listener), next_conn: 0, leases: BTreeMap::new(), announces: 0 }
    }

    /// Announces to every lease holder, and arms the next announce.
    fn announce(&mut self, ctx: &mut Ctx<'_>) {
        self.announces += 1;
        let mut message = [ANNOUNCE; 9];
        message[1..].copy_from_slice(&self.announces.to_le_bytes());
        for (&local, lease) in &self.leases {
            if let Lease::Held = lease {
                let _ = ctx.send(local, &message);
            }
        }
        // Periods are measured from when the announce went out, so a late lane does not burst
        // to catch up.
        ctx.timer(ctx.now + ANNOUNCE_EVERY, ANNOUNCE_TIMER).unwrap();
    }
}

impl Agent for PoolDriver {
    fn name(&self) -> &str {
        "pool-driver"
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
        ctx.timer(ctx.now + ANNOUNCE_EVERY, ANNOUNCE_TIMER)?;
        ctx.listen(0, self.listener.take().expect("started once"))
    }

    fn on_completion(&mut self, ctx: &mut Ctx<'_>, completion: Completion) {
        match completion {
            Completion::Accepted { fd, .. } => {
                self.next_conn += 1;
                // A connection is not attached until it says `A`. If it cannot be registered,
                // the fd was consumed and is closed: the connection is refused.
                let _ = ctx.open(self.next_conn, fd);
            }
            Completion::Received { token, buf } => {
                let now = ctx.now;
                let local = Ctx::local(token);
                let mut extend = false;
                for &byte in ctx.reactor().data(&buf) {
                    match (byte, self.leases.get(&local)) {
                        (ATTACH, None) => {
                            self.leases.insert(local, Lease::Held);
                            extend = true;
                        }
                        (ATTACH | KEEPALIVE, Some(Lease::Held)) => extend = true,
                        // Too late (revoking), not attached, or not a request: ignored.
                        _ => {}
                    }
                }
                if extend {
                    // Re-arming replaces the lease's deadline.
                    ctx.timer(now + LEASE, local).unwrap();
                }
            }
            Completion::Timer { token } if Ctx::local(token) == ANNOUNCE_TIMER => {
                self.announce(ctx);
            }
            Completion::Timer { token } => {
                let local = Ctx::local(token);
                if let Some(lease @ Lease::Held) = self.leases.get_mut(&local) {
                    *lease = Lease::Revoking;
                    let _ = ctx.send(local, &[REVOKED]);
                }
            }
            Completion::Sent { token, .. } => {
                let local = Ctx::local(token);
                // Close a revoked connection only once `R` has been written: closing earlier
                // would drop the queued bytes.
                if matches!(self.leases.get(&local), Some(Lease::Revoking))
                    && ctx.pending(local) == 0
                {
                    self.leases.remove(&local);
                    ctx.close(local);
                }
            }
            Completion::Closed { token } | Completion::Failed { token, .. } => {
                let local = Ctx::local(token);
                self.leases.remove(&local);
                ctx.cancel_timer(local);
                ctx.close(local);
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

/// What a pool client reads.
#[derive(Debug, PartialEq, Eq)]
enum FromDriver {
    Announce(u64),
    Revoked,
    Eof,
}

fn read_from_driver(stream: &mut UnixStream) -> FromDriver {
    let mut tag = [0u8; 1];
    if stream.read(&mut tag).unwrap() == 0 {
        return FromDriver::Eof;
    }
    match tag[0] {
        ANNOUNCE => {
            let mut counter = [0u8; 8];
            stream.read_exact(&mut counter).unwrap();
            FromDriver::Announce(u64::from_le_bytes(counter))
        }
        REVOKED => FromDriver::Revoked,
        other => panic!("unexpected message tag {other:#x}"),
    }
}

fn expect_announce(stream: &mut UnixStream, who: &str) -> u64 {
    match read_from_driver(stream) {
        FromDriver::Announce(counter) => counter,
        other => panic!("{who}: expected an announce, got {other:?}"),
    }
}

#[test]
fn timers_expire_leases_and_announces_reach_subscribers() {
    for (choice, config) in backends() {
        let dir = TempDir::new(&format!("pool-{choice}"));
        let path = dir.0.join("pool.sock");
        let runtime =
            Runtime::start(vec![lane("pool", Box::new(PoolDriver::new(path.clone())))], config)
                .unwrap();
        assert_eq!(runtime.reactor(), expected_kind(config));

        // Client 1 attaches and keeps its lease alive: a keepalive every announce period.
        let attached_1 = Instant::now();
        let mut client_1 = UnixStream::connect(&path).unwrap();
        client_1.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client_1.write_all(&[ATTACH]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let keepalive = {
            let mut stream = client_1.try_clone().unwrap();
            let stop = stop.clone();
            // The client's cadence is part of the protocol, not a synchronisation.
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(ANNOUNCE_EVERY);
                    stream.write_all(&[KEEPALIVE]).unwrap();
                }
            })
        };
        let first: Vec<u64> = (0..5).map(|_| expect_announce(&mut client_1, "client 1")).collect();
        assert!(
            first.windows(2).all(|w| w[1] == w[0] + 1),
            "{choice}: a lease holder gets every announce, in order: {first:?}"
        );
        // The first announce went out after the attach; the fifth at least 4 periods later.
        assert!(attached_1.elapsed() >= 4 * ANNOUNCE_EVERY, "{choice}");

        // Client 2 attaches and goes quiet. Its clock starts before connecting: the driver
        // sees the `A` in a pass that started after the accept, so its lease ends no earlier
        // than `attached_2 + LEASE`.
        let attached_2 = Instant::now();
        let mut client_2 = UnixStream::connect(&path).unwrap();
        client_2.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client_2.write_all(&[ATTACH]).unwrap();
        let mut announces_2 = Vec::new();
        loop {
            match read_from_driver(&mut client_2) {
                FromDriver::Announce(counter) => announces_2.push(counter),
                FromDriver::Revoked => break,
                FromDriver::Eof => panic!("{choice}: client 2 closed before `R`"),
            }
        }
        let revoked_after = attached_2.elapsed();
        assert!(revoked_after >= LEASE, "{choice}: revoked after {revoked_after:?}");
        assert!(!announces_2.is_empty(), "{choice}: client 2 got announces while attached");
        assert!(announces_2.windows(2).all(|w| w[1] == w[0] + 1), "{choice}: {announces_2:?}");
        assert_eq!(read_from_driver(&mut client_2), FromDriver::Eof, "{choice}");

        // Client 1 is still served, after client 2's revocation and past several lease
        // lengths of its own, thanks to its keepalives.
        let mut last = *first.last().unwrap();
        let mut more = 0;
        while more < 3 || attached_1.elapsed() < 3 * LEASE {
            let counter = expect_announce(&mut client_1, "client 1 (keeping alive)");
            assert_eq!(counter, last + 1, "{choice}: announces to client 1 skip none");
            last = counter;
            more += 1;
        }
        assert!(announces_2.iter().all(|&c| c <= last), "{choice}");

        // Once its keepalives stop, client 1 is revoked too.
        stop.store(true, Ordering::Relaxed);
        keepalive.join().unwrap();
        loop {
            match read_from_driver(&mut client_1) {
                FromDriver::Announce(counter) => assert!(counter > last, "{choice}"),
                FromDriver::Revoked => break,
                FromDriver::Eof => panic!("{choice}: client 1 closed before `R`"),
            }
        }
        assert_eq!(read_from_driver(&mut client_1), FromDriver::Eof, "{choice}");

        runtime.shutdown();
        runtime.join();
        assert!(!path.exists(), "{choice}: on_close unlinked the socket");
    }
}

// ---------------------------------------------------------------------------------------------
// Shape 2: the frame worker.
// ---------------------------------------------------------------------------------------------

/// Largest frame payload; a longer length prefix is a protocol error that closes the
/// connection.
const MAX_FRAME: usize = 512 * 1024;
/// Frames of one connection at the detector at once. Complete frames beyond this wait, as
/// bytes, in the connection's buffer until a result comes back.
const CREDIT: u32 = 2;

/// io lane -> detector lane: one complete frame, described (the payload stays on the io lane).
#[derive(Clone, Copy, Debug)]
struct Job {
    conn: u64,
    frame: u64,
    checksum: u64,
    len: u32,
}

/// detector lane -> io lane.
#[derive(Clone, Copy, Debug)]
struct Verdict {
    conn: u64,
    frame: u64,
    detected: u64,
}

/// What the test reads back from the io agent.
#[derive(Debug, Default)]
struct FrameStats {
    receives: AtomicU64,
    held_back: AtomicU64,
    max_in_flight: AtomicU64,
    bad_frames: AtomicU64,
}

struct Conn {
    /// Received bytes not yet handed on: a partial frame, or complete frames waiting for
    /// credit.
    bytes: Vec<u8>,
    next_frame: u64,
    in_flight: u32,
}

/// The io side: reassembles frames, hands them to the detector while the connection has
/// credit, and sends each verdict back to the connection its frame came from.
struct FrameIo {
    listener: Option<TcpListener>,
    next_conn: u64,
    conns: HashMap<u64, Conn>,
    jobs: spsc::Producer<Job>,
    verdicts: spsc::Consumer<Verdict>,
    stats: Arc<FrameStats>,
}

/// A length prefix above [`MAX_FRAME`]: the connection's bytes are not frames.
#[derive(Debug)]
struct TooLong;

/// Hands `conn`'s complete frames to the detector while it has credit and the link has room.
fn submit(
    local: u64,
    conn: &mut Conn,
    jobs: &mut spsc::Producer<Job>,
    stats: &FrameStats,
) -> Result<(), TooLong> {
    while let Some(header) = conn.bytes.get(..4) {
        let len = u32::from_le_bytes(header.try_into().unwrap()) as usize;
        if len > MAX_FRAME {
            return Err(TooLong);
        }
        let Some(payload) = conn.bytes.get(4..4 + len) else { break };
        if conn.in_flight == CREDIT {
            stats.held_back.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let checksum = payload.iter().map(|&b| u64::from(b)).sum();
        let job = Job { conn: local, frame: conn.next_frame, checksum, len: len as u32 };
        if jobs.push(job).is_err() {
            // The detector lane is behind: same as no credit, try again on the next verdict.
            stats.held_back.fetch_add(1, Ordering::Relaxed);
            break;
        }
        conn.bytes.drain(..4 + len);
        conn.next_frame += 1;
        conn.in_flight += 1;
        stats.max_in_flight.fetch_max(u64::from(conn.in_flight), Ordering::Relaxed);
    }
    Ok(())
}

impl Agent for FrameIo {
    fn name(&self) -> &str {
        "frame-io"
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
        ctx.listen(0, self.listener.take().expect("started once"))
    }

    fn on_completion(&mut self, ctx: &mut Ctx<'_>, completion: Completion) {
        match completion {
            Completion::Accepted { fd, .. } => {
                self.next_conn += 1;
                let token = ctx.token(self.next_conn).unwrap();
                if ctx.reactor().open(fd, token).is_ok() {
                    let conn = Conn { bytes: Vec::new(), next_frame: 0, in_flight: 0 };
                    self.conns.insert(self.next_conn, conn);
                }
            }
            Completion::Received { token, buf } => {
                self.stats.receives.fetch_add(1, Ordering::Relaxed);
                let local = Ctx::local(token);
                let Some(conn) = self.conns.get_mut(&local) else { return };
                conn.bytes.extend_from_slice(ctx.reactor().data(&buf));
                if submit(local, conn, &mut self.jobs, &self.stats).is_err() {
                    self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    self.conns.remove(&local);
                    ctx.reactor().close(token);
                }
            }
            Completion::Closed { token } | Completion::Failed { token, .. } => {
                // Verdicts still on their way for this connection are dropped on arrival.
                self.conns.remove(&Ctx::local(token));
                ctx.reactor().close(token);
            }
            _ => {}
        }
    }

    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
        let mut work = 0;
        while let Ok(verdict) = self.verdicts.pop() {
            work += 1;
            let Some(conn) = self.conns.get_mut(&verdict.conn) else { continue };
            let mut reply = [0u8; 16];
            reply[..8].copy_from_slice(&verdict.frame.to_le_bytes());
            reply[8..].copy_from_slice(&verdict.detected.to_le_bytes());
            // Every connection in `conns` is registered with the reactor.
            let token = ctx.token(verdict.conn).unwrap();
            ctx.reactor().send(token, &reply).unwrap();
            conn.in_flight -= 1;
            // The credit just returned may let a waiting frame go (frames already checked
            // for length, so this cannot fail).
            submit(verdict.conn, conn, &mut self.jobs, &self.stats).unwrap();
        }
        work
    }
}

/// The detector lane: one verdict per job, in order.
struct Detector {
    jobs: spsc::Consumer<Job>,
    verdicts: spsc::Producer<Verdict>,
    /// A verdict the full link handed back, sent first next pass.
    held: Option<Verdict>,
}

impl Agent for Detector {
    fn name(&self) -> &str {
        "detector"
    }

    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        let mut work = 0;
        loop {
            let verdict = match self.held.take() {
                Some(verdict) => verdict,
                None => match self.jobs.pop() {
                    Ok(job) => {
                        debug_assert!(job.len as usize <= MAX_FRAME);
                        Verdict { conn: job.conn, frame: job.frame, detected: job.checksum % 1000 }
                    }
                    Err(_) => return work,
                },
            };
            if let Err(full) = self.verdicts.push(verdict) {
                self.held = Some(full.into_inner());
                return work;
            }
            work += 1;
        }
    }
}

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Client `client`'s 10 frame payloads. Client 0 starts with three tiny frames (they arrive in
/// one receive, so the third waits for credit) and has one of the largest size.
fn payloads(client: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (client + 1));
    (0..10)
        .map(|i| {
            let len = match (client, i) {
                (0, 0..=2) => i + 1,
                (0, 3) => MAX_FRAME,
                _ => 1 + (rng.next() % MAX_FRAME as u64) as usize,
            };
            (0..len).map(|_| rng.next() as u8).collect()
        })
        .collect()
}

/// How a client writes its frames.
#[derive(Clone, Copy, Debug)]
enum Writes {
    /// Every frame in one `write_all`.
    OneGo,
    /// One `write_all` per frame.
    PerFrame,
    /// Pieces of 1 to 4093 bytes, splitting length prefixes too.
    SmallPieces,
}

fn frame_client(addr: std::net::SocketAddr, client: u64, writes: Writes) -> usize {
    let payloads = payloads(client);
    let frames: Vec<Vec<u8>> =
        payloads.iter().map(|p| [&(p.len() as u32).to_le_bytes()[..], p].concat()).collect();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    match writes {
        Writes::OneGo => stream.write_all(&frames.concat()).unwrap(),
        Writes::PerFrame => frames.iter().for_each(|f| stream.write_all(f).unwrap()),
        Writes::SmallPieces => {
            let all = frames.concat();
            let mut at = 0;
            for size in [1, 3, 7, 1000, 4093].into_iter().cycle() {
                if at == all.len() {
                    break;
                }
                let end = (at + size).min(all.len());
                stream.write_all(&all[at..end]).unwrap();
                at = end;
            }
        }
    }
    for (i, payload) in payloads.iter().enumerate() {
        let mut reply = [0u8; 16];
        stream.read_exact(&mut reply).unwrap();
        let frame = u64::from_le_bytes(reply[..8].try_into().unwrap());
        let detected = u64::from_le_bytes(reply[8..].try_into().unwrap());
        let checksum: u64 = payload.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(frame, i as u64, "client {client} ({writes:?}): results in frame order");
        assert_eq!(detected, checksum % 1000, "client {client} ({writes:?}) frame {i}");
    }
    // Exactly 10 results: after our half-close the worker closes, with nothing more to say.
    stream.shutdown(NetShutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "client {client}: {} bytes after the 10 results", rest.len());
    frames.iter().map(Vec::len).sum()
}

#[test]
fn large_tcp_frames_round_trip_through_a_detector_lane() {
    for (choice, config) in backends() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (job_tx, job_rx) = spsc::channel(64);
        let (verdict_tx, verdict_rx) = spsc::channel(64);
        let stats = Arc::new(FrameStats::default());
        let io = FrameIo {
            listener: Some(listener),
            next_conn: 0,
            conns: HashMap::new(),
            jobs: job_tx,
            verdicts: verdict_rx,
            stats: stats.clone(),
        };
        let detector = Detector { jobs: job_rx, verdicts: verdict_tx, held: None };
        let runtime = Runtime::start(
            vec![lane("io", Box::new(io)), lane("detector", Box::new(detector))],
            config,
        )
        .unwrap();
        assert_eq!(runtime.reactor(), expected_kind(config));

        let clients: Vec<_> = [Writes::OneGo, Writes::PerFrame, Writes::SmallPieces]
            .into_iter()
            .zip(0u64..)
            .map(|(writes, client)| std::thread::spawn(move || frame_client(addr, client, writes)))
            .collect();
        let bytes: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();

        let receives = stats.receives.load(Ordering::Relaxed);
        assert!(
            receives > 30,
            "{choice}: {bytes} bytes of 30 frames came in {receives} receives, expected many"
        );
        assert_eq!(
            stats.max_in_flight.load(Ordering::Relaxed),
            u64::from(CREDIT),
            "{choice}: credit bounds the frames at the detector"
        );
        assert!(
            stats.held_back.load(Ordering::Relaxed) > 0,
            "{choice}: client 0's third tiny frame waited for credit"
        );
        assert_eq!(stats.bad_frames.load(Ordering::Relaxed), 0, "{choice}");
        eprintln!(
            "{choice}: {bytes} bytes in {receives} receives, held back {} times",
            stats.held_back.load(Ordering::Relaxed)
        );
        runtime.shutdown();
        runtime.join();
    }
}
