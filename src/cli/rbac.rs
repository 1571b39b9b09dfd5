//! `drydock rbac`: the few grants the kubelet's own credentials lack.
//!
//! drydock authenticates with the kubelet's kubeconfig (user
//! `system:node:<name>`, group `system:nodes`). What that identity may do is
//! decided by the Node authorizer and limited further by the NodeRestriction
//! admission plugin (Kubernetes 1.34, AuthorizeNodeWithSelectors GA):
//!
//! Already allowed, so NOT granted here:
//! - patch/update its own Node (cordon via spec.unschedulable, annotations);
//!   NodeRestriction refuses other Nodes and changes to taints, ownerReferences
//!   and node-restriction labels, so drydock never touches taints;
//! - create `pods/eviction` and delete pods, for pods bound to this node only;
//! - list/watch pods with the field selector `spec.nodeName=<this node>`;
//!   get of a pod bound to this node;
//! - create/patch core/v1 Events.
//!
//! Missing, so granted below (reads are cluster-wide, writes are narrow):
//! - nodes get/list/watch: the Node authorizer only lets a node read its own
//!   Node; the all-nodes-Ready and soak gates read every Node;
//! - pods get/list/watch: required-DaemonSet pods on other nodes, and a GET
//!   of a pod already deleted (the Node authorizer answers 403 instead of 404
//!   once the pod left its graph, which would stall the drain's wait);
//! - daemonsets and poddisruptionbudgets get/list/watch (drain rules, gates);
//! - events.k8s.io Events create/patch (drydock writes events.k8s.io/v1);
//! - the drydock Namespace only (resourceNames): get/list/watch/patch for the
//!   pause/halt/target-version annotations;
//! - Leases in the drydock namespace: the lock.

use std::process::ExitCode;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Namespace holding the leases and control annotations (default: lease.namespace from the configuration).
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Group the kubelets' credentials belong to.
    #[arg(long, default_value = "system:nodes", value_name = "GROUP")]
    pub group: String,
}

const NAME: &str = "drydock:node";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..Default::default()
    }
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(
            [("app.kubernetes.io/name".to_string(), "drydock".to_string())]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    }
}

fn subjects(group: &str) -> Option<Vec<Subject>> {
    Some(vec![Subject {
        kind: "Group".into(),
        name: group.into(),
        api_group: Some(RBAC_GROUP.into()),
        namespace: None,
    }])
}

/// Serializes with `apiVersion`/`kind` first, as kubectl prints them.
fn doc<T: Serialize + k8s_openapi::Resource>(comment: &str, object: &T) -> String {
    let mut value = serde_json::to_value(object).expect("RBAC objects serialize");
    let mut ordered = serde_json::Map::new();
    ordered.insert("apiVersion".into(), T::API_VERSION.into());
    ordered.insert("kind".into(), T::KIND.into());
    if let Some(map) = value.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
        ordered.extend(std::mem::take(map));
    }
    let yaml = serde_yaml::to_string(&ordered).expect("JSON values serialize as YAML");
    let comment: String = comment.lines().map(|l| format!("# {l}\n")).collect();
    format!("---\n{comment}{yaml}")
}

/// The manifests, as multi-document YAML.
pub fn manifests(namespace: &str, group: &str) -> String {
    let namespace_obj = Namespace {
        metadata: meta(namespace, None),
        ..Default::default()
    };
    let mut ns_rule = rule(&[""], &["namespaces"], &["get", "list", "watch", "patch"]);
    ns_rule.resource_names = Some(vec![namespace.to_string()]);
    let cluster_role = ClusterRole {
        metadata: meta(NAME, None),
        rules: Some(vec![
            rule(&[""], &["nodes"], &["get", "list", "watch"]),
            rule(&[""], &["pods"], &["get", "list", "watch"]),
            rule(&["apps"], &["daemonsets"], &["get", "list", "watch"]),
            rule(
                &["policy"],
                &["poddisruptionbudgets"],
                &["get", "list", "watch"],
            ),
            rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
            ns_rule,
        ]),
        ..Default::default()
    };
    let cluster_binding = ClusterRoleBinding {
        metadata: meta(NAME, None),
        role_ref: RoleRef {
            api_group: RBAC_GROUP.into(),
            kind: "ClusterRole".into(),
            name: NAME.into(),
        },
        subjects: subjects(group),
    };
    let role = Role {
        metadata: meta(NAME, Some(namespace)),
        rules: Some(vec![rule(
            &["coordination.k8s.io"],
            &["leases"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        )]),
    };
    let role_binding = RoleBinding {
        metadata: meta(NAME, Some(namespace)),
        role_ref: RoleRef {
            api_group: RBAC_GROUP.into(),
            kind: "Role".into(),
            name: NAME.into(),
        },
        subjects: subjects(group),
    };
    let mut out = String::from(
        "# drydock: grants the kubelet credentials lack (apply once, as a cluster admin):\n\
         #   drydock rbac | kubectl apply -f -\n\
         # Own-Node writes, evictions and pod deletes on this node, and core Events are\n\
         # already allowed by the Node authorizer and limited by NodeRestriction.\n",
    );
    out.push_str(&doc(
        "Holds the maintenance leases and the cluster-wide pause/halt/target annotations.",
        &namespace_obj,
    ));
    out.push_str(&doc(
        "Cluster-wide reads for the gates and the drain; events.k8s.io Events;\n\
         the drydock Namespace only (resourceNames) for its control annotations.",
        &cluster_role,
    ));
    out.push_str(&doc("", &cluster_binding));
    out.push_str(&doc(
        "The lock: Lease slots in the drydock namespace only.",
        &role,
    ));
    out.push_str(&doc("", &role_binding));
    out
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let namespace = match &args.namespace {
        Some(ns) => {
            crate::config::values::dns_label(ns).map_err(|e| anyhow::anyhow!("--namespace: {e}"))?
        }
        None => cli.load_settings()?.lease.namespace,
    };
    print!("{}", manifests(&namespace, &args.group));
    Ok(ExitCode::SUCCESS)
}
