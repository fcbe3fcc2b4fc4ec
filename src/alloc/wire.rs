//! Every byte of the alloc protocol that crosses a process boundary: one definition each, with
//! size and offset tests (`specs/alloc-protocol.md`).
//!
//! - [`MsgType`]: the one enum of message codes for every format;
//! - [`EventBody`]: the native event body after the canonical header (`msg_id` = the client's
//!   sequence number);
//! - [`RingRecord`]: one record of a client's shared-memory ring (sequence, type, body);
//! - [`V4Record`] (128 B), [`V5Record`] (144 B), [`CompactRecord`] (48 B): the legacy raw
//!   records existing clients send, with the reply fields the original clients read.
//!
//! Fields are zerocopy byte-order types (alignment 1, no padding surprises): a record is decoded
//! from a private copy of the bytes, and every bit pattern is a valid record, so validation
//! ([`Event::from_native`], the legacy parser) is where a value is judged.

use zerocopy::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The most devices a ledger tracks (ids 0..8), as the original server.
pub const MAX_DEVICES: usize = 8;
/// The largest size an ALLOC may report: 100 GiB (the original's bound).
pub const MAX_ALLOC_SIZE: u64 = 100 << 30;

/// Message codes, shared by the native and legacy forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MsgType {
    /// A buffer was allocated.
    Alloc = 1,
    /// A buffer was freed (its size and type are the ledger's, never the message's).
    Free = 2,
    /// Usage of one device: answered with [`Response`](MsgType::Response).
    Query = 3,
    /// The answer to a query.
    Response = 4,
    /// Report what is still allocated (legacy: to the log, no reply; native: a report body).
    DumpRemaining = 5,
    /// Device facts (device -1: how many devices).
    DeviceInfoQuery = 6,
    /// The answer to a device-info query.
    DeviceInfoResponse = 7,
    /// A circular buffer was allocated.
    CbAlloc = 8,
    /// A circular buffer was freed.
    CbFree = 9,
    /// A kernel was loaded (`buffer_type` = kernel kind: 0 application, 1 fabric, 2 dispatch).
    KernelLoad = 10,
    /// A kernel was unloaded.
    KernelUnload = 11,
    /// Report the kernel ledger (legacy: to the log, no reply; native: a report body).
    DumpKernels = 12,
    /// Native only: usage per process (protobuf `ProcessUsageReply`).
    ProcessQuery = 13,
    /// Native only: subscribe to usage changes (`UsagePush` pushes follow).
    Subscribe = 14,
    /// Native only: a usage change (daemon -> subscriber).
    UsagePush = 15,
    /// Native only: the first message of a client: its name and first sequence number.
    Hello = 16,
    /// Native only: ask for a shared-memory record ring (the reply carries its memfd).
    RegisterRing = 17,
    /// Native only: reports the client dropped since the last such message (body: u64 count).
    Dropped = 18,
    /// Native only: "a ring has records" (empty body), sent only when the daemon's lane is
    /// parked (see `crate::channel`).
    Doorbell = 19,
    /// Native only: read and reset the latency probe (protobuf `LatencyReply`; refused when
    /// `[alloc] latency_probe` is off).
    LatencyReport = 20,
}

impl MsgType {
    /// The highest code a legacy record may carry (the original server's 1..=12).
    pub const LEGACY_MAX: u16 = 12;

    /// The code for `v`, if it is one.
    pub fn from_code(v: u16) -> Option<Self> {
        use MsgType::*;
        Some(match v {
            1 => Alloc,
            2 => Free,
            3 => Query,
            4 => Response,
            5 => DumpRemaining,
            6 => DeviceInfoQuery,
            7 => DeviceInfoResponse,
            8 => CbAlloc,
            9 => CbFree,
            10 => KernelLoad,
            11 => KernelUnload,
            12 => DumpKernels,
            13 => ProcessQuery,
            14 => Subscribe,
            15 => UsagePush,
            16 => Hello,
            17 => RegisterRing,
            18 => Dropped,
            19 => Doorbell,
            20 => LatencyReport,
            _ => return None,
        })
    }

