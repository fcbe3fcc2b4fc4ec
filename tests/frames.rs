//! The frame worker in a real daemon, over loopback TCP: seed 004's Testing Checklist end to
//! end (one test per line that concerns the worker, named after it), hostile agents beside
//! good ones, a worker restart, twenty agents at once, the counters file.
//!
//! Checklist lines that are the agent's alone (LATEST_WINS drops, FIFO waiting) have no
//! worker behaviour beyond echoing the policy, which
//! `latest_wins_and_fifo_policies_are_echoed_in_init_ok` checks; reconnection is checked with
//! the real `corelane agent` across a worker restart.

#[path = "frames_support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use corelane::frames::proto::{
    self, envelope::Payload, Codec, ErrorCode, MsgType, PixelFormat, Policy,
};
use corelane::frames::vision::jpeg;
use corelane::frames::vision::synthetic::Synthetic;
use corelane::frames::vision::yuv::RawFormat;
use support::{
    boxes, encoded, encoded_as, envelope, frame_msg, frame_of, init_formats, init_msg, jpeg_frame,
    matches_truth, tcp_rx_queue, Peer, Seen, Worker,
};

/// Frames before the motion detector's boxes are expected to be exact: the first frame is
/// the background, and objects have moved clear of their start within 10 frames.
const WARM_UP: u64 = 12;
/// Pixels a box edge may be off (the detector works at half resolution).
const TOL: f32 = 3.0;

fn code(e: &proto::Error) -> ErrorCode {
    ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified)
}

fn error_series(code: &str) -> String {
    format!("corelane_frames_errors_total{{code=\"{code}\"}}")
}

/// One frame at a time; returns the Results.
fn lockstep(peer: &mut Peer, frames: impl IntoIterator<Item = proto::Frame>) -> Vec<proto::Result> {
    let mut out = Vec::new();
    for f in frames {
        let id = f.frame_id;
        peer.send(Payload::Frame(f));
        let r = peer.expect_result();
        assert_eq!(r.frame_id, id);
        out.push(r);
    }
    out
}

/// A good frame works on this session (sent with `id`).
fn still_works(peer: &mut Peer, id: u64) {
    let mut source = Synthetic::new(640, 480, 2, id);
    let r = lockstep(peer, [frame_msg(&mut source, RawFormat::Nv12, id, 640, 480)]);
    assert_eq!(r[0].frame_id, id);
}

/// Streams `n` frames of `format` lockstep, checking detections against the truth after
/// warm-up; returns how many post-warm-up frames matched and how many were checked.
fn decode_accuracy(
    peer: &mut Peer,
    n: u64,
    (w, h): (u32, u32),
    mut make: impl FnMut(&mut Synthetic, u64) -> proto::Frame,
) -> (usize, usize, Vec<String>) {
    let mut source = Synthetic::new(w, h, 3, 11);
    let (mut good, mut checked, mut misses) = (0, 0, Vec::new());
    for id in 1..=n {
        let frame = make(&mut source, id);
        let r = lockstep(peer, [frame]).pop().unwrap();
        if id >= WARM_UP {
            checked += 1;
            let found = boxes(&r);
            if matches_truth(&found, source.truth(), TOL) {
                good += 1;
            } else {
                misses.push(format!("frame {id}: found {found:?}, truth {:?}", source.truth()));
            }
        }
    }
    (good, checked, misses)
}

/// A good agent on its own thread: lockstep 320x240 NV12 frames until `stop`, each Result's
/// frame_id checked. `count` is the Results so far; the join gives the total.
struct GoodAgent {
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<u64>,
}

impl GoodAgent {
    fn start(worker: &Worker) -> GoodAgent {
        let addr = worker.addr;
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let handle = thread::spawn(move || {
            let mut peer = Peer::connect(addr);
            peer.init(320, 240, 2);
            let mut source = Synthetic::new(320, 240, 2, 5);
            let mut id = 0;
            while !s.load(Ordering::Relaxed) {
                id += 1;
                peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, id, 320, 240)));
                let r = peer.expect_result();
                assert_eq!(r.frame_id, id, "the good agent's result");
                c.store(id, Ordering::Relaxed);
            }
            id
        });
        GoodAgent { count, stop, handle }
    }

    fn results(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until the agent has `more` Results past `from` (15 s at most).
    fn wait_progress(&self, from: u64, more: u64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.results() < from + more {
            assert!(!self.handle.is_finished(), "the good agent failed during {what}");
            assert!(Instant::now() < deadline, "the good agent stalled during {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("the good agent failed")
    }
}

// ---- Checklist: validation ---------------------------------------------------------------

#[test]
fn version_validation_version_not_1_is_version_unsupported() {
    let worker = Worker::start("version", "");
    let mut peer = Peer::connect(worker.addr);
    // Before Init: version 0 and 2, each answered, the session goes on.
    for v in [0, 2] {
        peer.send_envelope(&envelope(v, MsgType::Init, Some(Payload::Init(init_msg(640, 480, 4)))));
        let e = peer.expect_error();
        assert_eq!(code(&e), ErrorCode::VersionUnsupported, "version {v}: {e:?}");
        assert!(e.message.contains(&v.to_string()), "{e:?}");
    }
    peer.init(640, 480, 4);
    // After Init: a Frame with version 7.
    let mut source = Synthetic::new(640, 480, 2, 1);
    let f = frame_msg(&mut source, RawFormat::Nv12, 1, 640, 480);
    peer.send_envelope(&envelope(7, MsgType::Frame, Some(Payload::Frame(f))));
    let e = peer.expect_error();
    assert_eq!(code(&e), ErrorCode::VersionUnsupported, "{e:?}");
    still_works(&mut peer, 2);
    worker.wait_counter(&error_series("VERSION_UNSUPPORTED"), |v| v == 3);
}

#[test]
fn msg_type_validation_mismatched_msg_type_is_bad_message() {
    let worker = Worker::start("msgtype", "");
    let mut peer = Peer::connect(worker.addr);
    let init = || Some(Payload::Init(init_msg(640, 480, 4)));
    // Init payload labelled FRAME, UNSPECIFIED, END; no payload; undecodable bytes.
    for t in [MsgType::Frame, MsgType::Unspecified, MsgType::End] {
        peer.send_envelope(&envelope(1, t, init()));
        let e = peer.expect_error();
        assert_eq!(code(&e), ErrorCode::BadMessage, "{t:?}: {e:?}");
    }
    peer.send_envelope(&envelope(1, MsgType::Init, None));
    assert_eq!(code(&peer.expect_error()), ErrorCode::BadMessage);
    peer.send_raw(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(code(&peer.expect_error()), ErrorCode::BadMessage);
    // None of these was an Init: the session still takes one.
    peer.init(640, 480, 4);
    // After Init: a Frame labelled RESULT; a worker-to-agent message (Result) from the agent.
    let mut source = Synthetic::new(640, 480, 2, 1);
    let f = frame_msg(&mut source, RawFormat::Nv12, 1, 640, 480);
    peer.send_envelope(&envelope(1, MsgType::Result, Some(Payload::Frame(f))));
    assert_eq!(code(&peer.expect_error()), ErrorCode::BadMessage);
    peer.send(Payload::Result(proto::Result { frame_id: 9, ..Default::default() }));
    assert_eq!(code(&peer.expect_error()), ErrorCode::BadMessage);
    still_works(&mut peer, 2);
    worker.wait_counter(&error_series("BAD_MESSAGE"), |v| v == 7);
}

#[test]
fn sequence_validation_frame_before_init_is_bad_sequence() {
    let worker = Worker::start("sequence", "");
    let mut peer = Peer::connect(worker.addr);
    // A small frame (under the 64 KiB pre-Init message limit).
    let mut source = Synthetic::new(64, 48, 1, 1);
    peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, 41, 64, 48)));
    let e = peer.expect_error();
    assert_eq!(code(&e), ErrorCode::BadSequence, "{e:?}");
    assert_eq!(e.frame_id, 41, "the Error names the frame");
    peer.send(Payload::Heartbeat(proto::Heartbeat::default()));
    let e = peer.expect_error();
    assert_eq!(code(&e), ErrorCode::BadSequence, "Heartbeat before Init: {e:?}");
    peer.init(640, 480, 4);
    // A second Init.
    peer.send(Payload::Init(init_msg(640, 480, 4)));
    assert_eq!(code(&peer.expect_error()), ErrorCode::BadSequence);
    still_works(&mut peer, 42);
    worker.wait_counter(&error_series("BAD_SEQUENCE"), |v| v == 3);
}

