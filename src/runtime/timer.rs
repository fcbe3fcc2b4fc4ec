//! A lane's timers: one deadline per token, fired in deadline order.
//!
//! A binary heap of `(deadline, sequence)` with lazy deletion: re-arming a token pushes a new
//! entry and leaves the old one in the heap, where it is recognised as stale (its sequence is no
//! longer the token's) and skipped when it reaches the top. So re-arming and cancelling cost
//! O(log n) without searching the heap. When stale entries outnumber the live ones, the heap is
//! compacted, so its memory is bounded by the live timers (twice their number, plus a constant)
//! even for an agent that re-arms its timer every pass; after warm-up that costs no allocation.
//!
//! Everything takes `now` from the caller: tests drive it with `Instant`s they construct.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::reactor::slab::TokenMap;
use super::reactor::Token;

/// Stale heap entries tolerated before a compaction, beyond the number of live timers.
const SLACK: usize = 64;

/// The timers of one lane.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, Token)>>,
    /// Each armed token's deadline and the sequence of its live heap entry.
    live: TokenMap<(Instant, u64)>,
    next_seq: u64,
}

impl Timers {
    /// Arms `token` to fire at `at`, replacing its earlier deadline if it had one.
    pub(crate) fn arm(&mut self, token: Token, at: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.live.insert(token, (at, seq));
        self.heap.push(Reverse((at, seq, token)));
        if self.heap.len() > 2 * self.live.len() + SLACK {
            self.compact();
        }
    }

    /// Disarms `token`; true if it was armed.
    pub(crate) fn cancel(&mut self, token: Token) -> bool {
        self.live.remove(&token).is_some()
    }

    /// The deadline `token` is armed for.
    pub(crate) fn deadline(&self, token: Token) -> Option<Instant> {
        self.live.get(&token).map(|&(at, _)| at)
    }

    /// Timers armed.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.skip_stale();
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// How long until the earliest deadline (zero if it has passed), if any timer is armed.
    pub(crate) fn until_next(&mut self, now: Instant) -> Option<Duration> {
        self.next_deadline().map(|at| at.saturating_duration_since(now))
    }

    /// The token of the earliest timer whose deadline is at or before `now`, disarmed; earlier
    /// deadlines first, and timers with the same deadline in the order they were armed.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Token> {
        self.skip_stale();
        let &Reverse((at, _, token)) = self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        self.live.remove(&token);
        Some(token)
    }

    /// Drops stale entries from the top of the heap.
    fn skip_stale(&mut self) {
        while let Some(&Reverse((_, seq, token))) = self.heap.peek() {
            if self.live.get(&token).is_some_and(|&(_, live)| live == seq) {
                return;
            }
            self.heap.pop();
        }
    }

    /// Keeps only the live entries (in place: the heap keeps its capacity).
    #[cold]
    fn compact(&mut self) {
        let live = &self.live;
        self.heap.retain(|Reverse((_, seq, token))| {
            live.get(token).is_some_and(|&(_, live_seq)| live_seq == *seq)
        });
    }

    /// Heap entries, live and stale (for the memory bound).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn fired(timers: &mut Timers, now: Instant) -> Vec<u64> {
        std::iter::from_fn(|| timers.pop_expired(now)).map(|t| t.0).collect()
    }

    #[test]
    fn timers_fire_in_deadline_order_once_their_time_has_come() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.arm(Token(3), t0 + ms(30));
        timers.arm(Token(1), t0 + ms(10));
        timers.arm(Token(2), t0 + ms(20));
        timers.arm(Token(4), t0 + ms(20));
        assert_eq!(timers.next_deadline(), Some(t0 + ms(10)));
        assert_eq!(timers.until_next(t0 + ms(4)), Some(ms(6)));
        assert_eq!(fired(&mut timers, t0 + ms(9)), Vec::<u64>::new(), "nothing before its time");
        assert_eq!(fired(&mut timers, t0 + ms(10)), [1], "a deadline is reached at its instant");
        assert_eq!(fired(&mut timers, t0 + ms(25)), [2, 4], "same deadline: in arming order");
        assert_eq!(timers.until_next(t0 + ms(40)), Some(Duration::ZERO), "overdue");
        assert_eq!(fired(&mut timers, t0 + ms(40)), [3]);
        assert_eq!(timers.next_deadline(), None);
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn rearming_replaces_the_deadline_and_cancel_disarms() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.arm(Token(1), t0 + ms(10));
        timers.arm(Token(2), t0 + ms(15));
        timers.arm(Token(1), t0 + ms(50)); // later
        assert_eq!(timers.deadline(Token(1)), Some(t0 + ms(50)));
        assert_eq!(fired(&mut timers, t0 + ms(20)), [2], "the old deadline of 1 is gone");
        timers.arm(Token(1), t0 + ms(5)); // earlier, already due
        assert_eq!(fired(&mut timers, t0 + ms(20)), [1]);
        timers.arm(Token(5), t0 + ms(30));
        assert!(timers.cancel(Token(5)));
        assert!(!timers.cancel(Token(5)), "cancelling twice is harmless");
        assert_eq!(fired(&mut timers, t0 + ms(100)), Vec::<u64>::new());
        assert_eq!(timers.next_deadline(), None);
    }

    #[test]
    fn memory_stays_bounded_by_the_live_timers_when_rearmed_every_pass() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        for agent in 0..10 {
            timers.arm(Token(agent), t0 + ms(1000));
        }
        for pass in 0..100_000u64 {
            // Each pass pushes the deadline of one token further: a stale entry each time.
            timers.arm(Token(pass % 10), t0 + ms(1000 + pass));
            assert!(timers.entries() <= 2 * timers.len() + SLACK + 1, "pass {pass}");
        }
        let capacity = timers.heap.capacity();
        for pass in 0..10_000u64 {
            timers.arm(Token(pass % 10), t0 + ms(200_000 + pass));
        }
        assert_eq!(timers.heap.capacity(), capacity, "steady re-arming does not grow the heap");
        assert_eq!(timers.len(), 10);
        let order = fired(&mut timers, t0 + ms(1_000_000));
        assert_eq!(order.len(), 10, "each live timer fires once: {order:?}");
    }
}
