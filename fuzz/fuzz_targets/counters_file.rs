//! A counters file another process wrote (`corelane top`, the /metrics thread of another
//! daemon): `CountersReader::open` must refuse bad bytes with an error, and whatever it accepts
//! must snapshot, render as exposition text and report its liveness without a panic, a hang or
//! an allocation beyond the file's size. Input byte 0 picks the mode: 0 the rest is the whole
//! file; otherwise the rest is (offset: u16, xor: u8) patches over a valid file of a counter,
//! a gauge and a summary, truncated to `byte 0 * 64` bytes when that is shorter.
#![no_main]

use std::sync::OnceLock;

use corelane::metrics::{render, CounterSpec, CountersReader, Registry, QUANTILES};
use libfuzzer_sys::fuzz_target;

fn path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("corelane-fuzz-counters-{}", std::process::id()))
}

/// A valid file, written once by the real writer.
fn template() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let mut r = Registry::new();
        r.register(CounterSpec::counter("fuzz_events_total", &[("lane", "main")], "Events."))
            .unwrap();
        r.register(CounterSpec::gauge("fuzz_depth", &[], "Depth.")).unwrap();
        let ids = r.register_summary("fuzz_latency_seconds", &[], "Latency.", &QUANTILES).unwrap();
        let p = path().with_extension("template");
        let file = r.create(&p).unwrap();
        file.summary(ids).publish(&[10, 20, 30, 40], 100, 4);
        let bytes = std::fs::read(&p).unwrap();
        let _ = std::fs::remove_file(&p);
        bytes
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode == 0 {
        rest.to_vec()
    } else {
        let mut t = template().to_vec();
        for patch in rest.chunks_exact(3) {
            let at = usize::from(u16::from_le_bytes([patch[0], patch[1]])) % t.len();
            t[at] ^= patch[2];
        }
        t.truncate(usize::from(mode) * 64);
        t
    };
    let p = path();
    std::fs::write(&p, &bytes).unwrap();
    if let Ok(reader) = CountersReader::open(&p) {
        let samples = reader.snapshot();
        assert!(samples.len() * 256 <= bytes.len(), "more samples than records");
        let mut text = String::new();
        render(&samples, &mut text);
        let _ = reader.liveness(corelane::metrics::monotonic_ns());
        let _ = reader.info();
    }
});
