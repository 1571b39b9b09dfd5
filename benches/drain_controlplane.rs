//! The drain bench (`benches/drain.rs`) on a real control plane: one node
//! with 110 ReplicaSet pods, with and without a maxUnavailable=1 disruption
//! budget, drained by drydock and by real `kubectl drain`, side by side in
//! one run: wall time and API requests. Prints numbers, asserts nothing.
//!
//! `cargo bench --profile dev --bench drain_controlplane` (the README's
//! figures; the bench profile works too) (env `DRYDOCK_BENCH_RUNS`,
//! default 3; `DRYDOCK_BENCH_PODS`, default 110). Needs target/controlplane
//! (`scripts/build-control-plane`): etcd, kube-apiserver (Node,RBAC,
//! NodeRestriction, audit log), kube-controller-manager running only the
//! ReplicaSet, disruption and service-account controllers (so replacements
//! and PDB status are real, and the API server judges every eviction), and
//! the kubectl of the same version.
//!
//! There are no kubelets and no scheduler: a stand-in (below) binds pending
//! pods to Ready, schedulable, untainted Nodes (the bench creates the Node
//! objects), marks them Running and Ready 0.2 s after binding, and, once a
//! pod is being deleted, deletes it with grace 0 when its grace period
//! (1 s) has passed: what the scheduler and a kubelet do, with the
//! simulator's timings.
//!
//! drydock's side is the daemon's: cordon and drain with the kubelet
//! credential (`system:node:worker-1`), budgets read with the drydock
//! identity (`drydock:node:worker-1`, RBAC from `drydock rbac`), progress
//! to the real reporter (Node annotation, Events). kubectl's side is
//! `kubectl drain --ignore-daemonsets --delete-emptydir-data` as kubeadm's
//! admin (`kubernetes-admin`) with a warm discovery cache. Requests are
//! counted from the API server's audit log: one entry per audit ID whose
//! user is that side's; the stand-in, the controllers and the bench's
//! set-up use other users.

#[path = "../tests/support/controlplane.rs"]
mod controlplane;
#[path = "support/drain_bench.rs"]
mod drain_bench;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use controlplane::{ControlPlane, Options, client};
use drain_bench::{drain_as_the_daemon, mean_by_endpoint, median};
use drydock::testing::agent::kube_cluster::KubeCluster;
use drydock::testing::agent::ports::DrainResult;
use drydock::testing::config::Settings;
use drydock::testing::report::Reporter;
use drydock::testing::sim::NodeSpec;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

const NODE: &str = "worker-1";
const NS: &str = "default";
/// The stand-in's own user (system:masters), so its requests count for
/// neither side.
const STAND_IN: &str = "drydock-bench:kubelet-stand-in";
const KUBECTL_USER: &str = "kubernetes-admin";
const DRYDOCK_USERS: [&str; 2] = ["system:node:worker-1", "drydock:node:worker-1"];
/// Bound -> Running and Ready (the simulator's pod start delay).
const START_DELAY: Duration = Duration::from_millis(200);

// --- the stand-in for the scheduler and the kubelets --------------------------

#[derive(Default)]
struct StandInState {
    /// Node name -> whether a pod may be bound there (Ready, not cordoned,
    /// no NoSchedule taint).
    nodes: BTreeMap<String, bool>,
    next: usize,
    /// Pods (by UID) already bound or started by us.
    started: HashSet<String>,
    /// Pods (by UID) whose deletion we are completing.
    finishing: HashSet<String>,
    /// `app=web` pods in NS (by UID): Ready and not terminating, as the
    /// disruption controller counts them.
    healthy: HashMap<String, bool>,
    /// The fewest healthy pods seen since `track` started.
    min_healthy: Option<usize>,
}

