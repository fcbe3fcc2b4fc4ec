//! The epoll backend: readiness from `epoll_wait`, then non-blocking `accept4`, `recv` and
//! `send`. Level-triggered, so a socket not fully drained in one pass (the per-pass read budget)
//! is simply reported again.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::event::epoll;
use rustix::net::{RecvFlags, SendFlags, SocketFlags};

use super::{Completion, RecvBuf, Token};

/// Most bytes read from all sockets in one poll: bounds the arena and keeps one busy peer from
/// starving the lane's other work.
const READ_BUDGET: usize = 1 << 20;
/// Most bytes read from one socket per readiness event.
const READ_CHUNK: usize = 64 * 1024;
/// epoll events taken per wait.
const EVENTS: usize = 256;

/// The epoll reactor. See the [module](super) docs for the interface.
pub struct PollReactor {
    epoll: OwnedFd,
    sockets: HashMap<Token, Socket>,
    ready: VecDeque<Completion>,
    events: Vec<epoll::Event>,
    /// Received bytes of the current poll; `RecvBuf` offsets point here.
    arena: Vec<u8>,
    /// Sockets with queued output, flushed at the next poll.
    dirty: Vec<Token>,
}

#[derive(Debug)]
struct Socket {
    fd: OwnedFd,
    listener: bool,
    out: Vec<u8>,
    /// Already written prefix of `out`.
    written: usize,
    /// Registered for EPOLLOUT (the last flush hit a full socket buffer).
    want_out: bool,
}

