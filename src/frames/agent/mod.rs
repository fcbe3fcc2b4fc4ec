//! The edge agent of frame protocol v1: captures frames from a [`source`], streams them to
//! an inference worker over TCP and collects the results (`corelane agent`).
//!
//! The protocol is all in the sans-IO [`core::AgentCore`]; this driver owns one thread, a
//! non-blocking `TcpStream`, the clock and the source. Each turn of the loop: connect when
//! the backoff delay is over, capture when the frame clock (1/fps) is due and the core takes
//! a frame, move the core's output into the write buffer (a partial write is kept at its
//! front), then `poll` the socket until the earliest of the core's timer, the next capture
//! and the reconnect time, and feed what was read into the core.
//!
//! A connect attempt blocks for at most one second (the only blocking call); capture pauses
//! for it. A worker choosing another size than `--size` is logged and the capture size is
//! kept (seed 004's known limitation); JPEG transport adapts to it best.

pub mod core;
pub mod metrics;
pub mod source;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use self::core::Event;
pub use self::core::{
    AgentCore, CoreConfig, JpegEncoder, JpegFailed, Offer, PlaneRef, RawFormat, RawFrame, Summary,
};
pub use self::source::{FrameInfo, FrameSource, RawFile, SourceError, Synthetic};
use crate::frames::detector::Picture;
use crate::frames::proto::Policy;
use crate::frames::vision::{jpeg, yuv};

/// Where frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// Moving shapes (`--source synthetic`).
    Synthetic,
    /// Raw frames of `--format` and `--size`, back to back, looped (`--source file:PATH`).
    File(PathBuf),
    /// A local tensor pool stream (`--source pool:STREAM`), read through the daemon's
    /// control socket.
    Pool(u32),
}

/// Everything `corelane agent` is told.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The worker, `host:port`.
    pub worker: String,
    /// The frame source.
    pub source: SourceSpec,
    /// Raw format of captured frames (default NV12).
    pub format: RawFormat,
    /// Frame width (even; default 640).
    pub width: u32,
    /// Frame height (even; default 480).
    pub height: u32,
    /// Capture rate; 0: as fast as credits allow (default 10).
    pub fps: f32,
    /// What happens to a frame with no credit (default LATEST_WINS).
    pub policy: Policy,
    /// Stop after this many frames are answered or dropped; 0: run until a signal.
    pub frames: u64,
    /// The largest window accepted (Capabilities.max_inflight; default 4).
    pub window_cap: u32,
    /// FIFO queue depth (default 8).
    pub fifo_depth: usize,
    /// Ask the worker to choose JPEG.
    pub prefer_jpeg: bool,
    /// Envelope.stream_id (default "cam0").
    pub stream_id: String,
    /// Init.model (informational).
    pub model: String,
    /// Seed of the reconnect jitter.
    pub seed: u64,
    /// Install SIGINT/SIGTERM handlers that stop the run (the CLI does; tests do not).
    pub handle_signals: bool,
    /// An outside stop flag: set it to stop the run as a signal would.
    pub stop: Option<Arc<AtomicBool>>,
    /// Log one line per connection event to stderr.
    pub verbose: bool,
    /// The local daemon's control socket, for `--source pool:STREAM`.
    pub socket: PathBuf,
    /// Write the agent's metrics (seed 004's names) to this counters file.
    pub counters_file: Option<PathBuf>,
    /// Serve them on this address (Prometheus text at `/metrics`).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            worker: "127.0.0.1:7070".into(),
            source: SourceSpec::Synthetic,
            format: RawFormat::Nv12,
            width: 640,
            height: 480,
            fps: 10.0,
            policy: Policy::LatestWins,
            frames: 0,
            window_cap: 4,
            fifo_depth: 8,
            prefer_jpeg: false,
            stream_id: "cam0".into(),
            model: String::new(),
            seed: 1,
            handle_signals: false,
            stop: None,
            verbose: true,
            socket: crate::config::Config::default()
                .control_socket_path(&|k| std::env::var(k).ok()),
            counters_file: None,
            metrics_listen: None,
        }
    }
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `--worker` does not resolve to an address.
    #[error("worker address {addr}: {why}")]
    Address {
        /// What was given.
        addr: String,
        /// Why it does not resolve.
        why: String,
    },
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A signal handler could not be installed.
    #[error("installing the SIGINT/SIGTERM handler: {0}")]
    Signal(std::io::Error),
    /// `poll` failed.
    #[error("poll: {0}")]
    Poll(std::io::Error),
    /// The counters file or the metrics endpoint could not be set up.
    #[error("metrics: {0}")]
    Metrics(crate::metrics::MetricsError),
}

