//! Wire enums of the tensor-pool schema. Values are frozen for v1.x; an unknown value rejects the
//! frame or message, so `TryFrom` is the only way in and the error gives the raw value back.

use core::fmt;

/// A raw value that names no variant of a wire enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownValue {
    /// The enum's spec name, e.g. `"dtype"`.
    pub kind: &'static str,
    /// The raw value seen (every wire enum fits in `i32`).
    pub value: i32,
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} value {}", self.kind, self.value)
    }
}

impl std::error::Error for UnknownValue {}

/// Declares a wire enum with its frozen values, `raw()`, `ALL`, `From<Enum> for raw` and
/// `TryFrom<raw>` returning [`UnknownValue`].
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $raw:ident as $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr($raw)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every variant, in wire-value order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value on the wire.
            pub const fn raw(self) -> $raw {
                self as $raw
            }
        }

        impl From<$name> for $raw {
            fn from(value: $name) -> $raw {
                value.raw()
            }
        }

        impl TryFrom<$raw> for $name {
            type Error = UnknownValue;

            fn try_from(raw: $raw) -> Result<Self, UnknownValue> {
                match raw {
                    $( $value => Ok($name::$variant), )+
                    _ => Err(UnknownValue { kind: $kind, value: i32::from(raw) }),
                }
            }
        }
    };
}

wire_enum! {
    /// Element type of a tensor (`i16`). `UNKNOWN` (0) and the unused value 12 are not variants:
    /// a frame carrying them is dropped.
    pub enum Dtype: i16 as "dtype" {
        /// `UINT8`.
        Uint8 = 1,
        /// `INT8`.
        Int8 = 2,
        /// `UINT16`.
        Uint16 = 3,
        /// `INT16`.
        Int16 = 4,
        /// `UINT32`.
        Uint32 = 5,
        /// `INT32`.
        Int32 = 6,
        /// `UINT64`.
        Uint64 = 7,
        /// `INT64`.
        Int64 = 8,
        /// `FLOAT32`.
        Float32 = 9,
        /// `FLOAT64`.
        Float64 = 10,
        /// `BOOLEAN`, one byte per element.
        Boolean = 11,
        /// `BYTES`, opaque bytes.
        Bytes = 13,
        /// `BIT`; the reference implementation counts one byte per element.
        Bit = 14,
    }
}

impl Dtype {
    /// Bytes per element, as the reference implementation uses them for stride inference.
    pub const fn element_size(self) -> u32 {
        match self {
            Dtype::Uint8 | Dtype::Int8 | Dtype::Boolean | Dtype::Bytes | Dtype::Bit => 1,
            Dtype::Uint16 | Dtype::Int16 => 2,
            Dtype::Uint32 | Dtype::Int32 | Dtype::Float32 => 4,
            Dtype::Uint64 | Dtype::Int64 | Dtype::Float64 => 8,
        }
    }
}

wire_enum! {
    /// Memory order of a tensor's dimensions (`i16`). `UNKNOWN` (0) is rejected, as in C.
    pub enum MajorOrder: i16 as "major_order" {
        /// `ROW`: the last dimension is innermost.
        Row = 1,
        /// `COLUMN`: the first dimension is innermost.
        Column = 2,
    }
}

wire_enum! {
    /// Unit of partial-frame progress (`u8`).
    pub enum ProgressUnit: u8 as "progress_unit" {
        /// `NONE`: no progress reporting; `progress_stride_bytes` is ignored (may be 0, trap T16).
        None = 0,
        /// `ROWS`: progress in rows; `progress_stride_bytes` must equal `strides[0]`.
        Rows = 1,
        /// `COLUMNS`: progress in columns; needs `ndims >= 2` and `strides[1]`.
        Columns = 2,
    }
}

wire_enum! {
    /// What a shared-memory file holds (`i16`, superblock `region_type`).
    pub enum RegionType: i16 as "region_type" {
        /// `HEADER_RING`: superblock + `nslots` 256-byte slots.
        HeaderRing = 1,
        /// `PAYLOAD_POOL`: superblock + `nslots` slots of `stride_bytes`.
        PayloadPool = 2,
    }
}

wire_enum! {
    /// Clock a timestamp is taken from (`u8`).
    pub enum ClockDomain: u8 as "clock_domain" {
        /// `MONOTONIC`: `CLOCK_MONOTONIC` nanoseconds of the host.
        Monotonic = 1,
        /// `REALTIME_SYNCED`: synchronised realtime nanoseconds.
        RealtimeSynced = 2,
    }
}

wire_enum! {
    /// Consumer delivery mode (`u8`).
    pub enum Mode: u8 as "mode" {
        /// `STREAM`: every frame.
        Stream = 1,
        /// `RATE_LIMITED`: at most `max_rate_hz`.
        RateLimited = 2,
    }
}

wire_enum! {
    /// State carried by a FrameProgress message (`u8`).
    pub enum FrameProgressState: u8 as "frame_progress_state" {
        /// `UNKNOWN`.
        Unknown = 0,
        /// `STARTED`: the producer began filling the payload.
        Started = 1,
        /// `PROGRESS`: some bytes are filled.
        Progress = 2,
        /// `COMPLETE`: the payload is complete.
        Complete = 3,
    }
}