/// A full-size frame before Init is BAD_SEQUENCE, not FRAME_TOO_LARGE: the limit before Init
/// is the worker's largest frame (it was 64 KiB, which closed the connection of an agent
/// that streams before (re-)Init instead of telling it what it did wrong).
#[test]
fn sequence_validation_full_size_frame_before_init_is_bad_sequence() {
    let worker = Worker::start("sequence-full", "");
    let mut peer = Peer::connect(worker.addr);
    let mut source = Synthetic::new(640, 480, 2, 1);
    peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, 41, 640, 480)));
    let e = peer.expect_error();
    assert_eq!(code(&e), ErrorCode::BadSequence, "a 640x480 Frame before Init: {e:?}");
    assert_eq!(e.frame_id, 41, "the Error names the frame");
    peer.init(640, 480, 4);
    still_works(&mut peer, 42);
}

#[test]
fn plane_validation_incorrect_plane_sizes_is_invalid_frame() {
    let worker = Worker::start("planes", "");
    let mut peer = Peer::connect(worker.addr);
    peer.init(640, 480, 4);
    // A 320x240 frame on the 640x480 session: room under max_frame_bytes for extra data.
    let mut source = Synthetic::new(320, 240, 2, 1);
    let good = frame_msg(&mut source, RawFormat::Nv12, 1, 320, 240);
    let mut bad = Vec::new();
    // UV plane one row short (and the data with it).
    let mut f = good.clone();
    f.planes[1].size -= 320;
    f.data.truncate(f.data.len() - 320);
    bad.push(("short uv plane", f));
    // Y plane size not stride x rows.
    let mut f = good.clone();
    f.planes[0].size += 1;
    bad.push(("y size", f));
    // Planes that do not add up to the data.
    let mut f = good.clone();
    f.data.extend_from_slice(&[0; 64]);
    bad.push(("extra data", f));
    // Stride below the width.
    let mut f = good.clone();
    f.planes[0].stride = 300;
    f.planes[0].size = 300 * 240;
    bad.push(("stride < width", f));
    // A plane outside the data.
    let mut f = good.clone();
    f.planes[1].offset += 10;
    bad.push(("outside", f));
    // One plane for NV12.
    let mut f = good.clone();
    f.planes.truncate(1);
    bad.push(("one plane", f));
    // Odd dimensions.
    let mut f = good.clone();
    f.width = 319;
    bad.push(("odd width", f));
    // Larger than the session chose.
    let mut f = good.clone();
    f.width = 642;
    bad.push(("wider than chosen", f));
    // Empty data.
    let mut f = good.clone();
    f.data.clear();
    bad.push(("no data", f));
    for (i, (what, mut f)) in bad.into_iter().enumerate() {
        let id = 100 + i as u64;
        f.frame_id = id;
        peer.send(Payload::Frame(f));
        let e = peer.expect_error();
        assert_eq!(code(&e), ErrorCode::InvalidFrame, "{what}: {e:?}");
        assert_eq!(e.frame_id, id, "{what}: the Error names the frame");
    }
    // An I420 frame on an NV12 session is a format error, not a plane error.
    let f = frame_msg(&mut source, RawFormat::I420, 200, 320, 240);
    peer.send(Payload::Frame(f));
    let e = peer.expect_error();
    assert_eq!((code(&e), e.frame_id), (ErrorCode::UnsupportedFormat, 200), "{e:?}");
    // The invalid frames returned their credits: a full window of good frames still flows.
    let mut ids = HashSet::new();
    for id in 300..304 {
        peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, id, 320, 240)));
    }
    for _ in 300..304 {
        assert!(ids.insert(peer.expect_result().frame_id));
    }
    assert_eq!(ids, (300..304).collect());
    worker.wait_counter(&error_series("INVALID_FRAME"), |v| v == 9);
}

#[test]
fn frame_size_validation_frame_over_max_frame_bytes_is_frame_too_large() {
    let worker = Worker::start("size", "");
    let mut peer = Peer::connect(worker.addr);
    let ok = peer.init(640, 480, 4);
    assert_eq!(ok.max_frame_bytes, 460_800);
    // Data one byte over max_frame_bytes in a message the framing still takes.
    let mut source = Synthetic::new(640, 480, 2, 1);
    let mut f = frame_msg(&mut source, RawFormat::Nv12, 7, 640, 480);
    f.data.push(0);
    peer.send(Payload::Frame(f));
    let e = peer.expect_error();
    assert_eq!(code(&e), ErrorCode::FrameTooLarge, "{e:?}");
    assert_eq!(e.frame_id, 7);
    still_works(&mut peer, 8);

    // A length prefix of 0xFFFFFFFF: Error FRAME_TOO_LARGE, then the worker closes, and it
    // buffered nothing of the announced 4 GiB.
    let rss_before = worker.rss_kb();
    let mut hostile = u32::MAX.to_le_bytes().to_vec();
    hostile.extend_from_slice(&[0xab; 1000]);
    peer.send_raw(&hostile);
    let e = peer.expect_error();
    assert_eq!(code(&e), ErrorCode::FrameTooLarge, "{e:?}");
    assert!(e.message.contains("4294967295"), "{e:?}");
    peer.expect_close(Duration::from_secs(10));
    let rss_after = worker.rss_kb();
    eprintln!("RSS around a 0xFFFFFFFF prefix: {rss_before} KiB -> {rss_after} KiB");
    assert!(rss_after < rss_before + 8 * 1024, "RSS grew {rss_before} -> {rss_after} KiB");

    // Before Init the limit is the worker's largest frame (1920x1080 NV12 and the slack).
    let mut peer = Peer::connect(worker.addr);
    peer.send_raw(&(1920 * 1080 * 3 / 2 + 4096 + 1u32).to_le_bytes());
    assert_eq!(code(&peer.expect_error()), ErrorCode::FrameTooLarge);
    peer.expect_close(Duration::from_secs(10));
    worker.wait_counter("corelane_frames_closes_total{cause=\"too_large\"}", |v| v == 2);
    worker.wait_counter(&error_series("FRAME_TOO_LARGE"), |v| v == 3);
}

