//! A shared-memory ring between two real processes, one of them hostile or killed: a forked
//! child writes garbage indices, slots and role words into a shared memfd while the parent
//! drains it (the parent never hangs, never panics, and reports a corruption), and a child
//! killed with SIGKILL in the middle of pushing leaves a ring the parent can reclaim.
//!
//! The children only touch the mapping with atomics and leave with `_exit`: after `fork` in a
//! multi-threaded test process, nothing that may take a lock (allocation, stdio) is safe.
#![cfg(all(target_os = "linux", not(loom), not(miri)))]
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corelane_rings::region::Region;
use corelane_rings::spsc::shm::{
    region_len, Holder, RegionError, Role, ShmConsumer, ShmPopError, ShmProducer, ShmPushError,
    CONSUMER_ROLE_OFFSET, HEAD_OFFSET, PRODUCER_ROLE_OFFSET, SLOTS_OFFSET, TAIL_OFFSET,
    WAIT_OFFSET,
};

type Record = [u64; 2];
const CAPACITY: usize = 64;

/// A shared memfd mapping, inherited by forked children.
struct Shared {
    ptr: *mut u8,
    len: usize,
}

impl Shared {
    fn new(len: usize) -> Self {
        // SAFETY: plain libc calls with valid arguments; the fd is closed once mapped.
        unsafe {
            let fd = libc::memfd_create(c"corelane-hostile-test".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(ptr, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
            libc::close(fd);
            Self { ptr: ptr.cast(), len }
        }
    }

    /// The word at byte `offset` (8-aligned, inside the mapping).
    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset + 8 <= self.len && offset.is_multiple_of(8));
        // SAFETY: in bounds and aligned (page-aligned mapping); every access is atomic.
        unsafe { &*self.ptr.add(offset).cast::<AtomicU64>() }
    }
}

// SAFETY: the mapping is fixed for the value's life, `len` bytes, and only ever accessed
// atomically (through the ring, or `word`).
unsafe impl Region for Shared {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; nothing borrows it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Runs `child` in a forked process that then `_exit`s; returns its pid.
fn fork(child: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the child runs only `child`, which touches shared memory atomically, then
    // `_exit`s without running destructors or atexit handlers.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        child();
        // SAFETY: leaving the child without unwinding into the test harness.
        unsafe { libc::_exit(0) };
    }
    pid
}

fn reap(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    status
}

/// Forks a child that writes xorshift garbage into `targets` (byte offsets; `SLOTS` stands
/// for any slot word) until `stop` is set, sometimes small plausible values, sometimes wild;
/// and, rarely (else no attach would ever succeed), a header word.
fn scribbler(shared: &Shared, stop: &Shared, targets: &'static [usize]) -> libc::pid_t {
    fork(|| {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        while stop.word(0).load(Ordering::Relaxed) == 0 {
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let target = if x % 1024 == 7 {
                    (x as usize >> 12) % 8 * 8 // one of the header's 8 words
                } else {
                    targets[(x % targets.len() as u64) as usize]
                };
                let offset = if target == SLOTS {
                    SLOTS_OFFSET + (x as usize >> 8) % (CAPACITY * 16) / 8 * 8
                } else {
                    target
                };
                // Sometimes a small, plausible-looking value: the cases a clamp would miss.
                let value = if x & 0x100 == 0 { x >> 40 } else { x };
                shared.word(offset).store(value, Ordering::Relaxed);
            }
        }
    })
}

/// After an attach the garbage refused for its header (not for a role), lays a fresh ring out
/// as the region's owner would; the child goes on scribbling.
fn relay(shared: &Shared, error: &RegionError) {
    if matches!(error, RegionError::RoleTaken { .. }) {
        return;
    }
    shared.word(PRODUCER_ROLE_OFFSET).store(0, Ordering::Relaxed);
    shared.word(CONSUMER_ROLE_OFFSET).store(0, Ordering::Relaxed);
    if let Ok(tx) = ShmProducer::<Record, _>::create(shared, CAPACITY as u64) {
        drop(tx);
    }
}

/// Stands for "any slot word" in a scribbler's targets.
const SLOTS: usize = usize::MAX;

#[test]
fn a_hostile_producer_never_hangs_or_panics_the_consuming_parent() {
    let shared = Shared::new(region_len::<Record>(CAPACITY).unwrap());
    drop(ShmProducer::<Record, _>::create(&shared, CAPACITY as u64).unwrap());
    let stop = Shared::new(4096);
    // Everything a producer (or a corrupted memory) can write, the header included.
    const TARGETS: &[usize] =
        &[TAIL_OFFSET, PRODUCER_ROLE_OFFSET, CONSUMER_ROLE_OFFSET, WAIT_OFFSET, SLOTS];
    let child = scribbler(&shared, &stop, TARGETS);
    let deadline = Instant::now() + Duration::from_millis(800);
    let (mut verdicts, mut records, mut refused, mut calls, mut attached) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        // Take the consumer role back whatever the child wrote there: the parent is the
        // consumer, and the child is not a live holder it must respect.
        shared.word(CONSUMER_ROLE_OFFSET).store(0, Ordering::Relaxed);
        let mut rx = match ShmConsumer::<Record, _>::attach(&shared) {
            Ok(rx) => rx,
            Err(e) => {
                refused += 1; // refused, as it must be; lay a fresh ring out after a bad header
                relay(&shared, &e);
                continue;
            }
        };
        attached += 1;
        for _ in 0..16 {
            calls += 1;
            match rx.drain(CAPACITY, |_| records += 1) {
                Ok(0) => {
                    // A park must end at its deadline whatever the wait word holds.
                    let _ = rx.wait(Some(Duration::from_micros(200)));
                }
                Ok(_) => {}
                Err(_) => {
                    verdicts += 1;
                    assert!(matches!(rx.pop(), Err(ShmPopError::Corrupt(_))), "poisoned for good");
                    break;
                }
            }
        }
        std::mem::forget(rx); // its detach would only race with the child's garbage
    }
    stop.word(0).store(1, Ordering::Relaxed);
    let status = reap(child);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status}");
    eprintln!("consumer: {attached} attaches, {calls} calls, {records} garbage records, {verdicts} verdicts, {refused} attaches refused");
    assert!(verdicts > 0, "garbage positions must be reported as corruption");
    assert!(attached > 10, "the test reached the ring, not only attach errors");
}

