//! Arbitrary text as a region URI: `ShmUri::parse` must never panic, and every URI it accepts
//! must write back (Display) to a form that parses to the same value and writes identically.
//! Input starting with a NUL byte is instead a path for `ShmUri::new`, which must round-trip
//! the same way whenever it accepts.
#![no_main]

use std::path::Path;

use corelane::pool::uri::{ShmUri, MAX_URI_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let uri = match text.strip_prefix('\0') {
        Some(rest) => {
            let (flag, path) = match rest.strip_prefix('\u{1}') {
                Some(path) => (true, path),
                None => (false, rest),
            };
            ShmUri::new(Path::new(path), flag)
        }
        None => ShmUri::parse(text),
    };
    let Ok(uri) = uri else { return };
    let shown = uri.to_string();
    assert!(shown.len() <= MAX_URI_BYTES, "accepted a URI that writes {} bytes", shown.len());
    let back = ShmUri::parse(&shown).expect("the written form of an accepted URI parses");
    assert_eq!(back, uri);
    assert_eq!(back.to_string(), shown);
    assert!(uri.path().is_absolute());
});
