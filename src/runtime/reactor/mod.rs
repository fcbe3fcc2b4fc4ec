//! The reactor a lane polls: sockets and other descriptors without blocking syscalls on the
//! lane.
//!
//! One reactor per lane, used only by that lane's thread (io_uring's single-issuer model).
//! Agents register descriptors under a [`Token`] and ask for operations; the results come back
//! as [`Completion`]s, which the lane routes to the agent owning the token.
//!
//! | operation | registers | completions |
//! |---|---|---|
//! | [`listen`](Reactor::listen) / [`listen_with`](Reactor::listen_with) | a listening socket | [`Accepted`](Completion::Accepted), one per connection, until closed |
//! | [`open`](Reactor::open) / [`open_with`](Reactor::open_with) | a connected stream socket | [`Received`](Completion::Received) until [`Closed`](Completion::Closed) |
//! | [`connect`](Reactor::connect) / [`connect_with`](Reactor::connect_with) | a new socket connecting to a TCP or Unix address | [`Connected`](Completion::Connected) or [`Failed`](Completion::Failed), then as `open` |
//! | [`watch`](Reactor::watch) | any pollable descriptor (pidfd, eventfd, ...) | one [`Readable`](Completion::Readable) per [`rearm_watch`](Reactor::rearm_watch) |
//! | [`send`](Reactor::send) / [`send_owned`](Reactor::send_owned) | | [`Sent`](Completion::Sent) when a batch is written |
//! | [`pause`](Reactor::pause) / [`resume`](Reactor::resume) | | none while paused |
//! | [`close`](Reactor::close) | releases the descriptor | none after it |
//!
//! Timers are not the reactor's: they belong to the lane ([`super::Ctx::timer`]), which bounds
//! its park by the earliest deadline and delivers [`Completion::Timer`].
//!
//! Operations are queued and handed to the kernel in one batch: the lane calls
//! [`flush`](Reactor::flush) at the end of every pass (so a reply produced in a pass is
//! submitted in that pass), and [`poll`](Reactor::poll) flushes too before it collects
//! completions.
//!
//! Two backends with one interface: io_uring (multishot accept, multishot recv into provided
//! buffer rings, linked sends, one-shot polls) and a poll fallback on epoll for kernels or
//! sandboxes without io_uring, or when the config says `reactor = "poll"`.
//! [`ReactorChoice::Auto`] tries io_uring first and falls back, and [`Reactor::kind`] says which
//! one runs. Both behave the same as far as an agent can tell; where the kernel allows a
//! difference (how many bytes one [`Received`](Completion::Received) carries), the docs say so.
//!
//! The reactor owns the descriptors registered with it and closes them on
//! [`close`](Reactor::close) or drop, so agents never hold raw descriptors; [`Reactor::fd`]
//! lends one (to read an eventfd, say).
//!
//! Memory: a registration costs a slot (about 200 bytes) plus its queued output. Receive
//! buffers are shared by the lane: one group per distinct [`SocketOptions::recv_buf_bytes`]
//! (io_uring; 128 buffers of 16 KiB by default), or one read arena per poll (epoll). Output
//! buffers are at most 64 KiB each when copied, freed or kept as spares (at most 256 KiB per
//! lane) once written.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

mod out;
mod poll;
pub(crate) mod slab;
mod uring;

pub use poll::PollReactor;
pub use uring::UringReactor;

/// Identifies one registration: chosen by the agent (through [`super::Ctx::token`]), echoed in
/// every completion for it.
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

/// Switches of the io_uring backend, for A/B measurements (the poll backend ignores them). Both
/// default to off; the config keys are `runtime.uring_defer_taskrun` and
/// `runtime.uring_skip_send_cqe`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UringOptions {
    /// `IORING_SETUP_DEFER_TASKRUN`: the kernel runs the ring's deferred work (completing
    /// receives, retrying sends) only when the lane enters it to collect completions, never in
    /// the middle of other syscalls. Fewer interruptions for a busy lane, possibly later
    /// completions for an idle one (the park enters the kernel, so it still wakes at once).
    pub defer_taskrun: bool,
    /// `IOSQE_CQE_SKIP_SUCCESS` on sends: when a connection's batch holds several buffers, they
    /// go out as one chain of linked sends of which only the last posts a completion (unless
    /// one fails), instead of one completion per buffer.
    pub skip_send_cqe: bool,
}

