//! The daemon side of one control connection, sans-IO.
//!
//! A [`Session`] owns a wire [`Decoder`] and an output buffer. The I/O layer (the reactor) hands it
//! the bytes it read with [`Session::on_bytes`], writes what [`Session::output`] holds and reports
//! how much went out with [`Session::consume_output`], and calls [`Session::on_tick`] at
//! [`Session::poll_timeout`] or on its own timer. Time comes in as `now` on every call, so tests
//! drive a session with a fake clock (`Instant + Duration`), without sleeps or sockets
//! (the quinn-proto style; STYLE.md 11).
//!
//! What a session answers, in the order requests arrive:
//! - a ping ([`MSG_PING`]) gets a [`Pong`] echoing the client's time, with the [`Handler`]'s
//!   clock (the protocol's own liveness probe, answered by the session itself);
//! - any other request goes to [`Handler::request`] (the control agent's table of routes,
//!   [`super::route`]): answered at once ([`Answer::Respond`], [`Answer::Error`]), or later
//!   ([`Answer::Later`]: the reply, and any pushes of a subscription, arrive through
//!   [`Session::deliver`]);
//! - a `msg_type` no route takes: an error reply `unknown message type N`; the connection
//!   stays open;
//! - a body that is not the request's protobuf message: an error reply with
//!   [`CODE_BAD_REQUEST_BODY`] and `bad request body: ...`; the connection stays open;
//! - a per-message wire error (crc mismatch, reserved flags): its error reply; the connection stays
//!   open (the decoder closes it after `crc_error_limit` crc errors in a row);
//! - any request while the service is over its budget of buffered bytes
//!   ([`Handler::over_budget`]): an error reply with [`CODE_BUSY`] and
//!   `daemon busy: buffered bytes over budget (N > M)` ([`OverBudget`]) instead of its answer,
//!   counted as [`KIND_OVER_BUDGET`]; the connection stays open;
//! - a fatal wire error (bad magic, version mismatch, message too large, too many crc errors):
//!   one error reply with `msg_type` 0 and `msg_id` 0 (the failed frame's fields cannot be
//!   trusted), in the connection's version (v1 for a peer that sent a legacy header), then
//!   [`Verdict::Close`].
//!
//! Every error is counted by [`WireError::kind`] (or `bad_request_body`, `over_budget`) in
//! [`Session::error_counts`] and reported to [`Handler::on_error`] for the metrics.
//!
//! Defences: a partial frame pending longer than [`SessionConfig::header_timeout`] closes the
//! connection (slow loris: a header sent one byte per second); so does silence longer than
//! [`SessionConfig::idle_timeout`], and unsent output above [`SessionConfig::max_pending_output`]
//! (a peer that sends requests but does not read the answers). [`Session::close_cause`] says
//! which ended it.
//!
//! Memory: the decoder buffers only a frame that arrives in pieces, growing with its bytes
//! ([`Decoder::memory`]); the output buffer and the body scratch are reused between replies up
//! to [`Session::RETAIN_BYTES`] and freed once a larger reply is written. An I/O layer that can
//! send an owned buffer takes a large output with [`Session::take_output`] instead of copying
//! it, so a large reply exists once, in the kernel's hands.

use std::time::{Duration, Instant};

use prost::Message;

use super::proto::{Ping, Pong};
use super::route::{ReplyKind, RouteError};
use super::{CODE_BAD_REQUEST_BODY, CODE_BUSY, MSG_PING};
use crate::wire::{self, Decoder, DecoderConfig, Event, Flags, Frame, ProtocolVersion, WireError};

/// Metric kind of a request whose body does not decode as the request's protobuf message.
pub const KIND_BAD_REQUEST_BODY: &str = "bad_request_body";

/// Metric kind of a request refused because the service was over its budget of buffered bytes.
pub const KIND_OVER_BUDGET: &str = "over_budget";

/// The service holds more buffered bytes (unsent replies, partial requests) than its budget:
/// requests are refused with this error until it is back under. The Display text is what the
/// error reply carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("daemon busy: buffered bytes over budget ({buffered} > {budget})")]
pub struct OverBudget {
    /// Bytes buffered by the service when the request arrived.
    pub buffered: u64,
    /// The budget (`control.max_buffered_bytes`).
    pub budget: u64,
}

/// Why a session said [`Verdict::Close`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// A fatal wire error (bad magic, version mismatch, too large, too many crc errors).
    Protocol,
    /// A frame stayed incomplete past [`SessionConfig::header_timeout`].
    HeaderTimeout,
    /// No input for [`SessionConfig::idle_timeout`].
    IdleTimeout,
    /// The session's own unsent output went over [`SessionConfig::max_pending_output`].
    Backlog,
}

/// What a request gets from [`Handler::request`].
#[derive(Debug)]
pub enum Answer {
    /// The response body (protobuf) is in the `reply` buffer.
    Respond,
    /// Refused: an error reply.
    Error(RouteError),
    /// Handed on: the reply comes later, through [`Session::deliver`].
    Later,
    /// No route takes this `msg_type`.
    Unknown,
}

/// A request as the session hands it to the handler.
#[derive(Clone, Copy, Debug)]
pub struct RequestRef<'a> {
    /// The request's `msg_type`.
    pub msg_type: u16,
    /// Its `msg_id`.
    pub msg_id: u64,
    /// Its protobuf body.
    pub body: &'a [u8],
}

