//! Shared-memory mappings that a peer cannot pull out from under us.
//!
//! A process that maps memory another process can resize dies of `SIGBUS` on the first access
//! past the new end, and no bounds check helps: the access is a plain load of a valid
//! address. The policy (also in `corelane_rings::region`):
//!
//! - **Memory the daemon reads on a client's behalf is a memfd the daemon creates**:
//!   [`Mapping::sealed_memfd`] sizes it, seals it with `F_SEAL_SHRINK | F_SEAL_GROW |
//!   F_SEAL_SEAL`, and only then hands out the descriptor (for `SCM_RIGHTS`). The client can
//!   write the bytes, never change the size: a truncate fails with `EPERM`.
//! - **A descriptor received from a peer** is mapped with [`Mapping::from_fd`] only after
//!   `fstat` shows at least the length the layout needs; with [`SizePolicy::Sealed`] it must
//!   also carry the shrink and grow seals, so the size checked is the size for good.
//! - **A file opened by path** ([`Mapping::open`], for tensor-pool files that the driver
//!   creates) is checked the same way at open; such files cannot be sealed, so only
//!   processes that trust the file's owner with its size map them.
//!
//! A [`Mapping`] is a [`Region`]: the ring and seqlock layouts
//! check their own lengths against it before the first access.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{MemfdFlags, SealFlags};

use crate::rings::region::Region;

/// A shared, read-write mapping of a whole file or memfd.
pub struct Mapping {
    raw: MmapRaw,
}

/// What a descriptor received from elsewhere must show before it is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizePolicy {
    /// At least this many bytes now (the owner is trusted not to shrink it).
    AtLeast(usize),
    /// At least this many bytes, and sealed against shrinking and growing: the size checked
    /// is the size for good.
    Sealed(usize),
}

/// Why a descriptor or file was not mapped.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The file is shorter than the layout needs.
    #[error("shared memory too small: needs {needed} bytes, has {len}")]
    TooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes the file has.
        len: u64,
    },
    /// The policy asks for seals the descriptor lacks.
    #[error("shared memory not sealed against resizing (seals {seals:#x}, need shrink and grow)")]
    NotSealed {
        /// The seals it has (`F_GET_SEALS`).
        seals: u32,
    },
    /// A system call failed.
    #[error("shared memory: {0}")]
    Io(#[from] io::Error),
}

impl Mapping {
    /// Creates a memfd of `len` bytes (zeroed), seals its size, and maps it. Returns the
    /// mapping and the descriptor to pass to a peer (which may map it too, but never resize
    /// it). `name` shows in `/proc/<pid>/fd` (e.g. `corelane-alloc-4242`).
    pub fn sealed_memfd(name: &str, len: usize) -> io::Result<(Self, OwnedFd)> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty memfd cannot be mapped",
            ));
        }
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let mapping = Self::map(fd.as_fd(), len)?;
        Ok((mapping, fd))
    }

    /// Maps a descriptor received from a peer, after checking it against `policy`. The whole
    /// file is mapped.
    pub fn from_fd(fd: BorrowedFd<'_>, policy: SizePolicy) -> Result<Self, MapError> {
        let (needed, sealed) = match policy {
            SizePolicy::AtLeast(n) => (n, false),
            SizePolicy::Sealed(n) => (n, true),
        };
        if sealed {
            let seals = rustix::fs::fcntl_get_seals(fd).map_err(io::Error::from)?;
            if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
                return Err(MapError::NotSealed { seals: seals.bits() });
            }
        }
        let len = rustix::fs::fstat(fd).map_err(io::Error::from)?.st_size as u64;
        if len < needed as u64 || len == 0 {
            return Err(MapError::TooSmall { needed, len });
        }
        let len = usize::try_from(len).map_err(|_| MapError::TooSmall { needed, len })?;
        Ok(Self::map(fd, len)?)
    }

    /// Opens and maps a file by path (read-write, shared), if it holds at least `needed` bytes.
    pub fn open(path: &Path, needed: usize) -> Result<Self, MapError> {
        let file = File::options().read(true).write(true).open(path)?;
        Self::from_fd(file.as_fd(), SizePolicy::AtLeast(needed))
    }

    fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        // memmap2 maps from a `File`; lend it the descriptor without taking ownership.
        let file = File::from(fd.try_clone_to_owned()?);
        let raw = MmapOptions::new().len(len).map_raw(&file)?;
        Ok(Self { raw })
    }
}

