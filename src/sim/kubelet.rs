//! What kubelets and the node lifecycle controller would write: Node
//! objects and their conditions/taints, pod Running/Ready status.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::kinds::{Kind, uid_of, value_at};
use super::model::{is_pod_active, is_pod_ready, new_uid, node_name_of, now_time, set_condition};
use super::scenario::NodeSpec;
use super::state::State;
use super::status::ApiError;

pub(super) const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// How a node reports itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NodeHealth {
    /// kubelet posts Ready.
    Ready,
    /// kubelet posts NotReady (Ready=False), e.g. runtime down.
    NotReady,
    /// kubelet silent (rebooting, powered off): conditions Unknown, unreachable taints.
    Unreachable,
}

/// A kubeadm-style Node as the kubelet registers it.
pub fn node_object(spec: &NodeSpec, index: usize, kubelet_version: &str) -> Value {
    let name = &spec.name;
    let mut labels = json!({
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
    });
    let mut taints = vec![];
    if spec.control_plane {
        labels[CONTROL_PLANE_LABEL] = json!("");
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = json!("");
        taints.push(json!({"key": CONTROL_PLANE_LABEL, "effect": "NoSchedule"}));
    }
    for (k, v) in &spec.labels {
        labels[k] = json!(v);
    }
    let now = now_time();
    let cond = |t: &str, s: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let mut node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {
            "podCIDR": format!("10.244.{index}.0/24"),
            "podCIDRs": [format!("10.244.{index}.0/24")],
            "taints": taints,
        },
        "status": {
            "capacity": {"cpu": "2", "ephemeral-storage": "20470Mi", "memory": "4013996Ki", "pods": "110"},
            "allocatable": {"cpu": "2", "ephemeral-storage": "19316009748", "memory": "3911596Ki", "pods": "110"},
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": format!("192.168.56.{}", 10 + index)},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": new_uid().replace('-', ""),
                "systemUUID": new_uid(),
                "bootID": spec.boot_id.clone().unwrap_or_else(new_uid),
                "kernelVersion": "6.1.0-28-amd64",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": kubelet_version,
                "kubeProxyVersion": kubelet_version,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    });
    if spec.unschedulable {
        node["spec"]["unschedulable"] = json!(true);
    }
    if !spec.ready {
        apply_health(&mut node, NodeHealth::NotReady);
    }
    node
}

fn set_taint(node: &mut Value, key: &str, effect: &str, present: bool) {
    if !node["spec"].get("taints").is_some_and(Value::is_array) {
        node["spec"]["taints"] = json!([]);
    }
    let Some(taints) = node["spec"]["taints"].as_array_mut() else {
        return;
    };
    let pos = taints
        .iter()
        .position(|t| t["key"] == key && t["effect"] == effect);
    match (pos, present) {
        (None, true) => {
            let mut t = json!({"key": key, "effect": effect});
            if effect == "NoExecute" {
                t["timeAdded"] = json!(now_time());
            }
            taints.push(t);
        }
        (Some(p), false) => {
            taints.remove(p);
        }
        _ => {}
    }
}

/// Conditions and taints for a node health state.
fn apply_health(node: &mut Value, health: NodeHealth) {
    match health {
        NodeHealth::Ready => {
            set_condition(
                node,
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                true,
            );
            set_condition(
                node,
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
                true,
            );
            set_condition(
                node,
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
                true,
            );
            set_condition(
                node,
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
                true,
            );
        }
        NodeHealth::NotReady => {
            set_condition(
                node,
                "Ready",
                "False",
                "KubeletNotReady",
                "container runtime network not ready: NetworkReady=false",
                true,
            );
        }
        NodeHealth::Unreachable => {
            // The node lifecycle controller's view; heartbeats stop moving.
            for t in ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"] {
                set_condition(
                    node,
                    t,
                    "Unknown",
                    "NodeStatusUnknown",
                    "Kubelet stopped posting node status.",
                    false,
                );
                if let Some(conds) = node["status"]["conditions"].as_array_mut() {
                    for c in conds.iter_mut().filter(|c| c["type"] == t) {
                        if let Some(m) = c.as_object_mut() {
                            m.remove("lastProbeTime");
                        }
                    }
                }
            }
        }
    }
    set_taint(
        node,
        NOT_READY_TAINT,
        "NoSchedule",
        health == NodeHealth::NotReady,
    );
    set_taint(
        node,
        UNREACHABLE_TAINT,
        "NoSchedule",
        health == NodeHealth::Unreachable,
    );
    set_taint(
        node,
        UNREACHABLE_TAINT,
        "NoExecute",
        health == NodeHealth::Unreachable,
    );
    if let Some(conds) = node["status"]["conditions"].as_array_mut() {
        for c in conds.iter_mut() {
            if c.get("lastProbeTime").is_some_and(Value::is_null)
                && let Some(m) = c.as_object_mut()
            {
                m.remove("lastProbeTime");
            }
        }
    }
}

