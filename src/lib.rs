//! corelane: a synchronous thread-per-core runtime for accelerator hosts.
//!
//! This crate will host the daemon's runtime and services; today it re-exports the
//! foundation, [`corelane_rings`].
#![deny(unsafe_code)]

pub use corelane_rings as rings;

/// The README's Rust example, compiled and run as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
