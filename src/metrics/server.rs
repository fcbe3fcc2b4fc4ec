//! The Prometheus `/metrics` endpoint: one plain std thread polling up to
//! [`ServerConfig::max_connections`] non-blocking connections at once, each with its own
//! deadlines (for its request head, then for taking its whole response).

use core::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};

use super::exposition::{render, CONTENT_TYPE};
use super::reader::{CountersReader, Sample};
use super::MetricsError;

/// How often the server looks at its stop flag while it waits (for a connection or for bytes).
const POLL: Duration = Duration::from_millis(100);

/// How long an answered, half-closed connection is drained (what the client still sends is
/// read and dropped) before it is closed: closing with unread bytes sends a reset, which can
/// discard the response before the client has read it.
const LINGER: Duration = Duration::from_secs(2);

/// Bytes read from one connection per pass, at most (a client sending fast cannot keep the
/// thread on itself).
const READ_PER_PASS: usize = 64 * 1024;

/// The 503 for a connection that finds no slot.
const UNAVAILABLE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Limits of the `/metrics` server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Time a client has to send its whole request head; then it is dropped (with a 408).
    pub head_timeout: Duration,
    /// Time a client has to take the whole response, counted from when it is ready (not per
    /// write); then the connection is reset. Until then the server keeps what the socket has
    /// not taken (at most one response per connection) and serves the others meanwhile.
    pub write_timeout: Duration,
    /// Largest request head read, bytes; a longer one gets a 431.
    pub max_head_bytes: usize,
    /// Connections open at once (and accepted per pass). At the cap a new connection takes
    /// the place of one not being answered: the oldest already answered, else one still
    /// sending its head (which gets a 503), preferring one the client closed, then the oldest
    /// that sent nothing, then the oldest with part of a head; one whose whole request is in
    /// keeps its place. When only those and connections being answered are left, the new one
    /// is answered 503 and closed.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    /// 2 s to send the head, 5 s to take the response, 8 KiB of head, 32 connections.
    fn default() -> Self {
        Self {
            head_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(5),
            max_head_bytes: 8 * 1024,
            max_connections: 32,
        }
    }
}

/// Something that can list samples for a scrape.
///
/// Implemented by [`CountersReader`], by closures `FnMut(&mut Vec<Sample>)` (for extra series
/// that are not in the counters file; build their names with
/// [`series_name`](super::series_name)), and by a `Vec` of boxed sources (all of them, in order).
pub trait MetricsSource: Send + 'static {
    /// Appends the current samples to `out`.
    fn collect(&mut self, out: &mut Vec<Sample>);
}

impl MetricsSource for CountersReader {
    fn collect(&mut self, out: &mut Vec<Sample>) {
        self.snapshot_into(out);
    }
}

impl<F: FnMut(&mut Vec<Sample>) + Send + 'static> MetricsSource for F {
    fn collect(&mut self, out: &mut Vec<Sample>) {
        self(out);
    }
}

impl MetricsSource for Vec<Box<dyn MetricsSource>> {
    fn collect(&mut self, out: &mut Vec<Sample>) {
        for source in self {
            source.collect(out);
        }
    }
}

