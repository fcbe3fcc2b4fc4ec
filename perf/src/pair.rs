//! Two pinned threads and the pieces every cross-core measurement shares: the start barrier,
//! the wait loop and its [`Waiter`] policy, timestamps to samples, and the loud stop on an
//! out-of-order item.

use std::sync::Barrier;
use std::time::Instant;

use corelane_rings::spsc::Corruption;

use crate::pin::{pin_current, Pair};

/// Runs `a` on cpu `pair.a` and `b` on cpu `pair.b`, each in a fresh thread that pins itself
/// and then waits at a barrier, so neither closure starts before both threads are running on
/// their cpus. Returns both results; a panic in either thread is re-raised here.
pub fn run<A, B, RA, RB>(pair: &Pair, a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let thread_b = s.spawn(|| {
            pin_current(pair.b);
            barrier.wait();
            b()
        });
        let thread_a = s.spawn(|| {
            pin_current(pair.a);
            barrier.wait();
            a()
        });
        let ra = thread_a.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        let rb = thread_b.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (ra, rb)
    })
}

/// One turn of a wait loop. A plain busy spin (no `pause`, no yield) for every implementation
/// and for the floor: `pause` costs ~10 cycles on AMD Zen but ~140 on Intel since Skylake, and
/// would add that to each hand-off. Kept as one function so the policy lives in one place.
#[inline(always)]
pub fn relax() {}

/// How a driver's wait loops turn and how its checks stop the run. The drivers are written
/// once over this, so a thread pair ([`Threads`]) and a process pair
/// ([`crate::fork::Watch`], which also keeps an eye on the other process) run the same loops.
pub trait Waiter {
    /// One turn of a wait loop; `turns` counts this wait's turns so far (start it at 0).
    fn turn(&self, turns: &mut u32);
    /// A consumer saw `got` where it expected `expected`: ends the run (exit status 3).
    fn out_of_order(&self, imp: &str, case: &str, expected: u64, got: u64) -> !;
    /// A ring end's verdict that the peer's position is impossible: ends the run (exit 3).
    fn corrupt(&self, imp: &str, case: &str, c: Corruption) -> !;
}

/// The waiting of two threads of this process: [`relax`] and nothing else, so the turn
/// counter compiles away.
#[derive(Clone, Copy, Debug)]
pub struct Threads;

impl Waiter for Threads {
    #[inline(always)]
    fn turn(&self, _turns: &mut u32) {
        relax();
    }

    fn out_of_order(&self, imp: &str, case: &str, expected: u64, got: u64) -> ! {
        out_of_order(imp, case, expected, got)
    }

    #[cold]
    fn corrupt(&self, imp: &str, case: &str, c: Corruption) -> ! {
        eprintln!("error: {imp} {case}: {c}; aborting the run");
        std::process::exit(3);
    }
}

/// Runs `round_trip(i)` for `i` in `0..warmup` untimed, then for `warmup..warmup + samples`
/// with one `Instant::now()` after each, and returns one sample (ns) per timed round trip: the
/// gap between consecutive timestamps less the measured cost of one clock read
/// ([`crate::timer`]), the same for every implementation.
/// The timestamp buffer is faulted in before timing: a reserved but untouched Vec would take a
/// page fault every 256 samples inside the timed loop.
pub fn time_round_trips(warmup: u64, samples: u64, mut round_trip: impl FnMut(u64)) -> Vec<u64> {
    for i in 0..warmup {
        round_trip(i);
    }
    let mut stamps = vec![Instant::now(); samples as usize + 1];
    stamps.clear();
    stamps.push(Instant::now());
    for i in warmup..warmup + samples {
        round_trip(i);
        stamps.push(Instant::now());
    }
    gaps_ns(&stamps)
}

/// Nanoseconds between consecutive timestamps, less the timer's cost (saturating at 0): one
/// sample per gap.
pub fn gaps_ns(stamps: &[Instant]) -> Vec<u64> {
    crate::timer::net_gaps_ns(stamps, crate::timer::cost_ns())
}

/// Ends the run (exit 3): a consumer saw `got` where it expected `expected`. A benchmark that
/// drops, duplicates or reorders items measures nothing, so this is never just a warning.
#[cold]
#[inline(never)]
pub fn out_of_order(imp: &str, case: &str, expected: u64, got: u64) -> ! {
    eprintln!(
        "error: {imp} {case}: item out of order: expected sequence number {expected}, \
         received {got}; aborting the run"
    );
    std::process::exit(3);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn gaps_are_consecutive_differences() {
        let t0 = Instant::now();
        let stamps = [t0, t0 + Duration::from_nanos(100), t0 + Duration::from_nanos(250)];
        // Tests never calibrate the timer, so its cost here is 0 (timer.rs tests the rest).
        assert_eq!(gaps_ns(&stamps), vec![100, 150]);
        assert!(gaps_ns(&stamps[..1]).is_empty());
    }
}
