//! The control protocol's shared-memory channels (msg_type 4, `corelane_ipc_v2_<pid>`
//! segments) against the real daemon as a child process: request/response and pushes on both
//! reactors, spinning or on the futex; many clients at once; hostile clients that corrupt
//! their rings (an impossible tail, a record of impossible length, bytes that are no frame, a
//! half frame, answers never read) beside a good one; a client killed mid-request; a daemon
//! restarted under a connection pool, or killed; the refusal and error texts;
//! `max_shm_channels`; requests and responses longer than their rings, and how fast a
//! response many rings long comes when the control lane parks or sleeps between passes.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use corelane::channel::duplex::{ClientDuplex, REQUESTS_OFFSET};
use corelane::control::proto::{ChannelGranted, LaneReport, OpenChannel, Ping, Pong};
use corelane::control::{
    Client, ClientError, ConnectionPool, Transport, MSG_OPEN_CHANNEL, MSG_PING, MSG_WATCH_LANES,
};
use corelane::mapping::{Mapping, SizePolicy};
use corelane::rings::spsc::shm::TAIL_OFFSET;
use corelane::wire::{self, Decoder, DecoderConfig, Event, Flags, Header, ProtocolVersion};
use prost::Message;

const BIN: &str = env!("CARGO_BIN_EXE_corelane");

/// The child of [`a_client_killed_mid_request_frees_its_segment_and_the_daemon_serves_the_next`]
/// finds the daemon's socket here (not a `CORELANE_` name: the daemon's config loader would
/// refuse an unknown one, and the child is no daemon anyway).
const CHILD_ENV: &str = "SHM_TEST_CHILD_SOCKET";
const CHILD_TEST: &str = "shm_child_pings_until_killed";

/// Counter series, as the counters file names them.
const OPEN: &str = "corelane_control_shm_channels_open";
const OPENED: &str = "corelane_control_shm_channels_total{event=\"opened\"}";
const REFUSED: &str = "corelane_control_shm_channels_total{event=\"refused\"}";
const FAULTED: &str = "corelane_control_shm_channels_total{event=\"faulted\"}";
const CONNS_OPEN: &str = "corelane_control_connections_open";

struct Daemon {
    child: Child,
    dir: PathBuf,
    /// Whether dropping this daemon removes `dir` (not when a successor uses it).
    owns_dir: bool,
}

impl Daemon {
    /// Starts `corelane run` in a fresh runtime directory of its own, with `env` overrides
    /// (counters published every 50 ms, no HTTP endpoint), and waits until it answers a ping.
    fn start(name: &str, env: &[(&str, &str)]) -> Daemon {
        Self::start_config(name, env, None)
    }