/// The running `/metrics` server. `GET /metrics` (or `HEAD`) answers 200 with the text
/// exposition format; any other path 404, another method 405, a malformed request 400, a head
/// over the size cap 431, a client too slow to send its head is dropped after a 408, and one too
/// slow to take its response is reset [`write_timeout`](ServerConfig::write_timeout) after it
/// was ready.
///
/// Stop it with [`stop`](Self::stop); dropping it stops it too.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `listen` and serves `source` with [`ServerConfig::default`].
    ///
    /// # Errors
    /// As [`start_with`](Self::start_with).
    pub fn start(listen: SocketAddr, source: impl MetricsSource) -> Result<Self, MetricsError> {
        Self::start_with(listen, source, ServerConfig::default())
    }

    /// Binds `listen` (port 0 picks a free port: see [`local_addr`](Self::local_addr)) and serves
    /// `source` on a new thread named `corelane-metrics`.
    ///
    /// # Errors
    /// [`MetricsError::Bind`] if the address cannot be bound, [`MetricsError::Spawn`] if the
    /// thread cannot be started.
    pub fn start_with(
        listen: SocketAddr,
        mut source: impl MetricsSource,
        config: ServerConfig,
    ) -> Result<Self, MetricsError> {
        let bind = |source| MetricsError::Bind { addr: listen, source };
        let listener = TcpListener::bind(listen).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("corelane-metrics".into())
            .spawn(move || serve(&listener, &mut source, config, &flag))
            .map_err(|source| MetricsError::Spawn { source })?;
        tracing::info!(%addr, "serving /metrics");
        Ok(Self { addr, stop, thread: Some(thread) })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, abandons the open connections, responses half sent included (within
    /// 100 ms), and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        // Relaxed: the flag carries no data; the join below is the synchronisation.
        self.stop.store(true, Ordering::Relaxed);
        // Wake the poll at once; if this fails the server still sees the flag within POLL.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), POLL);
        if thread.join().is_err() {
            tracing::error!("the /metrics server thread panicked");
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .field("running", &self.thread.is_some())
            .finish()
    }
}

/// Where to connect to reach a listener bound to `addr` (loopback for an unspecified address).
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// The server thread: one `poll` over the listener and every open connection, reading heads and
/// writing responses without ever blocking, so a client that sends nothing, trickles bytes or
/// does not read its response costs a slot, never the other clients' time.
fn serve(
    listener: &TcpListener,
    source: &mut dyn MetricsSource,
    config: ServerConfig,
    stop: &AtomicBool,
) {
    let mut server = Server::new(listener, config, source);
    while !stop.load(Ordering::Relaxed) {
        let listener_ready = server.wait();
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if listener_ready {
            server.accept_all();
        }
        server.advance_all();
    }
    // Abandoned: half-sent responses are reset rather than left queued in the kernel.
    for conn in &server.conns {
        if matches!(conn.state, State::Respond { .. }) {
            conn.abort();
        }
    }
}

/// The server thread's state, kept between passes so a pass allocates nothing in the usual case.
struct Server<'a> {
    listener: &'a TcpListener,
    config: ServerConfig,
    /// Open connections, oldest first.
    conns: Vec<Connection>,
    /// The poll set's allocation; empty between passes (see [`recycle`]).
    fds: Vec<PollFd<'static>>,
    /// What the last poll reported for each connection, in `conns` order.
    ready: Vec<PollFlags>,
    scrape: Scrape<'a>,
}

/// What answering a request needs besides the connection.
struct Scrape<'a> {
    source: &'a mut dyn MetricsSource,
    samples: Vec<Sample>,
    /// The response head being sent.
    header: Vec<u8>,
    /// The response body being sent.
    body: String,
}

impl<'a> Server<'a> {
    /// A server of `source` on `listener`, with room for the cap's connections.
    fn new(
        listener: &'a TcpListener,
        config: ServerConfig,
        source: &'a mut dyn MetricsSource,
    ) -> Self {
        Server {
            listener,
            config,
            conns: Vec::with_capacity(config.max_connections),
            fds: Vec::with_capacity(config.max_connections + 1),
            ready: Vec::with_capacity(config.max_connections),
            scrape: Scrape { source, samples: Vec::new(), header: Vec::new(), body: String::new() },
        }
    }

