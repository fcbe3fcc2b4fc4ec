//! The 64-byte superblock at the start of every SHM file (spec §1), and the checks a consumer runs
//! before it uses a mapping (conformance 1-5 and 8).

use core::fmt;

use zerocopy::little_endian::{I16, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{
    header_ring_len, payload_pool_len, RegionType, Truncated, UnknownValue, HEADER_SLOT_BYTES,
    LAYOUT_VERSION, MAGIC, NULL_U32, POOL_STRIDE_ALIGN, SUPERBLOCK_BYTES,
};

/// Region superblock: a raw SBE body (template 50, block length 64) with no message header.
///
/// Written once at creation, except `activity_timestamp_ns` (at
/// [`ACTIVITY_TIMESTAMP_OFFSET`](super::ACTIVITY_TIMESTAMP_OFFSET), 8-byte aligned), which the
/// owner refreshes atomically in place.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Superblock {
    /// [`MAGIC`]; on disk `31 4D 48 53 4C 50 4F 54`.
    pub magic: U64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: U32,
    /// Epoch of the stream the file belongs to (unaligned, offset 12).
    pub epoch: U64,
    /// Stream the file belongs to.
    pub stream_id: U32,
    /// [`RegionType`] as raw `i16`.
    pub region_type: I16,
    /// 0 for a header ring; the announced pool id for a pool.
    pub pool_id: U16,
    /// Slots in the file; the header ring's `nslots` for pools too.
    pub nslots: U32,
    /// 256 for a header ring; C writes [`NULL_U32`] for pools (not checked, trap T16).
    pub slot_bytes: U32,
    /// Pool stride; C writes 0 for a header ring (not checked, trap T16).
    pub stride_bytes: U32,
    /// Pid of the process that created the file.
    pub pid: U64,
    /// Creation time, `CLOCK_MONOTONIC` ns.
    pub start_timestamp_ns: U64,
    /// Liveness heartbeat, `CLOCK_MONOTONIC` ns.
    pub activity_timestamp_ns: U64,
}

const _: () = assert!(size_of::<Superblock>() == SUPERBLOCK_BYTES);
const _: () = assert!(align_of::<Superblock>() == 1);

/// What a consumer learned from the announce or attach response, and the mapped file's length,
/// to check a [`Superblock`] against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedRegion {
    /// Header ring or payload pool.
    pub region_type: RegionType,
    /// Epoch of the announce or attach response.
    pub epoch: u64,
    /// Stream id.
    pub stream_id: u32,
    /// 0 for the header ring; the pool's id otherwise.
    pub pool_id: u16,
    /// Header ring `nslots` (pools must have the same).
    pub nslots: u32,
    /// Pool stride; ignored for a header ring.
    pub stride_bytes: u32,
    /// Length of the mapped file (`fstat`), checked against `64 + nslots * slot size`.
    pub file_len: u64,
}

impl ExpectedRegion {
    /// Expectations for a header ring.
    pub const fn header_ring(epoch: u64, stream_id: u32, nslots: u32, file_len: u64) -> Self {
        Self {
            region_type: RegionType::HeaderRing,
            epoch,
            stream_id,
            pool_id: 0,
            nslots,
            stride_bytes: 0,
            file_len,
        }
    }

    /// Expectations for a payload pool.
    pub const fn payload_pool(
        epoch: u64,
        stream_id: u32,
        pool_id: u16,
        nslots: u32,
        stride_bytes: u32,
        file_len: u64,
    ) -> Self {
        Self {
            region_type: RegionType::PayloadPool,
            epoch,
            stream_id,
            pool_id,
            nslots,
            stride_bytes,
            file_len,
        }
    }
}

