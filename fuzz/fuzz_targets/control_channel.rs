//! A hostile client's shared-memory control channel, as the daemon's control agent serves it:
//! a real segment (`ServerDuplex::create`, 16 request and 16 response records) with a
//! `ClientDuplex` attached in-process, and a second mapping of the same memfd through which
//! the client writes whatever it likes wherever it likes (positions, role words, the wait
//! word, ring and segment headers, record lengths). Between those writes the client pushes
//! bytes and whole wire frames, and the daemon drains requests into a control `Session`,
//! pushes the session's answers back (as `ControlAgent::after` does), and pushes bytes of its
//! own. Nothing may panic, and:
//! - a drain takes at most `max` records and appends at most `max * RECORD_DATA` bytes (and
//!   at least one byte per record it reports);
//! - once a drain (or the doorbell) reported an impossible ring position, every later drain
//!   reports that same verdict and takes nothing; a bad record length is a verdict too (the
//!   daemon closes the channel on it), which later drains need not repeat;
//! - a push never reports more bytes than it was given (the daemon hands that count to
//!   `Session::consume_output`, which panics on more), and once it reported a corrupt
//!   response ring it keeps doing so.
//!
//! Input: records of `[op, args..]`; `op` picks a hostile word store (`[sel: u16, mode,
//! value]`: named words or any word of the segment; the value absolute, a small delta from
//! the word's current value, a delta in laps, or a small number), a client push of raw bytes
//! (`[len, bytes]`) or of a wire frame (`[type, id, flags, len, body]`), a daemon pass
//! (`[max]`), a daemon push (`[len, bytes]`), a client pop (`[max]`), or a doorbell / tick.
#![no_main]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use corelane::channel::duplex::{
    segment_layout, ByteRecord, ChannelFault, ClientDuplex, ServerDuplex, RECORD_DATA,
    REQUESTS_OFFSET,
};
use corelane::control::{Answer, Handler, RequestRef, Session, SessionConfig};
use corelane::mapping::{Mapping, SizePolicy};
use corelane::rings::spsc::shm::{
    record_stride, CONSUMER_ROLE_OFFSET, HEAD_OFFSET, PRODUCER_ROLE_OFFSET, SLOTS_OFFSET,
    TAIL_OFFSET, WAIT_OFFSET,
};
use corelane::rings::spsc::Corruption;
use corelane::wire::{self, Flags, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

const REQUEST_RECORDS: usize = 16;
const RESPONSE_RECORDS: usize = 16;

/// Answers pings itself (the session does), echoes the body of an even `msg_type`, and knows
/// no other route.
struct Echo;

impl Handler for Echo {
    fn now_ns(&self) -> u64 {
        42
    }
    fn request(&mut self, request: RequestRef<'_>, reply: &mut Vec<u8>) -> Answer {
        if request.msg_type.is_multiple_of(2) {
            reply.extend_from_slice(request.body);
            Answer::Respond
        } else {
            Answer::Unknown
        }
    }
}

/// Up to `n` bytes off the front of `rest` (fewer at the end of the input).
fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = rest.split_at(n.min(rest.len()));
    *rest = tail;
    head
}

fn byte(rest: &mut &[u8]) -> u8 {
    take(rest, 1).first().copied().unwrap_or(0)
}

