//! The io_uring backend: multishot accept, multishot recv into provided buffer rings (one per
//! receive buffer size), linked sends, one-shot polls for watches, and a bounded wait for
//! parking.
//!
//! Every submission carries its registration's [`Key`] (slot and generation), its operation and
//! one auxiliary byte (the buffer group of a receive, the link index of a send) in `user_data`,
//! so a completion finds its slot without hashing, and counts down the slot's operations
//! in flight (`Entry::ops`).
//!
//! Memory the kernel may write or read while an operation is in flight is never moved or freed
//! before that operation's final completion: the provided buffers live as long as the ring; a
//! send points into heap memory of an output buffer that is neither changed nor freed until the
//! send completes ([`Output::start`]); a connect's address is boxed in its slot until the
//! connect completes; a closed registration's slot (and descriptor) is kept until its last
//! completion; and on drop the reactor cancels everything and waits for the ring to drain,
//! leaking the memory if it cannot. No submission is ever dropped: entries that do not fit in
//! the submission queue wait in a backlog, and a failed submit leaves them queued.
//!
//! Closing a connection shuts it down (so its peer sees end of stream at once, and a send stuck
//! behind a peer that does not read fails) and cancels every operation on its descriptor
//! (`IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL`).
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use rustix::net::addr::SocketAddrArg;
use rustix::net::{AddressFamily, SocketAddrAny, SocketFlags, SocketType};

use super::out::{Bytes, Output, Spares};
use super::slab::{Key, Slab};
use super::{
    unknown, Completion, ConnectAddr, Incoming, RecvBuf, SocketOptions, Token, UringOptions,
    ACCEPT_BACKOFF,
};

/// Submission queue entries.
const ENTRIES: u32 = 1024;
/// Most buffers of a connection sent as one chain of linked sends.
const MAX_CHAIN: usize = 16;
/// Initial room of the per-pass lists (completions, connections to flush or re-arm).
const LIST_ROOM: usize = 64;
/// A buffer group's memory target: 128 buffers, fewer for large buffers.
const GROUP_BYTES: usize = 8 << 20;
const MAX_GROUP_BUFS: usize = 128;
const MIN_GROUP_BUFS: usize = 8;

/// `user_data` for submissions whose completions are ignored (the drop-time cancel).
const OP_NONE: u8 = 0;
const OP_ACCEPT: u8 = 1;
const OP_RECV: u8 = 2;
const OP_SEND: u8 = 3;
const OP_CANCEL: u8 = 4;
const OP_CONNECT: u8 = 5;
const OP_POLL: u8 = 6;

/// The io_uring reactor. See the [module](super) docs for the interface.
pub struct UringReactor {
    // Field order matters for drop: `Drop` drains the ring first; then the ring closes before
    // the buffer memory is freed.
    ring: IoUring,
    groups: Vec<BufGroup>,
    options: UringOptions,
    slab: Slab<Entry>,
    ready: VecDeque<(Key, Completion)>,
    /// Connections with output to start, and the list being processed (kept for reuse).
    dirty: Vec<Key>,
    dirty_scratch: Vec<Key>,
    /// Registrations whose multishot operation (or watch poll) is to be submitted again.
    rearm: Vec<Key>,
    rearm_scratch: Vec<Key>,
    /// Listeners backing off after an accept error, with when to accept again.
    retry: Vec<(Key, Instant)>,
    /// Submissions that did not fit in the submission queue, in order; `true` links the entry
    /// to the next one (a chain is never split between two submits).
    backlog: VecDeque<(squeue::Entry, bool)>,
    chain: Vec<(squeue::Entry, bool)>,
    cqes: Vec<(u64, i32, u32)>,
    spares: Spares,
    /// Submissions (queued or in the kernel) whose final completion has not come.
    inflight: usize,
    #[cfg(test)]
    fail_submits: u32,
}

struct Entry {
    token: Token,
    fd: OwnedFd,
    kind: Kind,
    /// Options handed to accepted connections (listeners) or in use (connections).
    options: SocketOptions,
    /// Index of the buffer group receives use.
    group: u16,
    out: Output,
    chain: Chain,
    /// Submissions whose final completion has not come.
    ops: u32,
    /// The multishot accept or recv, or the watch's poll, is in the kernel.
    armed: bool,
    /// On the dirty list.
    dirty: bool,
    closing: bool,
    eof: bool,
    paused: bool,
    /// Input is discarded (`discard_input`): received chunks go back to the group at once.
    deaf: bool,
    /// A send failed: nothing more is sent (the agent was told, and should close).
    broken: bool,
    /// Bytes received while paused, copied out of the group's buffers (a paused connection
    /// holds none of them: the group is shared by the whole lane), delivered on resume.
    stash: Vec<u8>,
    /// End of input seen while paused, delivered on resume after the stash.
    stash_eof: bool,
    /// The stash as delivered by resumes, until its chunks are recycled.
    delivered: Vec<u8>,
    /// The chunks of `delivered` not yet recycled: (sequence number, start, length). A
    /// stashed chunk's `RecvBuf` names its sequence number, so a second recycle finds nothing.
    chunks: Vec<(u32, u32, u32)>,
    /// Stashed chunks delivered by a resume and held again by a pause before they were taken
    /// (no copy: their bytes stay in `delivered`); they go first at the next resume.
    held: VecDeque<RecvBuf>,
    /// Chunks that arrived while paused once the stash was full (`STASH_LIMIT`): held in their
    /// provided buffers, in order after the stash, until resume.
    pinned: VecDeque<RecvBuf>,
    /// The sequence number of the next stashed chunk delivered.
    next_chunk: u32,
    /// A connect's address, which the kernel reads until the connect completes.
    addr: Option<Box<SocketAddrAny>>,
    accept_errors: u64,
    /// Accept errors in the current burst (logged when it starts and when it ends).
    burst: u64,
}

impl Entry {
    /// Removes the stashed chunk `seq` from the live ones: its bytes' range in `delivered`.
    fn take_chunk(&mut self, seq: u32) -> Option<std::ops::Range<usize>> {
        let i = self.chunks.iter().position(|c| c.0 == seq)?;
        let (_, start, len) = self.chunks.swap_remove(i);
        Some(start as usize..(start + len) as usize)
    }

