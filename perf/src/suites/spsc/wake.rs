//! Case `wake-parked`: how long a wake-up takes to reach a consumer that is asleep in the
//! kernel on the other cpu. Three implementations, one producer loop:
//!
//! - [`link()`]: a real corelane lane (one agent popping a [`LinkRx`]) pinned to cpu B, idle
//!   strategy `Sleep`, so it parks in its reactor after every pass without work; the
//!   producer on cpu A calls [`LinkTx::push`](corelane::runtime::LinkTx::push), which writes
//!   the lane's eventfd because the lane is parked.
//! - [`futex()`]: a thread on cpu B in `futex_wait` on a word; the producer stores the next
//!   value and calls `futex_wake`.
//! - [`eventfd()`]: a thread on cpu B blocked in `read` on an eventfd; the producer `write`s 1.
//!
//! What is timed, one way: from an `Instant::now()` on cpu A just before the push/wake call
//! to an `Instant::now()` on cpu B as soon as the consumer has the item (the lane: right after
//! `pop` returned it in `do_work`; futex: the first load that sees the new value after
//! `futex_wait` returned; eventfd: right after `read` returned). `Instant` is
//! CLOCK_MONOTONIC, one clock for every cpu, so the two readings subtract. The consumer
//! hands its reading back through [`Answer`] (a line the producer spins on), after taking it:
//! the hand-back is not in the sample.
//!
//! Every sample starts with the consumer asleep: the producer waits [`GAP`] after the
//! previous answer and then until `/proc/self/task/<tid>/stat` shows the consumer thread in
//! state `S` (sleeping); only then does it take its timestamp. Afterwards it checks that the
//! wake was paid where it can: for the lane, [`LaneWaker::wakes`] grew by one (the producer
//! found the lane parked and wrote its eventfd); for futex, `futex_wake` reports one waiter
//! woken. A sample that fails the check is dropped and counted (`skipped`); eventfd's
//! `write` cannot say whether the reader slept, so there only the `/proc` check applies.

use std::fmt::Display;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corelane::runtime::{
    link as link_of, Agent, Ctx, IdleStrategy, LaneSpec, LaneWaker, LinkRx, ReactorChoice, Runtime,
};
use rustix::io::Errno;
use rustix::thread::futex;

use super::{Label, CAPACITY};
use crate::pair::{self, relax};
use crate::pin::{pin_current, Pair};

/// The least time between one answer and the next wake: the consumer has been asleep about
/// this long when it is woken (long enough to be past any spinning before a sleep, and past
/// the short polling a hypervisor may do for a vCPU that just halted).
pub const GAP: Duration = Duration::from_millis(1);

/// The lane's park (`IdleStrategy::Sleep`): long beside [`GAP`], so a park rarely times out
/// near a wake. (Shutdown wakes the lane through its waker, so it does not wait for this.)
pub const PARK: Duration = Duration::from_millis(100);

/// A consumer not asleep, or a wake not answered, this long after the gap ends the run.
const LIMIT: Duration = Duration::from_secs(2);

/// Wake-ups per measurement.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Untimed wake-ups first.
    pub warmup: u64,
    /// Timed wake-ups (kept or skipped).
    pub samples: u64,
}

/// What one measurement returns.
#[derive(Debug)]
pub struct Woken {
    /// One-way wake-up latency (ns) of each timed wake that was checked paid.
    pub samples: Vec<u64>,
    /// Timed wakes dropped because the check said the consumer was not asleep.
    pub skipped: u64,
    /// The lane's reactor (`io_uring` or `poll`); `None` for the bare syscalls.
    pub reactor: Option<&'static str>,
}

