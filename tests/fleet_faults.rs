//! Fleet fault injection, simulator tier: 20 simulated nodes, all needing
//! a reboot, real agents over HTTP against the Kubernetes API simulator (the
//! real kube client, KubeCluster, LeaseClient and its keeper, the drain,
//! verification, and the alerts gate asking a simulated Prometheus), and
//! per seed a random mix of faults: agents killed and restarted later, the
//! API server answering 500, hanging, refusing connections or closing
//! watches for a while, a node that never comes back, a node failing
//! verification, a disruption budget that never allows, Prometheus flapping
//! (an alert firing and clearing, Prometheus answering 503 for a while), the
//! Lease taken away mid-cycle, every agent's Lease clock skewed (pairwise up
//! to 0.9 of the renew margin, through `cluster::lease::set_clock_offset`;
//! the rest of the agent reads the true clock). Invariants are checked every
//! 50 ms while it runs and once at the end. The fast tier,
//! `tests/fleet_model.rs`, runs hundreds of seeds.
//!
//! `cargo test --test fleet_faults` runs `DRYDOCK_FAULT_SEEDS` seeds
//! (default 6), `DRYDOCK_FAULT_PARALLEL` at once (default 3);
//! `DRYDOCK_FAULT_SEED=N` replays one. A failing seed prints the command
//! that replays it.

#[path = "support/seeds.rs"]
mod seeds;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drydock::testing::agent::Agent;
use drydock::testing::agent::kube_cluster::KubeCluster;
use drydock::testing::agent::ports::{AgentEvent, Reporter};
use drydock::testing::cluster::annotations::HALTED;
use drydock::testing::config::Settings;
use drydock::testing::phase::Phase;
use drydock::testing::sim::{
    Fault, Flaky, PdbSpec, PromMode, ReplicaSetSpec, Scenario, SimHandle, SimPrometheus,
};
use drydock::testing::simulate::host::{Machine, SimHost};
use drydock::testing::store::Store;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use seeds::{Loss, SeedRun, history_gaps, node_names};
use tokio::sync::mpsc;

const NODES: usize = 20;
const LEASE: Duration = Duration::from_secs(5);
/// Held while a node's clock skew is set and its Lease client built: seeds
/// running at once share node names.
static SKEW: Mutex<()> = Mutex::new(());
/// Give up on a seed after this long (then the end checks decide).
const BOUND: Duration = Duration::from_secs(120);
/// No reboot for this long while nodes still wait: stuck, not slow.
const STALLED: Duration = Duration::from_secs(30);
/// An owed fleet halt (or uncordon) is in the cluster this long after the
/// last planned API fault ends (retries, a restarted simulator, a loaded
/// machine).
const HALT_DUE: Duration = Duration::from_secs(8);

/// What one seed does.
#[derive(Debug, Clone)]
struct Plan {
    concurrency: u32,
    /// (node, kill after, restart after that)
    kills: Vec<(String, Duration, Duration)>,
    /// (start, length, what)
    api: Vec<(Duration, Duration, ApiFault)>,
    never_returns: Option<String>,
    fails_verify: Option<String>,
    pdb_blocked: Option<String>,
    /// Take the Lease away from its holder this long after the start.
    steal_lease_at: Option<Duration>,
    /// (start, length, what): an alert firing, or Prometheus answering 503.
    prometheus: Vec<(Duration, Duration, PromMode)>,
    /// Per node, in milliseconds: its Lease clock's skew.
    skew_ms: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Copy)]