/// What the daemon supplies to answer requests. One handler may serve many sessions.
pub trait Handler {
    /// The daemon's clock in nanoseconds, sent back in [`Pong::server_time_ns`].
    fn now_ns(&self) -> u64;
    /// A request other than ping: answer it into `reply` (empty on entry), refuse it, or hand
    /// it on. The default routes nothing.
    fn request(&mut self, request: RequestRef<'_>, reply: &mut Vec<u8>) -> Answer {
        let _ = (request, reply);
        Answer::Unknown
    }
    /// Called once per error answered or fatal error seen, with its metric kind
    /// ([`WireError::kind`], or [`KIND_BAD_REQUEST_BODY`]). The default does nothing.
    fn on_error(&mut self, kind: &'static str) {
        let _ = kind;
    }
    /// Called once per request answered successfully, with its message type (for request
    /// counters). The default does nothing.
    fn on_answered(&mut self, msg_type: u16) {
        let _ = msg_type;
    }
    /// Whether the service is over its budget of buffered bytes, asked before each request is
    /// answered: `Some` refuses the request with that error. The default: never.
    fn over_budget(&self) -> Option<OverBudget> {
        None
    }
}

/// Limits of one control session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Wire decoder settings: body size limit, legacy v1 support, crc error limit.
    pub decoder: DecoderConfig,
    /// Longest time a partial frame may stay incomplete before the connection is closed.
    pub header_timeout: Duration,
    /// Longest silence (no bytes received) before the connection is closed; `None` keeps idle
    /// connections open.
    pub idle_timeout: Option<Duration>,
    /// Most unsent output bytes tolerated; above it the peer is not reading and is closed.
    pub max_pending_output: usize,
}

impl Default for SessionConfig {
    /// Default decoder, 5 s header timeout, 300 s idle timeout, 4 MiB of pending output (the
    /// defaults of `config/corelane.toml`).
    fn default() -> Self {
        Self {
            decoder: DecoderConfig::default(),
            header_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(300)),
            max_pending_output: 4 << 20,
        }
    }
}

/// What the I/O layer does with the connection after a call.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the connection; write whatever [`Session::output`] holds.
    Continue,
    /// Write what [`Session::output`] holds if the peer takes it, then close the connection.
    Close,
}

/// One control connection's protocol state, driven by bytes in and `now`.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    decoder: Decoder,
    replies: Replies,
    /// Bytes of `replies.out` already written by the I/O layer.
    sent: usize,
    /// When the last bytes arrived.
    last_input: Instant,
    /// When the frame that is still incomplete started arriving.
    partial_since: Option<Instant>,
    /// Set with the first [`Verdict::Close`].
    closed: Option<CloseCause>,
}

impl Session {
    /// A session for a connection accepted at `now`.
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        let decoder = Decoder::new(config.decoder);
        Self {
            config,
            decoder,
            replies: Replies::default(),
            sent: 0,
            last_input: now,
            partial_since: None,
            closed: None,
        }
    }

    /// The most capacity the output buffer and the body scratch keep between replies: a larger
    /// one, grown for a large reply, is freed once the reply is written or taken.
    pub const RETAIN_BYTES: usize = 16 * 1024;

    /// Feeds bytes read from the peer at `now`: answers every complete request into the output
    /// buffer, in order, and says whether to keep the connection.
    pub fn on_bytes(&mut self, input: &[u8], now: Instant, handler: &mut impl Handler) -> Verdict {
        if self.closed.is_some() {
            return Verdict::Close;
        }
        self.last_input = now;
        self.compact_output();
        let mut frames = 0usize;
        let replies = &mut self.replies;
        let fed = self.decoder.feed(input, |event| {
            frames += 1;
            match event {
                Event::Frame(frame) => replies.answer(&frame, handler),
                Event::Error { msg_type, msg_id, error } => {
                    replies.error(version_of(&error, None), msg_type, msg_id, &error, handler)
                }
            }
        });
        if let Err(error) = fed {
            tracing::debug!(%error, "control session: fatal wire error, closing");
            let version = version_of(&error, Some(self.decoder.version()));
            // The frame that failed cannot be trusted for its type or id: answer with zeros
            // (msg_id 0: a connection-level error, which a client applies to its request in
            // flight).
            self.replies.error(version, 0, 0, &error, handler);
            return self.close(CloseCause::Protocol);
        }
        if !self.decoder.is_mid_frame() {
            self.partial_since = None;
        } else if frames > 0 || self.partial_since.is_none() {
            // A new frame began in this input (after any that completed): its clock starts now.
            self.partial_since = Some(now);
        }
        self.check_output()
    }

    /// Checks the timers at `now`: a partial frame pending longer than
    /// [`SessionConfig::header_timeout`], or no input for longer than
    /// [`SessionConfig::idle_timeout`], closes the connection.
    pub fn on_tick(&mut self, now: Instant) -> Verdict {
        if self.closed.is_some() {
            return Verdict::Close;
        }
        if let Some(since) = self.partial_since {
            if now.saturating_duration_since(since) > self.config.header_timeout {
                tracing::debug!("control session: partial frame past the header timeout, closing");
                return self.close(CloseCause::HeaderTimeout);
            }
        }
        if let Some(idle) = self.config.idle_timeout {
            if now.saturating_duration_since(self.last_input) > idle {
                tracing::debug!("control session: idle timeout, closing");
                return self.close(CloseCause::IdleTimeout);
            }
        }
        self.check_output()
    }

    /// The earliest instant at which [`Session::on_tick`] may close the connection, if any timer
    /// runs; the I/O layer can sleep until just after it.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let header = self.partial_since.map(|s| s + self.config.header_timeout);
        let idle = self.config.idle_timeout.map(|t| self.last_input + t);
        match (header, idle) {
            (Some(h), Some(i)) => Some(h.min(i)),
            (h, i) => h.or(i),
        }
    }

    /// Encoded replies not yet written to the peer.
    pub fn output(&self) -> &[u8] {
        &self.replies.out[self.sent..]
    }

    /// Marks the first `n` bytes of [`Session::output`] as written.
    ///
    /// # Panics
    /// If `n` exceeds `output().len()`: the I/O layer cannot have written bytes it was not given.
    pub fn consume_output(&mut self, n: usize) {
        assert!(
            n <= self.output().len(),
            "consume_output: expected at most {} bytes, got {n}",
            self.output().len()
        );
        self.sent += n;
        if self.sent == self.replies.out.len() {
            // Everything is out: rewind, keeping the allocation unless a large reply grew it.
            self.sent = 0;
            if self.replies.out.capacity() > Self::RETAIN_BYTES {
                self.replies.out = Vec::new();
            } else {
                self.replies.out.clear();
            }
        }
    }

    /// The unsent output as an owned buffer, for a send that hands it over without a copy
    /// (`Reactor::send_owned`): what [`output`](Self::output) then
    /// [`consume_output`](Self::consume_output) of all of it do, minus the copy. The session
    /// starts a new, empty buffer.
    pub fn take_output(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.replies.out);
        if self.sent > 0 {
            // Only after a partial consume_output: the written prefix goes.
            out.drain(..self.sent);
            self.sent = 0;
        }
        out
    }

    /// Bytes the session buffers now: the partial frame in its decoder and the unsent output
    /// (for a budget of buffered bytes; [`memory`](Self::memory) is the capacity held).
    pub fn buffered(&self) -> usize {
        self.decoder.buffered() + self.output().len()
    }

    /// Memory the session holds for buffers (capacities): the decoder's partial frame, the
    /// unsent output and the reply body scratch.
    pub fn memory(&self) -> usize {
        self.decoder.memory() + self.replies.out.capacity() + self.replies.body.capacity()
    }

    /// Errors answered or seen so far, by metric kind, in order of first occurrence.
    pub fn error_counts(&self) -> &[(&'static str, u64)] {
        &self.replies.error_counts
    }

    /// Whether the session has returned [`Verdict::Close`]; it answers nothing more.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Why the session returned [`Verdict::Close`], once it has.
    pub fn close_cause(&self) -> Option<CloseCause> {
        self.closed
    }

    /// The protocol version of the connection as the decoder sees it (v1 for a legacy peer).
    pub fn version(&self) -> ProtocolVersion {
        self.decoder.version()
    }

    /// A reply that comes later (a request [`Answer::Later`] handed on), or a push of a
    /// subscription: encoded in the connection's version into the output, which is then
    /// checked against [`SessionConfig::max_pending_output`] like any other reply.
    pub fn deliver(
        &mut self,
        msg_type: u16,
        msg_id: u64,
        kind: ReplyKind,
        body: &[u8],
        handler: &mut impl Handler,
    ) -> Verdict {
        if self.closed.is_some() {
            return Verdict::Close;
        }
        self.compact_output();
        let version = self.decoder.version();
        match kind {
            ReplyKind::Response | ReplyKind::Push => {
                wire::encode(
                    version,
                    msg_type,
                    Flags::RESPONSE,
                    msg_id,
                    body,
                    &mut self.replies.out,
                );
                if kind == ReplyKind::Response {
                    handler.on_answered(msg_type);
                }
            }
            ReplyKind::Error(code) => {
                let text = String::from_utf8_lossy(body);
                self.replies.error_reply(version, msg_type, msg_id, code, &text);
            }
        }
        self.check_output()
    }

    fn check_output(&mut self) -> Verdict {
        let pending = self.output().len();
        if pending > self.config.max_pending_output {
            tracing::debug!(
                pending,
                limit = self.config.max_pending_output,
                "control session: peer does not read, closing"
            );
            return self.close(CloseCause::Backlog);
        }
        Verdict::Continue
    }

    fn close(&mut self, cause: CloseCause) -> Verdict {
        self.closed.get_or_insert(cause);
        Verdict::Close
    }

    /// Drops the already written prefix before appending once it is at least half the buffer,
    /// so the buffer does not creep forward and each byte is moved at most about once.
    fn compact_output(&mut self) {
        if self.sent > 0 && 2 * self.sent >= self.replies.out.len() {
            self.replies.out.drain(..self.sent);
            self.sent = 0;
        }
    }
}

