//! Who is asking, and may they: what a kubeadm API server decides with
//! `--authorization-mode=Node,RBAC` and the NodeRestriction admission
//! plugin, for the requests drydock and kubelets make, plus the Lease
//! holder rule of drydock's ValidatingAdmissionPolicy (`drydock rbac`).
//!
//! Users: a bearer token `user=<name>;groups=<g1>,<g2>` (see
//! [`User::token`]). A request without one is the cluster admin
//! (`system:masters`), so tools and tests that do not care stay simple.
//! RBAC rules come from the manifests `drydock rbac` prints
//! ([`Rbac::from_manifests`]); the simulator does not serve RBAC objects.
//!
//! The differential test (tests/controlplane.rs) runs the same requests
//! here and against a real kube-apiserver and compares the status codes.

use axum::http::HeaderMap;
use serde_json::Value;

use super::kinds::{Kind, str_at};
use super::status::ApiError;

const MASTERS: &str = "system:masters";
const NODES: &str = "system:nodes";
const NODE_PREFIX: &str = "system:node:";
const NODE_LEASE_NS: &str = "kube-node-lease";
/// drydock's per-node identity (`cluster::identity`).
const DRYDOCK_PREFIX: &str = "drydock:node:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub(crate) fn admin() -> User {
        User {
            name: "kubernetes-admin".into(),
            groups: vec![MASTERS.into()],
        }
    }

    pub fn new(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    /// A kubelet: `system:node:<node>` in `system:nodes`.
    pub fn node(node: &str) -> User {
        User::new(&format!("{NODE_PREFIX}{node}"), &[NODES])
    }

    /// The bearer token the simulator maps back to this user.
    pub(crate) fn token(&self) -> String {
        format!("user={};groups={}", self.name, self.groups.join(","))
    }

    fn parse(token: &str) -> Option<User> {
        let (user, groups) = token.split_once(';')?;
        let name = user.strip_prefix("user=")?;
        let groups = groups.strip_prefix("groups=")?;
        (!name.is_empty()).then(|| User {
            name: name.to_string(),
            groups: groups
                .split(',')
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<User, ApiError> {
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Ok(User::admin());
        };
        value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(User::parse)
            .ok_or_else(|| ApiError {
                code: 401,
                reason: "Unauthorized",
                message: "Unauthorized".into(),
                details: None,
            })
    }

    pub(crate) fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
    }

    /// `Some(X)` for the kubelet of node X.
    fn node_name(&self) -> Option<&str> {
        let n = self.name.strip_prefix(NODE_PREFIX)?;
        self.groups.iter().any(|g| g == NODES).then_some(n)
    }

    fn drydock_node(&self) -> Option<&str> {
        self.name.strip_prefix(DRYDOCK_PREFIX)
    }
}

/// One request, as the authorizers see it.
#[derive(Debug, Clone)]
pub(super) struct Attributes<'a> {
    pub verb: &'a str,
    pub kind: Kind,
    pub sub: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub field_selector: &'a str,
}

impl Attributes<'_> {
    fn resource(&self) -> String {
        match self.sub {
            Some(s) => format!("{}/{s}", self.kind.info().plural),
            None => self.kind.info().plural.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default)]
struct Binding {
    /// `None`: a ClusterRoleBinding.
    namespace: Option<String>,
    users: Vec<String>,
    groups: Vec<String>,
    rules: Vec<Rule>,
}

