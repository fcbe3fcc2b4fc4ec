//! Reading a counters file from any process: [`CountersReader`] and [`Sample`].

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use memmap2::MmapOptions;

use super::layout::{
    value_offset, CounterRecord, CountersHeader, FileState, HEADER_BYTES, HEARTBEAT_OFFSET,
    HELP_CAP, INTERVAL_OFFSET, LAYOUT_VERSION, MAGIC, NAME_CAP, RECORD_BYTES, STATE_OFFSET,
    VALUE_OFFSET,
};
use super::map::Mapping;
use super::series::{is_valid_help, parse_series};
use super::{CounterKind, MetricsError, Unit};

/// One series and its value at the time of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The full series in exposition syntax, e.g. `corelane_lane_passes_total{lane="main"}`.
    pub name: String,
    /// Counter, gauge, or a summary's quantile, sum or count (never a summary's window word).
    pub kind: CounterKind,
    /// Help text of the family (unescaped; may be empty).
    pub help: String,
    /// The value, in `unit`.
    pub value: u64,
    /// The unit `value` is kept in ([`Unit::Nanoseconds`] values are exposed in seconds).
    pub unit: Unit,
}

impl Sample {
    /// A counter or gauge sample of a plain number (for [`MetricsSource`](super::MetricsSource)
    /// closures).
    pub fn new(name: String, kind: CounterKind, help: &str, value: u64) -> Self {
        Self { name, kind, help: help.to_owned(), value, unit: Unit::None }
    }

    /// The series name before `{` (for a summary's sum or count, `family_sum`/`family_count`).
    pub fn family(&self) -> &str {
        self.name.split_once('{').map_or(self.name.as_str(), |(family, _)| family)
    }

    /// The name of the exposition family the sample belongs to: [`family`](Self::family),
    /// without `_sum`/`_count` for a summary's sum and count.
    pub fn exposition_family(&self) -> &str {
        let family = self.family();
        let suffix = match self.kind {
            CounterKind::SummarySum => "_sum",
            CounterKind::SummaryCount => "_count",
            _ => "",
        };
        family.strip_suffix(suffix).unwrap_or(family)
    }

    /// The value as exposed: seconds for [`Unit::Nanoseconds`], else the number.
    pub fn exposed(&self) -> f64 {
        match self.unit {
            Unit::None => self.value as f64,
            Unit::Nanoseconds => self.value as f64 / 1e9,
        }
    }
}

/// Facts the daemon wrote into the header at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountersInfo {
    /// Pid of the daemon.
    pub pid: u64,
    /// Creation time, `CLOCK_MONOTONIC` ns.
    pub start_monotonic_ns: u64,
    /// Creation time, `CLOCK_REALTIME` ns since the Unix epoch.
    pub start_realtime_ns: u64,
    /// Number of records.
    pub records: u32,
}

/// What a reader can tell about the daemon behind a file from its heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The publisher beat within the allowed number of intervals.
    Live,
    /// No beat for `silent_ns` ns, more than [`CountersReader::STALE_INTERVALS`] intervals: the
    /// daemon is probably dead.
    Stale {
        /// ns since the last beat (or since creation, if it never beat).
        silent_ns: u64,
    },
    /// No publisher writes the heartbeat (interval 0): nothing to judge.
    NoPublisher,
    /// The daemon closed the file.
    Closed,
}

impl core::fmt::Display for Liveness {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Live => f.write_str("live"),
            Self::Stale { silent_ns } => {
                write!(f, "stale: no heartbeat for {:.1} s", *silent_ns as f64 / 1e9)
            }
            Self::NoPublisher => f.write_str("live (no heartbeat publisher)"),
            Self::Closed => f.write_str("closed"),
        }
    }
}

/// A validated, read-only view of a counters file: what `corelane top` and `/metrics` read.
///
/// [`open`](Self::open) checks everything it will later rely on (magic, version, geometry, length,
/// every record's metadata), so reading never goes out of bounds. The metadata is copied out
/// once; a snapshot then only loads values. Cheap to clone; `Send + Sync`.
///
/// A file truncated by someone else *after* it was mapped would still raise SIGBUS on access, as
/// with any mapping; the daemon never does that (it replaces the file by renaming a new one over
/// it).
#[derive(Clone, Debug)]
pub struct CountersReader {
    map: Arc<Mapping>,
    records: Arc<[RecordMeta]>,
    info: CountersInfo,
    path: Option<PathBuf>,
    /// Device and inode of the mapped file (fstat of the fd it was mapped from).
    identity: Option<(u64, u64)>,
}