/// The version to answer an error in: a byte-swapped (legacy v1) magic gets a v1 reply, the only
/// header such a peer reads; otherwise the connection's version, or v2 when unknown.
fn version_of(error: &WireError, connection: Option<ProtocolVersion>) -> ProtocolVersion {
    match error {
        WireError::VersionMismatch { got: 1 } => ProtocolVersion::V1,
        _ => connection.unwrap_or(ProtocolVersion::V2),
    }
}

/// Reply encoding state, split from the decoder so the decoder's callback can borrow it.
#[derive(Debug, Default)]
struct Replies {
    /// Encoded replies; reused across messages.
    out: Vec<u8>,
    /// Protobuf body scratch; reused across messages.
    body: Vec<u8>,
    error_counts: Vec<(&'static str, u64)>,
}

impl Replies {
    fn answer(&mut self, frame: &Frame<'_>, handler: &mut impl Handler) {
        let h = &frame.header;
        if h.flags.contains(Flags::RESPONSE) {
            // A response sent to the daemon answers nothing; replying could start a loop.
            tracing::debug!(msg_id = h.msg_id, "control session: dropping a response frame");
            return;
        }
        let (version, msg_type, msg_id) = (h.version, h.msg_type, h.msg_id);
        if let Some(busy) = handler.over_budget() {
            self.busy(version, msg_type, msg_id, busy, handler);
            return;
        }
        match msg_type {
            MSG_PING => match Ping::decode(frame.body) {
                Ok(ping) => {
                    let pong = Pong {
                        client_time_ns: ping.client_time_ns,
                        server_time_ns: handler.now_ns(),
                    };
                    self.respond(version, msg_type, msg_id, &pong, handler);
                }
                Err(e) => self.bad_body(version, msg_type, msg_id, &e, handler),
            },
            _ => {
                self.body.clear();
                let request = RequestRef { msg_type, msg_id, body: frame.body };
                match handler.request(request, &mut self.body) {
                    Answer::Respond => self.respond_body(version, msg_type, msg_id, handler),
                    Answer::Error(RouteError::BadBody(e)) => {
                        self.bad_body(version, msg_type, msg_id, &e, handler)
                    }
                    Answer::Error(RouteError::Other { code, text }) => {
                        self.error_reply(version, msg_type, msg_id, code, &text)
                    }
                    Answer::Later => {}
                    Answer::Unknown => {
                        let error = WireError::UnknownMsgType(msg_type);
                        self.error(version, msg_type, msg_id, &error, handler);
                    }
                }
            }
        }
    }

