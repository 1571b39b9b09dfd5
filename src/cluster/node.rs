//! This machine's Node object: read it, cordon/uncordon it, and keep the
//! drydock annotations on it.
//!
//! Cordoning reports whether the node was already unschedulable, so the
//! caller can persist it and never uncordon a node an admin cordoned.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{debug, info};

/// Where drydock shows its state to `kubectl get node -o yaml`.
pub const STATE_ANNOTATION: &str = "drydock.dev/state";
/// The state's words (annotation).
pub const REASON_ANNOTATION: &str = "drydock.dev/state-reason";
/// Everything `drydock cluster status` shows about a node, as JSON
/// ([`NodeReport`]), published by the node's own daemon.
pub(crate) const REPORT_ANNOTATION: &str = "drydock.dev/report";
/// Labels, so `kubectl get nodes -L drydock.dev/state,drydock.dev/reboot-needed`
/// shows the fleet: the phase, and `true`/`false`.
const STATE_LABEL: &str = "drydock.dev/state";
const REBOOT_NEEDED_LABEL: &str = "drydock.dev/reboot-needed";

/// What a node's drydock publishes about itself on its own Node object (the
/// kubelet's credential may patch exactly that Node), so any node can show
/// the whole fleet with one list of Nodes. Field names are camelCase like
/// the rest of a Node's JSON; unknown fields are ignored so an older
/// `cluster status` reads a newer daemon's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// The phase (the `drydock.dev/state` label).
    pub state: String,
    /// Its words ("draining: 3 pods left").
    pub detail: String,
    /// The step a failure or an upgrade is at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// When this phase began.
    #[serde(default)]
    pub since: Option<Timestamp>,
    #[serde(default)]
    pub reboot_needed_since: Option<Timestamp>,
    /// The last reboot drydock started here.
    #[serde(default)]
    pub last_reboot: Option<Timestamp>,
    /// The gates that blocked the last evaluation (empty: none blocked).
    #[serde(default)]
    pub blocked_by: Vec<ReportedGate>,
    /// The Lease slot this node holds.
    #[serde(default)]
    pub slot: Option<String>,
    /// Whether this node's maintenance window is open now (true when it
    /// has none), and when it opens next otherwise.
    #[serde(default)]
    pub window_open: bool,
    #[serde(default)]
    pub next_window: Option<Timestamp>,
    /// A Kubernetes upgrade in flight on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeReport>,
    /// When the daemon last published (it republishes periodically even when
    /// nothing changed: a stale time means drydock is not running there).
    pub reported_at: Timestamp,
    /// drydock's version on the node.
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedGate {
    pub gate: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeReport {
    pub from: String,
    pub to: String,
    pub step: String,
    #[serde(default)]
    pub since: Option<Timestamp>,
}

impl NodeReport {
    pub(crate) fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("plain strings and timestamps serialize")
    }

    /// `None` when absent; `Some(Err)` with the parse error when unreadable.
    pub fn from_node(node: &Node) -> Option<Result<NodeReport, String>> {
        let raw = node.metadata.annotations.as_ref()?.get(REPORT_ANNOTATION)?;
        Some(serde_json::from_str(raw).map_err(|e| e.to_string()))
    }

    /// The merge patch that publishes this report (labels and annotations
    /// only; nothing else on the Node is touched).
    pub fn patch(&self) -> serde_json::Value {
        let reboot_needed = self.reboot_needed_since.is_some();
        json!({ "metadata": {
            "labels": {
                STATE_LABEL: self.state,
                REBOOT_NEEDED_LABEL: if reboot_needed { "true" } else { "false" },
            },
            "annotations": {
                STATE_ANNOTATION: self.state,
                REASON_ANNOTATION: self.detail,
                REPORT_ANNOTATION: self.to_annotation(),
            },
        } })
    }
}

/// `status.nodeInfo.kubeletVersion`.
pub(crate) fn kubelet_version(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .node_info
        .as_ref()
        .map(|i| i.kubelet_version.as_str())
        .filter(|v| !v.is_empty())
}

/// How often a conflicting cordon (someone else changed the Node between our
/// read and our write) is retried before giving up.
const CONFLICT_RETRIES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {node} does not exist")]
    NotFound { node: String },
    #[error("reading node {node}: {source}")]
    Get {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("{action} node {node}: {source}")]
    Patch {
        node: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{action} node {node}: it kept changing under us ({CONFLICT_RETRIES} conflicts)")]
    Conflict { node: String, action: &'static str },
}

/// What `cordon` found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cordon {
    /// The node was unschedulable before we touched it (an admin, or an
    /// earlier run of ours, cordoned it). The caller persists this.
    pub was_unschedulable: bool,
}

/// A handle on one Node by name.
#[derive(Clone)]
pub struct NodeClient {
    api: Api<Node>,
    name: String,
}

