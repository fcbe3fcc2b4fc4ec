//! A child process started afresh from this binary and pinned to a cpu, for the cross-process
//! cases whose child must do what a forked one may not (see [`crate::fork`]): allocate, open
//! and map files by path, connect sockets, start a library of its own (iceoryx2's node).
//!
//! [`spawn`] runs `current_exe() __child <suite> <parent pid> <cpu> <args...>`; `main` sends
//! that first argument to [`child_main`], which sets the death signal, pins, and calls the
//! suite's `child` function with a [`Watch`] and the args. The two processes meet on a
//! [`Link`]: two small shared-memory rings of `u64` (corelane's `spsc::shm`, in files of the
//! measurement's directory), used only outside the timed loops: ready, go, acknowledgements
//! that pace a one-way measurement, and bye.
//!
//! # Neither side hangs
//! - The child asks for `SIGKILL` when its parent dies (`PR_SET_PDEATHSIG`) and checks that its
//!   parent is still the process that started it. The signal follows the parent *thread*
//!   that spawned: the suite spawns from its main thread, which outlives the child.
//! - Every wait loop counts its turns; every [`CHECK_EVERY`] turns without progress the parent
//!   looks whether the child has exited (`waitid` with `WNOWAIT`) and at its deadline
//!   ([`LIMIT`]), the child at its own deadline. A child never exits before the parent's bye,
//!   so a child seen gone while the parent waits has failed, and the run stops at once.
//! - A failure either side sees ends the run: the child prints why and exits with status 3 (the
//!   transport under test misbehaved) or 4; the parent kills and reaps the child, runs the
//!   suite's clean-up ([`on_abort`]: the suite's shared-memory files), says why and exits with
//!   the same status. [`Child`] kills and reaps on drop too (a panic on the parent's side).
#![deny(unsafe_code)]

use std::fmt;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use corelane::mapping::Mapping;
use corelane_rings::spsc::shm::{region_len, ShmConsumer, ShmPopError, ShmProducer, ShmPushError};
use corelane_rings::spsc::Corruption;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitOptions};

use crate::pair::{relax, Waiter};
use crate::pin::pin_current;

/// The first argument that makes this binary a child process.
pub const CHILD_ARG: &str = "__child";
/// How long either side waits for the other in one measurement before giving up.
pub const LIMIT: Duration = Duration::from_secs(60);
/// How long the parent waits for the child to exit after its bye.
pub const REAP_LIMIT: Duration = Duration::from_secs(10);
/// Turns of a wait loop without progress between two looks at the other process (a power of
/// two, as in [`crate::fork`]).
pub const CHECK_EVERY: u32 = 1 << 16;

/// Exit status: the transport under test delivered a wrong, torn or out-of-order message.
pub const EXIT_WRONG: i32 = 3;
/// Exit status: anything else (setup, a hang, a dead peer).
pub const EXIT_FAILED: i32 = 4;

/// A suite's child entry: runs one side of a measurement with `args`, or says why not (exit
/// status and message).
pub type ChildFn = fn(&Watch, &[String]) -> Result<(), (i32, String)>;

static CLEANUP: OnceLock<fn()> = OnceLock::new();

/// Sets what the parent runs before it exits on a failure (once per process; later calls are
/// ignored): removing the files its measurements made.
pub fn on_abort(cleanup: fn()) {
    let _ = CLEANUP.set(cleanup);
}

/// Starts `suite`'s child side with `args`, to pin itself to `cpu`. `what` names the
/// measurement in error messages.
pub fn spawn(suite: &str, cpu: usize, args: &[String], what: &str) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let proc = Command::new(&exe)
        .arg(CHILD_ARG)
        .arg(suite)
        .arg(me.to_string())
        .arg(cpu.to_string())
        .args(args)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = Pid::from_raw(proc.id() as i32).ok_or("the child has no pid")?;
    Ok(Child { proc, pid, what: what.to_owned(), reaped: false })
}

