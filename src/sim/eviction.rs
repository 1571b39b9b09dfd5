//! The `pods/eviction` subresource and the disruption-budget arithmetic
//! behind it, following kube-apiserver's `EvictionREST.Create` and the
//! disruption controller:
//!
//! - terminal, Pending or already-terminating pods are deleted without
//!   looking at budgets;
//! - more than one matching PDB is a 500, none means delete;
//! - a pod that is not Ready is deleted when the budget is otherwise met;
//! - otherwise `disruptionsAllowed == 0` answers 429 TooManyRequests with
//!   a `DisruptionBudget` cause, else the pod is deleted gracefully.
//!
//! Budget status is computed from live pods rather than kept in a
//! `disruptedPods` map: an evicted pod is terminating and so no longer
//! healthy, which has the same effect on the next eviction.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::kinds::{Kind, name_of, str_at, value_at};
use super::model::{controller_of, is_pod_healthy, is_pod_ready, is_terminating, pod_phase};
use super::objects::DeleteOptions;
use super::selectors::LabelSelector;
use super::state::State;
use super::status::{ApiError, success_status};

/// The numbers in `PodDisruptionBudgetStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Budget {
    pub expected: i64,
    pub desired: i64,
    pub current: i64,
    pub allowed: i64,
}

enum IntOrPercent {
    Int(i64),
    Percent(i64),
}

fn int_or_percent(v: &Value) -> Option<IntOrPercent> {
    match v {
        Value::Number(n) => n.as_i64().map(IntOrPercent::Int),
        Value::String(s) => match s.strip_suffix('%') {
            Some(p) => p.parse().ok().map(IntOrPercent::Percent),
            None => s.parse().ok().map(IntOrPercent::Int),
        },
        _ => None,
    }
}

/// Rounds up like `intstr.GetScaledValueFromIntOrPercent(.., true)`.
fn scaled(v: &IntOrPercent, total: i64) -> i64 {
    match v {
        IntOrPercent::Int(n) => *n,
        IntOrPercent::Percent(p) => (p * total + 99) / 100,
    }
}

/// The PDB's selector; an empty or invalid one selects nothing.
pub(super) fn pdb_selector(pdb: &Value) -> Option<LabelSelector> {
    let sel = LabelSelector::from_object(value_at(pdb, "spec.selector")?)?;
    (!sel.is_empty()).then_some(sel)
}

/// Computes a budget from the pods that exist now.
pub(super) fn budget(state: &State, pdb: &Value) -> Budget {
    let ns = str_at(pdb, "metadata.namespace").unwrap_or("");
    let pods: Vec<&Value> = match pdb_selector(pdb) {
        Some(sel) => state
            .store
            .list(Kind::Pod, Some(ns))
            .into_iter()
            .filter(|p| sel.matches_object(p))
            .collect(),
        None => vec![],
    };
    let current = pods.iter().filter(|p| is_pod_healthy(p)).count() as i64;
    let min_available = value_at(pdb, "spec.minAvailable").and_then(int_or_percent);
    let max_unavailable = value_at(pdb, "spec.maxUnavailable").and_then(int_or_percent);
    let by_scale =
        max_unavailable.is_some() || matches!(min_available, Some(IntOrPercent::Percent(_)));
    let expected = if by_scale {
        // The controllers' desired scale; a pod without one counts as one.
        let mut seen = HashSet::new();
        let mut total = 0;
        for p in &pods {
            match controller_of(p) {
                Some((kind, name, uid)) => {
                    if seen.insert(uid.to_string()) {
                        total += controller_scale(state, ns, kind, name);
                    }
                }
                None => total += 1,
            }
        }
        total
    } else {
        pods.len() as i64
    };
    let desired = match (&min_available, &max_unavailable) {
        (_, Some(mu)) => (expected - scaled(mu, expected)).max(0),
        (Some(ma), None) => scaled(ma, expected),
        (None, None) => 0,
    };
    Budget {
        expected,
        desired,
        current,
        allowed: (current - desired).max(0),
    }
}

