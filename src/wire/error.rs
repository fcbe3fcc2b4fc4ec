//! What can go wrong with a frame, as peers see it (the spec's error table), and what can go
//! wrong reading an error reply's body.

/// A framing error. Small and `Copy`: the decoder reports it without allocating; the Display
/// text is the spec's, exactly, and is what an error reply carries.
///
/// Codes ([`code`](Self::code)) and metric labels ([`kind`](Self::kind)) are stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Bytes 0..4 are neither the magic nor the byte-swapped magic (value: those bytes read as a
    /// little-endian u32; on a v1 connection, as a big-endian one). Fatal.
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    /// The version byte is not the connection's (or a v1 frame arrived without legacy support,
    /// `got: 1`). Fatal.
    #[error("protocol version mismatch: expected 2, got {got}")]
    VersionMismatch {
        /// The version the peer sent.
        got: u8,
    },
    /// The crc32 in the header does not match the header and body. The message is dropped;
    /// the connection is kept.
    #[error("crc32 mismatch: expected 0x{expected:08x}, got 0x{got:08x}")]
    Crc {
        /// The crc32 computed over header bytes `0..20` and the body.
        expected: u32,
        /// The crc32 the header carries.
        got: u32,
    },
    /// The header's length is over the configured limit. Fatal: the body is never read, so the
    /// stream cannot be resynchronised.
    #[error("message too large: {length} > {limit}")]
    TooLarge {
        /// The header's body length.
        length: u32,
        /// [`DecoderConfig::max_body_bytes`](super::DecoderConfig::max_body_bytes).
        limit: u32,
    },
    /// The message type is not one the layer above knows. Not produced by the decoder; the
    /// connection is kept.
    #[error("unknown message type {0}")]
    UnknownMsgType(u16),
    /// Reserved flag bits, or the compressed bit (not negotiated), are set (value: the whole
    /// flags byte). The message is dropped; the connection is kept.
    #[error("unsupported flags 0x{0:02x}")]
    UnsupportedFlags(u8),
    /// [`DecoderConfig::crc_error_limit`](super::DecoderConfig::crc_error_limit) crc32
    /// mismatches in a row. Fatal.
    #[error("too many crc32 mismatches in a row ({limit})")]
    TooManyCrcErrors {
        /// The configured limit.
        limit: u32,
    },
}

impl WireError {
    /// Whether the connection must be closed (after one error reply, if possible).
    pub fn is_fatal(&self) -> bool {
        match self {
            WireError::BadMagic(_)
            | WireError::VersionMismatch { .. }
            | WireError::TooLarge { .. }
            | WireError::TooManyCrcErrors { .. } => true,
            WireError::Crc { .. }
            | WireError::UnknownMsgType(_)
            | WireError::UnsupportedFlags(_) => false,
        }
    }

    /// The stable numeric code sent in an error reply's body: 1 bad magic, 2 version mismatch,
    /// 3 crc, 4 too large, 5 unknown msg type, 6 unsupported flags, 7 too many crc errors.
    pub fn code(&self) -> u16 {
        match self {
            WireError::BadMagic(_) => 1,
            WireError::VersionMismatch { .. } => 2,
            WireError::Crc { .. } => 3,
            WireError::TooLarge { .. } => 4,
            WireError::UnknownMsgType(_) => 5,
            WireError::UnsupportedFlags(_) => 6,
            WireError::TooManyCrcErrors { .. } => 7,
        }
    }

    /// The metric label of this kind of error.
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::BadMagic(_) => "bad_magic",
            WireError::VersionMismatch { .. } => "version_mismatch",
            WireError::Crc { .. } => "crc",
            WireError::TooLarge { .. } => "too_large",
            WireError::UnknownMsgType(_) => "unknown_msg_type",
            WireError::UnsupportedFlags(_) => "unsupported_flags",
            WireError::TooManyCrcErrors { .. } => "too_many_crc_errors",
        }
    }
}

/// An error reply's body that [`decode_error_body`](super::decode_error_body) cannot read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadErrorBody {
    /// Shorter than the 2-byte code.
    #[error("error body too short: expected at least 2 bytes, got {len}")]
    TooShort {
        /// The body's length.
        len: usize,
    },
    /// The text after the code is not UTF-8.
    #[error("error body text is not utf-8: valid up to byte {valid_up_to} of the text")]
    NotUtf8 {
        /// How many bytes of the text are valid UTF-8.
        valid_up_to: usize,
    },
}
