//! The core driven by a fake clock: no sockets, no sleeps.

use super::*;
use crate::frames::proto::{self, Detection, DetectionSet, WindowUpdate};

const W: u32 = 64;
const H: u32 = 48;

fn cfg(policy: Policy, cap: u32, depth: usize) -> CoreConfig {
    CoreConfig {
        stream_id: "cam0".into(),
        session_id: "s1".into(),
        model: "motion".into(),
        format: RawFormat::Nv12,
        width: W,
        height: H,
        fps: 10.0,
        policy,
        window_cap: cap,
        fifo_depth: depth,
        prefer_jpeg: false,
        seed: 7,
    }
}

/// A fake JPEG: an eighth of the raw size, every byte 0xd8.
struct FakeJpeg;

impl JpegEncoder for FakeJpeg {
    fn encode(
        &mut self,
        frame: &RawFrame<'_>,
        quality: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), JpegFailed> {
        assert_eq!(quality, JPEG_QUALITY);
        out.clear();
        out.resize(frame.data.len() / 8, 0xd8);
        Ok(())
    }
}

fn core(policy: Policy, cap: u32, depth: usize) -> (AgentCore, Instant) {
    let t0 = Instant::now();
    (AgentCore::new(cfg(policy, cap, depth), Box::new(FakeJpeg), None, t0), t0)
}

fn data() -> Vec<u8> {
    let (_, _, total) = plane_layout(RawFormat::Nv12, W, H);
    (0..total).map(|i| i as u8).collect()
}

/// A frame whose capture timestamp names it (`tag`), so tests see which one went out.
fn offer(core: &mut AgentCore, buf: &[u8], tag: u64, now: Instant) -> Offer {
    let (planes, n, _) = plane_layout(RawFormat::Nv12, W, H);
    let frame = RawFrame {
        format: RawFormat::Nv12,
        width: W,
        height: H,
        planes: &planes[..n],
        data: buf,
        ts_mono_ns: tag,
        ts_utc_ns: tag,
    };
    let before = core.inflight();
    let got = core.offer(&frame, now);
    assert!(core.inflight() <= core.window() as usize || core.inflight() <= before);
    got
}

fn decode_all(mut bytes: &[u8]) -> Vec<Payload> {
    let mut out = Vec::new();
    while let Some(end) = codec::split(bytes, usize::MAX).unwrap() {
        let mut env = Envelope::default();
        codec::decode(&bytes[PREFIX_BYTES..end], &mut env).unwrap();
        assert_eq!(env.stream_id, "cam0");
        out.push(env.payload.unwrap());
        bytes = &bytes[end..];
    }
    assert!(bytes.is_empty(), "a partial message in the output");
    out
}

fn output(core: &mut AgentCore) -> Vec<Payload> {
    decode_all(&core.take_output())
}

/// The frames in the output: (frame_id, capture tag).
fn frames_out(core: &mut AgentCore) -> Vec<(u64, u64)> {
    output(core)
        .into_iter()
        .filter_map(|p| match p {
            Payload::Frame(f) => Some((f.frame_id, f.ts_mono_ns)),
            _ => None,
        })
        .collect()
}

fn msg(payload: Payload) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode("cam0", payload, &mut out);
    out
}

fn init_ok(credits: u32, max_frame_bytes: u32, codec: Codec) -> Vec<u8> {
    msg(Payload::InitOk(proto::InitOk {
        chosen: Some(Chosen {
            pixel_format: PixelFormat::PfNv12 as i32,
            codec: codec as i32,
            width: W,
            height: H,
            initial_credits: credits,
            ..Default::default()
        }),
        max_frame_bytes,
        ..Default::default()
    }))
}

fn result(id: u64, tracks: &[&str]) -> Vec<u8> {
    let items = tracks
        .iter()
        .map(|t| Detection { track_id: (*t).into(), conf: 0.9, ..Default::default() })
        .collect();
    msg(Payload::Result(proto::Result {
        frame_id: id,
        detections: Some(DetectionSet { items }),
        ..Default::default()
    }))
}

