//! The table's logic under a fake clock: a real poll reactor with socket pairs (so `pending`
//! and `close` are the reactor's), but every completion and every `now` made by the test. The
//! ring against a `VecDeque` model.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use proptest::prelude::*;

use super::*;
use crate::runtime::reactor::{Reactor, ReactorChoice};
use crate::runtime::timer::Timers;

/// A lane without a thread: the test is its clock and its completions.
struct Lane {
    reactor: Reactor,
    timers: Timers,
    now: Instant,
    /// The peers of the connections accepted, by accept order.
    peers: Vec<UnixStream>,
}

impl Lane {
    fn new() -> Self {
        Lane {
            reactor: Reactor::new(ReactorChoice::Poll).unwrap(),
            timers: Timers::default(),
            now: Instant::now(),
            peers: Vec::new(),
        }
    }

    fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            now: self.now,
            reactor: &mut self.reactor,
            timers: &mut self.timers,
            agent: 0,
            last_look: false,
        }
    }

    fn at(&mut self, ms: u64) -> &mut Self {
        self.now += Duration::from_millis(ms);
        self
    }

    /// A new socket pair: ours to accept, the peer kept.
    fn incoming(&mut self) -> OwnedFd {
        let (ours, peer) = UnixStream::pair().unwrap();
        self.peers.push(peer);
        ours.into()
    }

    fn accept<S>(&mut self, table: &mut ConnTable<S>, state: S) -> Result<ConnId, Refused> {
        let fd = self.incoming();
        table.accept(&mut self.ctx(), fd, |_| state)
    }

    fn token(&mut self, id: ConnId) -> Token {
        self.ctx().token(id.local()).unwrap()
    }

    /// The timer the table armed for `id`.
    fn armed(&mut self, id: ConnId) -> Option<Instant> {
        self.ctx().timer_deadline(id.local())
    }

    /// Delivers the timers due now, as the lane would.
    fn fire<S>(&mut self, table: &mut ConnTable<S>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(token) = self.timers.pop_expired(self.now) {
            let event = table.event(&mut self.ctx(), Completion::Timer { token });
            out.push(describe(&event));
        }
        out
    }

    /// Writes what is queued and delivers the reactor's completions (Sent) to the table.
    fn flush<S>(&mut self, table: &mut ConnTable<S>) -> Vec<String> {
        self.reactor.poll().unwrap();
        let mut out = Vec::new();
        while let Some(c) = self.reactor.next_completion() {
            let event = table.event(&mut self.ctx(), c);
            out.push(describe(&event));
        }
        out
    }
}

fn describe(event: &ConnEvent) -> String {
    match event {
        ConnEvent::Received { .. } => "received".into(),
        ConnEvent::Deadline { .. } => "deadline".into(),
        ConnEvent::Sent { .. } => "sent".into(),
        ConnEvent::PeerClosed { .. } => "peer closed".into(),
        ConnEvent::Closed { reason, .. } => format!("closed {}", reason.name()),
        ConnEvent::Handled => "handled".into(),
        ConnEvent::Stale => "stale".into(),
        ConnEvent::Other(c) => format!("other {c:?}"),
    }
}

