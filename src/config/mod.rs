//! The daemon's configuration: types, loading, validation.
//!
//! A [`Config`] is built from three layers, later ones winning:
//!
//! 1. the embedded default, `config/corelane.toml`, compiled in ([`EMBEDDED_DEFAULT`]); it lists
//!    every key with its default value, unit and range, and is the reference for what each key
//!    means;
//! 2. the file given with `--config PATH`, which may set only some keys: sections and keys it
//!    leaves out keep their defaults, except `[[lanes]]`, which replaces the whole list;
//! 3. environment overrides `CORELANE_<SECTION>_<KEY>` for the scalar keys of the non-array
//!    sections (e.g. `CORELANE_CONTROL_MAX_BODY_BYTES=2048`, `CORELANE_METRICS_LISTEN=`), parsed
//!    as the key's type; `CORELANE_LOG` is a short name for `CORELANE_LOG_FILTER`. Lanes cannot
//!    be set from the environment.
//!
//! Every layer is checked before it is merged (unknown sections and keys, types, ranges), so an
//! error names the key and where the value came from (file and line, or variable). The merged
//! result is then validated as a whole ([`Config::validate`]: lanes and agents). Loading fails
//! on the first error.
//!
//! ```
//! use corelane::config::Config;
//!
//! let env = |name: &str| (name == "CORELANE_CONTROL_MAX_BODY_BYTES").then(|| "2048".to_owned());
//! let config = Config::load(None, &env).unwrap();
//! assert_eq!(config.control.max_body_bytes, 2048);
//! assert_eq!(config.control.socket, "control.sock"); // the default
//! ```

mod error;
mod schema;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::{ConfigError, Origin};
pub use schema::{
    key, placeholder_section, uint, KeySpec, Kind, SectionSpec, StrRule, ALLOC_SECTION,
    CONTROL_SECTION, FRAMES_SECTION, METRICS_SECTION, POOL_SECTION,
};

use schema::{Doc, DocName};

use crate::daemon::services::{self, SERVICES};

/// The embedded default configuration, `config/corelane.toml`: every key with its default value
/// and a comment saying what it does, its unit and its range.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/corelane.toml");

