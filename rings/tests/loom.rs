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

#[test]
fn spsc_unread_items_are_dropped_once_whoever_drops_last() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::channel::<Box<usize>>(2);
        tx.push(Box::new(1)).unwrap();
        let writer = thread::spawn(move || {
            let _ = tx.push(Box::new(2));
            tx.is_abandoned()
        });
        let first = rx.pop().map(|b| *b);
        drop(rx);
        writer.join().unwrap();
        assert_eq!(first, Ok(1));
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
                let claimed = SeqSlot::new(&writer_words[..]).claim(seq);
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
