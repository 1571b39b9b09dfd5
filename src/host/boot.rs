//! The boot ID (proof that a reboot happened) and when this boot started.

use std::fmt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The kernel's random ID of the running boot.
pub(crate) const DEFAULT_BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// Holds `btime`, the boot time in seconds since the epoch.
pub(crate) const DEFAULT_PROC_STAT_PATH: &str = "/proc/stat";
/// PID 1 of this machine's PID namespace (the node's init, also in a container).
pub(crate) const DEFAULT_INIT_STAT_PATH: &str = "/proc/1/stat";

/// How far two readings of one boot's start may drift apart (btime is
/// whole seconds and moves when the clock is stepped).
const SAME_START_SLACK: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub(crate) enum BootError {
    #[error("reading the boot ID from {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the boot ID in {path} is not a UUID: {content:?}")]
    Malformed { path: PathBuf, content: String },
    #[error("{path} has no valid btime line")]
    NoBootTime { path: PathBuf },
    #[error("{path} has no valid start time field")]
    NoStartTime { path: PathBuf },
}

/// What this machine shows of its current boot: two independent signals.
/// `boot_id` is the kernel's (or, in a container, the one systemd-nspawn
/// gives it); `started` is when this machine's init (PID 1) started:
/// `btime` plus PID 1's start time. `btime` alone is the host kernel's in a
/// container and does not change when the container reboots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BootSignals {
    pub boot_id: BootId,
    pub btime: Timestamp,
    pub started: Timestamp,
}

/// Whether the machine rebooted between two readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BootChange {
    /// Same boot_id, same start.
    Same,
    /// Both signals changed: a new boot.
    New,
    /// The signals disagree: something reads another machine's boot_id
    /// (e.g. a unit whose sandbox shows the container host's). Never
    /// treat this as a reboot, nor as "still the same boot".
    Inconsistent(String),
}

/// Compares two readings (pure).
pub(crate) fn compare(before: &BootSignals, now: &BootSignals) -> BootChange {
    let id_changed = before.boot_id != now.boot_id;
    let drift = now.started.duration_since(before.started).unsigned_abs();
    let start_changed = drift > SAME_START_SLACK;
    match (id_changed, start_changed) {
        (false, false) => BootChange::Same,
        (true, true) => BootChange::New,
        (true, false) => BootChange::Inconsistent(format!(
            "the boot_id changed ({} -> {}) but init started at the same time ({}): \
             the boot_id read is not this machine's own",
            before.boot_id, now.boot_id, now.started
        )),
        (false, true) => BootChange::Inconsistent(format!(
            "init restarted ({} -> {}) but the boot_id stayed {}: \
             the boot_id read is not this machine's own (a container seeing its host's?)",
            before.started, now.started, now.boot_id
        )),
    }
}

/// Reads both signals from the given files (normally the `DEFAULT_*` paths).
pub(crate) fn read_signals(
    boot_id_path: &Path,
    proc_stat_path: &Path,
    init_stat_path: &Path,
) -> Result<BootSignals, BootError> {
    let boot_id = read_boot_id(boot_id_path)?;
    let btime = boot_time(proc_stat_path)?;
    let init = std::fs::read_to_string(init_stat_path).map_err(|source| BootError::Read {
        path: init_stat_path.to_path_buf(),
        source,
    })?;
    let ticks = parse_start_ticks(&init).ok_or_else(|| BootError::NoStartTime {
        path: init_stat_path.to_path_buf(),
    })?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .unwrap_or(100);
    let since_btime = jiff::SignedDuration::from_secs_f64(ticks as f64 / hz as f64);
    let started = btime
        .checked_add(since_btime)
        .map_err(|_| BootError::NoStartTime {
            path: init_stat_path.to_path_buf(),
        })?;
    Ok(BootSignals {
        boot_id,
        btime,
        started,
    })
}

/// Field 22 of /proc/PID/stat (clock ticks after btime). The command name
/// (field 2) is in parentheses and may itself hold spaces or ')'.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first; field 22 the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A boot ID, normalised to lower-case hyphenated UUID text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BootId(String);

