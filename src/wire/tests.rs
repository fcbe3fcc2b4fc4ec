//! Decoder tests: the spec's reference bytes, one test per row of its error table, legacy v1,
//! crc streaks, memory, and property tests for splits and garbage.

use proptest::prelude::*;
use zerocopy::{FromBytes, IntoBytes};

use super::*;

/// An owned copy of what the decoder handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owned {
    Frame(Header, Vec<u8>),
    Error(u16, u64, WireError),
}

fn own(event: Event<'_>) -> Owned {
    match event {
        Event::Frame(f) => Owned::Frame(f.header, f.body.to_vec()),
        Event::Error { msg_type, msg_id, error } => Owned::Error(msg_type, msg_id, error),
    }
}

/// Feeds `bytes` in one call; returns the events and the result.
fn decode(d: &mut Decoder, bytes: &[u8]) -> (Vec<Owned>, Result<(), WireError>) {
    let mut events = Vec::new();
    let result = d.feed(bytes, |e| events.push(own(e)));
    (events, result)
}

fn v2_frame(msg_type: u16, flags: Flags, msg_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(ProtocolVersion::V2, msg_type, flags, msg_id, body, &mut out);
    out
}

fn v2(msg_type: u16, flags: Flags, msg_id: u64, length: u32) -> Header {
    Header { version: ProtocolVersion::V2, flags, msg_type, length, msg_id }
}

fn legacy() -> DecoderConfig {
    DecoderConfig { enable_legacy_support: true, ..DecoderConfig::default() }
}

#[test]
fn reference_bytes_decode_field_by_field() {
    // Built by hand from the spec's table: magic, version 2, flags = response | priority 1,
    // msg_type 0x0102, length 3, msg_id 0x1122334455667788, then crc32, then the body.
    let mut bytes = vec![
        0x49, 0x41, 0x50, 0x4C, // magic
        0x02, // version
        0x0A, // flags: bit 3 response, bits 1-2 = 01
        0x02, 0x01, // msg_type
        0x03, 0x00, 0x00, 0x00, // length
        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // msg_id
    ];
    let body = b"abc";
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..20]);
    hasher.update(body);
    let crc = hasher.finalize();
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(body);

    let (h, rest) = CanonicalHeader::read_from_prefix(&bytes).unwrap();
    assert_eq!(h.magic.get(), MAGIC);
    assert_eq!(h.version, VERSION);
    assert_eq!(h.flags, 0x0A);
    assert_eq!(h.msg_type.get(), 0x0102);
    assert_eq!(h.length.get(), 3);
    assert_eq!(h.msg_id.get(), 0x1122_3344_5566_7788);
    assert_eq!(h.crc32.get(), crc);
    assert_eq!(rest, body);
    assert_eq!(frame_crc(h.as_bytes(), rest), crc);

    let flags = Flags::RESPONSE.with_priority(1);
    assert_eq!(flags, Flags(0x0A));
    assert_eq!(v2_frame(0x0102, flags, 0x1122_3344_5566_7788, body), bytes);

    let mut d = Decoder::new(DecoderConfig::default());
    let (events, result) = decode(&mut d, &bytes);
    assert_eq!(result, Ok(()));
    assert_eq!(events, [Owned::Frame(v2(0x0102, flags, 0x1122_3344_5566_7788, 3), body.to_vec())]);
    assert_eq!(d.version(), ProtocolVersion::V2);
    assert!(!d.is_mid_frame());
}

#[test]
fn flags_bits() {
    assert_eq!(Flags::COMPRESSED.0, 0b1);
    assert_eq!(Flags::RESPONSE.0, 0b1000);
    assert_eq!(Flags::ERROR.0, 0b1_0000);
    assert_eq!(Flags::RESERVED_MASK, 0b1110_0000);
    let f = Flags::ERROR.union(Flags::RESPONSE).with_priority(3);
    assert_eq!(f.priority(), 3);
    assert!(f.contains(Flags::RESPONSE) && f.contains(Flags::ERROR));
    assert!(!f.contains(Flags::COMPRESSED));
    assert_eq!(f.with_priority(2).priority(), 2);
    assert_eq!(f.with_priority(6).priority(), 2); // low two bits only
    assert_eq!(f.with_priority(0).0, 0b1_1000);
    assert_eq!(Flags::default(), Flags::EMPTY);
}