/// The degradation encoder: [`yuv::unpack`] into a reused [`Picture`], then
/// [`jpeg::encode`] (baseline 4:2:0).
#[derive(Debug, Default)]
pub struct VisionJpeg {
    picture: Picture,
}

impl JpegEncoder for VisionJpeg {
    fn encode(
        &mut self,
        frame: &RawFrame<'_>,
        quality: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), JpegFailed> {
        yuv::unpack(
            frame.format,
            frame.data,
            frame.width,
            frame.height,
            frame.planes,
            &mut self.picture,
        );
        jpeg::encode(&self.picture, quality, out).map_err(|_| JpegFailed)
    }
}

/// The longest single wait, so the stop flag is seen promptly.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// Timeout of one connect attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Read buffer size.
const READ_CHUNK: usize = 64 * 1024;

/// Runs the agent until `frames` frames are settled (or a stop), then sends End, waits up
/// to 2 s for the results in flight, and returns the summary.
pub fn run(options: &AgentOptions) -> Result<Summary, AgentError> {
    let source: Box<dyn FrameSource> = match &options.source {
        SourceSpec::Synthetic => {
            Box::new(Synthetic::new(options.format, options.width, options.height, options.seed))
        }
        SourceSpec::File(path) => {
            Box::new(RawFile::open(path, options.format, options.width, options.height)?)
        }
        SourceSpec::Pool(stream) => {
            Box::new(source::PoolSource::attach(&options.socket, *stream, options.format)?)
        }
    };
    run_with(options, source, Box::<VisionJpeg>::default())
}

