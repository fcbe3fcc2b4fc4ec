//! Decoding any tensor-pool region file, written by corelane or another implementation, for
//! diagnostics (`corelane pool inspect`).
//!
//! [`inspect_region`] maps the file read-only and reads it as a consumer would: every word
//! with a relaxed atomic load, each header slot between two loads of its `seq_commit` (a slot
//! that changed meanwhile is reported as such, not decoded from a torn copy). Nothing in the
//! file is trusted: a short file, a bad magic or an absurd `nslots` is a clear error or a
//! verdict, never a panic, and at most [`InspectOptions::max_slots`] slots are read (and
//! allocated for), whatever `nslots` says. [`decode_region`] is the same decoder over bytes
//! in memory (the fuzz target's entry point).
//!
//! Payload pools are reported by their superblock only: payload bytes are opaque.

use std::fmt::{self, Write as _};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};

use serde::Serialize;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::layout::{parse_canonical, HEADER_FILE, POOL_SUFFIX};
use super::uri::{ShmUri, UriError};
use crate::mapping::{MapError, ReadOnlyMapping};
use crate::rings::seqlock::PoolSpec;
use crate::rings::shm::{
    self, Dtype, ExpectedRegion, MajorOrder, ProgressUnit, RegionType, SlotHeader, Superblock,
    MAX_DIMS, SLOT_BYTES, SUPERBLOCK_BYTES,
};

/// Slots read and shown unless told otherwise.
pub const DEFAULT_MAX_SLOTS: usize = 4096;

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectOptions {
    /// Most header slots read and reported (`--slots N`); the rest are counted in a note.
    pub max_slots: usize,
    /// Pool strides to check slots against (`pool_id` known, `values_len_bytes` within the
    /// stride). `None`: for a file named `header.ring`, the superblocks of the `<id>.pool`
    /// files beside it; otherwise nothing, and those two checks are skipped (said in a note).
    pub pool_strides: Option<Vec<PoolSpec>>,
}

impl Default for InspectOptions {
    fn default() -> Self {
        Self { max_slots: DEFAULT_MAX_SLOTS, pool_strides: None }
    }
}

/// Why a file could not be inspected at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The argument looked like a URI (`shm:...`) and did not parse.
    #[error(transparent)]
    Uri(#[from] UriError),
    /// The file could not be opened or examined.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The call.
        op: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Not a regular file (a FIFO, device, socket or directory is never mapped).
    #[error("{path}: expected a regular file, seen a {kind}")]
    NotRegularFile {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Shorter than a superblock.
    #[error(
        "{source_name}: expected at least {SUPERBLOCK_BYTES} bytes (a superblock), seen {len}"
    )]
    TooShort {
        /// The file (or `<bytes>`).
        source_name: String,
        /// Its length.
        len: u64,
    },
    /// Mapping failed.
    #[error("{path}: mapping failed: {source}")]
    Map {
        /// The file.
        path: PathBuf,
        /// Why.
        source: MapError,
    },
}

/// Everything read from one region file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionReport {
    /// The path inspected (or `<bytes>`).
    pub source: String,
    /// File length in bytes.
    pub file_len: u64,
    /// The superblock, field by field.
    pub superblock: SuperblockReport,
    /// What the superblock says the file is.
    pub kind: RegionKind,
    /// The length the superblock's layout gives (`64 + nslots * 256` or `* stride`).
    pub expected_len: Option<u64>,
    /// What is wrong with the region as a whole; empty when it is sound.
    pub problems: Vec<String>,
    /// Header rings: the slots read.
    pub slots: Option<SlotsReport>,
}

/// The 64-byte superblock (spec §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SuperblockReport {
    /// Bytes 0..8 as a little-endian `u64`.
    pub magic: u64,
    /// Whether that is `0x544F504C53484D31` ("1MHSLPOT" on disk).
    pub magic_ok: bool,
    /// Layout version (1).
    pub layout_version: u32,
    /// Epoch.
    pub epoch: u64,
    /// Stream id.
    pub stream_id: u32,
    /// Region type, raw (1 header ring, 2 payload pool).
    pub region_type: i16,
    /// Pool id (0 for the header ring).
    pub pool_id: u16,
    /// Slots.
    pub nslots: u32,
    /// Slot bytes (256 for a header ring; C writes 0xFFFFFFFF for pools).
    pub slot_bytes: u32,
    /// Stride (pools; C writes 0 for the header ring).
    pub stride_bytes: u32,
    /// Creator's pid.
    pub pid: u64,
    /// Creation time, `CLOCK_MONOTONIC` ns.
    pub start_timestamp_ns: u64,
    /// Heartbeat, `CLOCK_MONOTONIC` ns.
    pub activity_timestamp_ns: u64,
}

