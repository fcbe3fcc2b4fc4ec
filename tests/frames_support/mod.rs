//! A real daemon with the frame worker on a free loopback port, and a plain blocking client
//! that speaks frame protocol v1 through `corelane::frames::codec`.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corelane::frames::codec::{self, PREFIX_BYTES};
use corelane::frames::proto::{self, envelope::Payload, Envelope};
use corelane::frames::vision::synthetic::Synthetic;
use corelane::frames::vision::yuv::RawFormat;

pub const BIN: &str = env!("CARGO_BIN_EXE_corelane");

/// A daemon hosting the frame worker.
pub struct Worker {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub stderr: PathBuf,
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Worker {
    /// Starts a daemon whose `[frames]` section is `frames` (extra keys) on a free port.
    pub fn start(name: &str, frames: &str) -> Worker {
        Self::start_on(name, frames, free_port())
    }

    /// As [`start`](Self::start) on `port`.
    pub fn start_on(name: &str, frames: &str, port: u16) -> Worker {
        let dir = std::env::temp_dir().join(format!("cl-frames-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = dir.join("test.toml");
        let text = format!(
            "[runtime]\ndir = {:?}\n\n[metrics]\nlisten = \"\"\npublish_interval_ms = 50\n\n[pool]\nenabled = false\n\n\
             [alloc]\nenabled = false\n\n[frames]\nlisten = \"{addr}\"\n{frames}\n",
            dir.display().to_string()
        );
        fs::write(&config, text).unwrap();
        let stderr = dir.join("daemon.stderr");
        let mut worker = Worker { child: None, dir, addr, config, stderr };
        worker.launch();
        worker
    }

    /// Starts (or restarts) the daemon and waits until the worker accepts a connection.
    pub fn launch(&mut self) {
        let log = fs::File::create(&self.stderr).unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(&self.config)
            .env("CORELANE_LOG", "info")
            .env_remove("XDG_RUNTIME_DIR")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the daemon exited at start ({status}): {}", self.log());
            }
            if TcpStream::connect(self.addr).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "the worker never listened: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(&child),
                rustix::process::Signal::TERM,
            );
            let _ = child.wait();
        }
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The counters file's value of `name` (with `labels` rendered as in `/metrics`), via
    /// `corelane status`-free means: the counters file, read with the crate's reader.
    pub fn counter(&self, name: &str) -> Option<u64> {
        let path = self.dir.join("counters");
        let reader = corelane::metrics::CountersReader::open(&path).ok()?;
        reader.snapshot().into_iter().find(|s| s.name == name).map(|s| s.value)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A blocking frame protocol v1 client.
pub struct Peer {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The WindowUpdates [`recv_skip_heartbeats`](Self::recv_skip_heartbeats) skipped.
    pub window_updates: Vec<u32>,
}

impl Peer {
    pub fn connect(addr: SocketAddr) -> Peer {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Peer { stream, buf: Vec::new(), window_updates: Vec::new() }
    }

    pub fn send(&mut self, payload: Payload) {
        let mut out = Vec::new();
        codec::encode("cam0", payload, &mut out);
        self.stream.write_all(&out).unwrap();
    }

    pub fn send_envelope(&mut self, env: &Envelope) {
        let mut out = Vec::new();
        codec::encode_envelope(env, &mut out);
        self.stream.write_all(&out).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next whole message already read, decoded (a valid envelope: the worker's output).
    fn buffered(&mut self) -> Option<Envelope> {
        let end = codec::split(&self.buf, 64 << 20).unwrap()?;
        let mut env = Envelope::default();
        codec::decode(&self.buf[PREFIX_BYTES..end], &mut env).unwrap();
        self.buf.drain(..end);
        Some(env)
    }

    /// The next message, or `None` at end of stream.
    pub fn recv(&mut self) -> Option<Payload> {
        loop {
            if let Some(env) = self.buffered() {
                return env.payload;
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next message that is not a Heartbeat or a WindowUpdate (those are kept in
    /// `window_updates`).
    pub fn recv_skip_heartbeats(&mut self) -> Option<Payload> {
        loop {
            match self.recv() {
                Some(Payload::Heartbeat(_)) => continue,
                Some(Payload::WindowUpdate(w)) => self.window_updates.push(w.new_window),
                other => return other,
            }
        }
    }

    /// Init asking for `w`x`h` NV12 with a window of `window`; returns InitOk.
    pub fn init(&mut self, w: u32, h: u32, window: u32) -> proto::InitOk {
        self.send(Payload::Init(init_msg(w, h, window)));
        match self.recv_skip_heartbeats() {
            Some(Payload::InitOk(ok)) => ok,
            other => panic!("expected InitOk, got {other:?}"),
        }
    }
}

pub fn init_msg(w: u32, h: u32, window: u32) -> proto::Init {
    proto::Init {
        model: "motion".into(),
        caps: Some(proto::Capabilities {
            accepted_pixel_formats: vec![
                proto::PixelFormat::PfNv12 as i32,
                proto::PixelFormat::PfI420 as i32,
            ],
            accepted_codecs: vec![proto::Codec::None as i32, proto::Codec::Jpeg as i32],
            max_width: w,
            max_height: h,
            max_inflight: window,
            ..Default::default()
        }),
        session_id: "test-session".into(),
    }
}

/// The next synthetic frame as a protocol Frame.
pub fn frame_msg(
    source: &mut Synthetic,
    format: RawFormat,
    id: u64,
    w: u32,
    h: u32,
) -> proto::Frame {
    let mut data = Vec::new();
    let (planes, n) = source.frame(format, &mut data);
    proto::Frame {
        frame_id: id,
        ts_mono_ns: id * 1000,
        ts_pdt_ns: id * 1000,
        ts_utc_ns: id * 2000,
        width: w,
        height: h,
        pixel_format: match format {
            RawFormat::Nv12 => proto::PixelFormat::PfNv12 as i32,
            RawFormat::I420 => proto::PixelFormat::PfI420 as i32,
        },
        codec: proto::Codec::None as i32,
        planes: planes[..n]
            .iter()
            .map(|p| proto::Plane {
                stride: p.stride as u32,
                offset: p.offset as u32,
                size: p.size as u32,
            })
            .collect(),
        color_space: "BT.709".into(),
        color_range: "full".into(),
        data,
        session_id: "test-session".into(),
    }
}

// ---- Extensions for the end-to-end suite -------------------------------------------------

impl Worker {
    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon runs").id()
    }

    /// The daemon's resident set size, KiB (`/proc/<pid>/status` VmRSS).
    pub fn rss_kb(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Whether the daemon still runs (panics with its log if it exited).
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("the daemon exited ({status}): {}", self.log());
        }
    }

    /// Polls the counters file until `name` satisfies `pred` (10 s at most); returns the value
    /// seen, or panics with what was last seen.
    pub fn wait_counter(&self, name: &str, pred: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = None;
        loop {
            last = self.counter(name).or(last);
            if let Some(v) = last {
                if pred(v) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "counter {name}: last seen {last:?}, never the expected value; series: {:?}",
                self.series()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every series of the counters file with its value.
    pub fn series(&self) -> Vec<(String, u64)> {
        let path = self.dir.join("counters");
        match corelane::metrics::CountersReader::open(&path) {
            Ok(r) => r.snapshot().into_iter().map(|s| (s.name, s.value)).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Peer {
    /// Connects with a read timeout of `timeout`.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> Peer {
        let peer = Peer::connect(addr);
        peer.stream.set_read_timeout(Some(timeout)).unwrap();
        peer
    }

    /// Writes `bytes`, reporting a write error instead of panicking (hostile peers).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next message as a whole envelope (stream id, msg_type), `None` at end of stream.
    pub fn recv_envelope(&mut self) -> Option<Envelope> {
        loop {
            if let Some(end) = codec::split(&self.buf, 64 << 20).unwrap() {
                let mut env = Envelope::default();
                codec::decode(&self.buf[PREFIX_BYTES..end], &mut env)
                    .unwrap_or_else(|e| panic!("the worker sent a bad envelope: {e}"));
                self.buf.drain(..end);
                return Some(env);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Waits for the worker to close the connection, skipping what it still sends; returns
    /// the messages skipped. Panics if it stays open for `within`.
    pub fn expect_close(&mut self, within: Duration) -> Vec<Payload> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        self.stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        loop {
            if let Ok(Some(end)) = codec::split(&self.buf, 64 << 20) {
                let mut env = Envelope::default();
                codec::decode(&self.buf[PREFIX_BYTES..end], &mut env).unwrap();
                self.buf.drain(..end);
                seen.extend(env.payload);
                continue;
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return seen,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return seen,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(Instant::now() < deadline, "still open after {within:?}; got {seen:?}");
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next Error (skipping Heartbeats); panics on anything else.
    pub fn expect_error(&mut self) -> proto::Error {
        match self.recv_skip_heartbeats() {
            Some(Payload::Error(e)) => e,
            other => panic!("expected an Error, got {other:?}"),
        }
    }

    /// The next Result (skipping Heartbeats); panics on anything else.
    pub fn expect_result(&mut self) -> proto::Result {
        match self.recv_skip_heartbeats() {
            Some(Payload::Result(r)) => r,
            other => panic!("expected a Result, got {other:?}"),
        }
    }

    /// Init with `init`; returns InitOk.
    pub fn init_with(&mut self, init: proto::Init) -> proto::InitOk {
        self.send(Payload::Init(init));
        match self.recv_skip_heartbeats() {
            Some(Payload::InitOk(ok)) => ok,
            other => panic!("expected InitOk, got {other:?}"),
        }
    }

    /// The local port (to find the worker's side of this connection).
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }
}

/// Init accepting only `formats` (and `codecs`), `w`x`h`, window `window`.
pub fn init_formats(
    formats: &[proto::PixelFormat],
    codecs: &[proto::Codec],
    w: u32,
    h: u32,
    window: u32,
) -> proto::Init {
    let mut init = init_msg(w, h, window);
    let caps = init.caps.as_mut().unwrap();
    caps.accepted_pixel_formats = formats.iter().map(|f| *f as i32).collect();
    caps.accepted_codecs = codecs.iter().map(|c| *c as i32).collect();
    init
}

/// An envelope with explicit (possibly wrong) header fields.
pub fn envelope(version: u32, msg_type: proto::MsgType, payload: Option<Payload>) -> Envelope {
    Envelope {
        protocol_version: version,
        stream_id: "cam0".into(),
        msg_type: msg_type as i32,
        payload,
    }
}

/// A raw frame of `picture` in `format` with row stride `stride` (>= width; padding bytes
/// are 0x55), planes in the order `order` (indices into Y, [U,] V/UV) placed back to back.
pub fn frame_of(
    picture: &corelane::frames::detector::Picture,
    format: RawFormat,
    id: u64,
    stride: usize,
    order: &[usize],
) -> proto::Frame {
    let (w, h) = (picture.width as usize, picture.height as usize);
    let (cw, ch) = (w / 2, h / 2);
    // Each plane: rows of (row bytes) content, padded to its stride.
    let mut planes: Vec<(usize, Vec<u8>)> = Vec::new();
    let pad = |rows: usize, row: usize, stride: usize, px: &dyn Fn(usize, usize) -> u8| {
        let mut out = vec![0x55u8; rows * stride];
        for r in 0..rows {
            for c in 0..row {
                out[r * stride + c] = px(r, c);
            }
        }
        out
    };
    planes.push((stride, pad(h, w, stride, &|r, c| picture.y[r * w + c])));
    match format {
        RawFormat::Nv12 => {
            let uv = |r: usize, c: usize| {
                if c.is_multiple_of(2) {
                    picture.u[r * cw + c / 2]
                } else {
                    picture.v[r * cw + c / 2]
                }
            };
            planes.push((stride, pad(ch, w, stride, &uv)));
        }
        RawFormat::I420 => {
            let cs = stride.div_ceil(2);
            planes.push((cs, pad(ch, cw, cs, &|r, c| picture.u[r * cw + c])));
            planes.push((cs, pad(ch, cw, cs, &|r, c| picture.v[r * cw + c])));
        }
    }
    assert_eq!(order.len(), planes.len(), "order names every plane");
    let mut data = Vec::new();
    let mut refs = vec![proto::Plane::default(); planes.len()];
    for &i in order {
        let (stride, bytes) = &planes[i];
        refs[i] = proto::Plane {
            stride: *stride as u32,
            offset: data.len() as u32,
            size: bytes.len() as u32,
        };
        data.extend_from_slice(bytes);
    }
    proto::Frame {
        frame_id: id,
        ts_mono_ns: id * 1000,
        ts_pdt_ns: id * 1000,
        ts_utc_ns: id * 2000,
        width: w as u32,
        height: h as u32,
        pixel_format: match format {
            RawFormat::Nv12 => proto::PixelFormat::PfNv12 as i32,
            RawFormat::I420 => proto::PixelFormat::PfI420 as i32,
        },
        codec: proto::Codec::None as i32,
        planes: refs,
        color_space: "BT.709".into(),
        color_range: "full".into(),
        data,
        session_id: "test-session".into(),
    }
}

/// A JPEG frame (one plane covering the data).
pub fn jpeg_frame(jpeg: Vec<u8>, id: u64, w: u32, h: u32) -> proto::Frame {
    proto::Frame {
        frame_id: id,
        ts_mono_ns: id * 1000,
        ts_utc_ns: id * 2000,
        width: w,
        height: h,
        pixel_format: proto::PixelFormat::PfJpeg as i32,
        codec: proto::Codec::Jpeg as i32,
        planes: vec![proto::Plane { stride: 0, offset: 0, size: jpeg.len() as u32 }],
        color_space: "BT.709".into(),
        color_range: "full".into(),
        data: jpeg,
        session_id: "test-session".into(),
        ..Default::default()
    }
}

/// The boxes of a Result as `[x1, y1, x2, y2]`.
pub fn boxes(r: &proto::Result) -> Vec<[f32; 4]> {
    r.detections
        .as_ref()
        .map(|d| {
            d.items
                .iter()
                .map(|i| {
                    let b = i.bbox.unwrap_or_default();
                    [b.x1, b.y1, b.x2, b.y2]
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every truth box has a detection whose four edges are within `tol` pixels, and
/// there are no other detections.
pub fn matches_truth(found: &[[f32; 4]], truth: &[[f32; 4]], tol: f32) -> bool {
    found.len() == truth.len()
        && truth
            .iter()
            .all(|t| found.iter().any(|f| f.iter().zip(t).all(|(a, b)| (a - b).abs() <= tol)))
}

/// The receive queue (bytes the kernel holds that the application has not read) of the
/// loopback TCP socket `local_port` -> `remote_port`, from `/proc/net/tcp`.
pub fn tcp_rx_queue(local_port: u16, remote_port: u16) -> Option<u64> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let port = |s: &str| u16::from_str_radix(s.rsplit(':').next()?, 16).ok();
        if port(f[1]) == Some(local_port) && port(f[2]) == Some(remote_port) {
            let rx = f[4].split(':').nth(1)?;
            return u64::from_str_radix(rx, 16).ok();
        }
    }
    None
}

/// What a reader thread saw.
#[derive(Debug)]
pub enum Seen {
    /// A message, and when it was read.
    Msg(Payload, Instant),
    /// End of stream (or a reset), and when.
    Closed(Instant),
}

impl Peer {
    /// Splits the peer: the socket to write on, and a thread that reads every message into a
    /// channel (ending with [`Seen::Closed`]).
    pub fn split(self) -> (TcpStream, std::sync::mpsc::Receiver<Seen>) {
        let writer = self.stream.try_clone().unwrap();
        self.stream.set_read_timeout(None).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut peer = self;
        std::thread::spawn(move || loop {
            let msg = peer.recv_or_closed();
            let now = Instant::now();
            match msg {
                Some(p) => {
                    if tx.send(Seen::Msg(p, now)).is_err() {
                        return;
                    }
                }
                None => {
                    let _ = tx.send(Seen::Closed(now));
                    return;
                }
            }
        });
        (writer, rx)
    }

    /// As [`recv`](Self::recv), but any read error is the end of stream.
    fn recv_or_closed(&mut self) -> Option<Payload> {
        loop {
            if let Some(env) = self.buffered() {
                return env.payload;
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// One encoded message.
pub fn encoded(payload: Payload) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode("cam0", payload, &mut out);
    out
}

/// One encoded message with stream id `stream_id` (the worker echoes it in its answers).
pub fn encoded_as(stream_id: &str, payload: Payload) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode(stream_id, payload, &mut out);
    out
}
