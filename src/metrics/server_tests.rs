//! The `/metrics` server against clients that do not play along: a client that never reads its
//! response, one that reads it slowly, and idle sockets filling the connection cap (the
//! wt-review1 findings). Responses here are megabytes, so they outlast the socket buffers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// A source whose scrape is about `n * 130` bytes (a daemon with many series, or many lanes).
fn big_source(n: usize) -> impl MetricsSource {
    // Built from a real sample with the fields overridden, so the test does not depend on
    // every field of `Sample`.
    let file = CountersFile::in_memory(&[CounterSpec::counter("review_big_total", &[], "")])
        .expect("one counter fits");
    let mut base = Vec::new();
    file.reader().snapshot_into(&mut base);
    let base = base.pop().expect("one sample");
    let label = "x".repeat(100);
    move |out: &mut Vec<Sample>| {
        for i in 0..n {
            out.push(Sample {
                name: format!("review_big_total{{i=\"{i}\",pad=\"{label}\"}}"),
                value: i as u64,
                ..base.clone()
            });
        }
    }
}

fn serve_big(n: usize, config: ServerConfig) -> MetricsServer {
    MetricsServer::start_with("127.0.0.1:0".parse().unwrap(), big_source(n), config).unwrap()
}

/// A server of one small counter on a free loopback port.
fn serve_small(config: ServerConfig) -> MetricsServer {
    MetricsServer::start_with("127.0.0.1:0".parse().unwrap(), big_source(1), config).unwrap()
}

fn status(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

/// Connects, sends a full GET, and never reads: a response of megabytes fills both socket
/// buffers, and the rest waits on the server side.
fn stuck_reader(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    s
}

/// Time until the status line of a scrape arrives.
fn time_to_status(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    started.elapsed()
}

/// A client that sends `GET /metrics` and never reads does not hold the server: a scrape beside
/// it is answered at once (was: it waited in a blocking write for the write timeout).
#[test]
fn a_client_that_never_reads_does_not_stall_other_scrapes() {
    let config = ServerConfig { write_timeout: Duration::from_secs(2), ..ServerConfig::default() };
    let server = serve_big(80_000, config);
    let addr = server.local_addr();
    let _stuck = stuck_reader(addr);
    std::thread::sleep(Duration::from_millis(500));
    let took = time_to_status(addr);
    eprintln!("scrape status after {took:?}");
    assert!(
        took < Duration::from_millis(1500),
        "a scrape waited {took:?} behind a client that does not read"
    );
    server.stop();
}

/// `stop` keeps its promise (within 100 ms, plus the join) while a response is blocked on a
/// client that does not read: the daemon's shutdown does not wait on a remote peer.
#[test]
fn stop_is_prompt_while_a_response_is_blocked() {
    let config = ServerConfig { write_timeout: Duration::from_secs(3), ..ServerConfig::default() };
    let server = serve_big(80_000, config);
    let addr = server.local_addr();
    let _stuck = stuck_reader(addr);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    server.stop();
    let took = started.elapsed();
    eprintln!("stop took {took:?}");
    assert!(took < Duration::from_secs(1), "stop took {took:?} behind a client that does not read");
}

/// The write timeout bounds the whole response, not each write: a client reading 256 KiB every
/// 200 ms (progress within any per-write timeout) neither delays other scrapes past it nor
/// keeps its own connection much past it.
#[test]
fn a_slow_reader_cannot_hold_the_server_past_its_write_timeout() {
    let config =
        ServerConfig { write_timeout: Duration::from_millis(500), ..ServerConfig::default() };
    // About 26 MB: at 1.3 MB/s the slow reader would need 20 s for all of it.
    let server = serve_big(200_000, config);
    let addr = server.local_addr();
    // A small receive buffer, so the client sees the server give up soon after it does, not
    // after reading megabytes the kernel had buffered (autotuning is off once it is set).
    let mut slow = TcpStream::connect(addr).unwrap();
    rustix::net::sockopt::set_socket_recv_buffer_size(&slow, 64 * 1024).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let asked = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    let trickle = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        slow.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        while !flag.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let mut got = 0;
            while got < 256 * 1024 {
                match slow.read(&mut buf) {
                    Ok(0) => return (total, Some(asked.elapsed())),
                    Err(e) => {
                        eprintln!("trickle: {e} after {total} bytes, {:?}", asked.elapsed());
                        return (total, Some(asked.elapsed()));
                    }
                    Ok(n) => {
                        got += n;
                        total += n;
                    }
                }
            }
        }
        (total, None)
    });
    std::thread::sleep(Duration::from_millis(500));
    let took = time_to_status(addr);
    eprintln!("scrape status after {took:?}");
    std::thread::sleep(Duration::from_secs(2));
    done.store(true, Ordering::Relaxed);
    let (total, closed_after) = trickle.join().unwrap();
    eprintln!("slow reader: {total} bytes, closed after {closed_after:?}");
    assert!(
        took < config.write_timeout * 3,
        "a scrape waited {took:?} behind a slow reader (write_timeout {:?})",
        config.write_timeout
    );
    let closed_after = closed_after.expect("the slow reader's connection was never closed");
    assert!(
        closed_after < config.write_timeout + Duration::from_secs(2),
        "the slow reader kept its connection {closed_after:?} (write_timeout {:?})",
        config.write_timeout
    );
    assert!(total < 20_000_000, "the slow reader got {total} bytes: the whole response");
    server.stop();
}