/// What a region is by its superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionKind {
    /// `region_type` 1.
    HeaderRing,
    /// `region_type` 2.
    PayloadPool,
    /// Anything else.
    Unknown,
}

/// The slots of a header ring that were read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotsReport {
    /// Slots the superblock claims.
    pub nslots: u32,
    /// Whole slots the file holds.
    pub in_file: u64,
    /// Slots read (and listed in `list`).
    pub read: usize,
    /// Per state, over the slots read.
    pub counts: SlotCounts,
    /// Caveats: slots not read, checks skipped.
    pub notes: Vec<String>,
    /// One entry per slot read, by index.
    pub list: Vec<SlotReport>,
}

/// How many slots were in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SlotCounts {
    /// `seq_commit` 0: never written this epoch.
    pub empty: usize,
    /// Commit bit clear.
    pub in_progress: usize,
    /// Commit bit set and the header validates.
    pub valid: usize,
    /// Commit bit set and the header does not validate.
    pub invalid: usize,
    /// Changed while read.
    pub changed: usize,
}

/// A slot's `seq_commit` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// `seq_commit` is 0: never written in this epoch (indistinguishable from seq 0 in
    /// progress, which is what a fresh ring's reset leaves).
    Empty,
    /// The commit bit is clear: a write of `seq` is under way (or was abandoned).
    InProgress,
    /// The commit bit is set: `seq` is readable.
    Committed,
    /// `seq_commit` changed while the slot was read: the copy was discarded.
    Changed,
}

/// One header-ring slot (spec §2.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotReport {
    /// Slot index.
    pub index: u32,
    /// State.
    pub state: SlotState,
    /// Raw `seq_commit`.
    pub seq_commit: u64,
    /// `seq_commit >> 1`.
    pub seq: u64,
    /// Payload length.
    pub values_len_bytes: u32,
    /// Payload slot.
    pub payload_slot: u32,
    /// Pool.
    pub pool_id: u16,
    /// Offset in the payload slot (0 in v1.2).
    pub payload_offset: u32,
    /// Source time, ns.
    pub timestamp_ns: u64,
    /// Metadata version.
    pub meta_version: u32,
    /// `headerBytes` length prefix (192).
    pub header_bytes_len: u32,
    /// The embedded tensor header.
    pub tensor: TensorReport,
    /// Whether every byte of the slot is zero.
    pub all_zero: bool,
    /// For committed slots: whether the header validates (spec §2.3).
    pub valid: Option<bool>,
    /// Why it does not validate.
    pub reason: Option<String>,
}

/// The embedded tensor header, raw values with names where they are known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorReport {
    /// Message header block length (184).
    pub block_length: u16,
    /// Template id (52).
    pub template_id: u16,
    /// Schema id (900).
    pub schema_id: u16,
    /// Version (1).
    pub version: u16,
    /// Dtype, raw.
    pub dtype: i16,
    /// Dtype name, if known.
    pub dtype_name: Option<String>,
    /// Major order, raw.
    pub major_order: i16,
    /// Major order name, if known.
    pub major_order_name: Option<String>,
    /// Dimensions used.
    pub ndims: u8,
    /// Progress unit, raw.
    pub progress_unit: u8,
    /// Progress unit name, if known.
    pub progress_unit_name: Option<String>,
    /// Bytes per progress step.
    pub progress_stride_bytes: u32,
    /// `dims[..min(ndims, 8)]`.
    pub dims: Vec<i32>,
    /// `strides[..min(ndims, 8)]` as written (0 = inferred).
    pub strides: Vec<i32>,
}

