//! Whether this machine needs a reboot, and why. Four sources, any of which
//! is enough: the sentinel file apt's hooks write, an optional operator
//! command, a newer installed kernel (Debian writes no sentinel for those),
//! and an operator request (`drydock reboot`). A source that cannot be read
//! is reported as a problem, never taken as "needed".

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::kernel::{self, KernelError};
use crate::config::RebootSettings;
use crate::store::{Store, StoreError};

/// Store key of the operator's reboot request.
const REQUEST_KEY: crate::store::keys::Key<RebootRequest> =
    crate::store::keys::Key::new(crate::store::keys::REBOOT_REQUEST);

/// Why a reboot is needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub(crate) enum RebootReason {
    /// The sentinel file exists; `packages` from its `.pkgs` companion.
    SentinelFile {
        path: PathBuf,
        packages: Vec<String>,
    },
    /// The sentinel command exited 0.
    SentinelCommand { command: String },
    /// A newer kernel is installed than the one running.
    Kernel { running: String, installed: String },
    /// `drydock reboot` asked for one.
    Operator { reason: String, at: Timestamp },
}

impl fmt::Display for RebootReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RebootReason::SentinelFile { path, packages } if packages.is_empty() => {
                write!(f, "{} exists", path.display())
            }
            RebootReason::SentinelFile { packages, .. } => {
                write!(f, "packages need a reboot: {}", packages.join(", "))
            }
            RebootReason::SentinelCommand { command } => {
                write!(f, "sentinel command {command} says so")
            }
            RebootReason::Kernel { running, installed } => {
                write!(f, "kernel {installed} installed, {running} running")
            }
            RebootReason::Operator { reason, at } => {
                write!(f, "requested by operator at {at}: {reason}")
            }
        }
    }
}

/// A source that could not be checked. Reported (status, logs), not acted on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SentinelError {
    #[error("reading reboot sentinel {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting sentinel command {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("waiting for sentinel command {command}: {source}")]
    Wait {
        command: String,
        source: std::io::Error,
    },
    #[error("sentinel command {command} did not finish within {}; killed it", humantime::format_duration(*.timeout))]
    Timeout { command: String, timeout: Duration },
    #[error("sentinel command {command} was killed by signal {signal}")]
    Signal { command: String, signal: i32 },
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("reading the operator's reboot request: {0}")]
    Store(#[from] StoreError),
}

/// The answer: reboot needed when `reasons` is not empty.
#[derive(Debug, Default)]
pub(crate) struct RebootNeed {
    pub reasons: Vec<RebootReason>,
    /// Sources that could not be checked (they did not count as "needed").
    pub problems: Vec<SentinelError>,
}

// The unit tests' view of the answer.
#[cfg(test)]
impl RebootNeed {
    pub(crate) fn needed(&self) -> bool {
        !self.reasons.is_empty()
    }