/// RBAC rules bound to users and groups.
#[derive(Debug, Clone, Default)]
pub(super) struct Rbac {
    bindings: Vec<Binding>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Rbac {
    /// From a `List` (or an array) of Roles, ClusterRoles and their
    /// bindings, as `drydock rbac` prints them; other kinds are ignored.
    pub(super) fn from_manifests(list: &Value) -> Rbac {
        let items = list["items"]
            .as_array()
            .or(list.as_array())
            .cloned()
            .unwrap_or_default();
        let roles = |kind: &str, ns: Option<&str>, name: &str| -> Vec<Rule> {
            items
                .iter()
                .find(|i| {
                    i["kind"] == kind
                        && i["metadata"]["name"] == name
                        && i["metadata"]["namespace"].as_str() == ns
                })
                .map(|r| {
                    r["rules"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|r| Rule {
                            groups: strings(&r["apiGroups"]),
                            resources: strings(&r["resources"]),
                            verbs: strings(&r["verbs"]),
                            names: r.get("resourceNames").map(strings),
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut bindings = vec![];
        for b in &items {
            let (namespace, kind) = match b["kind"].as_str() {
                Some("ClusterRoleBinding") => (None, "ClusterRole"),
                Some("RoleBinding") => (
                    b["metadata"]["namespace"].as_str(),
                    b["roleRef"]["kind"].as_str().unwrap_or("Role"),
                ),
                _ => continue,
            };
            let role_ns = if kind == "Role" { namespace } else { None };
            let subjects = b["subjects"].as_array().cloned().unwrap_or_default();
            let of = |k: &str| -> Vec<String> {
                subjects
                    .iter()
                    .filter(|s| s["kind"] == k)
                    .filter_map(|s| s["name"].as_str().map(str::to_string))
                    .collect()
            };
            bindings.push(Binding {
                namespace: namespace.map(str::to_string),
                users: of("User"),
                groups: of("Group"),
                rules: roles(
                    kind,
                    role_ns,
                    b["roleRef"]["name"].as_str().unwrap_or_default(),
                ),
            });
        }
        Rbac { bindings }
    }

    fn allows(&self, user: &User, a: &Attributes<'_>) -> bool {
        let resource = a.resource();
        let group = a.kind.info().group;
        self.bindings.iter().any(|b| {
            let subject =
                b.users.contains(&user.name) || b.groups.iter().any(|g| user.groups.contains(g));
            let scope = b.namespace.is_none() || b.namespace.as_deref() == a.namespace;
            subject
                && scope
                && b.rules.iter().any(|r| {
                    let has = |list: &[String], v: &str| list.iter().any(|x| x == v || x == "*");
                    has(&r.groups, group)
                        && has(&r.resources, &resource)
                        && has(&r.verbs, a.verb)
                        && r.names
                            .as_ref()
                            .is_none_or(|n| a.name.is_some_and(|name| n.iter().any(|x| x == name)))
                })
        })
    }
}

fn forbidden(user: &User, a: &Attributes<'_>, why: &str) -> ApiError {
    let resource = a.resource();
    let group = a.kind.info().group;
    let scope = match a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let what = match a.name {
        Some(n) => format!("{} \"{n}\" is forbidden", a.kind.info().plural),
        None => format!("{} is forbidden", a.kind.info().plural),
    };
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(": {why}")
    };
    ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "{what}: User \"{}\" cannot {} resource \"{resource}\" in API group \"{group}\" {scope}{why}",
            user.name, a.verb
        ),
        details: None,
    }
}

fn admission_denied(a: &Attributes<'_>, message: String) -> ApiError {
    let name = a.name.unwrap_or_default();
    ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "{} \"{name}\" is forbidden: {message}",
            a.kind.info().plural
        ),
        details: None,
    }
}

/// Where a pod (namespace, name) is bound, if it exists.
pub(super) type PodNode<'a> = &'a dyn Fn(&str, &str) -> Option<String>;

/// The Node authorizer (1.34, AuthorizeNodeWithSelectors) for node X.
fn node_authorizer(node: &str, a: &Attributes<'_>, pod_node: PodNode<'_>) -> bool {
    let bound = |ns: &str, n: &str| pod_node(ns, n).as_deref() == Some(node);
    let own_name = a.name == Some(node);
    let selects = |field: &str| a.field_selector == format!("{field}={node}");
    match (a.kind, a.sub, a.verb) {
        (Kind::Node, None, "get") => own_name,
        (Kind::Node, None, "list" | "watch") => selects("metadata.name"),
        (Kind::Node, None | Some("status"), "create" | "update" | "patch" | "delete") => true,
        (Kind::Pod, None, "get") => a.name.is_some_and(|n| bound(a.namespace.unwrap_or(""), n)),
        (Kind::Pod, None, "list" | "watch") => selects("spec.nodeName"),
        (Kind::Pod, None, "create" | "delete") => true,
        (Kind::Pod, Some("status"), "update" | "patch") => true,
        (Kind::Pod, Some("eviction"), "create") => true,
        (Kind::Event, None, "create" | "update" | "patch") => true,
        // Node leases only; the name is unknown to the authorizer on create
        // (NodeRestriction checks it then).
        (Kind::Lease, None, "get" | "create" | "update" | "patch" | "delete") => {
            a.namespace == Some(NODE_LEASE_NS) && (a.verb == "create" || own_name)
        }
        _ => false,
    }
}

/// Authorization: `Ok` or 403.
pub(super) fn authorize(
    rbac: &Rbac,
    user: &User,
    a: &Attributes<'_>,
    pod_node: PodNode<'_>,
) -> Result<(), ApiError> {
    if user.is_admin() {
        return Ok(());
    }
    if let Some(node) = user.node_name()
        && node_authorizer(node, a, pod_node)
    {
        return Ok(());
    }
    if rbac.allows(user, a) {
        return Ok(());
    }
    Err(forbidden(user, a, ""))
}

fn holder(obj: Option<&Value>) -> String {
    obj.and_then(|o| str_at(o, "spec.holderIdentity"))
        .unwrap_or_default()
        .to_string()
}

/// Admission: NodeRestriction for kubelets, drydock's Lease holder policy
/// for drydock identities. `old`/`new`: the object before and after the
/// write (`None` for create / delete); `policy_ns`: where the drydock
/// policy applies (the drydock namespace), when installed.
pub(super) fn admit(
    user: &User,
    a: &Attributes<'_>,
    old: Option<&Value>,
    new: Option<&Value>,
    policy_ns: Option<&str>,
) -> Result<(), ApiError> {
    if user.is_admin() {
        return Ok(());
    }
    if let Some(node) = user.node_name() {
        return node_restriction(node, a, old, new);
    }
    if let Some(me) = user.drydock_node()
        && a.kind == Kind::Lease
        && policy_ns.is_some()
        && a.namespace == policy_ns
    {
        // Mirrors the CEL of `drydock rbac`'s ValidatingAdmissionPolicy.
        let (was, now) = (holder(old), holder(new));
        let deny = |m: String| {
            Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "leases.coordination.k8s.io \"{}\" is forbidden: ValidatingAdmissionPolicy 'drydock-lease-holder' with binding 'drydock-lease-holder' denied request: {m}",
                    a.name.unwrap_or_default()
                ),
                details: None,
            })
        };
        if !now.is_empty() && now != me {
            return deny(format!(
                "drydock node {me} may not make {now} the holder of a Lease"
            ));
        }
        if now.is_empty() && !was.is_empty() && was != me {
            return deny(format!(
                "drydock node {me} may not release or delete the hold of {was}"
            ));
        }
    }
    Ok(())
}