/// Inspects the region file at `path_or_uri` (a path, or a `shm:file?...` URI whose path is
/// used; no allowlist applies: this is a diagnostic that reads, never writes).
pub fn inspect_region(
    path_or_uri: &str,
    opts: &InspectOptions,
) -> Result<RegionReport, InspectError> {
    let path = if path_or_uri.starts_with("shm:") {
        ShmUri::parse(path_or_uri)?.path().to_owned()
    } else {
        PathBuf::from(path_or_uri)
    };
    let io_err = |op, source| InspectError::Io { path: path.clone(), op, source };
    // Non-blocking, so a FIFO given by mistake does not hang the open.
    let file = File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&path)
        .map_err(|e| io_err("open", e))?;
    let meta = file.metadata().map_err(|e| io_err("fstat", e))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let kind = if kind.is_dir() {
            "directory"
        } else if kind.is_fifo() {
            "fifo"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "device"
        } else {
            "file of unknown type"
        };
        return Err(InspectError::NotRegularFile { path, kind });
    }
    let file_len = meta.len();
    let source_name = path.display().to_string();
    if file_len < SUPERBLOCK_BYTES as u64 {
        return Err(InspectError::TooShort { source_name, len: file_len });
    }
    // Map only what can be reported: the superblock and at most `max_slots` slots.
    let wanted = (SLOT_BYTES as u64)
        .saturating_mul(opts.max_slots as u64)
        .saturating_add(SUPERBLOCK_BYTES as u64);
    let map_len = usize::try_from(file_len.min(wanted)).unwrap_or(usize::MAX);
    let map = ReadOnlyMapping::map(&file, map_len)
        .map_err(|source| InspectError::Map { path: path.clone(), source })?;
    let strides = match &opts.pool_strides {
        Some(list) => Some(list.clone()),
        None if path.file_name().is_some_and(|n| n == HEADER_FILE) => {
            path.parent().map(sibling_pool_strides)
        }
        None => None,
    };
    decode(&MappedSource(&map), source_name, file_len, opts.max_slots, strides.as_deref())
}

/// Decodes a whole region file held in memory (`bytes` is the file): the decoder of
/// [`inspect_region`] without a file, for tests and fuzzing. Pool checks use
/// `opts.pool_strides` (none given: skipped).
pub fn decode_region(bytes: &[u8], opts: &InspectOptions) -> Result<RegionReport, InspectError> {
    let len = bytes.len() as u64;
    if len < SUPERBLOCK_BYTES as u64 {
        return Err(InspectError::TooShort { source_name: "<bytes>".to_owned(), len });
    }
    decode(
        &BytesSource(bytes),
        "<bytes>".to_owned(),
        len,
        opts.max_slots,
        opts.pool_strides.as_deref(),
    )
}

/// The pools beside a header ring, by their superblocks: every `<id>.pool` regular file in
/// `dir` whose superblock has the magic. Unreadable files are skipped.
pub fn sibling_pool_strides(dir: &Path) -> Vec<PoolSpec> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut pools = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(POOL_SUFFIX))
            .and_then(parse_canonical::<u16>)
        else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(file) = File::open(entry.path()) else { continue };
        let Ok(map) = ReadOnlyMapping::map(&file, SUPERBLOCK_BYTES) else { continue };
        let mut sb = Superblock::new_zeroed();
        if map.load_words(0, sb.as_mut_bytes())
            && sb.magic.get() == shm::MAGIC
            && sb.pool_id.get() == id
        {
            pools.push(PoolSpec { pool_id: id, stride_bytes: sb.stride_bytes.get() });
        }
    }
    pools.sort_by_key(|p| p.pool_id);
    pools
}

/// Where the bytes come from: a read-only mapping (atomic loads) or memory.
trait Source {
    /// Bytes available.
    fn len(&self) -> u64;
    /// Copies `out.len()` bytes at `offset` (a multiple of 8); false if out of range.
    fn load(&self, offset: u64, out: &mut [u8]) -> bool;
    /// The little-endian word at `offset`.
    fn load_u64(&self, offset: u64) -> Option<u64> {
        let mut word = [0u8; 8];
        self.load(offset, &mut word).then(|| u64::from_le_bytes(word))
    }
}

struct MappedSource<'a>(&'a ReadOnlyMapping);

impl Source for MappedSource<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn load(&self, offset: u64, out: &mut [u8]) -> bool {
        usize::try_from(offset).is_ok_and(|offset| self.0.load_words(offset, out))
    }
}

struct BytesSource<'a>(&'a [u8]);

