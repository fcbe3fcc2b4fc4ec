//! Generated protobuf types of the tensor pool's control plane (`proto/pool.proto`, package
//! `corelane.pool`), produced by `build.rs` with protox and prost-build. The `msg_type` of
//! each request is in the file's header and in [`crate::pool`] (`MSG_POOL_*`).
#![allow(missing_docs, missing_debug_implementations)]
#![allow(clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/corelane.pool.rs"));
