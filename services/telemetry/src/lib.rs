//! Logging set-up shared by every dalc process.
//!
//! Logs go to stderr (stdout belongs to command output), as text for humans or as JSON lines
//! for log collectors; the level comes from `DALC_LOG`, else `RUST_LOG`, else `info`.

use std::{io::IsTerminal, str::FromStr};

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}: expected text or json"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("logging was already initialised")]
    AlreadyInitialised,
}

/// The log filter directive in force: `DALC_LOG`, else `RUST_LOG`, else `info`.
pub fn log_filter() -> String {
    std::env::var("DALC_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned())
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(format: LogFormat) -> Result<(), TelemetryError> {
    let directive = log_filter();
    let filter = EnvFilter::try_new(&directive).map_err(|e| TelemetryError::Filter {
        filter: directive,
        reason: e.to_string(),
    })?;
    let registry = tracing_subscriber::registry().with(filter);
    let colours = std::io::stderr().is_terminal();
    let installed = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(colours).with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    installed.map_err(|_| TelemetryError::AlreadyInitialised)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