    /// One line, e.g. for the systemd STATUS.
    pub(crate) fn summary(&self) -> String {
        self.reasons
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The operator's request, as kept in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebootRequest {
    pub reason: String,
    pub at: Timestamp,
}

/// Records `drydock reboot --reason`. Kept until [`clear_reboot_request`]
/// (the agent clears it once the reboot it caused is verified).
pub fn request_reboot(store: &Store, reason: &str) -> Result<RebootRequest, StoreError> {
    let request = RebootRequest {
        reason: if reason.trim().is_empty() {
            "no reason given".into()
        } else {
            crate::text::display(reason.trim(), crate::text::MAX_REASON)
        },
        at: Timestamp::now(),
    };
    store.write(REQUEST_KEY, &request)?;
    Ok(request)
}

/// Drops the operator's request; true if there was one.
pub(crate) fn clear_reboot_request(store: &Store) -> Result<bool, StoreError> {
    store.remove(REQUEST_KEY)
}

pub(crate) fn reboot_request(store: &Store) -> Result<Option<RebootRequest>, StoreError> {
    store.read(REQUEST_KEY)
}

/// Checks every source. `running_release` is `uname -r` (see
/// [`kernel::running_release`]); `request` comes from [`reboot_request`]
/// (read by the caller, because the store cannot cross an await).
pub(crate) async fn check(
    settings: &RebootSettings,
    running_release: &str,
    request: Option<RebootRequest>,
) -> RebootNeed {
    let mut need = RebootNeed::default();
    let mut add = |r: Result<Option<RebootReason>, SentinelError>| match r {
        Ok(Some(reason)) => need.reasons.push(reason),
        Ok(None) => {}
        Err(e) => need.problems.push(e),
    };
    add(sentinel_file(&settings.sentinel_file));
    if !settings.sentinel_command.is_empty() {
        add(sentinel_command(
            &settings.sentinel_command,
            settings.sentinel_command_timeout,
        )
        .await);
    }
    if settings.check_kernel {
        add(newer_kernel(&settings.boot_dir, running_release));
    }
    if let Some(RebootRequest { reason, at }) = request {
        add(Ok(Some(RebootReason::Operator { reason, at })));
    }
    need
}

/// The sentinel file and the packages listed in `<file>.pkgs`.
pub(crate) fn sentinel_file(path: &Path) -> Result<Option<RebootReason>, SentinelError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SentinelError::File {
                path: path.into(),
                source,
            });
        }
    }
    let mut pkgs = path.as_os_str().to_owned();
    pkgs.push(".pkgs");
    let pkgs = PathBuf::from(pkgs);
    // A FIFO or device there must not hang the daemon: regular files only,
    // bounded.
    let read = crate::fileread::read_regular(&pkgs, 1 << 20)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| match e {
            crate::fileread::ReadError::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        });
    let packages = match read {
        Ok(text) => {
            let mut list: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            list.sort();
            list.dedup();
            list
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(SentinelError::File { path: pkgs, source }),
    };
    Ok(Some(RebootReason::SentinelFile {
        path: path.into(),
        packages,
    }))
}

/// Runs the sentinel command (argv, no shell): exit 0 means a reboot is
/// needed, any other exit code means not. Killed when it overruns `timeout`.
pub(crate) async fn sentinel_command(
    argv: &[String],
    timeout: Duration,
) -> Result<Option<RebootReason>, SentinelError> {
    let command = argv.join(" ");
    let Some((program, args)) = argv.split_first() else {
        return Ok(None);
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SentinelError::Spawn {
            command: command.clone(),
            source,
        })?;
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.map_err(|source| SentinelError::Wait {
            command: command.clone(),
            source,
        })?,
        Err(_) => {
            // Kill and reap, so no zombie stays behind.
            let _ = child.kill().await;
            return Err(SentinelError::Timeout { command, timeout });
        }
    };
    match status.code() {
        Some(0) => Ok(Some(RebootReason::SentinelCommand { command })),
        Some(_) => Ok(None),
        None => {
            use std::os::unix::process::ExitStatusExt;
            Err(SentinelError::Signal {
                command,
                signal: status.signal().unwrap_or_default(),
            })
        }
    }
}

