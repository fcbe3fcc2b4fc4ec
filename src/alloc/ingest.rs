//! The sans-IO core of the alloc server: every client connection's bytes and ring records in,
//! the ledger updated in each client's sequence order, replies and closes out.
//!
//! The agent ([`super::service`]) owns the sockets, the rings and the pidfds, and calls:
//!
//! - [`Ingest::connect`] when a connection is accepted (pid and uid from its credentials,
//!   never from a message), [`Ingest::bytes`] with what it receives, [`Ingest::records`] with
//!   what it drains from the connection's shared-memory rings, [`Ingest::disconnect`] when it
//!   closes;
//! - [`Ingest::process_exited`] when a client process's pidfd becomes readable, after it
//!   drained that process's rings to the end;
//! - [`Ingest::tick`] from one lane timer ([`Ingest::next_tick`]): gap timeouts of the reorder
//!   windows, the exit grace of dead processes, usage pushes to subscribers, legacy layout
//!   detection.
//!
//! Output goes through [`Io`]: bytes to queue on a connection, a close, a ring to register.
//!
//! # Native and legacy
//!
//! A connection whose first four bytes are the canonical magic is native (framed events whose
//! `msg_id` is the client's sequence number, protobuf queries); any other is legacy with its
//! listener's layout ([`super::legacy`]), applied in arrival order. A native-only listener
//! closes a connection that does not start with the magic.
//!
//! # Ordering
//!
//! Each native connection has a [`Reorder`] window: events apply in sequence order, early ones
//! wait, a gap that does not fill within `gap_timeout` (or a full window) is skipped and
//! counted. Ring records share the connection's sequence space: a client's threads push into
//! their own rings and the socket, and the window merges them.
//!
//! # Process exit
//!
//! A dead process's entries are released in one step once every one of its connections has
//! delivered what it sent (end of stream) and its rings were drained, or after `exit_grace`
//! if a socket stays open (a child inherited it). Events of a released process that still
//! arrive are dropped and counted (`after_release`): nothing of it is applied after the
//! release.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message;
use zerocopy::FromBytes;

use super::devices::DeviceTable;
use super::latency::LatencyProbe;
use super::ledger::{EntryKind, Outcome};
use super::ledgers::{Applied, DeviceAgent, LedgerOp, Ledgers};
use super::legacy::{self, Item, LayoutChoice, LegacyParser, ReplyDeviceInfo, ReplyUsage, Verdict};
use super::order::{Reorder, ReorderStats};
use super::proto;
use super::wire::{
    BufferType, Event, EventBody, KernelKind, Layout, MsgType, RingRecord, EVENT_BODY_LEN,
    MAX_DEVICES,
};
use crate::runtime::{LinkRx, LinkTx};
use crate::wire::{
    encode, encode_error, Decoder, DecoderConfig, Event as WireEvent, Flags, ProtocolVersion,
    WireError, MAGIC,
};

/// What a listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Native clients only.
    Native,
    /// Native clients, or legacy ones with this layout choice.
    Legacy(LayoutChoice),
}

impl ListenerKind {
    /// Parses a listener's layout name (`native`, `tt-metal`, `tt-metal-v4`, `tt-metal-v5`,
    /// `compact-v2`).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "native" => ListenerKind::Native,
            "tt-metal" => ListenerKind::Legacy(LayoutChoice::Auto),
            "tt-metal-v4" => ListenerKind::Legacy(LayoutChoice::Pinned(Layout::TtMetalV4)),
            "tt-metal-v5" => ListenerKind::Legacy(LayoutChoice::Pinned(Layout::TtMetalV5)),
            "compact-v2" => ListenerKind::Legacy(LayoutChoice::Pinned(Layout::CompactV2)),
            _ => return None,
        })
    }
}

/// The settings of the core (from `[alloc]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestConfig {
    /// Events held per client while a gap fills.
    pub reorder_window: usize,
    /// How long a gap may wait before it is skipped.
    pub gap_timeout: Duration,
    /// Release a process's entries when its last connection closes.
    pub release_on_disconnect: bool,
    /// How long a dead process's sockets may take to deliver what it sent.
    pub exit_grace: Duration,
    /// Rings one connection may register.
    pub max_rings_per_client: u32,
    /// Records per ring.
    pub ring_capacity: u32,
    /// How long an undecided `tt-metal` connection waits before it is read as v4.
    pub legacy_detect_timeout: Duration,
    /// Largest native body accepted (events are 32 bytes, queries small: a hostile client
    /// cannot make a connection buffer more than this).
    pub max_body_bytes: u32,
    /// Most early events held by all clients' windows together; a client that would hold
    /// more while the total is at the budget has its window flushed first (its gaps skipped,
    /// counted), so memory stays bounded whatever the clients send.
    pub held_budget: usize,
    /// Record report-to-applied latencies ([`super::latency`]).
    pub latency_probe: bool,
    /// Most live entries of the ledger (all processes): an allocation past it is refused and
    /// counted (`ledger_full`), so a client inventing addresses costs bounded memory.
    pub max_entries: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            reorder_window: 65536,
            gap_timeout: Duration::from_millis(100),
            release_on_disconnect: false,
            exit_grace: Duration::from_secs(1),
            max_rings_per_client: 64,
            ring_capacity: 8192,
            legacy_detect_timeout: Duration::from_millis(5),
            max_body_bytes: MAX_BODY_BYTES,
            held_budget: 1 << 20,
            latency_probe: false,
            max_entries: 1 << 22,
        }
    }
}

/// The core's output: what the agent does with the sockets.
pub trait Io {
    /// Queue `bytes` on connection `client`.
    fn send(&mut self, client: u64, bytes: &[u8]);
    /// Close connection `client` once what is queued is written.
    fn close(&mut self, client: u64);
    /// The client asked for a shared-memory ring (request `msg_id`): create it, send the
    /// grant ([`Ingest::encode_grant`]) with its descriptor, and tell the core
    /// ([`Ingest::ring_added`]) or reply with [`Ingest::encode_refusal`].
    fn register_ring(&mut self, client: u64, msg_id: u64);
}

/// The counters of the core (mirrored into the counters file by the agent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestCounters {
    /// Events applied to the ledger.
    pub events: u64,
    /// Records refused by validation.
    pub invalid: u64,
    /// Frees of keys the ledger does not hold.
    pub unknown_frees: u64,
    /// ALLOCs of live keys.
    pub duplicate_allocs: u64,
    /// Gaps skipped.
    pub gaps_skipped: u64,
    /// Sequence numbers those gaps skipped.
    pub seqs_skipped: u64,
    /// Events that came after their gap was skipped.
    pub late: u64,
    /// Events held before they applied.
    pub reordered: u64,
    /// Duplicate sequence numbers dropped.
    pub duplicates: u64,
    /// Reports clients dropped on their side.
    pub client_dropped: u64,
    /// Processes released.
    pub processes_released: u64,
    /// Entries those releases removed.
    pub entries_released: u64,
    /// Events of released processes, dropped.
    pub after_release: u64,
    /// Legacy bytes discarded by resync.
    pub resync_bytes: u64,
    /// Connections closed for errors (legacy streak, native fatal framing, wrong layout).
    pub error_closes: u64,
    /// Rings registered and open now.
    pub rings: u64,
    /// Rings closed for corruption.
    pub ring_corruptions: u64,
    /// Client connections open now.
    pub connections: u64,
    /// Queries answered.
    pub queries: u64,
    /// Windows flushed because all clients together held `held_budget` events.
    pub budget_flushes: u64,
    /// Early events held by all windows now.
    pub held: u64,
    /// Allocations refused because the ledger held `max_entries` (or a device lane's
    /// backlog was full).
    pub ledger_full: u64,
}

