//! The edge agent's protocol core, sans-IO (quinn-proto style): it takes events (connected,
//! bytes received, a captured frame offered, a timer fired, the connection closed) with the
//! time `now` passed in, and produces bytes to write, a timer to arm and a reconnect delay.
//! The driver in [`super`] owns the socket and the clock; tests drive the core with a fake
//! clock, so no sleeps and no flakes.
//!
//! What it does (frames v1, `shared/specs/frames-v1.md`, the agent side):
//! - on connect it queues Init with the capabilities; it adopts InitOk's choice (window,
//!   `max_frame_bytes`, codec) and only then sends frames;
//! - never more frames in flight than the window (`debug_assert!` on every send); a Result
//!   or an Error naming a frame returns that frame's credit; WindowUpdate changes the window
//!   (frames in flight above a shrunk window drain naturally);
//! - without a credit, LATEST_WINS keeps one pending frame and replaces it with the newest
//!   (a drop), FIFO keeps a bounded queue and reports [`Offer::Blocked`] when it is full (the
//!   source waits; nothing is dropped);
//! - results are matched by frame id in a bounded in-flight table in send order, so a result
//!   for a frame that is not the oldest in flight counts as out of order;
//! - heartbeat every 2 s, the peer is dead after 10 s without a message;
//! - reconnect backoff 0.5 s doubling to 30 s with ±20% deterministic jitter, reset after
//!   InitOk; frames in flight at a disconnect are lost and their credits reset;
//! - degradation: a raw frame over `max_frame_bytes`, or every frame when the worker chose
//!   CODEC_JPEG, goes out as JPEG (quality 85) through a [`JpegEncoder`].
//!
//! Steady state allocates nothing per frame: the output buffer, the frame envelope (and its
//! data buffer), the JPEG buffer and the queued frames' buffers are reused; the in-flight
//! table is sized to the window cap.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::frames::codec::{self, PREFIX_BYTES};
use crate::frames::proto::{
    envelope::Payload, Capabilities, Chosen, Codec, End, Envelope, ErrorCode, Frame, Heartbeat,
    Init, PixelFormat, Plane, Policy,
};

/// Heartbeat period, both ways.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Silence from the worker after which the connection is dead.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// The first reconnect delay (before jitter).
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The largest reconnect delay (before jitter).
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long after End the agent waits for the results of the frames in flight.
pub const END_GRACE: Duration = Duration::from_secs(2);
/// JPEG quality of degraded frames.
pub const JPEG_QUALITY: u8 = 85;
/// Distinct track ids remembered for the summary.
pub const TRACK_IDS_MAX: usize = 4096;

/// Longer track ids are not remembered (a hostile worker could make the set hold 4096
/// strings of a megabyte each).
pub const TRACK_ID_MAX_BYTES: usize = 64;
/// The largest message accepted from the worker (results, errors and control messages are
/// small; a prefix over this closes the connection).
pub const RECV_LIMIT: usize = 1 << 20;
/// Number of [`ErrorCode`] values (the size of the per-code counters).
const ERROR_CODES: usize = 11;

pub use crate::frames::vision::yuv::{plane_layout, PlaneRef, RawFormat};

/// The wire pixel format of a raw layout.
pub fn wire_format(format: RawFormat) -> PixelFormat {
    match format {
        RawFormat::Nv12 => PixelFormat::PfNv12,
        RawFormat::I420 => PixelFormat::PfI420,
    }
}

/// A captured raw frame, borrowed from the source for the length of an [`AgentCore::offer`].
#[derive(Debug, Clone, Copy)]
pub struct RawFrame<'a> {
    /// Layout of `data`.
    pub format: RawFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The planes (2 for NV12, 3 for I420).
    pub planes: &'a [PlaneRef],
    /// The pixels.
    pub data: &'a [u8],
    /// Capture time, monotonic clock, nanoseconds.
    pub ts_mono_ns: u64,
    /// Capture time, wall clock, nanoseconds since the Unix epoch.
    pub ts_utc_ns: u64,
}

/// The JPEG encoder failed on a frame (the frame then goes out raw).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegFailed;

/// Encodes a raw frame to a JPEG file (the degradation path). The driver's implementation
/// ([`super::VisionJpeg`]) unpacks with `vision::yuv` and encodes with `vision::jpeg`; tests
/// use a fake.
pub trait JpegEncoder {
    /// Replaces `out`'s contents with `frame` encoded at `quality`.
    fn encode(
        &mut self,
        frame: &RawFrame<'_>,
        quality: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), JpegFailed>;
}