fn window_update(n: u32) -> Vec<u8> {
    msg(Payload::WindowUpdate(WindowUpdate { new_window: n }))
}

fn ready(core: &mut AgentCore, credits: u32, now: Instant) {
    core.on_connected(now);
    core.on_bytes(&init_ok(credits, 0, Codec::None), now);
    assert_eq!(core.state(), State::Ready);
    let out = output(core);
    assert!(matches!(out[0], Payload::Init(_)), "{out:?}");
}

#[test]
fn init_carries_the_capabilities() {
    let mut c = cfg(Policy::Fifo, 6, 8);
    c.prefer_jpeg = true;
    c.format = RawFormat::I420;
    let t0 = Instant::now();
    let mut core = AgentCore::new(c, Box::new(FakeJpeg), None, t0);
    assert_eq!(core.poll_timeout(), None);
    core.on_connected(t0);
    let out = output(&mut core);
    let [Payload::Init(init)] = &out[..] else { panic!("{out:?}") };
    let caps = init.caps.as_ref().unwrap();
    assert_eq!(
        caps.accepted_pixel_formats,
        vec![PixelFormat::PfI420 as i32, PixelFormat::PfJpeg as i32]
    );
    assert_eq!(caps.accepted_codecs, vec![Codec::None as i32, Codec::Jpeg as i32]);
    assert_eq!((caps.max_width, caps.max_height, caps.max_inflight), (W, H, 6));
    assert_eq!(caps.desired_policy, Policy::Fifo as i32);
    assert!(caps.prefer_jpeg);
    assert_eq!(caps.desired_fps, 10.0);
    assert_eq!(init.session_id, "s1");
}

#[test]
fn no_frame_before_init_ok_and_window_is_capped() {
    let (mut core, t0) = core(Policy::LatestWins, 4, 8);
    let buf = data();
    core.on_connected(t0);
    assert_eq!(offer(&mut core, &buf, 1, t0), Offer::Held);
    assert!(frames_out(&mut core).is_empty());
    core.on_bytes(&init_ok(100, 0, Codec::None), t0);
    assert_eq!(core.window(), 4, "initial credits capped at --window-cap");
    assert_eq!(frames_out(&mut core), vec![(1, 1)]);
}

#[test]
fn window_is_never_exceeded() {
    let (mut core, t0) = core(Policy::LatestWins, 4, 8);
    let buf = data();
    ready(&mut core, 3, t0);
    let mut outstanding = std::collections::VecDeque::new();
    let mut rng = 12345u64;
    for i in 0..500u64 {
        let now = t0 + Duration::from_millis(i);
        offer(&mut core, &buf, i, now);
        let sent = frames_out(&mut core);
        if !sent.is_empty() {
            assert!(core.inflight() <= core.window() as usize, "sent over the window");
        }
        outstanding.extend(sent.into_iter().map(|(id, _)| id));
        assert_eq!(core.inflight(), outstanding.len());
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if rng.is_multiple_of(3) && !outstanding.is_empty() {
            let k = (rng as usize / 3) % outstanding.len();
            let id = outstanding.remove(k).unwrap();
            core.on_bytes(&result(id, &[]), now);
            let sent = frames_out(&mut core);
            if !sent.is_empty() {
                assert!(core.inflight() <= core.window() as usize, "sent over the window");
            }
            outstanding.extend(sent.into_iter().map(|(id, _)| id));
        }
        assert!(core.inflight() <= 3, "never above the largest window");
        if i == 250 {
            core.on_bytes(&window_update(1), now);
        }
    }
    let s = core.summary();
    assert_eq!(s.frames_captured_total, 500);
    assert_eq!(
        s.frames_captured_total,
        s.ai_frames_sent_total + s.ai_drops_latestwins_total + core.queued() as u64
    );
}

