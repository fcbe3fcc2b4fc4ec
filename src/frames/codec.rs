//! Frame protocol v1 framing, sans-IO: a u32 little-endian length, then one protobuf
//! [`Envelope`]. [`split`] finds the next message in received bytes and enforces the size
//! limit from the prefix alone (nothing of an oversized body is buffered); [`decode`]
//! checks the version and that `msg_type` names the oneof that is set; [`encode`] appends
//! a length-prefixed envelope to a reused buffer.

use std::fmt;

use prost::Message as _;

use super::proto::{envelope::Payload, Envelope, ErrorCode, MsgType};

/// The only protocol version: `Envelope.protocol_version` must be this.
pub const PROTOCOL_VERSION: u32 = 1;

/// The field number of `Envelope.frame`.
const FRAME_FIELD: u64 = 12;

/// Bytes of the length prefix.
pub const PREFIX_BYTES: usize = 4;

/// Envelope and field overhead allowed above `max_frame_bytes` in one message (stream id,
/// planes, timestamps, session id).
pub const ENVELOPE_SLACK: usize = 4096;

/// Why received bytes are not a valid message. Each maps to the [`ErrorCode`] the worker
/// answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix announces more than the limit (FRAME_TOO_LARGE).
    TooLarge {
        /// The announced length.
        len: u64,
        /// The receiver's limit.
        limit: usize,
    },
    /// The body is not a protobuf `Envelope` (BAD_MESSAGE).
    Protobuf(String),
    /// `protocol_version` is not 1 (VERSION_UNSUPPORTED).
    Version(u32),
    /// No oneof is set (BAD_MESSAGE).
    NoPayload {
        /// The envelope's `msg_type`.
        msg_type: i32,
    },
    /// `msg_type` does not name the oneof that is set (BAD_MESSAGE).
    MsgTypeMismatch {
        /// The envelope's `msg_type`.
        msg_type: i32,
        /// The msg_type of the oneof that is set.
        payload: MsgType,
    },
}

