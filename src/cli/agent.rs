//! `corelane agent`: the edge agent of frame protocol v1 (`crate::frames::agent`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::frames::agent::{self, AgentOptions, RawFormat, SourceSpec};
use crate::frames::proto::Policy;

/// Examples for `corelane agent --help`.
pub const EXAMPLES: &str = "\
EXAMPLES
    # the worker of `corelane run` listens on 127.0.0.1:7070: stream 100 synthetic NV12
    # 640x480 frames at 10 fps, then print the summary
    corelane agent --worker 127.0.0.1:7070 --source synthetic --frames 100

    # a recorded I420 file, FIFO with 4 frames in flight, JPEG transport, JSON summary
    corelane agent --worker 127.0.0.1:7070 --source file:clip.i420 --format i420 \\
        --size 1280x720 --policy fifo --window-cap 4 --prefer-jpeg --json
";

/// The arguments of `corelane agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The inference worker to stream to, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_worker)]
    pub worker: String,
    /// Where frames come from: `synthetic` (moving shapes), `file:PATH` (raw frames of
    /// --format and --size back to back, looped at the end of the file) or `pool:STREAM`
    /// (a local tensor pool stream: u8 [height*3/2, width] 4:2:0 in --format, or
    /// [height, width, 3] RGB; read through the daemon's control socket, see --socket).
    #[arg(long, value_name = "SOURCE", default_value = "synthetic", value_parser = parse_source)]
    pub source: SourceSpec,
    /// Raw pixel format of the captured frames.
    #[arg(long, value_enum, default_value = "nv12")]
    pub format: FormatArg,
    /// Frame size WIDTHxHEIGHT, both even and non-zero (the Init's max_width/max_height).
    #[arg(long, value_name = "WxH", default_value = "640x480", value_parser = parse_size)]
    pub size: (u32, u32),
    /// Capture rate in frames per second; 0 captures as fast as credits allow.
    #[arg(long, value_name = "N", default_value_t = 10.0)]
    pub fps: f32,
    /// With no credit free: latest-wins keeps one pending frame and replaces it with the
    /// newest (counted as a drop); fifo queues up to --fifo-depth frames and pauses capture
    /// when the queue is full (no drop).
    #[arg(long, value_enum, default_value = "latest-wins")]
    pub policy: PolicyArg,
    /// Stop after N frames are answered or dropped, then send End and wait up to 2 s for the
    /// results in flight; 0 runs until SIGINT or SIGTERM.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub frames: u64,
    /// The most frames in flight the agent accepts (Capabilities.max_inflight; the worker's
    /// credits and WindowUpdates are capped to it).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub window_cap: u32,
    /// Frames the FIFO policy queues while waiting for credits.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub fifo_depth: u64,
    /// Ask the worker to choose JPEG transport (frames are then encoded at quality 85).
    #[arg(long)]
    pub prefer_jpeg: bool,
    /// The local daemon's control socket, for --source pool:STREAM (default: the one
    /// `corelane run` with the default config creates, in $XDG_RUNTIME_DIR/corelane or
    /// /tmp/corelane-$UID).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Write the agent's metrics (seed 004's names: ai_window_size, ai_inflight,
    /// ai_drops_latestwins_total, ai_rtt_seconds, ...) to this counters file, refreshed every
    /// 100 ms (read it with any counters-file reader, or serve it with --metrics-listen).
    #[arg(long, value_name = "PATH")]
    pub counters_file: Option<PathBuf>,
    /// Serve the agent's metrics as Prometheus text on ADDR (e.g. 127.0.0.1:9091/metrics).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Envelope.stream_id of every message.
    #[arg(long, value_name = "NAME", default_value = "cam0")]
    pub stream_id: String,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// No connection log lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `--format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// Y plane, then interleaved UV (4:2:0).
    Nv12,
    /// Y, then U, then V planes (4:2:0).
    I420,
}

/// `--policy`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    /// Replace the pending frame with the newest.
    LatestWins,
    /// Queue frames for credits.
    Fifo,
}

