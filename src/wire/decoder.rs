//! The streaming decoder: bytes in, frames and per-message errors out, fatal errors as `Err`.

use core::fmt;

use zerocopy::FromBytes;

use super::{
    frame_crc, CanonicalHeader, Header, LegacyHeader, ProtocolVersion, WireError, CRC_OFFSET,
    DEFAULT_MAX_BODY_BYTES, HEADER_LEN, MAGIC, SWAPPED_MAGIC,
};
use crate::wire::Flags;

/// Default [`DecoderConfig::crc_error_limit`]: the spec's "10 in a row closes it".
pub const DEFAULT_CRC_ERROR_LIMIT: u32 = 10;

/// One complete message: its header and its body (`header.length` bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The decoded header.
    pub header: Header,
    /// The body, borrowed from the bytes given to [`Decoder::feed`] when the frame lay wholly
    /// inside them, else from the decoder's buffer. Valid for the callback only.
    pub body: &'a [u8],
}

/// Per-connection decoder settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderConfig {
    /// The largest body accepted; a header announcing more is fatal [`WireError::TooLarge`].
    /// Default [`DEFAULT_MAX_BODY_BYTES`] (1 MiB).
    pub max_body_bytes: u32,
    /// Accept a connection whose first frame is a big-endian legacy v1 frame, and speak v1 on
    /// it from then on. Default `false`: such a frame is fatal
    /// [`WireError::VersionMismatch`] `{ got: 1 }`.
    pub enable_legacy_support: bool,
    /// How many crc32 mismatches in a row close the connection
    /// ([`WireError::TooManyCrcErrors`]); a good frame resets the count. Default
    /// [`DEFAULT_CRC_ERROR_LIMIT`] (10). 0 behaves as 1: the first mismatch is fatal.
    pub crc_error_limit: u32,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            enable_legacy_support: false,
            crc_error_limit: DEFAULT_CRC_ERROR_LIMIT,
        }
    }
}

/// What [`Decoder::feed`] hands to its callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete message whose header and crc checked out.
    Frame(Frame<'a>),
    /// A dropped message: reply with [`encode_error`](super::encode_error) and keep the
    /// connection. `msg_type` and `msg_id` are the header's (for a crc mismatch, possibly the
    /// corrupted values: they are the best the peer can correlate with).
    Error {
        /// The offending message's type.
        msg_type: u16,
        /// The offending message's id.
        msg_id: u64,
        /// Why it was dropped; never fatal.
        error: WireError,
    },
}

/// A streaming, sans-IO frame decoder for one connection. See the [module docs](super).
pub struct Decoder {
    config: DecoderConfig,
    /// The connection's version, fixed by its first accepted header.
    negotiated: Option<ProtocolVersion>,
    /// The frame that arrived in pieces so far: header bytes, then (once `pending` is set)
    /// body bytes. Never more than the header plus `max_body_bytes`; it grows as bytes arrive,
    /// and its capacity is kept between frames only up to [`Decoder::RETAIN_BYTES`].
    buf: Vec<u8>,
    /// The header at the start of `buf` once it is complete and accepted.
    pending: Option<Pending>,
    /// Body bytes of a rejected message still to be skipped (never buffered).
    skip: u32,
    /// crc32 mismatches since the last good frame.
    crc_streak: u32,
    /// Set once a fatal error closed the connection.
    fatal: Option<WireError>,
}

impl Decoder {
    /// The most buffer memory a decoder keeps between frames: a frame larger than this that
    /// arrived in pieces leaves its buffer to be freed once delivered.
    pub const RETAIN_BYTES: usize = 16 * 1024;

    /// A decoder for a fresh connection. Allocates nothing until a frame arrives in pieces.
    pub fn new(config: DecoderConfig) -> Self {
        Decoder {
            config,
            negotiated: None,
            buf: Vec::new(),
            pending: None,
            skip: 0,
            crc_streak: 0,
            fatal: None,
        }
    }