/// Why a superblock was refused; the mapping must then not be used at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuperblockError {
    /// Bytes 0..8 are not [`MAGIC`].
    Magic {
        /// The little-endian `u64` seen.
        seen: u64,
    },
    /// `layout_version` is not [`LAYOUT_VERSION`].
    LayoutVersion {
        /// The version seen.
        seen: u32,
    },
    /// `region_type` is neither header ring nor payload pool.
    RegionType {
        /// The raw value seen.
        seen: i16,
    },
    /// A header ring whose `slot_bytes` is not 256.
    SlotBytes {
        /// The value seen.
        seen: u32,
    },
    /// A pool whose `stride_bytes` is 0 or not a multiple of 64.
    StrideBytes {
        /// The value seen.
        seen: u32,
    },
    /// `nslots` is not a power of two (0 included).
    Nslots {
        /// The value seen.
        seen: u32,
    },
    /// A field differs from the announce or attach response.
    Mismatch {
        /// Which field.
        field: SuperblockField,
        /// The announced value.
        expected: u64,
        /// The superblock's value.
        seen: u64,
    },
    /// The file is shorter than `64 + nslots * slot size`.
    FileTooShort {
        /// Minimum length in bytes.
        expected: u64,
        /// The file's length.
        seen: u64,
    },
}

/// Superblock field compared against the announce or attach response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SuperblockField {
    /// `epoch`.
    Epoch,
    /// `stream_id`.
    StreamId,
    /// `region_type`.
    RegionType,
    /// `pool_id`.
    PoolId,
    /// `nslots`.
    Nslots,
    /// `stride_bytes` (pools only).
    StrideBytes,
}

impl Superblock {
    /// The superblock the C driver writes for a header ring: `slot_bytes` 256, `stride_bytes` 0,
    /// `pool_id` 0, start and activity timestamps both `now_ns`.
    ///
    /// `nslots` should be a power of two; [`validate`](Self::validate) is what enforces it.
    pub fn header_ring(epoch: u64, stream_id: u32, nslots: u32, pid: u64, now_ns: u64) -> Self {
        Self::new(RegionType::HeaderRing, epoch, stream_id, 0, nslots, pid, now_ns)
            .with_sizes(HEADER_SLOT_BYTES, 0)
    }

    /// The superblock the C driver writes for a payload pool: `slot_bytes` [`NULL_U32`], start
    /// and activity timestamps both `now_ns`.
    ///
    /// `stride_bytes` should be a non-zero multiple of 64; [`validate`](Self::validate) is what
    /// enforces it.
    pub fn payload_pool(
        epoch: u64,
        stream_id: u32,
        pool_id: u16,
        nslots: u32,
        stride_bytes: u32,
        pid: u64,
        now_ns: u64,
    ) -> Self {
        Self::new(RegionType::PayloadPool, epoch, stream_id, pool_id, nslots, pid, now_ns)
            .with_sizes(NULL_U32, stride_bytes)
    }

