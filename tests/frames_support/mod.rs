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
            "[runtime]\ndir = {:?}\n\n[metrics]\nlisten = \"\"\n\n[pool]\nenabled = false\n\n\
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
}

impl Peer {
    pub fn connect(addr: SocketAddr) -> Peer {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Peer { stream, buf: Vec::new() }
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

    /// The next message, or `None` at end of stream.
    pub fn recv(&mut self) -> Option<Payload> {
        loop {
            if let Some(end) = codec::split(&self.buf, 64 << 20).unwrap() {
                let mut env = Envelope::default();
                codec::decode(&self.buf[PREFIX_BYTES..end], &mut env).unwrap();
                self.buf.drain(..end);
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

    /// The next message that is not a Heartbeat.
    pub fn recv_skip_heartbeats(&mut self) -> Option<Payload> {
        loop {
            match self.recv() {
                Some(Payload::Heartbeat(_)) => continue,
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
