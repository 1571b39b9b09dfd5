//! Write semantics of the API, shared by the HTTP handlers, eviction,
//! controllers and the test handle: create (validation, defaults, uid),
//! update with resourceVersion preconditions, patch, status subresources,
//! generation, graceful pod deletion and finalizers.

use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::kinds::{Kind, name_of, namespace_of, str_at, uid_of, value_at};
use super::model::{
    is_terminating, new_uid, now_time, pod_phase, random_suffix, set_condition, time_in,
};
use super::patch::{self, PatchType};
use super::state::State;
use super::status::{ApiError, success_status};

static DNS_SUBDOMAIN: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").ok()
});
static DNS_LABEL: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").ok());

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// Options of a DELETE (query string and/or `DeleteOptions` body).
#[derive(Debug, Clone, Default)]
pub(super) struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Reads a `DeleteOptions` JSON object (also the one inside an Eviction).
    pub(super) fn merge_body(&mut self, body: &Value) -> Result<(), ApiError> {
        if body.is_null() {
            return Ok(());
        }
        if !body.is_object() {
            return Err(ApiError::bad_request("DeleteOptions must be a JSON object"));
        }
        if let Some(g) = body.get("gracePeriodSeconds").filter(|v| !v.is_null()) {
            self.grace_period =
                Some(g.as_i64().ok_or_else(|| {
                    ApiError::bad_request("gracePeriodSeconds must be an integer")
                })?);
        }
        if let Some(p) = body.get("preconditions") {
            if let Some(u) = p.get("uid").and_then(Value::as_str) {
                self.uid = Some(u.to_string());
            }
            if let Some(r) = p.get("resourceVersion").and_then(Value::as_str) {
                self.resource_version = Some(r.to_string());
            }
        }
        if let Some(d) = body.get("dryRun").and_then(Value::as_array) {
            self.dry_run |= d.iter().any(|x| x.as_str() == Some("All"));
        }
        Ok(())
    }
}

/// What a DELETE answers: the object (pods, namespaces, or anything still
/// terminating) or a success `Status`.
pub(super) enum Deleted {
    Object(Value),
    Status(Value),
}

fn decode_error(kind: Kind, e: &str) -> ApiError {
    let i = kind.info();
    ApiError::bad_request(format!(
        "{} in version \"{}\" cannot be handled as a {}: {e}",
        i.kind, i.version, i.kind
    ))
}

fn validate_name(kind: Kind, name: &str) -> Result<(), ApiError> {
    let (ok, msg) = if kind == Kind::Namespace {
        (
            name.len() <= 63 && DNS_LABEL.as_ref().is_some_and(|r| r.is_match(name)),
            LABEL_MSG,
        )
    } else {
        (
            name.len() <= 253 && DNS_SUBDOMAIN.as_ref().is_some_and(|r| r.is_match(name)),
            SUBDOMAIN_MSG,
        )
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            kind,
            name,
            "metadata.name",
            &format!("Invalid value: \"{name}\": {msg}"),
        ))
    }
}

fn validate_spec(kind: Kind, obj: &Value) -> Result<(), ApiError> {
    if kind == Kind::Lease
        && let Some(d) = value_at(obj, "spec.leaseDurationSeconds").and_then(Value::as_i64)
        && d <= 0
    {
        return Err(ApiError::invalid(
            kind,
            name_of(obj),
            "spec.leaseDurationSeconds",
            &format!("Invalid value: {d}: must be greater than 0"),
        ));
    }
    Ok(())
}

fn strip_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

fn spec_of(v: &Value) -> Option<&Value> {
    v.get("spec")
}

/// The apiserver's defaults for a pod spec (fields left unset or null).
pub(super) fn default_pod_spec(spec: &mut Value) {
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
}

