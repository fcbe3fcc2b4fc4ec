//! A hostile agent on a frame protocol v1 connection, as the worker serves it: arbitrary bytes
//! arrive in chunks, are reassembled under `WorkerSession::limit` exactly as the service's
//! `pump` does (`codec::split` on the prefix, FRAME_TOO_LARGE and a cleared buffer on a prefix
//! over the limit, no reading while `wants_input` is false), and every message goes to
//! `on_message`. Every accepted Frame is decoded as the detector lane decodes it
//! (`yuv::unpack` into a Picture reset to the accepted size, or `jpeg::decode`), run through
//! the motion detector, and answered with a fake Outcome (some with an error, some out of
//! order); a fake clock advances by input-chosen steps into `on_timeout`. Each Frame payload
//! also goes to `validate_frame` directly (before Init too), and what it accepts down the same
//! decode path. Nothing may panic, and:
//! - `inflight() <= window()` while Streaming;
//! - the output is always whole length-prefixed envelopes that `codec::decode` takes
//!   (protocol_version 1, a msg_type naming the oneof), of worker-to-agent kinds only;
//! - a Result is only sent for a frame that was answered, an Error naming a frame only for a
//!   frame the agent sent;
//! - a Closed session stays Closed and takes no more input;
//! - validated planes lie inside the data, decoded pictures have planes of their size, and
//!   the detector's boxes lie inside the picture.
//!
//! Input: byte 0 picks the worker's limits (window, largest size, JPEG, adaptive window);
//! then records of `[len, act, len bytes of stream]`. After a record's bytes are pumped, `act`
//! answers some frames in flight (bits 0-1: none, one, two, all; bit 2: newest first; bit 3:
//! the first with an error), steps the clock (bits 4-5: 0, 100 ms, 2 s, 9 s; the answers'
//! queue wait grows with the step) and says whether the output is blocked (bit 6) and whether
//! the agent reads (bit 7 clear).
#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use corelane::frames::codec::{self, ENVELOPE_SLACK, PREFIX_BYTES};
use corelane::frames::detector::{Detection, Detector, DetectorFactory, Picture};
use corelane::frames::proto::{envelope::Payload, Chosen, Codec, Envelope, ErrorCode, PixelFormat};
use corelane::frames::session::{
    validate_frame, Accepted, Outcome, Phase, Step, WorkerConfig, WorkerSession,
};
use corelane::frames::vision::jpeg::{self, MAX_DIMENSION};
use corelane::frames::vision::motion::MotionFactory;
use corelane::frames::vision::yuv;
use libfuzzer_sys::fuzz_target;

/// Largest size a worker takes, by input (the smaller ones make FRAME_TOO_LARGE reachable).
const SIZES: [(u32, u32); 4] = [(1920, 1080), (64, 48), (16, 16), (2, 2)];
/// Clock steps between records.
const STEPS_MS: [u64; 4] = [0, 100, 2_000, 9_000];

/// The detector lane for one connection: a picture reused frame to frame and a detector that
/// keeps its background across frames.
struct Lane {
    picture: Picture,
    detector: Box<dyn Detector>,
    detections: Vec<Detection>,
}

impl Lane {
    fn new() -> Self {
        Lane {
            picture: Picture::default(),
            detector: MotionFactory::default().make(),
            detections: Vec::new(),
        }
    }

    /// `service.rs`'s decode of an accepted frame, then the detector.
    fn run(&mut self, accepted: &Accepted, data: &[u8]) {
        match accepted.raw {
            Some(format) => {
                assert!(accepted.width > 0 && accepted.height > 0);
                assert!(accepted.width % 2 == 0 && accepted.height % 2 == 0);
                assert_eq!(accepted.planes, if format == yuv::RawFormat::Nv12 { 2 } else { 3 });
                for p in &accepted.plane[..accepted.planes] {
                    assert!(p.offset + p.size <= data.len(), "plane {p:?} outside {}", data.len());
                }
                self.picture.reset(accepted.width, accepted.height);
                yuv::unpack(
                    format,
                    data,
                    accepted.width,
                    accepted.height,
                    &accepted.plane[..accepted.planes],
                    &mut self.picture,
                );
            }
            None => {
                if jpeg::decode(data, &mut self.picture).is_err() {
                    return;
                }
                assert!(self.picture.width as usize <= MAX_DIMENSION);
                assert!(self.picture.height as usize <= MAX_DIMENSION);
            }
        }
        let p = &self.picture;
        let (w, h) = (p.width as usize, p.height as usize);
        assert!(w > 0 && h > 0 && w % 2 == 0 && h % 2 == 0, "picture {w}x{h}");
        assert_eq!(p.y.len(), w * h);
        assert_eq!(p.u.len(), w * h / 4);
        assert_eq!(p.v.len(), w * h / 4);
        self.detections.clear();
        if self.detector.detect(p, &mut self.detections).is_ok() {
            for d in &self.detections {
                assert!((0.0..=1.0).contains(&d.conf), "{d:?}");
                assert!(0.0 <= d.x1 && d.x1 < d.x2 && d.x2 <= p.width as f32, "{d:?} in {w}x{h}");
                assert!(0.0 <= d.y1 && d.y1 < d.y2 && d.y2 <= p.height as f32, "{d:?} in {w}x{h}");
            }
        }
    }
}

