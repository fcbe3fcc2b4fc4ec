//! Tests across the pieces: a real counters file written by one thread and read through a
//! separate mapping, a reader fed corrupt files, and the HTTP endpoint on a real socket.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// A fresh path in the temp directory, removed (with its file) on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("corelane-metrics-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_file(&path);
        Self(path)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

const LABELS_MAIN: &[(&str, &str)] = &[("lane", "main")];
const LABELS_ODD: &[(&str, &str)] = &[("path", "C:\\tmp \"x\"\nnext")];

fn specs() -> [CounterSpec<'static>; 3] {
    [
        CounterSpec::counter("corelane_lane_passes_total", LABELS_MAIN, "Passes of the lane loop."),
        CounterSpec::gauge("corelane_lane_queue_depth", LABELS_MAIN, "Items waiting."),
        CounterSpec::counter("corelane_odd_total", LABELS_ODD, ""),
    ]
}

#[test]
fn counters_written_by_a_lane_are_read_through_another_mapping() {
    let tmp = TempPath::new("roundtrip");
    let file = CountersFile::create(&tmp.0, &specs()).unwrap();
    assert_eq!(fs::metadata(&tmp.0).unwrap().len(), (HEADER_BYTES + 3 * RECORD_BYTES) as u64);
    assert_eq!(fs::metadata(&tmp.0).unwrap().permissions().mode() & 0o777, 0o600);

    let passes = file.counter(CounterId::from_index(0));
    let depth = file.counter(CounterId::from_index(1));
    let lane = std::thread::spawn(move || {
        for _ in 0..10_000 {
            passes.inc();
        }
        passes.add(5);
        depth.set(17);
    });
    lane.join().unwrap();

    let reader = CountersReader::open(&tmp.0).unwrap();
    assert_eq!(reader.len(), 3);
    assert_eq!(reader.state(), FileState::Live);
    let info = reader.info();
    assert_eq!(info.pid, u64::from(std::process::id()));
    assert_eq!(info.records, 3);
    assert!(info.start_realtime_ns > 0 && info.start_monotonic_ns > 0);
    assert_eq!(info, file.info());

    let samples = reader.snapshot();
    assert_eq!(
        samples,
        [
            Sample {
                name: r#"corelane_lane_passes_total{lane="main"}"#.into(),
                kind: CounterKind::Counter,
                help: "Passes of the lane loop.".into(),
                value: 10_005,
                unit: Unit::None,
            },
            Sample {
                name: r#"corelane_lane_queue_depth{lane="main"}"#.into(),
                kind: CounterKind::Gauge,
                help: "Items waiting.".into(),
                value: 17,
                unit: Unit::None,
            },
            Sample {
                name: r#"corelane_odd_total{path="C:\\tmp \"x\"\nnext"}"#.into(),
                kind: CounterKind::Counter,
                help: String::new(),
                value: 0,
                unit: Unit::None,
            },
        ]
    );
    assert_eq!(samples[0].family(), "corelane_lane_passes_total");

    // Values written after the reader opened are seen through its mapping too.
    file.counter(CounterId::from_index(2)).add(3);
    assert_eq!(reader.value(2), Some(3));
    assert_eq!(reader.value(3), None);

    // The daemon's own reader sees the same.
    assert_eq!(file.reader().snapshot(), reader.snapshot());

    file.remove().unwrap();
    assert!(!tmp.0.exists());
    assert_eq!(reader.state(), FileState::Closed, "a reader still mapping it sees it closed");
    assert_eq!(reader.value(0), Some(10_005), "final values stay readable");
}

