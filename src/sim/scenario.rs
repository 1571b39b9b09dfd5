//! Builder for a simulated cluster: nodes, namespaces, workloads and
//! budgets, seeded Running and Ready before the server starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::SimError;
use super::controllers::{pod_from_template, reconcile};
use super::kinds::{Kind, name_of, str_at, uid_of};
use super::kubelet::{mark_pod_running, node_object, set_pod_ready, start_due_pods};
use super::model::{new_uid, set_condition};
use super::server::SimHandle;
use super::state::{SimOptions, State};

pub(crate) const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// One node. The kubelet version defaults to the scenario's.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub control_plane: bool,
    pub kubelet_version: Option<String>,
    pub boot_id: Option<String>,
    pub ready: bool,
    pub unschedulable: bool,
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    pub fn worker(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            control_plane: false,
            kubelet_version: None,
            boot_id: None,
            ready: true,
            unschedulable: false,
            labels: BTreeMap::new(),
        }
    }

    /// Labelled `node-role.kubernetes.io/control-plane=""` and tainted NoSchedule, as kubeadm does.
    pub fn control_plane(name: impl Into<String>) -> Self {
        Self {
            control_plane: true,
            ..Self::worker(name)
        }
    }

    pub fn kubelet_version(mut self, v: impl Into<String>) -> Self {
        self.kubelet_version = Some(v.into());
        self
    }

    /// Already cordoned (e.g. by an admin).
    pub fn unschedulable(mut self) -> Self {
        self.unschedulable = true;
        self
    }

    pub fn label(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
}

/// A ReplicaSet (as a Deployment would own it) with `replicas` pods.
#[derive(Debug, Clone)]
pub struct ReplicaSetSpec {
    pub namespace: String,
    pub name: String,
    pub replicas: usize,
    /// Pod labels, also the selector; defaults to `app=<name>`.
    pub labels: BTreeMap<String, String>,
    /// Where the first pods run (one entry per pod); the rest are scheduled.
    pub nodes: Vec<String>,
    pub empty_dir: bool,
    pub grace_period: Option<i64>,
}

impl ReplicaSetSpec {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, replicas: usize) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            replicas,
            labels: BTreeMap::new(),
            nodes: vec![],
            empty_dir: false,
            grace_period: None,
        }
    }

    pub fn label(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn on_nodes<S: Into<String>>(mut self, nodes: impl IntoIterator<Item = S>) -> Self {
        self.nodes = nodes.into_iter().map(Into::into).collect();
        self
    }

    /// Pods mount an emptyDir volume (drain needs --delete-emptydir-data).
    pub fn empty_dir(mut self) -> Self {
        self.empty_dir = true;
        self
    }
}

/// A DaemonSet with one pod per eligible node.
#[derive(Debug, Clone)]
pub struct DaemonSetSpec {
    pub namespace: String,
    pub name: String,
    /// Defaults to `k8s-app=<name>`.
    pub labels: BTreeMap<String, String>,
    /// Tolerate every taint (like calico-node / kube-proxy). Default true.
    pub tolerate_all: bool,
}

impl DaemonSetSpec {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            tolerate_all: true,
        }
    }
}

/// A pod not managed by a ReplicaSet or DaemonSet: a bare pod, or a
/// static pod's mirror (`kubernetes.io/config.mirror`, owned by its Node).
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub mirror: bool,
    pub empty_dir: bool,
    pub ready: bool,
    pub phase: String,
    pub grace_period: Option<i64>,
}

impl PodSpec {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        node: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            node: node.into(),
            labels: BTreeMap::new(),
            mirror: false,
            empty_dir: false,
            ready: true,
            phase: "Running".to_string(),
            grace_period: None,
        }
    }

    pub fn label(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn mirror(mut self) -> Self {
        self.mirror = true;
        self
    }

    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    pub fn phase(mut self, phase: impl Into<String>) -> Self {
        self.phase = phase.into();
        self
    }

    pub fn grace_period(mut self, secs: i64) -> Self {
        self.grace_period = Some(secs);
        self
    }
}

