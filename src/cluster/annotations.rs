//! Cluster-wide control through annotations on the drydock Namespace: the
//! names, how their values are read, and the few writers. Operators can use
//! `kubectl annotate namespace drydock drydock.dev/paused="reason"` too.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// Set (to a reason) to pause every drydock in the cluster.
pub const PAUSED: &str = "drydock.dev/paused";
/// Who paused (`drydock cluster pause` writes `<user> on <host>`).
pub(crate) const PAUSED_BY: &str = "drydock.dev/paused-by";
/// Set by a node that failed its post-reboot verification: the fleet stops
/// until an operator removes it.
pub const HALTED: &str = "drydock.dev/halted";
/// Who set [`HALTED`], as JSON ([`HaltedBy`]).
pub(crate) const HALTED_BY: &str = "drydock.dev/halted-by";
/// `<RFC 3339 time> <node>` of the latest finished drydock reboot; the soak
/// gate waits this long after it.
pub const LAST_REBOOT_FINISHED: &str = "drydock.dev/last-reboot-finished";
/// Target Kubernetes version for the upgrade rollout.
pub const KUBERNETES_VERSION: &str = "drydock.dev/kubernetes-version";
/// A cluster-wide gate one node found blocking, as JSON ([`SharedBlock`]):
/// the other waiting nodes wait until `until` instead of listing every Node
/// themselves. It can only delay a node, never let one through.
pub const CLUSTER_BLOCKED: &str = "drydock.dev/cluster-blocked";

#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    #[error("reading Namespace {namespace}: {source}")]
    Get {
        namespace: String,
        source: kube::Error,
    },
    #[error("setting annotation {key} on Namespace {namespace}: {source}")]
    Patch {
        namespace: String,
        key: &'static str,
        source: kube::Error,
    },
    #[error(
        "Namespace {namespace} does not exist; create it with the manifests `drydock rbac` prints"
    )]
    Missing { namespace: String },
    #[error(
        "setting annotation {key} on Namespace {namespace}: still conflicting after {attempts} attempts"
    )]
    Conflict {
        namespace: String,
        key: &'static str,
        attempts: u32,
    },
}

/// A finished drydock reboot, as recorded cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedReboot {
    pub at: Timestamp,
    pub node: String,
}

impl FinishedReboot {
    pub fn to_annotation(&self) -> String {
        format!("{} {}", self.at, self.node)
    }

    pub fn parse(value: &str) -> Option<FinishedReboot> {
        let (at, node) = value.trim().split_once(' ')?;
        let node = node.trim();
        // A node name: a DNS subdomain, nothing a terminal would act on.
        let valid = !node.is_empty()
            && node.len() <= 253
            && node
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return None;
        }
        Some(FinishedReboot {
            at: at.parse().ok()?,
            node: node.to_string(),
        })
    }
}

/// One node's finding that a cluster-wide gate blocks, shared through the
/// drydock Namespace so that one node per re-check pays for the Node list,
/// DaemonSet pods and alert query instead of every waiting node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedBlock {
    /// The gate's name (`nodes-ready`, `daemonsets`, `soak`, `alerts`).
    pub gate: String,
    pub reason: String,
    /// The node that evaluated it.
    pub by: String,
    pub at: Timestamp,
    /// Until when the others take it as given.
    pub until: Timestamp,
    /// Fingerprint of the writer's cluster-gate settings: a node configured
    /// differently evaluates for itself.
    pub scope: String,
}

impl SharedBlock {
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("plain strings and timestamps serialize")
    }

    /// `None` for anything unreadable: an unreadable verdict is ignored
    /// (the reader evaluates for itself), never taken as a pass.
    pub fn parse(value: &str) -> Option<SharedBlock> {
        let block: SharedBlock = serde_json::from_str(value).ok()?;
        // Another node wrote it, anyone with Namespace rights can: its text
        // is shown in status lines and logs, so escaped and bounded.
        Some(SharedBlock {
            gate: crate::text::display(&block.gate, 64),
            reason: crate::text::display(&block.reason, 1000),
            by: crate::text::display(&block.by, 253),
            ..block
        })
    }
}

/// What the Namespace annotations say, read once per evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterControl {
    /// Paused cluster-wide, with the reason (empty value: "no reason given").
    pub paused: Option<String>,
    pub halted: Option<String>,
    /// `Err(raw value)` when the annotation is there but unreadable; the
    /// soak gate then blocks rather than guess.
    pub last_reboot_finished: Result<Option<FinishedReboot>, String>,
    /// Another node's recent finding; `None` when absent or unreadable.
    /// Whether it is still in force is the gates' decision.
    pub cluster_blocked: Option<SharedBlock>,
}

impl Default for ClusterControl {
    fn default() -> Self {
        ClusterControl {
            paused: None,
            halted: None,
            last_reboot_finished: Ok(None),
            cluster_blocked: None,
        }
    }
}

