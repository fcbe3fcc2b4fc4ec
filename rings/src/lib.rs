//! Lock-free structures for corelane: memory, atomics and layouts, no I/O.
//!
//! - [`spsc`]: bounded single-producer single-consumer queue, on the heap or inside a
//!   caller-provided shared-memory region.
//! - [`seqlock`]: the tensor-pool slot commit protocol (writer claim -> fill -> commit, reader
//!   load -> copy -> fence -> re-check).
//! - [`shm`]: byte-exact layouts of the SHM Tensor Pool wire spec v1.2.
//! - [`CachePadded`]: the one padding type, for fields written by different threads.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod padding;
#[cfg(not(loom))]
pub mod region;
pub mod seqlock;
pub mod shm;
pub mod spsc;
mod sync;

pub use padding::CachePadded;
