//! A hostile worker on the edge agent's connection: arbitrary bytes arrive in chunks into
//! `AgentCore::on_bytes` (after `on_connected`), interleaved with offers of small synthetic
//! frames, timers on a fake clock, closes and reconnects as the driver makes them, `finish`
//! and `abort`. Nothing may panic, and:
//! - frames in flight never exceed the window cap, and an offer or `finish` leaves
//!   `inflight() <= window()` (a WindowUpdate may shrink the window under frames already in
//!   flight: those drain);
//! - pending or queued frames never exceed the FIFO depth (one for LATEST_WINS);
//! - the agent's output is always whole length-prefixed envelopes that `codec::decode` takes,
//!   of agent-to-worker kinds only, Init first on each connection, frame ids increasing;
//! - every raw Frame it sends passes `validate_frame` for the capture format and size, and
//!   every JPEG Frame decodes (`vision::jpeg::decode`) to the frame's size;
//! - once done, it stays done.
//!
//! Input: byte 0 picks the agent's configuration (format, policy, window cap, FIFO depth,
//! prefer JPEG, a JPEG encoder that always fails); then records of `[len, act, len bytes]`:
//! the bytes go to `on_bytes`, then `act` offers frames (bits 0-1: 0 to 3), steps the clock
//! into `on_timeout` (bits 2-3: 0, 100 ms, 2 s, 9 s) and may close the connection (bits 4-6:
//! 5 a close and a reconnect, 6 `finish`, 7 `abort`). A `wants_close` is honoured as the
//! driver does: `on_closed`, then a reconnect after the backoff.
#![no_main]

use std::time::{Duration, Instant};

use corelane::frames::agent::core::{
    plane_layout, AgentCore, CoreConfig, JpegEncoder, JpegFailed, Offer, RawFormat, RawFrame, State,
};
use corelane::frames::agent::VisionJpeg;
use corelane::frames::codec::{self, PREFIX_BYTES};
use corelane::frames::detector::Picture;
use corelane::frames::proto::{envelope::Payload, Chosen, Codec, Envelope, PixelFormat, Policy};
use corelane::frames::session::validate_frame;
use corelane::frames::vision::jpeg;
use libfuzzer_sys::fuzz_target;

/// Capture sizes, by input.
const SIZES: [(u32, u32); 4] = [(16, 16), (32, 24), (64, 48), (2, 2)];
/// Clock steps between records.
const STEPS_MS: [u64; 4] = [0, 100, 2_000, 9_000];

/// A JPEG encoder that always fails (the frame then goes out raw).
struct Broken;

impl JpegEncoder for Broken {
    fn encode(&mut self, _: &RawFrame<'_>, _: u8, _: &mut Vec<u8>) -> Result<(), JpegFailed> {
        Err(JpegFailed)
    }
}

struct Harness {
    core: AgentCore,
    cfg: CoreConfig,
    now: Instant,
    /// A buffer per connection: Init must come first.
    fresh: bool,
    last_frame_id: u64,
    done: bool,
    out: Vec<u8>,
    env: Envelope,
    picture: Picture,
    /// The capture frame's data, rewritten per offer.
    data: Vec<u8>,
    offered: u64,
}

impl Harness {
    fn connect(&mut self) {
        self.core.on_connected(self.now);
        self.fresh = true;
        self.check(false);
    }

