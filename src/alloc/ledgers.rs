//! The ledgers of every device, wherever they live: on the ingest lane, or each on the lane
//! that owns its device.
//!
//! A device whose agent `alloc-device-<N>` a `[[lanes]]` entry lists has its ledger on that
//! lane ([`DeviceAgent`]); the ingest agent hands it the device's events, already in each
//! client's sequence order, through a platform link ([`crate::runtime::link`]): one link per
//! device, FIFO, so a process's release ([`LedgerOp::Release`]) reaches the device after every
//! event the ingest agent applied for it before. Every other device's ledger lives in the
//! ingest agent itself (the default: no lane lists a device agent).
//!
//! A remote device's ledger sits behind a mutex that its lane takes once per batch of events
//! (a pass, not a message) and a query takes to read it: uncontended but for the rare query.
//! A query answers from what the device's lane has applied: events still in the link (a few
//! microseconds' worth) are not in it yet. A full link never blocks the ingest lane: the ops
//! wait in a local queue, in order, and are pushed first on the next call.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::devices::DeviceTable;
use super::ledger::{DeviceUsage, Ledger, LiveEntry, Outcome, ProcessUsage, Released};
use super::wire::{Event, MAX_DEVICES};
use crate::runtime::{Agent, Ctx, LinkRx, LinkTx};

/// What the ingest agent hands a device's lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerOp {
    /// Apply `event` for `pid`.
    Apply {
        /// The reporting process.
        pid: u32,
        /// The event (its device is the link's).
        event: Event,
    },
    /// Release everything `pid` holds on this device.
    Release {
        /// The process.
        pid: u32,
    },
}

/// A device ledger on another lane, as both lanes see it.
#[derive(Debug)]
pub struct Shard {
    ledger: Mutex<Ledger>,
    /// Outcomes the device's lane counted (unknown frees, duplicates, rejected), for the
    /// ingest agent's counters.
    unknown_frees: AtomicU64,
    duplicate_allocs: AtomicU64,
    rejected: AtomicU64,
    /// Ops applied so far.
    applied: AtomicU64,
}

impl Shard {
    fn new(devices: DeviceTable) -> Self {
        Shard {
            ledger: Mutex::new(Ledger::new(devices)),
            unknown_frees: AtomicU64::new(0),
            duplicate_allocs: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            applied: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A panic on the device lane stops the daemon (LaneFailure); the ledger it left is
        // still the best answer a query can get until then.
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Remote {
    tx: LinkTx<LedgerOp>,
    shard: Arc<Shard>,
    /// Ops the link had no room for, in order: pushed before any newer op.
    backlog: VecDeque<LedgerOp>,
    /// Events dropped because the backlog was full.
    dropped: u64,
}

/// The most ops kept for a device lane that is behind (beyond the link's capacity).
const MAX_BACKLOG: usize = 1 << 20;

/// How an event went: applied here, or handed to its device's lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied to a ledger of this lane.
    Here(Outcome),
    /// Handed to the device's lane (its outcome is counted there).
    Forwarded,
    /// Refused: an allocation while this lane's ledger holds its most entries.
    Full,
}

/// Every device's ledger. See the [module docs](self).
pub struct Ledgers {
    local: Ledger,
    /// The most live entries of `local`.
    max_entries: usize,
    remote: [Option<Remote>; MAX_DEVICES],
    devices: DeviceTable,
}

impl std::fmt::Debug for Ledgers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let remote: Vec<usize> = (0..MAX_DEVICES).filter(|&d| self.remote[d].is_some()).collect();
        f.debug_struct("Ledgers").field("remote_devices", &remote).finish_non_exhaustive()
    }
}

impl Ledgers {
    /// Every device on this lane.
    pub fn new(devices: DeviceTable) -> Self {
        let local = Ledger::new(devices.clone());
        Ledgers { local, max_entries: usize::MAX, remote: Default::default(), devices }
    }

    /// At most `max` live entries on this lane: an allocation past it is refused
    /// ([`Applied::Full`]), so a client that invents addresses costs bounded memory.
    pub fn with_max_entries(mut self, max: usize) -> Self {
        self.max_entries = max;
        self
    }

    /// Moves device `device`'s ledger to the lane whose agent consumes `tx`; returns that
    /// agent. Call before any event.
    pub fn place(&mut self, device: u8, tx: LinkTx<LedgerOp>, rx: LinkRx<LedgerOp>) -> DeviceAgent {
        let shard = Arc::new(Shard::new(self.devices.clone()));
        self.remote[device as usize] =
            Some(Remote { tx, shard: shard.clone(), backlog: VecDeque::new(), dropped: 0 });
        DeviceAgent { name: format!("alloc-device-{device}"), rx, shard }
    }

