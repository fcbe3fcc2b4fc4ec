//! The worker's side of one frame protocol v1 connection, sans-IO: message bodies and `now`
//! in, encoded answers and a verdict out. The agent does the I/O; tests drive it with a fake
//! clock.
//!
//! The rules (`../shared/specs/frames-v1.md`, each an explicit check with a test):
//! - a version other than 1 is VERSION_UNSUPPORTED; a `msg_type` that does not name the oneof
//!   is BAD_MESSAGE; anything but Init before Init (and a second Init) is BAD_SEQUENCE; each
//!   of these is answered with an Error and the session goes on;
//! - a length prefix over the limit is FRAME_TOO_LARGE and closes the connection (the body is
//!   never read: nothing tells where the next message starts but its bytes);
//! - Init is answered with InitOk: the format, size, window and `max_frame_bytes` chosen
//!   from the agent's capabilities and the worker's limits;
//! - a Frame is validated ([`validate_frame`]); a valid one is accepted (handed to the
//!   detector) and later gets exactly one Result, an invalid one an Error with its frame_id;
//! - at most `window` frames are in flight: [`WorkerSession::wants_input`] turns false, the
//!   agent stops reading, and the kernel's TCP window pushes back on the agent;
//! - output the agent does not read for `backpressure_timeout` is BACKPRESSURE_TIMEOUT and
//!   a close;
//! - a Heartbeat every 2 s; 10 s without any message from the agent while the session reads
//!   is a dead peer: close;
//! - End: finish the in-flight frames, send their results, close.

use std::time::{Duration, Instant};

use super::codec::{self, DecodeError, ENVELOPE_SLACK};
use super::detector::{Detection, ModelIdentity};
use super::proto::{
    self, envelope::Payload, Capabilities, Chosen, Codec, Envelope, ErrorCode, Frame, PixelFormat,
    Policy,
};
use super::vision::yuv::{PlaneRef, RawFormat};

/// Results between two adaptations of the window ([`WorkerConfig::adaptive_window`]).
pub const ADAPT_EVERY: u32 = 16;

/// Limits and choices of a worker; one for every session.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Largest frame width the worker takes (even).
    pub max_width: u32,
    /// Largest frame height the worker takes (even).
    pub max_height: u32,
    /// The size chosen when the agent states no maximum.
    pub default_width: u32,
    /// The size chosen when the agent states no maximum.
    pub default_height: u32,
    /// Window (initial credits) offered; the agent's `max_inflight` can lower it.
    pub window: u32,
    /// Frame rate target reported in InitOk.
    pub fps_target: f32,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// How long a connection may stay without Init before it is closed.
    pub init_timeout: Duration,
    /// Silence from a reading session's peer that means it is dead.
    pub peer_timeout: Duration,
    /// How long answers may wait unread before BACKPRESSURE_TIMEOUT.
    pub backpressure_timeout: Duration,
    /// Whether JPEG frames are taken (decoder present).
    pub accept_jpeg: bool,
    /// Adapt the window to the detector: shrink it (WindowUpdate) while frames wait in the
    /// worker longer than twice their processing time, grow it back to the negotiated
    /// window when they hardly wait. See [`WorkerSession::on_outcome`].
    pub adaptive_window: bool,
    /// The model that runs (InitOk and Results).
    pub identity: ModelIdentity,
}

impl WorkerConfig {
    /// The largest message body any session takes: a raw frame of the largest size, plus
    /// the envelope's slack.
    pub fn max_message(&self) -> usize {
        self.max_width as usize * self.max_height as usize * 3 / 2 + ENVELOPE_SLACK
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_width: 1920,
            max_height: 1080,
            default_width: 640,
            default_height: 480,
            window: 4,
            fps_target: 10.0,
            heartbeat: Duration::from_secs(2),
            init_timeout: Duration::from_secs(3),
            peer_timeout: Duration::from_secs(10),
            backpressure_timeout: Duration::from_secs(5),
            accept_jpeg: true,
            adaptive_window: false,
            identity: ModelIdentity {
                family: "classical".into(),
                name: "motion".into(),
                version: "1".into(),
                classes: vec!["object".into()],
            },
        }
    }
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connected, waiting for Init.
    AwaitInit,
    /// InitOk sent: frames flow.
    Streaming,
    /// End received: finishing the frames in flight.
    Ending,
    /// Done: the agent closes the connection once the output is written.
    Closed,
}