// ---- Checklist: credits and window ---------------------------------------------------------

#[test]
fn backpressure_inflight_never_exceeds_window() {
    let worker = Worker::start("backpressure", "");
    let mut peer = Peer::connect(worker.addr);
    let ok = peer.init(640, 480, 2);
    assert_eq!(ok.chosen.as_ref().unwrap().initial_credits, 2);
    let worker_port = worker.addr.port();
    let peer_port = peer.local_port();
    // Warm up (the detector's and the connection's buffers), then twenty frames at once,
    // nothing read meanwhile.
    let mut source = Synthetic::new(640, 480, 3, 3);
    lockstep(
        &mut peer,
        (101..=105).map(|id| frame_msg(&mut source, RawFormat::Nv12, id, 640, 480)),
    );
    let mut burst = Vec::new();
    for id in 1..=20 {
        burst.extend(encoded(Payload::Frame(frame_msg(
            &mut source,
            RawFormat::Nv12,
            id,
            640,
            480,
        ))));
    }
    let total = burst.len();
    let rss_before = worker.rss_kb();
    let (mut writer, rx) = {
        let (w, rx) = peer.split();
        (w, rx)
    };
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    let sender = thread::spawn(move || {
        for chunk in burst.chunks(16 << 10) {
            writer.write_all(chunk).unwrap();
            w.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    // Meanwhile: the queue_depth gauge and the bytes the kernel holds for the worker unread.
    let (mut max_depth, mut max_unread, mut rss_max) = (0, 0, rss_before);
    let mut results = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while results.len() < 20 {
        assert!(Instant::now() < deadline, "only {} results: {}", results.len(), worker.log());
        max_depth = max_depth.max(worker.counter("queue_depth").unwrap_or(0));
        max_unread = max_unread.max(tcp_rx_queue(worker_port, peer_port).unwrap_or(0));
        rss_max = rss_max.max(worker.rss_kb());
        // Results are only read once the burst is out (the agent "does not read").
        if (written.load(Ordering::Relaxed) as usize) < total {
            thread::sleep(Duration::from_millis(5));
            continue;
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Seen::Msg(Payload::Result(r), _)) => results.push(r.frame_id),
            Ok(Seen::Msg(Payload::Heartbeat(_), _)) => {}
            Ok(Seen::Msg(Payload::WindowUpdate(w), _)) => {
                assert!(w.new_window <= 2, "{w:?} over the granted window")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            other => panic!("expected a Result, got {other:?}"),
        }
    }
    sender.join().unwrap();
    let mut sorted = results.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=20).collect::<Vec<_>>(), "each frame answered exactly once");
    eprintln!(
        "backpressure: burst {total} B, max queue_depth {max_depth}, max unread in the worker's \
         socket {max_unread} B, RSS {rss_before} -> max {rss_max} KiB"
    );
    assert!(max_depth <= 2, "queue_depth {max_depth} over the window 2 x 1 connection");
    // The worker stopped reading at the window: bytes sat unread in its socket (a worker that
    // read everything would hold the burst in its own memory instead; its receive ring is
    // bounded at about 3.6 MB, the RSS bound leaves room for it).
    assert!(max_unread >= 64 << 10, "the worker's socket never held unread bytes: {max_unread}");
    assert!(
        (rss_max - rss_before) * 1024 < total as u64 / 2,
        "the worker's RSS grew by {} KiB for a {total} B burst",
        rss_max - rss_before
    );
}

#[test]
fn window_update_window_size_adjustment() {
    // adaptive_window (the default): frames that wait in the worker longer than twice their
    // processing shrink the window by one; frames that hardly wait grow it back, never past
    // the granted window. Each change is one WindowUpdate, counted.
    let worker = Worker::start("window", "window = 4\nadaptive_window = true");
    let mut peer = Peer::connect(worker.addr);
    let ok = peer.init(640, 480, 4);
    assert_eq!(ok.chosen.as_ref().unwrap().initial_credits, 4);
    let mut source = Synthetic::new(640, 480, 2, 1);
    let mut window = 4u32;
    let mut inflight = 0u32;
    let mut updates: Vec<u32> = Vec::new();
    let mut answered = 0u64;
    let mut next = 1u64;
    // Phase 1: a full window always in flight (the agent obeys every WindowUpdate).
    let deadline = Instant::now() + Duration::from_secs(30);
    while updates.is_empty() || answered < 40 {
        assert!(Instant::now() < deadline, "no WindowUpdate after {answered} results");
        while inflight < window {
            peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, next, 640, 480)));
            next += 1;
            inflight += 1;
        }
        match peer.recv().expect("open") {
            Payload::Result(_) => {
                answered += 1;
                inflight -= 1;
            }
            Payload::WindowUpdate(w) => {
                updates.push(w.new_window);
                window = w.new_window;
            }
            Payload::Heartbeat(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(updates[0], 3, "frames queued behind a full window: the window shrinks first");
    // Phase 2: drain, then one frame at a time: frames do not wait, the window grows back.
    while inflight > 0 {
        match peer.recv().expect("open") {
            Payload::Result(_) => inflight -= 1,
            Payload::WindowUpdate(w) => updates.push(w.new_window),
            _ => {}
        }
    }
    let shrunk = *updates.last().unwrap();
    let mut grown = false;
    for _ in 0..80 {
        peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, next, 640, 480)));
        next += 1;
        loop {
            match peer.recv().expect("open") {
                Payload::Result(_) => break,
                Payload::WindowUpdate(w) => {
                    grown |= w.new_window > shrunk;
                    updates.push(w.new_window);
                }
                _ => {}
            }
        }
        if updates.last() == Some(&4) {
            break;
        }
    }
    assert!(grown, "lockstep frames never grew the window back: {updates:?}");
    let mut prev = 4;
    for &w in &updates {
        assert!((1..=4).contains(&w), "window {w} outside 1..=granted: {updates:?}");
        assert_eq!(w.abs_diff(prev), 1, "one step at a time: {updates:?}");
        prev = w;
    }
    let n = updates.len() as u64;
    worker.wait_counter("window_size_set_events_total", |v| v == n);
}

