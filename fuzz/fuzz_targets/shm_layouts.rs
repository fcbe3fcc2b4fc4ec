//! Arbitrary bytes through every decoder and validator of `corelane_rings::shm`: none may panic,
//! and whatever validates must be self-consistent.
#![no_main]

use corelane_rings::shm::{
    Dtype, ExpectedRegion, MajorOrder, ProgressUnit, RegionType, SlotHeader, Superblock,
    TensorHeader, MAX_DIMS, SLOT_BYTES,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    superblock(data);
    slot(data);
    builder(data);
});

/// Decode a superblock and validate it against itself (deep path) and against expectations
/// taken from the bytes after it (mismatch paths).
fn superblock(data: &[u8]) {
    let Ok(sb) = Superblock::decode(data) else { return };
    let file_len = u64_at(data, 64);
    for region_type in [RegionType::HeaderRing, RegionType::PayloadPool] {
        let own = ExpectedRegion {
            region_type,
            epoch: sb.epoch.get(),
            stream_id: sb.stream_id.get(),
            pool_id: sb.pool_id.get(),
            nslots: sb.nslots.get(),
            stride_bytes: sb.stride_bytes.get(),
            file_len,
        };
        if sb.validate(&own).is_ok() {
            assert!(sb.region_len().is_ok_and(|len| len <= file_len));
        }
        let other = ExpectedRegion {
            epoch: u64_at(data, 72),
            stream_id: u32_at(data, 80),
            nslots: u32_at(data, 84),
            ..own
        };
        let _ = sb.validate(&other);
    }
}

/// Decode a slot and validate it with the index and pool it names itself (deep path) and with
/// the ones taken from the bytes after it.
fn slot(data: &[u8]) {
    let Ok(slot) = SlotHeader::decode(data) else { return };
    let own_index = slot.payload_slot.get();
    let own_pool = slot.pool_id.get();
    let stride = u32_at(data, SLOT_BYTES);
    let nslots = own_index.checked_add(1).unwrap_or(u32::MAX);
    if let Ok(tensor) = slot.validate(own_index, nslots, |p| (p == own_pool).then_some(stride)) {
        assert!(tensor.values_len_bytes <= stride);
        let shape = tensor.shape;
        assert!(shape.strides().iter().all(|&s| s >= 1 && s <= i32::MAX as u32));
        assert!(shape.dims[shape.dims().len()..].iter().all(|&d| d == 0));
        let _ = shape.extent_bytes();
        let _ = tensor.payload_offset();
    }
    let _ = slot.validate(u32_at(data, SLOT_BYTES + 4), u32_at(data, SLOT_BYTES + 8), |_| None);
    let _ = slot.tensor.validate();
}

/// Build a tensor header from the bytes; whatever the builder accepts must validate.
fn builder(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else { return };
    let ndims = usize::from(head % 10);
    let n_strides = if head & 0x80 != 0 { ndims } else { 0 };
    let words: Vec<i32> =
        rest.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let (dims, strides) = (words.get(..ndims), words.get(ndims..ndims + n_strides));
    let (Some(dims), Some(strides)) = (dims, strides) else { return };
    let dtype = Dtype::ALL[usize::from(head) % Dtype::ALL.len()];
    let order = MajorOrder::ALL[usize::from(head >> 4) % MajorOrder::ALL.len()];
    let unit = ProgressUnit::ALL[usize::from(head >> 2) % ProgressUnit::ALL.len()];
    let progress = u32_at(data, 1 + 4 * MAX_DIMS * 2);
    if let Ok(header) = TensorHeader::new(dtype, order, dims, strides, unit, progress) {
        let shape = header.validate().expect("a built header validates");
        assert_eq!(shape.dims().len(), ndims);
        let slot = SlotHeader::new(0, 0, 1, 0, 0, header);
        assert!(slot.validate(0, 1, |_| Some(0)).is_ok());
    }
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    data.get(at..at + 8).map_or(u64::MAX, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    data.get(at..at + 4).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
}
