//! What can go wrong while loading or validating a [`Config`](super::Config), and where a value
//! came from.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a configuration was refused. Each variant names the key, what was expected, what was seen,
/// and where the value came from, so the first error is enough to fix the input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file given with `--config` could not be read.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },
    /// The text is not valid TOML.
    #[error("invalid TOML in {origin}: {message}")]
    Syntax {
        /// The document, with the line of the error when the parser gave one.
        origin: Origin,
        /// The parser's message.
        message: String,
    },
    /// A section or key that the configuration does not have.
    #[error("unknown key '{key}' in {origin}; expected one of: {expected}")]
    UnknownKey {
        /// Dotted path of the key, e.g. `control.max_bodybytes` or `lanes[1].idel`.
        key: String,
        /// Where the key was written.
        origin: Origin,
        /// The keys allowed at that place, comma-separated.
        expected: String,
    },
    /// A key that must be present is absent (only `lanes[N].name` is required).
    #[error("missing key '{key}' in {origin}")]
    MissingKey {
        /// Dotted path of the missing key.
        key: String,
        /// The table that lacks it.
        origin: Origin,
    },
    /// A value of the wrong type or outside its range.
    #[error("bad value for '{key}': expected {expected}, got {got}{}", from_suffix(origin))]
    BadValue {
        /// Dotted path of the key.
        key: String,
        /// What the key accepts, e.g. `an integer in 1..=67108864`.
        expected: String,
        /// The value seen, quoted as written (TOML syntax for files, a quoted string for env).
        got: String,
        /// Where the value came from.
        origin: Origin,
    },
    /// A `CORELANE_*` environment variable that is no override the loader knows.
    #[error("unknown environment override {name}; {hint}")]
    UnknownEnv {
        /// The variable's name.
        name: String,
        /// The overrides that exist near it.
        hint: String,
    },
    /// Two environment variables set the same key.
    #[error("both {first} and {second} are set and override the same key; set only one")]
    EnvConflict {
        /// The first variable.
        first: &'static str,
        /// The second variable.
        second: &'static str,
    },
    /// A rule across keys is broken (duplicate lane names, an agent hosted twice, ...).
    #[error("{at}: {reason}")]
    Invalid {
        /// Dotted path of the offending key, e.g. `lanes[1].agents`.
        at: String,
        /// What is wrong, naming the values involved.
        reason: String,
    },
    /// A reserved service section has `enabled = true`.
    #[error("service '{service}' is not in this build yet")]
    ServiceNotInBuild {
        /// The section: `pool`, `alloc` or `frames`.
        service: &'static str,
    },
    /// The merged document passed the key checks but did not deserialise. The key checks are
    /// meant to make this unreachable; it is reported rather than panicking.
    #[error("config does not fit its schema: {message}")]
    Shape {
        /// The deserialiser's or serialiser's message.
        message: String,
    },
}

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// The file given with `--config`, with the 1-based line when known.
    File {
        /// The path as given.
        path: PathBuf,
        /// 1-based line of the value or key.
        line: Option<usize>,
    },
    /// The default compiled into the binary (`config/corelane.toml`).
    Embedded {
        /// 1-based line of the value or key.
        line: Option<usize>,
    },
    /// Text given to [`Config::from_toml_str`](super::Config::from_toml_str).
    Text {
        /// 1-based line of the value or key.
        line: Option<usize>,
    },
    /// An environment variable.
    Env {
        /// The variable's name.
        var: String,
    },
    /// A [`Config`](super::Config) value built in code and checked with
    /// [`Config::validate`](super::Config::validate).
    Value,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line: Some(line) } => write!(f, "{}:{line}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Embedded { line: Some(line) } => {
                write!(f, "the embedded config/corelane.toml:{line}")
            }
            Origin::Embedded { line: None } => f.write_str("the embedded config/corelane.toml"),
            Origin::Text { line: Some(line) } => write!(f, "TOML text line {line}"),
            Origin::Text { line: None } => f.write_str("TOML text"),
            Origin::Env { var } => f.write_str(var),
            Origin::Value => f.write_str("the config value"),
        }
    }
}

/// ` (from ORIGIN)`, or nothing for a value built in code (the key already says where).
fn from_suffix(origin: &Origin) -> String {
    match origin {
        Origin::Value => String::new(),
        other => format!(" (from {other})"),
    }
}