    /// Copies a superblock out of the first 64 bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, Truncated> {
        match Self::read_from_prefix(bytes) {
            Ok((superblock, _rest)) => Ok(superblock),
            Err(_) => Err(Truncated { expected: SUPERBLOCK_BYTES, seen: bytes.len() }),
        }
    }

    /// The region type, if the raw value names one.
    pub fn region(&self) -> Result<RegionType, UnknownValue> {
        RegionType::try_from(self.region_type.get())
    }

    /// Minimum file length for this superblock: `64 + nslots * 256` for a header ring,
    /// `64 + nslots * stride_bytes` for a pool (`u64`, cannot overflow).
    pub fn region_len(&self) -> Result<u64, UnknownValue> {
        Ok(match self.region()? {
            RegionType::HeaderRing => header_ring_len(self.nslots.get()),
            RegionType::PayloadPool => payload_pool_len(self.nslots.get(), self.stride_bytes.get()),
        })
    }

    /// Checks the superblock on its own and against `expected` (conformance 1-5, 8).
    ///
    /// Order: magic, layout version, region type, the type's own size rule (header `slot_bytes`
    /// 256; pool stride non-zero and a multiple of 64), `nslots` a power of two, then epoch,
    /// stream id, region type, pool id, `nslots` and (pools) stride against `expected`, and last
    /// the file length. Per trap T16 a pool's `slot_bytes` and a header ring's `stride_bytes`
    /// are not looked at.
    pub fn validate(&self, expected: &ExpectedRegion) -> Result<(), SuperblockError> {
        if self.magic.get() != MAGIC {
            return Err(SuperblockError::Magic { seen: self.magic.get() });
        }
        if self.layout_version.get() != LAYOUT_VERSION {
            return Err(SuperblockError::LayoutVersion { seen: self.layout_version.get() });
        }
        let region = self
            .region()
            .map_err(|_| SuperblockError::RegionType { seen: self.region_type.get() })?;
        match region {
            RegionType::HeaderRing if self.slot_bytes.get() != HEADER_SLOT_BYTES => {
                return Err(SuperblockError::SlotBytes { seen: self.slot_bytes.get() });
            }
            RegionType::PayloadPool if !is_valid_stride(self.stride_bytes.get()) => {
                return Err(SuperblockError::StrideBytes { seen: self.stride_bytes.get() });
            }
            _ => {}
        }
        if !self.nslots.get().is_power_of_two() {
            return Err(SuperblockError::Nslots { seen: self.nslots.get() });
        }

        check(SuperblockField::Epoch, expected.epoch, self.epoch.get())?;
        check(SuperblockField::StreamId, expected.stream_id.into(), self.stream_id.get().into())?;
        check(SuperblockField::RegionType, region_raw(expected.region_type), region_raw(region))?;
        check(SuperblockField::PoolId, expected.pool_id.into(), self.pool_id.get().into())?;
        check(SuperblockField::Nslots, expected.nslots.into(), self.nslots.get().into())?;
        if region == RegionType::PayloadPool {
            let (want, seen) = (expected.stride_bytes, self.stride_bytes.get());
            check(SuperblockField::StrideBytes, want.into(), seen.into())?;
        }

        let min_len = match region {
            RegionType::HeaderRing => header_ring_len(self.nslots.get()),
            RegionType::PayloadPool => payload_pool_len(self.nslots.get(), self.stride_bytes.get()),
        };
        if expected.file_len < min_len {
            return Err(SuperblockError::FileTooShort {
                expected: min_len,
                seen: expected.file_len,
            });
        }
        Ok(())
    }

    fn new(
        region_type: RegionType,
        epoch: u64,
        stream_id: u32,
        pool_id: u16,
        nslots: u32,
        pid: u64,
        now_ns: u64,
    ) -> Self {
        Self {
            magic: U64::new(MAGIC),
            layout_version: U32::new(LAYOUT_VERSION),
            epoch: U64::new(epoch),
            stream_id: U32::new(stream_id),
            region_type: I16::new(region_type.raw()),
            pool_id: U16::new(pool_id),
            nslots: U32::new(nslots),
            slot_bytes: U32::ZERO,
            stride_bytes: U32::ZERO,
            pid: U64::new(pid),
            start_timestamp_ns: U64::new(now_ns),
            activity_timestamp_ns: U64::new(now_ns),
        }
    }

    fn with_sizes(mut self, slot_bytes: u32, stride_bytes: u32) -> Self {
        self.slot_bytes = U32::new(slot_bytes);
        self.stride_bytes = U32::new(stride_bytes);
        self
    }
}

impl fmt::Display for SuperblockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Magic { seen } => {
                write!(f, "superblock magic expected {MAGIC:#018x}, seen {seen:#018x}")
            }
            Self::LayoutVersion { seen } => {
                write!(f, "superblock layout_version expected {LAYOUT_VERSION}, seen {seen}")
            }
            Self::RegionType { seen } => {
                write!(f, "superblock region_type expected 1 or 2, seen {seen}")
            }
            Self::SlotBytes { seen } => {
                write!(f, "header ring slot_bytes expected {HEADER_SLOT_BYTES}, seen {seen}")
            }
            Self::StrideBytes { seen } => write!(
                f,
                "pool stride_bytes expected a non-zero multiple of {POOL_STRIDE_ALIGN}, seen {seen}"
            ),
            Self::Nslots { seen } => {
                write!(f, "superblock nslots expected a power of two, seen {seen}")
            }
            Self::Mismatch { field, expected, seen } => {
                write!(f, "superblock {field} expected {expected}, seen {seen}")
            }
            Self::FileTooShort { expected, seen } => {
                write!(f, "region file expected at least {expected} bytes, seen {seen}")
            }
        }
    }
}

