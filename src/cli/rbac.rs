//! `drydock rbac`: what a cluster needs once for drydock (apply as a
//! cluster admin: `drydock rbac | kubectl apply -f -`), as one JSON `List`.
//!
//! drydock uses two identities (see `cluster::identity`):
//! - the kubelet's (`system:node:<node>`) for this node's own things:
//!   cordon and annotate its Node, evict and delete its pods, core Events,
//!   and its drydock identity request (a CSR). The Node authorizer already
//!   allows all of that and NodeRestriction confines it to its own node,
//!   so nothing is granted to it here;
//! - the drydock identity (`drydock:node:<node>`, group `drydock:nodes`)
//!   for what is shared. Granted below, and only what drydock uses (a test
//!   against a real API server compares these grants with every request
//!   drydock made, from the audit log):
//!   - Nodes, Pods: get/list; required DaemonSets: get (gates,
//!     verification, the drain's wait for a pod already gone, which a node
//!     may not read);
//!   - PodDisruptionBudgets: list (which PDB blocks an eviction);
//!   - the drydock Namespace only (resourceNames): get, patch (pause, halt,
//!     shared verdicts; kubectl's `annotate` gets before it patches);
//!   - Leases in the drydock namespace: the lock (list/watch the slots,
//!     create/update to take, renew, release; get after a conflict);
//! - a ValidatingAdmissionPolicy: `drydock:node:X` may set a Lease's holder
//!   only to X (taking over an expired lease stays possible: CEL has no
//!   clock, drydock's gates decide) and may clear or delete only a hold of
//!   its own.

use std::process::ExitCode;

use serde_json::{Value, json};

use super::Cli;
use crate::cluster::identity;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Namespace holding the leases and control annotations (default: lease.namespace from the configuration).
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Group of the nodes' drydock identities.
    #[arg(long, default_value = identity::GROUP, value_name = "GROUP")]
    pub group: String,
}

/// Name of every object printed (cluster-scoped ones share it).
pub(crate) const NAME: &str = "drydock:node";
/// The admission policy (and its binding).
const POLICY: &str = "drydock-lease-holder";
const RBAC_V1: &str = "rbac.authorization.k8s.io/v1";
const ADMISSION_V1: &str = "admissionregistration.k8s.io/v1";

fn labels() -> Value {
    json!({"app.kubernetes.io/name": "drydock"})
}

fn subjects(group: &str) -> Value {
    json!([{"kind": "Group", "name": group, "apiGroup": "rbac.authorization.k8s.io"}])
}

/// The cluster-wide rules of the drydock identity.
pub fn cluster_rules(namespace: &str) -> Value {
    json!([
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get"]},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["list", "watch"]},
        // watch: by name only (a fieldSelector metadata.name=<namespace>),
        // so an idle node reads the upgrade target without polling.
        {"apiGroups": [""], "resources": ["namespaces"], "resourceNames": [namespace],
         "verbs": ["get", "patch", "watch"]},
    ])
}

/// The rules in the drydock namespace.
pub fn namespace_rules() -> Value {
    json!([
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["get", "list", "watch", "create", "update"]},
    ])
}

/// The holder rule, in CEL. `variables.node` is X of `drydock:node:X`.
fn policy(namespace: &str) -> Value {
    let prefix_len = identity::USER_PREFIX.len();
    json!({
        "apiVersion": ADMISSION_V1,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY, "labels": labels()},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "resourceRules": [{
                    "apiGroups": ["coordination.k8s.io"],
                    "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE", "DELETE"],
                    "resources": ["leases"],
                }],
            },
            "matchConditions": [{
                "name": "drydock-node-identity",
                "expression": format!("request.userInfo.username.startsWith('{}')", identity::USER_PREFIX),
            }],
            "variables": [
                {"name": "node", "expression": format!("request.userInfo.username.substring({prefix_len})")},
                {"name": "newHolder", "expression":
                    "object == null || !has(object.spec) || !has(object.spec.holderIdentity) ? '' : object.spec.holderIdentity"},
                {"name": "oldHolder", "expression":
                    "oldObject == null || !has(oldObject.spec) || !has(oldObject.spec.holderIdentity) ? '' : oldObject.spec.holderIdentity"},
            ],
            "validations": [
                {
                    "expression": "variables.newHolder == '' || variables.newHolder == variables.node",
                    "messageExpression": "'drydock node ' + variables.node + ' may not make ' + variables.newHolder + ' the holder of a Lease'",
                    "reason": "Forbidden",
                },
                {
                    "expression": "variables.newHolder != '' || variables.oldHolder == '' || variables.oldHolder == variables.node",
                    "messageExpression": "'drydock node ' + variables.node + ' may not release or delete the hold of ' + variables.oldHolder",
                    "reason": "Forbidden",
                },
            ],
        },
    })
}

/// Every object, in the order they must be created.
pub fn manifests(namespace: &str, group: &str) -> Value {
    let items = vec![
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": labels()},
        }),
        json!({
            "apiVersion": RBAC_V1, "kind": "ClusterRole",
            "metadata": {"name": NAME, "labels": labels()},
            "rules": cluster_rules(namespace),
        }),
        json!({
            "apiVersion": RBAC_V1, "kind": "ClusterRoleBinding",
            "metadata": {"name": NAME, "labels": labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": subjects(group),
        }),
        json!({
            "apiVersion": RBAC_V1, "kind": "Role",
            "metadata": {"name": NAME, "namespace": namespace, "labels": labels()},
            "rules": namespace_rules(),
        }),
        json!({
            "apiVersion": RBAC_V1, "kind": "RoleBinding",
            "metadata": {"name": NAME, "namespace": namespace, "labels": labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            "subjects": subjects(group),
        }),
        policy(namespace),
        json!({
            "apiVersion": ADMISSION_V1, "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": POLICY, "labels": labels()},
            "spec": {"policyName": POLICY, "validationActions": ["Deny"]},
        }),
    ];
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

pub(crate) fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let namespace = match &args.namespace {
        Some(ns) => {
            crate::config::values::dns_label(ns).map_err(|e| anyhow::anyhow!("--namespace: {e}"))?
        }
        None => cli.load_settings()?.lease.namespace,
    };
    if args.group.is_empty() || args.group.chars().any(char::is_whitespace) {
        anyhow::bail!("--group {:?}: not a group name", args.group);
    }
    let text = serde_json::to_string_pretty(&manifests(&namespace, &args.group))?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}
