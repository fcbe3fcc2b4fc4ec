//! The alloc server: an exact ledger of device-memory allocations reported by many processes
//! (`specs/alloc-protocol.md`; the original server's behaviours in
//! `specs/alloc-server-reference.md`).
//!
//! - [`wire`]: every layout that crosses a process boundary (native event body, ring record,
//!   legacy TT-Metal v4/v5 and compact-v2 records), with size and offset tests.

pub mod wire;

pub use wire::{BufferType, Event, EventError, KernelKind, Layout, MsgType};
