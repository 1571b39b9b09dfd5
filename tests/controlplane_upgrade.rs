//! The Kubernetes upgrade's API calls against a real control plane
//! (kube-apiserver with Node,RBAC and NodeRestriction, etcd,
//! controller-manager, scheduler: `tests/support/controlplane.rs`), with
//! every identity as in production:
//!
//! - the kubelet credential (`system:node:X`) reads /version, the Nodes'
//!   kubelet versions and kube-system/kubeadm-config, the last only
//!   through the Role and RoleBinding kubeadm creates
//!   (`kubeadm:nodes-kubeadm-config`, bound to the bootstrap-token group
//!   and `system:nodes`): refused before they exist, granted after;
//! - the drydock identity (`drydock:node:X`, the RBAC `drydock rbac`
//!   prints) reads the target annotation and the Node list, and takes the
//!   Lease; the kubelet credential cordons its own Node and evicts its
//!   own pods;
//! - `kubeadm upgrade apply` is a recording stand-in whose effect on the
//!   cluster (kubeadm-config's kubernetesVersion) is written with the admin
//!   credential, as kubeadm does with admin.conf; apt and dpkg are real (a
//!   sandbox per node with the packages of two minors, the APT hook wired
//!   in); the kubelet restart makes the node's kubelet report the new
//!   version through its own credential.
//!
//! The target is the API server's own version (the binaries are one
//! release; the nodes start one minor below it): a control plane already
//! serving the target, as after `kubeadm upgrade apply`, so the worker's
//! turn follows the control plane's as on a real cluster.
//!
//! Needs target/controlplane/bin (`scripts/build-control-plane`) and root
//! for the apt sandboxes.

#[path = "support/apt_sandbox.rs"]
mod apt_sandbox;
#[path = "support/controlplane.rs"]
mod controlplane;
#[path = "support/k8s_repo.rs"]
mod k8s_repo;
#[path = "support/standins.rs"]
mod standins;
#[path = "support/upgrade_node.rs"]
mod upgrade_node;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use controlplane::{ControlPlane, Kubelet, client, tail};
use drydock::testing::agent::kube_cluster::KubeCluster;
use drydock::testing::agent::ports::AgentEvent;
use drydock::testing::host::command::{
    CommandError, CommandOutput, CommandRunner, CommandSpec, HostRunner,
};
use drydock::testing::store::Store;
use drydock::testing::upgrade::KubeVersion;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use upgrade_node::{KubeletVersionSink, Machine, Rec, UpgradeHost, machine_at, spawn_agent};

const NODES: [&str; 2] = ["cp-1", "w-1"];
const NS: &str = "drydock";

/// The kubelet stand-in reports the version its restart brought.
impl KubeletVersionSink for Kubelet {
    fn kubelet_restarted(&self, node: &str, version: &str) -> Result<(), String> {
        assert_eq!(node, self.name);
        self.set_version(version);
        Ok(())
    }
}

/// Runs the recording stand-ins; a successful `kubeadm upgrade apply -y vX`
/// then writes what kubeadm writes with admin.conf: kubeadm-config's
/// kubernetesVersion.
struct KubeadmWithAdmin {
    kubeadm: PathBuf,
    admin: kube::Client,
}

impl CommandRunner for KubeadmWithAdmin {
    fn run<'a>(
        &'a self,
        spec: &'a CommandSpec,
    ) -> BoxFuture<'a, Result<CommandOutput, CommandError>> {
        Box::pin(async move {
            let out = HostRunner.run(spec).await?;
            let args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
            if out.success()
                && spec.program == self.kubeadm
                && let ["upgrade", "apply", rest @ ..] = args.as_slice()
                && let Some(version) = rest.iter().find(|a| a.starts_with('v'))
            {
                let cms: Api<ConfigMap> = Api::namespaced(self.admin.clone(), "kube-system");
                let data = drydock::testing::sim::kubeadm::config_object(version)["data"].clone();
                cms.patch(
                    "kubeadm-config",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "data": data })),
                )
                .await
                .expect("kubeadm's admin writes kubeadm-config");
            }
            Ok(out)
        })
    }
}