// SAFETY: a shared mapping stays at one address, `len` bytes, until the MmapRaw is dropped;
// corelane accesses mapped shared memory only through the ring and seqlock protocols, which
// are atomic.
unsafe impl Region for Mapping {
    fn as_ptr(&self) -> *mut u8 {
        self.raw.as_mut_ptr()
    }
    fn len(&self) -> usize {
        self.raw.len()
    }
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("len", &self.raw.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rings::spsc::shm::{region_len, ShmConsumer, ShmProducer};

    #[test]
    fn a_sealed_memfd_cannot_be_resized_by_the_peer() {
        let len = region_len::<u64>(64).unwrap();
        let (mine, fd) = Mapping::sealed_memfd("corelane-test", len).unwrap();
        assert_eq!(mine.len(), len);
        // The peer's attempts, on the descriptor it received.
        let shrink = rustix::fs::ftruncate(&fd, 64).unwrap_err();
        assert_eq!(shrink, rustix::io::Errno::PERM, "shrinking a sealed memfd");
        let grow = rustix::fs::ftruncate(&fd, len as u64 * 2).unwrap_err();
        assert_eq!(grow, rustix::io::Errno::PERM, "growing a sealed memfd");
        let unseal = rustix::fs::fcntl_add_seals(&fd, SealFlags::empty()).unwrap_err();
        assert_eq!(unseal, rustix::io::Errno::PERM, "the seals themselves are sealed");
        // And a ring laid out in it works across two mappings of the one memfd.
        let theirs = Mapping::from_fd(fd.as_fd(), SizePolicy::Sealed(len)).unwrap();
        let mut tx = ShmProducer::<u64, _>::create(&theirs, 64).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(&mine).unwrap();
        tx.push(42).unwrap();
        assert_eq!(rx.pop(), Ok(42));
    }

    #[test]
    fn a_short_or_unsealed_descriptor_is_refused_before_mapping() {
        let (_, fd) = Mapping::sealed_memfd("corelane-test", 4096).unwrap();
        let err = Mapping::from_fd(fd.as_fd(), SizePolicy::Sealed(8192)).unwrap_err();
        assert!(matches!(err, MapError::TooSmall { needed: 8192, len: 4096 }), "{err}");
        assert_eq!(err.to_string(), "shared memory too small: needs 8192 bytes, has 4096");
        let plain = rustix::fs::memfd_create("corelane-test", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&plain, 4096).unwrap();
        let err = Mapping::from_fd(plain.as_fd(), SizePolicy::Sealed(4096)).unwrap_err();
        assert!(matches!(err, MapError::NotSealed { .. }), "{err}");
        assert!(Mapping::from_fd(plain.as_fd(), SizePolicy::AtLeast(4096)).is_ok());
        let empty = rustix::fs::memfd_create("corelane-test", MemfdFlags::CLOEXEC).unwrap();
        assert!(matches!(
            Mapping::from_fd(empty.as_fd(), SizePolicy::AtLeast(0)),
            Err(MapError::TooSmall { .. })
        ));
    }

    #[test]
    fn a_file_shorter_than_its_layout_is_an_error_not_a_fault() {
        let dir = std::env::temp_dir().join(format!("corelane-mapping-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("short.ring");
        std::fs::write(&path, [0u8; 100]).unwrap();
        let err = Mapping::open(&path, 4096).unwrap_err();
        assert!(matches!(err, MapError::TooSmall { needed: 4096, len: 100 }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