/// Why a session closed (for counters and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The agent sent End and every result went out.
    End,
    /// A length prefix over the limit.
    TooLarge,
    /// The agent's answers stayed unread for the backpressure timeout.
    Backpressure,
    /// Nothing from the agent for the peer timeout.
    PeerTimeout,
    /// No Init within the init timeout.
    InitTimeout,
    /// The agent shut its sending side without End (after its frames were answered).
    Hangup,
}

/// A frame that passed validation: what the detector lane needs to decode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The agent's frame id.
    pub frame_id: u64,
    /// Raw layout, or `None` for JPEG.
    pub raw: Option<RawFormat>,
    /// Width in pixels (raw: the frame's; JPEG: the most the decoded picture may have, the
    /// chosen width).
    pub width: u32,
    /// Height in pixels (raw: the frame's; JPEG: the chosen height, a maximum).
    pub height: u32,
    /// The planes (first `planes` used; none for JPEG).
    pub plane: [PlaneRef; 3],
    /// Planes used.
    pub planes: usize,
}

/// What one message did.
#[derive(Debug)]
pub enum Step {
    /// Handled (answers, if any, are in the output).
    Handled,
    /// A valid frame: hand `accepted` and the frame's data (in the envelope the session
    /// decoded into: [`WorkerSession::frame_data`]) to the detector.
    Frame(Accepted),
}

/// What a detector made of an accepted frame, handed back to the session.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The frame.
    pub frame_id: u64,
    /// Capture timestamps of the frame (frame_ref).
    pub ts_mono_ns: u64,
    /// Capture timestamps of the frame (frame_ref).
    pub ts_utc_ns: u64,
    /// Decode and pre-processing, ms.
    pub pre_ms: f32,
    /// Inference, ms.
    pub infer_ms: f32,
    /// Tracking and post-processing, ms.
    pub post_ms: f32,
    /// From the frame's arrival to its result, ms.
    pub total_ms: f32,
    /// The boxes, tracked. Empty with `error` set.
    pub detections: Vec<Detection>,
    /// Set when the frame could not be processed: the code and message of the Error.
    pub error: Option<(ErrorCode, String)>,
}

/// Counters of one session, summed by the agent into the service's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Messages received and decoded.
    pub rx: u64,
    /// Messages sent.
    pub tx: u64,
    /// Frames accepted.
    pub frames: u64,
    /// Results sent.
    pub results: u64,
    /// Result payload bytes sent.
    pub results_bytes: u64,
    /// WindowUpdate messages sent.
    pub window_updates: u64,
    /// Errors sent, by [`ErrorCode`] value (index 0..=10).
    pub errors: [u64; 11],
}

/// One connection's protocol state. See the [module docs](self).
#[derive(Debug)]
pub struct WorkerSession {
    phase: Phase,
    stream_id: String,
    session_id: String,
    chosen: Chosen,
    allow_jpeg: bool,
    max_frame_bytes: u32,
    /// [`WorkerConfig::max_message`].
    pre_init_limit: usize,
    window: u32,
    /// The window InitOk granted: adaptation never goes above it.
    granted: u32,
    /// Queue wait and processing time of the results since the last adaptation, ms.
    adapt: (f32, f32, u32),
    inflight: u32,
    last_rx: Instant,
    /// When the connection was accepted (the init timeout counts from it).
    opened: Instant,
    next_heartbeat: Instant,
    /// Since when answers wait unread (set by the agent).
    blocked_since: Option<Instant>,
    /// Whether the agent is reading the connection (peer timeout applies only then).
    reading: bool,
    last_answered: u64,
    cause: Option<CloseCause>,
    /// The agent half-closed ([`on_peer_closed`](Self::on_peer_closed)).
    hung_up: bool,
    env: Envelope,
    /// The last Frame's buffers while other messages are decoded.
    spare: Option<Frame>,
    out: Vec<u8>,
    counters: SessionCounters,
}

