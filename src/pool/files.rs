//! An epoch's files, as the driver creates them (spec §4 "C creation"), finds them and
//! collects old ones (§5.7).
//!
//! [`create_epoch`] makes `<epoch_dir>/{header.ring, <pool_id>.pool..., corelane.wake}` in a
//! directory it creates itself (an existing epoch directory is refused, never reused), and
//! either leaves all of it behind or none of it: any failure removes every file and
//! directory the call made, so a full `/dev/shm` is a clean [`ShmError::NoSpace`], not a
//! half-made epoch. Everything below the part of the base directory that already exists is
//! created and opened relative to directory descriptors with `O_NOFOLLOW`, so a symlink
//! planted in a shared base directory is an error, not a redirection.
//!
//! Why the files are `fallocate`d and not only `ftruncate`d: on tmpfs (and hugetlbfs) a
//! truncated file is sparse, and its pages are taken from the file system's size limit only
//! when first touched. On a full tmpfs that first touch is a `SIGBUS` in whichever process
//! makes it, typically a producer or consumer long after the driver said "OK". `fallocate`
//! (mode 0, i.e. `posix_fallocate` semantics) takes the pages now, so a full file system fails
//! here with `ENOSPC`, and the pages are zeroed as the spec's prefault asks.

use std::ffi::{CStr, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FallocateFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::layout::{
    self, is_epoch_file_name, parse_canonical, pool_file_name, ShmLayout, HEADER_FILE, WAKE_FILE,
    WAKE_FILE_BYTES,
};
use super::uri::{ShmUri, UriError};
use crate::mapping::{MapError, Mapping, SizePolicy};
use crate::rings::seqlock::PoolSpec;
use crate::rings::shm::{self, Superblock, POOL_STRIDE_ALIGN, SUPERBLOCK_BYTES};
use zerocopy::IntoBytes;

/// `statfs.f_type` of hugetlbfs.
pub const HUGETLBFS_MAGIC: u32 = 0x9584_58f6;

/// How [`create_epoch`] makes the files (the `[shm]` and `[policies]` keys of the driver
/// config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateOptions {
    /// File mode (`shm.permissions_mode`, at most `0o777`), applied exactly whatever the
    /// umask; directories get `permissions_mode | 0o110`.
    pub permissions_mode: u32,
    /// Reserve and zero every page of every file now (`policies.prefault_shm`, default
    /// true). When false, only the pages the driver itself writes (the header ring, each
    /// pool's superblock, the wake file) are reserved, and a producer writing a payload slot
    /// on a full file system gets `SIGBUS`.
    pub prefault: bool,
    /// `mlock` every mapping (`policies.mlock_shm`); failure is fatal. The lock lasts as
    /// long as the returned [`EpochFiles`] lives.
    pub mlock: bool,
    /// The base directory must be on hugetlbfs (`shm.require_hugepages`).
    pub require_hugepages: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self { permissions_mode: 0o660, prefault: true, mlock: false, require_hugepages: false }
    }
}

/// The files of one epoch, as created.
#[derive(Debug)]
pub struct EpochFiles {
    /// The epoch directory, canonical (symlinks in the base directory resolved), so the URIs
    /// below pass a consumer's checks.
    pub epoch_dir: PathBuf,
    /// Stream id.
    pub stream_id: u32,
    /// Epoch.
    pub epoch: u64,
    /// Header ring slots (every pool has as many).
    pub nslots: u32,
    /// The header ring's URI.
    pub header_uri: ShmUri,
    /// The pools, in the order given.
    pub pools: Vec<PoolFile>,
    /// The wake sidecar's path.
    pub wake_path: PathBuf,
    /// The wake sidecar's URI (what attach responses and announces carry).
    pub wake_uri: ShmUri,
    /// The mappings that hold the mlock, when [`CreateOptions::mlock`] was set.
    locked: Vec<Mapping>,
}

impl EpochFiles {
    /// Whether the files' pages are locked in memory by this value.
    pub fn is_locked(&self) -> bool {
        !self.locked.is_empty()
    }
}

/// One payload pool of an [`EpochFiles`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolFile {
    /// Its id.
    pub pool_id: u16,
    /// Slots (the header ring's `nslots`).
    pub nslots: u32,
    /// Bytes per slot.
    pub stride_bytes: u32,
    /// Its URI.
    pub uri: ShmUri,
}

