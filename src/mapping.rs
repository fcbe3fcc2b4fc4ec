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
//!
//! A [`ReadOnlyMapping`] (`PROT_READ`, `MAP_SHARED`) is what the spec has tensor-pool
//! consumers map. It is a [`Region`] that says [`read_only`](Region::read_only): the rings
//! crate then only makes Relaxed 64-bit atomic loads (the one kind of atomic access Rust
//! documents as sound on read-only memory: "sufficiently small" `Relaxed` loads; `Acquire`
//! loads and read-modify-writes are not covered) and byte copies out, ordered with fences, and
//! every writer (`Stream::create`, `Stream::touch`, `Publisher`, the SPSC ring ends) refuses
//! the region, so a safe call cannot store into a read-only page. It also offers loads of
//! its own ([`ReadOnlyMapping::load_u64`]) for the inspector.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use std::sync::atomic::{AtomicU64, Ordering};

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

    /// Maps a descriptor received from a peer, after checking it against `policy`: exactly
    /// the bytes the policy needs are mapped (a peer that hands over a huge sparse file gets
    /// no more of our address space than the layout takes).
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
        if len < needed as u64 || needed == 0 {
            return Err(MapError::TooSmall { needed, len });
        }
        Ok(Self::map(fd, needed)?)
    }

    /// Opens and maps a file by path (read-write, shared), if it holds at least `needed` bytes.
    pub fn open(path: &Path, needed: usize) -> Result<Self, MapError> {
        let file = File::options().read(true).write(true).open(path)?;
        Self::from_fd(file.as_fd(), SizePolicy::AtLeast(needed))
    }

    /// Locks the mapped pages in memory (`mlock`), faulting them in first; the lock lasts
    /// until the mapping is dropped.
    pub fn lock(&self) -> io::Result<()> {
        self.raw.lock()
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

impl Mapping {
    /// The 8-byte word at byte `offset` as an atomic, or `None` if it is out of bounds or
    /// `offset` is not a multiple of 8. For the words of a layout header that every process
    /// accesses only atomically (a channel segment's header, see `channel::duplex`).
    ///
    /// # Safety
    /// While the reference lives, no code in this process may access those 8 bytes other than
    /// atomically as this 64-bit word (for example, they must not be part of a seqlock payload
    /// pool laid out in the same mapping, which copies bytes non-atomically).
    pub unsafe fn word(&self, offset: usize) -> Option<&AtomicU64> {
        if !offset.is_multiple_of(8) || offset.checked_add(8)? > self.raw.len() {
            return None;
        }
        // SAFETY: `offset + 8 <= len` (checked above), so the word lies inside the mapping,
        // which lives as long as the borrow of `self`; the mapping is page-aligned and
        // `offset` a multiple of 8, so the pointer is aligned for AtomicU64. The mapping is
        // read-write and shared; words handed out here are only ever accessed atomically.
        Some(unsafe { &*self.raw.as_ptr().add(offset).cast::<AtomicU64>() })
    }
}

/// A part of a shared [`Mapping`], `offset..offset + len`, as a [`Region`] of its own: one of
/// several layouts in one memfd (the two rings of a channel segment).
pub struct MappingPart {
    mapping: std::sync::Arc<Mapping>,
    offset: usize,
    len: usize,
}

impl MappingPart {
    /// The part `offset..offset + len` of `mapping`, or `None` if it does not lie inside it or
    /// `offset` is not a multiple of [`REGION_ALIGN`](crate::rings::region::REGION_ALIGN).
    ///
    /// # Safety
    /// The parts of one mapping that live at the same time must not overlap one another (a
    /// layout claim is per start address: overlapping parts could hold two layouts over the
    /// same bytes), nor bytes accessed through [`Mapping::word`].
    pub unsafe fn new(
        mapping: &std::sync::Arc<Mapping>,
        offset: usize,
        len: usize,
    ) -> Option<Self> {
        let end = offset.checked_add(len)?;
        (end <= mapping.len() && offset.is_multiple_of(crate::rings::region::REGION_ALIGN))
            .then(|| MappingPart { mapping: mapping.clone(), offset, len })
    }
}

// SAFETY: the mapping lives (in the Arc) as long as the part, at one address; the part is
// `offset..offset + len` inside it (checked in `new`) and starts REGION_ALIGN-aligned (the
// mapping is page-aligned). The parts of one mapping are disjoint (the contract of the unsafe
// `new`), so each is laid out as its own structure at its own start address.
unsafe impl Region for MappingPart {
    fn as_ptr(&self) -> *mut u8 {
        // SAFETY: offset + len <= mapping.len() (checked in `new`): in bounds of the mapping.
        unsafe { self.mapping.raw.as_mut_ptr().add(self.offset) }
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl std::fmt::Debug for MappingPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappingPart").field("offset", &self.offset).field("len", &self.len).finish()
    }
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("len", &self.raw.len()).finish()
    }
}

