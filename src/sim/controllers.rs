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
//! same lock) and from a background task at the next timer. Scans borrow
//! the store and collect small plans; writes happen afterwards.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::eviction::{budget, budget_status};
use super::kinds::{Kind, name_of, namespace_of, uid_of, value_at};
use super::kubelet::start_due_pods;
use super::model::{
    controller_of, is_node_ready, is_pod_active, is_pod_ready, is_terminating, node_name_of,
    node_taints, pod_phase, random_suffix, set_condition, tolerates_node, tolerates_taints,
    tolerations_of,
};
use super::objects::{DeleteOptions, default_pod_spec};
use super::state::State;
use super::store::{Change, EventType};

type Key = (String, String);

fn key(v: &Value) -> Key {
    (namespace_of(v).to_string(), name_of(v).to_string())
}

/// Does a change affect what the controllers compute? Leases, Events and
/// Namespaces never do; a Node only through its spec or conditions.
fn relevant(c: &Change) -> bool {
    match c.kind {
        Kind::Pod | Kind::ReplicaSet | Kind::DaemonSet | Kind::PodDisruptionBudget => true,
        Kind::Node => match (&c.prev, c.ty) {
            (Some(prev), EventType::Modified) => {
                prev.get("spec") != c.object.get("spec")
                    || prev.pointer("/status/conditions") != c.object.pointer("/status/conditions")
            }
            _ => true,
        },
        _ => false,
    }
}

/// Runs every controller until nothing changes; returns the next timer.
pub(super) fn reconcile(state: &mut State, now: Instant) -> Option<Instant> {
    let timers_due = state
        .deletions
        .values()
        .chain(state.starts.values())
        .any(|t| *t <= now);
    let changed = state
        .store
        .since(state.reconciled_rv)
        .map_or(true, |cs| cs.iter().any(|c| relevant(c)));
    if timers_due || changed {
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
    }
    state.reconciled_rv = state.store.rv();
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
    let mut done: Vec<(Key, String)> = vec![];
    let mut live = HashSet::new();
    for pod in state.store.list(Kind::Pod, None) {
        let uid = uid_of(pod);
        live.insert(uid.to_string());
        let Some(at) = state.deletions.get(uid) else {
            continue;
        };
        if *at > now || has_finalizers(pod) {
            continue;
        }
        let node = node_name_of(pod);
        let kubelet_alive = node.is_empty()
            || state
                .store
                .get(Kind::Node, "", node)
                .is_none_or(is_node_ready);
        if kubelet_alive {
            done.push((key(pod), uid.to_string()));
        }
    }
    state.deletions.retain(|uid, _| live.contains(uid));
    for ((ns, name), uid) in done {
        state.deletions.remove(&uid);
        state.store.remove(Kind::Pod, &ns, &name);
    }
}

fn collect_garbage(state: &mut State) {
    let nodes: HashSet<&str> = state
        .store
        .list(Kind::Node, None)
        .into_iter()
        .map(name_of)
        .collect();
    let owners: HashSet<&str> = state
        .store
        .list(Kind::ReplicaSet, None)
        .into_iter()
        .chain(state.store.list(Kind::DaemonSet, None))
        .map(uid_of)
        .collect();
    let mut gone: Vec<(Key, String)> = vec![];
    let mut orphans: Vec<Key> = vec![];
    for pod in state.store.list(Kind::Pod, None) {
        let node = node_name_of(pod);
        if !node.is_empty() && !nodes.contains(node) {
            // PodGC: the node object is gone, so is the pod.
            gone.push((key(pod), uid_of(pod).to_string()));
            continue;
        }
        let orphaned = controller_of(pod).is_some_and(|(kind, _, uid)| {
            matches!(kind, "ReplicaSet" | "DaemonSet") && !owners.contains(uid)
        });
        if orphaned && !is_terminating(pod) {
            orphans.push(key(pod));
        }
    }
    for ((ns, name), uid) in gone {
        state.deletions.remove(&uid);
        state.store.remove(Kind::Pod, &ns, &name);
    }
    for (ns, name) in orphans {
        let _ = state.delete_pod(&ns, &name, &DeleteOptions::default());
    }
}

/// Active pods per node and per (controller, node), for placement.
#[derive(Default)]
struct Load {
    node: HashMap<String, usize>,
    owner: HashMap<(String, String), usize>,
}

impl Load {
    fn build(state: &State) -> Self {
        let mut l = Self::default();
        for p in state.store.list(Kind::Pod, None) {
            if is_pod_active(p) && !node_name_of(p).is_empty() {
                let owner = controller_of(p).map(|(_, _, u)| u);
                l.add(owner, node_name_of(p));
            }
        }
        l
    }

    fn add(&mut self, owner: Option<&str>, node: &str) {
        *self.node.entry(node.to_string()).or_default() += 1;
        if let Some(o) = owner {
            *self
                .owner
                .entry((o.to_string(), node.to_string()))
                .or_default() += 1;
        }
    }
}

