//! Fleet fault injection, fast tier: hundreds of seeds in seconds.
//!
//! What is real here: every node runs the real agent (`drydock::testing::agent::Agent`:
//! the driver, the state machine, its SQLite store) and the real host port
//! of `drydock simulate` (`SimHost`); the cluster-wide gates are the real
//! gate functions (`gates::evaluate_control`, `evaluate_cluster_verdict`:
//! halted, soak, nodes-ready, alerts); Lease expiry and takeover are judged
//! by the real `cluster::lease::classify` and `decide`.
//! What is a model: the Kubernetes API itself. The `Cluster` port is an
//! in-memory fleet (Leases, Nodes, the drydock Namespace's halt and soak
//! annotations, a Prometheus whose alerts flap), and the Lease keeper that
//! renews a held slot mirrors `cluster::lease::keep` (renew every third of
//! the duration, give up a renewal period before expiry). The HTTP client,
//! kube-rs, watches and the drain's pod handling are NOT covered here: the
//! simulator tier (`tests/fleet_faults.rs`) covers those with fewer seeds.
//!
//! Timings are short (a 2 s Lease, a 100 ms check interval) on the real
//! clock: the driver reads `Timestamp::now()`, so tokio's paused clock
//! cannot stand in. Many seeds run at once in one process.
//!
//! Faults, drawn per seed: agents killed at a random point and restarted
//! later; the API answering errors, hanging, down, or waking every watcher
//! for a while; a node that never comes back; a node failing verification;
//! a disruption budget that never allows (the drain times out); Prometheus
//! flapping (an alert firing and clearing, Prometheus unreachable for a
//! while); every agent's clock skewed, pairwise up to the Lease renew margin
//! (the keeper's renewal period); the Lease taken away mid-cycle.
//!
//! Invariants, checked every 5 ms under the model's lock (so exactly) and
//! at the end: never more nodes out of service (cordoned or NotReady) than
//! the concurrency + R + U (R: nodes that lost their slot after the reboot
//! request and wait to win one back; U: nodes that lost it before, whose
//! uncordon has not landed); no node cordoned without holding a Lease for
//! longer than a killed agent's Lease or an API outage can explain, except
//! R (a node that lost its slot before the request ends uncordoned); no
//! uncordon after a reboot without holding a slot at that moment; never two
//! holders believing they hold one slot at once; no slot taken unless that
//! node's last look at the cluster gates passed (at the Namespace's gates,
//! for a free slot taken to look at the rest holding it); no cordon unless
//! its last look at every gate, holding the slot, passed; no second reboot for one
//! need; no `Verified` without a reboot and passing checks; a failed
//! verification has the fleet halt set once the API is back (within 3 s of
//! the last fault), and no other node starts a cycle (cordons) more than
//! 0.5 s after the halt is set; every node rebooted unless a halt or a gate
//! explains why (a lost slot does not: the node waits again and finishes);
//! the history records every step.
//!
//! `cargo test --test fleet_model` runs `DRYDOCK_MODEL_SEEDS` seeds
//! (default 300), `DRYDOCK_MODEL_PARALLEL` at once (default 24);
//! `DRYDOCK_MODEL_SEED=N` replays one. A seed fixes the fault plan; the
//! interleaving of the agents still varies from run to run (real clock,
//! real threads), as it would in a cluster.

#[path = "support/seeds.rs"]
mod seeds;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drydock::testing::agent::Agent;
use drydock::testing::agent::ports::{
    AgentEvent, Claim, ClaimWatch, Cluster, ClusterGates, DrainReport, DrainResult, DrainTimeout,
    GateStatus, Halt, LeaseOutlook, PortError, Reporter,
};
use drydock::testing::cluster::annotations::{ClusterControl, FinishedReboot};
use drydock::testing::cluster::drain::{BlockReason, BlockedPod, PodRef};
use drydock::testing::cluster::lease::{self, Decision, SlotClass};
use drydock::testing::cluster::observe::{ClusterObservation, NodeView, ReadyStatus};
use drydock::testing::config::Settings;
use drydock::testing::gates::alerts::{Alert, AlertSource, SourceKind};
use drydock::testing::gates::{self, AlertObservation, GateReport};
use drydock::testing::phase::Phase;
use drydock::testing::simulate::host::{Machine, SimHost};
use drydock::testing::store::Store;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use seeds::{Loss, SeedRun, history_gaps, node_names};
use tokio::sync::{Notify, mpsc, watch};

const NODES: usize = 20;
const LEASE: Duration = Duration::from_secs(2);
/// The keeper's renewal period (`KubeCluster::renew_every`): also the margin
/// it gives up before expiry, so the most clock skew the design absorbs.
const RENEW: Duration = Duration::from_millis(666);
/// How long the client waits for a hung request.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(150);
/// Give up on a seed after this long (then the end checks decide).
const BOUND: Duration = Duration::from_secs(40);