#[test]
fn latest_wins_replaces_the_pending_frame_and_counts_drops() {
    let (mut core, t0) = core(Policy::LatestWins, 1, 8);
    let buf = data();
    ready(&mut core, 1, t0);
    assert_eq!(offer(&mut core, &buf, 10, t0), Offer::Sent);
    assert_eq!(offer(&mut core, &buf, 11, t0), Offer::Held);
    assert_eq!(offer(&mut core, &buf, 12, t0), Offer::Replaced);
    assert_eq!(offer(&mut core, &buf, 13, t0), Offer::Replaced);
    assert_eq!(core.queued(), 1);
    assert_eq!(frames_out(&mut core), vec![(1, 10)]);
    core.on_bytes(&result(1, &[]), t0 + Duration::from_millis(5));
    assert_eq!(frames_out(&mut core), vec![(2, 13)], "the newest frame goes out");
    let s = core.summary();
    assert_eq!(s.ai_drops_latestwins_total, 2);
    assert_eq!(s.ai_frames_sent_total, 2);
    assert_eq!(s.ai_rtt_ms.count, 1);
    assert!((s.ai_rtt_ms.p50 - 5.0).abs() < 0.01, "{:?}", s.ai_rtt_ms);
    assert_eq!(core.frames_settled(), 3);
}

#[test]
fn fifo_never_drops_and_waits_for_credits() {
    let (mut core, t0) = core(Policy::Fifo, 2, 3);
    let buf = data();
    ready(&mut core, 1, t0);
    assert_eq!(offer(&mut core, &buf, 1, t0), Offer::Sent);
    for tag in 2..=4 {
        assert_eq!(offer(&mut core, &buf, tag, t0), Offer::Queued);
    }
    assert!(!core.wants_frame());
    assert_eq!(offer(&mut core, &buf, 5, t0), Offer::Blocked);
    assert_eq!(frames_out(&mut core), vec![(1, 1)]);
    core.on_bytes(&result(1, &[]), t0);
    assert!(core.wants_frame(), "a credit freed a queue place");
    assert_eq!(offer(&mut core, &buf, 5, t0), Offer::Queued);
    let mut sent = frames_out(&mut core);
    for id in 2..=5 {
        core.on_bytes(&result(id, &[]), t0);
        sent.extend(frames_out(&mut core));
    }
    assert_eq!(sent, vec![(2, 2), (3, 3), (4, 4), (5, 5)], "in order, none dropped");
    let s = core.summary();
    assert_eq!(s.ai_drops_latestwins_total, 0);
    assert_eq!(s.fifo_blocked_total, 1);
    assert_eq!(s.frames_captured_total, 5);
    assert_eq!(s.results_total, 5);
}

#[test]
fn window_update_grows_and_shrinks() {
    let (mut core, t0) = core(Policy::Fifo, 4, 8);
    let buf = data();
    ready(&mut core, 1, t0);
    for tag in 1..=6 {
        offer(&mut core, &buf, tag, t0);
    }
    assert_eq!(frames_out(&mut core).len(), 1);
    core.on_bytes(&window_update(3), t0);
    assert_eq!(core.window(), 3);
    assert_eq!(frames_out(&mut core).len(), 2, "the grown window sends two more");
    assert_eq!(core.inflight(), 3);
    core.on_bytes(&window_update(1), t0);
    assert_eq!(core.inflight(), 3, "in flight above the shrunk window drains naturally");
    core.on_bytes(&result(1, &[]), t0);
    core.on_bytes(&result(2, &[]), t0);
    assert!(frames_out(&mut core).is_empty());
    assert_eq!(core.inflight(), 1);
    core.on_bytes(&result(3, &[]), t0);
    assert_eq!(frames_out(&mut core), vec![(4, 4)]);
    core.on_bytes(&window_update(50), t0);
    assert_eq!(core.window(), 4, "capped at --window-cap");
    assert_eq!(frames_out(&mut core).len(), 2);
    assert_eq!(core.summary().window_updates_total, 3);
}

