//! Suite `frames`: frame protocol v1 (TCP, length-prefixed protobuf envelopes) into the real
//! frame worker (a `corelane run` child: its `frames` agent on a lane pinned to cpu B, its
//! detector on a lane of its own), transport only (`detector = "none"`) and with the motion
//! detector, next to a plain blocking TCP server that reads the same bytes and answers each
//! message with a fixed reply of the same size, in the same run; and the motion detector's
//! time per frame.
//!
//! What each case measures and how: `HELP` below and `perf/README.md`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corelane::frames::codec::{self, PREFIX_BYTES};
use corelane::frames::detector::{Detection, Detector, Picture};
use corelane::frames::proto::{self, envelope::Payload, Envelope, MsgType};
use corelane::frames::vision::motion::{MotionConfig, MotionDetector};
use corelane::frames::vision::synthetic::Synthetic;
use corelane::frames::vision::yuv::{self, RawFormat};
use serde_json::json;

use super::{Plan, Suite};
use crate::floor::{self, Ratios};
use crate::pin::{pin_current, Pair};
use crate::report::{Baseline, Goal, Measure, Peer, Report, Row};
use crate::summary::{accumulate, histogram, histogram_of, median, Rounds, Summary};

pub const SUITE: Suite = Suite {
    name: "frames",
    summary: "frame protocol v1 into the daemon's frame worker vs a plain blocking TCP server; the motion detector",
    help: HELP,
    run,
    child: None,
};

const HELP: &str = "\
    Implementations:
      corelane         a real `corelane run` child (target/release/corelane) with
                       [frames] detector = \"none\" (transport only: frames validated, copied
                       and handed to the detector lane, answered with empty Results, never
                       decoded): lane \"main\" (agents control, frames) pinned to cpu B;
                       lane \"detect\" (agent frames-detector) unpinned; both idle backoff, as
                       shipped (a spinning main lane halved the frames/s on 2 cpus: it starved
                       the detector lane); adaptive_window = false, so the window stays
                       what InitOk granted (the client still adopts any WindowUpdate; the
                       settings count them); metrics, pool and alloc off;
                       CORELANE_FRAMES_LISTEN = 127.0.0.1:<free port>. The client (a thread
                       pinned to cpu A, blocking TcpStream, TCP_NODELAY) sends Init, reads
                       InitOk, then frames: each a length-prefixed Envelope made by
                       corelane::frames::codec::encode (pre-encoded, only the frame_id patched
                       per send), and reads each Result (codec::split; msg_type, frame_id and
                       lat read in place, no allocation), checking every frame_id in order
      corelane-motion  the same with detector = \"motion\" (the built-in classical detector
                       and tracker on every frame)
      raw-tcp          what a user would write instead: a std TcpListener thread pinned to
                       cpu B, blocking, TCP_NODELAY, that reads a u32 length and the body (the
                       very bytes the corelane client sends; no protobuf decode, no
                       validation) and answers each with a fixed reply of the size of
                       corelane's (detector none) median Result in that case, measured in the
                       same run; its first 8 body bytes the server's message count (checked)
    Cases:
      throughput-nv12-640x480  NV12 640x480 frames (Synthetic, 3 moving objects; 32 frames
                       pre-encoded, sent in turn), window 4: the client keeps 4 frames in
                       flight and sends the next as each answer arrives. Frames/s and MB/s (of
                       encoded messages, prefix included) from the last warm-up answer to the
                       last answer; and the round trip of each frame (its send to its answer).
                       20 [10] warm-up + 1,000 [200] timed frames per round
      rtt-small        NV12 64x48 frames (1 object), one in flight: the round trip per frame.
                       500 [200] warm-up + 10,000 [2,000] timed frames per round. Goal: corelane
                       (detector none) p99 < 100 us
      detector-motion-640x480  the classical detector's time per frame: motion-inproc =
                       MotionDetector::detect (default MotionConfig) in this process on a
                       thread pinned to cpu B, Synthetic 640x480 frames unpacked from NV12
                       outside the timing; corelane-motion = the Results' lat.infer_ms of the
                       throughput case (the same detector on the worker's detect lane).
                       50 [10] warm-up + 500 [100] timed frames per round
      worker-pre-640x480, worker-total-640x480, worker-infer-64x48, worker-total-64x48
                       from the same runs' Results: lat.pre_ms (NV12 unpack), lat.total_ms
                       (the frame's arrival on the main lane to its result: the lane hop,
                       queueing behind the window and the detector) and lat.infer_ms
    Ratios: p50/flr and p99/flr are medians over rounds of the percentile over the floor's of
    the same round; against peers, each corelane row's over raw-tcp's, round by round. A fresh
    daemon (or server thread) per measurement; implementations in an order rotated every round.
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    /// The worker with `detector = "none"`: transport only.
    Corelane,
    /// The worker with the motion detector.
    CorelaneMotion,
    RawTcp,
}

/// corelane first: round 0 runs it before raw-tcp, which needs its Result size.
const IMPLS: [Impl; 3] = [Impl::Corelane, Impl::CorelaneMotion, Impl::RawTcp];
/// Index of raw-tcp in [`IMPLS`].
const RAW: usize = 2;

