//! The tensor pool's subcommands: `produce`, `consume`, `inspect`, `pool status`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{value_parser, Arg, ArgAction, ArgMatches, Command};

use crate::daemon::CliContext;
use crate::pool::proto::{PoolStatus, PoolStatusRequest};
use crate::pool::{
    monotonic_ns, ClaimError, Consumer, PoolOptions, Producer, Wait, MSG_POOL_STATUS,
};
use crate::rings::shm::{Dtype, MajorOrder, ProgressUnit, TensorHeader};

/// The subcommands, for the service's `commands()`.
pub fn commands() -> Vec<Command> {
    vec![
        Command::new("produce")
            .about("Attach as a stream's producer and publish N synthetic frames.")
            .long_about(
                "Attach to the running daemon's tensor pool as the producer of --stream, map \
                 the epoch's files, and publish --count frames of --shape and --dtype at \
                 --rate frames per second (0 = as fast as possible). Each frame's bytes are \
                 its seq (mod 256), so a consumer can check them. One line per frame with its \
                 seq; a summary at the end. Detaches at the end (the driver bumps the epoch).",
            )
            .arg(stream_arg())
            .arg(
                Arg::new("count")
                    .long("count")
                    .short('n')
                    .value_name("N")
                    .required(true)
                    .value_parser(value_parser!(u64))
                    .help("Frames to publish."),
            )
            .arg(
                Arg::new("shape")
                    .long("shape")
                    .value_name("HxWxC")
                    .default_value("480x640x3")
                    .help("Tensor dims, row-major, 1 to 8 of them separated by x."),
            )
            .arg(
                Arg::new("dtype")
                    .long("dtype")
                    .value_name("TYPE")
                    .default_value("u8")
                    .value_parser([
                        "u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64",
                    ])
                    .help("Element type."),
            )
            .arg(
                Arg::new("rate")
                    .long("rate")
                    .value_name("HZ")
                    .default_value("30")
                    .value_parser(value_parser!(f64))
                    .help("Frames per second (0 = as fast as possible)."),
            )
            .arg(quiet_arg()),
        Command::new("consume")
            .about("Attach as a consumer of a stream and print one line per frame.")
            .long_about(
                "Attach to the running daemon's tensor pool as a consumer of --stream, map the \
                 regions read-only after validating their URIs, and print one line per frame \
                 (seq, epoch, bytes, dims, latency from the slot's timestamp). Follows the \
                 stream across epochs (a new producer), joins a running stream at its newest \
                 frame. Stops after --count frames, or after --idle-timeout-ms without a \
                 frame (exit 1 if fewer than --count arrived).",
            )
            .arg(stream_arg())
            .arg(
                Arg::new("count")
                    .long("count")
                    .short('n')
                    .value_name("N")
                    .value_parser(value_parser!(u64))
                    .help("Stop after N frames (default: until interrupted or idle)."),
            )
            .arg(
                Arg::new("wait")
                    .long("wait")
                    .value_name("HOW")
                    .default_value("futex")
                    .value_parser(["spin", "futex"])
                    .help("Spin on the ring, or sleep on the stream's futex between frames."),
            )
            .arg(
                Arg::new("idle_timeout_ms")
                    .long("idle-timeout-ms")
                    .value_name("MS")
                    .default_value("0")
                    .value_parser(value_parser!(u64))
                    .help("Give up after this long without a frame (0 = never)."),
            )
            .arg(quiet_arg()),
        Command::new("inspect")
            .about("Decode a tensor-pool region file: superblock and slot headers.")
            .long_about(
                "Decode the superblock and, for a header ring, every slot header (state, seq, \
                 sizes, tensor header, whether it validates) of any region file or \
                 shm:file?path=... URI, including files another implementation wrote. Reads \
                 only; no daemon needed.",
            )
            .arg(Arg::new("region").value_name("PATH|URI").required(true).help("The file."))
            .arg(
                Arg::new("json")
                    .long("json")
                    .action(ArgAction::SetTrue)
                    .help("Print JSON instead of text."),
            )
            .arg(
                Arg::new("slots")
                    .long("slots")
                    .value_name("N")
                    .value_parser(value_parser!(usize))
                    .help("Show at most N slots (default 4096)."),
            ),
        Command::new("pool")
            .about("Tensor pool commands of the running daemon.")
            .subcommand_required(true)
            .subcommand(
                Command::new("status")
                    .about("Streams (epoch, producer lease, consumers, frames, drops) and leases."),
            ),
    ]
}

fn stream_arg() -> Arg {
    Arg::new("stream")
        .long("stream")
        .short('s')
        .value_name("ID")
        .required(true)
        .value_parser(value_parser!(u32))
        .help("Stream id (0: a dynamic stream the driver picks).")
}

fn quiet_arg() -> Arg {
    Arg::new("quiet")
        .long("quiet")
        .short('q')
        .action(ArgAction::SetTrue)
        .help("No line per frame, only the summary.")
}

