//! The upgrade's etcd snapshot against a real etcd on loopback (Debian's
//! etcd-server and etcd-client; plain http, no certificates).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drydock::testing::config::UpgradeSettings;
use drydock::testing::host::command::HostRunner;
use drydock::testing::upgrade::etcd;

fn find(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// `None` (after printing SKIPPED) when etcd is missing outside CI.
fn tools() -> Option<(PathBuf, PathBuf)> {
    match (find("etcd"), find("etcdctl")) {
        (Some(e), Some(c)) => Some((e, c)),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "etcd and etcdctl are required in CI (Debian packages etcd-server, etcd-client)"
            );
            println!(
                "SKIPPED: etcd or etcdctl is not installed (apt-get install etcd-server etcd-client)"
            );
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_etcd(etcd: &Path, etcdctl: &Path) -> Etcd {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(etcd)
        .arg("--name=drydock-test")
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=drydock-test={peer_url}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
        .spawn()
        .expect("starting etcd");
    let e = Etcd {
        child,
        endpoint,
        _dir: dir,
    };
    let start = Instant::now();
    loop {
        let ok = Command::new(etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", e.endpoint))
            .args([
                "put",
                "/registry/namespaces/default",
                "{\"kind\":\"Namespace\"}",
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "etcd did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..20 {
        let out = Command::new(etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", e.endpoint))
            .args(["put", &format!("/registry/pods/default/p{i}"), "x"])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    e
}

fn settings(etcdctl: &Path, endpoint: &str, dir: &Path) -> UpgradeSettings {
    UpgradeSettings {
        etcdctl: etcdctl.to_path_buf(),
        etcd_endpoints: endpoint.to_string(),
        etcd_cacert: None,
        etcd_cert: None,
        etcd_key: None,
        etcd_snapshot_dir: dir.join("snapshots"),
        etcd_timeout: Duration::from_secs(60),
        ..UpgradeSettings::default()
    }
}

#[tokio::test]
async fn snapshot_of_a_real_etcd_is_saved_and_checked() {
    let Some((etcd_bin, etcdctl)) = tools() else {
        return;
    };
    let etcd = start_etcd(&etcd_bin, &etcdctl);
    let dir = tempfile::tempdir().unwrap();
    let u = settings(&etcdctl, &etcd.endpoint, dir.path());
    let to = drydock::testing::upgrade::KubeVersion::new(1, 35, 2);
    let path = etcd::snapshot_path(
        &u,
        "cp-1",
        Some(drydock::testing::upgrade::KubeVersion::new(1, 34, 2)),
        to,
        jiff::Timestamp::now(),
    );
    let (snap, outputs) = etcd::snapshot(&HostRunner, &u, &path)
        .await
        .expect("snapshot");
    assert_eq!(snap.path, path);
    assert!(path.is_file());
    assert_eq!(snap.size, std::fs::metadata(&path).unwrap().len());
    assert!(snap.size > 0);
    // 21 keys written by the test (etcd may hold a few of its own).
    assert!(snap.total_keys >= 21, "{snap:?}");
    assert!(snap.revision >= 21, "{snap:?}");
    assert_eq!(outputs.len(), 2);
    assert!(outputs[0].argv.iter().any(|a| a == "save"));
    assert!(outputs.iter().all(|o| o.success()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "snapshot directory must be private");

    // The snapshot restores: etcdctl snapshot restore into a fresh dir works.
    let restored = dir.path().join("restored");
    let out = Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(&path)
        .arg(format!("--data-dir={}", restored.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn snapshot_of_an_unreachable_etcd_fails_with_its_output() {
    let Some((_, etcdctl)) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut u = settings(
        &etcdctl,
        &format!("http://127.0.0.1:{}", free_port()),
        dir.path(),
    );
    u.etcd_timeout = Duration::from_secs(5);
    let path = dir.path().join("snapshots/x.db");
    let err = etcd::snapshot(&HostRunner, &u, &path).await.unwrap_err();
    let out = err.output().expect("the failed command's output is kept");
    assert!(!out.success());
    assert!(err.to_string().contains("saving an etcd snapshot"), "{err}");
    assert!(!path.exists());
}