    /// The devices whose ledgers are on other lanes.
    pub fn remote_devices(&self) -> impl Iterator<Item = u8> + '_ {
        (0..MAX_DEVICES as u8).filter(|&d| self.remote[d as usize].is_some())
    }

    /// Applies (or hands on) one event of `pid`.
    pub fn apply(&mut self, pid: u32, event: &Event) -> Applied {
        match self.remote.get_mut(event.device as usize).and_then(Option::as_mut) {
            None if self.local.len() >= self.max_entries && event.kind.allocates() => Applied::Full,
            None => Applied::Here(self.local.apply(pid, event)),
            Some(remote) => {
                remote.send(LedgerOp::Apply { pid, event: *event });
                Applied::Forwarded
            }
        }
    }

    /// Releases everything `pid` holds: here at once (the returned counts), and on every
    /// other lane after the events handed to it before.
    pub fn release_process(&mut self, pid: u32) -> Released {
        for remote in self.remote.iter_mut().flatten() {
            remote.send(LedgerOp::Release { pid });
        }
        self.local.release_process(pid)
    }

    /// Pushes what waits for room in the links; returns whether anything still waits.
    pub fn flush(&mut self) -> bool {
        let mut waiting = false;
        for remote in self.remote.iter_mut().flatten() {
            remote.drain_backlog();
            waiting |= !remote.backlog.is_empty();
        }
        waiting
    }

    /// Usage of `device`, from whichever lane holds it.
    pub fn usage(&self, device: u8) -> DeviceUsage {
        match self.remote.get(device as usize).and_then(Option::as_ref) {
            None => self.local.usage(device),
            Some(r) => r.shard.lock().usage(device),
        }
    }

    /// What each process holds on each device.
    pub fn process_usage(&self) -> Vec<ProcessUsage> {
        let mut all: Vec<ProcessUsage> = self
            .local
            .process_usage()
            .into_iter()
            .filter(|p| self.remote[p.device as usize].is_none())
            .collect();
        for remote in self.remote.iter().flatten() {
            all.extend(remote.shard.lock().process_usage());
        }
        all.sort_by_key(|p| (p.pid, p.device));
        all
    }

    /// Every live entry of every device.
    pub fn remaining(&self) -> std::vec::IntoIter<LiveEntry> {
        let mut all: Vec<LiveEntry> = self.local.remaining().collect();
        for remote in self.remote.iter().flatten() {
            all.extend(remote.shard.lock().remaining());
        }
        all.into_iter()
    }

    /// Whether no entry is live anywhere.
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.remote.iter().flatten().all(|r| r.shard.lock().is_empty())
    }

    /// Goes up with every change of any total, on any lane.
    pub fn version(&self) -> u64 {
        let mut v = self.local.version();
        for remote in self.remote.iter().flatten() {
            v = v.wrapping_add(remote.shard.lock().version());
        }
        v
    }

    /// The DUMP_REMAINING report: this lane's devices, then each other lane's.
    pub fn dump_report(&self) -> String {
        let mut out = self.local.dump_report();
        for remote in self.remote.iter().flatten() {
            out.push('\n');
            out.push_str(&remote.shard.lock().dump_report());
        }
        out
    }

    /// Outcomes counted on other lanes: (unknown frees, duplicate allocs, rejected, and the
    /// events dropped because a device lane was too far behind).
    pub fn remote_outcomes(&self) -> (u64, u64, u64, u64) {
        let mut sum = (0, 0, 0, 0);
        for r in self.remote.iter().flatten() {
            sum.0 += r.shard.unknown_frees.load(Ordering::Relaxed);
            sum.1 += r.shard.duplicate_allocs.load(Ordering::Relaxed);
            sum.2 += r.shard.rejected.load(Ordering::Relaxed);
            sum.3 += r.dropped;
        }
        sum
    }
}

impl Remote {
    fn send(&mut self, op: LedgerOp) {
        self.drain_backlog();
        if !self.backlog.is_empty() {
            self.queue(op);
            return;
        }
        if let Err(e) = self.tx.push(op) {
            self.queue(e.into_inner());
        }
    }

    /// Keeps `op` for the next push, unless the device lane is so far behind that the
    /// backlog is full: then the event is dropped and counted (a release always waits: it
    /// is what frees the device's memory of a dead process).
    fn queue(&mut self, op: LedgerOp) {
        if self.backlog.len() >= MAX_BACKLOG && matches!(op, LedgerOp::Apply { .. }) {
            if self.dropped == 0 {
                tracing::error!("alloc: a device lane is {MAX_BACKLOG} events behind; its events are dropped (counted) until it catches up");
            }
            self.dropped += 1;
            return;
        }
        self.backlog.push_back(op);
    }

