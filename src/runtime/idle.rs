//! What a lane does when a pass found no work.

use std::time::Duration;

/// How a lane idles after a pass with no work. Latency-critical lanes spin; lanes that share a
/// core with others back off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleStrategy {
    /// Return at once: lowest latency, burns the core.
    Spin,
    /// `std::thread::yield_now`: lets other threads of the core run.
    Yield,
    /// Spin `spins` idle passes, then yield for `yields` more, then park: wait on the reactor
    /// (woken by I/O), first for [`FIRST_PARK`] (or `max_park` if shorter), then twice as long
    /// each idle pass, up to `max_park`. A pass with work starts over.
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

/// The first park of [`IdleStrategy::Backoff`], doubled each idle pass up to its `max_park`.
pub const FIRST_PARK: Duration = Duration::from_micros(50);

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

    /// The next idle step.
    pub(super) fn step(&mut self) -> Step {
        self.idle_passes = self.idle_passes.saturating_add(1);
        match self.strategy {
            IdleStrategy::Spin => Step::Spin,
            IdleStrategy::Yield => Step::Yield,
            IdleStrategy::Backoff { spins, yields, max_park } => {
                let busy = spins.saturating_add(yields);
                if self.idle_passes <= spins {
                    Step::Spin
                } else if self.idle_passes <= busy {
                    Step::Yield
                } else {
                    // The n-th park (from 0) lasts FIRST_PARK * 2^n, at most max_park.
                    let n = (self.idle_passes - busy - 1).min(31);
                    let park = FIRST_PARK.saturating_mul(1 << n);
                    Step::Park(park.min(max_park))
                }
            }
            IdleStrategy::Sleep(period) => Step::Park(period),
        }
    }
}

/// One idle step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Spin,
    Yield,
    Park(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_parks_grow_up_to_max_park() {
        let us = Duration::from_micros;
        let strategy = IdleStrategy::Backoff { spins: 2, yields: 1, max_park: us(1000) };
        let mut idler = Idler::new(strategy);
        let steps: Vec<Step> = (0..10).map(|_| idler.step()).collect();
        let park = |n| Step::Park(us(n));
        let want = [Step::Spin, Step::Spin, Step::Yield, park(50), park(100), park(200), park(400)];
        assert_eq!(steps[..7], want);
        assert_eq!(steps[7..], [park(800), park(1000), park(1000)]);
        idler.reset();
        assert_eq!(idler.step(), Step::Spin, "work starts the backoff over");
    }
}