#[test]
fn a_hostile_consumer_never_hangs_or_panics_the_producing_parent() {
    let shared = Shared::new(region_len::<Record>(CAPACITY).unwrap());
    drop(ShmProducer::<Record, _>::create(&shared, CAPACITY as u64).unwrap());
    let stop = Shared::new(4096);
    const TARGETS: &[usize] =
        &[HEAD_OFFSET, CONSUMER_ROLE_OFFSET, PRODUCER_ROLE_OFFSET, WAIT_OFFSET];
    let child = scribbler(&shared, &stop, TARGETS);
    let deadline = Instant::now() + Duration::from_millis(800);
    let (mut verdicts, mut pushed, mut refused, mut calls, mut attached) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        shared.word(PRODUCER_ROLE_OFFSET).store(0, Ordering::Relaxed);
        let mut tx = match ShmProducer::<Record, _>::attach(&shared) {
            Ok(tx) => tx,
            Err(e) => {
                refused += 1;
                relay(&shared, &e);
                continue;
            }
        };
        attached += 1;
        for n in 0..16u64 {
            calls += 1;
            match tx.push([n, !n]) {
                Ok(()) => pushed += 1,
                Err(ShmPushError::Full(_)) => {}
                Err(ShmPushError::Corrupt(..)) => {
                    verdicts += 1;
                    assert_eq!(tx.push_slice(&[[0, 0]; 4]), 0, "poisoned for good");
                    break;
                }
            }
            pushed += tx.push_slice(&[[n, n]; 3]) as u64;
            tx.notify(); // whatever the wait word says: at most one syscall, never a hang
        }
        std::mem::forget(tx);
    }
    stop.word(0).store(1, Ordering::Relaxed);
    let status = reap(child);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status}");
    eprintln!("producer: {attached} attaches, {calls} calls, {pushed} records pushed, {verdicts} verdicts, {refused} attaches refused");
    assert!(verdicts > 0, "garbage positions must be reported as corruption");
    assert!(attached > 10, "the test reached the ring, not only attach errors");
}

#[test]
fn a_child_killed_mid_push_leaves_a_ring_the_parent_can_reclaim() {
    let shared = Shared::new(region_len::<Record>(CAPACITY).unwrap());
    drop(ShmProducer::<Record, _>::create(&shared, CAPACITY as u64).unwrap());
    let mut rx = ShmConsumer::<Record, _>::attach(&shared).unwrap();
    let child = fork(|| {
        let Ok(mut tx) = ShmProducer::<Record, _>::attach(&shared) else { return };
        let mut n = 0u64;
        loop {
            let batch = [[n, !n], [n + 1, !(n + 1)], [n + 2, !(n + 2)]];
            let pushed = tx.push_slice(&batch) as u64;
            n += pushed;
            if pushed > 0 {
                tx.notify();
            }
        }
    });
    // Follow the child for a while, checking every record.
    let next = std::cell::Cell::new(0u64);
    let check = |r: Record| {
        let n = next.get();
        assert_eq!(r, [n, !n], "records in order, none torn");
        next.set(n + 1);
    };
    while next.get() < 20_000 {
        match rx.drain(CAPACITY, check) {
            Ok(0) => {
                let _ = rx.wait(Some(Duration::from_millis(100))).unwrap();
            }
            Ok(_) => {}
            Err(c) => panic!("an honest child is never corrupt: {c}"),
        }
    }
    // SAFETY: killing our own child.
    assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
    let status = reap(child);
    assert!(libc::WIFSIGNALED(status), "child status {status}");

    // The dead child still holds the producer role; nobody can attach, the parent reclaims.
    let dead = child as u32;
    assert_eq!(rx.peer(), Holder::Attached { pid: dead });
    assert_eq!(
        ShmProducer::<Record, _>::attach(&shared).unwrap_err(),
        RegionError::RoleTaken { role: Role::Producer, holder: Holder::Attached { pid: dead } }
    );
    let mut tx = ShmProducer::<Record, _>::reclaim(&shared, dead).unwrap();
    // What the child published before dying is all there, in order.
    while rx.drain(CAPACITY, check).unwrap() > 0 {}
    let resumed = next.get();
    for n in resumed..resumed + 100 {
        while tx.push([n, !n]).is_err() {
            rx.drain(CAPACITY, check).unwrap();
        }
    }
    while rx.drain(CAPACITY, check).unwrap() > 0 {}
    assert_eq!(next.get(), resumed + 100, "the reclaimed producer continues the same ring");
    assert!(rx.corruption().is_none());
}