#[test]
fn window_update_is_never_sent_with_adaptive_window_off() {
    let worker = Worker::start("window-off", "window = 3\nadaptive_window = false");
    for (asked, expect) in [(0, 3), (1, 1), (2, 2), (50, 3)] {
        let mut peer = Peer::connect(worker.addr);
        let ok = peer.init(640, 480, asked);
        assert_eq!(ok.chosen.as_ref().unwrap().initial_credits, expect, "max_inflight {asked}");
        // Full windows of frames, 40 frames: all answered, no WindowUpdate among the answers.
        let mut source = Synthetic::new(640, 480, 2, 1);
        let mut next = 1;
        for _ in 0..expect {
            peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, next, 640, 480)));
            next += 1;
        }
        for _ in 0..20 {
            match peer.recv_skip_heartbeats() {
                Some(Payload::Result(_)) => {}
                other => panic!("expected a Result, got {other:?}"),
            }
            peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, next, 640, 480)));
            next += 1;
        }
        assert!(peer.window_updates.is_empty(), "{:?}", peer.window_updates);
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(worker.counter("window_size_set_events_total"), Some(0));
}

#[test]
fn latest_wins_and_fifo_policies_are_echoed_in_init_ok() {
    let worker = Worker::start("policy", "");
    for policy in [Policy::LatestWins, Policy::Fifo] {
        let mut init = init_msg(640, 480, 4);
        init.caps.as_mut().unwrap().desired_policy = policy as i32;
        let mut peer = Peer::connect(worker.addr);
        let ok = peer.init_with(init);
        assert_eq!(ok.chosen.unwrap().policy, policy as i32);
    }
}

#[test]
fn result_correlation_frame_ids_match_and_every_frame_is_answered_once() {
    let worker = Worker::start("correlation", "");
    // Two connections at once with overlapping, sparse ids; invalid frames among the good.
    let run = |seed: u64, ids: Vec<u64>| {
        let addr = worker.addr;
        thread::spawn(move || {
            let mut peer = Peer::connect(addr);
            peer.init(320, 240, 4);
            let mut source = Synthetic::new(320, 240, 2, seed);
            let mut sent = BTreeMap::new();
            let mut answers: BTreeMap<u64, Vec<String>> = BTreeMap::new();
            let mut pending = 0;
            let receive = |peer: &mut Peer, answers: &mut BTreeMap<u64, Vec<String>>| match peer
                .recv_skip_heartbeats()
            {
                Some(Payload::Result(r)) => {
                    let fr = r.frame_ref.clone().unwrap();
                    answers.entry(r.frame_id).or_default().push(format!(
                        "result {} {} {}",
                        fr.ts_mono_ns, fr.ts_utc_ns, fr.session_id
                    ));
                }
                Some(Payload::Error(e)) => {
                    answers.entry(e.frame_id).or_default().push(format!("error {}", e.code));
                }
                other => panic!("{other:?}"),
            };
            for (i, &id) in ids.iter().enumerate() {
                let mut f = frame_msg(&mut source, RawFormat::Nv12, id, 320, 240);
                let invalid = i % 5 == 3;
                if invalid {
                    f.planes[0].size -= 1;
                }
                sent.insert(id, invalid);
                peer.send(Payload::Frame(f));
                pending += 1;
                // Keep up to the window in flight.
                if pending == 4 {
                    receive(&mut peer, &mut answers);
                    pending -= 1;
                }
            }
            for _ in 0..pending {
                receive(&mut peer, &mut answers);
            }
            (sent, answers)
        })
    };
    let a = run(1, (0..25).map(|i| 1000 + i * 7).collect());
    let b = run(2, (0..25).map(|i| 1000 + i * 7 + (i % 2)).collect());
    for h in [a, b] {
        let (sent, answers) = h.join().unwrap();
        assert_eq!(sent.keys().collect::<Vec<_>>(), answers.keys().collect::<Vec<_>>());
        for (id, invalid) in sent {
            let got = &answers[&id];
            assert_eq!(got.len(), 1, "frame {id} answered {got:?}");
            if invalid {
                assert_eq!(got[0], format!("error {}", ErrorCode::InvalidFrame as i32));
            } else {
                assert_eq!(got[0], format!("result {} {} test-session", id * 1000, id * 2000));
            }
        }
    }
}

// ---- Checklist: decode ---------------------------------------------------------------------

#[test]
fn nv12_decode_detections_match_the_synthetic_truth() {
    let worker = Worker::start("nv12", "");
    let mut peer = Peer::connect(worker.addr);
    let ok = peer.init_with(init_formats(&[PixelFormat::PfNv12], &[Codec::None], 640, 480, 4));
    assert_eq!(ok.chosen.unwrap().pixel_format, PixelFormat::PfNv12 as i32);
    let (good, checked, misses) = decode_accuracy(&mut peer, 30, (640, 480), |s, id| {
        frame_msg(s, RawFormat::Nv12, id, 640, 480)
    });
    assert_eq!(good, checked, "{misses:#?}");
    // Padded rows and the chroma plane before the luma plane, on a smaller frame (the padded
    // data must stay within max_frame_bytes): the worker honours strides and offsets (a
    // decoder that read from offset 0 with stride = width would see chroma).
    let mut peer = Peer::connect(worker.addr);
    peer.init_with(init_formats(&[PixelFormat::PfNv12], &[Codec::None], 640, 480, 4));
    let (good, checked, misses) = decode_accuracy(&mut peer, 30, (480, 360), |s, id| {
        frame_of(s.next_picture(), RawFormat::Nv12, id, 544, &[1, 0])
    });
    assert_eq!(good, checked, "strided: {misses:#?}");
}

#[test]
fn i420_decode_detections_match_the_synthetic_truth() {
    let worker = Worker::start("i420", "");
    let mut peer = Peer::connect(worker.addr);
    let ok = peer.init_with(init_formats(&[PixelFormat::PfI420], &[Codec::None], 640, 480, 4));
    assert_eq!(ok.chosen.unwrap().pixel_format, PixelFormat::PfI420 as i32);
    let (good, checked, misses) = decode_accuracy(&mut peer, 30, (640, 480), |s, id| {
        frame_msg(s, RawFormat::I420, id, 640, 480)
    });
    assert_eq!(good, checked, "{misses:#?}");
    let mut peer = Peer::connect(worker.addr);
    peer.init_with(init_formats(&[PixelFormat::PfI420], &[Codec::None], 640, 480, 4));
    let (good, checked, misses) = decode_accuracy(&mut peer, 30, (480, 360), |s, id| {
        frame_of(s.next_picture(), RawFormat::I420, id, 512, &[2, 1, 0])
    });
    assert_eq!(good, checked, "strided: {misses:#?}");
    // An NV12 frame on an I420 session is refused.
    let mut source = Synthetic::new(640, 480, 2, 1);
    peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, 99, 640, 480)));
    let e = peer.expect_error();
    assert_eq!((code(&e), e.frame_id), (ErrorCode::UnsupportedFormat, 99));
}

