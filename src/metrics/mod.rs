//! Metrics: a counters file in shared memory, its reader, a Prometheus `/metrics` endpoint, HDR
//! latency histograms published as summaries, and logging setup.
//!
//! # How the pieces fit
//!
//! At startup the agents describe their counters to a [`Registry`] (a [`CounterSpec`] each: the
//! metric family name, its labels, a help text, counter or gauge, and its [`Unit`]), and their
//! latency distributions as summaries ([`Registry::register_summary`]). The registry holds every
//! family to the rules of the exposition format (one kind, help text and unit per name,
//! counters ending in `_total`, times in `_seconds`). [`Registry::create`] writes
//! the **counters file** into the runtime directory and hands out a [`Counter`] per record: a
//! cheap `Clone + Send + Sync` handle whose `add`, `inc`, `set` and `get` are one relaxed atomic
//! instruction each on the shared mapping. Lanes own their counters; nothing is locked, nothing
//! allocates, nothing is formatted on a lane.
//!
//! Other processes (`corelane top`) map the same file read-only with [`CountersReader::open`],
//! which validates it completely before use, and read [`Sample`]s. The daemon serves its own
//! mapping through [`CountersFile::reader`] and a [`MetricsServer`] on a plain, unpinned std
//! thread. A lane measures latencies with a [`LatencyRecorder`] and publishes p50, p99, p99.9,
//! max, sum and count into a [`Summary`] every publish interval, as one window: the summary's
//! window word is a sequence lock, so a reader never mixes two publishes.
//!
//! # The counters file (layout version 3)
//!
//! One definition: [`CountersHeader`] and [`CounterRecord`] (`#[repr(C)]`, little-endian,
//! alignment 1, with size and offset tests). The file is exactly
//! `HEADER_BYTES + record_count * RECORD_BYTES` bytes, mode 0600, and is mapped shared.
//!
//! Header, 128 bytes at offset 0:
//!
//! | offset | size | field | meaning |
//! |---:|---:|---|---|
//! | 0 | 8 | `magic` | [`MAGIC`], on disk the ASCII bytes `CORELCTR` |
//! | 8 | 4 | `layout_version` | [`LAYOUT_VERSION`] (3) |
//! | 12 | 4 | `header_bytes` | [`HEADER_BYTES`] (128): where record 0 starts |
//! | 16 | 4 | `record_count` | number of records N |
//! | 20 | 4 | `record_bytes` | [`RECORD_BYTES`] (256) |
//! | 24 | 8 | `pid` | pid of the daemon that created the file |
//! | 32 | 8 | `start_monotonic_ns` | creation time, `CLOCK_MONOTONIC` ns |
//! | 40 | 8 | `start_realtime_ns` | creation time, `CLOCK_REALTIME` ns since the Unix epoch |
//! | 48 | 8 | `state` | the ready word, accessed atomically: 0 being written, 1 live, 2 closed ([`FileState`]) |
//! | 56 | 8 | `heartbeat_ns` | `CLOCK_MONOTONIC` ns of the last publish, accessed atomically (the daemon beats once at creation, then every publish) |
//! | 64 | 8 | `publish_interval_ms` | the publish interval, accessed atomically; 0: no heartbeat publisher |
//! | 72 | 56 | reserved | zero |
//!
//! Record `i`, 256 bytes at offset `128 + 256 * i`:
//!
//! | offset | size | field | meaning |
//! |---:|---:|---|---|
//! | 0 | 8 | `value` | the value, a `u64` accessed atomically (native order: little-endian) |
//! | 8 | 1 | `kind` | 1 counter, 2 gauge, 3 summary window, 4 summary quantile, 5 summary sum, 6 summary count ([`CounterKind`]) |
//! | 9 | 1 | `name_len` | bytes of `name` used, 1..=[`NAME_CAP`] |
//! | 10 | 1 | `help_len` | bytes of `help` used, 0..=[`HELP_CAP`] |
//! | 11 | 1 | `unit` | 0 a plain number, 1 nanoseconds exposed in seconds ([`Unit`]) |
//! | 12 | 4 | reserved | zero |
//! | 16 | 112 | `name` | the full series in exposition syntax, label values escaped: `corelane_lane_passes_total{lane="main"}` (UTF-8, zero padded) |
//! | 128 | 128 | `help` | help text of the family, raw UTF-8 without control characters (zero padded) |
//!
//! Each value sits alone on its own 128-byte line pair (the rest of a record is metadata that is
//! never written after publication), so two lanes' counters never share a cache line.
//!
//! # Publication protocol
//!
//! The daemon writes the whole file under a temporary name (`<name>.<pid>.tmp`), with `state` 0,
//! then stores `state = 1` with Release and renames the file over its final path. A reader that
//! opens the final path therefore sees a complete file; it still loads `state` (Relaxed, then an
//! Acquire fence: std promises only Relaxed loads on a read-only mapping) before it trusts the
//! header and the records. The three header words stored after publication (state, heartbeat,
//! interval) and every record's value are only ever loaded atomically; the rest is copied.
//! [`CountersReader::liveness`] calls a file stale after three publish intervals (at least 1 s)
//! without a beat, and [`CountersReader::is_replaced`] compares device and inode with the path. Renaming (rather than truncating in place) also means a
//! reader still mapping the previous daemon's file keeps valid memory instead of taking SIGBUS.
//! [`CountersFile::remove`] stores `state = 2` and unlinks the file at shutdown; nothing is
//! removed on drop.
//!
//! Values are written with relaxed `fetch_add`/`store`: each counter has one writer lane, readers
//! want a recent value and nothing else is published through them. `fetch_add` is used anyway, so
//! two writers sharing a counter by mistake cannot lose counts.
//!
//! # Summaries
//!
//! A summary is a block of consecutive records: the window word (kind 3, series
//! `family{labels}`), one record per quantile (kind 4, `family{labels,quantile="q"}`), the sum
//! (kind 5, `family_sum{labels}`) and the count (kind 6, `family_count{labels}`). Its one writer
//! publishes a window as a sequence lock: window word to odd (Relaxed), Release fence, the
//! values (Relaxed), window word to the next even value (Release). A reader loads the word
//! (Relaxed, then an Acquire fence), the values, an Acquire fence and the word again, and keeps
//! the values only if both loads read the same even word (else it retries, and after a few
//! failed tries leaves the summary out of that snapshot). [`CountersReader::open`] checks the
//! block structure. Quantiles describe the latest window; sum and count are cumulative, as
//! Prometheus expects.

