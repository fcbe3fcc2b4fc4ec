//! The worker session's rules, one test each, driven with a fake clock. Named after seed 004's
//! Testing Checklist where a line is about the worker.

use std::time::{Duration, Instant};

use super::*;
use crate::frames::codec::{self, PREFIX_BYTES};
use crate::frames::proto::{self, envelope::Payload, Envelope, MsgType, Plane};

fn config() -> WorkerConfig {
    WorkerConfig { window: 2, ..WorkerConfig::default() }
}

/// Every message in `out`, decoded.
fn messages(out: &[u8]) -> Vec<Payload> {
    let mut rest = out;
    let mut all = Vec::new();
    while !rest.is_empty() {
        let end = codec::split(rest, usize::MAX >> 1).unwrap().expect("whole messages");
        let mut env = Envelope::default();
        codec::decode(&rest[PREFIX_BYTES..end], &mut env).unwrap();
        all.push(env.payload.unwrap());
        rest = &rest[end..];
    }
    all
}

fn take(session: &mut WorkerSession) -> Vec<Payload> {
    let out = messages(session.output());
    session.clear_output();
    out
}

fn body(payload: Payload) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode("cam0", payload, &mut out);
    out.split_off(PREFIX_BYTES)
}

fn init(max_inflight: u32) -> Vec<u8> {
    body(Payload::Init(proto::Init {
        model: "any".into(),
        caps: Some(proto::Capabilities {
            accepted_pixel_formats: vec![proto::PixelFormat::PfNv12 as i32],
            accepted_codecs: vec![proto::Codec::None as i32, proto::Codec::Jpeg as i32],
            max_width: 64,
            max_height: 48,
            max_inflight,
            ..Default::default()
        }),
        session_id: "s-1".into(),
    }))
}

fn nv12_frame(id: u64, w: u32, h: u32) -> proto::Frame {
    let y = w * h;
    proto::Frame {
        frame_id: id,
        ts_mono_ns: 1000 + id,
        ts_utc_ns: 2000 + id,
        width: w,
        height: h,
        pixel_format: proto::PixelFormat::PfNv12 as i32,
        codec: proto::Codec::None as i32,
        planes: vec![
            Plane { stride: w, offset: 0, size: y },
            Plane { stride: w, offset: y, size: y / 2 },
        ],
        data: vec![16; (y + y / 2) as usize],
        ..Default::default()
    }
}

fn started(now: Instant) -> WorkerSession {
    let mut s = WorkerSession::new(&config(), now);
    assert!(matches!(s.on_message(&init(8), &config(), now), Step::Handled));
    let out = take(&mut s);
    assert!(matches!(out.as_slice(), [Payload::InitOk(_)]), "{out:?}");
    s
}

fn error_of(out: &[Payload]) -> (ErrorCode, u64, String) {
    match out {
        [Payload::Error(e)] => {
            (ErrorCode::try_from(e.code).unwrap(), e.frame_id, e.message.clone())
        }
        other => panic!("expected one Error, got {other:?}"),
    }
}

#[test]
fn version_validation_a_version_other_than_1_gets_version_unsupported() {
    let now = Instant::now();
    let mut s = WorkerSession::new(&config(), now);
    let mut env = Envelope {
        protocol_version: 2,
        stream_id: "cam0".into(),
        msg_type: MsgType::Init as i32,
        payload: Some(Payload::Init(proto::Init::default())),
    };
    let mut out = Vec::new();
    codec::encode_envelope(&env, &mut out);
    s.on_message(&out[PREFIX_BYTES..], &config(), now);
    let (code, _, message) = error_of(&take(&mut s));
    assert_eq!(code, ErrorCode::VersionUnsupported);
    assert_eq!(message, "protocol version mismatch: expected 1, got 2");
    assert_eq!(s.phase(), Phase::AwaitInit, "the session goes on");
    env.protocol_version = 0;
    out.clear();
    codec::encode_envelope(&env, &mut out);
    s.on_message(&out[PREFIX_BYTES..], &config(), now);
    assert_eq!(error_of(&take(&mut s)).0, ErrorCode::VersionUnsupported);
}