#[test]
fn jpeg_decode_detections_match_the_synthetic_truth() {
    let worker = Worker::start("jpeg", "");
    let mut peer = Peer::connect(worker.addr);
    let mut init =
        init_formats(&[PixelFormat::PfNv12, PixelFormat::PfJpeg], &[Codec::Jpeg], 640, 480, 4);
    init.caps.as_mut().unwrap().prefer_jpeg = true;
    let ok = peer.init_with(init);
    let chosen = ok.chosen.unwrap();
    assert_eq!(
        (chosen.pixel_format, chosen.codec),
        (PixelFormat::PfJpeg as i32, Codec::Jpeg as i32)
    );
    let raw_bytes = 640 * 480 * 3 / 2;
    let mut sizes = Vec::new();
    let (good, checked, misses) = decode_accuracy(&mut peer, 30, (640, 480), |s, id| {
        let mut data = Vec::new();
        jpeg::encode(s.next_picture(), 85, &mut data).unwrap();
        sizes.push(data.len());
        jpeg_frame(data, id, 640, 480)
    });
    assert!(sizes.iter().all(|&n| n < raw_bytes), "JPEG sizes {sizes:?}");
    assert_eq!(good, checked, "{misses:#?}");
    // Bytes that are not a JPEG: INVALID_FRAME with the frame's id, and the session goes on.
    peer.send(Payload::Frame(jpeg_frame(vec![0xff, 0xd8, 1, 2, 3, 4], 77, 640, 480)));
    let e = peer.expect_error();
    assert_eq!((code(&e), e.frame_id), (ErrorCode::InvalidFrame, 77), "{e:?}");
    let mut data = Vec::new();
    jpeg::encode(Synthetic::new(640, 480, 1, 1).next_picture(), 85, &mut data).unwrap();
    assert_eq!(lockstep(&mut peer, [jpeg_frame(data, 78, 640, 480)])[0].frame_id, 78);
}

// ---- Checklist: heartbeat and timeout ------------------------------------------------------

#[test]
fn heartbeat_both_ways_with_last_frame_id_tx_rx() {
    let worker = Worker::start("heartbeat", "heartbeat_ms = 200\npeer_timeout_ms = 1000");
    let mut peer = Peer::connect(worker.addr);
    let mut received = 0u64; // messages from the worker, heartbeats included
    peer.send(Payload::Init(init_msg(640, 480, 4)));
    let mut source = Synthetic::new(640, 480, 2, 1);
    let next = |peer: &mut Peer, received: &mut u64| {
        let m = peer.recv().expect("open");
        *received += 1;
        m
    };
    while !matches!(next(&mut peer, &mut received), Payload::InitOk(_)) {}
    for id in 1..=3 {
        peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, id, 640, 480)));
        while !matches!(next(&mut peer, &mut received), Payload::Result(_)) {}
    }
    // Quiet from the agent now: the next Heartbeat counts exactly what was exchanged.
    let hb = loop {
        if let Payload::Heartbeat(hb) = next(&mut peer, &mut received) {
            break hb;
        }
    };
    assert_eq!(hb.last_frame_id, 3, "{hb:?}");
    assert_eq!(hb.rx, 4, "Init and three Frames: {hb:?}");
    assert_eq!(hb.tx, received, "the heartbeat counts itself among the worker's sends: {hb:?}");

    // The agent's heartbeats every 150 ms keep the connection open past the 1 s peer
    // timeout; the worker's keep coming about every 200 ms.
    let (mut writer, rx) = peer.split();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut beats = Vec::new();
    while start.elapsed() < Duration::from_millis(2500) {
        let hb = proto::Heartbeat { last_frame_id: 3, tx: 5 + sent, rx: received };
        writer.write_all(&encoded(Payload::Heartbeat(hb))).unwrap();
        sent += 1;
        let until = Instant::now() + Duration::from_millis(150);
        while let Ok(seen) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            match seen {
                Seen::Msg(Payload::Heartbeat(hb), at) => beats.push((at, hb)),
                other => panic!("expected heartbeats only, got {other:?}"),
            }
        }
    }
    assert!(beats.len() >= 5, "{} worker heartbeats in 2.5 s", beats.len());
    let span = beats.last().unwrap().0 - beats[0].0;
    let mean = span / (beats.len() as u32 - 1);
    assert!(mean >= Duration::from_millis(150), "heartbeats every {mean:?}, period 200 ms");
    for pair in beats.windows(2) {
        let (a, b) = (&pair[0].1, &pair[1].1);
        assert_eq!(b.tx, a.tx + 1, "nothing but heartbeats sent: {a:?} {b:?}");
        assert!(b.rx >= a.rx, "{a:?} {b:?}");
        assert_eq!(b.last_frame_id, 3);
    }
    let (first, last) = (&beats[0].1, &beats.last().unwrap().1);
    assert!(last.rx > first.rx, "the agent's heartbeats are counted: {first:?} {last:?}");
    assert!(last.rx <= 4 + sent, "{last:?}, {sent} heartbeats sent");
    assert!(start.elapsed() > Duration::from_millis(2500));
    // Still open and serving.
    writer
        .write_all(&encoded(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, 4, 640, 480))))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Seen::Msg(Payload::Result(r), _)) => break assert_eq!(r.frame_id, 4),
            Ok(Seen::Msg(Payload::Heartbeat(_), _)) => {}
            other => panic!("expected the Result, got {other:?}"),
        }
    }
    assert_eq!(worker.counter("corelane_frames_closes_total{cause=\"peer_timeout\"}"), Some(0));
}

#[test]
fn timeout_a_silent_connection_is_closed() {
    let worker = Worker::start("timeout", "peer_timeout_ms = 1000");
    // One silent after Init, one that never sends anything.
    // (Lower bounds measured from before the last message, with 100 ms to spare for the
    // worker's clock being read at the start of its loop pass.)
    let quiet_since = Instant::now();
    let mut a = Peer::connect(worker.addr);
    a.init(640, 480, 4);
    let b_since = Instant::now();
    let mut b = Peer::connect(worker.addr);
    a.expect_close(Duration::from_secs(15));
    let a_after = quiet_since.elapsed();
    b.expect_close(Duration::from_secs(15));
    let b_after = b_since.elapsed();
    assert!(a_after >= Duration::from_millis(900), "closed after only {a_after:?}");
    assert!(b_after >= Duration::from_millis(900), "closed after only {b_after:?}");
    worker.wait_counter("corelane_frames_closes_total{cause=\"peer_timeout\"}", |v| v == 2);
}

// ---- Checklist: Result contents ------------------------------------------------------------