#[test]
fn out_of_order_results_are_matched_and_counted() {
    let (mut core, t0) = core(Policy::LatestWins, 4, 8);
    let buf = data();
    ready(&mut core, 3, t0);
    for tag in 1..=3 {
        assert_eq!(offer(&mut core, &buf, tag, t0), Offer::Sent);
    }
    core.on_bytes(&result(2, &["T1", "T2"]), t0 + Duration::from_millis(2));
    core.on_bytes(&result(1, &["T1"]), t0 + Duration::from_millis(3));
    core.on_bytes(&result(3, &["T3"]), t0 + Duration::from_millis(4));
    core.on_bytes(&result(3, &[]), t0 + Duration::from_millis(4));
    let s = core.summary();
    assert_eq!(s.frames_out_of_order_total, 1);
    assert_eq!(s.results_total, 3);
    assert_eq!(s.results_unmatched_total, 1, "a second result for frame 3");
    assert_eq!(s.detections_total, 4);
    assert_eq!(s.track_ids_seen, 3);
    assert_eq!(s.ai_rtt_ms.count, 3);
    assert_eq!(core.inflight(), 0);
}

#[test]
fn error_with_a_frame_id_frees_its_credit() {
    let (mut core, t0) = core(Policy::LatestWins, 1, 8);
    let buf = data();
    ready(&mut core, 1, t0);
    offer(&mut core, &buf, 1, t0);
    assert_eq!(offer(&mut core, &buf, 2, t0), Offer::Held);
    frames_out(&mut core);
    let err = |code: ErrorCode, frame_id| {
        msg(Payload::Error(proto::Error {
            code: code as i32,
            message: "bad planes".into(),
            retry_after_ms: 0,
            frame_id,
        }))
    };
    core.on_bytes(&err(ErrorCode::ModelNotReady, 0), t0);
    assert!(frames_out(&mut core).is_empty(), "an error with no frame frees nothing");
    core.on_bytes(&err(ErrorCode::InvalidFrame, 1), t0);
    assert_eq!(frames_out(&mut core), vec![(2, 2)]);
    let s = core.summary();
    assert_eq!(s.errors_total, 2);
    assert_eq!(
        s.errors_by_code,
        vec![
            ErrorCount { code: "INVALID_FRAME", count: 1 },
            ErrorCount { code: "MODEL_NOT_READY", count: 1 }
        ]
    );
    assert_eq!(core.frames_settled(), 1);
}

#[test]
fn heartbeat_every_two_seconds() {
    let (mut core, t0) = core(Policy::LatestWins, 1, 8);
    let buf = data();
    ready(&mut core, 1, t0);
    offer(&mut core, &buf, 1, t0);
    frames_out(&mut core);
    assert_eq!(core.poll_timeout(), Some(t0 + HEARTBEAT_INTERVAL));
    core.on_timeout(t0 + Duration::from_millis(1999));
    assert!(output(&mut core).is_empty());
    for k in 1..=4u32 {
        let now = t0 + HEARTBEAT_INTERVAL * k;
        core.on_bytes(&msg(Payload::Heartbeat(Heartbeat::default())), now);
        assert_eq!(core.poll_timeout(), Some(now));
        core.on_timeout(now);
        let out = output(&mut core);
        let [Payload::Heartbeat(hb)] = &out[..] else { panic!("{out:?}") };
        assert_eq!(hb.last_frame_id, 1);
        assert_eq!(hb.tx, 2 + u64::from(k) - 1, "Init, the frame, earlier heartbeats");
        assert_eq!(core.poll_timeout(), Some(now + HEARTBEAT_INTERVAL));
    }
    assert!(!core.wants_close());
    assert_eq!(core.summary().heartbeats_rx_total, 4);
}

