//! Encoding frames and error replies into a caller's buffer.

use core::fmt;

use zerocopy::IntoBytes;

use super::{
    BadErrorBody, CanonicalHeader, Flags, LegacyHeader, ProtocolVersion, WireError, CRC_OFFSET,
};

/// Appends one encoded frame (header + body) to `out`: V2 with the crc32 over header bytes
/// `0..20` followed by the body, V1 without crc (and without `flags`, which v1 cannot carry).
///
/// `flags` are written as given, reserved bits included (the decoder is where they are judged).
///
/// # Panics
///
/// If `body` is longer than `u32::MAX` bytes, which no header can describe.
pub fn encode(
    version: ProtocolVersion,
    msg_type: u16,
    flags: Flags,
    msg_id: u64,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    out.reserve(version.header_len() + body.len());
    let start = begin_frame(version, out);
    out.extend_from_slice(body);
    finish_frame(version, msg_type, flags, msg_id, start, out);
}

/// Appends an error reply to `out`: flags `RESPONSE | ERROR` (dropped in v1), the offending
/// `msg_type` and `msg_id`, and the body `error.code()` as u16 little-endian followed by the
/// UTF-8 Display text of `error`.
pub fn encode_error(
    version: ProtocolVersion,
    msg_type: u16,
    msg_id: u64,
    error: &WireError,
    out: &mut Vec<u8>,
) {
    let start = begin_frame(version, out);
    out.extend_from_slice(&error.code().to_le_bytes());
    // Formatting into a Vec cannot fail (`VecWriter::write_str` always returns Ok) and
    // WireError's Display only writes, so the result carries no information.
    let _ = fmt::write(&mut VecWriter(out), format_args!("{error}"));
    finish_frame(version, msg_type, Flags::RESPONSE.union(Flags::ERROR), msg_id, start, out);
}

/// Reads an error reply's body: the code (u16 little-endian) and the text after it.
pub fn decode_error_body(body: &[u8]) -> Result<(u16, &str), BadErrorBody> {
    let Some((code, text)) = body.split_first_chunk::<2>() else {
        return Err(BadErrorBody::TooShort { len: body.len() });
    };
    let text = core::str::from_utf8(text)
        .map_err(|e| BadErrorBody::NotUtf8 { valid_up_to: e.valid_up_to() })?;
    Ok((u16::from_le_bytes(*code), text))
}

/// The crc32 of a v2 frame: over `header[0..20]` followed by `body`. `header` may be the whole
/// 24-byte header; only its first 20 bytes are covered.
///
/// # Panics
///
/// If `header` is shorter than 20 bytes.
pub fn frame_crc(header: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..CRC_OFFSET]);
    hasher.update(body);
    hasher.finalize()
}

/// Reserves room for the header (zeroes, patched by `finish_frame`); returns where it starts.
fn begin_frame(version: ProtocolVersion, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + version.header_len(), 0);
    start
}

/// Writes the header of the frame starting at `start`, whose body is everything after it.
fn finish_frame(
    version: ProtocolVersion,
    msg_type: u16,
    flags: Flags,
    msg_id: u64,
    start: usize,
    out: &mut [u8],
) {
    let (header, body) = out[start..].split_at_mut(version.header_len());
    let length = u32::try_from(body.len()).expect("a frame body is at most u32::MAX bytes");
    match version {
        ProtocolVersion::V2 => {
            let mut h = CanonicalHeader::new(flags, msg_type, length, msg_id);
            h.crc32 = frame_crc(h.as_bytes(), body).into();
            header.copy_from_slice(h.as_bytes());
        }
        ProtocolVersion::V1 => {
            header.copy_from_slice(LegacyHeader::new(msg_type, length, msg_id).as_bytes());
        }
    }
}

/// `fmt::Write` into a byte vector, so Display text goes straight into the frame.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Decoder, DecoderConfig, Event, MAGIC};

    #[test]
    fn error_reply_round_trips() {
        let error = WireError::UnsupportedFlags(0x21);
        for version in [ProtocolVersion::V2, ProtocolVersion::V1] {
            let mut out = vec![0xaa]; // appends, leaves what was there
            encode_error(version, 9, 77, &error, &mut out);
            assert_eq!(out[0], 0xaa);
            let mut d = Decoder::new(DecoderConfig {
                enable_legacy_support: true,
                ..DecoderConfig::default()
            });
            let mut seen = 0;
            d.feed(&out[1..], |e| {
                let Event::Frame(f) = e else { panic!("{e:?}") };
                assert_eq!(f.header.msg_type, 9);
                assert_eq!(f.header.msg_id, 77);
                let expect_flags = match version {
                    ProtocolVersion::V2 => Flags::RESPONSE.union(Flags::ERROR),
                    ProtocolVersion::V1 => Flags::EMPTY,
                };
                assert_eq!(f.header.flags, expect_flags);
                assert_eq!(decode_error_body(f.body), Ok((6, "unsupported flags 0x21")));
                seen += 1;
            })
            .unwrap();
            assert_eq!(seen, 1);
        }
    }

    #[test]
    fn bad_error_bodies() {
        assert_eq!(decode_error_body(&[1]), Err(BadErrorBody::TooShort { len: 1 }));
        assert_eq!(
            decode_error_body(&[1, 0, b'o', 0xff]),
            Err(BadErrorBody::NotUtf8 { valid_up_to: 1 })
        );
        assert_eq!(decode_error_body(&[5, 0]), Ok((5, "")));
        assert_eq!(
            BadErrorBody::TooShort { len: 1 }.to_string(),
            "error body too short: expected at least 2 bytes, got 1"
        );
    }

    #[test]
    fn v1_encoding_is_big_endian_without_crc() {
        let mut out = Vec::new();
        encode(ProtocolVersion::V1, 7, Flags::RESPONSE, 0x0102, b"xy", &mut out);
        let mut expect = MAGIC.to_be_bytes().to_vec();
        expect.extend_from_slice(&[1, 0, 7, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 2, b'x', b'y']);
        assert_eq!(out, expect);
    }
}