    fn drain_backlog(&mut self) {
        while let Some(&op) = self.backlog.front() {
            if self.tx.push(op).is_err() {
                return;
            }
            self.backlog.pop_front();
        }
    }
}

/// The agent that owns one device's ledger on its lane (`alloc-device-<N>`).
pub struct DeviceAgent {
    name: String,
    rx: LinkRx<LedgerOp>,
    shard: Arc<Shard>,
}

impl std::fmt::Debug for DeviceAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAgent").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Most ops one pass applies (the rest wait for the next pass).
const OPS_PER_PASS: usize = 4096;

impl DeviceAgent {
    /// Applies what the link holds (at most 4096 ops) under one lock; returns how many.
    pub fn apply_pending(&mut self) -> usize {
        if self.rx.is_empty() {
            return 0;
        }
        let mut ledger = self.shard.lock();
        let (mut unknown, mut duplicate, mut rejected, mut n) = (0, 0, 0, 0);
        while n < OPS_PER_PASS {
            let Ok(op) = self.rx.pop() else { break };
            n += 1;
            match op {
                LedgerOp::Apply { pid, event } => match ledger.apply(pid, &event) {
                    Outcome::UnknownFree => unknown += 1,
                    Outcome::RefBumped => duplicate += 1,
                    Outcome::Rejected => rejected += 1,
                    Outcome::Added | Outcome::Decremented | Outcome::Removed => {}
                },
                LedgerOp::Release { pid } => {
                    let released = ledger.release_process(pid);
                    if !released.is_empty() {
                        tracing::info!(
                            pid,
                            "alloc: {} on {}",
                            super::ledger::format_release(pid, &released),
                            self.name
                        );
                    }
                }
            }
        }
        drop(ledger);
        // SYNC: Relaxed: statistics read by queries, no ordering with the ledger needed (a
        // query takes the mutex for the ledger itself).
        self.shard.unknown_frees.fetch_add(unknown, Ordering::Relaxed);
        self.shard.duplicate_allocs.fetch_add(duplicate, Ordering::Relaxed);
        self.shard.rejected.fetch_add(rejected, Ordering::Relaxed);
        self.shard.applied.fetch_add(n as u64, Ordering::Relaxed);
        n
    }
}

impl Agent for DeviceAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        self.apply_pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::wire::{BufferType, MsgType};
    use crate::runtime::{link, LaneWaker};

    fn alloc(device: u8, id: u64, size: u64) -> Event {
        Event { kind: MsgType::Alloc, device, buffer_type: 0, buffer_id: id, size }
    }

    #[test]
    fn a_placed_device_applies_on_its_agent_in_order_and_releases_after_its_events() {
        let mut ledgers = Ledgers::new(DeviceTable::default_table());
        let waker = LaneWaker::new().unwrap();
        let (tx, rx) = link(4, &waker);
        let mut agent = ledgers.place(1, tx, rx);
        assert_eq!(ledgers.remote_devices().collect::<Vec<_>>(), [1]);
        assert_eq!(ledgers.apply(7, &alloc(0, 1, 10)), Applied::Here(Outcome::Added));
        // More than the link holds: the rest waits, in order, and nothing blocks.
        for i in 0..10 {
            assert_eq!(ledgers.apply(7, &alloc(1, 100 + i, 5)), Applied::Forwarded);
        }
        let free = Event { kind: MsgType::Free, ..alloc(1, 100, 0) };
        ledgers.apply(7, &free);
        assert_eq!(ledgers.usage(1).totals.bytes(BufferType::Dram), 0, "not applied yet");
        let mut applied = 0;
        while ledgers.flush() || applied < 11 {
            applied += agent.apply_pending();
        }
        applied += agent.apply_pending();
        assert_eq!(applied, 11);
        assert_eq!(ledgers.usage(1).totals.bytes(BufferType::Dram), 45);
        assert_eq!(ledgers.usage(0).totals.bytes(BufferType::Dram), 10);
        assert_eq!(ledgers.remaining().count(), 10);
        assert_eq!(ledgers.process_usage().len(), 2);
        // Release: here at once, there after what was handed on before it.
        ledgers.apply(7, &alloc(1, 500, 1));
        let here = ledgers.release_process(7);
        assert_eq!(here.buffers, 1);
        while ledgers.flush() {
            agent.apply_pending();
        }
        agent.apply_pending();
        assert!(ledgers.is_empty(), "{:?}", ledgers.remaining().collect::<Vec<_>>());
        // Outcomes of the device lane are counted there.
        ledgers.apply(8, &Event { kind: MsgType::Free, ..alloc(1, 999, 0) });
        ledgers.flush();
        agent.apply_pending();
        assert_eq!(ledgers.remote_outcomes().0, 1);
    }
}
