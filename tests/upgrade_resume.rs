//! A failure injected at each upgrade step halts the rollout, keeps the
//! failed command's output, and goes on after the real `drydock resume`;
//! a crash after each persisted step resumes without repeating a completed
//! kubeadm step. One control-plane node (it runs `upgrade apply`), its real
//! apt sandbox, recording stand-ins, the simulator.

#[path = "support/apt_sandbox.rs"]
mod apt_sandbox;
#[path = "support/k8s_repo.rs"]
mod k8s_repo;
#[path = "support/standins.rs"]
mod standins;
#[path = "support/upgrade_node.rs"]
mod upgrade_node;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use drydock::testing::agent::driver::{Agent, AgentError};
use drydock::testing::agent::kube_cluster::KubeCluster;
use drydock::testing::agent::state::AgentState;
use drydock::testing::sim::{DaemonSetSpec, NodeSpec, Scenario, SimHandle};
use drydock::testing::store::Store;
use k8s_openapi::api::core::v1::{Namespace, Node};
use upgrade_node::{Machine, Rec, UpgradeHost, machine};

async fn one_node() -> (SimHandle, Machine, tempfile::TempDir) {
    let sim = Scenario::new()
        .server_version("v1.34.2")
        .daemon_set(DaemonSetSpec::new("kube-system", "calico-node"))
        .node(NodeSpec::control_plane("cp-1").kubelet_version("v1.34.2"))
        .start()
        .await
        .unwrap();
    let top = tempfile::tempdir().unwrap();
    let m = machine("cp-1", &top.path().join("commands.log"));
    (sim, m, top)
}

fn agent(
    sim: &SimHandle,
    m: &Machine,
    fail_restart: Arc<AtomicBool>,
) -> Agent<UpgradeHost, KubeCluster, Rec> {
    let store = Store::open(&m.settings.node.state_db).unwrap();
    let cluster = KubeCluster::new(sim.client().unwrap(), m.settings.clone(), "cp-1".into());
    Agent::new(
        "cp-1".into(),
        m.settings.clone(),
        store,
        UpgradeHost::on_sim(sim, "cp-1", &m.settings, fail_restart),
        cluster,
        Rec::default(),
    )
    .unwrap()
}

/// The stand-in kubeadm's calls so far.
fn kubeadm_calls(m: &Machine) -> Vec<String> {
    m.stand_ins
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("kubeadm"))
        .collect()
}

fn state(store: &Store) -> Option<AgentState> {
    store.current_state::<AgentState>().unwrap().map(|(s, _)| s)
}

/// The state as `drydock status --json` shows it. Another process: opening
/// the store in this one while the agent has it open would drop the
/// agent's POSIX locks on the file (a second `open` closes a descriptor).
fn cli_state(m: &Machine) -> Option<AgentState> {
    serde_json::from_value(cli_json(m, &["status", "--json"])["state"].clone()).unwrap()
}

fn cli_last_command(m: &Machine) -> serde_json::Value {
    let args = [
        "history",
        "--json",
        "--kind",
        "upgrade-command",
        "--limit",
        "1",
    ];
    cli_json(m, &args)[0]["detail"]["output"].clone()
}

