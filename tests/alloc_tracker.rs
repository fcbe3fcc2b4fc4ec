//! `AllocTracker` against a real daemon (`corelane run` as a child with its own runtime dir):
//! exact ledgers over rings and over the socket, more threads than rings, drops counted and
//! reported after a late connect, reconnect after a restart, and behaviour 29 (one warning,
//! then reports get through; nothing attempted when disabled) in child processes, where the
//! environment and stderr are the test's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corelane::alloc::proto::UsageReply;
use corelane::alloc::query::QueryClient;
use corelane::alloc::tracker::{AllocTracker, Sequence, Transport};
use corelane::alloc::BufferType;

const BIN: &str = env!("CARGO_BIN_EXE_corelane");

/// The daemon's gap timeout in these tests. A gap must not time out while the events that
/// fill it wait in a backlog: the workloads below report in a tight loop, faster than a debug
/// daemon applies them, so a backlog of a second or more builds up in the rings and the socket
/// (with the default 100 ms, gaps are skipped and their events come late). Real allocators
/// report at the pace of their allocations.
const GAP_MS: u32 = 30_000;
/// Socket buffers large enough that a tight loop against a debug daemon drops nothing.
const BIG_BUFFER: usize = 1 << 20;

struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    alloc: String,
}

impl Daemon {
    /// A runtime dir and config (extra `[alloc]` lines in `alloc`), no daemon yet.
    fn prepare(name: &str, alloc: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("corelane-at-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Daemon { child: None, dir, alloc: alloc.to_owned() }
    }

    fn start(name: &str, alloc: &str) -> Daemon {
        let mut d = Self::prepare(name, alloc);
        d.run();
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("corelane").join("alloc.sock")
    }

    fn run(&mut self) {
        assert!(self.child.is_none());
        let config = self.dir.join("test.toml");
        let text = format!(
            "[metrics]\nlisten = \"\"\n\n[alloc]\ngap_timeout_ms = {GAP_MS}\nlisteners = [\"native:alloc.sock\", \
             \"tt-metal:{}/tt.sock\"]\n{}\n",
            self.dir.display(),
            self.alloc
        );
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(self.dir.join("daemon.stderr")).unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .env("CORELANE_FRAMES_ENABLED", "false")
            .arg("--config")
            .arg(&config)
            .env("XDG_RUNTIME_DIR", &self.dir)
            .env("CORELANE_LOG", "warn")
            .env_remove("CORELANE_METRICS_LISTEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let socket = self.socket();
        wait_for("the alloc server to answer", Duration::from_secs(10), || {
            QueryClient::connect(&socket, Duration::from_secs(1))
                .and_then(|mut q| q.usage(None))
                .is_ok()
        });
    }

    fn stop(&mut self) {
        let mut child = self.child.take().expect("a daemon runs");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        child.wait().unwrap();
    }

    fn usage(&self) -> UsageReply {
        QueryClient::connect(&self.socket(), Duration::from_secs(5)).unwrap().usage(None).unwrap()
    }

    /// Waits until the daemon applied `events` events; returns the usage then.
    fn settle(&self, events: u64) -> UsageReply {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let u = self.usage();
            let c = u.counters.unwrap_or_default();
            if c.events >= events || Instant::now() > deadline {
                return u;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A toy device allocator: one lock, addresses reused at once (the seed-001 setting).
struct Heap {
    next: u64,
    free: Vec<u64>,
}

const SIZE: u64 = 4096;

/// `threads` x `pairs` alloc/free pairs on device 0 (DRAM), each thread keeping its last
/// `keep` buffers allocated. The sequence number is taken under the heap's lock.
fn workload(tracker: &Arc<AllocTracker>, threads: usize, pairs: usize, keep: usize) {
    let heap = Arc::new(Mutex::new(Heap { next: 0x10_0000, free: Vec::new() }));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (tracker, heap) = (Arc::clone(tracker), Arc::clone(&heap));
            std::thread::spawn(move || {
                let mut live = Vec::new();
                for i in 0..pairs + keep {
                    let (addr, seq) = {
                        let mut h = heap.lock().unwrap();
                        let addr = h.free.pop().unwrap_or_else(|| {
                            h.next += SIZE;
                            h.next
                        });
                        (addr, tracker.seq())
                    };
                    tracker.alloc(seq, 0, BufferType::Dram, addr, SIZE);
                    live.push(addr);
                    if i < pairs {
                        let addr = live.remove(0);
                        let seq = {
                            let mut h = heap.lock().unwrap();
                            let seq = tracker.seq();
                            h.free.push(addr);
                            seq
                        };
                        tracker.free(seq, 0, addr);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Runs the workload and checks the ledger is exact: no unknown frees, no duplicates, the
/// kept buffers exactly.
fn exact(daemon: &Daemon, tracker: &Arc<AllocTracker>, threads: usize, pairs: usize) {
    let keep = 3;
    workload(tracker, threads, pairs, keep);
    assert!(tracker.flush(Duration::from_secs(10)), "flush: {:?}", tracker.stats());
    let events = (threads * (2 * pairs + keep)) as u64;
    let u = daemon.settle(events);
    let c = u.counters.unwrap();
    assert_eq!(c.events, events, "{c:?}");
    assert_eq!(c.unknown_frees, 0, "{c:?}");
    assert_eq!(c.duplicate_allocs, 0, "{c:?} {:?}", tracker.stats());
    assert_eq!(c.invalid, 0, "{c:?}");
    assert_eq!(c.client_dropped, 0, "{c:?}");
    let d0 = &u.devices[0];
    assert_eq!(d0.num_buffers, (threads * keep) as u64, "{d0:?}");
    assert_eq!(d0.dram, (threads * keep) as u64 * SIZE, "{d0:?}");
    let s = tracker.stats();
    assert_eq!(s.reported, events, "{s:?}");
    assert_eq!(s.dropped, 0, "{s:?}");
}

fn connected(tracker: &AllocTracker) {
    wait_for("the tracker to connect", Duration::from_secs(10), || tracker.stats().connected);
}

#[test]
fn ledger_exact_over_shared_memory_rings() {
    let daemon = Daemon::start("shm", "");
    let tracker = Arc::new(
        AllocTracker::builder()
            .socket(daemon.socket())
            .transport(Transport::Shm)
            .buffer_records(BIG_BUFFER)
            .build(),
    );
    connected(&tracker);
    exact(&daemon, &tracker, 4, 5000);
    let s = tracker.stats();
    assert!(s.via_ring > 0, "{s:?}");
    assert!(s.rings >= 1, "{s:?}");
}

#[test]
fn ledger_exact_over_the_socket() {
    let daemon = Daemon::start("socket", "");
    let tracker = Arc::new(
        AllocTracker::builder()
            .socket(daemon.socket())
            .transport(Transport::Socket)
            .buffer_records(BIG_BUFFER)
            .build(),
    );
    exact(&daemon, &tracker, 4, 5000);
    let s = tracker.stats();
    assert_eq!(s.via_ring, 0, "{s:?}");
    assert_eq!(s.rings, 0, "{s:?}");
}

#[test]
fn more_threads_than_rings_is_still_exact() {
    let daemon = Daemon::start("few-rings", "max_rings_per_client = 2");
    let tracker = Arc::new(
        AllocTracker::builder()
            .socket(daemon.socket())
            .transport(Transport::Auto)
            .buffer_records(BIG_BUFFER)
            .build(),
    );
    connected(&tracker);
    // The pool holds the connection's two rings before the threads start (on a loaded
    // machine the threads could otherwise all finish on the socket before they arrive).
    wait_for("the two rings", Duration::from_secs(10), || tracker.stats().rings == 2);
    exact(&daemon, &tracker, 6, 3000);
    let s = tracker.stats();
    assert_eq!(s.rings, 2, "{s:?}");
    assert!(s.via_ring > 0 && s.via_socket > 0, "both paths: {s:?}");
    assert_eq!(daemon.usage().counters.unwrap().rings, 2);
}

#[test]
fn drops_while_absent_are_counted_and_reported_after_connect() {
    let mut daemon = Daemon::prepare("drops", "");
    let tracker = AllocTracker::builder()
        .socket(daemon.socket())
        .transport(Transport::Socket)
        .buffer_records(64)
        .build();
    for i in 0..1000u64 {
        let seq = tracker.seq();
        tracker.alloc(seq, 0, BufferType::L1, 0x1000 * (i + 1), 64);
    }
    let s = tracker.stats();
    assert_eq!((s.reported, s.via_socket, s.dropped), (1000, 64, 936), "{s:?}");
    assert!(!s.connected);
    daemon.run();
    assert!(tracker.flush(Duration::from_secs(10)), "{:?}", tracker.stats());
    let u = daemon.settle(64);
    let c = u.counters.unwrap();
    assert_eq!(c.client_dropped, 936, "{c:?}");
    assert_eq!(c.events, 64, "{c:?}");
    assert_eq!(u.devices[0].num_buffers, 64);
}

#[test]
fn reconnects_after_the_daemon_restarts() {
    let mut daemon = Daemon::start("restart", "");
    let tracker = Arc::new(
        AllocTracker::builder().socket(daemon.socket()).buffer_records(BIG_BUFFER).build(),
    );
    connected(&tracker);
    exact(&daemon, &tracker, 2, 500);
    daemon.stop();
    wait_for("the tracker to see the daemon go", Duration::from_secs(5), || {
        !tracker.stats().connected
    });
    daemon.run();
    connected(&tracker);
    // The new daemon's ledger: only what is reported from now on.
    let before = tracker.stats().reported;
    let keep = 3;
    workload(&tracker, 2, 500, keep);
    assert!(tracker.flush(Duration::from_secs(10)));
    let events = tracker.stats().reported - before;
    let u = daemon.settle(events);
    let c = u.counters.unwrap();
    assert_eq!(c.events, events, "{c:?}");
    assert_eq!(c.unknown_frees, 0, "{c:?}");
    assert_eq!(u.devices[0].num_buffers, 2 * keep as u64);
}

/// `Sequence::AtSend` numbers reports when they are queued: still a valid stream (this
/// single-threaded run has no race to reproduce); the flag only changes who decides order.
#[test]
fn at_send_numbers_in_queue_order() {
    let daemon = Daemon::start("at-send", "");
    let tracker = AllocTracker::builder()
        .socket(daemon.socket())
        .sequence(Sequence::AtSend)
        .transport(Transport::Socket)
        .build();
    for i in 0..100u64 {
        tracker.alloc(u64::MAX, 1, BufferType::L1, 0x40 * (i + 1), 32);
    }
    assert!(tracker.flush(Duration::from_secs(10)));
    let u = daemon.settle(100);
    assert_eq!(u.counters.unwrap().gaps_skipped, 0);
    assert_eq!(u.devices[1].num_buffers, 100);
}

// ---------------------------------------------------------------------------------------------
// Behaviour 29, in child processes (their own environment and stderr).

/// Set (to the child's test name) in a child process: a `child_*` test runs only there, and
/// returns at once in a normal run of this file.
const CHILD_ENV: &str = "ALLOC_TRACKER_TEST_CHILD"; // not CORELANE_*: a daemon refuses unknown ones

/// Whether this process is the child that runs `name`.
fn is_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == name)
}

fn run_child(test: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test)
        .env_remove("TT_ALLOC_TRACKING_ENABLED")
        .env_remove("CORELANE_ALLOC_SOCKET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("1 passed"), "child {test} did not run: {stdout}\n{stderr}");
    (out.status.success(), stderr)
}

const WARNING: &str = "[corelane] warning: allocation tracking is enabled but the alloc server \
                       is not available at";

#[test]
fn no_daemon_one_warning_then_reports_get_through() {
    let (ok, stderr) =
        run_child("child_no_daemon_then_daemon", &[("TT_ALLOC_TRACKING_ENABLED", "1")]);
    assert!(ok, "{stderr}");
    assert_eq!(stderr.matches(WARNING).count(), 1, "exactly one warning: {stderr}");
    assert!(stderr.contains("reports are dropped until it is"), "{stderr}");
}

#[test]
fn child_no_daemon_then_daemon() {
    if !is_child("child_no_daemon_then_daemon") {
        return; // run in a child process by its parent test
    }
    let mut daemon = Daemon::prepare("child-b29", "");
    let socket = daemon.socket();
    let tracker = AllocTracker::builder().socket(&socket).transport(Transport::Socket).build();
    // The workload runs normally with no daemon, across several retries.
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_millis(2500) {
        let seq = tracker.seq();
        tracker.alloc(seq, 0, BufferType::Dram, 0x1000 * (i + 1), 64);
        let seq = tracker.seq();
        tracker.free(seq, 0, 0x1000 * (i + 1));
        i += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!tracker.stats().connected);
    assert!(!tracker.flush(Duration::from_millis(10)), "nothing can be flushed");
    // The server appears: later reports get through.
    daemon.run();
    connected(&tracker);
    let seq = tracker.seq();
    tracker.alloc(seq, 1, BufferType::Trace, 0xabc000, 12345);
    assert!(tracker.flush(Duration::from_secs(10)));
    wait_for("the late report", Duration::from_secs(10), || {
        daemon.usage().devices.get(1).is_some_and(|d| d.trace == 12345)
    });
    let u = daemon.usage();
    let c = u.counters.unwrap();
    assert_eq!(c.unknown_frees, 0, "{c:?}");
}

#[test]
fn disabled_global_is_none_and_connects_nowhere() {
    for value in [None, Some("0"), Some("true"), Some("1 ")] {
        let path =
            std::env::temp_dir().join(format!("corelane-at-{}-off.sock", std::process::id()));
        let path_s = path.display().to_string();
        let mut env = vec![("CORELANE_ALLOC_SOCKET", path_s.as_str())];
        if let Some(v) = value {
            env.push(("TT_ALLOC_TRACKING_ENABLED", v));
        }
        let (ok, stderr) = run_child("child_global_disabled", &env);
        assert!(ok, "{value:?}: {stderr}");
        assert!(!stderr.contains("[corelane] warning"), "{stderr}");
    }
}

#[test]
fn child_global_disabled() {
    if !is_child("child_global_disabled") {
        return; // run in a child process by its parent test
    }
    let path = PathBuf::from(std::env::var("CORELANE_ALLOC_SOCKET").unwrap());
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    assert!(AllocTracker::global().is_none());
    std::thread::sleep(Duration::from_millis(200));
    assert!(listener.accept().is_err(), "no connection attempted");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn enabled_global_reports_to_the_socket_of_the_environment() {
    let daemon = Daemon::start("global", "");
    let socket = daemon.socket().display().to_string();
    let (ok, stderr) = run_child(
        "child_global_enabled",
        &[("TT_ALLOC_TRACKING_ENABLED", "1"), ("CORELANE_ALLOC_SOCKET", &socket)],
    );
    assert!(ok, "{stderr}");
    // The child exited: its entries were released with it.
    wait_for("the child's release", Duration::from_secs(10), || {
        daemon.usage().counters.unwrap().processes_released >= 1
    });
    assert_eq!(daemon.usage().devices[0].num_buffers, 0);
}

#[test]
fn child_global_enabled() {
    if !is_child("child_global_enabled") {
        return; // run in a child process by its parent test
    }
    let tracker = AllocTracker::global().expect("enabled");
    assert!(std::ptr::eq(tracker, AllocTracker::global().unwrap()), "one per process");
    let socket = PathBuf::from(std::env::var("CORELANE_ALLOC_SOCKET").unwrap());
    assert_eq!(tracker.socket(), socket.as_path());
    for i in 0..10u64 {
        let seq = tracker.seq();
        tracker.alloc(seq, 0, BufferType::Dram, 0x1000 * (i + 1), 100);
    }
    assert!(tracker.flush(Duration::from_secs(10)));
    let mut q = QueryClient::connect(Path::new(&socket), Duration::from_secs(5)).unwrap();
    wait_for("ten buffers", Duration::from_secs(10), || {
        q.usage(Some(0)).unwrap().devices[0].num_buffers == 10
    });
    let pid = std::process::id();
    let mine = q.processes().unwrap().processes.into_iter().find(|p| p.pid == pid).unwrap();
    assert_eq!((mine.buffers, mine.dram), (10, 1000));
}

/// Review (h-review1): the doorbell end to end, with a lane that really sleeps. The default
/// lane parks at most 1 ms, so a lost doorbell only adds a millisecond and no other test sees
/// it; here the lane sleeps up to 1 s per park, so a ring push that does not ring the
/// doorbell (client: `take_doorbell` ignored; daemon: no arming in the last look) waits for
/// the end of the park. Each report, made while the lane sleeps, must show up in a usage push
/// within 250 ms (five tries: a lost doorbell passes all five with probability < 0.1%).
#[test]
fn a_ring_push_wakes_a_lane_that_sleeps() {
    let lanes = "\n[[lanes]]\nname = \"main\"\nidle = \"sleep\"\nidle_sleep_us = 1000000\n\
                 agents = [\"control\", \"metrics\", \"pool\", \"alloc\"]\n";
    let daemon = Daemon::start("doorbell", lanes);
    let tracker = AllocTracker::builder().socket(daemon.socket()).transport(Transport::Shm).build();
    connected(&tracker);
    wait_for("a ring", Duration::from_secs(10), || tracker.stats().rings >= 1);
    let mut sub = QueryClient::connect(&daemon.socket(), Duration::from_secs(3)).unwrap();
    let first = sub.subscribe(1).unwrap();
    let mut version = first.version;
    for n in 1..=5u64 {
        std::thread::sleep(Duration::from_millis(300)); // the lane parks, its rings armed
        let sent = Instant::now();
        let seq = tracker.seq();
        tracker.alloc(seq, 0, BufferType::Dram, 0x1000 * n, SIZE);
        loop {
            let push = sub.next_push().expect("a usage push");
            let usage = push.usage.expect("a push carries the usage");
            assert!(usage.version > version);
            version = usage.version;
            if usage.devices[0].num_buffers == n {
                break;
            }
        }
        let took = sent.elapsed();
        assert!(
            took < Duration::from_millis(250),
            "report {n} applied after {took:?}: the lane was not woken by the doorbell ({:?})",
            tracker.stats()
        );
        assert_eq!(tracker.stats().via_ring, n, "it went through the ring");
    }
}