#[test]
fn ten_seconds_of_silence_is_a_dead_peer() {
    let (mut core, t0) = core(Policy::LatestWins, 2, 8);
    let buf = data();
    ready(&mut core, 2, t0);
    offer(&mut core, &buf, 1, t0);
    offer(&mut core, &buf, 2, t0);
    let mut now = t0;
    while let Some(t) = core.poll_timeout() {
        if t > t0 + Duration::from_secs(60) {
            break;
        }
        now = t;
        core.on_timeout(now);
        if core.wants_close() {
            break;
        }
    }
    assert!(core.wants_close());
    assert_eq!(now, t0 + PEER_TIMEOUT, "dead exactly 10 s after the last message");
    // a message from the worker in between would have kept it alive
    let delay = core.on_closed(now).expect("reconnects");
    assert!(delay >= BACKOFF_MIN.mul_f64(0.8) && delay <= BACKOFF_MIN.mul_f64(1.2));
    let s = core.summary();
    assert_eq!(s.peer_timeouts_total, 1);
    assert_eq!(s.frames_lost_total, 2);
    assert_eq!(core.window(), 0);
    assert_eq!(core.inflight(), 0);
}

#[test]
fn a_message_resets_the_peer_timer() {
    let (mut core, t0) = core(Policy::LatestWins, 2, 8);
    ready(&mut core, 2, t0);
    core.on_bytes(&msg(Payload::Heartbeat(Heartbeat::default())), t0 + Duration::from_secs(8));
    core.on_timeout(t0 + PEER_TIMEOUT);
    assert!(!core.wants_close());
    core.on_timeout(t0 + Duration::from_secs(18));
    assert!(core.wants_close());
}

#[test]
fn backoff_doubles_to_thirty_seconds_with_jitter_and_resets_after_init_ok() {
    let (mut core, t0) = core(Policy::LatestWins, 2, 8);
    let nominal = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0];
    let mut seen = Vec::new();
    for n in nominal {
        let d = core.on_closed(t0).expect("a delay").as_secs_f64();
        assert!(d >= n * 0.8 - 1e-9 && d <= n * 1.2 + 1e-9, "{d} not within 20% of {n}");
        seen.push(d);
    }
    let (mut again, _) = self::core(Policy::LatestWins, 2, 8);
    let repeat: Vec<f64> =
        nominal.iter().map(|_| again.on_closed(t0).unwrap().as_secs_f64()).collect();
    assert_eq!(seen, repeat, "the jitter is deterministic for a seed");
    assert!(seen.windows(2).any(|w| w[0] != w[1] / 2.0), "jitter is applied");
    core.on_connected(t0);
    let d = core.on_closed(t0).unwrap().as_secs_f64();
    assert!(d >= 24.0, "a connection without InitOk does not reset the backoff: {d}");
    ready(&mut core, 2, t0);
    let d = core.on_closed(t0).unwrap().as_secs_f64();
    assert!((0.4..=0.6).contains(&d), "reset after InitOk: {d}");
    assert_eq!(core.summary().reconnects_total, 12);
}

#[test]
fn reconnect_sends_init_again_and_resets_credits() {
    let (mut core, t0) = core(Policy::LatestWins, 2, 8);
    let buf = data();
    ready(&mut core, 2, t0);
    offer(&mut core, &buf, 1, t0);
    offer(&mut core, &buf, 2, t0);
    assert_eq!(frames_out(&mut core).len(), 2);
    offer(&mut core, &buf, 3, t0);
    core.on_bytes(&result(1, &[])[..7], t0); // a partial message, forgotten at the close
    assert!(core.on_closed(t0).is_some());
    assert_eq!(core.state(), State::Disconnected);
    assert_eq!(offer(&mut core, &buf, 4, t0), Offer::Replaced, "capture never stops");
    core.on_connected(t0 + Duration::from_secs(1));
    let out = output(&mut core);
    assert!(matches!(&out[..], [Payload::Init(_)]), "{out:?}");
    core.on_bytes(&init_ok(1, 0, Codec::None), t0 + Duration::from_secs(1));
    assert_eq!(core.window(), 1);
    assert_eq!(frames_out(&mut core), vec![(3, 4)], "ids keep increasing across connections");
    core.on_bytes(&result(1, &[]), t0);
    let s = core.summary();
    assert_eq!(s.frames_lost_total, 2);
    assert_eq!(s.results_unmatched_total, 1, "a result for a frame lost earlier");
    assert_eq!(s.connections_total, 2);
    assert_eq!(s.reconnects_total, 1);
}