/// The CLI's JSON answer on this machine.
fn cli_json(m: &Machine, args: &[&str]) -> serde_json::Value {
    let out = m.sandbox.drydock().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kubelet(sim: &SimHandle) -> String {
    let n: Node = sim.get(None, "cp-1").unwrap();
    n.status.unwrap().node_info.unwrap().kubelet_version
}

fn halted(sim: &SimHandle) -> Option<String> {
    let ns: Namespace = sim.get(None, "drydock").unwrap();
    ns.metadata
        .annotations
        .and_then(|a| a.get("drydock.dev/halted").cloned())
}

fn marker(m: &Machine, name: &str, on: bool) {
    let path = m.sandbox.base.join(format!("fail-{name}"));
    if on {
        std::fs::write(path, "").unwrap();
    } else {
        let _ = std::fs::remove_file(path);
    }
}

fn kubeadm_marker(m: &Machine, sub: &str, on: bool) {
    m.stand_ins.fail(&format!("kubeadm-{sub}"), on);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_each_step_halts_keeps_evidence_and_resumes() {
    if !k8s_repo::ready() {
        return;
    }
    let (sim, m, _top) = one_node().await;
    let fail_restart = Arc::new(AtomicBool::new(true));
    marker(&m, "apt-get", true);
    marker(&m, "apt-cache", true);
    marker(&m, "install", true);
    m.stand_ins.fail("etcdctl", true);
    kubeadm_marker(&m, "plan", true);
    let mut a = agent(&sim, &m, fail_restart.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        a.run(async {
            let _ = stopped.await;
        })
        .await
    });
    drydock::testing::cluster::versions::set_target(&sim.client().unwrap(), "drydock", "v1.35.2")
        .await
        .unwrap();

    let expected = [
        "apt-source",
        "resolve-packages",
        "install-kubeadm",
        "etcd-snapshot",
        "kubeadm-plan",
        "kubeadm-apply",
        "install-kubelet",
        "restart-kubelet",
    ];
    let mut seen_failed_at = None;
    for step in expected {
        // Wait for the failure at `step`.
        let start = Instant::now();
        let (error, at) = loop {
            if let Some(AgentState::Failed {
                error,
                at,
                interrupted,
                slot_held,
                ..
            }) = cli_state(&m)
                && Some(at) != seen_failed_at
            {
                let AgentState::Upgrading { cycle, .. } = *interrupted else {
                    panic!("failed outside an upgrade step: {interrupted:?}");
                };
                assert_eq!(cycle.upgrade.unwrap().step.name(), step, "{error}");
                assert!(slot_held, "the lease is kept: the fleet stops here");
                break (error, at);
            }
            if task.is_finished() {
                panic!("the agent stopped: {:?}", task.await);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no failure at {step}: {:?}",
                cli_state(&m)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        seen_failed_at = Some(at);
        assert!(error.contains(&format!("step {step} failed")), "{error}");
        let halt = halted(&sim).expect("the rollout is halted");
        assert!(halt.contains(step), "{halt}");
        // The evidence: the failed command's output, in the history.
        if step != "restart-kubelet" {
            let out = &cli_last_command(&m);
            assert_ne!(out["exit_code"], 0, "{out}");
            assert!(
                out["stderr"].as_str().unwrap().contains("injected failure"),
                "{out}"
            );
        }
        // Fix what was broken (and break the next thing), then the operator's resume.
        match step {
            "apt-source" => marker(&m, "apt-get", false),
            "resolve-packages" => marker(&m, "apt-cache", false),
            "install-kubeadm" => marker(&m, "install", false),
            "etcd-snapshot" => m.stand_ins.fail("etcdctl", false),
            "kubeadm-plan" => {
                kubeadm_marker(&m, "plan", false);
                kubeadm_marker(&m, "apply", true);
            }
            "kubeadm-apply" => {
                kubeadm_marker(&m, "apply", false);
                marker(&m, "install", true);
            }
            "install-kubelet" => marker(&m, "install", false),
            _ => fail_restart.store(false, Ordering::SeqCst),
        }
        assert_eq!(kubelet(&sim), "v1.34.2", "nothing finished before {step}");
        let out = m.sandbox.drydock().arg("resume").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let start = Instant::now();
    while !(matches!(cli_state(&m), Some(AgentState::Idle)) && kubelet(&sim) == "v1.35.2") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not finished: {:?}",
            cli_state(&m)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        halted(&sim),
        None,
        "the node's own halt is lifted when it finishes"
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    let calls = kubeadm_calls(&m);
    assert_eq!(
        calls,
        [
            "kubeadm upgrade plan v1.35.2",
            "kubeadm upgrade plan v1.35.2",
            "kubeadm upgrade apply -y v1.35.2",
            "kubeadm upgrade apply -y v1.35.2",
        ],
        "each failed kubeadm step ran again once, nothing else twice"
    );
    for p in ["kubeadm", "kubelet", "kubectl"] {
        assert_eq!(m.sandbox.version(p).as_deref(), Some("1.35.2-1.1"), "{p}");
        assert_eq!(m.sandbox.selection(p).as_deref(), Some("hold"), "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_each_step_resumes_without_repeating_kubeadm() {
    if !k8s_repo::ready() {
        return;
    }
    let (sim, m, _top) = one_node().await;
    drydock::testing::cluster::versions::set_target(&sim.client().unwrap(), "drydock", "v1.35.2")
        .await
        .unwrap();
    let mut crashes = 0;
    let start = Instant::now();
    loop {
        // A fresh process each time: it dies right after its first persisted upgrade step.
        let crashed = Arc::new(AtomicBool::new(false));
        let fp = crashed.clone();
        let mut a =
            agent(&sim, &m, Arc::new(AtomicBool::new(false))).with_failpoint(Arc::new(move |to| {
                matches!(
                    to,
                    "upgrading" | "cordoning" | "draining" | "verifying" | "releasing"
                ) && !fp.swap(true, Ordering::SeqCst)
            }));
        let result =
            tokio::time::timeout(Duration::from_secs(5), a.run(std::future::pending::<()>())).await;
        match result {
            Ok(Err(AgentError::Failpoint(_))) => crashes += 1,
            Ok(other) => panic!("agent stopped: {other:?}"),
            Err(_) => {
                // Ran 5 s without crashing: nothing left to crash in.
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(180));
    }
    assert!(
        matches!(
            state(&Store::open(&m.settings.node.state_db).unwrap()),
            Some(AgentState::Idle)
        ),
        "{:?}",
        state(&Store::open(&m.settings.node.state_db).unwrap())
    );
    assert_eq!(kubelet(&sim), "v1.35.2");
    assert!(crashes >= 12, "a crash after every step: {crashes}");
    let calls = kubeadm_calls(&m);
    assert_eq!(
        calls,
        [
            "kubeadm upgrade plan v1.35.2",
            "kubeadm upgrade apply -y v1.35.2"
        ]
    );
    let etcd = m
        .stand_ins
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("etcdctl"))
        .count();
    assert_eq!(etcd, 2, "one snapshot (save and status)");
    for p in ["kubeadm", "kubelet", "kubectl"] {
        assert_eq!(m.sandbox.version(p).as_deref(), Some("1.35.2-1.1"), "{p}");
        assert_eq!(m.sandbox.selection(p).as_deref(), Some("hold"), "{p}");
    }
}