    fn offer(&mut self) {
        let (planes, used, total) = plane_layout(self.cfg.format, self.cfg.width, self.cfg.height);
        self.offered += 1;
        let seed = self.offered as u8;
        self.data.clear();
        self.data.extend((0..total).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed)));
        let frame = RawFrame {
            format: self.cfg.format,
            width: self.cfg.width,
            height: self.cfg.height,
            planes: &planes[..used],
            data: &self.data,
            ts_mono_ns: self.offered * 1_000_000,
            ts_utc_ns: self.offered,
        };
        let was_done = self.core.is_done();
        let offer = self.core.offer(&frame, self.now);
        if was_done {
            assert_eq!(offer, Offer::Closed);
        }
        self.check(offer == Offer::Sent);
    }

    /// The driver: a close the core asks for, then a reconnect after the backoff.
    fn honour_close(&mut self) {
        if self.core.wants_close() {
            self.close_and_reconnect();
        }
    }

    fn close_and_reconnect(&mut self) {
        if self.core.state() == State::Disconnected {
            return;
        }
        let delay = self.core.on_closed(self.now);
        self.check(false);
        if let Some(delay) = delay {
            assert!(delay <= Duration::from_secs(36), "backoff {delay:?}");
            assert!(delay >= Duration::from_millis(400), "backoff {delay:?}");
            self.now += delay;
            self.connect();
        } else {
            assert!(self.core.is_done());
        }
    }

    /// The invariants, then the output is "written" (checked and dropped). `sent`: the call
    /// was one whose frames must fit the window (an offer, `finish`).
    fn check(&mut self, sent: bool) {
        if self.done {
            assert!(self.core.is_done(), "a finished run started again");
        }
        self.done = self.core.is_done();
        let (inflight, window) = (self.core.inflight(), self.core.window());
        assert!(inflight <= self.cfg.window_cap as usize, "{inflight} in flight over the cap");
        assert!(window <= self.cfg.window_cap, "window {window} over the cap");
        let depth = match self.cfg.policy {
            Policy::Fifo => self.cfg.fifo_depth.max(1),
            Policy::LatestWins => 1,
        };
        assert!(self.core.queued() <= depth, "{} queued", self.core.queued());
        self.core.poll_output(&mut self.out);
        let mut frames = 0;
        let mut rest = self.out.as_slice();
        while !rest.is_empty() {
            let end = codec::split(rest, usize::MAX).expect("no limit").unwrap_or_else(|| {
                panic!("a partial message of {} bytes in the output", rest.len())
            });
            codec::decode(&rest[PREFIX_BYTES..end], &mut self.env)
                .unwrap_or_else(|e| panic!("the agent wrote an invalid envelope: {e}"));
            let first = std::mem::replace(&mut self.fresh, false);
            match &self.env.payload {
                Some(Payload::Init(init)) => {
                    assert!(first, "Init after the first message of a connection");
                    assert_eq!(init.session_id, self.cfg.session_id);
                }
                Some(payload) if first => panic!("the connection opened with {payload:?}"),
                Some(Payload::Frame(f)) => {
                    frames += 1;
                    assert!(f.frame_id > self.last_frame_id, "frame id {} again", f.frame_id);
                    self.last_frame_id = f.frame_id;
                    assert_eq!((f.width, f.height), (self.cfg.width, self.cfg.height));
                    if f.codec == Codec::Jpeg as i32 {
                        assert_eq!(f.pixel_format, PixelFormat::PfJpeg as i32);
                        jpeg::decode(&f.data, &mut self.picture)
                            .unwrap_or_else(|e| panic!("the agent sent a bad JPEG: {e}"));
                        let (w, h) = (self.cfg.width & !1, self.cfg.height & !1);
                        assert_eq!((self.picture.width, self.picture.height), (w, h));
                    } else {
                        let chosen = Chosen {
                            pixel_format: f.pixel_format,
                            codec: Codec::None as i32,
                            width: self.cfg.width,
                            height: self.cfg.height,
                            ..Chosen::default()
                        };
                        if let Err((code, why)) = validate_frame(f, &chosen, u32::MAX, false) {
                            panic!("the agent sent a raw frame the worker refuses: {code:?} {why}");
                        }
                    }
                }
                Some(Payload::Heartbeat(_) | Payload::End(_)) => {}
                other => panic!("the agent sent a worker-to-agent message: {other:?}"),
            }
            rest = &rest[end..];
        }
        if sent && frames > 0 {
            assert!(inflight <= window as usize, "sent with {inflight} in flight, window {window}");
        }
        self.out.clear();
    }
}

fuzz_target!(|data: &[u8]| {
    let [control, stream @ ..] = data else { return };
    let control = *control;
    let (width, height) = SIZES[usize::from(control >> 5 & 3)];
    let cfg = CoreConfig {
        stream_id: "cam0".into(),
        session_id: "cam0-1".into(),
        model: "motion".into(),
        format: if control & 1 == 0 { RawFormat::Nv12 } else { RawFormat::I420 },
        width,
        height,
        fps: 0.0,
        policy: if control & 2 == 0 { Policy::LatestWins } else { Policy::Fifo },
        window_cap: [4, 1, 2, 8][usize::from(control >> 2 & 3)],
        fifo_depth: 2,
        prefer_jpeg: control & 0x10 != 0,
        seed: u64::from(control),
    };
    let encoder: Box<dyn JpegEncoder> =
        if control & 0x80 == 0 { Box::<VisionJpeg>::default() } else { Box::new(Broken) };
    let t0 = Instant::now();
    let mut h = Harness {
        core: AgentCore::new(cfg.clone(), encoder, None, t0),
        cfg,
        now: t0,
        fresh: false,
        last_frame_id: 0,
        done: false,
        out: Vec::new(),
        env: Envelope::default(),
        picture: Picture::default(),
        data: Vec::new(),
        offered: 0,
    };
    h.connect();
    let mut rest = stream;
    while let [len, act, tail @ ..] = rest {
        let (len, act) = (usize::from(*len), *act);
        rest = tail;
        let (chunk, after) = rest.split_at(len.min(rest.len()));
        rest = after;
        // A Result or InitOk may send queued frames, and a later WindowUpdate of the same
        // bytes shrink the window under them: only the cap holds here.
        h.core.on_bytes(chunk, h.now);
        h.check(false);
        h.honour_close();
        for _ in 0..act & 3 {
            h.offer();
        }
        h.now += Duration::from_millis(STEPS_MS[usize::from(act >> 2 & 3)]);
        h.core.on_timeout(h.now);
        h.check(false);
        match act >> 4 & 7 {
            5 => h.close_and_reconnect(),
            6 => {
                h.core.finish(h.now);
                h.check(true);
            }
            7 => {
                h.core.abort(h.now);
                h.check(false);
            }
            _ => {}
        }
        h.honour_close();
    }
});