/// A policy/v1 PodDisruptionBudget selecting pods by labels.
#[derive(Debug, Clone)]
pub struct PdbSpec {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    /// `minAvailable` / `maxUnavailable`: a number or "N%".
    pub min_available: Option<Value>,
    pub max_unavailable: Option<Value>,
}

impl PdbSpec {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            selector: BTreeMap::new(),
            min_available: None,
            max_unavailable: None,
        }
    }

    pub fn selector(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.selector.insert(k.into(), v.into());
        self
    }

    pub fn min_available(mut self, n: i32) -> Self {
        self.min_available = Some(json!(n));
        self
    }

    pub fn max_unavailable(mut self, n: i32) -> Self {
        self.max_unavailable = Some(json!(n));
        self
    }

    pub fn max_unavailable_percent(mut self, p: u32) -> Self {
        self.max_unavailable = Some(json!(format!("{p}%")));
        self
    }
}

/// A cluster to simulate. Build it, then [`Scenario::start`].
#[derive(Debug, Clone)]
pub struct Scenario {
    opts: SimOptions,
    kubelet_version: String,
    nodes: Vec<NodeSpec>,
    namespaces: Vec<String>,
    replica_sets: Vec<ReplicaSetSpec>,
    daemon_sets: Vec<DaemonSetSpec>,
    pods: Vec<PodSpec>,
    pdbs: Vec<PdbSpec>,
    objects: Vec<Value>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario {
    /// No nodes; namespaces default, kube-system, kube-public,
    /// kube-node-lease and drydock.
    pub fn new() -> Self {
        Self {
            opts: SimOptions::default(),
            kubelet_version: "v1.34.1".to_string(),
            nodes: vec![],
            namespaces: [
                "default",
                "kube-system",
                "kube-public",
                "kube-node-lease",
                "drydock",
            ]
            .map(String::from)
            .to_vec(),
            replica_sets: vec![],
            daemon_sets: vec![],
            pods: vec![],
            pdbs: vec![],
            objects: vec![],
        }
    }

    /// `control_planes` nodes `cp-1..` (each with the kubeadm static pods
    /// as mirror pods in kube-system) and `workers` nodes `worker-1..`.
    pub fn cluster(control_planes: usize, workers: usize) -> Self {
        let mut s = Self::new();
        for i in 1..=control_planes {
            let name = format!("cp-{i}");
            s = s.node(NodeSpec::control_plane(&name));
            for component in [
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
            ] {
                s = s.pod(
                    PodSpec::new("kube-system", format!("{component}-{name}"), &name)
                        .mirror()
                        .label("component", component)
                        .label("tier", "control-plane"),
                );
            }
        }
        for i in 1..=workers {
            s = s.node(NodeSpec::worker(format!("worker-{i}")));
        }
        s
    }

    /// `nodes` nodes (the first a control plane) with kube-proxy and
    /// calico-node DaemonSets, and a `default/web` ReplicaSet of
    /// `pods_per_node` pods per worker under a `maxUnavailable: 1` PDB.
    pub fn standard(nodes: usize, pods_per_node: usize) -> Self {
        let workers = nodes.saturating_sub(1);
        let mut s = Self::cluster(nodes.min(1), workers)
            .daemon_set(DaemonSetSpec::new("kube-system", "kube-proxy"))
            .daemon_set(DaemonSetSpec::new("kube-system", "calico-node"));
        let replicas = pods_per_node * workers.max(1);
        if replicas > 0 {
            s = s
                .replica_set(
                    ReplicaSetSpec::new("default", "web-5d9c7b8f4", replicas).label("app", "web"),
                )
                .pdb(
                    PdbSpec::new("default", "web")
                        .selector("app", "web")
                        .max_unavailable(1),
                );
        }
        s
    }

    pub fn node(mut self, n: NodeSpec) -> Self {
        self.nodes.push(n);
        self
    }

    pub fn namespace(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if !self.namespaces.contains(&name) {
            self.namespaces.push(name);
        }
        self
    }

    pub fn replica_set(mut self, rs: ReplicaSetSpec) -> Self {
        self.replica_sets.push(rs);
        self
    }

    pub fn daemon_set(mut self, ds: DaemonSetSpec) -> Self {
        self.daemon_sets.push(ds);
        self
    }

    pub fn pod(mut self, p: PodSpec) -> Self {
        self.pods.push(p);
        self
    }

    pub fn pdb(mut self, p: PdbSpec) -> Self {
        self.pdbs.push(p);
        self
    }

    /// `/version` gitVersion (default v1.34.1).
    pub fn server_version(mut self, v: impl Into<String>) -> Self {
        self.opts.server_version = v.into();
        self
    }

    /// Pending -> Running+Ready delay of new pods (default 200ms).
    pub fn pod_start_delay(mut self, d: Duration) -> Self {
        self.opts.pod_start_delay = d;
        self
    }

    /// Changes retained for watches (default 1000).
    pub fn history_limit(mut self, n: usize) -> Self {
        self.opts.history_limit = n;
        self
    }

    /// terminationGracePeriodSeconds of scenario pods (default 1).
    pub fn default_grace_period(mut self, secs: i64) -> Self {
        self.opts.default_grace_period = secs;
        self
    }

    /// Seeds the cluster and serves it on 127.0.0.1 (random port).
    pub async fn start(self) -> Result<SimHandle, SimError> {
        self.start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(self, addr: SocketAddr) -> Result<SimHandle, SimError> {
        let mut state = State::new(self.opts.clone());
        self.seed(&mut state)?;
        SimHandle::start(state, addr).await
    }

    fn seed(&self, st: &mut State) -> Result<(), SimError> {
        for ns in &self.namespaces {
            st.create(
                Kind::Namespace,
                None,
                json!({"metadata": {"name": ns}}),
                false,
            )?;
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if st.store.get(Kind::Node, "", &n.name).is_some() {
                return Err(SimError::Scenario(format!(
                    "node {} declared twice",
                    n.name
                )));
            }
            let version = n
                .kubelet_version
                .as_deref()
                .unwrap_or(&self.kubelet_version);
            st.insert(Kind::Node, node_object(n, i, version));
        }
        let grace = self.opts.default_grace_period;
        for rs in &self.replica_sets {
            self.ensure_namespace(st, &rs.namespace)?;
            let obj = st.insert(Kind::ReplicaSet, replica_set_object(rs, grace));
            for node in rs.nodes.iter().take(rs.replicas) {
                if st.store.get(Kind::Node, "", node).is_none() {
                    return Err(SimError::Scenario(format!(
                        "replica set {} placed on unknown node {node}",
                        rs.name
                    )));
                }
                let mut pod = pod_from_template("ReplicaSet", &obj, &[]);
                pod["spec"]["nodeName"] = json!(node);
                set_condition(&mut pod, "PodScheduled", "True", "", "", false);
                let pod = st.insert(Kind::Pod, pod);
                st.starts.insert(uid_of(&pod).to_string(), Instant::now());
            }
        }
        for ds in &self.daemon_sets {
            self.ensure_namespace(st, &ds.namespace)?;
            st.insert(Kind::DaemonSet, daemon_set_object(ds, grace));
        }
        for p in &self.pods {
            self.ensure_namespace(st, &p.namespace)?;
            let node = st
                .store
                .get(Kind::Node, "", &p.node)
                .cloned()
                .ok_or_else(|| {
                    SimError::Scenario(format!("pod {} on unknown node {}", p.name, p.node))
                })?;
            let pod = bare_pod(p, &node, grace);
            seed_pod(st, pod, p);
        }
        for p in &self.pdbs {
            self.ensure_namespace(st, &p.namespace)?;
            st.insert(Kind::PodDisruptionBudget, pdb_object(p));
        }
        for o in &self.objects {
            let api_version = str_at(o, "apiVersion").unwrap_or("");
            let kind_name = str_at(o, "kind").unwrap_or("");
            let kind = Kind::from_api_version_kind(api_version, kind_name)
                .ok_or_else(|| SimError::UnsupportedKind(format!("{api_version}/{kind_name}")))?;
            st.insert(kind, o.clone());
        }
        if self.nodes.iter().any(|n| n.control_plane) {
            super::kubeadm::seed(st, &self.opts.server_version);
        }
        // Let the controllers create the rest, then report every pod started.
        reconcile(st, Instant::now());
        start_due_pods(st, Instant::now() + Duration::from_secs(86_400));
        reconcile(st, Instant::now());
        Ok(())
    }

    fn ensure_namespace(&self, st: &mut State, ns: &str) -> Result<(), SimError> {
        if st.store.get(Kind::Namespace, "", ns).is_none() {
            st.create(
                Kind::Namespace,
                None,
                json!({"metadata": {"name": ns}}),
                false,
            )?;
        }
        Ok(())
    }
}

fn labels_or(labels: &BTreeMap<String, String>, key: &str, name: &str) -> Value {
    if labels.is_empty() {
        json!({ key: name })
    } else {
        json!(labels)
    }
}

fn container_spec(empty_dir: bool, grace: i64) -> Value {
    let mut spec = json!({
        "containers": [{
            "name": "app",
            "image": PAUSE_IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "resources": {},
        }],
        "terminationGracePeriodSeconds": grace,
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "schedulerName": "default-scheduler",
    });
    if empty_dir {
        spec["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
        spec["containers"][0]["volumeMounts"] =
            json!([{"name": "scratch", "mountPath": "/scratch"}]);
    }
    spec
}

fn replica_set_object(rs: &ReplicaSetSpec, default_grace: i64) -> Value {
    let labels = labels_or(&rs.labels, "app", &rs.name);
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": rs.name, "namespace": rs.namespace, "labels": labels},
        "spec": {
            "replicas": rs.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": container_spec(rs.empty_dir, rs.grace_period.unwrap_or(default_grace)),
            },
        },
    })
}

