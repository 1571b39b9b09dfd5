//! The etcd snapshot before the first control-plane step:
//! `etcdctl snapshot save`, checked with `etcdctl snapshot status`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::version::KubeVersion;
use crate::config::UpgradeSettings;
use crate::host::command::{CommandError, CommandOutput, CommandRunner, CommandSpec};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("creating the etcd snapshot directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Command {
        what: &'static str,
        #[source]
        source: CommandError,
    },
    #[error("{what}: `{command}` {reason}")]
    Failed {
        what: &'static str,
        command: String,
        reason: String,
        output: Box<CommandOutput>,
    },
    #[error("checking etcd snapshot {}: {reason}", path.display())]
    Check { path: PathBuf, reason: String },
}

impl EtcdError {
    pub fn output(&self) -> Option<&CommandOutput> {
        match self {
            EtcdError::Failed { output, .. } => Some(output),
            _ => None,
        }
    }
}

/// A saved and checked snapshot, as recorded in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub path: PathBuf,
    /// Bytes on disk.
    pub size: u64,
    pub hash: u64,
    pub revision: i64,
    pub total_keys: u64,
}

/// `etcdctl snapshot status -w json`'s answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    hash: u64,
    revision: i64,
    total_key: u64,
    total_size: u64,
}

fn connection_args(u: &UpgradeSettings) -> Vec<String> {
    let mut args = vec![format!("--endpoints={}", u.etcd_endpoints)];
    for (flag, path) in [
        ("--cacert", &u.etcd_cacert),
        ("--cert", &u.etcd_cert),
        ("--key", &u.etcd_key),
    ] {
        if let Some(p) = path {
            args.push(format!("{flag}={}", p.display()));
        }
    }
    args
}

pub(crate) fn save_spec(u: &UpgradeSettings, path: &Path) -> CommandSpec {
    let mut args = connection_args(u);
    args.extend(["snapshot".into(), "save".into(), path.display().to_string()]);
    CommandSpec::new(&u.etcdctl, args, u.etcd_timeout).env("ETCDCTL_API", "3")
}

pub(crate) fn status_spec(u: &UpgradeSettings, path: &Path) -> CommandSpec {
    CommandSpec::new(
        &u.etcdctl,
        [
            "--write-out=json".to_string(),
            "snapshot".into(),
            "status".into(),
            path.display().to_string(),
        ],
        u.etcd_timeout,
    )
    .env("ETCDCTL_API", "3")
}

/// Where the snapshot for this upgrade goes.
pub fn snapshot_path(
    u: &UpgradeSettings,
    node: &str,
    from: Option<KubeVersion>,
    to: KubeVersion,
    at: jiff::Timestamp,
) -> PathBuf {
    let from = from.map_or("unknown".to_string(), |v| v.to_string());
    u.etcd_snapshot_dir.join(format!(
        "etcd-{node}-{from}-to-{to}-{}.db",
        at.strftime("%Y%m%dT%H%M%SZ")
    ))
}

async fn run(
    runner: &dyn CommandRunner,
    spec: &CommandSpec,
    what: &'static str,
) -> Result<CommandOutput, EtcdError> {
    let out = runner
        .run(spec)
        .await
        .map_err(|source| EtcdError::Command { what, source })?;
    match out.failure() {
        None => Ok(out),
        Some(reason) => Err(EtcdError::Failed {
            what,
            command: spec.display(),
            reason,
            output: Box::new(out),
        }),
    }
}

/// Saves a snapshot to `path` and checks it. Returns the snapshot and both
/// commands' outputs (for the history).
pub async fn snapshot(
    runner: &dyn CommandRunner,
    u: &UpgradeSettings,
    path: &Path,
) -> Result<(Snapshot, Vec<CommandOutput>), EtcdError> {
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| EtcdError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    let saved = run(runner, &save_spec(u, path), "saving an etcd snapshot").await?;
    let checked = run(runner, &status_spec(u, path), "checking the etcd snapshot").await?;
    let check = |reason: String| EtcdError::Check {
        path: path.to_path_buf(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| check(format!("the file is not there: {e}")))?
        .len();
    // etcdctl prints the JSON object on one line; deprecation notes may surround it.
    let status: Status = checked
        .stdout
        .lines()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .ok_or_else(|| check(format!("unreadable status output {:?}", checked.tail(3))))?;
    if size == 0 || status.total_size == 0 {
        return Err(check("the snapshot is empty".into()));
    }
    if status.total_key == 0 {
        return Err(check("the snapshot holds no keys".into()));
    }
    Ok((
        Snapshot {
            path: path.to_path_buf(),
            size,
            hash: status.hash,
            revision: status.revision,
            total_keys: status.total_key,
        },
        vec![saved, checked],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_carry_kubeadm_certificates() {
        let u = UpgradeSettings::default();
        let argv = save_spec(&u, Path::new("/s/x.db")).argv();
        assert_eq!(
            argv,
            [
                "/usr/bin/etcdctl",
                "--endpoints=https://127.0.0.1:2379",
                "--cacert=/etc/kubernetes/pki/etcd/ca.crt",
                "--cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt",
                "--key=/etc/kubernetes/pki/etcd/healthcheck-client.key",
                "snapshot",
                "save",
                "/s/x.db"
            ]
        );
        let mut plain = u.clone();
        plain.etcd_cacert = None;
        plain.etcd_cert = None;
        plain.etcd_key = None;
        assert_eq!(save_spec(&plain, Path::new("/s/x.db")).argv().len(), 5);
    }

    #[test]
    fn path_names_the_upgrade() {
        let u = UpgradeSettings::default();
        let p = snapshot_path(
            &u,
            "cp-1",
            Some(KubeVersion::new(1, 34, 2)),
            KubeVersion::new(1, 35, 2),
            "2026-11-29T16:00:00Z".parse().unwrap(),
        );
        assert_eq!(
            p,
            PathBuf::from(
                "/var/lib/drydock/etcd-snapshots/etcd-cp-1-v1.34.2-to-v1.35.2-20261129T160000Z.db"
            )
        );
    }
}
