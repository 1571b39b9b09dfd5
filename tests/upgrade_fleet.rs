//! The whole upgrade: 3 control-plane and 3 worker nodes against the
//! simulator, each with its own real apt sandbox (kubeadm/kubelet/kubectl
//! .debs of two minors, the shipped APT hook wired in) and recording
//! stand-ins for kubeadm and etcdctl. Real agents, real Lease, gates, drain
//! and verification; the stand-in kubeadm's `upgrade apply` and the kubelet
//! restart change the simulated cluster as a real one would change.

#[path = "support/apt_sandbox.rs"]
mod apt_sandbox;
#[path = "support/k8s_repo.rs"]
mod k8s_repo;
#[path = "support/standins.rs"]
mod standins;
#[path = "support/upgrade_node.rs"]
mod upgrade_node;

use std::sync::Arc;
use std::time::{Duration, Instant};

use drydock::testing::agent::kube_cluster::KubeCluster;
use drydock::testing::agent::ports::AgentEvent;
use drydock::testing::sim::{DaemonSetSpec, NodeSpec, Scenario, SimHandle};
use drydock::testing::store::Store;
use k8s_openapi::api::core::v1::Node;
use upgrade_node::{Machine, Rec, RunningAgent, StopOnDrop, UpgradeHost, machine, spawn_agent};

const NODES: [&str; 6] = ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2", "worker-3"];

fn kubelet(sim: &SimHandle, node: &str) -> String {
    let n: Node = sim.get(None, node).unwrap();
    n.status.unwrap().node_info.unwrap().kubelet_version
}

/// The simulated cluster and one running agent per node, each with its
/// own apt sandbox.
struct Fleet {
    sim: SimHandle,
    machines: Vec<Machine>,
    rec: Rec,
    global: std::path::PathBuf,
    agents: Vec<RunningAgent>,
    _top: tempfile::TempDir,
}

async fn fleet(nodes: &[&str], concurrency: u32) -> Fleet {
    let top = tempfile::tempdir().unwrap();
    let global = top.path().join("fleet-commands.log");
    let mut scenario = Scenario::new()
        .server_version("v1.34.2")
        .daemon_set(DaemonSetSpec::new("kube-system", "calico-node"));
    for n in nodes {
        let spec = if n.starts_with("cp-") {
            NodeSpec::control_plane(*n)
        } else {
            NodeSpec::worker(*n)
        };
        scenario = scenario.node(spec.kubelet_version("v1.34.2"));
    }
    let sim = scenario.start().await.unwrap();
    let machines: Vec<Machine> = nodes.iter().map(|n| machine(n, &global)).collect();

    let rec = Rec::default();
    let mut agents = Vec::new();
    for (node, m) in nodes.iter().zip(&machines) {
        let mut settings = m.settings.clone();
        settings.lease.concurrency = concurrency;
        let host = UpgradeHost::on_sim(&sim, node, &settings, Default::default());
        let cluster = KubeCluster::new(sim.client().unwrap(), settings.clone(), node.to_string());
        agents.push(spawn_agent(node, settings, host, cluster, rec.clone()));
    }
    Fleet {
        sim,
        machines,
        rec,
        global,
        agents,
        _top: top,
    }
}

