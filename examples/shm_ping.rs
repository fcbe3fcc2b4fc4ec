//! Pings the running daemon over a shared-memory control channel and prints the round trips.
//!
//! `cargo run --release --example shm_ping -- [SOCKET] [COUNT] [busy|futex]`
use std::time::{Duration, Instant};

use corelane::control::{Client, Transport};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let socket = args.next().unwrap_or_else(|| {
        let dir = std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into());
        format!("{dir}/corelane/control.sock")
    });
    let count: usize = args.next().map_or(Ok(10_000), |s| s.parse())?;
    let busy = args.next().as_deref() != Some("futex");
    let mut client = Client::builder()
        .transport(Transport::SharedMemory)
        .busy_poll(busy)
        .timeout(Duration::from_secs(5))
        .connect(&socket)?;
    println!("channel {}", client.channel_name().unwrap_or("?"));
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        client.ping()?;
        rtts.push(start.elapsed());
    }
    rtts.sort();
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q) as usize];
    println!("p50 {:?} p99 {:?} max {:?}", at(0.5), at(0.99), rtts[rtts.len() - 1]);
    Ok(())
}