impl WorkerSession {
    /// A session for a connection accepted at `now`.
    pub fn new(config: &WorkerConfig, now: Instant) -> Self {
        WorkerSession {
            phase: Phase::AwaitInit,
            stream_id: String::new(),
            session_id: String::new(),
            chosen: Chosen::default(),
            allow_jpeg: false,
            max_frame_bytes: 0,
            pre_init_limit: config.max_message(),
            window: 0,
            granted: 0,
            adapt: (0.0, 0.0, 0),
            inflight: 0,
            last_rx: now,
            opened: now,
            next_heartbeat: now + config.heartbeat,
            blocked_since: None,
            reading: true,
            last_answered: 0,
            cause: None,
            hung_up: false,
            env: Envelope::default(),
            spare: None,
            out: Vec::with_capacity(4096),
            counters: SessionCounters::default(),
        }
    }

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Why it closed, once [`Phase::Closed`].
    pub fn close_cause(&self) -> Option<CloseCause> {
        self.cause
    }

    /// Frames in flight (accepted, not yet answered).
    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// The window (0 before Init).
    pub fn window(&self) -> u32 {
        self.window
    }

    /// The chosen configuration (default before Init).
    pub fn chosen(&self) -> &Chosen {
        &self.chosen
    }

    /// Counters so far.
    pub fn counters(&self) -> &SessionCounters {
        &self.counters
    }

    /// The largest message body the session takes now: before Init the worker's largest
    /// frame ([`WorkerConfig::max_message`]: a Frame sent before Init is BAD_SEQUENCE, not
    /// FRAME_TOO_LARGE), then `max_frame_bytes` plus the envelope's slack.
    pub fn limit(&self) -> usize {
        match self.phase {
            Phase::AwaitInit => self.pre_init_limit,
            _ => self.max_frame_bytes as usize + ENVELOPE_SLACK,
        }
    }

    /// Whether the agent should read and feed messages now: not past the window, not closed,
    /// and (while ending) not at all.
    pub fn wants_input(&self) -> bool {
        match self.phase {
            Phase::AwaitInit => true,
            Phase::Streaming => self.inflight < self.window,
            Phase::Ending | Phase::Closed => false,
        }
    }

    /// The agent says whether it reads the connection now (paused or not). While it does
    /// not, the peer's silence is the session's own doing and does not count.
    pub fn set_reading(&mut self, reading: bool, now: Instant) {
        if reading && !self.reading {
            self.last_rx = now;
        }
        self.reading = reading;
    }

    /// The agent says whether answers wait unread in the connection's output (over its
    /// threshold): from the first `true` on, the backpressure timeout runs.
    pub fn set_blocked(&mut self, blocked: bool, now: Instant) {
        match (blocked, self.blocked_since) {
            (true, None) => self.blocked_since = Some(now),
            (false, Some(_)) => self.blocked_since = None,
            _ => {}
        }
    }

    /// The encoded answers so far (append-only until [`clear_output`](Self::clear_output)).
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Forgets the output (the agent sent it).
    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    /// Takes the output buffer (to send it without a copy); give it back, cleared, with
    /// [`restore_output`](Self::restore_output) so its capacity is reused.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Gives back the buffer of [`take_output`](Self::take_output), appending anything
    /// written since.
    pub fn restore_output(&mut self, mut out: Vec<u8>) {
        out.extend_from_slice(&self.out);
        self.out = out;
    }

