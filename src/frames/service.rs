//! The `frames` service: the worker's TCP agent (`frames`) and its detector (`frames-detector`).
//!
//! The `frames` agent owns every agent connection in one [`ConnTable`] and runs a
//! [`WorkerSession`] per connection. A frame that passes validation is copied into a buffer
//! from a free list and handed over a link to the `frames-detector` agent, which decodes it,
//! runs the detector and the tracker, and hands back an [`Outcome`] (and the buffer) over a
//! second link; the session turns it into the Result. Network I/O never waits for inference:
//! a slow detector fills the window, the window pauses reading, and TCP pushes back on the
//! agent. Results an agent does not read pile up in the connection's output; over
//! [`BLOCKED_OUTPUT`] bytes reading stops and the backpressure timeout runs.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::codec::{self, PREFIX_BYTES};
use super::detector::{Detection, DetectorFactory, Picture};
use super::proto::ErrorCode;
use super::session::{Accepted, CloseCause, Outcome, Phase, Step, WorkerConfig, WorkerSession};
use super::vision::motion::MotionFactory;
use super::vision::track::Tracker;
use super::vision::{jpeg, yuv};
use crate::config::{Config, ConfigError, FramesConfig, SectionSpec, FRAMES_SECTION};
use crate::daemon::service::Agents;
use crate::daemon::{Build, DaemonError, Prepare, Prepared, Service, StatusCell};
use crate::metrics::{Counter, CounterId, CounterSpec, LatencyRecorder, Summary, SummaryIds};
use crate::runtime::{
    Agent, CloseReason, Completion, ConnConfig, ConnEvent, ConnId, ConnTable, Ctx, LinkRx, LinkTx,
};

/// The frames service, as the daemon's table names it.
pub static FRAMES: FramesService = FramesService;

/// The frame worker. See the [module docs](self).
#[derive(Debug)]
pub struct FramesService;

/// The network agent, then the detector agent.
pub const AGENTS: [&str; 2] = ["frames", "frames-detector"];

/// Output bytes waiting on one connection over which it is not read (its agent does not read
/// its results) and the backpressure timeout runs.
pub const BLOCKED_OUTPUT: usize = 256 * 1024;

/// Jobs and outcomes a link holds (every connection's window together fits).
const LINK_CAPACITY: usize = 4096;

/// How much longer than the backpressure timeout the write timeout is.
const WRITE_TIMEOUT_MARGIN: Duration = Duration::from_secs(2);

/// Frame buffers kept for reuse (the rest are freed).
const MAX_SPARES: usize = 32;

/// How often the counters and status are published.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

const LISTENER_ID: u64 = 1 << 40;
const TICK_TIMER: u64 = 1;

/// The worker limits of a config.
pub fn worker_config(
    frames: &FramesConfig,
    identity: super::detector::ModelIdentity,
) -> WorkerConfig {
    WorkerConfig {
        max_width: frames.max_width & !1,
        max_height: frames.max_height & !1,
        default_width: frames.default_width.min(frames.max_width) & !1,
        default_height: frames.default_height.min(frames.max_height) & !1,
        window: frames.window,
        fps_target: frames.fps_target as f32,
        heartbeat: Duration::from_millis(frames.heartbeat_ms),
        init_timeout: Duration::from_millis(frames.init_timeout_ms),
        peer_timeout: Duration::from_millis(frames.peer_timeout_ms),
        backpressure_timeout: Duration::from_millis(frames.backpressure_timeout_ms),
        accept_jpeg: true,
        adaptive_window: frames.adaptive_window,
        identity,
    }
}

/// The detector backend a config names, or `None` for `detector = "none"`.
pub fn detector_factory(frames: &FramesConfig) -> Result<Option<Arc<dyn DetectorFactory>>, String> {
    match frames.detector.as_str() {
        "none" => Ok(None),
        "onnx" => onnx_factory(&frames.model).map(Some),
        _ => Ok(Some(Arc::new(MotionFactory::default()))),
    }
}

#[cfg(feature = "onnx")]
fn onnx_factory(model: &str) -> Result<Arc<dyn DetectorFactory>, String> {
    if model.is_empty() {
        return Err("detector = \"onnx\" needs frames.model, the path of the model".into());
    }
    let factory = super::onnx::OnnxFactory::load(std::path::Path::new(model))
        .map_err(|e| format!("model {model}: {e}"))?;
    Ok(Arc::new(factory))
}

#[cfg(not(feature = "onnx"))]
fn onnx_factory(model: &str) -> Result<Arc<dyn DetectorFactory>, String> {
    Err(format!(
        "model {model:?}: this build has no ONNX backend (build with `--features onnx`); \
         detector = \"motion\" needs no model"
    ))
}

/// The identity InitOk and Results report for `detector = "none"`.
pub fn transport_only_identity() -> super::detector::ModelIdentity {
    super::detector::ModelIdentity {
        family: "none".into(),
        name: "none".into(),
        version: "1".into(),
        classes: Vec::new(),
    }
}

