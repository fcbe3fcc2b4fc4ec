//! Blocking control client over a std [`UnixStream`].
//!
//! ```no_run
//! use std::time::Duration;
//! use corelane::control::Client;
//! use corelane::wire::ProtocolVersion;
//!
//! let mut client = Client::builder()
//!     .protocol_version(ProtocolVersion::V2)
//!     .timeout(Duration::from_secs(2))
//!     .connect("/run/corelane/control.sock")?;
//! let rtt = client.ping()?;
//! let status = client.status()?;
//! println!("{} up {} ms, ping {rtt:?}", status.version, status.uptime_ms);
//! # Ok::<(), corelane::control::ClientError>(())
//! ```
//!
//! One request is in flight at a time. Each request gets the next `msg_id` (from 1); responses
//! with another id (left over from a request that timed out) are skipped, except an error reply
//! with id 0, which the daemon sends for a fatal, connection-level error and which fails the
//! request in flight. The frame, body and read
//! buffers are reused, so a [`Client::ping`] allocates nothing after the first.
//!
//! # Transports
//!
//! [`Transport::Socket`] (the default) sends frames on the Unix socket.
//! [`Transport::SharedMemory`] upgrades the connection at connect time to a shared-memory
//! channel (control msg_type 4): the daemon passes a sealed memfd, `corelane_ipc_v2_<pid>`,
//! holding a request ring and a response ring, and from then on the same frames go through
//! them. A call then makes no syscall while the daemon's lane is busy: it pushes its request,
//! and waits for the answer by spinning ([`ClientBuilder::busy_poll`]) or on the response
//! ring's futex (the default; the daemon's wake costs a syscall only while the client sleeps).
//! The socket stays open: a byte on it wakes the daemon's lane when it was parked, and its
//! hang-up tells either side the other is gone. [`Transport::Auto`] takes the channel when the
//! daemon offers it and stays on the socket otherwise (channels off or all taken, an older
//! daemon, a v1 client). Errors: `protocol version mismatch: expected 2, got N` (a v1 client,
//! or another segment version), `failed to open shared memory: <name>: <why>` (the segment
//! did not come or does not map).
//!
//! ```no_run
//! use corelane::control::{Client, Transport};
//! let mut client = Client::builder()
//!     .transport(Transport::SharedMemory)
//!     .busy_poll(true)
//!     .connect("/run/corelane/control.sock")?;
//! assert!(client.is_shared_memory());
//! client.ping()?;
//! # Ok::<(), corelane::control::ClientError>(())
//! ```
//!
//! [`ProtocolVersion::V1`] speaks the legacy 19-byte big-endian header, to exercise the daemon's
//! `enable_legacy_support` mode during a rolling upgrade. V1 headers have no flags: every frame
//! is taken as a response, and an error reply is recognised by its body (see
//! [`CODE_BAD_REQUEST_BODY`](super::CODE_BAD_REQUEST_BODY)).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;

use super::proto::{
    ChannelGranted, ConfigReply, ConfigRequest, LaneReport, OpenChannel, Ping, Pong, Status,
    StatusRequest, WatchLanes,
};
use super::session::encode_body;
use super::{MSG_CONFIG, MSG_OPEN_CHANNEL, MSG_PING, MSG_STATUS, MSG_WATCH_LANES};
use crate::channel::duplex::{ClientDuplex, OpenError, RECORD_DATA, SEGMENT_VERSION};
use crate::wire::{
    self, BadErrorBody, Decoder, DecoderConfig, Event, Flags, Frame, ProtocolVersion, WireError,
};

/// Size of the socket read buffer.
const READ_CHUNK: usize = 16 * 1024;

/// Errors of [`Client`] operations.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected or configured.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("control socket i/o: {0}")]
    Io(#[from] io::Error),
    /// No response arrived within the configured timeout.
    #[error("timed out: expected a response within {0:?}, got none")]
    Timeout(Duration),
    /// The daemon closed the connection (or it was closed after an earlier failure).
    #[error("connection closed: expected a response, got end of stream")]
    Closed,
    /// The daemon answered with an error reply.
    #[error("daemon error {code}: {text}")]
    Remote {
        /// Error code from the reply body.
        code: u16,
        /// Error text from the reply body, as the daemon wrote it.
        text: String,
    },
    /// The daemon's bytes did not decode as wire frames.
    #[error("bad response frame: {0}")]
    Wire(WireError),
    /// An error reply whose body has no code and text.
    #[error("bad error reply: {0}")]
    BadErrorReply(BadErrorBody),
    /// A response body that is not the expected protobuf message.
    #[error("bad response body: {0}")]
    BadBody(#[from] prost::DecodeError),
    /// A response frame with the request's id but another type.
    #[error("unexpected response: expected msg_type {expected}, got {got}")]
    UnexpectedType {
        /// The request's `msg_type`.
        expected: u16,
        /// The response's `msg_type`.
        got: u16,
    },
    /// A pong that does not echo the ping's client time.
    #[error("pong does not echo the ping: expected client time {expected}, got {got}")]
    PongMismatch {
        /// The ping's `client_time_ns`.
        expected: u64,
        /// The pong's `client_time_ns`.
        got: u64,
    },
    /// The shared-memory channel could not be opened: seed 002's texts,
    /// `failed to open shared memory: ...` and `protocol version mismatch: expected 2, got N`.
    #[error("{0}")]
    SharedMemory(#[from] OpenError),
    /// The daemon's side of the shared-memory channel is impossible (a bad record, a corrupt
    /// ring): the client is broken.
    #[error("shared-memory channel: {0}")]
    Channel(crate::channel::duplex::ChannelFault),
    /// The request body is over the wire's size limit.
    #[error("request too large: expected at most {limit} body bytes, got {length}")]
    RequestTooLarge {
        /// Encoded body length.
        length: usize,
        /// Configured `max_body_bytes`.
        limit: u32,
    },
}

/// Settings for [`Client`]s; cheap to clone, and reusable as a template ([`ConnectionPool`]
/// connects many clients from one).
///
/// [`ConnectionPool`]: super::ConnectionPool
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    version: ProtocolVersion,
    timeout: Duration,
    max_body_bytes: u32,
    busy_poll: bool,
    transport: Transport,
}

/// How a [`Client`] carries its frames (see the [module docs](self#transports)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// The Unix socket (default).
    #[default]
    Socket,
    /// A shared-memory channel the daemon grants at connect time; connecting fails if it
    /// does not.
    SharedMemory,
    /// A shared-memory channel if the daemon grants one, the socket otherwise.
    Auto,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "socket" => Ok(Transport::Socket),
            "shared-memory" | "shm" => Ok(Transport::SharedMemory),
            "auto" => Ok(Transport::Auto),
            _ => Err(format!("unknown transport '{s}': expected socket, shared-memory or auto")),
        }
    }
}