impl Impl {
    /// `[frames] detector` of the daemon.
    fn detector(self) -> &'static str {
        match self {
            Impl::CorelaneMotion => "motion",
            _ => "none",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Impl::Corelane => "corelane",
            Impl::CorelaneMotion => "corelane-motion",
            Impl::RawTcp => "raw-tcp",
        }
    }

    fn api(self) -> &'static str {
        match self {
            Impl::Corelane => {
                "codec::encode'd Frame, blocking write_all; Result via codec::split (worker, detector none)"
            }
            Impl::CorelaneMotion => {
                "codec::encode'd Frame, blocking write_all; Result via codec::split (worker, detector motion)"
            }
            Impl::RawTcp => "the same bytes, blocking write_all; u32 length + body, fixed reply (no decode)",
        }
    }
}

/// A streaming case.
#[derive(Clone, Copy, Debug)]
struct Stream {
    name: &'static str,
    width: u32,
    height: u32,
    /// Frames in flight.
    window: u32,
    /// Moving objects in the synthetic scene.
    objects: usize,
    /// Case names of the Result latencies this case's corelane runs report.
    infer_case: &'static str,
    pre_case: Option<&'static str>,
    total_case: &'static str,
}

const THROUGHPUT: Stream = Stream {
    name: "throughput-nv12-640x480",
    width: 640,
    height: 480,
    window: 4,
    objects: 3,
    infer_case: DETECTOR_CASE,
    pre_case: Some("worker-pre-640x480"),
    total_case: "worker-total-640x480",
};

const RTT: Stream = Stream {
    name: "rtt-small",
    width: 64,
    height: 48,
    window: 1,
    objects: 1,
    infer_case: "worker-infer-64x48",
    pre_case: None,
    total_case: "worker-total-64x48",
};

const DETECTOR_CASE: &str = "detector-motion-640x480";

/// Frames pre-encoded per case and sent in turn.
const DISTINCT_FRAMES: usize = 32;
/// Frame ids start here: every id below 2^63 from it encodes as a 9-byte varint, so the
/// pre-encoded envelopes are patched in place.
const ID_BASE: u64 = 1 << 56;
/// Bytes of a frame_id varint from [`ID_BASE`].
const ID_BYTES: usize = 9;
/// The longest any wait of a measurement may take.
const HANG: Duration = Duration::from_secs(60);
/// Largest reply the client takes.
const REPLY_LIMIT: usize = 1 << 20;

