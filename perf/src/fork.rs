//! A forked child process pinned to a cpu, for the cross-process cases: the fork, the control
//! block the two processes meet on, the watch each side keeps on the other, and the reaping.
//!
//! [`run`] is to processes what [`crate::pair::run`] is to threads: the parent's closure runs
//! on a fresh thread pinned to one cpu, the child's in a forked process pinned to the other,
//! and neither starts its work before both are pinned and ready (a handshake on the control
//! block). The data between them travels through whatever shared memory the caller mapped
//! before calling [`run`]: the child inherits every `MAP_SHARED` mapping, at the same address.
//!
//! # What the child may do
//! `fork` copies only the calling thread, so a lock that another thread held at that instant
//! (the allocator's, stdio's) stays locked in the child for good. When the harness calls
//! [`run`], its main thread is alone (the threads of earlier measurements have all been
//! joined), but the child is written as if it were not. Between `fork` and `_exit` it:
//! - allocates nothing and prints nothing (its closure must capture only references and
//!   `Copy` values: anything it owned would be freed when the closure returns);
//! - makes only async-signal-safe system calls: `prctl`, `getppid`, `sched_setaffinity`,
//!   `getpid` (ring attach records the owner's pid), `clock_gettime` (through the vDSO);
//! - touches shared memory only atomically: the rings, and the control block;
//! - leaves with `_exit`: no destructors, no atexit handlers, no flush of the stdio buffers it
//!   copied from the parent.
//!
//! A panic in the child is caught and reported as [`Failure::Panicked`] (the default hook
//! prints the message first, which allocates: that path exists only for bugs).
//!
//! # Neither side hangs
//! - The child asks for `SIGKILL` when its parent dies (`PR_SET_PDEATHSIG`) and then checks
//!   that its parent is still the process that forked it. The signal follows the *thread*
//!   that forked: [`run`]'s caller, which stays in [`run`] until the child is reaped.
//! - Every wait loop on either side counts its turns, and every [`CHECK_EVERY`] turns without
//!   progress takes the cold path: the child checks its deadline ([`LIMIT`]); the parent
//!   checks the child's state word, its own deadline and whether the child has exited
//!   (`waitid` with `WNOWAIT`). A hand-off that does not wait that long pays one counter
//!   increment per turn and nothing else; a stall pays one system call per check.
//! - A failure either side sees ends the run (exit status 3 for a misbehaving queue, 2 for a
//!   cpu that cannot be pinned, 4 otherwise) after the parent kills and reaps the child.
//! - The parent always reaps: once its side is done it waits at most [`REAP_LIMIT`] for the
//!   child to exit, then kills it (`SIGKILL`) and reaps it; a guard does the same when the
//!   parent's side panics.
#![allow(unsafe_code)]

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corelane::mapping::Mapping;
use corelane::rings::region::Region;
use corelane::rings::spsc::Corruption;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitIdStatus, WaitOptions};
use rustix::thread::CpuSet;

use crate::pair::{relax, Waiter};
use crate::pin::pin_current;

/// How long either side waits for the other in one measurement before giving up. A full
/// measurement takes well under a second; this only bounds a hang.
pub const LIMIT: Duration = Duration::from_secs(60);
/// How long the parent waits for the child to exit once its own side is done.
pub const REAP_LIMIT: Duration = Duration::from_secs(5);
/// Turns of a wait loop without progress between two looks at the other process (a power of
/// two): at a few ns a turn, every 0.1-1 ms of waiting.
pub const CHECK_EVERY: u32 = 1 << 16;

/// The cpus of the two sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpus {
    pub parent: usize,
    pub child: usize,
}

