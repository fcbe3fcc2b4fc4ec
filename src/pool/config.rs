//! The tensor-pool driver's configuration: a tp_driver-style TOML document.
//!
//! [`PoolConfig::from_toml_str`] (or [`PoolConfig::from_table`]) reads the sections `[driver]`,
//! `[shm]`, `[policies]`, `[profiles.<name>]`, `[streams.<name>]` and the optional
//! `[supervisor]`, with every key and default of the spec's §7 table; `config/pool.toml` is the
//! embedded default ([`EMBEDDED_POOL_CONFIG`]) and documents each key, and
//! `config/pool-example.toml` is the C project's `driver_integration_example.toml`, verbatim.
//!
//! What is checked, failing on the first error with the key's dotted path and what was expected
//! against what was seen: types and ranges of every key; `profiles.<name>.header_nslots` a power
//! of two; each pool's `pool_id` in 1..=65535 and unique in its profile, its `stride_bytes` a
//! non-zero multiple of 64; a non-empty `payload_pools`; static `stream_id`s non-zero and unique,
//! naming profiles that exist; `permissions_mode` an octal string at most `777`; ranges `"A-B"`
//! (or one `"A"`, or an array of them) with `0 < A <= B`; dynamic streams only with a
//! `default_profile` and a `stream_id_range`; no overlap between the ID ranges, the static stream
//! IDs and the control/announce/QoS IDs (spec §5.8, "validate at startup"); `shm.namespace`
//! matching `[A-Za-z0-9_-]+`; `shm.base_dir` absolute.
//!
//! `*_channel` keys: corelane has no Aeron, so a value with the `aeron:` scheme is accepted and
//! means "the daemon's control socket"; `""` is accepted too; anything else is an error. An
//! existing tp_driver file therefore loads as is.
//!
//! Unknown keys are ignored, as the C driver does, but collected: [`PoolConfig::unknown_keys`]
//! lists their dotted paths so the daemon can warn about typos.
//!
//! Not implemented: the spec's environment overrides (`DRIVER_CONTROL_STREAM_ID=...`); the C
//! driver lacks them too (trap T10). `allowed_base_dirs` are not `realpath`'ed here (this module
//! does no I/O); the URI validator does that when it is built from this config.
//!
//! Where corelane differs from the C loader (all stricter, none refuses the spec's examples):
//! the `[driver]`, `[shm]` and `[policies]` tables and the channel/stream keys C requires take
//! the spec's defaults when absent; `lease_keepalive_interval_ms`, `lease_expiry_grace_intervals`,
//! `epoch_gc_keep` and `supervisor.consumer_capacity` must be at least 1 (C accepts 0, which makes
//! every lease expire at once or keeps every epoch); a `default_profile` that names no profile is
//! an error even with dynamic streams off; number strings take plain digits only (C's `strtoul`
//! also takes signs and spaces).
//!
//! ```
//! use corelane::pool::config::PoolConfig;
//!
//! let config = PoolConfig::embedded_default().unwrap();
//! assert_eq!(config.shm.namespace, "default");
//! assert_eq!(config.profile("camera").unwrap().header_nslots, 32);
//! ```

use std::collections::BTreeSet;
use std::fmt;

use toml::{Table, Value};

/// The embedded default configuration, `config/pool.toml`: every key, commented.
pub const EMBEDDED_POOL_CONFIG: &str = include_str!("../../config/pool.toml");

/// Why a pool configuration was refused. Every variant names the key's dotted path, e.g.
/// `profiles.camera.header_nslots` or `profiles.camera.payload_pools[0].stride_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolConfigError {
    /// The text is not valid TOML.
    #[error("invalid TOML: {message}")]
    Syntax {
        /// The parser's message.
        message: String,
    },
    /// A key without a default is absent.
    #[error("missing key '{key}': expected {expected}")]
    Missing {
        /// Dotted path of the key.
        key: String,
        /// What the key must hold.
        expected: &'static str,
    },
    /// A value of the wrong type or outside its range.
    #[error("bad value for '{key}': expected {expected}, got {got}")]
    BadValue {
        /// Dotted path of the key.
        key: String,
        /// What the key accepts.
        expected: String,
        /// The value seen, in TOML syntax.
        got: String,
    },
    /// A rule across keys is broken (duplicates, unknown profile, overlapping ranges, ...).
    #[error("invalid '{key}': {reason}")]
    Invalid {
        /// Dotted path of the offending key.
        key: String,
        /// What is wrong, naming the values involved.
        reason: String,
    },
}

impl PoolConfigError {
    /// The dotted path of the key the error is about; `None` for a syntax error.
    pub fn key(&self) -> Option<&str> {
        match self {
            PoolConfigError::Syntax { .. } => None,
            PoolConfigError::Missing { key, .. }
            | PoolConfigError::BadValue { key, .. }
            | PoolConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

type Result<T> = std::result::Result<T, PoolConfigError>;

/// An inclusive range of stream IDs, `start..=end`, both non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First ID of the range.
    pub start: u32,
    /// Last ID of the range (inclusive).
    pub end: u32,
}

impl IdRange {
    /// Whether `id` lies in the range.
    pub fn contains(&self, id: u32) -> bool {
        (self.start..=self.end).contains(&id)
    }

    /// How many IDs the range holds (at least 1).
    pub fn len(&self) -> u64 {
        u64::from(self.end - self.start) + 1
    }

    /// Always false: a range holds at least one ID.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn overlaps(&self, other: &IdRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// One payload pool of a profile: a size class of `stride_bytes` per slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpec {
    /// `pool_id`: 1..=65535, unique within the profile.
    pub pool_id: u16,
    /// `stride_bytes`: bytes per slot, a non-zero multiple of 64.
    pub stride_bytes: u32,
}

/// `[profiles.<name>]`: a sizing template for streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The table's name.
    pub name: String,
    /// `header_nslots`: header-ring slots, a power of two (default 1024); every pool has as many.
    pub header_nslots: u32,
    /// `payload_pools`: at least one pool, in the file's order.
    pub payload_pools: Vec<PoolSpec>,
}

/// `[streams.<name>]`: a provisioned stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticStream {
    /// The table's name.
    pub name: String,
    /// `stream_id`: non-zero, unique.
    pub stream_id: u32,
    /// `profile`: the name of a `[profiles.<name>]` table.
    pub profile: String,
}

/// `[driver]`: identity and the control-plane endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSection {
    /// `instance_id`: a name for diagnostics (default `"driver-01"`).
    pub instance_id: String,
    /// `aeron_dir`: kept for compatibility; corelane has no Aeron (default `""`).
    pub aeron_dir: String,
    /// `control_channel`: `""` or an `aeron:` channel; both mean the daemon's control socket.
    pub control_channel: String,
    /// `control_stream_id`: attach/keepalive/detach/revoke stream (default 1000).
    pub control_stream_id: u32,
    /// `announce_channel`: defaults to `control_channel`.
    pub announce_channel: String,
    /// `announce_stream_id`: ShmPoolAnnounce stream, defaults to `control_stream_id`.
    pub announce_stream_id: u32,
    /// `qos_channel` (default `"aeron:ipc?term-length=4m"`).
    pub qos_channel: String,
    /// `qos_stream_id` (default 1200); the driver does not use it.
    pub qos_stream_id: u32,
    /// `stream_id_range`: IDs for dynamic streams (default none).
    pub stream_id_ranges: Vec<IdRange>,
    /// `descriptor_stream_id_range`: per-consumer descriptor IDs (parsed and checked, unused).
    pub descriptor_stream_id_ranges: Vec<IdRange>,
    /// `control_stream_id_range`: per-consumer control IDs (parsed and checked, unused).
    pub control_stream_id_ranges: Vec<IdRange>,
}

