//! Region URIs (`shm:file?path=<abs>|require_hugepages=<bool>`, spec §4) and the checks a
//! process runs before it maps the file one names (conformance 29-37).
//!
//! [`ShmUri::parse`] is exact where the C parser is lenient (trap T11: it accepts key
//! prefixes such as `p=`): the scheme must be `shm:file?`, parameters are separated by `|`,
//! the only keys are `path` (required, absolute) and `require_hugepages` (`true` or `false`),
//! each at most once, and nothing may be empty. [`open_region`] then fails closed on every
//! rule of §4: canonical path inside an allowed directory on a component boundary, no
//! symlink anywhere on the path, a regular file that is the canonical path's inode, the
//! permission policy, the exact size, and hugetlbfs when asked for.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::files::{fs_type, HUGETLBFS_MAGIC};

/// Longest URI accepted, in bytes.
pub const MAX_URI_BYTES: usize = 4096;
/// The only scheme: everything before the parameters.
pub const URI_PREFIX: &str = "shm:file?";

/// A parsed region URI: an absolute path and whether the region must be on hugetlbfs.
///
/// Its [`Display`](fmt::Display) form always spells `require_hugepages` out, as the C driver
/// does, and parses back to the same value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShmUri {
    path: String,
    require_hugepages: bool,
}

