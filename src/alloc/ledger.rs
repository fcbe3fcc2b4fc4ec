//! The exact ledger of device memory (`specs/alloc-protocol.md`, "Ledger semantics"; the
//! original's behaviour in `specs/alloc-server-reference.md` §2.1-2.5).
//!
//! Sans-IO: [`Ledger::apply`] takes a validated [`Event`] and the pid the daemon read from the
//! socket's credentials, and returns an [`Outcome`]; logging, replies and subscriptions are
//! the caller's, driven by the outcome, [`Ledger::usage`] and [`Ledger::version`].
//!
//! Semantics (each a reference behaviour, S-numbers of §7):
//!
//! - keys are (device, buffer_id), one key space per class: buffers, CBs, kernels. The same
//!   address on two devices, or as a buffer and a CB, is two entries (S11);
//! - a new ALLOC / CB_ALLOC / KERNEL_LOAD inserts ref_count 1 and adds its size to its
//!   device's and its owner's totals (S2, S3, S17, S18);
//! - a duplicate of a live key bumps ref_count only: totals, size, type and owner stay as the
//!   first ALLOC set them (S7). The original did this for buffers only and double-counted a
//!   duplicate CB_ALLOC; here CBs and kernels behave as buffers (counted as duplicates);
//! - FREE / CB_FREE / KERNEL_UNLOAD decrement ref_count, and at 0 subtract the **stored**
//!   size from the **stored** type and remove the entry (S8, S9). The message's size and
//!   type are never read (the original used the message size for CB_FREE and KERNEL_UNLOAD);
//! - an unknown free changes nothing and is counted (S10, S17, S18);
//! - the owner of an entry is the pid of its first ALLOC. A free from another pid still
//!   applies (threads of one allocator may be reported by different processes, and the
//!   daemon cannot tell a stale free from a handed-over buffer); the totals it lowers are the
//!   owner's;
//! - [`Ledger::release_process`] removes everything a pid owns in one step, whatever the
//!   ref_counts (S19, S21). The daemon calls it when the process dies, not when its socket
//!   closes (S20). A pid whose entries were all freed keeps its (empty) record, and the
//!   capacity of its key list, until then;
//! - no counter underflows or wraps: additions and subtractions saturate, and debug builds
//!   assert that a subtraction never needed to.
//!
//! The hot path: one hash lookup per event in one table for all three classes, keyed with a
//! multiply-xorshift hasher; the owner's per-process record is found by slot index stored in
//! the entry (frees) or through a one-entry cache of the last pid (allocs). Nothing allocates
//! once the tables have grown to the working set: removed entries free their slot, and a
//! pid's key list keeps its capacity.

use std::collections::hash_map::{Entry as MapEntry, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, Hasher};

use super::devices::DeviceTable;
use super::wire::{BufferType, Event, KernelKind, MsgType, MAX_DEVICES};

/// What [`Ledger::apply`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A new entry (ref_count 1); the totals grew.
    Added,
    /// A duplicate ALLOC / CB_ALLOC / KERNEL_LOAD of a live key: ref_count + 1, totals
    /// unchanged.
    RefBumped,
    /// A free of an entry with ref_count > 1: ref_count - 1, totals unchanged.
    Decremented,
    /// The last free of an entry: removed, its stored size subtracted.
    Removed,
    /// A free of a key the ledger does not hold: nothing changed.
    UnknownFree,
    /// Not a ledger event, or a field out of range (an [`Event`] not made by
    /// [`Event::validate`]): nothing changed.
    Rejected,
}

/// The class of an entry, with its type: a buffer of some [`BufferType`], a circular buffer,
/// or a kernel of some [`KernelKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A buffer (ALLOC / FREE).
    Buffer(BufferType),
    /// A circular buffer (CB_ALLOC / CB_FREE).
    Cb,
    /// A kernel (KERNEL_LOAD / KERNEL_UNLOAD).
    Kernel(KernelKind),
}

/// Totals of one device, or of one process on one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Buffer bytes per [`BufferType`] (index = type code; all five kept apart).
    pub buffer_bytes: [u64; 5],
    /// Circular-buffer bytes.
    pub cb_bytes: u64,
    /// Kernel bytes, every kind.
    pub kernel_bytes: u64,
    /// Kernel bytes per [`KernelKind`] (index = kind code).
    pub kernel_kind_bytes: [u64; 3],
    /// Live buffer entries.
    pub buffers: u64,
    /// Live CB entries.
    pub cbs: u64,
    /// Live kernel entries.
    pub kernels: u64,
}

