//! The suites, one file each. A suite is a name, its help text and a `run` function that takes
//! the [`Plan`] and returns a [`Report`]; `main` does the rest (cpu list, idle check, machine
//! facts, output). To add one: write `suites/<name>.rs` with a `pub const SUITE: Suite`, and
//! list it in [`ALL`].
//!
//! A suite is expected to follow the harness's rules (see `--help`): interleave
//! implementations in short rounds with a rotated order, measure the floor
//! ([`crate::floor`]) every round and report latencies as ratios to it, run its threads
//! through [`crate::pair::run`], check every item it receives, and allocate nothing inside
//! timed loops.

use crate::pin::Pair;
use crate::report::Report;
use crate::spawn::ChildFn;

pub mod control;
mod frames;
mod handoff;
mod ingest;
mod spsc;

/// Every suite, in `--help` order.
pub const ALL: &[Suite] =
    &[spsc::SUITE, control::SUITE, handoff::SUITE, ingest::SUITE, frames::SUITE];

#[derive(Debug)]
pub struct Suite {
    pub name: &'static str,
    /// One line for the suite list.
    pub summary: &'static str,
    /// The suite's section of `--help`: implementations, cases and what each measures.
    pub help: &'static str,
    pub run: fn(&Plan) -> Report,
    /// The child process's side of the suite's cross-process measurements, for suites that
    /// start their children with [`crate::spawn`] (run by `main` for `__child <suite> ...`).
    pub child: Option<ChildFn>,
}

/// What `main` hands a suite.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Interleaved rounds (>= 1).
    pub rounds: u32,
    /// Smoke-test sizes: a few thousand samples, small streams.
    pub quick: bool,
    /// The two cpus to pin the suite's two threads to.
    pub pair: Pair,
    /// Only the cases whose name contains this (`--only`).
    pub only: Option<&'static str>,
    /// Whether to run the peers (other crates, hand-written alternatives) next to corelane;
    /// false with `--no-peers`.
    pub peers: bool,
    /// The idle check before every round ([`Plan::before_round`]); `None` checks nothing
    /// (the suites' own tests).
    pub idle: Option<crate::idle::Gate>,
}

impl Plan {
    /// Whether `--only` selects the case named `case`.
    pub fn wants(&self, case: &str) -> bool {
        self.only.is_none_or(|only| case.contains(only))
    }

    /// Called by every suite at the start of each round, before its floor: the pinned cpus
    /// must be idle now (see [`crate::idle::Gate::before_round`]; may end the run, exit 2).
    pub fn before_round(&self, round: usize) {
        if let Some(gate) = &self.idle {
            gate.before_round(round);
        }
    }
}

/// The last five lines of a daemon's log file, for an error message.
pub(crate) fn log_tail(path: &std::path::Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    format!("daemon log: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
}

/// Stops a daemon started for a measurement: SIGTERM, then SIGKILL after 5 s, reaped.
pub(crate) fn stop_daemon(child: &mut std::process::Child) {
    use std::time::{Duration, Instant};
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

pub fn find(name: &str) -> Option<&'static Suite> {
    ALL.iter().find(|s| s.name == name)
}

/// The child side of suite `name`, if it has one.
pub fn child(name: &str) -> Option<ChildFn> {
    find(name).and_then(|s| s.child)
}

/// The suite names, comma-separated, for messages.
pub fn names() -> String {
    ALL.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corelane_bench_lists_these_suites() {
        let ours: Vec<&str> = ALL.iter().map(|s| s.name).collect();
        let theirs: Vec<&str> = corelane::cli::bench::SUITES.iter().map(|s| s.0).collect();
        assert_eq!(ours, theirs, "src/cli/bench.rs SUITES and suites::ALL disagree");
    }

    #[test]
    fn names_are_unique_and_found() {
        for (i, s) in ALL.iter().enumerate() {
            assert!(ALL[..i].iter().all(|t| t.name != s.name), "duplicate suite {}", s.name);
            assert_eq!(find(s.name).map(|t| t.name), Some(s.name));
        }
        assert!(find("nope").is_none());
    }
}
