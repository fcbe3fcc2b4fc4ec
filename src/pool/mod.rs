//! The tensor pool (`specs/tensor-pool.md`): shared-memory files, their URIs and the tools
//! that look inside them.
//!
//! - [`layout`]: the canonical file layout
//!   `<base>/tensorpool-<user>/<namespace>/<stream_id>/<epoch>/...` (spec §4).
//! - [`files`]: creating an epoch's files (driver side), finding and collecting old epochs
//!   (§5.7).
//! - [`uri`]: `shm:file?path=...|require_hugepages=...` URIs and the checks a process runs
//!   before it maps one (§4, conformance 29-37).
//! - [`inspect`]: decoding any region file, for diagnostics.

pub mod files;
pub mod inspect;
pub mod layout;
pub mod uri;