/// `[shm]`: where and how the SHM files are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmSection {
    /// `base_dir`: absolute root of the canonical layout (default `"/dev/shm"`, the C driver's
    /// value; the layout adds `tensorpool-<user>/` below it).
    pub base_dir: String,
    /// `namespace`: `[A-Za-z0-9_-]+` (default `"default"`).
    pub namespace: String,
    /// `require_hugepages`: the policy when a request says UNSPECIFIED (default false).
    pub require_hugepages: bool,
    /// `page_size_bytes`: informational (default 4096).
    pub page_size_bytes: u32,
    /// `permissions_mode`: file mode from an octal string, at most 0o777 (default `"660"`).
    pub permissions_mode: u32,
    /// `allowed_base_dirs`: URI allowlist, absolute paths (default `[base_dir]`).
    pub allowed_base_dirs: Vec<String>,
}

/// `[policies]`: leases, announces, epochs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    /// `allow_dynamic_streams`: attaches may create streams (default false).
    pub allow_dynamic_streams: bool,
    /// `default_profile`: profile of dynamic streams; required when they are allowed.
    pub default_profile: Option<String>,
    /// `announce_period_ms`: announce cadence (default 1000; 0 means 1000, as in C).
    pub announce_period_ms: u32,
    /// `lease_keepalive_interval_ms`: keepalive cadence (default 1000, at least 1).
    pub lease_keepalive_interval_ms: u32,
    /// `lease_expiry_grace_intervals`: missed keepalives before expiry (default 3, at least 1).
    pub lease_expiry_grace_intervals: u32,
    /// `node_id_reuse_cooldown_ms`: a released node ID is refused this long (default 1000; 0 off).
    pub node_id_reuse_cooldown_ms: u32,
    /// `prefault_shm`: zero-fill pages at creation (default true).
    pub prefault_shm: bool,
    /// `mlock_shm`: mlock at creation, failure fatal (default false).
    pub mlock_shm: bool,
    /// `epoch_gc_enabled`: delete old epoch directories (default true).
    pub epoch_gc_enabled: bool,
    /// `epoch_gc_keep`: keep the current epoch and `keep - 1` older ones (default 2, at least 1).
    pub epoch_gc_keep: u32,
    /// `epoch_gc_min_age_ns`: never delete younger epochs (default, and 0, mean 3 announce periods).
    pub epoch_gc_min_age_ns: u64,
    /// `epoch_gc_on_startup`: run the GC when the driver starts (default false).
    pub epoch_gc_on_startup: bool,
    /// `shutdown_timeout_ms`: admin shutdown drain time (default 2000; spec only).
    pub shutdown_timeout_ms: u32,
    /// `shutdown_token`: admin shutdown token (default `""`; spec only).
    pub shutdown_token: String,
}

/// `[supervisor]`: the consumer-policy engine (present means enabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorSection {
    /// `control_channel` (default: the driver's).
    pub control_channel: String,
    /// `control_stream_id` (default: the driver's).
    pub control_stream_id: i32,
    /// `announce_channel` (default: the driver's).
    pub announce_channel: String,
    /// `announce_stream_id` (default: the driver's).
    pub announce_stream_id: i32,
    /// `metadata_channel` (no driver default: `""`).
    pub metadata_channel: String,
    /// `metadata_stream_id` (no driver default: 0).
    pub metadata_stream_id: i32,
    /// `qos_channel` (default: the driver's).
    pub qos_channel: String,
    /// `qos_stream_id` (default: the driver's).
    pub qos_stream_id: i32,
    /// `consumer_capacity`: registry size (default 256, at least 1).
    pub consumer_capacity: u32,
    /// `consumer_stale_ms`: a consumer unheard of this long is dropped (default 5000; 0 never).
    pub consumer_stale_ms: u32,
    /// `per_consumer_enabled`: assign per-consumer streams (default false).
    pub per_consumer_enabled: bool,
    /// `per_consumer_descriptor_channel` (default `""`: the consumer's requested channel).
    pub per_consumer_descriptor_channel: String,
    /// `per_consumer_descriptor_base` (default 0: the consumer's requested ID).
    pub per_consumer_descriptor_base: u32,
    /// `per_consumer_descriptor_range`: required when the base is non-zero.
    pub per_consumer_descriptor_range: u32,
    /// `per_consumer_control_channel` (default `""`).
    pub per_consumer_control_channel: String,
    /// `per_consumer_control_base` (default 0).
    pub per_consumer_control_base: u32,
    /// `per_consumer_control_range`: required when the base is non-zero.
    pub per_consumer_control_range: u32,
    /// `force_no_shm`: answer every consumer with use_shm = 0 (default false).
    pub force_no_shm: bool,
    /// `force_mode`: 0 = no override, 1 = STREAM, 2 = RATE_LIMITED (default 0).
    pub force_mode: u8,
    /// `payload_fallback_uri`: `""`, `aeron:...` or `bridge://...` (default `""`).
    pub payload_fallback_uri: String,
}

/// A validated driver configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// `[driver]`.
    pub driver: DriverSection,
    /// `[shm]`.
    pub shm: ShmSection,
    /// `[policies]`.
    pub policies: Policies,
    /// `[profiles.<name>]`, sorted by name; at least one.
    pub profiles: Vec<Profile>,
    /// `[streams.<name>]`, sorted by name.
    pub streams: Vec<StaticStream>,
    /// `[supervisor]`, when present.
    pub supervisor: Option<SupervisorSection>,
    unknown_keys: Vec<String>,
}

const NS_PER_MS: u64 = 1_000_000;
const DEFAULT_CHANNEL: &str = "aeron:ipc?term-length=4m";
const CHANNEL_EXPECTED: &str = "\"\" or a channel with the aeron: scheme";

