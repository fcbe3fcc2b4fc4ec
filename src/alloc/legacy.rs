//! The legacy raw form (`specs/alloc-protocol.md`, "Legacy raw form"): a sans-IO parser for one
//! connection of an existing client, and the same-size replies those clients read.
//!
//! Existing clients send fixed-size packed records with no magic and no length: TT-Metal v4
//! (128 B) or v5 (144 B), detected per connection ([`LayoutChoice::Auto`]) or pinned, and the
//! compact-v2 records of seed 000 (48 B, only ever pinned). [`LegacyParser::parse`] takes every
//! unconsumed byte the caller holds, hands out one [`Item`] per record and says how many bytes
//! it consumed and whether the connection must be closed. It never allocates, formats or logs:
//! the caller logs from [`LegacyParser::take_burst`] and the [`CloseReason`], naming the peer pid
//! it knows.
//!
//! Rules, after the reference server (`specs/alloc-server-reference.md` §2.5) and seed 000:
//!
//! - **Framing.** A record starts with a type byte in `1..=12`. Any other byte is junk: it is
//!   discarded alone (resync), and counts toward the consecutive-error streak.
//!   [`MAX_CONSECUTIVE_ERRORS`] junk bytes in a row close the connection
//!   ([`CloseReason::TooManyErrors`]). A partial record waits for the rest.
//! - **Validation.** A framed record of one of the six ledger events is checked with
//!   [`Event::validate`]; a failure is [`Item::Invalid`]: the whole record is dropped and the
//!   connection continues (not a resync). As in the reference, whose type check comes first and
//!   resets the counter, a framed record resets the streak even when its fields are invalid, so a
//!   client that keeps reporting a device the daemon does not track (a 32-chip machine) is not
//!   disconnected; its records are dropped and logged once per burst.
//! - **Bursts.** Junk bytes and invalid records in a row make one [`Burst`], ended by the next
//!   good record or by a close, so the caller logs one line per burst with the first offending
//!   value ("invalid device_id 2657333 from pid 4242: old-protocol client?").
//! - **Auto detection** (v4 or v5, from the first record): byte 128 non-zero is the next v4
//!   record's type; byte 128 zero is the start of the v5 ring-buffer fields (clients leave the
//!   16 bytes 128..144 zero, and a zero can never start a v4 record). Exactly 128 bytes buffered
//!   and nothing more: the caller waits [`DETECT_TIMEOUT`] and calls [`LegacyParser::settle`],
//!   which decides v4 (a v4 client that sent one QUERY is waiting for its reply; a v5 record
//!   would be 144 bytes).
//! - **Wrong pinned layout.** A listener pinned to one TT-Metal layout that is fed the other
//!   closes with [`CloseReason::WrongLayout`] instead of resyncing byte by byte: pinned v4, 16
//!   zero bytes right after a framed record are a v5 record's tail; pinned v5, byte 128 of a
//!   record is a type byte followed by three zero pad bytes, the next v4 record's head (or, with
//!   exactly 128..=131 bytes buffered that could be one whole v4 record, [`LegacyParser::settle`]
//!   after the timeout decides it). Under [`LayoutChoice::Auto`] this never happens.

use core::fmt;
use std::time::Duration;

use zerocopy::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromZeros, IntoBytes};

use super::wire::{
    CompactRecord, Event, EventError, Layout, LegacyHead, MsgType, V4Record, V5Record, MAX_DEVICES,
};

/// How long the caller waits, with a possibly whole v4 record buffered and nothing more, before
/// calling [`LegacyParser::settle`] (see [`LegacyParser::needs_settle`]).
pub const DETECT_TIMEOUT: Duration = Duration::from_millis(5);

/// Junk bytes in a row that close a connection (the reference's 10).
pub const MAX_CONSECUTIVE_ERRORS: u32 = 10;