/// The agent's configuration, fixed for a run.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Envelope.stream_id of every message.
    pub stream_id: String,
    /// Init.session_id and Frame.session_id.
    pub session_id: String,
    /// Init.model (informational).
    pub model: String,
    /// The raw format frames are captured in.
    pub format: RawFormat,
    /// Capture width (Capabilities.max_width).
    pub width: u32,
    /// Capture height (Capabilities.max_height).
    pub height: u32,
    /// Capture rate (Capabilities.desired_fps; 0: as fast as credits allow).
    pub fps: f32,
    /// What happens to a frame with no credit.
    pub policy: Policy,
    /// The largest window the agent accepts (Capabilities.max_inflight; InitOk and
    /// WindowUpdate are capped to it).
    pub window_cap: u32,
    /// FIFO queue depth (LATEST_WINS keeps one pending frame).
    pub fifo_depth: usize,
    /// Ask the worker to choose JPEG.
    pub prefer_jpeg: bool,
    /// Seed of the backoff jitter.
    pub seed: u64,
}

/// What became of an offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// It went out now (a credit was free).
    Sent,
    /// It is the pending frame (LATEST_WINS) until a credit frees.
    Held,
    /// It replaced the pending frame, which is dropped (LATEST_WINS).
    Replaced,
    /// It waits in the FIFO queue.
    Queued,
    /// The FIFO queue is full: the frame was not taken. Stop capturing until
    /// [`AgentCore::wants_frame`] is true again (a credit frees), then offer it again.
    Blocked,
    /// The session is finishing or done: the frame was not taken.
    Closed,
}

/// Something the driver may want to log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// InitOk adopted: the session is ready.
    Ready {
        /// The window (capped initial credits).
        window: u32,
        /// The codec the worker chose.
        codec: Codec,
        /// The pixel format the worker chose.
        pixel_format: PixelFormat,
        /// The width the worker chose (may differ from the capture width).
        width: u32,
        /// The height the worker chose.
        height: u32,
        /// InitOk.max_frame_bytes (0: no limit).
        max_frame_bytes: u32,
    },
    /// The worker sent an Error.
    WorkerError {
        /// Its code.
        code: ErrorCode,
        /// The frame it is about (0: none).
        frame_id: u64,
    },
    /// The worker was silent for [`PEER_TIMEOUT`]: close the connection.
    PeerTimeout,
    /// The worker sent bytes that are not a valid message: close the connection.
    ProtocolError,
    /// Frames went out as JPEG from now on.
    JpegSwitch,
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Sum of the samples (the histogram's mean times its count: within its 3 significant
    /// figures).
    pub sum: f64,
}

/// Errors received, by code (the wire names), for the summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ErrorCount {
    /// The ErrorCode name (`FRAME_TOO_LARGE`, ...).
    pub code: &'static str,
    /// How many.
    pub count: u64,
}

/// The agent's metrics (names from seed 004) and totals, for the end-of-run report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// The current window (after the run: the last session's).
    pub ai_window_size: u32,
    /// Frames in flight now.
    pub ai_inflight: u32,
    /// Pending frames replaced by a newer one (LATEST_WINS).
    pub ai_drops_latestwins_total: u64,
    /// Frame round trips (send to Result), ms.
    pub ai_rtt_ms: Percentiles,
    /// Time to encode a frame's message (protobuf, and JPEG when used), ms.
    pub ai_encode_ms: Percentiles,
    /// Frames sent.
    pub ai_frames_sent_total: u64,
    /// Results for a frame that was not the oldest in flight.
    pub frames_out_of_order_total: u64,
    /// Raw frames over InitOk.max_frame_bytes.
    pub frame_bytes_max_hit_total: u64,
    /// Switches from raw to JPEG transport.
    pub ai_degrade_jpeg_switch_total: u64,
    /// Frames sent as JPEG.
    pub jpeg_frames_total: u64,
    /// Raw bytes of the frames sent as JPEG over their JPEG bytes (0 with no JPEG frame).
    pub jpeg_compression_ratio: f64,
    /// JPEG encodes that failed (the frame went out raw).
    pub jpeg_failures_total: u64,
    /// Frames the source handed over (offers taken).
    pub frames_captured_total: u64,
    /// Results matched to a frame in flight.
    pub results_total: u64,
    /// Results for no frame in flight (late, from an earlier connection, or bogus).
    pub results_unmatched_total: u64,
    /// Errors received (with or without a frame).
    pub errors_total: u64,
    /// Errors received, by code.
    pub errors_by_code: Vec<ErrorCount>,
    /// Frames in flight when a connection closed (or End's grace ran out).
    pub frames_lost_total: u64,
    /// Frames still pending or queued when the run was interrupted.
    pub frames_discarded_total: u64,
    /// Offers refused because the FIFO queue was full.
    pub fifo_blocked_total: u64,
    /// Connections established.
    pub connections_total: u64,
    /// Reconnect delays scheduled (after a failed connect or a closed connection).
    pub reconnects_total: u64,
    /// Peer timeouts (10 s of silence).
    pub peer_timeouts_total: u64,
    /// Undecodable or unexpected messages from the worker.
    pub protocol_errors_total: u64,
    /// WindowUpdates received.
    pub window_updates_total: u64,
    /// Heartbeats received.
    pub heartbeats_rx_total: u64,
    /// Detections in all results.
    pub detections_total: u64,
    /// Distinct track ids seen (at most [`TRACK_IDS_MAX`] are remembered).
    pub track_ids_seen: u64,
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection (before the first, or waiting for the reconnect delay).
    Disconnected,
    /// Init sent, waiting for InitOk.
    AwaitInitOk,
    /// InitOk adopted: frames flow.
    Ready,
    /// End sent: waiting for the in-flight results (at most [`END_GRACE`]).
    Ended,
    /// Finished: nothing more to do.
    Done,
}

