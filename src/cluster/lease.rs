//! The Lease semaphore: `concurrency` coordination.k8s.io/v1 Leases named
//! `drydock-<group>-<i>` in the drydock namespace; holding one lets a node
//! leave the cluster. Holder identity is the node name. Every write carries
//! the resourceVersion read, so of two nodes racing for a slot exactly one
//! wins and the other gets 409.
//!
//! Takeover rule (pure, [`decide`]): an expired Lease held by another node is
//! taken only when the caller's gates pass, or when the holder's Node no
//! longer exists. A holder that rebooted and stayed broken is NotReady, so
//! the nodes-ready gate blocks and the fleet halts instead of cascading. A
//! Lease this node already holds (e.g. across its own reboot) is renewed,
//! never acquired anew.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("listing Leases in namespace {namespace}: {source}")]
    List {
        namespace: String,
        source: kube::Error,
    },
    #[error("reading Lease {namespace}/{slot}: {source}")]
    Get {
        namespace: String,
        slot: String,
        source: kube::Error,
    },
    #[error("{action} Lease {namespace}/{slot}: {source}")]
    Write {
        action: &'static str,
        namespace: String,
        slot: String,
        source: kube::Error,
    },
    #[error("checking whether Lease holder node {node} still exists: {source}")]
    HolderNode { node: String, source: kube::Error },
    #[error("lost Lease {namespace}/{slot}: {}", match .holder {
        Some(h) => format!("now held by {h}"),
        None => "it was released or deleted".to_string(),
    })]
    Lost {
        namespace: String,
        slot: String,
        holder: Option<String>,
    },
    #[error("{action} Lease {namespace}/{slot}: still conflicting after {attempts} attempts")]
    Conflict {
        action: &'static str,
        namespace: String,
        slot: String,
        attempts: u32,
    },
    #[error("watching Leases in namespace {namespace}: {source}")]
    Watch {
        namespace: String,
        source: kube::Error,
    },
}

/// One slot as seen by `drydock status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotStatus {
    pub name: String,
    /// `None`: free (or the Lease object does not exist yet).
    pub holder: Option<String>,
    pub acquired_at: Option<Timestamp>,
    pub renewed_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub expired: bool,
}

/// What a slot is, from this node's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotClass {
    /// No Lease object yet.
    Missing,
    /// Exists, nobody holds it.
    Free,
    /// Held by this node.
    Mine,
    /// Held by another node, renewed in time.
    Held {
        holder: String,
        expires_at: Timestamp,
    },
    /// Held by another node that stopped renewing.
    Expired {
        holder: String,
        expired_at: Timestamp,
    },
}

/// What to do with a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Create,
    Take,
    Renew,
    /// Not this one; why (for logs and status).
    Skip(String),
}

fn holder_of(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// When the current holder's claim runs out: last renewal (or acquisition)
/// plus its duration (`default_duration` if the Lease has none). A held
/// Lease with neither time is treated as long expired.
fn expires_at(lease: &Lease, default_duration: Duration) -> Timestamp {
    let spec = lease.spec.as_ref();
    let last = spec
        .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
        .map(|t| t.0);
    let secs = spec
        .and_then(|s| s.lease_duration_seconds)
        .map_or(default_duration.as_secs() as i64, i64::from);
    match last {
        Some(t) => t
            .saturating_add(SignedDuration::from_secs(secs))
            .unwrap_or(t),
        None => Timestamp::UNIX_EPOCH,
    }
}

pub fn classify(
    lease: Option<&Lease>,
    me: &str,
    now: Timestamp,
    default_duration: Duration,
) -> SlotClass {
    let Some(lease) = lease else {
        return SlotClass::Missing;
    };
    match holder_of(lease) {
        None => SlotClass::Free,
        Some(h) if h == me => SlotClass::Mine,
        Some(h) => {
            let at = expires_at(lease, default_duration);
            if now < at {
                SlotClass::Held {
                    holder: h.to_string(),
                    expires_at: at,
                }
            } else {
                SlotClass::Expired {
                    holder: h.to_string(),
                    expired_at: at,
                }
            }
        }
    }
}

/// The takeover rule. `holder_node_exists` is only consulted for an expired
/// slot whose takeover the gates do not allow (`None`: not looked up).
pub fn decide(class: &SlotClass, gates_pass: bool, holder_node_exists: Option<bool>) -> Decision {
    match class {
        SlotClass::Missing => Decision::Create,
        SlotClass::Free => Decision::Take,
        SlotClass::Mine => Decision::Renew,
        SlotClass::Held { holder, expires_at } => {
            Decision::Skip(format!("held by {holder} until {expires_at}"))
        }
        SlotClass::Expired { .. } if gates_pass => Decision::Take,
        SlotClass::Expired { .. } if holder_node_exists == Some(false) => Decision::Take,
        SlotClass::Expired { holder, expired_at } => Decision::Skip(format!(
            "held by {holder}, expired at {expired_at}; not taken over while gates block ({holder} may be down and broken)"
        )),
    }
}

/// A slot this node holds. Keep it to renew and release.
#[derive(Debug, Clone)]
pub struct Held {
    pub slot: String,
    /// It was already ours when found (after our own reboot, a restart).
    pub resumed: bool,
    lease: Lease,
}

impl Held {
    pub fn acquired_at(&self) -> Option<Timestamp> {
        self.lease
            .spec
            .as_ref()
            .and_then(|s| s.acquire_time.as_ref())
            .map(|t| t.0)
    }

    pub fn renewed_at(&self) -> Option<Timestamp> {
        self.lease
            .spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0)
    }
}

