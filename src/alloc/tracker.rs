//! The client library: [`AllocTracker`] reports an application's device-memory events to the
//! alloc server (`specs/alloc-protocol.md`, "Client library" and "Native framed form").
//!
//! # Use
//!
//! Take a sequence number with [`AllocTracker::seq`] **inside the allocator's lock**, at the
//! moment the address is decided (one atomic increment), and report the event with it after
//! the lock is released. The daemon applies each client's events in sequence order, so two
//! threads that reuse an address cannot be seen out of order (the race of seed 001).
//!
//! ```no_run
//! use std::sync::Mutex;
//! use corelane::alloc::tracker::AllocTracker;
//! use corelane::alloc::BufferType;
//!
//! struct Heap { next: u64, free: Vec<u64> }
//! let heap = Mutex::new(Heap { next: 0x1000, free: Vec::new() });
//! // The process-wide tracker: `None` unless TT_ALLOC_TRACKING_ENABLED=1.
//! let tracker = AllocTracker::global();
//!
//! // Allocate: the address and the sequence number are decided under the same lock.
//! let (addr, seq) = {
//!     let mut h = heap.lock().unwrap();
//!     let addr = h.free.pop().unwrap_or_else(|| { h.next += 4096; h.next });
//!     (addr, tracker.map_or(0, |t| t.seq()))
//! };
//! if let Some(t) = tracker {
//!     t.alloc(seq, 0, BufferType::Dram, addr, 4096); // non-blocking, no allocation
//! }
//! // Free: the sequence number is taken before the address can be handed out again.
//! let seq = {
//!     let mut h = heap.lock().unwrap();
//!     let seq = tracker.map_or(0, |t| t.seq());
//!     h.free.push(addr);
//!     seq
//! };
//! if let Some(t) = tracker {
//!     t.free(seq, 0, addr);
//!     t.flush(std::time::Duration::from_secs(1)); // before exit: what is buffered is written
//! }
//! ```
//!
//! An explicit tracker: `AllocTracker::builder().socket(path).build()` (it never fails: it
//! connects lazily, from its background thread).
//!
//! # Transports
//!
//! - **Shared-memory rings** (when the daemon offers them: `HelloReply.max_rings > 0`; used by
//!   [`Transport::Auto`] and [`Transport::Shm`]): one SPSC ring per reporting thread, written
//!   with plain stores; no syscall unless the daemon's lane sleeps, and then exactly one
//!   non-blocking `send` of a 24-byte doorbell frame (see [`AllocTracker::report`]).
//! - **The socket buffer** ([`Transport::Socket`], and the fallback of every thread without a
//!   ring, or whose ring is full): reports are copied into a bounded buffer under a short
//!   mutex (a 48-byte copy), and the background thread encodes them (canonical header +
//!   event body, `msg_id` = sequence number, crc32) and writes them in batches with
//!   non-blocking writes: when 16 reports wait, after ~1 ms, or on [`AllocTracker::flush`]. A
//!   full buffer drops the newest reports and counts them; the count goes to the daemon as a
//!   `DroppedReport` once connected.
//!
//! # Rings are obtained off the hot path
//!
//! The application thread never waits for the daemon. The background thread registers rings
//! ahead of need: right after each connect it asks for [`RING_POOL`] rings (fewer if the
//! daemon offers fewer) and keeps that many spare while the connection has rings left. A
//! thread's first report takes a spare ring from the pool (a short mutex, bounded time, once
//! per thread and connection); when the pool is empty it asks the background thread for one
//! and reports over the socket buffer until the ring arrives (it looks at an atomic flag on
//! each report). A thread that exits gives its ring back to the pool (thread-local
//! destructor): the daemon keeps a connection's rings until the connection closes, so a ring
//! is reused, not leaked; threads beyond the daemon's `max_rings` report over the socket.
//! Rings belong to one tracker and one connection: the thread-local is keyed by tracker id,
//! and a reconnect (new epoch) retires every ring of the old connection.
//!
//! Why a pool rather than registering in the reporting thread: a registration is a round trip
//! to the daemon (the ring's memfd comes back with `SCM_RIGHTS`), which is exactly the
//! unbounded wait the application thread must not make; and why not only "socket until the
//! ring arrives": the daemon's reorder window is bounded, and a thread whose events sit in
//! the socket batch while its neighbours' go straight into rings is the one that gets
//! skipped. With a pool, reports rarely take the socket at all once rings are offered (and
//! when they do, the batch is written at once instead of after ~1 ms).
//!
//! # Sequence numbers and reconnects
//!
//! [`Sequence::AtEvent`] (the default): the caller's [`seq`](AllocTracker::seq) is used, so the
//! daemon applies events in the order the allocator decided them. [`Sequence::AtSend`] takes
//! the number when the report is queued instead (the argument is ignored): the daemon then
//! sees arrival order, which **reproduces the seed-001 race** (unknown frees, duplicate
//! allocs); it exists for `--no-seq` comparisons. `AtEvent` fixes it.
//!
//! Every connect sends `Hello { name, first_seq }` before anything else, and waits for the
//! reply (on the background thread). `first_seq` is the lowest sequence number that may
//! still arrive: the smallest one still in the socket buffer or in the unwritten part of the
//! batch, and at most the value the counter had 20 to 40 ms before the connect (the
//! background thread notes it every 20 ms; at the first connect that is 0, the tracker's
//! first number). The floor covers threads that took a number and have not reported it yet.
//!
//! What is guaranteed: every report queued before the connect, and every report whose
//! number was taken less than 20 ms before the connect, is at or above `first_seq`, so the
//! daemon applies them in sequence order. The price of a floor that is too low is bounded:
//! numbers below the connect that never come on this connection (delivered to the previous
//! daemon, or dropped) are one gap, skipped after the daemon's `gap_timeout` (100 ms), with
//! the events behind it held and then applied in order. A thread that stays between `seq()`
//! and its report for longer than 20 ms across a connect arrives `late` (counted) and is
//! applied on arrival, out of order. Reports pushed into a ring of a connection that died, and
//! frames written to it but not read, are lost with it (every gap they leave is skipped the
//! same way; drops too).
//!
//! # Daemon absent
//!
//! The background thread connects lazily. When the daemon is absent it prints **one**
//! warning on stderr (`[corelane] warning: allocation tracking is enabled but the alloc
//! server is not available at <path>; reports are dropped until it is`) and retries
//! silently every [`RETRY_EVERY`]. Meanwhile reports fill the socket buffer, then are
//! dropped (and counted). Once the daemon answers, the buffer is written and later reports
//! get through; after a daemon restart it reconnects the same way.
//!
//! # Limits
//!
//! Exactness needs the daemon to keep up within its reorder bounds. The daemon merges a
//! client's rings in sequence order (`alloc::rings`), so rings never overtake each other; but
//! a ring that is full sends its thread's next reports over the socket, ahead of what the
//! ring still holds (at most `ring_capacity`, 8192 by default, per ring: well inside the
//! default `reorder_window` of 65536), and a backlog older than `gap_timeout` (100 ms) has
//! its gaps skipped. Then events arrive `late` and a reused address can be seen out of order.
//! Only a client that reports much faster than the daemon applies gets there (a tight loop of
//! reports against a debug daemon); the tests that run one raise `gap_timeout_ms`.
//!
//! # Cost on the application thread
//!
//! [`seq`](AllocTracker::seq): one `fetch_add`. A report: a thread-local lookup, one atomic
//! load (the connection epoch), a coarse clock read (vDSO), and a ring push (plain stores and
//! one release of `tail`) or a 48-byte copy under the buffer mutex. Syscalls only when the
//! daemon's lane sleeps (one doorbell `send`, `MSG_DONTWAIT`) or to wake the background
//! thread (`futex` wake) when a batch of 16 is ready or the thread was idle. No allocation
//! in steady state (the thread-local entry and the pool are allocated once per thread).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use prost::Message;
use rustix::net::SendFlags;
use zerocopy::IntoBytes;

