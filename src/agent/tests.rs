//! Driver tests against an in-memory world: every step, every failure path,
//! and a crash (failpoint) after every persisted transition.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use super::driver::{Agent, AgentError, keys};
use super::ports::*;
use super::state::{AgentState, Step};
use crate::cluster::drain::{BlockReason, BlockedPod, PodRef};
use crate::config::Settings;
use crate::host::sentinel::RebootRequest;
use crate::store::Store;

#[derive(Debug, Default)]
struct World {
    boot_id: String,
    need: Vec<String>,
    reboots: u32,
    refuse_reboot: bool,
    unschedulable: bool,
    lease_holder: Option<String>,
    drain_times_out: bool,
    healthy_after_boot: bool,
    halted: Option<String>,
    gate_block: Option<String>,
    finished: u32,
    /// Pending reboot: the boot_id changes when the agent "restarts".
    reboot_pending: bool,
    /// The gate block ends by itself then (a soak).
    gate_block_until: Option<Timestamp>,
    gate_evaluations: u32,
    lease_reads: u32,
    /// A block the drydock Namespace alone shows (pause, soak, a shared
    /// verdict): the control look sees it, as does the full look.
    control_block: Option<String>,
    control_looks: u32,
    /// Taking a slot, and whether every gate passed just before.
    acquires: Vec<bool>,
    /// Whether n1 held a slot at each full gate look.
    looked_holding: Vec<bool>,
    /// The slot other nodes hold has expired (its holder's Node exists):
    /// taken over only after the gates passed.
    lease_expired: bool,
    /// The next try for a free slot is lost to this node.
    race_lost_to: Option<String>,
    booted_at: Option<Timestamp>,
    /// The keeper's channel for the slot n1 holds: a test flips it to Lost.
    claim: Option<tokio::sync::watch::Sender<Claim>>,
    /// The drain waits until this is set (a long drain).
    drain_blocked: bool,
    drain_refused: Option<String>,
    /// The API refuses the halt write (an outage at the wrong moment).
    halt_fails: bool,
    /// Operator reasons as the host saw them, one per check.
    requests_seen: Vec<String>,
}

#[derive(Clone)]
struct Fake(Arc<Mutex<World>>);

