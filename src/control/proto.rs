//! Generated protobuf types for the control protocol (`proto/control.proto`, package
//! `corelane.control`), produced by `build.rs` with protox and prost-build.
//!
//! Requests and responses share a header `msg_type`: [`Ping`] / [`Pong`] under
//! [`MSG_PING`](super::MSG_PING), [`StatusRequest`] / [`Status`] under
//! [`MSG_STATUS`](super::MSG_STATUS), [`ConfigRequest`] / [`ConfigReply`] under
//! [`MSG_CONFIG`](super::MSG_CONFIG).
#![allow(missing_docs, missing_debug_implementations)]
#![allow(clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/corelane.control.rs"));