#[test]
fn recreating_replaces_the_file_without_disturbing_old_readers() {
    let tmp = TempPath::new("recreate");
    let old = CountersFile::create(&tmp.0, &specs()).unwrap();
    old.counter(CounterId::from_index(0)).add(9);
    let old_reader = CountersReader::open(&tmp.0).unwrap();

    let new = CountersFile::create(&tmp.0, &specs()[..1]).unwrap();
    assert_eq!(CountersReader::open(&tmp.0).unwrap().len(), 1);
    assert_eq!(old_reader.len(), 3);
    assert_eq!(old_reader.value(0), Some(9), "the old mapping is still the old file");
    drop(old);
    drop(new);
}

#[test]
fn two_writers_cannot_lose_counts() {
    let file = CountersFile::in_memory(&specs()).unwrap();
    let counter = file.counter(CounterId::from_index(0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let counter = counter.clone();
            std::thread::spawn(move || (0..50_000).for_each(|_| counter.inc()))
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(counter.get(), 100_000);
    assert_eq!(file.reader().value(0), Some(100_000));
}

#[test]
fn registry_rejects_what_does_not_fit() {
    let mut registry = Registry::new();
    let long = "x".repeat(NAME_CAP + 1);
    assert!(matches!(
        registry.register(CounterSpec::gauge(&long, &[], "")),
        Err(MetricsError::NameTooLong { .. })
    ));
    let fits = "y".repeat(NAME_CAP);
    registry.register(CounterSpec::gauge(&fits, &[], "")).unwrap();
    let help = "h".repeat(HELP_CAP + 1);
    assert!(matches!(
        registry.register(CounterSpec::gauge("a", &[], &help)),
        Err(MetricsError::HelpTooLong { .. })
    ));
    assert!(matches!(
        registry.register(CounterSpec::gauge("a", &[], "two\nlines")),
        Err(MetricsError::InvalidHelp { .. })
    ));
    let id = registry.register(CounterSpec::counter("a_total", LABELS_MAIN, "")).unwrap();
    assert_eq!(id.index(), 1);
    let err = registry.register(CounterSpec::counter("a_total", LABELS_MAIN, "")).unwrap_err();
    assert!(matches!(err, MetricsError::DuplicateSeries { .. }), "{err}");
    assert_eq!(registry.len(), 2);
    let file = registry.create_in_memory().unwrap();
    assert_eq!(file.len(), 2);
    assert_eq!(file.path(), None);
}

/// Writes `bytes` at `offset` of the file at `path`.
fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let mut file = OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(bytes).unwrap();
}

/// A fresh valid file at a new path, for one corruption.
fn valid_file(tag: &str) -> TempPath {
    let tmp = TempPath::new(tag);
    drop(CountersFile::create(&tmp.0, &specs()).unwrap());
    CountersReader::open(&tmp.0).unwrap();
    tmp
}

fn open_err(path: &Path) -> MetricsError {
    CountersReader::open(path).expect_err("corrupt file accepted")
}

const RECORD0: u64 = HEADER_BYTES as u64;

#[test]
fn reader_rejects_bad_magic_and_version() {
    let tmp = valid_file("magic");
    patch(&tmp.0, 0, b"NOTCOUNT");
    let err = open_err(&tmp.0);
    assert!(matches!(err, MetricsError::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains("not a counters file"), "{err}");

    let tmp = valid_file("version");
    patch(&tmp.0, 8, &1u32.to_le_bytes());
    let err = open_err(&tmp.0);
    assert!(
        matches!(err, MetricsError::UnsupportedVersion { found: 1, expected: LAYOUT_VERSION, .. }),
        "{err}"
    );

    let tmp = valid_file("geometry");
    patch(&tmp.0, 20, &128u32.to_le_bytes());
    let err = open_err(&tmp.0);
    assert!(matches!(err, MetricsError::BadGeometry { field: "record_bytes", .. }), "{err}");
}

#[test]
fn reader_rejects_truncated_files_and_counts_past_the_end() {
    let tmp = valid_file("short");
    OpenOptions::new().write(true).open(&tmp.0).unwrap().set_len(50).unwrap();
    let err = open_err(&tmp.0);
    assert!(matches!(err, MetricsError::TooShort { len: 50, .. }), "{err}");

    let tmp = valid_file("truncated");
    let cut = RECORD0 + RECORD_BYTES as u64 + 100;
    OpenOptions::new().write(true).open(&tmp.0).unwrap().set_len(cut).unwrap();
    let err = open_err(&tmp.0);
    assert!(
        matches!(err, MetricsError::SizeMismatch { records: 3, file_len, .. } if file_len == cut),
        "{err}"
    );

    let tmp = valid_file("count");
    patch(&tmp.0, 16, &1000u32.to_le_bytes());
    let err = open_err(&tmp.0);
    assert!(matches!(err, MetricsError::SizeMismatch { records: 1000, .. }), "{err}");
    patch(&tmp.0, 16, &u32::MAX.to_le_bytes());
    assert!(matches!(open_err(&tmp.0), MetricsError::SizeMismatch { .. }));

    let tmp = TempPath::new("missing");
    assert!(matches!(open_err(&tmp.0), MetricsError::Io { op: "open", .. }));
}

#[test]
fn reader_rejects_unpublished_and_unknown_states() {
    let tmp = valid_file("writing");
    patch(&tmp.0, 48, &0u64.to_le_bytes());
    assert!(matches!(open_err(&tmp.0), MetricsError::NotReady { .. }));
    patch(&tmp.0, 48, &7u64.to_le_bytes());
    assert!(matches!(open_err(&tmp.0), MetricsError::BadState { found: 7, .. }));
}

#[test]
fn reader_rejects_corrupt_records() {
    let cases: [(&str, u64, &[u8], &str); 7] = [
        ("name-past", RECORD0 + 9, &[200], "runs past the 112-byte name field"),
        (
            "help-past",
            RECORD0 + RECORD_BYTES as u64 + 10,
            &[129],
            "runs past the 128-byte help field",
        ),
        ("name-empty", RECORD0 + 9, &[0], "name length is 0"),
        ("kind", RECORD0 + 8, &[9], "kind byte is 9"),
        ("utf8", RECORD0 + 16, &[0xff], "not UTF-8"),
        ("inject", RECORD0 + 16 + 5, b"\n", "name"),
        ("help-ctl", RECORD0 + 128, b"\x07", "control character"),
    ];
    for (tag, offset, bytes, want) in cases {
        let tmp = valid_file(tag);
        patch(&tmp.0, offset, bytes);
        let err = open_err(&tmp.0);
        assert!(matches!(err, MetricsError::BadRecord { .. }), "{tag}: {err}");
        assert!(err.to_string().contains(want), "{tag}: {err}");
    }
}

// --- the HTTP endpoint -------------------------------------------------------------------------

/// Sends `request` (then half-closes unless `keep_open`), reads the whole response.
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn status(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

fn served_file() -> CountersFile {
    let file = CountersFile::in_memory(&specs()).unwrap();
    file.counter(CounterId::from_index(0)).add(41);
    file.counter(CounterId::from_index(1)).set(3);
    file
}

/// A server of [`served_file`] on a free loopback port.
fn serve_on_loopback(config: ServerConfig) -> MetricsServer {
    MetricsServer::start_with("127.0.0.1:0".parse().unwrap(), served_file().reader(), config)
        .unwrap()
}

#[test]
fn get_metrics_serves_the_exposition_format() {
    let file = served_file();
    let extra = |out: &mut Vec<Sample>| {
        out.push(Sample::new(
            series_name("corelane_build_info", &[("version", "0.1.0")]).unwrap(),
            CounterKind::Gauge,
            "Build facts.",
            1,
        ))
    };
    let sources: Vec<Box<dyn MetricsSource>> = vec![Box::new(file.reader()), Box::new(extra)];
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), sources).unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    let response = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
    assert!(response.contains("Content-Type: text/plain; version=0.0.4"), "{response}");
    assert_eq!(
        body(&response),
        "# HELP corelane_lane_passes_total Passes of the lane loop.\n\
         # TYPE corelane_lane_passes_total counter\n\
         corelane_lane_passes_total{lane=\"main\"} 41\n\
         # HELP corelane_lane_queue_depth Items waiting.\n\
         # TYPE corelane_lane_queue_depth gauge\n\
         corelane_lane_queue_depth{lane=\"main\"} 3\n\
         # HELP corelane_odd_total\n\
         # TYPE corelane_odd_total counter\n\
         corelane_odd_total{path=\"C:\\\\tmp \\\"x\\\"\\nnext\"} 0\n\
         # HELP corelane_build_info Build facts.\n\
         # TYPE corelane_build_info gauge\n\
         corelane_build_info{version=\"0.1.0\"} 1\n"
    );
    let length = format!("Content-Length: {}\r\n", body(&response).len());
    assert!(response.contains(&length), "{response}");

    // Values are read per scrape.
    file.counter(CounterId::from_index(0)).inc();
    let response = http(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
    assert!(body(&response).contains("corelane_lane_passes_total{lane=\"main\"} 42\n"));

    let response = http(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
    assert_eq!(body(&response), "");
    server.stop();
}

#[test]
fn other_paths_methods_and_garbage_get_errors() {
    let server = serve_on_loopback(ServerConfig::default());
    let addr = server.local_addr();
    assert_eq!(status(&http(addr, b"GET /other HTTP/1.1\r\n\r\n")), "HTTP/1.1 404 Not Found");
    assert_eq!(status(&http(addr, b"GET / HTTP/1.1\r\n\r\n")), "HTTP/1.1 404 Not Found");
    let response = http(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status(&response), "HTTP/1.1 405 Method Not Allowed");
    assert!(response.contains("Allow: GET, HEAD\r\n"));
    assert_eq!(status(&http(addr, b"garbage\r\n\r\n")), "HTTP/1.1 400 Bad Request");
    assert_eq!(status(&http(addr, b"\x00\x01\x02 / HTTP/1.1\r\n\r\n")), "HTTP/1.1 400 Bad Request");
    // A head past the 8 KiB cap is refused without reading more.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.resize(8 * 1024 + 100, b'a');
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(&huge).unwrap();
    let mut response = Vec::new();
    // The server may reset the connection after answering (unread bytes): keep what arrived.
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.is_empty() || status(&response) == "HTTP/1.1 431 Request Header Fields Too Large",
        "{response}"
    );
    // And the server still serves afterwards.
    assert_eq!(status(&http(addr, b"GET /metrics HTTP/1.1\r\n\r\n")), "HTTP/1.1 200 OK");
    server.stop();
}

#[test]
fn a_silent_client_is_dropped_and_the_next_one_is_served() {
    let config =
        ServerConfig { head_timeout: Duration::from_millis(300), ..ServerConfig::default() };
    let server = serve_on_loopback(config);
    let addr = server.local_addr();

    let connected = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Make sure the server has taken the silent one before the second client arrives.
    std::thread::sleep(Duration::from_millis(50));

    let response = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
    assert!(body(&response).contains("corelane_lane_passes_total{lane=\"main\"} 41\n"));

    let mut dropped = String::new();
    silent.read_to_string(&mut dropped).unwrap();
    assert!(connected.elapsed() >= config.head_timeout, "dropped before the timeout");
    assert_eq!(status(&dropped), "HTTP/1.1 408 Request Timeout");

    // A client trickling bytes is bounded by the same deadline, not reset by each byte.
    let started = Instant::now();
    let mut trickle = TcpStream::connect(addr).unwrap();
    trickle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for b in b"GET /met" {
        if trickle.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(60));
    }
    let mut response = String::new();
    let _ = trickle.read_to_string(&mut response);
    assert!(started.elapsed() >= config.head_timeout);
    assert!(
        response.is_empty() || status(&response) == "HTTP/1.1 408 Request Timeout",
        "{response}"
    );
    server.stop();
}

#[test]
fn stop_returns_while_a_client_is_connected() {
    let server = serve_on_loopback(ServerConfig::default());
    let addr = server.local_addr();
    let _idle = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // Default head timeout is 5 s; stop must not wait for it (no timing assertion: it either
    // returns or the test hangs).
    server.stop();
    assert!(TcpStream::connect(addr).is_err(), "listener closed after stop");
}

#[test]
fn dropping_the_server_stops_it() {
    let server = serve_on_loopback(ServerConfig::default());
    let addr = server.local_addr();
    drop(server);
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn a_file_whose_heartbeat_stops_is_reported_stale() {
    let tmp = TempPath::new("heartbeat");
    let file = CountersFile::create(&tmp.0, &specs()).unwrap();
    let reader = CountersReader::open(&tmp.0).unwrap();
    assert_eq!(reader.liveness(monotonic_ns()), Liveness::NoPublisher);
    let heartbeat = file.heartbeat();
    let t0 = 1_000_000_000_000;
    heartbeat.beat_at(t0, Duration::from_millis(100));
    assert_eq!(reader.heartbeat(), (t0, 100));
    assert_eq!(reader.liveness(t0 + 250_000_000), Liveness::Live);
    // The publisher stops: three intervals later the file is stale.
    let verdict = reader.liveness(t0 + 2_000_000_000);
    assert_eq!(verdict, Liveness::Stale { silent_ns: 2_000_000_000 });
    assert_eq!(verdict.to_string(), "stale: no heartbeat for 2.0 s");
    heartbeat.beat_at(t0 + 2_000_000_000, Duration::from_millis(100));
    assert_eq!(reader.liveness(t0 + 2_100_000_000), Liveness::Live);
    file.remove().unwrap();
    assert_eq!(reader.liveness(t0 + 9_000_000_000), Liveness::Closed);
}

#[test]
fn a_replaced_file_is_detected_and_reopened() {
    let tmp = TempPath::new("replaced");
    let _first = CountersFile::create(&tmp.0, &specs()).unwrap();
    let reader = CountersReader::open(&tmp.0).unwrap();
    assert!(!reader.is_replaced());
    assert!(reader.reopen_if_replaced().unwrap().is_none());
    fs::remove_file(&tmp.0).unwrap();
    assert!(reader.is_replaced(), "an unlinked file is not noticed");
    let _second = CountersFile::create(&tmp.0, &specs()[..1]).unwrap();
    assert!(reader.is_replaced(), "a recreated file is not noticed");
    let fresh = reader.reopen_if_replaced().unwrap().expect("no reopen");
    assert_eq!(fresh.len(), 1);
    assert!(!fresh.is_replaced());
}

/// Issue 11: idle connections (nothing sent) must not delay a real scrape.
#[test]
fn idle_connections_do_not_delay_a_scrape() {
    let server = serve_on_loopback(ServerConfig::default());
    let addr = server.local_addr();
    let _idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    let response = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    let took = started.elapsed();
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
    assert!(took < Duration::from_secs(1), "scrape took {took:?} behind 3 idle connections");
    server.stop();
}

/// Issue 11: a client trickling its head one byte at a time is closed at its deadline, and
/// scrapes meanwhile are answered at once.
#[test]
fn a_trickling_client_is_closed_at_its_deadline_while_scrapes_are_answered() {
    let config =
        ServerConfig { head_timeout: Duration::from_millis(600), ..ServerConfig::default() };
    let server = serve_on_loopback(config);
    let addr = server.local_addr();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let connected = Instant::now();
    let mut worst = Duration::ZERO;
    for &byte in b"GET /metrics HTTP/1.1\r\nHost: x" {
        // Past the deadline the server has closed: the write may fail, which is the point.
        if slow.write_all(&[byte]).is_err() {
            break;
        }
        let started = Instant::now();
        assert_eq!(status(&http(addr, b"GET /metrics HTTP/1.1\r\n\r\n")), "HTTP/1.1 200 OK");
        worst = worst.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(40));
    }
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert_eq!(status(&answer), "HTTP/1.1 408 Request Timeout");
    let held = connected.elapsed();
    assert!(held >= config.head_timeout && held < Duration::from_secs(3), "held {held:?}");
    assert!(worst < Duration::from_millis(500), "a scrape took {worst:?} beside a trickler");
    server.stop();
}

/// Issue 11: past the cap the oldest connection that has not sent a head is answered 503 and
/// closed to make room (see `server_tests` for the rest); a slot that frees is usable again.
#[test]
fn past_the_cap_the_oldest_idle_connection_gets_503_and_close() {
    let config = ServerConfig { max_connections: 4, ..ServerConfig::default() };
    let server = serve_on_loopback(config);
    let addr = server.local_addr();
    let mut idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let _extra = TcpStream::connect(addr).unwrap();
    // The server answers before reading anything, so only read (a write could meet a reset).
    idle[0].set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut refused = String::new();
    idle[0].read_to_string(&mut refused).unwrap();
    assert_eq!(status(&refused), "HTTP/1.1 503 Service Unavailable", "{refused}");
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(status(&http(addr, b"GET /metrics HTTP/1.1\r\n\r\n")), "HTTP/1.1 200 OK");
    server.stop();
}

#[test]
fn a_short_publish_interval_is_not_stale_within_a_second() {
    let tmp = TempPath::new("min-stale");
    let file = CountersFile::create(&tmp.0, &specs()).unwrap();
    let reader = CountersReader::open(&tmp.0).unwrap();
    let t0 = monotonic_ns();
    file.heartbeat().beat_at(t0, Duration::from_millis(1));
    // Three 1 ms intervals are a scheduling delay, not a dead daemon.
    assert_eq!(reader.liveness(t0 + 100_000_000), Liveness::Live);
    assert!(matches!(reader.liveness(t0 + 1_100_000_000), Liveness::Stale { .. }));
}

#[test]
fn plain_copies_never_overlap_a_word_stored_after_publication() {
    use super::layout::{HEARTBEAT_OFFSET, INTERVAL_OFFSET, STATE_OFFSET};
    use super::map::overlaps_live_word;
    for word in [STATE_OFFSET, HEARTBEAT_OFFSET, INTERVAL_OFFSET] {
        assert!(overlaps_live_word(word, 8));
        assert!(overlaps_live_word(word + 7, 1));
        assert!(overlaps_live_word(0, word + 1));
        assert!(!overlaps_live_word(0, STATE_OFFSET));
    }
    assert!(!overlaps_live_word(INTERVAL_OFFSET + 8, HEADER_BYTES - INTERVAL_OFFSET - 8));
    // Record 3's value word, and its metadata right after it.
    let rec = HEADER_BYTES + 3 * RECORD_BYTES;
    assert!(overlaps_live_word(rec, 8));
    assert!(overlaps_live_word(rec - 4, 8));
    assert!(!overlaps_live_word(rec + 8, RECORD_BYTES - 8));
    assert!(overlaps_live_word(rec + 8, RECORD_BYTES));
    assert!(!overlaps_live_word(rec, 0));
}

/// Issue 11: all quantiles of one summary come from one window. A lane publishes windows in a
/// tight loop, every latency of window `k` being `k` µs, so every quantile of window `k` is the
/// same value; a reader (another thread, as `/metrics` is) must never see two windows mixed.
#[test]
fn the_quantiles_of_one_summary_come_from_one_window() {
    let mut registry = Registry::new();
    let ids = registry
        .register_summary(
            "corelane_test_latency_seconds",
            &[("lane", "main")],
            "Test latency.",
            &QUANTILES,
        )
        .unwrap();
    let file = registry.create_in_memory().unwrap();
    let gauges = file.summary(ids);
    let reader = file.reader();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    let lane = std::thread::spawn(move || {
        let mut recorder = LatencyRecorder::new();
        let mut k = 1u64;
        while !flag.load(Ordering::Relaxed) {
            recorder.record(1000 * (k % 999 + 1));
            assert!(recorder.publish(&gauges));
            k += 1;
        }
        k
    });
    // What the histogram answers for window `k`'s one latency (the top of its bucket).
    let buckets = hdrhistogram::Histogram::<u64>::new_with_bounds(
        LatencyRecorder::LOWEST_NS,
        LatencyRecorder::HIGHEST_NS,
        LatencyRecorder::SIGNIFICANT_FIGURES,
    )
    .unwrap();
    let window_latency = |k: u64| buckets.highest_equivalent(1000 * (k % 999 + 1));
    let started = Instant::now();
    let (mut reads, mut left_out) = (0u64, 0u64);
    let mut mixed = Vec::new();
    while started.elapsed() < Duration::from_millis(300) && mixed.len() < 5 {
        let snapshot = reader.snapshot();
        let quantiles: Vec<u64> =
            snapshot.iter().filter(|s| s.name.contains("quantile=")).map(|s| s.value).collect();
        reads += 1;
        // A publisher descheduled mid-write (2 cpus, a loaded host) has its summary left out
        // of that snapshot: whole or absent, never torn.
        if quantiles.is_empty() {
            assert!(!snapshot.iter().any(|s| s.kind == CounterKind::SummaryCount));
            left_out += 1;
            continue;
        }
        assert_eq!(quantiles.len(), 4, "{quantiles:?}");
        // The count says which window this is: its quantiles are that window's latency.
        let count = snapshot.iter().find(|s| s.kind == CounterKind::SummaryCount).unwrap().value;
        let want = if count == 0 { 0 } else { window_latency(count) };
        if quantiles.iter().any(|&v| v != want) {
            mixed.push((count, quantiles));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let windows = lane.join().unwrap();
    assert!(
        mixed.is_empty(),
        "{} of {reads} reads mixed windows (of {windows}): {mixed:?}",
        mixed.len()
    );
    assert!(left_out * 10 <= reads, "{left_out} of {reads} reads left the summary out");
}

/// Issue 11: the registry holds every family to the exposition's rules, so the file can never
/// hold two kinds, help texts or units under one name, a counter without `_total`, or a time
/// in anything but seconds.
#[test]
fn the_registry_enforces_one_kind_help_and_unit_per_name() {
    let bad = |result: Result<CounterId, MetricsError>, want: &str| {
        let err = result.expect_err(want);
        assert!(matches!(err, MetricsError::BadFamily { .. }), "{err}");
        assert!(err.to_string().contains(want), "{err} lacks {want:?}");
    };
    let mut r = Registry::new();
    r.register(CounterSpec::counter("a_total", &[("k", "1")], "A.")).unwrap();
    bad(r.register(CounterSpec::gauge("a_total", &[("k", "2")], "A.")), "one kind");
    bad(r.register(CounterSpec::counter("a_total", &[("k", "2")], "Other.")), "help text");
    bad(r.register(CounterSpec::counter("b", &[], "B.")), "_total");
    bad(r.register(CounterSpec::gauge("idle_ns", &[], "")), "not ns");
    bad(r.register(CounterSpec::gauge("rtt_us", &[], "")), "not us");
    bad(r.register(CounterSpec::gauge("wait", &[], "").in_nanoseconds()), "says seconds");
    r.register(CounterSpec::counter("idle_seconds_total", &[], "I.").in_nanoseconds()).unwrap();
    bad(r.register(CounterSpec::counter("idle_seconds_total", &[("k", "v")], "I.")), "unit");
    let part = CounterSpec { kind: CounterKind::SummarySum, ..CounterSpec::gauge("s", &[], "") };
    bad(r.register(part), "register_summary");

    // A summary's names are its own: no other family may take `_sum` or `_count`, nor may a
    // summary take a gauge's name.
    r.register_summary("lat_seconds", &[("k", "1")], "L.", &QUANTILES).unwrap();
    r.register_summary("lat_seconds", &[("k", "2")], "L.", &QUANTILES).unwrap();
    bad(r.register(CounterSpec::gauge("lat_seconds_sum", &[], "L.")), "one kind");
    bad(r.register(CounterSpec::gauge("lat_seconds", &[], "L.")), "one kind");
    r.register(CounterSpec::gauge("g_seconds", &[], "G.")).unwrap();
    let err = r.register_summary("g_seconds", &[], "G.", &QUANTILES).unwrap_err();
    assert!(err.to_string().contains("one kind"), "{err}");
    let err = r.register_summary("lat_seconds", &[("k", "1")], "L.", &QUANTILES).unwrap_err();
    assert!(matches!(err, MetricsError::DuplicateSeries { .. }), "{err}");
    let err = r.register_summary("n_seconds", &[], "", &[]).unwrap_err();
    assert!(err.to_string().contains("quantiles"), "{err}");
}

/// A counters file whose summary blocks are broken is refused by another process's reader.
#[test]
fn reader_rejects_broken_summary_blocks() {
    let tmp = TempPath::new("summary");
    let mut registry = Registry::new();
    registry.register(CounterSpec::gauge("g", &[], "")).unwrap();
    registry.register_summary("s_seconds", &[("k", "v")], "S.", &QUANTILES).unwrap();
    drop(registry.create(&tmp.0).unwrap());
    let reader = CountersReader::open(&tmp.0).unwrap();
    assert_eq!(reader.snapshot().len(), 1 + 4 + 2, "the window word is not a sample");
    // Record 1 is the window word, 2..=5 the quantiles, 6 the sum, 7 the count.
    let kind = |record: u64| RECORD0 + record * RECORD_BYTES as u64 + 8;
    for (record, byte, want) in [
        (1, 2, "summary part"), // the window made a gauge: its quantiles stand alone
        (3, 5, "lacks"),        // a sum among the quantiles
        (7, 2, "lacks"),        // no count
        (0, 4, "outside a summary"), // a quantile without a window
    ] {
        patch(&tmp.0, kind(record), &[byte]);
        let err = open_err(&tmp.0);
        assert!(matches!(err, MetricsError::BadRecord { .. }), "{record}: {err}");
        assert!(err.to_string().contains(want), "{record}: {err}");
        let restore = match record {
            1 => 3,
            3 => 4,
            7 => 6,
            _ => 2,
        };
        patch(&tmp.0, kind(record), &[restore]);
        CountersReader::open(&tmp.0).unwrap();
    }
    patch(&tmp.0, RECORD0 + 11, &[9]);
    assert!(open_err(&tmp.0).to_string().contains("unit byte is 9"));
}

/// A summary whose publisher stopped mid-write (window word odd) is left out of a snapshot
/// instead of being shown torn.
#[test]
fn a_summary_stuck_mid_write_is_left_out() {
    let mut registry = Registry::new();
    let ids = registry.register_summary("s_seconds", &[], "S.", &QUANTILES).unwrap();
    registry.register(CounterSpec::gauge("after", &[], "")).unwrap();
    let file = registry.create_in_memory().unwrap();
    file.summary(ids).publish(&[1, 2, 3, 4], 10, 4);
    assert_eq!(file.reader().snapshot().len(), 7);
    file.counter(CounterId::from_index(0)).set(7); // odd: a publish in progress, forever
    let names: Vec<String> = file.reader().snapshot().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["after"]);
}