#[test]
fn codes_and_kinds_are_stable() {
    let all = [
        (WireError::BadMagic(0), 1, "bad_magic"),
        (WireError::VersionMismatch { got: 1 }, 2, "version_mismatch"),
        (WireError::Crc { expected: 0, got: 0 }, 3, "crc"),
        (WireError::TooLarge { length: 0, limit: 0 }, 4, "too_large"),
        (WireError::UnknownMsgType(0), 5, "unknown_msg_type"),
        (WireError::UnsupportedFlags(0), 6, "unsupported_flags"),
        (WireError::TooManyCrcErrors { limit: 0 }, 7, "too_many_crc_errors"),
    ];
    for (error, code, kind) in all {
        assert_eq!((error.code(), error.kind()), (code, kind), "{error:?}");
    }
}

// One test per row of the spec's error table: exact text and fatality.

#[test]
fn row_bad_magic() {
    let mut d = Decoder::new(DecoderConfig::default());
    let (events, result) = decode(&mut d, &[0x00, 0x41, 0x50, 0x4C]);
    let error = WireError::BadMagic(0x4C50_4100);
    assert_eq!((events, result), (vec![], Err(error)));
    assert_eq!(error.to_string(), "bad magic 0x4c504100");
    assert!(error.is_fatal());
    // Decided from the first 4 bytes, and sticky.
    assert_eq!(decode(&mut d, &v2_frame(1, Flags::EMPTY, 1, b"")).1, Err(error));
    let mut d = Decoder::new(DecoderConfig::default());
    assert_eq!(
        decode(&mut d, b"GET / HTTP/1.1\r\n").1,
        Err(WireError::BadMagic(u32::from_le_bytes(*b"GET ")))
    );
}

#[test]
fn row_byte_swapped_magic_without_legacy_support() {
    let mut frame = Vec::new();
    encode(ProtocolVersion::V1, 1, Flags::EMPTY, 1, b"x", &mut frame);
    let mut d = Decoder::new(DecoderConfig::default());
    let error = WireError::VersionMismatch { got: 1 };
    assert_eq!(decode(&mut d, &frame), (vec![], Err(error)));
    assert_eq!(error.to_string(), "protocol version mismatch: expected 2, got 1");
    assert!(error.is_fatal());
    // Known from the magic alone.
    let mut d = Decoder::new(DecoderConfig::default());
    assert_eq!(decode(&mut d, &frame[..4]).1, Err(error));
}

#[test]
fn row_version_other_than_2() {
    let mut frame = v2_frame(1, Flags::EMPTY, 1, b"");
    frame[4] = 3;
    let mut d = Decoder::new(DecoderConfig::default());
    let error = WireError::VersionMismatch { got: 3 };
    assert_eq!(decode(&mut d, &frame[..5]), (vec![], Err(error)));
    assert_eq!(error.to_string(), "protocol version mismatch: expected 2, got 3");
    assert!(error.is_fatal());
}

#[test]
fn row_crc_mismatch_drops_the_message_and_keeps_the_connection() {
    let mut bad = v2_frame(4, Flags::EMPTY, 40, b"payload");
    let got = u32::from_le_bytes(bad[20..24].try_into().unwrap());
    bad[HEADER_LEN] ^= 1;
    let expected = frame_crc(&bad[..20], &bad[HEADER_LEN..]);
    let good = v2_frame(5, Flags::EMPTY, 41, b"ok");
    let mut d = Decoder::new(DecoderConfig::default());
    let (events, result) = decode(&mut d, &[bad, good].concat());
    let error = WireError::Crc { expected, got };
    assert_eq!(result, Ok(()));
    assert_eq!(
        events,
        [Owned::Error(4, 40, error), Owned::Frame(v2(5, Flags::EMPTY, 41, 2), b"ok".to_vec())]
    );
    assert_eq!(
        error.to_string(),
        format!("crc32 mismatch: expected 0x{expected:08x}, got 0x{got:08x}")
    );
    assert_eq!(
        WireError::Crc { expected: 0xab, got: 0xdead_beef }.to_string(),
        "crc32 mismatch: expected 0x000000ab, got 0xdeadbeef"
    );
    assert!(!error.is_fatal());
}

