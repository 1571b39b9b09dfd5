//! Log setup: structured fields to journald under systemd, to stderr
//! otherwise (text or JSON).
//!
//! In the journal every field keeps its own name (`NODE`, `STATE`, `SLOT`,
//! ...; no `F_` prefix), so a `message_id` field is journald's own
//! `MESSAGE_ID` and `journalctl MESSAGE_ID=...` or `NODE=...` select lines.
//! The ids are listed in [`msgid::CATALOG`] and in the README.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
    /// Straight to journald's native socket, wherever stderr goes.
    Journal,
}

/// Where log lines go, decided once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogTarget {
    Journald,
    Stderr(LogFormat),
}

/// systemd sets JOURNAL_STREAM (`device:inode`) when stderr is connected to
/// the journal. Children inherit the variable (an `apt-get` run by a
/// service, a `drydock check-config` in a cloud-init runcmd), so it counts
/// only when it still names this process's stderr, as systemd.exec(5) says.
pub(crate) fn choose_target(
    journal_stream: Option<&str>,
    stderr: Option<(u64, u64)>,
    format: LogFormat,
) -> LogTarget {
    let named = journal_stream.and_then(|s| {
        let (dev, ino) = s.split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    });
    match (named, stderr) {
        _ if format == LogFormat::Journal => LogTarget::Journald,
        (Some(named), Some(actual)) if named == actual => LogTarget::Journald,
        _ => LogTarget::Stderr(format),
    }
}