    /// The data of the frame the last [`Step::Frame`] accepted (valid until the next message).
    pub fn frame_data(&self) -> &[u8] {
        match &self.env.payload {
            Some(Payload::Frame(frame)) => &frame.data,
            _ => &[],
        }
    }

    /// Takes the data of the frame the last [`Step::Frame`] accepted, leaving `spare` (a
    /// cleared buffer whose capacity the next Frame's decode reuses) in its place: the frame
    /// goes to the detector without a copy.
    pub fn take_frame_data(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        match &mut self.env.payload {
            Some(Payload::Frame(frame)) => std::mem::replace(&mut frame.data, spare),
            _ => spare,
        }
    }

    /// The capture timestamps of the frame the last [`Step::Frame`] accepted.
    pub fn frame_times(&self) -> (u64, u64) {
        match &self.env.payload {
            Some(Payload::Frame(frame)) => (frame.ts_mono_ns, frame.ts_utc_ns),
            _ => (0, 0),
        }
    }

    /// A length prefix over [`limit`](Self::limit): FRAME_TOO_LARGE, then close.
    pub fn on_oversized(&mut self, err: &DecodeError) {
        self.error(ErrorCode::FrameTooLarge, err.to_string(), 0, 0);
        self.close(CloseCause::TooLarge);
    }

    /// One message body (without its prefix), received at `now`.
    pub fn on_message(&mut self, body: &[u8], config: &WorkerConfig, now: Instant) -> Step {
        self.last_rx = now;
        if self.phase == Phase::Closed {
            return Step::Handled;
        }
        if let Err(e) = codec::decode_reusing(body, &mut self.env, &mut self.spare) {
            self.counters.rx += 1;
            self.error(e.code(), e.to_string(), 0, 0);
            return Step::Handled;
        }
        self.counters.rx += 1;
        if self.stream_id != self.env.stream_id {
            self.stream_id.clone_from(&self.env.stream_id);
        }
        match (self.phase, &self.env.payload) {
            (Phase::AwaitInit, Some(Payload::Init(init))) => {
                let caps = init.caps.clone().unwrap_or_default();
                self.session_id.clone_from(&init.session_id);
                self.init(&caps, config);
                Step::Handled
            }
            (Phase::AwaitInit, Some(other)) => {
                let name = codec::msg_type_of(other).as_str_name();
                self.error(
                    ErrorCode::BadSequence,
                    format!("{name} before Init: the first message must be Init"),
                    0,
                    frame_id_of(other),
                );
                Step::Handled
            }
            (_, Some(Payload::Init(_))) => {
                self.error(ErrorCode::BadSequence, "a second Init on one session".into(), 0, 0);
                Step::Handled
            }
            (_, Some(Payload::Heartbeat(_))) => Step::Handled,
            (_, Some(Payload::End(_))) => {
                self.phase = Phase::Ending;
                self.maybe_finish();
                Step::Handled
            }
            (Phase::Streaming, Some(Payload::Frame(frame))) => {
                match validate_frame(frame, &self.chosen, self.max_frame_bytes, self.allow_jpeg) {
                    Ok(accepted) => {
                        self.inflight += 1;
                        self.counters.frames += 1;
                        Step::Frame(accepted)
                    }
                    Err((code, message)) => {
                        let id = frame.frame_id;
                        let retry = if code == ErrorCode::FrameTooLarge { 0 } else { 1000 };
                        self.error(code, message, retry, id);
                        Step::Handled
                    }
                }
            }
            (_, Some(Payload::Frame(frame))) => {
                let id = frame.frame_id;
                self.error(ErrorCode::BadSequence, "Frame after End".into(), 0, id);
                Step::Handled
            }
            (_, Some(other)) => {
                let name = codec::msg_type_of(other).as_str_name();
                self.error(
                    ErrorCode::BadMessage,
                    format!("{name} is a worker-to-agent message"),
                    0,
                    0,
                );
                Step::Handled
            }
            (_, None) => unreachable!("codec::decode refuses an envelope with no payload"),
        }
    }

