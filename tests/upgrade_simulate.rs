//! `drydock simulate --upgrade-to`: a whole Kubernetes upgrade of a
//! simulated cluster, with the real agents; each simulated machine has its
//! own dpkg database (real dpkg-query and dpkg read and hold it). The
//! simulator's `/version`, kubeadm-config and kubelets change as a real
//! cluster's would, control plane first.

use std::sync::Arc;

use drydock::testing::simulate::{self, SimulateOptions};

/// dpkg and dpkg-query read the simulated machines' databases.
fn ready() -> bool {
    let missing: Vec<&str> = ["dpkg", "dpkg-query"]
        .into_iter()
        .filter(|t| {
            std::env::var_os("PATH")
                .is_none_or(|p| !std::env::split_paths(&p).any(|d| d.join(t).is_file()))
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("{} not installed", missing.join(", "));
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI must have {why}"
    );
    println!("SKIPPED: {why}");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_cluster_upgrades_control_plane_first() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SimulateOptions::new(dir.path().to_path_buf());
    opts.nodes = 4;
    opts.upgrade_to = Some("v1.35.2".into());
    let report = simulate::run(opts, Arc::new(|_| {})).await.unwrap();
    let log: Vec<String> = report
        .moments
        .iter()
        .map(|m| format!("{} {}", m.node, m.what))
        .collect();
    assert!(report.finished, "{log:#?}");
    assert_eq!(report.api_server, "v1.35.2");
    assert_eq!(report.kubeadm_config.as_deref(), Some("v1.35.2"));
    assert_eq!(report.kubelet_versions.len(), 4);
    assert!(
        report.kubelet_versions.values().all(|v| v == "v1.35.2"),
        "{:?}",
        report.kubelet_versions
    );
    assert_eq!(report.max_out_of_service, 1);
    assert!(report.nodes.values().all(|t| t.reboots == 0));
    assert!(report.halted.is_none());

    // The cluster changes in a real cluster's order: kubeadm upgrade apply
    // (kubeadm-config and /version), then the control plane's kubelet,
    // and only then any worker's upgrade.
    let at = |line: &str| {
        log.iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("{line:?} not in {log:#?}"))
    };
    let first = |prefix: &str| log.iter().position(|l| l.starts_with(prefix));
    let config = at("cluster kubeadm-config kubernetesVersion now v1.35.2");
    let version = at("cluster /version now v1.35.2");
    let cp_kubelet = at("cluster cp-1 kubelet now v1.35.2");
    let apply = first("cp-1 upgrading: kubeadm-apply").expect("cp-1 applied");
    assert!(apply < config && apply < version && config < cp_kubelet && version < cp_kubelet);
    let worker = first("worker-").unwrap();
    let worker_upgrade = log
        .iter()
        .position(|l| l.starts_with("worker-") && l.contains("upgrading:"))
        .unwrap();
    assert!(cp_kubelet < worker_upgrade, "{log:#?}");
    assert!(worker > 0);
    for w in ["worker-1", "worker-2", "worker-3"] {
        at(&format!("cluster {w} kubelet now v1.35.2"));
        assert!(
            log.iter()
                .any(|l| l == &format!("{w} upgrading: kubeadm-node (v1.34.1 -> v1.35.2)")),
            "{w}: {log:#?}"
        );
    }
    assert!(
        !log.iter()
            .any(|l| l.starts_with("worker-") && l.contains("kubeadm-apply"))
    );
}

fn drydock(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drydock"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_cli_shows_the_upgrade_and_refuses_bad_targets() {
    if !ready() {
        return;
    }
    let (code, text) = drydock(&["simulate", "--nodes", "3", "--upgrade-to", "v1.35.2"]);
    assert_eq!(code, Some(0), "{text}");
    for line in [
        "upgrading Kubernetes to v1.35.2",
        "cluster    /version v1.34.1, kubeadm-config v1.34.1",
        "cluster    /version now v1.35.2",
        "cluster    kubeadm-config kubernetesVersion now v1.35.2",
        "cluster    cp-1 kubelet now v1.35.2",
        "cp-1       upgrading: kubeadm-apply (v1.34.1 -> v1.35.2)",
        "worker-2   upgrading: kubeadm-node (v1.34.1 -> v1.35.2)",
        "/version v1.35.2; kubeadm-config v1.35.2; kubelets: cp-1 v1.35.2, worker-1 v1.35.2, worker-2 v1.35.2",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    // Refused before anything runs, saying why.
    for (target, why) in [
        ("v1.36.0", "more than one minor"),
        ("v1.33.0", "downgrade"),
        ("v1.35.2; rm -rf /", "v1.35.2; rm -rf /"),
        ("latest", "latest"),
    ] {
        let (code, text) = drydock(&["simulate", "--nodes", "2", "--upgrade-to", target]);
        assert_ne!(code, Some(0), "{target}: {text}");
        assert!(text.contains(why), "{target}: {why:?} in:\n{text}");
        assert!(!text.contains("upgrading:"), "{target}: {text}");
    }
}
