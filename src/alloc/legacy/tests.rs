use super::*;
use crate::alloc::wire::MAX_ALLOC_SIZE;
use proptest::prelude::*;

const A: u8 = 1; // ALLOC
const F: u8 = 2; // FREE
const Q: u8 = 3; // QUERY
const V4: Layout = Layout::TtMetalV4;
const V5: Layout = Layout::TtMetalV5;
const C2: Layout = Layout::CompactV2;

/// A record of `layout` with the given head fields (the rest zero, as clients send).
fn rec(layout: Layout, ty: u8, device: i32, size: u64, bt: u8, id: u64) -> Vec<u8> {
    match layout {
        Layout::CompactV2 => {
            let mut r = CompactRecord::new_zeroed();
            r.msg_type = ty;
            r.buffer_type = bt;
            r.device_id = U16::new(device as u16);
            r.size = U64::new(size);
            r.address = U64::new(id);
            r.timestamp = U64::new(123);
            r.as_bytes().to_vec()
        }
        _ => {
            let mut r = V5Record::new_zeroed();
            let h = &mut r.v4.head;
            h.msg_type = ty;
            h.device_id = I32::new(device);
            h.size = U64::new(size);
            h.buffer_type = bt;
            h.process_id = I32::new(4242);
            h.buffer_id = U64::new(id);
            h.timestamp = U64::new(123);
            r.as_bytes()[..layout.record_len()].to_vec()
        }
    }
}

fn alloc(layout: Layout, device: i32, size: u64, bt: u8, id: u64) -> Vec<u8> {
    rec(layout, A, device, size, bt, id)
}

fn query(layout: Layout, device: i32) -> Vec<u8> {
    rec(layout, Q, device, 0, 0, 0)
}

fn ev(kind: MsgType, device: u8, bt: u8, id: u64, size: u64) -> Item {
    Item::Event(Event { kind, device, buffer_type: bt, buffer_id: id, size })
}

/// One parse over `input`: the items and the result.
fn run(p: &mut LegacyParser, input: &[u8]) -> (Vec<Item>, Parsed) {
    let mut items = Vec::new();
    let parsed = p.parse(input, &mut |i| items.push(i));
    (items, parsed)
}

/// The caller's loop: append each chunk to a buffer, parse it all, drop what was consumed; stop
/// at a close. Returns the items, the last verdict and the bytes left over.
fn feed(p: &mut LegacyParser, chunks: &[&[u8]]) -> (Vec<Item>, Verdict, usize) {
    let mut buf = Vec::new();
    let mut items = Vec::new();
    let mut verdict = Verdict::Continue;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        let parsed = p.parse(&buf, &mut |i| items.push(i));
        assert!(parsed.consumed <= buf.len());
        buf.drain(..parsed.consumed);
        verdict = parsed.verdict;
        if verdict != Verdict::Continue {
            break;
        }
    }
    (items, verdict, buf.len())
}