    /// Takes bytes as they arrive: split headers, split bodies, many frames per call.
    ///
    /// Calls `on_event` for every complete frame (zero-copy from `input` when the frame lies
    /// wholly inside it; from the decoder's own buffer only for frames that arrived in pieces)
    /// and for every per-message error. Returns `Err(fatal)` when the connection must be closed
    /// (bad magic, version mismatch or legacy frame without legacy support, oversized length,
    /// too many crc errors in a row); events before the fatal point were delivered, bytes after
    /// it are ignored, and from then on the decoder refuses input with the same error.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<(), WireError> {
        if let Some(error) = self.fatal {
            return Err(error);
        }
        let result = self.feed_inner(input, &mut on_event);
        if let Err(error) = result {
            self.close(error);
        }
        result
    }

    /// Bytes of an incomplete frame held right now. At most the header plus `max_body_bytes`:
    /// the length limit is enforced from the header before any body byte is buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Memory the decoder holds for a frame in pieces (its buffer's capacity): at most about
    /// twice what arrived of the frame, and at most [`RETAIN_BYTES`](Self::RETAIN_BYTES) between
    /// frames.
    pub fn memory(&self) -> usize {
        self.buf.capacity()
    }

    /// Whether a frame is partly received (buffered, or a rejected body still being skipped),
    /// for slow-peer timeouts above this layer.
    pub fn is_mid_frame(&self) -> bool {
        !self.buf.is_empty() || self.skip > 0
    }

    /// The version this connection speaks: V1 once a legacy frame was accepted (replies should
    /// use it), V2 otherwise.
    pub fn version(&self) -> ProtocolVersion {
        self.negotiated.unwrap_or(ProtocolVersion::V2)
    }

    /// The settings this decoder was made with.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The fatal error that closed this connection, if any.
    pub fn fatal_error(&self) -> Option<WireError> {
        self.fatal
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("config", &self.config)
            .field("negotiated", &self.negotiated)
            .field("buffered", &self.buf.len())
            .field("pending", &self.pending)
            .field("skip", &self.skip)
            .field("crc_streak", &self.crc_streak)
            .field("fatal", &self.fatal)
            .finish()
    }
}

/// An accepted header: magic, version and length checked.
#[derive(Clone, Copy, Debug)]
struct Pending {
    header: Header,
    /// 0 for v1, which has no crc.
    crc32: u32,
    /// Set when the message is to be dropped without reading its body (unsupported flags).
    rejected: Option<WireError>,
}

impl Pending {
    fn header_len(&self) -> usize {
        self.header.version.header_len()
    }

    fn frame_len(&self) -> usize {
        self.header_len() + self.header.length as usize
    }
}

/// What the bytes at the start of a frame say so far.
enum Parse {
    /// Too few bytes to decide: wait until `need` bytes (in total) are there.
    Incomplete { need: usize },
    /// The connection must close.
    Fatal(WireError),
    /// A whole, accepted header.
    Ready(Pending),
}

impl Decoder {
    fn feed_inner<F: FnMut(Event<'_>)>(
        &mut self,
        input: &[u8],
        on_event: &mut F,
    ) -> Result<(), WireError> {
        let mut input = self.resume(input, on_event)?;
        // Frames wholly inside `input` are delivered in place; the first one that is not goes
        // to the buffer (header checked first, so only an accepted body is ever buffered).
        while !input.is_empty() {
            let pending = match self.parse(input) {
                Parse::Incomplete { need } => {
                    self.stash(input, need);
                    return Ok(());
                }
                Parse::Fatal(error) => return Err(error),
                Parse::Ready(pending) => pending,
            };
            self.negotiated = Some(pending.header.version);
            let (header, rest) = input.split_at(pending.header_len()); // Ready: whole header
            let length = pending.header.length as usize;
            if let Some(error) = pending.rejected {
                report(&pending, error, on_event);
                if rest.len() < length {
                    self.skip = (length - rest.len()) as u32; // < length, a u32
                    return Ok(());
                }
                input = &rest[length..];
            } else if let Some(body) = rest.get(..length) {
                deliver(
                    &mut self.crc_streak,
                    self.config.crc_error_limit,
                    &pending,
                    header,
                    body,
                    on_event,
                )?;
                input = &rest[length..];
            } else {
                self.pending = Some(pending);
                self.stash(input, pending.frame_len());
                return Ok(());
            }
        }
        Ok(())
    }