impl Host for Fake {
    fn boot_id(&self) -> Result<String, PortError> {
        Ok(self.0.lock().unwrap().boot_id.clone())
    }
    fn booted_at(&self) -> Result<Timestamp, PortError> {
        let mut w = self.0.lock().unwrap();
        Ok(*w.booted_at.get_or_insert_with(Timestamp::now))
    }
    async fn reboot_need(
        &self,
        requested: Option<RebootRequest>,
    ) -> Result<Vec<String>, PortError> {
        let mut w = self.0.lock().unwrap();
        let mut need = w.need.clone();
        if let Some(r) = requested {
            let text = format!("requested by operator at {}: {}", r.at, r.reason);
            w.requests_seen.push(text.clone());
            need.push(text);
        }
        Ok(need)
    }
    async fn reboot(&self, _reason: &str) -> Result<(), PortError> {
        let mut w = self.0.lock().unwrap();
        if w.refuse_reboot {
            return Err(PortError::failed("calling logind Reboot", "AccessDenied"));
        }
        w.reboots += 1;
        w.reboot_pending = true;
        Ok(())
    }
    async fn run_checks(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Cluster for Fake {
    fn local_gates(&self, _store: &Store, _now: Timestamp) -> Vec<GateStatus> {
        vec![GateStatus {
            gate: crate::gates::GateName::Window,
            passed: true,
            reason: String::new(),
            skipped: false,
        }]
    }
    fn next_local_change(&self, _now: Timestamp) -> Option<Timestamp> {
        None
    }
    async fn cluster_gates(&self, _now: Timestamp) -> ClusterGates {
        let mut w = self.0.lock().unwrap();
        w.gate_evaluations += 1;
        let holding = w.lease_holder.as_deref() == Some("n1");
        w.looked_holding.push(holding);
        let block = w
            .halted
            .clone()
            .or(w.control_block.clone())
            .or(w.gate_block.clone());
        ClusterGates {
            gates: vec![GateStatus {
                gate: crate::gates::GateName::Cluster,
                passed: block.is_none(),
                reason: block.unwrap_or_default(),
                skipped: false,
            }],
            blocked_until: w.gate_block_until,
        }
    }
    async fn control_gates(&self, _now: Timestamp) -> Option<ClusterGates> {
        let mut w = self.0.lock().unwrap();
        w.control_looks += 1;
        let block = w.halted.clone().or(w.control_block.clone())?;
        Some(ClusterGates {
            gates: vec![GateStatus {
                gate: crate::gates::GateName::Cluster,
                passed: false,
                reason: block,
                skipped: false,
            }],
            blocked_until: w.gate_block_until,
        })
    }
    async fn lease_outlook(&self) -> Result<LeaseOutlook, PortError> {
        let mut w = self.0.lock().unwrap();
        w.lease_reads += 1;
        Ok(match &w.lease_holder {
            Some(h) if h == "n1" => LeaseOutlook::Mine("slot-0".into()),
            Some(_) if w.lease_expired => LeaseOutlook::Expired,
            Some(h) => LeaseOutlook::Busy {
                holders: vec![h.clone()],
            },
            None => LeaseOutlook::Available,
        })
    }
    async fn acquire(&self, gates_passed: bool) -> Result<Option<String>, PortError> {
        let mut w = self.0.lock().unwrap();
        w.acquires.push(gates_passed);
        match &w.lease_holder {
            Some(h) if h != "n1" && !(w.lease_expired && gates_passed) => Ok(None),
            _ if w.race_lost_to.is_some() => {
                w.lease_holder = w.race_lost_to.take();
                Ok(None)
            }
            _ => {
                w.lease_holder = Some("n1".into());
                w.lease_expired = false;
                Ok(Some("slot-0".into()))
            }
        }
    }
    async fn hold(&self, slot: &str) -> Result<ClaimWatch, PortError> {
        let mut w = self.0.lock().unwrap();
        match &w.lease_holder {
            Some(h) if h == "n1" => {
                if let Some(tx) = &w.claim
                    && !tx.borrow().is_lost()
                {
                    return Ok(tx.subscribe());
                }
                let (tx, rx) = tokio::sync::watch::channel(Claim::Held {
                    slot: slot.into(),
                    expires_at: Timestamp::now(),
                });
                w.claim = Some(tx);
                Ok(rx)
            }
            other => Err(PortError::LostLease {
                slot: slot.into(),
                holder: other.clone().unwrap_or_else(|| "nobody".into()),
            }),
        }
    }
    async fn confirm(&self, slot: &str) -> Result<(), PortError> {
        let w = self.0.lock().unwrap();
        match &w.lease_holder {
            Some(h) if h == "n1" => Ok(()),
            other => {
                if let Some(tx) = &w.claim {
                    tx.send_replace(Claim::Lost {
                        slot: slot.into(),
                        holder: other.clone(),
                        reason: "taken".into(),
                    });
                }
                Err(PortError::LostLease {
                    slot: slot.into(),
                    holder: other.clone().unwrap_or_else(|| "nobody".into()),
                })
            }
        }
    }
    async fn release(&self, _slot: &str) -> Result<(), PortError> {
        let mut w = self.0.lock().unwrap();
        if w.lease_holder.as_deref() == Some("n1") {
            w.lease_holder = None;
        }
        w.claim = None;
        Ok(())
    }
    async fn wait_for_lease_change(&self, _timeout: Duration) {}
    async fn node_unschedulable(&self) -> Result<bool, PortError> {
        Ok(self.0.lock().unwrap().unschedulable)
    }
    async fn set_unschedulable(&self, value: bool) -> Result<(), PortError> {
        self.0.lock().unwrap().unschedulable = value;
        Ok(())
    }
    async fn drain(
        &self,
        progress: tokio::sync::watch::Sender<usize>,
        _claim: ClaimWatch,
    ) -> Result<DrainResult, PortError> {
        let _ = progress.send(0);
        // A long drain: only the driver's guard (or a shutdown) ends it.
        while self.0.lock().unwrap().drain_blocked {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(why) = self.0.lock().unwrap().drain_refused.clone() {
            return Err(PortError::permanent("draining", why));
        }
        if self.0.lock().unwrap().drain_times_out {
            Ok(DrainResult::TimedOut(Box::new(DrainTimeout {
                node: "n1".into(),
                timeout: Duration::from_secs(1),
                blocked: vec![BlockedPod {
                    pod: PodRef {
                        namespace: "default".into(),
                        name: "db-0".into(),
                        uid: "u".into(),
                    },
                    reason: BlockReason::Terminating,
                }],
                partial: DrainReport::default(),
            })))
        } else {
            Ok(DrainResult::Drained(DrainReport::default()))
        }
    }
    async fn verify_node(&self, _booted_at: Timestamp, _boot_id: &str) -> Result<(), String> {
        if self.0.lock().unwrap().healthy_after_boot {
            Ok(())
        } else {
            Err("node not Ready".into())
        }
    }
    async fn halt_fleet(&self, halt: &Halt) -> Result<(), PortError> {
        if self.0.lock().unwrap().halt_fails {
            return Err(PortError::failed("patching the drydock Namespace", "503"));
        }
        self.0.lock().unwrap().halted = Some(format!("{} {}", halt.node, halt.reason));
        Ok(())
    }
    async fn clear_halt(&self) -> Result<bool, PortError> {
        Ok(self.0.lock().unwrap().halted.take().is_some())
    }
    async fn record_reboot_finished(&self, _at: Timestamp) -> Result<(), PortError> {
        let mut w = self.0.lock().unwrap();
        w.finished += 1;
        w.need.clear();
        Ok(())
    }
}

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Reporter for Lines {
    fn status(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
    fn event(&self, _node: &str, _event: &AgentEvent) {}
}

fn settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.node.state_db = dir.join("state.db");
    s.verify.timeout = Duration::from_millis(300);
    s.reboot.check_interval = Duration::from_millis(50);
    s.lease.duration = Duration::from_secs(3);
    s
}

fn world() -> Fake {
    Fake(Arc::new(Mutex::new(World {
        boot_id: "boot-1".into(),
        need: vec!["kernel 6.1.0-30 installed".into()],
        healthy_after_boot: true,
        ..World::default()
    })))
}

fn agent(dir: &std::path::Path, w: &Fake) -> Agent<Fake, Fake, Lines> {
    agent_with(w, settings(dir))
}

/// The "machine" reboots: a new boot_id, as after a real restart.
fn complete_reboot(w: &Fake) {
    let mut g = w.0.lock().unwrap();
    if g.reboot_pending {
        g.reboot_pending = false;
        g.boot_id = format!("boot-{}", g.reboots + 1);
        g.booted_at = Some(Timestamp::now());
        // The keeper died with the machine.
        g.claim = None;
    }
}

/// Ticks until idle again or `max` steps; reboots happen between agents.
async fn run_to_rest(dir: &std::path::Path, w: &Fake, max: usize) -> AgentState {
    let mut a = agent(dir, w);
    for _ in 0..max {
        if a.state().name() == "verifying" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        a.tick().await.unwrap();
        if w.0.lock().unwrap().reboot_pending {
            complete_reboot(w);
            a = agent(dir, w);
        }
        if matches!(a.state(), AgentState::Idle | AgentState::Failed { .. })
            && w.0.lock().unwrap().finished > 0
        {
            break;
        }
        if matches!(a.state(), AgentState::Failed { .. }) {
            break;
        }
    }
    a.state().clone()
}

#[tokio::test]
async fn full_cycle_reboots_once_and_restores_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    let end = run_to_rest(dir.path(), &w, 50).await;
    let g = w.0.lock().unwrap();
    assert_eq!(end, AgentState::Idle);
    assert_eq!(g.reboots, 1);
    assert!(!g.unschedulable);
    assert_eq!(g.lease_holder, None);
    assert_eq!(g.finished, 1);
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let reboots = store.history(&["reboot"], 10).unwrap();
    assert_eq!(reboots.len(), 1);
    let states: Vec<String> = store
        .history(&["state"], 100)
        .unwrap()
        .iter()
        .map(|h| h.detail["to"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        states,
        [
            "pending",
            "locked",
            "cordoning",
            "draining",
            "rebooting",
            // The reboot request, persisted before it was made.
            "rebooting",
            "verifying",
            "releasing",
            "idle"
        ]
    );
}

#[tokio::test]
async fn admin_cordon_survives_the_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().unschedulable = true;
    assert_eq!(run_to_rest(dir.path(), &w, 50).await, AgentState::Idle);
    assert!(w.0.lock().unwrap().unschedulable, "admin's cordon kept");
}

#[tokio::test]
async fn blocked_gate_means_no_lease_and_no_cordon() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().gate_block = Some("alert NodeDiskPressure firing".into());
    let mut a = agent(dir.path(), &w);
    for _ in 0..5 {
        // Having given a slot back, it does not wake on Lease changes.
        assert!(matches!(
            a.tick().await.unwrap(),
            super::driver::Wait::For(_)
        ));
    }
    assert_eq!(a.state().name(), "pending");
    let g = w.0.lock().unwrap();
    assert_eq!(g.lease_holder, None);
    assert!(!g.unschedulable);
    // Asked holding the slot, given back each time before anything.
    assert_eq!(g.looked_holding, [true; 5]);
    let status = a
        .store()
        .get::<super::driver::StatusRecord>(keys::LAST_STATUS)
        .unwrap()
        .unwrap();
    assert_eq!(status.line, "waiting: alert NodeDiskPressure firing");
}

#[tokio::test]
async fn busy_lease_waits() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().lease_holder = Some("n2".into());
    let mut a = agent(dir.path(), &w);
    for _ in 0..3 {
        a.tick().await.unwrap();
    }
    assert_eq!(a.state().name(), "pending");
    assert!(!w.0.lock().unwrap().unschedulable);
}

