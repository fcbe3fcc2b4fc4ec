//! The Prometheus `/metrics` endpoint: one plain std thread polling up to
//! [`ServerConfig::max_connections`] connections at once, each with its own head deadline.

use core::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::exposition::{render, CONTENT_TYPE};
use super::reader::{CountersReader, Sample};
use super::MetricsError;

/// How often the server looks at its stop flag while it waits (for a connection or for bytes).
const POLL: Duration = Duration::from_millis(100);

/// Limits of the `/metrics` server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Time a client has to send its whole request head; then it is dropped (with a 408).
    pub head_timeout: Duration,
    /// Time a client has to take the response.
    pub write_timeout: Duration,
    /// Largest request head read, bytes; a longer one gets a 431.
    pub max_head_bytes: usize,
    /// Connections served at once; a connection beyond them is answered 503 and closed.
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
/// over the size cap 431, a client too slow to send its head is dropped after a 408.
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

    /// Stops accepting, abandons the connection in progress (within 100 ms), and joins the
    /// thread.
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

/// The server thread: one `poll` over the listener and every open connection, so a client
/// that sends nothing (or trickles bytes) costs a slot, never the other clients' time.
fn serve(
    listener: &TcpListener,
    source: &mut dyn MetricsSource,
    config: ServerConfig,
    stop: &AtomicBool,
) {
    let mut conns: Vec<Connection> = Vec::with_capacity(config.max_connections);
    let mut samples = Vec::new();
    let mut body = String::new();
    while !stop.load(Ordering::Relaxed) {
        wait(listener, &conns);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        accept_all(listener, &mut conns, config);
        let now = Instant::now();
        conns.retain_mut(|conn| match conn.advance(now, source, &mut samples, &mut body) {
            Ok(Progress::Waiting) => true,
            Ok(Progress::Done) => false,
            Err(e) => {
                tracing::debug!(peer = ?conn.stream.peer_addr().ok(), error = %e, "/metrics connection ended");
                false
            }
        });
    }
}

/// Accepts every pending connection; past [`ServerConfig::max_connections`] a new one is
/// answered 503 (best effort, never blocking) and closed at once.
fn accept_all(listener: &TcpListener, conns: &mut Vec<Connection>, config: ServerConfig) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if conns.len() >= config.max_connections {
                    let _ = stream.set_nonblocking(true);
                    let _ = (&stream).write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
                          Connection: close\r\n\r\n",
                    );
                    continue;
                }
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                conns.push(Connection {
                    stream,
                    config,
                    head: Vec::with_capacity(config.max_head_bytes.max(1)),
                    deadline: Instant::now() + config.head_timeout,
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

/// Waits until the listener or a connection is readable, or [`POLL`] passes (the deadlines
/// and the stop flag are looked at after every wait).
fn wait(listener: &TcpListener, conns: &[Connection]) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let timeout = Timespec { tv_sec: 0, tv_nsec: POLL.as_nanos() as _ };
    let mut fds = Vec::with_capacity(conns.len() + 1);
    fds.push(PollFd::new(listener, PollFlags::IN));
    fds.extend(conns.iter().map(|c| PollFd::new(&c.stream, PollFlags::IN)));
    if poll(&mut fds, Some(&timeout)).is_err() {
        std::thread::sleep(POLL);
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
    /// Its head is not all there yet and its deadline has not passed.
    Waiting,
    /// Answered (or closed by the client): drop it.
    Done,
}

struct Connection {
    stream: TcpStream,
    config: ServerConfig,
    /// The request head so far; never longer than `config.max_head_bytes`.
    head: Vec<u8>,
    /// When the whole head must be in.
    deadline: Instant,
}

impl Connection {
    /// Reads what has arrived (without blocking) and answers once the head is complete, over
    /// the size cap (431) or past its deadline (408).
    fn advance(
        &mut self,
        now: Instant,
        source: &mut dyn MetricsSource,
        samples: &mut Vec<Sample>,
        body: &mut String,
    ) -> io::Result<Progress> {
        let cap = self.config.max_head_bytes.max(1);
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = head_end(&self.head) {
                self.head.truncate(end);
                break;
            }
            if self.head.len() >= cap {
                self.respond(431, "Request Header Fields Too Large", "", false)?;
                return Ok(Progress::Done);
            }
            let room = (cap - self.head.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => return Ok(Progress::Done),
                Ok(n) => self.head.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if now >= self.deadline {
                        self.respond(408, "Request Timeout", "", false)?;
                        return Ok(Progress::Done);
                    }
                    return Ok(Progress::Waiting);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        match parse_request(&self.head) {
            Request::Metrics { head } => {
                samples.clear();
                body.clear();
                source.collect(samples);
                render(samples, body);
                self.respond(200, "OK", body, head)?;
            }
            Request::NotFound => {
                self.respond(404, "Not Found", "not found; try /metrics\n", false)?
            }
            Request::MethodNotAllowed => {
                self.respond(405, "Method Not Allowed", "only GET and HEAD\n", false)?;
            }
            Request::Bad => self.respond(400, "Bad Request", "bad request\n", false)?,
        }
        Ok(Progress::Done)
    }

    /// Writes the whole answer, blocking up to `write_timeout` (a response is one scrape's text,
    /// which the socket's send buffer normally takes at once).
    fn respond(&mut self, code: u16, reason: &str, body: &str, head_only: bool) -> io::Result<()> {
        self.stream.set_nonblocking(false)?;
        self.stream.set_write_timeout(Some(self.config.write_timeout))?;
        let content_type = if code == 200 { CONTENT_TYPE } else { "text/plain; charset=utf-8" };
        let allow = if code == 405 { "Allow: GET, HEAD\r\n" } else { "" };
        let header = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             {allow}Connection: close\r\n\r\n",
            body.len()
        );
        self.stream.write_all(header.as_bytes())?;
        if !head_only {
            self.stream.write_all(body.as_bytes())?;
        }
        self.stream.flush()?;
        self.stream.shutdown(Shutdown::Write)
    }
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
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