/// Runs `child` in a forked process pinned to `cpus.child` and `parent` on a fresh thread of
/// this process pinned to `cpus.parent`, and returns what `parent` returned once the child
/// has exited cleanly and been reaped.
///
/// `child` runs after the child has pinned itself; it sets up (attaches its ring ends), calls
/// [`Watch::start`], does its work and returns; it must follow the rules in the module doc.
/// `parent` runs once the child has called [`Watch::start`]. Both get the [`Watch`] that
/// their wait loops and checks use; `what` names the measurement in error messages. Errors
/// before or after the work come back as [`Error`]; a failure during the work ends the run
/// (see the module doc).
pub fn run<R: Send>(
    what: &str,
    cpus: Cpus,
    limit: Duration,
    child: impl FnOnce(&Watch) -> Result<(), Failure>,
    parent: impl FnOnce(&Watch) -> R + Send,
) -> Result<R, Error> {
    let (map, _fd) = Mapping::sealed_memfd("corelane-perf-control", CONTROL_LEN)
        .map_err(|e| Error::Setup(format!("cannot create the control memfd: {e}")))?;
    let control = Control::of(&map);
    let me = rustix::process::getpid();
    // SAFETY: in the child, `fork` returns 0 and the child runs only `child_main`, which
    // follows the module doc's rules (no allocation, no stdio, async-signal-safe calls,
    // atomics on shared memory) and leaves with `_exit`, never returning here. In the parent
    // it is an ordinary call.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        child_main(control, me, cpus.child, limit, child);
    }
    let Some(pid) = Pid::from_raw(pid) else {
        return Err(Error::Setup(format!("fork failed: {}", std::io::Error::last_os_error())));
    };
    let mut guard = Child { pid, reaped: false };
    let outcome = std::thread::scope(|s| {
        let side = s.spawn(|| {
            pin_current(cpus.parent);
            let watch = Watch {
                control,
                deadline: Instant::now() + limit,
                limit,
                side: Side::Parent { child: pid, what },
            };
            watch.handshake()?;
            Ok(parent(&watch))
        });
        side.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    let result = match outcome {
        Ok(result) => result,
        Err(e) => {
            guard.kill();
            return Err(e);
        }
    };
    match guard.reap(REAP_LIMIT) {
        Some(exit) => judge(Control::state(control), exit).map(|()| result),
        None => Err(Error::NoExit(REAP_LIMIT)),
    }
}

/// Why a cross-process measurement stopped, as the side that saw it says. `Copy` and
/// allocation-free: the child writes it into the control block as three words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The parent was gone before the child had set its death signal.
    Orphaned,
    /// `sched_setaffinity` to this cpu failed.
    Pin { cpu: u64 },
    /// A ring end could not be attached.
    Attach,
    /// An item arrived out of order.
    OutOfOrder { expected: u64, got: u64 },
    /// A ring end found the peer's position impossible (its verdict, see
    /// `corelane_rings::spsc::Corruption`).
    Corrupt { seen: u64, own: u64 },
    /// Waited longer than the limit for the other side.
    Stalled,
    /// The child's closure panicked.
    Panicked,
}

impl Failure {
    /// The run's exit status for this failure (`--help`, EXIT STATUS): 3 the queue under test
    /// misbehaved, 2 a cpu could not be pinned, 4 anything else.
    pub fn exit_code(self) -> i32 {
        match self {
            Failure::OutOfOrder { .. } | Failure::Corrupt { .. } => 3,
            Failure::Pin { .. } => 2,
            Failure::Orphaned | Failure::Attach | Failure::Stalled | Failure::Panicked => 4,
        }
    }

    /// The three control-block words: kind (1-7), then two details.
    fn encode(self) -> [u64; 3] {
        match self {
            Failure::Orphaned => [1, 0, 0],
            Failure::Pin { cpu } => [2, cpu, 0],
            Failure::Attach => [3, 0, 0],
            Failure::OutOfOrder { expected, got } => [4, expected, got],
            Failure::Corrupt { seen, own } => [5, seen, own],
            Failure::Stalled => [6, 0, 0],
            Failure::Panicked => [7, 0, 0],
        }
    }

    /// The failure three control-block words describe, or `None` for a kind no child writes.
    fn decode([kind, a, b]: [u64; 3]) -> Option<Self> {
        Some(match kind {
            1 => Failure::Orphaned,
            2 => Failure::Pin { cpu: a },
            3 => Failure::Attach,
            4 => Failure::OutOfOrder { expected: a, got: b },
            5 => Failure::Corrupt { seen: a, own: b },
            6 => Failure::Stalled,
            7 => Failure::Panicked,
            _ => return None,
        })
    }
}