impl NodeClient {
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        NodeClient {
            api: Api::all(client),
            name: name.into(),
        }
    }

    /// The Node, or `None` when it does not exist.
    pub async fn get_opt(&self) -> Result<Option<Node>, NodeError> {
        self.api
            .get_opt(&self.name)
            .await
            .map_err(|source| NodeError::Get {
                node: self.name.clone(),
                source,
            })
    }

    /// The Node; a missing Node is an error.
    pub async fn get(&self) -> Result<Node, NodeError> {
        self.get_opt().await?.ok_or_else(|| NodeError::NotFound {
            node: self.name.clone(),
        })
    }

    /// Marks the node unschedulable and says whether it already was. The
    /// write carries the resourceVersion that was read, so the answer is
    /// exact even if someone cordons concurrently.
    pub async fn cordon(&self) -> Result<Cordon, NodeError> {
        for _ in 0..CONFLICT_RETRIES {
            let node = self.get().await?;
            if is_unschedulable(&node) {
                info!(node = %self.name, "node was already unschedulable; leaving it so");
                return Ok(Cordon {
                    was_unschedulable: true,
                });
            }
            let patch = json!({
                "metadata": { "resourceVersion": node.resource_version() },
                "spec": { "unschedulable": true },
            });
            match self
                .api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    info!(node = %self.name, "node {} cordoned", self.name);
                    return Ok(Cordon {
                        was_unschedulable: false,
                    });
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    debug!(node = %self.name, "node changed while cordoning; retrying");
                }
                Err(source) => {
                    return Err(NodeError::Patch {
                        node: self.name.clone(),
                        action: "cordoning",
                        source,
                    });
                }
            }
        }
        Err(NodeError::Conflict {
            node: self.name.clone(),
            action: "cordoning",
        })
    }

    /// Makes the node schedulable. Only call this when `cordon` reported
    /// `was_unschedulable: false` (the caller's persisted record).
    pub async fn uncordon(&self) -> Result<(), NodeError> {
        let patch = json!({ "spec": { "unschedulable": null } });
        self.patch(&patch, "uncordoning").await?;
        info!(node = %self.name, "node {} uncordoned", self.name);
        Ok(())
    }

    /// Sets one annotation (e.g. [`STATE_ANNOTATION`]).
    pub async fn set_annotation(&self, key: &str, value: &str) -> Result<(), NodeError> {
        let patch = json!({ "metadata": { "annotations": { key: value } } });
        self.patch(&patch, "annotating").await
    }

    /// Removes one annotation; absent is fine.
    pub async fn clear_annotation(&self, key: &str) -> Result<(), NodeError> {
        let patch = json!({ "metadata": { "annotations": { key: null } } });
        self.patch(&patch, "removing an annotation from").await
    }

    async fn patch(
        &self,
        patch: &serde_json::Value,
        action: &'static str,
    ) -> Result<(), NodeError> {
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(NodeError::NotFound {
                node: self.name.clone(),
            }),
            Err(source) => Err(NodeError::Patch {
                node: self.name.clone(),
                action,
                source,
            }),
        }
    }
}

/// `spec.unschedulable` as Kubernetes reads it (absent = schedulable).
pub(crate) fn is_unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// The node's `Ready` condition, if the kubelet has reported one.
pub(crate) fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Ready=True.
pub(crate) fn is_ready(node: &Node) -> bool {
    ready_condition(node).is_some_and(|c| c.status == "True")
}

/// The boot ID the kubelet reports (`status.nodeInfo.bootID`).
pub fn boot_id(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .node_info
        .as_ref()
        .map(|i| i.boot_id.as_str())
        .filter(|b| !b.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).expect("valid node")
    }

    #[test]
    fn unschedulable_defaults_to_false() {
        assert!(!is_unschedulable(&node(json!({"metadata": {"name": "a"}}))));
        assert!(is_unschedulable(&node(
            json!({"metadata": {"name": "a"}, "spec": {"unschedulable": true}})
        )));
    }

    #[test]
    fn readiness_and_boot_id() {
        let n = node(json!({
            "metadata": {"name": "a"},
            "status": {
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "True"}
                ],
                "nodeInfo": {
                    "bootID": "b1", "architecture": "", "containerRuntimeVersion": "",
                    "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                    "machineID": "", "operatingSystem": "", "osImage": "", "systemUUID": ""
                }
            }
        }));
        assert!(is_ready(&n));
        assert_eq!(boot_id(&n), Some("b1"));
        let not_ready = node(json!({
            "metadata": {"name": "a"},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}
        }));
        assert!(!is_ready(&not_ready));
        assert_eq!(boot_id(&not_ready), None);
        assert!(!is_ready(&node(json!({"metadata": {"name": "a"}}))));
    }

    fn report() -> NodeReport {
        NodeReport {
            state: "draining".into(),
            detail: "draining: 2 pods left".into(),
            step: None,
            since: Some("2026-01-01T10:00:00Z".parse().unwrap()),
            reboot_needed_since: Some("2026-01-01T09:00:00Z".parse().unwrap()),
            last_reboot: None,
            blocked_by: vec![],
            slot: Some("drydock-default-0".into()),
            window_open: true,
            next_window: None,
            upgrade: None,
            reported_at: "2026-01-01T10:05:00Z".parse().unwrap(),
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn report_round_trips_through_the_patch() {
        let r = report();
        let patch = r.patch();
        assert_eq!(patch["metadata"]["labels"][STATE_LABEL], "draining");
        assert_eq!(patch["metadata"]["labels"][REBOOT_NEEDED_LABEL], "true");
        assert_eq!(
            patch["metadata"]["annotations"][REASON_ANNOTATION],
            "draining: 2 pods left"
        );
        let n = node(json!({"metadata": {"name": "a", "annotations": {
            REPORT_ANNOTATION: patch["metadata"]["annotations"][REPORT_ANNOTATION]
        }}}));
        assert_eq!(NodeReport::from_node(&n), Some(Ok(r)));
        assert_eq!(
            NodeReport::from_node(&node(json!({"metadata": {"name": "a"}}))),
            None
        );
        let bad = node(json!({"metadata": {"name": "a", "annotations": {REPORT_ANNOTATION: "{"}}}));
        assert!(matches!(NodeReport::from_node(&bad), Some(Err(_))));
    }

    #[test]
    fn a_newer_report_with_more_fields_still_reads() {
        let mut v = serde_json::to_value(report()).unwrap();
        v["somethingNew"] = json!(1);
        let r: NodeReport = serde_json::from_value(v).unwrap();
        assert_eq!(r, report());
    }
}
