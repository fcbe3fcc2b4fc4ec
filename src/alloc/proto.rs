//! Generated protobuf types of the alloc server's native queries (`proto/alloc.proto`, package
//! `corelane.alloc`), produced by `build.rs` with protox and prost-build. The `msg_type` of
//! each request is in the file's header and in [`crate::alloc::MsgType`].
#![allow(missing_docs, missing_debug_implementations)]
#![allow(clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/corelane.alloc.rs"));
