//! One node's host steps, in order, against the real apt sandbox and the
//! recording kubeadm/etcdctl stand-ins: what runs, what is recorded, a
//! failure at each command step keeps its evidence and the retry goes on;
//! a kubeadm step recorded done is never run again.

#[path = "support/apt_sandbox.rs"]
mod apt_sandbox;
#[path = "support/k8s_repo.rs"]
mod k8s_repo;
#[path = "support/standins.rs"]
mod standins;
#[path = "support/upgrade_node.rs"]
mod upgrade_node;

use drydock::testing::host::command::HostRunner;
use drydock::testing::store::Store;
use drydock::testing::upgrade::KubeVersion;
use drydock::testing::upgrade::plan::{Facts, KubeadmAction, UpgradeStep};
use drydock::testing::upgrade::steps::{self, Outcome, Progress};
use upgrade_node::{Machine, lone_machine};

const OLD: KubeVersion = KubeVersion::new(1, 34, 2);
const NEW: KubeVersion = KubeVersion::new(1, 35, 2);

/// A node at 1.34.2 with the repositories of two minors.
fn node() -> Machine {
    lone_machine("cp-1")
}

/// Runs `progress`'s current step on the node.
async fn run(
    n: &Machine,
    store: &std::sync::Mutex<Store>,
    progress: &mut Progress,
    cluster: &Facts,
) -> Result<Outcome, steps::StepFailure> {
    steps::run_step(&HostRunner, &n.settings, store, "cp-1", progress, cluster).await
}

/// Runs host steps until the agent's first step (drain).
async fn run_until_agent(
    n: &Machine,
    store: &std::sync::Mutex<Store>,
    progress: &mut Progress,
    cluster: &Facts,
) -> Result<Vec<(UpgradeStep, Outcome)>, steps::StepFailure> {
    let mut log = Vec::new();
    loop {
        let outcome = run(n, store, progress, cluster).await?;
        if outcome == Outcome::Agent {
            return Ok(log);
        }
        log.push((progress.step, outcome));
        progress.advance();
    }
}