impl Source for BytesSource<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn load(&self, offset: u64, out: &mut [u8]) -> bool {
        let Ok(start) = usize::try_from(offset) else { return false };
        let Some(bytes) = start.checked_add(out.len()).and_then(|end| self.0.get(start..end))
        else {
            return false;
        };
        out.copy_from_slice(bytes);
        true
    }
}

fn decode(
    src: &dyn Source,
    source_name: String,
    file_len: u64,
    max_slots: usize,
    pool_strides: Option<&[PoolSpec]>,
) -> Result<RegionReport, InspectError> {
    let mut sb = Superblock::new_zeroed();
    if !src.load(0, sb.as_mut_bytes()) {
        return Err(InspectError::TooShort { source_name, len: file_len });
    }
    let superblock = SuperblockReport {
        magic: sb.magic.get(),
        magic_ok: sb.magic.get() == shm::MAGIC,
        layout_version: sb.layout_version.get(),
        epoch: sb.epoch.get(),
        stream_id: sb.stream_id.get(),
        region_type: sb.region_type.get(),
        pool_id: sb.pool_id.get(),
        nslots: sb.nslots.get(),
        slot_bytes: sb.slot_bytes.get(),
        stride_bytes: sb.stride_bytes.get(),
        pid: sb.pid.get(),
        start_timestamp_ns: sb.start_timestamp_ns.get(),
        activity_timestamp_ns: sb.activity_timestamp_ns.get(),
    };
    let region = sb.region().ok();
    let kind = match region {
        Some(RegionType::HeaderRing) => RegionKind::HeaderRing,
        Some(RegionType::PayloadPool) => RegionKind::PayloadPool,
        None => RegionKind::Unknown,
    };
    let expected_len = sb.region_len().ok();

    // The superblock against itself: every rule of rings' validation that does not need an
    // announce (magic, version, type, slot size or stride, nslots, file length).
    let mut problems = Vec::new();
    let own = match region {
        Some(RegionType::PayloadPool) => ExpectedRegion::payload_pool(
            sb.epoch.get(),
            sb.stream_id.get(),
            sb.pool_id.get(),
            sb.nslots.get(),
            sb.stride_bytes.get(),
            file_len,
        ),
        _ => ExpectedRegion::header_ring(
            sb.epoch.get(),
            sb.stream_id.get(),
            sb.nslots.get(),
            file_len,
        ),
    };
    if let Err(e) = sb.validate(&own) {
        problems.push(e.to_string());
    }
    if let Some(expected) = expected_len.filter(|&n| file_len > n) {
        problems.push(format!(
            "file length expected exactly {expected} bytes, seen {file_len} (longer than the layout)"
        ));
    }
    match region {
        Some(RegionType::HeaderRing) if sb.pool_id.get() != 0 => {
            problems.push(format!("header ring pool_id expected 0, seen {}", sb.pool_id.get()));
        }
        Some(RegionType::PayloadPool) if sb.pool_id.get() == 0 => {
            problems.push("payload pool pool_id expected 1..=65535, seen 0".to_owned());
        }
        _ => {}
    }
    if sb.activity_timestamp_ns.get() < sb.start_timestamp_ns.get() {
        problems.push(format!(
            "activity_timestamp_ns expected at least start_timestamp_ns {}, seen {}",
            sb.start_timestamp_ns.get(),
            sb.activity_timestamp_ns.get()
        ));
    }

    let slots = (region == Some(RegionType::HeaderRing))
        .then(|| decode_slots(src, sb.nslots.get(), file_len, max_slots, pool_strides));
    Ok(RegionReport {
        source: source_name,
        file_len,
        superblock,
        kind,
        expected_len,
        problems,
        slots,
    })
}

