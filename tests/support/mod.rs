//! The alloc server's test harness, shared by `tests/alloc.rs` and `tests/alloc_race.rs`: the
//! real daemon as a child process (its own runtime dir, config file and stderr file), and
//! clients that speak each protocol the way the original clients do:
//!
//! - [`Legacy`]: raw TT-Metal v4 (128 B) / v5 (144 B) / compact-v2 (48 B) records, built with
//!   the zerocopy structs of `corelane::alloc::wire`, blocking writes, same-size replies;
//! - [`Native`]: canonical frames (`corelane::wire::encode`) with [`EventBody`]s whose `msg_id`
//!   is the client's sequence number, and protobuf requests on the same connection (so a reply
//!   is ordered after every event sent before it);
//! - [`Client`]: either, behind one interface, so a behaviour is checked over all three.

#![allow(dead_code)] // each test binary uses its part of the harness

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use corelane::alloc::proto;
use corelane::alloc::query::QueryClient;
use corelane::alloc::wire::{
    CompactRecord, Event, EventBody, Layout, LegacyHead, MsgType, V4Record, V5Record,
};
use corelane::wire::{encode, Decoder, DecoderConfig, Event as WireEvent, Flags, ProtocolVersion};
use prost::Message;
use zerocopy::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

pub const BIN: &str = env!("CARGO_BIN_EXE_corelane");

/// Every wait of the harness: generous, for a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` until it holds; panics naming `what` after [`DEADLINE`].
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(1);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {DEADLINE:?} waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Which listener a legacy client connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// `native:alloc.sock`.
    Native,
    /// `tt-metal:tt.sock` (v4/v5 detected per connection: the default deployment).
    Auto,
    /// `tt-metal-v4:v4.sock`.
    V4,
    /// `tt-metal-v5:v5.sock`.
    V5,
    /// `compact-v2:compact.sock`.
    Compact,
}

impl Listener {
    fn file(self) -> &'static str {
        match self {
            Listener::Native => "alloc.sock",
            Listener::Auto => "tt.sock",
            Listener::V4 => "v4.sock",
            Listener::V5 => "v5.sock",
            Listener::Compact => "compact.sock",
        }
    }
}

/// A daemon's settings beyond the common part.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Extra `[alloc]` keys (not `listeners`).
    pub alloc: String,
    /// `CORELANE_LOG`.
    pub log: String,
}

impl Default for Setup {
    fn default() -> Self {
        // A long gap timeout: a test's interleavings never depend on the machine's speed.
        Setup { alloc: "gap_timeout_ms = 10000\n".into(), log: "info".into() }
    }
}

/// `corelane run` as a child, with its own runtime dir (under the temp dir), a config file
/// naming every listener inside it, and its stderr in a file. Drop kills it and removes the dir.
pub struct Rig {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    stderr: PathBuf,
}

impl Rig {
    /// The default setup.
    pub fn start(name: &str) -> Rig {
        Self::start_with(name, &Setup::default())
    }

    pub fn start_with(name: &str, setup: &Setup) -> Rig {
        let mut rig = Self::prepare(name, setup);
        rig.launch(setup);
        rig
    }