/// The backend to build and its options (a [`ReactorChoice`] converts into one with the default
/// options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReactorConfig {
    /// The backend.
    pub choice: ReactorChoice,
    /// io_uring switches.
    pub uring: UringOptions,
}

impl From<ReactorChoice> for ReactorConfig {
    fn from(choice: ReactorChoice) -> Self {
        ReactorConfig { choice, uring: UringOptions::default() }
    }
}

/// Receive options of a registered socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// The most bytes one [`Completion::Received`] carries: io_uring receives into buffers of
    /// this size (one buffer group per distinct size on the lane, created when first used:
    /// 128 buffers, fewer above 64 KiB so that a group stays within 8 MiB); epoll reads chunks
    /// of this size. Rounded up to a power of two; 1 KiB to 1 MiB. Default 16 KiB.
    pub recv_buf_bytes: usize,
}

impl SocketOptions {
    /// The default receive buffer size.
    pub const DEFAULT_RECV_BUF_BYTES: usize = 16 * 1024;
    /// The smallest receive buffer size.
    pub const MIN_RECV_BUF_BYTES: usize = 1024;
    /// The largest receive buffer size.
    pub const MAX_RECV_BUF_BYTES: usize = 1024 * 1024;

    /// The size receives use: `recv_buf_bytes` rounded up to a power of two, or an error if it
    /// is out of range.
    pub fn effective_recv_buf_bytes(&self) -> io::Result<usize> {
        let n = self.recv_buf_bytes;
        if !(Self::MIN_RECV_BUF_BYTES..=Self::MAX_RECV_BUF_BYTES).contains(&n) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "recv_buf_bytes: expected {}..={}, got {n}",
                    Self::MIN_RECV_BUF_BYTES,
                    Self::MAX_RECV_BUF_BYTES
                ),
            ));
        }
        Ok(n.next_power_of_two())
    }
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions { recv_buf_bytes: Self::DEFAULT_RECV_BUF_BYTES }
    }
}

/// A connection a listener handed out, carrying its listener's [`SocketOptions`] so that
/// [`Reactor::open`] registers it with them. Convert it into an [`OwnedFd`] to use it elsewhere;
/// drop it to refuse the connection.
#[derive(Debug)]
pub struct Incoming {
    fd: OwnedFd,
    options: SocketOptions,
}

impl Incoming {
    /// A socket with the options it should be opened with.
    pub fn new(fd: OwnedFd, options: SocketOptions) -> Self {
        Incoming { fd, options }
    }

    /// The options [`Reactor::open`] uses for it.
    pub fn options(&self) -> SocketOptions {
        self.options
    }

    /// The socket.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl From<OwnedFd> for Incoming {
    /// A socket with the default options.
    fn from(fd: OwnedFd) -> Self {
        Incoming { fd, options: SocketOptions::default() }
    }
}

impl From<Incoming> for OwnedFd {
    fn from(incoming: Incoming) -> Self {
        incoming.fd
    }
}