#[derive(Clone)]
struct StandIn {
    client: kube::Client,
    state: Arc<Mutex<StandInState>>,
    /// The two list-and-watch loops.
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn schedulable(node: &Node) -> bool {
    let spec = node.spec.clone().unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready
        && spec.unschedulable != Some(true)
        && !spec
            .taints
            .unwrap_or_default()
            .iter()
            .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
}

impl StandIn {
    async fn start(client: kube::Client) -> StandIn {
        let s = StandIn {
            client,
            state: Arc::default(),
            tasks: Arc::default(),
        };
        let nodes: Api<Node> = Api::all(s.client.clone());
        let me = s.clone();
        let n = tokio::spawn(list_watch(nodes, move |e| me.on_node(e)));
        let pods: Api<Pod> = Api::all(s.client.clone());
        let me = s.clone();
        let p = tokio::spawn(list_watch(pods, move |e| me.on_pod(e)));
        *s.tasks.lock().unwrap() = vec![n.abort_handle(), p.abort_handle()];
        s
    }

    /// Stops watching (before the control plane goes away).
    fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn on_node(&self, e: WatchEvent<Node>) {
        let mut st = self.state.lock().unwrap();
        match e {
            WatchEvent::Added(n) | WatchEvent::Modified(n) => {
                st.nodes.insert(n.name_any(), schedulable(&n));
            }
            WatchEvent::Deleted(n) => {
                st.nodes.remove(&n.name_any());
            }
            _ => {}
        }
    }

    fn on_pod(&self, e: WatchEvent<Pod>) {
        let pod = match e {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => p,
            WatchEvent::Deleted(p) => {
                let uid = p.uid().unwrap_or_default();
                let mut st = self.state.lock().unwrap();
                st.healthy.remove(&uid);
                st.started.remove(&uid);
                st.finishing.remove(&uid);
                st.observe();
                return;
            }
            _ => return,
        };
        let uid = pod.uid().unwrap_or_default();
        let name = pod.name_any();
        let ns = pod.namespace().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let mut st = self.state.lock().unwrap();
        if ns == NS && pod.labels().get("app").map(String::as_str) == Some("web") {
            st.healthy
                .insert(uid.clone(), is_ready(&pod) && !terminating);
            st.observe();
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        if terminating {
            if !st.finishing.insert(uid.clone()) {
                return;
            }
            // The kubelet stops the containers within the grace period,
            // then confirms the deletion.
            let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(grace.max(0) as u64)).await;
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(kube::api::Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                let _ = api.delete(&name, &dp).await;
            });
            return;
        }
        if is_ready(&pod) || st.started.contains(&uid) {
            return;
        }
        let target = match node {
            Some(n) => Some((n, false)),
            None => {
                let free: Vec<String> = st
                    .nodes
                    .iter()
                    .filter(|(_, ok)| **ok)
                    .map(|(n, _)| n.clone())
                    .collect();
                if free.is_empty() {
                    // Pending until a Node appears (the next event or relist).
                    return;
                }
                st.next += 1;
                Some((free[st.next % free.len()].clone(), true))
            }
        };
        let Some((node, bind)) = target else { return };
        st.started.insert(uid.clone());
        let me = self.clone();
        tokio::spawn(async move {
            if bind {
                let binding = json!({"apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": name, "uid": uid},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                let r: Result<Value, _> = api
                    .create_subresource("binding", &name, &PostParams::default(), &binding)
                    .await;
                if r.is_err() {
                    // Gone or already bound: look again on its next event.
                    me.state.lock().unwrap().started.remove(&uid);
                    return;
                }
            }
            tokio::time::sleep(START_DELAY).await;
            let t = jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap()
                .to_string();
            let cond = |ty: &str| json!({"type": ty, "status": "True", "lastTransitionTime": t});
            let patch = json!({"status": {
                "phase": "Running",
                "hostIP": "192.168.56.11",
                "podIP": "10.244.1.10",
                "startTime": t,
                "conditions": [cond("Initialized"), cond("PodScheduled"),
                               cond("ContainersReady"), cond("Ready")],
                "containerStatuses": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                    "imageID": "", "ready": true, "started": true, "restartCount": 0,
                    "containerID": format!("containerd://{}", uuid::Uuid::new_v4().simple()),
                    "state": {"running": {"startedAt": t}}}],
            }});
            let _ = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await;
        });
    }

    fn healthy(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .healthy
            .values()
            .filter(|h| **h)
            .count()
    }

    fn schedulable_nodes(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.nodes
            .iter()
            .filter(|(_, ok)| **ok)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Starts recording the fewest healthy pods.
    fn track(&self) {
        let mut st = self.state.lock().unwrap();
        st.min_healthy = None;
        st.observe_start();
    }

    fn min_healthy(&self) -> Option<usize> {
        self.state.lock().unwrap().min_healthy
    }
}