impl Totals {
    /// Buffer bytes of type `ty`.
    pub const fn bytes(&self, ty: BufferType) -> u64 {
        self.buffer_bytes[ty as usize]
    }

    /// Kernel bytes of kind `kind`.
    pub const fn kernel_kind(&self, kind: KernelKind) -> u64 {
        self.kernel_kind_bytes[kind as usize]
    }

    /// Buffer bytes of every type.
    pub fn buffer_total(&self) -> u64 {
        self.buffer_bytes.iter().fold(0, |a, b| a.saturating_add(*b))
    }

    /// Every byte: buffers, CBs and kernels.
    pub fn total(&self) -> u64 {
        self.buffer_total().saturating_add(self.cb_bytes).saturating_add(self.kernel_bytes)
    }

    /// Live entries of every class.
    pub const fn entries(&self) -> u64 {
        self.buffers + self.cbs + self.kernels
    }

    /// Whether nothing is counted.
    pub fn is_zero(&self) -> bool {
        *self == Totals::default()
    }

    fn add(&mut self, kind: EntryKind, size: u64) {
        match kind {
            EntryKind::Buffer(t) => {
                let b = &mut self.buffer_bytes[t as usize];
                *b = b.saturating_add(size);
                self.buffers = self.buffers.saturating_add(1);
            }
            EntryKind::Cb => {
                self.cb_bytes = self.cb_bytes.saturating_add(size);
                self.cbs = self.cbs.saturating_add(1);
            }
            EntryKind::Kernel(k) => {
                self.kernel_bytes = self.kernel_bytes.saturating_add(size);
                let b = &mut self.kernel_kind_bytes[k as usize];
                *b = b.saturating_add(size);
                self.kernels = self.kernels.saturating_add(1);
            }
        }
    }

    fn sub(&mut self, kind: EntryKind, size: u64) {
        fn dec(v: &mut u64, by: u64) {
            // Totals are sums of live entries: removing one never needs to saturate.
            debug_assert!(*v >= by, "ledger total {v} below the entry's {by}");
            *v = v.saturating_sub(by);
        }
        match kind {
            EntryKind::Buffer(t) => {
                dec(&mut self.buffer_bytes[t as usize], size);
                dec(&mut self.buffers, 1);
            }
            EntryKind::Cb => {
                dec(&mut self.cb_bytes, size);
                dec(&mut self.cbs, 1);
            }
            EntryKind::Kernel(k) => {
                dec(&mut self.kernel_bytes, size);
                dec(&mut self.kernel_kind_bytes[k as usize], size);
                dec(&mut self.kernels, 1);
            }
        }
    }
}

/// Usage of one device: its totals and its capacities from the device table (0 for a device
/// the table does not have).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceUsage {
    /// The device id.
    pub device: u8,
    /// Every total.
    pub totals: Totals,
    /// DRAM capacity (channels x per channel).
    pub dram_capacity: u64,
    /// L1 capacity (cores x L1 per core).
    pub l1_capacity: u64,
}

/// Usage of one process on one device (its own entries only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessUsage {
    /// The owner pid.
    pub pid: u32,
    /// The device id.
    pub device: u8,
    /// What the pid owns on that device.
    pub totals: Totals,
}

/// One live entry, for dumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveEntry {
    /// Class and type.
    pub kind: EntryKind,
    /// The device id.
    pub device: u8,
    /// Device address, CB id or kernel id.
    pub buffer_id: u64,
    /// The stored size (the first ALLOC's).
    pub size: u64,
    /// The owner (the pid of the first ALLOC).
    pub pid: u32,
    /// ALLOCs not yet matched by a free.
    pub ref_count: u32,
}

/// What [`Ledger::release_process`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Buffer entries removed.
    pub buffers: u64,
    /// CB entries removed.
    pub cbs: u64,
    /// Kernel entries removed.
    pub kernels: u64,
    /// Buffer bytes removed (every type).
    pub buffer_bytes: u64,
    /// CB bytes removed.
    pub cb_bytes: u64,
    /// Kernel bytes removed.
    pub kernel_bytes: u64,
    /// Every byte removed.
    pub bytes: u64,
}

impl Released {
    /// Whether nothing was removed.
    pub const fn is_empty(&self) -> bool {
        self.buffers == 0 && self.cbs == 0 && self.kernels == 0
    }