/// The layout a legacy listener reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayoutChoice {
    /// TT-Metal, v4 (128 B) or v5 (144 B), detected per connection from the first record.
    Auto,
    /// Always this layout (compact-v2 is only ever pinned).
    Pinned(Layout),
}

/// One record of a legacy connection, as the service acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// One of the six ledger events, validated (FREE carries size 0: the ledger's size counts).
    Event(Event),
    /// QUERY: reply with [`encode_response`]. `buffer_type` is what compact-v2 replies report on.
    Query {
        /// The device asked about (any value: outside 0..8 gets a zero-filled reply).
        device: i32,
        /// The buffer type asked about (compact-v2 replies).
        buffer_type: u8,
    },
    /// DEVICE_INFO_QUERY: reply with [`encode_device_info`].
    DeviceInfoQuery {
        /// The device asked about; -1 asks how many devices there are.
        device: i32,
    },
    /// DUMP_REMAINING: report the remaining buffers to the log; no reply.
    DumpRemaining,
    /// DUMP_KERNELS: report the kernel ledger to the log; no reply.
    DumpKernels,
    /// RESPONSE (4) or DEVICE_INFO_RESPONSE (7) sent by a client: counted as unknown, the
    /// connection stays open.
    Unknown {
        /// The record's type byte.
        msg_type: u8,
    },
    /// A ledger event whose fields fail validation: dropped, the connection continues.
    Invalid {
        /// The first field that failed.
        error: EventError,
    },
}

/// Why a legacy connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// [`MAX_CONSECUTIVE_ERRORS`] junk bytes in a row (likely a protocol mismatch).
    TooManyErrors,
    /// The listener is pinned to one TT-Metal layout and the client sends the other.
    WrongLayout {
        /// The listener's layout.
        pinned: Layout,
        /// The layout the client's bytes show.
        seen: Layout,
    },
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::TooManyErrors => write!(
                f,
                "too many consecutive errors ({MAX_CONSECUTIVE_ERRORS}) - closing connection \
                 (likely protocol mismatch)"
            ),
            CloseReason::WrongLayout { pinned, seen } => write!(
                f,
                "listener pinned to {} but the client sends {}-byte {} records",
                pinned.name(),
                seen.record_len(),
                seen.name()
            ),
        }
    }
}

/// What the caller does with the connection after a parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep reading.
    Continue,
    /// Close the connection (log the reason with the peer pid); every later call says the same.
    Close(CloseReason),
}

/// The result of one [`LegacyParser::parse`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Bytes consumed from the front of the input (the caller drops them).
    pub consumed: usize,
    /// Whether to keep the connection.
    pub verdict: Verdict,
}

/// Counters of one legacy connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LegacyStats {
    /// Framed records consumed (type byte in range, whole record), valid or not.
    pub records: u64,
    /// [`Item::Event`]s handed out.
    pub events: u64,
    /// [`Item::Query`] and [`Item::DeviceInfoQuery`] handed out.
    pub queries: u64,
    /// [`Item::Invalid`] records dropped.
    pub invalid: u64,
    /// Junk bytes discarded by resync.
    pub resync_bytes: u64,
    /// [`Item::Unknown`] records.
    pub unknown: u64,
    /// Junk bytes in a row so far (the close counter).
    pub streak: u32,
}

/// The first offending value of a [`Burst`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offense {
    /// A byte where a type byte (1..=12) should be.
    Type(u8),
    /// A framed event record whose fields fail validation.
    Field(EventError),
}

impl fmt::Display for Offense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offense::Type(b) => write!(f, "invalid message type {b}"),
            Offense::Field(e) => write!(f, "{e}"),
        }
    }
}

/// A run of invalid input (junk bytes and invalid records with no good record between them),
/// to be logged as one line.
///
/// `Display` renders "invalid device_id 2657333: old-protocol client?", with the counts in
/// parentheses after it when the burst holds more than one offense; [`Burst::with_pid`] renders
/// the spec's form with the peer pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Burst {
    /// The first offending value.
    pub first: Offense,
    /// Junk bytes discarded in the burst.
    pub junk_bytes: u64,
    /// Invalid records dropped in the burst.
    pub invalid_records: u64,
    /// Bursts folded into this one (more than 1 when several ended before one
    /// [`LegacyParser::take_burst`]; `first` is the earliest's).
    pub bursts: u32,
}