#[tokio::test]
async fn drain_timeout_restores_node_and_releases() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().drain_times_out = true;
    let mut a = agent(dir.path(), &w);
    for _ in 0..6 {
        a.tick().await.unwrap();
        if let AgentState::Pending {
            retry_after: Some(_),
            ..
        } = a.state()
        {
            break;
        }
    }
    assert!(
        matches!(
            a.state(),
            AgentState::Pending {
                retry_after: Some(_),
                ..
            }
        ),
        "{:?}",
        a.state()
    );
    let g = w.0.lock().unwrap();
    assert!(!g.unschedulable);
    assert_eq!(g.lease_holder, None);
    assert_eq!(g.reboots, 0);
    assert_eq!(a.store().history(&["drain-failed"], 10).unwrap().len(), 1);
}

#[tokio::test]
async fn a_halt_the_api_refused_is_owed_until_the_cluster_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    {
        let mut g = w.0.lock().unwrap();
        g.healthy_after_boot = false;
        g.halt_fails = true;
    }
    let end = run_to_rest(dir.path(), &w, 200).await;
    assert!(matches!(end, AgentState::Failed { .. }), "{end:?}");
    assert_eq!(w.0.lock().unwrap().halted, None);
    // Owed across a restart, and retried while the API still refuses.
    let mut a = agent(dir.path(), &w);
    assert!(a.store().read(keys::PENDING_HALT).unwrap().is_some());
    a.tick().await.unwrap();
    assert_eq!(w.0.lock().unwrap().halted, None);
    let status = a.store().read(keys::LAST_STATUS).unwrap().unwrap();
    assert!(
        status.line.contains("fleet halt is not set yet"),
        "{}",
        status.line
    );
    // The API is back: the halt lands once, and nothing is owed any more.
    w.0.lock().unwrap().halt_fails = false;
    a.tick().await.unwrap();
    assert!(
        w.0.lock()
            .unwrap()
            .halted
            .as_deref()
            .is_some_and(|h| h.contains("n1 failed verification"))
    );
    assert_eq!(a.store().read(keys::PENDING_HALT).unwrap(), None);
    assert!(matches!(a.state(), AgentState::Failed { .. }));
}