    fn init(&mut self, caps: &Capabilities, config: &WorkerConfig) {
        let formats = &caps.accepted_pixel_formats;
        let takes = |f: PixelFormat| formats.is_empty() || formats.contains(&(f as i32));
        let codecs = &caps.accepted_codecs;
        let jpeg_codec = codecs.contains(&(Codec::Jpeg as i32));
        let jpeg_ok =
            config.accept_jpeg && (jpeg_codec || formats.contains(&(PixelFormat::PfJpeg as i32)));
        let (format, codec) = if caps.prefer_jpeg && jpeg_ok {
            (PixelFormat::PfJpeg, Codec::Jpeg)
        } else if takes(PixelFormat::PfNv12) {
            (PixelFormat::PfNv12, Codec::None)
        } else if takes(PixelFormat::PfI420) {
            (PixelFormat::PfI420, Codec::None)
        } else if jpeg_ok {
            (PixelFormat::PfJpeg, Codec::Jpeg)
        } else {
            self.error(
                ErrorCode::UnsupportedFormat,
                "no common pixel format: this worker takes PF_NV12, PF_I420 and PF_JPEG".into(),
                0,
                0,
            );
            return;
        };
        let pick = |asked: u32, default: u32, max: u32| {
            let v = if asked == 0 { default } else { asked.min(max) };
            (v & !1).max(2)
        };
        let width = pick(caps.max_width, config.default_width, config.max_width);
        let height = pick(caps.max_height, config.default_height, config.max_height);
        let window = match caps.max_inflight {
            0 => config.window,
            n => n.min(config.window),
        }
        .max(1);
        let policy = Policy::try_from(caps.desired_policy).unwrap_or(Policy::LatestWins);
        self.chosen = Chosen {
            pixel_format: format as i32,
            codec: codec as i32,
            width,
            height,
            // An agent may ask for less than the worker's target, not more.
            fps_target: if caps.desired_fps.is_finite() && caps.desired_fps > 0.0 {
                caps.desired_fps.min(config.fps_target)
            } else {
                config.fps_target
            },
            policy: policy as i32,
            initial_credits: window,
            color_space: "BT.709".into(),
            color_range: "full".into(),
        };
        self.allow_jpeg = jpeg_ok;
        self.max_frame_bytes = (width as u64 * height as u64 * 3 / 2).min(u32::MAX as u64) as u32;
        self.window = window;
        self.granted = window;
        self.phase = Phase::Streaming;
        let init_ok = proto::InitOk {
            chosen: Some(self.chosen.clone()),
            max_frame_bytes: self.max_frame_bytes,
            model_family: config.identity.family.clone(),
            model_name: config.identity.name.clone(),
            model_version: config.identity.version.clone(),
        };
        self.send(Payload::InitOk(init_ok));
    }

    /// The detector's answer for an accepted frame: a Result (or an Error), one credit back.
    ///
    /// With [`WorkerConfig::adaptive_window`], every [`ADAPT_EVERY`] results the session
    /// compares the time frames waited in the worker (total minus pre, infer and post) with
    /// the time they took: waiting over twice as long shrinks the window by one, waiting
    /// under half as long grows it by one, up to the granted window (each a WindowUpdate).
    pub fn on_outcome(&mut self, outcome: &Outcome, config: &WorkerConfig) {
        if config.adaptive_window && outcome.error.is_none() {
            self.adapt_window(outcome);
        }
        if self.inflight == 0 {
            return; // a frame of an earlier session state; nothing is owed
        }
        self.inflight -= 1;
        self.last_answered = outcome.frame_id;
        if self.phase != Phase::Closed {
            if let Some((code, message)) = &outcome.error {
                self.error(*code, message.clone(), 100, outcome.frame_id);
            } else {
                let before = self.out.len();
                encode::result(
                    &mut self.out,
                    &self.stream_id,
                    &self.session_id,
                    outcome,
                    &config.identity,
                );
                self.counters.tx += 1;
                self.counters.results += 1;
                self.counters.results_bytes += (self.out.len() - before) as u64;
            }
        }
        self.maybe_finish();
    }