/// An epoch directory [`gc_epochs`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedEpoch {
    /// The epoch.
    pub epoch: u64,
    /// Its directory (now gone).
    pub dir: PathBuf,
    /// The files removed from it.
    pub files: Vec<String>,
}

/// Why an epoch's files were not created. Nothing the call created is left behind.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// `permissions_mode` has bits above `0o777`.
    #[error("shm permissions_mode expected at most 0o777, seen {seen:#o}")]
    PermissionsMode {
        /// The mode given.
        seen: u32,
    },
    /// `nslots` is not a power of two.
    #[error("header nslots expected a non-zero power of two, seen {seen}")]
    Nslots {
        /// The value given.
        seen: u32,
    },
    /// No payload pool.
    #[error("payload pools expected at least one, seen none")]
    NoPools,
    /// A pool id of 0 (ids are 1..=65535).
    #[error("pool_id expected 1..=65535, seen 0")]
    PoolIdZero,
    /// Two pools with one id.
    #[error("pool_id {pool_id} expected once per stream, seen twice")]
    DuplicatePool {
        /// The id.
        pool_id: u16,
    },
    /// A pool stride that is 0 or not a multiple of 64.
    #[error("pool {pool_id} stride_bytes expected a non-zero multiple of {POOL_STRIDE_ALIGN}, seen {seen}")]
    Stride {
        /// The pool.
        pool_id: u16,
        /// The stride given.
        seen: u32,
    },
    /// A path a URI cannot carry (not UTF-8, or holding `|`).
    #[error("{path}: cannot be written as a shm uri: {source}")]
    UriPath {
        /// The path.
        path: PathBuf,
        /// Why.
        source: UriError,
    },
    /// `require_hugepages` and the base directory is not on hugetlbfs.
    #[error("{path}: require_hugepages expected a hugetlbfs base dir (f_type {HUGETLBFS_MAGIC:#x}), seen f_type {f_type:#x}")]
    NotHugetlbfs {
        /// The directory checked.
        path: PathBuf,
        /// Its file system's `f_type`.
        f_type: u64,
    },
    /// The epoch directory exists already: epochs are never reused.
    #[error("{path}: epoch directory expected to be new, seen it exists")]
    EpochExists {
        /// The directory.
        path: PathBuf,
    },
    /// A directory of the layout is a symlink or not a directory.
    #[error("{path}: expected a directory (symlinks are not followed), seen a {kind}")]
    NotDirectory {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The file system is full.
    #[error("{path}: no space left on device (ENOSPC) reserving {needed} bytes")]
    NoSpace {
        /// The file being reserved.
        path: PathBuf,
        /// Bytes that were to be reserved.
        needed: u64,
    },
    /// `mlock` failed (fatal by policy).
    #[error("{path}: mlock of {len} bytes failed: {source}")]
    Mlock {
        /// The file.
        path: PathBuf,
        /// Bytes to lock.
        len: u64,
        /// Why.
        source: io::Error,
    },
    /// Mapping a file failed.
    #[error("{path}: mapping failed: {source}")]
    Map {
        /// The file.
        path: PathBuf,
        /// Why.
        source: MapError,
    },
    /// A system call failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The call.
        op: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// Creates the files of epoch `epoch` of stream `stream_id` (spec §4 "C creation"):
///
/// 1. checks the request (`nslots` a power of two, at least one pool, ids 1..=65535 unique,
///    strides non-zero multiples of 64, mode at most `0o777`) and, with `require_hugepages`,
///    that the base directory is on hugetlbfs;
/// 2. `mkdir -p` with mode `permissions_mode | 0o110` (set exactly with `chmod`, whatever
///    the umask); the epoch directory itself must be new;
/// 3. each file `O_CREAT | O_EXCL | O_NOFOLLOW` with `permissions_mode` (then `fchmod`, so
///    the umask does not change it), `ftruncate` to `64 + nslots * 256` / `64 + nslots *
///    stride` (computed in `u64`, trap T6), then reserved with `fallocate` (see the module
///    doc; every page with `prefault`, otherwise the pages this call writes);
/// 4. the superblocks written with `pwrite` (pid `pid`, start and activity timestamps
///    `now_ns`), never through a mapping: a peer that can open the files could truncate one
///    under it and fault the daemon. The header slots stay zero, which reads as "seq 0 in
///    progress";
/// 5. `mlock` when asked (failure is fatal), then `fsync` of every file.
///
/// `corelane.wake` is created alongside: [`WAKE_FILE_BYTES`] zero bytes.
/// Any failure removes everything the call created, files and directories.
#[allow(clippy::too_many_arguments)] // the spec's creation inputs, each a plain value
pub fn create_epoch(
    layout: &ShmLayout,
    stream_id: u32,
    epoch: u64,
    nslots: u32,
    pools: &[PoolSpec],
    opts: &CreateOptions,
    pid: u64,
    now_ns: u64,
) -> Result<EpochFiles, ShmError> {
    check_request(nslots, pools, opts)?;
    let (existing, mut todo) = split_existing(layout.base_dir())?;
    todo.extend(
        [
            format!("{}{}", layout::USER_DIR_PREFIX, layout.user()),
            layout.namespace().to_owned(),
            stream_id.to_string(),
            epoch.to_string(),
        ]
        .map(OsString::from),
    );
    let mut epoch_dir = existing.clone();
    epoch_dir.extend(&todo);

    // Every URI must be writable before anything is made.
    let uri = |name: &str| {
        let path = epoch_dir.join(name);
        ShmUri::new(&path, opts.require_hugepages)
            .map_err(|source| ShmError::UriPath { path, source })
    };
    let header_uri = uri(HEADER_FILE)?;
    // The wake sidecar is a plain 64-byte file whatever the pages of the regions.
    let wake_path = epoch_dir.join(WAKE_FILE);
    let wake_uri = ShmUri::new(&wake_path, false)
        .map_err(|source| ShmError::UriPath { path: wake_path.clone(), source })?;
    let pool_uris =
        pools.iter().map(|p| uri(&pool_file_name(p.pool_id))).collect::<Result<Vec<_>, _>>()?;

    let io_err =
        |path: &Path, op, e: Errno| ShmError::Io { path: path.to_owned(), op, source: e.into() };
    let base = open_dir(&existing).map_err(|e| io_err(&existing, "open", e))?;
    if opts.require_hugepages {
        let f_type = fs_type(&base).map_err(|e| io_err(&existing, "fstatfs", e))?;
        if f_type != u64::from(HUGETLBFS_MAGIC) {
            return Err(ShmError::NotHugetlbfs { path: existing, f_type });
        }
    }

    let mut undo = Undo::armed();
    let epoch_fd = make_dirs(base, &existing, &todo, opts.permissions_mode, &mut undo)?;
    undo.epoch_fd = Some(epoch_fd.try_clone().map_err(|source| ShmError::Io {
        path: epoch_dir.clone(),
        op: "dup",
        source,
    })?);
    let mode = Mode::from_raw_mode(opts.permissions_mode);

    let mut files = Vec::with_capacity(pools.len() + 2);
    let header_len = shm::header_ring_len(nslots);
    files.push(NewFile { name: HEADER_FILE.to_owned(), len: header_len, touched: header_len });
    for p in pools {
        let len = shm::payload_pool_len(nslots, p.stride_bytes);
        files.push(NewFile {
            name: pool_file_name(p.pool_id),
            len,
            touched: SUPERBLOCK_BYTES as u64,
        });
    }
    files.push(NewFile {
        name: WAKE_FILE.to_owned(),
        len: WAKE_FILE_BYTES,
        touched: WAKE_FILE_BYTES,
    });

    let mut fds = Vec::with_capacity(files.len());
    for file in &files {
        let path = epoch_dir.join(&file.name);
        let fd = rustix::fs::openat(
            &epoch_fd,
            file.name.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            mode,
        )
        .map_err(|e| io_err(&path, "create", e))?;
        undo.files.push(file.name.clone());
        rustix::fs::fchmod(&fd, mode).map_err(|e| io_err(&path, "fchmod", e))?;
        rustix::fs::ftruncate(&fd, file.len).map_err(|e| io_err(&path, "ftruncate", e))?;
        let reserve = if opts.prefault { file.len } else { file.touched };
        reserve_pages(&fd, reserve).map_err(|e| match e {
            Errno::NOSPC => ShmError::NoSpace { path: path.clone(), needed: reserve },
            e => io_err(&path, "fallocate", e),
        })?;
        fds.push(fd);
    }

    // The superblocks go in with pwrite, never through a mapping: a peer that can open the
    // files (consumers of the same group) could truncate one under a mapping, and the
    // daemon's next store into it would be SIGBUS for every service. The header slots need
    // no write: a fresh file reads zero, `seq_commit` 0 is "seq 0 in progress".
    let header_sb = Superblock::header_ring(epoch, stream_id, nslots, pid, now_ns);
    let pool_sbs = pools.iter().map(|p| {
        Superblock::payload_pool(epoch, stream_id, p.pool_id, nslots, p.stride_bytes, pid, now_ns)
    });
    for ((file, fd), sb) in files.iter().zip(&fds).zip(std::iter::once(header_sb).chain(pool_sbs)) {
        let path = epoch_dir.join(&file.name);
        let bytes = sb.as_bytes();
        let written = rustix::io::pwrite(fd, bytes, 0).map_err(|e| io_err(&path, "pwrite", e))?;
        if written != bytes.len() {
            return Err(ShmError::Io {
                path,
                op: "pwrite",
                source: io::Error::new(io::ErrorKind::WriteZero, "short superblock write"),
            });
        }
    }
    // mlock needs mappings; they are never read or written here (the lock faults the pages
    // in; a file truncated meanwhile fails the lock, it cannot fault the daemon).
    let mut maps = Vec::new();
    if opts.mlock {
        for (file, fd) in files.iter().zip(&fds) {
            let path = epoch_dir.join(&file.name);
            let len = usize::try_from(file.len).map_err(|_| ShmError::Map {
                path: path.clone(),
                source: MapError::TooSmall { needed: usize::MAX, len: file.len },
            })?;
            let map = Mapping::from_fd(fd.as_fd(), SizePolicy::AtLeast(len))
                .map_err(|source| ShmError::Map { path: path.clone(), source })?;
            map.lock().map_err(|source| ShmError::Mlock { path, len: file.len, source })?;
            maps.push(map);
        }
    }
    for (file, fd) in files.iter().zip(&fds) {
        rustix::fs::fsync(fd).map_err(|e| io_err(&epoch_dir.join(&file.name), "fsync", e))?;
    }
    undo.disarm();

    Ok(EpochFiles {
        wake_path,
        wake_uri,
        epoch_dir,
        stream_id,
        epoch,
        nslots,
        header_uri,
        pools: pools
            .iter()
            .zip(pool_uris)
            .map(|(p, uri)| PoolFile {
                pool_id: p.pool_id,
                nslots,
                stride_bytes: p.stride_bytes,
                uri,
            })
            .collect(),
        locked: maps,
    })
}

/// Whether `path` (symlinks followed) is on hugetlbfs.
pub fn is_hugetlbfs(path: &Path) -> io::Result<bool> {
    let fd = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
    Ok(fs_type(&fd)? == u64::from(HUGETLBFS_MAGIC))
}

/// The newest epoch directory of a stream: the largest canonical decimal name of a real
/// directory (not a symlink) in the stream directory. `None` if there is none, or no stream
/// directory. Other names are ignored.
pub fn max_epoch_on_disk(layout: &ShmLayout, stream_id: u32) -> io::Result<Option<u64>> {
    let dir = layout.stream_dir(stream_id);
    let fd = match open_listable(&dir) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(epoch_dirs(&fd)?.into_iter().map(|(epoch, _)| epoch).max())
}

/// Epoch GC (spec §5.7): of the stream's epoch directories other than `current`, keeps the
/// newest `keep - 1` and removes each older one that is at least `min_age_ns` old, judged by
/// the epoch value itself (a `CLOCK_MONOTONIC` ns stamp; file mtimes are realtime and useless
/// for this, trap T8): `now_ns - epoch >= min_age_ns`.
///
/// Removes only what the layout puts there: an epoch directory is removed only if every entry
/// in it is a regular file named `header.ring`, `<pool_id>.pool` or `corelane.wake`; one with
/// anything else in it (or a symlink among them) is left untouched. Symlinks are never
/// followed, symlinked epoch "directories" are ignored. Returns what was removed, oldest
/// first.
pub fn gc_epochs(
    layout: &ShmLayout,
    stream_id: u32,
    current: u64,
    keep: u32,
    min_age_ns: u64,
    now_ns: u64,
) -> io::Result<Vec<RemovedEpoch>> {
    let stream_dir = layout.stream_dir(stream_id);
    let stream_fd = match open_listable(&stream_dir) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut others: Vec<(u64, OsString)> =
        epoch_dirs(&stream_fd)?.into_iter().filter(|&(epoch, _)| epoch != current).collect();
    others.sort_unstable_by_key(|&(epoch, _)| epoch);
    let keep_others = usize::try_from(keep.saturating_sub(1)).unwrap_or(usize::MAX);
    let older = others.len().saturating_sub(keep_others);
    let mut removed = Vec::new();
    for (epoch, name) in others.into_iter().take(older) {
        if now_ns.saturating_sub(epoch) < min_age_ns {
            continue;
        }
        if let Some(files) = remove_epoch_dir(&stream_fd, &name)? {
            removed.push(RemovedEpoch { epoch, dir: stream_dir.join(&name), files });
        }
    }
    Ok(removed)
}

/// Removes one epoch directory and its layout files (tests and cleanup). `Ok(false)` if it
/// does not exist; an error if it holds anything the layout does not put there.
pub fn remove_stream_epoch(layout: &ShmLayout, stream_id: u32, epoch: u64) -> io::Result<bool> {
    let stream_fd = match open_listable(&layout.stream_dir(stream_id)) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let name = OsString::from(epoch.to_string());
    match rustix::fs::statat(&stream_fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: expected an epoch directory, seen a {:?}",
                    layout.epoch_dir(stream_id, epoch).display(),
                    FileType::from_raw_mode(st.st_mode)
                ),
            ));
        }
        Ok(_) => {}
    }
    match remove_epoch_dir(&stream_fd, &name)? {
        Some(_) => Ok(true),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: expected only layout files, seen others; left in place",
                layout.epoch_dir(stream_id, epoch).display()
            ),
        )),
    }
}