impl Burst {
    /// The log line naming the peer: "invalid device_id 2657333 from pid 4242: old-protocol
    /// client?" (plus the counts, as `Display`).
    pub fn with_pid(&self, pid: i32) -> BurstLine {
        BurstLine { burst: *self, pid: Some(pid) }
    }

    fn merge(self, later: Burst) -> Burst {
        Burst {
            first: self.first,
            junk_bytes: self.junk_bytes + later.junk_bytes,
            invalid_records: self.invalid_records + later.invalid_records,
            bursts: self.bursts.saturating_add(later.bursts),
        }
    }
}

impl fmt::Display for Burst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        BurstLine { burst: *self, pid: None }.fmt(f)
    }
}

/// A [`Burst`] rendered with the peer pid (from [`Burst::with_pid`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BurstLine {
    burst: Burst,
    pid: Option<i32>,
}

impl fmt::Display for BurstLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.burst;
        write!(f, "{}", b.first)?;
        if let Some(pid) = self.pid {
            write!(f, " from pid {pid}")?;
        }
        f.write_str(": old-protocol client?")?;
        if b.junk_bytes + b.invalid_records > 1 || b.bursts > 1 {
            write!(f, " ({} invalid records, {} bytes skipped", b.invalid_records, b.junk_bytes)?;
            if b.bursts > 1 {
                write!(f, ", {} bursts", b.bursts)?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// The parser of one legacy connection (sans-IO: bytes in, items and a verdict out).
#[derive(Debug)]
pub struct LegacyParser {
    choice: LayoutChoice,
    /// The layout in use (`None` while [`LayoutChoice::Auto`] has not decided).
    layout: Option<Layout>,
    closed: Option<CloseReason>,
    /// The last thing consumed was a framed record (pinned-v4 wrong-layout check).
    after_record: bool,
    settle: Settle,
    stats: LegacyStats,
    /// The burst in progress.
    open: Option<Burst>,
    /// Bursts ended and not yet taken.
    ended: Option<Burst>,
}

/// What [`LegacyParser::settle`] would decide, from the last parse's leftover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settle {
    No,
    /// Auto, exactly 128 bytes of a first record: v4.
    DetectV4,
    /// Pinned v5, 128..=131 bytes that could be one whole v4 record: wrong layout.
    V5SeesV4,
}

impl LegacyParser {
    /// A parser for a new connection.
    pub fn new(choice: LayoutChoice) -> Self {
        LegacyParser {
            choice,
            layout: match choice {
                LayoutChoice::Auto => None,
                LayoutChoice::Pinned(l) => Some(l),
            },
            closed: None,
            after_record: false,
            settle: Settle::No,
            stats: LegacyStats::default(),
            open: None,
            ended: None,
        }
    }

    /// Parses `input`, every unconsumed byte the caller holds, calling `out` once per record.
    ///
    /// Consumption stops at a partial record (the caller keeps it and calls again with more).
    /// Never panics; each step consumes at least one byte or stops. After a
    /// [`Verdict::Close`] every call returns the same verdict and consumes nothing.
    pub fn parse(&mut self, input: &[u8], out: &mut impl FnMut(Item)) -> Parsed {
        self.settle = Settle::No;
        if let Some(reason) = self.closed {
            return Parsed { consumed: 0, verdict: Verdict::Close(reason) };
        }
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            let ty = rest[0];
            if !is_type(ty) {
                if ty == 0 && self.after_record && self.choice == V4_PINNED {
                    match v5_tail(rest) {
                        Tail::Wait => break,
                        Tail::Yes => {
                            return self.close(pos, wrong(Layout::TtMetalV4, Layout::TtMetalV5))
                        }
                        Tail::No => {}
                    }
                }
                pos += 1;
                if self.junk(ty) {
                    return self.close(pos, CloseReason::TooManyErrors);
                }
                continue;
            }
            let layout = match self.layout {
                Some(l) => l,
                None => match detect(rest) {
                    Some(l) => {
                        self.layout = Some(l);
                        l
                    }
                    None => {
                        if rest.len() == V4_LEN {
                            self.settle = Settle::DetectV4;
                        }
                        break;
                    }
                },
            };
            if self.choice == V5_PINNED {
                match v4_inside_v5(rest) {
                    Tail::Yes => {
                        return self.close(pos, wrong(Layout::TtMetalV5, Layout::TtMetalV4))
                    }
                    Tail::Wait => {
                        self.settle = Settle::V5SeesV4;
                        break;
                    }
                    Tail::No => {}
                }
            }
            let Some(item) = decode(layout, rest) else { break };
            pos += layout.record_len();
            self.record(item);
            out(item);
        }
        Parsed { consumed: pos, verdict: Verdict::Continue }
    }

    /// Whether the caller should call [`settle`](Self::settle) if nothing more arrives within
    /// [`DETECT_TIMEOUT`]: the last parse left 128 bytes that may be a whole v4 record, under
    /// [`LayoutChoice::Auto`] before detection, or pinned v5.
    pub fn needs_settle(&self) -> bool {
        self.settle != Settle::No
    }

    /// Decides what waiting could not, nothing having arrived for [`DETECT_TIMEOUT`] since the
    /// last parse: under [`LayoutChoice::Auto`] the layout is v4 (call [`parse`](Self::parse)
    /// again with the same bytes); pinned v5, the client is a v4 client waiting for its reply
    /// ([`CloseReason::WrongLayout`]). Otherwise nothing changes.
    pub fn settle(&mut self) -> Verdict {
        match core::mem::replace(&mut self.settle, Settle::No) {
            Settle::DetectV4 => self.layout = Some(Layout::TtMetalV4),
            Settle::V5SeesV4 => {
                return self.close(0, wrong(Layout::TtMetalV5, Layout::TtMetalV4)).verdict
            }
            Settle::No => {}
        }
        match self.closed {
            Some(reason) => Verdict::Close(reason),
            None => Verdict::Continue,
        }
    }

    /// The layout chosen at creation.
    pub fn choice(&self) -> LayoutChoice {
        self.choice
    }

    /// The layout in use (`None` while [`LayoutChoice::Auto`] has not decided).
    pub fn layout(&self) -> Option<Layout> {
        self.layout
    }

    /// Why the connection was closed, once it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed
    }

    /// The connection's counters.
    pub fn stats(&self) -> LegacyStats {
        self.stats
    }

    /// The burst(s) of invalid input ended (by a good record or a close) since the last call:
    /// log it once, with the peer pid ([`Burst::with_pid`]).
    pub fn take_burst(&mut self) -> Option<Burst> {
        self.ended.take()
    }

    /// Ends the burst in progress, if any, and returns every burst not yet taken: for the end
    /// of the connection, or to log a burst of invalid records that goes on and on.
    pub fn flush_burst(&mut self) -> Option<Burst> {
        self.end_burst();
        self.ended.take()
    }

    /// Counts one junk byte; whether the streak reached the limit.
    #[cold]
    fn junk(&mut self, byte: u8) -> bool {
        self.stats.resync_bytes += 1;
        self.stats.streak += 1;
        self.after_record = false;
        self.offend(Offense::Type(byte));
        self.stats.streak >= MAX_CONSECUTIVE_ERRORS
    }

    fn record(&mut self, item: Item) {
        self.stats.records += 1;
        self.stats.streak = 0;
        self.after_record = true;
        match item {
            Item::Invalid { error } => {
                self.stats.invalid += 1;
                self.offend(Offense::Field(error));
                return;
            }
            Item::Event(_) => self.stats.events += 1,
            Item::Query { .. } | Item::DeviceInfoQuery { .. } => self.stats.queries += 1,
            Item::Unknown { .. } => self.stats.unknown += 1,
            Item::DumpRemaining | Item::DumpKernels => {}
        }
        self.end_burst();
    }

    fn offend(&mut self, offense: Offense) {
        let junk = matches!(offense, Offense::Type(_));
        let b = self.open.get_or_insert(Burst {
            first: offense,
            junk_bytes: 0,
            invalid_records: 0,
            bursts: 1,
        });
        if junk {
            b.junk_bytes += 1;
        } else {
            b.invalid_records += 1;
        }
    }

    fn end_burst(&mut self) {
        if let Some(b) = self.open.take() {
            self.ended = Some(match self.ended {
                Some(earlier) => earlier.merge(b),
                None => b,
            });
        }
    }

    #[cold]
    fn close(&mut self, consumed: usize, reason: CloseReason) -> Parsed {
        self.closed = Some(reason);
        self.end_burst();
        Parsed { consumed, verdict: Verdict::Close(reason) }
    }
}

