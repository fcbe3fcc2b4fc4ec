//! Lock-free structures for corelane: memory, atomics and layouts, no I/O. The one system call
//! is the futex of [`wait`], the kernel half of an atomic wait.
//!
//! - [`spsc`]: bounded single-producer single-consumer queue, on the heap or inside a
//!   caller-provided shared-memory region.
//! - [`seqlock`]: the tensor-pool slot commit protocol (writer claim -> fill -> commit, reader
//!   load -> copy -> fence -> re-check).
//! - [`shm`]: byte-exact layouts of the SHM Tensor Pool wire spec v1.2.
//! - [`CachePadded`]: the one padding type, for fields written by different threads.
//! - [`wait`]: parking on a 32-bit word in shared memory (a futex) until a peer wakes it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

// The shared-memory layouts are little-endian words accessed as 64-bit atomics: a target
// without either would silently get different bytes or torn words, so refuse to build.
#[cfg(not(target_has_atomic = "64"))]
compile_error!("corelane-rings needs 64-bit atomics (target_has_atomic = \"64\")");
#[cfg(not(target_endian = "little"))]
compile_error!(
    "corelane-rings lays out shared memory little-endian and supports only little-endian targets"
);
#[cfg(not(target_pointer_width = "64"))]
compile_error!("corelane-rings supports only 64-bit targets (shared-memory offsets are u64)");

mod padding;
pub mod region;
pub mod seqlock;
pub mod shm;
pub mod spsc;
mod sync;
pub mod wait;

pub use padding::CachePadded;
