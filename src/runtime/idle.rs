//! What a lane does when a pass found no work.

use std::time::Duration;

use super::reactor::Reactor;

/// How a lane idles after a pass with no work. Latency-critical lanes spin; lanes that share a
/// core with others back off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleStrategy {
    /// Return at once: lowest latency, burns the core.
    Spin,
    /// `std::thread::yield_now`: lets other threads of the core run.
    Yield,
    /// Spin `spins` idle passes, then yield for `yields` more, then park: wait on the reactor
    /// (woken by I/O) for at most `max_park`.
    Backoff {
        /// Idle passes that just spin.
        spins: u32,
        /// Idle passes that yield after the spins.
        yields: u32,
        /// Longest park; also bounds how late a shutdown request is seen.
        max_park: Duration,
    },
    /// Wait on the reactor for `period` after every idle pass.
    Sleep(Duration),
}

impl IdleStrategy {
    /// Backoff with 100 spins, 10 yields and 1 ms parks.
    pub const fn backoff() -> Self {
        IdleStrategy::Backoff { spins: 100, yields: 10, max_park: Duration::from_millis(1) }
    }

    /// Short name for status and metrics.
    pub fn name(&self) -> &'static str {
        NAMES[self.index()]
    }

    /// Position of the strategy's kind in [`NAMES`] (lets a lane publish it in an atomic).
    pub(super) fn index(&self) -> usize {
        match self {
            IdleStrategy::Spin => 0,
            IdleStrategy::Yield => 1,
            IdleStrategy::Backoff { .. } => 2,
            IdleStrategy::Sleep(_) => 3,
        }
    }
}

/// The strategies' names, indexed by [`IdleStrategy::index`].
pub(super) const NAMES: [&str; 4] = ["spin", "yield", "backoff", "sleep"];

/// An idle strategy with its progress through the backoff steps.
#[derive(Debug)]
pub(super) struct Idler {
    strategy: IdleStrategy,
    idle_passes: u32,
}

impl Idler {
    pub(super) fn new(strategy: IdleStrategy) -> Self {
        Self { strategy, idle_passes: 0 }
    }

    /// A pass did work: start over from the cheapest step.
    #[inline]
    pub(super) fn reset(&mut self) {
        self.idle_passes = 0;
    }

    /// A pass did no work: idle one step.
    pub(super) fn idle(&mut self, reactor: &mut Reactor) -> std::io::Result<()> {
        self.idle_passes = self.idle_passes.saturating_add(1);
        match self.strategy {
            IdleStrategy::Spin => std::hint::spin_loop(),
            IdleStrategy::Yield => std::thread::yield_now(),
            IdleStrategy::Backoff { spins, yields, max_park } => {
                if self.idle_passes <= spins {
                    std::hint::spin_loop();
                } else if self.idle_passes <= spins.saturating_add(yields) {
                    std::thread::yield_now();
                } else {
                    reactor.park(max_park)?;
                }
            }
            IdleStrategy::Sleep(period) => reactor.park(period)?,
        }
        Ok(())
    }
}