/// What the service reports in a RESPONSE (zero for a device outside 0..8, whatever is given).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyUsage {
    /// DRAM bytes allocated.
    pub dram: u64,
    /// L1 bytes allocated.
    pub l1: u64,
    /// L1_SMALL bytes allocated, SYSTEM_MEMORY folded in by the caller (as the original).
    pub l1_small: u64,
    /// TRACE bytes allocated.
    pub trace: u64,
    /// Circular-buffer bytes allocated.
    pub cb: u64,
    /// Kernel bytes loaded.
    pub kernel: u64,
    /// Compact-v2: bytes allocated of the queried buffer type.
    pub type_allocated: u64,
    /// Compact-v2: capacity of the queried buffer type.
    pub type_capacity: u64,
}

/// What the service reports in a DEVICE_INFO_RESPONSE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyDeviceInfo {
    /// The device exists.
    pub available: bool,
    /// Architecture code (0 invalid, 1 Grayskull, 2 Wormhole_B0, 3 Blackhole, 4 Quasar).
    pub arch_code: u32,
    /// DRAM channels.
    pub dram_channels: u32,
    /// Bytes per DRAM channel (the caller saturates at `u32::MAX`: the field is 32 bits).
    pub dram_per_channel: u32,
    /// L1 bytes per worker core.
    pub l1_per_core: u32,
    /// DRAM capacity.
    pub total_dram: u64,
    /// L1 capacity.
    pub total_l1: u64,
    /// How many devices there are (reported for device -1 only).
    pub num_devices: u32,
}

