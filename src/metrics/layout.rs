//! The one definition of the counters file's bytes: [`CountersHeader`] and [`CounterRecord`]
//! (the module docs of [`crate::metrics`] have the table).

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// First eight bytes of a counters file: the ASCII bytes `CORELCTR`, read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"CORELCTR");
/// Layout version this build writes and reads.
pub const LAYOUT_VERSION: u32 = 3;
/// Size of the header; record 0 starts here.
pub const HEADER_BYTES: usize = 128;
/// Size of one record.
pub const RECORD_BYTES: usize = 256;
/// Capacity of a record's `name` field (the series text, labels included).
pub const NAME_CAP: usize = 112;
/// Capacity of a record's `help` field.
pub const HELP_CAP: usize = 128;

/// Offset of the header's `state` word (8-byte aligned, accessed atomically).
pub(super) const STATE_OFFSET: usize = core::mem::offset_of!(CountersHeader, state);
/// Offset of the header's `heartbeat_ns` word (8-byte aligned, accessed atomically).
pub(super) const HEARTBEAT_OFFSET: usize = core::mem::offset_of!(CountersHeader, heartbeat_ns);
/// Offset of the header's `publish_interval_ms` word (8-byte aligned, accessed atomically).
pub(super) const INTERVAL_OFFSET: usize =
    core::mem::offset_of!(CountersHeader, publish_interval_ms);
/// Offset of a record's `value` word within the record (8-byte aligned, accessed atomically).
pub(super) const VALUE_OFFSET: usize = core::mem::offset_of!(CounterRecord, value);

/// The file's ready word: where the file is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    /// 0: the daemon is still writing it; nothing in it may be trusted yet.
    Writing,
    /// 1: published; the daemon is (or was, if it died) updating the values.
    Live,
    /// 2: the daemon shut down and removed the file; the values are final.
    Closed,
}

impl FileState {
    /// The word stored in the header's `state` field.
    pub const fn to_word(self) -> u64 {
        match self {
            Self::Writing => 0,
            Self::Live => 1,
            Self::Closed => 2,
        }
    }

    /// The state stored as `word`, if it is one.
    pub const fn from_word(word: u64) -> Option<Self> {
        match word {
            0 => Some(Self::Writing),
            1 => Some(Self::Live),
            2 => Some(Self::Closed),
            _ => None,
        }
    }
}

/// The 128-byte header at offset 0 of a counters file.
///
/// Written once before publication, except `state`, which is accessed atomically in place at
/// offset 48 (so a reader copies the other fields around it).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct CountersHeader {
    /// [`MAGIC`].
    pub magic: U64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: U32,
    /// [`HEADER_BYTES`].
    pub header_bytes: U32,
    /// Number of records that follow the header.
    pub record_count: U32,
    /// [`RECORD_BYTES`].
    pub record_bytes: U32,
    /// Pid of the daemon that created the file.
    pub pid: U64,
    /// Creation time, `CLOCK_MONOTONIC` ns.
    pub start_monotonic_ns: U64,
    /// Creation time, `CLOCK_REALTIME` ns since the Unix epoch.
    pub start_realtime_ns: U64,
    /// The ready word ([`FileState`]); stored last, with Release, when the file is complete.
    pub state: U64,
    /// `CLOCK_MONOTONIC` ns of the publisher's last publish (0: none yet); accessed atomically,
    /// Relaxed (layout version 2).
    pub heartbeat_ns: U64,
    /// The publisher's interval in ms (0: no publisher); accessed atomically, Relaxed.
    pub publish_interval_ms: U64,
    /// Zero.
    pub reserved: [u8; 56],
}

/// One 256-byte record: a value and the metadata that names it.
///
/// Only `value` (offset 0, 8-byte aligned because records are) changes after publication, and
/// only atomically.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct CounterRecord {
    /// The value, native (little-endian) order, accessed atomically.
    pub value: U64,
    /// [`CounterKind`](super::CounterKind) byte: 1 counter, 2 gauge, 3..=6 summary window,
    /// quantile, sum, count (layout version 3).
    pub kind: u8,
    /// Bytes of `name` in use, 1..=[`NAME_CAP`].
    pub name_len: u8,
    /// Bytes of `help` in use, 0..=[`HELP_CAP`].
    pub help_len: u8,
    /// [`Unit`](super::Unit) byte: 0 a plain number, 1 nanoseconds exposed as seconds (layout
    /// version 3).
    pub unit: u8,
    /// Zero.
    pub reserved: [u8; 4],
    /// The series in exposition syntax (`family{label="escaped value",...}`), zero padded.
    pub name: [u8; NAME_CAP],
    /// The help text, zero padded.
    pub help: [u8; HELP_CAP],
}