impl Default for ClientBuilder {
    /// Protocol v2, 5 s timeout, [`wire::DEFAULT_MAX_BODY_BYTES`], the socket transport.
    fn default() -> Self {
        Self {
            version: ProtocolVersion::V2,
            timeout: Duration::from_secs(5),
            max_body_bytes: wire::DEFAULT_MAX_BODY_BYTES,
            busy_poll: false,
            transport: Transport::Socket,
        }
    }
}

impl ClientBuilder {
    /// Header version to speak: [`ProtocolVersion::V2`] (default) or the legacy
    /// [`ProtocolVersion::V1`].
    pub fn protocol_version(mut self, version: ProtocolVersion) -> Self {
        self.version = version;
        self
    }

    /// Socket read and write timeout, and the longest wait for one response. Zero means none is
    /// applied to the socket (blocking forever); default 5 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Largest body accepted in either direction; default [`wire::DEFAULT_MAX_BODY_BYTES`].
    pub fn max_body_bytes(mut self, limit: u32) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// Spin on the socket while waiting for a response instead of sleeping in `read`: the
    /// response is seen as soon as it lands, without a thread wake-up (which costs tens of
    /// microseconds on virtual machines), at the price of a busy core while waiting. For
    /// latency-critical callers that own their core. The timeout still applies. Default off.
    pub fn busy_poll(mut self, on: bool) -> Self {
        self.busy_poll = on;
        self
    }

    /// How frames travel: [`Transport::Socket`] (default), [`Transport::SharedMemory`] or
    /// [`Transport::Auto`]. With shared memory, [`busy_poll`](Self::busy_poll) spins on the
    /// response ring instead of sleeping on its futex.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Connects to the daemon's control socket at `path` (and upgrades to a shared-memory
    /// channel, as [`transport`](Self::transport) says).
    pub fn connect(&self, path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let connect_err = |source| ClientError::Connect { path: path.to_owned(), source };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        let timeout = (!self.timeout.is_zero()).then_some(self.timeout);
        stream.set_read_timeout(timeout).map_err(connect_err)?;
        stream.set_write_timeout(timeout).map_err(connect_err)?;
        let decoder = Decoder::new(DecoderConfig {
            max_body_bytes: self.max_body_bytes,
            enable_legacy_support: matches!(self.version, ProtocolVersion::V1),
            ..DecoderConfig::default()
        });
        let mut client = Client {
            stream,
            settings: self.clone(),
            decoder,
            next_id: 1,
            body: Vec::new(),
            frame: Vec::new(),
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            broken: false,
            inbox: Inbox::default(),
            shm: None,
            shm_in: Vec::new(),
        };
        let wanted = match self.transport {
            Transport::Socket => false,
            Transport::SharedMemory => true,
            // A v1 daemon (or a v1 client) has no channels: do not ask.
            Transport::Auto => self.version == ProtocolVersion::V2,
        };
        if wanted {
            match client.open_channel() {
                Ok(duplex) => client.shm = Some(duplex),
                Err(e) if self.transport == Transport::Auto && !client.broken => {
                    tracing::debug!(
                        "control client: no shared-memory channel ({e}); on the socket"
                    );
                }
                Err(e) if self.transport == Transport::Auto => {
                    // The upgrade failed half-way (no answer in time, a segment that does
                    // not map): a fresh connection, on the socket.
                    tracing::debug!("control client: shared-memory upgrade failed ({e}); reconnecting on the socket");
                    return self.clone().transport(Transport::Socket).connect(path);
                }
                Err(e) => return Err(e),
            }
        }
        client.stream.set_nonblocking(self.busy_poll).map_err(connect_err)?;
        Ok(client)
    }
}

/// Spins between looks at the socket while a busy-polling shared-memory client waits.
const SPINS_PER_SOCKET_LOOK: u32 = 4096;
/// Longest sleep on the response ring's futex between looks at the socket.
const FUTEX_SLICE: Duration = Duration::from_millis(20);

/// A blocking connection to the daemon's control socket.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    settings: ClientBuilder,
    decoder: Decoder,
    next_id: u64,
    /// Request body scratch.
    body: Vec<u8>,
    /// Request frame scratch.
    frame: Vec<u8>,
    read_buf: Box<[u8]>,
    /// Set once the stream is closed or out of sync; every later call fails with `Closed`.
    broken: bool,
    /// Subscriptions and the pushes they brought.
    inbox: Inbox,
    /// The shared-memory channel, once granted: frames go through it, the socket only rings.
    shm: Option<ClientDuplex>,
    /// Scratch: bytes taken from the response ring.
    shm_in: Vec<u8>,
}

