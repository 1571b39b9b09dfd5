//! Request accounting and fault injection, as one axum middleware: every
//! request is counted by (verb, resource) with request and response bytes
//! (watch streams are counted as they flow), so a benchmark can measure the
//! API cost of one node reboot.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::routes::{Route, is_watch_query, parse_path};
use super::state::{Fault, Shared, lock};
use super::status::ApiError;

/// Counters for one (verb, resource).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub requests: u64,
    /// Responses with HTTP status >= 400.
    pub errors: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Time the simulator took to produce the responses (to the first
    /// byte; a watch counts its set-up only), in microseconds: a benchmark
    /// shows with it that the simulator is not what it measures.
    pub handling_micros: u64,
    /// The slowest of those.
    pub max_handling_micros: u64,
}

impl EndpointStats {
    fn add(&mut self, o: &EndpointStats) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.request_bytes += o.request_bytes;
        self.response_bytes += o.response_bytes;
        self.handling_micros += o.handling_micros;
        self.max_handling_micros = self.max_handling_micros.max(o.max_handling_micros);
    }
}

/// A snapshot of the API traffic since start or the last reset.
///
/// Verbs follow the apiserver's audit verbs (`get`, `list`, `watch`,
/// `create`, `update`, `patch`, `delete`); resources are plurals with an
/// optional subresource (`pods/eviction`, `nodes/status`), or `discovery`,
/// `version`, `openapi`, `other` for non-resource paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiStats {
    pub total: EndpointStats,
    pub by_endpoint: BTreeMap<(String, String), EndpointStats>,
    /// How long the simulator's state was locked (requests and its own
    /// controllers, one at a time), in microseconds.
    pub state_held_micros: u64,
}

pub(super) type StatsState = ApiStats;

impl ApiStats {
    pub fn get(&self, verb: &str, resource: &str) -> EndpointStats {
        self.by_endpoint
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// Requests for this resource (subresources excluded), any verb.
    pub fn resource(&self, resource: &str) -> EndpointStats {
        let mut s = EndpointStats::default();
        for ((_, r), e) in &self.by_endpoint {
            if r == resource {
                s.add(e);
            }
        }
        s
    }

    fn entry(&mut self, verb: &str, resource: &str) -> &mut EndpointStats {
        self.by_endpoint
            .entry((verb.to_string(), resource.to_string()))
            .or_default()
    }
}

impl fmt::Display for ApiStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<8} {:<28} {:>8} {:>6} {:>12} {:>12}",
            "VERB", "RESOURCE", "REQUESTS", "ERRORS", "REQ BYTES", "RESP BYTES"
        )?;
        for ((v, r), e) in &self.by_endpoint {
            writeln!(
                f,
                "{v:<8} {r:<28} {:>8} {:>6} {:>12} {:>12}",
                e.requests, e.errors, e.request_bytes, e.response_bytes
            )?;
        }
        let t = &self.total;
        write!(
            f,
            "{:<8} {:<28} {:>8} {:>6} {:>12} {:>12}",
            "TOTAL", "", t.requests, t.errors, t.request_bytes, t.response_bytes
        )
    }
}

/// (verb, resource) of a request, as the audit log would name it.
pub(super) fn classify(method: &str, path: &str, query: &str) -> (String, String) {
    let watch = is_watch_query(query);
    match parse_path(path) {
        Ok(Route::Resource(t)) => {
            let mut resource = t.kind.info().plural.to_string();
            if let Some(sub) = &t.sub {
                resource = format!("{resource}/{sub}");
            }
            let verb = match method {
                "GET" if watch || t.legacy_watch => "watch",
                "GET" if t.name.is_none() => "list",
                "GET" => "get",
                "POST" => "create",
                "PUT" => "update",
                "PATCH" => "patch",
                "DELETE" if t.name.is_none() => "deletecollection",
                "DELETE" => "delete",
                other => return (other.to_lowercase(), resource),
            };
            (verb.to_string(), resource)
        }
        Ok(Route::Version) => ("get".into(), "version".into()),
        Ok(Route::OpenApi | Route::OpenApiIndex | Route::OpenApiGroupVersion(..)) => {
            ("get".into(), "openapi".into())
        }
        Ok(Route::Health) => ("get".into(), "healthz".into()),
        Ok(_) => ("get".into(), "discovery".into()),
        Err(_) => (method.to_lowercase(), "other".into()),
    }
}

fn record(shared: &Shared, verb: &str, resource: &str, f: impl Fn(&mut EndpointStats)) {
    let mut s = lock(&shared.stats);
    f(&mut s.total);
    f(s.entry(verb, resource));
}

/// Counts the request, applies any injected fault, counts the response.
pub(super) async fn middleware(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let (verb, resource) = classify(
        req.method().as_str(),
        req.uri().path(),
        req.uri().query().unwrap_or(""),
    );
    let req_bytes = req.body().size_hint().exact().unwrap_or_else(|| {
        req.headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    let fault = (*lock(&shared.fault)).or_else(|| shared.faults.roll());
    let mut started = std::time::Instant::now();
    let resp = match fault {
        Some(Fault::Status(code)) => ApiError::with_code(code).into_response(),
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            started = std::time::Instant::now();
            next.run(req).await
        }
        None => next.run(req).await,
    };
    let took = started.elapsed().as_micros() as u64;
    let is_error = resp.status().as_u16() >= 400;
    record(&shared, &verb, &resource, |e| {
        e.requests += 1;
        e.errors += u64::from(is_error);
        e.request_bytes += req_bytes;
        e.handling_micros += took;
        e.max_handling_micros = e.max_handling_micros.max(took);
    });
    if let Some(n) = resp.body().size_hint().exact() {
        record(&shared, &verb, &resource, |e| e.response_bytes += n);
        return resp;
    }
    // Streams (watches): count each chunk as it is sent.
    let (parts, body) = resp.into_parts();
    let counted = body.into_data_stream().map(move |chunk| {
        if let Ok(b) = &chunk {
            let n = b.len() as u64;
            record(&shared, &verb, &resource, |e| e.response_bytes += n);
        }
        chunk
    });
    Response::from_parts(parts, Body::from_stream(counted))
}
