//! The io_uring backend: multishot accept, multishot recv into a provided buffer ring, one
//! submission per poll for every queued send, and a bounded wait for parking.
//!
//! Memory the kernel may write or read while an operation is in flight (the provided buffers,
//! a socket's in-flight send buffer) is never moved or freed before that operation's final
//! completion: sends go from a buffer that is swapped, never appended to, while in flight;
//! a closed socket's slot (and fd) is kept until its last completion; and on drop the reactor
//! cancels everything and waits for the ring to drain, leaking the buffers if it cannot.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{Completion, RecvBuf, Token};

/// Submission queue entries.
const ENTRIES: u32 = 1024;
/// Provided receive buffers (a power of two) and their size.
const BUFS: u16 = 128;
const BUF_SIZE: usize = 16 * 1024;
/// The one buffer group.
const BGID: u16 = 0;

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_CANCEL: u64 = 4;

/// The io_uring reactor. See the [module](super) docs for the interface.
pub struct UringReactor {
    // Field order matters for drop: `Drop` drains the ring first; then the ring closes before
    // the buffer memory is freed.
    ring: IoUring,
    bufs: BufRing,
    slots: Vec<Slot>,
    free: Vec<u32>,
    tokens: HashMap<Token, u32>,
    ready: VecDeque<Completion>,
    dirty: Vec<u32>,
    rearm: Vec<u32>,
    inflight: usize,
}

#[derive(Default)]
struct Slot {
    generation: u16,
    entry: Option<Entry>,
}

struct Entry {
    token: Token,
    fd: OwnedFd,
    listener: bool,
    /// Bytes handed to the kernel by the in-flight send; not touched until it completes.
    sending: Vec<u8>,
    sent: usize,
    send_inflight: bool,
    /// Bytes queued since; become `sending` when the in-flight send is done.
    queued: Vec<u8>,
    /// Operations submitted whose final completion has not arrived.
    inflight: u32,
    closing: bool,
    eof: bool,
}

impl UringReactor {
    /// Sets up a ring and its buffer group, or says why it cannot (old kernel, seccomp).
    pub fn new() -> io::Result<Self> {
        // COOP_TASKRUN + TASKRUN_FLAG: the kernel never interrupts the lane to post
        // completions; it raises a flag instead, and `poll` enters the kernel only when there
        // is something to submit, the flag is up, or the lane wants to wait. A busy lane reaps
        // completions without a syscall.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(ENTRIES)?;
        let bufs = BufRing::new(&ring)?;
        Ok(Self {
            ring,
            bufs,
            slots: Vec::new(),
            free: Vec::new(),
            tokens: HashMap::new(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            rearm: Vec::new(),
            inflight: 0,
        })
    }

    pub(super) fn listen(&mut self, listener: OwnedFd, token: Token) -> io::Result<()> {
        let slot = self.insert(listener, token, true)?;
        self.arm(slot);
        Ok(())
    }

    pub(super) fn open(&mut self, socket: OwnedFd, token: Token) -> io::Result<()> {
        let slot = self.insert(socket, token, false)?;
        self.arm(slot);
        Ok(())
    }

    pub(super) fn send(&mut self, token: Token, data: &[u8]) -> io::Result<()> {
        let &slot = self.tokens.get(&token).ok_or_else(unknown)?;
        let entry = self.entry_mut(slot).ok_or_else(unknown)?;
        if entry.queued.is_empty() && !entry.send_inflight {
            self.dirty.push(slot);
        }
        let entry = self.entry_mut(slot).ok_or_else(unknown)?;
        entry.queued.extend_from_slice(data);
        Ok(())
    }

    pub(super) fn pending(&self, token: Token) -> usize {
        self.tokens
            .get(&token)
            .and_then(|&s| self.slots[s as usize].entry.as_ref())
            .map_or(0, |e| e.queued.len() + e.sending.len() - e.sent)
    }

    pub(super) fn close(&mut self, token: Token) {
        let Some(slot) = self.tokens.remove(&token) else { return };
        self.ready.retain(|c| c.token() != token);
        let generation = self.slots[slot as usize].generation;
        let Some(entry) = self.entry_mut(slot) else { return };
        entry.closing = true;
        if entry.inflight == 0 {
            self.release(slot);
            return;
        }
        // Cancel the multishot accept/recv; an in-flight send finishes (or fails) by itself.
        let op = if entry.listener { OP_ACCEPT } else { OP_RECV };
        entry.inflight += 1;
        let cancel = opcode::AsyncCancel::new(user_data(slot, generation, op))
            .build()
            .user_data(user_data(slot, generation, OP_CANCEL));
        self.push(cancel);
    }

    pub(super) fn poll(&mut self, timeout: Duration) -> io::Result<()> {
        for slot in std::mem::take(&mut self.rearm) {
            self.arm(slot);
        }
        self.flush();
        let wait = self.ready.is_empty() && !timeout.is_zero();
        let result = if wait {
            let ts = types::Timespec::new().sec(timeout.as_secs()).nsec(timeout.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        } else {
            let mut sq = self.ring.submission();
            sq.sync();
            let enter = !sq.is_empty() || sq.taskrun() || sq.cq_overflow();
            drop(sq);
            if enter {
                self.ring.submit()
            } else {
                Ok(0)
            }
        };
        match result {
            Ok(_) => {}
            // A timed wait that expired, a signal, or a full completion queue: not errors.
            Err(e) if matches!(e.raw_os_error(), Some(ETIME | EINTR | EBUSY)) => {}
            Err(e) => return Err(e),
        }
        self.reap();
        Ok(())
    }

    pub(super) fn next(&mut self) -> Option<Completion> {
        self.ready.pop_front()
    }

    pub(super) fn data(&self, buf: &RecvBuf) -> &[u8] {
        self.bufs.data(buf.id as u16, buf.len as usize)
    }

    pub(super) fn recycle(&mut self, buf: RecvBuf) {
        self.bufs.recycle(buf.id as u16);
    }

    pub(super) fn registered(&self) -> usize {
        self.tokens.len()
    }

    fn insert(&mut self, fd: OwnedFd, token: Token, listener: bool) -> io::Result<u32> {
        if self.tokens.contains_key(&token) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "token already registered"));
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[slot as usize].entry = Some(Entry {
            token,
            fd,
            listener,
            sending: Vec::new(),
            sent: 0,
            send_inflight: false,
            queued: Vec::new(),
            inflight: 0,
            closing: false,
            eof: false,
        });
        self.tokens.insert(token, slot);
        Ok(slot)
    }