enum ApiFault {
    /// A share of requests get 500.
    Errors,
    /// A share of requests hang past the client's patience.
    Hangs,
    /// The server is down: connections refused, watches cut.
    Down,
    /// Every open watch is closed.
    CloseWatches,
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
        kills.push((n, ms(&mut rng, 200, 8000), ms(&mut rng, 100, 3000)));
    }
    let mut api = Vec::new();
    for _ in 0..rng.usize(0..=3) {
        let what = match rng.u8(0..4) {
            0 => ApiFault::Errors,
            1 => ApiFault::Hangs,
            2 => ApiFault::Down,
            _ => ApiFault::CloseWatches,
        };
        api.push((ms(&mut rng, 0, 10_000), ms(&mut rng, 300, 2000), what));
    }
    let mut chosen: Vec<String> = Vec::new();
    let mut distinct = |rng: &mut fastrand::Rng, p: f64| -> Option<String> {
        if rng.f64() >= p {
            return None;
        }
        let n = pick(rng);
        if chosen.contains(&n) {
            return None;
        }
        chosen.push(n.clone());
        Some(n)
    };
    // Every four seeds in a row see each kind of broken node once (and
    // once none), whatever the generator draws.
    let kind = seed % 4;
    let never_returns = distinct(&mut rng, if kind == 0 { 1.0 } else { 0.0 });
    let fails_verify = distinct(&mut rng, if kind == 1 { 1.0 } else { 0.0 });
    let pdb_blocked = distinct(&mut rng, if kind == 2 { 1.0 } else { 0.0 });
    let steal_lease_at = (rng.f64() < 0.3).then(|| ms(&mut rng, 500, 8000));
    let mut prometheus = Vec::new();
    for _ in 0..rng.usize(0..=3) {
        let what = if rng.bool() {
            PromMode::Firing
        } else {
            PromMode::Unavailable
        };
        prometheus.push((ms(&mut rng, 0, 8000), ms(&mut rng, 100, 3000), what));
    }
    // Pairwise at most 0.9 of the renew margin: the keeper renews every
    // third of the Lease and gives up a renewal period before its expiry.
    let half = (LEASE / 3).as_millis() as i64 * 45 / 100;
    let skew_ms = names
        .iter()
        .map(|n| (n.clone(), rng.i64(-half..=half)))
        .collect();
    Plan {
        prometheus,
        skew_ms,
        concurrency: rng.u32(1..=3),
        kills,
        api,
        never_returns,
        fails_verify,
        pdb_blocked,
        steal_lease_at,
    }
}

fn settings(dir: &std::path::Path, node: &str, concurrency: u32, prometheus: &str) -> Settings {
    let mut s = Settings::default();
    s.node.name = Some(node.to_string());
    s.node.state_db = dir.join(format!("{node}.db"));
    s.lease.concurrency = concurrency;
    s.lease.duration = LEASE;
    s.reboot.check_interval = Duration::from_millis(300);
    s.gates.soak = Duration::from_millis(200);
    // Short: a node whose budget never allows takes the slot for this long
    // on each attempt (at concurrency 1 it slows the whole rollout).
    s.drain.timeout = Duration::from_secs(2);
    s.drain.retry_interval = Duration::from_millis(200);
    // Longer than any API outage here: an outage is not a broken node.
    s.verify.timeout = Duration::from_secs(6);
    s.report.textfile_dir = None;
    s.report.kubernetes_events = false;
    s.alerts.prometheus_url = Some(prometheus.to_string());
    s.alerts.timeout = Duration::from_millis(500);
    s
}

#[derive(Default)]
struct Seen {
    /// Problems found while running.
    violations: Vec<String>,
    verified: Vec<String>,
    states: BTreeMap<String, Phase>,
    /// Nodes that lost their Lease mid-cycle (taken, or not renewed).
    lost_lease: std::collections::BTreeSet<String>,
    /// Since when Prometheus blocks (an alert firing or 503); `None`: quiet.
    prometheus_blocks_since: Option<Instant>,
    verify_failed: std::collections::BTreeSet<String>,
    /// Nodes that lost their slot and have not won one since, with what
    /// the loss asks of them.
    slotless: BTreeMap<String, Loss>,
    /// When the checks first saw the fleet halt set.
    halt_seen_at: Option<Instant>,
}

/// A new cycle starting this long after the halt was seen is a violation
/// (a gate look just before it may still be acted on).
const HALT_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Watcher {
    node: String,
    seen: Arc<Mutex<Seen>>,
    machines: Arc<BTreeMap<String, Arc<Mutex<Machine>>>>,
    sim: SimHandle,
}

impl Reporter for Watcher {
    fn status(&self, _line: &str) {}