    /// Entries removed, every class.
    pub const fn entries(&self) -> u64 {
        self.buffers + self.cbs + self.kernels
    }
}

/// Counters of one class of events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindStats {
    /// ALLOC / CB_ALLOC / KERNEL_LOAD applied (new or duplicate).
    pub allocs: u64,
    /// FREE / CB_FREE / KERNEL_UNLOAD applied (known or unknown).
    pub frees: u64,
    /// Allocations of a live key (ref_count bumped).
    pub duplicate_allocs: u64,
    /// Frees of a key the ledger did not hold.
    pub unknown_frees: u64,
}

/// The ledger's counters since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerStats {
    /// Buffer events.
    pub buffers: KindStats,
    /// CB events.
    pub cbs: KindStats,
    /// Kernel events.
    pub kernels: KindStats,
    /// Events refused by [`Ledger::apply`] ([`Outcome::Rejected`]).
    pub rejected: u64,
    /// Calls of [`Ledger::release_process`] that removed something.
    pub releases: u64,
    /// Entries removed by those calls.
    pub released_entries: u64,
}

impl LedgerStats {
    /// Events applied, every class (rejected ones excluded).
    pub const fn applied(&self) -> u64 {
        self.buffers.allocs
            + self.buffers.frees
            + self.cbs.allocs
            + self.cbs.frees
            + self.kernels.allocs
            + self.kernels.frees
    }
}

/// The ledger: every live buffer, CB and kernel of devices 0..[`MAX_DEVICES`], with totals per
/// device and per process kept incrementally.
#[derive(Debug)]
pub struct Ledger {
    table: DeviceTable,
    entries: HashMap<Key, Entry, FastState>,
    devices: [Totals; MAX_DEVICES],
    procs: Procs,
    stats: LedgerStats,
    version: u64,
}

impl Ledger {
    /// An empty ledger over `table` (capacities; devices past its end are tracked with
    /// capacity 0).
    pub fn new(table: DeviceTable) -> Ledger {
        Ledger {
            table,
            entries: HashMap::with_hasher(FastState),
            devices: [Totals::default(); MAX_DEVICES],
            procs: Procs::default(),
            stats: LedgerStats::default(),
            version: 0,
        }
    }

    /// Applies `event`, reported by process `pid` (the socket's credentials, never a pid in
    /// the message).
    #[inline]
    pub fn apply(&mut self, pid: u32, event: &Event) -> Outcome {
        let Some((class, alloc_kind)) = classify(event) else {
            self.stats.rejected += 1;
            return Outcome::Rejected;
        };
        let key = Key::new(class, event.device, event.buffer_id);
        match alloc_kind {
            Some(kind) => self.alloc(pid, key, kind, event.size),
            None => self.free(key),
        }
    }

    /// Removes every entry `pid` owns, whatever its ref_count, and forgets the pid.
    pub fn release_process(&mut self, pid: u32) -> Released {
        let Some(slot) = self.procs.remove(pid) else {
            return Released::default();
        };
        let proc = &mut self.procs.slots[slot as usize];
        let mut keys = std::mem::take(&mut proc.keys);
        let mut released = Released::default();
        for key in keys.drain(..) {
            let Some(e) = self.entries.remove(&key) else {
                debug_assert!(false, "a pid's key list names only live entries");
                continue;
            };
            self.devices[key.device as usize].sub(e.kind, e.size);
            match e.kind {
                EntryKind::Buffer(_) => {
                    released.buffers += 1;
                    released.buffer_bytes = released.buffer_bytes.saturating_add(e.size);
                }
                EntryKind::Cb => {
                    released.cbs += 1;
                    released.cb_bytes = released.cb_bytes.saturating_add(e.size);
                }
                EntryKind::Kernel(_) => {
                    released.kernels += 1;
                    released.kernel_bytes = released.kernel_bytes.saturating_add(e.size);
                }
            }
            released.bytes = released.bytes.saturating_add(e.size);
        }
        // A pid that once owned very many entries does not pin that memory in a free slot.
        keys.shrink_to(Procs::RETAINED_KEYS);
        let proc = &mut self.procs.slots[slot as usize];
        proc.keys = keys;
        proc.totals = [Totals::default(); MAX_DEVICES];
        if !released.is_empty() {
            self.stats.releases += 1;
            self.stats.released_entries += released.entries();
            self.version += 1;
        }
        self.debug_check();
        released
    }