/// Appends the RESPONSE to a QUERY of `device`: `layout.record_len()` bytes.
///
/// TT-Metal v4/v5: the record zeroed, type 4, `device_id` echoed, the dram / l1 / l1_small /
/// trace / cb / kernel counters (ring-buffer fields 0). Compact-v2: type 4, `device_id`
/// echoed (as u16), `size` = `type_allocated`, `address` = `type_capacity`, `cb_allocated`,
/// `kernel_allocated`; `buffer_type` 0 (the client knows what it asked). A device outside
/// 0..8 gets zero counters, as the original.
pub fn encode_response(layout: Layout, device: i32, usage: &ReplyUsage, out: &mut Vec<u8>) {
    let u = if in_range(device) { *usage } else { ReplyUsage::default() };
    match layout {
        Layout::CompactV2 => {
            let mut r = CompactRecord::new_zeroed();
            r.msg_type = MsgType::Response.code() as u8;
            r.device_id = U16::new(device as u16);
            r.size = U64::new(u.type_allocated);
            r.address = U64::new(u.type_capacity);
            r.cb_allocated = U64::new(u.cb);
            r.kernel_allocated = U64::new(u.kernel);
            out.extend_from_slice(r.as_bytes());
        }
        Layout::TtMetalV4 | Layout::TtMetalV5 => {
            let mut r = V5Record::new_zeroed();
            let v = &mut r.v4;
            v.head.msg_type = MsgType::Response.code() as u8;
            v.head.device_id = I32::new(device);
            v.dram_allocated = U64::new(u.dram);
            v.l1_allocated = U64::new(u.l1);
            v.l1_small_allocated = U64::new(u.l1_small);
            v.trace_allocated = U64::new(u.trace);
            v.cb_allocated = U64::new(u.cb);
            v.kernel_allocated = U64::new(u.kernel);
            push_tt(layout, &r, out);
        }
    }
}

