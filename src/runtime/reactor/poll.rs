//! The epoll backend: readiness from `epoll_wait`, then non-blocking `accept4`, `recv`, `send`
//! and `connect`.
//!
//! Level-triggered, so a socket not fully drained in one pass (the per-pass read budget) is
//! simply reported again. Each descriptor's interest follows its state ([`Socket::interest`]):
//! reading while it may read (not paused, not at end of input), writing while output waits for
//! room, nothing at all for a socket that has nothing to wait for (so a half-closed peer costs
//! no CPU), and a watch is one-shot (`EPOLLONESHOT`) until re-armed. Event data carries the
//! registration's [`Key`], so an event finds its slot without hashing.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use super::out::{Bytes, Output, Spares};
use super::slab::{Key, Slab};
use super::{
    unknown, Completion, ConnectAddr, Incoming, RecvBuf, SocketOptions, Token, ACCEPT_BACKOFF,
};

/// Most bytes read from all sockets in one poll: bounds the arena and keeps one busy peer from
/// starving the lane's other work.
const READ_BUDGET: usize = 1 << 20;
/// Grows the read arena to at least `len` bytes. The first time through `vec!` (calloc: the
/// 1 MiB comes from fresh zero pages that only a read makes resident) rather than `resize`,
/// which wrote all of it: 1 MiB of RSS after the first byte any socket sent.
fn reserve_arena(arena: &mut Vec<u8>, len: usize) {
    if arena.is_empty() {
        *arena = vec![0; len];
    } else if arena.len() < len {
        arena.resize(len, 0);
    }
}

/// Most bytes read from one socket per readiness event (in chunks of its receive size).
const READ_PER_EVENT: usize = 64 * 1024;
/// epoll events taken per wait.
const EVENTS: usize = 256;
/// Initial room of the per-pass lists (completions, sockets to flush).
const LIST_ROOM: usize = 64;

/// The epoll reactor. See the [module](super) docs for the interface.
pub struct PollReactor {
    epoll: OwnedFd,
    slab: Slab<Socket>,
    ready: VecDeque<(Key, Completion)>,
    events: Vec<epoll::Event>,
    /// Received bytes of the current poll (allocated on first use); `RecvBuf` offsets point
    /// here, below `arena_used`.
    arena: Vec<u8>,
    arena_used: usize,
    /// Counts arena resets: the generation of the chunks received into it now.
    epoch: u32,
    /// Sockets with queued output, flushed at the next flush, and the list being processed.
    dirty: Vec<Key>,
    dirty_scratch: Vec<Key>,
    /// Listeners backing off after an accept error, with when to accept again.
    retry: Vec<(Key, Instant)>,
    spares: Spares,
}

struct Socket {
    token: Token,
    fd: OwnedFd,
    kind: Kind,
    /// Options handed to accepted connections (listeners).
    options: SocketOptions,
    /// Largest read (the receive size).
    chunk: usize,
    out: Output,
    /// Bytes written since the last `Sent`.
    flushed: usize,
    /// Output waits for room: registered for writing.
    want_out: bool,
    dirty: bool,
    /// A send (or the connect) failed: nothing more is sent.
    broken: bool,
    eof: bool,
    paused: bool,
    /// Input is discarded (`discard_input`).
    deaf: bool,
    /// Received while paused, delivered on resume.
    held: Vec<u8>,
    held_eof: bool,
    /// The watch waits for its next readiness.
    watch_armed: bool,
    /// Backing off after an accept error.
    backing_off: bool,
    accept_errors: u64,
    burst: u64,
    /// What the descriptor is registered for (`None`: not in the epoll set).
    interest: Option<epoll::EventFlags>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Listener,
    Stream,
    Connecting,
    Watch,
}

impl Socket {
    /// What the descriptor should be registered for in its state.
    fn desired(&self) -> epoll::EventFlags {
        use epoll::EventFlags as F;
        match self.kind {
            Kind::Listener if self.backing_off => F::empty(),
            Kind::Listener => F::IN,
            Kind::Stream => {
                let mut flags = F::empty();
                if !self.eof && !self.paused {
                    flags |= F::IN | F::RDHUP;
                }
                if self.want_out && !self.broken {
                    flags |= F::OUT;
                }
                flags
            }
            Kind::Connecting if self.broken => F::empty(),
            Kind::Connecting => F::OUT,
            Kind::Watch if self.watch_armed => F::IN | F::ONESHOT,
            Kind::Watch => F::empty(),
        }
    }
}

