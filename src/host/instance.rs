//! One daemon per node. The daemon holds an exclusive lock on
//! `<run-dir>/daemon.lock` (with its pid inside) for its whole life, so a
//! second daemon refuses to start, and `drydock status` can tell a running
//! daemon from a stopped one without asking it anything.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub(crate) fn lock_path(run_dir: &Path) -> PathBuf {
    run_dir.join("daemon.lock")
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum InstanceError {
    #[error("another drydock daemon is running (pid {pid}, lock {path})")]
    AlreadyRunning { pid: String, path: PathBuf },
    #[error("taking the daemon lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while the daemon runs; the lock goes with the process.
#[derive(Debug)]
pub(crate) struct DaemonLock {
    _file: File,
}

fn open(path: &Path, write: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .truncate(false)
        .mode(0o600)
        // A FIFO at the path must not block `drydock status`.
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
}

fn pid_in(file: &mut File) -> String {
    let mut pid = String::new();
    // Bounded: a pid is a few digits, whatever the file holds.
    let _ = file
        .rewind()
        .and_then(|_| file.take(32).read_to_string(&mut pid));
    match pid.trim() {
        p if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.to_string(),
        _ => "unknown".into(),
    }
}

impl DaemonLock {
    pub(crate) fn acquire(run_dir: &Path) -> Result<DaemonLock, InstanceError> {
        let path = lock_path(run_dir);
        let io = |source| InstanceError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(run_dir).map_err(io)?;
        let mut file = open(&path, true).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(InstanceError::AlreadyRunning {
                    pid: pid_in(&mut file),
                    path,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DaemonLock { _file: file })
    }
}

/// The pid of the running daemon, or `None` when none holds the lock.
pub(crate) fn running_daemon(run_dir: &Path) -> Option<String> {
    let mut file = open(&lock_path(run_dir), false).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(TryLockError::WouldBlock) => Some(pid_in(&mut file)),
        Err(TryLockError::Error(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_daemon_is_refused_and_status_sees_the_first() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(running_daemon(dir.path()), None, "no lock file yet");
        let held = DaemonLock::acquire(dir.path()).unwrap();
        let pid = std::process::id().to_string();
        assert_eq!(running_daemon(dir.path()), Some(pid.clone()));
        match DaemonLock::acquire(dir.path()) {
            Err(InstanceError::AlreadyRunning { pid: p, .. }) => assert_eq!(p, pid),
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        drop(held);
        assert_eq!(running_daemon(dir.path()), None, "stopped daemon");
        let _again = DaemonLock::acquire(dir.path()).unwrap();
    }
}