#[tokio::test]
async fn verify_failure_halts_keeps_lease_and_cordon_then_resume_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().healthy_after_boot = false;
    let end = run_to_rest(dir.path(), &w, 200).await;
    assert!(
        matches!(
            end,
            AgentState::Failed {
                step: Step::Verify,
                ..
            }
        ),
        "{end:?}"
    );
    {
        let g = w.0.lock().unwrap();
        assert_eq!(g.lease_holder.as_deref(), Some("n1"));
        assert!(g.unschedulable);
        assert!(
            g.halted
                .as_deref()
                .unwrap()
                .contains("n1 failed verification")
        );
        assert_eq!(g.reboots, 1);
    }
    // A person fixes the node and resumes.
    w.0.lock().unwrap().healthy_after_boot = true;
    let mut a = agent(dir.path(), &w);
    a.store()
        .set(keys::RESUME_REQUESTED, &Timestamp::now())
        .unwrap();
    for _ in 0..10 {
        a.tick().await.unwrap();
        if matches!(a.state(), AgentState::Idle) {
            break;
        }
    }
    let g = w.0.lock().unwrap();
    assert_eq!(*a.state(), AgentState::Idle);
    assert_eq!(
        (g.reboots, g.halted.is_none(), g.unschedulable),
        (1, true, false)
    );
}