    fn entry_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize)?.entry.as_mut()
    }

    /// Frees a slot whose last operation has completed: closes the fd.
    fn release(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.entry = None;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
    }

    /// Submits the multishot accept or recv of a slot.
    fn arm(&mut self, slot: u32) {
        let generation = self.slots[slot as usize].generation;
        let Some(entry) = self.entry_mut(slot) else { return };
        if entry.closing || entry.eof {
            return;
        }
        let fd = types::Fd(entry.fd.as_raw_fd());
        let sqe = if entry.listener {
            let flags =
                (rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK).bits();
            opcode::AcceptMulti::new(fd)
                .flags(flags as i32)
                .build()
                .user_data(user_data(slot, generation, OP_ACCEPT))
        } else {
            opcode::RecvMulti::new(fd, BGID).build().user_data(user_data(slot, generation, OP_RECV))
        };
        entry.inflight += 1;
        self.push(sqe);
    }

    /// Starts the send of every socket with queued bytes and no send in flight: the batch of
    /// the pass, submitted together.
    fn flush(&mut self) {
        for slot in std::mem::take(&mut self.dirty) {
            let generation = self.slots[slot as usize].generation;
            let Some(entry) = self.entry_mut(slot) else { continue };
            if entry.send_inflight || entry.queued.is_empty() || entry.closing {
                continue;
            }
            std::mem::swap(&mut entry.sending, &mut entry.queued);
            entry.sent = 0;
            self.submit_send(slot, generation);
        }
    }

    fn submit_send(&mut self, slot: u32, generation: u16) {
        let Some(entry) = self.entry_mut(slot) else { return };
        let rest = &entry.sending[entry.sent..];
        let flags = rustix::net::SendFlags::NOSIGNAL.bits();
        let sqe =
            opcode::Send::new(types::Fd(entry.fd.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
                .flags(flags as i32)
                .build()
                .user_data(user_data(slot, generation, OP_SEND));
        entry.send_inflight = true;
        entry.inflight += 1;
        self.push(sqe);
    }

    fn push(&mut self, sqe: squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points to outlives its operation: sends point into
            // `Entry::sending`, which is neither touched nor freed until the send's completion
            // (close keeps the slot until its last completion; drop drains the ring); recv and
            // accept use the provided buffer ring, which lives as long as the ring.
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            match pushed {
                Ok(()) => {
                    self.inflight += 1;
                    return;
                }
                Err(_) => {
                    // Queue full: hand what is there to the kernel and retry.
                    if let Err(e) = self.ring.submit() {
                        tracing::error!("io_uring submit failed with a full queue: {e}");
                        return;
                    }
                }
            }
        }
    }

    /// Takes every completion off the ring.
    fn reap(&mut self) {
        let cqes: Vec<(u64, i32, u32)> =
            self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())).collect();
        for (data, result, flags) in cqes {
            self.complete(data, result, flags);
        }
    }

    fn complete(&mut self, data: u64, result: i32, flags: u32) {
        let (slot, generation, op) = split(data);
        let more = cqueue::more(flags);
        let last = is_last(op, flags);
        if last {
            self.inflight = self.inflight.saturating_sub(1);
        }
        let buffer = cqueue::buffer_select(flags);
        let live = self.slots.get(slot as usize).is_some_and(|s| s.generation == generation);
        let Some(entry) = live.then(|| self.slots[slot as usize].entry.as_mut()).flatten() else {
            if let Some(bid) = buffer {
                self.bufs.recycle(bid);
            }
            if op == OP_ACCEPT && result >= 0 {
                // SAFETY: a successful accept returns a new descriptor that nobody owns yet.
                drop(unsafe { OwnedFd::from_raw_fd(result) });
            }
            return;
        };
        if last {
            entry.inflight -= 1;
        }
        let token = entry.token;
        let closing = entry.closing;
        match op {
            OP_ACCEPT => {
                if result >= 0 {
                    // SAFETY: a successful accept returns a new descriptor that nobody owns yet.
                    let fd = unsafe { OwnedFd::from_raw_fd(result) };
                    if !closing {
                        self.ready.push_back(Completion::Accepted { listener: token, fd });
                    }
                } else if !closing && result != -ECANCELED {
                    self.ready.push_back(Completion::Failed {
                        token,
                        error: io::Error::from_raw_os_error(-result),
                    });
                }
                if !more && !closing && result >= 0 {
                    self.rearm.push(slot);
                }
            }
            OP_RECV => {
                if result > 0 {
                    let bid = buffer.expect("a successful buffer-select recv names its buffer");
                    if closing {
                        self.bufs.recycle(bid);
                    } else {
                        let buf = RecvBuf { id: u32::from(bid), offset: 0, len: result as u32 };
                        self.ready.push_back(Completion::Received { token, buf });
                    }
                    if !more && !closing {
                        self.rearm.push(slot);
                    }
                } else if result == 0 || result == -ECONNRESET {
                    entry.eof = true;
                    if !closing {
                        self.ready.push_back(Completion::Closed { token });
                    }
                } else if result == -ENOBUFS {
                    // Every buffer is out; the lane recycles them after this poll.
                    if !closing {
                        self.rearm.push(slot);
                    }
                } else if !closing && result != -ECANCELED {
                    self.ready.push_back(Completion::Failed {
                        token,
                        error: io::Error::from_raw_os_error(-result),
                    });
                }
            }
            OP_SEND => {
                entry.send_inflight = false;
                if result < 0 {
                    if !closing {
                        self.ready.push_back(Completion::Failed {
                            token,
                            error: io::Error::from_raw_os_error(-result),
                        });
                    }
                } else {
                    entry.sent += result as usize;
                    if entry.sent < entry.sending.len() && !closing {
                        self.submit_send(slot, generation);
                    } else {
                        let bytes = entry.sending.len();
                        entry.sending.clear();
                        entry.sent = 0;
                        if !closing {
                            if !entry.queued.is_empty() {
                                self.dirty.push(slot);
                            }
                            self.ready.push_back(Completion::Sent { token, bytes });
                        }
                    }
                }
            }
            _ => {} // OP_CANCEL: only counted
        }
        if let Some(entry) = self.entry_mut(slot) {
            if entry.closing && entry.inflight == 0 {
                self.release(slot);
            }
        }
    }
}

