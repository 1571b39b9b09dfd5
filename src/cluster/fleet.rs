//! The whole fleet as the nodes publish it, for `drydock cluster status`:
//! one list of Nodes (each node's [`NodeReport`], readiness, kubelet
//! version), one list of the drydock Leases, one read of the drydock
//! Namespace (pause, halt, target version). No SSH, nothing per node.
//! [`read`] does the three calls; [`assemble`] is pure.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::annotations::{self, ClusterControl, FinishedReboot, SharedBlock};
use super::node::{self, NodeReport, ReportedGate, UpgradeReport};

#[derive(Debug, thiserror::Error)]
pub(crate) enum FleetError {
    #[error("listing Nodes: {0}")]
    Nodes(#[source] kube::Error),
    #[error("listing Leases in namespace {namespace}: {source}")]
    Leases {
        namespace: String,
        source: kube::Error,
    },
    #[error("reading Namespace {namespace}: {source}")]
    Namespace {
        namespace: String,
        source: kube::Error,
    },
}

/// What the API server said, as read.
#[derive(Debug, Clone, Default)]
pub(crate) struct FleetReading {
    pub nodes: Vec<Node>,
    pub leases: Vec<Lease>,
    /// `None`: the drydock Namespace does not exist (no node ever ran).
    pub namespace: Option<Namespace>,
    /// Why the Leases or the Namespace could not be read (a credential
    /// without those rights still shows the nodes).
    pub leases_error: Option<String>,
    pub namespace_error: Option<String>,
}

/// Reads the fleet: three requests whatever its size. Only a failed Node
/// list is an error; the rest is shown as unknown.
pub(crate) async fn read(
    client: &kube::Client,
    namespace: &str,
) -> Result<FleetReading, FleetError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let all = ListParams::default();
    let (n, l, ns) = tokio::join!(
        nodes.list(&all),
        leases.list(&all),
        namespaces.get_opt(namespace),
    );
    let (mut leases_error, mut namespace_error) = (None, None);
    let leases = match l {
        Ok(list) => list.items,
        Err(source) => {
            leases_error = Some(
                FleetError::Leases {
                    namespace: namespace.to_string(),
                    source,
                }
                .to_string(),
            );
            Vec::new()
        }
    };
    let namespace = match ns {
        Ok(ns) => ns,
        Err(source) => {
            namespace_error = Some(
                FleetError::Namespace {
                    namespace: namespace.to_string(),
                    source,
                }
                .to_string(),
            );
            None
        }
    };
    Ok(FleetReading {
        nodes: n.map_err(FleetError::Nodes)?.items,
        leases,
        namespace,
        leases_error,
        namespace_error,
    })
}

/// The fleet, ready to print or to serialize (`--json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct FleetStatus {
    pub at: Timestamp,
    pub namespace: String,
    /// `drydock.dev/halted`: the fleet is stopped.
    pub halted: Option<Control>,
    /// `drydock.dev/paused`: stopped by an operator.
    pub paused: Option<Control>,
    /// `drydock.dev/kubernetes-version`: the upgrade target.
    pub target_version: Option<String>,
    pub last_reboot_finished: Option<FinishedRebootView>,
    /// A cluster-wide gate one node found blocking, shared with the others.
    pub cluster_blocked: Option<SharedBlock>,
    pub slots: Vec<SlotView>,
    pub nodes: Vec<NodeView>,
    /// Nodes per state (`not-reporting` and `no-drydock` included).
    pub counts: BTreeMap<String, usize>,
    /// Why the slots are unknown (then `slots` is empty).
    pub leases_error: Option<String>,
    /// Why halt, pause and target are unknown (then they read `None`).
    pub namespace_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Control {
    pub reason: String,
    /// Who set it, when known.
    pub by: Option<String>,
    /// Since when, when known.
    pub since: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct FinishedRebootView {
    pub node: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct SlotView {
    pub name: String,
    /// `None`: free.
    pub holder: Option<String>,
    /// Held by its current holder since.
    pub since: Option<Timestamp>,
    pub renewed_at: Option<Timestamp>,
    /// The holder stopped renewing (it may be down).
    pub expired: bool,
}

/// Whether drydock runs on a node, judged by its last report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Presence {
    /// Reported within the staleness limit.
    Running,
    /// Reported once, but not lately: stopped, hung, or the node is down.
    Stale,
    /// Never reported (not installed, or never reached the API).
    None,
    /// The report is there but unreadable.
    Unreadable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct NodeView {
    pub name: String,
    pub ready: bool,
    pub unschedulable: bool,
    pub kubelet_version: Option<String>,
    pub drydock: Presence,
    pub reported_at: Option<Timestamp>,
    /// The phase the node reported (`None`: no report).
    pub state: Option<String>,
    pub detail: Option<String>,
    pub step: Option<String>,
    pub since: Option<Timestamp>,
    pub reboot_needed_since: Option<Timestamp>,
    pub last_reboot: Option<Timestamp>,
    /// The gates that blocked its last evaluation, first the one to fix.
    pub blocked_by: Vec<ReportedGate>,
    /// The slot it holds according to the Leases (the truth), with since when.
    pub slot: Option<String>,
    pub slot_since: Option<Timestamp>,
    pub window_open: Option<bool>,
    pub next_window: Option<Timestamp>,
    pub upgrade: Option<UpgradeReport>,
    /// Why the report could not be read.
    pub report_error: Option<String>,
}

fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .as_deref()
        .filter(|h| !h.is_empty())
}

fn lease_expired(lease: &Lease, default_duration: Duration, now: Timestamp) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return false;
    };
    let last = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    let secs = spec
        .lease_duration_seconds
        .map_or(default_duration.as_secs() as i64, i64::from);
    match last {
        Some(t) => {
            t.saturating_add(SignedDuration::from_secs(secs))
                .unwrap_or(t)
                <= now
        }
        None => true,
    }
}