#[tokio::test]
async fn first_control_plane_steps_in_order_with_history() {
    if !k8s_repo::ready() {
        return;
    }
    let n = node();
    let store = std::sync::Mutex::new(Store::open(&n.settings.node.state_db).unwrap());
    let mut progress = Progress::new(Some(OLD), NEW, KubeadmAction::Apply, false);
    let cluster = Facts {
        kubeadm_config: Some(OLD),
        api_server: Some(OLD),
        ..Facts::default()
    };
    let log = run_until_agent(&n, &store, &mut progress, &cluster)
        .await
        .unwrap();
    use UpgradeStep::*;
    assert_eq!(
        log.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [
            AptSource,
            ResolvePackages,
            InstallKubeadm,
            EtcdSnapshot,
            KubeadmPlan,
            KubeadmApply
        ]
    );
    assert!(log.iter().all(|(_, o)| *o == Outcome::Done), "{log:?}");
    assert_eq!(progress.step, Drain);
    assert_eq!(n.sandbox.version("kubeadm").as_deref(), Some("1.35.2-1.1"));
    assert_eq!(n.sandbox.selection("kubeadm").as_deref(), Some("hold"));
    assert_eq!(n.sandbox.version("kubelet").as_deref(), Some("1.34.2-1.1"));
    let calls = n.stand_ins.calls();
    assert!(
        calls[0].starts_with("etcdctl --endpoints=https://127.0.0.1:2379 --cacert="),
        "{calls:?}"
    );
    assert!(calls[0].contains(" snapshot save "), "{calls:?}");
    assert!(calls[1].contains("snapshot status"), "{calls:?}");
    assert_eq!(
        &calls[2..],
        [
            "kubeadm upgrade plan v1.35.2",
            "kubeadm upgrade apply -y v1.35.2"
        ]
    );
    let snap = progress.snapshot.clone().unwrap();
    assert!(snap.path.is_file());
    assert_eq!(snap.size, 18);
    let history = store
        .lock()
        .unwrap()
        .history(&[steps::HISTORY_SNAPSHOT], 10)
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].detail["size"], 18);
    let commands = store
        .lock()
        .unwrap()
        .history(&[steps::HISTORY_COMMAND], 100)
        .unwrap();
    let argvs: Vec<String> = commands
        .iter()
        .map(|r| {
            r.detail["output"]["argv"][1]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(commands.iter().all(|r| r.detail["to"] == "v1.35.2"));
    assert!(argvs.iter().any(|a| a == "upgrade"), "{argvs:?}");
    assert!(
        commands.len() >= 7,
        "apt update, madison, install, 2 etcdctl, 2 kubeadm: {commands:?}"
    );

    // Resumed at the apply step after it was recorded done: not run again.
    let mut again = progress.clone();
    again.step = KubeadmApply;
    let outcome = run(&n, &store, &mut again, &cluster).await.unwrap();
    assert_eq!(outcome, Outcome::AlreadyDone);
    // Resumed at the apply step after a crash before it was recorded, but
    // the cluster shows it applied: not run again either.
    again.done.retain(|s| *s != KubeadmApply);
    let applied = Facts {
        kubeadm_config: Some(NEW),
        api_server: Some(NEW),
        ..Facts::default()
    };
    let outcome = run(&n, &store, &mut again, &applied).await.unwrap();
    assert_eq!(outcome, Outcome::AlreadyDone);
    assert_eq!(n.stand_ins.calls().len(), 4, "no command ran again");

    // The kubelet step (after the agent's drain).
    progress.step = InstallKubelet;
    let outcome = run(&n, &store, &mut progress, &cluster).await.unwrap();
    assert_eq!(outcome, Outcome::Done);
    for p in ["kubeadm", "kubelet", "kubectl"] {
        assert_eq!(n.sandbox.version(p).as_deref(), Some("1.35.2-1.1"), "{p}");
        assert_eq!(n.sandbox.selection(p).as_deref(), Some("hold"), "{p}");
    }
    // Again: already true, nothing runs.
    let outcome = run(&n, &store, &mut progress, &cluster).await.unwrap();
    assert_eq!(outcome, Outcome::AlreadyDone);
}

#[tokio::test]
async fn failures_keep_evidence_and_the_retry_goes_on() {
    if !k8s_repo::ready() {
        return;
    }
    let n = node();
    let store = std::sync::Mutex::new(Store::open(&n.settings.node.state_db).unwrap());
    let cluster = Facts {
        kubeadm_config: Some(OLD),
        api_server: Some(OLD),
        ..Facts::default()
    };

    // A target with no packages: fails at resolve, nothing installed.
    let mut missing = Progress::new(
        Some(OLD),
        KubeVersion::new(1, 35, 3),
        KubeadmAction::Node,
        false,
    );
    let err = run_until_agent(&n, &store, &mut missing, &cluster)
        .await
        .unwrap_err();
    assert_eq!(err.step, UpgradeStep::ResolvePackages);
    assert!(
        err.error.contains("no kubeadm package at v1.35.3"),
        "{}",
        err.error
    );
    assert_eq!(n.sandbox.version("kubeadm").as_deref(), Some("1.34.2-1.1"));

    // etcdctl fails: the step fails with its output, then succeeds on retry.
    let mut p = Progress::new(Some(OLD), NEW, KubeadmAction::Apply, false);
    n.stand_ins.fail("etcdctl", true);
    let err = run_until_agent(&n, &store, &mut p, &cluster)
        .await
        .unwrap_err();
    assert_eq!(err.step, UpgradeStep::EtcdSnapshot);
    assert!(
        err.output
            .as_ref()
            .unwrap()
            .stderr
            .contains("injected failure")
    );
    assert!(
        !n.stand_ins.calls().iter().any(|c| c.starts_with("kubeadm")),
        "kubeadm must not run without a snapshot"
    );
    n.stand_ins.fail("etcdctl", false);

    // kubeadm apply fails: evidence kept in the history, retry runs it once more.
    n.stand_ins.fail("kubeadm", true);
    let err = run_until_agent(&n, &store, &mut p, &cluster)
        .await
        .unwrap_err();
    assert_eq!(err.step, UpgradeStep::KubeadmPlan);
    assert!(err.error.contains("exited with status 1"), "{}", err.error);
    let last = store
        .lock()
        .unwrap()
        .history(&[steps::HISTORY_COMMAND], 1)
        .unwrap();
    assert_eq!(last[0].detail["output"]["exit_code"], 1);
    assert!(
        last[0].detail["output"]["stderr"]
            .as_str()
            .unwrap()
            .contains("injected failure")
    );
    n.stand_ins.fail("kubeadm", false);
    run_until_agent(&n, &store, &mut p, &cluster).await.unwrap();
    let kubeadm_calls: Vec<String> = n
        .stand_ins
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("kubeadm"))
        .collect();
    assert_eq!(
        kubeadm_calls,
        [
            "kubeadm upgrade plan v1.35.2",
            "kubeadm upgrade plan v1.35.2",
            "kubeadm upgrade apply -y v1.35.2"
        ]
    );
    assert_eq!(p.step, UpgradeStep::Drain);
}