impl StandInState {
    fn observe_start(&mut self) {
        self.min_healthy = Some(self.healthy.values().filter(|h| **h).count());
    }
    fn observe(&mut self) {
        if let Some(m) = self.min_healthy {
            let now = self.healthy.values().filter(|h| **h).count();
            self.min_healthy = Some(m.min(now));
        }
    }
}

/// List, then watch from there; list again whenever the watch ends.
async fn list_watch<K>(api: Api<K>, on: impl Fn(WatchEvent<K>))
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    loop {
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("stand-in: list failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let rv = list.metadata.resource_version.clone().unwrap_or_default();
        for o in list.items {
            on(WatchEvent::Added(o));
        }
        let stream = match api.watch(&WatchParams::default().timeout(290), &rv).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("stand-in: watch failed: {e}");
                continue;
            }
        };
        let mut stream = stream.boxed();
        while let Some(e) = stream.next().await {
            match e {
                Ok(WatchEvent::Error(e)) => {
                    eprintln!("stand-in: watch ended: {e:?}");
                    break;
                }
                Ok(e) => on(e),
                Err(e) => {
                    eprintln!("stand-in: watch ended: {e}");
                    break;
                }
            }
        }
    }
}

// --- the scenario ---------------------------------------------------------------

async fn create_node(admin: &kube::Client, name: &str, index: usize, control_plane: bool) {
    let spec = if control_plane {
        NodeSpec::control_plane(name)
    } else {
        NodeSpec::worker(name)
    };
    let object = drydock::testing::sim::node_object(&spec, index, "v1.34.4");
    let node: Node = serde_json::from_value(object.clone()).unwrap();
    let nodes = Api::<Node>::all(admin.clone());
    nodes
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
    // The status as the kubelet's first heartbeat writes it.
    let status = json!({"status": object["status"]});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("node {name}'s status: {e}"));
    // The API server taints a new Node not-ready (TaintNodesByCondition);
    // the node lifecycle controller, not running here, lifts it once Ready.
    let taints = json!({"spec": {"taints": object["spec"]["taints"]}});
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&taints))
        .await
        .unwrap_or_else(|e| panic!("node {name}'s taints: {e}"));
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < timeout,
            "set-up: {what} not done within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `worker-1` with `pods` Ready pods of `default/web` (grace 1 s), the