    /// Usage of `device` (all zero for an id outside 0..[`MAX_DEVICES`], as the original
    /// answers a query for device 9).
    pub fn usage(&self, device: u8) -> DeviceUsage {
        let totals = self.devices.get(device as usize).copied().unwrap_or_default();
        let spec = self.table.get(device);
        DeviceUsage {
            device,
            totals,
            dram_capacity: spec.map_or(0, |s| s.dram_capacity()),
            l1_capacity: spec.map_or(0, |s| s.l1_capacity()),
        }
    }

    /// Usage per (pid, device) with something owned, sorted by pid then device.
    pub fn process_usage(&self) -> Vec<ProcessUsage> {
        let mut out: Vec<ProcessUsage> = self
            .procs
            .live()
            .flat_map(|p| {
                p.totals
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| !t.is_zero())
                    .map(|(d, t)| ProcessUsage { pid: p.pid, device: d as u8, totals: *t })
            })
            .collect();
        out.sort_unstable_by_key(|u| (u.pid, u.device));
        out
    }

    /// Every live entry, in no particular order.
    pub fn remaining(&self) -> impl Iterator<Item = LiveEntry> + '_ {
        self.entries.iter().map(|(k, e)| LiveEntry {
            kind: e.kind,
            device: k.device,
            buffer_id: k.id,
            size: e.size,
            pid: self.procs.slots[e.slot as usize].pid,
            ref_count: e.refs,
        })
    }

    /// Counters since the ledger was made.
    pub fn stats(&self) -> LedgerStats {
        self.stats
    }

    /// A number that grows whenever any total changes (an entry added or removed), and only
    /// then: a subscriber pushes usage when it differs from the one it last saw.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The pids that own at least one entry, in no particular order.
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.procs.live().filter(|p| !p.keys.is_empty()).map(|p| p.pid)
    }

    /// Live entries, every class.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The device table the capacities come from.
    pub fn table(&self) -> &DeviceTable {
        &self.table
    }

    /// The DUMP_REMAINING report of the reference (§2.4), plain ASCII: buffers only (not CBs
    /// or kernels), grouped by device and type, each buffer listed only when its type has at
    /// most 10, ending with the remaining count.
    pub fn dump_report(&self) -> String {
        const LIST_AT_MOST: usize = 10;
        let mut bufs: Vec<LiveEntry> =
            self.remaining().filter(|e| matches!(e.kind, EntryKind::Buffer(_))).collect();
        bufs.sort_unstable_by_key(|e| (e.device, buffer_code(e.kind), e.buffer_id));
        let mut out = String::new();
        out.push_str("==============================\n");
        out.push_str(" REMAINING ALLOCATED BUFFERS\n");
        out.push_str("==============================\n");
        let _ = writeln!(out, "Total tracked allocations: {}", bufs.len());
        if bufs.is_empty() {
            out.push_str("No buffers remaining - perfect cleanup!\n");
            return out;
        }
        for dev_group in bufs.chunk_by(|a, b| a.device == b.device) {
            let _ = writeln!(out, "Device {}:", dev_group[0].device);
            for group in dev_group.chunk_by(|a, b| a.kind == b.kind) {
                let EntryKind::Buffer(ty) = group[0].kind else { continue };
                let bytes = group.iter().fold(0u64, |a, e| a.saturating_add(e.size));
                let _ = writeln!(
                    out,
                    "  {}: {} buffers, {:.2} MB total",
                    ty.name(),
                    group.len(),
                    bytes as f64 / MIB
                );
                if group.len() <= LIST_AT_MOST {
                    for e in group {
                        let _ = writeln!(
                            out,
                            "    - Buffer 0x{:x}: {:.1} KB (PID {}, ref_count={})",
                            e.buffer_id,
                            e.size as f64 / 1024.0,
                            e.pid,
                            e.ref_count
                        );
                    }
                }
            }
        }
        let _ = writeln!(out, "Total remaining buffers: {}", bufs.len());
        out
    }

    fn alloc(&mut self, pid: u32, key: Key, kind: EntryKind, size: u64) -> Outcome {
        let stats = self.stats.class(key.class());
        stats.allocs += 1;
        match self.entries.entry(key) {
            MapEntry::Occupied(mut o) => {
                stats.duplicate_allocs += 1;
                let e = o.get_mut();
                e.refs = e.refs.saturating_add(1);
                Outcome::RefBumped
            }
            MapEntry::Vacant(v) => {
                let slot = self.procs.slot(pid);
                let proc = &mut self.procs.slots[slot as usize];
                let index = proc.keys.len() as u32;
                proc.keys.push(key);
                proc.totals[key.device as usize].add(kind, size);
                self.devices[key.device as usize].add(kind, size);
                v.insert(Entry { size, slot, index, refs: 1, kind });
                self.version += 1;
                Outcome::Added
            }
        }
    }

    fn free(&mut self, key: Key) -> Outcome {
        let stats = self.stats.class(key.class());
        stats.frees += 1;
        let MapEntry::Occupied(mut o) = self.entries.entry(key) else {
            stats.unknown_frees += 1;
            return Outcome::UnknownFree;
        };
        if o.get().refs > 1 {
            o.get_mut().refs -= 1;
            return Outcome::Decremented;
        }
        let e = o.remove();
        self.devices[key.device as usize].sub(e.kind, e.size);
        let proc = &mut self.procs.slots[e.slot as usize];
        proc.totals[key.device as usize].sub(e.kind, e.size);
        proc.keys.swap_remove(e.index as usize);
        if let Some(moved) = proc.keys.get(e.index as usize) {
            match self.entries.get_mut(moved) {
                Some(m) => m.index = e.index,
                None => debug_assert!(false, "a pid's key list names only live entries"),
            }
        }
        self.version += 1;
        Outcome::Removed
    }

    /// Debug builds, cold paths and tests: every total equals the sum of the entries.
    fn debug_check(&self) {
        #[cfg(debug_assertions)]
        {
            let (devices, procs) = self.recount();
            debug_assert_eq!(devices, self.devices, "device totals = sum of entries");
            for (slot, p) in self.procs.slots.iter().enumerate() {
                debug_assert_eq!(procs.get(&(slot as u32)).copied().unwrap_or_default(), p.totals);
            }
        }
    }

    /// Totals recomputed from the entries: per device, and per process slot.
    #[cfg(debug_assertions)]
    #[allow(clippy::type_complexity)]
    fn recount(&self) -> ([Totals; MAX_DEVICES], HashMap<u32, [Totals; MAX_DEVICES]>) {
        let mut devices = [Totals::default(); MAX_DEVICES];
        let mut procs: HashMap<u32, [Totals; MAX_DEVICES]> = HashMap::new();
        for (k, e) in &self.entries {
            devices[k.device as usize].add(e.kind, e.size);
            procs.entry(e.slot).or_insert([Totals::default(); MAX_DEVICES])[k.device as usize]
                .add(e.kind, e.size);
            let keys = &self.procs.slots[e.slot as usize].keys;
            debug_assert_eq!(keys.get(e.index as usize), Some(k), "entry index names its key");
        }
        (devices, procs)
    }
}