#[derive(Debug, Clone, Copy, PartialEq)]
enum ApiFault {
    Errors,
    Hangs,
    Down,
    WakeWatchers,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PromFault {
    /// An alert fires.
    Firing,
    /// Prometheus does not answer (the gate fails closed).
    Unreachable,
}

#[derive(Debug, Clone)]
struct Plan {
    concurrency: u32,
    /// (node, kill at, restart that much later)
    kills: Vec<(String, Duration, Duration)>,
    api: Vec<(Duration, Duration, ApiFault)>,
    prometheus: Vec<(Duration, Duration, PromFault)>,
    /// Per node, in milliseconds.
    skew_ms: BTreeMap<String, i64>,
    never_returns: Option<String>,
    fails_verify: Option<String>,
    pdb_blocked: Option<String>,
    steal_lease_at: Option<Duration>,
}

fn plan(seed: u64) -> Plan {
    let mut rng = fastrand::Rng::with_seed(seed);
    let names = node_names(NODES);
    let workers = &names[1..];
    let pick = |rng: &mut fastrand::Rng| workers[rng.usize(..workers.len())].clone();
    let ms = |rng: &mut fastrand::Rng, lo: u64, hi: u64| Duration::from_millis(rng.u64(lo..hi));
    let mut kills = Vec::new();
    for _ in 0..rng.usize(0..=3) {
        let n = pick(&mut rng);
        // Restarted within the Lease: a dead agent's slot outlives it.
        kills.push((n, ms(&mut rng, 50, 4000), ms(&mut rng, 20, 1200)));
    }
    let mut api = Vec::new();
    for _ in 0..rng.usize(0..=3) {
        let what = match rng.u8(0..4) {
            0 => ApiFault::Errors,
            1 => ApiFault::Hangs,
            2 => ApiFault::Down,
            _ => ApiFault::WakeWatchers,
        };
        // Shorter than the keeper's patience (LEASE - RENEW): an outage
        // is not a lost Lease.
        api.push((ms(&mut rng, 0, 4000), ms(&mut rng, 50, 1000), what));
    }
    let mut prometheus = Vec::new();
    for _ in 0..rng.usize(0..=4) {
        let what = if rng.bool() {
            PromFault::Firing
        } else {
            PromFault::Unreachable
        };
        prometheus.push((ms(&mut rng, 0, 4000), ms(&mut rng, 20, 700), what));
    }
    // Pairwise at most 0.9 of the renew margin.
    let half = RENEW.as_millis() as i64 * 45 / 100;
    let skew_ms = names
        .iter()
        .map(|n| (n.clone(), rng.i64(-half..=half)))
        .collect();
    let mut chosen: Vec<String> = Vec::new();
    let mut distinct = |rng: &mut fastrand::Rng, on: bool| -> Option<String> {
        let n = pick(rng);
        if !on || chosen.contains(&n) {
            return None;
        }
        chosen.push(n.clone());
        Some(n)
    };
    // Every four seeds in a row see each kind of broken node once (and once
    // none), whatever the generator draws.
    let kind = seed % 4;
    let never_returns = distinct(&mut rng, kind == 0);
    let fails_verify = distinct(&mut rng, kind == 1);
    let pdb_blocked = distinct(&mut rng, kind == 2);
    let steal_lease_at = (rng.f64() < 0.3).then(|| ms(&mut rng, 200, 4000));
    Plan {
        concurrency: rng.u32(1..=3),
        kills,
        api,
        prometheus,
        skew_ms,
        never_returns,
        fails_verify,
        pdb_blocked,
        steal_lease_at,
    }
}

fn settings(dir: &std::path::Path, node: &str, concurrency: u32) -> Settings {
    let mut s = Settings::default();
    s.node.name = Some(node.to_string());
    s.node.state_db = dir.join(format!("{node}.db"));
    s.lease.concurrency = concurrency;
    s.lease.duration = LEASE;
    s.reboot.check_interval = Duration::from_millis(100);
    s.gates.soak = Duration::from_millis(40);
    s.drain.timeout = Duration::from_millis(300);
    s.drain.retry_interval = Duration::from_millis(50);
    // Longer than any API outage here: an outage is not a broken node.
    s.verify.timeout = Duration::from_millis(1500);
    s.report.textfile_dir = None;
    s.report.kubernetes_events = false;
    s.alerts.prometheus_url = Some("http://prometheus.model:9090".into());
    s
}

/// One Node as the model keeps it.
#[derive(Debug, Clone)]
struct NodeSt {
    ready: bool,
    ready_changed_at: Timestamp,
    unschedulable: bool,
    boot_id: String,
}

/// The whole in-memory cluster of one seed.
struct World {
    settings: Settings,
    leases: Vec<Lease>,
    nodes: BTreeMap<String, NodeSt>,
    halt: Option<Halt>,
    last_finished: Option<FinishedReboot>,
    api: Option<ApiFault>,
    prometheus: Option<PromFault>,
    rng: fastrand::Rng,
    pdb_blocked: Option<String>,
    /// Per node: whether its last look at every cluster gate passed.
    last_gates_passed: BTreeMap<String, bool>,
    /// Per node: whether its last look at the Namespace's gates alone
    /// (before taking a free slot to look at the rest) passed.
    last_control_passed: BTreeMap<String, bool>,
    /// Per node: whether its last look at every cluster gate passed while
    /// it held a slot (a cycle starts only after one).
    passed_holding: BTreeMap<String, bool>,
    /// Per slot: the nodes whose keeper currently publishes `Held` for it,
    /// with the real time until which that claim is promised (its keeper
    /// gives up a renewal period before the expiry it stamped).
    believed: BTreeMap<String, BTreeMap<String, Timestamp>>,
    violations: Vec<String>,
    requests: u64,
    /// When the fleet halt was last written.
    halt_set_at: Option<Instant>,
}

type Shared = Arc<Mutex<World>>;

fn lock(w: &Shared) -> std::sync::MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

fn holder(l: &Lease) -> Option<String> {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
}

/// Nodes whose keeper still holds a slot (a promise not yet run out): a
/// node in `failed` among them keeps its slot on purpose.
fn kept_slots(w: &World) -> BTreeSet<String> {
    let now = Timestamp::now();
    w.believed
        .values()
        .flat_map(|m| {
            m.iter()
                .filter(|(_, until)| **until > now)
                .map(|(n, _)| n.clone())
        })
        .collect()
}

fn slot_name(l: &Lease) -> String {
    l.metadata.name.clone().unwrap_or_default()
}

/// The `Cluster` port of one node over the shared model.
#[derive(Clone)]
struct ModelCluster {
    node: String,
    world: Shared,
    /// Wakes Lease watchers.
    changes: Arc<Notify>,
    skew: SignedDuration,
    keeper: Arc<Mutex<Option<Keeper>>>,
}

struct Keeper {
    slot: String,
    claim: watch::Receiver<Claim>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ModelCluster {
    /// This node's clock.
    fn now(&self) -> Timestamp {
        Timestamp::now() + self.skew
    }

    /// One API request: fails or hangs while a fault is on.
    async fn request(&self, action: &str) -> Result<(), PortError> {
        let fault = {
            let mut w = lock(&self.world);
            w.requests += 1;
            let roll = w.rng.f64();
            match w.api {
                Some(ApiFault::Down) => Some(ApiFault::Down),
                Some(f @ ApiFault::Errors) if roll < 0.3 => Some(f),
                Some(f @ ApiFault::Hangs) if roll < 0.2 => Some(f),
                _ => None,
            }
        };
        match fault {
            Some(ApiFault::Down) => Err(PortError::failed(action, "connection refused")),
            Some(ApiFault::Errors) => Err(PortError::failed(action, "500 Internal Server Error")),
            Some(ApiFault::Hangs) => {
                tokio::time::sleep(CLIENT_TIMEOUT).await;
                Err(PortError::failed(action, "timed out"))
            }
            _ => Ok(()),
        }
    }

    fn keeper_claim(&self, slot: &str) -> Option<ClaimWatch> {
        let k = self.keeper.lock().unwrap();
        k.as_ref()
            .filter(|k| k.slot == slot && !k.claim.borrow().is_lost())
            .map(|k| k.claim.clone())
    }

    /// Renews `slot` if it is still ours; the claim it gives.
    fn renew(&self, w: &mut World, slot: &str) -> Result<Claim, Claim> {
        let now = self.now();
        let lease = w.leases.iter_mut().find(|l| slot_name(l) == slot);
        match lease {
            Some(l) if holder(l).as_deref() == Some(self.node.as_str()) => {
                let spec = l.spec.get_or_insert_with(Default::default);
                spec.renew_time = Some(MicroTime(now));
                Ok(Claim::Held {
                    slot: slot.to_string(),
                    expires_at: now + SignedDuration::try_from(LEASE).unwrap(),
                })
            }
            l => Err(Claim::Lost {
                slot: slot.to_string(),
                holder: l.and_then(|l| holder(l)),
                reason: "found taken when renewing".into(),
            }),
        }
    }

    /// Records what this node's keeper now says about `slot`. Two nodes
    /// may never both be promised one slot; a claim past its give-up time
    /// (its keeper late under load) promises nothing and is dropped.
    fn publish(&self, w: &mut World, slot: &str, claim: &Claim) {
        let real_now = Timestamp::now();
        let set = w.believed.entry(slot.to_string()).or_default();
        match claim {
            Claim::Lost { .. } => {
                set.remove(&self.node);
            }
            Claim::Held { expires_at, .. } => {
                let promised = *expires_at - self.skew - SignedDuration::try_from(RENEW).unwrap();
                set.retain(|_, until| *until > real_now);
                let others: Vec<String> =
                    set.keys().filter(|n| **n != self.node).cloned().collect();
                set.insert(self.node.clone(), promised);
                if !others.is_empty() {
                    let v = format!(
                        "slot {slot} promised to {} while still promised to {others:?}",
                        self.node
                    );
                    w.violations.push(v);
                }
            }
        }
    }

    /// Mirrors `cluster::lease::keep`: renew every RENEW, retry faster on
    /// errors, give up a renewal period before the expiry others see.
    fn spawn_keeper(&self, slot: String, first: Claim) -> ClaimWatch {
        let (tx, rx) = watch::channel(first.clone());
        {
            let mut w = lock(&self.world);
            self.publish(&mut w, &slot, &first);
        }
        let me = self.clone();
        let s = slot.clone();
        let task = tokio::spawn(async move {
            let retry = (RENEW / 4).max(Duration::from_millis(100));
            let mut wait = RENEW;
            loop {
                tokio::time::sleep(wait).await;
                let expires = match &*tx.borrow() {
                    Claim::Held { expires_at, .. } => *expires_at,
                    Claim::Lost { .. } => return,
                };
                let give_up_at = expires - SignedDuration::try_from(RENEW).unwrap();
                let outcome = match me.request("renewing the Lease").await {
                    Ok(()) => {
                        let mut w = lock(&me.world);
                        let r = me.renew(&mut w, &s);
                        let c = match &r {
                            Ok(c) | Err(c) => c.clone(),
                        };
                        me.publish(&mut w, &s, &c);
                        let _ = tx.send(c);
                        Some(r.is_ok())
                    }
                    Err(_) => None,
                };
                match outcome {
                    Some(true) => wait = RENEW,
                    Some(false) => return,
                    None if me.now() + SignedDuration::try_from(retry).unwrap() >= give_up_at => {
                        let lost = Claim::Lost {
                            slot: s.clone(),
                            holder: None,
                            reason: format!("not renewed before it expired at {expires}"),
                        };
                        let mut w = lock(&me.world);
                        me.publish(&mut w, &s, &lost);
                        let _ = tx.send(lost);
                        return;
                    }
                    None => wait = retry,
                }
            }
        });
        *self.keeper.lock().unwrap() = Some(Keeper {
            slot,
            claim: rx.clone(),
            task,
        });
        rx
    }

    fn drop_keeper(&self) {
        if let Some(k) = self.keeper.lock().unwrap().take() {
            let mut w = lock(&self.world);
            if let Some(set) = w.believed.get_mut(&k.slot) {
                set.remove(&self.node);
            }
        }
    }
}

/// The drydock Namespace's annotations, as the gates read them.
fn control_of(w: &World) -> ClusterControl {
    ClusterControl {
        halted: w.halt.as_ref().map(|h| format!("{}: {}", h.node, h.reason)),
        last_reboot_finished: Ok(w.last_finished.clone()),
        ..ClusterControl::default()
    }
}

fn to_status(reports: Vec<GateReport>) -> Vec<GateStatus> {
    reports
        .into_iter()
        .map(|r| GateStatus {
            gate: r.gate.parse().unwrap_or(gates::GateName::Cluster),
            passed: r.verdict.passes(),
            reason: r.verdict.reason().unwrap_or_default().to_string(),
            skipped: !r.verdict.evaluated(),
        })
        .collect()
}

impl Cluster for ModelCluster {
    fn local_gates(&self, _store: &Store, _now: Timestamp) -> Vec<GateStatus> {
        Vec::new()
    }

