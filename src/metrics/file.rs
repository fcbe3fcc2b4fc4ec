//! The daemon's side of the counters file: [`Registry`], [`CountersFile`], [`Counter`].

use core::fmt;
use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::{MmapMut, MmapOptions};
use zerocopy::IntoBytes;

use super::layout::{
    file_len, value_offset, CounterRecord, CountersHeader, FileState, HEADER_BYTES,
    HEARTBEAT_OFFSET, HELP_CAP, INTERVAL_OFFSET, LAYOUT_VERSION, MAGIC, NAME_CAP, RECORD_BYTES,
    STATE_OFFSET,
};
use super::map::Mapping;
use super::reader::{CountersInfo, CountersReader, RecordMeta};
use super::series::{is_valid_help, series_name};
use super::{CounterKind, MetricsError, Unit};

/// Describes one counter or gauge to allocate at startup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterSpec<'a> {
    /// Metric family name, `[a-zA-Z_:][a-zA-Z0-9_:]*`; counters conventionally end in `_total`.
    pub name: &'a str,
    /// Label pairs, in the order they are written; values may hold any text (they are escaped).
    pub labels: &'a [(&'a str, &'a str)],
    /// One-line help text of the family, at most [`HELP_CAP`] bytes, no control characters.
    pub help: &'a str,
    /// Counter or gauge (summaries are registered with [`Registry::register_summary`]).
    pub kind: CounterKind,
    /// The unit the value is kept in.
    pub unit: Unit,
}

impl<'a> CounterSpec<'a> {
    /// A counter (only goes up); the name ends in `_total`.
    pub const fn counter(name: &'a str, labels: &'a [(&'a str, &'a str)], help: &'a str) -> Self {
        Self { name, labels, help, kind: CounterKind::Counter, unit: Unit::None }
    }

    /// A gauge (set to a current value).
    pub const fn gauge(name: &'a str, labels: &'a [(&'a str, &'a str)], help: &'a str) -> Self {
        Self { name, labels, help, kind: CounterKind::Gauge, unit: Unit::None }
    }

    /// The same spec with its value kept in nanoseconds and exposed in seconds (the name says
    /// `seconds`, e.g. `corelane_lane_idle_seconds_total`).
    pub const fn in_nanoseconds(self) -> Self {
        Self { unit: Unit::Nanoseconds, ..self }
    }
}

/// The records of one summary, reserved with [`Registry::register_summary`]: a window word,
/// the quantiles, the sum and the count, consecutive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryIds {
    /// The window word's record; the quantiles, sum and count follow it.
    window: CounterId,
    /// Number of quantiles.
    quantiles: u32,
}

impl SummaryIds {
    /// Number of quantiles the summary has.
    pub const fn quantiles(self) -> usize {
        self.quantiles as usize
    }
}

/// What the registry knows about one exposition name: what it is, its help and its unit.
#[derive(Debug, PartialEq, Eq)]
struct FamilyRule {
    /// `counter`, `gauge`, `summary`, or `summary part` for a summary's `_sum`/`_count` name.
    class: &'static str,
    help: String,
    unit: Unit,
}

/// Which record of a [`CountersFile`] a counter is: the order it was registered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterId(u32);

impl CounterId {
    /// The record index.
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The id of record `index` (the `index`-th spec given to [`CountersFile::create`]).
    ///
    /// # Panics
    /// If `index` does not fit a `u32` (no file has that many records).
    pub fn from_index(index: usize) -> Self {
        // A record count is a u32 in the header, so a larger index is a caller bug (documented).
        Self(u32::try_from(index).expect("counter index exceeds u32"))
    }
}