#[tokio::test]
async fn refused_reboot_fails_clearly_keeping_cordon_and_lease() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().refuse_reboot = true;
    let end = run_to_rest(dir.path(), &w, 20).await;
    let AgentState::Failed { step, error, .. } = end else {
        panic!("{end:?}")
    };
    assert_eq!(step, Step::Reboot);
    assert!(error.contains("AccessDenied"));
    let g = w.0.lock().unwrap();
    assert!(g.unschedulable && g.lease_holder.as_deref() == Some("n1"));
}

/// Kill the agent right after each persisted state, restart it from the
/// store, and check the invariants at the end.
#[tokio::test]
async fn crash_after_every_persisted_step_resumes_safely() {
    for (crash_at, admin_cordoned) in AgentState::ALL_NAMES
        .iter()
        .filter(|n| **n != "failed")
        .flat_map(|n| [(*n, false), (*n, true)])
    {
        let dir = tempfile::tempdir().unwrap();
        let w = world();
        w.0.lock().unwrap().unschedulable = admin_cordoned;
        let crashed = Arc::new(Mutex::new(false));
        let flag = crashed.clone();
        let mut a = agent(dir.path(), &w).with_failpoint(Arc::new(move |to| {
            let mut done = flag.lock().unwrap();
            if to == crash_at && !*done {
                *done = true;
                return true;
            }
            false
        }));
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 100, "{crash_at}: no progress");
            match a.tick().await {
                Ok(_) => {}
                Err(AgentError::Failpoint(_)) => {
                    // kill -9: the process is gone; a new one starts from the store.
                    a = agent(dir.path(), &w);
                }
                Err(e) => panic!("{e}"),
            }
            if w.0.lock().unwrap().reboot_pending {
                complete_reboot(&w);
                a = agent(dir.path(), &w);
            }
            let g = w.0.lock().unwrap();
            // Never cordoned by drydock with nobody holding the lease.
            if g.unschedulable && !admin_cordoned {
                assert_eq!(
                    g.lease_holder.as_deref(),
                    Some("n1"),
                    "{crash_at}: cordoned without lease"
                );
            }
            if g.finished > 0 && matches!(a.state(), AgentState::Idle) {
                break;
            }
        }
        let g = w.0.lock().unwrap();
        assert_eq!(g.reboots, 1, "{crash_at}: rebooted exactly once");
        assert_eq!(
            g.unschedulable, admin_cordoned,
            "{crash_at}: cordon restored as found"
        );
        assert_eq!(g.lease_holder, None, "{crash_at}: lease released");
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(
            store.history(&["reboot"], 10).unwrap().len(),
            1,
            "{crash_at}: history kept"
        );
    }
}

