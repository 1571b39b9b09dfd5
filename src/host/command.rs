//! Running a host command (kubeadm, apt-get, etcdctl): an argument vector,
//! never a shell; a timeout that kills the whole process group; stdout and
//! stderr captured (bounded) for the history and the journal.
//!
//! [`CommandRunner`] is the small trait the upgrade steps see, so the
//! simulator can add the effects a real kubeadm would have on a cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

/// At most this much of each stream is kept (the tail: errors come last).
const MAX_CAPTURE: usize = 64 * 1024;

/// One command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to the environment (which is otherwise inherited).
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
}

impl CommandSpec {
    pub(crate) fn new(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<String>>,
        timeout: Duration,
    ) -> Self {
        CommandSpec {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            timeout,
        }
    }

    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// The whole argument vector, program first.
    pub(crate) fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// The argument vector as one readable line (for messages only: each
    /// argument is quoted when it has a space or a quote).
    pub(crate) fn display(&self) -> String {
        self.argv()
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains([' ', '"', '\'', '\\', '\n']) {
                    format!("{a:?}")
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What a finished (or killed) command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandOutput {
    pub argv: Vec<String>,
    /// The exit code; `None` when killed by a signal (or the timeout).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    /// Bytes dropped from the front of either stream (over [`MAX_CAPTURE`]).
    pub truncated: bool,
    pub duration_ms: u64,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }

    /// The last non-empty lines of stderr (else stdout), for a one-line reason.
    pub(crate) fn tail(&self, lines: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let kept: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        kept[kept.len().saturating_sub(lines)..].join(" | ")
    }

    /// Why it did not succeed, in one line; `None` when it did.
    pub(crate) fn failure(&self) -> Option<String> {
        if self.success() {
            return None;
        }
        let how = if self.timed_out {
            "timed out and was killed".to_string()
        } else {
            match self.exit_code {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            }
        };
        let tail = self.tail(3);
        Some(if tail.is_empty() {
            how
        } else {
            format!("{how}: {tail}")
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for {program}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// Runs commands. Implementations must not use a shell.
pub trait CommandRunner: Send + Sync {
    /// Runs `spec` to the end (or its timeout). A non-zero exit is an
    /// `Ok` output (its evidence is wanted); `Err` only when it could not
    /// be started or waited for.
    fn run<'a>(
        &'a self,
        spec: &'a CommandSpec,
    ) -> BoxFuture<'a, Result<CommandOutput, CommandError>>;
}

/// The real runner: `tokio::process`, its own process group, killed
/// (the whole group) at the timeout.
#[derive(Debug, Clone, Default)]
pub struct HostRunner;

impl CommandRunner for HostRunner {
    fn run<'a>(
        &'a self,
        spec: &'a CommandSpec,
    ) -> BoxFuture<'a, Result<CommandOutput, CommandError>> {
        Box::pin(run_host(spec))
    }
}

async fn read_tail<R: tokio::io::AsyncRead + Unpin>(mut r: R) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > MAX_CAPTURE {
                    let cut = kept.len() - MAX_CAPTURE;
                    kept.drain(..cut);
                    truncated = true;
                }
            }
        }
    }
    (kept, truncated)
}

async fn run_host(spec: &CommandSpec) -> Result<CommandOutput, CommandError> {
    let program = spec.program.display().to_string();
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id();
    let out = tokio::spawn(read_tail(child.stdout.take().expect("piped stdout")));
    let err = tokio::spawn(read_tail(child.stderr.take().expect("piped stderr")));
    let (status, timed_out) = match tokio::time::timeout(spec.timeout, child.wait()).await {
        Ok(status) => (
            status.map_err(|source| CommandError::Wait {
                program: program.clone(),
                source,
            })?,
            false,
        ),
        Err(_) => {
            // The whole group: kubeadm and apt start children of their own.
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let status = child.wait().await.map_err(|source| CommandError::Wait {
                program: program.clone(),
                source,
            })?;
            (status, true)
        }
    };
    // A grandchild may keep the pipes open past the group kill: bound the wait.
    let grace = Duration::from_secs(5);
    let (stdout, t1) = tokio::time::timeout(grace, out)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let (stderr, t2) = tokio::time::timeout(grace, err)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let output = CommandOutput {
        argv: spec.argv(),
        exit_code: status.code(),
        timed_out,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        truncated: t1 || t2,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    if output.success() {
        info!(
            command = %spec.display(),
            duration_ms = output.duration_ms,
            "command succeeded"
        );
    } else {
        warn!(
            command = %spec.display(),
            exit_code = ?output.exit_code,
            timed_out,
            duration_ms = output.duration_ms,
            stderr_tail = %output.tail(5),
            "command failed"
        );
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &[&str], timeout_ms: u64) -> CommandSpec {
        CommandSpec::new(
            "/bin/sh",
            args.iter().copied(),
            Duration::from_millis(timeout_ms),
        )
    }

    #[tokio::test]
    async fn captures_output_and_exit_code() {
        let out = HostRunner
            .run(&spec(&["-c", "echo out; echo err >&2; exit 3"], 10_000))
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert!(!out.success());
        assert_eq!(out.failure().unwrap(), "exited with status 3: err");
        assert_eq!(out.argv[0], "/bin/sh");
    }

    #[tokio::test]
    async fn arguments_are_not_interpreted_by_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pwned");
        let evil = format!("v1.35.2; touch {}", marker.display());
        let out = HostRunner
            .run(&CommandSpec::new(
                "/bin/echo",
                [evil.as_str()],
                Duration::from_secs(10),
            ))
            .await
            .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout.trim_end(), evil);
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let started = Instant::now();
        let out = HostRunner.run(&spec(&["-c", &script], 300)).await.unwrap();
        assert!(out.timed_out && !out.success());
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(out.failure().unwrap().starts_with("timed out"));
        // The grandchild died with the group.
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut gone = false;
        for _ in 0..50 {
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true)
            {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "grandchild {pid} survived the timeout");
    }

    #[tokio::test]
    async fn keeps_only_the_tail_of_long_output() {
        let out = HostRunner
            .run(&spec(
                &["-c", "head -c 200000 /dev/zero | tr '\\0' a; echo END"],
                10_000,
            ))
            .await
            .unwrap();
        assert!(out.truncated);
        assert_eq!(out.stdout.len(), MAX_CAPTURE);
        assert!(out.stdout.ends_with("aEND\n"));
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = HostRunner
            .run(&CommandSpec::new(
                "/nonexistent/kubeadm",
                ["version"],
                Duration::from_secs(1),
            ))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/kubeadm"), "{err}");
    }

    #[tokio::test]
    async fn env_is_added() {
        let out = HostRunner
            .run(&spec(&["-c", "echo $DRYDOCK_TEST_X"], 10_000).env("DRYDOCK_TEST_X", "yes"))
            .await
            .unwrap();
        assert_eq!(out.stdout, "yes\n");
    }
}