/// The alloc server's core. See the [module docs](self).
pub struct Ingest {
    config: IngestConfig,
    ledger: Ledgers,
    devices: DeviceTable,
    clients: HashMap<u64, Client>,
    procs: HashMap<u32, Proc>,
    /// Clients whose window holds events (their gaps need the tick).
    gapped: Vec<u64>,
    /// Clients subscribed to usage pushes.
    subscribers: Vec<u64>,
    counters: IngestCounters,
    /// Scratch for replies (kept between calls: no allocation per reply once warm).
    scratch: Vec<u8>,
    body: Vec<u8>,
    /// Legacy items of one feed (kept: no allocation per feed once warm).
    items: Vec<Item>,
    /// Events held by all windows, against the budget.
    held: Held,
    /// `Some` with `[alloc] latency_probe` on.
    latency: Option<Box<LatencyProbe>>,
    /// When a legacy dump report last went to the log.
    dump_logged: Option<Instant>,
    /// Processes in their exit grace (dead, a socket still open): the tick's to release.
    exiting: Vec<u32>,
    /// Legacy connections waiting to settle their v4/v5 detection.
    settling: Vec<u64>,
}

/// The windows' shared budget of held events, and of the ring slots they take.
#[derive(Debug)]
struct Held {
    total: usize,
    budget: usize,
    /// Ring slots of all windows (a window's ring grows with the displacement it sees, so
    /// one far-ahead event can take many slots: they are budgeted too, at 4 per event).
    slots: usize,
    flushes: u64,
}

impl Held {
    /// Pushes `seq` into `window`, first flushing the window if the budget is spent.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        window: &mut Reorder<Option<Event>>,
        seq: u64,
        event: Option<Event>,
        now: Instant,
        mut apply: impl FnMut(Option<Event>),
    ) {
        let (before, slots) = (window.held(), window.slots());
        let spent = self.total >= self.budget || self.slots >= self.budget.saturating_mul(4);
        if spent && before > 0 {
            window.flush(&mut apply);
            self.flushes += 1;
        }
        window.push(seq, event, now, apply);
        self.total = (self.total + window.held()).saturating_sub(before);
        self.slots = (self.slots + window.slots()).saturating_sub(slots);
    }

    /// Accounts for `window` going from `before` (held events, ring slots) to what it holds.
    fn settle(&mut self, before: (usize, usize), window: &Reorder<Option<Event>>) {
        self.total = (self.total + window.held()).saturating_sub(before.0);
        self.slots = (self.slots + window.slots()).saturating_sub(before.1);
    }
}

struct Client {
    pid: u32,
    /// The process generation this connection belongs to (a reused pid is a new one).
    generation: u64,
    kind: Kind,
    rings: u32,
    /// Ring requests handed to the agent and not answered yet: with `rings`, at most
    /// `max_rings_per_client` (more are refused at once, so a flood of requests costs the
    /// agent nothing).
    ring_requests: u32,
    subscription: Option<Subscription>,
}

enum Kind {
    /// Fewer than four bytes seen: native or legacy not known yet.
    Undecided {
        listener: ListenerKind,
        head: Vec<u8>,
    },
    Native(Box<Native>),
    Legacy(Box<Legacy>),
}

struct Native {
    decoder: Decoder,
    /// `None` holds the place of an invalid event, so its sequence number is not a gap.
    window: Reorder<Option<Event>>,
    name: String,
    /// Invalid events since the last log line (one line per burst).
    invalid_burst: u64,
    /// The window's counts already folded into the core's.
    synced: ReorderStats,
}

struct Legacy {
    parser: LegacyParser,
    /// Bytes of an incomplete record (less than one record, or an undecided v4/v5 head).
    partial: Vec<u8>,
    since: Instant,
}

struct Subscription {
    interval: Duration,
    last_sent: Option<Instant>,
    last_version: u64,
}

struct Proc {
    /// The process's effective uid, from its socket's credentials.
    uid: Option<u32>,
    /// Open connections of the current generation.
    conns: u32,
    /// Open connections of earlier generations (a dead process's sockets a child kept):
    /// their events are dropped, and the entry stays until they end too.
    stale_conns: u32,
    generation: u64,
    exited_at: Option<Instant>,
    released: bool,
}

/// Where a legacy item came from.
#[derive(Clone, Copy)]
struct LegacyFrom {
    client: u64,
    pid: u32,
    /// Its process was released (its events are dropped).
    released: bool,
    /// The connection's record layout, once detected.
    layout: Option<Layout>,
}

/// What [`Ingest::connect`] tells the agent.
///
/// `new_process` is true for the first connection of a pid the core does not know, or of a
/// pid it saw die (a new process reuses it): watch its exit (a fresh pidfd). A live process
/// that reconnects after closing every connection is not new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connected {
    /// The first connection of this process: watch its exit (a pidfd).
    pub new_process: bool,
}

/// The default [`IngestConfig::max_body_bytes`]: 64 KiB.
pub const MAX_BODY_BYTES: u32 = 64 << 10;

/// The default and the smallest subscription interval.
pub const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_millis(100);
const MIN_PUSH_INTERVAL: Duration = Duration::from_millis(10);
/// Most allocations listed in a native dump reply (the rest are counted).
pub const DUMP_MAX_ENTRIES: usize = 10_000;
/// At most one legacy dump report in the log per this long.
const DUMP_LOG_EVERY: Duration = Duration::from_secs(1);
/// Error code of alloc-level error replies (refusals that are not framing errors).
pub const ERROR_REFUSED: u16 = 100;

impl Ingest {
    /// A core with an empty ledger over `devices`.
    pub fn new(config: IngestConfig, devices: DeviceTable) -> Self {
        Ingest {
            config,
            ledger: Ledgers::new(devices.clone()).with_max_entries(config.max_entries),
            devices,
            clients: HashMap::new(),
            procs: HashMap::new(),
            gapped: Vec::new(),
            subscribers: Vec::new(),
            counters: IngestCounters::default(),
            scratch: Vec::with_capacity(4096),
            body: Vec::with_capacity(4096),
            items: Vec::with_capacity(256),
            held: Held { total: 0, budget: config.held_budget, slots: 0, flushes: 0 },
            latency: config.latency_probe.then(LatencyProbe::new),
            dump_logged: None,
            exiting: Vec::new(),
            settling: Vec::new(),
        }
    }