fn decode_slots(
    src: &dyn Source,
    nslots: u32,
    file_len: u64,
    max_slots: usize,
    pool_strides: Option<&[PoolSpec]>,
) -> SlotsReport {
    let in_file = file_len.saturating_sub(SUPERBLOCK_BYTES as u64) / SLOT_BYTES as u64;
    let readable = in_file
        .min(u64::from(nslots))
        .min((src.len().saturating_sub(SUPERBLOCK_BYTES as u64)) / SLOT_BYTES as u64);
    // Bounded by `max_slots` and by the mapped bytes, so the list never outgrows either.
    let read = usize::try_from(readable).unwrap_or(usize::MAX).min(max_slots);
    let mut notes = Vec::new();
    if in_file < u64::from(nslots) {
        notes.push(format!(
            "the file holds {in_file} whole slots of the {nslots} the superblock claims"
        ));
    }
    if (read as u64) < in_file.min(u64::from(nslots)) {
        notes.push(format!(
            "showing the first {read} of {} slots (slot limit {max_slots})",
            in_file.min(u64::from(nslots))
        ));
    }
    if pool_strides.is_none() {
        notes
            .push("no pool strides known: pool_id and values_len_bytes are not checked".to_owned());
    }
    let mut counts = SlotCounts::default();
    let mut list = Vec::with_capacity(read);
    for index in 0..read {
        // `read` <= nslots <= u32::MAX.
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let slot = decode_slot(src, index, nslots, pool_strides);
        match (slot.state, slot.valid) {
            (SlotState::Empty, _) => counts.empty += 1,
            (SlotState::InProgress, _) => counts.in_progress += 1,
            (SlotState::Changed, _) => counts.changed += 1,
            (SlotState::Committed, Some(true)) => counts.valid += 1,
            (SlotState::Committed, _) => counts.invalid += 1,
        }
        list.push(slot);
    }
    SlotsReport { nslots, in_file, read, counts, notes, list }
}

fn decode_slot(
    src: &dyn Source,
    index: u32,
    nslots: u32,
    pool_strides: Option<&[PoolSpec]>,
) -> SlotReport {
    let offset = shm::slot_offset(index);
    let mut image = [0u8; SLOT_BYTES];
    // The seqlock reader's recipe, with relaxed loads only (what read-only memory allows):
    // load seq_commit, fence, copy, fence, load seq_commit again.
    let first = src.load_u64(offset);
    // SYNC: pairs with the writer's Release store of the committed seq_commit: after it, the
    // copy sees that claim's header words.
    fence(Ordering::Acquire);
    let copied = src.load(offset, &mut image);
    // SYNC: pairs with the writer's fence(Release) after its in-progress mark: if the copy
    // saw any word of a later claim, the second load sees that claim's mark.
    fence(Ordering::Acquire);
    let second = src.load_u64(offset);
    let stable = copied && first.is_some() && first == second;
    let seq_commit = first.unwrap_or(0);
    image[..8].copy_from_slice(&seq_commit.to_le_bytes());
    // 256 bytes always make a slot header.
    let header = SlotHeader::read_from_bytes(&image).unwrap_or_else(|_| SlotHeader::new_zeroed());
    let state = if !stable {
        SlotState::Changed
    } else if seq_commit == 0 {
        SlotState::Empty
    } else if shm::is_committed(seq_commit) {
        SlotState::Committed
    } else {
        SlotState::InProgress
    };
    let seq = shm::seq_of(seq_commit);
    let (valid, reason) = if state == SlotState::Committed {
        match check_committed(&header, index, seq, nslots, pool_strides) {
            Ok(()) => (Some(true), None),
            Err(reason) => (Some(false), Some(reason)),
        }
    } else {
        (None, None)
    };
    let t = &header.tensor;
    let n = usize::from(t.ndims).min(MAX_DIMS);
    SlotReport {
        index,
        state,
        seq_commit,
        seq,
        values_len_bytes: header.values_len_bytes.get(),
        payload_slot: header.payload_slot.get(),
        pool_id: header.pool_id.get(),
        payload_offset: header.payload_offset.get(),
        timestamp_ns: header.timestamp_ns.get(),
        meta_version: header.meta_version.get(),
        header_bytes_len: header.header_bytes_len.get(),
        tensor: TensorReport {
            block_length: t.message_header.block_length.get(),
            template_id: t.message_header.template_id.get(),
            schema_id: t.message_header.schema_id.get(),
            version: t.message_header.version.get(),
            dtype: t.dtype.get(),
            dtype_name: Dtype::try_from(t.dtype.get()).ok().map(name_of),
            major_order: t.major_order.get(),
            major_order_name: MajorOrder::try_from(t.major_order.get()).ok().map(name_of),
            ndims: t.ndims,
            progress_unit: t.progress_unit,
            progress_unit_name: ProgressUnit::try_from(t.progress_unit).ok().map(name_of),
            progress_stride_bytes: t.progress_stride_bytes.get(),
            dims: t.dims[..n].iter().map(|d| d.get()).collect(),
            strides: t.strides[..n].iter().map(|s| s.get()).collect(),
        },
        all_zero: stable && image.iter().all(|&b| b == 0),
        valid,
        reason,
    }
}

