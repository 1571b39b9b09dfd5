//! Verification after a reboot: did the machine really reboot, and is it
//! healthy again?
//!
//! [`evaluate`] is pure: an [`Observation`] in, a [`VerifyOutcome`] out. The
//! agent gathers ([`gather`]) and evaluates repeatedly until it passes or
//! `verify.timeout` runs out; on timeout the last problems are the halt
//! reason.
//!
//! Freshness matters as much as state: a status written before the reboot
//! can still say Ready. So the node's Ready heartbeat must be newer than the
//! boot, the kubelet's reported boot ID must be the new one, and DaemonSet
//! pod containers must have started after the boot.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::cluster::node::{self, NodeClient, NodeError};
use crate::config::NamespacedName;
use crate::host::boot::BootId;
use crate::host::checks::{self, CheckOutcome, CheckResult, ChecksError};

/// Everything verification looks at, gathered at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    /// Persisted before the reboot; `None` when the caller already saw the
    /// boot change (the agent does, before it enters verification).
    pub boot_id_before: Option<BootId>,
    pub boot_id_now: BootId,
    /// When the current boot started (this machine's clock, as the kubelet's
    /// heartbeats are).
    pub boot_started: Timestamp,
    /// `None`: the Node object does not exist.
    pub node: Option<NodeObservation>,
    pub daemonsets: Vec<DaemonSetObservation>,
    /// `None`: not run (yet).
    pub checks: Option<Vec<CheckResult>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeObservation {
    /// Status of the Ready condition; `None` when there is none.
    pub ready: Option<String>,
    pub ready_reason: Option<String>,
    pub ready_message: Option<String>,
    pub last_heartbeat: Option<Timestamp>,
    /// `status.nodeInfo.bootID`.
    pub reported_boot_id: Option<String>,
}