/// Collects the counters the agents need at startup, then creates the counters file.
///
/// ```no_run
/// use corelane::metrics::{CounterSpec, Registry};
/// # fn main() -> Result<(), corelane::metrics::MetricsError> {
/// let mut registry = Registry::new();
/// let passes = registry.register(CounterSpec::counter(
///     "corelane_lane_passes_total",
///     &[("lane", "main")],
///     "Passes of the lane loop.",
/// ))?;
/// let file = registry.create("/run/corelane/counters".as_ref())?;
/// let passes = file.counter(passes); // hand to the lane
/// passes.inc();
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Registry {
    records: Vec<RecordMeta>,
    seen: HashSet<String>,
    families: HashMap<String, FamilyRule>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates `spec` and reserves a record for it.
    ///
    /// # Errors
    /// A name, label or help text that is invalid or does not fit a record
    /// ([`NAME_CAP`], [`HELP_CAP`]), a series registered twice, or more than `u32::MAX` records.
    /// [`MetricsError::BadFamily`] if the family breaks a rule of the exposition format: a
    /// counter not ending in `_total`, a time unit other than seconds in the name
    /// (`_ns`, `_us`, `_ms`), [`Unit::Nanoseconds`] without `seconds` in the name, another kind,
    /// help text or unit than the family's earlier series, or a summary part (use
    /// [`register_summary`](Self::register_summary)).
    pub fn register(&mut self, spec: CounterSpec<'_>) -> Result<CounterId, MetricsError> {
        if spec.kind.is_summary() {
            return Err(bad_family(
                spec.name,
                "summary parts are registered with register_summary",
            ));
        }
        let meta = RecordMeta::from_spec(&spec)?;
        self.check_family(spec.name, spec.kind.as_str(), spec.help, spec.unit)?;
        let id = self.reserve(1)?;
        if !self.seen.insert(meta.series.clone()) {
            return Err(MetricsError::DuplicateSeries { series: meta.series });
        }
        self.claim(spec.name, spec.kind.as_str(), spec.help, spec.unit);
        self.records.push(meta);
        Ok(id)
    }

    /// Reserves a summary `name{labels}` of latencies kept in nanoseconds and exposed in
    /// seconds: a window word, one record per quantile of `quantiles` (`(q, label)`, e.g.
    /// [`QUANTILES`](super::QUANTILES)), `name_sum` and `name_count`. Publish into it with a
    /// [`Summary`] ([`CountersFile::summary`]).
    ///
    /// # Errors
    /// As [`register`](Self::register) (the name must say `seconds`); a `quantile` label in
    /// `labels` is a [`MetricsError::DuplicateLabel`]; no quantiles, or a `q` outside 0..=1, is
    /// a [`MetricsError::BadFamily`].
    pub fn register_summary(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        help: &str,
        quantiles: &[(f64, &str)],
    ) -> Result<SummaryIds, MetricsError> {
        if quantiles.is_empty() || quantiles.iter().any(|(q, _)| !(0.0..=1.0).contains(q)) {
            return Err(bad_family(name, "a summary needs quantiles in 0..=1"));
        }
        let sum = format!("{name}_sum");
        let count = format!("{name}_count");
        let spec = |name, labels, kind, unit| CounterSpec { name, labels, help, kind, unit };
        let mut metas = vec![RecordMeta::from_spec(&spec(
            name,
            labels,
            CounterKind::SummaryWindow,
            Unit::None,
        ))?];
        let mut with_quantile = Vec::with_capacity(labels.len() + 1);
        with_quantile.extend_from_slice(labels);
        with_quantile.push(("quantile", ""));
        for (_, label) in quantiles {
            if let Some(last) = with_quantile.last_mut() {
                *last = ("quantile", label);
            }
            metas.push(RecordMeta::from_spec(&CounterSpec {
                name,
                labels: &with_quantile,
                help,
                kind: CounterKind::SummaryQuantile,
                unit: Unit::Nanoseconds,
            })?);
        }
        metas.push(RecordMeta::from_spec(&spec(
            &sum,
            labels,
            CounterKind::SummarySum,
            Unit::Nanoseconds,
        ))?);
        metas.push(RecordMeta::from_spec(&spec(
            &count,
            labels,
            CounterKind::SummaryCount,
            Unit::None,
        ))?);
        self.check_family(name, "summary", help, Unit::Nanoseconds)?;
        self.check_family(&sum, "summary part", help, Unit::Nanoseconds)?;
        self.check_family(&count, "summary part", help, Unit::Nanoseconds)?;
        let window = self.reserve(metas.len())?;
        if let Some(dup) = metas.iter().find(|m| self.seen.contains(&m.series)) {
            return Err(MetricsError::DuplicateSeries { series: dup.series.clone() });
        }
        self.claim(name, "summary", help, Unit::Nanoseconds);
        self.claim(&sum, "summary part", help, Unit::Nanoseconds);
        self.claim(&count, "summary part", help, Unit::Nanoseconds);
        for meta in metas {
            self.seen.insert(meta.series.clone());
            self.records.push(meta);
        }
        // quantiles.len() < records, which fit a u32 (checked by reserve).
        Ok(SummaryIds { window, quantiles: quantiles.len() as u32 })
    }

    /// The id the next record gets, if `n` more records fit the header's count.
    fn reserve(&self, n: usize) -> Result<CounterId, MetricsError> {
        let too_many = || MetricsError::TooManyRecords {
            count: self.records.len() + n,
            max: u32::MAX as usize,
        };
        u32::try_from(self.records.len() + n).map_err(|_| too_many())?;
        Ok(CounterId(self.records.len() as u32))
    }

    /// Checks the rules of the exposition format for `family` as a `class` with `help` and
    /// `unit`, against its name and what was registered under it before.
    fn check_family(
        &self,
        family: &str,
        class: &'static str,
        help: &str,
        unit: Unit,
    ) -> Result<(), MetricsError> {
        let tokens = || family.split('_');
        if class == "counter" && !family.ends_with("_total") {
            return Err(bad_family(family, "a counter's name ends in _total"));
        }
        if let Some(t) = tokens().find(|t| {
            matches!(*t, "ns" | "us" | "ms" | "nanoseconds" | "microseconds" | "milliseconds")
        }) {
            return Err(bad_family(
                family,
                &format!("time is exposed in seconds, not {t}: name it _seconds and keep the value in nanoseconds (Unit::Nanoseconds)"),
            ));
        }
        if unit == Unit::Nanoseconds && !tokens().any(|t| t == "seconds") {
            return Err(bad_family(
                family,
                "a value in nanoseconds is exposed in seconds: the name says seconds",
            ));
        }
        let Some(rule) = self.families.get(family) else { return Ok(()) };
        if rule.class != class {
            return Err(bad_family(
                family,
                &format!(
                    "registered as a {} before, now as a {class}: a name has one kind",
                    rule.class
                ),
            ));
        }
        if rule.help != help {
            return Err(bad_family(
                family,
                "registered with another help text before: a name has one",
            ));
        }
        if rule.unit != unit {
            return Err(bad_family(family, "registered with another unit before: a name has one"));
        }
        Ok(())
    }

    fn claim(&mut self, family: &str, class: &'static str, help: &str, unit: Unit) {
        self.families.entry(family.to_owned()).or_insert_with(|| FamilyRule {
            class,
            help: help.to_owned(),
            unit,
        });
    }

    /// Number of records registered (a summary takes quantiles + 3).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Writes the counters file at `path` (see [`CountersFile::create`]).
    ///
    /// # Errors
    /// As [`CountersFile::create`].
    pub fn create(self, path: &Path) -> Result<CountersFile, MetricsError> {
        CountersFile::build(self.records, Some(path))
    }

    /// Lays the counters out in anonymous memory instead of a file (see
    /// [`CountersFile::in_memory`]).
    ///
    /// # Errors
    /// As [`CountersFile::in_memory`].
    pub fn create_in_memory(self) -> Result<CountersFile, MetricsError> {
        CountersFile::build(self.records, None)
    }
}

