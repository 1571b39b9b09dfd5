//! Recording stand-ins for kubeadm and etcdctl: shell scripts that append
//! their argv to a log and succeed, or fail when a marker file says so
//! (failure injection). The etcdctl one writes a snapshot file and answers
//! `snapshot status -w json` like etcdctl does.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub(crate) struct StandIns {
    pub kubeadm: PathBuf,
    pub etcdctl: PathBuf,
    pub log: PathBuf,
    dir: PathBuf,
}

fn executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl StandIns {
    pub(crate) fn new(dir: &Path) -> StandIns {
        Self::for_node(dir, "", None)
    }

    /// Also appends `<node> <tool> <args>` to `global` (one log for a fleet).
    pub(crate) fn for_node(dir: &Path, node: &str, global: Option<&Path>) -> StandIns {
        let global = global.map_or(String::new(), |g| {
            format!("echo \"{node} $(basename $0) $*\" >> {}\n", g.display())
        });
        let log = dir.join("commands.log");
        let kubeadm = dir.join("bin/kubeadm");
        let etcdctl = dir.join("bin/etcdctl");
        executable(
            &kubeadm,
            &format!(
                r#"#!/bin/sh
{global}echo "kubeadm $*" >> {log}
if [ -e {dir}/fail-kubeadm ]; then echo "kubeadm: injected failure for: $*" >&2; exit 1; fi
if [ -e {dir}/fail-kubeadm-$2 ]; then echo "kubeadm: injected failure for: $*" >&2; exit 1; fi
echo "[upgrade] kubeadm stand-in: $*"
"#,
                log = log.display(),
                dir = dir.display(),
                global = global,
            ),
        );
        executable(
            &etcdctl,
            &format!(
                r#"#!/bin/sh
{global}echo "etcdctl $*" >> {log}
if [ -e {dir}/fail-etcdctl ]; then echo "etcdctl: injected failure" >&2; exit 1; fi
last=""
for a in "$@"; do prev="$last"; last="$a"; done
case "$*" in
  *"snapshot save"*) printf 'etcd-snapshot-data' > "$last"; echo "Snapshot saved at $last" ;;
  *"snapshot status"*) echo '{{"hash":12345,"revision":42,"totalKey":17,"totalSize":18}}' ;;
  *) echo "unexpected etcdctl call" >&2; exit 2 ;;
esac
"#,
                log = log.display(),
                dir = dir.display(),
                global = global,
            ),
        );
        StandIns {
            kubeadm,
            etcdctl,
            log,
            dir: dir.to_path_buf(),
        }
    }

    /// Every recorded call, one line each (`kubeadm upgrade node`, ...).
    pub(crate) fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    pub(crate) fn fail(&self, tool: &str, on: bool) {
        let marker = self.dir.join(format!("fail-{tool}"));
        if on {
            std::fs::write(marker, "").unwrap();
        } else {
            let _ = std::fs::remove_file(marker);
        }
    }

    pub(crate) fn configure(&self, settings: &mut drydock::testing::config::Settings) {
        let u = &mut settings.upgrade;
        u.kubeadm = self.kubeadm.clone();
        u.etcdctl = self.etcdctl.clone();
        u.etcd_snapshot_dir = self.dir.join("snapshots");
        u.kubeadm_timeout = std::time::Duration::from_secs(60);
        u.etcd_timeout = std::time::Duration::from_secs(60);
    }
}