    /// Waits until the listener or a connection is ready (readable, or writable for one with a
    /// response to send), or [`POLL`] passes (the deadlines and the stop flag are looked at
    /// after every wait). Records each connection's readiness; returns whether the listener
    /// has connections to accept.
    fn wait(&mut self) -> bool {
        let timeout = Timespec { tv_sec: 0, tv_nsec: POLL.as_nanos() as _ };
        let mut fds = recycle(core::mem::take(&mut self.fds));
        fds.push(PollFd::new(self.listener, PollFlags::IN));
        fds.extend(self.conns.iter().map(|c| PollFd::new(&c.stream, c.interest())));
        self.ready.clear();
        let listener_ready = if poll(&mut fds, Some(&timeout)).is_ok() {
            self.ready.extend(fds[1..].iter().map(PollFd::revents));
            !fds[0].revents().is_empty()
        } else {
            // Interrupted (or out of memory): try everything; every step is non-blocking.
            std::thread::sleep(POLL);
            self.ready.resize(self.conns.len(), PollFlags::IN | PollFlags::OUT);
            true
        };
        self.fds = recycle(fds);
        for (conn, &ready) in self.conns.iter_mut().zip(&self.ready) {
            conn.ready = ready;
        }
        listener_ready
    }

    /// Accepts the pending connections, at most [`ServerConfig::max_connections`] per pass
    /// (the rest wait in the backlog for the next pass, so a connect flood cannot keep the
    /// thread from reading requests and looking at deadlines). At the cap a newcomer takes the
    /// place of a connection that is not being answered (see [`victim`](Self::victim)); if
    /// every connection is being answered or has its whole request in, the newcomer gets a
    /// 503 and is closed.
    fn accept_all(&mut self) {
        for conn in &mut self.conns {
            conn.peeked = false;
        }
        let mut accepted = 0;
        while accepted < self.config.max_connections.max(1) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    accepted += 1;
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.conns.len() >= self.config.max_connections {
                        let Some(victim) = self.victim() else {
                            refuse(&stream);
                            continue;
                        };
                        let old = self.conns.remove(victim);
                        tracing::debug!(peer = ?old.stream.peer_addr().ok(), "/metrics connection dropped for a newer one at the cap");
                        if matches!(old.state, State::Head(_)) {
                            refuse(&old.stream);
                        }
                    }
                    let head = Vec::with_capacity(self.config.max_head_bytes.max(1));
                    self.conns.push(Connection {
                        stream,
                        state: State::Head(head),
                        deadline: Instant::now() + self.config.head_timeout,
                        ready: PollFlags::empty(),
                        peeked: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "/metrics accept failed");
                    std::thread::sleep(POLL);
                    return;
                }
            }
        }
    }

    /// The connection to drop for a newcomer: the oldest draining one; else one still sending
    /// its head, after reading (without blocking, once per pass) what each of those has sent:
    /// one the client closed, else the oldest that sent nothing, else the oldest with part of
    /// a head. A connection whose whole head is in (it is answered this pass) or that is being
    /// answered is never dropped: `None` if only those are left.
    fn victim(&mut self) -> Option<usize> {
        if let Some(draining) = self.conns.iter().position(|c| matches!(c.state, State::Drain)) {
            return Some(draining);
        }
        let cap = self.config.max_head_bytes.max(1);
        let (mut silent, mut partial) = (None, None);
        for (i, conn) in self.conns.iter_mut().enumerate() {
            let State::Head(head) = &mut conn.state else { continue };
            if !core::mem::replace(&mut conn.peeked, true) {
                match read_head(&conn.stream, head, cap) {
                    Ok(false) => {}
                    // Closed by the client, or broken: no one waits for its answer.
                    Ok(true) | Err(_) => return Some(i),
                }
            }
            if head.is_empty() {
                silent.get_or_insert(i);
            } else if head_end(head).is_none() && head.len() < cap {
                partial.get_or_insert(i);
            }
        }
        silent.or(partial)
    }

    /// Moves every connection on as far as it goes without blocking; drops those done.
    fn advance_all(&mut self) {
        let config = self.config;
        let scrape = &mut self.scrape;
        self.conns.retain_mut(|conn| match conn.advance(Instant::now(), config, scrape) {
            Ok(Progress::Open) => true,
            Ok(Progress::Done) => false,
            Err(e) => {
                tracing::debug!(peer = ?conn.stream.peer_addr().ok(), error = %e, "/metrics connection ended");
                false
            }
        });
    }
}