impl Service for FramesService {
    fn name(&self) -> &'static str {
        "frames"
    }

    fn section(&self) -> &SectionSpec {
        &FRAMES_SECTION
    }

    fn agents(&self) -> &'static [&'static str] {
        &AGENTS
    }

    fn enabled(&self, config: &Config) -> bool {
        config.frames.enabled
    }

    fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        let f = &config.frames;
        if !f.enabled {
            return Ok(());
        }
        let invalid = |at: &str, reason: String| ConfigError::Invalid { at: at.into(), reason };
        if f.listen.is_empty() {
            return Err(invalid("frames.listen", "expected an address while enabled".into()));
        }
        if f.pool_stream != 0 && !config.pool.enabled {
            return Err(invalid(
                "frames.pool_stream",
                "publishing to the pool needs the pool driver (pool.enabled = true)".into(),
            ));
        }
        if f.pool_stream != 0 && f.detector == "none" {
            return Err(invalid(
                "frames.pool_stream",
                "detector = \"none\" decodes nothing to publish; use \"motion\" or \"onnx\"".into(),
            ));
        }
        if f.detector == "onnx" {
            if f.model.is_empty() {
                return Err(invalid(
                    "frames.model",
                    "detector = \"onnx\" needs the absolute path of a model".into(),
                ));
            }
            if !cfg!(feature = "onnx") {
                return Err(invalid(
                    "frames.detector",
                    "this build has no ONNX backend (build with `--features onnx`)".into(),
                ));
            }
        }
        Ok(())
    }

    fn prepare(&self, cx: &mut Prepare<'_>) -> Result<Box<dyn Prepared>, DaemonError> {
        let frames = cx.config.frames.clone();
        let fail = |message: String| DaemonError::Service { service: "frames", message };
        let factory = detector_factory(&frames).map_err(fail)?;
        let mut counters = Vec::with_capacity(COUNTERS.len());
        for c in COUNTERS {
            let spec = match c.gauge {
                true => CounterSpec::gauge(c.name, c.labels, c.help),
                false => CounterSpec::counter(c.name, c.labels, c.help),
            };
            counters.push(cx.register(spec)?);
        }
        let mut errors = Vec::with_capacity(ERROR_CODES.len());
        for (code, name) in ERROR_CODES {
            let labels = [("code", *name)];
            let spec = CounterSpec::counter(
                "corelane_frames_errors_total",
                &labels,
                "Frame worker: Error messages sent, by code.",
            );
            errors.push((*code, cx.register(spec)?));
        }
        let decode = cx.register_summary(
            "decode_seconds",
            &[],
            "Frame worker: decode time per frame (seed 004's decode_ms), seconds.",
        )?;
        let infer = cx.register_summary(
            "infer_seconds",
            &[],
            "Frame worker: detector time per frame (seed 004's infer_ms), seconds.",
        )?;
        Ok(Box::new(FramesPrepared { frames, factory, counters, errors, decode, infer }))
    }

    fn commands(&self) -> Vec<clap::Command> {
        Vec::new()
    }
}

/// One mirrored counter.
struct CounterDef {
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
    help: &'static str,
    gauge: bool,
}

/// Indices into the counters, in [`COUNTERS`] order.
#[derive(Clone, Copy)]
enum C {
    Decoded,
    QueueDepth,
    ResultsBytes,
    WindowSets,
    Backpressure,
    Frames,
    Results,
    Connections,
    Accepted,
    TooLarge,
    PeerTimeouts,
    Ends,
    Published,
    Skipped,
    Streams,
    WriteTimeouts,
    InitTimeouts,
}

const COUNTERS: &[CounterDef] = &[
    CounterDef {
        name: "frames_decoded_total",
        labels: &[],
        help: "Frame worker: frames decoded (NV12, I420, JPEG) for the detector.",
        gauge: false,
    },
    CounterDef {
        name: "queue_depth",
        labels: &[],
        help: "Frame worker: frames handed to the detector and not yet answered.",
        gauge: true,
    },
    CounterDef {
        name: "results_bytes_total",
        labels: &[],
        help: "Frame worker: bytes of Result messages sent.",
        gauge: false,
    },
    CounterDef {
        name: "window_size_set_events_total",
        labels: &[],
        help: "Frame worker: WindowUpdate messages sent.",
        gauge: false,
    },
    CounterDef {
        name: "backpressure_timeouts_total",
        labels: &[],
        help: "Frame worker: connections closed because results stayed unread.",
        gauge: false,
    },
    CounterDef {
        name: "corelane_frames_accepted_total",
        labels: &[],
        help: "Frame worker: frames that passed validation.",
        gauge: false,
    },
    CounterDef {
        name: "corelane_frames_results_total",
        labels: &[],
        help: "Frame worker: Result messages sent.",
        gauge: false,
    },
    CounterDef {
        name: "corelane_frames_connections",
        labels: &[],
        help: "Frame worker: agent connections open now.",
        gauge: true,
    },
    CounterDef {
        name: "corelane_frames_connections_total",
        labels: &[],
        help: "Frame worker: agent connections accepted.",
        gauge: false,
    },
    CounterDef {
        name: "corelane_frames_closes_total",
        labels: &[("cause", "too_large")],
        help: "Frame worker: connections the protocol closed, by cause.",
        gauge: false,
    },
    CounterDef {
        name: "corelane_frames_closes_total",
        labels: &[("cause", "peer_timeout")],
        help: "Frame worker: connections the protocol closed, by cause.",
        gauge: false,
    },
    CounterDef {
        name: "corelane_frames_closes_total",
        labels: &[("cause", "end")],
        help: "Frame worker: connections the protocol closed, by cause.",
        gauge: false,
    },
    CounterDef {
        name: "corelane_frames_pool_published_total",
        labels: &[],
        help: "Frame worker: decoded frames published to the pool stream (frames.pool_stream).",
        gauge: false,
    },
    CounterDef {
        name: "corelane_frames_pool_skipped_total",
        labels: &[],
        help: "Frame worker: frames not published to the pool stream (no lease, no pool fits).",
        gauge: false,
    },
    CounterDef {
        name: "corelane_frames_detector_streams",
        labels: &[],
        help: "Frame worker: connections whose detector and tracker the detector lane holds.",
        gauge: true,
    },
    CounterDef {
        name: "corelane_frames_closes_total",
        labels: &[("cause", "write_timeout")],
        help: "Frame worker: connections the protocol closed, by cause.",
        gauge: false,
    },
    CounterDef {
        name: "corelane_frames_closes_total",
        labels: &[("cause", "init_timeout")],
        help: "Frame worker: connections the protocol closed, by cause.",
        gauge: false,
    },
];

