//! The reactor a lane polls: sockets without blocking syscalls on the lane.
//!
//! One reactor per lane, used only by that lane's thread (io_uring's single-issuer model).
//! Operations are queued and flushed once per [`poll`](Reactor::poll) (sends are batched: every
//! connection's queued bytes go out in one submission per pass), and their results come back as
//! [`Completion`]s that the lane routes to the agent owning the token.
//!
//! Two backends with one interface: io_uring (multishot accept, multishot recv into a provided
//! buffer ring, batched sends) and a poll fallback on epoll for kernels or sandboxes without
//! io_uring, or when the config says `reactor = "poll"`. [`ReactorChoice::Auto`] tries io_uring
//! first and falls back, and [`Reactor::kind`] says which one runs.
//!
//! The reactor owns the file descriptors registered with it ([`listen`](Reactor::listen),
//! [`open`](Reactor::open)) and closes them on [`close`](Reactor::close) or drop, so agents never
//! hold raw descriptors.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

mod poll;
mod uring;

pub use poll::PollReactor;
pub use uring::UringReactor;

/// Identifies one registered socket: chosen by the agent (through [`super::Ctx::token`]), echoed
/// in every completion for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

/// Which backend a reactor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReactorKind {
    /// io_uring.
    IoUring,
    /// epoll readiness plus non-blocking syscalls.
    Poll,
}

impl ReactorKind {
    /// Name for logs, status and metrics: `io_uring` or `poll`.
    pub fn name(self) -> &'static str {
        match self {
            ReactorKind::IoUring => "io_uring",
            ReactorKind::Poll => "poll",
        }
    }
}

/// Which backend to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReactorChoice {
    /// io_uring if it can be set up here, else poll.
    Auto,
    /// io_uring or an error.
    IoUring,
    /// poll.
    Poll,
}

/// A received chunk, valid until the lane recycles it after the completion was handled. Read it
/// with [`Reactor::data`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvBuf {
    pub(super) id: u32,
    pub(super) offset: u32,
    pub(super) len: u32,
}

impl RecvBuf {
    /// Bytes received.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether no byte was received (never the case for a delivered chunk).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The result of an operation, for the agent owning `token`.
#[derive(Debug)]
pub enum Completion {
    /// A listener accepted a connection. The new socket is the agent's to [`Reactor::open`] (or
    /// drop, refusing it).
    Accepted {
        /// The listener's token.
        listener: Token,
        /// The connected socket (non-blocking, close-on-exec).
        fd: OwnedFd,
    },
    /// Bytes arrived on a socket.
    Received {
        /// The socket's token.
        token: Token,
        /// Where the bytes are.
        buf: RecvBuf,
    },
    /// Queued bytes were fully written.
    Sent {
        /// The socket's token.
        token: Token,
        /// How many bytes the flush wrote.
        bytes: usize,
    },
    /// End of input: the peer closed or reset the connection, or only shut down its sending
    /// side (a half-close, after which it may still read what it is owed). No more data will
    /// come; sending is still possible until the agent closes the token.
    Closed {
        /// The socket's token.
        token: Token,
    },
    /// An operation failed; the socket should be closed.
    Failed {
        /// The socket's token.
        token: Token,
        /// What failed.
        error: io::Error,
    },
}

impl Completion {
    /// The token the completion is for.
    pub fn token(&self) -> Token {
        match *self {
            Completion::Accepted { listener, .. } => listener,
            Completion::Received { token, .. }
            | Completion::Sent { token, .. }
            | Completion::Closed { token }
            | Completion::Failed { token, .. } => token,
        }
    }
}

/// A lane's reactor: one of the two backends behind one interface.
#[derive(Debug)]
pub enum Reactor {
    /// io_uring backend (boxed: the ring state is large, and there is one per lane).
    Uring(Box<UringReactor>),
    /// epoll backend.
    Poll(PollReactor),
}

macro_rules! delegate {
    ($self:ident, $r:ident => $e:expr) => {
        match $self {
            Reactor::Uring($r) => $e,
            Reactor::Poll($r) => $e,
        }
    };
}

impl Reactor {
    /// Builds the backend `choice` asks for.
    pub fn new(choice: ReactorChoice) -> io::Result<Self> {
        match choice {
            ReactorChoice::Poll => Ok(Reactor::Poll(PollReactor::new()?)),
            ReactorChoice::IoUring => Ok(Reactor::Uring(Box::new(UringReactor::new()?))),
            ReactorChoice::Auto => match UringReactor::new() {
                Ok(r) => Ok(Reactor::Uring(Box::new(r))),
                Err(e) => {
                    tracing::info!("io_uring unavailable ({e}); using the poll reactor");
                    Ok(Reactor::Poll(PollReactor::new()?))
                }
            },
        }
    }

