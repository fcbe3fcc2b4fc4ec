//! Arbitrary bytes as a region file for the inspector's decoder (`decode_region`): it must
//! never panic, never list more slots than the limit or the bytes hold, and its report must
//! always format as text and JSON. The first input byte also picks the slot limit and whether
//! pool strides are known.
#![no_main]

use corelane::pool::inspect::{decode_region, InspectOptions};
use corelane::rings::seqlock::PoolSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let knob = data.first().copied().unwrap_or(0);
    let max_slots = usize::from(knob >> 1);
    let pool_strides = (knob & 1 == 1).then(|| {
        vec![PoolSpec { pool_id: 1, stride_bytes: 64 }, PoolSpec { pool_id: 7, stride_bytes: 192 }]
    });
    let opts = InspectOptions { max_slots, pool_strides };
    let Ok(report) = decode_region(data, &opts) else {
        assert!(data.len() < 64, "only a file shorter than a superblock is refused");
        return;
    };
    if let Some(slots) = &report.slots {
        assert!(slots.list.len() <= max_slots);
        assert_eq!(slots.list.len(), slots.read);
        assert!((slots.read as u64) * 256 + 64 <= data.len() as u64);
    }
    let text = report.to_string();
    assert!(!text.is_empty());
    let json = serde_json::to_string(&report).expect("a report always serialises");
    assert!(json.starts_with('{'));
});