impl Fleet {
    /// Until every kubelet runs `to` and every node released its slot.
    async fn wait_rollout(&self, nodes: &[&str], to: &str) {
        let start = Instant::now();
        loop {
            let done = nodes.iter().all(|n| kubelet(&self.sim, n) == to);
            let released = self
                .rec
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, _, e)| matches!(e, AgentEvent::Released { .. }))
                .count();
            if done && released == nodes.len() {
                return;
            }
            if start.elapsed() > Duration::from_secs(240) {
                let events = self.rec.lines();
                panic!(
                    "rollout did not finish: kubelets {:?}\n{}",
                    nodes
                        .iter()
                        .map(|n| kubelet(&self.sim, n))
                        .collect::<Vec<_>>(),
                    events.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(&mut self) {
        for a in self.agents.drain(..) {
            a.stop().await;
        }
    }

    /// Each node's upgrade, from its first finished step to its release.
    fn upgrade_spans(&self, nodes: &[&str]) -> Vec<(Instant, Instant, String)> {
        let events = self.rec.0.lock().unwrap().clone();
        let mut spans: Vec<(Instant, Instant, String)> = nodes
            .iter()
            .map(|n| {
                let first = |f: &dyn Fn(&AgentEvent) -> bool| {
                    events
                        .iter()
                        .find(|(_, node, e)| node == n && f(e))
                        .map(|(t, _, _)| *t)
                        .unwrap_or_else(|| panic!("{n}: no upgrade turn"))
                };
                let from = first(&|e| matches!(e, AgentEvent::UpgradeStep { .. }));
                let to = first(&|e| matches!(e, AgentEvent::Released { .. }));
                (from, to, n.to_string())
            })
            .collect();
        spans.sort();
        spans
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_control_planes_then_three_workers_one_at_a_time() {
    if !k8s_repo::ready() {
        return;
    }
    let mut f = fleet(&NODES, 1).await;
    let (sim, machines, rec, global) =
        (f.sim.clone(), &f.machines, f.rec.clone(), f.global.clone());

    // A refused target first: nothing runs.
    let client = sim.client().unwrap();
    drydock::testing::cluster::annotations::set(
        &client,
        "drydock",
        drydock::testing::cluster::annotations::KUBERNETES_VERSION,
        Some("v1.36.0"),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!global.exists(), "a refused target ran commands");
    assert!(rec.0.lock().unwrap().iter().any(|(_, _, e)| matches!(e, AgentEvent::UpgradeRefused { reason } if reason.contains("more than one minor"))));

    // Unauthorized installs are refused throughout the rollout.
    let probe_root = machines[4].sandbox.apt_conf.clone();
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let _stop_probe = StopOnDrop(probing.clone());
    let probe = {
        let probing = probing.clone();
        tokio::task::spawn_blocking(move || {
            let mut outcomes = Vec::new();
            while probing.load(std::sync::atomic::Ordering::SeqCst) {
                let out = std::process::Command::new("apt-get")
                    .env("APT_CONFIG", &probe_root)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    // In the sandbox's own repository throughout: an upgrade
                    // before the rollout, a downgrade after it.
                    .args([
                        "-y",
                        "-q",
                        "--allow-change-held-packages",
                        "--allow-downgrades",
                        "-o",
                        "DPkg::Lock::Timeout=60",
                        "install",
                        "kubeadm=1.34.3-1.1",
                    ])
                    .output()
                    .unwrap();
                outcomes.push((
                    out.status.success(),
                    String::from_utf8_lossy(&out.stderr).to_string(),
                ));
                std::thread::sleep(Duration::from_millis(300));
            }
            outcomes
        })
    };

    let set = drydock::testing::cluster::versions::set_target(&client, "drydock", "v1.35.2")
        .await
        .unwrap();
    assert_eq!(set.to_string(), "v1.35.2");
    f.wait_rollout(&NODES, "v1.35.2").await;
    probing.store(false, std::sync::atomic::Ordering::SeqCst);
    let outcomes = probe.await.unwrap();
    f.stop().await;
    let machines = &f.machines;

    // Exactly one `upgrade apply`, by the first control plane; `upgrade node` on the others.
    let log = std::fs::read_to_string(&global).unwrap();
    let kubeadm: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" kubeadm upgrade ") && !l.contains(" plan "))
        .collect();
    let applies: Vec<&&str> = kubeadm
        .iter()
        .filter(|l| l.contains("upgrade apply -y v1.35.2"))
        .collect();
    assert_eq!(applies.len(), 1, "{log}");
    assert!(applies[0].starts_with("cp-"), "{log}");
    assert_eq!(kubeadm.len(), 6, "{log}");
    assert!(
        kubeadm[0].contains("upgrade apply"),
        "apply comes first: {log}"
    );
    let order: Vec<&str> = kubeadm
        .iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert!(
        order[..3].iter().all(|n| n.starts_with("cp-")),
        "control planes first: {order:?}"
    );
    assert!(
        order[3..].iter().all(|n| n.starts_with("worker-")),
        "{order:?}"
    );
    let mut unique = order.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 6, "each node once: {order:?}");
    // The etcd snapshot only on the node that applied, before it.
    let etcd: Vec<&str> = log.lines().filter(|l| l.contains(" etcdctl ")).collect();
    assert_eq!(etcd.len(), 2, "save and status: {log}");
    assert!(
        etcd.iter()
            .all(|l| l.split(' ').next() == applies[0].split(' ').next())
    );

    // One node at a time: lease spans never overlap, control planes first.
    let events = rec.0.lock().unwrap().clone();
    let mut spans = Vec::new();
    for n in NODES {
        let acquired: Vec<Instant> = events
            .iter()
            .filter(|(_, node, e)| node == n && matches!(e, AgentEvent::LeaseAcquired { .. }))
            .map(|(t, _, _)| *t)
            .collect();
        let released: Vec<Instant> = events
            .iter()
            .filter(|(_, node, e)| node == n && matches!(e, AgentEvent::Released { .. }))
            .map(|(t, _, _)| *t)
            .collect();
        assert_eq!((acquired.len(), released.len()), (1, 1), "{n}: one turn");
        spans.push((acquired[0], released[0], n));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "overlapping turns: {} and {}",
            pair[0].2,
            pair[1].2
        );
    }
    assert!(
        spans[..3].iter().all(|s| s.2.starts_with("cp-")),
        "{spans:?}"
    );