/// The daemon's counters file: a published, shared mapping and the specs it was built from.
///
/// Dropping it keeps the file (and the mapping lives on while any [`Counter`] does); call
/// [`remove`](Self::remove) at shutdown.
pub struct CountersFile {
    map: Arc<Mapping>,
    records: Arc<[RecordMeta]>,
    info: CountersInfo,
    /// The file this process renamed into place, by device and inode (None: in memory).
    file: Option<crate::files::OwnedFile>,
}

impl CountersFile {
    /// Creates the counters file at `path`: mode 0600, exactly
    /// `HEADER_BYTES + specs.len() * RECORD_BYTES` bytes, record `i` describing `specs[i]` with
    /// value 0, published (state 1) and then renamed over `path`, replacing any previous file.
    ///
    /// # Errors
    /// An invalid spec (see [`Registry::register`]), or a failure to create, size, map or rename
    /// the file ([`MetricsError::Io`], naming the file).
    pub fn create(path: &Path, specs: &[CounterSpec<'_>]) -> Result<Self, MetricsError> {
        Self::build(Self::validate(specs)?, Some(path))
    }

    /// Lays the counters out in anonymous shared memory: the same layout and handles without a
    /// file, for tests and for runs that want no runtime directory. [`reader`](Self::reader)
    /// still reads it.
    ///
    /// # Errors
    /// An invalid spec, or [`MetricsError::MapAnonymous`].
    pub fn in_memory(specs: &[CounterSpec<'_>]) -> Result<Self, MetricsError> {
        Self::build(Self::validate(specs)?, None)
    }

    /// A handle on record `id`'s value, for the lane that owns it.
    ///
    /// # Panics
    /// If `id` is not a record of this file (an id from another registry).
    pub fn counter(&self, id: CounterId) -> Counter {
        assert!(
            id.index() < self.records.len(),
            "counter {} is not in a file of {} records",
            id.index(),
            self.records.len()
        );
        Counter { map: Arc::clone(&self.map), offset: value_offset(id.index()) }
    }

    /// A handle on the summary `ids`, for the lane that publishes it.
    ///
    /// # Panics
    /// If `ids` are not a summary of this file (ids from another registry).
    pub fn summary(&self, ids: SummaryIds) -> Summary {
        let first = ids.window.index();
        let last = first + ids.quantiles() + 2;
        assert!(
            last < self.records.len()
                && self.records[first].kind == CounterKind::SummaryWindow
                && self.records[last].kind == CounterKind::SummaryCount,
            "records {first}..={last} are not a summary of this file"
        );
        Summary { map: Arc::clone(&self.map), first, quantiles: ids.quantiles() }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the file has no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The file's path; `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(crate::files::OwnedFile::path)
    }

    /// The header facts written at creation.
    pub fn info(&self) -> CountersInfo {
        self.info
    }

    /// The handle the publisher beats at every publish, so readers can tell a dead daemon's
    /// file from a live one ([`CountersReader::liveness`]).
    pub fn heartbeat(&self) -> Heartbeat {
        Heartbeat { map: Arc::clone(&self.map) }
    }

    /// A reader over this process's own mapping (no second mapping, no re-validation): what the
    /// daemon's `/metrics` server serves from.
    pub fn reader(&self) -> CountersReader {
        CountersReader::from_parts(
            Arc::clone(&self.map),
            Arc::clone(&self.records),
            self.info,
            self.path().map(Path::to_owned),
        )
    }

    /// Marks the file closed (state 2; readers still mapping it see final values) and unlinks
    /// it if the path still names the file this process created (another daemon's file there
    /// is left alone). A file already gone is not an error. Counters stay usable (their
    /// mapping lives on).
    ///
    /// # Errors
    /// [`MetricsError::Io`] if the file exists but cannot be removed.
    pub fn remove(self) -> Result<(), MetricsError> {
        // SYNC: pairs with the Relaxed load + Acquire fence of the state word in
        // `CountersReader::state`.
        self.map.word(STATE_OFFSET).store(FileState::Closed.to_word(), Ordering::Release);
        match &self.file {
            Some(file) => match file.remove() {
                Ok(true) => Ok(()),
                Ok(false) => {
                    tracing::warn!(path = %file.path().display(), "counters file gone or replaced; left alone");
                    Ok(())
                }
                Err(source) => {
                    Err(MetricsError::Io { op: "remove", path: file.path().to_owned(), source })
                }
            },
            None => Ok(()),
        }
    }

    /// (Specs only: a file with summaries is made with a [`Registry`].)
    fn validate(specs: &[CounterSpec<'_>]) -> Result<Vec<RecordMeta>, MetricsError> {
        let mut registry = Registry::new();
        for spec in specs {
            registry.register(*spec)?;
        }
        Ok(registry.records)
    }

    #[cold]
    fn build(records: Vec<RecordMeta>, path: Option<&Path>) -> Result<Self, MetricsError> {
        let count = u32::try_from(records.len()).map_err(|_| MetricsError::TooManyRecords {
            count: records.len(),
            max: u32::MAX as usize,
        })?;
        let len = file_len(records.len());
        let info = CountersInfo {
            pid: u64::from(std::process::id()),
            start_monotonic_ns: monotonic_ns(),
            start_realtime_ns: realtime_ns(),
            records: count,
        };
        let header = CountersHeader {
            magic: MAGIC.into(),
            layout_version: LAYOUT_VERSION.into(),
            header_bytes: (HEADER_BYTES as u32).into(),
            record_count: count.into(),
            record_bytes: (RECORD_BYTES as u32).into(),
            pid: info.pid.into(),
            start_monotonic_ns: info.start_monotonic_ns.into(),
            start_realtime_ns: info.start_realtime_ns.into(),
            state: FileState::Writing.to_word().into(),
            heartbeat_ns: 0.into(),
            publish_interval_ms: 0.into(),
            reserved: [0; 56],
        };
        let fill = |mut map: Mapping| {
            map.write_bytes(0, header.as_bytes());
            for (i, meta) in records.iter().enumerate() {
                map.write_bytes(HEADER_BYTES + i * RECORD_BYTES, meta.to_record().as_bytes());
            }
            // SYNC: publishes the header and records written above -> the Acquire load of the
            // state word in `CountersReader::open` (another process) and `CountersReader::state`, via their Relaxed load
            // and Acquire fence.
            map.word(STATE_OFFSET).store(FileState::Live.to_word(), Ordering::Release);
            map
        };
        let (map, file) = match path {
            None => {
                let anon = MmapMut::map_anon(len)
                    .map_err(|source| MetricsError::MapAnonymous { len, source })?;
                (fill(Mapping::writable(anon.into())), None)
            }
            Some(path) => {
                let tmp = temporary_path(path);
                let made = create_mapping(&tmp, len).map(fill).and_then(|map| {
                    let io = |op, source| MetricsError::Io { op, path: path.to_owned(), source };
                    // The temporary's identity is the file's once renamed: remember it first.
                    let owned = crate::files::OwnedFile::of(&tmp).map_err(|e| io("stat", e))?;
                    fs::rename(&tmp, path).map_err(|e| io("rename into place", e))?;
                    Ok((map, owned.renamed(path)))
                });
                if made.is_err() {
                    // Best effort: the error that matters is the one returned.
                    let _ = fs::remove_file(&tmp);
                }
                let (map, owned) = made?;
                (map, Some(owned))
            }
        };
        Ok(Self { map: Arc::new(map), records: records.into(), info, file })
    }
}

impl fmt::Debug for CountersFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountersFile")
            .field("path", &self.path())
            .field("records", &self.records.len())
            .field("info", &self.info)
            .finish()
    }
}

/// A handle on one counter or gauge in the counters file: cheap to clone, `Send + Sync`, every
/// operation one relaxed atomic instruction on the shared mapping.
///
/// Each counter has one writer lane; Relaxed is enough because readers only want a recent value
/// and nothing else is published through it. [`add`](Self::add) is a `fetch_add` all the same, so
/// two writers sharing a counter by mistake cannot lose counts.
#[derive(Clone)]
pub struct Counter {
    map: Arc<Mapping>,
    offset: usize,
}

impl Counter {
    /// Adds `n` (wrapping at `u64::MAX`).
    #[inline]
    pub fn add(&self, n: u64) {
        self.map.word(self.offset).fetch_add(n, Ordering::Relaxed);
    }