    /// The code on the wire.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// Whether this is one of the six ledger events (ALLOC..KERNEL_UNLOAD).
    pub const fn is_event(self) -> bool {
        matches!(
            self,
            MsgType::Alloc
                | MsgType::Free
                | MsgType::CbAlloc
                | MsgType::CbFree
                | MsgType::KernelLoad
                | MsgType::KernelUnload
        )
    }

    /// Whether this event makes a ledger entry (ALLOC, CB_ALLOC, KERNEL_LOAD).
    pub const fn allocates(self) -> bool {
        matches!(self, MsgType::Alloc | MsgType::CbAlloc | MsgType::KernelLoad)
    }

    /// Its name in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            MsgType::Alloc => "alloc",
            MsgType::Free => "free",
            MsgType::Query => "query",
            MsgType::Response => "response",
            MsgType::DumpRemaining => "dump_remaining",
            MsgType::DeviceInfoQuery => "device_info_query",
            MsgType::DeviceInfoResponse => "device_info_response",
            MsgType::CbAlloc => "cb_alloc",
            MsgType::CbFree => "cb_free",
            MsgType::KernelLoad => "kernel_load",
            MsgType::KernelUnload => "kernel_unload",
            MsgType::DumpKernels => "dump_kernels",
            MsgType::ProcessQuery => "process_query",
            MsgType::Subscribe => "subscribe",
            MsgType::UsagePush => "usage_push",
            MsgType::Hello => "hello",
            MsgType::RegisterRing => "register_ring",
            MsgType::Dropped => "dropped",
            MsgType::Doorbell => "doorbell",
            MsgType::LatencyReport => "latency_report",
        }
    }
}

/// Buffer types, in TT-Metal's `BufferType` order. The ledger keeps all five apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum BufferType {
    /// Device DRAM.
    Dram = 0,
    /// Worker L1.
    L1 = 1,
    /// Host system memory (the original folded it into L1_SMALL).
    SystemMemory = 2,
    /// The small-L1 region.
    L1Small = 3,
    /// Trace buffers.
    Trace = 4,
}

impl BufferType {
    /// Every type, in code order.
    pub const ALL: [BufferType; 5] = [
        BufferType::Dram,
        BufferType::L1,
        BufferType::SystemMemory,
        BufferType::L1Small,
        BufferType::Trace,
    ];

    /// The type for code `v`.
    pub fn from_code(v: u8) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    /// Its name, as the monitor and logs show it.
    pub const fn name(self) -> &'static str {
        match self {
            BufferType::Dram => "DRAM",
            BufferType::L1 => "L1",
            BufferType::SystemMemory => "SYSTEM_MEMORY",
            BufferType::L1Small => "L1_SMALL",
            BufferType::Trace => "TRACE",
        }
    }
}

/// Kernel kinds (the `buffer_type` byte of KERNEL_LOAD).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KernelKind {
    /// An application kernel.
    Application = 0,
    /// A fabric kernel (persistent, ~56 KB).
    Fabric = 1,
    /// A dispatch kernel (persistent, ~46 KB).
    Dispatch = 2,
}

impl KernelKind {
    /// Every kind, in code order.
    pub const ALL: [KernelKind; 3] =
        [KernelKind::Application, KernelKind::Fabric, KernelKind::Dispatch];

    /// The kind for code `v`.
    pub fn from_code(v: u8) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    /// Its name in logs.
    pub const fn name(self) -> &'static str {
        match self {
            KernelKind::Application => "Application",
            KernelKind::Fabric => "Fabric",
            KernelKind::Dispatch => "Dispatch",
        }
    }
}

/// The native event body (after a canonical header whose `msg_type` is one of the six events
/// and whose `msg_id` is the client's sequence number). 32 bytes, little-endian.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `device_id` (i32) |
/// | 4 | 1 | `buffer_type` (buffer type, or kernel kind for kernels) |
/// | 5 | 3 | `pad` (zero) |
/// | 8 | 8 | `buffer_id` (device address, CB id or kernel id) |
/// | 16 | 8 | `size` (bytes; ignored for FREE) |
/// | 24 | 8 | `timestamp_ns` (the client's clock; the daemon ignores it) |
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct EventBody {
    /// Device id.
    pub device_id: I32,
    /// Buffer type or kernel kind.
    pub buffer_type: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// Device address, CB id or kernel id.
    pub buffer_id: U64,
    /// Size in bytes.
    pub size: U64,
    /// The client's timestamp (ns).
    pub timestamp_ns: U64,
}

