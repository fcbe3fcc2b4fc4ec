//! The driver's and supervisor's messages as plain Rust values, field for field as in the spec's
//! §5.2 (schema 901), §5.6 (ShmPoolAnnounce) and §6 (ConsumerHello, ConsumerConfig,
//! QosConsumer). Nullable fields are `Option`s; the wire layer maps SBE/protobuf nulls to `None`.
//!
//! Inbound messages keep enum fields as the raw `u8` that arrived, because the driver answers an
//! unknown value with a response code ("invalid role"), which a decoder that refused the
//! message could not. A wire layer with wider integers (protobuf's i32) maps a value above 255 to
//! 254, which no decoder here accepts. Outbound messages carry typed enums.

use std::fmt;

/// A value that is none of an enum's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid {name}: expected one of {expected}, got {value}")]
pub struct UnknownValue {
    /// The enum's name.
    pub name: &'static str,
    /// The accepted values.
    pub expected: &'static str,
    /// The value seen.
    pub value: i64,
}

macro_rules! wire_enum {
    (
        $(#[$doc:meta])* $name:ident : $repr:ty, $label:literal, $expected:literal {
            $($(#[$vdoc:meta])* $variant:ident = $value:literal,)*
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name {
            $($(#[$vdoc])* $variant = $value,)*
        }

        impl $name {
            /// Decodes a wire value; `None` for a value the spec does not define.
            pub const fn from_wire(value: $repr) -> Option<Self> {
                match value {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// The wire value.
            pub const fn to_wire(self) -> $repr {
                self as $repr
            }
        }

        impl TryFrom<$repr> for $name {
            type Error = UnknownValue;

            fn try_from(value: $repr) -> Result<Self, UnknownValue> {
                Self::from_wire(value).ok_or(UnknownValue {
                    name: $label,
                    expected: $expected,
                    value: value as i64,
                })
            }
        }
    };
}

wire_enum! {
    /// A lease's role (driver schema `Role`).
    Role: u8, "role", "1 (PRODUCER), 2 (CONSUMER)" {
        /// Writes the stream; at most one per stream.
        Producer = 1,
        /// Reads the stream; any number.
        Consumer = 2,
    }
}

wire_enum! {
    /// What an attach to an unknown stream may do (`PublishMode`).
    PublishMode: u8, "publish mode", "1 (REQUIRE_EXISTING), 2 (EXISTING_OR_CREATE)" {
        /// Only provisioned streams.
        RequireExisting = 1,
        /// Create the stream when dynamic streams are allowed (also what null means).
        ExistingOrCreate = 2,
    }
}

wire_enum! {
    /// The page kind an attach asks for (`HugepagesPolicy`).
    HugepagesPolicy: u8, "hugepages policy", "0 (UNSPECIFIED), 1 (STANDARD), 2 (HUGEPAGES)" {
        /// The driver's `shm.require_hugepages` decides.
        Unspecified = 0,
        /// Standard pages; refused when the base directory is hugetlbfs.
        Standard = 1,
        /// Hugepages; refused when the base directory is not hugetlbfs.
        Hugepages = 2,
    }
}

wire_enum! {
    /// Why a lease ended (`LeaseRevokeReason`).
    RevokeReason: u8, "revoke reason", "1 (DETACHED), 2 (EXPIRED), 3 (REVOKED)" {
        /// The client detached.
        Detached = 1,
        /// No keepalive for interval × grace.
        Expired = 2,
        /// The driver (an administrator) revoked it.
        Revoked = 3,
    }
}

wire_enum! {
    /// Why the driver is going away (`ShutdownReason`).
    ShutdownReason: u8, "shutdown reason", "0 (NORMAL), 1 (ADMIN), 2 (ERROR)" {
        /// Orderly stop.
        Normal = 0,
        /// An administrator's request.
        Admin = 1,
        /// A fatal error.
        Error = 2,
    }
}

wire_enum! {
    /// The outcome of a request (`ResponseCode`).
    ResponseCode: i32, "response code", "0 (OK), 1 (UNSUPPORTED), 2 (INVALID_PARAMS), 3 (REJECTED), 4 (INTERNAL_ERROR)" {
        /// Granted.
        Ok = 0,
        /// Not supported by this driver.
        Unsupported = 1,
        /// The request itself is malformed.
        InvalidParams = 2,
        /// Well-formed but refused by policy or state.
        Rejected = 3,
        /// The driver failed (SHM creation, ...).
        InternalError = 4,
    }
}

wire_enum! {
    /// The clock of a timestamp (`ClockDomain`).
    ClockDomain: u8, "clock domain", "1 (MONOTONIC), 2 (REALTIME_SYNCED)" {
        /// CLOCK_MONOTONIC of the driver's host.
        Monotonic = 1,
        /// Synchronised realtime.
        RealtimeSynced = 2,
    }
}

wire_enum! {
    /// How a consumer receives frames (`Mode`).
    Mode: u8, "mode", "1 (STREAM), 2 (RATE_LIMITED)" {
        /// Every frame.
        Stream = 1,
        /// At most max_rate_hz.
        RateLimited = 2,
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResponseCode::Ok => "OK",
            ResponseCode::Unsupported => "UNSUPPORTED",
            ResponseCode::InvalidParams => "INVALID_PARAMS",
            ResponseCode::Rejected => "REJECTED",
            ResponseCode::InternalError => "INTERNAL_ERROR",
        })
    }
}

/// The region layout version this driver creates (`TP_LAYOUT_VERSION`).
pub const LAYOUT_VERSION: u32 = 1;
/// Bytes per header-ring slot.
pub const HEADER_SLOT_BYTES: u16 = 256;
/// Longest `errorMessage` a response carries, in bytes.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;
/// The u8 enum null of SBE (`publishMode`, ...).
pub const NULL_U8: u8 = u8::MAX;
/// The u32 null of SBE (`desiredNodeId`, `nodeId`, ...).
pub const NULL_U32: u32 = u32::MAX;

/// ShmAttachRequest (tid 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// Echoed in the response.
    pub correlation_id: i64,
    /// The stream; 0 asks for a dynamic stream ID.
    pub stream_id: u32,
    /// Non-zero; one lease per client ID, driver-wide.
    pub client_id: u32,
    /// Raw [`Role`].
    pub role: u8,
    /// 0 (the driver's) or 1.
    pub expected_layout_version: u32,
    /// Raw [`PublishMode`]; `None` (or 255) means EXISTING_OR_CREATE.
    pub publish_mode: Option<u8>,
    /// Raw [`HugepagesPolicy`].
    pub require_hugepages: u8,
    /// A node ID the client wants; `None` (or 0xFFFFFFFF) for any. 0 is a real request (T15).
    pub desired_node_id: Option<u32>,
}

/// One payload pool of an attach response or announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadPool {
    /// The pool's ID.
    pub pool_id: u16,
    /// Slots in the pool (= header nslots).
    pub pool_nslots: u32,
    /// Bytes per slot.
    pub stride_bytes: u32,
    /// `shm:file?path=...|require_hugepages=...`.
    pub region_uri: String,
}

/// ShmAttachResponse (tid 2). On OK every `Option` is `Some`; otherwise all are `None`, there are
/// no pools and the URI is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachResponse {
    /// The request's.
    pub correlation_id: i64,
    /// The outcome.
    pub code: ResponseCode,
    /// The lease.
    pub lease_id: Option<u64>,
    /// CLOCK_MONOTONIC ns after which the lease is gone without a keepalive.
    pub lease_expiry_timestamp_ns: Option<u64>,
    /// The stream (the allocated ID for a dynamic attach).
    pub stream_id: Option<u32>,
    /// The stream's current epoch.
    pub epoch: Option<u64>,
    /// [`LAYOUT_VERSION`].
    pub layout_version: Option<u32>,
    /// Header-ring slots.
    pub header_nslots: Option<u32>,
    /// [`HEADER_SLOT_BYTES`].
    pub header_slot_bytes: Option<u16>,
    /// The lease's node ID.
    pub node_id: Option<u32>,
    /// The payload pools, in profile order.
    pub payload_pools: Vec<PayloadPool>,
    /// The header ring's URI.
    pub header_region_uri: String,
    /// Empty on OK; at most [`MAX_ERROR_MESSAGE_BYTES`].
    pub error_message: String,
}

/// ShmDetachRequest (tid 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachRequest {
    /// Echoed in the response.
    pub correlation_id: i64,
    /// The lease to end.
    pub lease_id: u64,
    /// Must match the lease's.
    pub stream_id: u32,
    /// Must match the lease's.
    pub client_id: u32,
    /// Raw [`Role`]; must match the lease's.
    pub role: u8,
}

/// ShmDetachResponse (tid 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachResponse {
    /// The request's.
    pub correlation_id: i64,
    /// The outcome.
    pub code: ResponseCode,
    /// Empty on OK.
    pub error_message: String,
}