    fn next_local_change(&self, _now: Timestamp) -> Option<Timestamp> {
        None
    }

    async fn cluster_gates(&self, now: Timestamp) -> ClusterGates {
        let now = now + self.skew;
        let blocked = |reason: String| ClusterGates {
            gates: vec![GateStatus {
                gate: gates::GateName::Cluster,
                passed: false,
                reason,
                skipped: false,
            }],
            blocked_until: None,
        };
        if let Err(e) = self.request("reading the drydock Namespace").await {
            lock(&self.world)
                .last_gates_passed
                .insert(self.node.clone(), false);
            return blocked(format!("cannot read the cluster: {e}"));
        }
        // Read before the world's lock (`drop_keeper` takes them the other way round).
        let holding = self
            .keeper
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|k| !k.claim.borrow().is_lost());
        let mut w = lock(&self.world);
        let control = control_of(&w);
        let verdict = match gates::evaluate_control(&w.settings, &control, now) {
            Some(early) => early,
            None => {
                let obs = ClusterObservation {
                    node_name: self.node.clone(),
                    nodes: w
                        .nodes
                        .iter()
                        .map(|(name, n)| NodeView {
                            name: name.clone(),
                            ready: if n.ready {
                                ReadyStatus::True
                            } else {
                                ReadyStatus::False
                            },
                            ready_changed_at: Some(n.ready_changed_at),
                        })
                        .collect(),
                    daemonsets: Vec::new(),
                    blocking_pods: Vec::new(),
                    control,
                };
                let source = AlertSource {
                    kind: SourceKind::Prometheus,
                    url: "http://prometheus.model:9090".into(),
                };
                let alerts = match w.prometheus {
                    None => AlertObservation::Fetched {
                        source,
                        alerts: Vec::new(),
                    },
                    Some(PromFault::Firing) => AlertObservation::Fetched {
                        source,
                        alerts: vec![Alert {
                            name: "KubeNodeUnreachable".into(),
                            labels: BTreeMap::from([(
                                "alertname".to_string(),
                                "KubeNodeUnreachable".to_string(),
                            )]),
                        }],
                    },
                    Some(PromFault::Unreachable) => AlertObservation::Unavailable {
                        source,
                        error: "unreachable: connection refused".into(),
                    },
                };
                gates::evaluate_cluster_verdict(&w.settings, &obs, &alerts, now)
            }
        };
        let passed = gates::all_pass(&verdict.reports);
        w.last_gates_passed.insert(self.node.clone(), passed);
        w.passed_holding
            .insert(self.node.clone(), passed && holding);
        ClusterGates {
            gates: to_status(verdict.reports),
            blocked_until: verdict.blocked_until.map(|t| t - self.skew),
        }
    }