/// A shared, read-only mapping (`PROT_READ`, `MAP_SHARED`) of the first `len` bytes of a file:
/// what a tensor-pool consumer or a diagnostic tool maps. A read-only [`Region`] (see the
/// module doc), and its bytes can be read with [`load_u64`](Self::load_u64) and
/// [`load_words`](Self::load_words).
///
/// A file another process shrinks below `len` faults (`SIGBUS`) on the next load past its new
/// end, as for [`Mapping::open`]: map only files whose owner is trusted with their size.
pub struct ReadOnlyMapping {
    raw: MmapRaw,
}

impl ReadOnlyMapping {
    /// Maps the first `len` bytes of `file` read-only, if the file holds at least `len` (and
    /// `len` is not zero). `file` may be opened read-only.
    pub fn map(file: &File, len: usize) -> Result<Self, MapError> {
        let size = rustix::fs::fstat(file).map_err(io::Error::from)?.st_size as u64;
        if len == 0 || size < len as u64 {
            return Err(MapError::TooSmall { needed: len, len: size });
        }
        let raw = MmapOptions::new().len(len).map_raw_read_only(file)?;
        Ok(Self { raw })
    }

    /// Mapped bytes.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether nothing is mapped (never: a mapping has at least one byte).
    pub fn is_empty(&self) -> bool {
        self.raw.len() == 0
    }

    /// The 8-byte-aligned word at byte `offset`, loaded atomically (`Relaxed`); `None` if the
    /// word is out of bounds or `offset` is not a multiple of 8. For memory that every writer
    /// accesses as 64-bit words (superblocks, header-ring slots), never payload bytes.
    pub fn load_u64(&self, offset: usize) -> Option<u64> {
        if !offset.is_multiple_of(8) || offset.checked_add(8)? > self.raw.len() {
            return None;
        }
        // SAFETY: `offset + 8 <= len` (checked above), so the word lies inside the mapping,
        // which lives as long as `self`; the mapping is page-aligned and `offset` a multiple
        // of 8, so the pointer is aligned for AtomicU64. The word is only ever loaded through
        // this shared reference, and a Relaxed AtomicU64 load on a 64-bit target is a plain
        // load that never writes, which Rust documents as sound on read-only memory.
        let word = unsafe { &*self.raw.as_ptr().add(offset).cast::<AtomicU64>() };
        Some(word.load(Ordering::Relaxed))
    }

    /// Copies `out.len()` bytes starting at byte `offset` (a multiple of 8) out of the mapping,
    /// one relaxed atomic word at a time (the last word may be partly used). Returns `false`,
    /// copying nothing, if the range is not inside the mapping or `offset` is not aligned.
    /// Word-granular memory only, as [`load_u64`](Self::load_u64).
    pub fn load_words(&self, offset: usize, out: &mut [u8]) -> bool {
        // Whole words are loaded, so a partial last chunk needs its whole word mapped: a
        // range whose last word runs past the mapping is refused rather than over-read (every
        // layout read this way is a whole number of words).
        let Some(words_end) = offset.checked_add(out.len().div_ceil(8) * 8) else { return false };
        if !offset.is_multiple_of(8) || words_end > self.raw.len() {
            return false;
        }
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            // In bounds and aligned (checked above), so this is always `Some`.
            let Some(word) = self.load_u64(offset + i * 8) else { return false };
            chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
        }
        true
    }
}

// SAFETY: the pointer is the start of a mapping of `len` bytes that lives, unmoved, as long
// as `self`. It is valid for reads only, which `read_only` says: on such a region the rings
// crate makes only Relaxed 8-byte atomic loads and byte copies out, and every layout that
// would write refuses it (`Region::read_only`).
unsafe impl Region for ReadOnlyMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.raw.as_mut_ptr()
    }
    fn len(&self) -> usize {
        self.raw.len()
    }
    fn read_only(&self) -> bool {
        true
    }
}

impl std::fmt::Debug for ReadOnlyMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyMapping").field("len", &self.raw.len()).finish()
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
    fn a_read_only_mapping_loads_words_and_refuses_out_of_range() {
        let dir = std::env::temp_dir().join(format!("corelane-romap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("words");
        let bytes: Vec<u8> = (0u8..100).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap(); // read-only descriptor
        let map = ReadOnlyMapping::map(&file, 100).unwrap();
        assert_eq!(map.len(), 100);
        assert_eq!(map.load_u64(8), Some(u64::from_le_bytes(bytes[8..16].try_into().unwrap())));
        assert_eq!(map.load_u64(4), None, "unaligned");
        assert_eq!(map.load_u64(96), None, "the word runs past the end");
        let mut out = [0u8; 13];
        assert!(map.load_words(16, &mut out));
        assert_eq!(out, bytes[16..29]);
        let mut out = [0u8; 5];
        assert!(!map.load_words(96, &mut out), "its word would run past the end");
        assert!(!map.load_words(3, &mut out), "unaligned");
        assert!(!map.load_words(usize::MAX - 7, &mut out));
        assert!(matches!(
            ReadOnlyMapping::map(&file, 101),
            Err(MapError::TooSmall { needed: 101, len: 100 })
        ));
        assert!(matches!(ReadOnlyMapping::map(&file, 0), Err(MapError::TooSmall { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
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