#[test]
fn msg_type_validation_a_mismatched_msg_type_gets_bad_message() {
    let now = Instant::now();
    let mut s = WorkerSession::new(&config(), now);
    let env = Envelope {
        protocol_version: 1,
        stream_id: "cam0".into(),
        msg_type: MsgType::Frame as i32,
        payload: Some(Payload::Init(proto::Init::default())),
    };
    let mut out = Vec::new();
    codec::encode_envelope(&env, &mut out);
    s.on_message(&out[PREFIX_BYTES..], &config(), now);
    let (code, _, message) = error_of(&take(&mut s));
    assert_eq!(code, ErrorCode::BadMessage);
    assert_eq!(message, "msg_type MSG_TYPE_FRAME does not match the payload MSG_TYPE_INIT");
    // No payload, and bytes that are not protobuf: BAD_MESSAGE too.
    let empty =
        Envelope { protocol_version: 1, msg_type: MsgType::Frame as i32, ..Default::default() };
    out.clear();
    codec::encode_envelope(&empty, &mut out);
    s.on_message(&out[PREFIX_BYTES..], &config(), now);
    assert_eq!(error_of(&take(&mut s)).0, ErrorCode::BadMessage);
    s.on_message(&[0xff, 0xff, 0xff], &config(), now);
    assert_eq!(error_of(&take(&mut s)).0, ErrorCode::BadMessage);
}

#[test]
fn a_msg_type_frame_with_no_payload_after_a_frame_is_bad_message_not_an_empty_frame() {
    // The codec keeps a Frame's buffers between decodes; a later envelope without a payload
    // must not be read as that Frame.
    let now = Instant::now();
    let mut s = started(now);
    s.on_message(&body(Payload::Frame(nv12_frame(1, 64, 48))), &config(), now);
    let empty =
        Envelope { protocol_version: 1, msg_type: MsgType::Frame as i32, ..Default::default() };
    let mut out = Vec::new();
    codec::encode_envelope(&empty, &mut out);
    assert!(matches!(s.on_message(&out[PREFIX_BYTES..], &config(), now), Step::Handled));
    assert_eq!(error_of(&take(&mut s)).0, ErrorCode::BadMessage);
}

#[test]
fn sequence_validation_a_frame_before_init_gets_bad_sequence() {
    let now = Instant::now();
    let mut s = WorkerSession::new(&config(), now);
    let step = s.on_message(&body(Payload::Frame(nv12_frame(7, 64, 48))), &config(), now);
    assert!(matches!(step, Step::Handled), "not accepted");
    let (code, frame_id, message) = error_of(&take(&mut s));
    assert_eq!((code, frame_id), (ErrorCode::BadSequence, 7));
    assert_eq!(message, "MSG_TYPE_FRAME before Init: the first message must be Init");
    s.on_message(&init(4), &config(), now);
    assert!(matches!(take(&mut s).as_slice(), [Payload::InitOk(_)]));
    s.on_message(&init(4), &config(), now);
    assert_eq!(error_of(&take(&mut s)).0, ErrorCode::BadSequence, "a second Init");
}

#[test]
fn init_ok_carries_the_choice_and_max_frame_bytes() {
    let now = Instant::now();
    let cfg = WorkerConfig { window: 4, ..WorkerConfig::default() };
    let mut s = WorkerSession::new(&cfg, now);
    let init = body(Payload::Init(proto::Init {
        caps: Some(proto::Capabilities {
            accepted_pixel_formats: vec![
                proto::PixelFormat::PfNv12 as i32,
                proto::PixelFormat::PfI420 as i32,
            ],
            max_width: 640,
            max_height: 480,
            max_inflight: 3,
            desired_policy: proto::Policy::Fifo as i32,
            ..Default::default()
        }),
        ..Default::default()
    }));
    s.on_message(&init, &cfg, now);
    let out = take(&mut s);
    let [Payload::InitOk(ok)] = out.as_slice() else { panic!("{out:?}") };
    let chosen = ok.chosen.as_ref().unwrap();
    assert_eq!(ok.max_frame_bytes, 460_800, "NV12 640x480");
    assert_eq!((chosen.width, chosen.height), (640, 480));
    assert_eq!(chosen.pixel_format, proto::PixelFormat::PfNv12 as i32);
    assert_eq!(chosen.codec, proto::Codec::None as i32);
    assert_eq!(chosen.initial_credits, 3, "the agent's max_inflight lowers the window");
    assert_eq!(chosen.policy, proto::Policy::Fifo as i32);
    assert_eq!((chosen.color_space.as_str(), chosen.color_range.as_str()), ("BT.709", "full"));
    assert_eq!((ok.model_family.as_str(), ok.model_name.as_str()), ("classical", "motion"));
}

