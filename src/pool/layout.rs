//! The canonical file layout of the tensor pool (spec §4):
//!
//! ```text
//! <base_dir>/tensorpool-<user>/<namespace>/<stream_id>/<epoch>/header.ring
//! <base_dir>/tensorpool-<user>/<namespace>/<stream_id>/<epoch>/<pool_id>.pool
//! <base_dir>/tensorpool-<user>/<namespace>/<stream_id>/<epoch>/corelane.wake
//! ```
//!
//! `<user>` is the effective user's name, sanitised (every byte outside `[A-Za-z0-9_-]`
//! becomes `_`; an empty name becomes `unknown`), `<namespace>` must match `[A-Za-z0-9_-]+`
//! (refused otherwise: this is what keeps `..`, `/` and the empty name out of the paths), and
//! stream id and epoch are decimal.
//!
//! `corelane.wake` is a corelane-only sidecar that a C implementation never opens: a file of
//! exactly [`WAKE_FILE_BYTES`] zero bytes that producer and consumers map read-write for
//! futex waits. Zero is its valid initial state; its contents are defined by the wait layer.
//!
//! Only the driver derives paths; consumers use the URIs they are given and never scan.

use std::path::{Path, PathBuf};

/// Name of the header-ring file in an epoch directory.
pub const HEADER_FILE: &str = "header.ring";
/// Suffix of a payload-pool file (`<pool_id>.pool`).
pub const POOL_SUFFIX: &str = ".pool";
/// Name of corelane's wake sidecar in an epoch directory.
pub const WAKE_FILE: &str = "corelane.wake";
/// Size of the wake sidecar; created zeroed.
pub const WAKE_FILE_BYTES: u64 = 64;
/// Prefix of the per-user directory under the base directory.
pub const USER_DIR_PREFIX: &str = "tensorpool-";
/// User name used when the effective user has no usable name.
pub const UNKNOWN_USER: &str = "unknown";

/// Why a layout was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShmLayoutError {
    /// The namespace is empty or holds a byte outside `[A-Za-z0-9_-]`.
    #[error("shm namespace expected one or more of [A-Za-z0-9_-], seen {namespace:?}")]
    Namespace {
        /// The namespace given.
        namespace: String,
    },
    /// The base directory is not an absolute path.
    #[error("shm base_dir expected an absolute path, seen {base_dir:?}")]
    BaseDirNotAbsolute {
        /// The directory given.
        base_dir: PathBuf,
    },
}

/// Where one user's streams of one namespace live under a base directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmLayout {
    base_dir: PathBuf,
    user: String,
    namespace: String,
}

impl ShmLayout {
    /// The layout for the effective user (see [`effective_user_name`]).
    pub fn new(base_dir: impl Into<PathBuf>, namespace: &str) -> Result<Self, ShmLayoutError> {
        Self::with_user(base_dir, &effective_user_name(), namespace)
    }

    /// The layout for a given user name (sanitised as the effective user's would be).
    pub fn with_user(
        base_dir: impl Into<PathBuf>,
        user: &str,
        namespace: &str,
    ) -> Result<Self, ShmLayoutError> {
        let base_dir = base_dir.into();
        if !base_dir.is_absolute() {
            return Err(ShmLayoutError::BaseDirNotAbsolute { base_dir });
        }
        validate_namespace(namespace)?;
        Ok(Self { base_dir, user: sanitise_user(user), namespace: namespace.to_owned() })
    }

    /// The base directory (`shm.base_dir`).
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The sanitised user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `<base_dir>/tensorpool-<user>/<namespace>`.
    pub fn namespace_dir(&self) -> PathBuf {
        self.base_dir.join(format!("{USER_DIR_PREFIX}{}", self.user)).join(&self.namespace)
    }

    /// `<namespace_dir>/<stream_id>`.
    pub fn stream_dir(&self, stream_id: u32) -> PathBuf {
        self.namespace_dir().join(stream_id.to_string())
    }