    /// A response whose body the handler wrote into `self.body`.
    fn respond_body(
        &mut self,
        version: ProtocolVersion,
        msg_type: u16,
        msg_id: u64,
        handler: &mut impl Handler,
    ) {
        wire::encode(version, msg_type, Flags::RESPONSE, msg_id, &self.body, &mut self.out);
        if self.body.capacity() > Session::RETAIN_BYTES {
            self.body = Vec::new();
        }
        handler.on_answered(msg_type);
    }

    /// An error reply with `code` and `text`.
    fn error_reply(
        &mut self,
        version: ProtocolVersion,
        msg_type: u16,
        msg_id: u64,
        code: u16,
        text: &str,
    ) {
        self.body.clear();
        error_body(code, text, &mut self.body);
        wire::encode(
            version,
            msg_type,
            Flags::RESPONSE.union(Flags::ERROR),
            msg_id,
            &self.body,
            &mut self.out,
        );
    }

    fn respond(
        &mut self,
        version: ProtocolVersion,
        msg_type: u16,
        msg_id: u64,
        msg: &impl Message,
        handler: &mut impl Handler,
    ) {
        encode_body(msg, &mut self.body);
        wire::encode(version, msg_type, Flags::RESPONSE, msg_id, &self.body, &mut self.out);
        if self.body.capacity() > Session::RETAIN_BYTES {
            // A large reply's body is in `out` now; its scratch goes.
            self.body = Vec::new();
        }
        handler.on_answered(msg_type);
    }

    /// Refuses a request: the service is over its budget of buffered bytes.
    #[cold]
    fn busy(
        &mut self,
        version: ProtocolVersion,
        msg_type: u16,
        msg_id: u64,
        busy: OverBudget,
        handler: &mut impl Handler,
    ) {
        use std::io::Write;
        self.count(KIND_OVER_BUDGET, handler);
        self.body.clear();
        self.body.extend_from_slice(&CODE_BUSY.to_le_bytes());
        // Writing into a Vec<u8> cannot fail.
        let _ = write!(self.body, "{busy}");
        wire::encode(
            version,
            msg_type,
            Flags::RESPONSE.union(Flags::ERROR),
            msg_id,
            &self.body,
            &mut self.out,
        );
    }

    fn error(
        &mut self,
        version: ProtocolVersion,
        msg_type: u16,
        msg_id: u64,
        error: &WireError,
        handler: &mut impl Handler,
    ) {
        self.count(error.kind(), handler);
        wire::encode_error(version, msg_type, msg_id, error, &mut self.out);
    }

    #[cold]
    fn bad_body(
        &mut self,
        version: ProtocolVersion,
        msg_type: u16,
        msg_id: u64,
        error: &prost::DecodeError,
        handler: &mut impl Handler,
    ) {
        self.count(KIND_BAD_REQUEST_BODY, handler);
        let text = format!("bad request body: {error}");
        self.body.clear();
        error_body(CODE_BAD_REQUEST_BODY, &text, &mut self.body);
        wire::encode(
            version,
            msg_type,
            Flags::RESPONSE.union(Flags::ERROR),
            msg_id,
            &self.body,
            &mut self.out,
        );
    }

    fn count(&mut self, kind: &'static str, handler: &mut impl Handler) {
        handler.on_error(kind);
        match self.error_counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.error_counts.push((kind, 1)),
        }
    }
}

/// Encodes `msg` into `buf`, replacing its contents and keeping its allocation.
pub(crate) fn encode_body(msg: &impl Message, buf: &mut Vec<u8>) {
    buf.clear();
    // A Vec<u8> grows on demand, so encoding into it cannot run out of room.
    msg.encode(buf).expect("encoding into a Vec<u8> cannot run out of capacity");
}

