//! URL routing and the REST verbs: parses `/api/v1/...` and
//! `/apis/{group}/{version}/...` paths, then answers get, list, watch,
//! create, update, patch, delete and the eviction subresource.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::auth;
use super::controllers::reconcile;
use super::discovery;
use super::eviction;
use super::kinds::{Kind, str_at};
use super::objects::{DeleteOptions, Deleted};
use super::patch::{self, PatchType};
use super::selectors::{FieldSelector, LabelSelector};
use super::state::{Shared, State as SimState};
use super::status::{ApiError, json_response};
use super::table;
use super::watch::{self, WatchRequest};

const MAX_BODY: usize = 32 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    /// `/api/v1/watch/...` (deprecated but still served).
    pub legacy_watch: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    Version,
    Health,
    OpenApi,
    OpenApiIndex,
    OpenApiGroupVersion(String, String),
    ApiVersions,
    GroupList,
    Group(String),
    Resources(String, String),
    Resource(Target),
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Result<Route, ApiError> {
    let nf = ApiError::path_not_found;
    let (legacy_watch, rest) = match rest.split_first() {
        Some((&"watch", r)) => (true, r),
        _ => (false, rest),
    };
    let is_ns_status = group.is_empty()
        && rest.len() == 3
        && rest[0] == "namespaces"
        && matches!(rest[2], "status" | "finalize");
    let (kind, namespace, name, sub) =
        if rest.len() >= 3 && rest[0] == "namespaces" && !is_ns_status {
            let kind = Kind::from_resource(group, version, rest[2]).ok_or_else(nf)?;
            if !kind.info().namespaced || rest.len() > 5 {
                return Err(nf());
            }
            (kind, Some(rest[1]), rest.get(3), rest.get(4))
        } else {
            let first = rest.first().ok_or_else(nf)?;
            let kind = Kind::from_resource(group, version, first).ok_or_else(nf)?;
            if rest.len() > 3 || (kind.info().namespaced && rest.len() > 1) {
                return Err(nf());
            }
            (kind, None, rest.get(1), rest.get(2))
        };
    let sub = sub.map(|s| s.to_string());
    match sub.as_deref() {
        None => {}
        Some("status") if kind.info().status_subresource => {}
        Some("eviction") if kind == Kind::Pod => {}
        Some(_) => return Err(nf()),
    }
    Ok(Route::Resource(Target {
        kind,
        namespace: namespace.map(|s| s.to_string()),
        name: name.map(|s| s.to_string()),
        sub,
        legacy_watch,
    }))
}

pub(super) fn parse_path(path: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Ok(Route::Version),
        ["healthz" | "livez" | "readyz", ..] => Ok(Route::Health),
        ["openapi", "v3"] => Ok(Route::OpenApiIndex),
        ["openapi", "v3", "api", v] => Ok(Route::OpenApiGroupVersion(String::new(), v.to_string())),
        ["openapi", "v3", "apis", g, v] => {
            Ok(Route::OpenApiGroupVersion(g.to_string(), v.to_string()))
        }
        ["openapi", ..] | ["swagger.json"] => Ok(Route::OpenApi),
        ["api"] => Ok(Route::ApiVersions),
        ["api", "v1"] => Ok(Route::Resources(String::new(), "v1".into())),
        ["api", "v1", rest @ ..] => resource_route("", "v1", rest),
        ["apis"] => Ok(Route::GroupList),
        ["apis", g] => Ok(Route::Group(g.to_string())),
        ["apis", g, v] => Ok(Route::Resources(g.to_string(), v.to_string())),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Err(ApiError::path_not_found()),
    }
}

fn truthy(v: &str) -> bool {
    matches!(v, "true" | "1" | "True")
}

pub(super) fn is_watch_query(query: &str) -> bool {
    query.split('&').any(|kv| match kv.split_once('=') {
        Some(("watch", v)) => truthy(v),
        _ => false,
    })
}

struct Params(Vec<(String, String)>);

impl Params {
    fn parse(uri: &Uri) -> Result<Self, ApiError> {
        Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map(|q| Params(q.0))
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        self.get(k).is_some_and(truthy)
    }

    fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        self.get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid {k}: {v:?}")))
            })
            .transpose()
    }
}