/// `statfs.f_type` of the file system holding `fd`, as an unsigned 32-bit magic (the
/// kernel's magics are 32-bit; `f_type` is a signed word on some targets).
pub(crate) fn fs_type(fd: impl AsFd) -> Result<u64, Errno> {
    let st = rustix::fs::fstatfs(fd)?;
    // Truncating to 32 bits is intended: file system magics are 32-bit values, and a
    // sign-extended word (32-bit targets) must compare equal to the unsigned constant.
    Ok(u64::from(st.f_type as u32))
}

/// A file to create: its name, size, and how many leading bytes this call writes.
struct NewFile {
    name: String,
    len: u64,
    touched: u64,
}

/// What [`create_epoch`] made so far, removed on drop unless disarmed: files in the epoch
/// directory, then the directories, newest first.
struct Undo {
    /// Directories created: the parent's descriptor and the name.
    dirs: Vec<(OwnedFd, OsString)>,
    /// The epoch directory, once created (the files' parent).
    epoch_fd: Option<OwnedFd>,
    /// Files created in the epoch directory.
    files: Vec<String>,
    /// Whether dropping removes what is recorded (cleared on success).
    armed: bool,
}

impl Undo {
    fn armed() -> Self {
        Self { dirs: Vec::new(), epoch_fd: None, files: Vec::new(), armed: true }
    }