#[test]
fn frames_over_max_frame_bytes_go_out_as_jpeg() {
    let (mut core, t0) = core(Policy::LatestWins, 2, 8);
    let buf = data();
    core.on_connected(t0);
    core.on_bytes(&init_ok(2, 1000, Codec::None), t0);
    output(&mut core);
    offer(&mut core, &buf, 1, t0);
    offer(&mut core, &buf, 2, t0);
    let out = output(&mut core);
    assert_eq!(out.len(), 2);
    for p in out {
        let Payload::Frame(f) = p else { panic!() };
        assert_eq!(f.pixel_format, PixelFormat::PfJpeg as i32);
        assert_eq!(f.codec, Codec::Jpeg as i32);
        assert_eq!(f.planes, vec![Plane { stride: 0, offset: 0, size: f.data.len() as u32 }]);
        assert_eq!(f.data.len(), buf.len() / 8);
        assert!(f.data.iter().all(|&b| b == 0xd8));
    }
    let s = core.summary();
    assert_eq!(s.frame_bytes_max_hit_total, 2);
    assert_eq!(s.ai_degrade_jpeg_switch_total, 1, "one switch, two JPEG frames");
    assert_eq!(s.jpeg_frames_total, 2);
    assert!((s.jpeg_compression_ratio - 8.0).abs() < 1e-9);
}

#[test]
fn the_worker_choosing_jpeg_switches_every_frame_to_jpeg() {
    let (mut core, t0) = core(Policy::Fifo, 2, 8);
    let buf = data();
    core.on_connected(t0);
    core.on_bytes(&init_ok(2, 0, Codec::Jpeg), t0);
    output(&mut core);
    offer(&mut core, &buf, 1, t0);
    let out = output(&mut core);
    let [Payload::Frame(f)] = &out[..] else { panic!("{out:?}") };
    assert_eq!(f.pixel_format, PixelFormat::PfJpeg as i32);
    let s = core.summary();
    assert_eq!(s.frame_bytes_max_hit_total, 0);
    assert_eq!(s.ai_degrade_jpeg_switch_total, 1);
    // a raw frame (worker back to raw on reconnect) then JPEG again is a second switch
    core.on_closed(t0);
    core.on_connected(t0);
    core.on_bytes(&init_ok(2, 0, Codec::None), t0);
    offer(&mut core, &buf, 2, t0);
    core.on_closed(t0);
    core.on_connected(t0);
    core.on_bytes(&init_ok(2, 0, Codec::Jpeg), t0);
    offer(&mut core, &buf, 3, t0);
    assert_eq!(core.summary().ai_degrade_jpeg_switch_total, 2);
}

#[test]
fn raw_frames_carry_their_planes() {
    let (mut core, t0) = core(Policy::LatestWins, 1, 8);
    let buf = data();
    ready(&mut core, 1, t0);
    offer(&mut core, &buf, 1, t0);
    let out = output(&mut core);
    let [Payload::Frame(f)] = &out[..] else { panic!("{out:?}") };
    assert_eq!(f.pixel_format, PixelFormat::PfNv12 as i32);
    assert_eq!(f.codec, Codec::None as i32);
    assert_eq!(
        f.planes,
        vec![
            Plane { stride: W, offset: 0, size: W * H },
            Plane { stride: W, offset: W * H, size: W * H / 2 }
        ]
    );
    assert_eq!(f.data, buf);
    assert_eq!(f.session_id, "s1");
}