impl PollReactor {
    /// A new epoll instance.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            slab: Slab::new(),
            // Room for a busy pass up front: these lists are reused, and a first use in the
            // middle of steady traffic would allocate.
            ready: VecDeque::with_capacity(LIST_ROOM),
            events: Vec::with_capacity(EVENTS),
            arena: Vec::new(),
            arena_used: 0,
            epoch: 0,
            dirty: Vec::with_capacity(LIST_ROOM),
            dirty_scratch: Vec::with_capacity(LIST_ROOM),
            retry: Vec::new(),
            spares: Spares::default(),
        })
    }

    pub(super) fn listen(
        &mut self,
        listener: OwnedFd,
        token: Token,
        options: SocketOptions,
    ) -> io::Result<()> {
        rustix::io::ioctl_fionbio(&listener, true)?;
        self.register(listener, token, Kind::Listener, options).map(drop)
    }

    pub(super) fn open(
        &mut self,
        socket: OwnedFd,
        token: Token,
        options: SocketOptions,
    ) -> io::Result<()> {
        rustix::io::ioctl_fionbio(&socket, true)?;
        self.register(socket, token, Kind::Stream, options).map(drop)
    }

    pub(super) fn connect(
        &mut self,
        addr: &ConnectAddr,
        token: Token,
        options: SocketOptions,
    ) -> io::Result<()> {
        if self.slab.key(token).is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "token already registered"));
        }
        options.effective_recv_buf_bytes()?;
        let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
        let (fd, result) = match addr {
            ConnectAddr::Tcp(a) => {
                let family = if a.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
                let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
                let result = rustix::net::connect(&fd, a);
                (fd, result)
            }
            ConnectAddr::Unix(path) => {
                let addr = rustix::net::SocketAddrUnix::new(path.as_path())?;
                let fd =
                    rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
                let result = rustix::net::connect(&fd, &addr);
                (fd, result)
            }
        };
        match result {
            Ok(()) => {
                let key = self.register(fd, token, Kind::Stream, options)?;
                self.ready.push_back((key, Completion::Connected { token }));
            }
            Err(rustix::io::Errno::INPROGRESS) => {
                self.register(fd, token, Kind::Connecting, options)?;
            }
            // Refused, unreachable, no such path, a full Unix backlog (EAGAIN): as io_uring
            // reports it, a completion.
            Err(e) => {
                let key = self.register(fd, token, Kind::Connecting, options)?;
                self.fail_connect(key, e.into());
            }
        }
        Ok(())
    }

    pub(super) fn watch(&mut self, fd: OwnedFd, token: Token) -> io::Result<()> {
        self.register(fd, token, Kind::Watch, SocketOptions::default()).map(drop)
    }

    pub(super) fn rearm_watch(&mut self, token: Token) -> io::Result<()> {
        let (key, socket) = self.slab.by_token_mut(token).ok_or_else(unknown)?;
        if socket.kind != Kind::Watch {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a watch"));
        }
        socket.watch_armed = true;
        self.update_interest(key)
    }

    fn register(
        &mut self,
        fd: OwnedFd,
        token: Token,
        kind: Kind,
        options: SocketOptions,
    ) -> io::Result<Key> {
        let chunk = options.effective_recv_buf_bytes()?;
        let key = self.slab.insert(
            token,
            Socket {
                token,
                fd,
                kind,
                options,
                chunk,
                out: Output::default(),
                flushed: 0,
                want_out: false,
                dirty: false,
                broken: false,
                eof: false,
                paused: false,
                deaf: false,
                held: Vec::new(),
                held_eof: false,
                watch_armed: kind == Kind::Watch,
                backing_off: false,
                accept_errors: 0,
                burst: 0,
                interest: None,
            },
        )?;
        if let Err(e) = self.update_interest(key) {
            self.slab.remove(key, token);
            return Err(e);
        }
        Ok(key)
    }

    pub(super) fn send(&mut self, token: Token, data: &[u8]) -> io::Result<()> {
        self.queue(token, Bytes::Copy(data))
    }

    pub(super) fn send_owned(&mut self, token: Token, data: Vec<u8>) -> io::Result<()> {
        self.queue(token, Bytes::Owned(data))
    }

    fn queue(&mut self, token: Token, bytes: Bytes<'_>) -> io::Result<()> {
        let (key, socket) = self.slab.by_token_mut(token).ok_or_else(unknown)?;
        if socket.out.queue(bytes, &mut self.spares, &mut socket.dirty) {
            self.dirty.push(key);
        }
        Ok(())
    }

    pub(super) fn pending(&self, token: Token) -> usize {
        self.slab.by_token(token).map_or(0, |(_, s)| s.out.pending())
    }

    pub(super) fn pause(&mut self, token: Token) -> io::Result<()> {
        let (key, socket) = self.slab.by_token_mut(token).ok_or_else(unknown)?;
        if !matches!(socket.kind, Kind::Stream | Kind::Connecting) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "only a connection pauses"));
        }
        socket.paused = true;
        self.update_interest(key)
    }

    pub(super) fn resume(&mut self, token: Token) -> io::Result<()> {
        let (key, socket) = self.slab.by_token_mut(token).ok_or_else(unknown)?;
        if !socket.paused || socket.deaf {
            return Ok(()); // discarded input stays discarded
        }
        socket.paused = false;
        // What was held goes first, ahead of anything still queued for this token.
        if socket.held_eof {
            socket.held_eof = false;
            self.ready.push_front((key, Completion::Closed { token }));
        }
        if !socket.held.is_empty() {
            let offset = self.arena_used;
            let end = offset + socket.held.len();
            reserve_arena(&mut self.arena, end.max(READ_BUDGET));
            self.arena[offset..end].copy_from_slice(&socket.held);
            self.arena_used = end;
            let buf = RecvBuf {
                id: 0,
                offset: offset as u32,
                len: socket.held.len() as u32,
                generation: self.epoch,
            };
            socket.held.clear();
            self.ready.push_front((key, Completion::Received { token, buf }));
        }
        self.update_interest(key)
    }

    pub(super) fn discard_input(&mut self, token: Token) -> io::Result<()> {
        self.pause(token)?;
        let (_, socket) = self.slab.by_token_mut(token).ok_or_else(unknown)?;
        socket.deaf = true;
        socket.held = Vec::new();
        socket.held_eof = false;
        Ok(())
    }

    pub(super) fn fd(&self, token: Token) -> Option<BorrowedFd<'_>> {
        self.slab.by_token(token).map(|(_, s)| s.fd.as_fd())
    }

    pub(super) fn close(&mut self, token: Token) {
        let Some(key) = self.slab.key(token) else { return };
        let Some(mut socket) = self.slab.remove(key, token) else { return };
        if socket.interest.is_some() {
            // Closing the fd removes it from the epoll set; delete first anyway so a dup'ed fd
            // elsewhere cannot keep reporting it.
            let _ = epoll::delete(&self.epoll, &socket.fd);
        }
        if matches!(socket.kind, Kind::Stream | Kind::Connecting) {
            // As io_uring does: the connection ends even if a copy of the fd lives elsewhere.
            let _ = rustix::net::shutdown(&socket.fd, rustix::net::Shutdown::Both);
        }
        socket.out.discard(&mut self.spares);
        // Completions already collected for it are recognised as stale by `next`.
    }

    pub(super) fn flush(&mut self) -> io::Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        std::mem::swap(&mut self.dirty, &mut self.dirty_scratch);
        for i in 0..self.dirty_scratch.len() {
            let key = self.dirty_scratch[i];
            self.flush_one(key);
        }
        self.dirty_scratch.clear();
        Ok(())
    }

    pub(super) fn poll(&mut self, timeout: Duration) -> io::Result<()> {
        if !self.ready.is_empty() {
            // A park gathered completions the lane has not handled yet: deliver them first
            // (their received bytes live in the arena, which must not be reset under them).
            return self.flush();
        }
        self.arena_used = 0;
        // Chunks of earlier passes are gone: reading one is a panic (see `data`).
        self.epoch = self.epoch.wrapping_add(1);
        let mut timeout = timeout;
        if !self.retry.is_empty() {
            timeout = timeout.min(self.retry_due());
        }
        self.flush()?;
        // Sends just completed are work: report them without waiting.
        if !self.ready.is_empty() {
            timeout = Duration::ZERO;
        }
        let ts = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        self.events.clear();
        match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut self.events), Some(&ts))
        {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        for i in 0..self.events.len() {
            // Copy the fields out: the event struct is packed on some targets.
            let (flags, data) = (self.events[i].flags, self.events[i].data);
            let key = Key::from_u64(data.u64());
            let Some(socket) = self.slab.get_mut(key) else { continue };
            match socket.kind {
                Kind::Listener => self.accept(key),
                Kind::Connecting => self.connected(key),
                Kind::Watch => {
                    // One-shot: epoll disabled it; it stays in the set, disarmed.
                    socket.watch_armed = false;
                    socket.interest = Some(epoll::EventFlags::empty());
                    let token = socket.token;
                    self.ready.push_back((key, Completion::Readable { token }));
                }
                Kind::Stream => {
                    // A hang-up or an error with output waiting: the send says which (and a
                    // failed one stops the output, so the event is not reported forever).
                    let writable =
                        epoll::EventFlags::OUT | epoll::EventFlags::HUP | epoll::EventFlags::ERR;
                    if flags.intersects(writable) && socket.want_out {
                        self.flush_one(key);
                    }
                    let readable = epoll::EventFlags::IN
                        | epoll::EventFlags::RDHUP
                        | epoll::EventFlags::HUP
                        | epoll::EventFlags::ERR;
                    if flags.intersects(readable) {
                        self.read(key);
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn next(&mut self) -> Option<Completion> {
        while let Some((key, c)) = self.ready.pop_front() {
            // Closed since it was collected: nobody gets it.
            let Some(socket) = self.slab.get_mut(key) else { continue };
            if socket.paused {
                match c {
                    Completion::Received { buf, .. } => {
                        if !socket.deaf {
                            let bytes =
                                &self.arena[buf.offset as usize..(buf.offset + buf.len) as usize];
                            socket.held.extend_from_slice(bytes);
                        }
                        continue;
                    }
                    Completion::Closed { .. } => {
                        socket.held_eof = !socket.deaf;
                        continue;
                    }
                    _ => {}
                }
            }
            return Some(c);
        }
        None
    }

    pub(super) fn data(&self, buf: &RecvBuf) -> &[u8] {
        assert!(
            buf.generation == self.epoch,
            "a received chunk read after it was recycled (the arena of an earlier pass)"
        );
        &self.arena[buf.offset as usize..(buf.offset + buf.len) as usize]
    }

    pub(super) fn recycle(&mut self, _buf: RecvBuf) {
        // The arena is reset at the next poll.
    }

    pub(super) fn registered(&self) -> usize {
        self.slab.indexed()
    }

    pub(super) fn accept_errors(&self, token: Token) -> u64 {
        self.slab.by_token(token).map_or(0, |(_, s)| s.accept_errors)
    }

    pub(super) fn output_memory(&self) -> usize {
        self.spares.memory() + self.slab.iter().map(|(_, s)| s.out.memory()).sum::<usize>()
    }

    pub(super) fn operations_in_flight(&self) -> usize {
        0
    }

    /// Listeners whose back-off is over accept again; returns how long until the next one.
    fn retry_due(&mut self) -> Duration {
        let now = Instant::now();
        let mut next = Duration::MAX;
        let mut i = 0;
        while i < self.retry.len() {
            let (key, at) = self.retry[i];
            if at <= now {
                self.retry.swap_remove(i);
                if let Some(socket) = self.slab.get_mut(key) {
                    socket.backing_off = false;
                    if let Err(error) = self.update_interest(key) {
                        tracing::warn!(%error, "cannot watch a listener again");
                    }
                }
            } else {
                next = next.min(at - now);
                i += 1;
            }
        }
        next
    }

    /// Registers, changes or removes the descriptor's interest to match its state.
    fn update_interest(&mut self, key: Key) -> io::Result<()> {
        let Some(socket) = self.slab.get_mut(key) else { return Ok(()) };
        let want = socket.desired();
        let data = epoll::EventData::new_u64(key.to_u64());
        match socket.interest {
            Some(current) if current == want => return Ok(()),
            None if want.is_empty() => return Ok(()),
            Some(_) if want.is_empty() => {
                epoll::delete(&self.epoll, &socket.fd)?;
                socket.interest = None;
                return Ok(());
            }
            Some(_) => epoll::modify(&self.epoll, &socket.fd, data, want)?,
            None => epoll::add(&self.epoll, &socket.fd, data, want)?,
        }
        socket.interest = Some(want);
        Ok(())
    }

    fn accept(&mut self, key: Key) {
        loop {
            let Some(listener) = self.slab.get_mut(key) else { return };
            let token = listener.token;
            let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
            match rustix::net::accept_with(&listener.fd, flags) {
                Ok(fd) => {
                    if listener.burst > 0 {
                        tracing::info!(listener = ?token, failed = listener.burst, "accepting again");
                        listener.burst = 0;
                    }
                    let fd = Incoming::new(fd, listener.options);
                    self.ready.push_back((key, Completion::Accepted { listener: token, fd }));
                }
                Err(rustix::io::Errno::AGAIN) => return,
                // The peer gave up before we accepted, or a signal: try the next one.
                Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
                Err(e) => {
                    listener.accept_errors += 1;
                    if listener.burst == 0 {
                        let error = io::Error::from(e);
                        tracing::warn!(listener = ?token, %error, "accept failed; retrying every {ACCEPT_BACKOFF:?} (logged once per burst)");
                    }
                    listener.burst += 1;
                    listener.backing_off = true;
                    self.retry.push((key, Instant::now() + ACCEPT_BACKOFF));
                    if let Err(error) = self.update_interest(key) {
                        tracing::warn!(%error, "cannot pause a failing listener");
                    }
                    return;
                }
            }
        }
    }

    /// A connecting socket became writable (or failed): the connect's outcome.
    fn connected(&mut self, key: Key) {
        let Some(socket) = self.slab.get_mut(key) else { return };
        match rustix::net::sockopt::socket_error(&socket.fd) {
            Ok(Ok(())) => {
                socket.kind = Kind::Stream;
                let token = socket.token;
                let queued = !socket.out.is_empty();
                self.ready.push_back((key, Completion::Connected { token }));
                if let Err(e) = self.update_interest(key) {
                    self.ready.push_back((key, Completion::Failed { token, error: e }));
                }
                if queued {
                    self.flush_one(key);
                }
            }
            Ok(Err(e)) | Err(e) => self.fail_connect(key, e.into()),
        }
    }

    fn fail_connect(&mut self, key: Key, error: io::Error) {
        let Some(socket) = self.slab.get_mut(key) else { return };
        socket.broken = true;
        let token = socket.token;
        self.ready.push_back((key, Completion::Failed { token, error }));
        let _ = self.update_interest(key);
    }

    fn read(&mut self, key: Key) {
        let Some(socket) = self.slab.get_mut(key) else { return };
        if socket.eof || socket.paused {
            return;
        }
        reserve_arena(&mut self.arena, READ_BUDGET);
        let token = socket.token;
        let mut taken = 0;
        while taken < READ_PER_EVENT.max(socket.chunk) {
            let room = READ_BUDGET.saturating_sub(self.arena_used).min(socket.chunk);
            if room == 0 {
                return; // level-triggered: reported again at the next poll
            }
            let offset = self.arena_used;
            let into = &mut self.arena[offset..offset + room];
            match rustix::net::recv(&socket.fd, into, RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    socket.eof = true;
                    self.ready.push_back((key, Completion::Closed { token }));
                    break;
                }
                Ok((n, _)) => {
                    self.arena_used += n;
                    taken += n;
                    let buf = RecvBuf {
                        id: 0,
                        offset: offset as u32,
                        len: n as u32,
                        generation: self.epoch,
                    };
                    self.ready.push_back((key, Completion::Received { token, buf }));
                    if n < room {
                        return; // drained
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::CONNRESET) => {
                    socket.eof = true;
                    self.ready.push_back((key, Completion::Closed { token }));
                    break;
                }
                Err(e) => {
                    // Reading is over for this socket (the error would be reported again
                    // at every poll).
                    socket.eof = true;
                    self.ready.push_back((key, Completion::Failed { token, error: e.into() }));
                    break;
                }
            }
        }
        if self.slab.get(key).is_some_and(|s| s.eof) {
            if let Err(error) = self.update_interest(key) {
                self.ready.push_back((key, Completion::Failed { token, error }));
            }
        }
    }

    /// Writes the socket's queued output until it is all written or the socket is full.
    fn flush_one(&mut self, key: Key) {
        let Some(socket) = self.slab.get_mut(key) else { return };
        socket.dirty = false;
        if socket.broken || socket.kind != Kind::Stream {
            return;
        }
        let token = socket.token;
        loop {
            let Some(bytes) = socket.out.unsent().next() else { break };
            let len = bytes.len();
            let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
            match rustix::net::send(&socket.fd, bytes, flags) {
                Ok(n) if n == len => socket.flushed += socket.out.finish_front(&mut self.spares),
                Ok(n) => {
                    socket.out.advance(n);
                    socket.flushed += n;
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {
                    if !socket.want_out {
                        socket.want_out = true;
                        if let Err(error) = self.update_interest(key) {
                            self.ready.push_back((key, Completion::Failed { token, error }));
                        }
                    }
                    return;
                }
                Err(e) => {
                    socket.broken = true;
                    self.ready.push_back((key, Completion::Failed { token, error: e.into() }));
                    let _ = self.update_interest(key);
                    return;
                }
            }
        }
        if socket.flushed > 0 {
            let bytes = std::mem::take(&mut socket.flushed);
            self.ready.push_back((key, Completion::Sent { token, bytes }));
        }
        if socket.want_out {
            socket.want_out = false;
            let _ = self.update_interest(key);
        }
    }
}

impl std::fmt::Debug for PollReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollReactor")
            .field("registered", &self.slab.indexed())
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod review_tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    /// `RecvBuf`'s docs (reactor/mod.rs): "reading one that was recycled is a panic". On the
    /// epoll backend it is not: a chunk kept past its recycle reads whatever the arena holds
    /// now (here: the next receive's bytes).
    #[test]
    fn poll_a_chunk_read_after_it_was_recycled_is_a_panic() {
        let outcome = std::thread::spawn(|| {
            let mut r = PollReactor::new().unwrap();
            let (ours, mut peer) = UnixStream::pair().unwrap();
            r.open(OwnedFd::from(ours), Token(1), SocketOptions::default()).unwrap();
            let recv = |r: &mut PollReactor| loop {
                r.poll(Duration::from_millis(5)).unwrap();
                if let Some(Completion::Received { buf, .. }) = r.next() {
                    return buf;
                }
            };
            peer.write_all(b"hello").unwrap();
            let old = recv(&mut r);
            assert_eq!(r.data(&old), b"hello");
            r.recycle(old);
            peer.write_all(b"world").unwrap();
            let new = recv(&mut r);
            let stale = r.data(&old).to_vec();
            r.recycle(new);
            stale
        })
        .join();
        if let Ok(stale) = outcome {
            panic!("a recycled chunk read {:?}", String::from_utf8_lossy(&stale));
        }
    }

    /// Counterpart of uring's stash growth test: the same pause/resume-per-pass agent on
    /// epoll holds at most one read's worth aside (sound).
    #[test]
    fn poll_a_pause_resume_per_pass_agent_holds_a_bounded_amount() {
        let mut r = PollReactor::new().unwrap();
        let (ours, mut peer) = UnixStream::pair().unwrap();
        r.open(OwnedFd::from(ours), Token(1), SocketOptions::default()).unwrap();
        let total: usize = 48 << 20;
        let writer = std::thread::spawn(move || {
            let block: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
            let mut sent = 0;
            while sent < total && peer.write_all(&block).is_ok() {
                sent += block.len();
            }
            peer
        });
        let (mut got, mut peak, mut in_order) = (0usize, 0usize, true);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) && got < total {
            r.poll(Duration::from_millis(1)).unwrap();
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
            r.resume(Token(1)).unwrap();
            r.flush().unwrap();
            let (_, s) = r.slab.by_token(Token(1)).unwrap();
            peak = peak.max(s.held.capacity());
        }
        eprintln!("poll: {got} bytes taken, peak held {peak} bytes, in order {in_order}");
        assert!(in_order);
        r.close(Token(1));
        drop(writer.join().unwrap());
        assert!(peak <= 1 << 20);
    }
}