impl CountersReader {
    /// Intervals without a beat after which [`liveness`](Self::liveness) says stale.
    pub const STALE_INTERVALS: u64 = 3;

    /// The least silence called stale, ns (1 s): with a 1 ms publish interval, three intervals
    /// are an ordinary scheduling delay on a loaded host.
    pub const MIN_STALE_NS: u64 = 1_000_000_000;

    /// Maps the counters file at `path` read-only and validates it.
    ///
    /// # Errors
    /// [`MetricsError::Io`] if it cannot be opened or mapped; [`MetricsError::TooShort`],
    /// [`MetricsError::BadMagic`], [`MetricsError::UnsupportedVersion`],
    /// [`MetricsError::BadGeometry`], [`MetricsError::SizeMismatch`], [`MetricsError::BadState`]
    /// or [`MetricsError::BadRecord`] if it is not a well-formed counters file of this layout
    /// version; [`MetricsError::NotReady`] if the daemon is still writing it.
    pub fn open(path: &Path) -> Result<Self, MetricsError> {
        let io = |op, source| MetricsError::Io { op, path: path.to_owned(), source };
        let file = File::open(path).map_err(|e| io("open", e))?;
        let meta = file.metadata().map_err(|e| io("stat", e))?;
        let identity = (meta.dev(), meta.ino());
        let file_len = meta.len();
        if file_len < HEADER_BYTES as u64 {
            return Err(MetricsError::TooShort {
                path: path.to_owned(),
                len: file_len,
                min: HEADER_BYTES,
            });
        }
        let Ok(len) = usize::try_from(file_len) else {
            return Err(MetricsError::SizeMismatch {
                path: path.to_owned(),
                records: 0,
                expected_len: 0,
                file_len,
            });
        };
        let raw = MmapOptions::new().len(len).map_raw_read_only(&file).map_err(|e| io("map", e))?;
        let map = Mapping::read_only(raw);

        // A Relaxed load then an Acquire fence: std promises only Relaxed loads work on a
        // read-only mapping (an Acquire load is not promised there).
        let state = map.load_relaxed(STATE_OFFSET);
        // SYNC: pairs with the Release store of `state = 1` in `CountersFile::build`: the header
        // and records copied below are complete when the Relaxed load above read 1 (or 2).
        fence(Ordering::Acquire);
        // The three words the daemon stores after publication (state, heartbeat, interval)
        // are loaded atomically; only the bytes between them, written once before the state
        // word's Release store, are copied (a plain copy of a word another process stores is a
        // data race).
        let mut bytes = [0u8; HEADER_BYTES];
        let mut put = |offset: usize, word: u64| {
            bytes[offset..offset + 8].copy_from_slice(&word.to_le_bytes());
        };
        put(STATE_OFFSET, state);
        put(HEARTBEAT_OFFSET, map.load_relaxed(HEARTBEAT_OFFSET));
        put(INTERVAL_OFFSET, map.load_relaxed(INTERVAL_OFFSET));
        let mut at = 0;
        for word in [STATE_OFFSET, HEARTBEAT_OFFSET, INTERVAL_OFFSET] {
            map.read_bytes(at, &mut bytes[at..word]);
            at = word + 8;
        }
        map.read_bytes(at, &mut bytes[at..]);
        let header: CountersHeader = zerocopy::transmute!(bytes);

        let path_buf = || path.to_owned();
        let magic = header.magic.get();
        if magic != MAGIC {
            return Err(MetricsError::BadMagic { path: path_buf(), found: magic, expected: MAGIC });
        }
        let version = header.layout_version.get();
        if version != LAYOUT_VERSION {
            return Err(MetricsError::UnsupportedVersion {
                path: path_buf(),
                found: version,
                expected: LAYOUT_VERSION,
            });
        }
        for (field, found, expected) in [
            ("header_bytes", header.header_bytes.get(), HEADER_BYTES as u32),
            ("record_bytes", header.record_bytes.get(), RECORD_BYTES as u32),
        ] {
            if found != expected {
                return Err(MetricsError::BadGeometry { path: path_buf(), field, found, expected });
            }
        }
        match FileState::from_word(state) {
            Some(FileState::Live | FileState::Closed) => {}
            Some(FileState::Writing) => return Err(MetricsError::NotReady { path: path_buf() }),
            None => return Err(MetricsError::BadState { path: path_buf(), found: state }),
        }
        let records = header.record_count.get();
        let expected_len = HEADER_BYTES as u64 + u64::from(records) * RECORD_BYTES as u64;
        if expected_len != file_len {
            return Err(MetricsError::SizeMismatch {
                path: path_buf(),
                records,
                expected_len,
                file_len,
            });
        }

        let metas = (0..records)
            .map(|index| {
                read_record(&map, index).map_err(|reason| MetricsError::BadRecord {
                    path: path_buf(),
                    index,
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        check_summaries(&metas).map_err(|(index, reason)| MetricsError::BadRecord {
            path: path_buf(),
            index,
            reason,
        })?;
        let info = CountersInfo {
            pid: header.pid.get(),
            start_monotonic_ns: header.start_monotonic_ns.get(),
            start_realtime_ns: header.start_realtime_ns.get(),
            records,
        };
        let mut reader = Self::from_parts(Arc::new(map), metas.into(), info, Some(path.to_owned()));
        reader.identity = Some(identity);
        Ok(reader)
    }

    pub(super) fn from_parts(
        map: Arc<Mapping>,
        records: Arc<[RecordMeta]>,
        info: CountersInfo,
        path: Option<PathBuf>,
    ) -> Self {
        Self { map, records, info, path, identity: None }
    }

    /// Whether the path no longer names the file this reader mapped (the daemon restarted and
    /// renamed a new file over it, or removed it): compares the device and inode of the path
    /// (stat) with those of the mapped file (fstat at open). `false` for an in-memory file or a
    /// reader of this process's own file.
    pub fn is_replaced(&self) -> bool {
        let (Some(path), Some((dev, ino))) = (&self.path, self.identity) else { return false };
        match std::fs::metadata(path) {
            Ok(meta) => meta.dev() != dev || meta.ino() != ino,
            Err(_) => true,
        }
    }

    /// A fresh reader of the file at this reader's path, if [`is_replaced`](Self::is_replaced);
    /// `Ok(None)` if the mapping is still the path's file (or there is no path).
    ///
    /// # Errors
    /// As [`open`](Self::open), for the new file.
    pub fn reopen_if_replaced(&self) -> Result<Option<Self>, MetricsError> {
        match &self.path {
            Some(path) if self.is_replaced() => Self::open(path).map(Some),
            _ => Ok(None),
        }
    }

    /// The last heartbeat: (`CLOCK_MONOTONIC` ns of the last publish, 0 if none; publish
    /// interval in ms, 0 if no publisher).
    pub fn heartbeat(&self) -> (u64, u64) {
        (self.map.load_relaxed(HEARTBEAT_OFFSET), self.map.load_relaxed(INTERVAL_OFFSET))
    }

    /// Whether the daemon looks alive at `now_ns` (`CLOCK_MONOTONIC` ns, e.g.
    /// [`monotonic_ns`](super::monotonic_ns)): stale after [`STALE_INTERVALS`](Self::STALE_INTERVALS)
    /// publish intervals without a beat, and never before [`MIN_STALE_NS`](Self::MIN_STALE_NS).
    pub fn liveness(&self, now_ns: u64) -> Liveness {
        if self.state() == FileState::Closed {
            return Liveness::Closed;
        }
        let (beat_ns, interval_ms) = self.heartbeat();
        if interval_ms == 0 {
            return Liveness::NoPublisher;
        }
        // The values come from another process: never trusted, so saturate.
        let since = if beat_ns == 0 { self.info.start_monotonic_ns } else { beat_ns };
        let silent_ns = now_ns.saturating_sub(since);
        let allowed_ns = interval_ms
            .saturating_mul(1_000_000)
            .saturating_mul(Self::STALE_INTERVALS)
            .max(Self::MIN_STALE_NS);
        if silent_ns > allowed_ns {
            Liveness::Stale { silent_ns }
        } else {
            Liveness::Live
        }
    }

    /// Every series with its current value, in record order.
    pub fn snapshot(&self) -> Vec<Sample> {
        let mut out = Vec::with_capacity(self.records.len());
        self.snapshot_into(&mut out);
        out
    }

    /// Appends every series with its current value to `out`, in record order. A summary's
    /// quantiles, sum and count come from one publish (its window word is a sequence lock); a
    /// summary whose publisher is mid-write for longer than a few tries is left out of this
    /// snapshot rather than shown torn.
    pub fn snapshot_into(&self, out: &mut Vec<Sample>) {
        let mut i = 0;
        while let Some(meta) = self.records.get(i) {
            match meta.kind {
                CounterKind::SummaryWindow => {
                    // `open` (or the registry) checked the block ends with its count.
                    let end = self.records[i..]
                        .iter()
                        .position(|m| m.kind == CounterKind::SummaryCount)
                        .map_or(self.records.len(), |n| i + n + 1);
                    self.read_summary(i, end, out);
                    i = end;
                }
                _ => {
                    out.push(self.sample(i, self.map.load_relaxed(value_offset(i))));
                    i += 1;
                }
            }
        }
    }

    fn sample(&self, index: usize, value: u64) -> Sample {
        let meta = &self.records[index];
        Sample {
            name: meta.series.clone(),
            kind: meta.kind,
            help: meta.help.clone(),
            value,
            unit: meta.unit,
        }
    }

    /// Appends the parts of the summary whose window word is record `window` (parts up to
    /// `end`), all from one publish, or nothing.
    fn read_summary(&self, window: usize, end: usize, out: &mut Vec<Sample>) {
        const TRIES: usize = 64;
        // The samples (names, help) are made first: between the two loads of the window word
        // only the values are loaded, so a try is a few loads long, not a few allocations (a
        // publisher in a tight loop made every allocating try collide).
        let mark = out.len();
        out.extend((window + 1..end).map(|i| self.sample(i, 0)));
        for attempt in 0..TRIES {
            let before = self.map.load_relaxed(value_offset(window));
            // SYNC: pairs with the Release store of the even window word in `Summary::publish`
            // (read by the Relaxed load above): the values below are that window's or later.
            fence(Ordering::Acquire);
            if before & 1 == 1 {
                // Mid-write: a publish is a few stores, so spin a little; past that the
                // publisher was descheduled mid-write, so give the cpu away.
                if attempt < 8 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            for (sample, i) in out[mark..].iter_mut().zip(window + 1..end) {
                sample.value = self.map.load_relaxed(value_offset(i));
            }
            // SYNC: pairs with the Release fence after the odd window word in
            // `Summary::publish`: a value of a later window read above shows in the load below.
            fence(Ordering::Acquire);
            if self.map.load_relaxed(value_offset(window)) == before {
                return;
            }
        }
        out.truncate(mark);
    }

    /// The current value of record `index`, or `None` past the last record (for monitors that
    /// refresh values often and names once).
    pub fn value(&self, index: usize) -> Option<u64> {
        (index < self.records.len()).then(|| self.map.load_relaxed(value_offset(index)))
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the file has no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The header facts: daemon pid, start times, record count.
    pub fn info(&self) -> CountersInfo {
        self.info
    }

    /// Where the file is in its life now: [`FileState::Closed`] once the daemon has removed it.
    pub fn state(&self) -> FileState {
        // Relaxed then an Acquire fence: an Acquire load is not promised on a read-only mapping.
        let word = self.map.load_relaxed(STATE_OFFSET);
        // SYNC: pairs with the Release stores of the state word in `CountersFile::build` and
        // `CountersFile::remove` (read by the Relaxed load above).
        fence(Ordering::Acquire);
        // `open` accepted only 1 or 2, and the daemon only ever moves the word from 1 to 2; treat
        // anything else a foreign writer might store as closed.
        match FileState::from_word(word) {
            Some(FileState::Live) => FileState::Live,
            _ => FileState::Closed,
        }
    }

    /// The file's path; `None` for an in-memory file's reader.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// A record's validated metadata, held by the file and its readers.
#[derive(Clone, Debug)]
pub(super) struct RecordMeta {
    /// The series text (checked by `parse_series`).
    pub(super) series: String,
    /// Help text.
    pub(super) help: String,
    /// Counter, gauge or summary part.
    pub(super) kind: CounterKind,
    /// The unit of the value.
    pub(super) unit: Unit,
}

/// Copies record `index`'s metadata out of `map` and validates it.
fn read_record(map: &Mapping, index: u32) -> Result<RecordMeta, String> {
    let start = HEADER_BYTES + index as usize * RECORD_BYTES;
    let mut bytes = [0u8; RECORD_BYTES];
    // The value word (the only bytes still being written) is left zero: metadata only.
    map.read_bytes(start + VALUE_OFFSET + 8, &mut bytes[VALUE_OFFSET + 8..]);
    let record: CounterRecord = zerocopy::transmute!(bytes);
    let kind = CounterKind::from_byte(record.kind).ok_or_else(|| {
        format!(
            "kind byte is {}, expected 1 (counter), 2 (gauge) or 3..=6 (summary parts)",
            record.kind
        )
    })?;
    let unit = Unit::from_byte(record.unit).ok_or_else(|| {
        format!("unit byte is {}, expected 0 (none) or 1 (nanoseconds)", record.unit)
    })?;
    let name_len = usize::from(record.name_len);
    if name_len == 0 {
        return Err("name length is 0, expected a series name".into());
    }
    if name_len > NAME_CAP {
        return Err(format!("name length {name_len} runs past the {NAME_CAP}-byte name field"));
    }
    let help_len = usize::from(record.help_len);
    if help_len > HELP_CAP {
        return Err(format!("help length {help_len} runs past the {HELP_CAP}-byte help field"));
    }
    let series = std::str::from_utf8(&record.name[..name_len])
        .map_err(|e| format!("name is not UTF-8: {e}"))?;
    parse_series(series).map_err(|why| format!("name {series:?}: {why}"))?;
    let help = std::str::from_utf8(&record.help[..help_len])
        .map_err(|e| format!("help text is not UTF-8: {e}"))?;
    if !is_valid_help(help) {
        return Err("help text contains a control character".into());
    }
    Ok(RecordMeta { series: series.to_owned(), help: help.to_owned(), kind, unit })
}

/// Checks that summary parts come in blocks as [`Registry::register_summary`](super::Registry)
/// writes them: a window word, at least one quantile, the sum, the count, all of one family
/// and label set. Returns the first bad record and why.
fn check_summaries(metas: &[RecordMeta]) -> Result<(), (u32, String)> {
    let mut i = 0;
    while let Some(meta) = metas.get(i) {
        let at = |i: usize| i as u32;
        match meta.kind {
            CounterKind::Counter | CounterKind::Gauge => i += 1,
            CounterKind::SummaryWindow => {
                let (family, labels) = split_series(&meta.series);
                let mut j = i + 1;
                while metas.get(j).is_some_and(|m| m.kind == CounterKind::SummaryQuantile) {
                    let (f, l) = split_series(&metas[j].series);
                    let label_ok =
                        l.strip_prefix(labels.trim_end_matches('}')).is_some_and(|rest| {
                            rest.starts_with(if labels.is_empty() {
                                "{quantile="
                            } else {
                                ",quantile="
                            })
                        });
                    if f != family || !label_ok {
                        return Err((
                            at(j),
                            format!(
                                "quantile {:?} is not of summary {:?}",
                                metas[j].series, meta.series
                            ),
                        ));
                    }
                    j += 1;
                }
                if j == i + 1 {
                    return Err((at(i), format!("summary {:?} has no quantiles", meta.series)));
                }
                for (offset, kind, suffix) in
                    [(0, CounterKind::SummarySum, "_sum"), (1, CounterKind::SummaryCount, "_count")]
                {
                    let want = format!("{family}{suffix}{labels}");
                    match metas.get(j + offset) {
                        Some(m) if m.kind == kind && m.series == want => {}
                        _ => {
                            return Err((
                                at(j + offset),
                                format!("summary {:?} lacks {want:?} here", meta.series),
                            ))
                        }
                    }
                }
                i = j + 2;
            }
            _ => {
                return Err((
                    at(i),
                    format!("summary part {:?} outside a summary block", meta.series),
                ))
            }
        }
    }
    Ok(())
}

/// `family{labels}` as (`family`, `{labels}` or "").
fn split_series(series: &str) -> (&str, &str) {
    series.find('{').map_or((series, ""), |brace| series.split_at(brace))
}