/// Error codes with their metric label.
const ERROR_CODES: &[(ErrorCode, &str)] = &[
    (ErrorCode::VersionUnsupported, "VERSION_UNSUPPORTED"),
    (ErrorCode::BadMessage, "BAD_MESSAGE"),
    (ErrorCode::BadSequence, "BAD_SEQUENCE"),
    (ErrorCode::UnsupportedFormat, "UNSUPPORTED_FORMAT"),
    (ErrorCode::InvalidFrame, "INVALID_FRAME"),
    (ErrorCode::FrameTooLarge, "FRAME_TOO_LARGE"),
    (ErrorCode::ModelNotReady, "MODEL_NOT_READY"),
    (ErrorCode::Oom, "OOM"),
    (ErrorCode::BackpressureTimeout, "BACKPRESSURE_TIMEOUT"),
    (ErrorCode::Internal, "INTERNAL"),
];

struct FramesPrepared {
    frames: FramesConfig,
    factory: Option<Arc<dyn DetectorFactory>>,
    counters: Vec<CounterId>,
    errors: Vec<(ErrorCode, CounterId)>,
    decode: SummaryIds,
    infer: SummaryIds,
}

impl Prepared for FramesPrepared {
    fn build(self: Box<Self>, cx: &mut Build<'_>) -> Result<Agents, DaemonError> {
        let fail = |message: String| DaemonError::Service { service: "frames", message };
        let addr: SocketAddr = self
            .frames
            .listen
            .parse()
            .map_err(|e| fail(format!("frames.listen {:?}: {e}", self.frames.listen)))?;
        let listener =
            TcpListener::bind(addr).map_err(|e| fail(format!("cannot listen on {addr}: {e}")))?;
        listener.set_nonblocking(true).map_err(|e| fail(e.to_string()))?;
        let local = listener.local_addr().map_err(|e| fail(e.to_string()))?;
        let identity = match &self.factory {
            Some(f) => f.identity().clone(),
            None => transport_only_identity(),
        };
        tracing::info!(%local, model = %identity.name, "frames: listening");
        let (jobs_tx, jobs_rx) = cx
            .link::<Job>(LINK_CAPACITY, AGENTS[1])
            .ok_or_else(|| fail("the agent \"frames-detector\" is on no lane".into()))?;
        let (out_tx, out_rx) = cx
            .link::<Done>(LINK_CAPACITY, AGENTS[0])
            .ok_or_else(|| fail("the agent \"frames\" is on no lane".into()))?;
        let status = cx.status("frames");
        status.set("listen", local);
        status.set("model", format!("{} {} {}", identity.family, identity.name, identity.version));
        let config = worker_config(&self.frames, identity);
        let max_message = config.max_message() + PREFIX_BYTES;
        let counters: Vec<Counter> = self.counters.iter().map(|&id| cx.counter(id)).collect();
        let errors = self.errors.iter().map(|&(code, id)| (code, cx.counter(id))).collect();
        let worker = WorkerAgent {
            listener,
            conns: ConnTable::new(ConnConfig {
                max_connections: self.frames.max_connections as usize,
                max_recv_buffer: max_message + (512 << 10),
                max_pending_output: 4 << 20,
                // Longer than the backpressure timeout, which therefore strikes first (and
                // is counted) when an agent stops reading.
                write_timeout: Duration::from_millis(self.frames.backpressure_timeout_ms)
                    + WRITE_TIMEOUT_MARGIN,
            })
            .keep_closed(),
            config,
            jobs: jobs_tx,
            done: out_rx,
            waiting: VecDeque::new(),
            spares: Vec::new(),
            counters,
            errors,
            totals: Totals::default(),
            queue_depth: 0,
            queued_bytes: 0,
            max_queued_bytes: usize::try_from(self.frames.max_queued_bytes).unwrap_or(usize::MAX),
            starved: Vec::new(),
            inline: self.factory.is_none(),
            published: None,
            timer_at: None,
            status: status.clone(),
            sessions: SessionsDetail::default(),
            sessions_shown: String::new(),
        };
        let bridge = match self.frames.pool_stream {
            0 => None,
            stream => {
                let socket = cx.control_socket().to_owned();
                let allowed = crate::pool::service::pool_config(cx.config)
                    .map(|p| p.shm.allowed_base_dirs.iter().map(Into::into).collect())
                    .unwrap_or_else(|_| vec!["/dev/shm".into()]);
                let bridge = super::bridge::Bridge::start(socket, stream, allowed)
                    .map_err(|e| fail(format!("cannot start the pool bridge: {e}")))?;
                status.set("pool_stream", stream);
                Some(bridge)
            }
        };
        let detector = DetectorAgent {
            factory: self.factory,
            jobs: jobs_rx,
            done: out_tx,
            waiting: VecDeque::new(),
            streams: HashMap::new(),
            decoded: cx.counter(self.counters[C::Decoded as usize]),
            decode: LatencyRecorder::new(),
            infer: LatencyRecorder::new(),
            decode_summary: cx.summary(self.decode),
            infer_summary: cx.summary(self.infer),
            decoded_count: 0,
            skipped: 0,
            streams_gauge: cx.counter(self.counters[C::Streams as usize]),
            published: None,
            bridge,
            bridge_counters: [
                cx.counter(self.counters[C::Published as usize]),
                cx.counter(self.counters[C::Skipped as usize]),
            ],
        };
        Ok(vec![(AGENTS[0], Box::new(worker)), (AGENTS[1], Box::new(detector))])
    }
}