impl Drop for UringReactor {
    fn drop(&mut self) {
        // Cancel everything, then wait (bounded) until the kernel is done with our memory.
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any()).build().user_data(0);
        // SAFETY: a cancel request points at no memory of ours.
        let _ = unsafe { self.ring.submission().push(&cancel) };
        for _ in 0..100 {
            if self.inflight == 0 {
                return;
            }
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let cqes: Vec<(u64, u32)> =
                self.ring.completion().map(|c| (c.user_data(), c.flags())).collect();
            for (data, flags) in cqes {
                let (_, _, op) = split(data);
                if data != 0 && is_last(op, flags) {
                    self.inflight = self.inflight.saturating_sub(1);
                }
            }
        }
        tracing::error!(inflight = self.inflight, "io_uring did not drain; leaking its buffers");
        std::mem::forget(std::mem::take(&mut self.slots));
        self.bufs.leak();
    }
}

impl std::fmt::Debug for UringReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringReactor")
            .field("sockets", &self.tokens.len())
            .field("inflight", &self.inflight)
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

/// The provided buffer ring: `BUFS` entries pointing into one allocation of
/// `BUFS * BUF_SIZE` bytes, registered as buffer group `BGID`.
struct BufRing {
    /// Page-aligned ring of `BUFS` entries; the kernel reads it, we write entries and the tail.
    ring: *mut types::BufRingEntry,
    ring_layout: Layout,
    /// The buffers' memory; the kernel writes received bytes here.
    memory: *mut u8,
    memory_layout: Layout,
    tail: u16,
    leaked: bool,
}

