//! The object store: objects by (kind, namespace, name), one cluster-wide
//! resourceVersion counter, and a bounded history of changes for watches.
//!
//! Writes here are raw: callers (see `objects.rs`) validate and fill
//! metadata. Every write bumps the counter and publishes a [`Change`] while
//! the caller holds the state lock, so a watch that subscribes under the
//! same lock sees every change after its starting point exactly once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::kinds::{Kind, name_of, namespace_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write, as watches see it. `prev` lets a filtered watch turn a
/// MODIFIED that leaves (enters) its selector into DELETED (ADDED).
#[derive(Debug)]
pub(super) struct Change {
    pub rv: u64,
    pub kind: Kind,
    pub ty: EventType,
    pub object: Value,
    pub prev: Option<Value>,
}

type Key = (String, String);

pub(super) struct Store {
    rv: u64,
    objects: BTreeMap<Kind, BTreeMap<Key, Value>>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Watches must start at or after this resourceVersion (older: 410).
    compacted: u64,
    tx: broadcast::Sender<Arc<Change>>,
}

/// Capacity of the live channel; a watcher further behind is closed with 410.
const CHANNEL_CAPACITY: usize = 16_384;

impl Store {
    pub(super) fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        Self {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            tx,
        }
    }

    pub(super) fn rv(&self) -> u64 {
        self.rv
    }

    pub(super) fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&kind)?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// Objects of a kind in key order (namespace, name), optionally in one namespace.
    pub(super) fn list(&self, kind: Kind, ns: Option<&str>) -> Vec<&Value> {
        let Some(m) = self.objects.get(&kind) else {
            return vec![];
        };
        match ns {
            Some(ns) => m
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v)
                .collect(),
            None => m.values().collect(),
        }
    }

    /// Clones of a kind's objects (for callers that mutate while iterating).
    pub(super) fn list_owned(&self, kind: Kind, ns: Option<&str>) -> Vec<Value> {
        self.list(kind, ns).into_iter().cloned().collect()
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn publish(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(change);
    }

    fn stamp(obj: &mut Value, rv: u64) {
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    }

    /// Stores a new or changed object; returns it with its new resourceVersion.
    /// core/v1 and events.k8s.io/v1 Events are one store, as in the API
    /// server: a write through either API is seen through both.
    pub(super) fn put(&mut self, kind: Kind, obj: Value) -> Value {
        let rv = self.next_rv();
        if let Some((other, converted)) = event_view(kind, &obj) {
            self.put_at(other, converted, rv);
        }
        self.put_at(kind, obj, rv)
    }

    fn put_at(&mut self, kind: Kind, mut obj: Value, rv: u64) -> Value {
        Self::stamp(&mut obj, rv);
        let key = (namespace_of(&obj).to_string(), name_of(&obj).to_string());
        let prev = self
            .objects
            .entry(kind)
            .or_default()
            .insert(key, obj.clone());
        let ty = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.publish(Change {
            rv,
            kind,
            ty,
            object: obj.clone(),
            prev,
        });
        obj
    }

    /// Removes an object; the DELETED event carries the deletion's resourceVersion.
    pub(super) fn remove(&mut self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        match kind {
            Kind::Event => {
                self.remove_one(Kind::EventV1, ns, name);
            }
            Kind::EventV1 => {
                self.remove_one(Kind::Event, ns, name);
            }
            _ => {}
        }
        self.remove_one(kind, ns, name)
    }

    fn remove_one(&mut self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .objects
            .get_mut(&kind)?
            .remove(&(ns.to_string(), name.to_string()))?;
        let rv = self.next_rv();
        let prev = obj.clone();
        Self::stamp(&mut obj, rv);
        self.publish(Change {
            rv,
            kind,
            ty: EventType::Deleted,
            object: obj.clone(),
            prev: Some(prev),
        });
        Some(obj)
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    /// Retained changes after `rv`, or `Err(compacted)` when some were dropped.
    pub(super) fn since(&self, rv: u64) -> Result<Vec<Arc<Change>>, u64> {
        if rv < self.compacted {
            return Err(self.compacted);
        }
        Ok(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }
}

/// The same Event as the other API shows it (field names as the API
/// server converts them); `None` for every other kind.
fn event_view(kind: Kind, obj: &Value) -> Option<(Kind, Value)> {
    // (core/v1 field, events.k8s.io/v1 field)
    const FIELDS: &[(&str, &str)] = &[
        ("metadata", "metadata"),
        ("eventTime", "eventTime"),
        ("series", "series"),
        ("reportingComponent", "reportingController"),
        ("reportingInstance", "reportingInstance"),
        ("action", "action"),
        ("reason", "reason"),
        ("type", "type"),
        ("involvedObject", "regarding"),
        ("related", "related"),
        ("message", "note"),
        ("source", "deprecatedSource"),
        ("firstTimestamp", "deprecatedFirstTimestamp"),
        ("lastTimestamp", "deprecatedLastTimestamp"),
        ("count", "deprecatedCount"),
    ];
    let (other, api_version, from_core) = match kind {
        Kind::Event => (Kind::EventV1, "events.k8s.io/v1", true),
        Kind::EventV1 => (Kind::Event, "v1", false),
        _ => return None,
    };
    let mut out = serde_json::Map::new();
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    for (core, v1) in FIELDS {
        let (src, dst) = if from_core { (core, v1) } else { (v1, core) };
        if let Some(v) = obj.get(*src).filter(|v| !v.is_null()) {
            out.insert((*dst).to_string(), v.clone());
        }
    }
    Some((other, Value::Object(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"}})
    }

    #[test]
    fn resource_versions_increase_and_history_compacts() {
        let mut s = Store::new(2);
        let a = s.put(Kind::Lease, lease("a"));
        let b = s.put(Kind::Lease, lease("b"));
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        assert_eq!(s.since(0).map(|v| v.len()), Ok(2));
        s.put(Kind::Lease, lease("a"));
        assert_eq!(s.since(0).map(|v| v.len()), Err(1));
        let since1 = s.since(1).unwrap_or_default();
        assert_eq!(since1.len(), 2);
        assert_eq!(since1[1].ty, EventType::Modified);
        let gone = s.remove(Kind::Lease, "ns", "a");
        assert_eq!(
            gone.map(|g| g["metadata"]["resourceVersion"].clone()),
            Some(json!("4"))
        );
        assert_eq!(s.list(Kind::Lease, Some("ns")).len(), 1);
        assert!(s.list(Kind::Lease, Some("other")).is_empty());
    }
}
