//! Loom models of the ring protocols: every interleaving (bounded by loom's preemption limit)
//! of a producer and a consumer thread, checked for data races on slots and for lost,
//! duplicated or reordered items.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p corelane-rings --release --test loom`
#![cfg(loom)]

use corelane_rings::spsc;
use loom::thread;

#[test]
fn spsc_push_pop_transfers_every_item_in_order() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::channel::<usize>(2);
        let writer = thread::spawn(move || {
            let mut next = 0;
            while next < 3 {
                if tx.push(next).is_ok() {
                    next += 1;
                } else {
                    thread::yield_now();
                }
            }
        });
        let mut expected = 0;
        while expected < 3 {
            match rx.pop() {
                Ok(v) => {
                    assert_eq!(v, expected);
                    expected += 1;
                }
                Err(_) => thread::yield_now(),
            }
        }
        writer.join().unwrap();
        assert!(rx.pop().is_err());
    });
}

#[test]
fn spsc_batches_publish_once_and_wrap() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::channel::<usize>(2);
        let writer = thread::spawn(move || {
            let items = [0, 1, 2];
            let mut sent = 0;
            while sent < items.len() {
                let n = tx.push_slice(&items[sent..]);
                if n == 0 {
                    thread::yield_now();
                }
                sent += n;
            }
        });
        let mut got = Vec::new();
        while got.len() < 3 {
            let mut out = [usize::MAX; 2];
            let n = rx.pop_slice(&mut out);
            if n == 0 {
                thread::yield_now();
            }
            got.extend_from_slice(&out[..n]);
        }
        writer.join().unwrap();
        assert_eq!(got, [0, 1, 2]);
    });
}

#[test]
fn spsc_chunks_hand_off_owned_values() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::channel::<Box<usize>>(2);
        let writer = thread::spawn(move || {
            let mut next = 0;
            while next < 3 {
                let mut chunk = tx.write_chunk(2);
                if chunk.is_empty() {
                    drop(chunk);
                    thread::yield_now();
                    continue;
                }
                while chunk.push(Box::new(next)).is_ok() {
                    next += 1;
                    if next == 3 {
                        break;
                    }
                }
                chunk.commit();
            }
        });
        let mut expected = 0;
        while expected < 3 {
            let mut chunk = rx.read_chunk(2);
            if chunk.is_empty() {
                drop(chunk);
                thread::yield_now();
                continue;
            }
            for v in chunk.by_ref() {
                assert_eq!(*v, expected);
                expected += 1;
            }
        }
        writer.join().unwrap();
    });
}

/// Every item is dropped exactly once whoever drops last, and a consumer that sees the
/// producer gone (`is_abandoned`) then sees every item it pushed. (std's `strong_count` is a
/// Relaxed load, which is why `is_abandoned` has an Acquire fence; loom models
/// `strong_count` as a synchronising load, so this model cannot show that fence is needed:
/// the comment at the fence carries the argument.)
#[test]
fn spsc_abandonment_hands_over_every_item_and_drops_each_once() {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    struct Counted(&'static AtomicUsize, usize);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Relaxed);
        }
    }
    loom::model(|| {
        let drops: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let (mut tx, mut rx) = spsc::channel::<Counted>(2);
        tx.push(Counted(drops, 1)).unwrap();
        let writer = thread::spawn(move || {
            let _ = tx.push(Counted(drops, 2));
            // `tx` drops here: abandonment.
        });
        let mut got = Vec::new();
        loop {
            let abandoned = rx.is_abandoned();
            while let Ok(item) = rx.pop() {
                got.push(item.1);
            }
            if abandoned {
                break;
            }
            thread::yield_now();
        }
        writer.join().unwrap();
        assert_eq!(got, [1, 2], "seen abandoned, then every item pushed before");
        assert_eq!(drops.load(Relaxed), 2, "each popped item dropped once");
        assert!(rx.is_abandoned());
        drop(rx);
        assert_eq!(drops.load(Relaxed), 2);
    });
}

#[test]
fn spsc_unread_items_are_dropped_once_whoever_drops_last() {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    struct Counted(&'static AtomicUsize);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Relaxed);
        }
    }
    loom::model(|| {
        let drops: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let (mut tx, mut rx) = spsc::channel::<Counted>(2);
        tx.push(Counted(drops)).unwrap();
        let writer = thread::spawn(move || {
            let pushed = tx.push(Counted(drops)).is_ok();
            (pushed, tx.is_abandoned())
        });
        let first = rx.pop().is_ok();
        drop(rx);
        let (pushed, _) = writer.join().unwrap();
        assert!(first);
        // Both items exist (the second was pushed: capacity 2), and all are dropped once.
        assert!(pushed);
        assert_eq!(drops.load(Relaxed), 2);
    });
}