    /// `<stream_dir>/<epoch>`.
    pub fn epoch_dir(&self, stream_id: u32, epoch: u64) -> PathBuf {
        self.stream_dir(stream_id).join(epoch.to_string())
    }

    /// `<epoch_dir>/header.ring`.
    pub fn header_path(&self, stream_id: u32, epoch: u64) -> PathBuf {
        self.epoch_dir(stream_id, epoch).join(HEADER_FILE)
    }

    /// `<epoch_dir>/<pool_id>.pool`.
    pub fn pool_path(&self, stream_id: u32, epoch: u64, pool_id: u16) -> PathBuf {
        self.epoch_dir(stream_id, epoch).join(pool_file_name(pool_id))
    }

    /// `<epoch_dir>/corelane.wake`.
    pub fn wake_path(&self, stream_id: u32, epoch: u64) -> PathBuf {
        self.epoch_dir(stream_id, epoch).join(WAKE_FILE)
    }
}

/// `<pool_id>.pool`.
pub fn pool_file_name(pool_id: u16) -> String {
    format!("{pool_id}{POOL_SUFFIX}")
}

/// Whether `name` is a file name the layout puts in an epoch directory: `header.ring`,
/// `corelane.wake` or `<pool_id>.pool` with `pool_id` a `u16` in canonical decimal.
pub fn is_epoch_file_name(name: &str) -> bool {
    name == HEADER_FILE
        || name == WAKE_FILE
        || name.strip_suffix(POOL_SUFFIX).and_then(parse_canonical::<u16>).is_some()
}

/// The number `name` spells in canonical decimal (digits only, no sign, no leading zero
/// except `0` itself), as the layout writes stream ids and epochs; `None` for anything else.
pub fn parse_canonical<T: std::str::FromStr + ToString>(name: &str) -> Option<T> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: T = name.parse().ok()?;
    (value.to_string() == name).then_some(value)
}

/// Checks a namespace against `[A-Za-z0-9_-]+`.
pub fn validate_namespace(namespace: &str) -> Result<(), ShmLayoutError> {
    if namespace.is_empty() || !namespace.bytes().all(is_name_byte) {
        return Err(ShmLayoutError::Namespace { namespace: namespace.to_owned() });
    }
    Ok(())
}

/// A user name as the layout spells it: bytes outside `[A-Za-z0-9_-]` become `_`, an empty
/// name becomes [`UNKNOWN_USER`].
pub fn sanitise_user(user: &str) -> String {
    if user.is_empty() {
        return UNKNOWN_USER.to_owned();
    }
    // Per char, not per byte: a multi-byte character becomes one `_`, as it is one letter.
    user.chars().map(|c| if c.is_ascii() && is_name_byte(c as u8) { c } else { '_' }).collect()
}

/// The effective user's name, sanitised: the `/etc/passwd` entry of the effective uid, else
/// the `USER` environment variable, else [`UNKNOWN_USER`].
pub fn effective_user_name() -> String {
    let uid = rustix::process::geteuid().as_raw();
    let from_passwd = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| user_name_from_passwd(&text, uid));
    let name = from_passwd.or_else(|| std::env::var("USER").ok()).unwrap_or_default();
    sanitise_user(&name)
}