use super::proto;
use super::wire::{BufferType, Event, KernelKind, MsgType, RingRecord, EVENT_BODY_LEN};
use crate::channel::{recv_with_fd, ClientTx};
use crate::rings::spsc::shm::ShmPushError;
use crate::wire::{
    encode, frame_crc, CanonicalHeader, Decoder, DecoderConfig, Event as WireEvent, Flags,
    ProtocolVersion, HEADER_LEN,
};

/// The environment variable that enables [`AllocTracker::global`]: exactly `"1"`.
pub const ENABLED_VAR: &str = "TT_ALLOC_TRACKING_ENABLED";
/// The environment variable naming the daemon's native socket for [`AllocTracker::global`].
pub const SOCKET_VAR: &str = "CORELANE_ALLOC_SOCKET";
/// How often a tracker retries an absent daemon.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Reports the socket buffer holds by default.
pub const DEFAULT_BUFFER_RECORDS: usize = 16 * 1024;
/// Spare rings the background thread keeps registered ahead of need.
pub const RING_POOL: usize = 2;
/// A batch is written once this many reports wait (or after [`BATCH_AGE`]).
pub const BATCH_REPORTS: usize = 16;
/// How often the background thread notes the sequence counter (see `first_seq`).
const SEQ_MARK_EVERY: Duration = Duration::from_millis(20);
/// A batch is written once its oldest report waited this long.
pub const BATCH_AGE: Duration = Duration::from_millis(1);

/// How reports travel. See the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// Shared-memory rings when the daemon offers them, else the socket.
    #[default]
    Auto,
    /// As `Auto`, and a daemon that offers no rings is worth one warning on stderr.
    Shm,
    /// The socket buffer only.
    Socket,
}

/// When a report's sequence number is taken. See the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sequence {
    /// The caller's [`AllocTracker::seq`], taken inside its allocator lock (race-free).
    #[default]
    AtEvent,
    /// At report time, ignoring the caller's number: arrival order (reproduces seed 001).
    AtSend,
}

/// What a tracker did so far ([`AllocTracker::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Reports made (`via_ring + via_socket + dropped`).
    pub reported: u64,
    /// Reports pushed into a shared-memory ring.
    pub via_ring: u64,
    /// Reports queued in the socket buffer.
    pub via_socket: u64,
    /// Reports dropped (the socket buffer was full).
    pub dropped: u64,
    /// Rings the current connection holds.
    pub rings: u64,
    /// Whether the daemon is connected now.
    pub connected: bool,
}

/// The client of the alloc server. `Sync`: one tracker serves every thread of a process.
/// See the [module docs](self).
pub struct AllocTracker {
    inner: Arc<Inner>,
    flusher: Option<JoinHandle<()>>,
}

/// Settings of an [`AllocTracker`]; [`build`](Self::build) never fails.
#[derive(Clone, Debug)]
pub struct AllocTrackerBuilder {
    socket: PathBuf,
    transport: Transport,
    buffer_records: usize,
    sequence: Sequence,
    name: String,
}

/// The process-wide tracker of [`AllocTracker::global`].
static GLOBAL: OnceLock<Option<AllocTracker>> = OnceLock::new();