macro_rules! define_config {
    ($($(#[$doc:meta])* $field:ident: $config:ty => $service:expr,)*) => {
        /// The whole configuration of `corelane run`. See `config/corelane.toml` for every key.
        /// The service sections come from the table in [`crate::daemon::services`].
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Config {
            /// `[runtime]`: process-wide settings.
            pub runtime: RuntimeConfig,
            /// `[[lanes]]`: the pinned threads and the agents each hosts.
            pub lanes: Vec<LaneConfig>,
            $($(#[$doc])* pub $field: $config,)*
            /// `[log]`: logging.
            pub log: LogConfig,
        }
    };
}
services::for_each_service!(define_config);

/// The agents a lane can host in this build (every service's that is in the build).
pub fn known_agents() -> Vec<&'static str> {
    SERVICES.iter().filter(|s| s.in_build()).flat_map(|s| s.agents().iter().copied()).collect()
}

/// `[runtime]`: process-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `dir`: directory of the daemon's sockets and files; `""` (default) picks one, see
    /// [`RuntimeConfig::runtime_dir`]. Otherwise an absolute path.
    pub dir: String,
    /// `reactor`: the socket event reactor. Default `auto`.
    pub reactor: ReactorKind,
    /// `shutdown_timeout_ms`: how long lanes get to finish after SIGINT/SIGTERM, in
    /// milliseconds, `0..=600000`; 0 exits without waiting. Default 100.
    pub shutdown_timeout_ms: u64,
    /// `uring_defer_taskrun`: set up io_uring rings with `IORING_SETUP_DEFER_TASKRUN`
    /// ([`crate::runtime::UringOptions::defer_taskrun`]). Default false.
    pub uring_defer_taskrun: bool,
    /// `uring_skip_send_cqe`: mark chained sends `IOSQE_CQE_SKIP_SUCCESS`
    /// ([`crate::runtime::UringOptions::skip_send_cqe`]). Default false.
    pub uring_skip_send_cqe: bool,
}

/// `runtime.reactor`: which event reactor drives the sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReactorKind {
    /// `"auto"`: io_uring when the kernel allows it, else poll.
    Auto,
    /// `"io_uring"`: io_uring only; starting fails if the kernel refuses it.
    IoUring,
    /// `"poll"`: the portable poll(2) fallback.
    Poll,
}

/// One `[[lanes]]` entry: a thread, optionally pinned, running a loop over its agents.
///
/// In TOML a lane is flat: `name`, `core` (optional), `idle = "spin" | "yield" | "backoff" |
/// "sleep"` (default `"backoff"`), the `idle_*` parameters of that kind (each optional, with the
/// defaults of [`IdleStrategy::BACKOFF`] and [`IdleStrategy::SLEEP`]), and `agents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LaneToml", into = "LaneToml")]
pub struct LaneConfig {
    /// `name`: used in logs, metrics and thread names; non-empty, unique among lanes.
    pub name: String,
    /// `core`: the CPU core the lane is pinned to, `0..=4095`; `None` (key absent) = not pinned.
    /// Distinct among lanes.
    pub core: Option<usize>,
    /// `idle` and `idle_*`: what the lane does when no agent had work.
    pub idle: IdleStrategy,
    /// `agents`: the agents this lane hosts, each one of [`known_agents`] and hosted by exactly
    /// one lane. A `metrics` entry is ignored while `metrics.enabled = false`.
    pub agents: Vec<String>,
}

/// What a lane does when none of its agents did work in a loop iteration.
///
/// Inside a lane this is written flat (`idle = "backoff"`, `idle_max_park_us = 2000`); on its
/// own it serialises as a table tagged by `kind`, e.g. `{ kind = "sleep", sleep_us = 100 }`.
/// (In that standalone form serde does not reject extra keys next to the unit kinds `spin` and
/// `yield`, a known serde limitation; the lane form, which the loader reads, rejects them.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum IdleStrategy {
    /// `"spin"`: busy-poll; lowest latency, burns the core.
    Spin,
    /// `"yield"`: `sched_yield` between iterations.
    Yield,
    /// `"backoff"`: spin, then yield, then park for growing times.
    Backoff {
        /// `idle_spin_iterations`: busy-poll iterations before yielding, `0..=1000000`.
        /// Default 100.
        #[serde(default = "default_spin_iterations")]
        spin_iterations: u32,
        /// `idle_yield_iterations`: yields before parking, `0..=1000000`. Default 10.
        #[serde(default = "default_yield_iterations")]
        yield_iterations: u32,
        /// `idle_max_park_us`: longest single park in microseconds, `1..=1000000`. Default 1000.
        #[serde(default = "default_max_park_us")]
        max_park_us: u64,
    },
    /// `"sleep"`: sleep a fixed time per idle iteration.
    Sleep {
        /// `idle_sleep_us`: time slept in microseconds, `1..=1000000`. Default 100.
        #[serde(default = "default_sleep_us")]
        sleep_us: u64,
    },
}