fn whole(choice: LayoutChoice, input: &[u8]) -> (Vec<Item>, Verdict, usize, LegacyParser) {
    let mut p = LegacyParser::new(choice);
    let (items, verdict, left) = feed(&mut p, &[input]);
    (items, verdict, left, p)
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---- reference behaviours (§7) about parsing ----

#[test]
fn s2_alloc_then_query_and_its_response() {
    for layout in [V4, V5] {
        let input = cat(&[&alloc(layout, 0, 4096, 0, 0x1000), &query(layout, 0)]);
        let (items, v, left, p) = whole(LayoutChoice::Pinned(layout), &input);
        assert_eq!(v, Verdict::Continue);
        assert_eq!(left, 0);
        assert_eq!(
            items,
            [ev(MsgType::Alloc, 0, 0, 0x1000, 4096), Item::Query { device: 0, buffer_type: 0 }]
        );
        let s = p.stats();
        assert_eq!((s.records, s.events, s.queries, s.invalid, s.resync_bytes), (2, 1, 1, 0, 0));

        let mut out = Vec::new();
        encode_response(layout, 0, &ReplyUsage { dram: 4096, ..Default::default() }, &mut out);
        assert_eq!(out.len(), layout.record_len());
        let r: V4Record = zerocopy::transmute!(*out.first_chunk::<128>().unwrap());
        assert_eq!(r.head.msg_type, 4);
        assert_eq!(r.head.device_id.get(), 0);
        assert_eq!(r.dram_allocated.get(), 4096);
        let mut expect = V4Record::new_zeroed();
        expect.head.msg_type = 4;
        expect.dram_allocated = U64::new(4096);
        assert_eq!(r, expect, "every other field is 0");
        assert!(out[128..].iter().all(|&b| b == 0), "ring-buffer fields 0");
    }
}

#[test]
fn s3_buffer_types_pass_through() {
    for bt in 0..=4u8 {
        let (items, ..) = whole(LayoutChoice::Pinned(V4), &alloc(V4, 1, 64, bt, 7));
        assert_eq!(items, [ev(MsgType::Alloc, 1, bt, 7, 64)]);
    }
}

#[test]
fn s4_s5_s6_invalid_alloc_is_dropped_and_the_connection_continues() {
    let cases = [
        (alloc(V4, -1, 64, 0, 1), EventError::Device(-1)),
        (alloc(V4, 8, 64, 0, 1), EventError::Device(8)),
        (alloc(V4, 0, 0, 0, 1), EventError::Size(0)),
        (alloc(V4, 0, MAX_ALLOC_SIZE + 1, 0, 1), EventError::Size(MAX_ALLOC_SIZE + 1)),
        (alloc(V4, 0, 64, 5, 1), EventError::BufferType(5)),
        (rec(V4, 10, 0, 64, 3, 1), EventError::BufferType(3)),
    ];
    for (bad, error) in cases {
        let input = cat(&[&bad, &alloc(V4, 0, 64, 0, 2)]);
        let (items, v, left, mut p) = whole(LayoutChoice::Pinned(V4), &input);
        assert_eq!(v, Verdict::Continue);
        assert_eq!(left, 0, "the whole invalid record is dropped, not resynced");
        assert_eq!(items, [Item::Invalid { error }, ev(MsgType::Alloc, 0, 0, 2, 64)]);
        let s = p.stats();
        assert_eq!((s.records, s.invalid, s.resync_bytes, s.streak), (2, 1, 0, 0));
        let b = p.take_burst().expect("one burst");
        assert_eq!(
            b,
            Burst { first: Offense::Field(error), junk_bytes: 0, invalid_records: 1, bursts: 1 }
        );
        assert_eq!(p.take_burst(), None);
    }
}

#[test]
fn invalid_records_do_not_close_and_make_one_burst() {
    // A client reporting device 9 over and over (a machine with more chips than the ledger).
    let bad = alloc(V4, 9, 64, 0, 1);
    let input: Vec<u8> = bad.iter().copied().cycle().take(bad.len() * 25).collect();
    let (items, v, left, mut p) = whole(LayoutChoice::Pinned(V4), &input);
    assert_eq!(v, Verdict::Continue);
    assert_eq!(left, 0);
    assert_eq!(items.len(), 25);
    assert_eq!(p.stats().invalid, 25);
    assert_eq!(p.take_burst(), None, "still going");
    let b = p.flush_burst().expect("flushed");
    assert_eq!(b.invalid_records, 25);
    assert_eq!(
        b.with_pid(4242).to_string(),
        "invalid device_id 9 from pid 4242: old-protocol client? (25 invalid records, 0 bytes skipped)"
    );
    assert_eq!(p.flush_burst(), None);
}

#[test]
fn s9_free_carries_no_size() {
    let (items, ..) = whole(LayoutChoice::Pinned(V5), &rec(V5, F, 2, 0xdead_beef, 250, 9));
    assert_eq!(items, [ev(MsgType::Free, 2, 250, 9, 0)]);
    // CB_FREE and KERNEL_UNLOAD keep the message size (the ledger uses its own anyway).
    let (items, ..) = whole(LayoutChoice::Pinned(V4), &rec(V4, 9, 0, 77, 0, 3));
    assert_eq!(items, [ev(MsgType::CbFree, 0, 0, 3, 77)]);
}

#[test]
fn s12_query_any_device_and_zero_filled_reply() {
    for d in [9, -3] {
        let (items, v, ..) = whole(LayoutChoice::Pinned(V4), &query(V4, d));
        assert_eq!(v, Verdict::Continue);
        assert_eq!(items, [Item::Query { device: d, buffer_type: 0 }]);
        let mut out = Vec::new();
        let full = ReplyUsage {
            dram: 1,
            l1: 2,
            l1_small: 3,
            trace: 4,
            cb: 5,
            kernel: 6,
            ..Default::default()
        };
        encode_response(V4, d, &full, &mut out);
        let mut expect = V4Record::new_zeroed();
        expect.head.msg_type = 4;
        expect.head.device_id = I32::new(d);
        assert_eq!(out, expect.as_bytes());
    }
}

#[test]
fn s13_s14_device_info_replies() {
    let info = ReplyDeviceInfo {
        available: true,
        arch_code: 2,
        dram_channels: 12,
        dram_per_channel: 1 << 30,
        l1_per_core: 1_499_136,
        total_dram: 12 << 30,
        total_l1: 120 * 1_499_136,
        num_devices: 2,
    };
    for layout in [V4, V5] {
        let (items, ..) = whole(LayoutChoice::Pinned(layout), &rec(layout, 6, -1, 0, 0, 0));
        assert_eq!(items, [Item::DeviceInfoQuery { device: -1 }]);

        let mut out = Vec::new();
        encode_device_info(layout, -1, &info, &mut out);
        assert_eq!(out.len(), layout.record_len());
        let r: V4Record = zerocopy::transmute!(*out.first_chunk::<128>().unwrap());
        let mut expect = V4Record::new_zeroed();
        expect.head.msg_type = 7;
        expect.head.device_id = I32::new(-1);
        expect.num_devices = U32::new(2);
        expect.is_available = U32::new(1);
        assert_eq!(r, expect);
        out.clear();
        encode_device_info(layout, -1, &ReplyDeviceInfo::default(), &mut out);
        assert_eq!(&out[120..128], &[0; 8], "no devices: not available, count 0");

        out.clear();
        encode_device_info(layout, 1, &info, &mut out);
        assert_eq!(out[0], 7);
        assert_eq!(&out[4..8], &1i32.to_le_bytes());
        assert_eq!(&out[88..96], &(12u64 << 30).to_le_bytes());
        assert_eq!(&out[96..104], &(120u64 * 1_499_136).to_le_bytes());
        assert_eq!(&out[104..108], &2u32.to_le_bytes());
        assert_eq!(&out[108..112], &12u32.to_le_bytes());
        assert_eq!(&out[112..116], &(1u32 << 30).to_le_bytes());
        assert_eq!(&out[116..120], &1_499_136u32.to_le_bytes());
        assert_eq!(&out[120..124], &1u32.to_le_bytes());
        assert_eq!(&out[124..128], &0u32.to_le_bytes(), "num_devices only for -1");
        assert!(out[8..88].iter().all(|&b| b == 0));
        assert!(out[128..].iter().all(|&b| b == 0));

        out.clear();
        encode_device_info(
            layout,
            3,
            &ReplyDeviceInfo { available: false, ..Default::default() },
            &mut out,
        );
        assert_eq!(&out[120..124], &0u32.to_le_bytes(), "unconfigured: not available");
        out.clear();
        encode_device_info(layout, 42, &info, &mut out);
        assert!(out[8..].iter().all(|&b| b == 0), "other ids give zeros");
    }
}

#[test]
fn s15_dumps_are_items_and_the_next_query_still_parses() {
    let input = cat(&[&rec(V4, 5, 0, 0, 0, 0), &rec(V4, 12, 0, 0, 0, 0), &query(V4, 0)]);
    let (items, v, left, _) = whole(LayoutChoice::Pinned(V4), &input);
    assert_eq!((v, left), (Verdict::Continue, 0));
    assert_eq!(
        items,
        [Item::DumpRemaining, Item::DumpKernels, Item::Query { device: 0, buffer_type: 0 }]
    );
}

#[test]
fn s22_one_junk_byte_then_a_valid_record() {
    for layout in [V4, V5, C2] {
        let input = cat(&[&[0xEE], &alloc(layout, 0, 64, 1, 5)]);
        let (items, v, left, mut p) = whole(LayoutChoice::Pinned(layout), &input);
        assert_eq!((v, left), (Verdict::Continue, 0));
        assert_eq!(items, [ev(MsgType::Alloc, 0, 1, 5, 64)]);
        let s = p.stats();
        assert_eq!((s.resync_bytes, s.streak, s.records), (1, 0, 1));
        let b = p.take_burst().expect("the junk byte's burst ended with the record");
        assert_eq!(b.first, Offense::Type(0xEE));
        assert_eq!(b.to_string(), "invalid message type 238: old-protocol client?");
    }
}

#[test]
fn s23_ten_junk_bytes_close_nine_do_not() {
    for layout in [V4, V5, C2] {
        let (items, v, _, mut p) = whole(LayoutChoice::Pinned(layout), &[0xFF; 10]);
        assert!(items.is_empty());
        assert_eq!(v, Verdict::Close(CloseReason::TooManyErrors));
        assert_eq!(p.stats().streak, 10);
        assert_eq!(p.take_burst().map(|b| b.junk_bytes), Some(10), "a close ends the burst");
        // Closed stays closed.
        let (items, parsed) = run(&mut p, &alloc(layout, 0, 64, 0, 1));
        assert!(items.is_empty());
        assert_eq!(
            parsed,
            Parsed { consumed: 0, verdict: Verdict::Close(CloseReason::TooManyErrors) }
        );
        assert_eq!(p.close_reason(), Some(CloseReason::TooManyErrors));

        let input = cat(&[&[0xFF; 9], &alloc(layout, 0, 64, 0, 1), &[0xFF; 9]]);
        let (items, v, left, p) = whole(LayoutChoice::Pinned(layout), &input);
        assert_eq!((v, left, items.len()), (Verdict::Continue, 0, 1));
        assert_eq!(p.stats().streak, 9);
    }
    assert_eq!(
        CloseReason::TooManyErrors.to_string(),
        "too many consecutive errors (10) - closing connection (likely protocol mismatch)"
    );
}

#[test]
fn s24_responses_sent_by_a_client_are_unknown() {
    let input = cat(&[&rec(V4, 4, 0, 0, 0, 0), &rec(V4, 7, 0, 0, 0, 0), &query(V4, 1)]);
    let (items, v, _, p) = whole(LayoutChoice::Pinned(V4), &input);
    assert_eq!(v, Verdict::Continue);
    assert_eq!(
        items,
        [
            Item::Unknown { msg_type: 4 },
            Item::Unknown { msg_type: 7 },
            Item::Query { device: 1, buffer_type: 0 }
        ]
    );
    assert_eq!(p.stats().unknown, 2);
}

#[test]
fn s25_a_record_split_over_several_reads() {
    for layout in [V4, V5, C2] {
        let r = alloc(layout, 3, 4096, 0, 0x10);
        let mut p = LegacyParser::new(LayoutChoice::Pinned(layout));
        let (items, parsed) = run(&mut p, &r[..1]);
        assert_eq!((items.len(), parsed.consumed), (0, 0));
        let (items, parsed) = run(&mut p, &r[..r.len() - 1]);
        assert_eq!((items.len(), parsed.consumed), (0, 0));
        let (items, parsed) = run(&mut p, &r);
        assert_eq!(items, [ev(MsgType::Alloc, 3, 0, 0x10, 4096)]);
        assert_eq!(parsed.consumed, r.len());
        let (items, v, _) =
            feed(&mut LegacyParser::new(LayoutChoice::Pinned(layout)), &[&r[..1], &r[1..]]);
        assert_eq!((items.len(), v), (1, Verdict::Continue));
    }
}

#[test]
fn many_records_in_one_input() {
    for layout in [V4, V5, C2] {
        let mut input = Vec::new();
        for i in 0..100u64 {
            input.extend(alloc(layout, (i % 8) as i32, 64 + i, (i % 5) as u8, i));
            input.extend(rec(layout, F, (i % 8) as i32, 0, 0, i));
        }
        input.extend(&alloc(layout, 0, 64, 0, 1)[..10]);
        let mut p = LegacyParser::new(LayoutChoice::Pinned(layout));
        let (items, parsed) = run(&mut p, &input);
        assert_eq!(items.len(), 200);
        assert_eq!(parsed.consumed, 200 * layout.record_len(), "stops at the partial record");
        assert_eq!(items[199], ev(MsgType::Free, 3, 0, 99, 0));
        assert_eq!(p.stats().events, 200);
    }
}

// ---- auto detection ----

#[test]
fn auto_detects_v4_and_v5_from_the_first_record() {
    let v4 = cat(&[&alloc(V4, 0, 64, 0, 1), &query(V4, 0)]);
    let (items, v, left, p) = whole(LayoutChoice::Auto, &v4);
    assert_eq!((p.layout(), items.len(), v, left), (Some(V4), 2, Verdict::Continue, 0));

    let v5 = cat(&[&alloc(V5, 0, 64, 0, 1), &query(V5, 0)]);
    let (items, v, left, p) = whole(LayoutChoice::Auto, &v5);
    assert_eq!((p.layout(), items.len(), v, left), (Some(V5), 2, Verdict::Continue, 0));

    // One v5 QUERY alone: decided at once (byte 128 is zero), no timeout.
    let (items, _, left, p) = whole(LayoutChoice::Auto, &query(V5, 2));
    assert_eq!((p.layout(), left), (Some(V5), 0));
    assert_eq!(items, [Item::Query { device: 2, buffer_type: 0 }]);
    assert!(!p.needs_settle());

    // Decided as soon as byte 128 is there.
    let mut p = LegacyParser::new(LayoutChoice::Auto);
    let (items, parsed) = run(&mut p, &v5[..129]);
    assert_eq!((p.layout(), items.len(), parsed.consumed), (Some(V5), 0, 0));
    let mut p = LegacyParser::new(LayoutChoice::Auto);
    let (items, parsed) = run(&mut p, &v4[..129]);
    assert_eq!((p.layout(), items.len(), parsed.consumed), (Some(V4), 1, 128));
    assert_eq!(p.choice(), LayoutChoice::Auto);
}

#[test]
fn auto_single_v4_query_settles_to_v4() {
    let q = query(V4, 1);
    let mut p = LegacyParser::new(LayoutChoice::Auto);
    let (items, parsed) = run(&mut p, &q[..100]);
    assert_eq!((items.len(), parsed.consumed, p.needs_settle()), (0, 0, false));
    let (items, parsed) = run(&mut p, &q);
    assert_eq!((items.len(), parsed.consumed), (0, 0));
    assert!(p.needs_settle(), "128 bytes, nothing more: wait DETECT_TIMEOUT then settle");
    assert_eq!(p.layout(), None);
    assert_eq!(p.settle(), Verdict::Continue);
    assert_eq!(p.layout(), Some(V4));
    assert!(!p.needs_settle());
    let (items, parsed) = run(&mut p, &q);
    assert_eq!(items, [Item::Query { device: 1, buffer_type: 0 }]);
    assert_eq!(parsed.consumed, 128);
    // Settling again changes nothing.
    assert_eq!(p.settle(), Verdict::Continue);
    assert!(DETECT_TIMEOUT <= Duration::from_millis(10));
}

#[test]
fn auto_skips_junk_before_the_first_record_and_never_reports_wrong_layout() {
    let input = cat(&[&[0xFF, 0x00], &alloc(V5, 0, 64, 0, 1), &alloc(V5, 0, 64, 0, 2)]);
    let (items, v, _, p) = whole(LayoutChoice::Auto, &input);
    assert_eq!((p.layout(), items.len(), v), (Some(V5), 2, Verdict::Continue));
    assert_eq!(p.stats().resync_bytes, 2);
    // Decided v4, then 16 zeros: junk, the 10-error close, not a wrong layout.
    let input = cat(&[&alloc(V4, 0, 64, 0, 1), &query(V4, 0), &[0; 16]]);
    let mut p = LegacyParser::new(LayoutChoice::Auto);
    let (_, parsed) = run(&mut p, &input);
    assert_eq!(parsed.verdict, Verdict::Close(CloseReason::TooManyErrors));
}

// ---- wrong pinned layout ----

#[test]
fn pinned_v4_fed_v5_says_so() {
    let reason = CloseReason::WrongLayout { pinned: V4, seen: V5 };
    let input = cat(&[&alloc(V5, 0, 64, 0, 1), &alloc(V5, 0, 64, 0, 2)]);
    let (items, v, _, mut p) = whole(LayoutChoice::Pinned(V4), &input);
    assert_eq!(v, Verdict::Close(reason));
    assert_eq!(items, [ev(MsgType::Alloc, 0, 0, 1, 64)]);
    assert_eq!(p.stats().resync_bytes, 0, "no byte-by-byte resync");
    assert_eq!(p.take_burst(), None);
    assert_eq!(
        reason.to_string(),
        "listener pinned to tt-metal-v4 but the client sends 144-byte tt-metal-v5 records"
    );
    // A v5 monitor's single QUERY (it waits for the reply after its 144 bytes).
    let (items, v, ..) = whole(LayoutChoice::Pinned(V4), &query(V5, 0));
    assert_eq!((items.len(), v), (1, Verdict::Close(reason)));
    // The zeros arriving one by one: held, not counted as junk.
    let q = query(V5, 0);
    let chunks: Vec<&[u8]> = q.chunks(1).collect();
    let mut p = LegacyParser::new(LayoutChoice::Pinned(V4));
    let (_, v, _) = feed(&mut p, &chunks);
    assert_eq!(v, Verdict::Close(reason));
    // Zeros at the start of a connection are just junk.
    let (_, v, ..) = whole(LayoutChoice::Pinned(V4), &[0; 16]);
    assert_eq!(v, Verdict::Close(CloseReason::TooManyErrors));
    // A zero then something else after a record: junk, resynced.
    let input = cat(&[&alloc(V4, 0, 64, 0, 1), &[0, 0xFF], &alloc(V4, 0, 64, 0, 2)]);
    let (items, v, _, p) = whole(LayoutChoice::Pinned(V4), &input);
    assert_eq!((items.len(), v, p.stats().resync_bytes), (2, Verdict::Continue, 2));
}

#[test]
fn pinned_v5_fed_v4_says_so() {
    let reason = CloseReason::WrongLayout { pinned: V5, seen: V4 };
    let input = cat(&[&alloc(V4, 0, 64, 0, 1), &alloc(V4, 0, 64, 0, 2)]);
    let (items, v, _, p) = whole(LayoutChoice::Pinned(V5), &input);
    assert_eq!(v, Verdict::Close(reason));
    assert!(items.is_empty());
    assert_eq!(p.stats().resync_bytes, 0);
    assert_eq!(
        reason.to_string(),
        "listener pinned to tt-metal-v5 but the client sends 128-byte tt-metal-v4 records"
    );
    // Decided with 132 bytes.
    let mut p = LegacyParser::new(LayoutChoice::Pinned(V5));
    let (_, parsed) = run(&mut p, &input[..131]);
    assert_eq!(parsed.verdict, Verdict::Continue);
    assert!(p.needs_settle());
    let (_, parsed) = run(&mut p, &input[..132]);
    assert_eq!(parsed.verdict, Verdict::Close(reason));
    // A v4 monitor's single QUERY: 128 bytes then silence; settle after the timeout.
    let mut p = LegacyParser::new(LayoutChoice::Pinned(V5));
    let (items, parsed) = run(&mut p, &query(V4, 0));
    assert_eq!((items.len(), parsed.verdict), (0, Verdict::Continue));
    assert!(p.needs_settle());
    assert_eq!(p.settle(), Verdict::Close(reason));
    assert_eq!(p.close_reason(), Some(reason));
    // A v5 record's tail arriving late is not a v4 record.
    let r = alloc(V5, 0, 64, 0, 1);
    let mut p = LegacyParser::new(LayoutChoice::Pinned(V5));
    let (_, _) = run(&mut p, &r[..129]);
    assert!(!p.needs_settle(), "byte 128 zero: a v5 record on its way");
    let (items, parsed) = run(&mut p, &r);
    assert_eq!((items.len(), parsed.consumed), (1, 144));
}

#[test]
fn pinned_v4_and_compact_never_settle() {
    for (layout, partial) in [(V4, 100), (C2, 40)] {
        let mut p = LegacyParser::new(LayoutChoice::Pinned(layout));
        let (items, parsed) = run(&mut p, &query(layout, 0)[..partial]);
        assert_eq!((items.len(), parsed.verdict), (0, Verdict::Continue));
        assert!(!p.needs_settle());
        assert_eq!(p.settle(), Verdict::Continue);
    }
    let mut p = LegacyParser::new(LayoutChoice::Pinned(V4));
    let (items, _) = run(&mut p, &query(V4, 0));
    assert_eq!(items.len(), 1);
    assert!(!p.needs_settle());
}

// ---- compact-v2 ----

#[test]
fn compact_records_and_replies() {
    let input = cat(&[
        &alloc(C2, 1, 4096, 1, 0xabc),
        &rec(C2, Q, 1, 0, 1, 0),
        &rec(C2, 6, -1, 0, 0, 0),
        &rec(C2, 8, 1, 512, 0, 3),
        &alloc(C2, 9, 4096, 0, 1),
    ]);
    let (items, v, left, _) = whole(LayoutChoice::Pinned(C2), &input);
    assert_eq!((v, left), (Verdict::Continue, 0));
    assert_eq!(
        items,
        [
            ev(MsgType::Alloc, 1, 1, 0xabc, 4096),
            Item::Query { device: 1, buffer_type: 1 },
            Item::DeviceInfoQuery { device: -1 },
            ev(MsgType::CbAlloc, 1, 0, 3, 512),
            Item::Invalid { error: EventError::Device(9) },
        ]
    );
    // u16 device ids: 0xFFFF in an event is device 65535, invalid.
    let (items, ..) = whole(LayoutChoice::Pinned(C2), &alloc(C2, -1, 64, 0, 1));
    assert_eq!(items, [Item::Invalid { error: EventError::Device(65535) }]);

    let usage = ReplyUsage {
        cb: 512,
        kernel: 7,
        type_allocated: 4096,
        type_capacity: 1 << 20,
        dram: 99,
        ..Default::default()
    };
    let mut out = Vec::new();
    encode_response(C2, 1, &usage, &mut out);
    assert_eq!(out.len(), 48);
    let r: CompactRecord = zerocopy::transmute!(*out.first_chunk::<48>().unwrap());
    let mut expect = CompactRecord::new_zeroed();
    expect.msg_type = 4;
    expect.device_id = U16::new(1);
    expect.size = U64::new(4096);
    expect.address = U64::new(1 << 20);
    expect.cb_allocated = U64::new(512);
    expect.kernel_allocated = U64::new(7);
    assert_eq!(r, expect);
    assert_eq!(&out[8..16], &4096u64.to_le_bytes());
    assert_eq!(&out[16..24], &(1u64 << 20).to_le_bytes());
    assert_eq!(&out[32..40], &512u64.to_le_bytes());
    assert_eq!(&out[40..48], &7u64.to_le_bytes());

    let info = ReplyDeviceInfo {
        available: true,
        total_dram: 1 << 30,
        total_l1: 1 << 20,
        num_devices: 3,
        ..Default::default()
    };
    out.clear();
    encode_device_info(C2, -1, &info, &mut out);
    assert_eq!(out.len(), 48);
    assert_eq!((out[0], &out[2..4]), (7, &[0xFF, 0xFF][..]));
    assert_eq!(&out[8..16], &3u64.to_le_bytes());
    assert_eq!(&out[16..24], &1u64.to_le_bytes());
    out.clear();
    encode_device_info(C2, 0, &info, &mut out);
    assert_eq!(&out[8..16], &(1u64 << 30).to_le_bytes());
    assert_eq!(&out[16..24], &(1u64 << 20).to_le_bytes());
    out.clear();
    encode_device_info(C2, 0, &ReplyDeviceInfo::default(), &mut out);
    assert!(out[2..].iter().all(|&b| b == 0));
}

#[test]
fn reply_sizes_and_offsets() {
    let usage = ReplyUsage {
        dram: 1,
        l1: 2,
        l1_small: 3,
        trace: 4,
        cb: 5,
        kernel: 6,
        type_allocated: 7,
        type_capacity: 8,
    };
    for (layout, len) in [(V4, 128), (V5, 144), (C2, 48)] {
        let mut out = vec![0xAA];
        encode_response(layout, 7, &usage, &mut out);
        encode_device_info(layout, 7, &ReplyDeviceInfo::default(), &mut out);
        assert_eq!(out.len(), 1 + 2 * len, "appends, same size as the request");
        assert_eq!(out[0], 0xAA);
    }
    let mut out = Vec::new();
    encode_response(V5, 7, &usage, &mut out);
    assert_eq!(out[0], 4);
    assert_eq!(&out[1..4], &[0; 3]);
    assert_eq!(&out[4..8], &7i32.to_le_bytes());
    for (i, off) in [40, 48, 56, 64, 72, 80].into_iter().enumerate() {
        assert_eq!(&out[off..off + 8], &(i as u64 + 1).to_le_bytes(), "counter at {off}");
    }
    assert!(out[8..40].iter().all(|&b| b == 0));
    assert!(out[88..].iter().all(|&b| b == 0));
    // A reply parsed back is a RESPONSE: unknown to the server.
    let (items, ..) = whole(LayoutChoice::Pinned(V5), &out);
    assert_eq!(items, [Item::Unknown { msg_type: 4 }]);
}

#[test]
fn bursts_span_junk_and_invalid_records_and_merge_until_taken() {
    let input = cat(&[
        &alloc(V4, 0, 64, 0, 1),
        &[0xFE, 0xFD],
        &alloc(V4, 2_657_333, 64, 0, 1),
        &query(V4, 0),
        &alloc(V4, 0, 0, 0, 1),
        &query(V4, 0),
    ]);
    let (_, v, _, mut p) = whole(LayoutChoice::Pinned(V4), &input);
    assert_eq!(v, Verdict::Continue);
    let b = p.take_burst().expect("two bursts, folded");
    assert_eq!(
        b,
        Burst { first: Offense::Type(0xFE), junk_bytes: 2, invalid_records: 2, bursts: 2 }
    );
    assert_eq!(
        b.to_string(),
        "invalid message type 254: old-protocol client? (2 invalid records, 2 bytes skipped, 2 bursts)"
    );
    assert_eq!(p.take_burst(), None);

    let mut p = LegacyParser::new(LayoutChoice::Pinned(V4));
    let _ = run(&mut p, &cat(&[&alloc(V4, 2_657_333, 64, 0, 1), &query(V4, 0)]));
    let b = p.take_burst().expect("one burst");
    assert_eq!(b.to_string(), "invalid device_id 2657333: old-protocol client?");
    assert_eq!(
        b.with_pid(4242).to_string(),
        "invalid device_id 2657333 from pid 4242: old-protocol client?"
    );
}

// ---- properties ----

/// Pieces a stream is made of: records of every layout and type, junk, zero runs.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let layout = prop_oneof![Just(V4), Just(V5), Just(C2)];
    prop_oneof![
        4 => (layout, 0u8..14, -2i32..10, prop_oneof![Just(0u64), 1u64..1 << 20, Just(u64::MAX)], 0u8..6, any::<u64>())
            .prop_map(|(l, t, d, s, b, id)| rec(l, t, d, s, b, id)),
        1 => proptest::collection::vec(any::<u8>(), 0..20),
        1 => (0usize..20).prop_map(|n| vec![0; n]),
    ]
}