#[test]
fn prefer_jpeg_chooses_the_jpeg_codec() {
    let now = Instant::now();
    let mut s = WorkerSession::new(&config(), now);
    let init = body(Payload::Init(proto::Init {
        caps: Some(proto::Capabilities {
            accepted_pixel_formats: vec![proto::PixelFormat::PfNv12 as i32],
            accepted_codecs: vec![proto::Codec::None as i32, proto::Codec::Jpeg as i32],
            prefer_jpeg: true,
            ..Default::default()
        }),
        ..Default::default()
    }));
    s.on_message(&init, &config(), now);
    let out = take(&mut s);
    let [Payload::InitOk(ok)] = out.as_slice() else { panic!("{out:?}") };
    assert_eq!(ok.chosen.as_ref().unwrap().codec, proto::Codec::Jpeg as i32);
    assert_eq!(ok.chosen.as_ref().unwrap().pixel_format, proto::PixelFormat::PfJpeg as i32);
}

#[test]
fn backpressure_inflight_never_exceeds_the_window() {
    let now = Instant::now();
    let mut s = started(now); // window 2
    for id in 1..=2 {
        assert!(s.wants_input());
        let step = s.on_message(&body(Payload::Frame(nv12_frame(id, 64, 48))), &config(), now);
        assert!(matches!(step, Step::Frame(a) if a.frame_id == id));
    }
    assert_eq!(s.inflight(), 2);
    assert!(!s.wants_input(), "a full window stops reading");
    s.on_outcome(&Outcome { frame_id: 1, ..Outcome::default() }, &config());
    assert_eq!(s.inflight(), 1);
    assert!(s.wants_input(), "a result frees a credit");
    let out = take(&mut s);
    assert!(matches!(out.as_slice(), [Payload::Result(r)] if r.frame_id == 1));
}

#[test]
fn window_update_changes_the_window_and_tells_the_agent() {
    let now = Instant::now();
    let mut s = started(now);
    s.set_window(5);
    assert_eq!(s.window(), 5);
    let out = take(&mut s);
    assert!(matches!(out.as_slice(), [Payload::WindowUpdate(w)] if w.new_window == 5));
    assert_eq!(s.counters().window_updates, 1);
    s.set_window(5);
    assert!(take(&mut s).is_empty(), "no update for no change");
    for id in 1..=5 {
        s.on_message(&body(Payload::Frame(nv12_frame(id, 64, 48))), &config(), now);
    }
    assert!(!s.wants_input());
    s.set_window(1);
    for id in 1..=4 {
        s.on_outcome(&Outcome { frame_id: id, ..Outcome::default() }, &config());
        assert!(!s.wants_input(), "shrunk: {} in flight, window 1", s.inflight());
    }
    s.on_outcome(&Outcome { frame_id: 5, ..Outcome::default() }, &config());
    assert!(s.wants_input());
}

#[test]
fn plane_validation_incorrect_plane_sizes_get_invalid_frame() {
    let now = Instant::now();
    let mut s = started(now);
    let cases: Vec<(proto::Frame, &str)> = vec![
        (
            {
                let mut f = nv12_frame(1, 64, 48);
                f.planes[1].size -= 64;
                f
            },
            "plane 1: size 1472 is not stride 64 x 24 rows = 1536",
        ),
        (
            {
                let mut f = nv12_frame(2, 64, 48);
                f.planes[0].stride = 32;
                f.planes[0].size = 32 * 48;
                f
            },
            "plane 0: stride 32 is less than its width 64",
        ),
        (
            {
                let mut f = nv12_frame(3, 64, 48);
                f.planes[1].offset = 4000;
                f
            },
            "plane 1: bytes 4000..5536 are outside the 4608 bytes of data",
        ),
        (
            {
                let mut f = nv12_frame(4, 64, 48);
                f.planes.pop();
                f
            },
            "1 planes: PF_NV12 has 2",
        ),
        (
            {
                let mut f = nv12_frame(5, 32, 24);
                f.data.push(0);
                f
            },
            "the planes' sizes add up to 1152, the data has 1153 bytes",
        ),
        (
            {
                let mut f = nv12_frame(6, 64, 48);
                f.planes[1].offset = 0;
                f.planes[0].offset = 1536;
                f.data.truncate(4608);
                f.planes[0].offset = 0;
                f.planes[1].offset = 1000;
                f
            },
            "planes 0 and 1 overlap",
        ),
        (
            {
                let mut f = nv12_frame(7, 63, 48);
                f.planes[0].stride = 64;
                f
            },
            "63x48: 4:2:0 needs a non-zero, even width and height",
        ),
        (
            {
                let mut f = nv12_frame(8, 64, 48);
                f.width = 128;
                f
            },
            "128x48 is larger than the 64x48 this session chose",
        ),
    ];
    for (frame, expected) in cases {
        let id = frame.frame_id;
        let step = s.on_message(&body(Payload::Frame(frame)), &config(), now);
        assert!(matches!(step, Step::Handled), "frame {id} refused");
        let (code, frame_id, message) = error_of(&take(&mut s));
        assert_eq!((code, frame_id), (ErrorCode::InvalidFrame, id), "{message}");
        assert_eq!(message, expected);
    }
    assert_eq!(s.inflight(), 0, "a refused frame holds no credit");
}