/// `[control]`: the control socket (canonical 24-byte framing with CRC32).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// `socket`: file name of the Unix socket inside the runtime dir. Default `control.sock`.
    pub socket: String,
    /// `max_body_bytes`: largest body accepted, in bytes, `1..=67108864`. Default 1 MiB.
    pub max_body_bytes: u32,
    /// `enable_legacy_support`: accept legacy v1 clients and answer in v1. Default false.
    pub enable_legacy_support: bool,
    /// `max_connections`: most connections open at once, `1..=1048576`. Default 1024.
    pub max_connections: u32,
    /// `crc_error_limit`: bad-CRC frames in a row that close a connection, `1..=1000000`.
    /// Default 10.
    pub crc_error_limit: u32,
    /// `header_timeout_ms`: a started frame must complete within this, in milliseconds,
    /// `1..=600000`. Default 5000.
    pub header_timeout_ms: u64,
    /// `idle_timeout_ms`: close a connection with no frame for this long, in milliseconds,
    /// `0..=86400000`; 0 = never. Default 300000 (5 minutes).
    pub idle_timeout_ms: u64,
    /// `max_pending_output_bytes`: per connection, most reply bytes queued for a peer that does
    /// not read before it is closed, `4096..=1073741824`. Default 4 MiB.
    pub max_pending_output_bytes: u32,
    /// `write_timeout_ms`: close a connection whose replies stay unwritten, with no byte
    /// taken by the peer, for this long, in milliseconds, `1..=600000`. Default 5000.
    pub write_timeout_ms: u64,
    /// `max_buffered_bytes`: budget of bytes all control connections together may buffer
    /// (unsent replies, partial requests); past it requests get a `daemon busy` error reply,
    /// `65536..=1099511627776`. Default 64 MiB.
    pub max_buffered_bytes: u64,
    /// `shm_channels`: offer shared-memory channels to clients that ask (msg_type 4).
    /// Default true.
    pub shm_channels: bool,
    /// `max_shm_channels`: most shared-memory channels open at once, `0..=65536`. Default 256.
    pub max_shm_channels: u32,
    /// `shm_request_records`: records of a channel's request ring (128 bytes each, rounded up
    /// to a power of two), `16..=65536`. Default 64.
    pub shm_request_records: u32,
    /// `shm_response_records`: records of a channel's response ring (128 bytes each, rounded
    /// up to a power of two), `16..=65536`. Default 256.
    pub shm_response_records: u32,
}

/// `[metrics]`: the counters file and the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `enabled`: run the metrics agent. Default true.
    pub enabled: bool,
    /// `listen`: address of the HTTP endpoint; `""` disables it. Default `127.0.0.1:9090`.
    pub listen: String,
    /// `counters_file`: file name of the counters file inside the runtime dir. Default
    /// `counters`.
    pub counters_file: String,
    /// `publish_interval_ms`: how often counters are published, in milliseconds,
    /// `1..=3600000`. Default 1000.
    pub publish_interval_ms: u64,
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `filter`: tracing `EnvFilter` directives. Default `info`; `CORELANE_LOG` overrides.
    pub filter: String,
}

/// `[pool]`, `[alloc]`, `[frames]`: sections reserved for services of later builds, so configs
/// written today keep their shape. `enabled = true` fails validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePlaceholder {
    /// `enabled`: start the service. Must be false in this build. Default false.
    pub enabled: bool,
}

/// `[frames]`: the frame worker of frame protocol v1 (`specs/frames-v1.md`): a TCP server
/// for edge agents, and the detector that answers their frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FramesConfig {
    /// `enabled`: start the worker (agents `frames` and `frames-detector`). Default true.
    pub enabled: bool,
    /// `listen`: TCP address agents connect to. Default `"127.0.0.1:7070"`.
    pub listen: String,
    /// `max_connections`: most agents connected at once. Default 64.
    pub max_connections: u32,
    /// `window`: frames in flight per connection (InitOk's initial credits; an agent's
    /// `max_inflight` can lower it). Default 4.
    pub window: u32,
    /// `max_width`, `max_height`: the largest frame the worker takes. Default 1920 x 1080.
    pub max_width: u32,
    /// See `max_width`.
    pub max_height: u32,
    /// `default_width`, `default_height`: the size chosen when an agent states no maximum.
    /// Default 640 x 480.
    pub default_width: u32,
    /// See `default_width`.
    pub default_height: u32,
    /// `adaptive_window`: shrink a connection's window (WindowUpdate) while its frames wait
    /// for the detector longer than twice their processing time, and grow it back. Default
    /// true.
    pub adaptive_window: bool,
    /// `fps_target`: frame rate reported in InitOk. Default 10.
    pub fps_target: u32,
    /// `init_timeout_ms`: how long a connection may stay without Init. Default 3000.
    pub init_timeout_ms: u64,
    /// `max_queued_bytes`: bytes of frames handed to the detector and not answered yet, over
    /// all connections; over it no connection is read. Default 134217728 (128 MiB).
    pub max_queued_bytes: u64,
    /// `heartbeat_ms`: heartbeat period. Default 2000.
    pub heartbeat_ms: u64,
    /// `peer_timeout_ms`: silence from an agent that closes its connection. Default 10000.
    pub peer_timeout_ms: u64,
    /// `backpressure_timeout_ms`: how long results may wait unread before
    /// BACKPRESSURE_TIMEOUT and a close. Default 5000.
    pub backpressure_timeout_ms: u64,
    /// `detector`: `"motion"` (the built-in classical detector), `"onnx"` (the model at
    /// `model`; a build with the `onnx` feature) or `"none"` (transport only: frames are
    /// validated and answered with empty Results, not decoded). Default `"motion"`.
    pub detector: String,
    /// `model`: the absolute path of a YOLO-style ONNX model, for `detector = "onnx"`
    /// (`corelane run --model PATH` sets both). Default `""`.
    pub model: String,
    /// `pool_stream`: publish every accepted frame into this tensor pool stream (0: off).
    /// Default 0.
    pub pool_stream: u32,
}