/// What the last list showed, so a watch can start exactly there and tell
/// a real change (holder, expiry) from a renewal.
#[derive(Debug, Default)]
struct Seen {
    resource_version: Option<String>,
    slots: BTreeMap<String, (Option<String>, Timestamp)>,
}

pub struct LeaseClient {
    leases: Api<Lease>,
    nodes: Api<Node>,
    namespace: String,
    group: String,
    slots: Vec<String>,
    me: String,
    duration: Duration,
    seen: Mutex<Seen>,
    clock_offset: SignedDuration,
}

const ATTEMPTS: u32 = 3;

/// Fault-injection seam: per node name, how far that node's clock is off.
/// Agents of a simulated fleet share one process clock; a fault test skews
/// each one here, as machines' clocks are skewed. Read once, when a
/// [`LeaseClient`] is built; empty (no skew) unless a test sets it.
static CLOCK_OFFSETS: Mutex<BTreeMap<String, SignedDuration>> = Mutex::new(BTreeMap::new());

/// Skews the Lease clock of every [`LeaseClient`] built for `node` from now
/// on (its expiry judgements and the times it writes). For fault tests.
pub fn set_clock_offset(node: &str, offset: SignedDuration) {
    let mut m = CLOCK_OFFSETS.lock().unwrap_or_else(|p| p.into_inner());
    if offset.is_zero() {
        m.remove(node);
    } else {
        m.insert(node.to_string(), offset);
    }
}

