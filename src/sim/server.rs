//! The running simulator: HTTP server lifecycle, the controller timer
//! task, clients and kubeconfigs, and the test-facing knobs that play the
//! part of kubelets, admins and outages.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use k8s_openapi::Resource;
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::SimError;
use super::controllers::reconcile;
use super::kinds::{Kind, str_at, value_at};
use super::kubelet::{NodeHealth, heartbeat, node_object, set_node_health, set_pod_ready};
use super::model::{format_time, new_uid, node_name_of};
use super::routes;
use super::scenario::{NodeSpec, PodSpec, bare_pod, seed_pod};
use super::state::{Fault, Shared, State, lock};
use super::stats::{self, ApiStats};

/// A running simulated cluster. Cheap to clone; the server stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct SimHandle {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
    controller: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        self.controller.abort();
        if let Some(s) = lock(&self.server).take() {
            s.abort();
        }
    }
}

fn router(shared: &Arc<Shared>) -> Router {
    Router::new()
        .fallback(routes::handle)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            stats::middleware,
        ))
        .with_state(shared.clone())
}

async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let mut stop = shared.shutdown.subscribe();
    let app = router(&shared);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}

/// Fires the controllers' timers (deletions, pod starts).
async fn controller_loop(shared: Arc<Shared>) {
    loop {
        let next = {
            let mut st = shared.lock();
            reconcile(&mut st, Instant::now())
        };
        match next {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t) => {}
                    _ = shared.wake.notified() => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

impl SimHandle {
    pub(super) async fn start(state: State, addr: SocketAddr) -> Result<Self, SimError> {
        let shared = Arc::new(Shared::new(state.opts.clone()));
        *shared.lock() = state;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(serve(shared.clone(), listener));
        let controller = tokio::spawn(controller_loop(shared.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                addr,
                server: Mutex::new(Some(server)),
                controller,
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Applies a change to the state, then lets the controllers react.
    fn mutate<T>(&self, f: impl FnOnce(&mut State) -> Result<T, SimError>) -> Result<T, SimError> {
        let mut st = self.shared().lock();
        let out = f(&mut st)?;
        reconcile(&mut st, Instant::now());
        self.shared().wake.notify_one();
        Ok(out)
    }

    // --- connecting -------------------------------------------------------

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A `kube::Config` for the server with kube's defaults. Note that
    /// `default_retry` is on, so kube's client itself retries 429 (also a
    /// PDB-blocked eviction) and 503 with backoff before returning them.
    pub fn config(&self) -> kube::Config {
        let uri = self
            .url()
            .parse::<http::Uri>()
            .unwrap_or_else(|_| http::Uri::from_static("http://127.0.0.1"));
        kube::Config::new(uri)
    }

    /// A client built from [`SimHandle::config`]; needs a tokio runtime.
    pub fn client(&self) -> Result<kube::Client, SimError> {
        Ok(kube::Client::try_from(self.config())?)
    }

    /// A kubeconfig for kubectl or `kube::Config::from_custom_kubeconfig`:
    /// plain http, no credentials, context `drydock-sim`.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: drydock-sim\n  cluster:\n    server: {}\n\
             contexts:\n- name: drydock-sim\n  context:\n    cluster: drydock-sim\n    user: drydock-sim\n    namespace: default\n\
             current-context: drydock-sim\nusers:\n- name: drydock-sim\n  user: {{}}\npreferences: {{}}\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> Result<(), SimError> {
        std::fs::write(path, self.kubeconfig_yaml())?;
        Ok(())
    }

    /// A kubeconfig (JSON) that authenticates as `user` (a bearer token
    /// the simulator maps back to the user and its groups).
    pub(crate) fn kubeconfig_as(&self, user: &super::User) -> String {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "drydock-sim", "cluster": {"server": self.url()}}],
            "users": [{"name": user.name, "user": {"token": user.token()}}],
            "contexts": [{"name": "drydock-sim", "context": {"cluster": "drydock-sim", "user": user.name}}],
            "current-context": "drydock-sim",
        })
        .to_string()
    }

    /// A client acting as `user` (kube's default retry off, as drydock's).
    pub async fn client_as(&self, user: &super::User) -> Result<kube::Client, SimError> {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_as(user))
            .map_err(|e| SimError::Scenario(format!("kubeconfig for {}: {e}", user.name)))?;
        let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| SimError::Scenario(format!("kubeconfig for {}: {e}", user.name)))?;
        config.default_retry = false;
        Ok(kube::Client::try_from(config)?)
    }

    /// Installs what `drydock rbac` prints: its Namespace, its RBAC (for
    /// users other than the admin) and its Lease holder policy.
    pub fn apply_manifests(&self, list: &Value) -> Result<(), SimError> {
        let items = list["items"].as_array().cloned().unwrap_or_default();
        for item in &items {
            if item["kind"] == "Namespace" {
                self.put(item.clone())?;
            }
        }
        let policy_ns = items
            .iter()
            .find(|i| i["kind"] == "ValidatingAdmissionPolicy")
            .and_then(|p| {
                p["spec"]["matchConstraints"]["namespaceSelector"]["matchLabels"]
                    ["kubernetes.io/metadata.name"]
                    .as_str()
                    .map(str::to_string)
            });
        let rbac = super::auth::Rbac::from_manifests(list);
        let mut st = self.shared().lock();
        st.rbac = rbac;
        st.policy_namespace = policy_ns;
        Ok(())
    }

    // --- accounting and faults -------------------------------------------

    pub fn stats(&self) -> ApiStats {
        let mut s = lock(&self.shared().stats).clone();
        s.state_held_micros = self.shared().held_micros.load(Ordering::Relaxed);
        s
    }

    pub fn reset_stats(&self) {
        *lock(&self.shared().stats) = ApiStats::default();
        self.shared().held_micros.store(0, Ordering::Relaxed);
    }

    /// Injects a fault into every request (None clears it).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *lock(&self.shared().fault) = fault;
    }

    /// Injects `flaky.fault` into a seeded share of requests (None clears it).
    pub fn set_flaky(&self, flaky: Option<super::faults::Flaky>) {
        self.shared().faults.set_flaky(flaky);
    }

    /// Ends every open watch now; new requests are served as usual.
    pub fn close_watches(&self) {
        self.shared().faults.close_watches();
    }

    /// Stops serving: open watches end, new connections are refused. The
    /// cluster state is kept and keeps evolving (timers still fire).
    pub async fn stop(&self) {
        self.shared().shutdown.send_replace(true);
        let task = lock(&self.inner.server).take();
        if let Some(mut task) = task
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }

    /// Serves again on the same address after [`SimHandle::stop`].
    pub async fn restart(&self) -> Result<(), SimError> {
        if lock(&self.inner.server).is_some() {
            return Ok(());
        }
        let addr = self.inner.addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        self.shared().shutdown.send_replace(false);
        let task = tokio::spawn(serve(self.inner.shared.clone(), listener));
        *lock(&self.inner.server) = Some(task);
        Ok(())
    }

    // --- reading state without going through HTTP (not counted) ----------

    /// The cluster-wide resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared().lock().store.rv()
    }

    /// A stored object, typed (`ns` None for cluster-scoped kinds).
    pub fn get<K: Resource + DeserializeOwned>(&self, ns: Option<&str>, name: &str) -> Option<K> {
        let kind = Kind::from_api_version_kind(K::API_VERSION, K::KIND)?;
        let st = self.shared().lock();
        let v = st.store.get(kind, ns.unwrap_or(""), name)?.clone();
        serde_json::from_value(v).ok()
    }

    /// Stored objects of a kind, typed, optionally in one namespace.
    pub fn list<K: Resource + DeserializeOwned>(&self, ns: Option<&str>) -> Vec<K> {
        let Some(kind) = Kind::from_api_version_kind(K::API_VERSION, K::KIND) else {
            return vec![];
        };
        let st = self.shared().lock();
        st.store
            .list(kind, ns)
            .into_iter()
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect()
    }

    /// Pods bound to a node.
    pub fn pods_on_node(&self, node: &str) -> Vec<Pod> {
        let st = self.shared().lock();
        st.store
            .list(Kind::Pod, None)
            .into_iter()
            .filter(|p| node_name_of(p) == node)
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect()
    }

    // --- changing state as kubelets, controllers or admins would ---------

    /// Creates or replaces any supported object as given, status included.
    pub fn put(&self, obj: Value) -> Result<Value, SimError> {
        let api_version = str_at(&obj, "apiVersion").unwrap_or("").to_string();
        let kind_name = str_at(&obj, "kind").unwrap_or("").to_string();
        let kind = Kind::from_api_version_kind(&api_version, &kind_name)
            .ok_or_else(|| SimError::UnsupportedKind(format!("{api_version}/{kind_name}")))?;
        self.mutate(|st| {
            let ns = str_at(&obj, "metadata.namespace").unwrap_or("");
            let name = str_at(&obj, "metadata.name").unwrap_or("");
            let mut obj = obj.clone();
            if let Some(cur) = st.store.get(kind, ns, name) {
                for k in ["uid", "creationTimestamp", "generation"] {
                    if value_at(&obj, &format!("metadata.{k}")).is_none()
                        && let Some(v) = cur["metadata"].get(k)
                    {
                        obj["metadata"][k] = v.clone();
                    }
                }
            }
            Ok(st.insert(kind, obj))
        })
    }

    /// Reads a typed object, lets `f` change it, stores it (spec changes
    /// bump `metadata.generation`). Status changes are kept as made.
    pub fn modify<K>(
        &self,
        ns: Option<&str>,
        name: &str,
        f: impl FnOnce(&mut K),
    ) -> Result<K, SimError>
    where
        K: Resource + Serialize + DeserializeOwned,
    {
        let kind = Kind::from_api_version_kind(K::API_VERSION, K::KIND)
            .ok_or_else(|| SimError::UnsupportedKind(format!("{}/{}", K::API_VERSION, K::KIND)))?;
        self.mutate(|st| {
            let cur = st
                .store
                .get(kind, ns.unwrap_or(""), name)
                .cloned()
                .ok_or_else(|| SimError::NotFound(format!("{} {name}", K::KIND)))?;
            let mut typed: K = serde_json::from_value(cur.clone())?;
            f(&mut typed);
            let mut new = serde_json::to_value(&typed)?;
            if kind.info().generation && new.get("spec") != cur.get("spec") {
                let g = value_at(&cur, "metadata.generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                new["metadata"]["generation"] = json!(g + 1);
            }
            let stored = st.write(kind, new);
            Ok(serde_json::from_value(stored)?)
        })
    }

    fn node_mut(&self, name: &str, f: impl FnOnce(&mut Value)) -> Result<(), SimError> {
        self.mutate(|st| {
            let mut node = st
                .store
                .get(Kind::Node, "", name)
                .cloned()
                .ok_or_else(|| SimError::NotFound(format!("node {name}")))?;
            f(&mut node);
            st.write(Kind::Node, node);
            Ok(())
        })
    }

    /// Kubelet reports Ready (true) or NotReady (false). Going NotReady
    /// marks the node's pods unready; coming back makes them Ready again
    /// after the pod start delay.
    pub fn set_node_ready(&self, name: &str, ready: bool) -> Result<(), SimError> {
        let health = if ready {
            NodeHealth::Ready
        } else {
            NodeHealth::NotReady
        };
        self.mutate(|st| Ok(set_node_health(st, name, health)?))
    }

    /// Kubelet stops reporting (powered off, rebooting): conditions go
    /// Unknown and the node gets the unreachable taints.
    pub fn set_node_unreachable(&self, name: &str) -> Result<(), SimError> {
        self.mutate(|st| Ok(set_node_health(st, name, NodeHealth::Unreachable)?))
    }

    /// Sets `lastHeartbeatTime` of every node condition.
    pub fn set_node_heartbeat(&self, name: &str, at: jiff::Timestamp) -> Result<(), SimError> {
        let at = format_time(at);
        self.node_mut(name, |n| heartbeat(n, &at))
    }

    pub fn set_kubelet_version(&self, name: &str, version: &str) -> Result<(), SimError> {
        self.node_mut(name, |n| {
            n["status"]["nodeInfo"]["kubeletVersion"] = json!(version);
            n["status"]["nodeInfo"]["kubeProxyVersion"] = json!(version);
        })
    }

    pub fn set_boot_id(&self, name: &str, boot_id: &str) -> Result<(), SimError> {
        self.node_mut(name, |n| n["status"]["nodeInfo"]["bootID"] = json!(boot_id))
    }

    /// Marks a node (un)schedulable, as `kubectl cordon` would.
    pub fn set_unschedulable(&self, name: &str, unschedulable: bool) -> Result<(), SimError> {
        self.node_mut(name, |n| {
            if unschedulable {
                n["spec"]["unschedulable"] = json!(true);
            } else if let Some(s) = n["spec"].as_object_mut() {
                s.remove("unschedulable");
            }
        })
    }

    /// Registers a new node; DaemonSets start pods on it.
    pub fn add_node(&self, spec: NodeSpec) -> Result<(), SimError> {
        self.mutate(|st| {
            if st.store.get(Kind::Node, "", &spec.name).is_some() {
                return Err(SimError::Scenario(format!("node {} exists", spec.name)));
            }
            let index = st.store.list(Kind::Node, None).len() + 1;
            let version = spec
                .kubelet_version
                .clone()
                .unwrap_or_else(|| st.opts.server_version.clone());
            st.insert(Kind::Node, node_object(&spec, index, &version));
            Ok(())
        })
    }

    /// Deletes the Node object; its pods are garbage-collected.
    pub fn delete_node(&self, name: &str) -> Result<(), SimError> {
        self.mutate(|st| {
            st.store
                .remove(Kind::Node, "", name)
                .map(|_| ())
                .ok_or_else(|| SimError::NotFound(format!("node {name}")))
        })
    }

    /// Unreachable for `downtime`, then Ready with a new bootID (returned).
    pub async fn simulate_reboot(
        &self,
        name: &str,
        downtime: Duration,
    ) -> Result<String, SimError> {
        self.set_node_unreachable(name)?;
        tokio::time::sleep(downtime).await;
        let boot_id = new_uid();
        self.set_boot_id(name, &boot_id)?;
        self.set_node_ready(name, true)?;
        Ok(boot_id)
    }

    /// Adds a bare or mirror pod in the state the spec asks for.
    pub fn add_pod(&self, spec: PodSpec) -> Result<Pod, SimError> {
        self.mutate(|st| {
            let node = st
                .store
                .get(Kind::Node, "", &spec.node)
                .cloned()
                .ok_or_else(|| SimError::NotFound(format!("node {}", spec.node)))?;
            if st.store.get(Kind::Namespace, "", &spec.namespace).is_none() {
                return Err(SimError::NotFound(format!("namespace {}", spec.namespace)));
            }
            if st
                .store
                .get(Kind::Pod, &spec.namespace, &spec.name)
                .is_some()
            {
                return Err(SimError::Scenario(format!("pod {} exists", spec.name)));
            }
            let pod = bare_pod(&spec, &node, st.opts.default_grace_period);
            seed_pod(st, pod, &spec);
            let stored = st
                .store
                .get(Kind::Pod, &spec.namespace, &spec.name)
                .cloned()
                .unwrap_or(Value::Null);
            Ok(serde_json::from_value(stored)?)
        })
    }

    /// Removes a pod at once (like `--force --grace-period=0`).
    pub fn remove_pod(&self, ns: &str, name: &str) -> Result<(), SimError> {
        self.mutate(|st| {
            st.store
                .remove(Kind::Pod, ns, name)
                .map(|_| ())
                .ok_or_else(|| SimError::NotFound(format!("pod {ns}/{name}")))
        })
    }

    fn pod_mut(&self, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> Result<(), SimError> {
        self.mutate(|st| {
            let mut pod = st
                .store
                .get(Kind::Pod, ns, name)
                .cloned()
                .ok_or_else(|| SimError::NotFound(format!("pod {ns}/{name}")))?;
            f(&mut pod);
            let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
            st.starts.remove(&uid);
            st.write(Kind::Pod, pod);
            Ok(())
        })
    }

    /// Sets the pod's Ready and ContainersReady conditions.
    pub fn set_pod_ready(&self, ns: &str, name: &str, ready: bool) -> Result<(), SimError> {
        self.pod_mut(ns, name, |p| set_pod_ready(p, ready))
    }

    /// Sets `status.phase` (Pending, Running, Succeeded, Failed).
    pub fn set_pod_phase(&self, ns: &str, name: &str, phase: &str) -> Result<(), SimError> {
        self.pod_mut(ns, name, |p| {
            p["status"]["phase"] = json!(phase);
            if phase != "Running" {
                set_pod_ready(p, false);
            }
        })
    }

    /// `/version` gitVersion (the control plane's version).
    pub(crate) fn set_server_version(&self, version: &str) {
        self.shared().lock().opts.server_version = version.to_string();
    }

    /// The `gitVersion` `/version` serves.
    pub(crate) fn server_version(&self) -> String {
        self.shared().lock().opts.server_version.clone()
    }
}