fn controller_scale(state: &State, ns: &str, kind: &str, name: &str) -> i64 {
    match kind {
        "ReplicaSet" => state
            .store
            .get(Kind::ReplicaSet, ns, name)
            .and_then(|rs| value_at(rs, "spec.replicas"))
            .and_then(Value::as_i64)
            .unwrap_or(1),
        "DaemonSet" => state
            .store
            .get(Kind::DaemonSet, ns, name)
            .and_then(|ds| value_at(ds, "status.desiredNumberScheduled"))
            .and_then(Value::as_i64)
            .unwrap_or(0),
        _ => 1,
    }
}

/// The status object a PDB should carry for `b`.
pub(super) fn budget_status(pdb: &Value, b: Budget) -> Value {
    let generation = value_at(pdb, "metadata.generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let (cstatus, reason) = if b.allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let old = value_at(pdb, "status.conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "DisruptionAllowed"));
    let transition = match old {
        Some(c) if c["status"] == cstatus => c["lastTransitionTime"].clone(),
        _ => json!(super::model::now_time()),
    };
    json!({
        "observedGeneration": generation,
        "disruptionsAllowed": b.allowed,
        "currentHealthy": b.current,
        "desiredHealthy": b.desired,
        "expectedPods": b.expected,
        "conditions": [{
            "type": "DisruptionAllowed",
            "status": cstatus,
            "reason": reason,
            "message": "",
            "observedGeneration": generation,
            "lastTransitionTime": transition,
        }],
    })
}

/// POST .../pods/{name}/eviction. Returns the success `Status` (201).
pub(super) fn evict(
    state: &mut State,
    ns: &str,
    name: &str,
    body: &[u8],
    query_dry_run: bool,
) -> Result<Value, ApiError> {
    let ev: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding Eviction: {e}")))?;
    let api_version = ev
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("policy/v1");
    let kind = ev.get("kind").and_then(Value::as_str).unwrap_or("Eviction");
    if kind != "Eviction" || !matches!(api_version, "policy/v1" | "policy/v1beta1") {
        return Err(ApiError::bad_request(format!(
            "not a Eviction object: {api_version}, Kind={kind}"
        )));
    }
    if name_of(&ev) != name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let mut opts = DeleteOptions {
        dry_run: query_dry_run,
        ..DeleteOptions::default()
    };
    opts.merge_body(ev.get("deleteOptions").unwrap_or(&Value::Null))?;

    let pod = state
        .store
        .get(Kind::Pod, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(Kind::Pod, name))?;
    let done = || Ok(success_status(201, None));

    if matches!(pod_phase(&pod), "Succeeded" | "Failed" | "Pending") || is_terminating(&pod) {
        state.delete(Kind::Pod, ns, name, &opts)?;
        return done();
    }
    let pdbs: Vec<Value> = state
        .store
        .list(Kind::PodDisruptionBudget, Some(ns))
        .into_iter()
        .filter(|pdb| pdb_selector(pdb).is_some_and(|s| s.matches_object(&pod)))
        .cloned()
        .collect();
    if pdbs.len() > 1 {
        return Err(ApiError {
            code: 500,
            reason: "",
            message: "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".to_string(),
            details: None,
        });
    }
    if let Some(pdb) = pdbs.first() {
        let b = budget(state, pdb);
        let unready_ok = !is_pod_ready(&pod) && b.current >= b.desired && b.desired > 0;
        if !unready_ok && b.allowed == 0 {
            return Err(ApiError::disruption_budget(
                name_of(pdb),
                b.desired,
                b.current,
            ));
        }
    }
    state.delete(Kind::Pod, ns, name, &opts)?;
    done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_rounds_up() {
        assert_eq!(scaled(&IntOrPercent::Percent(50), 3), 2);
        assert_eq!(scaled(&IntOrPercent::Percent(34), 3), 2);
        assert_eq!(scaled(&IntOrPercent::Int(1), 3), 1);
        assert!(matches!(
            int_or_percent(&json!("25%")),
            Some(IntOrPercent::Percent(25))
        ));
        assert!(int_or_percent(&json!("x%")).is_none());
    }
}