fn run(plan: &Plan) -> Report {
    let quick = plan.quick;
    let dir = std::env::temp_dir().join(format!("corelane-perf-frames-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| fail(&format!("cannot make {}: {e}", dir.display())));
    let streams: Vec<(Stream, u64, u64)> = [
        (THROUGHPUT, if quick { (10, 200) } else { (20, 1_000) }),
        (RTT, if quick { (200, 2_000) } else { (500, 10_000) }),
    ]
    .into_iter()
    .filter(|(s, _)| plan.wants(s.name))
    .map(|(s, (w, t))| (s, w, t))
    .collect();
    let detector = plan.wants(DETECTOR_CASE);
    let (det_warmup, det_timed) = if quick { (10, 100) } else { (50, 500) };
    let bin = if streams.is_empty() {
        None
    } else {
        Some(crate::daemon_bin::daemon_binary().unwrap_or_else(|e| fail(&e)))
    };
    let env = Env { pair: plan.pair, dir: dir.clone(), bin, measurement: AtomicU64::new(0) };
    let (floor_warmup, floor_samples) = if quick { (200, 2_000) } else { (2_000, 20_000) };

    let encoded: Vec<Encoded> = streams.iter().map(|(s, _, _)| Encoded::new(s)).collect();
    let mut acc: Vec<CaseAcc> = streams.iter().map(|_| CaseAcc::new()).collect();
    let mut det_all = Rounds::default();
    let mut floor_all = histogram();
    for round in 0..plan.rounds as usize {
        plan.before_round(round);
        crate::progress::round(SUITE.name, round, plan.rounds);
        let floor_round = histogram_of(&floor::measure(&plan.pair, floor_warmup, floor_samples));
        accumulate(&mut floor_all, &floor_round);
        let floor_round = Summary::of(&floor_round);
        for (c, &(stream, warmup, timed)) in streams.iter().enumerate() {
            let mut round_rtt = [Summary::default(); 3];
            let mut round_rate = [0.0; 3];
            for k in 0..IMPLS.len() {
                let i = (k + round) % IMPLS.len();
                let imp = IMPLS[i];
                if imp == Impl::RawTcp && !plan.peers {
                    continue;
                }
                let reply_len = acc[c].reply_len;
                let m = measure(&env, imp, &stream, &encoded[c], warmup, timed, reply_len);
                if imp == Impl::Corelane && acc[c].reply_len.is_none() {
                    acc[c].reply_len = Some(m.reply_len);
                }
                let h = histogram_of(&m.rtt_ns);
                round_rtt[i] = Summary::of(&h);
                round_rate[i] = m.rate;
                let a = &mut acc[c];
                a.rtt[i].push(&h);
                a.rates[i].push(m.rate);
                a.window_updates[i] += m.window_updates;
                a.floor_ratios[i].push(&round_rtt[i], &floor_round);
                if imp != Impl::RawTcp {
                    a.infer[i].push(&histogram_of(&m.infer_ns));
                    a.pre[i].push(&histogram_of(&m.pre_ns));
                    a.total[i].push(&histogram_of(&m.total_ns));
                }
            }
            let a = &mut acc[c];
            for i in 0..RAW {
                a.peer_ratios[i].push(&round_rtt[i], &round_rtt[RAW]);
                if round_rate[RAW] > 0.0 {
                    a.rate_ratio[i].push(round_rate[i] / round_rate[RAW]);
                }
            }
        }
        if detector {
            let h = histogram_of(&detect_in_process(plan.pair.b, det_warmup, det_timed));
            det_all.push(&h);
        }
    }
    crate::progress::done();

    let mut rows = Vec::new();
    let mut goals = Vec::new();
    let mut reply_lens = serde_json::Map::new();
    let mut message_lens = serde_json::Map::new();
    let mut window_updates = serde_json::Map::new();
    for (c, (stream, _, _)) in streams.iter().enumerate() {
        let a = &acc[c];
        reply_lens.insert(stream.name.into(), json!(a.reply_len));
        message_lens.insert(stream.name.into(), json!(encoded[c].message_len));
        window_updates.insert(
            stream.name.into(),
            json!({"corelane": a.window_updates[0], "corelane-motion": a.window_updates[1]}),
        );
        // Without raw-tcp (`--no-peers`): corelane's rows only, no ratios to it.
        let imps = &IMPLS[..if plan.peers { IMPLS.len() } else { RAW }];
        for (i, imp) in imps.iter().enumerate() {
            let peers = if *imp == Impl::RawTcp || !plan.peers {
                Vec::new()
            } else {
                vec![Peer {
                    imp: Impl::RawTcp.name(),
                    p50: a.peer_ratios[i].p50(),
                    p99: a.peer_ratios[i].p99(),
                }]
            };
            let summary = Summary::of(a.rtt[i].all());
            rows.push(Row {
                imp: imp.name(),
                case: stream.name,
                api: imp.api(),
                measure: Measure::Latency {
                    summary,
                    rounds: a.rtt[i].clone(),
                    ratio_p50: a.floor_ratios[i].p50(),
                    ratio_p99: a.floor_ratios[i].p99(),
                    baseline: Baseline::Floor,
                    peers,
                },
            });
            if *imp == Impl::Corelane && stream.name == RTT.name {
                goals.push(Goal::at_most(
                    "corelane rtt-small p99 < 100 us (detector none, 64x48 NV12)",
                    Some(summary.p99 as f64),
                    100_000.0,
                    " ns",
                ));
            }
        }
        if stream.window > 1 {
            let bytes = encoded[c].message_len as u64;
            for (i, imp) in imps.iter().enumerate() {
                let rates = &a.rates[i];
                let med = median(rates).unwrap_or(0.0);
                rows.push(Row {
                    imp: imp.name(),
                    case: stream.name,
                    api: "frames answered per second, window 4",
                    measure: Measure::Rate {
                        median: med,
                        min: rates.iter().copied().fold(f64::INFINITY, f64::min),
                        max: rates.iter().copied().fold(0.0, f64::max),
                        rounds: rates.len(),
                        bytes_per_item: Some(bytes),
                    },
                });
                rows.push(Row {
                    imp: imp.name(),
                    case: stream.name,
                    api: "frames/s, median over rounds",
                    measure: Measure::Value { value: med.round() as u64, unit: "frames/s" },
                });
                rows.push(Row {
                    imp: imp.name(),
                    case: stream.name,
                    api: "MB/s (1e6 bytes of encoded messages, prefix included), median",
                    measure: Measure::Value {
                        value: (med * bytes as f64 / 1e6).round() as u64,
                        unit: "MB/s",
                    },
                });
            }
            for (i, imp) in IMPLS[..RAW].iter().enumerate().filter(|_| plan.peers) {
                rows.push(Row {
                    imp: imp.name(),
                    case: stream.name,
                    api: "frames/s over raw-tcp's in the same round, median over rounds",
                    measure: Measure::Value {
                        value: (median(&a.rate_ratio[i]).unwrap_or(0.0) * 100.0).round() as u64,
                        unit: "% of raw-tcp",
                    },
                });
            }
        }
        let worker = |imp: Impl, case: &'static str, h: &Rounds, api: &'static str| Row {
            imp: imp.name(),
            case,
            api,
            measure: Measure::Latency {
                summary: Summary::of(h.all()),
                rounds: h.clone(),
                ratio_p50: None,
                ratio_p99: None,
                baseline: Baseline::Floor,
                peers: Vec::new(),
            },
        };
        let (none, motion) = (Impl::Corelane, Impl::CorelaneMotion);
        let api = "Result.lat.infer_ms (motion detector)";
        rows.push(worker(motion, stream.infer_case, &a.infer[1], api));
        if let Some(case) = stream.pre_case {
            rows.push(worker(motion, case, &a.pre[1], "Result.lat.pre_ms (NV12 unpack)"));
        }
        let api = "Result.lat.total_ms (arrival to result)";
        rows.push(worker(none, stream.total_case, &a.total[0], api));
        rows.push(worker(motion, stream.total_case, &a.total[1], api));
    }
    if detector {
        rows.push(Row {
            imp: "motion-inproc",
            case: DETECTOR_CASE,
            api: "MotionDetector::detect in this process (default MotionConfig)",
            measure: Measure::Latency {
                summary: Summary::of(det_all.all()),
                rounds: det_all,
                ratio_p50: None,
                ratio_p99: None,
                baseline: Baseline::Floor,
                peers: Vec::new(),
            },
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Report {
        suite: SUITE.name,
        floor: (!floor_all.is_empty()).then(|| Summary::of(&floor_all)),
        rows,
        goals,
        settings: json!({
            "rounds": plan.rounds, "quick": plan.quick,
            "window_throughput": THROUGHPUT.window,
            "adaptive_window": false,
            "window_updates": window_updates,
            "message_bytes": message_lens,
            "raw_tcp_reply_bytes": reply_lens,
            "detector_warmup": det_warmup, "detector_samples_per_round": det_timed,
            "daemon": "lane main (control, frames) on cpu B; lane detect (frames-detector) unpinned; both idle backoff",
            "client": "cpu A, blocking TcpStream, TCP_NODELAY",
            "detector": "corelane: [frames] detector = none; corelane-motion: motion",
        }),
    }
}

/// What one case accumulates over rounds.
struct CaseAcc {
    /// Round trip per frame, per impl (IMPLS order).
    rtt: [Rounds; 3],
    floor_ratios: [Ratios; 3],
    /// corelane's (and corelane-motion's) over raw-tcp's, round by round.
    peer_ratios: [Ratios; RAW],
    /// Frames/s per round, per impl.
    rates: [Vec<f64>; 3],
    /// WindowUpdates the client adopted, per impl (0 expected: adaptive_window = false).
    window_updates: [u64; 3],
    rate_ratio: [Vec<f64>; RAW],
    /// From the Results, per impl (raw-tcp's stay empty).
    infer: [Rounds; 3],
    pre: [Rounds; 3],
    total: [Rounds; 3],
    /// Median Result message bytes (prefix included), from corelane's first measurement.
    reply_len: Option<usize>,
}

impl CaseAcc {
    fn new() -> Self {
        CaseAcc {
            rtt: Default::default(),
            floor_ratios: Default::default(),
            peer_ratios: Default::default(),
            rates: Default::default(),
            window_updates: [0; 3],
            rate_ratio: Default::default(),
            infer: Default::default(),
            pre: Default::default(),
            total: Default::default(),
            reply_len: None,
        }
    }
}

fn fail(why: &str) -> ! {
    eprintln!("\nerror: frames: {why}");
    std::process::exit(4)
}

struct Env {
    pair: Pair,
    dir: PathBuf,
    bin: Option<PathBuf>,
    measurement: AtomicU64,
}

impl Env {
    fn fresh_dir(&self) -> PathBuf {
        let n = self.measurement.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(format!("m{n}"));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| fail(&format!("cannot make {}: {e}", dir.display())));
        dir
    }
}

/// A case's frames, encoded once: each a whole length-prefixed Envelope whose frame_id sits
/// at `id_at` as a 9-byte varint.
struct Encoded {
    messages: Vec<Vec<u8>>,
    id_at: usize,
    message_len: usize,
}

impl Encoded {
    fn new(s: &Stream) -> Self {
        let mut source = Synthetic::new(s.width, s.height, s.objects, 7);
        let mut data = Vec::new();
        let mut messages = Vec::with_capacity(DISTINCT_FRAMES);
        for _ in 0..DISTINCT_FRAMES {
            let (planes, n) = source.frame(RawFormat::Nv12, &mut data);
            let frame = proto::Frame {
                frame_id: ID_BASE,
                ts_mono_ns: 1,
                ts_pdt_ns: 1,
                ts_utc_ns: 1,
                width: s.width,
                height: s.height,
                pixel_format: proto::PixelFormat::PfNv12 as i32,
                codec: proto::Codec::None as i32,
                planes: planes[..n]
                    .iter()
                    .map(|p| proto::Plane {
                        stride: p.stride as u32,
                        offset: p.offset as u32,
                        size: p.size as u32,
                    })
                    .collect(),
                color_space: "BT.709".into(),
                color_range: "full".into(),
                data: data.clone(),
                session_id: "perf".into(),
            };
            let mut out = Vec::new();
            codec::encode("cam0", Payload::Frame(frame), &mut out);
            messages.push(out);
        }
        // The Frame's field 1 (tag 0x08) with ID_BASE: the first occurrence is the frame_id
        // (the envelope's fields before it are the version, the stream id and the msg_type).
        let mut pattern = vec![0x08];
        pattern.extend_from_slice(&varint9(ID_BASE));
        let id_at = messages[0]
            .windows(pattern.len())
            .position(|w| w == pattern.as_slice())
            .expect("an encoded Frame carries its frame_id")
            + 1;
        let message_len = messages[0].len();
        assert!(messages.iter().all(|m| m.len() == message_len && m[id_at - 1] == 0x08));
        Encoded { messages, id_at, message_len }
    }
}

/// `id` (in `2^56..2^63`) as a protobuf varint of exactly 9 bytes.
fn varint9(id: u64) -> [u8; ID_BYTES] {
    debug_assert!((ID_BASE..1 << 63).contains(&id));
    let mut out = [0u8; ID_BYTES];
    let mut v = id;
    for (i, b) in out.iter_mut().enumerate() {
        *b = (v & 0x7f) as u8 | if i < ID_BYTES - 1 { 0x80 } else { 0 };
        v >>= 7;
    }
    out
}

/// One measurement's results.
struct Measured {
    /// Send to answer, per timed frame.
    rtt_ns: Vec<u64>,
    /// Timed frames per second (answers).
    rate: f64,
    /// corelane only: the Results' lat fields, ns.
    infer_ns: Vec<u64>,
    pre_ns: Vec<u64>,
    total_ns: Vec<u64>,
    /// Median answer bytes (prefix included).
    reply_len: usize,
    /// WindowUpdates received (adopted).
    window_updates: u64,
}

fn measure(
    env: &Env,
    imp: Impl,
    s: &Stream,
    enc: &Encoded,
    warmup: u64,
    timed: u64,
    reply_len: Option<usize>,
) -> Measured {
    match imp {
        Impl::Corelane | Impl::CorelaneMotion => {
            let daemon = Daemon::start(env, imp.detector());
            let mut client = Client::connect(daemon.addr, &daemon);
            client.init(s, &daemon);
            let m = client.stream(Answer::Result, s.window, enc, warmup, timed, &daemon);
            client.end();
            drop(daemon);
            m
        }
        Impl::RawTcp => {
            let reply_len = reply_len.unwrap_or_else(|| fail("raw-tcp ran before corelane"));
            let listener = TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| fail(&format!("raw-tcp bind: {e}")));
            let addr = listener.local_addr().unwrap_or_else(|e| fail(&e.to_string()));
            let (b, limit) = (env.pair.b, enc.message_len);
            let server = std::thread::spawn(move || raw_server(listener, b, limit, reply_len));
            let mut client = Client::connect(addr, &NoDaemon);
            let m = client.stream(Answer::Raw(reply_len), s.window, enc, warmup, timed, &NoDaemon);
            drop(client);
            let served = server.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            if served != warmup + timed {
                fail(&format!(
                    "raw-tcp served {served} messages, the client sent {}",
                    warmup + timed
                ));
            }
            m
        }
    }
}

/// The baseline server: blocking reads of a u32 length and the body, one fixed reply each
/// (its first 8 body bytes the count of messages so far). Returns the messages served.
fn raw_server(listener: TcpListener, cpu: usize, limit: usize, reply_len: usize) -> u64 {
    pin_current(cpu);
    let (mut s, _) = listener.accept().unwrap_or_else(|e| fail(&format!("raw-tcp accept: {e}")));
    s.set_nodelay(true).unwrap_or_else(|e| fail(&format!("raw-tcp nodelay: {e}")));
    let mut body = vec![0u8; limit];
    let mut reply = vec![0x5au8; reply_len.max(PREFIX_BYTES + 8)];
    let reply_body = (reply.len() - PREFIX_BYTES) as u32;
    reply[..PREFIX_BYTES].copy_from_slice(&reply_body.to_le_bytes());
    let mut served = 0u64;
    loop {
        let mut prefix = [0u8; PREFIX_BYTES];
        match s.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return served,
            Err(e) => fail(&format!("raw-tcp read: {e}")),
        }
        let len = u32::from_le_bytes(prefix) as usize;
        if len > body.len() {
            fail(&format!("raw-tcp: a message of {len} bytes, expected at most {}", body.len()));
        }
        s.read_exact(&mut body[..len]).unwrap_or_else(|e| fail(&format!("raw-tcp read: {e}")));
        served += 1;
        reply[PREFIX_BYTES..PREFIX_BYTES + 8].copy_from_slice(&served.to_le_bytes());
        s.write_all(&reply).unwrap_or_else(|e| fail(&format!("raw-tcp write: {e}")));
    }
}

/// How the client reads answers.
#[derive(Clone, Copy)]
enum Answer {
    /// The worker's Envelopes: a Result per frame (Heartbeats skipped, an Error ends the run).
    Result,
    /// raw-tcp's fixed replies of this many bytes.
    Raw(usize),
}

/// Something whose log a failure shows.
trait Logs {
    fn log_tail(&self) -> String;
}

struct NoDaemon;

impl Logs for NoDaemon {
    fn log_tail(&self) -> String {
        String::new()
    }
}

/// A blocking v1 client (also raw-tcp's).
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Client {
    fn connect(addr: SocketAddr, logs: &dyn Logs) -> Client {
        let s = TcpStream::connect(addr)
            .unwrap_or_else(|e| fail(&format!("connect {addr}: {e}; {}", logs.log_tail())));
        s.set_nodelay(true).unwrap_or_else(|e| fail(&e.to_string()));
        s.set_read_timeout(Some(HANG)).unwrap_or_else(|e| fail(&e.to_string()));
        Client { s, buf: vec![0u8; 256 << 10], start: 0, end: 0 }
    }

    /// Init asking for the case's size and window; checks InitOk's choice.
    fn init(&mut self, st: &Stream, logs: &dyn Logs) {
        let init = proto::Init {
            model: "motion".into(),
            caps: Some(proto::Capabilities {
                accepted_pixel_formats: vec![proto::PixelFormat::PfNv12 as i32],
                accepted_codecs: vec![proto::Codec::None as i32],
                max_width: st.width,
                max_height: st.height,
                max_inflight: st.window,
                ..Default::default()
            }),
            session_id: "perf".into(),
        };
        let mut out = Vec::new();
        codec::encode("cam0", Payload::Init(init), &mut out);
        self.s.write_all(&out).unwrap_or_else(|e| fail(&format!("send Init: {e}")));
        loop {
            let body = self.next_message(logs).to_vec();
            let mut env = Envelope::default();
            codec::decode(&body, &mut env).unwrap_or_else(|e| fail(&format!("InitOk: {e}")));
            match env.payload {
                Some(Payload::Heartbeat(_)) => continue,
                Some(Payload::InitOk(ok)) => {
                    let c = ok.chosen.unwrap_or_default();
                    if (c.width, c.height, c.initial_credits) != (st.width, st.height, st.window)
                        || c.pixel_format != proto::PixelFormat::PfNv12 as i32
                    {
                        fail(&format!(
                            "InitOk chose {c:?}, expected NV12 {}x{} window {}",
                            st.width, st.height, st.window
                        ));
                    }
                    return;
                }
                other => fail(&format!("expected InitOk, got {other:?}; {}", logs.log_tail())),
            }
        }
    }

    /// `warmup + timed` frames with `window` in flight; the round trip of each timed frame
    /// and the answer rate from the last warm-up answer on.
    fn stream(
        &mut self,
        answer: Answer,
        window: u32,
        enc: &Encoded,
        warmup: u64,
        timed: u64,
        logs: &dyn Logs,
    ) -> Measured {
        let total = (warmup + timed) as usize;
        let mut messages = enc.messages.clone();
        let now = Instant::now();
        // Faulted in before timing (see pair::time_round_trips).
        let mut sent_at = vec![now; total];
        let mut answered_at = vec![now; total];
        let mut lat = vec![[0f32; 3]; total];
        let mut lens = vec![0u32; total];
        let send = |s: &mut TcpStream, messages: &mut [Vec<u8>], i: usize, at: &mut [Instant]| {
            let m = &mut messages[i % DISTINCT_FRAMES];
            m[enc.id_at..enc.id_at + ID_BYTES].copy_from_slice(&varint9(ID_BASE + i as u64));
            at[i] = Instant::now();
            s.write_all(m).unwrap_or_else(|e| fail(&format!("send frame {i}: {e}")));
        };
        let mut window = window as usize;
        let mut window_updates = 0u64;
        let mut next = 0;
        while next < window.min(total) {
            send(&mut self.s, &mut messages, next, &mut sent_at);
            next += 1;
        }
        for i in 0..total {
            loop {
                let body = self.next_message(logs);
                let len = (body.len() + PREFIX_BYTES) as u32;
                match answer {
                    Answer::Raw(reply_len) => {
                        let count =
                            body.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8")));
                        if len as usize != reply_len || count != Some(i as u64 + 1) {
                            crate::pair::out_of_order(
                                "raw-tcp",
                                "frames",
                                i as u64 + 1,
                                count.unwrap_or(0),
                            );
                        }
                        break;
                    }
                    Answer::Result => match scan(body) {
                        Some(Scan { msg_type: MsgType::Result, frame_id, lat: l, .. }) => {
                            if frame_id != ID_BASE + i as u64 {
                                crate::pair::out_of_order(
                                    "corelane",
                                    "frames",
                                    i as u64,
                                    frame_id.wrapping_sub(ID_BASE),
                                );
                            }
                            lat[i] = l;
                            lens[i] = len;
                            break;
                        }
                        Some(Scan { msg_type: MsgType::Heartbeat, .. }) => continue,
                        Some(Scan { msg_type: MsgType::WindowUpdate, new_window, .. }) => {
                            // The agent adopts the worker's window (frames v1).
                            window = new_window.max(1) as usize;
                            window_updates += 1;
                            continue;
                        }
                        _ => {
                            let mut env = Envelope::default();
                            let what = match codec::decode(body, &mut env) {
                                Ok(()) => format!("{:?}", env.payload),
                                Err(e) => e.to_string(),
                            };
                            fail(&format!(
                                "frame {i}: expected a Result, got {what}; {}",
                                logs.log_tail()
                            ));
                        }
                    },
                }
            }
            answered_at[i] = Instant::now();
            while next < total && next < i + 1 + window {
                send(&mut self.s, &mut messages, next, &mut sent_at);
                next += 1;
            }
        }
        let from = warmup.max(1) as usize - 1;
        let took = (answered_at[total - 1] - answered_at[from]).as_secs_f64();
        let rate = (total - 1 - from) as f64 / took.max(1e-9);
        let timed_range = warmup as usize..total;
        let rtt_ns =
            timed_range.clone().map(|i| (answered_at[i] - sent_at[i]).as_nanos() as u64).collect();
        let ns = |k: usize| -> Vec<u64> {
            match answer {
                Answer::Result => {
                    timed_range.clone().map(|i| (lat[i][k] as f64 * 1e6) as u64).collect()
                }
                Answer::Raw(_) => Vec::new(),
            }
        };
        let mut sorted: Vec<u32> = lens[timed_range.clone()].to_vec();
        sorted.sort_unstable();
        let reply_len = match answer {
            Answer::Result => sorted.get(sorted.len() / 2).copied().unwrap_or(0) as usize,
            Answer::Raw(n) => n,
        };
        Measured {
            rtt_ns,
            rate,
            pre_ns: ns(0),
            infer_ns: ns(1),
            total_ns: ns(2),
            reply_len,
            window_updates,
        }
    }

    /// End, then the rest of the stream until the worker closes (untimed).
    fn end(&mut self) {
        let mut out = Vec::new();
        codec::encode("cam0", Payload::End(proto::End { reason: "done".into() }), &mut out);
        let _ = self.s.write_all(&out);
        let _ = self.s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut sink = [0u8; 4096];
        while matches!(self.s.read(&mut sink), Ok(n) if n > 0) {}
    }

    /// The body of the next length-prefixed message (blocking until it is whole).
    fn next_message(&mut self, logs: &dyn Logs) -> &[u8] {
        loop {
            match codec::split(&self.buf[self.start..self.end], REPLY_LIMIT) {
                Ok(Some(n)) => {
                    let at = self.start;
                    self.start += n;
                    return &self.buf[at + PREFIX_BYTES..at + n];
                }
                Ok(None) => {}
                Err(e) => fail(&format!("answer: {e}")),
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                fail("an answer larger than the client's buffer");
            }
            match self.s.read(&mut self.buf[self.end..]) {
                Ok(0) => fail(&format!("the server closed the connection; {}", logs.log_tail())),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => fail(&format!("read: {e}; {}", logs.log_tail())),
            }
        }
    }
}

/// What the client reads of an Envelope in place: its msg_type and, for a Result, the
/// frame_id and lat (pre, infer, total ms).
struct Scan {
    msg_type: MsgType,
    frame_id: u64,
    lat: [f32; 3],
    /// A WindowUpdate's new_window.
    new_window: u32,
}

/// Reads an Envelope's msg_type (field 3), its Result (field 13: frame_id 1, lat 6 with
/// pre_ms 1, infer_ms 2, total_ms 4) and its WindowUpdate (field 15: new_window 1) without decoding it into owned messages, so reading
/// answers allocates nothing. `None` for bytes that are not well-formed protobuf.
fn scan(body: &[u8]) -> Option<Scan> {
    let mut out =
        Scan { msg_type: MsgType::Unspecified, frame_id: 0, lat: [0.0; 3], new_window: 0 };
    let mut msg_type = 0;
    for_fields(body, |field, value| {
        match (field, value) {
            (3, Value::Varint(v)) => msg_type = v as i32,
            (15, Value::Bytes(update)) => {
                for_fields(update, |f, v| {
                    if let (1, Value::Varint(n)) = (f, v) {
                        out.new_window = u32::try_from(n).unwrap_or(u32::MAX);
                    }
                    Some(())
                })?;
            }
            (13, Value::Bytes(result)) => {
                for_fields(result, |f, v| {
                    match (f, v) {
                        (1, Value::Varint(id)) => out.frame_id = id,
                        (6, Value::Bytes(lat)) => {
                            for_fields(lat, |g, v| {
                                if let Value::Fixed32(bits) = v {
                                    let slot = match g {
                                        1 => Some(0),
                                        2 => Some(1),
                                        4 => Some(2),
                                        _ => None,
                                    };
                                    if let Some(k) = slot {
                                        out.lat[k] = f32::from_bits(bits);
                                    }
                                }
                                Some(())
                            })?;
                        }
                        _ => {}
                    }
                    Some(())
                })?;
            }
            _ => {}
        }
        Some(())
    })?;
    out.msg_type = MsgType::try_from(msg_type).ok()?;
    Some(out)
}

/// One protobuf field's value.
enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

/// Calls `f` with each top-level field of `buf`; `None` on malformed bytes (or when `f` says so).
fn for_fields<'a>(
    mut buf: &'a [u8],
    mut f: impl FnMut(u64, Value<'a>) -> Option<()>,
) -> Option<()> {
    let varint = corelane::frames::codec::read_varint;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut buf)?),
            1 => {
                buf = buf.get(8..)?;
                Value::Fixed64
            }
            2 => {
                let n = usize::try_from(varint(&mut buf)?).ok()?;
                let (bytes, rest) = (buf.get(..n)?, buf.get(n..)?);
                buf = rest;
                Value::Bytes(bytes)
            }
            5 => {
                let bytes: [u8; 4] = buf.get(..4)?.try_into().ok()?;
                buf = &buf[4..];
                Value::Fixed32(u32::from_le_bytes(bytes))
            }
            _ => return None,
        };
        f(key >> 3, value)?;
    }
    Some(())
}

