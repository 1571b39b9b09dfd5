//! Kubernetes API simulator: an in-process HTTP server on 127.0.0.1 that
//! speaks the real Kubernetes REST API (JSON) for the objects drydock uses,
//! so production code runs against it through the same `kube` client, and
//! real `kubectl` works against it too.
//!
//! ```no_run
//! # async fn demo() -> Result<(), drydock::testing::sim::SimError> {
//! use drydock::testing::sim::{Scenario, ReplicaSetSpec, PdbSpec};
//! let sim = Scenario::cluster(1, 3)
//!     .replica_set(ReplicaSetSpec::new("default", "web", 2).on_nodes(["worker-1", "worker-2"]))
//!     .pdb(PdbSpec::new("default", "web").selector("app", "web").min_available(2))
//!     .start()
//!     .await?;
//! let client = sim.client()?;          // kube::Client
//! sim.write_kubeconfig("/tmp/kc")?;    // for kubectl
//! sim.set_node_ready("worker-1", false)?;
//! println!("{}", sim.stats());         // requests and bytes per (verb, resource)
//! # Ok(()) }
//! ```
//!
//! # What is simulated
//!
//! - Resources: core/v1 Namespaces, Nodes, Pods, Events; apps/v1
//!   ReplicaSets and DaemonSets; policy/v1 PodDisruptionBudgets and the
//!   `pods/eviction` subresource; coordination.k8s.io/v1 Leases;
//!   events.k8s.io/v1 Events; `/status` subresources.
//! - Verbs: get, list (label selectors `= == != in notin exists !key > <`,
//!   field selectors `= == !=` on the fields the apiserver supports per
//!   resource, `limit`/`continue` paging), watch, create (incl.
//!   `generateName`), update (PUT; 409 on a stale resourceVersion; leases
//!   require one), patch (JSON, merge, strategic merge, server-side apply
//!   approximated; see `patch.rs`), delete (preconditions, grace periods).
//!   `dryRun=All` is honoured.
//! - Semantics: one cluster-wide resourceVersion counter, uid,
//!   creationTimestamp, generation on spec changes, status reset on create
//!   and ignored on main-resource writes, no-op writes not bumping the
//!   resourceVersion, DNS name validation (422), wrong field types (400),
//!   `Status` error bodies like the apiserver's (404, 409 AlreadyExists /
//!   Conflict, 422, 429, 400, 405, 415, 410).
//! - Watches: ndjson events in order from a bounded history, 410 Expired
//!   (as an ERROR event) for a compacted resourceVersion, selector
//!   enter/leave as ADDED/DELETED, `sendInitialEvents`, `timeoutSeconds`.
//! - Eviction exactly as `EvictionREST` decides it (PDB minAvailable /
//!   maxUnavailable, int or percent, from live healthy pods), 429 with the
//!   `DisruptionBudget` cause.
//! - Controllers: graceful deletion, ReplicaSet replacement on another
//!   schedulable node (Running+Ready after `pod_start_delay`), one
//!   DaemonSet pod per node, a simple scheduler (Ready, not cordoned,
//!   taints), pod GC on node deletion, RS/DS/PDB status.
//! - Kubelets: node conditions and heartbeats, NotReady / unreachable
//!   taints, bootID and kubeletVersion, pods going unready with their node.
//! - Discovery (legacy, non-aggregated), `/version`, server-side Table
//!   printing for kubectl, and an `/openapi/v3` that tells kubectl the
//!   server validates fields itself (so `create -f` works without
//!   `--validate=false`; there are no schemas, `/openapi/v2` is 404).
//! - Users (bearer tokens, see `auth`; none: the admin), the Node
//!   authorizer, RBAC from the manifests `drydock rbac` prints,
//!   NodeRestriction for Leases, Nodes and pods, and the Lease holder
//!   policy; core/v1 and events.k8s.io/v1 Events are one store.
//! - Request accounting ([`SimHandle::stats`]) and faults
//!   ([`SimHandle::set_fault`], [`SimHandle::set_flaky`],
//!   [`SimHandle::close_watches`], [`SimHandle::stop`] / [`SimHandle::restart`]).
//!
//! # What is not
//!
//! TLS, RBAC objects served over HTTP, `auth can-i`, CEL (the holder
//! policy is written in Rust), kubelet node Leases in kube-node-lease, periodic
//! heartbeats (set them with [`SimHandle::set_node_heartbeat`]),
//! admission, protobuf, Deployments and other workload kinds, CRDs,
//! managedFields and apply conflicts, deletecollection, consistent
//! snapshot reads for paged lists or `resourceVersion` on GET, bookmarks
//! other than the initial-events one, the watch cache's "too large
//! resourceVersion" wait, `disruptedPods` in PDB status (the live
//! computation has the same effect), pod spec immutability rules,
//! and namespace finalization (deleting a namespace removes its content at once).

mod auth;
mod controllers;
mod discovery;
mod eviction;
mod faults;
mod kinds;
pub(crate) mod kubeadm;
mod kubelet;
mod model;
mod objects;
mod patch;
mod prometheus;
mod routes;
mod scenario;
mod selectors;
mod server;
mod state;
mod stats;
mod status;
mod store;
mod table;
mod watch;

pub use auth::User;
pub use faults::Flaky;
pub use kubelet::node_object;
pub use prometheus::PromMode;
pub use prometheus::SimPrometheus;
pub use scenario::DaemonSetSpec;
pub use scenario::NodeSpec;
pub use scenario::PdbSpec;
pub use scenario::PodSpec;
pub use scenario::ReplicaSetSpec;
pub use scenario::Scenario;
pub use server::SimHandle;
pub use state::Fault;
pub use stats::ApiStats;
pub(crate) use status::ApiError;

/// Errors of the simulator's Rust API (HTTP clients get `Status` bodies).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("the simulator does not serve {0}")]
    UnsupportedKind(String),
    #[error("invalid scenario: {0}")]
    Scenario(String),
    #[error("building the kube client: {0}")]
    Client(#[from] kube::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("object does not fit its type: {0}")]
    Json(#[from] serde_json::Error),
}
