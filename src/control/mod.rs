//! Control plane: the daemon's request/response protocol on its control socket, and the client
//! library that speaks it.
//!
//! Every message is a [`wire`](crate::wire) frame (the canonical 24-byte header, or the 19-byte
//! legacy v1 header for old clients when legacy support is on) whose body is a protobuf message
//! from [`proto`] (`proto/control.proto`). The header's `msg_type` names the exchange:
//!
//! | `msg_type` | request | response |
//! |---|---|---|
//! | [`MSG_PING`] = 1 | [`proto::Ping`] | [`proto::Pong`] |
//! | [`MSG_STATUS`] = 2 | [`proto::StatusRequest`] | [`proto::Status`] |
//! | [`MSG_CONFIG`] = 3 | [`proto::ConfigRequest`] | [`proto::ConfigReply`] |
//! | [`MSG_POOL_REPORT`] = 5 | [`proto::PoolReport`] | [`proto::PoolReportAck`] (pools do not wait for it) |
//! | [`MSG_OPEN_CHANNEL`] = 4 | [`proto::OpenChannel`] | [`proto::ChannelGranted`], with the segment's descriptor |
//! | [`MSG_WATCH_LANES`] = 16 | [`proto::WatchLanes`] | [`proto::LaneReport`], then pushes of it |
//!
//! A response repeats the request's `msg_type` and `msg_id` and carries
//! [`Flags::RESPONSE`](crate::wire::Flags::RESPONSE); an error reply carries `RESPONSE | ERROR` and
//! the wire error body (a numeric code and the spec's text).
//!
//! Requests are routed by `msg_type` ([`route`]): ping is built into the session, status and
//! config are answered on the control lane, and a service's requests are forwarded to its agent
//! on whatever lane hosts it, which answers later. A **subscription** (such as
//! [`MSG_WATCH_LANES`]) is a request whose service goes on sending **pushes**: response frames
//! that repeat the subscribing request's `msg_id`, until the connection closes.
//! [`Client::subscribe`] and [`Client::next_push`] take them; a client that does not read its
//! pushes is closed like one that does not read its replies.
//!
//! Besides the wire errors of the spec (`crate::wire::WireError`), the daemon answers or
//! closes as follows (config keys of `[control]`, documented in `config/corelane.toml`):
//!
//! | condition | daemon behaviour | code, text |
//! |---|---|---|
//! | a body that is not the request's protobuf message | error reply, connection kept | [`CODE_BAD_REQUEST_BODY`], `bad request body: ...` |
//! | all connections together buffer more than `max_buffered_bytes` (unsent replies, partial requests) | error reply instead of the answer, connection kept (retry later), counted as `over_budget` | [`CODE_BUSY`], `daemon busy: buffered bytes over budget (N > M)` |
//! | a frame left incomplete for `header_timeout_ms` | connection closed | none |
//! | no request for `idle_timeout_ms` (default 5 minutes) | connection closed | none |
//! | replies left unread, with no byte taken, for `write_timeout_ms` (default 5 s) | connection closed, its socket released | none |
//! | more than `max_pending_output_bytes` of replies (or pushes) unread | connection closed | none |
//! | a request for a service whose queue of forwarded requests is full | error reply, connection kept (retry later) | [`CODE_BUSY`], `service busy: '<name>' has too many requests queued` |
//! | a request for a service whose lane has stopped | error reply, connection kept | [`CODE_UNAVAILABLE`], `service unavailable: '<name>' has stopped` |
//! | a subscription beyond the service's limit (64 lane watchers) | error reply, connection kept | [`CODE_LIMIT`], `too many watchers: ...` |
//! | end of input (the peer shut down its sending side) | the answers owed are written, then the connection is closed | none |
//!
//! Layers, bottom up:
//! - [`session`]: the daemon side, sans-IO. A [`Session`] takes bytes and `now`, answers requests
//!   into an output buffer, and says when to close; the reactor does the reads and writes.
//! - [`client`]: a blocking [`Client`] over a std `UnixStream`, for the CLI and tests.
//! - [`pool`]: a thread-safe [`ConnectionPool`] of clients with health checks and reuse statistics.

pub mod client;
pub mod pool;
pub mod proto;
pub mod route;
pub mod session;
#[cfg(test)]
mod test_server;

pub use client::{Client, ClientBuilder, ClientError, Transport};
pub use pool::{ConnectionPool, ConnectionPoolBuilder, PoolError, PoolStats, PooledClient};
pub use route::{
    ConnRef, ControlPort, FromService, LocalRoute, ReplyKind, Request, RouteError, Routes,
    ToService,
};
pub use session::{
    Answer, CloseCause, Handler, OverBudget, RequestRef, Session, SessionConfig, Verdict,
    KIND_BAD_REQUEST_BODY, KIND_OVER_BUDGET,
};

/// `msg_type` of [`proto::Ping`] and its answer [`proto::Pong`].
pub const MSG_PING: u16 = 1;
/// `msg_type` of [`proto::StatusRequest`] and its answer [`proto::Status`].
pub const MSG_STATUS: u16 = 2;
/// `msg_type` of [`proto::ConfigRequest`] and its answer [`proto::ConfigReply`].
pub const MSG_CONFIG: u16 = 3;
/// `msg_type` of [`proto::OpenChannel`]: upgrades the connection to a shared-memory channel
/// (see [`Transport`]); answered with a [`proto::ChannelGranted`] that
/// carries the segment's descriptor (`SCM_RIGHTS`).
pub const MSG_OPEN_CHANNEL: u16 = 4;
/// `msg_type` of [`proto::PoolReport`]: a [`ConnectionPool`]'s reuse counts, which the daemon
/// exports on `/metrics`.
pub const MSG_POOL_REPORT: u16 = 5;
/// `msg_type` of [`proto::WatchLanes`], a subscription: answered with a [`proto::LaneReport`],
/// then one pushed every `metrics.publish_interval_ms` (served by the metrics service).
pub const MSG_WATCH_LANES: u16 = 16;

/// Error code of the reply to a request whose protobuf body does not decode (text
/// `bad request body: ...`).
///
/// The wire errors use codes 1-7 ([`WireError::code`](crate::wire::WireError::code)); this one
/// is outside their range, and its low byte is below 8 like theirs: an error body then starts
/// with a byte no protobuf message starts with (field number 0), which is how a v1 client, whose
/// header has no error flag, tells an error reply from a response.
pub const CODE_BAD_REQUEST_BODY: u16 = 0x0100;

/// Error code of the reply to a request refused because the service is over its budget of
/// buffered bytes (text `daemon busy: buffered bytes over budget (N > M)`, see
/// [`session::OverBudget`]); like [`CODE_BAD_REQUEST_BODY`], outside the wire codes with a low
/// byte below 8. The connection stays open: retry later.
pub const CODE_BUSY: u16 = 0x0200;

/// Error code of a request whose service has stopped (text `service unavailable: '<name>' has
/// stopped`): its agent's lane is gone. (A service whose queue of forwarded requests is full
/// answers [`CODE_BUSY`], `service busy: ...`: retry later.)
pub const CODE_UNAVAILABLE: u16 = 0x0300;

/// Error code of a request a service refuses because it holds too many of them (for example,
/// subscriptions: text `too many watchers: ...`). The connection stays open.
pub const CODE_LIMIT: u16 = 0x0400;