    /// [`start`](Self::start) with a `--config` file of this text (for lanes, which the
    /// environment cannot set).
    fn start_config(name: &str, env: &[(&str, &str)], config: Option<&str>) -> Daemon {
        let dir = std::env::temp_dir().join(format!("corelane-shm-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_full(dir, env, config)
    }

    /// Starts a daemon in `dir` as it is (a restart keeps the runtime directory).
    fn start_in(dir: PathBuf, env: &[(&str, &str)]) -> Daemon {
        Self::start_full(dir, env, None)
    }

    fn start_full(dir: PathBuf, env: &[(&str, &str)], config: Option<&str>) -> Daemon {
        static STARTS: AtomicU64 = AtomicU64::new(0);
        let log = dir.join(format!("stderr-{}.log", STARTS.fetch_add(1, Ordering::Relaxed)));
        let mut cmd = Command::new(BIN);
        cmd.arg("run");
        cmd.env("CORELANE_FRAMES_ENABLED", "false"); // the frame worker's port is one per host
        if let Some(text) = config {
            let file = dir.join("test.toml");
            std::fs::write(&file, text).unwrap();
            cmd.arg("--config").arg(file);
        }
        if !config.is_some_and(|text| text.contains("[log]")) {
            cmd.env("CORELANE_LOG", "warn");
        }
        cmd.env("XDG_RUNTIME_DIR", &dir)
            .env("CORELANE_METRICS_LISTEN", "")
            .env("CORELANE_METRICS_PUBLISH_INTERVAL_MS", "50")
            .stdout(Stdio::null())
            // A file, not a pipe nobody reads: a chatty daemon never blocks on its stderr.
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let daemon = Daemon { child, dir, owns_dir: true };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) =
                Client::builder().timeout(Duration::from_secs(1)).connect(daemon.socket())
            {
                if c.ping().is_ok() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "daemon did not answer within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The start-up probe's connection is closed: connection counts start clean.
        wait_for("no control connection open", Duration::from_secs(10), || {
            daemon.counter(CONNS_OPEN) == 0
        });
        daemon
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("corelane").join("control.sock")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A shared-memory client (futex wait, 5 s timeout).
    fn shm_client(&self) -> Client {
        Client::builder()
            .transport(Transport::SharedMemory)
            .timeout(Duration::from_secs(5))
            .connect(self.socket())
            .unwrap()
    }

    /// A counter of the daemon's counters file, by series name.
    fn counter(&self, series: &str) -> u64 {
        let path = self.dir.join("corelane").join("counters");
        let samples = corelane::metrics::CountersReader::open(&path).unwrap().snapshot();
        let sample = samples.iter().find(|s| s.name == series);
        sample.unwrap_or_else(|| panic!("no series {series} in {samples:?}")).value
    }

    /// Waits (10 s at most) until counter `series` reads `value`.
    fn wait_counter(&self, series: &str, value: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let last = self.counter(series);
            if last == value {
                return;
            }
            assert!(Instant::now() < deadline, "waited 10 s for {series} = {value}, it is {last}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Where the daemon holds segment `name`: (a descriptor in `/proc/<pid>/fd`, a mapping in
    /// `/proc/<pid>/maps`). A memfd shows as `/memfd:<name> (deleted)` in both.
    fn holds_segment(&self, name: &str) -> (bool, bool) {
        let shown = format!("/memfd:{name} (deleted)");
        let pid = self.pid();
        let in_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|link| link.as_os_str() == shown.as_str());
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let in_maps = maps.lines().any(|line| line.ends_with(&shown));
        (in_fds, in_maps)
    }

    /// Whether the daemon holds segment `name` at all (descriptor or mapping).
    fn has_segment(&self, name: &str) -> bool {
        let (fd, map) = self.holds_segment(name);
        fd || map
    }

    /// SIGTERM and the exit status.
    fn sigterm(&mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.child.wait().unwrap()
    }

    /// The daemon's stderr so far (for failure messages).
    fn stderr(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("stderr-") {
                    out += &std::fs::read_to_string(e.path()).unwrap_or_default();
                }
            }
        }
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Both backends when the kernel has io_uring; says so when it does not.
fn reactors() -> Vec<&'static str> {
    match corelane::runtime::Reactor::probe(corelane::runtime::ReactorChoice::IoUring) {
        Ok(_) => vec!["io_uring", "poll"],
        Err(e) => {
            eprintln!("SKIPPING io_uring runs: {e}");
            vec!["poll"]
        }
    }
}

fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The segment name the daemon gives this test process's channels.
fn own_segment() -> String {
    format!("corelane_ipc_v2_{}", std::process::id())
}

fn request_frame(msg_type: u16, msg_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(ProtocolVersion::V2, msg_type, Flags::EMPTY, msg_id, body, &mut out);
    out
}

fn open_channel_frame(msg_id: u64, segment_version: u32) -> Vec<u8> {
    request_frame(MSG_OPEN_CHANNEL, msg_id, &OpenChannel { segment_version }.encode_to_vec())
}

/// Reads `socket` (with `recv_with_fd`) until one whole frame has come; returns its header,
/// body, and the descriptor that came with it. Panics on a timeout or end of stream.
fn read_frame(socket: &UnixStream) -> (Header, Vec<u8>, Option<OwnedFd>) {
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut buf = [0u8; 4096];
    let mut fd = None;
    loop {
        let (n, got) = corelane::channel::recv_with_fd(socket.as_fd(), &mut buf).unwrap();
        assert!(n > 0, "end of stream before a whole frame");
        fd = fd.or(got);
        let mut frame = None;
        decoder
            .feed(&buf[..n], |e| match e {
                Event::Frame(f) if frame.is_none() => frame = Some((f.header, f.body.to_vec())),
                Event::Frame(_) => panic!("more than one frame"),
                Event::Error { error, .. } => panic!("bad frame from the daemon: {error}"),
            })
            .unwrap();
        if let Some((header, body)) = frame {
            return (header, body, fd);
        }
    }
}

/// Whether the daemon closes `socket` within 5 s (reads until the end of the stream).
fn closed_by_peer(socket: &mut UnixStream) -> bool {
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A hostile client's start: a socket upgraded by hand, the grant, and the segment's
/// descriptor.
fn open_by_hand(socket: &Path) -> (UnixStream, ChannelGranted, OwnedFd) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(&open_channel_frame(1, 2)).unwrap();
    let (header, body, fd) = read_frame(&s);
    assert_eq!(header.msg_type, MSG_OPEN_CHANNEL);
    assert_eq!(header.msg_id, 1);
    assert!(header.flags.contains(Flags::RESPONSE) && !header.flags.contains(Flags::ERROR));
    let granted = ChannelGranted::decode(&body[..]).unwrap();
    assert_eq!(granted.segment_version, 2);
    assert_eq!(granted.name, own_segment());
    (s, granted, fd.expect("the segment's descriptor came with the grant"))
}

/// A thread that pings over `client` until told to stop, and at least 20 times (so that the
/// pings overlap what the test does even when the thread starts late on a loaded machine);
/// returns the pings answered. Any failure panics the thread (and the join).
fn keep_pinging(mut client: Client) -> (Arc<AtomicBool>, std::thread::JoinHandle<(u64, Client)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut n = 0;
        while n < 20 || !flag.load(Ordering::Relaxed) {
            client.ping().expect("the good client is answered while the hostile one acts");
            n += 1;
        }
        (n, client)
    });
    (stop, handle)
}

// ---------------------------------------------------------------------------------------------
// 1. Request/response and pushes.

#[test]
fn requests_answers_and_lane_pushes_cross_the_channel_on_both_reactors_spinning_or_on_the_futex() {
    let name = own_segment();
    for reactor in reactors() {
        let daemon =
            Daemon::start(&format!("rr-{reactor}"), &[("CORELANE_RUNTIME_REACTOR", reactor)]);
        assert_eq!(daemon.counter(OPEN), 0);
        assert!(!daemon.has_segment(&name));
        let over_socket =
            Client::builder().connect(daemon.socket()).unwrap().config_toml().unwrap();
        for busy_poll in [true, false] {
            let what = format!("{reactor}, busy_poll {busy_poll}");
            let mut client = Client::builder()
                .transport(Transport::SharedMemory)
                .busy_poll(busy_poll)
                .timeout(Duration::from_secs(5))
                .connect(daemon.socket())
                .unwrap();
            assert!(client.is_shared_memory(), "{what}");
            assert_eq!(client.channel_name(), Some(name.as_str()), "{what}");
            daemon.wait_counter(OPEN, 1);
            // The daemon maps the segment (it keeps no descriptor for it: the one it created
            // went to the client with the grant).
            let (in_fds, in_maps) = daemon.holds_segment(&name);
            assert!(in_maps, "{what}: /memfd:{name} (deleted) in /proc/<daemon>/maps");
            assert!(!in_fds, "{what}: the daemon keeps only the mapping, not a descriptor");

            for _ in 0..100 {
                assert!(client.ping().unwrap() > Duration::ZERO, "{what}");
            }
            daemon.wait_counter(CONNS_OPEN, 1); // the socket client above has gone
            let status = client.status().unwrap();
            assert_eq!(status.reactor, reactor, "{what}");
            assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
            assert_eq!(status.connections, 1, "{what}: the channel's connection");
            let toml = client.config_toml().unwrap();
            assert_eq!(toml, over_socket, "{what}");
            assert!(toml.contains(&format!("reactor = \"{reactor}\"")), "{what}");

            let (sub, first) = client.watch_lanes().unwrap();
            assert_eq!(sub.msg_type, MSG_WATCH_LANES);
            assert!(!first.lanes.is_empty(), "{what}: {first:?}");
            for _ in 0..2 {
                let push = client.next_push(Duration::from_secs(5)).unwrap();
                assert_eq!((push.msg_id, push.msg_type), (sub.msg_id, MSG_WATCH_LANES), "{what}");
                let report: LaneReport = push.decode().unwrap();
                assert_eq!(report.lanes.len(), first.lanes.len(), "{what}");
                assert!(report.uptime_ms >= first.uptime_ms, "{what}");
            }
            // Calls still work between pushes.
            client.ping().unwrap();
            assert!(!client.is_broken());

            drop(client);
            daemon.wait_counter(OPEN, 0);
            wait_for(
                &format!("{what}: the segment leaves the daemon"),
                Duration::from_secs(10),
                || !daemon.has_segment(&name),
            );
        }
        assert_eq!(daemon.counter(OPENED), 2);
        assert_eq!(daemon.counter(FAULTED), 0);
        assert_eq!(daemon.counter(REFUSED), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Many clients.

#[test]
fn a_hundred_concurrent_shared_memory_clients_are_all_served() {
    const CLIENTS: usize = 100;
    let daemon = Daemon::start("hundred", &[]);
    let socket = daemon.socket();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (socket, barrier) = (socket.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut client = Client::builder()
                    .transport(Transport::SharedMemory)
                    .timeout(Duration::from_secs(10))
                    .connect(&socket)
                    .unwrap_or_else(|e| panic!("client {i}: {e}"));
                assert!(client.is_shared_memory());
                // All connected at once before anyone pings.
                barrier.wait();
                for _ in 0..50 {
                    client.ping().unwrap_or_else(|e| panic!("client {i}: {e}"));
                }
                let status = client.status().unwrap_or_else(|e| panic!("client {i}: {e}"));
                // All connected, none gone yet.
                assert_eq!(status.connections as usize, CLIENTS, "client {i}");
                barrier.wait();
                client
            })
        })
        .collect();
    let clients: Vec<Client> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(daemon.counter(OPEN), CLIENTS as u64);
    assert_eq!(daemon.counter(OPENED), CLIENTS as u64);
    assert_eq!(daemon.counter(REFUSED), 0);
    drop(clients);
    daemon.wait_counter(OPEN, 0);
}

// ---------------------------------------------------------------------------------------------
// 3. Hostile clients beside a good one.

#[test]
fn a_client_that_writes_an_impossible_tail_is_cut_off_while_a_good_client_keeps_being_served() {
    let daemon = Daemon::start("tail", &[]);
    let mut good = daemon.shm_client();
    good.ping().unwrap();
    daemon.wait_counter(OPEN, 1);
    let (stop, pinger) = keep_pinging(good);

    let (mut hostile, granted, fd) = open_by_hand(&daemon.socket());
    daemon.wait_counter(OPEN, 2);
    let len = rustix::fs::fstat(&fd).unwrap().st_size as usize;
    assert_eq!(len as u64, granted.segment_bytes);
    let mapping = Mapping::from_fd(fd.as_fd(), SizePolicy::Sealed(len)).unwrap();
    // A tail 2^40 records ahead of a ring of 64: no honest producer can be there.
    // SAFETY: the test's own mapping of the segment; only atomics touch these words here.
    let tail = unsafe { mapping.word(REQUESTS_OFFSET + TAIL_OFFSET) }.unwrap();
    tail.store(1 << 40, Ordering::Release);
    hostile.write_all(&[1]).unwrap(); // the doorbell

    assert!(closed_by_peer(&mut hostile), "the daemon closes the corrupt channel's socket");
    daemon.wait_counter(FAULTED, 1);
    daemon.wait_counter(OPEN, 1);

    stop.store(true, Ordering::Relaxed);
    let (pings, mut good) = pinger.join().expect("the good client never failed");
    assert!(pings > 0);
    good.ping().unwrap();
    daemon.wait_counter(CONNS_OPEN, 1);
    assert_eq!(good.status().unwrap().connections, 1);
    assert!(good.is_shared_memory() && !good.is_broken());
    assert_eq!(daemon.counter(FAULTED), 1);
    assert!(daemon.stderr().contains("corrupted its shared-memory channel"), "{}", daemon.stderr());
}

#[test]
fn a_client_that_pushes_garbage_records_gets_bad_magic_and_is_closed_while_a_good_client_is_served()
{
    let daemon = Daemon::start("garbage", &[]);
    let mut good = daemon.shm_client();
    good.ping().unwrap();
    let (stop, pinger) = keep_pinging(good);

    let (mut hostile, granted, fd) = open_by_hand(&daemon.socket());
    let mut duplex = ClientDuplex::attach(fd, &granted.name).unwrap();
    let garbage = b"not a frame at all, just bytes in well-formed records";
    assert_eq!(duplex.push(garbage), Ok(garbage.len()));
    if duplex.take_doorbell() {
        hostile.write_all(&[1]).unwrap();
    }

    // The session answers like it would on a socket: the wire error, through the response
    // ring, then the close.
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut texts = Vec::new();
    while texts.is_empty() {
        assert!(Instant::now() < deadline, "no error reply in the response ring");
        out.clear();
        if duplex.pop(64, &mut out).unwrap() == 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        decoder
            .feed(&out, |e| {
                if let Event::Frame(f) = e {
                    assert!(f.header.flags.contains(Flags::ERROR), "{:?}", f.header);
                    texts.push(wire::decode_error_body(f.body).unwrap().1.to_owned());
                }
            })
            .unwrap();
    }
    let magic = u32::from_le_bytes(garbage[..4].try_into().unwrap());
    assert_eq!(texts, [format!("bad magic {magic:#x}")]);
    assert_eq!(texts[0], "bad magic 0x20746f6e");
    assert!(closed_by_peer(&mut hostile), "the daemon closes the connection after bad magic");
    daemon.wait_counter(OPEN, 1);
    assert_eq!(daemon.counter("corelane_control_errors_total{kind=\"bad_magic\"}"), 1);
    assert_eq!(daemon.counter(FAULTED), 0, "bad bytes are the session's error, not a ring fault");

    stop.store(true, Ordering::Relaxed);
    let (pings, mut good) = pinger.join().expect("the good client never failed");
    assert!(pings > 0);
    good.ping().unwrap();
    assert!(!good.is_broken());
}

#[test]
fn a_client_that_publishes_a_record_of_impossible_length_is_cut_off_while_a_good_client_is_served()
{
    let daemon = Daemon::start("reclen", &[]);
    let mut good = daemon.shm_client();
    good.ping().unwrap();
    let (stop, pinger) = keep_pinging(good);

    let (mut hostile, _granted, fd) = open_by_hand(&daemon.socket());
    let len = rustix::fs::fstat(&fd).unwrap().st_size as usize;
    let mapping = Mapping::from_fd(fd.as_fd(), SizePolicy::Sealed(len)).unwrap();
    // Slot 0 of the request ring: a ByteRecord whose `len` (its first u32) is 121, one more
    // than a record carries; then publish it.
    let slot = REQUESTS_OFFSET + corelane::rings::spsc::shm::SLOTS_OFFSET;
    // SAFETY: the test's own mapping of the segment; only atomics touch these words here.
    unsafe { mapping.word(slot) }.unwrap().store(121, Ordering::Relaxed);
    // SAFETY: as above.
    unsafe { mapping.word(REQUESTS_OFFSET + TAIL_OFFSET) }.unwrap().store(1, Ordering::Release);
    hostile.write_all(&[1]).unwrap();

    assert!(closed_by_peer(&mut hostile), "the daemon closes the channel with a bad record");
    daemon.wait_counter(FAULTED, 1);
    daemon.wait_counter(OPEN, 1);
    let log = daemon.stderr();
    assert!(
        log.contains("bad channel record: expected a length of 1..=120 bytes, got 121"),
        "{log}"
    );

    stop.store(true, Ordering::Relaxed);
    let (pings, mut good) = pinger.join().expect("the good client never failed");
    assert!(pings > 0);
    good.ping().unwrap();
}

#[test]
fn a_frame_left_incomplete_in_the_ring_is_cut_at_the_header_timeout() {
    let daemon = Daemon::start("hdr", &[("CORELANE_CONTROL_HEADER_TIMEOUT_MS", "300")]);
    let mut good = daemon.shm_client();
    let (mut hostile, granted, fd) = open_by_hand(&daemon.socket());
    let mut duplex = ClientDuplex::attach(fd, &granted.name).unwrap();
    let ping = request_frame(MSG_PING, 2, &Ping { client_time_ns: 1 }.encode_to_vec());
    let started = Instant::now();
    assert_eq!(duplex.push(&ping[..10]), Ok(10));
    if duplex.take_doorbell() {
        hostile.write_all(&[1]).unwrap();
    }
    assert!(closed_by_peer(&mut hostile), "a half frame is cut, as on a socket");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "cut before the header timeout: {took:?}");
    daemon.wait_counter(OPEN, 1);
    assert_eq!(
        daemon.counter("corelane_control_connections_closed_total{reason=\"idle_timeout\"}"),
        1
    );
    assert_eq!(daemon.counter(FAULTED), 0);
    good.ping().unwrap();
}