/// The child's life: death signal, parent check, pin, the suite's function, exit status.
/// `args` are the arguments after [`CHILD_ARG`].
pub fn child_main(args: &[String], find: impl Fn(&str) -> Option<ChildFn>) -> ExitCode {
    let [suite, parent, cpu, rest @ ..] = args else {
        eprintln!("error: {CHILD_ARG} expects <suite> <parent pid> <cpu> [args], saw {args:?}");
        return ExitCode::from(2);
    };
    let (Ok(parent), Ok(cpu)) = (parent.parse::<i32>(), cpu.parse::<usize>()) else {
        eprintln!("error: {CHILD_ARG}: bad parent pid or cpu in {args:?}");
        return ExitCode::from(2);
    };
    let Some(body) = find(suite) else {
        eprintln!("error: {CHILD_ARG}: suite {suite:?} has no child side");
        return ExitCode::from(2);
    };
    let death_signal = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    // The parent may have died before prctl: then no signal will ever come.
    if death_signal.is_err()
        || rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent)
    {
        eprintln!("error: {suite} child: its parent was gone before it started");
        return ExitCode::from(EXIT_FAILED as u8);
    }
    pin_current(cpu);
    let watch = Watch { deadline: Instant::now() + LIMIT, side: Side::Child };
    match body(&watch, rest) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, why)) => {
            eprintln!("error: {suite} child: {why}");
            ExitCode::from(code as u8)
        }
    }
}

/// Parent: cleans up ([`on_abort`]), says why measurement `what` failed, and exits with
/// `code`. The child must be gone already (reaped, or killed by [`Watch::fail`]).
#[cold]
pub fn abort(what: &str, code: i32, why: &str) -> ! {
    if let Some(cleanup) = CLEANUP.get() {
        cleanup();
    }
    eprintln!("error: {what}: {why}; aborting the run");
    std::process::exit(code)
}

/// A spawned child, reaped exactly once: by [`Child::reap`], or killed and reaped on drop.
#[derive(Debug)]
pub struct Child {
    proc: std::process::Child,
    pid: Pid,
    what: String,
    reaped: bool,
}

impl Child {
    /// The parent side's watch on this child, for the parent's wait loops.
    pub fn watch(&self) -> Watch {
        Watch {
            deadline: Instant::now() + LIMIT,
            side: Side::Parent { child: self.pid, what: self.what.clone() },
        }
    }

