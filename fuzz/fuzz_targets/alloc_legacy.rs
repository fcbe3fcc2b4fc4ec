//! Arbitrary bytes as a legacy alloc client's stream, under each layout choice, fed whole and in
//! pieces whose sizes come from the input: parsing must never panic, consume only bytes it was
//! given, account for every consumed byte as junk or part of a record of the layout in use,
//! hand out the same items and verdict however the stream is cut, and stay closed once closed.
#![no_main]

use corelane::alloc::legacy::{Item, LayoutChoice, LegacyParser, LegacyStats, Verdict};
use corelane::alloc::Layout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Byte 0: piece-size scale; the rest: the stream. Piece sizes are read from the stream's
    // own bytes, back to front, so they vary with the input.
    let [scale, stream @ ..] = data else {
        return;
    };
    for choice in [
        LayoutChoice::Auto,
        LayoutChoice::Pinned(Layout::TtMetalV4),
        LayoutChoice::Pinned(Layout::TtMetalV5),
        LayoutChoice::Pinned(Layout::CompactV2),
    ] {
        let whole = run(choice, stream, None);
        let split = run(choice, stream, Some(1 + usize::from(*scale)));
        assert_eq!(whole, split, "{choice:?}: cutting the stream changed the outcome");
    }
});

fn run(
    choice: LayoutChoice,
    stream: &[u8],
    scale: Option<usize>,
) -> (Vec<Item>, Verdict, LegacyStats) {
    let mut parser = LegacyParser::new(choice);
    let mut buf = Vec::new();
    let mut items = Vec::new();
    let mut verdict = Verdict::Continue;
    let mut consumed = 0usize;
    let mut rest = stream;
    let mut sizes = stream.iter().rev().cycle();
    while !rest.is_empty() && verdict == Verdict::Continue {
        let size = match scale {
            None => rest.len(),
            Some(s) => sizes.next().map_or(1, |&b| 1 + usize::from(b) * s / 16),
        };
        let (piece, after) = rest.split_at(size.min(rest.len()));
        rest = after;
        buf.extend_from_slice(piece);
        verdict = step(&mut parser, &mut buf, &mut items, &mut consumed);
    }
    // The end of the stream is a pause: the detection timeout path.
    if verdict == Verdict::Continue && parser.needs_settle() {
        assert!((128..144).contains(&buf.len()), "settle only with a possible v4 record left");
        verdict = parser.settle();
        if verdict == Verdict::Continue {
            verdict = step(&mut parser, &mut buf, &mut items, &mut consumed);
            assert!(!parser.needs_settle());
        }
    }
    if let Verdict::Close(reason) = verdict {
        assert_eq!(parser.close_reason(), Some(reason));
        let again = parser.parse(&buf, &mut |_| panic!("an item after the close"));
        assert_eq!((again.consumed, again.verdict), (0, verdict), "closed stays closed");
    }
    if let Some(burst) = parser.flush_burst() {
        assert!(burst.junk_bytes + burst.invalid_records >= 1);
        let _ = burst.with_pid(4242).to_string();
    }
    (items, verdict, parser.stats())
}

fn step(
    parser: &mut LegacyParser,
    buf: &mut Vec<u8>,
    items: &mut Vec<Item>,
    consumed: &mut usize,
) -> Verdict {
    let before = items.len();
    let parsed = parser.parse(buf, &mut |item| items.push(item));
    assert!(parsed.consumed <= buf.len(), "consumed more than it was given");
    assert!((items.len() - before) * 48 <= parsed.consumed, "an item per record, at most");
    buf.drain(..parsed.consumed);
    *consumed += parsed.consumed;
    let stats = parser.stats();
    let record_len = parser.layout().map_or(0, |l| l.record_len()) as u64;
    assert_eq!(stats.records * record_len + stats.resync_bytes, *consumed as u64);
    assert_eq!(stats.records, items.len() as u64);
    assert!(stats.streak <= 10);
    parsed.verdict
}
