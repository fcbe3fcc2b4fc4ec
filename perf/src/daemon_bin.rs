//! The `corelane` daemon binary the suites start (control's `rss-idle` and `idle-cpu`, ingest,
//! frames), found and started the same way every time.
//!
//! Which binary: `corelane` next to this one (the same target dir and profile, e.g.
//! `target/release/`), checked newer than every source it is built from (the workspace's
//! `src/`, `rings/`, `proto/`, `config/`, `build.rs`, the manifests and the lock file, found from
//! this crate's compile-time `CARGO_MANIFEST_DIR`). Missing or older than a source: it is built
//! with `cargo build -p corelane --bin corelane` for that target dir and profile; if that fails
//! the run is refused, naming the newer source. An old binary would measure yesterday's
//! daemon.
//!
//! Which environment: [`command`] clears the child's environment and passes on only
//! [`KEPT_ENV`]; every `CORELANE_*` variable of the caller is dropped (the daemon would apply
//! it, or reject an unknown one and not start), and each suite sets what its measurement needs.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// Variables a daemon child keeps from the harness's environment. Nothing named `CORELANE_*`
/// ever passes, whatever this list says.
pub const KEPT_ENV: &[&str] =
    &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "RUST_BACKTRACE"];

/// The workspace root, where the daemon's sources are (this crate is `perf/` in it).
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// What the daemon binary is built from, relative to the workspace root.
const SOURCES: &[&str] = &[
    "src",
    "rings/src",
    "rings/Cargo.toml",
    "proto",
    "config",
    "build.rs",
    "Cargo.toml",
    "Cargo.lock",
    "README.md",
];

/// `corelane` next to this binary, built first if missing or stale; an error (for the suite to
/// print) if it cannot be made fresh.
pub fn daemon_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let bin = exe.with_file_name("corelane");
    let root = Path::new(WORKSPACE);
    let why = match freshness(&bin, root) {
        Freshness::Fresh => return Ok(bin),
        Freshness::Unknown => {
            eprintln!(
                "note: sources not found under {}; using {} unchecked",
                root.display(),
                bin.display()
            );
            return Ok(bin);
        }
        Freshness::Missing => format!("{} is missing", bin.display()),
        Freshness::Stale(newer) => {
            format!("{} is older than {}", bin.display(), newer.display())
        }
    };
    let args = build_args(&exe, root);
    eprintln!("{why}: building it (cargo {})", args.join(" "));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo).args(&args).status().map_err(|e| {
        format!("{why}, and cargo could not run ({e}); build it: cargo {}", args.join(" "))
    })?;
    if !status.success() {
        return Err(format!("{why}, and cargo {} failed ({status})", args.join(" ")));
    }
    match freshness(&bin, root) {
        Freshness::Fresh | Freshness::Unknown => Ok(bin),
        Freshness::Missing => {
            Err(format!("cargo {} succeeded but {} is missing", args.join(" "), bin.display()))
        }
        // Cargo rebuilt what it tracks; a newer file it does not track (an editor's backup in
        // src/) changes nothing in the binary.
        Freshness::Stale(newer) => {
            eprintln!(
                "note: cargo says {} is up to date, though {} is newer",
                bin.display(),
                newer.display()
            );
            Ok(bin)
        }
    }
}

/// `bin` with a cleared environment and only [`KEPT_ENV`] of this process's: the caller adds
/// what the measurement needs (`XDG_RUNTIME_DIR`, `CORELANE_...`).
pub fn command(bin: &Path) -> Command {
    command_from(bin, std::env::vars_os())
}

/// [`command`] with the parent environment given (tests pass a synthetic one).
pub fn command_from(bin: &Path, parent: impl IntoIterator<Item = (OsString, OsString)>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear().envs(kept_env(parent));
    cmd
}

/// The part of `parent` a daemon child keeps.
pub fn kept_env(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    parent
        .into_iter()
        .filter(|(k, _)| {
            let name = k.to_string_lossy();
            !name.starts_with("CORELANE_") && KEPT_ENV.contains(&name.as_ref())
        })
        .collect()
}

/// Whether `bin` is at least as new as every source under `root`.
#[derive(Debug, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    Missing,
    /// A source newer than the binary.
    Stale(PathBuf),
    /// No source was found (the binary runs away from its checkout).
    Unknown,
}

pub fn freshness(bin: &Path, root: &Path) -> Freshness {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return Freshness::Missing;
    };
    match newest(SOURCES.iter().map(|s| root.join(s))) {
        None => Freshness::Unknown,
        Some((time, path)) if time > built => Freshness::Stale(path),
        Some(_) => Freshness::Fresh,
    }
}

