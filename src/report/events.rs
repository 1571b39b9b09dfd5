//! What `kubectl` shows: Kubernetes Events (events.k8s.io/v1) about this
//! Node, and the node annotations `drydock.dev/state` and
//! `drydock.dev/state-reason`. Both are allowed to the kubelet's own
//! credentials (the Node authorizer grants events; NodeRestriction lets a
//! node patch annotations of its own Node object).

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use super::notice::EventSpec;

pub const STATE_ANNOTATION: &str = "drydock.dev/state";
pub const REASON_ANNOTATION: &str = "drydock.dev/state-reason";
/// `reportingController` of every event drydock writes.
pub const CONTROLLER: &str = "drydock.dev/drydock";
/// Events about cluster-scoped objects (Nodes) live in `default`, as the kubelet's do.
pub const EVENT_NAMESPACE: &str = "default";
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
    #[error("annotating node {node} with its drydock state: {source}")]
    Annotate { node: String, source: kube::Error },
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
    pub fn event_object(&self, spec: &EventSpec, at: Timestamp) -> Event {
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
            event_time: Some(MicroTime(at)),
            action: Some(spec.action.to_string()),
            reason: Some(spec.reason.to_string()),
            // The API refuses a note over 1 KiB; control characters escaped.
            note: Some(crate::text::display(&spec.note, 900)),
            type_: Some(spec.severity.as_str().to_string()),
            reporting_controller: Some(CONTROLLER.to_string()),
            reporting_instance: Some(format!("drydock-{}", self.node)),
            regarding: Some(ObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("Node".to_string()),
                name: Some(self.node.clone()),
                uid: self.node_uid.clone(),
                ..Default::default()
            }),
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

    /// Sets both annotations with one merge patch (touches nothing else).
    pub async fn annotate(&self, state: &str, reason: &str) -> Result<(), EventsError> {
        let mut annotations = BTreeMap::new();
        annotations.insert(STATE_ANNOTATION, state);
        annotations.insert(REASON_ANNOTATION, reason);
        let patch = json!({ "metadata": { "annotations": annotations } });
        self.nodes
            .patch(
                &self.node,
                &PatchParams {
                    field_manager: Some(MANAGER.to_string()),
                    ..Default::default()
                },
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|source| EventsError::Annotate {
                node: self.node.clone(),
                source,
            })?;
        Ok(())
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
        let r = ev.regarding.unwrap();
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref()),
            (Some("Node"), Some("w1"))
        );
        assert_eq!(ev.reason.as_deref(), Some("Rebooting"));
        assert_eq!(ev.action.as_deref(), Some("Reboot"));
        assert_eq!(ev.type_.as_deref(), Some("Normal"));
        assert_eq!(ev.reporting_controller.as_deref(), Some(CONTROLLER));
        let name = ev.metadata.name.unwrap();
        assert!(name.starts_with("w1.drydock."), "{name}");
        assert!(
            crate::config::values::dns_subdomain(&name).is_ok(),
            "{name}"
        );
    }
}