/// [`run`] with a given source and JPEG encoder.
pub fn run_with(
    options: &AgentOptions,
    mut source: Box<dyn FrameSource>,
    encoder: Box<dyn JpegEncoder>,
) -> Result<Summary, AgentError> {
    let addr = resolve(&options.worker)?;
    let stop = options.stop.clone().unwrap_or_default();
    if options.handle_signals {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(AgentError::Signal)?;
        }
    }
    let start = Instant::now();
    let cfg = CoreConfig {
        stream_id: options.stream_id.clone(),
        session_id: format!("{}-{}", options.stream_id, std::process::id()),
        model: options.model.clone(),
        format: options.format,
        width: options.width,
        height: options.height,
        fps: options.fps,
        policy: options.policy,
        window_cap: options.window_cap.max(1),
        fifo_depth: options.fifo_depth.max(1),
        prefer_jpeg: options.prefer_jpeg,
        seed: options.seed,
    };
    let mut core = AgentCore::new(cfg, encoder, Some(Instant::now), start);
    let period = (options.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / options.fps as f64));
    let log = |line: std::fmt::Arguments<'_>| {
        if options.verbose {
            eprintln!("corelane agent: {line}");
        }
    };

    let mut sock: Option<TcpStream> = None;
    let mut connect_at = start;
    let mut wbuf: Vec<u8> = Vec::new();
    let mut woff = 0usize;
    let mut rbuf = vec![0u8; READ_CHUNK];
    let mut fbuf: Vec<u8> = Vec::new();
    let mut next_capture = start;
    let mut captured = 0u64;
    let mut capture_over = false;
    let mut stopped = false;

    let mut metrics = match (&options.counters_file, options.metrics_listen) {
        (None, None) => None,
        (file, listen) => Some(
            metrics::AgentMetrics::start(file.as_deref(), listen).map_err(AgentError::Metrics)?,
        ),
    };
    if let Some(addr) = metrics.as_ref().and_then(metrics::AgentMetrics::local_addr) {
        log(format_args!("metrics on http://{addr}/metrics"));
    }
    loop {
        let now = Instant::now();
        if let Some(m) = &mut metrics {
            m.refresh(&core, now, false);
        }
        if stop.load(Ordering::Relaxed) && !stopped {
            stopped = true;
            capture_over = true;
            log(format_args!("stopping (signal): End, then up to 2 s for the frames in flight"));
            core.abort(now);
        }
        if core.is_done() && !core.wants_close() && sock.is_none() {
            break;
        }

        // connect
        if sock.is_none() && !core.is_done() && now >= connect_at {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    // Non-blocking and no-delay are plain socket options on a fresh stream.
                    if let Err(e) = s.set_nonblocking(true).and_then(|()| s.set_nodelay(true)) {
                        log(format_args!("socket options: {e}"));
                    }
                    wbuf.clear();
                    woff = 0;
                    core.on_connected(Instant::now());
                    log(format_args!("connected to {addr}"));
                    sock = Some(s);
                }
                Err(e) => {
                    let now = Instant::now();
                    if let Some(delay) = core.on_closed(now) {
                        log(format_args!(
                            "connect to {addr} failed ({e}); reconnect in {:.2} s",
                            delay.as_secs_f64()
                        ));
                        connect_at = now + delay;
                    }
                    continue;
                }
            }
        }

        // capture
        let capture_due = !capture_over
            && core.wants_frame()
            && match period {
                Some(_) => now >= next_capture,
                None => core.can_send_now(),
            };
        if capture_due {
            if let Some(info) = source.next_frame(&mut fbuf)? {
                let offered = core.offer(&info.frame(&fbuf), now);
                if !matches!(offered, Offer::Blocked | Offer::Closed) {
                    captured += 1;
                }
            }
            if let Some(p) = period {
                next_capture += p;
                if next_capture + p < now {
                    next_capture = now + p; // fell behind: do not burst to catch up
                }
            }
            if options.frames > 0 && captured >= options.frames {
                capture_over = true;
                core.finish(now);
            }
        }
        drain_events(&mut core, options, &log);

        // write
        core.poll_output(&mut wbuf);
        let mut closed = false;
        if let Some(s) = sock.as_mut() {
            closed = flush(s, &wbuf, &mut woff).is_err();
            if woff == wbuf.len() {
                wbuf.clear();
                woff = 0;
            }
        }

        // read / wait
        if !closed {
            if let Some(s) = sock.as_mut() {
                let wait = wait_for(&core, now, capture_over, period, next_capture);
                let mut events = PollFlags::IN;
                if woff < wbuf.len() {
                    events |= PollFlags::OUT;
                }
                let ts = Timespec::try_from(wait).unwrap_or(Timespec { tv_sec: 0, tv_nsec: 0 });
                let revents = {
                    let mut fds = [PollFd::new(&*s, events)];
                    match rustix::event::poll(&mut fds, Some(&ts)) {
                        Ok(_) => fds[0].revents(),
                        Err(rustix::io::Errno::INTR) => PollFlags::empty(),
                        Err(e) => return Err(AgentError::Poll(e.into())),
                    }
                };
                if revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                    closed = read_all(s, &mut rbuf, &mut core);
                }
            } else if !core.is_done() {
                let until = connect_at.min(if capture_over || period.is_none() {
                    connect_at
                } else {
                    next_capture
                });
                std::thread::sleep(until.saturating_duration_since(now).min(MAX_WAIT));
            }
        }

        // timers
        let now = Instant::now();
        if core.poll_timeout().is_some_and(|t| t <= now) {
            core.on_timeout(now);
        }
        drain_events(&mut core, options, &log);

        // close
        if closed || core.wants_close() {
            if let (Some(s), false, true) = (sock.as_mut(), closed, core.is_done()) {
                core.poll_output(&mut wbuf);
                let _ = flush(s, &wbuf, &mut woff); // best effort: the session is over
            }
            sock = None;
            wbuf.clear();
            woff = 0;
            let now = Instant::now();
            match core.on_closed(now) {
                Some(delay) => {
                    log(format_args!(
                        "connection to {addr} lost; reconnect in {:.2} s",
                        delay.as_secs_f64()
                    ));
                    connect_at = now + delay;
                }
                None => break,
            }
        }
    }
    if let Some(m) = &mut metrics {
        m.refresh(&core, Instant::now(), true);
    }
    Ok(core.summary())
}

/// The plain-text report of a run.
pub fn format_summary(s: &Summary) -> String {
    let mut errors: Vec<String> =
        s.errors_by_code.iter().map(|e| format!("{} {}", e.code, e.count)).collect();
    if errors.is_empty() {
        errors.push("none".into());
    }
    format!(
        "frames: captured {} sent {} results {} (out of order {}) dropped {} lost {} \
         discarded {}\n\
         errors: {} ({})\n\
         rtt ms: p50 {:.2} p99 {:.2} max {:.2}; encode ms: p50 {:.3} p99 {:.3}\n\
         detections {} track ids seen {}\n\
         connections {} reconnects {} peer timeouts {}\n\
         window {} in flight {}; max-bytes hits {} jpeg switches {} jpeg frames {} \
         ratio {:.2}\n",
        s.frames_captured_total,
        s.ai_frames_sent_total,
        s.results_total,
        s.frames_out_of_order_total,
        s.ai_drops_latestwins_total,
        s.frames_lost_total,
        s.frames_discarded_total,
        s.errors_total,
        errors.join(", "),
        s.ai_rtt_ms.p50,
        s.ai_rtt_ms.p99,
        s.ai_rtt_ms.max,
        s.ai_encode_ms.p50,
        s.ai_encode_ms.p99,
        s.detections_total,
        s.track_ids_seen,
        s.connections_total,
        s.reconnects_total,
        s.peer_timeouts_total,
        s.ai_window_size,
        s.ai_inflight,
        s.frame_bytes_max_hit_total,
        s.ai_degrade_jpeg_switch_total,
        s.jpeg_frames_total,
        s.jpeg_compression_ratio,
    )
}