    /// Adds 1.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Sets the value (for gauges).
    #[inline]
    pub fn set(&self, value: u64) {
        self.map.word(self.offset).store(value, Ordering::Relaxed);
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.map.load_relaxed(self.offset)
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counter")
            .field("record", &((self.offset - HEADER_BYTES) / RECORD_BYTES))
            .field("value", &self.get())
            .finish()
    }
}

/// A handle on one summary in the counters file (see [`Registry::register_summary`]), for its
/// one writer: [`publish`](Self::publish) writes a window under the summary's sequence lock.
#[derive(Clone)]
pub struct Summary {
    map: Arc<Mapping>,
    /// Record index of the window word.
    first: usize,
    quantiles: usize,
}

impl Summary {
    /// Publishes one window: `quantiles` (ns, in the order registered), the cumulative
    /// `sum_ns` and `count`. A reader sees all of them from this call or all from another one.
    /// Lock-free, no allocation; one writer per summary.
    ///
    /// # Panics
    /// In debug builds, if `quantiles` does not have the registered number of values (in
    /// release builds the extra or missing ones are ignored or left as they were).
    pub fn publish(&self, quantiles: &[u64], sum_ns: u64, count: u64) {
        debug_assert_eq!(quantiles.len(), self.quantiles, "quantiles of this summary");
        let window = self.map.word(value_offset(self.first));
        // Odd while a window is written (`| 1`: odd whatever was left there), then the next even.
        let odd = window.load(Ordering::Relaxed) | 1;
        window.store(odd, Ordering::Relaxed);
        // SYNC: orders the odd window word above before the values below -> the Acquire fence
        // after the reader's second window load in `CountersReader::read_summary`.
        fence(Ordering::Release);
        for (i, value) in quantiles.iter().take(self.quantiles).enumerate() {
            self.map.word(value_offset(self.first + 1 + i)).store(*value, Ordering::Relaxed);
        }
        let sum = value_offset(self.first + 1 + self.quantiles);
        self.map.word(sum).store(sum_ns, Ordering::Relaxed);
        self.map.word(sum + RECORD_BYTES).store(count, Ordering::Relaxed);
        // SYNC: publishes the values above with the even window word -> the Relaxed load and
        // Acquire fence of the reader's first window load in `CountersReader::read_summary`.
        window.store(odd.wrapping_add(1), Ordering::Release);
    }