    fn adapt_window(&mut self, outcome: &Outcome) {
        let work = outcome.pre_ms + outcome.infer_ms + outcome.post_ms;
        let wait = (outcome.total_ms - work).max(0.0);
        let (waited, worked, n) = &mut self.adapt;
        *waited += wait;
        *worked += work;
        *n += 1;
        if *n < ADAPT_EVERY {
            return;
        }
        let (waited, worked) = (*waited, *worked);
        self.adapt = (0.0, 0.0, 0);
        if waited > 2.0 * worked && self.window > 1 {
            self.set_window(self.window - 1);
        } else if waited < 0.5 * worked && self.window < self.granted {
            self.set_window(self.window + 1);
        }
    }

    /// The agent shut down its sending side (FIN) without End: as End, the frames in flight
    /// are answered (a half-closed peer may still read), then the session closes.
    pub fn on_peer_closed(&mut self) {
        self.hung_up = true;
        match self.phase {
            Phase::Closed => {}
            Phase::AwaitInit => self.close(CloseCause::Hangup),
            _ => {
                self.phase = Phase::Ending;
                self.maybe_finish();
            }
        }
    }

    /// Changes the window and tells the agent (WindowUpdate).
    pub fn set_window(&mut self, window: u32) {
        if self.phase != Phase::Streaming || window == self.window || window == 0 {
            return;
        }
        self.window = window;
        self.counters.window_updates += 1;
        self.send(Payload::WindowUpdate(proto::WindowUpdate { new_window: window }));
    }

    /// When [`on_timeout`](Self::on_timeout) wants to be called next.
    pub fn poll_timeout(&self, config: &WorkerConfig) -> Option<Instant> {
        if self.phase == Phase::Closed {
            return None;
        }
        let mut at = self.next_heartbeat;
        if self.phase == Phase::AwaitInit {
            at = at.min(self.opened + config.init_timeout);
        }
        if self.reading {
            at = at.min(self.last_rx + config.peer_timeout);
        }
        if let Some(since) = self.blocked_since {
            at = at.min(since + config.backpressure_timeout);
        }
        Some(at)
    }

    /// Time has passed: heartbeats, the peer timeout, the backpressure timeout.
    pub fn on_timeout(&mut self, config: &WorkerConfig, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        if let Some(since) = self.blocked_since {
            if now >= since + config.backpressure_timeout {
                let waited = config.backpressure_timeout.as_millis();
                self.error(
                    ErrorCode::BackpressureTimeout,
                    format!("results unread for {waited} ms"),
                    waited as u32,
                    0,
                );
                self.close(CloseCause::Backpressure);
                return;
            }
        }
        if self.phase == Phase::AwaitInit && now >= self.opened + config.init_timeout {
            self.close(CloseCause::InitTimeout);
            return;
        }
        if self.reading && now >= self.last_rx + config.peer_timeout {
            self.close(CloseCause::PeerTimeout);
            return;
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + config.heartbeat;
            let hb = proto::Heartbeat {
                last_frame_id: self.last_answered,
                tx: self.counters.tx + 1,
                rx: self.counters.rx,
            };
            self.send(Payload::Heartbeat(hb));
        }
    }

    fn maybe_finish(&mut self) {
        if self.phase == Phase::Ending && self.inflight == 0 {
            self.close(if self.hung_up { CloseCause::Hangup } else { CloseCause::End });
        }
    }