impl ClusterControl {
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> ClusterControl {
        let reason = |key: &str| {
            annotations.get(key).map(|v| {
                let v = v.trim();
                if v.is_empty() {
                    "no reason given".to_string()
                } else {
                    // Set with kubectl by anyone with Namespace rights.
                    crate::text::display(v, crate::text::MAX_REASON)
                }
            })
        };
        ClusterControl {
            paused: reason(PAUSED),
            halted: reason(HALTED),
            last_reboot_finished: match annotations.get(LAST_REBOOT_FINISHED) {
                None => Ok(None),
                Some(v) => FinishedReboot::parse(v)
                    .map(Some)
                    .ok_or_else(|| crate::text::display(v, 200)),
            },
            cluster_blocked: annotations
                .get(CLUSTER_BLOCKED)
                .and_then(|v| SharedBlock::parse(v)),
        }
    }
}

fn api(client: &kube::Client) -> Api<Namespace> {
    Api::all(client.clone())
}

/// One merge patch of the Namespace's annotations (`null` removes one);
/// `key` names the write in the error.
async fn patch(
    client: &kube::Client,
    namespace: &str,
    key: &'static str,
    patch: serde_json::Value,
) -> Result<(), AnnotationError> {
    api(client)
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| AnnotationError::Patch {
            namespace: namespace.to_string(),
            key,
            source,
        })?;
    Ok(())
}

/// The Namespace (`None`: it does not exist).
async fn get(client: &kube::Client, namespace: &str) -> Result<Option<Namespace>, AnnotationError> {
    api(client)
        .get_opt(namespace)
        .await
        .map_err(|source| AnnotationError::Get {
            namespace: namespace.to_string(),
            source,
        })
}

/// The Namespace, which must exist.
pub(crate) async fn get_existing(
    client: &kube::Client,
    namespace: &str,
) -> Result<Namespace, AnnotationError> {
    get(client, namespace)
        .await?
        .ok_or_else(|| AnnotationError::Missing {
            namespace: namespace.to_string(),
        })
}

/// Sets (`Some`) or removes (`None`) one annotation on the Namespace.
pub async fn set(
    client: &kube::Client,
    namespace: &str,
    key: &'static str,
    value: Option<&str>,
) -> Result<(), AnnotationError> {
    let body = json!({ "metadata": { "annotations": { key: value } } });
    patch(client, namespace, key, body).await
}

/// `drydock cluster pause --reason`.
pub async fn pause_cluster(
    client: &kube::Client,
    namespace: &str,
    reason: &str,
) -> Result<(), AnnotationError> {
    pause_cluster_by(client, namespace, reason, None).await
}

/// Pauses and records who did it, in one patch (`None` clears an older
/// "by", so it never names the wrong person).
pub async fn pause_cluster_by(
    client: &kube::Client,
    namespace: &str,
    reason: &str,
    by: Option<&str>,
) -> Result<(), AnnotationError> {
    let body = json!({ "metadata": { "annotations": { PAUSED: reason, PAUSED_BY: by } } });
    patch(client, namespace, PAUSED, body).await
}

pub async fn resume_cluster(client: &kube::Client, namespace: &str) -> Result<(), AnnotationError> {
    set(client, namespace, PAUSED_BY, None).await?;
    set(client, namespace, PAUSED, None).await
}

/// Stops the fleet: every node's halted gate blocks with `reason`.
pub async fn halt(
    client: &kube::Client,
    namespace: &str,
    reason: &str,
) -> Result<(), AnnotationError> {
    set(client, namespace, HALTED, Some(reason)).await
}

pub async fn clear_halt(client: &kube::Client, namespace: &str) -> Result<(), AnnotationError> {
    let body = json!({ "metadata": { "annotations": { HALTED: null, HALTED_BY: null } } });
    patch(client, namespace, HALTED, body).await
}

/// Who halted the fleet, as data: the halting node recognises its own
/// halt by this, never by parsing the human text in [`HALTED`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HaltedBy {
    pub node: String,
    pub reason: String,
    pub at: jiff::Timestamp,
}

/// Stops the fleet and records who did it, in one write.
pub async fn halt_by(
    client: &kube::Client,
    namespace: &str,
    by: &HaltedBy,
) -> Result<(), AnnotationError> {
    let text = format!("{}: {}", by.node, by.reason);
    let who = serde_json::to_string(by).unwrap_or_default();
    let body = json!({ "metadata": { "annotations": { HALTED: text, HALTED_BY: who } } });
    patch(client, namespace, HALTED, body).await
}

/// The structured halt, when the halt was set by a drydock node.
pub async fn halted_by(
    client: &kube::Client,
    namespace: &str,
) -> Result<Option<HaltedBy>, AnnotationError> {
    let ns = get(client, namespace).await?;
    let annotations = ns.and_then(|n| n.metadata.annotations).unwrap_or_default();
    // The record counts only for the halt text it was written with: a halt
    // set or rewritten by hand belongs to no node.
    let Some(text) = annotations.get(HALTED) else {
        return Ok(None);
    };
    Ok(annotations
        .get(HALTED_BY)
        .and_then(|v| serde_json::from_str::<HaltedBy>(v).ok())
        .filter(|by| *text == format!("{}: {}", by.node, by.reason)))
}

