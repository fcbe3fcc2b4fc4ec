//! The Result envelope, encoded straight from an [`Outcome`] into the session's output: the
//! same bytes prost would write for the [`proto::Result`] of the outcome, without building
//! it (no `String` per class name or track id, so a steady stream of results allocates
//! nothing). The test compares it with prost's encoding of the message built the slow way.

use super::Outcome;
use crate::frames::codec::PROTOCOL_VERSION;
use crate::frames::detector::{Detection, ModelIdentity};
use crate::frames::proto::MsgType;

const VARINT: u32 = 0;
const FIXED32: u32 = 5;
const LEN: u32 = 2;

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from(field << 3 | wire));
}

/// Bytes of a length-delimited field of `len` bytes (field numbers here are below 16).
fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn uint_field(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + varint_len(value)
    }
}

/// As prost: 0.0 (and -0.0) is the default and is not written.
fn float_field(value: f32) -> usize {
    if value == 0.0 {
        0
    } else {
        5
    }
}

fn str_field(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        len_field(s.len())
    }
}

fn put_uint(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        key(out, field, VARINT);
        put_varint(out, value);
    }
}

fn put_float(out: &mut Vec<u8>, field: u32, value: f32) {
    if float_field(value) != 0 {
        key(out, field, FIXED32);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn put_str(out: &mut Vec<u8>, field: u32, s: &str) {
    put_bytes(out, field, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        key(out, field, LEN);
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

fn put_len(out: &mut Vec<u8>, field: u32, len: usize) {
    key(out, field, LEN);
    put_varint(out, len as u64);
}

/// `prefix` and the decimal digits of `v`, in `buf`.
fn decimal<'a>(prefix: &[u8], mut v: u32, buf: &'a mut [u8; 11]) -> &'a [u8] {
    let mut digits = [0u8; 10];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        v /= 10;
        n += 1;
        if v == 0 {
            break;
        }
    }
    buf[..prefix.len()].copy_from_slice(prefix);
    for i in 0..n {
        buf[prefix.len() + i] = digits[n - 1 - i];
    }
    &buf[..prefix.len() + n]
}

/// "T<n>" of a track id (empty for 0, not tracked).
fn track_name(id: u32, buf: &mut [u8; 11]) -> &[u8] {
    if id == 0 {
        return &[];
    }
    decimal(b"T", id, buf)
}

/// The class's name, or its number when the model names fewer classes.
fn class_name<'a>(d: &Detection, identity: &'a ModelIdentity, buf: &'a mut [u8; 11]) -> &'a [u8] {
    match identity.classes.get(usize::from(d.class)) {
        Some(name) => name.as_bytes(),
        None => decimal(b"", u32::from(d.class), buf),
    }
}

fn bbox_len(d: &Detection) -> usize {
    float_field(d.x1) + float_field(d.y1) + float_field(d.x2) + float_field(d.y2)
}

fn detection_len(d: &Detection, identity: &ModelIdentity) -> usize {
    let (mut a, mut b) = ([0u8; 11], [0u8; 11]);
    len_field(bbox_len(d))
        + float_field(d.conf)
        + bytes_field(class_name(d, identity, &mut a))
        + bytes_field(track_name(d.track_id, &mut b))
}

fn bytes_field(b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        len_field(b.len())
    }
}

/// Appends the length-prefixed Envelope carrying the Result of `outcome` to `out`.
pub(super) fn result(
    out: &mut Vec<u8>,
    stream_id: &str,
    session_id: &str,
    outcome: &Outcome,
    identity: &ModelIdentity,
) {
    let frame_ref =
        uint_field(outcome.ts_mono_ns) + uint_field(outcome.ts_utc_ns) + str_field(session_id);
    let lat = float_field(outcome.pre_ms)
        + float_field(outcome.infer_ms)
        + float_field(outcome.post_ms)
        + float_field(outcome.total_ms);
    let detections: usize =
        outcome.detections.iter().map(|d| len_field(detection_len(d, identity))).sum();
    let result = uint_field(outcome.frame_id)
        + len_field(frame_ref)
        + str_field(&identity.family)
        + str_field(&identity.name)
        + str_field(&identity.version)
        + len_field(lat)
        + len_field(detections);
    let envelope = uint_field(u64::from(PROTOCOL_VERSION))
        + str_field(stream_id)
        + uint_field(MsgType::Result as u64)
        + len_field(result);
    out.reserve(4 + envelope);
    out.extend_from_slice(&(envelope as u32).to_le_bytes());
    let start = out.len();
    put_uint(out, 1, u64::from(PROTOCOL_VERSION));
    put_str(out, 2, stream_id);
    put_uint(out, 3, MsgType::Result as u64);
    put_len(out, 13, result);
    put_uint(out, 1, outcome.frame_id);
    put_len(out, 2, frame_ref);
    put_uint(out, 1, outcome.ts_mono_ns);
    put_uint(out, 2, outcome.ts_utc_ns);
    put_str(out, 3, session_id);
    put_str(out, 3, &identity.family);
    put_str(out, 4, &identity.name);
    put_str(out, 5, &identity.version);
    put_len(out, 6, lat);
    put_float(out, 1, outcome.pre_ms);
    put_float(out, 2, outcome.infer_ms);
    put_float(out, 3, outcome.post_ms);
    put_float(out, 4, outcome.total_ms);
    put_len(out, 7, detections);
    for d in &outcome.detections {
        put_len(out, 1, detection_len(d, identity));
        put_len(out, 1, bbox_len(d));
        put_float(out, 1, d.x1);
        put_float(out, 2, d.y1);
        put_float(out, 3, d.x2);
        put_float(out, 4, d.y2);
        put_float(out, 2, d.conf);
        let (mut a, mut b) = ([0u8; 11], [0u8; 11]);
        put_bytes(out, 3, class_name(d, identity, &mut a));
        put_bytes(out, 4, track_name(d.track_id, &mut b));
    }
    debug_assert_eq!(out.len() - start, envelope);
}
