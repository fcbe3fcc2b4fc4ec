//! The application thread's cost of `seq()` + `alloc()`: a sanity check, not the perf suite.
//!
//! `cargo run --release --example alloc_tracker_cost -- <alloc.sock> <shm|socket> [samples]
//! [pace_ns]`
//! against a running daemon. Each sample times one `seq()` + `alloc()` with `Instant` (the
//! clock's own cost, measured the same way, is printed as `clock`); an untimed `free` of the
//! same address follows, so the ledger stays small. Percentiles from the sorted samples.

use std::time::{Duration, Instant};

use corelane::alloc::tracker::{AllocTracker, Transport};
use corelane::alloc::BufferType;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let socket = args.get(1).expect("usage: alloc_tracker_cost <alloc.sock> <shm|socket> [n]");
    let transport = match args.get(2).map(String::as_str) {
        Some("socket") => Transport::Socket,
        _ => Transport::Shm,
    };
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    // Busy-wait between samples (ns): a real allocator does work between reports.
    let pace = Duration::from_nanos(args.get(4).and_then(|s| s.parse().ok()).unwrap_or(0));
    let tracker =
        AllocTracker::builder().socket(socket).transport(transport).buffer_records(1 << 20).build();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tracker.stats().connected || (transport == Transport::Shm && tracker.stats().rings == 0)
    {
        assert!(Instant::now() < deadline, "no daemon at {socket}");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(20));
    let mut clock = Vec::with_capacity(n);
    let mut cost = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let addr = 0x1000 + (i % 1024) * 64;
        let t0 = Instant::now();
        let t1 = Instant::now();
        clock.push((t1 - t0).as_nanos() as u32);
        let t0 = Instant::now();
        let seq = tracker.seq();
        tracker.alloc(seq, 0, BufferType::L1, addr, 64);
        let t1 = Instant::now();
        cost.push((t1 - t0).as_nanos() as u32);
        let seq = tracker.seq();
        tracker.free(seq, 0, addr);
        let spin = Instant::now();
        while spin.elapsed() < pace {
            std::hint::spin_loop();
        }
        if i % 4096 == 4095 && transport == Transport::Socket {
            // Let the background thread keep up (a real allocator is not a tight loop).
            std::thread::yield_now();
        }
    }
    let ok = tracker.flush(Duration::from_secs(10));
    let pct = |v: &mut Vec<u32>| {
        v.sort_unstable();
        let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
        format!("p50 {} p99 {} p99.9 {} max {}", at(0.5), at(0.99), at(0.999), v[v.len() - 1])
    };
    println!("transport {transport:?}, {n} samples, flushed {ok}, {:?}", tracker.stats());
    println!("seq+alloc ns: {}", pct(&mut cost));
    println!("clock     ns: {}", pct(&mut clock));
}