#[test]
fn format_validation_another_format_gets_unsupported_format() {
    let now = Instant::now();
    let mut s = started(now); // NV12 chosen, CODEC_JPEG listed
    let mut frame = nv12_frame(1, 64, 48);
    frame.pixel_format = proto::PixelFormat::PfI420 as i32;
    s.on_message(&body(Payload::Frame(frame)), &config(), now);
    let (code, _, message) = error_of(&take(&mut s));
    assert_eq!(code, ErrorCode::UnsupportedFormat);
    assert_eq!(
        message,
        "pixel_format PF_I420 with codec CODEC_NONE: this session chose PF_NV12 with CODEC_NONE"
    );
    let mut frame = nv12_frame(2, 64, 48);
    frame.pixel_format = proto::PixelFormat::PfH264 as i32;
    frame.codec = proto::Codec::H264 as i32;
    s.on_message(&body(Payload::Frame(frame)), &config(), now);
    assert_eq!(error_of(&take(&mut s)).0, ErrorCode::UnsupportedFormat, "H.264 is reserved");
    // JPEG is taken as a degradation because the agent listed CODEC_JPEG.
    let jpeg = proto::Frame {
        frame_id: 3,
        pixel_format: proto::PixelFormat::PfJpeg as i32,
        codec: proto::Codec::Jpeg as i32,
        data: vec![0xff, 0xd8, 0xff],
        planes: vec![Plane { stride: 0, offset: 0, size: 3 }],
        ..Default::default()
    };
    let step = s.on_message(&body(Payload::Frame(jpeg)), &config(), now);
    assert!(
        matches!(step, Step::Frame(a) if a.raw.is_none() && (a.width, a.height) == (64, 48)),
        "a JPEG is bounded by the chosen size: {step:?}"
    );
}

#[test]
fn frame_size_validation_a_frame_over_max_frame_bytes_gets_frame_too_large() {
    let now = Instant::now();
    let mut s = started(now); // 64x48: max_frame_bytes 4608
    let jpeg = proto::Frame {
        frame_id: 9,
        pixel_format: proto::PixelFormat::PfJpeg as i32,
        codec: proto::Codec::Jpeg as i32,
        data: vec![0; 4609],
        ..Default::default()
    };
    s.on_message(&body(Payload::Frame(jpeg)), &config(), now);
    let (code, frame_id, message) = error_of(&take(&mut s));
    assert_eq!((code, frame_id), (ErrorCode::FrameTooLarge, 9));
    assert_eq!(message, "frame data of 4609 bytes is over max_frame_bytes 4608");
    assert_eq!(s.phase(), Phase::Streaming);
}

#[test]
fn frame_size_validation_a_length_prefix_over_the_limit_is_refused_from_the_prefix_alone() {
    let now = Instant::now();
    let mut s = started(now);
    let limit = s.limit();
    assert_eq!(limit, 4608 + codec::ENVELOPE_SLACK);
    // Only the prefix has arrived: the verdict needs no body.
    let prefix = u32::MAX.to_le_bytes();
    let err = codec::split(&prefix, limit).unwrap_err();
    s.on_oversized(&err);
    let (code, _, message) = error_of(&take(&mut s));
    assert_eq!(code, ErrorCode::FrameTooLarge);
    assert_eq!(message, format!("message of 4294967295 bytes is over the limit of {limit} bytes"));
    assert_eq!(s.phase(), Phase::Closed);
    assert_eq!(s.close_cause(), Some(CloseCause::TooLarge));
    // Before Init the limit is the largest frame the worker takes (a full-size Frame sent
    // before Init is BAD_SEQUENCE, not FRAME_TOO_LARGE).
    let fresh = WorkerSession::new(&config(), now);
    assert_eq!(fresh.limit(), 1920 * 1080 * 3 / 2 + codec::ENVELOPE_SLACK);
}

