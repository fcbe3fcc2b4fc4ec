//! The per-client reorder window (`specs/alloc-protocol.md`, "Ordering: the race of seed
//! 001, solved at the receiver").
//!
//! A client numbers its events inside the allocator's critical section; the daemon applies
//! each client's events in that order, holding early arrivals in a [`Reorder`]. Sans-IO: the
//! caller passes `now` and an `apply` callback, and arms one lane timer at
//! [`Reorder::deadline`].
//!
//! - `seq == expected`: applied at once, then every held successor that is now contiguous;
//! - `seq > expected`: held, unless it is already held (a duplicate: dropped);
//! - the window is full (`window` items held) or `seq` is beyond the ring's span: the oldest
//!   gaps are skipped (held items before them applied in order) until there is room;
//! - `seq < expected`: late (its gap was skipped already): applied at once;
//! - a gap is skipped by [`Reorder::poll`] once the oldest held item has waited
//!   `gap_timeout`: a gap starts when the first item behind it arrives, so no item is held
//!   longer than the timeout (plus the caller's timer slack), however many gaps precede it.
//!
//! The window bounds the number of items held; the ring spans twice as many seqs. With every
//! item displaced by less than `window` from its place, fewer than `window` items are ever
//! held, but their seqs can lie up to `2 * window - 3` past the expected one, so a ring of
//! `window` slots would skip gaps that were about to fill.
//!
//! Memory: nothing is allocated while events arrive in order; the ring of held items (seq `s`
//! at `s % len`) is allocated on the first early arrival with a few slots and doubles, up to
//! `2 * window`, as far as the displacement seen needs, and is kept. A seq absurdly far
//! ahead skips to it in O(window), never O(distance).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Counters of one reorder window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReorderStats {
    /// Items applied on arrival, in sequence.
    pub in_order: u64,
    /// Items applied after being held.
    pub reordered: u64,
    /// Items that arrived after their gap was skipped (applied on arrival, out of order).
    pub late: u64,
    /// Items dropped because their seq was already held.
    pub duplicates: u64,
    /// Gaps given up on (a run of missing seqs; one cut across two skips counts twice).
    pub gaps_skipped: u64,
    /// Missing seqs given up on, over every skipped gap.
    pub seqs_skipped: u64,
}

/// Slots of the ring when it is first needed (it doubles from there).
const INITIAL_SLOTS: usize = 64;
/// The most slots an empty ring keeps (a larger one shrinks back to `INITIAL_SLOTS`).
const KEEP_SLOTS: usize = 1024;

/// One client's reorder window over items `T` (an event, or an index into one).
#[derive(Debug)]
pub struct Reorder<T: Copy> {
    window: usize,
    gap_timeout: Duration,
    /// The next seq to apply; `None` until the first push or [`Reorder::start`].
    expected: Option<u64>,
    /// Held items: seq `s` lives at `s % ring.len()` (at most `2 * window` slots, grown as
    /// needed). Empty until the first early arrival.
    ring: Vec<Option<Held<T>>>,
    held: usize,
    /// Arrival of the oldest held item (the start of the oldest gap).
    oldest: Option<Instant>,
    /// Held items in arrival order, `(arrival, seq)`: the front is the oldest still held
    /// once entries of items released since are dropped from it (lazily, so finding the
    /// oldest costs O(1) amortised instead of a scan of the ring per release).
    arrivals: VecDeque<(Instant, u64)>,
    stats: ReorderStats,
}

#[derive(Clone, Copy, Debug)]
struct Held<T> {
    seq: u64,
    item: T,
    at: Instant,
}

impl<T: Copy> Reorder<T> {
    /// A window holding at most `window` items (at least 1), within `2 * window` seqs of the
    /// expected one; a gap is skipped after `gap_timeout` (the spec's default is 100 ms).
    pub fn new(window: usize, gap_timeout: Duration) -> Self {
        Reorder {
            window: window.max(1),
            gap_timeout,
            expected: None,
            ring: Vec::new(),
            held: 0,
            oldest: None,
            arrivals: VecDeque::new(),
            stats: ReorderStats::default(),
        }
    }