    async fn control_gates(&self, now: Timestamp) -> Option<ClusterGates> {
        let now = now + self.skew;
        if let Err(e) = self.request("reading the drydock Namespace").await {
            lock(&self.world)
                .last_control_passed
                .insert(self.node.clone(), false);
            return Some(ClusterGates {
                gates: vec![GateStatus {
                    gate: gates::GateName::Cluster,
                    passed: false,
                    reason: format!("cannot read the cluster: {e}"),
                    skipped: false,
                }],
                blocked_until: None,
            });
        }
        let mut w = lock(&self.world);
        let control = control_of(&w);
        let early = gates::evaluate_control(&w.settings, &control, now);
        w.last_control_passed
            .insert(self.node.clone(), early.is_none());
        early.map(|v| ClusterGates {
            gates: to_status(v.reports),
            blocked_until: v.blocked_until.map(|t| t - self.skew),
        })
    }

    async fn lease_outlook(&self) -> Result<LeaseOutlook, PortError> {
        self.request("listing Leases").await?;
        let now = self.now();
        let w = lock(&self.world);
        let mut holders = Vec::new();
        let (mut free, mut expired) = (false, false);
        for l in &w.leases {
            match lease::classify(Some(l), &self.node, now, LEASE) {
                SlotClass::Mine => return Ok(LeaseOutlook::Mine(slot_name(l))),
                SlotClass::Held { holder, .. } => holders.push(holder),
                SlotClass::Expired { .. } => expired = true,
                SlotClass::Missing | SlotClass::Free => free = true,
            }
        }
        Ok(if free {
            LeaseOutlook::Available
        } else if expired {
            LeaseOutlook::Expired
        } else {
            LeaseOutlook::Busy { holders }
        })
    }

    async fn acquire(&self, gates_passed: bool) -> Result<Option<String>, PortError> {
        self.request("acquiring a Lease slot").await?;
        let now = self.now();
        let taken = {
            let mut w = lock(&self.world);
            // Every gate passed, or (a free slot, to look at the rest
            // holding it) the Namespace's gates did.
            let looked = if gates_passed {
                &w.last_gates_passed
            } else {
                &w.last_control_passed
            };
            if looked.get(&self.node) != Some(&true) {
                let which = if gates_passed {
                    "gate"
                } else {
                    "Namespace gate"
                };
                let v = format!(
                    "{} took a slot although its last {which} look blocked",
                    self.node
                );
                w.violations.push(v);
            }
            let me = self.node.clone();
            let mut taken = None;
            // Ours already first, as `LeaseClient::acquire` does.
            w.leases
                .sort_by_key(|l| lease::classify(Some(l), &me, now, LEASE) != SlotClass::Mine);
            let nodes: BTreeSet<String> = w.nodes.keys().cloned().collect();
            for l in w.leases.iter_mut() {
                let class = lease::classify(Some(l), &me, now, LEASE);
                // As `LeaseClient::acquire`: an expired holder's Node is
                // looked up only when the gates did not all pass.
                let holder_exists = match &class {
                    SlotClass::Expired { holder, .. } if !gates_passed => {
                        Some(nodes.contains(holder))
                    }
                    _ => None,
                };
                match lease::decide(&class, gates_passed, holder_exists) {
                    Decision::Create | Decision::Take => {
                        l.spec = Some(LeaseSpec {
                            holder_identity: Some(me.clone()),
                            acquire_time: Some(MicroTime(now)),
                            renew_time: Some(MicroTime(now)),
                            lease_duration_seconds: Some(LEASE.as_secs() as i32),
                            ..Default::default()
                        });
                        taken = Some(slot_name(l));
                        break;
                    }
                    // Ours already (as `LeaseClient::acquire`): renewed.
                    Decision::Renew => {
                        let spec = l.spec.get_or_insert_with(Default::default);
                        spec.renew_time = Some(MicroTime(now));
                        taken = Some(slot_name(l));
                        break;
                    }
                    Decision::Skip(_) => {}
                }
            }
            taken
        };
        if let Some(slot) = &taken {
            self.changes.notify_waiters();
            let first = Claim::Held {
                slot: slot.clone(),
                expires_at: now + SignedDuration::try_from(LEASE).unwrap(),
            };
            self.spawn_keeper(slot.clone(), first);
        }
        Ok(taken)
    }

    async fn hold(&self, slot: &str) -> Result<ClaimWatch, PortError> {
        if let Some(c) = self.keeper_claim(slot) {
            return Ok(c);
        }
        self.drop_keeper();
        self.request("finding our Lease").await?;
        let claim = {
            let mut w = lock(&self.world);
            self.renew(&mut w, slot)
        };
        match claim {
            Ok(c) => Ok(self.spawn_keeper(slot.to_string(), c)),
            Err(lost) => Err(PortError::LostLease {
                slot: slot.to_string(),
                holder: lost.holder(),
            }),
        }
    }

    async fn confirm(&self, slot: &str) -> Result<(), PortError> {
        self.hold(slot).await?;
        self.request("renewing the Lease").await?;
        let mut w = lock(&self.world);
        match self.renew(&mut w, slot) {
            Ok(_) => Ok(()),
            Err(lost) => {
                self.publish(&mut w, slot, &lost);
                drop(w);
                self.drop_keeper();
                Err(PortError::LostLease {
                    slot: slot.to_string(),
                    holder: lost.holder(),
                })
            }
        }
    }

    async fn release(&self, slot: &str) -> Result<(), PortError> {
        self.request("releasing the Lease").await?;
        self.drop_keeper();
        {
            let mut w = lock(&self.world);
            if let Some(l) = w.leases.iter_mut().find(|l| slot_name(l) == slot)
                && holder(l).as_deref() == Some(self.node.as_str())
            {
                l.spec = Some(LeaseSpec::default());
            }
        }
        self.changes.notify_waiters();
        Ok(())
    }