/// The size of [`EventBody`].
pub const EVENT_BODY_LEN: usize = 32;

/// One record of a client's shared-memory ring: the sequence number, the message type and the
/// event body. 48 bytes (a multiple of 8: the ring copies whole words).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | `seq` |
/// | 8 | 2 | `msg_type` (one of the six events; anything else is an invalid record) |
/// | 10 | 6 | `pad` (zero) |
/// | 16 | 32 | `body` ([`EventBody`]) |
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct RingRecord {
    /// The client's sequence number.
    pub seq: U64,
    /// The event's [`MsgType`] code.
    pub msg_type: U16,
    /// Zero.
    pub pad: [u8; 6],
    /// The event.
    pub body: EventBody,
}

/// The size of [`RingRecord`].
pub const RING_RECORD_LEN: usize = 48;

/// A ledger event, decoded and validated (the form every path hands the ledger).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// One of the six events.
    pub kind: MsgType,
    /// Device id (0..[`MAX_DEVICES`]).
    pub device: u8,
    /// Buffer type or kernel kind (checked for ALLOC and KERNEL_LOAD).
    pub buffer_type: u8,
    /// Device address, CB id or kernel id.
    pub buffer_id: u64,
    /// Bytes (ignored for FREE; CB_FREE and KERNEL_UNLOAD use the stored size too).
    pub size: u64,
}

/// Why an event was refused before reaching the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not one of the six event codes.
    #[error("invalid message type {0}")]
    Type(u16),
    /// Device id outside 0..8.
    #[error("invalid device_id {0}")]
    Device(i64),
    /// Size 0 or over 100 GiB in an ALLOC, CB_ALLOC or KERNEL_LOAD.
    #[error("invalid size {0}")]
    Size(u64),
    /// Buffer type over 4 (ALLOC) or kernel kind over 2 (KERNEL_LOAD).
    #[error("invalid buffer_type {0}")]
    BufferType(u8),
}

impl Event {
    /// Validates an event of code `msg_type` with `body` (native socket or ring record).
    pub fn from_native(msg_type: u16, body: &EventBody) -> Result<Event, EventError> {
        let kind = MsgType::from_code(msg_type)
            .filter(|k| k.is_event())
            .ok_or(EventError::Type(msg_type))?;
        Event::validate(
            kind,
            body.device_id.get() as i64,
            body.buffer_type,
            body.buffer_id.get(),
            body.size.get(),
        )
    }

    /// Validates the fields of an event of kind `kind` (one of the six), whatever form they came in.
    pub fn validate(
        kind: MsgType,
        device: i64,
        buffer_type: u8,
        buffer_id: u64,
        size: u64,
    ) -> Result<Event, EventError> {
        if !kind.is_event() {
            return Err(EventError::Type(kind.code()));
        }
        if !(0..MAX_DEVICES as i64).contains(&device) {
            return Err(EventError::Device(device));
        }
        let allocates = matches!(kind, MsgType::Alloc | MsgType::CbAlloc | MsgType::KernelLoad);
        if allocates && (size == 0 || size > MAX_ALLOC_SIZE) {
            return Err(EventError::Size(size));
        }
        let bad_type = match kind {
            MsgType::Alloc => BufferType::from_code(buffer_type).is_none(),
            MsgType::KernelLoad => KernelKind::from_code(buffer_type).is_none(),
            _ => false,
        };
        if bad_type {
            return Err(EventError::BufferType(buffer_type));
        }
        Ok(Event { kind, device: device as u8, buffer_type, buffer_id, size })
    }

    /// The native body of this event (timestamp as given).
    pub fn body(&self, timestamp_ns: u64) -> EventBody {
        EventBody {
            device_id: I32::new(self.device as i32),
            buffer_type: self.buffer_type,
            pad: [0; 3],
            buffer_id: U64::new(self.buffer_id),
            size: U64::new(self.size),
            timestamp_ns: U64::new(timestamp_ns),
        }
    }
}

