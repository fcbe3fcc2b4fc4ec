//! Files the daemon keeps in its runtime directory: the instance lock, and removal that
//! deletes a file only if it is still the one this process created.
//!
//! One daemon per runtime directory: [`InstanceLock`] holds an exclusive `flock` on
//! `<dir>/corelane.lock` for the daemon's whole life (the kernel drops it when the process
//! dies, however it dies, so a crashed daemon never blocks the next one). Under that lock the
//! daemon may treat any socket or temporary file it finds as stale. Every file it creates is
//! remembered by device and inode ([`OwnedFile`]) and removed at exit only if the path still
//! names that inode: a file some other process put there since is left alone.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

/// Name of the lock file in the runtime directory.
pub const LOCK_FILE: &str = "corelane.lock";

/// An exclusive hold on a runtime directory, for as long as the value lives.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

/// Another process holds the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A live daemon holds the directory.
    #[error("held by pid {pid}")]
    Held {
        /// The pid the holder wrote into the lock file (0 if unreadable).
        pid: u32,
    },
    /// The lock file could not be opened or locked.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl InstanceLock {
    /// Takes the lock of `dir` without waiting, and writes our pid into the lock file.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held { pid: text.trim().parse().unwrap_or(0) });
            }
            Err(e) => return Err(LockError::Io(e.into())),
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Self { _file: file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A file this process created, remembered by device and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl OwnedFile {
    /// Remembers what `path` names now (call right after creating it).
    pub fn of(path: &Path) -> io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self { path: path.to_owned(), dev: meta.dev(), ino: meta.ino() })
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The same file after a `rename` to `path`.
    pub fn renamed(self, path: &Path) -> Self {
        Self { path: path.to_owned(), ..self }
    }

    /// Removes the file if the path still names the inode we created. Returns whether it did;
    /// a path that is gone or names another file is left alone (not an error).
    pub fn remove(&self) -> io::Result<bool> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                std::fs::remove_file(&self.path)?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Removes the temporary files a crashed daemon left in `dir`: names `<prefix>.<pid>.tmp`.
/// Call only while holding the [`InstanceLock`]: then no live daemon writes any of them.
/// Returns how many were removed.
pub fn sweep_temporaries(dir: &Path, prefix: &str) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if stale && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("corelane-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn one_lock_per_directory_and_it_names_the_holder() {
        let d = dir("lock");
        let first = InstanceLock::acquire(&d).unwrap();
        // flock locks are per open file description: a second open in this process conflicts
        // exactly as a second daemon would.
        match InstanceLock::acquire(&d) {
            Err(LockError::Held { pid }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let again = InstanceLock::acquire(&d).unwrap();
        assert_eq!(again.path(), d.join(LOCK_FILE));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_replaced_since_is_not_removed() {
        let d = dir("owned");
        let path = d.join("counters");
        std::fs::write(&path, b"mine").unwrap();
        let mine = OwnedFile::of(&path).unwrap();
        // Another daemon (wrongly) replaces it.
        let other = d.join("other");
        std::fs::write(&other, b"theirs").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert!(!mine.remove().unwrap(), "not ours any more");
        assert_eq!(std::fs::read(&path).unwrap(), b"theirs");
        let theirs = OwnedFile::of(&path).unwrap();
        assert!(theirs.remove().unwrap());
        assert!(!path.exists());
        assert!(!theirs.remove().unwrap(), "gone: nothing to do");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn only_stale_temporaries_of_the_prefix_are_swept() {
        let d = dir("sweep");
        for name in
            ["counters.123.tmp", "counters.9.tmp", "counters.x.tmp", "counters", "other.1.tmp"]
        {
            std::fs::write(d.join(name), b"").unwrap();
        }
        assert_eq!(sweep_temporaries(&d, "counters").unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["counters", "counters.x.tmp", "other.1.tmp"]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