impl AsFd for Incoming {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Incoming {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Where [`Reactor::connect`] connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectAddr {
    /// A TCP address (IPv4 or IPv6).
    Tcp(SocketAddr),
    /// A Unix stream socket at a path.
    Unix(PathBuf),
}

impl From<SocketAddr> for ConnectAddr {
    fn from(addr: SocketAddr) -> Self {
        ConnectAddr::Tcp(addr)
    }
}

/// The process at the other end of a Unix socket, as the kernel recorded it when the connection
/// was made (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id, as this process's pid namespace sees it.
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// A received chunk, valid until the lane recycles it after the completion was handled. Read it
/// with [`Reactor::data`].
///
/// A `RecvBuf` is a handle, not a borrow: recycling one twice, or one whose memory was
/// recycled and received into again, does nothing (the chunk's generation no longer matches),
/// and reading one that was recycled is a panic, never a read of memory the kernel may be
/// writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvBuf {
    pub(super) id: u32,
    pub(super) offset: u32,
    pub(super) len: u32,
    /// io_uring: which lending of the buffer this chunk is (0 for the epoll backend, whose
    /// chunks live in an arena that no kernel writes into).
    pub(super) generation: u32,
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
    /// A listener accepted a connection. The new socket is the agent's to [`Reactor::open`]
    /// (which applies the listener's options) or to drop, refusing it.
    ///
    /// A listener never fails: accept errors (EMFILE, ENOBUFS, ...) are counted
    /// ([`Reactor::accept_errors`]), logged once per burst, and accepting resumes after a short
    /// back-off.
    Accepted {
        /// The listener's token.
        listener: Token,
        /// The connected socket (non-blocking, close-on-exec).
        fd: Incoming,
    },
    /// An outbound connection ([`Reactor::connect`]) is established: it receives from now on
    /// and sends what was queued before.
    Connected {
        /// The socket's token.
        token: Token,
    },
    /// Bytes arrived on a socket.
    Received {
        /// The socket's token.
        token: Token,
        /// Where the bytes are.
        buf: RecvBuf,
    },
    /// Queued bytes were written: a batch of them (what one flush handed to the kernel, which
    /// may be less than all that is queued now: see [`Reactor::pending`]).
    Sent {
        /// The socket's token.
        token: Token,
        /// How many bytes the batch wrote.
        bytes: usize,
    },
    /// End of input: the peer closed or reset the connection, or only shut down its sending
    /// side (a half-close, after which it may still read what it is owed). No more data will
    /// come, and the socket costs no CPU while it stays open; sending is still possible until
    /// the agent closes the token.
    Closed {
        /// The socket's token.
        token: Token,
    },
    /// A watched descriptor is readable ([`Reactor::watch`]). One per arming: call
    /// [`Reactor::rearm_watch`] for the next.
    Readable {
        /// The watch's token.
        token: Token,
    },
    /// A timer of the lane reached its deadline ([`super::Ctx::timer`]). Not from the reactor:
    /// the lane delivers it.
    Timer {
        /// The timer's token.
        token: Token,
    },
    /// An operation failed (a send, a connect, a watch); the registration stays until the
    /// agent closes it, which it should.
    Failed {
        /// The token.
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
            Completion::Connected { token }
            | Completion::Received { token, .. }
            | Completion::Sent { token, .. }
            | Completion::Closed { token }
            | Completion::Readable { token }
            | Completion::Timer { token }
            | Completion::Failed { token, .. } => token,
        }
    }
}

/// How long a listener waits after an accept error before it accepts again: EMFILE does not
/// spin the lane, and the listener recovers within this once descriptors are free.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(5);

/// A lane's reactor: one of the two backends behind one interface.
#[derive(Debug)]
pub enum Reactor {
    /// io_uring backend (boxed, as both are: the state is large, and there is one per lane).
    Uring(Box<UringReactor>),
    /// epoll backend.
    Poll(Box<PollReactor>),
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
    /// Builds the backend `config` asks for.
    pub fn new(config: impl Into<ReactorConfig>) -> io::Result<Self> {
        let config = config.into();
        match config.choice {
            ReactorChoice::Poll => Ok(Reactor::Poll(Box::new(PollReactor::new()?))),
            ReactorChoice::IoUring => {
                Ok(Reactor::Uring(Box::new(UringReactor::new(config.uring)?)))
            }
            ReactorChoice::Auto => match UringReactor::new(config.uring) {
                Ok(r) => Ok(Reactor::Uring(Box::new(r))),
                Err(e) => {
                    tracing::info!("io_uring unavailable ({e}); using the poll reactor");
                    Ok(Reactor::Poll(Box::new(PollReactor::new()?)))
                }
            },
        }
    }