impl AllocTracker {
    /// The process-wide tracker: `Some` only if `TT_ALLOC_TRACKING_ENABLED` is exactly `"1"`
    /// (else no connection is ever attempted). Its socket is `CORELANE_ALLOC_SOCKET`, else the
    /// daemon's default native socket ([`default_socket`]). Made on the first call.
    pub fn global() -> Option<&'static AllocTracker> {
        GLOBAL
            .get_or_init(|| {
                if std::env::var_os(ENABLED_VAR).is_none_or(|v| v != "1") {
                    return None;
                }
                let socket = std::env::var_os(SOCKET_VAR)
                    .filter(|s| !s.is_empty())
                    .map_or_else(default_socket, PathBuf::from);
                Some(AllocTracker::builder().socket(socket).build())
            })
            .as_ref()
    }

    /// The process-wide tracker if [`global`](Self::global) made it already: never creates it
    /// (the C ABI's `cl_alloc_tracker_free` compares with it).
    pub fn global_if_made() -> Option<&'static AllocTracker> {
        GLOBAL.get().and_then(Option::as_ref)
    }

    /// A builder with the defaults: the default socket, [`Transport::Auto`],
    /// [`DEFAULT_BUFFER_RECORDS`], [`Sequence::AtEvent`], the process's name.
    pub fn builder() -> AllocTrackerBuilder {
        AllocTrackerBuilder {
            socket: default_socket(),
            transport: Transport::Auto,
            buffer_records: DEFAULT_BUFFER_RECORDS,
            sequence: Sequence::AtEvent,
            // `args_os`: a non-UTF-8 argv[0] must not panic (`args` would).
            name: std::env::args_os().next().map_or_else(String::new, |a| {
                let path = Path::new(&a);
                path.file_name().unwrap_or(path.as_os_str()).to_string_lossy().into_owned()
            }),
        }
    }

    /// The next sequence number: ONE atomic increment. Call it inside the allocator's lock, at
    /// the moment the address is decided (and, for a free, before the address can be reused).
    /// With [`Sequence::AtSend`] it takes nothing (returns 0): the number is taken when the
    /// report is queued, so a caller written for `AtEvent` leaves no gap.
    #[inline]
    pub fn seq(&self) -> u64 {
        if self.inner.sequence == Sequence::AtSend {
            return 0;
        }
        // SYNC: Relaxed is enough: the caller's lock orders the increments, and the counter's
        // modification order (one atomic) gives every caller a distinct, increasing number.
        self.inner.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Reports `event` with sequence number `seq` (see [`Sequence`]). Non-blocking, no
    /// allocation in steady state; safe from any thread.
    #[inline]
    pub fn report(&self, seq: u64, event: &Event) {
        let inner = &*self.inner;
        let record = RingRecord::new(seq, event, timestamp_ns());
        if inner.transport != Transport::Socket {
            // SYNC: Acquire pairs with the background thread's Release stores of `ring_epoch` in
            // `connect`/`disconnect`: a reporter that sees a connection's epoch uses rings of
            // that connection only (the pool itself is taken under its mutex).
            let epoch = inner.ring_epoch.load(Ordering::Acquire);
            if epoch != 0 {
                let pushed = LOCALS
                    .try_with(|l| match l.try_borrow_mut() {
                        Ok(mut locals) => self.ring_push(&mut locals, epoch, record),
                        Err(_) => Err((record, false)),
                    })
                    .unwrap_or(Err((record, false)));
                match pushed {
                    Ok(()) => return,
                    Err((record, numbered)) => {
                        let keep = numbered || inner.sequence == Sequence::AtEvent;
                        return inner.socket_push(record, keep);
                    }
                }
            }
        }
        let at_send = inner.sequence == Sequence::AtSend;
        inner.socket_push(record, !at_send)
    }

    /// Reports an allocation of `size` bytes at `addr` on `device`.
    #[inline]
    pub fn alloc(&self, seq: u64, device: u8, buffer_type: BufferType, addr: u64, size: u64) {
        self.report(seq, &event(MsgType::Alloc, device, buffer_type as u8, addr, size));
    }

    /// Reports the free of the buffer at `addr` on `device`.
    #[inline]
    pub fn free(&self, seq: u64, device: u8, addr: u64) {
        self.report(seq, &event(MsgType::Free, device, 0, addr, 0));
    }

    /// Reports a circular buffer `cb_id` of `size` bytes on `device`.
    #[inline]
    pub fn cb_alloc(&self, seq: u64, device: u8, cb_id: u64, size: u64) {
        self.report(seq, &event(MsgType::CbAlloc, device, 0, cb_id, size));
    }

    /// Reports the free of circular buffer `cb_id` on `device`.
    #[inline]
    pub fn cb_free(&self, seq: u64, device: u8, cb_id: u64) {
        self.report(seq, &event(MsgType::CbFree, device, 0, cb_id, 0));
    }

    /// Reports kernel `kernel_id` of `size` bytes and kind `kind` loaded on `device`.
    #[inline]
    pub fn kernel_load(&self, seq: u64, device: u8, kind: KernelKind, kernel_id: u64, size: u64) {
        self.report(seq, &event(MsgType::KernelLoad, device, kind as u8, kernel_id, size));
    }

    /// Reports kernel `kernel_id` unloaded from `device`.
    #[inline]
    pub fn kernel_unload(&self, seq: u64, device: u8, kernel_id: u64) {
        self.report(seq, &event(MsgType::KernelUnload, device, 0, kernel_id, 0));
    }

    /// Waits until everything reported so far is pushed into a ring or written on the socket
    /// (and the drop count reported), or `timeout` passes (`false`; e.g. no daemon).
    pub fn flush(&self, timeout: Duration) -> bool {
        let inner = &*self.inner;
        let deadline = Instant::now() + timeout;
        let (target, drops) = {
            let p = inner.pending();
            (p.appended, p.dropped)
        };
        // SYNC: Release pairs with the background thread's AcqRel swap of `flush_wanted` in
        // `Flusher::fill`: it sees the pending snapshot taken above.
        inner.flush_wanted.store(true, Ordering::Release);
        loop {
            // SYNC: Acquire pairs with the background thread's AcqRel `fetch_add` of `written`
            // after a write, and of `drops_reported` after the DroppedReport went out: what they
            // count is on the socket.
            let written = inner.written.load(Ordering::Acquire);
            let reported = inner.drops_reported.load(Ordering::Acquire);
            if written >= target && reported >= drops {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            inner.wake_flusher();
            thread::sleep(Duration::from_micros(200));
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> TrackerStats {
        let inner = &*self.inner;
        let via_ring = lock(&inner.ring_counts).iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let (via_socket, dropped) = {
            let p = inner.pending();
            (p.appended, p.dropped)
        };
        TrackerStats {
            reported: via_ring + via_socket + dropped,
            via_ring,
            via_socket,
            dropped,
            rings: inner.rings_held.load(Ordering::Relaxed),
            connected: inner.connected.load(Ordering::Relaxed),
        }
    }

    /// The socket this tracker reports to.
    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// The ring path of [`report`](Self::report). `Err((record, numbered))` sends it to the
    /// socket buffer; `numbered`: its [`Sequence::AtSend`] number was taken already.
    #[inline]
    fn ring_push(
        &self,
        locals: &mut Vec<Local>,
        epoch: u64,
        mut record: RingRecord,
    ) -> Result<(), (RingRecord, bool)> {
        let inner = &*self.inner;
        let i = match locals.iter().position(|l| l.tracker == inner.id) {
            Some(i) => i,
            None => self.first_report(locals),
        };
        let local = &mut locals[i];
        if local.epoch != epoch || !matches!(local.ring, RingState::Ready { .. }) {
            local.refresh(inner, epoch);
        }
        let RingState::Ready { tx, count } = &mut local.ring else { return Err((record, false)) };
        let at_send = inner.sequence == Sequence::AtSend;
        if at_send {
            record.seq.set(inner.seq.fetch_add(1, Ordering::Relaxed));
        }
        match tx.push(record) {
            Ok(()) => {
                // SYNC: this thread is the counter's only writer (stats() reads it Relaxed).
                count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                if tx.take_doorbell() {
                    inner.doorbell();
                }
                Ok(())
            }
            Err(ShmPushError::Full(r)) => Err((r, at_send)),
            Err(ShmPushError::Corrupt(r, _)) => {
                local.ring = RingState::Refused;
                Err((r, at_send))
            }
        }
    }

    /// A thread's first report through this tracker: its thread-local entry (allocated once
    /// per thread; entries of dropped trackers are pruned here). Returns its index.
    #[cold]
    #[inline(never)]
    fn first_report(&self, locals: &mut Vec<Local>) -> usize {
        locals.retain(|l| l.inner.strong_count() > 0);
        locals.push(Local {
            tracker: self.inner.id,
            inner: Arc::downgrade(&self.inner),
            epoch: 0,
            ring: RingState::None,
        });
        locals.len() - 1
    }
}

impl AllocTrackerBuilder {
    /// The daemon's native socket.
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = path.into();
        self
    }

    /// How reports travel.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Reports the socket buffer holds (at least [`BATCH_REPORTS`]).
    pub fn buffer_records(mut self, n: usize) -> Self {
        self.buffer_records = n.max(BATCH_REPORTS);
        self
    }

    /// When sequence numbers are taken.
    pub fn sequence(mut self, sequence: Sequence) -> Self {
        self.sequence = sequence;
        self
    }

    /// The client's name in the daemon's logs (at most 64 characters are kept).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The tracker, with its background thread started; it connects lazily. If the thread
    /// cannot be started, reports fill the buffer and are then dropped (and counted).
    pub fn build(self) -> AllocTracker {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let cap = self.buffer_records;
        let inner = Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            seq: crate::rings::CachePadded::new(AtomicU64::new(0)),
            sequence: self.sequence,
            transport: self.transport,
            socket: self.socket,
            name: self.name,
            ring_epoch: AtomicU64::new(0),
            pending: Mutex::new(Pending {
                records: Vec::with_capacity(cap),
                capacity: cap,
                appended: 0,
                dropped: 0,
                unreported_drops: 0,
                flusher_idle: false,
            }),
            written: AtomicU64::new(0),
            drops_reported: AtomicU64::new(0),
            writer: Mutex::new(Writer {
                stream: None,
                ctl: Vec::with_capacity(4096),
                ctl_pos: 0,
                out: Vec::with_capacity(cap * FRAME_LEN),
                out_pos: 0,
            }),
            doorbell_owed: AtomicBool::new(false),
            flush_wanted: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            rings_held: AtomicU64::new(0),
            pool: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            ring_counts: Mutex::new(Vec::new()),
            flusher: OnceLock::new(),
        });
        let for_thread = Arc::clone(&inner);
        let flusher = thread::Builder::new()
            .name("corelane-alloc".into())
            .spawn(move || Flusher::new(for_thread).run())
            .ok();
        if let Some(handle) = &flusher {
            let _ = inner.flusher.set(handle.thread().clone());
        }
        AllocTracker { inner, flusher }
    }
}

