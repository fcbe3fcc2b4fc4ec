//! Canonical framing for the daemon's Unix sockets (control socket, native alloc reports).
//!
//! Spec: `shared/specs/canonical-header.md`. Sans-IO: [`encode`] appends bytes to a `Vec`, and a
//! [`Decoder`] takes bytes as they arrive and hands back events; sockets live above this module.
//!
//! # Frame format
//!
//! Every message is a 24-byte header followed by `length` body bytes. The header is packed and
//! little-endian ([`CanonicalHeader`] is its one definition):
//!
//! | offset | size | field | value |
//! |---|---|---|---|
//! | 0 | 4 | magic | [`MAGIC`] `0x4C504149`; on the wire `49 41 50 4C` |
//! | 4 | 1 | version | [`VERSION`] = 2 |
//! | 5 | 1 | flags | [`Flags`]: bit 0 compressed (not negotiated yet, so rejected), bits 1-2 priority, bit 3 response, bit 4 error, bits 5-7 reserved (must be 0) |
//! | 6 | 2 | msg_type | u16 |
//! | 8 | 4 | length | u32 body length, at most [`DecoderConfig::max_body_bytes`] |
//! | 12 | 8 | msg_id | u64, not 8-aligned on the wire |
//! | 20 | 4 | crc32 | CRC-32 (IEEE, as `crc32fast` computes it) over header bytes `0..20` followed by the body |
//!
//! Old clients speak the big-endian legacy v1 header ([`LegacyHeader`], 19 bytes: magic, version
//! 1, msg_type, length, msg_id; no flags, no crc). Its magic is the same number, so on the wire it
//! reads `4C 50 41 49`: the byte-swapped magic. With
//! [`enable_legacy_support`](DecoderConfig::enable_legacy_support), a connection whose first frame
//! is v1 speaks v1 from then on ([`Decoder::version`]), and replies should be encoded in v1.
//!
//! # Error policy
//!
//! [`WireError`] is a small `Copy` enum; [`WireError::is_fatal`] splits it in two.
//!
//! - **Per message** ([`Event::Error`], connection kept): a crc32 mismatch drops the message;
//!   reserved or compressed flag bits drop the message (its body is skipped, never buffered);
//!   an unknown `msg_type` is the layer above's call (it replies with
//!   [`WireError::UnknownMsgType`] through [`encode_error`]).
//! - **Fatal** (`Err` from [`Decoder::feed`], close the connection after one error reply): bad
//!   magic, a version other than the connection's, a legacy frame without legacy support, a
//!   length over the limit (checked from the header, before any body byte is buffered: the stream
//!   cannot be resynchronised), and [`DecoderConfig::crc_error_limit`] crc mismatches in a row
//!   (a good frame resets the count). After a fatal error the decoder refuses all input with the
//!   same error.
//!
//! An error reply ([`encode_error`]) carries `RESPONSE | ERROR`, the offending `msg_type` and
//! `msg_id`, and a body of the error's [`code`](WireError::code) (u16 little-endian) followed by
//! its Display text, read back with [`decode_error_body`].
//!
//! # Memory
//!
//! Frames that lie wholly inside the bytes given to [`Decoder::feed`] are handed out zero-copy.
//! Only a frame that arrives in pieces is gathered in the decoder's own buffer, which is
//! allocated on first use and never holds more than [`HEADER_LEN`] + `max_body_bytes` bytes. It
//! grows with the bytes that arrived, not with the length a header announces (a peer that
//! announces 1 MiB and sends one byte costs a few dozen bytes), and it is reused for later frames
//! up to [`Decoder::RETAIN_BYTES`]: a larger one is freed once its frame is delivered
//! ([`Decoder::memory`]).

mod decoder;
mod encode;
mod error;
mod layout;

pub use decoder::{Decoder, DecoderConfig, Event, Frame, DEFAULT_CRC_ERROR_LIMIT};
pub use encode::{decode_error_body, encode, encode_error, frame_crc};
pub use error::{BadErrorBody, WireError};
pub use layout::{CanonicalHeader, LegacyHeader};