fn agent_with(w: &Fake, s: Settings) -> Agent<Fake, Fake, Lines> {
    let store = Store::open(&s.node.state_db).unwrap();
    Agent::new(
        "n1".into(),
        s,
        store,
        w.clone(),
        w.clone(),
        Lines::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn idle_node_makes_no_api_request() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().need.clear();
    let mut a = agent(dir.path(), &w);
    for _ in 0..5 {
        assert_eq!(
            a.tick().await.unwrap(),
            super::driver::Wait::For(Duration::from_millis(50))
        );
    }
    assert_eq!(a.state().name(), "idle");
    let g = w.0.lock().unwrap();
    assert_eq!((g.lease_reads, g.gate_evaluations), (0, 0));
}

#[tokio::test]
async fn leftover_slot_is_still_given_back_when_the_need_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().gate_block = Some("paused".into());
    let mut a = agent(dir.path(), &w);
    a.tick().await.unwrap();
    assert_eq!(a.state().name(), "pending");
    // A crash after acquiring, before Locked was persisted; then the need
    // went away (someone rebooted the machine by hand).
    {
        let mut g = w.0.lock().unwrap();
        g.lease_holder = Some("n1".into());
        g.need.clear();
    }
    a.tick().await.unwrap();
    assert_eq!(a.state().name(), "idle");
    assert_eq!(w.0.lock().unwrap().lease_holder, None);
}

#[tokio::test]
async fn busy_lease_costs_one_lease_read_and_no_gate_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().lease_holder = Some("n2".into());
    let mut a = agent(dir.path(), &w);
    for _ in 0..3 {
        assert!(matches!(
            a.tick().await.unwrap(),
            super::driver::Wait::LeaseChange(_)
        ));
    }
    let g = w.0.lock().unwrap();
    assert_eq!((g.lease_reads, g.gate_evaluations), (3, 0));
}

#[tokio::test]
async fn soak_with_a_known_end_waits_until_it_not_thirty_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    let mut s = settings(dir.path());
    s.reboot.check_interval = Duration::from_secs(10);
    {
        let mut g = w.0.lock().unwrap();
        g.control_block = Some("soak ends in 3s".into());
        g.gate_block_until = Some(Timestamp::now() + jiff::SignedDuration::from_secs(3));
    }
    let mut a = agent_with(&w, s);
    match a.tick().await.unwrap() {
        // Until the end (less the <= 1 s herd jitter already slept), plus
        // at most check-interval / 5 of spread.
        super::driver::Wait::LeaseChange(d) => assert!(
            d >= Duration::from_millis(1900) && d < Duration::from_secs(5),
            "{d:?}"
        ),
        other => panic!("{other:?}"),
    }
    // A block with no known end: a long, jittered re-check (5..10 s here).
    w.0.lock().unwrap().gate_block_until = None;
    match a.tick().await.unwrap() {
        super::driver::Wait::LeaseChange(d) => assert!(
            d >= Duration::from_secs(5) && d <= Duration::from_secs(10),
            "{d:?}"
        ),
        other => panic!("{other:?}"),
    }
    let g = w.0.lock().unwrap();
    // The Namespace alone said so: no slot taken, no expensive look.
    assert_eq!(g.lease_holder, None);
    assert!(g.acquires.is_empty());
    assert_eq!((g.control_looks, g.gate_evaluations), (2, 0));
}

#[tokio::test]
async fn free_slot_is_taken_after_the_namespace_gates_and_every_gate_asked_holding_it() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    let mut a = agent(dir.path(), &w);
    assert_eq!(a.tick().await.unwrap(), super::driver::Wait::No);
    assert_eq!(a.state().name(), "locked");
    let g = w.0.lock().unwrap();
    // The Lease before the jitter and after it; the Namespace's gates;
    // a free slot taken (not an expired one); every gate once, holding it.
    assert_eq!(
        (g.lease_reads, g.control_looks, g.gate_evaluations),
        (2, 1, 1)
    );
    assert_eq!(g.acquires, [false]);
    assert_eq!(g.looked_holding, [true]);
}