/// 32 connections that send nothing do not deny a scrape: at the cap, the oldest connection
/// without a complete request head makes room (was: the scrape was answered 503).
#[test]
fn idle_clients_at_the_cap_do_not_deny_a_scrape() {
    let server = serve_small(ServerConfig::default());
    let addr = server.local_addr();
    let _idle: Vec<TcpStream> = (0..32).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    assert_eq!(status(&response), "HTTP/1.1 200 OK", "a scrape beside 32 idle sockets");
    server.stop();
}

/// At the cap the connection dropped for a newcomer is the oldest one without a head; the
/// others stay open.
#[test]
fn at_the_cap_the_oldest_connection_without_a_head_makes_room() {
    let config = ServerConfig { max_connections: 3, ..ServerConfig::default() };
    let server = serve_small(config);
    let addr = server.local_addr();
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..3 {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        idle.push(s);
        // Accepted in this order.
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
    // The oldest was closed (with a 503); the two younger ones are still waiting for a head.
    let mut oldest = String::new();
    idle[0].set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(idle[0].read_to_string(&mut oldest).is_ok(), "the oldest is still open");
    assert!(oldest.is_empty() || status(&oldest) == "HTTP/1.1 503 Service Unavailable");
    for younger in &mut idle[1..] {
        let mut byte = [0u8; 1];
        let err = younger.read(&mut byte).expect_err("a younger idle connection was closed");
        assert!(matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ));
    }
    server.stop();
}

/// Only when every connection is in the middle of a response does a newcomer get a 503, and it
/// arrives whole (the request it sends meanwhile does not reset it away).
#[test]
fn a_503_only_when_every_connection_is_mid_response() {
    let config = ServerConfig { max_connections: 2, ..ServerConfig::default() };
    let server = serve_big(80_000, config);
    let addr = server.local_addr();
    let _stuck: Vec<TcpStream> = (0..2).map(|_| stuck_reader(addr)).collect();
    // Both heads read and both responses rendered (about 10 MB each).
    std::thread::sleep(Duration::from_secs(1));
    let mut extra = TcpStream::connect(addr).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
    let mut refused = String::new();
    let _ = extra.read_to_string(&mut refused);
    assert_eq!(status(&refused), "HTTP/1.1 503 Service Unavailable", "{refused}");
    server.stop();
}

/// A response to a request with bytes the server never reads (a body after the head) arrives
/// whole: the server half-closes and drains instead of closing with those bytes unread, which
/// sends a reset and discards what the kernel has not sent yet of a large response.
#[test]
fn a_response_is_not_reset_away_by_unread_request_bytes() {
    let server = serve_big(80_000, ServerConfig::default());
    let addr = server.local_addr();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = b"GET /metrics HTTP/1.1\r\nContent-Length: 65536\r\n\r\n".to_vec();
    request.resize(request.len() + 65536, b'x');
    s.write_all(&request).unwrap();
    let mut response = Vec::new();
    let read = s.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").expect("no response head");
    assert_eq!(status(head), "HTTP/1.1 200 OK");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("no Content-Length")
        .parse()
        .unwrap();
    assert!(read.is_ok(), "{read:?} after {} of {length} body bytes", body.len());
    assert_eq!(body.len(), length, "the response was cut short");
    server.stop();
}

/// A connect flood (two threads opening connections that never send anything, as fast as
/// they can) fills the cap again and again; a scrape that sends its request right after it
/// connects is still answered (a connection that waits before its request looks like the
/// flood's and may be pushed out: that is the price of not letting idle sockets deny scrapes).
#[test]
fn a_prompt_scrape_is_answered_during_a_connect_flood() {
    let config = ServerConfig { max_connections: 4, ..ServerConfig::default() };
    let server = serve_small(config);
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut held = std::collections::VecDeque::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(s) = TcpStream::connect(addr) {
                        held.push_back(s);
                        if held.len() > 64 {
                            held.pop_front();
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut answered = 0;
    for _ in 0..10 {
        let Ok(mut s) = TcpStream::connect(addr) else { continue };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        if status(&response) == "HTTP/1.1 200 OK" {
            answered += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    server.stop();
    assert!(answered >= 8, "{answered} of 10 prompt scrapes answered during a connect flood");
}