    fn disarm(&mut self) {
        self.armed = false;
        self.dirs.clear();
        self.files.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Cleanup is best effort: the error that started it is what the caller sees.
        if let Some(epoch_fd) = &self.epoch_fd {
            for name in self.files.iter().rev() {
                let _ = rustix::fs::unlinkat(epoch_fd, name.as_str(), AtFlags::empty());
            }
        }
        for (parent, name) in self.dirs.iter().rev() {
            let _ = rustix::fs::unlinkat(parent, name.as_os_str(), AtFlags::REMOVEDIR);
        }
    }
}

fn check_request(nslots: u32, pools: &[PoolSpec], opts: &CreateOptions) -> Result<(), ShmError> {
    if opts.permissions_mode & !0o777 != 0 {
        return Err(ShmError::PermissionsMode { seen: opts.permissions_mode });
    }
    if !nslots.is_power_of_two() {
        return Err(ShmError::Nslots { seen: nslots });
    }
    if pools.is_empty() {
        return Err(ShmError::NoPools);
    }
    for (i, p) in pools.iter().enumerate() {
        if p.pool_id == 0 {
            return Err(ShmError::PoolIdZero);
        }
        if pools[..i].iter().any(|q| q.pool_id == p.pool_id) {
            return Err(ShmError::DuplicatePool { pool_id: p.pool_id });
        }
        if p.stride_bytes == 0 || !p.stride_bytes.is_multiple_of(POOL_STRIDE_ALIGN) {
            return Err(ShmError::Stride { pool_id: p.pool_id, seen: p.stride_bytes });
        }
    }
    Ok(())
}