impl From<Corruption> for Failure {
    fn from(c: Corruption) -> Self {
        Failure::Corrupt { seen: c.seen, own: c.own }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Failure::Orphaned => f.write_str("its parent was gone before it started"),
            Failure::Pin { cpu } => write!(f, "cannot pin it to cpu {cpu}"),
            Failure::Attach => f.write_str("cannot attach its end of a shared-memory ring"),
            Failure::OutOfOrder { expected, got } => {
                write!(f, "item out of order: expected sequence number {expected}, received {got}")
            }
            Failure::Corrupt { seen, own } => write!(
                f,
                "ring verdict Corrupt: the peer's position {seen} is impossible with its own \
                 {own}"
            ),
            Failure::Stalled => f.write_str("it waited longer than the limit for the other side"),
            Failure::Panicked => f.write_str("it panicked"),
        }
    }
}

/// How a child process ended, as `waitpid`/`waitid` say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `_exit(code)`.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// The wait failed: the pid is not (or no longer) our child.
    Unknown,
}

impl Exit {
    fn of_waitid(status: &WaitIdStatus) -> Self {
        match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            (None, None) => Exit::Unknown,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exited with status {code}"),
            Exit::Signal(signal) => write!(f, "was killed by signal {signal}"),
            Exit::Unknown => f.write_str("could not be waited for"),
        }
    }
}

/// Why [`run`] failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// The child reported a failure.
    Child(Failure),
    /// The parent's side failed.
    Parent(Failure),
    /// The child ended without reporting a failure, before (`done` false) or after it said
    /// it was done.
    Died { exit: Exit, done: bool },
    /// The measurement was not over within this limit; the child was killed.
    TimedOut(Duration),
    /// The child had not exited this long after the parent's side was done; it was killed.
    NoExit(Duration),
    /// The control block holds words no child writes.
    Garbled([u64; 4]),
    /// The control block or the fork could not be set up.
    Setup(String),
}

impl Error {
    /// The run's exit status for this error (see [`Failure::exit_code`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Child(f) | Error::Parent(f) => f.exit_code(),
            _ => 4,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Child(failure) => write!(f, "the child process failed: {failure}"),
            Error::Parent(failure) => write!(f, "the parent process failed: {failure}"),
            Error::Died { exit, done: false } => {
                write!(f, "the child process {exit} before it reported done")
            }
            Error::Died { exit, done: true } => {
                write!(f, "the child process {exit} after it reported done")
            }
            Error::TimedOut(limit) => write!(
                f,
                "the measurement was not over within {} s; the child process was killed",
                limit.as_secs_f64()
            ),
            Error::NoExit(limit) => write!(
                f,
                "the child process had not exited {} s after the parent's side was done; \
                 killed it",
                limit.as_secs_f64()
            ),
            Error::Garbled(words) => write!(
                f,
                "the control block holds {words:?}, expected a child state 0-3 and a known \
                 failure kind"
            ),
            Error::Setup(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

/// What each side's wait loops and checks consult: the other process, the deadline, and the
/// control block. Passed to both closures of [`run`].
#[derive(Debug)]
pub struct Watch<'a> {
    control: &'a Control,
    deadline: Instant,
    limit: Duration,
    side: Side<'a>,
}

#[derive(Debug)]
enum Side<'a> {
    Child,
    Parent { child: Pid, what: &'a str },
}

impl Watch<'_> {
    /// Child only: says it is ready (call after attaching the ring ends), then waits for the
    /// parent's go.
    pub fn start(&self) {
        debug_assert!(matches!(self.side, Side::Child), "Watch::start is the child's");
        // SYNC: Release pairs with the parent's Acquire load of the state in `handshake`.
        self.control.child.0[0].store(READY, Ordering::Release);
        let mut turns = 0;
        // SYNC: Acquire pairs with the parent's Release store of GO in `handshake`.
        while self.control.parent.0.load(Ordering::Acquire) != GO {
            self.turn(&mut turns);
        }
    }

    /// Either side: ends the run because of `failure`. The child reports it and `_exit`s; the
    /// parent kills and reaps the child, says why, and exits.
    pub fn fail(&self, failure: Failure) -> ! {
        match self.side {
            Side::Child => self.child_exit(Some(failure)),
            Side::Parent { .. } => self.abort(Error::Parent(failure)),
        }
    }