/// A frame for the detector, or the end of a connection's stream.
#[derive(Debug)]
pub enum Job {
    /// An accepted frame and its bytes.
    Frame {
        /// The connection (its local id).
        conn: u64,
        /// What validation found.
        accepted: Accepted,
        /// Capture timestamps (frame_ref).
        times: (u64, u64),
        /// When it arrived.
        arrived: Instant,
        /// The frame's data (a buffer of the worker's free list).
        data: Vec<u8>,
        /// An empty list for the detections (from the worker's free list).
        detections: Vec<Detection>,
        /// Set when the connection closes: the detector skips the frame.
        cancelled: Arc<AtomicBool>,
    },
    /// The connection closed: drop its detector and tracker.
    Closed {
        /// The connection (its local id).
        conn: u64,
    },
}

/// A detector's answer, with the buffer back.
#[derive(Debug)]
pub struct Done {
    conn: u64,
    outcome: Outcome,
    data: Vec<u8>,
}

/// Queues `job` for the detector in order: behind any that wait, else on the link.
fn hand_over(jobs: &mut LinkTx<Job>, waiting: &mut VecDeque<Job>, job: Job) {
    if !waiting.is_empty() {
        waiting.push_back(job);
        return;
    }
    if let Err(e) = jobs.push(job) {
        waiting.push_back(e.into_inner());
    }
}

/// Sums of the closed sessions' counters (the live ones are added when published).
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    frames: u64,
    results: u64,
    results_bytes: u64,
    window_sets: u64,
    errors: [u64; 11],
    backpressure: u64,
    too_large: u64,
    peer_timeouts: u64,
    ends: u64,
    init_timeouts: u64,
}

/// Per connection state.
#[derive(Debug)]
struct Conn {
    session: WorkerSession,
    paused: bool,
    /// In [`WorkerAgent::starved`]: paused for the worker-wide budget, not its own window.
    starved: bool,
    /// Shared with its jobs: set at close, so the detector skips what is still queued.
    cancelled: Arc<AtomicBool>,
    /// The connection's number among those accepted (1 = the first), as `status` names it.
    number: u64,
}

/// The network agent. See the [module docs](self).
struct WorkerAgent {
    listener: TcpListener,
    conns: ConnTable<Conn>,
    config: WorkerConfig,
    jobs: LinkTx<Job>,
    done: LinkRx<Done>,
    /// Jobs the link refused (full), in order.
    waiting: VecDeque<Job>,
    /// Frame buffers and detection lists back from the detector, for the next frames.
    spares: Vec<(Vec<u8>, Vec<Detection>)>,
    counters: Vec<Counter>,
    errors: Vec<(ErrorCode, Counter)>,
    totals: Totals,
    queue_depth: u64,
    /// Bytes of frames handed to the detector and not answered yet, and the most there may
    /// be (`[frames] max_queued_bytes`): over it every connection stops reading.
    queued_bytes: usize,
    max_queued_bytes: usize,
    /// Connections paused for that budget, pumped again when it frees.
    starved: Vec<ConnId>,
    /// `detector = "none"`: frames are answered on this lane (empty Results).
    inline: bool,
    published: Option<Instant>,
    timer_at: Option<Instant>,
    status: StatusCell,
    /// The `sessions` status detail, rebuilt every publish in this buffer, and the text last
    /// set (the status cell is set only when it changed).
    sessions: SessionsDetail,
    sessions_shown: String,
}

/// Most sessions the `sessions` status detail lists; the rest are counted as "+N more".
const LISTED_SESSIONS: usize = 64;

/// The frames service's `sessions` status detail (also `corelane top`'s frames view):
/// `#N window W inflight I frames F results R errors E` per open session, joined by "; ",
/// the first [`LISTED_SESSIONS`], then `+N more` for the rest. Bounded whatever the number
/// of connections; the buffer is reused.
#[derive(Debug, Default)]
struct SessionsDetail {
    text: String,
    listed: usize,
    more: usize,
}

/// One session's figures in the `sessions` detail.
struct SessionLine {
    number: u64,
    window: u32,
    inflight: u32,
    frames: u64,
    results: u64,
    errors: u64,
}

impl SessionsDetail {
    fn clear(&mut self) {
        self.text.clear();
        (self.listed, self.more) = (0, 0);
    }

    fn push(&mut self, s: &SessionLine) {
        use std::fmt::Write as _;
        if self.listed == LISTED_SESSIONS {
            self.more += 1;
            return;
        }
        let sep = if self.text.is_empty() { "" } else { "; " };
        // Writing to a String does not fail.
        let _ = write!(
            self.text,
            "{sep}#{} window {} inflight {} frames {} results {} errors {}",
            s.number, s.window, s.inflight, s.frames, s.results, s.errors
        );
        self.listed += 1;
    }