/// Splits `base` into its longest existing ancestor, resolved (`realpath`), and the names
/// below it that do not exist yet.
fn split_existing(base: &Path) -> Result<(PathBuf, Vec<OsString>), ShmError> {
    let mut missing = Vec::new();
    let mut at = base;
    loop {
        match std::fs::canonicalize(at) {
            Ok(resolved) => {
                missing.reverse();
                return Ok((resolved, missing));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ShmError::Io { path: at.to_owned(), op: "realpath", source })
            }
        }
        match (at.components().next_back(), at.parent()) {
            (Some(Component::Normal(name)), Some(parent)) => {
                missing.push(name.to_owned());
                at = parent;
            }
            // `..` or `.` below a missing directory cannot be created by name.
            _ => return Err(ShmError::NotDirectory { path: at.to_owned(), kind: "missing path" }),
        }
    }
}

/// Creates (or opens, if they exist) `names` below `base`, the last of which must be new;
/// returns the last one's descriptor. Records every directory it creates in `undo`.
fn make_dirs(
    base: OwnedFd,
    base_path: &Path,
    names: &[OsString],
    permissions_mode: u32,
    undo: &mut Undo,
) -> Result<OwnedFd, ShmError> {
    let dir_mode = Mode::from_raw_mode(permissions_mode | 0o110);
    let mut parent = base;
    let mut path = base_path.to_owned();
    for (i, name) in names.iter().enumerate() {
        path.push(name);
        let last = i + 1 == names.len();
        let io_err = |op, e: Errno| ShmError::Io { path: path.clone(), op, source: e.into() };
        match rustix::fs::mkdirat(&parent, name.as_os_str(), dir_mode) {
            Ok(()) => {
                let keep = parent.try_clone().map_err(|e| ShmError::Io {
                    path: path.clone(),
                    op: "dup",
                    source: e,
                })?;
                undo.dirs.push((keep, name.clone()));
                // The umask took bits off the mkdir mode: put them back, exactly.
                rustix::fs::chmodat(&parent, name.as_os_str(), dir_mode, AtFlags::empty())
                    .map_err(|e| io_err("chmod", e))?;
            }
            Err(Errno::EXIST) if last => return Err(ShmError::EpochExists { path }),
            Err(Errno::EXIST) => {}
            Err(Errno::NOSPC) => return Err(ShmError::NoSpace { path, needed: 0 }),
            Err(e) => return Err(io_err("mkdir", e)),
        }
        let next = open_dir_at(&parent, name).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => {
                let kind = match rustix::fs::statat(
                    &parent,
                    name.as_os_str(),
                    AtFlags::SYMLINK_NOFOLLOW,
                ) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => "symlink",
                    _ => "file that is not a directory",
                };
                ShmError::NotDirectory { path: path.clone(), kind }
            }
            e => io_err("open", e),
        })?;
        parent = next;
    }
    Ok(parent)
}