/// The subscriptions of a [`Client`] and their pushes not yet taken.
#[derive(Debug, Default)]
struct Inbox {
    /// `msg_id`s of the live subscriptions: responses with these ids are pushes.
    subscriptions: Vec<u64>,
    /// Pushes received and not yet taken (at most [`MAX_QUEUED_PUSHES`]; older ones drop).
    pushes: VecDeque<Push>,
    /// Pushes dropped because the queue was full.
    dropped: u64,
}

impl Inbox {
    /// Queues a push, dropping the oldest when [`MAX_QUEUED_PUSHES`] wait.
    fn queue(&mut self, msg_id: u64, msg_type: u16, body: &[u8]) {
        if self.pushes.len() >= MAX_QUEUED_PUSHES {
            self.pushes.pop_front();
            self.dropped += 1;
        }
        self.pushes.push_back(Push { msg_id, msg_type, body: body.to_vec() });
    }
}

/// What [`Client::read_until`] saw: the response to the request in flight (and whether it is
/// an error reply), or a push it queued.
enum Seen<'f, 'b> {
    Answer(&'f Frame<'b>, bool),
    Pushed,
}

/// Most pushes a [`Client`] keeps for [`Client::next_push`]; beyond it the oldest are dropped
/// and counted ([`Client::dropped_pushes`]).
pub const MAX_QUEUED_PUSHES: usize = 1024;

/// A subscription made with [`Client::subscribe`]: its pushes carry its `msg_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The subscribe request's `msg_id`, which every push repeats.
    pub msg_id: u64,
    /// The `msg_type` subscribed to.
    pub msg_type: u16,
}

/// A message the daemon sent unasked, for a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// The subscription's `msg_id`.
    pub msg_id: u64,
    /// The message type.
    pub msg_type: u16,
    /// The protobuf body.
    pub body: Vec<u8>,
}

impl Push {
    /// Decodes the body as `M`.
    pub fn decode<M: Message + Default>(&self) -> Result<M, ClientError> {
        Ok(M::decode(self.body.as_slice())?)
    }
}

