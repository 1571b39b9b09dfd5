//! The agent's failure paths against the simulator: the real driver, real
//! Lease (keeper and all), cordon and drain over HTTP through the kube
//! client; only the machine (boot identity, reboot) is played here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drydock::testing::agent::driver::{Agent, AgentError, Failpoint, Wait, keys};
use drydock::testing::agent::kube_cluster::KubeCluster;
use drydock::testing::agent::ports::{AgentEvent, Host, PortError, Reporter};
use drydock::testing::agent::state::{AgentState, Step};
use drydock::testing::config::Settings;
use drydock::testing::host::sentinel::{self, RebootRequest};
use drydock::testing::sim::{PdbSpec, PodSpec, ReplicaSetSpec, Scenario, SimHandle};
use drydock::testing::store::{Store, StoreError};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node as KubeNode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

const SLOT: &str = "drydock-default-0";

#[derive(Debug)]
struct Machine {
    boot_id: String,
    booted_at: Timestamp,
    need: Vec<String>,
    reboots: u32,
    /// logind accepted a reboot the harness has not carried out yet.
    reboot_pending: bool,
}

#[derive(Clone)]
struct TestHost(Arc<Mutex<Machine>>);

impl TestHost {
    fn m(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.0.lock().unwrap()
    }
}

impl Host for TestHost {
    fn boot_id(&self) -> Result<String, PortError> {
        Ok(self.m().boot_id.clone())
    }
    fn booted_at(&self) -> Result<Timestamp, PortError> {
        Ok(self.m().booted_at)
    }
    async fn reboot_need(
        &self,
        requested: Option<RebootRequest>,
    ) -> Result<Vec<String>, PortError> {
        let mut need = self.m().need.clone();
        need.extend(requested.map(|r| format!("requested by operator at {}: {}", r.at, r.reason)));
        Ok(need)
    }
    async fn reboot(&self, _reason: &str) -> Result<(), PortError> {
        let mut m = self.m();
        m.reboots += 1;
        m.reboot_pending = true;
        Ok(())
    }
    async fn run_checks(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Every state change and event, with when, from every agent of a test.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(Instant, String, AgentEvent)>>>);

impl Log {
    fn events(&self, node: &str) -> Vec<AgentEvent> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n, _)| n == node)
            .map(|(_, _, e)| e.clone())
            .collect()
    }

    /// (when, node, new state) for every transition.
    fn states(&self) -> Vec<(Instant, String, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(at, n, e)| match e {
                AgentEvent::StateChanged { to, .. } => Some((*at, n.clone(), to.to_string())),
                _ => None,
            })
            .collect()
    }
}

struct Rec {
    log: Log,
}

impl Reporter for Rec {
    fn status(&self, _line: &str) {}
    fn event(&self, node: &str, event: &AgentEvent) {
        self.log
            .0
            .lock()
            .unwrap()
            .push((Instant::now(), node.to_string(), event.clone()));
    }
}

type TestAgent = Agent<TestHost, KubeCluster, Rec>;

struct Node {
    name: String,
    settings: Settings,
    host: TestHost,
}

fn node(dir: &std::path::Path, sim: &SimHandle, name: &str) -> Node {
    let mut s = Settings::default();
    s.node.name = Some(name.into());
    s.node.state_db = dir.join(format!("{name}.db"));
    s.lease.duration = Duration::from_secs(3);
    s.reboot.check_interval = Duration::from_millis(300);
    s.gates.soak = Duration::ZERO;
    s.drain.timeout = Duration::from_secs(30);
    s.drain.retry_interval = Duration::from_millis(100);
    s.drain.evict_unmanaged = false;
    s.verify.timeout = Duration::from_secs(5);
    s.report.textfile_dir = None;
    s.report.kubernetes_events = false;
    let boot = uuid::Uuid::new_v4().to_string();
    sim.set_boot_id(name, &boot).unwrap();
    Node {
        name: name.into(),
        settings: s,
        host: TestHost(Arc::new(Mutex::new(Machine {
            boot_id: boot,
            booted_at: Timestamp::from_second(Timestamp::now().as_second() - 3600).unwrap(),
            need: vec!["kernel 6.1.0-30 installed".into()],
            reboots: 0,
            reboot_pending: false,
        }))),
    }
}