/// budget if asked for and settled, then `worker-2` and `worker-3` for the
/// replacements.
async fn set_up(admin: &kube::Client, stand_in: &StandIn, pods: usize, pdb: bool) {
    create_node(admin, NODE, 1, false).await;
    wait_for(
        "worker-1 schedulable",
        Duration::from_secs(10),
        async || stand_in.schedulable_nodes() == [NODE],
    )
    .await;
    let rs: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web", "namespace": NS, "labels": {"app": "web"}},
        "spec": {
            "replicas": pods,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                    "imagePullPolicy": "IfNotPresent"}],
                    "terminationGracePeriodSeconds": 1,
                    "automountServiceAccountToken": false,
                },
            },
        },
    }))
    .unwrap();
    let rss: Api<ReplicaSet> = Api::namespaced(admin.clone(), NS);
    rss.create(&PostParams::default(), &rs)
        .await
        .expect("creating the ReplicaSet");
    wait_for("all pods Ready", Duration::from_secs(120), async || {
        stand_in.healthy() == pods
    })
    .await;
    if pdb {
        let budget: PodDisruptionBudget = serde_json::from_value(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "maxUnavailable": 1},
        }))
        .unwrap();
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(admin.clone(), NS);
        pdbs.create(&PostParams::default(), &budget)
            .await
            .expect("creating the PDB");
        wait_for(
            "the disruption controller's PDB status",
            Duration::from_secs(60),
            async || {
                let Ok(p) = pdbs.get("web").await else {
                    return false;
                };
                let s = p.status.unwrap_or_default();
                s.observed_generation == p.metadata.generation
                    && s.current_healthy == pods as i32
                    && s.disruptions_allowed == 1
            },
        )
        .await;
    }
    create_node(admin, "worker-2", 2, false).await;
    create_node(admin, "worker-3", 3, false).await;
    wait_for(
        "worker-2 and worker-3 schedulable",
        Duration::from_secs(10),
        async || stand_in.schedulable_nodes().len() == 3,
    )
    .await;
}