wire_enum! {
    /// Result code of a control response (`i32`).
    pub enum ResponseCode: i32 as "response_code" {
        /// `OK`.
        Ok = 0,
        /// `UNSUPPORTED`.
        Unsupported = 1,
        /// `INVALID_PARAMS`.
        InvalidParams = 2,
        /// `REJECTED`.
        Rejected = 3,
        /// `INTERNAL_ERROR`.
        InternalError = 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_values_are_frozen() {
        let expected: [(Dtype, i16, u32); 13] = [
            (Dtype::Uint8, 1, 1),
            (Dtype::Int8, 2, 1),
            (Dtype::Uint16, 3, 2),
            (Dtype::Int16, 4, 2),
            (Dtype::Uint32, 5, 4),
            (Dtype::Int32, 6, 4),
            (Dtype::Uint64, 7, 8),
            (Dtype::Int64, 8, 8),
            (Dtype::Float32, 9, 4),
            (Dtype::Float64, 10, 8),
            (Dtype::Boolean, 11, 1),
            (Dtype::Bytes, 13, 1),
            (Dtype::Bit, 14, 1),
        ];
        assert_eq!(Dtype::ALL.len(), expected.len());
        for (dtype, raw, size) in expected {
            assert_eq!(dtype.raw(), raw);
            assert_eq!(i16::from(dtype), raw);
            assert_eq!(Dtype::try_from(raw), Ok(dtype));
            assert_eq!(dtype.element_size(), size, "{dtype:?}");
        }
    }

    #[test]
    fn dtype_rejects_unknown_unused_and_out_of_range() {
        for raw in [0, 12, 15, 999, -1, i16::MIN, i16::MAX] {
            assert_eq!(
                Dtype::try_from(raw),
                Err(UnknownValue { kind: "dtype", value: raw.into() })
            );
        }
    }

    #[test]
    fn small_enum_values_are_frozen() {
        assert_eq!(MajorOrder::Row.raw(), 1);
        assert_eq!(MajorOrder::Column.raw(), 2);
        assert!(MajorOrder::try_from(0).is_err());
        assert!(MajorOrder::try_from(3).is_err());

        assert_eq!(ProgressUnit::None.raw(), 0);
        assert_eq!(ProgressUnit::Rows.raw(), 1);
        assert_eq!(ProgressUnit::Columns.raw(), 2);
        assert!(ProgressUnit::try_from(3).is_err());
        assert!(ProgressUnit::try_from(255).is_err());

        assert_eq!(RegionType::HeaderRing.raw(), 1);
        assert_eq!(RegionType::PayloadPool.raw(), 2);
        assert!(RegionType::try_from(0).is_err());
        assert!(RegionType::try_from(3).is_err());

        assert_eq!(ClockDomain::Monotonic.raw(), 1);
        assert_eq!(ClockDomain::RealtimeSynced.raw(), 2);
        assert!(ClockDomain::try_from(0).is_err());

        assert_eq!(Mode::Stream.raw(), 1);
        assert_eq!(Mode::RateLimited.raw(), 2);
        assert!(Mode::try_from(0).is_err());

        let states = [
            FrameProgressState::Unknown,
            FrameProgressState::Started,
            FrameProgressState::Progress,
            FrameProgressState::Complete,
        ];
        for (raw, state) in (0u8..).zip(states) {
            assert_eq!(FrameProgressState::try_from(raw), Ok(state));
        }
        assert!(FrameProgressState::try_from(4).is_err());

        let codes = [
            ResponseCode::Ok,
            ResponseCode::Unsupported,
            ResponseCode::InvalidParams,
            ResponseCode::Rejected,
            ResponseCode::InternalError,
        ];
        for (raw, code) in (0i32..).zip(codes) {
            assert_eq!(i32::from(code), raw);
            assert_eq!(ResponseCode::try_from(raw), Ok(code));
        }
        assert!(ResponseCode::try_from(5).is_err());
        assert!(ResponseCode::try_from(-1).is_err());
    }

    #[test]
    fn every_variant_round_trips() {
        for &v in MajorOrder::ALL {
            assert_eq!(MajorOrder::try_from(v.raw()), Ok(v));
        }
        for &v in ProgressUnit::ALL {
            assert_eq!(ProgressUnit::try_from(v.raw()), Ok(v));
        }
        for &v in RegionType::ALL {
            assert_eq!(RegionType::try_from(v.raw()), Ok(v));
        }
        for &v in ClockDomain::ALL {
            assert_eq!(ClockDomain::try_from(v.raw()), Ok(v));
        }
        for &v in Mode::ALL {
            assert_eq!(Mode::try_from(v.raw()), Ok(v));
        }
    }

    #[test]
    fn unknown_value_display_names_the_enum() {
        let e = Dtype::try_from(12).unwrap_err();
        assert_eq!(e.to_string(), "unknown dtype value 12");
        let e = ProgressUnit::try_from(7).unwrap_err();
        assert_eq!(e.to_string(), "unknown progress_unit value 7");
    }
}
