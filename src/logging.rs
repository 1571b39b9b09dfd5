//! Log setup: structured fields to journald under systemd, to stderr
//! otherwise (text or JSON).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where log lines go, decided once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Journald,
    Stderr(LogFormat),
}

/// systemd sets JOURNAL_STREAM when stderr is connected to the journal.
pub fn choose_target(journal_stream: Option<&str>, format: LogFormat) -> LogTarget {
    match journal_stream {
        Some(s) if !s.is_empty() => LogTarget::Journald,
        _ => LogTarget::Stderr(format),
    }
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("DRYDOCK_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// Human-readable lines on stderr; colours only on a terminal (a file or
/// a pipe gets plain text).
fn text_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use std::io::IsTerminal;
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
}

/// Installs the global subscriber. Falls back to stderr if journald is
/// unreachable, so log lines are never silently dropped.
pub fn init(target: LogTarget, default_level: &str) {
    let registry = tracing_subscriber::registry().with(filter(default_level));
    match target {
        LogTarget::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                let _ = registry
                    .with(layer.with_syslog_identifier("drydock".into()))
                    .try_init();
            }
            Err(e) => {
                let _ = registry.with(text_layer()).try_init();
                tracing::warn!(error = %e, "journald unreachable; logging to stderr");
            }
        },
        LogTarget::Stderr(LogFormat::Json) => {
            let _ = registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_writer(std::io::stderr),
                )
                .try_init();
        }
        LogTarget::Stderr(LogFormat::Text) => {
            let _ = registry.with(text_layer()).try_init();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_only_under_systemd() {
        assert_eq!(
            choose_target(Some("8:1234"), LogFormat::Text),
            LogTarget::Journald
        );
        assert_eq!(
            choose_target(None, LogFormat::Json),
            LogTarget::Stderr(LogFormat::Json)
        );
        assert_eq!(
            choose_target(Some(""), LogFormat::Text),
            LogTarget::Stderr(LogFormat::Text)
        );
    }
}