impl PoolConfig {
    /// Parses and validates TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| PoolConfigError::Syntax { message: e.to_string() })?;
        Self::from_table(&table)
    }

    /// The embedded default, `config/pool.toml`.
    pub fn embedded_default() -> Result<Self> {
        Self::from_toml_str(EMBEDDED_POOL_CONFIG)
    }

    /// Reads and validates a parsed document.
    pub fn from_table(doc: &Table) -> Result<Self> {
        let mut unknown = Vec::new();
        let mut root = Section::new(String::new(), doc);

        let driver = {
            let mut t = root.section("driver")?;
            let control_channel = t.channel("control_channel", DEFAULT_CHANNEL)?;
            let control_stream_id = t.u32("control_stream_id", 1000)?;
            let announce_channel = t.channel("announce_channel", &control_channel)?;
            let driver = DriverSection {
                instance_id: t.string("instance_id", "driver-01")?,
                aeron_dir: t.string("aeron_dir", "")?,
                announce_stream_id: t.u32("announce_stream_id", control_stream_id)?,
                control_channel,
                control_stream_id,
                announce_channel,
                qos_channel: t.channel("qos_channel", DEFAULT_CHANNEL)?,
                qos_stream_id: t.u32("qos_stream_id", 1200)?,
                stream_id_ranges: t.ranges("stream_id_range")?,
                descriptor_stream_id_ranges: t.ranges("descriptor_stream_id_range")?,
                control_stream_id_ranges: t.ranges("control_stream_id_range")?,
            };
            t.finish(&mut unknown);
            driver
        };

        let shm = {
            let mut t = root.section("shm")?;
            let base_dir = t.string("base_dir", "/dev/shm")?;
            if !base_dir.starts_with('/') {
                return Err(bad(t.key("base_dir"), "an absolute path", quoted(&base_dir)));
            }
            let namespace = t.string("namespace", "default")?;
            if !is_component(&namespace) {
                return Err(bad(
                    t.key("namespace"),
                    "a name matching [A-Za-z0-9_-]+",
                    quoted(&namespace),
                ));
            }
            let permissions_mode = {
                let raw = t.string("permissions_mode", "660")?;
                parse_mode(&raw).ok_or_else(|| {
                    bad(
                        t.key("permissions_mode"),
                        "an octal mode string at most \"777\"",
                        quoted(&raw),
                    )
                })?
            };
            let allowed_base_dirs = match t.string_array("allowed_base_dirs")? {
                Some(dirs) => {
                    for (i, dir) in dirs.iter().enumerate() {
                        if !dir.starts_with('/') {
                            let key = format!("{}[{i}]", t.key("allowed_base_dirs"));
                            return Err(bad(key, "an absolute path", quoted(dir)));
                        }
                    }
                    dirs
                }
                None => vec![base_dir.clone()],
            };
            let shm = ShmSection {
                require_hugepages: t.boolean("require_hugepages", false)?,
                page_size_bytes: t.u32("page_size_bytes", 4096)?,
                base_dir,
                namespace,
                permissions_mode,
                allowed_base_dirs,
            };
            t.finish(&mut unknown);
            shm
        };

        let policies = {
            let mut t = root.section("policies")?;
            let announce_period_ms = match t.u32("announce_period_ms", 1000)? {
                0 => 1000,
                ms => ms,
            };
            let min_age_default = 3 * u64::from(announce_period_ms) * NS_PER_MS;
            let policies = Policies {
                allow_dynamic_streams: t.boolean("allow_dynamic_streams", false)?,
                default_profile: t.opt_string("default_profile")?,
                announce_period_ms,
                lease_keepalive_interval_ms: t.u32_min("lease_keepalive_interval_ms", 1, 1000)?,
                lease_expiry_grace_intervals: t.u32_min("lease_expiry_grace_intervals", 1, 3)?,
                node_id_reuse_cooldown_ms: t.u32("node_id_reuse_cooldown_ms", 1000)?,
                prefault_shm: t.boolean("prefault_shm", true)?,
                mlock_shm: t.boolean("mlock_shm", false)?,
                epoch_gc_enabled: t.boolean("epoch_gc_enabled", true)?,
                epoch_gc_keep: t.u32_min("epoch_gc_keep", 1, 2)?,
                epoch_gc_min_age_ns: match t.u64("epoch_gc_min_age_ns", min_age_default)? {
                    0 => min_age_default,
                    ns => ns,
                },
                epoch_gc_on_startup: t.boolean("epoch_gc_on_startup", false)?,
                shutdown_timeout_ms: t.u32("shutdown_timeout_ms", 2000)?,
                shutdown_token: t.string("shutdown_token", "")?,
            };
            t.finish(&mut unknown);
            policies
        };

        let profiles = {
            let mut t = root.section("profiles")?;
            let mut profiles = Vec::new();
            for name in t.table_names() {
                let mut p = t.section(name)?;
                profiles.push(read_profile(name, &mut p, &mut unknown)?);
                p.finish(&mut unknown);
            }
            if profiles.is_empty() {
                return Err(PoolConfigError::Missing {
                    key: "profiles".into(),
                    expected: "at least one [profiles.<name>] table",
                });
            }
            t.finish(&mut unknown);
            profiles
        };
        let profile_names =
            || profiles.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");

        let streams = {
            let mut t = root.section("streams")?;
            let mut streams: Vec<StaticStream> = Vec::new();
            for name in t.table_names() {
                let mut s = t.section(name)?;
                // In 1..=u32::MAX by the check, so the cast is exact.
                let stream_id = s.required_int("stream_id", 1, i64::from(u32::MAX))? as u32;
                let profile = s.required_string("profile")?;
                if !profiles.iter().any(|p| p.name == profile) {
                    return Err(invalid(
                        s.key("profile"),
                        format!(
                            "unknown profile {}; expected one of: {}",
                            quoted(&profile),
                            profile_names()
                        ),
                    ));
                }
                if let Some(other) = streams.iter().find(|o| o.stream_id == stream_id) {
                    return Err(invalid(
                        s.key("stream_id"),
                        format!(
                            "duplicate stream id {stream_id}, also streams.{}.stream_id",
                            other.name
                        ),
                    ));
                }
                streams.push(StaticStream { name: name.to_owned(), stream_id, profile });
                s.finish(&mut unknown);
            }
            t.finish(&mut unknown);
            streams
        };

        if let Some(name) = &policies.default_profile {
            if !profiles.iter().any(|p| &p.name == name) {
                return Err(invalid(
                    "policies.default_profile",
                    format!(
                        "unknown profile {}; expected one of: {}",
                        quoted(name),
                        profile_names()
                    ),
                ));
            }
        }
        if policies.allow_dynamic_streams {
            if policies.default_profile.is_none() {
                return Err(PoolConfigError::Missing {
                    key: "policies.default_profile".into(),
                    expected: "a profile name when policies.allow_dynamic_streams is true",
                });
            }
            if driver.stream_id_ranges.is_empty() {
                return Err(PoolConfigError::Missing {
                    key: "driver.stream_id_range".into(),
                    expected: "a range \"A-B\" when policies.allow_dynamic_streams is true",
                });
            }
        }

        let supervisor = match root.opt_section("supervisor")? {
            None => None,
            Some(mut t) => {
                let s = read_supervisor(&mut t, &driver)?;
                t.finish(&mut unknown);
                Some(s)
            }
        };
        root.finish(&mut unknown);

        let config = PoolConfig {
            driver,
            shm,
            policies,
            profiles,
            streams,
            supervisor,
            unknown_keys: unknown,
        };
        config.check_id_overlaps()?;
        Ok(config)
    }

    /// Dotted paths of the keys and tables the loader did not know (a pool entry's keys look
    /// like `profiles.camera.payload_pools[0].numa`). They were ignored, as the C driver
    /// ignores them.
    pub fn unknown_keys(&self) -> &[String] {
        &self.unknown_keys
    }

    /// The profile called `name`.
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// `announce_period_ms` in nanoseconds.
    pub fn announce_period_ns(&self) -> u64 {
        u64::from(self.policies.announce_period_ms) * NS_PER_MS
    }

    /// How long a lease lives without a keepalive: interval × grace, in nanoseconds.
    pub fn lease_ttl_ns(&self) -> u64 {
        u64::from(self.policies.lease_keepalive_interval_ms)
            * u64::from(self.policies.lease_expiry_grace_intervals)
            * NS_PER_MS
    }

    /// `node_id_reuse_cooldown_ms` in nanoseconds.
    pub fn node_id_cooldown_ns(&self) -> u64 {
        u64::from(self.policies.node_id_reuse_cooldown_ms) * NS_PER_MS
    }

    /// Spec §5.8: the ID ranges must not overlap each other, the static stream IDs or the
    /// control/announce/QoS IDs. The supervisor's per-consumer ranges and the driver's
    /// `descriptor_stream_id_range`/`control_stream_id_range` name the same kind of ID (the
    /// example config sets both to 31000-31999), so those two may overlap each other.
    fn check_id_overlaps(&self) -> Result<()> {
        #[derive(PartialEq, Clone, Copy)]
        enum Family {
            Fixed,
            Static,
            Dynamic,
            Descriptor,
            Control,
        }
        struct Item {
            key: String,
            range: IdRange,
            family: Family,
            /// Only entries of one list are checked against each other inside a family.
            list: u8,
        }
        let d = &self.driver;
        let mut items = Vec::new();
        let fixed = [
            ("driver.control_stream_id", d.control_stream_id),
            ("driver.announce_stream_id", d.announce_stream_id),
            ("driver.qos_stream_id", d.qos_stream_id),
        ];
        for (key, id) in fixed {
            items.push(Item {
                key: key.into(),
                range: IdRange { start: id, end: id },
                family: Family::Fixed,
                list: 0,
            });
        }
        for s in &self.streams {
            let range = IdRange { start: s.stream_id, end: s.stream_id };
            let key = format!("streams.{}.stream_id", s.name);
            items.push(Item { key, range, family: Family::Static, list: 0 });
        }
        let lists = [
            ("driver.stream_id_range", &d.stream_id_ranges, Family::Dynamic),
            (
                "driver.descriptor_stream_id_range",
                &d.descriptor_stream_id_ranges,
                Family::Descriptor,
            ),
            ("driver.control_stream_id_range", &d.control_stream_id_ranges, Family::Control),
        ];
        for (key, ranges, family) in lists {
            for (i, range) in ranges.iter().enumerate() {
                let key = if ranges.len() == 1 { key.to_owned() } else { format!("{key}[{i}]") };
                items.push(Item { key, range: *range, family, list: 1 });
            }
        }
        if let Some(s) = &self.supervisor {
            let per_consumer = [
                (
                    "supervisor.per_consumer_descriptor_base",
                    s.per_consumer_descriptor_base,
                    s.per_consumer_descriptor_range,
                    Family::Descriptor,
                ),
                (
                    "supervisor.per_consumer_control_base",
                    s.per_consumer_control_base,
                    s.per_consumer_control_range,
                    Family::Control,
                ),
            ];
            for (key, base, range, family) in per_consumer {
                if base != 0 {
                    // read_supervisor checked base + range - 1 <= u32::MAX.
                    let range = IdRange { start: base, end: base + (range - 1) };
                    items.push(Item { key: key.into(), range, family, list: 2 });
                }
            }
        }
        for (i, a) in items.iter().enumerate() {
            for b in &items[..i] {
                let same_family = a.family == b.family;
                // Fixed IDs may repeat (announce may equal control); static IDs are checked for
                // duplicates where they are read; lists of one family differ on purpose.
                if same_family
                    && (a.family == Family::Fixed || a.family == Family::Static || a.list != b.list)
                {
                    continue;
                }
                if a.range.overlaps(&b.range) {
                    return Err(invalid(
                        a.key.clone(),
                        format!(
                            "ids {} overlap {} ({}); expected disjoint stream ids",
                            a.range, b.key, b.range
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn read_profile(name: &str, t: &mut Section<'_>, unknown: &mut Vec<String>) -> Result<Profile> {
    let header_nslots = t.u32("header_nslots", 1024)?;
    if !header_nslots.is_power_of_two() {
        return Err(bad(t.key("header_nslots"), "a power of two", header_nslots.to_string()));
    }
    let key = t.key("payload_pools");
    let Some(value) = t.get("payload_pools") else {
        return Err(PoolConfigError::Missing {
            key,
            expected: "an array of { pool_id, stride_bytes }",
        });
    };
    let Value::Array(entries) = value else {
        return Err(bad(key, "an array of { pool_id, stride_bytes }", value.to_string()));
    };
    if entries.is_empty() {
        return Err(bad(key, "at least one { pool_id, stride_bytes }", "[]".into()));
    }
    let mut payload_pools: Vec<PoolSpec> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let entry_key = format!("{key}[{i}]");
        let Value::Table(table) = entry else {
            return Err(bad(entry_key, "a table { pool_id, stride_bytes }", entry.to_string()));
        };
        let mut e = Section::new(entry_key, table);
        // Both in range by the checks, so the casts are exact.
        let pool_id = e.required_int("pool_id", 1, i64::from(u16::MAX))? as u16;
        let stride_bytes = e.required_int("stride_bytes", 0, i64::from(u32::MAX))? as u32;
        if stride_bytes == 0 || !stride_bytes.is_multiple_of(64) {
            return Err(bad(
                e.key("stride_bytes"),
                "a non-zero multiple of 64",
                stride_bytes.to_string(),
            ));
        }
        if let Some(j) = payload_pools.iter().position(|p| p.pool_id == pool_id) {
            return Err(invalid(
                e.key("pool_id"),
                format!("duplicate pool id {pool_id}, also {key}[{j}].pool_id"),
            ));
        }
        payload_pools.push(PoolSpec { pool_id, stride_bytes });
        e.finish(unknown);
    }
    Ok(Profile { name: name.to_owned(), header_nslots, payload_pools })
}

fn read_supervisor(t: &mut Section<'_>, driver: &DriverSection) -> Result<SupervisorSection> {
    // As in C: an absent or empty channel takes the driver's channel and stream ID.
    let endpoint =
        |t: &mut Section<'_>, channel_key: &str, id_key: &str, channel: &str, id: u32| {
            let own = t.channel(channel_key, "")?;
            let own_id = t.i32(id_key, id as i32)?;
            Ok::<_, PoolConfigError>(if own.is_empty() {
                (channel.to_owned(), id as i32)
            } else {
                (own, own_id)
            })
        };
    let (control_channel, control_stream_id) = endpoint(
        t,
        "control_channel",
        "control_stream_id",
        &driver.control_channel,
        driver.control_stream_id,
    )?;
    let (announce_channel, announce_stream_id) = endpoint(
        t,
        "announce_channel",
        "announce_stream_id",
        &driver.announce_channel,
        driver.announce_stream_id,
    )?;
    let (qos_channel, qos_stream_id) =
        endpoint(t, "qos_channel", "qos_stream_id", &driver.qos_channel, driver.qos_stream_id)?;
    let metadata_channel = t.channel("metadata_channel", "")?;
    let metadata_stream_id = t.i32("metadata_stream_id", 0)?;

    let per_consumer = |t: &mut Section<'_>, channel_key: &str, base_key: &str, range_key: &str| {
        let channel = t.channel(channel_key, "")?;
        let base = t.u32(base_key, 0)?;
        let range = t.u32(range_key, 0)?;
        if base != 0 {
            if range == 0 {
                return Err(PoolConfigError::Missing {
                    key: t.key(range_key),
                    expected: "a non-zero range when the base is non-zero",
                });
            }
            if u64::from(base) + u64::from(range) - 1 > u64::from(u32::MAX) {
                return Err(bad(
                    t.key(range_key),
                    format!("a range that keeps base + range - 1 <= {}", u32::MAX),
                    range.to_string(),
                ));
            }
        }
        Ok((channel, base, range))
    };
    let (
        per_consumer_descriptor_channel,
        per_consumer_descriptor_base,
        per_consumer_descriptor_range,
    ) = per_consumer(
        t,
        "per_consumer_descriptor_channel",
        "per_consumer_descriptor_base",
        "per_consumer_descriptor_range",
    )?;
    let (per_consumer_control_channel, per_consumer_control_base, per_consumer_control_range) =
        per_consumer(
            t,
            "per_consumer_control_channel",
            "per_consumer_control_base",
            "per_consumer_control_range",
        )?;

    let force_mode = t.u32("force_mode", 0)?;
    if force_mode > 2 {
        return Err(bad(
            t.key("force_mode"),
            "0 (none), 1 (STREAM) or 2 (RATE_LIMITED)",
            force_mode.to_string(),
        ));
    }
    let payload_fallback_uri = t.string("payload_fallback_uri", "")?;
    if !(payload_fallback_uri.is_empty()
        || payload_fallback_uri.starts_with("aeron:")
        || payload_fallback_uri.starts_with("bridge://"))
    {
        return Err(bad(
            t.key("payload_fallback_uri"),
            "\"\", an aeron: or a bridge:// uri",
            quoted(&payload_fallback_uri),
        ));
    }
    Ok(SupervisorSection {
        control_channel,
        control_stream_id,
        announce_channel,
        announce_stream_id,
        metadata_channel,
        metadata_stream_id,
        qos_channel,
        qos_stream_id,
        consumer_capacity: t.u32_min("consumer_capacity", 1, 256)?,
        consumer_stale_ms: t.u32("consumer_stale_ms", 5000)?,
        per_consumer_enabled: t.boolean("per_consumer_enabled", false)?,
        per_consumer_descriptor_channel,
        per_consumer_descriptor_base,
        per_consumer_descriptor_range,
        per_consumer_control_channel,
        per_consumer_control_base,
        per_consumer_control_range,
        force_no_shm: t.boolean("force_no_shm", false)?,
        // At most 2, checked above.
        force_mode: force_mode as u8,
        payload_fallback_uri,
    })
}

/// An octal mode string of digits 0-7 only, at most 0o777.
fn parse_mode(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 11 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(text, 8).ok().filter(|m| *m <= 0o777)
}

/// `"A-B"` or `"A"`, decimal digits only, `0 < A <= B <= u32::MAX`.
fn parse_range(text: &str) -> Option<IdRange> {
    let num = |s: &str| -> Option<u32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (start, end) = match text.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let a = num(text)?;
            (a, a)
        }
    };
    (start != 0 && start <= end).then_some(IdRange { start, end })
}

/// `[A-Za-z0-9_-]+`: a namespace (or any path component the layout builds from a name).
pub fn is_component(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn quoted(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn bad(key: impl Into<String>, expected: impl Into<String>, got: String) -> PoolConfigError {
    PoolConfigError::BadValue { key: key.into(), expected: expected.into(), got }
}

fn invalid(key: impl Into<String>, reason: String) -> PoolConfigError {
    PoolConfigError::Invalid { key: key.into(), reason }
}

/// One TOML table being read: typed getters that default absent keys, remember which keys were
/// read, and name the key's full path in errors.
struct Section<'a> {
    path: String,
    table: &'a Table,
    used: BTreeSet<String>,
}

/// The table an absent section reads as.
static EMPTY: std::sync::LazyLock<Table> = std::sync::LazyLock::new(Table::new);

impl<'a> Section<'a> {
    fn new(path: String, table: &'a Table) -> Self {
        Section { path, table, used: BTreeSet::new() }
    }

    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&mut self, key: &str) -> Option<&'a Value> {
        let value = self.table.get(key);
        if value.is_some() {
            self.used.insert(key.to_owned());
        }
        value
    }

    /// A sub-table; absent reads as empty (every key then takes its default).
    fn section(&mut self, key: &str) -> Result<Section<'a>> {
        Ok(self.opt_section(key)?.unwrap_or_else(|| Section::new(self.key(key), &EMPTY)))
    }

    fn opt_section(&mut self, key: &str) -> Result<Option<Section<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(Section::new(self.key(key), t))),
            Some(other) => Err(bad(self.key(key), "a table", other.to_string())),
        }
    }

    /// Every key, sorted: the names of the profiles or streams (each must be a table).
    fn table_names(&self) -> Vec<&'a str> {
        let mut names: Vec<&'a str> = self.table.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    fn string(&mut self, key: &str, default: &str) -> Result<String> {
        Ok(self.opt_string(key)?.unwrap_or_else(|| default.to_owned()))
    }

    fn opt_string(&mut self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(self.key(key), "a string", other.to_string())),
        }
    }

    fn required_string(&mut self, key: &str) -> Result<String> {
        self.opt_string(key)?
            .ok_or_else(|| PoolConfigError::Missing { key: self.key(key), expected: "a string" })
    }

    fn channel(&mut self, key: &str, default: &str) -> Result<String> {
        let value = self.string(key, default)?;
        if value.is_empty() || value.starts_with("aeron:") {
            Ok(value)
        } else {
            Err(bad(self.key(key), CHANNEL_EXPECTED, quoted(&value)))
        }
    }

    fn boolean(&mut self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Boolean(b)) => Ok(*b),
            Some(other) => Err(bad(self.key(key), "true or false", other.to_string())),
        }
    }

    /// An integer in `min..=max` (TOML integers are i64), or `None` when absent.
    fn int(&mut self, key: &str, min: i64, max: i64) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Integer(n)) if (min..=max).contains(n) => Ok(Some(*n)),
            Some(other) => {
                Err(bad(self.key(key), format!("an integer in {min}..={max}"), other.to_string()))
            }
        }
    }

    /// A u32 at least `min`.
    fn u32_min(&mut self, key: &str, min: u32, default: u32) -> Result<u32> {
        // In range by the check, so the cast is exact.
        Ok(self.int(key, i64::from(min), i64::from(u32::MAX))?.map_or(default, |n| n as u32))
    }

    fn u32(&mut self, key: &str, default: u32) -> Result<u32> {
        self.u32_min(key, 0, default)
    }

    fn u64(&mut self, key: &str, default: u64) -> Result<u64> {
        // Non-negative by the check, so the cast is exact.
        Ok(self.int(key, 0, i64::MAX)?.map_or(default, |n| n as u64))
    }

    fn i32(&mut self, key: &str, default: i32) -> Result<i32> {
        // In range by the check, so the cast is exact.
        Ok(self.int(key, i64::from(i32::MIN), i64::from(i32::MAX))?.map_or(default, |n| n as i32))
    }

    /// A key without a default: an integer in `min..=max`.
    fn required_int(&mut self, key: &str, min: i64, max: i64) -> Result<i64> {
        self.int(key, min, max)?
            .ok_or_else(|| PoolConfigError::Missing { key: self.key(key), expected: "an integer" })
    }

    fn string_array(&mut self, key: &str) -> Result<Option<Vec<String>>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        let expected = "an array of strings";
        let Value::Array(items) = value else {
            return Err(bad(self.key(key), expected, value.to_string()));
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(bad(self.key(key), expected, other.to_string())),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// `"A-B"`, `"A"` or an array of them; absent is no range.
    fn ranges(&mut self, key: &str) -> Result<Vec<IdRange>> {
        const EXPECTED: &str = "a range \"A-B\" of stream ids with 0 < A <= B";
        let one = |k: String, v: &Value| -> Result<IdRange> {
            match v {
                Value::String(s) => parse_range(s).ok_or_else(|| bad(k, EXPECTED, v.to_string())),
                other => Err(bad(k, EXPECTED, other.to_string())),
            }
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                let base = self.key(key);
                let ranges = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| one(format!("{base}[{i}]"), v))
                    .collect::<Result<Vec<_>>>()?;
                Ok(ranges)
            }
            Some(v) => Ok(vec![one(self.key(key), v)?]),
        }
    }

    /// Adds the dotted paths of keys never read to `unknown`.
    fn finish(self, unknown: &mut Vec<String>) {
        for key in self.table.keys() {
            if !self.used.contains(key) {
                unknown.push(self.key(key));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config/pool-example.toml");

    /// The example config with `old` replaced by `new` (which must change it).
    fn example_with(old: &str, new: &str) -> String {
        assert!(EXAMPLE.contains(old), "{old:?} is not in the example");
        EXAMPLE.replacen(old, new, 1)
    }

    /// Loading fails, and the error names `key`.
    fn fails(text: &str, key: &str) -> PoolConfigError {
        let err = PoolConfig::from_toml_str(text).expect_err("config should be refused");
        assert_eq!(err.key(), Some(key), "{err}");
        assert!(err.to_string().contains(key), "message names the key: {err}");
        err
    }

    #[test]
    fn c57_bad_configs_fail_to_load() {
        let pools = "payload_pools = [ { pool_id = 1, stride_bytes = 1048576 } ]";
        let cases: Vec<(String, &str, &str)> = vec![
            // (text, key named, a word the message must hold)
            (example_with("header_nslots = 64", "header_nslots = 48"), "profiles.camera.header_nslots", "power of two"),
            (example_with("header_nslots = 64", "header_nslots = 0"), "profiles.camera.header_nslots", "power of two"),
            (example_with("stride_bytes = 1048576", "stride_bytes = 100"), "profiles.camera.payload_pools[0].stride_bytes", "multiple of 64"),
            (example_with("stride_bytes = 1048576", "stride_bytes = 0"), "profiles.camera.payload_pools[0].stride_bytes", "multiple of 64"),
            (example_with("pool_id = 1,", "pool_id = 0,"), "profiles.camera.payload_pools[0].pool_id", "1..=65535"),
            (example_with("pool_id = 1,", "pool_id = 70000,"), "profiles.camera.payload_pools[0].pool_id", "1..=65535"),
            (
                example_with(pools, "payload_pools = [ { pool_id = 1, stride_bytes = 64 }, { pool_id = 1, stride_bytes = 128 } ]"),
                "profiles.camera.payload_pools[1].pool_id",
                "duplicate pool id 1",
            ),
            (example_with("stream_id = 10000", "stream_id = 0"), "streams.cam1.stream_id", "1..=4294967295"),
            (
                format!("{EXAMPLE}[streams.cam2]\nstream_id = 10000\nprofile = \"camera\"\n"),
                "streams.cam2.stream_id",
                "duplicate stream id 10000",
            ),
            (example_with("10000\nprofile = \"camera\"", "10000\nprofile = \"lidar\""), "streams.cam1.profile", "unknown profile \"lidar\""),
            (example_with(pools, "payload_pools = []"), "profiles.camera.payload_pools", "at least one"),
            (example_with(pools, ""), "profiles.camera.payload_pools", "missing"),
            (example_with("permissions_mode = \"660\"", "permissions_mode = \"999\""), "shm.permissions_mode", "octal"),
            (example_with("permissions_mode = \"660\"", "permissions_mode = \"1000\""), "shm.permissions_mode", "octal"),
            (example_with("permissions_mode = \"660\"", "permissions_mode = 660"), "shm.permissions_mode", "a string"),
            (example_with("\"20000-29999\"", "\"0-5\""), "driver.stream_id_range", "0 < A <= B"),
            (example_with("\"20000-29999\"", "\"9-3\""), "driver.stream_id_range", "0 < A <= B"),
            (example_with("\"20000-29999\"", "\"20000-\""), "driver.stream_id_range", "0 < A <= B"),
            (example_with("\"20000-29999\"", "\"twenty\""), "driver.stream_id_range", "0 < A <= B"),
            (example_with("\"20000-29999\"", "[\"20000-20999\", \"x\"]"), "driver.stream_id_range[1]", "0 < A <= B"),
            (example_with("\"20000-29999\"", "20000"), "driver.stream_id_range", "0 < A <= B"),
            (
                example_with("allow_dynamic_streams = false\ndefault_profile = \"camera\"", "allow_dynamic_streams = true"),
                "policies.default_profile",
                "allow_dynamic_streams",
            ),
            (
                example_with("allow_dynamic_streams = false", "allow_dynamic_streams = true")
                    .replacen("stream_id_range = \"20000-29999\"\n", "", 1),
                "driver.stream_id_range",
                "allow_dynamic_streams",
            ),
            // Overlaps (spec 5.8): with each other, static stream IDs, control/announce/QoS IDs.
            (example_with("\"20000-29999\"", "\"20000-31500\""), "driver.descriptor_stream_id_range", "overlap driver.stream_id_range"),
            (example_with("\"20000-29999\"", "[\"20000-20999\", \"20500-21000\"]"), "driver.stream_id_range[1]", "overlap driver.stream_id_range[0]"),
            (example_with("\"20000-29999\"", "\"9000-29999\""), "driver.stream_id_range", "overlap streams.cam1.stream_id"),
            (example_with("\"20000-29999\"", "\"1-1999\""), "driver.stream_id_range", "overlap driver.control_stream_id"),
            (example_with("qos_stream_id = 1200\nstream_id_range", "qos_stream_id = 20001\nstream_id_range"), "driver.stream_id_range", "overlap driver.qos_stream_id"),
            (example_with("stream_id = 10000", "stream_id = 1001"), "streams.cam1.stream_id", "overlap driver.announce_stream_id"),
            (example_with("per_consumer_control_base = 32000", "per_consumer_control_base = 25000"), "supervisor.per_consumer_control_base", "overlap driver.stream_id_range"),
            (example_with("per_consumer_descriptor_base = 31000", "per_consumer_descriptor_base = 32500"), "supervisor.per_consumer_descriptor_base", "overlap driver.control_stream_id_range"),
            // The other checks of the loader.
            (example_with("namespace = \"default\"", "namespace = \"a/b\""), "shm.namespace", "[A-Za-z0-9_-]+"),
            (example_with("namespace = \"default\"", "namespace = \"\""), "shm.namespace", "[A-Za-z0-9_-]+"),
            (example_with("base_dir = \"/dev/shm\"", "base_dir = \"dev/shm\""), "shm.base_dir", "absolute"),
            (example_with("allowed_base_dirs = [\"/dev/shm\"]", "allowed_base_dirs = [\"/dev/shm\", \"tmp\"]"), "shm.allowed_base_dirs[1]", "absolute"),
            (example_with("control_channel = \"aeron:ipc?term-length=4m\"", "control_channel = \"udp://host:1\""), "driver.control_channel", "aeron:"),
            (
                example_with("per_consumer_descriptor_channel = \"aeron:ipc?term-length=4m\"", "per_consumer_descriptor_channel = \"tcp:x\""),
                "supervisor.per_consumer_descriptor_channel",
                "aeron:",
            ),
            (example_with("per_consumer_control_range = 1000", "per_consumer_control_range = 0"), "supervisor.per_consumer_control_range", "non-zero range"),
            (example_with("force_mode = 0", "force_mode = 3"), "supervisor.force_mode", "RATE_LIMITED"),
            (example_with("consumer_capacity = 256", "consumer_capacity = 0"), "supervisor.consumer_capacity", "1..="),
            (example_with("payload_fallback_uri = \"\"", "payload_fallback_uri = \"http://x\""), "supervisor.payload_fallback_uri", "bridge://"),
            (example_with("lease_keepalive_interval_ms = 1000", "lease_keepalive_interval_ms = 0"), "policies.lease_keepalive_interval_ms", "1..="),
            (example_with("lease_expiry_grace_intervals = 3", "lease_expiry_grace_intervals = -1"), "policies.lease_expiry_grace_intervals", "1..="),
            (example_with("control_stream_id = 1000\nannounce_channel", "control_stream_id = 4294967296\nannounce_channel"), "driver.control_stream_id", "0..=4294967295"),
            (example_with("require_hugepages = false", "require_hugepages = \"no\""), "shm.require_hugepages", "true or false"),
            (example_with("default_profile = \"camera\"", "default_profile = \"none\""), "policies.default_profile", "unknown profile"),
            (example_with("[profiles.camera]", "[profiles.other]\nheader_nslots = 8\n[profiles.camera]").replacen(pools, "payload_pools = 5", 1), "profiles.camera.payload_pools", "an array"),
            // The keys move into a nested table: camera itself has no pools then.
            (EXAMPLE.replacen("[profiles.camera]", "[profiles.camera.x]", 1), "profiles.camera.payload_pools", "missing"),
        ];
        for (text, key, word) in &cases {
            let err = fails(text, key);
            assert!(err.to_string().contains(word), "{key}: {err:?} should mention {word:?}");
        }
        // No profile at all.
        let text = "[shm]\nbase_dir = \"/dev/shm\"\n";
        fails(text, "profiles");
        // Not TOML.
        let err = PoolConfig::from_toml_str("[driver\n").unwrap_err();
        assert!(matches!(err, PoolConfigError::Syntax { .. }) && err.key().is_none());
    }

    #[test]
    fn c57_errors_say_expected_and_got() {
        let err = fails(
            &example_with("header_nslots = 64", "header_nslots = 48"),
            "profiles.camera.header_nslots",
        );
        assert_eq!(
            err.to_string(),
            "bad value for 'profiles.camera.header_nslots': expected a power of two, got 48"
        );
        let err = fails(
            &example_with("permissions_mode = \"660\"", "permissions_mode = \"999\""),
            "shm.permissions_mode",
        );
        assert_eq!(
            err.to_string(),
            "bad value for 'shm.permissions_mode': expected an octal mode string at most \"777\", got \"999\""
        );
        let err = fails(&example_with("\"20000-29999\"", "\"9-3\""), "driver.stream_id_range");
        assert!(err.to_string().ends_with("got \"9-3\""), "{err}");
    }

    #[test]
    fn c58_example_config_loads() {
        let c = PoolConfig::from_toml_str(EXAMPLE).unwrap();
        assert_eq!(c.driver.instance_id, "driver-example");
        assert_eq!(c.driver.control_stream_id, 1000);
        assert_eq!(c.driver.announce_stream_id, 1001);
        assert_eq!(c.driver.qos_stream_id, 1200);
        assert_eq!(c.driver.control_channel, "aeron:ipc?term-length=4m");
        assert_eq!(c.driver.stream_id_ranges, vec![IdRange { start: 20000, end: 29999 }]);
        assert_eq!(
            c.driver.descriptor_stream_id_ranges,
            vec![IdRange { start: 31000, end: 31999 }]
        );
        assert_eq!(c.driver.control_stream_id_ranges, vec![IdRange { start: 32000, end: 32999 }]);
        assert_eq!(c.shm.base_dir, "/dev/shm");
        assert_eq!(c.shm.namespace, "default");
        assert_eq!(c.shm.permissions_mode, 0o660);
        assert_eq!(c.shm.allowed_base_dirs, vec!["/dev/shm".to_owned()]);
        assert!(!c.policies.allow_dynamic_streams);
        assert_eq!(c.policies.default_profile.as_deref(), Some("camera"));
        assert_eq!(c.policies.node_id_reuse_cooldown_ms, 1000);
        assert_eq!(c.lease_ttl_ns(), 3_000_000_000);
        let camera = c.profile("camera").unwrap();
        assert_eq!(camera.header_nslots, 64);
        assert_eq!(camera.payload_pools, vec![PoolSpec { pool_id: 1, stride_bytes: 1 << 20 }]);
        assert_eq!(
            c.streams,
            vec![StaticStream { name: "cam1".into(), stream_id: 10000, profile: "camera".into() }]
        );
        let s = c.supervisor.as_ref().unwrap();
        assert_eq!(
            (s.metadata_stream_id, s.consumer_capacity, s.consumer_stale_ms),
            (1300, 256, 5000)
        );
        assert!(s.per_consumer_enabled);
        assert_eq!(
            (s.per_consumer_descriptor_base, s.per_consumer_descriptor_range),
            (31000, 1000)
        );
        assert_eq!((s.per_consumer_control_base, s.per_consumer_control_range), (32000, 1000));
        assert_eq!((s.force_no_shm, s.force_mode, s.payload_fallback_uri.as_str()), (false, 0, ""));
        assert!(c.unknown_keys().is_empty(), "{:?}", c.unknown_keys());
    }

    #[test]
    fn embedded_default_has_the_documented_values() {
        let c = PoolConfig::embedded_default().unwrap();
        assert_eq!((c.shm.base_dir.as_str(), c.shm.namespace.as_str()), ("/dev/shm", "default"));
        let camera = c.profile("camera").unwrap();
        assert_eq!(camera.header_nslots, 32);
        assert_eq!(
            camera.payload_pools,
            vec![PoolSpec { pool_id: 1, stride_bytes: 640 * 480 * 3 }]
        );
        assert_eq!(921_600 % 64, 0);
        let small = c.profile("small").unwrap();
        assert_eq!((small.header_nslots, small.payload_pools[0].stride_bytes), (64, 4096));
        assert_eq!(
            c.streams,
            vec![StaticStream { name: "cam".into(), stream_id: 10000, profile: "camera".into() }]
        );
        let p = &c.policies;
        assert!(p.allow_dynamic_streams);
        assert_eq!(p.default_profile.as_deref(), Some("small"));
        assert_eq!(c.driver.stream_id_ranges, vec![IdRange { start: 20000, end: 29999 }]);
        assert_eq!(
            (p.announce_period_ms, p.lease_keepalive_interval_ms, p.lease_expiry_grace_intervals),
            (1000, 1000, 3)
        );
        assert_eq!(p.node_id_reuse_cooldown_ms, 1000);
        assert!(p.prefault_shm && p.epoch_gc_enabled);
        assert_eq!(p.epoch_gc_keep, 2);
        let s = c.supervisor.as_ref().unwrap();
        assert!(!s.per_consumer_enabled);
        // Empty supervisor channels take the driver's endpoints.
        assert_eq!(
            (s.control_channel.as_str(), s.control_stream_id),
            ("aeron:ipc?term-length=4m", 1000)
        );
        assert_eq!(s.announce_stream_id, 1001);
        assert!(c.unknown_keys().is_empty(), "{:?}", c.unknown_keys());
    }

    #[test]
    fn every_key_takes_the_spec_default_when_absent() {
        let c = PoolConfig::from_toml_str(
            "[profiles.p]\npayload_pools = [{ pool_id = 7, stride_bytes = 64 }]\n",
        )
        .unwrap();
        let d = &c.driver;
        assert_eq!((d.instance_id.as_str(), d.aeron_dir.as_str()), ("driver-01", ""));
        assert_eq!(
            (d.control_channel.as_str(), d.control_stream_id),
            ("aeron:ipc?term-length=4m", 1000)
        );
        assert_eq!(
            (d.announce_channel.as_str(), d.announce_stream_id),
            ("aeron:ipc?term-length=4m", 1000)
        );
        assert_eq!((d.qos_channel.as_str(), d.qos_stream_id), ("aeron:ipc?term-length=4m", 1200));
        assert!(d.stream_id_ranges.is_empty() && d.descriptor_stream_id_ranges.is_empty());
        let s = &c.shm;
        assert_eq!(
            (s.base_dir.as_str(), s.namespace.as_str(), s.require_hugepages),
            ("/dev/shm", "default", false)
        );
        assert_eq!((s.page_size_bytes, s.permissions_mode), (4096, 0o660));
        assert_eq!(s.allowed_base_dirs, vec!["/dev/shm".to_owned()]);
        let p = &c.policies;
        assert!(!p.allow_dynamic_streams && p.default_profile.is_none());
        assert_eq!(
            (p.announce_period_ms, p.lease_keepalive_interval_ms, p.lease_expiry_grace_intervals),
            (1000, 1000, 3)
        );
        assert_eq!(p.node_id_reuse_cooldown_ms, 1000);
        assert!(p.prefault_shm && !p.mlock_shm && p.epoch_gc_enabled && !p.epoch_gc_on_startup);
        assert_eq!((p.epoch_gc_keep, p.epoch_gc_min_age_ns), (2, 3_000_000_000));
        assert_eq!((p.shutdown_timeout_ms, p.shutdown_token.as_str()), (2000, ""));
        assert_eq!(c.profiles[0].header_nslots, 1024);
        assert!(c.streams.is_empty() && c.supervisor.is_none());

        // announce_period_ms 0 means 1000; the GC age follows the period.
        let c = PoolConfig::from_toml_str(
            "[policies]\nannounce_period_ms = 0\n[profiles.p]\npayload_pools = [{ pool_id = 7, stride_bytes = 64 }]\n",
        )
        .unwrap();
        assert_eq!(c.announce_period_ns(), 1_000_000_000);
        let c = PoolConfig::from_toml_str(
            "[policies]\nannounce_period_ms = 250\n[profiles.p]\npayload_pools = [{ pool_id = 7, stride_bytes = 64 }]\n",
        )
        .unwrap();
        assert_eq!(c.policies.epoch_gc_min_age_ns, 750_000_000);

        // An empty [supervisor] table enables it with the driver's endpoints and defaults.
        let c = PoolConfig::from_toml_str(&EXAMPLE.replacen(
            &EXAMPLE[EXAMPLE.find("[supervisor]").unwrap()..],
            "[supervisor]\n",
            1,
        ))
        .unwrap();
        let s = c.supervisor.unwrap();
        assert_eq!(
            (s.control_stream_id, s.announce_stream_id, s.qos_stream_id),
            (1000, 1001, 1200)
        );
        assert_eq!((s.metadata_channel.as_str(), s.metadata_stream_id), ("", 0));
        assert_eq!(
            (s.consumer_capacity, s.consumer_stale_ms, s.per_consumer_enabled),
            (256, 5000, false)
        );
    }

    #[test]
    fn channels_accept_aeron_and_empty() {
        for value in ["", "aeron:ipc", "aeron:udp?endpoint=localhost:40123"] {
            let text = example_with(
                "control_channel = \"aeron:ipc?term-length=4m\"",
                &format!("control_channel = \"{value}\""),
            );
            assert_eq!(PoolConfig::from_toml_str(&text).unwrap().driver.control_channel, value);
        }
    }

    #[test]
    fn ranges_take_single_ids_and_arrays() {
        let text = example_with("\"20000-29999\"", "[\"20000-20009\", \"20100\"]");
        let c = PoolConfig::from_toml_str(&text).unwrap();
        assert_eq!(
            c.driver.stream_id_ranges,
            vec![IdRange { start: 20000, end: 20009 }, IdRange { start: 20100, end: 20100 }]
        );
        assert_eq!(c.driver.stream_id_ranges[0].len(), 10);
        // The supervisor's per-consumer ranges may coincide with the driver's (as in the example).
        assert!(PoolConfig::from_toml_str(EXAMPLE).is_ok());
        // Announce may equal control.
        assert!(PoolConfig::from_toml_str(&example_with(
            "announce_stream_id = 1001",
            "announce_stream_id = 1000"
        ))
        .is_ok());
    }

    #[test]
    fn unknown_keys_are_ignored_and_listed() {
        let text = example_with("[shm]", "colour = \"blue\"\n[shm]")
            .replacen("header_nslots = 64", "header_nslots = 64\nlayout = 2", 1)
            .replacen("pool_id = 1,", "pool_id = 1, numa = 0,", 1)
            + "[bridge]\nenabled = true\n";
        let c = PoolConfig::from_toml_str(&text).unwrap();
        let mut keys = c.unknown_keys().to_vec();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "bridge",
                "driver.colour",
                "profiles.camera.layout",
                "profiles.camera.payload_pools[0].numa"
            ]
        );
        assert_eq!(c.profile("camera").unwrap().header_nslots, 64);
    }

    #[test]
    fn permission_modes_parse_as_octal() {
        assert_eq!(parse_mode("660"), Some(0o660));
        assert_eq!(parse_mode("0660"), Some(0o660));
        assert_eq!(parse_mode("777"), Some(0o777));
        for bad in ["", "999", "1000", "2770", "-660", " 660", "0x1ff", "66o"] {
            assert_eq!(parse_mode(bad), None, "{bad:?}");
        }
    }
}