#[test]
fn row_length_over_the_limit_is_fatal_before_any_body_byte() {
    let config = DecoderConfig::default();
    let header = CanonicalHeader::new(Flags::EMPTY, 1, DEFAULT_MAX_BODY_BYTES + 1, 9);
    let error = WireError::TooLarge { length: 1_048_577, limit: 1_048_576 };
    // Whole header plus some body in one call, and the header alone byte by byte.
    let mut d = Decoder::new(config);
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(&[0; 100]);
    assert_eq!(decode(&mut d, &bytes), (vec![], Err(error)));
    assert_eq!(d.buffered(), 0);
    let mut d = Decoder::new(config);
    for (i, byte) in header.as_bytes().iter().enumerate() {
        let result = decode(&mut d, &[*byte]).1;
        assert!(d.buffered() < HEADER_LEN);
        assert_eq!(result.is_err(), i == HEADER_LEN - 1, "byte {i}");
    }
    assert_eq!(decode(&mut d, &[0]).1, Err(error));
    assert_eq!(error.to_string(), "message too large: 1048577 > 1048576");
    assert!(error.is_fatal());
    // The limit itself is fine.
    let mut d = Decoder::new(DecoderConfig { max_body_bytes: 4, ..config });
    let (events, result) = decode(&mut d, &v2_frame(1, Flags::EMPTY, 2, b"four"));
    assert_eq!((events.len(), result), (1, Ok(())));
}

#[test]
fn row_unknown_msg_type_is_for_the_layer_above() {
    let error = WireError::UnknownMsgType(77);
    assert_eq!(error.to_string(), "unknown message type 77");
    assert!(!error.is_fatal());
    // The decoder hands out any type; the reply goes through encode_error.
    let mut d = Decoder::new(DecoderConfig::default());
    let (events, _) = decode(&mut d, &v2_frame(77, Flags::EMPTY, 3, b""));
    assert_eq!(events, [Owned::Frame(v2(77, Flags::EMPTY, 3, 0), vec![])]);
    let mut reply = Vec::new();
    encode_error(d.version(), 77, 3, &error, &mut reply);
    let (events, _) = decode(&mut d, &reply);
    let Owned::Frame(h, body) = &events[0] else { panic!("{events:?}") };
    assert_eq!(h.flags, Flags::RESPONSE.union(Flags::ERROR));
    assert_eq!((h.msg_type, h.msg_id), (77, 3));
    assert_eq!(decode_error_body(body), Ok((5, "unknown message type 77")));
}

#[test]
fn row_reserved_flags_drop_the_message_and_skip_its_body() {
    for bits in [0x20, 0x40, 0x80, Flags::COMPRESSED.0, 0xff] {
        let bad = v2_frame(6, Flags(bits), 60, &[7; 50]);
        let good = v2_frame(6, Flags::EMPTY, 61, b"after");
        let stream = [bad, good].concat();
        let expect = vec![
            Owned::Error(6, 60, WireError::UnsupportedFlags(bits)),
            Owned::Frame(v2(6, Flags::EMPTY, 61, 5), b"after".to_vec()),
        ];
        let mut d = Decoder::new(DecoderConfig::default());
        assert_eq!(decode(&mut d, &stream), (expect.clone(), Ok(())));
        // In pieces: the skipped body is never buffered.
        let mut d = Decoder::new(DecoderConfig::default());
        let mut events = Vec::new();
        for piece in stream.chunks(7) {
            d.feed(piece, |e| events.push(own(e))).unwrap();
            assert!(d.buffered() <= HEADER_LEN + 5);
        }
        assert_eq!(events, expect);
        assert!(!d.is_mid_frame());
    }
    let error = WireError::UnsupportedFlags(0x20);
    assert_eq!(error.to_string(), "unsupported flags 0x20");
    assert_eq!(WireError::UnsupportedFlags(1).to_string(), "unsupported flags 0x01");
    assert!(!error.is_fatal());
}