/// The checks a consumer runs on a committed slot (rings' validation), plus where the seq
/// belongs.
fn check_committed(
    header: &SlotHeader,
    index: u32,
    seq: u64,
    nslots: u32,
    pool_strides: Option<&[PoolSpec]>,
) -> Result<(), String> {
    if nslots.is_power_of_two() {
        let home = shm::header_index(seq, nslots);
        if home != index {
            return Err(format!("seq {seq} belongs in slot {home}, seen in slot {index}"));
        }
    }
    let stride_of = |pool_id: u16| match pool_strides {
        Some(pools) => pools.iter().find(|p| p.pool_id == pool_id).map(|p| p.stride_bytes),
        // Unknown pools: accept any id and any length (said in a note).
        None => Some(u32::MAX),
    };
    header.validate(index, nslots, stride_of).map(|_| ()).map_err(|e| e.to_string())
}

fn name_of(value: impl fmt::Debug) -> String {
    format!("{value:?}").to_lowercase()
}

impl fmt::Display for RegionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sb = &self.superblock;
        let kind = match self.kind {
            RegionKind::HeaderRing => "header ring",
            RegionKind::PayloadPool => "payload pool",
            RegionKind::Unknown => "unknown region type",
        };
        writeln!(f, "{} ({} bytes): {kind}", self.source, self.file_len)?;
        let magic_note = if sb.magic_ok { "ok" } else { "BAD" };
        let expected = match self.expected_len {
            Some(n) => n.to_string(),
            None => "unknown".to_owned(),
        };
        let fields: [(&str, String); 14] = [
            ("magic", format!("{:#018x} ({magic_note})", sb.magic)),
            ("layout_version", sb.layout_version.to_string()),
            ("epoch", sb.epoch.to_string()),
            ("stream_id", sb.stream_id.to_string()),
            ("region_type", format!("{} ({kind})", sb.region_type)),
            ("pool_id", sb.pool_id.to_string()),
            ("nslots", sb.nslots.to_string()),
            ("slot_bytes", format!("{} ({:#x})", sb.slot_bytes, sb.slot_bytes)),
            ("stride_bytes", sb.stride_bytes.to_string()),
            ("pid", sb.pid.to_string()),
            ("start_timestamp_ns", sb.start_timestamp_ns.to_string()),
            ("activity_timestamp_ns", sb.activity_timestamp_ns.to_string()),
            ("layout length", expected),
            ("file length", self.file_len.to_string()),
        ];
        for (name, value) in fields {
            writeln!(f, "  {name:<22} {value}")?;
        }
        if self.problems.is_empty() {
            writeln!(f, "verdict: ok")?;
        } else {
            writeln!(f, "verdict: {} problem(s)", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
        }
        if let Some(slots) = &self.slots {
            slots.fmt(f)?;
        }
        Ok(())
    }
}

impl fmt::Display for SlotsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "slots: {} read of {}: {} valid, {} invalid, {} in progress, {} empty, {} changed while read",
            self.read, self.nslots, c.valid, c.invalid, c.in_progress, c.empty, c.changed
        )?;
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        if self.list.is_empty() {
            return Ok(());
        }
        let header = [
            "index",
            "state",
            "seq",
            "values_len",
            "payload_slot",
            "pool",
            "offset",
            "timestamp_ns",
            "meta",
            "dtype",
            "order",
            "ndims",
            "dims",
            "strides",
            "progress",
            "verdict",
        ];
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut i = 0;
        while i < self.list.len() {
            let s = &self.list[i];
            // Runs of untouched slots fold into one line.
            let run = self.list[i..].iter().take_while(|s| s.all_zero).count();
            if run > 1 {
                let last = self.list[i + run - 1].index;
                let mut row = vec![format!("{}-{last}", s.index), "empty".to_owned()];
                row.resize(header.len() - 1, String::new());
                row.push(format!("{run} slots, all bytes zero"));
                rows.push(row);
                i += run;
                continue;
            }
            rows.push(slot_row(s));
            i += 1;
        }
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let mut line = String::new();
        let mut emit = |cells: &mut dyn Iterator<Item = &str>, f: &mut fmt::Formatter<'_>| {
            line.clear();
            for (n, (cell, w)) in cells.zip(&widths).enumerate() {
                if n + 1 == widths.len() {
                    line.push_str(cell);
                } else {
                    // Writing to a String cannot fail.
                    let _ = write!(line, "{cell:<w$}  ");
                }
            }
            writeln!(f, "  {}", line.trim_end())
        };
        emit(&mut header.iter().copied(), f)?;
        for row in &rows {
            emit(&mut row.iter().map(String::as_str), f)?;
        }
        Ok(())
    }
}