    /// Frees `delivered` once none of its chunks is out.
    fn forget_delivered(&mut self) {
        if self.chunks.is_empty() {
            self.delivered = Vec::new();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Listener,
    Stream,
    Connecting,
    Watch,
}

/// The chain of linked sends a connection has in the kernel.
#[derive(Default)]
struct Chain {
    /// Links submitted.
    links: usize,
    /// Links whose completion came (without `skip_send_cqe`).
    seen: usize,
    bytes: usize,
    /// A link wrote less than its buffer or failed: the rest of the chain did not run.
    broken: bool,
    error: Option<i32>,
}

impl UringReactor {
    /// Sets up a ring with `options`, or says why it cannot (old kernel, seccomp, an option the
    /// kernel lacks).
    pub fn new(options: UringOptions) -> io::Result<Self> {
        // COOP_TASKRUN + TASKRUN_FLAG: the kernel never interrupts the lane to post
        // completions; it raises a flag instead, and `poll` enters the kernel only when there
        // is something to submit, the flag is up, or the lane wants to wait. A busy lane reaps
        // completions without a syscall. DEFER_TASKRUN goes further: that work runs only when
        // the lane enters the kernel to collect completions.
        let mut builder = IoUring::builder();
        builder.setup_single_issuer().setup_coop_taskrun().setup_taskrun_flag();
        if options.defer_taskrun {
            builder.setup_defer_taskrun();
        }
        let ring = builder.build(ENTRIES)?;
        if options.skip_send_cqe && !ring.params().is_feature_skip_cqe_on_success() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring has no IOSQE_CQE_SKIP_SUCCESS (runtime.uring_skip_send_cqe)",
            ));
        }
        let mut this = Self {
            ring,
            groups: Vec::new(),
            options,
            slab: Slab::new(),
            // Room for a busy pass up front: these lists are reused, and a first use in the
            // middle of steady traffic would allocate.
            ready: VecDeque::with_capacity(LIST_ROOM),
            dirty: Vec::with_capacity(LIST_ROOM),
            dirty_scratch: Vec::with_capacity(LIST_ROOM),
            rearm: Vec::with_capacity(LIST_ROOM),
            rearm_scratch: Vec::with_capacity(LIST_ROOM),
            retry: Vec::new(),
            backlog: VecDeque::new(),
            chain: Vec::with_capacity(MAX_CHAIN),
            cqes: Vec::with_capacity(LIST_ROOM),
            spares: Spares::default(),
            inflight: 0,
            #[cfg(test)]
            fail_submits: 0,
        };
        // The default group, so that a ring that cannot register one fails here, at start.
        this.group_for(SocketOptions::default())?;
        Ok(this)
    }

    pub(super) fn listen(
        &mut self,
        listener: OwnedFd,
        token: Token,
        options: SocketOptions,
    ) -> io::Result<()> {
        // The group of its connections exists before the first accept.
        let key = self.insert(listener, token, Kind::Listener, options)?;
        self.arm(key);
        Ok(())
    }

    pub(super) fn open(
        &mut self,
        socket: OwnedFd,
        token: Token,
        options: SocketOptions,
    ) -> io::Result<()> {
        rustix::io::ioctl_fionbio(&socket, true)?;
        let key = self.insert(socket, token, Kind::Stream, options)?;
        self.arm(key);
        Ok(())
    }

    pub(super) fn connect(
        &mut self,
        addr: &ConnectAddr,
        token: Token,
        options: SocketOptions,
    ) -> io::Result<()> {
        let (family, addr) = match addr {
            ConnectAddr::Tcp(a) if a.is_ipv4() => (AddressFamily::INET, a.as_any()),
            ConnectAddr::Tcp(a) => (AddressFamily::INET6, a.as_any()),
            ConnectAddr::Unix(path) => {
                (AddressFamily::UNIX, rustix::net::SocketAddrUnix::new(path.as_path())?.as_any())
            }
        };
        let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
        let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
        let key = self.insert(fd, token, Kind::Connecting, options)?;
        let Some(entry) = self.slab.get_mut(key) else { return Err(unknown()) };
        let addr = entry.addr.insert(Box::new(addr));
        let sqe = opcode::Connect::new(
            types::Fd(entry.fd.as_raw_fd()),
            addr.as_ptr().cast(),
            addr.addr_len(),
        )
        .build()
        .user_data(user_data(key, OP_CONNECT, 0));
        entry.ops += 1;
        self.push(sqe);
        Ok(())
    }

    pub(super) fn watch(&mut self, fd: OwnedFd, token: Token) -> io::Result<()> {
        let key = self.insert(fd, token, Kind::Watch, SocketOptions::default())?;
        self.arm(key);
        Ok(())
    }

    pub(super) fn rearm_watch(&mut self, token: Token) -> io::Result<()> {
        let (key, entry) = self.slab.by_token(token).ok_or_else(unknown)?;
        if entry.kind != Kind::Watch {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a watch"));
        }
        self.arm(key);
        Ok(())
    }

    pub(super) fn send(&mut self, token: Token, data: &[u8]) -> io::Result<()> {
        self.queue(token, Bytes::Copy(data))
    }

    pub(super) fn send_owned(&mut self, token: Token, data: Vec<u8>) -> io::Result<()> {
        self.queue(token, Bytes::Owned(data))
    }

    fn queue(&mut self, token: Token, bytes: Bytes<'_>) -> io::Result<()> {
        let (key, entry) = self.slab.by_token_mut(token).ok_or_else(unknown)?;
        if entry.out.queue(bytes, &mut self.spares, &mut entry.dirty) {
            self.dirty.push(key);
        }
        Ok(())
    }

    pub(super) fn pending(&self, token: Token) -> usize {
        self.slab.by_token(token).map_or(0, |(_, e)| e.out.pending())
    }

    pub(super) fn pause(&mut self, token: Token) -> io::Result<()> {
        let (key, entry) = self.slab.by_token_mut(token).ok_or_else(unknown)?;
        if !matches!(entry.kind, Kind::Stream | Kind::Connecting) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "only a connection pauses"));
        }
        if entry.paused {
            return Ok(());
        }
        entry.paused = true;
        if entry.armed {
            let recv = user_data(key, OP_RECV, entry.group as u8);
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(recv))
                .build()
                .user_data(user_data(key, OP_CANCEL, 0));
            entry.ops += 1;
            self.push(cancel);
            // At once, not at the end of the pass: until the kernel has it, the receive goes
            // on draining the socket into buffers that a paused connection only copies aside.
            let _ = self.submit(None);
        }
        Ok(())
    }

    pub(super) fn resume(&mut self, token: Token) -> io::Result<()> {
        let (key, entry) = self.slab.by_token_mut(token).ok_or_else(unknown)?;
        if !entry.paused {
            return Ok(());
        }
        if entry.deaf {
            return Ok(()); // discarded input stays discarded
        }
        entry.paused = false;
        // What came while paused goes first, ahead of anything still queued for this token:
        // the bytes, then the end of input.
        let token = entry.token;
        if std::mem::take(&mut entry.stash_eof) {
            self.ready.push_front((key, Completion::Closed { token }));
        }
        while let Some(buf) = entry.pinned.pop_back() {
            self.ready.push_front((key, Completion::Received { token, buf }));
        }
        if !entry.stash.is_empty() {
            // In chunks no larger than the group's buffers, as if they had just arrived: an
            // agent that pauses again after one of them gets no more at once.
            let chunk = self.groups[usize::from(entry.group)].ring.size;
            let start = entry.delivered.len();
            if entry.delivered.is_empty() {
                std::mem::swap(&mut entry.delivered, &mut entry.stash);
            } else {
                entry.delivered.append(&mut entry.stash);
            }
            let end = entry.delivered.len();
            let count = (end - start).div_ceil(chunk);
            // Pushed to the front last to first, so they come first to last.
            for i in (0..count).rev() {
                let from = start + i * chunk;
                let len = (end - from).min(chunk) as u32;
                let seq = entry.next_chunk.wrapping_add(i as u32);
                entry.chunks.push((seq, from as u32, len));
                let buf =
                    RecvBuf { id: STASH | key.slot, offset: seq, len, generation: key.generation };
                self.ready.push_front((key, Completion::Received { token, buf }));
            }
            entry.next_chunk = entry.next_chunk.wrapping_add(count as u32);
        }
        while let Some(buf) = entry.held.pop_back() {
            self.ready.push_front((key, Completion::Received { token, buf }));
        }
        // Receiving starts again once the stash is taken (see `recycle`): what a connection
        // holds in the reactor is what arrived before its first pause, however often it
        // pauses again.
        if !entry.armed && entry.kind == Kind::Stream && entry.chunks.is_empty() {
            self.rearm.push(key);
        }
        Ok(())
    }

    pub(super) fn discard_input(&mut self, token: Token) -> io::Result<()> {
        self.pause(token)?;
        let (_, entry) = self.slab.by_token_mut(token).ok_or_else(unknown)?;
        entry.deaf = true;
        entry.stash = Vec::new();
        entry.stash_eof = false;
        for buf in std::mem::take(&mut entry.held) {
            entry.take_chunk(buf.offset);
        }
        entry.forget_delivered();
        for buf in std::mem::take(&mut entry.pinned) {
            recycle(&mut self.groups, &mut self.rearm, buf);
        }
        Ok(())
    }

    pub(super) fn fd(&self, token: Token) -> Option<BorrowedFd<'_>> {
        self.slab.by_token(token).map(|(_, e)| e.fd.as_fd())
    }

    pub(super) fn close(&mut self, token: Token) {
        let Some(key) = self.slab.unindex(token) else { return };
        let Some(entry) = self.slab.get_mut(key) else { return };
        entry.closing = true;
        entry.stash = Vec::new();
        for buf in std::mem::take(&mut entry.held) {
            entry.take_chunk(buf.offset);
        }
        entry.forget_delivered();
        for buf in std::mem::take(&mut entry.pinned) {
            recycle(&mut self.groups, &mut self.rearm, buf);
        }
        entry.out.discard(&mut self.spares);
        // A stash chunk the lane holds stays readable until it is recycled: the slot (and the
        // stash) goes only when its last operation has completed and no chunk is out.
        if entry.ops == 0 {
            if entry.chunks.is_empty() {
                self.release(key);
            }
            return;
        }
        if matches!(entry.kind, Kind::Stream | Kind::Connecting) {
            // The peer sees end of stream now, and a send stuck behind a peer that does not
            // read fails instead of waiting forever (ENOTCONN for a socket still connecting).
            let _ = rustix::net::shutdown(&entry.fd, rustix::net::Shutdown::Both);
        }
        let cancel = opcode::AsyncCancel2::new(
            types::CancelBuilder::fd(types::Fd(entry.fd.as_raw_fd())).all(),
        )
        .build()
        .user_data(user_data(key, OP_CANCEL, 0));
        entry.ops += 1;
        self.push(cancel);
    }

    pub(super) fn flush(&mut self) -> io::Result<()> {
        self.prepare();
        self.submit(None)?;
        Ok(())
    }

    pub(super) fn poll(&mut self, timeout: Duration) -> io::Result<()> {
        let mut timeout = timeout;
        if !self.retry.is_empty() {
            let now = Instant::now();
            let mut next = None::<Instant>;
            let mut i = 0;
            while i < self.retry.len() {
                let (key, at) = self.retry[i];
                if at <= now {
                    self.retry.swap_remove(i);
                    self.rearm.push(key);
                } else {
                    next = Some(next.map_or(at, |n| n.min(at)));
                    i += 1;
                }
            }
            if let Some(next) = next {
                timeout = timeout.min(next - now);
            }
        }
        self.prepare();
        let wait = self.ready.is_empty() && !timeout.is_zero();
        self.submit(wait.then_some(timeout))?;
        self.reap();
        Ok(())
    }

    pub(super) fn next(&mut self) -> Option<Completion> {
        while let Some((key, c)) = self.ready.pop_front() {
            match self.slab.get_mut(key) {
                Some(entry) if !entry.closing => {
                    if !entry.paused {
                        return Some(c);
                    }
                    // Paused: the bytes are copied aside and the buffer goes back to the
                    // group at once (discarded if the input is); end of input waits too.
                    match c {
                        Completion::Received { buf, .. } if buf.id & STASH != 0 => {
                            // Delivered by a resume, paused again before it was taken: held
                            // (its bytes stay where they are), first at the next resume.
                            if entry.deaf {
                                if entry.take_chunk(buf.offset).is_some() {
                                    entry.forget_delivered();
                                }
                            } else {
                                entry.held.push_back(buf);
                            }
                        }
                        Completion::Received { buf, .. } => {
                            if entry.deaf {
                                recycle(&mut self.groups, &mut self.rearm, buf);
                            } else if !entry.pinned.is_empty()
                                || entry.stash.len() + buf.len() > STASH_LIMIT
                            {
                                // The stash is full: what the receive completed before its
                                // cancel landed waits in its buffers (bounded by the group).
                                entry.pinned.push_back(buf);
                            } else {
                                let (group, bid) = split_buf(buf.id);
                                let data = self.groups[group].ring.data(bid, &buf);
                                entry.stash.extend_from_slice(data);
                                recycle(&mut self.groups, &mut self.rearm, buf);
                            }
                        }
                        Completion::Closed { .. } => entry.stash_eof = !entry.deaf,
                        c => return Some(c),
                    }
                }
                // Closed since it was collected: nobody gets it.
                _ => {
                    if let Completion::Received { buf, .. } = c {
                        self.recycle(buf);
                    }
                }
            }
        }
        None
    }

    pub(super) fn data(&self, buf: &RecvBuf) -> &[u8] {
        if buf.id & STASH != 0 {
            let key = Key { slot: buf.id & !STASH, generation: buf.generation };
            let entry = self.slab.get(key);
            return entry
                .and_then(|e| {
                    let &(_, start, len) = e.chunks.iter().find(|c| c.0 == buf.offset)?;
                    e.delivered.get(start as usize..(start + len) as usize)
                })
                .expect("a received chunk read after it was recycled");
        }
        let (group, bid) = split_buf(buf.id);
        self.groups[group].ring.data(bid, buf)
    }

    pub(super) fn recycle(&mut self, buf: RecvBuf) {
        if buf.id & STASH != 0 {
            let key = Key { slot: buf.id & !STASH, generation: buf.generation };
            if let Some(entry) = self.slab.get_mut(key) {
                if entry.take_chunk(buf.offset).is_some() {
                    entry.forget_delivered();
                    let stream = entry.kind == Kind::Stream;
                    let idle = !entry.armed && !entry.paused && !entry.eof && !entry.closing;
                    if entry.chunks.is_empty() && stream && idle {
                        self.rearm.push(key); // the stash is taken: receive again
                    }
                    if entry.closing && entry.ops == 0 && entry.chunks.is_empty() {
                        self.release(key); // closed while this chunk was out
                    }
                }
            }
            return;
        }
        recycle(&mut self.groups, &mut self.rearm, buf);
    }

    pub(super) fn registered(&self) -> usize {
        self.slab.indexed()
    }

    pub(super) fn accept_errors(&self, token: Token) -> u64 {
        self.slab.by_token(token).map_or(0, |(_, e)| e.accept_errors)
    }

    pub(super) fn output_memory(&self) -> usize {
        self.spares.memory() + self.slab.iter().map(|(_, e)| e.out.memory()).sum::<usize>()
    }

    pub(super) fn operations_in_flight(&self) -> usize {
        self.inflight
    }

    fn insert(
        &mut self,
        fd: OwnedFd,
        token: Token,
        kind: Kind,
        options: SocketOptions,
    ) -> io::Result<Key> {
        let group = self.group_for(options)?;
        self.slab.insert(
            token,
            Entry {
                token,
                fd,
                kind,
                options,
                group,
                out: Output::default(),
                chain: Chain::default(),
                ops: 0,
                armed: false,
                dirty: false,
                closing: false,
                eof: false,
                paused: false,
                deaf: false,
                broken: false,
                stash: Vec::new(),
                stash_eof: false,
                delivered: Vec::new(),
                chunks: Vec::new(),
                held: VecDeque::new(),
                pinned: VecDeque::new(),
                next_chunk: 0,
                addr: None,
                accept_errors: 0,
                burst: 0,
            },
        )
    }

    /// The buffer group for `options`' receive size, created on first use.
    fn group_for(&mut self, options: SocketOptions) -> io::Result<u16> {
        let size = options.effective_recv_buf_bytes()?;
        if let Some(i) = self.groups.iter().position(|g| g.ring.size == size) {
            return Ok(i as u16);
        }
        let count = (GROUP_BYTES / size).clamp(MIN_GROUP_BUFS, MAX_GROUP_BUFS);
        let bgid = self.groups.len() as u16;
        let ring = BufRing::new(&self.ring, bgid, size, count as u16)?;
        self.groups.push(BufGroup { ring, starved: Vec::new(), out: 0 });
        Ok(bgid)
    }

    /// Frees a slot whose last operation has completed: closes the descriptor.
    fn release(&mut self, key: Key) {
        let token = match self.slab.get(key) {
            Some(e) => e.token,
            None => return,
        };
        if let Some(mut entry) = self.slab.remove(key, token) {
            entry.out.discard(&mut self.spares);
            for buf in entry.pinned.drain(..) {
                recycle(&mut self.groups, &mut self.rearm, buf);
            }
        }
    }

    /// Submits the multishot accept or recv, or the poll, of a registration unless it is in
    /// the kernel already (so a slot never has two).
    fn arm(&mut self, key: Key) {
        let Some(entry) = self.slab.get_mut(key) else { return };
        if entry.armed || entry.closing || entry.eof {
            return;
        }
        let fd = types::Fd(entry.fd.as_raw_fd());
        let sqe = match entry.kind {
            Kind::Listener => {
                let flags = (SocketFlags::CLOEXEC | SocketFlags::NONBLOCK).bits();
                opcode::AcceptMulti::new(fd)
                    .flags(flags as i32)
                    .build()
                    .user_data(user_data(key, OP_ACCEPT, 0))
            }
            // Not while paused, nor while chunks of a stash are out (receiving again before
            // they are taken would let the peer's bytes pile up in the stash without bound).
            Kind::Stream if !entry.paused && entry.chunks.is_empty() => opcode::RecvMulti::new(
                fd,
                entry.group,
            )
            .build()
            .user_data(user_data(key, OP_RECV, entry.group as u8)),
            Kind::Watch => {
                let events = rustix::event::PollFlags::IN.bits() as u32;
                opcode::PollAdd::new(fd, events).build().user_data(user_data(key, OP_POLL, 0))
            }
            Kind::Stream | Kind::Connecting => return,
        };
        entry.armed = true;
        entry.ops += 1;
        self.push(sqe);
    }

    /// Re-arms what asked for it and starts the sends of every connection with output and no
    /// send in flight: the batch of the pass.
    fn prepare(&mut self) {
        if self.rearm.is_empty() && self.dirty.is_empty() {
            return;
        }
        std::mem::swap(&mut self.rearm, &mut self.rearm_scratch);
        for i in 0..self.rearm_scratch.len() {
            let key = self.rearm_scratch[i];
            self.arm(key);
        }
        self.rearm_scratch.clear();
        std::mem::swap(&mut self.dirty, &mut self.dirty_scratch);
        for i in 0..self.dirty_scratch.len() {
            let key = self.dirty_scratch[i];
            self.start_sends(key);
        }
        self.dirty_scratch.clear();
    }

    /// Starts a chain of linked sends, one per queued buffer (at most [`MAX_CHAIN`]), each
    /// with `MSG_WAITALL` so that it completes only once its whole buffer is written (the
    /// kernel retries short writes) and the next link starts after it. With
    /// `skip_send_cqe`, every link but the last skips its completion on success.
    fn start_sends(&mut self, key: Key) {
        let skip = self.options.skip_send_cqe;
        let Some(entry) = self.slab.get_mut(key) else { return };
        entry.dirty = false;
        if entry.closing || entry.broken || entry.kind != Kind::Stream || entry.out.in_flight() > 0
        {
            return;
        }
        let fd = types::Fd(entry.fd.as_raw_fd());
        // MSG_WAITALL is a receive flag to the socket layer, but io_uring's send honours it.
        let flags = (rustix::net::SendFlags::NOSIGNAL.bits()
            | rustix::net::RecvFlags::WAITALL.bits()) as i32;
        self.chain.clear();
        for (i, bytes) in entry.out.unsent().take(MAX_CHAIN).enumerate() {
            let sqe = opcode::Send::new(fd, bytes.as_ptr(), bytes.len() as u32)
                .flags(flags)
                .build()
                .user_data(user_data(key, OP_SEND, i as u8));
            self.chain.push((sqe, true));
        }
        let n = self.chain.len();
        if n == 0 {
            return;
        }
        for (i, (sqe, link)) in self.chain.iter_mut().enumerate() {
            if i + 1 < n {
                let mut flags = squeue::Flags::IO_LINK;
                if skip {
                    flags |= squeue::Flags::SKIP_SUCCESS;
                }
                *sqe = sqe.clone().flags(flags);
            } else {
                *link = false;
            }
        }
        entry.out.start(n);
        entry.chain = Chain { links: n, ..Chain::default() };
        entry.ops += n as u32;
        self.inflight += n;
        let fits = self.backlog.is_empty() && {
            let sq = self.ring.submission();
            sq.capacity() - sq.len() >= n
        };
        for (sqe, link) in self.chain.drain(..) {
            if fits {
                // SAFETY: the send points into heap memory of an output buffer that
                // `Output::start` fenced off: neither changed nor freed until the send's final
                // completion (close keeps the slot until then; drop drains the ring).
                let pushed = unsafe { self.ring.submission().push(&sqe) };
                debug_assert!(pushed.is_ok(), "room was checked");
            } else {
                self.backlog.push_back((sqe, link));
            }
        }
    }

    /// Queues one submission (counted in flight), in the backlog if the queue is full.
    fn push(&mut self, sqe: squeue::Entry) {
        self.inflight += 1;
        if self.backlog.is_empty() {
            // SAFETY: every buffer a submission points to outlives its operation: sends point
            // into output buffers fenced off until their completion, connects into an address
            // boxed in the slot until the connect completes, receives into the provided buffer
            // rings, which live as long as the ring; cancels, accepts and polls point at none.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back((sqe, false));
    }

    /// Moves the backlog into the submission queue (whole chains only) and enters the kernel:
    /// to submit, to run deferred work, or to wait up to `wait` for a completion. An error
    /// leaves every submission queued for the next call.
    fn submit(&mut self, wait: Option<Duration>) -> io::Result<()> {
        loop {
            self.fill_from_backlog();
            let more = !self.backlog.is_empty();
            let wait_now = if more { None } else { wait };
            let result = match wait_now {
                Some(timeout) => {
                    let ts =
                        types::Timespec::new().sec(timeout.as_secs()).nsec(timeout.subsec_nanos());
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.enter(|ring| ring.submitter().submit_with_args(1, &args))
                }
                None => {
                    let mut sq = self.ring.submission();
                    sq.sync();
                    let enter = !sq.is_empty() || sq.taskrun() || sq.cq_overflow();
                    drop(sq);
                    if !enter {
                        return Ok(());
                    }
                    self.enter(|ring| ring.submit())
                }
            };
            match result {
                Ok(_) => {}
                // A timed wait that expired, a signal, a full completion queue, or a kernel short
                // of memory for requests for now (EAGAIN: what was not taken stays queued and
                // goes at the next submit): not errors, and not a reason to stop the lane.
                Err(e) if matches!(e.raw_os_error(), Some(ETIME | EINTR | EBUSY | EAGAIN)) => {
                    if more {
                        // The queue could not take more now: collect, then go on next time.
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
            if !more {
                return Ok(());
            }
        }
    }

    fn enter(&mut self, f: impl FnOnce(&IoUring) -> io::Result<usize>) -> io::Result<usize> {
        #[cfg(test)]
        if self.fail_submits > 0 {
            self.fail_submits -= 1;
            return Err(io::Error::from_raw_os_error(EAGAIN));
        }
        f(&self.ring)
    }

    fn fill_from_backlog(&mut self) {
        let mut sq = self.ring.submission();
        loop {
            // The chain at the front of the backlog, whole.
            let n = self.backlog.iter().position(|&(_, link)| !link).map_or(0, |i| i + 1);
            if n == 0 || sq.capacity() - sq.len() < n {
                break;
            }
            for (sqe, _) in self.backlog.drain(..n) {
                // SAFETY: as in `push`; these entries were built there or in `start_sends`.
                let pushed = unsafe { sq.push(&sqe) };
                debug_assert!(pushed.is_ok(), "room was checked");
            }
        }
    }

    /// Takes every completion off the ring (into a buffer kept between polls).
    fn reap(&mut self) {
        self.cqes.clear();
        self.cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        for i in 0..self.cqes.len() {
            let (data, result, flags) = self.cqes[i];
            self.complete(data, result, flags);
        }
    }

    fn complete(&mut self, data: u64, result: i32, flags: u32) {
        let (key, op, aux) = split(data);
        if op == OP_NONE {
            return;
        }
        let more = cqueue::more(flags);
        let buffer = cqueue::buffer_select(flags);
        let Some(entry) = self.slab.get_mut(key) else {
            // Nothing of ours waits for it (cannot happen while slots are kept until their last
            // completion, but a stale completion must not leak a buffer or a descriptor).
            if let Some(bid) = buffer {
                if let Some(g) = self.groups.get_mut(aux as usize) {
                    g.ring.recycle(bid);
                }
            }
            if op == OP_ACCEPT && result >= 0 {
                // SAFETY: a successful accept returns a new descriptor that nobody owns yet.
                drop(unsafe { OwnedFd::from_raw_fd(result) });
            }
            return;
        };
        let token = entry.token;
        let closing = entry.closing;
        let last = !more || matches!(op, OP_CANCEL | OP_CONNECT | OP_POLL);
        if op != OP_SEND && last {
            entry.ops -= 1;
            self.inflight -= 1;
        }
        match op {
            OP_ACCEPT => {
                if last {
                    entry.armed = false;
                }
                let mut backoff = false;
                if result >= 0 {
                    // SAFETY: a successful accept returns a new descriptor that nobody owns yet.
                    let fd = unsafe { OwnedFd::from_raw_fd(result) };
                    if entry.burst > 0 {
                        tracing::info!(listener = ?token, failed = entry.burst, "accepting again");
                        entry.burst = 0;
                    }
                    if !closing {
                        let fd = Incoming::new(fd, entry.options);
                        self.ready.push_back((key, Completion::Accepted { listener: token, fd }));
                    }
                } else if !matches!(-result, ECANCELED | ECONNABORTED | EINTR | EAGAIN) {
                    entry.accept_errors += 1;
                    if entry.burst == 0 {
                        let error = io::Error::from_raw_os_error(-result);
                        tracing::warn!(listener = ?token, %error, "accept failed; retrying every {ACCEPT_BACKOFF:?} (logged once per burst)");
                    }
                    entry.burst += 1;
                    backoff = true;
                }
                if last && !closing && result != -ECANCELED {
                    if backoff {
                        self.retry.push((key, Instant::now() + ACCEPT_BACKOFF));
                    } else {
                        self.rearm.push(key);
                    }
                }
            }
            OP_RECV => {
                if last {
                    entry.armed = false;
                }
                let mut rearm = last && !closing;
                if let Some(bid) = buffer {
                    let g = &mut self.groups[entry.group as usize];
                    g.out += 1;
                    let len = result.max(0) as u32;
                    let generation = g.ring.lend(bid);
                    let buf = RecvBuf { id: buf_id(entry.group, bid), offset: 0, len, generation };
                    if closing || result <= 0 {
                        // Closed since, or a buffer the kernel names with a failure: back.
                        recycle(&mut self.groups, &mut self.rearm, buf);
                    } else {
                        self.ready.push_back((key, Completion::Received { token, buf }));
                    }
                }
                if result > 0 {
                    debug_assert!(
                        buffer.is_some(),
                        "a successful buffer-select recv names its buffer"
                    );
                } else if result == 0 || result == -ECONNRESET {
                    entry.eof = true;
                    rearm = false;
                    if !closing {
                        self.ready.push_back((key, Completion::Closed { token }));
                    }
                } else if result == -ENOBUFS {
                    // The group ran dry. If every buffer is with us, receive again once one
                    // comes back; if some are not (given back since the kernel tried, or on
                    // their way to us), at once.
                    let g = &mut self.groups[entry.group as usize];
                    if closing || g.out < usize::from(g.ring.count) {
                        rearm = rearm && !closing;
                    } else {
                        g.starved.push(key);
                        rearm = false;
                    }
                } else if result != -ECANCELED {
                    rearm = false;
                    if !closing {
                        let error = io::Error::from_raw_os_error(-result);
                        self.ready.push_back((key, Completion::Failed { token, error }));
                    }
                }
                if rearm && !entry.paused && !entry.eof {
                    self.rearm.push(key);
                }
            }
            OP_SEND => self.send_done(key, aux as usize, result),
            OP_CONNECT => {
                entry.addr = None;
                if closing {
                } else if result == 0 {
                    entry.kind = Kind::Stream;
                    self.ready.push_back((key, Completion::Connected { token }));
                    self.rearm.push(key);
                    if !entry.out.is_empty() && !entry.dirty {
                        entry.dirty = true;
                        self.dirty.push(key);
                    }
                } else {
                    let error = io::Error::from_raw_os_error(-result);
                    self.ready.push_back((key, Completion::Failed { token, error }));
                }
            }
            OP_POLL => {
                entry.armed = false;
                if closing || result == -ECANCELED {
                } else if result >= 0 {
                    self.ready.push_back((key, Completion::Readable { token }));
                } else {
                    let error = io::Error::from_raw_os_error(-result);
                    self.ready.push_back((key, Completion::Failed { token, error }));
                }
            }
            _ => {} // OP_CANCEL: only counted
        }
        if let Some(entry) = self.slab.get(key) {
            if entry.closing && entry.ops == 0 && entry.chunks.is_empty() {
                self.release(key);
            }
        }
    }

    /// The completion of link `link` of a connection's send chain.
    fn send_done(&mut self, key: Key, link: usize, result: i32) {
        let skip = self.options.skip_send_cqe;
        let Some(entry) = self.slab.get_mut(key) else { return };
        let chain_len = entry.chain.links;
        let counted = if skip {
            // Links before this one succeeded without a completion; after a failure the kernel
            // skips the completions of the links behind it too: the chain is over.
            for _ in 0..link {
                entry.chain.bytes += entry.out.finish_front(&mut self.spares);
            }
            chain_len
        } else {
            debug_assert_eq!(link, entry.chain.seen, "linked sends complete in order");
            entry.chain.seen += 1;
            1
        };
        entry.ops -= counted as u32;
        self.inflight -= counted;
        if !entry.chain.broken {
            let rest = entry.out.front_rest();
            if result >= 0 && result as usize == rest {
                entry.chain.bytes += entry.out.finish_front(&mut self.spares);
            } else {
                // A short write (then an error the kernel did not report) or a failure: the
                // links behind this one did not run.
                entry.chain.broken = true;
                if result > 0 {
                    entry.out.advance(result as usize);
                    entry.chain.bytes += result as usize;
                } else if result < 0 {
                    entry.chain.error = Some(-result);
                }
            }
        }
        let over = skip || entry.chain.seen == chain_len;
        if !over {
            return;
        }
        let chain = std::mem::take(&mut entry.chain);
        entry.out.stop();
        if entry.closing {
            return;
        }
        let token = entry.token;
        match chain.error {
            Some(errno) => {
                entry.broken = true;
                let error = io::Error::from_raw_os_error(errno);
                self.ready.push_back((key, Completion::Failed { token, error }));
            }
            None => {
                if !chain.broken {
                    self.ready.push_back((key, Completion::Sent { token, bytes: chain.bytes }));
                }
                if !entry.out.is_empty() && !entry.dirty {
                    entry.dirty = true;
                    self.dirty.push(key);
                }
            }
        }
    }
}

/// Gives a buffer back to its group, and lets the receives starved of that group try again.
/// A chunk recycled twice, or after its buffer went back and came out again, is ignored: the
/// ring never lists a buffer twice, so the kernel never hands one memory to two receives.
fn recycle(groups: &mut [BufGroup], rearm: &mut Vec<Key>, buf: RecvBuf) {
    let (group, bid) = split_buf(buf.id);
    let Some(g) = groups.get_mut(group) else { return };
    if !g.ring.is_lent(bid, buf.generation) {
        return;
    }
    g.out = g.out.saturating_sub(1);
    g.ring.recycle(bid);
    rearm.append(&mut g.starved);
}

impl Drop for UringReactor {
    fn drop(&mut self) {
        // Submissions never handed to the kernel point at nothing the kernel uses.
        self.inflight -= self.backlog.len();
        self.backlog.clear();
        if self.inflight == 0 {
            return;
        }
        // Cancel everything, then wait (bounded) until the kernel is done with our memory.
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data(Key { slot: 0, generation: 0 }, OP_NONE, 0));
        // SAFETY: a cancel request points at no memory of ours.
        let _ = unsafe { self.ring.submission().push(&cancel) };
        for _ in 0..100 {
            if self.inflight == 0 {
                return;
            }
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
        }
        tracing::error!(inflight = self.inflight, "io_uring did not drain; leaking its buffers");
        std::mem::forget(std::mem::replace(&mut self.slab, Slab::new()));
        for group in &mut self.groups {
            group.ring.leak();
        }
    }
}

impl std::fmt::Debug for UringReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringReactor")
            .field("registered", &self.slab.indexed())
            .field("inflight", &self.inflight)
            .field("ready", &self.ready.len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A provided-buffer group: its ring, and the receives waiting for one of its buffers.
struct BufGroup {
    ring: BufRing,
    /// Receives that ran out of buffers while all of them were with us: re-armed at the next
    /// recycle.
    starved: Vec<Key>,
    /// Buffers the kernel handed us (in completions) and we have not given back.
    out: usize,
}

/// A provided buffer ring: `count` buffers of `size` bytes carved out of one allocation,
/// registered as buffer group `bgid`.
struct BufRing {
    /// Page-aligned ring of `count` entries; the kernel reads it, we write entries and the
    /// tail.
    ring: *mut types::BufRingEntry,
    ring_layout: Layout,
    /// The buffers' memory; the kernel writes received bytes here.
    memory: *mut u8,
    memory_layout: Layout,
    size: usize,
    count: u16,
    tail: u16,
    /// Per buffer: the generation of the chunk it was lent as (0: in the ring, the kernel's).
    lent: Vec<u32>,
    /// The last generation handed out (never 0).
    generation: u32,
    leaked: bool,
}

impl BufRing {
    fn new(uring: &IoUring, bgid: u16, size: usize, count: u16) -> io::Result<Self> {
        debug_assert!(count.is_power_of_two() && size > 0);
        let ring_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        let memory_layout =
            Layout::from_size_align(usize::from(count) * size, 4096).map_err(io::Error::other)?;
        // SAFETY: both layouts have non-zero sizes (count and size are non-zero).
        let (ring, memory) =
            unsafe { (std::alloc::alloc_zeroed(ring_layout), std::alloc::alloc(memory_layout)) };
        if ring.is_null() || memory.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "io_uring buffer ring"));
        }
        let mut this = Self {
            ring: ring.cast(),
            ring_layout,
            memory,
            memory_layout,
            size,
            count,
            tail: 0,
            lent: vec![0; usize::from(count)],
            generation: 0,
            leaked: false,
        };
        // SAFETY: `ring` is a page-aligned, zeroed array of `count` entries that lives as long
        // as `this`, which the reactor drops only after the ring stops using it.
        unsafe { uring.submitter().register_buf_ring_with_flags(ring as u64, count, bgid, 0)? };
        for bid in 0..count {
            this.recycle(bid);
        }
        Ok(this)
    }

    /// The kernel handed buffer `bid` out in a completion: the generation of that chunk.
    fn lend(&mut self, bid: u16) -> u32 {
        assert!(bid < self.count, "the kernel named buffer {bid} of {}", self.count);
        debug_assert_eq!(self.lent[usize::from(bid)], 0, "buffer {bid} handed out twice");
        self.generation = self.generation.wrapping_add(1).max(1);
        self.lent[usize::from(bid)] = self.generation;
        self.generation
    }

    /// Whether buffer `bid` is lent out as the chunk of `generation` (not recycled since).
    fn is_lent(&self, bid: u16, generation: u32) -> bool {
        generation != 0 && self.lent.get(usize::from(bid)) == Some(&generation)
    }

    /// The bytes of the chunk `buf` (buffer `bid`); a chunk already recycled is a panic,
    /// never a read of memory the kernel may be writing.
    fn data(&self, bid: u16, buf: &RecvBuf) -> &[u8] {
        let len = buf.len as usize;
        assert!(
            self.is_lent(bid, buf.generation) && len <= self.size,
            "a received chunk read after it was recycled (buffer {bid}, len {len})"
        );
        // SAFETY: in range (bid < count: is_lent looked it up; len checked); the kernel wrote
        // `len` bytes into buffer `bid` and does not touch it again until `recycle` puts it
        // back in the ring, which clears its lent generation (checked above).
        unsafe { std::slice::from_raw_parts(self.memory.add(usize::from(bid) * self.size), len) }
    }

    fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        self.lent[usize::from(bid)] = 0;
        let index = usize::from(self.tail & (self.count - 1));
        // SAFETY: bid < count keeps the address inside `memory`.
        let addr = unsafe { self.memory.add(usize::from(bid) * self.size) } as u64;
        // SAFETY: index < count, inside the ring allocation; the kernel only reads entries
        // between its head and our published tail, and this one is past the tail. The fields
        // are written through raw pointers (io_uring_buf: addr u64 at 0, len u32 at 8, bid
        // u16 at 12): no reference to the entry is made, since entry 0's last field is the
        // ring's tail, which the kernel reads while we write.
        unsafe {
            let entry = self.ring.add(index).cast::<u8>();
            entry.cast::<u64>().write(addr);
            entry.add(8).cast::<u32>().write(self.size as u32);
            entry.add(12).cast::<u16>().write(bid);
        }
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

/// `user_data`: operation (8 bits) | aux (8 bits) | slot (24 bits) | generation (24 bits).
fn user_data(key: Key, op: u8, aux: u8) -> u64 {
    u64::from(op)
        | (u64::from(aux) << 8)
        | (u64::from(key.slot) << 16)
        | (u64::from(key.generation) << 40)
}

fn split(data: u64) -> (Key, u8, u8) {
    let key = Key { slot: ((data >> 16) & 0xFF_FFFF) as u32, generation: (data >> 40) as u32 };
    (key, data as u8, (data >> 8) as u8)
}

fn buf_id(group: u16, bid: u16) -> u32 {
    (u32::from(group) << 16) | u32::from(bid)
}

/// Bytes a paused connection copies aside; what arrives past them stays in its buffers. So a
/// connection holds at most this much of the lane's heap, whatever it pauses for.
const STASH_LIMIT: usize = 64 * 1024;

/// Marks a [`RecvBuf`] of bytes stashed while paused: the rest of `id` is the slot, the
/// generation the slot's (buffer groups are numbered far below it).
const STASH: u32 = 1 << 31;

fn split_buf(id: u32) -> (usize, u16) {
    ((id >> 16) as usize, id as u16)
}

const ETIME: i32 = rustix::io::Errno::TIME.raw_os_error();
const EINTR: i32 = rustix::io::Errno::INTR.raw_os_error();
const EAGAIN: i32 = rustix::io::Errno::AGAIN.raw_os_error();
const EBUSY: i32 = rustix::io::Errno::BUSY.raw_os_error();
const ECANCELED: i32 = rustix::io::Errno::CANCELED.raw_os_error();
const ECONNABORTED: i32 = rustix::io::Errno::CONNABORTED.raw_os_error();
const ECONNRESET: i32 = rustix::io::Errno::CONNRESET.raw_os_error();
const ENOBUFS: i32 = rustix::io::Errno::NOBUFS.raw_os_error();

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_failed_submit_leaks_no_slot() {
        // Its own thread: a ring's teardown interrupts its thread's next timed wait.
        std::thread::spawn(|| {
            let mut reactor = UringReactor::new(UringOptions::default()).unwrap();
            // More sockets in one pass than the submission queue holds, and the submit that
            // makes room fails once.
            let n = u64::from(ENTRIES) + 100;
            let mut peers = Vec::new();
            reactor.fail_submits = 1;
            for i in 0..n {
                let (a, b) = UnixStream::pair().unwrap();
                reactor.open(OwnedFd::from(a), Token(i), SocketOptions::default()).unwrap();
                peers.push(b);
            }
            // EAGAIN is transient (the review of issue 7: it stopped the lane, hence the
            // daemon): not an error, and what was not submitted goes next time.
            let results: Vec<bool> = (0..3).map(|_| reactor.poll(Duration::ZERO).is_ok()).collect();
            assert_eq!(results, [true, true, true], "a transient EAGAIN is not an error");
            for peer in &mut peers {
                peer.write_all(b"x").unwrap();
            }
            let mut got = std::collections::HashSet::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while got.len() < n as usize && Instant::now() < deadline {
                reactor.poll(Duration::from_millis(1)).unwrap();
                while let Some(c) = reactor.next() {
                    if let Completion::Received { token, buf } = c {
                        got.insert(token);
                        reactor.recycle(buf);
                    }
                }
            }
            assert_eq!(got.len(), n as usize, "every socket receives");
            assert_eq!(reactor.inflight, n as usize, "one multishot receive each");
            for i in 0..n {
                reactor.close(Token(i));
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while reactor.inflight > 0 && Instant::now() < deadline {
                reactor.poll(Duration::from_millis(1)).unwrap();
                while reactor.next().is_some() {}
            }
            assert_eq!(reactor.inflight, 0, "every operation completed");
            assert_eq!(reactor.registered(), 0);
            assert_eq!(reactor.slab.iter().count(), 0, "every slot released");
        })
        .join()
        .unwrap();
    }

    /// Found by stress runs of the pause test (one hang in about 50 parallel runs): with
    /// COOP_TASKRUN, a multishot receive's retry runs as task work at any return of the lane's
    /// thread to user space, so its ENOBUFS completion can be posted while the lane holds every
    /// buffer and reaped after the lane gave them all back. Waiting for a recycle then waits
    /// forever. Here the kernel's real completions are handled in that order on purpose.
    #[test]
    fn a_receive_that_ran_dry_after_its_buffers_came_back_goes_on() {
        std::thread::spawn(|| {
            let mut reactor = UringReactor::new(UringOptions::default()).unwrap();
            let (a, mut peer) = UnixStream::pair().unwrap();
            reactor.open(OwnedFd::from(a), Token(1), SocketOptions::default()).unwrap();
            let writer = std::thread::spawn(move || {
                let chunk = [0u8; 64 * 1024];
                while peer.write_all(&chunk).is_ok() {}
            });
            let mut held = Vec::new();
            let mut dry = None;
            let deadline = Instant::now() + Duration::from_secs(10);
            while dry.is_none() {
                assert!(Instant::now() < deadline, "never ran dry: {} buffers held", held.len());
                reactor.prepare();
                reactor.submit(Some(Duration::from_millis(1))).unwrap();
                let cqes: Vec<(u64, i32, u32)> = reactor
                    .ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags()))
                    .collect();
                for (data, result, flags) in cqes {
                    if split(data).1 == OP_RECV && result == -ENOBUFS {
                        dry = Some((data, result, flags));
                    } else {
                        reactor.complete(data, result, flags);
                    }
                }
                while let Some(c) = reactor.next() {
                    if let Completion::Received { buf, .. } = c {
                        held.push(buf);
                    }
                }
            }
            for buf in held {
                reactor.recycle(buf);
            }
            let (data, result, flags) = dry.unwrap();
            reactor.complete(data, result, flags);
            let deadline = Instant::now() + Duration::from_secs(5);
            'more: loop {
                assert!(Instant::now() < deadline, "the receive never resumed");
                reactor.poll(Duration::from_millis(1)).unwrap();
                while let Some(c) = reactor.next() {
                    if let Completion::Received { buf, .. } = c {
                        reactor.recycle(buf);
                        break 'more;
                    }
                }
            }
            reactor.close(Token(1));
            while reactor.inflight > 0 {
                reactor.poll(Duration::from_millis(1)).unwrap();
                while reactor.next().is_some() {}
            }
            writer.join().unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn user_data_round_trips() {
        let key = Key { slot: (1 << 24) - 1, generation: (1 << 24) - 2 };
        assert_eq!(split(user_data(key, OP_SEND, 15)), (key, OP_SEND, 15));
        assert_eq!(split_buf(buf_id(10, 127)), (10, 127));
    }

    // ---- receive buffers, pauses and graceful closes (from the review of issue 7) --------------

    use crate::runtime::agent::Ctx;
    use crate::runtime::conns::{CloseReason, ConnConfig, ConnEvent, ConnTable};
    use crate::runtime::reactor::Reactor;
    use crate::runtime::timer::Timers;

    /// A lane without a thread, on io_uring: passes in the lane's order (poll; each completion
    /// to the table, then its buffer recycled, as `Lane::dispatch` does; flush).
    struct UringLane {
        reactor: Reactor,
        timers: Timers,
    }

    impl UringLane {
        fn new() -> Self {
            let uring = UringReactor::new(UringOptions::default()).unwrap();
            UringLane { reactor: Reactor::Uring(Box::new(uring)), timers: Timers::default() }
        }

        fn ctx(&mut self) -> Ctx<'_> {
            Ctx {
                now: Instant::now(),
                reactor: &mut self.reactor,
                timers: &mut self.timers,
                agent: 0,
                last_look: false,
            }
        }

        fn uring(&self) -> &UringReactor {
            match &self.reactor {
                Reactor::Uring(r) => r,
                Reactor::Poll(_) => unreachable!(),
            }
        }

        fn pass<S>(
            &mut self,
            table: &mut ConnTable<S>,
            mut on: impl FnMut(&mut ConnTable<S>, &mut Ctx<'_>, ConnEvent),
        ) {
            self.reactor.park(Duration::from_millis(1)).unwrap();
            while let Some(c) = self.reactor.next_completion() {
                let buf = match &c {
                    Completion::Received { buf, .. } => Some(*buf),
                    _ => None,
                };
                let mut ctx = self.ctx();
                let event = table.event(&mut ctx, c);
                on(table, &mut ctx, event);
                if let Some(buf) = buf {
                    self.reactor.recycle(buf);
                }
            }
            self.reactor.flush().unwrap();
        }
    }

    /// What `ControlAgent::after` does on a protocol error: an error answer (here larger than
    /// the socket takes, for a peer that does not read), then a graceful close.
    fn answer_and_close(table: &mut ConnTable<()>, ctx: &mut Ctx<'_>, event: ConnEvent) {
        if let ConnEvent::Received { id, .. } = event {
            let _ = table.send_owned(ctx, id, vec![b'E'; 512 * 1024]);
            table.close(ctx, id, CloseReason::Protocol);
        }
    }

    /// Buffer starvation via graceful closes (review): `ConnTable::close` with output pending
    /// pauses the connection, and the reactor holds a paused connection's collected chunks
    /// (each a provided buffer of the lane's shared group) until the close finishes: output
    /// written, or the write timeout. Peers that send garbage in one 64 KiB write and do not
    /// read their answer hold 3 buffers each; 43 of them hold all but one of the 128.
    #[test]
    fn graceful_closes_hold_no_receive_buffers() {
        std::thread::spawn(|| {
            let mut lane = UringLane::new();
            let config = ConnConfig {
                max_connections: 1024,
                max_pending_output: 64 << 20,
                write_timeout: Duration::from_secs(30),
                max_recv_buffer: 0,
            };
            let mut table = ConnTable::new(config);
            let mut peers = Vec::new();
            let mut held = Vec::new();
            let mut starved = Vec::new();
            for i in 0..48 {
                let (ours, mut peer) = UnixStream::pair().unwrap();
                // Written before the receive is armed: its chunks complete together.
                peer.write_all(&[b'x'; 64 * 1024]).unwrap();
                peers.push(peer);
                let id = table.accept(&mut lane.ctx(), OwnedFd::from(ours), |_| ()).unwrap();
                let deadline = Instant::now() + Duration::from_secs(2);
                while !table.is_closing(id) && Instant::now() < deadline {
                    lane.pass(&mut table, answer_and_close);
                }
                if !table.is_closing(id) {
                    starved.push(i); // not one byte received in 2 s
                }
                for _ in 0..3 {
                    lane.pass(&mut table, answer_and_close);
                }
                held.push(lane.uring().groups[0].out);
            }
            eprintln!("buffers held after each graceful close: {held:?}");
            eprintln!("connections that received nothing in 2 s: {starved:?}");
            // A well-behaved connection now: how its 64 KiB arrive.
            let (ours, mut good_peer) = UnixStream::pair().unwrap();
            let good = table.accept(&mut lane.ctx(), OwnedFd::from(ours), |_| ()).unwrap();
            good_peer.write_all(&[b'g'; 64 * 1024]).unwrap();
            let (mut got, mut passes, mut chunks) = (0usize, 0u32, 0u32);
            let start = Instant::now();
            while got < 64 * 1024 && start.elapsed() < Duration::from_secs(2) {
                passes += 1;
                lane.pass(&mut table, |table, ctx, event| match event {
                    ConnEvent::Received { id, buf } if id == good => {
                        got += buf.len();
                        chunks += 1;
                    }
                    other => answer_and_close(table, ctx, other),
                });
            }
            eprintln!(
                "a well-behaved connection's 64 KiB: {got} bytes in {chunks} chunks, {passes} \
                 passes, {:?}",
                start.elapsed()
            );
            assert_eq!(table.len(), 49, "closing, not closed: their peers do not read");
            let g = &lane.uring().groups[0];
            assert_eq!(
                g.out, 0,
                "{} of the lane's {} receive buffers are held by connections that are closing",
                g.out, g.ring.count
            );
        })
        .join()
        .unwrap();
    }

    /// The other half (review): peers that send and then end their input (closed,
    /// or half-closed and reading), closed gracefully on `PeerClosed` with an answer pending,
    /// give every buffer back, 300 times (more than the group's 128).
    #[test]
    fn graceful_closes_after_end_of_input_give_every_buffer_back() {
        std::thread::spawn(|| {
            let mut lane = UringLane::new();
            let mut table = ConnTable::new(ConnConfig::default());
            fn on(table: &mut ConnTable<()>, ctx: &mut Ctx<'_>, event: ConnEvent) {
                match event {
                    ConnEvent::Received { id, .. } => {
                        let _ = table.send(ctx, id, b"answer");
                    }
                    ConnEvent::PeerClosed { id } => table.close(ctx, id, CloseReason::Peer),
                    _ => {}
                }
            }
            for i in 0..300 {
                let (ours, mut peer) = UnixStream::pair().unwrap();
                peer.write_all(&[b'x'; 40 * 1024]).unwrap();
                let keep = if i % 2 == 0 {
                    drop(peer);
                    None
                } else {
                    peer.shutdown(std::net::Shutdown::Write).unwrap();
                    Some(peer)
                };
                let id = table.accept(&mut lane.ctx(), OwnedFd::from(ours), |_| ()).unwrap();
                let deadline = Instant::now() + Duration::from_secs(5);
                while table.contains(id) {
                    assert!(Instant::now() < deadline, "connection {i} never closed");
                    lane.pass(&mut table, on);
                }
                drop(keep);
            }
            for _ in 0..10 {
                lane.pass(&mut table, on);
            }
            let r = lane.uring();
            assert_eq!(r.groups[0].out, 0, "buffers not given back");
            assert_eq!(r.inflight, 0, "operations left in the kernel");
            assert_eq!(r.slab.iter().count(), 0, "slots not released");
            // And the kernel's side: one connection can again hold all 128 at once.
            let (ours, mut peer) = UnixStream::pair().unwrap();
            lane.reactor.open(OwnedFd::from(ours), Token(9)).unwrap();
            let writer = std::thread::spawn(move || {
                let chunk = [0u8; 64 * 1024];
                while peer.write_all(&chunk).is_ok() {}
            });
            let mut held = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while held.len() < 128 && Instant::now() < deadline {
                lane.reactor.park(Duration::from_millis(1)).unwrap();
                while let Some(c) = lane.reactor.next_completion() {
                    if let Completion::Received { buf, .. } = c {
                        held.push(buf);
                    }
                }
            }
            assert_eq!(held.len(), 128, "buffers the kernel still has for us");
            for buf in held {
                lane.reactor.recycle(buf);
            }
            lane.reactor.close(Token(9));
            for _ in 0..10 {
                lane.reactor.park(Duration::from_millis(1)).unwrap();
                while lane.reactor.next_completion().is_some() {}
            }
            writer.join().unwrap();
        })
        .join()
        .unwrap();
    }

    /// A paused connection holds none of the lane's provided buffers: what had arrived is
    /// copied aside and delivered on resume, in order, then the rest.
    #[test]
    fn a_paused_connection_holds_no_receive_buffer_and_loses_no_byte() {
        std::thread::spawn(|| {
            let mut r = UringReactor::new(UringOptions::default()).unwrap();
            let (ours, mut peer) = UnixStream::pair().unwrap();
            let all: Vec<u8> = (0..192 * 1024u32).map(|i| (i % 251) as u8).collect();
            // Written before the receive is armed: its chunks complete together.
            peer.write_all(&all[..64 * 1024]).unwrap();
            r.open(OwnedFd::from(ours), Token(1), SocketOptions::default()).unwrap();
            r.pause(Token(1)).unwrap();
            let mut got = Vec::new();
            for _ in 0..20 {
                r.poll(Duration::from_millis(5)).unwrap();
                if let Some(c) = r.next() {
                    panic!("paused, yet delivered {c:?}");
                }
            }
            assert_eq!(r.groups[0].out, 0, "buffers held by a paused connection");
            r.resume(Token(1)).unwrap();
            let writer = std::thread::spawn(move || {
                peer.write_all(&all[64 * 1024..]).unwrap();
                (peer, all)
            });
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut chunks = 0;
            while got.len() < 192 * 1024 {
                assert!(Instant::now() < deadline, "only {} bytes", got.len());
                r.poll(Duration::from_millis(5)).unwrap();
                while let Some(c) = r.next() {
                    if let Completion::Received { buf, .. } = c {
                        assert!(buf.len() <= 16 * 1024, "a chunk of {} bytes", buf.len());
                        got.extend_from_slice(r.data(&buf));
                        r.recycle(buf);
                        // A second recycle of the same chunk does nothing.
                        r.recycle(buf);
                        chunks += 1;
                        if chunks == 1 {
                            // Paused again after the first chunk of the stash: the rest of it
                            // waits, then comes in order.
                            r.pause(Token(1)).unwrap();
                            assert!(r.next().is_none(), "paused, yet delivered");
                            r.resume(Token(1)).unwrap();
                        }
                    }
                }
            }
            let (_peer, all) = writer.join().unwrap();
            assert!(got == all, "bytes lost or reordered across pause and resume");
            assert_eq!(r.groups[0].out, 0);
            let stale = RecvBuf { id: STASH, offset: 0, len: 1, generation: 1 };
            r.recycle(stale); // long recycled: ignored
            r.close(Token(1));
            for _ in 0..10 {
                r.poll(Duration::from_millis(1)).unwrap();
                while r.next().is_some() {}
            }
        })
        .join()
        .unwrap();
    }

    /// Reading a chunk after it was recycled is a panic, not a read of memory the kernel may
    /// be writing into.
    #[test]
    fn a_chunk_read_after_it_was_recycled_is_a_panic() {
        let outcome = std::thread::spawn(|| {
            let mut r = UringReactor::new(UringOptions::default()).unwrap();
            let (ours, mut peer) = UnixStream::pair().unwrap();
            r.open(OwnedFd::from(ours), Token(1), SocketOptions::default()).unwrap();
            peer.write_all(b"x").unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let buf = 'got: loop {
                assert!(Instant::now() < deadline, "nothing received");
                r.poll(Duration::from_millis(5)).unwrap();
                while let Some(c) = r.next() {
                    if let Completion::Received { buf, .. } = c {
                        break 'got buf;
                    }
                }
            };
            assert_eq!(r.data(&buf), b"x");
            r.recycle(buf);
            let _ = r.data(&buf);
        })
        .join();
        let message = outcome.expect_err("read after recycle");
        let text = message.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(text.contains("read after it was recycled"), "{text}");
    }

    // ---- second review: the stash ----------------------------------------------------------

    /// Helper: a connection whose first 64 KiB arrived while it was paused, resumed with the
    /// cancel long completed (so its stash comes back as chunks and nothing is armed).
    fn stashed_connection(r: &mut UringReactor) -> UnixStream {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        peer.write_all(&[b's'; 64 * 1024]).unwrap();
        r.open(OwnedFd::from(ours), Token(1), SocketOptions::default()).unwrap();
        r.pause(Token(1)).unwrap();
        for _ in 0..20 {
            r.poll(Duration::from_millis(5)).unwrap();
            assert!(r.next().is_none());
        }
        peer
    }

    /// `RecvBuf` is documented as "valid until the lane recycles it after the completion was
    /// handled". A regular chunk stays readable when the agent closes its connection inside
    /// the completion's handler; a stash chunk does not: `close` releases the slot at once
    /// (no operation in flight: the receive was cancelled and not re-armed while the stash is
    /// out), and `data` finds no slot, so reading it panics (on the lane: the lane dies).
    #[test]
    fn a_stash_chunk_is_readable_until_recycled_even_if_its_connection_closed() {
        let outcome = std::thread::spawn(|| {
            let mut r = UringReactor::new(UringOptions::default()).unwrap();
            let _peer = stashed_connection(&mut r);
            r.resume(Token(1)).unwrap();
            let Some(Completion::Received { buf, .. }) = r.next() else {
                panic!("no stash chunk");
            };
            assert_ne!(buf.id & STASH, 0, "a stash chunk");
            // The agent's handler: it decides to close, then looks at what it got.
            r.close(Token(1));
            let n = r.data(&buf).len();
            r.recycle(buf);
            n
        })
        .join();
        match outcome {
            Ok(n) => assert_eq!(n, 16 * 1024),
            Err(e) => {
                let text = e.downcast_ref::<String>().cloned().unwrap_or_default();
                panic!("data() of a chunk not yet recycled panicked: {text}");
            }
        }
    }

    /// The same, for comparison: a regular chunk read after its connection closed, before
    /// the lane recycles it, reads fine.
    #[test]
    fn a_regular_chunk_is_readable_until_recycled_even_if_its_connection_closed() {
        std::thread::spawn(|| {
            let mut r = UringReactor::new(UringOptions::default()).unwrap();
            let (ours, mut peer) = UnixStream::pair().unwrap();
            r.open(OwnedFd::from(ours), Token(1), SocketOptions::default()).unwrap();
            peer.write_all(b"hello").unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let buf = 'got: loop {
                assert!(Instant::now() < deadline);
                r.poll(Duration::from_millis(5)).unwrap();
                while let Some(c) = r.next() {
                    if let Completion::Received { buf, .. } = c {
                        break 'got buf;
                    }
                }
            };
            r.close(Token(1));
            assert_eq!(r.data(&buf), b"hello");
            r.recycle(buf);
            for _ in 0..10 {
                r.poll(Duration::from_millis(1)).unwrap();
                while r.next().is_some() {}
            }
        })
        .join()
        .unwrap();
    }

    /// `discard_input` (every graceful close) drops the held stash chunks from `held` but
    /// leaves them in `chunks`, so `delivered` (the whole stash) is never freed until the slot
    /// is released: for up to the write timeout of a peer that does not read.
    #[test]
    fn discard_input_frees_the_delivered_stash() {
        std::thread::spawn(|| {
            let mut r = UringReactor::new(UringOptions::default()).unwrap();
            let _peer = stashed_connection(&mut r);
            r.send(Token(1), &[b'o'; 1024]).unwrap(); // a reply pending, as in a graceful close
            r.resume(Token(1)).unwrap();
            let Some(Completion::Received { buf, .. }) = r.next() else { panic!() };
            r.pause(Token(1)).unwrap(); // the agent's budget: the rest is held
            r.recycle(buf);
            assert!(r.next().is_none());
            r.discard_input(Token(1)).unwrap(); // ConnTable::close
            for _ in 0..10 {
                r.poll(Duration::from_millis(1)).unwrap();
                while r.next().is_some() {}
                r.flush().unwrap();
            }
            let (_, e) = r.slab.by_token(Token(1)).unwrap();
            eprintln!(
                "after discard_input: {} chunks live, delivered {} bytes (capacity {})",
                e.chunks.len(),
                e.delivered.len(),
                e.delivered.capacity()
            );
            assert_eq!(e.delivered.capacity(), 0, "a closing connection keeps its stash");
        })
        .join()
        .unwrap();
    }

    /// "Receiving starts again once the stash is taken": not when a resume comes before the
    /// pause's cancel completed. The receive's -ECANCELED completion re-arms it (the entry is
    /// no longer paused) while stash chunks are still out, and an agent that pauses after one
    /// chunk each pass and resumes at the end of the pass (pause/resume within one pass) has
    /// every new arrival copied into the stash and appended to `delivered`, which is never
    /// freed while a chunk is out. Flow control is gone: the socket is drained into the heap
    /// as fast as the peer writes, while the agent takes one chunk a pass.
    #[test]
    fn a_pause_resume_per_pass_agent_cannot_grow_the_stash_without_bound() {
        std::thread::spawn(|| {
            let mut r = UringReactor::new(UringOptions::default()).unwrap();
            let (ours, mut peer) = UnixStream::pair().unwrap();
            r.open(OwnedFd::from(ours), Token(1), SocketOptions::default()).unwrap();
            let total: usize = 48 << 20;
            let writer = std::thread::spawn(move || {
                let block: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
                let mut sent = 0;
                while sent < total {
                    if peer.write_all(&block).is_err() {
                        break;
                    }
                    sent += block.len();
                }
                peer
            });
            let (mut got, mut peak, mut passes) = (0usize, 0usize, 0u32);
            let mut in_order = true;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(4) && got < total {
                passes += 1;
                r.poll(Duration::from_millis(1)).unwrap();
                // One chunk a pass: take it, pause (the agent's budget is spent).
                if let Some(Completion::Received { buf, .. }) = r.next() {
                    let data = r.data(&buf);
                    in_order &= data
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == ((got + i) % (64 * 1024) % 251) as u8);
                    got += data.len();
                    r.pause(Token(1)).unwrap();
                    r.recycle(buf);
                }
                assert!(r.next().is_none(), "paused, yet delivered");
                // do_work: the backlog fed, the connection resumed.
                r.resume(Token(1)).unwrap();
                r.flush().unwrap();
                let (_, e) = r.slab.by_token(Token(1)).unwrap();
                peak = peak.max(e.delivered.capacity() + e.stash.capacity());
            }
            eprintln!(
                "{passes} passes, {got} bytes taken, peak stash+delivered {peak} bytes, in order: \
                 {in_order}"
            );
            assert!(in_order, "bytes reordered");
            r.close(Token(1));
            for _ in 0..10 {
                r.poll(Duration::from_millis(1)).unwrap();
                while let Some(c) = r.next() {
                    if let Completion::Received { buf, .. } = c {
                        r.recycle(buf);
                    }
                }
            }
            drop(writer.join().unwrap());
            assert!(
                // The group's 128 buffers of 16 KiB (what may arrive before one pause), with
                // room for a Vec's doubling: 4 MiB.
                peak <= 4 << 20,
                "one connection's stash grew to {peak} bytes while its agent took {got}"
            );
        })
        .join()
        .unwrap();
    }

    /// The mechanism of the growth above, deterministically: pause while the receive is
    /// armed (its cancel queued), resume before the cancel completed with a stash to deliver;
    /// the -ECANCELED completion then re-arms the receive (`complete`, OP_RECV: `rearm &&
    /// !entry.paused && !entry.eof`) although the stash chunks are still out.
    #[test]
    fn no_receive_is_armed_while_stash_chunks_are_out() {
        std::thread::spawn(|| {
            let mut r = UringReactor::new(UringOptions::default()).unwrap();
            let (ours, mut peer) = UnixStream::pair().unwrap();
            peer.write_all(&[b'a'; 64 * 1024]).unwrap();
            r.open(OwnedFd::from(ours), Token(1), SocketOptions::default()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let first = 'got: loop {
                assert!(Instant::now() < deadline);
                r.poll(Duration::from_millis(5)).unwrap();
                if let Some(Completion::Received { buf, .. }) = r.next() {
                    break 'got buf;
                }
            };
            r.pause(Token(1)).unwrap(); // armed: a cancel is queued
            r.recycle(first);
            assert!(r.next().is_none(), "paused");
            let (_, e) = r.slab.by_token(Token(1)).unwrap();
            assert!(e.armed && !e.stash.is_empty(), "the rest of the 64 KiB is stashed");
            r.resume(Token(1)).unwrap(); // same pass: the cancel is not even submitted
            r.flush().unwrap();
            // The stash chunks are out (in `ready`); the lane has not taken them yet.
            for _ in 0..5 {
                r.poll(Duration::from_millis(5)).unwrap();
            }
            let (_, e) = r.slab.by_token(Token(1)).unwrap();
            eprintln!("armed {}, stash chunks out {}", e.armed, e.chunks.len());
            assert!(
                !e.armed || e.chunks.is_empty(),
                "receive re-armed while {} stash chunks are out",
                e.chunks.len()
            );
            r.close(Token(1));
            for _ in 0..10 {
                r.poll(Duration::from_millis(1)).unwrap();
                while let Some(c) = r.next() {
                    if let Completion::Received { buf, .. } = c {
                        r.recycle(buf);
                    }
                }
            }
        })
        .join()
        .unwrap();
    }

    /// The control agent's pattern on one connection (4 KiB a pass; the rest of a chunk in a
    /// backlog, the connection paused; resumed once the backlog is fed): what the reactor
    /// holds for it aside (stash and delivered), uncounted by any budget of the agent.
    #[test]
    fn control_agent_pattern_stash_stays_within_the_group() {
        std::thread::spawn(|| {
            let mut r = UringReactor::new(UringOptions::default()).unwrap();
            let (ours, mut peer) = UnixStream::pair().unwrap();
            r.open(OwnedFd::from(ours), Token(1), SocketOptions::default()).unwrap();
            let writer = std::thread::spawn(move || {
                let block = vec![7u8; 64 * 1024];
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(4) && peer.write_all(&block).is_ok() {}
                peer
            });
            let (mut backlog, mut peak, mut got, mut resumes) = (0usize, 0usize, 0usize, 0u32);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                r.poll(Duration::from_millis(1)).unwrap();
                let mut budget = 4096usize;
                while let Some(c) = r.next() {
                    if let Completion::Received { buf, .. } = c {
                        let n = r.data(&buf).len();
                        got += n;
                        let take = n.min(budget);
                        budget -= take;
                        if take < n {
                            backlog += n - take;
                            r.pause(Token(1)).unwrap();
                        }
                        r.recycle(buf);
                    }
                }
                // do_work: feed the backlog (a fresh 4 KiB), resume once it is empty.
                if backlog > 0 {
                    backlog = backlog.saturating_sub(4096);
                    if backlog == 0 {
                        r.resume(Token(1)).unwrap();
                        resumes += 1;
                    }
                }
                r.flush().unwrap();
                let (_, e) = r.slab.by_token(Token(1)).unwrap();
                peak = peak.max(e.stash.capacity() + e.delivered.capacity());
            }
            eprintln!("{got} bytes in 3 s, {resumes} resumes, peak stash+delivered {peak} bytes");
            r.close(Token(1));
            for _ in 0..10 {
                r.poll(Duration::from_millis(1)).unwrap();
                while let Some(c) = r.next() {
                    if let Completion::Received { buf, .. } = c {
                        r.recycle(buf);
                    }
                }
            }
            drop(writer.join().unwrap());
            assert!(peak <= 4 << 20, "one connection's stash grew to {peak} bytes");
        })
        .join()
        .unwrap();
    }
}