/// Runs subcommand `name`.
pub fn run(name: &str, matches: &ArgMatches, cx: &CliContext) -> ExitCode {
    match name {
        "produce" => produce(matches, cx),
        "consume" => consume(matches, cx),
        "inspect" => inspect(matches),
        "pool" => match matches.subcommand() {
            Some(("status", _)) => status(cx),
            _ => ExitCode::from(2),
        },
        _ => ExitCode::from(2),
    }
}

/// Client options from the daemon's config: its allowlist, announce and keepalive periods.
fn options(cx: &CliContext, stream_id: u32) -> Result<PoolOptions, ExitCode> {
    let pool = crate::pool::service::pool_config(&cx.config).map_err(|e| {
        eprintln!("corelane: pool config: {e}");
        ExitCode::from(2)
    })?;
    let mut opts = PoolOptions::new(&cx.socket, stream_id);
    opts.allowed_dirs = pool.shm.allowed_base_dirs.iter().map(Into::into).collect();
    opts.announce_period = Duration::from_millis(u64::from(pool.policies.announce_period_ms));
    opts.keepalive_interval =
        Duration::from_millis(u64::from(pool.policies.lease_keepalive_interval_ms));
    opts.timeout = cx.timeout.max(Duration::from_millis(100));
    Ok(opts)
}

fn parse_shape(text: &str) -> Result<Vec<i32>, String> {
    let dims: Result<Vec<i32>, _> = text.split('x').map(str::parse::<i32>).collect();
    match dims {
        Ok(d) if (1..=8).contains(&d.len()) && d.iter().all(|&v| v > 0) => Ok(d),
        _ => Err(format!("--shape: expected 1 to 8 positive dims like 480x640x3, got '{text}'")),
    }
}

fn dtype(name: &str) -> (Dtype, usize) {
    match name {
        "i8" => (Dtype::Int8, 1),
        "u16" => (Dtype::Uint16, 2),
        "i16" => (Dtype::Int16, 2),
        "u32" => (Dtype::Uint32, 4),
        "i32" => (Dtype::Int32, 4),
        "u64" => (Dtype::Uint64, 8),
        "i64" => (Dtype::Int64, 8),
        "f32" => (Dtype::Float32, 4),
        "f64" => (Dtype::Float64, 8),
        _ => (Dtype::Uint8, 1),
    }
}

