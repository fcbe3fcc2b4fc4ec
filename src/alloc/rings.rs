//! The shared-memory rings of every client, drained in each client's sequence order.
//!
//! A client has one ring per reporting thread, and every ring's records are in rising
//! sequence order (a thread takes its numbers in order). Draining the rings one after the
//! other would hand the reorder window one thread's backlog while another's earlier numbers
//! still sit in their ring: with one busy thread and one quiet one, the quiet ring's records
//! span far more numbers than the busy one's, and the window would fill and skip gaps whose
//! events are only waiting in a ring. So a client's rings are merged: each ring has a small
//! lookahead (records taken from the ring, not yet handed on), and the record with the
//! lowest sequence number among the lookaheads goes first. The window then only absorbs what
//! is really in flight (a thread between taking its number and pushing).
//!
//! Bounded: one call hands on at most `batch` records per ring of a client; the end of a
//! client ([`ClientRings::finish`]) takes at most what its rings hold (their producers are
//! gone or cut off: they cannot refill them).

use std::time::Instant;

use super::ingest::Ingest;
use super::wire::RingRecord;
use crate::channel::ServerRx;
use crate::rings::spsc::Corruption;

/// Records taken from a ring at a time, ahead of the merge.
const LOOKAHEAD: usize = 64;

/// One ring and its lookahead.
struct Lane {
    ring: ServerRx<RingRecord>,
    ahead: Vec<RingRecord>,
    at: usize,
    /// Records handed on in the current call (each ring's bound).
    taken: usize,
    /// The ring was found empty in the current call: not looked at again until the next.
    dry: bool,
    /// The ring's verdict was given: it is never read again.
    dead: bool,
}

impl Lane {
    fn head(&self) -> Option<u64> {
        self.ahead.get(self.at).map(|r| r.seq.get())
    }

    /// Refills an empty lookahead from the ring (once per call if the ring is empty).
    fn refill(&mut self) -> Result<(), Corruption> {
        if self.at < self.ahead.len() || self.dry || self.dead {
            return Ok(());
        }
        self.ahead.clear();
        self.at = 0;
        let ahead = &mut self.ahead;
        let got = self.ring.drain(LOOKAHEAD, |r| ahead.push(r))?;
        self.dry = got == 0;
        Ok(())
    }
}

/// The rings of one client (connection).
pub struct ClientRings {
    /// The connection.
    pub client: u64,
    /// Its process.
    pub pid: u32,
    lanes: Vec<Lane>,
}

impl std::fmt::Debug for ClientRings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRings")
            .field("client", &self.client)
            .field("pid", &self.pid)
            .field("rings", &self.lanes.len())
            .finish()
    }
}

impl ClientRings {
    /// A client with no ring yet.
    pub fn new(client: u64, pid: u32) -> Self {
        ClientRings { client, pid, lanes: Vec::new() }
    }

    /// Adds a ring.
    pub fn add(&mut self, ring: ServerRx<RingRecord>) {
        let ahead = Vec::with_capacity(LOOKAHEAD);
        self.lanes.push(Lane { ring, ahead, at: 0, taken: 0, dry: false, dead: false });
    }

    /// How many rings.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Whether it has no ring.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Hands at most `batch` records of each ring to the core, lowest sequence number first,
    /// through `scratch` (at least one record long); an empty ring is looked at once. Returns
    /// how many, or the verdict of a ring found corrupt (the client is to be cut off; what the
    /// other rings held was handed on first).
    pub fn drain(
        &mut self,
        core: &mut Ingest,
        scratch: &mut [RingRecord],
        batch: usize,
        now: Instant,
    ) -> Result<usize, Corruption> {
        self.merge(core, scratch, Some(batch), now)
    }

    /// Hands everything the rings hold to the core, in order (the client ended: its rings are
    /// dropped next). Returns how many, or the verdict of a corrupt ring (what came before it
    /// was handed on).
    pub fn finish(
        &mut self,
        core: &mut Ingest,
        scratch: &mut [RingRecord],
        now: Instant,
    ) -> Result<usize, Corruption> {
        self.merge(core, scratch, None, now)
    }