fn node_restriction(
    node: &str,
    a: &Attributes<'_>,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<(), ApiError> {
    let writes = matches!(a.verb, "create" | "update" | "patch" | "delete");
    match a.kind {
        Kind::Lease if writes => {
            if a.namespace != Some(NODE_LEASE_NS) {
                return Err(admission_denied(
                    a,
                    format!("can only access leases in the \"{NODE_LEASE_NS}\" system namespace"),
                ));
            }
            if a.name != Some(node) {
                return Err(admission_denied(
                    a,
                    "can only access node lease with the same name as the requesting node".into(),
                ));
            }
        }
        Kind::Node if writes => {
            if a.name != Some(node) {
                return Err(admission_denied(
                    a,
                    format!(
                        "node \"{node}\" is not allowed to modify node \"{}\"",
                        a.name.unwrap_or_default()
                    ),
                ));
            }
            let taints = |o: Option<&Value>| {
                o.map(|o| o["spec"]["taints"].clone())
                    .filter(|t| !t.is_null())
                    .unwrap_or(Value::Array(vec![]))
            };
            if a.verb != "create" && a.verb != "delete" && taints(old) != taints(new) {
                return Err(admission_denied(
                    a,
                    "node is not allowed to modify taints".into(),
                ));
            }
        }
        Kind::Pod if a.verb == "delete" || a.sub.is_some() => {
            let bound = old.and_then(|p| str_at(p, "spec.nodeName")) == Some(node);
            if !bound {
                return Err(admission_denied(
                    a,
                    format!(
                        "node \"{node}\" can only {} pods with spec.nodeName set to itself",
                        if a.sub == Some("eviction") {
                            "evict"
                        } else {
                            "modify"
                        }
                    ),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs<'a>(
        verb: &'a str,
        kind: Kind,
        ns: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            kind,
            sub: None,
            namespace: ns,
            name,
            field_selector: "",
        }
    }

    #[test]
    fn tokens_round_trip_and_no_token_is_the_admin() {
        let u = User::node("w-1");
        assert_eq!(User::parse(&u.token()), Some(u));
        assert_eq!(
            User::from_headers(&HeaderMap::new()).unwrap(),
            User::admin()
        );
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer nonsense".parse().unwrap());
        assert_eq!(User::from_headers(&h).unwrap_err().code, 401);
    }

    #[test]
    fn a_kubelet_may_not_take_a_lease_outside_kube_node_lease() {
        let u = User::node("w-1");
        let a = attrs(
            "create",
            Kind::Lease,
            Some("drydock"),
            Some("drydock-default-0"),
        );
        let rbac = Rbac::default();
        // Refused by the Node authorizer already, and by NodeRestriction.
        assert_eq!(
            authorize(&rbac, &u, &a, &|_, _| None).unwrap_err().code,
            403
        );
        let e = admit(&u, &a, None, Some(&json!({})), None).unwrap_err();
        assert!(e.message.contains("kube-node-lease"), "{}", e.message);
        let own = attrs("update", Kind::Lease, Some("kube-node-lease"), Some("w-1"));
        admit(&u, &own, None, None, None).unwrap();
    }

    #[test]
    fn rbac_from_the_printed_manifests() {
        let m = crate::cli::rbac::manifests("drydock", "drydock:nodes");
        let rbac = Rbac::from_manifests(&m);
        let u = User::new(
            "drydock:node:w-1",
            &["drydock:nodes", "system:authenticated"],
        );
        let ok = |a: Attributes<'_>| authorize(&rbac, &u, &a, &|_, _| None).is_ok();
        assert!(ok(attrs("list", Kind::Node, None, None)));
        assert!(ok(attrs(
            "update",
            Kind::Lease,
            Some("drydock"),
            Some("drydock-default-0")
        )));
        assert!(!ok(attrs(
            "update",
            Kind::Lease,
            Some("default"),
            Some("x")
        )));
        assert!(ok(attrs("patch", Kind::Namespace, None, Some("drydock"))));
        assert!(!ok(attrs("patch", Kind::Namespace, None, Some("default"))));
        // A watch of the drydock Namespace by name (fieldSelector
        // metadata.name=drydock names it); never of every Namespace.
        assert!(ok(attrs("watch", Kind::Namespace, None, Some("drydock"))));
        assert!(!ok(attrs("watch", Kind::Namespace, None, None)));
        assert!(!ok(attrs("list", Kind::Namespace, None, Some("drydock"))));
        assert!(!ok(attrs("patch", Kind::Node, None, Some("w-1"))));
        assert!(!ok(attrs("create", Kind::EventV1, Some("default"), None)));
    }

    #[test]
    fn the_holder_rule() {
        let u = User::new("drydock:node:w-1", &["drydock:nodes"]);
        let a = attrs("update", Kind::Lease, Some("drydock"), Some("s"));
        let l = |h: &str| json!({"spec": {"holderIdentity": h}});
        let ns = Some("drydock");
        assert!(admit(&u, &a, Some(&l("")), Some(&l("w-1")), ns).is_ok());
        assert!(
            admit(&u, &a, Some(&l("w-2")), Some(&l("w-1")), ns).is_ok(),
            "takeover"
        );
        assert!(admit(&u, &a, Some(&l("")), Some(&l("w-2")), ns).is_err());
        assert!(admit(&u, &a, Some(&l("w-2")), Some(&l("")), ns).is_err());
        assert!(admit(&u, &a, Some(&l("w-1")), Some(&json!({"spec": {}})), ns).is_ok());
        assert!(
            admit(&u, &a, Some(&l("w-2")), Some(&l("w-2")), ns).is_err(),
            "renewing another's"
        );
        assert!(
            admit(&u, &a, Some(&l("")), Some(&l("w-2")), None).is_ok(),
            "no policy installed"
        );
    }
}