/// `[pool]`: the tensor pool driver. Its driver configuration is a tp_driver-style config
/// (`crate::pool::config`): the file `config_file` (or `corelane run --pool-config FILE`) if
/// set, else the sub-tables here (`[pool.driver]`, `[pool.shm]`, `[pool.policies]`,
/// `[pool.profiles.<name>]`, `[pool.streams.<name>]`, `[pool.supervisor]`), merged key by key
/// over the embedded default's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// `enabled`: start the driver. Default true.
    pub enabled: bool,
    /// `config_file`: an absolute path to a tp_driver config file used instead of the
    /// sub-tables; `""` for none. Default `""`.
    pub config_file: String,
    /// `[pool.driver]`.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub driver: toml::Table,
    /// `[pool.shm]`.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub shm: toml::Table,
    /// `[pool.policies]`.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub policies: toml::Table,
    /// `[pool.profiles.<name>]`.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub profiles: toml::Table,
    /// `[pool.streams.<name>]`.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub streams: toml::Table,
    /// `[pool.supervisor]`.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub supervisor: toml::Table,
}

impl PoolSection {
    /// The sub-tables as one tp_driver-style document (`[driver]`, `[shm]`, ...).
    pub fn driver_tables(&self) -> toml::Table {
        let mut doc = toml::Table::new();
        for (name, table) in [
            ("driver", &self.driver),
            ("shm", &self.shm),
            ("policies", &self.policies),
            ("profiles", &self.profiles),
            ("streams", &self.streams),
            ("supervisor", &self.supervisor),
        ] {
            if !table.is_empty() {
                doc.insert(name.to_owned(), toml::Value::Table(table.clone()));
            }
        }
        doc
    }
}