impl BootId {
    /// Accepts a UUID with or without hyphens (the kubelet reports the
    /// hyphenated form, as the kernel writes it).
    pub fn parse(text: &str) -> Option<BootId> {
        uuid::Uuid::try_parse(text.trim())
            .ok()
            .map(|u| BootId(u.hyphenated().to_string()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads the boot ID from `path` (normally [`DEFAULT_BOOT_ID_PATH`]).
pub(crate) fn read_boot_id(path: &Path) -> Result<BootId, BootError> {
    let content = std::fs::read_to_string(path).map_err(|source| BootError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    BootId::parse(&content).ok_or_else(|| BootError::Malformed {
        path: path.to_path_buf(),
        content: content.chars().take(80).collect(),
    })
}

/// When the running boot started, from `btime` in `path` (normally
/// [`DEFAULT_PROC_STAT_PATH`]).
fn boot_time(path: &Path) -> Result<Timestamp, BootError> {
    let content = std::fs::read_to_string(path).map_err(|source| BootError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_btime(&content).ok_or_else(|| BootError::NoBootTime {
        path: path.to_path_buf(),
    })
}

fn parse_btime(stat: &str) -> Option<Timestamp> {
    let secs = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<i64>()
        .ok()?;
    Timestamp::from_second(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_normalises_boot_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("boot_id");
        std::fs::write(&p, "3F2504E0-4F89-11D3-9A0C-0305E82C3301\n").expect("write");
        assert_eq!(
            read_boot_id(&p).expect("boot id").as_str(),
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
        );
        std::fs::write(&p, "not a uuid\n").expect("write");
        assert!(matches!(read_boot_id(&p), Err(BootError::Malformed { .. })));
        assert!(matches!(
            read_boot_id(&dir.path().join("missing")),
            Err(BootError::Read { .. })
        ));
    }

    #[test]
    fn real_boot_id_and_btime() {
        // The running kernel's files; present on any Linux.
        read_boot_id(Path::new(DEFAULT_BOOT_ID_PATH)).expect("boot id");
        let t = boot_time(Path::new(DEFAULT_PROC_STAT_PATH)).expect("btime");
        assert!(t < Timestamp::now());
    }

    fn signals(id: &str, started: i64) -> BootSignals {
        BootSignals {
            boot_id: BootId::parse(id).unwrap(),
            btime: Timestamp::from_second(1_700_000_000).unwrap(),
            started: Timestamp::from_second(started).unwrap(),
        }
    }

    #[test]
    fn a_boot_is_new_only_when_both_signals_change() {
        let a = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
        let b = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
        let before = signals(a, 1_700_000_010);
        assert_eq!(
            compare(&before, &signals(a, 1_700_000_011)),
            BootChange::Same
        );
        assert_eq!(
            compare(&before, &signals(b, 1_700_000_500)),
            BootChange::New
        );
        // nspawn + a sandbox showing the host's boot_id: init restarted,
        // boot_id did not.
        let BootChange::Inconsistent(why) = compare(&before, &signals(a, 1_700_000_500)) else {
            panic!("not inconsistent")
        };
        assert!(why.contains("not this machine's own"), "{why}");
        assert!(matches!(
            compare(&before, &signals(b, 1_700_000_010)),
            BootChange::Inconsistent(_)
        ));
    }

    #[test]
    fn init_start_time_parsing() {
        // A name with spaces and a parenthesis; starttime is 12345.
        let stat = "1 (sys temd) x) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 12345 1000 2 18446744073709551615";
        assert_eq!(parse_start_ticks(stat), Some(12345));
        assert_eq!(parse_start_ticks("1 (init) S 0"), None);
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn real_signals() {
        let s = read_signals(
            Path::new(DEFAULT_BOOT_ID_PATH),
            Path::new(DEFAULT_PROC_STAT_PATH),
            Path::new(DEFAULT_INIT_STAT_PATH),
        )
        .expect("boot signals");
        assert!(
            s.started >= s.btime && s.started <= Timestamp::now(),
            "{s:?}"
        );
        assert_eq!(compare(&s, &s), BootChange::Same);
    }

    #[test]
    fn btime_parsing() {
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Timestamp::from_second(1_700_000_000).ok()
        );
        assert_eq!(parse_btime("cpu 1\n"), None);
        assert_eq!(parse_btime("btime x\n"), None);
    }
}