/// The Debian version of the packages for `v` (pkgs.k8s.io's `-1.1`).
fn package(v: KubeVersion) -> String {
    format!("{}.{}.{}-1.1", v.major, v.minor, v.patch)
}

/// The version the control-plane binaries serve.
fn served_version(bin: &std::path::Path) -> KubeVersion {
    let out = std::process::Command::new(bin.join("kube-apiserver"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().trim_start_matches("Kubernetes ").to_string();
    KubeVersion::parse_observed(&v).unwrap_or_else(|| panic!("kube-apiserver --version: {text}"))
}

fn apply(cp: &ControlPlane, doc: &Value) -> String {
    cp.admin_kubectl(
        &["apply", "-f", "-"],
        Some(&serde_json::to_vec(doc).unwrap()),
    )
}

/// What kubeadm's upload-config phase creates for the nodes: a Role that
/// may get kubeadm-config, bound to the bootstrap-token group and to every
/// kubelet.
fn kubeadm_nodes_config_rbac() -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "kubeadm:nodes-kubeadm-config", "namespace": "kube-system"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                    "resourceNames": ["kubeadm-config"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "kubeadm:nodes-kubeadm-config", "namespace": "kube-system"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "kubeadm:nodes-kubeadm-config"},
         "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
             "name": "system:bootstrappers:kubeadm:default-node-token"},
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]},
    ]})
}

fn kubelet_version(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kubelet_version.clone())
        .unwrap_or_default()
}

#[test]
fn upgrade_against_a_real_control_plane() {
    let Some(bin) = controlplane::binaries() else {
        return;
    };
    if !k8s_repo::ready() {
        return;
    }
    controlplane::init_tracing();
    let started = Instant::now();
    let target = served_version(&bin);
    assert!(target.minor > 0, "{target}");
    let from = KubeVersion::new(target.major, target.minor - 1, 7);
    let minor = |v: KubeVersion| format!("{}.{}", v.major, v.minor);
    // The target's minor also has an older patch: the exact one must be chosen.
    let mut target_patches = vec![package(target)];
    if target.patch > 0 {
        target_patches.insert(
            0,
            package(KubeVersion::new(
                target.major,
                target.minor,
                target.patch - 1,
            )),
        );
    }
    let minors = vec![
        (minor(from), vec![package(from)]),
        (minor(target), target_patches),
    ];

    let top = tempfile::tempdir().unwrap();
    let global = top.path().join("fleet-commands.log");
    let machines: Vec<Machine> = NODES
        .iter()
        .map(|n| machine_at(n, Some(&global), Some(&minors), &package(from)))
        .collect();
    println!("apt sandboxes built in {:?}", started.elapsed());

    let cp = ControlPlane::start(&bin);
    println!("control plane up in {:?}", started.elapsed());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(run(&cp, &machines, &global, from, target, started))
    }));
    if let Err(panic) = result {
        for name in ["kube-apiserver", "kube-controller-manager"] {
            eprintln!("--- {name}.log (tail) ---\n{}", tail(&cp.log(name), 30));
        }
        std::panic::resume_unwind(panic);
    }
    println!("whole run: {:?}", started.elapsed());
}