/// Up to `n` bytes off the front of `rest` (fewer at the end of the input).
fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = rest.split_at(n.min(rest.len()));
    *rest = tail;
    head
}

struct Harness {
    config: WorkerConfig,
    session: WorkerSession,
    now: Instant,
    /// Received and not yet consumed (the connection's receive ring).
    ring: Vec<u8>,
    /// Accepted frames not yet answered, oldest first.
    pending: VecDeque<u64>,
    /// Frames answered: a Result may only be about one of these.
    answered: Vec<u64>,
    /// Frame ids the agent sent in a decodable Frame: an Error may name only these.
    sent: Vec<u64>,
    lane: Lane,
    direct: Lane,
    probe: Envelope,
    /// The output's messages, decoded.
    out_env: Envelope,
    closed: bool,
}

impl Harness {
    /// `WorkerAgent::pump`: whole messages while the session wants input.
    fn pump(&mut self) {
        let mut ring = std::mem::take(&mut self.ring);
        while self.session.wants_input() {
            let Some(prefix) = ring.get(..PREFIX_BYTES) else { break };
            let end = match codec::split(prefix, self.session.limit()) {
                Ok(_) => PREFIX_BYTES + u32::from_le_bytes(prefix.try_into().expect("4")) as usize,
                Err(e) => {
                    // Nothing tells where the next message starts: answer and close.
                    self.session.on_oversized(&e);
                    ring.clear();
                    break;
                }
            };
            let Some(message) = ring.get(PREFIX_BYTES..end) else { break };
            assert!(message.len() <= self.session.limit());
            self.validate_directly(message);
            let before = self.session.inflight();
            let step = self.session.on_message(message, &self.config, self.now);
            if let Step::Frame(accepted) = step {
                assert_eq!(self.session.phase(), Phase::Streaming);
                assert_eq!(self.session.inflight(), before + 1);
                let data = self.session.frame_data().to_vec();
                self.lane.run(&accepted, &data);
                self.pending.push_back(accepted.frame_id);
            } else {
                assert_eq!(self.session.inflight(), before);
            }
            ring.drain(..end);
            self.check();
        }
        self.ring = ring;
    }

    /// The message decoded on its own; a Frame validated against the session's choice (or,
    /// before Init, a small NV12 one) and decoded if accepted.
    fn validate_directly(&mut self, message: &[u8]) {
        if codec::decode(message, &mut self.probe).is_err() {
            return;
        }
        let Some(Payload::Frame(frame)) = &self.probe.payload else { return };
        if !self.sent.contains(&frame.frame_id) {
            self.sent.push(frame.frame_id);
        }
        let (chosen, max) = match self.session.phase() {
            Phase::AwaitInit => (
                Chosen {
                    pixel_format: PixelFormat::PfNv12 as i32,
                    codec: Codec::None as i32,
                    width: 64,
                    height: 48,
                    ..Chosen::default()
                },
                64 * 48 * 3 / 2,
            ),
            _ => (self.session.chosen().clone(), (self.session.limit() - ENVELOPE_SLACK) as u32),
        };
        for allow_jpeg in [false, true] {
            if let Ok(accepted) = validate_frame(frame, &chosen, max, allow_jpeg) {
                assert_eq!(accepted.frame_id, frame.frame_id);
                assert!(frame.data.len() <= max as usize && !frame.data.is_empty());
                if accepted.raw.is_some() {
                    assert!(accepted.width <= chosen.width && accepted.height <= chosen.height);
                }
                self.direct.run(&accepted, &frame.data);
            }
        }
    }

    /// Answers up to `n` frames in flight.
    fn answer(&mut self, n: usize, newest_first: bool, error: bool, act: u8, len: u8) {
        for i in 0..n {
            let id = if newest_first { self.pending.pop_back() } else { self.pending.pop_front() };
            let Some(frame_id) = id else { break };
            let work = 1.0 + f32::from(act & 7);
            let outcome = Outcome {
                frame_id,
                ts_mono_ns: frame_id.wrapping_mul(1000),
                ts_utc_ns: u64::from(len),
                pre_ms: work / 4.0,
                infer_ms: work / 2.0,
                post_ms: work / 4.0,
                // Frames that waited while the clock ran long (adaptation shrinks the window).
                total_ms: work * [0.2, 1.0, 3.0, 10.0][usize::from(act >> 4 & 3)],
                detections: (0..len % 3)
                    .map(|k| Detection {
                        x1: 0.0,
                        y1: 0.0,
                        x2: 2.0,
                        y2: 2.0,
                        conf: 0.5,
                        class: u16::from(k) * u16::from(len),
                        track_id: u32::from(k),
                    })
                    .collect(),
                error: (error && i == 0).then(|| {
                    let code =
                        ErrorCode::try_from(i32::from(len % 11)).unwrap_or(ErrorCode::Internal);
                    (code, format!("fake failure {len}"))
                }),
            };
            let before = self.session.inflight();
            self.session.on_outcome(&outcome, &self.config);
            assert_eq!(self.session.inflight(), before - 1, "one credit back per outcome");
            self.answered.push(frame_id);
            self.check();
        }
    }