    /// Whether the backend `choice` can be set up here, checked on a short-lived thread: a
    /// ring's teardown queues kernel work on the thread that created it, which interrupts that
    /// thread's next timed blocking syscall with EINTR, so never probe on a thread that then
    /// does blocking socket I/O.
    pub fn probe(choice: ReactorChoice) -> io::Result<ReactorKind> {
        std::thread::spawn(move || Reactor::new(choice).map(|r| r.kind()))
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("reactor probe thread panicked")))
    }

    /// Which backend runs.
    pub fn kind(&self) -> ReactorKind {
        match self {
            Reactor::Uring(_) => ReactorKind::IoUring,
            Reactor::Poll(_) => ReactorKind::Poll,
        }
    }

    /// Registers a listening socket; every accepted connection completes as
    /// [`Completion::Accepted`] until the listener is closed.
    pub fn listen(&mut self, listener: OwnedFd, token: Token) -> io::Result<()> {
        delegate!(self, r => r.listen(listener, token))
    }

    /// Registers a connected stream socket: received bytes complete as
    /// [`Completion::Received`] until the peer closes.
    pub fn open(&mut self, socket: OwnedFd, token: Token) -> io::Result<()> {
        delegate!(self, r => r.open(socket, token))
    }

    /// Queues `data` for the socket; flushed with every other queued send at the next poll.
    pub fn send(&mut self, token: Token, data: &[u8]) -> io::Result<()> {
        delegate!(self, r => r.send(token, data))
    }

    /// Bytes queued for the socket and not yet written (backpressure: stop producing above
    /// your limit).
    pub fn pending(&self, token: Token) -> usize {
        delegate!(self, r => r.pending(token))
    }

    /// Stops every operation on the socket and closes it. No completion for `token` follows,
    /// and output still queued for it is dropped: to close after a last message, wait for its
    /// [`Completion::Sent`] with [`pending`](Self::pending) at 0, then close.
    pub fn close(&mut self, token: Token) {
        delegate!(self, r => r.close(token))
    }

    /// Flushes queued operations and collects completions without blocking.
    pub fn poll(&mut self) -> io::Result<()> {
        delegate!(self, r => r.poll(Duration::ZERO))
    }

    /// Like [`poll`](Self::poll) but waits up to `timeout` for something to complete: the
    /// parking step of an idle lane, woken by I/O.
    pub fn park(&mut self, timeout: Duration) -> io::Result<()> {
        delegate!(self, r => r.poll(timeout))
    }

    /// The next completion collected by the last poll.
    pub fn next_completion(&mut self) -> Option<Completion> {
        delegate!(self, r => r.next())
    }

    /// The bytes of a received chunk.
    pub fn data(&self, buf: &RecvBuf) -> &[u8] {
        delegate!(self, r => r.data(buf))
    }

    /// Gives a received chunk's memory back (the lane does this after the completion).
    pub fn recycle(&mut self, buf: RecvBuf) {
        delegate!(self, r => r.recycle(buf))
    }

    /// Sockets registered now.
    pub fn registered(&self) -> usize {
        delegate!(self, r => r.registered())
    }
}