/// A `corelane run` child with the frame worker on a free loopback port.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Daemon {
    fn start(env: &Env, detector: &str) -> Daemon {
        let bin = env.bin.as_deref().unwrap_or_else(|| fail("no daemon binary"));
        let dir = env.fresh_dir();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| fail(&format!("cannot find a free port: {e}")))
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let file = write_config(&dir, env.pair.b, detector);
        let log = std::fs::File::create(dir.join("daemon.log"))
            .unwrap_or_else(|e| fail(&format!("daemon log: {e}")));
        let child = crate::daemon_bin::command(bin)
            .arg("run")
            .arg("--config")
            .arg(&file)
            .env("CORELANE_FRAMES_LISTEN", addr.to_string())
            .env("CORELANE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| fail(&format!("cannot start {}: {e}", bin.display())));
        let mut d = Daemon { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                fail(&format!("the daemon exited at start ({status}); {}", d.log_tail()));
            }
            if Instant::now() > deadline {
                fail(&format!("the worker did not listen within 10 s; {}", d.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        d
    }
}

/// The daemon's config: `[frames] detector`, a fixed window (`adaptive_window = false`: the
/// cases define the window), metrics, pool and alloc off; the network lane pinned to `cpu`, the
/// detector on a lane of its own (unpinned); both idle backoff, as shipped. (A spinning
/// network lane halved the frames/s on a 2-cpu machine: it starved the detector lane.)
fn write_config(dir: &Path, cpu: usize, detector: &str) -> PathBuf {
    let rt = dir.join("rt");
    let text = format!(
        "[runtime]\ndir = {:?}\n\n[metrics]\nenabled = false\nlisten = \"\"\n\n\
         [pool]\nenabled = false\n\n[alloc]\nenabled = false\n\n\
         [frames]\ndetector = \"{detector}\"\nadaptive_window = false\n\n\
         [[lanes]]\nname = \"main\"\ncore = {cpu}\nidle = \"backoff\"\nagents = [\"control\", \"frames\"]\n\n\
         [[lanes]]\nname = \"detect\"\nagents = [\"frames-detector\"]\n",
        rt.display().to_string()
    );
    let file = dir.join("corelane.toml");
    std::fs::write(&file, text).unwrap_or_else(|e| fail(&format!("write config: {e}")));
    file
}

impl Logs for Daemon {
    fn log_tail(&self) -> String {
        super::log_tail(&self.dir.join("daemon.log"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        super::stop_daemon(&mut self.child);
    }
}

/// MotionDetector::detect on `warmup + timed` Synthetic 640x480 frames (3 objects) on a
/// thread pinned to `cpu`: one sample (ns) per timed frame, the NV12 unpack outside it.
fn detect_in_process(cpu: usize, warmup: u64, timed: u64) -> Vec<u64> {
    std::thread::spawn(move || {
        pin_current(cpu);
        let (w, h) = (THROUGHPUT.width, THROUGHPUT.height);
        let mut source = Synthetic::new(w, h, THROUGHPUT.objects, 7);
        let mut detector = MotionDetector::new(MotionConfig::default());
        let mut data = Vec::new();
        let mut picture = Picture::default();
        let mut found: Vec<Detection> = Vec::with_capacity(64);
        let mut samples = vec![0u64; timed as usize];
        for i in 0..warmup + timed {
            let (planes, n) = source.frame(RawFormat::Nv12, &mut data);
            picture.reset(w, h);
            yuv::unpack(RawFormat::Nv12, &data, w, h, &planes[..n], &mut picture);
            found.clear();
            let t0 = Instant::now();
            detector.detect(&picture, &mut found).unwrap_or_else(|e| fail(&e.to_string()));
            let ns = t0.elapsed().as_nanos() as u64;
            if i >= warmup {
                samples[(i - warmup) as usize] = ns;
            }
        }
        samples
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ids_patch_in_place() {
        let enc = Encoded::new(&RTT);
        let mut m = enc.messages[3].clone();
        m[enc.id_at..enc.id_at + ID_BYTES].copy_from_slice(&varint9(ID_BASE + 12345));
        let mut env = Envelope::default();
        codec::decode(&m[PREFIX_BYTES..], &mut env).unwrap();
        match env.payload {
            Some(Payload::Frame(f)) => {
                assert_eq!(f.frame_id, ID_BASE + 12345);
                assert_eq!(f.data.len(), 64 * 48 * 3 / 2);
            }
            other => panic!("expected a Frame, got {other:?}"),
        }
    }

    #[test]
    fn scan_reads_a_result_like_prost() {
        let result = proto::Result {
            frame_id: ID_BASE + 7,
            frame_ref: Some(proto::FrameRef {
                ts_mono_ns: 1,
                ts_utc_ns: 2,
                session_id: "s".into(),
            }),
            model_family: "classical".into(),
            model_name: "motion".into(),
            model_version: "1".into(),
            lat: Some(proto::Latency {
                pre_ms: 0.25,
                infer_ms: 1.5,
                post_ms: 0.125,
                total_ms: 2.0,
            }),
            detections: Some(proto::DetectionSet { items: vec![proto::Detection::default()] }),
        };
        let mut out = Vec::new();
        codec::encode("cam0", Payload::Result(result), &mut out);
        let s = scan(&out[PREFIX_BYTES..]).unwrap();
        assert_eq!(s.msg_type, MsgType::Result);
        assert_eq!(s.frame_id, ID_BASE + 7);
        assert_eq!(s.lat, [0.25, 1.5, 2.0]);
        let mut hb = Vec::new();
        codec::encode("cam0", Payload::Heartbeat(proto::Heartbeat::default()), &mut hb);
        assert_eq!(scan(&hb[PREFIX_BYTES..]).unwrap().msg_type, MsgType::Heartbeat);
        let mut wu = Vec::new();
        let update = proto::WindowUpdate { new_window: 3 };
        codec::encode("cam0", Payload::WindowUpdate(update), &mut wu);
        let s = scan(&wu[PREFIX_BYTES..]).unwrap();
        assert_eq!((s.msg_type, s.new_window), (MsgType::WindowUpdate, 3));
        assert!(scan(&[0x1a, 0x05]).is_none(), "a truncated field");
    }

    #[test]
    fn varint9_is_nine_bytes_for_every_id() {
        for id in [ID_BASE, ID_BASE + 1, ID_BASE + 1_000_000, (1 << 63) - 1] {
            let mut m = Vec::new();
            prost::encoding::encode_varint(id, &mut m);
            assert_eq!(m.as_slice(), varint9(id));
        }
    }
}