#[test]
fn a_channel_whose_answers_are_never_read_is_closed_at_the_write_timeout() {
    let daemon = Daemon::start(
        "unread",
        &[
            ("CORELANE_CONTROL_WRITE_TIMEOUT_MS", "300"),
            ("CORELANE_CONTROL_SHM_RESPONSE_RECORDS", "16"),
            ("CORELANE_METRICS_PUBLISH_INTERVAL_MS", "5"),
        ],
    );
    let mut good = daemon.shm_client();
    let (good_sub, _) = good.watch_lanes().unwrap();
    // The good client takes its pushes as they come (a client that does not is the one cut).
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut pushes = 0u64;
        while !flag.load(Ordering::Relaxed) {
            let push = good.next_push(Duration::from_secs(5)).expect("the reader gets its pushes");
            assert_eq!((push.msg_id, push.msg_type), (good_sub.msg_id, MSG_WATCH_LANES));
            pushes += 1;
        }
        (pushes, good)
    });
    let (mut hostile, granted, fd) = open_by_hand(&daemon.socket());
    let mut duplex = ClientDuplex::attach(fd, &granted.name).unwrap();
    // Subscribes to the lane reports, then never takes a record from the response ring.
    let watch = request_frame(MSG_WATCH_LANES, 2, &[]);
    assert_eq!(duplex.push(&watch), Ok(watch.len()));
    if duplex.take_doorbell() {
        hostile.write_all(&[1]).unwrap();
    }
    hostile.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut byte = [0u8; 1];
    let end = hostile.read(&mut byte);
    assert!(matches!(end, Ok(0)), "closed, not {end:?}");
    daemon.wait_counter(OPEN, 1);
    assert_eq!(
        daemon.counter("corelane_control_connections_closed_total{reason=\"write_timeout\"}"),
        1
    );
    // The good client, which reads, keeps its channel and its pushes.
    stop.store(true, Ordering::Relaxed);
    let (pushes, mut good) = reader.join().expect("the good client was never cut");
    assert!(pushes > 0);
    good.ping().unwrap();
    assert!(!good.is_broken());
    assert_eq!(daemon.counter(OPEN), 1);
}