/// Runs `corelane agent`.
pub fn run(args: &AgentArgs) -> ExitCode {
    let options = AgentOptions {
        worker: args.worker.clone(),
        source: args.source.clone(),
        format: match args.format {
            FormatArg::Nv12 => RawFormat::Nv12,
            FormatArg::I420 => RawFormat::I420,
        },
        width: args.size.0,
        height: args.size.1,
        fps: args.fps,
        policy: match args.policy {
            PolicyArg::LatestWins => Policy::LatestWins,
            PolicyArg::Fifo => Policy::Fifo,
        },
        frames: args.frames,
        window_cap: args.window_cap,
        fifo_depth: args.fifo_depth as usize,
        prefer_jpeg: args.prefer_jpeg,
        stream_id: args.stream_id.clone(),
        handle_signals: true,
        verbose: !args.quiet,
        ..AgentOptions::default()
    };
    let options = AgentOptions {
        socket: args.socket.clone().unwrap_or(options.socket.clone()),
        counters_file: args.counters_file.clone(),
        metrics_listen: args.metrics_listen,
        ..options
    };
    if !(args.fps >= 0.0 && args.fps.is_finite()) {
        eprintln!("corelane agent: --fps: expected a rate >= 0, got {}", args.fps);
        return ExitCode::from(2);
    }
    match agent::run(&options) {
        Ok(summary) => {
            if args.json {
                match serde_json::to_string_pretty(&summary) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("corelane agent: {e}");
                        return ExitCode::from(1);
                    }
                }
            } else {
                print!("{}", agent::format_summary(&summary));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corelane agent: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--size WxH`: both even and non-zero.
pub fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WIDTHxHEIGHT such as 640x480, got {text:?}"))?;
    let num = |s: &str, what: &str| {
        s.trim().parse::<u32>().map_err(|_| format!("{what} {s:?} is not a number (in {text:?})"))
    };
    let (w, h) = (num(w, "width")?, num(h, "height")?);
    if w == 0 || h == 0 || w % 2 != 0 || h % 2 != 0 {
        return Err(format!("expected an even, non-zero width and height (4:2:0), got {w}x{h}"));
    }
    Ok((w, h))
}

/// `--worker HOST:PORT`.
pub fn parse_worker(text: &str) -> Result<String, String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT such as 127.0.0.1:7070, got {text:?}"))?;
    if host.is_empty() {
        return Err(format!("expected a host before ':' in {text:?}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(text.to_owned()),
        _ => Err(format!("expected a port 1-65535 after ':', got {port:?}")),
    }
}

/// `--source synthetic|file:PATH|pool:STREAM`.
pub fn parse_source(text: &str) -> Result<SourceSpec, String> {
    if text == "synthetic" {
        return Ok(SourceSpec::Synthetic);
    }
    if let Some(stream) = text.strip_prefix("pool:") {
        return match stream.parse::<u32>() {
            Ok(id) if id != 0 => Ok(SourceSpec::Pool(id)),
            _ => Err(format!("expected pool:STREAM with a stream id 1-4294967295, got {text:?}")),
        };
    }
    match text.strip_prefix("file:") {
        Some(path) if !path.is_empty() => Ok(SourceSpec::File(PathBuf::from(path))),
        _ => Err(format!("expected `synthetic`, `file:PATH` or `pool:STREAM`, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_even_and_non_zero() {
        assert_eq!(parse_size("640x480"), Ok((640, 480)));
        assert!(parse_size("641x480").unwrap_err().contains("641x480"));
        assert!(parse_size("0x480").is_err());
        assert!(parse_size("640").unwrap_err().contains("WIDTHxHEIGHT"));
        assert!(parse_size("ax480").unwrap_err().contains("not a number"));
    }

    #[test]
    fn workers_are_host_and_port() {
        assert!(parse_worker("127.0.0.1:7070").is_ok());
        assert!(parse_worker("[::1]:7070").is_ok());
        assert!(parse_worker("localhost").unwrap_err().contains("HOST:PORT"));
        assert!(parse_worker("h:0").is_err());
        assert!(parse_worker(":7070").is_err());
    }

    #[test]
    fn sources() {
        assert_eq!(parse_source("synthetic"), Ok(SourceSpec::Synthetic));
        assert_eq!(parse_source("file:/x.nv12"), Ok(SourceSpec::File("/x.nv12".into())));
        assert!(parse_source("camera").is_err());
    }
}