    async fn wait_for_lease_change(&self, timeout: Duration) {
        if self.request("watching Leases").await.is_err() {
            tokio::time::sleep(timeout.min(Duration::from_secs(5))).await;
            return;
        }
        let _ = tokio::time::timeout(timeout, self.changes.notified()).await;
    }

    async fn node_unschedulable(&self) -> Result<bool, PortError> {
        self.request("reading this node").await?;
        Ok(lock(&self.world).nodes[&self.node].unschedulable)
    }

    async fn set_unschedulable(&self, value: bool) -> Result<(), PortError> {
        self.request(if value { "cordoning" } else { "uncordoning" })
            .await?;
        let mut w = lock(&self.world);
        // A cycle starts (cordons) only after every gate passed with the
        // slot held: a slot taken to look is given back untouched.
        if value
            && !w.nodes[&self.node].unschedulable
            && w.passed_holding.get(&self.node) != Some(&true)
        {
            let v = format!(
                "{} cordoned although its last look at every gate, holding a slot, did not pass",
                self.node
            );
            w.violations.push(v);
        }
        let n = w.nodes.get_mut(&self.node).unwrap();
        // Only a real uncordon counts: an agent killed mid-release repeats
        // its (idempotent) uncordon after it gave the slot back.
        let was_cordoned = n.unschedulable;
        n.unschedulable = value;
        // Uncordoned after its reboot (a new boot): the cycle ends here, so
        // the node must hold its slot at this moment (issue 10). The test's
        // intruder takes a live Lease against the protocol; its victim
        // learns it at its keeper's next renewal, so until its promise runs
        // out it still counts as holding.
        let rebooted = !n.boot_id.starts_with("boot-");
        let named = w
            .leases
            .iter()
            .any(|l| holder(l).as_deref() == Some(self.node.as_str()));
        let stolen = w
            .leases
            .iter()
            .any(|l| holder(l).as_deref() == Some("intruder"))
            && kept_slots(&w).contains(&self.node);
        if !value && was_cordoned && rebooted && !named && !stolen {
            let leases = describe_leases(&w.leases);
            let v = format!(
                "{} uncordoned after its reboot without holding a slot (Leases at {}: {leases:?}; promised: {:?})",
                self.node,
                Timestamp::now(),
                w.believed
            );
            w.violations.push(v);
        }
        Ok(())
    }

    async fn drain(
        &self,
        progress: watch::Sender<usize>,
        mut claim: ClaimWatch,
    ) -> Result<DrainResult, PortError> {
        self.request("listing pods on this node").await?;
        let blocked = lock(&self.world).pdb_blocked.as_deref() == Some(self.node.as_str());
        let _ = progress.send(if blocked { 1 } else { 3 });
        let timeout = lock(&self.world).settings.drain.timeout;
        let work = if blocked {
            timeout
        } else {
            Duration::from_millis(10)
        };
        tokio::select! {
            c = lease::claim_lost(&mut claim) => Err(PortError::LostLease { slot: c.slot().to_string(), holder: c.holder() }),
            _ = tokio::time::sleep(work) => {
                if blocked {
                    Ok(DrainResult::TimedOut(Box::new(DrainTimeout {
                        node: self.node.clone(),
                        timeout,
                        blocked: vec![BlockedPod {
                            pod: PodRef { namespace: "default".into(), name: "precious-0".into(), uid: "u-precious".into() },
                            reason: BlockReason::DisruptionBudget { pdbs: vec!["default/precious".into()], message: "Cannot evict pod as it would violate the pod's disruption budget.".into() },
                        }],
                        partial: DrainReport::default(),
                    })))
                } else {
                    let _ = progress.send(0);
                    Ok(DrainResult::Drained(DrainReport::default()))
                }
            }
        }
    }

    async fn verify_node(&self, _booted_at: Timestamp, boot_id: &str) -> Result<(), String> {
        self.request("reading this node")
            .await
            .map_err(|e| e.to_string())?;
        let w = lock(&self.world);
        let n = &w.nodes[&self.node];
        if n.boot_id != boot_id {
            return Err(format!(
                "the node reports boot {}, not {boot_id}",
                n.boot_id
            ));
        }
        if !n.ready {
            return Err("the node is not Ready".into());
        }
        Ok(())
    }

    async fn halt_fleet(&self, halt: &Halt) -> Result<(), PortError> {
        self.request("halting the fleet").await?;
        let mut w = lock(&self.world);
        if w.halt.is_none() {
            w.halt_set_at = Some(Instant::now());
        }
        w.halt = Some(halt.clone());
        Ok(())
    }

    async fn clear_halt(&self) -> Result<bool, PortError> {
        self.request("reading the fleet halt").await?;
        let mut w = lock(&self.world);
        let ours = w.halt.as_ref().is_some_and(|h| h.node == self.node);
        if ours {
            w.halt = None;
        }
        Ok(ours)
    }

    async fn record_reboot_finished(&self, at: Timestamp) -> Result<(), PortError> {
        self.request("recording the finished reboot").await?;
        lock(&self.world).last_finished = Some(FinishedReboot {
            at: at + self.skew,
            node: self.node.clone(),
        });
        Ok(())
    }
}

#[derive(Default)]
struct Seen {
    violations: Vec<String>,
    states: BTreeMap<String, Phase>,
    /// Nodes that lost their Lease while out of service (stolen, or not
    /// renewed through an API outage), ever.
    lost_lease: BTreeSet<String>,
    /// Nodes that lost their slot and have not won one since, with what
    /// the loss asks of them.
    slotless: BTreeMap<String, Loss>,
    verify_failed: BTreeSet<String>,
    /// Each node's last status line, for a failing seed's report.
    status: BTreeMap<String, String>,
}

/// Each Lease slot's holder and last renewal, for a violation's report.
fn describe_leases(leases: &[Lease]) -> Vec<String> {
    leases
        .iter()
        .map(|l| {
            let s = l.spec.clone().unwrap_or_default();
            format!(
                "{}: {:?} renewed {:?}",
                slot_name(l),
                s.holder_identity,
                s.renew_time.map(|t| t.0)
            )
        })
        .collect()
}

/// A new cycle starting this long after the halt was written is a
/// violation (a gate look just before it may still be acted on).
const HALT_GRACE: Duration = Duration::from_millis(500);

#[derive(Clone)]
struct Watcher {
    node: String,
    seen: Arc<Mutex<Seen>>,
    machine: Arc<Mutex<Machine>>,
    world: Shared,
}

impl Reporter for Watcher {
    fn status(&self, line: &str) {
        self.seen
            .lock()
            .unwrap()
            .status
            .insert(self.node.clone(), line.to_string());
    }

