//! `corelane bench SUITE`: corelane's own benchmark suites on this machine, through the harness
//! of `perf/` (the `corelane-perf` binary), without the peer crates it compares against.
//!
//! The harness is a separate binary so the shipped `corelane` carries none of the peers
//! (rtrb, crossbeam, iceoryx2) nor the plotting code: this subcommand finds `corelane-perf`
//! beside the running executable (both land in `target/release/`) or on `PATH`, and replaces
//! itself with it (`exec`), adding `--no-peers`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The harness binary's name.
pub const HARNESS: &str = "corelane-perf";

/// The suites of `perf/src/suites`, in its `--help` order (a test in `corelane-perf` checks
/// that the two lists agree).
pub const SUITES: &[(&str, &str)] = &[
    ("spsc", "SPSC ring round trip and throughput between two pinned cpus; waking a parked lane"),
    ("control", "control-socket ping through a real daemon; its idle RSS and idle CPU"),
    ("handoff", "shared-memory pool hand-off between two processes (round trip, one way, wake)"),
    ("ingest", "alloc reports into the daemon's ledger over shm rings and the native socket"),
    ("frames", "camera frames through the daemon's frame worker (round trip, throughput)"),
];

/// `corelane bench`'s arguments: the suite, and the harness flags passed through untouched.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The suite to run (see the list below).
    #[arg(value_name = "SUITE")]
    pub suite: String,
    /// Harness flags (--quick, --rounds N, --json FILE, --plot FILE.svg|FILE.png, --only TEXT,
    /// --cores A,B, --allow-busy, --wait-idle, --quiet), passed to corelane-perf as given.
    #[arg(value_name = "FLAGS", trailing_var_arg = true, allow_hyphen_values = true)]
    pub flags: Vec<String>,
}

/// The long help's tail: the suites and how to read a run.
pub fn after_help() -> String {
    let mut text = String::from("Suites:\n");
    for (name, what) in SUITES {
        text.push_str(&format!("  {name:<9}{what}\n"));
    }
    text.push_str(
        "
Harness flags (passed to corelane-perf):
  --quick            a few seconds: 2 rounds, small sample counts (smoke test, not for numbers)
  --rounds N         interleaved rounds (default 10); each round re-measures the floor
  --json FILE        the results as JSON (suite, machine facts, one object per row)
  --plot FILE.svg    an HDR percentile plot (latency against percentile, log axis); or .png
  --only TEXT        only the cases whose name contains TEXT
  --cores A,B        the two cpus to pin to (default: two non-sibling cpus, not cpu 0)
  --allow-busy       run on a busy machine and flag the result \"idle\": false (without it, a
                     busy pinned cpu, before the run or before a round, stops it: exit 2)
  --wait-idle[=SECS] wait for the pinned cpus to go idle first (default at most 120 s), with a
                     progress line
  --quiet            no progress bar (it is drawn only when stderr is a terminal)

Every latency is in ns, with p50/p90/p99/p99.9/max over all rounds, the spread between
rounds next to p50 and p99 (e.g. `693 ±8%`: (slowest round - fastest) / median), and the
ratio to the floor: the bare cross-core cache-line round trip between the same two cpus,
measured every round. Pin nothing else to those cpus while it runs.

corelane-perf is built with: cargo build --release -p corelane -p corelane-perf
Examples:
  corelane bench spsc --quick
  corelane bench handoff --wait-idle --json handoff.json
  corelane bench spsc --json spsc.json --plot spsc.svg
",
    );
    text
}

/// Runs `corelane-perf SUITE --no-peers FLAGS...`; returns only if it cannot be started.
pub fn run(args: &BenchArgs) -> ExitCode {
    if !SUITES.iter().any(|(name, _)| *name == args.suite) {
        let names: Vec<&str> = SUITES.iter().map(|(n, _)| *n).collect();
        eprintln!("error: unknown suite {:?}; expected one of {}", args.suite, names.join(", "));
        return ExitCode::from(2);
    }
    let here = std::env::current_exe().ok();
    let path = std::env::var_os("PATH");
    let Some(harness) = find_harness(here.as_deref(), path.as_deref()) else {
        eprintln!("error: {}", missing_message(here.as_deref()));
        return ExitCode::from(2);
    };
    let err = std::process::Command::new(&harness).args(harness_args(args)).exec();
    eprintln!("error: cannot run {}: {err}", harness.display());
    ExitCode::from(2)
}

/// The harness's command line: the suite, `--no-peers`, then the flags as given.
pub fn harness_args(args: &BenchArgs) -> Vec<String> {
    let mut out = Vec::with_capacity(args.flags.len() + 2);
    out.push(args.suite.clone());
    // Before the user's flags: after them, a flag missing its value (`--json`) would take it.
    out.push("--no-peers".into());
    out.extend(args.flags.iter().cloned());
    out
}

/// `corelane-perf` beside `exe` (the running binary), else the first on `path`.
pub fn find_harness(exe: Option<&Path>, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let beside = exe.and_then(Path::parent).map(|dir| dir.join(HARNESS));
    let on_path = path
        .map(|p| std::env::split_paths(p).map(|dir| dir.join(HARNESS)).collect::<Vec<_>>())
        .unwrap_or_default();
    beside.into_iter().chain(on_path).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What to say when the harness is nowhere: where it was looked for and how to build it.
pub fn missing_message(exe: Option<&Path>) -> String {
    let dir: OsString = exe
        .and_then(Path::parent)
        .map_or_else(|| OsString::from("(unknown)"), |d| d.as_os_str().to_owned());
    format!(
        "`corelane bench` runs the benchmark harness {HARNESS}, found neither beside this \
         binary (in {}) nor on PATH. Build both with: cargo build --release -p corelane -p \
         corelane-perf (then run target/release/corelane bench ...)",
        Path::new(&dir).display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_flags_through_and_adds_no_peers() {
        let args = BenchArgs { suite: "spsc".into(), flags: vec!["--quick".into(), "-x".into()] };
        assert_eq!(harness_args(&args), ["spsc", "--no-peers", "--quick", "-x"]);
    }

    #[test]
    fn finds_the_harness_beside_the_exe_first_then_on_path() {
        let root = std::env::temp_dir().join(format!("corelane-bench-find-{}", std::process::id()));
        let (bin, other) = (root.join("bin"), root.join("other"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let exe = bin.join("corelane");
        let path = std::env::join_paths([&other]).unwrap();
        assert_eq!(find_harness(Some(&exe), Some(&path)), None);

        let write_exe = |p: &Path, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        // Not executable: not taken.
        write_exe(&other.join(HARNESS), 0o644);
        assert_eq!(find_harness(Some(&exe), Some(&path)), None);
        write_exe(&other.join(HARNESS), 0o755);
        assert_eq!(find_harness(Some(&exe), Some(&path)), Some(other.join(HARNESS)));
        write_exe(&bin.join(HARNESS), 0o755);
        assert_eq!(find_harness(Some(&exe), Some(&path)), Some(bin.join(HARNESS)));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_missing_message_says_how_to_build() {
        let m = missing_message(Some(Path::new("/opt/x/corelane")));
        assert!(m.contains("cargo build --release -p corelane -p corelane-perf"), "{m}");
        assert!(m.contains("/opt/x"), "{m}");
    }
}