    /// Whether the backend `config` asks for can be set up here, checked on a short-lived
    /// thread: a ring's teardown queues kernel work on the thread that created it, which
    /// interrupts that thread's next timed blocking syscall with EINTR, so never probe on a
    /// thread that then does blocking socket I/O.
    pub fn probe(config: impl Into<ReactorConfig>) -> io::Result<ReactorKind> {
        let config = config.into();
        std::thread::spawn(move || Reactor::new(config).map(|r| r.kind()))
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

    /// Registers a listening socket with the default [`SocketOptions`]; see
    /// [`listen_with`](Self::listen_with).
    pub fn listen(&mut self, listener: OwnedFd, token: Token) -> io::Result<()> {
        self.listen_with(listener, token, SocketOptions::default())
    }

    /// Registers a listening socket: every accepted connection completes as
    /// [`Completion::Accepted`], carrying `options` for its [`open`](Self::open), until the
    /// listener is closed.
    pub fn listen_with(
        &mut self,
        listener: OwnedFd,
        token: Token,
        options: SocketOptions,
    ) -> io::Result<()> {
        options.effective_recv_buf_bytes()?;
        delegate!(self, r => r.listen(listener, token, options))
    }

    /// Registers a connected stream socket (an [`OwnedFd`], or an [`Incoming`] with its
    /// listener's options): received bytes complete as [`Completion::Received`] until the peer
    /// closes.
    pub fn open(&mut self, socket: impl Into<Incoming>, token: Token) -> io::Result<()> {
        let incoming = socket.into();
        let options = incoming.options;
        self.open_with(incoming.fd, token, options)
    }

    /// [`open`](Self::open) with explicit options.
    pub fn open_with(
        &mut self,
        socket: OwnedFd,
        token: Token,
        options: SocketOptions,
    ) -> io::Result<()> {
        options.effective_recv_buf_bytes()?;
        delegate!(self, r => r.open(socket, token, options))
    }

    /// Connects a new non-blocking socket to `addr` with the default options; see
    /// [`connect_with`](Self::connect_with).
    pub fn connect(&mut self, addr: &ConnectAddr, token: Token) -> io::Result<()> {
        self.connect_with(addr, token, SocketOptions::default())
    }

    /// Connects a new non-blocking socket to `addr`, registered under `token` at once: it
    /// completes as [`Completion::Connected`] (then behaves as an [`open`](Self::open)ed
    /// socket) or [`Completion::Failed`] (refused, unreachable, no such path: close it). Bytes
    /// sent before `Connected` are queued and go out once connected. An error return means
    /// nothing was registered (no socket could be made, or the token is taken).
    pub fn connect_with(
        &mut self,
        addr: &ConnectAddr,
        token: Token,
        options: SocketOptions,
    ) -> io::Result<()> {
        options.effective_recv_buf_bytes()?;
        delegate!(self, r => r.connect(addr, token, options))
    }

    /// Watches any pollable descriptor (a pidfd for a process's exit, an eventfd for wake-ups,
    /// a pipe) for readability: the next time it is readable, [`Completion::Readable`] comes,
    /// once. The watch then rests until [`rearm_watch`](Self::rearm_watch), so a descriptor
    /// that stays readable (an exited process's pidfd) never makes the lane spin. The reactor
    /// owns `fd` ([`fd`](Self::fd) lends it, to read it); [`close`](Self::close) releases it.
    pub fn watch(&mut self, fd: OwnedFd, token: Token) -> io::Result<()> {
        delegate!(self, r => r.watch(fd, token))
    }

    /// Arms a watch again after its [`Completion::Readable`] (read what made it readable
    /// first, or it fires again at once). Arming an armed watch does nothing.
    pub fn rearm_watch(&mut self, token: Token) -> io::Result<()> {
        delegate!(self, r => r.rearm_watch(token))
    }

    /// Queues a copy of `data` for the socket; written in order with everything queued before,
    /// handed to the kernel at the end of the pass ([`flush`](Self::flush)).
    pub fn send(&mut self, token: Token, data: &[u8]) -> io::Result<()> {
        delegate!(self, r => r.send(token, data))
    }

    /// Queues `data` itself, without copying it: the reactor keeps the `Vec` until it is
    /// written, then frees it (or keeps it as a spare if small). In order with
    /// [`send`](Self::send).
    pub fn send_owned(&mut self, token: Token, data: Vec<u8>) -> io::Result<()> {
        delegate!(self, r => r.send_owned(token, data))
    }

    /// Bytes queued for the socket and not yet written (backpressure: stop producing above
    /// your limit).
    pub fn pending(&self, token: Token) -> usize {
        delegate!(self, r => r.pending(token))
    }

    /// Stops receiving on a connection (credit-based backpressure): once this returns, no
    /// [`Completion::Received`] (nor [`Completion::Closed`]) for `token` is delivered until
    /// [`resume`](Self::resume). What the kernel had already received is held back, in order,
    /// copied aside (io_uring: the chunks completed before the cancelled receive stopped, their
    /// provided buffers given back at once, so paused connections never starve the lane's
    /// other receives; epoll: at most one read's worth); the rest stays in the socket's kernel
    /// buffer, so flow control slows the peer down. Sending goes on. Pausing a paused
    /// connection does nothing; only connections can be paused.
    pub fn pause(&mut self, token: Token) -> io::Result<()> {
        delegate!(self, r => r.pause(token))
    }

    /// Stops receiving on a connection for good and drops what was received and not yet
    /// delivered (a connection closing after its last replies: what its peer still sends is
    /// not read, and costs no buffer). Sending goes on; `resume` does nothing afterwards.
    pub fn discard_input(&mut self, token: Token) -> io::Result<()> {
        delegate!(self, r => r.discard_input(token))
    }

    /// Receives again after [`pause`](Self::pause): first what was held back, then the rest,
    /// in order, nothing lost.
    pub fn resume(&mut self, token: Token) -> io::Result<()> {
        delegate!(self, r => r.resume(token))
    }

    /// The credentials of the process at the other end of a registered Unix socket.
    pub fn peer_credentials(&self, token: Token) -> io::Result<PeerCred> {
        let fd = self.fd(token).ok_or_else(unknown)?;
        let cred = rustix::net::sockopt::socket_peercred(fd)?;
        Ok(PeerCred {
            pid: cred.pid.as_raw_nonzero().get() as u32,
            uid: cred.uid.as_raw(),
            gid: cred.gid.as_raw(),
        })
    }

    /// The descriptor registered under `token`, lent (to read an eventfd, ask a socket's
    /// address). Do not close it or change its flags: the reactor owns it.
    pub fn fd(&self, token: Token) -> Option<BorrowedFd<'_>> {
        delegate!(self, r => r.fd(token))
    }