/// The log line of a release: "released 3 buffers, 2 CBs, 1 kernel (12.5 MiB) of pid 4242".
pub fn format_release(pid: u32, released: &Released) -> String {
    fn plural(n: u64, one: &str, many: &str) -> String {
        format!("{n} {}", if n == 1 { one } else { many })
    }
    format!(
        "released {}, {}, {} ({}) of pid {pid}",
        plural(released.buffers, "buffer", "buffers"),
        plural(released.cbs, "CB", "CBs"),
        plural(released.kernels, "kernel", "kernels"),
        format_bytes(released.bytes),
    )
}

/// Bytes in 1024 steps with one decimal: "512 B", "4.0 KiB", "12.5 MiB", "31.9 GiB".
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

const MIB: f64 = (1u64 << 20) as f64;

/// The class and, for an allocation, the kind of `event`; `None` when it is not a valid ledger
/// event.
#[inline]
fn classify(event: &Event) -> Option<(Class, Option<EntryKind>)> {
    if event.device as usize >= MAX_DEVICES {
        return None;
    }
    Some(match event.kind {
        MsgType::Alloc => {
            (Class::Buffer, Some(EntryKind::Buffer(BufferType::from_code(event.buffer_type)?)))
        }
        MsgType::Free => (Class::Buffer, None),
        MsgType::CbAlloc => (Class::Cb, Some(EntryKind::Cb)),
        MsgType::CbFree => (Class::Cb, None),
        MsgType::KernelLoad => {
            (Class::Kernel, Some(EntryKind::Kernel(KernelKind::from_code(event.buffer_type)?)))
        }
        MsgType::KernelUnload => (Class::Kernel, None),
        _ => return None,
    })
}

fn buffer_code(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Buffer(t) => t as u8,
        _ => u8::MAX,
    }
}

