//! The control loop that stands in for kube-controller-manager, the
//! scheduler and the kubelets' pod lifecycle:
//!
//! - graceful deletion completes when the grace period ends, but only once
//!   the pod's node is Ready again (a down kubelet never confirms a kill);
//! - pods bound to a deleted node, and pods whose ReplicaSet/DaemonSet is
//!   gone, are garbage-collected;
//! - the scheduler binds unscheduled pods to Ready, schedulable nodes whose
//!   taints they tolerate, spreading a controller's pods;
//! - ReplicaSets replace pods that are terminating or gone (on another node
//!   where possible), DaemonSets keep one pod per eligible node;
//! - ReplicaSet, DaemonSet and PodDisruptionBudget status stay current.
//!
//! [`reconcile`] is level-triggered: it runs after every write (inside the
//! same lock) and from a background task at the next timer.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::eviction::{budget, budget_status};
use super::kinds::{Kind, name_of, namespace_of, uid_of, value_at};
use super::kubelet::start_due_pods;
use super::model::{
    controller_of, is_node_ready, is_pod_active, is_pod_ready, is_terminating, node_name_of,
    random_suffix, set_condition, tolerates_node, tolerations_of,
};
use super::objects::DeleteOptions;
use super::state::State;

/// Runs every controller until nothing changes; returns the next timer.
pub fn reconcile(state: &mut State, now: Instant) -> Option<Instant> {
    for _ in 0..10 {
        let before = state.store.rv();
        finish_deletions(state, now);
        collect_garbage(state);
        start_due_pods(state, now);
        schedule(state, now);
        replica_sets(state, now);
        daemon_sets(state, now);
        update_statuses(state);
        if state.store.rv() == before {
            break;
        }
    }
    state
        .deletions
        .values()
        .chain(state.starts.values())
        .filter(|t| **t > now)
        .min()
        .copied()
}