    /// Sets the next expected seq (a client announces its first in its hello). Without it the
    /// first push sets it. Refused (`false`) while items are held.
    pub fn start(&mut self, seq: u64) -> bool {
        if self.held > 0 {
            return false;
        }
        self.expected = Some(seq);
        true
    }

    /// Takes the item numbered `seq`, arrived at `now`; calls `apply` for every item that is
    /// now due, in order.
    #[inline]
    pub fn push(&mut self, seq: u64, item: T, now: Instant, mut apply: impl FnMut(T)) {
        let expected = *self.expected.get_or_insert(seq);
        if seq == expected {
            apply(item);
            self.stats.in_order += 1;
            self.expected = Some(expected.wrapping_add(1));
            if self.held > 0 {
                self.release_ready(&mut apply);
            }
        } else if seq < expected {
            apply(item);
            self.stats.late += 1;
        } else {
            self.hold(seq, item, now, &mut apply);
        }
    }

    /// Skips every gap whose oldest held item has waited `gap_timeout` by `now`, applying the
    /// held items behind it in order.
    pub fn poll(&mut self, now: Instant, mut apply: impl FnMut(T)) {
        while self.deadline().is_some_and(|d| now >= d) {
            self.skip_head_gap(&mut apply);
        }
    }

    /// When [`Reorder::poll`] must next be called: the oldest held item's arrival plus the
    /// timeout. `None` when nothing is held (or the sum does not fit an `Instant`).
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.and_then(|t| t.checked_add(self.gap_timeout))
    }

    /// Applies everything held, in seq order, skipping (and counting) the gaps between (a
    /// client's disconnect or exit: its missing events will not come).
    pub fn flush(&mut self, mut apply: impl FnMut(T)) {
        while self.held > 0 {
            self.skip_head_gap(&mut apply);
        }
    }

    /// Counters since the window was made.
    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    /// Slots of the ring now (the memory a window holds: it grows with the displacement seen
    /// and shrinks when it empties).
    pub fn slots(&self) -> usize {
        self.ring.len()
    }

    /// Items held now (at most the window).
    pub fn held(&self) -> usize {
        self.held
    }

    /// The next seq to apply, once known.
    pub fn expected(&self) -> Option<u64> {
        self.expected
    }

    /// The window (the most items held).
    pub fn window(&self) -> usize {
        self.window
    }

    /// Holds `seq > expected`, first making room if the window is full or `seq` is beyond
    /// the ring's span.
    fn hold(&mut self, seq: u64, item: T, now: Instant, apply: &mut impl FnMut(T)) {
        let e = self.expected_or(seq);
        self.grow_for((seq - e).saturating_add(1));
        let span = self.ring.len() as u64;
        if seq - e <= span && self.ring[self.index(seq)].is_some_and(|h| h.seq == seq) {
            self.stats.duplicates += 1;
            return;
        }
        // Make room: the span first (O(span) whatever the distance), then the count. Neither
        // moves the expected seq past `seq`, which is not held.
        if seq - e > span {
            self.advance_to(seq - span, apply);
        }
        while self.held >= self.window {
            if seq < self.next_held() {
                // The oldest gap ends before `seq`: skipping it makes `seq` the next one.
                self.advance_to(seq, apply);
                break;
            }
            self.skip_head_gap(apply);
        }
        let e = self.expected_or(seq);
        debug_assert!(seq >= e, "room is made without passing seq");
        if seq == e {
            apply(item);
            self.stats.in_order += 1;
            self.expected = Some(seq.wrapping_add(1));
            self.release_ready(apply);
            return;
        }
        let i = self.index(seq);
        debug_assert!(self.ring[i].is_none(), "seqs within one span have their own slots");
        self.ring[i] = Some(Held { seq, item, at: now });
        self.held += 1;
        self.oldest = Some(self.oldest.map_or(now, |o| o.min(now)));
        self.arrivals.push_back((now, seq));
        if self.arrivals.len() > 2 * self.held + INITIAL_SLOTS {
            // Entries of released items that are not at the front: dropped in one sweep,
            // amortised over the pushes that made them.
            let ring = &self.ring;
            let len = ring.len() as u64;
            self.arrivals.retain(|&(_, s)| ring[(s % len) as usize].is_some_and(|h| h.seq == s));
        }
    }

    /// Grows the ring (doubling, up to `2 * window` slots) until it spans `need` seqs from the
    /// expected one: the ring is as large as the displacement seen, not as the window, so a
    /// client whose events are only slightly out of order costs a few slots (and the scans
    /// of `next_held` and `recompute_oldest` stay short).
    fn grow_for(&mut self, need: u64) {
        let max = self.window.saturating_mul(2);
        let len = self.ring.len();
        if len >= max || (len as u64) >= need {
            return;
        }
        // `need` is capped first: a seq absurdly far ahead must not overflow the rounding.
        let want = usize::try_from(need.min(max as u64)).unwrap_or(max).next_power_of_two();
        let new_len = want.max(len * 2).max(INITIAL_SLOTS).min(max);
        let mut ring = vec![None; new_len];
        for h in self.ring.iter().flatten() {
            // Every held seq lies within one old span of the expected seq, so within the new
            // one too: distinct slots.
            ring[(h.seq % new_len as u64) as usize] = Some(*h);
        }
        self.ring = ring;
    }

    /// The lowest held seq (`held > 0`): within one span of the expected seq.
    fn next_held(&self) -> u64 {
        let mut e = self.expected_or(0);
        for _ in 0..self.ring.len() {
            match self.ring[self.index(e)] {
                Some(h) if h.seq == e => break,
                _ => e = e.wrapping_add(1),
            }
        }
        e
    }

    /// Applies held successors of the expected seq while they are contiguous.
    fn release_ready(&mut self, apply: &mut impl FnMut(T)) {
        let mut released = false;
        while self.held > 0 {
            let e = self.expected_or(0);
            let i = self.index(e);
            match self.ring[i] {
                Some(h) if h.seq == e => {
                    self.ring[i] = None;
                    self.held -= 1;
                    apply(h.item);
                    self.stats.reordered += 1;
                    self.expected = Some(e.wrapping_add(1));
                    released = true;
                }
                _ => break,
            }
        }
        if released {
            self.recompute_oldest();
        }
    }

    /// Gives up on the gap at the expected seq: advances to the next held item (counting the
    /// missing seqs as one gap), then applies the contiguous run from there.
    #[cold]
    fn skip_head_gap(&mut self, apply: &mut impl FnMut(T)) {
        debug_assert!(self.held > 0);
        let start = self.expected_or(0);
        let e = self.next_held();
        if e != start {
            self.stats.gaps_skipped += 1;
            self.stats.seqs_skipped = self.stats.seqs_skipped.saturating_add(e - start);
        }
        self.expected = Some(e);
        self.release_ready(apply);
    }

    /// Makes `target` the expected seq (or later): held items before it are applied in order,
    /// missing ones skipped and counted.
    #[cold]
    fn advance_to(&mut self, target: u64, apply: &mut impl FnMut(T)) {
        let mut e = self.expected_or(target);
        let mut in_gap = false;
        while e < target && self.held > 0 {
            let i = self.index(e);
            match self.ring[i] {
                Some(h) if h.seq == e => {
                    self.ring[i] = None;
                    self.held -= 1;
                    apply(h.item);
                    self.stats.reordered += 1;
                    in_gap = false;
                }
                _ => {
                    if !in_gap {
                        self.stats.gaps_skipped += 1;
                        in_gap = true;
                    }
                    self.stats.seqs_skipped = self.stats.seqs_skipped.saturating_add(1);
                }
            }
            e += 1;
        }
        if e < target {
            // Nothing held past here: jump, whatever the distance.
            if !in_gap {
                self.stats.gaps_skipped += 1;
            }
            self.stats.seqs_skipped = self.stats.seqs_skipped.saturating_add(target - e);
            e = target;
        }
        self.expected = Some(e);
        self.release_ready(apply);
        self.recompute_oldest();
    }

    /// Updates `oldest` from the arrivals (dropping the entries of items released since), and
    /// gives back a ring that grew for a far seq once nothing is held.
    fn recompute_oldest(&mut self) {
        if self.held == 0 {
            self.oldest = None;
            self.arrivals.clear();
            if self.ring.len() > KEEP_SLOTS {
                // A far seq made it grow: its memory is not kept for nothing (a ring of a
                // client that is only a little out of order is kept: no allocation churn).
                self.ring = vec![None; INITIAL_SLOTS];
                self.arrivals.shrink_to(INITIAL_SLOTS);
            }
            return;
        }
        let len = self.ring.len() as u64;
        while let Some(&(at, seq)) = self.arrivals.front() {
            if self.ring[(seq % len) as usize].is_some_and(|h| h.seq == seq) {
                self.oldest = Some(at);
                return;
            }
            self.arrivals.pop_front();
        }
        // Unreachable while held > 0 (every held item has its arrival); recover anyway.
        self.oldest = self.ring.iter().flatten().map(|h| h.at).min();
    }

    fn expected_or(&self, seq: u64) -> u64 {
        self.expected.unwrap_or(seq)
    }

    fn index(&self, seq: u64) -> usize {
        (seq % self.ring.len() as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_seq_at_the_end_of_the_number_space_neither_overflows_nor_allocates_past_the_window() {
        // Found by fuzz alloc_ingest: the ring's growth rounded a distance of u64::MAX up to a
        // power of two (overflow), and `seq - expected + 1` overflowed for seq = u64::MAX.
        let t0 = Instant::now();
        let mut r = Reorder::new(16, Duration::from_millis(100));
        let mut seen = Vec::new();
        r.push(0, 0u64, t0, |v| seen.push(v));
        r.push(u64::MAX, 1, t0, |v| seen.push(v));
        r.push(u64::MAX - 1, 2, t0, |v| seen.push(v));
        assert!(r.ring.len() <= 32);
        r.flush(|v| seen.push(v));
        assert_eq!(seen.len(), 3);
        // Jumps that skip nearly the whole number space, twice: the count saturates.
        let mut r = Reorder::new(4, Duration::from_millis(100));
        for (i, seq) in [0, u64::MAX - 10, 1, u64::MAX - 3, u64::MAX].into_iter().enumerate() {
            r.push(seq, i as u64, t0, |_| {});
            for k in 0..8 {
                r.push(seq.wrapping_add(k * 7), 0, t0, |_| {});
            }
        }
        assert!(r.stats().seqs_skipped > 0);
    }

    const TIMEOUT: Duration = Duration::from_millis(100);

    fn ms(base: Instant, n: u64) -> Instant {
        base + Duration::from_millis(n)
    }

    /// Pushes `(seq, item)` at `now`, returning what was applied.
    fn push(r: &mut Reorder<u32>, seq: u64, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        r.push(seq, seq as u32, now, |x| out.push(x));
        out
    }

    #[test]
    fn in_order_applies_at_once_and_allocates_nothing() {
        let t0 = Instant::now();
        let mut r = Reorder::new(16, TIMEOUT);
        for s in 1000..1100u64 {
            assert_eq!(push(&mut r, s, t0), [s as u32]);
        }
        assert_eq!(r.stats().in_order, 100);
        assert_eq!(r.held(), 0);
        assert!(r.ring.is_empty(), "no ring without an early arrival");
        assert_eq!(r.deadline(), None);
        assert_eq!(r.expected(), Some(1100));
    }

    #[test]
    fn swapped_pairs() {
        let t0 = Instant::now();
        let mut r = Reorder::new(8, TIMEOUT);
        r.start(0);
        let mut all = Vec::new();
        for p in 0..10u64 {
            all.extend(push(&mut r, 2 * p + 1, t0));
            assert_eq!(r.held(), 1);
            assert_eq!(r.deadline(), Some(t0 + TIMEOUT));
            all.extend(push(&mut r, 2 * p, t0));
            assert_eq!(r.held(), 0);
            assert_eq!(r.deadline(), None);
        }
        assert_eq!(all, (0..20).collect::<Vec<u32>>());
        let s = r.stats();
        assert_eq!((s.in_order, s.reordered, s.late, s.gaps_skipped), (10, 10, 0, 0));
    }

    #[test]
    fn the_seed_001_race_is_applied_in_seq_order() {
        // FREE X (seq 2) and ALLOC X (seq 3) arrive before ALLOC X (seq 1).
        const X: u64 = 0xA000;
        #[derive(Clone, Copy, Debug, PartialEq)]
        enum Ev {
            Alloc(u64),
            Free(u64),
        }
        let t0 = Instant::now();
        let mut r = Reorder::new(64, TIMEOUT);
        assert!(r.start(1)); // from the client's hello
        let mut applied = Vec::new();
        r.push(2, Ev::Free(X), t0, |e| applied.push(e));
        r.push(3, Ev::Alloc(X), ms(t0, 1), |e| applied.push(e));
        assert!(applied.is_empty());
        r.push(1, Ev::Alloc(X), ms(t0, 2), |e| applied.push(e));
        assert_eq!(applied, [Ev::Alloc(X), Ev::Free(X), Ev::Alloc(X)]);
        assert_eq!(r.held(), 0);
        assert_eq!(r.stats().reordered, 2);
        assert_eq!(r.stats().in_order, 1);
    }

    #[test]
    fn gap_timeout_skips_and_late_items_still_apply() {
        let t0 = Instant::now();
        let mut r = Reorder::new(32, TIMEOUT);
        r.start(10);
        assert!(push(&mut r, 12, t0).is_empty());
        assert!(push(&mut r, 13, ms(t0, 50)).is_empty());
        assert!(push(&mut r, 16, ms(t0, 60)).is_empty());
        assert_eq!(r.deadline(), Some(ms(t0, 100)), "from the oldest held item");
        let mut out = Vec::new();
        r.poll(ms(t0, 99), |x| out.push(x));
        assert!(out.is_empty());
        r.poll(ms(t0, 100), |x| out.push(x));
        // 10, 11 skipped; 12, 13 applied; the gap 14, 15 started at 60 ms (when 16 arrived).
        assert_eq!(out, [12, 13]);
        assert_eq!(r.deadline(), Some(ms(t0, 160)));
        assert_eq!(r.stats().gaps_skipped, 1);
        assert_eq!(r.stats().seqs_skipped, 2);
        assert_eq!(push(&mut r, 11, ms(t0, 110)), [11], "late");
        assert_eq!(r.stats().late, 1);
        assert_eq!(push(&mut r, 14, ms(t0, 120)), [14]);
        out.clear();
        r.poll(ms(t0, 160), |x| out.push(x));
        assert_eq!(out, [16]);
        assert_eq!(r.held(), 0);
        assert_eq!(r.deadline(), None);
        let s = r.stats();
        assert_eq!((s.gaps_skipped, s.seqs_skipped), (2, 3));
        assert_eq!(r.expected(), Some(17));
    }

    #[test]
    fn poll_skips_every_expired_gap_at_once() {
        let t0 = Instant::now();
        let mut r = Reorder::new(32, TIMEOUT);
        r.start(0);
        push(&mut r, 3, t0);
        push(&mut r, 9, t0);
        push(&mut r, 20, ms(t0, 500));
        let mut out = Vec::new();
        r.poll(ms(t0, 200), |x| out.push(x));
        assert_eq!(out, [3, 9], "both gaps had waited since 0 ms");
        assert_eq!(r.deadline(), Some(ms(t0, 600)));
        assert_eq!(r.stats().gaps_skipped, 2);
        assert_eq!(r.stats().seqs_skipped, 3 + 5);
    }

    #[test]
    fn a_full_window_skips_the_oldest_gaps() {
        let t0 = Instant::now();
        let mut r = Reorder::new(4, TIMEOUT);
        r.start(0);
        for s in [2u64, 3, 4, 5] {
            assert!(push(&mut r, s, t0).is_empty());
        }
        assert_eq!(r.held(), 4);
        // Full: the gap 0, 1 is skipped and 2..=5 applied to make room for 7.
        assert_eq!(push(&mut r, 7, t0), [2, 3, 4, 5]);
        assert_eq!(r.held(), 1);
        assert_eq!(r.expected(), Some(6));
        assert_eq!(r.stats().gaps_skipped, 1);
        assert_eq!(r.stats().seqs_skipped, 2);
        // Filling 6 releases 7.
        assert_eq!(push(&mut r, 6, t0), [6, 7]);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_full_window_with_a_gap_before_the_new_seq_applies_it() {
        let t0 = Instant::now();
        let mut r = Reorder::new(4, TIMEOUT);
        r.start(0);
        for s in [5u64, 6, 7, 8] {
            push(&mut r, s, t0);
        }
        // Full, and 2 comes before every held seq: only 0, 1 are given up on.
        assert_eq!(push(&mut r, 2, t0), [2]);
        assert_eq!(r.held(), 4);
        assert_eq!((r.stats().gaps_skipped, r.stats().seqs_skipped), (1, 2));
        assert_eq!(push(&mut r, 3, t0), [3], "still full, but 3 is next: no skip");
        assert_eq!(r.stats().seqs_skipped, 2);
        assert_eq!(push(&mut r, 4, t0), [4, 5, 6, 7, 8]);
    }

    #[test]
    fn a_seq_far_ahead_jumps_without_growing() {
        let t0 = Instant::now();
        let mut r = Reorder::new(8, TIMEOUT);
        let s0 = u64::MAX - (1 << 40);
        r.start(s0);
        push(&mut r, s0 + 2, t0);
        let far = u64::MAX - 5;
        assert_eq!(push(&mut r, far, t0), [(s0 + 2) as u32]);
        assert_eq!(r.held(), 1);
        assert_eq!(r.ring.len(), 16);
        assert_eq!(r.expected(), Some(far - 16));
        let s = r.stats();
        assert_eq!(s.gaps_skipped, 2);
        assert_eq!(s.seqs_skipped, 2 + (far - 16 - (s0 + 3)));
        let mut out = Vec::new();
        r.flush(|x| out.push(x));
        assert_eq!(out, [far as u32]);
    }

    #[test]
    fn a_seq_past_the_span_skips_to_make_it_fit() {
        let t0 = Instant::now();
        let mut r = Reorder::new(4, TIMEOUT);
        r.start(0);
        assert!(push(&mut r, 3, t0).is_empty());
        // 13 > 0 + 8: the base moves to 5 (0..=2 and 4 skipped, 3 applied).
        assert_eq!(push(&mut r, 13, t0), [3]);
        assert_eq!(r.held(), 1);
        assert_eq!(r.expected(), Some(5));
        assert_eq!((r.stats().gaps_skipped, r.stats().seqs_skipped), (2, 4));
        // Just past the span with nothing else held before it: skipping makes it next.
        let mut r = Reorder::new(2, TIMEOUT);
        r.start(0);
        push(&mut r, 1, t0);
        push(&mut r, 2, t0);
        assert_eq!(push(&mut r, 3, t0), [1, 2, 3], "full: 0 skipped, then 3 is next");
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn duplicates_are_dropped() {
        let t0 = Instant::now();
        let mut r = Reorder::new(8, TIMEOUT);
        r.start(0);
        push(&mut r, 2, t0);
        push(&mut r, 2, ms(t0, 1));
        assert_eq!(r.held(), 1);
        assert_eq!(r.stats().duplicates, 1);
        assert_eq!(push(&mut r, 0, t0), [0]);
        assert_eq!(push(&mut r, 1, t0), [1, 2]);
        // Once applied, an old seq is indistinguishable from a late one.
        assert_eq!(push(&mut r, 1, t0), [1]);
        assert_eq!(r.stats().late, 1);
    }

    #[test]
    fn flush_applies_everything_in_order() {
        let t0 = Instant::now();
        let mut r = Reorder::new(16, TIMEOUT);
        r.start(100);
        for s in [109u64, 103, 101, 104] {
            push(&mut r, s, t0);
        }
        assert!(!r.start(0), "refused while items are held");
        let mut out = Vec::new();
        r.flush(|x| out.push(x));
        assert_eq!(out, [101, 103, 104, 109]);
        assert_eq!(r.held(), 0);
        assert_eq!(r.deadline(), None);
        let s = r.stats();
        assert_eq!((s.gaps_skipped, s.seqs_skipped), (3, 1 + 1 + 4));
        assert_eq!(r.expected(), Some(110));
        out.clear();
        r.flush(|x| out.push(x));
        assert!(out.is_empty());
        assert!(r.start(0));
    }

    #[test]
    fn the_first_push_sets_the_base() {
        let t0 = Instant::now();
        let mut r = Reorder::new(4, TIMEOUT);
        assert_eq!(r.expected(), None);
        assert_eq!(push(&mut r, 77, t0), [77]);
        assert_eq!(push(&mut r, 76, t0), [76], "before the base: late");
        assert_eq!(r.stats().late, 1);
        let mut z = Reorder::<u32>::new(0, TIMEOUT);
        assert_eq!(z.window(), 1, "a window of at least one");
        z.start(0);
        assert!(push(&mut z, 1, t0).is_empty());
        assert_eq!(push(&mut z, 3, t0), [1]);
    }

    #[test]
    fn a_huge_timeout_never_expires() {
        let t0 = Instant::now();
        let mut r = Reorder::new(4, Duration::MAX);
        r.start(0);
        push(&mut r, 1, t0);
        assert_eq!(r.deadline(), None);
        let mut out = Vec::new();
        r.poll(ms(t0, 1 << 30), |x| out.push(x));
        assert!(out.is_empty());
    }

    proptest! {
        /// Any permutation of 0..n in which no item is displaced by the window or more is
        /// applied in exact seq order, with nothing skipped or late.
        #[test]
        fn bounded_displacement_is_fully_reordered(
            n in 1usize..300,
            window in 1usize..24,
            swaps in prop::collection::vec((0usize..300, 0usize..24), 0..400),
            base in any::<u32>(),
        ) {
            let mut perm: Vec<usize> = (0..n).collect();
            for (i, d) in swaps {
                let i = i % n;
                let j = (i + d % window).min(n - 1);
                perm.swap(i, j);
                // Undo a swap that displaced either item too far.
                if perm[i].abs_diff(i) >= window || perm[j].abs_diff(j) >= window {
                    perm.swap(i, j);
                }
            }
            let t0 = Instant::now();
            let base = base as u64;
            let mut r = Reorder::new(window, TIMEOUT);
            r.start(base);
            let mut out = Vec::new();
            for s in &perm {
                r.push(base + *s as u64, *s, t0, |x| out.push(x));
                prop_assert!(r.held() <= window);
            }
            prop_assert_eq!(out, (0..n).collect::<Vec<_>>());
            let st = r.stats();
            prop_assert_eq!((st.late, st.gaps_skipped, st.seqs_skipped, st.duplicates), (0, 0, 0, 0));
            prop_assert_eq!(st.in_order + st.reordered, n as u64);
            prop_assert_eq!(r.held(), 0);
        }

        /// Whatever arrives (repeats, far jumps, timeouts), nothing is applied twice from the
        /// window, nothing beyond the window is held, and flush empties it.
        #[test]
        fn arbitrary_arrivals_stay_bounded(
            window in 1usize..16,
            ops in prop::collection::vec((0u64..64, 0u64..50), 1..200),
        ) {
            let t0 = Instant::now();
            let mut r = Reorder::new(window, TIMEOUT);
            r.start(0);
            let mut applied = 0u64;
            let mut now = t0;
            let mut pushed = std::collections::HashSet::new();
            let mut fresh = 0u64;
            for (seq, dt) in ops {
                now += Duration::from_millis(dt);
                if pushed.insert(seq) { fresh += 1; }
                r.push(seq, seq, now, |_| applied += 1);
                prop_assert!(r.held() <= window);
                r.poll(now, |_| applied += 1);
                if let Some(d) = r.deadline() { prop_assert!(d > now); }
            }
            r.flush(|_| applied += 1);
            prop_assert_eq!(r.held(), 0);
            let s = r.stats();
            prop_assert_eq!(applied, s.in_order + s.reordered + s.late);
            prop_assert!(applied >= fresh);
        }
    }
}

#[cfg(test)]
mod review_tests {
    //! Adversarial review (h-review2): defects found in the reorder window.
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(100);

    /// A client's first event at seq 0, then one with msg_id u64::MAX: `seq - e + 1` in
    /// `hold` overflows (a panic with overflow checks: tests, fuzzing, debug builds).
    #[test]
    fn review_a_seq_of_u64_max_after_zero_does_not_panic() {
        let t0 = Instant::now();
        let mut r = Reorder::new(8, TIMEOUT);
        r.start(0);
        let mut out = Vec::new();
        r.push(u64::MAX, 1u32, t0, |x| out.push(x));
        r.flush(|x| out.push(x));
        assert_eq!(out, [1]);
    }

    /// One event far ahead allocates the whole span (2 x window slots; 48 bytes each for the
    /// ingest's `Option<Event>`, 32 here), and the
    /// ring is kept: with the default window (65536) that is 6 MiB per connection for one
    /// held event, so 4096 connections of two messages each pin 24 GiB although the held
    /// budget counts one event per connection.
    #[test]
    fn review_one_early_event_does_not_pin_the_whole_span() {
        let t0 = Instant::now();
        let mut r = Reorder::new(65536, TIMEOUT);
        r.start(0);
        r.push(131_000, 1u32, t0, |_| {});
        assert_eq!(r.held(), 1);
        r.poll(t0 + TIMEOUT, |_| {});
        assert_eq!(r.held(), 0);
        let bytes = r.ring.len() * std::mem::size_of::<Option<Held<u32>>>();
        assert!(bytes <= 64 << 10, "{bytes} bytes kept for one early event");
    }

    /// Every release recomputes the oldest arrival by scanning the whole ring, so once the
    /// ring has grown (one far seq is enough), each skipped gap costs O(2 x window): a
    /// client holding every other seq makes one `poll` do ~65536 x 131072 slot reads: 100 s
    /// in a debug build, seconds in release, on the lane every other client shares. (Here a
    /// quarter of the default window: ~3 s instead of a few ms.)
    #[test]
    fn review_poll_of_many_small_gaps_is_not_quadratic() {
        let t0 = Instant::now();
        let mut r = Reorder::new(16384, TIMEOUT);
        r.start(0);
        let mut n = 0u64;
        let mut s = 1u64;
        while s < 32_000 {
            r.push(s, 0u32, t0, |_| {});
            s += 2;
            n += 1;
        }
        assert_eq!(r.held() as u64, n);
        let started = std::time::Instant::now();
        let mut applied = 0u64;
        r.poll(t0 + TIMEOUT, |_| applied += 1);
        let took = started.elapsed();
        assert_eq!(applied, n);
        assert!(took < Duration::from_millis(300), "one poll took {took:?}");
    }
}