impl Drop for AllocTracker {
    /// Stops the background thread after it wrote what it could (at most ~1 s when connected).
    fn drop(&mut self) {
        // SYNC: Release pairs with the Acquire load of `shutdown` at the top of the background
        // loop (`run`): it sees everything this thread did before dropping the tracker.
        self.inner.shutdown.store(true, Ordering::Release);
        self.inner.wake_flusher();
        if let Some(handle) = self.flusher.take() {
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for AllocTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocTracker")
            .field("socket", &self.inner.socket)
            .field("transport", &self.inner.transport)
            .field("sequence", &self.inner.sequence)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The daemon's default native socket: `alloc.sock` in its default runtime directory
/// (`$XDG_RUNTIME_DIR/corelane`, else `/dev/shm/corelane-$USER`; see
/// [`RuntimeConfig::runtime_dir`](crate::config::RuntimeConfig::runtime_dir)).
pub fn default_socket() -> PathBuf {
    crate::config::Config::default()
        .runtime
        .runtime_dir(&|name| std::env::var(name).ok())
        .join("alloc.sock")
}

// ---------------------------------------------------------------------------------------------
// Shared state

/// One event frame on the socket: header + body.
const FRAME_LEN: usize = HEADER_LEN + EVENT_BODY_LEN;

/// The doorbell frame (empty body), computed once.
fn doorbell_frame() -> &'static [u8] {
    static FRAME: OnceLock<Vec<u8>> = OnceLock::new();
    FRAME.get_or_init(|| {
        let mut out = Vec::with_capacity(HEADER_LEN);
        encode(ProtocolVersion::V2, MsgType::Doorbell.code(), Flags::EMPTY, 0, &[], &mut out);
        out
    })
}

struct Inner {
    id: u64,
    /// The next sequence number, on its own cache line (every reporting thread writes it).
    seq: crate::rings::CachePadded<AtomicU64>,
    sequence: Sequence,
    transport: Transport,
    socket: PathBuf,
    name: String,
    /// The connection epoch while the daemon offers rings, else 0. A thread's ring is valid
    /// while its epoch is this one.
    ring_epoch: AtomicU64,
    pending: Mutex<Pending>,
    /// Socket-buffer reports whose frames are written whole.
    written: AtomicU64,
    /// Drops the daemon was told of.
    drops_reported: AtomicU64,
    /// What goes on the socket; the background thread holds it only around non-blocking
    /// writes, the doorbell only with `try_lock`.
    writer: Mutex<Writer>,
    /// A doorbell a reporting thread could not send (the writer was busy).
    doorbell_owed: AtomicBool,
    flush_wanted: AtomicBool,
    shutdown: AtomicBool,
    connected: AtomicBool,
    rings_held: AtomicU64,
    /// Spare rings of the current connection, registered ahead of need.
    pool: Mutex<Vec<PooledRing>>,
    /// Threads waiting for a ring of their own (the pool was empty).
    requests: Mutex<Vec<Arc<Grant>>>,
    /// One count per ring ever held (summed by `stats`).
    ring_counts: Mutex<Vec<Arc<AtomicU64>>>,
    flusher: OnceLock<Thread>,
}

/// The socket buffer.
struct Pending {
    records: Vec<RingRecord>,
    capacity: usize,
    /// Reports ever queued here.
    appended: u64,
    /// Reports ever dropped.
    dropped: u64,
    /// Drops the daemon was not told of yet.
    unreported_drops: u64,
    /// The background thread sleeps long: wake it on the next report.
    flusher_idle: bool,
}

struct Writer {
    stream: Option<Arc<UnixStream>>,
    /// Control frames (RegisterRing, DroppedReport), written between event frames.
    ctl: Vec<u8>,
    ctl_pos: usize,
    /// Event frames ([`FRAME_LEN`] each) of the batch being written.
    out: Vec<u8>,
    out_pos: usize,
}

struct PooledRing {
    epoch: u64,
    tx: ClientTx<RingRecord>,
    count: Arc<AtomicU64>,
}

/// A ring asked for by one thread: the background thread fills it in.
struct Grant {
    epoch: u64,
    state: AtomicU8,
    ring: Mutex<Option<(ClientTx<RingRecord>, Arc<AtomicU64>)>>,
}

const GRANT_PENDING: u8 = 0;
const GRANT_READY: u8 = 1;
const GRANT_REFUSED: u8 = 2;

/// A thread's state for one tracker.
struct Local {
    tracker: u64,
    inner: Weak<Inner>,
    epoch: u64,
    ring: RingState,
}

enum RingState {
    /// Nothing asked for in this epoch.
    None,
    /// Asked the background thread; reports use the socket until it is ready.
    Waiting(Arc<Grant>),
    /// No ring for this thread in this epoch (refused, corrupt): the socket.
    Refused,
    /// This thread's ring.
    Ready { tx: ClientTx<RingRecord>, count: Arc<AtomicU64> },
}

thread_local! {
    static LOCALS: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a guard is held leaves plain data (counters, buffers) that is still
    // consistent enough to report with: poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn event(kind: MsgType, device: u8, buffer_type: u8, buffer_id: u64, size: u64) -> Event {
    Event { kind, device, buffer_type, buffer_id, size }
}

/// The client's clock for the body's `timestamp_ns` (the daemon ignores it): the coarse
/// wall clock, a vDSO read of a few ns.
#[inline]
fn timestamp_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    (t.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(t.tv_nsec as u64)
}

impl Inner {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        lock(&self.pending)
    }

    /// Queues `record` in the socket buffer, or drops it (counted) when the buffer is full.
    /// `keep_seq`: false for [`Sequence::AtSend`], whose number is taken here, under the
    /// buffer's lock, so that numbers follow the buffer's order.
    #[inline]
    fn socket_push(&self, mut record: RingRecord, keep_seq: bool) {
        let wake = {
            let mut p = self.pending();
            if !keep_seq {
                record.seq.set(self.seq.fetch_add(1, Ordering::Relaxed));
            }
            if p.records.len() >= p.capacity {
                p.dropped += 1;
                p.unreported_drops += 1;
                return;
            }
            p.records.push(record);
            p.appended += 1;
            let n = p.records.len();
            let eager = n == 1 && self.ring_epoch.load(Ordering::Relaxed) != 0;
            if (p.flusher_idle || n == BATCH_REPORTS || eager)
                && self.connected.load(Ordering::Relaxed)
            {
                p.flusher_idle = false;
                true
            } else {
                false
            }
        };
        if wake {
            self.wake_flusher();
        }
    }

    fn wake_flusher(&self) {
        if let Some(t) = self.flusher.get() {
            t.unpark();
        }
    }

    /// The daemon's lane sleeps: one doorbell frame, non-blocking. If the background thread
    /// is writing right now, that write wakes the daemon; if it holds the writer without
    /// writing, it sends the doorbell for us after it lets go (`doorbell_owed`).
    fn doorbell(&self) {
        match self.writer.try_lock() {
            Ok(mut w) => w.ring_doorbell(),
            Err(_) => {
                // SYNC: SeqCst store pairs with the background thread's SeqCst swap of
                // `doorbell_owed` after it releases the writer lock (`run`): either this thread's
                // try_lock sees the lock free, or the background thread's swap sees the flag and
                // rings (no doorbell is lost).
                self.doorbell_owed.store(true, Ordering::SeqCst);
                self.wake_flusher();
            }
        }
    }

    /// A spare ring of connection `epoch` from the pool.
    fn pooled(&self, epoch: u64) -> Option<(ClientTx<RingRecord>, Arc<AtomicU64>)> {
        let mut pool = lock(&self.pool);
        while let Some(r) = pool.pop() {
            if r.epoch == epoch {
                return Some((r.tx, r.count));
            }
        }
        None
    }
}

impl Writer {
    fn ring_doorbell(&mut self) {
        let Some(stream) = &self.stream else { return };
        // Only between frames: a partly written frame must be finished first (and its bytes
        // wake the daemon anyway).
        if self.ctl_pos != 0 || !self.out_pos.is_multiple_of(FRAME_LEN) {
            return;
        }
        let frame = doorbell_frame();
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        match rustix::net::send(&**stream, frame, flags) {
            Ok(n) if n < frame.len() => {
                // The rest must follow before any other frame.
                self.ctl.splice(0..0, frame[n..].iter().copied());
            }
            // EAGAIN: the socket is full of unread bytes, the daemon will wake for them.
            // Other errors: the background thread sees them on its next read or write.
            _ => {}
        }
    }
}

impl Local {
    /// Brings this thread's ring state to `epoch`: retires a ring of an old connection, picks
    /// up a granted ring, or gets one (pool, else a request).
    #[cold]
    #[inline(never)]
    fn refresh(&mut self, inner: &Inner, epoch: u64) {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.ring = RingState::None; // an old connection's ring is dead: dropped
        }
        match &self.ring {
            RingState::Ready { .. } | RingState::Refused => {}
            // SYNC: Acquire pairs with the background thread's Release store of `grant.state`
            // after it put the ring in `grant.ring` (or refused it).
            RingState::Waiting(grant) => match grant.state.load(Ordering::Acquire) {
                GRANT_READY => {
                    let ring = lock(&grant.ring).take();
                    self.ring = match ring {
                        Some((tx, count)) => RingState::Ready { tx, count },
                        None => RingState::Refused,
                    };
                }
                GRANT_REFUSED => self.ring = RingState::Refused,
                _ => {}
            },
            RingState::None => {
                if let Some((tx, count)) = inner.pooled(epoch) {
                    self.ring = RingState::Ready { tx, count };
                } else {
                    let grant = Arc::new(Grant {
                        epoch,
                        state: AtomicU8::new(GRANT_PENDING),
                        ring: Mutex::new(None),
                    });
                    lock(&inner.requests).push(Arc::clone(&grant));
                    inner.wake_flusher();
                    self.ring = RingState::Waiting(grant);
                }
            }
        }
    }
}

