//! The two headers exactly as they cross the socket: one definition each, with size and offset
//! tests. Fields are zerocopy byte-order types (alignment 1), so `msg_id` at offset 12 is read
//! without any alignment assumption and the structs have no padding.

use zerocopy::{
    big_endian, little_endian, FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned,
};

use super::{
    Flags, Header, ProtocolVersion, HEADER_LEN, LEGACY_HEADER_LEN, LEGACY_VERSION, MAGIC, VERSION,
};

/// The 24-byte canonical (v2) header exactly as on the wire: packed, little-endian.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `magic` |
/// | 4 | 1 | `version` |
/// | 5 | 1 | `flags` |
/// | 6 | 2 | `msg_type` |
/// | 8 | 4 | `length` |
/// | 12 | 8 | `msg_id` |
/// | 20 | 4 | `crc32` |
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct CanonicalHeader {
    /// [`MAGIC`] (`49 41 50 4C`).
    pub magic: little_endian::U32,
    /// [`VERSION`] (2).
    pub version: u8,
    /// [`Flags`] bits.
    pub flags: u8,
    /// Message type.
    pub msg_type: little_endian::U16,
    /// Body length in bytes, header excluded.
    pub length: little_endian::U32,
    /// Correlation id / sequence number; unaligned on the wire.
    pub msg_id: little_endian::U64,
    /// CRC-32 over header bytes `0..20` followed by the body ([`frame_crc`](super::frame_crc)).
    pub crc32: little_endian::U32,
}

const _: () = assert!(core::mem::size_of::<CanonicalHeader>() == HEADER_LEN);
const _: () = assert!(core::mem::align_of::<CanonicalHeader>() == 1);

impl CanonicalHeader {
    /// A header with [`MAGIC`], [`VERSION`], the given fields and a zero crc32 (to be filled in
    /// once the body is known).
    pub fn new(flags: Flags, msg_type: u16, length: u32, msg_id: u64) -> Self {
        CanonicalHeader {
            magic: MAGIC.into(),
            version: VERSION,
            flags: flags.0,
            msg_type: msg_type.into(),
            length: length.into(),
            msg_id: msg_id.into(),
            crc32: 0.into(),
        }
    }

    /// The fields as a [`Header`] (magic, version and crc are checked by the decoder, not here).
    pub fn header(&self) -> Header {
        Header {
            version: ProtocolVersion::V2,
            flags: Flags(self.flags),
            msg_type: self.msg_type.get(),
            length: self.length.get(),
            msg_id: self.msg_id.get(),
        }
    }
}

/// The 19-byte legacy v1 header exactly as on the wire: packed, big-endian, no flags, no crc.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `magic` |
/// | 4 | 1 | `version` |
/// | 5 | 2 | `msg_type` |
/// | 7 | 4 | `length` |
/// | 11 | 8 | `msg_id` |
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct LegacyHeader {
    /// [`MAGIC`], big-endian (`4C 50 41 49`).
    pub magic: big_endian::U32,
    /// [`LEGACY_VERSION`] (1).
    pub version: u8,
    /// Message type.
    pub msg_type: big_endian::U16,
    /// Body length in bytes, header excluded.
    pub length: big_endian::U32,
    /// Correlation id / sequence number.
    pub msg_id: big_endian::U64,
}

const _: () = assert!(core::mem::size_of::<LegacyHeader>() == LEGACY_HEADER_LEN);
const _: () = assert!(core::mem::align_of::<LegacyHeader>() == 1);

impl LegacyHeader {
    /// A header with [`MAGIC`], [`LEGACY_VERSION`] and the given fields.
    pub fn new(msg_type: u16, length: u32, msg_id: u64) -> Self {
        LegacyHeader {
            magic: MAGIC.into(),
            version: LEGACY_VERSION,
            msg_type: msg_type.into(),
            length: length.into(),
            msg_id: msg_id.into(),
        }
    }

    /// The fields as a [`Header`] with empty flags.
    pub fn header(&self) -> Header {
        Header {
            version: ProtocolVersion::V1,
            flags: Flags::EMPTY,
            msg_type: self.msg_type.get(),
            length: self.length.get(),
            msg_id: self.msg_id.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;
    use crate::wire::CRC_OFFSET;

    #[test]
    fn canonical_header_size_and_offsets() {
        assert_eq!(size_of::<CanonicalHeader>(), 24);
        assert_eq!(offset_of!(CanonicalHeader, magic), 0);
        assert_eq!(offset_of!(CanonicalHeader, version), 4);
        assert_eq!(offset_of!(CanonicalHeader, flags), 5);
        assert_eq!(offset_of!(CanonicalHeader, msg_type), 6);
        assert_eq!(offset_of!(CanonicalHeader, length), 8);
        assert_eq!(offset_of!(CanonicalHeader, msg_id), 12);
        assert_eq!(offset_of!(CanonicalHeader, crc32), 20);
        assert_eq!(offset_of!(CanonicalHeader, crc32), CRC_OFFSET);
    }

    #[test]
    fn legacy_header_size_and_offsets() {
        assert_eq!(size_of::<LegacyHeader>(), 19);
        assert_eq!(offset_of!(LegacyHeader, magic), 0);
        assert_eq!(offset_of!(LegacyHeader, version), 4);
        assert_eq!(offset_of!(LegacyHeader, msg_type), 5);
        assert_eq!(offset_of!(LegacyHeader, length), 7);
        assert_eq!(offset_of!(LegacyHeader, msg_id), 11);
    }

    #[test]
    fn byte_order_of_each_field() {
        let h = CanonicalHeader::new(Flags(0x0a), 0x0102, 0x0304_0506, 0x1122_3344_5566_7788);
        assert_eq!(
            h.as_bytes(),
            [
                0x49, 0x41, 0x50, 0x4c, 2, 0x0a, 0x02, 0x01, 0x06, 0x05, 0x04, 0x03, 0x88, 0x77,
                0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0, 0, 0, 0
            ]
        );
        let l = LegacyHeader::new(0x0102, 0x0304_0506, 0x1122_3344_5566_7788);
        assert_eq!(
            l.as_bytes(),
            [
                0x4c, 0x50, 0x41, 0x49, 1, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x11, 0x22, 0x33,
                0x44, 0x55, 0x66, 0x77, 0x88
            ]
        );
    }
}
