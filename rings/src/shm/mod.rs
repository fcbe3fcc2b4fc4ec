//! Byte-exact layouts of the SHM Tensor Pool wire spec v1.2 (`specs/tensor-pool.md` §1-3).
//!
//! Every shared-memory file starts with a 64-byte [`Superblock`]. A header ring follows it with
//! `nslots` 256-byte slots, each a [`SlotHeader`] that embeds a [`TensorHeader`]; a payload pool
//! follows it with `nslots` slots of `stride_bytes` each.
//!
//! The structs are `#[repr(C)]`, alignment 1 and built from zerocopy's little-endian types, so
//! the unaligned fields of the spec (`epoch` at 12, `timestamp_ns` at slot offset 22, `dims` at 83)
//! need no unsafe code: decode with [`Superblock::decode`] / [`SlotHeader::decode`] (or any
//! [`zerocopy::FromBytes`] method) and encode with [`zerocopy::IntoBytes::as_bytes`].
//!
//! This module knows layouts and validation only. It does not map files and does not touch the
//! `seq_commit` word atomically: the seqlock owns that word (at [`SEQ_COMMIT_OFFSET`]) and calls
//! [`SlotHeader::validate`] on the copy it took between its two loads.
//!
//! Offsets and sizes are `u64` wherever a file position is computed ([`payload_offset`],
//! [`header_ring_len`]): the reference C code multiplies in `u32` and overflows for pools over
//! 4 GiB (trap T6).

mod enums;
mod slot;
mod superblock;

use core::fmt;

pub use enums::{
    ClockDomain, Dtype, FrameProgressState, MajorOrder, Mode, ProgressUnit, RegionType,
    ResponseCode, UnknownValue,
};
pub use slot::{InvalidHeader, MessageHeader, Shape, SlotHeader, Tensor, TensorHeader};
pub use superblock::{ExpectedRegion, Superblock, SuperblockError, SuperblockField};

/// Size of the superblock at the start of every SHM file; a constant, never derived from schema
/// metadata.
pub const SUPERBLOCK_BYTES: usize = 64;
/// Size of one header-ring slot ([`SlotHeader`]).
pub const SLOT_BYTES: usize = 256;
/// Value of the superblock's `slot_bytes` field in a header ring.
pub const HEADER_SLOT_BYTES: u32 = 256;
/// Superblock `magic`: read as a little-endian `u64`; the bytes on disk are `"1MHSLPOT"` (trap T1).
pub const MAGIC: u64 = 0x544F_504C_5348_4D31;
/// The only layout version this module reads and writes (`TP_LAYOUT_VERSION`).
pub const LAYOUT_VERSION: u32 = 1;
/// Number of `dims` / `strides` entries in a [`TensorHeader`]; changing it needs a new layout.
pub const MAX_DIMS: usize = 8;
/// Schema id of the wire schema (superblock, slot header, tensor header, control messages).
pub const WIRE_SCHEMA_ID: u16 = 900;
/// Schema id of the driver control messages.
pub const DRIVER_SCHEMA_ID: u16 = 901;
/// SBE template id of the superblock (stored without a message header).
pub const SUPERBLOCK_TEMPLATE_ID: u16 = 50;
/// SBE template id of the slot header (stored without a message header).
pub const SLOT_HEADER_TEMPLATE_ID: u16 = 51;
/// SBE block length of the slot header's fixed part (bytes 0..60 of a slot).
pub const SLOT_HEADER_BLOCK_LENGTH: u16 = 60;
/// SBE template id of the embedded tensor header.
pub const TENSOR_HEADER_TEMPLATE_ID: u16 = 52;
/// SBE block length of the embedded tensor header (192 bytes less its 8-byte message header).
pub const TENSOR_HEADER_BLOCK_LENGTH: u16 = 184;
/// Schema version written in the embedded tensor header's message header.
pub const TENSOR_HEADER_VERSION: u16 = 1;
/// Value of the slot's `headerBytes` length prefix: message header (8) + tensor header (184).
pub const HEADER_BYTES_LEN: u32 = 192;
/// Offset of `seq_commit` within a slot; 8-byte aligned in the mapping, accessed atomically.
pub const SEQ_COMMIT_OFFSET: usize = 0;
/// Offset of `activity_timestamp_ns` within the superblock; 8-byte aligned, refreshed atomically.
pub const ACTIVITY_TIMESTAMP_OFFSET: usize = 56;
/// Pool strides must be a non-zero multiple of this, so every pool slot is 64-byte aligned.
pub const POOL_STRIDE_ALIGN: u32 = 64;
/// SBE null value of an optional `u8` (and of `u8` enums).
pub const NULL_U8: u8 = u8::MAX;
/// SBE null value of an optional `u16`.
pub const NULL_U16: u16 = u16::MAX;
/// SBE null value of an optional `u32`; also what C writes in a pool superblock's `slot_bytes`.
pub const NULL_U32: u32 = u32::MAX;
/// SBE null value of an optional `u64`.
pub const NULL_U64: u64 = u64::MAX;

/// The `seq_commit` word for logical sequence `seq`: `(seq << 1) | committed`.
///
/// The top bit of `seq` is lost; sequences stay far below 2^63.
pub const fn seq_commit(seq: u64, committed: bool) -> u64 {
    (seq << 1) | committed as u64
}