/// `[alloc]`: the alloc server (`crate::alloc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocConfig {
    /// `enabled`: start the alloc server. Default true.
    pub enabled: bool,
    /// `listeners`: Unix stream sockets to listen on, each `"<layout>:<path>"`; a relative
    /// path is inside the runtime dir. Layouts: `native` (corelane clients only),
    /// `tt-metal` (legacy v4 or v5, detected per connection), `tt-metal-v4`, `tt-metal-v5`,
    /// `compact-v2`. A connection whose first bytes are the canonical magic is native on any
    /// listener. Default `["native:alloc.sock", "tt-metal:/tmp/tt_allocation_server.sock"]`.
    pub listeners: Vec<String>,
    /// `devices`: the simulated device table, one board preset per device id
    /// (`n150`, `n300`, `p150`, `e150`), at most 8. Default `["n300", "n300"]`.
    pub devices: Vec<String>,
    /// `max_connections`: most client connections open at once. Default 4096.
    pub max_connections: u32,
    /// `reorder_window`: most early events held per client while a gap fills. Default 65536.
    pub reorder_window: u32,
    /// `gap_timeout_ms`: how long a gap in a client's sequence may wait before it is skipped.
    /// Default 100.
    pub gap_timeout_ms: u64,
    /// `release_on_disconnect`: release a process's entries when its last connection closes,
    /// not only when it exits. Default false.
    pub release_on_disconnect: bool,
    /// `exit_grace_ms`: after a client process exits, how long its sockets may take to
    /// deliver what it sent before its entries are released anyway. Default 1000.
    pub exit_grace_ms: u64,
    /// `ring_capacity`: records per shared-memory ring (a power of two). Default 8192.
    pub ring_capacity: u32,
    /// `max_rings_per_client`: shared-memory rings one connection may register; 0 offers
    /// none. Default 64.
    pub max_rings_per_client: u32,
    /// `max_rings`: shared-memory rings of all clients together. Default 1024.
    pub max_rings: u32,
    /// `drain_batch`: most records taken from one ring per pass. Default 256.
    pub drain_batch: u32,
    /// `legacy_detect_timeout_ms`: how long a `tt-metal` connection with one 128-byte record
    /// and nothing more waits before it is read as v4. Default 5.
    pub legacy_detect_timeout_ms: u64,
    /// `max_entries`: most live ledger entries (buffers, CBs, kernels of all processes) on
    /// the ingest lane; an allocation past it is refused and counted. Default 4194304.
    pub max_entries: u64,
    /// `latency_probe`: record, for every event applied on arrival, `CLOCK_MONOTONIC` now minus
    /// its `timestamp_ns` into a histogram on the lane, read (and reset) with the native
    /// `LatencyReport` query. For benchmarks; off costs nothing. Default false.
    pub latency_probe: bool,
}

/// One environment variable the loader reads, for `corelane run --help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOverride {
    /// The variable, e.g. `CORELANE_CONTROL_MAX_BODY_BYTES`.
    pub var: String,
    /// The key it sets, e.g. `control.max_body_bytes`.
    pub key: String,
    /// What it accepts, e.g. `an integer in 1..=67108864`.
    pub expected: String,
}

