//! The resources the simulator serves: one table that drives routing,
//! discovery, error messages and validation.

use k8s_openapi::api::{apps::v1 as apps, coordination::v1 as coord, core::v1 as core};
use k8s_openapi::api::{events::v1 as events, policy::v1 as policy};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Event,
    ReplicaSet,
    DaemonSet,
    PodDisruptionBudget,
    Lease,
    EventV1,
    ConfigMap,
}

/// Static facts about one resource.
#[derive(Debug)]
pub struct KindInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `/status` subresource; the main resource then ignores status writes.
    pub status_subresource: bool,
    /// Keeps `metadata.generation`, bumped on spec changes.
    pub generation: bool,
    /// DELETE answers with the object rather than a `Status` (pods, namespaces).
    pub returns_deleted_object: bool,
    /// PUT without `metadata.resourceVersion` is accepted (not for leases).
    pub unconditional_update: bool,
    /// Field selector keys beyond `metadata.name` / `metadata.namespace`.
    pub field_selectors: &'static [&'static str],
}

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

const EVENT_V1_FIELDS: &[&str] = &[
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "reason",
    "reportingController",
    "type",
];

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Event,
        Kind::ReplicaSet,
        Kind::DaemonSet,
        Kind::PodDisruptionBudget,
        Kind::Lease,
        Kind::EventV1,
        Kind::ConfigMap,
    ];

    pub fn info(self) -> &'static KindInfo {
        match self {
            Kind::Namespace => &KindInfo {
                group: "",
                version: "v1",
                plural: "namespaces",
                singular: "namespace",
                kind: "Namespace",
                namespaced: false,
                short_names: &["ns"],
                categories: &[],
                status_subresource: true,
                generation: false,
                returns_deleted_object: true,
                unconditional_update: true,
                field_selectors: &["status.phase"],
            },
            Kind::Node => &KindInfo {
                group: "",
                version: "v1",
                plural: "nodes",
                singular: "node",
                kind: "Node",
                namespaced: false,
                short_names: &["no"],
                categories: &[],
                status_subresource: true,
                generation: false,
                returns_deleted_object: false,
                unconditional_update: true,
                field_selectors: &["spec.unschedulable"],
            },
            Kind::Pod => &KindInfo {
                group: "",
                version: "v1",
                plural: "pods",
                singular: "pod",
                kind: "Pod",
                namespaced: true,
                short_names: &["po"],
                categories: &["all"],
                status_subresource: true,
                generation: true,
                returns_deleted_object: true,
                unconditional_update: true,
                field_selectors: POD_FIELDS,
            },
            Kind::Event => &KindInfo {
                group: "",
                version: "v1",
                plural: "events",
                singular: "event",
                kind: "Event",
                namespaced: true,
                short_names: &["ev"],
                categories: &[],
                status_subresource: false,
                generation: false,
                returns_deleted_object: false,
                unconditional_update: true,
                field_selectors: EVENT_FIELDS,
            },
            Kind::ReplicaSet => &KindInfo {
                group: "apps",
                version: "v1",
                plural: "replicasets",
                singular: "replicaset",
                kind: "ReplicaSet",
                namespaced: true,
                short_names: &["rs"],
                categories: &["all"],
                status_subresource: true,
                generation: true,
                returns_deleted_object: false,
                unconditional_update: true,
                field_selectors: &["status.replicas"],
            },
            Kind::DaemonSet => &KindInfo {
                group: "apps",
                version: "v1",
                plural: "daemonsets",
                singular: "daemonset",
                kind: "DaemonSet",
                namespaced: true,
                short_names: &["ds"],
                categories: &["all"],
                status_subresource: true,
                generation: true,
                returns_deleted_object: false,
                unconditional_update: true,
                field_selectors: &[],
            },
            Kind::PodDisruptionBudget => &KindInfo {
                group: "policy",
                version: "v1",
                plural: "poddisruptionbudgets",
                singular: "poddisruptionbudget",
                kind: "PodDisruptionBudget",
                namespaced: true,
                short_names: &["pdb"],
                categories: &[],
                status_subresource: true,
                generation: true,
                returns_deleted_object: false,
                unconditional_update: true,
                field_selectors: &[],
            },
            Kind::Lease => &KindInfo {
                group: "coordination.k8s.io",
                version: "v1",
                plural: "leases",
                singular: "lease",
                kind: "Lease",
                namespaced: true,
                short_names: &[],
                categories: &[],
                status_subresource: false,
                generation: false,
                returns_deleted_object: false,
                unconditional_update: false,
                field_selectors: &[],
            },
            Kind::EventV1 => &KindInfo {
                group: "events.k8s.io",
                version: "v1",
                plural: "events",
                singular: "event",
                kind: "Event",
                namespaced: true,
                short_names: &["ev"],
                categories: &[],
                status_subresource: false,
                generation: false,
                returns_deleted_object: false,
                unconditional_update: true,
                field_selectors: EVENT_V1_FIELDS,
            },
            // kube-system/kubeadm-config, for Kubernetes upgrades.
            Kind::ConfigMap => &KindInfo {
                group: "",
                version: "v1",
                plural: "configmaps",
                singular: "configmap",
                kind: "ConfigMap",
                namespaced: true,
                short_names: &["cm"],
                categories: &[],
                status_subresource: false,
                generation: false,
                returns_deleted_object: false,
                unconditional_update: true,
                field_selectors: &[],
            },
        }
    }

    pub fn api_version(self) -> String {
        let i = self.info();
        if i.group.is_empty() {
            i.version.to_string()
        } else {
            format!("{}/{}", i.group, i.version)
        }
    }

    /// `leases.coordination.k8s.io`, or `pods` for the core group.
    pub fn qualified_resource(self) -> String {
        let i = self.info();
        if i.group.is_empty() {
            i.plural.to_string()
        } else {
            format!("{}.{}", i.plural, i.group)
        }
    }

    pub fn from_resource(group: &str, version: &str, plural: &str) -> Option<Kind> {
        Self::ALL.into_iter().find(|k| {
            let i = k.info();
            i.group == group && i.version == version && i.plural == plural
        })
    }

    pub fn from_api_version_kind(api_version: &str, kind: &str) -> Option<Kind> {
        Self::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.info().kind == kind)
    }

    /// Decode into the typed k8s-openapi struct and back: rejects wrong
    /// field types like the apiserver's decoder and drops unknown fields.
    pub fn normalize(self, v: Value) -> Result<Value, String> {
        match self {
            Kind::Namespace => roundtrip::<core::Namespace>(v),
            Kind::Node => roundtrip::<core::Node>(v),
            Kind::Pod => roundtrip::<core::Pod>(v),
            Kind::Event => roundtrip::<core::Event>(v),
            Kind::ReplicaSet => roundtrip::<apps::ReplicaSet>(v),
            Kind::DaemonSet => roundtrip::<apps::DaemonSet>(v),
            Kind::PodDisruptionBudget => roundtrip::<policy::PodDisruptionBudget>(v),
            Kind::Lease => roundtrip::<coord::Lease>(v),
            Kind::EventV1 => roundtrip::<events::Event>(v),
            Kind::ConfigMap => roundtrip::<core::ConfigMap>(v),
        }
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// A JSON string at a dotted path, or None.
pub(super) fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    value_at(v, path).and_then(Value::as_str)
}

pub(super) fn value_at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, seg| cur.get(seg))
}

pub(super) fn name_of(v: &Value) -> &str {
    str_at(v, "metadata.name").unwrap_or_default()
}

pub(super) fn namespace_of(v: &Value) -> &str {
    str_at(v, "metadata.namespace").unwrap_or_default()
}

pub(super) fn uid_of(v: &Value) -> &str {
    str_at(v, "metadata.uid").unwrap_or_default()
}

/// The value a field selector compares against; missing fields read as
/// their Go zero value, like the apiserver's field sets.
pub(super) fn field_value(kind: Kind, obj: &Value, field: &str) -> String {
    match (kind, field) {
        (Kind::Event, "source") => str_at(obj, "source.component").unwrap_or("").to_string(),
        (_, "spec.hostNetwork" | "spec.unschedulable") => value_at(obj, field)
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
        (_, "status.replicas") => value_at(obj, field)
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string(),
        _ => match value_at(obj, field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        },
    }
}