/// The magic number, as a little-endian u32 at offset 0 (`49 41 50 4C` on the wire).
pub const MAGIC: u32 = 0x4C50_4149;
/// [`MAGIC`] read with the wrong byte order: what a big-endian legacy v1 client sends.
pub const SWAPPED_MAGIC: u32 = MAGIC.swap_bytes();
/// The protocol version this daemon speaks, in byte 4 of the canonical header.
pub const VERSION: u8 = 2;
/// The version byte of a legacy v1 header.
pub const LEGACY_VERSION: u8 = 1;
/// Size of the canonical (v2) header in bytes.
pub const HEADER_LEN: usize = 24;
/// Size of the big-endian legacy v1 header: magic u32, version u8 (= 1), msg_type u16,
/// length u32, msg_id u64, no crc. (Seed 002 calls it 16 bytes; its fields add up to 19.)
pub const LEGACY_HEADER_LEN: usize = 19;
/// Offset of the crc32 field in the canonical header, and so the number of header bytes the
/// crc covers before the body.
pub const CRC_OFFSET: usize = 20;
/// Default [`DecoderConfig::max_body_bytes`]: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u32 = 1 << 20;

/// The flags byte of the canonical header (offset 5).
///
/// Bit 0 compressed, bits 1-2 priority 0..=3, bit 3 response, bit 4 error, bits 5-7 reserved.
/// The legacy v1 header has no flags: they are dropped when encoding v1 and read as empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// No flag set, priority 0.
    pub const EMPTY: Flags = Flags(0);
    /// Bit 0: the body is compressed. Reserved until negotiated: the decoder rejects it with
    /// [`WireError::UnsupportedFlags`].
    pub const COMPRESSED: Flags = Flags(1 << 0);
    /// Bit 3: this message answers the request with the same `msg_id`.
    pub const RESPONSE: Flags = Flags(1 << 3);
    /// Bit 4: this message is an error reply (body: see [`encode_error`]).
    pub const ERROR: Flags = Flags(1 << 4);
    /// Bits 1-2: the priority field.
    pub const PRIORITY_MASK: u8 = 0b0000_0110;
    /// Bits 5-7: reserved, must be 0.
    pub const RESERVED_MASK: u8 = 0b1110_0000;
    /// Bits a peer may not set today: the reserved bits and compression (not negotiated).
    pub const UNSUPPORTED_MASK: u8 = Self::RESERVED_MASK | Self::COMPRESSED.0;

    /// The priority, 0..=3 (bits 1-2).
    pub const fn priority(self) -> u8 {
        (self.0 & Self::PRIORITY_MASK) >> 1
    }

    /// These flags with the priority set to `p`; only the low two bits of `p` are used.
    pub const fn with_priority(self, p: u8) -> Flags {
        Flags((self.0 & !Self::PRIORITY_MASK) | ((p & 0b11) << 1))
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits of both.
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// The framing a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// Legacy big-endian 19-byte header, no flags, no crc. Accepted only with
    /// [`DecoderConfig::enable_legacy_support`].
    V1,
    /// The canonical 24-byte little-endian header with crc32.
    V2,
}

impl ProtocolVersion {
    /// The header size of this version: [`LEGACY_HEADER_LEN`] or [`HEADER_LEN`].
    pub const fn header_len(self) -> usize {
        match self {
            ProtocolVersion::V1 => LEGACY_HEADER_LEN,
            ProtocolVersion::V2 => HEADER_LEN,
        }
    }

    /// The version byte on the wire: 1 or 2.
    pub const fn number(self) -> u8 {
        match self {
            ProtocolVersion::V1 => LEGACY_VERSION,
            ProtocolVersion::V2 => VERSION,
        }
    }
}

/// A decoded header, whichever version it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The framing the message came in.
    pub version: ProtocolVersion,
    /// The flags byte; always empty for v1.
    pub flags: Flags,
    /// The message type (the layer above knows which exist).
    pub msg_type: u16,
    /// Body length in bytes, header excluded.
    pub length: u32,
    /// Request/response correlation id, or the client's sequence number for alloc events.
    pub msg_id: u64,
}

#[cfg(test)]
mod tests;