/// The newest file under `paths` (recursively), with its modification time.
fn newest(paths: impl IntoIterator<Item = PathBuf>) -> Option<(SystemTime, PathBuf)> {
    let mut best: Option<(SystemTime, PathBuf)> = None;
    let mut todo: Vec<PathBuf> = paths.into_iter().collect();
    while let Some(path) = todo.pop() {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                todo.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(time) = meta.modified() {
            if best.as_ref().is_none_or(|(t, _)| time > *t) {
                best = Some((time, path));
            }
        }
    }
    best
}

/// `cargo build` arguments that put `corelane` where `exe` is: the same workspace, target dir
/// and profile (`target/release` -> `--release`, `target/debug` -> the dev profile,
/// `target/<name>` -> `--profile <name>`).
fn build_args(exe: &Path, root: &Path) -> Vec<String> {
    let dir = exe.parent().unwrap_or(Path::new("."));
    let mut args: Vec<String> = vec!["build".into()];
    match dir.file_name().and_then(OsStr::to_str) {
        Some("release") => args.push("--release".into()),
        Some("debug") | None => {}
        Some(profile) => args.extend(["--profile".into(), profile.into()]),
    }
    args.extend(["-p".into(), "corelane".into(), "--bin".into(), "corelane".into()]);
    args.push("--manifest-path".into());
    args.push(root.join("Cargo.toml").display().to_string());
    if let Some(target) = dir.parent() {
        args.push("--target-dir".into());
        args.push(target.display().to_string());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect()
    }

    #[test]
    fn kept_env_drops_every_corelane_variable() {
        let parent = env(&[
            ("PATH", "/usr/bin:/bin"),
            ("CORELANE_LOG", "trace"),
            ("CORELANE_RUNTIME_REACTOR", "poll"),
            ("CORELANE_NOT_A_KEY", "1"),
            ("HOME", "/home/u"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ("CL_FAULT_PANIC_AGENT", "control"),
        ]);
        assert_eq!(kept_env(parent), env(&[("PATH", "/usr/bin:/bin"), ("HOME", "/home/u")]));
    }

    /// The real thing: `env` started through [`command_from`] with CORELANE_ variables in
    /// the parent prints none of them, only the kept ones and what the caller set.
    #[test]
    fn a_child_sees_no_inherited_corelane_variable() {
        let Some(env_bin) =
            ["/usr/bin/env", "/bin/env"].into_iter().map(Path::new).find(|p| p.exists())
        else {
            eprintln!("SKIPPED: no env binary");
            return;
        };
        let parent =
            env(&[("PATH", "/usr/bin:/bin"), ("CORELANE_LOG", "trace"), ("CORELANE_X", "1")]);
        let out = command_from(env_bin, parent)
            .env("CORELANE_FRAMES_ENABLED", "false")
            .output()
            .expect("env runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["CORELANE_FRAMES_ENABLED=false", "PATH=/usr/bin:/bin"]);
    }

    #[test]
    fn a_binary_older_than_a_source_is_stale() {
        let root = std::env::temp_dir().join(format!("corelane-perf-fresh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("src/deep")).unwrap();
        let bin = root.join("corelane");
        let t0 = SystemTime::now() - Duration::from_secs(3600);
        let touch = |p: &Path, t: SystemTime| {
            std::fs::write(p, "x").unwrap();
            std::fs::File::options().write(true).open(p).unwrap().set_modified(t).unwrap();
        };
        assert_eq!(freshness(&bin, &root), Freshness::Missing);
        touch(&bin, t0 + Duration::from_secs(60));
        assert_eq!(freshness(&bin, &root), Freshness::Unknown, "no sources yet");
        touch(&root.join("Cargo.toml"), t0);
        touch(&root.join("src/deep/lane.rs"), t0 + Duration::from_secs(30));
        assert_eq!(freshness(&bin, &root), Freshness::Fresh);
        touch(&root.join("src/deep/lane.rs"), t0 + Duration::from_secs(90));
        assert_eq!(freshness(&bin, &root), Freshness::Stale(root.join("src/deep/lane.rs")));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn builds_into_the_same_target_dir_and_profile() {
        let root = Path::new("/w");
        let args = build_args(Path::new("/w/target/release/corelane-perf"), root);
        assert_eq!(
            args.join(" "),
            "build --release -p corelane --bin corelane --manifest-path /w/Cargo.toml \
             --target-dir /w/target"
        );
        let args = build_args(Path::new("/t/profiling/corelane-perf"), root).join(" ");
        assert!(args.starts_with("build --profile profiling -p corelane") && args.ends_with("/t"));
        let args = build_args(Path::new("/t/debug/corelane-perf"), root).join(" ");
        assert!(args.starts_with("build -p corelane"), "{args}");
    }
}