/// An empty `Vec` with `fds`'s allocation, for borrows of another lifetime: the poll set is
/// rebuilt each pass from borrows of the connections, without allocating. (Collecting a
/// `vec::IntoIter` mapped to an element of the same size reuses its buffer.)
fn recycle<'b>(mut fds: Vec<PollFd<'_>>) -> Vec<PollFd<'b>> {
    fds.clear();
    fds.into_iter().map(|_| unreachable!("the vector is empty")).collect()
}

/// Answers a connection that gets no slot with a 503 (best effort: what the socket takes at
/// once), half-closes it, and reads what it has sent so far, so the close that follows sends a
/// FIN rather than a reset that could discard the 503.
fn refuse(stream: &TcpStream) {
    let _ = (&*stream).write(UNAVAILABLE);
    let _ = stream.shutdown(Shutdown::Write);
    let mut chunk = [0u8; 1024];
    let mut read = 0;
    while read < READ_PER_PASS {
        match (&*stream).read(&mut chunk) {
            Ok(n) if n > 0 => read += n,
            _ => break,
        }
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// `GET /metrics` (`head`: a `HEAD` request, so no body).
    Metrics { head: bool },
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line.
    Bad,
}

/// Where a connection stands after [`Connection::advance`].
enum Progress {
    /// Still reading, writing or draining, and within its deadline.
    Open,
    /// Finished, closed by the client, or out of time: drop it.
    Done,
}

struct Connection {
    stream: TcpStream,
    state: State,
    /// When the current state must be over: the head in, the response taken, the drain done.
    deadline: Instant,
    /// What the last poll reported for the socket.
    ready: PollFlags,
    /// Whether [`Server::victim`] read the socket in this accept pass.
    peeked: bool,
}

/// The steps of a connection.
enum State {
    /// Reading the request head (so far; never longer than `max_head_bytes`).
    Head(Vec<u8>),
    /// Sending the response: the bytes the socket has not taken yet, from `sent` on.
    Respond { rest: Vec<u8>, sent: usize },
    /// Answered and half-closed: reading and dropping what the client still sends until it
    /// closes or [`LINGER`] passes.
    Drain,
}

impl Connection {
    /// What to poll the socket for.
    fn interest(&self) -> PollFlags {
        match self.state {
            State::Head(_) | State::Drain => PollFlags::IN,
            State::Respond { .. } => PollFlags::OUT,
        }
    }

    /// Does what the socket is ready for (without blocking): reads the head and answers once it
    /// is complete, over the size cap (431) or past its deadline (408); writes what is left of
    /// a response, and closes a connection that has not taken it all by its deadline; drains.
    fn advance(
        &mut self,
        now: Instant,
        config: ServerConfig,
        scrape: &mut Scrape<'_>,
    ) -> io::Result<Progress> {
        let ready = core::mem::replace(&mut self.ready, PollFlags::empty());
        let readable = ready.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR);
        let writable = ready.intersects(PollFlags::OUT | PollFlags::HUP | PollFlags::ERR);
        match &mut self.state {
            State::Head(head) => {
                let cap = config.max_head_bytes.max(1);
                if readable && read_head(&self.stream, head, cap)? {
                    return Ok(Progress::Done);
                }
                if let Some(end) = head_end(head) {
                    let request = parse_request(&head[..end]);
                    self.answer(request, config, scrape)
                } else if head.len() >= cap {
                    self.respond(431, "Request Header Fields Too Large", "", config, scrape)
                } else if now >= self.deadline {
                    self.respond(408, "Request Timeout", "", config, scrape)
                } else {
                    Ok(Progress::Open)
                }
            }
            State::Respond { rest, sent } => {
                if writable {
                    *sent += write_some(&self.stream, &[&rest[*sent..]])?;
                    if *sent == rest.len() {
                        return self.finish();
                    }
                }
                if now >= self.deadline {
                    tracing::debug!(
                        peer = ?self.stream.peer_addr().ok(),
                        left = rest.len() - *sent,
                        "/metrics client did not take its response within the write timeout"
                    );
                    self.abort();
                    return Ok(Progress::Done);
                }
                Ok(Progress::Open)
            }
            State::Drain => {
                if readable {
                    let mut chunk = [0u8; 4096];
                    let mut read = 0;
                    while read < READ_PER_PASS {
                        match (&self.stream).read(&mut chunk) {
                            Ok(0) => return Ok(Progress::Done),
                            Ok(n) => read += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(if now >= self.deadline { Progress::Done } else { Progress::Open })
            }
        }
    }

    /// Answers a complete request head.
    fn answer(
        &mut self,
        request: Request,
        config: ServerConfig,
        scrape: &mut Scrape<'_>,
    ) -> io::Result<Progress> {
        match request {
            Request::Metrics { head } => {
                scrape.samples.clear();
                scrape.body.clear();
                scrape.source.collect(&mut scrape.samples);
                render(&scrape.samples, &mut scrape.body);
                let body = core::mem::take(&mut scrape.body);
                let result = self.send(200, "OK", &body, head, config, scrape);
                scrape.body = body;
                result
            }
            Request::NotFound => {
                self.respond(404, "Not Found", "not found; try /metrics\n", config, scrape)
            }
            Request::MethodNotAllowed => {
                self.respond(405, "Method Not Allowed", "only GET and HEAD\n", config, scrape)
            }
            Request::Bad => self.respond(400, "Bad Request", "bad request\n", config, scrape),
        }
    }

    /// Sends an error answer (head and body).
    fn respond(
        &mut self,
        code: u16,
        reason: &str,
        body: &str,
        config: ServerConfig,
        scrape: &mut Scrape<'_>,
    ) -> io::Result<Progress> {
        self.send(code, reason, body, false, config, scrape)
    }

    /// Writes what the socket takes of the answer at once; the rest is kept and written as the
    /// socket drains, until `write_timeout` from now.
    fn send(
        &mut self,
        code: u16,
        reason: &str,
        body: &str,
        head_only: bool,
        config: ServerConfig,
        scrape: &mut Scrape<'_>,
    ) -> io::Result<Progress> {
        let content_type = if code == 200 { CONTENT_TYPE } else { "text/plain; charset=utf-8" };
        let allow = if code == 405 { "Allow: GET, HEAD\r\n" } else { "" };
        let header = &mut scrape.header;
        header.clear();
        write!(
            header,
            "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             {allow}Connection: close\r\n\r\n",
            body.len()
        )?;
        let body = if head_only { &[][..] } else { body.as_bytes() };
        self.deadline = Instant::now() + config.write_timeout;
        let sent = write_some(&self.stream, &[&header[..], body])?;
        if sent == header.len() + body.len() {
            return self.finish();
        }
        // The socket is full: keep the rest (at most one response) for the next passes.
        let mut rest = Vec::with_capacity(header.len() + body.len() - sent);
        if sent < header.len() {
            rest.extend_from_slice(&header[sent..]);
            rest.extend_from_slice(body);
        } else {
            rest.extend_from_slice(&body[sent - header.len()..]);
        }
        self.state = State::Respond { rest, sent: 0 };
        Ok(Progress::Open)
    }

    /// Makes the close that follows a reset, so what the socket has not sent is dropped at once
    /// rather than left queued in the kernel for a client that does not read.
    fn abort(&self) {
        let _ = rustix::net::sockopt::set_socket_linger(&self.stream, Some(Duration::ZERO));
    }

    /// The response is all in the socket: half-close and drain.
    fn finish(&mut self) -> io::Result<Progress> {
        self.stream.shutdown(Shutdown::Write)?;
        self.state = State::Drain;
        self.deadline = Instant::now() + LINGER;
        Ok(Progress::Open)
    }
}

/// Reads what has arrived of a head into `head` (up to `cap` bytes in all, stopping at the end
/// of the head); `true` if the client closed first.
fn read_head(stream: &TcpStream, head: &mut Vec<u8>, cap: usize) -> io::Result<bool> {
    let mut chunk = [0u8; 1024];
    while head_end(head).is_none() && head.len() < cap {
        let room = (cap - head.len()).min(chunk.len());
        match (&*stream).read(&mut chunk[..room]) {
            Ok(0) => return Ok(true),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Writes as much of `parts` (in order) as the socket takes without blocking; the bytes written.
fn write_some(stream: &TcpStream, parts: &[&[u8]]) -> io::Result<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut sent = 0;
    while sent < total {
        // The parts from `sent` on: at most two (a head and a body).
        let mut skip = sent;
        let mut slices = [IoSlice::new(&[]), IoSlice::new(&[])];
        let mut n = 0;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            if n < slices.len() {
                slices[n] = IoSlice::new(&part[skip..]);
                n += 1;
            }
            skip = 0;
        }
        match (&*stream).write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => sent += written,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Length of the request head in `buf` (through the blank line), if it is all there.
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        let rest = &buf[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Classifies a request by its request line: `METHOD SP TARGET SP HTTP/1.x`.
fn parse_request(head: &[u8]) -> Request {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end].strip_suffix(b"\r").unwrap_or(&head[..line_end]);
    let Ok(line) = std::str::from_utf8(line) else { return Request::Bad };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !token(method) || !token(target) || !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Request::Bad;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match method {
        "GET" | "HEAD" if path == "/metrics" => Request::Metrics { head: method == "HEAD" },
        "GET" | "HEAD" => Request::NotFound,
        _ => Request::MethodNotAllowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\n\r\n"),
            Request::Metrics { head: false }
        );
        assert_eq!(
            parse_request(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Request::Metrics { head: true }
        );
        assert_eq!(parse_request(b"GET /other HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"), Request::MethodNotAllowed);
        for bad in [
            &b"garbage\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET /metrics HTTP/1.1 x\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_request(bad), Request::Bad, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn recycle_keeps_the_poll_set_allocation() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut fds = Vec::with_capacity(8);
        fds.push(PollFd::new(&listener, PollFlags::IN));
        let (ptr, capacity) = (fds.as_ptr() as usize, fds.capacity());
        let fds: Vec<PollFd<'static>> = recycle(fds);
        assert!(fds.is_empty());
        assert_eq!((fds.as_ptr() as usize, fds.capacity()), (ptr, capacity));
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}

#[cfg(test)]
mod review2_tests {
    use super::*;

    /// Review2: at the cap, the connections accepted in one pass evict the oldest connections
    /// still in `Head` before any of them is read, so a scrape whose whole request is already
    /// in its socket gets a 503 when `max_connections` idle connections arrive in the same
    /// pass. A flood of cheap connects keeps every legitimate scrape out.
    #[test]
    fn a_complete_request_is_not_evicted_by_newer_idle_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut source = |out: &mut Vec<Sample>| {
            out.push(Sample::new("x".into(), crate::metrics::CounterKind::Gauge, "", 1));
        };
        let config = ServerConfig { max_connections: 4, ..ServerConfig::default() };
        let mut server = Server::new(&listener, config, &mut source);
        let mut scrape = TcpStream::connect(addr).unwrap();
        scrape.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let _flood: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..3 {
            if server.wait() {
                server.accept_all();
            }
            server.advance_all();
        }
        scrape.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut answer = String::new();
        let _ = scrape.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "the scrape got: {answer:?}");
    }

    /// A connect flood does not keep the thread in `accept_all`: one pass accepts at most
    /// `max_connections`, the rest stay in the backlog for the passes after `advance_all`.
    #[test]
    fn one_pass_accepts_at_most_max_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut source = |_: &mut Vec<Sample>| {};
        let config = ServerConfig { max_connections: 2, ..ServerConfig::default() };
        let mut server = Server::new(&listener, config, &mut source);
        let _flood: Vec<TcpStream> = (0..6).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(50));
        server.accept_all();
        assert_eq!(server.conns.len(), 2);
        let mut left = 0;
        while listener.accept().is_ok() {
            left += 1;
        }
        assert_eq!(left, 4, "one pass accepted more than max_connections");
    }
}
