//! `corelane::frames::agent::run` against a fake worker on a real TCP socket: the handshake,
//! credits, out-of-order results, End, a dropped connection with reconnect and re-Init, and
//! JPEG transport when the worker chooses it.

mod exposition_check;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use corelane::frames::agent::{self, AgentOptions, SourceSpec};
use corelane::frames::codec::{self, PREFIX_BYTES};
use corelane::frames::proto::{
    envelope::Payload, Chosen, Codec, Detection, DetectionSet, Envelope, InitOk, PixelFormat,
    Policy,
};

const W: u32 = 160;
const H: u32 = 120;

/// How the fake worker behaves.
#[derive(Clone, Copy)]
struct Script {
    credits: u32,
    codec: Codec,
    /// Close the first connection after this many frames (results for none of the held ones).
    drop_after: Option<usize>,
    connections: usize,
}

/// What the fake worker saw.
#[derive(Debug, Default)]
struct Log {
    inits: usize,
    frames: Vec<(u64, i32)>,
    ends: usize,
    max_held: usize,
    /// The first message of every connection was Init.
    init_first: bool,
}

fn spawn_worker(script: Script) -> (SocketAddr, JoinHandle<Log>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let mut log = Log { init_first: true, ..Log::default() };
        for conn in 0..script.connections {
            let (stream, _) = listener.accept().unwrap();
            serve(stream, script, conn, &mut log);
        }
        log
    });
    (addr, handle)
}

fn send(stream: &mut TcpStream, payload: Payload) {
    let mut out = Vec::new();
    codec::encode("cam0", payload, &mut out);
    stream.write_all(&out).unwrap();
}

fn answer(stream: &mut TcpStream, id: u64) {
    let item = Detection { track_id: format!("T{}", id % 5), conf: 0.5, ..Default::default() };
    let result = corelane::frames::proto::Result {
        frame_id: id,
        detections: Some(DetectionSet { items: vec![item] }),
        ..Default::default()
    };
    send(stream, Payload::Result(result));
}

fn serve(mut stream: TcpStream, script: Script, conn: usize, log: &mut Log) {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let mut held: Vec<u64> = Vec::new();
    let mut first = true;
    let mut conn_frames = 0usize;
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = codec::split(&buf, 16 << 20).unwrap() {
            let mut env = Envelope::default();
            codec::decode(&buf[PREFIX_BYTES..end], &mut env).unwrap();
            buf.drain(..end);
            let payload = env.payload.unwrap();
            if first {
                log.init_first &= matches!(payload, Payload::Init(_));
                first = false;
            }
            match payload {
                Payload::Init(init) => {
                    log.inits += 1;
                    let caps = init.caps.unwrap();
                    assert_eq!((caps.max_width, caps.max_height), (W, H));
                    assert_eq!(caps.max_inflight, 4);
                    let ok = InitOk {
                        chosen: Some(Chosen {
                            pixel_format: PixelFormat::PfNv12 as i32,
                            codec: script.codec as i32,
                            width: W,
                            height: H,
                            initial_credits: script.credits,
                            ..Default::default()
                        }),
                        max_frame_bytes: W * H * 3 / 2,
                        ..Default::default()
                    };
                    send(&mut stream, Payload::InitOk(ok));
                }
                Payload::Frame(f) => {
                    if script.codec == Codec::None {
                        assert_eq!(f.data.len(), (W * H * 3 / 2) as usize);
                    }
                    log.frames.push((f.frame_id, f.pixel_format));
                    held.push(f.frame_id);
                    log.max_held = log.max_held.max(held.len());
                    conn_frames += 1;
                    if conn == 0 && script.drop_after == Some(conn_frames) {
                        return; // drop the connection with frames in flight
                    }
                    if held.len() == 2 {
                        // answer the pair swapped: the second result is out of order
                        answer(&mut stream, held[1]);
                        answer(&mut stream, held[0]);
                        held.clear();
                    }
                }
                Payload::End(_) => {
                    log.ends += 1;
                    for id in held.drain(..) {
                        answer(&mut stream, id);
                    }
                    return;
                }
                _ => {}
            }
        }
    }
}

fn options(addr: SocketAddr, frames: u64, policy: Policy) -> AgentOptions {
    AgentOptions {
        worker: addr.to_string(),
        source: SourceSpec::Synthetic,
        width: W,
        height: H,
        fps: 0.0,
        policy,
        frames,
        window_cap: 4,
        verbose: false,
        ..AgentOptions::default()
    }
}