fn word_value(rest: &mut &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let got = take(rest, 8);
    b[..got.len()].copy_from_slice(got);
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let (responses_offset, total) = segment_layout(REQUEST_RECORDS, RESPONSE_RECORDS).unwrap();
    let (mut server, fd) =
        ServerDuplex::create("corelane-fuzz-channel", REQUEST_RECORDS, RESPONSE_RECORDS)
            .expect("memfd");
    // The client's own view of the memory, for its stores of anything anywhere.
    let hostile = Mapping::from_fd(std::os::fd::AsFd::as_fd(&fd), SizePolicy::Sealed(total))
        .expect("map the segment again");
    let mut client = ClientDuplex::attach(fd, "corelane-fuzz-channel").expect("attach");

    let stride = record_stride::<ByteRecord>();
    let req_slots = REQUESTS_OFFSET + SLOTS_OFFSET;
    let mut named = Vec::with_capacity(32);
    named.extend((0..64).step_by(8)); // the segment header
    for base in [REQUESTS_OFFSET, responses_offset] {
        named.extend(
            [TAIL_OFFSET, PRODUCER_ROLE_OFFSET, HEAD_OFFSET, CONSUMER_ROLE_OFFSET, WAIT_OFFSET]
                .map(|o| base + o),
        );
        named.extend([0, 8, 16, 24, 32].map(|o| base + o)); // the ring header, magic to generation
    }
    // SAFETY: the hostile mapping's words are only ever accessed atomically in this target.
    let load =
        |offset: usize| unsafe { hostile.word(offset) }.expect("inside").load(Ordering::Relaxed);

    let config = SessionConfig::default();
    let t0 = Instant::now();
    let mut now = t0;
    let mut session = Session::new(config, t0);
    let mut handler = Echo;
    let mut out = Vec::new();
    let mut received = Vec::new();
    let mut frame = Vec::new();
    // Verdicts seen: an impossible request-ring position (sticky), any drain verdict (the
    // daemon would have closed the channel), a corrupt response ring (sticky).
    let mut ring_fault: Option<Corruption> = None;
    let mut faulted = false;
    let mut push_fault: Option<Corruption> = None;

    let mut rest = data;
    while let [op, tail @ ..] = rest {
        rest = tail;
        match op % 9 {
            // The client stores a word anywhere in the segment.
            0 | 1 => {
                let sel = u16::from_le_bytes([byte(&mut rest), byte(&mut rest)]);
                let offset = if sel & 0x8000 == 0 {
                    // Named words, and the length words of the request record the daemon
                    // reads next and of the one the client wrote last.
                    let dynamic = named.len() + 2;
                    match usize::from(sel) % dynamic {
                        i if i < named.len() => named[i],
                        i => {
                            let position = if i == named.len() {
                                load(REQUESTS_OFFSET + HEAD_OFFSET)
                            } else {
                                load(REQUESTS_OFFSET + TAIL_OFFSET).wrapping_sub(1)
                            };
                            let slot = (position % REQUEST_RECORDS as u64) as usize;
                            req_slots + slot * stride
                        }
                    }
                } else {
                    usize::from(sel & 0x7FFF) % (total / 8) * 8
                };
                // SAFETY: as for `load` above.
                let word = unsafe { hostile.word(offset) }.expect("offset bounded to the segment");
                let current = word.load(Ordering::Relaxed);
                let value = match byte(&mut rest) % 4 {
                    0 => word_value(&mut rest),
                    1 => current.wrapping_add(byte(&mut rest) as i8 as u64),
                    2 => current.wrapping_add(((byte(&mut rest) as i8 as i64) * 16) as u64),
                    _ => u64::from(byte(&mut rest)),
                };
                word.store(value, Ordering::Relaxed);
            }
            // A well-behaved push of raw bytes.
            2 => {
                let n = usize::from(byte(&mut rest)) * 8;
                let bytes = take(&mut rest, n);
                if let Ok(pushed) = client.push(bytes) {
                    assert!(pushed <= bytes.len(), "client push took {pushed} of {}", bytes.len());
                }
                let _ = client.take_doorbell();
            }
            // A well-behaved push of one wire frame (so the session gets past its header).
            3 => {
                let msg_type = u16::from(byte(&mut rest) % 20);
                let msg_id = u64::from(byte(&mut rest));
                let f = byte(&mut rest);
                let flags = match f % 4 {
                    0 | 1 => Flags::EMPTY,
                    2 => Flags::RESPONSE,
                    _ => Flags::ERROR,
                }
                .with_priority(f >> 6);
                let n = usize::from(byte(&mut rest));
                let body = take(&mut rest, n);
                frame.clear();
                wire::encode(ProtocolVersion::V2, msg_type, flags, msg_id, body, &mut frame);
                if let Ok(pushed) = client.push(&frame) {
                    assert!(pushed <= frame.len(), "client push took {pushed} of {}", frame.len());
                }
                let _ = client.take_doorbell();
            }
            // A daemon pass over the channel: drain, feed the session, push its answers.
            4 | 5 => {
                let max = usize::from(byte(&mut rest) % 65);
                out.clear();
                let result = server.drain(max, &mut out);
                assert!(
                    out.len() <= max * RECORD_DATA,
                    "drain({max}) appended {} bytes",
                    out.len()
                );
                match result {
                    Ok(n) => {
                        assert!(ring_fault.is_none(), "drain Ok({n}) after {ring_fault:?}");
                        assert!(n <= max, "drain({max}) took {n} records");
                        assert!(
                            (n..=n * RECORD_DATA).contains(&out.len()),
                            "{n} records, {} bytes",
                            out.len()
                        );
                        if n > 0 && !faulted && !session.is_closed() {
                            // A Close verdict: the answers owed still go out first.
                            let _ = session.on_bytes(&out, now, &mut handler);
                            answer(&mut server, &mut session, &mut push_fault);
                        }
                    }
                    Err(ChannelFault::Ring(c)) => {
                        assert!(out.is_empty(), "a corrupt ring handed out bytes");
                        if let Some(first) = ring_fault {
                            assert_eq!(c, first, "the ring verdict changed");
                        }
                        ring_fault = Some(c);
                        faulted = true;
                    }
                    Err(ChannelFault::Record(e)) => {
                        assert!(ring_fault.is_none(), "drain {e:?} after {ring_fault:?}");
                        assert!(
                            e.len == 0 || e.len as usize > RECORD_DATA,
                            "refused a record of {} bytes",
                            e.len
                        );
                        faulted = true;
                    }
                }
            }
            // The daemon pushes bytes of its own (the client may have moved the response
            // ring's head).
            6 => {
                let n = usize::from(byte(&mut rest)) * 8;
                let bytes = take(&mut rest, n);
                push_checked(&mut server, bytes, &mut push_fault);
            }
            // The client reads its responses, making room.
            7 => {
                let max = usize::from(byte(&mut rest) % 33);
                received.clear();
                if let Ok(n) = client.pop(max, &mut received) {
                    assert!(n <= max, "pop({max}) took {n} records");
                    assert!(received.len() <= n * RECORD_DATA);
                }
            }
            // Doorbells, wake-ups and the session's timers.
            _ => {
                let what = byte(&mut rest);
                match what % 6 {
                    0 => match server.arm_doorbell() {
                        Ok(_) => assert!(ring_fault.is_none(), "armed after {ring_fault:?}"),
                        Err(c) => {
                            if let Some(first) = ring_fault {
                                assert_eq!(c, first, "the ring verdict changed");
                            }
                            ring_fault = Some(c);
                            faulted = true;
                        }
                    },
                    1 => server.disarm_doorbell(),
                    2 => {
                        let ready = server.has_requests();
                        assert!(!(ready && ring_fault.is_some()), "requests after {ring_fault:?}");
                    }
                    3 => {
                        let _ = server.notify();
                    }
                    4 => {
                        let _ = (client.take_doorbell(), client.is_abandoned());
                    }
                    _ => {
                        now += Duration::from_millis(u64::from(what) * 100);
                        let _ = session.on_tick(now);
                        if !faulted {
                            answer(&mut server, &mut session, &mut push_fault);
                        }
                    }
                }
            }
        }
    }
});

