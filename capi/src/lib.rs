//! The C ABI of [`corelane::alloc::tracker::AllocTracker`]: `include/corelane_alloc.h` and a
//! `cdylib` (`libcorelane_alloc.so`), so C and C++ allocators report device-memory events
//! without Rust. See `README.md` for the build and link commands.
//!
//! Every function is `extern "C"`, accepts a null tracker (and does nothing, returning the
//! documented value), and never lets a panic cross the boundary (each body runs under
//! `catch_unwind`; the tracker's report paths do not panic in the first place).
//!
//! Unsafe code lives in [`ffi`] only (the exported symbols, `#[no_mangle]`, and the pointer
//! dereferences); this root denies it.
#![deny(unsafe_code)]

pub mod ffi;

pub use ffi::*;