#[test]
fn row_crc_mismatches_in_a_row_close_at_the_limit_and_a_good_frame_resets() {
    let mut bad = v2_frame(1, Flags::EMPTY, 1, b"body");
    bad[23] ^= 0xff;
    let good = v2_frame(1, Flags::EMPTY, 2, b"body");
    let is_crc = |e: &Owned| matches!(e, Owned::Error(_, _, WireError::Crc { .. }));

    let mut d = Decoder::new(DecoderConfig::default());
    for _ in 0..9 {
        let (events, result) = decode(&mut d, &bad);
        assert_eq!(result, Ok(()));
        assert!(events.len() == 1 && is_crc(&events[0]));
    }
    let (events, _) = decode(&mut d, &good);
    assert!(matches!(events[..], [Owned::Frame(..)]));
    for _ in 0..9 {
        assert_eq!(decode(&mut d, &bad).1, Ok(()));
    }
    let error = WireError::TooManyCrcErrors { limit: 10 };
    assert_eq!(decode(&mut d, &bad), (vec![], Err(error)));
    assert_eq!(decode(&mut d, &good), (vec![], Err(error)));
    assert_eq!(d.fatal_error(), Some(error));
    assert_eq!(error.to_string(), "too many crc32 mismatches in a row (10)");
    assert!(error.is_fatal());

    // Configurable, and counted across split frames too.
    let mut d = Decoder::new(DecoderConfig { crc_error_limit: 2, ..DecoderConfig::default() });
    let stream = [bad.clone(), good.clone(), bad.clone(), bad.clone(), good].concat();
    let mut events = Vec::new();
    let mut result = Ok(());
    for piece in stream.chunks(5) {
        result = d.feed(piece, |e| events.push(own(e)));
    }
    assert_eq!(result, Err(WireError::TooManyCrcErrors { limit: 2 }));
    assert_eq!(events.len(), 3); // crc, frame, crc; the second in a row is the fatal one
}

// Legacy v1.

#[test]
fn legacy_v1_accepted_with_the_flag() {
    let mut bytes = vec![0x4C, 0x50, 0x41, 0x49, 0x01, 0x00, 0x07, 0x00, 0x00, 0x00, 0x02];
    bytes.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
    bytes.extend_from_slice(b"hi");
    let (h, body) = LegacyHeader::read_from_prefix(&bytes).unwrap();
    assert_eq!(h, LegacyHeader::new(7, 2, 0x0102_0304_0506_0708));
    assert_eq!(body, b"hi");
    let mut encoded = Vec::new();
    encode(ProtocolVersion::V1, 7, Flags::RESPONSE, 0x0102_0304_0506_0708, b"hi", &mut encoded);
    assert_eq!(encoded, bytes);

    let mut d = Decoder::new(legacy());
    assert_eq!(d.version(), ProtocolVersion::V2);
    let stream = [&bytes[..], &bytes[..]].concat();
    let (events, result) = decode(&mut d, &stream[..25]);
    assert_eq!(result, Ok(()));
    let header = Header {
        version: ProtocolVersion::V1,
        flags: Flags::EMPTY,
        msg_type: 7,
        length: 2,
        msg_id: 0x0102_0304_0506_0708,
    };
    assert_eq!(events, [Owned::Frame(header, b"hi".to_vec())]);
    assert_eq!(d.version(), ProtocolVersion::V1);
    assert!(d.is_mid_frame());
    let (events, result) = decode(&mut d, &stream[25..]);
    assert_eq!((events, result), (vec![Owned::Frame(header, b"hi".to_vec())], Ok(())));

    // A v1 connection stays v1: a v2 frame is a bad (big-endian) magic.
    let (_, result) = decode(&mut d, &v2_frame(1, Flags::EMPTY, 1, b""));
    assert_eq!(result, Err(WireError::BadMagic(0x4941_504C)));
}