    fn event(&self, node: &str, event: &AgentEvent) {
        // The model's lock before the watcher's (the checks take them in
        // that order).
        let halted = {
            let w = lock(&self.world);
            w.halt
                .as_ref()
                .filter(|h| h.node != node)
                .and_then(|_| w.halt_set_at)
                .filter(|t| t.elapsed() > HALT_GRACE)
                .map(|t| t.elapsed())
        };
        let mut seen = self.seen.lock().unwrap();
        match event {
            AgentEvent::StateChanged { to, .. } => {
                if *to == Phase::Cordoning
                    && let Some(ago) = halted
                {
                    seen.violations.push(format!(
                        "{node} started a new cycle (cordoning) {ago:?} after the fleet halt was set"
                    ));
                }
                seen.states.insert(node.to_string(), *to);
            }
            AgentEvent::LeaseAcquired { .. } => {
                seen.slotless.remove(node);
            }
            AgentEvent::LeaseLost { .. } => {
                seen.lost_lease.insert(node.to_string());
                let asked = self.machine.lock().unwrap().reboots > 0;
                let loss = Loss::on_lease_lost(asked, seen.states.get(node));
                seen.slotless.insert(node.to_string(), loss);
            }
            AgentEvent::VerifyFailed { .. } => {
                seen.verify_failed.insert(node.to_string());
            }
            AgentEvent::Verified { .. } => {
                let m = self.machine.lock().unwrap();
                if m.reboots == 0 {
                    seen.violations
                        .push(format!("{node} verified without a reboot"));
                } else if m.checks_fail {
                    seen.violations
                        .push(format!("{node} verified although its checks fail"));
                }
            }
            _ => {}
        }
    }
}

struct Fleet {
    world: Shared,
    changes: Arc<Notify>,
    dir: tempfile::TempDir,
    plan: Plan,
    seen: Arc<Mutex<Seen>>,
    machines: BTreeMap<String, Arc<Mutex<Machine>>>,
    reboots: mpsc::UnboundedSender<String>,
    running: BTreeMap<String, (tokio::task::JoinHandle<()>, ModelCluster)>,
}

impl Fleet {
    fn start_agent(&mut self, node: &str) {
        self.kill(node);
        let s = settings(self.dir.path(), node, self.plan.concurrency);
        let store = Store::open(&s.node.state_db).expect("store");
        let cluster = ModelCluster {
            node: node.to_string(),
            world: self.world.clone(),
            changes: self.changes.clone(),
            skew: SignedDuration::from_millis(self.plan.skew_ms[node]),
            keeper: Arc::default(),
        };
        let host = SimHost::new(node, self.machines[node].clone(), self.reboots.clone());
        let reporter = Watcher {
            node: node.to_string(),
            seen: self.seen.clone(),
            machine: self.machines[node].clone(),
            world: self.world.clone(),
        };
        let mut agent =
            Agent::new(node.to_string(), s, store, host, cluster.clone(), reporter).expect("agent");
        let seen = self.seen.clone();
        let who = node.to_string();
        let task = tokio::spawn(async move {
            // The agent runs until killed; returning at all is a failure.
            let end = agent.run(std::future::pending()).await;
            seen.lock()
                .unwrap()
                .violations
                .push(format!("{who}'s agent stopped: {end:?}"));
        });
        self.running.insert(node.to_string(), (task, cluster));
    }