fn header(h: &HeaderMap, name: header::HeaderName) -> &str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn ok_json(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

/// The fallback handler: every request lands here.
pub(super) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    match serve(&shared, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(shared: &Arc<Shared>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let route = parse_path(parts.uri.path())?;
    let params = Params::parse(&parts.uri)?;
    if !matches!(route, Route::Resource(_)) && parts.method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    match route {
        Route::Version => Ok(ok_json(&discovery::version(
            &shared.lock().opts.server_version,
        ))),
        Route::Health => Ok((StatusCode::OK, "ok").into_response()),
        Route::OpenApi => Err(ApiError::path_not_found()),
        Route::OpenApiIndex => Ok(ok_json(&discovery::openapi_v3_index())),
        Route::OpenApiGroupVersion(g, v) => discovery::openapi_v3_group_version(&g, &v)
            .map(|d| ok_json(&d))
            .ok_or_else(ApiError::path_not_found),
        Route::ApiVersions => Ok(ok_json(&discovery::api_versions(header(
            &parts.headers,
            header::HOST,
        )))),
        Route::GroupList => Ok(ok_json(&discovery::api_group_list())),
        Route::Group(g) => discovery::api_group(&g)
            .map(|d| ok_json(&d))
            .ok_or_else(ApiError::path_not_found),
        Route::Resources(g, v) => discovery::api_resource_list(&g, &v)
            .map(|d| ok_json(&d))
            .ok_or_else(ApiError::path_not_found),
        Route::Resource(t) => resource(shared, &parts, body, t, &params).await,
    }
}

async fn read_body(body: Body) -> Result<Vec<u8>, ApiError> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map(|b| b.to_vec())
        .map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))
}

fn decode_body(content_type: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    if content_type.contains("protobuf") {
        return Err(ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!("the simulator does not speak {content_type}"),
            details: None,
        });
    }
    if content_type.contains("yaml") {
        serde_saphyr::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })
    }
}

/// Runs the controllers after a write and wakes the timer task.
fn settle(shared: &Shared, st: &mut SimState) {
    reconcile(st, Instant::now());
    shared.wake.notify_one();
}