impl NodeObservation {
    pub fn of(node: &Node) -> Self {
        let ready = node::ready_condition(node);
        NodeObservation {
            ready: ready.map(|c| c.status.clone()),
            ready_reason: ready.and_then(|c| c.reason.clone()),
            ready_message: ready.and_then(|c| c.message.clone()),
            last_heartbeat: ready
                .and_then(|c| c.last_heartbeat_time.as_ref())
                .map(|t| t.0),
            reported_boot_id: node::boot_id(node).map(str::to_string),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonSetObservation {
    #[serde(serialize_with = "as_display")]
    pub daemonset: NamespacedName,
    pub state: DaemonSetState,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum DaemonSetState {
    /// The DaemonSet does not exist.
    Missing,
    /// Its nodeSelector excludes this node: nothing to require.
    NotForThisNode,
    /// Its pods on this node (usually one; two during a rolling update).
    Pods { pods: Vec<DaemonSetPod> },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonSetPod {
    pub name: String,
    pub phase: Option<String>,
    pub ready: bool,
    /// `lastTransitionTime` of its Ready condition.
    pub ready_since: Option<Timestamp>,
    /// Earliest `startedAt` of its running containers; `None` when the
    /// status does not say.
    pub containers_started: Option<Timestamp>,
}

impl DaemonSetPod {
    pub fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
        DaemonSetPod {
            name: pod.name_any(),
            phase: status.and_then(|s| s.phase.clone()),
            ready: ready.is_some_and(|c| c.status == "True"),
            ready_since: ready
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0),
            containers_started: status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| {
                    cs.iter()
                        .filter_map(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
                        .map(|t| t.0)
                        .min()
                }),
        }
    }
}

/// `namespace/name` in JSON (history records).
fn as_display<S: serde::Serializer>(v: &NamespacedName, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The verdict of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum VerifyOutcome {
    Passed,
    /// The boot ID did not change: the machine has not rebooted (yet).
    NotRebooted,
    /// Rebooted, not healthy yet; retry until the verify timeout.
    Waiting {
        problems: Vec<Problem>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum Problem {
    NodeMissing,
    NodeNotReady {
        status: Option<String>,
        reason: Option<String>,
        message: Option<String>,
    },
    /// Ready, but the heartbeat predates this boot: stale status.
    HeartbeatBeforeBoot {
        last_heartbeat: Option<Timestamp>,
    },
    /// The kubelet still reports another boot.
    NodeBootIdMismatch {
        reported: String,
        local: String,
    },
    DaemonSetMissing {
        #[serde(serialize_with = "as_display")]
        daemonset: NamespacedName,
    },
    DaemonSetPodMissing {
        #[serde(serialize_with = "as_display")]
        daemonset: NamespacedName,
    },
    DaemonSetPodNotReady {
        #[serde(serialize_with = "as_display")]
        daemonset: NamespacedName,
        pod: String,
        phase: Option<String>,
    },
    /// Ready, but its containers were started before this boot.
    DaemonSetPodStale {
        #[serde(serialize_with = "as_display")]
        daemonset: NamespacedName,
        pod: String,
    },
    ChecksNotRun,
    CheckFailed {
        name: String,
        outcome: CheckOutcome,
        output: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NodeMissing => f.write_str("the Node object does not exist"),
            Problem::NodeNotReady {
                status,
                reason,
                message,
            } => write!(
                f,
                "node not Ready (status {}, reason {}: {})",
                status.as_deref().unwrap_or("none"),
                reason.as_deref().unwrap_or("none"),
                message.as_deref().unwrap_or("")
            ),
            Problem::HeartbeatBeforeBoot { last_heartbeat } => match last_heartbeat {
                Some(t) => write!(
                    f,
                    "node Ready status is stale (last heartbeat {t}, before this boot)"
                ),
                None => f.write_str("node Ready status has no heartbeat time"),
            },
            Problem::NodeBootIdMismatch { reported, local } => {
                write!(
                    f,
                    "kubelet reports boot ID {reported}, this boot is {local}"
                )
            }
            Problem::DaemonSetMissing { daemonset } => {
                write!(f, "required DaemonSet {daemonset} does not exist")
            }
            Problem::DaemonSetPodMissing { daemonset } => {
                write!(f, "no pod of required DaemonSet {daemonset} on this node")
            }
            Problem::DaemonSetPodNotReady {
                daemonset,
                pod,
                phase,
            } => write!(
                f,
                "pod {pod} of DaemonSet {daemonset} not Running and Ready (phase {})",
                phase.as_deref().unwrap_or("unknown")
            ),
            Problem::DaemonSetPodStale { daemonset, pod } => write!(
                f,
                "pod {pod} of DaemonSet {daemonset} shows containers started before this boot"
            ),
            Problem::ChecksNotRun => f.write_str("health checks not run yet"),
            Problem::CheckFailed {
                name,
                outcome,
                output,
            } => {
                let what = match outcome {
                    CheckOutcome::Passed => "passed".to_string(),
                    CheckOutcome::Failed { code: Some(c), .. } => format!("exited {c}"),
                    CheckOutcome::Failed { signal, .. } => {
                        format!("killed by signal {}", signal.unwrap_or_default())
                    }
                    CheckOutcome::TimedOut => "timed out".to_string(),
                    CheckOutcome::NotStarted { error } => format!("could not start: {error}"),
                };
                let last = output.lines().last().unwrap_or_default();
                if last.is_empty() {
                    write!(f, "check {name} {what}")
                } else {
                    write!(f, "check {name} {what}: {last}")
                }
            }
        }
    }
}

/// Joins problems into one line (status line, halt reason).
pub fn describe(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The pure verdict.
pub fn evaluate(obs: &Observation) -> VerifyOutcome {
    if obs.boot_id_before.as_ref() == Some(&obs.boot_id_now) {
        return VerifyOutcome::NotRebooted;
    }
    let mut problems = Vec::new();
    match &obs.node {
        None => problems.push(Problem::NodeMissing),
        Some(n) => {
            if n.ready.as_deref() != Some("True") {
                problems.push(Problem::NodeNotReady {
                    status: n.ready.clone(),
                    reason: n.ready_reason.clone(),
                    message: n.ready_message.clone(),
                });
            } else if !n
                .last_heartbeat
                .is_some_and(|t| since_boot(t, obs.boot_started))
            {
                problems.push(Problem::HeartbeatBeforeBoot {
                    last_heartbeat: n.last_heartbeat,
                });
            }
            if let Some(reported) = &n.reported_boot_id
                && BootId::parse(reported).as_ref() != Some(&obs.boot_id_now)
            {
                problems.push(Problem::NodeBootIdMismatch {
                    reported: reported.clone(),
                    local: obs.boot_id_now.to_string(),
                });
            }
        }
    }
    for ds in &obs.daemonsets {
        if let Some(p) = daemonset_problem(ds, obs.boot_started) {
            problems.push(p);
        }
    }
    match &obs.checks {
        None => problems.push(Problem::ChecksNotRun),
        Some(results) => {
            problems.extend(
                results
                    .iter()
                    .filter(|r| !r.passed())
                    .map(|r| Problem::CheckFailed {
                        name: r.name.clone(),
                        outcome: r.outcome.clone(),
                        output: r.output.clone(),
                    }),
            )
        }
    }
    if problems.is_empty() {
        VerifyOutcome::Passed
    } else {
        VerifyOutcome::Waiting { problems }
    }
}

/// `t` is not before the boot, at the whole-second precision of Kubernetes
/// timestamps (a heartbeat in the boot's own second counts).
fn since_boot(t: Timestamp, boot_started: Timestamp) -> bool {
    t.as_second() >= boot_started.as_second()
}

fn daemonset_problem(ds: &DaemonSetObservation, boot_started: Timestamp) -> Option<Problem> {
    let daemonset = ds.daemonset.clone();
    let pods = match &ds.state {
        DaemonSetState::Missing => return Some(Problem::DaemonSetMissing { daemonset }),
        DaemonSetState::NotForThisNode => return None,
        DaemonSetState::Pods { pods } => pods,
    };
    // Either proves the status was written by this boot's kubelet: its
    // containers started after the boot, or it became Ready after the boot.
    let fresh = |p: &DaemonSetPod| match (p.containers_started, p.ready_since) {
        (None, None) => true,
        (started, since) => {
            started.is_some_and(|t| since_boot(t, boot_started))
                || since.is_some_and(|t| since_boot(t, boot_started))
        }
    };
    let healthy = |p: &DaemonSetPod| p.phase.as_deref() == Some("Running") && p.ready;
    if pods.iter().any(|p| healthy(p) && fresh(p)) {
        return None;
    }
    // Report the most telling pod: a stale healthy one, else any.
    if let Some(p) = pods.iter().find(|p| healthy(p)) {
        return Some(Problem::DaemonSetPodStale {
            daemonset,
            pod: p.name.clone(),
        });
    }
    match pods.first() {
        None => Some(Problem::DaemonSetPodMissing { daemonset }),
        Some(p) => Some(Problem::DaemonSetPodNotReady {
            daemonset,
            pod: p.name.clone(),
            phase: p.phase.clone(),
        }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("verifying: {0}")]
    Node(#[from] NodeError),
    #[error("verifying: reading DaemonSet {daemonset}: {source}")]
    DaemonSet {
        daemonset: NamespacedName,
        #[source]
        source: kube::Error,
    },
    #[error("verifying: listing pods of DaemonSet {daemonset} on node {node}: {source}")]
    Pods {
        daemonset: NamespacedName,
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("verifying: {0}")]
    Checks(#[from] ChecksError),
}

/// What [`gather`] needs. The current boot ID is passed in (read by the
/// caller from [`crate::host::boot`], or simulated).
#[derive(Debug, Clone)]
pub struct VerifyInputs<'a> {
    pub node: &'a str,
    pub boot_id_before: Option<&'a BootId>,
    pub boot_id_now: &'a BootId,
    pub boot_started: Timestamp,
    pub required_daemonsets: &'a [NamespacedName],
    /// `None`: the caller runs the checks itself (the agent's host port).
    pub checks_dir: Option<&'a Path>,
    pub check_timeout: Duration,
}

/// Gathers an observation. The (slow) health checks only run once
/// everything else passes, so a node that is still NotReady is not
/// hammered with checks every round.
pub async fn gather(
    client: &Client,
    inputs: &VerifyInputs<'_>,
) -> Result<Observation, VerifyError> {
    let node = NodeClient::new(client.clone(), inputs.node)
        .get_opt()
        .await?;
    let mut daemonsets = Vec::new();
    for ds in inputs.required_daemonsets {
        daemonsets.push(DaemonSetObservation {
            daemonset: ds.clone(),
            state: daemonset_state(client, ds, inputs.node, node.as_ref()).await?,
        });
    }
    let mut obs = Observation {
        boot_id_before: inputs.boot_id_before.cloned(),
        boot_id_now: inputs.boot_id_now.clone(),
        boot_started: inputs.boot_started,
        node: node.as_ref().map(NodeObservation::of),
        daemonsets,
        checks: None,
    };
    if let VerifyOutcome::Waiting { problems } = evaluate(&obs)
        && problems == [Problem::ChecksNotRun]
    {
        obs.checks = Some(match inputs.checks_dir {
            Some(dir) => checks::run_checks(dir, inputs.check_timeout).await?,
            None => Vec::new(),
        });
    }
    Ok(obs)
}

async fn daemonset_state(
    client: &Client,
    ds: &NamespacedName,
    node_name: &str,
    node: Option<&Node>,
) -> Result<DaemonSetState, VerifyError> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), &ds.namespace);
    let Some(object) = api
        .get_opt(&ds.name)
        .await
        .map_err(|source| VerifyError::DaemonSet {
            daemonset: ds.clone(),
            source,
        })?
    else {
        return Ok(DaemonSetState::Missing);
    };
    if let Some(node) = node
        && !targets_node(&object, node)
    {
        return Ok(DaemonSetState::NotForThisNode);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ds.namespace);
    let list = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node_name}")))
        .await
        .map_err(|source| VerifyError::Pods {
            daemonset: ds.clone(),
            node: node_name.to_string(),
            source,
        })?;
    let uid = object.uid();
    let pods = list
        .items
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name))
        .filter(|p| {
            p.owner_references().iter().any(|o| {
                o.controller == Some(true)
                    && o.kind == "DaemonSet"
                    && o.name == ds.name
                    && (uid.is_none() || uid.as_deref() == Some(o.uid.as_str()))
            })
        })
        .map(DaemonSetPod::of)
        .collect();
    Ok(DaemonSetState::Pods { pods })
}

/// Whether a DaemonSet's nodeSelector admits the node. Node affinity and
/// taints are not evaluated: a DaemonSet excluded that way still counts as
/// required.
fn targets_node(ds: &DaemonSet, node: &Node) -> bool {
    let selector = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.node_selector.as_ref());
    let labels = node.labels();
    selector
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BEFORE: &str = "11111111-1111-1111-1111-111111111111";
    const NOW: &str = "22222222-2222-2222-2222-222222222222";

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn ds_name() -> NamespacedName {
        NamespacedName {
            namespace: "kube-system".into(),
            name: "calico-node".into(),
        }
    }

    fn healthy_pod() -> DaemonSetPod {
        DaemonSetPod {
            name: "calico-node-x".into(),
            phase: Some("Running".into()),
            ready: true,
            ready_since: Some(ts("2025-01-01T09:00:00Z")),
            containers_started: Some(ts("2025-01-01T10:01:00Z")),
        }
    }

    fn passing() -> Observation {
        Observation {
            boot_id_before: Some(BootId::parse(BEFORE).expect("id")),
            boot_id_now: BootId::parse(NOW).expect("id"),
            boot_started: ts("2025-01-01T10:00:00Z"),
            node: Some(NodeObservation {
                ready: Some("True".into()),
                ready_reason: Some("KubeletReady".into()),
                ready_message: None,
                last_heartbeat: Some(ts("2025-01-01T10:02:00Z")),
                reported_boot_id: Some(NOW.into()),
            }),
            daemonsets: vec![DaemonSetObservation {
                daemonset: ds_name(),
                state: DaemonSetState::Pods {
                    pods: vec![healthy_pod()],
                },
            }],
            checks: Some(vec![CheckResult {
                name: "10-ok".into(),
                outcome: CheckOutcome::Passed,
                duration: Duration::from_millis(5),
                output: String::new(),
            }]),
        }
    }

    fn problems(obs: &Observation) -> Vec<Problem> {
        match evaluate(obs) {
            VerifyOutcome::Waiting { problems } => problems,
            other => panic!("expected Waiting, got {other:?}"),
        }
    }

    #[test]
    fn all_good_passes() {
        assert_eq!(evaluate(&passing()), VerifyOutcome::Passed);
    }

    #[test]
    fn same_boot_id_is_not_rebooted() {
        let mut o = passing();
        o.boot_id_now = o.boot_id_before.clone().expect("id");
        assert_eq!(evaluate(&o), VerifyOutcome::NotRebooted);
    }

    #[test]
    fn boot_change_seen_by_the_caller_still_checks_the_kubelets_boot_id() {
        let mut o = passing();
        o.boot_id_before = None;
        assert_eq!(evaluate(&o), VerifyOutcome::Passed);
        o.node.as_mut().expect("node").reported_boot_id = Some(BEFORE.into());
        let VerifyOutcome::Waiting { problems } = evaluate(&o) else {
            panic!("a kubelet still on the old boot must not pass");
        };
        assert!(matches!(problems[..], [Problem::NodeBootIdMismatch { .. }]));
    }

    #[test]
    fn not_ready_node() {
        let mut o = passing();
        let n = o.node.as_mut().expect("node");
        n.ready = Some("False".into());
        n.ready_reason = Some("KubeletNotReady".into());
        assert!(matches!(problems(&o)[..], [Problem::NodeNotReady { .. }]));
        o.node = None;
        assert_eq!(problems(&o), [Problem::NodeMissing]);
    }

    #[test]
    fn stale_heartbeat_and_old_boot_id() {
        let mut o = passing();
        let n = o.node.as_mut().expect("node");
        n.last_heartbeat = Some(ts("2025-01-01T09:59:59Z"));
        n.reported_boot_id = Some(BEFORE.into());
        let p = problems(&o);
        assert!(
            matches!(
                p[..],
                [
                    Problem::HeartbeatBeforeBoot { .. },
                    Problem::NodeBootIdMismatch { .. }
                ]
            ),
            "{p:?}"
        );
        // Kubernetes times have whole seconds: the boot's own second counts.
        let mut o = passing();
        o.boot_started = ts("2025-01-01T10:02:00.700Z");
        o.daemonsets.clear();
        assert_eq!(evaluate(&o), VerifyOutcome::Passed);
        o.boot_started = ts("2025-01-01T10:02:01Z");
        assert!(matches!(
            problems(&o)[..],
            [Problem::HeartbeatBeforeBoot { .. }]
        ));
        // No boot ID reported at all is not held against the node.
        let mut o = passing();
        o.node.as_mut().expect("node").reported_boot_id = None;
        assert_eq!(evaluate(&o), VerifyOutcome::Passed);
    }

    #[test]
    fn daemonset_pod_states() {
        let set = |state| {
            let mut o = passing();
            o.daemonsets[0].state = state;
            o
        };
        assert!(matches!(
            problems(&set(DaemonSetState::Missing))[..],
            [Problem::DaemonSetMissing { .. }]
        ));
        assert_eq!(
            evaluate(&set(DaemonSetState::NotForThisNode)),
            VerifyOutcome::Passed
        );
        assert!(matches!(
            problems(&set(DaemonSetState::Pods { pods: vec![] }))[..],
            [Problem::DaemonSetPodMissing { .. }]
        ));
        let mut pending = healthy_pod();
        pending.phase = Some("Pending".into());
        pending.ready = false;
        assert!(matches!(
            problems(&set(DaemonSetState::Pods {
                pods: vec![pending.clone()]
            }))[..],
            [Problem::DaemonSetPodNotReady { .. }]
        ));
        let mut stale = healthy_pod();
        stale.containers_started = Some(ts("2025-01-01T09:00:00Z"));
        assert!(matches!(
            problems(&set(DaemonSetState::Pods { pods: vec![stale] }))[..],
            [Problem::DaemonSetPodStale { .. }]
        ));
        // Rolling update: one old pending pod and one healthy pod is fine.
        assert_eq!(
            evaluate(&set(DaemonSetState::Pods {
                pods: vec![pending, healthy_pod()]
            })),
            VerifyOutcome::Passed
        );
        // Containers from before the boot, but Ready again since the boot.
        let mut ready_again = healthy_pod();
        ready_again.containers_started = Some(ts("2025-01-01T09:00:00Z"));
        ready_again.ready_since = Some(ts("2025-01-01T10:03:00Z"));
        assert_eq!(
            evaluate(&set(DaemonSetState::Pods {
                pods: vec![ready_again]
            })),
            VerifyOutcome::Passed
        );
        let mut unknown_start = healthy_pod();
        unknown_start.containers_started = None;
        unknown_start.ready_since = None;
        assert_eq!(
            evaluate(&set(DaemonSetState::Pods {
                pods: vec![unknown_start]
            })),
            VerifyOutcome::Passed
        );
    }

    #[test]
    fn checks_must_run_and_pass() {
        let mut o = passing();
        o.checks = None;
        assert_eq!(problems(&o), [Problem::ChecksNotRun]);
        o.checks = Some(vec![CheckResult {
            name: "20-dns".into(),
            outcome: CheckOutcome::Failed {
                code: Some(1),
                signal: None,
            },
            duration: Duration::from_millis(5),
            output: "resolving kubernetes.default\nNXDOMAIN".into(),
        }]);
        let p = problems(&o);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].to_string(), "check 20-dns exited 1: NXDOMAIN");
        o.checks = Some(vec![]);
        assert_eq!(evaluate(&o), VerifyOutcome::Passed);
    }

    #[test]
    fn daemonset_node_selector() {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "gpu", "namespace": "kube-system"},
            "spec": {
                "selector": {"matchLabels": {"app": "gpu"}},
                "template": {"spec": {"containers": [{"name": "c"}], "nodeSelector": {"gpu": "yes"}}}
            }
        }))
        .expect("ds");
        let node = |labels: serde_json::Value| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n", "labels": labels}}))
                .expect("node")
        };
        assert!(targets_node(&ds, &node(json!({"gpu": "yes", "x": "y"}))));
        assert!(!targets_node(&ds, &node(json!({"x": "y"}))));
    }
}