    fn event(&self, node: &str, event: &AgentEvent) {
        let mut seen = self.seen.lock().unwrap();
        match event {
            AgentEvent::StateChanged { from, to } => {
                if *to == Phase::Cordoning
                    && let Some(t) = seen.halt_seen_at.filter(|t| t.elapsed() > HALT_GRACE)
                {
                    seen.violations.push(format!(
                        "{node} started a new cycle (cordoning) {:?} after the fleet halt was seen",
                        t.elapsed()
                    ));
                }
                // Declared verified: it must hold its slot at this moment
                // (issue 10: a node never verifies without one).
                if *from == Phase::Verifying && *to == Phase::Releasing {
                    let leases: Vec<Lease> = self.sim.list(Some("drydock"));
                    let holder =
                        |l: &Lease| l.spec.as_ref().and_then(|s| s.holder_identity.clone());
                    // The test's intruder takes a live Lease against the
                    // protocol; its victim learns it at its keeper's next
                    // renewal (within a Lease of the theft).
                    let holds = leases.iter().any(|l| holder(l).as_deref() == Some(node))
                        || leases.iter().any(|l| {
                            holder(l).as_deref() == Some("intruder")
                                && !live_holders(std::slice::from_ref(l)).is_empty()
                        });
                    if !holds {
                        seen.violations
                            .push(format!("{node} verified without holding a slot"));
                    }
                }
                seen.states.insert(node.to_string(), *to);
            }
            AgentEvent::LeaseLost { .. } => {
                seen.lost_lease.insert(node.to_string());
                let asked = self.machines[node].lock().unwrap().reboots > 0;
                let loss = Loss::on_lease_lost(asked, seen.states.get(node));
                seen.slotless.insert(node.to_string(), loss);
            }
            AgentEvent::VerifyFailed { .. } => {
                seen.verify_failed.insert(node.to_string());
            }
            // The gates were evaluated just before (alerts included): a
            // slot taken long into a Prometheus block means they were not.
            AgentEvent::LeaseAcquired { slot } => {
                seen.slotless.remove(node);
                if let Some(since) = seen.prometheus_blocks_since
                    && since.elapsed() > Duration::from_secs(2)
                {
                    seen.violations.push(format!(
                        "{node} took {slot} although Prometheus has blocked for {:?}",
                        since.elapsed()
                    ));
                }
            }
            AgentEvent::Verified { .. } => {
                let m = self.machines[&self.node].lock().unwrap();
                if m.reboots == 0 || m.checks_fail {
                    let why = if m.reboots == 0 {
                        "without a reboot"
                    } else {
                        "although its checks fail"
                    };
                    seen.violations.push(format!("{node} verified {why}"));
                }
                seen.verified.push(node.to_string());
            }
            _ => {}
        }
    }
}

struct Fleet {
    sim: SimHandle,
    dir: tempfile::TempDir,
    plan: Plan,
    seen: Arc<Mutex<Seen>>,
    machines: Arc<BTreeMap<String, Arc<Mutex<Machine>>>>,
    reboots: mpsc::UnboundedSender<String>,
    running: BTreeMap<String, tokio::task::JoinHandle<()>>,
    prometheus: SimPrometheus,
}

impl Fleet {
    fn start_agent(&mut self, node: &str) {
        let s = settings(
            self.dir.path(),
            node,
            self.plan.concurrency,
            &self.prometheus.url(),
        );
        let store = Store::open(&s.node.state_db).expect("store");
        let mut config = self.sim.config();
        config.default_retry = false;
        config.read_timeout = Some(Duration::from_secs(2));
        let client = kube::Client::try_from(config).expect("client");
        let cluster = {
            let _one = SKEW.lock().unwrap_or_else(|p| p.into_inner());
            let skew = jiff::SignedDuration::from_millis(self.plan.skew_ms[node]);
            drydock::testing::cluster::lease::set_clock_offset(node, skew);
            let c = KubeCluster::new(client, s.clone(), node.to_string());
            drydock::testing::cluster::lease::set_clock_offset(node, jiff::SignedDuration::ZERO);
            c
        };
        let host = SimHost::new(node, self.machines[node].clone(), self.reboots.clone());
        let reporter = Watcher {
            node: node.to_string(),
            seen: self.seen.clone(),
            machines: self.machines.clone(),
            sim: self.sim.clone(),
        };
        let mut agent =
            Agent::new(node.to_string(), s, store, host, cluster, reporter).expect("agent");
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
        if let Some(old) = self.running.insert(node.to_string(), task) {
            old.abort();
        }
    }