#[test]
fn bbox_format_is_xyxy_inside_the_frame() {
    let worker = Worker::start("bbox", "");
    let mut peer = Peer::connect(worker.addr);
    peer.init(640, 480, 4);
    let mut source = Synthetic::new(640, 480, 4, 21);
    let mut seen = 0;
    for id in 1..=25 {
        let r =
            lockstep(&mut peer, [frame_msg(&mut source, RawFormat::Nv12, id, 640, 480)]).remove(0);
        for d in &r.detections.as_ref().unwrap().items {
            let b = d.bbox.as_ref().unwrap();
            assert!(b.x2 > b.x1 && b.y2 > b.y1, "frame {id}: not xyxy {b:?}");
            assert!(b.x1 >= 0.0 && b.y1 >= 0.0 && b.x2 <= 640.0 && b.y2 <= 480.0, "{b:?}");
            assert!((0.0..=1.0).contains(&d.conf) && d.conf > 0.0, "{d:?}");
            assert_eq!(d.cls, "object");
            seen += 1;
        }
        if id >= WARM_UP {
            // xyxy, not xywh: the corners are the truth's corners.
            assert!(
                matches_truth(&boxes(&r), source.truth(), TOL),
                "frame {id}: {:?} vs {:?}",
                boxes(&r),
                source.truth()
            );
            let tracks: HashSet<_> =
                r.detections.as_ref().unwrap().items.iter().map(|d| d.track_id.clone()).collect();
            assert_eq!(tracks.len(), 4, "distinct track ids {tracks:?}");
            assert!(tracks.iter().all(|t| t.starts_with('T')), "{tracks:?}");
        }
    }
    assert!(seen > 0);
}

#[test]
fn latency_breakdown_pre_infer_post_total() {
    let worker = Worker::start("latency", "");
    let mut peer = Peer::connect(worker.addr);
    let ok = peer.init(640, 480, 4);
    let mut source = Synthetic::new(640, 480, 2, 1);
    for r in lockstep(
        &mut peer,
        (1..=10).map(|id| frame_msg(&mut source, RawFormat::Nv12, id, 640, 480)),
    ) {
        let lat = r.lat.as_ref().expect("latency present");
        assert!(lat.pre_ms > 0.0 && lat.infer_ms > 0.0 && lat.post_ms >= 0.0, "{lat:?}");
        let sum = lat.pre_ms + lat.infer_ms + lat.post_ms;
        assert!(lat.total_ms + 0.01 >= sum, "total below its parts: {lat:?}");
        assert!(lat.total_ms < 10_000.0, "{lat:?}");
        assert_eq!(
            (r.model_family.as_str(), r.model_name.as_str(), r.model_version.as_str()),
            (ok.model_family.as_str(), ok.model_name.as_str(), ok.model_version.as_str())
        );
    }
    assert_eq!((ok.model_family.as_str(), ok.model_name.as_str()), ("classical", "motion"));
}

#[test]
fn end_sends_in_flight_results_then_closes() {
    let worker = Worker::start("end", "");
    let mut peer = Peer::connect(worker.addr);
    peer.init(640, 480, 4);
    let mut source = Synthetic::new(640, 480, 2, 1);
    let mut bytes = Vec::new();
    for id in 1..=4 {
        bytes.extend(encoded(Payload::Frame(frame_msg(
            &mut source,
            RawFormat::Nv12,
            id,
            640,
            480,
        ))));
    }
    bytes.extend(encoded(Payload::End(proto::End { reason: "done".into() })));
    peer.send_raw(&bytes);
    let rest = peer.expect_close(Duration::from_secs(15));
    let ids: Vec<u64> = rest
        .iter()
        .filter_map(|m| match m {
            Payload::Result(r) => Some(r.frame_id),
            Payload::Heartbeat(_) => None,
            other => panic!("after End: {other:?}"),
        })
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    worker.wait_counter("corelane_frames_closes_total{cause=\"end\"}", |v| v == 1);
}

// ---- Hostile agents ------------------------------------------------------------------------

#[test]
fn hostile_huge_length_prefix_beside_a_good_agent() {
    let worker = Worker::start("hostile-prefix", "");
    let good = GoodAgent::start(&worker);
    good.wait_progress(0, 3, "start");
    let rss_before = worker.rss_kb();
    let from = good.results();
    for (i, len) in [u32::MAX, u32::MAX - 1, 1 << 31, 64 << 20].into_iter().enumerate() {
        let mut bad = Peer::connect(worker.addr);
        if i % 2 == 1 {
            bad.init(640, 480, 4);
        }
        let mut hostile = len.to_le_bytes().to_vec();
        hostile.extend_from_slice(&[0u8; 4096]);
        let _ = bad.try_send_raw(&hostile);
        let rest = bad.expect_close(Duration::from_secs(10));
        assert!(
            rest.iter().any(
                |m| matches!(m, Payload::Error(e) if e.code == ErrorCode::FrameTooLarge as i32)
            ),
            "prefix {len}: {rest:?}"
        );
    }
    good.wait_progress(from, 5, "the prefix attacks");
    let rss_after = worker.rss_kb();
    eprintln!("RSS around four huge prefixes: {rss_before} KiB -> {rss_after} KiB");
    assert!(rss_after < rss_before + 8 * 1024, "RSS {rss_before} -> {rss_after} KiB");
    assert!(good.finish() > from);
}

#[test]
fn hostile_endless_partial_frame_is_closed_by_the_peer_timeout() {
    let worker = Worker::start("hostile-slow", "peer_timeout_ms = 1000");
    let good = GoodAgent::start(&worker);
    good.wait_progress(0, 3, "start");
    let start = Instant::now();
    let mut bad = Peer::connect(worker.addr);
    bad.init(640, 480, 4);
    let (mut writer, rx) = bad.split();
    let from = good.results();
    writer.write_all(&400_000u32.to_le_bytes()).unwrap();
    let closed_at = loop {
        // A few bytes every 100 ms; stop when the worker has closed.
        if writer.write_all(&[0x0a, 0x01, 0x02]).is_err() {
            // The write failed: the close is on its way to the reader.
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Seen::Closed(at)) => break at,
            Ok(Seen::Msg(Payload::Heartbeat(_), _)) => {}
            Ok(other) => panic!("{other:?}"),
            Err(_) => assert!(start.elapsed() < Duration::from_secs(15), "never closed"),
        }
    };
    let after = closed_at - start;
    assert!(after >= Duration::from_millis(900), "closed after only {after:?}");
    good.wait_progress(from, 5, "the slow attack");
    worker.wait_counter("corelane_frames_closes_total{cause=\"peer_timeout\"}", |v| v >= 1);
    assert!(good.finish() > from);
}