/// Why a URI was refused, or the file it names was not opened. Each rule has its own variant.
#[derive(Debug, thiserror::Error)]
pub enum UriError {
    /// The URI is longer than [`MAX_URI_BYTES`].
    #[error("shm uri expected at most {MAX_URI_BYTES} bytes, seen {len}")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The URI does not start with `shm:file?`.
    #[error("shm uri expected scheme \"{URI_PREFIX}\", seen {uri:?}")]
    Scheme {
        /// The start of the URI.
        uri: String,
    },
    /// A parameter without `=`.
    #[error("shm uri parameter expected key=value, seen {param:?}")]
    Param {
        /// The parameter.
        param: String,
    },
    /// A parameter with an empty key.
    #[error("shm uri parameter key expected non-empty, seen {param:?}")]
    EmptyKey {
        /// The parameter.
        param: String,
    },
    /// A parameter with an empty value.
    #[error("shm uri parameter {key} expected a value, seen none")]
    EmptyValue {
        /// Its key.
        key: String,
    },
    /// A key other than `path` and `require_hugepages` (matched exactly, never by prefix).
    #[error("shm uri key expected path or require_hugepages, seen {key:?}")]
    UnknownKey {
        /// The key.
        key: String,
    },
    /// A key given twice.
    #[error("shm uri key {key} expected once, seen twice")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// `require_hugepages` is not literally `true` or `false`.
    #[error("shm uri require_hugepages expected true or false, seen {value:?}")]
    InvalidBool {
        /// The value.
        value: String,
    },
    /// No `path` parameter.
    #[error("shm uri expected a path parameter, seen none")]
    MissingPath,
    /// The path is not absolute.
    #[error("shm uri path expected absolute, seen {path:?}")]
    RelativePath {
        /// The path.
        path: String,
    },
    /// The path holds a byte no URI path may hold (`|`, NUL) or is not UTF-8.
    #[error("shm uri path expected UTF-8 without '|' or NUL, seen {path:?}")]
    InvalidPath {
        /// The path (lossy).
        path: String,
    },
    /// The allowlist is empty: every mapping is refused (conformance 37).
    #[error("{path}: no allowed base directory is configured, so no region may be mapped")]
    NoAllowlist {
        /// The path asked for.
        path: PathBuf,
    },
    /// An allowed directory is not an absolute path.
    #[error("allowed base dir expected an absolute path, seen {dir:?}")]
    AllowedDirRelative {
        /// The directory.
        dir: PathBuf,
    },
    /// An allowed directory could not be resolved (it must exist).
    #[error("allowed base dir {dir}: expected an existing directory, realpath failed: {source}")]
    AllowedDirMissing {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// An allowed directory resolves to something that is not a directory.
    #[error("allowed base dir {dir}: expected a directory, seen a {kind}")]
    AllowedDirNotDir {
        /// The directory.
        dir: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The path could not be resolved.
    #[error("{path}: realpath failed: {source}")]
    Realpath {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The canonical path is not inside any allowed directory (conformance 33).
    #[error("{path}: canonical path {canonical} expected inside one of [{allowed}], seen outside")]
    OutsideAllowlist {
        /// The path asked for.
        path: PathBuf,
        /// Its canonical form.
        canonical: PathBuf,
        /// The allowed directories, comma separated.
        allowed: String,
    },
    /// A component of the path is a symlink (conformance 34).
    #[error("{path}: expected no symlink on the path, seen one at {component}")]
    Symlink {
        /// The path.
        path: PathBuf,
        /// The path up to and including the symlink.
        component: PathBuf,
    },
    /// The path does not end in a file name (it ends in `..`, or is `/`).
    #[error("{path}: expected a path that ends in a file name")]
    NoFileName {
        /// The path.
        path: PathBuf,
    },
    /// Opening a component of the path failed.
    #[error("{path}: opening {component} failed: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The component that failed.
        component: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The path names a FIFO, device, socket or directory (conformance 35).
    #[error("{path}: expected a regular file, seen a {kind}")]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The file opened is not the inode the canonical path names (it was replaced meanwhile).
    #[error("{path}: opened file expected to be dev {expected_dev} inode {expected_ino} (the canonical path's), seen dev {dev} inode {ino}")]
    InodeMismatch {
        /// The path.
        path: PathBuf,
        /// Device of the canonical path.
        expected_dev: u64,
        /// Inode of the canonical path.
        expected_ino: u64,
        /// Device of the opened file.
        dev: u64,
        /// Inode of the opened file.
        ino: u64,
    },
    /// The file grants permissions to others (`mode & 0o007`, conformance 36).
    #[error("{path}: file mode expected no permission bits for others, seen {mode:#o}")]
    OtherBits {
        /// The path.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
    /// The file's owner is not the expected uid.
    #[error("{path}: file owner expected uid {expected}, seen uid {seen}")]
    Owner {
        /// The path.
        path: PathBuf,
        /// The expected uid.
        expected: u32,
        /// The owner.
        seen: u32,
    },
    /// The file's group is not the expected gid.
    #[error("{path}: file group expected gid {expected}, seen gid {seen}")]
    Group {
        /// The path.
        path: PathBuf,
        /// The expected gid.
        expected: u32,
        /// The group.
        seen: u32,
    },
    /// The file's size is not the layout's.
    #[error("{path}: file size expected exactly {expected} bytes, seen {seen}")]
    Size {
        /// The path.
        path: PathBuf,
        /// The layout's size.
        expected: u64,
        /// The file's.
        seen: u64,
    },
    /// `require_hugepages` and the file is not on hugetlbfs (conformance 32).
    #[error("{path}: require_hugepages expected a hugetlbfs file (f_type {HUGETLBFS_MAGIC:#x}), seen f_type {f_type:#x}")]
    NotHugetlbfs {
        /// The path.
        path: PathBuf,
        /// The file system's `f_type`.
        f_type: u64,
    },
    /// `fstat` or `fstatfs` on the opened file failed.
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

impl ShmUri {
    /// A URI for `path` (absolute, UTF-8, no `|` or NUL).
    pub fn new(path: &Path, require_hugepages: bool) -> Result<Self, UriError> {
        let Some(text) = path.to_str() else {
            return Err(UriError::InvalidPath { path: path.to_string_lossy().into_owned() });
        };
        if text.contains(['|', '\0']) {
            return Err(UriError::InvalidPath { path: text.to_owned() });
        }
        if !text.starts_with('/') {
            return Err(UriError::RelativePath { path: text.to_owned() });
        }
        let uri = Self { path: text.to_owned(), require_hugepages };
        let len = uri.display_len();
        if len > MAX_URI_BYTES {
            return Err(UriError::TooLong { len });
        }
        Ok(uri)
    }

    /// Parses a URI exactly per spec §4 (see the module doc). At most [`MAX_URI_BYTES`] bytes,
    /// counted on the canonical form (`require_hugepages` spelled out, as [`Display`](fmt::Display)
    /// writes it): a 4096-byte URI that omits the flag is refused, so that everything
    /// accepted can be written back within the limit.
    pub fn parse(text: &str) -> Result<Self, UriError> {
        if text.len() > MAX_URI_BYTES {
            return Err(UriError::TooLong { len: text.len() });
        }
        let Some(params) = text.strip_prefix(URI_PREFIX) else {
            return Err(UriError::Scheme { uri: shorten(text) });
        };
        if params.is_empty() {
            return Err(UriError::MissingPath);
        }
        let mut path: Option<&str> = None;
        let mut require_hugepages: Option<bool> = None;
        for param in params.split('|') {
            let Some((key, value)) = param.split_once('=') else {
                return Err(UriError::Param { param: shorten(param) });
            };
            if key.is_empty() {
                return Err(UriError::EmptyKey { param: shorten(param) });
            }
            if value.is_empty() {
                return Err(UriError::EmptyValue { key: shorten(key) });
            }
            match key {
                "path" => {
                    if path.replace(value).is_some() {
                        return Err(UriError::DuplicateKey { key: key.to_owned() });
                    }
                }
                "require_hugepages" => {
                    let flag = match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(UriError::InvalidBool { value: shorten(value) }),
                    };
                    if require_hugepages.replace(flag).is_some() {
                        return Err(UriError::DuplicateKey { key: key.to_owned() });
                    }
                }
                _ => return Err(UriError::UnknownKey { key: shorten(key) }),
            }
        }
        let path = path.ok_or(UriError::MissingPath)?;
        if !path.starts_with('/') {
            return Err(UriError::RelativePath { path: shorten(path) });
        }
        if path.contains('\0') {
            return Err(UriError::InvalidPath { path: shorten(path) });
        }
        let uri =
            Self { path: path.to_owned(), require_hugepages: require_hugepages.unwrap_or(false) };
        // The canonical form spells require_hugepages out; refuse a URI whose canonical form
        // would pass the limit, so that every URI accepted can be written back and re-read.
        let canonical_len = uri.display_len();
        if canonical_len > MAX_URI_BYTES {
            return Err(UriError::TooLong { len: canonical_len });
        }
        Ok(uri)
    }

    /// The absolute path, as written in the URI (not yet resolved).
    pub fn path(&self) -> &Path {
        Path::new(&self.path)
    }

    /// Whether the region must live on hugetlbfs.
    pub fn require_hugepages(&self) -> bool {
        self.require_hugepages
    }

    /// Bytes of the [`Display`](fmt::Display) form.
    fn display_len(&self) -> usize {
        let flag = if self.require_hugepages { "true" } else { "false" };
        URI_PREFIX.len()
            + "path=".len()
            + self.path.len()
            + "|require_hugepages=".len()
            + flag.len()
    }
}

impl fmt::Display for ShmUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{URI_PREFIX}path={}|require_hugepages={}", self.path, self.require_hugepages)
    }
}

impl std::str::FromStr for ShmUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, UriError> {
        Self::parse(s)
    }
}

/// The directories regions may live in (`shm.allowed_base_dirs`), each resolved once.
/// An empty allowlist refuses every mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    dirs: Vec<PathBuf>,
}