/// ShmLeaseKeepalive (tid 5). One-way: never answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepalive {
    /// The lease to extend.
    pub lease_id: u64,
    /// Must match the lease's.
    pub stream_id: u32,
    /// Must match the lease's.
    pub client_id: u32,
    /// Raw [`Role`]; must match the lease's.
    pub role: u8,
    /// The client's clock, informational.
    pub client_timestamp_ns: u64,
}

/// ShmDriverShutdown (tid 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverShutdown {
    /// CLOCK_MONOTONIC ns.
    pub timestamp_ns: u64,
    /// Why.
    pub reason: ShutdownReason,
    /// Detail, may be empty.
    pub error_message: String,
}

/// ShmLeaseRevoked (tid 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRevoked {
    /// CLOCK_MONOTONIC ns.
    pub timestamp_ns: u64,
    /// The lease that ended.
    pub lease_id: u64,
    /// Its stream.
    pub stream_id: u32,
    /// Its client.
    pub client_id: u32,
    /// Its role.
    pub role: Role,
    /// Why it ended.
    pub reason: RevokeReason,
    /// Detail ("lease expired", ...).
    pub error_message: String,
}

/// ShmPoolAnnounce (schema 900, tid 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The stream.
    pub stream_id: u32,
    /// The attached producer's client ID, 0 if none.
    pub producer_id: u32,
    /// The current epoch (never 0).
    pub epoch: u64,
    /// When the announce was made.
    pub announce_timestamp_ns: u64,
    /// Always [`ClockDomain::Monotonic`].
    pub announce_clock_domain: ClockDomain,
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// Header-ring slots.
    pub header_nslots: u32,
    /// [`HEADER_SLOT_BYTES`].
    pub header_slot_bytes: u16,
    /// The payload pools, in profile order.
    pub payload_pools: Vec<PayloadPool>,
    /// The header ring's URI.
    pub header_region_uri: String,
}

