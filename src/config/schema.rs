//! The key table of the configuration: every section, key, type and range, checked on each layer
//! (embedded default, `--config` file, environment) before the layers are merged, so an error
//! can name the layer and line it came from. The meaning of each key is documented once, in
//! `config/corelane.toml`; a test keeps that file and this table in step.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::{Table, Value};

use super::error::{ConfigError, Origin};

/// What a key accepts.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `true` or `false`.
    Bool,
    /// A non-negative integer in `min..=max` (both at most `i64::MAX`, TOML's integer range).
    UInt { min: u64, max: u64 },
    /// One of a fixed set of strings.
    OneOf(&'static [&'static str]),
    /// A string obeying a rule.
    Str(StrRule),
    /// An array of strings (lane agents; not settable from the environment).
    StrList,
    /// A table the service checks itself ([`Service::validate`](crate::daemon::Service)):
    /// the tensor pool's tp_driver-style sections (`[pool.shm]`, `[pool.profiles.<name>]`,
    /// ...). Merged key by key over the embedded default, not settable from the environment.
    Table,
}

/// Rules for string keys.
#[derive(Debug, Clone, Copy)]
pub enum StrRule {
    /// Any non-empty string.
    NonEmpty,
    /// `""` or an absolute path.
    AbsPathOrEmpty,
    /// A single file name: not empty, no `/`, not `.` or `..`.
    FileName,
    /// `""` or a `SocketAddr` (`127.0.0.1:9090`, `[::1]:9090`).
    SocketAddrOrEmpty,
    /// A tracing `EnvFilter` directive list.
    LogFilter,
}

/// One key of a section.
#[derive(Debug)]
pub struct KeySpec {
    /// The key's name.
    pub name: &'static str,
    /// What it accepts.
    pub kind: Kind,
}

/// A non-array section (`[runtime]`, `[control]`, ...).
#[derive(Debug)]
pub struct SectionSpec {
    /// The section's name.
    pub name: &'static str,
    /// Its keys, in file order.
    pub keys: &'static [KeySpec],
}

/// A key of `kind` named `name`.
pub const fn key(name: &'static str, kind: Kind) -> KeySpec {
    KeySpec { name, kind }
}

/// An integer key in `min..=max`.
pub const fn uint(min: u64, max: u64) -> Kind {
    Kind::UInt { min, max }
}

/// Name of the array section.
pub(super) const LANES: &str = "lanes";

/// `[runtime]`: process-wide settings (not a service: every daemon has them).
pub(super) const RUNTIME: SectionSpec = SectionSpec {
    name: "runtime",
    keys: &[
        key("dir", Kind::Str(StrRule::AbsPathOrEmpty)),
        key("reactor", Kind::OneOf(&["auto", "io_uring", "poll"])),
        key("shutdown_timeout_ms", uint(0, 600_000)),
        key("uring_defer_taskrun", Kind::Bool),
        key("uring_skip_send_cqe", Kind::Bool),
    ],
};

/// `[log]`: logging.
pub(super) const LOG: SectionSpec =
    SectionSpec { name: "log", keys: &[key("filter", Kind::Str(StrRule::LogFilter))] };

/// `[control]`, the control service's keys.
pub const CONTROL_SECTION: SectionSpec = SectionSpec {
    name: "control",
    keys: &[
        key("socket", Kind::Str(StrRule::FileName)),
        key("max_body_bytes", uint(1, 64 << 20)),
        key("enable_legacy_support", Kind::Bool),
        key("max_connections", uint(1, 1 << 20)),
        key("crc_error_limit", uint(1, 1_000_000)),
        key("header_timeout_ms", uint(1, 600_000)),
        key("idle_timeout_ms", uint(0, 86_400_000)),
        key("max_pending_output_bytes", uint(4096, 1 << 30)),
        key("write_timeout_ms", uint(1, 600_000)),
        key("max_buffered_bytes", uint(65_536, 1 << 40)),
        key("shm_channels", Kind::Bool),
        key("max_shm_channels", uint(0, 65_536)),
        key("shm_request_records", uint(16, 65_536)),
        key("shm_response_records", uint(16, 65_536)),
    ],
};

/// `[metrics]`, the metrics service's keys.
pub const METRICS_SECTION: SectionSpec = SectionSpec {
    name: "metrics",
    keys: &[
        key("enabled", Kind::Bool),
        key("listen", Kind::Str(StrRule::SocketAddrOrEmpty)),
        key("counters_file", Kind::Str(StrRule::FileName)),
        key("publish_interval_ms", uint(1, 3_600_000)),
    ],
};

