//! The upgrade's apt steps against real apt and dpkg in a sandbox root:
//! the source for the target minor, refreshing only that source, the exact
//! package version, installing it under drydock's authorization with the
//! shipped APT hook wired in, and holding it again.

#[path = "support/apt_sandbox.rs"]
mod apt_sandbox;
#[path = "support/k8s_repo.rs"]
mod k8s_repo;

use apt_sandbox::Sandbox;
use drydock::testing::host::command::HostRunner;
use drydock::testing::store::Store;
use drydock::testing::upgrade::KubeVersion;
use drydock::testing::upgrade::apt::{self, AptError};

const OLD: KubeVersion = KubeVersion::new(1, 34, 2);
const NEW: KubeVersion = KubeVersion::new(1, 35, 2);

fn refused(out: &std::process::Output) -> bool {
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("drydock")
}

#[tokio::test]
async fn source_versions_install_and_hold_with_the_hook_wired() {
    if !k8s_repo::ready() {
        return;
    }
    let sandbox = Sandbox::new();
    let repo = k8s_repo::build(&sandbox);
    let mut settings = sandbox.settings();
    repo.configure(&mut settings);
    let u = settings.upgrade.clone();
    let runner = HostRunner;

    // The source for v1.34, then the cluster as it runs today.
    let (changed, _) = apt::refresh_source(&runner, &u, OLD).await.unwrap();
    assert!(changed);
    let text = std::fs::read_to_string(&repo.source_file).unwrap();
    assert!(text.contains("core:/stable:/v1.34/deb/ /"), "{text}");
    sandbox.preinstall(&[
        "kubeadm=1.34.2-1.1",
        "kubelet=1.34.2-1.1",
        "kubectl=1.34.2-1.1",
    ]);
    for p in ["kubeadm", "kubelet", "kubectl"] {
        sandbox.set_selection(p, "hold");
    }
    sandbox.install_hook(false);

    // The target's minor changes the source; only it is refreshed: the
    // sandbox's other repository is gone, and a full update would fail.
    std::fs::remove_dir_all(&sandbox.repo).unwrap();
    let (changed, out) = apt::refresh_source(&runner, &u, NEW).await.unwrap();
    assert!(changed);
    assert!(out.success());
    assert!(
        std::fs::read_to_string(&repo.source_file)
            .unwrap()
            .contains("/v1.35/deb/ /")
    );
    let (changed, _) = apt::refresh_source(&runner, &u, NEW).await.unwrap();
    assert!(!changed, "same minor: the file is left alone");
    assert!(
        !sandbox.apt_get(&["update"]).status.success(),
        "a full update would have failed"
    );

    // A version that is not there: an error before anything changes.
    let before = sandbox.status_file();
    let err = apt::find_versions(&runner, &u, KubeVersion::new(1, 35, 3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AptError::NotAvailable { ref package, .. } if package == "kubeadm"),
        "{err}"
    );
    assert!(err.to_string().contains("1.35.2-1.1"), "{err}");
    assert_eq!(sandbox.status_file(), before);

    let (versions, _) = apt::find_versions(&runner, &u, NEW).await.unwrap();
    assert_eq!(versions.kubeadm, "1.35.2-1.1");
    assert_eq!(versions.kubelet, "1.35.2-1.1");
    assert_eq!(versions.kubectl, "1.35.2-1.1");

    // Without drydock's authorization the hook refuses the exact same install.
    let out = sandbox.apt_get(&["install", "kubeadm=1.35.2-1.1"]);
    assert!(refused(&out), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sandbox.version("kubeadm").as_deref(), Some("1.34.2-1.1"));

    // Authorized, installed, held again; the others untouched.
    let store = std::sync::Mutex::new(Store::open(&settings.node.state_db).unwrap());
    let out = apt::install_exact(&runner, &settings, &store, &versions.pairs(&["kubeadm"]))
        .await
        .unwrap();
    assert!(out.success());
    assert_eq!(sandbox.version("kubeadm").as_deref(), Some("1.35.2-1.1"));
    assert_eq!(sandbox.selection("kubeadm").as_deref(), Some("hold"));
    assert_eq!(sandbox.version("kubelet").as_deref(), Some("1.34.2-1.1"));
    assert!(
        store
            .lock()
            .unwrap()
            .authorizations(jiff::Timestamp::now())
            .unwrap()
            .is_empty(),
        "revoked after the step"
    );
    assert!(!drydock::testing::aptgate::step::step_running(&settings));

    // The authorization is gone: the next package is refused again.
    let out = sandbox.apt_get(&["install", "kubelet=1.35.2-1.1"]);
    assert!(refused(&out), "{}", String::from_utf8_lossy(&out.stderr));

    // A failing install keeps its output and leaves everything held.
    let err = apt::install_exact(
        &runner,
        &settings,
        &store,
        &[("kubelet".into(), "1.35.9-1.1".into())],
    )
    .await
    .unwrap_err();
    let evidence = err.output().expect("the failed command's output");
    assert!(
        evidence.stderr.contains("1.35.9-1.1"),
        "{}",
        evidence.stderr
    );
    assert_eq!(sandbox.version("kubelet").as_deref(), Some("1.34.2-1.1"));
    assert_eq!(sandbox.selection("kubelet").as_deref(), Some("hold"));

    let out = apt::install_exact(
        &runner,
        &settings,
        &store,
        &versions.pairs(&["kubelet", "kubectl"]),
    )
    .await
    .unwrap();
    assert!(out.success());
    for p in ["kubeadm", "kubelet", "kubectl"] {
        assert_eq!(sandbox.version(p).as_deref(), Some("1.35.2-1.1"), "{p}");
        assert_eq!(sandbox.selection(p).as_deref(), Some("hold"), "{p}");
    }
}