/// `corelane-link`: a lane on cpu B that parks in its reactor, fed by a link from cpu A.
pub fn link(pair: &Pair, label: Label, sizes: Sizes) -> Woken {
    let waker = LaneWaker::new().unwrap_or_else(|e| fail(label, format!("no eventfd: {e}"), 2));
    let (mut tx, rx) = link_of::<u64>(CAPACITY, &waker);
    let shared = Arc::new(Shared::new());
    let sink = Sink { rx, next: 1, shared: shared.clone(), label };
    let runtime = Runtime::start(
        vec![LaneSpec {
            name: "wake".into(),
            core: Some(pair.b),
            idle: IdleStrategy::Sleep(PARK),
            agents: vec![Box::new(sink)],
            waker: Some(waker.clone()),
        }],
        ReactorChoice::Auto,
    )
    .unwrap_or_else(|e| fail(label, format!("cannot start the lane: {e}"), 2));
    let reactor = runtime.reactor().name();
    let a = pair.a;
    let (samples, skipped) = std::thread::scope(|s| {
        s.spawn(|| {
            pin_current(a);
            let mut wakes = waker.wakes();
            produce(&shared, label, sizes, |seq| {
                tx.push(seq).expect("one item in flight in a 1024-slot link: never full");
                // After the push (the sample is the consumer's clock reading, not ours): a
                // paid wake counted exactly one syscall.
                let now = waker.wakes();
                let paid = now == wakes + 1;
                wakes = now;
                paid
            })
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    runtime.shutdown();
    if let Some(failure) = runtime.join() {
        fail(label, failure, 3);
    }
    Woken { samples, skipped, reactor: Some(reactor) }
}

/// `futex`: a thread on cpu B in `futex_wait`, woken by a store and `futex_wake` from cpu A.
pub fn futex(pair: &Pair, label: Label, sizes: Sizes) -> Woken {
    let shared = Shared::new();
    let word = Word(AtomicU32::new(0));
    let total = sizes.warmup + sizes.samples;
    let (shared, word) = (&shared, &word.0);
    let ((samples, skipped), ()) = pair::run(
        pair,
        move || {
            produce(shared, label, sizes, |seq| {
                // SYNC: Release publishes the new value -> the consumer's Acquire load after
                // futex_wait returns (the value is all that is published).
                word.store(seq as u32, Ordering::Release);
                matches!(futex::wake(word, futex::Flags::PRIVATE, 1), Ok(1))
            })
        },
        move || {
            shared.publish_tid();
            let mut last = 0u32;
            for seq in 1..=total {
                let got = loop {
                    // SYNC: Acquire pairs with the producer's Release store of the word.
                    let now = word.load(Ordering::Acquire);
                    if now != last {
                        break now;
                    }
                    match futex::wait(word, futex::Flags::PRIVATE, last, None) {
                        Ok(()) | Err(Errno::AGAIN | Errno::INTR) => {}
                        Err(e) => fail(label, format!("futex_wait: {e}"), 3),
                    }
                };
                let at = Instant::now();
                if got != seq as u32 {
                    pair::out_of_order(label.imp, label.case, seq, u64::from(got));
                }
                shared.answer(seq, at);
                last = got;
            }
        },
    );
    Woken { samples, skipped, reactor: None }
}

/// `eventfd`: a thread on cpu B blocked in `read` on an eventfd, woken by a `write` from A.
pub fn eventfd(pair: &Pair, label: Label, sizes: Sizes) -> Woken {
    let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
        .unwrap_or_else(|e| fail(label, format!("no eventfd: {e}"), 2));
    let shared = Shared::new();
    let total = sizes.warmup + sizes.samples;
    let (shared, efd) = (&shared, &efd);
    let ((samples, skipped), ()) = pair::run(
        pair,
        move || {
            produce(shared, label, sizes, |_| {
                if let Err(e) = rustix::io::write(efd, &1u64.to_ne_bytes()) {
                    fail(label, format!("eventfd write: {e}"), 3);
                }
                true // a write cannot tell whether the reader slept: /proc said it did
            })
        },
        move || {
            shared.publish_tid();
            let mut buf = [0u8; 8];
            for seq in 1..=total {
                loop {
                    match rustix::io::read(efd, &mut buf) {
                        Ok(8) => break,
                        Err(Errno::INTR) => {}
                        other => fail(label, format!("eventfd read: {other:?}"), 3),
                    }
                }
                let at = Instant::now();
                let count = u64::from_ne_bytes(buf);
                if count != 1 {
                    fail(label, format!("wake-up {seq}: eventfd count {count}, expected 1"), 3);
                }
                shared.answer(seq, at);
            }
        },
    );
    Woken { samples, skipped, reactor: None }
}

/// The producer, the same for all three, on cpu A: wake-ups `1..=warmup + samples`; before
/// each, [`GAP`] since the previous answer and the consumer seen asleep; then a timestamp and
/// `wake(seq)`, which returns whether the wake was paid (the consumer was asleep). Returns
/// the timed samples of paid wakes and the count of the others.
fn produce(
    shared: &Shared,
    label: Label,
    sizes: Sizes,
    mut wake: impl FnMut(u64) -> bool,
) -> (Vec<u64>, u64) {
    let tid = shared.consumer_tid(label);
    let watch = Watch::open(tid)
        .unwrap_or_else(|e| fail(label, format!("cannot read /proc/self/task/{tid}/stat: {e}"), 2));
    // Faulted in before timing, as in pair::time_round_trips.
    let mut samples = vec![0u64; sizes.samples as usize];
    samples.clear();
    let mut skipped = 0;
    let mut last = Instant::now();
    for seq in 1..=sizes.warmup + sizes.samples {
        let deadline = last + GAP + LIMIT;
        watch.wait_asleep(last + GAP, deadline, label);
        let t0 = Instant::now();
        let paid = wake(seq);
        let at_ns = shared.wait_answer(seq, deadline, label);
        last = Instant::now();
        if seq > sizes.warmup {
            if paid {
                samples.push(at_ns.saturating_sub(shared.ns(t0)));
            } else {
                skipped += 1;
            }
        }
    }
    (samples, skipped)
}

/// The lane's agent: pops wake-up numbers from the link, checks them, answers.
struct Sink {
    rx: LinkRx<u64>,
    next: u64,
    shared: Arc<Shared>,
    label: Label,
}

impl Agent for Sink {
    fn name(&self) -> &str {
        "wake-sink"
    }

    fn on_start(&mut self, _ctx: &mut Ctx<'_>) -> std::io::Result<()> {
        self.shared.publish_tid(); // on the lane's thread
        Ok(())
    }

    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        let Ok(seq) = self.rx.pop() else { return 0 };
        let at = Instant::now();
        if seq != self.next {
            pair::out_of_order(self.label.imp, self.label.case, self.next, seq);
        }
        self.shared.answer(seq, at);
        self.next += 1;
        1
    }
}

/// What both sides share: the clock base, the consumer's thread id, and its answer.
struct Shared {
    base: Instant,
    tid: AtomicI32,
    answer: Answer,
}

/// The consumer's answer: the number of the wake-up it saw last and its clock reading then
/// (ns since [`Shared::base`]). On its own 128-byte line: the producer spins on it.
#[repr(align(128))]
struct Answer {
    seq: AtomicU64,
    at_ns: AtomicU64,
}

/// The futex word, on its own line.
#[repr(align(128))]
struct Word(AtomicU32);

impl Shared {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            tid: AtomicI32::new(0),
            answer: Answer { seq: AtomicU64::new(0), at_ns: AtomicU64::new(0) },
        }
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Consumer side, on its own thread before its first sleep. Relaxed: the id is a number
    /// read from /proc, no memory rides on it.
    fn publish_tid(&self) {
        self.tid.store(rustix::thread::gettid().as_raw_nonzero().get(), Ordering::Relaxed);
    }

    /// Producer side: the consumer thread's id, once it has published it.
    fn consumer_tid(&self, label: Label) -> i32 {
        let deadline = Instant::now() + LIMIT;
        loop {
            let tid = self.tid.load(Ordering::Relaxed);
            if tid != 0 {
                return tid;
            }
            if Instant::now() > deadline {
                fail(label, "the consumer thread did not start", 3);
            }
            std::thread::yield_now();
        }
    }

    /// Consumer side: wake-up `seq` seen at `at`.
    fn answer(&self, seq: u64, at: Instant) {
        self.answer.at_ns.store(self.ns(at), Ordering::Relaxed);
        // SYNC: Release publishes at_ns -> wait_answer's Acquire load of seq.
        self.answer.seq.store(seq, Ordering::Release);
    }

    /// Producer side: spins until wake-up `seq` is answered; its clock reading (ns since base).
    fn wait_answer(&self, seq: u64, deadline: Instant, label: Label) -> u64 {
        let mut turns = 0u32;
        // SYNC: Acquire pairs with answer's Release store of seq, so at_ns is the one for seq.
        while self.answer.seq.load(Ordering::Acquire) != seq {
            relax();
            turns = turns.wrapping_add(1);
            if turns.is_multiple_of(65_536) && Instant::now() > deadline {
                fail(label, format!("wake-up {seq} was lost: no answer within {LIMIT:?}"), 3);
            }
        }
        self.answer.at_ns.load(Ordering::Relaxed)
    }
}

/// The consumer thread's `/proc` stat file, kept open and re-read from offset 0 for its state.
struct Watch {
    stat: File,
    tid: i32,
}

impl Watch {
    fn open(tid: i32) -> std::io::Result<Self> {
        Ok(Self { stat: File::open(format!("/proc/self/task/{tid}/stat"))?, tid })
    }

    /// The thread's state letter (`R` running, `S` sleeping, ...), if the file reads.
    fn state(&self) -> Option<u8> {
        let mut buf = [0u8; 512];
        let n = self.stat.read_at(&mut buf, 0).ok()?;
        state_of(&buf[..n])
    }

    /// Spins until `from`, then until the thread is asleep; past `deadline` ends the run.
    fn wait_asleep(&self, from: Instant, deadline: Instant, label: Label) {
        while Instant::now() < from {
            relax();
        }
        loop {
            let state = self.state();
            if state == Some(b'S') {
                return;
            }
            if Instant::now() > deadline {
                let seen = state.map_or("unreadable".into(), |s| char::from(s).to_string());
                let tid = self.tid;
                fail(label, format!("consumer thread {tid} did not go to sleep (state {seen})"), 3);
            }
        }
    }
}

/// The state field of a `/proc/<pid>/stat` line: the first letter after the last `)` (the
/// command name before it may itself hold spaces and parentheses).
fn state_of(stat: &[u8]) -> Option<u8> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    stat.get(close + 2).copied().filter(u8::is_ascii_alphabetic)
}

/// Ends the run with `code`, naming the implementation and case.
#[cold]
#[inline(never)]
fn fail(label: Label, what: impl Display, code: i32) -> ! {
    eprintln!("error: {} {}: {what}; aborting the run", label.imp, label.case);
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pin::Cores;

    #[test]
    fn state_is_the_letter_after_the_last_parenthesis() {
        assert_eq!(state_of(b"42 (lane-wake) S 1 42 0"), Some(b'S'));
        assert_eq!(state_of(b"42 (odd) name) R 1"), Some(b'R'));
        assert_eq!(state_of(b"42 (x)"), None);
        assert_eq!(state_of(b"garbage"), None);
    }

    #[test]
    fn watch_tells_running_from_sleeping() {
        let me = Watch::open(rustix::thread::gettid().as_raw_nonzero().get()).unwrap();
        assert_eq!(me.state(), Some(b'R'), "a thread reading its own state is running");
        let shared = Shared::new();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let shared = &shared;
            s.spawn(move || {
                shared.publish_tid();
                rx.recv().unwrap();
            });
            let label = Label { imp: "test", case: "test" };
            let watch = Watch::open(shared.consumer_tid(label)).unwrap();
            let now = Instant::now();
            watch.wait_asleep(now, now + LIMIT, label); // ends the test binary if it fails
            tx.send(()).unwrap();
        });
    }

    const TINY: Sizes = Sizes { warmup: 3, samples: 30 };

    /// The three real measurements at tiny sizes: every wake answered in order, samples
    /// plausible (a wake-up through the kernel takes more than 100 ns and, here, far less
    /// than a second), and kept plus skipped adds up.
    #[test]
    fn each_implementation_wakes_a_sleeping_consumer() {
        let Some(pair) = Cores::discover().ok().and_then(|c| c.pick_pair(None).ok()) else {
            eprintln!("SKIPPED: fewer than two cpus");
            return;
        };
        for (imp, measure) in [
            ("corelane-link", link as fn(&Pair, Label, Sizes) -> Woken),
            ("futex", futex),
            ("eventfd", eventfd),
        ] {
            let woken = measure(&pair, Label { imp, case: "wake-parked" }, TINY);
            assert_eq!(woken.samples.len() as u64 + woken.skipped, TINY.samples, "{imp}");
            assert!(woken.samples.len() as u64 >= TINY.samples / 2, "{imp}: {woken:?}");
            assert!(woken.samples.iter().all(|&ns| ns > 100 && ns < 1_000_000_000), "{imp}");
            assert_eq!(woken.reactor.is_some(), imp == "corelane-link");
        }
    }

    #[test]
    fn lines_are_apart() {
        assert_eq!(std::mem::align_of::<Answer>(), 128);
        assert_eq!(std::mem::align_of::<Word>(), 128);
    }
}