    /// Stops every operation on the descriptor and closes it. No completion for `token`
    /// follows (completions already collected are dropped, their buffers recycled), and
    /// output still queued for it is dropped: to close after a last message, wait for its
    /// [`Completion::Sent`] with [`pending`](Self::pending) at 0, then close. A connection is
    /// shut down at once (its peer reads end of stream even while a send to it is stuck in the
    /// kernel); the descriptor is closed as soon as the kernel has let go of its operations.
    /// The token may be registered again right away.
    pub fn close(&mut self, token: Token) {
        delegate!(self, r => r.close(token))
    }

    /// Hands every queued operation to the kernel now (one submission): the lane calls it at
    /// the end of each pass, so replies go out in the pass that produced them.
    pub fn flush(&mut self) -> io::Result<()> {
        delegate!(self, r => r.flush())
    }

    /// Flushes queued operations and collects completions without blocking.
    pub fn poll(&mut self) -> io::Result<()> {
        delegate!(self, r => r.poll(Duration::ZERO))
    }

    /// Like [`poll`](Self::poll) but waits up to `timeout` for something to complete: the
    /// parking step of an idle lane, woken by I/O. (A listener backing off from accept errors
    /// shortens the wait to its retry.)
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

    /// Registrations now (sockets, listeners, watches; closed ones not counted).
    pub fn registered(&self) -> usize {
        delegate!(self, r => r.registered())
    }

    /// Accept errors of the listener `token` since it was registered (0 for anything else).
    pub fn accept_errors(&self, token: Token) -> u64 {
        delegate!(self, r => r.accept_errors(token))
    }

    /// Memory held for output, queued, in flight and spare (capacity, not length).
    pub fn output_memory(&self) -> usize {
        delegate!(self, r => r.output_memory())
    }

    /// Operations the kernel holds (io_uring submissions whose last completion has not come;
    /// always 0 for epoll): with nothing registered it returns to 0, or something leaked.
    pub fn operations_in_flight(&self) -> usize {
        delegate!(self, r => r.operations_in_flight())
    }
}

fn unknown() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "nothing registered under this token")
}