async fn resource(
    shared: &Arc<Shared>,
    parts: &Parts,
    body: Body,
    t: Target,
    params: &Params,
) -> Result<Response, ApiError> {
    let kind = t.kind;
    let ns = t.namespace.clone().unwrap_or_default();
    let dry_run = params.get("dryRun") == Some("All");
    let watch = t.legacy_watch || params.flag("watch");
    let accept = header(&parts.headers, header::ACCEPT);
    let content_type = header(&parts.headers, header::CONTENT_TYPE).to_string();
    let name = t.name.clone();
    let status_sub = t.sub.as_deref() == Some("status");
    let user = auth::User::from_headers(&parts.headers)?;
    let verb = match (&parts.method, &name) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, _) => "delete",
        _ => return Err(ApiError::method_not_allowed()),
    };
    // As the apiserver's request info: a list or watch pinned to one name
    // by fieldSelector metadata.name=X is authorized as a request for X
    // (RBAC resourceNames then apply).
    let pinned = match (verb, &name) {
        ("list" | "watch", None) => {
            FieldSelector::parse(params.get("fieldSelector").unwrap_or(""), kind)
                .ok()
                .and_then(|f| f.pinned_name().map(str::to_string))
        }
        _ => None,
    };
    let attrs = auth::Attributes {
        verb,
        kind,
        sub: t.sub.as_deref(),
        namespace: t.namespace.as_deref(),
        name: t.name.as_deref().or(pinned.as_deref()),
        field_selector: params.get("fieldSelector").unwrap_or(""),
    };
    {
        let st = shared.lock();
        let pod_node = |ns: &str, n: &str| {
            st.store
                .get(Kind::Pod, ns, n)
                .and_then(|p| str_at(p, "spec.nodeName").map(str::to_string))
        };
        auth::authorize(&st.rbac, &user, &attrs, &pod_node)?;
    }
    // Admission sees the object before and after: the write is computed
    // as a dry run first, then made for real.
    let admit = |st: &SimState, created: Option<&Value>, new: Option<&Value>| {
        if user.is_admin() {
            return Ok(());
        }
        let obj_name = attrs
            .name
            .or_else(|| created.and_then(|c| str_at(c, "metadata.name")));
        let a = auth::Attributes {
            name: obj_name,
            ..attrs.clone()
        };
        let old = match (obj_name, created) {
            (Some(n), None) => st.store.get(kind, &ns, n),
            _ => None,
        };
        auth::admit(&user, &a, old, new, st.policy_namespace.as_deref())
    };
    match (&parts.method, name, t.sub.as_deref()) {
        (&Method::GET, None, None) if watch => watch_request(shared, &t, params),
        (&Method::GET, None, None) => list(shared, &t, params, accept),
        (&Method::GET, Some(name), None) if watch => {
            let mut t = t.clone();
            t.name = Some(name);
            watch_request(shared, &t, params)
        }
        (&Method::GET, Some(name), None | Some("status")) => {
            let st = shared.lock();
            let obj = st
                .store
                .get(kind, &ns, &name)
                .ok_or_else(|| ApiError::not_found(kind, &name))?;
            if table::wants_table(accept) {
                let meta = json!({"resourceVersion": st.store.rv().to_string()});
                let include = params.get("includeObject").unwrap_or("Metadata");
                return Ok(ok_json(&table::table(
                    kind,
                    std::slice::from_ref(obj),
                    meta,
                    include,
                )));
            }
            Ok(ok_json(obj))
        }
        (&Method::POST, None, None) => {
            let bytes = read_body(body).await?;
            let obj = decode_body(&content_type, &bytes)?;
            let mut st = shared.lock();
            let url_ns = kind.info().namespaced.then_some(ns.as_str());
            if !user.is_admin() {
                let new = st.create(kind, url_ns, obj.clone(), true)?;
                admit(&st, Some(&new), Some(&new))?;
            }
            let created = st.create(kind, url_ns, obj, dry_run)?;
            settle(shared, &mut st);
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (&Method::POST, Some(name), Some("eviction")) => {
            let bytes = read_body(body).await?;
            let mut st = shared.lock();
            admit(&st, None, None)?;
            let status = eviction::evict(&mut st, &ns, &name, &bytes, dry_run)?;
            settle(shared, &mut st);
            Ok(json_response(StatusCode::CREATED, &status))
        }
        (&Method::PUT, Some(name), None | Some("status")) => {
            let bytes = read_body(body).await?;
            let obj = decode_body(&content_type, &bytes)?;
            let mut st = shared.lock();
            if !user.is_admin() {
                let new = st.update(kind, &ns, &name, obj.clone(), status_sub, true)?;
                admit(&st, None, Some(&new))?;
            }
            let updated = st.update(kind, &ns, &name, obj, status_sub, dry_run)?;
            settle(shared, &mut st);
            Ok(ok_json(&updated))
        }
        (&Method::PATCH, Some(name), None | Some("status")) => {
            let pt = PatchType::from_content_type(&content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(&content_type))?;
            let bytes = read_body(body).await?;
            let p = patch::parse_body(pt, &bytes)?;
            let mut st = shared.lock();
            if !user.is_admin() {
                let (new, _) = st.patch(kind, &ns, &name, pt, &p, status_sub, true)?;
                admit(&st, None, Some(&new))?;
            }
            let (obj, created) = st.patch(kind, &ns, &name, pt, &p, status_sub, dry_run)?;
            settle(shared, &mut st);
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &obj))
        }
        (&Method::DELETE, Some(name), None) => {
            let bytes = read_body(body).await?;
            let mut opts = DeleteOptions {
                grace_period: params.int("gracePeriodSeconds")?,
                dry_run,
                ..DeleteOptions::default()
            };
            if !bytes.is_empty() {
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
                opts.merge_body(&v)?;
            }
            let mut st = shared.lock();
            admit(&st, None, None)?;
            let out = st.delete(kind, &ns, &name, &opts)?;
            settle(shared, &mut st);
            Ok(match out {
                Deleted::Object(v) | Deleted::Status(v) => ok_json(&v),
            })
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn selectors(kind: Kind, params: &Params) -> Result<(LabelSelector, FieldSelector), ApiError> {
    Ok((
        LabelSelector::parse(params.get("labelSelector").unwrap_or(""))?,
        FieldSelector::parse(params.get("fieldSelector").unwrap_or(""), kind)?,
    ))
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn list(
    shared: &Arc<Shared>,
    t: &Target,
    params: &Params,
    accept: &str,
) -> Result<Response, ApiError> {
    let kind = t.kind;
    let (label, field) = selectors(kind, params)?;
    let st = shared.lock();
    let current = st.store.rv();
    if params.get("resourceVersionMatch") == Some("Exact") {
        let rv = params.get("resourceVersion").unwrap_or("");
        if rv != current.to_string() {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({current})"
            )));
        }
    }
    let limit = params.int("limit")?.filter(|l| *l > 0).map(|l| l as usize);
    let after = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => Some(unhex(c).ok_or_else(|| {
            ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
        })?),
        None => None,
    };
    let key = |o: &Value| {
        format!(
            "{}\u{0}{}",
            str_at(o, "metadata.namespace").unwrap_or(""),
            str_at(o, "metadata.name").unwrap_or("")
        )
    };
    let matching: Vec<&Value> = st
        .store
        .list(kind, t.namespace.as_deref())
        .into_iter()
        .filter(|o| label.matches_object(o) && field.matches(kind, o))
        .filter(|o| after.as_ref().is_none_or(|a| key(o) > *a))
        .collect();
    let (page, rest) = match limit {
        Some(l) if matching.len() > l => matching.split_at(l),
        _ => (matching.as_slice(), &[][..]),
    };
    let mut meta = json!({"resourceVersion": current.to_string()});
    if let (false, Some(last)) = (rest.is_empty(), page.last()) {
        meta["continue"] = json!(hex(&key(last)));
        meta["remainingItemCount"] = json!(rest.len());
    }
    let items: Vec<Value> = page
        .iter()
        .map(|o| {
            let mut o = (*o).clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    // Encoding a big list (1 MiB of Nodes at 500) is most of the work:
    // done after the lock, so other requests and the controllers go on.
    drop(st);
    if table::wants_table(accept) {
        let include = params.get("includeObject").unwrap_or("Metadata");
        return Ok(ok_json(&table::table(kind, &items, meta, include)));
    }
    Ok(ok_json(&json!({
        "kind": format!("{}List", kind.info().kind),
        "apiVersion": kind.api_version(),
        "metadata": meta,
        "items": items,
    })))
}

fn watch_request(shared: &Arc<Shared>, t: &Target, params: &Params) -> Result<Response, ApiError> {
    let (label, field) = selectors(t.kind, params)?;
    let rv = match params.get("resourceVersion").unwrap_or("") {
        "" | "0" => None,
        v => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v:?}")))?,
        ),
    };
    let timeout = params
        .int("timeoutSeconds")?
        .filter(|s| *s > 0)
        .map_or(Duration::from_secs(1800), |s| {
            Duration::from_secs(s.unsigned_abs())
        });
    let name = t
        .name
        .clone()
        .or_else(|| field.pinned_name().map(str::to_string));
    Ok(watch::start(
        shared,
        WatchRequest {
            kind: t.kind,
            namespace: t.namespace.clone(),
            name,
            label,
            field,
            resource_version: rv,
            send_initial_events: params.flag("sendInitialEvents"),
            timeout,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Option<Target> {
        match parse_path(path) {
            Ok(Route::Resource(t)) => Some(t),
            _ => None,
        }
    }

    #[test]
    fn paths() {
        let t = target("/api/v1/namespaces/drydock/pods/p1/eviction");
        assert_eq!(
            t,
            Some(Target {
                kind: Kind::Pod,
                namespace: Some("drydock".into()),
                name: Some("p1".into()),
                sub: Some("eviction".into()),
                legacy_watch: false,
            })
        );
        assert_eq!(
            target("/api/v1/namespaces/drydock").map(|t| t.kind),
            Some(Kind::Namespace)
        );
        assert_eq!(
            target("/api/v1/namespaces/drydock/status").and_then(|t| t.sub),
            Some("status".into())
        );
        assert_eq!(target("/api/v1/pods").map(|t| t.namespace), Some(None));
        assert_eq!(
            target("/apis/coordination.k8s.io/v1/namespaces/d/leases/l").map(|t| t.kind),
            Some(Kind::Lease)
        );
        assert!(target("/api/v1/nodes/n1/status").is_some());
        assert!(target("/api/v1/pods/p1").is_none());
        assert!(target("/api/v1/namespaces/d/leases").is_none());
        assert!(target("/api/v1/nodes/n1/eviction").is_none());
        assert!(target("/api/v1/watch/nodes").is_some_and(|t| t.legacy_watch));
        assert!(matches!(parse_path("/version"), Ok(Route::Version)));
        assert!(parse_path("/foo").is_err());
        assert_eq!(unhex(&hex("ns\u{0}name")).as_deref(), Some("ns\u{0}name"));
    }
}
