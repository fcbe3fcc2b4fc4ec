//! Arbitrary bytes as a peer's stream, fed to the wire decoder in pieces whose sizes come from
//! the input, with legacy support off and on: it must never panic, never buffer more than a
//! header plus `max_body_bytes`, hand out only bodies of the header's length, and once it
//! reports a fatal error keep refusing input with that error.
#![no_main]

use corelane::wire::{
    Decoder, DecoderConfig, Event, WireError, DEFAULT_MAX_BODY_BYTES, HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Byte 0: limits; byte 1: piece-size scale; the rest: the stream. Piece sizes are read
    // from the stream's own bytes, back to front, so they vary with the input.
    let [control, scale, stream @ ..] = data else {
        return;
    };
    let max_body_bytes = [0, 16, 1000, DEFAULT_MAX_BODY_BYTES][usize::from(control & 3)];
    let crc_error_limit = u32::from(control >> 2 & 7);
    for enable_legacy_support in [false, true] {
        let config = DecoderConfig { max_body_bytes, enable_legacy_support, crc_error_limit };
        run(config, stream, 1 + usize::from(*scale));
    }
});

fn run(config: DecoderConfig, stream: &[u8], scale: usize) {
    let bound = HEADER_LEN + config.max_body_bytes as usize;
    let mut decoder = Decoder::new(config);
    let mut fatal: Option<WireError> = None;
    let mut rest = stream;
    let mut sizes = stream.iter().rev().cycle();
    while !rest.is_empty() {
        let size = sizes.next().map_or(1, |&b| 1 + usize::from(b) * scale / 16);
        let (piece, after) = rest.split_at(size.min(rest.len()));
        rest = after;
        let result = decoder.feed(piece, |event| match event {
            Event::Frame(frame) => {
                assert_eq!(frame.body.len(), frame.header.length as usize);
                assert!(frame.header.length <= config.max_body_bytes);
            }
            Event::Error { error, .. } => assert!(!error.is_fatal()),
        });
        assert!(decoder.buffered() <= bound);
        // Memory follows the bytes that arrived (at most doubling), never the announced length.
        let held = decoder.memory();
        assert!(
            held <= (2 * decoder.buffered())
                .max(Decoder::RETAIN_BYTES)
                .min(bound.max(Decoder::RETAIN_BYTES))
        );
        match (fatal, result) {
            (Some(before), result) => assert_eq!(result, Err(before)),
            (None, Err(error)) => {
                assert!(error.is_fatal());
                fatal = Some(error);
            }
            (None, Ok(())) => {}
        }
    }
}