    /// The ledgers of every device.
    pub fn ledger(&self) -> &Ledgers {
        &self.ledger
    }

    /// Moves device `device`'s ledger to the lane of the agent that consumes `tx` (see
    /// [`super::ledgers`]); returns that agent. Call before the first connection.
    pub fn place_device(
        &mut self,
        device: u8,
        tx: LinkTx<LedgerOp>,
        rx: LinkRx<LedgerOp>,
    ) -> DeviceAgent {
        self.ledger.place(device, tx, rx)
    }

    /// Pushes events that wait for room in a device lane's link; returns whether some still
    /// wait (the agent keeps its lane busy until they are through).
    pub fn flush_ledgers(&mut self) -> bool {
        self.ledger.flush()
    }

    /// The counters so far.
    pub fn counters(&self) -> IngestCounters {
        let mut c = self.counters;
        c.connections = self.clients.len() as u64;
        c.budget_flushes = self.held.flushes;
        let (unknown, duplicate, rejected, dropped) = self.ledger.remote_outcomes();
        c.unknown_frees += unknown;
        c.duplicate_allocs += duplicate;
        c.invalid += rejected;
        c.ledger_full += dropped;
        c.held = self.held.total as u64;
        c
    }

    /// A connection from process `pid` was accepted on a listener of `listener`.
    pub fn connect(
        &mut self,
        client: u64,
        pid: u32,
        listener: ListenerKind,
        _now: Instant,
    ) -> Connected {
        let mut new_process = !self.procs.contains_key(&pid);
        let proc = self.procs.entry(pid).or_insert(Proc {
            uid: None,
            conns: 0,
            stale_conns: 0,
            generation: 0,
            exited_at: None,
            released: false,
        });
        if proc.released || proc.exited_at.is_some() {
            // A pid seen dead before: this is a new process that reuses it. What the dead one
            // held goes now (its grace is over: a new process has its pid), and its sockets
            // still open are of an earlier generation from here on.
            if !proc.released {
                self.release(pid, _now);
            }
            let proc = self.procs.entry(pid).or_insert(Proc {
                uid: None,
                conns: 0,
                stale_conns: 0,
                generation: 0,
                exited_at: None,
                released: false,
            });
            proc.stale_conns += proc.conns;
            proc.conns = 0;
            proc.generation += 1;
            proc.released = false;
            proc.exited_at = None;
            new_process = true;
        }
        let proc = self.procs.get_mut(&pid).expect("inserted above");
        proc.conns += 1;
        let generation = proc.generation;
        let kind = Kind::Undecided { listener, head: Vec::new() };
        let c = Client { pid, generation, kind, rings: 0, ring_requests: 0, subscription: None };
        self.clients.insert(client, c);
        Connected { new_process }
    }

    /// The uid of `client`'s process, from its socket's credentials (as the pid: never from
    /// a message); shown with its usage.
    pub fn set_uid(&mut self, client: u64, uid: u32) {
        let Some(pid) = self.clients.get(&client).map(|c| c.pid) else { return };
        if let Some(proc) = self.procs.get_mut(&pid) {
            proc.uid = Some(uid);
        }
    }