fn client(sim: &SimHandle) -> kube::Client {
    let mut cfg = sim.config();
    cfg.default_retry = false;
    kube::Client::try_from(cfg).unwrap()
}

/// A fresh agent process for `n`, from its persisted state.
fn agent(sim: &SimHandle, n: &Node, log: &Log) -> TestAgent {
    let store = Store::open(&n.settings.node.state_db).unwrap();
    let cluster = KubeCluster::new(client(sim), n.settings.clone(), n.name.clone());
    Agent::new(
        n.name.clone(),
        n.settings.clone(),
        store,
        n.host.clone(),
        cluster,
        Rec { log: log.clone() },
    )
    .unwrap()
}

/// The machine goes down and comes back with a new boot; its agent dies
/// with it (the caller starts a new one).
async fn reboot_machine(sim: &SimHandle, n: &Node) {
    let boot = sim
        .simulate_reboot(&n.name, Duration::from_millis(150))
        .await
        .unwrap();
    let mut m = n.host.m();
    m.boot_id = boot;
    m.booted_at = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    m.need.clear();
    m.reboot_pending = false;
}

async fn pause(wait: Wait) {
    match wait {
        Wait::No => {}
        Wait::For(d) | Wait::LeaseChange(d) => {
            tokio::time::sleep(d.min(Duration::from_millis(100))).await
        }
    }
}

/// Ticks `a` (restarting it after each reboot) until `done` or `limit`.
async fn drive(
    sim: &SimHandle,
    n: &Node,
    log: &Log,
    mut a: TestAgent,
    limit: Duration,
    done: impl Fn(&AgentState) -> bool,
) -> TestAgent {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < limit,
            "{}: stuck in {:?}",
            n.name,
            a.state()
        );
        let wait = a.tick().await.unwrap();
        if n.host.m().reboot_pending {
            reboot_machine(sim, n).await;
            a = agent(sim, n, log);
        }
        if done(a.state()) {
            return a;
        }
        pause(wait).await;
    }
}