    fn kill(&mut self, node: &str) {
        if let Some(t) = self.running.remove(node) {
            t.abort();
        }
    }
}

/// Invariants that must hold at every instant.
fn is_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// A node that lost its slot mid-cycle (issue 10) may stay out of service
/// without one: before the reboot request only until its uncordon lands
/// (U), after it until it wins a slot back (R); so at every moment the
/// nodes out of service are at most concurrency + R + U (+ nodes in
/// `failed` whose kept slot ran out: the fleet is halted then).
fn check_now(
    sim: &SimHandle,
    plan: &Plan,
    machines: &BTreeMap<String, Arc<Mutex<Machine>>>,
    cordoned_since: &mut BTreeMap<String, Instant>,
    slotless: &BTreeMap<String, Loss>,
    failed: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let nodes: Vec<Node> = sim.list(None);
    let leases: Vec<Lease> = sim.list(Some("drydock"));
    let holders: Vec<String> = leases
        .iter()
        .filter_map(|l| l.spec.as_ref()?.holder_identity.clone())
        .collect();
    let mut out = Vec::new();
    let mut allowed = Vec::new();
    for n in &nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let cordoned = n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
        let ready = is_ready(n);
        let held = holders.contains(&name);
        if cordoned || !ready {
            out.push(name.clone());
            if (slotless.contains_key(&name) || failed.contains(&name)) && !held {
                allowed.push(name.clone());
            }
        }
        // Cordoned by drydock (nobody else cordons here) without holding a
        // slot: allowed only for a moment (cordon right after acquire,
        // release right after uncordon; a killed agent's lease outlives it;
        // a node that lost its slot before the reboot request uncordons
        // once the API answers). After the request it waits cordoned.
        let waits_cordoned = matches!(slotless.get(&name), Some(Loss::Regain | Loss::Either))
            || failed.contains(&name);
        if cordoned && !held && !waits_cordoned {
            let since = *cordoned_since
                .entry(name.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(8) {
                problems.push(format!(
                    "{name} cordoned without holding a Lease for {:?} (slot loss: {:?})",
                    since.elapsed(),
                    slotless.get(&name)
                ));
            }
        } else {
            cordoned_since.remove(&name);
        }
    }
    if out.len() > plan.concurrency as usize + allowed.len() {
        problems.push(format!(
            "{} nodes out of service with concurrency {} (+ R/U/failed without a slot: {allowed:?}): {out:?}",
            out.len(),
            plan.concurrency
        ));
    }
    for (name, m) in machines {
        let r = m.lock().unwrap().reboots;
        if r > 1 {
            problems.push(format!("{name} rebooted {r} times for one need"));
        }
    }
    problems
}

