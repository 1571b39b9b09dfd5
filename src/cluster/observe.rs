//! Gathers what the cluster-wide gates need, in a small, fixed number of
//! requests per evaluation: one Node list, the drydock Namespace, per
//! required DaemonSet one get and one label-selected pod list, and per
//! blocking-pod selector one pod list limited to this node. Never a
//! cluster-wide pod list. The raw objects are reduced to plain views so the
//! gates stay pure and easy to test.

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use kube::core::{ParseExpressionError, Selector};
use serde::Serialize;

use super::annotations::ClusterControl;
use crate::config::{NamespacedName, Settings};

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("listing nodes{}: {source}", selector_note(.selector))]
    Nodes {
        selector: String,
        source: kube::Error,
    },
    #[error("reading Namespace {namespace}: {source}")]
    Namespace {
        namespace: String,
        source: kube::Error,
    },
    #[error(
        "Namespace {namespace} does not exist; drydock keeps its Leases and cluster-wide pause there (create it: kubectl create namespace {namespace})"
    )]
    NamespaceMissing { namespace: String },
    #[error("reading DaemonSet {name}: {source}")]
    DaemonSet {
        name: NamespacedName,
        source: kube::Error,
    },
    #[error("reading the pod selector of DaemonSet {name}: {source}")]
    DaemonSetSelector {
        name: NamespacedName,
        source: ParseExpressionError,
    },
    #[error("listing pods of DaemonSet {name}: {source}")]
    DaemonSetPods {
        name: NamespacedName,
        source: kube::Error,
    },
    #[error("listing pods on node {node} matching {selector:?}: {source}")]
    BlockingPods {
        node: String,
        selector: String,
        source: kube::Error,
    },
}

fn selector_note(selector: &str) -> String {
    if selector.is_empty() {
        String::new()
    } else {
        format!(" matching {selector:?}")
    }
}

/// A node's Ready condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadyStatus {
    True,
    False,
    Unknown,
    /// The kubelet never reported a Ready condition.
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub name: String,
    pub ready: ReadyStatus,
    /// lastTransitionTime of the Ready condition.
    pub ready_changed_at: Option<Timestamp>,
}