#[test]
fn hostile_agent_that_never_reads_is_closed_by_the_backpressure_timeout() {
    // The shipped defaults (a 5 s backpressure timeout): it must strike before the write
    // timeout, or the close goes uncounted and no Error is queued (found in review).
    let worker = Worker::start("hostile-noread", "");
    let good = GoodAgent::start(&worker);
    good.wait_progress(0, 3, "start");
    let rss_before = worker.rss_kb();
    let from = good.results();
    // Small frames so results pile up fast; never read.
    let mut bad = Peer::connect(worker.addr);
    bad.init(32, 32, 4);
    let mut source = Synthetic::new(32, 32, 1, 1);
    // A long stream id (the worker echoes it in every answer) makes each Result about 3 KB,
    // so unread results outgrow the kernel's socket buffers in a few thousand frames.
    let stream_id = "s".repeat(3000);
    let frames: Vec<u8> = (1..=256)
        .flat_map(|id| {
            encoded_as(
                &stream_id,
                Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, id, 32, 32)),
            )
        })
        .collect();
    let stream = bad.stream.try_clone().unwrap();
    let flooder = thread::spawn(move || {
        let mut stream = stream;
        let mut sent = 0u64;
        while stream.write_all(&frames).is_ok() {
            sent += 1;
        }
        sent * 256
    });
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut rss_max = rss_before;
    while !flooder.is_finished() {
        assert!(Instant::now() < deadline, "the flooder was never closed: {:?}", worker.series());
        rss_max = rss_max.max(worker.rss_kb());
        thread::sleep(Duration::from_millis(50));
    }
    let frames_sent = flooder.join().unwrap();
    worker.wait_counter("backpressure_timeouts_total", |v| v == 1);
    worker.wait_counter(&error_series("BACKPRESSURE_TIMEOUT"), |v| v == 1);
    good.wait_progress(good.results(), 5, "after the flood");
    eprintln!(
        "never-reading flood: about {frames_sent} frames written, RSS {rss_before} -> max \
         {rss_max} KiB"
    );
    assert!(rss_max < rss_before + 32 * 1024, "RSS {rss_before} -> {rss_max} KiB");
    assert!(good.finish() > from);
}

// ---- Restart, scale, counters ---------------------------------------------------------------

#[test]
fn worker_restart_during_a_stream() {
    let mut worker = Worker::start("restart", "");
    let mut peer = Peer::connect(worker.addr);
    peer.init(640, 480, 4);
    let mut source = Synthetic::new(640, 480, 2, 1);
    lockstep(&mut peer, (1..=5).map(|id| frame_msg(&mut source, RawFormat::Nv12, id, 640, 480)));
    // Frames in flight when the daemon dies.
    for id in 6..=9 {
        peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, id, 640, 480)));
    }
    worker.kill();
    let rest = peer.expect_close(Duration::from_secs(10));
    assert!(
        rest.iter().all(|m| matches!(m, Payload::Result(_) | Payload::Heartbeat(_))),
        "{rest:?}"
    );
    let _ = peer.try_send_raw(&encoded(Payload::End(proto::End::default())));
    worker.launch();
    worker.assert_alive();
    let mut peer = Peer::connect(worker.addr);
    peer.init(640, 480, 4);
    let results = lockstep(
        &mut peer,
        (1..=15).map(|id| frame_msg(&mut source, RawFormat::Nv12, id, 640, 480)),
    );
    assert_eq!(results.len(), 15);
    assert!(!boxes(results.last().unwrap()).is_empty(), "the new worker detects");
    worker.assert_alive();
    worker.wait_counter("corelane_frames_results_total", |v| v == 15);
}

/// `corelane agent` (the Rust edge agent) across a worker restart: it reconnects with
/// backoff, sends Init again and finishes its run against the new worker.
#[test]
fn reconnection_the_corelane_agent_reconnects_after_a_worker_restart() {
    let mut worker = Worker::start("agent-restart", "");
    let child = std::process::Command::new(support::BIN)
        .args(["agent", "--worker", &worker.addr.to_string(), "--source", "synthetic"])
        .args(["--size", "320x240", "--fps", "20", "--frames", "60", "--policy", "fifo"])
        .args(["--json", "-q"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    worker.wait_counter("corelane_frames_results_total", |v| v >= 10);
    worker.kill();
    thread::sleep(Duration::from_millis(300));
    worker.launch();
    // The new worker serves the reconnected agent.
    worker.wait_counter("corelane_frames_results_total", |v| v >= 5);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "agent: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let n = |k: &str| summary[k].as_u64().unwrap_or_else(|| panic!("{k} in {summary}"));
    assert!(n("connections_total") >= 2, "{summary}");
    assert!(n("reconnects_total") >= 1, "{summary}");
    assert!(n("results_total") >= 15, "{summary}");
    assert_eq!(n("protocol_errors_total"), 0, "{summary}");
    eprintln!("agent across a restart: {summary}");
    worker.assert_alive();
}

#[test]
fn twenty_concurrent_good_agents_each_get_all_their_results() {
    let worker = Worker::start("twenty", "");
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (dir, stop) = (worker.dir.clone(), stop.clone());
        thread::spawn(move || {
            let mut max = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = corelane::metrics::CountersReader::open(&dir.join("counters")) {
                    if let Some(s) = r.snapshot().into_iter().find(|s| s.name == "queue_depth") {
                        max = max.max(s.value);
                    }
                }
                thread::sleep(Duration::from_millis(10));
            }
            max
        })
    };
    let agents: Vec<_> = (0..20u64)
        .map(|a| {
            let addr = worker.addr;
            thread::spawn(move || {
                let mut peer = Peer::connect_timeout(addr, Duration::from_secs(30));
                peer.init(160, 120, 2);
                let mut source = Synthetic::new(160, 120, 1, a);
                let mut got = Vec::new();
                let mut next = 1;
                while next <= 2 {
                    peer.send(Payload::Frame(frame_msg(
                        &mut source,
                        RawFormat::Nv12,
                        next,
                        160,
                        120,
                    )));
                    next += 1;
                }
                while got.len() < 15 {
                    got.push(peer.expect_result().frame_id);
                    if next <= 15 {
                        peer.send(Payload::Frame(frame_msg(
                            &mut source,
                            RawFormat::Nv12,
                            next,
                            160,
                            120,
                        )));
                        next += 1;
                    }
                }
                got
            })
        })
        .collect();
    for (a, h) in agents.into_iter().enumerate() {
        let got = h.join().unwrap_or_else(|_| panic!("agent {a} failed: {}", worker.log()));
        assert_eq!(got, (1..=15).collect::<Vec<_>>(), "agent {a}");
    }
    stop.store(true, Ordering::Relaxed);
    let max_depth = sampler.join().unwrap();
    assert!(max_depth <= 40, "queue_depth {max_depth} over window 2 x 20 connections");
    worker.wait_counter("corelane_frames_results_total", |v| v == 300);
    worker.wait_counter("queue_depth", |v| v == 0);
}