/// Shares a blocking verdict with the other waiting nodes. A plain merge
/// patch: the latest finding wins, and a failure only means the others
/// evaluate for themselves.
pub(crate) async fn share_block(
    client: &kube::Client,
    namespace: &str,
    block: &SharedBlock,
) -> Result<(), AnnotationError> {
    set(
        client,
        namespace,
        CLUSTER_BLOCKED,
        Some(&block.to_annotation()),
    )
    .await
}

/// Records that `node` finished a reboot at `at`, unless a later one is
/// already recorded (with concurrency > 1 two nodes may finish together).
/// The patch carries the resourceVersion read, so a concurrent writer makes
/// it retry instead of overwriting a newer time.
pub async fn record_reboot_finished(
    client: &kube::Client,
    namespace: &str,
    node: &str,
    at: Timestamp,
) -> Result<(), AnnotationError> {
    const ATTEMPTS: u32 = 5;
    let value = FinishedReboot {
        at,
        node: node.to_string(),
    }
    .to_annotation();
    for _ in 0..ATTEMPTS {
        let ns = get_existing(client, namespace).await?;
        let current = ns
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LAST_REBOOT_FINISHED))
            .and_then(|v| FinishedReboot::parse(v));
        if current.is_some_and(|c| c.at > at) {
            return Ok(());
        }
        let patch = json!({ "metadata": {
            "resourceVersion": ns.metadata.resource_version,
            "annotations": { LAST_REBOOT_FINISHED: value },
        } });
        match api(client)
            .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(source) => {
                return Err(AnnotationError::Patch {
                    namespace: namespace.to_string(),
                    key: LAST_REBOOT_FINISHED,
                    source,
                });
            }
        }
    }
    Err(AnnotationError::Conflict {
        namespace: namespace.to_string(),
        key: LAST_REBOOT_FINISHED,
        attempts: ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_are_read() {
        let c = ClusterControl::from_annotations(&map(&[
            (PAUSED, "  "),
            (HALTED, "node-3 failed verification: kubelet not Ready"),
            (LAST_REBOOT_FINISHED, "2025-03-30T01:02:03Z node-2"),
        ]));
        assert_eq!(c.paused.as_deref(), Some("no reason given"));
        assert_eq!(
            c.halted.as_deref(),
            Some("node-3 failed verification: kubelet not Ready")
        );
        assert_eq!(
            c.last_reboot_finished,
            Ok(Some(FinishedReboot {
                at: "2025-03-30T01:02:03Z".parse().unwrap(),
                node: "node-2".into()
            }))
        );
        let none = ClusterControl::from_annotations(&BTreeMap::new());
        assert_eq!(none.paused, None);
        assert_eq!(none.last_reboot_finished, Ok(None));
    }

    #[test]
    fn unreadable_finished_reboot_is_kept_as_an_error() {
        let c = ClusterControl::from_annotations(&map(&[(LAST_REBOOT_FINISHED, "yesterday")]));
        assert_eq!(c.last_reboot_finished, Err("yesterday".to_string()));
    }

    fn shared() -> SharedBlock {
        SharedBlock {
            gate: "alerts".into(),
            reason: "alert NodeDiskPressure firing".into(),
            by: "worker-3".into(),
            at: "2025-01-01T12:00:00Z".parse().unwrap(),
            until: "2025-01-01T12:03:00Z".parse().unwrap(),
            scope: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn shared_block_round_trips_through_the_annotation() {
        let b = shared();
        let c = ClusterControl::from_annotations(&map(&[(CLUSTER_BLOCKED, &b.to_annotation())]));
        assert_eq!(c.cluster_blocked, Some(b));
    }

    #[test]
    fn unreadable_shared_block_is_ignored() {
        let full = shared().to_annotation();
        for garbage in [
            "",
            "yes",
            "{}",
            &full[..full.len() - 1],
            // A field missing, one with the wrong type, one unknown.
            &full.replace(",\"scope\":\"0123456789abcdef\"", ""),
            &full.replace("\"2025-01-01T12:03:00Z\"", "180"),
            &full.replace("\"by\"", "\"verdict\":\"pass\",\"by\""),
        ] {
            assert_ne!(garbage, full);
            let c = ClusterControl::from_annotations(&map(&[(CLUSTER_BLOCKED, garbage)]));
            assert_eq!(c.cluster_blocked, None, "{garbage}");
        }
    }

    #[test]
    fn finished_reboot_round_trips() {
        let f = FinishedReboot {
            at: "2025-10-26T01:30:00.5Z".parse().unwrap(),
            node: "worker-1".into(),
        };
        assert_eq!(FinishedReboot::parse(&f.to_annotation()), Some(f));
    }
}
