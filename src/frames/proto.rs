//! Generated protobuf types of frame protocol v1 (`proto/frames.proto`, package
//! `corelane.frames`), produced by `build.rs` with protox and prost-build. Field numbers are
//! frozen: peers in other languages generate from the same file.
#![allow(missing_docs, missing_debug_implementations)]
#![allow(clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/corelane.frames.rs"));
