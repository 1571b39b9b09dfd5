//! What `kubectl` shows: core Kubernetes Events (v1) about this Node, and
//! what the node publishes on its own Node object ([`NodeReport`]: the
//! `drydock.dev/state` and `drydock.dev/reboot-needed` labels, the
//! `drydock.dev/state` and `drydock.dev/state-reason` annotations, and the
//! full report for `drydock cluster status`). Both are allowed to the
//! kubelet's own credentials: the Node authorizer grants core events (a node
//! identity may not create events.k8s.io Events), and NodeRestriction lets a
//! node patch labels and annotations of its own Node object.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use super::notice::EventSpec;
use crate::cluster::node::NodeReport;
pub use crate::cluster::node::REASON_ANNOTATION;
pub use crate::cluster::node::STATE_ANNOTATION;
/// `reportingComponent` of every event drydock writes.
const CONTROLLER: &str = "drydock.dev/drydock";
/// `source.component`, what `kubectl describe node` shows in "From".
const COMPONENT: &str = "drydock";
/// Events about cluster-scoped objects (Nodes) live in `default`, as the kubelet's do.
const EVENT_NAMESPACE: &str = "default";
/// Field manager for the annotation patch.
const MANAGER: &str = "drydock";

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("creating event {reason} for node {node}: {source}")]
    Create {
        node: String,
        reason: &'static str,
        source: kube::Error,
    },
    #[error("publishing drydock's report on node {node}: {source}")]
    Publish { node: String, source: kube::Error },
}

/// Writes events about, and annotations on, one Node.
#[derive(Clone)]
pub struct NodeEvents {
    events: Api<Event>,
    nodes: Api<Node>,
    node: String,
    node_uid: Option<String>,
}

impl NodeEvents {
    pub fn new(client: kube::Client, node: &str) -> NodeEvents {
        NodeEvents {
            events: Api::namespaced(client.clone(), EVENT_NAMESPACE),
            nodes: Api::all(client),
            node: node.to_string(),
            node_uid: None,
        }
    }

    /// The Event object for `spec` at `at` (pure; used by `record`).
    fn event_object(&self, spec: &EventSpec, at: Timestamp) -> Event {
        // Unique and sortable, like the kubelet's `<object>.<hex nanos>`.
        let name = format!(
            "{}.drydock.{:x}",
            self.node,
            at.as_nanosecond().max(0) as u128 ^ u128::from(rand_suffix())
        );
        Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(EVENT_NAMESPACE.to_string()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("Node".to_string()),
                name: Some(self.node.clone()),
                uid: self.node_uid.clone(),
                ..Default::default()
            },
            reason: Some(spec.reason.to_string()),
            // The API refuses a note over 1 KiB; control characters escaped.
            message: Some(crate::text::display(&spec.note, 900)),
            type_: Some(spec.severity.as_str().to_string()),
            action: Some(spec.action.to_string()),
            // Seconds for kubectl's columns, microseconds for ordering.
            first_timestamp: Some(Time(at)),
            last_timestamp: Some(Time(at)),
            event_time: Some(MicroTime(at)),
            count: Some(1),
            source: Some(EventSource {
                component: Some(COMPONENT.to_string()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some(CONTROLLER.to_string()),
            reporting_instance: Some(format!("drydock-{}", self.node)),
            ..Default::default()
        }
    }

    /// Creates one event; looks up the Node's UID once so `kubectl describe
    /// node` lists it.
    pub async fn record(&mut self, spec: &EventSpec, at: Timestamp) -> Result<(), EventsError> {
        if self.node_uid.is_none()
            && let Ok(Some(node)) = self.nodes.get_opt(&self.node).await
        {
            self.node_uid = node.metadata.uid;
        }
        let event = self.event_object(spec, at);
        self.events
            .create(&PostParams::default(), &event)
            .await
            .map_err(|source| EventsError::Create {
                node: self.node.clone(),
                reason: spec.reason,
                source,
            })?;
        Ok(())
    }

    /// Publishes the report: labels and annotations in one merge patch
    /// (touches nothing else). Returns the Node as it is now.
    pub async fn publish(&mut self, report: &NodeReport) -> Result<Node, EventsError> {
        let node = self
            .nodes
            .patch(
                &self.node,
                &PatchParams {
                    field_manager: Some(MANAGER.to_string()),
                    ..Default::default()
                },
                &Patch::Merge(&report.patch()),
            )
            .await
            .map_err(|source| EventsError::Publish {
                node: self.node.clone(),
                source,
            })?;
        if self.node_uid.is_none() {
            self.node_uid = node.metadata.uid.clone();
        }
        Ok(node)
    }
}

/// A few random bits so two events in the same nanosecond do not collide.
fn rand_suffix() -> u64 {
    let id = uuid::Uuid::new_v4();
    id.as_u64_pair().0 & 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::notice::Notice;

    #[tokio::test]
    async fn event_refers_to_the_node() {
        // No request is made: Client only needs a URL to exist.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let ne = NodeEvents::new(client, "w1");
        let spec = Notice::Rebooting {
            boot_id: "b".into(),
        }
        .event()
        .unwrap();
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        let ev = ne.event_object(&spec, at);
        let r = ev.involved_object;
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref()),
            (Some("Node"), Some("w1"))
        );
        assert_eq!(ev.reason.as_deref(), Some("Rebooting"));
        assert_eq!(ev.action.as_deref(), Some("Reboot"));
        assert_eq!(ev.type_.as_deref(), Some("Normal"));
        assert_eq!(ev.reporting_component.as_deref(), Some(CONTROLLER));
        assert_eq!(ev.message.as_deref(), Some("rebooting"));
        assert_eq!(ev.first_timestamp, Some(Time(at)));
        let name = ev.metadata.name.unwrap();
        assert!(name.starts_with("w1.drydock."), "{name}");
        assert!(
            crate::config::values::dns_subdomain(&name).is_ok(),
            "{name}"
        );
    }
}