    /// The detail, with its `+N more` tail.
    fn finish(&mut self) -> &str {
        use std::fmt::Write as _;
        if self.more > 0 {
            let _ = write!(self.text, "; +{} more", self.more);
            self.more = 0;
        }
        &self.text
    }
}

impl std::fmt::Debug for WorkerAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerAgent")
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl WorkerAgent {
    /// Feeds the connection's buffered messages to its session while it wants them, then
    /// flushes its output, pauses or resumes reading, and sets its deadline.
    fn pump(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let now = ctx.now;
        let WorkerAgent {
            conns,
            config,
            jobs,
            waiting,
            spares,
            queue_depth,
            queued_bytes,
            max_queued_bytes,
            inline,
            ..
        } = self;
        if let Some((conn, ring)) = conns.parts_mut(id) {
            let session = &mut conn.session;
            while session.wants_input() && (*inline || *queued_bytes < *max_queued_bytes) {
                let Some(prefix) = ring.peek(PREFIX_BYTES) else { break };
                let end = match codec::split(prefix, session.limit()) {
                    Ok(_) => {
                        PREFIX_BYTES + u32::from_le_bytes(prefix.try_into().expect("4")) as usize
                    }
                    Err(e) => {
                        // Nothing tells where the next message starts: answer and close.
                        session.on_oversized(&e);
                        ring.clear();
                        break;
                    }
                };
                let Some(message) = ring.peek(end) else { break };
                let step = session.on_message(&message[PREFIX_BYTES..], config, now);
                ring.consume(end);
                if session.phase() == Phase::Streaming {
                    // Every frame of the session fits: keep the buffer between frames.
                    ring.set_retain(session.limit() + PREFIX_BYTES);
                }
                if let (Step::Frame(accepted), true) = (&step, *inline) {
                    // Transport only: answered here, no hop to the detector lane and back.
                    let (ts_mono_ns, ts_utc_ns) = session.frame_times();
                    let outcome = Outcome {
                        frame_id: accepted.frame_id,
                        ts_mono_ns,
                        ts_utc_ns,
                        ..Outcome::default()
                    };
                    session.on_outcome(&outcome, config);
                } else if let Step::Frame(accepted) = step {
                    let (spare, mut detections) = spares.pop().unwrap_or_default();
                    detections.clear();
                    let data = session.take_frame_data(spare);
                    *queued_bytes += data.len();
                    let job = Job::Frame {
                        conn: id.local(),
                        accepted,
                        times: session.frame_times(),
                        arrived: now,
                        data,
                        detections,
                        cancelled: Arc::clone(&conn.cancelled),
                    };
                    *queue_depth += 1;
                    hand_over(jobs, waiting, job);
                }
            }
        }
        self.flush(ctx, id);
    }

    /// Sends what the session wrote, then pauses, resumes or closes the connection.
    fn flush(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let now = ctx.now;
        let Some(conn) = self.conns.get_mut(id) else { return };
        let mut out = conn.session.take_output();
        if !out.is_empty() {
            let sent = self.conns.send(ctx, id, &out);
            out.clear();
            if let Some(conn) = self.conns.get_mut(id) {
                conn.session.restore_output(out);
            }
            if sent.is_err() {
                return;
            }
        } else {
            conn.session.restore_output(out);
        }
        let pending = self.conns.pending(id);
        let over_budget = !self.inline && self.queued_bytes >= self.max_queued_bytes;
        let Some(conn) = self.conns.get_mut(id) else { return };
        // Output the kernel would not take: the backpressure timeout runs (it is shorter
        // than the write timeout, so it is the one that strikes); past BLOCKED_OUTPUT the
        // connection is not read either.
        conn.session.set_blocked(pending > 0, now);
        let blocked = pending > BLOCKED_OUTPUT;
        if conn.session.phase() == Phase::Closed {
            let cause = conn.session.close_cause();
            self.count_close(cause);
            let reason = match cause {
                Some(CloseCause::End | CloseCause::Hangup) => CloseReason::Peer,
                Some(CloseCause::PeerTimeout | CloseCause::InitTimeout) => CloseReason::IdleTimeout,
                _ => CloseReason::Protocol,
            };
            self.conns.close(ctx, id, reason);
            return;
        }
        let read = conn.session.wants_input() && !blocked && !over_budget;
        if over_budget && conn.session.wants_input() && !conn.starved {
            conn.starved = true;
            self.starved.push(id);
        }
        if read == conn.paused {
            let local = id.local();
            let result = if read { ctx.resume(local) } else { ctx.pause(local) };
            if let Err(e) = result {
                tracing::debug!("frames: pause/resume failed ({e}); closing the connection");
                self.conns.abort(ctx, id, CloseReason::Protocol);
                return;
            }
            conn.paused = !read;
            conn.session.set_reading(read, now);
        }
        let deadline = conn.session.poll_timeout(&self.config);
        self.conns.set_deadline(ctx, id, deadline);
    }

    fn count_close(&mut self, cause: Option<CloseCause>) {
        match cause {
            Some(CloseCause::Backpressure) => self.totals.backpressure += 1,
            Some(CloseCause::TooLarge) => self.totals.too_large += 1,
            Some(CloseCause::PeerTimeout) => self.totals.peer_timeouts += 1,
            Some(CloseCause::End) => self.totals.ends += 1,
            Some(CloseCause::InitTimeout) => self.totals.init_timeouts += 1,
            Some(CloseCause::Hangup) | None => {}
        }
    }

    fn retry_waiting(&mut self) -> usize {
        let mut work = 0;
        while let Some(job) = self.waiting.pop_front() {
            match self.jobs.push(job) {
                Ok(()) => work += 1,
                Err(e) => {
                    self.waiting.push_front(e.into_inner());
                    break;
                }
            }
        }
        work
    }

    /// Outcomes from the detector: Results, credits back, buffers back.
    fn take_done(&mut self, ctx: &mut Ctx<'_>) -> usize {
        let mut work = 0;
        while let Ok(mut done) = self.done.pop() {
            work += 1;
            self.queue_depth = self.queue_depth.saturating_sub(1);
            self.queued_bytes = self.queued_bytes.saturating_sub(done.data.len());
            let id = ConnId::from_local(done.conn);
            if let Some(conn) = id.and_then(|id| self.conns.get_mut(id)) {
                conn.session.on_outcome(&done.outcome, &self.config);
            }
            if self.spares.len() < MAX_SPARES {
                let detections = std::mem::take(&mut done.outcome.detections);
                self.spares.push((done.data, detections));
            }
            if let Some(id) = id.filter(|&id| self.conns.contains(id)) {
                self.pump(ctx, id);
            }
        }
        // The budget has room again: the connections it paused read on.
        while self.queued_bytes < self.max_queued_bytes {
            let Some(id) = self.starved.pop() else { break };
            if let Some(conn) = self.conns.get_mut(id) {
                conn.starved = false;
                self.pump(ctx, id);
            }
        }
        work
    }

    /// Every closed connection: its sessions' counters kept, the detector told.
    fn closed(&mut self) {
        while let Some((id, conn)) = self.conns.take_closed() {
            // Its frames are not worth running: the ones still here go back at once, the
            // detector skips the ones it has.
            conn.cancelled.store(true, Ordering::Relaxed);
            let local = id.local();
            let (spares, queued, depth) =
                (&mut self.spares, &mut self.queued_bytes, &mut self.queue_depth);
            self.waiting.retain_mut(|job| match job {
                Job::Frame { conn, data, detections, .. } if *conn == local => {
                    *queued = queued.saturating_sub(data.len());
                    *depth = depth.saturating_sub(1);
                    if spares.len() < MAX_SPARES {
                        spares.push((std::mem::take(data), std::mem::take(detections)));
                    }
                    false
                }
                _ => true,
            });
            let c = conn.session.counters();
            let t = &mut self.totals;
            t.frames += c.frames;
            t.results += c.results;
            t.results_bytes += c.results_bytes;
            t.window_sets += c.window_updates;
            for (sum, n) in t.errors.iter_mut().zip(c.errors) {
                *sum += n;
            }
            hand_over(&mut self.jobs, &mut self.waiting, Job::Closed { conn: id.local() });
        }
    }

    fn publish(&mut self, now: Instant) {
        if self.published.is_some_and(|at| now < at + PUBLISH_EVERY) {
            return;
        }
        self.published = Some(now);
        let mut t = self.totals;
        // One entry per open session for `status` (and `corelane top`'s frames view).
        let sessions = &mut self.sessions;
        sessions.clear();
        for id in self.conns.ids() {
            if let Some(conn) = self.conns.get(id) {
                let c = conn.session.counters();
                sessions.push(&SessionLine {
                    number: conn.number,
                    window: conn.session.window(),
                    inflight: conn.session.inflight(),
                    frames: c.frames,
                    results: c.results,
                    errors: c.errors.iter().sum::<u64>(),
                });
                t.frames += c.frames;
                t.results += c.results;
                t.results_bytes += c.results_bytes;
                t.window_sets += c.window_updates;
                for (sum, n) in t.errors.iter_mut().zip(c.errors) {
                    *sum += n;
                }
            }
        }
        let stats = self.conns.stats();
        let set = |c: &[Counter], i: C, v: u64| c[i as usize].set(v);
        set(&self.counters, C::QueueDepth, self.queue_depth);
        set(&self.counters, C::ResultsBytes, t.results_bytes);
        set(&self.counters, C::WindowSets, t.window_sets);
        set(&self.counters, C::Backpressure, t.backpressure);
        set(&self.counters, C::Frames, t.frames);
        set(&self.counters, C::Results, t.results);
        set(&self.counters, C::Connections, self.conns.len() as u64);
        set(&self.counters, C::Accepted, stats.accepted);
        set(&self.counters, C::TooLarge, t.too_large);
        set(&self.counters, C::PeerTimeouts, t.peer_timeouts);
        set(&self.counters, C::Ends, t.ends);
        set(&self.counters, C::WriteTimeouts, stats.closed(CloseReason::WriteTimeout));
        set(&self.counters, C::InitTimeouts, t.init_timeouts);
        for (code, counter) in &self.errors {
            counter.set(t.errors[*code as usize]);
        }
        self.status.set("connections", self.conns.len());
        self.status.set("frames", t.frames);
        self.status.set("results", t.results);
        let sessions = self.sessions.finish();
        if sessions != self.sessions_shown {
            self.status.set("sessions", sessions);
            self.sessions_shown.clear();
            self.sessions_shown.push_str(sessions);
        }
    }

    fn arm_timer(&mut self, ctx: &mut Ctx<'_>) {
        let at = ctx.now + PUBLISH_EVERY;
        if self.timer_at.is_none() && ctx.timer(at, TICK_TIMER).is_ok() {
            self.timer_at = Some(at);
        }
    }
}