/// Flips a node's health; its pods turn unready when it goes down and
/// Ready again (after the start delay) when it comes back.
pub(super) fn set_node_health(
    state: &mut State,
    name: &str,
    health: NodeHealth,
) -> Result<(), ApiError> {
    let mut node = state
        .store
        .get(Kind::Node, "", name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(Kind::Node, name))?;
    apply_health(&mut node, health);
    state.write(Kind::Node, node);
    let at = Instant::now() + state.opts.pod_start_delay;
    let pods: Vec<Value> = state
        .store
        .list(Kind::Pod, None)
        .into_iter()
        .filter(|p| node_name_of(p) == name && is_pod_active(p))
        .cloned()
        .collect();
    for mut pod in pods {
        if health == NodeHealth::Ready {
            if !is_pod_ready(&pod) {
                state.starts.insert(uid_of(&pod).to_string(), at);
            }
        } else {
            state.starts.remove(uid_of(&pod));
            set_pod_ready(&mut pod, false);
            state.write(Kind::Pod, pod);
        }
    }
    Ok(())
}

/// Moves every node condition's `lastHeartbeatTime` (kubelet status report).
pub(super) fn heartbeat(node: &mut Value, at: &str) {
    if let Some(conds) = node["status"]["conditions"].as_array_mut() {
        for c in conds {
            c["lastHeartbeatTime"] = json!(at);
        }
    }
}

fn container_names(pod: &Value) -> Vec<(String, String)> {
    value_at(pod, "spec.containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or("app").to_string(),
                        c["image"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Running + Ready with container statuses, as the kubelet reports it.
pub(super) fn mark_pod_running(state: &mut State, pod: &mut Value) {
    let node_ip = state
        .store
        .get(Kind::Node, "", node_name_of(pod))
        .and_then(|n| value_at(n, "status.addresses"))
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .and_then(|x| x["address"].as_str())
        .unwrap_or("192.168.56.10")
        .to_string();
    let now = now_time();
    if value_at(pod, "spec.hostNetwork").and_then(Value::as_bool) == Some(true) {
        pod["status"]["podIP"] = json!(node_ip);
        pod["status"]["podIPs"] = json!([{"ip": node_ip}]);
    } else if pod["status"].get("podIP").is_none_or(Value::is_null) {
        state.ip_seq += 1;
        let ip = format!(
            "10.244.{}.{}",
            (state.ip_seq / 250) % 250,
            state.ip_seq % 250 + 2
        );
        pod["status"]["podIP"] = json!(ip);
        pod["status"]["podIPs"] = json!([{"ip": ip}]);
    }
    pod["status"]["phase"] = json!("Running");
    pod["status"]["hostIP"] = json!(node_ip);
    pod["status"]["hostIPs"] = json!([{"ip": node_ip}]);
    if pod["status"].get("startTime").is_none_or(Value::is_null) {
        pod["status"]["startTime"] = json!(now);
    }
    for t in ["PodReadyToStartContainers", "Initialized", "PodScheduled"] {
        set_condition(pod, t, "True", "", "", false);
    }
    set_pod_ready(pod, true);
}

/// Sets Ready/ContainersReady and the containers' `ready` flags.
pub(super) fn set_pod_ready(pod: &mut Value, ready: bool) {
    let containers = container_names(pod);
    let (status, reason, msg) = if ready {
        ("True", String::new(), String::new())
    } else {
        let names: Vec<&str> = containers.iter().map(|(n, _)| n.as_str()).collect();
        (
            "False",
            "ContainersNotReady".to_string(),
            format!("containers with unready status: [{}]", names.join(" ")),
        )
    };
    set_condition(pod, "Ready", status, &reason, &msg, false);
    set_condition(pod, "ContainersReady", status, &reason, &msg, false);
    let now = now_time();
    let old: Vec<Value> = value_at(pod, "status.containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(name, image)| {
            let prev = old.iter().find(|s| s["name"] == name.as_str());
            let started_at = prev
                .and_then(|p| p.pointer("/state/running/startedAt"))
                .cloned()
                .unwrap_or_else(|| json!(now));
            let id = prev
                .and_then(|p| p.get("containerID"))
                .cloned()
                .unwrap_or_else(|| json!(format!("containerd://{}", new_uid().replace('-', ""))));
            json!({
                "name": name,
                "image": image,
                "imageID": format!("{image}@sha256:{}", "0".repeat(64)),
                "containerID": id,
                "ready": ready,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": started_at}},
            })
        })
        .collect();
    pod["status"]["containerStatuses"] = json!(statuses);
}

/// Reports pods whose start time has come as Running and Ready, if their
/// node is Ready (otherwise `set_node_health(Ready)` re-arms them).
pub(super) fn start_due_pods(state: &mut State, now: Instant) {
    if !state.starts.values().any(|at| *at <= now) {
        return;
    }
    let mut due: Vec<Value> = vec![];
    let mut drop = std::collections::HashSet::new();
    let mut live = std::collections::HashSet::new();
    for pod in state.store.list(Kind::Pod, None) {
        let uid = uid_of(pod);
        live.insert(uid.to_string());
        if state.starts.get(uid).is_none_or(|at| *at > now) {
            continue;
        }
        drop.insert(uid.to_string());
        let node_ready = state
            .store
            .get(Kind::Node, "", node_name_of(pod))
            .is_some_and(super::model::is_node_ready);
        if is_pod_active(pod) && node_ready {
            due.push(pod.clone());
        }
    }
    state
        .starts
        .retain(|uid, _| live.contains(uid) && !drop.contains(uid));
    for mut pod in due {
        mark_pod_running(state, &mut pod);
        state.write(Kind::Pod, pod);
    }
}