impl PollReactor {
    /// A new epoll instance.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            sockets: HashMap::new(),
            ready: VecDeque::new(),
            events: Vec::with_capacity(EVENTS),
            arena: Vec::new(),
            dirty: Vec::new(),
        })
    }

    pub(super) fn listen(&mut self, listener: OwnedFd, token: Token) -> io::Result<()> {
        rustix::io::ioctl_fionbio(&listener, true)?;
        self.register(listener, token, true)
    }

    pub(super) fn open(&mut self, socket: OwnedFd, token: Token) -> io::Result<()> {
        rustix::io::ioctl_fionbio(&socket, true)?;
        self.register(socket, token, false)
    }

    fn register(&mut self, fd: OwnedFd, token: Token, listener: bool) -> io::Result<()> {
        if self.sockets.contains_key(&token) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "token already registered"));
        }
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        epoll::add(&self.epoll, &fd, epoll::EventData::new_u64(token.0), flags)?;
        self.sockets
            .insert(token, Socket { fd, listener, out: Vec::new(), written: 0, want_out: false });
        Ok(())
    }

    pub(super) fn send(&mut self, token: Token, data: &[u8]) -> io::Result<()> {
        let socket = self.sockets.get_mut(&token).ok_or_else(unknown)?;
        if socket.out.len() == socket.written {
            socket.out.clear();
            socket.written = 0;
            self.dirty.push(token);
        }
        socket.out.extend_from_slice(data);
        Ok(())
    }

    pub(super) fn pending(&self, token: Token) -> usize {
        self.sockets.get(&token).map_or(0, |s| s.out.len() - s.written)
    }

    pub(super) fn close(&mut self, token: Token) {
        if let Some(socket) = self.sockets.remove(&token) {
            // Closing the fd removes it from the epoll set; delete first anyway so a dup'ed fd
            // elsewhere cannot keep reporting it.
            let _ = epoll::delete(&self.epoll, &socket.fd);
        }
        self.ready.retain(|c| c.token() != token);
    }

    pub(super) fn poll(&mut self, timeout: Duration) -> io::Result<()> {
        if !self.ready.is_empty() {
            // A park gathered completions the lane has not handled yet: deliver them first
            // (their received bytes live in the arena, which must not be reset under them).
            self.flush();
            return Ok(());
        }
        self.arena.clear();
        self.flush();
        // Sends just completed are work: report them without waiting.
        let timeout = if self.ready.is_empty() { timeout } else { Duration::ZERO };
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
            let token = Token(data.u64());
            let Some(socket) = self.sockets.get(&token) else { continue };
            if socket.listener {
                self.accept(token);
                continue;
            }
            if flags.contains(epoll::EventFlags::OUT) {
                self.flush_one(token);
            }
            if flags.intersects(
                epoll::EventFlags::IN
                    | epoll::EventFlags::RDHUP
                    | epoll::EventFlags::HUP
                    | epoll::EventFlags::ERR,
            ) {
                self.read(token);
            }
        }
        Ok(())
    }

    pub(super) fn next(&mut self) -> Option<Completion> {
        self.ready.pop_front()
    }

    pub(super) fn data(&self, buf: &RecvBuf) -> &[u8] {
        &self.arena[buf.offset as usize..(buf.offset + buf.len) as usize]
    }

    pub(super) fn recycle(&mut self, _buf: RecvBuf) {
        // The arena is reset at the next poll.
    }

    pub(super) fn registered(&self) -> usize {
        self.sockets.len()
    }

    fn accept(&mut self, token: Token) {
        let Some(listener) = self.sockets.get(&token) else { return };
        loop {
            match rustix::net::accept_with(
                &listener.fd,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            ) {
                Ok(fd) => self.ready.push_back(Completion::Accepted { listener: token, fd }),
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return,
                // The peer gave up before we accepted: try the next one.
                Err(rustix::io::Errno::CONNABORTED) => continue,
                Err(e) => {
                    self.ready.push_back(Completion::Failed { token, error: e.into() });
                    return;
                }
            }
        }
    }

    fn read(&mut self, token: Token) {
        let Some(socket) = self.sockets.get(&token) else { return };
        let budget = READ_BUDGET.saturating_sub(self.arena.len()).min(READ_CHUNK);
        if budget == 0 {
            return; // level-triggered: reported again at the next poll
        }
        let offset = self.arena.len();
        self.arena.resize(offset + budget, 0);
        let result = rustix::net::recv(&socket.fd, &mut self.arena[offset..], RecvFlags::DONTWAIT);
        match result {
            Ok((0, _)) => {
                self.arena.truncate(offset);
                self.ready.push_back(Completion::Closed { token });
            }
            Ok((n, _)) => {
                self.arena.truncate(offset + n);
                let buf = RecvBuf { id: 0, offset: offset as u32, len: n as u32 };
                self.ready.push_back(Completion::Received { token, buf });
            }
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => self.arena.truncate(offset),
            Err(rustix::io::Errno::CONNRESET) => {
                self.arena.truncate(offset);
                self.ready.push_back(Completion::Closed { token });
            }
            Err(e) => {
                self.arena.truncate(offset);
                self.ready.push_back(Completion::Failed { token, error: e.into() });
            }
        }
    }

    /// Writes every socket's queued output (one syscall each), the batched part of a poll.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for token in dirty.drain(..) {
            self.flush_one(token);
        }
        self.dirty = dirty;
    }

    fn flush_one(&mut self, token: Token) {
        let Some(socket) = self.sockets.get_mut(&token) else { return };
        let before = socket.written;
        while socket.written < socket.out.len() {
            let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
            match rustix::net::send(&socket.fd, &socket.out[socket.written..], flags) {
                Ok(n) => socket.written += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {
                    if !socket.want_out {
                        socket.want_out = true;
                        let flags = epoll::EventFlags::IN
                            | epoll::EventFlags::RDHUP
                            | epoll::EventFlags::OUT;
                        let data = epoll::EventData::new_u64(token.0);
                        if let Err(e) = epoll::modify(&self.epoll, &socket.fd, data, flags) {
                            self.ready.push_back(Completion::Failed { token, error: e.into() });
                        }
                    }
                    return;
                }
                Err(e) => {
                    self.ready.push_back(Completion::Failed { token, error: e.into() });
                    return;
                }
            }
        }
        let bytes = socket.written - before;
        socket.out.clear();
        socket.written = 0;
        if socket.want_out {
            socket.want_out = false;
            let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
            let _ =
                epoll::modify(&self.epoll, &socket.fd, epoll::EventData::new_u64(token.0), flags);
        }
        self.ready.push_back(Completion::Sent { token, bytes });
    }
}

impl std::fmt::Debug for PollReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollReactor")
            .field("sockets", &self.sockets.len())
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

fn unknown() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no socket registered under this token")
}