impl Agent for WorkerAgent {
    fn name(&self) -> &str {
        AGENTS[0]
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) -> io::Result<()> {
        let fd = self.listener.as_fd().try_clone_to_owned()?;
        ctx.listen(LISTENER_ID, fd)
    }

    fn on_completion(&mut self, ctx: &mut Ctx<'_>, completion: Completion) {
        match self.conns.event(ctx, completion) {
            ConnEvent::Received { id, buf } => {
                // Over its receive budget, the table has closed it.
                let kept = self.conns.receive(ctx, id, buf).is_ok();
                if kept {
                    self.pump(ctx, id);
                }
            }
            ConnEvent::Deadline { id } => {
                let now = ctx.now;
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.session.on_timeout(&self.config, now);
                }
                self.flush(ctx, id);
            }
            ConnEvent::Sent { id } => self.flush(ctx, id),
            ConnEvent::PeerClosed { id } => {
                // Like End: the frames in flight are answered (a half-closed peer may still
                // read), then the connection closes.
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.session.on_peer_closed();
                }
                self.flush(ctx, id);
            }
            ConnEvent::Other(Completion::Accepted { fd, .. }) => {
                let now = ctx.now;
                let session = WorkerSession::new(&self.config, now);
                let number = self.conns.stats().accepted + 1;
                if let Ok(id) = self.conns.accept(ctx, fd, |_| Conn {
                    session,
                    paused: false,
                    starved: false,
                    cancelled: Arc::new(AtomicBool::new(false)),
                    number,
                }) {
                    self.flush(ctx, id);
                }
            }
            ConnEvent::Other(Completion::Timer { token }) if Ctx::local(token) == TICK_TIMER => {
                self.timer_at = None;
            }
            _ => {}
        }
        self.closed();
    }

    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
        let mut work = self.retry_waiting();
        work += self.take_done(ctx);
        self.closed();
        self.publish(ctx.now);
        self.arm_timer(ctx);
        work
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>) {
        self.conns.close_all(ctx);
    }
}