impl Allowlist {
    /// Resolves each directory (`realpath`); each must be absolute, exist and be a directory.
    pub fn new<I, P>(dirs: I) -> Result<Self, UriError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        let mut resolved = Vec::new();
        for dir in dirs {
            let dir = dir.as_ref();
            if !dir.is_absolute() {
                return Err(UriError::AllowedDirRelative { dir: dir.to_owned() });
            }
            let canonical = std::fs::canonicalize(dir)
                .map_err(|source| UriError::AllowedDirMissing { dir: dir.to_owned(), source })?;
            let meta = std::fs::metadata(&canonical)
                .map_err(|source| UriError::AllowedDirMissing { dir: dir.to_owned(), source })?;
            if !meta.is_dir() {
                let kind =
                    kind_name(FileType::from_raw_mode(std::os::unix::fs::MetadataExt::mode(&meta)));
                return Err(UriError::AllowedDirNotDir { dir: dir.to_owned(), kind });
            }
            if !resolved.contains(&canonical) {
                resolved.push(canonical);
            }
        }
        Ok(Self { dirs: resolved })
    }

    /// The allowlist that refuses everything.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The resolved directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Whether `canonical` (already resolved) is strictly inside an allowed directory, on a
    /// component boundary: `/dev/shm/x` is inside `/dev/shm`, `/dev/shmx/x` is not.
    pub fn contains(&self, canonical: &Path) -> bool {
        // `Path::starts_with` compares whole components, never string prefixes.
        self.dirs.iter().any(|dir| canonical != dir && canonical.starts_with(dir))
    }
}

