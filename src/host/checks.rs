//! Post-reboot health checks: every executable in the checks directory, in
//! name order, each with a timeout, argv only (no shell). Exit 0 passes.
//!
//! Like run-parts, hidden files, editor backups and dpkg/ucf leftovers are
//! skipped, and so are files without an execute bit; each skip is logged so
//! an operator who forgot `chmod +x` can see why a check never ran.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

/// Bytes of combined stdout/stderr kept per check.
const TAIL_BYTES: usize = 2048;
/// How long to keep reading output after the check exited (a daemonised
/// grandchild could hold the pipe open forever).
const READ_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ChecksError {
    #[error("listing checks in {dir}: {source}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum CheckOutcome {
    Passed,
    /// Non-zero exit, or killed by a signal.
    Failed {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Still running at the timeout; its process group was killed.
    TimedOut,
    /// Could not be started (e.g. bad interpreter line).
    NotStarted {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    /// File name in the checks directory.
    pub name: String,
    pub outcome: CheckOutcome,
    pub duration: Duration,
    /// The end of its combined stdout and stderr.
    pub output: String,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.outcome == CheckOutcome::Passed
    }
}

/// Why a file name is not run as a check, if it is not.
fn skip_reason(name: &str) -> Option<&'static str> {
    const BACKUP_SUFFIXES: &[&str] = &[
        "~",
        ".bak",
        ".orig",
        ".rej",
        ".swp",
        ".swo",
        ".tmp",
        ".dpkg-old",
        ".dpkg-new",
        ".dpkg-dist",
        ".dpkg-tmp",
        ".dpkg-bak",
        ".ucf-old",
        ".ucf-new",
        ".ucf-dist",
    ];
    if name.starts_with('.') {
        Some("hidden file")
    } else if name.starts_with('#') && name.ends_with('#') {
        Some("editor autosave")
    } else if BACKUP_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        Some("backup or package-manager leftover")
    } else {
        None
    }
}

/// The checks to run, sorted by file name. A missing directory means no
/// checks.
pub fn list_checks(dir: &Path) -> Result<Vec<PathBuf>, ChecksError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            info!(dir = %dir.display(), "no checks directory; no checks to run");
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(ChecksError::List {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut checks = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ChecksError::List {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(why) = skip_reason(&name) {
            info!(check = %name, reason = why, "skipping file in checks directory");
            continue;
        }
        // Follows symlinks: a link to an executable is a check.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => checks.push(path),
            Ok(m) if m.is_dir() => {
                info!(check = %name, reason = "directory", "skipping file in checks directory");
            }
            Ok(_) => {
                warn!(check = %name, reason = "not executable", "skipping file in checks directory");
            }
            Err(e) => {
                warn!(check = %name, error = %e, "skipping unreadable file in checks directory");
            }
        }
    }
    checks.sort();
    Ok(checks)
}

/// Runs every check in `dir`, one after another.
pub async fn run_checks(dir: &Path, timeout: Duration) -> Result<Vec<CheckResult>, ChecksError> {
    let mut results = Vec::new();
    for path in list_checks(dir)? {
        results.push(run_check(&path, timeout).await);
    }
    Ok(results)
}

/// Runs one check: no arguments, stdin closed, cwd `/`, in its own process
/// group so a timeout kills its children too.
pub async fn run_check(path: &Path, timeout: Duration) -> CheckResult {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let started = Instant::now();
    let result = |outcome, output| CheckResult {
        name: name.clone(),
        outcome,
        duration: started.elapsed(),
        output,
    };
    let not_started = |e: std::io::Error| {
        warn!(check = %name, error = %e, "check could not be started");
        result(
            CheckOutcome::NotStarted {
                error: e.to_string(),
            },
            String::new(),
        )
    };

    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return not_started(e),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return not_started(e),
    };
    let mut cmd = tokio::process::Command::new(path);
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0)
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    // Our copies of the write end must go, or the pipe never reaches EOF.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return not_started(e),
    };

    let tail = Arc::new(Mutex::new(Vec::new()));
    let reading = match tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()) {
        Ok(mut rx) => {
            let tail = Arc::clone(&tail);
            Some(tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = rx.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    t.extend_from_slice(&buf[..n]);
                    if t.len() > TAIL_BYTES {
                        let excess = t.len() - TAIL_BYTES;
                        t.drain(..excess);
                    }
                }
            }))
        }
        Err(e) => {
            warn!(check = %name, error = %e, "cannot read check output");
            None
        }
    };

    let outcome = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => CheckOutcome::Passed,
        Ok(Ok(status)) => CheckOutcome::Failed {
            code: status.code(),
            signal: status.signal(),
        },
        Ok(Err(e)) => CheckOutcome::NotStarted {
            error: format!("waiting for it: {e}"),
        },
        Err(_) => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            CheckOutcome::TimedOut
        }
    };
    if let Some(mut task) = reading
        && tokio::time::timeout(READ_GRACE, &mut task).await.is_err()
    {
        task.abort();
    }
    let output = {
        let t = tail.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&t).trim().to_string()
    };
    let r = result(outcome, output);
    match &r.outcome {
        CheckOutcome::Passed => {
            info!(check = %r.name, duration = ?r.duration, "check {} passed", r.name)
        }
        other => warn!(check = %r.name, outcome = ?other, output = %r.output, "check failed"),
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_rules() {
        for name in [
            ".hidden",
            "check~",
            "check.dpkg-old",
            "check.dpkg-dist",
            "#check#",
            "a.swp",
            "a.bak",
        ] {
            assert!(skip_reason(name).is_some(), "{name}");
        }
        for name in ["10-kubelet", "calico.sh", "dpkg-sanity", "zz_last"] {
            assert_eq!(skip_reason(name), None, "{name}");
        }
    }
}