/// A frame sent and not yet answered.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    id: u64,
    sent_at: Instant,
}

/// A frame's description without its data: what a source captured into its buffer, and
/// what the core keeps with a queued frame's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// Layout of the data.
    pub format: RawFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The planes; the first `nplanes` are used.
    pub planes: [PlaneRef; 3],
    /// Planes used (2 for NV12, 3 for I420).
    pub nplanes: usize,
    /// Capture time, monotonic clock, ns.
    pub ts_mono_ns: u64,
    /// Capture time, wall clock, ns since the Unix epoch.
    pub ts_utc_ns: u64,
}

impl FrameInfo {
    fn of(frame: &RawFrame<'_>) -> Self {
        debug_assert!(frame.planes.len() <= 3, "at most 3 planes");
        let mut planes = [PlaneRef::default(); 3];
        let nplanes = frame.planes.len().min(3);
        planes[..nplanes].copy_from_slice(&frame.planes[..nplanes]);
        Self {
            format: frame.format,
            width: frame.width,
            height: frame.height,
            planes,
            nplanes,
            ts_mono_ns: frame.ts_mono_ns,
            ts_utc_ns: frame.ts_utc_ns,
        }
    }

    /// The frame as the core takes it, with `data` the buffer the source filled.
    pub fn frame<'a>(&'a self, data: &'a [u8]) -> RawFrame<'a> {
        RawFrame {
            format: self.format,
            width: self.width,
            height: self.height,
            planes: &self.planes[..self.nplanes],
            data,
            ts_mono_ns: self.ts_mono_ns,
            ts_utc_ns: self.ts_utc_ns,
        }
    }
}

/// A frame waiting for a credit, with its own (reused) buffer.
#[derive(Debug)]
struct Slot {
    meta: FrameInfo,
    data: Vec<u8>,
}

/// Counters behind [`Summary`].
#[derive(Debug, Default)]
struct Counters {
    drops: u64,
    sent: u64,
    out_of_order: u64,
    max_hit: u64,
    jpeg_switches: u64,
    jpeg_frames: u64,
    jpeg_raw_bytes: u64,
    jpeg_bytes: u64,
    jpeg_failures: u64,
    captured: u64,
    results: u64,
    frame_errors: u64,
    unmatched: u64,
    errors: u64,
    errors_by_code: [u64; ERROR_CODES],
    lost: u64,
    discarded: u64,
    fifo_blocked: u64,
    connections: u64,
    reconnects: u64,
    peer_timeouts: u64,
    protocol_errors: u64,
    window_updates: u64,
    heartbeats_rx: u64,
    detections: u64,
}

/// The agent's protocol state machine. See the module documentation.
pub struct AgentCore {
    cfg: CoreConfig,
    state: State,
    /// Capture is over: send what is queued, then End.
    finishing: bool,
    window: u32,
    /// The window of the last session, kept past its close for the summary.
    last_window: u32,
    inflight: VecDeque<InFlight>,
    queue: VecDeque<Slot>,
    free: Vec<Slot>,
    next_frame_id: u64,
    last_frame_id: u64,
    chosen: Option<Chosen>,
    chosen_codec: Codec,
    max_frame_bytes: usize,
    jpeg_mode: bool,
    /// The envelope every Frame is encoded from (its data and planes buffers are reused).
    frame_env: Envelope,
    rx_env: Envelope,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    jpeg_buf: Vec<u8>,
    last_rx: Instant,
    next_heartbeat: Instant,
    end_deadline: Option<Instant>,
    close: bool,
    tx_msgs: u64,
    rx_msgs: u64,
    backoff_attempt: u32,
    rng: u64,
    encoder: Box<dyn JpegEncoder>,
    stopwatch: Option<fn() -> Instant>,
    events: VecDeque<Event>,
    counters: Counters,
    rtt_us: Histogram<u64>,
    encode_us: Histogram<u64>,
    track_ids: HashSet<String>,
}