impl NodeView {
    pub(crate) fn from_node(node: &Node) -> NodeView {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        NodeView {
            name: node.metadata.name.clone().unwrap_or_default(),
            ready: match ready.map(|c| c.status.as_str()) {
                Some("True") => ReadyStatus::True,
                Some("False") => ReadyStatus::False,
                Some(_) => ReadyStatus::Unknown,
                None => ReadyStatus::Missing,
            },
            ready_changed_at: ready.and_then(|c| c.last_transition_time.as_ref().map(|t| t.0)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    /// status.phase (Pending, Running, Succeeded, Failed, Unknown).
    pub phase: String,
    /// The Ready condition is True.
    pub ready: bool,
    /// deletionTimestamp is set.
    pub terminating: bool,
}

impl PodView {
    fn from_pod(pod: &Pod) -> PodView {
        let status = pod.status.as_ref();
        PodView {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            phase: status
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Unknown".into()),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }

    pub fn running_and_ready(&self) -> bool {
        self.phase == "Running" && self.ready && !self.terminating
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonSetState {
    /// No such DaemonSet.
    Missing,
    Present {
        /// status.desiredNumberScheduled.
        desired: i32,
        /// status.numberReady.
        ready: i32,
        /// The pods it owns.
        pods: Vec<PodView>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSetObservation {
    pub name: NamespacedName,
    pub state: DaemonSetState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockingPods {
    pub selector: String,
    pub pods: Vec<PodView>,
}

/// Everything the cluster-wide gates look at, from one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterObservation {
    /// This node.
    pub node_name: String,
    /// Nodes matching `gates.node-selector` (all when empty).
    pub nodes: Vec<NodeView>,
    pub daemonsets: Vec<DaemonSetObservation>,
    pub blocking_pods: Vec<BlockingPods>,
    pub control: ClusterControl,
}

/// A DaemonSet's `spec.selector` as a label-selector string for a list call
/// (kube-core's `Selector`). An unknown operator is an error, not a guess.
fn selector_string(selector: &LabelSelector) -> Result<String, ParseExpressionError> {
    Selector::try_from(selector.clone()).map(|s| s.to_string())
}

/// Reads the cluster for the gates. Fails on the first request that fails:
/// a gate that cannot be evaluated blocks, so partial data is useless.
pub async fn observe(
    client: &kube::Client,
    settings: &Settings,
    node_name: &str,
) -> Result<ClusterObservation, ObserveError> {
    let nodes = list_nodes(client, settings).await?;
    let control = observe_control(client, settings).await?;
    observe_rest(client, settings, node_name, nodes, control).await
}

/// The drydock Namespace's annotations alone: one small GET, enough for the
/// halted, paused and (after a finished reboot) soak gates.
pub(crate) async fn observe_control(
    client: &kube::Client,
    settings: &Settings,
) -> Result<ClusterControl, ObserveError> {
    let ns_name = &settings.lease.namespace;
    let ns = Api::<Namespace>::all(client.clone())
        .get_opt(ns_name)
        .await
        .map_err(|source| ObserveError::Namespace {
            namespace: ns_name.clone(),
            source,
        })?
        .ok_or_else(|| ObserveError::NamespaceMissing {
            namespace: ns_name.clone(),
        })?;
    Ok(ClusterControl::from_annotations(
        &ns.metadata.annotations.clone().unwrap_or_default(),
    ))
}

/// The rest of [`observe`], once the Namespace was read (and passed) by
/// [`observe_control`]: the Node list, DaemonSets and blocking pods.
pub(crate) async fn observe_after_control(
    client: &kube::Client,
    settings: &Settings,
    node_name: &str,
    control: ClusterControl,
) -> Result<ClusterObservation, ObserveError> {
    let nodes = list_nodes(client, settings).await?;
    observe_rest(client, settings, node_name, nodes, control).await
}

async fn list_nodes(
    client: &kube::Client,
    settings: &Settings,
) -> Result<Vec<NodeView>, ObserveError> {
    let selector = settings.gates.node_selector.clone();
    let mut lp = ListParams::default();
    if !selector.is_empty() {
        lp = lp.labels(&selector);
    }
    let nodes = Api::<Node>::all(client.clone())
        .list(&lp)
        .await
        .map_err(|source| ObserveError::Nodes {
            selector: selector.clone(),
            source,
        })?;
    let mut nodes: Vec<NodeView> = nodes.items.iter().map(NodeView::from_node).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

async fn observe_rest(
    client: &kube::Client,
    settings: &Settings,
    node_name: &str,
    nodes: Vec<NodeView>,
    control: ClusterControl,
) -> Result<ClusterObservation, ObserveError> {
    let mut daemonsets = Vec::new();
    for name in &settings.gates.required_daemonsets {
        daemonsets.push(DaemonSetObservation {
            name: name.clone(),
            state: daemonset(client, name).await?,
        });
    }

    let mut blocking_pods = Vec::new();
    for sel in &settings.gates.blocking_pod_selectors {
        let lp = ListParams::default()
            .labels(sel)
            .fields(&format!("spec.nodeName={node_name}"));
        let pods = Api::<Pod>::all(client.clone())
            .list(&lp)
            .await
            .map_err(|source| ObserveError::BlockingPods {
                node: node_name.to_string(),
                selector: sel.clone(),
                source,
            })?;
        blocking_pods.push(BlockingPods {
            selector: sel.clone(),
            pods: pods
                .items
                .iter()
                // Finished pods (Jobs done) no longer block anything.
                .map(PodView::from_pod)
                .filter(|p| p.phase != "Succeeded" && p.phase != "Failed")
                .collect(),
        });
    }

    Ok(ClusterObservation {
        node_name: node_name.to_string(),
        nodes,
        daemonsets,
        blocking_pods,
        control,
    })
}

async fn daemonset(
    client: &kube::Client,
    name: &NamespacedName,
) -> Result<DaemonSetState, ObserveError> {
    let api = Api::<DaemonSet>::namespaced(client.clone(), &name.namespace);
    let Some(ds) = api
        .get_opt(&name.name)
        .await
        .map_err(|source| ObserveError::DaemonSet {
            name: name.clone(),
            source,
        })?
    else {
        return Ok(DaemonSetState::Missing);
    };
    let status = ds.status.as_ref();
    let desired = status.map_or(0, |s| s.desired_number_scheduled);
    let ready = status.map_or(0, |s| s.number_ready);
    let selector = ds
        .spec
        .as_ref()
        .map(|s| selector_string(&s.selector))
        .transpose()
        .map_err(|source| ObserveError::DaemonSetSelector {
            name: name.clone(),
            source,
        })?
        .unwrap_or_default();
    let uid = ds.metadata.uid.clone();
    let pods = if selector.is_empty() {
        Vec::new()
    } else {
        Api::<Pod>::namespaced(client.clone(), &name.namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| ObserveError::DaemonSetPods {
                name: name.clone(),
                source,
            })?
            .items
            .iter()
            .filter(|p| owned_by(p, uid.as_deref()))
            .map(PodView::from_pod)
            .collect()
    };
    Ok(DaemonSetState::Present {
        desired,
        ready,
        pods,
    })
}

/// Pods that match the selector but belong to something else do not count.
fn owned_by(pod: &Pod, uid: Option<&str>) -> bool {
    let Some(uid) = uid else { return true };
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.kind == "DaemonSet")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    #[test]
    fn node_ready_condition_is_read() {
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        assert_eq!(NodeView::from_node(&node).ready, ReadyStatus::Missing);
        let at: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        node.status = Some(NodeStatus {
            conditions: Some(vec![
                NodeCondition {
                    type_: "MemoryPressure".into(),
                    status: "False".into(),
                    ..Default::default()
                },
                NodeCondition {
                    type_: "Ready".into(),
                    status: "Unknown".into(),
                    last_transition_time: Some(Time(at)),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        let v = NodeView::from_node(&node);
        assert_eq!(v.ready, ReadyStatus::Unknown);
        assert_eq!(v.ready_changed_at, Some(at));
    }

    #[test]
    fn pod_view_reads_phase_ready_and_deletion() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        pod.spec = Some(PodSpec {
            node_name: Some("n1".into()),
            ..Default::default()
        });
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(PodView::from_pod(&pod).running_and_ready());
        pod.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert!(!PodView::from_pod(&pod).running_and_ready());
        pod.status = None;
        let v = PodView::from_pod(&pod);
        assert_eq!((v.phase.as_str(), v.ready), ("Unknown", false));
    }

    #[test]
    fn label_selectors_become_query_strings() {
        let sel = LabelSelector {
            match_labels: Some([("k8s-app".to_string(), "calico-node".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(
            selector_string(&sel).unwrap(),
            "k8s-app=calico-node,tier in (a,b),!canary"
        );
        let mut odd = sel.clone();
        odd.match_expressions.as_mut().unwrap()[1].operator = "Gt".into();
        assert!(
            selector_string(&odd).is_err(),
            "an unknown operator is not guessed at"
        );
    }
}
