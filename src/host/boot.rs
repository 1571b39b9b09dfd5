//! The boot ID (proof that a reboot happened) and when this boot started.

use std::fmt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The kernel's random ID of the running boot.
pub const DEFAULT_BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// Holds `btime`, the boot time in seconds since the epoch.
pub const DEFAULT_PROC_STAT_PATH: &str = "/proc/stat";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
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

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads the boot ID from `path` (normally [`DEFAULT_BOOT_ID_PATH`]).
pub fn read_boot_id(path: &Path) -> Result<BootId, BootError> {
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
pub fn boot_time(path: &Path) -> Result<Timestamp, BootError> {
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