    /// Continues the frame that began in an earlier call (skipping or buffering); returns the
    /// input left once it is complete (empty if it is still not).
    #[cold]
    fn resume<'i, F: FnMut(Event<'_>)>(
        &mut self,
        mut input: &'i [u8],
        on_event: &mut F,
    ) -> Result<&'i [u8], WireError> {
        if self.skip > 0 {
            let n = input.len().min(self.skip as usize);
            self.skip -= n as u32; // n <= skip
            return Ok(&input[n..]);
        }
        if self.buf.is_empty() {
            return Ok(input);
        }
        let pending = match self.pending {
            Some(pending) => pending,
            None => loop {
                match self.parse(&self.buf) {
                    Parse::Incomplete { need } => {
                        // Incomplete means need > buf.len().
                        let take = input.len().min(need - self.buf.len());
                        if take == 0 {
                            return Ok(input);
                        }
                        self.stash(&input[..take], need);
                        input = &input[take..];
                    }
                    Parse::Fatal(error) => return Err(error),
                    Parse::Ready(pending) => break pending,
                }
            },
        };
        self.negotiated = Some(pending.header.version);
        if let Some(error) = pending.rejected {
            self.reset_buffer();
            report(&pending, error, on_event);
            let length = pending.header.length as usize;
            let n = input.len().min(length);
            self.skip = (length - n) as u32; // <= length, a u32
            return Ok(&input[n..]);
        }
        let total = pending.frame_len();
        let take = input.len().min(total - self.buf.len());
        self.stash(&input[..take], total);
        input = &input[take..];
        if self.buf.len() < total {
            self.pending = Some(pending);
            return Ok(input);
        }
        self.pending = None;
        let (header, body) = self.buf.split_at(pending.header_len());
        let result = deliver(
            &mut self.crc_streak,
            self.config.crc_error_limit,
            &pending,
            header,
            body,
            on_event,
        );
        self.reset_buffer();
        result.map(|()| input)
    }

    /// Reads a frame's start: magic (from 4 bytes), version (5), then the whole header.
    fn parse(&self, bytes: &[u8]) -> Parse {
        use ProtocolVersion::{V1, V2};
        let Some(magic) = bytes.first_chunk::<4>() else {
            return Parse::Incomplete { need: 4 };
        };
        let version = match (u32::from_le_bytes(*magic), self.negotiated) {
            (MAGIC, Some(V1)) => {
                return Parse::Fatal(WireError::BadMagic(u32::from_be_bytes(*magic)))
            }
            (MAGIC, _) => V2,
            (SWAPPED_MAGIC, Some(V2)) => {
                return Parse::Fatal(WireError::VersionMismatch { got: 1 })
            }
            (SWAPPED_MAGIC, _) if !self.config.enable_legacy_support => {
                return Parse::Fatal(WireError::VersionMismatch { got: 1 })
            }
            (SWAPPED_MAGIC, _) => V1,
            (_, Some(V1)) => return Parse::Fatal(WireError::BadMagic(u32::from_be_bytes(*magic))),
            (other, _) => return Parse::Fatal(WireError::BadMagic(other)),
        };
        let Some(&got) = bytes.get(4) else {
            return Parse::Incomplete { need: version.header_len() };
        };
        if got != version.number() {
            return Parse::Fatal(WireError::VersionMismatch { got });
        }
        let pending = match version {
            V2 => {
                let Ok((h, _)) = CanonicalHeader::read_from_prefix(bytes) else {
                    return Parse::Incomplete { need: HEADER_LEN };
                };
                let flags = h.flags & Flags::UNSUPPORTED_MASK;
                Pending {
                    header: h.header(),
                    crc32: h.crc32.get(),
                    rejected: (flags != 0).then_some(WireError::UnsupportedFlags(h.flags)),
                }
            }
            V1 => {
                let Ok((h, _)) = LegacyHeader::read_from_prefix(bytes) else {
                    return Parse::Incomplete { need: version.header_len() };
                };
                Pending { header: h.header(), crc32: 0, rejected: None }
            }
        };
        let (length, limit) = (pending.header.length, self.config.max_body_bytes);
        if length > limit {
            return Parse::Fatal(WireError::TooLarge { length, limit });
        }
        Parse::Ready(pending)
    }

    /// Appends part of a frame of `total` bytes to the buffer. The buffer grows with the bytes
    /// that arrived (doubling, at least to a header, so a header in pieces allocates once),
    /// never past `total`: a header that announces a large body costs nothing until the body
    /// comes.
    fn stash(&mut self, bytes: &[u8], total: usize) {
        let need = self.buf.len() + bytes.len();
        debug_assert!(need <= total);
        if need > self.buf.capacity() {
            let target = need.max(2 * self.buf.capacity()).max(HEADER_LEN).min(total.max(need));
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Empties the buffer after a frame; frees it if a large frame grew it past
    /// [`RETAIN_BYTES`](Self::RETAIN_BYTES), so memory goes back down after a large message.
    fn reset_buffer(&mut self) {
        if self.buf.capacity() > Self::RETAIN_BYTES {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }

    /// The buffer's address and capacity, for the tests' no-reallocation checks.
    #[cfg(test)]
    pub(super) fn allocation(&self) -> (*const u8, usize) {
        (self.buf.as_ptr(), self.buf.capacity())
    }

    #[cold]
    fn close(&mut self, error: WireError) {
        self.fatal = Some(error);
        self.buf = Vec::new();
        self.pending = None;
        self.skip = 0;
    }
}

/// Checks a whole frame's crc and hands out the frame or the mismatch.
fn deliver<F: FnMut(Event<'_>)>(
    crc_streak: &mut u32,
    crc_error_limit: u32,
    pending: &Pending,
    header: &[u8],
    body: &[u8],
    on_event: &mut F,
) -> Result<(), WireError> {
    if pending.header.version == ProtocolVersion::V2 {
        let expected = frame_crc(&header[..CRC_OFFSET], body);
        if expected != pending.crc32 {
            *crc_streak = crc_streak.saturating_add(1);
            if *crc_streak >= crc_error_limit {
                return Err(WireError::TooManyCrcErrors { limit: crc_error_limit });
            }
            let got = pending.crc32;
            report(pending, WireError::Crc { expected, got }, on_event);
            return Ok(());
        }
    }
    *crc_streak = 0;
    on_event(Event::Frame(Frame { header: pending.header, body }));
    Ok(())
}

fn report<F: FnMut(Event<'_>)>(pending: &Pending, error: WireError, on_event: &mut F) {
    on_event(Event::Error {
        msg_type: pending.header.msg_type,
        msg_id: pending.header.msg_id,
        error,
    });
}