impl BufRing {
    fn new(uring: &IoUring) -> io::Result<Self> {
        let ring_layout = Layout::from_size_align(
            usize::from(BUFS) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        let memory_layout = Layout::from_size_align(usize::from(BUFS) * BUF_SIZE, 4096)
            .map_err(io::Error::other)?;
        // SAFETY: both layouts have non-zero sizes.
        let (ring, memory) =
            unsafe { (std::alloc::alloc_zeroed(ring_layout), std::alloc::alloc(memory_layout)) };
        if ring.is_null() || memory.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "io_uring buffer ring"));
        }
        let mut this =
            Self { ring: ring.cast(), ring_layout, memory, memory_layout, tail: 0, leaked: false };
        // SAFETY: `ring` is a page-aligned, zeroed array of BUFS entries that lives as long as
        // `this`, which the reactor drops only after the ring stops using it.
        unsafe { uring.submitter().register_buf_ring_with_flags(ring as u64, BUFS, BGID, 0)? };
        for bid in 0..BUFS {
            this.recycle(bid);
        }
        Ok(this)
    }

    fn data(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < BUFS && len <= BUF_SIZE, "buffer {bid} len {len} out of range");
        // SAFETY: in range (asserted); the kernel wrote `len` bytes into buffer `bid` and does
        // not touch it again until we hand it back with `recycle`.
        unsafe { std::slice::from_raw_parts(self.memory.add(usize::from(bid) * BUF_SIZE), len) }
    }

    fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < BUFS);
        let index = usize::from(self.tail & (BUFS - 1));
        // SAFETY: index < BUFS, inside the ring allocation; the kernel only reads entries
        // between its head and our published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.ring.add(index) };
        // SAFETY: bid < BUFS keeps the address inside `memory`.
        entry.set_addr(unsafe { self.memory.add(usize::from(bid) * BUF_SIZE) } as u64);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field overlays entry 0's reserved u16 (io_uring ABI), 2-aligned
        // inside the page-aligned ring, and the kernel reads it atomically.
        let tail = unsafe { AtomicU16::from_ptr(types::BufRingEntry::tail(self.ring).cast_mut()) };
        // SYNC: publishes the entry written above -> the kernel's acquire load of the tail.
        tail.store(self.tail, Ordering::Release);
    }

    fn leak(&mut self) {
        self.leaked = true;
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: allocated in `new` with these layouts; the ring was drained (or we leaked).
        unsafe {
            std::alloc::dealloc(self.ring.cast(), self.ring_layout);
            std::alloc::dealloc(self.memory, self.memory_layout);
        }
    }
}

fn user_data(slot: u32, generation: u16, op: u64) -> u64 {
    (u64::from(generation) << 48) | (u64::from(slot) << 8) | op
}

fn split(data: u64) -> (u32, u16, u64) {
    (((data >> 8) & 0xFFFF_FFFF) as u32, (data >> 48) as u16, data & 0xFF)
}

/// Whether a completion is its operation's last: sends and cancels complete once, multishot
/// accept and recv until a completion without the `more` flag.
fn is_last(op: u64, flags: u32) -> bool {
    op == OP_SEND || op == OP_CANCEL || !cqueue::more(flags)
}

const ETIME: i32 = rustix::io::Errno::TIME.raw_os_error();
const EINTR: i32 = rustix::io::Errno::INTR.raw_os_error();
const EBUSY: i32 = rustix::io::Errno::BUSY.raw_os_error();
const ECANCELED: i32 = rustix::io::Errno::CANCELED.raw_os_error();
const ECONNRESET: i32 = rustix::io::Errno::CONNRESET.raw_os_error();
const ENOBUFS: i32 = rustix::io::Errno::NOBUFS.raw_os_error();

fn unknown() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no socket registered under this token")
}