    /// Parent: waits for the child to say ready (or fail, or die), then says go.
    fn handshake(&self) -> Result<(), Error> {
        let Side::Parent { child, .. } = self.side else {
            unreachable!("the handshake is the parent's")
        };
        let mut turns = 0u32;
        loop {
            match Control::state(self.control) {
                ChildState::Ready => break,
                ChildState::Starting => {}
                ChildState::Done => {
                    return Err(Error::Died { exit: Exit::Code(0), done: true });
                }
                ChildState::Failed(f) => return Err(Error::Child(f)),
                ChildState::Garbled(words) => return Err(Error::Garbled(words)),
            }
            relax();
            turns = turns.wrapping_add(1);
            if turns.is_multiple_of(CHECK_EVERY) {
                self.poll(child)?;
            }
        }
        // SYNC: Release pairs with the child's Acquire load of the go word in `start`.
        self.control.parent.0.store(GO, Ordering::Release);
        Ok(())
    }

    /// Parent: `Err` if the child failed, garbled its words, or ended without finishing, or
    /// if the deadline passed. A child that finished and exited cleanly is fine: the parent
    /// may still be taking the last items it pushed.
    fn poll(&self, child: Pid) -> Result<(), Error> {
        match Control::state(self.control) {
            ChildState::Failed(f) => return Err(Error::Child(f)),
            ChildState::Garbled(words) => return Err(Error::Garbled(words)),
            ChildState::Starting | ChildState::Ready | ChildState::Done => {}
        }
        if Instant::now() >= self.deadline {
            return Err(Error::TimedOut(self.limit));
        }
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        match rustix::process::waitid(WaitId::Pid(child), options) {
            Ok(None) => Ok(()),
            // Read the state again: the child may have written it just before exiting.
            Ok(Some(status)) => judge(Control::state(self.control), Exit::of_waitid(&status)),
            Err(_) => judge(Control::state(self.control), Exit::Unknown),
        }
    }

    /// The cold half of a wait-loop turn: look at the other process.
    #[cold]
    #[inline(never)]
    fn check(&self) {
        match self.side {
            Side::Child => {
                if Instant::now() >= self.deadline {
                    self.child_exit(Some(Failure::Stalled));
                }
            }
            Side::Parent { child, .. } => {
                if let Err(e) = self.poll(child) {
                    self.abort(e);
                }
            }
        }
    }

    /// Child: report `failure` (or done) and `_exit`.
    fn child_exit(&self, failure: Option<Failure>) -> ! {
        let words = &self.control.child.0;
        let (state, code) = match failure {
            None => (DONE, 0),
            Some(f) => {
                for (word, value) in words[1..].iter().zip(f.encode()) {
                    word.store(value, Ordering::Relaxed);
                }
                (FAILED, 10 + f.encode()[0] as i32)
            }
        };
        // SYNC: Release publishes the failure words above -> the parent's Acquire load of the
        // state in `Control::state`.
        words[0].store(state, Ordering::Release);
        // SAFETY: `_exit` ends the process at once, running nothing of Rust's or libc's:
        // exactly what a forked child must do (module doc).
        unsafe { libc::_exit(code) }
    }

    /// Parent: kill and reap the child, say why, and end the run.
    #[cold]
    fn abort(&self, e: Error) -> ! {
        let Side::Parent { child, what } = self.side else {
            unreachable!("only the parent aborts")
        };
        Child { pid: child, reaped: false }.kill();
        eprintln!("error: {what}: {e}; aborting the run");
        std::process::exit(e.exit_code());
    }
}

impl Waiter for Watch<'_> {
    #[inline(always)]
    fn turn(&self, turns: &mut u32) {
        relax();
        *turns = turns.wrapping_add(1);
        if turns.is_multiple_of(CHECK_EVERY) {
            self.check();
        }
    }

    #[cold]
    fn out_of_order(&self, imp: &str, case: &str, expected: u64, got: u64) -> ! {
        match self.side {
            Side::Child => self.child_exit(Some(Failure::OutOfOrder { expected, got })),
            Side::Parent { child, .. } => {
                Child { pid: child, reaped: false }.kill();
                crate::pair::out_of_order(imp, case, expected, got)
            }
        }
    }

    #[cold]
    fn corrupt(&self, _imp: &str, _case: &str, c: Corruption) -> ! {
        // The parent's message names the measurement (`what`) already.
        self.fail(c.into())
    }
}