/// Appends an error reply body (code and text) in the layout [`wire::decode_error_body`] reads.
fn error_body(code: u16, text: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::{
        ConfigReply, ConfigRequest, LaneStatus, ServiceStatus, Status, StatusRequest,
    };
    use crate::control::route::answer;
    use crate::control::{MSG_CONFIG, MSG_STATUS};
    use crate::wire::{decode_error_body, Header, MAGIC};

    /// Handler with a frozen clock, so replies are byte-for-byte reproducible.
    #[derive(Default)]
    struct TestHandler {
        errors: Vec<&'static str>,
        /// The config text, if not the small default.
        toml: Option<String>,
        /// What `over_budget` says.
        busy: Option<OverBudget>,
    }

    const SERVER_NS: u64 = 42_000;

    fn sample_status() -> Status {
        Status {
            version: "0.1.0".to_owned(),
            uptime_ms: 1234,
            reactor: "epoll".to_owned(),
            lanes: vec![LaneStatus {
                name: "lane0".to_owned(),
                core: -1,
                idle: "spin".to_owned(),
                agents: vec!["control".to_owned(), "alloc".to_owned()],
                passes: 10,
                work: 7,
                idle_ns: 99,
                max_pass_ns: 500,
                p99_pass_ns: 300,
            }],
            services: vec![ServiceStatus {
                name: "control".to_owned(),
                state: "running".to_owned(),
                details: vec![],
            }],
            connections: 1,
        }
    }

    impl Handler for TestHandler {
        fn now_ns(&self) -> u64 {
            SERVER_NS
        }
        fn request(&mut self, request: RequestRef<'_>, reply: &mut Vec<u8>) -> Answer {
            let answered = match request.msg_type {
                MSG_STATUS => answer(request.body, reply, |_: StatusRequest| sample_status()),
                MSG_CONFIG => answer(request.body, reply, |_: ConfigRequest| ConfigReply {
                    toml: self
                        .toml
                        .clone()
                        .unwrap_or_else(|| "[control]\nsocket = \"/tmp/x\"\n".to_owned()),
                }),
                _ => return Answer::Unknown,
            };
            answered.map_or_else(Answer::Error, |()| Answer::Respond)
        }
        fn on_error(&mut self, kind: &'static str) {
            self.errors.push(kind);
        }
        fn over_budget(&self) -> Option<OverBudget> {
            self.busy
        }
    }

    /// A reply as the client side decodes it.
    #[derive(Debug)]
    struct Reply {
        header: Header,
        body: Vec<u8>,
    }

    impl Reply {
        fn error(&self) -> (u16, String) {
            assert!(
                self.header.version == ProtocolVersion::V1
                    || self.header.flags == Flags::RESPONSE.union(Flags::ERROR),
                "{self:?}"
            );
            let (code, text) = decode_error_body(&self.body).unwrap();
            (code, text.to_owned())
        }

        fn ok<M: Message + Default>(&self) -> M {
            assert_eq!(self.header.flags, Flags::RESPONSE, "{self:?}");
            M::decode(&self.body[..]).unwrap()
        }
    }

    fn config() -> SessionConfig {
        SessionConfig {
            decoder: DecoderConfig::default(),
            header_timeout: Duration::from_secs(5),
            idle_timeout: None,
            max_pending_output: 1 << 20,
        }
    }

    fn legacy_config() -> SessionConfig {
        let mut c = config();
        c.decoder.enable_legacy_support = true;
        c
    }

    fn request(
        version: ProtocolVersion,
        msg_type: u16,
        msg_id: u64,
        msg: &impl Message,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        wire::encode(version, msg_type, Flags::EMPTY, msg_id, &msg.encode_to_vec(), &mut out);
        out
    }

    fn ping(msg_id: u64) -> Vec<u8> {
        request(ProtocolVersion::V2, MSG_PING, msg_id, &Ping { client_time_ns: msg_id * 10 })
    }

    /// Decodes everything the session has queued, as a client would, and consumes it.
    fn drain(session: &mut Session) -> Vec<Reply> {
        let mut client =
            Decoder::new(DecoderConfig { enable_legacy_support: true, ..DecoderConfig::default() });
        let mut replies = Vec::new();
        client
            .feed(session.output(), |event| match event {
                Event::Frame(f) => replies.push(Reply { header: f.header, body: f.body.to_vec() }),
                Event::Error { error, .. } => panic!("client saw {error}"),
            })
            .unwrap();
        assert!(!client.is_mid_frame(), "a reply is cut short");
        let n = session.output().len();
        session.consume_output(n);
        replies
    }

    #[test]
    fn ping_status_and_config_round_trip() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();

        assert_eq!(s.on_bytes(&ping(7), t0, &mut h), Verdict::Continue);
        let r = drain(&mut s);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].header.msg_type, r[0].header.msg_id), (MSG_PING, 7));
        assert_eq!(r[0].header.version, ProtocolVersion::V2);
        assert_eq!(r[0].ok::<Pong>(), Pong { client_time_ns: 70, server_time_ns: SERVER_NS });

        let req = request(ProtocolVersion::V2, MSG_STATUS, 8, &StatusRequest {});
        assert_eq!(s.on_bytes(&req, t0, &mut h), Verdict::Continue);
        let r = drain(&mut s);
        assert_eq!((r[0].header.msg_type, r[0].header.msg_id), (MSG_STATUS, 8));
        assert_eq!(r[0].ok::<Status>(), sample_status());

        let req = request(ProtocolVersion::V2, MSG_CONFIG, 9, &ConfigRequest {});
        assert_eq!(s.on_bytes(&req, t0, &mut h), Verdict::Continue);
        let r = drain(&mut s);
        assert_eq!((r[0].header.msg_type, r[0].header.msg_id), (MSG_CONFIG, 9));
        assert_eq!(r[0].ok::<ConfigReply>().toml, "[control]\nsocket = \"/tmp/x\"\n");

        assert!(s.error_counts().is_empty());
        assert!(h.errors.is_empty());
        assert!(s.output().is_empty());
    }

    #[test]
    fn garbage_gets_bad_magic_and_close() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();
        let garbage = b"GET / HTTP/1.1\r\nHost: corelane\r\n\r\n";
        assert_eq!(s.on_bytes(garbage, t0, &mut h), Verdict::Close);
        let r = drain(&mut s);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].header.version, ProtocolVersion::V2);
        assert_eq!(r[0].error(), (1, "bad magic 0x20544547".to_owned()));
        assert_eq!(s.error_counts(), &[("bad_magic", 1)]);
        assert_eq!(h.errors, ["bad_magic"]);
        // Closed: nothing more is answered.
        assert_eq!(s.on_bytes(&ping(1), t0, &mut h), Verdict::Close);
        assert!(s.output().is_empty());
        assert!(s.is_closed());
    }

    #[test]
    fn legacy_client_without_legacy_support_gets_mismatch_and_close() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();
        let req = request(ProtocolVersion::V1, MSG_PING, 3, &Ping { client_time_ns: 1 });
        assert_eq!(&req[..4], &MAGIC.to_be_bytes(), "the byte-swapped magic");
        assert_eq!(s.on_bytes(&req, t0, &mut h), Verdict::Close);
        let r = drain(&mut s);
        assert_eq!(r.len(), 1);
        // Answered in v1: the only header a legacy client can read.
        assert_eq!(r[0].header.version, ProtocolVersion::V1);
        assert_eq!(r[0].error(), (2, "protocol version mismatch: expected 2, got 1".to_owned()));
        assert_eq!(h.errors, ["version_mismatch"]);
    }

    #[test]
    fn other_version_gets_mismatch_and_close() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();
        let mut req = ping(1);
        req[4] = 3;
        assert_eq!(s.on_bytes(&req, t0, &mut h), Verdict::Close);
        let r = drain(&mut s);
        assert_eq!(r[0].header.version, ProtocolVersion::V2);
        assert_eq!(r[0].error(), (2, "protocol version mismatch: expected 2, got 3".to_owned()));
    }

    #[test]
    fn legacy_support_answers_in_v1() {
        let t0 = Instant::now();
        let mut s = Session::new(legacy_config(), t0);
        let mut h = TestHandler::default();
        let req = request(ProtocolVersion::V1, MSG_PING, 3, &Ping { client_time_ns: 5 });
        assert_eq!(s.on_bytes(&req, t0, &mut h), Verdict::Continue);
        assert_eq!(s.version(), ProtocolVersion::V1);
        let r = drain(&mut s);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].header.version, ProtocolVersion::V1);
        assert_eq!((r[0].header.msg_type, r[0].header.msg_id), (MSG_PING, 3));
        let pong = Pong::decode(&r[0].body[..]).unwrap();
        assert_eq!(pong.client_time_ns, 5);

        // Errors go back in v1 too.
        let req = request(ProtocolVersion::V1, 77, 4, &Ping::default());
        assert_eq!(s.on_bytes(&req, t0, &mut h), Verdict::Continue);
        let r = drain(&mut s);
        assert_eq!(r[0].header.version, ProtocolVersion::V1);
        assert_eq!(r[0].error(), (5, "unknown message type 77".to_owned()));
    }

    #[test]
    fn oversized_length_gets_too_large_and_close() {
        let t0 = Instant::now();
        let mut c = config();
        c.decoder.max_body_bytes = 64;
        let mut s = Session::new(c, t0);
        let mut h = TestHandler::default();
        let mut req = Vec::new();
        wire::encode(ProtocolVersion::V2, MSG_PING, Flags::EMPTY, 1, &[0; 100], &mut req);
        // Only the header is needed to refuse it.
        assert_eq!(s.on_bytes(&req[..24], t0, &mut h), Verdict::Close);
        let r = drain(&mut s);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].error(), (4, "message too large: 100 > 64".to_owned()));
        assert_eq!(s.error_counts(), &[("too_large", 1)]);
    }

    fn corrupt(mut frame: Vec<u8>) -> Vec<u8> {
        let last = frame.len() - 1;
        frame[last] ^= 0xff;
        frame
    }

    #[test]
    fn crc_error_is_answered_and_the_connection_kept() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();
        let bad = corrupt(ping(5));
        assert_eq!(s.on_bytes(&bad, t0, &mut h), Verdict::Continue);
        let r = drain(&mut s);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].header.msg_id, 5);
        let (code, text) = r[0].error();
        assert_eq!(code, 3);
        assert!(text.starts_with("crc32 mismatch: expected 0x"), "{text}");

        // The connection still works.
        assert_eq!(s.on_bytes(&ping(6), t0, &mut h), Verdict::Continue);
        let r = drain(&mut s);
        assert_eq!(r[0].ok::<Pong>().client_time_ns, 60);
        assert_eq!(s.error_counts(), &[("crc", 1)]);
    }

    #[test]
    fn ten_crc_errors_in_a_row_close() {
        let t0 = Instant::now();
        let mut c = config();
        c.decoder.crc_error_limit = 10;
        let mut s = Session::new(c, t0);
        let mut h = TestHandler::default();
        for id in 1..10 {
            assert_eq!(s.on_bytes(&corrupt(ping(id)), t0, &mut h), Verdict::Continue, "{id}");
        }
        assert_eq!(drain(&mut s).len(), 9);
        assert_eq!(s.on_bytes(&corrupt(ping(10)), t0, &mut h), Verdict::Close);
        let r = drain(&mut s);
        let last = r.last().unwrap().error();
        assert_eq!(last.0, 7);
        assert_eq!(last.1, WireError::TooManyCrcErrors { limit: 10 }.to_string());
        assert!(h.errors.contains(&"too_many_crc_errors"));
    }

    #[test]
    fn unknown_type_is_answered_and_the_connection_kept() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();
        let req = request(ProtocolVersion::V2, 99, 11, &Ping::default());
        assert_eq!(s.on_bytes(&req, t0, &mut h), Verdict::Continue);
        let r = drain(&mut s);
        assert_eq!((r[0].header.msg_type, r[0].header.msg_id), (99, 11));
        assert_eq!(r[0].error(), (5, "unknown message type 99".to_owned()));
        assert_eq!(s.on_bytes(&ping(12), t0, &mut h), Verdict::Continue);
        assert_eq!(drain(&mut s)[0].ok::<Pong>().client_time_ns, 120);
        assert_eq!(s.error_counts(), &[("unknown_msg_type", 1)]);
    }

    #[test]
    fn undecodable_body_is_answered_and_the_connection_kept() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();
        let mut req = Vec::new();
        // Field 1 as a varint, then the end of input: a truncated varint.
        wire::encode(ProtocolVersion::V2, MSG_PING, Flags::EMPTY, 4, &[0x08, 0xff], &mut req);
        assert_eq!(s.on_bytes(&req, t0, &mut h), Verdict::Continue);
        let r = drain(&mut s);
        let (code, text) = r[0].error();
        assert_eq!(code, CODE_BAD_REQUEST_BODY);
        assert!(text.starts_with("bad request body: "), "{text}");
        assert_eq!(s.error_counts(), &[(KIND_BAD_REQUEST_BODY, 1)]);
        assert_eq!(s.on_bytes(&ping(5), t0, &mut h), Verdict::Continue);
        assert_eq!(drain(&mut s)[0].ok::<Pong>().client_time_ns, 50);
    }

    #[test]
    fn reserved_flags_are_answered_and_the_message_dropped() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();
        let mut req = Vec::new();
        wire::encode(ProtocolVersion::V2, MSG_PING, Flags(0x20), 6, &[], &mut req);
        assert_eq!(s.on_bytes(&req, t0, &mut h), Verdict::Continue);
        let r = drain(&mut s);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].error(), (6, "unsupported flags 0x20".to_owned()));
    }

    #[test]
    fn slow_header_closes_after_header_timeout_and_not_before() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();
        let req = ping(1);
        let sec = Duration::from_secs(1);
        // One byte per second: the frame starts at t0 and is still partial at t0 + 5 s.
        for (i, byte) in req[..6].iter().enumerate() {
            let now = t0 + sec * u32::try_from(i).unwrap();
            assert_eq!(s.on_bytes(&[*byte], now, &mut h), Verdict::Continue);
            assert_eq!(s.on_tick(now), Verdict::Continue, "byte {i}");
        }
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(s.on_tick(t0 + Duration::from_secs(5)), Verdict::Continue);
        assert_eq!(
            s.on_tick(t0 + Duration::from_secs(5) + Duration::from_millis(1)),
            Verdict::Close
        );
        assert!(s.output().is_empty());
    }

    #[test]
    fn header_timer_restarts_with_each_frame() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();
        let (a, b) = (ping(1), ping(2));
        assert_eq!(s.on_bytes(&a[..10], t0, &mut h), Verdict::Continue);
        // Frame 1 completes at +4 s together with the start of frame 2.
        let mut rest = a[10..].to_vec();
        rest.extend_from_slice(&b[..10]);
        let t4 = t0 + Duration::from_secs(4);
        assert_eq!(s.on_bytes(&rest, t4, &mut h), Verdict::Continue);
        assert_eq!(s.on_tick(t0 + Duration::from_secs(8)), Verdict::Continue);
        assert_eq!(s.on_tick(t4 + Duration::from_secs(6)), Verdict::Close);
    }

    #[test]
    fn idle_timeout_closes_a_silent_connection() {
        let t0 = Instant::now();
        let mut c = config();
        c.idle_timeout = Some(Duration::from_secs(60));
        let mut s = Session::new(c, t0);
        let mut h = TestHandler::default();
        assert_eq!(s.on_tick(t0 + Duration::from_secs(60)), Verdict::Continue);
        let t1 = t0 + Duration::from_secs(50);
        assert_eq!(s.on_bytes(&ping(1), t1, &mut h), Verdict::Continue);
        assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(60)));
        assert_eq!(s.on_tick(t1 + Duration::from_secs(60)), Verdict::Continue);
        assert_eq!(s.on_tick(t1 + Duration::from_secs(61)), Verdict::Close);
    }

    #[test]
    fn a_peer_that_does_not_read_is_closed() {
        let t0 = Instant::now();
        let mut c = config();
        c.max_pending_output = 200;
        let mut s = Session::new(c, t0);
        let mut h = TestHandler::default();
        let req = request(ProtocolVersion::V2, MSG_STATUS, 1, &StatusRequest {});
        let mut verdicts = Vec::new();
        for _ in 0..10 {
            verdicts.push(s.on_bytes(&req, t0, &mut h));
            if verdicts.last() == Some(&Verdict::Close) {
                break;
            }
        }
        assert_eq!(verdicts.last(), Some(&Verdict::Close));
        assert!(verdicts.len() > 1, "one status reply fits in 200 bytes");
        assert!(s.output().len() > 200);
    }

    #[test]
    fn many_requests_in_one_input_are_answered_in_order() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();
        let mut input = Vec::new();
        input.extend(ping(1));
        input.extend(request(ProtocolVersion::V2, MSG_STATUS, 2, &StatusRequest {}));
        input.extend(request(ProtocolVersion::V2, 50, 3, &Ping::default()));
        input.extend(request(ProtocolVersion::V2, MSG_CONFIG, 4, &ConfigRequest {}));
        input.extend(ping(5));
        assert_eq!(s.on_bytes(&input, t0, &mut h), Verdict::Continue);
        let r = drain(&mut s);
        let ids: Vec<_> = r.iter().map(|r| (r.header.msg_type, r.header.msg_id)).collect();
        assert_eq!(ids, [(MSG_PING, 1), (MSG_STATUS, 2), (50, 3), (MSG_CONFIG, 4), (MSG_PING, 5)]);
        assert_eq!(r[2].error().0, 5);
    }

    #[test]
    fn requests_split_at_every_byte_get_the_same_answers() {
        let t0 = Instant::now();
        let mut input = Vec::new();
        input.extend(ping(1));
        input.extend(request(ProtocolVersion::V2, MSG_STATUS, 2, &StatusRequest {}));
        input.extend(corrupt(ping(3)));
        input.extend(request(ProtocolVersion::V2, 50, 4, &Ping::default()));
        input.extend(request(ProtocolVersion::V2, MSG_CONFIG, 5, &ConfigRequest {}));

        let mut whole = Session::new(config(), t0);
        let mut h = TestHandler::default();
        assert_eq!(whole.on_bytes(&input, t0, &mut h), Verdict::Continue);
        let expected = whole.output().to_vec();
        assert_eq!(drain(&mut whole).len(), 5);

        // Every split into two pieces.
        for cut in 0..=input.len() {
            let mut s = Session::new(config(), t0);
            assert_eq!(s.on_bytes(&input[..cut], t0, &mut h), Verdict::Continue);
            assert_eq!(s.on_bytes(&input[cut..], t0, &mut h), Verdict::Continue);
            assert_eq!(s.output(), &expected[..], "cut at {cut}");
        }
        // One byte at a time, writing out as we go.
        let mut s = Session::new(config(), t0);
        let mut written = Vec::new();
        for byte in &input {
            assert_eq!(s.on_bytes(&[*byte], t0, &mut h), Verdict::Continue);
            written.extend_from_slice(s.output());
            let n = s.output().len();
            s.consume_output(n);
        }
        assert_eq!(written, expected);
    }

    #[test]
    fn partial_writes_keep_the_output_in_order() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();
        assert_eq!(s.on_bytes(&ping(1), t0, &mut h), Verdict::Continue);
        let first = s.output().to_vec();
        s.consume_output(10);
        assert_eq!(s.on_bytes(&ping(2), t0, &mut h), Verdict::Continue);
        let mut written = first[..10].to_vec();
        written.extend_from_slice(s.output());
        let n = s.output().len();
        s.consume_output(n);
        let mut client = Decoder::new(DecoderConfig::default());
        let mut ids = Vec::new();
        client
            .feed(&written, |e| match e {
                Event::Frame(f) => ids.push(f.header.msg_id),
                Event::Error { error, .. } => panic!("{error}"),
            })
            .unwrap();
        assert_eq!(ids, [1, 2]);
    }

    /// Defect: the session's output buffer and its body scratch kept the size of the largest
    /// reply forever (a copy of it per connection). After a large reply is written the session
    /// holds small buffers again. (512 KiB: the test client's decoder takes up to 1 MiB.)
    #[test]
    fn a_large_reply_leaves_no_large_buffer_behind() {
        let t0 = Instant::now();
        let mut c = config();
        c.max_pending_output = 8 << 20;
        let mut s = Session::new(c, t0);
        let mut h = TestHandler { toml: Some("#".repeat(512 << 10)), ..TestHandler::default() };
        let req = request(ProtocolVersion::V2, MSG_CONFIG, 1, &ConfigRequest {});
        assert_eq!(s.on_bytes(&req, t0, &mut h), Verdict::Continue);
        assert!(s.memory() >= 512 << 10, "the reply is held until written");
        let r = drain(&mut s);
        assert_eq!(r[0].ok::<ConfigReply>().toml.len(), 512 << 10);
        assert!(s.memory() <= 64 * 1024, "{} bytes kept after a 512 KiB reply", s.memory());
        // Small replies after it work as before.
        assert_eq!(s.on_bytes(&ping(2), t0, &mut h), Verdict::Continue);
        assert_eq!(drain(&mut s)[0].ok::<Pong>().client_time_ns, 20);
        assert!(s.memory() <= 64 * 1024);
    }

    #[test]
    fn a_taken_output_is_the_output_and_leaves_an_empty_buffer() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();
        assert_eq!(s.on_bytes(&[ping(1), ping(2)].concat(), t0, &mut h), Verdict::Continue);
        let whole = s.output().to_vec();
        s.consume_output(10);
        let taken = s.take_output();
        assert_eq!(taken, whole[10..]);
        assert!(s.output().is_empty());
        assert!(s.memory() < whole.len(), "the output went with it: {}", s.memory());
        assert_eq!(s.on_bytes(&ping(3), t0, &mut h), Verdict::Continue);
        assert_eq!(drain(&mut s)[0].ok::<Pong>().client_time_ns, 30);
    }

    #[test]
    fn over_budget_requests_get_the_busy_error_and_the_connection_is_kept() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let busy = OverBudget { buffered: 70_000_000, budget: 67_108_864 };
        let mut h = TestHandler { busy: Some(busy), ..TestHandler::default() };
        let mut input = ping(1);
        input.extend(request(ProtocolVersion::V2, MSG_STATUS, 2, &StatusRequest {}));
        input.extend(request(ProtocolVersion::V2, 77, 3, &Ping::default()));
        assert_eq!(s.on_bytes(&input, t0, &mut h), Verdict::Continue);
        let r = drain(&mut s);
        let ids: Vec<_> = r.iter().map(|r| (r.header.msg_type, r.header.msg_id)).collect();
        assert_eq!(ids, [(MSG_PING, 1), (MSG_STATUS, 2), (77, 3)]);
        let text = "daemon busy: buffered bytes over budget (70000000 > 67108864)".to_owned();
        for reply in &r {
            assert_eq!(reply.error(), (CODE_BUSY, text.clone()));
        }
        assert_eq!(s.error_counts(), &[(KIND_OVER_BUDGET, 3)]);
        assert_eq!(h.errors, [KIND_OVER_BUDGET; 3]);
        // Back under budget: answered again, on the same connection.
        h.busy = None;
        assert_eq!(s.on_bytes(&ping(4), t0, &mut h), Verdict::Continue);
        assert_eq!(drain(&mut s)[0].ok::<Pong>().client_time_ns, 40);
        assert!(!s.is_closed());
    }

    #[test]
    fn the_close_cause_names_what_ended_the_session() {
        let t0 = Instant::now();
        let mut h = TestHandler::default();
        let mut s = Session::new(config(), t0);
        assert_eq!(s.close_cause(), None);
        assert_eq!(s.on_bytes(b"nonsense", t0, &mut h), Verdict::Close);
        assert_eq!(s.close_cause(), Some(CloseCause::Protocol));

        let mut s = Session::new(config(), t0);
        assert_eq!(s.on_bytes(&ping(1)[..3], t0, &mut h), Verdict::Continue);
        assert_eq!(s.on_tick(t0 + Duration::from_secs(6)), Verdict::Close);
        assert_eq!(s.close_cause(), Some(CloseCause::HeaderTimeout));

        let mut c = config();
        c.idle_timeout = Some(Duration::from_secs(1));
        let mut s = Session::new(c, t0);
        assert_eq!(s.on_tick(t0 + Duration::from_secs(2)), Verdict::Close);
        assert_eq!(s.close_cause(), Some(CloseCause::IdleTimeout));
        // The first cause stays.
        assert_eq!(s.on_bytes(b"nonsense", t0, &mut h), Verdict::Close);
        assert_eq!(s.close_cause(), Some(CloseCause::IdleTimeout));

        let mut c = config();
        c.max_pending_output = 10;
        let mut s = Session::new(c, t0);
        assert_eq!(s.on_bytes(&ping(1), t0, &mut h), Verdict::Close);
        assert_eq!(s.close_cause(), Some(CloseCause::Backlog));
    }

    #[test]
    fn response_frames_sent_to_the_daemon_are_dropped() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), t0);
        let mut h = TestHandler::default();
        let mut req = Vec::new();
        wire::encode(ProtocolVersion::V2, MSG_PING, Flags::RESPONSE, 1, &[], &mut req);
        assert_eq!(s.on_bytes(&req, t0, &mut h), Verdict::Continue);
        assert!(s.output().is_empty());
    }
}