fn resolve(worker: &str) -> Result<SocketAddr, AgentError> {
    let err = |why: String| AgentError::Address { addr: worker.to_owned(), why };
    worker
        .to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("resolves to no address".into()))
}

/// How long to wait in `poll`: until the core's timer, the next capture, at most
/// [`MAX_WAIT`].
fn wait_for(
    core: &AgentCore,
    now: Instant,
    capture_over: bool,
    period: Option<Duration>,
    next_capture: Instant,
) -> Duration {
    let mut until = now + MAX_WAIT;
    if let Some(t) = core.poll_timeout() {
        until = until.min(t);
    }
    if !capture_over && core.wants_frame() {
        match period {
            Some(_) => until = until.min(next_capture),
            None if core.can_send_now() => until = now,
            None => {}
        }
    }
    until.saturating_duration_since(now)
}

/// Writes from `buf[*off..]` until done or the socket would block.
fn flush(s: &mut TcpStream, buf: &[u8], off: &mut usize) -> std::io::Result<()> {
    while *off < buf.len() {
        match s.write(&buf[*off..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => *off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads until the socket would block, feeding the core; true when the peer closed.
/// Reads until the socket would block, at most [`READS_PER_LOOP`] chunks (a worker that
/// floods cannot starve capture and timers); returns whether the connection ended.
fn read_all(s: &mut TcpStream, buf: &mut [u8], core: &mut AgentCore) -> bool {
    for _ in 0..READS_PER_LOOP {
        match s.read(buf) {
            Ok(0) => return true,
            Ok(n) => {
                core.on_bytes(&buf[..n], Instant::now());
                if core.wants_close() {
                    return false;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    false
}

/// Chunks [`read_all`] takes in one turn of the loop.
const READS_PER_LOOP: usize = 16;

fn drain_events(
    core: &mut AgentCore,
    options: &AgentOptions,
    log: &dyn Fn(std::fmt::Arguments<'_>),
) {
    while let Some(event) = core.poll_event() {
        if let Event::Ready { width, height, .. } = event {
            if (width, height) != (options.width, options.height) && width != 0 {
                log(format_args!(
                    "warning: the worker chose {width}x{height}, capture stays at {}x{}",
                    options.width, options.height
                ));
            }
        }
        log_event(log, event);
    }
}

fn log_event(log: &dyn Fn(std::fmt::Arguments<'_>), event: Event) {
    match event {
        Event::Ready { window, codec, pixel_format, width, height, max_frame_bytes } => {
            log(format_args!(
                "InitOk: window {window}, {} {}, {width}x{height}, max frame bytes {max_frame_bytes}",
                pixel_format.as_str_name(),
                codec.as_str_name()
            ))
        }
        Event::WorkerError { code, frame_id } => {
            log(format_args!("worker error {} (frame {frame_id})", code.as_str_name()))
        }
        Event::PeerTimeout => log(format_args!("no message from the worker for 10 s: closing")),
        Event::ProtocolError => log(format_args!("invalid message from the worker: closing")),
        Event::JpegSwitch => log(format_args!("switching to JPEG transport (quality 85)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vision_jpeg_encodes_a_decodable_smaller_frame() {
        let mut source = Synthetic::new(RawFormat::Nv12, 320, 240, 5);
        let mut buf = Vec::new();
        let info = source.next_frame(&mut buf).unwrap().unwrap();
        let mut out = Vec::new();
        VisionJpeg::default().encode(&info.frame(&buf), core::JPEG_QUALITY, &mut out).unwrap();
        assert!(out.len() * 2 < buf.len(), "{} JPEG bytes for {} raw", out.len(), buf.len());
        let mut picture = Picture::default();
        jpeg::decode(&out, &mut picture).unwrap();
        assert_eq!((picture.width, picture.height), (320, 240));
    }

    #[test]
    fn the_summary_text_names_every_count() {
        let text = format_summary(&Summary::default());
        for word in ["sent", "results", "dropped", "errors", "rtt", "detections", "reconnects"] {
            assert!(text.contains(word), "{word} in {text}");
        }
    }
}