/// The start-up herd: every daemon finds the slot free at once. Those that
/// lose the race for it stop at the Lease, without the expensive look.
#[tokio::test]
async fn losing_the_race_for_a_free_slot_costs_no_expensive_look() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().race_lost_to = Some("n2".into());
    let mut a = agent(dir.path(), &w);
    assert!(matches!(
        a.tick().await.unwrap(),
        super::driver::Wait::LeaseChange(_)
    ));
    assert_eq!(a.state().name(), "pending");
    let g = w.0.lock().unwrap();
    assert_eq!(g.gate_evaluations, 0);
    assert_eq!(g.acquires, [false]);
    assert_eq!(g.lease_holder.as_deref(), Some("n2"));
    assert!(!g.unschedulable);
}

#[tokio::test]
async fn a_halted_fleet_never_touches_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().halted = Some("n7 failed verification".into());
    let mut a = agent(dir.path(), &w);
    for _ in 0..3 {
        assert!(matches!(
            a.tick().await.unwrap(),
            super::driver::Wait::LeaseChange(_)
        ));
    }
    let g = w.0.lock().unwrap();
    assert!(g.acquires.is_empty());
    assert_eq!((g.control_looks, g.gate_evaluations), (3, 0));
    assert_eq!(g.lease_holder, None);
}

/// An expired slot whose holder's Node still exists (it may be down and
/// broken) is taken over only after every gate passed, then they are
/// asked again holding it; while they block it stays as it is.
#[tokio::test]
async fn an_expired_slot_is_taken_over_only_after_every_gate_passed() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    {
        let mut g = w.0.lock().unwrap();
        g.lease_holder = Some("n2".into());
        g.lease_expired = true;
        g.gate_block = Some("node n2 NotReady for 10m".into());
    }
    let mut a = agent(dir.path(), &w);
    a.tick().await.unwrap();
    {
        let g = w.0.lock().unwrap();
        assert_eq!(a.state().name(), "pending");
        assert_eq!(g.lease_holder.as_deref(), Some("n2"), "not taken over");
        assert_eq!(g.acquires, [false]);
        assert_eq!(g.looked_holding, [false]);
    }
    w.0.lock().unwrap().gate_block = None;
    assert_eq!(a.tick().await.unwrap(), super::driver::Wait::No);
    assert_eq!(a.state().name(), "locked");
    let g = w.0.lock().unwrap();
    assert_eq!(g.lease_holder.as_deref(), Some("n1"));
    assert_eq!(g.acquires, [false, false, true]);
    assert_eq!(g.looked_holding, [false, false, true]);
}

/// logind accepted, yet the machine came back to the same boot (the
/// process restarted without a reboot): never a second request on its own.
#[tokio::test]
async fn a_reboot_that_did_not_happen_fails_instead_of_asking_again() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    let mut a = agent(dir.path(), &w);
    for _ in 0..20 {
        a.tick().await.unwrap();
        if w.0.lock().unwrap().reboot_pending {
            break;
        }
    }
    assert_eq!(w.0.lock().unwrap().reboots, 1);
    // The same process waits for the machine to go down.
    a.tick().await.unwrap();
    assert_eq!(a.state().name(), "rebooting");
    // A new process, same boot: the request did not work.
    w.0.lock().unwrap().reboot_pending = false;
    let mut a = agent(dir.path(), &w);
    for _ in 0..3 {
        a.tick().await.unwrap();
    }
    let AgentState::Failed {
        step,
        error,
        slot_held,
        ..
    } = a.state().clone()
    else {
        panic!("{:?}", a.state())
    };
    assert_eq!(step, Step::Reboot);
    assert!(error.contains("still boot boot-1"), "{error}");
    assert!(error.contains("not asking again"), "{error}");
    assert!(slot_held);
    assert_eq!(w.0.lock().unwrap().reboots, 1, "asked once");
    // A person says go: one more request.
    a.store()
        .set(keys::RESUME_REQUESTED, &Timestamp::now())
        .unwrap();
    for _ in 0..3 {
        a.tick().await.unwrap();
    }
    assert_eq!(w.0.lock().unwrap().reboots, 2);
}

