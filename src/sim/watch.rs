//! Watches: a chunked stream of newline-delimited
//! `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":{...}}`.
//!
//! - no resourceVersion or "0": synthetic ADDED for current objects, then
//!   live changes (`sendInitialEvents=true` also ends the initial batch with
//!   the `k8s.io/initial-events-end` BOOKMARK);
//! - resourceVersion N: retained changes after N, then live ones; N older
//!   than the retained history gets one ERROR event carrying a 410 Expired
//!   `Status` and the stream ends, as with the apiserver's watch cache;
//! - label/field selectors filter, and an object that stops (starts)
//!   matching is reported as DELETED (ADDED);
//! - `timeoutSeconds` ends the stream (default 30 minutes).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::kinds::{Kind, name_of, namespace_of};
use super::selectors::{FieldSelector, LabelSelector};
use super::state::Shared;
use super::status::ApiError;
use super::store::{Change, EventType};

pub(super) struct WatchRequest {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub label: LabelSelector,
    pub field: FieldSelector,
    /// None for "" / "0": start with the current state.
    pub resource_version: Option<u64>,
    pub send_initial_events: bool,
    pub timeout: Duration,
}

impl WatchRequest {
    fn matches(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| namespace_of(obj) == ns)
            && self.name.as_deref().is_none_or(|n| name_of(obj) == n)
            && self.label.matches_object(obj)
            && self.field.matches(self.kind, obj)
    }

    /// The event this watcher sees for a change, if any.
    fn event_for(&self, c: &Change) -> Option<(EventType, Value)> {
        if c.kind != self.kind {
            return None;
        }
        let now = self.matches(&c.object);
        let before = c.prev.as_ref().is_some_and(|p| self.matches(p));
        let ty = match c.ty {
            EventType::Added => now.then_some(EventType::Added),
            EventType::Deleted => (before || now).then_some(EventType::Deleted),
            EventType::Modified => match (before, now) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
        }?;
        Some((ty, c.object.clone()))
    }
}

fn line(ty: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn error_line(e: &ApiError) -> Bytes {
    line("ERROR", &e.to_status())
}

/// Starts a watch; everything before the first live change is computed
/// under the state lock, so nothing is missed or repeated.
pub(super) fn start(shared: &Arc<Shared>, req: WatchRequest) -> Response {
    let mut first: Vec<Bytes> = Vec::new();
    let (mut rx, start_rv) = {
        let st = shared.lock();
        let rx = st.store.subscribe();
        let current = st.store.rv();
        match req.resource_version {
            Some(rv) if !req.send_initial_events => match st.store.since(rv) {
                Ok(changes) => {
                    for c in &changes {
                        if let Some((ty, obj)) = req.event_for(c) {
                            first.push(line(ty.as_str(), &obj));
                        }
                    }
                }
                Err(compacted) => {
                    let e =
                        ApiError::expired(format!("too old resource version: {rv} ({compacted})"));
                    return stream_response(vec![error_line(&e)], None);
                }
            },
            _ => {
                for obj in st.store.list(req.kind, req.namespace.as_deref()) {
                    if req.matches(obj) {
                        first.push(line("ADDED", obj));
                    }
                }
                if req.send_initial_events {
                    let info = req.kind.info();
                    first.push(line(
                        "BOOKMARK",
                        &json!({
                            "kind": info.kind,
                            "apiVersion": req.kind.api_version(),
                            "metadata": {
                                "resourceVersion": current.to_string(),
                                "annotations": {"k8s.io/initial-events-end": "true"},
                            },
                        }),
                    ));
                }
            }
        }
        let start_rv = match req.resource_version {
            Some(rv) if !req.send_initial_events => rv.max(current),
            _ => current,
        };
        (rx, start_rv)
    };
    let shutdown = shared.shutdown.subscribe();
    let closed = shared.faults.watches_closed();
    let deadline = tokio::time::Instant::now() + req.timeout;
    let live = async_stream::stream! {
        let mut last = start_rv;
        let stop = stopped(shutdown);
        tokio::pin!(stop);
        tokio::pin!(closed);
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(c) => {
                        if c.rv <= last {
                            continue;
                        }
                        last = c.rv;
                        if let Some((ty, obj)) = req.event_for(&c) {
                            yield Ok::<Bytes, Infallible>(line(ty.as_str(), &obj));
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let e = ApiError::expired("watch fell too far behind; resourceVersion too old");
                        yield Ok(error_line(&e));
                        break;
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = &mut stop => break,
                _ = &mut closed => break,
            }
        }
    };
    stream_response(first, Some(Box::pin(live)))
}

/// Resolves when the server is stopped.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

type LiveStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, Infallible>> + Send>>;

fn stream_response(first: Vec<Bytes>, live: Option<LiveStream>) -> Response {
    use futures::StreamExt;
    let head = futures::stream::iter(first.into_iter().map(Ok::<Bytes, Infallible>));
    let body = match live {
        Some(l) => Body::from_stream(head.chain(l)),
        None => Body::from_stream(head),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