async fn run(
    cp: &ControlPlane,
    machines: &[Machine],
    global: &std::path::Path,
    from: KubeVersion,
    target: KubeVersion,
    started: Instant,
) {
    // Kubelets at the old version register and heartbeat; kubeadm labels
    // the control plane.
    let mut kubelets = Vec::new();
    for (i, n) in NODES.iter().enumerate() {
        let k = Kubelet::new(cp, n, i);
        k.set_version(&from.to_string());
        k.register(*n == "cp-1").await;
        tokio::spawn(k.clone().run());
        kubelets.push(k);
    }
    cp.admin_kubectl(
        &[
            "label",
            "node",
            "cp-1",
            "node-role.kubernetes.io/control-plane=",
        ],
        None,
    );
    // drydock's RBAC, as the README says to apply it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drydock"))
        .args(["rbac", "--namespace", NS])
        .output()
        .unwrap();
    assert!(out.status.success(), "drydock rbac");
    cp.admin_kubectl(&["apply", "-f", "-"], Some(&out.stdout));
    // A workload on the worker for the drain to move, and the network
    // DaemonSet the verification requires on every node.
    apply(
        cp,
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet",
             "metadata": {"name": "web", "namespace": "default"},
             "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                      "template": {"metadata": {"labels": {"app": "web"}},
                                   "spec": {"terminationGracePeriodSeconds": 1,
                                            "containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}]}}}},
            {"apiVersion": "apps/v1", "kind": "DaemonSet",
             "metadata": {"name": "calico-node", "namespace": "kube-system"},
             "spec": {"selector": {"matchLabels": {"k8s-app": "calico-node"}},
                      "template": {"metadata": {"labels": {"k8s-app": "calico-node"}},
                                   "spec": {"tolerations": [{"operator": "Exists"}],
                                            "containers": [{"name": "calico-node", "image": "docker.io/calico/node:v3.30.0"}]}}}},
        ]}),
    );

    // kubeadm-config as kubeadm init leaves it: readable by a node only
    // once kubeadm's Role and RoleBinding exist.
    let admin = client(&cp.admin).await;
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "kube-system");
    let cm: ConfigMap = serde_json::from_value(drydock::testing::sim::kubeadm::config_object(
        &from.to_string(),
    ))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let node_cms: Api<ConfigMap> =
        Api::namespaced(client(&kubelets[1].kubeconfig).await, "kube-system");
    match node_cms.get("kubeadm-config").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("a node read kubeadm-config without kubeadm's grant: {other:?}"),
    }
    // Each node's drydock identity, as its enrolment would leave it.
    let identities: Vec<PathBuf> = NODES
        .iter()
        .map(|node| {
            cp.kubeconfig(
                &format!("drydock-{node}"),
                &format!("drydock:node:{node}"),
                &["drydock:nodes"],
            )
        })
        .collect();
    let w1_kubelet = client(&kubelets[1].kubeconfig).await;
    let w1_drydock = client(&identities[1]).await;
    let versions =
        drydock::testing::cluster::versions::observe_versions_as(&w1_kubelet, &w1_drydock).await;
    assert!(
        versions
            .as_ref()
            .is_err_and(|e| e.to_string().contains("kubeadm-config")),
        "without the grant the versions are unreadable (fail closed): {versions:?}"
    );
    apply(cp, &kubeadm_nodes_config_rbac());
    let grant = Instant::now();
    loop {
        match node_cms.get("kubeadm-config").await {
            Ok(_) => break,
            Err(e) if grant.elapsed() > Duration::from_secs(20) => {
                panic!("kubeadm's grant did not let the node read kubeadm-config: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // Everything the upgrade decides on, read with the kubelet's rights.
    let versions =
        drydock::testing::cluster::versions::observe_versions_as(&w1_kubelet, &w1_drydock)
            .await
            .unwrap();
    assert_eq!(versions.api_server, Some(target));
    assert_eq!(versions.kubeadm_config, Some(from));
    assert_eq!(versions.kubelets.len(), 2, "{versions:?}");
    assert!(
        versions
            .kubelets
            .iter()
            .all(|k| k.kubelet == Some(from) && k.control_plane == (k.node == "cp-1")),
        "{versions:?}"
    );

    // The agents: the kubelet credential and the drydock identity.
    let rec = Rec::default();
    let mut agents = Vec::new();
    let audit_from = cp.audit().len();
    for (((node, m), kubelet), identity) in
        NODES.iter().zip(machines).zip(&kubelets).zip(&identities)
    {
        let mut settings = m.settings.clone();
        settings.node.kubeconfig = kubelet.kubeconfig.clone();
        settings.lease.namespace = NS.into();
        settings.lease.duration = Duration::from_secs(15);
        settings.drain.timeout = Duration::from_secs(60);
        settings.verify.timeout = Duration::from_secs(60);
        let host = UpgradeHost {
            node: node.to_string(),
            sim: kubelet.clone(),
            runner: KubeadmWithAdmin {
                kubeadm: settings.upgrade.kubeadm.clone(),
                admin: admin.clone(),
            },
            dpkg_root: settings.packages.dpkg_root.clone(),
            boot_id: kubelet.boot_id(),
            booted_at: jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1),
            fail_restart: Default::default(),
        };
        let cluster = KubeCluster::with_identity(
            client(&kubelet.kubeconfig).await,
            client(identity).await,
            settings.clone(),
            node.to_string(),
        );
        agents.push(spawn_agent(node, settings, host, cluster, rec.clone()));
    }

    // The admin sets the target (validated against the real cluster).
    let set = drydock::testing::cluster::versions::set_target(&admin, NS, &target.to_string())
        .await
        .unwrap();
    assert_eq!(set, target);
    let upgrade_started = Instant::now();
    let nodes: Api<Node> = Api::all(admin.clone());
    loop {
        let list = nodes.list(&Default::default()).await.unwrap();
        let at_target = list
            .items
            .iter()
            .filter(|n| kubelet_version(n) == target.to_string())
            .count();
        let released = rec
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, e)| matches!(e, AgentEvent::Released { .. }))
            .count();
        if at_target == NODES.len() && released == NODES.len() {
            break;
        }
        if upgrade_started.elapsed() > Duration::from_secs(180) {
            let events = rec.lines();
            panic!(
                "the upgrade did not finish: kubelets {:?}\n{}",
                list.items.iter().map(kubelet_version).collect::<Vec<_>>(),
                events.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "upgrade {from} -> {target} of {} nodes in {:?} (whole run so far {:?})",
        NODES.len(),
        upgrade_started.elapsed(),
        started.elapsed()
    );
    for a in agents {
        a.stop().await;
    }

    // kubeadm: apply on the control plane, then node on the worker; the
    // snapshot before the apply, on the control plane only.
    let log = std::fs::read_to_string(global).unwrap();
    let upgrades: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" kubeadm upgrade ") && !l.contains(" plan"))
        .collect();
    assert_eq!(
        upgrades,
        vec![
            format!("cp-1 kubeadm upgrade apply -y {target}").as_str(),
            "w-1 kubeadm upgrade node"
        ],
        "{log}"
    );
    let etcd: Vec<&str> = log.lines().filter(|l| l.contains(" etcdctl ")).collect();
    assert_eq!(etcd.len(), 2, "{log}");
    assert!(etcd.iter().all(|l| l.starts_with("cp-1 ")), "{log}");
    // kubeadm-config followed the apply; both Nodes uncordoned.
    let cm = cms.get("kubeadm-config").await.unwrap();
    assert_eq!(
        drydock::testing::cluster::versions::kubeadm_config_version(&cm),
        Ok(target)
    );
    for n in nodes.list(&Default::default()).await.unwrap().items {
        assert_ne!(
            n.spec.and_then(|s| s.unschedulable),
            Some(true),
            "{:?} left cordoned",
            n.metadata.name
        );
    }
    // One node at a time, the control plane first.
    let events = rec.0.lock().unwrap().clone();
    let at = |node: &str, released: bool| {
        events
            .iter()
            .find(|(_, n, e)| {
                n == node
                    && if released {
                        matches!(e, AgentEvent::Released { .. })
                    } else {
                        matches!(e, AgentEvent::LeaseAcquired { .. })
                    }
            })
            .map(|(t, _, _)| *t)
            .unwrap_or_else(|| panic!("{node}: no lease turn"))
    };
    assert!(at("cp-1", true) <= at("w-1", false), "control plane first");
    // Exact packages, held again.
    for (n, m) in NODES.iter().zip(machines) {
        for p in ["kubeadm", "kubelet", "kubectl"] {
            assert_eq!(m.sandbox.version(p), Some(package(target)), "{n} {p}");
            assert_eq!(m.sandbox.selection(p).as_deref(), Some("hold"), "{n} {p}");
        }
    }

    // The audit log: the nodes read kubeadm-config and /version with their
    // kubelet credential, the drydock identity did the Lease and the
    // drain, and nothing either identity asked during the upgrade was
    // refused.
    let audit = cp.audit();
    let upgrade_audit = &audit[audit_from..];
    let user = |e: &Value| e["user"]["username"].as_str().unwrap_or("").to_string();
    let refused: Vec<String> = upgrade_audit
        .iter()
        .filter(|e| e["responseStatus"]["code"].as_u64() == Some(403))
        .map(|e| format!("{} {} {}", user(e), e["verb"], e["requestURI"]))
        .collect();
    assert!(
        refused.is_empty(),
        "refused during the upgrade: {refused:#?}"
    );
    for node in NODES {
        let kubelet_user = format!("system:node:{node}");
        let drydock_user = format!("drydock:node:{node}");
        let by = |who: &str, pred: &dyn Fn(&Value) -> bool| {
            upgrade_audit
                .iter()
                .filter(|e| user(e) == who && pred(e))
                .count()
        };
        let config_reads = by(&kubelet_user, &|e| {
            e["objectRef"]["resource"] == "configmaps"
                && e["objectRef"]["name"] == "kubeadm-config"
                && e["verb"] == "get"
                && e["responseStatus"]["code"] == 200
        });
        assert!(
            config_reads > 0,
            "{node} read kubeadm-config as its kubelet"
        );
        let version_reads = by(&kubelet_user, &|e| e["requestURI"] == "/version");
        assert!(version_reads > 0, "{node} read /version");
        let lease_writes = by(&drydock_user, &|e| {
            e["objectRef"]["resource"] == "leases"
                && matches!(e["verb"].as_str(), Some("create" | "update" | "patch"))
        });
        assert!(lease_writes > 0, "{node} took the Lease as drydock");
        let target_reads = by(&drydock_user, &|e| {
            e["objectRef"]["resource"] == "namespaces" && e["objectRef"]["name"] == NS
        });
        assert!(target_reads > 0, "{node} read the target annotation");
    }
    let evictions: Vec<(String, Option<u64>)> = upgrade_audit
        .iter()
        .filter(|e| e["objectRef"]["subresource"] == "eviction")
        .map(|e| (user(e), e["responseStatus"]["code"].as_u64()))
        .collect();
    assert!(
        !evictions.is_empty()
            && evictions
                .iter()
                .all(|(u, code)| u == "system:node:w-1" && *code == Some(201)),
        "the worker's pods evicted with its own kubelet credential: {evictions:?}"
    );
    let cordons: Vec<(String, Option<u64>)> = upgrade_audit
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "nodes" && e["verb"] == "patch")
        .filter(|e| e["objectRef"]["subresource"].is_null())
        .map(|e| (user(e), e["responseStatus"]["code"].as_u64()))
        .collect();
    for node in NODES {
        let me = format!("system:node:{node}");
        assert!(
            cordons.iter().filter(|(u, _)| *u == me).count() >= 2,
            "{node} cordoned and uncordoned itself: {cordons:?}"
        );
    }
    // The history records the upgrade on each node.
    for (n, m) in NODES.iter().zip(machines) {
        let history = Store::open(&m.settings.node.state_db)
            .unwrap()
            .history(&["upgrade"], 10)
            .unwrap();
        assert_eq!(history.len(), 1, "{n}");
        assert_eq!(history[0].detail["to"], target.to_string());
    }
}