/// One stream's detector state on the detector lane.
struct Stream {
    detector: Box<dyn super::detector::Detector>,
    tracker: Tracker,
    picture: Picture,
}

/// The detector agent: decode, detect, track. See the [module docs](self).
struct DetectorAgent {
    /// `None`: transport only (no decode, empty Results).
    factory: Option<Arc<dyn DetectorFactory>>,
    jobs: LinkRx<Job>,
    done: LinkTx<Done>,
    waiting: VecDeque<Done>,
    streams: HashMap<u64, Stream>,
    decoded: Counter,
    decoded_count: u64,
    /// Frames of closed connections not run.
    skipped: u64,
    /// `corelane_frames_detector_streams`.
    streams_gauge: Counter,
    decode: LatencyRecorder,
    infer: LatencyRecorder,
    decode_summary: Summary,
    infer_summary: Summary,
    published: Option<Instant>,
    bridge: Option<super::bridge::Bridge>,
    bridge_counters: [Counter; 2],
}

impl std::fmt::Debug for DetectorAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectorAgent")
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

/// Frames one pass of the detector lane takes (the rest wait in the link).
const FRAMES_PER_PASS: usize = 4;

impl DetectorAgent {
    fn run(
        &mut self,
        conn: u64,
        accepted: &Accepted,
        times: (u64, u64),
        arrived: Instant,
        data: &[u8],
        mut detections: Vec<Detection>,
    ) -> Outcome {
        detections.clear();
        let mut outcome = Outcome {
            frame_id: accepted.frame_id,
            ts_mono_ns: times.0,
            ts_utc_ns: times.1,
            detections,
            ..Outcome::default()
        };
        let Some(factory) = &self.factory else {
            outcome.total_ms = ms(Instant::now().saturating_duration_since(arrived));
            return outcome;
        };
        let stream = self.streams.entry(conn).or_insert_with(|| Stream {
            detector: factory.make(),
            tracker: Tracker::new(),
            picture: Picture::default(),
        });
        let start = Instant::now();
        let decoded = match accepted.raw {
            Some(format) => {
                stream.picture.reset(accepted.width, accepted.height);
                yuv::unpack(
                    format,
                    data,
                    accepted.width,
                    accepted.height,
                    &accepted.plane[..accepted.planes],
                    &mut stream.picture,
                );
                Ok(())
            }
            None => {
                let (w, h) = (accepted.width as usize, accepted.height as usize);
                jpeg::decode_within(data, w, h, &mut stream.picture).map_err(|e| e.to_string())
            }
        };
        let decoded_at = Instant::now();
        if let Err(why) = decoded {
            outcome.error =
                Some((ErrorCode::InvalidFrame, format!("cannot decode the JPEG: {why}")));
            return outcome;
        }
        self.decoded_count += 1;
        self.decode.record(duration_ns(decoded_at - start));
        if let Some(bridge) = &mut self.bridge {
            bridge.publish(&stream.picture, times.0);
        }
        if let Err(e) = stream.detector.detect(&stream.picture, &mut outcome.detections) {
            let code = match e {
                super::detector::DetectError::NotReady(_) => ErrorCode::ModelNotReady,
                super::detector::DetectError::Internal(_) => ErrorCode::Internal,
            };
            outcome.error = Some((code, e.to_string()));
            outcome.detections.clear();
            return outcome;
        }
        let inferred_at = Instant::now();
        self.infer.record(duration_ns(inferred_at - decoded_at));
        stream.tracker.update(&mut outcome.detections);
        let end = Instant::now();
        outcome.pre_ms = ms(decoded_at - start);
        outcome.infer_ms = ms(inferred_at - decoded_at);
        outcome.post_ms = ms(end - inferred_at);
        outcome.total_ms = ms(end.saturating_duration_since(arrived));
        outcome
    }