impl Client {
    /// Default settings, to adjust and [`ClientBuilder::connect`].
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Sends a [`Ping`] and returns the round-trip time.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let ping =
            Ping { client_time_ns: u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX) };
        let start = Instant::now();
        let pong: Pong = self.call(MSG_PING, &ping)?;
        let rtt = start.elapsed();
        if pong.client_time_ns != ping.client_time_ns {
            return Err(ClientError::PongMismatch {
                expected: ping.client_time_ns,
                got: pong.client_time_ns,
            });
        }
        Ok(rtt)
    }

    /// Asks for the daemon's [`Status`].
    pub fn status(&mut self) -> Result<Status, ClientError> {
        self.call(MSG_STATUS, &StatusRequest {})
    }

    /// Asks for the daemon's effective configuration, as TOML.
    pub fn config_toml(&mut self) -> Result<String, ClientError> {
        let reply: ConfigReply = self.call(MSG_CONFIG, &ConfigRequest {})?;
        Ok(reply.toml)
    }

    /// Sends `request` under `msg_type` without waiting for its answer (which a later call
    /// skips as stale): for reports whose answer nobody needs.
    pub fn notify(&mut self, msg_type: u16, request: &impl Message) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Closed);
        }
        self.encode_request(msg_type, request)?;
        self.send_frame(Instant::now() + self.settings.timeout)
    }

    /// Sends `request` under `msg_type` and returns the raw response body.
    pub fn request(
        &mut self,
        msg_type: u16,
        request: &impl Message,
    ) -> Result<Vec<u8>, ClientError> {
        self.exchange(msg_type, request, |body| Ok(body.to_vec()))
    }

    /// Sends `request` under `msg_type` and decodes the response as `R`.
    pub fn call<R: Message + Default>(
        &mut self,
        msg_type: u16,
        request: &impl Message,
    ) -> Result<R, ClientError> {
        self.exchange(msg_type, request, |body| Ok(R::decode(body)?))
    }

    /// Subscribes with `request` under `msg_type`: the daemon answers it (the response, as
    /// `R`) and from then on pushes messages for it, which [`next_push`](Self::next_push)
    /// returns, until the connection closes.
    pub fn subscribe<R: Message + Default>(
        &mut self,
        msg_type: u16,
        request: &impl Message,
    ) -> Result<(Subscription, R), ClientError> {
        let msg_id = self.next_id;
        self.inbox.subscriptions.push(msg_id);
        match self.call(msg_type, request) {
            Ok(first) => Ok((Subscription { msg_id, msg_type }, first)),
            Err(e) => {
                self.inbox.subscriptions.retain(|&id| id != msg_id);
                Err(e)
            }
        }
    }

    /// Subscribes to the lanes' statistics ([`MSG_WATCH_LANES`]): the report now, and one
    /// pushed every `metrics.publish_interval_ms` (take them with
    /// [`next_push`](Self::next_push) and [`Push::decode`] as [`LaneReport`]).
    pub fn watch_lanes(&mut self) -> Result<(Subscription, LaneReport), ClientError> {
        self.subscribe(MSG_WATCH_LANES, &WatchLanes {})
    }

    /// The next push of any subscription: one already received, or the first to arrive
    /// within `timeout` ([`ClientError::Timeout`] otherwise).
    pub fn next_push(&mut self, timeout: Duration) -> Result<Push, ClientError> {
        if let Some(push) = self.inbox.pushes.pop_front() {
            return Ok(push);
        }
        if self.broken {
            return Err(ClientError::Closed);
        }
        // A zero timeout is a poll: at least one read, bounded by a 1 ms socket timeout.
        let timeout = timeout.max(Duration::from_micros(1));
        let deadline = Instant::now() + timeout;
        let sleeps_in_read = !self.settings.busy_poll && self.shm.is_none();
        if sleeps_in_read {
            self.stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        }
        let result = self.read_pushes(deadline, timeout);
        if sleeps_in_read {
            // Back to the builder's timeout for calls.
            let normal = (!self.settings.timeout.is_zero()).then_some(self.settings.timeout);
            self.stream.set_read_timeout(normal)?;
        }
        result?;
        self.inbox.pushes.pop_front().ok_or(ClientError::Timeout(timeout))
    }

    /// A push already received, or one that has arrived on the socket, without waiting: a
    /// non-blocking read of what the socket holds (for loops that poll their control
    /// connection between other work, such as the tensor pool's `Producer::do_work`).
    pub fn try_next_push(&mut self) -> Result<Option<Push>, ClientError> {
        if let Some(push) = self.inbox.pushes.pop_front() {
            return Ok(Some(push));
        }
        if self.broken {
            return Err(ClientError::Closed);
        }
        let sleeps_in_read = !self.settings.busy_poll && self.shm.is_none();
        if sleeps_in_read {
            self.stream.set_nonblocking(true)?;
        }
        // A deadline already past: `read_until` reads what is there and stops at the first
        // `WouldBlock` (a timeout, which leaves the stream in sync).
        let result = self.read_pushes(Instant::now(), Duration::from_nanos(1));
        if sleeps_in_read {
            self.stream.set_nonblocking(false)?;
        }
        match result {
            Ok(()) | Err(ClientError::Timeout(_)) => Ok(self.inbox.pushes.pop_front()),
            Err(e) => Err(e),
        }
    }

    /// Pushes dropped because more than [`MAX_QUEUED_PUSHES`] waited.
    pub fn dropped_pushes(&self) -> u64 {
        self.inbox.dropped
    }

    /// The protocol version this client speaks.
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.settings.version
    }

    /// Whether frames go through a shared-memory channel.
    pub fn is_shared_memory(&self) -> bool {
        self.shm.is_some()
    }

    /// The shared-memory segment's name (`corelane_ipc_v2_<pid>`), if frames go through one.
    pub fn channel_name(&self) -> Option<&str> {
        self.shm.as_ref().map(ClientDuplex::name)
    }

    /// Asks the daemon for a shared-memory channel and maps it. The socket is still
    /// blocking (with the builder's timeout).
    fn open_channel(&mut self) -> Result<ClientDuplex, ClientError> {
        let open = OpenChannel { segment_version: SEGMENT_VERSION };
        let msg_id = self.encode_request(MSG_OPEN_CHANNEL, &open)?;
        if let Err(e) = self.stream.write_all(&self.frame) {
            let error = self.io_failure(e, self.settings.timeout);
            self.broken = true;
            return Err(error);
        }
        let deadline = Instant::now() + self.settings.timeout;
        let mut descriptor = None;
        loop {
            let got = crate::channel::recv_with_fd(self.stream.as_fd(), &mut self.read_buf);
            let n = match got {
                Ok((0, _)) => {
                    self.broken = true;
                    return Err(ClientError::Closed);
                }
                Ok((n, fd)) => {
                    if fd.is_some() {
                        descriptor = fd;
                    }
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Even a timeout: the daemon may still grant, and then takes the socket's
                    // bytes for doorbells. The connection is not to be used.
                    let error = self.io_failure(e, self.settings.timeout);
                    self.broken = true;
                    return Err(error);
                }
            };
            let mut result: Option<Result<ChannelGranted, ClientError>> = None;
            let fed = self.decoder.feed(&self.read_buf[..n], |event| match event {
                Event::Frame(frame) if result.is_none() => {
                    let h = &frame.header;
                    let error = match h.version {
                        ProtocolVersion::V2 => h.flags.contains(Flags::ERROR),
                        ProtocolVersion::V1 => is_legacy_error_body(frame.body),
                    };
                    if h.msg_id == msg_id || (error && h.msg_id == 0) {
                        result = Some(if error {
                            Err(remote_error(frame.body))
                        } else {
                            ChannelGranted::decode(frame.body).map_err(ClientError::from)
                        });
                    }
                }
                Event::Error { error, .. } if result.is_none() => {
                    result = Some(Err(ClientError::Wire(error)))
                }
                _ => {}
            });
            if let Err(error) = fed {
                self.broken = true;
                return Err(ClientError::Wire(error));
            }
            match result {
                Some(Ok(granted)) => {
                    let name = granted.name;
                    if granted.segment_version != SEGMENT_VERSION {
                        self.broken = true;
                        return Err(OpenError::Version(granted.segment_version).into());
                    }
                    let Some(fd) = descriptor else {
                        self.broken = true;
                        let reason = "no descriptor came with the grant".to_owned();
                        return Err(OpenError::Open { name, reason }.into());
                    };
                    return ClientDuplex::attach(fd, &name).map_err(|e| {
                        self.broken = true;
                        e.into()
                    });
                }
                Some(Err(e)) => return Err(e),
                None if past(self.settings.timeout, deadline) => {
                    self.broken = true;
                    return Err(ClientError::Timeout(self.settings.timeout));
                }
                None => {}
            }
        }
    }

    /// Writes the request frame: on the socket, or into the request ring (waiting for room
    /// while the daemon takes it), ringing the doorbell if the daemon's lane sleeps.
    fn send_frame(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let Some(duplex) = &mut self.shm else { return self.send_frame_socket(deadline) };
        let mut written = 0;
        let mut spins = 0u32;
        while written < self.frame.len() {
            match duplex.push(&self.frame[written..]) {
                Ok(n) => written += n,
                Err(c) => {
                    self.broken = true;
                    return Err(ClientError::Channel(c.into()));
                }
            }
            if duplex.take_doorbell() {
                ring_doorbell(&self.stream);
            }
            if written < self.frame.len() {
                // The ring is full: the daemon is behind (or gone).
                if past(self.settings.timeout, deadline) {
                    self.broken = true; // part of the frame is out
                    return Err(ClientError::Timeout(self.settings.timeout));
                }
                spins += 1;
                if spins.is_multiple_of(SPINS_PER_SOCKET_LOOK) && socket_hung_up(&self.stream) {
                    self.broken = true;
                    return Err(ClientError::Closed);
                }
                std::thread::yield_now();
            }
        }
        Ok(())
    }

    /// Takes bytes from the daemon into `read_buf`: a socket read, or the records the
    /// response ring holds (spinning or sleeping on its futex until some come). Returns how
    /// many; `Ok(0)` is the end of the stream.
    fn fill(&mut self, deadline: Instant, timeout: Duration) -> Result<usize, ClientError> {
        let Some(duplex) = &mut self.shm else {
            loop {
                return match self.stream.read(&mut self.read_buf) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.settings.busy_poll => {
                        if past(timeout, deadline) {
                            return Err(ClientError::Timeout(timeout));
                        }
                        std::hint::spin_loop();
                        continue;
                    }
                    Err(e) => Err(self.io_failure(e, timeout)),
                };
            }
        };
        let max_records = self.read_buf.len() / RECORD_DATA;
        let mut spins = 0u32;
        loop {
            self.shm_in.clear();
            match duplex.pop(max_records, &mut self.shm_in) {
                Ok(0) => {}
                Ok(_) => {
                    let n = self.shm_in.len();
                    self.read_buf[..n].copy_from_slice(&self.shm_in);
                    return Ok(n);
                }
                Err(fault) => {
                    self.broken = true;
                    return Err(ClientError::Channel(fault));
                }
            }
            if past(timeout, deadline) {
                return Err(ClientError::Timeout(timeout));
            }
            let look = if self.settings.busy_poll {
                spins += 1;
                std::hint::spin_loop();
                spins.is_multiple_of(SPINS_PER_SOCKET_LOOK)
            } else {
                let left = if timeout.is_zero() {
                    FUTEX_SLICE
                } else {
                    deadline.saturating_duration_since(Instant::now()).min(FUTEX_SLICE)
                };
                match duplex.wait(left) {
                    Ok(crate::rings::wait::Parked::Ready) => false,
                    Ok(crate::rings::wait::Parked::TimedOut) => true,
                    Err(c) => {
                        self.broken = true;
                        return Err(ClientError::Channel(c.into()));
                    }
                }
            };
            if (look || duplex.is_abandoned()) && socket_hung_up(&self.stream) {
                // What the daemon wrote before it went is still read first.
                self.shm_in.clear();
                if duplex.pop(max_records, &mut self.shm_in).unwrap_or(0) > 0 {
                    let n = self.shm_in.len();
                    self.read_buf[..n].copy_from_slice(&self.shm_in);
                    return Ok(n);
                }
                return Ok(0);
            }
        }
    }

    fn send_frame_socket(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let mut written = 0;
        while written < self.frame.len() {
            match self.stream.write(&self.frame[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.settings.busy_poll => {
                    if past(self.settings.timeout, deadline) {
                        // Part of the frame may be out: the stream is out of sync.
                        self.broken = true;
                        return Err(ClientError::Timeout(self.settings.timeout));
                    }
                    std::hint::spin_loop();
                }
                Err(e) => {
                    // Part of the frame may be out: the stream is out of sync whatever the error.
                    let error = self.io_failure(e, self.settings.timeout);
                    self.broken = true;
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Whether the connection is unusable (closed by the peer, or a fatal framing error); a
    /// broken client fails every call with [`ClientError::Closed`].
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Encodes `request` as the next request frame into `self.frame` (its body checked against
    /// `max_body_bytes`); returns its `msg_id`.
    fn encode_request(
        &mut self,
        msg_type: u16,
        request: &impl Message,
    ) -> Result<u64, ClientError> {
        encode_body(request, &mut self.body);
        let limit = self.settings.max_body_bytes;
        if u32::try_from(self.body.len()).map_or(true, |len| len > limit) {
            return Err(ClientError::RequestTooLarge { length: self.body.len(), limit });
        }
        let msg_id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.frame.clear();
        wire::encode(
            self.settings.version,
            msg_type,
            Flags(0),
            msg_id,
            &self.body,
            &mut self.frame,
        );
        Ok(msg_id)
    }

    /// Sends one request and waits for the response with its `msg_id`, handing that response's
    /// body to `on_body`.
    fn exchange<T>(
        &mut self,
        msg_type: u16,
        request: &impl Message,
        mut on_body: impl FnMut(&[u8]) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        if self.broken {
            return Err(ClientError::Closed);
        }
        let msg_id = self.encode_request(msg_type, request)?;
        let deadline = Instant::now() + self.settings.timeout;
        self.send_frame(deadline)?;

        let timeout = self.settings.timeout;
        self.read_until(deadline, timeout, Some(msg_id), |seen| match seen {
            Seen::Answer(frame, true) => Some(Err(remote_error(frame.body))),
            Seen::Answer(frame, false) if frame.header.msg_type != msg_type => {
                Some(Err(ClientError::UnexpectedType {
                    expected: msg_type,
                    got: frame.header.msg_type,
                }))
            }
            Seen::Answer(frame, false) => Some(on_body(frame.body)),
            Seen::Pushed => None,
        })
    }

    /// Reads until `on_seen` returns a result for a response to `in_flight` or for a push it
    /// was told of, or `deadline` passes (`timeout` is
    /// the duration a timeout error reports; zero means no deadline). Pushes for the live
    /// subscriptions are queued on the way; other frames are stale and skipped.
    fn read_until<T>(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        in_flight: Option<u64>,
        mut on_seen: impl FnMut(Seen<'_, '_>) -> Option<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let mut result: Option<Result<T, ClientError>> = None;
        loop {
            let n = match self.fill(deadline, timeout)? {
                0 => {
                    self.broken = true;
                    return Err(ClientError::Closed);
                }
                n => n,
            };
            let inbox = &mut self.inbox;
            let fed = self.decoder.feed(&self.read_buf[..n], |event| {
                // Frames after the answer, in the same read, are still looked at: pushes among
                // them are queued (the bytes are consumed either way).
                let answered = result.is_some();
                match event {
                    Event::Frame(frame) => {
                        let h = &frame.header;
                        let (response, error) = match h.version {
                            ProtocolVersion::V2 => {
                                (h.flags.contains(Flags::RESPONSE), h.flags.contains(Flags::ERROR))
                            }
                            ProtocolVersion::V1 => (true, is_legacy_error_body(frame.body)),
                        };
                        // An error reply with id 0 is about the connection (a fatal error
                        // whose frame could not be trusted): it answers whatever is in flight.
                        let ours =
                            in_flight.is_some_and(|id| h.msg_id == id || (error && h.msg_id == 0));
                        if ours && response && !answered {
                            result = on_seen(Seen::Answer(&frame, error));
                        } else if response && !error && inbox.subscriptions.contains(&h.msg_id) {
                            inbox.queue(h.msg_id, h.msg_type, frame.body);
                            if !answered {
                                result = on_seen(Seen::Pushed);
                            }
                        } else {
                            tracing::debug!(
                                msg_id = h.msg_id,
                                expected = in_flight,
                                "control client: skipping a stale frame"
                            );
                        }
                    }
                    // A damaged frame may be the response (its id is not to be trusted), so the
                    // request fails rather than waiting for a response that will not come.
                    Event::Error { error, .. } if !answered => {
                        result = Some(Err(ClientError::Wire(error)))
                    }
                    Event::Error { .. } => {}
                }
            });
            if let Err(error) = fed {
                self.broken = true;
                return Err(ClientError::Wire(error));
            }
            if let Some(result) = result {
                return result;
            }
            if past(timeout, deadline) {
                return Err(ClientError::Timeout(timeout));
            }
        }
    }

    /// Waits until a push is queued or `deadline` passes.
    fn read_pushes(&mut self, deadline: Instant, timeout: Duration) -> Result<(), ClientError> {
        self.read_until(deadline, timeout, None, |seen| match seen {
            Seen::Pushed => Some(Ok(())),
            Seen::Answer(..) => None,
        })
    }

    /// Maps a socket error, marking the client broken unless the error is a timeout (after a
    /// timeout the stream is still in sync: the late response is skipped by its `msg_id`).
    fn io_failure(&mut self, e: io::Error, timeout: Duration) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout(timeout),
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof => {
                self.broken = true;
                ClientError::Closed
            }
            _ => {
                self.broken = true;
                ClientError::Io(e)
            }
        }
    }
}

/// Rings the daemon's doorbell: one byte on the socket, never blocking (a full socket buffer
/// holds doorbells enough).
fn ring_doorbell(stream: &UnixStream) {
    let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
    let _ = rustix::net::send(stream, &[1], flags);
}

/// Whether the daemon hung up the socket (after an upgrade it writes nothing on it).
fn socket_hung_up(stream: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    let flags = rustix::net::RecvFlags::DONTWAIT | rustix::net::RecvFlags::PEEK;
    match rustix::net::recv(stream, &mut byte, flags) {
        Ok((0, _)) => true,
        Ok(_) => false,
        Err(e) => e != rustix::io::Errno::AGAIN && e != rustix::io::Errno::INTR,
    }
}

/// Whether a (non-zero) timeout has run out.
fn past(timeout: Duration, deadline: Instant) -> bool {
    !timeout.is_zero() && Instant::now() >= deadline
}

/// Whether a v1 response body is an error reply. V1 headers carry no flags, so the body tells:
/// an error body starts with its u16 little-endian code, and every code in use (wire codes 1-7,
/// and the daemon's 0x0100-0x0400,
/// [`CODE_BAD_REQUEST_BODY`](super::CODE_BAD_REQUEST_BODY) = 0x0100) has a low byte below 8, which as a protobuf tag means field
/// number 0, invalid in every message. A protobuf body never starts that way.
fn is_legacy_error_body(body: &[u8]) -> bool {
    body.len() >= 2 && body[0] < 8
}

/// Turns an error reply body into [`ClientError::Remote`].
#[cold]
fn remote_error(body: &[u8]) -> ClientError {
    match wire::decode_error_body(body) {
        Ok((code, text)) => ClientError::Remote { code, text: text.to_owned() },
        Err(e) => ClientError::BadErrorReply(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::thread;

    use super::*;
    use crate::control::test_server::{temp_dir, test_status, TestServer, TEST_TOML};
    use crate::control::{
        SessionConfig, CODE_BAD_REQUEST_BODY, CODE_BUSY, CODE_LIMIT, CODE_UNAVAILABLE,
    };

    fn legacy_server() -> TestServer {
        let mut config = SessionConfig::default();
        config.decoder.enable_legacy_support = true;
        TestServer::start_with(config)
    }

    #[test]
    fn ping_status_and_config() {
        let server = TestServer::start();
        let mut client = Client::builder()
            .protocol_version(ProtocolVersion::V2)
            .timeout(Duration::from_secs(5))
            .max_body_bytes(1 << 16)
            .connect(server.path())
            .unwrap();
        assert!(client.ping().unwrap() > Duration::ZERO);
        assert_eq!(client.status().unwrap(), test_status());
        assert_eq!(client.config_toml().unwrap(), TEST_TOML);
        let raw = client.request(MSG_STATUS, &StatusRequest {}).unwrap();
        assert_eq!(Status::decode(&raw[..]).unwrap(), test_status());
        assert!(!client.is_broken());
    }

    #[test]
    fn busy_poll_clients_get_the_same_answers_and_time_out() {
        let server = TestServer::start();
        let mut client = Client::builder()
            .busy_poll(true)
            .timeout(Duration::from_secs(5))
            .connect(server.path())
            .unwrap();
        for _ in 0..100 {
            assert!(client.ping().unwrap() > Duration::ZERO);
        }
        assert_eq!(client.status().unwrap(), test_status());
        assert_eq!(client.config_toml().unwrap(), TEST_TOML);

        // A peer that never answers: the spinning client still gives up at its timeout.
        let dir = std::env::temp_dir().join(format!("corelane-busy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mute.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut mute = Client::builder()
            .busy_poll(true)
            .timeout(Duration::from_millis(50))
            .connect(&path)
            .unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(mute.ping(), Err(ClientError::Timeout(_))));
        assert!(started.elapsed() >= Duration::from_millis(50));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn error_reply_surfaces_as_remote_with_the_exact_text() {
        let server = TestServer::start();
        let mut client = Client::builder().connect(server.path()).unwrap();
        match client.request(99, &Ping::default()) {
            Err(ClientError::Remote { code, text }) => {
                assert_eq!(code, WireError::UnknownMsgType(99).code());
                assert_eq!(text, "unknown message type 99");
            }
            other => panic!("expected a remote error, got {other:?}"),
        }
        // The connection is kept.
        client.ping().unwrap();
    }

    #[test]
    fn bad_request_body_surfaces_as_remote() {
        let server = TestServer::start();
        let mut client = Client::builder().connect(server.path()).unwrap();
        // A string where Ping has a varint: the daemon cannot decode it.
        let wrong = ConfigReply { toml: "x".to_owned() };
        match client.request(MSG_PING, &wrong) {
            Err(ClientError::Remote { code, text }) => {
                assert_eq!(code, CODE_BAD_REQUEST_BODY);
                assert!(text.starts_with("bad request body: "), "{text}");
            }
            other => panic!("expected a remote error, got {other:?}"),
        }
        client.ping().unwrap();
    }

    #[test]
    fn legacy_client_works_with_legacy_support() {
        let server = legacy_server();
        let mut client =
            Client::builder().protocol_version(ProtocolVersion::V1).connect(server.path()).unwrap();
        assert_eq!(client.protocol_version(), ProtocolVersion::V1);
        client.ping().unwrap();
        assert_eq!(client.status().unwrap(), test_status());
        assert_eq!(client.config_toml().unwrap(), TEST_TOML);
        // V1 has no error flag: the error body is recognised by its code.
        match client.request(42, &Ping::default()) {
            Err(ClientError::Remote { code: 5, text }) => {
                assert_eq!(text, "unknown message type 42")
            }
            other => panic!("expected a remote error, got {other:?}"),
        }
        let wrong = ConfigReply { toml: "x".to_owned() };
        match client.request(MSG_PING, &wrong) {
            Err(ClientError::Remote { code, .. }) => assert_eq!(code, CODE_BAD_REQUEST_BODY),
            other => panic!("expected a remote error, got {other:?}"),
        }
        client.ping().unwrap();
    }

    #[test]
    fn legacy_client_without_legacy_support_is_refused() {
        let server = TestServer::start();
        let mut client =
            Client::builder().protocol_version(ProtocolVersion::V1).connect(server.path()).unwrap();
        match client.ping() {
            Err(ClientError::Remote { code: 2, text }) => {
                assert_eq!(text, "protocol version mismatch: expected 2, got 1");
            }
            other => panic!("expected a remote error, got {other:?}"),
        }
        // The daemon closed the connection after its reply.
        assert!(matches!(client.ping(), Err(ClientError::Closed)));
        assert!(client.is_broken());
    }

    #[test]
    fn legacy_error_bodies_are_never_protobuf() {
        for code in
            [1u16, 2, 3, 4, 5, 6, 7, CODE_BAD_REQUEST_BODY, CODE_BUSY, CODE_UNAVAILABLE, CODE_LIMIT]
        {
            let mut body = code.to_le_bytes().to_vec();
            body.extend_from_slice(b"some text");
            assert!(is_legacy_error_body(&body), "{code}");
            assert!(Pong::decode(&body[..]).is_err(), "{code}");
        }
        let status = test_status().encode_to_vec();
        assert!(!is_legacy_error_body(&status));
        assert!(!is_legacy_error_body(&[]));
    }

    /// A one-connection server that answers each request with `script(msg_id)` raw bytes.
    fn scripted_server(script: impl Fn(u64) -> Vec<u8> + Send + 'static) -> (PathBuf, PathBuf) {
        let dir = temp_dir("scripted");
        let path = dir.join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut decoder = Decoder::new(DecoderConfig::default());
            let mut buf = [0u8; 1024];
            loop {
                let n = match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut ids = Vec::new();
                decoder
                    .feed(&buf[..n], |e| {
                        if let Event::Frame(f) = e {
                            ids.push(f.header.msg_id);
                        }
                    })
                    .unwrap();
                for id in ids {
                    let reply = script(id);
                    if reply.is_empty() {
                        return; // close without answering
                    }
                    if stream.write_all(&reply).is_err() {
                        return;
                    }
                }
            }
        });
        (dir, path)
    }

    fn pong_frame(msg_id: u64, client_time_ns: u64, out: &mut Vec<u8>) {
        let pong = Pong { client_time_ns, server_time_ns: 1 };
        wire::encode(
            ProtocolVersion::V2,
            MSG_STATUS,
            Flags::RESPONSE,
            msg_id,
            &pong.encode_to_vec(),
            out,
        );
    }

    #[test]
    fn stale_responses_are_skipped() {
        let (dir, path) = scripted_server(|id| {
            let mut out = Vec::new();
            // A stale response, a request-looking frame with the right id, then the answer.
            pong_frame(id.wrapping_sub(1), 0, &mut out);
            wire::encode(ProtocolVersion::V2, MSG_STATUS, Flags::EMPTY, id, &[], &mut out);
            wire::encode(
                ProtocolVersion::V2,
                MSG_STATUS,
                Flags::RESPONSE,
                id,
                &test_status().encode_to_vec(),
                &mut out,
            );
            out
        });
        let mut client = Client::builder().connect(&path).unwrap();
        assert_eq!(client.status().unwrap(), test_status());
        assert_eq!(client.status().unwrap(), test_status());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_response_of_another_type_is_an_error() {
        let (dir, path) = scripted_server(|id| {
            let mut out = Vec::new();
            pong_frame(id, 0, &mut out); // under MSG_STATUS, answering a ping
            out
        });
        let mut client = Client::builder().connect(&path).unwrap();
        match client.ping() {
            Err(ClientError::UnexpectedType { expected, got }) => {
                assert_eq!((expected, got), (MSG_PING, MSG_STATUS));
            }
            other => panic!("expected an unexpected type, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A response frame (v2) of `msg_type` with `server_time_ns` = `n`, as a push or answer.
    fn pong_of(msg_type: u16, msg_id: u64, n: u64, out: &mut Vec<u8>) {
        let pong = Pong { client_time_ns: 0, server_time_ns: n };
        wire::encode(
            ProtocolVersion::V2,
            msg_type,
            Flags::RESPONSE,
            msg_id,
            &pong.encode_to_vec(),
            out,
        );
    }

    #[test]
    fn pushes_in_the_same_read_as_the_answer_or_during_a_call_are_kept_in_order() {
        const SUB: u16 = 21;
        let (dir, path) = scripted_server(|id| {
            let mut out = Vec::new();
            if id == 1 {
                // The subscription's answer and three pushes, in one write; a stale frame of
                // an id nobody subscribed to in between.
                pong_of(SUB, 1, 0, &mut out);
                pong_of(SUB, 1, 1, &mut out);
                pong_of(SUB, 77, 99, &mut out);
                pong_of(SUB, 1, 2, &mut out);
                pong_of(SUB, 1, 3, &mut out);
            } else {
                // A push before the answer to the next request, and one after it.
                pong_of(SUB, 1, 4, &mut out);
                pong_of(MSG_CONFIG, id, 9, &mut out);
                pong_of(SUB, 1, 5, &mut out);
            }
            out
        });
        let mut client = Client::builder().connect(&path).unwrap();
        let (sub, first): (_, Pong) = client.subscribe(SUB, &Ping::default()).unwrap();
        assert_eq!((sub.msg_id, sub.msg_type, first.server_time_ns), (1, SUB, 0));
        let raw = client.request(MSG_CONFIG, &ConfigRequest {}).unwrap();
        assert_eq!(Pong::decode(&raw[..]).unwrap().server_time_ns, 9);
        let got: Vec<u64> = (0..5)
            .map(|_| {
                let push = client.next_push(Duration::from_secs(5)).unwrap();
                assert_eq!((push.msg_id, push.msg_type), (1, SUB));
                push.decode::<Pong>().unwrap().server_time_ns
            })
            .collect();
        assert_eq!(got, [1, 2, 3, 4, 5]);
        assert!(matches!(
            client.next_push(Duration::from_millis(20)),
            Err(ClientError::Timeout(t)) if t == Duration::from_millis(20)
        ));
        assert!(!client.is_broken());
        assert_eq!(client.dropped_pushes(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn pushes_beyond_the_queue_drop_the_oldest_and_are_counted() {
        let mut inbox = Inbox::default();
        let extra = 5;
        for n in 0..(MAX_QUEUED_PUSHES + extra) as u64 {
            inbox.queue(1, 21, &n.to_le_bytes());
        }
        assert_eq!(inbox.pushes.len(), MAX_QUEUED_PUSHES);
        assert_eq!(inbox.dropped, extra as u64);
        let first = u64::from_le_bytes(inbox.pushes[0].body[..].try_into().unwrap());
        assert_eq!(first, extra as u64, "the oldest went first");
    }

    #[test]
    fn a_closed_connection_is_closed() {
        let (dir, path) = scripted_server(|_| Vec::new());
        let mut client = Client::builder().connect(&path).unwrap();
        assert!(matches!(client.ping(), Err(ClientError::Closed)));
        assert!(client.is_broken());
        assert!(matches!(client.status(), Err(ClientError::Closed)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_silent_daemon_times_out() {
        let dir = temp_dir("silent");
        let path = dir.join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut client =
            Client::builder().timeout(Duration::from_millis(50)).connect(&path).unwrap();
        let (_held, _) = listener.accept().unwrap();
        let start = Instant::now();
        match client.ping() {
            Err(ClientError::Timeout(t)) => assert_eq!(t, Duration::from_millis(50)),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(start.elapsed() >= Duration::from_millis(50));
        // A timeout leaves the client usable: a late answer would be skipped by its id.
        assert!(!client.is_broken());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn connecting_to_nothing_names_the_path() {
        let dir = temp_dir("nothing");
        let path = dir.join("absent.sock");
        let err = Client::builder().connect(&path).unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }));
        assert!(err.to_string().contains("absent.sock"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_oversized_request_is_refused_before_sending() {
        let server = TestServer::start();
        let mut client = Client::builder().max_body_bytes(16).connect(server.path()).unwrap();
        let big = ConfigReply { toml: "x".repeat(100) };
        match client.request(MSG_CONFIG, &big) {
            Err(ClientError::RequestTooLarge { length, limit }) => {
                assert_eq!((length, limit), (102, 16));
            }
            other => panic!("expected too large, got {other:?}"),
        }
        client.ping().unwrap();
    }
}