impl RingRecord {
    /// The record for event `event` with sequence number `seq`.
    pub fn new(seq: u64, event: &Event, timestamp_ns: u64) -> Self {
        RingRecord {
            seq: U64::new(seq),
            msg_type: U16::new(event.kind.code()),
            pad: [0; 6],
            body: event.body(timestamp_ns),
        }
    }

    /// The record's event, validated.
    pub fn event(&self) -> Result<Event, EventError> {
        Event::from_native(self.msg_type.get(), &self.body)
    }
}

/// The 40-byte head every TT-Metal legacy record starts with.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | `msg_type` |
/// | 1 | 3 | `pad1` |
/// | 4 | 4 | `device_id` (i32; -1 in DEVICE_INFO_QUERY: "how many devices") |
/// | 8 | 8 | `size` |
/// | 16 | 1 | `buffer_type` |
/// | 17 | 3 | `pad2` |
/// | 20 | 4 | `process_id` (i32; never trusted: the daemon uses the socket's credentials) |
/// | 24 | 8 | `buffer_id` |
/// | 32 | 8 | `timestamp` |
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct LegacyHead {
    /// Message code.
    pub msg_type: u8,
    /// Zero.
    pub pad1: [u8; 3],
    /// Device id.
    pub device_id: I32,
    /// Bytes.
    pub size: U64,
    /// Buffer type or kernel kind.
    pub buffer_type: u8,
    /// Zero.
    pub pad2: [u8; 3],
    /// The sender's `getpid()` (ignored).
    pub process_id: I32,
    /// Device address, CB id or kernel id.
    pub buffer_id: U64,
    /// The sender's clock (ignored).
    pub timestamp: U64,
}

/// The TT-Metal v4 record (128 bytes, the documented layout): the head, then reply fields.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 40 | [`LegacyHead`] |
/// | 40 | 8 | `dram_allocated` |
/// | 48 | 8 | `l1_allocated` |
/// | 56 | 8 | `l1_small_allocated` (L1_SMALL + SYSTEM_MEMORY, as the original) |
/// | 64 | 8 | `trace_allocated` |
/// | 72 | 8 | `cb_allocated` |
/// | 80 | 8 | `kernel_allocated` |
/// | 88 | 8 | `total_dram_size` |
/// | 96 | 8 | `total_l1_size` |
/// | 104 | 4 | `arch_type` (0 invalid, 1 Grayskull, 2 Wormhole_B0, 3 Blackhole, 4 Quasar) |
/// | 108 | 4 | `num_dram_channels` |
/// | 112 | 4 | `dram_size_per_channel` |
/// | 116 | 4 | `l1_size_per_core` |
/// | 120 | 4 | `is_available` |
/// | 124 | 4 | `num_devices` |
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct V4Record {
    /// The common head.
    pub head: LegacyHead,
    /// DRAM bytes allocated.
    pub dram_allocated: U64,
    /// L1 bytes allocated.
    pub l1_allocated: U64,
    /// L1_SMALL (+ SYSTEM_MEMORY) bytes allocated.
    pub l1_small_allocated: U64,
    /// TRACE bytes allocated.
    pub trace_allocated: U64,
    /// CB bytes allocated.
    pub cb_allocated: U64,
    /// Kernel bytes loaded.
    pub kernel_allocated: U64,
    /// DRAM capacity.
    pub total_dram_size: U64,
    /// L1 capacity.
    pub total_l1_size: U64,
    /// Architecture code.
    pub arch_type: U32,
    /// DRAM channels.
    pub num_dram_channels: U32,
    /// Bytes per DRAM channel.
    pub dram_size_per_channel: U32,
    /// L1 bytes per worker core.
    pub l1_size_per_core: U32,
    /// 1 if the device exists.
    pub is_available: U32,
    /// Number of devices (DEVICE_INFO_QUERY -1).
    pub num_devices: U32,
}