// ---------------------------------------------------------------------------------------------
// 4. A client killed mid-request.

/// Not a test of its own: the child process of the test below (does nothing without
/// [`CHILD_ENV`]). Connects over shared memory and pings until it is killed.
#[test]
fn shm_child_pings_until_killed() {
    let Ok(socket) = std::env::var(CHILD_ENV) else { return };
    let mut client = Client::builder()
        .transport(Transport::SharedMemory)
        .timeout(Duration::from_secs(5))
        .connect(socket)
        .unwrap();
    assert!(client.is_shared_memory());
    loop {
        client.ping().unwrap();
    }
}

#[test]
fn a_client_killed_mid_request_frees_its_segment_and_the_daemon_serves_the_next() {
    let daemon = Daemon::start("kill", &[]);
    let pings_before = daemon.counter("corelane_control_requests_total{type=\"ping\"}");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, daemon.socket())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let name = format!("corelane_ipc_v2_{}", child.id());
    wait_for("the child's channel", Duration::from_secs(10), || {
        daemon.counter(OPEN) == 1 && daemon.has_segment(&name)
    });
    // It is pinging (a request is in flight nearly all the time).
    wait_for("the child's pings", Duration::from_secs(10), || {
        daemon.counter("corelane_control_requests_total{type=\"ping\"}") > pings_before + 10
    });
    child.kill().unwrap(); // SIGKILL: no Drop runs, the producer role stays attached
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed: {status:?}");

    wait_for("the dead client's segment to leave the daemon", Duration::from_secs(10), || {
        !daemon.has_segment(&name)
    });
    daemon.wait_counter(OPEN, 0);
    assert_eq!(daemon.counter(FAULTED), 0, "a dead client is no corruption");

    let mut next = daemon.shm_client();
    assert!(next.is_shared_memory());
    next.ping().unwrap();
    daemon.wait_counter(CONNS_OPEN, 1);
    assert_eq!(next.status().unwrap().connections, 1);
    daemon.wait_counter(OPEN, 1);
}