#[test]
fn finish_sends_end_after_the_queue_and_waits_for_results() {
    let (mut core, t0) = core(Policy::Fifo, 1, 8);
    let buf = data();
    ready(&mut core, 1, t0);
    offer(&mut core, &buf, 1, t0);
    offer(&mut core, &buf, 2, t0);
    core.finish(t0);
    assert_eq!(offer(&mut core, &buf, 3, t0), Offer::Closed);
    let out = output(&mut core);
    assert!(!out.iter().any(|p| matches!(p, Payload::End(_))), "frame 2 still queued");
    core.on_bytes(&result(1, &[]), t0);
    let out = output(&mut core);
    assert!(matches!(&out[..], [Payload::Frame(_), Payload::End(_)]), "{out:?}");
    assert_eq!(core.state(), State::Ended);
    assert!(!core.wants_close());
    core.on_bytes(&result(2, &[]), t0);
    assert!(core.is_done() && core.wants_close());
    assert_eq!(core.on_closed(t0), None);
    assert_eq!(core.frames_settled(), 2);
}

#[test]
fn end_grace_runs_out_after_two_seconds() {
    let (mut core, t0) = core(Policy::LatestWins, 2, 8);
    let buf = data();
    ready(&mut core, 2, t0);
    offer(&mut core, &buf, 1, t0);
    offer(&mut core, &buf, 2, t0);
    core.abort(t0);
    assert_eq!(core.state(), State::Ended);
    assert_eq!(core.poll_timeout(), Some(t0 + END_GRACE));
    core.on_timeout(t0 + END_GRACE);
    assert!(core.is_done() && core.wants_close());
    assert_eq!(core.summary().frames_lost_total, 2);
    assert_eq!(core.on_closed(t0 + END_GRACE), None);
}

#[test]
fn abort_while_disconnected_is_over_at_once() {
    let (mut core, t0) = core(Policy::Fifo, 2, 8);
    let buf = data();
    offer(&mut core, &buf, 1, t0);
    core.abort(t0);
    assert!(core.is_done());
    assert_eq!(core.summary().frames_discarded_total, 1);
}

#[test]
fn garbage_from_the_worker_closes_the_connection() {
    let (mut core, t0) = core(Policy::LatestWins, 2, 8);
    core.on_connected(t0);
    core.on_bytes(&[3, 0, 0, 0, 0xff, 0xff, 0xff], t0);
    assert!(core.wants_close());
    assert_eq!(core.summary().protocol_errors_total, 1);
    let (mut core, t0) = self::core(Policy::LatestWins, 2, 8);
    core.on_connected(t0);
    core.on_bytes(&u32::MAX.to_le_bytes(), t0);
    assert!(core.wants_close(), "a prefix over the limit");
}

#[test]
fn messages_split_across_reads_are_reassembled() {
    let (mut core, t0) = core(Policy::LatestWins, 2, 8);
    let buf = data();
    core.on_connected(t0);
    let mut bytes = init_ok(2, 0, Codec::None);
    offer(&mut core, &buf, 1, t0);
    bytes.extend(result(1, &["T9"]));
    bytes.extend(window_update(1));
    for b in &bytes {
        core.on_bytes(std::slice::from_ref(b), t0);
    }
    let s = core.summary();
    assert_eq!((s.results_total, s.track_ids_seen, s.window_updates_total), (1, 1, 1));
    assert_eq!(core.window(), 1);
}

#[test]
fn steady_state_reuses_the_output_buffer() {
    let (mut core, t0) = core(Policy::LatestWins, 1, 8);
    let buf = data();
    ready(&mut core, 1, t0);
    let mut wbuf = Vec::new();
    offer(&mut core, &buf, 1, t0);
    core.poll_output(&mut wbuf);
    let cap = wbuf.capacity();
    for id in 1..50 {
        wbuf.clear();
        core.on_bytes(&result(id, &[]), t0);
        offer(&mut core, &buf, id + 1, t0);
        core.poll_output(&mut wbuf);
        assert!(!wbuf.is_empty());
    }
    assert!(wbuf.capacity() <= cap.max(4096) * 2, "buffers are swapped, not regrown");
}