const PLACEHOLDER_KEYS: &[KeySpec] = &[key("enabled", Kind::Bool)];

/// `[pool]`, the tensor pool driver's keys: its own two, then the sections of a tp_driver
/// config file as sub-tables (checked by the pool service, `crate::pool::config`).
pub const POOL_SECTION: SectionSpec = SectionSpec {
    name: "pool",
    keys: &[
        key("enabled", Kind::Bool),
        key("config_file", Kind::Str(StrRule::AbsPathOrEmpty)),
        key("driver", Kind::Table),
        key("shm", Kind::Table),
        key("policies", Kind::Table),
        key("profiles", Kind::Table),
        key("streams", Kind::Table),
        key("supervisor", Kind::Table),
    ],
};

/// `[alloc]`, the alloc server's keys.
pub const ALLOC_SECTION: SectionSpec = SectionSpec {
    name: "alloc",
    keys: &[
        key("enabled", Kind::Bool),
        key("listeners", Kind::StrList),
        key("devices", Kind::StrList),
        key("max_connections", uint(1, 1 << 20)),
        key("reorder_window", uint(1, 1 << 20)),
        key("gap_timeout_ms", uint(1, 60_000)),
        key("release_on_disconnect", Kind::Bool),
        key("exit_grace_ms", uint(0, 60_000)),
        key("ring_capacity", uint(64, 1 << 20)),
        key("max_rings_per_client", uint(0, 1024)),
        key("max_rings", uint(0, 1 << 16)),
        key("drain_batch", uint(1, 1 << 16)),
        key("legacy_detect_timeout_ms", uint(1, 10_000)),
        key("max_entries", uint(1, 1 << 30)),
        key("latency_probe", Kind::Bool),
    ],
};

/// `[frames]`.
pub const FRAMES_SECTION: SectionSpec = SectionSpec {
    name: "frames",
    keys: &[
        key("enabled", Kind::Bool),
        key("listen", Kind::Str(StrRule::SocketAddrOrEmpty)),
        key("max_connections", uint(1, 4096)),
        key("window", uint(1, 64)),
        key("max_width", uint(2, 8192)),
        key("max_height", uint(2, 8192)),
        key("default_width", uint(2, 8192)),
        key("default_height", uint(2, 8192)),
        key("adaptive_window", Kind::Bool),
        key("fps_target", uint(1, 1000)),
        key("heartbeat_ms", uint(10, 60_000)),
        key("init_timeout_ms", uint(10, 600_000)),
        key("max_queued_bytes", uint(1 << 20, 1 << 36)),
        key("peer_timeout_ms", uint(100, 600_000)),
        key("backpressure_timeout_ms", uint(10, 600_000)),
        key("detector", Kind::OneOf(&["motion", "onnx", "none"])),
        key("model", Kind::Str(StrRule::AbsPathOrEmpty)),
        key("pool_stream", uint(0, u32::MAX as u64)),
    ],
};

/// The section of a service reserved for a later build: only `enabled`.
pub const fn placeholder_section(name: &'static str) -> SectionSpec {
    SectionSpec { name, keys: PLACEHOLDER_KEYS }
}

/// Every non-array section: `[runtime]`, each service's in table order, `[log]`.
pub(crate) fn sections() -> &'static [&'static SectionSpec] {
    static SECTIONS: std::sync::OnceLock<Vec<&'static SectionSpec>> = std::sync::OnceLock::new();
    SECTIONS.get_or_init(|| {
        let services = crate::daemon::services::SERVICES.iter().map(|s| s.section());
        std::iter::once(&RUNTIME).chain(services).chain(std::iter::once(&LOG)).collect()
    })
}

/// Every top-level key: `runtime`, `lanes`, then the other sections.
fn top_level() -> impl Iterator<Item = &'static str> {
    let names = sections().iter().map(|s| s.name);
    names.clone().take(1).chain(std::iter::once(LANES)).chain(names.skip(1))
}

/// The keys of one `[[lanes]]` entry, in file order. Only `name` is required.
pub(super) const LANE_KEYS: &[KeySpec] = &[
    key("name", Kind::Str(StrRule::NonEmpty)),
    key("core", uint(0, 4095)),
    key("idle", Kind::OneOf(&["spin", "yield", "backoff", "sleep"])),
    key("idle_spin_iterations", uint(0, 1_000_000)),
    key("idle_yield_iterations", uint(0, 1_000_000)),
    key("idle_max_park_us", uint(1, 1_000_000)),
    key("idle_sleep_us", uint(1, 1_000_000)),
    key("agents", Kind::StrList),
];