/// ConsumerHello (schema 900, tid 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerHello {
    /// The stream consumed.
    pub stream_id: u32,
    /// The consumer's ID (the registry key).
    pub consumer_id: u32,
    /// Whether it can map SHM.
    pub supports_shm: bool,
    /// Whether it wants FrameProgress.
    pub supports_progress: bool,
    /// Raw [`Mode`].
    pub mode: u8,
    /// 0 = unlimited.
    pub max_rate_hz: u32,
    /// The layout it expects.
    pub expected_layout_version: u32,
    /// Progress hint, optional.
    pub progress_interval_us: Option<u32>,
    /// Progress hint, optional.
    pub progress_bytes_delta: Option<u32>,
    /// Progress hint, optional.
    pub progress_major_delta_units: Option<u32>,
    /// Requested per-consumer descriptor stream ID; 0 = none.
    pub descriptor_stream_id: u32,
    /// Requested per-consumer control stream ID; 0 = none.
    pub control_stream_id: u32,
    /// Requested descriptor channel; "" = none.
    pub descriptor_channel: String,
    /// Requested control channel; "" = none.
    pub control_channel: String,
}

/// ConsumerConfig (schema 900, tid 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// The hello's.
    pub stream_id: u32,
    /// The hello's.
    pub consumer_id: u32,
    /// Whether the consumer should map SHM.
    pub use_shm: bool,
    /// The mode to use.
    pub mode: Mode,
    /// Assigned descriptor stream ID; 0 = declined.
    pub descriptor_stream_id: u32,
    /// Assigned control stream ID; 0 = declined.
    pub control_stream_id: u32,
    /// Where to get payloads without SHM; may be empty.
    pub payload_fallback_uri: String,
    /// Assigned descriptor channel; "" = declined.
    pub descriptor_channel: String,
    /// Assigned control channel; "" = declined.
    pub control_channel: String,
}

/// QosConsumer (schema 900, tid 5): a consumer's ~1 Hz health report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QosConsumer {
    /// The stream consumed.
    pub stream_id: u32,
    /// The consumer's ID.
    pub consumer_id: u32,
    /// The epoch it has mapped.
    pub epoch: u64,
    /// The last seq it saw.
    pub last_seq_seen: u64,
    /// Frames lost to seq gaps.
    pub drops_gap: u64,
    /// Frames lost to unstable slots.
    pub drops_late: u64,
    /// Raw [`Mode`].
    pub mode: u8,
}

/// `message` cut to at most [`MAX_ERROR_MESSAGE_BYTES`], on a character boundary.
pub(crate) fn bounded_message(message: &str) -> String {
    if message.len() <= MAX_ERROR_MESSAGE_BYTES {
        return message.to_owned();
    }
    let mut end = MAX_ERROR_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}