    /// The process dies: its keeper with it.
    fn kill(&mut self, node: &str) {
        if let Some((t, c)) = self.running.remove(node) {
            t.abort();
            c.drop_keeper();
        }
    }
}

/// Invariants at one instant, read under the model's lock.
///
/// A node that lost its slot mid-cycle (issue 10) may stay out of service
/// without one: before the reboot request only until its uncordon lands
/// (U), after it until it wins a slot back (R); so at every moment the
/// nodes out of service are at most concurrency + R + U (+ nodes in
/// `failed` whose kept slot ran out: the fleet is halted then).
fn check_now(
    w: &World,
    plan: &Plan,
    machines: &BTreeMap<String, Arc<Mutex<Machine>>>,
    cordoned_since: &mut BTreeMap<String, Instant>,
    slotless: &BTreeMap<String, Loss>,
    failed: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let holders: Vec<String> = w.leases.iter().filter_map(holder).collect();
    let mut out = Vec::new();
    let mut allowed = Vec::new();
    for (name, n) in &w.nodes {
        let held = holders.contains(name);
        if n.unschedulable || !n.ready {
            out.push(name.clone());
            let loss = slotless.get(name).filter(|_| !held);
            // U: counted while its uncordon has not landed (checked below
            // to land soon); R: while it waits for a slot.
            if loss.is_some() || (failed.contains(name) && !held) {
                allowed.push(name.clone());
            }
        }
        // Cordoned by drydock (nobody else cordons here) without holding a
        // slot: only for a moment, while a killed agent's Lease outlives
        // it (restarted within 1.2 s, Lease 2 s), or until a node that lost
        // its slot before the reboot request has uncordoned (API outages
        // here are at most 1 s each). After the request it waits cordoned.
        let waits_cordoned = matches!(slotless.get(name), Some(Loss::Regain | Loss::Either))
            || failed.contains(name);
        if n.unschedulable && !held && !waits_cordoned {
            let since = *cordoned_since
                .entry(name.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(4) {
                problems.push(format!(
                    "{name} cordoned without holding a Lease for {:?} (slot loss: {:?})",
                    since.elapsed(),
                    slotless.get(name)
                ));
            }
        } else {
            cordoned_since.remove(name);
        }
    }
    let bound = plan.concurrency as usize + allowed.len();
    if out.len() > bound {
        let leases = describe_leases(&w.leases);
        problems.push(format!(
            "{} nodes out of service with concurrency {} (+ R/U/failed without a slot: {allowed:?}): {out:?}; Leases at {}: {leases:?}",
            out.len(),
            plan.concurrency,
            Timestamp::now()
        ));
    }
    for (name, m) in machines {
        let r = m.lock().unwrap().reboots;
        if r > 1 {
            problems.push(format!("{name} rebooted {r} times for one need"));
        }
    }
    problems.extend(w.violations.iter().cloned());
    problems
}

fn state_dir() -> tempfile::TempDir {
    // SQLite's fsyncs on tmpfs cost nothing; the disk would make this tier
    // slow for no added truth.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new()
            .prefix("drydock-model-")
            .tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().expect("temp dir")
}

async fn run_seed(seed: u64) -> Result<String, String> {
    let plan = plan(seed);
    let names = node_names(NODES);
    let boot0 = Timestamp::now() - SignedDuration::from_secs(3600);
    let mut base = settings(
        std::path::Path::new("/nonexistent"),
        "cp-1",
        plan.concurrency,
    );
    base.node.name = None;
    let world: Shared = Arc::new(Mutex::new(World {
        settings: base,
        leases: (0..plan.concurrency)
            .map(|i| {
                let mut l = Lease::default();
                l.metadata.name = Some(format!("drydock-default-{i}"));
                l
            })
            .collect(),
        nodes: names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.clone(),
                    NodeSt {
                        ready: true,
                        ready_changed_at: boot0,
                        unschedulable: false,
                        boot_id: format!("boot-{i}-0"),
                    },
                )
            })
            .collect(),
        halt: None,
        last_finished: None,
        api: None,
        prometheus: None,
        rng: fastrand::Rng::with_seed(seed),
        pdb_blocked: plan.pdb_blocked.clone(),
        last_gates_passed: BTreeMap::new(),
        last_control_passed: BTreeMap::new(),
        passed_holding: BTreeMap::new(),
        believed: BTreeMap::new(),
        violations: Vec::new(),
        requests: 0,
        halt_set_at: None,
    }));
    let machines: BTreeMap<String, Arc<Mutex<Machine>>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.clone(),
                Arc::new(Mutex::new(Machine {
                    boot_id: format!("boot-{i}-0"),
                    booted_at: boot0,
                    need: vec!["kernel update".into()],
                    reboots: 0,
                    checks_fail: false,
                })),
            )
        })
        .collect();
    let (tx, mut reboots) = mpsc::unbounded_channel::<String>();
    let mut fleet = Fleet {
        world: world.clone(),
        changes: Arc::new(Notify::new()),
        dir: state_dir(),
        plan: plan.clone(),
        seen: Arc::default(),
        machines: machines.clone(),
        reboots: tx,
        running: BTreeMap::new(),
    };
    for n in &names {
        fleet.start_agent(n);
    }

    enum Act {
        Kill(String),
        Restart(String),
        Api(Option<ApiFault>),
        Prom(Option<PromFault>),
        Steal,
        /// A rebooted machine is back.
        Up(String),
    }
    let mut acts: Vec<(Duration, Act)> = Vec::new();
    for (n, at, after) in &plan.kills {
        acts.push((*at, Act::Kill(n.clone())));
        acts.push((*at + *after, Act::Restart(n.clone())));
    }
    for (at, len, what) in &plan.api {
        acts.push((*at, Act::Api(Some(*what))));
        acts.push((*at + *len, Act::Api(None)));
    }
    for (at, len, what) in &plan.prometheus {
        acts.push((*at, Act::Prom(Some(*what))));
        acts.push((*at + *len, Act::Prom(None)));
    }
    if let Some(at) = plan.steal_lease_at {
        acts.push((at, Act::Steal));
    }
    acts.sort_by_key(|(at, _)| *at);
    let mut acts: std::collections::VecDeque<(Duration, Act)> = acts.into();

    // When the last planned API fault ends.
    let api_quiet = plan
        .api
        .iter()
        .map(|(at, len, _)| *at + *len)
        .max()
        .unwrap_or_default();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut cordoned_since = BTreeMap::new();
    let mut killed: BTreeSet<String> = BTreeSet::new();
    let mut down: BTreeSet<String> = BTreeSet::new();
    let mut stolen_from: Option<String> = None;
    let mut lost_machine_at: Option<Instant> = None;
    let mut halted_at: Option<Instant> = None;
    let mut violation = Vec::new();
    loop {
        tokio::select! {
            Some(node) = reboots.recv() => {
                fleet.kill(&node);
                down.insert(node.clone());
                {
                    let mut w = lock(&world);
                    let n = w.nodes.get_mut(&node).unwrap();
                    n.ready = false;
                    n.ready_changed_at = Timestamp::now();
                }
                if plan.never_returns.as_deref() == Some(node.as_str()) {
                    lost_machine_at = Some(Instant::now());
                } else {
                    let at = start.elapsed() + Duration::from_millis(30);
                    let i = acts.partition_point(|(t, _)| *t <= at);
                    acts.insert(i, (at, Act::Up(node)));
                }
            }
            _ = tick.tick() => {
                let now = start.elapsed();
                while acts.front().is_some_and(|(at, _)| *at <= now) {
                    let (_, act) = acts.pop_front().unwrap();
                    match act {
                        Act::Kill(n) => { fleet.kill(&n); killed.insert(n); }
                        Act::Restart(n) => {
                            killed.remove(&n);
                            if !down.contains(&n) { fleet.start_agent(&n); }
                        }
                        Act::Up(n) => {
                            let boot = uuid::Uuid::new_v4().to_string();
                            let booted = Timestamp::now();
                            {
                                let mut m = machines[&n].lock().unwrap();
                                m.boot_id = boot.clone();
                                m.booted_at = booted;
                                m.need.clear();
                                m.checks_fail = plan.fails_verify.as_deref() == Some(n.as_str());
                            }
                            {
                                let mut w = lock(&world);
                                let st = w.nodes.get_mut(&n).unwrap();
                                st.boot_id = boot;
                                st.ready = true;
                                st.ready_changed_at = booted;
                            }
                            down.remove(&n);
                            if !killed.contains(&n) { fleet.start_agent(&n); }
                        }
                        Act::Api(f) => {
                            lock(&world).api = f;
                            if f == Some(ApiFault::WakeWatchers) { fleet.changes.notify_waiters(); }
                        }
                        Act::Prom(f) => lock(&world).prometheus = f,
                        Act::Steal => {
                            let mut w = lock(&world);
                            if let Some(l) = w.leases.iter_mut().find(|l| holder(l).is_some()) {
                                stolen_from = holder(l);
                                let spec = l.spec.get_or_insert_with(Default::default);
                                spec.holder_identity = Some("intruder".into());
                                spec.renew_time = Some(MicroTime(Timestamp::now()));
                            }
                        }
                    }
                }
                let (slotless, failed) = {
                    let seen = fleet.seen.lock().unwrap();
                    let failed = seen
                        .states
                        .iter()
                        .filter(|(_, p)| **p == Phase::Failed)
                        .map(|(n, _)| n.clone())
                        .collect();
                    (seen.slotless.clone(), failed)
                };
                let problems = {
                    let w = lock(&world);
                    check_now(&w, &plan, &machines, &mut cordoned_since, &slotless, &failed)
                };
                let mut problems = problems;
                problems.extend(fleet.seen.lock().unwrap().violations.iter().cloned());
                if !problems.is_empty() {
                    violation = problems;
                    break;
                }
                // A halt, or a node in `failed` keeping its slot, stops the
                // fleet (the second for good at concurrency 1).
                let stopped = {
                    let w = lock(&world);
                    let kept = kept_slots(&w);
                    let seen = fleet.seen.lock().unwrap();
                    w.halt.is_some()
                        || (plan.concurrency == 1
                            && seen.states.iter().any(|(n, p)| *p == Phase::Failed && kept.contains(n)))
                };
                if !stopped {
                    halted_at = None;
                } else if halted_at.is_none() {
                    halted_at = Some(Instant::now());
                }
                let all_done = {
                    let seen = fleet.seen.lock().unwrap();
                    names.iter().all(|n| {
                        // A node that lost its slot waits again (or wins
                        // one back) and finishes like any other.
                        let blocked = plan.pdb_blocked.as_deref() == Some(n.as_str())
                            || seen.states.get(n) == Some(&Phase::Failed);
                        blocked || (machines[n].lock().unwrap().reboots == 1 && seen.states.get(n) == Some(&Phase::Idle))
                    })
                };
                let stuck = lost_machine_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3));
                let halted_long = halted_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2));
                // A failed verification owes the fleet halt until the API
                // takes it; and a node that lost its slot before the
                // reboot request owes its uncordon: wait for both (bounded).
                let owing = {
                    let w = lock(&world);
                    let seen = fleet.seen.lock().unwrap();
                    (!seen.verify_failed.is_empty() && w.halt.is_none())
                        || seen.slotless.iter().any(|(n, l)| {
                            *l == Loss::Undo && w.nodes[n].unschedulable && !kept_slots(&w).contains(n)
                        })
                };
                let grace_over = now > api_quiet + Duration::from_secs(3);
                if owing && !grace_over && now <= BOUND {
                    continue;
                }
                if (all_done && acts.iter().all(|(_, a)| !matches!(a, Act::Up(_)))) || now > BOUND || stuck || halted_long {
                    break;
                }
            }
        }
    }
    let elapsed = start.elapsed();
    // Who still keeps a slot, before the agents (and their keepers) stop.
    let holders = kept_slots(&lock(&world));
    for n in &names {
        fleet.kill(n);
    }

    let mut problems = violation;
    let w = lock(&world);
    let halt = w.halt.clone();
    let not_ready = w.nodes.values().any(|n| !n.ready);
    let requests = w.requests;
    drop(w);
    let states = fleet.seen.lock().unwrap().states.clone();
    let lost = fleet.seen.lock().unwrap().lost_lease.clone();
    // A failed verification halts the fleet, at the latest once the API
    // takes the owed halt (the loop waited up to 3 s past the last fault).
    let verify_failed = fleet.seen.lock().unwrap().verify_failed.clone();
    if !verify_failed.is_empty() && halt.is_none() {
        problems.push(format!(
            "{verify_failed:?} failed verification and the fleet halt is not set {:.1} s after the last API fault",
            (elapsed.saturating_sub(api_quiet)).as_secs_f64()
        ));
    }
    // A node that lost its slot before the reboot request ends uncordoned
    // (or holding a slot again).
    {
        let w = lock(&world);
        let seen = fleet.seen.lock().unwrap();
        for (n, l) in &seen.slotless {
            if *l == Loss::Undo && w.nodes[n].unschedulable && !holders.contains(n) {
                problems.push(format!(
                    "{n} lost its slot before the reboot request and is still cordoned at the end"
                ));
            }
        }
    }
    let halt_planned = plan.fails_verify.is_some() || plan.never_returns.is_some();
    if let Some(h) = &halt
        && !halt_planned
    {
        problems.push(format!(
            "the fleet halted with no broken node planned: {h:?}"
        ));
    }
    let mut unexplained = Vec::new();
    for n in &names {
        let rebooted = machines[n].lock().unwrap().reboots == 1;
        let failed_holds = states
            .iter()
            .any(|(n, p)| *p == Phase::Failed && holders.contains(n));
        let explained = halt.is_some()
            || failed_holds
            || not_ready
            || plan.pdb_blocked.as_deref() == Some(n.as_str())
            || states.get(n) == Some(&Phase::Failed);
        if !rebooted && !explained {
            unexplained.push(format!("{n} ({:?})", states.get(n)));
        }
        if rebooted {
            let db = fleet.dir.path().join(format!("{n}.db"));
            problems.extend(history_gaps(
                &db,
                n,
                &["locked", "cordoning", "draining", "rebooting"],
            )?);
        }
    }
    if elapsed > BOUND && halt.is_none() && !not_ready {
        let seen = fleet.seen.lock().unwrap();
        let stuck: BTreeMap<&String, &String> = seen
            .status
            .iter()
            .filter(|(n, _)| seen.states.get(*n) != Some(&Phase::Idle))
            .collect();
        problems.push(format!(
            "the rollout did not finish within {BOUND:?}; last status of the nodes not idle: {stuck:?}"
        ));
    }
    if !unexplained.is_empty() {
        problems.push(format!(
            "not rebooted, no halt or gate explains it: {}",
            unexplained.join(", ")
        ));
    }
    if problems.is_empty() {
        let rebooted = names
            .iter()
            .filter(|n| machines[*n].lock().unwrap().reboots == 1)
            .count();
        Ok(format!(
            "seed {seed}: {rebooted}/{NODES} rebooted in {:.1} s, {requests} requests, halted: {}, Lease stolen from {stolen_from:?}, lost mid-cycle: {lost:?} (final states {:?})",
            elapsed.as_secs_f64(),
            halt.is_some(),
            lost.iter().map(|n| states.get(n)).collect::<Vec<_>>(),
        ))
    } else {
        let reboots: BTreeMap<&String, u32> = machines
            .iter()
            .map(|(n, m)| (n, m.lock().unwrap().reboots))
            .collect();
        Err(format!(
            "{}\nafter {:.1} s; halt: {halt:?}; states: {states:?}; reboots: {reboots:?}; lost Lease: {lost:?}\nplan: {plan:?}",
            problems.join("\n"),
            elapsed.as_secs_f64()
        ))
    }
}

#[test]
fn fleet_model_survives_random_faults() {
    SeedRun {
        env_prefix: "DRYDOCK_MODEL",
        test_name: "fleet_model",
        default_seeds: 300,
        default_parallel: 24,
    }
    .run(run_seed);
}