    // Exact versions, held again, on every machine; the cluster reports the target.
    for (n, m) in NODES.iter().zip(machines.iter()) {
        for p in ["kubeadm", "kubelet", "kubectl"] {
            assert_eq!(
                m.sandbox.version(p).as_deref(),
                Some("1.35.2-1.1"),
                "{n} {p}"
            );
            assert_eq!(m.sandbox.selection(p).as_deref(), Some("hold"), "{n} {p}");
        }
        assert!(
            std::fs::read_to_string(m.settings.upgrade.apt_source_file.clone())
                .unwrap()
                .contains("/v1.35/deb/")
        );
        let history = Store::open(&m.settings.node.state_db)
            .unwrap()
            .history(&["upgrade"], 10)
            .unwrap();
        assert_eq!(history.len(), 1, "{n}");
        assert_eq!(history[0].detail["to"], "v1.35.2");
    }
    assert_eq!(sim.kubeadm_config_version().as_deref(), Some("v1.35.2"));
    assert!(!outcomes.is_empty());
    assert!(
        outcomes.iter().all(|(ok, _)| !ok),
        "an unauthorized install went through"
    );
    assert!(
        outcomes.iter().all(|(_, err)| err.contains("drydock")),
        "{outcomes:?}"
    );
    assert_eq!(
        machines[4].sandbox.version("kubeadm").as_deref(),
        Some("1.35.2-1.1")
    );
}

/// Two Lease slots: two nodes may be out at once, but never two control
/// planes in their upgrade (one `apply`, control planes one at a time);
/// the workers then share the two slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_two_never_upgrades_two_control_planes_at_once() {
    if !k8s_repo::ready() {
        return;
    }
    const FIVE: [&str; 5] = ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2"];
    let mut f = fleet(&FIVE, 2).await;
    let client = f.sim.client().unwrap();
    drydock::testing::cluster::versions::set_target(&client, "drydock", "v1.35.2")
        .await
        .unwrap();
    f.wait_rollout(&FIVE, "v1.35.2").await;
    f.stop().await;

    let log = std::fs::read_to_string(&f.global).unwrap();
    let applies = log
        .lines()
        .filter(|l| l.contains(" kubeadm upgrade apply "))
        .count();
    assert_eq!(applies, 1, "{log}");
    let nodes = log
        .lines()
        .filter(|l| l.contains(" kubeadm upgrade node"))
        .count();
    assert_eq!(nodes, 4, "{log}");
    let spans = f.upgrade_spans(&FIVE);
    let cps: Vec<_> = spans.iter().filter(|s| s.2.starts_with("cp-")).collect();
    for pair in cps.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two control planes upgrading at once: {} and {} ({spans:?})",
            pair[0].2,
            pair[1].2
        );
    }
    // Workers' kubeadm only after every control plane's.
    let order: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" kubeadm upgrade ") && !l.contains(" plan"))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert!(order[..3].iter().all(|n| n.starts_with("cp-")), "{order:?}");
    for m in &f.machines {
        assert_eq!(m.sandbox.version("kubelet").as_deref(), Some("1.35.2-1.1"));
    }
    assert_eq!(f.sim.kubeadm_config_version().as_deref(), Some("v1.35.2"));
}