/// Everything `set_up` made, gone (there is no garbage collector).
async fn tear_down(admin: &kube::Client, stand_in: &StandIn) {
    let dp = DeleteParams::background();
    let _ = Api::<PodDisruptionBudget>::namespaced(admin.clone(), NS)
        .delete("web", &dp)
        .await;
    let _ = Api::<ReplicaSet>::namespaced(admin.clone(), NS)
        .delete("web", &dp)
        .await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let _ = pods.delete_collection(&now, &ListParams::default()).await;
    let nodes: Api<Node> = Api::all(admin.clone());
    for n in [NODE, "worker-2", "worker-3"] {
        let _ = nodes.delete(n, &DeleteParams::default()).await;
    }
    let started = Instant::now();
    wait_for(
        "pods and workers gone",
        Duration::from_secs(60),
        async || {
            let left = pods
                .list(&ListParams::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(usize::MAX);
            let (nodes, healthy) = (stand_in.schedulable_nodes(), stand_in.healthy());
            if left > 0 {
                let _ = pods.delete_collection(&now, &ListParams::default()).await;
            }
            if started.elapsed() > Duration::from_secs(20) {
                eprintln!("tear-down: {left} pods left, nodes {nodes:?}, {healthy} healthy");
            }
            left == 0 && nodes.is_empty() && healthy == 0
        },
    )
    .await;
}

// --- the two sides --------------------------------------------------------------

struct Run {
    wall: Duration,
    /// The side's audit entries (one per request).
    audit: Vec<Value>,
    /// The fewest healthy `web` pods during the drain.
    min_healthy: Option<usize>,
    finished: bool,
}

fn audit_len(cp: &ControlPlane) -> u64 {
    std::fs::metadata(&cp.audit_log)
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Audit entries written after byte `from` by `users`, one per audit ID.
fn audit_since(cp: &ControlPlane, from: u64, users: &[&str]) -> Vec<Value> {
    let mut f = std::fs::File::open(&cp.audit_log).expect("audit log");
    f.seek(SeekFrom::Start(from)).expect("seek");
    let mut text = String::new();
    f.read_to_string(&mut text).expect("read audit log");
    let mut seen = HashSet::new();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| users.contains(&e["user"]["username"].as_str().unwrap_or("")))
        .filter(|e| seen.insert(e["auditID"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// The audit log in blocking mode has every entry once the response is
/// sent; a moment more lets the last ResponseComplete lines land.
async fn settle_audit() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

struct Bed {
    cp: ControlPlane,
    admin: kube::Client,
    stand_in: StandIn,
    /// The kubelet's credential on worker-1, and its drydock identity.
    kubelet: std::path::PathBuf,
    identity: std::path::PathBuf,
    /// Where kubectl keeps its discovery cache.
    kubectl_home: tempfile::TempDir,
}

async fn drydock_drain(bed: &Bed, pods: usize, pdb: bool) -> Run {
    set_up(&bed.admin, &bed.stand_in, pods, pdb).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = Settings::default();
    settings.node.name = Some(NODE.into());
    settings.node.state_db = dir.path().join("state.db");
    settings.report.textfile_dir = None;
    settings.drain.delete_emptydir_data = true;
    let kubelet = client(&bed.kubelet).await;
    let shared = client(&bed.identity).await;
    let reporter = Reporter::start(&settings, NODE, Some(kubelet.clone()))
        .await
        .expect("reporter");
    let cluster = KubeCluster::with_identity(kubelet, shared, settings, NODE.to_string());
    let from = audit_len(&bed.cp);
    bed.stand_in.track();
    let (wall, result) = drain_as_the_daemon(&cluster, &reporter, pods).await;
    let min_healthy = bed.stand_in.min_healthy();
    let finished = match result {
        Ok(DrainResult::Drained(_)) => true,
        Ok(other) => {
            eprintln!("drydock drain did not finish: {other:?}");
            false
        }
        Err(e) => {
            eprintln!("drydock drain failed: {e}");
            false
        }
    };
    settle_audit().await;
    let audit = audit_since(&bed.cp, from, &DRYDOCK_USERS);
    tear_down(&bed.admin, &bed.stand_in).await;
    Run {
        wall,
        audit,
        min_healthy,
        finished,
    }
}

fn kubectl(cp: &ControlPlane, home: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(cp.bin.join("kubectl"))
        .arg("--kubeconfig")
        .arg(&cp.admin)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .args(args)
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running kubectl")
}

async fn kubectl_drain(bed: &Bed, pods: usize, pdb: bool) -> Run {
    set_up(&bed.admin, &bed.stand_in, pods, pdb).await;
    let home = bed.kubectl_home.path();
    // Warm the discovery cache, as on any admin's machine (not counted).
    tokio::task::block_in_place(|| kubectl(&bed.cp, home, &["get", "nodes"]));
    settle_audit().await;
    let from = audit_len(&bed.cp);
    bed.stand_in.track();
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| {
        kubectl(
            &bed.cp,
            home,
            &[
                "drain",
                NODE,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--timeout=600s",
            ],
        )
    });
    let wall = started.elapsed();
    let min_healthy = bed.stand_in.min_healthy();
    if !out.status.success() {
        eprintln!(
            "kubectl drain failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    settle_audit().await;
    let audit = audit_since(&bed.cp, from, &[KUBECTL_USER]);
    tear_down(&bed.admin, &bed.stand_in).await;
    Run {
        wall,
        audit,
        min_healthy,
        finished: out.status.success(),
    }
}

// --- numbers ----------------------------------------------------------------------

/// "verb resource[/subresource]" of an audit entry; non-resource requests
/// by path.
fn endpoint(e: &Value) -> String {
    let verb = e["verb"].as_str().unwrap_or("?");
    let o = &e["objectRef"];
    match o["resource"].as_str() {
        Some(r) => match o["subresource"].as_str() {
            Some(s) => format!("{verb} {r}/{s}"),
            None => format!("{verb} {r}"),
        },
        None => format!(
            "{verb} {}",
            e["requestURI"]
                .as_str()
                .unwrap_or("?")
                .split('?')
                .next()
                .unwrap_or("?")
        ),
    }
}

/// Mean requests per run by endpoint, largest first, with refusals (429)
/// of evictions apart.
fn breakdown(runs: &[Run]) -> String {
    let mut sum: BTreeMap<String, u64> = BTreeMap::new();
    for r in runs {
        for e in &r.audit {
            let mut k = endpoint(e);
            if e["responseStatus"]["code"].as_u64() == Some(429) {
                k.push_str(" (429)");
            }
            *sum.entry(k).or_default() += 1;
        }
    }
    mean_by_endpoint(sum, runs.len())
}

fn summary(runs: &[Run]) -> (f64, f64) {
    (
        median(runs.iter().map(|r| r.wall.as_secs_f64()).collect()),
        median(runs.iter().map(|r| r.audit.len() as f64).collect()),
    )
}

fn min_healthy(runs: &[Run]) -> String {
    runs.iter()
        .map(|r| r.min_healthy.map_or("?".into(), |m| m.to_string()))
        .collect::<Vec<_>>()
        .join("/")
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too, without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "drain bench on a real control plane: `cargo bench --profile dev --bench drain_controlplane`"
        );
        return;
    }
    let Some(bin) = controlplane::binaries() else {
        return;
    };
    let runs: usize = std::env::var("DRYDOCK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let pods: usize = std::env::var("DRYDOCK_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(110);
    let cp = ControlPlane::start_with(
        &bin,
        &Options {
            controllers: "replicaset-controller,disruption-controller,serviceaccount-controller"
                .into(),
            scheduler: false,
            audited_users: vec![KUBECTL_USER.into()],
        },
    );
    let version = String::from_utf8_lossy(
        &std::process::Command::new(bin.join("kubectl"))
            .args(["version", "--client"])
            .output()
            .expect("kubectl version")
            .stdout,
    )
    .lines()
    .next()
    .unwrap_or("")
    .to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let admin = client(&cp.super_admin).await;
        let rbac = serde_json::to_vec(&drydock::testing::cli::rbac::manifests("drydock", "drydock:nodes"))
            .unwrap();
        tokio::task::block_in_place(|| cp.admin_kubectl(&["apply", "-f", "-"], Some(&rbac)));
        let stand_in = StandIn::start(client(&cp.kubeconfig("stand-in", STAND_IN, &["system:masters"])).await).await;
        // The default ServiceAccount (the ReplicaSet's pods need it).
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(admin.clone(), NS);
        wait_for("the default ServiceAccount", Duration::from_secs(60), async || {
            sas.get("default").await.is_ok()
        })
        .await;
        create_node(&admin, "cp-1", 0, true).await;
        let bed = Bed {
            kubelet: cp.node_kubeconfig(NODE),
            identity: cp.kubeconfig("drydock-worker-1", "drydock:node:worker-1", &["drydock:nodes"]),
            kubectl_home: tempfile::tempdir().expect("tempdir"),
            cp,
            admin,
            stand_in,
        };
        println!(
            "drain of one {pods}-pod node (real control plane, kubectl {version}; grace period 1 s, replacement Ready 0.2 s after binding), median of {runs} runs"
        );
        println!(
            "{:<24} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11}",
            "case", "drydock", "requests", "kubectl", "requests", "time ratio", "req. ratio"
        );
        for (label, pdb) in [("no PDB", false), ("PDB maxUnavailable=1", true)] {
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            for _ in 0..runs {
                ours.push(drydock_drain(&bed, pods, pdb).await);
                theirs.push(kubectl_drain(&bed, pods, pdb).await);
            }
            let (ow, orq) = summary(&ours);
            let (tw, trq) = summary(&theirs);
            println!(
                "{:<24} {:>8.1}s {:>9.0} {:>8.1}s {:>9.0} {:>11.2} {:>11.2}",
                label,
                ow,
                orq,
                tw,
                trq,
                ow / tw,
                orq / trq
            );
            let unfinished = |r: &[Run]| r.iter().filter(|r| !r.finished).count();
            println!(
                "  fewest healthy web pods during the drain (per run): drydock {}, kubectl {}; unfinished drains: drydock {}, kubectl {}",
                min_healthy(&ours),
                min_healthy(&theirs),
                unfinished(&ours),
                unfinished(&theirs)
            );
            println!("  drydock per run: {}", breakdown(&ours));
            println!("  kubectl per run: {}", breakdown(&theirs));
        }
        bed.stand_in.stop();
    });
}