// ---------------------------------------------------------------------------------------------
// 5. Daemon restart under a pool.

#[test]
fn a_pooled_shared_memory_client_fails_fast_after_a_daemon_restart_and_the_pool_reconnects() {
    let mut first = Daemon::start("restart", &[]);
    let socket = first.socket();
    let template = Client::builder().transport(Transport::Auto).timeout(Duration::from_secs(5));
    let pool = ConnectionPool::builder().client(template).build(&socket).unwrap();
    let mut old = pool.get().unwrap();
    assert!(old.is_shared_memory());
    old.ping().unwrap();

    let status = first.sigterm();
    assert_eq!(status.code(), Some(0), "{}", first.stderr());
    first.owns_dir = false;
    let second = Daemon::start_in(first.dir.clone(), &[]);

    let started = Instant::now();
    let result = old.ping();
    let took = started.elapsed();
    assert!(
        matches!(result, Err(ClientError::Closed | ClientError::Io(_))),
        "the old channel is dead: {result:?}"
    );
    assert!(took < Duration::from_secs(5), "failed after {took:?}, not within the 5 s timeout");
    assert!(old.is_broken());
    drop(old); // broken: not returned to the pool

    // No retry needed: the pool's only connection was the broken one, so this connects anew.
    let mut fresh = pool.get().unwrap();
    assert!(fresh.is_shared_memory());
    fresh.ping().unwrap();
    assert_eq!(pool.stats().created, 2);
    second.wait_counter(OPEN, 1);
    drop(first);
}