#[test]
fn legacy_v1_rejected_without_the_flag_or_after_v2() {
    let mut v1 = Vec::new();
    encode(ProtocolVersion::V1, 1, Flags::EMPTY, 1, b"", &mut v1);
    let mut d = Decoder::new(DecoderConfig::default());
    assert_eq!(decode(&mut d, &v1).1, Err(WireError::VersionMismatch { got: 1 }));
    assert_eq!(d.version(), ProtocolVersion::V2);

    // With legacy support, the first frame fixes the version: v2 first, then v1 is fatal.
    let mut d = Decoder::new(legacy());
    let (events, result) = decode(&mut d, &[v2_frame(1, Flags::EMPTY, 1, b""), v1].concat());
    assert_eq!(events.len(), 1);
    assert_eq!(result, Err(WireError::VersionMismatch { got: 1 }));
    assert_eq!(d.version(), ProtocolVersion::V2);

    // Byte-swapped magic with a version byte other than 1.
    let mut v1_bad = Vec::new();
    encode(ProtocolVersion::V1, 1, Flags::EMPTY, 1, b"", &mut v1_bad);
    v1_bad[4] = 2;
    let mut d = Decoder::new(legacy());
    assert_eq!(decode(&mut d, &v1_bad).1, Err(WireError::VersionMismatch { got: 2 }));
}

// Memory and zero-copy.

#[test]
fn whole_frames_are_zero_copy() {
    let stream = [
        v2_frame(1, Flags::EMPTY, 1, b"one"),
        v2_frame(2, Flags::EMPTY, 2, b"two"),
        v2_frame(3, Flags::EMPTY, 3, b""),
    ]
    .concat();
    let range = stream.as_ptr_range();
    let mut d = Decoder::new(DecoderConfig::default());
    let mut n = 0;
    d.feed(&stream, |e| {
        let Event::Frame(f) = e else { panic!("{e:?}") };
        assert!(range.contains(&f.body.as_ptr()) || f.body.is_empty());
        n += 1;
    })
    .unwrap();
    assert_eq!(n, 3);
    assert_eq!(d.allocation().1, 0, "nothing buffered, nothing allocated");
}

#[test]
fn buffer_is_bounded_and_reused() {
    let config = DecoderConfig { max_body_bytes: 1000, ..DecoderConfig::default() };
    let stream: Vec<u8> =
        (0..20).flat_map(|i| v2_frame(i, Flags::EMPTY, i.into(), &vec![i as u8; 1000])).collect();
    let mut d = Decoder::new(config);
    let mut frames = 0;
    // Pieces of 333 bytes: every frame arrives split.
    let mut first_alloc = None;
    for piece in stream.chunks(333) {
        d.feed(piece, |e| {
            assert!(matches!(e, Event::Frame(f) if f.body.len() == 1000));
            frames += 1;
        })
        .unwrap();
        assert!(d.buffered() <= HEADER_LEN + 1000);
        let now = d.allocation();
        if now.1 >= HEADER_LEN + 1000 {
            assert_eq!(*first_alloc.get_or_insert(now), now, "reallocated");
            assert_eq!(now.1, HEADER_LEN + 1000, "exactly one frame's worth");
        }
    }
    assert_eq!(frames, 20);
    assert!(!d.is_mid_frame());
}

/// Defect: the decoder reserved the announced body size as soon as a header arrived, so a peer
/// that announces 1 MiB and sends one byte cost 1 MiB. The buffer now grows with the bytes.
#[test]
fn a_header_announcing_a_large_body_costs_only_what_arrived() {
    let config = DecoderConfig { max_body_bytes: 1 << 20, ..DecoderConfig::default() };
    let frame = v2_frame(1, Flags::EMPTY, 1, &vec![7u8; 1 << 20]);
    let mut d = Decoder::new(config);
    // The header and one body byte.
    assert_eq!(decode(&mut d, &frame[..HEADER_LEN + 1]), (vec![], Ok(())));
    assert!(d.is_mid_frame());
    assert_eq!(d.buffered(), HEADER_LEN + 1);
    assert!(d.memory() <= 4 * (HEADER_LEN + 1), "{} bytes held for 25 received", d.memory());
    // Half the body, in pieces: the buffer stays within twice what arrived.
    let half = HEADER_LEN + (1 << 19);
    for piece in frame[HEADER_LEN + 1..half].chunks(4096) {
        assert_eq!(decode(&mut d, piece), (vec![], Ok(())));
        assert!(d.memory() <= 2 * d.buffered() + 4096, "{} for {}", d.memory(), d.buffered());
    }
    // The rest: one frame, delivered from the buffer, never more than the frame's size.
    let (events, result) = decode(&mut d, &frame[half..]);
    assert_eq!(result, Ok(()));
    assert_eq!(events.len(), 1);
    assert!(!d.is_mid_frame());
}