/// Whose Leases these are: the configured slots, and any other Lease
/// drydock created (another group).
fn is_drydock_lease(lease: &Lease, slot_names: &[String]) -> bool {
    let name = lease.metadata.name.as_deref().unwrap_or_default();
    slot_names.iter().any(|s| s == name)
        || lease
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/managed-by"))
            .is_some_and(|v| v == "drydock")
}

/// The halting node's record ([`annotations::HaltedBy`]).
fn halted_by(annotations: &BTreeMap<String, String>) -> Option<annotations::HaltedBy> {
    annotations
        .get(annotations::HALTED_BY)
        .and_then(|v| serde_json::from_str(v).ok())
}

fn control(value: Option<String>, by: Option<&String>) -> Option<Control> {
    value.map(|reason| Control {
        reason,
        by: by.map(|b| b.trim().to_string()).filter(|b| !b.is_empty()),
        since: None,
    })
}

/// Builds the fleet view. `slot_names`: this node's configured slots (shown
/// even when their Lease does not exist yet); `stale_after`: a report older
/// than this means drydock is not running there.
pub(crate) fn assemble(
    reading: &FleetReading,
    namespace: &str,
    slot_names: &[String],
    lease_duration: Duration,
    stale_after: Duration,
    now: Timestamp,
) -> FleetStatus {
    let empty = BTreeMap::new();
    let ns_annotations = reading
        .namespace
        .as_ref()
        .and_then(|n| n.metadata.annotations.as_ref())
        .unwrap_or(&empty);
    let cc = ClusterControl::from_annotations(ns_annotations);

    let mut leases: BTreeMap<String, &Lease> = reading
        .leases
        .iter()
        .filter(|l| is_drydock_lease(l, slot_names))
        .filter_map(|l| Some((l.metadata.name.clone()?, l)))
        .collect();
    let known_slots: &[String] = if reading.leases_error.is_some() {
        &[]
    } else {
        slot_names
    };
    let mut slots: Vec<SlotView> = known_slots
        .iter()
        .map(|name| slot_view(name, leases.remove(name), lease_duration, now))
        .collect();
    slots.extend(
        leases
            .into_iter()
            .map(|(name, l)| slot_view(&name, Some(l), lease_duration, now)),
    );
    let held: BTreeMap<&str, &SlotView> = slots
        .iter()
        .filter_map(|s| Some((s.holder.as_deref()?, s)))
        .collect();

    let mut nodes: Vec<NodeView> = reading
        .nodes
        .iter()
        .map(|n| node_view(n, &held, stale_after, now))
        .collect();
    nodes.sort_by_key(|n| natural_key(&n.name));
    let mut counts = BTreeMap::new();
    for n in &nodes {
        let key = match (n.drydock, &n.state) {
            (Presence::Running, Some(s)) => s.clone(),
            (Presence::Stale, _) => "not-reporting".to_string(),
            (Presence::Unreadable, _) => "unreadable".to_string(),
            _ => "no-drydock".to_string(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }

    FleetStatus {
        at: now,
        namespace: namespace.to_string(),
        halted: cc.halted.map(|text| match halted_by(ns_annotations) {
            // A drydock node's halt: its own record says who, why and when.
            Some(h) => Control {
                reason: h.reason,
                by: Some(h.node),
                since: Some(h.at),
            },
            None => Control {
                reason: text,
                by: None,
                since: None,
            },
        }),
        paused: control(cc.paused, ns_annotations.get(annotations::PAUSED_BY)),
        target_version: ns_annotations
            .get(annotations::KUBERNETES_VERSION)
            .map(|v| v.trim().to_string()),
        last_reboot_finished: cc
            .last_reboot_finished
            .ok()
            .flatten()
            .map(|FinishedReboot { at, node }| FinishedRebootView { node, at }),
        cluster_blocked: cc.cluster_blocked.filter(|b| b.until > now),
        slots,
        nodes,
        counts,
        leases_error: reading.leases_error.clone(),
        namespace_error: reading.namespace_error.clone(),
    }
}

/// `worker-2` before `worker-10`: runs of digits compare as numbers.
fn natural_key(name: &str) -> Vec<(String, u64)> {
    let mut key = Vec::new();
    let mut text = String::new();
    let mut digits = String::new();
    for c in name.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            if !digits.is_empty() {
                key.push((
                    std::mem::take(&mut text),
                    digits.parse().unwrap_or(u64::MAX),
                ));
                digits.clear();
            }
            text.push(c);
        }
    }
    key.push((text, digits.parse().unwrap_or(0)));
    key
}