    /// The invariants, then the output is "sent" (checked and cleared).
    fn check(&mut self) {
        let phase = self.session.phase();
        if self.closed {
            assert_eq!(phase, Phase::Closed, "a closed session reopened");
            assert!(!self.session.wants_input());
        }
        if phase == Phase::Closed {
            self.closed = true;
            assert!(self.session.close_cause().is_some());
        }
        if phase == Phase::Streaming {
            assert!(
                self.session.inflight() <= self.session.window(),
                "in flight {} over the window {}",
                self.session.inflight(),
                self.session.window()
            );
            assert!(self.session.window() >= 1);
        }
        assert_eq!(self.session.inflight() as usize, self.pending.len());
        let mut rest = self.session.output();
        while !rest.is_empty() {
            let end = codec::split(rest, usize::MAX).expect("no limit").unwrap_or_else(|| {
                panic!("a partial message of {} bytes in the output", rest.len())
            });
            codec::decode(&rest[PREFIX_BYTES..end], &mut self.out_env)
                .unwrap_or_else(|e| panic!("the worker wrote an invalid envelope: {e}"));
            assert_eq!(self.out_env.protocol_version, codec::PROTOCOL_VERSION);
            match &self.out_env.payload {
                Some(Payload::InitOk(ok)) => {
                    let chosen = ok.chosen.as_ref().expect("InitOk carries its choice");
                    assert!(chosen.initial_credits >= 1);
                    assert!(chosen.width >= 2 && chosen.height >= 2);
                    assert!(chosen.width % 2 == 0 && chosen.height % 2 == 0);
                }
                Some(Payload::Result(r)) => {
                    assert!(self.answered.contains(&r.frame_id), "Result for frame {}", r.frame_id)
                }
                Some(Payload::Error(e)) if e.frame_id != 0 => {
                    let id = e.frame_id;
                    assert!(
                        self.sent.contains(&id),
                        "Error for frame {id}, which the agent never sent"
                    );
                }
                Some(Payload::Error(_) | Payload::WindowUpdate(_) | Payload::Heartbeat(_)) => {}
                other => panic!("the worker sent an agent-to-worker message: {other:?}"),
            }
            rest = &rest[end..];
        }
        self.session.clear_output();
    }
}

fuzz_target!(|data: &[u8]| {
    let [control, stream @ ..] = data else { return };
    let control = *control;
    let (max_width, max_height) = SIZES[usize::from(control & 3)];
    let config = WorkerConfig {
        max_width,
        max_height,
        window: [4, 1, 2, 16][usize::from(control >> 2 & 3)],
        accept_jpeg: control & 0x10 == 0,
        adaptive_window: control & 0x20 != 0,
        ..WorkerConfig::default()
    };
    let t0 = Instant::now();
    let mut h = Harness {
        session: WorkerSession::new(&config, t0),
        config,
        now: t0,
        ring: Vec::new(),
        pending: VecDeque::new(),
        answered: Vec::new(),
        sent: Vec::new(),
        lane: Lane::new(),
        direct: Lane::new(),
        probe: Envelope::default(),
        out_env: Envelope::default(),
        closed: false,
    };
    let mut rest = stream;
    while let [len, act, tail @ ..] = rest {
        let (len, act) = (*len, *act);
        rest = tail;
        let chunk = take(&mut rest, usize::from(len));
        h.ring.extend_from_slice(chunk);
        h.pump();
        let n = match act & 3 {
            0 => 0,
            1 => 1,
            2 => 2,
            _ => usize::MAX,
        };
        h.answer(n, act & 4 != 0, act & 8 != 0, act, len);
        h.now += Duration::from_millis(STEPS_MS[usize::from(act >> 4 & 3)]);
        h.session.set_blocked(act & 0x40 != 0, h.now);
        h.session.set_reading(act & 0x80 == 0, h.now);
        h.session.on_timeout(&h.config, h.now);
        h.check();
        // Credits came back: the service resumes reading.
        h.pump();
    }
    // The detector lane finishes what it holds.
    h.answer(usize::MAX, false, false, 0, 0);
    h.pump();
    h.check();
});