/// The three key spaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
enum Class {
    Buffer = 0,
    Cb = 1,
    Kernel = 2,
}

/// A ledger key: class, device, id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    id: u64,
    /// `device << 2 | class`.
    tag: u8,
    device: u8,
}

impl Key {
    #[inline]
    fn new(class: Class, device: u8, id: u64) -> Key {
        Key { id, tag: (device << 2) | class as u8, device }
    }

    fn class(self) -> Class {
        match self.tag & 3 {
            0 => Class::Buffer,
            1 => Class::Cb,
            _ => Class::Kernel,
        }
    }
}

impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One word: addresses and ids use the low bits, the tag (5 bits) goes on top, so keys
        // below 2^59 never share a word.
        state.write_u64(self.id ^ (u64::from(self.tag) << 59));
    }
}

/// A live entry (32 bytes).
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The first ALLOC's size.
    size: u64,
    /// The owner's slot in [`Procs::slots`].
    slot: u32,
    /// This key's position in the owner's key list.
    index: u32,
    refs: u32,
    kind: EntryKind,
}

/// One process: its keys (for release) and its totals per device.
#[derive(Debug)]
struct Proc {
    pid: u32,
    live: bool,
    keys: Vec<Key>,
    totals: [Totals; MAX_DEVICES],
}

/// Processes in slots (entries name their owner by slot), found by pid through an index and a
/// one-entry cache of the last pid looked up.
#[derive(Debug, Default)]
struct Procs {
    slots: Vec<Proc>,
    index: HashMap<u32, u32, FastState>,
    free: Vec<u32>,
    /// (pid, slot) of the last lookup.
    last: Option<(u32, u32)>,
}

impl Procs {
    /// Key-list capacity a released slot keeps for its next pid.
    const RETAINED_KEYS: usize = 1024;

    /// The slot of `pid`, made if new.
    #[inline]
    fn slot(&mut self, pid: u32) -> u32 {
        if let Some((p, s)) = self.last {
            if p == pid {
                return s;
            }
        }
        let s = match self.index.get(&pid) {
            Some(&s) => s,
            None => self.insert(pid),
        };
        self.last = Some((pid, s));
        s
    }

    #[cold]
    fn insert(&mut self, pid: u32) -> u32 {
        let s = match self.free.pop() {
            Some(s) => {
                let p = &mut self.slots[s as usize];
                p.pid = pid;
                p.live = true;
                s
            }
            None => {
                self.slots.push(Proc {
                    pid,
                    live: true,
                    keys: Vec::new(),
                    totals: [Totals::default(); MAX_DEVICES],
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(pid, s);
        s
    }

    /// Forgets `pid`; its slot (still holding its keys) is the caller's to empty.
    fn remove(&mut self, pid: u32) -> Option<u32> {
        let s = self.index.remove(&pid)?;
        if self.last.is_some_and(|(p, _)| p == pid) {
            self.last = None;
        }
        self.slots[s as usize].live = false;
        self.free.push(s);
        Some(s)
    }

    fn live(&self) -> impl Iterator<Item = &Proc> + '_ {
        self.slots.iter().filter(|p| p.live)
    }
}

impl LedgerStats {
    fn class(&mut self, class: Class) -> &mut KindStats {
        match class {
            Class::Buffer => &mut self.buffers,
            Class::Cb => &mut self.cbs,
            Class::Kernel => &mut self.kernels,
        }
    }
}

/// The hasher of the ledger's tables: one widening multiply of the word written (the keys
/// write exactly one), its two halves xored (a folded multiply: every input bit reaches the
/// low bits the table takes buckets from and the high bits it takes tags from). Not
/// DoS-resistant, and need not be: keys are device addresses from local processes, and the
/// worst case is a slower table, never a wrong one.
#[derive(Clone, Copy, Debug, Default)]
struct FastState;

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    #[inline]
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

#[derive(Clone, Copy, Debug)]
struct FastHasher(u64);

impl FastHasher {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;

    #[inline]
    fn fold(x: u64) -> u64 {
        let p = u128::from(x) * u128::from(Self::K);
        (p as u64) ^ ((p >> 64) as u64)
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        Self::fold(self.0)
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        // One word (the keys): the state is the word, and `finish` does the one multiply.
        // Further words are folded in first.
        self.0 = if self.0 == 0 { v } else { Self::fold(self.0) ^ v };
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
}

#[cfg(test)]
mod tests;