    fn close(&mut self, cause: CloseCause) {
        self.phase = Phase::Closed;
        self.cause = Some(cause);
    }

    fn error(&mut self, code: ErrorCode, message: String, retry_after_ms: u32, frame_id: u64) {
        if let Some(n) = self.counters.errors.get_mut(code as usize) {
            *n += 1;
        }
        self.send(Payload::Error(proto::Error {
            code: code as i32,
            message,
            retry_after_ms,
            frame_id,
        }));
    }

    fn send(&mut self, payload: Payload) {
        self.counters.tx += 1;
        codec::encode(&self.stream_id, payload, &mut self.out);
    }
}

fn frame_id_of(payload: &Payload) -> u64 {
    match payload {
        Payload::Frame(f) => f.frame_id,
        _ => 0,
    }
}

/// The Result message of an outcome, built the slow way (the reference [`encode::result`]
/// is tested against).
#[cfg(test)]
fn result_of(outcome: &Outcome, session_id: &str, config: &WorkerConfig) -> proto::Result {
    let classes = &config.identity.classes;
    let items = outcome
        .detections
        .iter()
        .map(|d| proto::Detection {
            bbox: Some(proto::BBox { x1: d.x1, y1: d.y1, x2: d.x2, y2: d.y2 }),
            conf: d.conf,
            cls: classes.get(d.class as usize).cloned().unwrap_or_else(|| d.class.to_string()),
            track_id: if d.track_id == 0 { String::new() } else { format!("T{}", d.track_id) },
        })
        .collect();
    proto::Result {
        frame_id: outcome.frame_id,
        frame_ref: Some(proto::FrameRef {
            ts_mono_ns: outcome.ts_mono_ns,
            ts_utc_ns: outcome.ts_utc_ns,
            session_id: session_id.to_owned(),
        }),
        model_family: config.identity.family.clone(),
        model_name: config.identity.name.clone(),
        model_version: config.identity.version.clone(),
        lat: Some(proto::Latency {
            pre_ms: outcome.pre_ms,
            infer_ms: outcome.infer_ms,
            post_ms: outcome.post_ms,
            total_ms: outcome.total_ms,
        }),
        detections: Some(proto::DetectionSet { items }),
    }
}