async fn run_seed(seed: u64) -> Result<String, String> {
    let plan = plan(seed);
    let mut scenario = Scenario::standard(NODES, 1)
        .namespace("drydock")
        .pod_start_delay(Duration::from_millis(100))
        .default_grace_period(0);
    if let Some(node) = &plan.pdb_blocked {
        scenario = scenario
            .replica_set(ReplicaSetSpec::new("default", "precious", 1).on_nodes([node.as_str()]))
            .pdb(
                PdbSpec::new("default", "precious")
                    .selector("app", "precious")
                    .min_available(1),
            );
    }
    let sim = scenario.start().await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (tx, mut reboots) = mpsc::unbounded_channel::<String>();
    let names = node_names(NODES);
    let mut machines = BTreeMap::new();
    for (i, node) in names.iter().enumerate() {
        sim.set_boot_id(node, &format!("boot-{i}-0"))
            .map_err(|e| e.to_string())?;
        machines.insert(
            node.clone(),
            Arc::new(Mutex::new(Machine {
                boot_id: format!("boot-{i}-0"),
                booted_at: jiff::Timestamp::now(),
                need: vec!["kernel update".into()],
                reboots: 0,
                checks_fail: false,
            })),
        );
    }
    let machines = Arc::new(machines);
    let mut fleet = Fleet {
        sim: sim.clone(),
        dir: tempfile::tempdir().map_err(|e| e.to_string())?,
        plan: plan.clone(),
        seen: Arc::default(),
        machines: machines.clone(),
        reboots: tx,
        running: BTreeMap::new(),
        prometheus: SimPrometheus::start().await.map_err(|e| e.to_string())?,
    };
    for n in &names {
        fleet.start_agent(n);
    }

    // Timed faults, in order.
    enum Act {
        Kill(String),
        Restart(String),
        Api(ApiFault, bool),
        Prom(PromMode),
        Steal,
    }
    let mut acts: Vec<(Duration, Act)> = Vec::new();
    for (n, at, after) in &plan.kills {
        acts.push((*at, Act::Kill(n.clone())));
        acts.push((*at + *after, Act::Restart(n.clone())));
    }
    for (at, len, what) in &plan.api {
        acts.push((*at, Act::Api(*what, true)));
        acts.push((*at + *len, Act::Api(*what, false)));
    }
    for (at, len, what) in &plan.prometheus {
        acts.push((*at, Act::Prom(*what)));
        acts.push((*at + *len, Act::Prom(PromMode::Quiet)));
    }
    if let Some(at) = plan.steal_lease_at {
        acts.push((at, Act::Steal));
    }
    acts.sort_by_key(|(at, _)| *at);
    let mut acts = acts.into_iter().peekable();

    // When the last planned API fault ends.
    let api_quiet = plan
        .api
        .iter()
        .map(|(at, len, _)| *at + *len)
        .max()
        .unwrap_or_default();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut cordoned_since = BTreeMap::new();
    let mut killed: Vec<String> = Vec::new();
    let mut downs = 0u32;
    let mut stolen_from: Option<String> = None;
    // When the node that never returns went down.
    let mut lost_machine_at: Option<Instant> = None;
    let mut halted_at: Option<Instant> = None;
    // The last reboot: a rollout still rebooting at BOUND is slow (a loaded
    // machine), one that stopped rebooting long before it is stuck.
    let mut last_reboot = Instant::now();
    let halted = |sim: &SimHandle| {
        sim.get::<Namespace>(None, "drydock")
            .and_then(|ns| ns.metadata.annotations)
            .and_then(|a| a.get(HALTED).cloned())
    };
    loop {
        tokio::select! {
            Some(node) = reboots.recv() => {
                last_reboot = Instant::now();
                fleet.kill(&node);
                let never = plan.never_returns.as_deref() == Some(node.as_str());
                sim.set_node_unreachable(&node).map_err(|e| e.to_string())?;
                if never {
                    lost_machine_at = Some(Instant::now());
                } else {
                    let sim2 = sim.clone();
                    let boot_started = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    let boot = drydock_new_boot(&sim2, &node)?;
                    {
                        let mut m = machines[&node].lock().unwrap();
                        m.boot_id = boot;
                        m.booted_at = boot_started;
                        m.need.clear();
                        m.checks_fail = plan.fails_verify.as_deref() == Some(node.as_str());
                    }
                    if !killed.contains(&node) {
                        fleet.start_agent(&node);
                    }
                }
            }
            _ = tick.tick() => {
                let now = start.elapsed();
                while acts.peek().is_some_and(|(at, _)| *at <= now) {
                    let (_, act) = acts.next().unwrap();
                    match act {
                        Act::Kill(n) => { fleet.kill(&n); killed.push(n); }
                        Act::Restart(n) => {
                            killed.retain(|k| k != &n);
                            let down = plan.never_returns.as_deref() == Some(n.as_str())
                                && machines[&n].lock().unwrap().reboots > 0;
                            if !down {
                                fleet.start_agent(&n);
                            }
                        }
                        Act::Api(ApiFault::Errors, on) => sim.set_flaky(on.then_some(Flaky { seed, share: 0.3, fault: Fault::Status(500) })),
                        Act::Api(ApiFault::Hangs, on) => sim.set_flaky(on.then_some(Flaky { seed, share: 0.2, fault: Fault::Delay(Duration::from_secs(3)) })),
                        Act::Api(ApiFault::Down, true) => { downs += 1; sim.stop().await; }
                        Act::Api(ApiFault::Down, false) => {
                            downs = downs.saturating_sub(1);
                            if downs == 0 { sim.restart().await.map_err(|e| e.to_string())?; }
                        }
                        Act::Api(ApiFault::CloseWatches, _) => sim.close_watches(),
                        Act::Prom(mode) => {
                            fleet.prometheus.set_mode(mode);
                            let mut seen = fleet.seen.lock().unwrap();
                            if mode == PromMode::Quiet {
                                seen.prometheus_blocks_since = None;
                            } else {
                                seen.prometheus_blocks_since.get_or_insert_with(Instant::now);
                            }
                        }
                        Act::Steal => {
                            let held: Vec<Lease> = sim.list(Some("drydock"));
                            if let Some(l) = held.into_iter().find(|l| l.spec.as_ref().is_some_and(|s| s.holder_identity.is_some())) {
                                let name = l.metadata.name.clone().unwrap_or_default();
                                stolen_from = l.spec.as_ref().and_then(|s| s.holder_identity.clone());
                                let _ = sim.modify::<Lease>(Some("drydock"), &name, |l| {
                                    if let Some(s) = l.spec.as_mut() {
                                        s.holder_identity = Some("intruder".into());
                                        s.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now()));
                                    }
                                });
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
                if halted(&sim).is_some() {
                    fleet.seen.lock().unwrap().halt_seen_at.get_or_insert_with(Instant::now);
                }
                let problems = check_now(&sim, &plan, &machines, &mut cordoned_since, &slotless, &failed);
                if !problems.is_empty() {
                    fleet.seen.lock().unwrap().violations.extend(problems);
                    break;
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
                // A halt or a machine gone for good stops the fleet: watch
                // that nobody moves for a while (longer than a Lease), then end.
                let stuck = lost_machine_at.is_some_and(|t| t.elapsed() > Duration::from_secs(6));
                // A halt, or a node in `failed` keeping the only slot, stops
                // the fleet.
                let failed_holds = {
                    let leases: Vec<Lease> = sim.list(Some("drydock"));
                    let seen = fleet.seen.lock().unwrap();
                    plan.concurrency == 1
                        && live_holders(&leases).iter().any(|h| seen.states.get(h) == Some(&Phase::Failed))
                };
                if halted(&sim).is_none() && !failed_holds {
                    halted_at = None;
                } else if halted_at.is_none() {
                    halted_at = Some(Instant::now());
                }
                let halted_long = halted_at.is_some_and(|t| t.elapsed() > Duration::from_secs(6));
                // A failed verification owes the fleet halt until the API
                // takes it; a node that lost its slot before the reboot
                // request owes its uncordon: wait for both (bounded).
                let owing = {
                    let seen = fleet.seen.lock().unwrap();
                    let nodes: Vec<Node> = sim.list(None);
                    let leases: Vec<Lease> = sim.list(Some("drydock"));
                    let live = live_holders(&leases);
                    (!seen.verify_failed.is_empty() && halted(&sim).is_none())
                        || seen.slotless.iter().any(|(n, l)| {
                            *l == Loss::Undo
                                && !live.contains(n)
                                && nodes.iter().any(|x| x.metadata.name.as_deref() == Some(n.as_str())
                                    && x.spec.as_ref().and_then(|s| s.unschedulable) == Some(true))
                        })
                };
                if owing && now <= api_quiet + HALT_DUE && now <= BOUND {
                    continue;
                }
                if all_done || now > BOUND || stuck || halted_long {
                    break;
                }
            }
        }
    }
    sim.set_flaky(None);
    let _ = sim.restart().await;
    for n in names.clone() {
        fleet.kill(&n);
    }

    // End checks.
    let mut problems = fleet.seen.lock().unwrap().violations.clone();
    let halt = halted(&sim);
    let nodes: Vec<Node> = sim.list(None);
    let not_ready = nodes.iter().any(|n| !is_ready(n));
    let states = fleet.seen.lock().unwrap().states.clone();
    let lost = fleet.seen.lock().unwrap().lost_lease.clone();
    // A failed verification halts the fleet, at the latest once the API
    // takes the owed halt (the loop waited up to HALT_DUE past the last
    // fault).
    let verify_failed = fleet.seen.lock().unwrap().verify_failed.clone();
    if !verify_failed.is_empty() && halt.is_none() {
        problems.push(format!(
            "{verify_failed:?} failed verification and the fleet halt is not set {:.1} s after the last API fault",
            start.elapsed().saturating_sub(api_quiet).as_secs_f64()
        ));
    }
    // A node that lost its slot before the reboot request ends uncordoned
    // (or holding a slot again).
    {
        let slotless = fleet.seen.lock().unwrap().slotless.clone();
        let leases: Vec<Lease> = sim.list(Some("drydock"));
        let live = live_holders(&leases);
        for n in &nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            let cordoned = n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
            if slotless.get(&name) == Some(&Loss::Undo) && cordoned && !live.contains(&name) {
                problems.push(format!(
                    "{name} lost its slot before the reboot request and is still cordoned at the end"
                ));
            }
        }
    }
    let halt_planned = plan.fails_verify.is_some() || plan.never_returns.is_some();
    if let Some(h) = &halt
        && !halt_planned
    {
        problems.push(format!("the fleet halted with no broken node planned: {h}"));
    }
    let mut unexplained = Vec::new();
    for n in &names {
        let rebooted = machines[n].lock().unwrap().reboots == 1;
        let failed_holds = live_holders(&sim.list(Some("drydock")))
            .iter()
            .any(|h| states.get(h) == Some(&Phase::Failed));
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
            problems.extend(history_gaps(&db, n, &["locked", "draining", "rebooting"])?);
        }
    }
    let slow = start.elapsed() >= BOUND && last_reboot.elapsed() < STALLED;
    if !unexplained.is_empty() && !slow {
        problems.push(format!(
            "not rebooted, no halt or gate explains it: {} (last reboot {:.0} s before the end)",
            unexplained.join(", "),
            last_reboot.elapsed().as_secs_f64()
        ));
    }
    if problems.is_empty() {
        let rebooted = names
            .iter()
            .filter(|n| machines[*n].lock().unwrap().reboots == 1)
            .count();
        Ok(format!(
            "seed {seed}: {rebooted}/{NODES} rebooted in {:.1} s{}, halted: {}, Lease taken from {stolen_from:?}{}",
            start.elapsed().as_secs_f64(),
            if slow && !unexplained.is_empty() {
                format!(
                    " (UNFINISHED at the bound, still rebooting: a slow machine; not rebooted yet: {})",
                    unexplained.join(", ")
                )
            } else {
                String::new()
            },
            halt.is_some(),
            if lost.is_empty() {
                String::new()
            } else {
                format!(
                    "; lost their Lease mid-cycle: {lost:?} (final states {:?})",
                    lost.iter().map(|n| states.get(n)).collect::<Vec<_>>()
                )
            },
        ))
    } else {
        let reboots: BTreeMap<&String, u32> = machines
            .iter()
            .map(|(n, m)| (n, m.lock().unwrap().reboots))
            .collect();
        Err(format!(
            "{}\nafter {:.1} s; halt: {halt:?}; states: {states:?}; reboots: {reboots:?}; lost Lease: {lost:?}\nplan: {plan:?}",
            problems.join("\n"),
            start.elapsed().as_secs_f64()
        ))
    }
}

/// Holders whose claim is still renewed (their keeper runs): a node in
/// `failed` among them keeps its slot on purpose.
fn live_holders(leases: &[Lease]) -> Vec<String> {
    let now = jiff::Timestamp::now();
    leases
        .iter()
        .filter_map(|l| {
            let s = l.spec.as_ref()?;
            let fresh =
                s.renew_time.as_ref()?.0 + jiff::SignedDuration::try_from(LEASE).ok()? > now;
            fresh.then(|| s.holder_identity.clone()).flatten()
        })
        .collect()
}

/// A new bootID and Ready again, as after a reboot.
fn drydock_new_boot(sim: &SimHandle, node: &str) -> Result<String, String> {
    let boot = uuid::Uuid::new_v4().to_string();
    sim.set_boot_id(node, &boot).map_err(|e| e.to_string())?;
    sim.set_node_ready(node, true).map_err(|e| e.to_string())?;
    Ok(boot)
}

#[test]
fn fleet_survives_random_faults() {
    // Seeds at once: each has its own simulator, Prometheus and 20 agents.
    SeedRun {
        env_prefix: "DRYDOCK_FAULT",
        test_name: "fleet_faults",
        default_seeds: 6,
        default_parallel: 3,
    }
    .run(run_seed);
}