    /// Waits at most [`REAP_LIMIT`] for the child to exit (call after the bye); `Err` with the
    /// exit status to use if it failed or had to be killed.
    pub fn reap(&mut self) -> Result<(), (i32, String)> {
        let start = Instant::now();
        loop {
            match self.proc.try_wait() {
                Ok(Some(status)) => {
                    self.reaped = true;
                    return match status.code() {
                        Some(0) => Ok(()),
                        Some(code) => Err((
                            status_of(code),
                            format!("the child process exited with status {code}"),
                        )),
                        None => Err((EXIT_FAILED, format!("the child process ended: {status}"))),
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    self.kill();
                    return Err((EXIT_FAILED, format!("cannot wait for the child process: {e}")));
                }
            }
            if start.elapsed() >= REAP_LIMIT {
                self.kill();
                return Err((
                    EXIT_FAILED,
                    format!(
                        "the child process had not exited {} s after the bye; killed it",
                        REAP_LIMIT.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `SIGKILL`, then a blocking reap.
    pub fn kill(&mut self) {
        if !self.reaped {
            let _ = self.proc.kill();
            let _ = self.proc.wait();
            self.reaped = true;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child's exit status as the run's: 2 and 3 pass through, anything else is 4.
fn status_of(code: i32) -> i32 {
    match code {
        2 | EXIT_WRONG => code,
        _ => EXIT_FAILED,
    }
}

/// What each side's wait loops consult: the other process and the deadline.
#[derive(Debug)]
pub struct Watch {
    deadline: Instant,
    side: Side,
}

#[derive(Debug)]
enum Side {
    Child,
    Parent { child: Pid, what: String },
}

impl Watch {
    /// A watch for both sides run as two threads of one test process: it checks only the
    /// deadline, and a failure exits the test binary.
    #[cfg(test)]
    pub fn in_process() -> Self {
        Watch { deadline: Instant::now() + LIMIT, side: Side::Child }
    }

    /// Looks at the other process now (the cold half of [`Waiter::turn`]), for loops that
    /// sleep between attempts, such as waiting for a socket to accept.
    #[cold]
    #[inline(never)]
    pub fn check(&self) {
        if Instant::now() >= self.deadline {
            self.fail(
                EXIT_FAILED,
                &format!("waited longer than {} s for the other process", LIMIT.as_secs()),
            );
        }
        if let Side::Parent { child, .. } = &self.side {
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
            match rustix::process::waitid(WaitId::Pid(*child), options) {
                Ok(None) => {}
                Ok(Some(status)) => {
                    let code = status.exit_status().map_or(EXIT_FAILED, status_of);
                    self.fail(code, "the child process exited before the measurement was over");
                }
                Err(e) => self.fail(EXIT_FAILED, &format!("cannot look at the child process: {e}")),
            }
        }
    }

    /// Ends the run: the child says why and exits with `code`; the parent kills and reaps the
    /// child, cleans up ([`on_abort`]), says why and exits with `code`.
    #[cold]
    #[inline(never)]
    pub fn fail(&self, code: i32, why: &str) -> ! {
        match &self.side {
            Side::Child => {
                eprintln!("error: child process: {why}");
                std::process::exit(code);
            }
            Side::Parent { child, what } => {
                // Not yet reaped (the watch only ever looks with WNOWAIT): the pid is still
                // the child's.
                let _ = rustix::process::kill_process(*child, Signal::KILL);
                let _ = rustix::process::waitpid(Some(*child), WaitOptions::empty());
                abort(what, code, why)
            }
        }
    }
}

impl Waiter for Watch {
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
        self.fail(
            EXIT_WRONG,
            &format!(
                "{imp} {case}: message out of order: expected sequence number {expected}, \
                 received {got}"
            ),
        )
    }

    #[cold]
    fn corrupt(&self, imp: &str, case: &str, c: Corruption) -> ! {
        self.fail(EXIT_FAILED, &format!("{imp} {case}: the control link says: {c}"))
    }
}

/// The two rings the processes meet on: `down` (parent to child) and `up` (child to parent).
/// Each end holds the producer of one and the consumer of the other.
#[derive(Debug)]
pub struct Link {
    tx: ShmProducer<u64, Mapping>,
    rx: ShmConsumer<u64, Mapping>,
}

/// Messages on a [`Link`]: a kind in the top byte, a value (a sequence number) below.
const KIND_SHIFT: u32 = 56;
const READY: u64 = 1 << KIND_SHIFT;
const GO: u64 = 2 << KIND_SHIFT;
const BYE: u64 = 3 << KIND_SHIFT;
const ACK: u64 = 4 << KIND_SHIFT;
/// Records per ring: acknowledgements travel one at a time, so a few would do.
const LINK_CAPACITY: usize = 64;
const DOWN: &str = "link-down";
const UP: &str = "link-up";

/// A link message, for error text.
struct Said(u64);

impl fmt::Display for Said {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.0 & ((1 << KIND_SHIFT) - 1);
        match self.0 & !((1 << KIND_SHIFT) - 1) {
            READY => f.write_str("ready"),
            GO => f.write_str("go"),
            BYE => f.write_str("bye"),
            ACK => write!(f, "ack {value}"),
            _ => write!(f, "{:#x}", self.0),
        }
    }
}

impl Link {
    /// Parent: lays out both rings in `dir` and takes its ends (producer of `down`, consumer
    /// of `up`). Call before [`spawn`].
    pub fn create(dir: &Path) -> Result<Self, String> {
        let tx = ShmProducer::create(ring_file(dir, DOWN, true)?, LINK_CAPACITY as u64)
            .map_err(|e| format!("cannot lay out the link: {e}"))?;
        // The child produces into `up`: lay it out, give the role back, attach the consumer.
        drop(
            ShmProducer::<u64, _>::create(ring_file(dir, UP, true)?, LINK_CAPACITY as u64)
                .map_err(|e| format!("cannot lay out the link: {e}"))?,
        );
        let rx = ShmConsumer::attach(ring_file(dir, UP, false)?)
            .map_err(|e| format!("cannot attach the link: {e}"))?;
        Ok(Self { tx, rx })
    }

    /// Child: attaches its ends of the rings the parent laid out in `dir`.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let rx = ShmConsumer::attach(ring_file(dir, DOWN, false)?)
            .map_err(|e| format!("cannot attach the link: {e}"))?;
        let tx = ShmProducer::attach(ring_file(dir, UP, false)?)
            .map_err(|e| format!("cannot attach the link: {e}"))?;
        Ok(Self { tx, rx })
    }

    /// Child: says it has its endpoints, then waits for the parent's go.
    pub fn ready(&mut self, w: &Watch) {
        self.say(w, READY);
        self.expect(w, GO);
    }

    /// Parent: waits for the child's ready, then says go.
    pub fn start(&mut self, w: &Watch) {
        self.expect(w, READY);
        self.say(w, GO);
    }

    /// Acknowledges message `seq` (the consumer of a one-way measurement).
    pub fn ack(&mut self, w: &Watch, seq: u64) {
        self.say(w, ACK | seq);
    }

    /// Waits for the acknowledgement of message `seq`.
    pub fn wait_ack(&mut self, w: &Watch, seq: u64) {
        self.expect(w, ACK | seq);
    }

    /// The next acknowledgement if one is waiting: the sequence number it acknowledges.
    pub fn take_ack(&mut self, w: &Watch) -> Option<u64> {
        match self.rx.pop() {
            Ok(got) if got & !((1 << KIND_SHIFT) - 1) == ACK => Some(got & ((1 << KIND_SHIFT) - 1)),
            Ok(got) => w.fail(
                EXIT_FAILED,
                &format!("the link said {} where an ack was expected", Said(got)),
            ),
            Err(ShmPopError::Empty) => None,
            Err(ShmPopError::Corrupt(c)) => w.corrupt("link", "take_ack", c),
        }
    }

    /// Parent: the measurement is over; the child may drop its endpoints and exit.
    pub fn bye(&mut self, w: &Watch) {
        self.say(w, BYE);
    }

    /// Child: waits for the parent's bye, so its endpoints live until the parent is done.
    /// Acknowledgements sent after the last one the child waited for are passed over.
    pub fn wait_bye(&mut self, w: &Watch) {
        let mut turns = 0;
        loop {
            match self.rx.pop() {
                Ok(BYE) => return,
                Ok(got) if got & !((1 << KIND_SHIFT) - 1) == ACK => {}
                Ok(got) => w.fail(
                    EXIT_FAILED,
                    &format!("the link said {} where bye was expected", Said(got)),
                ),
                Err(ShmPopError::Empty) => w.turn(&mut turns),
                Err(ShmPopError::Corrupt(c)) => w.corrupt("link", "wait_bye", c),
            }
        }
    }

    fn say(&mut self, w: &Watch, message: u64) {
        let mut turns = 0;
        loop {
            match self.tx.push(message) {
                Ok(()) => return,
                Err(ShmPushError::Full(_)) => w.turn(&mut turns),
                Err(ShmPushError::Corrupt(_, c)) => w.corrupt("link", "say", c),
            }
        }
    }

    fn expect(&mut self, w: &Watch, message: u64) {
        let mut turns = 0;
        loop {
            match self.rx.pop() {
                Ok(got) if got == message => return,
                Ok(got) => w.fail(
                    EXIT_FAILED,
                    &format!("the link said {} where {} was expected", Said(got), Said(message)),
                ),
                Err(ShmPopError::Empty) => w.turn(&mut turns),
                Err(ShmPopError::Corrupt(c)) => w.corrupt("link", "expect", c),
            }
        }
    }
}

/// Maps ring file `name` in `dir`, creating it at the ring's size first if `create`.
fn ring_file(dir: &Path, name: &str, create: bool) -> Result<Mapping, String> {
    let len = region_len::<u64>(LINK_CAPACITY).expect("64 records of 8 bytes fit a usize");
    let path = dir.join(name);
    if create {
        let file = std::fs::File::create_new(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        file.set_len(len as u64).map_err(|e| format!("cannot size {}: {e}", path.display()))?;
    }
    Mapping::open(&path, len).map_err(|e| format!("cannot map {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_messages_read_back() {
        assert_eq!(Said(READY).to_string(), "ready");
        assert_eq!(Said(ACK | 41).to_string(), "ack 41");
        assert_eq!(Said(BYE).to_string(), "bye");
        assert_eq!(Said(9 << KIND_SHIFT).to_string(), "0x900000000000000");
        assert_eq!(status_of(3), 3);
        assert_eq!(status_of(101), 4);
    }

    /// Both ends of a link in one process (the roles are per ring, not per process).
    #[test]
    fn a_link_carries_the_handshake_and_acks() {
        let dir = std::env::temp_dir().join(format!("corelane-perf-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut parent = Link::create(&dir).unwrap();
        let mut child = Link::open(&dir).unwrap();
        let w = Watch { deadline: Instant::now() + LIMIT, side: Side::Child };
        child.say(&w, READY);
        parent.start(&w);
        child.expect(&w, GO);
        parent.ack(&w, 7);
        child.wait_ack(&w, 7);
        assert_eq!(child.take_ack(&w), None);
        parent.ack(&w, 9);
        assert_eq!(child.take_ack(&w), Some(9));
        parent.ack(&w, 10);
        parent.bye(&w);
        child.wait_bye(&w);
        drop((parent, child));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