fn choice() -> impl Strategy<Value = LayoutChoice> {
    prop_oneof![
        Just(LayoutChoice::Auto),
        Just(LayoutChoice::Pinned(V4)),
        Just(LayoutChoice::Pinned(V5)),
        Just(LayoutChoice::Pinned(C2)),
    ]
}

/// Every byte consumed is a junk byte or part of a record of the layout in use.
fn check_accounting(p: &LegacyParser, consumed: usize) {
    let s = p.stats();
    let len = p.layout().map_or(0, |l| l.record_len()) as u64;
    assert_eq!(s.records * len + s.resync_bytes, consumed as u64);
    assert!(s.events + s.queries + s.invalid + s.unknown <= s.records);
    assert!(s.streak <= MAX_CONSECUTIVE_ERRORS);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_split_gives_the_same_items(
        choice in choice(),
        pieces in proptest::collection::vec(piece(), 0..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ones in any::<bool>(),
    ) {
        let stream = pieces.concat();
        let mut whole_p = LegacyParser::new(choice);
        let (w_items, w_verdict, w_left) = feed(&mut whole_p, &[&stream]);

        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        if ones {
            at = (0..=stream.len()).collect();
        }
        at.push(0);
        at.push(stream.len());
        at.sort_unstable();
        let chunks: Vec<&[u8]> = at.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
        let mut split_p = LegacyParser::new(choice);
        let (s_items, s_verdict, s_left) = feed(&mut split_p, &chunks);

        prop_assert_eq!(&s_items, &w_items);
        prop_assert_eq!(s_verdict, w_verdict);
        if w_verdict == Verdict::Continue {
            prop_assert_eq!(s_left, w_left);
        }
        prop_assert_eq!(split_p.stats(), whole_p.stats());
        prop_assert_eq!(split_p.layout(), whole_p.layout());
        let (a, b) = (split_p.flush_burst(), whole_p.flush_burst());
        prop_assert_eq!(a.map(|b| (b.first, b.junk_bytes + b.invalid_records)), b.map(|b| (b.first, b.junk_bytes + b.invalid_records)));
    }

    #[test]
    fn parse_never_panics_and_accounts_for_every_byte(
        choice in choice(),
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        pieces in proptest::collection::vec(piece(), 0..6),
    ) {
        for input in [bytes, pieces.concat()] {
            let mut p = LegacyParser::new(choice);
            let mut n = 0usize;
            let parsed = p.parse(&input, &mut |_| n += 1);
            prop_assert!(parsed.consumed <= input.len());
            prop_assert!(n <= input.len() / 48 + 1);
            if parsed.verdict == Verdict::Continue && p.needs_settle() {
                let rest = &input[parsed.consumed..];
                prop_assert!((128..144).contains(&rest.len()));
                if p.settle() == Verdict::Continue {
                    let again = p.parse(rest, &mut |_| n += 1);
                    prop_assert!(again.consumed <= rest.len());
                    check_accounting(&p, parsed.consumed + again.consumed);
                    continue;
                }
            }
            check_accounting(&p, parsed.consumed);
        }
    }
}