const _: () = assert!(size_of::<CountersHeader>() == HEADER_BYTES);
const _: () = assert!(size_of::<CounterRecord>() == RECORD_BYTES);
const _: () = assert!(align_of::<CountersHeader>() == 1 && align_of::<CounterRecord>() == 1);
// Values and the state word are 8-byte aligned in a page-aligned mapping.
const _: () = assert!(HEADER_BYTES.is_multiple_of(8) && RECORD_BYTES.is_multiple_of(8));
const _: () = assert!(STATE_OFFSET.is_multiple_of(8) && VALUE_OFFSET.is_multiple_of(8));
const _: () = assert!(HEARTBEAT_OFFSET.is_multiple_of(8) && INTERVAL_OFFSET.is_multiple_of(8));
// A value owns its record's first 128 bytes' line pair; the rest is read-only metadata.
const _: () = assert!(RECORD_BYTES.is_multiple_of(128) && HEADER_BYTES.is_multiple_of(128));
// Lengths are stored in a byte.
const _: () = assert!(NAME_CAP <= u8::MAX as usize);
const _: () = assert!(HELP_CAP <= u8::MAX as usize);

/// Length of a file of `records` records.
pub(super) const fn file_len(records: usize) -> usize {
    HEADER_BYTES + records * RECORD_BYTES
}

/// Offset of record `index`'s value word.
pub(super) const fn value_offset(index: usize) -> usize {
    HEADER_BYTES + index * RECORD_BYTES + VALUE_OFFSET
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn header_size_and_offsets() {
        assert_eq!(size_of::<CountersHeader>(), 128);
        assert_eq!(offset_of!(CountersHeader, magic), 0);
        assert_eq!(offset_of!(CountersHeader, layout_version), 8);
        assert_eq!(offset_of!(CountersHeader, header_bytes), 12);
        assert_eq!(offset_of!(CountersHeader, record_count), 16);
        assert_eq!(offset_of!(CountersHeader, record_bytes), 20);
        assert_eq!(offset_of!(CountersHeader, pid), 24);
        assert_eq!(offset_of!(CountersHeader, start_monotonic_ns), 32);
        assert_eq!(offset_of!(CountersHeader, start_realtime_ns), 40);
        assert_eq!(offset_of!(CountersHeader, state), 48);
        assert_eq!(offset_of!(CountersHeader, heartbeat_ns), 56);
        assert_eq!(offset_of!(CountersHeader, publish_interval_ms), 64);
        assert_eq!(offset_of!(CountersHeader, reserved), 72);
        assert_eq!(HEARTBEAT_OFFSET, 56);
        assert_eq!(INTERVAL_OFFSET, 64);
        assert_eq!(LAYOUT_VERSION, 3);
    }

    #[test]
    fn record_size_and_offsets() {
        assert_eq!(size_of::<CounterRecord>(), 256);
        assert_eq!(offset_of!(CounterRecord, value), 0);
        assert_eq!(offset_of!(CounterRecord, kind), 8);
        assert_eq!(offset_of!(CounterRecord, name_len), 9);
        assert_eq!(offset_of!(CounterRecord, help_len), 10);
        assert_eq!(offset_of!(CounterRecord, unit), 11);
        assert_eq!(offset_of!(CounterRecord, reserved), 12);
        assert_eq!(offset_of!(CounterRecord, name), 16);
        assert_eq!(offset_of!(CounterRecord, help), 128);
        assert_eq!(value_offset(0), 128);
        assert_eq!(value_offset(3), 128 + 3 * 256);
        assert_eq!(file_len(2), 640);
    }

    #[test]
    fn magic_is_ascii_on_disk() {
        assert_eq!(MAGIC.to_le_bytes(), *b"CORELCTR");
    }

    #[test]
    fn state_words_round_trip() {
        for state in [FileState::Writing, FileState::Live, FileState::Closed] {
            assert_eq!(FileState::from_word(state.to_word()), Some(state));
        }
        assert_eq!(FileState::from_word(3), None);
    }
}