impl std::error::Error for SuperblockError {}

impl fmt::Display for SuperblockField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Epoch => "epoch",
            Self::StreamId => "stream_id",
            Self::RegionType => "region_type",
            Self::PoolId => "pool_id",
            Self::Nslots => "nslots",
            Self::StrideBytes => "stride_bytes",
        })
    }
}

/// Pool strides: non-zero and a multiple of 64 (no power-of-two rule since v1.2).
fn is_valid_stride(stride_bytes: u32) -> bool {
    stride_bytes != 0 && stride_bytes.is_multiple_of(POOL_STRIDE_ALIGN)
}

fn region_raw(region: RegionType) -> u64 {
    // Both region values are positive (1, 2).
    region.raw().unsigned_abs().into()
}

fn check(field: SuperblockField, expected: u64, seen: u64) -> Result<(), SuperblockError> {
    if expected == seen {
        Ok(())
    } else {
        Err(SuperblockError::Mismatch { field, expected, seen })
    }
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    const EPOCH: u64 = 0x0102_0304_0506_0708;
    const STREAM: u32 = 10_000;
    const NSLOTS: u32 = 64;
    const STRIDE: u32 = 1 << 20;

    fn header() -> Superblock {
        Superblock::header_ring(EPOCH, STREAM, NSLOTS, 4242, 777)
    }

    fn pool() -> Superblock {
        Superblock::payload_pool(EPOCH, STREAM, 1, NSLOTS, STRIDE, 4242, 777)
    }

    fn header_expected() -> ExpectedRegion {
        ExpectedRegion::header_ring(EPOCH, STREAM, NSLOTS, header_ring_len(NSLOTS))
    }

    fn pool_expected() -> ExpectedRegion {
        ExpectedRegion::payload_pool(EPOCH, STREAM, 1, NSLOTS, STRIDE, payload_pool_len(64, STRIDE))
    }

    #[test]
    fn field_offsets_match_spec_table() {
        assert_eq!(offset_of!(Superblock, magic), 0);
        assert_eq!(offset_of!(Superblock, layout_version), 8);
        assert_eq!(offset_of!(Superblock, epoch), 12);
        assert_eq!(offset_of!(Superblock, stream_id), 20);
        assert_eq!(offset_of!(Superblock, region_type), 24);
        assert_eq!(offset_of!(Superblock, pool_id), 26);
        assert_eq!(offset_of!(Superblock, nslots), 28);
        assert_eq!(offset_of!(Superblock, slot_bytes), 32);
        assert_eq!(offset_of!(Superblock, stride_bytes), 36);
        assert_eq!(offset_of!(Superblock, pid), 40);
        assert_eq!(offset_of!(Superblock, start_timestamp_ns), 48);
        assert_eq!(offset_of!(Superblock, activity_timestamp_ns), 56);
        assert_eq!(
            offset_of!(Superblock, activity_timestamp_ns),
            super::super::ACTIVITY_TIMESTAMP_OFFSET
        );
    }

    /// A pool superblock written byte by byte from the spec table, then decoded.
    #[test]
    fn decodes_reference_bytes_built_from_the_table() {
        #[rustfmt::skip]
        let bytes: [u8; 64] = [
            0x31, 0x4D, 0x48, 0x53, 0x4C, 0x50, 0x4F, 0x54, //  0 magic "1MHSLPOT"
            0x01, 0x00, 0x00, 0x00,                         //  8 layout_version 1
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // 12 epoch 0x0102030405060708
            0x10, 0x27, 0x00, 0x00,                         // 20 stream_id 10000
            0x02, 0x00,                                     // 24 region_type PAYLOAD_POOL
            0x07, 0x00,                                     // 26 pool_id 7
            0x40, 0x00, 0x00, 0x00,                         // 28 nslots 64
            0xFF, 0xFF, 0xFF, 0xFF,                         // 32 slot_bytes null (pool)
            0x00, 0x00, 0x10, 0x00,                         // 36 stride_bytes 1 MiB
            0x92, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 40 pid 4242
            0x09, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 48 start_timestamp_ns 777
            0x0A, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 56 activity_timestamp_ns 778
        ];
        let sb = Superblock::decode(&bytes).unwrap();
        assert_eq!(sb.magic.get(), MAGIC);
        assert_eq!(sb.layout_version.get(), 1);
        assert_eq!(sb.epoch.get(), EPOCH);
        assert_eq!(sb.stream_id.get(), 10_000);
        assert_eq!(sb.region(), Ok(RegionType::PayloadPool));
        assert_eq!(sb.pool_id.get(), 7);
        assert_eq!(sb.nslots.get(), 64);
        assert_eq!(sb.slot_bytes.get(), NULL_U32);
        assert_eq!(sb.stride_bytes.get(), 1 << 20);
        assert_eq!(sb.pid.get(), 4242);
        assert_eq!(sb.start_timestamp_ns.get(), 777);
        assert_eq!(sb.activity_timestamp_ns.get(), 778);
        assert_eq!(sb.as_bytes(), &bytes);

        let mut built = Superblock::payload_pool(EPOCH, 10_000, 7, 64, 1 << 20, 4242, 777);
        built.activity_timestamp_ns = U64::new(778);
        assert_eq!(built.as_bytes(), &bytes);
        let expected = ExpectedRegion::payload_pool(
            EPOCH,
            10_000,
            7,
            64,
            1 << 20,
            payload_pool_len(64, 1 << 20),
        );
        assert_eq!(sb.validate(&expected), Ok(()));
    }

    /// Conformance 7 and trap T16: what the C driver writes.
    #[test]
    fn constructors_write_what_the_c_driver_writes() {
        let h = header();
        assert_eq!(&h.as_bytes()[..8], b"1MHSLPOT");
        assert_eq!(h.region(), Ok(RegionType::HeaderRing));
        assert_eq!(h.slot_bytes.get(), 256);
        assert_eq!(h.stride_bytes.get(), 0);
        assert_eq!(h.pool_id.get(), 0);
        assert_eq!(h.pid.get(), 4242);
        assert_eq!(h.start_timestamp_ns, h.activity_timestamp_ns);
        assert_eq!(h.region_len(), Ok(64 + 64 * 256));
        assert_eq!(h.validate(&header_expected()), Ok(()));

        let p = pool();
        assert_eq!(p.region(), Ok(RegionType::PayloadPool));
        assert_eq!(p.slot_bytes.get(), 0xFFFF_FFFF);
        assert_eq!(p.stride_bytes.get(), STRIDE);
        assert_eq!(p.region_len(), Ok(64 + 64 * u64::from(STRIDE)));
        assert_eq!(p.validate(&pool_expected()), Ok(()));
    }

    #[test]
    fn decode_of_short_input_is_an_error() {
        assert_eq!(Superblock::decode(&[0; 63]), Err(Truncated { expected: 64, seen: 63 }));
        assert_eq!(Superblock::decode(&[]), Err(Truncated { expected: 64, seen: 0 }));
        assert!(Superblock::decode(&[0; 100]).is_ok());
    }

    /// Conformance 1: bytes 0..8 must be the LE magic; the ASCII string "TPOLSHM1" is wrong (T1).
    #[test]
    fn conformance_1_bad_magic() {
        let mut sb = header();
        sb.as_mut_bytes()[..8].copy_from_slice(b"TPOLSHM1");
        assert!(matches!(sb.validate(&header_expected()), Err(SuperblockError::Magic { .. })));
        sb.magic = U64::ZERO;
        assert_eq!(sb.validate(&header_expected()), Err(SuperblockError::Magic { seen: 0 }));
    }

    #[test]
    fn layout_version_other_than_1_is_rejected() {
        let mut sb = header();
        sb.layout_version = U32::new(2);
        assert_eq!(
            sb.validate(&header_expected()),
            Err(SuperblockError::LayoutVersion { seen: 2 })
        );
    }

    /// Conformance 2: header slot_bytes must be 256; unknown region type rejected.
    #[test]
    fn conformance_2_slot_bytes_and_region_type() {
        let mut sb = header();
        sb.slot_bytes = U32::new(128);
        assert_eq!(sb.validate(&header_expected()), Err(SuperblockError::SlotBytes { seen: 128 }));
        sb.slot_bytes = U32::new(NULL_U32);
        assert!(sb.validate(&header_expected()).is_err());

        for raw in [0, 3, -1] {
            let mut sb = header();
            sb.region_type = I16::new(raw);
            assert_eq!(
                sb.validate(&header_expected()),
                Err(SuperblockError::RegionType { seen: raw })
            );
            assert!(sb.region_len().is_err());
        }
    }

    /// Conformance 3: each announced field that differs refuses the mapping.
    #[test]
    fn conformance_3_fields_differ_from_announce() {
        type Change = fn(&mut ExpectedRegion);
        let cases: [(SuperblockField, Change); 5] = [
            (SuperblockField::Epoch, |e| e.epoch += 1),
            (SuperblockField::StreamId, |e| e.stream_id += 1),
            (SuperblockField::PoolId, |e| e.pool_id = 2),
            (SuperblockField::Nslots, |e| e.nslots = 128),
            (SuperblockField::StrideBytes, |e| e.stride_bytes = 2 << 20),
        ];
        for (field, change) in cases {
            let mut expected = pool_expected();
            change(&mut expected);
            match pool().validate(&expected) {
                Err(SuperblockError::Mismatch { field: seen_field, .. }) => {
                    assert_eq!(seen_field, field);
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        assert_eq!(
            pool().validate(&header_expected()),
            Err(SuperblockError::Mismatch {
                field: SuperblockField::RegionType,
                expected: 1,
                seen: 2
            })
        );
        // A header ring's stride is not compared (it is 0 in the file, T16).
        let mut expected = header_expected();
        expected.stride_bytes = 4096;
        assert_eq!(header().validate(&expected), Ok(()));
    }

    /// Conformance 4: pool stride 0, below 64 or not a multiple of 64.
    #[test]
    fn conformance_4_pool_stride() {
        for stride in [0, 1, 32, 63, 100, 65, 4097] {
            let mut sb = pool();
            sb.stride_bytes = U32::new(stride);
            assert_eq!(
                sb.validate(&pool_expected()),
                Err(SuperblockError::StrideBytes { seen: stride })
            );
        }
        // Multiples of 64 that are not powers of two are fine since v1.2.
        let sb = Superblock::payload_pool(EPOCH, STREAM, 1, NSLOTS, 192, 1, 1);
        let expected = ExpectedRegion::payload_pool(EPOCH, STREAM, 1, NSLOTS, 192, 64 + 64 * 192);
        assert_eq!(sb.validate(&expected), Ok(()));
    }

    /// Conformance 5: pool nslots differs from the header's; nslots not a power of two.
    #[test]
    fn conformance_5_nslots() {
        let sb = Superblock::payload_pool(EPOCH, STREAM, 1, 32, STRIDE, 1, 1);
        assert_eq!(
            sb.validate(&pool_expected()),
            Err(SuperblockError::Mismatch {
                field: SuperblockField::Nslots,
                expected: 64,
                seen: 32
            })
        );
        for nslots in [0, 3, 48, 1000] {
            let sb = Superblock::header_ring(EPOCH, STREAM, nslots, 1, 1);
            let expected = ExpectedRegion::header_ring(EPOCH, STREAM, nslots, u64::MAX);
            assert_eq!(sb.validate(&expected), Err(SuperblockError::Nslots { seen: nslots }));
        }
    }

    /// Conformance 8: the file must hold every slot, not just the superblock.
    #[test]
    fn conformance_8_file_too_short() {
        let mut expected = header_expected();
        expected.file_len -= 1;
        assert_eq!(
            header().validate(&expected),
            Err(SuperblockError::FileTooShort { expected: 64 + 64 * 256, seen: 64 + 64 * 256 - 1 })
        );
        let mut expected = pool_expected();
        expected.file_len = 64;
        assert!(matches!(pool().validate(&expected), Err(SuperblockError::FileTooShort { .. })));

        // Large pools: the minimum length is computed in u64 (T6).
        let sb = Superblock::payload_pool(EPOCH, STREAM, 1, 1 << 31, 1 << 31, 1, 1);
        let need = 64 + (1u64 << 62);
        let mut expected = ExpectedRegion::payload_pool(EPOCH, STREAM, 1, 1 << 31, 1 << 31, need);
        assert_eq!(sb.validate(&expected), Ok(()));
        expected.file_len = need - 1;
        assert_eq!(
            sb.validate(&expected),
            Err(SuperblockError::FileTooShort { expected: need, seen: need - 1 })
        );
    }

    #[test]
    fn display_is_lowercase_and_says_expected_and_seen() {
        let e = SuperblockError::Mismatch { field: SuperblockField::Epoch, expected: 5, seen: 6 };
        assert_eq!(e.to_string(), "superblock epoch expected 5, seen 6");
        let e = SuperblockError::Magic { seen: 0 };
        assert_eq!(
            e.to_string(),
            "superblock magic expected 0x544f504c53484d31, seen 0x0000000000000000"
        );
        let e = SuperblockError::FileTooShort { expected: 100, seen: 64 };
        assert_eq!(e.to_string(), "region file expected at least 100 bytes, seen 64");
    }

    proptest::proptest! {
        #[test]
        fn decode_and_validate_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            epoch: u64,
            stream_id: u32,
            pool_id: u16,
            nslots: u32,
            stride: u32,
            len: u64,
            pool: bool,
        ) {
            if let Ok(sb) = Superblock::decode(&bytes) {
                let expected = if pool {
                    ExpectedRegion::payload_pool(epoch, stream_id, pool_id, nslots, stride, len)
                } else {
                    ExpectedRegion::header_ring(epoch, stream_id, nslots, len)
                };
                let _ = sb.validate(&expected);
                let _ = sb.region_len();
            } else {
                proptest::prop_assert!(bytes.len() < SUPERBLOCK_BYTES);
            }
        }

        #[test]
        fn built_superblocks_validate(
            epoch: u64,
            stream_id: u32,
            pool_id: u16,
            log2_nslots in 0u32..32,
            stride_units in 1u32..(u32::MAX / 64),
        ) {
            let nslots = 1u32 << log2_nslots;
            let stride = stride_units * 64;
            let sb = Superblock::header_ring(epoch, stream_id, nslots, 1, 2);
            let back = Superblock::decode(sb.as_bytes()).unwrap();
            let len = header_ring_len(nslots);
            proptest::prop_assert_eq!(
                back.validate(&ExpectedRegion::header_ring(epoch, stream_id, nslots, len)),
                Ok(())
            );
            let sb = Superblock::payload_pool(epoch, stream_id, pool_id, nslots, stride, 1, 2);
            let back = Superblock::decode(sb.as_bytes()).unwrap();
            let len = payload_pool_len(nslots, stride);
            let expected =
                ExpectedRegion::payload_pool(epoch, stream_id, pool_id, nslots, stride, len);
            proptest::prop_assert_eq!(back.validate(&expected), Ok(()));
        }
    }
}