    fn send(&mut self, done: Done) {
        if !self.waiting.is_empty() {
            self.waiting.push_back(done);
            return;
        }
        if let Err(e) = self.done.push(done) {
            self.waiting.push_back(e.into_inner());
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

fn ms(d: Duration) -> f32 {
    d.as_secs_f32() * 1000.0
}

impl Agent for DetectorAgent {
    fn name(&self) -> &str {
        AGENTS[1]
    }

    fn do_work(&mut self, ctx: &mut Ctx<'_>) -> usize {
        let mut work = 0;
        while let Some(done) = self.waiting.pop_front() {
            match self.done.push(done) {
                Ok(()) => work += 1,
                Err(e) => {
                    self.waiting.push_front(e.into_inner());
                    return work.max(1);
                }
            }
        }
        let mut frames = 0;
        while frames < FRAMES_PER_PASS {
            let Ok(job) = self.jobs.pop() else { break };
            work += 1;
            match job {
                Job::Frame { conn, accepted, times, arrived, data, detections, cancelled } => {
                    if cancelled.load(Ordering::Relaxed) {
                        // Its connection closed: nothing to compute, the buffer goes back.
                        self.skipped += 1;
                        let outcome = Outcome { detections, ..Outcome::default() };
                        self.send(Done { conn, outcome, data });
                        continue;
                    }
                    frames += 1;
                    let outcome = self.run(conn, &accepted, times, arrived, &data, detections);
                    self.send(Done { conn, outcome, data });
                }
                Job::Closed { conn } => {
                    self.streams.remove(&conn);
                }
            }
        }
        let now = ctx.now;
        if self.published.is_none_or(|at| now >= at + PUBLISH_EVERY) {
            self.published = Some(now);
            self.decoded.set(self.decoded_count);
            self.streams_gauge.set(self.streams.len() as u64);
            self.decode.publish(&self.decode_summary);
            if let Some(bridge) = &self.bridge {
                let stats = bridge.stats();
                self.bridge_counters[0].set(stats.published);
                self.bridge_counters[1].set(stats.skipped);
            }
            self.infer.publish(&self.infer_summary);
        }
        work
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> FramesConfig {
        Config::default().frames
    }

    #[test]
    fn the_sessions_detail_lists_64_sessions_and_counts_the_rest() {
        let mut d = SessionsDetail::default();
        let line = |number| SessionLine {
            number,
            window: 4,
            inflight: 1,
            frames: 10,
            results: 9,
            errors: 0,
        };
        for number in 1..=100 {
            d.push(&line(number));
        }
        let text = d.finish().to_owned();
        let entries: Vec<&str> = text.split("; ").collect();
        assert_eq!(entries.len(), 65, "{text}");
        assert_eq!(entries[0], "#1 window 4 inflight 1 frames 10 results 9 errors 0");
        assert!(entries[63].starts_with("#64 "), "{text}");
        assert_eq!(entries[64], "+36 more");
        let parsed = crate::cli::top::snapshot::Session::parse_list(&text);
        assert_eq!(parsed.len(), 64, "top reads the listed ones");
        d.clear();
        for number in 1..=3 {
            d.push(&line(number));
        }
        assert_eq!(d.finish().split("; ").count(), 3, "no tail when all are listed");
        d.clear();
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn the_detector_key_chooses_the_backend_and_its_identity() {
        let motion = detector_factory(&frames()).unwrap().expect("a detector");
        assert_eq!(motion.identity().family, "classical");
        let none = FramesConfig { detector: "none".into(), ..frames() };
        assert!(detector_factory(&none).unwrap().is_none(), "transport only");
        assert_eq!(transport_only_identity().name, "none");
        let onnx =
            FramesConfig { detector: "onnx".into(), model: "/nope/x.onnx".into(), ..frames() };
        let err = detector_factory(&onnx).err().expect("no model there");
        if cfg!(feature = "onnx") {
            assert!(err.contains("/nope/x.onnx") && err.contains("not found"), "{err}");
        } else {
            assert!(err.contains("--features onnx"), "{err}");
        }
    }

    #[cfg(feature = "onnx")]
    #[test]
    fn with_the_onnx_feature_the_shipped_model_runs_and_names_itself() {
        let model = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny_detector.onnx");
        let onnx = FramesConfig { detector: "onnx".into(), model: model.into(), ..frames() };
        let factory = detector_factory(&onnx).unwrap().expect("a detector");
        let id = factory.identity();
        assert_eq!((id.family.as_str(), id.name.as_str()), ("yolo", "tiny_detector.onnx"));
        assert_eq!(id.classes, vec!["square".to_owned()]);
        let config = worker_config(&onnx, id.clone());
        assert_eq!(config.identity.family, "yolo", "InitOk and Results report the model");
        let mut detector = factory.make();
        let mut picture = Picture::default();
        picture.reset(128, 96);
        picture.y.fill(16);
        picture.u.fill(128);
        picture.v.fill(128);
        for y in 24..56 {
            picture.y[y * 128 + 40..y * 128 + 72].fill(235);
        }
        let mut out = Vec::new();
        detector.detect(&picture, &mut out).unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        assert!((out[0].x1 - 40.0).abs() <= 2.0 && (out[0].y1 - 24.0).abs() <= 2.0, "{out:?}");
    }
}