impl std::fmt::Debug for AgentCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCore")
            .field("state", &self.state)
            .field("window", &self.window)
            .field("inflight", &self.inflight.len())
            .field("queued", &self.queue.len())
            .field("next_frame_id", &self.next_frame_id)
            .finish_non_exhaustive()
    }
}

impl AgentCore {
    /// A core in [`State::Disconnected`]. `encoder` is the degradation path; `stopwatch` is
    /// the clock read around frame encoding for `ai_encode_ms` only (`None`: not measured,
    /// as in tests); protocol decisions use only the `now` passed to each call.
    pub fn new(
        cfg: CoreConfig,
        encoder: Box<dyn JpegEncoder>,
        stopwatch: Option<fn() -> Instant>,
        now: Instant,
    ) -> Self {
        let cap = cfg.window_cap.max(1) as usize;
        let depth = match cfg.policy {
            Policy::Fifo => cfg.fifo_depth.max(1),
            Policy::LatestWins => 1,
        };
        let frame_env = Envelope {
            protocol_version: codec::PROTOCOL_VERSION,
            stream_id: cfg.stream_id.clone(),
            msg_type: crate::frames::proto::MsgType::Frame as i32,
            payload: Some(Payload::Frame(Frame {
                session_id: cfg.session_id.clone(),
                planes: Vec::with_capacity(3),
                ..Default::default()
            })),
        };
        let rng = match cfg.seed ^ 0x9e37_79b9_7f4a_7c15 {
            0 => 0x2545_f491_4f6c_dd1d,
            s => s,
        };
        // The bounds are constants inside hdrhistogram's limits.
        let hist = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Self {
            cfg,
            state: State::Disconnected,
            finishing: false,
            window: 0,
            last_window: 0,
            inflight: VecDeque::with_capacity(cap),
            queue: VecDeque::with_capacity(depth),
            free: Vec::with_capacity(depth),
            next_frame_id: 1,
            last_frame_id: 0,
            chosen: None,
            chosen_codec: Codec::None,
            max_frame_bytes: usize::MAX,
            jpeg_mode: false,
            frame_env,
            rx_env: Envelope::default(),
            rbuf: Vec::new(),
            out: Vec::new(),
            jpeg_buf: Vec::new(),
            last_rx: now,
            next_heartbeat: now + HEARTBEAT_INTERVAL,
            end_deadline: None,
            close: false,
            tx_msgs: 0,
            rx_msgs: 0,
            backoff_attempt: 0,
            rng,
            encoder,
            stopwatch,
            events: VecDeque::with_capacity(16),
            counters: Counters::default(),
            rtt_us: hist(),
            encode_us: hist(),
            track_ids: HashSet::new(),
        }
    }

    /// The session state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The current window.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Frames in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Frames pending (LATEST_WINS, at most one) or queued (FIFO).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The worker's choice from the last InitOk.
    pub fn chosen(&self) -> Option<&Chosen> {
        self.chosen.as_ref()
    }

    /// Whether the source should capture: false while the FIFO queue is full (until a credit
    /// frees) and once the session is finishing.
    pub fn wants_frame(&self) -> bool {
        if self.finishing || self.state == State::Done {
            return false;
        }
        match self.cfg.policy {
            Policy::Fifo => self.queue.len() < self.cfg.fifo_depth.max(1),
            Policy::LatestWins => true,
        }
    }

    /// Whether an offered frame would go out now (ready, a credit free, nothing queued):
    /// the capture gate of `--fps 0`.
    pub fn can_send_now(&self) -> bool {
        self.queue.is_empty() && self.can_send() && !self.finishing
    }

    /// Frames that are settled: answered (Result, or Error naming them), dropped
    /// (LATEST_WINS), lost at a disconnect, or discarded at an interrupt.
    pub fn frames_settled(&self) -> u64 {
        let c = &self.counters;
        c.results + c.frame_errors + c.drops + c.lost + c.discarded
    }

    /// Whether the driver should close the connection now (peer dead, protocol error, or
    /// the session finished); then call [`on_closed`](Self::on_closed).
    pub fn wants_close(&self) -> bool {
        self.close
    }