fn lease_holder(sim: &SimHandle) -> Option<String> {
    sim.get::<Lease>(Some("drydock"), SLOT)?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// Another node takes the slot (as after this one's claim ran out).
fn steal_lease(sim: &SimHandle, to: Option<&str>) {
    sim.modify::<Lease>(Some("drydock"), SLOT, |l| {
        let spec = l.spec.get_or_insert_with(Default::default);
        spec.holder_identity = to.map(String::from);
        // A live holder for the whole test: never expires under it.
        spec.lease_duration_seconds = Some(300);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        spec.acquire_time = Some(MicroTime(Timestamp::now()));
    })
    .unwrap();
}

fn cordoned(sim: &SimHandle, node: &str) -> bool {
    sim.get::<KubeNode>(None, node)
        .and_then(|n| n.spec)
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn history(n: &Node, kind: &str) -> Vec<serde_json::Value> {
    Store::open(&n.settings.node.state_db)
        .unwrap()
        .history(&[kind], 1000)
        .unwrap()
        .into_iter()
        .map(|h| h.detail)
        .collect()
}

fn resume_now(a: &TestAgent) {
    a.store()
        .set(keys::RESUME_REQUESTED, &Timestamp::now())
        .unwrap();
}

fn count(events: &[AgentEvent], f: impl Fn(&AgentEvent) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

async fn cluster() -> SimHandle {
    Scenario::standard(3, 1)
        .pod_start_delay(Duration::from_millis(50))
        .default_grace_period(0)
        .start()
        .await
        .unwrap()
}

/// Steals the slot for `to` on the `nth` entry (from 1) into `state`.
fn steal_on(sim: &SimHandle, state: &'static str, nth: u32, to: &'static str) -> Failpoint {
    let seen = Arc::new(Mutex::new(0u32));
    let sim = sim.clone();
    Arc::new(move |entered: &'static str| {
        if entered == state {
            let mut n = seen.lock().unwrap();
            *n += 1;
            if *n == nth {
                steal_lease(&sim, Some(to));
            }
        }
        false
    })
}

/// Out-of-service states (by the log) never overlap for two nodes.
fn never_two_out_of_service(states: &[(Instant, String, String)]) {
    let mut out = std::collections::BTreeMap::new();
    for (_, n, s) in states {
        out.insert(
            n.clone(),
            matches!(
                s.as_str(),
                "cordoning" | "draining" | "rebooting" | "verifying" | "releasing"
            ),
        );
        assert!(out.values().filter(|v| **v).count() <= 1, "{states:?}");
    }
}

/// Before the reboot was asked for, a lost slot puts the node back (our
/// cordon undone, the loss recorded) and the node waits like any other:
/// the node the slot went to runs its whole cycle meanwhile, and this one
/// goes on after it; never both cordoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_lost_before_the_reboot_request_uncordons_and_lets_another_node_go() {
    for lost_in in ["cordoning", "draining", "rebooting"] {
        let dir = tempfile::tempdir().unwrap();
        let sim = cluster().await;
        let log = Log::default();
        let w1 = node(dir.path(), &sim, "worker-1");
        let w2 = node(dir.path(), &sim, "worker-2");
        // "rebooting", first entry: drained, the reboot not yet asked for.
        let a1 = agent(&sim, &w1, &log).with_failpoint(steal_on(&sim, lost_in, 1, "worker-2"));
        let start = Instant::now();
        let mut a1 = a1;
        let mut was_out = false;
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{lost_in}: {:?}",
                a1.state()
            );
            let wait = a1.tick().await.unwrap();
            was_out |= a1.state().phase().out_of_service();
            if was_out && a1.state().name() == "pending" {
                break;
            }
            pause(wait).await;
        }
        assert!(
            matches!(a1.state(), AgentState::Pending { resume: None, .. }),
            "{lost_in}: {:?}",
            a1.state()
        );
        assert!(!cordoned(&sim, "worker-1"), "{lost_in}: our cordon undone");
        assert_eq!(w1.host.m().reboots, 0, "{lost_in}");
        let lost = history(&w1, "lease-lost");
        assert_eq!(lost.len(), 1, "{lost_in}: {lost:?}");
        assert_eq!(lost[0]["state"], lost_in);
        assert_eq!(lost[0]["holder"], "worker-2");
        assert_eq!(lost[0]["uncordoned"], true);
        assert_eq!(lease_holder(&sim).as_deref(), Some("worker-2"));
        // worker-2 (whose the slot now is) goes through its cycle while
        // worker-1 waits; then worker-1 goes.
        let monitor_sim = sim.clone();
        let both = Arc::new(Mutex::new(false));
        let both2 = both.clone();
        let monitor = tokio::spawn(async move {
            loop {
                if cordoned(&monitor_sim, "worker-1") && cordoned(&monitor_sim, "worker-2") {
                    *both2.lock().unwrap() = true;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let a2 = agent(&sim, &w2, &log);
        let (sim1, log1, sim2, log2) = (sim.clone(), log.clone(), sim.clone(), log.clone());
        let t2 = tokio::spawn(async move {
            drive(&sim2, &w2, &log2, a2, Duration::from_secs(30), |s| {
                *s == AgentState::Idle
            })
            .await;
            w2
        });
        let t1 = tokio::spawn(async move {
            drive(&sim1, &w1, &log1, a1, Duration::from_secs(40), |s| {
                *s == AgentState::Idle
            })
            .await;
            w1
        });
        let w2 = t2.await.unwrap();
        let w1 = t1.await.unwrap();
        monitor.abort();
        assert!(
            !*both.lock().unwrap(),
            "{lost_in}: both nodes cordoned at once"
        );
        assert_eq!(w1.host.m().reboots, 1, "{lost_in}");
        assert_eq!(w2.host.m().reboots, 1, "{lost_in}");
        assert!(!cordoned(&sim, "worker-1") && !cordoned(&sim, "worker-2"));
        assert_eq!(lease_holder(&sim), None, "{lost_in}: released");
        let states = log.states();
        never_two_out_of_service(&states);
        // worker-1 went out again only after worker-2 was back.
        let w2_done = states
            .iter()
            .rposition(|(_, n, s)| n == "worker-2" && s == "idle")
            .unwrap();
        let w1_again = states
            .iter()
            .rposition(|(_, n, s)| n == "worker-1" && s == "cordoning")
            .unwrap();
        assert!(w2_done < w1_again, "{lost_in}: {states:?}");
        sim.stop().await;
    }
}

/// After the reboot was asked for, a lost slot keeps the node cordoned;
/// it neither verifies nor uncordons until it holds a slot again, takes
/// one as soon as it is free, and then finishes: one reboot, one verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_lost_after_the_reboot_request_is_won_back_before_verifying() {
    // (state, its nth entry): the second "rebooting" is the one with the
    // reboot asked for.
    for (lost_in, nth) in [("rebooting", 2), ("verifying", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let sim = cluster().await;
        let log = Log::default();
        let n = node(dir.path(), &sim, "worker-1");
        let fp = steal_on(&sim, lost_in, nth, "worker-2");
        let mut a = agent(&sim, &n, &log).with_failpoint(fp.clone());
        let start = Instant::now();
        while !a.state().out_without_slot() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{lost_in}: {:?}",
                a.state()
            );
            let wait = a.tick().await.unwrap();
            // Lost while rebooting: the machine goes down only after the
            // agent noticed (it would otherwise notice after the boot).
            if n.host.m().reboot_pending
                && (lost_in != "rebooting" || a.state().name() == "pending")
            {
                reboot_machine(&sim, &n).await;
                a = agent(&sim, &n, &log).with_failpoint(fp.clone());
            }
            pause(wait).await;
        }
        let AgentState::Pending {
            resume: Some(target),
            ..
        } = a.state().clone()
        else {
            unreachable!()
        };
        assert_eq!(target.name(), lost_in);
        if n.host.m().reboot_pending {
            reboot_machine(&sim, &n).await;
            a = agent(&sim, &n, &log);
        }
        // Held elsewhere: for a while (several lease periods), nothing.
        let waited = Instant::now();
        while waited.elapsed() < Duration::from_secs(3) {
            let w = a.tick().await.unwrap();
            assert_eq!(a.state().name(), "pending", "{lost_in}");
            assert!(a.state().out_without_slot(), "{lost_in}");
            pause(w).await;
        }
        assert!(cordoned(&sim, "worker-1"), "{lost_in}: kept cordoned");
        assert_eq!(n.host.m().reboots, 1, "{lost_in}");
        let events = log.events("worker-1");
        assert_eq!(
            count(&events, |e| matches!(e, AgentEvent::Verified { .. })),
            0,
            "{lost_in}: no verification without a slot"
        );
        assert!(history(&n, "reboot").is_empty(), "{lost_in}");
        let lost = history(&n, "lease-lost");
        assert_eq!(lost.len(), 1, "{lost_in}");
        assert_eq!(lost[0]["uncordoned"], false);
        assert_eq!(lease_holder(&sim).as_deref(), Some("worker-2"));
        // The slot is free: won back at once, then verified and released.
        steal_lease(&sim, None);
        let _a = drive(&sim, &n, &log, a, Duration::from_secs(30), |s| {
            *s == AgentState::Idle
        })
        .await;
        assert_eq!(n.host.m().reboots, 1, "{lost_in}: exactly one reboot");
        assert_eq!(history(&n, "reboot").len(), 1, "{lost_in}");
        assert!(!cordoned(&sim, "worker-1"), "{lost_in}: uncordoned");
        assert_eq!(lease_holder(&sim), None, "{lost_in}: released");
        let states: Vec<String> = log
            .states()
            .into_iter()
            .filter(|(_, n, _)| n == "worker-1")
            .map(|(_, _, s)| s)
            .collect();
        let regained = states.iter().rposition(|s| s == "pending").unwrap();
        assert!(
            states[regained..].starts_with(&["pending".to_string(), lost_in.to_string()]),
            "{lost_in}: {states:?}"
        );
        let releasing = states.iter().position(|s| s == "releasing").unwrap();
        assert!(releasing > regained, "{lost_in}: {states:?}");
        assert_eq!(states[releasing - 1], "verifying", "{lost_in}: {states:?}");
        assert_eq!(
            count(&log.events("worker-1"), |e| matches!(
                e,
                AgentEvent::Verified { .. }
            )),
            1
        );
        sim.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_eviction_fails_with_pod_and_reason_and_a_stale_resume_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Scenario::standard(3, 1)
        .pod(PodSpec::new("default", "loner", "worker-1"))
        .pod_start_delay(Duration::from_millis(50))
        .default_grace_period(0)
        .start()
        .await
        .unwrap();
    let log = Log::default();
    let n = node(dir.path(), &sim, "worker-1");
    let a = agent(&sim, &n, &log);
    // Left over from some earlier trouble: must not answer this failure.
    resume_now(&a);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut a = drive(&sim, &n, &log, a, Duration::from_secs(20), |s| {
        matches!(s, AgentState::Failed { .. })
    })
    .await;
    let AgentState::Failed {
        step,
        error,
        slot_held,
        ..
    } = a.state().clone()
    else {
        unreachable!()
    };
    assert_eq!(step, Step::Drain);
    assert!(error.contains("default/loner"), "{error}");
    assert!(error.contains("has no controller"), "{error}");
    assert!(slot_held, "the fleet stops here");
    for _ in 0..5 {
        let w = a.tick().await.unwrap();
        pause(w).await;
    }
    assert_eq!(a.state().name(), "failed", "stale resume ignored");
    assert_eq!(history(&n, "stale-request").len(), 1);
    assert!(cordoned(&sim, "worker-1"));
    assert_eq!(lease_holder(&sim).as_deref(), Some("worker-1"));
    assert_eq!(n.host.m().reboots, 0);
    // Fixed by a person, then resumed: the drain is retried.
    sim.remove_pod("default", "loner").unwrap();
    resume_now(&a);
    let _a = drive(&sim, &n, &log, a, Duration::from_secs(30), |s| {
        *s == AgentState::Idle
    })
    .await;
    assert_eq!(n.host.m().reboots, 1);
    assert!(!cordoned(&sim, "worker-1"));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reboot_request_appears_once_in_history() {
    let dir = tempfile::tempdir().unwrap();
    let sim = cluster().await;
    drydock::testing::cluster::annotations::pause_cluster(
        &client(&sim),
        "drydock",
        "change freeze",
    )
    .await
    .unwrap();
    let log = Log::default();
    let n = node(dir.path(), &sim, "worker-1");
    n.host.m().need.clear();
    let mut a = agent(&sim, &n, &log);
    sentinel::request_reboot(&a.store(), "firmware update").unwrap();
    for _ in 0..8 {
        a.tick().await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(a.state().name(), "pending");
    let mentions: Vec<_> = history(&n, "state")
        .into_iter()
        .filter(|d| d.to_string().contains("firmware update"))
        .collect();
    assert_eq!(mentions.len(), 1, "{mentions:#?}");
    assert!(
        history(&n, "state")
            .iter()
            .all(|d| !(d["from"] == "pending" && d["to"] == "pending")),
        "no rewritten pending entries"
    );
    sim.stop().await;
}

/// A disruption budget that allows nothing: the drain waits (429) until
/// the budget goes away.
fn blocked_db() -> Scenario {
    // Three workers: room for the evicted pods while two are cordoned.
    Scenario::standard(4, 1)
        .replica_set(
            ReplicaSetSpec::new("default", "db", 1)
                .label("app", "db")
                .on_nodes(["worker-1"]),
        )
        .pdb(
            PdbSpec::new("default", "db")
                .selector("app", "db")
                .min_available(1),
        )
        .pod_start_delay(Duration::from_millis(50))
        .default_grace_period(0)
}

async fn delete_pdb(sim: &SimHandle, name: &str) {
    let api: kube::Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        kube::Api::namespaced(client(sim), "default");
    api.delete(name, &Default::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_long_drain_stops_within_seconds_and_resumes_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sim = blocked_db().start().await.unwrap();
    let log = Log::default();
    let n = node(dir.path(), &sim, "worker-1");
    let mut a = agent(&sim, &n, &log);
    let (term, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        let r = a
            .run(async {
                let _ = stopped.await;
            })
            .await;
        (a, r)
    });
    // Into the drain, and stuck on the budget for a while.
    let start = Instant::now();
    while !log.states().iter().any(|(_, _, s)| s == "draining") {
        assert!(start.elapsed() < Duration::from_secs(15), "never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let signalled = Instant::now();
    term.send(()).unwrap();
    let (a, result) = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("stopped within 5 s")
        .unwrap();
    result.unwrap();
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert_eq!(a.state().name(), "draining");
    drop(a);
    let persisted = Store::open(&n.settings.node.state_db)
        .unwrap()
        .current_state::<AgentState>()
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(persisted.name(), "draining", "state persisted");
    assert!(cordoned(&sim, "worker-1"));
    // Restarted (the budget was lifted meanwhile): the drain goes on.
    delete_pdb(&sim, "db").await;
    let a = agent(&sim, &n, &log);
    assert_eq!(a.state().name(), "draining");
    let _a = drive(&sim, &n, &log, a, Duration::from_secs(30), |s| {
        *s == AgentState::Idle
    })
    .await;
    assert_eq!(n.host.m().reboots, 1);
    assert!(!cordoned(&sim, "worker-1"));
    assert_eq!(lease_holder(&sim), None);
    sim.stop().await;
}

/// Kill the agent right after each persisted state, start a new one from
/// the store, and check the invariants: real Lease, cordon and drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_every_persisted_step_resumes_safely_against_the_simulator() {
    let names = [
        "pending",
        "locked",
        "cordoning",
        "draining",
        "rebooting",
        "verifying",
        "releasing",
        "idle",
    ];
    for (crash_at, admin_cordoned) in names.iter().flat_map(|n| [(*n, false), (*n, true)]) {
        let dir = tempfile::tempdir().unwrap();
        let sim = cluster().await;
        if admin_cordoned {
            sim.set_unschedulable("worker-1", true).unwrap();
        }
        let log = Log::default();
        let n = node(dir.path(), &sim, "worker-1");
        let crashed = Arc::new(Mutex::new(false));
        let flag = crashed.clone();
        let fp = Arc::new(move |to: &'static str| {
            let mut done = flag.lock().unwrap();
            if to == crash_at && !*done {
                *done = true;
                return true;
            }
            false
        });
        let mut a = agent(&sim, &n, &log).with_failpoint(fp.clone());
        let start = Instant::now();
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{crash_at}: no progress ({:?})",
                a.state()
            );
            let wait = match a.tick().await {
                Ok(w) => w,
                Err(AgentError::Failpoint(_)) => {
                    // kill -9: gone; a new process starts from the store.
                    a = agent(&sim, &n, &log);
                    Wait::No
                }
                Err(e) => panic!("{crash_at}: {e}"),
            };
            if n.host.m().reboot_pending {
                reboot_machine(&sim, &n).await;
                a = agent(&sim, &n, &log).with_failpoint(fp.clone());
            }
            if cordoned(&sim, "worker-1") && !admin_cordoned {
                assert_eq!(
                    lease_holder(&sim).as_deref(),
                    Some("worker-1"),
                    "{crash_at}: cordoned without the lease"
                );
            }
            if n.host.m().reboots > 0 && *a.state() == AgentState::Idle {
                break;
            }
            assert!(
                !matches!(a.state(), AgentState::Failed { .. }),
                "{crash_at}: {:?}",
                a.state()
            );
            pause(wait).await;
        }
        assert!(*crashed.lock().unwrap(), "{crash_at}: the crash happened");
        assert_eq!(n.host.m().reboots, 1, "{crash_at}: rebooted exactly once");
        assert_eq!(
            cordoned(&sim, "worker-1"),
            admin_cordoned,
            "{crash_at}: cordon as found"
        );
        assert_eq!(lease_holder(&sim), None, "{crash_at}: lease released");
        assert_eq!(history(&n, "reboot").len(), 1, "{crash_at}: history kept");
        sim.stop().await;
    }
}

/// Two nodes, concurrency 1: the holder's API access fails for longer than
/// the lease; it must have stopped draining before the other can take the
/// slot, and the other goes on only then. Once the API answers again the
/// first undoes its cordon and waits its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_cannot_renew_stops_draining_before_another_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let sim = blocked_db().start().await.unwrap();
    let log = Log::default();
    let w1 = node(dir.path(), &sim, "worker-1");
    let w2 = node(dir.path(), &sim, "worker-2");
    let a1 = agent(&sim, &w1, &log);
    // worker-1 first: into its (long) drain.
    let a1 = drive(&sim, &w1, &log, a1, Duration::from_secs(15), |s| {
        s.name() == "draining"
    })
    .await;
    let (sim1, log1) = (sim.clone(), log.clone());
    let t1 = tokio::spawn(async move {
        drive(&sim1, &w1, &log1, a1, Duration::from_secs(40), |s| {
            s.name() == "pending"
        })
        .await;
        w1
    });
    let a2 = agent(&sim, &w2, &log);
    let (sim2, log2) = (sim.clone(), log.clone());
    let t2 = tokio::spawn(async move {
        drive(&sim2, &w2, &log2, a2, Duration::from_secs(40), |s| {
            s.name() == "draining"
        })
        .await;
        w2
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // worker-1 cut off from the API for longer than the lease lasts.
    sim.set_fault(Some(drydock::testing::sim::Fault::Status(503)));
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The claim ran out meanwhile: worker-2 is the one that takes it
    // (else worker-1 may win its own expired slot back first).
    steal_lease(&sim, Some("worker-2"));
    sim.set_fault(None);
    let w1 = t1.await.unwrap();
    let _w2 = t2.await.unwrap();
    // worker-1 told of the loss (and stopped evicting) before worker-2
    // even cordoned.
    let w1_lost = log
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|(_, n, e)| n == "worker-1" && matches!(e, AgentEvent::LeaseLost { .. }))
        .map(|(t, _, _)| *t)
        .expect("worker-1 saw the loss");
    let states = log.states();
    let w2_cordoning = states
        .iter()
        .find(|(_, n, s)| n == "worker-2" && s == "cordoning")
        .map(|(t, _, _)| *t)
        .expect("worker-2 went on");
    assert!(
        w1_lost < w2_cordoning,
        "worker-2 went out while worker-1 still drained"
    );
    // Back with the API: worker-1 undid its cordon and waits again.
    let persisted = Store::open(&w1.settings.node.state_db)
        .unwrap()
        .current_state::<AgentState>()
        .unwrap()
        .unwrap()
        .0;
    assert!(
        matches!(persisted, AgentState::Pending { resume: None, .. }),
        "{persisted:?}"
    );
    assert!(!cordoned(&sim, "worker-1"));
    let lost = history(&w1, "lease-lost");
    assert_eq!(lost.len(), 1, "{:#?}", history(&w1, "state"));
    sim.stop().await;
}

/// Who halted the fleet is data: only that node lifts it after recovering,
/// and a halt set by hand (text only) belongs to no node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_records_who_and_only_that_node_lifts_it() {
    use drydock::testing::agent::ports::{Cluster, Halt};
    use drydock::testing::cluster::annotations;
    let dir = tempfile::tempdir().unwrap();
    let sim = cluster().await;
    let w1 = node(dir.path(), &sim, "worker-1");
    let w2 = node(dir.path(), &sim, "worker-2");
    let k1 = KubeCluster::new(client(&sim), w1.settings.clone(), "worker-1".into());
    let k2 = KubeCluster::new(client(&sim), w2.settings.clone(), "worker-2".into());
    let halt = Halt {
        node: "worker-1".into(),
        reason: "failed verification after reboot: kubelet not Ready".into(),
        at: Timestamp::from_second(Timestamp::now().as_second()).unwrap(),
    };
    k1.halt_fleet(&halt).await.unwrap();
    let by = annotations::halted_by(&client(&sim), "drydock")
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(
        (by.node.as_str(), by.reason.as_str(), by.at),
        ("worker-1", halt.reason.as_str(), halt.at)
    );
    // worker-2 recovering from something else does not lift worker-1's halt.
    assert!(!k2.clear_halt().await.unwrap());
    assert!(
        annotations::halted_by(&client(&sim), "drydock")
            .await
            .unwrap()
            .is_some()
    );
    assert!(k1.clear_halt().await.unwrap());
    assert!(
        annotations::halted_by(&client(&sim), "drydock")
            .await
            .unwrap()
            .is_none()
    );
    // A halt an operator set by hand, naming worker-1 in its text: not ours.
    annotations::halt(&client(&sim), "drydock", "worker-1 looks odd, hold on")
        .await
        .unwrap();
    assert!(!k1.clear_halt().await.unwrap());
    // Nor one rewritten by hand over worker-1's own.
    k1.halt_fleet(&halt).await.unwrap();
    annotations::halt(&client(&sim), "drydock", "keep it halted, checking storage")
        .await
        .unwrap();
    assert!(!k1.clear_halt().await.unwrap());
    sim.stop().await;
}

/// A Failed state as the build before the interrupted-state change stored
/// it: no longer readable. The agent refuses to start on it, says why and
/// what to do, and touches nothing: the record, the cordon, the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_stored_by_an_older_build_fails_closed_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let sim = cluster().await;
    let log = Log::default();
    let n = node(dir.path(), &sim, "worker-1");
    sim.set_unschedulable("worker-1", true).unwrap();
    // The slot the interrupted cycle held.
    drydock::testing::cluster::lease::LeaseClient::new(client(&sim), &n.settings, "worker-1")
        .acquire(true)
        .await
        .unwrap()
        .expect("slot taken");
    steal_lease(&sim, Some("worker-1"));
    let old = serde_json::json!({
        "state": "failed",
        "step": "release",
        "error": "lease drydock-default-0 lost to worker-2",
        "at": "2026-11-01T10:00:00Z",
        "cycle": {
            "reasons": ["kernel 6.1.0-30 installed"],
            "needed-since": "2026-11-01T09:00:00Z",
            "slot": SLOT,
            "locked-at": "2026-11-01T09:30:00Z"
        },
        "cordon": "ours",
        "boot_id": null,
        "drain_seconds": 12.0,
        "reboot_seconds": 0.0
    });
    {
        let mut store = Store::open(&n.settings.node.state_db).unwrap();
        store
            .transition(&old, "state", &serde_json::json!({"to": "failed"}))
            .unwrap();
    }
    let records = |n: &Node| {
        Store::open(&n.settings.node.state_db)
            .unwrap()
            .history(&[], 1000)
            .unwrap()
            .len()
    };
    let before = records(&n);
    let store = Store::open(&n.settings.node.state_db).unwrap();
    let cluster = KubeCluster::new(client(&sim), n.settings.clone(), n.name.clone());
    let refused = Agent::new(
        n.name.clone(),
        n.settings.clone(),
        store,
        n.host.clone(),
        cluster,
        Rec { log: log.clone() },
    );
    let Err(AgentError::Store(e @ StoreError::UnreadableState { .. })) = refused else {
        panic!("an old state must not load");
    };
    let text = e.to_string();
    let path = n.settings.node.state_db.display().to_string();
    for part in [
        path.as_str(),
        "state \"failed\"",
        "written at 20",
        "drydock takes no action on this node",
        "DELETE FROM state",
        "the history is kept",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    // Nothing changed: the record, the cordon, the slot.
    let stored = Store::open(&n.settings.node.state_db)
        .unwrap()
        .current_state::<serde_json::Value>()
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(stored, old);
    assert_eq!(records(&n), before);
    assert!(cordoned(&sim, "worker-1"));
    assert_eq!(lease_holder(&sim).as_deref(), Some("worker-1"));
    assert!(log.events("worker-1").is_empty());
    // The way out it names: undo by hand, forget the state, start again.
    sim.set_unschedulable("worker-1", false).unwrap();
    steal_lease(&sim, None);
    rusqlite::Connection::open(&n.settings.node.state_db)
        .unwrap()
        .execute("DELETE FROM state", [])
        .unwrap();
    let a = agent(&sim, &n, &log);
    assert_eq!(*a.state(), AgentState::Idle);
    drop(a);
    assert_eq!(records(&n), before, "history kept");
    sim.stop().await;
}