mod exposition;
mod file;
mod latency;
mod layout;
mod logging;
mod map;
mod reader;
mod series;
mod server;

pub use exposition::render;
pub use file::{
    monotonic_ns, Counter, CounterId, CounterSpec, CountersFile, Heartbeat, Registry, Summary,
    SummaryIds,
};
pub use latency::{LatencyRecorder, QUANTILES};
pub use layout::{
    CounterRecord, CountersHeader, FileState, HEADER_BYTES, HELP_CAP, LAYOUT_VERSION, MAGIC,
    NAME_CAP, RECORD_BYTES,
};
pub use logging::{init_logging, LOG_ENV};
pub use reader::{CountersInfo, CountersReader, Liveness, Sample};
pub use series::{escape_label_value, series_name};
pub use server::{MetricsServer, MetricsSource, ServerConfig};

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

// The counters file stores its words little-endian and readers load values with pointer-sized
// atomic loads from a read-only mapping (which std permits for Relaxed/Acquire loads no larger
// than a pointer).
const _: () = assert!(
    cfg!(target_endian = "little") && cfg!(target_pointer_width = "64"),
    "the counters file needs a 64-bit little-endian target"
);

/// What a record is: a counter, a gauge, or one part of a summary.
///
/// A summary is a block of records registered together ([`Registry::register_summary`]): a
/// hidden window word (the block's sequence number, never exposed), its quantiles, its `_sum`
/// and its `_count`. The window word makes a reader see all of them from one publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CounterKind {
    /// Only goes up (`add`, `inc`, or `set` to a cumulative value); Prometheus `counter`. Names
    /// end in `_total` (the registry refuses others).
    Counter,
    /// Set to the current value (`set`); Prometheus `gauge`.
    Gauge,
    /// A summary's window word: odd while the publisher writes the block, even in between.
    SummaryWindow,
    /// A summary's quantile (series `family{...,quantile="q"}`).
    SummaryQuantile,
    /// A summary's sum of observations (series `family_sum{...}`).
    SummarySum,
    /// A summary's count of observations (series `family_count{...}`).
    SummaryCount,
}

impl CounterKind {
    /// The byte stored in a record's `kind` field.
    pub const fn to_byte(self) -> u8 {
        match self {
            Self::Counter => 1,
            Self::Gauge => 2,
            Self::SummaryWindow => 3,
            Self::SummaryQuantile => 4,
            Self::SummarySum => 5,
            Self::SummaryCount => 6,
        }
    }

    /// The kind stored as `byte`, if it is one.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Counter),
            2 => Some(Self::Gauge),
            3 => Some(Self::SummaryWindow),
            4 => Some(Self::SummaryQuantile),
            5 => Some(Self::SummarySum),
            6 => Some(Self::SummaryCount),
            _ => None,
        }
    }

    /// The word on the family's Prometheus `# TYPE` line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::SummaryWindow | Self::SummaryQuantile | Self::SummarySum | Self::SummaryCount => {
                "summary"
            }
        }
    }

    /// Whether this is a part of a summary (window, quantile, sum or count).
    pub const fn is_summary(self) -> bool {
        !matches!(self, Self::Counter | Self::Gauge)
    }
}

/// The unit a record's integer value is kept in, and so how it is exposed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Unit {
    /// A plain number, exposed as the integer.
    #[default]
    None,
    /// Nanoseconds, exposed in seconds (the value divided by 10^9); the family name says
    /// `seconds` (the registry refuses others).
    Nanoseconds,
}

impl Unit {
    /// The byte stored in a record's `unit` field.
    pub const fn to_byte(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Nanoseconds => 1,
        }
    }

    /// The unit stored as `byte`, if it is one.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::None),
            1 => Some(Self::Nanoseconds),
            _ => None,
        }
    }
}