/// The shared-memory ring's index protocol on loom's model atomics: records through a
/// 2-slot ring with wrap, in order, whatever the interleaving; atomic slot copies race-free.
#[test]
fn shm_ring_transfers_every_record_in_order() {
    use corelane_rings::region::HeapRegion;
    use corelane_rings::spsc::shm::{region_len, ShmConsumer, ShmProducer};
    loom::model(|| {
        let region = HeapRegion::new(region_len::<[u64; 2]>(2).unwrap());
        let mut tx = ShmProducer::<[u64; 2], _>::create(region.clone(), 2).unwrap();
        let mut rx = ShmConsumer::<[u64; 2], _>::attach(region).unwrap();
        let writer = thread::spawn(move || {
            let items = [[0, !0], [1, !1], [2, !2]];
            let mut sent = 0;
            while sent < items.len() {
                let n = tx.push_slice(&items[sent..]);
                if n == 0 {
                    thread::yield_now();
                }
                sent += n;
            }
        });
        let mut got = Vec::new();
        while got.len() < 3 {
            if rx.drain(2, |r| got.push(r)) == Ok(0) {
                thread::yield_now();
            }
        }
        writer.join().unwrap();
        assert_eq!(got, [[0, !0], [1, !1], [2, !2]]);
        assert!(rx.corruption().is_none());
    });
}

/// A consumer that sees the producer detached (its role word) then sees every record it
/// pushed: `detach` is a Release the `is_abandoned` Acquire pairs with.
#[test]
fn shm_abandonment_hands_over_every_record() {
    use corelane_rings::region::HeapRegion;
    use corelane_rings::spsc::shm::{region_len, ShmConsumer, ShmProducer};
    loom::model(|| {
        let region = HeapRegion::new(region_len::<u64>(2).unwrap());
        let mut tx = ShmProducer::<u64, _>::create(region.clone(), 2).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(region).unwrap();
        let writer = thread::spawn(move || {
            tx.push(7).unwrap();
            // tx drops: detach
        });
        loop {
            let gone = rx.is_abandoned();
            if gone {
                assert_eq!(rx.pop(), Ok(7), "detached, but its last record is not visible");
                break;
            }
            thread::yield_now();
        }
        writer.join().unwrap();
    });
}