fn slot_view(name: &str, lease: Option<&Lease>, duration: Duration, now: Timestamp) -> SlotView {
    let spec = lease.and_then(|l| l.spec.as_ref());
    let holder = lease.and_then(holder).map(str::to_string);
    SlotView {
        name: name.to_string(),
        since: holder
            .as_ref()
            .and(spec.and_then(|s| s.acquire_time.as_ref()).map(|t| t.0)),
        renewed_at: holder
            .as_ref()
            .and(spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0)),
        expired: holder.is_some() && lease.is_some_and(|l| lease_expired(l, duration, now)),
        holder,
    }
}

fn node_view(
    n: &Node,
    held: &BTreeMap<&str, &SlotView>,
    stale_after: Duration,
    now: Timestamp,
) -> NodeView {
    let name = n.metadata.name.clone().unwrap_or_default();
    let slot = held.get(name.as_str());
    let (report, report_error) = match NodeReport::from_node(n) {
        None => (None, None),
        Some(Ok(r)) => (Some(r), None),
        Some(Err(e)) => (None, Some(e)),
    };
    let drydock = match (&report, &report_error) {
        (Some(r), _) => {
            let age = now.duration_since(r.reported_at);
            if age > SignedDuration::try_from(stale_after).unwrap_or(SignedDuration::MAX) {
                Presence::Stale
            } else {
                Presence::Running
            }
        }
        (None, Some(_)) => Presence::Unreadable,
        (None, None) => Presence::None,
    };
    NodeView {
        ready: node::is_ready(n),
        unschedulable: node::is_unschedulable(n),
        kubelet_version: node::kubelet_version(n).map(str::to_string),
        drydock,
        reported_at: report.as_ref().map(|r| r.reported_at),
        state: report.as_ref().map(|r| r.state.clone()),
        detail: report.as_ref().map(|r| r.detail.clone()),
        step: report.as_ref().and_then(|r| r.step.clone()),
        since: report.as_ref().and_then(|r| r.since),
        reboot_needed_since: report.as_ref().and_then(|r| r.reboot_needed_since),
        last_reboot: report.as_ref().and_then(|r| r.last_reboot),
        blocked_by: report
            .as_ref()
            .map(|r| r.blocked_by.clone())
            .unwrap_or_default(),
        slot: slot.map(|s| s.name.clone()),
        slot_since: slot.and_then(|s| s.since),
        window_open: report.as_ref().map(|r| r.window_open),
        next_window: report.as_ref().and_then(|r| r.next_window),
        upgrade: report.as_ref().and_then(|r| r.upgrade.clone()),
        report_error,
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn node(name: &str, report: Option<&NodeReport>) -> Node {
        let mut v = json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        if let Some(r) = report {
            v["metadata"]["annotations"] = json!({node::REPORT_ANNOTATION: r.to_annotation()});
        }
        serde_json::from_value(v).unwrap()
    }

    fn report(state: &str, at: &str) -> NodeReport {
        NodeReport {
            state: state.into(),
            detail: format!("{state} words"),
            step: None,
            since: Some(t(at)),
            reboot_needed_since: None,
            last_reboot: None,
            blocked_by: vec![],
            slot: None,
            window_open: true,
            next_window: None,
            upgrade: None,
            reported_at: t(at),
            version: "0".into(),
        }
    }

    fn lease(name: &str, holder: &str, acquired: &str, renewed: &str) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "drydock"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 120,
                     "acquireTime": acquired, "renewTime": renewed}
        }))
        .unwrap()
    }

    #[test]
    fn nodes_slots_and_controls() {
        let now = t("2026-01-01T12:00:00Z");
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "drydock",
        "annotations": {
            annotations::HALTED: "w2 failed verification: kubelet not Ready",
            annotations::HALTED_BY: r#"{"node":"w2","reason":"kubelet not Ready","at":"2026-01-01T11:00:00Z"}"#,
            annotations::PAUSED: "change freeze",
            annotations::KUBERNETES_VERSION: "v1.35.2",
        }}}))
        .unwrap();
        let reading = FleetReading {
            nodes: vec![
                node("w2", Some(&report("failed", "2026-01-01T11:59:00Z"))),
                node("w1", Some(&report("pending", "2026-01-01T11:00:00Z"))),
                node("w3", None),
            ],
            leases: vec![
                lease(
                    "drydock-default-0",
                    "w2",
                    "2026-01-01T10:00:00.000000Z",
                    "2026-01-01T11:59:30.000000Z",
                ),
                serde_json::from_value(json!({"metadata": {"name": "unrelated"}})).unwrap(),
            ],
            namespace: Some(ns),
            ..Default::default()
        };
        let slots = vec!["drydock-default-0".to_string(), "drydock-default-1".into()];
        let f = assemble(
            &reading,
            "drydock",
            &slots,
            Duration::from_secs(120),
            Duration::from_secs(900),
            now,
        );
        assert_eq!(
            f.halted,
            Some(Control {
                reason: "kubelet not Ready".into(),
                by: Some("w2".into()),
                since: Some(t("2026-01-01T11:00:00Z")),
            })
        );
        assert_eq!(f.paused.as_ref().unwrap().by, None);
        assert_eq!(f.target_version.as_deref(), Some("v1.35.2"));
        assert_eq!(f.slots.len(), 2, "{:?}", f.slots);
        assert_eq!(f.slots[0].holder.as_deref(), Some("w2"));
        assert_eq!(f.slots[0].since, Some(t("2026-01-01T10:00:00Z")));
        assert!(!f.slots[0].expired);
        assert_eq!(f.slots[1].holder, None);
        let names: Vec<_> = f.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["w1", "w2", "w3"]);
        assert_eq!(f.nodes[0].drydock, Presence::Stale);
        assert_eq!(f.nodes[1].drydock, Presence::Running);
        assert_eq!(f.nodes[1].slot.as_deref(), Some("drydock-default-0"));
        assert_eq!(f.nodes[2].drydock, Presence::None);
        assert_eq!(f.counts["failed"], 1);
        assert_eq!(f.counts["not-reporting"], 1);
        assert_eq!(f.counts["no-drydock"], 1);
    }

    #[test]
    fn unreadable_leases_and_namespace_are_unknown_not_free() {
        let reading = FleetReading {
            nodes: vec![node("w1", Some(&report("pending", "2026-01-01T11:59:00Z")))],
            leases_error: Some("listing Leases in namespace drydock: forbidden".into()),
            namespace_error: Some("reading Namespace drydock: forbidden".into()),
            ..Default::default()
        };
        let f = assemble(
            &reading,
            "drydock",
            &["drydock-default-0".into()],
            Duration::from_secs(120),
            Duration::from_secs(900),
            t("2026-01-01T12:00:00Z"),
        );
        assert!(f.slots.is_empty(), "{:?}", f.slots);
        assert_eq!(f.nodes.len(), 1);
        assert!(f.leases_error.is_some() && f.namespace_error.is_some());
    }

    #[test]
    fn nodes_sort_naturally() {
        let mut names = vec!["worker-10", "cp-1", "worker-2", "worker-1", "w"];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names, ["cp-1", "w", "worker-1", "worker-2", "worker-10"]);
    }

    #[test]
    fn an_expired_holder_is_flagged() {
        let now = t("2026-01-01T12:00:00Z");
        let reading = FleetReading {
            leases: vec![lease(
                "drydock-default-0",
                "w1",
                "2026-01-01T10:00:00.000000Z",
                "2026-01-01T11:00:00.000000Z",
            )],
            ..Default::default()
        };
        let f = assemble(
            &reading,
            "drydock",
            &["drydock-default-0".into()],
            Duration::from_secs(120),
            Duration::from_secs(900),
            now,
        );
        assert!(f.slots[0].expired);
        assert_eq!(f.halted, None);
        assert!(f.nodes.is_empty());
    }
}