/// Which idle kind each `idle_*` parameter belongs to.
const IDLE_PARAMS: &[(&str, &str)] = &[
    ("idle_spin_iterations", "backoff"),
    ("idle_yield_iterations", "backoff"),
    ("idle_max_park_us", "backoff"),
    ("idle_sleep_us", "sleep"),
];

/// The idle kind of a lane that does not set `idle`.
pub(super) const DEFAULT_IDLE: &str = "backoff";

/// An environment lookup: the value of a variable, if set.
pub(super) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Prefix of every environment override.
pub(super) const ENV_PREFIX: &str = "CORELANE_";

/// The short alias of `CORELANE_LOG_FILTER`.
pub(super) const ENV_LOG: &str = "CORELANE_LOG";

impl Kind {
    /// What the key accepts, for error messages.
    pub(super) fn expected(self) -> String {
        match self {
            Kind::Bool => "true or false".to_owned(),
            Kind::UInt { min, max } => format!("an integer in {min}..={max}"),
            Kind::OneOf(options) => format!("one of {}", quoted_list(options, ", ")),
            Kind::Str(StrRule::NonEmpty) => "a non-empty string".to_owned(),
            Kind::Str(StrRule::AbsPathOrEmpty) => "\"\" or an absolute path".to_owned(),
            Kind::Str(StrRule::FileName) => {
                "a file name (not empty, no '/', not \".\" or \"..\")".to_owned()
            }
            Kind::Str(StrRule::SocketAddrOrEmpty) => {
                "\"\" or an IP address with port, like \"127.0.0.1:9090\"".to_owned()
            }
            Kind::Str(StrRule::LogFilter) => {
                "a log filter like \"info\" or \"warn,corelane=debug\"".to_owned()
            }
            Kind::StrList => "an array of strings".to_owned(),
            Kind::Table => "a table".to_owned(),
        }
    }

    /// The `Range:` text the documentation of this key must contain, where the range is more than
    /// a type (integers and enumerations).
    #[cfg(test)]
    pub(super) fn range_doc(self) -> Option<String> {
        match self {
            Kind::UInt { min, max } => Some(format!("Range: {min}..={max}")),
            Kind::OneOf(options) => Some(format!("Range: {}", quoted_list(options, " | "))),
            _ => None,
        }
    }

    /// Whether a TOML value fits.
    fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (Kind::Bool, Value::Boolean(_)) => true,
            (Kind::UInt { min, max }, Value::Integer(i)) => {
                u64::try_from(*i).is_ok_and(|i| (min..=max).contains(&i))
            }
            (Kind::OneOf(options), Value::String(s)) => options.contains(&s.as_str()),
            (Kind::Str(rule), Value::String(s)) => rule.accepts(s),
            (Kind::StrList, Value::Array(items)) => items.iter().all(Value::is_str),
            (Kind::Table, Value::Table(_)) => true,
            _ => false,
        }
    }

    /// Parse an environment value as this key's type; `None` if it does not fit.
    fn parse_env(self, raw: &str) -> Option<Value> {
        let value = match self {
            Kind::Bool => match raw {
                "true" => Value::Boolean(true),
                "false" => Value::Boolean(false),
                _ => return None,
            },
            Kind::UInt { .. } => Value::Integer(raw.parse::<i64>().ok()?),
            Kind::OneOf(_) | Kind::Str(_) => Value::String(raw.to_owned()),
            Kind::StrList | Kind::Table => return None,
        };
        self.accepts(&value).then_some(value)
    }
}

impl StrRule {
    fn accepts(self, s: &str) -> bool {
        match self {
            StrRule::NonEmpty => !s.is_empty(),
            StrRule::AbsPathOrEmpty => s.is_empty() || Path::new(s).is_absolute(),
            StrRule::FileName => !s.is_empty() && !s.contains('/') && s != "." && s != "..",
            StrRule::SocketAddrOrEmpty => s.is_empty() || s.parse::<SocketAddr>().is_ok(),
            StrRule::LogFilter => {
                !s.trim().is_empty() && tracing_subscriber::EnvFilter::builder().parse(s).is_ok()
            }
        }
    }
}

fn quoted_list(items: &[&str], separator: &str) -> String {
    items.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(separator)
}

fn names<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items.into_iter().collect::<Vec<_>>().join(", ")
}

/// The environment variable that overrides `section.key`.
pub(super) fn env_var(section: &str, key: &str) -> String {
    format!("{ENV_PREFIX}{}_{}", section.to_ascii_uppercase(), key.to_ascii_uppercase())
}