/// Checks a Frame against the chosen configuration: format and codec, the size limit, and
/// planes that describe exactly the data. The error is the code and message of the Error.
///
/// JPEG frames are taken when JPEG was chosen, and also when raw was chosen but the agent
/// listed CODEC_JPEG (degradation: an agent switches to JPEG when a frame is too large).
pub fn validate_frame(
    frame: &Frame,
    chosen: &Chosen,
    max_frame_bytes: u32,
    allow_jpeg: bool,
) -> Result<Accepted, (ErrorCode, String)> {
    let unsupported = |what: String| Err((ErrorCode::UnsupportedFormat, what));
    let invalid = |what: String| Err((ErrorCode::InvalidFrame, what));
    let format = PixelFormat::try_from(frame.pixel_format);
    let codec = Codec::try_from(frame.codec);
    let jpeg = match (format, codec) {
        (Ok(PixelFormat::PfJpeg), Ok(Codec::Jpeg)) if allow_jpeg => true,
        (Ok(f), Ok(c)) if f as i32 == chosen.pixel_format && c as i32 == chosen.codec => {
            f == PixelFormat::PfJpeg
        }
        _ => {
            let f =
                format.map_or_else(|_| frame.pixel_format.to_string(), |f| f.as_str_name().into());
            let c = codec.map_or_else(|_| frame.codec.to_string(), |c| c.as_str_name().into());
            let want_f =
                PixelFormat::try_from(chosen.pixel_format).map_or("?", |f| f.as_str_name());
            let want_c = Codec::try_from(chosen.codec).map_or("?", |c| c.as_str_name());
            return unsupported(format!(
                "pixel_format {f} with codec {c}: this session chose {want_f} with {want_c}"
            ));
        }
    };
    let len = frame.data.len();
    if len > max_frame_bytes as usize {
        return Err((
            ErrorCode::FrameTooLarge,
            format!("frame data of {len} bytes is over max_frame_bytes {max_frame_bytes}"),
        ));
    }
    if len == 0 {
        return invalid("frame with no data".into());
    }
    let none = PlaneRef { stride: 0, offset: 0, size: 0 };
    if jpeg {
        match frame.planes.as_slice() {
            [] => {}
            [p] if p.offset == 0 && p.size as usize == len => {}
            _ => {
                return invalid(format!(
                    "a JPEG frame has one plane covering its {len} bytes (offset 0, size {len})"
                ))
            }
        }
        // The picture's size is the file's: what the session chose bounds it (checked from
        // the JPEG header before the decoder allocates pixels).
        return Ok(Accepted {
            frame_id: frame.frame_id,
            raw: None,
            width: chosen.width,
            height: chosen.height,
            plane: [none; 3],
            planes: 0,
        });
    }
    let raw = if frame.pixel_format == PixelFormat::PfNv12 as i32 {
        RawFormat::Nv12
    } else {
        RawFormat::I420
    };
    let (w, h) = (frame.width, frame.height);
    if w == 0 || h == 0 || w % 2 == 1 || h % 2 == 1 {
        return invalid(format!("{w}x{h}: 4:2:0 needs a non-zero, even width and height"));
    }
    if w > chosen.width || h > chosen.height {
        return invalid(format!(
            "{w}x{h} is larger than the {}x{} this session chose",
            chosen.width, chosen.height
        ));
    }
    // (row bytes, rows) of each plane.
    let (w, h) = (w as u64, h as u64);
    let shape: &[(u64, u64)] = match raw {
        RawFormat::Nv12 => &[(w, h), (w, h / 2)],
        RawFormat::I420 => &[(w, h), (w / 2, h / 2), (w / 2, h / 2)],
    };
    if frame.planes.len() != shape.len() {
        return invalid(format!(
            "{} planes: {} has {}",
            frame.planes.len(),
            PixelFormat::try_from(frame.pixel_format).map_or("?", |f| f.as_str_name()),
            shape.len()
        ));
    }
    let mut plane = [none; 3];
    let mut sum = 0u64;
    for (i, (p, &(row, rows))) in frame.planes.iter().zip(shape).enumerate() {
        let (stride, offset, size) = (p.stride as u64, p.offset as u64, p.size as u64);
        if stride < row {
            return invalid(format!("plane {i}: stride {stride} is less than its width {row}"));
        }
        if size != stride * rows {
            return invalid(format!(
                "plane {i}: size {size} is not stride {stride} x {rows} rows = {}",
                stride * rows
            ));
        }
        if offset + size > len as u64 {
            return invalid(format!(
                "plane {i}: bytes {offset}..{} are outside the {len} bytes of data",
                offset + size
            ));
        }
        sum += size;
        plane[i] = PlaneRef {
            stride: p.stride as usize,
            offset: p.offset as usize,
            size: p.size as usize,
        };
    }
    if sum != len as u64 {
        return invalid(format!("the planes' sizes add up to {sum}, the data has {len} bytes"));
    }
    let mut order: [usize; 3] = [0, 1, 2];
    let used = shape.len();
    order[..used].sort_by_key(|&i| plane[i].offset);
    for pair in order[..used].windows(2) {
        let (a, b) = (plane[pair[0]], plane[pair[1]]);
        if a.offset + a.size > b.offset {
            return invalid(format!("planes {} and {} overlap", pair[0], pair[1]));
        }
    }
    Ok(Accepted {
        frame_id: frame.frame_id,
        raw: Some(raw),
        width: frame.width,
        height: frame.height,
        plane,
        planes: used,
    })
}

mod encode;
#[cfg(test)]
mod tests;