/// Defect: the decoder kept its largest buffer forever. After a large frame arrived in pieces
/// it goes back to at most [`Decoder::RETAIN_BYTES`]; small frames keep reusing one buffer.
#[test]
fn the_buffer_shrinks_back_after_a_large_frame() {
    let config = DecoderConfig { max_body_bytes: 1 << 20, ..DecoderConfig::default() };
    let big = v2_frame(1, Flags::EMPTY, 1, &vec![7u8; 1 << 20]);
    let mut d = Decoder::new(config);
    for piece in big.chunks(16 * 1024) {
        assert_eq!(decode(&mut d, piece).1, Ok(()));
    }
    assert!(!d.is_mid_frame());
    assert!(d.memory() <= Decoder::RETAIN_BYTES, "{} bytes kept after the frame", d.memory());
    // Small split frames after it: once the first has grown the buffer, it is reused.
    let small = v2_frame(2, Flags::EMPTY, 2, &[1u8; 100]);
    let mut first = None;
    for round in 0..10 {
        assert_eq!(decode(&mut d, &small[..50]).1, Ok(()));
        let now = d.allocation();
        if round > 0 {
            assert_eq!(*first.get_or_insert(now), now, "reallocated for a small frame");
        }
        assert_eq!(decode(&mut d, &small[50..]).0.len(), 1);
    }
    assert!(d.memory() <= small.len());
}

#[test]
fn mid_frame_and_sticky_fatal() {
    let frame = v2_frame(1, Flags::EMPTY, 1, b"abcdef");
    let mut d = Decoder::new(DecoderConfig::default());
    assert!(!d.is_mid_frame());
    assert_eq!(decode(&mut d, &frame[..3]), (vec![], Ok(())));
    assert!(d.is_mid_frame());
    assert_eq!(d.buffered(), 3);
    assert_eq!(decode(&mut d, &frame[3..26]), (vec![], Ok(())));
    assert_eq!(d.buffered(), 26);
    assert_eq!(decode(&mut d, &frame[26..]).0.len(), 1);
    assert!(!d.is_mid_frame());
    assert_eq!(d.buffered(), 0);

    decode(&mut d, &frame[..10]).1.unwrap();
    let (_, result) = decode(&mut d, &[0xff; 30]); // rest of the frame, then garbage
    let error = result.unwrap_err();
    assert!(error.is_fatal()); // length bytes 10..12 became 0xff: too large
    assert_eq!(decode(&mut d, &frame), (vec![], Err(error)));
    assert_eq!(d.buffered(), 0);
    assert!(!d.is_mid_frame());
}

// Property tests.

/// A frame as the property tests generate it: type, flags (no reserved or compressed bits),
/// msg_id, body.
type Spec = (u16, Flags, u64, Vec<u8>);

fn frame_spec() -> impl Strategy<Value = Spec> {
    let allowed = Flags::PRIORITY_MASK | Flags::RESPONSE.0 | Flags::ERROR.0;
    (
        any::<u16>(),
        any::<u8>().prop_map(move |b| Flags(b & allowed)),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..2000),
    )
}

/// Splits `len` bytes at `cuts` (sorted, deduplicated), or into 1-byte pieces.
fn pieces(len: usize, cuts: &[prop::sample::Index], ones: bool) -> Vec<(usize, usize)> {
    if ones {
        return (0..len).map(|i| (i, i + 1)).collect();
    }
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
    points.extend([0, len]);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| (w[0], w[1])).collect()
}