#[test]
fn counters_file_series_move_as_expected() {
    let worker = Worker::start("counters", "");
    let mut peer = Peer::connect(worker.addr);
    peer.init(640, 480, 4);
    let mut source = Synthetic::new(640, 480, 2, 1);
    lockstep(&mut peer, (1..=5).map(|id| frame_msg(&mut source, RawFormat::Nv12, id, 640, 480)));
    for id in [6, 7] {
        let mut f = frame_msg(&mut source, RawFormat::Nv12, id, 640, 480);
        f.planes[1].size = 1;
        peer.send(Payload::Frame(f));
        assert_eq!(code(&peer.expect_error()), ErrorCode::InvalidFrame);
    }
    peer.send_envelope(&envelope(3, MsgType::End, Some(Payload::End(proto::End::default()))));
    assert_eq!(code(&peer.expect_error()), ErrorCode::VersionUnsupported);
    // While the connection is open: live session counters are published.
    worker.wait_counter("frames_decoded_total", |v| v == 5);
    worker.wait_counter("corelane_frames_accepted_total", |v| v == 5);
    worker.wait_counter("corelane_frames_results_total", |v| v == 5);
    worker.wait_counter(&error_series("INVALID_FRAME"), |v| v == 2);
    worker.wait_counter(&error_series("VERSION_UNSUPPORTED"), |v| v == 1);
    worker.wait_counter("corelane_frames_connections", |v| v == 1);
    worker.wait_counter("results_bytes_total", |v| v > 5 * 20);
    peer.send(Payload::End(proto::End::default()));
    peer.expect_close(Duration::from_secs(10));
    // After the close: the totals keep the closed session's counts.
    worker.wait_counter("corelane_frames_closes_total{cause=\"end\"}", |v| v == 1);
    worker.wait_counter("corelane_frames_connections", |v| v == 0);
    worker.wait_counter("corelane_frames_results_total", |v| v == 5);
    worker.wait_counter(&error_series("INVALID_FRAME"), |v| v == 2);
    worker.wait_counter("queue_depth", |v| v == 0);
    // The readiness probe of `launch` and this connection.
    worker.wait_counter("corelane_frames_connections_total", |v| v >= 2);
    for (name, want) in [
        ("backpressure_timeouts_total", 0),
        ("window_size_set_events_total", 0),
        ("corelane_frames_closes_total{cause=\"too_large\"}", 0),
        ("corelane_frames_closes_total{cause=\"peer_timeout\"}", 0),
    ] {
        assert_eq!(worker.counter(name), Some(want), "{name}");
    }
    assert_eq!(worker.counter(&error_series("BAD_MESSAGE")), Some(0));
}

// ---- Transport only ------------------------------------------------------------------------

#[test]
fn transport_only_detector_none_answers_every_frame_with_an_empty_result() {
    let worker = Worker::start("none", "detector = \"none\"");
    let mut peer = Peer::connect(worker.addr);
    let ok = peer.init(640, 480, 4);
    assert_eq!((ok.model_family.as_str(), ok.model_name.as_str()), ("none", "none"));
    let mut source = Synthetic::new(640, 480, 3, 5);
    for id in 1..=4 {
        peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, id, 640, 480)));
    }
    for id in 1..=4 {
        match peer.recv_skip_heartbeats() {
            Some(Payload::Result(r)) => {
                assert_eq!(r.frame_id, id);
                assert_eq!(r.model_family, "none");
                assert!(r.detections.unwrap_or_default().items.is_empty());
                assert_eq!(r.frame_ref.unwrap().ts_mono_ns, id * 1000);
            }
            other => panic!("frame {id}: {other:?}"),
        }
    }
    // Still validated: a bad frame is refused as with a detector.
    let mut bad = frame_msg(&mut source, RawFormat::Nv12, 5, 640, 480);
    bad.planes[1].size -= 1;
    peer.send(Payload::Frame(bad));
    match peer.recv_skip_heartbeats() {
        Some(Payload::Error(e)) => {
            assert_eq!((e.code, e.frame_id), (ErrorCode::InvalidFrame as i32, 5))
        }
        other => panic!("{other:?}"),
    }
    // Nothing was decoded: the detector lane never saw a frame.
    worker.wait_counter("corelane_frames_results_total", |v| v == 4);
    assert_eq!(worker.counter("frames_decoded_total"), Some(0));
}

// ---- Review findings ------------------------------------------------------------------------

/// Connect, Init at 1920x1080 with a window of 4, four full frames, close, over and over:
/// without a worker-wide budget the frames of closed connections piled up for the detector
/// (2 GB in review). With it the queue stays bounded, the closed connections' detector
/// state goes, and a good agent is served afterwards.
#[test]
fn hostile_churn_of_connections_with_full_windows_costs_bounded_memory() {
    let worker =
        Worker::start("churn", "max_queued_bytes = 16777216\nmax_width = 1920\nmax_height = 1080");
    let rss_before = worker.rss_kb();
    let mut source = Synthetic::new(1920, 1080, 2, 1);
    let frames: Vec<Vec<u8>> = (1..=4)
        .map(|id| encoded(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, id, 1920, 1080))))
        .collect();
    let (mut rss_max, mut depth_max, mut rounds) = (rss_before, 0, 0);
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let Ok(mut stream) = std::net::TcpStream::connect(worker.addr) else { continue };
        let _ = stream.write_all(&encoded(Payload::Init(support::init_msg(1920, 1080, 4))));
        for f in &frames {
            if stream.write_all(f).is_err() {
                break;
            }
        }
        drop(stream);
        rounds += 1;
        if rounds % 4 == 0 {
            rss_max = rss_max.max(worker.rss_kb());
            depth_max = depth_max.max(worker.counter("queue_depth").unwrap_or(0));
        }
    }
    // 16 MiB of queued frames is five 3.1 MB frames (the budget is checked before each).
    assert!(depth_max <= 6, "queue_depth {depth_max} over the 16 MiB budget");
    eprintln!("churn: {rounds} connections, RSS {rss_before} -> max {rss_max} KiB, queue_depth max {depth_max}");
    assert!(rss_max < rss_before + 400 * 1024, "RSS {rss_before} -> {rss_max} KiB");
    worker.wait_counter("corelane_frames_detector_streams", |v| v == 0);
    worker.wait_counter("queue_depth", |v| v == 0);
    let mut peer = Peer::connect(worker.addr);
    peer.init(640, 480, 4);
    still_works(&mut peer, 1);
}

#[test]
fn a_half_closed_agent_gets_its_in_flight_results_before_the_close() {
    let worker = Worker::start("half-close", "");
    let mut peer = Peer::connect(worker.addr);
    peer.init(640, 480, 4);
    let mut source = Synthetic::new(640, 480, 2, 1);
    for id in 1..=4 {
        peer.send(Payload::Frame(frame_msg(&mut source, RawFormat::Nv12, id, 640, 480)));
    }
    peer.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let rest = peer.expect_close(Duration::from_secs(20));
    let ids: Vec<u64> = rest
        .iter()
        .filter_map(|m| match m {
            Payload::Result(r) => Some(r.frame_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4], "{rest:?}");
}

#[test]
fn a_connection_that_never_sends_init_is_closed_at_the_init_timeout() {
    let worker = Worker::start("init-timeout", "init_timeout_ms = 300");
    let mut silent = Peer::connect(worker.addr);
    silent.expect_close(Duration::from_secs(10));
    worker.wait_counter("corelane_frames_closes_total{cause=\"init_timeout\"}", |v| v == 1);
    let mut peer = Peer::connect(worker.addr);
    peer.init(640, 480, 1);
    still_works(&mut peer, 1);
}