/// The TT-Metal v5 record (144 bytes: what the newest `allocation_client.cpp` and `tt_smi_umd`
/// send): v4, then four u32 ring-buffer fields (always 0 in replies, as the original).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 128 | [`V4Record`] |
/// | 128 | 4 | `ringbuffer_total_size` |
/// | 132 | 4 | `ringbuffer_used_bytes` |
/// | 136 | 4 | `ringbuffer_num_programs` |
/// | 140 | 4 | `pad3` |
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct V5Record {
    /// The v4 fields.
    pub v4: V4Record,
    /// Ring buffer size.
    pub ringbuffer_total_size: U32,
    /// Ring buffer bytes used.
    pub ringbuffer_used_bytes: U32,
    /// Programs in the ring buffer.
    pub ringbuffer_num_programs: U32,
    /// Zero.
    pub pad3: U32,
}

/// The compact layout of seed 000 (48 bytes; the seed says 40, its fields add up to 48).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | `msg_type` |
/// | 1 | 1 | `buffer_type` |
/// | 2 | 2 | `device_id` (u16) |
/// | 4 | 4 | `padding` |
/// | 8 | 8 | `size` (QUERY reply: the type's allocated bytes) |
/// | 16 | 8 | `address` (QUERY reply: the type's capacity) |
/// | 24 | 8 | `timestamp` |
/// | 32 | 8 | `cb_allocated` |
/// | 40 | 8 | `kernel_allocated` |
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct CompactRecord {
    /// Message code.
    pub msg_type: u8,
    /// Buffer type or kernel kind.
    pub buffer_type: u8,
    /// Device id.
    pub device_id: U16,
    /// Zero.
    pub padding: U32,
    /// Bytes.
    pub size: U64,
    /// Device address, CB id or kernel id.
    pub address: U64,
    /// The sender's clock (ignored).
    pub timestamp: U64,
    /// CB bytes allocated (replies).
    pub cb_allocated: U64,
    /// Kernel bytes loaded (replies).
    pub kernel_allocated: U64,
}

/// A legacy record layout a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// 128-byte TT-Metal records.
    TtMetalV4,
    /// 144-byte TT-Metal records.
    TtMetalV5,
    /// 48-byte compact records of seed 000.
    CompactV2,
}

impl Layout {
    /// Bytes per record.
    pub const fn record_len(self) -> usize {
        match self {
            Layout::TtMetalV4 => core::mem::size_of::<V4Record>(),
            Layout::TtMetalV5 => core::mem::size_of::<V5Record>(),
            Layout::CompactV2 => core::mem::size_of::<CompactRecord>(),
        }
    }

    /// Its name in config and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Layout::TtMetalV4 => "tt-metal-v4",
            Layout::TtMetalV5 => "tt-metal-v5",
            Layout::CompactV2 => "compact-v2",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn sizes() {
        assert_eq!(size_of::<EventBody>(), EVENT_BODY_LEN);
        assert_eq!(size_of::<RingRecord>(), RING_RECORD_LEN);
        assert_eq!(RING_RECORD_LEN % 8, 0, "the ring copies whole words");
        assert_eq!(size_of::<LegacyHead>(), 40);
        assert_eq!(size_of::<V4Record>(), 128);
        assert_eq!(size_of::<V5Record>(), 144);
        assert_eq!(size_of::<CompactRecord>(), 48);
        assert_eq!(Layout::TtMetalV4.record_len(), 128);
        assert_eq!(Layout::TtMetalV5.record_len(), 144);
        assert_eq!(Layout::CompactV2.record_len(), 48);
    }

    #[test]
    fn event_body_offsets() {
        assert_eq!(offset_of!(EventBody, device_id), 0);
        assert_eq!(offset_of!(EventBody, buffer_type), 4);
        assert_eq!(offset_of!(EventBody, buffer_id), 8);
        assert_eq!(offset_of!(EventBody, size), 16);
        assert_eq!(offset_of!(EventBody, timestamp_ns), 24);
        assert_eq!(offset_of!(RingRecord, seq), 0);
        assert_eq!(offset_of!(RingRecord, msg_type), 8);
        assert_eq!(offset_of!(RingRecord, body), 16);
    }