/// Defaults and status resets the apiserver applies on create.
fn apply_create_defaults(kind: Kind, obj: &mut Value) {
    match kind {
        Kind::Namespace => {
            let name = name_of(obj).to_string();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            obj["spec"]["finalizers"] = json!(["kubernetes"]);
            obj["status"] = json!({"phase": "Active"});
        }
        Kind::Pod => {
            default_pod_spec(&mut obj["spec"]);
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            if !super::model::node_name_of(obj).is_empty() {
                set_condition(obj, "PodScheduled", "True", "", "", false);
            }
        }
        Kind::ReplicaSet | Kind::DaemonSet | Kind::PodDisruptionBudget => {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        _ => {}
    }
}

impl State {
    /// POST: validates, fills metadata and stores a new object.
    pub(super) fn create(
        &mut self,
        kind: Kind,
        url_ns: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(decode_error(kind, "expected a JSON object"));
        }
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let info = kind.info();
        let ns = if info.namespaced {
            let url_ns = url_ns.unwrap_or("");
            match namespace_of(&obj) {
                "" => {}
                body_ns if body_ns != url_ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
            obj["metadata"]["namespace"] = json!(url_ns);
            url_ns.to_string()
        } else {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("namespace");
            }
            String::new()
        };
        let mut name = name_of(&obj).to_string();
        if name.is_empty() {
            let Some(prefix) = str_at(&obj, "metadata.generateName").filter(|p| !p.is_empty())
            else {
                return Err(ApiError::invalid(
                    kind,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            };
            name = format!("{prefix}{}", random_suffix(5));
            obj["metadata"]["name"] = json!(name);
        }
        validate_name(kind, &name)?;
        if str_at(&obj, "metadata.resourceVersion").is_some_and(|r| !r.is_empty()) {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if info.namespaced && self.store.get(Kind::Namespace, "", &ns).is_none() {
            return Err(ApiError::not_found(Kind::Namespace, &ns));
        }
        if self.store.get(kind, &ns, &name).is_some() {
            return Err(ApiError::already_exists(kind, &name));
        }
        let mut obj = kind.normalize(obj).map_err(|e| decode_error(kind, &e))?;
        validate_spec(kind, &obj)?;
        {
            let meta = &mut obj["metadata"];
            meta["uid"] = json!(new_uid());
            meta["creationTimestamp"] = json!(now_time());
            if let Some(m) = meta.as_object_mut() {
                m.remove("deletionTimestamp");
                m.remove("deletionGracePeriodSeconds");
                m.remove("generation");
            }
            if info.generation {
                meta["generation"] = json!(1);
            }
        }
        apply_create_defaults(kind, &mut obj);
        let obj = kind.normalize(obj).map_err(ApiError::internal)?;
        if dry_run {
            return Ok(obj);
        }
        let stored = self.store.put(kind, obj);
        if kind == Kind::Pod && !super::model::node_name_of(&stored).is_empty() {
            let at = Instant::now() + self.opts.pod_start_delay;
            self.starts.insert(uid_of(&stored).to_string(), at);
        }
        Ok(stored)
    }

    fn existing(&self, kind: Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.store
            .get(kind, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    /// PUT on the object (`status: false`) or its `/status` subresource.
    pub(super) fn update(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        body: Value,
        status: bool,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let existing = self.existing(kind, ns, name)?;
        if !body.is_object() {
            return Err(decode_error(kind, "expected a JSON object"));
        }
        let body_rv = str_at(&body, "metadata.resourceVersion").unwrap_or("");
        let current_rv = str_at(&existing, "metadata.resourceVersion").unwrap_or("");
        if body_rv.is_empty() {
            if !kind.info().unconditional_update {
                return Err(ApiError::invalid(
                    kind,
                    name,
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                ));
            }
        } else if body_rv.parse::<u64>().is_err() {
            return Err(ApiError::bad_request(format!(
                "invalid resourceVersion: {body_rv:?}"
            )));
        } else if body_rv != current_rv {
            return Err(ApiError::stale(kind, name));
        }
        self.commit(kind, ns, name, &existing, body, status, dry_run)
    }

    /// PATCH; with server-side apply a missing object is created.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn patch(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        pt: PatchType,
        patch: &Value,
        status: bool,
        dry_run: bool,
    ) -> Result<(Value, bool), ApiError> {
        let existing = match self.store.get(kind, ns, name) {
            Some(e) => e.clone(),
            None if pt == PatchType::Apply && !status => {
                let mut obj = patch.clone();
                if !obj.is_object() {
                    return Err(decode_error(kind, "expected a JSON object"));
                }
                obj["metadata"]["name"] = json!(name);
                let url_ns = kind.info().namespaced.then_some(ns);
                return self.create(kind, url_ns, obj, dry_run).map(|v| (v, true));
            }
            None => return Err(ApiError::not_found(kind, name)),
        };
        let patched = patch::apply(pt, &existing, patch)?;
        if !patched.is_object() {
            return Err(decode_error(kind, "patch result is not a JSON object"));
        }
        let current_rv = str_at(&existing, "metadata.resourceVersion").unwrap_or("");
        if let Some(rv) = str_at(&patched, "metadata.resourceVersion")
            && !rv.is_empty()
            && rv != current_rv
        {
            return Err(ApiError::stale(kind, name));
        }
        self.commit(kind, ns, name, &existing, patched, status, dry_run)
            .map(|v| (v, false))
    }

    /// The shared tail of update and patch.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        existing: &Value,
        body: Value,
        status: bool,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if name_of(&body) != name && !name_of(&body).is_empty() {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&body)
            )));
        }
        if kind.info().namespaced && !namespace_of(&body).is_empty() && namespace_of(&body) != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let old_uid = uid_of(existing);
        let body_uid = uid_of(&body);
        if !body_uid.is_empty() && body_uid != old_uid {
            return Err(ApiError::conflict(
                kind,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {body_uid}, UID in object meta: {old_uid}"
                ),
            ));
        }
        let mut new = kind.normalize(body).map_err(|e| decode_error(kind, &e))?;
        validate_spec(kind, &new)?;
        if status {
            // Status writes change only status.
            let st = new.get("status").cloned().unwrap_or(Value::Null);
            new = existing.clone();
            new["status"] = st;
        } else if kind.info().status_subresource {
            new["status"] = existing.get("status").cloned().unwrap_or(Value::Null);
        }
        if new.get("status").is_some_and(Value::is_null)
            && let Some(m) = new.as_object_mut()
        {
            m.remove("status");
        }
        {
            let meta = &mut new["metadata"];
            meta["name"] = json!(name);
            if kind.info().namespaced {
                meta["namespace"] = json!(ns);
            }
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match existing["metadata"].get(k) {
                    Some(v) => meta[k] = v.clone(),
                    None => {
                        if let Some(m) = meta.as_object_mut() {
                            m.remove(k);
                        }
                    }
                }
            }
            meta["resourceVersion"] = existing["metadata"]["resourceVersion"].clone();
        }
        if kind.info().generation && spec_of(&new) != spec_of(existing) {
            let g = value_at(existing, "metadata.generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        let new = kind.normalize(new).map_err(ApiError::internal)?;
        if strip_rv(&new) == strip_rv(existing) || dry_run {
            // The apiserver skips no-op writes: same resourceVersion, no event.
            return Ok(new);
        }
        let finalizers_done = value_at(&new, "metadata.finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        if kind != Kind::Pod && is_terminating(&new) && finalizers_done {
            return Ok(self.store.remove(kind, ns, name).unwrap_or(new));
        }
        Ok(self.store.put(kind, new))
    }

    /// DELETE with preconditions; pods go through graceful deletion.
    pub(super) fn delete(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let existing = self.existing(kind, ns, name)?;
        if let Some(u) = &opts.uid
            && u != uid_of(&existing)
        {
            return Err(ApiError::conflict(
                kind,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {}",
                    uid_of(&existing)
                ),
            ));
        }
        if let Some(r) = &opts.resource_version {
            let cur = str_at(&existing, "metadata.resourceVersion").unwrap_or("");
            if r != cur {
                return Err(ApiError::conflict(
                    kind,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {r}, ResourceVersion in object meta: {cur}"
                    ),
                ));
            }
        }
        if kind == Kind::Pod {
            return self.delete_pod(ns, name, opts).map(Deleted::Object);
        }
        let has_finalizers = value_at(&existing, "metadata.finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if opts.dry_run {
            return Ok(Deleted::Object(existing));
        }
        if has_finalizers {
            if is_terminating(&existing) {
                return Ok(Deleted::Object(existing));
            }
            let mut obj = existing;
            obj["metadata"]["deletionTimestamp"] = json!(now_time());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            return Ok(Deleted::Object(self.store.put(kind, obj)));
        }
        if kind == Kind::Namespace {
            // The namespace controller's job, done at once: empty it, then remove it.
            for k in Kind::ALL.into_iter().filter(|k| k.info().namespaced) {
                for obj in self.store.list_owned(k, Some(name)) {
                    self.store.remove(k, name, name_of(&obj));
                }
            }
        }
        let removed = self.store.remove(kind, ns, name).unwrap_or(existing);
        if kind.info().returns_deleted_object {
            return Ok(Deleted::Object(removed));
        }
        let mut details =
            json!({"name": name, "kind": kind.info().plural, "uid": uid_of(&removed)});
        if !kind.info().group.is_empty() {
            details["group"] = json!(kind.info().group);
        }
        Ok(Deleted::Status(success_status(200, Some(details))))
    }

    /// Graceful pod deletion: the pod gets `deletionTimestamp` and is removed
    /// when the grace period ends (by the controller loop), at once for 0,
    /// for pods never scheduled, and for terminal pods.
    pub(super) fn delete_pod(
        &mut self,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let pod = self.existing(Kind::Pod, ns, name)?;
        let default_grace = value_at(&pod, "spec.terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        let mut grace = opts.grace_period.unwrap_or(default_grace).max(0);
        if super::model::node_name_of(&pod).is_empty()
            || matches!(pod_phase(&pod), "Succeeded" | "Failed")
        {
            grace = 0;
        }
        if opts.dry_run {
            return Ok(pod);
        }
        let uid = uid_of(&pod).to_string();
        if grace == 0 {
            self.deletions.remove(&uid);
            self.starts.remove(&uid);
            return Ok(self.store.remove(Kind::Pod, ns, name).unwrap_or(pod));
        }
        let deadline = Instant::now() + Duration::from_secs(grace.unsigned_abs());
        if is_terminating(&pod) {
            // Only a shorter grace period changes a deletion in progress.
            let current = self.deletions.get(&uid).copied();
            if current.is_some_and(|c| c <= deadline) {
                return Ok(pod);
            }
        }
        let mut pod = pod;
        pod["metadata"]["deletionTimestamp"] = json!(time_in(grace));
        pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        self.deletions.insert(uid, deadline);
        Ok(self.store.put(Kind::Pod, pod))
    }

    /// Internal write (controllers, test handle): stores only if changed.
    pub(super) fn write(&mut self, kind: Kind, obj: Value) -> Value {
        let obj = kind.normalize(obj.clone()).unwrap_or(obj);
        let (ns, name) = (namespace_of(&obj).to_string(), name_of(&obj).to_string());
        match self.store.get(kind, &ns, &name) {
            Some(cur) if strip_rv(cur) == strip_rv(&obj) => cur.clone(),
            _ => self.store.put(kind, obj),
        }
    }

    /// Internal create of a fully formed object (scenario seeding, controllers):
    /// fills uid and creationTimestamp when missing, keeps the given status.
    pub(super) fn insert(&mut self, kind: Kind, mut obj: Value) -> Value {
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        if uid_of(&obj).is_empty() {
            obj["metadata"]["uid"] = json!(new_uid());
        }
        if str_at(&obj, "metadata.creationTimestamp").is_none() {
            obj["metadata"]["creationTimestamp"] = json!(now_time());
        }
        if kind.info().generation && value_at(&obj, "metadata.generation").is_none() {
            obj["metadata"]["generation"] = json!(1);
        }
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.info().kind);
        self.write(kind, obj)
    }
}
