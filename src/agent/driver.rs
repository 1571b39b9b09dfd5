//! The loop that drives one node's [`AgentState`]: observe, decide, act,
//! persist. Each call to [`Agent::tick`] does one step and says how long to
//! wait before the next; the step for every state is safe to repeat.
//!
//! A shutdown or reload cuts a step short wherever it is (every step is
//! persisted before it acts, and repeatable): [`Agent::run`] races the
//! step against the signal and re-reads the persisted state afterwards.
//! The Lease slot is held by a keeper that renews it in the background;
//! long steps (the drain) stop the moment the claim is gone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::pace;
use super::ports::{
    AgentEvent, BootChange, BootMark, Claim, ClaimWatch, Cluster, DrainResult, GateStatus, Halt,
    Host, LeaseOutlook, PortError, Reporter,
};
use super::state::{AgentState, Cordon, Cycle, Event, SlotLoss, TransitionError};
use super::turn::{self, Approach, BlockedWait};
use crate::config::Settings;
use crate::logging::msgid;
use crate::store::{Store, StoreError};

mod upgrade;
#[cfg(test)]
pub(crate) use upgrade::UPGRADE_REASON;

/// kv keys the CLI writes and the agent reads (and the reverse), each
/// with its value type; the names live in [`crate::store::keys`].
pub mod keys {
    pub use crate::store::keys::FORCE_RELEASE;
    pub use crate::store::keys::RESUME_REQUESTED;
    use crate::store::keys::{
        AGENT_GATES, AGENT_PENDING_HALT, AGENT_REBOOT_NEED, AGENT_STATUS, Key,
    };

    pub const LAST_STATUS: Key<super::StatusRecord> = Key::new(AGENT_STATUS);
    pub const LAST_GATES: Key<super::GatesRecord> = Key::new(AGENT_GATES);
    pub const REBOOT_NEED: Key<super::RebootNeedRecord> = Key::new(AGENT_REBOOT_NEED);
    pub const PENDING_HALT: Key<super::super::ports::Halt> = Key::new(AGENT_PENDING_HALT);
}

/// How long a reboot logind accepted may take to bring this process down
/// before the request is declared not to have worked.
pub(crate) const REBOOT_GRACE: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("persisting agent state: {0}")]
    Store(#[from] StoreError),
    /// A bug: the driver produced an event the state does not take.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("a store write did not finish: {0}")]
    Join(String),
    /// A failpoint stopped the agent right after a persisted step (tests).
    #[cfg(any(test, feature = "failpoints"))]
    #[error("stopped by failpoint after entering {0}")]
    Failpoint(&'static str),
}

/// What the loop should wait for before the next tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// Go on at once.
    No,
    /// Sleep, but wake early on a nudge (APT hook, CLI).
    For(Duration),
    /// Wait for a Lease change, at most this long.
    LeaseChange(Duration),
}