/// The child's life after `fork`: death signal, pin, the closure, report, `_exit`.
fn child_main(
    control: &Control,
    parent: Pid,
    cpu: usize,
    limit: Duration,
    body: impl FnOnce(&Watch) -> Result<(), Failure>,
) -> ! {
    let watch = Watch { control, deadline: Instant::now() + limit, limit, side: Side::Child };
    let death_signal = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    // The parent may have died between fork and prctl: then no signal will ever come.
    if death_signal.is_err() || rustix::process::getppid() != Some(parent) {
        watch.child_exit(Some(Failure::Orphaned));
    }
    let mut set = CpuSet::new();
    if cpu >= CpuSet::MAX_CPU {
        watch.child_exit(Some(Failure::Pin { cpu: cpu as u64 }));
    }
    set.set(cpu);
    if rustix::thread::sched_setaffinity(None, &set).is_err() {
        watch.child_exit(Some(Failure::Pin { cpu: cpu as u64 }));
    }
    match catch_unwind(AssertUnwindSafe(|| body(&watch))) {
        Ok(Ok(())) => watch.child_exit(None),
        Ok(Err(failure)) => watch.child_exit(Some(failure)),
        // The payload is never dropped (no free in the child): `child_exit` does not return.
        Err(_payload) => watch.child_exit(Some(Failure::Panicked)),
    }
}

/// A 128-byte line of its own (x86 prefetches lines in pairs; as in `floor`).
#[repr(C, align(128))]
#[derive(Debug)]
struct Line<T>(T);

/// The words the two processes meet on, at the start of a one-page sealed memfd.
#[repr(C)]
#[derive(Debug)]
struct Control {
    /// Written by the child: its state ([`STARTING`], [`READY`], [`DONE`], [`FAILED`]) and,
    /// once failed, the three words of its [`Failure`].
    child: Line<[AtomicU64; 4]>,
    /// Written by the parent: [`GO`] once both sides are ready.
    parent: Line<AtomicU64>,
}

const _: () = assert!(core::mem::size_of::<Control>() == 256);
const CONTROL_LEN: usize = 4096;

const STARTING: u64 = 0;
const READY: u64 = 1;
const DONE: u64 = 2;
const FAILED: u64 = 3;
const GO: u64 = 1;

impl Control {
    /// The control block at the start of `map`.
    fn of(map: &Mapping) -> &Control {
        assert!(
            map.len() >= core::mem::size_of::<Control>()
                && (map.as_ptr() as usize).is_multiple_of(core::mem::align_of::<Control>()),
            "the control mapping is too short or misaligned"
        );
        // SAFETY: the mapping is long enough and aligned (checked above) and lives as long as
        // the borrow; a fresh memfd is zero-filled, and all-zero words are valid atomics
        // (state STARTING); both processes access these words only through the atomics.
        unsafe { &*map.as_ptr().cast::<Control>() }
    }

    fn state(control: &Control) -> ChildState {
        let words = &control.child.0;
        // SYNC: Acquire pairs with the child's Release stores of its state in `start` and
        // `child_exit`: the failure words written before FAILED are visible below.
        let state = words[0].load(Ordering::Acquire);
        let detail = [1, 2, 3].map(|i| words[i].load(Ordering::Relaxed));
        decode_state([state, detail[0], detail[1], detail[2]])
    }
}

/// What the child's control words say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChildState {
    Starting,
    Ready,
    Done,
    Failed(Failure),
    Garbled([u64; 4]),
}

fn decode_state(words: [u64; 4]) -> ChildState {
    match words[0] {
        STARTING => ChildState::Starting,
        READY => ChildState::Ready,
        DONE => ChildState::Done,
        FAILED => match Failure::decode([words[1], words[2], words[3]]) {
            Some(f) => ChildState::Failed(f),
            None => ChildState::Garbled(words),
        },
        _ => ChildState::Garbled(words),
    }
}