/// Appends the DEVICE_INFO_RESPONSE to a DEVICE_INFO_QUERY of `device`:
/// `layout.record_len()` bytes.
///
/// TT-Metal v4/v5: the record zeroed, type 7, `device_id` echoed; for -1 `num_devices` and
/// `is_available` = (count > 0); for 0..8 `is_available`, `arch_type`, `num_dram_channels`,
/// `dram_size_per_channel`, `l1_size_per_core`, `total_dram_size`, `total_l1_size`; other ids
/// zeros. Compact-v2 (no device-info fields; corelane's choice): type 7, `device_id` echoed (as
/// u16, so -1 is 0xFFFF); for -1 `size` = the device count and `address` = (count > 0); for an
/// available device 0..8 `size` = total DRAM and `address` = total L1; otherwise zeros.
pub fn encode_device_info(layout: Layout, device: i32, info: &ReplyDeviceInfo, out: &mut Vec<u8>) {
    let all = device == -1;
    let i = if all || in_range(device) { *info } else { ReplyDeviceInfo::default() };
    match layout {
        Layout::CompactV2 => {
            let mut r = CompactRecord::new_zeroed();
            r.msg_type = MsgType::DeviceInfoResponse.code() as u8;
            r.device_id = U16::new(device as u16);
            if all {
                r.size = U64::new(i.num_devices.into());
                r.address = U64::new((i.num_devices > 0).into());
            } else if i.available {
                r.size = U64::new(i.total_dram);
                r.address = U64::new(i.total_l1);
            }
            out.extend_from_slice(r.as_bytes());
        }
        Layout::TtMetalV4 | Layout::TtMetalV5 => {
            let mut r = V5Record::new_zeroed();
            let v = &mut r.v4;
            v.head.msg_type = MsgType::DeviceInfoResponse.code() as u8;
            v.head.device_id = I32::new(device);
            if all {
                v.num_devices = U32::new(i.num_devices);
                v.is_available = U32::new((i.num_devices > 0).into());
            } else {
                v.is_available = U32::new(i.available.into());
                v.arch_type = U32::new(i.arch_code);
                v.num_dram_channels = U32::new(i.dram_channels);
                v.dram_size_per_channel = U32::new(i.dram_per_channel);
                v.l1_size_per_core = U32::new(i.l1_per_core);
                v.total_dram_size = U64::new(i.total_dram);
                v.total_l1_size = U64::new(i.total_l1);
            }
            push_tt(layout, &r, out);
        }
    }
}

const V4_LEN: usize = core::mem::size_of::<V4Record>();
const HEAD_LEN: usize = core::mem::size_of::<LegacyHead>();
const COMPACT_LEN: usize = core::mem::size_of::<CompactRecord>();
const V4_PINNED: LayoutChoice = LayoutChoice::Pinned(Layout::TtMetalV4);
const V5_PINNED: LayoutChoice = LayoutChoice::Pinned(Layout::TtMetalV5);
/// The ring-buffer tail a v5 record adds to v4.
const V5_TAIL: usize = core::mem::size_of::<V5Record>() - V4_LEN;

fn is_type(b: u8) -> bool {
    (1..=MsgType::LEGACY_MAX).contains(&u16::from(b))
}

fn in_range(device: i32) -> bool {
    (0..MAX_DEVICES as i32).contains(&device)
}