impl Drop for Local {
    /// The thread exits (or its entry is pruned): its ring goes back to the tracker's pool
    /// if the connection it belongs to is still the current one.
    fn drop(&mut self) {
        let ring = std::mem::replace(&mut self.ring, RingState::None);
        let RingState::Ready { tx, count } = ring else { return };
        let Some(inner) = self.inner.upgrade() else { return };
        // SYNC: Acquire pairs with the Release stores of `ring_epoch` in `connect`/`disconnect`:
        // a ring of a connection that ended is not given back to the pool.
        if inner.ring_epoch.load(Ordering::Acquire) == self.epoch {
            lock(&inner.pool).push(PooledRing { epoch: self.epoch, tx, count });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The background thread

struct Flusher {
    inner: Arc<Inner>,
    stream: Option<Arc<UnixStream>>,
    epoch: u64,
    next_attempt: Instant,
    warned: bool,
    /// Rings the daemon lets this connection have, and how many it granted or was asked for.
    max_rings: u64,
    asked: u64,
    /// RegisterRing requests in flight, in order: (msg_id, for a thread or for the pool).
    in_flight: VecDeque<(u64, Option<Arc<Grant>>)>,
    /// Threads waiting for a ring of the pool (the connection has no more to ask for).
    waiting: VecDeque<Arc<Grant>>,
    next_msg_id: u64,
    /// Descriptors received, not yet matched with their grant frame.
    fds: VecDeque<OwnedFd>,
    decoder: Decoder,
    rx: Vec<u8>,
    /// Records swapped out of the socket buffer (empty between batches).
    spare: Vec<RingRecord>,
    /// When the socket buffer was first seen non-empty.
    waiting_since: Option<Instant>,
    /// Drops carried by the control frames not yet written.
    ctl_drops: u64,
    idle_rounds: u32,
    warned_no_rings: bool,
    /// The sequence counter as read 20..40 ms ago (`marks.0`) and up to 20 ms ago, with the
    /// time of the newer read: the floor for threads still between `seq()` and `report()`.
    marks: (u64, u64, Instant),
}

impl Flusher {
    fn new(inner: Arc<Inner>) -> Self {
        let cap = lock(&inner.pending).capacity;
        Flusher {
            inner,
            stream: None,
            epoch: 0,
            next_attempt: Instant::now(),
            warned: false,
            max_rings: 0,
            asked: 0,
            in_flight: VecDeque::new(),
            waiting: VecDeque::new(),
            next_msg_id: 1,
            fds: VecDeque::new(),
            decoder: Decoder::new(DecoderConfig::default()),
            rx: vec![0; 4096],
            spare: Vec::with_capacity(cap),
            waiting_since: None,
            ctl_drops: 0,
            idle_rounds: 0,
            warned_no_rings: false,
            marks: (0, 0, Instant::now()),
        }
    }

    fn run(mut self) {
        let mut stop_by: Option<Instant> = None;
        loop {
            let now = Instant::now();
            // SYNC: Acquire pairs with the Release store of `shutdown` in `AllocTracker::drop`.
            let shutdown = self.inner.shutdown.load(Ordering::Acquire);
            if now.duration_since(self.marks.2) >= SEQ_MARK_EVERY {
                let seq = self.inner.seq.load(Ordering::Relaxed);
                self.marks = (self.marks.1, seq, now);
            }
            if shutdown && stop_by.is_none() {
                stop_by = Some(now + Duration::from_secs(1));
            }
            if self.stream.is_none() && !shutdown && now >= self.next_attempt {
                self.connect();
            }
            let mut busy = false;
            if self.stream.is_some() {
                self.read_replies();
            }
            if self.stream.is_some() {
                self.serve_requests();
                self.queue_drops();
                busy |= self.fill(now, shutdown);
                let blocked = self.write();
                busy |= blocked;
                if blocked {
                    // The socket is full: wait until it drains (bounded), then go on.
                    self.wait_writable(BATCH_AGE);
                    continue;
                }
                // SYNC: SeqCst swap pairs with the SeqCst store of `doorbell_owed` in
                // `Inner::doorbell` (see there).
                if self.inner.doorbell_owed.swap(false, Ordering::SeqCst) {
                    lock(&self.inner.writer).ring_doorbell();
                }
                busy |= !self.in_flight.is_empty();
            } else {
                self.refuse_requests();
            }
            if shutdown && (self.stream.is_none() || !busy || stop_by.is_some_and(|t| now >= t)) {
                break;
            }
            self.sleep(busy);
        }
        self.disconnect();
    }

    fn wait_writable(&self, at_most: Duration) {
        let Some(stream) = &self.stream else { return };
        let mut fds = [rustix::event::PollFd::new(&**stream, rustix::event::PollFlags::OUT)];
        let timeout =
            rustix::time::Timespec { tv_sec: 0, tv_nsec: at_most.as_nanos().min(999_999_999) as _ };
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
    }

    fn sleep(&mut self, busy: bool) {
        if self.stream.is_none() {
            let wait = self.next_attempt.saturating_duration_since(Instant::now());
            thread::park_timeout(wait.clamp(Duration::from_millis(1), RETRY_EVERY));
            return;
        }
        if busy {
            self.idle_rounds = 0;
            thread::park_timeout(BATCH_AGE);
            return;
        }
        self.idle_rounds += 1;
        if self.idle_rounds < 20 {
            thread::park_timeout(BATCH_AGE);
            return;
        }
        // Idle: sleep longer, and ask the next report to wake us.
        {
            let mut p = self.inner.pending();
            if !p.records.is_empty() {
                return;
            }
            p.flusher_idle = true;
        }
        thread::park_timeout(Duration::from_millis(50));
    }

    /// Connects, says hello, reads the reply; on failure, warns once and retries later.
    fn connect(&mut self) {
        self.next_attempt = Instant::now() + RETRY_EVERY;
        let reply = match self.handshake() {
            Ok(ok) => ok,
            Err(_) => {
                if !self.warned {
                    self.warned = true;
                    eprintln!(
                        "[corelane] warning: allocation tracking is enabled but the alloc server \
                         is not available at {}; reports are dropped until it is",
                        self.inner.socket.display()
                    );
                }
                return;
            }
        };
        let (stream, hello) = reply;
        let stream = Arc::new(stream);
        self.epoch = self.epoch.wrapping_add(1).max(1);
        self.max_rings = match self.inner.transport {
            Transport::Socket => 0,
            _ => u64::from(hello.max_rings),
        };
        if self.max_rings == 0 && self.inner.transport == Transport::Shm && !self.warned_no_rings {
            self.warned_no_rings = true;
            eprintln!(
                "[corelane] warning: the alloc server at {} offers no shared-memory rings; \
                 reporting over the socket",
                self.inner.socket.display()
            );
        }
        self.asked = 0;
        self.decoder = Decoder::new(DecoderConfig::default());
        {
            let mut w = lock(&self.inner.writer);
            w.stream = Some(Arc::clone(&stream));
        }
        self.stream = Some(stream);
        // SYNC: Release pairs with the loads of `connected` (stats, Relaxed) and orders the
        // writer's stream before `ring_epoch` below; `ring_epoch`'s Release pairs with the
        // reporters' Acquire loads in `report` and `Local::drop`.
        self.inner.connected.store(true, Ordering::Release);
        let ring_epoch = if self.max_rings > 0 { self.epoch } else { 0 };
        self.inner.ring_epoch.store(ring_epoch, Ordering::Release);
        for _ in 0..RING_POOL.min(self.max_rings as usize) {
            self.ask_ring(None);
        }
    }

    fn handshake(&mut self) -> io::Result<(UnixStream, proto::HelloReply)> {
        let mut stream = UnixStream::connect(&self.inner.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        let first_seq = self.first_seq();
        let hello = proto::Hello { name: self.inner.name.clone(), first_seq };
        let mut out = Vec::new();
        encode(
            ProtocolVersion::V2,
            MsgType::Hello.code(),
            Flags::EMPTY,
            0,
            &hello.encode_to_vec(),
            &mut out,
        );
        stream.write_all(&out)?;
        let mut decoder = Decoder::new(DecoderConfig::default());
        let mut buf = [0u8; 512];
        let mut reply: Option<Result<proto::HelloReply, ()>> = None;
        while reply.is_none() {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            decoder
                .feed(&buf[..n], |e| {
                    if let WireEvent::Frame(f) = e {
                        if f.header.msg_type == MsgType::Hello.code() {
                            reply = Some(match f.header.flags.contains(Flags::ERROR) {
                                true => Err(()),
                                false => proto::HelloReply::decode(f.body).map_err(|_| ()),
                            });
                        }
                    }
                })
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        }
        let reply = reply
            .and_then(Result::ok)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "hello refused"))?;
        stream.set_nonblocking(true)?;
        Ok((stream, reply))
    }

    /// The lowest sequence number not yet delivered: see the module docs.
    fn first_seq(&self) -> u64 {
        // Not the counter now: a thread may hold a number it took a moment ago.
        let mut low = self.marks.0;
        for r in &self.inner.pending().records {
            low = low.min(r.seq.get());
        }
        let w = lock(&self.inner.writer);
        let from = w.out_pos - w.out_pos % FRAME_LEN;
        for frame in w.out[from..].chunks_exact(FRAME_LEN) {
            let id = u64::from_le_bytes(frame[12..20].try_into().unwrap_or([0xff; 8]));
            low = low.min(id);
        }
        low
    }

    fn disconnect(&mut self) {
        let Some(_stream) = self.stream.take() else { return };
        // SYNC: Release pairs with the reporters' Acquire loads of `ring_epoch` (`report`,
        // `Local::drop`): no ring of the ended connection is used or pooled after they see
        // 0.
        self.inner.connected.store(false, Ordering::Release);
        self.inner.ring_epoch.store(0, Ordering::Release);
        self.inner.rings_held.store(0, Ordering::Relaxed);
        {
            let mut w = lock(&self.inner.writer);
            w.stream = None;
            w.ctl.clear();
            w.ctl_pos = 0;
            // The frame cut in the middle is sent again, whole, on the next connection.
            w.out_pos -= w.out_pos % FRAME_LEN;
        }
        if self.ctl_drops > 0 {
            self.inner.pending().unreported_drops += self.ctl_drops;
            self.ctl_drops = 0;
        }
        for (_, grant) in self.in_flight.drain(..) {
            if let Some(g) = grant {
                // SYNC: Release pairs with the reporter's Acquire load of `grant.state`
                // (`Local::refresh`): a refused grant is seen with whatever was set before
                // it.
                g.state.store(GRANT_REFUSED, Ordering::Release);
            }
        }
        for g in self.waiting.drain(..) {
            // SYNC: Release pairs with the reporter's Acquire load of `grant.state`
            // (`Local::refresh`).
            g.state.store(GRANT_REFUSED, Ordering::Release);
        }
        self.fds.clear();
        lock(&self.inner.pool).clear();
        self.next_attempt = Instant::now() + Duration::from_millis(50);
    }

    fn ask_ring(&mut self, grant: Option<Arc<Grant>>) {
        let id = self.next_msg_id;
        self.next_msg_id += 1;
        self.asked += 1;
        let mut w = lock(&self.inner.writer);
        let body = proto::RegisterRing {}.encode_to_vec();
        encode(
            ProtocolVersion::V2,
            MsgType::RegisterRing.code(),
            Flags::EMPTY,
            id,
            &body,
            &mut w.ctl,
        );
        self.in_flight.push_back((id, grant));
    }

    /// Threads that asked for a ring: a spare ring from the pool, else a request while the
    /// connection has rings left, else they wait for a ring already asked for, else the
    /// socket for this connection.
    fn serve_requests(&mut self) {
        let new = std::mem::take(&mut *lock(&self.inner.requests));
        self.waiting.extend(new);
        while let Some(grant) = self.waiting.pop_front() {
            if grant.epoch != self.epoch || Arc::strong_count(&grant) == 1 {
                // SYNC: Release pairs with the reporter's Acquire load of `grant.state`
                // (`Local::refresh`).
                grant.state.store(GRANT_REFUSED, Ordering::Release);
                continue;
            }
            if let Some((tx, count)) = self.inner.pooled(self.epoch) {
                *lock(&grant.ring) = Some((tx, count));
                // SYNC: Release publishes `grant.ring` -> Local::refresh's Acquire load.
                grant.state.store(GRANT_READY, Ordering::Release);
            } else if self.asked < self.max_rings {
                self.ask_ring(Some(grant));
            } else if self.in_flight.iter().any(|(_, g)| g.is_none()) {
                self.waiting.push_front(grant); // a pool ring is on its way
                break;
            } else {
                // SYNC: Release pairs with the reporter's Acquire load of `grant.state`
                // (`Local::refresh`).
                grant.state.store(GRANT_REFUSED, Ordering::Release);
            }
        }
        // Keep the pool stocked.
        let spare = lock(&self.inner.pool).len() as u64;
        let asked_for_pool = self.in_flight.iter().filter(|(_, g)| g.is_none()).count() as u64;
        if spare + asked_for_pool < RING_POOL as u64 && self.asked < self.max_rings {
            self.ask_ring(None);
        }
    }

    fn refuse_requests(&mut self) {
        for grant in std::mem::take(&mut *lock(&self.inner.requests)) {
            // SYNC: Release pairs with the reporter's Acquire load of `grant.state`
            // (`Local::refresh`).
            grant.state.store(GRANT_REFUSED, Ordering::Release);
        }
    }

    fn queue_drops(&mut self) {
        let n = std::mem::take(&mut self.inner.pending().unreported_drops);
        if n == 0 {
            return;
        }
        let body = proto::DroppedReport { count: n }.encode_to_vec();
        let mut w = lock(&self.inner.writer);
        encode(ProtocolVersion::V2, MsgType::Dropped.code(), Flags::EMPTY, 0, &body, &mut w.ctl);
        self.ctl_drops += n;
    }

    /// Moves the socket buffer into the batch when one is due; returns whether work waits.
    fn fill(&mut self, now: Instant, shutdown: bool) -> bool {
        {
            let w = lock(&self.inner.writer);
            if w.out_pos < w.out.len() {
                return true; // the batch is still being written
            }
        }
        // SYNC: AcqRel swap pairs with the Release store of `flush_wanted` in
        // `AllocTracker::flush`: the flush sees the reports appended before the request.
        let flush = self.inner.flush_wanted.swap(false, Ordering::AcqRel);
        {
            let mut p = self.inner.pending();
            let n = p.records.len();
            if n == 0 {
                self.waiting_since = None;
                return false;
            }
            let since = *self.waiting_since.get_or_insert(now);
            let rings = self.inner.ring_epoch.load(Ordering::Relaxed) != 0;
            let due = n >= BATCH_REPORTS
                || now.duration_since(since) >= BATCH_AGE
                || flush
                || shutdown
                || rings;
            if !due {
                return true;
            }
            std::mem::swap(&mut p.records, &mut self.spare);
        }
        self.waiting_since = None;
        let mut w = lock(&self.inner.writer);
        w.out.clear();
        w.out_pos = 0;
        for r in self.spare.drain(..) {
            let mut h = CanonicalHeader::new(
                Flags::EMPTY,
                r.msg_type.get(),
                EVENT_BODY_LEN as u32,
                r.seq.get(),
            );
            h.crc32 = frame_crc(h.as_bytes(), r.body.as_bytes()).into();
            w.out.extend_from_slice(h.as_bytes());
            w.out.extend_from_slice(r.body.as_bytes());
        }
        true
    }

    /// Writes control frames and the batch without blocking; returns whether bytes remain.
    fn write(&mut self) -> bool {
        let mut failed = false;
        let remaining = {
            let mut w = lock(&self.inner.writer);
            let Some(stream) = w.stream.clone() else { return false };
            let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
            loop {
                let at_boundary = w.out_pos.is_multiple_of(FRAME_LEN);
                let (ctl, result) = if w.ctl_pos < w.ctl.len() && at_boundary {
                    (true, rustix::net::send(&*stream, &w.ctl[w.ctl_pos..], flags))
                } else if w.out_pos < w.out.len() {
                    (false, rustix::net::send(&*stream, &w.out[w.out_pos..], flags))
                } else {
                    break;
                };
                match result {
                    Ok(n) if ctl => {
                        w.ctl_pos += n;
                        if w.ctl_pos == w.ctl.len() {
                            w.ctl.clear();
                            w.ctl_pos = 0;
                            let d = std::mem::take(&mut self.ctl_drops);
                            // SYNC: AcqRel pairs with the Acquire load of `drops_reported` in
                            // `AllocTracker::flush`: the DroppedReport is on the socket when the
                            // count moves.
                            self.inner.drops_reported.fetch_add(d, Ordering::AcqRel);
                        }
                    }
                    Ok(n) => {
                        let before = w.out_pos / FRAME_LEN;
                        w.out_pos += n;
                        let done = (w.out_pos / FRAME_LEN - before) as u64;
                        // SYNC: Release pairs with flush()'s Acquire load.
                        self.inner.written.fetch_add(done, Ordering::AcqRel);
                        if w.out_pos == w.out.len() {
                            w.out.clear();
                            w.out_pos = 0;
                        }
                    }
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            w.ctl_pos < w.ctl.len() || w.out_pos < w.out.len()
        };
        if failed {
            self.disconnect();
            return false;
        }
        remaining
    }

    /// Replies: ring grants (with their descriptors) and refusals; the end of the stream.
    fn read_replies(&mut self) {
        let Some(stream) = self.stream.clone() else { return };
        loop {
            match recv_with_fd(std::os::fd::AsFd::as_fd(&*stream), &mut self.rx) {
                Ok((0, _)) => return self.disconnect(),
                Ok((n, fd)) => {
                    if let Some(fd) = fd {
                        self.fds.push_back(fd);
                    }
                    let mut frames: Vec<(u64, bool, Option<proto::RingGrant>)> = Vec::new();
                    let result = self.decoder.feed(&self.rx[..n], |e| {
                        if let WireEvent::Frame(f) = e {
                            if f.header.msg_type == MsgType::RegisterRing.code() {
                                let error = f.header.flags.contains(Flags::ERROR);
                                let grant = proto::RingGrant::decode(f.body).ok();
                                frames.push((f.header.msg_id, error, grant));
                            }
                        }
                    });
                    for (id, error, grant) in frames {
                        self.granted(id, error, grant);
                    }
                    if result.is_err() {
                        return self.disconnect();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.disconnect(),
            }
        }
    }

    fn granted(&mut self, msg_id: u64, error: bool, _grant: Option<proto::RingGrant>) {
        let Some(pos) = self.in_flight.iter().position(|(id, _)| *id == msg_id) else {
            // A grant nobody asked for: its descriptor (if it came with one) must not be
            // paired with the next real grant.
            if !error {
                self.fds.pop_front();
            }
            return;
        };
        let Some((_, grant)) = self.in_flight.remove(pos) else { return };
        let ring = if error {
            None
        } else {
            self.fds.pop_front().and_then(|fd| ClientTx::<RingRecord>::attach(fd).ok())
        };
        let Some(tx) = ring else {
            // Refused (max_rings of the server, say): no more asking on this connection.
            self.asked = self.max_rings;
            if let Some(g) = grant {
                // SYNC: Release pairs with the reporter's Acquire load of `grant.state`
                // (`Local::refresh`).
                g.state.store(GRANT_REFUSED, Ordering::Release);
            }
            return;
        };
        self.inner.rings_held.fetch_add(1, Ordering::Relaxed);
        let count = Arc::new(AtomicU64::new(0));
        lock(&self.inner.ring_counts).push(Arc::clone(&count));
        match grant {
            // The thread still waits for it.
            Some(g) if Arc::strong_count(&g) > 1 => {
                *lock(&g.ring) = Some((tx, count));
                // SYNC: Release publishes `g.ring` -> Local::refresh's Acquire load.
                g.state.store(GRANT_READY, Ordering::Release);
            }
            _ => {
                lock(&self.inner.pool).push(PooledRing { epoch: self.epoch, tx, count });
                self.serve_requests();
            }
        }
    }
}