    #[test]
    fn legacy_offsets() {
        assert_eq!(offset_of!(LegacyHead, msg_type), 0);
        assert_eq!(offset_of!(LegacyHead, device_id), 4);
        assert_eq!(offset_of!(LegacyHead, size), 8);
        assert_eq!(offset_of!(LegacyHead, buffer_type), 16);
        assert_eq!(offset_of!(LegacyHead, process_id), 20);
        assert_eq!(offset_of!(LegacyHead, buffer_id), 24);
        assert_eq!(offset_of!(LegacyHead, timestamp), 32);
        assert_eq!(offset_of!(V4Record, dram_allocated), 40);
        assert_eq!(offset_of!(V4Record, l1_allocated), 48);
        assert_eq!(offset_of!(V4Record, l1_small_allocated), 56);
        assert_eq!(offset_of!(V4Record, trace_allocated), 64);
        assert_eq!(offset_of!(V4Record, cb_allocated), 72);
        assert_eq!(offset_of!(V4Record, kernel_allocated), 80);
        assert_eq!(offset_of!(V4Record, total_dram_size), 88);
        assert_eq!(offset_of!(V4Record, total_l1_size), 96);
        assert_eq!(offset_of!(V4Record, arch_type), 104);
        assert_eq!(offset_of!(V4Record, num_dram_channels), 108);
        assert_eq!(offset_of!(V4Record, dram_size_per_channel), 112);
        assert_eq!(offset_of!(V4Record, l1_size_per_core), 116);
        assert_eq!(offset_of!(V4Record, is_available), 120);
        assert_eq!(offset_of!(V4Record, num_devices), 124);
        assert_eq!(offset_of!(V5Record, ringbuffer_total_size), 128);
        assert_eq!(offset_of!(V5Record, ringbuffer_used_bytes), 132);
        assert_eq!(offset_of!(V5Record, ringbuffer_num_programs), 136);
        assert_eq!(offset_of!(V5Record, pad3), 140);
        assert_eq!(offset_of!(CompactRecord, msg_type), 0);
        assert_eq!(offset_of!(CompactRecord, buffer_type), 1);
        assert_eq!(offset_of!(CompactRecord, device_id), 2);
        assert_eq!(offset_of!(CompactRecord, size), 8);
        assert_eq!(offset_of!(CompactRecord, address), 16);
        assert_eq!(offset_of!(CompactRecord, timestamp), 24);
        assert_eq!(offset_of!(CompactRecord, cb_allocated), 32);
        assert_eq!(offset_of!(CompactRecord, kernel_allocated), 40);
    }

    #[test]
    fn codes_round_trip() {
        for v in 0..=40u16 {
            if let Some(t) = MsgType::from_code(v) {
                assert_eq!(t.code(), v);
            }
        }
        assert_eq!(MsgType::from_code(0), None);
        assert_eq!(MsgType::from_code(21), None);
        assert_eq!(BufferType::from_code(5), None);
        assert_eq!(KernelKind::from_code(3), None);
    }

    #[test]
    fn validation_follows_the_reference() {
        let ok = Event::validate(MsgType::Alloc, 0, 0, 0x1000, 4096).unwrap();
        assert_eq!(ok.device, 0);
        assert_eq!(Event::validate(MsgType::Alloc, -1, 0, 1, 1), Err(EventError::Device(-1)));
        assert_eq!(Event::validate(MsgType::Alloc, 8, 0, 1, 1), Err(EventError::Device(8)));
        assert_eq!(Event::validate(MsgType::Alloc, 0, 0, 1, 0), Err(EventError::Size(0)));
        assert_eq!(
            Event::validate(MsgType::Alloc, 0, 0, 1, MAX_ALLOC_SIZE + 1),
            Err(EventError::Size(MAX_ALLOC_SIZE + 1))
        );
        assert_eq!(Event::validate(MsgType::Alloc, 0, 5, 1, 1), Err(EventError::BufferType(5)));
        assert_eq!(
            Event::validate(MsgType::KernelLoad, 0, 3, 1, 1),
            Err(EventError::BufferType(3))
        );
        // FREE carries no size and its buffer_type is not looked at.
        assert!(Event::validate(MsgType::Free, 0, 200, 1, 0).is_ok());
        assert_eq!(Event::validate(MsgType::Query, 0, 0, 1, 1), Err(EventError::Type(3)));
        let rec = RingRecord::new(7, &ok, 99);
        assert_eq!(rec.event(), Ok(ok));
        assert_eq!(rec.seq.get(), 7);
    }
}