fn slot_row(s: &SlotReport) -> Vec<String> {
    let t = &s.tensor;
    let state = match s.state {
        SlotState::Empty => "empty",
        SlotState::InProgress => "in-progress",
        SlotState::Committed => "committed",
        SlotState::Changed => "changed",
    };
    let list =
        |v: &[i32]| format!("[{}]", v.iter().map(i32::to_string).collect::<Vec<_>>().join(","));
    let named = |raw: String, name: &Option<String>| match name {
        Some(name) => name.clone(),
        None => format!("?{raw}"),
    };
    let verdict = match (s.valid, &s.reason) {
        (Some(true), _) => "valid".to_owned(),
        (Some(false), Some(reason)) => format!("invalid: {reason}"),
        _ if s.state == SlotState::Changed => "changed while read (not decoded)".to_owned(),
        _ => "-".to_owned(),
    };
    vec![
        s.index.to_string(),
        state.to_owned(),
        s.seq.to_string(),
        s.values_len_bytes.to_string(),
        s.payload_slot.to_string(),
        s.pool_id.to_string(),
        s.payload_offset.to_string(),
        s.timestamp_ns.to_string(),
        s.meta_version.to_string(),
        named(t.dtype.to_string(), &t.dtype_name),
        named(t.major_order.to_string(), &t.major_order_name),
        t.ndims.to_string(),
        list(&t.dims),
        list(&t.strides),
        format!(
            "{}/{}",
            named(t.progress_unit.to_string(), &t.progress_unit_name),
            t.progress_stride_bytes
        ),
        verdict,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Mapping;
    use crate::rings::seqlock::{Publisher, Stream, StreamSpec};
    use crate::rings::shm::TensorHeader;

    /// A header ring and pool in memfds, `frames` frames published, and the files' bytes.
    fn ring_with_frames(frames: u64) -> (Vec<u8>, Vec<u8>) {
        let spec = StreamSpec {
            epoch: 77,
            stream_id: 9,
            nslots: 4,
            pools: vec![PoolSpec { pool_id: 1, stride_bytes: 64 }],
        };
        let (header, header_fd) =
            Mapping::sealed_memfd("inspect-test", shm::header_ring_len(4) as usize).unwrap();
        let (pool, pool_fd) =
            Mapping::sealed_memfd("inspect-test", shm::payload_pool_len(4, 64) as usize).unwrap();
        let stream = Stream::create(&spec, &header, vec![&pool], 4242, 1000).unwrap();
        let mut publisher = Publisher::new(stream).unwrap();
        for _ in 0..frames {
            let tensor = TensorHeader::new(
                Dtype::Float32,
                MajorOrder::Row,
                &[2, 3],
                &[],
                ProgressUnit::None,
                0,
            )
            .unwrap();
            let mut claim = publisher.claim(24).unwrap();
            claim.write_payload(&[1; 24]);
            claim.finish(tensor, 5, 0).commit();
        }
        drop(publisher);
        let read = |fd: std::os::fd::OwnedFd| {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut File::from(fd), &mut out).unwrap();
            out
        };
        (read(header_fd), read(pool_fd))
    }

    #[test]
    fn decodes_a_ring_written_by_the_publisher() {
        let (header, pool) = ring_with_frames(2);
        let opts = InspectOptions {
            pool_strides: Some(vec![PoolSpec { pool_id: 1, stride_bytes: 64 }]),
            ..InspectOptions::default()
        };
        let report = decode_region(&header, &opts).unwrap();
        assert_eq!(report.kind, RegionKind::HeaderRing);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert!(report.superblock.magic_ok);
        assert_eq!(report.superblock.epoch, 77);
        assert_eq!(report.superblock.pid, 4242);
        let slots = report.slots.as_ref().unwrap();
        assert_eq!(slots.read, 4);
        assert_eq!(slots.counts, SlotCounts { valid: 2, empty: 2, ..SlotCounts::default() });
        let s1 = &slots.list[1];
        assert_eq!((s1.state, s1.seq, s1.seq_commit), (SlotState::Committed, 1, 3));
        assert_eq!(s1.values_len_bytes, 24);
        assert_eq!(s1.tensor.dtype_name.as_deref(), Some("float32"));
        assert_eq!(s1.tensor.dims, [2, 3]);
        assert_eq!(s1.valid, Some(true));
        let text = report.to_string();
        assert!(text.contains("verdict: ok"), "{text}");
        assert!(text.contains("2-3"), "empty run folded: {text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["slots"]["list"][1]["state"], "committed");
        assert_eq!(json["kind"], "header_ring");

        let report = decode_region(&pool, &InspectOptions::default()).unwrap();
        assert_eq!(report.kind, RegionKind::PayloadPool);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert!(report.slots.is_none());
    }

    #[test]
    fn invalid_and_misplaced_slots_get_a_reason() {
        let (mut header, _) = ring_with_frames(1);
        // Slot 0: payload_offset at slot offset 18 made non-zero.
        header[64 + 18] = 1;
        // Slot 2: committed seq 1 (belongs in slot 1).
        let at = 64 + 2 * 256;
        header[at..at + 8].copy_from_slice(&3u64.to_le_bytes());
        // Slot 3: in progress.
        let at = 64 + 3 * 256;
        header[at..at + 8].copy_from_slice(&6u64.to_le_bytes());
        let report = decode_region(&header, &InspectOptions::default()).unwrap();
        let slots = report.slots.unwrap();
        assert_eq!(slots.list[0].reason.as_deref(), Some("payload_offset expected 0, seen 1"));
        assert_eq!(
            slots.list[2].reason.as_deref(),
            Some("seq 1 belongs in slot 1, seen in slot 2")
        );
        assert_eq!(slots.list[3].state, SlotState::InProgress);
        assert_eq!(slots.list[3].seq, 3);
        assert!(slots.notes.iter().any(|n| n.contains("not checked")), "{:?}", slots.notes);
    }

    #[test]
    fn hostile_superblocks_are_verdicts_not_panics() {
        let (mut header, _) = ring_with_frames(0);
        header[..8].copy_from_slice(b"TPOLSHM1");
        // nslots = 2^31: far more than the file holds.
        header[28..32].copy_from_slice(&(1u32 << 31).to_le_bytes());
        let report = decode_region(&header, &InspectOptions::default()).unwrap();
        assert!(!report.superblock.magic_ok);
        assert!(report.problems.iter().any(|p| p.contains("magic")), "{:?}", report.problems);
        let slots = report.slots.unwrap();
        assert_eq!(slots.read, 4, "only what the file holds");
        assert!(slots.notes[0].contains("holds 4 whole slots"), "{:?}", slots.notes);

        let err = decode_region(&header[..63], &InspectOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), "<bytes>: expected at least 64 bytes (a superblock), seen 63");

        let limited = InspectOptions { max_slots: 1, ..InspectOptions::default() };
        let (header, _) = ring_with_frames(0);
        let slots = decode_region(&header, &limited).unwrap().slots.unwrap();
        assert_eq!((slots.read, slots.list.len()), (1, 1));
        assert!(
            slots.notes.iter().any(|n| n.contains("showing the first 1 of 4")),
            "{:?}",
            slots.notes
        );

        let mut odd = header.clone();
        odd[24..26].copy_from_slice(&7i16.to_le_bytes());
        let report = decode_region(&odd, &InspectOptions::default()).unwrap();
        assert_eq!(report.kind, RegionKind::Unknown);
        assert!(report.slots.is_none());
        assert!(report.problems.iter().any(|p| p.contains("region_type")), "{:?}", report.problems);
    }

    #[test]
    fn a_file_longer_than_its_layout_is_a_problem() {
        let (mut header, _) = ring_with_frames(0);
        header.extend_from_slice(&[0; 8]);
        let report = decode_region(&header, &InspectOptions::default()).unwrap();
        assert!(
            report.problems.iter().any(|p| p.contains("expected exactly 1088 bytes, seen 1096")),
            "{:?}",
            report.problems
        );
    }
}