    /// The values last published: quantiles (ns), sum (ns), count; for tests and monitors in
    /// this process.
    pub fn get(&self) -> (Vec<u64>, u64, u64) {
        let value = |i: usize| self.map.load_relaxed(value_offset(self.first + i));
        let quantiles = (1..=self.quantiles).map(value).collect();
        (quantiles, value(self.quantiles + 1), value(self.quantiles + 2))
    }
}

impl fmt::Debug for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Summary")
            .field("record", &self.first)
            .field("quantiles", &self.quantiles)
            .finish()
    }
}

fn bad_family(family: &str, reason: &str) -> MetricsError {
    MetricsError::BadFamily { family: family.to_owned(), reason: reason.to_owned() }
}

/// The header's heartbeat words: the publisher stores the time of each publish and its interval.
///
/// Relaxed: a reader only wants a recent time, and nothing is published through it.
#[derive(Clone)]
pub struct Heartbeat {
    map: Arc<Mapping>,
}

impl Heartbeat {
    /// Records a publish now (`CLOCK_MONOTONIC`), made every `interval`.
    pub fn beat(&self, interval: std::time::Duration) {
        self.beat_at(monotonic_ns(), interval);
    }

    /// Records a publish at `now_ns` (`CLOCK_MONOTONIC` ns), made every `interval`.
    pub fn beat_at(&self, now_ns: u64, interval: std::time::Duration) {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self.map.word(INTERVAL_OFFSET).store(ms, Ordering::Relaxed);
        self.map.word(HEARTBEAT_OFFSET).store(now_ns, Ordering::Relaxed);
    }
}