/// Reserves (and zeroes) the first `len` bytes of a file: `fallocate` mode 0. File systems
/// without `fallocate` get zeros written instead, which reserves the same pages.
fn reserve_pages(fd: &OwnedFd, len: u64) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(fd, FallocateFlags::empty(), 0, len) {
        Err(Errno::OPNOTSUPP) => write_zeros(fd, len),
        other => other,
    }
}

fn write_zeros(fd: &OwnedFd, len: u64) -> Result<(), Errno> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        // Bounded by the buffer (1 MiB), so the cast keeps every bit.
        let n = (len - at).min(zeros.len() as u64) as usize;
        let written = rustix::io::pwrite(fd, &zeros[..n], at)?;
        if written == 0 {
            return Err(Errno::NOSPC);
        }
        at += written as u64;
    }
    Ok(())
}

fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
}

fn open_dir_at(parent: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(parent, name, flags, Mode::empty())
}

/// A directory opened for listing (`O_RDONLY`: `getdents` refuses `O_PATH` descriptors).
fn open_listable(path: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
}

fn open_listable_at(parent: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(parent, name, flags, Mode::empty())
}

/// The epoch directories in a stream directory: canonical decimal names of real directories.
fn epoch_dirs(stream_fd: &OwnedFd) -> io::Result<Vec<(u64, OsString)>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(stream_fd)? {
        let entry = entry?;
        let Some(epoch) = name_str(entry.file_name()).and_then(parse_canonical::<u64>) else {
            continue;
        };
        let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_owned();
        let st = match rustix::fs::statat(stream_fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue, // removed meanwhile
            Err(e) => return Err(e.into()),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            out.push((epoch, name));
        }
    }
    Ok(out)
}