/// Picks a node like a (very) simple scheduler: Ready, not cordoned,
/// taints tolerated; then away from `avoid`, spreading the controller's
/// pods, least loaded, by name.
fn pick_node(
    state: &State,
    load: &Load,
    tolerations: &[Value],
    owner: Option<&str>,
    avoid: &HashSet<String>,
) -> Option<String> {
    state
        .store
        .list(Kind::Node, None)
        .into_iter()
        .filter(|n| {
            is_node_ready(n)
                && value_at(n, "spec.unschedulable").and_then(Value::as_bool) != Some(true)
                && tolerates_node(tolerations, &[], n)
        })
        .map(name_of)
        .min_by_key(|n| {
            let spread = owner
                .and_then(|o| load.owner.get(&(o.to_string(), n.to_string())))
                .copied()
                .unwrap_or(0);
            (
                avoid.contains(*n),
                spread,
                load.node.get(*n).copied().unwrap_or(0),
                *n,
            )
        })
        .map(str::to_string)
}

fn bind(state: &mut State, mut pod: Value, node: &str, now: Instant) {
    pod["spec"]["nodeName"] = json!(node);
    set_condition(&mut pod, "PodScheduled", "True", "", "", false);
    let at = now + state.opts.pod_start_delay;
    let pod = state.write(Kind::Pod, pod);
    state.starts.insert(uid_of(&pod).to_string(), at);
}