/// Which document a layer is, to build [`Origin`]s.
#[derive(Debug, Clone)]
pub(super) enum DocName {
    Embedded,
    Text,
    File(PathBuf),
    /// A typed `Config` serialised back for [`check`]: no text, no lines.
    Value,
}

/// A parsed layer with what is needed to say where each of its values is.
pub(super) struct Doc<'a> {
    name: DocName,
    text: &'a str,
    spans: Option<DeValue<'a>>,
}

/// One step of a key path.
#[derive(Debug, Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

impl<'a> Doc<'a> {
    /// Parse `text` as a TOML document.
    pub(super) fn parse(text: &'a str, name: DocName) -> Result<(Table, Doc<'a>), ConfigError> {
        let table: Table = match text.parse() {
            Ok(table) => table,
            Err(error) => {
                let error: toml::de::Error = error;
                let line = error.span().map(|span| line_of(text, span.start));
                let origin = origin_of(&name, line);
                return Err(ConfigError::Syntax { origin, message: error.message().to_owned() });
            }
        };
        // The text parsed above, so this parse succeeds too; spans only refine error lines, so a
        // failure here would only lose the line numbers.
        let spans = DeTable::parse(text).ok().map(|t| DeValue::Table(t.into_inner()));
        Ok((table, Doc { name, text, spans }))
    }