/// Who may own a region file and what it may grant (the C permission policy, default on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermissionPolicy {
    /// Refuse files with any permission bit for others (`mode & 0o007`).
    pub reject_other_bits: bool,
    /// Refuse files not owned by this uid.
    pub expected_uid: Option<u32>,
    /// Refuse files whose group is not this gid.
    pub expected_gid: Option<u32>,
}

impl Default for PermissionPolicy {
    fn default() -> Self {
        Self { reject_other_bits: true, expected_uid: None, expected_gid: None }
    }
}

impl PermissionPolicy {
    /// A policy that checks nothing (the C policy switched off).
    pub const DISABLED: Self =
        Self { reject_other_bits: false, expected_uid: None, expected_gid: None };
}

/// How the file is opened: consumers read, producers write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `O_RDONLY` (consumers; map with `ReadOnlyMapping`).
    ReadOnly,
    /// `O_RDWR` (producers; map with `Mapping`).
    ReadWrite,
}

/// What [`open_region`] checked about the file it opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionFile {
    /// The canonical (resolved) path.
    pub canonical: PathBuf,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes (equal to the expected length).
    pub len: u64,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Whether the file system is hugetlbfs.
    pub hugetlbfs: bool,
}

/// Opens the file `uri` names after every check of spec §4, failing closed:
///
/// 1. the allowlist is not empty (conformance 37);
/// 2. the path is absolute (conformance 30), then resolved with `realpath`;
/// 3. the canonical path is inside an allowed directory on a component boundary
///    (conformance 33);
/// 4. the path *as written* is walked from `/` one component at a time with
///    `openat(O_PATH | O_DIRECTORY | O_NOFOLLOW)`, the file itself opened with
///    `openat(O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)` (non-blocking so a FIFO cannot hang the
///    open): any symlink, on a directory or the file, is refused (conformance 34);
/// 5. `fstat` of the descriptor: a regular file (conformance 35) with the device and inode
///    that `stat` of the canonical path shows;
/// 6. the permission policy: no bits for others unless disabled, expected uid and gid
///    (conformance 36);
/// 7. the size is **exactly** `expected_len` (`64 + nslots * 256` or `64 + nslots * stride`).
///    The C consumer only checks that the file holds at least the 64-byte superblock (spec §8
///    item 8); a larger file is refused here too, because it is not the layout announced;
/// 8. with `require_hugepages`, `fstatfs` must report hugetlbfs (conformance 32).
///
/// Returns the open file (map it with [`crate::mapping::ReadOnlyMapping::map`] or
/// [`crate::mapping::Mapping::from_fd`]) and what was checked.
pub fn open_region(
    uri: &ShmUri,
    allowlist: &Allowlist,
    policy: &PermissionPolicy,
    access: Access,
    expected_len: u64,
) -> Result<(File, RegionFile), UriError> {
    let path = uri.path();
    if allowlist.dirs.is_empty() {
        return Err(UriError::NoAllowlist { path: path.to_owned() });
    }
    if !path.is_absolute() {
        return Err(UriError::RelativePath { path: uri.path.clone() });
    }
    let canonical = std::fs::canonicalize(path)
        .map_err(|source| UriError::Realpath { path: path.to_owned(), source })?;
    if !allowlist.contains(&canonical) {
        let allowed =
            allowlist.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(UriError::OutsideAllowlist { path: path.to_owned(), canonical, allowed });
    }

    let fd = open_without_symlinks(path, access)?;
    let io_err = |op, e: Errno| UriError::Io { path: path.to_owned(), op, source: e.into() };
    let st = rustix::fs::fstat(&fd).map_err(|e| io_err("fstat", e))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(UriError::NotRegularFile { path: path.to_owned(), kind: kind_name(kind) });
    }
    let named = rustix::fs::stat(&canonical).map_err(|e| io_err("stat", e))?;
    if (named.st_dev, named.st_ino) != (st.st_dev, st.st_ino) {
        return Err(UriError::InodeMismatch {
            path: path.to_owned(),
            expected_dev: named.st_dev,
            expected_ino: named.st_ino,
            dev: st.st_dev,
            ino: st.st_ino,
        });
    }

    let mode = st.st_mode & 0o7777;
    if policy.reject_other_bits && mode & 0o007 != 0 {
        return Err(UriError::OtherBits { path: path.to_owned(), mode });
    }
    if let Some(expected) = policy.expected_uid.filter(|&uid| uid != st.st_uid) {
        return Err(UriError::Owner { path: path.to_owned(), expected, seen: st.st_uid });
    }
    if let Some(expected) = policy.expected_gid.filter(|&gid| gid != st.st_gid) {
        return Err(UriError::Group { path: path.to_owned(), expected, seen: st.st_gid });
    }
    // A negative size is impossible for a regular file; treat it as 0 rather than trust it.
    let len = u64::try_from(st.st_size).unwrap_or(0);
    if len != expected_len {
        return Err(UriError::Size { path: path.to_owned(), expected: expected_len, seen: len });
    }
    let f_type = fs_type(&fd).map_err(|e| io_err("fstatfs", e))?;
    let hugetlbfs = f_type == u64::from(HUGETLBFS_MAGIC);
    if uri.require_hugepages && !hugetlbfs {
        return Err(UriError::NotHugetlbfs { path: path.to_owned(), f_type });
    }
    let info = RegionFile {
        canonical,
        dev: st.st_dev,
        ino: st.st_ino,
        len,
        mode,
        uid: st.st_uid,
        gid: st.st_gid,
        hugetlbfs,
    };
    Ok((File::from(fd), info))
}