    /// Arms every ring's doorbell before the lane parks; returns whether one holds records
    /// (then the lane must not park). A corrupt ring counts as holding records: the next
    /// drain finds the verdict.
    pub fn arm(&mut self) -> bool {
        let mut ready = false;
        for lane in &mut self.lanes {
            ready |= lane.at < lane.ahead.len() || !matches!(lane.ring.arm_doorbell(), Ok(true));
        }
        ready
    }

    /// After a park: no doorbell is needed while the lane polls.
    pub fn disarm(&self) {
        for lane in &self.lanes {
            lane.ring.disarm_doorbell();
        }
    }

    /// The merge. `per_ring`: at most that many records of each ring (`None`: everything, at
    /// most capacity + lookahead per ring, so it ends even if a cut-off producer keeps
    /// pushing). A corrupt ring is dead from its verdict on; the others go on.
    fn merge(
        &mut self,
        core: &mut Ingest,
        scratch: &mut [RingRecord],
        per_ring: Option<usize>,
        now: Instant,
    ) -> Result<usize, Corruption> {
        let (mut total, mut n) = (0usize, 0usize);
        let mut verdict = Ok(());
        for lane in &mut self.lanes {
            lane.taken = 0;
            lane.dry = false;
        }
        loop {
            let mut best: Option<(u64, usize)> = None;
            // The lowest head of a ring that reached its bound: nothing after it may go first
            // (the merge would hand the window what that ring's next records precede).
            let mut barrier: Option<u64> = None;
            for (i, lane) in self.lanes.iter_mut().enumerate() {
                let bound = per_ring.unwrap_or_else(|| lane.ring.capacity() + LOOKAHEAD);
                let capped = lane.taken >= bound;
                if capped && lane.at == lane.ahead.len() {
                    // Its next record is unknown without taking more from it: stop here.
                    barrier = Some(0);
                    continue;
                }
                if let Err(e) = lane.refill() {
                    lane.dead = true;
                    verdict = Err(e);
                    continue;
                }
                if let Some(seq) = lane.head() {
                    if capped {
                        barrier = Some(barrier.map_or(seq, |b| b.min(seq)));
                    } else if best.is_none_or(|(s, _)| seq < s) {
                        best = Some((seq, i));
                    }
                }
            }
            let Some((seq, i)) = best else { break };
            if barrier.is_some_and(|b| seq > b) {
                break;
            }
            let lane = &mut self.lanes[i];
            scratch[n] = lane.ahead[lane.at];
            lane.at += 1;
            lane.taken += 1;
            n += 1;
            total += 1;
            if n == scratch.len() {
                core.records(self.client, scratch, now);
                n = 0;
            }
        }
        core.records(self.client, &scratch[..n], now);
        verdict.map(|()| total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::devices::DeviceTable;
    use crate::alloc::ingest::{IngestConfig, Io, ListenerKind};
    use crate::alloc::proto;
    use crate::alloc::wire::{Event, MsgType};
    use crate::alloc::BufferType;
    use crate::channel::ClientTx;
    use crate::wire::{encode, Flags, ProtocolVersion};
    use prost::Message;
    use zerocopy::FromZeros;

    struct NullIo;
    impl Io for NullIo {
        fn send(&mut self, _: u64, _: &[u8]) {}
        fn close(&mut self, _: u64) {}
        fn register_ring(&mut self, _: u64, _: u64) {}
    }

    /// Review (h-review1): `alloc.drain_batch` is documented as the most records taken from
    /// one ring in one pass ("so one busy client cannot stretch the pass"), but the merge's
    /// budget is `batch x rings` for the client, all of which one busy ring may supply: a
    /// client with 64 rings (the default `max_rings_per_client`), one of them busy, hands on
    /// 64 x 256 records per pass, and each record costs a look at every ring.
    #[test]
    fn one_pass_takes_at_most_batch_records_from_one_ring() {
        let mut core = Ingest::new(IngestConfig::default(), DeviceTable::default_table());
        let t0 = Instant::now();
        core.connect(1, 5, ListenerKind::Native, t0);
        let mut rings = ClientRings::new(1, 5);
        let mut busy = None;
        for i in 0..8 {
            let (rx, fd) = ServerRx::<RingRecord>::create("t-budget", 1024).unwrap();
            rings.add(rx);
            let tx = ClientTx::<RingRecord>::attach(fd).unwrap();
            if i == 0 {
                busy = Some(tx);
            }
        }
        let mut busy = busy.unwrap();
        for seq in 0..1000u64 {
            let e = Event {
                kind: MsgType::Alloc,
                device: 0,
                buffer_type: 0,
                buffer_id: seq + 1,
                size: 64,
            };
            busy.push(RingRecord::new(seq, &e, 0)).unwrap();
        }
        let mut scratch = vec![RingRecord::new_zeroed(); 16];
        let n = rings.drain(&mut core, &mut scratch, 16, t0).unwrap();
        assert!(n <= 16, "one pass took {n} records from one ring (drain_batch 16)");
    }

    #[test]
    fn a_busy_ring_and_a_quiet_one_merge_in_sequence_order_within_a_small_window() {
        // Defect (bug 4 of the integration tests): drained one after the other, a quiet
        // thread's records (spanning many seqs) filled the window while the busy thread's
        // earlier seqs waited in its ring: gaps skipped, duplicates, a wrong ledger.
        let config = IngestConfig { reorder_window: 64, ..IngestConfig::default() };
        let mut core = Ingest::new(config, DeviceTable::default_table());
        let t0 = Instant::now();
        core.connect(1, 5, ListenerKind::Native, t0);
        let mut hello = Vec::new();
        let body = proto::Hello { name: String::new(), first_seq: 0 }.encode_to_vec();
        encode(ProtocolVersion::V2, MsgType::Hello.code(), Flags::EMPTY, 1, &body, &mut hello);
        core.bytes(1, &hello, t0, &mut NullIo);
        let mut rings = ClientRings::new(1, 5);
        let (busy_rx, busy_fd) = ServerRx::<RingRecord>::create("t-busy", 4096).unwrap();
        let (quiet_rx, quiet_fd) = ServerRx::<RingRecord>::create("t-quiet", 4096).unwrap();
        rings.add(quiet_rx);
        rings.add(busy_rx);
        let mut busy = ClientTx::<RingRecord>::attach(busy_fd).unwrap();
        let mut quiet = ClientTx::<RingRecord>::attach(quiet_fd).unwrap();
        // 3000 numbers: every 10th from the quiet thread, the rest from the busy one; each
        // alloc freed by the next number of the same thread.
        let mut counts = [0u64; 2];
        for seq in 0..3000u64 {
            let thread = usize::from(seq % 10 != 0);
            let tx = if thread == 0 { &mut quiet } else { &mut busy };
            let kind = if counts[thread] % 2 == 0 { MsgType::Alloc } else { MsgType::Free };
            counts[thread] += 1;
            let addr = thread as u64 + 1;
            let e = Event { kind, device: 0, buffer_type: 0, buffer_id: addr, size: 64 };
            tx.push(RingRecord::new(seq, &e, 0)).unwrap();
        }
        let mut scratch = vec![RingRecord::new_zeroed(); 256];
        while rings.drain(&mut core, &mut scratch, 256, t0).unwrap() > 0 {}
        let k = core.counters();
        assert_eq!(k.events, 3000);
        assert_eq!(
            (k.gaps_skipped, k.late, k.unknown_frees, k.duplicate_allocs),
            (0, 0, 0, 0),
            "{k:?}"
        );
        assert_eq!(core.ledger().usage(0).totals.bytes(BufferType::Dram), 0, "all freed");
    }
}
