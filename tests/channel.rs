//! The shared-memory channel between real processes and against a hostile writer: a client
//! process (this test binary, re-executed) receives its segment over a Unix socket, pushes
//! and rings the doorbell until it is SIGKILLed mid-stream; and a thread that maps the
//! segment itself (memmap2) and scribbles garbage into every word while the daemon's end
//! drains.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corelane::channel::{recv_with_fd, send_with_fd, ClientTx, ServerRx};
use corelane::mapping::{Mapping, SizePolicy};
use corelane::rings::spsc::shm::{
    region_len, Holder, ShmProducer, CONSUMER_ROLE_OFFSET, HEAD_OFFSET, PRODUCER_ROLE_OFFSET,
    SLOTS_OFFSET, TAIL_OFFSET, WAIT_OFFSET,
};

type Record = [u64; 2];
const CAPACITY: usize = 64;
const CHILD_ENV: &str = "CORELANE_CHANNEL_TEST_CHILD";

/// The client process: connects to the socket named in the environment, receives its
/// segment, and pushes records `[n, !n]` as fast as the ring takes them, ringing the
/// doorbell on the socket when told, until it is killed. Does nothing in a normal run.
#[test]
fn channel_child_pushes_until_killed() {
    let Ok(path) = std::env::var(CHILD_ENV) else { return };
    let mut socket = UnixStream::connect(path).unwrap();
    let mut buf = [0u8; 16];
    let (n, fd) = recv_with_fd(socket.as_fd(), &mut buf).unwrap();
    assert_eq!(&buf[..n], b"ring");
    let mut tx = ClientTx::<Record>::attach(fd.expect("the segment")).unwrap();
    let mut n = 0u64;
    loop {
        let batch = [[n, !n], [n + 1, !(n + 1)], [n + 2, !(n + 2)]];
        let pushed = tx.push_slice(&batch) as u64;
        n += pushed;
        if pushed > 0 && tx.take_doorbell() {
            std::io::Write::write_all(&mut socket, b"!").unwrap();
        }
        if pushed == 0 {
            std::thread::yield_now();
        }
    }
}