/// Opens `path` walking it from `/`, refusing a symlink at any component.
fn open_without_symlinks(path: &Path, access: Access) -> Result<OwnedFd, UriError> {
    let components: Vec<Component<'_>> = path.components().collect();
    let Some((Component::Normal(name), dirs)) = components.split_last() else {
        return Err(UriError::NoFileName { path: path.to_owned() });
    };
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut walked = PathBuf::from("/");
    let open_err = |walked: &Path, e: Errno| UriError::Open {
        path: path.to_owned(),
        component: walked.to_owned(),
        source: e.into(),
    };
    let mut dir =
        rustix::fs::openat(CWD, "/", dir_flags, Mode::empty()).map_err(|e| open_err(&walked, e))?;
    for component in dirs {
        let step: &OsStr = match component {
            Component::RootDir => continue,
            Component::CurDir => continue,
            Component::ParentDir => OsStr::new(".."),
            Component::Normal(name) => name,
            // Unix paths have no prefixes.
            Component::Prefix(_) => return Err(UriError::NoFileName { path: path.to_owned() }),
        };
        walked.push(step);
        refuse_symlink(&dir, step, path, &walked)?;
        dir = rustix::fs::openat(&dir, step, dir_flags, Mode::empty()).map_err(|e| match e {
            Errno::LOOP => UriError::Symlink { path: path.to_owned(), component: walked.clone() },
            e => open_err(&walked, e),
        })?;
    }
    walked.push(name);
    let st = refuse_symlink(&dir, name, path, &walked)?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(UriError::NotRegularFile { path: path.to_owned(), kind: kind_name(kind) });
    }
    let rw = match access {
        Access::ReadOnly => OFlags::RDONLY,
        Access::ReadWrite => OFlags::RDWR,
    };
    let flags = rw | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    rustix::fs::openat(&dir, *name, flags, Mode::empty()).map_err(|e| match e {
        Errno::LOOP => UriError::Symlink { path: path.to_owned(), component: walked.clone() },
        e => open_err(&walked, e),
    })
}

/// `lstat` of `name` in `dir`; a symlink is refused.
fn refuse_symlink(
    dir: &OwnedFd,
    name: &OsStr,
    path: &Path,
    walked: &Path,
) -> Result<rustix::fs::Stat, UriError> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
        UriError::Open { path: path.to_owned(), component: walked.to_owned(), source: e.into() }
    })?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        return Err(UriError::Symlink { path: path.to_owned(), component: walked.to_owned() });
    }
    Ok(st)
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "file of unknown type",
    }
}

