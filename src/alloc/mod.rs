//! The alloc server: an exact ledger of device-memory allocations reported by many processes
//! (`specs/alloc-protocol.md`; the original server's behaviours in
//! `specs/alloc-server-reference.md`).
//!
//! - [`wire`]: every layout that crosses a process boundary (native event body, ring record,
//!   legacy TT-Metal v4/v5 and compact-v2 records), with size and offset tests;
//! - [`devices`]: the simulated device table (architectures, board presets, capacities);
//! - [`ledger`]: the sans-IO ledger of buffers, CBs and kernels, with totals per device and per
//!   process, process release and the DUMP_REMAINING report;
//! - [`ledgers`]: every device's ledger, on the ingest lane or on the lane that owns the
//!   device (agent `alloc-device-<N>`), fed through a link;
//! - [`order`]: the per-client reorder window that applies events in sequence order;
//! - [`legacy`]: the sans-IO parser of legacy records (TT-Metal v4/v5 detected per connection,
//!   compact-v2), resync and the 10-error close, and the same-size replies;
//! - [`ingest`]: the sans-IO core: connections' bytes and ring records in, the ledger in
//!   each client's sequence order, replies out; process exit;
//! - [`latency`]: the optional report-to-applied latency probe (`[alloc] latency_probe`);
//! - [`rings`]: every client's shared-memory rings, merged in sequence order;
//! - [`service`]: the `alloc` service and its agent (listeners, rings, pidfds);
//! - [`query`]: a blocking query client (usage, device info, processes, dumps, pushes);
//! - [`tracker`]: the client library ([`AllocTracker`](tracker::AllocTracker)): reports over
//!   shared-memory rings or the socket, lazy connect, batching, drops counted;
//! - [`proto`]: the native queries' protobuf bodies (`proto/alloc.proto`).

pub mod devices;
pub mod ingest;
pub mod latency;
pub mod ledger;
pub mod ledgers;
pub mod legacy;
pub mod order;
pub mod proto;
pub mod query;
pub mod rings;
pub mod service;
pub mod tracker;
pub mod wire;

pub use wire::{BufferType, Event, EventError, KernelKind, Layout, MsgType};
