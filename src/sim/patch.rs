//! PATCH bodies: RFC 6902 JSON patch and RFC 7386 merge patch (via the
//! `json-patch` crate), and a strategic merge patch that covers what
//! drydock, kubectl and kube-rs send:
//!
//! - maps merge recursively, `null` deletes a key;
//! - lists with a Kubernetes patch merge key merge element-wise by that key
//!   (`conditions`/`addresses` by `type`, `ownerReferences` by `uid`,
//!   `containers`/`initContainers`/`volumes`/`env` by `name`,
//!   `volumeMounts` by `mountPath`, `ports` by `containerPort`), chosen by
//!   field name wherever it appears; `finalizers` merge as a set;
//! - `$patch: delete` / `$patch: replace` directives, and
//!   `$deleteFromPrimitiveList/<field>`; `$setElementOrder/*` and
//!   `$retainKeys` are accepted and ignored (order is not kept);
//! - every other list is replaced.
//!
//! Server-side apply (`application/apply-patch+yaml`) is approximated as a
//! strategic merge that creates the object when missing: no managedFields,
//! no field-ownership conflicts.

use serde_json::{Map, Value};

use super::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub(super) fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Parses a patch body: JSON, or YAML for server-side apply.
pub(super) fn parse_body(pt: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    match pt {
        PatchType::Apply => serde_saphyr::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}"))),
        _ => serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}"))),
    }
}

/// Applies `patch` (already parsed) to `target`.
pub(super) fn apply(pt: PatchType, target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut doc = target.clone();
    match pt {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut doc, &ops)
                .map_err(|e| ApiError::unprocessable(e.to_string()))?;
        }
        PatchType::Merge => json_patch::merge(&mut doc, patch),
        PatchType::Strategic | PatchType::Apply => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "strategic merge patch must be a JSON object",
                ));
            }
            strategic_merge(&mut doc, patch);
        }
    }
    Ok(doc)
}

fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "conditions" | "addresses" => Some("type"),
        "ownerReferences" => Some("uid"),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

fn is_primitive_set(field: &str) -> bool {
    field == "finalizers"
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn directive(v: &Value) -> Option<&str> {
    v.get("$patch").and_then(Value::as_str)
}

/// Strategic merge of `patch` into `target` (see module docs).
pub(super) fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if directive(patch) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(tm) = target.as_object_mut() else {
        return;
    };
    for (k, pv) in pm {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (tm.get_mut(field), pv.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        match pv {
            Value::Null => {
                tm.remove(k);
            }
            Value::Object(_) if directive(pv) == Some("delete") => {
                tm.remove(k);
            }
            Value::Object(_) => {
                let slot = tm.entry(k.clone()).or_insert(Value::Null);
                strategic_merge(slot, pv);
            }
            Value::Array(items) => {
                if let Some(mk) = merge_key(k) {
                    let slot = tm.entry(k.clone()).or_insert(Value::Array(vec![]));
                    merge_list_by_key(slot, items, mk);
                } else if is_primitive_set(k) {
                    let slot = tm.entry(k.clone()).or_insert(Value::Array(vec![]));
                    if let Value::Array(list) = slot {
                        for it in items {
                            if !list.contains(it) {
                                list.push(it.clone());
                            }
                        }
                    } else {
                        *slot = pv.clone();
                    }
                } else {
                    tm.insert(k.clone(), strip_directives(pv));
                }
            }
            other => {
                tm.insert(k.clone(), other.clone());
            }
        }
    }
}

fn merge_list_by_key(slot: &mut Value, items: &[Value], mk: &str) {
    if items.iter().any(|i| directive(i) == Some("replace")) {
        *slot = Value::Array(
            items
                .iter()
                .filter(|i| directive(i) != Some("replace"))
                .map(strip_directives)
                .collect(),
        );
        return;
    }
    if !slot.is_array() {
        *slot = Value::Array(vec![]);
    }
    let Value::Array(list) = slot else {
        return;
    };
    for item in items {
        let key = item.get(mk).cloned();
        let pos = key
            .as_ref()
            .and_then(|kv| list.iter().position(|e| e.get(mk) == Some(kv)));
        match (directive(item), pos) {
            (Some("delete"), Some(p)) => {
                list.remove(p);
            }
            (Some("delete"), None) => {}
            (_, Some(p)) => strategic_merge(&mut list[p], item),
            (_, None) => list.push(strip_directives(item)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_conditions_by_type_and_deletes_nulls() {
        let mut node = json!({"spec": {"unschedulable": true},
            "status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "DiskPressure", "status": "False"}]}});
        let patch = json!({"spec": {"unschedulable": null},
            "status": {"$setElementOrder/conditions": [{"type": "Ready"}],
                       "conditions": [{"type": "Ready", "status": "False"}]}});
        strategic_merge(&mut node, &patch);
        assert_eq!(
            node,
            json!({"spec": {}, "status": {"conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "DiskPressure", "status": "False"}]}})
        );
    }

    #[test]
    fn strategic_delete_directive_and_replace_lists() {
        let mut pod = json!({"metadata": {"finalizers": ["a"], "ownerReferences": [{"uid": "1"}, {"uid": "2"}]},
            "spec": {"tolerations": [{"key": "x"}]}});
        let patch = json!({"metadata": {"finalizers": ["b"],
                "ownerReferences": [{"uid": "1", "$patch": "delete"}]},
            "spec": {"tolerations": [{"key": "y"}]}});
        strategic_merge(&mut pod, &patch);
        assert_eq!(
            pod,
            json!({"metadata": {"finalizers": ["a", "b"], "ownerReferences": [{"uid": "2"}]},
                   "spec": {"tolerations": [{"key": "y"}]}})
        );
    }

    #[test]
    fn json_and_merge_patches() {
        let obj = json!({"metadata": {"annotations": {"a": "1"}}});
        let p = json!([{"op": "add", "path": "/metadata/annotations/b", "value": "2"}]);
        let out = apply(PatchType::Json, &obj, &p).ok();
        assert_eq!(
            out,
            Some(json!({"metadata": {"annotations": {"a": "1", "b": "2"}}}))
        );
        let bad = json!([{"op": "test", "path": "/metadata/annotations/a", "value": "9"}]);
        assert_eq!(
            apply(PatchType::Json, &obj, &bad).map_err(|e| e.code).err(),
            Some(422)
        );
        let m = json!({"metadata": {"annotations": {"a": null, "c": "3"}}});
        let out = apply(PatchType::Merge, &obj, &m).ok();
        assert_eq!(out, Some(json!({"metadata": {"annotations": {"c": "3"}}})));
    }
}