fn has_finalizers(obj: &Value) -> bool {
    value_at(obj, "metadata.finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

fn finish_deletions(state: &mut State, now: Instant) {
    if !state.deletions.values().any(|t| *t <= now) {
        return;
    }
    for pod in state.store.list_owned(Kind::Pod, None) {
        let uid = uid_of(&pod).to_string();
        let Some(at) = state.deletions.get(&uid).copied() else {
            continue;
        };
        if at > now || has_finalizers(&pod) {
            continue;
        }
        let node = node_name_of(&pod);
        let kubelet_alive = node.is_empty()
            || state
                .store
                .get(Kind::Node, "", node)
                .is_none_or(is_node_ready);
        if kubelet_alive {
            state.deletions.remove(&uid);
            state
                .store
                .remove(Kind::Pod, namespace_of(&pod), name_of(&pod));
        }
    }
    let live: HashSet<String> = state
        .store
        .list(Kind::Pod, None)
        .into_iter()
        .map(|p| uid_of(p).to_string())
        .collect();
    state.deletions.retain(|uid, _| live.contains(uid));
}

fn collect_garbage(state: &mut State) {
    let nodes: HashSet<String> = state
        .store
        .list(Kind::Node, None)
        .into_iter()
        .map(|n| name_of(n).to_string())
        .collect();
    let owners: HashSet<String> = state
        .store
        .list(Kind::ReplicaSet, None)
        .into_iter()
        .chain(state.store.list(Kind::DaemonSet, None))
        .map(|o| uid_of(o).to_string())
        .collect();
    for pod in state.store.list_owned(Kind::Pod, None) {
        let (ns, name) = (namespace_of(&pod), name_of(&pod));
        let node = node_name_of(&pod);
        if !node.is_empty() && !nodes.contains(node) {
            // PodGC: the node object is gone, so is the pod.
            state.deletions.remove(uid_of(&pod));
            state.store.remove(Kind::Pod, ns, name);
            continue;
        }
        let orphaned = controller_of(&pod).is_some_and(|(kind, _, uid)| {
            matches!(kind, "ReplicaSet" | "DaemonSet") && !owners.contains(uid)
        });
        if orphaned && !is_terminating(&pod) {
            let _ = state.delete_pod(ns, name, &DeleteOptions::default());
        }
    }
}

/// Pods of one controller per node, to spread replicas.
fn owner_counts(pods: &[Value], owner_uid: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for p in pods {
        if is_pod_active(p) && controller_of(p).is_some_and(|(_, _, u)| u == owner_uid) {
            *m.entry(node_name_of(p).to_string()).or_default() += 1;
        }
    }
    m
}

/// Picks a node like a (very) simple scheduler would.
fn pick_node(
    state: &State,
    tolerations: &[Value],
    owner_uid: Option<&str>,
    avoid: &HashSet<String>,
) -> Option<String> {
    let pods = state.store.list_owned(Kind::Pod, None);
    let spread = owner_uid
        .map(|u| owner_counts(&pods, u))
        .unwrap_or_default();
    let mut load: HashMap<String, usize> = HashMap::new();
    for p in pods.iter().filter(|p| is_pod_active(p)) {
        *load.entry(node_name_of(p).to_string()).or_default() += 1;
    }
    state
        .store
        .list(Kind::Node, None)
        .into_iter()
        .filter(|n| {
            is_node_ready(n)
                && value_at(n, "spec.unschedulable").and_then(Value::as_bool) != Some(true)
                && tolerates_node(tolerations, &[], n)
        })
        .map(|n| name_of(n).to_string())
        .min_by_key(|n| {
            (
                avoid.contains(n),
                spread.get(n).copied().unwrap_or(0),
                load.get(n).copied().unwrap_or(0),
                n.clone(),
            )
        })
}

fn bind(state: &mut State, mut pod: Value, node: &str, now: Instant) {
    pod["spec"]["nodeName"] = json!(node);
    set_condition(&mut pod, "PodScheduled", "True", "", "", false);
    let at = now + state.opts.pod_start_delay;
    let pod = state.write(Kind::Pod, pod);
    state.starts.insert(uid_of(&pod).to_string(), at);
}

fn schedule(state: &mut State, now: Instant) {
    for pod in state.store.list_owned(Kind::Pod, None) {
        if !node_name_of(&pod).is_empty() || !is_pod_active(&pod) {
            continue;
        }
        let tol = pod.get("spec").map(tolerations_of).unwrap_or_default();
        let owner = controller_of(&pod).map(|(_, _, u)| u.to_string());
        if let Some(node) = pick_node(state, &tol, owner.as_deref(), &HashSet::new()) {
            bind(state, pod, &node, now);
        }
    }
}

/// A new pod from a controller's template.
pub(super) fn pod_from_template(
    owner_kind: &str,
    owner: &Value,
    extra_tolerations: &[Value],
) -> Value {
    let name = name_of(owner);
    let tmpl = value_at(owner, "spec.template")
        .cloned()
        .unwrap_or(json!({}));
    let mut spec = tmpl
        .get("spec")
        .cloned()
        .unwrap_or(json!({"containers": []}));
    for (k, v) in [
        ("terminationGracePeriodSeconds", json!(30)),
        ("restartPolicy", json!("Always")),
        ("schedulerName", json!("default-scheduler")),
        ("dnsPolicy", json!("ClusterFirst")),
    ] {
        if spec.get(k).is_none_or(Value::is_null) {
            spec[k] = v;
        }
    }
    if !extra_tolerations.is_empty() {
        let mut tol = tolerations_of(&spec);
        tol.extend(extra_tolerations.iter().cloned());
        spec["tolerations"] = json!(tol);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{name}-{}", random_suffix(5)),
            "generateName": format!("{name}-"),
            "namespace": namespace_of(owner),
            "labels": tmpl.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            "annotations": tmpl.pointer("/metadata/annotations").cloned().unwrap_or(json!({})),
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": owner_kind,
                "name": name,
                "uid": uid_of(owner),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    })
}

fn replica_sets(state: &mut State, now: Instant) {
    for rs in state.store.list_owned(Kind::ReplicaSet, None) {
        if is_terminating(&rs) {
            continue;
        }
        let uid = uid_of(&rs).to_string();
        let want = value_at(&rs, "spec.replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let owned: Vec<Value> = state
            .store
            .list_owned(Kind::Pod, Some(namespace_of(&rs)))
            .into_iter()
            .filter(|p| controller_of(p).is_some_and(|(_, _, u)| u == uid))
            .collect();
        let active: Vec<&Value> = owned.iter().filter(|p| is_pod_active(p)).collect();
        let have = active.len() as i64;
        if have < want {
            // Replace away from where pods are being removed.
            let avoid: HashSet<String> = owned
                .iter()
                .filter(|p| is_terminating(p))
                .map(|p| node_name_of(p).to_string())
                .collect();
            for _ in have..want {
                let pod = pod_from_template("ReplicaSet", &rs, &[]);
                let tol = pod.get("spec").map(tolerations_of).unwrap_or_default();
                let node = pick_node(state, &tol, Some(&uid), &avoid);
                let pod = state.insert(Kind::Pod, pod);
                if let Some(node) = node {
                    bind(state, pod, &node, now);
                }
            }
        } else if have > want {
            let mut extra: Vec<&Value> = active;
            extra.sort_by_key(|p| (is_pod_ready(p), std::cmp::Reverse(name_of(p).to_string())));
            for p in extra.into_iter().take((have - want) as usize) {
                let _ = state.delete_pod(namespace_of(p), name_of(p), &DeleteOptions::default());
            }
        }
    }
}

/// Tolerations the DaemonSet controller adds to its pods.
fn daemon_tolerations() -> Vec<Value> {
    let t = |key: &str, effect: &str| json!({"key": format!("node.kubernetes.io/{key}"), "operator": "Exists", "effect": effect});
    vec![
        t("not-ready", "NoExecute"),
        t("unreachable", "NoExecute"),
        t("disk-pressure", "NoSchedule"),
        t("memory-pressure", "NoSchedule"),
        t("pid-pressure", "NoSchedule"),
        t("unschedulable", "NoSchedule"),
    ]
}

/// (should run a new pod, may keep an existing one) for a node.
fn daemon_fit(tol: &[Value], node: &Value) -> (bool, bool) {
    let extra = daemon_tolerations();
    let run = tolerates_node(tol, &extra, node);
    let mut no_exec = node.clone();
    if let Some(taints) = no_exec["spec"]["taints"].as_array_mut() {
        taints.retain(|t| t["effect"] == "NoExecute");
    }
    (run, run || tolerates_node(tol, &extra, &no_exec))
}

fn daemon_sets(state: &mut State, now: Instant) {
    let nodes = state.store.list_owned(Kind::Node, None);
    for ds in state.store.list_owned(Kind::DaemonSet, None) {
        if is_terminating(&ds) {
            continue;
        }
        let uid = uid_of(&ds).to_string();
        let tol = value_at(&ds, "spec.template.spec")
            .map(tolerations_of)
            .unwrap_or_default();
        let owned: Vec<Value> = state
            .store
            .list_owned(Kind::Pod, Some(namespace_of(&ds)))
            .into_iter()
            .filter(|p| controller_of(p).is_some_and(|(_, _, u)| u == uid))
            .collect();
        for node in &nodes {
            let node_name = name_of(node);
            let (run, keep) = daemon_fit(&tol, node);
            let here: Vec<&Value> = owned
                .iter()
                .filter(|p| node_name_of(p) == node_name)
                .collect();
            let present = here
                .iter()
                .any(|p| !matches!(super::model::pod_phase(p), "Succeeded" | "Failed"));
            if run && !present {
                let mut pod = pod_from_template("DaemonSet", &ds, &daemon_tolerations());
                pod["spec"]["nodeName"] = json!(node_name);
                set_condition(&mut pod, "PodScheduled", "True", "", "", false);
                let pod = state.insert(Kind::Pod, pod);
                let at = now + state.opts.pod_start_delay;
                state.starts.insert(uid_of(&pod).to_string(), at);
            } else if !keep {
                for p in here.iter().filter(|p| !is_terminating(p)) {
                    let _ =
                        state.delete_pod(namespace_of(p), name_of(p), &DeleteOptions::default());
                }
            }
        }
    }
}

fn write_status(state: &mut State, kind: Kind, obj: &Value, status: Value) {
    if obj.get("status") == Some(&status) {
        return;
    }
    let mut new = obj.clone();
    new["status"] = status;
    state.write(kind, new);
}

fn update_statuses(state: &mut State) {
    let pods = state.store.list_owned(Kind::Pod, None);
    let owned_by = |uid: &str| -> Vec<&Value> {
        pods.iter()
            .filter(|p| controller_of(p).is_some_and(|(_, _, u)| u == uid))
            .collect()
    };
    for rs in state.store.list_owned(Kind::ReplicaSet, None) {
        let owned = owned_by(uid_of(&rs));
        let active: Vec<&&Value> = owned.iter().filter(|p| is_pod_active(p)).collect();
        let ready = active.iter().filter(|p| is_pod_ready(p)).count();
        let status = json!({
            "replicas": active.len(),
            "fullyLabeledReplicas": active.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": value_at(&rs, "metadata.generation").cloned().unwrap_or(json!(1)),
        });
        write_status(state, Kind::ReplicaSet, &rs, status);
    }
    let nodes = state.store.list_owned(Kind::Node, None);
    for ds in state.store.list_owned(Kind::DaemonSet, None) {
        let owned = owned_by(uid_of(&ds));
        let tol = value_at(&ds, "spec.template.spec")
            .map(tolerations_of)
            .unwrap_or_default();
        let (mut desired, mut current, mut ready, mut misscheduled) = (0, 0, 0, 0);
        for node in &nodes {
            let (run, _) = daemon_fit(&tol, node);
            let pod = owned
                .iter()
                .find(|p| node_name_of(p) == name_of(node) && is_pod_active(p));
            match (run, pod) {
                (true, Some(p)) => {
                    desired += 1;
                    current += 1;
                    if is_pod_ready(p) && super::model::pod_phase(p) == "Running" {
                        ready += 1;
                    }
                }
                (true, None) => desired += 1,
                (false, Some(_)) => misscheduled += 1,
                (false, None) => {}
            }
        }
        let status = json!({
            "currentNumberScheduled": current,
            "desiredNumberScheduled": desired,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "numberAvailable": ready,
            "numberUnavailable": desired - ready,
            "updatedNumberScheduled": current,
            "observedGeneration": value_at(&ds, "metadata.generation").cloned().unwrap_or(json!(1)),
        });
        let mut status = status;
        if desired - ready == 0
            && let Some(m) = status.as_object_mut()
        {
            m.remove("numberUnavailable");
        }
        write_status(state, Kind::DaemonSet, &ds, status);
    }
    for pdb in state.store.list_owned(Kind::PodDisruptionBudget, None) {
        let b = budget(state, &pdb);
        let status = budget_status(&pdb, b);
        write_status(state, Kind::PodDisruptionBudget, &pdb, status);
    }
}
