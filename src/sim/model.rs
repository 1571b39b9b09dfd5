//! Small facts about objects shared by handlers and controllers: times,
//! generated names, readiness, conditions, owners, taints.

use serde_json::{Value, json};

use super::kinds::{str_at, value_at};

/// `metav1.Time`: RFC 3339, whole seconds, UTC.
pub(super) fn format_time(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(super) fn now_time() -> String {
    format_time(jiff::Timestamp::now())
}

pub(super) fn time_in(secs: i64) -> String {
    let ts = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    format_time(ts)
}

/// Random suffix from the alphabet Kubernetes uses for generated names.
pub(super) fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in uuid::Uuid::new_v4().as_bytes() {
            if out.len() == n {
                break;
            }
            out.push(ALPHABET[usize::from(*b) % ALPHABET.len()] as char);
        }
    }
    out
}

pub(super) fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(super) fn condition_status<'a>(obj: &'a Value, ctype: &str) -> Option<&'a str> {
    value_at(obj, "status.conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ctype))?
        .get("status")?
        .as_str()
}

/// Sets a condition in `status.conditions`, moving `lastTransitionTime`
/// only when the status changes. `heartbeat` is for node conditions.
pub(super) fn set_condition(
    obj: &mut Value,
    ctype: &str,
    status: &str,
    reason: &str,
    message: &str,
    heartbeat: bool,
) {
    let now = now_time();
    if !obj.get("status").is_some_and(Value::is_object) {
        obj["status"] = json!({});
    }
    if !obj["status"].get("conditions").is_some_and(Value::is_array) {
        obj["status"]["conditions"] = json!([]);
    }
    let Some(conds) = obj["status"]["conditions"].as_array_mut() else {
        return;
    };
    let pos = conds
        .iter()
        .position(|c| c.get("type").and_then(Value::as_str) == Some(ctype));
    let c = match pos {
        Some(p) => &mut conds[p],
        None => {
            conds.push(json!({"type": ctype}));
            let last = conds.len() - 1;
            &mut conds[last]
        }
    };
    if c.get("status").and_then(Value::as_str) != Some(status) {
        c["lastTransitionTime"] = json!(now);
    }
    c["status"] = json!(status);
    if reason.is_empty() {
        if let Some(m) = c.as_object_mut() {
            m.remove("reason");
        }
    } else {
        c["reason"] = json!(reason);
    }
    if message.is_empty() {
        if let Some(m) = c.as_object_mut() {
            m.remove("message");
        }
    } else {
        c["message"] = json!(message);
    }
    if heartbeat {
        c["lastHeartbeatTime"] = json!(now);
    } else {
        c["lastProbeTime"] = Value::Null;
    }
}

pub(super) fn pod_phase(pod: &Value) -> &str {
    str_at(pod, "status.phase").unwrap_or("Pending")
}

pub(super) fn is_terminating(obj: &Value) -> bool {
    value_at(obj, "metadata.deletionTimestamp").is_some_and(|v| !v.is_null())
}

pub(super) fn is_pod_ready(pod: &Value) -> bool {
    condition_status(pod, "Ready") == Some("True")
}

/// What a PDB counts as healthy: Running, Ready and not being deleted.
pub(super) fn is_pod_healthy(pod: &Value) -> bool {
    pod_phase(pod) == "Running" && is_pod_ready(pod) && !is_terminating(pod)
}

/// Counts toward a controller's replicas: not terminal, not being deleted.
pub(super) fn is_pod_active(pod: &Value) -> bool {
    !matches!(pod_phase(pod), "Succeeded" | "Failed") && !is_terminating(pod)
}

pub(super) fn is_node_ready(node: &Value) -> bool {
    condition_status(node, "Ready") == Some("True")
}

pub(super) fn node_name_of(pod: &Value) -> &str {
    str_at(pod, "spec.nodeName").unwrap_or("")
}

/// `(kind, name, uid)` of the controller owner reference.
pub(super) fn controller_of(obj: &Value) -> Option<(&str, &str, &str)> {
    value_at(obj, "metadata.ownerReferences")?
        .as_array()?
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
        .and_then(|o| {
            Some((
                o.get("kind")?.as_str()?,
                o.get("name")?.as_str()?,
                o.get("uid")?.as_str()?,
            ))
        })
}

/// Does one toleration tolerate the taint (key/operator/value/effect rules)?
fn tolerates(tol: &Value, taint: &Value) -> bool {
    let t_key = tol.get("key").and_then(Value::as_str).unwrap_or("");
    let t_eff = tol.get("effect").and_then(Value::as_str).unwrap_or("");
    let op = tol
        .get("operator")
        .and_then(Value::as_str)
        .unwrap_or("Equal");
    let key = taint.get("key").and_then(Value::as_str).unwrap_or("");
    let eff = taint.get("effect").and_then(Value::as_str).unwrap_or("");
    if !t_eff.is_empty() && t_eff != eff {
        return false;
    }
    if t_key.is_empty() {
        return op == "Exists";
    }
    if t_key != key {
        return false;
    }
    match op {
        "Exists" => true,
        _ => {
            tol.get("value").and_then(Value::as_str).unwrap_or("")
                == taint.get("value").and_then(Value::as_str).unwrap_or("")
        }
    }
}

/// Can a pod with these tolerations be placed on the node (NoSchedule and
/// NoExecute taints)? `extra` adds implicit tolerations (DaemonSet pods).
pub(super) fn tolerates_node(tolerations: &[Value], extra: &[Value], node: &Value) -> bool {
    tolerates_taints(tolerations, extra, node_taints(node), false)
}

pub(super) fn node_taints(node: &Value) -> &[Value] {
    value_at(node, "spec.taints")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Taint check; `no_execute_only` looks at NoExecute taints alone (may a
/// running pod stay?).
pub(super) fn tolerates_taints(
    tolerations: &[Value],
    extra: &[Value],
    taints: &[Value],
    no_execute_only: bool,
) -> bool {
    taints.iter().all(|taint| {
        let eff = taint.get("effect").and_then(Value::as_str).unwrap_or("");
        eff == "PreferNoSchedule"
            || (no_execute_only && eff != "NoExecute")
            || tolerations
                .iter()
                .chain(extra.iter())
                .any(|t| tolerates(t, taint))
    })
}

pub(super) fn tolerations_of(spec: &Value) -> Vec<Value> {
    spec.get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_transition_time_moves_only_on_change() {
        let mut node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}});
        set_condition(&mut node, "Ready", "True", "KubeletReady", "ok", true);
        assert_eq!(
            node["status"]["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        set_condition(&mut node, "Ready", "False", "KubeletNotReady", "down", true);
        assert_ne!(
            node["status"]["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        assert_eq!(condition_status(&node, "Ready"), Some("False"));
    }

    #[test]
    fn taints_and_tolerations() {
        let node = json!({"spec": {"taints": [
            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}});
        assert!(!tolerates_node(&[], &[], &node));
        let tol = json!({"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"});
        assert!(tolerates_node(&[tol], &[], &node));
        assert!(tolerates_node(&[json!({"operator": "Exists"})], &[], &node));
        assert_eq!(random_suffix(5).len(), 5);
    }
}
