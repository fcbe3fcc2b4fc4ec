//! A producer that dies holding a claim: attaches as the producer of a stream, commits N
//! frames (each frame's bytes are its seq), claims the next slot, writes half its payload,
//! prints `claimed seq S epoch E client C`, and waits to be killed (its keeper thread keeps
//! the lease alive meanwhile). `tests/pool.rs` runs it and SIGKILLs it mid-write.
//!
//! Usage: `pool_claim_holder SOCKET ALLOWED_DIR STREAM ANNOUNCE_MS KEEPALIVE_MS COMMITTED LEN`

use std::io::Write;
use std::time::Duration;

use corelane::pool::{monotonic_ns, PoolOptions, Producer};
use corelane::rings::shm::{Dtype, MajorOrder, ProgressUnit, TensorHeader};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, allowed, stream, announce_ms, keepalive_ms, committed, len] = &args[..] else {
        eprintln!(
            "usage: pool_claim_holder SOCKET ALLOWED_DIR STREAM ANNOUNCE_MS KEEPALIVE_MS \
             COMMITTED LEN"
        );
        std::process::exit(2);
    };
    let number = |s: &str| s.parse::<u64>().expect("a number");
    let len = number(len) as usize;
    let mut opts = PoolOptions::new(socket, number(stream) as u32);
    opts.allowed_dirs = vec![allowed.into()];
    opts.announce_period = Duration::from_millis(number(announce_ms));
    opts.keepalive_interval = Duration::from_millis(number(keepalive_ms));
    let mut producer = Producer::attach(opts).expect("attach");
    producer.spawn_keeper().expect("keeper");
    let tensor =
        TensorHeader::new(Dtype::Uint8, MajorOrder::Row, &[len as i32], &[], ProgressUnit::None, 0)
            .expect("a tensor header");
    for _ in 0..number(committed) {
        let seq = producer.next_seq().expect("attached");
        producer.publish(&vec![seq as u8; len], tensor, monotonic_ns()).expect("publish");
    }
    let epoch = producer.epoch().expect("attached");
    let client_id = producer.client_id();
    let mut claim = producer.claim(len as u32).expect("claim");
    let seq = claim.seq();
    // Half the payload is this seq's pattern, the rest the bytes of no seq.
    claim.write_at(0, &vec![seq as u8; len / 2]);
    claim.write_at(len / 2, &vec![0xEE; len - len / 2]);
    println!("claimed seq {seq} epoch {epoch} client {client_id}");
    std::io::stdout().flush().expect("stdout");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}