/// Everything that can go wrong creating, opening or serving metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("create", "map", "rename", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Mapping anonymous memory for an in-memory counters file failed.
    #[error("cannot map {len} bytes of anonymous memory for counters: {source}")]
    MapAnonymous {
        /// Bytes requested.
        len: usize,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A metric family name is not `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("metric name {name:?} is invalid: expected [a-zA-Z_:][a-zA-Z0-9_:]*")]
    InvalidMetricName {
        /// The name given.
        name: String,
    },
    /// A label name is not `[a-zA-Z_][a-zA-Z0-9_]*`, or starts with the reserved `__`.
    #[error("label name {label:?} of metric {metric:?} is invalid: expected [a-zA-Z_][a-zA-Z0-9_]* not starting with __")]
    InvalidLabelName {
        /// The metric family.
        metric: String,
        /// The label name given.
        label: String,
    },
    /// A label name appears twice in one series.
    #[error("label {label:?} appears twice in metric {metric:?}")]
    DuplicateLabel {
        /// The metric family.
        metric: String,
        /// The repeated label name.
        label: String,
    },
    /// The series text (family plus escaped labels) does not fit a record.
    #[error("series {series:?} is {len} bytes, more than the {max} a record holds")]
    NameTooLong {
        /// The series text.
        series: String,
        /// Its length in bytes.
        len: usize,
        /// [`NAME_CAP`].
        max: usize,
    },
    /// A help text does not fit a record.
    #[error("help text of {series:?} is {len} bytes, more than the {max} a record holds")]
    HelpTooLong {
        /// The series.
        series: String,
        /// The help text's length in bytes.
        len: usize,
        /// [`HELP_CAP`].
        max: usize,
    },
    /// A help text contains a control character.
    #[error("help text of {series:?} contains a control character; expected printable text")]
    InvalidHelp {
        /// The series.
        series: String,
    },
    /// A family breaks a rule of the exposition format: two kinds, help texts or units under
    /// one name, a counter not ending in `_total`, a time not in seconds, or a summary part
    /// registered on its own.
    #[error("metric {family:?}: {reason}")]
    BadFamily {
        /// The family name.
        family: String,
        /// The rule broken.
        reason: String,
    },
    /// Two specs describe the same series.
    #[error("series {series:?} is registered twice")]
    DuplicateSeries {
        /// The series text.
        series: String,
    },
    /// More records than the header's `u32` count can hold.
    #[error("{count} counters are more than a counters file holds ({max})")]
    TooManyRecords {
        /// Records requested.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// The file is shorter than the header.
    #[error("counters file {} is {len} bytes, shorter than its {min}-byte header", path.display())]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// [`HEADER_BYTES`].
        min: usize,
    },
    /// The file does not start with [`MAGIC`].
    #[error("{} is not a counters file: magic is {found:#018x}, expected {expected:#018x}", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic found.
        found: u64,
        /// [`MAGIC`].
        expected: u64,
    },
    /// The file has a layout version this build does not read.
    #[error("counters file {} has layout version {found}, this build reads version {expected}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// [`LAYOUT_VERSION`].
        expected: u32,
    },
    /// A header geometry field disagrees with the layout version.
    #[error("counters file {} has {field} {found}, expected {expected}", path.display())]
    BadGeometry {
        /// The file.
        path: PathBuf,
        /// `header_bytes` or `record_bytes`.
        field: &'static str,
        /// The value found.
        found: u32,
        /// The value the layout version fixes.
        expected: u32,
    },
    /// The file length does not match `header + record_count * record_bytes`.
    #[error("counters file {} is {file_len} bytes, but its header declares {records} records, which need {expected_len} bytes", path.display())]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// The header's record count.
        records: u32,
        /// The length those records need.
        expected_len: u64,
        /// The file's actual length.
        file_len: u64,
    },
    /// The file's state word is not a known state.
    #[error("counters file {} has state {found}, expected 0 (being written), 1 (live) or 2 (closed)", path.display())]
    BadState {
        /// The file.
        path: PathBuf,
        /// The state found.
        found: u64,
    },
    /// The daemon has not finished writing the file (state 0): retry shortly.
    #[error("counters file {} is still being written (state 0); retry", path.display())]
    NotReady {
        /// The file.
        path: PathBuf,
    },
    /// A record's metadata is malformed.
    #[error("counters file {} record {index} is corrupt: {reason}", path.display())]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// Index of the record.
        index: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// The `/metrics` listener could not be bound.
    #[error("cannot listen for /metrics on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The metrics server thread could not be started.
    #[error("cannot start the metrics server thread: {source}")]
    Spawn {
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A log filter does not parse.
    #[error("log filter {filter:?} from {origin} is invalid: {reason}")]
    LogFilter {
        /// Where it came from: the `CORELANE_LOG` variable or the configuration.
        origin: &'static str,
        /// The filter text.
        filter: String,
        /// The parser's complaint.
        reason: String,
    },
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod server_tests;