impl fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heartbeat").field("ns", &self.map.load_relaxed(HEARTBEAT_OFFSET)).finish()
    }
}

impl RecordMeta {
    fn from_spec(spec: &CounterSpec<'_>) -> Result<Self, MetricsError> {
        let series = series_name(spec.name, spec.labels)?;
        if series.len() > NAME_CAP {
            return Err(MetricsError::NameTooLong { len: series.len(), series, max: NAME_CAP });
        }
        if spec.help.len() > HELP_CAP {
            return Err(MetricsError::HelpTooLong { series, len: spec.help.len(), max: HELP_CAP });
        }
        if !is_valid_help(spec.help) {
            return Err(MetricsError::InvalidHelp { series });
        }
        Ok(Self { series, help: spec.help.to_owned(), kind: spec.kind, unit: spec.unit })
    }

    fn to_record(&self) -> CounterRecord {
        let mut record = CounterRecord {
            value: 0.into(),
            kind: self.kind.to_byte(),
            // Lengths fit a byte: checked against NAME_CAP and HELP_CAP (both <= 255) above.
            name_len: self.series.len() as u8,
            help_len: self.help.len() as u8,
            unit: self.unit.to_byte(),
            reserved: [0; 4],
            name: [0; NAME_CAP],
            help: [0; HELP_CAP],
        };
        record.name[..self.series.len()].copy_from_slice(self.series.as_bytes());
        record.help[..self.help.len()].copy_from_slice(self.help.as_bytes());
        record
    }
}

/// Creates `path` afresh (0600, `len` bytes) and maps it shared, read-write.
fn create_mapping(path: &Path, len: usize) -> Result<Mapping, MetricsError> {
    let io = |op, source| MetricsError::Io { op, path: path.to_owned(), source };
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove stale", e)),
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("create", e))?;
    file.set_len(len as u64).map_err(|e| io("size", e))?;
    let raw = MmapOptions::new().len(len).map_raw(&file).map_err(|e| io("map", e))?;
    Ok(Mapping::writable(raw))
}

/// `<dir>/<name>.<pid>.tmp`: where the file is written before it is renamed into place.
fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// `CLOCK_MONOTONIC` now, in ns (the clock of the heartbeat; system-wide, so comparable across
/// processes).
pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // CLOCK_MONOTONIC is never negative.
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