fn wrong(pinned: Layout, seen: Layout) -> CloseReason {
    CloseReason::WrongLayout { pinned, seen }
}

fn push_tt(layout: Layout, r: &V5Record, out: &mut Vec<u8>) {
    match layout {
        Layout::TtMetalV5 => out.extend_from_slice(r.as_bytes()),
        _ => out.extend_from_slice(r.v4.as_bytes()),
    }
}

/// The outcome of a wrong-layout check.
enum Tail {
    /// Not enough bytes to tell.
    Wait,
    /// The other layout.
    Yes,
    /// This layout (or junk).
    No,
}

/// Auto detection at a record start whose type byte is valid.
fn detect(rest: &[u8]) -> Option<Layout> {
    rest.get(V4_LEN).map(|&b| if b != 0 { Layout::TtMetalV4 } else { Layout::TtMetalV5 })
}

/// Pinned v4, a zero right after a framed record: 16 zeros are a v5 record's ring-buffer tail.
/// Decided on the zeros alone (a v5 client that sent one QUERY sends nothing after them until
/// its reply, and a v4 stream with that many junk bytes would be closed anyway).
fn v5_tail(rest: &[u8]) -> Tail {
    let seen = &rest[..rest.len().min(V5_TAIL)];
    if seen.iter().any(|&b| b != 0) {
        Tail::No
    } else if seen.len() < V5_TAIL {
        Tail::Wait
    } else {
        Tail::Yes
    }
}

/// Pinned v5, a record start: byte 128 a type byte and 129..132 zero is the next v4 record's
/// head. `Wait` when 128..=131 bytes could still be exactly one v4 record (for `settle`).
fn v4_inside_v5(rest: &[u8]) -> Tail {
    match rest.get(V4_LEN..) {
        None => Tail::No,
        Some([]) => Tail::Wait,
        Some([t, pad @ ..]) if is_type(*t) && pad.iter().take(3).all(|&b| b == 0) => {
            if pad.len() >= 3 {
                Tail::Yes
            } else {
                Tail::Wait
            }
        }
        Some(_) => Tail::No,
    }
}

/// The item of the record at the start of `rest` (type byte already valid), or `None` if the
/// record is not all there.
fn decode(layout: Layout, rest: &[u8]) -> Option<Item> {
    if rest.len() < layout.record_len() {
        return None;
    }
    let (ty, device, query_device, buffer_type, buffer_id, size) = match layout {
        Layout::CompactV2 => {
            let r: CompactRecord = zerocopy::transmute!(*rest.first_chunk::<COMPACT_LEN>()?);
            let raw = r.device_id.get();
            // A compact client's -1 ("every device") arrives as u16 0xFFFF.
            let query_device = if raw == u16::MAX { -1 } else { i32::from(raw) };
            (r.msg_type, i64::from(raw), query_device, r.buffer_type, r.address.get(), r.size.get())
        }
        Layout::TtMetalV4 | Layout::TtMetalV5 => {
            let h: LegacyHead = zerocopy::transmute!(*rest.first_chunk::<HEAD_LEN>()?);
            let d = h.device_id.get();
            (h.msg_type, i64::from(d), d, h.buffer_type, h.buffer_id.get(), h.size.get())
        }
    };
    let kind = MsgType::from_code(ty.into())?;
    Some(match kind {
        k if k.is_event() => {
            let size = if k == MsgType::Free { 0 } else { size };
            match Event::validate(k, device, buffer_type, buffer_id, size) {
                Ok(e) => Item::Event(e),
                Err(error) => Item::Invalid { error },
            }
        }
        MsgType::Query => Item::Query { device: query_device, buffer_type },
        MsgType::DeviceInfoQuery => Item::DeviceInfoQuery { device: query_device },
        MsgType::DumpRemaining => Item::DumpRemaining,
        MsgType::DumpKernels => Item::DumpKernels,
        _ => Item::Unknown { msg_type: ty },
    })
}

#[cfg(test)]
mod tests;
