//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io`)
//! so `kubectl get` shows the columns it shows against a real cluster
//! (nodes, pods, namespaces, leases, PDBs, DaemonSets; others get the
//! default Name / Created At).

use serde_json::{Value, json};

use super::kinds::{Kind, name_of, str_at, value_at};
use super::model::{condition_status, is_pod_ready, is_terminating};

/// Does the Accept header ask for a Table?
pub(super) fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

fn col(name: &str, ty: &str, priority: i32) -> Value {
    let mut c =
        json!({"name": name, "type": ty, "format": "", "description": name, "priority": priority});
    if name == "Name" {
        c["format"] = json!("name");
    }
    c
}

/// Go's `duration.HumanDuration`, roughly.
fn age(obj: &Value) -> String {
    age_at(obj, "metadata.creationTimestamp")
}

/// An event's last occurrence: `lastTimestamp`, else `eventTime`.
fn event_last_seen(obj: &Value) -> String {
    if str_at(obj, "lastTimestamp").is_some() {
        age_at(obj, "lastTimestamp")
    } else {
        age_at(obj, "eventTime")
    }
}

fn age_at(obj: &Value, path: &str) -> String {
    let Some(ts) = str_at(obj, path).and_then(|s| s.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".to_string();
    };
    let secs = jiff::Timestamp::now().duration_since(ts).as_secs().max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", secs % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

fn node_row(n: &Value) -> (Vec<Value>, Vec<Value>) {
    let ready = match condition_status(n, "Ready") {
        Some("True") => "Ready",
        _ => "NotReady",
    };
    let mut status = ready.to_string();
    if value_at(n, "spec.unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = n
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let addr = |t: &str| {
        value_at(n, "status.addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| x["type"] == t))
            .and_then(|x| x["address"].as_str())
            .unwrap_or("<none>")
            .to_string()
    };
    let info = |k: &str| {
        str_at(n, &format!("status.nodeInfo.{k}"))
            .unwrap_or("")
            .to_string()
    };
    (
        vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Roles", "string", 0),
            col("Age", "string", 0),
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        vec![
            json!(name_of(n)),
            json!(status),
            json!(roles),
            json!(age(n)),
            json!(info("kubeletVersion")),
            json!(addr("InternalIP")),
            json!(addr("ExternalIP")),
            json!(info("osImage")),
            json!(info("kernelVersion")),
            json!(info("containerRuntimeVersion")),
        ],
    )
}

fn pod_row(p: &Value) -> (Vec<Value>, Vec<Value>) {
    let statuses = value_at(p, "status.containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = value_at(p, "spec.containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses.iter().filter(|s| s["ready"] == true).count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|s| s["restartCount"].as_i64())
        .sum();
    let phase = str_at(p, "status.phase").unwrap_or("Pending");
    let status = if is_terminating(p) {
        "Terminating".to_string()
    } else if phase == "Pending" && !statuses.is_empty() && !is_pod_ready(p) {
        "ContainerCreating".to_string()
    } else {
        str_at(p, "status.reason").unwrap_or(phase).to_string()
    };
    let none = |s: Option<&str>| s.filter(|s| !s.is_empty()).unwrap_or("<none>").to_string();
    (
        vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            col("Age", "string", 0),
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        vec![
            json!(name_of(p)),
            json!(format!("{ready}/{total}")),
            json!(status),
            json!(restarts.to_string()),
            json!(age(p)),
            json!(none(str_at(p, "status.podIP"))),
            json!(none(str_at(p, "spec.nodeName"))),
            json!("<none>"),
            json!("<none>"),
        ],
    )
}

fn int_or_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => "N/A".to_string(),
    }
}

fn row(kind: Kind, o: &Value) -> (Vec<Value>, Vec<Value>) {
    let num = |path: &str| json!(value_at(o, path).and_then(Value::as_i64).unwrap_or(0));
    match kind {
        Kind::Node => node_row(o),
        Kind::Pod => pod_row(o),
        Kind::Namespace => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Age", "string", 0),
            ],
            vec![
                json!(name_of(o)),
                json!(str_at(o, "status.phase").unwrap_or("Active")),
                json!(age(o)),
            ],
        ),
        Kind::Lease => (
            vec![
                col("Name", "string", 0),
                col("Holder", "string", 0),
                col("Age", "string", 0),
            ],
            vec![
                json!(name_of(o)),
                json!(str_at(o, "spec.holderIdentity").unwrap_or("")),
                json!(age(o)),
            ],
        ),
        Kind::PodDisruptionBudget => (
            vec![
                col("Name", "string", 0),
                col("Min Available", "string", 0),
                col("Max Unavailable", "string", 0),
                col("Allowed Disruptions", "integer", 0),
                col("Age", "string", 0),
            ],
            vec![
                json!(name_of(o)),
                json!(int_or_string(value_at(o, "spec.minAvailable"))),
                json!(int_or_string(value_at(o, "spec.maxUnavailable"))),
                num("status.disruptionsAllowed"),
                json!(age(o)),
            ],
        ),
        Kind::DaemonSet => (
            vec![
                col("Name", "string", 0),
                col("Desired", "integer", 0),
                col("Current", "integer", 0),
                col("Ready", "integer", 0),
                col("Up-to-date", "integer", 0),
                col("Available", "integer", 0),
                col("Age", "string", 0),
            ],
            vec![
                json!(name_of(o)),
                num("status.desiredNumberScheduled"),
                num("status.currentNumberScheduled"),
                num("status.numberReady"),
                num("status.updatedNumberScheduled"),
                num("status.numberAvailable"),
                json!(age(o)),
            ],
        ),
        // As the real server prints them: `kubectl get events`.
        Kind::Event => (
            vec![
                col("Last Seen", "string", 0),
                col("Type", "string", 0),
                col("Reason", "string", 0),
                col("Object", "string", 0),
                col("Message", "string", 0),
            ],
            vec![
                json!(event_last_seen(o)),
                json!(str_at(o, "type").unwrap_or("")),
                json!(str_at(o, "reason").unwrap_or("")),
                json!(format!(
                    "{}/{}",
                    str_at(o, "involvedObject.kind")
                        .unwrap_or("")
                        .to_lowercase(),
                    str_at(o, "involvedObject.name").unwrap_or("")
                )),
                json!(str_at(o, "message").unwrap_or("")),
            ],
        ),
        _ => (
            vec![col("Name", "string", 0), col("Created At", "date", 0)],
            vec![
                json!(name_of(o)),
                json!(str_at(o, "metadata.creationTimestamp").unwrap_or("")),
            ],
        ),
    }
}

/// A `meta.k8s.io/v1` Table for the objects; `include` is the
/// `includeObject` parameter (None, Metadata (default) or Object).
pub(super) fn table(kind: Kind, objects: &[Value], list_meta: Value, include: &str) -> Value {
    let mut columns = row(kind, &json!({})).0;
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let (cols, cells) = row(kind, o);
            columns = cols;
            let object = match include {
                "None" => Value::Null,
                "Object" => {
                    let mut full = o.clone();
                    full["apiVersion"] = json!(kind.api_version());
                    full["kind"] = json!(kind.info().kind);
                    full
                }
                _ => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                }),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    })
}