/// `ControlAgent::after`: the session's output goes into the response ring as far as it has
/// room, and exactly the bytes the push took are consumed.
fn answer(server: &mut ServerDuplex, session: &mut Session, push_fault: &mut Option<Corruption>) {
    let pending = session.output().len();
    if pending == 0 {
        return;
    }
    let output = session.output().to_vec();
    if let Some(n) = push_checked(server, &output, push_fault) {
        session.consume_output(n);
        assert_eq!(session.output().len(), pending - n);
        if n > 0 {
            let _ = server.notify();
        }
    }
}

/// `ServerDuplex::push` with its invariants; the bytes taken, or `None` on a verdict.
fn push_checked(
    server: &mut ServerDuplex,
    bytes: &[u8],
    push_fault: &mut Option<Corruption>,
) -> Option<usize> {
    match server.push(bytes) {
        Ok(n) => {
            assert!(n <= bytes.len(), "push reported {n} of {} bytes", bytes.len());
            assert!(bytes.is_empty() || push_fault.is_none(), "push Ok({n}) after {push_fault:?}");
            Some(n)
        }
        Err(c) => {
            if let Some(first) = *push_fault {
                assert_eq!(c, first, "the response ring verdict changed");
            }
            *push_fault = Some(c);
            None
        }
    }
}