/// The logical sequence held in a `seq_commit` word.
pub const fn seq_of(seq_commit: u64) -> u64 {
    seq_commit >> 1
}

/// Whether a `seq_commit` word has its commit bit set.
pub const fn is_committed(seq_commit: u64) -> bool {
    seq_commit & 1 == 1
}

/// Header-ring slot index of `seq`: `seq & (nslots - 1)`.
///
/// `nslots` must be a power of two (a validated superblock guarantees it); for other values the
/// result is meaningless but the function does not panic in release builds.
pub const fn header_index(seq: u64, nslots: u32) -> u32 {
    debug_assert!(nslots.is_power_of_two());
    let mask = (nslots as u64).wrapping_sub(1);
    // The mask is below 2^32 for every non-zero u32 `nslots`, so the cast keeps every bit;
    // for nslots = 0 it truncates, which is the documented "meaningless" case.
    (seq & mask) as u32
}

/// File offset of header-ring slot `index`: `64 + index * 256`.
pub const fn slot_offset(index: u32) -> u64 {
    SUPERBLOCK_BYTES as u64 + index as u64 * SLOT_BYTES as u64
}

/// File offset of payload-pool slot `payload_slot`: `64 + payload_slot * stride_bytes`.
///
/// Computed in `u64` (trap T6). It cannot overflow: `(2^32 - 1)^2 + 64 < 2^64`.
pub const fn payload_offset(payload_slot: u32, stride_bytes: u32) -> u64 {
    SUPERBLOCK_BYTES as u64 + payload_slot as u64 * stride_bytes as u64
}

/// Size of a header-ring file with `nslots` slots: `64 + nslots * 256`.
pub const fn header_ring_len(nslots: u32) -> u64 {
    slot_offset(nslots)
}

/// Size of a payload-pool file with `nslots` slots of `stride_bytes`: `64 + nslots * stride`.
///
/// Cannot overflow, for the reason given at [`payload_offset`].
pub const fn payload_pool_len(nslots: u32, stride_bytes: u32) -> u64 {
    payload_offset(nslots, stride_bytes)
}

/// Input shorter than the layout being decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated {
    /// Bytes the layout needs.
    pub expected: usize,
    /// Bytes given.
    pub seen: usize,
}

impl fmt::Display for Truncated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "input too short: expected {} bytes, seen {}", self.expected, self.seen)
    }
}

impl std::error::Error for Truncated {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_on_disk_spell_1mhslpot() {
        assert_eq!(&MAGIC.to_le_bytes(), b"1MHSLPOT");
        assert_eq!(MAGIC.to_le_bytes(), [0x31, 0x4D, 0x48, 0x53, 0x4C, 0x50, 0x4F, 0x54]);
    }

    #[test]
    fn header_bytes_len_is_message_header_plus_block() {
        assert_eq!(HEADER_BYTES_LEN, 8 + u32::from(TENSOR_HEADER_BLOCK_LENGTH));
        assert_eq!(SLOT_BYTES, usize::from(SLOT_HEADER_BLOCK_LENGTH) + 4 + 192);
        assert_eq!(HEADER_SLOT_BYTES as usize, SLOT_BYTES);
    }

    #[test]
    fn seq_commit_packs_seq_and_commit_bit() {
        assert_eq!(seq_commit(5, false), 10);
        assert_eq!(seq_commit(5, true), 11);
        assert_eq!(seq_of(11), 5);
        assert!(is_committed(11));
        assert!(!is_committed(10));
    }

    /// Conformance 9: seq 5 in a 4-slot ring -> slot 1 at 64 + 256, seq_commit 11, payload at
    /// pool offset 64 + 1 * stride.
    #[test]
    fn conformance_9_seq_5_in_4_slot_ring() {
        let stride = 1 << 20;
        let index = header_index(5, 4);
        assert_eq!(index, 1);
        assert_eq!(slot_offset(index), 64 + 256);
        assert_eq!(seq_commit(5, true), 11);
        assert_eq!(payload_offset(index, stride), 64 + u64::from(stride));
    }

    #[test]
    fn header_index_masks_by_nslots() {
        assert_eq!(header_index(0, 1), 0);
        assert_eq!(header_index(1023, 1024), 1023);
        assert_eq!(header_index(1024, 1024), 0);
        assert_eq!(header_index(u64::MAX, 1 << 31), (1 << 31) - 1);
    }

    /// Trap T6: 1024 slots of 8 MiB is an 8 GiB pool; the last slot is past 4 GiB.
    #[test]
    fn payload_offset_does_not_wrap_at_4_gib() {
        let stride = 8 << 20;
        assert_eq!(payload_offset(1023, stride), 64 + 1023 * (8u64 << 20));
        assert_eq!(payload_pool_len(1024, stride), 64 + (8u64 << 30));
        let max = u64::from(u32::MAX);
        assert_eq!(payload_pool_len(u32::MAX, u32::MAX), 64 + max * max);
        assert_eq!(header_ring_len(u32::MAX), 64 + max * 256);
    }

    #[test]
    fn truncated_display_says_expected_and_seen() {
        let e = Truncated { expected: 64, seen: 3 };
        assert_eq!(e.to_string(), "input too short: expected 64 bytes, seen 3");
    }
}