#[test]
fn a_shared_memory_call_fails_fast_when_the_daemon_is_killed() {
    for busy_poll in [false, true] {
        let daemon = Daemon::start(&format!("sigkill-{busy_poll}"), &[]);
        let mut client = Client::builder()
            .transport(Transport::SharedMemory)
            .busy_poll(busy_poll)
            .timeout(Duration::from_secs(5))
            .connect(daemon.socket())
            .unwrap();
        client.ping().unwrap();
        let mut daemon = daemon;
        // SIGKILL: the daemon's end of the rings never detaches; only the socket tells.
        daemon.child.kill().unwrap();
        daemon.child.wait().unwrap();
        let started = Instant::now();
        let result = client.ping();
        let took = started.elapsed();
        assert!(matches!(result, Err(ClientError::Closed)), "busy_poll {busy_poll}: {result:?}");
        assert!(took < Duration::from_secs(5), "busy_poll {busy_poll}: took {took:?}");
        assert!(client.is_broken());
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Version and error texts.

#[test]
fn a_v1_client_asking_for_shared_memory_gets_the_version_mismatch_text() {
    let daemon = Daemon::start("v1", &[("CORELANE_CONTROL_ENABLE_LEGACY_SUPPORT", "true")]);
    let err = Client::builder()
        .protocol_version(ProtocolVersion::V1)
        .transport(Transport::SharedMemory)
        .timeout(Duration::from_secs(5))
        .connect(daemon.socket())
        .unwrap_err();
    assert!(err.to_string().contains("protocol version mismatch: expected 2, got 1"), "{err}");
    // Auto does not even ask in v1, and the socket works.
    let mut auto = Client::builder()
        .protocol_version(ProtocolVersion::V1)
        .transport(Transport::Auto)
        .connect(daemon.socket())
        .unwrap();
    assert!(!auto.is_shared_memory());
    auto.ping().unwrap();
    assert_eq!(daemon.counter(REFUSED), 1);
    assert_eq!(daemon.counter(OPEN), 0);
}

#[test]
fn an_open_channel_of_segment_version_3_is_refused_with_the_version_text_and_the_socket_kept() {
    let daemon = Daemon::start("seg3", &[]);
    let mut s = UnixStream::connect(daemon.socket()).unwrap();
    s.write_all(&open_channel_frame(9, 3)).unwrap();
    let (header, body, fd) = read_frame(&s);
    assert_eq!((header.msg_type, header.msg_id), (MSG_OPEN_CHANNEL, 9));
    assert!(
        header.flags.contains(Flags::RESPONSE) && header.flags.contains(Flags::ERROR),
        "{header:?}"
    );
    let (code, text) = wire::decode_error_body(&body).unwrap();
    assert_eq!(text, "protocol version mismatch: expected 2, got 3");
    assert_eq!(code, 2, "the wire's version mismatch code");
    assert!(fd.is_none(), "no segment with a refusal");
    assert_eq!(daemon.counter(REFUSED), 1);

    // The connection is kept, on the socket.
    let ping = Ping { client_time_ns: 77 };
    s.write_all(&request_frame(MSG_PING, 10, &ping.encode_to_vec())).unwrap();
    let (header, body, _) = read_frame(&s);
    assert_eq!((header.msg_type, header.msg_id), (MSG_PING, 10));
    assert!(!header.flags.contains(Flags::ERROR));
    assert_eq!(Pong::decode(&body[..]).unwrap().client_time_ns, 77);
    assert_eq!(daemon.counter(OPEN), 0);
}

#[test]
fn a_grant_without_a_descriptor_fails_with_the_open_text() {
    let dir = std::env::temp_dir().join(format!("corelane-shm-{}-nofd", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let name = format!("corelane_ipc_v2_{}", std::process::id());
    let granted_name = name.clone();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let (header, body, _) = read_frame(&s);
        assert_eq!(header.msg_type, MSG_OPEN_CHANNEL);
        assert_eq!(OpenChannel::decode(&body[..]).unwrap().segment_version, 2);
        let granted = ChannelGranted {
            segment_version: 2,
            name: granted_name,
            request_records: 64,
            response_records: 256,
            segment_bytes: 65536,
        };
        let mut reply = Vec::new();
        wire::encode(
            ProtocolVersion::V2,
            MSG_OPEN_CHANNEL,
            Flags::RESPONSE,
            header.msg_id,
            &granted.encode_to_vec(),
            &mut reply,
        );
        s.write_all(&reply).unwrap(); // a plain write: no SCM_RIGHTS
                                      // Hold the connection until the client hangs up.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let err = Client::builder()
        .transport(Transport::SharedMemory)
        .timeout(Duration::from_secs(5))
        .connect(&path)
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("failed to open shared memory: corelane_ipc_v2_"), "{text}");
    assert_eq!(
        text,
        format!("failed to open shared memory: {name}: no descriptor came with the grant")
    );
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn with_channels_off_auto_stays_on_the_socket_and_shared_memory_is_refused() {
    let daemon = Daemon::start("off", &[("CORELANE_CONTROL_SHM_CHANNELS", "false")]);
    let mut auto = Client::builder()
        .transport(Transport::Auto)
        .timeout(Duration::from_secs(5))
        .connect(daemon.socket())
        .unwrap();
    assert!(!auto.is_shared_memory());
    assert_eq!(auto.channel_name(), None);
    auto.ping().unwrap();
    auto.status().unwrap();
    let err = Client::builder()
        .transport(Transport::SharedMemory)
        .timeout(Duration::from_secs(5))
        .connect(daemon.socket())
        .unwrap_err();
    assert!(err.to_string().contains("shared-memory channels are off"), "{err}");
    assert_eq!(daemon.counter(REFUSED), 2);
    assert_eq!(daemon.counter(OPENED), 0);
    auto.ping().unwrap();
}

#[test]
fn a_second_open_channel_through_the_ring_is_refused_and_the_channel_kept() {
    let daemon = Daemon::start("twice", &[]);
    let (mut hostile, granted, fd) = open_by_hand(&daemon.socket());
    let mut duplex = ClientDuplex::attach(fd, &granted.name).unwrap();
    let mut decoder = Decoder::new(DecoderConfig::default());
    // Sends `frame` through the request ring and returns the next answer from the response
    // ring: (header, body).
    let mut exchange = |frame: &[u8]| -> (Header, Vec<u8>) {
        assert_eq!(duplex.push(frame), Ok(frame.len()));
        if duplex.take_doorbell() {
            hostile.write_all(&[1]).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        loop {
            assert!(Instant::now() < deadline, "no answer in the response ring");
            out.clear();
            if duplex.pop(64, &mut out).unwrap() == 0 {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let mut frame = None;
            decoder
                .feed(&out, |e| {
                    if let Event::Frame(f) = e {
                        frame = Some((f.header, f.body.to_vec()));
                    }
                })
                .unwrap();
            if let Some(frame) = frame {
                return frame;
            }
        }
    };
    let (header, body) = exchange(&open_channel_frame(2, 2));
    assert_eq!((header.msg_type, header.msg_id), (MSG_OPEN_CHANNEL, 2));
    assert!(header.flags.contains(Flags::ERROR), "{header:?}");
    let (_, text) = wire::decode_error_body(&body).unwrap();
    assert_eq!(text, "this connection has a shared-memory channel already");
    let ping = Ping { client_time_ns: 5 };
    let (header, body) = exchange(&request_frame(MSG_PING, 3, &ping.encode_to_vec()));
    assert_eq!((header.msg_type, header.msg_id), (MSG_PING, 3));
    assert_eq!(Pong::decode(&body[..]).unwrap().client_time_ns, 5);
    assert_eq!(daemon.counter(OPEN), 1);
    assert_eq!(daemon.counter(REFUSED), 1);
}

// ---------------------------------------------------------------------------------------------
// 7. max_shm_channels.

#[test]
fn past_max_shm_channels_shared_memory_is_refused_and_auto_stays_on_the_socket() {
    let daemon = Daemon::start("max", &[("CORELANE_CONTROL_MAX_SHM_CHANNELS", "2")]);
    let mut a = daemon.shm_client();
    let mut b = daemon.shm_client();
    a.ping().unwrap();
    b.ping().unwrap();
    daemon.wait_counter(OPEN, 2);
    let err = Client::builder()
        .transport(Transport::SharedMemory)
        .timeout(Duration::from_secs(5))
        .connect(daemon.socket())
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("too many shared-memory channels"), "{text}");
    assert!(text.contains("control.max_shm_channels = 2"), "{text}");
    let mut auto = Client::builder()
        .transport(Transport::Auto)
        .timeout(Duration::from_secs(5))
        .connect(daemon.socket())
        .unwrap();
    assert!(!auto.is_shared_memory());
    auto.ping().unwrap();
    assert_eq!(daemon.counter(REFUSED), 2);
    assert_eq!(daemon.counter(OPEN), 2);
    // A channel freed is a channel for the next.
    drop(a);
    daemon.wait_counter(OPEN, 1);
    let mut c = daemon.shm_client();
    assert!(c.is_shared_memory());
    c.ping().unwrap();
    b.ping().unwrap();
    auto.ping().unwrap();
}

// ---------------------------------------------------------------------------------------------
// 8. A response longer than the response ring.

#[test]
fn a_config_longer_than_the_response_ring_comes_whole_over_shared_memory() {
    // The effective config is about 2 KB, just over a ring of 16 records (1920 bytes); a
    // long log filter (a legal one: 300 directives) makes it several rings long.
    let filter = format!("warn{}", ",corelane::control=warn".repeat(300));
    let daemon = Daemon::start(
        "long",
        &[("CORELANE_CONTROL_SHM_RESPONSE_RECORDS", "16"), ("CORELANE_LOG", &filter)],
    );
    let over_socket = Client::builder().connect(daemon.socket()).unwrap().config_toml().unwrap();
    assert!(over_socket.contains("shm_response_records = 16"), "{over_socket}");
    assert!(over_socket.contains(&filter), "{over_socket}");
    let ring_bytes = 16 * corelane::channel::duplex::RECORD_DATA;
    assert!(over_socket.len() > 4 * ring_bytes, "{} bytes only", over_socket.len());
    for busy_poll in [false, true] {
        let mut client = Client::builder()
            .transport(Transport::SharedMemory)
            .busy_poll(busy_poll)
            .timeout(Duration::from_secs(5))
            .connect(daemon.socket())
            .unwrap();
        assert!(client.is_shared_memory());
        for _ in 0..5 {
            assert_eq!(client.config_toml().unwrap(), over_socket, "busy_poll {busy_poll}");
            client.ping().unwrap();
        }
    }
}

#[test]
fn a_request_longer_than_the_request_ring_is_answered() {
    let daemon = Daemon::start("longreq", &[]);
    let mut client = daemon.shm_client();
    // A status request padded with 100 KB in a field StatusRequest does not have (protobuf
    // skips unknown fields): 13 fills of the 64-record request ring.
    let padded = corelane::control::proto::ConfigReply { toml: "x".repeat(100_000) };
    for _ in 0..3 {
        let raw = client.request(corelane::control::MSG_STATUS, &padded).unwrap();
        let status = corelane::control::proto::Status::decode(&raw[..]).unwrap();
        assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
        client.ping().unwrap();
    }
    assert!(client.is_shared_memory() && !client.is_broken());
}

/// A config whose control lane idles as `idle` says (its only agent the control agent, so no
/// other agent's timer ends its parks early), with a log filter that makes the effective
/// config about 460 KB long (20000 directives, all legal; within the 1 MiB body limit).
fn long_config(idle: &str) -> (String, String) {
    let filter = format!("warn{}", ",corelane::control=warn".repeat(20_000));
    let text = format!(
        r#"
[log]
filter = "{filter}"

[[lanes]]
name = "control"
{idle}
agents = ["control"]

[[lanes]]
name = "rest"
agents = ["metrics", "pool", "alloc"]
"#
    );
    (text, filter)
}

/// The 460 KB config over a 16-record response ring (1920 bytes: 240 fills) must come within
/// the client's 5 s timeout: over the socket the reactor writes it in milliseconds. Over
/// shared memory the daemon pushes a ring-full, and must push the next once the client, which
/// reads at once, has taken it.
fn long_response_over_shm(name: &str, idle: &str) {
    let (config, filter) = long_config(idle);
    let daemon = Daemon::start_config(
        name,
        &[("CORELANE_CONTROL_SHM_RESPONSE_RECORDS", "16")],
        Some(&config),
    );
    let mut socket_client =
        Client::builder().timeout(Duration::from_secs(5)).connect(daemon.socket()).unwrap();
    let started = Instant::now();
    let over_socket = socket_client.config_toml().unwrap();
    let socket_took = started.elapsed();
    assert!(over_socket.contains(&filter));
    assert!(over_socket.len() > 240 * 16 * corelane::channel::duplex::RECORD_DATA);
    let mut client = Client::builder()
        .transport(Transport::SharedMemory)
        .timeout(Duration::from_secs(5))
        .connect(daemon.socket())
        .unwrap();
    client.ping().unwrap();
    let started = Instant::now();
    let got = client.config_toml();
    let took = started.elapsed();
    eprintln!(
        "{name}: {} bytes over the socket in {socket_took:?}, over shared memory in {took:?}",
        over_socket.len()
    );
    match got {
        Ok(toml) => assert_eq!(toml, over_socket),
        Err(e) => panic!(
            "{name}: config over shared memory failed after {took:?}: {e}; over the socket it \
             took {socket_took:?}. The control lane refills a full response ring only when its \
             idle park ends: the refill is not counted as work (drain_channels) and the \
             client's reads do not wake the lane"
        ),
    }
}

#[test]
fn a_response_many_rings_long_is_not_paced_by_the_lanes_backoff_park() {
    // Parks grow to 1 s (a documented value of idle_max_park_us).
    long_response_over_shm("paced-backoff", "idle = \"backoff\"\nidle_max_park_us = 1000000");
}

#[test]
fn a_response_many_rings_long_is_not_paced_by_the_lanes_idle_sleep() {
    // 100 ms per idle pass (idle_sleep_us allows up to 1 s).
    long_response_over_shm("paced-sleep", "idle = \"sleep\"\nidle_sleep_us = 100000");
}

// ---------------------------------------------------------------------------------------------
// Found by the review.

/// A pool report with huge counts is added saturating (it panicked the control lane of a
/// debug daemon with an overflow), and the daemon goes on answering.
#[test]
fn a_pool_report_with_huge_counts_does_not_stop_the_control_lane() {
    let daemon = Daemon::start("poolmax", &[]);
    let mut client = daemon.shm_client();
    let report = corelane::control::proto::PoolReport {
        reused: u64::MAX,
        connected: 1,
        ..Default::default()
    };
    let _ack: corelane::control::proto::PoolReportAck =
        client.call(corelane::control::MSG_POOL_REPORT, &report).unwrap();
    client.ping().unwrap();
    daemon.shm_client().ping().unwrap();
    assert_eq!(
        daemon.counter("corelane_control_pool_acquires_total{outcome=\"reused\"}"),
        u64::MAX
    );
}

/// Requests a shared-memory client writes just before it closes are still answered (they were
/// dropped with the socket's hang-up: a pool's last report never counted).
#[test]
fn a_pool_report_written_just_before_the_close_is_counted() {
    let daemon = Daemon::start("poolclose", &[]);
    let pool = corelane::control::ConnectionPool::builder()
        .client(Client::builder().transport(Transport::SharedMemory))
        .build(daemon.socket())
        .unwrap();
    // `build` connects the first client: three checkouts reuse it.
    for _ in 0..3 {
        let mut c = pool.get().unwrap();
        assert!(c.is_shared_memory());
        c.ping().unwrap();
    }
    drop(pool);
    wait_for("the pool's reports counted", Duration::from_secs(10), || {
        daemon.counter("corelane_control_pool_acquires_total{outcome=\"connected\"}") == 1
            && daemon.counter("corelane_control_pool_acquires_total{outcome=\"reused\"}") == 3
    });
}

/// One channel request per connection waits at a time: a connection that pipelines many (with
/// its answers unread) filled the daemon's queue of channel requests for everyone.
#[test]
fn a_second_pipelined_channel_request_is_refused_at_once() {
    let daemon = Daemon::start("pipeopen", &[]);
    let mut s = UnixStream::connect(daemon.socket()).unwrap();
    let mut both = open_channel_frame(1, 2);
    both.extend_from_slice(&open_channel_frame(2, 2));
    s.write_all(&both).unwrap();
    // The second is refused first (at once); the first is granted once the refusal is out
    // (both may come in one read: frames are collected until there are two).
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut buf = [0u8; 4096];
    let (mut frames, mut fd) = (Vec::new(), None);
    while frames.len() < 2 {
        let (n, got) = corelane::channel::recv_with_fd(s.as_fd(), &mut buf).unwrap();
        assert!(n > 0, "end of stream before both answers");
        fd = fd.or(got);
        decoder
            .feed(&buf[..n], |e| match e {
                Event::Frame(f) => frames.push((f.header, f.body.to_vec())),
                Event::Error { error, .. } => panic!("bad frame from the daemon: {error}"),
            })
            .unwrap();
    }
    let (header, body) = &frames[0];
    assert_eq!((header.msg_type, header.msg_id), (MSG_OPEN_CHANNEL, 2), "{header:?}");
    assert!(header.flags.contains(Flags::ERROR), "{header:?}");
    let (_, text) = wire::decode_error_body(body).unwrap();
    assert!(text.contains("waiting already"), "{text}");
    let (header, _) = &frames[1];
    assert_eq!((header.msg_type, header.msg_id), (MSG_OPEN_CHANNEL, 1), "{header:?}");
    assert!(!header.flags.contains(Flags::ERROR), "{header:?}");
    assert!(fd.is_some(), "the first is granted with its segment");
    // Others are served.
    daemon.shm_client().ping().unwrap();
}