/// A newer kernel of the running flavour installed in `boot_dir`.
fn newer_kernel(boot_dir: &Path, running: &str) -> Result<Option<RebootReason>, SentinelError> {
    let installed = kernel::installed_releases(boot_dir)?;
    Ok(
        kernel::newer_installed(running, &installed).map(|newest| RebootReason::Kernel {
            running: running.to_string(),
            installed: newest.to_string(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn settings(dir: &Path) -> RebootSettings {
        let boot = dir.join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        RebootSettings {
            sentinel_file: dir.join("reboot-required"),
            sentinel_command: Vec::new(),
            sentinel_command_timeout: Duration::from_secs(5),
            check_kernel: true,
            boot_dir: boot,
            check_interval: Duration::from_secs(60),
        }
    }

    fn script(dir: &Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[tokio::test]
    async fn nothing_needed_on_a_clean_machine() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        std::fs::write(s.boot_dir.join("vmlinuz-6.1.0-18-amd64"), b"").unwrap();
        let need = check(&s, "6.1.0-18-amd64", None).await;
        assert!(!need.needed(), "{need:?}");
        assert!(need.problems.is_empty(), "{need:?}");
    }

    #[tokio::test]
    async fn sentinel_file_with_packages_is_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        std::fs::write(&s.sentinel_file, b"*** System restart required ***\n").unwrap();
        let need = check(&s, "6.1.0-18-amd64", None).await;
        assert_eq!(
            need.reasons,
            vec![RebootReason::SentinelFile {
                path: s.sentinel_file.clone(),
                packages: vec![]
            }]
        );
        std::fs::write(
            dir.path().join("reboot-required.pkgs"),
            b"libc6\nopenssl\nlibc6\n\n",
        )
        .unwrap();
        let need = check(&s, "6.1.0-18-amd64", None).await;
        assert_eq!(need.summary(), "packages need a reboot: libc6, openssl");
    }

    #[tokio::test]
    async fn newer_kernel_is_a_reason_unless_disabled() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        for r in ["6.1.0-18-amd64", "6.1.0-21-amd64"] {
            std::fs::write(s.boot_dir.join(format!("vmlinuz-{r}")), b"").unwrap();
        }
        let need = check(&s, "6.1.0-18-amd64", None).await;
        assert_eq!(
            need.reasons,
            vec![RebootReason::Kernel {
                running: "6.1.0-18-amd64".into(),
                installed: "6.1.0-21-amd64".into()
            }]
        );
        assert_eq!(
            need.summary(),
            "kernel 6.1.0-21-amd64 installed, 6.1.0-18-amd64 running"
        );
        s.check_kernel = false;
        assert!(!check(&s, "6.1.0-18-amd64", None).await.needed());
    }

    #[tokio::test]
    async fn missing_boot_dir_is_a_problem_not_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.boot_dir = dir.path().join("no-such-boot");
        let need = check(&s, "6.1.0-18-amd64", None).await;
        assert!(!need.needed());
        assert_eq!(need.problems.len(), 1);
        assert!(need.problems[0].to_string().contains("no-such-boot"));
    }

    #[tokio::test]
    async fn sentinel_command_exit_codes_timeout_and_spawn_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.sentinel_command = vec![script(dir.path(), "yes", "exit 0")];
        let need = check(&s, "6.1.0-18-amd64", None).await;
        assert!(matches!(
            need.reasons.as_slice(),
            [RebootReason::SentinelCommand { .. }]
        ));

        s.sentinel_command = vec![script(dir.path(), "no", "exit 1")];
        let need = check(&s, "6.1.0-18-amd64", None).await;
        assert!(!need.needed() && need.problems.is_empty(), "{need:?}");

        // Arguments are passed as argv, not through a shell.
        s.sentinel_command = vec![
            script(dir.path(), "args", r#"[ "$1" = "a b" ] && exit 0; exit 1"#),
            "a b".into(),
        ];
        assert!(check(&s, "6.1.0-18-amd64", None).await.needed());

        s.sentinel_command = vec![script(dir.path(), "slow", "exec sleep 5")];
        s.sentinel_command_timeout = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let need = check(&s, "6.1.0-18-amd64", None).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(!need.needed());
        assert!(
            matches!(need.problems.as_slice(), [SentinelError::Timeout { .. }]),
            "{need:?}"
        );
        assert!(need.problems[0].to_string().contains("killed"));

        s.sentinel_command = vec![dir.path().join("missing").to_string_lossy().into_owned()];
        let need = check(&s, "6.1.0-18-amd64", None).await;
        assert!(!need.needed());
        assert!(matches!(
            need.problems.as_slice(),
            [SentinelError::Spawn { .. }]
        ));
    }

    #[tokio::test]
    async fn operator_request_round_trips_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(reboot_request(&store).unwrap(), None);
        let req = request_reboot(&store, "  firmware update ").unwrap();
        assert_eq!(req.reason, "firmware update");
        let need = check(&s, "6.1.0-18-amd64", reboot_request(&store).unwrap()).await;
        assert_eq!(
            need.reasons,
            vec![RebootReason::Operator {
                reason: "firmware update".into(),
                at: req.at
            }]
        );
        assert!(clear_reboot_request(&store).unwrap());
        assert!(!clear_reboot_request(&store).unwrap());
        assert!(
            !check(&s, "6.1.0-18-amd64", reboot_request(&store).unwrap())
                .await
                .needed()
        );
    }
}