/// The futex park/wake protocol: a consumer that waits with no timeout (so a lost wake-up is
/// a deadlock loom reports) and a producer that pushes and notifies.
#[test]
fn shm_wait_never_loses_a_wake_up() {
    use corelane_rings::region::HeapRegion;
    use corelane_rings::spsc::shm::{region_len, ShmConsumer, ShmPopError, ShmProducer};
    loom::model(|| {
        let region = HeapRegion::new(region_len::<u64>(2).unwrap());
        let mut tx = ShmProducer::<u64, _>::create(region.clone(), 2).unwrap();
        let mut rx = ShmConsumer::<u64, _>::attach(region).unwrap();
        let writer = thread::spawn(move || {
            tx.push(7).unwrap();
            tx.notify();
            // Keep the producer attached until the consumer is done: only notify may wake it.
            tx
        });
        let value = loop {
            match rx.pop() {
                Ok(v) => break v,
                Err(ShmPopError::Empty) => {
                    rx.wait(None).unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(value, 7);
        drop(writer.join().unwrap());
    });
}

/// The doorbell variant of the park (the consumer sleeps elsewhere, as a lane in its
/// reactor): the producer pushes and, if `take_doorbell` says so, rings a doorbell modelled
/// as a mutex and condition variable (a socket byte and the reactor's wait); the consumer
/// drains, arms, and if armed sleeps until the doorbell rings. A lost wake-up leaves it
/// asleep: a deadlock loom reports.
#[test]
fn shm_doorbell_never_loses_a_wake_up() {
    use corelane_rings::region::HeapRegion;
    use corelane_rings::spsc::shm::{region_len, ShmConsumer, ShmProducer};
    use loom::sync::{Arc, Condvar, Mutex};
    loom::model(|| {
        let region = HeapRegion::new(region_len::<u64>(2).unwrap());
        let mut rx = ShmConsumer::<u64, _>::create(region.clone(), 2).unwrap();
        let mut tx = ShmProducer::<u64, _>::attach(region).unwrap();
        let bell = Arc::new((Mutex::new(0u32), Condvar::new()));
        let writer = {
            let bell = bell.clone();
            thread::spawn(move || {
                tx.push(7).unwrap();
                let rang = tx.take_doorbell();
                if rang {
                    *bell.0.lock().unwrap() += 1;
                    bell.1.notify_one();
                }
                (tx, rang)
            })
        };
        let mut got = Vec::new();
        let mut slept = 0;
        while got.is_empty() {
            if rx.drain(2, |v| got.push(v)).unwrap() > 0 {
                break;
            }
            if rx.arm_doorbell().unwrap() {
                let mut rung = bell.0.lock().unwrap();
                while *rung == slept {
                    rung = bell.1.wait(rung).unwrap();
                }
                slept = *rung;
                drop(rung);
                rx.disarm_doorbell();
            }
        }
        assert_eq!(got, [7]);
        let (tx, rang) = writer.join().unwrap();
        assert!(slept <= u32::from(rang), "woken only by a ring");
        assert!(!tx.take_doorbell(), "the consumer is not armed any more");
    });
}

/// The bare wait/wake protocol with a flag as the publication.
#[test]
fn park_and_wake_never_lose_a_wake_up() {
    use corelane_rings::wait;
    use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use loom::sync::Arc;
    loom::model(|| {
        let word = Arc::new(AtomicU64::new(wait::IDLE));
        let flag = Arc::new(AtomicBool::new(false));
        let (w, f) = (word.clone(), flag.clone());
        let waker = thread::spawn(move || {
            f.store(true, Ordering::Release);
            wait::wake(&w);
        });
        let parked = wait::park(&word, || flag.load(Ordering::Acquire), None);
        assert_eq!(parked, wait::Parked::Ready);
        waker.join().unwrap();
    });
}

/// The doorbell (many waiters on one word): a waiter and a waker publishing once. A lost
/// wake-up would leave the waiter asleep: a deadlock loom reports. (Two waiters are checked on
/// the real futex in the unit tests; in loom their state space does not finish in minutes.)
#[test]
fn doorbell_never_loses_a_wake_up() {
    use corelane_rings::wait::{Doorbell, Parked};
    use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use loom::sync::Arc;
    loom::model(|| {
        let words = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let flag = Arc::new(AtomicBool::new(false));
        let waker = {
            let (words, flag) = (words.clone(), flag.clone());
            thread::spawn(move || {
                flag.store(true, Ordering::Release);
                Doorbell::new(&words[0], &words[1]).ring();
            })
        };
        let bell = Doorbell::new(&words[0], &words[1]);
        assert_eq!(bell.park(|| flag.load(Ordering::Acquire), None), Parked::Ready);
        waker.join().unwrap();
    });
}

/// A writer commits seq 1 then seq 2 into the same one-slot "ring" (a seq word and two data
/// words); a reader asks for each. Whatever interleaving, an accepted copy holds both data
/// words of the frame it asked for: never one old and one new.
#[test]
fn seqlock_never_returns_a_torn_copy() {
    use corelane_rings::seqlock::SeqSlot;
    use loom::sync::atomic::{AtomicU64, Ordering};
    use loom::sync::Arc;

    loom::model(|| {
        let words: Arc<[AtomicU64; 3]> =
            Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
        let writer_words = words.clone();
        let writer = thread::spawn(move || {
            for seq in 1..=2u64 {
                let mut slot = SeqSlot::new(&writer_words[..]);
                let claimed = slot.claim(seq);
                for word in claimed.words() {
                    word.store(seq * 10, Ordering::Relaxed);
                }
                claimed.commit();
            }
        });
        for seq in 1..=2u64 {
            let copy = SeqSlot::new(&words[..]).read(seq, |data| {
                (data[0].load(Ordering::Relaxed), data[1].load(Ordering::Relaxed))
            });
            if let Ok(pair) = copy {
                assert_eq!(pair, (seq * 10, seq * 10), "torn copy accepted for seq {seq}");
            }
        }
        writer.join().unwrap();
        let last = SeqSlot::new(&words[..]).read(2, |data| data[1].load(Ordering::Relaxed));
        assert_eq!(last, Ok(20), "after the writer is done the last frame is readable");
    });
}