/// The verdict on a child that has exited: what it wrote, and how it exited.
fn judge(state: ChildState, exit: Exit) -> Result<(), Error> {
    match (state, exit) {
        (ChildState::Failed(f), _) => Err(Error::Child(f)),
        (ChildState::Garbled(words), _) => Err(Error::Garbled(words)),
        (ChildState::Done, Exit::Code(0)) => Ok(()),
        (state, exit) => Err(Error::Died { exit, done: state == ChildState::Done }),
    }
}

/// The forked child, reaped exactly once: by [`Child::reap`], or killed and reaped on drop.
#[derive(Debug)]
struct Child {
    pid: Pid,
    reaped: bool,
}

impl Child {
    /// Waits at most `limit` for the child to exit, polling every millisecond; `None` if it
    /// had to be killed.
    fn reap(&mut self, limit: Duration) -> Option<Exit> {
        let start = Instant::now();
        loop {
            match rustix::process::waitpid(Some(self.pid), WaitOptions::NOHANG) {
                Ok(Some((_, status))) => {
                    self.reaped = true;
                    return Some(match (status.exit_status(), status.terminating_signal()) {
                        (Some(code), _) => Exit::Code(code),
                        (None, Some(signal)) => Exit::Signal(signal),
                        (None, None) => Exit::Unknown,
                    });
                }
                Ok(None) => {}
                Err(_) => {
                    self.reaped = true;
                    return Some(Exit::Unknown);
                }
            }
            if start.elapsed() >= limit {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `SIGKILL`, then a blocking reap (a killed process always ends).
    fn kill(&mut self) {
        if !self.reaped {
            let _ = rustix::process::kill_process(self.pid, Signal::KILL);
            let _ = rustix::process::waitpid(Some(self.pid), WaitOptions::empty());
            self.reaped = true;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pin::Cores;

    const ALL: [Failure; 7] = [
        Failure::Orphaned,
        Failure::Pin { cpu: 3 },
        Failure::Attach,
        Failure::OutOfOrder { expected: 7, got: u64::MAX },
        Failure::Corrupt { seen: 1 << 40, own: 5 },
        Failure::Stalled,
        Failure::Panicked,
    ];

    #[test]
    fn failures_survive_the_control_words() {
        for f in ALL {
            let [kind, a, b] = f.encode();
            assert_eq!(Failure::decode([kind, a, b]), Some(f));
            assert_eq!(decode_state([FAILED, kind, a, b]), ChildState::Failed(f));
        }
        assert_eq!(Failure::decode([0, 0, 0]), None);
        assert_eq!(Failure::decode([8, 1, 2]), None);
    }

    #[test]
    fn words_no_child_writes_are_garbled_not_guessed() {
        assert_eq!(decode_state([0, 9, 9, 9]), ChildState::Starting);
        assert_eq!(decode_state([READY, 0, 0, 0]), ChildState::Ready);
        assert_eq!(decode_state([DONE, 0, 0, 0]), ChildState::Done);
        assert_eq!(decode_state([4, 0, 0, 0]), ChildState::Garbled([4, 0, 0, 0]));
        assert_eq!(decode_state([FAILED, 0, 1, 2]), ChildState::Garbled([FAILED, 0, 1, 2]));
    }

    #[test]
    fn the_verdict_needs_done_and_status_zero() {
        assert_eq!(judge(ChildState::Done, Exit::Code(0)), Ok(()));
        let f = Failure::OutOfOrder { expected: 1, got: 2 };
        assert_eq!(judge(ChildState::Failed(f), Exit::Code(14)), Err(Error::Child(f)));
        assert_eq!(judge(ChildState::Failed(f), Exit::Signal(9)), Err(Error::Child(f)));
        assert_eq!(
            judge(ChildState::Ready, Exit::Signal(9)),
            Err(Error::Died { exit: Exit::Signal(9), done: false })
        );
        assert_eq!(
            judge(ChildState::Ready, Exit::Code(0)),
            Err(Error::Died { exit: Exit::Code(0), done: false })
        );
        assert_eq!(
            judge(ChildState::Done, Exit::Code(1)),
            Err(Error::Died { exit: Exit::Code(1), done: true })
        );
        assert_eq!(
            judge(ChildState::Garbled([9, 0, 0, 0]), Exit::Code(0)),
            Err(Error::Garbled([9, 0, 0, 0]))
        );
    }

    #[test]
    fn exit_codes_and_messages() {
        let codes: Vec<i32> = ALL.iter().map(|f| f.exit_code()).collect();
        assert_eq!(codes, [4, 2, 4, 3, 3, 4, 4]);
        assert_eq!(Error::TimedOut(LIMIT).exit_code(), 4);
        assert_eq!(
            Error::Child(Failure::OutOfOrder { expected: 5, got: 6 }).to_string(),
            "the child process failed: item out of order: expected sequence number 5, received 6"
        );
        assert_eq!(
            Error::Died { exit: Exit::Signal(9), done: false }.to_string(),
            "the child process was killed by signal 9 before it reported done"
        );
        assert_eq!(
            Error::TimedOut(Duration::from_millis(1500)).to_string(),
            "the measurement was not over within 1.5 s; the child process was killed"
        );
    }

    #[test]
    fn control_block_lines_are_apart() {
        assert_eq!(core::mem::offset_of!(Control, parent), 128);
        assert_eq!(core::mem::align_of::<Control>(), 128);
    }

    /// Two cpus to run a cross-process test on, or `None` (and a note) if there are fewer.
    fn cpus() -> Option<Cpus> {
        let cores = Cores::discover().ok()?;
        match cores.ids() {
            [first, .., last] => Some(Cpus { parent: *first, child: *last }),
            _ => {
                eprintln!("SKIPPED: fewer than two cpus, no cross-process test");
                None
            }
        }
    }

    /// The whole path: fork, pin, handshake, a ping-pong on two shared words, reap.
    #[test]
    fn a_child_and_its_parent_ping_pong_and_the_child_is_reaped() {
        let Some(cpus) = cpus() else { return };
        let (map, _fd) = Mapping::sealed_memfd("corelane-perf-test", 4096).unwrap();
        let words = Control::of(&map); // two unused lines of atomics serve as ping and pong
        let (ping, pong) = (&words.child.0[0], &words.parent.0);
        let rounds = 2_000u64;
        let result = run(
            "test",
            cpus,
            Duration::from_secs(20),
            |w| {
                // The child's control block is another mapping: these words are free.
                w.start();
                let mut turns = 0;
                for i in 1..=rounds {
                    // SYNC: Acquire pairs with the parent's Release store of ping below.
                    while ping.load(Ordering::Acquire) != i {
                        w.turn(&mut turns);
                    }
                    // SYNC: Release pairs with the parent's Acquire load of pong.
                    pong.store(i, Ordering::Release);
                }
                Ok(())
            },
            |w| {
                let mut turns = 0;
                for i in 1..=rounds {
                    // SYNC: Release pairs with the child's Acquire load of ping.
                    ping.store(i, Ordering::Release);
                    // SYNC: Acquire pairs with the child's Release store of pong.
                    while pong.load(Ordering::Acquire) != i {
                        w.turn(&mut turns);
                    }
                }
                rounds
            },
        );
        assert_eq!(result, Ok(rounds));
    }

    #[test]
    fn a_child_that_fails_its_setup_is_reported_not_waited_for() {
        let Some(cpus) = cpus() else { return };
        let started = Instant::now();
        let result = run("test", cpus, Duration::from_secs(20), |_| Err(Failure::Attach), |_| ());
        assert_eq!(result, Err(Error::Child(Failure::Attach)));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_child_killed_before_it_is_ready_is_seen_dead() {
        let Some(cpus) = cpus() else { return };
        let result = run(
            "test",
            cpus,
            Duration::from_secs(20),
            |_| {
                let _ = rustix::process::kill_process(rustix::process::getpid(), Signal::KILL);
                Ok(())
            },
            |_| (),
        );
        assert_eq!(result, Err(Error::Died { exit: Exit::Signal(9), done: false }));
    }

    #[test]
    fn a_hung_child_is_killed_at_the_limit() {
        let Some(cpus) = cpus() else { return };
        let limit = Duration::from_millis(300);
        let started = Instant::now();
        let result = run(
            "test",
            cpus,
            limit,
            |_| loop {
                // Hangs without ever calling `start` or a wait loop's `turn`.
                std::hint::spin_loop();
            },
            |_| (),
        );
        assert_eq!(result, Err(Error::TimedOut(limit)));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