/// The device and inode of this process's stderr.
pub(crate) fn stderr_identity() -> Option<(u64, u64)> {
    let st = nix::sys::stat::fstat(std::io::stderr()).ok()?;
    #[allow(clippy::unnecessary_cast)]
    Some((st.st_dev as u64, st.st_ino as u64))
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
pub(crate) fn init(target: LogTarget, default_level: &str) {
    let registry = tracing_subscriber::registry().with(filter(default_level));
    match target {
        LogTarget::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                let _ = registry
                    .with(
                        layer
                            .with_syslog_identifier("drydock".into())
                            .with_field_prefix(None),
                    )
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
        LogTarget::Stderr(LogFormat::Text | LogFormat::Journal) => {
            let _ = registry.with(text_layer()).try_init();
        }
    }
}

/// Stable journald `MESSAGE_ID`s: one per kind of state change or
/// decision. Never reuse or change an id; add new ones. Log them as the
/// `message_id` field.
pub mod msgid {
    pub struct Entry {
        pub name: &'static str,
        pub id: &'static str,
        pub what: &'static str,
    }

    macro_rules! catalog {
        ($($name:ident = $id:literal: $what:literal;)*) => {
            $(pub const $name: &str = $id;)*
            pub const CATALOG: &[Entry] = &[$(Entry { name: stringify!($name), id: $id, what: $what }),*];
        };
    }

    catalog! {
        DAEMON_RUNNING = "4f42f9ce1f784723a53f882f103c2a7a": "the daemon started and drives the agent";
        WAITING_FOR_JOIN = "4729f6823e534388b6b462234ce6c0d0": "the node has not joined (no kubeconfig yet); packages are held, the daemon waits";
        JOINED = "913a13ccec354d13bc1e3b18f715993e": "the kubeconfig appeared; the agent starts without a restart";
        RELOADED = "4d88e939071149d4aae9a742482b5b66": "configuration reloaded";
        RELOAD_REFUSED = "ccaa37f8bcd245e5987906229256eac1": "configuration reload refused; the running settings stay";
        STATUS = "89618f1c3f17435e99f03ceed1dbd9cc": "the one-line status (systemd STATUS=) changed";
        STATE_CHANGED = "d48dd21d4f364fe8b2b12aff70066cda": "the agent's persisted state changed";
        LEASE_ACQUIRED = "9e02bc00d22e411e8265b9d3da50b0e0": "this node took a Lease slot";
        LEASE_LOST = "82bd33fbbc374d49aff7a288756c602b": "this node lost its Lease slot to another holder";
        DRAIN_TIMED_OUT = "412a6269070240b0972610ff2eaa8edd": "the drain timed out; node restored, lease released";
        REBOOT_REQUESTED = "b4cb94e5f4f94d54a764880bd8162db7": "reboot requested from logind";
        REBOOT_REFUSED = "f5a64cf50afa485fa6604deab7169116": "logind refused the reboot; the node stays cordoned with the lease";
        BOOT_UNCHANGED = "64dba45393c34c859aab3124b01a5c76": "after a requested reboot the boot signals disagree; the node stops for a person";
        VERIFY_FAILED = "44aa44f968f749b08a874680501ca59b": "post-reboot verification failed; the fleet is halted";
        STEP_FAILED = "ebac5e78b9374cae926a4fe79415dbae": "a step failed and will be retried";
        STEP_STOPPED = "754baf5f96544279abd737baff0ebbaa": "a step failed for good; the node stops for a person (cordon and lease kept)";
        HOLDS_RECONCILED = "b7bf8597c13444e7a46c4a934d7367a7": "dpkg holds on protected packages were changed";
        HOLDS_FAILED = "bf4f1445e30d441dbb98f4638bf6726d": "dpkg holds could not be reconciled";
        APT_RUN_RECORDED = "760bc71503a8444c8d9432c71167a896": "an apt/dpkg run was recorded in the history";
        APT_REFUSED = "ee30b8c1555743b5ab2441327b59bdc7": "a dpkg run that would change protected packages was refused";
        APT_PROVISIONING = "5fe6af49b39f4ecb84971025720717db": "a protected package was installed for the first time or before join (allowed, recorded)";
        RESUME_REQUESTED = "e5b2f218ad2847a999f687b92a9207f4": "an administrator asked to retry a failed step";
        LEASE_FORCE_RELEASED = "f33381a13b1049dfad0d4a7897dbb2ed": "the lease was force-released by an administrator";
        GATE_BLOCKED = "fc65833227b444c4868bbc0acc974212": "a gate started blocking this node (GATE, REASON)";
        GATES_PASS = "32f7d92dbda04868bb7899d879be87ec": "every gate passes";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_only_when_stderr_is_the_journal_stream() {
        let stderr = Some((8, 1234));
        assert_eq!(
            choose_target(Some("8:1234"), stderr, LogFormat::Text),
            LogTarget::Journald
        );
        // Inherited by a child whose stderr is a terminal or a pipe.
        assert_eq!(
            choose_target(Some("8:1234"), Some((8, 99)), LogFormat::Text),
            LogTarget::Stderr(LogFormat::Text)
        );
        assert_eq!(
            choose_target(None, stderr, LogFormat::Json),
            LogTarget::Stderr(LogFormat::Json)
        );
        assert_eq!(
            choose_target(Some(""), stderr, LogFormat::Text),
            LogTarget::Stderr(LogFormat::Text)
        );
        assert_eq!(
            choose_target(Some("8:x"), stderr, LogFormat::Text),
            LogTarget::Stderr(LogFormat::Text)
        );
        assert_eq!(
            choose_target(None, None, LogFormat::Journal),
            LogTarget::Journald
        );
    }

    #[test]
    fn message_ids_are_unique_128_bit_hex() {
        let mut seen = std::collections::HashSet::new();
        for entry in msgid::CATALOG {
            assert_eq!(entry.id.len(), 32, "{}", entry.name);
            assert!(
                entry
                    .id
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{}",
                entry.name
            );
            assert!(seen.insert(entry.id), "duplicate id for {}", entry.name);
        }
    }

    /// A log event with a field named `message` besides its text gives
    /// journald two MESSAGE fields (and `journalctl` an array). None in src/.
    #[test]
    fn no_log_event_has_a_second_message_field() {
        let event = regex::Regex::new(r"(?s)\b(?:info|warn|error|debug|trace)!\((.*?)\);").unwrap();
        let mut bad = Vec::new();
        let mut stack = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for m in event.captures_iter(&text) {
                        // Only the fields: the text before the format string.
                        let args = &m[1];
                        let fields = args.split('"').next().unwrap_or("");
                        let named_message = fields.split(',').any(|item| {
                            let name = item.trim().trim_start_matches(['%', '?']);
                            name == "message"
                                || name
                                    .split('=')
                                    .next()
                                    .is_some_and(|n| n.trim() == "message")
                        });
                        if named_message {
                            bad.push(format!("{}: {}", path.display(), &m[0]));
                        }
                    }
                }
            }
        }
        assert!(
            bad.is_empty(),
            "rename these `message` fields:\n{}",
            bad.join("\n")
        );
    }

    /// The README lists every id, like systemd's catalog.
    #[test]
    fn readme_lists_every_message_id() {
        let readme = include_str!("../README.md");
        for entry in msgid::CATALOG {
            assert!(
                readme.contains(entry.id),
                "README.md does not list MESSAGE_ID {} ({})",
                entry.id,
                entry.name
            );
        }
    }
}