fn produce(m: &ArgMatches, cx: &CliContext) -> ExitCode {
    let stream = *m.get_one::<u32>("stream").expect("required");
    let count = *m.get_one::<u64>("count").expect("required");
    let rate = *m.get_one::<f64>("rate").expect("has a default");
    let quiet = m.get_flag("quiet");
    let dims = match parse_shape(m.get_one::<String>("shape").expect("has a default")) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("corelane produce: {e}");
            return ExitCode::from(2);
        }
    };
    let (dtype, elem) = dtype(m.get_one::<String>("dtype").expect("has a default"));
    let bytes = dims.iter().map(|&d| d as u64).product::<u64>() * elem as u64;
    let Ok(len) = u32::try_from(bytes) else {
        eprintln!("corelane produce: a frame of {bytes} bytes is over 4 GiB");
        return ExitCode::from(2);
    };
    let tensor = match TensorHeader::new(dtype, MajorOrder::Row, &dims, &[], ProgressUnit::None, 0)
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("corelane produce: bad tensor: {e:?}");
            return ExitCode::from(2);
        }
    };
    let opts = match options(cx, stream) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let mut producer = match Producer::attach(opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("corelane produce: cannot attach to stream {stream}: {e}");
            return ExitCode::from(1);
        }
    };
    if !quiet {
        println!(
            "attached: stream {} epoch {} client {} ({} bytes per frame)",
            producer.stream_id(),
            producer.epoch().unwrap_or(0),
            producer.client_id(),
            len
        );
    }
    let period = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let start = Instant::now();
    let mut payload = vec![0u8; len as usize];
    let (mut sent, mut dropped) = (0u64, 0u64);
    let mut i = 0u64;
    while sent < count {
        if let Some(period) = period {
            let due = start + period.mul_f64(i as f64);
            while Instant::now() < due {
                producer.do_work(monotonic_ns());
                std::thread::sleep((due - Instant::now()).min(Duration::from_millis(1)));
            }
        }
        i += 1;
        producer.do_work(monotonic_ns());
        let next = producer.next_seq().unwrap_or(0);
        payload.fill(next as u8);
        match producer.publish(&payload, tensor, monotonic_ns()) {
            Ok(seq) => {
                sent += 1;
                if !quiet {
                    println!("seq {seq} epoch {}", producer.epoch().unwrap_or(0));
                }
            }
            Err(ClaimError::NotAttached) => {
                dropped += 1;
                if period.is_none() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if start.elapsed() > Duration::from_secs(30) && sent == 0 {
                    let why = producer.last_error().unwrap_or_default();
                    eprintln!("corelane produce: no lease for 30 s: {why}");
                    return ExitCode::from(1);
                }
            }
            Err(e) => {
                eprintln!("corelane produce: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let took = start.elapsed();
    println!(
        "published {sent} frames in {:.3} s ({dropped} claims refused while not attached)",
        took.as_secs_f64()
    );
    producer.close();
    ExitCode::SUCCESS
}

fn consume(m: &ArgMatches, cx: &CliContext) -> ExitCode {
    let stream = *m.get_one::<u32>("stream").expect("required");
    let count = m.get_one::<u64>("count").copied();
    let wait = match m.get_one::<String>("wait").map(String::as_str) {
        Some("spin") => Wait::Spin,
        _ => Wait::Futex,
    };
    let idle = *m.get_one::<u64>("idle_timeout_ms").expect("has a default");
    let quiet = m.get_flag("quiet");
    let opts = match options(cx, stream) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let mut consumer = match Consumer::attach(opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corelane consume: cannot attach to stream {stream}: {e}");
            return ExitCode::from(1);
        }
    };
    // Keepalives and announces on their own thread: printing a line per frame must not
    // starve the lease.
    if let Err(e) = consumer.spawn_keeper() {
        eprintln!("corelane consume: cannot start the keeper thread: {e}");
        return ExitCode::from(1);
    }
    if !quiet {
        println!(
            "attached: stream {} epoch {}",
            consumer.stream_id(),
            consumer.epoch().unwrap_or(0)
        );
    }
    let mut payload = vec![0u8; 64 << 20];
    let mut got = 0u64;
    let mut bad = 0u64;
    let mut last_frame = Instant::now();
    let slice = Duration::from_millis(100);
    while count.is_none_or(|c| got < c) {
        match consumer.recv(&mut payload, slice, wait) {
            Ok(frame) => {
                got += 1;
                last_frame = Instant::now();
                let expected = frame.seq as u8;
                let intact = payload[..frame.payload_len].iter().all(|&b| b == expected);
                if !intact {
                    bad += 1;
                }
                if !quiet {
                    let now = monotonic_ns();
                    let shape = &frame.tensor.shape;
                    println!(
                        "seq {} epoch {} bytes {} dims {:?} latency_us {}{}",
                        frame.seq,
                        consumer.epoch().unwrap_or(0),
                        frame.payload_len,
                        shape.dims(),
                        now.saturating_sub(frame.tensor.timestamp_ns) / 1000,
                        if intact { "" } else { " (payload is not the producer's pattern)" }
                    );
                }
            }
            Err(_) => {
                if idle > 0 && last_frame.elapsed() >= Duration::from_millis(idle) {
                    break;
                }
            }
        }
    }
    let s = consumer.stats();
    println!(
        "consumed {got} frames (gap {}, late {}, invalid {}, epochs mapped {}, not the \
         producer's pattern {bad})",
        s.drops_gap, s.drops_late, s.invalid, s.mapped
    );
    consumer.close();
    if count.is_some_and(|c| got < c) {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn inspect(m: &ArgMatches) -> ExitCode {
    let region = m.get_one::<String>("region").expect("required");
    let mut opts = crate::pool::inspect::InspectOptions::default();
    if let Some(&n) = m.get_one::<usize>("slots") {
        opts.max_slots = n;
    }
    match crate::pool::inspect::inspect_region(region, &opts) {
        Ok(report) => {
            if m.get_flag("json") {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("corelane inspect: {e}");
                        return ExitCode::from(1);
                    }
                }
            } else {
                print!("{report}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corelane inspect: {e}");
            ExitCode::from(1)
        }
    }
}

fn status(cx: &CliContext) -> ExitCode {
    let reply = crate::control::Client::builder()
        .timeout(cx.timeout)
        .connect(&cx.socket)
        .and_then(|mut c| c.call::<PoolStatus>(MSG_POOL_STATUS, &PoolStatusRequest {}));
    let status = match reply {
        Ok(s) => s,
        Err(e) => {
            eprintln!("corelane pool status: no answer from {}: {e}", cx.socket.display());
            return ExitCode::from(1);
        }
    };
    println!(
        "{} stream(s), {} lease(s), {} registered consumer(s)",
        status.streams.len(),
        status.leases,
        status.registered_consumers
    );
    println!(
        "{:>8} {:<10} {:>20} {:>10} {:>8} {:>9} {:>10} {:>8}",
        "stream", "profile", "epoch", "producer", "node", "consumers", "frames", "drops"
    );
    for s in &status.streams {
        let producer = s.producer_client_id.map_or("-".to_owned(), |c| c.to_string());
        let node = s.producer_node_id.map_or("-".to_owned(), |n| n.to_string());
        println!(
            "{:>8} {:<10} {:>20} {:>10} {:>8} {:>9} {:>10} {:>8}{}",
            s.stream_id,
            s.profile,
            s.epoch,
            producer,
            node,
            s.consumers,
            s.frames,
            s.drops,
            if s.dynamic { " (dynamic)" } else { "" }
        );
    }
    ExitCode::SUCCESS
}
