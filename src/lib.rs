//! corelane: a synchronous thread-per-core runtime for accelerator hosts.
//!
//! This crate will host the daemon's runtime and services; today it re-exports the
//! foundation, [`corelane_rings`].
#![deny(unsafe_code)]

pub use corelane_rings as rings;