#[test]
fn heartbeat_every_2_s_with_last_frame_id_tx_and_rx() {
    let t0 = Instant::now();
    let mut s = started(t0);
    s.on_message(&body(Payload::Frame(nv12_frame(41, 64, 48))), &config(), t0);
    s.on_outcome(&Outcome { frame_id: 41, ..Outcome::default() }, &config());
    take(&mut s);
    assert_eq!(s.poll_timeout(&config()), Some(t0 + Duration::from_secs(2)));
    s.on_timeout(&config(), t0 + Duration::from_millis(1999));
    assert!(take(&mut s).is_empty(), "not yet");
    let t2 = t0 + Duration::from_secs(2);
    // The agent's heartbeat keeps the session alive.
    s.on_message(&body(Payload::Heartbeat(proto::Heartbeat::default())), &config(), t2);
    s.on_timeout(&config(), t2);
    let out = take(&mut s);
    let [Payload::Heartbeat(hb)] = out.as_slice() else { panic!("{out:?}") };
    assert_eq!(hb.last_frame_id, 41);
    assert_eq!((hb.tx, hb.rx), (3, 3), "InitOk, Result, this Heartbeat; Init, Frame, Heartbeat");
    assert_eq!(s.poll_timeout(&config()), Some(t2 + Duration::from_secs(2)));
}

#[test]
fn timeout_10_s_without_any_message_closes_the_session() {
    let t0 = Instant::now();
    let mut s = started(t0);
    let mut now = t0;
    while now < t0 + Duration::from_secs(10) {
        assert_ne!(s.phase(), Phase::Closed);
        now = s.poll_timeout(&config()).unwrap();
        s.on_timeout(&config(), now);
    }
    assert_eq!(now, t0 + Duration::from_secs(10));
    assert_eq!(s.phase(), Phase::Closed);
    assert_eq!(s.close_cause(), Some(CloseCause::PeerTimeout));
    // A session that does not read (its window is full) does not count the silence.
    let mut s = started(t0);
    s.set_reading(false, t0);
    s.on_timeout(&config(), t0 + Duration::from_secs(30));
    assert_ne!(s.phase(), Phase::Closed);
    s.set_reading(true, t0 + Duration::from_secs(30));
    s.on_timeout(&config(), t0 + Duration::from_secs(39));
    assert_ne!(s.phase(), Phase::Closed, "the silence counts from the resume");
}

#[test]
fn results_unread_for_the_backpressure_timeout_get_backpressure_timeout_and_a_close() {
    let t0 = Instant::now();
    let cfg = config();
    let mut s = started(t0);
    s.set_blocked(true, t0);
    assert_eq!(s.poll_timeout(&cfg), Some(t0 + Duration::from_secs(2)));
    s.on_timeout(&cfg, t0 + Duration::from_secs(2));
    take(&mut s);
    s.set_blocked(true, t0 + Duration::from_secs(3)); // still blocked: the clock keeps running
    s.on_timeout(&cfg, t0 + cfg.backpressure_timeout);
    let (code, _, message) = error_of(&take(&mut s));
    assert_eq!(code, ErrorCode::BackpressureTimeout);
    assert_eq!(message, "results unread for 5000 ms");
    assert_eq!(s.close_cause(), Some(CloseCause::Backpressure));
    // Unblocked in time: nothing happens.
    let mut s = started(t0);
    s.set_blocked(true, t0);
    s.set_blocked(false, t0 + Duration::from_secs(4));
    s.on_timeout(&cfg, t0 + Duration::from_secs(6));
    assert_ne!(s.phase(), Phase::Closed);
}