fn config() -> ConnConfig {
    ConnConfig {
        max_connections: 4,
        max_pending_output: 1 << 20,
        write_timeout: Duration::from_secs(5),
        max_recv_buffer: 64 * 1024,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn ids_carry_a_generation_and_a_stale_id_never_reaches_a_reused_slot() {
    let mut lane = Lane::new();
    let mut table = ConnTable::new(config());
    let a = lane.accept(&mut table, "a").unwrap();
    let b = lane.accept(&mut table, "b").unwrap();
    assert_ne!(a.index(), b.index());
    assert_eq!(ConnId::from_local(a.local()), Some(a));
    assert_eq!(ConnId::from_local(7), None, "the agent's own ids are not connections");
    assert!(a.local() < LOCAL_LIMIT && a.local() & CONN_BIT != 0);

    table.abort(&mut lane.ctx(), a, CloseReason::Protocol);
    table.abort(&mut lane.ctx(), b, CloseReason::Protocol);
    // Freed slots are reused oldest first, each with a new generation.
    let c = lane.accept(&mut table, "c").unwrap();
    let d = lane.accept(&mut table, "d").unwrap();
    assert_eq!((c.index(), d.index()), (a.index(), b.index()));
    assert_ne!(c, a);
    assert_eq!(table.get(a), None, "the stale id does not reach the new connection");
    assert_eq!(table.get(c), Some(&"c"));
    let stale = lane.token(a);
    let event = table.event(&mut lane.ctx(), Completion::Closed { token: stale });
    assert_eq!(describe(&event), "stale");
    assert_eq!(table.send(&mut lane.ctx(), a, b"x"), Err(SendError::NotOpen));
    assert_eq!(table.get(c), Some(&"c"), "untouched by the stale completion");
    assert_eq!(table.ids().collect::<Vec<_>>(), [c, d]);
    // Tokens that are not a connection's come back to the agent.
    let listener = lane.ctx().token(0).unwrap();
    let event = table.event(&mut lane.ctx(), Completion::Closed { token: listener });
    assert!(matches!(event, ConnEvent::Other(Completion::Closed { .. })));
}

#[test]
fn accepting_past_the_limit_refuses_and_counts() {
    let mut lane = Lane::new();
    let mut table = ConnTable::new(ConnConfig { max_connections: 2, ..config() });
    lane.accept(&mut table, ()).unwrap();
    lane.accept(&mut table, ()).unwrap();
    assert!(matches!(lane.accept(&mut table, ()), Err(Refused::Full { open: 2 })));
    assert_eq!(table.stats().refused, 1);
    assert_eq!(table.stats().accepted, 2);
    assert_eq!(table.stats().open, 2);
    // The refused socket was dropped: its peer reads end of stream.
    let mut refused = lane.peers.pop().unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(refused.read(&mut byte).unwrap(), 0);
}

#[test]
fn output_pending_without_progress_closes_at_the_write_timeout() {
    let mut lane = Lane::new();
    let mut table = ConnTable::new(config());
    let id = lane.accept(&mut table, ()).unwrap();
    let t0 = lane.now;
    // Queued and never flushed: the peer "does not read".
    table.send(&mut lane.ctx(), id, &[1u8; 1000]).unwrap();
    assert_eq!(table.buffered(), 1000);
    assert_eq!(lane.armed(id), Some(t0 + ms(5000)), "one timer, at the write deadline");
    // More output without progress does not move the deadline.
    lane.at(3000);
    table.send(&mut lane.ctx(), id, &[2u8; 1000]).unwrap();
    assert_eq!(lane.armed(id), Some(t0 + ms(5000)));
    lane.at(1999);
    assert!(lane.fire(&mut table).is_empty(), "not before its time");
    lane.at(1);
    assert_eq!(lane.fire(&mut table), ["closed write_timeout"]);
    assert!(!table.contains(id));
    assert_eq!(table.stats().closed(CloseReason::WriteTimeout), 1);
    assert_eq!(table.buffered(), 0);
    assert_eq!(table.stats().open, 0);
    assert_eq!(lane.reactor.registered(), 0, "the socket is closed");
}

#[test]
fn progress_restarts_the_write_clock_and_idle_output_has_none() {
    let mut lane = Lane::new();
    let mut table = ConnTable::new(config());
    let id = lane.accept(&mut table, ()).unwrap();
    let t0 = lane.now;
    table.send(&mut lane.ctx(), id, b"hello").unwrap();
    lane.at(4000);
    // Written at +4 s: nothing pending, so no write deadline; the old timer finds nothing.
    assert_eq!(lane.flush(&mut table), ["sent"]);
    assert_eq!(table.buffered(), 0);
    lane.at(1000);
    assert_eq!(lane.fire(&mut table), Vec::<String>::new(), "cancelled: nothing pending");
    assert!(table.contains(id));
    // Output again at +5 s, a Sent with more still pending at +9 s: the clock restarts there.
    table.send(&mut lane.ctx(), id, b"again").unwrap();
    assert_eq!(lane.armed(id), Some(t0 + ms(10_000)));
    lane.at(4000);
    table.send(&mut lane.ctx(), id, b"more").unwrap();
    let token = lane.token(id);
    let event = table.event(&mut lane.ctx(), Completion::Sent { token, bytes: 5 });
    assert_eq!(describe(&event), "sent");
    lane.at(1000);
    assert_eq!(lane.fire(&mut table), ["handled"], "early: progress at +9 s moved it");
    assert_eq!(lane.armed(id), Some(t0 + ms(14_000)));
    lane.at(4000);
    assert_eq!(lane.fire(&mut table), ["closed write_timeout"]);
}

#[test]
fn pending_output_over_the_limit_closes_on_send_and_is_checked_on_every_event() {
    let mut lane = Lane::new();
    let mut table = ConnTable::new(ConnConfig { max_pending_output: 4096, ..config() });
    let id = lane.accept(&mut table, ()).unwrap();
    table.send(&mut lane.ctx(), id, &[0u8; 3000]).unwrap();
    assert_eq!(
        table.send(&mut lane.ctx(), id, &[0u8; 2000]),
        Err(SendError::Closed(CloseReason::Budget))
    );
    assert_eq!(table.stats().closed(CloseReason::Budget), 1);
    assert!(!table.contains(id));

    // Output queued behind the table's back (straight to the reactor) is seen at the next
    // event: a receive, a completed send, a timer.
    for event in ["received", "sent", "timer"] {
        let id = lane.accept(&mut table, ()).unwrap();
        let token = lane.token(id);
        lane.ctx().send(id.local(), &[0u8; 5000]).unwrap();
        let completion = match event {
            "received" => Completion::Received {
                token,
                buf: RecvBuf { id: 0, offset: 0, len: 0, generation: 0 },
            },
            "sent" => Completion::Sent { token, bytes: 1 },
            _ => Completion::Timer { token },
        };
        let got = table.event(&mut lane.ctx(), completion);
        assert_eq!(describe(&got), "closed budget", "{event}");
    }
    assert_eq!(table.stats().closed(CloseReason::Budget), 4);
}

#[test]
fn agent_deadlines_fire_once_and_moving_them_later_does_not_rearm() {
    let mut lane = Lane::new();
    let mut table = ConnTable::new(config());
    let id = lane.accept(&mut table, ()).unwrap();
    let t0 = lane.now;
    table.set_deadline(&mut lane.ctx(), id, Some(t0 + ms(1000)));
    assert_eq!(lane.armed(id), Some(t0 + ms(1000)));
    // Pushed back (an idle timeout after each request): the timer stays.
    table.set_deadline(&mut lane.ctx(), id, Some(t0 + ms(2000)));
    assert_eq!(lane.armed(id), Some(t0 + ms(1000)));
    lane.at(1000);
    assert_eq!(lane.fire(&mut table), ["handled"], "early: nothing due yet");
    assert_eq!(lane.armed(id), Some(t0 + ms(2000)), "re-armed for the real deadline");
    // Brought forward: re-armed at once.
    table.set_deadline(&mut lane.ctx(), id, Some(t0 + ms(1500)));
    assert_eq!(lane.armed(id), Some(t0 + ms(1500)));
    lane.at(500);
    assert_eq!(lane.fire(&mut table), ["deadline"]);
    lane.at(10_000);
    assert!(lane.fire(&mut table).is_empty(), "a deadline fires once");
    // Cleared: nothing armed.
    let soon = lane.now + ms(10);
    table.set_deadline(&mut lane.ctx(), id, Some(soon));
    table.set_deadline(&mut lane.ctx(), id, None);
    assert_eq!(lane.armed(id), None);
}

#[test]
fn a_graceful_close_writes_what_is_queued_first() {
    let mut lane = Lane::new();
    let mut table = ConnTable::new(config());
    let id = lane.accept(&mut table, ()).unwrap();
    table.send(&mut lane.ctx(), id, b"last words").unwrap();
    table.close(&mut lane.ctx(), id, CloseReason::Protocol);
    assert!(table.is_closing(id));
    // What the peer says meanwhile goes unread.
    let token = lane.token(id);
    let received =
        Completion::Received { token, buf: RecvBuf { id: 0, offset: 0, len: 0, generation: 0 } };
    assert_eq!(describe(&table.event(&mut lane.ctx(), received)), "handled");
    assert_eq!(lane.flush(&mut table), ["closed protocol"]);
    assert_eq!(table.stats().closed(CloseReason::Protocol), 1);
    let mut peer = lane.peers.pop().unwrap();
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words", "written, then end of stream");

    // Nothing queued: closed at once.
    let id = lane.accept(&mut table, ()).unwrap();
    table.close(&mut lane.ctx(), id, CloseReason::Peer);
    assert!(!table.contains(id));
    assert_eq!(table.stats().closed(CloseReason::Peer), 1);

    // A peer that never reads its last reply: dropped at the write deadline, counted as what
    // the close was for.
    let id = lane.accept(&mut table, ()).unwrap();
    table.send(&mut lane.ctx(), id, b"unread").unwrap();
    table.close(&mut lane.ctx(), id, CloseReason::IdleTimeout);
    lane.at(5000);
    assert_eq!(lane.fire(&mut table), ["closed idle_timeout"]);
    assert_eq!(table.stats().closed(CloseReason::IdleTimeout), 1);
    assert_eq!(table.stats().closed(CloseReason::WriteTimeout), 0);
}

#[test]
fn end_of_input_is_the_agents_to_handle_and_failures_close() {
    let mut lane = Lane::new();
    let mut table = ConnTable::new(config());
    let id = lane.accept(&mut table, ()).unwrap();
    let token = lane.token(id);
    let event = table.event(&mut lane.ctx(), Completion::Closed { token });
    assert_eq!(describe(&event), "peer closed");
    assert!(table.contains(id), "a half-closed peer may still read");
    let error = io::Error::from(io::ErrorKind::BrokenPipe);
    let event = table.event(&mut lane.ctx(), Completion::Failed { token, error });
    assert_eq!(describe(&event), "closed peer");
    assert!(!table.contains(id));
    assert_eq!(table.stats().closed(CloseReason::Peer), 1);
}

#[test]
fn buffered_counts_output_rings_and_held_bytes_of_every_connection() {
    let mut lane = Lane::new();
    let mut table = ConnTable::new(config());
    let a = lane.accept(&mut table, ()).unwrap();
    let b = lane.accept(&mut table, ()).unwrap();
    table.send(&mut lane.ctx(), a, &[0u8; 100]).unwrap();
    table.set_held(b, 40);
    assert_eq!(table.buffered(), 140);
    table.set_held(b, 10);
    assert_eq!(table.buffered(), 110);
    table.abort(&mut lane.ctx(), a, CloseReason::Protocol);
    assert_eq!(table.buffered(), 10);
    table.close_all(&mut lane.ctx());
    assert_eq!(table.buffered(), 0);
    assert!(table.is_empty());
    assert_eq!(table.stats().closed.iter().sum::<u64>(), 1, "shutdown closes are not counted");
}

#[test]
fn counters_mirror_the_stats() {
    use crate::metrics::{CounterSpec, Registry};
    let mut r = Registry::new();
    let mut ids = Vec::new();
    for name in ["accepted", "refused", "open", "peer", "protocol", "idle", "write", "budget"] {
        ids.push(r.register(CounterSpec::counter("t_total", &[("e", name)], "test.")).unwrap());
    }
    let file = r.create_in_memory().unwrap();
    let c = |i: usize| file.counter(ids[i]);
    let counters = ConnCounters {
        accepted: c(0),
        refused: c(1),
        open: c(2),
        closed: [c(3), c(4), c(5), c(6), c(7)],
    };
    let mut lane = Lane::new();
    let mut table =
        ConnTable::new(ConnConfig { max_connections: 1, ..config() }).with_counters(counters);
    let id = lane.accept(&mut table, ()).unwrap();
    assert!(lane.accept(&mut table, ()).is_err());
    assert_eq!((c(0).get(), c(1).get(), c(2).get()), (1, 1, 1));
    table.abort(&mut lane.ctx(), id, CloseReason::WriteTimeout);
    assert_eq!((c(2).get(), c(6).get()), (0, 1));
}

#[test]
fn records_reassemble_in_the_ring_and_an_overfull_ring_closes() {
    let mut lane = Lane::new();
    let mut table = ConnTable::new(ConnConfig { max_recv_buffer: 1000, ..config() });
    lane.accept(&mut table, ()).unwrap();
    // The reactor's bytes for this test come from a real read on the poll backend.
    lane.peers[0].write_all_chunks(&[b"abc", b"defg"]);
    let mut seen = Vec::new();
    while seen.len() < 7 {
        lane.reactor.park(ms(1000)).unwrap();
        while let Some(c) = lane.reactor.next_completion() {
            let mut ctx = lane.ctx();
            if let ConnEvent::Received { id, buf } = table.event(&mut ctx, c) {
                let (_, ring) = table.receive(&mut ctx, id, buf).unwrap();
                seen = ring.as_slices().0.to_vec();
            }
        }
    }
    assert_eq!(seen, b"abcdefg");
    assert_eq!(table.buffered(), 7, "the ring counts");
    lane.peers[0].write_all_chunks(&[&[0u8; 1000]]);
    let mut closed = None;
    while closed.is_none() {
        lane.reactor.park(ms(1000)).unwrap();
        while let Some(c) = lane.reactor.next_completion() {
            let mut ctx = lane.ctx();
            if let ConnEvent::Received { id, buf } = table.event(&mut ctx, c) {
                if let Err(e) = table.receive(&mut ctx, id, buf) {
                    closed = Some(e);
                }
            }
        }
    }
    assert_eq!(closed, Some(SendError::Closed(CloseReason::Budget)));
    assert_eq!(table.buffered(), 0);
}

trait WriteChunks {
    fn write_all_chunks(&mut self, chunks: &[&[u8]]);
}

impl WriteChunks for UnixStream {
    fn write_all_chunks(&mut self, chunks: &[&[u8]]) {
        use std::io::Write;
        for chunk in chunks {
            self.write_all(chunk).unwrap();
        }
    }
}

// The ring.

#[test]
fn the_ring_lends_wrapped_records_whole_and_shrinks_after_a_large_one() {
    let mut ring = RecvRing::new(1 << 20);
    assert_eq!(ring.capacity(), 0, "nothing allocated before the first byte");
    ring.push(&[1u8; 300]).unwrap();
    assert_eq!(ring.capacity(), 512);
    ring.consume(200);
    // 100 held from offset 200; 350 more wrap around the end.
    ring.push(&[2u8; 350]).unwrap();
    assert_eq!(ring.capacity(), 512, "room was there: no growth");
    let (a, b) = ring.as_slices();
    assert_eq!((a.len(), b.len()), (312, 138));
    let record = ring.peek(450).unwrap();
    assert_eq!(&record[..100], &[1u8; 100][..]);
    assert_eq!(&record[100..], &[2u8; 350][..]);
    ring.consume(450);
    assert!(ring.is_empty());
    // A large record grows the ring; once consumed, the memory goes.
    ring.push(&vec![3u8; 300_000]).unwrap();
    assert!(ring.capacity() >= 300_000);
    ring.consume(300_000);
    assert_eq!(ring.capacity(), 0);
    // Large, then little left: shrunk (to RETAIN_BYTES here), what is left kept.
    ring.push(&vec![4u8; 100_000]).unwrap();
    ring.push(b"tail").unwrap();
    ring.consume(100_000);
    assert_eq!(ring.capacity(), RecvRing::RETAIN_BYTES);
    assert_eq!(ring.peek(4), Some(&b"tail"[..]));
    assert_eq!(ring.peek(5), None);
}

#[test]
fn a_ring_told_to_retain_keeps_its_buffer_between_large_records() {
    let mut ring = RecvRing::new(1 << 20);
    ring.set_retain(600_000);
    ring.push(&vec![5u8; 460_900]).unwrap();
    let grown = ring.capacity();
    assert!(grown >= 460_900);
    ring.consume(460_900);
    assert_eq!(ring.capacity(), grown, "kept for the next record: no regrowth, no page faults");
    ring.push(&vec![6u8; 460_900]).unwrap();
    assert_eq!(ring.capacity(), grown);
    // Past the retained size it still shrinks, and the retain never exceeds the limit.
    ring.consume(460_900);
    ring.set_retain(usize::MAX);
    ring.push(&vec![7u8; 1 << 20]).unwrap();
    ring.consume(1 << 20);
    assert_eq!(ring.capacity(), 1 << 20, "retain clamped to the limit, which it holds");
    ring.set_retain(0);
    ring.consume(0);
    assert_eq!(ring.capacity(), 0, "back to the default retain: the large buffer goes");
}

#[test]
fn the_ring_refuses_past_its_limit_and_keeps_what_it_had() {
    let mut ring = RecvRing::new(1000);
    ring.push(&[1u8; 600]).unwrap();
    assert_eq!(ring.push(&[2u8; 401]), Err(RingFull { need: 1001, limit: 1000 }));
    assert_eq!(ring.len(), 600);
    ring.push(&[2u8; 400]).unwrap();
    assert_eq!(ring.capacity(), 1000, "grown to the limit, not past it");
    assert_eq!(ring.len(), 1000);
}

#[derive(Clone, Debug)]
enum Op {
    Push(Vec<u8>),
    Peek(usize),
    Consume(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..3000).prop_map(Op::Push),
        (0usize..4000).prop_map(Op::Peek),
        (0usize..4000).prop_map(Op::Consume),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The ring behaves as a `VecDeque<u8>` with a limit, and its memory stays within four times
    /// what it holds (or the retained size).
    #[test]
    fn the_ring_matches_a_deque(ops in prop::collection::vec(op(), 1..200)) {
        let limit = 20_000;
        let mut ring = RecvRing::new(limit);
        let mut model: VecDeque<u8> = VecDeque::new();
        for op in ops {
            match op {
                Op::Push(data) => {
                    let fits = model.len() + data.len() <= limit;
                    prop_assert_eq!(ring.push(&data).is_ok(), fits);
                    if fits {
                        model.extend(&data);
                    }
                }
                Op::Peek(n) => {
                    let want: Option<Vec<u8>> =
                        (n <= model.len()).then(|| model.iter().take(n).copied().collect());
                    prop_assert_eq!(ring.peek(n).map(<[u8]>::to_vec), want);
                }
                Op::Consume(n) => {
                    ring.consume(n);
                    model.drain(..n.min(model.len()));
                }
            }
            prop_assert_eq!(ring.len(), model.len());
            let (a, b) = ring.as_slices();
            let held: Vec<u8> = a.iter().chain(b).copied().collect();
            prop_assert_eq!(&held, &model.iter().copied().collect::<Vec<u8>>());
            let bound = (4 * ring.len()).max(RecvRing::RETAIN_BYTES).max(RecvRing::MIN_BYTES);
            prop_assert!(ring.capacity() <= bound, "{} bytes for {}", ring.capacity(), ring.len());
        }
    }
}