#[test]
fn a_client_killed_mid_stream_leaves_everything_it_published_to_the_daemon() {
    let dir = std::env::temp_dir().join(format!("corelane-channel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "channel_child_pushes_until_killed", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .spawn()
        .unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    let cred = rustix::net::sockopt::socket_peercred(&conn).unwrap();
    let client_pid = cred.pid.as_raw_nonzero().get() as u32;
    assert_eq!(client_pid, child.id(), "SO_PEERCRED names the client");

    let name = format!("corelane-test-{client_pid}");
    let (mut ring, fd) = ServerRx::<Record>::create(&name, CAPACITY).unwrap();
    send_with_fd(conn.as_fd(), b"ring", fd.as_fd()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    let next = std::cell::Cell::new(0u64);
    let check = |r: Record| {
        let n = next.get();
        assert_eq!(r, [n, !n], "records in order, none torn or lost");
        next.set(n + 1);
    };
    // Follow the client for a while, parking on the socket when the ring is empty.
    let mut parks = 0u64;
    while next.get() < 50_000 {
        if ring.drain(CAPACITY, check).expect("an honest client is never corrupt") > 0 {
            continue;
        }
        if ring.arm_doorbell().unwrap() {
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).expect("the client rings: no lost wake-up");
            parks += 1;
            ring.disarm_doorbell();
        }
    }
    assert_eq!(ring.producer_pid(), Some(client_pid));

    child.kill().unwrap(); // SIGKILL: no Drop, no detach
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed: {status:?}");

    // The socket tells the client is gone (after any doorbell bytes still queued); the
    // segment still says attached, by a pid that no longer runs.
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("the end of the stream");
    assert!(rest.iter().all(|&b| b == b'!'));
    assert_eq!(ring.producer(), Holder::Attached { pid: client_pid });
    assert!(!ring.is_abandoned(), "a killed producer never detached");
    assert_eq!(
        rustix::process::test_kill_process(
            rustix::process::Pid::from_raw(client_pid as i32).unwrap()
        ),
        Err(rustix::io::Errno::SRCH),
        "and that pid is dead (reaped)"
    );

    // Everything the client published before it died is there, in order: drain it, then
    // take the dead producer's role over (as a survivor that knows it is dead may) and push
    // the next record: it lands right after the last one drained, so nothing was left.
    while ring.drain(CAPACITY, check).unwrap() > 0 {}
    let drained = next.get();
    let second =
        Mapping::from_fd(fd.as_fd(), SizePolicy::Sealed(region_len::<Record>(CAPACITY).unwrap()))
            .unwrap();
    assert!(ShmProducer::<Record, _>::reclaim(&second, client_pid + 1).is_err(), "not that pid");
    let mut tx = ShmProducer::<Record, _>::reclaim(&second, client_pid).unwrap();
    tx.push([drained, !drained]).unwrap();
    drop(tx);
    assert!(ring.is_abandoned(), "the reclaimed role, dropped, is detached");
    assert_eq!(ring.finish(check), Ok(1), "one ring's worth at most, here the one record");
    assert_eq!(next.get(), drained + 1);
    eprintln!("{drained} records from the killed client, {parks} parks on the socket");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A writable shared mapping of a segment, made by the test itself (as a hostile client
/// would), accessed only with atomic word stores.
struct Scribbler {
    map: memmap2::MmapRaw,
}

impl Scribbler {
    fn new(fd: &std::os::fd::OwnedFd) -> Self {
        let file = std::fs::File::from(fd.try_clone().unwrap());
        Self { map: memmap2::MmapRaw::map_raw(&file).unwrap() }
    }

    fn store(&self, offset: usize, value: u64) {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.map.len());
        // SAFETY: in bounds and 8-aligned (checked above; the mapping is page-aligned); the
        // mapping lives as long as `self`, and every access to the segment, here and in the
        // ring, is an atomic 64-bit word access.
        let word = unsafe { &*self.map.as_mut_ptr().add(offset).cast::<AtomicU64>() };
        word.store(value, Ordering::Relaxed);
    }
}

/// Garbage in every word of the segment (header, positions, role and wait words, slots)
/// from another thread while an honest client pushes and the daemon drains, arms, counts
/// and finishes: garbage records or a verdict, never a panic, a hang or an access out of
/// bounds.
#[test]
fn a_scribbled_segment_gives_the_daemon_garbage_or_a_verdict_never_a_fault() {
    let len = region_len::<Record>(CAPACITY).unwrap();
    let deadline = Instant::now() + Duration::from_millis(600);
    let (mut rounds, mut verdicts, mut records) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        rounds += 1;
        let (mut ring, fd) =
            ServerRx::<Record>::create("corelane-test-scribble", CAPACITY).unwrap();
        let mut tx = ClientTx::<Record>::attach(fd.try_clone().unwrap()).unwrap();
        let hostile = Scribbler::new(&fd);
        let stop = Arc::new(AtomicBool::new(false));
        let scribbler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let targets = [
                    TAIL_OFFSET,
                    HEAD_OFFSET,
                    PRODUCER_ROLE_OFFSET,
                    CONSUMER_ROLE_OFFSET,
                    WAIT_OFFSET,
                ];
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ rounds;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let offset = match x % 8 {
                        0..=4 => targets[(x % 5) as usize],
                        5 => (x as usize >> 8) % 8 * 8, // the header
                        _ => SLOTS_OFFSET + (x as usize >> 8) % (len - SLOTS_OFFSET) / 8 * 8,
                    };
                    // Sometimes small and plausible (what a clamp would miss), sometimes wild.
                    let value = if x & 0x100 == 0 { x >> 58 } else { x };
                    hostile.store(offset, value);
                }
            })
        };
        let round_end = Instant::now() + Duration::from_millis(50);
        while Instant::now() < round_end {
            let _ = tx.push_slice(&[[1, 2]; 5]);
            let _ = tx.take_doorbell();
            match ring.drain(CAPACITY, |_| records += 1) {
                Ok(_) => {
                    let _ = ring.len();
                    if ring.arm_doorbell() == Ok(true) {
                        ring.disarm_doorbell();
                    }
                    let _ = (ring.producer(), ring.producer_pid(), ring.is_abandoned());
                }
                Err(verdict) => {
                    verdicts += 1;
                    assert_eq!(ring.arm_doorbell(), Err(verdict), "poisoned for good");
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        scribbler.join().unwrap();
        let _ = ring.finish(|_| records += 1);
    }
    eprintln!("{rounds} rounds, {records} records (garbage allowed), {verdicts} verdicts");
    assert!(verdicts > 0, "garbage positions must be reported as corruption");
}