impl DecodeError {
    /// The error code a worker answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::Protobuf(_) | Self::NoPayload { .. } | Self::MsgTypeMismatch { .. } => {
                ErrorCode::BadMessage
            }
            Self::Version(_) => ErrorCode::VersionUnsupported,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, limit } => {
                write!(f, "message of {len} bytes is over the limit of {limit} bytes")
            }
            Self::Protobuf(why) => write!(f, "not a frames v1 Envelope: {why}"),
            Self::Version(got) => {
                write!(f, "protocol version mismatch: expected {PROTOCOL_VERSION}, got {got}")
            }
            Self::NoPayload { msg_type } => {
                write!(f, "msg_type {} with no payload set", msg_type_name(*msg_type))
            }
            Self::MsgTypeMismatch { msg_type, payload } => write!(
                f,
                "msg_type {} does not match the payload {}",
                msg_type_name(*msg_type),
                payload.as_str_name()
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The name of a wire `msg_type` value, or the number if it is not one.
pub fn msg_type_name(value: i32) -> String {
    match MsgType::try_from(value) {
        Ok(t) => t.as_str_name().to_owned(),
        Err(_) => value.to_string(),
    }
}

/// The msg_type that goes with `payload`.
pub fn msg_type_of(payload: &Payload) -> MsgType {
    match payload {
        Payload::Init(_) => MsgType::Init,
        Payload::InitOk(_) => MsgType::InitOk,
        Payload::Frame(_) => MsgType::Frame,
        Payload::Result(_) => MsgType::Result,
        Payload::Error(_) => MsgType::Error,
        Payload::WindowUpdate(_) => MsgType::WindowUpdate,
        Payload::Heartbeat(_) => MsgType::Heartbeat,
        Payload::End(_) => MsgType::End,
    }
}

/// Where the next whole message is in `buf`: `Ok(Some(n))` when `buf` starts with a prefix
/// and a body of `n - PREFIX_BYTES` bytes (the message is `buf[PREFIX_BYTES..n]`),
/// `Ok(None)` when more bytes are needed, and [`DecodeError::TooLarge`] as soon as the
/// prefix announces more than `limit` body bytes.
pub fn split(buf: &[u8], limit: usize) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.get(..PREFIX_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes"));
    if len as u64 > limit as u64 {
        return Err(DecodeError::TooLarge { len: len.into(), limit });
    }
    let end = PREFIX_BYTES + len as usize;
    Ok((buf.len() >= end).then_some(end))
}

/// Decodes one envelope body into `env` and validates it. `env` is reused: a Frame decoded
/// into an envelope that held a Frame keeps its data buffer's capacity.
pub fn decode(body: &[u8], env: &mut Envelope) -> Result<(), DecodeError> {
    reset(env);
    env.merge(body).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    if env.protocol_version != PROTOCOL_VERSION {
        return Err(DecodeError::Version(env.protocol_version));
    }
    if matches!(env.payload, Some(Payload::Frame(_))) && !has_field(body, FRAME_FIELD) {
        env.payload = None;
    }
    let Some(payload) = &env.payload else {
        return Err(DecodeError::NoPayload { msg_type: env.msg_type });
    };
    let expected = msg_type_of(payload);
    if env.msg_type != expected as i32 {
        return Err(DecodeError::MsgTypeMismatch { msg_type: env.msg_type, payload: expected });
    }
    Ok(())
}

/// [`decode`], keeping one Frame's buffers across messages of other kinds: a Heartbeat
/// between two Frames would otherwise drop the first Frame's data buffer and make the next
/// Frame allocate a new one. `spare` holds the Frame while other messages are decoded.
pub fn decode_reusing(
    body: &[u8],
    env: &mut Envelope,
    spare: &mut Option<super::proto::Frame>,
) -> Result<(), DecodeError> {
    let frame_next = has_field(body, FRAME_FIELD);
    let frame_now = matches!(env.payload, Some(Payload::Frame(_)));
    if frame_now && !frame_next {
        if let Some(Payload::Frame(frame)) = env.payload.take() {
            *spare = Some(frame);
        }
    } else if frame_next && !frame_now {
        if let Some(frame) = spare.take() {
            env.payload = Some(Payload::Frame(frame));
        }
    }
    decode(body, env)
}

/// Clears `env` for a new decode, keeping a Frame payload's buffers (merging a message into
/// a set oneof of the same kind merges into it, so its `data` and `planes` capacity stay).
fn reset(env: &mut Envelope) {
    env.protocol_version = 0;
    env.msg_type = 0;
    env.stream_id.clear();
    match &mut env.payload {
        Some(Payload::Frame(frame)) => {
            let mut data = std::mem::take(&mut frame.data);
            let mut planes = std::mem::take(&mut frame.planes);
            let mut session = std::mem::take(&mut frame.session_id);
            let mut space = std::mem::take(&mut frame.color_space);
            let mut range = std::mem::take(&mut frame.color_range);
            data.clear();
            planes.clear();
            session.clear();
            space.clear();
            range.clear();
            *frame = super::proto::Frame {
                data,
                planes,
                session_id: session,
                color_space: space,
                color_range: range,
                ..Default::default()
            };
        }
        _ => env.payload = None,
    }
}

/// Reads one protobuf varint off the front of `buf` (`None` if it is cut short or longer
/// than ten bytes).
pub fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Whether the top level of a well-formed envelope body sets field `number` (the kept Frame
/// of [`reset`] must not stand in for a Frame field the message does not carry).
fn has_field(mut body: &[u8], number: u64) -> bool {
    let varint = read_varint;
    while !body.is_empty() {
        let Some(key) = varint(&mut body) else { return false };
        if key >> 3 == number {
            return true;
        }
        let skip = match key & 7 {
            0 => match varint(&mut body) {
                Some(_) => 0,
                None => return false,
            },
            1 => 8,
            2 => match varint(&mut body) {
                Some(n) => n,
                None => return false,
            },
            5 => 4,
            _ => return false,
        };
        let Ok(skip) = usize::try_from(skip) else { return false };
        let Some(rest) = body.get(skip..) else { return false };
        body = rest;
    }
    false
}

/// Appends one length-prefixed envelope carrying `payload` to `out`.
pub fn encode(stream_id: &str, payload: Payload, out: &mut Vec<u8>) {
    let env = Envelope {
        protocol_version: PROTOCOL_VERSION,
        stream_id: stream_id.to_owned(),
        msg_type: msg_type_of(&payload) as i32,
        payload: Some(payload),
    };
    encode_envelope(&env, out);
}

/// Appends `env` with its length prefix to `out` (no validation: tests use it for bad input).
pub fn encode_envelope(env: &Envelope, out: &mut Vec<u8>) {
    let len = env.encoded_len();
    out.reserve(PREFIX_BYTES + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    env.encode(out).expect("a Vec grows");
}