impl Config {
    /// Load the configuration: the embedded default, then the file at `path` if given, then the
    /// environment overrides that `env` returns, then [`Config::validate`].
    ///
    /// `env` is a lookup (`|name| std::env::var(name).ok()` in the daemon, a map in tests), so
    /// it can only be asked for the names in [`env_overrides`]; unknown `CORELANE_*` variables
    /// are caught by [`check_env_names`], which [`Config::load_from_process`] runs first.
    pub fn load(
        path: Option<&Path>,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = path
            .map(|path| {
                std::fs::read_to_string(path)
                    .map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })
            })
            .transpose()?;
        let layer =
            path.zip(text.as_deref()).map(|(path, text)| (text, DocName::File(path.into())));
        build(layer, Some(env))
    }

    /// [`Config::load`] with the process environment: fails on any `CORELANE_*` variable that is
    /// no known override ([`check_env_names`]) or whose value is not UTF-8, then loads.
    pub fn load_from_process(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut vars = std::collections::HashMap::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(schema::ENV_PREFIX) {
                continue;
            }
            check_env_names([name])?;
            let value = value.into_string().map_err(|value| ConfigError::BadValue {
                key: env_overrides()
                    .into_iter()
                    .find(|o| o.var == name)
                    .map_or_else(String::new, |o| o.key),
                expected: "valid UTF-8".to_owned(),
                got: format!("{value:?}"),
                origin: Origin::Env { var: name.to_owned() },
            })?;
            vars.insert(name.to_owned(), value);
        }
        Config::load(path, &|name: &str| vars.get(name).cloned())
    }

    /// Parse `text` as a configuration layer over the embedded default (no environment), and
    /// validate. Keys the text leaves out keep their defaults.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        build(Some((text, DocName::Text)), None)
    }

    /// The effective configuration as TOML, every key written out (what `corelane config show`
    /// prints). [`Config::from_toml_str`] of the result gives back an equal `Config`.
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Shape { message: e.to_string() })
    }

    /// Check every value's range and the rules across keys: at least one lane; lane names
    /// unique; pinned cores distinct; each agent known and hosted by exactly one lane; `control`
    /// hosted, and `metrics` too while metrics are enabled; the two runtime-dir file names
    /// distinct; no reserved service enabled. [`Config::load`] calls it; call it on a `Config`
    /// built or changed in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let table = toml::Table::try_from(self)
            .map_err(|e| ConfigError::Shape { message: e.to_string() })?;
        schema::check(&table, &Doc::value())?;

        for service in SERVICES {
            service.validate(self)?;
        }
        self.validate_lanes()
    }

    /// The path of the control socket: `control.socket` inside the runtime dir.
    pub fn control_socket_path(&self, env: &impl Fn(&str) -> Option<String>) -> PathBuf {
        self.runtime.runtime_dir(env).join(&self.control.socket)
    }

    /// The path of the counters file: `metrics.counters_file` inside the runtime dir.
    pub fn counters_path(&self, env: &impl Fn(&str) -> Option<String>) -> PathBuf {
        self.runtime.runtime_dir(env).join(&self.metrics.counters_file)
    }

    fn validate_lanes(&self) -> Result<(), ConfigError> {
        if self.lanes.is_empty() {
            return Err(ConfigError::Invalid {
                at: "lanes".to_owned(),
                reason: "expected at least one [[lanes]] entry, got none".to_owned(),
            });
        }
        // (agent, index of the lane hosting it)
        let mut hosted: Vec<(&str, usize)> = Vec::new();
        for (index, lane) in self.lanes.iter().enumerate() {
            let earlier = &self.lanes[..index];
            if let Some(first) = earlier.iter().position(|l| l.name == lane.name) {
                return Err(ConfigError::Invalid {
                    at: format!("lanes[{index}].name"),
                    reason: format!("lane name '{}' is already used by lanes[{first}]", lane.name),
                });
            }
            if let Some(core) = lane.core {
                if let Some(other) = earlier.iter().find(|l| l.core == Some(core)) {
                    return Err(ConfigError::Invalid {
                        at: format!("lanes[{index}].core"),
                        reason: format!("core {core} is already used by lane '{}'", other.name),
                    });
                }
            }
            for agent in &lane.agents {
                let at = format!("lanes[{index}].agents");
                match services::owner_of(agent) {
                    Some(service) if !service.in_build() => {
                        return Err(ConfigError::Invalid {
                            at,
                            reason: format!("agent '{agent}' is not in this build yet"),
                        });
                    }
                    Some(_) => {}
                    None => {
                        return Err(ConfigError::Invalid {
                            at,
                            reason: format!(
                                "unknown agent '{agent}'; expected one of: {}",
                                known_agents().join(", ")
                            ),
                        });
                    }
                }
                if let Some(&(_, host)) = hosted.iter().find(|(a, _)| a == agent) {
                    return Err(ConfigError::Invalid {
                        at,
                        reason: format!(
                            "agent '{agent}' is already hosted by lane '{}'",
                            self.lanes[host].name
                        ),
                    });
                }
                hosted.push((agent, index));
            }
        }
        // Every agent of an enabled service must be placed (but those it can do without).
        for service in SERVICES.iter().filter(|s| s.enabled(self)) {
            for agent in service.agents() {
                if service.optional_agents().contains(agent) {
                    continue;
                }
                if !hosted.iter().any(|(a, _)| a == agent) {
                    let switch = service.section().keys.iter().any(|k| k.name == "enabled");
                    let because = if switch {
                        format!(" while {}.enabled = true", service.name())
                    } else {
                        String::new()
                    };
                    return Err(ConfigError::Invalid {
                        at: "lanes".to_owned(),
                        reason: format!(
                            "agent '{agent}' is hosted by no lane; add it to one lane's agents{because}"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Default for Config {
    /// The embedded default, `config/corelane.toml`.
    fn default() -> Self {
        // INVARIANT: the embedded default loads and validates; the test
        // `embedded_default_loads_and_validates` checks it on every build.
        build(None, None).expect("the embedded config/corelane.toml is a valid configuration")
    }
}

impl RuntimeConfig {
    /// The directory of the daemon's sockets and files: `dir` when set; otherwise
    /// `$XDG_RUNTIME_DIR/corelane` when `XDG_RUNTIME_DIR` is an absolute path; otherwise
    /// `<base>/corelane-$USER`, where `<base>` is [`FALLBACK_BASES`]' first existing directory
    /// (`/dev/shm`, a tmpfs on Linux, before `/tmp`, which may be on disk), with the user name
    /// reduced to `[A-Za-z0-9_-]` (other characters become `_`) and `unknown` when `USER` is
    /// unset or empty. `env` looks variables up.
    pub fn runtime_dir(&self, env: &impl Fn(&str) -> Option<String>) -> PathBuf {
        if !self.dir.is_empty() {
            return PathBuf::from(&self.dir);
        }
        if let Some(xdg) = env("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_absolute()) {
            return Path::new(&xdg).join("corelane");
        }
        let user = env("USER").filter(|u| !u.is_empty()).map_or_else(
            || "unknown".to_owned(),
            |u| {
                u.chars()
                    .map(
                        |c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' },
                    )
                    .collect()
            },
        );
        let base = FALLBACK_BASES.iter().find(|b| Path::new(b).is_dir()).unwrap_or(&"/tmp");
        Path::new(base).join(format!("corelane-{user}"))
    }
}

/// Where the runtime directory goes without `runtime.dir` or `XDG_RUNTIME_DIR`, in order of
/// preference: the first that exists.
pub const FALLBACK_BASES: [&str; 2] = ["/dev/shm", "/tmp"];

impl IdleStrategy {
    /// The default idle strategy: backoff with 100 spins, 10 yields, parks up to 1000 us.
    pub const BACKOFF: IdleStrategy = IdleStrategy::Backoff {
        spin_iterations: default_spin_iterations(),
        yield_iterations: default_yield_iterations(),
        max_park_us: default_max_park_us(),
    };

    /// Sleep with the default 100 us.
    pub const SLEEP: IdleStrategy = IdleStrategy::Sleep { sleep_us: default_sleep_us() };

    /// The kind as written in TOML: `"spin"`, `"yield"`, `"backoff"` or `"sleep"`.
    pub fn kind(&self) -> &'static str {
        match self {
            IdleStrategy::Spin => "spin",
            IdleStrategy::Yield => "yield",
            IdleStrategy::Backoff { .. } => "backoff",
            IdleStrategy::Sleep { .. } => "sleep",
        }
    }
}

impl Default for IdleStrategy {
    /// [`IdleStrategy::BACKOFF`].
    fn default() -> Self {
        IdleStrategy::BACKOFF
    }
}

/// Every environment variable the loader reads, with the key it sets: one per scalar key of the
/// non-array sections, plus `CORELANE_LOG`, the short name of `CORELANE_LOG_FILTER` (setting
/// both is an error). Lanes have none.
pub fn env_overrides() -> Vec<EnvOverride> {
    let mut out = Vec::new();
    for section in schema::sections() {
        for spec in section.keys {
            let key = format!("{}.{}", section.name, spec.name);
            let expected = spec.kind.expected();
            if key == "log.filter" {
                out.push(EnvOverride {
                    var: schema::ENV_LOG.to_owned(),
                    key: key.clone(),
                    expected: expected.clone(),
                });
            }
            out.push(EnvOverride { var: schema::env_var(section.name, spec.name), key, expected });
        }
    }
    out
}

/// Fail on the first name that starts with `CORELANE_` but is none of [`env_overrides`]; other
/// names are ignored. Pass the names of the process environment.
pub fn check_env_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), ConfigError> {
    let known = env_overrides();
    for name in names {
        if name.starts_with(schema::ENV_PREFIX) && !known.iter().any(|o| o.var == name) {
            return Err(ConfigError::UnknownEnv {
                name: name.to_owned(),
                hint: schema::unknown_env_hint(name),
            });
        }
    }
    Ok(())
}

/// Embedded default, then `layer`, then `env`; deserialise; validate.
fn build(
    layer: Option<(&str, DocName)>,
    env: Option<schema::EnvLookup<'_>>,
) -> Result<Config, ConfigError> {
    let (mut merged, doc) = Doc::parse(EMBEDDED_DEFAULT, DocName::Embedded)?;
    schema::check(&merged, &doc)?;
    if let Some((text, name)) = layer {
        let (table, doc) = Doc::parse(text, name)?;
        schema::check(&table, &doc)?;
        schema::merge(&mut merged, table);
    }
    if let Some(env) = env {
        schema::apply_env(&mut merged, env)?;
    }
    let config: Config = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Shape { message: e.message().to_owned() })?;
    config.validate()?;
    Ok(config)
}

const fn default_spin_iterations() -> u32 {
    100
}

const fn default_yield_iterations() -> u32 {
    10
}

const fn default_max_park_us() -> u64 {
    1000
}

const fn default_sleep_us() -> u64 {
    100
}

/// The flat TOML shape of a lane (see [`LaneConfig`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LaneToml {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    core: Option<usize>,
    #[serde(default = "default_idle")]
    idle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle_spin_iterations: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle_yield_iterations: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle_max_park_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle_sleep_us: Option<u64>,
    #[serde(default)]
    agents: Vec<String>,
}

fn default_idle() -> String {
    schema::DEFAULT_IDLE.to_owned()
}

impl TryFrom<LaneToml> for LaneConfig {
    type Error = String;

    fn try_from(lane: LaneToml) -> Result<Self, String> {
        let backoff_param = lane
            .idle_spin_iterations
            .map(|_| "idle_spin_iterations")
            .or(lane.idle_yield_iterations.map(|_| "idle_yield_iterations"))
            .or(lane.idle_max_park_us.map(|_| "idle_max_park_us"));
        let sleep_param = lane.idle_sleep_us.map(|_| "idle_sleep_us");
        let stray = match lane.idle.as_str() {
            "backoff" => sleep_param,
            "sleep" => backoff_param,
            _ => backoff_param.or(sleep_param),
        };
        if let Some(param) = stray {
            return Err(format!(
                "lane '{}': {param} does not apply to idle = \"{}\"",
                lane.name, lane.idle
            ));
        }
        let idle = match lane.idle.as_str() {
            "spin" => IdleStrategy::Spin,
            "yield" => IdleStrategy::Yield,
            "backoff" => IdleStrategy::Backoff {
                spin_iterations: lane.idle_spin_iterations.unwrap_or(default_spin_iterations()),
                yield_iterations: lane.idle_yield_iterations.unwrap_or(default_yield_iterations()),
                max_park_us: lane.idle_max_park_us.unwrap_or(default_max_park_us()),
            },
            "sleep" => {
                IdleStrategy::Sleep { sleep_us: lane.idle_sleep_us.unwrap_or(default_sleep_us()) }
            }
            other => {
                return Err(format!(
                    "lane '{}': unknown idle kind \"{other}\"; expected one of \"spin\", \
                     \"yield\", \"backoff\", \"sleep\"",
                    lane.name
                ))
            }
        };
        Ok(LaneConfig { name: lane.name, core: lane.core, idle, agents: lane.agents })
    }
}

impl From<LaneConfig> for LaneToml {
    fn from(lane: LaneConfig) -> Self {
        let mut out = LaneToml {
            name: lane.name,
            core: lane.core,
            idle: lane.idle.kind().to_owned(),
            idle_spin_iterations: None,
            idle_yield_iterations: None,
            idle_max_park_us: None,
            idle_sleep_us: None,
            agents: lane.agents,
        };
        match lane.idle {
            IdleStrategy::Spin | IdleStrategy::Yield => {}
            IdleStrategy::Backoff { spin_iterations, yield_iterations, max_park_us } => {
                out.idle_spin_iterations = Some(spin_iterations);
                out.idle_yield_iterations = Some(yield_iterations);
                out.idle_max_park_us = Some(max_park_us);
            }
            IdleStrategy::Sleep { sleep_us } => out.idle_sleep_us = Some(sleep_us),
        }
        out
    }
}

#[cfg(test)]
mod tests;