    /// Whether the run is over.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next thing the driver may want to log.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The connection is up: queues Init and starts the heartbeat and peer timers.
    pub fn on_connected(&mut self, now: Instant) {
        if self.state == State::Done {
            return;
        }
        self.reset_connection();
        self.state = State::AwaitInitOk;
        self.counters.connections += 1;
        self.last_rx = now;
        self.next_heartbeat = now + HEARTBEAT_INTERVAL;
        let cfg = &self.cfg;
        let init = Init {
            model: cfg.model.clone(),
            caps: Some(Capabilities {
                accepted_pixel_formats: vec![
                    wire_format(cfg.format) as i32,
                    PixelFormat::PfJpeg as i32,
                ],
                accepted_codecs: vec![Codec::None as i32, Codec::Jpeg as i32],
                max_width: cfg.width,
                max_height: cfg.height,
                max_inflight: cfg.window_cap,
                supports_letterbox: false,
                supports_normalize: false,
                preferred_layout: String::new(),
                preferred_dtype: String::new(),
                prefer_jpeg: cfg.prefer_jpeg,
                desired_policy: cfg.policy as i32,
                desired_fps: cfg.fps,
            }),
            session_id: cfg.session_id.clone(),
        };
        self.send_control(Payload::Init(init));
    }

    /// Bytes received from the worker.
    pub fn on_bytes(&mut self, bytes: &[u8], now: Instant) {
        if !self.connected() || self.close {
            return;
        }
        if self.rbuf.is_empty() {
            let used = self.process(bytes, now);
            if !self.close {
                self.rbuf.extend_from_slice(&bytes[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.extend_from_slice(bytes);
            let used = self.process(&buf, now);
            buf.drain(..used);
            self.rbuf = buf;
        }
    }

    /// A frame from the source. See [`Offer`].
    pub fn offer(&mut self, frame: &RawFrame<'_>, now: Instant) -> Offer {
        if self.finishing || self.state == State::Done {
            return Offer::Closed;
        }
        if self.queue.is_empty() && self.can_send() {
            self.counters.captured += 1;
            self.send(FrameInfo::of(frame), Data::Borrowed(frame.data), now);
            return Offer::Sent;
        }
        let taken = match self.cfg.policy {
            Policy::LatestWins => {
                if let Some(old) = self.queue.pop_front() {
                    self.counters.drops += 1;
                    self.free.push(old);
                    Offer::Replaced
                } else {
                    Offer::Held
                }
            }
            Policy::Fifo => {
                if self.queue.len() >= self.cfg.fifo_depth.max(1) {
                    self.counters.fifo_blocked += 1;
                    return Offer::Blocked;
                }
                Offer::Queued
            }
        };
        self.counters.captured += 1;
        let mut slot = self
            .free
            .pop()
            .unwrap_or_else(|| Slot { meta: FrameInfo::of(frame), data: Vec::new() });
        slot.meta = FrameInfo::of(frame);
        slot.data.clear();
        slot.data.extend_from_slice(frame.data);
        self.queue.push_back(slot);
        taken
    }

    /// Moves the bytes to write into `buf`: swapped in when `buf` is empty (no copy), else
    /// appended (the driver keeps a partial write at the front of `buf`).
    pub fn poll_output(&mut self, buf: &mut Vec<u8>) {
        if buf.is_empty() {
            std::mem::swap(buf, &mut self.out);
        } else {
            buf.extend_from_slice(&self.out);
            self.out.clear();
        }
    }

    /// The bytes to write, taken out of the core (allocates; tests use it).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// When [`on_timeout`](Self::on_timeout) is due: the next heartbeat, the peer timeout,
    /// or the end of End's grace. `None` when not connected.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.connected() {
            return None;
        }
        let mut t = self.next_heartbeat.min(self.last_rx + PEER_TIMEOUT);
        if let Some(end) = self.end_deadline {
            t = t.min(end);
        }
        Some(t)
    }

    /// Timers: a heartbeat due goes out; 10 s of silence marks the peer dead (close);
    /// End's grace over settles the frames in flight as lost and finishes.
    pub fn on_timeout(&mut self, now: Instant) {
        if !self.connected() {
            return;
        }
        if now >= self.last_rx + PEER_TIMEOUT && !self.close {
            self.counters.peer_timeouts += 1;
            self.event(Event::PeerTimeout);
            self.close = true;
        }
        if let Some(end) = self.end_deadline {
            if now >= end {
                self.counters.lost += self.inflight.len() as u64;
                self.inflight.clear();
                self.state = State::Done;
                self.close = true;
                return;
            }
        }
        if now >= self.next_heartbeat && !self.close {
            let hb =
                Heartbeat { last_frame_id: self.last_frame_id, tx: self.tx_msgs, rx: self.rx_msgs };
            self.send_control(Payload::Heartbeat(hb));
            self.next_heartbeat = now + HEARTBEAT_INTERVAL;
        }
    }

    /// The connection closed (or a connect failed). Frames in flight are lost and the
    /// credits reset. Returns the delay before the next connect, or `None` when the run is
    /// over (the session ended).
    pub fn on_closed(&mut self, _now: Instant) -> Option<Duration> {
        self.counters.lost += self.inflight.len() as u64;
        self.reset_connection();
        let ended = matches!(self.state, State::Ended | State::Done)
            || (self.finishing && self.queue.is_empty());
        if ended {
            self.state = State::Done;
            return None;
        }
        self.state = State::Disconnected;
        self.counters.reconnects += 1;
        Some(self.backoff())
    }

    /// Capture is over: what is pending or queued still goes out as credits free, then End
    /// is sent and the core waits up to [`END_GRACE`] for the results in flight.
    pub fn finish(&mut self, now: Instant) {
        if self.state == State::Done {
            return;
        }
        self.finishing = true;
        self.pump(now);
    }

    /// Interrupted (SIGINT/SIGTERM): pending and queued frames are discarded, End goes out
    /// now if the session is ready (else the run is over at once).
    pub fn abort(&mut self, now: Instant) {
        self.counters.discarded += self.queue.len() as u64;
        while let Some(slot) = self.queue.pop_front() {
            self.free.push(slot);
        }
        if matches!(self.state, State::Ready | State::Ended) {
            self.finish(now);
        } else {
            self.finishing = true;
            self.counters.lost += self.inflight.len() as u64;
            self.inflight.clear();
            if self.state != State::Disconnected {
                self.close = true;
            }
            self.state = State::Done;
        }
    }

    /// The metrics and totals so far.
    pub fn summary(&self) -> Summary {
        let c = &self.counters;
        let pct = |h: &Histogram<u64>| Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5) as f64 / 1e3,
            p99: h.value_at_quantile(0.99) as f64 / 1e3,
            max: h.max() as f64 / 1e3,
            sum: h.mean() * h.len() as f64 / 1e3,
        };
        let errors_by_code = c
            .errors_by_code
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| ErrorCount {
                code: ErrorCode::try_from(i as i32).map_or("UNKNOWN", |e| e.as_str_name()),
                count: n,
            })
            .collect();
        Summary {
            ai_window_size: if self.connected() { self.window } else { self.last_window },
            ai_inflight: self.inflight.len() as u32,
            ai_drops_latestwins_total: c.drops,
            ai_rtt_ms: pct(&self.rtt_us),
            ai_encode_ms: pct(&self.encode_us),
            ai_frames_sent_total: c.sent,
            frames_out_of_order_total: c.out_of_order,
            frame_bytes_max_hit_total: c.max_hit,
            ai_degrade_jpeg_switch_total: c.jpeg_switches,
            jpeg_frames_total: c.jpeg_frames,
            jpeg_compression_ratio: if c.jpeg_bytes == 0 {
                0.0
            } else {
                c.jpeg_raw_bytes as f64 / c.jpeg_bytes as f64
            },
            jpeg_failures_total: c.jpeg_failures,
            frames_captured_total: c.captured,
            results_total: c.results,
            results_unmatched_total: c.unmatched,
            errors_total: c.errors,
            errors_by_code,
            frames_lost_total: c.lost,
            frames_discarded_total: c.discarded,
            fifo_blocked_total: c.fifo_blocked,
            connections_total: c.connections,
            reconnects_total: c.reconnects,
            peer_timeouts_total: c.peer_timeouts,
            protocol_errors_total: c.protocol_errors,
            window_updates_total: c.window_updates,
            heartbeats_rx_total: c.heartbeats_rx,
            detections_total: c.detections,
            track_ids_seen: self.track_ids.len() as u64,
        }
    }

    // ---- helpers ----

    fn connected(&self) -> bool {
        matches!(self.state, State::AwaitInitOk | State::Ready | State::Ended)
    }

    fn credit_free(&self) -> bool {
        self.inflight.len() < self.window as usize
    }

    fn can_send(&self) -> bool {
        self.state == State::Ready && self.credit_free()
    }

    fn event(&mut self, e: Event) {
        if self.events.len() == self.events.capacity() {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Forgets the connection: in flight, credits, partial input and output.
    fn reset_connection(&mut self) {
        if self.window > 0 {
            self.last_window = self.window;
        }
        self.inflight.clear();
        self.window = 0;
        self.rbuf.clear();
        self.out.clear();
        self.close = false;
        self.end_deadline = None;
        self.tx_msgs = 0;
        self.rx_msgs = 0;
    }

    /// The next reconnect delay: 0.5 s doubling to 30 s, times a jitter in [0.8, 1.2).
    fn backoff(&mut self) -> Duration {
        let nominal =
            BACKOFF_MIN.saturating_mul(1u32 << self.backoff_attempt.min(16)).min(BACKOFF_MAX);
        self.backoff_attempt = self.backoff_attempt.saturating_add(1);
        // xorshift64
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
        nominal.mul_f64(0.8 + 0.4 * unit)
    }

    fn send_control(&mut self, payload: Payload) {
        codec::encode(&self.cfg.stream_id, payload, &mut self.out);
        self.tx_msgs += 1;
    }

    /// Decodes every whole message at the front of `buf`; returns the bytes used.
    fn process(&mut self, buf: &[u8], now: Instant) -> usize {
        let mut used = 0;
        while !self.close {
            match codec::split(&buf[used..], RECV_LIMIT) {
                Ok(Some(end)) => {
                    let body = &buf[used + PREFIX_BYTES..used + end];
                    used += end;
                    match codec::decode(body, &mut self.rx_env) {
                        Ok(()) => self.on_message(now),
                        Err(_) => self.protocol_error(),
                    }
                }
                Ok(None) => break,
                Err(_) => self.protocol_error(),
            }
        }
        used
    }

    #[cold]
    fn protocol_error(&mut self) {
        self.counters.protocol_errors += 1;
        self.event(Event::ProtocolError);
        self.close = true;
    }

    fn on_message(&mut self, now: Instant) {
        self.last_rx = now;
        self.rx_msgs += 1;
        let Some(payload) = self.rx_env.payload.take() else { return };
        match payload {
            Payload::InitOk(ok) => {
                if self.state != State::AwaitInitOk {
                    self.counters.protocol_errors += 1;
                    return;
                }
                let chosen = ok.chosen.unwrap_or_default();
                self.window = chosen.initial_credits.min(self.cfg.window_cap);
                self.max_frame_bytes = match ok.max_frame_bytes {
                    0 => usize::MAX,
                    n => n as usize,
                };
                self.chosen_codec = Codec::try_from(chosen.codec).unwrap_or(Codec::None);
                self.event(Event::Ready {
                    window: self.window,
                    codec: self.chosen_codec,
                    pixel_format: PixelFormat::try_from(chosen.pixel_format)
                        .unwrap_or(PixelFormat::PfUnknown),
                    width: chosen.width,
                    height: chosen.height,
                    max_frame_bytes: ok.max_frame_bytes,
                });
                self.chosen = Some(chosen);
                self.state = State::Ready;
                self.backoff_attempt = 0;
                self.pump(now);
            }
            Payload::Result(r) => {
                match self.inflight.iter().position(|f| f.id == r.frame_id) {
                    Some(pos) => {
                        if pos != 0 {
                            self.counters.out_of_order += 1;
                        }
                        // `pos` came from `position` on the same deque.
                        let f = self.inflight.remove(pos).expect("pos is in range");
                        let us = now.saturating_duration_since(f.sent_at).as_micros() as u64;
                        self.rtt_us.saturating_record(us.max(1));
                        self.counters.results += 1;
                    }
                    None => self.counters.unmatched += 1,
                }
                if let Some(set) = &r.detections {
                    self.counters.detections += set.items.len() as u64;
                    for d in &set.items {
                        if !d.track_id.is_empty()
                            && self.track_ids.len() < TRACK_IDS_MAX
                            && d.track_id.len() <= TRACK_ID_MAX_BYTES
                            && !self.track_ids.contains(&d.track_id)
                        {
                            self.track_ids.insert(d.track_id.clone());
                        }
                    }
                }
                self.pump(now);
            }
            Payload::Error(e) => {
                self.counters.errors += 1;
                let idx = usize::try_from(e.code).ok().filter(|&i| i < ERROR_CODES).unwrap_or(0);
                self.counters.errors_by_code[idx] += 1;
                self.event(Event::WorkerError {
                    code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                    frame_id: e.frame_id,
                });
                if e.frame_id != 0 {
                    if let Some(pos) = self.inflight.iter().position(|f| f.id == e.frame_id) {
                        self.inflight.remove(pos);
                        self.counters.frame_errors += 1;
                    }
                }
                self.pump(now);
            }
            Payload::WindowUpdate(w) => {
                self.counters.window_updates += 1;
                self.window = w.new_window.min(self.cfg.window_cap);
                self.pump(now);
            }
            Payload::Heartbeat(_) => self.counters.heartbeats_rx += 1,
            Payload::Init(_) | Payload::Frame(_) | Payload::End(_) => {
                self.counters.protocol_errors += 1;
            }
        }
    }

    /// Sends queued frames while credits last; then End when finishing; then done when
    /// End's results are all in.
    fn pump(&mut self, now: Instant) {
        while self.can_send() {
            let Some(mut slot) = self.queue.pop_front() else { break };
            self.send(slot.meta, Data::Owned(&mut slot.data), now);
            self.free.push(slot);
        }
        if self.finishing && self.state == State::Ready && self.queue.is_empty() {
            self.send_control(Payload::End(End { reason: "capture finished".into() }));
            self.state = State::Ended;
            self.end_deadline = Some(now + END_GRACE);
        }
        if self.state == State::Ended && self.inflight.is_empty() {
            self.state = State::Done;
            self.close = true;
        }
    }

    /// Encodes one frame (raw, or JPEG when degraded) into the output.
    fn send(&mut self, meta: FrameInfo, data: Data<'_>, now: Instant) {
        let t0 = self.stopwatch.map(|clock| clock());
        let id = self.next_frame_id;
        self.next_frame_id += 1;
        let raw = match &data {
            Data::Borrowed(d) => *d,
            Data::Owned(v) => v.as_slice(),
        };
        let over = raw.len() > self.max_frame_bytes;
        if over {
            self.counters.max_hit += 1;
        }
        let mut jpeg = false;
        if over || self.chosen_codec == Codec::Jpeg {
            let frame = meta.frame(raw);
            match self.encoder.encode(&frame, JPEG_QUALITY, &mut self.jpeg_buf) {
                Ok(()) => {
                    jpeg = true;
                    self.counters.jpeg_frames += 1;
                    self.counters.jpeg_raw_bytes += raw.len() as u64;
                    self.counters.jpeg_bytes += self.jpeg_buf.len() as u64;
                    if !self.jpeg_mode {
                        self.jpeg_mode = true;
                        self.counters.jpeg_switches += 1;
                        self.event(Event::JpegSwitch);
                    }
                }
                Err(JpegFailed) => self.counters.jpeg_failures += 1,
            }
        }
        if !jpeg {
            self.jpeg_mode = false;
        }
        let Some(Payload::Frame(f)) = &mut self.frame_env.payload else {
            unreachable!("frame_env always holds a Frame")
        };
        f.frame_id = id;
        f.ts_mono_ns = meta.ts_mono_ns;
        f.ts_pdt_ns = meta.ts_mono_ns;
        f.ts_utc_ns = meta.ts_utc_ns;
        f.width = meta.width;
        f.height = meta.height;
        f.planes.clear();
        let mut owned = data;
        if jpeg {
            f.pixel_format = PixelFormat::PfJpeg as i32;
            f.codec = Codec::Jpeg as i32;
            f.planes.push(Plane { stride: 0, offset: 0, size: self.jpeg_buf.len() as u32 });
            std::mem::swap(&mut f.data, &mut self.jpeg_buf);
        } else {
            f.pixel_format = wire_format(meta.format) as i32;
            f.codec = Codec::None as i32;
            for p in &meta.planes[..meta.nplanes] {
                f.planes.push(Plane {
                    stride: p.stride as u32,
                    offset: p.offset as u32,
                    size: p.size as u32,
                });
            }
            match &mut owned {
                Data::Borrowed(d) => {
                    f.data.clear();
                    f.data.extend_from_slice(d);
                }
                Data::Owned(v) => std::mem::swap(&mut f.data, *v),
            }
        }
        codec::encode_envelope(&self.frame_env, &mut self.out);
        let Some(Payload::Frame(f)) = &mut self.frame_env.payload else {
            unreachable!("frame_env always holds a Frame")
        };
        if jpeg {
            std::mem::swap(&mut f.data, &mut self.jpeg_buf);
        } else if let Data::Owned(v) = owned {
            std::mem::swap(&mut f.data, v);
        }
        self.tx_msgs += 1;
        self.last_frame_id = id;
        self.counters.sent += 1;
        self.inflight.push_back(InFlight { id, sent_at: now });
        debug_assert!(
            self.inflight.len() <= self.window as usize,
            "in flight {} over the window {}",
            self.inflight.len(),
            self.window
        );
        if let (Some(clock), Some(t0)) = (self.stopwatch, t0) {
            let us = clock().saturating_duration_since(t0).as_micros() as u64;
            self.encode_us.saturating_record(us.max(1));
        }
    }
}

/// A frame's data: the source's (copied into the envelope) or a queued slot's (swapped in
/// and back, no copy).
enum Data<'a> {
    Borrowed(&'a [u8]),
    Owned(&'a mut Vec<u8>),
}

#[cfg(test)]
mod tests;