    /// Bytes arrived on `client`.
    pub fn bytes(&mut self, client: u64, input: &[u8], now: Instant, io: &mut impl Io) {
        let Some(c) = self.clients.get_mut(&client) else { return };
        if let Kind::Undecided { listener, head, .. } = &mut c.kind {
            let need = 4 - head.len().min(4);
            let take = need.min(input.len());
            head.extend_from_slice(&input[..take]);
            if head.len() < 4 {
                return;
            }
            let native = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) == MAGIC;
            let first = std::mem::take(head);
            let listener = *listener;
            c.kind = match (native, listener) {
                (true, _) => Kind::Native(Box::new(Native::new(&self.config))),
                (false, ListenerKind::Legacy(choice)) => Kind::Legacy(Box::new(Legacy {
                    parser: LegacyParser::new(choice),
                    partial: Vec::new(),
                    since: now,
                })),
                (false, ListenerKind::Native) => {
                    tracing::warn!(pid = c.pid, "alloc: a connection to a native listener does not start with the canonical magic; closing it");
                    self.counters.error_closes += 1;
                    io.close(client);
                    return;
                }
            };
            // The head bytes first, then the rest of this input.
            self.feed(client, &first, now, io);
            self.feed(client, &input[take..], now, io);
            return;
        }
        self.feed(client, input, now, io);
    }

    /// Records drained from one of `client`'s rings, oldest first.
    pub fn records(&mut self, client: u64, records: &[RingRecord], now: Instant) {
        let Some(c) = self.clients.get_mut(&client) else { return };
        let released = is_released(&self.procs, c.pid, c.generation);
        let Kind::Native(native) = &mut c.kind else { return };
        let pid = c.pid;
        for rec in records {
            if released {
                self.counters.after_release += 1;
                continue;
            }
            let event = match rec.event() {
                Ok(event) => {
                    native.invalid_burst = 0;
                    Some(event)
                }
                Err(e) => {
                    self.counters.invalid += 1;
                    native.note_invalid(pid, &e);
                    None
                }
            };
            let (ledger, counters) = (&mut self.ledger, &mut self.counters);
            let seq = rec.seq.get();
            let probe = probe_due(&mut self.latency, &native.window, seq);
            self.held
                .push(&mut native.window, seq, event, now, |e| apply(ledger, counters, pid, e));
            if let (Some(p), Some(_)) = (probe, event) {
                p.applied(rec.body.timestamp_ns.get());
            }
        }
        native.sync_counters(&mut self.counters, pid);
        if native.window.held() > 0 && !self.gapped.contains(&client) {
            self.gapped.push(client);
        }
    }

    /// The agent answered a ring request of `client` (granted or refused): one more may come.
    pub fn ring_request_done(&mut self, client: u64) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.ring_requests = c.ring_requests.saturating_sub(1);
        }
    }

    /// A ring of `client`'s was created and granted.
    pub fn ring_added(&mut self, client: u64) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.rings += 1;
            self.counters.rings += 1;
        }
    }

    /// A ring of `client`'s ended (its client closed, or it was found corrupt).
    pub fn ring_removed(&mut self, client: u64, corrupt: bool) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.rings = c.rings.saturating_sub(1);
        }
        self.counters.rings = self.counters.rings.saturating_sub(1);
        if corrupt {
            self.counters.ring_corruptions += 1;
        }
    }

    /// How many rings `client` holds.
    pub fn rings_of(&self, client: u64) -> u32 {
        self.clients.get(&client).map_or(0, |c| c.rings)
    }

    /// The pid of `client`.
    pub fn pid_of(&self, client: u64) -> Option<u32> {
        self.clients.get(&client).map(|c| c.pid)
    }

    /// Connection `client` closed. What its window holds is applied (gaps skipped); returns
    /// whether its process is gone for good (its pidfd may be closed).
    pub fn disconnect(&mut self, client: u64, now: Instant) -> bool {
        let Some(mut c) = self.clients.remove(&client) else { return false };
        let released = is_released(&self.procs, c.pid, c.generation);
        if let Kind::Native(native) = &mut c.kind {
            let (ledger, counters) = (&mut self.ledger, &mut self.counters);
            let pid = c.pid;
            let before = (native.window.held(), native.window.slots());
            native.window.flush(|e| {
                if released {
                    counters.after_release += u64::from(e.is_some());
                } else {
                    apply(ledger, counters, pid, e)
                }
            });
            self.held.settle(before, &native.window);
            // The window goes with the connection: its ring's slots too.
            self.held.slots = self.held.slots.saturating_sub(native.window.slots());
            native.sync_counters(&mut self.counters, pid);
        }
        self.counters.rings = self.counters.rings.saturating_sub(u64::from(c.rings));
        self.gapped.retain(|&g| g != client);
        self.subscribers.retain(|&s| s != client);
        let Some(proc) = self.procs.get_mut(&c.pid) else { return false };
        if proc.generation != c.generation {
            // A connection of an earlier process with this pid.
            proc.stale_conns = proc.stale_conns.saturating_sub(1);
            if proc.stale_conns == 0 && proc.conns == 0 && proc.released {
                self.procs.remove(&c.pid);
            }
            return false;
        }
        proc.conns = proc.conns.saturating_sub(1);
        if proc.conns > 0 {
            return false;
        }
        if proc.released {
            // Released at the end of its grace; its last connection is gone now.
            if proc.stale_conns == 0 {
                self.procs.remove(&c.pid);
            }
            return false;
        }
        if proc.exited_at.is_some() || self.config.release_on_disconnect {
            self.release(c.pid, now);
            return true;
        }
        false
    }

    /// Process `pid` exited (its pidfd is readable). Call after draining its rings to the end.
    /// Its entries are released now if no connection of it is open, else once they all end
    /// or `exit_grace` passes. Returns whether it is gone for good (close its pidfd).
    pub fn process_exited(&mut self, pid: u32, now: Instant) -> bool {
        let Some(proc) = self.procs.get_mut(&pid) else { return true };
        if proc.released {
            return true;
        }
        if proc.exited_at.is_none() {
            proc.exited_at = Some(now);
            if !self.exiting.contains(&pid) {
                self.exiting.push(pid);
            }
        }
        if proc.conns == 0 {
            self.release(pid, now);
            return true;
        }
        false
    }

    /// When [`tick`](Self::tick) must next run, if anything waits on time.
    pub fn next_tick(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for client in &self.gapped {
            if let Some(Kind::Native(n)) = self.clients.get(client).map(|c| &c.kind) {
                if let Some(d) = n.window.deadline() {
                    at(d);
                }
            }
        }
        for pid in &self.exiting {
            if let Some(&Proc { exited_at: Some(t), released: false, .. }) = self.procs.get(pid) {
                at(t + self.config.exit_grace);
            }
        }
        // A push is due once the ledger changed since a subscriber's last push, at the end
        // of its interval (not `now + interval`: a deadline that moves with every pass of a
        // busy lane never comes). The version is read only with subscribers (it takes the
        // lock of every device ledger on another lane).
        let version = if self.subscribers.is_empty() { 0 } else { self.ledger.version() };
        for client in &self.subscribers {
            if let Some(sub) = self.clients.get(client).and_then(|c| c.subscription.as_ref()) {
                if sub.last_version != version {
                    at(sub.last_sent.map_or(now, |t| t + sub.interval));
                }
            }
        }
        for client in &self.settling {
            if let Some(Kind::Legacy(l)) = self.clients.get(client).map(|c| &c.kind) {
                if l.parser.needs_settle() {
                    at(l.since + self.config.legacy_detect_timeout);
                }
            }
        }
        next
    }

    /// Time-driven work: skip gaps that timed out, release dead processes whose grace ended,
    /// push usage to subscribers, settle undecided legacy layouts. Returns the pids released
    /// (their pidfds may be closed).
    pub fn tick(&mut self, now: Instant, io: &mut impl Io, released: &mut Vec<u32>) {
        let mut i = 0;
        while i < self.gapped.len() {
            let client = self.gapped[i];
            let Some(c) = self.clients.get_mut(&client) else {
                self.gapped.swap_remove(i);
                continue;
            };
            let gone = is_released(&self.procs, c.pid, c.generation);
            let pid = c.pid;
            if let Kind::Native(native) = &mut c.kind {
                let (ledger, counters) = (&mut self.ledger, &mut self.counters);
                let before = (native.window.held(), native.window.slots());
                native.window.poll(now, |e| {
                    if gone {
                        counters.after_release += u64::from(e.is_some());
                    } else {
                        apply(ledger, counters, pid, e)
                    }
                });
                self.held.settle(before, &native.window);
                native.sync_counters(&mut self.counters, pid);
                if native.window.held() == 0 {
                    self.gapped.swap_remove(i);
                    continue;
                }
            }
            i += 1;
        }
        // The exiting and settling lists: small (processes in their exit grace, legacy
        // connections in their detection wait), never a scan of every process or client.
        let grace = self.config.exit_grace;
        let procs = &self.procs;
        self.exiting
            .retain(|pid| procs.get(pid).is_some_and(|p| !p.released && p.exited_at.is_some()));
        let due: Vec<u32> = self
            .exiting
            .iter()
            .copied()
            .filter(|pid| {
                procs.get(pid).and_then(|p| p.exited_at).is_some_and(|t| now >= t + grace)
            })
            .collect();
        for pid in due {
            tracing::warn!(pid, "alloc: process exited but a socket of it is still open after the grace period; releasing its entries");
            self.release(pid, now);
            released.push(pid);
        }
        let clients = &self.clients;
        self.settling.retain(|id| {
            matches!(clients.get(id).map(|c| &c.kind), Some(Kind::Legacy(l)) if l.parser.needs_settle())
        });
        let wait = self.config.legacy_detect_timeout;
        let undecided: Vec<u64> = self
            .settling
            .iter()
            .copied()
            .filter(|id| matches!(clients.get(id).map(|c| &c.kind), Some(Kind::Legacy(l)) if now >= l.since + wait))
            .collect();
        for client in undecided {
            if let Some(Kind::Legacy(l)) = self.clients.get_mut(&client).map(|c| &mut c.kind) {
                // A verdict here comes back from the parse of the held bytes below.
                let _ = l.parser.settle();
            }
            self.feed(client, &[], now, io);
        }
        self.push_usage(now, io);
    }

    /// The bytes of a ring grant reply (request `msg_id`), to send with the ring's descriptor.
    pub fn encode_grant(msg_id: u64, index: u32, capacity: u32, bytes: u64, out: &mut Vec<u8>) {
        let body = proto::RingGrant { index, capacity, bytes }.encode_to_vec();
        encode(
            ProtocolVersion::V2,
            MsgType::RegisterRing.code(),
            Flags::RESPONSE,
            msg_id,
            &body,
            out,
        );
    }

    /// An error reply refusing request `msg_type`/`msg_id` with `text`.
    pub fn encode_refusal(msg_type: u16, msg_id: u64, text: &str, out: &mut Vec<u8>) {
        let mut body = Vec::with_capacity(2 + text.len());
        body.extend_from_slice(&ERROR_REFUSED.to_le_bytes());
        body.extend_from_slice(text.as_bytes());
        encode(
            ProtocolVersion::V2,
            msg_type,
            Flags::RESPONSE.union(Flags::ERROR),
            msg_id,
            &body,
            out,
        );
    }

    /// Whether `client` may register one more ring (its pending request counted).
    pub fn may_register(&self, client: u64) -> bool {
        self.clients.get(&client).is_some_and(|c| c.rings < self.config.max_rings_per_client)
    }

    /// The ring capacity clients get.
    pub fn ring_capacity(&self) -> u32 {
        self.config.ring_capacity
    }

    fn feed(&mut self, client: u64, input: &[u8], now: Instant, io: &mut impl Io) {
        let Some(c) = self.clients.get_mut(&client) else { return };
        let released = is_released(&self.procs, c.pid, c.generation);
        let pid = c.pid;
        match &mut c.kind {
            Kind::Undecided { .. } => {}
            Kind::Native(native) => {
                let mut requests: Vec<(u16, u64, Vec<u8>)> = Vec::new();
                let (ledger, counters, scratch, held, latency) = (
                    &mut self.ledger,
                    &mut self.counters,
                    &mut self.scratch,
                    &mut self.held,
                    &mut self.latency,
                );
                scratch.clear();
                let Native { decoder, window, invalid_burst, .. } = &mut **native;
                let result = decoder.feed(input, |event| match event {
                    WireEvent::Frame(frame) => {
                        let msg_type = frame.header.msg_type;
                        match MsgType::from_code(msg_type) {
                            Some(kind) if kind.is_event() => {
                                if released {
                                    counters.after_release += 1;
                                    return;
                                }
                                let event = EventBody::read_from_bytes(frame.body)
                                    .map_err(|_| None)
                                    .and_then(|b| Event::from_native(msg_type, &b).map_err(Some));
                                let event = match event {
                                    Ok(event) => {
                                        *invalid_burst = 0;
                                        Some(event)
                                    }
                                    Err(e) => {
                                        counters.invalid += 1;
                                        *invalid_burst += 1;
                                        if *invalid_burst == 1 {
                                            match e {
                                                Some(e) => tracing::warn!(pid, "alloc: {e} from pid {pid}"),
                                                None => tracing::warn!(pid, "alloc: event body of {} bytes from pid {pid}, expected {EVENT_BODY_LEN}", frame.body.len()),
                                            }
                                        }
                                        None
                                    }
                                };
                                let seq = frame.header.msg_id;
                                let probe = probe_due(latency, window, seq);
                                held.push(window, seq, event, now, |e| {
                                    apply(ledger, counters, pid, e)
                                });
                                if let (Some(p), Some(_)) = (probe, event) {
                                    // The body's timestamp: the event decoded from it.
                                    let stamp = EventBody::read_from_bytes(frame.body)
                                        .map_or(0, |b| b.timestamp_ns.get());
                                    p.applied(stamp);
                                }
                            }
                            Some(MsgType::Doorbell) => {}
                            Some(MsgType::Hello) => {
                                // The window's start, before any event after it in this read
                                // (the reply is sent with the other requests', below).
                                if let Ok(hello) = proto::Hello::decode(frame.body) {
                                    window.start(hello.first_seq);
                                }
                                requests.push((msg_type, frame.header.msg_id, frame.body.to_vec()));
                            }
                            _ => requests.push((msg_type, frame.header.msg_id, frame.body.to_vec())),
                        }
                    }
                    WireEvent::Error { msg_type, msg_id, error } => {
                        encode_error(ProtocolVersion::V2, msg_type, msg_id, &error, scratch);
                    }
                });
                native.sync_counters(&mut self.counters, pid);
                if native.window.held() > 0 && !self.gapped.contains(&client) {
                    self.gapped.push(client);
                }
                if !self.scratch.is_empty() {
                    io.send(client, &self.scratch);
                }
                // A read may carry many requests; dumps (a walk of the whole ledger) are
                // answered one per read, the rest refused, so a flood costs bounded work.
                let mut dumps = 0;
                for (msg_type, msg_id, body) in requests {
                    let dump = matches!(
                        MsgType::from_code(msg_type),
                        Some(MsgType::DumpRemaining | MsgType::DumpKernels | MsgType::ProcessQuery)
                    );
                    if dump {
                        dumps += 1;
                        if dumps > 1 {
                            let text = "one dump per read: ask again after the reply";
                            self.refuse(client, msg_type, msg_id, text, io);
                            continue;
                        }
                    }
                    self.request(client, msg_type, msg_id, &body, now, io);
                }
                if let Err(fatal) = result {
                    self.scratch.clear();
                    encode_error(ProtocolVersion::V2, 0, 0, &fatal, &mut self.scratch);
                    io.send(client, &self.scratch);
                    tracing::warn!(pid, "alloc: closing a native connection of pid {pid}: {fatal}");
                    self.counters.error_closes += 1;
                    io.close(client);
                }
            }
            Kind::Legacy(legacy) => {
                let mut items = std::mem::take(&mut self.items);
                items.clear();
                let Legacy { parser, partial, since } = &mut **legacy;
                let was_settling = parser.needs_settle();
                let parsed = if partial.is_empty() {
                    let parsed = parser.parse(input, &mut |item| items.push(item));
                    partial.extend_from_slice(&input[parsed.consumed..]);
                    parsed
                } else {
                    partial.extend_from_slice(input);
                    let parsed = parser.parse(partial, &mut |item| items.push(item));
                    partial.drain(..parsed.consumed);
                    parsed
                };
                if parser.needs_settle() && !was_settling {
                    // The detection wait counts from the bytes that left it undecided, not
                    // from the connection's first bytes.
                    *since = now;
                    if !self.settling.contains(&client) {
                        self.settling.push(client);
                    }
                }
                let before = self.counters.resync_bytes;
                self.counters.resync_bytes = before.max(parser.stats().resync_bytes);
                if let Some(burst) = parser.take_burst() {
                    tracing::warn!(pid, "alloc: {}", burst.with_pid(pid as i32));
                }
                let layout = parser.layout();
                for &item in &items {
                    let from = LegacyFrom { client, pid, released, layout };
                    self.legacy_item(from, item, now, io);
                }
                self.items = items;
                if let Verdict::Close(close) = parsed.verdict {
                    tracing::warn!(pid, "alloc: {close} (pid {pid}); closing that connection");
                    self.counters.error_closes += 1;
                    io.close(client);
                }
            }
        }
    }

    fn legacy_item(&mut self, from: LegacyFrom, item: Item, now: Instant, io: &mut impl Io) {
        let LegacyFrom { client, pid, released, layout } = from;
        match item {
            Item::Event(event) => {
                if released {
                    self.counters.after_release += 1;
                } else {
                    apply(&mut self.ledger, &mut self.counters, pid, Some(event));
                }
            }
            Item::Invalid { .. } => self.counters.invalid += 1,
            Item::Query { device, buffer_type } => {
                self.counters.queries += 1;
                let usage = self.reply_usage(device, buffer_type);
                self.scratch.clear();
                if let Some(layout) = layout {
                    legacy::encode_response(layout, device, &usage, &mut self.scratch);
                    io.send(client, &self.scratch);
                }
            }
            Item::DeviceInfoQuery { device } => {
                self.counters.queries += 1;
                let info = self.reply_device_info(device);
                self.scratch.clear();
                if let Some(layout) = layout {
                    legacy::encode_device_info(layout, device, &info, &mut self.scratch);
                    io.send(client, &self.scratch);
                }
            }
            Item::DumpRemaining | Item::DumpKernels
                if self.dump_logged.is_some_and(|t| now < t + DUMP_LOG_EVERY) =>
            {
                // The report goes to the log: at most one a second, whoever floods it.
                self.counters.queries += 1;
            }
            Item::DumpRemaining => {
                self.dump_logged = Some(now);
                self.counters.queries += 1;
                tracing::info!(
                    "alloc: DUMP_REMAINING from pid {pid}\n{}",
                    self.ledger.dump_report()
                );
            }
            Item::DumpKernels => {
                self.dump_logged = Some(now);
                self.counters.queries += 1;
                tracing::info!("alloc: DUMP_KERNELS from pid {pid}\n{}", self.kernel_report());
            }
            Item::Unknown { msg_type } => {
                tracing::debug!(pid, "alloc: unknown message type {msg_type} from pid {pid}");
            }
        }
    }

    fn request(
        &mut self,
        client: u64,
        msg_type: u16,
        msg_id: u64,
        body: &[u8],
        now: Instant,
        io: &mut impl Io,
    ) {
        let pid = self.clients.get(&client).map_or(0, |c| c.pid);
        self.body.clear();
        let reply_type = msg_type;
        match MsgType::from_code(msg_type) {
            Some(MsgType::Query) => {
                let Ok(req) = proto::UsageRequest::decode(body) else {
                    return self.refuse(client, msg_type, msg_id, "bad UsageRequest body", io);
                };
                self.counters.queries += 1;
                self.usage_reply(req.device).encode(&mut self.body).ok();
            }
            Some(MsgType::DeviceInfoQuery) => {
                let Ok(req) = proto::DeviceInfoRequest::decode(body) else {
                    return self.refuse(client, msg_type, msg_id, "bad DeviceInfoRequest body", io);
                };
                self.counters.queries += 1;
                self.device_info_reply(req.device).encode(&mut self.body).ok();
            }
            Some(MsgType::ProcessQuery) => {
                self.counters.queries += 1;
                self.process_reply().encode(&mut self.body).ok();
            }
            Some(kind @ (MsgType::DumpRemaining | MsgType::DumpKernels)) => {
                self.counters.queries += 1;
                self.dump_reply(kind == MsgType::DumpKernels).encode(&mut self.body).ok();
            }
            Some(MsgType::Subscribe) => {
                let Ok(req) = proto::SubscribeRequest::decode(body) else {
                    return self.refuse(client, msg_type, msg_id, "bad SubscribeRequest body", io);
                };
                let interval = match req.min_interval_ms {
                    0 => DEFAULT_PUSH_INTERVAL,
                    ms => Duration::from_millis(u64::from(ms)).max(MIN_PUSH_INTERVAL),
                };
                let version = self.ledger.version();
                if let Some(c) = self.clients.get_mut(&client) {
                    c.subscription = Some(Subscription {
                        interval,
                        last_sent: Some(now),
                        last_version: version,
                    });
                    if !self.subscribers.contains(&client) {
                        self.subscribers.push(client);
                    }
                }
                self.usage_reply(None).encode(&mut self.body).ok();
            }
            Some(MsgType::Hello) => {
                let Ok(hello) = proto::Hello::decode(body) else {
                    return self.refuse(client, msg_type, msg_id, "bad Hello body", io);
                };
                // (The window started at `first_seq` as the frame was read, in order.)
                if let Some(Kind::Native(n)) = self.clients.get_mut(&client).map(|c| &mut c.kind) {
                    n.name = hello.name.chars().take(64).collect();
                }
                proto::HelloReply {
                    pid,
                    max_rings: self.config.max_rings_per_client,
                    ring_capacity: self.config.ring_capacity,
                }
                .encode(&mut self.body)
                .ok();
            }
            Some(MsgType::RegisterRing) => {
                let max = self.config.max_rings_per_client;
                let Some(c) = self.clients.get_mut(&client) else { return };
                if c.rings + c.ring_requests >= max {
                    let text = "no more rings for this connection (max_rings_per_client)";
                    return self.refuse(client, msg_type, msg_id, text, io);
                }
                c.ring_requests += 1;
                return io.register_ring(client, msg_id);
            }
            Some(MsgType::LatencyReport) => match self.latency.as_deref_mut() {
                Some(probe) => {
                    probe.take().encode(&mut self.body).ok();
                }
                None => {
                    let text = "the latency probe is off ([alloc] latency_probe = false)";
                    return self.refuse(client, msg_type, msg_id, text, io);
                }
            },
            Some(MsgType::Dropped) => {
                if let Ok(report) = proto::DroppedReport::decode(body) {
                    self.counters.client_dropped =
                        self.counters.client_dropped.saturating_add(report.count);
                    if report.count > 0 {
                        tracing::warn!(
                            pid,
                            "alloc: pid {pid} dropped {} reports (its buffer was full)",
                            report.count
                        );
                    }
                }
                return;
            }
            _ => {
                self.scratch.clear();
                encode_error(
                    ProtocolVersion::V2,
                    msg_type,
                    msg_id,
                    &WireError::UnknownMsgType(msg_type),
                    &mut self.scratch,
                );
                io.send(client, &self.scratch);
                return;
            }
        }
        self.scratch.clear();
        encode(
            ProtocolVersion::V2,
            reply_type,
            Flags::RESPONSE,
            msg_id,
            &self.body,
            &mut self.scratch,
        );
        io.send(client, &self.scratch);
    }

    fn refuse(&mut self, client: u64, msg_type: u16, msg_id: u64, text: &str, io: &mut impl Io) {
        self.scratch.clear();
        Self::encode_refusal(msg_type, msg_id, text, &mut self.scratch);
        io.send(client, &self.scratch);
    }

    fn release(&mut self, pid: u32, now: Instant) {
        let _ = now;
        let Some(proc) = self.procs.get_mut(&pid) else { return };
        if proc.released {
            return;
        }
        proc.released = true;
        if proc.conns == 0 && proc.stale_conns == 0 {
            // Nothing of it can arrive any more: forget it (a new process may reuse the pid).
            self.procs.remove(&pid);
        }
        let released = self.ledger.release_process(pid);
        self.counters.processes_released += 1;
        self.counters.entries_released += released.entries();
        if released.is_empty() {
            tracing::debug!(pid, "alloc: pid {pid} ended holding nothing");
        } else {
            tracing::info!(pid, "alloc: {}", super::ledger::format_release(pid, &released));
        }
    }

    fn push_usage(&mut self, now: Instant, io: &mut impl Io) {
        if self.subscribers.is_empty() {
            return;
        }
        let version = self.ledger.version();
        let mut encoded = false;
        for i in 0..self.subscribers.len() {
            let client = self.subscribers[i];
            let Some(c) = self.clients.get_mut(&client) else { continue };
            let Some(sub) = &mut c.subscription else { continue };
            if sub.last_version == version || sub.last_sent.is_some_and(|t| now < t + sub.interval)
            {
                continue;
            }
            sub.last_version = version;
            sub.last_sent = Some(now);
            if !encoded {
                self.body.clear();
                proto::UsagePush { usage: Some(self.usage_reply(None)) }
                    .encode(&mut self.body)
                    .ok();
                self.scratch.clear();
                encode(
                    ProtocolVersion::V2,
                    MsgType::UsagePush.code(),
                    Flags::EMPTY,
                    0,
                    &self.body,
                    &mut self.scratch,
                );
                encoded = true;
            }
            io.send(client, &self.scratch);
        }
    }

    /// The usage of `device` (every device of the table when `None`) with the counters.
    pub fn usage_reply(&self, device: Option<i32>) -> proto::UsageReply {
        let ids: Vec<i32> = match device {
            Some(d) => vec![d],
            None => (0..self.devices.len() as i32).collect(),
        };
        let devices = ids.into_iter().map(|d| self.device_usage(d)).collect();
        let c = self.counters();
        proto::UsageReply {
            devices,
            version: self.ledger.version(),
            counters: Some(proto::IngestCounters {
                events: c.events,
                invalid: c.invalid,
                unknown_frees: c.unknown_frees,
                duplicate_allocs: c.duplicate_allocs,
                gaps_skipped: c.gaps_skipped,
                seqs_skipped: c.seqs_skipped,
                late: c.late,
                reordered: c.reordered,
                client_dropped: c.client_dropped,
                processes_released: c.processes_released,
                entries_released: c.entries_released,
                after_release: c.after_release,
                resync_bytes: c.resync_bytes,
                error_closes: c.error_closes,
                rings: c.rings,
                ring_corruptions: c.ring_corruptions,
                connections: c.connections,
                ledger_full: c.ledger_full,
            }),
        }
    }

    fn device_usage(&self, device: i32) -> proto::DeviceUsage {
        let mut out = proto::DeviceUsage { device, ..Default::default() };
        let Ok(d) = u8::try_from(device) else { return out };
        if d as usize >= MAX_DEVICES {
            return out;
        }
        let u = self.ledger.usage(d);
        if let Some(spec) = self.devices.get(d) {
            out.arch = spec.arch.name().to_owned();
            out.board = spec.board.to_string();
        }
        let t = &u.totals;
        out.dram = t.bytes(BufferType::Dram);
        out.l1 = t.bytes(BufferType::L1);
        out.system_memory = t.bytes(BufferType::SystemMemory);
        out.l1_small = t.bytes(BufferType::L1Small);
        out.trace = t.bytes(BufferType::Trace);
        out.cb = t.cb_bytes;
        out.kernel = t.kernel_bytes;
        out.kernel_application = t.kernel_kind(KernelKind::Application);
        out.kernel_fabric = t.kernel_kind(KernelKind::Fabric);
        out.kernel_dispatch = t.kernel_kind(KernelKind::Dispatch);
        out.num_buffers = t.buffers;
        out.num_cbs = t.cbs;
        out.num_kernels = t.kernels;
        out.dram_capacity = u.dram_capacity;
        out.l1_capacity = u.l1_capacity;
        out
    }

    fn device_info_reply(&self, device: i32) -> proto::DeviceInfoReply {
        let ids: Vec<i32> =
            if device == -1 { (0..self.devices.len() as i32).collect() } else { vec![device] };
        proto::DeviceInfoReply {
            num_devices: self.devices.len() as u32,
            devices: ids.into_iter().map(|d| self.device_info(d)).collect(),
        }
    }

    fn device_info(&self, device: i32) -> proto::DeviceInfo {
        let spec = u8::try_from(device).ok().and_then(|d| self.devices.get(d));
        match spec {
            None => proto::DeviceInfo { device, ..Default::default() },
            Some(s) => proto::DeviceInfo {
                device,
                available: true,
                arch_type: s.arch.code(),
                arch: s.arch.name().to_owned(),
                board: s.board.to_string(),
                dram_channels: s.dram_channels,
                dram_per_channel: s.dram_per_channel,
                l1_per_core: s.l1_per_core,
                cores: s.cores,
                dram_capacity: s.dram_capacity(),
                l1_capacity: s.l1_capacity(),
            },
        }
    }

    fn process_reply(&self) -> proto::ProcessUsageReply {
        let processes = self
            .ledger
            .process_usage()
            .into_iter()
            .map(|p| {
                let t = &p.totals;
                proto::ProcessUsage {
                    pid: p.pid,
                    device: i32::from(p.device),
                    dram: t.bytes(BufferType::Dram),
                    l1: t.bytes(BufferType::L1),
                    system_memory: t.bytes(BufferType::SystemMemory),
                    l1_small: t.bytes(BufferType::L1Small),
                    trace: t.bytes(BufferType::Trace),
                    cb: t.cb_bytes,
                    kernel: t.kernel_bytes,
                    buffers: t.buffers,
                    cbs: t.cbs,
                    kernels: t.kernels,
                    name: process_name(p.pid),
                    uid: self.procs.get(&p.pid).and_then(|proc| proc.uid),
                }
            })
            .collect();
        proto::ProcessUsageReply { processes }
    }

    fn dump_reply(&self, kernels_only: bool) -> proto::DumpReply {
        let mut allocations = Vec::new();
        let mut omitted = 0u64;
        for e in self.ledger.remaining() {
            let (kind, buffer_type) = match e.kind {
                EntryKind::Buffer(t) => (1, t as u32),
                EntryKind::Cb => (2, 0),
                EntryKind::Kernel(k) => (3, k as u32),
            };
            if kernels_only && kind != 3 {
                continue;
            }
            if allocations.len() >= DUMP_MAX_ENTRIES {
                omitted += 1;
                continue;
            }
            allocations.push(proto::Allocation {
                kind,
                device: i32::from(e.device),
                buffer_id: e.buffer_id,
                size: e.size,
                buffer_type,
                pid: e.pid,
                ref_count: e.ref_count,
            });
        }
        let report = if kernels_only { self.kernel_report() } else { self.ledger.dump_report() };
        proto::DumpReply { allocations, omitted, report }
    }

    fn kernel_report(&self) -> String {
        let mut out = String::new();
        let mut n = 0;
        for e in self.ledger.remaining() {
            let EntryKind::Kernel(kind) = e.kind else { continue };
            n += 1;
            out.push_str(&format!(
                "  device {}: kernel {:#x} {} {:.1} KB (pid {})\n",
                e.device,
                e.buffer_id,
                kind.name(),
                e.size as f64 / 1024.0,
                e.pid
            ));
        }
        out.push_str(&format!("Total kernels: {n}"));
        out
    }

    fn reply_usage(&self, device: i32, buffer_type: u8) -> ReplyUsage {
        let Some(d) = u8::try_from(device).ok().filter(|&d| (d as usize) < MAX_DEVICES) else {
            return ReplyUsage::default();
        };
        let u = self.ledger.usage(d);
        let t = |b: BufferType| u.totals.bytes(b);
        let (type_allocated, type_capacity) = match BufferType::from_code(buffer_type) {
            Some(BufferType::Dram) => (t(BufferType::Dram), u.dram_capacity),
            Some(b) => (t(b), u.l1_capacity),
            None => (0, 0),
        };
        ReplyUsage {
            dram: t(BufferType::Dram),
            l1: t(BufferType::L1),
            l1_small: t(BufferType::L1Small).saturating_add(t(BufferType::SystemMemory)),
            trace: t(BufferType::Trace),
            cb: u.totals.cb_bytes,
            kernel: u.totals.kernel_bytes,
            type_allocated,
            type_capacity,
        }
    }

    fn reply_device_info(&self, device: i32) -> ReplyDeviceInfo {
        let num_devices = self.devices.len() as u32;
        if device == -1 {
            return ReplyDeviceInfo {
                available: num_devices > 0,
                num_devices,
                ..Default::default()
            };
        }
        match u8::try_from(device).ok().and_then(|d| self.devices.get(d)) {
            None => ReplyDeviceInfo { num_devices, ..Default::default() },
            Some(s) => ReplyDeviceInfo {
                available: true,
                arch_code: s.arch.code(),
                dram_channels: s.dram_channels,
                dram_per_channel: u32::try_from(s.dram_per_channel).unwrap_or(u32::MAX),
                l1_per_core: u32::try_from(s.l1_per_core).unwrap_or(u32::MAX),
                total_dram: s.dram_capacity(),
                total_l1: s.l1_capacity(),
                num_devices,
            },
        }
    }
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("clients", &self.clients.len())
            .field("processes", &self.procs.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Native {
    fn new(config: &IngestConfig) -> Self {
        let decoder =
            DecoderConfig { max_body_bytes: config.max_body_bytes, ..DecoderConfig::default() };
        Native {
            decoder: Decoder::new(decoder),
            window: Reorder::new(config.reorder_window, config.gap_timeout),
            name: String::new(),
            invalid_burst: 0,
            synced: ReorderStats::default(),
        }
    }

    fn note_invalid(&mut self, pid: u32, e: &super::wire::EventError) {
        self.invalid_burst += 1;
        if self.invalid_burst == 1 {
            tracing::warn!(pid, "alloc: {e} from pid {pid} (ring record)");
        }
    }

    /// Folds the window's counts into the core's (the window counts since it was made; the
    /// core keeps the running totals of every window, closed ones included).
    /// A skipped gap is logged, at 1, 2, 4, 8, ... gaps of the connection (its count is on
    /// `/metrics`): a client that loses events says so without flooding the log.
    fn sync_counters(&mut self, counters: &mut IngestCounters, pid: u32) {
        let now = self.window.stats();
        let was = self.synced;
        if now.gaps_skipped > was.gaps_skipped
            && (was.gaps_skipped + 1..=now.gaps_skipped).any(u64::is_power_of_two)
        {
            tracing::warn!(
                pid,
                "alloc: pid {pid}: {} sequence gaps skipped so far ({} numbers never arrived \
                 within gap_timeout_ms or the reorder window); {} events came late",
                now.gaps_skipped,
                now.seqs_skipped,
                now.late
            );
        }
        counters.reordered = counters.reordered.saturating_add(now.reordered - was.reordered);
        counters.late = counters.late.saturating_add(now.late - was.late);
        counters.duplicates = counters.duplicates.saturating_add(now.duplicates - was.duplicates);
        counters.gaps_skipped =
            counters.gaps_skipped.saturating_add(now.gaps_skipped - was.gaps_skipped);
        counters.seqs_skipped =
            counters.seqs_skipped.saturating_add(now.seqs_skipped - was.seqs_skipped);
        self.synced = now;
    }
}

/// Whether events of a connection of `pid`'s `generation` are to be dropped: its process was
/// released, or a newer process has the pid. (A connection always has its pid's entry: it is
/// removed only when no connection of any generation is open.)
fn is_released(procs: &HashMap<u32, Proc>, pid: u32, generation: u64) -> bool {
    procs.get(&pid).is_none_or(|p| p.generation != generation || p.released)
}

/// The probe, if it is on and `seq` applies on arrival (a held event's wait is the gap's,
/// not the path's: it is not sampled).
fn probe_due<'a>(
    probe: &'a mut Option<Box<LatencyProbe>>,
    window: &Reorder<Option<Event>>,
    seq: u64,
) -> Option<&'a mut LatencyProbe> {
    let probe = probe.as_deref_mut()?;
    window.expected().is_none_or(|e| seq <= e).then_some(probe)
}

/// Applies one event (`None`: the place of an invalid one, counted when it arrived).
fn apply(ledger: &mut Ledgers, counters: &mut IngestCounters, pid: u32, event: Option<Event>) {
    let Some(event) = event else { return };
    let event = &event;
    counters.events += 1;
    match ledger.apply(pid, event) {
        Applied::Here(Outcome::UnknownFree) => counters.unknown_frees += 1,
        Applied::Here(Outcome::RefBumped) => counters.duplicate_allocs += 1,
        Applied::Here(Outcome::Rejected) => counters.invalid += 1,
        Applied::Full => counters.ledger_full += 1,
        Applied::Here(Outcome::Added | Outcome::Decremented | Outcome::Removed)
        | Applied::Forwarded => {}
    }
}

/// `/proc/<pid>/comm`, or `""` (a cold path: per-process queries only).
fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