fn daemon_set_object(ds: &DaemonSetSpec, default_grace: i64) -> Value {
    let labels = labels_or(&ds.labels, "k8s-app", &ds.name);
    let mut spec = container_spec(false, default_grace);
    if ds.tolerate_all {
        spec["tolerations"] = json!([{"operator": "Exists"}]);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": ds.name, "namespace": ds.namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
        },
    })
}

fn pdb_object(p: &PdbSpec) -> Value {
    let mut spec = json!({"selector": {"matchLabels": p.selector}});
    if let Some(m) = &p.min_available {
        spec["minAvailable"] = m.clone();
    }
    if let Some(m) = &p.max_unavailable {
        spec["maxUnavailable"] = m.clone();
    }
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": p.name, "namespace": p.namespace},
        "spec": spec,
    })
}

pub(super) fn bare_pod(p: &PodSpec, node: &Value, default_grace: i64) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
        "spec": container_spec(p.empty_dir, p.grace_period.unwrap_or(default_grace)),
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    });
    pod["spec"]["nodeName"] = json!(p.node);
    if p.mirror {
        let hash = new_uid().replace('-', "");
        pod["metadata"]["annotations"] = json!({
            "kubernetes.io/config.hash": hash,
            "kubernetes.io/config.mirror": hash,
            "kubernetes.io/config.seen": super::model::now_time(),
            "kubernetes.io/config.source": "file",
        });
        pod["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "v1", "kind": "Node", "name": name_of(node),
            "uid": uid_of(node), "controller": true,
        }]);
        pod["spec"]["hostNetwork"] = json!(true);
        pod["spec"]["priorityClassName"] = json!("system-node-critical");
        pod["spec"]["tolerations"] = json!([{"operator": "Exists", "effect": "NoExecute"}]);
    }
    set_condition(&mut pod, "PodScheduled", "True", "", "", false);
    pod
}

/// Stores a scenario pod in the state it asks for.
pub(super) fn seed_pod(st: &mut State, mut pod: Value, p: &PodSpec) {
    match p.phase.as_str() {
        "Running" => {
            mark_pod_running(st, &mut pod);
            if !p.ready {
                set_pod_ready(&mut pod, false);
            }
        }
        phase => {
            pod["status"]["phase"] = json!(phase);
        }
    }
    st.insert(Kind::Pod, pod);
}