/// The boot_id says "same boot" but the boot time moved: the signals
/// disagree, so no reboot is assumed and none is requested again.
#[tokio::test]
async fn an_unclear_boot_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    let mut a = agent(dir.path(), &w);
    for _ in 0..20 {
        a.tick().await.unwrap();
        if w.0.lock().unwrap().reboot_pending {
            break;
        }
    }
    {
        let mut g = w.0.lock().unwrap();
        g.reboot_pending = false;
        g.booted_at = Some(Timestamp::now() + jiff::SignedDuration::from_secs(60));
    }
    let mut a = agent(dir.path(), &w);
    a.tick().await.unwrap();
    let AgentState::Failed { error, .. } = a.state().clone() else {
        panic!("{:?}", a.state())
    };
    assert!(
        error.contains("cannot tell whether the machine rebooted"),
        "{error}"
    );
    assert!(error.contains("boot_id boot-1 is unchanged"), "{error}");
    assert_eq!(w.0.lock().unwrap().reboots, 1);
}

/// A resume written before the failure it would answer is dropped.
#[tokio::test]
async fn a_resume_from_before_the_failure_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().refuse_reboot = true;
    let mut a = agent(dir.path(), &w);
    a.store()
        .set(keys::RESUME_REQUESTED, &Timestamp::now())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for _ in 0..10 {
        a.tick().await.unwrap();
    }
    assert_eq!(a.state().name(), "failed");
    assert!(
        a.store()
            .get::<serde_json::Value>(keys::RESUME_REQUESTED)
            .unwrap()
            .is_none()
    );
    assert_eq!(a.store().history(&["stale-request"], 10).unwrap().len(), 1);
}

/// A lost claim stops a drain that is under way, at once.
#[tokio::test]
async fn a_lost_claim_stops_a_running_drain() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().drain_blocked = true;
    let mut a = agent(dir.path(), &w);
    for _ in 0..10 {
        a.tick().await.unwrap();
        if a.state().name() == "draining" {
            break;
        }
    }
    assert_eq!(a.state().name(), "draining");
    let w2 = w.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let g = w2.0.lock().unwrap();
        if let Some(tx) = &g.claim {
            tx.send_replace(Claim::Lost {
                slot: "slot-0".into(),
                holder: Some("n2".into()),
                reason: "taken".into(),
            });
        }
    });
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(2), a.tick())
        .await
        .expect("the drain stopped")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    // Before the reboot: the node is put back and waits like any other.
    assert!(
        matches!(a.state(), AgentState::Pending { resume: None, .. }),
        "{:?}",
        a.state()
    );
    let g = w.0.lock().unwrap();
    assert!(!g.unschedulable, "uncordoned");
    assert_eq!(g.reboots, 0);
    drop(g);
    let lost = a.store().history(&["lease-lost"], 10).unwrap();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].detail["state"], "draining");
    assert_eq!(lost[0].detail["uncordoned"], true);
}

/// A permanent drain failure stops for a person; it is not retried forever.
#[tokio::test]
async fn a_permanent_drain_failure_goes_to_failed() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    w.0.lock().unwrap().drain_refused = Some("evicting pod default/x: 403 forbidden".into());
    let end = run_to_rest(dir.path(), &w, 20).await;
    let AgentState::Failed { step, error, .. } = end else {
        panic!("{end:?}")
    };
    assert_eq!(step, Step::Drain);
    assert!(error.contains("default/x: 403 forbidden"), "{error}");
    let g = w.0.lock().unwrap();
    assert!(g.unschedulable && g.lease_holder.as_deref() == Some("n1"));
}