/// Removes epoch directory `name` of the stream if it holds only layout files (regular files);
/// returns the names removed, or `None` (touching nothing) if it holds anything else.
fn remove_epoch_dir(stream_fd: &OwnedFd, name: &OsStr) -> io::Result<Option<Vec<String>>> {
    let epoch_fd = match open_listable_at(stream_fd, name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        // A symlink or a non-directory: not an epoch directory.
        Err(Errno::LOOP | Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut files = Vec::new();
    for entry in rustix::fs::Dir::read_from(&epoch_fd)? {
        let entry = entry?;
        let bytes = entry.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let Some(file) = name_str(entry.file_name()).filter(|n| is_epoch_file_name(n)) else {
            return Ok(None);
        };
        let st = rustix::fs::statat(&epoch_fd, file, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        files.push(file.to_owned());
    }
    files.sort();
    for file in &files {
        rustix::fs::unlinkat(&epoch_fd, file.as_str(), AtFlags::empty())?;
    }
    match rustix::fs::unlinkat(stream_fd, name, AtFlags::REMOVEDIR) {
        Ok(()) => Ok(Some(files)),
        // Something appeared meanwhile: leave it, the layout files are gone.
        Err(Errno::NOTEMPTY | Errno::EXIST) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn name_str(name: &CStr) -> Option<&str> {
    name.to_str().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_that_break_the_layout_are_refused_before_anything_is_made() {
        let opts = CreateOptions::default();
        let pool = |pool_id, stride_bytes| PoolSpec { pool_id, stride_bytes };
        assert!(matches!(
            check_request(48, &[pool(1, 64)], &opts),
            Err(ShmError::Nslots { seen: 48 })
        ));
        assert!(matches!(
            check_request(0, &[pool(1, 64)], &opts),
            Err(ShmError::Nslots { seen: 0 })
        ));
        assert!(matches!(check_request(4, &[], &opts), Err(ShmError::NoPools)));
        assert!(matches!(check_request(4, &[pool(0, 64)], &opts), Err(ShmError::PoolIdZero)));
        assert!(matches!(
            check_request(4, &[pool(1, 64), pool(1, 128)], &opts),
            Err(ShmError::DuplicatePool { pool_id: 1 })
        ));
        for stride in [0, 100, 63] {
            assert!(matches!(
                check_request(4, &[pool(2, stride)], &opts),
                Err(ShmError::Stride { pool_id: 2, .. })
            ));
        }
        let bad_mode = CreateOptions { permissions_mode: 0o4770, ..opts };
        assert!(matches!(
            check_request(4, &[pool(1, 64)], &bad_mode),
            Err(ShmError::PermissionsMode { .. })
        ));
        assert!(check_request(4, &[pool(1, 64), pool(2, 192)], &opts).is_ok());
    }

    #[test]
    fn split_existing_finds_the_existing_ancestor() {
        let (existing, missing) = split_existing(Path::new("/dev/shm/corelane-nope/a/b")).unwrap();
        assert_eq!(existing, std::fs::canonicalize("/dev/shm").unwrap());
        assert_eq!(missing, ["corelane-nope", "a", "b"].map(OsString::from));
        let (existing, missing) = split_existing(Path::new("/")).unwrap();
        assert_eq!(existing, Path::new("/"));
        assert!(missing.is_empty());
    }
}
