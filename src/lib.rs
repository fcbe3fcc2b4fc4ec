//! corelane: a synchronous thread-per-core runtime for accelerator hosts.
//!
//! Modules: [`runtime`] (lanes, agents, reactor), [`wire`] (canonical framing), [`control`]
//! (control protocol, client library), [`config`], [`metrics`], [`mapping`] (sealed shared
//! memory); the foundation is re-exported
//! as [`rings`].
#![deny(unsafe_code)]

pub use corelane_rings as rings;

pub mod alloc;
pub mod channel;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod files;
pub mod frames;
pub mod mapping;
pub mod metrics;
pub mod pool;
pub mod runtime;
pub mod wire;

/// The README's Rust example, compiled and run as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