fn schedule(state: &mut State, now: Instant) {
    let pending: Vec<Value> = state
        .store
        .list(Kind::Pod, None)
        .into_iter()
        .filter(|p| node_name_of(p).is_empty() && is_pod_active(p))
        .cloned()
        .collect();
    if pending.is_empty() {
        return;
    }
    let mut load = Load::build(state);
    for pod in pending {
        let tol = pod.get("spec").map(tolerations_of).unwrap_or_default();
        let owner = controller_of(&pod).map(|(_, _, u)| u.to_string());
        if let Some(node) = pick_node(state, &load, &tol, owner.as_deref(), &HashSet::new()) {
            load.add(owner.as_deref(), &node);
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
    default_pod_spec(&mut spec);
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

/// Pods of a namespace grouped by controller uid.
fn owned_pods<'a>(state: &'a State, ns: Option<&str>) -> HashMap<&'a str, Vec<&'a Value>> {
    let mut m: HashMap<&str, Vec<&Value>> = HashMap::new();
    for p in state.store.list(Kind::Pod, ns) {
        if let Some((_, _, uid)) = controller_of(p) {
            m.entry(uid).or_default().push(p);
        }
    }
    m
}

struct RsPlan {
    rs: Value,
    create: usize,
    avoid: HashSet<String>,
    delete: Vec<Key>,
}

fn replica_sets(state: &mut State, now: Instant) {
    let mut plans = vec![];
    {
        let owned = owned_pods(state, None);
        for rs in state.store.list(Kind::ReplicaSet, None) {
            if is_terminating(rs) {
                continue;
            }
            let want = value_at(rs, "spec.replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .max(0) as usize;
            let pods = owned.get(uid_of(rs)).map(Vec::as_slice).unwrap_or(&[]);
            let mut active: Vec<&&Value> = pods.iter().filter(|p| is_pod_active(p)).collect();
            if active.len() == want {
                continue;
            }
            let avoid = pods
                .iter()
                .filter(|p| is_terminating(p))
                .map(|p| node_name_of(p).to_string())
                .collect();
            // Scale down: unready first, then newest names.
            active.sort_by_key(|p| (is_pod_ready(p), std::cmp::Reverse(name_of(p))));
            let delete = active
                .iter()
                .take(active.len().saturating_sub(want))
                .map(|p| key(p))
                .collect();
            plans.push(RsPlan {
                rs: rs.clone(),
                create: want.saturating_sub(active.len()),
                avoid,
                delete,
            });
        }
    }
    if plans.is_empty() {
        return;
    }
    let mut load = Load::build(state);
    for plan in plans {
        let uid = uid_of(&plan.rs).to_string();
        for _ in 0..plan.create {
            let pod = pod_from_template("ReplicaSet", &plan.rs, &[]);
            let tol = pod.get("spec").map(tolerations_of).unwrap_or_default();
            let node = pick_node(state, &load, &tol, Some(&uid), &plan.avoid);
            let pod = state.insert(Kind::Pod, pod);
            if let Some(node) = node {
                load.add(Some(&uid), &node);
                bind(state, pod, &node, now);
            }
        }
        for (ns, name) in plan.delete {
            let _ = state.delete_pod(&ns, &name, &DeleteOptions::default());
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
fn daemon_fit(tol: &[Value], extra: &[Value], node: &Value) -> (bool, bool) {
    let taints = node_taints(node);
    (
        tolerates_taints(tol, extra, taints, false),
        tolerates_taints(tol, extra, taints, true),
    )
}

fn daemon_sets(state: &mut State, now: Instant) {
    let extra = daemon_tolerations();
    let mut create: Vec<(Value, String)> = vec![];
    let mut delete: Vec<Key> = vec![];
    {
        let owned = owned_pods(state, None);
        let nodes = state.store.list(Kind::Node, None);
        for ds in state.store.list(Kind::DaemonSet, None) {
            if is_terminating(ds) {
                continue;
            }
            let tol = value_at(ds, "spec.template.spec")
                .map(tolerations_of)
                .unwrap_or_default();
            let pods = owned.get(uid_of(ds)).map(Vec::as_slice).unwrap_or(&[]);
            for node in &nodes {
                let (run, keep) = daemon_fit(&tol, &extra, node);
                let here = pods.iter().filter(|p| node_name_of(p) == name_of(node));
                let present = here
                    .clone()
                    .any(|p| !matches!(pod_phase(p), "Succeeded" | "Failed"));
                if run && !present {
                    create.push((ds.clone(), name_of(node).to_string()));
                } else if !keep {
                    delete.extend(here.filter(|p| !is_terminating(p)).map(|p| key(p)));
                }
            }
        }
    }
    for (ds, node) in create {
        let mut pod = pod_from_template("DaemonSet", &ds, &extra);
        pod["spec"]["nodeName"] = json!(node);
        set_condition(&mut pod, "PodScheduled", "True", "", "", false);
        let pod = state.insert(Kind::Pod, pod);
        let at = now + state.opts.pod_start_delay;
        state.starts.insert(uid_of(&pod).to_string(), at);
    }
    for (ns, name) in delete {
        let _ = state.delete_pod(&ns, &name, &DeleteOptions::default());
    }
}

fn with_status(obj: &Value, status: Value) -> Option<Value> {
    if obj.get("status") == Some(&status) {
        return None;
    }
    let mut new = obj.clone();
    new["status"] = status;
    Some(new)
}

fn generation(obj: &Value) -> Value {
    value_at(obj, "metadata.generation")
        .cloned()
        .unwrap_or(json!(1))
}

fn update_statuses(state: &mut State) {
    let mut writes: Vec<(Kind, Value)> = vec![];
    {
        let owned = owned_pods(state, None);
        for rs in state.store.list(Kind::ReplicaSet, None) {
            let pods = owned.get(uid_of(rs)).map(Vec::as_slice).unwrap_or(&[]);
            let active = pods.iter().filter(|p| is_pod_active(p)).count();
            let ready = pods
                .iter()
                .filter(|p| is_pod_active(p) && is_pod_ready(p))
                .count();
            let status = json!({
                "replicas": active,
                "fullyLabeledReplicas": active,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "observedGeneration": generation(rs),
            });
            if let Some(new) = with_status(rs, status) {
                writes.push((Kind::ReplicaSet, new));
            }
        }
        let extra = daemon_tolerations();
        let nodes = state.store.list(Kind::Node, None);
        for ds in state.store.list(Kind::DaemonSet, None) {
            let pods = owned.get(uid_of(ds)).map(Vec::as_slice).unwrap_or(&[]);
            let tol = value_at(ds, "spec.template.spec")
                .map(tolerations_of)
                .unwrap_or_default();
            let (mut desired, mut current, mut ready, mut misscheduled) = (0, 0, 0, 0);
            for node in &nodes {
                let (run, _) = daemon_fit(&tol, &extra, node);
                let pod = pods
                    .iter()
                    .find(|p| node_name_of(p) == name_of(node) && is_pod_active(p));
                match (run, pod) {
                    (true, Some(p)) => {
                        desired += 1;
                        current += 1;
                        if is_pod_ready(p) && pod_phase(p) == "Running" {
                            ready += 1;
                        }
                    }
                    (true, None) => desired += 1,
                    (false, Some(_)) => misscheduled += 1,
                    (false, None) => {}
                }
            }
            let mut status = json!({
                "currentNumberScheduled": current,
                "desiredNumberScheduled": desired,
                "numberMisscheduled": misscheduled,
                "numberReady": ready,
                "numberAvailable": ready,
                "updatedNumberScheduled": current,
                "observedGeneration": generation(ds),
            });
            if desired > ready {
                status["numberUnavailable"] = json!(desired - ready);
            }
            if let Some(new) = with_status(ds, status) {
                writes.push((Kind::DaemonSet, new));
            }
        }
        for pdb in state.store.list(Kind::PodDisruptionBudget, None) {
            let status = budget_status(pdb, budget(state, pdb));
            if let Some(new) = with_status(pdb, status) {
                writes.push((Kind::PodDisruptionBudget, new));
            }
        }
    }
    for (kind, obj) in writes {
        state.write(kind, obj);
    }
}