/// The name of the first `/etc/passwd` entry (`name:password:uid:...`) whose uid is `uid`.
/// Malformed lines and comments are skipped.
pub fn user_name_from_passwd(text: &str, uid: u32) -> Option<String> {
    text.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let entry_uid: u32 = fields.next()?.parse().ok()?;
        (entry_uid == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_canonical_layout() {
        let layout = ShmLayout::with_user("/dev/shm/tensorpool", "alice", "default").unwrap();
        assert_eq!(
            layout.stream_dir(10_000),
            Path::new("/dev/shm/tensorpool/tensorpool-alice/default/10000")
        );
        assert_eq!(
            layout.epoch_dir(10_000, 42),
            Path::new("/dev/shm/tensorpool/tensorpool-alice/default/10000/42")
        );
        assert_eq!(
            layout.header_path(1, 2),
            Path::new("/dev/shm/tensorpool/tensorpool-alice/default/1/2/header.ring")
        );
        assert_eq!(
            layout.pool_path(1, 2, 65535),
            Path::new("/dev/shm/tensorpool/tensorpool-alice/default/1/2/65535.pool")
        );
        assert_eq!(
            layout.wake_path(1, 2),
            Path::new("/dev/shm/tensorpool/tensorpool-alice/default/1/2/corelane.wake")
        );
    }

    #[test]
    fn namespace_traversal_and_odd_bytes_are_refused() {
        for bad in ["", "..", ".", "a/b", "/abs", "a b", "a.b", "ü", "a\0b", "a|b"] {
            let err = ShmLayout::with_user("/dev/shm", "u", bad).unwrap_err();
            assert_eq!(err, ShmLayoutError::Namespace { namespace: bad.to_owned() });
        }
        for good in ["default", "A-z_09", "-", "_"] {
            assert!(ShmLayout::with_user("/dev/shm", "u", good).is_ok(), "{good}");
        }
        let err = ShmLayout::with_user("/dev/shm", "u", "..").unwrap_err();
        assert_eq!(
            err.to_string(),
            "shm namespace expected one or more of [A-Za-z0-9_-], seen \"..\""
        );
    }

    #[test]
    fn relative_base_dir_is_refused() {
        let err = ShmLayout::with_user("dev/shm", "u", "default").unwrap_err();
        assert!(matches!(err, ShmLayoutError::BaseDirNotAbsolute { .. }), "{err}");
    }

    #[test]
    fn user_names_are_sanitised() {
        assert_eq!(sanitise_user("alice"), "alice");
        assert_eq!(sanitise_user("a.b@c"), "a_b_c");
        assert_eq!(sanitise_user("../x"), "___x");
        assert_eq!(sanitise_user("jürgen"), "j_rgen");
        assert_eq!(sanitise_user(""), "unknown");
        let layout = ShmLayout::with_user("/b", "x/../y", "n").unwrap();
        assert_eq!(layout.namespace_dir(), Path::new("/b/tensorpool-x____y/n"));
    }

    #[test]
    fn passwd_lookup_finds_the_uid() {
        let text = "# comment\nroot:x:0:0:root:/root:/bin/bash\nbroken\nbob:x:1000:1000::/home/bob:/bin/sh\n:x:7:7::/:/bin/sh\n";
        assert_eq!(user_name_from_passwd(text, 0).as_deref(), Some("root"));
        assert_eq!(user_name_from_passwd(text, 1000).as_deref(), Some("bob"));
        assert_eq!(user_name_from_passwd(text, 7), None, "empty name");
        assert_eq!(user_name_from_passwd(text, 1), None);
    }

    #[test]
    fn effective_user_is_named_and_clean() {
        let name = effective_user_name();
        assert!(!name.is_empty());
        assert!(name.bytes().all(is_name_byte), "{name}");
        if rustix::process::geteuid().is_root() {
            assert_eq!(name, "root");
        }
    }

    #[test]
    fn canonical_numbers_only() {
        assert_eq!(parse_canonical::<u64>("0"), Some(0));
        assert_eq!(parse_canonical::<u64>("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "007", "+1", "-1", "1a", " 1", "18446744073709551616"] {
            assert_eq!(parse_canonical::<u64>(bad), None, "{bad:?}");
        }
        assert!(is_epoch_file_name("header.ring"));
        assert!(is_epoch_file_name("corelane.wake"));
        assert!(is_epoch_file_name("1.pool"));
        assert!(is_epoch_file_name("65535.pool"));
        for bad in ["65536.pool", "01.pool", ".pool", "x.pool", "header.ring2", "notes.txt"] {
            assert!(!is_epoch_file_name(bad), "{bad}");
        }
    }
}