    /// The directory and config, no daemon yet (a test may put files there first).
    pub fn prepare(name: &str, setup: &Setup) -> Rig {
        let dir = std::env::temp_dir().join(format!("cl-alloc-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("test.toml");
        let l = |layout: &str, listener: Listener| {
            format!("\"{layout}:{}\"", dir.join(listener.file()).display())
        };
        let text = format!(
            "[runtime]\ndir = {dir:?}\n\n[metrics]\nlisten = \"\"\n\n[pool]\nenabled = false\n\n\
             [alloc]\nlisteners = [{}, {}, {}, {}, {}]\n{}\n",
            l("native", Listener::Native),
            l("tt-metal", Listener::Auto),
            l("tt-metal-v4", Listener::V4),
            l("tt-metal-v5", Listener::V5),
            l("compact-v2", Listener::Compact),
            setup.alloc,
            dir = dir.display().to_string(),
        );
        fs::write(&config, text).unwrap();
        let stderr = dir.join("daemon.stderr");
        Rig { child: None, dir, config, stderr }
    }

    /// Starts the daemon and waits until its alloc server answers a query.
    pub fn launch(&mut self, setup: &Setup) {
        let log = fs::File::create(&self.stderr).unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .env("CORELANE_FRAMES_ENABLED", "false")
            .arg("-c")
            .arg(&self.config)
            .env("CORELANE_LOG", &setup.log)
            .env_remove("XDG_RUNTIME_DIR")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for("the alloc server to answer a query", || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the daemon exited at start ({status}): {}", self.log());
            }
            QueryClient::connect(&self.path(Listener::Native), Duration::from_secs(2))
                .is_ok_and(|mut q| q.usage(None).is_ok())
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a daemon runs").id()
    }

    pub fn path(&self, listener: Listener) -> PathBuf {
        self.dir.join(listener.file())
    }

    /// A query client on the native socket.
    pub fn query(&self) -> QueryClient {
        QueryClient::connect(&self.path(Listener::Native), Duration::from_secs(10)).unwrap()
    }

    /// Usage of every device, and the counters.
    pub fn usage(&self) -> proto::UsageReply {
        self.query().usage(None).unwrap()
    }

    pub fn counters(&self) -> proto::IngestCounters {
        self.usage().counters.expect("a usage reply carries the counters")
    }

    /// Polls the usage until `cond` holds; returns the reply that satisfied it.
    pub fn wait_usage(
        &self,
        what: &str,
        mut cond: impl FnMut(&proto::UsageReply) -> bool,
    ) -> proto::UsageReply {
        let mut q = self.query();
        let mut last = None;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let u = q.usage(None).unwrap();
            if cond(&u) {
                return u;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last usage: {:?}",
                last.as_ref().unwrap_or(&u)
            );
            last = Some(u);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the ledger applied at least `events` events; returns the usage then.
    pub fn wait_events(&self, events: u64) -> proto::UsageReply {
        self.wait_usage(&format!("{events} events applied"), |u| {
            u.counters.unwrap_or_default().events >= events
        })
    }

    /// Every live entry of the ledger.
    pub fn dump(&self) -> proto::DumpReply {
        self.query().dump().unwrap()
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Lines of the log containing every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until a log line contains every one of `needles`; returns it.
    pub fn wait_log(&self, needles: &[&str]) -> String {
        let mut found = None;
        wait_for(&format!("a log line with {needles:?}"), || {
            found = self.log_lines(needles).into_iter().next();
            found.is_some()
        });
        found.unwrap()
    }

    /// SIGTERM; the exit status (the directory stays until drop).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a daemon runs");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("daemon log of {}:\n{}", self.dir.display(), self.log());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Legacy records, as the original C clients send them.
// ---------------------------------------------------------------------------------------------

/// A TT-Metal record's head with the fields a client fills (the rest zero, as clients do).
pub fn head(msg_type: u8, device: i32, size: u64, buffer_type: u8, buffer_id: u64) -> LegacyHead {
    let mut h = LegacyHead::new_zeroed();
    h.msg_type = msg_type;
    h.device_id = I32::new(device);
    h.size = U64::new(size);
    h.buffer_type = buffer_type;
    h.process_id = I32::new(std::process::id() as i32);
    h.buffer_id = U64::new(buffer_id);
    h.timestamp = U64::new(1_700_000_000_000_000_000);
    h
}

/// The bytes of one record of `layout` (v4 128 B, v5 144 B, compact 48 B).
pub fn record(
    layout: Layout,
    msg_type: u8,
    device: i32,
    size: u64,
    buffer_type: u8,
    buffer_id: u64,
) -> Vec<u8> {
    match layout {
        Layout::TtMetalV4 => {
            let mut r = V4Record::new_zeroed();
            r.head = head(msg_type, device, size, buffer_type, buffer_id);
            r.as_bytes().to_vec()
        }
        Layout::TtMetalV5 => {
            let mut r = V5Record::new_zeroed();
            r.v4.head = head(msg_type, device, size, buffer_type, buffer_id);
            r.as_bytes().to_vec()
        }
        Layout::CompactV2 => {
            let mut r = CompactRecord::new_zeroed();
            r.msg_type = msg_type;
            r.buffer_type = buffer_type;
            r.device_id = U16::new(device as u16);
            r.padding = U32::new(0);
            r.size = U64::new(size);
            r.address = U64::new(buffer_id);
            r.timestamp = U64::new(1_700_000_000_000_000_000);
            r.as_bytes().to_vec()
        }
    }
}

/// A legacy client: one blocking connection, fixed-size records.
pub struct Legacy {
    pub stream: UnixStream,
    pub layout: Layout,
}

impl Legacy {
    pub fn connect(path: &Path, layout: Layout) -> Legacy {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Legacy { stream, layout }
    }

    pub fn send(&mut self, msg_type: MsgType, device: i32, size: u64, btype: u8, id: u64) {
        let bytes = record(self.layout, msg_type.code() as u8, device, size, btype, id);
        self.stream.write_all(&bytes).unwrap();
    }

    /// As `send`, for a record the daemon may refuse by closing the connection first (a
    /// second record after the one that showed a wrong layout): a broken pipe is fine.
    pub fn send_maybe_closed(
        &mut self,
        msg_type: MsgType,
        device: i32,
        size: u64,
        btype: u8,
        id: u64,
    ) {
        let bytes = record(self.layout, msg_type.code() as u8, device, size, btype, id);
        if let Err(e) = self.stream.write_all(&bytes) {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ),
                "{e}"
            );
        }
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one reply record (the v4 part of a v5 reply; compact replies are not read here).
    pub fn reply(&mut self) -> V4Record {
        let mut buf = vec![0u8; self.layout.record_len()];
        self.stream.read_exact(&mut buf).unwrap();
        V4Record::read_from_prefix(&buf).unwrap().0
    }

    /// QUERY(device) and its RESPONSE.
    pub fn query(&mut self, device: i32) -> V4Record {
        self.send(MsgType::Query, device, 0, 0, 0);
        self.reply()
    }

    /// DEVICE_INFO_QUERY(device) and its DEVICE_INFO_RESPONSE.
    pub fn device_info(&mut self, device: i32) -> V4Record {
        self.send(MsgType::DeviceInfoQuery, device, 0, 0, 0);
        self.reply()
    }

    /// Whether the daemon closed the connection (EOF or reset) within `wait`; bytes read
    /// meanwhile are returned too.
    pub fn closed_within(&mut self, wait: Duration) -> (bool, Vec<u8>) {
        closed_within(&mut self.stream, wait)
    }
}

/// Reads until EOF/reset (true) or `wait` passes (false); returns what was read too.
pub fn closed_within(stream: &mut UnixStream, wait: Duration) -> (bool, Vec<u8>) {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (false, got);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (true, got),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (false, got)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Native frames.
// ---------------------------------------------------------------------------------------------

/// One canonical frame.
pub fn frame(msg_type: u16, msg_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(ProtocolVersion::V2, msg_type, Flags::EMPTY, msg_id, body, &mut out);
    out
}

/// The event body of these fields (raw: no validation, so tests can send invalid ones).
pub fn body(device: i32, buffer_type: u8, buffer_id: u64, size: u64) -> EventBody {
    EventBody {
        device_id: I32::new(device),
        buffer_type,
        pad: [0; 3],
        buffer_id: U64::new(buffer_id),
        size: U64::new(size),
        timestamp_ns: U64::new(1),
    }
}

/// One native event frame with sequence number `seq`.
pub fn event_frame(seq: u64, kind: MsgType, device: i32, btype: u8, id: u64, size: u64) -> Vec<u8> {
    frame(kind.code(), seq, body(device, btype, id, size).as_bytes())
}

/// A native client: events with its sequence numbers, requests on the same connection.
pub struct Native {
    pub stream: UnixStream,
    /// The next sequence number.
    pub seq: u64,
    next_req: u64,
    decoder: Decoder,
    /// Frames read and not yet asked for: (type, id, flags, body).
    pending: Vec<(u16, u64, Flags, Vec<u8>)>,
}

impl Native {
    /// Connects and says Hello (first sequence number 0).
    pub fn connect(path: &Path) -> Native {
        let mut n = Self::connect_bare(path);
        let reply: proto::HelloReply =
            n.request(MsgType::Hello, &proto::Hello { name: "alloc-it".into(), first_seq: 0 });
        assert_eq!(reply.pid, std::process::id(), "the daemon names this process");
        n
    }

    /// Connects without a Hello.
    pub fn connect_bare(path: &Path) -> Native {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Native {
            stream,
            seq: 0,
            next_req: 1,
            decoder: Decoder::new(DecoderConfig { max_body_bytes: 64 << 20, ..Default::default() }),
            pending: Vec::new(),
        }
    }

    /// Sends one event with the next sequence number (fields not validated here).
    pub fn event(&mut self, kind: MsgType, device: i32, btype: u8, id: u64, size: u64) {
        let bytes = event_frame(self.seq, kind, device, btype, id, size);
        self.seq += 1;
        self.stream.write_all(&bytes).unwrap();
    }

    /// Sends a validated event with the next sequence number.
    pub fn send_event(&mut self, e: &Event) {
        self.event(e.kind, e.device.into(), e.buffer_type, e.buffer_id, e.size);
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends request `kind` and returns its reply (pushes in between are kept for later).
    pub fn request<Req: Message, Rep: Message + Default>(
        &mut self,
        kind: MsgType,
        req: &Req,
    ) -> Rep {
        let id = self.next_req;
        self.next_req += 1;
        self.raw(&frame(kind.code(), id, &req.encode_to_vec()));
        let (flags, body) = self.read(|t, i| t == kind.code() && i == id);
        assert!(!flags.contains(Flags::ERROR), "{kind:?} refused: {body:?}");
        Rep::decode(body.as_slice()).unwrap()
    }

    /// Usage of `device` (a reply ordered after every event this connection sent before).
    pub fn usage(&mut self, device: i32) -> proto::DeviceUsage {
        let reply: proto::UsageReply =
            self.request(MsgType::Query, &proto::UsageRequest { device: Some(device) });
        assert_eq!(reply.devices.len(), 1);
        reply.devices[0].clone()
    }

    /// Reads frames until one `wanted` accepts.
    pub fn read(&mut self, wanted: impl Fn(u16, u64) -> bool) -> (Flags, Vec<u8>) {
        loop {
            if let Some(i) = self.pending.iter().position(|(t, id, _, _)| wanted(*t, *id)) {
                let (_, _, flags, body) = self.pending.remove(i);
                return (flags, body);
            }
            let mut buf = [0u8; 65536];
            let n = self.stream.read(&mut buf).unwrap();
            assert!(n > 0, "the daemon closed the native connection");
            let pending = &mut self.pending;
            self.decoder
                .feed(&buf[..n], |e| match e {
                    WireEvent::Frame(f) => pending.push((
                        f.header.msg_type,
                        f.header.msg_id,
                        f.header.flags,
                        f.body.to_vec(),
                    )),
                    WireEvent::Error { error, .. } => panic!("bad frame from the daemon: {error}"),
                })
                .unwrap();
        }
    }

    /// Frames read so far and not taken.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

// ---------------------------------------------------------------------------------------------
// One interface over the three protocols.
// ---------------------------------------------------------------------------------------------

/// A protocol a behaviour is checked over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    V4,
    V5,
    Native,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::V4 => "v4",
            Via::V5 => "v5",
            Via::Native => "native",
        }
    }

    pub fn layout(self) -> Option<Layout> {
        match self {
            Via::V4 => Some(Layout::TtMetalV4),
            Via::V5 => Some(Layout::TtMetalV5),
            Via::Native => None,
        }
    }
}

/// Usage of one device as a legacy RESPONSE carries it (L1_SMALL includes SYSTEM_MEMORY, as in
/// the original), plus what only native replies carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub dram: u64,
    pub l1: u64,
    pub l1_small: u64,
    pub trace: u64,
    pub cb: u64,
    pub kernel: u64,
}

impl Usage {
    pub fn of_v4(r: &V4Record) -> Usage {
        Usage {
            dram: r.dram_allocated.get(),
            l1: r.l1_allocated.get(),
            l1_small: r.l1_small_allocated.get(),
            trace: r.trace_allocated.get(),
            cb: r.cb_allocated.get(),
            kernel: r.kernel_allocated.get(),
        }
    }

    pub fn of_native(d: &proto::DeviceUsage) -> Usage {
        Usage {
            dram: d.dram,
            l1: d.l1,
            l1_small: d.l1_small + d.system_memory,
            trace: d.trace,
            cb: d.cb,
            kernel: d.kernel,
        }
    }
}

/// A client over one protocol (the test process is its pid).
pub enum Client {
    Legacy(Legacy),
    Native(Native),
}

impl Client {
    /// Connects over `via`: legacy clients to the `tt-metal` listener (v4/v5 detected), native
    /// ones to the native listener.
    pub fn connect(rig: &Rig, via: Via) -> Client {
        match via.layout() {
            Some(layout) => Client::Legacy(Legacy::connect(&rig.path(Listener::Auto), layout)),
            None => Client::Native(Native::connect(&rig.path(Listener::Native))),
        }
    }

    /// One event (fields sent as given, valid or not).
    pub fn event(&mut self, kind: MsgType, device: i32, btype: u8, id: u64, size: u64) {
        match self {
            Client::Legacy(l) => l.send(kind, device, size, btype, id),
            Client::Native(n) => n.event(kind, device, btype, id, size),
        }
    }

    pub fn alloc(&mut self, device: i32, btype: u8, id: u64, size: u64) {
        self.event(MsgType::Alloc, device, btype, id, size);
    }

    pub fn free(&mut self, device: i32, id: u64) {
        self.event(MsgType::Free, device, 0, id, 0);
    }

    /// Usage of `device`, asked on this connection (after everything it sent).
    pub fn usage(&mut self, device: i32) -> Usage {
        match self {
            Client::Legacy(l) => {
                let r = l.query(device);
                assert_eq!(r.head.msg_type, MsgType::Response.code() as u8, "a RESPONSE");
                assert_eq!(r.head.device_id.get(), device, "the RESPONSE echoes the device");
                Usage::of_v4(&r)
            }
            Client::Native(n) => {
                let d = n.usage(device);
                assert_eq!(d.device, device, "the reply echoes the device");
                Usage::of_native(&d)
            }
        }
    }

    /// The bytes this client's protocol gives `stream`-level splits to (S25).
    pub fn raw(&mut self, bytes: &[u8]) {
        match self {
            Client::Legacy(l) => l.raw(bytes),
            Client::Native(n) => n.raw(bytes),
        }
    }

    pub fn stream(&mut self) -> &mut UnixStream {
        match self {
            Client::Legacy(l) => &mut l.stream,
            Client::Native(n) => &mut n.stream,
        }
    }
}

/// The entries of the dump held by `pid`, as (device, buffer_id, size, ref_count) per kind
/// (1 buffer, 2 CB, 3 kernel).
pub fn entries_of(dump: &proto::DumpReply, pid: u32) -> Vec<(u32, i32, u64, u64, u32)> {
    let mut v: Vec<_> = dump
        .allocations
        .iter()
        .filter(|a| a.pid == pid)
        .map(|a| (a.kind, a.device, a.buffer_id, a.size, a.ref_count))
        .collect();
    v.sort();
    v
}
