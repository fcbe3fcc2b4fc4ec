//! Logging setup: a `tracing` fmt subscriber on stderr.

use tracing_subscriber::EnvFilter;

use super::MetricsError;

/// The environment variable that overrides the configured log filter when set and non-empty.
pub const LOG_ENV: &str = "CORELANE_LOG";

/// Installs a `tracing` fmt subscriber writing to stderr, filtered by `filter` (env-filter syntax,
/// e.g. `info` or `corelane=debug,warn`), or by [`LOG_ENV`] when that is set and non-empty.
///
/// Idempotent: if a global subscriber is already installed (by an earlier call or anyone else),
/// this does nothing and returns `Ok`.
///
/// # Errors
/// [`MetricsError::LogFilter`] if the filter that applies does not parse.
pub fn init_logging(filter: &str) -> Result<(), MetricsError> {
    let (origin, text) = match std::env::var(LOG_ENV) {
        Ok(value) if !value.trim().is_empty() => ("the CORELANE_LOG variable", value),
        _ => ("the configuration", filter.to_owned()),
    };
    let filter = EnvFilter::try_new(&text).map_err(|e| MetricsError::LogFilter {
        origin,
        filter: text.clone(),
        reason: e.to_string(),
    })?;
    // Err only means a subscriber is already installed: the no-op second call.
    // Colour only for a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_call_is_a_no_op() {
        init_logging("warn").unwrap();
        init_logging("debug").unwrap();
        tracing::info!("logging initialised twice without panicking");
    }

    #[test]
    fn bad_filter_is_an_error() {
        if std::env::var_os(LOG_ENV).is_some() {
            return; // the variable would take precedence over the filter under test
        }
        let err = init_logging("[[[").unwrap_err();
        assert!(matches!(err, MetricsError::LogFilter { .. }), "{err}");
    }
}