/// A chunk of hostile input: random bytes, a plausible header (either magic, versions 1, 2 or
/// any, any flags, small lengths) with random bytes after it, or a valid frame.
fn hostile_chunk() -> impl Strategy<Value = Vec<u8>> {
    let header = (
        any::<bool>(),
        prop_oneof![Just(1u8), Just(2u8), any::<u8>()],
        any::<u8>(),
        any::<u16>(),
        prop_oneof![0u32..300, any::<u32>()],
        any::<u64>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(le, version, flags, msg_type, length, msg_id, crc, tail)| {
            let mut h = if le {
                let mut h = CanonicalHeader::new(Flags(flags), msg_type, length, msg_id);
                h.crc32 = crc.into();
                h.as_bytes().to_vec()
            } else {
                LegacyHeader::new(msg_type, length, msg_id).as_bytes().to_vec()
            };
            h[4] = version;
            h.extend_from_slice(&tail);
            h
        });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        header,
        frame_spec().prop_map(|(t, f, id, body)| v2_frame(t, f, id, &body)),
        frame_spec().prop_map(|(t, _, id, body)| {
            let mut out = Vec::new();
            encode(ProtocolVersion::V1, t, Flags::EMPTY, id, &body, &mut out);
            out
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn frames_survive_any_split(
        frames in proptest::collection::vec(frame_spec(), 0..6),
        v1 in any::<bool>(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ones in any::<bool>(),
    ) {
        let version = if v1 { ProtocolVersion::V1 } else { ProtocolVersion::V2 };
        let mut stream = Vec::new();
        let mut expect = Vec::new();
        for (msg_type, flags, msg_id, body) in &frames {
            encode(version, *msg_type, *flags, *msg_id, body, &mut stream);
            let flags = if v1 { Flags::EMPTY } else { *flags };
            let header = Header { version, flags, msg_type: *msg_type, length: body.len() as u32, msg_id: *msg_id };
            expect.push(Owned::Frame(header, body.clone()));
        }
        let mut d = Decoder::new(legacy());
        let mut events = Vec::new();
        for (start, end) in pieces(stream.len(), &cuts, ones) {
            d.feed(&stream[start..end], |e| events.push(own(e))).unwrap();
            prop_assert!(d.buffered() <= HEADER_LEN + 2000);
        }
        prop_assert_eq!(events, expect);
        prop_assert!(!d.is_mid_frame());
        prop_assert_eq!(d.buffered(), 0);
        if !frames.is_empty() {
            prop_assert_eq!(d.version(), version);
        }
    }

    #[test]
    fn garbage_never_panics_and_the_buffer_stays_bounded(
        chunks in proptest::collection::vec(hostile_chunk(), 0..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ones in any::<bool>(),
        enable_legacy_support in any::<bool>(),
        max_body_bytes in prop_oneof![Just(0u32), Just(16), Just(1000), Just(DEFAULT_MAX_BODY_BYTES)],
        crc_error_limit in 0u32..4,
    ) {
        let stream = chunks.concat();
        let config = DecoderConfig { max_body_bytes, enable_legacy_support, crc_error_limit };
        let bound = HEADER_LEN + max_body_bytes as usize;
        let mut d = Decoder::new(config);
        let mut fatal = None;
        for (start, end) in pieces(stream.len(), &cuts, ones) {
            let result = d.feed(&stream[start..end], |e| match e {
                Event::Frame(f) => {
                    assert_eq!(f.body.len(), f.header.length as usize);
                    assert!(f.header.length <= max_body_bytes);
                }
                Event::Error { error, .. } => assert!(!error.is_fatal()),
            });
            prop_assert!(d.buffered() <= bound);
            if let Some(before) = fatal {
                prop_assert_eq!(result, Err(before));
            } else if let Err(error) = result {
                prop_assert!(error.is_fatal());
                fatal = Some(error);
            }
        }
        if fatal.is_some() {
            prop_assert_eq!(d.buffered(), 0);
        }
    }
}