fn clock_offset(node: &str) -> SignedDuration {
    CLOCK_OFFSETS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(node)
        .copied()
        .unwrap_or(SignedDuration::ZERO)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl LeaseClient {
    pub fn new(client: kube::Client, settings: &Settings, node_name: &str) -> LeaseClient {
        LeaseClient {
            leases: Api::namespaced(client.clone(), &settings.lease.namespace),
            nodes: Api::all(client),
            namespace: settings.lease.namespace.clone(),
            group: settings.lease.group.clone(),
            slots: settings.lease_slot_names(),
            me: node_name.to_string(),
            duration: settings.lease.duration,
            seen: Mutex::new(Seen::default()),
            clock_offset: clock_offset(node_name),
        }
    }

    /// This node's clock (see [`set_clock_offset`]).
    fn now(&self) -> Timestamp {
        Timestamp::now() + self.clock_offset
    }

    /// One list of the namespace's Leases (our slots among them).
    async fn list(&self) -> Result<BTreeMap<String, Lease>, LeaseError> {
        let list = self
            .leases
            .list(&ListParams::default())
            .await
            .map_err(|source| LeaseError::List {
                namespace: self.namespace.clone(),
                source,
            })?;
        let mut out = BTreeMap::new();
        for lease in list.items {
            if let Some(name) = lease.metadata.name.clone()
                && self.slots.contains(&name)
            {
                out.insert(name, lease);
            }
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.resource_version = list.metadata.resource_version;
        seen.slots = out
            .iter()
            .map(|(n, l)| {
                (
                    n.clone(),
                    (holder_of(l).map(String::from), expires_at(l, self.duration)),
                )
            })
            .collect();
        Ok(out)
    }

    /// Every slot and its holder.
    pub async fn slots(&self) -> Result<Vec<SlotStatus>, LeaseError> {
        let leases = self.list().await?;
        let now = self.now();
        Ok(self
            .slots
            .iter()
            .map(|name| {
                let lease = leases.get(name);
                let spec = lease.and_then(|l| l.spec.as_ref());
                let holder = lease.and_then(holder_of).map(String::from);
                let expires = match (lease, &holder) {
                    (Some(l), Some(_)) => Some(expires_at(l, self.duration)),
                    _ => None,
                };
                SlotStatus {
                    name: name.clone(),
                    acquired_at: spec.and_then(|s| s.acquire_time.as_ref()).map(|t| t.0),
                    renewed_at: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
                    expired: expires.is_some_and(|e| e <= now),
                    expires_at: expires,
                    holder,
                }
            })
            .collect())
    }

    fn claim(&self, mut lease: Lease, now: Timestamp) -> Lease {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let changed_hands = holder_of_spec(spec) != Some(self.me.as_str());
        spec.holder_identity = Some(self.me.clone());
        spec.lease_duration_seconds =
            Some(self.duration.as_secs().clamp(1, i32::MAX as u64) as i32);
        if changed_hands {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        lease
    }

    fn new_lease(&self, slot: &str, now: Timestamp) -> Lease {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(slot.to_string()),
                namespace: Some(self.namespace.clone()),
                labels: Some(
                    [
                        (
                            "app.kubernetes.io/managed-by".to_string(),
                            "drydock".to_string(),
                        ),
                        ("drydock.dev/group".to_string(), self.group.clone()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                lease_transitions: Some(-1),
                ..Default::default()
            }),
        };
        // claim() counts the first holder as transition 0.
        self.claim(lease, now)
    }

    /// Takes a free slot, the slot this node already holds (renewed,
    /// `resumed`), or an expired one under the takeover rule. `Ok(None)`:
    /// every slot is taken (or another node won the race).
    /// `gates_pass`: the cluster-wide gates passed just now.
    pub async fn acquire(&self, gates_pass: bool) -> Result<Option<Held>, LeaseError> {
        let leases = self.list().await?;
        let now = self.now();
        // Ours already (our own reboot, a daemon restart): keep it.
        for slot in &self.slots {
            let lease = leases.get(slot);
            if classify(lease, &self.me, now, self.duration) == SlotClass::Mine
                && let Some(lease) = lease
            {
                let mut held = Held {
                    slot: slot.clone(),
                    resumed: true,
                    lease: lease.clone(),
                };
                self.renew(&mut held).await?;
                info!(node = %self.me, slot = %slot, "lease already held by this node; renewed");
                return Ok(Some(held));
            }
        }
        for slot in &self.slots {
            let lease = leases.get(slot);
            let class = classify(lease, &self.me, now, self.duration);
            let holder_exists = match &class {
                SlotClass::Expired { holder, .. } if !gates_pass => {
                    Some(self.node_exists(holder).await?)
                }
                _ => None,
            };
            let decision = decide(&class, gates_pass, holder_exists);
            let result = match (&decision, lease) {
                (Decision::Create, _) => self
                    .leases
                    .create(&PostParams::default(), &self.new_lease(slot, now))
                    .await
                    .map_err(|e| ("creating", e)),
                (Decision::Take, Some(lease)) => self
                    .leases
                    .replace(
                        slot,
                        &PostParams::default(),
                        &self.claim(lease.clone(), now),
                    )
                    .await
                    .map_err(|e| ("taking", e)),
                (Decision::Skip(why), _) => {
                    debug!(node = %self.me, slot = %slot, reason = %why, "lease slot not available");
                    continue;
                }
                _ => continue,
            };
            match result {
                Ok(lease) => {
                    if let SlotClass::Expired { holder, expired_at } = &class {
                        warn!(node = %self.me, slot = %slot, previous_holder = %holder,
                            expired_at = %expired_at, holder_node_exists = ?holder_exists,
                            "took over expired lease");
                    } else {
                        debug!(node = %self.me, slot = %slot, "lease slot taken");
                    }
                    return Ok(Some(Held {
                        slot: slot.clone(),
                        resumed: false,
                        lease,
                    }));
                }
                // Someone else won this slot (409), or it vanished (404): next.
                Err((_, e)) if is_conflict(&e) || is_not_found(&e) => {
                    debug!(node = %self.me, slot = %slot, "lost the race for a lease slot");
                    continue;
                }
                Err((action, source)) => {
                    return Err(LeaseError::Write {
                        action,
                        namespace: self.namespace.clone(),
                        slot: slot.clone(),
                        source,
                    });
                }
            }
        }
        Ok(None)
    }

    /// The slot this node holds, if any, renewed (after our own reboot).
    pub async fn mine(&self) -> Result<Option<Held>, LeaseError> {
        let leases = self.list().await?;
        for slot in &self.slots {
            if let Some(lease) = leases.get(slot)
                && holder_of(lease) == Some(self.me.as_str())
            {
                let mut held = Held {
                    slot: slot.clone(),
                    resumed: true,
                    lease: lease.clone(),
                };
                self.renew(&mut held).await?;
                return Ok(Some(held));
            }
        }
        Ok(None)
    }

    async fn node_exists(&self, node: &str) -> Result<bool, LeaseError> {
        self.nodes
            .get_opt(node)
            .await
            .map(|n| n.is_some())
            .map_err(|source| LeaseError::HolderNode {
                node: node.to_string(),
                source,
            })
    }

    async fn get(&self, slot: &str) -> Result<Option<Lease>, LeaseError> {
        self.leases
            .get_opt(slot)
            .await
            .map_err(|source| LeaseError::Get {
                namespace: self.namespace.clone(),
                slot: slot.to_string(),
                source,
            })
    }

    fn lost(&self, slot: &str, holder: Option<&str>) -> LeaseError {
        LeaseError::Lost {
            namespace: self.namespace.clone(),
            slot: slot.to_string(),
            holder: holder.map(String::from),
        }
    }

    /// Extends our claim. One request normally; on a conflict re-reads, and
    /// fails with [`LeaseError::Lost`] if another node holds it now.
    pub async fn renew(&self, held: &mut Held) -> Result<(), LeaseError> {
        let mut lease = held.lease.clone();
        for _ in 0..ATTEMPTS {
            if holder_of(&lease) != Some(self.me.as_str()) {
                return Err(self.lost(&held.slot, holder_of(&lease)));
            }
            let claim = self.claim(lease.clone(), self.now());
            match self
                .leases
                .replace(&held.slot, &PostParams::default(), &claim)
                .await
            {
                Ok(updated) => {
                    held.lease = updated;
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => match self.get(&held.slot).await? {
                    Some(fresh) => lease = fresh,
                    None => return Err(self.lost(&held.slot, None)),
                },
                Err(e) if is_not_found(&e) => return Err(self.lost(&held.slot, None)),
                Err(source) => {
                    return Err(LeaseError::Write {
                        action: "renewing",
                        namespace: self.namespace.clone(),
                        slot: held.slot.clone(),
                        source,
                    });
                }
            }
        }
        Err(LeaseError::Conflict {
            action: "renewing",
            namespace: self.namespace.clone(),
            slot: held.slot.clone(),
            attempts: ATTEMPTS,
        })
    }

    /// Gives the slot back: clears the holder, keeps the object. A slot
    /// already held by someone else (or gone) is left alone.
    pub async fn release(&self, held: &Held) -> Result<(), LeaseError> {
        let mut lease = held.lease.clone();
        for _ in 0..ATTEMPTS {
            if holder_of(&lease) != Some(self.me.as_str()) {
                warn!(node = %self.me, slot = %held.slot, holder = ?holder_of(&lease),
                    "lease no longer ours; nothing to release");
                return Ok(());
            }
            let mut released = lease.clone();
            if let Some(spec) = released.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = Some(MicroTime(self.now()));
            }
            match self
                .leases
                .replace(&held.slot, &PostParams::default(), &released)
                .await
            {
                Ok(_) => {
                    info!(node = %self.me, slot = %held.slot, "lease slot {} released", held.slot);
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => match self.get(&held.slot).await? {
                    Some(fresh) => lease = fresh,
                    None => return Ok(()),
                },
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(source) => {
                    return Err(LeaseError::Write {
                        action: "releasing",
                        namespace: self.namespace.clone(),
                        slot: held.slot.clone(),
                        source,
                    });
                }
            }
        }
        Err(LeaseError::Conflict {
            action: "releasing",
            namespace: self.namespace.clone(),
            slot: held.slot.clone(),
            attempts: ATTEMPTS,
        })
    }

    /// Waits until a slot may have become available: a holder changed or
    /// left, a slot was deleted, or a held slot's claim ran out; or until
    /// `timeout`. Watches the Leases from the last list's resourceVersion
    /// (from [`slots`](Self::slots) or [`acquire`](Self::acquire)), so a
    /// release right after that list is not missed. Renewals do not wake
    /// it. Returns true on a change, false on timeout.
    pub async fn wait_for_change(&self, timeout: Duration) -> Result<bool, LeaseError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (mut rv, mut known) = {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            (seen.resource_version.clone(), seen.slots.clone())
        };
        if rv.is_none() {
            self.list().await?;
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            rv = seen.resource_version.clone();
            known = seen.slots.clone();
        }
        let mut rv = rv.unwrap_or_else(|| "0".into());
        loop {
            // Wake when a live claim runs out: expiry sends no event.
            let now = self.now();
            let next_expiry = known
                .values()
                .filter(|(h, at)| h.is_some() && *at > now)
                .map(|(_, at)| *at)
                .min();
            let mut wake = deadline;
            if let Some(at) = next_expiry {
                let left = Duration::try_from(at.duration_since(now)).unwrap_or_default();
                wake = wake.min(tokio::time::Instant::now() + left);
            }
            let left = wake.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(wake < deadline);
            }
            let wp = WatchParams::default().timeout(left.as_secs().clamp(1, 290) as u32);
            let stream = self
                .leases
                .watch(&wp, &rv)
                .await
                .map_err(|source| LeaseError::Watch {
                    namespace: self.namespace.clone(),
                    source,
                })?;
            let mut stream = std::pin::pin!(stream);
            let outcome = tokio::time::timeout_at(wake, async {
                while let Some(event) = stream.next().await {
                    let event = event.map_err(|source| LeaseError::Watch {
                        namespace: self.namespace.clone(),
                        source,
                    })?;
                    let (lease, deleted) = match event {
                        WatchEvent::Added(l) | WatchEvent::Modified(l) => (l, false),
                        WatchEvent::Deleted(l) => (l, true),
                        WatchEvent::Bookmark(b) => {
                            rv = b.metadata.resource_version;
                            continue;
                        }
                        // 410 Gone and the like: re-list to be sure.
                        WatchEvent::Error(status) => {
                            debug!(code = status.code, api_message = %status.message, "lease watch error; re-listing");
                            return Ok(Some(true));
                        }
                    };
                    if let Some(v) = &lease.metadata.resource_version {
                        rv = v.clone();
                    }
                    let Some(name) = lease.metadata.name.clone() else {
                        continue;
                    };
                    if !self.slots.contains(&name) {
                        continue;
                    }
                    let holder = holder_of(&lease).map(String::from);
                    let previous = known.get(&name).map(|(h, _)| h.clone());
                    if deleted || previous != Some(holder.clone()) {
                        return Ok(Some(true));
                    }
                    // A renewal: note the new expiry, keep waiting.
                    known.insert(name, (holder, expires_at(&lease, self.duration)));
                }
                Ok::<_, LeaseError>(None)
            })
            .await;
            match outcome {
                Ok(Ok(Some(changed))) => {
                    let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                    seen.resource_version = None;
                    return Ok(changed);
                }
                Ok(Err(e)) => return Err(e),
                // The server ended the watch early: resume from where we are.
                Ok(Ok(None)) => continue,
                // Deadline or an expiry.
                Err(_) => return Ok(wake < deadline),
            }
        }
    }
}

/// Our claim on a slot, as the [`LeaseKeeper`] publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours, renewed; valid until `expires_at` without another renewal.
    Held { slot: String, expires_at: Timestamp },
    /// Not ours any more (taken, released, deleted, or not renewed before
    /// it expired). Final: a keeper never gets it back.
    Lost {
        slot: String,
        /// The new holder, when known.
        holder: Option<String>,
        reason: String,
    },
}

impl Claim {
    pub fn is_lost(&self) -> bool {
        matches!(self, Claim::Lost { .. })
    }

    pub fn slot(&self) -> &str {
        match self {
            Claim::Held { slot, .. } | Claim::Lost { slot, .. } => slot,
        }
    }

    /// Who has it now, for messages.
    pub fn holder(&self) -> String {
        match self {
            Claim::Lost {
                holder: Some(h), ..
            } => h.clone(),
            Claim::Lost { reason, .. } => format!("nobody ({reason})"),
            Claim::Held { .. } => "this node".into(),
        }
    }
}

/// Waits until `claim` says the slot is lost (or its keeper is gone);
/// returns the final claim.
pub async fn claim_lost(claim: &mut watch::Receiver<Claim>) -> Claim {
    let found = claim.wait_for(Claim::is_lost).await.map(|c| c.clone());
    match found {
        Ok(c) => c,
        // The keeper stopped without saying: treat the slot as lost.
        Err(_) => Claim::Lost {
            slot: claim.borrow().slot().to_string(),
            holder: None,
            reason: "the lease keeper stopped".into(),
        },
    }
}

/// Holds one slot: a background task renews it every `every` and
/// publishes the claim on a watch channel, so any long step can stop the
/// moment the slot is gone (kubert's lease shape). A renewal that keeps
/// failing is given up as lost before the claim could expire: the slot
/// is then fair game for others, so this node must already have stopped.
pub struct LeaseKeeper {
    claim: watch::Receiver<Claim>,
    tx: Arc<watch::Sender<Claim>>,
    held: Arc<Mutex<Held>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    pub fn spawn(client: Arc<LeaseClient>, held: Held, every: Duration) -> LeaseKeeper {
        let expires_at = expires_at(&held.lease, client.duration);
        let (tx, rx) = watch::channel(Claim::Held {
            slot: held.slot.clone(),
            expires_at,
        });
        let shared = Arc::new(Mutex::new(held));
        let tx = Arc::new(tx);
        let task = tokio::spawn(keep(client, shared.clone(), tx.clone(), every));
        LeaseKeeper {
            claim: rx,
            tx,
            held: shared,
            task,
        }
    }

    pub fn claim(&self) -> watch::Receiver<Claim> {
        self.claim.clone()
    }

    pub fn is_lost(&self) -> bool {
        self.claim.borrow().is_lost()
    }

    /// Renews at once (before a step that cannot be taken back) and
    /// publishes the result; a loss found here is final, as in the task.
    pub(crate) async fn renew_now(&self, client: &LeaseClient) -> Result<(), LeaseError> {
        if let Claim::Lost { slot, holder, .. } = self.claim.borrow().clone() {
            return Err(client.lost(&slot, holder.as_deref()));
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match client.renew(&mut held).await {
            Ok(()) => {
                let claim = Claim::Held {
                    slot: held.slot.clone(),
                    expires_at: expires_at(&held.lease, client.duration),
                };
                *self.held.lock().unwrap_or_else(|p| p.into_inner()) = held;
                self.tx.send_replace(claim);
                Ok(())
            }
            Err(LeaseError::Lost {
                slot,
                holder,
                namespace,
            }) => {
                self.task.abort();
                self.tx.send_replace(Claim::Lost {
                    slot: slot.clone(),
                    holder: holder.clone(),
                    reason: "found taken when renewing".into(),
                });
                Err(LeaseError::Lost {
                    namespace,
                    slot,
                    holder,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Stops renewing and gives the slot back.
    pub async fn release(self, client: &LeaseClient) -> Result<(), LeaseError> {
        self.task.abort();
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        client.release(&held).await
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep(
    client: Arc<LeaseClient>,
    shared: Arc<Mutex<Held>>,
    tx: Arc<watch::Sender<Claim>>,
    every: Duration,
) {
    let retry = (every / 4).max(Duration::from_millis(100));
    let mut wait = every;
    loop {
        tokio::time::sleep(wait).await;
        let mut held = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let slot = held.slot.clone();
        let expires = expires_at(&held.lease, client.duration);
        // Give up a renewal period before the expiry others will see, so
        // this node has stopped well before another may take over.
        let margin = SignedDuration::try_from(every).unwrap_or(SignedDuration::ZERO);
        let give_up_at = expires - margin;
        let left = Duration::try_from(give_up_at.duration_since(client.now())).unwrap_or_default();
        let outcome = match tokio::time::timeout(left, client.renew(&mut held)).await {
            Ok(r) => r,
            Err(_) => Err(LeaseError::Conflict {
                action: "renewing (no answer before the claim ran out)",
                namespace: client.namespace.clone(),
                slot: slot.clone(),
                attempts: 1,
            }),
        };
        match outcome {
            Ok(()) => {
                let expires_at = expires_at(&held.lease, client.duration);
                *shared.lock().unwrap_or_else(|p| p.into_inner()) = held;
                let _ = tx.send(Claim::Held { slot, expires_at });
                wait = every;
            }
            Err(LeaseError::Lost { holder, .. }) => {
                warn!(node = %client.me, slot = %slot, holder = ?holder, "lease lost to another holder");
                let _ = tx.send(Claim::Lost {
                    slot,
                    reason: match &holder {
                        Some(h) => format!("taken by {h}"),
                        None => "released or deleted by someone else".into(),
                    },
                    holder,
                });
                return;
            }
            Err(e)
                if client.now() + SignedDuration::try_from(retry).unwrap_or_default()
                    >= give_up_at =>
            {
                warn!(node = %client.me, slot = %slot, error = %e, expires_at = %expires, "lease not renewed before it ran out; giving it up");
                let _ = tx.send(Claim::Lost {
                    slot,
                    holder: None,
                    reason: format!("not renewed before it expired at {expires}: {e}"),
                });
                return;
            }
            Err(e) => {
                warn!(node = %client.me, slot = %slot, error = %e, expires_at = %expires, "lease renewal failed; retrying");
                wait = retry;
            }
        }
    }
}

fn holder_of_spec(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(60);

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn lease(holder: Option<&str>, renewed: Option<&str>, secs: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: renewed.map(|r| MicroTime(t(r))),
                lease_duration_seconds: secs,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn slots_are_classified() {
        let now = t("2025-01-01T00:01:00Z");
        assert_eq!(classify(None, "me", now, D), SlotClass::Missing);
        assert_eq!(
            classify(Some(&lease(None, None, None)), "me", now, D),
            SlotClass::Free
        );
        assert_eq!(
            classify(Some(&lease(Some(""), None, None)), "me", now, D),
            SlotClass::Free
        );
        // Ours even when expired: our own reboot took longer than the lease.
        assert_eq!(
            classify(
                Some(&lease(Some("me"), Some("2024-01-01T00:00:00Z"), Some(10))),
                "me",
                now,
                D
            ),
            SlotClass::Mine
        );
        assert_eq!(
            classify(
                Some(&lease(Some("n2"), Some("2025-01-01T00:00:30Z"), Some(60))),
                "me",
                now,
                D
            ),
            SlotClass::Held {
                holder: "n2".into(),
                expires_at: t("2025-01-01T00:01:30Z")
            }
        );
        // Exactly at expiry: expired.
        assert_eq!(
            classify(
                Some(&lease(Some("n2"), Some("2025-01-01T00:00:00Z"), Some(60))),
                "me",
                now,
                D
            ),
            SlotClass::Expired {
                holder: "n2".into(),
                expired_at: now
            }
        );
        // No duration on the object: ours applies.
        assert!(matches!(
            classify(
                Some(&lease(Some("n2"), Some("2025-01-01T00:00:30Z"), None)),
                "me",
                now,
                D
            ),
            SlotClass::Held { .. }
        ));
        // Held without any time: expired long ago.
        assert!(matches!(
            classify(Some(&lease(Some("n2"), None, Some(60))), "me", now, D),
            SlotClass::Expired { .. }
        ));
    }

    #[test]
    fn takeover_needs_passing_gates_or_a_deleted_holder() {
        let expired = SlotClass::Expired {
            holder: "n2".into(),
            expired_at: t("2025-01-01T00:00:00Z"),
        };
        assert_eq!(decide(&expired, true, None), Decision::Take);
        assert_eq!(decide(&expired, false, Some(false)), Decision::Take);
        match decide(&expired, false, Some(true)) {
            Decision::Skip(why) => {
                assert!(why.contains("not taken over while gates block"), "{why}")
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(decide(&expired, false, None), Decision::Skip(_)));
    }

    #[test]
    fn free_missing_mine_and_held() {
        assert_eq!(decide(&SlotClass::Missing, false, None), Decision::Create);
        assert_eq!(decide(&SlotClass::Free, false, None), Decision::Take);
        assert_eq!(decide(&SlotClass::Mine, false, None), Decision::Renew);
        let held = SlotClass::Held {
            holder: "n2".into(),
            expires_at: t("2025-01-01T00:00:00Z"),
        };
        // A live holder is never taken over, whatever the gates say.
        assert!(matches!(
            decide(&held, true, Some(false)),
            Decision::Skip(_)
        ));
    }
}