#[test]
fn streams_frames_and_matches_out_of_order_results() {
    let script = Script { credits: 3, codec: Codec::None, drop_after: None, connections: 1 };
    let (addr, worker) = spawn_worker(script);
    let s = agent::run(&options(addr, 20, Policy::LatestWins)).unwrap();
    let log = worker.join().unwrap();
    assert_eq!(log.inits, 1);
    assert!(log.init_first);
    assert_eq!(log.ends, 1, "End after the last frame");
    assert_eq!(log.frames.len(), 20);
    assert!(log.frames.iter().all(|&(_, pf)| pf == PixelFormat::PfNv12 as i32));
    assert!(log.max_held <= 3, "never more in flight than the window: {}", log.max_held);
    assert_eq!(s.ai_frames_sent_total, 20);
    assert_eq!(s.results_total, 20);
    assert!(s.frames_out_of_order_total >= 5, "{s:?}");
    assert_eq!(s.ai_drops_latestwins_total, 0, "--fps 0 captures only with a credit");
    assert_eq!(s.ai_rtt_ms.count, 20);
    assert!(s.ai_rtt_ms.p99 >= s.ai_rtt_ms.p50);
    assert!(s.ai_encode_ms.count == 20);
    assert_eq!(s.detections_total, 20);
    assert_eq!(s.track_ids_seen, 5);
    assert_eq!((s.connections_total, s.reconnects_total), (1, 0));
    assert_eq!(s.ai_inflight, 0);
    assert_eq!(s.errors_total, 0);
}

#[test]
fn reconnects_and_sends_init_again_after_a_dropped_connection() {
    let script = Script { credits: 3, codec: Codec::None, drop_after: Some(5), connections: 2 };
    let (addr, worker) = spawn_worker(script);
    let s = agent::run(&options(addr, 20, Policy::Fifo)).unwrap();
    let log = worker.join().unwrap();
    assert_eq!(log.inits, 2, "re-Init on the new connection");
    assert!(log.init_first, "Init is the first message of both connections");
    assert_eq!(log.ends, 1);
    assert_eq!((s.connections_total, s.reconnects_total), (2, 1));
    assert!(s.frames_lost_total >= 1, "frames in flight at the drop are lost: {s:?}");
    assert_eq!(s.results_total + s.frames_lost_total, 20, "{s:?}");
    assert_eq!(s.ai_drops_latestwins_total, 0);
    let ids: Vec<u64> = log.frames.iter().map(|&(id, _)| id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase across connections: {ids:?}");
}

#[test]
fn sends_jpeg_when_the_worker_chooses_it() {
    let script = Script { credits: 2, codec: Codec::Jpeg, drop_after: None, connections: 1 };
    let (addr, worker) = spawn_worker(script);
    let s = agent::run(&options(addr, 6, Policy::LatestWins)).unwrap();
    let log = worker.join().unwrap();
    assert_eq!(log.frames.len(), 6);
    assert!(log.frames.iter().all(|&(_, pf)| pf == PixelFormat::PfJpeg as i32));
    assert_eq!(s.ai_degrade_jpeg_switch_total, 1);
    assert_eq!(s.jpeg_frames_total, 6);
    assert!(s.jpeg_compression_ratio > 2.0, "{}", s.jpeg_compression_ratio);
    assert_eq!(s.results_total, 6);
}

#[test]
fn the_agent_publishes_seed_004_metrics_in_its_counters_file() {
    let script = Script { credits: 3, codec: Codec::None, drop_after: None, connections: 1 };
    let (addr, worker) = spawn_worker(script);
    let dir = std::env::temp_dir().join(format!("cl-agent-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("agent.counters");
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = probe.local_addr().unwrap();
    drop(probe);
    let opts = AgentOptions {
        counters_file: Some(file.clone()),
        metrics_listen: Some(listen),
        ..options(addr, 20, Policy::LatestWins)
    };
    let s = agent::run(&opts).unwrap();
    worker.join().unwrap();
    // The file holds the last refresh (the run's end), under the seed's names.
    let samples = corelane::metrics::CountersReader::open(&file).unwrap().snapshot();
    let value = |name: &str| {
        samples
            .iter()
            .find(|x| x.name == name)
            .unwrap_or_else(|| panic!("{name}: {samples:?}"))
            .value
    };
    assert_eq!(value("ai_frames_sent_total"), s.ai_frames_sent_total);
    assert_eq!(value("ai_frames_sent_total"), 20);
    assert_eq!(value("ai_results_total"), 20);
    assert_eq!(value("frames_out_of_order_total"), s.frames_out_of_order_total);
    assert_eq!(value("ai_drops_latestwins_total"), 0);
    assert_eq!(value("ai_window_size"), 3);
    assert_eq!(value("ai_inflight"), 0);
    assert!(
        value("ai_rtt_seconds{quantile=\"0.99\"}") >= value("ai_rtt_seconds{quantile=\"0.5\"}")
    );
    assert!(value("ai_rtt_seconds{quantile=\"1\"}") > 0);
    assert_eq!(value("ai_rtt_seconds_count"), s.ai_rtt_ms.count);
    assert!(value("ai_rtt_seconds_sum") > 0);
    for name in [
        "frame_bytes_max_hit_total",
        "ai_degrade_jpeg_switch_total",
        "ai_encode_seconds{quantile=\"0.5\"}",
        "ai_encode_seconds_count",
    ] {
        value(name);
    }
    // What its /metrics serves (the same encoder over the same file) keeps the rules.
    let mut body = String::new();
    corelane::metrics::render(&samples, &mut body);
    if let Err(errors) = exposition_check::check(&body) {
        panic!("the agent's exposition breaks the rules:\n{errors}\n{body}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