/// What `drydock status` shows when the daemon is not there to ask.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusRecord {
    pub line: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GatesRecord {
    pub gates: Vec<GateStatus>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RebootNeedRecord {
    pub reasons: Vec<String>,
    pub since: Option<Timestamp>,
    pub checked_at: Timestamp,
}

/// Called after every persisted transition with the new state's name;
/// returning true stops the agent there, as a crash would. Only in test
/// builds (the `failpoints` feature for integration tests), never the .deb.
#[cfg(any(test, feature = "failpoints"))]
pub type Failpoint = Arc<dyn Fn(&'static str) -> bool + Send + Sync>;

pub struct Agent<H, C, R> {
    pub node: String,
    settings: Settings,
    store: Arc<Mutex<Store>>,
    /// Store writes started and not yet finished (a cut step waits for them).
    writes: Arc<AtomicUsize>,
    host: H,
    cluster: C,
    reporter: R,
    state: AgentState,
    last_status: String,
    wake: Arc<Notify>,
    #[cfg(any(test, feature = "failpoints"))]
    failpoint: Option<Failpoint>,
    /// When this process asked for the reboot (the persisted request says
    /// whether one was asked for at all).
    reboot_requested_here: Option<Timestamp>,
    /// The claim on the slot the state holds, from the keeper.
    claim: Option<ClaimWatch>,
    /// The last refused upgrade target's reason (reported once).
    last_refusal: Option<String>,
    /// The slot whose loss was already told (its uncordon may be retried).
    loss_told: Option<String>,
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// An operator request read from the store: its time, or why it is unusable.
fn request_time(value: &serde_json::Value) -> Option<Timestamp> {
    serde_json::from_value::<Timestamp>(value.clone()).ok()
}

impl<H: Host, C: Cluster, R: Reporter> Agent<H, C, R> {
    /// Loads the persisted state (or starts Idle) and is ready to resume.
    pub fn new(
        node: String,
        settings: Settings,
        store: Store,
        host: H,
        cluster: C,
        reporter: R,
    ) -> Result<Self, AgentError> {
        let state = store
            .current_state::<AgentState>()?
            .map(|(s, _)| s)
            .unwrap_or(AgentState::Idle);
        info!(node = %node, state = state.name(), "agent starting from its persisted state {}", state.name());
        Ok(Agent {
            node,
            settings,
            store: Arc::new(Mutex::new(store)),
            writes: Arc::new(AtomicUsize::new(0)),
            host,
            cluster,
            reporter,
            state,
            last_status: String::new(),
            wake: Arc::new(Notify::new()),
            #[cfg(any(test, feature = "failpoints"))]
            failpoint: None,
            reboot_requested_here: None,
            claim: None,
            last_refusal: None,
            loss_told: None,
        })
    }

    #[cfg(any(test, feature = "failpoints"))]
    pub fn with_failpoint(mut self, failpoint: Failpoint) -> Self {
        self.failpoint = Some(failpoint);
        self
    }

    /// New settings (a configuration reload) and the ports built from them.
    /// The state, and whether a reboot was already requested in this
    /// process, carry over: a reload never repeats a step.
    pub(crate) fn reconfigure(&mut self, settings: Settings, host: H, cluster: C) {
        self.settings = settings;
        self.host = host;
        self.cluster = cluster;
        // The new cluster port keeps the slot with a keeper of its own.
        self.claim = None;
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handle that wakes the loop early (the APT hook's nudge, CLI requests).
    pub(crate) fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until `shutdown` resolves or a step returns an error. The
    /// signal takes effect at once, in any state: the running step is cut
    /// short (it is repeatable), and the persisted state is read back.
    pub async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        loop {
            let ticked = tokio::select! {
                biased;
                _ = &mut shutdown => None,
                w = self.tick() => Some(w),
            };
            let wait = match ticked {
                Some(w) => w?,
                None => {
                    self.after_cut().await?;
                    return Ok(());
                }
            };
            self.reporter.heartbeat();
            let wake = self.wake.clone();
            match wait {
                Wait::No => continue,
                Wait::For(d) => tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = wake.notified() => {}
                    _ = &mut shutdown => return Ok(()),
                },
                Wait::LeaseChange(d) => tokio::select! {
                    _ = self.cluster.wait_for_lease_change(d) => {}
                    _ = wake.notified() => {}
                    _ = &mut shutdown => return Ok(()),
                },
            }
        }
    }

    /// After a step was cut short: let store writes in flight land, then
    /// take the persisted state as the truth.
    async fn after_cut(&mut self) -> Result<(), AgentError> {
        while self.writes.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let persisted = self.store().current_state::<AgentState>()?;
        if let Some((s, _)) = persisted {
            self.state = s;
        }
        info!(node = %self.node, state = self.state.name(), "step cut short by a signal; state as persisted");
        Ok(())
    }

    /// Runs a store write off the async threads.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let store = self.store.clone();
        let writes = self.writes.clone();
        writes.fetch_add(1, Ordering::SeqCst);
        let handle = tokio::task::spawn_blocking(move || {
            let result = f(&mut store.lock().unwrap_or_else(|p| p.into_inner()));
            writes.fetch_sub(1, Ordering::SeqCst);
            result
        });
        handle
            .await
            .map_err(|e| AgentError::Join(e.to_string()))?
            .map_err(AgentError::from)
    }

    async fn status(&mut self, line: String) -> Result<(), AgentError> {
        if line != self.last_status {
            info!(message_id = msgid::STATUS, node = %self.node, state = self.state.name(), status = %line, "{line}");
            self.reporter.status(&line);
            let record = StatusRecord {
                line: line.clone(),
                at: Timestamp::now(),
            };
            self.write(move |s| s.write(keys::LAST_STATUS, &record))
                .await?;
            self.last_status = line;
        }
        Ok(())
    }

    fn event(&self, event: AgentEvent) {
        self.reporter.event(&self.node, &event);
    }

    /// Applies `event` to the state, persists the result (with its history
    /// line) and reports it. An illegal pair is an error, never ignored.
    async fn transition(
        &mut self,
        event: Event,
        detail: serde_json::Value,
    ) -> Result<(), AgentError> {
        let next = self.state.apply(event)?;
        self.enter(next, detail).await
    }

    async fn enter(
        &mut self,
        next: AgentState,
        detail: serde_json::Value,
    ) -> Result<(), AgentError> {
        if next == self.state {
            return Ok(());
        }
        let before = self.state.phase();
        let from = self.state.name();
        let to = next.name();
        let mut detail = detail;
        if let serde_json::Value::Object(map) = &mut detail {
            map.insert("node".into(), self.node.clone().into());
            map.insert("from".into(), from.into());
            map.insert("to".into(), to.into());
        }
        let persisted = next.clone();
        self.write(move |s| s.transition(&persisted, "state", &detail))
            .await?;
        info!(message_id = msgid::STATE_CHANGED, node = %self.node, from, to, "state {from} -> {to}");
        if next.held_slot() != self.state.held_slot() {
            self.claim = None;
        }
        self.state = next;
        self.event(AgentEvent::StateChanged {
            from: before,
            to: self.state.phase(),
        });
        #[cfg(any(test, feature = "failpoints"))]
        if let Some(fp) = &self.failpoint
            && fp(to)
        {
            return Err(AgentError::Failpoint(to));
        }
        Ok(())
    }

    async fn record_gates(&self, gates: &[GateStatus]) -> Result<(), AgentError> {
        self.reporter.gates(gates);
        let record = GatesRecord {
            gates: gates.to_vec(),
            at: Timestamp::now(),
        };
        self.write(move |s| s.write(keys::LAST_GATES, &record))
            .await
    }

    fn short_retry(&self) -> Duration {
        self.settings
            .reboot
            .check_interval
            .min(Duration::from_secs(30))
    }

    /// How often a waiting holder looks again.
    fn renew_every(&self) -> Duration {
        (self.settings.lease.duration / 3).max(Duration::from_millis(200))
    }

    /// One step. Errors from the world are handled here (the state says
    /// what to retry); only store failures, illegal transitions and
    /// failpoints escape.
    pub async fn tick(&mut self) -> Result<Wait, AgentError> {
        let now = Timestamp::now();
        match self.state.clone() {
            AgentState::Idle | AgentState::Pending { .. } => self.wait_for_turn(now).await,
            AgentState::Locked { cycle } => {
                if let Some(wait) = self.guard_slot(false).await? {
                    return Ok(wait);
                }
                if let Some(wait) = self.plan_upgrade(&cycle).await? {
                    return Ok(wait);
                }
                match self.cluster.node_unschedulable().await {
                    Ok(already) => {
                        self.transition(
                            Event::PriorSchedulability {
                                unschedulable: already,
                            },
                            serde_json::json!({"admin-cordoned": already}),
                        )
                        .await?;
                        Ok(Wait::No)
                    }
                    Err(e) => self.trouble("reading this node", e).await,
                }
            }
            AgentState::Cordoning { .. } => {
                if let Some(wait) = self.guard_slot(true).await? {
                    return Ok(wait);
                }
                match self.cluster.set_unschedulable(true).await {
                    Ok(()) => {
                        self.transition(
                            Event::Cordoned {
                                now: Timestamp::now(),
                            },
                            serde_json::json!({}),
                        )
                        .await?;
                        Ok(Wait::No)
                    }
                    Err(e) => self.trouble("cordoning", e).await,
                }
            }
            AgentState::Draining { cycle, cordon, .. } => self.drain(&cycle.slot, cordon).await,
            AgentState::Rebooting {
                cycle,
                boot_id,
                booted_at,
                requested_at,
                ..
            } => {
                let left = BootMark { boot_id, booted_at };
                self.reboot(&cycle, &left, requested_at).await
            }
            AgentState::Verifying {
                booted_at,
                deadline,
                ..
            } => self.verify(booted_at, deadline).await,
            AgentState::Releasing {
                cycle, durations, ..
            } => self.release_verified(&cycle, durations).await,
            AgentState::Failed { .. } => self.failed().await,
            AgentState::Upgrading { cycle, cordon, .. } => self.upgrading(cycle, cordon).await,
        }
    }

    /// A step's failure: a lost slot stops the node, a permanent failure
    /// goes to Failed for a person, anything else is retried.
    async fn trouble(&mut self, action: &str, error: PortError) -> Result<Wait, AgentError> {
        match error {
            PortError::LostLease { slot, holder } => self.lease_lost(&slot, holder).await,
            // Its text already says what was being done.
            e @ PortError::Permanent { .. } => {
                let error = e.to_string();
                let detail = serde_json::json!({"error": error, "while": action});
                self.fail(error, detail).await?;
                Ok(Wait::No)
            }
            e => self.retry_later(action, e).await,
        }
    }

    async fn fail(&mut self, error: String, detail: serde_json::Value) -> Result<(), AgentError> {
        warn!(message_id = msgid::STEP_STOPPED, node = %self.node, state = self.state.name(), error = %error, "{error}; stopping for a person (cordon and lease kept)");
        self.transition(
            Event::Failed {
                error,
                now: Timestamp::now(),
            },
            detail,
        )
        .await
    }

    async fn retry_later(&mut self, action: &str, error: PortError) -> Result<Wait, AgentError> {
        warn!(message_id = msgid::STEP_FAILED, node = %self.node, state = self.state.name(), action, error = %error, "{action} failed, will retry: {error}");
        self.status(format!(
            "{}: retrying, {action} failed: {error}",
            self.state.name()
        ))
        .await?;
        Ok(Wait::For(self.short_retry()))
    }

    /// The claim on the slot the state holds (from its keeper).
    async fn claim(&mut self) -> Result<Option<ClaimWatch>, PortError> {
        let Some(slot) = self.state.held_slot().map(str::to_string) else {
            return Ok(None);
        };
        if let Some(c) = &self.claim
            && c.borrow().slot() == slot
        {
            return Ok(Some(c.clone()));
        }
        let c = self.cluster.hold(&slot).await?;
        self.claim = Some(c.clone());
        Ok(Some(c))
    }

    /// Checks that the slot the state holds is still ours (`fresh`: by
    /// renewing it now, before a step that cannot be taken back). `Some`:
    /// it is not (the state moved on) or it could not be told (retry).
    async fn guard_slot(&mut self, fresh: bool) -> Result<Option<Wait>, AgentError> {
        match self.claim().await {
            Ok(Some(c)) => {
                let claim = c.borrow().clone();
                match claim {
                    Claim::Held { slot, .. } if fresh => match self.cluster.confirm(&slot).await {
                        Ok(()) => Ok(None),
                        Err(PortError::LostLease { slot, holder }) => {
                            Ok(Some(self.lease_lost(&slot, holder).await?))
                        }
                        Err(e) => Ok(Some(self.retry_later("renewing the lease", e).await?)),
                    },
                    Claim::Held { .. } => Ok(None),
                    lost @ Claim::Lost { .. } => {
                        Ok(Some(self.lease_lost(lost.slot(), lost.holder()).await?))
                    }
                }
            }
            Ok(None) => Ok(None),
            Err(PortError::LostLease { slot, holder }) => {
                Ok(Some(self.lease_lost(&slot, holder).await?))
            }
            Err(e) => Ok(Some(self.retry_later("holding the lease", e).await?)),
        }
    }

    /// The slot the state holds is gone. Before the reboot was asked for,
    /// the node is put back as it was (uncordoned if drydock cordoned it)
    /// and waits again; after it, it stays cordoned and must win a slot
    /// back before it goes on (see [`super::state::SlotLoss`]).
    async fn lease_lost(&mut self, slot: &str, holder: String) -> Result<Wait, AgentError> {
        self.claim = None;
        // Told once per loss, however often the uncordon below is retried.
        if self.loss_told.as_deref() != Some(slot) {
            warn!(message_id = msgid::LEASE_LOST, node = %self.node, slot, holder = %holder, state = self.state.name(), "lease {slot} lost to {holder}");
            if self.state.phase().out_of_service() {
                self.event(AgentEvent::LeaseLost {
                    slot: slot.to_string(),
                    holder: holder.clone(),
                });
            }
            self.loss_told = Some(slot.to_string());
        }
        let loss = self.state.slot_loss();
        if let Some(SlotLoss::Restore { uncordon: true }) = loss
            && let Err(e) = self.cluster.set_unschedulable(false).await
        {
            // Still in the old state, slot gone: the next tick finds the
            // loss again and retries; nothing else runs meanwhile.
            return self
                .retry_later("uncordoning after losing the lease", e)
                .await;
        }
        let next = match loss {
            Some(SlotLoss::Restore { .. }) => "waiting for a lease slot again",
            Some(SlotLoss::Regain) => "kept cordoned; waiting to win a lease slot back to finish",
            None => "stays as it is",
        };
        if loss.is_some() {
            let record = serde_json::json!({
                "node": self.node,
                "slot": slot,
                "holder": holder,
                "state": self.state.name(),
                "uncordoned": loss == Some(SlotLoss::Restore { uncordon: true }),
                "next": next,
            });
            self.write(move |s| s.append_history("lease-lost", &record).map(|_| ()))
                .await?;
        }
        self.transition(
            Event::LeaseLost {
                holder: holder.clone(),
                now: Timestamp::now(),
            },
            serde_json::json!({"lost-lease-to": holder, "slot": slot, "next": next}),
        )
        .await?;
        self.loss_told = None;
        Ok(Wait::No)
    }

    async fn wait_for_turn(&mut self, now: Timestamp) -> Result<Wait, AgentError> {
        let resuming = matches!(
            self.state,
            AgentState::Pending {
                resume: Some(_),
                ..
            }
        );
        let reasons = if resuming {
            // A resumed cycle goes on for its own reasons; the need check
            // (cleared by the reboot already done) does not end it.
            match &self.state {
                AgentState::Pending { reasons, .. } => reasons.clone(),
                _ => Vec::new(),
            }
        } else {
            let requested = crate::host::sentinel::reboot_request(&self.store())?;
            let reasons = match self.host.reboot_need(requested).await {
                Ok(mut r) => {
                    r.extend(self.upgrade_reason().await?);
                    r
                }
                Err(e) => {
                    return self
                        .retry_later("checking whether a reboot is needed", e)
                        .await;
                }
            };
            let since = match &self.state {
                AgentState::Pending { since, .. } => Some(*since),
                _ if reasons.is_empty() => None,
                _ => Some(now),
            };
            let record = RebootNeedRecord {
                reasons: reasons.clone(),
                since,
                checked_at: now,
            };
            self.write(move |s| s.write(keys::REBOOT_NEED, &record))
                .await?;
            reasons
        };
        if reasons.is_empty() && !resuming {
            // Our own slot, if a crash between acquiring and persisting Locked
            // left one, is given back. Only then (Pending): an idle node
            // makes no API request at all.
            if matches!(self.state, AgentState::Pending { .. })
                && let Ok(LeaseOutlook::Mine(slot)) = self.cluster.lease_outlook().await
            {
                let _ = self.cluster.release(&slot).await;
            }
            self.transition(Event::RebootNotNeeded, serde_json::json!({}))
                .await?;
            self.status("idle: no reboot needed".into()).await?;
            self.event(AgentEvent::UpToDate);
            return Ok(Wait::For(self.settings.reboot.check_interval));
        }
        if matches!(self.state, AgentState::Idle) {
            self.event(AgentEvent::RebootNeeded {
                reasons: reasons.clone(),
            });
        }
        let detail = serde_json::json!({"reasons": reasons});
        self.transition(Event::RebootNeeded { reasons, now }, detail)
            .await?;
        if let AgentState::Pending {
            retry_after: Some(after),
            ..
        } = self.state.clone()
            && after > now
        {
            self.status(format!(
                "waiting: last drain failed; retrying after {after}"
            ))
            .await?;
            return Ok(Wait::For(
                until(now, after).min(self.settings.reboot.check_interval),
            ));
        }
        if self.state.finishing_only() {
            return self.regain_slot().await;
        }
        let waiting = if resuming {
            "waiting to resume"
        } else {
            "waiting"
        };

        // Cheap first: local gates need no API call.
        let local = self.cluster.local_gates(&self.store(), now);
        if let Some(block) = GateStatus::first_block(&local) {
            let reason = block.reason.clone();
            self.record_gates(&local).await?;
            self.status(format!("{waiting}: {reason}")).await?;
            let wait = self
                .cluster
                .next_local_change(now)
                .map(|t| until(now, t))
                .unwrap_or(self.settings.reboot.check_interval);
            return Ok(Wait::For(wait.min(self.settings.reboot.check_interval)));
        }
        // Then the lease: only a node that could take a slot looks further,
        // and only one holding a slot asks the expensive gates (see `turn`).
        let mut outlook = match self.cluster.lease_outlook().await {
            Ok(o) => o,
            Err(e) => return self.retry_later("reading the lease", e).await,
        };
        if matches!(outlook, LeaseOutlook::Available | LeaseOutlook::Expired) {
            // Every waiter woke on the same release: spread them out, and
            // look again (cheap) so those after the winner stop here.
            let jitter =
                pace::herd_jitter(self.settings.reboot.check_interval, pace::random_fraction());
            tokio::time::sleep(jitter).await;
            outlook = match self.cluster.lease_outlook().await {
                Ok(o) => o,
                Err(e) => return self.retry_later("reading the lease", e).await,
            };
        }
        let mut lost_races = 0;
        loop {
            match turn::approach(&outlook, lost_races) {
                Approach::Wait => {
                    let holders = match &outlook {
                        LeaseOutlook::Busy { holders } => holders.join(", "),
                        _ => String::new(),
                    };
                    self.record_gates(&local).await?;
                    let line = if lost_races > 0 {
                        format!("{waiting}: another node took the lease first (held by {holders})")
                    } else {
                        format!("{waiting}: lease held by {holders}")
                    };
                    self.status(line).await?;
                    return Ok(Wait::LeaseChange(self.settings.reboot.check_interval));
                }
                Approach::LookHolding(_) | Approach::TakeThenLook => {
                    // The Namespace's gates first (one small GET): a halt, a
                    // pause, the soak or a shared verdict stops every waiter
                    // here without touching the Lease.
                    if let Some(control) = self.cluster.control_gates(Timestamp::now()).await {
                        let mut gates = local.clone();
                        gates.extend(control.gates);
                        self.record_gates(&gates).await?;
                        let reason = GateStatus::first_block(&gates)
                            .map(|b| b.reason.clone())
                            .unwrap_or_default();
                        self.status(format!("{waiting}: {reason}")).await?;
                        let mut gave_back = false;
                        if let LeaseOutlook::Mine(slot) = &outlook {
                            // A slot left from before a crash is not sat on while blocked.
                            let _ = self.cluster.release(slot).await;
                            gave_back = true;
                        }
                        return Ok(self.blocked(gave_back, control.blocked_until));
                    }
                    // Ours already: renewed (and kept) before the look.
                    match self.cluster.acquire(false).await {
                        Ok(Some(slot)) => return self.look_holding(slot, waiting, resuming).await,
                        Ok(None) => {}
                        Err(e) => return self.retry_later("acquiring the lease", e).await,
                    }
                    lost_races += 1;
                    outlook = match self.cluster.lease_outlook().await {
                        Ok(o) => o,
                        Err(e) => return self.retry_later("reading the lease", e).await,
                    };
                }
                Approach::LookThenTake => {
                    let mut gates = local.clone();
                    let cluster = self.cluster.cluster_gates(Timestamp::now()).await;
                    gates.extend(cluster.gates);
                    self.record_gates(&gates).await?;
                    if let Some(block) = GateStatus::first_block(&gates) {
                        self.status(format!("{waiting}: {}", block.reason)).await?;
                        return Ok(self.blocked(false, cluster.blocked_until));
                    }
                    let slot = match self.try_acquire(waiting, true).await? {
                        Ok(slot) => slot,
                        Err(wait) => return Ok(wait),
                    };
                    return self.look_holding(slot, waiting, resuming).await;
                }
            }
        }
    }

    /// Every gate, holding `slot`: the cycle starts only if they pass;
    /// otherwise the slot goes back before anything was touched.
    async fn look_holding(
        &mut self,
        slot: String,
        waiting: &str,
        resuming: bool,
    ) -> Result<Wait, AgentError> {
        let mut gates = self.cluster.local_gates(&self.store(), Timestamp::now());
        let cluster = self.cluster.cluster_gates(Timestamp::now()).await;
        gates.extend(cluster.gates);
        self.record_gates(&gates).await?;
        if let Some(block) = GateStatus::first_block(&gates) {
            let reason = block.reason.clone();
            if let Err(e) = self.cluster.release(&slot).await {
                warn!(node = %self.node, slot = %slot, error = %e, "releasing a blocked slot failed");
            }
            self.status(format!("{waiting}: {reason}")).await?;
            return Ok(self.blocked(true, cluster.blocked_until));
        }
        info!(message_id = msgid::LEASE_ACQUIRED, node = %self.node, slot = %slot, "lease slot {slot} acquired");
        let detail = serde_json::json!({"slot": slot, "resumed": resuming});
        self.took_slot(slot, detail).await
    }

    /// The wait after a blocking gate (see [`turn::blocked_wait`]).
    fn blocked(&self, gave_back_slot: bool, blocked_until: Option<Timestamp>) -> Wait {
        let wait = self.after_block(Timestamp::now(), blocked_until);
        match turn::blocked_wait(gave_back_slot) {
            BlockedWait::UntilBlockEnd => Wait::For(wait),
            BlockedWait::UntilBlockEndOrLeaseChange => Wait::LeaseChange(wait),
        }
    }

    /// A node that lost its slot after asking for the reboot: cordoned,
    /// it only finishes (verify, uncordon, release), so it asks for the
    /// slot alone, without gates or jitter, and so takes a freed slot
    /// before any node that still has to pass its gates.
    async fn regain_slot(&mut self) -> Result<Wait, AgentError> {
        let target = match &self.state {
            AgentState::Pending {
                resume: Some(s), ..
            } => s.name(),
            _ => unreachable!("regain_slot runs in a finishing-only Pending"),
        };
        let waiting = format!("out of service, waiting for a lease slot to finish {target}");
        match self.cluster.lease_outlook().await {
            Ok(LeaseOutlook::Busy { holders }) => {
                self.status(format!("{waiting}: held by {}", holders.join(", ")))
                    .await?;
                return Ok(Wait::LeaseChange(self.settings.reboot.check_interval));
            }
            Ok(_) => {}
            Err(e) => return self.retry_later("reading the lease", e).await,
        }
        let slot = match self.try_acquire(&waiting, true).await? {
            Ok(slot) => slot,
            Err(wait) => return Ok(wait),
        };
        info!(message_id = msgid::LEASE_ACQUIRED, node = %self.node, slot = %slot, resumes = target, "lease slot {slot} won back; going on with {target}");
        let detail = serde_json::json!({"slot": slot, "resumed": true, "finishing": target});
        self.took_slot(slot, detail).await
    }

    /// Asks for a slot; `Err`: none was had, and how long to wait.
    async fn try_acquire(
        &mut self,
        waiting: &str,
        gates_passed: bool,
    ) -> Result<Result<String, Wait>, AgentError> {
        match self.cluster.acquire(gates_passed).await {
            Ok(Some(slot)) => Ok(Ok(slot)),
            Ok(None) => {
                self.status(format!("{waiting}: another node took the lease first"))
                    .await?;
                Ok(Err(Wait::LeaseChange(self.settings.reboot.check_interval)))
            }
            Err(e) => Ok(Err(self.retry_later("acquiring the lease", e).await?)),
        }
    }

    /// A slot was taken: told, persisted, shown.
    async fn took_slot(
        &mut self,
        slot: String,
        detail: serde_json::Value,
    ) -> Result<Wait, AgentError> {
        self.event(AgentEvent::LeaseAcquired { slot: slot.clone() });
        self.transition(
            Event::LeaseAcquired {
                slot: slot.clone(),
                now: Timestamp::now(),
            },
            detail,
        )
        .await?;
        self.status(format!("{}: holding {slot}", self.state.name()))
            .await?;
        Ok(Wait::No)
    }

    /// After a blocking cluster gate: until its known end, or a long
    /// jittered re-check; the Lease watch still wakes the node earlier.
    fn after_block(&self, now: Timestamp, blocked_until: Option<Timestamp>) -> Duration {
        pace::after_block(
            now,
            blocked_until,
            self.settings.reboot.check_interval,
            pace::random_fraction(),
        )
    }

    async fn drain(&mut self, slot: &str, cordon: Cordon) -> Result<Wait, AgentError> {
        if let Some(wait) = self.guard_slot(true).await? {
            return Ok(wait);
        }
        let claim = match self.claim().await {
            Ok(Some(c)) => c,
            Ok(None) => unreachable!("Draining holds a slot"),
            Err(e) => return self.trouble("holding the lease", e).await,
        };
        self.status("draining".into()).await?;
        let (progress, mut progress_rx) = tokio::sync::watch::channel(usize::MAX);
        let result = {
            let mut watch_claim = claim.clone();
            let drain = self.cluster.drain(progress, claim);
            tokio::pin!(drain);
            loop {
                tokio::select! {
                    r = &mut drain => break r,
                    // The port stops on a lost claim too; this is the guard
                    // for a port that would not.
                    c = crate::cluster::lease::claim_lost(&mut watch_claim) => {
                        break Err(PortError::LostLease { slot: c.slot().to_string(), holder: c.holder() });
                    }
                    Ok(()) = progress_rx.changed() => {
                        let left = *progress_rx.borrow_and_update();
                        if left != usize::MAX {
                            let line = format!("draining: {left} pods left");
                            self.reporter.status(&line);
                            self.reporter.event(&self.node, &AgentEvent::DrainProgress { pods_left: left });
                            info!(node = %self.node, pods_left = left, "draining: {left} pods left");
                        }
                    }
                }
            }
        };
        match result {
            Ok(DrainResult::Drained(report)) => {
                let boot = match self.host.boot_mark() {
                    Ok(b) => b,
                    Err(e) => return self.retry_later("reading the boot identity", e).await,
                };
                info!(node = %self.node, report = %report, "drained: {report}");
                let history = serde_json::json!({
                    "node": self.node, "summary": report.to_string(), "report": report,
                });
                self.write(move |s| s.append_history("drain", &history).map(|_| ()))
                    .await?;
                self.event(AgentEvent::Drained {
                    report: report.clone(),
                });
                self.transition(
                    Event::Drained {
                        boot_id: boot.boot_id.clone(),
                        booted_at: boot.booted_at,
                        now: Timestamp::now(),
                    },
                    serde_json::json!({"boot-id": boot.boot_id, "drain": report.to_string()}),
                )
                .await?;
                Ok(Wait::No)
            }
            Ok(DrainResult::TimedOut(timeout)) => {
                let blocking: Vec<String> =
                    timeout.blocked.iter().map(ToString::to_string).collect();
                warn!(message_id = msgid::DRAIN_TIMED_OUT, node = %self.node, blocking = %blocking.join("; "), "drain timed out (blocking: {}); restoring the node and releasing the lease", blocking.join("; "));
                if cordon == Cordon::Ours
                    && let Err(e) = self.cluster.set_unschedulable(false).await
                {
                    return self
                        .retry_later("uncordoning after a failed drain", e)
                        .await;
                }
                if let Err(e) = self.cluster.release(slot).await {
                    return self
                        .retry_later("releasing the lease after a failed drain", e)
                        .await;
                }
                let history = serde_json::json!({
                    "node": self.node,
                    "blocking": blocking,
                    "summary": format!("timed out; before that: {}", timeout.partial),
                    "report": timeout.partial,
                });
                self.write(move |s| s.append_history("drain-failed", &history).map(|_| ()))
                    .await?;
                self.event(AgentEvent::DrainTimedOut {
                    blocking: blocking.clone(),
                    report: timeout.partial.clone(),
                });
                let now = Timestamp::now();
                let retry_after = self.cluster.next_local_change(now).unwrap_or(
                    now + signed(self.settings.drain.timeout.max(Duration::from_secs(1))),
                );
                self.transition(
                    Event::DrainAbandoned { retry_after },
                    serde_json::json!({"blocking": blocking}),
                )
                .await?;
                Ok(Wait::No)
            }
            Err(e @ PortError::Permanent { .. }) => {
                self.event(AgentEvent::DrainFailed {
                    error: e.to_string(),
                });
                self.trouble("draining", e).await
            }
            Err(e) => self.trouble("draining", e).await,
        }
    }

    async fn reboot(
        &mut self,
        cycle: &Cycle,
        left: &BootMark,
        requested_at: Option<Timestamp>,
    ) -> Result<Wait, AgentError> {
        match self.host.boot_change(left) {
            Ok(BootChange::New { booted_at }) => {
                let now = Timestamp::now();
                self.transition(
                    Event::BootObserved {
                        booted_at,
                        now,
                        verify_timeout: signed(self.settings.verify.timeout),
                    },
                    serde_json::json!({"left-boot-id": left.boot_id}),
                )
                .await?;
                self.status("verifying: back from reboot".into()).await?;
                return Ok(Wait::No);
            }
            Ok(BootChange::Unclear { reason }) => {
                warn!(message_id = msgid::BOOT_UNCHANGED, node = %self.node, reason = %reason, "cannot tell whether the machine rebooted: {reason}");
                self.fail(
                    format!("cannot tell whether the machine rebooted: {reason}"),
                    serde_json::json!({"error": reason}),
                )
                .await?;
                return Ok(Wait::No);
            }
            Ok(BootChange::Same) => {}
            Err(e) => return self.retry_later("reading the boot identity", e).await,
        }
        // Fresh before asking for the reboot; a request already made only
        // needs the slot kept.
        if let Some(wait) = self.guard_slot(requested_at.is_none()).await? {
            return Ok(wait);
        }
        if let Some(asked) = requested_at {
            let here = self
                .reboot_requested_here
                .is_some_and(|at| Timestamp::now() < at + signed(REBOOT_GRACE));
            if here {
                // Accepted in this process: the machine is going down.
                self.status(format!("rebooting: requested at {asked}"))
                    .await?;
                return Ok(Wait::For(self.renew_every()));
            }
            let error = format!(
                "a reboot was requested at {asked}, but this is still boot {} (not asking again without a person: check why the machine did not restart, then `drydock resume`)",
                left.boot_id
            );
            self.event(AgentEvent::RebootFailed {
                error: error.clone(),
            });
            self.fail(error, serde_json::json!({"requested-at": asked}))
                .await?;
            return Ok(Wait::No);
        }
        let reason = cycle.reasons.join("; ");
        // Written before asking: whatever happens next, this cycle asks once.
        self.transition(
            Event::RebootRequested {
                now: Timestamp::now(),
            },
            serde_json::json!({"reason": reason}),
        )
        .await?;
        self.reboot_requested_here = Some(Timestamp::now());
        self.status(format!("rebooting: {reason}")).await?;
        self.event(AgentEvent::Rebooting {
            reason: reason.clone(),
            boot_id: left.boot_id.clone(),
        });
        // The reboot may cut the network at any moment after this call.
        self.reporter.flush().await;
        // Logged before asking: once logind accepts, the shutdown's SIGTERM
        // may cut this step before its answer is read.
        info!(message_id = msgid::REBOOT_REQUESTED, node = %self.node, reason = %reason, "reboot requested from logind: {reason}");
        match self.host.reboot(&reason).await {
            Ok(()) => {
                info!(node = %self.node, "logind accepted the reboot");
                Ok(Wait::For(self.renew_every()))
            }
            Err(e) => {
                self.reboot_requested_here = None;
                warn!(message_id = msgid::REBOOT_REFUSED, node = %self.node, error = %e, "reboot refused ({e}); node stays cordoned and keeps the lease");
                self.event(AgentEvent::RebootFailed {
                    error: e.to_string(),
                });
                self.fail(e.to_string(), serde_json::json!({"error": e.to_string()}))
                    .await?;
                Ok(Wait::No)
            }
        }
    }

    async fn verify(
        &mut self,
        booted_at: Timestamp,
        deadline: Timestamp,
    ) -> Result<Wait, AgentError> {
        if let Some(wait) = self.guard_slot(false).await? {
            return Ok(wait);
        }
        let boot_id = match self.host.boot_id() {
            Ok(b) => b,
            Err(e) => return self.retry_later("reading boot_id", e).await,
        };
        let outcome = match self.cluster.verify_node(booted_at, &boot_id).await {
            Ok(()) => self.host.run_checks().await,
            Err(reason) => Err(reason),
        };
        let outcome = match (outcome, self.state.clone()) {
            (Ok(()), AgentState::Verifying { cycle, .. }) => self.verify_upgrade(&cycle).await,
            (other, _) => other,
        };
        let now = Timestamp::now();
        match outcome {
            Ok(()) => {
                // Healthy; still ours? Only then is the cycle declared done.
                if let Some(wait) = self.guard_slot(true).await? {
                    return Ok(wait);
                }
                self.transition(Event::Verified { now }, serde_json::json!({}))
                    .await?;
                self.status("releasing: node verified healthy".into())
                    .await?;
                Ok(Wait::No)
            }
            Err(reason) if now < deadline => {
                self.status(format!("verifying: {reason}")).await?;
                Ok(Wait::For(
                    Duration::from_millis(500).max(self.short_retry() / 10),
                ))
            }
            Err(reason) => {
                warn!(message_id = msgid::VERIFY_FAILED, node = %self.node, reason = %reason, "verification failed ({reason}); halting the fleet, keeping the lease and the cordon");
                let halt = Halt {
                    node: self.node.clone(),
                    reason: format!("failed verification after reboot: {reason}"),
                    at: now,
                };
                // Owed until the Namespace carries it: the kept slot alone
                // stops the fleet only at concurrency 1.
                let owed = halt.clone();
                self.write(move |s| s.write(keys::PENDING_HALT, &owed))
                    .await?;
                self.set_pending_halt(&halt).await?;
                self.event(AgentEvent::VerifyFailed {
                    reason: reason.clone(),
                });
                self.transition(
                    Event::Failed {
                        error: reason.clone(),
                        now,
                    },
                    serde_json::json!({"error": reason}),
                )
                .await?;
                Ok(Wait::No)
            }
        }
    }

    async fn release_verified(
        &mut self,
        cycle: &Cycle,
        durations: super::state::PhaseDurations,
    ) -> Result<Wait, AgentError> {
        if self.state.cordon() == Some(Cordon::Ours)
            && let Err(e) = self.cluster.set_unschedulable(false).await
        {
            return self.retry_later("uncordoning", e).await;
        }
        if let Err(e) = self.cluster.record_reboot_finished(Timestamp::now()).await {
            return self.retry_later("recording the finished reboot", e).await;
        }
        match self.cluster.clear_halt().await {
            Ok(true) => self.event(AgentEvent::HaltCleared),
            Ok(false) => {}
            Err(e) => return self.retry_later("clearing the fleet halt", e).await,
        }
        if let Err(e) = self.cluster.release(&cycle.slot).await {
            return self.retry_later("releasing the lease", e).await;
        }
        let history = serde_json::json!({
            "node": self.node,
            "reasons": cycle.reasons,
            "durations": durations,
        });
        let upgrade = cycle.upgrade.as_ref().map(|p| {
            serde_json::json!({
                "node": self.node,
                "from": p.from.map(|v| v.to_string()),
                "to": p.to.to_string(),
                "action": p.action,
                "steps": p.done,
                "packages": p.packages,
                "etcd-snapshot": p.snapshot,
            })
        });
        let rebooted = cycle
            .upgrade
            .as_ref()
            .is_none_or(|p| p.steps.contains(&crate::upgrade::UpgradeStep::Reboot));
        self.write(move |s| {
            if let Some(upgrade) = &upgrade {
                s.append_history("upgrade", upgrade)?;
            }
            if rebooted {
                crate::host::sentinel::clear_reboot_request(s)?;
                s.append_history("reboot", &history)?;
            }
            Ok(())
        })
        .await?;
        self.event(AgentEvent::Verified {
            durations: durations.clone(),
        });
        self.event(AgentEvent::Released {
            slot: cycle.slot.clone(),
        });
        self.transition(Event::Released, serde_json::json!({"durations": durations}))
            .await?;
        Ok(Wait::No)
    }

    /// An operator request (resume, force release) that answers this
    /// failure: issued after it. An older one is dropped, said so.
    async fn take_request(
        &mut self,
        key: crate::store::keys::Key<Timestamp>,
        failed_at: Timestamp,
    ) -> Result<Option<Timestamp>, AgentError> {
        // Read as any JSON: a value that is not a time is said so, not an error.
        let Some(value) = self.store().get::<serde_json::Value>(key)? else {
            return Ok(None);
        };
        self.write(move |s| s.remove(key)).await?;
        match request_time(&value) {
            Some(at) if at > failed_at => Ok(Some(at)),
            Some(at) => {
                let key = key.name();
                warn!(node = %self.node, request = key, requested_at = %at, failed_at = %failed_at,
                    "ignored {key}: it was issued at {at}, before this failure at {failed_at}");
                let detail = serde_json::json!({"node": self.node, "request": key, "requested-at": at, "failed-at": failed_at});
                self.write(move |s| s.append_history("stale-request", &detail).map(|_| ()))
                    .await?;
                Ok(None)
            }
            None => {
                let key = key.name();
                warn!(node = %self.node, request = key, value = %value, "ignored {key}: not a request time");
                Ok(None)
            }
        }
    }

    /// Sets the fleet halt this node owes; true once the Namespace carries
    /// it (the owed record is then dropped), false to try again later.
    async fn set_pending_halt(&mut self, halt: &Halt) -> Result<bool, AgentError> {
        match self.cluster.halt_fleet(halt).await {
            Ok(()) => {
                self.event(AgentEvent::Halted {
                    reason: format!("{} {}", halt.node, halt.reason),
                });
                self.write(move |s| s.remove(keys::PENDING_HALT).map(drop))
                    .await?;
                Ok(true)
            }
            Err(e) => {
                warn!(node = %self.node, error = %e, "could not set the fleet halt yet; retrying until the cluster has it");
                Ok(false)
            }
        }
    }

    async fn failed(&mut self) -> Result<Wait, AgentError> {
        let AgentState::Failed {
            step, error, at, ..
        } = self.state.clone()
        else {
            unreachable!("failed() runs in Failed")
        };
        let resume = self.take_request(keys::RESUME_REQUESTED, at).await?;
        if resume.is_none() {
            let owed = self.write(|s| s.read(keys::PENDING_HALT)).await?;
            if let Some(halt) = owed
                && !self.set_pending_halt(&halt).await?
            {
                self.status(format!(
                    "failed at {step}: {error}; the fleet halt is not set yet (API unreachable), retrying"
                ))
                .await?;
                return Ok(Wait::For(self.short_retry()));
            }
        }
        if let Some(requested) = resume {
            info!(message_id = msgid::RESUME_REQUESTED, node = %self.node, step = %step, "resume requested; going back to the interrupted step {step}");
            // The operator answered the failure: a halt never set is not owed.
            self.write(|s| s.remove(keys::PENDING_HALT).map(drop))
                .await?;
            self.reboot_requested_here = None;
            self.transition(
                Event::Resume {
                    now: Timestamp::now(),
                    verify_timeout: signed(self.settings.verify.timeout),
                },
                serde_json::json!({"resumed": step.to_string(), "requested-at": requested}),
            )
            .await?;
            return Ok(Wait::No);
        }
        if let Some(slot) = self.state.held_slot().map(str::to_string) {
            if let Some(requested) = self.take_request(keys::FORCE_RELEASE, at).await? {
                if let Err(e) = self.cluster.release(&slot).await {
                    // Asked again on the next look.
                    self.write(move |s| s.write(keys::FORCE_RELEASE, &requested))
                        .await?;
                    return self.retry_later("force-releasing the lease", e).await;
                }
                warn!(message_id = msgid::LEASE_FORCE_RELEASED, node = %self.node, slot = %slot, "lease slot {slot} force-released; the node stays as it is");
                self.claim = None;
                self.transition(
                    Event::ForceReleased,
                    serde_json::json!({"force-released": slot, "requested-at": requested}),
                )
                .await?;
                return Ok(Wait::No);
            }
            // Keep the slot (its keeper renews it): the fleet stops here.
            if let Some(wait) = self.guard_slot(false).await? {
                return Ok(wait);
            }
        } else {
            self.take_request(keys::FORCE_RELEASE, at).await?;
        }
        self.status(format!(
            "failed at {step}: {error}; fix it, then `drydock resume` (or `drydock release --force`)"
        ))
        .await?;
        Ok(Wait::For(self.renew_every()))
    }
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::from_millis((then.as_millisecond() - now.as_millisecond()).max(0) as u64)
}