#[test]
fn end_closes_after_the_in_flight_results_are_sent() {
    let now = Instant::now();
    let mut s = started(now);
    s.on_message(&body(Payload::Frame(nv12_frame(1, 64, 48))), &config(), now);
    s.on_message(&body(Payload::End(proto::End { reason: "done".into() })), &config(), now);
    assert_eq!(s.phase(), Phase::Ending);
    assert!(!s.wants_input());
    s.on_outcome(&Outcome { frame_id: 1, ..Outcome::default() }, &config());
    assert_eq!(s.phase(), Phase::Closed);
    assert_eq!(s.close_cause(), Some(CloseCause::End));
    assert!(matches!(take(&mut s).as_slice(), [Payload::Result(r)] if r.frame_id == 1));
}

#[test]
fn bbox_format_xyxy_and_latency_breakdown_in_the_result() {
    let now = Instant::now();
    let mut s = started(now);
    s.on_message(&body(Payload::Frame(nv12_frame(3, 64, 48))), &config(), now);
    let outcome = Outcome {
        frame_id: 3,
        ts_mono_ns: 1003,
        ts_utc_ns: 2003,
        pre_ms: 0.5,
        infer_ms: 1.5,
        post_ms: 0.25,
        total_ms: 2.5,
        detections: vec![Detection {
            x1: 10.0,
            y1: 12.0,
            x2: 30.0,
            y2: 40.0,
            conf: 0.9,
            class: 0,
            track_id: 7,
        }],
        error: None,
    };
    s.on_outcome(&outcome, &config());
    let out = take(&mut s);
    let [Payload::Result(r)] = out.as_slice() else { panic!("{out:?}") };
    assert_eq!(r.frame_id, 3);
    let fr = r.frame_ref.as_ref().unwrap();
    assert_eq!((fr.ts_mono_ns, fr.ts_utc_ns, fr.session_id.as_str()), (1003, 2003, "s-1"));
    let lat = r.lat.as_ref().unwrap();
    assert_eq!((lat.pre_ms, lat.infer_ms, lat.post_ms, lat.total_ms), (0.5, 1.5, 0.25, 2.5));
    let d = &r.detections.as_ref().unwrap().items[0];
    let b = d.bbox.as_ref().unwrap();
    assert_eq!(
        (b.x1, b.y1, b.x2, b.y2),
        (10.0, 12.0, 30.0, 40.0),
        "xyxy: corners, not width/height"
    );
    assert!(b.x2 > b.x1 && b.y2 > b.y1);
    assert_eq!((d.cls.as_str(), d.track_id.as_str(), d.conf), ("object", "T7", 0.9));
    assert_eq!(
        (r.model_family.as_str(), r.model_name.as_str(), r.model_version.as_str()),
        ("classical", "motion", "1")
    );
}

#[test]
fn a_detector_error_is_an_error_with_the_frame_id_and_returns_the_credit() {
    let now = Instant::now();
    let mut s = started(now);
    s.on_message(&body(Payload::Frame(nv12_frame(5, 64, 48))), &config(), now);
    let outcome = Outcome {
        frame_id: 5,
        error: Some((ErrorCode::ModelNotReady, "loading".into())),
        ..Outcome::default()
    };
    s.on_outcome(&outcome, &config());
    let (code, frame_id, _) = error_of(&take(&mut s));
    assert_eq!((code, frame_id), (ErrorCode::ModelNotReady, 5));
    assert_eq!(s.inflight(), 0);
}

#[test]
fn agent_to_worker_only_messages_from_the_agent_get_bad_message() {
    let now = Instant::now();
    let mut s = started(now);
    s.on_message(&body(Payload::Result(proto::Result::default())), &config(), now);
    let (code, _, message) = error_of(&take(&mut s));
    assert_eq!(code, ErrorCode::BadMessage);
    assert_eq!(message, "MSG_TYPE_RESULT is a worker-to-agent message");
}