    /// A document with no text: a typed config serialised back, checked by `validate`.
    pub(super) fn value() -> Doc<'static> {
        Doc { name: DocName::Value, text: "", spans: None }
    }

    fn origin(&self, path: &[Seg<'_>]) -> Origin {
        let line = self.span(path).map(|span| line_of(self.text, span.start));
        origin_of(&self.name, line)
    }

    fn span(&self, path: &[Seg<'_>]) -> Option<Range<usize>> {
        let mut value = self.spans.as_ref()?;
        let mut span = None;
        for seg in path {
            let next = match seg {
                Seg::Key(k) => value.get(*k)?,
                Seg::Index(i) => value.get(*i)?,
            };
            span = Some(next.span());
            value = next.get_ref();
        }
        span
    }
}

fn origin_of(name: &DocName, line: Option<usize>) -> Origin {
    match name {
        DocName::Embedded => Origin::Embedded { line },
        DocName::Text => Origin::Text { line },
        DocName::File(path) => Origin::File { path: path.clone(), line },
        DocName::Value => Origin::Value,
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

fn dotted(path: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Check every key of a layer against the table: known names, types and ranges, lane shapes.
/// A layer may omit any key (except a lane's `name`).
pub(super) fn check(table: &Table, doc: &Doc<'_>) -> Result<(), ConfigError> {
    for (name, value) in table {
        let path = [Seg::Key(name)];
        if name == LANES {
            check_lanes(value, doc)?;
            continue;
        }
        let Some(section) = sections().iter().find(|s| s.name == name) else {
            return Err(ConfigError::UnknownKey {
                key: name.clone(),
                origin: doc.origin(&path),
                expected: names(top_level()),
            });
        };
        let Value::Table(keys) = value else {
            return Err(bad_value(&path, "a table".to_owned(), value, doc));
        };
        check_keys(keys, section.keys, &path, doc)?;
    }
    Ok(())
}

fn check_keys(
    table: &Table,
    specs: &[KeySpec],
    at: &[Seg<'_>],
    doc: &Doc<'_>,
) -> Result<(), ConfigError> {
    for (name, value) in table {
        let mut path = at.to_vec();
        path.push(Seg::Key(name));
        let Some(spec) = specs.iter().find(|k| k.name == name) else {
            return Err(ConfigError::UnknownKey {
                key: dotted(&path),
                origin: doc.origin(&path),
                expected: names(specs.iter().map(|k| k.name)),
            });
        };
        if !spec.kind.accepts(value) {
            return Err(bad_value(&path, spec.kind.expected(), value, doc));
        }
    }
    Ok(())
}

fn check_lanes(value: &Value, doc: &Doc<'_>) -> Result<(), ConfigError> {
    let at = [Seg::Key(LANES)];
    let Value::Array(lanes) = value else {
        return Err(bad_value(&at, "an array of tables ([[lanes]])".to_owned(), value, doc));
    };
    for (index, lane) in lanes.iter().enumerate() {
        let path = [Seg::Key(LANES), Seg::Index(index)];
        let Value::Table(lane) = lane else {
            return Err(bad_value(&path, "a table ([[lanes]])".to_owned(), lane, doc));
        };
        check_keys(lane, LANE_KEYS, &path, doc)?;
        if !lane.contains_key("name") {
            return Err(ConfigError::MissingKey {
                key: format!("{}.name", dotted(&path)),
                origin: doc.origin(&path),
            });
        }
        let idle = lane.get("idle").and_then(Value::as_str).unwrap_or(DEFAULT_IDLE);
        for (param, kind) in IDLE_PARAMS {
            if lane.contains_key(*param) && idle != *kind {
                let key_path = [Seg::Key(LANES), Seg::Index(index), Seg::Key(param)];
                return Err(ConfigError::Invalid {
                    at: format!("{}{}", dotted(&key_path), at_suffix(doc.origin(&key_path))),
                    reason: format!(
                        "applies only to idle = \"{kind}\", but this lane has idle = \"{idle}\""
                    ),
                });
            }
        }
    }
    Ok(())
}

/// ` (ORIGIN)` after a key path in an `Invalid` error, or nothing for a typed value.
fn at_suffix(origin: Origin) -> String {
    match origin {
        Origin::Value => String::new(),
        other => format!(" ({other})"),
    }
}

fn bad_value(path: &[Seg<'_>], expected: String, got: &Value, doc: &Doc<'_>) -> ConfigError {
    ConfigError::BadValue {
        key: dotted(path),
        expected,
        got: display_value(got),
        origin: doc.origin(path),
    }
}

fn display_value(value: &Value) -> String {
    match value {
        Value::Table(_) => "a table".to_owned(),
        Value::Array(_) => format!("an array {value}"),
        other => other.to_string(),
    }
}

/// Lay `layer` over `base`: keys of non-array sections replace one by one; `lanes` replaces the
/// whole list. Both tables have passed [`check`].
pub(super) fn merge(base: &mut Table, layer: Table) {
    for (name, value) in layer {
        match (base.get_mut(&name), value) {
            (Some(Value::Table(base_keys)), Value::Table(keys)) if name != LANES => {
                merge_tables(base_keys, keys);
            }
            (_, value) => {
                base.insert(name, value);
            }
        }
    }
}

/// Key by key, into tables at any depth (`[pool.profiles.camera]` changes one profile's keys
/// and keeps the others); any other value replaces.
fn merge_tables(base: &mut Table, layer: Table) {
    for (name, value) in layer {
        match (base.get_mut(&name), value) {
            (Some(Value::Table(base_keys)), Value::Table(keys)) => merge_tables(base_keys, keys),
            (_, value) => {
                base.insert(name, value);
            }
        }
    }
}

/// Apply the `CORELANE_<SECTION>_<KEY>` overrides that `env` has, parsed as each key's type.
pub(super) fn apply_env(base: &mut Table, env: EnvLookup<'_>) -> Result<(), ConfigError> {
    for section in sections() {
        for spec in section.keys {
            let var = env_var(section.name, spec.name);
            let mut raw = env(&var).map(|raw| (raw, var.clone()));
            if section.name == "log" && spec.name == "filter" {
                if let Some(short) = env(ENV_LOG) {
                    if raw.is_some() {
                        return Err(ConfigError::EnvConflict {
                            first: ENV_LOG,
                            second: "CORELANE_LOG_FILTER",
                        });
                    }
                    raw = Some((short, ENV_LOG.to_owned()));
                }
            }
            let Some((raw, var)) = raw else { continue };
            let Some(value) = spec.kind.parse_env(&raw) else {
                return Err(ConfigError::BadValue {
                    key: format!("{}.{}", section.name, spec.name),
                    expected: spec.kind.expected(),
                    got: format!("{raw:?}"),
                    origin: Origin::Env { var },
                });
            };
            let entry = base.entry(section.name).or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(keys) = entry {
                keys.insert(spec.name.to_owned(), value);
            }
        }
    }
    Ok(())
}

/// The hint of an unknown `CORELANE_*` variable: the overrides of its section if the section
/// exists, else the sections.
pub(super) fn unknown_env_hint(name: &str) -> String {
    let rest = &name[ENV_PREFIX.len().min(name.len())..];
    if rest.starts_with("LANES_") || rest == "LANES" {
        return "lanes cannot be set from the environment; use a --config file".to_owned();
    }
    for section in sections() {
        let prefix = format!("{}_", section.name.to_ascii_uppercase());
        if rest.starts_with(&prefix) {
            let mut known: Vec<String> =
                section.keys.iter().map(|k| env_var(section.name, k.name)).collect();
            if section.name == "log" {
                known.push(ENV_LOG.to_owned());
            }
            return format!("known overrides of [{}]: {}", section.name, known.join(", "));
        }
    }
    format!(
        "expected {ENV_PREFIX}<SECTION>_<KEY> with a section of: {}",
        names(sections().iter().map(|s| s.name))
    )
}