/// At most 80 bytes of outside text for an error message (on a char boundary).
fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> UriError {
        ShmUri::parse(text).unwrap_err()
    }

    #[test]
    fn parses_the_c_driver_form_and_round_trips() {
        let text =
            "shm:file?path=/dev/shm/tensorpool-u/default/1/2/header.ring|require_hugepages=false";
        let uri = ShmUri::parse(text).unwrap();
        assert_eq!(uri.path(), Path::new("/dev/shm/tensorpool-u/default/1/2/header.ring"));
        assert!(!uri.require_hugepages());
        assert_eq!(uri.to_string(), text);
        let uri = ShmUri::parse("shm:file?require_hugepages=true|path=/mnt/huge/1.pool").unwrap();
        assert!(uri.require_hugepages());
        assert_eq!(uri.to_string(), "shm:file?path=/mnt/huge/1.pool|require_hugepages=true");
        assert_eq!(ShmUri::parse(&uri.to_string()).unwrap(), uri);
        // require_hugepages defaults to false, and Display spells it out.
        let uri = ShmUri::parse("shm:file?path=/a=b").unwrap();
        assert_eq!(uri.path(), Path::new("/a=b"));
        assert_eq!(uri.to_string(), "shm:file?path=/a=b|require_hugepages=false");
    }

    /// Conformance 29: only `shm:file?`.
    #[test]
    fn c29_other_schemes_are_refused() {
        for text in [
            "aeron:ipc?path=/dev/shm/x",
            "shm:memfd?path=/dev/shm/x",
            "SHM:file?path=/dev/shm/x",
            "shm:file&path=/dev/shm/x",
            "shm:file/path=/dev/shm/x",
            "file:///dev/shm/x",
            "/dev/shm/x",
            "",
        ] {
            assert!(matches!(parse_err(text), UriError::Scheme { .. }), "{text}");
        }
    }

    /// Conformance 30: path missing or relative.
    #[test]
    fn c30_missing_or_relative_path_is_refused() {
        assert!(matches!(parse_err("shm:file?"), UriError::MissingPath));
        assert!(matches!(parse_err("shm:file?require_hugepages=false"), UriError::MissingPath));
        for text in ["shm:file?path=dev/shm/x", "shm:file?path=./x", "shm:file?path=~/x"] {
            assert!(matches!(parse_err(text), UriError::RelativePath { .. }), "{text}");
        }
        assert!(matches!(parse_err("shm:file?path=/a\0b"), UriError::InvalidPath { .. }));
    }

    /// Conformance 31 and trap T11: exact keys, no empties, literal booleans, no repeats.
    #[test]
    fn c31_unknown_empty_duplicate_and_bad_bool_are_refused() {
        let unknown = [
            "shm:file?p=/dev/shm/x",
            "shm:file?pat=/dev/shm/x",
            "shm:file?paths=/dev/shm/x",
            "shm:file?PATH=/dev/shm/x",
            "shm:file?path=/x|require=true",
            "shm:file?path=/x|require_hugepage=true",
            "shm:file?path=/x|mode=0600",
            "shm:file? path=/x",
        ];
        for text in unknown {
            assert!(matches!(parse_err(text), UriError::UnknownKey { .. }), "{text}");
        }
        assert!(matches!(parse_err("shm:file?=/x"), UriError::EmptyKey { .. }));
        assert!(matches!(parse_err("shm:file?path=/x|=true"), UriError::EmptyKey { .. }));
        assert!(matches!(parse_err("shm:file?path="), UriError::EmptyValue { .. }));
        assert!(matches!(
            parse_err("shm:file?path=/x|require_hugepages="),
            UriError::EmptyValue { .. }
        ));
        assert!(matches!(parse_err("shm:file?path=/x|"), UriError::Param { .. }));
        assert!(matches!(
            parse_err("shm:file?path=/x||require_hugepages=true"),
            UriError::Param { .. }
        ));
        assert!(matches!(parse_err("shm:file?path"), UriError::Param { .. }));
        // `&` is no separator: it is part of the path, and sets no flag.
        let uri = ShmUri::parse("shm:file?path=/x&require_hugepages=true").unwrap();
        assert_eq!(uri.path(), Path::new("/x&require_hugepages=true"));
        assert!(!uri.require_hugepages());
        for value in ["TRUE", "1", "yes", "tru", "truee", "false ", "0"] {
            let text = format!("shm:file?path=/x|require_hugepages={value}");
            assert!(matches!(parse_err(&text), UriError::InvalidBool { .. }), "{text}");
        }
        assert!(matches!(parse_err("shm:file?path=/x|path=/y"), UriError::DuplicateKey { .. }));
        assert!(matches!(
            parse_err("shm:file?path=/x|require_hugepages=true|require_hugepages=true"),
            UriError::DuplicateKey { .. }
        ));
    }

    #[test]
    fn length_is_capped_at_4096_bytes() {
        let fixed = URI_PREFIX.len() + "path=/".len() + "|require_hugepages=false".len();
        let path = format!("/{}", "a".repeat(MAX_URI_BYTES - fixed));
        let text = format!("{URI_PREFIX}path={path}|require_hugepages=false");
        assert_eq!(text.len(), MAX_URI_BYTES);
        let uri = ShmUri::parse(&text).unwrap();
        assert_eq!(uri.to_string(), text);
        let longer = format!("{URI_PREFIX}path={path}a|require_hugepages=false");
        assert!(matches!(parse_err(&longer), UriError::TooLong { len: 4097 }));
        // The same path with `true` needs one byte less.
        let truthy = format!("{URI_PREFIX}path={path}|require_hugepages=true");
        assert_eq!(ShmUri::parse(&truthy).unwrap().to_string(), truthy);
        // Omitting the flag does not buy room: the canonical form is what counts.
        let bare = format!("{URI_PREFIX}path={path}aaaa");
        assert!(bare.len() < MAX_URI_BYTES);
        assert!(matches!(parse_err(&bare), UriError::TooLong { .. }));
        assert!(matches!(parse_err(&"x".repeat(5000)), UriError::TooLong { len: 5000 }));
        // new() refuses what Display could not write within the limit.
        assert!(ShmUri::new(Path::new(&path), false).is_ok());
        assert!(matches!(
            ShmUri::new(Path::new(&format!("{path}a")), false),
            Err(UriError::TooLong { .. })
        ));
    }

    #[test]
    fn new_refuses_paths_a_uri_cannot_carry() {
        assert!(matches!(ShmUri::new(Path::new("/a|b"), false), Err(UriError::InvalidPath { .. })));
        assert!(matches!(ShmUri::new(Path::new("a"), false), Err(UriError::RelativePath { .. })));
        let uri = ShmUri::new(Path::new("/dev/shm/x"), true).unwrap();
        assert_eq!(uri.to_string(), "shm:file?path=/dev/shm/x|require_hugepages=true");
    }

    #[test]
    fn error_texts_say_expected_and_seen() {
        assert_eq!(
            parse_err("shm:file?p=/x").to_string(),
            "shm uri key expected path or require_hugepages, seen \"p\""
        );
        assert_eq!(
            parse_err("shm:file?path=/x|require_hugepages=yes").to_string(),
            "shm uri require_hugepages expected true or false, seen \"yes\""
        );
        let long = format!("x{}", "y".repeat(200));
        let text = parse_err(&long).to_string();
        assert!(text.len() < 200, "outside text is shortened: {text}");
    }

    #[test]
    fn allowlist_matches_on_component_boundaries() {
        let list = Allowlist { dirs: vec![PathBuf::from("/dev/shm")] };
        assert!(list.contains(Path::new("/dev/shm/a")));
        assert!(list.contains(Path::new("/dev/shm/a/b/c.pool")));
        assert!(!list.contains(Path::new("/dev/shmx/a")));
        assert!(!list.contains(Path::new("/dev/shm")));
        assert!(!list.contains(Path::new("/dev/sh")));
        assert!(!list.contains(Path::new("/etc/passwd")));
        assert!(!Allowlist::empty().contains(Path::new("/dev/shm/a")));
    }

    #[test]
    fn allowlist_dirs_must_exist_be_absolute_and_be_dirs() {
        assert!(matches!(Allowlist::new(["dev/shm"]), Err(UriError::AllowedDirRelative { .. })));
        assert!(matches!(
            Allowlist::new(["/nonexistent/corelane-dir"]),
            Err(UriError::AllowedDirMissing { .. })
        ));
        assert!(matches!(Allowlist::new(["/dev/null"]), Err(UriError::AllowedDirNotDir { .. })));
        let list = Allowlist::new(["/dev/shm", "/dev/shm/"]).unwrap();
        assert_eq!(list.dirs(), [PathBuf::from("/dev/shm")]);
    }
}