#[test]
fn window_update_the_adaptive_window_shrinks_while_frames_wait_and_grows_back() {
    let now = Instant::now();
    let cfg = WorkerConfig { window: 4, adaptive_window: true, ..WorkerConfig::default() };
    let mut s = WorkerSession::new(&cfg, now);
    s.on_message(&init(4), &cfg, now);
    take(&mut s);
    assert_eq!(s.window(), 4);
    let mut id = 0;
    let mut run = |s: &mut WorkerSession, n: u32, total_ms: f32| {
        for _ in 0..n {
            id += 1;
            s.on_message(&body(Payload::Frame(nv12_frame(id, 64, 48))), &cfg, now);
            let outcome = Outcome { frame_id: id, infer_ms: 1.0, total_ms, ..Outcome::default() };
            s.on_outcome(&outcome, &cfg);
        }
        take(s)
            .into_iter()
            .filter_map(|p| match p {
                Payload::WindowUpdate(w) => Some(w.new_window),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // Frames wait 3 ms for 1 ms of work: the window shrinks by one per ADAPT_EVERY results.
    assert_eq!(run(&mut s, ADAPT_EVERY - 1, 4.0), Vec::<u32>::new());
    assert_eq!(run(&mut s, 1, 4.0), vec![3]);
    assert_eq!(run(&mut s, 2 * ADAPT_EVERY, 4.0), vec![2, 1]);
    assert_eq!(run(&mut s, ADAPT_EVERY, 4.0), Vec::<u32>::new(), "never below 1");
    // Waiting 1.5x the work: no change either way.
    assert_eq!(run(&mut s, ADAPT_EVERY, 2.5), Vec::<u32>::new());
    // Hardly waiting: back up to the granted 4, and no further.
    assert_eq!(run(&mut s, 4 * ADAPT_EVERY, 1.1), vec![2, 3, 4]);
    assert_eq!(s.window(), 4);
    assert_eq!(s.counters().window_updates, 6);
}

#[test]
fn the_result_is_encoded_as_prost_encodes_the_message() {
    let cfg = WorkerConfig::default();
    let mut outcomes = vec![Outcome::default()];
    outcomes.push(Outcome {
        frame_id: u64::MAX,
        ts_mono_ns: 1,
        ts_utc_ns: 1 << 62,
        pre_ms: 0.25,
        infer_ms: -0.0,
        post_ms: f32::MAX,
        total_ms: 3.5,
        detections: (0..300u32)
            .map(|i| Detection {
                x1: i as f32,
                y1: 0.0,
                x2: i as f32 + 0.5,
                y2: 1e9,
                conf: 0.5,
                class: (i % 3) as u16,
                track_id: [0, 1, 9, 10, 99, 4_000_000_000][i as usize % 6],
            })
            .collect(),
        error: None,
    });
    for (stream, session) in [("", ""), ("cam0", "s-1"), (&"x".repeat(300)[..], "é")] {
        for outcome in &outcomes {
            let mut fast = Vec::new();
            super::encode::result(&mut fast, stream, session, outcome, &cfg.identity);
            let mut slow = Vec::new();
            codec::encode(stream, Payload::Result(result_of(outcome, session, &cfg)), &mut slow);
            assert_eq!(fast, slow, "{} detections", outcome.detections.len());
        }
    }
}

#[test]
fn a_frame_s_buffer_is_kept_across_heartbeats_between_frames() {
    let now = Instant::now();
    let mut s = started(now);
    s.on_message(&body(Payload::Frame(nv12_frame(1, 64, 48))), &config(), now);
    let first = s.frame_data().as_ptr();
    s.on_outcome(&Outcome { frame_id: 1, ..Outcome::default() }, &config());
    s.on_message(&body(Payload::Heartbeat(proto::Heartbeat::default())), &config(), now);
    assert!(s.frame_data().is_empty(), "a Heartbeat is not a Frame");
    let step = s.on_message(&body(Payload::Frame(nv12_frame(2, 64, 48))), &config(), now);
    assert!(matches!(step, Step::Frame(a) if a.frame_id == 2));
    assert_eq!(s.frame_data().as_ptr(), first, "the same buffer, not a new allocation");
    assert_eq!(s.frame_data().len(), 4608);
}

#[test]
fn the_accepted_frame_s_data_is_handed_over_and_the_spare_is_decoded_into_next() {
    let now = Instant::now();
    let mut s = started(now);
    let spare = Vec::with_capacity(8192);
    let spare_at = spare.as_ptr();
    s.on_message(&body(Payload::Frame(nv12_frame(1, 64, 48))), &config(), now);
    let first_at = s.frame_data().as_ptr();
    let data = s.take_frame_data(spare);
    assert_eq!((data.as_ptr(), data.len()), (first_at, 4608), "moved, not copied");
    assert!(s.frame_data().is_empty());
    s.on_outcome(&Outcome { frame_id: 1, ..Outcome::default() }, &config());
    s.on_message(&body(Payload::Frame(nv12_frame(2, 64, 48))), &config(), now);
    assert_eq!(s.frame_data().as_ptr(), spare_at, "the next frame is decoded into the spare");
    assert_eq!(s.frame_data().len(), 4608);
}

#[test]
fn a_connection_without_init_is_closed_at_the_init_timeout() {
    let t0 = Instant::now();
    let cfg = config();
    let mut s = WorkerSession::new(&cfg, t0);
    s.on_timeout(&cfg, t0 + cfg.heartbeat); // a heartbeat goes out; next is the deadline
    assert_eq!(s.poll_timeout(&cfg), Some(t0 + cfg.init_timeout));
    s.on_timeout(&cfg, t0 + cfg.init_timeout - Duration::from_millis(1));
    assert_ne!(s.phase(), Phase::Closed);
    // A heartbeat is a message, but not an Init: it does not extend the deadline.
    s.on_message(
        &body(Payload::Heartbeat(proto::Heartbeat::default())),
        &cfg,
        t0 + cfg.init_timeout / 2,
    );
    s.on_timeout(&cfg, t0 + cfg.init_timeout);
    assert_eq!(s.close_cause(), Some(CloseCause::InitTimeout));
    // After Init the deadline is gone.
    let mut s = started(t0);
    s.on_timeout(&cfg, t0 + cfg.init_timeout);
    assert_ne!(s.phase(), Phase::Closed);
    assert_eq!(s.poll_timeout(&cfg), Some(t0 + cfg.init_timeout + cfg.heartbeat));
}

#[test]
fn a_half_close_without_end_answers_the_frames_in_flight_then_closes() {
    let now = Instant::now();
    let mut s = started(now);
    s.on_message(&body(Payload::Frame(nv12_frame(1, 64, 48))), &config(), now);
    s.on_message(&body(Payload::Frame(nv12_frame(2, 64, 48))), &config(), now);
    s.on_peer_closed();
    assert_eq!(s.phase(), Phase::Ending);
    assert!(!s.wants_input());
    s.on_outcome(&Outcome { frame_id: 1, ..Outcome::default() }, &config());
    assert_eq!(s.phase(), Phase::Ending);
    s.on_outcome(&Outcome { frame_id: 2, ..Outcome::default() }, &config());
    assert_eq!(s.close_cause(), Some(CloseCause::Hangup), "not counted as an End");
    let out = take(&mut s);
    assert_eq!(out.iter().filter(|p| matches!(p, Payload::Result(_))).count(), 2);
    // Nothing in flight: closed at once.
    let mut s = started(now);
    s.on_peer_closed();
    assert_eq!(s.phase(), Phase::Closed);
}

#[test]
fn a_jpeg_frame_must_be_one_plane_covering_its_data() {
    let now = Instant::now();
    let mut s = started(now);
    let jpeg = |planes: Vec<Plane>| proto::Frame {
        frame_id: 4,
        pixel_format: proto::PixelFormat::PfJpeg as i32,
        codec: proto::Codec::Jpeg as i32,
        data: vec![0xff; 100],
        planes,
        ..Default::default()
    };
    for planes in [
        vec![Plane { stride: 0, offset: 0, size: 50 }, Plane { stride: 0, offset: 50, size: 50 }],
        vec![Plane { stride: 0, offset: 1, size: 99 }],
        vec![Plane { stride: 0, offset: 0, size: 99 }],
    ] {
        s.on_message(&body(Payload::Frame(jpeg(planes))), &config(), now);
        let (code, frame_id, message) = error_of(&take(&mut s));
        assert_eq!((code, frame_id), (ErrorCode::InvalidFrame, 4));
        assert_eq!(
            message,
            "a JPEG frame has one plane covering its 100 bytes (offset 0, size 100)"
        );
    }
    assert!(matches!(
        s.on_message(&body(Payload::Frame(jpeg(vec![]))), &config(), now),
        Step::Frame(_)
    ));
}

#[test]
fn an_agent_may_ask_for_a_lower_frame_rate_not_a_higher_one() {
    let now = Instant::now();
    for (asked, chosen) in
        [(5.0, 5.0), (30.0, 10.0), (0.0, 10.0), (f32::NAN, 10.0), (f32::INFINITY, 10.0)]
    {
        let mut s = WorkerSession::new(&config(), now);
        let init = body(Payload::Init(proto::Init {
            caps: Some(proto::Capabilities { desired_fps: asked, ..Default::default() }),
            ..Default::default()
        }));
        s.on_message(&init, &config(), now);
        assert_eq!(s.chosen().fps_target, chosen, "asked {asked}");
    }
}
