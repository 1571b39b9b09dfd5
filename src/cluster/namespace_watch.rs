//! The drydock Namespace's annotations, kept current by a watch, so an idle
//! node reads the upgrade target at every check without a request.
//!
//! The pattern of the Lease watch (`lease::LeaseClient::wait_for_change`):
//! read once, watch from that read's resourceVersion (nothing between the
//! two is missed), bookmarks move the resourceVersion on, an ERROR event
//! (410 Gone and the like) or a failed watch ends it. Unlike the Lease
//! watch, this one stays open between checks, in a background task: a
//! watch per check would be a request per check again.
//!
//! Fail closed: the watch's value is given out only while its stream is
//! open and inside its own deadline. Otherwise the caller gets one GET,
//! which also starts the watch again from that read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, WatchEvent, WatchParams};
use tokio::task::JoinHandle;
use tracing::debug;

use super::annotations::{self, AnnotationError};

/// A watch's length: the API server's own default range (from its
/// `--min-request-timeout`, 30 min, to twice that), random so that a
/// fleet's nodes do not reconnect together.
const WATCH_SECS: std::ops::Range<u32> = 1800..3600;
/// Past its requested length, a stream that has not ended is taken for a
/// dead connection.
const DEADLINE_MARGIN: Duration = Duration::from_secs(30);

/// What the last read or watch event showed.
#[derive(Debug, Default)]
struct Seen {
    /// The annotations at `resource_version`.
    annotations: BTreeMap<String, String>,
    resource_version: Option<String>,
    /// The watch's stream is open: `annotations` is current.
    live: bool,
}

impl Seen {
    fn take(&mut self, ns: Namespace) {
        self.resource_version = ns.metadata.resource_version;
        self.annotations = ns.metadata.annotations.unwrap_or_default();
    }
}

/// One Namespace, read once and then watched.
pub(crate) struct NamespaceWatch {
    client: kube::Client,
    namespace: String,
    seen: Arc<Mutex<Seen>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NamespaceWatch {
    pub(crate) fn new(client: kube::Client, namespace: &str) -> Self {
        NamespaceWatch {
            client,
            namespace: namespace.to_string(),
            seen: Arc::default(),
            task: Mutex::new(None),
        }
    }

    /// Annotation `key` as the open watch last saw it (`Some(None)`: not
    /// set); `None` when the watch is not open. Never a request.
    pub(crate) fn seen(&self, key: &str) -> Option<Option<String>> {
        let seen = lock(&self.seen);
        seen.live.then(|| seen.annotations.get(key).cloned())
    }

    /// Annotation `key`, current: the open watch's value, else one GET
    /// (which starts the watch again from it).
    pub(crate) async fn annotation(&self, key: &str) -> Result<Option<String>, AnnotationError> {
        match self.seen(key) {
            Some(value) => Ok(value),
            None => self.read(key).await,
        }
    }

    /// Annotation `key` from one GET, whatever the watch says. Starts the
    /// watch from this read when it is not running.
    pub(crate) async fn read(&self, key: &str) -> Result<Option<String>, AnnotationError> {
        let ns = annotations::get_existing(&self.client, &self.namespace).await?;
        let value = ns
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key).cloned());
        let mut task = lock(&self.task);
        // A running watch keeps its own (newer or equal) view: this read
        // must not move it back.
        if task.as_ref().is_none_or(|t| t.is_finished()) {
            lock(&self.seen).take(ns);
            *task = Some(tokio::spawn(watch(
                Api::all(self.client.clone()),
                self.namespace.clone(),
                self.seen.clone(),
            )));
        }
        Ok(value)
    }
}

impl Drop for NamespaceWatch {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

/// Watches from the last read's resourceVersion until the watch fails;
/// a stream the server ends on time is resumed from where it was.
async fn watch(api: Api<Namespace>, namespace: String, seen: Arc<Mutex<Seen>>) {
    let fields = format!("metadata.name={namespace}");
    let why = loop {
        let Some(rv) = lock(&seen).resource_version.clone() else {
            break "no resourceVersion to watch from".to_string();
        };
        let secs = fastrand::u32(WATCH_SECS);
        let wp = WatchParams::default().fields(&fields).timeout(secs);
        let stream = match api.watch(&wp, &rv).await {
            Ok(s) => s,
            Err(e) => break format!("starting the watch: {e}"),
        };
        lock(&seen).live = true;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(secs.into()) + DEADLINE_MARGIN;
        let mut stream = std::pin::pin!(stream);
        let ended = tokio::time::timeout_at(deadline, async {
            while let Some(event) = stream.next().await {
                match event {
                    Ok(WatchEvent::Added(ns) | WatchEvent::Modified(ns)) => lock(&seen).take(ns),
                    Ok(WatchEvent::Bookmark(b)) => {
                        lock(&seen).resource_version = Some(b.metadata.resource_version);
                    }
                    Ok(WatchEvent::Deleted(_)) => return Err("the Namespace was deleted".into()),
                    // 410 Gone and the like: the next check reads it again.
                    Ok(WatchEvent::Error(s)) => {
                        return Err(format!("watch error {}: {}", s.code, s.message));
                    }
                    Err(e) => return Err(format!("reading the watch: {e}")),
                }
            }
            Ok(())
        })
        .await;
        match ended {
            // The server ended it on time: resume (not live until then).
            Ok(Ok(())) => lock(&seen).live = false,
            Ok(Err(why)) => break why,
            Err(_) => break "no end of the stream by its deadline".to_string(),
        }
    };
    let mut s = lock(&seen);
    s.live = false;
    s.resource_version = None;
    debug!(namespace = %namespace, reason = %why, "Namespace watch stopped; the next check reads it");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_kept_but_not_current_until_the_watch_is_open() {
        let mut s = Seen::default();
        let mut ns = Namespace::default();
        ns.metadata.resource_version = Some("7".into());
        ns.metadata.annotations = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
        s.take(ns);
        assert_eq!(s.resource_version.as_deref(), Some("7"));
        assert_eq!(s.annotations.get("k").map(String::as_str), Some("v"));
        // Taking a read does not make the value current: only the open
        // watch does.
        assert!(!s.live);
    }
}
